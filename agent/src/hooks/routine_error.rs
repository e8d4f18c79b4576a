//! What a failed routine means for a hook: its answer.

use hyper::StatusCode;
use serde_json::json;

use super::Answer;
use crate::clone::routine_error::RoutineError;

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
