//! # microvm-agent
//!
//! The guest-side agent for snapshot-based microVMs (AWS Lambda MicroVMs): one static binary that
//! is the image's ENTRYPOINT. It answers the platform's six lifecycle hooks, supervises the app
//! like a good PID 1, and makes every clone of the build snapshot unique again.
//!
//! ## Map
//! | module | responsibility |
//! |---|---|
//! | `config` | CLI + env + TOML into one validated, immutable [`config::Config`]; errors name the key |
//! | `server` | the hook port's accept loop: `TCP_NODELAY`, header deadline, graceful drain |
//! | `hooks` | HTTP surface: routes, methods, origin check, body limit, JSON answers |
//! | `agent` | shared state and what each hook does: the only place hooks turn into actions |
//! | `lifecycle` | the pure state machine: which hook may act in which state |
//! | `budget` | every hook answers before `budget - margin`, even when its work is stuck |
//! | `run_body` | the `/run` body: wrapper JSON or raw payload; never fails |
//! | `state_files` | atomic writes into the state directory |
//! | `signals` | every signal arrives through one `signalfd` |
//!
//! ## Invariants (keep them)
//! - **Nothing per-VM at start-up.** Whatever the agent does when it starts happens once, in the
//!   build VM, and is copied into every clone. Per-VM state is made on `/run`, `/resume`,
//!   `/validate` or a detected restore, never before.
//! - **A hook never blocks past its budget.** The answer leaves at `budget - margin` at the latest
//!   ([`budget`]); work that is still running goes on in the background or fails cleanly.
//! - **Nothing secret is ever logged**: not the `/run` body or payload, not secret values, not
//!   header values. Hook log lines carry the hook, outcome, status and elapsed time only.
//! - **stdout belongs to the app.** The agent logs to stderr; only `--check`, `--help` and
//!   `--version` print to stdout, and they run no app.
//! - **Idle means idle.** No periodic timers while nothing happens: the VM may be suspended for
//!   hours, and every wake-up is paid in every VM. Everything is driven by events (sockets, the
//!   signalfd).
//! - **Files are written atomically** (temp file, fsync, rename): a reader sees all or nothing.
//! - **Configuration is parsed once, validated completely, then immutable.** An invalid value
//!   exits 64 before anything starts.
//! - **One thread.** The tokio runtime is current-thread; the agent's memory is in every snapshot.
//!
//! ## Deliberately absent
//! - No web framework (axum/tower): eight routes on hyper directly, so that we own the accept
//!   loop (socket options, header deadline, connection limits) and the binary stays small.
//! - No TLS: the agent only talks to the platform and the app inside the VM.
//! - No `EnvFilter`: `MICROVM_AGENT_LOG` uses `tracing_subscriber::filter::Targets` syntax, which
//!   needs no regex engine.

pub mod agent;
pub mod budget;
pub mod config;
pub mod hooks;
pub mod lifecycle;
pub mod run_body;
pub mod server;
pub mod signals;
pub mod state_files;

use std::future::Future;

use tokio::net::TcpListener;
use tokio::sync::watch;

use agent::Agent;
use config::Config;
use lifecycle::Health;
use signals::Signals;

/// Serves the hooks on `listener` and runs until the agent is done; returns the exit code.
/// `shutdown` is an extra stop trigger for embedders and tests (`main` passes one that never
/// fires: there, SIGTERM and SIGINT stop the agent).
pub async fn run(
    config: Config,
    listener: TcpListener,
    mut signals: Signals,
    shutdown: impl Future<Output = ()>,
) -> i32 {
    if let Err(e) = state_files::prepare(&config.state_dir) {
        // Not fatal: the hooks still answer, and the ones that need the directory say why they fail.
        tracing::error!(error = %e, dir = %config.state_dir.display(), "cannot prepare the state directory");
    }
    let (_health_tx, health_rx) = watch::channel(Health::Up);
    let agent = Agent::new(config, health_rx);
    tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), mode = "sidecar", "serving hooks");
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(listener, agent.clone(), async move {
        let _ = done_rx.await;
    }));
    tokio::pin!(shutdown);
    let code = loop {
        tokio::select! {
            signal = signals.recv() => match signal {
                Ok(s) if s == libc::SIGTERM || s == libc::SIGINT => break 0,
                Ok(s) => tracing::debug!(signal = s, "signal ignored in sidecar mode"),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read signals");
                    break 70;
                }
            },
            () = &mut shutdown => break 0,
        }
    };
    let _ = done_tx.send(());
    let _ = server.await;
    code
}
