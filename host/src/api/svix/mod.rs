//! A Svix-compatible API under `/api/v1/`, on the same listener: a team
//! on Svix points its Svix SDK at wasmhook by changing the server URL.
//! Svix's nouns map onto wasmhook's: an application is an application, an
//! endpoint a subscription of it, a message an event sent to it, an
//! attempt one of a delivery's attempts, an event type an entry of the
//! catalog. The tenant's API key is the bearer token.
//!
//! Answers are in Svix's shapes: camelCase fields, lists as
//! `{data, iterator, prevIterator, done}`, errors as `{code, detail}`
//! (422: `{detail: [{loc, msg, type}]}`). Ids keep wasmhook's forms. The
//! handlers reuse the `/v1` stages (the same checks, limits and scoping);
//! `docs/svix.md` says what maps to what and what is not offered.

mod apps;
mod attempts;
mod endpoint_actions;
mod endpoints;
mod event_types;
mod messages;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;

use super::auth::Tenant;
use super::{ApiError, ApiState};

pub fn router(state: &ApiState) -> OpenApiRouter<ApiState> {
    super::limit_body(
        OpenApiRouter::new()
            .merge(apps::router())
            .merge(endpoints::router())
            .merge(endpoint_actions::router())
            .merge(messages::router())
            .merge(attempts::router())
            .merge(event_types::router())
            .routes(utoipa_axum::routes!(health))
            .route("/api/v1/health/", axum::routing::get(health))
            // What Svix serves and wasmhook does not: a 404 Svix's clients
            // read (`docs/svix.md`, "Not offered").
            .route("/api/v1/{*rest}", axum::routing::any(not_offered)),
        state.max_event_bytes,
    )
}

/// An error in Svix's shape: `{"code", "detail"}`, or for invalid input
/// (422) `{"detail": [{"loc", "msg", "type"}]}` — what Svix's clients
/// parse into their exceptions.
#[derive(Debug)]
pub struct SvixError(ApiError);

impl From<ApiError> for SvixError {
    fn from(e: ApiError) -> Self {
        SvixError(e)
    }
}

impl From<crate::store::StoreError> for SvixError {
    fn from(e: crate::store::StoreError) -> Self {
        SvixError(e.into())
    }
}

impl IntoResponse for SvixError {
    fn into_response(self) -> Response {
        let e = self.0;
        let retry_after = match &e {
            ApiError::TooManyRequests {
                retry_after_secs, ..
            }
            | ApiError::Unavailable {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        };
        let (status, body) = match &e {
            ApiError::BadRequest { message, .. } | ApiError::Unprocessable { message, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"detail": [{"loc": ["body"], "msg": message, "type": "value_error"}]}),
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({"code": "authentication_failed", "detail": "Invalid token"}),
            ),
            ApiError::Internal(err) => {
                tracing::error!(error = %err, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"code": "server_error", "detail": "internal error"}),
                )
            }
            other => (
                other.status(),
                json!({"code": other.code(), "detail": other.to_string()}),
            ),
        };
        let mut response = (status, axum::Json(body)).into_response();
        e.mark_moving(&mut response);
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs.max(1)));
        }
        response
    }
}

/// A 422 on one field, as Svix reports it.
pub(crate) fn invalid(field: &str, msg: impl Into<String>) -> SvixError {
    SvixError(ApiError::bad("invalid", format!("{field}: {}", msg.into())))
}

/// The tenant, by its API key as the bearer token (a portal link's token
/// is refused: the Svix API is the tenant's).
pub struct SvixTenant(pub Tenant);

impl FromRequestParts<ApiState> for SvixTenant {
    type Rejection = SvixError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, SvixError> {
        Tenant::from_request_parts(parts, state)
            .await
            .map(SvixTenant)
            .map_err(SvixError)
    }
}

/// A JSON body; what does not parse is a 422 naming where (an empty body
/// is `{}`: Svix's clients send none where nothing is set).
pub struct SvixJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<ApiState> for SvixJson<T> {
    type Rejection = SvixError;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, SvixError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                SvixError(if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge {
                        limit: state.max_event_bytes,
                    }
                } else {
                    ApiError::bad("invalid", e.body_text())
                })
            })?;
        let text: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
        serde_json::from_slice(text)
            .map(SvixJson)
            .map_err(|e| invalid("body", e.to_string()))
    }
}

