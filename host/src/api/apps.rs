//! `/v1/apps` (tenant key): the tenant's own customers. An application's
//! endpoints are subscriptions with its `app_id`; an event sent to it (its
//! `app`, or `POST /v1/apps/{app}/events`) goes only to them, and an
//! event sent to no application only to the tenant-wide subscriptions.
//! An application is named by its id or its `uid` in every route.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Tenant;
use super::openapi::ErrorBody;
use super::{ApiError, ApiState, Json, limit_body};
use crate::store::{Application, PutApp};
use crate::util::new_id;

pub fn router(state: &ApiState) -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, patch, delete))
        .merge(limit_body(
            OpenApiRouter::new().routes(routes!(send_event)),
            state.max_event_bytes,
        ))
}

/// Most metadata entries an application keeps, and their total size.
const MAX_METADATA_ENTRIES: usize = 50;
const MAX_METADATA_BYTES: usize = 16 * 1024;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApp {
    /// A name for people (1–100 characters).
    pub name: String,
    /// The tenant's own id for it (1–100 of `A-Z a-z 0-9 - _ .`), unique
    /// within the tenant; usable wherever the id is.
    pub uid: Option<String>,
    /// String values by key (at most 50, 16 KiB in all).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppChange {
    pub name: Option<String>,
    /// `null` removes it.
    #[serde(default, deserialize_with = "crate::subscription::double_option")]
    #[schema(value_type = Option<String>)]
    pub uid: Option<Option<String>>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// An application as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AppView {
    pub id: String,
    pub name: String,
    pub uid: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Its endpoints (subscriptions).
    pub subscriptions: usize,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppList {
    pub items: Vec<AppView>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad("invalid_app", message)
}

/// Characters that change how text around them reads without showing:
/// bidirectional overrides and isolates, zero-width ones.
fn invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

pub(super) fn check_name(name: &str) -> Result<(), ApiError> {
    let n = name.chars().count();
    if n == 0 || n > 100 || name.chars().any(|c| c.is_control() || invisible(c)) {
        return Err(bad(
            "name must be 1 to 100 characters, none a control, bidirectional or zero-width one",
        ));
    }
    Ok(())
}

pub(super) fn check_uid(uid: &str) -> Result<(), ApiError> {
    if uid.is_empty()
        || uid.len() > 100
        || !uid.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(bad(
            "uid must be 1 to 100 of A-Z a-z 0-9 - _ ., starting with a letter or digit",
        ));
    }
    if uid.starts_with("app_") {
        return Err(bad("uid must not start with `app_` (an id's prefix)"));
    }
    Ok(())
}

pub(super) fn check_metadata(
    m: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), ApiError> {
    if m.len() > MAX_METADATA_ENTRIES {
        return Err(bad(format!(
            "metadata holds at most {MAX_METADATA_ENTRIES} entries"
        )));
    }
    if m.values().any(|v| !v.is_string()) {
        return Err(bad("metadata values are strings"));
    }
    if serde_json::to_vec(m).map_or(usize::MAX, |b| b.len()) > MAX_METADATA_BYTES {
        return Err(bad("metadata is at most 16 KiB"));
    }
    Ok(())
}

fn view(state: &ApiState, app: Application) -> Result<AppView, ApiError> {
    let subscriptions = state
        .app
        .store
        .routes(&app.tenant_id)?
        .iter()
        .filter(|s| s.app_id.as_deref() == Some(app.id.as_str()))
        .count();
    Ok(AppView {
        id: app.id,
        name: app.name,
        uid: app.uid,
        metadata: app.metadata,
        subscriptions,
        created_at: app.created_at,
        updated_at: app.updated_at,
    })
}

/// The tenant's application named by `app` (its id or uid), or a 404
/// (another tenant's too).
pub(super) fn load(state: &ApiState, tenant_id: &str, app: &str) -> Result<Application, ApiError> {
    state
        .app
        .store
        .get_app(tenant_id, app)?
        .ok_or_else(|| ApiError::NotFound(format!("no application {app:?}")))
}

fn uid_taken(uid: &str) -> ApiError {
    ApiError::Conflict(format!("another application has the uid {uid:?}"))
}

/// Creates an application after the API's checks (name, uid, metadata,
/// the tenant's limit); a uid taken meanwhile is a 409 (checked in the
/// store's change).
pub(super) async fn store_new(
    state: &ApiState,
    tenant_id: &str,
    name: String,
    uid: Option<String>,
    metadata: serde_json::Map<String, serde_json::Value>,
) -> Result<Application, ApiError> {
    check_name(&name)?;
    if let Some(uid) = &uid {
        check_uid(uid)?;
    }
    check_metadata(&metadata)?;
    let limit = state.app.settings.bounds.apps_per_tenant;
    if state.app.store.count_apps(tenant_id)? >= limit {
        return Err(ApiError::bad(
            "limit_exceeded",
            format!("the tenant has {limit} applications, the limit (limits.apps_per_tenant)"),
        ));
    }
    let now = state.app.clock.now();
    let app = Application {
        id: new_id("app"),
        tenant_id: tenant_id.to_string(),
        name,
        uid,
        metadata,
        created_at: now,
        updated_at: now,
    };
    if state.app.store.put_app(&app, true).await? == PutApp::UidTaken {
        return Err(uid_taken(app.uid.as_deref().unwrap_or_default()));
    }
    state.app.store.durable().await?;
    Ok(app)
}

