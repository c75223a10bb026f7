//! Tenants and their API keys (stored by the SHA-256 of the key).

use super::*;

impl Store {
    pub fn put_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        self.tenants.insert(tenant.id.as_bytes(), encode(tenant))?;
        Ok(())
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
    pub fn delete_tenant(&self, id: &str) -> Result<bool, StoreError> {
        if self.tenants.remove(id)?.is_none() {
            return Ok(false);
        }
        let prefix = tenant_prefix(id);
        for tree in [&self.subscriptions, &self.plugins] {
            for kv in tree.scan_prefix(&prefix) {
                tree.remove(kv?.0)?;
            }
        }
        self.ops_endpoints.remove(id)?;
        self.routes.invalidate(id);
        for kv in self.api_keys.iter() {
            let (k, v) = kv?;
            let record: ApiKeyRecord = decode(&k, &v)?;
            if record.tenant_id == id {
                self.api_keys.remove(k)?;
            }
        }
        Ok(true)
    }

    pub fn put_api_key(&self, key: &str, record: &ApiKeyRecord) -> Result<(), StoreError> {
        self.api_keys.insert(token_hash(key), encode(record))?;
        Ok(())
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
    pub fn delete_api_key(&self, tenant_id: &str, id: &str) -> Result<bool, StoreError> {
        for kv in self.api_keys.iter() {
            let (hash, v) = kv?;
            if api_key_id(&hash) == id && decode::<ApiKeyRecord>(&hash, &v)?.tenant_id == tenant_id
            {
                self.api_keys.remove(hash)?;
                return Ok(true);
            }
        }
        Ok(false)
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
