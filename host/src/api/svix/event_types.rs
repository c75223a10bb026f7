//! Svix event types: the tenant's catalog.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ListResponse, Page, SvixError, SvixJson, SvixTenant, invalid};
use crate::api::{ApiError, ApiState};
use crate::store::EventType;

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create_event_type, list_event_types))
        .routes(routes!(get_event_type, delete_event_type))
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
