//! The hook port's HTTP surface: routing, methods, the origin check, body limits and the JSON
//! answers. What each hook *does* is in `agent`; this module only turns requests into calls.
//!
//! Routes: the six hooks at `/aws/lambda-microvms/runtime/v1/<hook>` and `/<hook>` (POST; GET too
//! for `ready` and `validate`), and `GET /status`. Every answer is a small JSON object; every
//! refusal has a human-readable `error`.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::config::Trust;
use crate::hooks::lifecycle::Hook;
use crate::hooks::{Agent, Answer, Caller};

/// Larger than any `/run` body the platform can send (16 KiB payload plus the wrapper), small
/// enough that no caller can make the agent hold much memory.
pub const BODY_LIMIT: usize = 64 * 1024;
pub const PREFIX: &str = "/aws/lambda-microvms/runtime/v1/";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Hook(Hook),
    Status,
    Generation,
}

fn route(path: &str) -> Option<Route> {
    let name = path
        .strip_prefix(PREFIX)
        .or_else(|| path.strip_prefix('/'))?;
    match name {
        "status" if !path.starts_with(PREFIX) => Some(Route::Status),
        "generation" if !path.starts_with(PREFIX) => Some(Route::Generation),
        _ => Hook::from_name(name).map(Route::Hook),
    }
}

pub fn json(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    bytes.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn refuse(status: StatusCode, error: impl Into<String>) -> Response<Full<Bytes>> {
    json(status, json!({ "error": error.into() }))
}

/// Whether a request came through the public endpoint rather than from the platform itself.
///
/// The platform's own calls carry a loopback `Host` (`localhost`, `127.0.0.1` or `[::1]`, any
/// port) and no `x-amzn-requestid`; forwarded calls carry the endpoint's host name and a request
/// id (CONTRACT.md). Anything unusual counts as forwarded: a missing or repeated `Host`, an
/// absolute-form target (`POST http://host/run`), a host in another case (`LOCALHOST`: the
/// platform sends lower case, so something else wrote it).
pub fn is_forwarded<B>(req: &Request<B>) -> bool {
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
fn caller<B>(trust: Trust, req: &Request<B>) -> Caller {
    if trust == Trust::Any || !is_forwarded(req) {
        return Caller::Platform;
    }
    let builder = req
        .headers()
        .get(hyper::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("smithy-"));
    if builder {
        Caller::Builder
    } else {
        Caller::Public
    }
}

/// `?after=N`: absent is `None`; anything but a number is an error.
fn query_u64(query: Option<&str>, key: &str) -> Result<Option<u64>, String> {
    let Some(q) = query else { return Ok(None) };
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == key {
            return v
                .parse()
                .map(Some)
                .map_err(|_| format!("{key} must be a generation number, not {v:?}"));
        }
    }
    Ok(None)
}

/// A body must arrive within this long of its headers (as headers have `HEADER_TIMEOUT`).
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads the body into one buffer as it arrives, within [`BODY_TIMEOUT`] and [`BODY_LIMIT`].
///
/// Each frame is copied and dropped at once: a frame is a slice of hyper's read buffer, and
/// keeping thousands of one-byte frames (a body trickled a byte per TCP segment) would keep
/// thousands of read buffers alive (measured: 1 GB of RSS for 256 KB of trickled body).
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {BODY_LIMIT} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return Err(too_large());
    }
    let mut body = req.into_body();
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

pub async fn handle(agent: &Arc<Agent>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let arrived = Instant::now();
    let Some(route) = route(req.uri().path()) else {
        tracing::debug!(method = %req.method(), "unknown path");
        return refuse(
            StatusCode::NOT_FOUND,
            "no such path; hooks are /ready /validate /run /resume /suspend /terminate (also under /aws/lambda-microvms/runtime/v1/), and GET /status, GET /generation",
        );
    };
    let allow = match route {
        Route::Hook(h) if h.is_build_time() => "GET, POST",
        Route::Hook(_) => "POST",
        Route::Status | Route::Generation => "GET",
    };
    if !allow.split(", ").any(|m| m == req.method().as_str()) {
        let mut resp = refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {} not allowed here; use {allow}", req.method()),
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allow));
        return resp;
    }
    let caller = caller(agent.config.hooks.trust, &req);
    // The build hooks answer whoever calls them: the image builder's own `/ready` and
    // `/validate` look forwarded (endpoint Host, x-amzn-requestid; measured), and a 403 on
    // `/validate` fails the build. Neither can harm: `/ready` changes nothing, and `/validate`
    // acts only before `/run` (SECURITY.md).
    let build_hook = matches!(route, Route::Hook(h) if h.is_build_time());
    if caller != Caller::Platform && !build_hook {
        tracing::warn!(path = ?route, "refused a call forwarded from the public endpoint");
        return refuse(
            StatusCode::FORBIDDEN,
            "this call came through the public endpoint (non-loopback Host or x-amzn-requestid); only the platform may call it",
        );
    }
    let is_get = req.method() == Method::GET;
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    match route {
        Route::Status => json(StatusCode::OK, agent.status()),
        Route::Generation => {
            let after = match query_u64(query.as_deref(), "after") {
                Ok(a) => a,
                Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
            };
            json(StatusCode::OK, agent.generation_after(after).await)
        }
        Route::Hook(hook) => {
            let body = if is_get { Bytes::new() } else { body };
            let answer = agent.hook(hook, caller, &path, body, arrived).await;
            answer_to_response(hook, answer, arrived)
        }
    }
}

fn answer_to_response(hook: Hook, answer: Answer, arrived: Instant) -> Response<Full<Bytes>> {
    let elapsed_us = arrived.elapsed().as_micros() as u64;
    // One line per hook. Never the body, a header value or a payload byte.
    tracing::info!(
        hook = hook.name(),
        outcome = answer.outcome,
        status = answer.status.as_u16(),
        elapsed_us,
        "hook"
    );
    let mut body = json!({ "hook": hook.name(), "outcome": answer.outcome });
    if let (Value::Object(map), Value::Object(extra)) = (&mut body, answer.extra) {
        map.extend(extra);
    }
    json(answer.status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn routes() {
        assert_eq!(route("/run"), Some(Route::Hook(Hook::Run)));
        assert_eq!(
            route("/aws/lambda-microvms/runtime/v1/validate"),
            Some(Route::Hook(Hook::Validate))
        );
        assert_eq!(route("/status"), Some(Route::Status));
        assert_eq!(route("/generation"), Some(Route::Generation));
        assert_eq!(query_u64(Some("after=3&x=1"), "after"), Ok(Some(3)));
        assert_eq!(query_u64(Some("x=1"), "after"), Ok(None));
        assert!(query_u64(Some("after=abc"), "after").is_err());
        assert_eq!(route("/aws/lambda-microvms/runtime/v1/status"), None);
        for p in [
            "/",
            "/run/",
            "/RUN",
            "/aws/lambda-microvms/runtime/v1/",
            "/aws/lambda-microvms/runtime/v2/run",
            "//run",
        ] {
            assert_eq!(route(p), None, "{p}");
        }
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
