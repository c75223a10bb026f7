//! `/v1/sources` (tenant key): a tenant's inbound endpoints for its chat
//! platforms: create, list, read, change, delete, reveal and rotate the
//! secret. What arrives at them — `POST /in/{id}` and the dead letters — is
//! in `inbound.rs`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Tenant;
use super::openapi::ErrorBody;
use super::secrets::{SecretView, secret_view};
use super::source_views::{SourceInput, SourcePatch, SourceView};
use super::{ApiError, ApiState, Json};
use crate::runtime::World;
use crate::sign;
use crate::source::{self, DEFAULT_TOLERANCE_SECS, Kind, Source, Verify};
use crate::store::Secret;

pub fn router(state: &ApiState) -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, patch, delete))
        .routes(routes!(reveal_secret))
        .routes(routes!(rotate_secret))
        .merge(super::inbound::router(state))
}

pub(super) fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad("invalid_source", message)
}

fn check_verify(verify: &Verify) -> Result<(), ApiError> {
    let name = match verify {
        Verify::TimestampedHex { header } | Verify::BodyHex { header } => header,
        Verify::None | Verify::StandardWebhooks | Verify::Chatwoot => return Ok(()),
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

pub(super) fn load(state: &ApiState, tenant: &Tenant, id: &str) -> Result<Source, ApiError> {
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
        (kind, Some(_)) if !matches!(kind, Kind::Plugin | Kind::Poll) => {
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
        (Kind::Nats, Some(feed)) => source::nats::check_reachable(state.feeds.policy(), feed)
            .await
            .map_err(bad)?,
        (kind, Some(_)) => {
            return Err(bad(format!(
                "`nats` is for kind `nats`, not {}",
                kind.name()
            )));
        }
        _ => {}
    }
    match (input.kind, &input.poll) {
        (Kind::Poll, None) => {
            return Err(bad(
                "a `poll` source needs `poll`: {\"url\": \"https://…\", \"format\": \"ohallo-conversation\"}",
            ));
        }
        (Kind::Poll, Some(feed)) => {
            source::poll::check(feed).map_err(bad)?;
            if feed.format.is_empty() == input.plugin.is_none() {
                return Err(bad(
                    "a `poll` source reads its items with a bundled `poll.format` or an uploaded adapter (`plugin`): one of the two",
                ));
            }
            if feed.bearer && input.secret.is_none() {
                return Err(bad(
                    "a `poll` source sends its `secret` as the API's bearer token: give it, or set poll.bearer to false",
                ));
            }
        }
        (kind, Some(_)) => {
            return Err(bad(format!(
                "`poll` is for kind `poll`, not {}",
                kind.name()
            )));
        }
        _ => {}
    }
    let verify = match input.verify {
        Some(verify) => verify,
        // No signature to check and no `verify` given: only anyone who
        // learns the URL stands between the tenant and junk. Say so.
        None if input.kind.default_verify() == Verify::None
            && !matches!(input.kind, Kind::Nats | Kind::Poll) =>
        {
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
        poll: input.poll,
        default_type: match input.default_type {
            Some(_) if input.kind != Kind::StandardWebhooks => {
                return Err(bad(format!(
                    "`default_type` is for standard-webhooks sources, not {}",
                    input.kind.name()
                )));
            }
            Some(t) if !crate::event::is_valid_type(&t) => {
                return Err(bad(format!(
                    "default_type {t:?} is not an event type (`a.b`)"
                )));
            }
            other => other,
        },
        description: check_description(input.description.unwrap_or_default())?,
        created_at: now,
        updated_at: now,
    };
    check_adapter(&state, &source).await?;
    state.app.store.put_source(&source).await?;
    state.app.store.durable().await?;
    state.feeds.start(&state.app, &source);
    state.polls.start(&state.app, &source);
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
    state.feeds.stop(&id);
    state.polls.stop(&id);
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
    let input: RotateInput = super::parse_json_or_default(&body)?;
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
