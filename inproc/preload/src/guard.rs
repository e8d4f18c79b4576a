//! The one lock that keeps our calls into OpenSSL out of the process's `exit` and `fork`.
//!
//! Two ways a helper thread calling `RAND_add` harms a process that would be fine without it:
//! - **exit**: the main thread runs OpenSSL's cleanup (an `atexit` handler that frees its locks)
//!   while our thread is inside `RAND_add`: the process crashes on its way out (measured: a
//!   SIGSEGV in `RAND_get_rand_method` on a freed lock, a few per thousand short-lived `openssl`
//!   runs).
//! - **fork**: another thread forks while ours holds OpenSSL's generator lock (or the loader's,
//!   in `dl_iterate_phdr`): the child inherits it held, and hangs in its first `RAND_bytes`.
//!
//! - **our thread's own end**: a thread that has called OpenSSL and returns runs OpenSSL's
//!   per-thread destructor, beside the main thread's cleanup when the process is exiting: not a
//!   matter for this lock (the destructor runs after our last reseed), so that thread never
//!   returns (`stay` in `lib.rs`).
//!
//! So every reseed runs under this lock; `exit` takes it (waiting out a reseed in progress) and
//! marks the process as leaving, after which no reseed starts; `fork` holds it across the
//! system call, so no child is made while a reseed runs. The lock is a word, not a libc mutex: it
//! must be resettable in the child, and a waiter outside our thread (an exiting or forking
//! thread of the app) waits a bounded time, never for ever: should our thread ever be stuck
//! inside OpenSSL (on a lock the app holds while it forks), the app still forks and exits.

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// How long the app's exiting or forking thread waits for a reseed in progress, in pauses.
/// A reseed takes well under a millisecond; this is only the bound for one that cannot finish.
pub const APP_WAIT_PAUSES: u32 = 10_000;

/// The lock, the "leaving" mark and whether the fork in progress holds the lock.
pub struct Guard {
    state: AtomicU32,
    exiting: AtomicBool,
    held_for_fork: AtomicBool,
}

const FREE: u32 = 0;
const HELD: u32 = 1;

impl Guard {
    pub const fn new() -> Self {
        Guard {
            state: AtomicU32::new(FREE),
            exiting: AtomicBool::new(false),
            held_for_fork: AtomicBool::new(false),
        }
    }

    fn try_lock(&self) -> bool {
        self.state
            .compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Takes the lock, pausing between tries, at most `pauses` times (`None`: for ever).
    fn lock(&self, pauses: Option<u32>, pause: &dyn Fn()) -> bool {
        let mut n = 0u32;
        while !self.try_lock() {
            if pauses.is_some_and(|max| n >= max) {
                return false;
            }
            pause();
            n = n.saturating_add(1);
        }
        true
    }

    fn unlock(&self) {
        self.state.store(FREE, Ordering::Release);
    }

    /// Runs `reseed` under the lock, unless the process is leaving (`None`). Our own thread
    /// waits as long as it takes: an exit or a fork holds the lock only briefly.
    pub fn reseed<R>(&self, pause: &dyn Fn(), reseed: impl FnOnce() -> R) -> Option<R> {
        self.lock(None, pause);
        let out = if self.exiting.load(Ordering::Acquire) {
            None
        } else {
            Some(reseed())
        };
        self.unlock();
        out
    }

    /// At `exit` (any of our exit handlers, more than once is fine): waits out a reseed in
    /// progress, then no reseed starts again.
    pub fn exit(&self, pause: &dyn Fn()) {
        let held = self.lock(Some(APP_WAIT_PAUSES), pause);
        self.exiting.store(true, Ordering::Release);
        if held {
            self.unlock();
        }
    }

    pub fn leaving(&self) -> bool {
        self.exiting.load(Ordering::Acquire)
    }

    /// Before `fork`, in the forking thread: waits out a reseed in progress and holds the lock
    /// across the fork.
    pub fn fork_prepare(&self, pause: &dyn Fn()) {
        let held = self.lock(Some(APP_WAIT_PAUSES), pause);
        self.held_for_fork.store(held, Ordering::Release);
    }

    /// After `fork`, in the parent.
    pub fn fork_parent(&self) {
        if self.held_for_fork.swap(false, Ordering::AcqRel) {
            self.unlock();
        }
    }

    /// After `fork`, in the child: one thread exists, the lock is free whoever held it.
    pub fn fork_child(&self) {
        self.held_for_fork.store(false, Ordering::Release);
        self.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::Duration;

    fn nap() {
        std::thread::sleep(Duration::from_micros(50));
    }

    #[test]
    fn an_exit_waits_for_the_reseed_in_progress_and_stops_the_next() {
        let g = Arc::new(Guard::new());
        let inside = Arc::new(AtomicUsize::new(0));
        let (g2, inside2) = (g.clone(), inside.clone());
        let t = std::thread::spawn(move || {
            g2.reseed(&nap, || {
                inside2.store(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
                inside2.store(2, Ordering::SeqCst);
            })
        });
        while inside.load(Ordering::SeqCst) == 0 {
            nap();
        }
        g.exit(&nap);
        assert_eq!(
            inside.load(Ordering::SeqCst),
            2,
            "exit returned while a reseed was still running"
        );
        assert!(t.join().unwrap().is_some());
        assert!(g.reseed(&nap, || ()).is_none(), "a reseed ran after exit");
        assert!(g.leaving());
    }

    #[test]
    fn a_fork_never_happens_inside_a_reseed_and_the_child_starts_unlocked() {
        let g = Guard::new();
        g.fork_prepare(&nap);
        assert!(!g.try_lock(), "the fork holds the lock");
        g.fork_child();
        assert!(g.reseed(&nap, || 7) == Some(7), "the child's lock is free");
        g.fork_prepare(&nap);
        g.fork_parent();
        assert!(
            g.reseed(&nap, || 8) == Some(8),
            "the parent's lock is free again"
        );
    }

    #[test]
    fn the_apps_wait_is_bounded_when_a_reseed_never_ends() {
        let g = Guard::new();
        assert!(g.try_lock()); // a reseed stuck for ever
        let pauses = AtomicUsize::new(0);
        let count = || {
            pauses.fetch_add(1, Ordering::SeqCst);
        };
        g.fork_prepare(&count);
        g.fork_parent(); // must not release the lock it did not get
        assert!(
            !g.try_lock(),
            "the parent released a lock the fork never held"
        );
        g.exit(&count);
        assert_eq!(pauses.load(Ordering::SeqCst), 2 * APP_WAIT_PAUSES as usize);
        assert!(g.leaving());
    }
}
