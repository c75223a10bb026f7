//! `/v1/tenants` (operator token): create, list, delete, add API keys.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Operator;
use super::{ApiError, ApiState, Json};
use crate::store::Tenant;
use crate::util::new_id;

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create_tenant, list_tenants))
        .routes(routes!(delete_tenant))
        .routes(routes!(add_key))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// A name for people (1–100 characters).
    pub name: String,
}

/// A tenant with a fresh API key (shown this once; stored hashed).
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantWithKey {
    pub id: String,
    pub name: String,
    pub api_key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NewKey {
    pub api_key: String,
}

/// Create a tenant and its first API key.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = NewTenant,
    security(("operator" = [])),
    responses((status = 201, body = TenantWithKey), (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody)))]
async fn create_tenant(
    _: Operator,
    State(state): State<ApiState>,
    Json(input): Json<NewTenant>,
) -> Result<(StatusCode, axum::Json<TenantWithKey>), ApiError> {
    let name = input.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::bad(
            "invalid_name",
            "`name` must be 1 to 100 characters",
        ));
    }
    let tenant = Tenant {
        id: new_id("ten"),
        name: name.to_string(),
        created_at: state.app.clock.now(),
    };
    state.app.store.put_tenant(&tenant).await?;
    let api_key = super::keys::issue_key(&state, &tenant.id).await?.api_key;
    Ok((
        StatusCode::CREATED,
        axum::Json(TenantWithKey {
            id: tenant.id,
            name: tenant.name,
            api_key,
        }),
    ))
}

/// List tenants.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", security(("operator" = [])),
    responses((status = 200, body = Vec<TenantSummary>), (status = 401, body = super::openapi::ErrorBody)))]
async fn list_tenants(
    _: Operator,
    State(state): State<ApiState>,
) -> Result<axum::Json<Vec<TenantSummary>>, ApiError> {
    let store = &state.app.store;
    let mut out = Vec::new();
    for t in store.list_tenants()? {
        out.push(TenantSummary {
            subscriptions: store.count_subscriptions(&t.id)?,
            plugins: store.count_plugins(&t.id)?,
            api_keys: store.list_api_keys(&t.id)?.len(),
            pending_deliveries: state.app.queue.tenant_pending(&t.id),
            tenant: t,
        });
    }
    Ok(axum::Json(out))
}

/// A tenant with what it holds now.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantSummary {
    #[serde(flatten)]
    pub tenant: Tenant,
    pub subscriptions: usize,
    pub plugins: usize,
    pub api_keys: usize,
    /// Deliveries queued or in flight.
    pub pending_deliveries: u64,
}

/// Delete a tenant with all it owns: its keys, subscriptions (and their
/// held window items), plugins, sources (their feeds stop, their URLs
/// answer 404, their dead letters go) and ops endpoint.
#[utoipa::path(delete, path = "/v1/tenants/{id}", tag = "tenants", security(("operator" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = super::openapi::ErrorBody)))]
async fn delete_tenant(
    _: Operator,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let store = &state.app.store;
    if store.get_tenant(&id)?.is_none() {
        return Err(ApiError::NotFound(format!("no tenant {id:?}")));
    }
    // Feeds first, so that none accepts an event for a tenant being deleted.
    for source in store.list_sources(&id)? {
        state.feeds.stop(&source.id);
        state.polls.stop(&source.id);
    }
    // Plugins one by one: their bytes go with the last record that uses them.
    for plugin in store.list_plugins(&id)? {
        if let Some((record, true)) = store.delete_plugin(&id, &plugin.id).await? {
            state.app.plugins.forget(&record.sha256);
        }
    }
    if !store.delete_tenant(&id).await? {
        return Err(ApiError::NotFound(format!("no tenant {id:?}")));
    }
    store.durable().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Issue another API key for a tenant (for rotation: old keys keep working).
#[utoipa::path(post, path = "/v1/tenants/{id}/keys", tag = "tenants", security(("operator" = [])),
    params(("id" = String, Path)),
    responses((status = 201, body = NewKey), (status = 404, body = super::openapi::ErrorBody)))]
async fn add_key(
    _: Operator,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, axum::Json<NewKey>), ApiError> {
    if state.app.store.get_tenant(&id)?.is_none() {
        return Err(ApiError::NotFound(format!("no tenant {id:?}")));
    }
    let api_key = super::keys::issue_key(&state, &id).await?.api_key;
    Ok((StatusCode::CREATED, axum::Json(NewKey { api_key })))
}
