//! Telling the app about a lifecycle event, and waiting for its acknowledgement.
//!
//! Every configured channel runs, concurrently, bounded by `[notify] timeout` and the hook's own
//! deadline:
//! - `http`: POST `{"event","generation","id","microvm_id","seed"}`; a 2xx answer acknowledges.
//! - `signal`: sent to the app; sending it acknowledges (a signal has no answer).
//! - `exec`: a command with `MICROVM_EVENT`, `MICROVM_GENERATION`, `MICROVM_GENERATION_ID`,
//!   `MICROVM_ID` and `MICROVM_SEED` in its environment; exit 0 acknowledges.
//!
//! `seed` (64 hex) is the new generation's seed for the app's own generators (also in
//! `<state_dir>/seed`); events that make no generation (suspend, terminate) carry `null`.
//! - `inproc` (on by default, `[app] reseed_in_process`): every app process that loaded the
//!   agent's in-process helpers reseeds its OpenSSL and its runtime's generators to the new
//!   generation and acknowledges (`clone::inproc`); the app's own callbacks (a client library,
//!   `clients/`) run last, and hear of `suspend` and `terminate` too when they asked to.
//! - `restart_on`: the app is restarted; it acknowledges by passing its readiness probe again.
//!   For runtimes that cannot reseed in process. For such an event this is the only channel: the
//!   old instance is being replaced (telling it could only race its stop), and the new one starts
//!   from the freshly reseeded kernel and reads the generation and the seed from the state
//!   directory.

use std::ffi::OsString;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use crate::clone::generation::Generation;
use crate::clone::inproc::{InProc, Seed};
use crate::config::{Event, Notify};
use crate::supervise::handle::AppHandle;
use crate::supervise::launcher::Launcher;
use crate::sys::client;

pub struct Ctx<'a> {
    /// Starts the exec channel's command.
    pub launcher: &'a Launcher,
    /// The app: its pid for the signal channel, and the restart for `restart_on`.
    pub app: &'a AppHandle,
    /// The app's processes that reseed in place.
    pub inproc: &'a InProc,
    /// A fresh seed per process, from the agent's generator.
    pub draw: &'a (dyn Fn() -> Option<Seed> + Sync),
}

