//! After the app exits: whether it restarts (the policy, crash-loop protection, backoff), gives
//! up, or the agent exits, and the build-failure linger.

use tokio::time::Instant;

use super::{Phase, Supervisor, Then, FAIL_LINGER, MAX_BACKOFF};
use crate::config::Restart;
use crate::supervise::reaper::Exit;
use crate::supervise::Health;

impl Supervisor {
    pub(super) fn on_app_exit(&mut self, exit: Exit, children_left: bool) {
        let Some(c) = self.current.take() else { return };
        c.probe.abort();
        let uptime = c.started.elapsed();
        self.last_exit = Some(exit);
        if matches!(self.phase, Phase::Draining { .. }) {
            tracing::info!(pid = c.pid, %exit, "the app stopped");
            return;
        }
        let wanted = !self.stopping
            && match self.app.restart {
                Restart::Never => false,
                Restart::OnFailure => !exit.success(),
                Restart::Always => true,
            };
        let then = if wanted {
            if uptime >= self.app.reset_after {
                self.attempts = 0;
            }
            self.attempts += 1;
            if self.attempts > self.app.max_restarts {
                tracing::error!(pid = c.pid, %exit, restarts = self.restarts, max_restarts = self.app.max_restarts, "the app keeps failing; giving up");
                self.gave_up = true;
                Then::Exit
            } else {
                tracing::warn!(pid = c.pid, %exit, uptime_ms = uptime.as_millis() as u64, attempt = self.attempts, reason = "exited", "the app will be restarted");
                Then::Restart
            }
        } else {
            tracing::info!(pid = c.pid, %exit, "the app exited");
            Then::Exit
        };
        self.health.send_replace(if then == Then::Restart {
            Health::Starting
        } else {
            Health::Failed
        });
        // Leftovers of this instance get the same treatment as a stop: signal, grace, SIGKILL.
        // No child left means no descendant left (orphans are re-parented to us): no sweep.
        if children_left {
            self.signal_tree(self.app.stop_signal);
        }
        self.phase = Phase::Draining {
            deadline: Instant::now() + self.app.stop_timeout,
            killed: false,
            then,
        };
    }

    pub(super) fn drained(&mut self, then: Then) {
        if then == Then::RestartNow && !self.stopping {
            self.restarts += 1;
            if let Err(e) = self.spawn_app() {
                tracing::error!(error = %e.message, "cannot restart the app");
                self.fail_for_good(e.code);
            }
            return;
        }
        if then == Then::Restart && !self.stopping {
            let base = self.app.restart_delay;
            let delay = (base * 2u32.saturating_pow(self.attempts.saturating_sub(1).min(16)))
                .min((base * 50).max(MAX_BACKOFF));
            self.phase = Phase::Backoff {
                until: Instant::now() + delay,
                delay,
            };
            return;
        }
        let code = self.exit_code();
        self.phase = if !self.stopping && (self.linger_when)() {
            tracing::info!(
                linger_s = FAIL_LINGER.as_secs(),
                "the app is gone before /run: answering /ready 500 so the build fails fast"
            );
            Phase::Lingering {
                until: Instant::now() + FAIL_LINGER,
                code,
            }
        } else {
            Phase::Done(code)
        };
    }

    pub(super) fn exit_code(&self) -> i32 {
        match self.last_exit {
            Some(e) if self.gave_up && e.success() => 1,
            Some(e) => e.code(),
            None => 0,
        }
    }

    pub(super) fn fail_for_good(&mut self, code: i32) {
        self.gave_up = true;
        self.last_exit = Some(Exit::Code(code));
        self.health.send_replace(Health::Failed);
        self.phase = Phase::Done(code);
        self.publish();
    }
}
