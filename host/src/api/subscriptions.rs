//! `/v1/subscriptions` (tenant key): create, list, read, change, delete,
//! enable/disable, reveal and rotate the secret. Sending a test event,
//! replaying and the windows are in `subscription_actions.rs`.

use crate::notify;
use crate::telemetry::DisableReason;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::openapi::ErrorBody;
use super::secrets::{SecretView, secret_view};
use super::subscription_actions::{TestResult, run_test, test_slot};
pub use super::subscription_views::SubscriptionView;
use super::{ApiError, ApiState, Json};
use crate::runtime::World;
use crate::sign;
use crate::store::{Destination, PluginRef, Subscription};
pub use crate::subscription::{Defaults, SubscriptionInput};
use crate::util::new_id;

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, patch, delete))
        .routes(routes!(enable))
        .routes(routes!(disable))
        .routes(routes!(reveal_secret))
        .routes(routes!(rotate_secret))
        .merge(super::subscription_actions::router())
}

/// A broker destination is never the cluster's own NATS (the guard's
/// other checks run at each connection, as an HTTP endpoint's do).
async fn check_destination(state: &ApiState, sub: &Subscription) -> Result<(), ApiError> {
    if let Some(d) = &sub.destination {
        state
            .app
            .deliver
            .sender
            .buses()
            .check_not_internal(d)
            .await
            .map_err(|e| bad(format!("destination: {e}")))?;
    }
    Ok(())
}

pub(super) fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad("invalid_subscription", message)
}

/// The plugin exists for this tenant, is a transform, and accepts its config.
async fn check_plugin(state: &ApiState, tenant_id: &str, p: &PluginRef) -> Result<(), ApiError> {
    super::plugins::check_plugin_config(
        state,
        tenant_id,
        &p.id,
        &p.config.to_string(),
        World::Transform,
        "invalid_subscription",
        || {
            format!(
                "plugin {} is a source adapter (the source world); a subscription needs a transform plugin",
                p.id
            )
        },
    )
    .await
}

pub(super) fn load(state: &ApiState, tenant: &Caller, id: &str) -> Result<Subscription, ApiError> {
    state
        .app
        .store
        .get_subscription(&tenant.id, id)?
        .filter(|s| tenant.sees(s.app_id.as_deref()))
        .ok_or_else(|| ApiError::NotFound(format!("no subscription {id:?}")))
}