/// Which channels acknowledged, and which did not (with why); and what is only reported: the
/// in-process helpers still at work when the hook answered (`clone::inproc`'s policy).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Outcome {
    pub acknowledged: Vec<&'static str>,
    pub failed: Vec<(&'static str, String)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub late: Vec<String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }

    pub fn summary(&self) -> String {
        self.failed
            .iter()
            .map(|(c, why)| format!("{c}: {why}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Whether `event` makes a generation (the in-process helpers have something to do).
fn reseeds(event: Event) -> bool {
    !matches!(event, Event::Suspend | Event::Terminate)
}

pub fn is_configured(cfg: &Notify, event: Event, inproc: &InProc) -> bool {
    (reseeds(event) && inproc.active())
        || (!reseeds(event) && inproc.wants(event.as_str()))
        || cfg.http.is_some()
        || cfg.signal.is_some()
        || cfg.exec.is_some()
        || cfg.restart_on.contains(&event)
}

pub async fn notify(
    cfg: &Notify,
    event: Event,
    generation: Option<&Generation>,
    microvm_id: Option<&str>,
    seed: Option<&[u8]>,
    ctx: Ctx<'_>,
    deadline: Instant,
) -> Outcome {
    // Every channel stops waiting a little before the hook's deadline: the routine records
    // the outcome after this returns, and the hook waits for the routine until that same
    // deadline. Ending both at one instant let the hook's timer win on a slow VM (measured:
    // clones restored three at a time under TCG answered /run 500 "timeout" after every channel
    // had been waited for to the end). A tenth of what is left, 20 to 100 ms.
    let remaining = deadline.saturating_duration_since(Instant::now());
    let room = (remaining / 10).clamp(Duration::from_millis(20), Duration::from_millis(100));
    let limit = cfg.timeout.min(remaining.saturating_sub(room));
    let restarting = cfg.restart_on.contains(&event);
    let number = generation.map_or(0, |g| g.generation);
    let id = generation.map(|g| g.id.clone());
    // Zeroized when this function returns (never logged: only the event's name is).
    let seed_hex = zeroize::Zeroizing::new(
        seed.map(|s| s.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    );
    let http = async {
        let url = cfg.http.as_ref().filter(|_| !restarting)?;
        let body = zeroize::Zeroizing::new(
            json!({ "event": event.as_str(), "generation": number, "id": id, "microvm_id": microvm_id, "seed": *seed_hex })
                .to_string(),
        );
        let headers = [("content-type".to_string(), "application/json".to_string())];
        let r = match client::request(
            url,
            "POST",
            &headers,
            Bytes::from(body.as_bytes().to_vec()),
            limit,
        )
        .await
        {
            Ok(reply) if (200..300).contains(&reply.status) => Ok(()),
            Ok(reply) => Err(format!("answered HTTP {}", reply.status)),
            Err(e) => Err(e),
        };
        Some(("http", r))
    };
    let signal = async {
        let sig = cfg.signal.filter(|_| !restarting)?;
        let r = match ctx
            .app
            .view()
            .pid
            .map(|pid| crate::sys::signals::kill(pid, sig as i32))
        {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(format!("cannot send {}: {e}", sig.as_str())),
            None => Err("no app is running".to_string()),
        };
        Some(("signal", r))
    };
    let exec = async {
        let command = cfg.exec.as_ref().filter(|_| !restarting)?;
        let argv: Vec<OsString> = command.iter().map(OsString::from).collect();
        let env = vec![
            ("MICROVM_EVENT", event.as_str().to_string()),
            ("MICROVM_GENERATION", number.to_string()),
            ("MICROVM_GENERATION_ID", id.clone().unwrap_or_default()),
            ("MICROVM_ID", microvm_id.unwrap_or_default().to_string()),
            ("MICROVM_SEED", (*seed_hex).clone().unwrap_or_default()),
        ];
        let r = match ctx.launcher.helper(&argv, env, false, limit).await {
            Ok(done) if done.exit.success() => Ok(()),
            Ok(done) => Err(format!("the command ended with {}", done.exit)),
            Err(e) => Err(e),
        };
        Some(("exec", r))
    };
    let restart = async {
        if !restarting {
            return None;
        }
        Some(("restart", ctx.app.restart_and_wait(limit).await))
    };
    // Not for a restart (the new instance starts from the new generation). An event without a
    // generation goes to the processes (client libraries) that asked for it.
    let inproc = async {
        if restarting {
            return None;
        }
        let until = Instant::now() + limit;
        let told = if reseeds(event) {
            let g = generation.filter(|_| ctx.inproc.active())?;
            ctx.inproc.tell(g.generation, ctx.draw, until).await
        } else {
            let name = event.as_str();
            if !ctx.inproc.wants(name) {
                return None;
            }
            ctx.inproc.tell_event(name, number, until).await
        };
        Some(told)
    };
    let (a, b, c, d, told) = tokio::join!(http, signal, exec, restart, inproc);
    let mut outcome = Outcome::default();
    let inproc = told.map(|t| {
        outcome.late = t.late;
        let r = if t.failed.is_empty() {
            Ok(())
        } else {
            Err(t.failed.join("; "))
        };
        ("inproc", r)
    });
    for (channel, result) in [a, b, c, d, inproc].into_iter().flatten() {
        match result {
            Ok(()) => outcome.acknowledged.push(channel),
            Err(e) => outcome.failed.push((channel, e)),
        }
    }
    if !outcome.late.is_empty() {
        tracing::warn!(event = event.as_str(), late = %outcome.late.join("; "), "in-process reseed: answered before every helper acknowledged (reported, not a failure)");
    }
    outcome
}
