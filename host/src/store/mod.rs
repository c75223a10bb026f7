//! The records, on sled: the only module that touches it. One tree per
//! record type, keyed for the scans the engine and the API need; changes
//! that span trees run in sled transactions; acceptances go through one
//! committer thread that writes all concurrent ones as one group (ordered
//! plain writes behind an intent record, `intent.rs`, so no transaction
//! stalls the readers) and makes them durable with one flush
//! (`commit.rs`). One file per noun (`tenants`, `subscriptions`,
//! `plugins`, `events`, `deliveries`, `windows`); this one holds the
//! database, the calls into the committer and the key helpers. Writes that
//! create work go through [`crate::queue`], which makes them visible to the
//! workers once durable.
//!
//! In cluster mode ([`Store::open_cluster`]) the same trees are this node's
//! view of the cluster's log, and every write of the records goes through
//! `change.rs` as a guarded batch on the log instead of straight to sled;
//! reads are the same. `meta` and the log's own `__log` tree stay this
//! node's, and `plugin_blobs` is a cache of the object store.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `tenants` | tenant id | [`Tenant`] |
//! | `api_keys` | SHA-256 of the key | [`ApiKeyRecord`] |
//! | `subscriptions` | tenant id `\0` subscription id | [`Subscription`] |
//! | `plugins` | tenant id `\0` plugin id | [`PluginRecord`] |
//! | `plugin_blobs` | SHA-256 (hex) | component bytes |
//! | `events` | tenant id `\0` event id | [`StoredEvent`], packed |
//! | `events_by_time` | tenant id `\0` received ms (BE) event id (by tenant, so a replay reads only its tenant's events) | – |
//! | `deliveries` | delivery id (time-ordered) | [`Delivery`], binary (`codec.rs`); without its body when that is the event's |
//! | `tenant_deliveries` | tenant id `\0` subscription id `\0` delivery id | – |
//! | `outbox` | due ms (BE) delivery id | tenant id `\0` subscription id |
//! | `held` | subscription id `\0` window start ms (BE) seq (BE) | [`HeldRecord`] |
//! | `windows` | subscription id `\0` window start ms (BE) | [`WindowState`] |
//! | `ops_endpoints` | tenant id | [`Subscription`]: the tenant's operational webhook (see `notify`) |
//! | `sources` | tenant id `\0` source id | [`Source`] |
//! | `source_index` | source id | tenant id (an inbound request names only the source) |
//! | `dead_letters` | source id `\0` dead-letter id (time-ordered) | [`DeadLetter`] |
//! | `meta` | name | health probe; `artifact/<file>`: SHA-256 of a compiled-plugin cache file |
//! | `intents` | chunk number (BE u32) | the acceptance group being written: per event its key, receipt ms and delivery ids (empty between groups, see `intent.rs`) |
//!
//! Values are JSON, but for the two records every acceptance writes:
//! events are "packed" (LZ4 of the JSON, see [`encode_packed`]), and
//! deliveries, which every attempt also rewrites, are binary (postcard,
//! see `codec.rs`). Records written in an earlier form still read.

mod change;
pub use change::Changes;
#[cfg(test)]
mod cluster_tests;
mod codec;
mod commit;
mod deliveries;
mod events;
mod group;
mod intent;
pub mod migrate;
pub mod models;
mod records;
pub use records::{DeadLetter, Kind, NatsFeed, Source, Verify, WindowSpec};
mod plugins;
mod secrets;
pub use secrets::Resealed;
mod sources;
mod subscriptions;
mod tenants;
mod windows;

use std::path::Path;
use std::sync::Arc;

use jiff::Timestamp;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Db, Transactional, Tree};
use tokio::sync::oneshot;

use crate::clock::millis;
pub(crate) use change::TxTree;
pub(crate) use intent::INTENTS_TREE;

/// Trees of a store's sled directory that are this machine's own, never
/// replicated, snapshotted or moved: sled's default tree, `meta` (health
/// probe, compiled-artifact digests), `plugin_blobs` (in cluster mode a
/// cache of the plugin object store) and the committer's intents. Every
/// other tree is a replicated record tree ([`migrate::CARRIED`]).
pub const NODE_LOCAL_TREES: &[&str] = &["__sled__default", "meta", "plugin_blobs", INTENTS_TREE];
pub use models::*;
pub use windows::SubscriptionHeld;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record {key} is unreadable: {message}")]
    Corrupt { key: String, message: String },
    #[error("the commit failed: {0}")]
    Commit(String),
    /// Cluster mode: the log could not take or apply a change.
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

