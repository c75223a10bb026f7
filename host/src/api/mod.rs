//! The admin REST API (axum): one file per noun, each with its `router()`.
//! Handlers are thin: they unpack validated input (auth, JSON, path), call
//! the stage that does the work, and map the result to a status code.
//!
//! Errors are always `{"error": {"code", "message"}}`: 4xx say exactly what
//! is wrong; 5xx say nothing internal and are logged once.

mod auth;
mod deliveries;
mod events;
mod inbound;
mod keys;
pub mod openapi;
mod ops;
mod plugins;
mod sources;
mod subscription_actions;
mod subscriptions;
mod tenants;

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::error;
use utoipa_axum::router::OpenApiRouter;

use crate::app::App;
use crate::telemetry::{self, Telemetry};
pub use auth::RateLimiter;

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    pub app: App,
    /// SHA-256 of the operator token.
    pub admin_token_hash: Arc<Vec<u8>>,
    pub max_event_bytes: usize,
    pub max_plugin_bytes: usize,
    pub rate_limiter: Option<Arc<RateLimiter>>,
    /// Requests per second per source on `/in/{id}` (`sources.rate_limit`).
    pub source_rate_limiter: Option<Arc<RateLimiter>>,
    pub telemetry: Telemetry,
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
        // Cluster mode: a request sees every write acknowledged before it,
        // through whichever node it was made.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            caught_up,
        ))
        .merge(crate::ui::router())
        .fallback(not_found)
        .layer(catch_panics())
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
        .merge(sources::router(state))
        .merge(deliveries::router())
        .merge(keys::router())
        .merge(ops::router())
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
            "partitions": o.partitions(),
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

/// What a client is told to wait after a storage fault.
const STORAGE_RETRY_AFTER_SECS: u64 = 5;

/// The layer that turns a handler's panic into [`panic_response`].
fn catch_panics()
-> tower_http::catch_panic::CatchPanicLayer<fn(Box<dyn std::any::Any + Send + 'static>) -> Response>
{
    tower_http::catch_panic::CatchPanicLayer::custom(panic_response as fn(_) -> _)
}

/// A handler that panicked: logged once (with the request's span), answered
/// 500 in the API's error shape. The process and other requests go on.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    error!(panic = detail, "a request handler panicked");
    let body = json!({ "error": { "code": "internal", "message": "internal error" } });
    (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
}

async fn not_found() -> ApiError {
    telemetry::http_request("other", 404, std::time::Duration::ZERO);
    ApiError::NotFound("no such route".into())
}

/// Every error the API answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("missing or invalid credentials: send `Authorization: Bearer <token>`")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A source's platform request whose signature does not verify.
    #[error("{0}")]
    BadSignature(String),
    /// Well-formed but not what the receiver can use (a platform payload
    /// its adapter cannot normalize).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error("the request body is larger than the {limit}-byte limit")]
    TooLarge { limit: usize },
    /// The body did not arrive within `server.body_read_timeout_secs`.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{message}")]
    TooManyRequests {
        code: &'static str,
        message: String,
        retry_after_secs: u64,
    },
    /// A fault that may clear by itself (storage, a full plugin pool).
    #[error("{message}")]
    Unavailable {
        code: &'static str,
        message: String,
        retry_after_secs: u64,
    },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::BadSignature(_) => StatusCode::UNAUTHORIZED,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } => code,
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::BadSignature(_) => "bad_signature",
            ApiError::Unprocessable { code, .. } => code,
            ApiError::TooLarge { .. } => "payload_too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::TooManyRequests { code, .. } => code,
            ApiError::Unavailable { code, .. } => code,
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        if e.is_unavailable() {
            error!(error = %e, "storage fault");
            ApiError::Unavailable {
                code: "storage_unavailable",
                message: format!("storage is unavailable ({e}); nothing was stored, retry later"),
                retry_after_secs: STORAGE_RETRY_AFTER_SECS,
            }
        } else {
            ApiError::Internal(e.into())
        }
    }
}

impl From<crate::runtime::admission::Busy> for ApiError {
    fn from(e: crate::runtime::admission::Busy) -> Self {
        ApiError::Unavailable {
            code: "plugins_busy",
            retry_after_secs: e.retry_after_secs,
            message: format!("{e}; the request was not accepted: nothing was stored"),
        }
    }
}

impl From<crate::ingest::IngestError> for ApiError {
    fn from(e: crate::ingest::IngestError) -> Self {
        use crate::ingest::IngestError;
        match e {
            IngestError::Store(e) => e.into(),
            IngestError::Busy(e) => e.into(),
            e @ IngestError::TooManyDeliveries { .. } => {
                ApiError::bad("too_many_deliveries", e.to_string())
            }
            e @ IngestError::BacklogFull { .. } => ApiError::TooManyRequests {
                code: "backlog_quota",
                message: e.to_string(),
                retry_after_secs: BACKLOG_RETRY_AFTER_SECS,
            },
        }
    }
}

/// What a tenant over its backlog quota is told to wait: its endpoints
/// drain at their own pace, so this is a polite interval, not a promise.
const BACKLOG_RETRY_AFTER_SECS: u64 = 30;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(e) = &self {
            error!(error = format!("{e:#}"), "internal error");
        }
        let body = json!({ "error": { "code": self.code(), "message": self.to_string() } });
        let mut response = (status, axum::Json(body)).into_response();
        if let ApiError::TooManyRequests {
            retry_after_secs, ..
        }
        | ApiError::Unavailable {
            retry_after_secs, ..
        } = self
        {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                retry_after_secs.to_string().parse().expect("digits"),
            );
        }
        response
    }
}

/// A JSON body whose problems are answered in the API's error shape:
/// malformed JSON, a wrong type, a missing or unknown field → 400 naming it;
/// too large → 413.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(DEFAULT_BODY_LIMIT);
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| body_error(e, limit))?;
        parse_json(&bytes).map(Json)
    }
}

/// The limit a route applies, recorded for the error message.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// axum's body limit of the routes that set none of their own (2 MiB).
pub const DEFAULT_BODY_LIMIT: usize = 2 << 20;

pub fn body_error(e: BytesRejection, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::TooLarge { limit };
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        if let Some(timeout) = c.downcast_ref::<crate::http::BodyTimedOut>() {
            return ApiError::RequestTimeout(timeout.to_string());
        }
        cause = c.source();
    }
    ApiError::bad("bad_body", e.body_text())
}

/// Parses JSON with messages that say where the problem is.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            ApiError::bad("malformed_json", format!("the body is not valid JSON: {e}"))
        }
        _ => ApiError::bad("invalid_body", e.to_string()),
    })
}

/// Adds a body limit to routes: axum's limit plus the number for messages.
pub fn limit_body<S: Clone + Send + Sync + 'static>(
    router: OpenApiRouter<S>,
    limit: usize,
) -> OpenApiRouter<S> {
    router
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::Extension(BodyLimit(limit)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_is_a_500_in_the_error_shape() {
        let app: Router = Router::new()
            .route(
                "/boom",
                get(|| async {
                    if true {
                        panic!("a bug");
                    }
                    "unreachable"
                }),
            )
            .layer(catch_panics());
        let response = app
            .oneshot(
                Request::builder()
                    .uri("/boom")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "internal");
        assert_eq!(body["error"]["message"], "internal error");
    }
}
