//! What an operator does with a subscription beyond its settings
//! (`/v1/subscriptions/{id}/…`, tenant key): send a test event through its
//! plugin and signer, replay stored events, flush its windows, see what
//! they hold.

use axum::extract::{Path, State};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::openapi::ErrorBody;
use super::subscriptions::{bad, load};
use super::{ApiError, ApiState, Json};
use crate::event::{Data, Envelope};
use crate::ingest::HoldMode;
use crate::store::{Delivery, Subscription};
use crate::util::new_id_at;
use crate::window::{self, FlushResult, WindowSpec};
use crate::{deliver, ingest};

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(send_test))
        .routes(routes!(replay))
        .routes(routes!(flush))
        .routes(routes!(window_view))
}

/// A delivery with its attempts, as the test endpoint reports it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestResult {
    #[schema(value_type = Vec<Object>)]
    pub deliveries: Vec<Delivery>,
}

/// Send a `webhook.test` event through the plugin and signer now; answers
/// with the attempt's result. The delivery is kept in the log.
#[utoipa::path(post, path = "/v1/subscriptions/{id}/test", tag = "subscriptions", security(("tenant" = []), ("portal" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = TestResult), (status = 404, body = ErrorBody)))]
async fn send_test(
    tenant: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<TestResult>, ApiError> {
    let sub = load(&state, &tenant, &id)?;
    tenant.may_change()?;
    let slot = test_slot(&state, &tenant.id)?;
    let mut deliveries = run_test(&state, &sub, slot).await?;
    for d in &mut deliveries {
        super::portal::mask_request(&tenant, d);
    }
    Ok(axum::Json(TestResult { deliveries }))
}

/// A slot of the tenant's in-flight cap for a test event: sent here, not
/// by the workers, but within the cap like any attempt, so tests in a loop
/// cannot go past it.
pub(super) fn test_slot(
    state: &ApiState,
    tenant_id: &str,
) -> Result<crate::queue::Reserved, ApiError> {
    state
        .app
        .queue
        .reserve(tenant_id)
        .ok_or_else(|| ApiError::TooManyRequests {
            code: "tenant_busy",
            message: "the tenant has delivery.max_in_flight_per_tenant attempts in flight; retry the test shortly".into(),
            retry_after_secs: 1,
        })
}

/// A `webhook.test` event through the subscription's plugin and signer,
/// attempted here; returns its deliveries after their first attempt.
pub(super) async fn run_test(
    state: &ApiState,
    sub: &Subscription,
    slot: crate::queue::Reserved,
) -> Result<Vec<Delivery>, ApiError> {
    let now = state.app.clock.now();
    let event = Envelope {
        id: new_id_at("evt", now),
        event_type: "webhook.test".into(),
        occurred_at: now.to_string(),
        source: "wasmhook".into(),
        data: Data::from_value(&serde_json::json!({
            "message": "A test event from wasmhook.",
            "subscription_id": sub.id,
        })),
        app: sub.app_id.clone(),
        channels: Vec::new(),
    };
    run_event(state, sub, &event, slot).await
}

/// An event (not stored) through the subscription's plugin and signer to
/// it alone, attempted here: a test, or a Svix example.
pub(super) async fn run_event(
    state: &ApiState,
    sub: &Subscription,
    event: &Envelope,
    _slot: crate::queue::Reserved,
) -> Result<Vec<Delivery>, ApiError> {
    let now = state.app.clock.now();
    // Through the plugin like any event, but sent right here (not by the
    // workers), and items the plugin holds are not kept in the real window.
    let out = ingest::transform(&state.app, sub, event, now, HoldMode::Discard).await?;
    let mut deliveries = out.deliveries;
    for d in &mut deliveries {
        d.next_attempt_at = None;
        // The test event is not stored: its deliveries keep its body.
        if let Some(r) = d.request.as_mut().filter(|r| r.body_from_event) {
            r.body = event.webhook_body();
            r.body_from_event = false;
        }
    }
    state.app.queue.add_unqueued(&deliveries).await?;
    let mut results = Vec::new();
    for d in deliveries {
        if d.status == crate::store::DeliveryStatus::Pending {
            let id = d.id.clone();
            deliver::worker::attempt(&state.app.deliver, d, None).await?;
            if let Some(done) = state.app.store.get_delivery(&id)? {
                // A retry the policy scheduled goes to the workers.
                state.app.queue.rescheduled(&done);
                results.push(done);
            }
        } else {
            results.push(d);
        }
    }
    Ok(results)
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
    security(("tenant" = []), ("portal" = [])), params(("id" = String, Path)),
    responses((status = 200, body = ReplayResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn replay(
    tenant: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Json(input): Json<ReplayInput>,
) -> Result<axum::Json<ReplayResult>, ApiError> {
    let sub = load(&state, &tenant, &id)?;
    tenant.may_change()?;
    super::portal::check_replay_room(&state, &tenant)?;
    let since: Timestamp = input.since.parse().map_err(|_| {
        ApiError::bad(
            "invalid_body",
            format!("since {:?} is not an RFC 3339 time", input.since),
        )
    })?;
    let (events, deliveries) = ingest::replay(&state.app, &sub, since).await?;
    Ok(axum::Json(ReplayResult { events, deliveries }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FlushResponse {
    /// One entry per window that held items.
    pub windows: Vec<FlushResult>,
}

/// Close the subscription's windows now: every window holding items is
/// flushed through the plugin into deliveries (for operators and tests).
#[utoipa::path(post, path = "/v1/subscriptions/{id}/flush", tag = "subscriptions", security(("tenant" = []), ("portal" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = FlushResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn flush(
    tenant: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<FlushResponse>, ApiError> {
    let sub = load(&state, &tenant, &id)?;
    tenant.may_change()?;
    if sub.window.is_none() {
        return Err(bad("this subscription has no window"));
    }
    let windows = window::flush_subscription(&state.app, &sub)
        .await
        .map_err(|e| match e {
            window::FlushError::Store(e) => ApiError::from(e),
            window::FlushError::Busy(e) => ApiError::from(e),
        })?;
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
#[utoipa::path(get, path = "/v1/subscriptions/{id}/window", tag = "subscriptions", security(("tenant" = []), ("portal" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = WindowView), (status = 404, body = ErrorBody)))]
async fn window_view(
    tenant: Caller,
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
