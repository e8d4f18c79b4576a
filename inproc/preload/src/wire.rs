//! The agent's side of the line protocol (`inproc/PROTOCOL.md`), without an allocator: one
//! connection, fixed buffers, ASCII lines.

use core::ffi::c_int;

use crate::libc::Libc;
use crate::owned::{identity, Identity};

const AF_UNIX: c_int = 1;
const SOCK_STREAM: c_int = 1;
/// The same value in glibc and musl, x86_64 and aarch64.
const SOCK_CLOEXEC: c_int = 0o2000000;

/// `struct sockaddr_un`.
#[repr(C)]
struct SockaddrUn {
    family: u16,
    path: [u8; 108],
}

const MSG_NOSIGNAL: c_int = 0x4000;

/// Connects to the agent's socket at `path` (NUL-terminated); `None` when it is not there.
/// Returns the descriptor and its identity.
pub fn connect(c: &Libc, path: &[u8; 108]) -> Option<(c_int, Identity)> {
    // SAFETY: plain system calls on a descriptor we own; the address is a complete sockaddr_un.
    unsafe {
        let fd = (c.socket)(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let addr = SockaddrUn {
            family: AF_UNIX as u16,
            path: *path,
        };
        let len = core::mem::size_of::<SockaddrUn>() as u32;
        let id = identity(c, fd);
        match id {
            Some(id) if (c.connect)(fd, &addr as *const SockaddrUn as *const _, len) == 0 => {
                Some((fd, id))
            }
            _ => {
                (c.close)(fd);
                None
            }
        }
    }
}

pub struct Generation {
    pub number: u64,
    pub seed: [u8; 32],
}

pub struct Conn<'a> {
    c: &'a Libc,
    fd: c_int,
    id: Identity,
    buf: [u8; 256],
    len: usize,
}

/// Why the conversation ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Gone {
    /// The agent closed, or the line was nonsense: our socket, ours to close.
    Closed,
    /// The descriptor is not our socket any more (the app closed it and reused the number):
    /// touch nothing.
    Taken,
}

impl<'a> Conn<'a> {
    pub fn new(c: &'a Libc, fd: c_int, id: Identity) -> Self {
        Conn {
            c,
            fd,
            id,
            buf: [0; 256],
            len: 0,
        }
    }

    /// Whether the call that just failed was interrupted by a signal. The OpenSSL helper's thread
    /// blocks every signal and never is; the Java one is a JVM thread, whose signal mask the JVM
    /// sets when it attaches (its suspend signal, SIGTERM and the like, handled with
    /// `SA_RESTART`, so this is for a handler installed without it).
    fn interrupted(&self) -> bool {
        const EINTR: c_int = 4;
        // SAFETY: the calling thread's errno location, valid for the thread's life.
        self.c
            .errno_location
            .is_some_and(|f| unsafe { *f() } == EINTR)
    }

    /// Checked before every receive and send.
    fn still_ours(&self) -> Result<(), Gone> {
        if identity(self.c, self.fd) == Some(self.id) {
            Ok(())
        } else {
            Err(Gone::Taken)
        }
    }

    /// `MVA1 hello <kind> <pid>`: `native` for OpenSSL, `java` for the Java agent (`jvm`).
    pub fn hello(&mut self, kind: &[u8], pid: c_int) -> Result<(), Gone> {
        let mut line = Line::new();
        line.push(b"MVA1 hello ");
        line.push(kind);
        line.push(b" ");
        line.number(pid as u64);
        line.push(b"\n");
        self.send(line.bytes())
    }

    pub fn ack(&mut self, number: u64, copies: u32) -> Result<(), Gone> {
        let mut line = Line::new();
        line.push(b"MVA1 ack ");
        line.number(number);
        line.push(b" openssl=");
        line.number(copies as u64);
        line.push(b"\n");
        self.send(line.bytes())
    }

