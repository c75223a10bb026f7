//! `/v1/sources` (tenant key): a tenant's inbound endpoints for its chat
//! platforms: create, list, read, change, delete, reveal and rotate the
//! secret, and the dead letters (list, read, replay, delete). And `POST
//! /in/{id}`, where the platform posts (no API key: the unguessable id
//! names the source, and its signature is checked where the platform signs).

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Tenant;
use super::openapi::ErrorBody;
use super::subscriptions::{SecretView, secret_view};
use super::{ApiError, ApiState, Json, body_error, limit_body};
use crate::runtime::{Header, World};
use crate::sign;
use crate::source::nats::NatsFeed;
use crate::source::{self, DEFAULT_TOLERANCE_SECS, DeadLetter, Kind, ReceiveError, Source, Verify};
use crate::store::{PluginRef, Secret};

pub fn router(state: &ApiState) -> OpenApiRouter<ApiState> {
    // A platform request may carry a whole day of chats (Hello Client):
    // the batch limit, 64 events' worth of the single-event limit.
    let inbound = limit_body(
        OpenApiRouter::new().routes(routes!(receive)),
        state.max_event_bytes.saturating_mul(64),
    );
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, patch, delete))
        .routes(routes!(reveal_secret))
        .routes(routes!(rotate_secret))
        .routes(routes!(list_dead_letters))
        .routes(routes!(get_dead_letter, delete_dead_letter))
        .routes(routes!(replay_dead_letter))
        .merge(inbound)
}

/// A new source.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceInput {
    /// The platform: `onehash`, `onwebchat`, `convosphere`, `helloclient`,
    /// `ohallo`, `standard-webhooks`, `plugin` (your own adapter), or `nats`
    /// (a NATS subject instead of HTTP requests).
    kind: Kind,
    /// The platform's signing secret (many platforms generate it: paste
    /// theirs). Default: a new `whsec_…` secret to give the platform.
    secret: Option<String>,
    /// How requests are verified; default: the platform's own scheme
    /// (`none` where its docs name none: the URL is the credential).
    #[schema(value_type = Option<Object>)]
    verify: Option<Verify>,
    /// How far a signed timestamp may be from now, seconds (default 300).
    tolerance_secs: Option<u64>,
    /// The adapter of a `plugin` source: `{"id": "plg_…", "config": {…}}`.
    #[schema(value_type = Option<Object>)]
    plugin: Option<PluginRef>,
    /// A `nats` source's subject: `{"url", "subject", "format"}`.
    nats: Option<NatsFeed>,
    description: Option<String>,
}

/// Changes to a source (the kind and the id stay).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourcePatch {
    #[schema(value_type = Option<Object>)]
    verify: Option<Verify>,
    tolerance_secs: Option<u64>,
    /// A `plugin` source's adapter (fix the mapping, then replay the dead
    /// letters).
    #[schema(value_type = Option<Object>)]
    plugin: Option<PluginRef>,
    description: Option<String>,
}

