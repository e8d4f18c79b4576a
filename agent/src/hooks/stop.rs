//! `/suspend` (tell the app, scrub, note the clocks) and `/terminate` (tell the app, forward,
//! then the stop path, answered inside the budget either way).

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{Agent, Answer};
use crate::clone::secrets::{Failure, Scrubbed};
use crate::config::Event;
use crate::hooks::lifecycle::Verdict;

/// The monotonic and the wall clock, read together at `/suspend`, so that `/resume` can report how
/// long the freeze looked on each.
///
/// On Lambda MicroVMs **both** clocks advance across a suspend, by the whole suspended time
/// (measured: 313 s suspended, wall +313.15 s, monotonic +313.14 s; docs/platform.md). So every
/// deadline armed before a freeze is due at once after it: `sys::clock` is how the agent's own
/// timers tell a freeze from elapsed work (a timer that fires late re-arms instead of acting).
#[derive(Clone, Copy, Debug)]
pub(super) struct Clocks {
    mono: Instant,
    wall: std::time::SystemTime,
}

impl Clocks {
    pub(super) fn now() -> Self {
        Clocks {
            mono: Instant::now(),
            wall: std::time::SystemTime::now(),
        }
    }

    pub(super) fn since(then: Clocks) -> Value {
        let wall = std::time::SystemTime::now()
            .duration_since(then.wall)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(-1);
        json!({ "monotonic_ms": then.mono.elapsed().as_millis() as u64, "wall_ms": wall })
    }
}
impl Agent {
    /// Starts the stop path and waits for the app to be gone until just before the deadline;
    /// then answers either way and lets the stop finish. A failed acknowledgement is reported (the answer is still 200: see `fail_policy`).
    pub(super) async fn terminate(&self, path: &str, deadline: Instant) -> Answer {
        let first = crate::sys::lock(&self.life.machine).terminate() == Verdict::Act;
        let mut unacknowledged = None;
        let mut app = None;
        if first {
            // The app hears of it first (it may want to flush), then the stop begins.
            let outcome = self
                .routine()
                .tell_app(Event::Terminate, None, None, deadline)
                .await;
            app = self.forward_to_app(path, Bytes::new(), deadline).await;
            self.life.terminate.send_replace(true);
            if !outcome.ok() {
                unacknowledged = Some(outcome);
            }
        }
        let mut answer = if self.config.app.is_none() {
            Answer::ok(if first {
                "terminating"
            } else {
                "already-terminating"
            })
        } else {
            let gone = self.links.app.wait_gone(deadline).await;
            let view = self.links.app.view();
            match gone {
                true => Answer::with(
                    StatusCode::OK,
                    "stopped",
                    json!({ "exit_code": view.last_exit_code }),
                ),
                false => Answer::with(StatusCode::OK, "stopping", json!({ "pid": view.pid })),
            }
        };
        if let Some(app) = app {
            let refused = app.refused;
            answer.extra["app"] = app.json;
            if let Some(e) = refused {
                answer.extra["stop"] = json!(answer.outcome);
                answer.extra["error"] = json!(format!("{e}; terminating anyway"));
                answer.status = StatusCode::INTERNAL_SERVER_ERROR;
                answer.outcome = "app-refused";
            }
        }
        if let Some(outcome) = unacknowledged {
            answer.extra["stop"] = json!(answer.outcome);
            answer.extra["error"] = json!(format!(
                "the app did not acknowledge: {}; terminating anyway",
                outcome.summary()
            ));
            answer.extra["failed"] = json!(outcome.failed);
            answer.status = StatusCode::INTERNAL_SERVER_ERROR;
            answer.outcome = "not-acknowledged";
        }
        answer
    }

    /// Tells the app, scrubs the secrets marked for it, and notes when we were frozen. A secret
    /// that could not be scrubbed is a failure (it stays on disk through the freeze), reported
    /// as such; whether it answers non-200 is `fail_policy`'s call.
    pub(super) async fn suspend(&self, deadline: Instant) -> Answer {
        let outcome = self
            .routine()
            .tell_app(Event::Suspend, None, None, deadline)
            .await;
        // The app's seed goes the way of a scrub_on_suspend secret: a new one comes on /resume.
        let (secrets, state) = (self.config.secrets.clone(), self.state.clone());
        let scrubbed = crate::sys::offload::run(move || {
            let fail = |name: &str, reason: String| Failure {
                name: name.into(),
                reason,
            };
            let root = match state.get() {
                Ok(root) => root,
                Err(e) => {
                    let reason = format!("cannot open the state directory: {e}");
                    let mut out = Scrubbed::default();
                    let marked = secrets.iter().filter(|s| s.scrub_on_suspend);
                    out.failed = marked.map(|s| fail(&s.name, reason.clone())).collect();
                    out.failed.push(fail("(seed)", reason));
                    return out;
                }
            };
            let mut out = crate::clone::secrets::scrub(&secrets, &root);
            if let Err(e) = root.remove(crate::clone::routine::SEED_FILE) {
                out.failed
                    .push(fail("(seed)", format!("cannot remove it: {e}")));
            }
            out
        })
        .await
        .unwrap_or_else(|| Scrubbed {
            removed: 0,
            failed: vec![Failure {
                name: "(all)".into(),
                reason: "the I/O thread failed".into(),
            }],
        });
        *crate::sys::lock(&self.life.suspended_at) = Some(Clocks::now());
        // The agent keeps no outbound connection (every client request uses a fresh one), so
        // there is nothing of ours to drop before the freeze.
        if !scrubbed.failed.is_empty() {
            let names: Vec<&str> = scrubbed.failed.iter().map(|f| f.name.as_str()).collect();
            for f in &scrubbed.failed {
                tracing::error!(secret = %f.name, reason = %f.reason, "a secret could not be scrubbed before the freeze");
            }
            return Answer::with(
                StatusCode::INTERNAL_SERVER_ERROR,
                "scrub-failed",
                json!({
                    "error": format!("secrets not scrubbed (still on disk): {}; {}", names.join(", "), scrubbed.failed[0].reason),
                    "scrubbed": scrubbed.removed,
                    "not_scrubbed": names,
                }),
            );
        }
        if let Err(answer) = self.check_ack(Event::Suspend, &outcome) {
            return answer;
        }
        Answer::with(
            StatusCode::OK,
            "suspended",
            json!({ "scrubbed": scrubbed.removed }),
        )
    }
}
