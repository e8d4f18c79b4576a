//! Whether this thread runs under a seccomp filter, read from `/proc/thread-self/status` before
//! the helper makes any call a filter might forbid.
//!
//! A job that inherits a filter killing `socket` (a common sandbox) would die of SIGSYS on our
//! `socket()`, or on our `clone()` of a thread: the helper would have stopped an app that runs
//! fine without it. So a filtered thread gets no helper at all, and the process simply does not
//! take part (the agent lists it as not taking part). Where the status cannot be read (no
//! `/proc`) we cannot tell, and stay out too.

use crate::libc::{Libc, O_RDONLY_CLOEXEC};

/// True unless the status says `Seccomp: 0` (or has no such line: a kernel without seccomp).
pub fn filtered(c: &Libc) -> bool {
    let mut buf = [0u8; 4096];
    let mut len = None;
    for path in [c"/proc/thread-self/status", c"/proc/self/status"] {
        // SAFETY: a NUL-terminated path; the descriptor is ours until we close it below.
        let fd = unsafe { (c.open)(path.as_ptr(), O_RDONLY_CLOEXEC) };
        if fd < 0 {
            continue;
        }
        let mut n = 0usize;
        while n < buf.len() {
            // SAFETY: reads into the free tail of our own buffer.
            let r = unsafe { (c.read)(fd, buf.as_mut_ptr().add(n), buf.len() - n) };
            if r <= 0 {
                break;
            }
            n += r as usize;
        }
        // SAFETY: the descriptor we just opened.
        unsafe { (c.close)(fd) };
        len = Some(n);
        break;
    }
    match len {
        Some(n) => mode(&buf[..n]).is_none_or(|m| m != b'0'),
        None => true,
    }
}

/// The first character of the `Seccomp:` line's value, if there is one.
pub fn mode(status: &[u8]) -> Option<u8> {
    let mut rest = status;
    loop {
        if let Some(v) = rest.strip_prefix(b"Seccomp:") {
            return v.iter().copied().find(|b| !b.is_ascii_whitespace());
        }
        let nl = rest.iter().position(|&b| b == b'\n')?;
        rest = &rest[nl + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_mode() {
        assert_eq!(
            mode(b"Name:\tx\nSeccomp:\t0\nSeccomp_filters:\t0\n"),
            Some(b'0')
        );
        assert_eq!(
            mode(b"Name:\tx\nSeccomp:\t2\nSeccomp_filters:\t1\n"),
            Some(b'2')
        );
        assert_eq!(mode(b"Name:\tx\nNoNewPrivs:\t0\n"), None);
        assert_eq!(mode(b""), None);
    }

    #[test]
    fn this_test_thread_is_not_filtered() {
        assert!(!filtered(crate::libc::for_tests()));
    }
}
