//! The app's life: spawn, readiness, restart policy, and the one stop path.
//!
//! A plain state machine driven by the event loop in `lib::run`, which owns the signalfd: the
//! loop calls [`Supervisor::after_reap`] after each SIGCHLD, [`Supervisor::stop`] on SIGTERM,
//! SIGINT or `/terminate`, [`Supervisor::forward`] for every other signal, and
//! [`Supervisor::on_deadline`] when [`Supervisor::next_deadline`] passes. Nothing here waits
//! or polls; between events the agent sleeps.
//!
//! ```text
//! Running --app exits--> Draining{then: Restart} --tree empty--> Backoff --delay--> Running
//!    |                   Draining{then: Exit}    --tree empty--> Done(code) (or Lingering)
//!    '--stop----------> Draining{then: Exit}: stop signal to the group (and to descendants that
//!                        left it), SIGKILL to all of them at the deadline
//! ```
//! Draining ends when the app has been reaped and the agent has no child left; orphans are
//! re-parented to the agent (PID 1 or subreaper), so "no child" means "the whole tree is gone".

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{App, Ready};
use crate::supervise::handle::Publisher;
use crate::supervise::launcher::Launcher;
use crate::supervise::probe::{self, ProbeCtx};
use crate::supervise::proctree;
use crate::supervise::reaper::Exit;
use crate::supervise::spawn::SpawnError;
use crate::supervise::Health;

pub use super::phase::{AppView, Command};
use super::phase::{Current, Phase, Then};

// What happens after the app exits: restart or not, backoff, giving up, the linger.
mod exit;

/// Crash-loop backoff: `restart_delay` (100 ms), doubling, at most this (or 50 delays).
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a build-time failure keeps `/ready` answering 500 when nobody asks.
const FAIL_LINGER: Duration = Duration::from_secs(10);

/// Whether an app gone for good should linger (answer `/ready` 500 a while) before the agent
/// exits: the wiring asks the hooks (a build that polls, before `/run`), which the supervisor
/// does not know.
pub type LingerWhen = Box<dyn Fn() -> bool + Send>;

pub struct Supervisor {
    /// What to run, and the restart and stop policy.
    app: App,
    /// The readiness probe, run after every start.
    ready: Ready,
    /// Starts the app and exec probes.
    launcher: Launcher,
    /// Where the app's health goes (shared with each start's probe task).
    health: Arc<watch::Sender<Health>>,
    /// Where `/status` and `/terminate` read the app from.
    view: watch::Sender<AppView>,
    /// The readiness probe's last failed attempt.
    last_probe: Arc<Mutex<Option<String>>>,
    linger_when: LingerWhen,
    phase: Phase,
    current: Option<Current>,
    /// The app's process group; kept after the leader is reaped, for its leftovers.
    group: Option<i32>,
    /// Consecutive quick restarts, for crash-loop protection.
    attempts: u32,
    restarts: u32,
    last_exit: Option<Exit>,
    stopping: bool,
    gave_up: bool,
}

impl Supervisor {
    /// The supervisor of `app`, publishing through `to`.
    pub fn new(
        app: App,
        ready: Ready,
        launcher: Launcher,
        to: Publisher,
        linger_when: LingerWhen,
    ) -> Self {
        Supervisor {
            app,
            ready,
            launcher,
            health: Arc::new(to.health),
            view: to.view,
            last_probe: to.last_probe,
            linger_when,
            phase: Phase::Running,
            current: None,
            group: None,
            attempts: 0,
            restarts: 0,
            last_exit: None,
            stopping: false,
            gave_up: false,
        }
    }

    /// Starts the app for the first time. A program that cannot be started is final (127/126).
    pub fn start(&mut self) -> Result<(), SpawnError> {
        self.spawn_app()
    }

