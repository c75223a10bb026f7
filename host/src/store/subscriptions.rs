//! Subscriptions, keyed `tenant \\0 id` so a prefix scan lists a tenant's.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// Each tenant's subscriptions as ingest routes with them: read and decoded
/// once, then shared, so a request no longer costs a scan and a JSON decode
/// per subscription of the tenant. Every write to a tenant's subscriptions
/// drops its entry; a generation counter keeps a reader that scanned before
/// such a write from putting its stale copy back.
///
/// The delivery worker reads one subscription per attempt: those are kept
/// here too, by `tenant \0 id`, dropped with their tenant's routes.
#[derive(Default)]
pub(super) struct RouteCache {
    tenants: RwLock<HashMap<String, Arc<Vec<Subscription>>>>,
    one: RwLock<BTreeMap<Vec<u8>, Arc<Subscription>>>,
    generation: AtomicU64,
}

impl RouteCache {
    pub(super) fn invalidate(&self, tenant_id: &str) {
        let mut tenants = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        let mut one = self.one.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        tenants.remove(tenant_id);
        let prefix = tenant_prefix(tenant_id);
        let stale: Vec<Vec<u8>> = one
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            one.remove(&key);
        }
    }
}

impl Store {
    /// The tenant's subscriptions, shared until one of them changes.
    pub fn routes(&self, tenant_id: &str) -> Result<Arc<Vec<Subscription>>, StoreError> {
        let cache = &self.routes;
        if let Some(hit) = cache
            .tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant_id)
        {
            return Ok(hit.clone());
        }
        let generation = cache.generation.load(Ordering::SeqCst);
        let subs = Arc::new(self.list_subscriptions(tenant_id)?);
        let mut tenants = cache.tenants.write().unwrap_or_else(|e| e.into_inner());
        if cache.generation.load(Ordering::SeqCst) == generation {
            tenants.insert(tenant_id.to_string(), subs.clone());
        }
        Ok(subs)
    }

    /// One subscription, shared until it (or any of its tenant's) changes:
    /// what the delivery worker reads per attempt.
    pub fn cached_subscription(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<Arc<Subscription>>, StoreError> {
        let cache = &self.routes;
        let key = scoped(tenant_id, id);
        if let Some(hit) = cache
            .one
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(Some(hit.clone()));
        }
        let generation = cache.generation.load(Ordering::SeqCst);
        let Some(sub) = self.get_subscription(tenant_id, id)?.map(Arc::new) else {
            return Ok(None);
        };
        let mut one = cache.one.write().unwrap_or_else(|e| e.into_inner());
        if cache.generation.load(Ordering::SeqCst) == generation {
            one.insert(key, sub.clone());
        }
        Ok(Some(sub))
    }

    pub async fn put_subscription(&self, sub: &Subscription) -> Result<(), StoreError> {
        let mut w = self.plain().await;
        w.insert(
            &self.subscriptions,
            scoped(&sub.tenant_id, &sub.id),
            encode(sub),
        )?;
        w.commit().await?;
        self.routes.invalidate(&sub.tenant_id);
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
        count_prefix(&self.subscriptions, &tenant_prefix(tenant_id))
    }

    pub async fn delete_subscription(&self, tenant_id: &str, id: &str) -> Result<bool, StoreError> {
        let mut w = self.plain().await;
        let removed = w.remove(&self.subscriptions, scoped(tenant_id, id))?;
        w.commit().await?;
        self.routes.invalidate(tenant_id);
        Ok(removed)
    }

    /// Read-modify-write of one subscription in a transaction (attempt
    /// results and API changes may race). `f` returns false to leave it as is.
    pub async fn update_subscription(
        &self,
        tenant_id: &str,
        id: &str,
        f: impl Fn(&mut Subscription) -> bool,
    ) -> Result<Option<Subscription>, StoreError> {
        Ok(self
            .change_subscription(tenant_id, id, f)
            .await?
            .map(|(_, after)| after))
    }

    /// [`Store::update_subscription`], also answering the record as it was
    /// before, read in the same transaction: a caller compares the two to
    /// see what its change did (e.g. whether it disabled the subscription).
    pub async fn change_subscription(
        &self,
        tenant_id: &str,
        id: &str,
        f: impl Fn(&mut Subscription) -> bool,
    ) -> Result<Option<(Subscription, Subscription)>, StoreError> {
        let key = scoped(tenant_id, id);
        let changed = self
            .change([&self.subscriptions], |[subs]| {
                let Some(bytes) = subs.get(&key)? else {
                    return Ok(None);
                };
                let before: Subscription =
                    decode(&key, &bytes).map_err(ConflictableTransactionError::Abort)?;
                let mut after = before.clone();
                if f(&mut after) {
                    subs.insert(&key, &encode(&after))?;
                }
                Ok(Some((before, after)))
            })
            .await?;
        self.routes.invalidate(tenant_id);
        Ok(changed)
    }
}