impl StoreError {
    /// A fault of the storage (disk full, I/O error, the committer gone):
    /// callers answer 503 and retry, since it may clear by itself. A corrupt
    /// record is not such a fault.
    pub fn is_unavailable(&self) -> bool {
        !matches!(self, StoreError::Corrupt { .. })
    }
}

pub(crate) type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

/// The first byte of a packed record: LZ4 (block format) of the record's
/// JSON, after the JSON's length (u32, little-endian). JSON starts with
/// `{`, so a reader tells the two apart, and records written before
/// packing read as they were.
const PACKED: u8 = 0x01;

/// The largest JSON a packed record may claim (a corrupt length must not
/// allocate gigabytes).
const MAX_PACKED_JSON: usize = 256 << 20;

/// Events and deliveries, the records every acceptance and attempt writes:
/// their JSON packed with LZ4 when that is smaller. sled copies a leaf's
/// values whole on every split and consolidation, so smaller values are
/// less copying and less disk; LZ4 costs about a microsecond per record.
fn encode_packed<T: Serialize>(value: &T) -> Vec<u8> {
    pack(encode(value))
}

/// `raw` packed (see [`PACKED`]) when that is smaller, else as it is: for
/// bytes that never start with [`PACKED`] themselves.
fn pack(raw: Vec<u8>) -> Vec<u8> {
    let mut out = vec![0; 5 + lz4_flex::block::get_maximum_output_size(raw.len())];
    out[0] = PACKED;
    out[1..5].copy_from_slice(&(raw.len() as u32).to_le_bytes());
    match lz4_flex::block::compress_into(&raw, &mut out[5..]) {
        Ok(n) if 5 + n < raw.len() => {
            out.truncate(5 + n);
            out
        }
        _ => raw,
    }
}

/// A delivery from its record, in whichever form it was written.
fn decode_delivery(key: &[u8], bytes: &[u8]) -> Result<Delivery, StoreError> {
    match bytes.first() {
        Some(&codec::DELIVERY_V1) => codec::decode_delivery_v1(key, bytes),
        _ => decode(key, bytes),
    }
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message,
    };
    let unpacked;
    let json = match bytes.first() {
        Some(&PACKED) => {
            unpacked = unpack(bytes).map_err(corrupt)?;
            &unpacked[..]
        }
        Some(&codec::DELIVERY_V1) => {
            return Err(corrupt(
                "a binary delivery record read as another kind of record".into(),
            ));
        }
        _ => bytes,
    };
    serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))
}

/// The JSON of a packed record.
fn unpack(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (len, packed) = match bytes.get(1..5) {
        Some(len) => (
            u32::from_le_bytes(len.try_into().unwrap()) as usize,
            &bytes[5..],
        ),
        None => return Err("a packed record shorter than its header".into()),
    };
    if len > MAX_PACKED_JSON {
        return Err(format!("a packed record claims {len} bytes"));
    }
    let json = lz4_flex::block::decompress(packed, len).map_err(|e| e.to_string())?;
    match json.len() == len {
        true => Ok(json),
        false => Err(format!(
            "a packed record of {} bytes, not {len}",
            json.len()
        )),
    }
}

/// sled's page cache when the config does not say: sized for a small
/// machine (sled's own default is 1 GiB).
pub const DEFAULT_CACHE_BYTES: u64 = 128 << 20;

