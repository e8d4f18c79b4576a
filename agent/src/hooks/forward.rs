//! Hook pass-through (`[notify] forward`): apps that already implement the platform's hooks keep
//! their handlers behind the agent. After the agent's own work (the new-generation routine, the
//! scrub, the warm-up), each hook goes to the app on the same path it came on, the `/run` body
//! exactly as received, inside what is left of the hook's budget; the app's 2xx is its
//! acknowledgement and its answer is folded into ours as `"app": {"status", "body"}`. A refusal
//! is a failure of the hook, which `[hooks] fail_on` turns into a non-200 or a 200 `degraded`.
//! `/ready` is not forwarded: point `[ready] http` at the app's own `/ready` instead.

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{Agent, Answer};
use crate::config::values::HttpUrl;
use crate::config::{Event, OnTimeout};
use crate::hooks::lifecycle::Hook;

/// How much of the app's answer is folded into ours.
const FOLD_LIMIT: usize = 4096;

/// What the app said.
pub(super) struct AppAnswer {
    pub json: Value,
    /// Why this is not an acknowledgement, if it is not.
    pub refused: Option<String>,
    pub status: Option<u16>,
}

impl Agent {
    /// Forwards `path` to the app, if `[notify] forward` is set.
    pub(super) async fn forward_to_app(
        &self,
        path: &str,
        body: Bytes,
        deadline: Instant,
    ) -> Option<AppAnswer> {
        let base = self.config.notify.forward.as_ref()?;
        let url = HttpUrl {
            path: path.to_string(),
            ..base.clone()
        };
        let limit = deadline.saturating_duration_since(Instant::now());
        let headers = if body.is_empty() {
            vec![]
        } else {
            vec![("content-type".to_string(), "application/json".to_string())]
        };
        Some(
            match crate::sys::client::request(&url, "POST", &headers, body, limit).await {
                Ok(reply) => {
                    let text = &reply.body[..reply.body.len().min(FOLD_LIMIT)];
                    let body = serde_json::from_slice::<Value>(text)
                        .unwrap_or_else(|_| json!(String::from_utf8_lossy(text)));
                    AppAnswer {
                        json: json!({ "status": reply.status, "body": body }),
                        refused: (!(200..300).contains(&reply.status))
                            .then(|| format!("the app answered {} to {path}", reply.status)),
                        status: Some(reply.status),
                    }
                }
                Err(e) => AppAnswer {
                    json: json!({ "error": e }),
                    refused: Some(format!("the app's {path} did not answer: {e}")),
                    status: None,
                },
            },
        )
    }

    /// After a hook's own work succeeded: the app's turn. Its answer is folded into `answer`.
    pub(super) async fn pass_through(
        &self,
        hook: Hook,
        path: &str,
        body: Bytes,
        deadline: Instant,
        mut answer: Answer,
    ) -> Answer {
        let body = if hook == Hook::Run {
            body
        } else {
            Bytes::new()
        };
        let Some(app) = self.forward_to_app(path, body, deadline).await else {
            return answer;
        };
        answer.extra["app"] = app.json.clone();
        let Some(why) = app.refused else {
            return answer;
        };
        // The build polls /validate: the app's "not yet" is ours.
        if hook == Hook::Validate && app.status == Some(503) {
            return Answer::with(
                StatusCode::SERVICE_UNAVAILABLE,
                "warming-up",
                json!({ "error": why, "app": app.json }),
            );
        }
        let event = match hook {
            Hook::Run => Some(Event::Run),
            Hook::Resume => Some(Event::Resume),
            Hook::Suspend => Some(Event::Suspend),
            Hook::Validate => Some(Event::Validate),
            Hook::Ready | Hook::Terminate => None,
        };
        let waived = event.is_some_and(|e| self.config.hooks.fails_on(e))
            && self.config.notify.on_timeout == OnTimeout::Continue;
        if waived {
            tracing::warn!(hook = hook.name(), error = %why, "the app did not acknowledge (on_timeout = continue)");
            return answer;
        }
        answer.extra["error"] = json!(why);
        Answer::with(
            StatusCode::INTERNAL_SERVER_ERROR,
            "app-refused",
            answer.extra,
        )
    }
}
