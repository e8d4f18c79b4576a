//! Readiness probes (HTTP status, TCP connect, a command that exits 0) and the `/validate`
//! warm-up requests.
//!
//! A probe runs every `interval` until it passes once, and then never again: after readiness
//! nothing polls (idle means idle; the VM may be snapshotted or suspended for hours).

use std::ffi::OsString;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Probe, Ready, Validate};
use crate::supervise::launcher::Launcher;
use crate::sys::client;

/// While waiting, the last probe result is logged this often, not on every try.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// What probes need from the agent.
pub struct ProbeCtx {
    /// Starts exec probes.
    pub launcher: Launcher,
    /// The last failed attempt, for `/status`.
    pub last_result: Arc<Mutex<Option<String>>>,
}

pub async fn check(probe: &Probe, timeout: Duration, ctx: &ProbeCtx) -> Result<(), String> {
    match probe {
        Probe::Http { url, healthy } => {
            let reply = client::request(url, "GET", &[], bytes::Bytes::new(), timeout).await?;
            if healthy.contains(reply.status) {
                Ok(())
            } else {
                Err(format!("HTTP {} (healthy: {healthy})", reply.status))
            }
        }
        Probe::Tcp { addr } => {
            let (host, port) = addr.rsplit_once(':').expect("validated host:port");
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = port.parse().expect("validated port");
            match tokio::time::timeout(timeout, client::connect(host, port)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("cannot connect: {e}")),
                Err(_) => Err(format!("no connection within {timeout:?}")),
            }
        }
        Probe::Exec { command } => {
            let argv: Vec<OsString> = command.iter().map(OsString::from).collect();
            let done = ctx.launcher.helper(&argv, vec![], false, timeout).await?;
            if done.exit.success() {
                Ok(())
            } else {
                Err(format!("the command ended with {}", done.exit))
            }
        }
    }
}

/// Probes every `interval` until the probe passes; returns at once without a probe.
pub async fn until_ready(ready: &Ready, ctx: &ProbeCtx) {
    let Some(probe) = &ready.probe else { return };
    let started = Instant::now();
    let mut logged = started;
    let mut attempts: u64 = 0;
    loop {
        attempts += 1;
        match check(probe, ready.timeout, ctx).await {
            Ok(()) => {
                *crate::sys::lock(&ctx.last_result) = None;
                tracing::info!(
                    attempts,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "the app is ready"
                );
                return;
            }
            Err(e) => {
                if logged.elapsed() >= LOG_EVERY {
                    tracing::info!(attempts, last_result = %e, "waiting for the app to be ready");
                    logged = Instant::now();
                }
                *crate::sys::lock(&ctx.last_result) = Some(e);
            }
        }
        tokio::time::sleep(ready.interval).await;
    }
}

/// Sends the warm-up requests `repeat` times. `Err` names the request that failed and why.
pub async fn warm_up(v: &Validate, per_request: Duration) -> Result<usize, String> {
    let mut sent = 0;
    for round in 1..=v.repeat {
        for (i, r) in v.requests.iter().enumerate() {
            let name = format!(
                "validate.request[{i}] ({} {}), round {round}",
                r.method, r.url
            );
            let reply = client::request(
                &r.url,
                &r.method,
                &r.headers,
                bytes::Bytes::from(r.body.clone()),
                per_request,
            )
            .await
            .map_err(|e| format!("{name}: {e}"))?;
            sent += 1;
            if !r.expect_status.contains(reply.status) {
                return Err(format!(
                    "{name}: HTTP {} (expected {})",
                    reply.status, r.expect_status
                ));
            }
            if let Some(needle) = &r.expect_body_contains {
                if !reply
                    .body
                    .windows(needle.len().max(1))
                    .any(|w| w == needle.as_bytes())
                {
                    return Err(format!("{name}: the answer does not contain {needle:?}"));
                }
            }
        }
    }
    Ok(sent)
}
