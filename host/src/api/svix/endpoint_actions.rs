//! Svix endpoint actions: the signing secret and its rotation, recovering
//! failed deliveries, sending an example.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::endpoints::find;
use super::messages::MessageOut;
use super::{SvixError, SvixJson, SvixTenant, invalid};
use crate::api::subscriptions::update;
use crate::api::{ApiError, ApiState};
use crate::event::{Data, Envelope};
use crate::store::DeliveryStatus;
use crate::util::new_id_at;

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(get_secret))
        .routes(routes!(rotate_secret))
        .routes(routes!(recover))
        .routes(routes!(send_example))
}

/// Svix's `EndpointSecretOut`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointSecretOut {
    /// The secret that signs now (`whsec_…`).
    pub key: String,
}

/// Svix: the endpoint's signing secret.
#[utoipa::path(get, path = "/api/v1/app/{app_id}/endpoint/{endpoint_id}/secret", tag = "svix", security(("tenant" = [])),
    params(("app_id" = String, Path), ("endpoint_id" = String, Path)),
    responses((status = 200, body = EndpointSecretOut), (status = 404, description = "not found")))]
async fn get_secret(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path((app, endpoint)): Path<(String, String)>,
) -> Result<axum::Json<EndpointSecretOut>, SvixError> {
    let app = super::apps::load(&state, &tenant, &app)?;
    let sub = find(&state, &app, &endpoint)?;
    let key = sub
        .secrets
        .first()
        .map(|s| s.secret.clone())
        .unwrap_or_default();
    Ok(axum::Json(EndpointSecretOut { key }))
}

/// Svix's `EndpointSecretRotateIn`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSecretRotateIn {
    /// The new secret (`whsec_…`); generated when absent.
    pub key: Option<String>,
    /// How long the old secret keeps signing alongside (0 to 604800 s;
    /// default `delivery.secret_grace_secs`).
    pub grace_period_seconds: Option<u64>,
}

/// Svix: rotate the signing secret; answers the new one.
#[utoipa::path(post, path = "/api/v1/app/{app_id}/endpoint/{endpoint_id}/secret/rotate", tag = "svix",
    request_body = EndpointSecretRotateIn, security(("tenant" = [])),
    params(("app_id" = String, Path), ("endpoint_id" = String, Path)),
    responses((status = 200, body = EndpointSecretOut), (status = 404, description = "not found"), (status = 422, description = "invalid")))]
async fn rotate_secret(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path((app, endpoint)): Path<(String, String)>,
    SvixJson(input): SvixJson<EndpointSecretRotateIn>,
) -> Result<axum::Json<EndpointSecretOut>, SvixError> {
    let app = super::apps::load(&state, &tenant, &app)?;
    let sub = find(&state, &app, &endpoint)?;
    let fresh = match input.key {
        Some(key) => {
            crate::subscription::check_secret(&sub.signature, &key)
                .map_err(|e| invalid("key", e))?;
            key
        }
        None => crate::sign::generate_secret(),
    };
    let grace = match input.grace_period_seconds {
        Some(s) if s > 604_800 => {
            return Err(invalid("gracePeriodSeconds", "0 to 604800 seconds"));
        }
        Some(s) => SignedDuration::from_secs(s as i64),
        None => SignedDuration::try_from(state.app.settings.secret_grace).unwrap_or_default(),
    };
    let now = state.app.clock.now();
    let caller = crate::api::auth::Caller::from(&tenant.0);
    update(&state, &caller, &sub.id, |s| {
        s.rotate_secret(fresh.clone(), now, grace)
    })
    .await?;
    Ok(axum::Json(EndpointSecretOut { key: fresh }))
}

/// Svix's `RecoverIn`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RecoverIn {
    pub since: String,
    pub until: Option<String>,
}

/// Svix's `RecoverOut`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoverOut {
    pub id: String,
    pub status: &'static str,
    pub task: &'static str,
    pub updated_at: Timestamp,
}

/// Deliveries one recovery sends again at most, and reads at most.
const MAX_RECOVERED: usize = 10_000;
const MAX_READ: usize = 200_000;

/// Svix: send again, under their delivery ids, the endpoint's deliveries
/// created in `[since, until)` that failed for good. Done before the
/// answer (its task is `finished`).
#[utoipa::path(post, path = "/api/v1/app/{app_id}/endpoint/{endpoint_id}/recover", tag = "svix",
    request_body = RecoverIn, security(("tenant" = [])),
    params(("app_id" = String, Path), ("endpoint_id" = String, Path)),
    responses((status = 202, body = RecoverOut), (status = 404, description = "not found"), (status = 422, description = "invalid")))]
