//! Which component a subscription's plugin id names, loaded once and shared:
//! `builtin:<name>` for the bundled plugins, `plg_…` for a tenant's uploads
//! (bytes in the store, compiled artifacts in the runtime's disk cache).
//! Loaded plugins are kept by SHA-256, so tenants that upload the same
//! component share one compiled copy. Every call first takes a slot from the
//! [`Admission`] queue.
//!
//! Loading happens on first use, off the async workers and once per
//! component however many requests want it at once: mapping a cached
//! artifact takes milliseconds, but compiling a JavaScript or Python
//! component takes seconds, and a cold start with a burst of events for it
//! must neither block a tokio worker nor compile it once per request.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::sync::OnceCell;

use crate::runtime::admission::{Admission, Busy, Permit};
use crate::runtime::{LoadError, Plugin, Runtime, bundled};
use crate::store::{Store, StoreError};

/// Why a plugin id cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown plugin {0:?}")]
    Unknown(String),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How long after its record a plugin's missing component counts as not
/// yet visible (503) rather than gone (unknown plugin).
const MISSING_COMPONENT_GRACE_SECS: i64 = 120;

/// Resolves and caches plugins.
#[derive(Clone)]
pub struct Registry {
    runtime: Runtime,
    store: Store,
    admission: Admission,
    /// By SHA-256 (or `builtin:<name>`): a cell filled by the first load,
    /// which every concurrent resolver of the same key awaits.
    loaded: Arc<RwLock<HashMap<String, Arc<OnceCell<Plugin>>>>>,
}

impl Registry {
    pub fn new(runtime: Runtime, store: Store, admission: Admission) -> Self {
        Registry {
            runtime,
            store,
            admission,
            loaded: Arc::default(),
        }
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// A slot for one plugin call on behalf of `tenant_id` (bounded wait).
    pub async fn admit(&self, tenant_id: &str) -> Result<Permit, Busy> {
        self.admission.admit(tenant_id).await
    }

    /// The loaded plugin `id` as seen by `tenant_id`.
    pub async fn resolve(&self, tenant_id: &str, id: &str) -> Result<Plugin, ResolveError> {
        if let Some(name) = id.strip_prefix("builtin:") {
            let b = bundled::find(name).ok_or_else(|| ResolveError::Unknown(id.to_string()))?;
            return self
                .load_once(format!("builtin:{}", b.name), move |_| Ok(b.wasm.to_vec()))
                .await;
        }
        let record = self
            .store
            .get_plugin(tenant_id, id)?
            .ok_or_else(|| ResolveError::Unknown(id.to_string()))?;
        let unknown = ResolveError::Unknown(id.to_string());
        let sha = record.sha256;
        if !self.store.fetch_plugin(&sha).await? {
            // Cluster mode: a record names the component, so it was put
            // before the record was written, but the server this node reads
            // through may not show it yet (a replica lags a moment). Shortly
            // after the record that may clear: unavailable (503, retried).
            // Later the bytes are gone: an unknown plugin, as before, not a
            // 503 for ever.
            let age = jiff::Timestamp::now().duration_since(record.created_at);
            if age < jiff::SignedDuration::from_secs(MISSING_COMPONENT_GRACE_SECS) {
                return Err(ResolveError::Store(StoreError::Cluster(
                    crate::cluster::ClusterError::JetStream(format!(
                        "plugin component {sha} is not in the object store yet"
                    )),
                )));
            }
            return Err(unknown);
        }
        self.load_once(sha.clone(), move |store| {
            store.plugin_bytes(&sha)?.ok_or(unknown)
        })
        .await
    }

    /// Loads (validates and compiles) new bytes and caches the result.
    pub fn load_new(&self, wasm: &[u8]) -> Result<Plugin, LoadError> {
        let plugin = load_timed(&self.runtime, wasm)?;
        self.loaded
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                plugin.sha256.clone(),
                Arc::new(OnceCell::new_with(Some(plugin.clone()))),
            );
        Ok(plugin)
    }

    /// Drops a component no plugin record uses any more: its compiled copy
    /// in memory and its artifact on disk.
    pub fn forget(&self, sha256: &str) {
        self.loaded
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sha256);
        self.runtime.forget(sha256);
    }

    /// The plugin under `key`, loaded by the first caller on a blocking
    /// thread (`bytes` reads its component) while the others wait for it. A
    /// failed load is not remembered: the next caller tries again.
    async fn load_once(
        &self,
        key: String,
        bytes: impl FnOnce(&Store) -> Result<Vec<u8>, ResolveError> + Send + 'static,
    ) -> Result<Plugin, ResolveError> {
        let cell = {
            let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
            loaded.get(&key).cloned()
        };
        let cell = match cell {
            Some(cell) => cell,
            None => self
                .loaded
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_default()
                .clone(),
        };
        if let Some(plugin) = cell.get() {
            return Ok(plugin.clone());
        }
        let (runtime, store) = (self.runtime.clone(), self.store.clone());
        cell.get_or_try_init(|| async move {
            tokio::task::spawn_blocking(move || Ok(load_timed(&runtime, &bytes(&store)?)?))
                .await
                .unwrap_or_else(|e| {
                    Err(ResolveError::Load(LoadError::Engine(format!(
                        "loading the plugin stopped: {e}"
                    ))))
                })
        })
        .await
        .cloned()
    }
}

/// Validates and compiles (or maps) a component, recording how long it took.
fn load_timed(runtime: &Runtime, wasm: &[u8]) -> Result<Plugin, LoadError> {
    let started = Instant::now();
    let plugin = runtime.load(wasm)?;
    crate::telemetry::plugin_loaded(started.elapsed());
    Ok(plugin)
}
