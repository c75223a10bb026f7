//! Portal links: a tenant hands one of its customers (an application) a
//! link to the dashboard in portal mode, where that customer manages only
//! the application's endpoints and sees only their deliveries.
//!
//! The link carries a `whp_` token in the URL's fragment, which browsers
//! never send to a server, so no access log holds it; the page moves it to
//! the tab's `sessionStorage` and clears the address bar. The token is
//! stored hashed, expires, and is revoked by deleting its link. What a
//! token may do is decided where requests are authenticated (`auth.rs`:
//! only handlers taking a `Caller` accept it, and they apply its scope).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Caller, PORTAL_TOKEN_PREFIX, Tenant};
use super::openapi::ErrorBody;
use super::subscriptions::SubscriptionInput;
use super::{ApiError, ApiState};
use crate::store::PortalLink;
use crate::util::new_id;

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(revoke))
        .routes(routes!(list_all))
        .routes(routes!(session))
}

/// The longest a link may live: 30 days.
const MAX_EXPIRES_IN_SECS: u64 = 30 * 24 * 3600;
/// Without `expires_in`: one hour.
const DEFAULT_EXPIRES_IN_SECS: u64 = 3600;
/// Live links per application; expired ones are removed as new ones come.
const MAX_LINKS_PER_APP: usize = 100;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPortalLink {
    /// Seconds until the link stops working (1 to 2,592,000; default 3,600).
    pub expires_in: Option<u64>,
    /// The customer sees endpoints and deliveries but changes nothing and
    /// sees no secret.
    pub read_only: Option<bool>,
}

/// A portal link as listed (its token is shown only on creation).
#[derive(Debug, Serialize, ToSchema)]
pub struct PortalLinkView {
    pub id: String,
    pub app_id: String,
    pub read_only: bool,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// On creation only: the dashboard's address with the token in its
    /// fragment. Hand it to the customer; it is not shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// On creation only: the bearer token itself (`whp_…`), for a
    /// portal of your own built on the API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl From<PortalLink> for PortalLinkView {
    fn from(l: PortalLink) -> Self {
        PortalLinkView {
            id: l.id,
            app_id: l.app_id,
            read_only: l.read_only,
            created_at: l.created_at,
            expires_at: l.expires_at,
            url: None,
            token: None,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PortalLinkList {
    pub items: Vec<PortalLinkView>,
}

/// Where links point: `server.public_url`, or else the host this request
/// was made to.
fn base_url(state: &ApiState, headers: &HeaderMap) -> Result<String, ApiError> {
    if let Some(url) = &state.public_url {
        return Ok(url.clone());
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.parse::<axum::http::uri::Authority>().is_ok())
        .ok_or_else(|| {
            ApiError::bad(
                "invalid_request",
                "the request has no usable Host header; set server.public_url",
            )
        })?;
    Ok(format!("http://{host}"))
}

/// Removes the application's expired links; answers the live ones.
async fn purge_expired(
    state: &ApiState,
    tenant_id: &str,
    app_id: &str,
) -> Result<Vec<PortalLink>, ApiError> {
    let now = state.app.clock.now();
    let (live, expired): (Vec<PortalLink>, Vec<PortalLink>) = state
        .app
        .store
        .list_portal_links(tenant_id, Some(app_id))?
        .into_iter()
        .partition(|l| l.expires_at > now);
    if !expired.is_empty() {
        state.app.store.delete_portal_links(&expired).await?;
    }
    Ok(live)
}

/// Create a portal link for one application. The answer's `url` opens the
/// dashboard showing only this application's endpoints and deliveries;
/// it is shown once.
#[utoipa::path(post, path = "/v1/apps/{app}/portal-links", tag = "apps", request_body = NewPortalLink,
    security(("tenant" = [])), params(("app" = String, Path, description = "id or uid")),
    responses((status = 201, body = PortalLinkView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, axum::Json<PortalLinkView>), ApiError> {
    let input: NewPortalLink = super::parse_json_or_default(&body)?;
    let app = super::apps::load(&state, &tenant.id, &app)?;
    let expires_in = input.expires_in.unwrap_or(DEFAULT_EXPIRES_IN_SECS);
    if !(1..=MAX_EXPIRES_IN_SECS).contains(&expires_in) {
        return Err(ApiError::bad(
            "invalid_body",
            format!("expires_in must be 1 to {MAX_EXPIRES_IN_SECS} seconds"),
        ));
    }
    let base = base_url(&state, &headers)?;
    if purge_expired(&state, &tenant.id, &app.id).await?.len() >= MAX_LINKS_PER_APP {
        return Err(ApiError::bad(
            "limit_exceeded",
            format!("the application has {MAX_LINKS_PER_APP} live portal links; revoke some first"),
        ));
    }
    let token = format!(
        "{PORTAL_TOKEN_PREFIX}{}",
        hex::encode(rand::random::<[u8; 32]>())
    );
    let now = state.app.clock.now();
    let link = PortalLink {
        id: new_id("ptl"),
        tenant_id: tenant.id.clone(),
        app_id: app.id.clone(),
        token_hash: hex::encode(crate::store::token_hash(&token)),
        read_only: input.read_only.unwrap_or(false),
        created_at: now,
        expires_at: now + SignedDuration::from_secs(expires_in as i64),
    };
    state.app.store.put_portal_link(&link).await?;
    if state.app.store.get_app(&tenant.id, &app.id)?.is_none() {
        // Its application was deleted meanwhile.
        state.app.store.delete_portal_links(&[link]).await?;
        return Err(ApiError::NotFound(format!("no application {:?}", app.id)));
    }
    state.app.store.durable().await?;
    let mut view = PortalLinkView::from(link);
    view.url = Some(format!("{base}/ui/#portal={token}"));
    view.token = Some(token);
    Ok((StatusCode::CREATED, axum::Json(view)))
}

/// The application's live portal links (never their tokens).
#[utoipa::path(get, path = "/v1/apps/{app}/portal-links", tag = "apps", security(("tenant" = [])),
    params(("app" = String, Path, description = "id or uid")),
    responses((status = 200, body = PortalLinkList), (status = 404, body = ErrorBody)))]
async fn list(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(app): Path<String>,
) -> Result<axum::Json<PortalLinkList>, ApiError> {
    let app = super::apps::load(&state, &tenant.id, &app)?;
    let mut links = purge_expired(&state, &tenant.id, &app.id).await?;
    links.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Ok(axum::Json(PortalLinkList {
        items: links.into_iter().map(PortalLinkView::from).collect(),
    }))
}

/// Every live portal link of the tenant, of all its applications (never
/// their tokens): what to review after a key was exposed — a link
/// outlives the key that made it, until it expires or is revoked.
#[utoipa::path(get, path = "/v1/portal-links", tag = "apps", security(("tenant" = [])),
    responses((status = 200, body = PortalLinkList)))]