/// Create a subscription. Answers with its signing `secret` (shown here, on
/// reveal and on rotation only).
#[utoipa::path(post, path = "/v1/subscriptions", tag = "subscriptions", request_body = SubscriptionInput,
    security(("tenant" = []), ("portal" = [])),
    responses((status = 201, body = SubscriptionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn create(
    tenant: Caller,
    State(state): State<ApiState>,
    Json(input): Json<SubscriptionInput>,
) -> Result<(StatusCode, axum::Json<SubscriptionView>), ApiError> {
    tenant.may_change()?;
    super::portal::check_input(&tenant, &input, None)?;
    super::portal::check_endpoint_room(&state, &tenant)?;
    let app_id = match (&tenant.portal, &input.app) {
        // A portal link's endpoints are its application's.
        (Some(portal), _) => Some(portal.app_id.clone()),
        (None, Some(app)) => Some(super::apps::load(&state, &tenant.id, app)?.id),
        (None, None) => None,
    };
    let verify = input.verify_on_create.unwrap_or(false);
    // The verification's slot first: a tenant at its cap is told so before
    // anything is stored (the secret is shown only in this answer).
    let slot = verify.then(|| test_slot(&state, &tenant.id)).transpose()?;
    let sub = store_new(&state, &tenant.id, input, app_id, |_| {}).await?;
    let verification = match slot {
        Some(slot) => Some(TestResult {
            deliveries: run_test(&state, &sub, slot).await?,
        }),
        None => None,
    };
    let mut view = SubscriptionView::of_for(&tenant, sub, true, &state);
    view.verification = verification;
    Ok((StatusCode::CREATED, axum::Json(view)))
}

/// Creates a subscription from `input` (of `app_id`; `tweak` sets what
/// the input does not hold) after every check the API makes: the tenant's
/// limit, the catalog, the plugin, the destination; stored durably, and
/// removed again if its application was deleted meanwhile.
pub(super) async fn store_new(
    state: &ApiState,
    tenant_id: &str,
    input: SubscriptionInput,
    app_id: Option<String>,
    tweak: impl FnOnce(&mut Subscription),
) -> Result<Subscription, ApiError> {
    let limit = state.app.settings.bounds.subscriptions_per_tenant;
    if state.app.store.count_subscriptions(tenant_id)? >= limit {
        return Err(ApiError::bad(
            "limit_exceeded",
            format!(
                "the tenant has {limit} subscriptions, the limit (limits.subscriptions_per_tenant); delete one first"
            ),
        ));
    }
    let settings = &state.app.settings;
    let defaults = Defaults {
        timeout_ms: settings.default_timeout.as_millis() as u64,
        max_in_flight: settings.max_in_flight_per_subscription,
    };
    let plugin = input.plugin.clone().flatten();
    if let Some(types) = &input.event_types {
        super::event_types::check_patterns(state, tenant_id, types)?;
    }
    let mut sub = input
        .create(
            new_id("sub"),
            tenant_id,
            defaults,
            &settings.bounds,
            state.app.clock.now(),
        )
        .map_err(bad)?;
    sub.app_id = app_id;
    tweak(&mut sub);
    if let Some(p) = &plugin {
        check_plugin(state, tenant_id, p).await?;
    }
    check_destination(state, &sub).await?;
    state.app.store.put_subscription(&sub).await?;
    if let Some(app) = &sub.app_id
        && state.app.store.get_app(tenant_id, app)?.is_none()
    {
        // Its application was deleted meanwhile (which deletes the
        // application first, then the endpoints it finds).
        state
            .app
            .store
            .delete_subscription(tenant_id, &sub.id)
            .await?;
        return Err(ApiError::NotFound(format!("no application {app:?}")));
    }
    state.app.store.durable().await?;
    if let Some(Destination::Listen { .. }) = &sub.destination {
        // It expires if no CLI connects in time.
        state
            .app
            .deliver
            .sender
            .listeners()
            .created(tenant_id, &sub.id);
    }
    Ok(sub)
}

/// List the tenant's subscriptions.
#[utoipa::path(get, path = "/v1/subscriptions", tag = "subscriptions", security(("tenant" = []), ("portal" = [])),
    responses((status = 200, body = Vec<SubscriptionView>)))]
async fn list(
    tenant: Caller,
    State(state): State<ApiState>,
) -> Result<axum::Json<Vec<SubscriptionView>>, ApiError> {
    let subs = state.app.store.list_subscriptions(&tenant.id)?;
    Ok(axum::Json(
        subs.into_iter()
            .filter(|s| tenant.sees(s.app_id.as_deref()))
            .map(|s| SubscriptionView::of_for(&tenant, s, false, &state))
            .collect(),
    ))
}

