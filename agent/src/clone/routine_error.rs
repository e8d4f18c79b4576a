//! How the new-generation routine fails, typed: which step. What it means for a hook is for the
//! hook to say (`hooks`, `Answer::from`): the routine knows nothing of HTTP.

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

pub fn unacknowledged(outcome: &Outcome) -> String {
    format!("the app did not acknowledge: {}", outcome.summary())
}
