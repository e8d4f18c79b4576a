//! Telling the app's processes of a new generation, and what the hook learns by its deadline.
//!
//! Each process is told in its own order: its native helper (OpenSSL) first, then its runtime's
//! helper (whose generators may draw from that OpenSSL), then the app's own callbacks (which may
//! draw from both). Processes do not wait for each other: one chain per process, all at once,
//! under the hook's one deadline. A chain is a task of its own, so that it goes on after the hook
//! has answered: a process that was busy (a Node event loop in synchronous code, a Python thread
//! waiting for the GIL, a VM still faulting its memory in after a restore) is still reseeded, as
//! soon as it can be, and its next phase is told then. A newer generation ends an older chain.
//!
//! The policy (`inproc/PROTOCOL.md`, "When a process is late"): the helpers are the agent's, not
//! the author's, so a helper that has not acknowledged by the deadline never fails the hook: it
//! is reported (`late`), with what its process was doing. The app's own callbacks (a client
//! library: the author's code, opted in) fail the `inproc` channel like any other channel when
//! they fail or are late, unless their process was never given time (an earlier phase of the
//! same process was still pending): that is reported, not blamed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Kind, Order, Payload, Seed};
use crate::sys::lock;

/// Where one process's helper or library stands in a generation.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Stand {
    /// An earlier phase of its process has not answered yet.
    NotTold,
    Told,
    Acknowledged,
    Failed(String),
    /// Its connection ended (or a newer generation replaced this one) before it answered.
    Dropped,
}

/// What the hook reports: failures of the app's own callbacks (the channel fails), and what is
/// only said (a helper still at work, a process that closed its connection).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Told {
    pub failed: Vec<String>,
    pub late: Vec<String>,
}

/// One member to tell: its process, its kind, its order queue and its seed.
pub(super) struct Target {
    pub pid: i32,
    pub kind: Kind,
    pub orders: mpsc::UnboundedSender<Order>,
    pub seed: Seed,
}

/// Tells every target of generation `number` (see the module's documentation) and waits until
/// every chain is done or `deadline`. `latest` is the newest generation told: a chain stops
/// before a phase once it has moved on.
pub(super) async fn generation(
    number: u64,
    targets: Vec<Target>,
    latest: &Arc<AtomicU64>,
    deadline: Instant,
) -> Told {
    latest.store(number, Ordering::SeqCst);
    let mut stands = Vec::new();
    let mut chains: BTreeMap<i32, Vec<(usize, Target)>> = BTreeMap::new();
    for t in targets {
        stands.push((t.pid, t.kind, Stand::NotTold));
        chains.entry(t.pid).or_default().push((stands.len() - 1, t));
    }
    let stands = Arc::new(Mutex::new(stands));
    let (done_tx, mut done) = mpsc::unbounded_channel::<()>();
    let count = chains.len();
    for (_, mut members) in chains {
        members.sort_by_key(|(_, t)| phase(t.kind));
        tokio::spawn(chain(
            number,
            deadline,
            members,
            latest.clone(),
            stands.clone(),
            done_tx.clone(),
        ));
    }
    drop(done_tx);
    for _ in 0..count {
        match tokio::time::timeout_at(deadline, done.recv()).await {
            Ok(Some(())) => {}
            _ => break,
        }
    }
    let what = format!("generation {number}");
    let stands = lock(&stands).clone();
    report(&stands, &what)
}

/// Tells the processes that asked for an event (`suspend`, `terminate`: only the app's own
/// callbacks ask) and waits until `deadline`. Their lateness is the author's: it fails.
pub(super) async fn event(
    event: &'static str,
    number: u64,
    targets: Vec<(i32, Kind, mpsc::UnboundedSender<Order>)>,
    deadline: Instant,
) -> Told {
    let mut stands = Vec::new();
    let mut waiting = Vec::new();
    for (pid, kind, orders) in targets {
        let (reply, answer) = oneshot::channel();
        let sent = orders.send(Order {
            number,
            what: Payload::Event(event),
            deadline,
            reply,
        });
        stands.push((
            pid,
            kind,
            if sent.is_ok() {
                Stand::Told
            } else {
                Stand::Dropped
            },
        ));
        waiting.push(answer);
    }
    for (i, answer) in waiting.into_iter().enumerate() {
        if stands[i].2 != Stand::Told {
            continue;
        }
        if let Ok(r) = tokio::time::timeout_at(deadline, answer).await {
            stands[i].2 = settle(r);
        }
    }
    report(&stands, event)
}

