//! # microvm-agent
//!
//! The guest-side agent for snapshot-based microVMs (AWS Lambda MicroVMs): one static binary that
//! is the image's ENTRYPOINT. It answers the platform's six lifecycle hooks, supervises the app
//! like a good PID 1, and makes every clone of the build snapshot unique again.
//!
//! ## Map
//! One folder per subsystem; dependencies point one way, down this table:
//! `http -> hooks -> clone -> supervise -> sys` (`config` beside `sys`), with no back edge:
//! `tests/layout.rs` checks every `crate::` path. What crosses upwards is a value or a callback
//! bound here in the wiring (the restore watcher's callback, the supervisor's `LingerWhen`).
//!
//! | module | responsibility |
//! |---|---|
//! | `cli` | the command: configuration (exit 64), logging, `--check`, the current-thread runtime |
//! | [`run`] (here) | wiring, and the one event loop: signals, deadlines, stop requests, commands |
//! | `http::accept` | the hook port: accept loop, `TCP_NODELAY`, header and body deadlines, connection table |
//! | `http::routes` | HTTP surface: routes, methods, origin check, body limit, JSON answers |
//! | `hooks` | the `Agent`: shared state and what each hook does, the failure policy (`fail_on`) |
//! | `hooks::routine` | the new-generation routine: its steps in order, notification, restore handling |
//! | `hooks::{answer, status, stop, warmup, forward}` | answers and callers; `/status`; `/suspend` and `/terminate`; `/validate`'s warm-up; the hook pass-through |
//! | `hooks::lifecycle` | the pure state machine: which hook may act in which state |
//! | `hooks::budget` | every hook answers before `budget - margin`, even when its work is stuck |
//! | `hooks::run_body` | the `/run` body: wrapper JSON or raw payload; never fails |
//! | `clone::{entropy, generation, secrets, identity, notify}` | the routine's steps: kernel reseed and the agent's generator; generations; secrets and the seed's staging; `/etc/machine-id`; telling the app |
//! | `clone::machine` | what the machine offers for clone safety (CAP_SYS_ADMIN, VMGenID, vmclock, RNG) |
//! | `clone::restore` | noticing a restore without a hook (vmclock, VMGenID uevent, clock steps) |
//! | `supervise::supervisor` (+ `phase`) | the app's life: restart policy, the one stop path, leftovers, linger |
//! | `supervise::handle` | `AppHandle`: what the rest of the agent holds of the app (health, view, last probe, restart and wait, wait until gone) |
//! | `supervise::launcher` | `Launcher`: the one place that starts processes (the app and every helper), as the run-as user, watched by the reaper |
//! | `supervise::{reaper, spawn, helper, proctree, probe}` | the only `waitpid`; `fork`/`exec` and a helper's time limit; the process tree; readiness probes and warm-up requests |
//! | `sys::{state_files, clock, logwriter, signals, client, platform_env}` | atomic files; freeze-aware timers and RFC 3339; the non-blocking log; the signalfd and `kill`; the HTTP client (no pool); the platform's environment |
//! | `config` | CLI + env + TOML into one validated, immutable [`config::Config`]; errors name the key |
//!
//! ## Invariants (keep them)
//! - **Nothing per-VM at start-up.** Whatever the agent does when it starts happens once, in the
//!   build VM, and is copied into every clone. Per-VM state is made on `/run`, `/resume`,
//!   `/validate` or a detected restore, never before.
//! - **A hook never blocks past its budget.** The answer leaves at `budget - margin` at the latest
//!   ([`hooks::budget`]); work that is still running goes on in the background or fails cleanly.
//! - **Nothing secret is ever logged**: not the `/run` body or payload, not secret values, not
//!   header values. Hook log lines carry the hook, outcome, status and elapsed time only.
//! - **Logging never blocks.** A stalled log reader drops lines (counted), never stalls a hook.
//! - **stdout belongs to the app.** The agent logs to stderr; only `--check`, `--help` and
//!   `--version` print to stdout, and they run no app.
//! - **Only a failure before traffic is worth a dead VM.** A non-200 from `/suspend` makes the
//!   platform terminate the VM (measured); only the hooks in `[hooks] fail_on` (default `/run`,
//!   `/validate`) answer their failures, every other hook answers 200 `"degraded"` and reports.
//! - **A freeze is not elapsed work.** The monotonic clock advances across a suspend (measured),
//!   so a timer that fires long after its deadline re-arms for its whole length (`sys::clock`).
//! - **Idle means idle.** No periodic timers while nothing happens: the VM may be suspended for
//!   hours, and every wake-up is paid in every VM. Everything is driven by events (sockets, the
//!   signalfd).
//! - **Files are written atomically** (temp file, fsync, rename): a reader sees all or nothing.
//! - **Configuration is parsed once, validated completely, then immutable.** An invalid value
//!   exits 64 before anything starts.
//! - **One thread.** The tokio runtime is current-thread; the agent's memory is in every snapshot.
//! - **No panic takes the hook port down.** Hook work runs in its own task (a panic answers 500),
//!   and locks are taken with `lock()`, which ignores poisoning.
//! - **Exactly one `waitpid`** (the reaper); everyone else learns of exits from it, and every
//!   process is started by the `Launcher`, which registers it with the reaper before any await.
//! - **Stop signals go to the app's process group** (and to descendants that left it); SIGKILL
//!   follows `stop_timeout`; the agent exits as soon as the tree is gone.
//! - **No outbound connection outlives a request**: nothing pooled can be stale after a restore.
//! - **Nothing is drawn from a generator keyed before the snapshot**: the agent's generator exists
//!   only from the first new-generation routine on.
//!
//! ## Deliberately absent
//! - No web framework (axum/tower): eight routes on hyper directly, so that we own the accept
//!   loop (socket options, header deadline, connection limits) and the binary stays small.
//! - No TLS: the agent only talks to the platform and the app inside the VM.
//! - No `EnvFilter`: `MICROVM_AGENT_LOG` uses `tracing_subscriber::filter::Targets` syntax, which
//!   needs no regex engine.

