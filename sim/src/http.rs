//! A blocking HTTP/1.1 client with one deadline per call: the platform's side of a hook call,
//! a new connection per call, with the headers the platform sends (measured; docs/platform.md):
//! runtime hooks carry `Host: localhost:<port>` and no user-agent; the image builder's `/ready`
//! and `/validate` carry the build VM's endpoint as `Host`, `user-agent: smithy-java/1.6.0` and a
//! fresh `x-amzn-requestid`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why a call produced no answer.
#[derive(Debug)]
pub enum Failure {
    /// Nothing listens yet (the platform retries).
    Refused,
    /// No complete answer before the deadline.
    Timeout,
    Other(String),
}

/// Who makes a call, which decides its headers.
#[derive(Clone, Debug)]
pub enum Caller {
    /// The platform's runtime calls: `Host: localhost:<port>`, nothing else.
    Runtime,
    /// The image builder: the build VM's endpoint host (`<uuid>.lambda-microvm.<region>.on.aws`).
    Builder { endpoint: String },
}

impl Caller {
    fn headers(&self, port: u16) -> String {
        match self {
            Caller::Runtime => format!("Host: localhost:{port}\r\n"),
            Caller::Builder { endpoint } => format!(
                "Host: {endpoint}\r\nuser-agent: smithy-java/1.6.0\r\nx-amzn-requestid: {}\r\n",
                uuid()
            ),
        }
    }
}

/// A random UUID (version 4 layout) from the kernel's generator.
pub fn uuid() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    microvm_agent::clone::identity::uuid(&b)
}

#[allow(clippy::too_many_arguments)]
pub fn call(
    host: &str,
    port: u16,
    caller: &Caller,
    method: &str,
    path: &str,
    body: &[u8],
    content_type: Option<&str>,
    limit: Duration,
) -> Result<Reply, Failure> {
    let deadline = Instant::now() + limit;
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| Failure::Other(e.to_string()))?
        .next()
        .ok_or(Failure::Refused)?;
    let mut s = match TcpStream::connect_timeout(&addr, limit) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(Failure::Refused)
        }
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(Failure::Timeout),
        Err(e) => return Err(Failure::Other(e.to_string())),
    };
    let _ = s.set_nodelay(true);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\n{}Connection: close\r\nContent-Length: {}\r\n",
        caller.headers(port),
        body.len()
    );
    if let Some(ct) = content_type {
        req.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes)
        .map_err(|e| Failure::Other(e.to_string()))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::Timeout);
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if let Some(reply) = parse(&raw) {
                    return Ok(reply);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Failure::Timeout)
            }
            Err(e) => return Err(Failure::Other(e.to_string())),
        }
    }
    parse(&raw)
        .or_else(|| close_delimited(&raw))
        .ok_or_else(|| Failure::Other("the connection closed without a complete answer".into()))
}

/// A complete answer framed by Content-Length, if `raw` holds one.
fn parse(raw: &[u8]) -> Option<Reply> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let len: usize = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })?;
    let body = raw.get(end + 4..end + 4 + len)?.to_vec();
    Some(Reply { status, body })
}

fn close_delimited(raw: &[u8]) -> Option<Reply> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = std::str::from_utf8(&raw[..end])
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(Reply {
        status,
        body: raw[end + 4..].to_vec(),
    })
}

/// What the platform's TLS probe saw: something sends a TLS ClientHello to the plaintext hook
/// port before bootstrap (measured; docs/platform.md). `None`: nothing listens yet.
pub fn tls_probe(host: &str, port: u16) -> Option<String> {
    let addr = (host, port).to_socket_addrs().ok()?.next()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    // A TLS 1.2 record header and the start of a ClientHello, as a TLS client sends first.
    const HELLO: &[u8] = &[
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0x5e, 0x00, 0xff, 0x13,
        0x01, 0x13, 0x02, 0x13, 0x03, 0xc0, 0x2b, 0xc0, 0x2f, 0x00, 0x00,
    ];
    if s.write_all(HELLO).is_err() {
        return Some("the connection broke while the ClientHello was sent".into());
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 64];
    Some(match s.read(&mut buf) {
        Ok(0) => "closed by the server".into(),
        Ok(n) => {
            let text = String::from_utf8_lossy(&buf[..n]);
            match text
                .strip_prefix("HTTP/1.1 ")
                .or(text.strip_prefix("HTTP/1.0 "))
            {
                Some(rest) => format!("answered {}", rest.split("\r\n").next().unwrap_or("")),
                None => format!("answered {n} bytes that are not HTTP"),
            }
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            "no answer within 1 s (the platform gives up on it)".into()
        }
        Err(e) => format!("reset ({e})"),
    })
}