/// Svix's list answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListResponse<T> {
    pub data: Vec<T>,
    /// Where the next page starts (`iterator=`); null on an empty page.
    pub iterator: Option<String>,
    pub prev_iterator: Option<String>,
    pub done: bool,
}

/// `limit`, `iterator` and `order` of Svix's list calls (the rest of a
/// query is the handler's).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct Page {
    /// 1 to 250 (default 50).
    pub limit: Option<usize>,
    /// The `iterator` of the previous page.
    pub iterator: Option<String>,
    /// `ascending` or `descending`.
    pub order: Option<String>,
}

impl Page {
    fn limit(&self) -> Result<usize, SvixError> {
        page_limit(self.limit)
    }

    fn descending(&self, default: bool) -> Result<bool, SvixError> {
        match self.order.as_deref() {
            None => Ok(default),
            Some("ascending") => Ok(false),
            Some("descending") => Ok(true),
            Some(o) => Err(invalid(
                "order",
                format!("{o:?} is not ascending or descending"),
            )),
        }
    }

    /// One page of `items` (all of them, each with its cursor key), in
    /// this page's order, after the `iterator`.
    fn slice<T>(
        &self,
        mut items: Vec<(String, T)>,
        default_descending: bool,
    ) -> Result<ListResponse<T>, SvixError> {
        let limit = self.limit()?;
        let descending = self.descending(default_descending)?;
        items.sort_by(|a, b| a.0.cmp(&b.0));
        if descending {
            items.reverse();
        }
        let start = match &self.iterator {
            None => 0,
            Some(after) => items
                .iter()
                .position(|(k, _)| if descending { k < after } else { k > after })
                .unwrap_or(items.len()),
        };
        let rest: Vec<(String, T)> = items.into_iter().skip(start).collect();
        let done = rest.len() <= limit;
        let page: Vec<(String, T)> = rest.into_iter().take(limit).collect();
        let iterator = page.last().map(|(k, _)| k.clone());
        Ok(ListResponse {
            data: page.into_iter().map(|(_, v)| v).collect(),
            iterator,
            // Paging backwards is not offered.
            prev_iterator: None,
            done,
        })
    }
}

/// A list call's `limit`: 1 to 250, 50 when absent.
pub(crate) fn page_limit(limit: Option<usize>) -> Result<usize, SvixError> {
    match limit.unwrap_or(50) {
        n @ 1..=250 => Ok(n),
        _ => Err(invalid("limit", "limit must be 1 to 250")),
    }
}

/// A time as Svix's clients send it: RFC 3339, or without an offset
/// (naive, taken as UTC).
pub(crate) fn parse_time(field: &str, s: &str) -> Result<Timestamp, SvixError> {
    s.parse::<Timestamp>()
        .or_else(|_| format!("{s}Z").parse::<Timestamp>())
        .map_err(|_| invalid(field, format!("{s:?} is not an RFC 3339 time")))
}

/// Svix's `metadata`: string values (null is none).
pub(crate) type Metadata = Option<std::collections::BTreeMap<String, String>>;

pub(crate) fn metadata_map(
    m: Metadata,
) -> Result<serde_json::Map<String, serde_json::Value>, SvixError> {
    let map: serde_json::Map<String, serde_json::Value> = m
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    super::apps::check_metadata(&map)?;
    Ok(map)
}

pub(crate) fn metadata_out(
    m: &serde_json::Map<String, serde_json::Value>,
) -> std::collections::BTreeMap<String, String> {
    m.iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
        .collect()
}

/// A Svix route wasmhook does not serve, in Svix's error shape.
async fn not_offered() -> SvixError {
    SvixError(ApiError::NotFound(
        "this Svix call is not offered by wasmhook (see docs/svix.md)".into(),
    ))
}

/// Svix: health (also with the trailing slash Svix's test suites use):
/// the store takes a write.
#[utoipa::path(get, path = "/api/v1/health", tag = "svix",
    responses((status = 200, description = "healthy"), (status = 503, description = "the store cannot take a write")))]
async fn health(
    axum::extract::State(state): axum::extract::State<ApiState>,
) -> Result<axum::Json<serde_json::Value>, SvixError> {
    state.app.store.check().await.map_err(ApiError::from)?;
    Ok(axum::Json(json!({"database": {"status": "ok"}})))
}