// Every `unsafe` block says why it is sound (SAFETY comments), enforced.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod cli;
pub mod clone;
pub mod config;
pub mod hooks;
pub mod http;
pub mod supervise;
pub mod sys;

use std::future::Future;
use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::net::TcpListener;

use config::Config;
use hooks::lifecycle::State;
use hooks::Agent;
use supervise::handle::AppHandle;
use supervise::launcher::Launcher;
use supervise::reaper::Reaper;
use supervise::supervisor::Supervisor;
use sys::signals::Signals;

/// sysexits' EX_USAGE: the configuration is wrong (here: a user that does not exist).
pub const EX_USAGE: i32 = 64;
/// sysexits' EX_SOFTWARE: the agent itself failed (it cannot read its signals).
pub const EX_SOFTWARE: i32 = 70;
/// sysexits' EX_OSERR: the OS refused (the hook port is taken, no runtime).
pub const EX_OSERR: i32 = 71;

/// Serves the hooks on `listener`, supervises the app (if any) and runs until the agent is done;
/// returns the exit code. `shutdown` is an extra stop trigger for embedders and tests (`main`
/// passes one that never fires: there, SIGTERM and SIGINT stop the agent).
pub async fn run(
    config: Config,
    listener: TcpListener,
    mut signals: Signals,
    shutdown: impl Future<Output = ()>,
) -> i32 {
    if let Err(e) = sys::state_files::prepare(&config.state_dir) {
        // Not fatal: the hooks still answer, and the ones that need the directory say why they fail.
        tracing::error!(error = %e, dir = %config.state_dir.display(), "cannot prepare the state directory");
    }
    if std::process::id() != 1 {
        // Orphans of the app must still be reaped (and waited for) by us, not by the host's init.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!(error = %e, "cannot become a child subreaper; orphans go to init");
        }
    }
    let run_as = match config.app.as_ref().and_then(|a| a.user.as_ref()) {
        Some(spec) => match supervise::spawn::resolve_user(spec) {
            Ok(u) => Some(u),
            Err(e) => {
                eprintln!("microvm-agent: configuration error: app.user: {e}");
                return EX_USAGE;
            }
        },
        None => None,
    };
    let reaper = Arc::new(Reaper::default());
    let sidecar = config.app.is_none();
    let (handle, publisher, mut commands) = AppHandle::new(sidecar);
    let launcher = Launcher {
        reaper: reaper.clone(),
        run_as,
        state_dir: config.state_dir.clone(),
    };
    let (app, ready) = (config.app.clone(), config.ready.clone());
    let links = hooks::Links {
        app: handle,
        launcher: launcher.clone(),
    };
    let agent = Agent::new(config, links);
    // An app gone for good lingers (so that `/ready` can say 500) while a build polls before
    // `/run`: the hooks know that, the supervisor does not.
    let hooks_view = agent.clone();
    let linger_when = Box::new(move || {
        matches!(hooks_view.state(), State::Booting | State::Ready) && hooks_view.ready_polled()
    });
    let mut sup = app.map(|app| Supervisor::new(app, ready, launcher, publisher, linger_when));
    if let Some(s) = &mut sup {
        if let Err(e) = s.start() {
            tracing::error!(error = %e.message, code = e.code, "cannot start the app");
            eprintln!("microvm-agent: {}", e.message);
            return e.code;
        }
    }
    let stop_signal = agent
        .config
        .app
        .as_ref()
        .map_or(Signal::SIGTERM, |a| a.stop_signal);
    let image = sys::platform_env::get();
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        mode = if sidecar { "sidecar" } else { "supervisor" },
        image_name = image.and_then(|i| i.image_name.as_deref()).unwrap_or("-"),
        image_version = image.and_then(|i| i.image_version.as_deref()).unwrap_or("-"),
        on_platform = image.is_some(),
        "serving hooks"
    );
    let sources = clone::restore::Sources::open();
    let _ = agent
        .restore_sources
        .set(clone::restore::describe(&sources));
    let on_restore = agent.clone();
    tokio::spawn(clone::restore::watch(sources, move |source| {
        let agent = on_restore.clone();
        async move { agent.restore_detected(source).await }
    }));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::accept::serve(listener, agent.clone(), async move {
        let _ = done_rx.await;
    }));
    let terminate = agent.terminate_requested();
    tokio::pin!(shutdown, terminate);
    let (mut terminated, mut shut) = (false, false);
    let code = loop {
        let Some(s) = sup.as_mut() else {
            // Sidecar: no app to stop. After /terminate the agent's last duty is done and it
            // exits 0 (its answer is still written: the server drains on the way out), as the
            // supervisor does once its app is gone: the VM ends either way.
            tokio::select! {
                () = &mut terminate, if !terminated => break 0,
                signal = signals.recv() => match signal {
                    Ok(libc::SIGTERM | libc::SIGINT) => break 0,
                    Ok(libc::SIGCHLD) => { reaper.reap(); }
                    Ok(_) => {}
                    Err(e) => { tracing::error!(error = %e, "cannot read signals"); break EX_SOFTWARE; }
                },
                // No app to restart.
                Some(supervise::supervisor::Command::Restart(reply)) = commands.recv() => { let _ = reply.send(false); }
                () = &mut shutdown => break 0,
            }
            continue;
        };
        if let Some(code) = s.finished() {
            break code;
        }
        let deadline = s.next_deadline();
        let lingering = s.lingering();
        tokio::select! {
            signal = signals.recv() => match signal {
                Ok(libc::SIGCHLD) => { let left = reaper.reap(); s.after_reap(left); }
                Ok(libc::SIGTERM) => s.stop(stop_signal),
                Ok(libc::SIGINT) => s.stop(Signal::SIGINT),
                Ok(other) => s.forward(other),
                Err(e) => { tracing::error!(error = %e, "cannot read signals"); break EX_SOFTWARE; }
            },
            () = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                // A deadline that fires long after it was due was frozen (the monotonic clock
                // runs on through a suspend): armed again, not acted on (`sys::clock`).
                match deadline.and_then(sys::clock::frozen_past) {
                    Some(late) => s.after_freeze(late),
                    None => s.on_deadline(),
                }
            }
            () = &mut terminate, if !terminated => { terminated = true; s.stop(stop_signal); }
            () = &mut shutdown, if !shut => { shut = true; s.stop(stop_signal); }
            () = agent.failure_reported(), if lingering => s.end_linger(),
            Some(command) = commands.recv() => s.command(command),
        }
    };
    let _ = done_tx.send(());
    let _ = server.await;
    tracing::info!(code, "exiting");
    code
}
