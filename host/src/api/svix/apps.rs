//! Svix applications: wasmhook's applications.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ListResponse, Metadata, Page, SvixError, SvixJson, SvixTenant, invalid};
use crate::api::{ApiError, ApiState};
use crate::store::{Application, PutApp};

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, upsert, patch, delete))
}

/// Svix's `ApplicationIn`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationIn {
    pub name: String,
    pub uid: Option<String>,
    /// Not offered (refused when set): per-endpoint `throttleRate` is.
    pub throttle_rate: Option<u32>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Metadata,
}

/// Svix's `ApplicationPatch`: absent is unchanged, `null` clears.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationPatch {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "crate::subscription::double_option")]
    #[schema(value_type = Option<String>)]
    pub uid: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::subscription::double_option")]
    #[schema(value_type = Option<u32>)]
    pub throttle_rate: Option<Option<u32>>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Metadata,
}

/// Svix's `ApplicationOut`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationOut {
    pub id: String,
    pub uid: Option<String>,
    pub name: String,
    pub throttle_rate: Option<u32>,
    pub rate_limit: Option<u32>,
    #[schema(value_type = Object)]
    pub metadata: std::collections::BTreeMap<String, String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl From<Application> for ApplicationOut {
    fn from(a: Application) -> Self {
        ApplicationOut {
            metadata: super::metadata_out(&a.metadata),
            id: a.id,
            uid: a.uid,
            name: a.name,
            throttle_rate: None,
            rate_limit: None,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct CreateQuery {
    /// Answer the application with this `uid` if there is one (200).
    #[serde(default)]
    pub get_if_exists: bool,
}

/// The tenant's application by id or uid, or Svix's 404.
pub(super) fn load(
    state: &ApiState,
    tenant: &SvixTenant,
    app: &str,
) -> Result<Application, SvixError> {
    Ok(crate::api::apps::load(state, &tenant.0.id, app)?)
}

fn check(name: &str, uid: Option<&str>, throttle: Option<u32>) -> Result<(), SvixError> {
    crate::api::apps::check_name(name)?;
    if let Some(uid) = uid {
        crate::api::apps::check_uid(uid)?;
    }
    check_throttle(throttle)
}

fn check_throttle(throttle: Option<u32>) -> Result<(), SvixError> {
    if throttle.is_some() {
        return Err(invalid(
            "throttleRate",
            "an application's throttle rate is not offered; set an endpoint's throttleRate",
        ));
    }
    Ok(())
}

fn uid_taken(uid: &str) -> SvixError {
    SvixError(ApiError::Conflict(format!(
        "An application with the uid {uid:?} already exists"
    )))
}

/// Creates an application (`/v1`'s checks; a taken uid in Svix's words).
pub(super) async fn store_new(
    state: &ApiState,
    tenant_id: &str,
    input: ApplicationIn,
) -> Result<Application, SvixError> {
    // Name and uid are checked by `/v1`'s creation.
    check_throttle(input.throttle_rate)?;
    let metadata = super::metadata_map(input.metadata)?;
    let uid = input.uid.clone();
    crate::api::apps::store_new(state, tenant_id, input.name, input.uid, metadata)
        .await
        .map_err(|e| match e {
            ApiError::Conflict(_) => uid_taken(uid.as_deref().unwrap_or_default()),
            e => e.into(),
        })
}

/// Svix: create an application (`get_if_exists`: the one with this uid, if any).
#[utoipa::path(post, path = "/api/v1/app", tag = "svix", request_body = ApplicationIn,
    security(("tenant" = [])), params(CreateQuery),
    responses((status = 201, body = ApplicationOut), (status = 200, body = ApplicationOut),
        (status = 409, description = "uid taken"), (status = 422, description = "invalid")))]
async fn create(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Query(q): Query<CreateQuery>,
    SvixJson(input): SvixJson<ApplicationIn>,
) -> Result<(StatusCode, axum::Json<ApplicationOut>), SvixError> {
    if q.get_if_exists
        && let Some(uid) = &input.uid
        && let Some(existing) = state.app.store.get_app(&tenant.0.id, uid)?
        && existing.uid.as_ref() == Some(uid)
    {
        return Ok((StatusCode::OK, axum::Json(existing.into())));
    }
    let app = store_new(&state, &tenant.0.id, input).await?;
    Ok((StatusCode::CREATED, axum::Json(app.into())))
}

/// Svix: list applications (by id, ascending by default).
#[utoipa::path(get, path = "/api/v1/app", tag = "svix", security(("tenant" = [])), params(Page),
    responses((status = 200, body = inline(ListResponse<ApplicationOut>))))]
