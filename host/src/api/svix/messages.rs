//! Svix messages: events sent to an application.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ListResponse, SvixError, SvixJson, SvixTenant, invalid};
use crate::api::{ApiError, ApiState};
use crate::event::Envelope;
use crate::store::{Application, StoredEvent};

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one))
}

/// Svix's `MessageIn`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageIn {
    pub event_type: String,
    /// A JSON object, delivered byte for byte as sent.
    #[schema(value_type = Object)]
    pub payload: Box<RawValue>,
    /// Idempotency: the same `eventId` again is a 409.
    pub event_id: Option<String>,
    pub channels: Option<Vec<String>>,
    /// Creates the application when the path names none (its uid must be
    /// the path's).
    #[schema(value_type = Option<Object>)]
    pub application: Option<super::apps::ApplicationIn>,
    /// `rawPayload` (a non-JSON body) is not offered.
    #[schema(value_type = Option<Object>)]
    pub transformations_params: Option<Value>,
    /// Not offered: messages are sent at once.
    pub deliver_at: Option<String>,
}

/// Svix's `MessageOut`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageOut {
    pub id: String,
    pub event_id: Option<String>,
    pub event_type: String,
    /// The payload with `with_content` (the default), else `{}`.
    #[schema(value_type = Object)]
    pub payload: Box<RawValue>,
    pub channels: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub timestamp: Timestamp,
}

/// Ids made from a sender's `idempotency-key` start so, and are never
/// reported as its `eventId`.
const KEYED_PREFIX: &str = "msg_k";

impl MessageOut {
    pub fn of(e: &Envelope, received_at: Timestamp, with_content: bool) -> Self {
        let empty = || RawValue::from_string("{}".into()).expect("{} is JSON");
        MessageOut {
            id: e.id.clone(),
            event_id: (!e.id.starts_with("msg_")).then(|| e.id.clone()),
            event_type: e.event_type.clone(),
            payload: if with_content {
                RawValue::from_string(e.data.as_str().to_string()).unwrap_or_else(|_| empty())
            } else {
                empty()
            },
            channels: (!e.channels.is_empty()).then(|| e.channels.clone()),
            tags: None,
            timestamp: received_at,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ContentQuery {
    /// Include the payload (default true).
    pub with_content: Option<bool>,
}

/// The application's message (by id or `eventId`), or a 404.
pub(super) fn load_message(
    state: &ApiState,
    app: &Application,
    msg: &str,
) -> Result<StoredEvent, SvixError> {
    state
        .app
        .store
        .get_event(&app.tenant_id, msg)?
        .filter(|e| e.event.app.as_deref() == Some(app.id.as_str()))
        .ok_or_else(|| SvixError(ApiError::NotFound(format!("no message {msg:?}"))))
}

/// The application named by the path, or created from the message's
/// `application` (Svix's "create the app on first message").
async fn app_for(
    state: &ApiState,
    tenant: &SvixTenant,
    app: &str,
    input: Option<super::apps::ApplicationIn>,
) -> Result<Application, SvixError> {
    match (super::apps::load(state, tenant, app), input) {
        (Ok(a), _) => Ok(a),
        (Err(SvixError(ApiError::NotFound(_))), Some(mut new)) => {
            if new.uid.as_deref().is_some_and(|u| u != app) {
                return Err(invalid(
                    "application.uid",
                    "must be the path's application id",
                ));
            }
            new.uid = Some(app.to_string());
            super::apps::store_new(state, &tenant.0.id, new).await
        }
        (Err(e), _) => Err(e),
    }
}

/// Svix: send a message to an application's endpoints. Its payload is
/// delivered as sent, signed with Svix's headers. The same `eventId` again
/// is a 409; a retried request (the same `idempotency-key`, which Svix's
/// clients send on every POST) answers the message it made.
#[utoipa::path(post, path = "/api/v1/app/{app_id}/msg", tag = "svix", request_body = MessageIn,
    security(("tenant" = [])), params(("app_id" = String, Path), ContentQuery),
    responses((status = 202, body = MessageOut), (status = 404, description = "no application"),
        (status = 409, description = "eventId sent before"), (status = 422, description = "invalid"),
        (status = 429, description = "rate limited"), (status = 503, description = "try again")))]
async fn create(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Query(q): Query<ContentQuery>,
    headers: HeaderMap,
    SvixJson(input): SvixJson<MessageIn>,
) -> Result<(StatusCode, axum::Json<MessageOut>), SvixError> {
    if input.deliver_at.is_some() {
        return Err(invalid("deliverAt", "scheduled messages are not offered"));
    }
    if input
        .transformations_params
        .as_ref()
        .is_some_and(|t| t.get("rawPayload").is_some())
    {
        return Err(invalid(
            "transformationsParams.rawPayload",
            "non-JSON payloads are not offered; send a JSON object as payload",
        ));
    }
    if let Some(c) = &input.channels {
        super::endpoints::check_channels(c)?;
    }
    if input
        .event_id
        .as_deref()
        .is_some_and(|id| id.starts_with("msg_"))
    {
        return Err(invalid(
            "eventId",
            "must not start with msg_ (an id's prefix)",
        ));
    }
    let key = headers
        .get("idempotency-key")
        .map(|k| k.as_bytes().to_vec());
    // Checked before the application is made (a refused message leaves
    // nothing behind): the event under a provisional id.
    let check = envelope(&state, "msg_check", &input.event_type, &input.payload)?;
    crate::api::events::rate_limit(&state, &tenant.0, 1)?;
    let app = app_for(&state, &tenant, &app, input.application).await?;
    // A retry of this request (Svix's clients resend on a 5xx or a lost
    // answer, with the same key) is the same event: routed once.
    let keyed = input.event_id.is_none();
    let id = match (&input.event_id, &key) {
        (Some(id), _) => id.clone(),
        (None, Some(key)) => {
            let digest = Sha256::digest(
                [tenant.0.id.as_bytes(), b"\0", app.id.as_bytes(), b"\0", key].concat(),
            );
            format!("{KEYED_PREFIX}{}", hex::encode(&digest[..16]))
        }
        (None, None) => crate::util::new_id_at("msg", state.app.clock.now()),
    };
    let mut event = check;
    event.id = id.clone();
    event.source = "svix".into();
    event.channels = input.channels.unwrap_or_default();
    crate::api::events::settle(&state, &tenant.0, &mut event, Some(&app), "body")?;
    let sent = event.data.clone();
    let result = crate::ingest::accept(&state.app, &tenant.0.id, vec![event])
        .await
        .map_err(ApiError::from)?
        .pop()
        .expect("one result per event");
    let stored = load_message(&state, &app, &result.id)?;
    // The same `eventId` is a 409 — unless this is the request that sent
    // it, retried by a Svix client (which says so in `svix-retry-count`,
    // with the same idempotency key), with the same payload.
    let retried = key.is_some() && headers.contains_key("svix-retry-count");
    let same_request = result.accepted_new || keyed || (retried && stored.event.data == sent);
    if !same_request {
        return Err(SvixError(ApiError::Conflict(format!(
            "a message with the eventId {id:?} was sent before"
        ))));
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(MessageOut::of(
            &stored.event,
            stored.received_at,
            q.with_content.unwrap_or(true),
        )),
    ))
}

