//! Svix endpoints: an application's subscriptions, signing with the `svix`
//! scheme (Svix's headers, the payload alone as the body).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ListResponse, Metadata, Page, SvixError, SvixJson, SvixTenant, invalid};
use crate::api::subscriptions::{SubscriptionInput, store_change, store_new};
use crate::api::{ApiError, ApiState};
use crate::store::{Application, Subscription};

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, upsert, patch, delete))
}

/// Svix's `EndpointIn` (and `EndpointUpsertIn`, which has no `secret`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointIn {
    pub url: String,
    pub description: Option<String>,
    pub uid: Option<String>,
    /// Attempts per second at most (a token bucket).
    #[serde(alias = "rateLimit")]
    pub throttle_rate: Option<u32>,
    pub disabled: Option<bool>,
    /// Null or absent: every event type.
    #[serde(alias = "filterTypes")]
    pub event_types: Option<Vec<String>>,
    pub channels: Option<Vec<String>>,
    /// `whsec_…` (generated when absent).
    pub secret: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Metadata,
    /// Svix's endpoint headers: not offered (refused when set).
    #[schema(value_type = Option<Object>)]
    pub headers: Option<std::collections::BTreeMap<String, String>>,
}

/// Svix's `EndpointPatch`: absent is unchanged, `null` clears.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub description: Option<String>,
    #[serde(default, deserialize_with = "crate::subscription::double_option")]
    #[schema(value_type = Option<String>)]
    pub uid: Option<Option<String>>,
    #[serde(
        default,
        alias = "rateLimit",
        deserialize_with = "crate::subscription::double_option"
    )]
    #[schema(value_type = Option<u32>)]
    pub throttle_rate: Option<Option<u32>>,
    pub disabled: Option<bool>,
    #[serde(
        default,
        alias = "filterTypes",
        deserialize_with = "crate::subscription::double_option"
    )]
    #[schema(value_type = Option<Vec<String>>)]
    pub event_types: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "crate::subscription::double_option")]
    #[schema(value_type = Option<Vec<String>>)]
    pub channels: Option<Option<Vec<String>>>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Metadata,
}

