//! What an operator sees: `GET /status` and `GET /generation` (presentation only; the state is
//! the agent's).

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::Agent;
use crate::hooks::lifecycle::Hook;

/// The longest a `GET /generation?after=N` waits.
const LONG_POLL: Duration = Duration::from_secs(60);

impl Agent {
    /// `GET /generation[?after=N]`: the current generation, at once or, with `after`, once it
    /// exceeds N (at most `LONG_POLL` later: then the current one, and the client asks again).
    pub async fn generation_after(&self, after: Option<u64>) -> Value {
        if let Some(n) = after {
            let mut rx = self.lineage.generations.subscribe();
            let _ = tokio::time::timeout(
                LONG_POLL,
                rx.wait_for(|g| g.as_ref().map_or(0, |g| g.generation) > n),
            )
            .await;
        }
        match self.lineage.generations.current() {
            Some(g) => serde_json::to_value(g).unwrap_or_default(),
            None => json!({ "generation": 0 }),
        }
    }

    pub(super) fn app_json(&self) -> Value {
        if self.config.app.is_none() {
            return Value::Null;
        }
        let mut v = serde_json::to_value(self.links.app.view()).unwrap_or_default();
        if let Value::Object(m) = &mut v {
            m.insert("last_probe".into(), json!(self.links.app.last_probe()));
        }
        v
    }

    /// The in-process reseed: what was arranged, the processes that take part (and what each
    /// reseeded at its last acknowledgement), and the app's processes that do not (a static
    /// binary, a program the helpers cannot load into, one that exited its registration): those
    /// from a walk of the process tree shared by every `/status` of a second (`census`).
    pub(super) async fn inproc_json(&self) -> Value {
        let inproc = &self.links.inproc;
        let members = inproc.members();
        let taking_part: std::collections::HashSet<i32> = members.iter().map(|m| m.pid).collect();
        let others = inproc
            .census
            .outsiders(self.links.app.view().pid, &taking_part)
            .await;
        json!({
            "arranged": &inproc.setup,
            "cap": inproc.cap(),
            "processes": members,
            "not_taking_part": others.shown,
            "not_taking_part_total": others.total,
            "stays_cloned": others.stays_cloned,
            // Whether what any process reads from the kernel each time (`getrandom`: Go's
            // crypto/rand, Java's NativePRNG, os.urandom) is fresh in this generation: the kernel
            // was reseeded by the agent or by the platform. `null` before the first generation.
            "kernel_values_fresh": self
                .lineage
                .generations
                .current()
                .map(|g| g.kernel_crng != crate::clone::machine::KernelCrng::NotReseeded),
            "left_while_running": inproc.leavers(),
        })
    }

    /// `GET /status`: what an operator (or a test) needs to see the agent's state at a glance.
    pub async fn status(&self) -> Value {
        // First: the walk it may wait for must not make the rest of the answer stale.
        let inproc = self.inproc_json().await;
        let state = crate::sys::lock(&self.life.machine).state();
        let stats = crate::sys::lock(&self.life.stats).clone();
        let mut hooks = Map::new();
        for hook in Hook::ALL {
            let s = &stats[hook as usize];
            let v = if s.count == 0 {
                json!({ "count": 0 })
            } else {
                json!({ "count": s.count, "last_status": s.last_status, "last_outcome": s.last_outcome, "last_elapsed_us": s.last_elapsed_us, "degraded": s.degraded, "last_error": s.last_error })
            };
            hooks.insert(hook.name().to_string(), v);
        }
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "state": state,
            "health": self.health(),
            "mode": if self.config.app.is_some() { "supervisor" } else { "sidecar" },
            "uptime_ms": self.life.started.elapsed().as_millis() as u64,
            "microvm_id": *crate::sys::lock(&self.lineage.microvm_id),
            "generation": self.lineage.generations.current(),
            "last_routine": *crate::sys::lock(&self.lineage.last_routine),
            "restore_detection": &self.found.restore_sources,
            "capabilities": &self.found.privileges,
            // The wall clock's offset from its reference at the last comparison (`clone::per_vm`).
            "clock_offset_ms": *crate::sys::lock(&self.lineage.clock_baseline),
            "platform": crate::sys::platform_env::get(),
            "log_lines_dropped": crate::sys::logwriter::dropped_total(),
            "app": self.app_json(),
            "inproc": inproc,
            "hooks": hooks,
        })
    }
}