async fn list_all(
    tenant: Tenant,
    State(state): State<ApiState>,
) -> Result<axum::Json<PortalLinkList>, ApiError> {
    let now = state.app.clock.now();
    let mut links: Vec<PortalLink> = state
        .app
        .store
        .list_portal_links(&tenant.id, None)?
        .into_iter()
        .filter(|l| l.expires_at > now)
        .collect();
    links.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Ok(axum::Json(PortalLinkList {
        items: links.into_iter().map(PortalLinkView::from).collect(),
    }))
}

/// Revoke a portal link: its token is refused from now on.
#[utoipa::path(delete, path = "/v1/apps/{app}/portal-links/{id}", tag = "apps", security(("tenant" = [])),
    params(("app" = String, Path, description = "id or uid"), ("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn revoke(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let app = super::apps::load(&state, &tenant.id, &app)?;
    let links: Vec<PortalLink> = state
        .app
        .store
        .list_portal_links(&tenant.id, Some(&app.id))?
        .into_iter()
        .filter(|l| l.id == id)
        .collect();
    if state.app.store.delete_portal_links(&links).await? == 0 {
        return Err(ApiError::NotFound(format!("no portal link {id:?}")));
    }
    state.app.store.durable().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What a portal page needs to know about its link.
#[derive(Debug, Serialize, ToSchema)]
pub struct PortalSession {
    pub app: PortalApp,
    pub read_only: bool,
    pub expires_at: Timestamp,
    /// The catalog's event types (not archived) an endpoint may choose.
    pub event_types: Vec<PortalEventType>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PortalApp {
    pub id: String,
    pub name: String,
    pub uid: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PortalEventType {
    pub name: String,
    pub description: String,
}

/// The portal link the request came with: its application, whether it is
/// read-only, when it expires, and the event types on offer. Only a portal
/// token is answered (a tenant's key gets 404: it has no portal).
#[utoipa::path(get, path = "/v1/portal", tag = "apps", security(("portal" = [])),
    responses((status = 200, body = PortalSession), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn session(
    caller: Caller,
    State(state): State<ApiState>,
) -> Result<axum::Json<PortalSession>, ApiError> {
    let Some(portal) = &caller.portal else {
        return Err(ApiError::NotFound(
            "no portal: this is a tenant's key, not a portal link's token".into(),
        ));
    };
    let app = super::apps::load(&state, &caller.id, &portal.app_id)?;
    let mut event_types: Vec<PortalEventType> = state
        .app
        .store
        .list_event_types(&caller.id)?
        .into_iter()
        .filter(|t| !t.archived)
        .map(|t| PortalEventType {
            name: t.name,
            description: t.description,
        })
        .collect();
    event_types.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(axum::Json(PortalSession {
        app: PortalApp {
            id: app.id,
            name: app.name,
            uid: app.uid,
        },
        read_only: portal.read_only,
        expires_at: portal.expires_at,
        event_types,
    }))
}

/// The values of the headers a plugin added to a request, for a portal
/// link: the tenant's plugin may put its own credentials there.
pub(super) fn mask_request(caller: &Caller, d: &mut crate::store::Delivery) {
    if caller.portal.is_none() {
        return;
    }
    if let Some(r) = &mut d.request {
        for h in &mut r.headers {
            h.value = "••••••".into();
        }
    }
}

/// Endpoints a portal link may give its application (the tenant's own
/// limit holds too).
pub(super) const MAX_PORTAL_ENDPOINTS: usize = 20;

/// Refuses a portal link's new endpoint past [`MAX_PORTAL_ENDPOINTS`] for
/// its application.
pub(super) fn check_endpoint_room(state: &ApiState, caller: &Caller) -> Result<(), ApiError> {
    let Some(portal) = &caller.portal else {
        return Ok(());
    };
    let n = state
        .app
        .store
        .routes(&caller.id)?
        .iter()
        .filter(|s| s.app_id.as_deref() == Some(portal.app_id.as_str()))
        .count();
    if n >= MAX_PORTAL_ENDPOINTS {
        return Err(ApiError::bad(
            "limit_exceeded",
            format!(
                "the application has {n} endpoints, the most a portal link adds; delete one first"
            ),
        ));
    }
    Ok(())
}

/// A portal link's replay waits while its application's endpoints have
/// this share of the tenant's backlog queued: one customer cannot fill the
/// backlog every other customer's events need.
pub(super) fn check_replay_room(state: &ApiState, caller: &Caller) -> Result<(), ApiError> {
    let Some(portal) = &caller.portal else {
        return Ok(());
    };
    let cap = (state.app.settings.bounds.pending_deliveries_per_tenant / 10).max(100) as usize;
    let queued: usize = state
        .app
        .store
        .routes(&caller.id)?
        .iter()
        .filter(|s| s.app_id.as_deref() == Some(portal.app_id.as_str()))
        .map(|s| state.app.queue.subscription_depth(&s.id))
        .sum();
    if queued >= cap {
        return Err(ApiError::TooManyRequests {
            code: "application_busy",
            message: format!(
                "the application's endpoints have {queued} deliveries waiting; replay once they are delivered"
            ),
            retry_after_secs: 60,
        });
    }
    Ok(())
}

/// A portal link sets only what is its customer's to choose: where its
/// endpoints are and what they receive. The tenant's own settings
/// (plugins, signing, retries, windows, ordering, other destinations)
/// stay the tenant's — and where the tenant set a plugin or another
/// destination, so is the address (a plugin's requests may carry the
/// tenant's own credentials).
pub(super) fn check_input(
    caller: &Caller,
    input: &SubscriptionInput,
    current: Option<&crate::store::Subscription>,
) -> Result<(), ApiError> {
    if caller.portal.is_none() {
        return Ok(());
    }
    if let Some(s) = current
        && (s.plugin.is_some() || s.destination.is_some())
        && (input.url.is_some() || input.tls.is_some())
    {
        return Err(ApiError::Forbidden {
            code: "portal_field",
            message: "this endpoint's address is the tenant's to change (it runs a plugin or has another destination)".into(),
        });
    }
    let SubscriptionInput {
        url: _,
        event_types: _,
        description: _,
        secret: _,
        rate_limit: _,
        tls: _,
        verify_on_create: _,
        destination,
        plugin,
        signature,
        retry,
        expect_body,
        timeout_ms,
        max_in_flight,
        window,
        asymmetric,
        app,
        ordering,
        trace_context,
    } = input;
    let refused = [
        ("destination", destination.is_some()),
        ("plugin", plugin.is_some()),
        ("signature", signature.is_some()),
        ("retry", retry.is_some()),
        ("expect_body", expect_body.is_some()),
        ("timeout_ms", timeout_ms.is_some()),
        ("max_in_flight", max_in_flight.is_some()),
        ("window", window.is_some()),
        ("asymmetric", asymmetric.is_some()),
        ("app", app.is_some()),
        ("ordering", ordering.is_some()),
        ("trace_context", trace_context.is_some()),
    ];
    match refused.iter().find(|(_, set)| *set) {
        Some((name, _)) => Err(ApiError::Forbidden {
            code: "portal_field",
            message: format!(
                "{name} is not set through a portal link (url, event_types, description, secret, rate_limit, tls and verify_on_create are)"
            ),
        }),
        None => Ok(()),
    }
}
