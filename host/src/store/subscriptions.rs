//! Subscriptions, keyed `tenant \\0 id` so a prefix scan lists a tenant's.

use super::*;

impl Store {
    pub fn put_subscription(&self, sub: &Subscription) -> Result<(), StoreError> {
        self.subscriptions
            .insert(scoped(&sub.tenant_id, &sub.id), encode(sub))?;
        Ok(())
    }

    pub fn get_subscription(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<Subscription>, StoreError> {
        let key = scoped(tenant_id, id);
        self.subscriptions
            .get(&key)?
            .map(|v| decode(&key, &v))
            .transpose()
    }

    pub fn list_subscriptions(&self, tenant_id: &str) -> Result<Vec<Subscription>, StoreError> {
        self.subscriptions
            .scan_prefix(tenant_prefix(tenant_id))
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// How many subscriptions a tenant has (keys only, no decoding).
    pub fn count_subscriptions(&self, tenant_id: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self
            .subscriptions
            .scan_prefix(tenant_prefix(tenant_id))
            .keys()
        {
            kv?;
            n += 1;
        }
        Ok(n)
    }

    pub fn delete_subscription(&self, tenant_id: &str, id: &str) -> Result<bool, StoreError> {
        Ok(self.subscriptions.remove(scoped(tenant_id, id))?.is_some())
    }

    /// Read-modify-write of one subscription in a transaction (attempt
    /// results and API changes may race). `f` returns false to leave it as is.
    pub fn update_subscription(
        &self,
        tenant_id: &str,
        id: &str,
        f: impl Fn(&mut Subscription) -> bool,
    ) -> Result<Option<Subscription>, StoreError> {
        let key = scoped(tenant_id, id);
        self.subscriptions
            .transaction(|subs| {
                let Some(bytes) = subs.get(&key)? else {
                    return Ok(None);
                };
                let mut sub: Subscription =
                    decode(&key, &bytes).map_err(ConflictableTransactionError::Abort)?;
                if f(&mut sub) {
                    subs.insert(key.as_slice(), encode(&sub))?;
                }
                Ok(Some(sub))
            })
            .map_err(tx_error)
    }
}
