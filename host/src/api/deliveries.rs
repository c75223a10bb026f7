//! `/v1/deliveries` (tenant key): the delivery log — list with filters,
//! read one with its body and attempts, retry by hand, and dismiss the
//! failed head that stops an ordered line.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::openapi::ErrorBody;
use super::{ApiError, ApiState};
use crate::runtime::Header;
use crate::sign;
use crate::store::{Attempt, Delivery, DeliveryStatus, StoredRequest};

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_one))
        .routes(routes!(retry))
        .routes(routes!(dismiss))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    subscription_id: Option<String>,
    event_id: Option<String>,
    /// An exact event type.
    event_type: Option<String>,
    /// `pending`, `blocked`, `succeeded`, `failed`, `filtered`, `held`.
    status: Option<String>,
    /// 1 to 500 (default 50).
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A delivery as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliverySummary {
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    pub subscription_id: String,
    pub status: String,
    pub attempts: usize,
    pub last_http_status: Option<u16>,
    /// How long the last attempt took.
    pub last_duration_ms: Option<u64>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// An ordered delivery's key (`blocked`: it waits behind an earlier
    /// delivery with the same key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
}

/// Where an ordered delivery's line stands (one delivery's detail).
#[derive(Debug, Serialize, ToSchema)]
pub struct LineView {
    pub key: String,
    /// The delivery at the head of the line: pending, or failed and
    /// stopping it.
    pub head: Option<String>,
    /// Deliveries ahead of this one.
    pub ahead: u64,
    /// The head failed for good under `on_failure: block`: nothing behind
    /// it goes until it is retried or dismissed.
    pub stopped: bool,
}

impl From<&Delivery> for DeliverySummary {
    fn from(d: &Delivery) -> Self {
        DeliverySummary {
            id: d.id.clone(),
            event_id: d.event_id.clone(),
            event_type: d.event_type.clone(),
            subscription_id: d.subscription_id.clone(),
            status: d.status.as_str().into(),
            attempts: d.attempts.len(),
            last_http_status: d.attempts.last().and_then(|a| a.status),
            last_duration_ms: d.attempts.last().map(|a| a.duration_ms),
            last_error: d.last_error.clone(),
            next_attempt_at: d.next_attempt_at,
            created_at: d.created_at,
            updated_at: d.updated_at,
            ordering_key: d.order.as_ref().map(|o| o.key.clone()),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    pub items: Vec<DeliverySummary>,
    pub next_cursor: Option<String>,
}

/// A delivery with the exact request it sends and every attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub summary: DeliverySummary,
    #[schema(value_type = Option<Object>)]
    pub request: Option<StoredRequest>,
    /// The signing headers of the last attempt (or of the next, before the
    /// first), signatures masked; empty when the endpoint is gone.
    #[schema(value_type = Vec<Object>)]
    pub signing_headers: Vec<Header>,
    #[schema(value_type = Vec<Object>)]
    pub attempt_log: Vec<Attempt>,
    /// Ordered deliveries whose line is still there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<LineView>,
}

fn parse_status(s: &str) -> Result<DeliveryStatus, ApiError> {
    serde_json::from_value(serde_json::Value::String(s.into())).map_err(|_| {
        ApiError::bad(
            "invalid_query",
            format!("status {s:?} is not pending, blocked, succeeded, failed, filtered or held"),
        )
    })
}

/// Most deliveries one list request reads: a page costs at most this much
/// whatever the history holds, even when a filter matches few of them.
const SCAN_BUDGET: usize = 2000;

/// The delivery log, newest first. With a filter that matches few
/// deliveries, a page may hold fewer than `limit` items and still have a
/// `next_cursor`: each request reads at most 2,000 deliveries, and the
/// cursor goes on from where it stopped.
#[utoipa::path(get, path = "/v1/deliveries", tag = "deliveries", params(ListParams),
    security(("tenant" = []), ("portal" = [])),
    responses((status = 200, body = DeliveryPage), (status = 400, body = ErrorBody)))]
