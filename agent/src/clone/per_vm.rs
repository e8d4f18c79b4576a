//! The routine's per-VM repairs outside the generators: the wall clock (first, so that every
//! time stamp after it, the generation's included, is right) and the identity (`/run` only: the
//! machine-id, the hostname, the `boot_id`). What the agent may not do (no `CAP_SYS_TIME`, no
//! `CAP_SYS_ADMIN`) is reported, never fatal: a wrong clock or a cloned hostname is worth a line
//! and a field in `/status`, not a dead VM.

use std::time::Duration;

use super::routine::Routine;
use crate::clone::identity;
use crate::clone::machine::Facts;
use crate::clone::record::Identity;
use crate::config::{ClockStep, Hostname, MachineId};
use crate::sys::caps::{self, Sets};
use crate::sys::offload;
use crate::sys::wallclock::{self, ClockCheck, Reading};

/// The clock check waits this long for the I/O thread (stuck behind slow storage, it is
/// skipped: the hook's budget matters more than the comparison).
const CLOCK_READ: Duration = Duration::from_millis(200);

impl Routine<'_> {
    /// Compares the wall clock with the VM's best reference; steps it forward when it is stale
    /// and the agent may. [`ClockCheck::NONE`] when the VM has no reference; `None` when the I/O
    /// thread was too busy to read it.
    pub async fn check_clock(&self) -> Option<ClockCheck> {
        let Some(reading) = read_clock().await else {
            return wallclock::none_known().then_some(ClockCheck::NONE);
        };
        let action = if !reading.stale() {
            "within-1s"
        } else if self.config.clock_step == ClockStep::Off {
            "not-stepped:off"
        } else if !hosted() {
            // Someone trying the agent on their own machine: never their clock (a dual-boot
            // laptop's RTC keeps local time, hours off UTC).
            "not-stepped:not-on-the-platform"
        } else if reading.offset_ms < 0 {
            // Never backwards: a restored clone is behind, not ahead, and a backward step breaks
            // more (time stamps that go back, "not yet valid") than a clock a little fast.
            "not-stepped:ahead-of-reference"
        } else if !Sets::of_self().has(caps::SYS_TIME) {
            "not-stepped:no-cap-sys-time"
        } else {
            match wallclock::step(reading.offset_ms) {
                Ok(()) => "stepped",
                Err(e) => {
                    tracing::warn!(error = %e, "cannot step the wall clock");
                    "failed"
                }
            }
        };
        *crate::sys::lock(&self.lineage.clock_baseline) = Some(if action == "stepped" {
            0
        } else {
            reading.offset_ms
        });
        if reading.stale() {
            tracing::warn!(
                source = reading.source,
                offset_ms = reading.offset_ms,
                action,
                "the wall clock was off by a second or more"
            );
        }
        Some(ClockCheck {
            source: reading.source,
            offset_ms: Some(reading.offset_ms),
            action,
        })
    }

    /// `/run`'s identity step: the machine-id, the hostname and the `boot_id`, each by its own
    /// rule; returns the record's fields.
    pub(crate) async fn repair_identity(&self, generation_id: &str) -> Identity {
        let hosted = hosted();
        let wanted = |m: MachineId| match m {
            MachineId::Always => true,
            MachineId::Never => false,
            MachineId::Auto => hosted,
        };
        let mut fields = Identity::default();
        if wanted(self.config.machine_id) {
            let hex = self.draw_hex(16);
            let outcome = offload::run(move || {
                identity::rewrite_machine_id(std::path::Path::new(identity::MACHINE_ID), &hex)
            })
            .await
            .unwrap_or_else(|| Err("the I/O thread failed".into()));
            fields.machine_id = Some(reported("machine-id", outcome));
        }
        let admin = Facts::get().cap_sys_admin;
        let hostname = match &self.config.hostname {
            Hostname::Keep => None,
            Hostname::Auto if !hosted => None,
            Hostname::Auto => Some(format!("microvm-{}", &generation_id[..12])),
            Hostname::Prefix(p) => Some(format!("{p}-{}", &generation_id[..12])),
        };
        if let Some(name) = hostname {
            let outcome = if admin {
                let set = identity::set_hostname(&name);
                match set {
                    Ok(()) => offload::run(move || {
                        identity::add_to_hosts(std::path::Path::new(identity::HOSTS), &name)
                            .map(|hosts| (name, hosts))
                    })
                    .await
                    .unwrap_or_else(|| Err("the I/O thread failed".into()))
                    .map(|(name, hosts)| {
                        fields.hosts = Some(hosts);
                        fields.hostname_set = Some(name);
                        "set"
                    }),
                    Err(e) => Err(e),
                }
            } else {
                Ok("not-set:no-cap-sys-admin")
            };
            fields.hostname = Some(reported("hostname", outcome));
        }
        if wanted(self.config.boot_id) {
            let outcome = if admin {
                self.bind_boot_id().await
            } else {
                Ok("not-bound:no-cap-sys-admin")
            };
            fields.boot_id = Some(reported("boot_id", outcome));
        }
        fields
    }

    async fn bind_boot_id(&self) -> Result<&'static str, String> {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&self.lineage.generations.draw(16).unwrap_or_default());
        let content = format!("{}\n", identity::uuid(&bytes));
        let state = self.state.clone();
        let source = self.config.state_dir.join("boot_id");
        offload::run(move || {
            let dir = state.get().map_err(|e| e.to_string())?;
            dir.write("boot_id", content.as_bytes(), 0o444, None)
                .map_err(|e| format!("boot_id: {e}"))?;
            identity::bind_boot_id(&source, identity::BOOT_ID)
        })
        .await
        .unwrap_or_else(|| Err("the I/O thread failed".into()))
    }

    fn draw_hex(&self, n: usize) -> String {
        self.lineage
            .generations
            .draw(n)
            .unwrap_or_default()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The wall clock against its reference, read on the I/O thread (`None`: no reference, or the
/// I/O thread was busy for longer than `CLOCK_READ`). Once the VM is known to have no reference,
/// nothing goes to the I/O thread at all.
pub async fn read_clock() -> Option<Reading> {
    if wallclock::none_known() {
        return None;
    }
    tokio::time::timeout(CLOCK_READ, offload::run(wallclock::read))
        .await
        .ok()
        .flatten()
        .flatten()
}

/// On the platform, or PID 1 (the container is the agent's): where "auto" may change the
/// machine's identity and clock. Never the machine of someone trying the agent on their laptop.
fn hosted() -> bool {
    crate::sys::platform_env::get().is_some() || std::process::id() == 1
}

/// An outcome for the record; a failure is logged, never fatal.
fn reported(what: &str, outcome: Result<&'static str, String>) -> String {
    match outcome {
        Ok(done) => done.to_string(),
        Err(e) => {
            tracing::error!(error = %e, "cannot give this VM its own {what}");
            format!("failed: {e}")
        }
    }
}