/// The tenant's operational webhook: a subscription record of its own
/// (url, secret, signing and retry), kept apart so it never routes events.
impl Store {
    pub fn get_ops_endpoint(&self, tenant_id: &str) -> Result<Option<Subscription>, StoreError> {
        self.ops_endpoints
            .get(tenant_id)?
            .map(|v| decode(tenant_id.as_bytes(), &v))
            .transpose()
    }

    pub async fn put_ops_endpoint(&self, endpoint: &Subscription) -> Result<(), StoreError> {
        let mut w = self.plain().await;
        w.insert(&self.ops_endpoints, &endpoint.tenant_id, encode(endpoint))?;
        w.commit().await
    }

    pub async fn delete_ops_endpoint(&self, tenant_id: &str) -> Result<bool, StoreError> {
        let mut w = self.plain().await;
        let existed = w.remove(&self.ops_endpoints, tenant_id)?;
        w.commit().await?;
        Ok(existed)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A subscription record as the API would have created it (built here,
    /// not through `crate::subscription`, which sits above the store).
    pub(in crate::store) fn sub(id: &str, types: &[&str]) -> Subscription {
        let created_at: Timestamp = "2026-11-21T10:00:00Z".parse().unwrap();
        Subscription {
            id: id.into(),
            tenant_id: "ten_1".into(),
            url: "http://example.com/hook".into(),
            event_types: types.iter().map(|t| t.to_string()).collect(),
            plugin: None,
            signature: Default::default(),
            retry: Default::default(),
            expect_body: None,
            timeout_ms: 1000,
            max_in_flight: 1,
            window: None,
            description: None,
            enabled: true,
            disabled_reason: None,
            secrets: vec![Secret {
                secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                expires_at: None,
            }],
            consecutive_failures: 0,
            created_at,
            updated_at: created_at,
            ordering: None,
            rate_limit: None,
            trace_context: false,
            app_id: None,
            channels: Vec::new(),
            uid: None,
            metadata: Default::default(),
            tls: None,
            destination: None,
        }
    }

    #[tokio::test]
    async fn the_route_cache_follows_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let types = |store: &Store| -> Vec<Vec<String>> {
            store
                .routes("ten_1")
                .unwrap()
                .iter()
                .map(|s| s.event_types.clone())
                .collect()
        };
        assert!(types(&store).is_empty());
        store
            .put_subscription(&sub("sub_a", &["a.*"]))
            .await
            .unwrap();
        assert_eq!(types(&store), [["a.*"]]);
        assert!(Arc::ptr_eq(
            &store.routes("ten_1").unwrap(),
            &store.routes("ten_1").unwrap()
        ));
        store
            .update_subscription("ten_1", "sub_a", |s| {
                s.event_types = vec!["b.*".into()];
                true
            })
            .await
            .unwrap();
        assert_eq!(types(&store), [["b.*"]]);
        store.put_subscription(&sub("sub_b", &["*"])).await.unwrap();
        assert_eq!(types(&store).len(), 2);
        store.delete_subscription("ten_1", "sub_a").await.unwrap();
        assert_eq!(types(&store), [["*"]]);
        store
            .put_tenant(&Tenant {
                id: "ten_1".into(),
                name: "t".into(),
                created_at: "2026-11-21T10:00:00Z".parse().unwrap(),
            })
            .await
            .unwrap();
        store.delete_tenant("ten_1").await.unwrap();
        assert!(types(&store).is_empty());
    }
}
