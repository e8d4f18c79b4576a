//! Who does not take part: the app's processes that are not registered (a static binary, a
//! program the helpers cannot load into, one that left), for `/status`.
//!
//! Finding them walks the app's process tree in `/proc`: a few file reads per process, 1,500
//! processes in tens of milliseconds. Done on the runtime's one thread for every `/status` (as it
//! was), 16 pollers and 1,500 processes held `/suspend` and `/resume` for 1.1-3.3 s. So the walk
//! runs on a blocking thread, never on the runtime's, never on a hook's path, at most once per
//! [`FRESH`]: every `/status` in that time (a burst of pollers) shares one walk, and waits for it
//! without holding the runtime. Who is registered changes faster than the tree and is applied
//! at each answer. The list shown is cut at [`SHOWN`]; the total is always said.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// One walk serves every `/status` for this long.
pub const FRESH: Duration = Duration::from_secs(1);
/// At most this many processes are listed (all are counted).
pub const SHOWN: usize = 64;

/// A process of the app's that does not take part.
#[derive(Clone, Debug, Serialize)]
pub struct Outsider {
    pub pid: i32,
    pub comm: String,
    /// What its program is (`go`, `static`, `dynamic`; absent when its executable cannot be
    /// read: another user's process without `CAP_SYS_PTRACE`, or not ELF).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<&'static str>,
}

/// What `/status` says of them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outsiders {
    pub total: usize,
    pub shown: Vec<Outsider>,
    /// For each kind of program among them, what of it stays as cloned and what the author can
    /// do (only the kinds present).
    pub stays_cloned: Vec<Advice>,
}

/// What stays as cloned in one kind of program that cannot take part.
#[derive(Clone, Debug, Serialize)]
pub struct Advice {
    pub program: &'static str,
    pub what: &'static str,
}

/// The advice per kind of program (`docs/clone-safety.md` has the measurements behind it).
pub(super) fn advice(program: &str) -> Option<&'static str> {
    Some(match program {
        "go" => {
            "Go: crypto/rand and crypto/tls read the kernel on every call (fresh when \
             inproc.kernel_values_fresh is true); the global functions of math/rand \
             and math/rand/v2 stay as cloned until the process restarts: keep a generator over \
             clients/go's ChaCha8 and reseed it in a callback"
        }
        "static" => {
            "static binary: no helper loads into it; what it keeps in memory stays as cloned, \
             what it reads from the kernel each time is fresh when inproc.kernel_values_fresh \
             is true: \
             reseed in the app (a client library) or restart it"
        }
        "dynamic" => {
            "no OpenSSL in it at start (or it left): a runtime that loads OpenSSL later (Ruby, \
             PHP, .NET, python -I) keeps that OpenSSL's generator as cloned"
        }
        _ => return None,
    })
}

/// The last walk, shared by the `/status` answers of one [`FRESH`] period.
#[derive(Default)]
pub struct Census {
    last: tokio::sync::Mutex<Option<(Instant, std::sync::Arc<Vec<Outsider>>)>>,
}

impl Census {
    /// The processes of `app`'s tree (the app and every descendant of the agent's) that are not
    /// in `taking_part`.
    pub async fn outsiders(&self, app: Option<i32>, taking_part: &HashSet<i32>) -> Outsiders {
        let Some(app) = app else {
            return Outsiders::default();
        };
        let tree = {
            let mut last = self.last.lock().await;
            match &*last {
                Some((at, tree)) if at.elapsed() < FRESH => tree.clone(),
                _ => {
                    let tree = tokio::task::spawn_blocking(move || walk(app))
                        .await
                        .map(std::sync::Arc::new)
                        .unwrap_or_default();
                    *last = Some((Instant::now(), tree.clone()));
                    tree
                }
            }
        };
        let mut out = Outsiders::default();
        for p in tree.iter().filter(|p| !taking_part.contains(&p.pid)) {
            out.total += 1;
            if out.shown.len() < SHOWN {
                out.shown.push(p.clone());
            }
            if let Some(program) = p.program {
                if !out.stays_cloned.iter().any(|a| a.program == program) {
                    if let Some(what) = advice(program) {
                        out.stays_cloned.push(Advice { program, what });
                    }
                }
            }
        }
        out
    }
}

/// The app and every descendant of the agent, sorted by pid, with their names (blocking).
fn walk(app: i32) -> Vec<Outsider> {
    let mut pids: Vec<i32> = crate::supervise::proctree::descendants(std::process::id() as i32)
        .into_iter()
        .map(|p| p.pid)
        .collect();
    pids.push(app);
    pids.sort_unstable();
    pids.dedup();
    // Most processes of an app run one of a few programs: each is read once per walk.
    let mut programs: std::collections::HashMap<(u64, u64), Option<&'static str>> =
        std::collections::HashMap::new();
    pids.into_iter()
        .map(|pid| {
            let mut buf = [0u8; 64];
            let comm = crate::sys::bounded::read_into(
                std::path::Path::new(&format!("/proc/{pid}/comm")),
                &mut buf,
            )
            .map(|c| String::from_utf8_lossy(c).trim_end().to_string())
            .unwrap_or_default();
            let program = program_of(pid, &mut programs);
            Outsider { pid, comm, program }
        })
        .collect()
}

/// What `pid` runs, by its executable's device and inode (`None`: not readable, not ELF).
///
/// `/proc/<pid>/exe` may only be opened with the right to trace the process: the agent, which
/// keeps fewer effective capabilities than it gives the app (`sys::caps`), has it only where it
/// runs with the app's. Then the program is found the way the process was started: its argv[0]
/// (`/proc/<pid>/cmdline`, readable by anyone), as a path or along the agent's `$PATH`, which the
/// app inherits. A process that rewrote its argv[0] (`nginx: worker process`) stays unnamed.
fn program_of(
    pid: i32,
    seen: &mut std::collections::HashMap<(u64, u64), Option<&'static str>>,
) -> Option<&'static str> {
    use std::os::unix::fs::MetadataExt;
    let exe = std::fs::File::open(format!("/proc/{pid}/exe"))
        .ok()
        .or_else(|| {
            let mut buf = [0u8; 4096];
            let cmdline = crate::sys::bounded::read_into(
                std::path::Path::new(&format!("/proc/{pid}/cmdline")),
                &mut buf,
            )
            .ok()?;
            let argv0 = cmdline.split(|&b| b == 0).next()?;
            let argv0 = std::path::Path::new(std::ffi::OsStr::from_bytes(argv0));
            std::fs::File::open(crate::sys::elf::locate(argv0)?).ok()
        })?;
    let meta = exe.metadata().ok()?;
    *seen
        .entry((meta.dev(), meta.ino()))
        .or_insert_with(|| crate::sys::elf::classify(&exe).map(crate::sys::elf::Program::as_str))
}
