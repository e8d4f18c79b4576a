//! # microvm-agent
//!
//! The guest-side agent for snapshot-based microVMs (AWS Lambda MicroVMs): one static binary that
//! is the image's ENTRYPOINT. It answers the platform's six lifecycle hooks, supervises the app
//! like a good PID 1, and makes every clone of the build snapshot unique again.
//!
//! ## Map
//! One folder per subsystem; dependencies point one way, down this table:
//! `http -> hooks -> clone -> supervise -> sys` (`config` beside `sys`), with no back edge:
//! `tests/layout/house_plan.rs` checks every `crate::` path. What crosses upwards is a value or a
//! callback bound here in the wiring (the restore watcher's callback, the supervisor's
//! `LingerWhen`).
//!
//! | module | responsibility |
//! |---|---|
//! | `cli` | the command: configuration (exit 64), logging, `--check`, the current-thread runtime |
//! | [`run`] (here) | `boot::wire()`, the hook port's task, then the event loop |
//! | `boot` | wiring: builds every part once and hands each what it needs |
//! | `event_loop` | the one event loop, both modes: one method per arm (signals, deadlines, stop requests, the linger's end, commands) |
//! | `http::accept` | the hook port: accept loop, `TCP_NODELAY`, the header deadline; serves the router through hyper |
//! | `http::slots` | the connection table: a hard cap below the descriptor limit, and which connection a full table closes (the platform's hooks last) |
//! | `http::routes` | the axum `Router`: both path forms of the six hooks, `/status`, `/generation`, JSON 404/405 (with `Allow`) |
//! | `http::layers` | the route layers: the origin check, the body limit and its deadline |
//! | `hooks` | the `Agent`: shared state and what each hook does, the failure policy (`fail_on`) |
//! | `hooks::acting` | the acting hooks (`/validate`, `/run`, `/resume`, `/suspend`): the action guard, the state machine's verdict, the work under the budget, the `/run` replay |
//! | `hooks::routine` (+ `routine_error`, `per_vm`) | when the routine runs and what it means for a hook: the acknowledgement policy, a hook's routine remembered, a restore detected without a hook, a stale clock as a restore signal; a failed routine's answer |
//! | `hooks::{answer, status, stop, warmup, forward}` | answers and callers; `/status`; `/suspend` and `/terminate`; `/validate`'s warm-up; the hook pass-through |
//! | `hooks::lifecycle` | the pure state machine: which hook may act in which state |
//! | `hooks::budget` | every hook answers before `budget - margin`, even when its work is stuck |
//! | `hooks::run_body` | the `/run` body: wrapper JSON or raw payload; never fails |
//! | `clone::routine` (+ `routine_error`, `record`, `lineage`, `per_vm`) | the new-generation routine: its steps in order over the parts a hook lends it (`Routine`), its typed record for `/status`, how it fails, typed; this VM's line of generations; the wall clock (first) and, on `/run`, the machine-id, hostname and `boot_id` |
//! | `clone::{entropy, generation, secrets, identity, notify}` | the routine's steps: kernel reseed and the agent's generator; generations; secrets and the seed's staging; `/etc/machine-id`, the hostname (+ `/etc/hosts`), the `boot_id` mount; telling the app |
//! | `clone::machine` | what the machine offers for clone safety (CAP_SYS_ADMIN, VMGenID, vmclock, RNG) |
//! | `clone::restore` | noticing a restore without a hook (vmclock, VMGenID uevent, clock steps) |
//! | `clone::inproc` (+ `setup`, `conn`, `tell`) | the in-process reseed: the helpers written and the app's environment at start, the socket and its limits, the registry of the app's processes, and telling them (one chain per process under the hook's deadline; late helpers reported, never a failed hook: `inproc/PROTOCOL.md`) |
//! | `supervise::supervisor` (+ `phase`, `exit`) | the app's life: the one stop path, leftovers; after an exit: restart policy, backoff, giving up, linger |
//! | `supervise::handle` | `AppHandle`: what the rest of the agent holds of the app (health, view, last probe, restart and wait, wait until gone) |
//! | `supervise::launcher` | `Launcher`: the one place that starts processes (the app and every helper), as the run-as user, watched by the reaper |
//! | `supervise::{reaper, spawn, helper, proctree, probe}` | the only `waitpid`; `fork`/`exec` and a helper's time limit; the process tree; readiness probes and warm-up requests |
//! | `sys::{state_files, offload, clock, logwriter, signals, client, platform_env}` | the state directory held by descriptor, atomic files; the I/O thread; freeze-aware timers and RFC 3339; the non-blocking log; the signalfd and `kill`; the HTTP client (no pool); the platform's environment |
//! | `sys::caps` (+ `apply`) | capabilities: what the agent holds, the app's set (cut in every child before `exec`), the agent keeping only what it uses |
//! | `sys::wallclock` | the wall clock against vmclock, the KVM PTP clock or the RTC; stepping it |
//! | `config` (+ `sections`, `telling`, `machine`) | CLI + env + TOML into one validated, immutable [`config::Config`]; one parser per section; errors name the key |
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
//! - **Files are written atomically** (temp file, rename): a reader sees all or nothing. No
//!   `fsync` in the state directory: it is per-boot state on a tmpfs, and on a restored VM's
//!   lazily paged-in disk a sync is exactly the call that must not stand before an answer.
//! - **Nothing blocks the one thread.** File I/O in the state directory and `/etc/machine-id` runs
//!   on the I/O thread (`sys::offload`, one thread, jobs in order); while the runtime's thread
//!   blocks no timer fires and no hook can answer. Slow storage after a restore is normal.
//! - **The state directory is ours, by descriptor.** Refused at start (64) when it is a link,
//!   another user's, or writable by group or others; every operation in it goes through the
//!   descriptor opened then (`openat`/`renameat`/`unlinkat`, `O_NOFOLLOW`, `fchmod`/`fchown`),
//!   never through a path that could be swapped for a link.
//! - **A hook's work never depends on its connection.** It runs as a task of its own: a client
//!   that goes away, or a full connection table that closes it, loses the answer, not the work.
//! - **A stranger can never cost the platform a hook.** Connections are capped below the
//!   descriptor limit (`http::slots`); a full table closes the platform's hooks last; `/run` never
//!   waits on a `/validate` (it cancels it), and the warm-up holds no guard.
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
//! - **The app never holds more than `[app] capabilities`.** Every process the agent starts goes
//!   through `supervise::spawn`, which cuts its sets before `exec` when the agent holds more;
//!   the agent's own effective set is what it uses (`sys::caps::AGENT_USES`), nothing else.
//! - **The machine's identity and clock are changed only where "auto" may**: on the platform or
//!   as PID 1 (never the laptop of someone trying the agent), each reported, never fatal; a
//!   clock is only ever stepped forward.
//! - **The app's processes are reached only through the written contract** (`inproc/PROTOCOL.md`):
//!   the helpers inside them are built and tested beside the agent (`inproc/`), shipped inside
//!   its binary, and never stop a process from starting; a new generation's hook waits for every
//!   process that registered, inside its budget.
//!
//! ## Deliberately absent
//! - No framework `serve`: the routes are an axum `Router` with its layers, but we own the
//!   accept loop (socket options, header deadline, connection limits, draining).
//! - No budget *layer*: the answer at a hook's deadline depends on which step overran
//!   (`warming-up` for a validate warm-up, `timeout` and the fail policy for the rest, the
//!   terminate's own `stopping`), which only the hook knows, and a second timer on the same
//!   deadline would race the hook's own answer. The budget is `hooks::budget`, in the hook.
//! - No TLS: the agent only talks to the platform and the app inside the VM.
//! - No `EnvFilter`: `MICROVM_AGENT_LOG` uses `tracing_subscriber::filter::Targets` syntax, which
//!   needs no regex engine.

