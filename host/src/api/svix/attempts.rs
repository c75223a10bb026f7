//! Svix attempts: the attempts of a message's deliveries, and resending
//! one.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::endpoints::find;
use super::messages::{SCAN_BUDGET, load_message};
use super::{ListResponse, Page, SvixError, SvixTenant};
use crate::api::{ApiError, ApiState};
use crate::store::{Delivery, Subscription};

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(attempts_by_message))
        .routes(routes!(attempts_by_endpoint))
        .routes(routes!(resend))
}

/// Svix's `MessageAttemptOut`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageAttemptOut {
    /// `<delivery id>.<attempt number>`.
    pub id: String,
    pub msg_id: String,
    pub endpoint_id: String,
    pub url: String,
    pub response: String,
    pub response_status_code: u16,
    pub response_duration_ms: u64,
    /// 0 success, 2 failed (Svix's numbers).
    pub status: u8,
    pub status_text: &'static str,
    /// Always 0 (scheduled): wasmhook does not tell a manual retry's
    /// attempts apart.
    pub trigger_type: u8,
    pub timestamp: Timestamp,
}

fn attempts_of(d: &Delivery, url: &str) -> Vec<MessageAttemptOut> {
    d.attempts
        .iter()
        .enumerate()
        .map(|(n, a)| {
            let ok = a.status.is_some_and(|s| (200..300).contains(&s)) && a.error.is_none();
            MessageAttemptOut {
                id: format!("{}.{}", d.id, n + 1),
                msg_id: d.event_id.clone(),
                endpoint_id: d.subscription_id.clone(),
                url: url.to_string(),
                response: a
                    .response_body
                    .clone()
                    .or_else(|| a.error.clone())
                    .unwrap_or_default(),
                response_status_code: a.status.unwrap_or(0),
                response_duration_ms: a.duration_ms,
                status: if ok { 0 } else { 2 },
                status_text: if ok { "success" } else { "fail" },
                trigger_type: 0,
                timestamp: a.at,
            }
        })
        .rev()
        .collect()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AttemptQuery {
    pub limit: Option<usize>,
    pub iterator: Option<String>,
    /// 0 success, 2 failed.
    pub status: Option<u8>,
    pub endpoint_id: Option<String>,
}

impl AttemptQuery {
    fn keeps(&self, a: &MessageAttemptOut) -> bool {
        self.status.is_none_or(|s| s == a.status)
    }
}

/// The URL an attempt went to: its endpoint's (now).
fn url_of(subs: &[Subscription], id: &str) -> String {
    subs.iter()
        .find(|s| s.id == id)
        .map(|s| s.url.clone())
        .unwrap_or_default()
}

/// Svix: the attempts of a message's deliveries, newest first.
#[utoipa::path(get, path = "/api/v1/app/{app_id}/attempt/msg/{msg_id}", tag = "svix", security(("tenant" = [])),
    params(("app_id" = String, Path), ("msg_id" = String, Path), AttemptQuery),
    responses((status = 200, body = inline(ListResponse<MessageAttemptOut>)), (status = 404, description = "not found")))]
async fn attempts_by_message(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path((app, msg)): Path<(String, String)>,
    Query(q): Query<AttemptQuery>,
) -> Result<axum::Json<ListResponse<MessageAttemptOut>>, SvixError> {
    let app = super::apps::load(&state, &tenant, &app)?;
    let stored = load_message(&state, &app, &msg)?;
    let subs = state.app.store.routes(&app.tenant_id)?;
    let endpoint = q
        .endpoint_id
        .as_deref()
        .map(|e| find(&state, &app, e))
        .transpose()?;
    let mut items = Vec::new();
    for id in &stored.deliveries {
        let Some(d) = state.app.store.get_delivery(id)? else {
            continue;
        };
        if endpoint.as_ref().is_some_and(|e| e.id != d.subscription_id) {
            continue;
        }
        let url = url_of(&subs, &d.subscription_id);
        items.extend(
            attempts_of(&d, &url)
                .into_iter()
                .filter(|a| q.keeps(a))
                .map(|a| (format!("{}.{:020}", a.timestamp.as_millisecond(), a.id), a)),
        );
    }
    let page = Page {
        limit: q.limit,
        iterator: q.iterator.clone(),
        order: None,
    };
    Ok(axum::Json(page.slice(items, true)?))
}

/// Svix: the attempts to an endpoint, newest first.
#[utoipa::path(get, path = "/api/v1/app/{app_id}/attempt/endpoint/{endpoint_id}", tag = "svix", security(("tenant" = [])),
    params(("app_id" = String, Path), ("endpoint_id" = String, Path), AttemptQuery),
    responses((status = 200, body = inline(ListResponse<MessageAttemptOut>)), (status = 404, description = "not found")))]
async fn attempts_by_endpoint(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path((app, endpoint)): Path<(String, String)>,
    Query(q): Query<AttemptQuery>,
) -> Result<axum::Json<ListResponse<MessageAttemptOut>>, SvixError> {
    let app = super::apps::load(&state, &tenant, &app)?;
    let sub = find(&state, &app, &endpoint)?;
    let limit = super::page_limit(q.limit)?;
    // The iterator names the delivery the last page ended with: a page
    // holds whole deliveries.
    let before = q
        .iterator
        .as_deref()
        .map(|i| i.rsplit_once('.').map_or(i, |(d, _)| d));
    let store = &state.app.store;
    let mut data = Vec::new();
    let mut last = None;
    let mut more = false;
    for (read, id) in store
        .subscription_delivery_ids(&app.tenant_id, &sub.id, before)
        .enumerate()
    {
        if data.len() >= limit || read == SCAN_BUDGET {
            more = true;
            break;
        }
        let Some(d) = store.get_delivery(&id?)? else {
            continue;
        };
        last = Some(format!("{}.0", d.id));
        data.extend(attempts_of(&d, &sub.url).into_iter().filter(|a| q.keeps(a)));
    }
    Ok(axum::Json(ListResponse {
        data,
        iterator: last.clone(),
        prev_iterator: None,
        done: !more,
    }))
}

/// Svix: send a message to one endpoint again now (its delivery, under the
/// same delivery id).
#[utoipa::path(post, path = "/api/v1/app/{app_id}/msg/{msg_id}/endpoint/{endpoint_id}/resend", tag = "svix",
    security(("tenant" = [])), params(("app_id" = String, Path), ("msg_id" = String, Path), ("endpoint_id" = String, Path)),
    responses((status = 202, description = "queued again: `{}`"), (status = 404, description = "not found"),
        (status = 409, description = "not finished, or nothing to send")))]
async fn resend(
    tenant: SvixTenant,
    State(state): State<ApiState>,
    Path((app, msg, endpoint)): Path<(String, String, String)>,
) -> Result<(StatusCode, axum::Json<Value>), SvixError> {
    let app = super::apps::load(&state, &tenant, &app)?;
    let stored = load_message(&state, &app, &msg)?;
    let sub = find(&state, &app, &endpoint)?;
    let mut found = None;
    for id in &stored.deliveries {
        if let Some(d) = state.app.store.get_delivery(id)?
            && d.subscription_id == sub.id
        {
            found = Some(d);
        }
    }
    let d = found.ok_or_else(|| {
        SvixError(ApiError::NotFound(format!(
            "message {msg:?} was not routed to endpoint {endpoint:?}"
        )))
    })?;
    crate::api::deliveries::requeue(&state, d).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(serde_json::json!({}))))
}
