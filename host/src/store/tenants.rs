//! Tenants and their API keys (stored by the SHA-256 of the key).

use super::*;

impl Store {
    pub async fn put_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        let mut w = self.plain().await;
        w.insert(&self.tenants, &tenant.id, encode(tenant))?;
        w.commit().await
    }

    pub fn get_tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        self.tenants
            .get(id)?
            .map(|v| decode(id.as_bytes(), &v))
            .transpose()
    }

    pub fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        self.tenants
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Deletes a tenant with all it owns: keys, subscriptions with their
    /// held window items, plugin records, applications and their uids
    /// and portal links, the event-type catalog, sources with their id index and
    /// dead letters, and its ops endpoint. Events and deliveries age out
    /// with the retention (a pending delivery of a deleted subscription
    /// fails as such). Plugin bytes no other tenant uses are the caller's
    /// to drop first ([`Store::delete_plugin`]), and running feeds its to
    /// stop.
    pub async fn delete_tenant(&self, id: &str) -> Result<bool, StoreError> {
        let mut w = self.plain_of(Some(id)).await;
        if !w.remove(&self.tenants, id)? {
            return Ok(false);
        }
        let prefix = tenant_prefix(id);
        for kv in self.subscriptions.scan_prefix(&prefix) {
            let (key, _) = kv?;
            let subscription_id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            for tree in [&self.held, &self.windows] {
                for held in tree.scan_prefix(scoped(&subscription_id, "")).keys() {
                    w.remove(tree, held?)?;
                }
            }
            w.remove(&self.subscriptions, key)?;
        }
        for kv in self.portal_links.scan_prefix(&prefix) {
            let (key, v) = kv?;
            let link: PortalLink = decode(&key, &v)?;
            if let Ok(hash) = hex::decode(&link.token_hash) {
                w.remove(&self.portal_tokens, hash)?;
            }
            w.remove(&self.portal_links, key)?;
        }
        for tree in [&self.plugins, &self.apps, &self.app_uids, &self.event_types] {
            for kv in tree.scan_prefix(&prefix) {
                w.remove(tree, kv?.0)?;
            }
        }
        for kv in self.sources.scan_prefix(&prefix) {
            let (key, _) = kv?;
            let source_id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            w.remove(&self.source_index, source_id.as_bytes())?;
            for letter in self.dead_letters.scan_prefix(scoped(&source_id, "")).keys() {
                w.remove(&self.dead_letters, letter?)?;
            }
            w.remove(&self.sources, key)?;
        }
        w.remove(&self.ops_endpoints, id)?;
        for kv in self.api_keys.iter() {
            let (k, v) = kv?;
            let record: ApiKeyRecord = decode(&k, &v)?;
            if record.tenant_id == id {
                w.remove(&self.api_keys, k)?;
            }
        }
        w.commit().await?;
        self.routes.invalidate(id);
        Ok(true)
    }

    pub async fn put_api_key(&self, key: &str, record: &ApiKeyRecord) -> Result<(), StoreError> {
        let mut w = self.plain().await;
        w.insert(&self.api_keys, token_hash(key), encode(record))?;
        w.commit().await
    }

    /// A tenant's API keys with their ids, oldest first.
    pub fn list_api_keys(
        &self,
        tenant_id: &str,
    ) -> Result<Vec<(String, ApiKeyRecord)>, StoreError> {
        let mut keys = Vec::new();
        for kv in self.api_keys.iter() {
            let (hash, v) = kv?;
            let record: ApiKeyRecord = decode(&hash, &v)?;
            if record.tenant_id == tenant_id {
                keys.push((api_key_id(&hash), record));
            }
        }
        keys.sort_by_key(|(_, r)| r.created_at);
        Ok(keys)
    }

    /// Revokes one of a tenant's API keys by id.
    pub async fn delete_api_key(&self, tenant_id: &str, id: &str) -> Result<bool, StoreError> {
        let mut found = None;
        for kv in self.api_keys.iter() {
            let (hash, v) = kv?;
            if api_key_id(&hash) == id && decode::<ApiKeyRecord>(&hash, &v)?.tenant_id == tenant_id
            {
                found = Some(hash);
                break;
            }
        }
        let Some(hash) = found else {
            return Ok(false);
        };
        let mut w = self.plain().await;
        let existed = w.remove(&self.api_keys, hash)?;
        w.commit().await?;
        Ok(existed)
    }

    /// The tenant an API key belongs to.
    pub fn tenant_for_key(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.tenant_for_key_hash(&token_hash(key))
    }

    /// [`Store::tenant_for_key`] by the key's SHA-256 (a key checked
    /// earlier, checked again: still there, not revoked).
    pub fn tenant_for_key_hash(&self, hash: &[u8]) -> Result<Option<String>, StoreError> {
        match self.api_keys.get(hash)? {
            Some(v) => Ok(Some(decode::<ApiKeyRecord>(hash, &v)?.tenant_id)),
            None => Ok(None),
        }
    }
}
