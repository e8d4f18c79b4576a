//! Per-VM identity that lives outside the state directory: `/etc/machine-id`, the hostname and
//! the kernel's `boot_id`.
//!
//! Every clone starts with the build VM's machine-id, hostname and `boot_id`, and programs that
//! key on them (journald, D-Bus, log shippers, telemetry and license checks, Java's
//! `InetAddress.getLocalHost()`) would take every VM for the same machine. On `/run` (once per
//! VM: a resume is the same VM) the agent:
//! - rewrites `/etc/machine-id`, when it exists as a regular file, with 32 hex characters from
//!   its freshly keyed generator: atomically, mode and owner kept;
//! - with `CAP_SYS_ADMIN`: sets a hostname derived from the generation id (`sethostname` in its
//!   UTS namespace, which the app shares), and adds it to `/etc/hosts` (one line, marked, on
//!   127.0.1.1 as Debian does) so that resolving the own hostname keeps working;
//! - with `CAP_SYS_ADMIN`: bind-mounts a fresh UUID over `/proc/sys/kernel/random/boot_id`
//!   (read-only), as LXC does for containers.
//!
//! Without the capability the hostname and `boot_id` stay cloned: reported, never fatal; the
//! generation id is the per-VM identity to use then.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub const MACHINE_ID: &str = "/etc/machine-id";

/// How a system file was given its new content.
enum Replaced {
    Absent,
    NotRegular,
    /// Over [`crate::sys::bounded::SYSTEM_FILE`]: left alone.
    TooLarge,
    /// Atomically (a temporary file renamed over it), mode and owner kept.
    Renamed,
    /// In place: a file bind-mounted into the container (Docker does it with `/etc/hosts`, some
    /// runtimes with `/etc/machine-id`) cannot be renamed over (EBUSY). One small write: a
    /// reader sees the old or the new content.
    InPlace,
}

/// Replaces the content of the regular file `path` with what `content` makes of its current
/// text (read only when it is a regular file; `None`: too large to read, left alone).
fn replace_system_file(
    path: &Path,
    content: impl FnOnce(&Path) -> Result<Option<String>, String>,
) -> Result<Replaced, String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => m,
        Ok(_) => return Ok(Replaced::NotRegular),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Replaced::Absent),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let Some(content) = content(path)? else {
        return Ok(Replaced::TooLarge);
    };
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    match crate::sys::state_files::replace_file(
        path,
        content.as_bytes(),
        meta.mode() & 0o7777,
        (meta.uid(), meta.gid()),
    ) {
        Ok(()) => Ok(Replaced::Renamed),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .and_then(|mut f| f.write_all(content.as_bytes()))
            .map(|()| Replaced::InPlace)
            .map_err(fail),
        Err(e) => Err(fail(e)),
    }
}

/// What happened to the machine-id, for the routine's record.
pub fn rewrite_machine_id(path: &Path, id_hex: &str) -> Result<&'static str, String> {
    Ok(
        match replace_system_file(path, |_| Ok(Some(format!("{id_hex}\n"))))? {
            // Never: the machine-id is written whole, its old content never read.
            Replaced::TooLarge => "not-changed:too-large",
            Replaced::Absent => "absent",
            Replaced::NotRegular => "not-a-regular-file",
            Replaced::Renamed => "rewritten",
            Replaced::InPlace => "rewritten-in-place",
        },
    )
}

pub const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
pub const HOSTS: &str = "/etc/hosts";
const HOSTS_MARK: &str = "# microvm-agent: this VM's hostname";

/// Sets the hostname of the agent's UTS namespace.
pub fn set_hostname(name: &str) -> Result<(), String> {
    nix::unistd::sethostname(name).map_err(|e| format!("sethostname: {}", std::io::Error::from(e)))
}

/// `/etc/hosts` with the agent's line for `name` (replacing an earlier one of ours).
pub fn hosts_with(current: &str, name: &str) -> String {
    let mut out: String = current
        .lines()
        .filter(|l| !l.ends_with(HOSTS_MARK))
        .flat_map(|l| [l, "\n"])
        .collect();
    out.push_str(&format!("127.0.1.1\t{name}\t{HOSTS_MARK}\n"));
    out
}

/// Adds `name` to `/etc/hosts` when it is a regular file; what happened, for the record.
pub fn add_to_hosts(path: &Path, name: &str) -> Result<&'static str, String> {
    let content =
        |p: &Path| match crate::sys::bounded::read_to_string(p, crate::sys::bounded::SYSTEM_FILE) {
            Ok(current) => Ok(Some(hosts_with(&current, name))),
            // Not ours to shrink: the hostname is set, the file is left as it is, the record says so.
            Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => Ok(None),
            Err(e) => Err(format!("{}: {e}", p.display())),
        };
    Ok(match replace_system_file(path, content)? {
        Replaced::TooLarge => "not-changed:too-large",
        Replaced::Absent => "absent",
        Replaced::NotRegular => "not-a-regular-file",
        Replaced::Renamed => "added",
        Replaced::InPlace => "added-in-place",
    })
}

/// A UUID (version 4 layout) from 16 random bytes, as the kernel prints `boot_id`.
pub fn uuid(b: &[u8; 16]) -> String {
    let mut b = *b;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Bind-mounts `source` (a file holding the new id) over the kernel's `boot_id`, read-only.
/// An earlier mount of ours (a second `/run` in a test) is detached first.
pub fn bind_boot_id(source: &Path, target: &str) -> Result<&'static str, String> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    use std::sync::atomic::{AtomicBool, Ordering};
    static MOUNTED: AtomicBool = AtomicBool::new(false);
    let err = |what: &str, e: nix::Error| format!("{what} {target}: {}", std::io::Error::from(e));
    if MOUNTED.load(Ordering::Relaxed) {
        let _ = umount2(target, MntFlags::MNT_DETACH);
    }
    // No filesystem type or data for a bind mount.
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| err("bind mount over", e))?;
    MOUNTED.store(true, Ordering::Relaxed);
    // Read-only: the app's root keeps dac_override, which would let it write through the file.
    let read_only = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if mount(None::<&str>, target, None::<&str>, read_only, None::<&str>).is_err() {
        return Ok("bound-read-write");
    }
    Ok("bound")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_regular_file_is_rewritten_with_its_mode_and_anything_else_left_alone() {
        let dir = std::env::temp_dir().join(format!("mva-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("machine-id");
        assert_eq!(rewrite_machine_id(&f, "ab").unwrap(), "absent");
        std::fs::write(&f, "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o444)).unwrap();
        let id = "fedcba9876543210fedcba9876543210";
        assert_eq!(rewrite_machine_id(&f, id).unwrap(), "rewritten");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), format!("{id}\n"));
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o444);
        let link = dir.join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert_eq!(rewrite_machine_id(&link, id).unwrap(), "not-a-regular-file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_hosts_line_is_ours_alone_and_replaced_not_repeated() {
        let base = "127.0.0.1\tlocalhost\n::1\tlocalhost\n";
        let once = hosts_with(base, "microvm-aaaa");
        assert!(once.starts_with(base));
        let twice = hosts_with(&once, "microvm-bbbb");
        assert!(!twice.contains("aaaa") && twice.contains("127.0.1.1\tmicrovm-bbbb"));
        assert_eq!(twice.lines().count(), 3);
    }

    #[test]
    fn uuids_look_like_the_kernels() {
        let u = uuid(&[0xff; 16]);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
    }
}
