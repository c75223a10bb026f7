//! Uploaded plugins: metadata per tenant, component bytes by SHA-256.

use super::*;

impl Store {
    pub fn put_plugin(&self, record: &PluginRecord, wasm: &[u8]) -> Result<(), StoreError> {
        self.plugin_blobs.insert(record.sha256.as_bytes(), wasm)?;
        self.plugins
            .insert(scoped(&record.tenant_id, &record.id), encode(record))?;
        Ok(())
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

    /// Removes a plugin's record (and its bytes when no other record uses
    /// them). Returns the record, and whether its bytes went too.
    pub fn delete_plugin(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<(PluginRecord, bool)>, StoreError> {
        let Some(record) = self.get_plugin(tenant_id, id)? else {
            return Ok(None);
        };
        self.plugins.remove(scoped(tenant_id, id))?;
        let still_used = self.plugins.iter().values().any(|v| {
            v.ok()
                .and_then(|v| serde_json::from_slice::<PluginRecord>(&v).ok())
                .is_some_and(|r| r.sha256 == record.sha256)
        });
        if !still_used {
            self.plugin_blobs.remove(record.sha256.as_bytes())?;
        }
        Ok(Some((record, !still_used)))
    }

    /// How many plugins a tenant has uploaded.
    pub fn count_plugins(&self, tenant_id: &str) -> Result<usize, StoreError> {
        count_prefix(&self.plugins, &tenant_prefix(tenant_id))
    }
}
