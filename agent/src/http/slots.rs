//! The hook port's table of connections: every socket the agent holds for a client, a hard cap
//! derived from the descriptor limit, and who is closed first when the table is full.
//!
//! On the platform `RLIMIT_NOFILE` is 1024 (hard). Every connection is a descriptor, and so is
//! everything the hooks themselves open (state files, `/dev/urandom`, the app's notify
//! connection, a helper's pipes). So the table counts *every* socket it holds, those being closed
//! too, and stays [`RESERVED_FDS`] below the limit: a flood through the public endpoint can fill
//! the table, never the descriptor table.
//!
//! When the table is full, a new connection is always admitted (it may be the platform's) and
//! one already in the table goes, chosen by what it is doing ([`Rank`]): one that is being closed
//! already, then one that has nothing in progress (no request yet, a body still arriving, its
//! answer sent), then one that waits (a long-poll, `/status`, a hook called through the public
//! endpoint), and the platform's own hooks last; the oldest first within a rank (so the newest
//! connection, which may be the platform's with its request on the way, goes last of its rank). Nothing in
//! progress is closed at once; one that waits is told to finish (a long-poll answers with the
//! current generation) and gets a short grace. A hook's *work* never depends on its connection
//! (`http::routes`): closing one only loses an answer nobody is waiting for.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::AbortHandle;

/// Live connections at the most (the platform needs a handful).
pub const MAX_CONNECTIONS: usize = 512;
/// Descriptors kept free for the hooks' own work, below the limit.
pub const RESERVED_FDS: usize = 256;

/// What a connection is doing, in the order in which a full table closes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Rank {
    /// Nothing in progress: no request yet, a body still arriving, or its answer sent. One rank,
    /// oldest first: a connection that has just been made (maybe the platform's, its request on
    /// the way) is never cut before one that has stalled for longer.
    Nothing = 0,
    /// A long-poll, `/status`, or anything called through the public endpoint.
    Waiting = 1,
    /// One of the six hooks, called from the VM (the platform).
    Hook = 2,
}

/// A connection's [`Rank`], shared by its table entry and its requests.
#[derive(Clone, Debug, Default)]
pub struct Stage(Arc<AtomicU8>);

impl Stage {
    pub fn set(&self, rank: Rank) {
        self.0.store(rank as u8, Ordering::Relaxed);
    }

    pub fn get(&self) -> Rank {
        match self.0.load(Ordering::Relaxed) {
            0 => Rank::Nothing,
            1 => Rank::Waiting,
            _ => Rank::Hook,
        }
    }
}

/// The long-polls (`GET /generation?after=N`) waiting at once, capped below the table: half of
/// it. Past the cap a poll is answered at once (503, `Retry-After`) instead of taking a place, so
/// that however many workers poll, and however they reconnect, the table keeps room for the
/// platform's hooks. (Without a cap of their own, 1,200 pollers reconnecting at once filled the
/// table, each eviction brought its poller straight back, and the hooks' connections were cut
/// before their requests were read.)
#[derive(Debug)]
pub struct LongPolls {
    waiting: std::sync::atomic::AtomicUsize,
    cap: usize,
}

impl LongPolls {
    pub fn for_table(table_cap: usize) -> LongPolls {
        LongPolls {
            waiting: Default::default(),
            cap: (table_cap / 2).max(1),
        }
    }

    /// A place for one long-poll, given back when the guard drops; `None` at the cap.
    pub fn enter(self: &Arc<Self>) -> Option<LongPoll> {
        let mut now = self.waiting.load(Ordering::Relaxed);
        loop {
            if now >= self.cap {
                return None;
            }
            match self.waiting.compare_exchange_weak(
                now,
                now + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(LongPoll(self.clone())),
                Err(seen) => now = seen,
            }
        }
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub fn cap(&self) -> usize {
        self.cap
    }
}

/// One long-poll's place.
pub struct LongPoll(Arc<LongPolls>);

impl Drop for LongPoll {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How the table closes a connection gracefully: its task and its long-polls watch this.
pub type Close = Arc<watch::Sender<bool>>;

struct Entry {
    id: u64,
    stage: Stage,
    close: Close,
    abort: Option<AbortHandle>,
    /// Told to close (with a grace), or aborted: counted until its socket is gone.
    closing: bool,
    aborted: bool,
}

/// A new connection's place in the table.
pub struct Admitted {
    pub id: u64,
    pub stage: Stage,
    pub close: Close,
    /// A connection was closed at once to make room: let the runtime drop it before accepting
    /// more, so that its descriptor is free again.
    pub cut: bool,
}

pub struct Slots {
    next: u64,
    cap: usize,
    live: VecDeque<Entry>,
}

impl Slots {
    /// A table for a process whose descriptor limit is `nofile`.
    pub fn new(nofile: usize) -> Slots {
        Slots {
            next: 0,
            cap: MAX_CONNECTIONS
                .min(nofile.saturating_sub(RESERVED_FDS))
                .max(8),
            live: VecDeque::new(),
        }
    }

