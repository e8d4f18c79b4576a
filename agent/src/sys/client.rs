//! The agent's HTTP client, for readiness probes, warm-up requests and notify callbacks.
//!
//! One TCP connection per request, closed after it: there is no pool, so no connection can
//! survive a snapshot or a suspend and be handed out dead afterwards. Every target is the app on
//! the same VM, so a connection costs tens of microseconds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, CONNECTION, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::values::HttpUrl;

/// We read at most this much of an answer (warm-up checks `expect_body_contains` in it).
const REPLY_LIMIT: usize = 1024 * 1024;

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

/// Connects to `host:port`; loopback names and literal addresses skip the resolver (which would
/// use a blocking thread).
pub async fn connect(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let stream = match host.parse::<IpAddr>() {
        Ok(ip) => TcpStream::connect(SocketAddr::new(ip, port)).await?,
        Err(_) if host == "localhost" => {
            TcpStream::connect(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)).await?
        }
        Err(_) => TcpStream::connect((host, port)).await?,
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// One request, bounded by `limit` as a whole (connect, send, read the answer).
pub async fn request(
    url: &HttpUrl,
    method: &str,
    headers: &[(String, String)],
    body: Bytes,
    limit: Duration,
) -> Result<Reply, String> {
    match tokio::time::timeout(limit, send(url, method, headers, body)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

async fn send(
    url: &HttpUrl,
    method: &str,
    headers: &[(String, String)],
    body: Bytes,
) -> Result<Reply, String> {
    let stream = connect(&url.host, url.port)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let host = if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let mut req = Request::builder()
        .method(method)
        .uri(url.path.as_str())
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let h = req.headers_mut();
    h.insert(
        HOST,
        HeaderValue::from_str(&host).map_err(|e| e.to_string())?,
    );
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    for (k, v) in headers {
        // Validated when the configuration was loaded.
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(k, v);
        }
    }
    let result = async {
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        // The status is the answer; the body is kept up to the limit and the rest is not read. An
        // app that says 200 with a large body has still said 200 (it used to count as a refusal).
        let mut body = resp.into_body();
        let mut kept = Vec::new();
        while kept.len() < REPLY_LIMIT {
            let Some(frame) = body.frame().await else {
                break;
            };
            if let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() {
                let room = REPLY_LIMIT - kept.len();
                kept.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
        Ok(Reply {
            status,
            body: Bytes::from(kept),
        })
    }
    .await;
    conn.abort();
    result
}
