//! The I/O thread: where every call that can block on storage or on `exec` runs, so that the
//! runtime's one thread never does (while it blocks, no timer fires and no hook can answer).
//!
//! One thread, jobs in the order they were sent: two routines' file writes can never land out of
//! order (a cancelled `/validate`'s last rename cannot overtake the `/run` that followed it),
//! and the agent never holds more than one extra thread, however slow the disk. The thread is
//! started on first use and then sleeps in `recv`: idle means idle.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

fn sender() -> &'static Mutex<mpsc::Sender<Job>> {
    static TX: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("mva-io".into())
            // Small: the jobs are syscalls and short buffers.
            .stack_size(256 * 1024)
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("cannot start the I/O thread");
        Mutex::new(tx)
    })
}

/// Queues `f` on the I/O thread at once (jobs run in the order of these calls) and returns a
/// future of its result that never blocks the runtime. A job that panicked gives `None`, and the
/// thread lives on for the next one. Dropping the future does not cancel the job.
pub fn run<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = Option<T>> {
    run_or_else(f, drop)
}

/// [`run`], and when nobody waits for the result any more (the future was dropped: a deadline
/// passed), `abandoned` gets it on the I/O thread: a process started for nobody is killed there,
/// never leaked.
pub fn run_or_else<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
    abandoned: impl FnOnce(T) + Send + 'static,
) -> impl std::future::Future<Output = Option<T>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok();
        if let Some(out) = out {
            if let Err(out) = tx.send(out) {
                abandoned(out);
            }
        }
    });
    let sent = crate::sys::lock(sender()).send(job).is_ok();
    async move {
        if !sent {
            return None;
        }
        rx.await.ok()
    }
}

/// [`run`] for an `io::Result`: a job that panicked or was lost is an error too.
pub async fn io<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    run(f)
        .await
        .unwrap_or_else(|| Err(std::io::Error::other("the I/O thread failed")))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn jobs_run_off_the_runtime_thread_in_order() {
        let here = std::thread::current().id();
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waits = Vec::new();
        for i in 0..20 {
            let order = order.clone();
            waits.push(super::run(move || {
                order.lock().unwrap().push(i);
                std::thread::current().id()
            }));
        }
        for w in waits {
            assert_ne!(w.await.unwrap(), here);
        }
        assert_eq!(*order.lock().unwrap(), (0..20).collect::<Vec<_>>());
        assert!(super::run(|| panic!("bug")).await.is_none());
        assert_eq!(
            super::run(|| 7).await,
            Some(7),
            "the thread outlives a panicking job"
        );
    }
}
