//! A blocking HTTP/1.1 client with one deadline per call: the platform's side of a hook call.
//! A new connection per call, `Host: localhost:<port>`, no `x-amzn-requestid`: what the
//! platform's own calls look like from inside the VM.

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

pub fn call(
    host: &str,
    port: u16,
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
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
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