    /// The cap, for `/status` and tests.
    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Registers a new connection, making room first when the table is full.
    pub fn admit(&mut self) -> Admitted {
        let cut = self.live.len() >= self.cap && self.make_room();
        self.next += 1;
        let stage = Stage::default();
        let close: Close = Arc::new(watch::channel(false).0);
        self.live.push_back(Entry {
            id: self.next,
            stage: stage.clone(),
            close: close.clone(),
            abort: None,
            closing: false,
            aborted: false,
        });
        Admitted {
            id: self.next,
            stage,
            close,
            cut,
        }
    }

    /// Closes the connection that matters least; true when it was cut at once.
    fn make_room(&mut self) -> bool {
        let victim = self
            .live
            .iter_mut()
            .filter(|e| !e.aborted)
            .min_by_key(|e| (!e.closing, e.stage.get()));
        let Some(v) = victim else { return false };
        if v.closing || v.stage.get() <= Rank::Nothing {
            if let Some(abort) = &v.abort {
                abort.abort();
            }
            v.aborted = true;
            true
        } else {
            tracing::debug!("connection table full: closing the oldest waiting connection");
            v.close.send_replace(true);
            v.closing = true;
            false
        }
    }

    /// The connection's task, so that a full table can cut it.
    pub fn set_abort(&mut self, id: u64, abort: AbortHandle) {
        if let Some(e) = self.live.iter_mut().find(|e| e.id == id) {
            e.abort = Some(abort);
        }
    }

    /// Tells every connection to finish (the agent is on its way out).
    pub fn close_all(&self) {
        for e in &self.live {
            e.close.send_replace(true);
        }
    }

    pub fn remove(&mut self, id: u64) {
        if let Some(i) = self.live.iter().position(|e| e.id == id) {
            self.live.remove(i);
        }
    }
}

/// The hook port's shared bookkeeping: its connection table and its long-polls.
pub struct Port {
    pub slots: Mutex<Slots>,
    pub long_polls: Arc<LongPolls>,
}

impl Port {
    pub fn new(nofile: usize) -> Arc<Port> {
        let slots = Slots::new(nofile);
        let long_polls = Arc::new(LongPolls::for_table(slots.cap()));
        Arc::new(Port {
            slots: Mutex::new(slots),
            long_polls,
        })
    }

    /// For `/status`: what the port holds against its caps.
    pub fn json(&self) -> serde_json::Value {
        let slots = crate::sys::lock(&self.slots);
        serde_json::json!({
            "connections": slots.len(),
            "connection_cap": slots.cap(),
            "long_polls": self.long_polls.waiting(),
            "long_poll_cap": self.long_polls.cap(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_polls_have_a_cap_of_their_own_and_give_their_place_back() {
        let polls = Arc::new(LongPolls::for_table(Slots::new(1024).cap()));
        assert_eq!(polls.cap(), 256);
        let held: Vec<LongPoll> = (0..256).map(|_| polls.enter().unwrap()).collect();
        assert!(polls.enter().is_none(), "the 257th is answered at once");
        drop(held);
        assert_eq!(polls.waiting(), 0);
        assert!(polls.enter().is_some());
    }

    #[test]
    fn the_cap_keeps_descriptors_for_the_hooks() {
        assert_eq!(Slots::new(1024).cap(), 512);
        assert_eq!(Slots::new(600).cap(), 344);
        assert_eq!(Slots::new(1 << 20).cap(), MAX_CONNECTIONS);
    }

    #[tokio::test]
    async fn a_full_table_closes_what_matters_least_and_the_platforms_hooks_last() {
        let mut t = Slots::new(RESERVED_FDS + 8);
        let mut e: Vec<Admitted> = (0..8).map(|_| t.admit()).collect();
        // 0: the platform's hook; 1-3: long-polls; 4: a body still arriving; 5-7: idle.
        e[0].stage.set(Rank::Hook);
        for w in &e[1..4] {
            w.stage.set(Rank::Waiting);
        }
        let aborted = |t: &Slots, id: u64| t.live.iter().any(|x| x.id == id && x.aborted);
        // Those with nothing in progress go first, oldest first: the stalled body before the
        // idle ones that came after it; each cut at once. (The newcomers are hooks here.)
        for victim in [4, 5, 6, 7] {
            let n = t.admit();
            assert!(n.cut, "cut at once");
            assert!(aborted(&t, e[victim].id), "{victim} is the one cut");
            n.stage.set(Rank::Hook);
            e.push(n);
        }
        // Only waiting ones and hooks are left: the oldest long-poll is told to finish, not cut.
        let n = t.admit();
        n.stage.set(Rank::Hook);
        assert!(!n.cut);
        assert!(
            *e[1].close.subscribe().borrow(),
            "the oldest long-poll closes"
        );
        assert!(
            !*e[0].close.subscribe().borrow(),
            "the platform's hook does not"
        );
        // A connection that is closing already is the next to go, at once.
        assert!(t.admit().cut);
        assert!(aborted(&t, e[1].id));
        // The platform's hook is never chosen while anything else is left.
        for _ in 0..4 {
            t.admit().stage.set(Rank::Hook);
        }
        assert!(!aborted(&t, e[0].id) && !*e[0].close.subscribe().borrow());
    }
}