async fn list(
    tenant: Caller,
    State(state): State<ApiState>,
    Query(q): Query<ListParams>,
) -> Result<axum::Json<DeliveryPage>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad("invalid_query", "limit must be 1 to 500"));
    }
    let status = q.status.as_deref().map(parse_status).transpose()?;
    let mut items = Vec::new();
    let mut more = false;
    let store = &state.app.store;
    store.require_data(&tenant.id)?;
    // A portal link reads only its endpoints' indexes: one, or all of them.
    let endpoints: Option<Vec<String>> = match &tenant.portal {
        Some(_) => match &q.subscription_id {
            Some(sub) => {
                super::subscriptions::load(&state, &tenant, sub)?;
                None
            }
            None => Some(
                store
                    .routes(&tenant.id)?
                    .iter()
                    .filter(|s| tenant.sees(s.app_id.as_deref()))
                    .map(|s| s.id.clone())
                    .collect(),
            ),
        },
        None => None,
    };
    let ids: Box<dyn Iterator<Item = _>> = match (&q.subscription_id, &endpoints) {
        (Some(sub), _) => {
            Box::new(store.subscription_delivery_ids(&tenant.id, sub, q.cursor.as_deref()))
        }
        (None, Some(subs)) => {
            store.subscriptions_delivery_ids(&tenant.id, subs, q.cursor.as_deref())
        }
        (None, None) => store.tenant_delivery_ids(&tenant.id, q.cursor.as_deref()),
    };
    let mut last_examined = None;
    for (examined, id) in ids.enumerate() {
        let id = id?;
        if examined == SCAN_BUDGET {
            // A filter that skips most of a long history: answer what was
            // found so far and let the client go on from here.
            more = true;
            break;
        }
        let Some(d) = store.get_delivery(&id)? else {
            continue;
        };
        last_examined = Some(id);
        // The index is the tenant's own; the check is a second guard.
        if d.tenant_id != tenant.id
            || q.event_id.as_ref().is_some_and(|e| *e != d.event_id)
            || q.event_type.as_ref().is_some_and(|t| *t != d.event_type)
            || status.is_some_and(|s| s != d.status)
        {
            continue;
        }
        if items.len() == limit {
            more = true;
            break;
        }
        items.push(DeliverySummary::from(&d));
    }
    let next_cursor = if !more {
        None
    } else if items.len() == limit {
        items.last().map(|d| d.id.clone())
    } else {
        // The scan budget ran out before the page filled.
        last_examined
    };
    Ok(axum::Json(DeliveryPage { items, next_cursor }))
}

fn load(state: &ApiState, tenant: &Caller, id: &str) -> Result<Delivery, ApiError> {
    state.app.store.require_data(&tenant.id)?;
    let d = state
        .app
        .store
        .get_delivery(id)?
        .filter(|d| d.tenant_id == tenant.id);
    match d {
        Some(d) if portal_sees(state, tenant, &d)? => Ok(d),
        _ => Err(ApiError::NotFound(format!("no delivery {id:?}"))),
    }
}

/// Whether a delivery is to one of the portal link's endpoints (always,
/// for a tenant's key). Ops-endpoint deliveries and those of deleted
/// endpoints are the tenant's only.
fn portal_sees(state: &ApiState, caller: &Caller, d: &Delivery) -> Result<bool, ApiError> {
    if caller.portal.is_none() {
        return Ok(true);
    }
    Ok(state
        .app
        .store
        .get_subscription(&caller.id, &d.subscription_id)?
        .is_some_and(|s| caller.sees(s.app_id.as_deref())))
}

fn detail(state: &ApiState, caller: &Caller, mut d: Delivery) -> Result<DeliveryDetail, ApiError> {
    super::portal::mask_request(caller, &mut d);
    // Shown whole, even when stored without its event's body.
    state.app.store.fill_body(&mut d)?;
    let endpoint = crate::notify::endpoint_of(&state.app.store, &d)?;
    let signing_headers = match (&endpoint, &d.request) {
        (Some(sub), Some(request)) => {
            let at = d.attempts.last().map_or(state.app.clock.now(), |a| a.at);
            let message = sign::Message {
                delivery_id: &d.id,
                event_type: request.event_name.as_deref().unwrap_or(&d.event_type),
                timestamp: at.as_second(),
                body: request.body.as_bytes(),
            };
            sign::masked_headers(&sub.signature, &message)
                .into_iter()
                .map(|(name, value)| Header { name, value })
                .collect()
        }
        _ => vec![],
    };
    let line = state.app.store.lane_position(&d)?.map(|p| LineView {
        key: d.order.as_ref().map(|o| o.key.clone()).unwrap_or_default(),
        head: p.head,
        ahead: p.ahead,
        stopped: p.blocked,
    });
    Ok(DeliveryDetail {
        line,
        summary: DeliverySummary::from(&d),
        request: d.request,
        signing_headers,
        attempt_log: d.attempts,
    })
}

