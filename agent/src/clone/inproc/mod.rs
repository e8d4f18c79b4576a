//! In-process reseeding: the agent's side of the helpers that run inside the app's processes
//! (`inproc/`: a preloaded library for every OpenSSL, Python's `sitecustomize`, Node's
//! `--require`). The contract between the two sides is `inproc/PROTOCOL.md`.
//!
//! - `setup`: at start, writes the helpers (embedded in this binary) read-only under
//!   `<state_dir>/inproc/` and makes the app's environment load them; binds the socket.
//! - `conn`: one task per connected process: its registration, the generations it is sent and
//!   its acknowledgements.
//! - here: the registry, and [`InProc::tell`], which a new generation waits on: every native
//!   helper first (OpenSSL), then every runtime helper (whose language generators may draw from
//!   OpenSSL), then the app's own callbacks (the client libraries, `clients/`: they may draw from
//!   both), each acknowledging within the hook's budget; and [`InProc::tell_event`] for
//!   `/suspend` and `/terminate`, to the processes that asked for them.

mod conn;
pub mod setup;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::sys::lock;

/// At most this many processes take part at once; more are refused (said once).
pub const MAX_MEMBERS: usize = 256;

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
    /// A client library (`clients/`): the app's own callbacks.
    App,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        match s {
            "native" => Some(Kind::Native),
            "python" => Some(Kind::Python),
            "node" => Some(Kind::Node),
            "app" => Some(Kind::App),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Native => "native",
            Kind::Python => "python",
            Kind::Node => "node",
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
    /// The last generation it acknowledged, and what it said.
    acked: Option<(u64, String)>,
}

/// What `/status` shows of one process.
#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    pub pid: i32,
    pub kind: Kind,
    pub generation: Option<u64>,
    pub reseeded: Option<String>,
}

#[derive(Default)]
pub struct InProc {
    members: Mutex<Vec<Member>>,
    next_id: AtomicU64,
    /// Set once the registry was full and a process was refused (said once).
    refused: std::sync::atomic::AtomicBool,
    /// What was arranged for the app at start (for `/status` and the log).
    pub setup: std::sync::OnceLock<setup::Arranged>,
}

impl InProc {
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
                reseeded: m.acked.as_ref().map(|a| a.1.clone()),
            })
            .collect()
    }

    /// Accepts processes until the listener fails; each is served by a task of its own.
    pub async fn serve(self: Arc<Self>, listener: UnixListener, current: Current) {
        loop {
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
            if lock(&self.members).len() >= MAX_MEMBERS {
                if !self.refused.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        limit = MAX_MEMBERS,
                        "in-process reseed: too many processes; refusing the rest"
                    );
                }
                continue;
            }
            tokio::spawn(conn::serve(self.clone(), stream, current.clone()));
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
            acked: None,
        });
        tracing::debug!(
            pid,
            kind = kind.as_str(),
            "in-process reseed: a process joined"
        );
        id
    }

    fn leave(&self, id: u64) {
        lock(&self.members).retain(|m| m.id != id);
    }

    fn acked(&self, id: u64, number: u64, what: &str) {
        if let Some(m) = lock(&self.members).iter_mut().find(|m| m.id == id) {
            m.acked = Some((number, what.to_string()));
        }
    }

    /// Tells every process of generation `number` and waits (until `deadline`) for each to
    /// acknowledge: native helpers first, then the runtimes', then the app's callbacks. `draw`
    /// gives each its own seed. Returns the processes that did not acknowledge, in words
    /// (`pid 12 (native) ...`).
    pub async fn tell(
        &self,
        number: u64,
        draw: &(dyn Fn() -> Option<Seed> + Sync),
        deadline: Instant,
    ) -> Vec<String> {
        let mut missing = Vec::new();
        let phases: [&[Kind]; 3] = [&[Kind::Native], &[Kind::Python, Kind::Node], &[Kind::App]];
        for phase in phases {
            let targets = self.targets(|m| phase.contains(&m.kind));
            let mut waiting = Vec::new();
            for (pid, kind, orders) in targets {
                let Some(seed) = draw() else {
                    missing.push(format!("pid {pid} ({}): no seed", kind.as_str()));
                    continue;
                };
                waiting.extend(order(pid, kind, &orders, number, Payload::Generation(seed)));
            }
            let what = format!("generation {number}");
            missing.extend(wait_all(waiting, &what, deadline).await);
        }
        missing
    }

    /// Tells the processes that asked for `event` (`suspend`, `terminate`; the current
    /// generation is `number`) and waits (until `deadline`) for their acknowledgements.
    pub async fn tell_event(
        &self,
        event: &'static str,
        number: u64,
        deadline: Instant,
    ) -> Vec<String> {
        let waiting: Vec<_> = self
            .targets(|m| m.events.contains(&event))
            .into_iter()
            .flat_map(|(pid, kind, orders)| {
                order(pid, kind, &orders, number, Payload::Event(event))
            })
            .collect();
        wait_all(waiting, event, deadline).await
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

type Waiting = (i32, Kind, oneshot::Receiver<Result<(), String>>);

fn order(
    pid: i32,
    kind: Kind,
    orders: &mpsc::UnboundedSender<Order>,
    number: u64,
    what: Payload,
) -> Option<Waiting> {
    let (reply, answer) = oneshot::channel();
    orders
        .send(Order {
            number,
            what,
            reply,
        })
        .ok()
        .map(|()| (pid, kind, answer))
}

/// Waits for every answer until `deadline`; what failed or did not answer, in words.
async fn wait_all(waiting: Vec<Waiting>, what: &str, deadline: Instant) -> Vec<String> {
    let mut missing = Vec::new();
    for (pid, kind, answer) in waiting {
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(Err(reason))) => missing.push(format!(
                "pid {pid} ({}) failed {what}: {reason}",
                kind.as_str()
            )),
            // Acknowledged, or exited (its task ended): dropped, not a failure.
            Ok(_) => {}
            Err(_) => missing.push(format!(
                "pid {pid} ({}) did not acknowledge {what} in time",
                kind.as_str()
            )),
        }
    }
    missing
}
