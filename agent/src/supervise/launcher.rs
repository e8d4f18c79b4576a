//! The one place that starts processes: the app and every helper command (exec probes, notify
//! and secret commands), all as the configured user, with the state directory in their
//! environment, and each exit told by the one reaper.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::supervise::helper::{self, Finished};
use crate::supervise::reaper::{Exit, Reaper};
use crate::supervise::spawn::{self, Output, RunAs, SpawnError};

#[derive(Clone)]
pub struct Launcher {
    /// The one `waitpid` loop: a child's exit reaches whoever started it, through here.
    pub reaper: Arc<Reaper>,
    /// `[app] user`: the app and every helper run as it (`None`: as the agent).
    pub run_as: Option<RunAs>,
    /// The capability cut for the app and every helper (`sys::caps`; `None`: they inherit).
    pub caps: Option<crate::sys::caps::ForChild>,
    /// Handed to every child as `MICROVM_AGENT_STATE_DIR`.
    pub state_dir: PathBuf,
    /// The app's extra environment (the in-process reseed helpers); helpers do not get it.
    pub app_env: Vec<(&'static str, OsString)>,
    /// Runs before every start of the app: puts back what that environment names if something
    /// removed it (a `--require` of a missing file would stop every Node.js process).
    pub before_app: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// A started app: its pid, and its exit once the reaper sees it.
pub struct Started {
    pub pid: i32,
    pub exited: oneshot::Receiver<Exit>,
}

impl Launcher {
    /// Starts the app in the foreground process group of its own.
    pub fn app(
        &self,
        argv: &[OsString],
        workdir: Option<&std::path::Path>,
    ) -> Result<Started, SpawnError> {
        if let Some(check) = &self.before_app {
            check();
        }
        let spawned = spawn::spawn(spawn::Spec {
            argv,
            run_as: self.run_as.as_ref(),
            workdir,
            state_dir: &self.state_dir,
            env: self.app_env.clone(),
            caps: self.caps,
            stdout: Output::Inherit,
            foreground: true,
        })?;
        // Before any await: the reaper must know whom to tell.
        let exited = self.reaper.watch(spawned.pid);
        Ok(Started {
            pid: spawned.pid,
            exited,
        })
    }

    /// Runs a helper command to completion within `limit` (`capture`: keep its stdout).
    pub async fn helper(
        &self,
        argv: &[OsString],
        env: Vec<(&'static str, String)>,
        capture: bool,
        limit: Duration,
    ) -> Result<Finished, String> {
        let with = helper::With {
            reaper: &self.reaper,
            run_as: self.run_as.as_ref(),
            caps: self.caps,
            state_dir: &self.state_dir,
        };
        helper::run(with, argv, env, capture, limit).await
    }

    /// Who owns the files the app must read (the run-as user, else the agent's own).
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.run_as.as_ref().map(|u| (u.uid, u.gid))
    }
}
