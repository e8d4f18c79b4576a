//! The app's life: the supervisor's state machine (`supervisor`), the one `waitpid` (`reaper`),
//! starting the app and helper commands (`launcher`, over `spawn` and `helper`), what the rest
//! of the agent holds of the app (`handle`), the process tree (`proctree`) and readiness probes
//! and warm-up requests (`probe`).

pub mod handle;
pub mod helper;
pub mod launcher;
mod phase;
pub mod probe;
pub mod proctree;
pub mod reaper;
pub mod spawn;
pub mod supervisor;

use serde::Serialize;

/// The app's health as the supervisor publishes it (sidecar mode: always `Up`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Starting, or restarting: not ready.
    Starting,
    /// Readiness passed.
    Up,
    /// Exited for good (crash loop, or exited with no restart): the build must fail fast.
    Failed,
}
