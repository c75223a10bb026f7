//! `/v1/subscriptions` (tenant key): create, list, read, change, delete,
//! enable/disable, reveal and rotate the secret, send a test event, replay.

use axum::extract::{Path, State};
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
use crate::retry::{PRESETS, RetryPolicy};
use crate::runtime::CallError;
use crate::sign::{self, Scheme};
use crate::store::{Delivery, PluginRef, Secret, Subscription};
use crate::util::new_id;
use crate::window::{self, FlushResult, WindowSpec};
use crate::{deliver, ingest, route};

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, patch, delete))
        .routes(routes!(enable))
        .routes(routes!(disable))
        .routes(routes!(reveal_secret))
        .routes(routes!(rotate_secret))
        .routes(routes!(send_test))
        .routes(routes!(replay))
        .routes(routes!(flush))
        .routes(routes!(window_view))
}

/// Retry settings: a preset, then any field overridden.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryInput {
    /// `standard` (default), `onwebchat`, `convosphere`, `helloclient`.
    pub preset: Option<String>,
    /// Delays before each retry, in seconds (at most 20, each at most 7 days).
    pub schedule_secs: Option<Vec<u64>>,
    /// 0 to 1 (default 0.2: ±20 %).
    pub jitter: Option<f64>,
    pub retry_after_max_secs: Option<u64>,
    pub stop_on_4xx: Option<bool>,
    pub retry_4xx: Option<Vec<u16>>,
    /// Exhausted deliveries in a row that disable the subscription (0: never).
    pub disable_after_failures: Option<u32>,
}

/// A subscription as created (all fields) or changed (any fields).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    /// Where to POST (http or https).
    pub url: Option<String>,
    /// `*`, `message.*`, or exact types.
    pub event_types: Option<Vec<String>>,
    /// `{"id": "builtin:helloclient-lead" | "plg_…", "config": {…}}`; `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    pub plugin: Option<Option<PluginRef>>,
    /// `{"scheme": "standard-webhooks" | "timestamped-hex" | "body-hex", "header"?, …}`.
    #[schema(value_type = Option<Object>)]
    pub signature: Option<Scheme>,
    pub retry: Option<RetryInput>,
    /// A response body required for success, compared as JSON; `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    pub expect_body: Option<Option<Value>>,
    /// Per-attempt timeout (1 to 120000 ms; default 15000).
    pub timeout_ms: Option<u64>,
    /// Attempts in flight at once to this endpoint (1 to 256).
    pub max_in_flight: Option<u32>,
    /// `{"every": "1d", "at": "02:00", "timezone": "UTC", "max_items"?, "max_bytes"?}`:
    /// items the plugin holds are flushed when each window closes; `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<WindowSpec>)]
    pub window: Option<Option<WindowSpec>>,
    pub description: Option<String>,
    /// Use this signing secret instead of a generated one (to keep an
    /// existing receiver's key): `whsec_…` for standard-webhooks, 16 to 200
    /// characters for the hex schemes.
    pub secret: Option<String>,
}

