//! `wasmhook listen`'s two routes (tenant key): the stream of a listen
//! subscription's deliveries, and the local answers coming back (see
//! `deliver::listen`).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Tenant;
use super::openapi::ErrorBody;
use super::{ApiError, ApiState, Json};
use crate::deliver::listen::Answer;
use crate::store::Destination;

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(stream))
        .routes(routes!(answer))
}

/// The tenant's listen subscription, or a 404 (another tenant's too).
fn listen_subscription(state: &ApiState, tenant: &Tenant, id: &str) -> Result<(), ApiError> {
    let sub = super::subscriptions::load(state, &tenant.into(), id)?;
    match sub.destination {
        Some(Destination::Listen { .. }) => Ok(()),
        _ => Err(ApiError::Conflict(format!(
            "subscription {id:?} is not a listen subscription (its destination is not `listen`)"
        ))),
    }
}

/// The deliveries of a listen subscription, as server-sent events: each a
/// `delivery` event whose data is the attempt (`id`, `delivery_id`,
/// `event_type`, `content_type`, `headers`, base64 `body`, `timeout_ms`).
/// One stream per subscription: a new one replaces the old.
#[utoipa::path(get, path = "/v1/subscriptions/{id}/listen", tag = "subscriptions", security(("tenant" = [])),
    params(("id" = String, Path)),
    responses((status = 200, content_type = "text/event-stream", description = "the deliveries, as they are attempted"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn stream(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    listen_subscription(&state, &tenant, &id)?;
    // Checked again while the stream lasts: a revoked key or a subscription
    // deleted or changed away from `listen` ends it.
    let still_valid = {
        let (store, tenant_id, key_hash, id) = (
            state.app.store.clone(),
            tenant.id.clone(),
            tenant.key_hash.clone(),
            id.clone(),
        );
        move || {
            store
                .tenant_for_key_hash(&key_hash)
                .is_ok_and(|t| t.as_deref() == Some(tenant_id.as_str()))
                && store.get_subscription(&tenant_id, &id).is_ok_and(|s| {
                    s.is_some_and(|s| matches!(s.destination, Some(Destination::Listen { .. })))
                })
        }
    };
    let frames = state
        .app
        .deliver
        .sender
        .listeners()
        .connect(&tenant.id, &id, still_valid);
    let ready =
        futures_util::stream::once(async { Ok(Event::default().event("ready").data("{}")) });
    let events = frames.map(|frame| {
        Ok(Event::default()
            .event("delivery")
            .data(serde_json::to_string(&frame).unwrap_or_default()))
    });
    Ok(
        Sse::new(ready.chain(events))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
    )
}

/// What the local URL answered to one delivery of the stream: the
/// attempt's outcome (a 2xx delivers; another status or an `error` is a
/// failed attempt, retried on the subscription's schedule).
#[utoipa::path(post, path = "/v1/subscriptions/{id}/listen/answers", tag = "subscriptions", security(("tenant" = [])),
    params(("id" = String, Path)), request_body = Answer,
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 410, body = ErrorBody)))]
async fn answer(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Json(answer): Json<Answer>,
) -> Result<StatusCode, ApiError> {
    listen_subscription(&state, &tenant, &id)?;
    if answer.status.is_some_and(|s| !(100..=599).contains(&s)) {
        return Err(ApiError::bad(
            "invalid_answer",
            "status must be an HTTP status, 100 to 599",
        ));
    }
    if answer.body.as_ref().is_some_and(|b| b.len() > 1 << 20)
        || answer.error.as_ref().is_some_and(|e| e.len() > 4096)
    {
        return Err(ApiError::bad(
            "invalid_answer",
            "body is at most 1 MiB and error at most 4 KiB",
        ));
    }
    if !state
        .app
        .deliver
        .sender
        .listeners()
        .answer(&id, answer)
        .await
    {
        return Err(ApiError::Gone(
            "no attempt of this subscription is waiting for that answer (it timed out)".into(),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}
