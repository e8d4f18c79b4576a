//! One process's connection: `MVA1 hello <kind> <pid> [events]`, then for each generation
//! `MVA1 generation <n> <64 hex>` (for an event it asked for, `MVA1 event <name> <n>`) and its
//! `MVA1 ack <n> <what>` or `MVA1 fail <n> <reason>` (`inproc/PROTOCOL.md`).
//!
//! The socket is the agent's, not the app's to exhaust: a connection holds one of the
//! registry's slots from before it is accepted until it ends; it must say hello within
//! `HELLO_DEADLINE` (`HELLO_UNDER_PRESSURE` when the slots run short); lines are at most `MAX_LINE` bytes; and after the hello a process may only
//! answer what it was sent (one line per order): an unsolicited line, a longer one, or one that is
//! not the protocol's ends the connection. So a process costs the agent's one thread at most one
//! line per order, however it behaves. An idle connection has no timer.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::{
    Current, InProc, Kind, Order, Payload, Seed, EVENTS, HELLO_DEADLINE, HELLO_UNDER_PRESSURE,
};

const MAX_LINE: usize = 256;

pub(super) async fn serve(
    registry: Arc<InProc>,
    stream: UnixStream,
    current: Current,
    _slot: OwnedSemaphorePermit,
) {
    // The kernel's word for who connected; the hello's pid is only the process's own.
    let peer_pid = stream.peer_cred().ok().and_then(|c| c.pid());
    let (mut rd, mut wr) = stream.into_split();
    let mut lines = Lines::default();
    let accepted = tokio::time::Instant::now();
    let mut pressure = registry.pressure.subscribe();
    let hello = loop {
        let limit = if *pressure.borrow_and_update() {
            HELLO_UNDER_PRESSURE
        } else {
            HELLO_DEADLINE
        };
        tokio::select! {
            line = lines.next(&mut rd) => break line,
            Ok(()) = pressure.changed() => continue,
            () = tokio::time::sleep_until(accepted + limit) => break None,
        }
    };
    let Some(hello) = hello else {
        tracing::debug!("in-process reseed: no hello (in time); disconnected");
        return;
    };
    let Some(Hello {
        kind,
        pid: said_pid,
        events,
        deadlines,
        says_holding,
    }) = parse_hello(&hello)
    else {
        tracing::debug!("in-process reseed: not a hello; disconnected");
        return;
    };
    let pid = peer_pid.unwrap_or(said_pid);
    let (orders_tx, mut orders) = mpsc::unbounded_channel::<Order>();
    let id = registry.join(pid, kind, events, orders_tx);
    let mut talk = Talk {
        owed: 0,
        pending: None,
        says_holding,
        holding: !says_holding,
    };

    // A process that starts after the generation was made gets it now: its own generators
    // were seeded in this clone, but from a kernel that may not have been reseeded. (Nobody
    // waits for this one; its acknowledgement still goes to the registry.)
    if let Some((number, seed)) = current() {
        if send(&mut wr, number, &Payload::Generation(seed), None)
            .await
            .is_err()
        {
            registry.leave(id, pid, kind, "closed its connection");
            return;
        }
        registry.told(id, number);
        talk.owed += 1;
    }
    let why = loop {
        tokio::select! {
            order = orders.recv() => {
                let Some(order) = order else { break "the agent let it go" };
                if !talk.holding && matches!(order.what, Payload::Generation(_)) {
                    // Whatever it wrote before this order is in the socket now: its native
                    // helper's acknowledgement (which this order waited for) was sent after
                    // any draw from the OpenSSL it reseeded, and "holding" is written before
                    // the draw. So a draw of stale bytes is seen here, without waiting.
                    let mut bad = None;
                    while let Some(line) = lines.try_next(&rd) {
                        if let Err(why) = talk.line(&registry, id, &line) {
                            bad = Some(why);
                            break;
                        }
                    }
                    if let Some(why) = bad {
                        break why;
                    }
                    if !talk.holding {
                        registry.told(id, order.number);
                        registry.acked(id, order.number, "idle");
                        let _ = order.reply.send(Ok(()));
                        continue;
                    }
                }
                let deadline = deadlines.then_some(order.deadline);
                if send(&mut wr, order.number, &order.what, deadline).await.is_err() {
                    break "closed its connection";
                }
                if matches!(order.what, Payload::Generation(_)) {
                    registry.told(id, order.number);
                }
                talk.owed = talk.owed.saturating_add(1);
                talk.pending = Some((order.number, order.reply));
            }
            line = lines.next(&mut rd) => {
                let Some(line) = line else { break "closed its connection" };
                if let Err(why) = talk.line(&registry, id, &line) {
                    break why;
                }
            }
        }
    };
    registry.leave(id, pid, kind, why);
    tracing::debug!(
        pid,
        kind = kind.as_str(),
        why,
        "in-process reseed: a process left"
    );
}