/// `tenant \0 id`: tenant-scoped keys, so a prefix scan lists one tenant's.
pub fn scoped(tenant_id: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(tenant_id.len() + 1 + id.len());
    key.extend_from_slice(tenant_id.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

fn tenant_prefix(tenant_id: &str) -> Vec<u8> {
    scoped(tenant_id, "")
}

/// How many keys of `tree` start with `prefix` (keys only, values unread).
fn count_prefix(tree: &Tree, prefix: &[u8]) -> Result<usize, StoreError> {
    let mut n = 0;
    for kv in tree.scan_prefix(prefix).keys() {
        kv?;
        n += 1;
    }
    Ok(n)
}

/// `due ms (BE) ++ delivery id`: the outbox scans in due order.
pub fn outbox_key(due: Timestamp, delivery_id: &str) -> Vec<u8> {
    let mut key = millis(due).to_be_bytes().to_vec();
    key.extend_from_slice(delivery_id.as_bytes());
    key
}

/// The public id of an API key: derived from its stored hash, so it needs
/// no index and names the key without revealing it.
pub fn api_key_id(hash: &[u8]) -> String {
    format!("key_{}", hex::encode(&hash[..hash.len().min(10)]))
}

/// SHA-256 of a secret token, as stored.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// What accepting one event did.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// Stored now, with its deliveries.
    New,
    /// The tenant had already sent this id: nothing changed.
    Duplicate(Box<StoredEvent>),
}

/// One due outbox entry; borrowed views, no allocation per entry scanned.
#[derive(Debug, Clone)]
pub struct DueEntry {
    key: sled::IVec,
    value: sled::IVec,
}

impl DueEntry {
    /// An outbox entry from its key and value as written (in cluster mode,
    /// read from another node's batch); None if the key is too short to be
    /// one.
    pub fn from_parts(key: &[u8], value: &[u8]) -> Option<Self> {
        (key.len() >= 8).then(|| DueEntry {
            key: key.into(),
            value: value.into(),
        })
    }

    pub fn delivery_id(&self) -> &str {
        std::str::from_utf8(&self.key[8..]).unwrap_or_default()
    }

    /// When it is due (ms since the epoch).
    pub fn due_ms(&self) -> u64 {
        let mut ms = [0u8; 8];
        ms.copy_from_slice(&self.key[..8]);
        u64::from_be_bytes(ms)
    }

    fn value_part(&self, first: bool) -> &str {
        let v = &self.value[..];
        let (tenant, sub) = match v.iter().position(|b| *b == 0) {
            Some(i) => (&v[..i], &v[i + 1..]),
            None => (&v[..0], &v[..0]),
        };
        std::str::from_utf8(if first { tenant } else { sub }).unwrap_or_default()
    }

    pub fn tenant_id(&self) -> &str {
        self.value_part(true)
    }

    pub fn subscription_id(&self) -> &str {
        self.value_part(false)
    }
}

/// An event ready to store, with the deliveries routing produced.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// A stored event routed again (replay, test): its deliveries are
    /// appended to the stored record instead of storing the event.
    pub replay: bool,
    pub event: StoredEvent,
    pub deliveries: Vec<Delivery>,
    /// Items plugins held, stored with the event.
    pub held: Vec<HeldWrite>,
    /// Held items plugins took (`host.take-held`), removed with the event.
    pub released: Vec<crate::runtime::TakenItem>,
}

/// `subscription \0 start ms (BE)`: one window of one subscription.
pub fn window_key(subscription_id: &str, start: Timestamp) -> Vec<u8> {
    let mut key = scoped(subscription_id, "");
    key.extend_from_slice(&millis(start).to_be_bytes());
    key
}

/// Cluster mode's write groups (see `group.rs`).
struct Groups {
    /// Batches of events; each gets its acceptances.
    accepts: group::Grouper<Vec<NewEvent>, Vec<Accepted>>,
    /// An attempt's record and the due time it was leased from; each gets
    /// whether it was recorded.
    records: group::Grouper<(Delivery, Timestamp), bool>,
}

/// Events in one group of acceptances at most (a batch larger than a NATS
/// message goes in parts, which costs more round trips).
const GROUP_EVENTS: usize = 1000;
/// Attempt records in one group at most.
const GROUP_RECORDS: usize = 500;

impl Groups {
    fn start(store: &Store) -> Self {
        let accepts: group::WriteGroup<Vec<NewEvent>, Vec<Accepted>> =
            Arc::new(|store: Store, batches: Vec<Vec<NewEvent>>| {
                Box::pin(async move {
                    let events: Vec<&NewEvent> = batches.iter().flatten().collect();
                    let result = store.accept_in_log(&events).await;
                    drop(events);
                    let result = result.map(|accepted| events::split_by_batch(accepted, &batches));
                    (batches, result)
                })
            });
        let records: group::WriteGroup<(Delivery, Timestamp), bool> =
            Arc::new(|store: Store, records: Vec<(Delivery, Timestamp)>| {
                Box::pin(async move {
                    let result = store.record_leased_in_log(&records).await;
                    (records, result)
                })
            });
        let trees = Arc::downgrade(&store.0);
        Groups {
            accepts: group::Grouper::start(trees.clone(), GROUP_EVENTS, Vec::len, accepts),
            records: group::Grouper::start(trees, GROUP_RECORDS, |_| 1, records),
        }
    }
}