/// A source as the API shows it (the secret on creation, reveal and
/// rotation only).
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceView {
    pub id: String,
    pub kind: Kind,
    /// The path the platform posts to: `/in/{id}` on this server.
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[schema(value_type = Object)]
    pub verify: Verify,
    pub tolerance_secs: u64,
    #[schema(value_type = Option<Object>)]
    pub plugin: Option<PluginRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsFeed>,
    pub description: String,
    /// Requests kept because they could not be normalized.
    pub dead_letters: usize,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl SourceView {
    fn of(s: Source, with_secret: bool, state: &ApiState) -> Result<Self, ApiError> {
        Ok(SourceView {
            url: s.url(),
            secret: with_secret
                .then(|| s.secrets.first().map(|x| x.secret.clone()))
                .flatten(),
            dead_letters: state.app.store.count_dead_letters(&s.id)?,
            id: s.id,
            kind: s.kind,
            verify: s.verify,
            tolerance_secs: s.tolerance_secs,
            plugin: s.plugin,
            nats: s.nats.as_ref().map(NatsFeed::redacted),
            description: s.description,
            created_at: s.created_at,
            updated_at: s.updated_at,
        })
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad("invalid_source", message)
}

fn check_verify(verify: &Verify) -> Result<(), ApiError> {
    let name = match verify {
        Verify::TimestampedHex { header } | Verify::BodyHex { header } => header,
        Verify::None | Verify::StandardWebhooks => return Ok(()),
    };
    sign::check_header_name(name).map_err(|e| bad(format!("verify.header: {e}")))
}

fn check_tolerance(secs: u64) -> Result<u64, ApiError> {
    if !(1..=86_400).contains(&secs) {
        return Err(bad("tolerance_secs is 1 to 86400"));
    }
    Ok(secs)
}

fn check_description(d: String) -> Result<String, ApiError> {
    if d.len() > 500 {
        return Err(bad("description is at most 500 bytes"));
    }
    Ok(d)
}

/// The source's adapter exists for the tenant, is a source adapter, and
/// accepts its config.
async fn check_adapter(state: &ApiState, source: &Source) -> Result<(), ApiError> {
    let (id, config) = source.adapter();
    super::plugins::check_plugin_config(
        state,
        &source.tenant_id,
        &id,
        &config,
        World::Source,
        "invalid_source",
        || {
            format!(
                "plugin {id} implements the transform world; a source needs an adapter of the source world (wit/source.wit)"
            )
        },
    )
    .await
}

/// A feed's settings are usable and its server answers now (a typo in the
/// URL is a 400, not a task retrying forever).
async fn check_feed(
    policy: &crate::deliver::ssrf::BrokerPolicy,
    feed: &NatsFeed,
) -> Result<(), ApiError> {
    source::nats::check(feed).map_err(bad)?;
    // The bundled adapter's kinds: every source kind but these two.
    let formats: Vec<&str> = Kind::ALL
        .iter()
        .filter(|k| !matches!(k, Kind::Plugin | Kind::Nats))
        .map(|k| k.name())
        .collect();
    if !formats.contains(&feed.format.as_str()) {
        return Err(bad(format!(
            "nats.format {:?} is not one of {}",
            feed.format,
            formats.join(", ")
        )));
    }
    let target = policy
        .check(&feed.url)
        .await
        .map_err(|e| bad(e.to_string()))?;
    // One answer for every failure (refused, silent, not NATS): what it
    // was would tell a tenant whether something listens at the address.
    match tokio::time::timeout(
        source::nats::CONNECT_TIMEOUT,
        source::nats::connect(&target.connect_url),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(bad(format!(
            "cannot connect to the broker {} as NATS",
            target.display
        ))),
    }
}

fn load(state: &ApiState, tenant: &Tenant, id: &str) -> Result<Source, ApiError> {
    state
        .app
        .store
        .get_source(&tenant.id, id)?
        .ok_or_else(|| ApiError::NotFound(format!("no source {id:?}")))
}

/// Create a source. Answers with its `url` (the path the platform posts
/// to) and its `secret` (shown here, on reveal and on rotation only).
#[utoipa::path(post, path = "/v1/sources", tag = "sources", request_body = SourceInput,
    security(("tenant" = [])),
    responses((status = 201, body = SourceView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn create(
    tenant: Tenant,
    State(state): State<ApiState>,
    Json(input): Json<SourceInput>,
) -> Result<(StatusCode, axum::Json<SourceView>), ApiError> {
    let limit = state.app.settings.bounds.sources_per_tenant;
    if state.app.store.count_sources(&tenant.id)? >= limit {
        return Err(ApiError::bad(
            "limit_exceeded",
            format!(
                "the tenant has {limit} sources, the limit (limits.sources_per_tenant); delete one first"
            ),
        ));
    }
    match (input.kind, &input.plugin) {
        (Kind::Plugin, None) => {
            return Err(bad(
                "a `plugin` source needs `plugin`: {\"id\": \"plg_…\", \"config\": {…}}",
            ));
        }
        (kind, Some(_)) if kind != Kind::Plugin => {
            return Err(bad(format!(
                "`plugin` is for kind `plugin`; a {} source uses the bundled adapter",
                kind.name()
            )));
        }
        _ => {}
    }
    match (input.kind, &input.nats) {
        (Kind::Nats, None) => {
            return Err(bad(
                "a `nats` source needs `nats`: {\"url\": \"nats://…\", \"subject\": …, \"format\": \"ohallo\"}",
            ));
        }
        (Kind::Nats, Some(feed)) => check_feed(state.app.feeds.policy(), feed).await?,
        (kind, Some(_)) => {
            return Err(bad(format!(
                "`nats` is for kind `nats`, not {}",
                kind.name()
            )));
        }
        _ => {}
    }
    let verify = match input.verify {
        Some(verify) => verify,
        // No signature to check and no `verify` given: only anyone who
        // learns the URL stands between the tenant and junk. Say so.
        None if input.kind.default_verify() == Verify::None && input.kind != Kind::Nats => {
            return Err(bad(format!(
                "a {} source checks no signature by default: anyone who learns its URL can post to it. Acknowledge that with \"verify\": {{\"scheme\": \"none\"}}, or choose the scheme the platform signs with",
                input.kind.name()
            )));
        }
        None => input.kind.default_verify(),
    }
    .normalized();
    check_verify(&verify)?;
    let secret = match input.secret {
        Some(s) => {
            source::check_secret(&verify, &s).map_err(|e| bad(format!("secret: {e}")))?;
            s
        }
        None => sign::generate_secret(),
    };
    let now = state.app.clock.now();
    let source = Source {
        id: source::new_source_id(),
        tenant_id: tenant.id.clone(),
        kind: input.kind,
        secrets: vec![Secret {
            secret,
            expires_at: None,
        }],
        verify,
        tolerance_secs: check_tolerance(input.tolerance_secs.unwrap_or(DEFAULT_TOLERANCE_SECS))?,
        plugin: input.plugin,
        nats: input.nats,
        description: check_description(input.description.unwrap_or_default())?,
        created_at: now,
        updated_at: now,
    };
    check_adapter(&state, &source).await?;
    state.app.store.put_source(&source).await?;
    state.app.store.durable().await?;
    state.app.feeds.start(&state.app, &source);
    Ok((
        StatusCode::CREATED,
        axum::Json(SourceView::of(source, true, &state)?),
    ))
}

/// List the tenant's sources.
#[utoipa::path(get, path = "/v1/sources", tag = "sources", security(("tenant" = [])),
    responses((status = 200, body = Vec<SourceView>)))]
async fn list(
    tenant: Tenant,
    State(state): State<ApiState>,
) -> Result<axum::Json<Vec<SourceView>>, ApiError> {
    let sources = state.app.store.list_sources(&tenant.id)?;
    Ok(axum::Json(
        sources
            .into_iter()
            .map(|s| SourceView::of(s, false, &state))
            .collect::<Result<_, _>>()?,
    ))
}

/// Read one source.
#[utoipa::path(get, path = "/v1/sources/{id}", tag = "sources", security(("tenant" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = SourceView), (status = 404, body = ErrorBody)))]
async fn get_one(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<SourceView>, ApiError> {
    Ok(axum::Json(SourceView::of(
        load(&state, &tenant, &id)?,
        false,
        &state,
    )?))
}

/// Change a source's verification, tolerance, adapter or description.
#[utoipa::path(patch, path = "/v1/sources/{id}", tag = "sources", request_body = SourcePatch,
    security(("tenant" = [])), params(("id" = String, Path)),
    responses((status = 200, body = SourceView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn patch(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Json(input): Json<SourcePatch>,
) -> Result<axum::Json<SourceView>, ApiError> {
    let mut source = load(&state, &tenant, &id)?;
    if let Some(verify) = input.verify {
        let verify = verify.normalized();
        check_verify(&verify)?;
        if let Some(current) = source.secrets.first() {
            source::check_secret(&verify, &current.secret)
                .map_err(|e| bad(format!("the current secret does not suit this verify: {e}; rotate to a suitable one first")))?;
        }
        source.verify = verify;
    }
    if let Some(secs) = input.tolerance_secs {
        source.tolerance_secs = check_tolerance(secs)?;
    }
    if let Some(d) = input.description {
        source.description = check_description(d)?;
    }
    if let Some(p) = input.plugin {
        if source.kind != Kind::Plugin {
            return Err(bad(format!(
                "`plugin` is for kind `plugin`; a {} source uses the bundled adapter",
                source.kind.name()
            )));
        }
        source.plugin = Some(p);
        check_adapter(&state, &source).await?;
    }
    source.updated_at = state.app.clock.now();
    state.app.store.put_source(&source).await?;
    state.app.store.durable().await?;
    Ok(axum::Json(SourceView::of(source, false, &state)?))
}

/// Delete a source and its dead letters; its URL answers 404 from now on.
#[utoipa::path(delete, path = "/v1/sources/{id}", tag = "sources", security(("tenant" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !state.app.store.delete_source(&tenant.id, &id).await? {
        return Err(ApiError::NotFound(format!("no source {id:?}")));
    }
    state.app.feeds.stop(&id);
    state.app.store.durable().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Show the secret(s).
#[utoipa::path(get, path = "/v1/sources/{id}/secret", tag = "sources", security(("tenant" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = SecretView), (status = 404, body = ErrorBody)))]
async fn reveal_secret(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<SecretView>, ApiError> {
    let s = load(&state, &tenant, &id)?;
    Ok(axum::Json(secret_view(&s.secrets, state.app.clock.now())))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateInput {
    /// The platform's new secret; default: a new `whsec_…` one.
    secret: Option<String>,
}

/// Rotate the secret: the new one verifies from now on, the old one too
/// for the grace period (`engine.secret_grace`), so the platform can switch
/// without a refused request.
#[utoipa::path(post, path = "/v1/sources/{id}/rotate-secret", tag = "sources", request_body = Option<RotateInput>,
    security(("tenant" = [])), params(("id" = String, Path)),
    responses((status = 200, body = SecretView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn rotate_secret(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<axum::Json<SecretView>, ApiError> {
    let input: RotateInput = if body.is_empty() {
        RotateInput::default()
    } else {
        super::parse_json(&body)?
    };
    let mut source = load(&state, &tenant, &id)?;
    let fresh = match input.secret {
        Some(s) => {
            source::check_secret(&source.verify, &s).map_err(|e| bad(format!("secret: {e}")))?;
            s
        }
        None => sign::generate_secret(),
    };
    let now = state.app.clock.now();
    let grace = jiff::SignedDuration::try_from(state.app.settings.secret_grace).unwrap_or_default();
    source.rotate_secret(fresh, now, grace);
    state.app.store.put_source(&source).await?;
    state.app.store.durable().await?;
    Ok(axum::Json(secret_view(&source.secrets, now)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// At most this many (1–100, default 50).
    limit: Option<usize>,
    /// The last id of the previous page.
    after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetter>,
    /// Pass as `after` for the next page; absent on the last.
    pub next: Option<String>,
}

/// A source's dead letters, oldest first: requests that verified but could
/// not be normalized, with why.
#[utoipa::path(get, path = "/v1/sources/{id}/dead-letters", tag = "sources", security(("tenant" = [])),
    params(("id" = String, Path), PageParams),
    responses((status = 200, body = DeadLetterPage), (status = 404, body = ErrorBody)))]
async fn list_dead_letters(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<DeadLetterPage>, ApiError> {
    let source = load(&state, &tenant, &id)?;
    let limit = page.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad("invalid_query", "limit is 1 to 100"));
    }
    let mut items =
        state
            .app
            .store
            .list_dead_letters(&source.id, page.after.as_deref(), limit + 1)?;
    let next = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map(|d| d.id.clone()).unwrap_or_default()
    });
    Ok(axum::Json(DeadLetterPage { items, next }))
}

fn load_letter(state: &ApiState, source: &Source, id: &str) -> Result<DeadLetter, ApiError> {
    state
        .app
        .store
        .get_dead_letter(&source.id, id)?
        .ok_or_else(|| ApiError::NotFound(format!("no dead letter {id:?} in source {}", source.id)))
}

/// Read one dead letter (headers, body, error).
#[utoipa::path(get, path = "/v1/sources/{id}/dead-letters/{letter}", tag = "sources", security(("tenant" = [])),
    params(("id" = String, Path), ("letter" = String, Path)),
    responses((status = 200, body = DeadLetter), (status = 404, body = ErrorBody)))]
async fn get_dead_letter(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path((id, letter)): Path<(String, String)>,
) -> Result<axum::Json<DeadLetter>, ApiError> {
    let source = load(&state, &tenant, &id)?;
    Ok(axum::Json(load_letter(&state, &source, &letter)?))
}

/// Drop a dead letter.
#[utoipa::path(delete, path = "/v1/sources/{id}/dead-letters/{letter}", tag = "sources", security(("tenant" = [])),
    params(("id" = String, Path), ("letter" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_dead_letter(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path((id, letter)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let source = load(&state, &tenant, &id)?;
    if !state
        .app
        .store
        .delete_dead_letter(&source.id, &letter)
        .await?
    {
        return Err(ApiError::NotFound(format!("no dead letter {letter:?}")));
    }
    state.app.store.durable().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One event a platform request became.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReceivedEvent {
    pub id: String,
    /// True when the event id had been seen before (a platform retry).
    pub duplicate: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterReplay {
    pub events: Vec<ReceivedEvent>,
}

/// Run a dead letter through the source's adapter again (after fixing the
/// adapter or its config). Accepted: the events are routed and the letter
/// is gone. Failing again: 422 with the new error; the letter stays.
#[utoipa::path(post, path = "/v1/sources/{id}/dead-letters/{letter}/replay", tag = "sources", security(("tenant" = [])),
    params(("id" = String, Path), ("letter" = String, Path)),
    responses((status = 200, body = DeadLetterReplay), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn replay_dead_letter(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path((id, letter)): Path<(String, String)>,
) -> Result<axum::Json<DeadLetterReplay>, ApiError> {
    let source = load(&state, &tenant, &id)?;
    let letter = load_letter(&state, &source, &letter)?;
    let receipt = source::replay_dead_letter(&state.app, &source, &letter).await?;
    Ok(axum::Json(DeadLetterReplay {
        events: receipt
            .events
            .into_iter()
            .map(|r| ReceivedEvent {
                id: r.id,
                duplicate: !r.accepted_new,
            })
            .collect(),
    }))
}

impl From<ReceiveError> for ApiError {
    fn from(e: ReceiveError) -> Self {
        match e {
            ReceiveError::Unauthorized(e) => ApiError::BadSignature(e.to_string()),
            e @ ReceiveError::Unprocessable { .. } => ApiError::Unprocessable {
                code: "unprocessable_payload",
                message: e.to_string(),
            },
            ReceiveError::StillUnprocessable(message) => ApiError::Unprocessable {
                code: "unprocessable_payload",
                message,
            },
            ReceiveError::Busy(e) => e.into(),
            ReceiveError::Ingest(e) => e.into(),
            ReceiveError::Store(e) => e.into(),
        }
    }
}

/// Where a platform posts its webhooks. No API key: the id names the
/// source, and where the platform signs, its signature is checked (401 and
/// nothing kept when it does not verify). Answered `200` once the events
/// are durable, with the body the platform expects (Hello Client:
/// `{"status":"success"}`; otherwise `{"accepted": n}`). `422`: verified
/// but not normalizable (the message names the field; the request is kept
/// as a dead letter). `429`/`503`: not accepted, nothing kept; the
/// platform's retry is answered normally.
#[utoipa::path(post, path = "/in/{id}", tag = "sources",
    params(("id" = String, Path)), request_body(content = Object, content_type = "application/json"),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn receive(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let source = state
        .app
        .store
        .find_source(&id)?
        .ok_or_else(|| ApiError::NotFound(format!("no source {id:?}")))?;
    if source.kind == Kind::Nats {
        return Err(ApiError::NotFound(format!(
            "source {id:?} consumes a NATS subject; it takes no HTTP requests"
        )));
    }
    if let Some(limiter) = &state.source_rate_limiter {
        limiter.admit(source.id.as_bytes(), 1, |rate, secs| {
            format!("this source takes at most sources.rate_limit = {rate} requests/s; retry in {secs} s")
        })?;
    }
    let body = body.map_err(|e| body_error(e, state.max_event_bytes.saturating_mul(64)))?;
    let headers: Vec<Header> = headers
        .iter()
        .map(|(name, value)| Header {
            name: name.as_str().to_string(),
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
        })
        .collect();
    let receipt = source::receive(&state.app, &source, headers, &body).await?;
    Ok((
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        receipt.reply,
    )
        .into_response())
}
