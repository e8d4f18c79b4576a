//! How the new-generation routine fails, typed: which step, and what it means for the hook is
//! for the hook to say (`Answer::from`).

use hyper::StatusCode;
use serde_json::json;

use super::Answer;
use crate::clone::notify::Outcome;

/// Why the routine did not end with an acknowledged generation. What each means for the hook is
/// for the caller to say (`Answer::from`): the routine knows nothing of HTTP.
#[derive(Debug)]
pub enum RoutineError {
    /// No randomness from the OS: no generation was made.
    Entropy(String),
    /// A secret could not be produced: nothing was switched in or published.
    Secret { name: String, reason: String },
    /// The state directory refused the seed (nothing switched in) or the generation file.
    StateDir(String),
    /// The generation exists and was published, but the app did not acknowledge it.
    NotAcknowledged { generation: u64, outcome: Outcome },
}

impl RoutineError {
    /// The one-word outcome for logs, `/status` and the answer.
    pub fn outcome(&self) -> &'static str {
        match self {
            RoutineError::Entropy(_) => "entropy-failed",
            RoutineError::Secret { .. } => "secret-failed",
            RoutineError::StateDir(_) => "state-dir-error",
            RoutineError::NotAcknowledged { .. } => "not-acknowledged",
        }
    }

    pub fn message(&self) -> String {
        match self {
            RoutineError::Entropy(e) | RoutineError::StateDir(e) => e.clone(),
            RoutineError::Secret { name, reason } => {
                format!("secret \"{name}\" could not be produced: {reason}")
            }
            RoutineError::NotAcknowledged { outcome, .. } => unacknowledged(outcome),
        }
    }
}

pub(super) fn unacknowledged(outcome: &Outcome) -> String {
    format!("the app did not acknowledge: {}", outcome.summary())
}

impl From<RoutineError> for Answer {
    fn from(e: RoutineError) -> Answer {
        let mut answer = Answer::error(StatusCode::INTERNAL_SERVER_ERROR, e.outcome(), e.message());
        if let RoutineError::NotAcknowledged {
            generation,
            outcome,
        } = e
        {
            answer.extra["failed"] = json!(outcome.failed);
            // The generation exists (published, the app may have seen it): say which it is.
            answer.extra["generation"] = json!(generation);
        }
        answer
    }
}