/// The sled database and its trees. Cheap to clone: one shared handle
/// (every request and attempt clones it; a clone per tree cost ~2 % of the
/// server's CPU under load).
#[derive(Clone)]
pub struct Store(Arc<Trees>);

impl std::ops::Deref for Store {
    type Target = Trees;

    fn deref(&self) -> &Trees {
        &self.0
    }
}

/// What a [`Store`] shares.
pub struct Trees {
    db: Db,
    tenants: Tree,
    api_keys: Tree,
    subscriptions: Tree,
    plugins: Tree,
    plugin_blobs: Tree,
    events: Tree,
    events_by_time: Tree,
    deliveries: Tree,
    tenant_deliveries: Tree,
    outbox: Tree,
    held: Tree,
    windows: Tree,
    ops_endpoints: Tree,
    sources: Tree,
    source_index: Tree,
    dead_letters: Tree,
    meta: Tree,
    /// The committer thread (see `commit.rs`).
    commit: std::sync::mpsc::Sender<commit::Job>,
    /// Each tenant's subscriptions, decoded once and shared by every ingest
    /// request until one of them changes (see `subscriptions.rs`).
    routes: Arc<subscriptions::RouteCache>,
    /// Cluster mode: the log every write goes through (see `change.rs`);
    /// the trees above are then this node's view of it.
    log: Option<Arc<crate::cluster::log::Log>>,
    /// Cluster mode: plugin components (see `crate::cluster::blobs`).
    blobs: Option<crate::cluster::blobs::Blobs>,
    /// Cluster mode: concurrent acceptances, and concurrent attempt
    /// records, each grouped into one batch of the log (see `group.rs`).
    groups: std::sync::OnceLock<Groups>,
    /// The bodies of recent events, for their deliveries' attempts (see
    /// `events.rs`).
    bodies: events::Bodies,
}

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
    /// through the log (see `change.rs` and [`crate::cluster::log`]).
    pub async fn open_cluster(
        dir: &Path,
        cache_bytes: u64,
        client: async_nats::Client,
        replicas: usize,
        node: &str,
    ) -> Result<Self, StoreError> {
        let db = Self::open_db(dir, cache_bytes)?;
        let view = crate::cluster::log::View::open(db.clone())?.with_scratch(dir);
        // Other nodes' writes change subscriptions too: the applier drops
        // the tenant's cached routes, as a local write does.
        let routes: Arc<subscriptions::RouteCache> = Arc::default();
        let cache = routes.clone();
        // And an event written or removed elsewhere (pruned, then sent again
        // under its id) must not be answered from this node's body cache.
        let bodies = events::Bodies::default();
        let cached_bodies = bodies.clone();
        view.on_applied(Box::new(move |batch| {
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
        }));
        let js = async_nats::jetstream::new(client.clone());
        let blobs = crate::cluster::blobs::Blobs::open(&js, replicas).await?;
        let log = crate::cluster::log::Log::open(client, replicas, node, Arc::new(view)).await?;
        log.caught_up().await?;
        let store = Self::with_db(db, Some((Arc::new(log), blobs)), routes, bodies)?;
        let _ = store.groups.set(Groups::start(&store));
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
        cluster: Option<(Arc<crate::cluster::log::Log>, crate::cluster::blobs::Blobs)>,
        routes: Arc<subscriptions::RouteCache>,
        bodies: events::Bodies,
    ) -> Result<Self, StoreError> {
        let (log, blobs) = cluster.unzip();
        let tree = |name: &str| db.open_tree(name);
        let events = tree("events")?;
        let events_by_time = tree("events_by_time")?;
        let deliveries = tree("deliveries")?;
        let tenant_deliveries = tree("tenant_deliveries")?;
        let outbox = tree("outbox")?;
        let held = tree("held")?;
        let windows = tree("windows")?;
        let writer = commit::Writer {
            db: db.clone(),
            events: events.clone(),
            events_by_time: events_by_time.clone(),
            deliveries: deliveries.clone(),
            tenant_deliveries: tenant_deliveries.clone(),
            outbox: outbox.clone(),
            held: held.clone(),
            windows: windows.clone(),
            intents: tree(intent::INTENTS_TREE)?,
            failed: Default::default(),
        };
        // Before anything reads the outbox: a group a crash interrupted.
        if writer.intents().recover()? > 0 {
            db.flush()?;
        }
        let commit = commit::start(writer)
            .map_err(|e| StoreError::Commit(format!("starting the committer: {e}")))?;
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
            ops_endpoints: tree("ops_endpoints")?,
            sources: tree("sources")?,
            source_index: tree("source_index")?,
            dead_letters: tree("dead_letters")?,
            meta: tree("meta")?,
            db,
            commit,
            routes,
            log,
            blobs,
            groups: std::sync::OnceLock::new(),
            bodies,
        }));
        store.index_subscription_deliveries()?;
        let converted = store.convert_time_keys()?;
        if converted > 0 {
            tracing::info!(converted, "the event time index is now by tenant");
        }
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

    /// Waits until everything written so far is on disk. Concurrent callers
    /// share one flush: the committer serves every call that arrived while
    /// it was busy with the next one.
    pub async fn durable(&self) -> Result<(), StoreError> {
        if self.log().is_some() {
            // Cluster mode: a write returns once the log has it replicated.
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.send(commit::Job::Durable { reply })?;
        rx.await.map_err(|_| gone())?
    }

    /// Stores events with their deliveries, outbox entries, indexes and held
    /// items: each event only if the tenant has not sent its id before.
    /// Returns once on disk, with the batch given back beside its outcomes.
    /// The writes of concurrent calls share one group and one flush.
    pub async fn accept(
        &self,
        batch: Vec<NewEvent>,
    ) -> Result<(Vec<NewEvent>, Vec<Accepted>), StoreError> {
        if self.log().is_some() {
            let (batch, accepted) = match self.groups.get() {
                Some(groups) => groups.accepts.write(batch).await?,
                None => {
                    let events: Vec<&NewEvent> = batch.iter().collect();
                    let accepted = self.accept_in_log(&events).await?;
                    (batch, accepted)
                }
            };
            if crate::util::failpoint_active("accept-slow-commit") {
                // Crash tests: the log has the events (they are durable and
                // may be sent), the caller has no answer yet. The test kills
                // the process inside this minute.
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            }
            self.remember_bodies(&batch, &accepted);
            return Ok((batch, accepted));
        }
        let (reply, rx) = oneshot::channel();
        self.send(commit::Job::Accept { batch, reply })?;
        let (batch, result) = rx.await.map_err(|_| gone())?;
        let accepted = result?;
        self.remember_bodies(&batch, &accepted);
        Ok((batch, accepted))
    }

    /// Cluster mode: `events` accepted in one guarded batch of the log.
    async fn accept_in_log(&self, events: &[&NewEvent]) -> Result<Vec<Accepted>, StoreError> {
        self.change(
            [
                &self.events,
                &self.events_by_time,
                &self.deliveries,
                &self.tenant_deliveries,
                &self.outbox,
                &self.held,
                &self.windows,
            ],
            |[e, t, d, td, o, h, w]| events::accept_tx(events, [e, t, d, td, o], Some((h, w))),
        )
        .await
    }

    /// An attempt's record: the delivery replaced, its outbox entry moved
    /// from `leased` (the entry the worker took it from) to its next due
    /// time, if it is still pending. Plain writes, no transaction (in sled
    /// every transaction costs two waiting disk writes), in an order whose
    /// every prefix a crash may leave is safe: the new entry first (at
    /// worst a delivery is due twice and attempted again under its id),
    /// then the record, then the old entry removed (at worst a stale entry,
    /// which the worker drops when it finds the delivery no longer due).
    /// On disk by the next flush, as before.
    pub async fn record_delivery(
        &self,
        delivery: &Delivery,
        leased: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        if let (Some(_), Some(due)) = (self.log(), leased) {
            return self.record_leased_attempt(delivery, due).await;
        }
        let mut w = self.plain();
        let entry = deliveries::outbox_entry(delivery);
        if let Some((key, value)) = &entry {
            w.insert(&self.outbox, key, value)?;
        }
        w.insert(
            &self.deliveries,
            &delivery.id,
            codec::encode_delivery(delivery),
        )?;
        if let Some(due) = leased {
            let old = outbox_key(due, &delivery.id);
            if entry.is_none_or(|(key, _)| key != old) {
                w.remove(&self.outbox, old)?;
            }
        }
        w.commit().await
    }

    /// Cluster mode: an attempt's record, guarded by the outbox entry it
    /// was leased from. If that entry is gone, another node took the
    /// partition and recorded this delivery since: the new owner's record
    /// stands and this one is dropped (the receiver saw one more attempt
    /// under the same delivery id, which at-least-once allows).
    async fn record_leased_attempt(
        &self,
        delivery: &Delivery,
        leased: Timestamp,
    ) -> Result<(), StoreError> {
        let recorded = match self.groups.get() {
            Some(groups) => groups.records.write((delivery.clone(), leased)).await?.1,
            None => {
                let item = [(delivery.clone(), leased)];
                self.record_leased_in_log(&item).await?[0]
            }
        };
        if !recorded {
            tracing::warn!(
                delivery_id = %delivery.id,
                "attempt not recorded: another node owns this delivery now"
            );
        }
        Ok(())
    }

    /// Attempt records in one batch, each guarded by the outbox entry it
    /// was leased from: whether each was recorded.
    async fn record_leased_in_log(
        &self,
        records: &[(Delivery, Timestamp)],
    ) -> Result<Vec<bool>, StoreError> {
        self.change([&self.outbox, &self.deliveries], |[outbox, deliveries]| {
            let mut recorded = Vec::with_capacity(records.len());
            for (delivery, leased) in records {
                if outbox.get(&outbox_key(*leased, &delivery.id))?.is_none() {
                    recorded.push(false);
                    continue;
                }
                deliveries::put_delivery_tx(deliveries, outbox, delivery, Some(*leased))?;
                recorded.push(true);
            }
            Ok(recorded)
        })
        .await
    }

    fn send(&self, job: commit::Job) -> Result<(), StoreError> {
        self.commit.send(job).map_err(|_| gone())
    }

    /// A small write made durable now: whether the store can take writes.
    pub async fn check(&self) -> Result<(), StoreError> {
        if let Some(log) = self.log() {
            // Cluster mode: the log answers and this node's view keeps up.
            log.caught_up().await?;
            return Ok(());
        }
        self.meta.insert(
            "health",
            &jiff::Timestamp::now().as_millisecond().to_be_bytes(),
        )?;
        self.durable().await
    }

    /// Flushes synchronously (shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    // ---- meta -----------------------------------------------------------

    pub fn meta_get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(name)?.map(|v| v.to_vec()))
    }

    pub fn meta_put(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(name, value)?;
        Ok(())
    }
}

