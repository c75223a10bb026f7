//! The admin REST API (axum): one file per noun, each with its `router()`.
//! Handlers are thin: they unpack validated input (auth, JSON, path), call
//! the stage that does the work, and map the result to a status code.
//!
//! Errors are always `{"error": {"code", "message"}}`: 4xx say exactly what
//! is wrong; 5xx say nothing internal and are logged once.

pub(crate) mod apps;
pub(crate) mod auth;
mod backup;
pub(crate) mod deliveries;
mod error;
pub mod forward;
pub use error::*;
pub(crate) mod event_types;
pub(crate) mod events;
mod inbound;
mod keys;
mod listen;
pub mod openapi;
mod ops;
mod plugins;
mod portal;
mod secrets;
mod source_views;
mod sources;
pub(crate) mod subscription_actions;
mod subscription_views;
pub(crate) mod subscriptions;
mod svix;
mod tenants;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;

use crate::app::App;
use crate::telemetry::{self, Telemetry};
pub use auth::RateLimiter;

/// What every handler can reach: one allocation shared by reference.
///
/// axum clones the state for every handler and every middleware layer of
/// every request; a clone of the parts themselves (the app's handles, a
/// few strings and paths) was about a tenth of a forwarding node's CPU.
#[derive(Clone)]
pub struct ApiState(Arc<ApiParts>);

impl ApiState {
    pub fn new(parts: ApiParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for ApiState {
    type Target = ApiParts;

    fn deref(&self) -> &ApiParts {
        &self.0
    }
}

/// The parts of [`ApiState`].
pub struct ApiParts {
    pub app: App,
    /// The `nats` sources' consumers, started and stopped with their
    /// sources.
    pub feeds: Arc<crate::source::nats::Feeds>,
    /// The `poll` sources' pollers, started and stopped with their sources.
    pub polls: Arc<crate::source::poll::Polls>,
    /// SHA-256 of the operator token.
    pub admin_token_hash: Arc<Vec<u8>>,
    pub max_event_bytes: usize,
    pub max_plugin_bytes: usize,
    /// Where portal links point (`server.public_url`).
    pub public_url: Option<String>,
    pub rate_limiter: Option<Arc<RateLimiter>>,
    /// Requests per second per source on `/in/{id}` (`sources.rate_limit`).
    pub source_rate_limiter: Option<Arc<RateLimiter>>,
    pub telemetry: Telemetry,
    /// Where a backup is written before it is sent (the data directory:
    /// room for a copy of the store).
    pub backup_dir: std::path::PathBuf,
    /// The event-type catalog's compiled schemas.
    pub schemas: Arc<event_types::Schemas>,
}

/// The whole API, and its OpenAPI document built from the same route
/// registrations (so the document cannot miss a route).
pub fn router(state: ApiState) -> Router {
    let (api, doc) = routes(&state).split_for_parts();
    let doc = Arc::new(doc);
    api.route("/healthz", get(healthz))
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .route("/metrics", get(operator_metrics))
        // Counted per route template, so only matched routes (the fallback
        // counts the rest as `other`).
        .route_layer(axum::middleware::from_fn(track_request))
        .route_layer(axum::middleware::from_fn(trace_request))
        // Cluster mode: a request sees every write acknowledged before it,
        // through whichever node it was made.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            caught_up,
        ))
        // A partitioned cluster: a tenant another node holds is answered
        // by that node (before this node waits for its own view).
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            forward::forward,
        ))
        .merge(crate::ui::router())
        .fallback(not_found)
        .layer(catch_panics())
        .layer(axum::middleware::from_fn(note_slow))
        // A 5xx is logged where it happens (internal errors, storage faults);
        // the trace layer only notes it, so load shedding (503) does not
        // flood the log with errors.
        .layer(
            tower_http::trace::TraceLayer::new_for_http().on_failure(
                tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
            ),
        )
        .with_state(state)
}

/// A request answered after this long is logged (at WARN) with its
/// method, path and status, and so is one its client gave up on after this
/// long (a client's time limit is often 30 s: the request that hung should
/// be findable in the log).
const SLOW: std::time::Duration = std::time::Duration::from_secs(5);

/// Notes a slow request when dropped: answered (`status` set) or given up
/// by its client (the handler's future dropped unanswered).
struct SlowWatch {
    started: std::time::Instant,
    method: axum::http::Method,
    uri: axum::http::Uri,
    status: Option<StatusCode>,
}

impl Drop for SlowWatch {
    fn drop(&mut self) {
        let took = self.started.elapsed();
        if took < SLOW {
            return;
        }
        let took_ms = took.as_millis() as u64;
        let (method, path) = (&self.method, self.uri.path());
        match self.status {
            Some(status) => {
                tracing::warn!(%method, path, status = status.as_u16(), took_ms, "slow request")
            }
            None => {
                tracing::warn!(%method, path, took_ms, "request given up by its client unanswered")
            }
        }
    }
}