/// Where one conversation stands.
struct Talk {
    /// Answers this process still owes: one per line we sent. Anything beyond is unsolicited.
    owed: u32,
    /// The order being waited for. A newer one replaces it: dropping the older reply tells its
    /// waiter the process moved on, which is not a failure of that generation.
    pending: Option<(u64, tokio::sync::oneshot::Sender<Result<(), String>>)>,
    /// Whether it has the feature `holding`: it says when it starts to hold something a
    /// generation must reset (its first draw after a reset, written before the draw itself),
    /// and until then a generation has nothing to do there: it is not woken.
    says_holding: bool,
    /// Whether a generation must be sent to it (always, without the feature).
    holding: bool,
}

impl Talk {
    /// One line from the process: an answer it owes, or (with `holding`) that it holds
    /// something now. `Err`: why the connection ends.
    fn line(&mut self, registry: &InProc, id: u64, line: &str) -> Result<(), &'static str> {
        if self.says_holding && line == "MVA1 holding" {
            if self.holding {
                return Err("sent a line it was not asked for");
            }
            self.holding = true;
            return Ok(());
        }
        let Some((number, answer)) = parse_answer(line) else {
            return Err("sent a line that is not the protocol's");
        };
        if self.owed == 0 {
            return Err("sent a line it was not asked for");
        }
        self.owed -= 1;
        if let Ok(what) = &answer {
            registry.acked(id, number, what);
            // Its reset is done: whatever it says after this is new.
            self.holding = !self.says_holding;
        }
        if self.pending.as_ref().is_some_and(|(n, _)| *n == number) {
            if let Some((_, reply)) = self.pending.take() {
                let _ = reply.send(answer.map(drop).map_err(str::to_string));
            }
        }
        Ok(())
    }
}

/// One order's line; with `deadline` (a process that asked for it), the milliseconds left until
/// the hook stops waiting as a last word (0 once it has passed).
async fn send(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    number: u64,
    what: &Payload,
    deadline: Option<tokio::time::Instant>,
) -> std::io::Result<()> {
    let mut line = match what {
        Payload::Generation(seed) => generation_line(number, seed),
        Payload::Event(name) => zeroize::Zeroizing::new(format!("MVA1 event {name} {number}")),
    };
    if let Some(deadline) = deadline {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        line.push_str(&format!(" {}", left.as_millis()));
    }
    line.push('\n');
    debug_assert!(
        line.len() <= MAX_LINE,
        "a line of ours within the protocol's limit"
    );
    wr.write_all(line.as_bytes()).await
}

/// `MVA1 generation <n> <64 hex>`, without its end of line, in a buffer with room for the whole
/// line: a `String` that grows moves its bytes and frees the old buffer unwiped, and these are
/// the process's seed.
fn generation_line(number: u64, seed: &Seed) -> zeroize::Zeroizing<String> {
    let mut line = zeroize::Zeroizing::new(String::with_capacity(MAX_LINE));
    line.push_str(&format!("MVA1 generation {number} "));
    for b in seed.iter() {
        line.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        line.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
    }
    line
}

