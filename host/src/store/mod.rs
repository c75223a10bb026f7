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
//! The backends live in their own folders: `embedded/` (the committer and
//! its intent record) and `cluster/` (the log, its snapshots, the plugin
//! object store; it knows trees and bytes, not records). `Backend` is the
//! one place the store tells them apart. The store is the ground floor:
//! it imports no stage of the flow, and nothing above it names a tree
//! (`crate::layers` checks both); the stages follow other nodes' writes
//! through [`Changes`], typed records.
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
//! | `lanes` | tenant id `\0` subscription id `\0` key digest | [`LaneState`]: an ordering key's line (`lanes.rs`) |
//! | `lane_items` | lane key `\0` sequence (BE u64) | delivery id: a member of the line |
//! | `ops_endpoints` | tenant id | [`Subscription`]: the tenant's operational webhook (see `notify`) |
//! | `apps` | tenant id `\0` application id | [`Application`] |
//! | `app_uids` | tenant id `\0` uid | application id |
//! | `event_types` | tenant id `\0` type | [`EventType`]: the catalog |
//! | `portal_links` | tenant id `\0` link id | [`PortalLink`]: an application's portal link |
//! | `portal_tokens` | SHA-256 of a portal token | tenant id `\0` link id |
//! | `sources` | tenant id `\0` source id | [`Source`] |
//! | `source_index` | source id | tenant id (an inbound request names only the source) |
//! | `dead_letters` | source id `\0` dead-letter id (time-ordered) | [`DeadLetter`] |
//! | `poll_states` | source id | [`PollState`]: a `poll` source's cursor and last run |
//! | `meta` | name | health probe; `artifact/<file>`: SHA-256 of a compiled-plugin cache file |
//! | `intents` | chunk number (BE u32) | the acceptance group being written: per event its key, receipt ms and delivery ids (empty between groups, see `intent.rs`) |
//!
//! Values are JSON, but for the two records every acceptance writes:
//! events are "packed" (LZ4 of the JSON, see [`encode_packed`]), and
//! deliveries, which every attempt also rewrites, are binary (postcard,
//! see `codec.rs`). Records written in an earlier form still read.

pub mod backup;
mod change;
pub use change::Changes;
pub mod cluster;
#[cfg(test)]
mod cluster_tests;
mod codec;
mod deliveries;
mod encoding;
use encoding::*;
mod embedded;
use embedded::commit;
mod apps;
mod portal;
pub use apps::PutApp;
mod events;
pub use events::EventPage;
mod gate;
mod group;
use group::Groups;
mod backend;
use backend::{Backend, ClusterBackend};
mod keys;
pub use keys::*;
mod lanes;
pub use lanes::{LanePosition, LaneState};
pub mod migrate;
pub mod models;
mod records;
pub use records::{DeadLetter, Kind, NatsFeed, PollFeed, PollState, Source, Verify, WindowSpec};
mod open;
pub mod partitions;
mod plugins;
mod secrets;
mod writes;
pub use secrets::Resealed;
mod sources;
mod subscriptions;
mod tenants;
mod windows;

use std::sync::Arc;

use jiff::Timestamp;
use serde::Serialize;
use serde::de::DeserializeOwned;

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Db, Transactional, Tree};
use tokio::sync::oneshot;

use crate::clock::millis;
pub(crate) use change::TxTree;
pub(crate) use embedded::intent::INTENTS_TREE;

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
    /// The data directory (or a backup) was written by a newer wasmhook,
    /// in a format this one cannot read.
    #[error(
        "the store was written in format {found} (by wasmhook {written_by}); this wasmhook ({}) reads formats up to {supported}: run wasmhook {written_by} or newer, or restore a backup made by this version",
        env!("CARGO_PKG_VERSION")
    )]
    NewerFormat {
        found: u32,
        written_by: String,
        supported: u32,
    },
    /// A backup could not be made or read.
    #[error("backup: {0}")]
    Backup(String),
    /// A partitioned cluster: this node does not hold the partition of the
    /// tenant's data (it moved; the request is retried or forwarded).
    #[error("partition {0} is not held by this node")]
    NotOwner(u32),
}

impl StoreError {
    /// A fault of the storage (disk full, I/O error, the committer gone):
    /// callers answer 503 and retry, since it may clear by itself. A corrupt
    /// record is not such a fault.
    pub fn is_unavailable(&self) -> bool {
        !matches!(
            self,
            StoreError::Corrupt { .. } | StoreError::NewerFormat { .. } | StoreError::Backup(_)
        )
    }
}

pub(crate) type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

/// sled's page cache when the config does not say: sized for a small
/// machine (sled's own default is 1 GiB).
pub const DEFAULT_CACHE_BYTES: u64 = 128 << 20;

/// What accepting one event did.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// Stored now, with its deliveries.
    New,
    /// The tenant had already sent this id: nothing changed.
    Duplicate(Box<StoredEvent>),
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
    lanes: Tree,
    lane_items: Tree,
    ops_endpoints: Tree,
    sources: Tree,
    source_index: Tree,
    apps: Tree,
    app_uids: Tree,
    event_types: Tree,
    portal_links: Tree,
    portal_tokens: Tree,
    dead_letters: Tree,
    poll_states: Tree,
    meta: Tree,
    /// Each tenant's subscriptions, decoded once and shared by every ingest
    /// request until one of them changes (see `subscriptions.rs`).
    routes: Arc<subscriptions::RouteCache>,
    /// Where the writes go: the one thing the backends do differently.
    backend: Backend,
    /// The bodies of recent events, for their deliveries' attempts (see
    /// `events.rs`).
    bodies: events::Bodies,
    /// Embedded: what a backup pauses the writers with (`gate.rs`).
    gate: Arc<gate::Gate>,
}

impl Store {
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

    fn send(&self, job: commit::Job) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(commit) => commit.send(job).map_err(|_| gone()),
            Backend::Cluster(_) => Err(StoreError::Commit(
                "the embedded committer is not used in cluster mode".into(),
            )),
        }
    }

    /// A small write made durable now: whether the store can take writes.
    pub async fn check(&self) -> Result<(), StoreError> {
        if let Some(log) = self.log() {
            // Cluster mode: the log answers and this node's view keeps up
            // (asked, even under a read lease).
            log.reach_end().await?;
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