    fn spawn_app(&mut self) -> Result<(), SpawnError> {
        let started = self
            .launcher
            .app(&self.app.command, self.app.workdir.as_deref())?;
        self.health.send_replace(Health::Starting);
        let ctx = ProbeCtx {
            launcher: self.launcher.clone(),
            last_result: self.last_probe.clone(),
        };
        let (ready, health) = (self.ready.clone(), self.health.clone());
        let probe = tokio::spawn(async move {
            probe::until_ready(&ready, &ctx).await;
            health.send_replace(Health::Up);
        });
        tracing::info!(pid = started.pid, attempt = self.restarts, "app started");
        self.current = Some(Current {
            pid: started.pid,
            started: Instant::now(),
            exited: started.exited,
            probe,
        });
        self.group = Some(started.pid);
        self.phase = Phase::Running;
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        let phase = match self.phase {
            Phase::Running => "running",
            Phase::Backoff { .. } => "backoff",
            Phase::Draining { .. } if self.current.is_some() => "stopping",
            Phase::Draining { .. } => "exited",
            Phase::Lingering { .. } | Phase::Done(_) if self.gave_up => "failed",
            Phase::Lingering { .. } | Phase::Done(_) => "exited",
        };
        self.view.send_replace(AppView {
            pid: self.current.as_ref().map(|c| c.pid),
            phase,
            restarts: self.restarts,
            last_exit: self.last_exit.map(|e| e.to_string()),
            last_exit_code: self.last_exit.map(Exit::code),
        });
    }

    /// The exit code once the agent is done.
    pub fn finished(&self) -> Option<i32> {
        match self.phase {
            Phase::Done(code) => Some(code),
            _ => None,
        }
    }

    pub fn lingering(&self) -> bool {
        matches!(self.phase, Phase::Lingering { .. })
    }

    pub fn end_linger(&mut self) {
        if let Phase::Lingering { code, .. } = self.phase {
            self.phase = Phase::Done(code);
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Draining {
                deadline,
                killed: false,
                ..
            } => Some(deadline),
            Phase::Backoff { until, .. } | Phase::Lingering { until, .. } => Some(until),
            _ => None,
        }
    }

    /// Forwards a signal to the app, if there is one. Its pid cannot have been reused: the
    /// app is only forgotten in [`Supervisor::after_reap`], right after the reaper took it.
    pub fn forward(&self, sig: i32) {
        if let Some(c) = &self.current {
            tracing::debug!(signal = sig, pid = c.pid, "forwarding");
            let _ = crate::sys::signals::kill(c.pid, sig);
        }
    }

    /// The stop path, for SIGTERM, SIGINT, `/terminate` and the embedder's shutdown.
    pub fn stop(&mut self, sig: Signal) {
        let first = !self.stopping;
        self.stopping = true;
        match self.phase {
            Phase::Running => {
                tracing::info!(
                    signal = sig.as_str(),
                    timeout_ms = self.app.stop_timeout.as_millis() as u64,
                    "stopping the app"
                );
                self.signal_tree(sig);
                self.phase = Phase::Draining {
                    deadline: Instant::now() + self.app.stop_timeout,
                    killed: false,
                    then: Then::Exit,
                };
            }
            // A second request: the signal still reaches the app, the deadline stays.
            Phase::Draining {
                then: Then::Exit, ..
            } if !first => self.forward(sig as i32),
            Phase::Draining {
                deadline, killed, ..
            } => {
                self.phase = Phase::Draining {
                    deadline,
                    killed,
                    then: Then::Exit,
                }
            }
            // Nothing is running: done at once.
            Phase::Backoff { .. } => self.phase = Phase::Done(self.exit_code()),
            Phase::Lingering { code, .. } => self.phase = Phase::Done(code),
            Phase::Done(_) => {}
        }
        self.publish();
    }

