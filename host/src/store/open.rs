//! Opening a store: the embedded database or a cluster node's view of the
//! log, the committer, and the one-time conversions of records written by
//! earlier versions.

use std::path::Path;
use std::sync::Arc;

use sled::Db;

use super::*;

impl Store {
    /// Opens (or creates) the database in `dir` with the default cache and
    /// starts the committer thread.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Like [`Store::open`], with sled's page cache capped at `cache_bytes`
    /// (`server.store_cache_mb`; sled's own default is 1 GiB).
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = Self::open_db(dir, cache_bytes)?;
        Self::with_db(db, None, Arc::default(), events::Bodies::default())
    }

    /// Cluster mode: `dir` holds this node's view of the cluster's log
    /// (created or brought up to date from the log), and every write goes
    /// through the log (see `change.rs` and [`crate::store::cluster::log`]).
    pub async fn open_cluster(
        dir: &Path,
        cache_bytes: u64,
        client: async_nats::Client,
        replicas: usize,
        node: &str,
        partitions: Option<u32>,
    ) -> Result<Self, StoreError> {
        let db = Self::open_db(dir, cache_bytes)?;
        let local = match partitions {
            Some(_) => super::partitions::PARTITIONED_LOCAL_TREES,
            None => NODE_LOCAL_TREES,
        };
        let channel = match partitions {
            Some(count) => crate::store::cluster::log::Channel::partitioned_control(count),
            None => crate::store::cluster::log::Channel::control(),
        };
        let view = crate::store::cluster::log::View::open_channel(db.clone(), channel)?
            .with_scratch(dir)
            .with_local_trees(local);
        // Other nodes' writes change subscriptions too: the applier drops
        // the tenant's cached routes, as a local write does.
        let routes: Arc<subscriptions::RouteCache> = Arc::default();
        let cache = routes.clone();
        // And an event written or removed elsewhere (pruned, then sent again
        // under its id) must not be answered from this node's body cache.
        let bodies = events::Bodies::default();
        let cached_bodies = bodies.clone();
        let hook: super::partitions::SharedHook = Arc::new(move |batch| {
            for w in &batch.writes {
                if w.tree == "events" {
                    cached_bodies.forget(&w.key);
                    continue;
                }
                let tenant = match w.tree.as_str() {
                    "subscriptions" => w.key.split(|b| *b == 0).next().unwrap_or_default(),
                    "tenants" => &w.key[..],
                    _ => continue,
                };
                cache.invalidate(&String::from_utf8_lossy(tenant));
            }
        });
        let on_control = hook.clone();
        view.on_applied(Box::new(move |b| on_control(b)));
        let parts = partitions.map(|count| {
            let parts = super::partitions::Partitions::new(
                count,
                client.clone(),
                replicas,
                node,
                db.clone(),
                dir.to_path_buf(),
                view.coalescer(),
            );
            parts.add_hook(hook);
            Box::new(parts)
        });
        let js = async_nats::jetstream::new(client.clone());
        let blobs = crate::store::cluster::blobs::Blobs::open(&js, replicas).await?;
        let log =
            crate::store::cluster::log::Log::open(client, replicas, node, Arc::new(view)).await?;
        log.caught_up().await?;
        let backend = Backend::Cluster(Box::new(ClusterBackend {
            log: Arc::new(log),
            blobs,
            groups: std::sync::OnceLock::new(),
            parts,
        }));
        let store = Self::with_db(db, Some(backend), routes, bodies)?;
        if let Some(cluster) = store.cluster() {
            let _ = cluster.groups.set(Groups::start(&store));
        }
        Ok(store)
    }

    fn open_db(dir: &Path, cache_bytes: u64) -> Result<Db, StoreError> {
        Ok(sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // Durability comes from the committer's flush; the periodic flush only
            // bounds how much non-acknowledged state (attempt results) a
            // crash can lose.
            .flush_every_ms(Some(500))
            .open()?)
    }

    fn with_db(
        db: Db,
        backend: Option<Backend>,
        routes: Arc<subscriptions::RouteCache>,
        bodies: events::Bodies,
    ) -> Result<Self, StoreError> {
        let tree = |name: &str| db.open_tree(name);
        // Before any record is read: a newer binary's store is refused.
        let format = backup::check_format(&tree("meta")?)?;
        let gate: Arc<gate::Gate> = Arc::default();
        let events = tree("events")?;
        let events_by_time = tree("events_by_time")?;
        let deliveries = tree("deliveries")?;
        let tenant_deliveries = tree("tenant_deliveries")?;
        let outbox = tree("outbox")?;
        let held = tree("held")?;
        let windows = tree("windows")?;
        let lanes = tree("lanes")?;
        let lane_items = tree("lane_items")?;
        let backend = match backend {
            Some(backend) => backend,
            None => {
                let writer = commit::Writer {
                    db: db.clone(),
                    events: events.clone(),
                    events_by_time: events_by_time.clone(),
                    deliveries: deliveries.clone(),
                    tenant_deliveries: tenant_deliveries.clone(),
                    outbox: outbox.clone(),
                    held: held.clone(),
                    windows: windows.clone(),
                    lanes: lanes.clone(),
                    lane_items: lane_items.clone(),
                    intents: tree(INTENTS_TREE)?,
                    gate: gate.clone(),
                    failed: Default::default(),
                };
                // Before anything reads the outbox: a group a crash interrupted.
                if writer.intents().recover()? > 0 {
                    db.flush()?;
                }
                Backend::Embedded(
                    commit::start(writer)
                        .map_err(|e| StoreError::Commit(format!("starting the committer: {e}")))?,
                )
            }
        };
        let store = Store(Arc::new(Trees {
            tenants: tree("tenants")?,
            api_keys: tree("api_keys")?,
            subscriptions: tree("subscriptions")?,
            plugins: tree("plugins")?,
            plugin_blobs: tree("plugin_blobs")?,
            events,
            events_by_time,
            deliveries,
            tenant_deliveries,
            outbox,
            held,
            windows,
            lanes,
            lane_items,
            ops_endpoints: tree("ops_endpoints")?,
            sources: tree("sources")?,
            source_index: tree("source_index")?,
            apps: tree("apps")?,
            app_uids: tree("app_uids")?,
            event_types: tree("event_types")?,
            portal_links: tree("portal_links")?,
            portal_tokens: tree("portal_tokens")?,
            dead_letters: tree("dead_letters")?,
            poll_states: tree("poll_states")?,
            meta: tree("meta")?,
            db,
            routes,
            backend,
            bodies,
            gate,
        }));
        store.index_subscription_deliveries()?;
        let converted = store.convert_time_keys()?;
        if converted > 0 {
            tracing::info!(converted, "the event time index is now by tenant");
        }
        backup::migrate(&store, format)?;
        Ok(store)
    }

    /// A store written before the delivery index named the subscription
    /// (`tenant \0 delivery`) gets the new index once, at its first start on
    /// this version: rebuilt from the deliveries themselves.
    fn index_subscription_deliveries(&self) -> Result<(), StoreError> {
        const DONE: &[u8] = b"index/tenant_subscription_deliveries";
        if self.meta.get(DONE)?.is_some() {
            return Ok(());
        }
        self.tenant_deliveries.clear()?;
        for kv in self.deliveries.iter() {
            let (k, v) = kv?;
            let d = decode_delivery(&k, &v)?;
            self.tenant_deliveries
                .insert(deliveries::index_key(&d), &[])?;
        }
        self.meta.insert(DONE, &[])?;
        self.db.flush()?;
        Ok(())
    }
}
