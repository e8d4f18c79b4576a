//! The state directory: files the app reads, always written atomically.
//!
//! A reader sees the whole old file or the whole new one, never a half-written one: we write a
//! temporary file in the same directory, fsync it, rename it over the target and fsync the
//! directory. The directory lives on tmpfs inside the VM, so the fsyncs cost next to nothing there,
//! and they keep the promise on a disk-backed directory too.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Creates the state directory (mode 0755: the app, maybe another user, reads it).
pub fn prepare(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
}

/// Writes `bytes` to `path` atomically with `mode`, owned by `owner` (uid, gid) when given.
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    stage(path, bytes, mode, owner)?.commit()
}

/// A file written in full beside its target, not yet renamed over it: several can be staged and
/// then committed together, so that either all of them change or (a stage failed) none does.
/// Dropped uncommitted, the temporary file is removed.
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl Staged {
    /// Renames the staged file over its target and syncs the directory.
    pub fn commit(mut self) -> io::Result<()> {
        fs::rename(&self.tmp, &self.path)?;
        self.committed = true;
        match self.path.parent() {
            Some(dir) => File::open(dir)?.sync_all(),
            None => Ok(()),
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to a temporary file beside `path` (mode, owner, fsync), for [`Staged::commit`].
pub fn stage(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<Staged> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?;
    let mut tmp = PathBuf::from(dir);
    tmp.push(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        // O_EXCL|O_NOFOLLOW semantics via create_new: never write through a planted link.
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Staged {
        tmp,
        path: path.to_path_buf(),
        committed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_whole_files_with_the_mode() {
        let dir = std::env::temp_dir().join(format!("mva-state-{}", std::process::id()));
        prepare(&dir).unwrap();
        let path = dir.join("run-payload");
        write_atomic(&path, b"first", 0o600, None).unwrap();
        write_atomic(&path, b"second", 0o600, None).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
        assert!(write_atomic(&dir.join("missing/x"), b"x", 0o600, None).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
