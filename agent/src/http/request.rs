//! What travels with a request inside the hook port, and the shape of every answer: the request
//! extensions the accept loop sets ([`Arrived`], [`Conn`]) and the routes and layers read, and the
//! JSON answers ([`json`], [`refuse`]) every part of the port sends. Its own module so that the
//! accept loop, the routes and the layers each depend on it and not on one another in a circle.

use std::sync::Arc;

use axum::body::Body;
use axum::http::header::{HeaderValue, CONTENT_TYPE};
use axum::http::{Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::http::slots::{Port, Rank, Stage};

/// When a request's headers were read (set by the accept loop before routing): a hook's budget
/// counts from here.
#[derive(Clone, Copy)]
pub struct Arrived(pub Instant);

pub fn json(status: StatusCode, body: Value) -> Response<Body> {
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    bytes.push(b'\n');
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub fn refuse(status: StatusCode, error: impl Into<String>) -> Response<Body> {
    json(status, json!({ "error": error.into() }))
}

/// What a request carries from its connection: the connection's stage (the body layer moves it
/// on once the body is in) and its close signal (a long-poll answers when it fires).
#[derive(Clone)]
pub struct Conn {
    pub stage: Stage,
    /// The rank the request has once its body is in.
    pub then: Rank,
    pub close: watch::Receiver<bool>,
    pub port: Arc<Port>,
}
