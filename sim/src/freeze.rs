//! Freezing the entrypoint's whole process tree, as a suspend does: the cgroup v2 freezer where we
//! may create a cgroup (the entrypoint joins it before `exec`, so nothing escapes), SIGSTOP and
//! SIGCONT to every process of the tree otherwise.

use std::ffi::CString;
use std::fs;
use std::path::PathBuf;

pub struct Tree {
    /// The entrypoint's pid (also its process group).
    pub root: i32,
    cgroup: Option<PathBuf>,
}

/// Orphans of the entrypoint come to the simulator instead of the host's init, so that a freeze
/// and the end of the VM reach them (a daemon that double-forked is still in the VM).
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// Makes a cgroup for the entrypoint, if the machine lets us.
pub fn prepare() -> Option<PathBuf> {
    let base = PathBuf::from("/sys/fs/cgroup");
    if !base.join("cgroup.controllers").exists() {
        return None;
    }
    let dir = base.join(format!("microvm-sim-{}", std::process::id()));
    fs::create_dir(&dir).ok()?;
    dir.join("cgroup.freeze").exists().then_some(dir)
}

/// The path the child writes "0" to before `exec` (joining the cgroup), as a C string.
pub fn join_path(cgroup: &Option<PathBuf>) -> Option<CString> {
    cgroup
        .as_ref()
        .and_then(|d| CString::new(d.join("cgroup.procs").to_string_lossy().into_owned()).ok())
}

impl Tree {
    pub fn new(root: i32, cgroup: Option<PathBuf>) -> Tree {
        Tree { root, cgroup }
    }

    pub fn method(&self) -> &'static str {
        if self.cgroup.is_some() {
            "cgroup freezer"
        } else {
            "SIGSTOP"
        }
    }

    /// The entrypoint and everything below it, and every orphan it left: the simulator is a child
    /// subreaper ([`become_subreaper`]), so a daemon that double-forked out of the tree is
    /// re-parented to it, as it stays inside the VM on the platform.
    fn members(&self) -> Vec<i32> {
        let me = std::process::id() as i32;
        let mut all = vec![me];
        let procs: Vec<(i32, i32)> = fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                    .filter_map(|p| {
                        let stat = fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
                        let ppid = stat
                            .rsplit_once(')')?
                            .1
                            .split_whitespace()
                            .nth(1)?
                            .parse()
                            .ok()?;
                        Some((p, ppid))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut i = 0;
        while i < all.len() {
            let parent = all[i];
            all.extend(
                procs
                    .iter()
                    .filter(|(_, pp)| *pp == parent)
                    .map(|(p, _)| *p),
            );
            i += 1;
        }
        all.retain(|p| *p != me);
        all
    }

    fn signal_all(&self, sig: i32) {
        for p in self.members() {
            // SAFETY: kill takes plain integers; no memory of ours is involved.
            unsafe { libc::kill(p, sig) };
        }
    }

    pub fn freeze(&self) {
        match &self.cgroup {
            Some(d) => {
                let _ = fs::write(d.join("cgroup.freeze"), "1");
            }
            None => self.signal_all(libc::SIGSTOP),
        }
    }

    pub fn thaw(&self) {
        match &self.cgroup {
            Some(d) => {
                let _ = fs::write(d.join("cgroup.freeze"), "0");
            }
            None => self.signal_all(libc::SIGCONT),
        }
    }

    /// Kills everything that is left (the end of the simulated VM).
    pub fn kill(&self) {
        if let Some(d) = &self.cgroup {
            let _ = fs::write(d.join("cgroup.freeze"), "0");
            let _ = fs::write(d.join("cgroup.kill"), "1");
        }
        self.signal_all(libc::SIGKILL);
        // SAFETY: kill takes plain integers; no memory of ours is involved.
        unsafe { libc::kill(-self.root, libc::SIGKILL) };
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if let Some(d) = &self.cgroup {
            // Empty by now (or soon): remove it so that runs leave nothing behind.
            for _ in 0..50 {
                if fs::remove_dir(d).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}
