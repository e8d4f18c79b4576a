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
    }) = parse_hello(&hello)
    else {
        tracing::debug!("in-process reseed: not a hello; disconnected");
        return;
    };
    let pid = peer_pid.unwrap_or(said_pid);
    let (orders_tx, mut orders) = mpsc::unbounded_channel::<Order>();
    let id = registry.join(pid, kind, events, orders_tx);
    // Answers this process still owes: one per line we sent. Anything beyond is unsolicited.
    let mut owed = 0u32;

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
        owed += 1;
    }
    // The order being waited for. A newer one replaces it: dropping the older reply tells its
    // waiter the process moved on, which is not a failure of that generation.
    let mut pending: Option<(u64, tokio::sync::oneshot::Sender<Result<(), String>>)> = None;
    let why = loop {
        tokio::select! {
            order = orders.recv() => {
                let Some(order) = order else { break "the agent let it go" };
                let deadline = deadlines.then_some(order.deadline);
                if send(&mut wr, order.number, &order.what, deadline).await.is_err() {
                    break "closed its connection";
                }
                if matches!(order.what, Payload::Generation(_)) {
                    registry.told(id, order.number);
                }
                owed = owed.saturating_add(1);
                pending = Some((order.number, order.reply));
            }
            line = lines.next(&mut rd) => {
                let Some(line) = line else { break "closed its connection" };
                let Some((number, answer)) = parse_answer(&line) else {
                    break "sent a line that is not the protocol's";
                };
                if owed == 0 {
                    break "sent a line it was not asked for";
                }
                owed -= 1;
                if let Ok(what) = &answer {
                    registry.acked(id, number, what);
                }
                if pending.as_ref().is_some_and(|(n, _)| *n == number) {
                    if let Some((_, reply)) = pending.take() {
                        let _ = reply.send(answer.map(drop).map_err(str::to_string));
                    }
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
    wr.write_all(line.as_bytes()).await
}

/// `MVA1 generation <n> <64 hex>`, without its end of line.
fn generation_line(number: u64, seed: &Seed) -> zeroize::Zeroizing<String> {
    let mut line = zeroize::Zeroizing::new(format!("MVA1 generation {number} "));
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
    let deadlines = words
        .next()
        .is_some_and(|list| list.split(',').any(|w| w == "deadline"));
    Some(Hello {
        kind,
        pid,
        events,
        deadlines,
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
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return String::from_utf8(line[..end].to_vec()).ok();
            }
            if self.buf.len() >= MAX_LINE {
                return None;
            }
            let mut chunk = [0u8; MAX_LINE];
            let room = MAX_LINE - self.buf.len();
            match rd.read(&mut chunk[..room]).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_protocol_lines() {
        let hello = |kind, events: &[&'static str], deadlines| {
            Some(Hello {
                kind,
                pid: 12,
                events: events.to_vec(),
                deadlines,
            })
        };
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