/// The digests of the compiled-plugin cache's files, in `meta` under
/// `artifact/<file name>`: kept apart from the files they vouch for.
impl crate::runtime::ArtifactDigests for Store {
    fn get(&self, name: &str) -> Option<[u8; 32]> {
        let value = self.meta.get(format!("artifact/{name}")).ok()??;
        value.as_ref().try_into().ok()
    }

    fn put(&self, name: &str, digest: [u8; 32]) {
        if let Err(e) = self.meta.insert(format!("artifact/{name}"), &digest[..]) {
            tracing::warn!(error = %e, "recording a compiled plugin's digest failed");
        }
    }

    fn remove(&self, name: &str) {
        let _ = self.meta.remove(format!("artifact/{name}"));
    }
}

/// The committer thread ended (it panicked): nothing can be made durable.
fn gone() -> StoreError {
    StoreError::Commit("the committer is gone".into())
}

#[cfg(test)]
mod packing_tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn packed_records_read_back_and_json_ones_still_read() {
        let value = serde_json::json!({"text": "hello ".repeat(100), "n": 1});
        let packed = encode_packed(&value);
        assert_eq!(packed[0], PACKED);
        assert!(packed.len() < 100, "{} bytes", packed.len());
        assert_eq!(decode::<Value>(b"k", &packed).unwrap(), value);
        // A record written before packing, and one LZ4 would not shrink.
        assert_eq!(decode::<Value>(b"k", &encode(&value)).unwrap(), value);
        let small = serde_json::json!({"a": 1});
        assert_eq!(encode_packed(&small), encode(&small));
    }

    #[test]
    fn a_damaged_packed_record_is_corrupt_not_a_panic() {
        let packed = encode_packed(&serde_json::json!({"text": "hello ".repeat(100)}));
        let mut huge = packed.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut flipped = packed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        for bad in [
            &packed[..3],
            &packed[..packed.len() - 4],
            &huge[..],
            &flipped[..],
        ] {
            match decode::<Value>(b"key", bad) {
                Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, "key"),
                other => panic!("{other:?}"),
            }
        }
    }
}
