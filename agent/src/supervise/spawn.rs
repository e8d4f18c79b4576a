//! Starting processes: the app, and the agent's helpers (probe, notify and secret commands).
//!
//! Every process starts in its own process group (so that a stop or a timeout can signal it and
//! everything it started), with the agent's environment plus `MICROVM_AGENT_STATE_DIR`, and with a
//! clean signal state: `std::process::Command` empties the signal mask and restores SIGPIPE in
//! the child before `exec`, so the agent's blocked signals never leak into the app.
//!
//! Between `fork` and `exec` only async-signal-safe calls run (the capability cut, `setgroups`,
//! `setgid`, `setuid`, `tcsetpgrp`): everything that allocates (user lookup, the group list) is done before.

use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};

use nix::unistd::{Gid, Group, Uid, User};

use crate::config::values::UserSpec;

/// The descriptor limit the agent was started with, handed back to every child.
static INHERITED_NOFILE: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// Raises the agent's own descriptor limit to the hard limit: the hook port must keep accepting
/// under a flood of connections (see `http::slots`). Children get the original soft
/// limit back, since some programs misbehave with a very high one (select(2), fd loops).
pub fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            let _ = INHERITED_NOFILE.set(lim);
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &raised);
        }
    }
}

/// The agent's own descriptor limit now (after [`raise_nofile`]): the hook port's connection
/// table is sized from it.
pub fn nofile() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit on a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

/// A user resolved against the user database, ready to switch to after `fork`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub name: Option<String>,
    pub home: Option<PathBuf>,
}

/// Resolves `name`, `uid`, `uid:gid` or `name:group`. A numeric uid need not exist in
/// `/etc/passwd` (common in containers); a name must.
pub fn resolve_user(spec: &UserSpec) -> Result<RunAs, String> {
    let user = match spec.user.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid))
            .map_err(|e| e.to_string())?
            .ok_or(uid),
        Err(_) => Ok(User::from_name(&spec.user)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no user named \"{}\" in the user database", spec.user))?),
    };
    let (uid, mut gid, name, home) = match &user {
        Ok(u) => (
            u.uid.as_raw(),
            u.gid.as_raw(),
            Some(u.name.clone()),
            Some(u.dir.clone()),
        ),
        // A bare uid with no passwd entry: its group is the same number, as Docker does.
        Err(uid) => (*uid, *uid, None, None),
    };
    if let Some(g) = &spec.group {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => Group::from_name(g)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no group named \"{g}\" in the group database"))?
                .gid
                .as_raw(),
        };
    }
    let groups = match &name {
        Some(n) => {
            let c = CString::new(n.as_str()).map_err(|e| e.to_string())?;
            nix::unistd::getgrouplist(&c, Gid::from_raw(gid))
                .map(|g| g.iter().map(|g| g.as_raw()).collect())
                .unwrap_or_else(|_| vec![gid])
        }
        None => vec![gid],
    };
    Ok(RunAs {
        uid,
        gid,
        groups,
        name,
        home,
    })
}

/// Why a program could not be started, with the exit code a shell would use.
#[derive(Debug)]
pub struct SpawnError {
    pub code: i32,
    pub message: String,
}

pub struct Spawned {
    pub pid: i32,
    pub stdout: Option<ChildStdout>,
}

pub struct Spec<'a> {
    pub argv: &'a [OsString],
    pub run_as: Option<&'a RunAs>,
    pub workdir: Option<&'a Path>,
    pub state_dir: &'a Path,
    pub env: Vec<(&'static str, OsString)>,
    /// The capability cut (`sys::caps`), made before the user changes.
    pub caps: Option<crate::sys::caps::ForChild>,
    /// Helpers capture stdout (a secret's value) or silence it; the app inherits all three.
    pub stdout: Output,
    /// The app takes over the terminal's foreground group when stdin is a terminal, so that
    /// `docker run -it` works (job control stops a background group that reads the tty).
    pub foreground: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Inherit,
    Capture,
    Null,
}