async fn list(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Query(page): Query<Page>,
) -> Result<axum::Json<ListResponse<ApplicationOut>>, SvixError> {
    let apps = state.app.store.list_apps(&tenant.0.id)?;
    let items = apps
        .into_iter()
        .map(|a| (a.id.clone(), ApplicationOut::from(a)))
        .collect();
    Ok(axum::Json(page.slice(items, false)?))
}

/// Svix: get an application (by id or uid).
#[utoipa::path(get, path = "/api/v1/app/{app_id}", tag = "svix", security(("tenant" = [])),
    params(("app_id" = String, Path, description = "id or uid")),
    responses((status = 200, body = ApplicationOut), (status = 404, description = "not found")))]
async fn get_one(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path(app): Path<String>,
) -> Result<axum::Json<ApplicationOut>, SvixError> {
    Ok(axum::Json(load(&state, &tenant, &app)?.into()))
}

async fn put(state: &ApiState, app: &Application) -> Result<(), SvixError> {
    match state.app.store.put_app(app, false).await? {
        PutApp::Done => {}
        PutApp::UidTaken => return Err(uid_taken(app.uid.as_deref().unwrap_or_default())),
        PutApp::Gone => {
            return Err(SvixError(ApiError::NotFound(format!(
                "no application {:?}",
                app.id
            ))));
        }
    }
    state.app.store.durable().await?;
    Ok(())
}

/// Svix: update an application, or create it (201; the path names its uid).
#[utoipa::path(put, path = "/api/v1/app/{app_id}", tag = "svix", request_body = ApplicationIn,
    security(("tenant" = [])), params(("app_id" = String, Path, description = "id or uid")),
    responses((status = 200, body = ApplicationOut), (status = 201, body = ApplicationOut), (status = 422, description = "invalid")))]
async fn upsert(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    SvixJson(mut input): SvixJson<ApplicationIn>,
) -> Result<(StatusCode, axum::Json<ApplicationOut>), SvixError> {
    let Some(mut current) = state.app.store.get_app(&tenant.0.id, &app)? else {
        input.uid.get_or_insert(app);
        let created = store_new(&state, &tenant.0.id, input).await?;
        return Ok((StatusCode::CREATED, axum::Json(created.into())));
    };
    check(&input.name, input.uid.as_deref(), input.throttle_rate)?;
    current.name = input.name;
    current.uid = input.uid;
    current.metadata = super::metadata_map(input.metadata)?;
    current.updated_at = state.app.clock.now();
    put(&state, &current).await?;
    Ok((StatusCode::OK, axum::Json(current.into())))
}

/// Svix: change some of an application's fields.
#[utoipa::path(patch, path = "/api/v1/app/{app_id}", tag = "svix", request_body = ApplicationPatch,
    security(("tenant" = [])), params(("app_id" = String, Path, description = "id or uid")),
    responses((status = 200, body = ApplicationOut), (status = 404, description = "not found"), (status = 422, description = "invalid")))]
async fn patch(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    SvixJson(input): SvixJson<ApplicationPatch>,
) -> Result<axum::Json<ApplicationOut>, SvixError> {
    let mut current = load(&state, &tenant, &app)?;
    if let Some(name) = input.name {
        current.name = name;
    }
    if let Some(uid) = input.uid {
        current.uid = uid;
    }
    check(
        &current.name,
        current.uid.as_deref(),
        input.throttle_rate.flatten(),
    )?;
    if input.metadata.is_some() {
        current.metadata = super::metadata_map(input.metadata)?;
    }
    current.updated_at = state.app.clock.now();
    put(&state, &current).await?;
    Ok(axum::Json(current.into()))
}

/// Svix: delete an application with its endpoints.
#[utoipa::path(delete, path = "/api/v1/app/{app_id}", tag = "svix", security(("tenant" = [])),
    params(("app_id" = String, Path, description = "id or uid")),
    responses((status = 204), (status = 404, description = "not found")))]
async fn delete(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path(app): Path<String>,
) -> Result<StatusCode, SvixError> {
    let app = load(&state, &tenant, &app)?;
    crate::api::apps::remove(&state, &app).await?;
    Ok(StatusCode::NO_CONTENT)
}