/// Read one subscription.
#[utoipa::path(get, path = "/v1/subscriptions/{id}", tag = "subscriptions", security(("tenant" = []), ("portal" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = SubscriptionView), (status = 404, body = ErrorBody)))]
async fn get_one(
    tenant: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<SubscriptionView>, ApiError> {
    Ok(axum::Json(SubscriptionView::of_for(
        &tenant,
        load(&state, &tenant, &id)?,
        false,
        &state,
    )))
}

/// Change any fields of a subscription.
#[utoipa::path(patch, path = "/v1/subscriptions/{id}", tag = "subscriptions", request_body = SubscriptionInput,
    security(("tenant" = []), ("portal" = [])), params(("id" = String, Path)),
    responses((status = 200, body = SubscriptionView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn patch(
    tenant: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Json(input): Json<SubscriptionInput>,
) -> Result<axum::Json<SubscriptionView>, ApiError> {
    let changed = load(&state, &tenant, &id)?;
    tenant.may_change()?;
    super::portal::check_input(&tenant, &input, Some(&changed))?;
    if input.app.is_some() {
        return Err(bad(
            "app is set at creation: an endpoint does not move between applications",
        ));
    }
    if input.verify_on_create.is_some() {
        return Err(bad(
            "verify_on_create is for creation; send a test event with POST /v1/subscriptions/{id}/test",
        ));
    }
    if input.asymmetric.is_some() {
        return Err(bad(
            "asymmetric is for creation; rotate to a new key with POST /v1/subscriptions/{id}/rotate-secret {\"asymmetric\": true}",
        ));
    }
    if let Some(Some(p)) = &input.plugin {
        check_plugin(&state, &tenant.id, p).await?;
    }
    let updated = store_change(&state, &tenant, changed, input, |_| {}).await?;
    Ok(axum::Json(SubscriptionView::of_for(
        &tenant, updated, false, &state,
    )))
}

/// Applies `input` (and `tweak`, for what it does not hold) to `changed`
/// as the API changes a subscription: checked (its new patterns against
/// the catalog, the destination), made durable, and its limits and any
/// `wasmhook listen` stream told.
pub(super) async fn store_change(
    state: &ApiState,
    caller: &Caller,
    mut changed: Subscription,
    input: SubscriptionInput,
    tweak: impl FnOnce(&mut Subscription),
) -> Result<Subscription, ApiError> {
    let id = changed.id.clone();
    if let Some(types) = &input.event_types {
        // Only the patterns it did not have: an endpoint subscribed before
        // the catalog (or to a type since archived) stays editable.
        let new: Vec<String> = types
            .iter()
            .filter(|t| !changed.event_types.contains(t))
            .cloned()
            .collect();
        super::event_types::check_patterns(state, &changed.tenant_id, &new)?;
    }
    input
        .apply(&mut changed, &state.app.settings.bounds)
        .map_err(bad)?;
    tweak(&mut changed);
    check_destination(state, &changed).await?;
    let updated = update(state, caller, &id, move |s| s.take_changes(&changed)).await?;
    state.app.queue.set_limits(&updated);
    if !matches!(updated.destination, Some(Destination::Listen { .. })) {
        state.app.deliver.sender.listeners().disconnect(&id);
    }
    Ok(updated)
}

/// Transactional update, made durable.
pub(super) async fn update(
    state: &ApiState,
    tenant: &Caller,
    id: &str,
    f: impl Fn(&mut Subscription),
) -> Result<Subscription, ApiError> {
    Ok(change(state, tenant, id, f).await?.1)
}

/// [`update`], answering the subscription before and after the change.
async fn change(
    state: &ApiState,
    tenant: &Caller,
    id: &str,
    f: impl Fn(&mut Subscription),
) -> Result<(Subscription, Subscription), ApiError> {
    // Scope first: a portal link changes only its application's endpoints.
    load(state, tenant, id)?;
    tenant.may_change()?;
    let now = state.app.clock.now();
    let changed = state
        .app
        .store
        .change_subscription(&tenant.id, id, |s| {
            f(s);
            s.updated_at = now;
            true
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no subscription {id:?}")))?;
    state.app.store.durable().await?;
    Ok(changed)
}

/// Delete a subscription (its pending deliveries fail as "subscription deleted").
#[utoipa::path(delete, path = "/v1/subscriptions/{id}", tag = "subscriptions", security(("tenant" = []), ("portal" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete(
    tenant: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    load(&state, &tenant, &id)?;
    tenant.may_change()?;
    if !state.app.store.delete_subscription(&tenant.id, &id).await? {
        return Err(ApiError::NotFound(format!("no subscription {id:?}")));
    }
    // A `wasmhook listen` stream of it ends (on this node at once; on
    // another at its next check).
    state.app.deliver.sender.listeners().disconnect(&id);
    state.app.store.drop_windows(&tenant.id, &id).await?;
    state.app.store.durable().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Enable (also after an automatic disable; resets the failure count).
#[utoipa::path(post, path = "/v1/subscriptions/{id}/enable", tag = "subscriptions", security(("tenant" = []), ("portal" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = SubscriptionView), (status = 404, body = ErrorBody)))]
async fn enable(
    tenant: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<SubscriptionView>, ApiError> {
    let s = set_enabled(&state, &tenant, &id, true).await?;
    Ok(axum::Json(SubscriptionView::of_for(
        &tenant, s, false, &state,
    )))
}

/// Disable: no new deliveries; pending ones fail as "subscription disabled".
#[utoipa::path(post, path = "/v1/subscriptions/{id}/disable", tag = "subscriptions", security(("tenant" = []), ("portal" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = SubscriptionView), (status = 404, body = ErrorBody)))]
async fn disable(
    tenant: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<SubscriptionView>, ApiError> {
    let s = set_enabled(&state, &tenant, &id, false).await?;
    Ok(axum::Json(SubscriptionView::of_for(
        &tenant, s, false, &state,
    )))
}

/// Enables or disables; a change of state is told to the tenant's ops
/// endpoint (enabling also resets the failure streak).
pub(super) async fn set_enabled(
    state: &ApiState,
    tenant: &Caller,
    id: &str,
    enabled: bool,
) -> Result<Subscription, ApiError> {
    let (was, s) = change(state, tenant, id, |s| {
        if enabled {
            s.enabled = true;
            s.disabled_reason = None;
            s.consecutive_failures = 0;
        } else if s.enabled {
            s.enabled = false;
            s.disabled_reason = Some("disabled through the API".into());
        }
    })
    .await?;
    if was.enabled != enabled {
        let change = if enabled {
            notify::Change::Enabled
        } else {
            notify::Change::Disabled {
                why: DisableReason::Operator,
                last_error: None,
            }
        };
        notify::subscription_changed(&state.app.queue, &s, change, state.app.clock.now()).await?;
    }
    Ok(s)
}

/// What a rotation signs with next: a given secret, a new asymmetric
/// key, or (no body) a new `whsec_…` secret.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateInput {
    /// The new secret (as on creation).
    secret: Option<String>,
    /// Standard-webhooks: a new ed25519 key (`whsk_…`, `v1a`); the old
    /// secret or key keeps signing alongside for the grace period.
    asymmetric: Option<bool>,
}

/// Show the signing secret(s).
#[utoipa::path(get, path = "/v1/subscriptions/{id}/secret", tag = "subscriptions", security(("tenant" = []), ("portal" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = SecretView), (status = 404, body = ErrorBody)))]
async fn reveal_secret(
    tenant: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<SecretView>, ApiError> {
    let s = load(&state, &tenant, &id)?;
    // A read-only portal link shows no secret.
    tenant.may_change()?;
    Ok(axum::Json(secret_view(&s.secrets, state.app.clock.now())))
}

/// Rotate the secret: a new one signs from now on; the old one keeps signing
/// (standard-webhooks: alongside, space-separated) for the grace period.
#[utoipa::path(post, path = "/v1/subscriptions/{id}/rotate-secret", tag = "subscriptions", security(("tenant" = []), ("portal" = [])),
    params(("id" = String, Path)),
    request_body = Option<RotateInput>,
    responses((status = 200, body = SecretView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn rotate_secret(
    tenant: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<axum::Json<SecretView>, ApiError> {
    let input: RotateInput = super::parse_json_or_default(&body)?;
    let now = state.app.clock.now();
    let grace = jiff::SignedDuration::try_from(state.app.settings.secret_grace).unwrap_or_default();
    let current = load(&state, &tenant, &id)?;
    let fresh = match (input.secret, input.asymmetric.unwrap_or(false)) {
        (Some(_), true) => {
            return Err(bad("give `secret` or `asymmetric`, not both"));
        }
        (Some(secret), false) => {
            crate::subscription::check_secret(&current.signature, &secret).map_err(bad)?;
            secret
        }
        (None, true) if current.signature != sign::Scheme::StandardWebhooks => {
            return Err(bad(
                "asymmetric keys sign standard-webhooks (v1a) only; this subscription signs with another scheme",
            ));
        }
        (None, true) => sign::generate_signing_key(),
        (None, false) => sign::generate_secret(),
    };
    let s = update(&state, &tenant, &id, |s| {
        s.rotate_secret(fresh.clone(), now, grace)
    })
    .await?;
    Ok(axum::Json(secret_view(&s.secrets, now)))
}