    /// `MVA1 ack <n> <words>`, the words as a helper wrote them (the Java agent's); `none` for
    /// words that are not the protocol's (empty, too long, or other than `[a-z0-9.,=_-]`).
    pub fn ack_words(&mut self, number: u64, words: &[u8]) -> Result<(), Gone> {
        let valid = !words.is_empty()
            && words.len() <= 160
            && words.iter().all(
                |&b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b',' | b'=' | b'_' | b'-'),
            );
        let mut line = Line::new();
        line.push(b"MVA1 ack ");
        line.number(number);
        line.push(b" ");
        line.push(if valid { words } else { b"none" });
        line.push(b"\n");
        self.send(line.bytes())
    }

    fn send(&mut self, mut bytes: &[u8]) -> Result<(), Gone> {
        while !bytes.is_empty() {
            self.still_ours()?;
            // SAFETY: sends from a live slice on our own socket (checked just above); no SIGPIPE.
            let n = unsafe { (self.c.send)(self.fd, bytes.as_ptr(), bytes.len(), MSG_NOSIGNAL) };
            if n < 0 && self.interrupted() {
                continue;
            }
            if n <= 0 {
                return Err(Gone::Closed);
            }
            bytes = &bytes[n as usize..];
        }
        Ok(())
    }

    /// The next `MVA1 generation` line (lines that are not one are skipped); `Err` when the
    /// agent has gone or talks nonsense, or the descriptor is not ours any more.
    pub fn next_generation(&mut self) -> Result<Generation, Gone> {
        loop {
            if let Some(end) = self.buf[..self.len].iter().position(|&b| b == b'\n') {
                let parsed = parse(&self.buf[..end]);
                self.buf.copy_within(end + 1..self.len, 0);
                self.len -= end + 1;
                if let Some(g) = parsed {
                    return Ok(g);
                }
                continue;
            }
            if self.len == self.buf.len() {
                return Err(Gone::Closed);
            }
            self.still_ours()?;
            // SAFETY: receives into the free tail of our own buffer, from our own socket (checked
            // just above).
            let n = unsafe {
                (self.c.recv)(
                    self.fd,
                    self.buf.as_mut_ptr().add(self.len),
                    self.buf.len() - self.len,
                    0,
                )
            };
            if n < 0 && self.interrupted() {
                continue;
            }
            if n <= 0 {
                return Err(Gone::Closed);
            }
            // A receive that was already waiting when the app closed the number returns our
            // bytes; whether the number is still ours is checked again before the next use.
            self.len += n as usize;
        }
    }
}

/// The protocol's largest generation number, 2^53 - 1: every runtime's number holds it exactly.
const MAX_NUMBER: u64 = (1 << 53) - 1;

/// `MVA1 generation <n> <64 hex digits> [<ms>]` (the grammar of `inproc/PROTOCOL.md`, checked
/// against `testdata/lines.tsv`). We never ask for the deadline; a line with one is still ours.
pub fn parse(line: &[u8]) -> Option<Generation> {
    let rest = line.strip_prefix(b"MVA1 generation ")?;
    let mut words = rest.split(|&b| b == b' ');
    let (num, hex, ms) = (words.next()?, words.next()?, words.next());
    if words.next().is_some() || hex.len() != 64 {
        return None;
    }
    let number = decimal(num, 16).filter(|&n| n <= MAX_NUMBER)?;
    if let Some(ms) = ms {
        decimal(ms, 9)?;
    }
    let mut seed = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        seed[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(Generation { number, seed })
}

/// `0` or 1 to `max` ASCII digits without a leading zero.
fn decimal(digits: &[u8], max: usize) -> Option<u64> {
    if digits.is_empty() || digits.len() > max || (digits[0] == b'0' && digits.len() > 1) {
        return None;
    }
    let mut v = 0u64;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(d - b'0');
    }
    Some(v)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// A line being built, on the stack.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Line {
            buf: [0; 256],
            len: 0,
        }
    }
    fn push(&mut self, b: &[u8]) {
        let n = b.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
    }
    fn number(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        let tail = digits;
        self.push(&tail[i..]);
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conformance vectors every reader of the agent's lines passes (`testdata/`): a
    /// generation is read as one, with or without a deadline; everything else is not ours.
    #[test]
    fn reads_the_agents_lines_as_the_vectors_say() {
        let records = crate::testdata::vectors("lines.tsv");
        assert!(records.len() >= 20);
        for r in records {
            let line = crate::testdata::unhex(&r[0]);
            let got = parse(&line).map(|g| {
                let seed: String = g.seed.iter().map(|b| format!("{b:02x}")).collect();
                format!("generation {} {seed}", g.number)
            });
            let want = r[1]
                .starts_with("generation ")
                .then(|| r[1].rsplit_once(' ').unwrap().0.to_string());
            assert_eq!(got, want, "{}", String::from_utf8_lossy(&line));
        }
    }

    /// The hello names the helper's kind; an acknowledgement carries the Java agent's words only
    /// when they are the protocol's (the words come from Java code in the app's process).
    #[test]
    fn the_java_hello_and_its_words_are_the_protocols_lines() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let c = crate::libc::for_tests();
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        let mut conn = Conn::new(c, fd, identity(c, fd).unwrap());
        conn.hello(b"java", 42).unwrap();
        conn.ack_words(7, b"nativeprng,math.random").unwrap();
        conn.ack_words(8, b"").unwrap();
        conn.ack_words(9, b"x y\nMVA1 fail 9 oops").unwrap();
        conn.ack_words(10, &[b'a'; 161]).unwrap();
        drop(a);
        let mut got = String::new();
        b.read_to_string(&mut got).unwrap();
        assert_eq!(
            got,
            "MVA1 hello java 42\nMVA1 ack 7 nativeprng,math.random\nMVA1 ack 8 none\n\
             MVA1 ack 9 none\nMVA1 ack 10 none\n"
        );
    }

    #[test]
    fn lines_are_built_on_the_stack() {
        let mut l = Line::new();
        l.push(b"MVA1 ack ");
        l.number(0);
        l.push(b" ");
        l.number(u64::MAX);
        assert_eq!(l.bytes(), b"MVA1 ack 0 18446744073709551615");
    }
}
