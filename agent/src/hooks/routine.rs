//! When the new-generation routine (`clone::routine`) runs, and what it means for a hook: a
//! hook's routine is remembered (a restore seen right after is the same one), a restore noticed
//! without a hook runs it once the app is up, and whether the app's acknowledgements are enough
//! is the hooks' policy (`fail_on`, `on_timeout`).

use std::time::Duration;

use hyper::StatusCode;
use serde_json::json;
use tokio::time::Instant;

use super::{Agent, Answer};
use crate::clone::generation::Generation;
use crate::clone::notify::Outcome;
use crate::clone::routine::Routine;
use crate::clone::routine_error::unacknowledged;
pub use crate::clone::routine_error::RoutineError;
use crate::config::{Event, OnTimeout};

/// A restore noticed this soon after a hook's routine is the same restore: not redone.
const SAME_RESTORE: Duration = Duration::from_secs(2);

impl Agent {
    /// The routine, lent this agent's parts.
    pub(crate) fn routine(&self) -> Routine<'_> {
        Routine {
            config: &self.config,
            state: &self.state,
            lineage: &self.lineage,
            links: &self.links,
        }
    }

    /// Runs the routine under this agent's policy for `event`.
    pub(crate) async fn new_generation(
        &self,
        event: Event,
        reason: &'static str,
        inputs: &[&[u8]],
        deadline: Instant,
    ) -> Result<Generation, RoutineError> {
        let policy = |o: &Outcome| self.acknowledged(event, o);
        self.routine()
            .run(event, reason, inputs, deadline, &policy)
            .await
    }

    /// A missing acknowledgement is a failure of the hook, except that for a hook in `fail_on`
    /// `on_timeout = "continue"` waives it. (For the other hooks it is always reported, and
    /// `fail_policy` turns it into a 200 that says so.)
    pub(crate) fn acknowledged(&self, event: Event, outcome: &Outcome) -> bool {
        let waived = self.config.hooks.fails_on(event)
            && self.config.notify.on_timeout == OnTimeout::Continue;
        outcome.ok() || waived
    }

    /// The answer for a hook (no generation: `/suspend`) whose event the app did not acknowledge.
    pub(crate) fn check_ack(&self, event: Event, outcome: &Outcome) -> Result<(), Answer> {
        if self.acknowledged(event, outcome) {
            return Ok(());
        }
        Err(Answer::with(
            StatusCode::INTERNAL_SERVER_ERROR,
            "not-acknowledged",
            json!({ "error": unacknowledged(outcome), "failed": outcome.failed }),
        ))
    }

    /// A hook's routine: remembered, so that a restore detected right after is not redone.
    pub(crate) async fn hook_generation(
        &self,
        event: Event,
        inputs: &[&[u8]],
        deadline: Instant,
    ) -> Result<Generation, RoutineError> {
        *crate::sys::lock(&self.lineage.last_hook_routine) = Some(Instant::now());
        self.new_generation(event, event.as_str(), inputs, deadline)
            .await
    }

    /// A restore noticed without a hook (VM generation counter, VMGenID uevent, clock step).
    /// Runs the routine unless a hook just did, on a VM whose app is up.
    pub async fn restore_detected(&self, source: &'static str) {
        let state = self.state();
        // Ready counts: a clone restored from the build snapshot whose /run hook is disabled (or
        // late) is exactly what this defence is for. Booting does not: the app is not up yet, and
        // the build VM itself is never restored before its snapshot.
        use crate::hooks::lifecycle::State::{Ready, Running, Suspended};
        if !matches!(state, Ready | Running | Suspended) {
            tracing::info!(source, ?state, "restore detected; nothing to do");
            return;
        }
        // After the hooks' guard: a hook's routine in progress finishes first. One restore can
        // show up on several sources (a hook, a stale clock, then the clock step that routine
        // itself makes): whichever came first made the generation.
        let _guard = self.life.actions.lock().await;
        {
            let mut last = crate::sys::lock(&self.lineage.last_hook_routine);
            if last.is_some_and(|t| t.elapsed() < SAME_RESTORE) {
                tracing::info!(source, "restore detected; already handled");
                return;
            }
            *last = Some(Instant::now());
        }
        crate::sys::lock(&self.life.machine).restored();
        tracing::warn!(
            source,
            "restore detected without a hook: making a new generation"
        );
        let deadline =
            Instant::now() + crate::hooks::budget::deadline_after(self.config.hooks.resume_timeout);
        let _ = self
            .new_generation(
                Event::Resume,
                "restore-detected",
                &[source.as_bytes()],
                deadline,
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hooks::lifecycle::Health;
    use crate::hooks::Links;

    fn agent(extra: &str, dir: &std::path::Path) -> Arc<Agent> {
        let text = format!(
            "state_dir = {:?}\n[entropy]\nkernel = \"off\"\n[identity]\nmachine_id = false\n{extra}",
            dir.display().to_string()
        );
        let config =
            crate::config::from_table(&text.parse().unwrap(), &Default::default(), None).unwrap();
        let links = Links::without_app(&config.state_dir);
        Agent::new(config, links)
    }

    fn steps(a: &Agent) -> Vec<&'static str> {
        let r = a.lineage.last_routine.lock().unwrap();
        r.as_ref().expect("a routine ran").steps()
    }

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("mva-routine-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn the_steps_run_in_order() {
        let dir = tmp("order");
        let a = agent("[[secret]]\nname = \"k\"\nbytes = 8\n", &dir);
        let deadline = Instant::now() + Duration::from_secs(1);
        let g = a
            .new_generation(Event::Run, "run", &[b"body"], deadline)
            .await
            .unwrap();
        assert_eq!(
            steps(&a),
            [
                "clock",
                "kernel",
                "generator",
                "secrets",
                "publish",
                "notify"
            ]
        );
        assert_eq!(g.generation, 1);
        assert!(dir.join("secrets/k").exists() && dir.join("generation").exists());
        let g2 = a
            .new_generation(Event::Resume, "resume", &[], deadline)
            .await
            .unwrap();
        assert_eq!(g2.generation, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_lock_poisoned_by_a_panic_does_not_silence_the_hooks() {
        let dir = tmp("poison");
        let a = agent("", &dir);
        for _ in 0..2 {
            let a = a.clone();
            let _ = std::thread::spawn(move || {
                let _stats = a.life.stats.lock().unwrap();
                let _machine = a.life.machine.lock().unwrap();
                panic!("a bug while holding the agent's locks");
            })
            .join();
        }
        assert!(a.life.stats.is_poisoned() && a.life.machine.is_poisoned());
        let answer = a
            .hook(
                crate::hooks::lifecycle::Hook::Ready,
                super::super::Caller::Platform,
                "/ready",
                bytes::Bytes::new(),
                Instant::now(),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        assert_eq!(a.status().await["hooks"]["ready"]["count"], 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_failed_secret_stops_the_routine_before_anything_is_published() {
        let dir = tmp("fail");
        let a = agent(
            "[[secret]]\nname = \"bad\"\nexec = [\"/nonexistent/command\"]\n",
            &dir,
        );
        let deadline = Instant::now() + Duration::from_secs(1);
        let err = a
            .new_generation(Event::Run, "run", &[], deadline)
            .await
            .unwrap_err();
        assert_eq!(err.outcome(), "secret-failed");
        assert_eq!(
            steps(&a),
            ["clock", "kernel", "generator", "secrets"],
            "no publish, no notify"
        );
        assert!(!dir.join("generation").exists());
        assert_eq!(
            a.lineage.generations.number(),
            0,
            "the failed generation was not made current"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_restore_without_a_hook_makes_a_generation_once_the_app_is_up() {
        let dir = tmp("restore");
        let a = agent("", &dir);
        a.restore_detected("vmclock").await;
        assert_eq!(
            a.lineage.generations.number(),
            0,
            "Booting: the app is not up, nothing to do"
        );
        a.life.machine.lock().unwrap().observe(Health::Up);
        a.restore_detected("vmclock").await;
        let g = a.lineage.generations.current().expect("a generation");
        assert_eq!(
            (g.generation, g.reason),
            (1, "restore-detected"),
            "Ready: a clone whose /run never comes"
        );
        let deadline = Instant::now() + Duration::from_secs(1);
        a.hook_generation(Event::Run, &[], deadline).await.unwrap();
        a.restore_detected("vmgenid-uevent").await;
        assert_eq!(
            a.lineage.generations.number(),
            2,
            "the same restore, right after a hook made a generation: not redone"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
