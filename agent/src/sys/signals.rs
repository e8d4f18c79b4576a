//! Every signal the agent receives arrives here, as data, through one `signalfd`.
//!
//! `main` blocks all catchable signals before anything else runs (before the runtime starts any
//! thread, so every thread inherits the mask) and opens the signalfd. From then on no signal can
//! kill or interrupt the agent at a bad moment, none is lost while the app is being spawned, and
//! the agent sleeps in `epoll` until one arrives: no handler, no self-pipe, no polling.
//!
//! Fault signals (SEGV, BUS, FPE, ILL) are blocked too, so that when they are *sent* (`kill -SEGV`)
//! they are forwarded to the app like any other; a real fault in the agent is still fatal, because
//! the kernel unblocks a synchronously raised fault signal before delivering it.
//!
//! The app must not inherit this mask: `spawn` resets the mask and every disposition in the child
//! before `exec`, and a black-box test checks the app's `SigBlk`/`SigIgn`.

use std::io;

use nix::sys::signal::{SigSet, SigmaskHow};

/// Sends signal number `sig` to `pid` (a negative `pid` is a process group), for every caller
/// that forwards or stops: one place that talks to `kill(2)`. A number, not `nix`'s `Signal`,
/// because a forwarded signal may be one `Signal` does not name (a real-time signal).
pub fn kill(pid: i32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tokio::io::unix::AsyncFd;

/// Registers a descriptor-owning value (`SignalFd`, `File`, `OwnedFd`) with the runtime for
/// readability.
pub(crate) fn watch_readable<T: std::os::fd::AsRawFd + OwnsFd>(owner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `OwnsFd` types own their descriptor and always return the same one from
    // `as_raw_fd`, so it stays open and unchanged for as long as the `AsyncFd` holds them.
    unsafe { AsyncFd::register_with_interest(owner, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}

/// Types that own exactly one descriptor for their whole life (see [`watch_readable`]).
pub(crate) trait OwnsFd {}
impl OwnsFd for SignalFd {}
impl OwnsFd for std::fs::File {}
impl OwnsFd for std::os::fd::OwnedFd {}

/// The blocked signals and the descriptor they are read from.
pub struct Signals {
    fd: Option<SignalFd>,
    async_fd: Option<AsyncFd<SignalFd>>,
}

impl Signals {
    /// Blocks every catchable signal in the calling thread and opens the signalfd. Call it first
    /// thing in `main`, while the process has one thread.
    pub fn block_all() -> io::Result<Signals> {
        // sigfillset: every signal but the C library's internal ones (musl and glibc leave those
        // out, so the threads machinery keeps working).
        let all = SigSet::all();
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None)?;
        let fd = SignalFd::with_flags(&all, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals {
            fd: Some(fd),
            async_fd: None,
        })
    }

    /// The next signal number. Signals of one kind that arrive while one is pending coalesce,
    /// as the kernel always does; SIGCHLD consumers must therefore reap in a loop.
    pub async fn recv(&mut self) -> io::Result<i32> {
        if self.async_fd.is_none() {
            let fd = self.fd.take().expect("signalfd present until registered");
            self.async_fd = Some(watch_readable(fd)?);
        }
        let async_fd = self.async_fd.as_ref().expect("registered above");
        loop {
            let mut guard = async_fd.readable().await?;
            match guard.get_inner().read_signal() {
                Ok(Some(info)) => return Ok(info.ssi_signo as i32),
                Ok(None) => guard.clear_ready(),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}
