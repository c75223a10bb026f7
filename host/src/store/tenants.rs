//! Tenants and their API keys (stored by the SHA-256 of the key).

use super::*;

impl Store {
    pub async fn put_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        let mut w = self.plain();
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

    /// Deletes a tenant with its keys, subscriptions and plugins (events and
    /// deliveries age out with the retention).
    pub async fn delete_tenant(&self, id: &str) -> Result<bool, StoreError> {
        let mut w = self.plain();
        if !w.remove(&self.tenants, id)? {
            return Ok(false);
        }
        let prefix = tenant_prefix(id);
        for tree in [&self.subscriptions, &self.plugins] {
            for kv in tree.scan_prefix(&prefix) {
                w.remove(tree, kv?.0)?;
            }
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
        let mut w = self.plain();
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
        let mut w = self.plain();
        let existed = w.remove(&self.api_keys, hash)?;
        w.commit().await?;
        Ok(existed)
    }

    /// The tenant an API key belongs to.
    pub fn tenant_for_key(&self, key: &str) -> Result<Option<String>, StoreError> {
        let hash = token_hash(key);
        match self.api_keys.get(&hash)? {
            Some(v) => Ok(Some(decode::<ApiKeyRecord>(&hash, &v)?.tenant_id)),
            None => Ok(None),
        }
    }
}
