//! Svix messages (events sent to an application), their attempts (the
//! attempts of the event's deliveries), and event types (the catalog).

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

use super::endpoints::find;
use super::{ListResponse, Page, SvixError, SvixJson, SvixTenant, invalid};
use crate::api::{ApiError, ApiState};
use crate::event::Envelope;
use crate::store::{Application, Delivery, EventType, StoredEvent, Subscription};

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one))
        .routes(routes!(attempts_by_message))
        .routes(routes!(attempts_by_endpoint))
        .routes(routes!(resend))
        .routes(routes!(create_event_type, list_event_types))
        .routes(routes!(get_event_type, delete_event_type))
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
fn load_message(state: &ApiState, app: &Application, msg: &str) -> Result<StoredEvent, SvixError> {
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
const SCAN_BUDGET: usize = 2000;

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
    let limit = Page {
        limit: q.limit,
        ..Page::default()
    }
    .limit()?;
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

/// Svix's `MessageAttemptOut`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageAttemptOut {
    /// `<delivery id>.<attempt number>`.
    pub id: String,
    pub msg_id: String,
    pub endpoint_id: String,
    pub url: String,
    pub response: String,
    pub response_status_code: u16,
    pub response_duration_ms: u64,
    /// 0 success, 2 failed (Svix's numbers).
    pub status: u8,
    pub status_text: &'static str,
    /// Always 0 (scheduled): wasmhook does not tell a manual retry's
    /// attempts apart.
    pub trigger_type: u8,
    pub timestamp: Timestamp,
}

fn attempts_of(d: &Delivery, url: &str) -> Vec<MessageAttemptOut> {
    d.attempts
        .iter()
        .enumerate()
        .map(|(n, a)| {
            let ok = a.status.is_some_and(|s| (200..300).contains(&s)) && a.error.is_none();
            MessageAttemptOut {
                id: format!("{}.{}", d.id, n + 1),
                msg_id: d.event_id.clone(),
                endpoint_id: d.subscription_id.clone(),
                url: url.to_string(),
                response: a
                    .response_body
                    .clone()
                    .or_else(|| a.error.clone())
                    .unwrap_or_default(),
                response_status_code: a.status.unwrap_or(0),
                response_duration_ms: a.duration_ms,
                status: if ok { 0 } else { 2 },
                status_text: if ok { "success" } else { "fail" },
                trigger_type: 0,
                timestamp: a.at,
            }
        })
        .rev()
        .collect()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AttemptQuery {
    pub limit: Option<usize>,
    pub iterator: Option<String>,
    /// 0 success, 2 failed.
    pub status: Option<u8>,
    pub endpoint_id: Option<String>,
}

impl AttemptQuery {
    fn keeps(&self, a: &MessageAttemptOut) -> bool {
        self.status.is_none_or(|s| s == a.status)
    }
}

/// The URL an attempt went to: its endpoint's (now).
fn url_of(subs: &[Subscription], id: &str) -> String {
    subs.iter()
        .find(|s| s.id == id)
        .map(|s| s.url.clone())
        .unwrap_or_default()
}

/// Svix: the attempts of a message's deliveries, newest first.
#[utoipa::path(get, path = "/api/v1/app/{app_id}/attempt/msg/{msg_id}", tag = "svix", security(("tenant" = [])),
    params(("app_id" = String, Path), ("msg_id" = String, Path), AttemptQuery),
    responses((status = 200, body = inline(ListResponse<MessageAttemptOut>)), (status = 404, description = "not found")))]
async fn attempts_by_message(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path((app, msg)): Path<(String, String)>,
    Query(q): Query<AttemptQuery>,
) -> Result<axum::Json<ListResponse<MessageAttemptOut>>, SvixError> {
    let app = super::apps::load(&state, &tenant, &app)?;
    let stored = load_message(&state, &app, &msg)?;
    let subs = state.app.store.routes(&app.tenant_id)?;
    let endpoint = q
        .endpoint_id
        .as_deref()
        .map(|e| find(&state, &app, e))
        .transpose()?;
    let mut items = Vec::new();
    for id in &stored.deliveries {
        let Some(d) = state.app.store.get_delivery(id)? else {
            continue;
        };
        if endpoint.as_ref().is_some_and(|e| e.id != d.subscription_id) {
            continue;
        }
        let url = url_of(&subs, &d.subscription_id);
        items.extend(
            attempts_of(&d, &url)
                .into_iter()
                .filter(|a| q.keeps(a))
                .map(|a| (format!("{}.{:020}", a.timestamp.as_millisecond(), a.id), a)),
        );
    }
    let page = Page {
        limit: q.limit,
        iterator: q.iterator.clone(),
        order: None,
    };
    Ok(axum::Json(page.slice(items, true)?))
}

