//! The one place that calls `waitpid`.
//!
//! Two reapers steal each other's exit statuses (a second `waitpid(-1)` takes the app's status and
//! the first sees ECHILD), so exactly one exists: this one, driven by SIGCHLD from the signal
//! loop. Whoever spawns a process registers interest in its pid *before the next await* (the
//! runtime is single-threaded, so the reaper cannot run in between) and receives its [`Exit`].
//! Everything else that exits (orphans re-parented to us) is reaped and logged at debug.
//!
//! SIGCHLD coalesces: one signal may stand for many exits, so [`Reaper::reap`] loops with
//! `WNOHANG` until nothing more is ready.

use std::collections::HashMap;
use std::sync::Mutex;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The shell convention: the code itself, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }

    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => {
                let name = nix::sys::signal::Signal::try_from(*s)
                    .map(|s| s.as_str())
                    .unwrap_or("?");
                write!(f, "signal {s} ({name})")
            }
        }
    }
}

/// Exits nobody was waiting for yet, kept this many at the most (the newest).
const UNCLAIMED: usize = 256;

#[derive(Default)]
struct Inner {
    waiters: HashMap<i32, oneshot::Sender<Exit>>,
    /// Counts every process reaped: the order of reaps.
    reaped: u64,
    /// Exits of processes nobody waited for, with their place in that order: a helper started
    /// on the I/O thread may be reaped before the one who started it registers.
    unclaimed: std::collections::VecDeque<(i32, u64, Exit)>,
}

#[derive(Default)]
pub struct Reaper {
    inner: Mutex<Inner>,
}

impl Reaper {
    /// Registers interest in `pid`'s exit. Call it right after spawning, before any await.
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<Exit> {
        self.watch_since(pid, u64::MAX)
    }

    /// Where the reaps stand now: take it before starting a process on another thread, and
    /// register with [`Reaper::watch_since`].
    pub fn epoch(&self) -> u64 {
        crate::sys::lock(&self.inner).reaped
    }

    /// Registers interest in `pid`, started after `epoch`: if it was reaped since (it can only be
    /// that process: a pid is reused only after its last holder was reaped, before the epoch),
    /// its exit is handed over at once.
    pub fn watch_since(&self, pid: i32, epoch: u64) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        let mut inner = crate::sys::lock(&self.inner);
        let found = inner
            .unclaimed
            .iter()
            .position(|&(p, at, _)| p == pid && epoch != u64::MAX && at > epoch);
        match found.and_then(|i| inner.unclaimed.remove(i)) {
            Some((_, _, exit)) => {
                let _ = tx.send(exit);
            }
            None => {
                inner.waiters.insert(pid, tx);
            }
        }
        rx
    }

    /// Reaps every child that has exited and hands each status to its waiter. Returns whether
    /// any child (of any kind) is still alive.
    pub fn reap(&self) -> bool {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.deliver(pid.as_raw(), Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.deliver(pid.as_raw(), Exit::Signal(sig as i32))
                }
                Ok(WaitStatus::StillAlive) => return true,
                // Stopped/continued are not reported without WUNTRACED/WCONTINUED.
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => return false,
                Err(e) => {
                    tracing::error!(error = %e, "waitpid failed");
                    return true;
                }
            }
        }
    }

    fn deliver(&self, pid: i32, exit: Exit) {
        let mut inner = crate::sys::lock(&self.inner);
        inner.reaped += 1;
        match inner.waiters.remove(&pid) {
            Some(tx) => {
                let _ = tx.send(exit);
            }
            None => {
                tracing::debug!(pid, %exit, "reaped an orphan");
                let at = inner.reaped;
                if inner.unclaimed.len() == UNCLAIMED {
                    inner.unclaimed.pop_front();
                }
                inner.unclaimed.push_back((pid, at, exit));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_reaped_before_its_watcher_registers_is_handed_over_only_to_a_later_process() {
        let r = Reaper::default();
        // An orphan with pid 42 exits before anyone started a new 42.
        r.deliver(42, Exit::Code(1));
        let epoch = r.epoch();
        // A helper started now gets pid 43 and is reaped before it is watched.
        r.deliver(43, Exit::Code(7));
        let mut late = r.watch_since(43, epoch);
        assert_eq!(late.try_recv(), Ok(Exit::Code(7)));
        // A new process that reuses pid 42 must not get the old orphan's exit.
        let mut reused = r.watch_since(42, epoch);
        assert!(reused.try_recv().is_err());
        r.deliver(42, Exit::Code(0));
        assert_eq!(reused.try_recv(), Ok(Exit::Code(0)));
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(Exit::Code(7).code(), 7);
        assert_eq!(Exit::Signal(15).code(), 143);
        assert_eq!(Exit::Signal(9).code(), 137);
        assert_eq!(Exit::Signal(11).code(), 139);
        assert!(Exit::Code(0).success() && !Exit::Code(1).success() && !Exit::Signal(15).success());
        assert_eq!(Exit::Signal(15).to_string(), "signal 15 (SIGTERM)");
    }
}
