//! In-process reseeding: the agent's side of the helpers that run inside the app's processes
//! (`inproc/`: a preloaded library for every OpenSSL, Python's `sitecustomize`, Node's
//! `--require`). The contract between the two sides is `inproc/PROTOCOL.md`.
//!
//! - `setup`: at start, writes the helpers (embedded in this binary) read-only under
//!   `<state_dir>/inproc/` and makes the app's environment load them; binds the socket.
//! - `conn`: one task per connected process: its slot, its registration, the generations it is
//!   sent and its acknowledgements, and the limits that keep the socket the agent's.
//! - `tell`: a new generation, one chain per process (its native helper, then its runtime's,
//!   then the app's own callbacks) under the hook's deadline, and the policy for the late: a
//!   helper is reported, never a failed hook; the app's callbacks fail the channel.
//! - `census`: the app's processes that do not take part, for `/status`, walked off the
//!   runtime's thread at most once a second.
//! - here: the registry (slots, members, the processes that left while running),
//!   [`InProc::tell`] and [`InProc::tell_event`] (`/suspend`, `/terminate`, to the processes
//!   that asked for them).

pub mod census;
mod conn;
pub mod setup;
mod tell;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use zeroize::Zeroizing;

pub use tell::Told;

use crate::sys::lock;

/// At most this many connections at once, before their hello and after: more wait in the
/// socket's backlog (never accepted, so they cost the agent nothing). Lower when the agent's
/// descriptor limit is low (a quarter of it), so the hook port always has room.
pub const MAX_MEMBERS: usize = 256;

/// How long a connection may take to say hello. Long: a Node.js process says it only once its
/// event loop first turns, after the app's whole main module has loaded, and a JVM and a Node.js
/// starting together under emulation took more than a second (measured in the aarch64 runtime
/// clone test with a 1 s limit: neither ever took part).
pub const HELLO_DEADLINE: Duration = Duration::from_secs(60);
/// ... unless the slots run short (fewer than a quarter free): then a connection that has not
/// said hello within this is dropped, so silent connections cannot keep processes out.
pub const HELLO_UNDER_PRESSURE: Duration = Duration::from_secs(1);

/// How many processes that closed their connection while still running are remembered for
/// `/status`.
const REMEMBERED_LEAVERS: usize = 16;

/// 32 bytes for one process, drawn from the agent's generator.
pub type Seed = Zeroizing<[u8; 32]>;

/// A fresh seed for one process from the agent's generator (`None` before the first generation).
pub fn seed(generations: &crate::clone::generation::Generations) -> Option<Seed> {
    let bytes = Zeroizing::new(generations.draw(32)?);
    let mut seed = Zeroizing::new([0u8; 32]);
    seed.copy_from_slice(bytes.get(..32)?);
    Some(seed)
}

/// The current generation's number and a fresh seed, for a process that registers after it was
/// made (`None` before the first generation: nothing is sent at build time).
pub type Current = Arc<dyn Fn() -> Option<(u64, Seed)> + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The preloaded library: OpenSSL.
    Native,
    Python,
    Node,
    /// The Java agent (`inproc/java`): a JVM's generators.
    Java,
    /// A client library (`clients/`): the app's own callbacks.
    App,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        match s {
            "native" => Some(Kind::Native),
            "python" => Some(Kind::Python),
            "node" => Some(Kind::Node),
            "java" => Some(Kind::Java),
            "app" => Some(Kind::App),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Native => "native",
            Kind::Python => "python",
            Kind::Node => "node",
            Kind::Java => "java",
            Kind::App => "app",
        }
    }
}

/// One order to a process: reseed to generation `number` with a seed (or: hear of an event
/// that makes no generation), then say what you did. `reply` is sent on its acknowledgement
/// (`Ok`; what it reseeded goes to the registry, for `/status`) or its failure (`Err`: a
/// callback of the app threw), and dropped when it goes away first (exited, closed the
/// socket): dropped, not a failure.
struct Order {
    number: u64,
    what: Payload,
    /// When the hook stops waiting: sent along (as the milliseconds left) to a process that
    /// asked for it in its hello, so its callbacks can budget their time.
    deadline: tokio::time::Instant,
    reply: oneshot::Sender<Result<(), String>>,
}

