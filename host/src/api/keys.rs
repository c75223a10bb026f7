//! `/v1/keys` (tenant key): a tenant's API keys — create another (the
//! secret is shown once), list without secrets, revoke (refused at once).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use jiff::Timestamp;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Tenant;
use super::openapi::ErrorBody;
use super::{ApiError, ApiState};
use crate::store::{ApiKeyRecord, api_key_id, token_hash};

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(revoke))
}

/// An API key as listed: never the secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    /// The first characters of the key, to tell keys apart.
    pub prefix: String,
    pub created_at: Timestamp,
}

/// A new key: the secret is in `api_key`, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewKeyView {
    pub id: String,
    pub prefix: String,
    pub created_at: Timestamp,
    pub api_key: String,
}

/// Issues a new API key for `tenant_id` (stored hashed): `whk_` and 32
/// random bytes, hex. Refused over `limits.keys_per_tenant`.
pub(super) async fn issue_key(state: &ApiState, tenant_id: &str) -> Result<NewKeyView, ApiError> {
    let limit = state.app.settings.bounds.keys_per_tenant;
    if state.app.store.list_api_keys(tenant_id)?.len() >= limit {
        return Err(ApiError::bad(
            "limit_exceeded",
            format!(
                "the tenant has {limit} API keys, the limit (limits.keys_per_tenant); revoke one first"
            ),
        ));
    }
    let key = format!("whk_{}", hex::encode(rand::random::<[u8; 32]>()));
    let record = ApiKeyRecord {
        tenant_id: tenant_id.to_string(),
        prefix: key[..12].to_string(),
        created_at: state.app.clock.now(),
    };
    state.app.store.put_api_key(&key, &record).await?;
    state.app.store.durable().await?;
    Ok(NewKeyView {
        id: api_key_id(&token_hash(&key)),
        prefix: record.prefix,
        created_at: record.created_at,
        api_key: key,
    })
}

/// Create another API key (for rotation: the others keep working until
/// revoked). The key is in the answer only.
#[utoipa::path(post, path = "/v1/keys", tag = "keys", security(("tenant" = [])),
    responses((status = 201, body = NewKeyView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn create(
    tenant: Tenant,
    State(state): State<ApiState>,
) -> Result<(StatusCode, axum::Json<NewKeyView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        axum::Json(issue_key(&state, &tenant.id).await?),
    ))
}

/// The tenant's API keys, oldest first, without their secrets.
#[utoipa::path(get, path = "/v1/keys", tag = "keys", security(("tenant" = [])),
    responses((status = 200, body = Vec<KeyView>), (status = 401, body = ErrorBody)))]
async fn list(
    tenant: Tenant,
    State(state): State<ApiState>,
) -> Result<axum::Json<Vec<KeyView>>, ApiError> {
    Ok(axum::Json(
        state
            .app
            .store
            .list_api_keys(&tenant.id)?
            .into_iter()
            .map(|(id, r)| KeyView {
                id,
                prefix: r.prefix,
                created_at: r.created_at,
            })
            .collect(),
    ))
}

/// Revoke an API key: requests with it are refused (401) from now on. The
/// key used for this request may revoke itself.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys", security(("tenant" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn revoke(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !state.app.store.delete_api_key(&tenant.id, &id).await? {
        return Err(ApiError::NotFound(format!("no API key {id:?}")));
    }
    state.app.store.durable().await?;
    Ok(StatusCode::NO_CONTENT)
}
