//! The new-generation routine: one function, one entry, run on `/run`, `/resume`, the first
//! `/validate` (which runs on a clone too) and on a restore the agent detects by itself.
//!
//! Steps, in order, each timed and recorded for `/status`:
//! 0. **clock**: the wall clock against the VM's best reference, stepped forward when stale
//!    (`per_vm`; recorded in the generation).
//! 1. **kernel**: fresh per-clone input into the kernel's CRNG (`ioctl`, else `write`).
//! 2. **generator**: the agent's ChaCha20 generator re-keyed from `getrandom`, after step 1, and
//!    from the same per-clone input (so it diverges even if the kernel step failed).
//! 3. the next generation: number + 1, a fresh 128-bit id from that generator.
//! 4. **secrets**: every secret rewritten for the new generation.
//! 5. **identity** (`/run` only: once per VM): `/etc/machine-id`, the hostname, the `boot_id`
//!    (`per_vm`).
//! 6. **publish**: 32 bytes from that generator for the app's own generators (the seed) staged
//!    in `<state_dir>/seed`, every staged secret and the seed switched in, `<state_dir>/generation`
//!    written, all in one job on the I/O thread; then `GET /generation`. Without CAP_SYS_ADMIN and
//!    without VMGenID the kernel's `getrandom` can be the same in every clone; the seed, keyed
//!    from what differs per clone, cannot.
//! 7. **notify**: the app is told and acknowledges (or the hook fails / warns, per `on_timeout`).
//!
//! Secrets come before publishing: an app that sees generation N in the state directory can then
//! trust that every secret file already holds generation N's value. A routine that fails at step 4
//! publishes nothing: the app never sees a generation whose secrets are the old ones.

use std::time::Duration;

use hyper::StatusCode;
use serde_json::json;
use tokio::time::Instant;

use zeroize::Zeroize;

use super::routine_error::unacknowledged;
pub use super::routine_error::RoutineError;
use super::{Agent, Answer};
use crate::clone::entropy;
use crate::clone::entropy::Reseeded;
use crate::clone::generation::{self, Generation, KernelStep};
use crate::clone::machine::{Facts, KernelCrng};
use crate::clone::notify::{self, Outcome};
use crate::clone::record::Record;
use crate::clone::secrets;
use crate::config::{Event, OnTimeout};
use crate::sys::state_files;

/// The app's per-generation seed: `<state_dir>/seed`, 32 raw bytes, 0600.
pub const SEED_FILE: &str = "seed";
const SEED_BYTES: usize = 32;

/// A restore noticed this soon after a hook's routine is the same restore: not redone.
const SAME_RESTORE: Duration = Duration::from_secs(2);

