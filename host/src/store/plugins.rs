//! Uploaded plugins: metadata per tenant, component bytes by SHA-256.

use super::*;

impl Store {
    pub async fn put_plugin(&self, record: &PluginRecord, wasm: &[u8]) -> Result<(), StoreError> {
        let mut w = self.plain().await;
        match self.blobs() {
            // Cluster mode: the bytes in the object store, and in this
            // node's cache (the log carries the record only).
            Some(blobs) => {
                blobs.put(&record.sha256, wasm).await?;
                self.plugin_blobs.insert(record.sha256.as_bytes(), wasm)?;
            }
            None => w.insert(&self.plugin_blobs, &record.sha256, wasm)?,
        }
        w.insert(
            &self.plugins,
            scoped(&record.tenant_id, &record.id),
            encode(record),
        )?;
        w.commit().await
    }

    pub fn get_plugin(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<PluginRecord>, StoreError> {
        let key = scoped(tenant_id, id);
        self.plugins
            .get(&key)?
            .map(|v| decode(&key, &v))
            .transpose()
    }

    pub fn list_plugins(&self, tenant_id: &str) -> Result<Vec<PluginRecord>, StoreError> {
        self.plugins
            .scan_prefix(tenant_prefix(tenant_id))
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn plugin_bytes(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.plugin_blobs.get(sha256)?.map(|v| v.to_vec()))
    }

    /// Cluster mode: makes sure this node has a component's bytes (fetched
    /// from the object store on first use), so [`Store::plugin_bytes`]
    /// finds them; false when the object store does not show them (yet).
    /// Embedded: true (they are here, or nowhere).
    pub async fn fetch_plugin(&self, sha256: &str) -> Result<bool, StoreError> {
        let Some(blobs) = self.blobs() else {
            // Embedded: the bytes are here or nowhere; the load that reads
            // them says which (no lookup on every resolve).
            return Ok(true);
        };
        if self.plugin_blobs.contains_key(sha256)? {
            return Ok(true);
        }
        if let Some(bytes) = blobs.get(sha256).await? {
            // The object store is shared: whatever is there must be the
            // component the record names, byte for byte, before it runs.
            let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            if digest != sha256 {
                return Err(StoreError::Corrupt {
                    key: format!("plugin object {sha256}"),
                    message: format!("its bytes hash to {digest}; refused"),
                });
            }
            self.plugin_blobs.insert(sha256.as_bytes(), bytes)?;
            return Ok(true);
        }
        // Not (yet) visible through this node's server: the caller decides
        // whether that may still clear (see `plugins::Registry::resolve`).
        Ok(false)
    }

    /// Removes a plugin's record (and its bytes when no other record uses
    /// them). Returns the record, and whether its bytes went too.
    pub async fn delete_plugin(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<(PluginRecord, bool)>, StoreError> {
        let Some(record) = self.get_plugin(tenant_id, id)? else {
            return Ok(None);
        };
        let key = scoped(tenant_id, id);
        let still_used = self.plugins.iter().any(|kv| {
            kv.ok()
                .filter(|(k, _)| k != &key)
                .and_then(|(_, v)| serde_json::from_slice::<PluginRecord>(&v).ok())
                .is_some_and(|r| r.sha256 == record.sha256)
        });
        let mut w = self.plain().await;
        w.remove(&self.plugins, &key)?;
        if !still_used && self.blobs().is_none() {
            w.remove(&self.plugin_blobs, &record.sha256)?;
        }
        w.commit().await?;
        if let (false, Some(blobs)) = (still_used, self.blobs()) {
            // Cluster mode, once the record is gone: the bytes. Other
            // nodes' cached copies stay, unread (nothing names the digest).
            self.plugin_blobs.remove(record.sha256.as_bytes())?;
            blobs.delete(&record.sha256).await?;
        }
        Ok(Some((record, !still_used)))
    }

    /// How many plugins a tenant has uploaded.
    pub fn count_plugins(&self, tenant_id: &str) -> Result<usize, StoreError> {
        count_prefix(&self.plugins, &tenant_prefix(tenant_id))
    }
}
