//! Which component a subscription's plugin id names, loaded once and shared:
//! `builtin:<name>` for the bundled plugins, `plg_…` for a tenant's uploads
//! (bytes in the store, compiled artifacts in the runtime's disk cache).
//! Loaded plugins are kept by SHA-256, so tenants that upload the same
//! component share one compiled copy. Every call first takes a slot from the
//! [`Admission`] queue.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

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

/// Resolves and caches plugins.
#[derive(Clone)]
pub struct Registry {
    runtime: Runtime,
    store: Store,
    admission: Admission,
    loaded: Arc<RwLock<HashMap<String, Plugin>>>,
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
    pub fn resolve(&self, tenant_id: &str, id: &str) -> Result<Plugin, ResolveError> {
        if let Some(name) = id.strip_prefix("builtin:") {
            let b = bundled::find(name).ok_or_else(|| ResolveError::Unknown(id.to_string()))?;
            return self.load_bytes_cached(&format!("builtin:{}", b.name), || Ok(b.wasm.to_vec()));
        }
        let record = self
            .store
            .get_plugin(tenant_id, id)?
            .ok_or_else(|| ResolveError::Unknown(id.to_string()))?;
        let sha = record.sha256.clone();
        self.load_bytes_cached(&sha, || {
            self.store
                .plugin_bytes(&sha)?
                .ok_or_else(|| ResolveError::Unknown(id.to_string()))
        })
    }

    /// Loads (validates and compiles) new bytes and caches the result.
    pub fn load_new(&self, wasm: &[u8]) -> Result<Plugin, LoadError> {
        let plugin = self.runtime.load(wasm)?;
        self.loaded
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(plugin.sha256.clone(), plugin.clone());
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

    fn load_bytes_cached(
        &self,
        key: &str,
        bytes: impl FnOnce() -> Result<Vec<u8>, ResolveError>,
    ) -> Result<Plugin, ResolveError> {
        if let Some(p) = self
            .loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
        {
            return Ok(p.clone());
        }
        let plugin = self.runtime.load(&bytes()?)?;
        self.loaded
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), plugin.clone());
        Ok(plugin)
    }
}
