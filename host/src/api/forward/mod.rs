//! A partitioned cluster (`store/partitions.rs`): every node answers every
//! route, but a tenant's data is only on the node holding its partition.
//! A request for such a tenant is forwarded, whole, to that node over the
//! cluster's NATS (a request on `wasmhook.fwd.<partition>`, which only the
//! holder listens to), and its answer returned as it came.
//!
//! Why the whole request rather than single store calls: the holder then
//! runs the tenant's routing, plugins and writes against its own view, as
//! one node does; the node that took the request only authenticates
//! nothing, reads one index (key or source → tenant) and relays bytes.
//!
//! When the holder advertises its API (`cluster.advertise_url`), the
//! request goes there directly over HTTP instead, signed (`direct.rs`):
//! the NATS servers then carry nothing of it. Over NATS is the fallback:
//! a holder that advertises nothing, cannot be reached, or gave the
//! partition up since this node's last lease round.
//!
//! Not forwarded: routes of no tenant (the operator's, the dashboard's
//! files, health, metrics) and `wasmhook listen`'s streams, which the
//! delivery bus already serves from any node. A request forwarded once
//! ([`Forwarded`]) is never forwarded again: if the partition moved
//! meanwhile, the store answers 503 and the client retries.

mod direct;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tower::ServiceExt;

use super::{ApiError, ApiState};

/// The header of a request forwarded directly (`direct.rs`: the nodes,
/// the client's address, a time, signed).
pub const FORWARDED: &str = "x-wasmhook-forwarded";
pub use direct::{REFUSED, Signed, sign, trust as trust_peers, unix_now};
/// How long a forwarded request may take (an ingest waits for plugins).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);
/// Room for the wire framing in a NATS message.
const HEADROOM: usize = 64 * 1024;

/// On a request another node forwarded here (verified): it is served
/// here, never forwarded again.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// The node it came from.
    pub from: String,
}

fn subject(partition: u32) -> String {
    format!("wasmhook.fwd.{partition}")
}

/// A request or an answer as it crosses NATS.
#[derive(Serialize, Deserialize)]
struct Wire {
    /// A request: method and URI; an answer: the status in `method`.
    method: String,
    uri: String,
    peer: Option<SocketAddr>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

fn headers_of(map: &axum::http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter()
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn set_headers(map: &mut axum::http::HeaderMap, headers: Vec<(String, Vec<u8>)>) {
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::from_bytes(&v)) {
            map.append(k, v);
        }
    }
}

/// The tenant a request is for, if it names one: by its path (an
/// inbound source, the operator's routes of one tenant) or its bearer
/// token (an API key or a portal link).
fn tenant_of(state: &ApiState, request: &Request) -> Option<String> {
    let path = request.uri().path();
    let store = &state.app.store;
    if path.starts_with("/v1/listen") {
        return None;
    }
    if let Some(rest) = path.strip_prefix("/in/") {
        let id = rest.split('/').next()?;
        return store.find_source(id).ok()?.map(|s| s.tenant_id);
    }
    if let Some(rest) = path.strip_prefix("/v1/tenants/") {
        return rest
            .split('/')
            .next()
            .filter(|id| !id.is_empty())
            .map(str::to_string);
    }
    let token = super::auth::bearer_token(request.headers())?;
    if token.starts_with("whp_") {
        return store
            .portal_link_for_token(token)
            .ok()?
            .map(|l| l.tenant_id);
    }
    store.tenant_for_key(token).ok()?
}

