//! The acting hooks (`/validate`, `/run`, `/resume`, `/suspend`): one at a time behind the
//! action guard, after the lifecycle state machine says yes, their work under the hook's budget.

use std::sync::Arc;

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::json;
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use super::answer::busy_status;
use super::budget::{self, Missed};
use super::lifecycle::{Hook, Verdict};
use super::stop::Clocks;
use super::warmup::Warmup;
use super::{run_body, Agent, Answer};
use crate::config::Event;
use crate::sys::offload;

impl Agent {
    pub(super) async fn acting(
        self: &Arc<Self>,
        hook: Hook,
        body: Bytes,
        deadline: Instant,
    ) -> Answer {
        // The warm-up holds the action guard for as long as it runs (minutes, maybe): the
        // platform's polls meanwhile get their answer at once instead of waiting out the budget.
        if hook == Hook::Validate && *crate::sys::lock(&self.build.warmup) == Warmup::Running {
            return Answer::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "warming-up",
                "the warm-up requests are still running; ask again",
            );
        }
        if hook == Hook::Run {
            // The platform's `/run` never waits on a `/validate`: anyone may call `/validate`
            // (the image builder looks forwarded), and on a clone that is about to run it is
            // nobody's but a stranger's. Its work and its warm-up are cancelled here.
            self.preempt_validate();
        }
        let Ok(guard) =
            tokio::time::timeout_at(deadline, self.life.actions.clone().lock_owned()).await
        else {
            return Answer::error(
                busy_status(hook),
                "busy",
                "an earlier hook is still working; its work did not finish in time",
            );
        };
        let verdict = {
            let mut m = crate::sys::lock(&self.life.machine);
            match hook {
                Hook::Validate => m.validate(self.health()),
                Hook::Run => m.run(&body),
                Hook::Resume => m.resume(),
                Hook::Suspend => m.suspend(),
                Hook::Ready | Hook::Terminate => unreachable!("not an acting hook"),
            }
        };
        match verdict {
            Verdict::Act => {}
            Verdict::Replay => return self.replay(),
            Verdict::Already => return Answer::ok("already"),
            Verdict::Ignored(why) => {
                return Answer::with(StatusCode::OK, "ignored", json!({ "reason": why }))
            }
            Verdict::NotYet(why) => {
                return Answer::error(StatusCode::SERVICE_UNAVAILABLE, "not-ready", why)
            }
            Verdict::Failed => {
                return Answer::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "failed",
                    "the app has failed for good",
                )
            }
            Verdict::Conflict(why) => return Answer::error(StatusCode::CONFLICT, "conflict", why),
        }
        let agent = self.clone();
        // The guard travels with the work (a `/validate` lets go of it before its warm-up).
        let work = tokio::spawn(async move { agent.act(hook, body, deadline, guard).await });
        if hook == Hook::Validate {
            *crate::sys::lock(&self.build.validating) = Some(work.abort_handle());
        }
        match budget::wait(deadline, work).await {
            Ok(answer) => answer,
            Err(Missed::Cancelled) => Answer::error(
                StatusCode::CONFLICT,
                "conflict",
                "/run arrived while this /validate was working; /validate is a build-time hook",
            ),
            Err(Missed::Overrun) if hook == Hook::Validate => Answer::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "warming-up",
                "the warm-up requests are still running; ask again",
            ),
            Err(Missed::Overrun) => Answer::error(
                busy_status(hook),
                "timeout",
                "the hook's work did not finish inside its budget; it goes on in the background",
            ),
            Err(Missed::Panicked) => Answer::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal-error",
                "the hook's work failed (a bug: see the agent's log)",
            ),
        }
    }

    /// A `/run` with the body of the one that acted. It does not act again, and it answers what
    /// that one did: a replay of a failed `/run` is the same failure, never a success that did
    /// not happen. (Running the routine again would not help: the platform ends a VM whose `/run`
    /// failed, and a local caller who retries gets the reason.)
    fn replay(&self) -> Answer {
        match &*crate::sys::lock(&self.life.run_failure) {
            None => Answer::ok("replay"),
            Some((status, outcome, extra)) => {
                let mut extra = extra.clone();
                extra["replay"] = json!(true);
                Answer::with(*status, outcome, extra)
            }
        }
    }

    /// Cancels a `/validate` that is still working (its routine or its warm-up).
    fn preempt_validate(&self) {
        let running = [
            crate::sys::lock(&self.build.validating).take(),
            crate::sys::lock(&self.build.warmup_task).take(),
        ];
        for task in running.into_iter().flatten() {
            task.abort();
        }
        let mut w = crate::sys::lock(&self.build.warmup);
        if *w == Warmup::Running {
            *w = Warmup::Failed("cancelled: /run arrived".into());
        }
    }

    /// The work of an acting hook, after the state machine said yes; `guard` is the action
    /// guard, held until the work is done.
    async fn act(
        self: &Arc<Self>,
        hook: Hook,
        body: Bytes,
        deadline: Instant,
        guard: OwnedMutexGuard<()>,
    ) -> Answer {
        if hook == Hook::Validate {
            return self.validate(deadline, guard).await;
        }
        let answer = self.act_inner(hook, body, deadline).await;
        drop(guard);
        if hook == Hook::Run && !answer.status.is_success() {
            *crate::sys::lock(&self.life.run_failure) =
                Some((answer.status, answer.outcome, answer.extra.clone()));
        }
        answer
    }

    async fn act_inner(&self, hook: Hook, body: Bytes, deadline: Instant) -> Answer {
        let generation = match hook {
            Hook::Run => {
                if let Err(answer) = self.run(&body).await {
                    return answer;
                }
                self.hook_generation(Event::Run, &[&body], deadline).await
            }
            Hook::Resume => self.hook_generation(Event::Resume, &[], deadline).await,
            Hook::Suspend => return self.suspend(deadline).await,
            Hook::Ready | Hook::Terminate | Hook::Validate => unreachable!("not acted here"),
        };
        let frozen = (hook == Hook::Resume)
            .then(|| {
                crate::sys::lock(&self.life.suspended_at)
                    .take()
                    .map(Clocks::since)
            })
            .flatten();
        match generation {
            Ok(g) => Answer::with(
                StatusCode::OK,
                if hook == Hook::Run { "ok" } else { "resumed" },
                json!({ "generation": g.generation, "id": g.id, "microvm_id": g.microvm_id, "kernel_reseed": g.kernel_reseed, "kernel_crng": g.kernel_crng, "since_suspend": frozen }),
            ),
            Err(e) => e.into(),
        }
    }

    /// Writes the payload and the VM id; `Err` is the answer when they cannot be written.
    async fn run(&self, body: &[u8]) -> Result<(), Answer> {
        let parsed = run_body::parse(body);
        let dir = &self.config.state_dir;
        let (state, owner) = (self.state.clone(), self.app_owner());
        let (payload, id) = (parsed.payload, parsed.microvm_id.clone());
        let written = offload::io(move || {
            let d = state.get()?;
            d.write("run-payload", &payload, 0o600, owner)?;
            match id {
                Some(id) => d.write("microvm-id", id.as_bytes(), 0o644, None),
                None => Ok(()),
            }
        })
        .await;
        if let Err(e) = written {
            // Without its payload the app would serve this VM with no per-VM data: dying is the
            // lesser harm, so this is the one case where /run fails.
            tracing::error!(error = %e, dir = %dir.display(), "cannot write the run payload");
            return Err(Answer::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "state-dir-error",
                format!("cannot write the run payload in {}: {e}", dir.display()),
            ));
        }
        *crate::sys::lock(&self.lineage.microvm_id) = parsed.microvm_id;
        Ok(())
    }
}
