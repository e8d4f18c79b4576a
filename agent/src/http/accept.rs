//! The hook port's accept loop and connections: HTTP/1.1 on hyper, serving the axum router
//! (`http::routes`).
//!
//! We own the loop instead of using axum's `serve`, because the port faces callers we do
//! not control (the public endpoint forwards to it): every socket gets `TCP_NODELAY` (a keep-alive
//! client must not wait 40 ms for a delayed ACK), headers must arrive within a deadline, the
//! header buffer is bounded, and on the way out idle connections close at once while a hook that is
//! still answering gets to finish.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::hooks::Agent;
use crate::http::request::{Arrived, Conn};
use crate::http::routes;
use crate::http::slots::{Close, Port, Rank, Stage};

/// A client has this long to send a request's headers once it has started one.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Hyper's smallest allowed read buffer; our requests have a few short headers.
const MAX_HEADER_BUF: usize = 16 * 1024;
/// How long the agent waits on its way out for answers still being written.
const DRAIN: Duration = Duration::from_secs(2);
/// An evicted connection gets this long to finish the answer it is writing.
const EVICT_GRACE: Duration = Duration::from_secs(2);

pub use crate::http::slots::MAX_CONNECTIONS;

/// Removes a connection from the table when its task ends, however it ends (its socket is
/// dropped with it: the table counts exactly the sockets held).
struct Slot(Arc<Port>, u64);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut slots = crate::sys::lock(&self.0.slots);
        slots.remove(self.1);
        if slots.is_empty() {
            release_memory();
        }
    }
}

/// After a burst of connections, hand the freed buffers back to the system: the agent's memory is
/// in every snapshot. musl's allocator does this by itself; glibc's keeps freed memory in its
/// arenas until asked.
fn release_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The accept queue. The standard library's and tokio's default is 128: 200 clients connecting at
/// once overflow it, and every dropped SYN costs its client the 1 s retransmission timeout. The
/// kernel caps this at `net.core.somaxconn`.
const BACKLOG: u32 = 4096;

/// Binds the hook port (address reuse on, a deep accept queue).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// How every connection is served: HTTP/1.1, freeze-aware header deadline, bounded header
/// buffer, half-close answered.
pub fn http1() -> http1::Builder {
    let mut b = http1::Builder::new();
    // Header deadlines that a freeze does not use up (`sys::clock`).
    b.timer(crate::sys::clock::AwakeTimer)
        .header_read_timeout(HEADER_TIMEOUT)
        // HTTP/1.1 allows a client to half-close after its request: answer it. (Off, hyper
        // drops the answer, while the hook it carried still acts.)
        .half_close(true)
        .max_buf_size(MAX_HEADER_BUF);
    b
}

/// Serves one connection to its end: what the accept loop runs for every client, and what the
/// end-to-end fuzz target feeds arbitrary bytes through.
pub async fn serve_connection<I>(io: I, agent: Arc<Agent>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let close: Close = Arc::new(watch::channel(false).0);
    let port = Port::new(crate::supervise::spawn::nofile());
    let _ = http1()
        .serve_connection(
            TokioIo::new(io),
            service(routes::router(agent), Stage::default(), close, port),
        )
        .await;
}

/// The router as hyper's service. Each request is stamped with the moment its headers were read
/// before routing (a hook's budget counts from there) and with its connection's [`Conn`].
fn service(
    router: Router,
    stage: Stage,
    close: Close,
    port: Arc<Port>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = hyper::Response<axum::body::Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<hyper::Response<axum::body::Body>, Infallible>> + Send,
> + Clone {
    service_fn(move |req: hyper::Request<Incoming>| {
        let mut req = req.map(axum::body::Body::new);
        let conn = Conn {
            stage: stage.clone(),
            then: routes::rank(&req),
            close: close.subscribe(),
            port: port.clone(),
        };
        req.extensions_mut()
            .insert(Arrived(tokio::time::Instant::now()));
        req.extensions_mut().insert(conn);
        let answered = router.clone().oneshot(req);
        let stage = stage.clone();
        async move {
            let response = answered.await;
            stage.set(Rank::Nothing);
            response
        }
    })
}

/// Serves hooks on `listener` until `stop` completes, then lets answers in flight finish
/// (bounded by `DRAIN`) and returns the listener, no longer accepting: the caller holds it until
/// the process exits. Closed earlier, every client that reconnects at once (a worker's naive
/// loop) is refused at once and spins: 1,200 of them spinning on two cores left the agent's one
/// thread too little CPU to finish its own exit. Open, their connections wait in the kernel's
/// queue and their threads sleep, until the exit resets them all together.
pub async fn serve(
    listener: TcpListener,
    agent: Arc<Agent>,
    stop: impl Future<Output = ()>,
) -> TcpListener {
    let (closing, closing_rx) = watch::channel(false);
    let port = Port::new(crate::supervise::spawn::nofile());
    let router = routes::router(agent);
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
        let mut closing = closing_rx.clone();
        let admitted = crate::sys::lock(&port.slots).admit();
        let service = service(
            router.clone(),
            admitted.stage,
            admitted.close.clone(),
            port.clone(),
        );
        let slot = Slot(port.clone(), admitted.id);
        let close = admitted.close;
        let task = tokio::spawn(async move {
            let _slot = slot;
            let mut evicted = close.subscribe();
            let conn = http1().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = closing.wait_for(|c| *c) => {}
                _ = evicted.wait_for(|c| *c) => {}
            }
            // Long-polls on this connection answer now; an answer being written finishes.
            close.send_replace(true);
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(EVICT_GRACE, conn).await;
            drop(closing);
        });
        crate::sys::lock(&port.slots).set_abort(admitted.id, task.abort_handle());
        if admitted.cut {
            // Let the runtime drop the connection that was cut, so its descriptor is free again
            // before the next accept.
            tokio::task::yield_now().await;
        }
    }
    tracing::debug!("the hook port accepts no more; draining its connections");
    let _ = closing.send(true);
    drop(closing_rx);
    let _ = tokio::time::timeout(DRAIN, closing.closed()).await;
    listener
}
