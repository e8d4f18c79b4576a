//! The hook port's HTTP surface: an axum [`Router`] for the six hooks at
//! `/aws/lambda-microvms/runtime/v1/<hook>` and `/<hook>` (POST; GET too for `ready` and
//! `validate`), `GET /status` and `GET /generation`, with the origin check and the body limit as
//! route layers (`http::layers`). What each hook *does* is in `hooks`; this module only turns
//! requests into calls and answers into JSON. Every answer is a small JSON object; every refusal
//! has a human-readable `error`, including the 404 and the 405 (with `Allow`) that the router
//! itself would otherwise answer with an empty body.
//!
//! Order of the checks, as a caller sees them: unknown path 404, wrong method 405 (HEAD too:
//! axum would serve it from GET), forwarded from the public endpoint 403 (not for the build
//! hooks), body too large 413 / too slow 408, then the hook.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{HeaderValue, ALLOW};
use axum::http::{Method, Response, StatusCode};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{middleware, Router};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::hooks::lifecycle::Hook;
use crate::hooks::{Agent, Answer, Caller};
use crate::http::layers::{self, Gate};
use crate::http::request::Conn;
pub use crate::http::request::{json, refuse, Arrived};
use crate::http::slots::Rank;

pub use crate::http::layers::{is_forwarded, BODY_LIMIT, BODY_TIMEOUT};
pub const PREFIX: &str = "/aws/lambda-microvms/runtime/v1/";

const NOT_FOUND: &str = "no such path; hooks are /ready /validate /run /resume /suspend /terminate (also under /aws/lambda-microvms/runtime/v1/), and GET /status, GET /generation";

/// The router for `agent`'s hook port.
pub fn router(agent: Arc<Agent>) -> Router {
    let mut router = Router::new();
    for hook in Hook::ALL {
        let methods = hook_route(&agent, hook);
        router = router
            .route(&format!("/{}", hook.name()), methods.clone())
            .route(&format!("{PREFIX}{}", hook.name()), methods);
    }
    router
        .route(
            "/status",
            guarded(&agent, false, "GET", on(MethodFilter::GET, status)),
        )
        .route(
            "/generation",
            guarded(&agent, false, "GET", on(MethodFilter::GET, generation)),
        )
        .fallback(|method: Method| async move {
            tracing::debug!(%method, "unknown path");
            refuse(StatusCode::NOT_FOUND, NOT_FOUND)
        })
        .with_state(agent)
}

/// What a request is, for a full connection table (`http::slots`): one of the six hooks called
/// from inside the VM is the platform's and goes last; anything else waits or can go.
pub fn rank<B>(req: &axum::http::Request<B>) -> Rank {
    let path = req.uri().path();
    let hook = Hook::from_name(
        path.strip_prefix(PREFIX)
            .unwrap_or(path.trim_start_matches('/')),
    );
    if hook.is_some() && !is_forwarded(req) {
        Rank::Hook
    } else {
        Rank::Waiting
    }
}

fn hook_route(agent: &Arc<Agent>, hook: Hook) -> MethodRouter<Arc<Agent>> {
    let handler = move |State(agent): State<Arc<Agent>>, req: Request| call_hook(agent, hook, req);
    if hook.is_build_time() {
        // The build hooks answer whoever calls them: the image builder's own `/ready` and
        // `/validate` look forwarded (endpoint Host, x-amzn-requestid; measured), and a 403 on
        // `/validate` fails the build. Neither can harm: `/ready` changes nothing, and
        // `/validate` acts only before `/run` (SECURITY.md).
        let methods = on(MethodFilter::GET, handler).post(handler);
        guarded(agent, true, "GET, POST", methods)
    } else {
        guarded(agent, false, "POST", on(MethodFilter::POST, handler))
    }
}

/// `methods` behind the origin check and the body limit, with JSON 405s (HEAD included) for
/// every other method.
fn guarded(
    agent: &Arc<Agent>,
    build_hook: bool,
    allow: &'static str,
    methods: MethodRouter<Arc<Agent>>,
) -> MethodRouter<Arc<Agent>> {
    let gate = Gate {
        trust: agent.config.hooks.trust,
        build_hook,
    };
    let not_allowed = move |method: Method| async move { method_not_allowed(&method, allow) };
    methods
        .route_layer(middleware::from_fn(layers::body_limit))
        .route_layer(middleware::from_fn_with_state(gate, layers::origin))
        // Added after the layers: a HEAD (which axum would serve from GET) is refused first.
        .on(MethodFilter::HEAD, not_allowed)
        .fallback(not_allowed)
}

fn method_not_allowed(method: &Method, allow: &'static str) -> Response<Body> {
    let mut resp = refuse(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} not allowed here; use {allow}"),
    );
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

fn arrived(req: &Request) -> Instant {
    req.extensions()
        .get::<Arrived>()
        .map_or_else(Instant::now, |a| a.0)
}

async fn call_hook(agent: Arc<Agent>, hook: Hook, req: Request) -> Response<Body> {
    let arrived = arrived(&req);
    let caller = req
        .extensions()
        .get::<Caller>()
        .copied()
        .unwrap_or(Caller::Public);
    let is_get = req.method() == Method::GET;
    let path = req.uri().path().to_string();
    let body = body_of(req).await;
    let body = if is_get { Bytes::new() } else { body };
    // The hook runs as a task of its own, not in the connection's future: a connection that is
    // closed (by its client, or evicted from a full table) loses the answer, never the work. A
    // `/terminate` cut halfway still stops the app; a `/run` cut halfway still finishes its
    // generation.
    let work = tokio::spawn(async move { agent.hook(hook, caller, &path, body, arrived).await });
    let answer = work.await.unwrap_or_else(|_| {
        Answer::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal-error",
            "the hook's work failed (a bug: see the agent's log)",
        )
    });
    answer_to_response(hook, answer, arrived)
}

