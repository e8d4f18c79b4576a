//! The hook port's accept loop and connections (HTTP/1.1 on hyper, without a framework).
//!
//! We own the loop instead of using a framework's `serve`, because the port faces callers we do
//! not control (the public endpoint forwards to it): every socket gets `TCP_NODELAY` (a keep-alive
//! client must not wait 40 ms for a delayed ACK), headers must arrive within a deadline, the
//! header buffer is bounded, and on the way out idle connections close at once while a hook that is
//! still answering gets to finish.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::agent::Agent;

/// A client has this long to send a request's headers once it has started one.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Hyper's smallest allowed read buffer; our requests have a few short headers.
const MAX_HEADER_BUF: usize = 16 * 1024;
/// How long the agent waits on its way out for answers still being written.
const DRAIN: Duration = Duration::from_secs(2);

/// Serves hooks on `listener` until `stop` completes, then lets answers in flight finish
/// (bounded by [`DRAIN`]) and returns.
pub async fn serve(listener: TcpListener, agent: Arc<Agent>, stop: impl Future<Output = ()>) {
    let (closing, closing_rx) = watch::channel(false);
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // EMFILE and friends: the listener itself is fine; wait for a connection to
                    // close instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let agent = agent.clone();
        let mut closing = closing_rx.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let agent = agent.clone();
                async move { Ok::<_, Infallible>(crate::hooks::handle(&agent, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BUF)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = closing.wait_for(|c| *c) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
            drop(closing);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    drop(closing_rx);
    let _ = tokio::time::timeout(DRAIN, closing.closed()).await;
}
