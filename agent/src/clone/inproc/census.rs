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
}

/// What `/status` says of them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outsiders {
    pub total: usize,
    pub shown: Vec<Outsider>,
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
    pids.into_iter()
        .map(|pid| {
            let mut buf = [0u8; 64];
            let comm = crate::sys::bounded::read_into(
                std::path::Path::new(&format!("/proc/{pid}/comm")),
                &mut buf,
            )
            .map(|c| String::from_utf8_lossy(c).trim_end().to_string())
            .unwrap_or_default();
            Outsider { pid, comm }
        })
        .collect()
}
