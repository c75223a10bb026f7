//! `/v1/ops-endpoint` (tenant key): where the tenant is told that one of its
//! subscriptions was disabled or enabled (see [`crate::notify`]). One per
//! tenant: set (PUT), read, reveal its secret, remove.

use axum::extract::State;
use axum::http::StatusCode;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Tenant;
use super::openapi::ErrorBody;
use super::{ApiError, ApiState, Json};
use crate::notify;
use crate::store::Subscription;
use crate::subscription::{Defaults, SubscriptionInput};

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(put_endpoint, get_endpoint, delete_endpoint))
        .routes(routes!(reveal_secret))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpsEndpointInput {
    /// Where `subscription.disabled` / `subscription.enabled` events are POSTed.
    pub url: String,
    /// A `whsec_…` Standard Webhooks secret; generated when absent (and
    /// kept when the endpoint is set again without one).
    pub secret: Option<String>,
    pub description: Option<String>,
}

/// The tenant's ops endpoint (the secret only when set or revealed).
#[derive(Debug, Serialize, ToSchema)]
pub struct OpsEndpointView {
    pub url: String,
    pub description: Option<String>,
    /// Its notifications' `subscription_id` in the delivery log.
    pub delivery_subscription_id: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl OpsEndpointView {
    fn of(s: Subscription, with_secret: bool) -> Self {
        OpsEndpointView {
            secret: with_secret
                .then(|| s.secrets.first().map(|x| x.secret.clone()))
                .flatten(),
            url: s.url,
            description: s.description,
            delivery_subscription_id: s.id,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpsSecret {
    pub secret: String,
}

/// Set the ops endpoint: signed with Standard Webhooks, retried on the
/// standard schedule, never disabled.
#[utoipa::path(put, path = "/v1/ops-endpoint", tag = "ops", request_body = OpsEndpointInput,
    security(("tenant" = [])),
    responses((status = 200, body = OpsEndpointView), (status = 400, body = ErrorBody)))]
async fn put_endpoint(
    tenant: Tenant,
    State(state): State<ApiState>,
    Json(input): Json<OpsEndpointInput>,
) -> Result<axum::Json<OpsEndpointView>, ApiError> {
    let now = state.app.clock.now();
    let existing = state.app.store.get_ops_endpoint(&tenant.id)?;
    let keep_secrets = input.secret.is_none();
    let settings = &state.app.settings;
    let mut endpoint = SubscriptionInput {
        url: Some(input.url),
        event_types: Some(vec!["subscription.*".into()]),
        description: input.description,
        secret: input.secret,
        ..Default::default()
    }
    .create(
        notify::ops_endpoint_id(&tenant.id),
        &tenant.id,
        Defaults {
            timeout_ms: settings.default_timeout.as_millis() as u64,
            max_in_flight: settings.max_in_flight_per_subscription,
        },
        &settings.bounds,
        now,
    )
    .map_err(|message| ApiError::bad("invalid_ops_endpoint", message))?;
    // Never disabled by failures: it is how the tenant hears of them.
    endpoint.retry.disable_after_failures = 0;
    if let Some(old) = existing {
        endpoint.created_at = old.created_at;
        if keep_secrets {
            endpoint.secrets = old.secrets;
        }
    }
    state.app.store.put_ops_endpoint(&endpoint).await?;
    state.app.store.durable().await?;
    Ok(axum::Json(OpsEndpointView::of(endpoint, true)))
}

fn load(state: &ApiState, tenant: &Tenant) -> Result<Subscription, ApiError> {
    state
        .app
        .store
        .get_ops_endpoint(&tenant.id)?
        .ok_or_else(|| ApiError::NotFound("no ops endpoint is set".into()))
}

/// Read the ops endpoint.
#[utoipa::path(get, path = "/v1/ops-endpoint", tag = "ops", security(("tenant" = [])),
    responses((status = 200, body = OpsEndpointView), (status = 404, body = ErrorBody)))]
async fn get_endpoint(
    tenant: Tenant,
    State(state): State<ApiState>,
) -> Result<axum::Json<OpsEndpointView>, ApiError> {
    Ok(axum::Json(OpsEndpointView::of(
        load(&state, &tenant)?,
        false,
    )))
}

/// Its signing secret.
#[utoipa::path(get, path = "/v1/ops-endpoint/secret", tag = "ops", security(("tenant" = [])),
    responses((status = 200, body = OpsSecret), (status = 404, body = ErrorBody)))]
async fn reveal_secret(
    tenant: Tenant,
    State(state): State<ApiState>,
) -> Result<axum::Json<OpsSecret>, ApiError> {
    let endpoint = load(&state, &tenant)?;
    let secret = endpoint
        .secrets
        .first()
        .map(|s| s.secret.clone())
        .unwrap_or_default();
    Ok(axum::Json(OpsSecret { secret }))
}

/// Remove the ops endpoint (notifications already queued fail as
/// "subscription deleted").
#[utoipa::path(delete, path = "/v1/ops-endpoint", tag = "ops", security(("tenant" = [])),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_endpoint(
    tenant: Tenant,
    State(state): State<ApiState>,
) -> Result<StatusCode, ApiError> {
    if !state.app.store.delete_ops_endpoint(&tenant.id).await? {
        return Err(ApiError::NotFound("no ops endpoint is set".into()));
    }
    state.app.store.durable().await?;
    Ok(StatusCode::NO_CONTENT)
}
