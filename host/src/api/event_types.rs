//! `/v1/event-types` (tenant key): the tenant's event-type catalog — each
//! type's description, an optional JSON Schema of its `data` and an
//! example. A type marked `validate` has its events' `data` checked at
//! ingest (a 400 naming where it fails). Once the catalog has an entry, a
//! subscription's `event_types` must each match a type of it that is not
//! archived.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Tenant;
use super::openapi::ErrorBody;
use super::{ApiError, ApiState, Json};
use crate::event::Envelope;
use crate::store::{EventType, Store};

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, patch, delete))
}

/// A schema or an example is at most this many bytes (as JSON).
const MAX_SCHEMA_BYTES: usize = 64 * 1024;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEventType {
    /// The dotted type (`message.created`).
    pub name: String,
    pub description: Option<String>,
    /// A JSON Schema of the events' `data` (no remote `$ref`).
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    /// An example of `data` (checked against `schema`).
    #[schema(value_type = Option<Object>)]
    pub example: Option<Value>,
    /// Refuse events of this type whose `data` does not match `schema`.
    pub validate: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTypeChange {
    pub description: Option<String>,
    /// `null` removes it.
    #[serde(default, deserialize_with = "crate::subscription::double_option")]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Option<Value>>,
    #[serde(default, deserialize_with = "crate::subscription::double_option")]
    #[schema(value_type = Option<Object>)]
    pub example: Option<Option<Value>>,
    pub validate: Option<bool>,
    /// No longer offered to new subscriptions (events still route).
    pub archived: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventTypeView {
    pub name: String,
    pub description: String,
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub example: Option<Value>,
    pub validate: bool,
    pub archived: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl From<EventType> for EventTypeView {
    fn from(t: EventType) -> Self {
        EventTypeView {
            name: t.name,
            description: t.description,
            schema: t.schema,
            example: t.example,
            validate: t.validate,
            archived: t.archived,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventTypeList {
    pub items: Vec<EventTypeView>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Include archived types too.
    #[serde(default)]
    pub include_archived: bool,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad("invalid_event_type", message)
}

/// Checks a type's schema (it compiles, is small) and its example against
/// it, and the validate flag's need of a schema.
pub(super) fn check(t: &EventType) -> Result<(), ApiError> {
    if t.description.chars().count() > 1000 {
        return Err(bad("description is at most 1000 characters"));
    }
    for (what, v) in [("schema", &t.schema), ("example", &t.example)] {
        if v.as_ref().is_some_and(|v| {
            serde_json::to_vec(v).map_or(usize::MAX, |b| b.len()) > MAX_SCHEMA_BYTES
        }) {
            return Err(bad(format!("{what} is at most 64 KiB")));
        }
    }
    if t.validate && t.schema.is_none() {
        return Err(bad("validate needs a schema"));
    }
    if let Some(schema) = &t.schema {
        let validator = compile(schema)?;
        if let Some(example) = &t.example
            && let Err(e) = validator.validate(example)
        {
            return Err(bad(format!(
                "example does not match the schema: at {:?}: {e}",
                e.instance_path().as_str()
            )));
        }
    }
    Ok(())
}

/// A schema compiled, with no resolution of references outside it.
fn compile(schema: &Value) -> Result<jsonschema::Validator, ApiError> {
    jsonschema::validator_for(schema)
        .map_err(|e| bad(format!("schema is not a valid JSON Schema: {e}")))
}

/// A compiled schema, with the `updated_at` of the type it came from.
type Compiled = (Timestamp, Arc<jsonschema::Validator>);

/// Compiled schemas of `validate` types, by tenant and type, kept while
/// the type is unchanged.
#[derive(Default)]
pub struct Schemas(Mutex<HashMap<(String, String), Compiled>>);

/// Compiled schemas kept at most (then the cache starts again).
const MAX_CACHED: usize = 1024;

impl Schemas {
    /// Refuses an event whose type asks for validation and whose `data`
    /// does not match the schema (a 400 that says where).
    pub fn check(
        &self,
        store: &Store,
        tenant_id: &str,
        event: &Envelope,
        at: &str,
    ) -> Result<(), ApiError> {
        let Some(t) = store.get_event_type(tenant_id, &event.event_type)? else {
            return Ok(());
        };
        let (true, Some(schema)) = (t.validate, &t.schema) else {
            return Ok(());
        };
        let key = (tenant_id.to_string(), t.name.clone());
        let cached = {
            let cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .get(&key)
                .filter(|(at, _)| *at == t.updated_at)
                .map(|(_, v)| v.clone())
        };
        let validator = match cached {
            Some(v) => v,
            None => {
                let v = Arc::new(compile(schema)?);
                let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
                cache.insert(key, (t.updated_at, v.clone()));
                v
            }
        };
        let data: Value = serde_json::from_str(event.data.as_str())
            .map_err(|e| ApiError::bad("invalid_event", format!("{at}: {e}")))?;
        if let Err(e) = validator.validate(&data) {
            return Err(ApiError::bad(
                "invalid_event",
                format!(
                    "{at}: `data` does not match the schema of {}: at {:?}: {e} (schema path {:?})",
                    t.name,
                    e.instance_path().as_str(),
                    e.schema_path().as_str()
                ),
            ));
        }
        Ok(())
    }
}

/// Once the catalog has an entry: each of `patterns` matches a type of it
/// that is not archived (a 400 naming the first that does not).
pub(super) fn check_patterns(
    state: &ApiState,
    tenant_id: &str,
    patterns: &[String],
) -> Result<(), ApiError> {
    let catalog = state.app.store.list_event_types(tenant_id)?;
    if catalog.is_empty() {
        return Ok(());
    }
    for p in patterns {
        let offered = catalog
            .iter()
            .any(|t| !t.archived && crate::route::matches_any(std::slice::from_ref(p), &t.name));
        if !offered {
            return Err(ApiError::bad(
                "invalid_subscription",
                format!(
                    "event_types: {p:?} matches no event type of the catalog that is not archived (GET /v1/event-types)"
                ),
            ));
        }
    }
    Ok(())
}

/// Add a type to the catalog.
#[utoipa::path(post, path = "/v1/event-types", tag = "event-types", request_body = NewEventType, security(("tenant" = [])),
    responses((status = 201, body = EventTypeView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create(
    tenant: Tenant,
    State(state): State<ApiState>,
    Json(input): Json<NewEventType>,
) -> Result<(StatusCode, axum::Json<EventTypeView>), ApiError> {
    let now = state.app.clock.now();
    let t = EventType {
        tenant_id: tenant.id.clone(),
        name: input.name,
        description: input.description.unwrap_or_default(),
        schema: input.schema,
        example: input.example,
        validate: input.validate.unwrap_or(false),
        archived: false,
        created_at: now,
        updated_at: now,
    };
    add(&state, &t).await?;
    Ok((StatusCode::CREATED, axum::Json(t.into())))
}

/// Adds a new type to the catalog: its name, schema and example checked,
/// within the tenant's limit; a 409 if the catalog has it.
pub(super) async fn add(state: &ApiState, t: &EventType) -> Result<(), ApiError> {
    if !crate::event::is_valid_type(&t.name) || t.name.len() > 200 {
        return Err(bad(format!(
            "name {:?} is not a dotted lowercase event type such as \"message.created\"",
            t.name
        )));
    }
    if state
        .app
        .store
        .get_event_type(&t.tenant_id, &t.name)?
        .is_some()
    {
        return Err(ApiError::Conflict(format!(
            "the catalog has {:?} already",
            t.name
        )));
    }
    let limit = state.app.settings.bounds.event_types_per_tenant;
    if state.app.store.count_event_types(&t.tenant_id)? >= limit {
        return Err(ApiError::bad(
            "limit_exceeded",
            format!("the catalog has {limit} types, the limit (limits.event_types_per_tenant)"),
        ));
    }
    check(t)?;
    state.app.store.put_event_type(t).await?;
    state.app.store.durable().await?;
    Ok(())
}

/// The catalog, by name (archived types only with `include_archived`).
#[utoipa::path(get, path = "/v1/event-types", tag = "event-types", security(("tenant" = [])), params(ListQuery),
    responses((status = 200, body = EventTypeList)))]
async fn list(
    tenant: Tenant,
    State(state): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<EventTypeList>, ApiError> {
    let items = state
        .app
        .store
        .list_event_types(&tenant.id)?
        .into_iter()
        .filter(|t| q.include_archived || !t.archived)
        .map(Into::into)
        .collect();
    Ok(axum::Json(EventTypeList { items }))
}

fn load(state: &ApiState, tenant: &Tenant, name: &str) -> Result<EventType, ApiError> {
    state
        .app
        .store
        .get_event_type(&tenant.id, name)?
        .ok_or_else(|| ApiError::NotFound(format!("no event type {name:?} in the catalog")))
}

/// Read one type.
#[utoipa::path(get, path = "/v1/event-types/{name}", tag = "event-types", security(("tenant" = [])),
    params(("name" = String, Path)), responses((status = 200, body = EventTypeView), (status = 404, body = ErrorBody)))]
async fn get_one(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<axum::Json<EventTypeView>, ApiError> {
    Ok(axum::Json(load(&state, &tenant, &name)?.into()))
}

/// Change a type: its description, schema, example, validation, archived.
#[utoipa::path(patch, path = "/v1/event-types/{name}", tag = "event-types", request_body = EventTypeChange,
    security(("tenant" = [])), params(("name" = String, Path)),
    responses((status = 200, body = EventTypeView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn patch(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Json(change): Json<EventTypeChange>,
) -> Result<axum::Json<EventTypeView>, ApiError> {
    let mut t = load(&state, &tenant, &name)?;
    if let Some(d) = change.description {
        t.description = d;
    }
    if let Some(schema) = change.schema {
        t.schema = schema;
    }
    if let Some(example) = change.example {
        t.example = example;
    }
    if let Some(v) = change.validate {
        t.validate = v;
    }
    if let Some(a) = change.archived {
        t.archived = a;
    }
    t.updated_at = state.app.clock.now();
    check(&t)?;
    state.app.store.put_event_type(&t).await?;
    state.app.store.durable().await?;
    Ok(axum::Json(t.into()))
}

/// Remove a type from the catalog (archiving keeps it listed).
#[utoipa::path(delete, path = "/v1/event-types/{name}", tag = "event-types", security(("tenant" = [])),
    params(("name" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !state.app.store.delete_event_type(&tenant.id, &name).await? {
        return Err(ApiError::NotFound(format!(
            "no event type {name:?} in the catalog"
        )));
    }
    state.app.store.durable().await?;
    Ok(StatusCode::NO_CONTENT)
}