/// The middleware: a request for a tenant whose partition another node
/// holds goes to that node.
pub async fn forward(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    let store = &state.app.store;
    if store.data_partitions().is_none() || request.extensions().get::<Forwarded>().is_some() {
        return next.run(request).await;
    }
    if let Some(value) = request.headers_mut().remove(FORWARDED) {
        let keys = crate::secrets::keys()
            .map(|k| {
                std::iter::once(&k.current)
                    .chain(&k.previous)
                    .map(crate::secrets::Key::forwarding)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let uri = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let this = store.node_id().unwrap_or_default();
        let now = direct::unix_now();
        let authorization = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .map_or(&[][..], HeaderValue::as_bytes);
        let signed = direct::Signed {
            method: request.method().as_str(),
            uri: &uri,
            authorization,
        };
        // Verified first: only a node's own headers are remembered.
        let verified = direct::verify(value.as_bytes(), &keys, this, now, &signed)
            .and_then(|v| direct::first_use(&v, now).map(|()| v));
        return match verified {
            Ok(verified) => {
                if let Some(peer) = verified.peer {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                }
                request.extensions_mut().insert(Forwarded {
                    from: verified.from,
                });
                next.run(request).await
            }
            Err(refused) => {
                tracing::debug!(error = %refused, "a forwarded request refused");
                refused.into_response()
            }
        };
    }
    let Some(tenant) = tenant_of(&state, &request) else {
        return next.run(request).await;
    };
    if store.has_data_of(&tenant) {
        return next.run(request).await;
    }
    let partition = store.partition_of(&tenant).unwrap_or_default();
    match send(&state, partition, request).await {
        Ok(Sent::Answered(response)) => response,
        // No node holds the partition (the cluster is starting, or it is
        // moving): served here. What needs only the control plane (a
        // subscription, a key) is done; what needs the data is a 503.
        Ok(Sent::NoHolder(request)) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// What became of a request sent to its partition's holder.
enum Sent {
    Answered(Response),
    /// Nobody listens for the partition: the request, as it came.
    NoHolder(Request),
}

async fn send(state: &ApiState, partition: u32, request: Request) -> Result<Sent, ApiError> {
    let Some(client) = state.app.store.nats_client() else {
        return Err(moving(partition));
    };
    // Either way, at most a NATS message's: the body is read before the
    // holder authenticates anything, so this bounds what a request may
    // make this node hold (and it can still go over NATS).
    // (A server configured below the default keeps half for framing, and
    // a body past its limit is a 413 here, not a failed relay's 503.)
    let max_payload = client.max_payload();
    let limit = max_payload - HEADROOM.min(max_payload / 2);
    let this = state.app.store.node_id().unwrap_or_default().to_string();
    // Directly, when the holder (as of the last lease round) advertises
    // its API and this node has the cluster's key to sign with.
    let direct = state
        .app
        .ownership
        .as_ref()
        .and_then(|o| o.holder(partition))
        .filter(|holder| holder.node != this)
        .zip(crate::secrets::keys().map(|k| *k.current.forwarding()));
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::TooLarge { limit })?;
    if let Some((holder, key)) = &direct {
        match direct::send(holder, &this, key, &parts, body.clone(), peer).await {
            direct::Direct::Answered(response) => {
                crate::telemetry::forwarded("direct");
                return Ok(Sent::Answered(response));
            }
            // It may have acted on it: the client decides whether to retry.
            direct::Direct::NoAnswer => return Err(moving(partition)),
            direct::Direct::NotThere => {}
            // Until the next lease round says who holds it now, over NATS
            // (which reaches the new holder) rather than each request
            // trying the old one first.
            direct::Direct::Moved => {
                if let Some(ownership) = &state.app.ownership {
                    ownership.forget_holder(partition, &holder.node);
                }
            }
        }
    }
    let mut headers = headers_of(&parts.headers);
    headers.retain(|(name, _)| name != FORWARDED);
    headers.push((FORWARDED.to_string(), this.into_bytes()));
    let wire = Wire {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        peer,
        headers,
        body: body.to_vec(),
    };
    let bytes = postcard::to_allocvec(&wire).map_err(|e| ApiError::Internal(e.into()))?;
    let answer = match client
        .send_request(
            subject(partition),
            async_nats::Request::new()
                .payload(bytes.into())
                .timeout(Some(FORWARD_TIMEOUT)),
        )
        .await
    {
        Ok(answer) => answer,
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            return Ok(Sent::NoHolder(Request::from_parts(parts, Body::from(body))));
        }
        Err(e) => {
            tracing::debug!(partition, error = %e, "forwarding a request");
            return Err(moving(partition));
        }
    };
    crate::telemetry::forwarded("nats");
    let wire: Wire =
        postcard::from_bytes(&answer.payload).map_err(|e| ApiError::Internal(e.into()))?;
    let status = wire
        .method
        .parse::<u16>()
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = Response::new(Body::from(wire.body));
    *response.status_mut() = status;
    set_headers(response.headers_mut(), wire.headers);
    Ok(Sent::Answered(response))
}

/// The partition has no holder that answers (it is moving): retry soon.
fn moving(partition: u32) -> ApiError {
    ApiError::Unavailable {
        code: "partition_moving",
        message: format!(
            "partition {partition} of the data is moving between nodes; retry in a second"
        ),
        retry_after_secs: 1,
    }
}

/// A node's end: answers the forwarded requests of the partitions it
/// holds with its own routes.
#[derive(Clone, Default)]
pub struct Forwarding {
    router: Arc<OnceLock<Router>>,
    /// Per partition served: dropped or fired, its task stops taking
    /// requests (see [`Forwarding::serve`]).
    serving: Arc<Mutex<HashMap<u32, oneshot::Sender<()>>>>,
}

/// How long a partition given up answers the requests that were already
/// on their way to it.
const DRAIN_FOR: Duration = Duration::from_secs(5);

impl Forwarding {
    /// The routes forwarded requests are answered with (set once built).
    pub fn set_router(&self, router: Router) {
        let _ = self.router.set(router);
        direct::remember_from_now();
    }

    /// Starts answering partition `p`'s forwarded requests: returns once
    /// the NATS servers know of this node's subscription, so that from then
    /// on no request for `p` finds no responder (and is served, with a 503,
    /// where it came in).
    pub async fn serve(&self, client: async_nats::Client, p: u32) -> Result<(), async_nats::Error> {
        let mut requests = client
            .queue_subscribe(subject(p), "wasmhook".into())
            .await?;
        client.flush().await?;
        let router = self.router.clone();
        let (stop, mut stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let take = |message: async_nats::Message| {
                let (client, router) = (client.clone(), router.clone());
                tokio::spawn(async move {
                    let Some(reply) = message.reply else {
                        return;
                    };
                    let answer = answer(router.get(), &message.payload).await;
                    if let Err(e) = client.publish(reply, answer.into()).await {
                        tracing::debug!(error = %e, "answering a forwarded request");
                    }
                });
            };
            loop {
                tokio::select! {
                    message = requests.next() => match message {
                        Some(message) => take(message),
                        None => return,
                    },
                    _ = &mut stopped => break,
                }
            }
            // Given up: no new request comes here, and those already on
            // their way are answered (the partition gone: a 503 the client
            // retries) rather than left to their sender's time limit.
            let _ = requests.drain().await;
            let _ = tokio::time::timeout(DRAIN_FOR, async {
                while let Some(message) = requests.next().await {
                    take(message);
                }
            })
            .await;
        });
        // A task serving `p` before is stopped by its sender's drop.
        self.serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(p, stop);
        Ok(())
    }

    /// Stops answering partition `p`'s (it moved away).
    pub fn stop(&self, p: u32) {
        let stop = self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&p);
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
    }
}

