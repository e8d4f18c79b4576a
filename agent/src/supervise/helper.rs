//! Running a helper command to completion under a time limit: exec probes, notify commands,
//! secret commands. The helper's exit comes from the one [`Reaper`]; when the limit passes, or
//! the caller gives up (the future is dropped), the helper's whole process group is killed.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::supervise::reaper::{Exit, Reaper};
use crate::supervise::spawn::{self, Output, RunAs};

/// Kills the helper's process group unless disarmed (the helper exited on its own).
struct KillOnDrop(Option<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // The group still exists: its leader is not reaped until the reaper sees it.
            let _ = crate::sys::signals::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// The most of a helper's stdout that may be used (a secret's value). One byte more is read,
/// so that the caller can tell "too long" from "exactly the limit" and refuse a cut value.
pub const CAPTURE_LIMIT: usize = 64 * 1024;

/// What a helper did.
pub struct Finished {
    pub exit: Exit,
    /// Its stdout when `capture` was asked for: at most [`CAPTURE_LIMIT`] + 1 bytes.
    pub stdout: Vec<u8>,
}

/// What a helper is started with: the launcher's, lent (the launcher calls [`run`]; this module
/// does not know it).
pub(super) struct With<'a> {
    pub reaper: &'a Reaper,
    pub run_as: Option<&'a RunAs>,
    pub caps: Option<crate::sys::caps::ForChild>,
    pub state_dir: &'a std::path::Path,
}

/// Runs the helper; `Err` says why it did not finish (could not start, or timed out).
pub(super) async fn run(
    launcher: With<'_>,
    argv: &[OsString],
    env: Vec<(&'static str, String)>,
    capture: bool,
    limit: Duration,
) -> Result<Finished, String> {
    // `fork` + `exec` run on the I/O thread: the standard library waits until the exec has
    // happened, and an exec from a restored VM's lazily paged-in disk can take seconds (measured:
    // 2 s), during which the runtime's thread must go on answering. The time limit covers it.
    let (argv, run_as, state_dir, caps) = (
        argv.to_vec(),
        launcher.run_as.cloned(),
        launcher.state_dir.to_path_buf(),
        launcher.caps,
    );
    let epoch = launcher.reaper.epoch();
    let started = crate::sys::offload::run_or_else(
        move || {
            spawn::spawn(spawn::Spec {
                argv: &argv,
                run_as: run_as.as_ref(),
                workdir: None,
                state_dir: &state_dir,
                env: env.into_iter().map(|(k, v)| (k, v.into())).collect(),
                caps,
                stdout: if capture {
                    Output::Capture
                } else {
                    Output::Null
                },
                foreground: false,
            })
        },
        // Started after its caller gave up: nobody will wait for it.
        |spawned| {
            if let Ok(s) = spawned {
                drop(KillOnDrop(Some(s.pid)));
            }
        },
    );
    let deadline = tokio::time::Instant::now() + limit;
    let spawned = match tokio::time::timeout_at(deadline, started).await {
        Ok(Some(spawned)) => spawned.map_err(|e| e.message)?,
        Ok(None) => return Err("the I/O thread failed".into()),
        Err(_) => return Err(format!("did not start within {limit:?}")),
    };
    // The exit may have been reaped already: the reaper keeps it for a watcher that started the
    // process after `epoch`.
    let exited = launcher.reaper.watch_since(spawned.pid, epoch);
    let mut guard = KillOnDrop(Some(spawned.pid));
    let work = async {
        let mut stdout = Vec::new();
        if let Some(out) = spawned.stdout {
            let fd = OwnedFd::from(out);
            if let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
                // One byte more than the limit tells "too long" from "exactly the limit"; the
                // pipe is closed right after, so a helper that writes on gets EPIPE, not stuck.
                let _ = pipe
                    .take(CAPTURE_LIMIT as u64 + 1)
                    .read_to_end(&mut stdout)
                    .await;
            }
        }
        let exit = exited
            .await
            .map_err(|_| "the helper's exit was lost".to_string())?;
        Ok::<_, String>(Finished { exit, stdout })
    };
    match tokio::time::timeout_at(deadline, work).await {
        Ok(result) => {
            guard.0 = None;
            result
        }
        Err(_) => Err(format!("did not finish within {limit:?} (killed)")),
    }
}
