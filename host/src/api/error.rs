//! How the API fails: the one error type and its JSON shape, handler
//! panics answered in that shape, and the body extractors whose
//! rejections are errors of that shape too.

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::error;

use utoipa_axum::router::OpenApiRouter;

use crate::telemetry;

/// What a client is told to wait after a storage fault.
pub(super) const STORAGE_RETRY_AFTER_SECS: u64 = 5;

/// The layer that turns a handler's panic into [`panic_response`].
pub(super) fn catch_panics()
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

pub(super) async fn not_found() -> ApiError {
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
    /// Authenticated, but not allowed to do this (a portal link's token
    /// outside what its link opens).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// What the request refers to existed but is over (an attempt no longer
    /// waiting for its answer).
    #[error("{0}")]
    Gone(String),
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

    pub(super) fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::BadSignature(_) => StatusCode::UNAUTHORIZED,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(super) fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } => code,
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden { code, .. } => code,
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::Gone(_) => "gone",
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

/// On a 503 of a partitioned cluster's node that does not hold the
/// partition: nothing was stored, so the node that forwarded the request
/// here may send it on to the partition's holder (`api/forward`).
pub const PARTITION_MOVING: &str = "x-wasmhook-partition-moving";

impl ApiError {
    /// Marks `response` with [`PARTITION_MOVING`] if this is that refusal
    /// (whichever shape the route answers errors in).
    pub fn mark_moving(&self, response: &mut Response) {
        if matches!(
            self,
            ApiError::Unavailable {
                code: "partition_moving",
                ..
            }
        ) {
            response
                .headers_mut()
                .insert(PARTITION_MOVING, axum::http::HeaderValue::from_static("1"));
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        if let crate::store::StoreError::NotOwner(p) = e {
            // Not a fault: the partition is moving (or the cluster starting).
            tracing::debug!(partition = p, "a request for a partition not held here");
            return ApiError::Unavailable {
                code: "partition_moving",
                message: format!(
                    "partition {p} of the data is moving between nodes; nothing was stored, retry in a second"
                ),
                retry_after_secs: 1,
            };
        }
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
            e @ IngestError::OtherApp { .. } => ApiError::Conflict(e.to_string()),
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
        self.mark_moving(&mut response);
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

/// [`parse_json`], with an empty body as the type's default (a POST whose
/// settings are all optional may come without one).
pub fn parse_json_or_default<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        Ok(T::default())
    } else {
        parse_json(bytes)
    }
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
    use axum::Router;
    use axum::routing::get;
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