/// Create an application.
#[utoipa::path(post, path = "/v1/apps", tag = "apps", request_body = NewApp, security(("tenant" = [])),
    responses((status = 201, body = AppView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create(
    tenant: Tenant,
    State(state): State<ApiState>,
    Json(input): Json<NewApp>,
) -> Result<(StatusCode, axum::Json<AppView>), ApiError> {
    let app = store_new(
        &state,
        &tenant.id,
        input.name,
        input.uid,
        input.metadata.unwrap_or_default(),
    )
    .await?;
    Ok((StatusCode::CREATED, axum::Json(view(&state, app)?)))
}

/// List the tenant's applications, oldest first.
#[utoipa::path(get, path = "/v1/apps", tag = "apps", security(("tenant" = [])),
    responses((status = 200, body = AppList)))]
async fn list(
    tenant: Tenant,
    State(state): State<ApiState>,
) -> Result<axum::Json<AppList>, ApiError> {
    let mut apps = state.app.store.list_apps(&tenant.id)?;
    apps.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    let items = apps
        .into_iter()
        .map(|a| view(&state, a))
        .collect::<Result<_, _>>()?;
    Ok(axum::Json(AppList { items }))
}

/// Read one application (by id or uid).
#[utoipa::path(get, path = "/v1/apps/{app}", tag = "apps", security(("tenant" = [])),
    params(("app" = String, Path, description = "id or uid")),
    responses((status = 200, body = AppView), (status = 404, body = ErrorBody)))]
async fn get_one(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(app): Path<String>,
) -> Result<axum::Json<AppView>, ApiError> {
    Ok(axum::Json(view(&state, load(&state, &tenant.id, &app)?)?))
}

/// Change an application's name, uid or metadata.
#[utoipa::path(patch, path = "/v1/apps/{app}", tag = "apps", request_body = AppChange, security(("tenant" = [])),
    params(("app" = String, Path, description = "id or uid")),
    responses((status = 200, body = AppView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn patch(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Json(change): Json<AppChange>,
) -> Result<axum::Json<AppView>, ApiError> {
    let mut current = load(&state, &tenant.id, &app)?;
    if let Some(name) = change.name {
        check_name(&name)?;
        current.name = name;
    }
    if let Some(uid) = change.uid {
        if let Some(uid) = &uid {
            check_uid(uid)?;
        }
        current.uid = uid;
    }
    if let Some(metadata) = change.metadata {
        check_metadata(&metadata)?;
        current.metadata = metadata;
    }
    current.updated_at = state.app.clock.now();
    match state.app.store.put_app(&current, false).await? {
        PutApp::Done => {}
        PutApp::UidTaken => return Err(uid_taken(current.uid.as_deref().unwrap_or_default())),
        PutApp::Gone => return Err(ApiError::NotFound(format!("no application {app:?}"))),
    }
    state.app.store.durable().await?;
    Ok(axum::Json(view(&state, current)?))
}

/// Delete an application, its portal links and its endpoints (their
/// pending deliveries fail as "subscription deleted").
#[utoipa::path(delete, path = "/v1/apps/{app}", tag = "apps", security(("tenant" = [])),
    params(("app" = String, Path, description = "id or uid")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(app): Path<String>,
) -> Result<StatusCode, ApiError> {
    let app = load(&state, &tenant.id, &app)?;
    remove(&state, &app).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes an application, then its portal links and its endpoints.
pub(super) async fn remove(state: &ApiState, app: &Application) -> Result<(), ApiError> {
    let tenant_id = &app.tenant_id;
    // The application first: from then on no endpoint can be created for
    // it (an endpoint's creation checks again after storing itself), and
    // its endpoints listed after it are all there are.
    state.app.store.delete_app(tenant_id, &app.id).await?;
    // Its portal links stop working.
    let links = state
        .app
        .store
        .list_portal_links(tenant_id, Some(&app.id))?;
    state.app.store.delete_portal_links(&links).await?;
    let endpoints: Vec<String> = state
        .app
        .store
        .routes(tenant_id)?
        .iter()
        .filter(|s| s.app_id.as_deref() == Some(app.id.as_str()))
        .map(|s| s.id.clone())
        .collect();
    for id in endpoints {
        if state.app.store.delete_subscription(tenant_id, &id).await? {
            state.app.store.drop_windows(tenant_id, &id).await?;
            state.app.deliver.sender.listeners().disconnect(&id);
        }
    }
    state.app.store.durable().await?;
    Ok(())
}

/// Send one event to an application: only its endpoints get it. The body
/// is an event as for `POST /v1/events` (its `app`, if any, must name this
/// application).
#[utoipa::path(post, path = "/v1/apps/{app}/events", tag = "apps", request_body = super::events::EventBody,
    security(("tenant" = [])), params(("app" = String, Path, description = "id or uid")),
    responses((status = 202, body = super::events::Accepted), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn send_event(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Json(body): Json<Box<RawValue>>,
) -> Result<(StatusCode, axum::Json<super::events::Accepted>), ApiError> {
    let app = load(&state, &tenant.id, &app)?;
    super::events::ingest_single(&state, &tenant, &body, Some(app)).await
}
