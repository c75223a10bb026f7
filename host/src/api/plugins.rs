//! `/v1/plugins` (tenant key): upload a component, list (with the bundled
//! ones), read, delete (refused while in use), dry-run on a sample event.

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use bytes::Bytes;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Tenant;
use super::openapi::ErrorBody;
use super::{ApiError, ApiState, Json, body_error, limit_body};
use crate::event::EventInput;
use crate::runtime::{Action, LogLine, World, bundled};
use crate::store::PluginRecord;
use crate::util::{new_id, new_id_at};

pub fn router(state: &ApiState) -> OpenApiRouter<ApiState> {
    limit_body(
        OpenApiRouter::new().routes(routes!(upload, list)),
        state.max_plugin_bytes,
    )
    .merge(
        OpenApiRouter::new()
            .routes(routes!(get_one, delete))
            .routes(routes!(dry_run)),
    )
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadParams {
    /// 1–64 characters: `a-z`, `0-9`, `-`, `_`.
    name: String,
    /// Free text, 1–64 characters (default `1`).
    version: Option<String>,
}

/// A plugin as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginView {
    pub id: String,
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size: usize,
    /// `transform`: a subscription's plugin; `source`: a source's adapter.
    #[schema(value_type = String)]
    pub world: World,
    pub builtin: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
}

impl From<PluginRecord> for PluginView {
    fn from(r: PluginRecord) -> Self {
        PluginView {
            id: r.id,
            name: r.name,
            version: r.version,
            sha256: r.sha256,
            size: r.size,
            world: r.world,
            builtin: false,
            description: None,
            created_at: Some(r.created_at),
        }
    }
}

fn builtin_views() -> Vec<PluginView> {
    bundled::BUNDLED
        .iter()
        .map(|b| PluginView {
            id: b.id(),
            name: b.name.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            sha256: hex::encode(sha2::Sha256::digest(b.wasm)),
            size: b.wasm.len(),
            world: b.world,
            builtin: true,
            description: Some(b.description.into()),
            created_at: None,
        })
        .collect()
}

/// Upload a component (`application/wasm` body). It is validated here: a
/// core module, bad wasm, the wrong world, a missing export or an import the
/// host does not provide is a 400 naming it.
#[utoipa::path(post, path = "/v1/plugins", tag = "plugins", params(UploadParams),
    request_body(content = Vec<u8>, content_type = "application/wasm"),
    security(("tenant" = [])),
    responses((status = 201, body = PluginView), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn upload(
    tenant: Tenant,
    State(state): State<ApiState>,
    Query(params): Query<UploadParams>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<PluginView>), ApiError> {
    let wasm = body.map_err(|e| body_error(e, state.max_plugin_bytes))?;
    let limit = state.app.settings.bounds.plugins_per_tenant;
    if state.app.store.count_plugins(&tenant.id)? >= limit {
        return Err(ApiError::bad(
            "limit_exceeded",
            format!(
                "the tenant has {limit} plugins, the limit (limits.plugins_per_tenant); delete one first"
            ),
        ));
    }
    let valid_name = |s: &str| {
        (1..=64).contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    };
    if !valid_name(&params.name) {
        return Err(ApiError::bad(
            "invalid_name",
            "name must be 1 to 64 characters of a-z, 0-9, - and _",
        ));
    }
    let version = params.version.unwrap_or_else(|| "1".into());
    if !(1..=64).contains(&version.len()) {
        return Err(ApiError::bad(
            "invalid_version",
            "version must be 1 to 64 characters",
        ));
    }
    if wasm.is_empty() {
        return Err(ApiError::bad(
            "invalid_plugin",
            "the body is empty: send the component bytes",
        ));
    }
    let plugin = {
        let registry = state.app.plugins.clone();
        let wasm = wasm.clone();
        // Compiling takes a core for ~100 ms (seconds for a large
        // component): it takes one of the tenant's plugin slots like a
        // call, so concurrent uploads cannot take every core (503 when
        // none is free within the admission wait).
        let _slot = state.app.plugins.admit(&tenant.id).await?;
        // Off the async workers.
        tokio::task::spawn_blocking(move || registry.load_new(&wasm))
            .await
            .map_err(|e| ApiError::Internal(e.into()))?
            .map_err(|e| ApiError::bad("invalid_plugin", e.to_string()))?
    };
    let record = PluginRecord {
        id: new_id("plg"),
        tenant_id: tenant.id.clone(),
        name: params.name,
        version,
        sha256: plugin.sha256.clone(),
        size: wasm.len(),
        created_at: state.app.clock.now(),
        world: plugin.world(),
    };
    state.app.store.put_plugin(&record, &wasm).await?;
    state.app.store.durable().await?;
    Ok((StatusCode::CREATED, axum::Json(record.into())))
}

/// The tenant's plugins and the bundled ones (`builtin:…`).
#[utoipa::path(get, path = "/v1/plugins", tag = "plugins", security(("tenant" = [])),
    responses((status = 200, body = Vec<PluginView>)))]
async fn list(
    tenant: Tenant,
    State(state): State<ApiState>,
) -> Result<axum::Json<Vec<PluginView>>, ApiError> {
    let mut views = builtin_views();
    views.extend(
        state
            .app
            .store
            .list_plugins(&tenant.id)?
            .into_iter()
            .map(PluginView::from),
    );
    Ok(axum::Json(views))
}

