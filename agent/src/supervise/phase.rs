//! The supervisor's vocabulary: what the rest of the agent asks of it (`Command`), what it shows
//! of the app (`AppView`), and its own states (`Phase`, with what follows a drain, `Then`).

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant};

use crate::supervise::reaper::Exit;

/// What hooks ask of the event loop.
#[derive(Debug)]
pub enum Command {
    /// Restart the app now (`notify.restart_on`), outside the crash-loop accounting; the reply
    /// says whether a restart began.
    Restart(oneshot::Sender<bool>),
}

/// What `/status` and `/terminate` see of the app.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AppView {
    pub pid: Option<i32>,
    pub phase: &'static str,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub last_exit_code: Option<i32>,
}

pub(super) struct Current {
    pub(super) pid: i32,
    pub(super) started: Instant,
    pub(super) exited: oneshot::Receiver<Exit>,
    pub(super) probe: JoinHandle<()>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Then {
    Exit,
    /// After a crash: the restart policy, with backoff.
    Restart,
    /// Asked for (`restart_on`): at once, not counted as a failure.
    RestartNow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Running,
    Backoff {
        until: Instant,
        /// The whole delay, to arm it again after a freeze.
        delay: Duration,
    },
    Draining {
        deadline: Instant,
        killed: bool,
        then: Then,
    },
    /// The app failed before `/run` while a platform was polling `/ready`: keep answering 500
    /// until that has been said once (or the supervisor's `FAIL_LINGER` passes), so the build fails fast.
    Lingering {
        until: Instant,
        code: i32,
    },
    Done(i32),
}