/// Svix: the attempts to an endpoint, newest first.
#[utoipa::path(get, path = "/api/v1/app/{app_id}/attempt/endpoint/{endpoint_id}", tag = "svix", security(("tenant" = [])),
    params(("app_id" = String, Path), ("endpoint_id" = String, Path), AttemptQuery),
    responses((status = 200, body = inline(ListResponse<MessageAttemptOut>)), (status = 404, description = "not found")))]
async fn attempts_by_endpoint(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path((app, endpoint)): Path<(String, String)>,
    Query(q): Query<AttemptQuery>,
) -> Result<axum::Json<ListResponse<MessageAttemptOut>>, SvixError> {
    let app = super::apps::load(&state, &tenant, &app)?;
    let sub = find(&state, &app, &endpoint)?;
    let limit = Page {
        limit: q.limit,
        ..Page::default()
    }
    .limit()?;
    // The iterator names the delivery the last page ended with: a page
    // holds whole deliveries.
    let before = q
        .iterator
        .as_deref()
        .map(|i| i.rsplit_once('.').map_or(i, |(d, _)| d));
    let store = &state.app.store;
    let mut data = Vec::new();
    let mut last = None;
    let mut more = false;
    for (read, id) in store
        .subscription_delivery_ids(&app.tenant_id, &sub.id, before)
        .enumerate()
    {
        if data.len() >= limit || read == SCAN_BUDGET {
            more = true;
            break;
        }
        let Some(d) = store.get_delivery(&id?)? else {
            continue;
        };
        last = Some(format!("{}.0", d.id));
        data.extend(attempts_of(&d, &sub.url).into_iter().filter(|a| q.keeps(a)));
    }
    Ok(axum::Json(ListResponse {
        data,
        iterator: last.clone(),
        prev_iterator: None,
        done: !more,
    }))
}

/// Svix: send a message to one endpoint again now (its delivery, under the
/// same delivery id).
#[utoipa::path(post, path = "/api/v1/app/{app_id}/msg/{msg_id}/endpoint/{endpoint_id}/resend", tag = "svix",
    security(("tenant" = [])), params(("app_id" = String, Path), ("msg_id" = String, Path), ("endpoint_id" = String, Path)),
    responses((status = 202, description = "queued again: `{}`"), (status = 404, description = "not found"),
        (status = 409, description = "not finished, or nothing to send")))]
async fn resend(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path((app, msg, endpoint)): Path<(String, String, String)>,
) -> Result<(StatusCode, axum::Json<Value>), SvixError> {
    let app = super::apps::load(&state, &tenant, &app)?;
    let stored = load_message(&state, &app, &msg)?;
    let sub = find(&state, &app, &endpoint)?;
    let mut found = None;
    for id in &stored.deliveries {
        if let Some(d) = state.app.store.get_delivery(id)?
            && d.subscription_id == sub.id
        {
            found = Some(d);
        }
    }
    let d = found.ok_or_else(|| {
        SvixError(ApiError::NotFound(format!(
            "message {msg:?} was not routed to endpoint {endpoint:?}"
        )))
    })?;
    crate::api::deliveries::requeue(&state, d).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(serde_json::json!({}))))
}

/// Svix's `EventTypeIn`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventTypeIn {
    pub name: String,
    pub description: String,
    pub archived: Option<bool>,
    pub deprecated: Option<bool>,
    /// `{"1": <JSON Schema>}`: the highest version is the catalog's schema.
    #[schema(value_type = Option<Object>)]
    pub schemas: Option<serde_json::Map<String, Value>>,
    pub group_name: Option<String>,
    pub feature_flag: Option<String>,
}