async fn recover(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path((app, endpoint)): Path<(String, String)>,
    SvixJson(input): SvixJson<RecoverIn>,
) -> Result<(StatusCode, axum::Json<RecoverOut>), SvixError> {
    let app = super::apps::load(&state, &tenant, &app)?;
    let sub = find(&state, &app, &endpoint)?;
    let now = state.app.clock.now();
    let since = super::parse_time("since", &input.since)?;
    let until = match &input.until {
        Some(u) => super::parse_time("until", u)?,
        None => now,
    };
    if since >= until {
        return Err(invalid("since", "since must be before until"));
    }
    if until.duration_since(since) > SignedDuration::from_hours(14 * 24 + 1) {
        return Err(invalid(
            "since",
            "Cannot recover more than 14 days of messages",
        ));
    }
    let store = &state.app.store;
    let mut failed = Vec::new();
    for (read, id) in store
        .subscription_delivery_ids(&app.tenant_id, &sub.id, None)
        .enumerate()
    {
        if read == MAX_READ {
            break;
        }
        let Some(d) = store.get_delivery(&id?)? else {
            continue;
        };
        if d.created_at < since {
            break;
        }
        if d.created_at < until && d.status == DeliveryStatus::Failed && d.request.is_some() {
            failed.push(d);
            if failed.len() == MAX_RECOVERED {
                break;
            }
        }
    }
    for d in failed {
        match crate::api::deliveries::requeue(&state, d).await {
            // Retried meanwhile, or nothing left to send: nothing to recover.
            Ok(_) | Err(ApiError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(RecoverOut {
            id: new_id_at("qtask", now),
            status: "finished",
            task: "endpoint.recover",
            updated_at: state.app.clock.now(),
        }),
    ))
}

/// Svix's `EventExampleIn`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventExampleIn {
    pub event_type: String,
    /// Only 0: the catalog keeps one example per type.
    pub example_index: Option<u32>,
}

/// Svix: send the endpoint alone an example of an event type (the
/// catalog's example; `svix.ping` sends `{"success": true}`), attempted
/// before the answer and kept in the delivery log.
#[utoipa::path(post, path = "/api/v1/app/{app_id}/endpoint/{endpoint_id}/send-example", tag = "svix",
    request_body = EventExampleIn, security(("tenant" = [])),
    params(("app_id" = String, Path), ("endpoint_id" = String, Path)),
    responses((status = 200, body = MessageOut), (status = 404, description = "not found"), (status = 422, description = "invalid")))]
async fn send_example(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path((app, endpoint)): Path<(String, String)>,
    SvixJson(input): SvixJson<EventExampleIn>,
) -> Result<axum::Json<MessageOut>, SvixError> {
    let app = super::apps::load(&state, &tenant, &app)?;
    let sub = find(&state, &app, &endpoint)?;
    if input.example_index.unwrap_or(0) != 0 {
        return Err(invalid(
            "exampleIndex",
            "the catalog keeps one example per type: 0",
        ));
    }
    let data = if input.event_type == "svix.ping" {
        json!({"success": true})
    } else {
        let t = state
            .app
            .store
            .get_event_type(&app.tenant_id, &input.event_type)?
            .ok_or_else(|| {
                SvixError(ApiError::NotFound(format!(
                    "no event type {:?}",
                    input.event_type
                )))
            })?;
        t.example.ok_or_else(|| {
            SvixError(ApiError::bad(
                "invalid",
                format!("eventType: {} has no example in the catalog", t.name),
            ))
        })?
    };
    if !data.is_object() {
        return Err(invalid("eventType", "the example is not a JSON object"));
    }
    let now = state.app.clock.now();
    let event = Envelope {
        id: new_id_at("msg", now),
        event_type: input.event_type,
        occurred_at: now.to_string(),
        source: "svix".into(),
        data: Data::from_value(&data),
        app: Some(app.id.clone()),
        channels: Vec::new(),
    };
    let slot = crate::api::subscription_actions::test_slot(&state, &app.tenant_id)?;
    crate::api::subscription_actions::run_event(&state, &sub, &event, slot).await?;
    Ok(axum::Json(MessageOut::of(&event, now, true)))
}