/// One delivery: the body sent and every attempt (time, HTTP status,
/// duration, truncated response, error).
#[utoipa::path(get, path = "/v1/deliveries/{id}", tag = "deliveries", security(("tenant" = []), ("portal" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = DeliveryDetail), (status = 404, body = ErrorBody)))]
async fn get_one(
    tenant: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<DeliveryDetail>, ApiError> {
    Ok(axum::Json(detail(
        &state,
        &tenant,
        load(&state, &tenant, &id)?,
    )?))
}

/// Send a finished delivery again now (same id, same body).
#[utoipa::path(post, path = "/v1/deliveries/{id}/retry", tag = "deliveries", security(("tenant" = []), ("portal" = [])),
    params(("id" = String, Path)),
    responses((status = 202, body = DeliveryDetail), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn retry(
    tenant: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, axum::Json<DeliveryDetail>), ApiError> {
    let d = load(&state, &tenant, &id)?;
    tenant.may_change()?;
    let d = requeue(&state, d).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(detail(&state, &tenant, d)?),
    ))
}

/// Queues a finished delivery again now, under its id (a 409 says why one
/// cannot be).
pub(super) async fn requeue(state: &ApiState, mut d: Delivery) -> Result<Delivery, ApiError> {
    let id = d.id.clone();
    if d.status == DeliveryStatus::Pending {
        return Err(ApiError::Conflict(format!(
            "delivery {id} is already pending"
        )));
    }
    if d.status == DeliveryStatus::Blocked {
        return Err(ApiError::Conflict(format!(
            "delivery {id} waits behind an earlier delivery with its ordering key; it goes when that one is done (or dismissed)"
        )));
    }
    if d.request.is_none() {
        return Err(ApiError::Conflict(format!(
            "delivery {id} has nothing to send ({}); replay the event through the subscription instead",
            d.status.as_str()
        )));
    }
    if d.request.as_ref().is_some_and(|r| r.body_from_event)
        && state
            .app
            .store
            .event_body(&d.tenant_id, &d.event_id)?
            .is_none()
    {
        return Err(ApiError::Conflict(format!(
            "delivery {id} sends its event's body, and event {:?} is no longer stored (past the retention)",
            d.event_id
        )));
    }
    let now = state.app.clock.now();
    d.status = DeliveryStatus::Pending;
    d.next_attempt_at = Some(now);
    d.updated_at = now;
    // An ordered one: the head that stops its line goes again where it
    // stands; any other joins the end of its line (and may wait there).
    let Some(d) = state.app.queue.requeue(&d).await? else {
        return Err(ApiError::Conflict(format!(
            "delivery {id} was retried meanwhile; it is no longer finished"
        )));
    };
    Ok(d)
}

/// Let an ordered line go on without its failed head: the delivery that
/// stops its line (`on_failure: block`) stays failed, and the next one
/// with its key is attempted now.
#[utoipa::path(post, path = "/v1/deliveries/{id}/dismiss", tag = "deliveries", security(("tenant" = []), ("portal" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = DeliveryDetail), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn dismiss(
    tenant: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<DeliveryDetail>, ApiError> {
    let d = load(&state, &tenant, &id)?;
    tenant.may_change()?;
    if !state.app.queue.dismiss(&d).await? {
        return Err(ApiError::Conflict(format!(
            "delivery {id} does not stop an ordered line (only a failed head under on_failure \"block\" does)"
        )));
    }
    let d = load(&state, &tenant, &id)?;
    Ok(axum::Json(detail(&state, &tenant, d)?))
}