pub fn spawn(spec: Spec) -> Result<Spawned, SpawnError> {
    let program = &spec.argv[0];
    let mut cmd = Command::new(program);
    cmd.args(&spec.argv[1..])
        .env("MICROVM_AGENT_STATE_DIR", spec.state_dir)
        .process_group(0);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    if let Some(dir) = spec.workdir {
        cmd.current_dir(dir);
    }
    match spec.stdout {
        Output::Inherit => {}
        Output::Capture => {
            cmd.stdout(Stdio::piped()).stdin(Stdio::null());
        }
        Output::Null => {
            cmd.stdout(Stdio::null()).stdin(Stdio::null());
        }
    }
    let nofile = INHERITED_NOFILE.get().copied();
    // SAFETY: only async-signal-safe calls. A clean signal state for the child: the agent blocks
    // every signal (they arrive through its signalfd) and the Rust runtime ignores SIGPIPE; both
    // would be inherited across exec. std documents a reset of its own, but we measured the mask
    // leaking into children, so we do not rely on it.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(lim) = nofile {
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // The raw system call, because libc refuses to touch its own internal signals
            // (32-34), and an ignored one would be inherited by the app's libc. The kernel's
            // struct sigaction is {handler, flags, restorer, mask} on x86_64 and aarch64 alike;
            // all zero is SIG_DFL with no flags.
            let dfl = [0u64; 4];
            for sig in 1..=64 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::syscall(
                        libc::SYS_rt_sigaction,
                        sig,
                        dfl.as_ptr(),
                        std::ptr::null_mut::<u64>(),
                        8usize,
                    );
                }
            }
            Ok(())
        });
    }
    if let Some(caps) = spec.caps {
        // SAFETY: only system calls (prctl, capget, capset) between fork and exec. Before the
        // user changes: cutting the bounding set needs CAP_SETPCAP, which a non-root user loses.
        unsafe {
            cmd.pre_exec(move || {
                crate::sys::caps::apply_in_child(&caps).map_err(io::Error::from_raw_os_error)
            });
        }
    }
    if let Some(u) = spec.run_as {
        if let Some(name) = &u.name {
            cmd.env("USER", name).env("LOGNAME", name);
        }
        if let Some(home) = &u.home {
            cmd.env("HOME", home);
        }
        let (uid, gid, groups) = (u.uid, u.gid, u.groups.clone());
        // SAFETY: only async-signal-safe system calls between fork and exec; the group list was
        // allocated before the fork. Order matters: groups and gid while we are still root.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    if spec.foreground && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        // SAFETY: async-signal-safe calls only. SIGTTOU is ignored around tcsetpgrp because a
        // background group may not change the foreground group otherwise.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                libc::tcsetpgrp(0, libc::getpid());
                libc::signal(libc::SIGTTOU, libc::SIG_DFL);
                Ok(())
            });
        }
    }
    match cmd.spawn() {
        // The Child is dropped without waiting: the reaper collects every exit.
        Ok(mut child) => Ok(Spawned {
            pid: child.id() as i32,
            stdout: child.stdout.take(),
        }),
        Err(e) if spec.workdir.is_some_and(|d| !d.is_dir()) => Err(SpawnError {
            code: 126,
            message: format!(
                "the working directory {} (app.workdir) cannot be entered: {e}",
                spec.workdir.map(Path::display).unwrap()
            ),
        }),
        Err(e) => {
            let code = match e.raw_os_error() {
                Some(libc::ENOENT) => 127,
                Some(libc::EACCES | libc::ENOEXEC | libc::EISDIR | libc::EPERM) => 126,
                _ => 126,
            };
            let what = if code == 127 {
                "not found"
            } else {
                "cannot be executed"
            };
            Err(SpawnError {
                code,
                message: format!("{:?} {what}: {e}", program),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_root_by_name_and_number() {
        let by_name = resolve_user(&UserSpec {
            user: "root".into(),
            group: None,
        })
        .unwrap();
        assert_eq!((by_name.uid, by_name.gid), (0, 0));
        assert_eq!(by_name.home.as_deref(), Some(Path::new("/root")));
        let by_number = resolve_user(&UserSpec {
            user: "0".into(),
            group: Some("0".into()),
        })
        .unwrap();
        assert_eq!(by_number.uid, 0);
        let unknown_uid = resolve_user(&UserSpec {
            user: "54321".into(),
            group: None,
        })
        .unwrap();
        assert_eq!(
            (unknown_uid.uid, unknown_uid.gid, unknown_uid.groups.clone()),
            (54321, 54321, vec![54321])
        );
        assert!(resolve_user(&UserSpec {
            user: "no-such-user-xyz".into(),
            group: None
        })
        .is_err());
        assert!(resolve_user(&UserSpec {
            user: "root".into(),
            group: Some("no-such-group-xyz".into())
        })
        .is_err());
    }
}