/// One forwarded request run through this node's routes: the answer's bytes.
async fn answer(router: Option<&Router>, payload: &[u8]) -> Vec<u8> {
    let response = match (router, postcard::from_bytes::<Wire>(payload)) {
        (Some(router), Ok(wire)) => run(router.clone(), wire).await,
        (None, _) => ApiError::Unavailable {
            code: "starting",
            message: "this node is starting".into(),
            retry_after_secs: 1,
        }
        .into_response(),
        (_, Err(e)) => {
            ApiError::bad("forwarded", format!("a forwarded request: {e}")).into_response()
        }
    };
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let wire = Wire {
        method: parts.status.as_u16().to_string(),
        uri: String::new(),
        peer: None,
        headers: headers_of(&parts.headers),
        body: body.to_vec(),
    };
    postcard::to_allocvec(&wire).unwrap_or_default()
}

async fn run(router: Router, wire: Wire) -> Response {
    let mut request = Request::new(Body::from(wire.body));
    *request.method_mut() = match wire.method.parse() {
        Ok(m) => m,
        Err(_) => return ApiError::bad("forwarded", "a forwarded method").into_response(),
    };
    *request.uri_mut() = match wire.uri.parse() {
        Ok(u) => u,
        Err(_) => return ApiError::bad("forwarded", "a forwarded URI").into_response(),
    };
    // Over NATS the sender is a node (only nodes answer or send on the
    // forwarding subjects): its header names it.
    set_headers(request.headers_mut(), wire.headers);
    let from = request
        .headers_mut()
        .remove(FORWARDED)
        .and_then(|v| v.to_str().ok().map(str::to_string))
        .unwrap_or_default();
    request.extensions_mut().insert(Forwarded { from });
    if let Some(peer) = wire.peer {
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
    }
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}
