//! Per-VM identity that lives outside the state directory: `/etc/machine-id`.
//!
//! Every clone starts with the build VM's machine-id, and programs that key on it (journald,
//! D-Bus, some telemetry and license checks) would take every VM for the same machine. On `/run`
//! (once per VM: a resume is the same VM) the agent rewrites it, when it exists as a regular file,
//! with 32 hex characters from its freshly keyed generator: atomically, mode and owner kept. What
//! the agent cannot change without privileges it does not have (the kernel's
//! `/proc/sys/kernel/random/boot_id`, the hostname in the UTS namespace) stays cloned; the
//! generation id is the per-VM identity to use.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub const MACHINE_ID: &str = "/etc/machine-id";

/// What happened to the machine-id, for the routine's record.
pub fn rewrite_machine_id(path: &Path, id_hex: &str) -> Result<&'static str, String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok("absent"),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if !meta.file_type().is_file() {
        return Ok("not-a-regular-file");
    }
    let content = format!("{id_hex}\n");
    match crate::sys::state_files::replace_file(
        path,
        content.as_bytes(),
        meta.mode() & 0o7777,
        (meta.uid(), meta.gid()),
    ) {
        Ok(()) => Ok("rewritten"),
        // A file bind-mounted into the container cannot be renamed over: write it in place (one
        // 33-byte write; a reader sees the old or the new id).
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .and_then(|mut f| f.write_all(content.as_bytes()))
            .map(|()| "rewritten-in-place")
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
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
}
