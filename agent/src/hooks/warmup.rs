//! `/validate`: the new generation of the validate VM (a clone too), then the warm-up requests
//! through the app, which outlive the polls that watch them.

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::json;
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use super::{Agent, Answer};
use crate::config::Event;
use crate::supervise::probe;

/// The least time one warm-up request may take (the hook's own budget if longer).
const WARMUP_REQUEST_LIMIT: Duration = Duration::from_secs(30);

/// The `/validate` warm-up, which outlives the polls that watch it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Warmup {
    NotStarted,
    Running,
    Passed(usize),
    Failed(String),
}

impl Agent {
    /// Starts the warm-up on the first call and reports on it. The hook's deadline bounds the
    /// wait: a warm-up that takes longer answers 503 (the platform asks again) and goes on.
    ///
    /// Only the new generation holds the action guard: the warm-up (minutes, maybe) is a task of
    /// its own that holds nothing, so no other hook ever waits for it, and `/run` cancels it.
    pub(super) async fn validate(
        self: &Arc<Self>,
        deadline: Instant,
        guard: OwnedMutexGuard<()>,
    ) -> Answer {
        let requests = &self.config.validate;
        let start = {
            let mut w = crate::sys::lock(&self.build.warmup);
            let start = *w == Warmup::NotStarted;
            if start {
                *w = Warmup::Running;
            }
            start
        };
        if start {
            // The validate VM is a clone too: it gets its own generation before the warm-up, so
            // the requests exercise the app as it will run after /run.
            let generation = self.hook_generation(Event::Validate, &[], deadline).await;
            drop(guard);
            if let Err(e) = generation {
                *crate::sys::lock(&self.build.warmup) = Warmup::Failed(e.message());
                return e.into();
            }
            tracing::info!(
                requests = requests.requests.len(),
                repeat = requests.repeat,
                "warm-up started"
            );
            // Each request may take longer than one poll: the warm-up outlives the polls.
            let per_request = self.config.hooks.validate_timeout.max(WARMUP_REQUEST_LIMIT);
            let agent = self.clone();
            let task = tokio::spawn(async move {
                let result = probe::warm_up(&agent.config.validate, per_request).await;
                let mut w = crate::sys::lock(&agent.build.warmup);
                *w = match result {
                    Ok(n) => {
                        tracing::info!(sent = n, "warm-up passed");
                        Warmup::Passed(n)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "warm-up failed");
                        Warmup::Failed(e)
                    }
                };
            });
            *crate::sys::lock(&self.build.warmup_task) = Some(task.abort_handle());
            let _ = task.await;
        } else {
            drop(guard);
        }
        match crate::sys::lock(&self.build.warmup).clone() {
            Warmup::Passed(n) => {
                Answer::with(StatusCode::OK, "valid", json!({ "warmup_requests": n }))
            }
            Warmup::Failed(e) => Answer::error(StatusCode::INTERNAL_SERVER_ERROR, "invalid", e),
            Warmup::Running | Warmup::NotStarted => Answer::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "warming-up",
                "the warm-up requests are still running",
            ),
        }
    }
}