// Every `unsafe` block says why it is sound (SAFETY comments), enforced.
#![deny(clippy::undocumented_unsafe_blocks)]

mod boot;
pub mod cli;
pub mod clone;
pub mod config;
mod event_loop;
pub mod hooks;
pub mod http;
pub mod supervise;
pub mod sys;

use std::future::Future;

use tokio::net::TcpListener;

use config::Config;
use sys::signals::Signals;

/// sysexits' EX_USAGE: the configuration is wrong (here: a user that does not exist).
pub const EX_USAGE: i32 = 64;
/// sysexits' EX_SOFTWARE: the agent itself failed (it cannot read its signals).
pub const EX_SOFTWARE: i32 = 70;
/// sysexits' EX_OSERR: the OS refused (the hook port is taken, no runtime).
pub const EX_OSERR: i32 = 71;
/// sysexits' EX_IOERR: standard output could not be written (not a reader that went away).
pub const EX_IOERR: i32 = 74;

/// Serves the hooks on `listener`, supervises the app (if any) and runs until the agent is done;
/// returns the exit code. `shutdown` is an extra stop trigger for embedders and tests (`main`
/// passes one that never fires: there, SIGTERM and SIGINT stop the agent).
pub async fn run(
    config: Config,
    listener: TcpListener,
    signals: Signals,
    shutdown: impl Future<Output = ()>,
) -> i32 {
    let parts = match boot::wire(config, &listener) {
        Ok(parts) => parts,
        Err(code) => return code,
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::accept::serve(
        listener,
        parts.agent.clone(),
        async move {
            let _ = done_rx.await;
        },
    ));
    let code = event_loop::run(parts, signals, shutdown).await;
    tracing::debug!(code, "the event loop is done; closing the hook port");
    let _ = done_tx.send(());
    // Held, not accepting, until the process exits (`http::accept::serve` says why).
    let _listener = server.await;
    tracing::info!(code, "exiting");
    code
}