/// The body, already read whole by the body limit layer.
async fn body_of(req: Request) -> Bytes {
    axum::body::to_bytes(req.into_body(), BODY_LIMIT)
        .await
        .unwrap_or_default()
}

async fn status(State(agent): State<Arc<Agent>>, req: Request) -> Response<Body> {
    tokio::spawn(agent.clone().clock_says_restored());
    let mut v = agent.status().await;
    if let Some(conn) = req.extensions().get::<Conn>() {
        v["hooks_port"] = conn.port.json();
    }
    json(StatusCode::OK, v)
}

/// How long a long-poll turned away at the cap is asked to wait before it asks again.
const RETRY_AFTER_S: &str = "1";

/// `GET /generation?after=N` waits for a generation after N. When its connection is closed (a
/// full table, or the agent on its way out) it answers at once with what there is, so that a
/// waiting client always gets an answer, never a reset.
async fn generation(State(agent): State<Arc<Agent>>, req: Request) -> Response<Body> {
    let after = match query_u64(req.uri().query(), "after") {
        Ok(a) => a,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    // Never waited for: the answer does not depend on it.
    tokio::spawn(agent.clone().clock_says_restored());
    let conn = req.extensions().get::<Conn>();
    // A place among the long-polls (`http::slots::LongPolls`), or an answer at once.
    let _place = match (after, conn) {
        (Some(_), Some(conn)) => match conn.port.long_polls.enter() {
            Some(place) => Some(place),
            None => return too_many_polls(conn.port.long_polls.cap()),
        },
        _ => None,
    };
    let closing = conn.map(|c| c.close.clone());
    let closed = async move {
        match closing {
            Some(mut c) => drop(c.wait_for(|c| *c).await),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        g = agent.generation_after(after) => json(StatusCode::OK, g),
        () = closed => json(StatusCode::OK, agent.generation_after(None).await),
    }
}

/// A long-poll past the cap: 503 at once, with `Retry-After` and the connection closed (its
/// descriptor is free as soon as the answer is out), so that it never holds a place the hooks
/// need.
fn too_many_polls(cap: usize) -> Response<Body> {
    let mut resp = refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "too many long-polls waiting ({cap}, the most this agent holds): ask again in \
             {RETRY_AFTER_S} s, or read <state_dir>/generation"
        ),
    );
    let headers = resp.headers_mut();
    headers.insert(
        hyper::header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_S),
    );
    headers.insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    resp
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

fn answer_to_response(hook: Hook, answer: Answer, arrived: Instant) -> Response<Body> {
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
    use tower::ServiceExt;

    fn agent() -> Arc<Agent> {
        let dir = std::env::temp_dir().join(format!("mva-routes-{}", std::process::id()));
        let text = format!(
            "state_dir = {:?}\n[entropy]\nkernel = \"off\"\n[identity]\nmachine_id = false\n",
            dir.display().to_string()
        );
        let config =
            crate::config::from_table(&text.parse().unwrap(), &Default::default(), None).unwrap();
        let links = crate::hooks::Links::without_app(&config.state_dir);
        Agent::new(config, links)
    }

    async fn call(
        router: &Router,
        method: &str,
        path: &str,
    ) -> (StatusCode, Option<String>, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost:9000")
            .body(Body::empty())
            .unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let allow = resp
            .headers()
            .get(ALLOW)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            allow,
            serde_json::from_slice(&body).unwrap_or_default(),
        )
    }

    #[tokio::test]
    async fn paths_methods_and_their_json_refusals() {
        let router = router(agent());
        for p in [
            "/",
            "/run/",
            "/RUN",
            "/aws/lambda-microvms/runtime/v1/",
            "/aws/lambda-microvms/runtime/v2/run",
            "/aws/lambda-microvms/runtime/v1/status",
            "//run",
        ] {
            let (status, _, body) = call(&router, "POST", p).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{p}");
            assert_eq!(body["error"], NOT_FOUND, "{p}");
        }
        for (method, path, allow) in [
            ("GET", "/run", "POST"),
            ("HEAD", "/ready", "GET, POST"),
            (
                "PUT",
                "/aws/lambda-microvms/runtime/v1/validate",
                "GET, POST",
            ),
            ("HEAD", "/status", "GET"),
            ("POST", "/generation", "GET"),
        ] {
            let (status, got, body) = call(&router, method, path).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_eq!(got.as_deref(), Some(allow), "{method} {path}");
            if method != "HEAD" {
                // (A HEAD answer has no body, on the wire as here.)
                assert_eq!(
                    body["error"],
                    format!("method {method} not allowed here; use {allow}")
                );
            }
        }
        let (status, _, body) = call(&router, "GET", "/status").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.is_object());
        let (status, _, body) = call(&router, "GET", "/generation?after=x").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().contains("after"));
        assert_eq!(query_u64(Some("after=3&x=1"), "after"), Ok(Some(3)));
        assert_eq!(query_u64(Some("x=1"), "after"), Ok(None));
    }
}
