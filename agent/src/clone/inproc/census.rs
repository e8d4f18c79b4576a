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

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::sys::elf::{self, Program};

/// One walk serves every `/status` for this long.
pub const FRESH: Duration = Duration::from_secs(1);
/// At most this many processes are listed (all are counted).
pub const SHOWN: usize = 64;

/// A process of the app's that does not take part.
#[derive(Clone, Debug, Serialize)]
pub struct Outsider {
    pub pid: i32,
    pub comm: String,
    /// What its program is (absent when it cannot be found or is not ELF: see [`Programs`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<Program>,
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
    pub program: Program,
    pub what: &'static str,
}

/// The advice per kind of program (`docs/clone-safety.md` has the measurements behind it).
pub(super) fn advice(program: Program) -> &'static str {
    match program {
        Program::Go => {
            "Go: crypto/rand and crypto/tls read the kernel on every call (fresh when \
             inproc.kernel_values_fresh is true); the global functions of math/rand \
             and math/rand/v2 stay as cloned until the process restarts: keep a generator over \
             clients/go's ChaCha8 and reseed it in a callback"
        }
        Program::Static => {
            "static binary: no helper loads into it; what it keeps in memory stays as cloned, \
             what it reads from the kernel each time is fresh when inproc.kernel_values_fresh \
             is true: \
             reseed in the app (a client library) or restart it"
        }
        Program::Java => {
            "JVM: the Java agent is not in it (a runtime without java.instrument, Java 15 or \
             older, a launcher that did not load the native helper, or a seccomp sandbox): its \
             default SecureRandom, UUID.randomUUID and TLS read the kernel (fresh when \
             inproc.kernel_values_fresh is true); Math.random, ThreadLocalRandom and every DRBG \
             stay as cloned: add java.instrument to the runtime (jlink --add-modules), or \
             reseed them in a clients/java callback"
        }
        Program::Dynamic => {
            "no OpenSSL loaded in it (or it left): nothing of OpenSSL to reseed; should it load \
             OpenSSL later (Ruby, PHP, .NET, python -I), the native helper takes part from \
             OpenSSL's first draw"
        }
    }
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
                    let what = advice(program);
                    out.stays_cloned.push(Advice { program, what });
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
    let mut programs = Programs::default();
    pids.into_iter()
        .map(|pid| {
            let mut buf = [0u8; 64];
            let comm = crate::sys::bounded::read_into(
                std::path::Path::new(&format!("/proc/{pid}/comm")),
                &mut buf,
            )
            .map(|c| String::from_utf8_lossy(c).trim_end().to_string())
            .unwrap_or_default();
            let program = match programs.of(pid) {
                Some(Program::Dynamic) if comm == "java" => Some(Program::Java),
                other => other,
            };
            Outsider { pid, comm, program }
        })
        .collect()
}

/// What the processes of one walk run. Most processes of an app run one of a few programs:
/// each file is read once per walk, and each argv[0] looked up once.
///
/// `/proc/<pid>/exe` may only be opened with the right to trace the process: the agent, which
/// keeps fewer effective capabilities than it gives the app (`sys::caps`), has it only where it
/// runs with the app's. Then the program is found the way the process was started: its argv[0]
/// (`/proc/<pid>/cmdline`, readable by anyone), as a path or along the agent's `$PATH`, which the
/// app inherits. A process that rewrote its argv[0] (`nginx: worker process`) stays unnamed.
#[derive(Default)]
struct Programs {
    by_file: HashMap<(u64, u64), Option<Program>>,
    by_argv0: HashMap<Vec<u8>, Option<Program>>,
}

impl Programs {
    fn of(&mut self, pid: i32) -> Option<Program> {
        match std::fs::File::open(format!("/proc/{pid}/exe")) {
            Ok(exe) => self.of_file(&exe),
            Err(_) => self.of_argv0(pid),
        }
    }

    /// By the process's argv[0], for a process whose executable the agent may not open.
    fn of_argv0(&mut self, pid: i32) -> Option<Program> {
        let mut buf = [0u8; 4096];
        let cmdline =
            crate::sys::bounded::read_into(Path::new(&format!("/proc/{pid}/cmdline")), &mut buf)
                .ok()?;
        let argv0 = cmdline.split(|&b| b == 0).next()?;
        if let Some(known) = self.by_argv0.get(argv0) {
            return *known;
        }
        let program = elf::locate(Path::new(OsStr::from_bytes(argv0)))
            .and_then(|path| std::fs::File::open(path).ok())
            .and_then(|file| self.of_file(&file));
        self.by_argv0.insert(argv0.to_vec(), program);
        program
    }

    fn of_file(&mut self, file: &std::fs::File) -> Option<Program> {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().ok()?;
        *self
            .by_file
            .entry((meta.dev(), meta.ino()))
            .or_insert_with(|| elf::classify(file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_named_by_its_argv0_when_its_executable_is_closed_to_us() {
        // Two processes of one program, started by name along $PATH: one lookup serves both.
        let mut sleeps: Vec<_> = (0..2)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .unwrap()
            })
            .collect();
        for s in &sleeps {
            // Until its exec is done, its command line is ours, or nothing (the kernel sets the
            // name before the new arguments).
            let cmdline = format!("/proc/{}/cmdline", s.id());
            while !std::fs::read(&cmdline)
                .unwrap_or_default()
                .starts_with(b"sleep\0")
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        let mut programs = Programs::default();
        for s in &sleeps {
            assert_eq!(programs.of_argv0(s.id() as i32), Some(Program::Dynamic));
        }
        assert_eq!(programs.by_argv0.len(), 1, "looked up once");
        assert_eq!(programs.by_file.len(), 1, "read once");
        // A pid that is gone: unnamed, not an error.
        assert_eq!(programs.of_argv0(i32::MAX), None);
        for s in &mut sleeps {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}