fn find(state: &ApiState, tenant: &Tenant, id: &str) -> Result<PluginView, ApiError> {
    if id.starts_with("builtin:") {
        return builtin_views()
            .into_iter()
            .find(|v| v.id == id)
            .ok_or_else(|| ApiError::NotFound(format!("no plugin {id:?}")));
    }
    state
        .app
        .store
        .get_plugin(&tenant.id, id)?
        .map(PluginView::from)
        .ok_or_else(|| ApiError::NotFound(format!("no plugin {id:?}")))
}

/// Read one plugin's metadata.
#[utoipa::path(get, path = "/v1/plugins/{id}", tag = "plugins", security(("tenant" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = PluginView), (status = 404, body = ErrorBody)))]
async fn get_one(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<PluginView>, ApiError> {
    Ok(axum::Json(find(&state, &tenant, &id)?))
}

/// Delete an uploaded plugin; refused (409) while subscriptions use it.
#[utoipa::path(delete, path = "/v1/plugins/{id}", tag = "plugins", security(("tenant" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if id.starts_with("builtin:") {
        find(&state, &tenant, &id)?;
        return Err(ApiError::bad(
            "builtin_plugin",
            "bundled plugins cannot be deleted",
        ));
    }
    find(&state, &tenant, &id)?;
    let users: Vec<String> = state
        .app
        .store
        .list_subscriptions(&tenant.id)?
        .into_iter()
        .filter(|s| s.plugin.as_ref().is_some_and(|p| p.id == id))
        .map(|s| s.id)
        .chain(
            state
                .app
                .store
                .list_sources(&tenant.id)?
                .into_iter()
                .filter(|s| s.plugin.as_ref().is_some_and(|p| p.id == id))
                .map(|s| s.id),
        )
        .collect();
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!(
            "plugin {id} is used by {}; change or delete them first",
            users.join(", ")
        )));
    }
    if let Some((record, bytes_gone)) = state.app.store.delete_plugin(&tenant.id, &id).await? {
        state.app.store.durable().await?;
        if bytes_gone {
            // No record uses the component any more: drop its compiled copy
            // from memory and its artifact from the disk cache.
            state.app.plugins.forget(&record.sha256);
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRunInput {
    /// An event as `POST /v1/events` takes it.
    #[schema(value_type = Object)]
    pub event: Value,
    /// The plugin settings to try (default `{}`).
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
}

/// What the plugin did; nothing was delivered.
#[derive(Debug, Serialize, ToSchema)]
pub struct DryRunResult {
    /// The action (`skip`, `deliver` with its requests, `hold` with its items).
    #[schema(value_type = Option<Object>)]
    pub action: Option<Action>,
    /// Why the call failed (a limit, a trap, the plugin's own error).
    pub error: Option<String>,
    #[schema(value_type = Vec<Object>)]
    pub log: Vec<LogLine>,
    pub elapsed_us: u64,
}

/// Run the plugin's `handle` on a sample event, with its log and timing.
#[utoipa::path(post, path = "/v1/plugins/{id}/dry-run", tag = "plugins", request_body = DryRunInput,
    security(("tenant" = [])), params(("id" = String, Path)),
    responses((status = 200, body = DryRunResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn dry_run(
    tenant: Tenant,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Json(input): Json<DryRunInput>,
) -> Result<axum::Json<DryRunResult>, ApiError> {
    find(&state, &tenant, &id)?;
    let plugin = state
        .app
        .plugins
        .resolve(&tenant.id, &id)
        .await
        .map_err(|e| ApiError::bad("invalid_plugin", e.to_string()))?;
    let event: EventInput = serde_json::from_value(input.event)
        .map_err(|e| ApiError::bad("invalid_event", format!("event: {e}")))?;
    let event = event
        .validate(state.app.clock.now(), "dry-run", || {
            new_id_at("evt", state.app.clock.now())
        })
        .map_err(|e| ApiError::bad("invalid_event", format!("event: {e}")))?;
    let config = input
        .config
        .unwrap_or_else(|| Value::Object(Default::default()))
        .to_string();
    let report = {
        let _slot = state.app.plugins.admit(&tenant.id).await?;
        state
            .app
            .plugins
            .runtime()
            .handle(&plugin, &event.to_plugin_event(), &config)
            .await
    };
    let (action, error) = match report.result {
        Ok(a) => (Some(a), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Ok(axum::Json(DryRunResult {
        action,
        error,
        log: report.log,
        elapsed_us: report.elapsed.as_micros() as u64,
    }))
}

/// The plugin `id` exists for the tenant, implements `world`, and its
/// `check-config` accepts `config`: what saving a subscription (a transform)
/// or a source (an adapter) checks. A missing plugin or the wrong world is
/// a 400 under `code` (the message from `wrong_world`); a refused config is
/// `invalid_plugin_config` with the plugin's message.
pub(super) async fn check_plugin_config(
    state: &ApiState,
    tenant_id: &str,
    id: &str,
    config: &str,
    world: World,
    code: &'static str,
    wrong_world: impl FnOnce() -> String,
) -> Result<(), ApiError> {
    let plugin = state
        .app
        .plugins
        .resolve(tenant_id, id)
        .await
        .map_err(|e| ApiError::bad(code, format!("plugin: {e}")))?;
    if plugin.world() != world {
        return Err(ApiError::bad(code, wrong_world()));
    }
    let report = {
        let _slot = state.app.plugins.admit(tenant_id).await?;
        state
            .app
            .plugins
            .runtime()
            .check_config(&plugin, config)
            .await
    };
    match report.result {
        Ok(()) => Ok(()),
        Err(crate::runtime::CallError::Plugin(e)) => {
            Err(ApiError::bad("invalid_plugin_config", e.to_string()))
        }
        Err(e) => Err(ApiError::bad(
            "invalid_plugin_config",
            format!("check-config failed: {e}"),
        )),
    }
}
