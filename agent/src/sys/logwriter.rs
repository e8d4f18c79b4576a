//! The log's way to stderr, which must never block the one thread that answers the hooks.
//!
//! On the platform stderr is a pipe into a log pipeline the agent does not control; a reader that
//! stalls fills the pipe (64 KiB), and a blocking write would then stop every hook (measured:
//! `/ready` stopped answering after 383 requests; `/run` never answered). So lines are written
//! without blocking, on a descriptor of our own:
//! - a pipe or FIFO is opened again through `/proc/self/fd/2`, which gives the agent its own open
//!   file description, set `O_NONBLOCK` (setting it on fd 2 itself would change the app's stderr,
//!   which shares the description);
//! - a socket (journald's stdout stream) gets `send(MSG_DONTWAIT)`;
//! - a file, a terminal or `/dev/null` is written as it is (they do not stall for long).
//!
//! The bounded buffer is the pipe's own, plus at most the rest of one line that was cut short.
//! A line that cannot be written at once is dropped and counted: the count is in `/status`, and
//! the next line that gets through is preceded by one that says how many were lost.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Lines dropped since the agent started, for `/status`.
static DROPPED_TOTAL: AtomicU64 = AtomicU64::new(0);

pub fn dropped_total() -> u64 {
    DROPPED_TOTAL.load(Ordering::Relaxed)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Socket,
    Other,
}

/// Where log lines go, and what is left of the line that was cut short.
pub struct Sink {
    fd: RawFd,
    /// Our own descriptor when stderr was reopened (closed on drop).
    _own: Option<OwnedFd>,
    kind: Kind,
    json: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The unwritten rest of a line that was cut short: written before anything else.
    pending: Vec<u8>,
    /// Lines dropped since the last one that got through.
    dropped: u64,
}

impl Sink {
    /// The sink for stderr. `json`: the format of the "lines dropped" notice.
    pub fn stderr(json: bool) -> Sink {
        // SAFETY: a zeroed stat is a valid value for fstat to fill.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat fills the struct we own.
        let format = if unsafe { libc::fstat(2, &mut st) } == 0 {
            st.st_mode & libc::S_IFMT
        } else {
            0
        };
        let is = |mode: libc::mode_t| format == mode;
        if is(libc::S_IFSOCK) {
            return Sink::new(2, None, Kind::Socket, json);
        }
        if is(libc::S_IFIFO) {
            // SAFETY: open with a static NUL-terminated path; the descriptor is ours.
            let fd = unsafe {
                libc::open(
                    c"/proc/self/fd/2".as_ptr(),
                    libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: a descriptor we just opened and own alone.
                let own = unsafe { OwnedFd::from_raw_fd(fd) };
                return Sink::new(own.as_raw_fd(), Some(own), Kind::Other, json);
            }
        }
        Sink::new(2, None, Kind::Other, json)
    }

    fn new(fd: RawFd, own: Option<OwnedFd>, kind: Kind, json: bool) -> Sink {
        Sink {
            fd,
            _own: own,
            kind,
            json,
            state: Mutex::default(),
        }
    }

    /// Writes what it can of `buf` without blocking; `Ok(n)` bytes went out.
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: the buffer is valid for its length; the descriptor stays open while we live.
            let n = unsafe {
                match self.kind {
                    Kind::Socket => libc::send(
                        self.fd,
                        buf.as_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    ),
                    Kind::Other => libc::write(self.fd, buf.as_ptr().cast(), buf.len()),
                }
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Writes one whole line (ending in `\n`), or drops it and counts it.
    pub fn line(&self, line: &[u8]) {
        let mut st = crate::sys::lock(&self.state);
        if !st.pending.is_empty() {
            let pending = std::mem::take(&mut st.pending);
            match self.try_write(&pending) {
                Ok(n) => st.pending = pending[n..].to_vec(),
                Err(_) => st.pending = pending,
            }
            if !st.pending.is_empty() {
                return self.drop_line(&mut st);
            }
        }
        if st.dropped > 0 {
            let notice = self.notice(st.dropped);
            match self.try_write(&notice) {
                Ok(n) if n == notice.len() => st.dropped = 0,
                Ok(n) => {
                    st.dropped = 0;
                    st.pending = notice[n..].to_vec();
                    return self.drop_line(&mut st);
                }
                Err(_) => return self.drop_line(&mut st),
            }
        }
        match self.try_write(line) {
            Ok(n) if n == line.len() => {}
            Ok(0) | Err(_) => self.drop_line(&mut st),
            Ok(n) => st.pending = line[n..].to_vec(),
        }
    }

    fn drop_line(&self, st: &mut State) {
        st.dropped += 1;
        DROPPED_TOTAL.fetch_add(1, Ordering::Relaxed);
    }

    fn notice(&self, n: u64) -> Vec<u8> {
        let at = crate::sys::clock::rfc3339_now();
        let text = "log lines dropped: stderr was not being read";
        if self.json {
            format!("{{\"timestamp\":\"{at}\",\"level\":\"WARN\",\"message\":\"{text}\",\"dropped\":{n},\"target\":\"microvm_agent::logwriter\"}}\n")
        } else {
            format!("{at}  WARN microvm_agent::logwriter: {text} dropped={n}\n")
        }
        .into_bytes()
    }
}

/// One event's worth of formatted output, handed to the sink as one line when dropped.
pub struct EventWriter<'a> {
    sink: &'a Sink,
    buf: Vec<u8>,
}

impl io::Write for EventWriter<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter<'_> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
        } else if self.sink.json {
            // serde escapes every control character in a JSON string already.
            self.sink.line(&self.buf);
        } else {
            self.sink.line(&escape_controls(&self.buf));
        }
    }
}