enum Payload {
    Generation(Seed),
    /// `suspend` or `terminate`.
    Event(&'static str),
}

/// The events without a generation a process may ask for in its hello.
const EVENTS: [&str; 2] = ["suspend", "terminate"];

struct Member {
    id: u64,
    pid: i32,
    kind: Kind,
    orders: mpsc::UnboundedSender<Order>,
    /// The events without a generation it asked to hear of (`EVENTS`).
    events: Vec<&'static str>,
    /// The last generation it was sent.
    told: Option<u64>,
    /// The last generation it acknowledged, and what it said.
    acked: Option<(u64, String)>,
}

/// What `/status` shows of one process.
#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    pub pid: i32,
    pub kind: Kind,
    /// The last generation it acknowledged.
    pub generation: Option<u64>,
    /// The last generation it was sent (ahead of `generation` while it is late).
    pub told: Option<u64>,
    pub reseeded: Option<String>,
}

/// A process that closed its connection while it was still running: it does not take part.
#[derive(Clone, Debug, Serialize)]
pub struct Leaver {
    pub pid: i32,
    pub kind: Kind,
    pub why: &'static str,
}

pub struct InProc {
    members: Mutex<Vec<Member>>,
    next_id: AtomicU64,
    /// One permit per connection, taken before it is accepted and held until it ends.
    slots: Arc<Semaphore>,
    cap: usize,
    /// Set once the registry was full (said once).
    full: AtomicBool,
    /// Whether the slots are short (fewer than a quarter free): the hello deadline tightens.
    pressure: tokio::sync::watch::Sender<bool>,
    /// The newest generation told: an older chain stops (`tell`).
    latest: Arc<AtomicU64>,
    /// The last processes that left while running.
    leavers: Mutex<VecDeque<Leaver>>,
    /// What was arranged for the app at start (for `/status` and the log).
    pub setup: setup::Arranged,
    /// The app's processes that do not take part (`/status`).
    pub census: census::Census,
}

impl Default for InProc {
    /// A registry for nothing arranged (the tests' and the fuzz targets' agents).
    fn default() -> Self {
        InProc::with_cap(MAX_MEMBERS, setup::Arranged::off("off: not arranged"))
    }
}

impl InProc {
    /// A registry for an agent whose descriptor limit is `nofile`.
    pub fn for_nofile(nofile: usize, arranged: setup::Arranged) -> Self {
        InProc::with_cap(MAX_MEMBERS.min(nofile / 4).max(8), arranged)
    }

    pub fn with_cap(cap: usize, arranged: setup::Arranged) -> Self {
        InProc {
            members: Mutex::default(),
            next_id: AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(cap)),
            cap,
            full: AtomicBool::new(false),
            pressure: tokio::sync::watch::Sender::new(false),
            latest: Arc::default(),
            leavers: Mutex::default(),
            setup: arranged,
            census: census::Census::default(),
        }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn leavers(&self) -> Vec<Leaver> {
        lock(&self.leavers).iter().cloned().collect()
    }

    /// Whether any process takes part (a notify channel to wait on).
    pub fn active(&self) -> bool {
        !lock(&self.members).is_empty()
    }

    /// Whether a process asked to hear of `event` (`suspend`, `terminate`).
    pub fn wants(&self, event: &str) -> bool {
        lock(&self.members)
            .iter()
            .any(|m| m.events.contains(&event))
    }

    pub fn members(&self) -> Vec<MemberView> {
        lock(&self.members)
            .iter()
            .map(|m| MemberView {
                pid: m.pid,
                kind: m.kind,
                generation: m.acked.as_ref().map(|a| a.0),
                told: m.told,
                reseeded: m.acked.as_ref().map(|a| a.1.clone()),
            })
            .collect()
    }

