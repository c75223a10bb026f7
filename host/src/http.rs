//! The HTTP listener: wasmhook's own accept loop, so that a connection can
//! hold neither a file descriptor nor a task for ever. Each connection
//! takes a slot of `server.max_connections` (over the cap, a few spare
//! connections answer one quick request — `/healthz`, or 503 — and the
//! rest are closed at once, before anything is read); its request head must arrive within
//! `server.header_read_timeout_secs` (which also ends a keep-alive
//! connection that sends nothing, and a connection that never speaks); and
//! its request body within `server.body_read_timeout_secs` of the head (a
//! body sent a byte at a time is answered 408). axum's own `serve` has
//! none of these.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tracing::{debug, warn};

/// The listener's bounds (`[server]` config keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once; one more is closed at once.
    pub max_connections: usize,
    /// From a connection's start, or the end of its last response, to the
    /// end of the next request's head.
    pub header_read_timeout: Duration,
    /// From a request's head to the end of its body.
    pub body_read_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
        }
    }
}

/// A request body that was not all read within the body-read timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(pub Duration);

/// How long to pause accepting after an accept error (out of file
/// descriptors): connections wait in the backlog meanwhile.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Connections over `max_connections` still served, each for one request
/// that must arrive within [`SPARE_HEADER_TIMEOUT`]: `/healthz` is answered
/// on them as on any connection, anything else 503. A flood of connections that holds every
/// slot therefore cannot make the health check unanswerable, and the file
/// descriptors it takes stay bounded.
const SPARE_CONNECTIONS: usize = 64;
const SPARE_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// `request` with its peer's address, as the API's extractors read it
/// (the failed-authentication throttle is per address).
fn with_peer(
    mut request: hyper::Request<Body>,
    peer: std::net::SocketAddr,
) -> hyper::Request<Body> {
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    request
}

/// The answer to any request but `/healthz` over the cap.
fn too_many_connections() -> axum::response::Response {
    let mut response = axum::response::Response::new(Body::from(
        r#"{"error":{"code":"too_many_connections","message":"the server has server.max_connections connections open; retry later"}}"#,
    ));
    *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from_static("1"),
    );
    response
}

/// How long open connections may finish their requests at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown` resolves, then lets open
/// requests finish (for at most [`SHUTDOWN_GRACE`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let spare = Arc::new(Semaphore::new(SPARE_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    // Over the cap: one request, whose head must come at once.
    let mut spare_builder = hyper::server::conn::http1::Builder::new();
    spare_builder
        .timer(TokioTimer::new())
        .header_read_timeout(SPARE_HEADER_TIMEOUT)
        .keep_alive(false);
    let body_timeout = limits.body_read_timeout;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        if let Ok(slot) = slots.clone().try_acquire_owned() {
            let service = router
                .clone()
                .map_request(move |request: hyper::Request<Incoming>| {
                    with_peer(
                        request.map(|body| Body::new(Deadline::new(body, body_timeout))),
                        peer,
                    )
                });
            let connection =
                graceful.watch(builder.serve_connection(io, TowerToHyperService::new(service)));
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    debug!(%peer, error = %e, "connection ended");
                }
                drop(slot);
            });
        } else if let Ok(slot) = spare.clone().try_acquire_owned() {
            metrics::counter!("wasmhook_http_connections_over_cap_total").increment(1);
            let router = router.clone();
            let service = tower::service_fn(move |request: hyper::Request<Incoming>| {
                let router = router.clone();
                async move {
                    if request.uri().path() == "/healthz" {
                        router
                            .oneshot(with_peer(request.map(Body::new), peer))
                            .await
                    } else {
                        Ok(too_many_connections())
                    }
                }
            });
            let connection = graceful
                .watch(spare_builder.serve_connection(io, TowerToHyperService::new(service)));
            tokio::spawn(async move {
                let _ = connection.await;
                drop(slot);
            });
        } else {
            metrics::counter!("wasmhook_http_connections_refused_total").increment(1);
            debug!(%peer, "connection over server.max_connections closed");
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("open connections did not finish within the shutdown grace");
    }
}

/// A request body with a deadline for all of it.
struct Deadline {
    inner: Incoming,
    limit: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Deadline {
    fn new(inner: Incoming, limit: Duration) -> Self {
        Deadline {
            inner,
            limit,
            sleep: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(axum::Error::new)));
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            let limit = self.limit;
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(limit)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