/// What a process said in its hello.
#[derive(Debug, PartialEq, Eq)]
struct Hello {
    kind: Kind,
    pid: i32,
    /// The events without a generation it asked to hear of.
    events: Vec<&'static str>,
    /// Whether its lines should carry the milliseconds left (the feature `deadline`).
    deadlines: bool,
    /// Whether it says when it holds something a generation must reset (the feature
    /// `holding`), and is otherwise left asleep.
    says_holding: bool,
}

/// `MVA1 hello <kind> <pid> [<events> [<features>]]`, both comma-separated lists (`-` for none):
/// unknown names are ignored (a newer library may know more than this agent; an older agent
/// ignores the features word, so a library that asks for deadlines still works with it).
fn parse_hello(line: &str) -> Option<Hello> {
    let mut words = line.strip_prefix("MVA1 hello ")?.split(' ');
    let kind = Kind::parse(words.next()?)?;
    let pid = words.next()?.parse().ok()?;
    let events = words
        .next()
        .map(|list| {
            EVENTS
                .iter()
                .copied()
                .filter(|e| list.split(',').any(|w| w == *e))
                .collect()
        })
        .unwrap_or_default();
    let features: Vec<&str> = words
        .next()
        .map(|l| l.split(',').collect())
        .unwrap_or_default();
    Some(Hello {
        kind,
        pid,
        events,
        deadlines: features.contains(&"deadline"),
        says_holding: features.contains(&"holding"),
    })
}

/// `MVA1 ack <n> <what>` or `MVA1 fail <n> <reason>`.
fn parse_answer(line: &str) -> Option<(u64, Result<&str, &str>)> {
    let (rest, ok) = match line.strip_prefix("MVA1 ack ") {
        Some(rest) => (rest, true),
        None => (line.strip_prefix("MVA1 fail ")?, false),
    };
    let (number, what) = rest.split_once(' ').unwrap_or((rest, ""));
    let number = number.parse().ok()?;
    Some((number, if ok { Ok(what) } else { Err(what) }))
}

