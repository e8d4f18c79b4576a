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

use std::sync::Arc;

use tokio::time::Instant;
use zeroize::Zeroize;

use crate::clone::entropy;
use crate::clone::entropy::Reseeded;
use crate::clone::generation::{self, Generation, KernelStep};
use crate::clone::lineage::Lineage;
use crate::clone::machine::{Facts, KernelCrng};
use crate::clone::notify::{self, Outcome};
use crate::clone::record::Record;
pub use crate::clone::routine_error::RoutineError;
use crate::clone::secrets;
use crate::config::{Config, Event};
use crate::supervise::handle::AppHandle;
use crate::supervise::launcher::Launcher;
use crate::sys::state_files;
use crate::sys::state_files::Handle as StateHandle;

/// The app's per-generation seed: `<state_dir>/seed`, 32 raw bytes, 0600.
pub const SEED_FILE: &str = "seed";
const SEED_BYTES: usize = 32;

/// What connects the agent to the rest of the process (built in `boot::wire`).
pub struct Links {
    /// The app as the supervisor publishes it, and the restart for `restart_on`.
    pub app: AppHandle,
    /// Starts helper commands (notify and secret commands).
    pub launcher: Launcher,
    /// The app's processes that reseed in place (`clone::inproc`).
    pub inproc: Arc<crate::clone::inproc::InProc>,
}

impl Links {
    /// Links to no app, as a sidecar has: for tests and the fuzz targets.
    pub fn without_app(state_dir: &std::path::Path) -> Links {
        Links {
            app: AppHandle::new(true).0,
            launcher: Launcher {
                reaper: Arc::default(),
                run_as: None,
                caps: None,
                state_dir: state_dir.to_path_buf(),
                app_env: vec![],
                before_app: None,
            },
            inproc: Arc::default(),
        }
    }
}

/// What the routine works with, lent by whoever runs it (the hooks, a detected restore): the
/// configuration, the state directory, this VM's lineage and the app.
pub struct Routine<'a> {
    pub config: &'a Config,
    pub state: &'a StateHandle,
    pub lineage: &'a Lineage,
    pub links: &'a Links,
}

impl Routine<'_> {
    /// Runs the routine; `Err` says which step failed (recorded for `/status` too).
    /// `acknowledged` is the hook's policy: whether what the app answered is enough.
    pub async fn run(
        &self,
        event: Event,
        reason: &'static str,
        inputs: &[&[u8]],
        deadline: Instant,
        acknowledged: &(dyn Fn(&Outcome) -> bool + Sync),
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
            self.state,
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
        let (owner, file_seed) = (self.links.launcher.owner(), seed.clone());
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
            .publish_after(self.state, generation.clone(), switch_in)
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
        if !acknowledged(&outcome) {
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
    pub async fn tell_app(
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
}
