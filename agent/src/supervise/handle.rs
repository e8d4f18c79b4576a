//! What the rest of the agent holds of the app: its published status and a way to ask the event
//! loop for a restart. The supervisor publishes through [`Publisher`]; nobody else holds it, so
//! nothing outside `supervise` reaches into the supervisor (and the supervisor holds nothing of
//! the hooks).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::supervise::phase::{AppView, Command};
use crate::supervise::Health;

#[derive(Clone)]
pub struct AppHandle {
    /// The app's health (sidecar: always `Up`).
    health: watch::Receiver<Health>,
    /// Its pid, phase, restarts and last exit, for `/status` and `/terminate` (sidecar: default).
    view: watch::Receiver<AppView>,
    /// The readiness probe's last failed attempt, written by the probe task, for `/status`.
    last_probe: Arc<Mutex<Option<String>>>,
    /// Requests to the event loop, which owns the supervisor.
    commands: mpsc::UnboundedSender<Command>,
}

/// The supervisor's side of an [`AppHandle`].
pub struct Publisher {
    pub health: watch::Sender<Health>,
    pub view: watch::Sender<AppView>,
    pub last_probe: Arc<Mutex<Option<String>>>,
}

impl AppHandle {
    /// A handle, the supervisor's publisher and the event loop's command queue. `sidecar`: no
    /// app to wait for, so the health starts (and stays) `Up`.
    pub fn new(sidecar: bool) -> (AppHandle, Publisher, mpsc::UnboundedReceiver<Command>) {
        let (health_tx, health) = watch::channel(if sidecar {
            Health::Up
        } else {
            Health::Starting
        });
        let (view_tx, view) = watch::channel(AppView::default());
        let (commands, rx) = mpsc::unbounded_channel();
        let last_probe = Arc::<Mutex<Option<String>>>::default();
        let handle = AppHandle {
            health,
            view,
            last_probe: last_probe.clone(),
            commands,
        };
        let publisher = Publisher {
            health: health_tx,
            view: view_tx,
            last_probe,
        };
        (handle, publisher, rx)
    }

    pub fn health(&self) -> Health {
        *self.health.borrow()
    }

    pub fn view(&self) -> AppView {
        self.view.borrow().clone()
    }

    pub fn last_probe(&self) -> Option<String> {
        crate::sys::lock(&self.last_probe).clone()
    }

    /// Waits until the app has no process (`true`), or `deadline` passes (`false`).
    pub async fn wait_gone(&self, deadline: Instant) -> bool {
        let mut view = self.view.clone();
        let gone = tokio::time::timeout_at(deadline, view.wait_for(|a| a.pid.is_none())).await;
        gone.is_ok()
    }

    /// Restarts the app and waits until the new instance is ready (or `limit` passes).
    pub async fn restart_and_wait(&self, limit: Duration) -> Result<(), String> {
        let mut health = self.health.clone();
        let work = async {
            let (tx, rx) = oneshot::channel();
            self.commands
                .send(Command::Restart(tx))
                .map_err(|_| "the supervisor is gone".to_string())?;
            if !rx.await.unwrap_or(false) {
                return Err("the app is not running, so it cannot be restarted".to_string());
            }
            // The restart marks the app Starting before it answers; wait for its readiness.
            health.mark_unchanged();
            health
                .wait_for(|h| *h != Health::Starting)
                .await
                .map_err(|_| "the supervisor is gone".to_string())?;
            match *health.borrow() {
                Health::Up => Ok(()),
                _ => Err("the restarted app failed".to_string()),
            }
        };
        tokio::time::timeout(limit, work)
            .await
            .unwrap_or_else(|_| Err(format!("the restarted app was not ready within {limit:?}")))
    }
}