/// `Some(None)` for an explicit null, `None` for an absent field.
fn double_option<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A subscription as the API shows it (the secret only on creation, reveal
/// and rotation).
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionView {
    pub id: String,
    pub url: String,
    pub event_types: Vec<String>,
    #[schema(value_type = Option<Object>)]
    pub plugin: Option<PluginRef>,
    #[schema(value_type = Object)]
    pub signature: Scheme,
    #[schema(value_type = Object)]
    pub retry: RetryPolicy,
    #[schema(value_type = Option<Object>)]
    pub expect_body: Option<Value>,
    pub timeout_ms: u64,
    pub max_in_flight: u32,
    pub window: Option<WindowSpec>,
    pub description: Option<String>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub consecutive_failures: u32,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl SubscriptionView {
    fn of(s: Subscription, with_secret: bool) -> Self {
        SubscriptionView {
            secret: with_secret
                .then(|| s.secrets.first().map(|x| x.secret.clone()))
                .flatten(),
            id: s.id,
            url: s.url,
            event_types: s.event_types,
            plugin: s.plugin,
            signature: s.signature,
            retry: s.retry,
            expect_body: s.expect_body,
            timeout_ms: s.timeout_ms,
            max_in_flight: s.max_in_flight,
            window: s.window,
            description: s.description,
            enabled: s.enabled,
            disabled_reason: s.disabled_reason,
            consecutive_failures: s.consecutive_failures,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad("invalid_subscription", message)
}

fn resolve_retry(input: RetryInput) -> Result<RetryPolicy, ApiError> {
    let preset = input.preset.as_deref().unwrap_or("standard");
    let mut p = RetryPolicy::preset(preset).ok_or_else(|| {
        bad(format!(
            "retry.preset {preset:?} is unknown; use one of {}",
            PRESETS.join(", ")
        ))
    })?;
    if let Some(s) = input.schedule_secs {
        if s.len() > 20 || s.iter().any(|d| *d > 7 * 24 * 3600) {
            return Err(bad(
                "retry.schedule_secs: at most 20 delays, each at most 604800 s (7 days)",
            ));
        }
        p.schedule_secs = s;
        p.preset = None;
    }
    if let Some(j) = input.jitter {
        if !(0.0..=1.0).contains(&j) {
            return Err(bad("retry.jitter must be between 0 and 1"));
        }
        p.jitter = j;
    }
    if let Some(v) = input.retry_after_max_secs {
        p.retry_after_max_secs = v;
    }
    if let Some(v) = input.stop_on_4xx {
        p.stop_on_4xx = v;
    }
    if let Some(v) = input.retry_4xx {
        if v.iter().any(|c| !(400..500).contains(c)) {
            return Err(bad("retry.retry_4xx lists 4xx status codes only"));
        }
        p.retry_4xx = v;
    }
    if let Some(v) = input.disable_after_failures {
        p.disable_after_failures = v;
    }
    Ok(p)
}

fn check_secret(scheme: &Scheme, secret: &str) -> Result<(), ApiError> {
    match scheme {
        Scheme::StandardWebhooks => sign::standard_key(secret)
            .map(|_| ())
            .map_err(|e| bad(format!("secret: {e}"))),
        _ if (16..=200).contains(&secret.len()) && secret.chars().all(|c| c.is_ascii_graphic()) => {
            Ok(())
        }
        _ => Err(bad("secret: 16 to 200 printable ASCII characters")),
    }
}

/// Applies `input` to `sub`, validating every field it sets; runs the
/// plugin's `check-config` when the plugin or its config changed.
async fn apply(
    state: &ApiState,
    sub: &mut Subscription,
    input: SubscriptionInput,
) -> Result<(), ApiError> {
    if let Some(url) = input.url {
        match reqwest::Url::parse(&url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => return Err(bad(format!("url {url:?} is not an http(s) URL"))),
        }
        sub.url = url;
    }
    if let Some(types) = input.event_types {
        if types.is_empty() {
            return Err(bad(
                "event_types must list at least one pattern (`*` for all)",
            ));
        }
        if let Some(p) = types.iter().find(|p| !route::is_valid_pattern(p)) {
            return Err(bad(format!(
                "event_types: {p:?} is not `*`, `prefix.*` or a dotted lowercase type"
            )));
        }
        sub.event_types = types;
    }
    if let Some(signature) = input.signature {
        sub.signature = signature;
    }
    if let Some(retry) = input.retry {
        sub.retry = resolve_retry(retry)?;
    }
    if let Some(expect) = input.expect_body {
        sub.expect_body = expect;
    }
    if let Some(t) = input.timeout_ms {
        if !(1..=120_000).contains(&t) {
            return Err(bad("timeout_ms must be 1 to 120000"));
        }
        sub.timeout_ms = t;
    }
    if let Some(n) = input.max_in_flight {
        if !(1..=256).contains(&n) {
            return Err(bad("max_in_flight must be 1 to 256"));
        }
        sub.max_in_flight = n;
    }
    if let Some(window) = input.window {
        if let Some(w) = &window {
            w.schedule().map_err(bad)?;
        }
        sub.window = window;
    }
    if let Some(d) = input.description {
        sub.description = Some(d).filter(|d| !d.is_empty());
    }
    if let Some(secret) = input.secret {
        check_secret(&sub.signature, &secret)?;
        sub.secrets = vec![Secret {
            secret,
            expires_at: None,
        }];
    } else if let Some(current) = sub.secrets.first() {
        // A scheme change may make the current secret unusable.
        check_secret(&sub.signature, &current.secret)?;
    }
    if let Some(plugin) = input.plugin {
        if let Some(p) = &plugin {
            check_plugin(state, &sub.tenant_id, p).await?;
        }
        sub.plugin = plugin;
    }
    Ok(())
}

/// The plugin exists for this tenant and accepts its config.
async fn check_plugin(state: &ApiState, tenant_id: &str, p: &PluginRef) -> Result<(), ApiError> {
    let plugin = state
        .app
        .plugins
        .resolve(tenant_id, &p.id)
        .map_err(|e| bad(format!("plugin: {e}")))?;
    let report = state
        .app
        .plugins
        .runtime()
        .check_config(&plugin, &p.config.to_string())
        .await;
    match report.result {
        Ok(()) => Ok(()),
        Err(CallError::Plugin(e)) => Err(ApiError::bad("invalid_plugin_config", e.to_string())),
        Err(e) => Err(ApiError::bad(
            "invalid_plugin_config",
            format!("check-config failed: {e}"),
        )),
    }
}

fn load(state: &ApiState, tenant: &Tenant, id: &str) -> Result<Subscription, ApiError> {
    state
        .app
        .store
        .get_subscription(&tenant.id, id)?
        .ok_or_else(|| ApiError::NotFound(format!("no subscription {id:?}")))
}

/// Create a subscription. Answers with its signing `secret` (shown here, on
/// reveal and on rotation only).
#[utoipa::path(post, path = "/v1/subscriptions", tag = "subscriptions", request_body = SubscriptionInput,
    security(("tenant" = [])),
    responses((status = 201, body = SubscriptionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn create(
    tenant: Tenant,
    State(state): State<ApiState>,
    Json(input): Json<SubscriptionInput>,
) -> Result<(StatusCode, axum::Json<SubscriptionView>), ApiError> {
    if input.url.is_none() {
        return Err(bad("url is required"));
    }
    if input.event_types.is_none() {
        return Err(bad("event_types is required (`[\"*\"]` for every event)"));
    }
    let now = state.app.clock.now();
    let mut sub = Subscription {
        id: new_id("sub"),
        tenant_id: tenant.id.clone(),
        url: String::new(),
        event_types: Vec::new(),
        plugin: None,
        signature: Scheme::default(),
        retry: RetryPolicy::default(),
        expect_body: None,
        timeout_ms: state.app.settings.default_timeout.as_millis() as u64,
        max_in_flight: state.app.settings.max_in_flight_per_subscription,
        window: None,
        description: None,
        enabled: true,
        disabled_reason: None,
        secrets: vec![Secret {
            secret: sign::generate_secret(),
            expires_at: None,
        }],
        consecutive_failures: 0,
        created_at: now,
        updated_at: now,
    };
    apply(&state, &mut sub, input).await?;
    state.app.store.put_subscription(&sub)?;
    state.app.store.durable().await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(SubscriptionView::of(sub, true)),
    ))
}

/// List the tenant's subscriptions.
#[utoipa::path(get, path = "/v1/subscriptions", tag = "subscriptions", security(("tenant" = [])),
    responses((status = 200, body = Vec<SubscriptionView>)))]
async fn list(
    tenant: Tenant,
    State(state): State<ApiState>,
) -> Result<axum::Json<Vec<SubscriptionView>>, ApiError> {
    let subs = state.app.store.list_subscriptions(&tenant.id)?;
    Ok(axum::Json(
        subs.into_iter()
            .map(|s| SubscriptionView::of(s, false))
            .collect(),
    ))
}

/// Read one subscription.
#[utoipa::path(get, path = "/v1/subscriptions/{id}", tag = "subscriptions", security(("tenant" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = SubscriptionView), (status = 404, body = ErrorBody)))]
async fn get_one(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<SubscriptionView>, ApiError> {
    Ok(axum::Json(SubscriptionView::of(
        load(&state, &tenant, &id)?,
        false,
    )))
}

/// Change any fields of a subscription.
#[utoipa::path(patch, path = "/v1/subscriptions/{id}", tag = "subscriptions", request_body = SubscriptionInput,
    security(("tenant" = [])), params(("id" = String, Path)),
    responses((status = 200, body = SubscriptionView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn patch(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Json(input): Json<SubscriptionInput>,
) -> Result<axum::Json<SubscriptionView>, ApiError> {
    let mut sub = load(&state, &tenant, &id)?;
    apply(&state, &mut sub, input).await?;
    let updated = update(&state, &tenant, &id, move |s| {
        let (consecutive, enabled, reason, secrets_rotated) = (
            s.consecutive_failures,
            s.enabled,
            s.disabled_reason.clone(),
            s.secrets.clone(),
        );
        *s = sub.clone();
        // Fields the worker may have changed meanwhile keep their latest values.
        s.consecutive_failures = consecutive;
        s.enabled = enabled;
        s.disabled_reason = reason;
        if sub.secrets.first() == secrets_rotated.first() {
            s.secrets = secrets_rotated;
        }
    })
    .await?;
    Ok(axum::Json(SubscriptionView::of(updated, false)))
}

/// Transactional update, made durable.
async fn update(
    state: &ApiState,
    tenant: &Tenant,
    id: &str,
    f: impl Fn(&mut Subscription),
) -> Result<Subscription, ApiError> {
    let now = state.app.clock.now();
    let updated = state
        .app
        .store
        .update_subscription(&tenant.id, id, |s| {
            f(s);
            s.updated_at = now;
            true
        })?
        .ok_or_else(|| ApiError::NotFound(format!("no subscription {id:?}")))?;
    state.app.store.durable().await?;
    Ok(updated)
}

/// Delete a subscription (its pending deliveries fail as "subscription deleted").
#[utoipa::path(delete, path = "/v1/subscriptions/{id}", tag = "subscriptions", security(("tenant" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !state.app.store.delete_subscription(&tenant.id, &id)? {
        return Err(ApiError::NotFound(format!("no subscription {id:?}")));
    }
    state.app.store.drop_windows(&id)?;
    state.app.store.durable().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Enable (also after an automatic disable; resets the failure count).
#[utoipa::path(post, path = "/v1/subscriptions/{id}/enable", tag = "subscriptions", security(("tenant" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = SubscriptionView), (status = 404, body = ErrorBody)))]
async fn enable(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<SubscriptionView>, ApiError> {
    let s = update(&state, &tenant, &id, |s| {
        s.enabled = true;
        s.disabled_reason = None;
        s.consecutive_failures = 0;
    })
    .await?;
    Ok(axum::Json(SubscriptionView::of(s, false)))
}

/// Disable: no new deliveries; pending ones fail as "subscription disabled".
#[utoipa::path(post, path = "/v1/subscriptions/{id}/disable", tag = "subscriptions", security(("tenant" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = SubscriptionView), (status = 404, body = ErrorBody)))]
async fn disable(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<SubscriptionView>, ApiError> {
    let s = update(&state, &tenant, &id, |s| {
        s.enabled = false;
        s.disabled_reason = Some("disabled through the API".into());
    })
    .await?;
    Ok(axum::Json(SubscriptionView::of(s, false)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretView {
    /// The secret that signs from now on.
    pub secret: String,
    /// Older secrets that still sign too, and until when.
    pub previous: Vec<PreviousSecret>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PreviousSecret {
    pub secret: String,
    pub expires_at: Option<Timestamp>,
}

fn secret_view(s: &Subscription, now: Timestamp) -> SecretView {
    SecretView {
        secret: s
            .secrets
            .first()
            .map(|x| x.secret.clone())
            .unwrap_or_default(),
        previous: s
            .secrets
            .iter()
            .skip(1)
            .filter(|x| x.expires_at.is_none_or(|t| t > now))
            .map(|x| PreviousSecret {
                secret: x.secret.clone(),
                expires_at: x.expires_at,
            })
            .collect(),
    }
}

/// Show the signing secret(s).
#[utoipa::path(get, path = "/v1/subscriptions/{id}/secret", tag = "subscriptions", security(("tenant" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = SecretView), (status = 404, body = ErrorBody)))]
async fn reveal_secret(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<SecretView>, ApiError> {
    let s = load(&state, &tenant, &id)?;
    Ok(axum::Json(secret_view(&s, state.app.clock.now())))
}

/// Rotate the secret: a new one signs from now on; the old one keeps signing
/// (standard-webhooks: alongside, space-separated) for the grace period.
#[utoipa::path(post, path = "/v1/subscriptions/{id}/rotate-secret", tag = "subscriptions", security(("tenant" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = SecretView), (status = 404, body = ErrorBody)))]
async fn rotate_secret(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<SecretView>, ApiError> {
    let now = state.app.clock.now();
    let grace = jiff::SignedDuration::try_from(state.app.settings.secret_grace).unwrap_or_default();
    let fresh = sign::generate_secret();
    let s = update(&state, &tenant, &id, |s| {
        let mut secrets = vec![Secret {
            secret: fresh.clone(),
            expires_at: None,
        }];
        for (i, old) in s.secrets.iter().enumerate() {
            let expires_at = if i == 0 {
                Some(now + grace)
            } else {
                old.expires_at
            };
            if expires_at.is_none_or(|t| t > now) {
                secrets.push(Secret {
                    secret: old.secret.clone(),
                    expires_at,
                });
            }
        }
        s.secrets = secrets;
    })
    .await?;
    Ok(axum::Json(secret_view(&s, now)))
}

/// A delivery with its attempts, as the test endpoint reports it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestResult {
    #[schema(value_type = Vec<Object>)]
    pub deliveries: Vec<Delivery>,
}

/// Send a `webhook.test` event through the plugin and signer now; answers
/// with the attempt's result. The delivery is kept in the log.
#[utoipa::path(post, path = "/v1/subscriptions/{id}/test", tag = "subscriptions", security(("tenant" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = TestResult), (status = 404, body = ErrorBody)))]
async fn send_test(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<TestResult>, ApiError> {
    let sub = load(&state, &tenant, &id)?;
    let now = state.app.clock.now();
    let event = Envelope {
        id: new_id("evt"),
        event_type: "webhook.test".into(),
        occurred_at: now.to_string(),
        source: "wasmhook".into(),
        data: serde_json::json!({
            "message": "A test event from wasmhook.",
            "subscription_id": sub.id,
        }),
    };
    let out = ingest::transform(&state.app, &sub, &event, now).await;
    state.app.store.hold(&out.held, &event.id)?;
    let mut deliveries = out.deliveries;
    for d in &mut deliveries {
        // Sent right here, not by the worker.
        d.next_attempt_at = None;
    }
    state.app.store.add_deliveries(&deliveries)?;
    let mut results = Vec::new();
    for d in deliveries {
        if d.status == crate::store::DeliveryStatus::Pending {
            let id = d.id.clone();
            deliver::worker::attempt(&state.app, d).await?;
            if let Some(done) = state.app.store.get_delivery(&id)? {
                results.push(done);
            }
        } else {
            results.push(d);
        }
    }
    state.app.store.durable().await?;
    state.app.wake.notify_one();
    Ok(axum::Json(TestResult {
        deliveries: results,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayInput {
    /// RFC 3339: events received at or after this time.
    pub since: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayResult {
    /// Events routed again.
    pub events: usize,
    /// Deliveries created.
    pub deliveries: usize,
}

/// Re-run stored events received since a time through the current plugin,
/// as new deliveries to this subscription.
#[utoipa::path(post, path = "/v1/subscriptions/{id}/replay", tag = "subscriptions", request_body = ReplayInput,
    security(("tenant" = [])), params(("id" = String, Path)),
    responses((status = 200, body = ReplayResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn replay(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Json(input): Json<ReplayInput>,
) -> Result<axum::Json<ReplayResult>, ApiError> {
    let sub = load(&state, &tenant, &id)?;
    let since: Timestamp = input.since.parse().map_err(|_| {
        ApiError::bad(
            "invalid_body",
            format!("since {:?} is not an RFC 3339 time", input.since),
        )
    })?;
    let now = state.app.clock.now();
    let mut result = ReplayResult {
        events: 0,
        deliveries: 0,
    };
    for stored in state.app.store.events_since(&tenant.id, since)? {
        if !route::matches_any(&sub.event_types, &stored.event.event_type) {
            continue;
        }
        let out = ingest::transform(&state.app, &sub, &stored.event, now).await;
        state.app.store.hold(&out.held, &stored.event.id)?;
        let deliveries = out.deliveries;
        let ids: Vec<String> = deliveries.iter().map(|d| d.id.clone()).collect();
        state.app.store.add_deliveries(&deliveries)?;
        state
            .app
            .store
            .add_event_deliveries(&tenant.id, &stored.event.id, &ids)?;
        result.events += 1;
        result.deliveries += deliveries.len();
    }
    state.app.store.durable().await?;
    state.app.wake.notify_one();
    Ok(axum::Json(result))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FlushResponse {
    /// One entry per window that held items.
    pub windows: Vec<FlushResult>,
}

/// Close the subscription's windows now: every window holding items is
/// flushed through the plugin into deliveries (for operators and tests).
#[utoipa::path(post, path = "/v1/subscriptions/{id}/flush", tag = "subscriptions", security(("tenant" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = FlushResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn flush(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<FlushResponse>, ApiError> {
    let sub = load(&state, &tenant, &id)?;
    if sub.window.is_none() {
        return Err(bad("this subscription has no window"));
    }
    let windows = window::flush_subscription(&state.app, &sub)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(axum::Json(FlushResponse { windows }))
}

/// Items held in one window, per group.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeldWindow {
    pub start: Timestamp,
    pub end: Timestamp,
    pub close_at: Timestamp,
    pub items: u64,
    pub bytes: u64,
    /// Items per group key, groups in arrival order.
    #[schema(value_type = Object)]
    pub groups: serde_json::Map<String, Value>,
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WindowView {
    #[schema(value_type = Option<WindowSpec>)]
    pub spec: Option<WindowSpec>,
    pub windows: Vec<HeldWindow>,
}

/// What the subscription holds, per window and group.
#[utoipa::path(get, path = "/v1/subscriptions/{id}/window", tag = "subscriptions", security(("tenant" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = WindowView), (status = 404, body = ErrorBody)))]
async fn window_view(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<WindowView>, ApiError> {
    let sub = load(&state, &tenant, &id)?;
    let mut windows = Vec::new();
    for w in state.app.store.windows_of(&sub.id)? {
        let mut groups = serde_json::Map::new();
        for (_, record) in state.app.store.held_items(&sub.id, w.start)? {
            let n = groups
                .get(&record.group)
                .and_then(Value::as_u64)
                .unwrap_or(0);
            groups.insert(record.group, Value::from(n + 1));
        }
        windows.push(HeldWindow {
            start: w.start,
            end: w.end,
            close_at: w.close_at,
            items: w.items,
            bytes: w.bytes,
            groups,
            last_error: w.last_error,
        });
    }
    Ok(axum::Json(WindowView {
        spec: sub.window,
        windows,
    }))
}