    /// Accepts processes until the listener fails; each is served by a task of its own. A
    /// connection takes a slot before it is accepted: when every slot is taken (silent
    /// connections included, until their hello deadline) the rest wait in the socket's backlog,
    /// costing the agent neither a descriptor nor a wake-up.
    pub async fn serve(self: Arc<Self>, listener: UnixListener, current: Current) {
        loop {
            if self.slots.available_permits() == 0 && !self.full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    limit = self.cap,
                    "in-process reseed: too many processes; the rest wait their turn"
                );
            }
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                return;
            };
            let short = self.slots.available_permits() < self.cap / 4;
            self.pressure
                .send_if_modified(|p| std::mem::replace(p, short) != short);
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and friends: the process can retry later; a moment's pause keeps
                    // this from spinning.
                    tracing::warn!(error = %e, "in-process reseed: cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            tokio::spawn(conn::serve(self.clone(), stream, current.clone(), slot));
        }
    }

    fn join(
        &self,
        pid: i32,
        kind: Kind,
        events: Vec<&'static str>,
        orders: mpsc::UnboundedSender<Order>,
    ) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.members).push(Member {
            id,
            pid,
            kind,
            orders,
            events,
            told: None,
            acked: None,
        });
        tracing::debug!(
            pid,
            kind = kind.as_str(),
            "in-process reseed: a process joined"
        );
        id
    }

    /// A connection ended. A process still running that closes it does not take part any more
    /// (it may have closed every descriptor, as daemons do): remembered for `/status`.
    fn leave(&self, id: u64, pid: i32, kind: Kind, why: &'static str) {
        lock(&self.members).retain(|m| m.id != id);
        if alive(pid) {
            tracing::info!(
                pid,
                kind = kind.as_str(),
                why,
                "in-process reseed: a running process left; it does not take part"
            );
            let mut l = lock(&self.leavers);
            if l.len() == REMEMBERED_LEAVERS {
                l.pop_front();
            }
            l.push_back(Leaver { pid, kind, why });
        }
    }

    fn told(&self, id: u64, number: u64) {
        if let Some(m) = lock(&self.members).iter_mut().find(|m| m.id == id) {
            m.told = Some(number);
        }
    }

    fn acked(&self, id: u64, number: u64, what: &str) {
        if let Some(m) = lock(&self.members).iter_mut().find(|m| m.id == id) {
            m.acked = Some((number, what.to_string()));
        }
    }

    /// Tells every process of generation `number` and waits (until `deadline`) for them, each
    /// process in its own order and all at once (`tell`). `draw` gives each its own seed.
    pub async fn tell(
        &self,
        number: u64,
        draw: &(dyn Fn() -> Option<Seed> + Sync),
        deadline: Instant,
    ) -> Told {
        let mut targets = Vec::new();
        let mut unseeded = Vec::new();
        for (pid, kind, orders) in self.targets(|_| true) {
            match draw() {
                Some(seed) => targets.push(tell::Target {
                    pid,
                    kind,
                    orders,
                    seed,
                }),
                None => unseeded.push(format!("pid {pid} ({}): no seed", kind.as_str())),
            }
        }
        let mut told = tell::generation(number, targets, &self.latest, deadline).await;
        told.failed.extend(unseeded);
        told
    }

    /// Tells the processes that asked for `event` (`suspend`, `terminate`; the current
    /// generation is `number`) and waits (until `deadline`) for their acknowledgements.
    pub async fn tell_event(&self, event: &'static str, number: u64, deadline: Instant) -> Told {
        let targets = self.targets(|m| m.events.contains(&event));
        tell::event(event, number, targets, deadline).await
    }

    fn targets(
        &self,
        which: impl Fn(&Member) -> bool,
    ) -> Vec<(i32, Kind, mpsc::UnboundedSender<Order>)> {
        lock(&self.members)
            .iter()
            .filter(|m| which(m))
            .map(|m| (m.pid, m.kind, m.orders.clone()))
            .collect()
    }
}

/// Whether `pid` is a running process (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    !matches!(proc_state(pid), None | Some('Z') | Some('X'))
}

/// The state letter of `/proc/<pid>/stat` (after the command's closing parenthesis).
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}