/// Svix's `EndpointOut`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointOut {
    pub id: String,
    pub uid: Option<String>,
    pub url: String,
    pub description: String,
    pub version: u32,
    pub throttle_rate: Option<u32>,
    pub rate_limit: Option<u32>,
    pub disabled: bool,
    pub event_types: Option<Vec<String>>,
    pub filter_types: Option<Vec<String>>,
    pub channels: Option<Vec<String>>,
    #[schema(value_type = Object)]
    pub metadata: std::collections::BTreeMap<String, String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl From<&Subscription> for EndpointOut {
    fn from(s: &Subscription) -> Self {
        let types = (s.event_types != ["*"]).then(|| s.event_types.clone());
        let rate = s.rate_limit.as_ref().map(|r| r.per_second.ceil() as u32);
        EndpointOut {
            id: s.id.clone(),
            uid: s.uid.clone(),
            url: s.url.clone(),
            description: s.description.clone().unwrap_or_default(),
            version: 1,
            throttle_rate: rate,
            rate_limit: rate,
            disabled: !s.enabled,
            event_types: types.clone(),
            filter_types: types,
            channels: (!s.channels.is_empty()).then(|| s.channels.clone()),
            metadata: super::metadata_out(&s.metadata),
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// The application's endpoint named by id or uid, or a 404.
pub(super) fn find(
    state: &ApiState,
    app: &Application,
    endpoint: &str,
) -> Result<Subscription, SvixError> {
    state
        .app
        .store
        .routes(&app.tenant_id)?
        .iter()
        .find(|s| {
            s.app_id.as_deref() == Some(app.id.as_str())
                && (s.id == endpoint || s.uid.as_deref() == Some(endpoint))
        })
        .cloned()
        .ok_or_else(|| SvixError(ApiError::NotFound(format!("no endpoint {endpoint:?}"))))
}

/// Svix's channel names: 1 to 10 of them, each 1 to 128 of
/// `A-Z a-z 0-9 - _ .`.
pub(super) fn check_channels(channels: &[String]) -> Result<(), SvixError> {
    if channels.is_empty() || channels.len() > 10 {
        return Err(invalid("channels", "1 to 10 channels"));
    }
    for c in channels {
        if c.is_empty()
            || c.len() > 128
            || !c
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid(
                "channels",
                format!("{c:?} is not 1 to 128 of A-Z a-z 0-9 - _ ."),
            ));
        }
    }
    Ok(())
}

/// An endpoint uid: as an application's, and unique among the
/// application's endpoints (but `except`).
fn check_uid(
    state: &ApiState,
    app: &Application,
    uid: &str,
    except: Option<&str>,
) -> Result<(), SvixError> {
    crate::api::apps::check_uid(uid)?;
    if uid.starts_with("sub_") {
        return Err(invalid("uid", "must not start with sub_ (an id's prefix)"));
    }
    let taken = state.app.store.routes(&app.tenant_id)?.iter().any(|s| {
        s.app_id.as_deref() == Some(app.id.as_str())
            && s.uid.as_deref() == Some(uid)
            && Some(s.id.as_str()) != except
    });
    if taken {
        return Err(SvixError(ApiError::Conflict(format!(
            "An endpoint with the uid {uid:?} already exists"
        ))));
    }
    Ok(())
}

/// `eventTypes` as wasmhook's patterns (none: every type).
fn patterns(types: Option<Vec<String>>) -> Result<Vec<String>, SvixError> {
    match types {
        None => Ok(vec!["*".into()]),
        Some(t) if t.is_empty() => Err(invalid("eventTypes", "list at least one type, or none")),
        Some(t) => Ok(t),
    }
}

/// The subscription input for what Svix's endpoint sets (the rest is the
/// `svix` scheme and the tenant's defaults).
fn input_of(fields: Value) -> Result<SubscriptionInput, SvixError> {
    serde_json::from_value(fields).map_err(|e| invalid("body", e.to_string()))
}

async fn store_endpoint(
    state: &ApiState,
    app: &Application,
    input: EndpointIn,
) -> Result<Subscription, SvixError> {
    if input.headers.as_ref().is_some_and(|h| !h.is_empty()) {
        return Err(invalid("headers", "endpoint headers are not offered"));
    }
    if let Some(uid) = &input.uid {
        check_uid(state, app, uid, None)?;
    }
    if let Some(c) = &input.channels {
        check_channels(c)?;
    }
    let metadata = super::metadata_map(input.metadata)?;
    let mut fields = json!({
        "url": input.url,
        "event_types": patterns(input.event_types)?,
        "description": input.description.unwrap_or_default(),
        "signature": {"scheme": "svix"},
    });
    if let Some(secret) = input.secret {
        fields["secret"] = secret.into();
    }
    if let Some(rate) = input.throttle_rate {
        fields["rate_limit"] = json!({"per_second": rate});
    }
    let (uid, channels, disabled) = (input.uid, input.channels, input.disabled);
    Ok(store_new(
        state,
        &app.tenant_id,
        input_of(fields)?,
        Some(app.id.clone()),
        |s| {
            s.uid = uid;
            s.channels = channels.unwrap_or_default();
            s.metadata = metadata;
            if disabled == Some(true) {
                s.enabled = false;
                s.disabled_reason = Some("disabled through the API".into());
            }
        },
    )
    .await?)
}

/// Svix: create an endpoint of an application.
#[utoipa::path(post, path = "/api/v1/app/{app_id}/endpoint", tag = "svix", request_body = EndpointIn,
    security(("tenant" = [])), params(("app_id" = String, Path, description = "id or uid")),
    responses((status = 201, body = EndpointOut), (status = 404, description = "no application"),
        (status = 409, description = "uid taken"), (status = 422, description = "invalid")))]