fn phase(kind: Kind) -> u8 {
    match kind {
        Kind::Native => 0,
        Kind::Python | Kind::Node | Kind::Java => 1,
        Kind::App => 2,
    }
}

fn settle(r: Result<Result<(), String>, oneshot::error::RecvError>) -> Stand {
    match r {
        Ok(Ok(())) => Stand::Acknowledged,
        Ok(Err(reason)) => Stand::Failed(reason),
        Err(_) => Stand::Dropped,
    }
}

type Stands = Arc<Mutex<Vec<(i32, Kind, Stand)>>>;

/// One process: its members phase by phase, each phase's members at once.
async fn chain(
    number: u64,
    deadline: Instant,
    members: Vec<(usize, Target)>,
    latest: Arc<AtomicU64>,
    stands: Stands,
    done: mpsc::UnboundedSender<()>,
) {
    let mut members = members.into_iter().peekable();
    while let Some((_, first)) = members.peek() {
        if latest.load(Ordering::SeqCst) != number {
            break; // a newer generation has its own chain
        }
        let p = phase(first.kind);
        let mut waiting = Vec::new();
        while let Some((i, t)) = members.next_if(|(_, t)| phase(t.kind) == p) {
            let (reply, answer) = oneshot::channel();
            let sent = t.orders.send(Order {
                number,
                what: Payload::Generation(t.seed),
                deadline,
                reply,
            });
            let stand = if sent.is_ok() {
                waiting.push((i, answer));
                Stand::Told
            } else {
                Stand::Dropped
            };
            lock(&stands)[i].2 = stand;
        }
        for (i, answer) in waiting {
            let stand = settle(answer.await);
            lock(&stands)[i].2 = stand;
        }
    }
    let _ = done.send(());
}

/// The hook's view at its deadline.
fn report(stands: &[(i32, Kind, Stand)], what: &str) -> Told {
    let mut told = Told::default();
    for (pid, kind, stand) in stands {
        let (pid, kind) = (*pid, *kind);
        let who = format!("pid {pid} ({})", kind.as_str());
        match stand {
            Stand::Acknowledged => {}
            Stand::Failed(reason) => told.failed.push(format!("{who} failed {what}: {reason}")),
            Stand::Told if kind == Kind::App => {
                told.failed.push(format!(
                    "{who} did not acknowledge {what} in time ({})",
                    doing(pid)
                ));
            }
            Stand::Told => told.late.push(format!(
                "{who} had not acknowledged {what} by the deadline ({}); its reseed goes on",
                doing(pid)
            )),
            Stand::NotTold => told.late.push(format!(
                "{who} not told {what} yet: an earlier helper of its process had not answered"
            )),
            Stand::Dropped if super::alive(pid) => told.late.push(format!(
                "{who} closed its connection before it acknowledged {what}: did not take part"
            )),
            Stand::Dropped => {} // exited: nothing of it is left to reseed
        }
    }
    told
}

