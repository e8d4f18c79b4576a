//! Hook budgets: every hook's work runs under a deadline, and the answer leaves before it.
//!
//! The platform counts an answer that arrives after the hook's timeout as a failure, and the
//! clock it measures with includes the network and its own scheduling. So the agent answers at
//! `budget - margin` at the latest, where the margin is a tenth of the budget, at most 250 ms
//! (1 s budget: answer by 900 ms; 30 s: by 29.75 s).
//!
//! The work is spawned as its own task: when the deadline passes the hook answers, and the work
//! goes on in the background (a stop that is still in progress, a warm-up that is still running),
//! to finish or fail on its own; the caller records what happened when it does.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio::time::Instant;

// The margin is part of the configuration's checks too (a notify timeout must fit inside it),
// so it lives with the configuration, below every subsystem.
pub use crate::config::{deadline_after, MAX_MARGIN};

/// Why work did not produce a value in time.
#[derive(Debug, PartialEq, Eq)]
pub enum Missed {
    /// The deadline came first; the work is still running in the background.
    Overrun,
    /// The work panicked (a bug); the hook still answers.
    Panicked,
    /// The work was cancelled on purpose (a `/validate` pre-empted by `/run`).
    Cancelled,
}

/// Runs `work` as its own task and waits for it until `deadline`. The work is never cancelled
/// by the deadline: hooks whose work may safely continue rely on that.
pub async fn within<F>(deadline: Instant, work: F) -> Result<F::Output, Missed>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    wait(deadline, tokio::spawn(work)).await
}

/// [`within`] for work already spawned (whose abort handle someone keeps).
pub async fn wait<T>(deadline: Instant, mut task: JoinHandle<T>) -> Result<T, Missed> {
    match tokio::time::timeout_at(deadline, &mut task).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if e.is_cancelled() => Err(Missed::Cancelled),
        Ok(Err(_)) => Err(Missed::Panicked),
        Err(_) => Err(Missed::Overrun),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn margins() {
        assert_eq!(
            deadline_after(Duration::from_secs(1)),
            Duration::from_millis(900)
        );
        assert_eq!(
            deadline_after(Duration::from_secs(30)),
            Duration::from_millis(29_750)
        );
        assert_eq!(
            deadline_after(Duration::from_secs(2)),
            Duration::from_millis(1800)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_never_finishes_still_yields_an_answer_at_the_deadline() {
        let start = Instant::now();
        let deadline = start + deadline_after(Duration::from_secs(1));
        let r = within(deadline, std::future::pending::<()>()).await;
        assert_eq!(r, Err(Missed::Overrun));
        assert_eq!(
            Instant::now(),
            deadline,
            "answered exactly at the deadline (paused clock)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fast_work_answers_at_once_with_its_value() {
        let start = Instant::now();
        let r = within(start + Duration::from_secs(1), async { 7 }).await;
        assert_eq!(r, Ok(7));
        assert_eq!(Instant::now(), start);
    }

    #[tokio::test(start_paused = true)]
    async fn overrun_work_keeps_running_in_the_background() {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let start = Instant::now();
        let r = within(start + Duration::from_millis(900), async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            flag.store(true, Ordering::SeqCst);
        })
        .await;
        assert_eq!(r, Err(Missed::Overrun));
        assert!(!done.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            done.load(Ordering::SeqCst),
            "the work was not cancelled by the deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_work_still_yields_an_answer() {
        let r = within(Instant::now() + Duration::from_secs(1), async {
            panic!("bug")
        })
        .await;
        assert_eq!(r, Err(Missed::Panicked));
    }
}
