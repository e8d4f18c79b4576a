//! What `/status` shows of the last new-generation routine (`last_routine`): a typed record of its
//! steps and what each found, filled in as the routine goes. A routine that stops early leaves the
//! later fields out (and says why in `error`), so a reader can tell "not done" from "done, empty".

use serde::Serialize;
use tokio::time::Instant;

use crate::clone::entropy::Reseeded;
use crate::clone::machine::KernelCrng;
use crate::clone::notify::Outcome;
use crate::sys::wallclock::ClockCheck;

/// One step, in the order it ran, with its time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    pub step: &'static str,
    pub us: u64,
}

/// The identity repairs of a clone's `/run` (each only when `[identity]` asked for it here).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// `/etc/machine-id`: `rewritten`, `absent`, ... or why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// `set`, `not-set:no-cap-sys-admin`, or why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The name set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname_set: Option<String>,
    /// What became of `/etc/hosts` (`added`, `not-changed:too-large`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts: Option<&'static str>,
    /// `bound`, `not-bound:no-cap-sys-admin`, or why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

impl Identity {
    pub fn is_empty(&self) -> bool {
        *self == Identity::default()
    }
}

/// The routine's record. The clock and kernel steps always run (and cannot fail), so a record
/// starts with them; the rest is `None` until its step ran.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub reason: &'static str,
    /// The wall clock against the VM's reference (`null`: the I/O thread was too busy to read it).
    pub clock: Option<ClockCheck>,
    pub kernel_reseed: Reseeded,
    pub kernel_crng: KernelCrng,
    /// Why the kernel step took the path it did (`null`: nothing to say).
    pub kernel_note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// How many secrets were rotated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets: Option<usize>,
    #[serde(flatten)]
    pub identity: Identity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify: Option<Outcome>,
    /// Why the routine stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub steps: Vec<Step>,
}

impl Record {
    /// A record of a routine whose clock and kernel steps ran (timed from `clock` and `kernel`).
    pub fn new(
        reason: &'static str,
        clock: (Option<ClockCheck>, Instant),
        kernel: (Reseeded, KernelCrng, Option<String>, Instant),
        until: Instant,
    ) -> Record {
        let clock_us = kernel.3.duration_since(clock.1).as_micros() as u64;
        let kernel_us = until.duration_since(kernel.3).as_micros() as u64;
        Record {
            reason,
            clock: clock.0,
            kernel_reseed: kernel.0,
            kernel_crng: kernel.1,
            kernel_note: kernel.2,
            generation: None,
            secrets: None,
            identity: Identity::default(),
            notify: None,
            error: None,
            steps: vec![
                Step {
                    step: "clock",
                    us: clock_us,
                },
                Step {
                    step: "kernel",
                    us: kernel_us,
                },
            ],
        }
    }

    /// Step `name` ran from `since` until now.
    pub fn step(&mut self, name: &'static str, since: Instant) {
        self.steps.push(Step {
            step: name,
            us: since.elapsed().as_micros() as u64,
        });
    }

    pub fn steps(&self) -> Vec<&'static str> {
        self.steps.iter().map(|s| s.step).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record reads as it did when it was built as JSON by hand: the same keys, the identity
    /// flattened into the record, later steps absent until they ran, `null` for a clock not read.
    #[test]
    fn the_record_serialises_to_the_status_shape() {
        let t = Instant::now();
        let mut r = Record::new(
            "run",
            (None, t),
            (Reseeded::Write, KernelCrng::NotReseeded, None, t),
            t,
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["reason"], "run");
        assert!(v["clock"].is_null() && v.as_object().unwrap().contains_key("clock"));
        assert_eq!(v["kernel_reseed"], "write");
        assert_eq!(v["kernel_crng"], "not-reseeded");
        for absent in ["generation", "secrets", "machine_id", "notify", "error"] {
            assert!(v.get(absent).is_none(), "{absent} before its step ran");
        }
        r.generation = Some(3);
        r.identity.hostname = Some("set".into());
        r.identity.hosts = Some("added");
        r.step("generator", t);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["generation"], 3);
        assert_eq!(
            (v["hostname"].as_str(), v["hosts"].as_str()),
            (Some("set"), Some("added"))
        );
        assert_eq!(r.steps(), ["clock", "kernel", "generator"]);
        assert_eq!(v["steps"][2]["step"], "generator");
    }
}
