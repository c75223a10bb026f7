//! What arrives at a tenant's sources: `POST /in/{id}`, where the platform
//! posts (no API key: the unguessable id names the source, and its
//! signature is checked where the platform signs), and the requests kept as
//! dead letters (`/v1/sources/{id}/dead-letters`: list, read, replay,
//! delete; tenant key).

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Tenant;
use super::openapi::ErrorBody;
use super::sources::load;
use super::{ApiError, ApiState, body_error, limit_body};
use crate::runtime::Header;
use crate::source::{self, DeadLetter, Kind, ReceiveError, Source};

pub fn router(state: &ApiState) -> OpenApiRouter<ApiState> {
    // A platform request may carry a whole day of chats (Hello Client):
    // the batch limit, 64 events' worth of the single-event limit.
    let inbound = limit_body(
        OpenApiRouter::new().routes(routes!(receive)),
        state.max_event_bytes.saturating_mul(64),
    );
    OpenApiRouter::new()
        .routes(routes!(list_dead_letters))
        .routes(routes!(get_dead_letter, delete_dead_letter))
        .routes(routes!(replay_dead_letter))
        .merge(inbound)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// At most this many (1–100, default 50).
    limit: Option<usize>,
    /// The last id of the previous page.
    after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetter>,
    /// Pass as `after` for the next page; absent on the last.
    pub next: Option<String>,
}

/// A source's dead letters, oldest first: requests that verified but could
/// not be normalized, with why.
#[utoipa::path(get, path = "/v1/sources/{id}/dead-letters", tag = "sources", security(("tenant" = [])),
    params(("id" = String, Path), PageParams),
    responses((status = 200, body = DeadLetterPage), (status = 404, body = ErrorBody)))]
async fn list_dead_letters(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<DeadLetterPage>, ApiError> {
    let source = load(&state, &tenant, &id)?;
    let limit = page.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad("invalid_query", "limit is 1 to 100"));
    }
    let mut items =
        state
            .app
            .store
            .list_dead_letters(&source.id, page.after.as_deref(), limit + 1)?;
    let next = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map(|d| d.id.clone()).unwrap_or_default()
    });
    Ok(axum::Json(DeadLetterPage { items, next }))
}

fn load_letter(state: &ApiState, source: &Source, id: &str) -> Result<DeadLetter, ApiError> {
    state
        .app
        .store
        .get_dead_letter(&source.id, id)?
        .ok_or_else(|| ApiError::NotFound(format!("no dead letter {id:?} in source {}", source.id)))
}

/// Read one dead letter (headers, body, error).
#[utoipa::path(get, path = "/v1/sources/{id}/dead-letters/{letter}", tag = "sources", security(("tenant" = [])),
    params(("id" = String, Path), ("letter" = String, Path)),
    responses((status = 200, body = DeadLetter), (status = 404, body = ErrorBody)))]
async fn get_dead_letter(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path((id, letter)): Path<(String, String)>,
) -> Result<axum::Json<DeadLetter>, ApiError> {
    let source = load(&state, &tenant, &id)?;
    Ok(axum::Json(load_letter(&state, &source, &letter)?))
}

/// Drop a dead letter.
#[utoipa::path(delete, path = "/v1/sources/{id}/dead-letters/{letter}", tag = "sources", security(("tenant" = [])),
    params(("id" = String, Path), ("letter" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_dead_letter(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path((id, letter)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let source = load(&state, &tenant, &id)?;
    if !state
        .app
        .store
        .delete_dead_letter(&source.id, &letter)
        .await?
    {
        return Err(ApiError::NotFound(format!("no dead letter {letter:?}")));
    }
    state.app.store.durable().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One event a platform request became.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReceivedEvent {
    pub id: String,
    /// True when the event id had been seen before (a platform retry).
    pub duplicate: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterReplay {
    pub events: Vec<ReceivedEvent>,
}

/// Run a dead letter through the source's adapter again (after fixing the
/// adapter or its config). Accepted: the events are routed and the letter
/// is gone. Failing again: 422 with the new error; the letter stays.
#[utoipa::path(post, path = "/v1/sources/{id}/dead-letters/{letter}/replay", tag = "sources", security(("tenant" = [])),
    params(("id" = String, Path), ("letter" = String, Path)),
    responses((status = 200, body = DeadLetterReplay), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn replay_dead_letter(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path((id, letter)): Path<(String, String)>,
) -> Result<axum::Json<DeadLetterReplay>, ApiError> {
    let source = load(&state, &tenant, &id)?;
    let letter = load_letter(&state, &source, &letter)?;
    let receipt = source::replay_dead_letter(&state.app, &source, &letter).await?;
    Ok(axum::Json(DeadLetterReplay {
        events: receipt
            .events
            .into_iter()
            .map(|r| ReceivedEvent {
                id: r.id,
                duplicate: !r.accepted_new,
            })
            .collect(),
    }))
}

impl From<ReceiveError> for ApiError {
    fn from(e: ReceiveError) -> Self {
        match e {
            ReceiveError::Unauthorized(e) => ApiError::BadSignature(e.to_string()),
            e @ ReceiveError::Unprocessable { .. } => ApiError::Unprocessable {
                code: "unprocessable_payload",
                message: e.to_string(),
            },
            ReceiveError::StillUnprocessable(message) => ApiError::Unprocessable {
                code: "unprocessable_payload",
                message,
            },
            ReceiveError::Busy(e) => e.into(),
            ReceiveError::Ingest(e) => e.into(),
            ReceiveError::Store(e) => e.into(),
        }
    }
}

/// Where a platform posts its webhooks. No API key: the id names the
/// source, and where the platform signs, its signature is checked (401 and
/// nothing kept when it does not verify). Answered `200` once the events
/// are durable, with the body the platform expects (Hello Client:
/// `{"status":"success"}`; otherwise `{"accepted": n}`). `422`: verified
/// but not normalizable (the message names the field; the request is kept
/// as a dead letter). `429`/`503`: not accepted, nothing kept; the
/// platform's retry is answered normally.
#[utoipa::path(post, path = "/in/{id}", tag = "sources",
    params(("id" = String, Path)), request_body(content = Object, content_type = "application/json"),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn receive(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let source = state
        .app
        .store
        .find_source(&id)?
        .ok_or_else(|| ApiError::NotFound(format!("no source {id:?}")))?;
    if source.kind == Kind::Nats {
        return Err(ApiError::NotFound(format!(
            "source {id:?} consumes a NATS subject; it takes no HTTP requests"
        )));
    }
    if source.kind == Kind::Poll {
        return Err(ApiError::NotFound(format!(
            "source {id:?} polls its platform's API; it takes no HTTP requests"
        )));
    }
    if let Some(limiter) = &state.source_rate_limiter {
        limiter.admit(source.id.as_bytes(), 1, |rate, secs| {
            format!("this source takes at most sources.rate_limit = {rate} requests/s; retry in {secs} s")
        })?;
    }
    let body = body.map_err(|e| body_error(e, state.max_event_bytes.saturating_mul(64)))?;
    let headers: Vec<Header> = headers
        .iter()
        .map(|(name, value)| Header {
            name: name.as_str().to_string(),
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
        })
        .collect();
    let receipt = source::receive(&state.app, &source, headers, &body).await?;
    Ok((
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        receipt.reply,
    )
        .into_response())
}