async fn create(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    SvixJson(input): SvixJson<EndpointIn>,
) -> Result<(StatusCode, axum::Json<EndpointOut>), SvixError> {
    let app = super::apps::load(&state, &tenant, &app)?;
    let sub = store_endpoint(&state, &app, input).await?;
    Ok((StatusCode::CREATED, axum::Json(EndpointOut::from(&sub))))
}

/// Svix: list an application's endpoints (newest first by default).
#[utoipa::path(get, path = "/api/v1/app/{app_id}/endpoint", tag = "svix", security(("tenant" = [])),
    params(("app_id" = String, Path, description = "id or uid"), Page),
    responses((status = 200, body = inline(ListResponse<EndpointOut>))))]
async fn list(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Query(page): Query<Page>,
) -> Result<axum::Json<ListResponse<EndpointOut>>, SvixError> {
    let app = super::apps::load(&state, &tenant, &app)?;
    let items = state
        .app
        .store
        .routes(&app.tenant_id)?
        .iter()
        .filter(|s| s.app_id.as_deref() == Some(app.id.as_str()))
        .map(|s| (s.id.clone(), EndpointOut::from(s)))
        .collect();
    Ok(axum::Json(page.slice(items, true)?))
}

/// Svix: get an endpoint (by id or uid).
#[utoipa::path(get, path = "/api/v1/app/{app_id}/endpoint/{endpoint_id}", tag = "svix", security(("tenant" = [])),
    params(("app_id" = String, Path), ("endpoint_id" = String, Path)),
    responses((status = 200, body = EndpointOut), (status = 404, description = "not found")))]
async fn get_one(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path((app, endpoint)): Path<(String, String)>,
) -> Result<axum::Json<EndpointOut>, SvixError> {
    let app = super::apps::load(&state, &tenant, &app)?;
    Ok(axum::Json(EndpointOut::from(&find(
        &state, &app, &endpoint,
    )?)))
}

/// A change to an endpoint: the subscription fields and Svix's own.
struct Change {
    fields: serde_json::Map<String, Value>,
    uid: Option<Option<String>>,
    channels: Option<Vec<String>>,
    metadata: Option<serde_json::Map<String, Value>>,
    disabled: Option<bool>,
}

async fn apply(
    state: &ApiState,
    tenant: &SvixTenant,
    app: &Application,
    current: Subscription,
    change: Change,
) -> Result<Subscription, SvixError> {
    if let Some(Some(uid)) = &change.uid {
        check_uid(state, app, uid, Some(&current.id))?;
    }
    if let Some(c) = change.channels.as_ref().filter(|c| !c.is_empty()) {
        check_channels(c)?;
    }
    let caller = crate::api::auth::Caller::from(&tenant.0);
    let input = input_of(Value::Object(change.fields))?;
    let id = current.id.clone();
    let updated = store_change(state, &caller, current, input, |s| {
        if let Some(uid) = change.uid {
            s.uid = uid;
        }
        if let Some(c) = change.channels {
            s.channels = c;
        }
        if let Some(m) = change.metadata {
            s.metadata = m;
        }
    })
    .await?;
    // As the API's enable and disable: the ops endpoint is told, and
    // enabling resets the failure streak.
    match change.disabled {
        Some(disabled) if disabled == updated.enabled => {
            Ok(crate::api::subscriptions::set_enabled(state, &caller, &id, !disabled).await?)
        }
        _ => Ok(updated),
    }
}

/// Svix: replace an endpoint's settings, or create it (201, with the path
/// as its uid).
#[utoipa::path(put, path = "/api/v1/app/{app_id}/endpoint/{endpoint_id}", tag = "svix", request_body = EndpointIn,
    security(("tenant" = [])), params(("app_id" = String, Path), ("endpoint_id" = String, Path)),
    responses((status = 200, body = EndpointOut), (status = 201, body = EndpointOut), (status = 422, description = "invalid")))]