async fn note_slow(request: Request, next: axum::middleware::Next) -> Response {
    let mut watch = SlowWatch {
        started: std::time::Instant::now(),
        method: request.method().clone(),
        uri: request.uri().clone(),
        status: None,
    };
    let response = next.run(request).await;
    watch.status = Some(response.status());
    response
}

/// `/metrics` alone, without authentication: for `metrics.listen`, an
/// address only a scraper can reach.
pub fn metrics_router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(open_metrics))
        .fallback(not_found)
        .with_state(state)
}

/// Prometheus text exposition for the operator.
async fn operator_metrics(
    _: auth::Operator,
    axum::extract::State(state): axum::extract::State<ApiState>,
) -> Response {
    exposition(&state)
}

async fn open_metrics(axum::extract::State(state): axum::extract::State<ApiState>) -> Response {
    exposition(&state)
}

fn exposition(state: &ApiState) -> Response {
    let (queued, in_flight) = state.app.queue.depth();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.telemetry.render(queued, in_flight),
    )
        .into_response()
}

/// Counts a matched request under its route template and its status.
async fn track_request(
    path: Option<axum::extract::MatchedPath>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let route = path.as_ref().map_or("other", |p| p.as_str());
    telemetry::http_request(route, response.status().as_u16(), started.elapsed());
    response
}

/// When traces are exported: a span per request (health checks and
/// metrics scrapes aside), a child of the caller's `traceparent` if any.
async fn trace_request(
    path: Option<axum::extract::MatchedPath>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let route = path.as_ref().map_or("other", |p| p.as_str());
    if !crate::traces::enabled() || route == "/healthz" || route == "/metrics" {
        return next.run(request).await;
    }
    let span = tracing::info_span!(
        target: crate::traces::TARGET,
        "HTTP",
        otel.name = %format!("{} {route}", request.method()),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = route,
        http.response.status_code = tracing::field::Empty,
    );
    let parent = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    crate::traces::set_parent(&span, parent);
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        crate::traces::set_error(&span, &status.to_string());
    }
    response
}

/// The OpenAPI document alone (tests, `wasmhook openapi`).
pub fn openapi_document(state: &ApiState) -> utoipa::openapi::OpenApi {
    routes(state).into_openapi()
}

/// Every documented route, one router per noun.
fn routes(state: &ApiState) -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(openapi::base())
        .merge(tenants::router())
        .merge(events::router(state))
        .merge(plugins::router(state))
        .merge(subscriptions::router())
        .merge(apps::router(state))
        .merge(portal::router())
        .merge(event_types::router())
        .merge(listen::router())
        .merge(sources::router(state))
        .merge(deliveries::router())
        .merge(keys::router())
        .merge(ops::router())
        .merge(backup::router())
        .merge(svix::router(state))
}

/// The process and its store: a write made durable right now. 503 when the
/// store cannot take one (disk full, I/O errors), so a supervisor or a load
/// balancer sees what ingest sees.
/// Cluster mode: before a request is handled, this node's view catches up
/// with the log (a storage fault if NATS cannot say where it stands).
/// Health and metrics answer from what the node has.
async fn caught_up(
    axum::extract::State(state): axum::extract::State<ApiState>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    if path != "/healthz"
        && path != "/metrics"
        && let Err(e) = state.app.store.sync().await
    {
        return ApiError::from(e).into_response();
    }
    next.run(request).await
}

async fn healthz(axum::extract::State(state): axum::extract::State<ApiState>) -> Response {
    let (queued, in_flight) = state.app.queue.depth();
    let cluster = state.app.ownership.as_ref().map(|o| {
        json!({
            "node": state.app.store.node_id(),
            "partitions_leased": o.count(),
            "partitions_owned": o.owned(),
            "partitions": o.partitions(),
            "mode": if state.app.store.data_partitions().is_some() { "partitioned" } else { "replicas" },
            // Partitioned: the partitions whose data this node holds now.
            "data_partitions": state.app.store.open_partitions(),
            // Requests served from this node's view without asking the
            // control log first (docs/cluster.md, "Read leases").
            "read_lease": state.app.store.reads_under_lease(),
        })
    });
    match state.app.store.check().await {
        Ok(()) => axum::Json(json!({
            "status": "ok",
            "store": "ok",
            "backend": if cluster.is_some() { "nats" } else { "sled" },
            "cluster": cluster,
            "outbox": queued,
            "in_flight": in_flight,
        }))
        .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(
                axum::http::header::RETRY_AFTER,
                STORAGE_RETRY_AFTER_SECS.to_string(),
            )],
            axum::Json(json!({
                "status": "unavailable",
                "store": e.to_string(),
                "outbox": queued,
                "in_flight": in_flight,
            })),
        )
            .into_response(),
    }
}