    /// After the reaper ran: learn of the app's exit, and finish a drain once no child is left.
    pub fn after_reap(&mut self, children_left: bool) {
        if let Some(c) = &mut self.current {
            if let Ok(exit) = c.exited.try_recv() {
                self.on_app_exit(exit, children_left);
            }
        }
        match self.phase {
            Phase::Draining { then, .. } if self.current.is_none() && !children_left => {
                self.drained(then)
            }
            // Processes forked between the SIGKILL sweep and now get theirs too.
            Phase::Draining { killed: true, .. } if children_left => {
                self.signal_tree(Signal::SIGKILL)
            }
            _ => {}
        }
        self.publish();
    }

    pub fn on_deadline(&mut self) {
        match self.phase {
            Phase::Draining { then, .. } => {
                tracing::warn!("stop timeout: killing what is left of the app");
                self.signal_tree(Signal::SIGKILL);
                self.phase = Phase::Draining {
                    deadline: Instant::now(),
                    killed: true,
                    then,
                };
            }
            Phase::Backoff { .. } => {
                self.restarts += 1;
                if let Err(e) = self.spawn_app() {
                    tracing::error!(error = %e.message, "cannot restart the app");
                    self.fail_for_good(e.code);
                }
            }
            Phase::Lingering { code, .. } => self.phase = Phase::Done(code),
            Phase::Running | Phase::Done(_) => {}
        }
        self.publish();
    }

    /// The pending deadline was due long ago: the VM was frozen (`sys::clock`). The app got none of
    /// that time as grace, nor the crash loop as backoff: arm the deadline again for its whole
    /// length, so that nothing fires in a burst at the thaw.
    pub fn after_freeze(&mut self, late: std::time::Duration) {
        let now = Instant::now();
        let length = match &mut self.phase {
            Phase::Draining { deadline, .. } => {
                *deadline = now + self.app.stop_timeout;
                self.app.stop_timeout
            }
            Phase::Backoff { until, delay } => {
                *until = now + *delay;
                *delay
            }
            Phase::Lingering { until, .. } => {
                *until = now + FAIL_LINGER;
                FAIL_LINGER
            }
            Phase::Running | Phase::Done(_) => return,
        };
        tracing::info!(
            frozen_ms = late.as_millis() as u64,
            rearmed_ms = length.as_millis() as u64,
            "a deadline came due while the VM was frozen; armed again"
        );
    }

    pub fn command(&mut self, command: Command) {
        match command {
            Command::Restart(reply) => {
                let _ = reply.send(self.restart_now());
            }
        }
        self.publish();
    }

    /// `restart_on`: the stop path, then a new instance at once.
    fn restart_now(&mut self) -> bool {
        if self.stopping {
            return false;
        }
        match self.phase {
            Phase::Running => {
                tracing::info!(reason = "notify.restart_on", "restarting the app");
                self.health.send_replace(Health::Starting);
                self.signal_tree(self.app.stop_signal);
                self.phase = Phase::Draining {
                    deadline: Instant::now() + self.app.stop_timeout,
                    killed: false,
                    then: Then::RestartNow,
                };
                true
            }
            Phase::Backoff { .. } => {
                self.phase = Phase::Backoff {
                    until: Instant::now(),
                    delay: Duration::ZERO,
                };
                true
            }
            _ => false,
        }
    }

    /// Sends `sig` to the app's process group and to every descendant that left it. The group
    /// is only signalled while one of its members is alive: a group id whose members are all
    /// gone could be reused by an unrelated process.
    fn signal_tree(&self, sig: Signal) {
        let tree = proctree::descendants(std::process::id() as i32);
        let group_alive =
            self.current.is_some() || self.group.is_some_and(|g| tree.iter().any(|p| p.pgrp == g));
        if let (Some(g), true) = (self.group, group_alive) {
            let _ = crate::sys::signals::kill(-g, sig as i32);
        }
        for p in tree.iter().filter(|p| Some(p.pgrp) != self.group) {
            let _ = crate::sys::signals::kill(p.pid, sig as i32);
        }
    }
}
