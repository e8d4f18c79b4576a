//! A hook's answer before it becomes HTTP, and who asked: the types the HTTP layer and the hooks
//! share.

use hyper::StatusCode;
use serde_json::{json, Value};

use crate::hooks::lifecycle::Hook;

/// A hook's answer before it becomes HTTP: status, a one-word outcome for logs and `/status`,
/// and extra JSON fields.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub outcome: &'static str,
    pub extra: Value,
}

impl Answer {
    pub fn ok(outcome: &'static str) -> Self {
        Answer {
            status: StatusCode::OK,
            outcome,
            extra: json!({}),
        }
    }

    pub fn with(status: StatusCode, outcome: &'static str, extra: Value) -> Self {
        Answer {
            status,
            outcome,
            extra,
        }
    }

    pub fn error(status: StatusCode, outcome: &'static str, error: impl Into<String>) -> Self {
        Answer {
            status,
            outcome,
            extra: json!({ "error": error.into() }),
        }
    }
}

/// Who called a hook, as far as the request tells (docs/platform.md, "The hooks").
/// It can only ever be a heuristic: every header can be forged by whoever holds a token for the
/// hook port, so no hook may do harm when a stranger calls it, whatever this says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A loopback `Host` and no `x-amzn-requestid`: the platform's runtime calls (and local use).
    Platform,
    /// The image builder: the build-time `/ready` and `/validate` come with the build VM's
    /// endpoint as `Host`, an `x-amzn-requestid` and `user-agent: smithy-*` (measured).
    Builder,
    /// Anything else that looks forwarded from the public endpoint.
    Public,
}

/// The status for "not now": build-time hooks are polled, so 503 means "ask again"; for runtime
/// hooks, which are not retried on our behalf, it is a plain failure.
pub(super) fn busy_status(hook: Hook) -> StatusCode {
    if hook.is_build_time() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}
