//! The admin REST API (axum): one file per noun, each with its `router()`.
//! Handlers are thin: they unpack validated input (auth, JSON, path), call
//! the stage that does the work, and map the result to a status code.
//!
//! Errors are always `{"error": {"code", "message"}}`: 4xx say exactly what
//! is wrong; 5xx say nothing internal and are logged once.

mod auth;
mod deliveries;
mod events;
pub mod openapi;
mod plugins;
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
        .fallback(not_found)
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
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
        .merge(deliveries::router())
}

async fn healthz(axum::extract::State(state): axum::extract::State<ApiState>) -> Response {
    let outbox = state.app.store.outbox_len();
    axum::Json(json!({ "status": "ok", "outbox": outbox })).into_response()
}

async fn not_found() -> ApiError {
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
    #[error("the request body is larger than the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("rate limit exceeded; retry in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
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
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } => code,
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooLarge { .. } => "payload_too_large",
            ApiError::TooManyRequests { .. } => "rate_limited",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::Internal(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(e) = &self {
            error!(error = format!("{e:#}"), "internal error");
        }
        let body = json!({ "error": { "code": self.code(), "message": self.to_string() } });
        let mut response = (status, axum::Json(body)).into_response();
        if let ApiError::TooManyRequests { retry_after_secs } = self {
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
            .unwrap_or(usize::MAX);
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| body_error(e, limit))?;
        parse_json(&bytes).map(Json)
    }
}

/// The limit a route applies, recorded for the error message.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

pub fn body_error(e: BytesRejection, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge { limit }
    } else {
        ApiError::bad("bad_body", e.body_text())
    }
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