/// The event a message makes, checked (type, payload) under `id`.
fn envelope(
    state: &ApiState,
    id: &str,
    event_type: &str,
    payload: &RawValue,
) -> Result<Envelope, SvixError> {
    let text = format!(
        r#"{{"id":{},"type":{},"data":{}}}"#,
        serde_json::to_string(id).expect("a string"),
        serde_json::to_string(event_type).expect("a string"),
        payload.get()
    );
    let raw = RawValue::from_string(text).map_err(|e| invalid("payload", e.to_string()))?;
    Ok(crate::api::events::validate(state, &raw, "body")?)
}

/// Svix: get a message (by id or `eventId`).
#[utoipa::path(get, path = "/api/v1/app/{app_id}/msg/{msg_id}", tag = "svix", security(("tenant" = [])),
    params(("app_id" = String, Path), ("msg_id" = String, Path), ContentQuery),
    responses((status = 200, body = MessageOut), (status = 404, description = "not found")))]
async fn get_one(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path((app, msg)): Path<(String, String)>,
    Query(q): Query<ContentQuery>,
) -> Result<axum::Json<MessageOut>, SvixError> {
    let app = super::apps::load(&state, &tenant, &app)?;
    let stored = load_message(&state, &app, &msg)?;
    Ok(axum::Json(MessageOut::of(
        &stored.event,
        stored.received_at,
        q.with_content.unwrap_or(true),
    )))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct MessageQuery {
    pub limit: Option<usize>,
    pub iterator: Option<String>,
    pub with_content: Option<bool>,
    /// Comma-separated types.
    pub event_types: Option<String>,
    pub channel: Option<String>,
    /// Received before this time.
    pub before: Option<String>,
    /// Received after this time.
    pub after: Option<String>,
}

/// Index entries one list request reads at most (a page may come back
/// short, with an `iterator` to go on from).
pub(super) const SCAN_BUDGET: usize = 2000;

/// Svix: an application's messages, newest first.
#[utoipa::path(get, path = "/api/v1/app/{app_id}/msg", tag = "svix", security(("tenant" = [])),
    params(("app_id" = String, Path), MessageQuery),
    responses((status = 200, body = inline(ListResponse<MessageOut>))))]
async fn list(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Query(q): Query<MessageQuery>,
) -> Result<axum::Json<ListResponse<MessageOut>>, SvixError> {
    let app = super::apps::load(&state, &tenant, &app)?;
    let limit = super::page_limit(q.limit)?;
    let types: Vec<String> = q
        .event_types
        .as_deref()
        .map(|t| t.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_default();
    let before = q
        .before
        .as_deref()
        .map(|t| super::parse_time("before", t))
        .transpose()?;
    let after = q
        .after
        .as_deref()
        .map(|t| super::parse_time("after", t))
        .transpose()?;
    let page = state.app.store.events_newest(
        &app.tenant_id,
        q.iterator.as_deref(),
        |e| {
            e.event.app.as_deref() == Some(app.id.as_str())
                && (types.is_empty() || types.contains(&e.event.event_type))
                && q.channel
                    .as_ref()
                    .is_none_or(|c| e.event.channels.contains(c))
                && before.is_none_or(|b| e.received_at < b)
                && after.is_none_or(|a| e.received_at > a)
        },
        limit,
        SCAN_BUDGET,
    )?;
    let with_content = q.with_content.unwrap_or(true);
    Ok(axum::Json(ListResponse {
        data: page
            .events
            .iter()
            .map(|e| MessageOut::of(&e.event, e.received_at, with_content))
            .collect(),
        done: page.next.is_none(),
        iterator: page.next,
        prev_iterator: None,
    }))
}
