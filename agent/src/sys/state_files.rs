//! The state directory: files the app reads, always replaced atomically, always inside the
//! directory the agent checked and opened at start.
//!
//! **Atomic**: a reader sees the whole old file or the whole new one, never a half-written one: we
//! write a temporary file beside the target and rename it over the target. There is no `fsync`:
//! the files are per-boot runtime state on a tmpfs (`/run`), a crash takes the VM with them, and
//! on a restored VM's lazily paged-in disk every sync is exactly the slow call that must not stand
//! between a hook and its answer. (Durability is what `fsync` buys; atomicity is the rename's.)
//!
//! **Inside the directory we checked**: the directory is opened once (`O_NOFOLLOW`), refused when it
//! is a symbolic link, belongs to another user or can be written by group or others (someone else
//! could plant links in it), and every later operation goes through that descriptor (`openat`,
//! `renameat`, `unlinkat`, `fchmod`/`fchown` on descriptors), never through a path that could be
//! swapped for a link between a check and a use.
//!
//! Every call here may block on storage: the hooks run them on the I/O thread (`sys::offload`),
//! never on the runtime's one thread.

use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fchmod, fstat, mkdirat, Mode};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};

/// An open directory of the agent's: the state directory or one below it.
#[derive(Clone)]
pub struct StateDir {
    fd: Arc<OwnedFd>,
    path: PathBuf,
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Opens a directory without following a link, as a descriptor for the `*at` calls.
fn open_dir(at: impl AsFd, name: &Path) -> Result<OwnedFd, Errno> {
    openat(
        at,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Why a directory that exists cannot be trusted, if it cannot: a link (refused by the open
/// itself), another user's, or open to others' writes.
fn untrusted(fd: impl AsFd, allowed_owner: Option<u32>) -> Option<String> {
    let st = match fstat(fd) {
        Ok(st) => st,
        Err(e) => return Some(format!("cannot inspect it: {e}")),
    };
    let me = Uid::effective().as_raw();
    if st.st_uid != me && st.st_uid != 0 && Some(st.st_uid) != allowed_owner {
        return Some(format!(
            "it belongs to uid {}, not to the agent (uid {me}): another user could have planted links in it",
            st.st_uid
        ));
    }
    if st.st_mode & 0o022 != 0 {
        return Some(format!(
            "it is writable by group or others (mode {:o}): make it 0755 (a tmpfs: mode=0755)",
            st.st_mode & 0o7777
        ));
    }
    None
}

/// Why the state directory cannot be used: refused (not safe to write secrets into: a
/// configuration error) or the system said no (a read-only or missing file system: the hooks
/// that need it say so).
#[derive(Debug)]
pub enum OpenError {
    Refused(String),
    Io(io::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Refused(why) => write!(f, "refused: {why}"),
            OpenError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<OpenError> for io::Error {
    fn from(e: OpenError) -> io::Error {
        match e {
            OpenError::Io(e) => e,
            refused => io::Error::other(refused.to_string()),
        }
    }
}

impl StateDir {
    /// Creates `path` (mode 0755: the app, maybe another user, reads it) or opens it if it
    /// exists, refusing a directory that is not safe to write secrets into.
    pub fn open(path: &Path) -> Result<StateDir, OpenError> {
        let path = &std::path::absolute(path).map_err(OpenError::Io)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(OpenError::Io)?;
        }
        let created = match nix::unistd::mkdir(path, Mode::from_bits_truncate(0o755)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(OpenError::Io(errno(e))),
        };
        let root = std::fs::File::open("/").map_err(OpenError::Io)?;
        let dir = match open_dir(root.as_fd(), path) {
            Ok(dir) => dir,
            Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                return Err(OpenError::Refused(
                    "it is a symbolic link or not a directory (the agent writes secrets there)"
                        .into(),
                ))
            }
            Err(e) => return Err(OpenError::Io(errno(e))),
        };
        if !created {
            if let Some(why) = untrusted(&dir, None) {
                return Err(OpenError::Refused(why));
            }
        }
        // The umask may have narrowed the mode: the app, maybe another user, must read it.
        let mode = fstat(&dir).map_err(|e| OpenError::Io(errno(e)))?.st_mode & 0o7777;
        if mode != 0o755 {
            fchmod(&dir, Mode::from_bits_truncate(0o755)).map_err(|e| OpenError::Io(errno(e)))?;
        }
        Ok(StateDir {
            fd: Arc::new(dir),
            path: path.to_path_buf(),
        })
    }

    /// The directory's path, for what the app is told and for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The subdirectory `name` with `mode`, owned by `owner` when given, created if missing.
    /// A link planted in its place is refused, and so is a directory someone else made.
    pub fn subdir(&self, name: &str, mode: u32, owner: Option<(u32, u32)>) -> io::Result<StateDir> {
        match mkdirat(self.fd.as_fd(), name, Mode::from_bits_truncate(mode)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(errno(e)),
        }
        let dir = match open_dir(self.fd.as_fd(), Path::new(name)) {
            Ok(dir) => dir,
            Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                return Err(io::Error::other(format!(
                    "{name}: a symbolic link or not a directory: refused"
                )))
            }
            Err(e) => return Err(errno(e)),
        };
        if let Some(why) = untrusted(&dir, owner.map(|o| o.0)) {
            return Err(io::Error::other(format!("{name}: {why}")));
        }
        fchmod(&dir, Mode::from_bits_truncate(mode)).map_err(errno)?;
        if let Some((uid, gid)) = owner {
            fchown(&dir, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(errno)?;
        }
        Ok(StateDir {
            fd: Arc::new(dir),
            path: self.path.join(name),
        })
    }

    /// The existing subdirectory `name` (never a link), or `None` when there is none.
    pub fn subdir_existing(&self, name: &str) -> io::Result<Option<StateDir>> {
        match open_dir(self.fd.as_fd(), Path::new(name)) {
            Ok(fd) => Ok(Some(StateDir {
                fd: Arc::new(fd),
                path: self.path.join(name),
            })),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(errno(e)),
        }
    }

    /// Writes `bytes` to `name` atomically with `mode`, owned by `owner` (uid, gid) when given.
    pub fn write(
        &self,
        name: &str,
        bytes: &[u8],
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> io::Result<()> {
        self.stage(name, bytes, mode, owner)?.commit()
    }

    /// Writes `bytes` to a temporary file beside `name` (mode, owner), for [`Staged::commit`].
    pub fn stage(
        &self,
        name: &str,
        bytes: &[u8],
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> io::Result<Staged> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(io::Error::other(format!("{name:?}: not a plain file name")));
        }
        let tmp = format!(".{name}.tmp.{}", std::process::id());
        let staged = Staged {
            dir: self.clone(),
            tmp,
            name: name.to_string(),
            committed: false,
        };
        // A leftover of an earlier run (or something planted) goes first; the create is
        // exclusive and follows no link, so nothing is ever written through one.
        let _ = unlinkat(
            self.fd.as_fd(),
            staged.tmp.as_str(),
            UnlinkatFlags::NoRemoveDir,
        );
        let fd = openat(
            self.fd.as_fd(),
            staged.tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
        .map_err(errno)?;
        // The umask may have narrowed the mode; set it exactly.
        fchmod(&fd, Mode::from_bits_truncate(mode)).map_err(errno)?;
        if let Some((uid, gid)) = owner {
            fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(errno)?;
        }
        std::fs::File::from(fd).write_all(bytes)?;
        Ok(staged)
    }

    /// Whether `name` (a path below this directory, not followed if a link) exists.
    pub fn exists(&self, name: &str) -> bool {
        nix::sys::stat::fstatat(
            self.fd.as_fd(),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok()
    }

    /// Removes `name`; `Ok(false)` when it was not there.
    pub fn remove(&self, name: &str) -> io::Result<bool> {
        match unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(errno(e)),
        }
    }
}

/// The state directory as the hooks hold it: opened at start, or (when the system said no then,
/// e.g. a file system not mounted yet) opened again on the next use. Cheap to clone.
#[derive(Clone)]
pub struct Handle(Arc<(PathBuf, std::sync::Mutex<Option<StateDir>>)>);

impl Handle {
    pub fn new(path: &Path, opened: Option<StateDir>) -> Handle {
        Handle(Arc::new((
            path.to_path_buf(),
            std::sync::Mutex::new(opened),
        )))
    }

    /// The directory, opened if it was not yet. May block: call it on the I/O thread.
    pub fn get(&self) -> io::Result<StateDir> {
        let mut cell = crate::sys::lock(&self.0 .1);
        if let Some(dir) = &*cell {
            return Ok(dir.clone());
        }
        let dir = StateDir::open(&self.0 .0)?;
        *cell = Some(dir.clone());
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0 .0
    }
}

/// A file written in full beside its target, not yet renamed over it: several can be staged and
/// then committed together, so that either all of them change or (a stage failed) none does.
/// Dropped uncommitted, the temporary file is removed.
pub struct Staged {
    dir: StateDir,
    tmp: String,
    name: String,
    committed: bool,
}

impl Staged {
    /// Renames the staged file over its target (a link planted there is replaced, not followed).
    pub fn commit(mut self) -> io::Result<()> {
        let fd = self.dir.fd.as_fd();
        renameat(fd, self.tmp.as_str(), fd, self.name.as_str()).map_err(errno)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = unlinkat(
                self.dir.fd.as_fd(),
                self.tmp.as_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// Writes `bytes` to `path` atomically outside the state directory (`/etc/machine-id`), with
/// `mode` and `owner`: a temporary file created exclusively beside it, then renamed over it, and
/// synced, since that file lives on the root file system and outlives the process.
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32, owner: (u32, u32)) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
    else {
        return Err(io::Error::other("not a file path"));
    };
    let dir = StateDir {
        fd: Arc::new(open_dir(std::fs::File::open("/")?.as_fd(), parent).map_err(errno)?),
        path: parent.to_path_buf(),
    };
    let staged = dir.stage(name, bytes, mode, Some(owner))?;
    staged.commit()?;
    std::fs::File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mva-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn writes_whole_files_with_the_mode() {
        let path = temp("write");
        let dir = StateDir::open(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o755);
        dir.write("run-payload", b"first", 0o600, None).unwrap();
        dir.write("run-payload", b"second", 0o600, None).unwrap();
        assert_eq!(fs::read(path.join("run-payload")).unwrap(), b"second");
        assert_eq!(
            fs::metadata(path.join("run-payload")).unwrap().mode() & 0o777,
            0o600
        );
        let leftovers: Vec<_> = fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
        assert!(dir.write("missing/x", b"x", 0o600, None).is_err());
        assert!(dir.remove("run-payload").unwrap());
        assert!(!dir.remove("run-payload").unwrap());
        fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn a_planted_link_is_replaced_or_refused_never_followed() {
        let path = temp("links");
        let victim = temp("victim");
        fs::create_dir_all(&victim).unwrap();
        let dir = StateDir::open(&path).unwrap();
        std::os::unix::fs::symlink(victim.join("file"), path.join("seed")).unwrap();
        dir.write("seed", b"x", 0o600, None).unwrap();
        assert!(
            !victim.join("file").exists(),
            "the link was replaced, not followed"
        );
        assert!(fs::symlink_metadata(path.join("seed")).unwrap().is_file());
        std::os::unix::fs::symlink(&victim, path.join("secrets")).unwrap();
        let e = dir.subdir("secrets", 0o700, None).err().expect("refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(
            fs::metadata(&victim).unwrap().mode() & 0o777,
            0o755,
            "untouched"
        );
        // A link as the state directory itself, and a directory open to everyone's writes.
        let link = temp("dirlink");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(matches!(StateDir::open(&link), Err(OpenError::Refused(_))));
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o1777)).unwrap();
        let e = StateDir::open(&victim).err().expect("refused");
        assert!(matches!(e, OpenError::Refused(_)), "{e}");
        assert!(e.to_string().contains("writable by group or others"), "{e}");
        assert_eq!(
            fs::metadata(&victim).unwrap().mode() & 0o7777,
            0o1777,
            "not chmodded"
        );
        for p in [&path, &victim] {
            fs::remove_dir_all(p).unwrap();
        }
        fs::remove_file(&link).unwrap();
    }
}
