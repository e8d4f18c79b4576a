//! The one event loop, for both modes (an app to supervise, or a sidecar with none): one
//! `select!` over every event source, one method per arm, as tini has one function per duty.
//! Between events the agent sleeps: there is no periodic timer.

use std::future::Future;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use crate::boot::Parts;
use crate::supervise::supervisor::{Command, Supervisor};
use crate::sys::signals::Signals;
use crate::EX_SOFTWARE;

struct EventLoop {
    parts: Parts,
    /// Sidecar mode's exit code once it is decided (the supervisor keeps its own).
    sidecar_exit: Option<i32>,
    /// `/terminate` and the embedder's shutdown each count once.
    terminated: bool,
    shut: bool,
}

/// Runs until the agent is done (the app's tree is gone, or a sidecar was told to stop);
/// returns the exit code.
pub async fn run(parts: Parts, mut signals: Signals, shutdown: impl Future<Output = ()>) -> i32 {
    let agent = parts.agent.clone();
    let terminate = agent.terminate_requested();
    tokio::pin!(shutdown, terminate);
    let mut l = EventLoop {
        parts,
        sidecar_exit: None,
        terminated: false,
        shut: false,
    };
    loop {
        if let Some(code) = l.finished() {
            return code;
        }
        let deadline = l.sup().and_then(Supervisor::next_deadline);
        let lingering = l.sup().is_some_and(Supervisor::lingering);
        tokio::select! {
            signal = signals.recv() => match signal {
                Ok(sig) => l.on_signal(sig),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read signals");
                    return EX_SOFTWARE;
                }
            },
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                l.on_deadline(deadline);
            }
            () = &mut terminate, if !l.terminated => { l.terminated = true; l.on_stop_request(); }
            () = &mut shutdown, if !l.shut => { l.shut = true; l.on_stop_request(); }
            () = agent.failure_reported(), if lingering => l.on_failure_reported(),
            Some(command) = l.parts.commands.recv() => l.on_command(command),
        }
    }
}

impl EventLoop {
    fn sup(&self) -> Option<&Supervisor> {
        self.parts.supervisor.as_ref()
    }

    fn finished(&self) -> Option<i32> {
        match &self.parts.supervisor {
            Some(s) => s.finished(),
            None => self.sidecar_exit,
        }
    }

    /// SIGCHLD reaps; SIGTERM and SIGINT stop; anything else goes to the app.
    fn on_signal(&mut self, sig: i32) {
        let stop_signal = self.parts.stop_signal;
        let Some(s) = self.parts.supervisor.as_mut() else {
            match sig {
                libc::SIGCHLD => drop(self.parts.reaper.reap()),
                libc::SIGTERM | libc::SIGINT => self.sidecar_exit = Some(0),
                _ => {}
            }
            return;
        };
        match sig {
            libc::SIGCHLD => {
                let left = self.parts.reaper.reap();
                s.after_reap(left);
            }
            libc::SIGTERM => s.stop(stop_signal),
            libc::SIGINT => s.stop(Signal::SIGINT),
            other => s.forward(other),
        }
    }

    /// A supervisor deadline (stop grace, backoff, linger). One that fires long after it was
    /// due was frozen (the monotonic clock runs on through a suspend): armed again, not acted on
    /// (`sys::clock`).
    fn on_deadline(&mut self, deadline: Option<Instant>) {
        let Some(s) = self.parts.supervisor.as_mut() else {
            return;
        };
        match deadline.and_then(crate::sys::clock::frozen_past) {
            Some(late) => s.after_freeze(late),
            None => s.on_deadline(),
        }
    }

    /// `/terminate` or the embedder's shutdown. A sidecar has no app to stop: its last duty is
    /// done and it exits 0 (the answer is still written: the server drains on the way out), as
    /// the supervisor does once its app is gone.
    fn on_stop_request(&mut self) {
        let stop_signal = self.parts.stop_signal;
        match self.parts.supervisor.as_mut() {
            Some(s) => s.stop(stop_signal),
            None => self.sidecar_exit = Some(0),
        }
    }

    /// The platform has seen `/ready` say 500: the build-failure linger is over.
    fn on_failure_reported(&mut self) {
        if let Some(s) = self.parts.supervisor.as_mut() {
            s.end_linger();
        }
    }

    fn on_command(&mut self, command: Command) {
        match self.parts.supervisor.as_mut() {
            Some(s) => s.command(command),
            // No app to restart.
            None => match command {
                Command::Restart(reply) => drop(reply.send(false)),
            },
        }
    }
}