/// A text record with every control character but its final newline written as an escape.
/// Values from outside (an app's failure reason, a callback's error) are printed as they are by
/// the text format: a carriage return plus ANSI codes would let an app forge a line
/// (`hook=/run status=200`) or hide one on a terminal. Control characters are C0, DEL and C1
/// (U+0080-U+009F: a terminal takes U+009B as the start of an escape sequence, like ESC `[`).
fn escape_controls(record: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let body = record.strip_suffix(b"\n").unwrap_or(record);
    let text = String::from_utf8_lossy(body);
    if !text.chars().any(char::is_control) && !matches!(text, std::borrow::Cow::Owned(_)) {
        return std::borrow::Cow::Borrowed(record);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\n');
    std::borrow::Cow::Owned(out.into_bytes())
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Sink {
    type Writer = EventWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter {
            sink: self,
            buf: Vec::with_capacity(256),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_records_carry_no_control_character_but_their_newline() {
        let forged = "hook failed error=x\r\x1b[2K2026 INFO hook=/run status=200\u{9b}31m\n";
        let out = escape_controls(forged.as_bytes());
        let out = std::str::from_utf8(&out).unwrap();
        assert_eq!(
            out,
            "hook failed error=x\\r\\u{1b}[2K2026 INFO hook=/run status=200\\u{9b}31m\n"
        );
        assert!(matches!(
            escape_controls(b"plain line\n"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(&*escape_controls(b"two\nlines\n"), b"two\\nlines\n");
    }

    /// A pipe nobody reads: lines are dropped and counted, never blocking, and the next line
    /// that gets through says how many were lost.
    #[test]
    fn a_full_pipe_drops_lines_instead_of_blocking() {
        let mut fds = [0; 2];
        assert_eq!(
            // SAFETY: pipe2 fills the two-int array we own.
            unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) },
            0
        );
        // SAFETY: the two descriptors pipe2 just made, owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let sink = Sink::new(w.as_raw_fd(), None, Kind::Other, true);
        let line = vec![b'x'; 999]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<_>>();
        for _ in 0..200 {
            sink.line(&line); // 200 KB into a 64 KiB pipe: returns at once every time
        }
        let dropped = crate::sys::lock(&sink.state).dropped;
        assert!(dropped > 100, "{dropped} dropped");
        // Drain the pipe, then one more line: the notice first, then the line, both whole.
        let mut buf = vec![0u8; 1 << 20];
        // SAFETY: read into a buffer we own, of its length.
        let n = unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n > 0);
        let text = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
        let lines: Vec<&str> = text.split('\n').collect();
        assert!(
            lines[..lines.len() - 1].iter().all(|l| l.len() == 999),
            "whole lines, and at most the start of the last one"
        );
        sink.line(b"after\n");
        // SAFETY: read into a buffer we own, of its length.
        let n = unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let text = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
        // What was cut short of the last line comes first, then the notice, then the new line.
        let notice = text
            .lines()
            .find(|l| l.contains("log lines dropped"))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(notice).unwrap();
        assert_eq!(v["dropped"], dropped);
        assert!(text.ends_with("after\n"), "{text}");
        assert!(dropped_total() >= dropped);
    }
}
