#!/usr/bin/env bash
# Builds the agent the way it ships: static (musl) for one architecture, with Rust's standard
# library compiled from this toolchain's own source, without its backtrace symbolizer.
#
#   scripts/build-static.sh aarch64|x86_64 [more `cargo build` arguments, e.g. --example mva-fixture]
#
# Writes ${CARGO_TARGET_DIR:-target}/shipped/<arch>-unknown-linux-musl/release/microvm-agent and
# fails unless it is static (no ELF interpreter, no dynamic section). A target directory of its
# own: cargo caches what the compiler says of the target (`rustc --print cfg`) per directory, not
# per RUSTC_BOOTSTRAP, and with the cache of a plain build compiler_builtins leaves out the
# 128-bit float routines musl's printf needs (the link fails). scripts/dist.sh, the VM tests'
# tests/vm/prepare.sh, the benchmark and Dockerfile.example all build through here, so what the
# tests run is what ships.
#
# Why the standard library is built here (BENCHMARKS.md, "Size"): the prebuilt one carries the
# default panic hook's backtrace symbolizer (about 140 KB of code, linked by a stable toolchain
# whether or not a backtrace is ever printed; the agent never prints one). `-Z build-std` compiles
# the very source this compiler's prebuilt std came from (the `rust-src` component), with
# `panic-unwind` (a hook that panics still answers 500), without `backtrace`, and with
# `optimize_for_size` (std's smaller variants of a few algorithms: the same instruction count per
# routine, measured with callgrind). The flag is unstable; RUSTC_BOOTSTRAP=1 unlocks it on the
# stable compiler, as the Linux kernel's Rust build does, so the compiler is the one every other
# test uses. Side effect, checked: of the agent's dependencies only proc-macro2's build script
# reads RUSTC_BOOTSTRAP (it then uses the compiler's span API inside derive macros, at build
# time). The rest of the shipped form is in Cargo.toml (opt-level "s", LTO) and
# .cargo/config.toml (static linking; identical code folded on aarch64).
#
# Where the toolchain cannot do it (no rustup, no rust-src, a later cargo whose flags changed), the
# script says so and builds with the prebuilt standard library: the same agent, ~200 KB larger
# (scripts/dist.sh then fails its size budget, so CI notices; an image build does not break).
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:?usage: scripts/build-static.sh aarch64|x86_64 [cargo build arguments]}
shift
case $arch in
  aarch64 | x86_64) ;;
  *) echo "build-static.sh: unknown architecture '$arch' (aarch64 or x86_64)" >&2; exit 64 ;;
esac
target=$arch-unknown-linux-musl
target_dir=${CARGO_TARGET_DIR:-target}/shipped

# Installed only when missing: tests/vm/prepare.sh installs both before any test runs, and a
# test never installs into the shared toolchain (two at once break each other).
if command -v rustup >/dev/null; then
  rustup target list --installed | grep -qx "$target" || rustup target add "$target" >/dev/null
  rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src >/dev/null 2>&1 || true
fi

# RUSTC_BOOTSTRAP=1 for the fallback too, so that this directory's cache is always of one kind.
export RUSTC_BOOTSTRAP=1
build=(cargo build -q --release --locked --target "$target" --target-dir "$target_dir" -p microvm-agent --bin microvm-agent "$@")
std="std without backtrace"
if ! "${build[@]}" -Z build-std=std,panic_unwind -Z build-std-features=panic-unwind,optimize_for_size; then
  echo "build-static.sh: this toolchain cannot build the standard library from source; building with the prebuilt one (a larger binary)" >&2
  std="prebuilt std"
  "${build[@]}"
fi

bin=$target_dir/$target/release/microvm-agent
headers=$(readelf -lW "$bin")
if grep -qE "INTERP|DYNAMIC" <<<"$headers"; then
  echo "$bin is not static:" >&2
  grep -E "INTERP|DYNAMIC" <<<"$headers" >&2
  exit 1
fi
machine=$(readelf -hW "$bin" | awk -F: '/Machine/{gsub(/^ +/, "", $2); print $2}')
echo "$bin: static, $machine, $(stat -c %s "$bin") bytes, $std"