/// Bounded line reading: whole lines out, at most `MAX_LINE` bytes each, UTF-8 only.
#[derive(Default)]
struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    /// The next line; `None` at the end, on an error, or when a line is too long or not text.
    /// Cancel-safe: bytes read stay in `buf` for the next call.
    async fn next(&mut self, rd: &mut tokio::net::unix::OwnedReadHalf) -> Option<String> {
        loop {
            let room = match self.ready() {
                Ok(line) => return line,
                Err(room) => room,
            };
            let mut chunk = [0u8; MAX_LINE];
            match rd.read(&mut chunk[..room]).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next line already in the socket, without waiting: `None` when there is no whole
    /// line yet (or a bad one: `next` then says so). It asks the kernel, not the runtime: the
    /// runtime learns that a socket is readable only when it next polls, which may be after
    /// this task runs (`try_read` would say "would block" with the bytes there).
    fn try_next(&mut self, rd: &tokio::net::unix::OwnedReadHalf) -> Option<String> {
        use std::os::fd::AsRawFd;
        let fd = rd.as_ref().as_raw_fd();
        loop {
            let room = match self.ready() {
                Ok(line) => return line,
                Err(room) => room,
            };
            let mut chunk = [0u8; MAX_LINE];
            // SAFETY: `fd` is this connection's socket, open while `rd` lives; the buffer is ours
            // and `room` bytes long. A spurious readiness this leaves the runtime is harmless:
            // its next read sees "would block" and waits again.
            let n = unsafe { libc::recv(fd, chunk.as_mut_ptr().cast(), room, libc::MSG_DONTWAIT) };
            match usize::try_from(n) {
                Ok(n) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// `Ok`: a whole line from `buf` (`None`: one that is not text, or more than `MAX_LINE`
    /// bytes without an end); `Err`: how many more bytes may be read to find one.
    fn ready(&mut self) -> Result<Option<String>, usize> {
        if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            return Ok(String::from_utf8(line[..end].to_vec()).ok());
        }
        if self.buf.len() >= MAX_LINE {
            return Ok(None);
        }
        Err(MAX_LINE - self.buf.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The race `holding` must win: the process says "holding" (it drew, maybe before its
    /// OpenSSL was reseeded) just as the order arrives. Both are ready when the connection's
    /// task wakes, and it may take the order first: it must still see the line and tell the
    /// process. (Without the read of what is already in the socket, about half of these
    /// rounds skip the process.)
    #[tokio::test(flavor = "current_thread")]
    async fn a_holding_line_already_in_the_socket_is_seen_before_an_order_is_skipped() {
        for round in 0..40 {
            let registry = Arc::new(InProc::default());
            let (ours, mut theirs) = UnixStream::pair().unwrap();
            let slot = registry.slots.clone().try_acquire_owned().unwrap();
            let current: Current = Arc::new(|| None);
            tokio::spawn(serve(registry.clone(), ours, current, slot));
            theirs
                .write_all(b"MVA1 hello node 1 - holding\n")
                .await
                .unwrap();
            while registry.members().is_empty() {
                tokio::task::yield_now().await;
            }
            // The line and the order, with no chance for the connection's task to run between.
            assert_eq!(theirs.try_write(b"MVA1 holding\n").unwrap(), 13);
            let (reply, _answer) = tokio::sync::oneshot::channel();
            let orders = crate::sys::lock(&registry.members)[0].orders.clone();
            let order = Order {
                number: 1,
                what: Payload::Generation(zeroize::Zeroizing::new([7; 32])),
                deadline: tokio::time::Instant::now() + std::time::Duration::from_secs(5),
                reply,
            };
            assert!(orders.send(order).is_ok());
            let mut got = [0u8; 17];
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                theirs.read_exact(&mut got),
            )
            .await;
            assert!(
                matches!(read, Ok(Ok(_))) && got == *b"MVA1 generation 1",
                "round {round}: the process was not told"
            );
        }
    }

    #[test]
    fn a_generation_line_is_built_where_it_stays() {
        // The longest line ours can be, with a deadline of many digits: the buffer never grew
        // (a grown String leaves the seed's hex behind in a freed buffer).
        let mut line = generation_line(u64::MAX, &zeroize::Zeroizing::new([0xab; 32]));
        let cap = line.capacity();
        line.push_str(&format!(" {}\n", u128::MAX));
        assert!(line.len() <= MAX_LINE, "{}", line.len());
        assert_eq!(line.capacity(), cap);
        assert_eq!(cap, MAX_LINE);
    }

    #[test]
    fn parses_the_protocol_lines() {
        let hello = |kind, events: &[&'static str], deadlines| {
            Some(Hello {
                kind,
                pid: 12,
                events: events.to_vec(),
                deadlines,
                says_holding: false,
            })
        };
        assert!(parse_hello("MVA1 hello node 12 - holding").is_some_and(|h| h.says_holding));
        assert_eq!(
            parse_hello("MVA1 hello native 12"),
            hello(Kind::Native, &[], false)
        );
        assert_eq!(
            parse_hello("MVA1 hello app 12 terminate,suspend,reboot"),
            hello(Kind::App, &["suspend", "terminate"], false)
        );
        assert_eq!(
            parse_hello("MVA1 hello app 12 - colour,deadline"),
            hello(Kind::App, &[], true)
        );
        assert_eq!(
            parse_hello("MVA1 hello app 12 suspend deadlines"),
            hello(Kind::App, &["suspend"], false)
        );
        assert_eq!(parse_hello("MVA1 hello ruby 12"), None);
        assert_eq!(parse_hello("MVA2 hello native 12"), None);
        assert_eq!(
            parse_answer("MVA1 ack 3 openssl=1"),
            Some((3, Ok("openssl=1")))
        );
        assert_eq!(parse_answer("MVA1 ack 3"), Some((3, Ok(""))));
        assert_eq!(
            parse_answer("MVA1 fail 3 ValueError: boom"),
            Some((3, Err("ValueError: boom")))
        );
        assert_eq!(parse_answer("MVA1 ack x"), None);
    }
}