/// What a process that has not answered is doing, from `/proc/<pid>/stat` (read for the late
/// ones only).
fn doing(pid: i32) -> &'static str {
    match super::proc_state(pid) {
        Some('T') | Some('t') => "stopped",
        Some('Z') | None => "exited",
        Some('D') => "waiting for I/O",
        Some(_) => "busy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn member(pid: i32, kind: Kind) -> (Target, mpsc::UnboundedReceiver<Order>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let t = Target {
            pid,
            kind,
            orders: tx,
            seed: Seed::default(),
        };
        (t, rx)
    }

    /// Answers every order after `delay` (or never, `None`), with `Ok`.
    fn answer(mut rx: mpsc::UnboundedReceiver<Order>, delay: Option<Duration>) {
        tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Some(o) = rx.recv().await {
                match delay {
                    Some(d) => {
                        tokio::time::sleep(d).await;
                        let _ = o.reply.send(Ok(()));
                    }
                    None => kept.push(o),
                }
            }
            // The sender went with its order (as the registry's would not): keep the replies
            // unanswered, not dropped.
            std::future::pending::<()>().await;
            drop(kept);
        });
    }

    #[tokio::test(start_paused = true)]
    async fn processes_do_not_wait_for_each_other_and_a_late_helper_is_reported_not_failed() {
        let me = std::process::id() as i32;
        let (slow, slow_rx) = member(me, Kind::Native);
        let (quick, quick_rx) = member(1, Kind::Native);
        let (quick_app, quick_app_rx) = member(1, Kind::App);
        answer(slow_rx, None);
        answer(quick_rx, Some(Duration::from_millis(10)));
        answer(quick_app_rx, Some(Duration::from_millis(10)));
        let start = Instant::now();
        let told = generation(
            1,
            vec![slow, quick, quick_app],
            &Arc::new(AtomicU64::new(0)),
            start + Duration::from_millis(900),
        )
        .await;
        assert!(told.failed.is_empty(), "{told:?}");
        assert_eq!(told.late.len(), 1, "{told:?}");
        assert!(
            told.late[0].starts_with(&format!("pid {me} (native)")),
            "{told:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_callback_fails_but_one_never_given_time_is_not_blamed() {
        let me = std::process::id() as i32;
        let (native, native_rx) = member(me, Kind::Native);
        let (app, app_rx) = member(me, Kind::App);
        answer(native_rx, None); // never answers: its process's callbacks are never told
        answer(app_rx, Some(Duration::from_millis(1)));
        let told = generation(
            1,
            vec![native, app],
            &Arc::new(AtomicU64::new(0)),
            Instant::now() + Duration::from_millis(900),
        )
        .await;
        assert!(told.failed.is_empty(), "{told:?}");
        assert!(
            told.late.iter().any(|l| l.contains("(app) not told")),
            "{told:?}"
        );

        let (app, app_rx) = member(me, Kind::App);
        answer(app_rx, None);
        let told = generation(
            2,
            vec![app],
            &Arc::new(AtomicU64::new(0)),
            Instant::now() + Duration::from_millis(900),
        )
        .await;
        assert_eq!(told.failed.len(), 1, "{told:?}");
        assert!(told.failed[0].contains("did not acknowledge generation 2 in time"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_chain_goes_on_after_the_deadline_and_stops_for_a_newer_generation() {
        let (native, mut native_rx) = member(1, Kind::Native);
        let (node, mut node_rx) = member(1, Kind::Node);
        let latest = Arc::new(AtomicU64::new(0));
        let told = generation(
            5,
            vec![native, node],
            &latest,
            Instant::now() + Duration::from_millis(900),
        )
        .await;
        assert_eq!(told.late.len(), 2, "{told:?}");
        // The native helper answers after the hook did: the Node helper is told then.
        let o = native_rx.recv().await.unwrap();
        o.reply.send(Ok(())).unwrap();
        let o = node_rx.recv().await.unwrap();
        assert_eq!(o.number, 5);
        // A newer generation: the old chain does not go on past its current phase.
        let (native, mut native_rx2) = member(2, Kind::Native);
        let (node, mut node_rx2) = member(2, Kind::Node);
        let deadline = Instant::now() + Duration::from_millis(900);
        let older = tokio::spawn({
            let latest = latest.clone();
            async move { generation(6, vec![native, node], &latest, deadline).await }
        });
        let first = native_rx2.recv().await.unwrap();
        latest.store(7, Ordering::SeqCst);
        first.reply.send(Ok(())).unwrap();
        let _ = older.await;
        assert!(
            node_rx2.try_recv().is_err(),
            "a superseded chain told its next phase"
        );
    }
}