/// Svix's `EventTypeOut`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventTypeOut {
    pub name: String,
    pub description: String,
    pub archived: bool,
    pub deprecated: bool,
    #[schema(value_type = Option<Object>)]
    pub schemas: Option<Value>,
    pub feature_flag: Option<String>,
    pub group_name: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl EventTypeOut {
    fn of(t: EventType, with_content: bool) -> Self {
        EventTypeOut {
            schemas: t
                .schema
                .filter(|_| with_content)
                .map(|s| serde_json::json!({"1": s})),
            name: t.name,
            description: t.description,
            archived: t.archived,
            deprecated: false,
            feature_flag: None,
            group_name: None,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// Svix: add an event type to the catalog (409 if it has it; an archived
/// one comes back).
#[utoipa::path(post, path = "/api/v1/event-type", tag = "svix", request_body = EventTypeIn,
    security(("tenant" = [])),
    responses((status = 201, body = EventTypeOut), (status = 409, description = "exists"), (status = 422, description = "invalid")))]
async fn create_event_type(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    SvixJson(input): SvixJson<EventTypeIn>,
) -> Result<(StatusCode, axum::Json<EventTypeOut>), SvixError> {
    if input.feature_flag.is_some() || input.group_name.is_some() || input.deprecated == Some(true)
    {
        return Err(invalid(
            "featureFlag",
            "feature flags, groups and deprecation are not offered",
        ));
    }
    let schema = match input.schemas {
        None => None,
        Some(versions) => versions
            .into_iter()
            .max_by_key(|(v, _)| v.parse::<u32>().unwrap_or(0))
            .map(|(_, s)| s),
    };
    let store = &state.app.store;
    let now = state.app.clock.now();
    if let Some(mut t) = store.get_event_type(&tenant.0.id, &input.name)?
        && t.archived
    {
        t.archived = input.archived.unwrap_or(false);
        t.description = input.description;
        t.schema = schema;
        t.example = None;
        t.validate = false;
        t.updated_at = now;
        crate::api::event_types::check(&t)?;
        store.put_event_type(&t).await?;
        store.durable().await?;
        return Ok((StatusCode::CREATED, axum::Json(EventTypeOut::of(t, true))));
    }
    let example = schema
        .as_ref()
        .and_then(|s| s.get("examples"))
        .and_then(|e| e.get(0))
        .cloned();
    let t = EventType {
        tenant_id: tenant.0.id.clone(),
        name: input.name,
        description: input.description,
        schema,
        example,
        validate: false,
        archived: input.archived.unwrap_or(false),
        created_at: now,
        updated_at: now,
    };
    match crate::api::event_types::add(&state, &t).await {
        Ok(()) => Ok((StatusCode::CREATED, axum::Json(EventTypeOut::of(t, true)))),
        Err(ApiError::Conflict(_)) => Err(SvixError(ApiError::Conflict(
            "An event_type with this name already exists".into(),
        ))),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EventTypeQuery {
    pub limit: Option<usize>,
    pub iterator: Option<String>,
    pub order: Option<String>,
    #[serde(default)]
    pub include_archived: bool,
    pub with_content: Option<bool>,
}

/// Svix: the catalog, by name.
#[utoipa::path(get, path = "/api/v1/event-type", tag = "svix", security(("tenant" = [])), params(EventTypeQuery),
    responses((status = 200, body = inline(ListResponse<EventTypeOut>))))]
async fn list_event_types(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Query(q): Query<EventTypeQuery>,
) -> Result<axum::Json<ListResponse<EventTypeOut>>, SvixError> {
    let with_content = q.with_content.unwrap_or(true);
    let items = state
        .app
        .store
        .list_event_types(&tenant.0.id)?
        .into_iter()
        .filter(|t| q.include_archived || !t.archived)
        .map(|t| (t.name.clone(), EventTypeOut::of(t, with_content)))
        .collect();
    let page = Page {
        limit: q.limit,
        iterator: q.iterator,
        order: q.order,
    };
    Ok(axum::Json(page.slice(items, false)?))
}

fn load_event_type(
    state: &ApiState,
    tenant: &SvixTenant,
    name: &str,
) -> Result<EventType, SvixError> {
    state
        .app
        .store
        .get_event_type(&tenant.0.id, name)?
        .ok_or_else(|| SvixError(ApiError::NotFound(format!("no event type {name:?}"))))
}

/// Svix: get an event type.
#[utoipa::path(get, path = "/api/v1/event-type/{event_type_name}", tag = "svix", security(("tenant" = [])),
    params(("event_type_name" = String, Path)),
    responses((status = 200, body = EventTypeOut), (status = 404, description = "not found")))]
async fn get_event_type(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<axum::Json<EventTypeOut>, SvixError> {
    Ok(axum::Json(EventTypeOut::of(
        load_event_type(&state, &tenant, &name)?,
        true,
    )))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DeleteQuery {
    /// Remove it from the catalog instead of archiving it.
    #[serde(default)]
    pub expunge: bool,
}

/// Svix: archive an event type (`expunge=true`: remove it).
#[utoipa::path(delete, path = "/api/v1/event-type/{event_type_name}", tag = "svix", security(("tenant" = [])),
    params(("event_type_name" = String, Path), DeleteQuery),
    responses((status = 204), (status = 404, description = "not found")))]
async fn delete_event_type(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode, SvixError> {
    let mut t = load_event_type(&state, &tenant, &name)?;
    let store = &state.app.store;
    if q.expunge {
        store.delete_event_type(&tenant.0.id, &name).await?;
    } else {
        t.archived = true;
        t.updated_at = state.app.clock.now();
        store.put_event_type(&t).await?;
    }
    store.durable().await?;
    Ok(StatusCode::NO_CONTENT)
}