async fn upsert(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path((app, endpoint)): Path<(String, String)>,
    SvixJson(mut input): SvixJson<EndpointIn>,
) -> Result<(StatusCode, axum::Json<EndpointOut>), SvixError> {
    let app = super::apps::load(&state, &tenant, &app)?;
    let current = match find(&state, &app, &endpoint) {
        Ok(s) => s,
        Err(SvixError(ApiError::NotFound(_))) => {
            input.uid.get_or_insert(endpoint);
            let sub = store_endpoint(&state, &app, input).await?;
            return Ok((StatusCode::CREATED, axum::Json(EndpointOut::from(&sub))));
        }
        Err(e) => return Err(e),
    };
    if input.secret.is_some() || input.headers.is_some() {
        return Err(invalid(
            "secret",
            "PUT does not set the secret or headers; rotate the secret",
        ));
    }
    let mut fields = serde_json::Map::new();
    fields.insert("url".into(), input.url.into());
    fields.insert("event_types".into(), json!(patterns(input.event_types)?));
    fields.insert(
        "description".into(),
        input.description.unwrap_or_default().into(),
    );
    fields.insert(
        "rate_limit".into(),
        input
            .throttle_rate
            .map_or(Value::Null, |r| json!({"per_second": r})),
    );
    let change = Change {
        fields,
        uid: Some(input.uid),
        channels: Some(input.channels.unwrap_or_default()),
        metadata: Some(super::metadata_map(input.metadata)?),
        disabled: Some(input.disabled.unwrap_or(false)),
    };
    let sub = apply(&state, &tenant, &app, current, change).await?;
    Ok((StatusCode::OK, axum::Json(EndpointOut::from(&sub))))
}

/// Svix: change some of an endpoint's settings.
#[utoipa::path(patch, path = "/api/v1/app/{app_id}/endpoint/{endpoint_id}", tag = "svix", request_body = EndpointPatch,
    security(("tenant" = [])), params(("app_id" = String, Path), ("endpoint_id" = String, Path)),
    responses((status = 200, body = EndpointOut), (status = 404, description = "not found"), (status = 422, description = "invalid")))]
async fn patch(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path((app, endpoint)): Path<(String, String)>,
    SvixJson(input): SvixJson<EndpointPatch>,
) -> Result<axum::Json<EndpointOut>, SvixError> {
    let app = super::apps::load(&state, &tenant, &app)?;
    let current = find(&state, &app, &endpoint)?;
    let mut fields = serde_json::Map::new();
    if let Some(url) = input.url {
        fields.insert("url".into(), url.into());
    }
    if let Some(d) = input.description {
        fields.insert("description".into(), d.into());
    }
    if let Some(types) = input.event_types {
        fields.insert("event_types".into(), json!(patterns(types)?));
    }
    if let Some(rate) = input.throttle_rate {
        fields.insert(
            "rate_limit".into(),
            rate.map_or(Value::Null, |r| json!({"per_second": r})),
        );
    }
    let change = Change {
        fields,
        uid: input.uid,
        channels: input.channels.map(Option::unwrap_or_default),
        metadata: input
            .metadata
            .map(|m| super::metadata_map(Some(m)))
            .transpose()?,
        disabled: input.disabled,
    };
    let sub = apply(&state, &tenant, &app, current, change).await?;
    Ok(axum::Json(EndpointOut::from(&sub)))
}

/// Svix: delete an endpoint (its pending deliveries fail as deleted).
#[utoipa::path(delete, path = "/api/v1/app/{app_id}/endpoint/{endpoint_id}", tag = "svix", security(("tenant" = [])),
    params(("app_id" = String, Path), ("endpoint_id" = String, Path)),
    responses((status = 204), (status = 404, description = "not found")))]
async fn delete(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path((app, endpoint)): Path<(String, String)>,
) -> Result<StatusCode, SvixError> {
    let app = super::apps::load(&state, &tenant, &app)?;
    let sub = find(&state, &app, &endpoint)?;
    let store = &state.app.store;
    if store.delete_subscription(&app.tenant_id, &sub.id).await? {
        state.app.deliver.sender.listeners().disconnect(&sub.id);
        store.drop_windows(&app.tenant_id, &sub.id).await?;
    }
    store.durable().await?;
    Ok(StatusCode::NO_CONTENT)
}
