//! Timers that tell a freeze from elapsed time.
//!
//! On Lambda MicroVMs the monotonic clock **advances** while a VM is suspended, by the whole
//! suspended time (measured: 313 s suspended, monotonic +313.14 s; docs/platform.md), and the
//! simulator's SIGSTOP freeze does the same. So a deadline armed before a freeze (a stop grace, a
//! restart backoff, a header deadline) is long past when the VM thaws, and would fire at once:
//! a grace the app never had, a client cut off for time it spent frozen too.
//!
//! The rule here: a timer that fires more than [`FREEZE_SLACK`] after its deadline was frozen
//! (nothing else keeps a one-thread, event-driven process from waking for that long), and is
//! armed again for its whole length instead of acting. How much of the length had passed before
//! the freeze cannot be known without a clock that stops, so the agent errs on the side of
//! patience: at most one extra length, never a burst and never frozen time counted as work.
//! A freeze shorter than what was left of a timer cannot be seen and counts as elapsed time.
//! No timer is added for this: it costs nothing while the agent is idle.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

/// A timer this late was frozen. Large against scheduling delays of a busy machine (tens of ms),
/// small against a suspend (seconds to hours).
pub const FREEZE_SLACK: Duration = Duration::from_secs(1);

/// How late past `deadline` it is now, if that is late enough to mean a freeze.
pub fn frozen_past(deadline: Instant) -> Option<Duration> {
    let late = Instant::now().saturating_duration_since(deadline);
    (late > FREEZE_SLACK).then_some(late)
}

/// A sleep of `length` of *awake* time: re-armed for its whole length after a freeze.
pub struct AwakeSleep {
    sleep: Pin<Box<tokio::time::Sleep>>,
    length: Duration,
}

impl AwakeSleep {
    pub fn new(length: Duration) -> Self {
        AwakeSleep {
            sleep: Box::pin(tokio::time::sleep(length)),
            length,
        }
    }
}

impl Future for AwakeSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            let Some(late) = frozen_past(self.sleep.deadline()) else {
                return Poll::Ready(());
            };
            tracing::debug!(
                late_ms = late.as_millis() as u64,
                "a timer woke after a freeze; re-armed"
            );
            let again = Instant::now() + self.length;
            self.sleep.as_mut().reset(again);
        }
    }
}

impl hyper::rt::Sleep for AwakeSleep {}

/// hyper's timer (header deadlines) on [`AwakeSleep`].
#[derive(Clone, Copy, Debug, Default)]
pub struct AwakeTimer;

impl hyper::rt::Timer for AwakeTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(AwakeSleep::new(duration))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let length = deadline.saturating_duration_since(std::time::Instant::now());
        Box::pin(AwakeSleep::new(length))
    }
}

/// The current time as RFC 3339 UTC with microseconds, without a date library.
pub fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_micros())
}

pub fn rfc3339(secs: i64, micros: u32) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(rfc3339(1_795_900_000, 0), "2026-11-28T21:06:40.000000Z");
        assert_eq!(
            rfc3339(4_107_542_399, 999_999),
            "2100-02-28T23:59:59.999999Z"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_ordinary_sleep_ends_on_time() {
        let t = Instant::now();
        AwakeSleep::new(Duration::from_secs(3)).await;
        assert_eq!(t.elapsed(), Duration::from_secs(3));
    }

    /// A freeze is the process not running while the clock moves: with the paused clock, a
    /// blocking `std::thread::sleep` cannot model it, so the clock is advanced without giving
    /// the timer a chance to run (`advance` polls nothing until it returns).
    #[tokio::test(start_paused = true)]
    async fn a_sleep_woken_long_after_its_deadline_is_rearmed_for_its_whole_length() {
        let t = Instant::now();
        let mut sleep = Box::pin(AwakeSleep::new(Duration::from_secs(3)));
        // Poll once so the timer is registered, as a real pending deadline is.
        assert!(futures_poll(&mut sleep).is_pending());
        // Frozen for 10 s: the deadline (3 s) passes while nothing runs.
        freeze(Duration::from_secs(10));
        sleep.await;
        assert_eq!(
            t.elapsed(),
            Duration::from_secs(13),
            "re-armed for its whole 3 s after the thaw"
        );
        assert!(frozen_past(Instant::now()).is_none());
    }

    fn futures_poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        Pin::new(f).poll(&mut Context::from_waker(waker))
    }

    /// Moves tokio's paused clock forward without running any task (a freeze).
    fn freeze(by: Duration) {
        // `advance` moves the clock on its first poll and then only yields.
        let mut adv = Box::pin(tokio::time::advance(by));
        let _ = futures_poll(&mut adv);
    }
}
