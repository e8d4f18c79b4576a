//! The one descriptor this library owns, and the proof that it still does.
//!
//! A descriptor is a number in a table the app shares with us: a daemon that closes every
//! descriptor above 2 and opens its data file gets our socket's number. Writing our
//! acknowledgement there, reading the app's bytes as if they were ours, or closing its file
//! would corrupt the app (measured before this existed). So the socket's identity (device and
//! inode) is recorded at connect and checked before every receive, send and close; when it is not
//! ours any more we stop at once and touch nothing. `recv`/`send` add a second wall: on a
//! descriptor that is no longer a socket they fail without reading or writing. (What remains is a
//! race of nanoseconds between the check and the call, with another *socket* reusing the number.)

use core::ffi::c_int;
use core::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use crate::libc::Libc;

#[cfg(target_arch = "x86_64")]
const SYS_FSTAT: isize = 5;
#[cfg(target_arch = "aarch64")]
const SYS_FSTAT: isize = 80;

/// A socket's identity: `st_dev` and `st_ino` (the first two 64-bit words of `struct stat` on
/// x86_64 and on aarch64 alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
}

/// What descriptor `fd` is now, if it is one.
pub fn identity(c: &Libc, fd: c_int) -> Option<Identity> {
    let mut st = [0u64; 32]; // 256 bytes: larger than `struct stat` on both architectures
                             // SAFETY: `fstat` writes one `struct stat` (144 or 128 bytes) into our 256-byte buffer.
    let r = unsafe { (c.syscall)(SYS_FSTAT, fd as isize, st.as_mut_ptr()) };
    (r == 0).then_some(Identity {
        dev: st[0],
        ino: st[1],
    })
}

/// The process-wide record of our connection, so that a forked child can tell whether the
/// descriptor it inherited is still ours before it closes it.
pub struct Registered {
    fd: AtomicI32,
    dev: AtomicU64,
    ino: AtomicU64,
}

impl Registered {
    pub const fn new() -> Self {
        Registered {
            fd: AtomicI32::new(-1),
            dev: AtomicU64::new(0),
            ino: AtomicU64::new(0),
        }
    }

    pub fn set(&self, fd: c_int, id: Identity) {
        self.dev.store(id.dev, Ordering::SeqCst);
        self.ino.store(id.ino, Ordering::SeqCst);
        self.fd.store(fd, Ordering::SeqCst);
    }

    /// Forgets `fd` if it is still the one recorded (a forked child may have moved on).
    pub fn clear(&self, fd: c_int) -> bool {
        self.fd
            .compare_exchange(fd, -1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Takes the recorded descriptor out (in a forked child), with the identity it had.
    pub fn take(&self) -> Option<(c_int, Identity)> {
        let fd = self.fd.swap(-1, Ordering::SeqCst);
        (fd >= 0).then(|| {
            (
                fd,
                Identity {
                    dev: self.dev.load(Ordering::SeqCst),
                    ino: self.ino.load(Ordering::SeqCst),
                },
            )
        })
    }
}

/// Closes `fd` only if it is still `id`: never the app's descriptor that took its number.
pub fn close_if_ours(c: &Libc, fd: c_int, id: Identity) -> bool {
    if identity(c, fd) != Some(id) {
        return false;
    }
    // SAFETY: the descriptor is the socket we opened (checked just above).
    unsafe { (c.close)(fd) };
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_number_the_app_reused_is_never_ours_and_never_closed() {
        let c = crate::libc::for_tests();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        let id = identity(c, fd).unwrap();
        assert_eq!(identity(c, fd), Some(id), "stable while it is ours");
        // The app closes every descriptor and opens its own file, which gets the same number.
        let file = std::fs::File::open("/proc/self/status").unwrap();
        // SAFETY: test-only: put the file at our socket's number, as a daemon's open would.
        assert_eq!(unsafe { ::libc::dup2(file.as_raw_fd(), fd) }, fd);
        assert_ne!(identity(c, fd), Some(id));
        assert!(!close_if_ours(c, fd, id), "closed the app's descriptor");
        assert!(
            identity(c, fd).is_some(),
            "the app's descriptor is still open"
        );
        std::mem::forget(a); // its number is the file's now; the file's owner closes it
                             // SAFETY: test-only: close the duplicate we made.
        unsafe { ::libc::close(fd) };
        assert_eq!(identity(c, fd), None, "a closed number has no identity");
    }

    #[test]
    fn the_record_is_taken_once_and_only_cleared_by_its_owner() {
        let r = Registered::new();
        assert!(r.take().is_none());
        let id = Identity { dev: 1, ino: 2 };
        r.set(7, id);
        assert!(!r.clear(8), "another descriptor cannot clear the record");
        assert_eq!(r.take(), Some((7, id)));
        assert!(r.take().is_none());
        r.set(9, id);
        assert!(r.clear(9));
        assert!(r.take().is_none());
    }
}
