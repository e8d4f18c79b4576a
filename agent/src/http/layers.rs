//! The hook port's route layers: the origin check (who may call which route) and the body limit
//! (size, and a deadline for the body to arrive), as axum middleware in front of every route.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_LENGTH, HOST};
use axum::http::{Response, StatusCode};
use axum::middleware::Next;
use http_body_util::BodyExt;

use crate::config::Trust;
use crate::hooks::Caller;
use crate::http::request::{refuse, Conn};

/// Larger than any `/run` body the platform can send (16 KiB payload plus the wrapper), small
/// enough that no caller can make the agent hold much memory.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What the origin check needs to know of a route.
#[derive(Clone, Copy)]
pub struct Gate {
    /// `[hooks] trust`: with `any`, every caller is the platform.
    pub trust: Trust,
    /// `/ready` and `/validate` answer every caller (the builder's calls look forwarded).
    pub build_hook: bool,
}

/// Records who is calling (for the hooks) and refuses a call forwarded from the public endpoint
/// on every route but the build hooks.
pub async fn origin(State(gate): State<Gate>, mut req: Request, next: Next) -> Response<Body> {
    let caller = caller(gate.trust, &req);
    if caller != Caller::Platform && !gate.build_hook {
        tracing::warn!(
            path = req.uri().path(),
            "refused a call forwarded from the public endpoint"
        );
        return refuse(
            StatusCode::FORBIDDEN,
            "this call came through the public endpoint (non-loopback Host or x-amzn-requestid); only the platform may call it",
        );
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Reads the whole body within the limits before the route sees it, which then gets it as one
/// buffer.
pub async fn body_limit(req: Request, next: Next) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match read_body(body, declared).await {
        Ok(bytes) => {
            // The body is in: the request now counts for what it is (`http::slots`).
            if let Some(conn) = parts.extensions.get::<Conn>() {
                conn.stage.set(conn.then);
            }
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(refusal) => refusal,
    }
}

/// Whether a request came through the public endpoint rather than from the platform itself.
///
/// The platform's own calls carry a loopback `Host` (`localhost`, `127.0.0.1` or `[::1]`, any
/// port) and no `x-amzn-requestid`; forwarded calls carry the endpoint's host name and a request
/// id (docs/platform.md). Anything unusual counts as forwarded: a missing or repeated `Host`, an
/// absolute-form target (`POST http://host/run`), a host in another case (`LOCALHOST`: the
/// platform sends lower case, so something else wrote it).
pub fn is_forwarded<B>(req: &axum::http::Request<B>) -> bool {
    if req.headers().contains_key("x-amzn-requestid") || req.uri().authority().is_some() {
        return true;
    }
    let mut hosts = req.headers().get_all(HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return true;
    };
    let Ok(host) = host.to_str() else { return true };
    let name = if host.starts_with('[') {
        match host.find(']') {
            Some(end) if host[end + 1..].is_empty() || host[end + 1..].starts_with(':') => {
                &host[..=end]
            }
            _ => return true,
        }
    } else {
        host.split(':').next().unwrap_or_default()
    };
    let port_ok = host[name.len()..]
        .strip_prefix(':')
        .is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    !(port_ok && matches!(name, "localhost" | "127.0.0.1" | "[::1]"))
}

/// Who is calling, as far as the headers tell: with `trust = "any"` everyone is the platform.
fn caller<B>(trust: Trust, req: &axum::http::Request<B>) -> Caller {
    if trust == Trust::Any || !is_forwarded(req) {
        return Caller::Platform;
    }
    let builder = req
        .headers()
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("smithy-"));
    if builder {
        Caller::Builder
    } else {
        Caller::Public
    }
}

/// A body must arrive within this long of its headers (as headers have `HEADER_TIMEOUT`).
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads the body into one buffer as it arrives, within [`BODY_TIMEOUT`] and [`BODY_LIMIT`].
///
/// Each frame is copied and dropped at once: a frame is a slice of hyper's read buffer, and
/// keeping thousands of one-byte frames (a body trickled a byte per TCP segment) would keep
/// thousands of read buffers alive (measured: 1 GB of RSS for 256 KB of trickled body).
async fn read_body(mut body: Body, declared: Option<u64>) -> Result<Bytes, Response<Body>> {
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {BODY_LIMIT} bytes"),
        )
    };
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(declared.unwrap_or(0) as usize);
    let collect = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read",
                )
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > BODY_LIMIT {
                    return Err(too_large());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    tokio::select! {
        done = collect => done?,
        () = crate::sys::clock::AwakeSleep::new(BODY_TIMEOUT) => {
            return Err(refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
            ))
        }
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header::HeaderValue;
    use axum::http::Request;

    fn req(host: Option<&str>, extra: Option<(&str, &str)>) -> Request<()> {
        let mut b = Request::builder().uri("/run");
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        if let Some((k, v)) = extra {
            b = b.header(k, v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn origin_check() {
        for host in [
            "localhost",
            "localhost:9000",
            "127.0.0.1:9000",
            "127.0.0.1",
            "[::1]:9000",
            "[::1]",
        ] {
            assert!(!is_forwarded(&req(Some(host), None)), "{host}");
        }
        for host in [
            "abc.lambda-microvms.aws",
            "LOCALHOST:9000",
            "127.0.0.2",
            "localhost.:9000",
            "[::1]x",
            "localhost:",
            "localhost:9x",
            "evil.com#localhost",
        ] {
            assert!(is_forwarded(&req(Some(host), None)), "{host}");
        }
        assert!(is_forwarded(&req(None, None)), "missing Host");
        assert!(is_forwarded(&req(
            Some("localhost"),
            Some(("x-amzn-requestid", "1"))
        )));
        assert!(is_forwarded(&req(
            Some("localhost"),
            Some(("X-Amzn-RequestId", "1"))
        )));
        let mut two = req(Some("localhost"), None);
        two.headers_mut()
            .append(HOST, HeaderValue::from_static("evil.com"));
        assert!(is_forwarded(&two), "two Host headers");
        let absolute = Request::builder()
            .uri("http://localhost:9000/run")
            .header(HOST, "localhost")
            .body(())
            .unwrap();
        assert!(is_forwarded(&absolute), "absolute-form target");
    }
}
