//! The runtime clone test's guest: Debian's kernel, a busybox initramfs that mounts the shared
//! read-only root (`prepare.sh`'s squashfs of Debian's runtimes) and copies the agent and the
//! apps onto a tmpfs in it, then starts every app under its own agent.

use crate::apps::APPS;
use crate::vm::{self, Arch, Cpio, PLATFORM_CAPS};
use std::path::{Path, PathBuf};

/// Where `prepare.sh` put the runtime guest's root and modules for `arch`.
pub fn runtime_dir(arch: Arch) -> PathBuf {
    match arch {
        Arch::X86_64 => vm::vm_dir().join("runtime"),
        Arch::Aarch64 => arch.dir().join("runtime"),
    }
}

/// The modules that mount the root, in dependency order (arm64's kernel has virtio built in).
pub fn modules(arch: Arch) -> &'static [&'static str] {
    const PCI_BLK_SQUASHFS: [&str; 7] = [
        "virtio_ring",
        "virtio",
        "virtio_pci_legacy_dev",
        "virtio_pci_modern_dev",
        "virtio_pci",
        "virtio_blk",
        "squashfs",
    ];
    match arch {
        Arch::X86_64 => &PCI_BLK_SQUASHFS,
        Arch::Aarch64 => &PCI_BLK_SQUASHFS[2..],
    }
}

/// The fixture app, outside any agent: the guest's uptime, and the kernel's bytes as a reference.
pub const FIXTURE: u16 = 8080;

/// The guest's TLS ClientHello recorder (`mva-fixture tls-recorder 8443 8444`): TLS on 8443 (the
/// unmodified apps connect there), its findings over HTTP on this port.
pub const RECORDER: u16 = 8444;

/// The initramfs: loads the modules, mounts the shared read-only root, copies the agent and the
/// apps onto a tmpfs in it, and switches to it; `start.sh` then starts every app under its agent.
const INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
for m in __MODULES__ e1000; do $B insmod /lib/$m.ko; done
$B ip link set lo up
$B ip link set eth0 up
$B ip addr add 10.0.2.15/24 dev eth0
$B ip route add default via 10.0.2.2
while [ ! -b /dev/vda ]; do $B sleep 0.1; done
$B mkdir -p /newroot
$B mount -t squashfs -o ro /dev/vda /newroot
$B mount -t tmpfs -o mode=0755 tmpfs /newroot/run
$B mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
$B cp -a /mva /newroot/run/mva
$B cp /bin/busybox /newroot/run/mva/busybox
$B mount --move /dev /newroot/dev
$B mount --move /proc /newroot/proc
$B mount --move /sys /newroot/sys
echo "init: root mounted read-only; starting the apps"
exec $B switch_root /newroot /run/mva/busybox sh /run/mva/start.sh
"#;

fn start_script(platform_caps: bool) -> String {
    let caps = if platform_caps {
        format!("/run/mva/mva-fixture with-caps {PLATFORM_CAPS} ")
    } else {
        String::new()
    };
    let mut s = String::from(
        "B=/run/mva/busybox\nexport PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp MICROVM_AGENT_LOG=warn\n\
         FIXTURE_BIND=0.0.0.0 /run/mva/mva-fixture clone-app 8080 /run/fixture.log &\n\
         FIXTURE_BIND=0.0.0.0 /run/mva/mva-fixture tls-recorder 8443 8444 &\n",
    );
    for app in &APPS {
        s.push_str(&format!(
            "PORT={port} {caps}/run/mva/microvm-agent -c /run/mva/{name}/microvm-agent.toml \
             --listen 0.0.0.0:{hook} --state-dir /run/state/{name} --log-format text -- {cmd} \
             2>&1 | $B sed 's/^/[{name}] /' > /dev/console &\n",
            port = app.app_port(),
            name = app.name,
            hook = app.hook_port(),
            cmd = app.command,
        ));
    }
    // PID 1: reap whatever is orphaned.
    s.push_str("while true; do wait; $B sleep 1; done\n");
    s
}

/// Writes the initramfs for `arch` to `out`, with the apps built into `apps`.
pub fn initramfs(out: &Path, apps: &Path, platform_caps: bool, arch: Arch) {
    let mods = modules(arch);
    let mut c = Cpio::new();
    c.file(
        "init",
        0o755,
        INIT.replace("__MODULES__", &mods.join(" ")).as_bytes(),
    );
    c.copy("bin/busybox", 0o755, &arch.busybox());
    for m in mods {
        c.copy(
            &format!("lib/{m}.ko"),
            0o644,
            &runtime_dir(arch).join(format!("{m}.ko")),
        );
    }
    c.copy("lib/e1000.ko", 0o644, &arch.dir().join("e1000.ko"));
    c.dir("mva");
    c.copy(
        "mva/microvm-agent",
        0o755,
        &arch.dir().join("microvm-agent"),
    );
    c.copy("mva/mva-fixture", 0o755, &arch.dir().join("mva-fixture"));
    c.file(
        "mva/start.sh",
        0o755,
        start_script(platform_caps).as_bytes(),
    );
    add_tree(&mut c, apps, "mva");
    c.write(out);
}

fn add_tree(c: &mut Cpio, from: &Path, at: &str) {
    let mut entries: Vec<_> = std::fs::read_dir(from)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let name = format!("{at}/{}", p.file_name().unwrap().to_string_lossy());
        if p.is_dir() {
            c.dir(&name);
            add_tree(c, &p, &name);
        } else {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            c.copy(&name, mode, &p);
        }
    }
}
