//! `/v1/events` (tenant key): ingest one or a batch, read one back.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Tenant;
use super::openapi::ErrorBody;
use super::{ApiError, ApiState, Json, limit_body};
use crate::event::{Data, Envelope, EventInput};
use crate::ingest;
use crate::store::Application;
use crate::util::new_id_at;

/// Most events in one batch.
pub const MAX_BATCH: usize = 1000;

pub fn router(state: &ApiState) -> OpenApiRouter<ApiState> {
    let single = limit_body(
        OpenApiRouter::new().routes(routes!(ingest_one)),
        state.max_event_bytes,
    );
    // A batch may hold up to 1000 events; its body is capped at 64 events'
    // worth of the single-event limit, and each event at that limit.
    let batch = limit_body(
        OpenApiRouter::new().routes(routes!(ingest_batch)),
        state.max_event_bytes.saturating_mul(64),
    );
    single
        .merge(batch)
        .merge(OpenApiRouter::new().routes(routes!(get_event)))
}

/// An event as sent (`id`, `occurred_at`, `source` optional).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct EventBody {
    id: Option<String>,
    #[serde(rename = "type")]
    event_type: String,
    occurred_at: Option<String>,
    source: Option<String>,
    #[schema(value_type = Object)]
    data: Value,
    /// The application (id or uid) it is for: only its endpoints get it.
    /// Absent: the tenant-wide endpoints.
    app: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Kept as text until each is validated: its size is its text's, and
    /// its `data` is kept as text (see `event::Data`).
    #[schema(value_type = Vec<EventBody>)]
    events: Vec<Box<RawValue>>,
}

/// The answer for one accepted event.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub id: String,
    /// True when this id had been sent before: nothing was routed again.
    pub duplicate: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAccepted {
    pub items: Vec<Accepted>,
}

/// A stored event.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub occurred_at: String,
    pub source: String,
    #[schema(value_type = Object)]
    pub data: Data,
    pub received_at: Timestamp,
    /// The deliveries the event produced.
    pub deliveries: Vec<String>,
    /// The application it was sent to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
}

pub(super) fn validate(state: &ApiState, text: &RawValue, at: &str) -> Result<Envelope, ApiError> {
    // A single event's body is held to the limit by the route's; an event
    // of a batch, by its text as sent.
    if at != "body" && text.get().len() > state.max_event_bytes {
        return Err(ApiError::TooLarge {
            limit: state.max_event_bytes,
        });
    }
    let input: EventInput = serde_json::from_str(text.get())
        .map_err(|e| ApiError::bad("invalid_event", format!("{at}: {e}")))?;
    input
        .validate(state.app.clock.now(), "api", || {
            new_id_at("evt", state.app.clock.now())
        })
        .map_err(|e| ApiError::bad("invalid_event", format!("{at}: {e}")))
}

pub(super) fn rate_limit(state: &ApiState, tenant: &Tenant, n: usize) -> Result<(), ApiError> {
    match &state.rate_limiter {
        Some(limiter) => limiter.admit(&tenant.key_hash, n, |rate, secs| {
            format!(
                "rate limit of server.ingest_rate_limit = {rate} events/s per key exceeded; retry in {secs} s"
            )
        }),
        None => Ok(()),
    }
}

/// Send one event. Answered `202` once the event and its deliveries are on
/// disk; the same `id` again is answered the same way and not routed twice.
/// `429`: the rate limit or the tenant's backlog quota (`Retry-After`);
/// `503`: no plugin slot in time, or a storage fault (`Retry-After`; nothing
/// was accepted, send it again).
#[utoipa::path(post, path = "/v1/events", tag = "events", request_body = EventBody,
    security(("tenant" = [])),
    responses((status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn ingest_one(
    tenant: Tenant,
    State(state): State<ApiState>,
    Json(body): Json<Box<RawValue>>,
) -> Result<(StatusCode, axum::Json<Accepted>), ApiError> {
    ingest_single(&state, &tenant, &body, None).await
}

/// One event, as `POST /v1/events` or sent to `app`
/// (`POST /v1/apps/{app}/events`).
pub(super) async fn ingest_single(
    state: &ApiState,
    tenant: &Tenant,
    body: &RawValue,
    app: Option<Application>,
) -> Result<(StatusCode, axum::Json<Accepted>), ApiError> {
    rate_limit(state, tenant, 1)?;
    let mut event = validate(state, body, "body")?;
    settle(state, tenant, &mut event, app.as_ref(), "body")?;
    let result = ingest::accept(&state.app, &tenant.id, vec![event])
        .await?
        .pop()
        .expect("one result per event");
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Accepted {
            id: result.id,
            duplicate: !result.accepted_new,
        }),
    ))
}

/// What routing needs settled before an event is accepted: its `app`
/// (named by id or uid) as the application's id — or `app`, the route's,
/// which an `app` in the body must agree with — and its `data` checked
/// against its type's schema when the catalog asks for it.
pub(super) fn settle(
    state: &ApiState,
    tenant: &Tenant,
    event: &mut Envelope,
    app: Option<&Application>,
    at: &str,
) -> Result<(), ApiError> {
    event.app = match (app, event.app.take()) {
        (Some(app), Some(named)) if named != app.id && Some(&named) != app.uid.as_ref() => {
            return Err(ApiError::bad(
                "invalid_event",
                format!("{at}: `app` {named:?} is not the application of the route"),
            ));
        }
        (Some(app), _) => Some(app.id.clone()),
        (None, Some(named)) => Some(super::apps::load(state, &tenant.id, &named)?.id),
        (None, None) => None,
    };
    state.schemas.check(&state.app.store, &tenant.id, event, at)
}

/// Send up to 1000 events at once: all valid or none accepted.
#[utoipa::path(post, path = "/v1/events/batch", tag = "events", request_body = Batch,
    security(("tenant" = [])),
    responses((status = 202, body = BatchAccepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn ingest_batch(
    tenant: Tenant,
    State(state): State<ApiState>,
    Json(batch): Json<Batch>,
) -> Result<(StatusCode, axum::Json<BatchAccepted>), ApiError> {
    if batch.events.is_empty() || batch.events.len() > MAX_BATCH {
        return Err(ApiError::bad(
            "invalid_batch",
            format!(
                "a batch holds 1 to {MAX_BATCH} events, not {}",
                batch.events.len()
            ),
        ));
    }
    rate_limit(&state, &tenant, batch.events.len())?;
    let events = batch
        .events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let at = format!("events[{i}]");
            let mut event = validate(&state, &e, &at)?;
            settle(&state, &tenant, &mut event, None, &at)?;
            Ok(event)
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let results = ingest::accept(&state.app, &tenant.id, events).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(BatchAccepted {
            items: results
                .into_iter()
                .map(|r| Accepted {
                    id: r.id,
                    duplicate: !r.accepted_new,
                })
                .collect(),
        }),
    ))
}

/// Read an event back with the ids of its deliveries.
#[utoipa::path(get, path = "/v1/events/{id}", tag = "events", security(("tenant" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = EventView), (status = 404, body = ErrorBody)))]
async fn get_event(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<EventView>, ApiError> {
    let stored = state
        .app
        .store
        .get_event(&tenant.id, &id)?
        .ok_or_else(|| ApiError::NotFound(format!("no event {id:?}")))?;
    let e = stored.event;
    Ok(axum::Json(EventView {
        id: e.id,
        event_type: e.event_type,
        occurred_at: e.occurred_at,
        source: e.source,
        data: e.data,
        received_at: stored.received_at,
        deliveries: stored.deliveries,
        app_id: e.app,
    }))
}
