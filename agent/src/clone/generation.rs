//! Generations: what the app reads to know it is running in a new clone (or after a resume).
//!
//! Generation 0 is the build VM's (nothing published). Each run of the new-generation routine
//! makes the next one: its number, a fresh 128-bit id drawn from the agent's freshly keyed
//! generator, why it was made, the VM id, and which kernel reseed really ran. It is published in
//! `<state_dir>/generation` (atomically) and to `GET /generation` long-pollers.

use std::sync::Mutex;

use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use tokio::sync::watch;

use crate::clone::entropy::{self, Reseeded};
use crate::clone::machine::KernelCrng;
use crate::sys::{offload, state_files};

/// The generation file's format (`inproc/PROTOCOL.md`, "The state directory"): the libraries
/// read this one and refuse another. New fields do not change it (readers ignore what they do not
/// know); a change to a field's meaning or type does.
pub const FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Generation {
    /// [`FORMAT`], first in the file.
    pub format: u32,
    pub generation: u64,
    /// 32 hex digits.
    pub id: String,
    pub reason: &'static str,
    pub microvm_id: Option<String>,
    pub kernel_reseed: Reseeded,
    /// Whether the kernel's CRNG is known to differ per clone now (`machine`).
    pub kernel_crng: KernelCrng,
    /// What fed the per-clone input besides the `/run` body, the VM id and clocks: the CPU's
    /// random instruction (`rdseed`, `rdrand`, `rndr`) or `none`.
    pub hardware_random: &'static str,
    /// RFC 3339, UTC.
    pub at: String,
    /// The wall clock against the VM's best reference, and whether it was stepped
    /// (`clone::per_vm`); absent when the VM offers no reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock: Option<crate::sys::wallclock::ClockCheck>,
}

/// What the kernel step found and did, for the generation record.
#[derive(Clone, Copy, Debug)]
pub struct KernelStep {
    pub reseeded: Reseeded,
    pub crng: KernelCrng,
    pub hardware_random: &'static str,
}

/// The agent's generator and the current generation.
pub struct Generations {
    rng: Mutex<Option<ChaCha20Rng>>,
    current: watch::Sender<Option<Generation>>,
}

impl Default for Generations {
    fn default() -> Self {
        Generations {
            rng: Mutex::new(None),
            current: watch::channel(None).0,
        }
    }
}

impl Generations {
    pub fn current(&self) -> Option<Generation> {
        self.current.borrow().clone()
    }

    pub fn number(&self) -> u64 {
        self.current.borrow().as_ref().map_or(0, |g| g.generation)
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Generation>> {
        self.current.subscribe()
    }

    /// Step 2 and 3: re-keys the agent's generator (call after the kernel reseed) and makes the
    /// next generation, not yet published. `Err` when the OS has no randomness to give: then no
    /// generation is made (never one keyed from zeros).
    pub fn next(
        &self,
        reason: &'static str,
        microvm_id: Option<String>,
        kernel: KernelStep,
        input: &entropy::Input,
    ) -> Result<Generation, String> {
        let mut rng = entropy::fresh_generator(input)?;
        let id: String = entropy::draw(&mut rng, 16)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        *crate::sys::lock(&self.rng) = Some(rng);
        Ok(Generation {
            format: FORMAT,
            generation: self.number() + 1,
            id,
            reason,
            microvm_id,
            kernel_reseed: kernel.reseeded,
            kernel_crng: kernel.crng,
            hardware_random: kernel.hardware_random,
            at: crate::sys::clock::rfc3339_now(),
            clock: None,
        })
    }

    /// Draws from the agent's generator; `None` before the first routine (by design: nothing may
    /// come from a generator keyed before the snapshot).
    pub fn draw(&self, n: usize) -> Option<Vec<u8>> {
        crate::sys::lock(&self.rng)
            .as_mut()
            .map(|r| entropy::draw(r, n))
    }

    /// Publishes `generation` in the state directory (on the I/O thread), then to
    /// `/generation` watchers.
    pub async fn publish(
        &self,
        state: &state_files::Handle,
        generation: Generation,
    ) -> std::io::Result<()> {
        self.publish_after(state, generation, |_| Ok(()))
            .await
            .map_err(|(_, e)| e)
    }

    /// [`Self::publish`], with `first` run in the same job on the I/O thread just before the
    /// generation file is written: one trip to that thread for a routine's files, not one per
    /// step (each trip is a thread wake-up, and the tail of the routine's latency). An error
    /// says which part failed (`Step::First`: nothing was published).
    pub async fn publish_after(
        &self,
        state: &state_files::Handle,
        generation: Generation,
        first: impl FnOnce(&state_files::StateDir) -> std::io::Result<()> + Send + 'static,
    ) -> Result<(), (Step, std::io::Error)> {
        let mut json = serde_json::to_vec(&generation).map_err(|e| (Step::Publish, e.into()))?;
        json.push(b'\n');
        let state = state.clone();
        offload::run(move || {
            let dir = state.get().map_err(|e| (Step::First, e))?;
            first(&dir).map_err(|e| (Step::First, e))?;
            dir.write("generation", &json, 0o644, None)
                .map_err(|e| (Step::Publish, e))
        })
        .await
        .unwrap_or_else(|| Err((Step::First, std::io::Error::other("the I/O thread failed"))))?;
        self.current.send_replace(Some(generation));
        Ok(())
    }
}

/// Which part of [`Generations::publish_after`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    First,
    Publish,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn generations_count_up_with_fresh_ids_and_no_draw_before_the_first() {
        let g = Generations::default();
        assert!(
            g.draw(8).is_none(),
            "no randomness before the first routine"
        );
        let dir = std::env::temp_dir().join(format!("mva-gen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let k = KernelStep {
            reseeded: Reseeded::Write,
            crng: KernelCrng::NotReseeded,
            hardware_random: "none",
        };
        let one = g
            .next("run", Some("vm".into()), k, &entropy::gather(&[b"a"]))
            .unwrap();
        assert_eq!(one.generation, 1);
        let state = state_files::Handle::new(&dir, None);
        g.publish(&state, one.clone()).await.unwrap();
        let two = g
            .next("resume", None, k, &entropy::gather(&[b"b"]))
            .unwrap();
        assert_eq!(two.generation, 2);
        assert_ne!(one.id, two.id);
        assert_eq!(one.id.len(), 32);
        assert_eq!(g.draw(8).unwrap().len(), 8);
        let on_disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("generation")).unwrap()).unwrap();
        assert_eq!(on_disk["generation"], 1);
        // The file the libraries' conformance vector stands for (testdata/generation/agent.json)
        // has the fields the agent writes, format first.
        let raw = std::fs::read_to_string(dir.join("generation")).unwrap();
        assert!(raw.starts_with(r#"{"format":1,"#), "{raw}");
        let vector = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/generation/agent.json"
        );
        let vector: serde_json::Value =
            serde_json::from_slice(&std::fs::read(vector).unwrap()).unwrap();
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.retain(|k| k != "clock"); // written only where the VM offers a clock reference
            k.sort();
            k
        };
        assert_eq!(keys(&on_disk), keys(&vector));
        assert_eq!(on_disk["kernel_reseed"], "write");
        assert_eq!(on_disk["kernel_crng"], "not-reseeded");
        assert!(
            on_disk.get("seed").is_none(),
            "the seed is never in the generation file"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