impl Agent {
    /// Runs the routine; `Err` says which step failed (recorded for `/status` too).
    pub(crate) async fn new_generation(
        &self,
        event: Event,
        reason: &'static str,
        inputs: &[&[u8]],
        deadline: Instant,
    ) -> Result<Generation, RoutineError> {
        let microvm_id = crate::sys::lock(&self.lineage.microvm_id).clone();

        // The clock first: every time stamp after it (the generation's, the app's first
        // request's) must be right.
        let clock_started = Instant::now();
        let clock = self.check_clock().await;

        let t = Instant::now();
        let input = {
            let id = microvm_id.clone().unwrap_or_default();
            let mut all: Vec<&[u8]> = inputs.to_vec();
            all.push(id.as_bytes());
            entropy::gather(&all)
        };
        let (reseeded, kernel_note) = entropy::reseed_kernel(self.config.kernel_reseed, &input);
        let facts = Facts::get();
        let kernel = KernelStep {
            reseeded,
            crng: KernelCrng::verdict(reseeded, facts),
            hardware_random: facts.hardware_random,
        };
        let mut rec = Record::new(
            reason,
            (clock, clock_started),
            (reseeded, kernel.crng, kernel_note.clone(), t),
            Instant::now(),
        );
        if let (Reseeded::Failed, Some(note)) = (reseeded, &kernel_note) {
            tracing::warn!(kernel_reseed = reseeded.as_str(), note = %note, "kernel reseed failed");
        } else if let Some(note) = &kernel_note {
            // Expected under the platform's default capabilities: said once per VM, below.
            tracing::debug!(kernel_reseed = reseeded.as_str(), note = %note, "kernel reseed");
        }
        if event == Event::Run && kernel.crng == KernelCrng::NotReseeded {
            tracing::warn!(
                kernel_crng = kernel.crng.as_str(),
                "the kernel's CRNG was not reseeded (no CAP_SYS_ADMIN, no VMGenID): getrandom may \
                 return the same bytes in every clone until the kernel reseeds itself; give the \
                 image additionalOsCapabilities [\"ALL\"], or mix the agent's seed \
                 (<state_dir>/seed, \"seed\" in the event) into the app's generators"
            );
        }

        let t = Instant::now();
        // The same per-clone input keys the agent's generator too: it must diverge even when the
        // kernel step could not run.
        let generation = self
            .lineage
            .generations
            .next(reason, microvm_id, kernel, &input);
        drop(input);
        rec.step("generator", t);
        let generation = match generation {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "no randomness from the OS: no new generation");
                return Err(self.failed(rec, RoutineError::Entropy(e)));
            }
        };
        let mut generation = generation;
        generation.clock = clock;
        rec.generation = Some(generation.generation);

        let t = Instant::now();
        let rotated = secrets::stage(
            &self.config.secrets,
            &self.lineage.generations,
            &generation,
            &self.links.launcher,
            &self.state,
            deadline,
        )
        .await;
        rec.step("secrets", t);
        let staged = match rotated {
            Ok(staged) => staged,
            Err(f) => {
                tracing::error!(secret = %f.name, reason = %f.reason, "a secret could not be produced; the new generation is not published");
                return Err(self.failed(
                    rec,
                    RoutineError::Secret {
                        name: f.name,
                        reason: f.reason,
                    },
                ));
            }
        };
        let rotated = staged.len();
        rec.secrets = Some(rotated);

        if event == Event::Run {
            let t = Instant::now();
            rec.identity = self.repair_identity(&generation.id).await;
            // Recorded when it did something (`[identity]` decides what, per machine).
            if !rec.identity.is_empty() {
                rec.step("identity", t);
            }
        }

        // The seed is staged too, then the secrets and the seed are switched in together and the
        // generation is written, in one job on the I/O thread: a failure before the generation
        // file leaves every file with the previous generation's value, and nothing published.
        let t = Instant::now();
        let seed = self
            .lineage
            .generations
            .draw(SEED_BYTES)
            .unwrap_or_default();
        let (owner, file_seed) = (self.app_owner(), seed.clone());
        let switch_in = move |dir: &state_files::StateDir| {
            let mut file_seed = file_seed;
            let seed_file = dir.stage(SEED_FILE, &file_seed, 0o600, owner);
            file_seed.zeroize();
            staged
                .into_iter()
                .chain(std::iter::once(seed_file?))
                .try_for_each(state_files::Staged::commit)
        };
        let published = self
            .lineage
            .generations
            .publish_after(&self.state, generation.clone(), switch_in)
            .await;
        rec.step("publish", t);
        let mut seed = seed;
        if let Err((step, e)) = published {
            seed.zeroize();
            let message = match step {
                generation::Step::First => {
                    tracing::error!(error = %e, "cannot write the seed; the new generation is not published");
                    format!("cannot write the seed: {e}")
                }
                generation::Step::Publish => {
                    tracing::error!(error = %e, "cannot publish the generation");
                    format!("cannot publish the generation: {e}")
                }
            };
            return Err(self.failed(rec, RoutineError::StateDir(message)));
        }

        let t = Instant::now();
        let outcome = self
            .tell_app(event, Some(&generation), Some(&seed), deadline)
            .await;
        seed.zeroize();
        rec.step("notify", t);
        rec.notify = Some(outcome.clone());
        self.keep(rec);
        tracing::info!(
            generation = generation.generation,
            reason,
            kernel_reseed = reseeded.as_str(),
            secrets = rotated,
            "new generation"
        );
        if !self.acknowledged(event, &outcome) {
            return Err(RoutineError::NotAcknowledged {
                generation: generation.generation,
                outcome,
            });
        }
        Ok(generation)
    }

    fn keep(&self, rec: Record) {
        *crate::sys::lock(&self.lineage.last_routine) = Some(rec);
    }

    fn failed(&self, mut rec: Record, e: RoutineError) -> RoutineError {
        rec.error = Some(e.message());
        self.keep(rec);
        e
    }

    /// Tells the app about `event` (no new generation: suspend, terminate).
    pub(crate) async fn tell_app(
        &self,
        event: Event,
        generation: Option<&Generation>,
        seed: Option<&[u8]>,
        deadline: Instant,
    ) -> Outcome {
        let inproc = &self.links.inproc;
        if !notify::is_configured(&self.config.notify, event, inproc) {
            return Outcome::default();
        }
        let current = self.lineage.generations.current();
        let generation = generation.or(current.as_ref());
        let microvm_id = crate::sys::lock(&self.lineage.microvm_id).clone();
        let draw = || crate::clone::inproc::seed(&self.lineage.generations);
        let ctx = notify::Ctx {
            launcher: &self.links.launcher,
            app: &self.links.app,
            inproc,
            draw: &draw,
        };
        let outcome = notify::notify(
            &self.config.notify,
            event,
            generation,
            microvm_id.as_deref(),
            seed,
            ctx,
            deadline,
        )
        .await;
        if !outcome.ok() {
            tracing::warn!(event = event.as_str(), failed = %outcome.summary(), "the app did not acknowledge");
        }
        outcome
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
