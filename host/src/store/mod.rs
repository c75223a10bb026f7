//! The only module that touches sled. One tree per record type, keyed for
//! the scans the engine and the API need; changes that span trees run in sled
//! transactions; acceptance is made durable by a group commit (many requests,
//! one fsync).
//!
//! | tree | key | value |
//! |---|---|---|
//! | `tenants` | tenant id | [`Tenant`] |
//! | `api_keys` | SHA-256 of the key | [`ApiKeyRecord`] |
//! | `subscriptions` | tenant id `\0` subscription id | [`Subscription`] |
//! | `plugins` | tenant id `\0` plugin id | [`PluginRecord`] |
//! | `plugin_blobs` | SHA-256 (hex) | component bytes |
//! | `events` | tenant id `\0` event id | [`StoredEvent`] |
//! | `events_by_time` | received ms (BE) tenant `\0` event id | – |
//! | `deliveries` | delivery id (time-ordered) | [`Delivery`] |
//! | `tenant_deliveries` | tenant id `\0` delivery id | – |
//! | `outbox` | due ms (BE) delivery id | tenant id `\0` subscription id |
//! | `held` | subscription id `\0` window start ms (BE) seq (BE) | [`HeldRecord`] |
//! | `windows` | subscription id `\0` window start ms (BE) | [`WindowState`] |
//! | `meta` | name | operator settings |

pub mod models;

use std::path::Path;

use jiff::Timestamp;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Db, Transactional, Tree};
use tokio::sync::{mpsc, oneshot};

use crate::clock::millis;
pub use models::*;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record {key} is unreadable: {message}")]
    Corrupt { key: String, message: String },
    #[error("the group commit failed: {0}")]
    Commit(String),
}

impl StoreError {
    /// A fault of the storage (disk full, I/O error, the committer gone):
    /// callers answer 503 and retry, since it may clear by itself. A corrupt
    /// record is not such a fault.
    pub fn is_unavailable(&self) -> bool {
        !matches!(self, StoreError::Corrupt { .. })
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

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
}

/// `subscription \0 start ms (BE)`: one window of one subscription.
pub fn window_key(subscription_id: &str, start: Timestamp) -> Vec<u8> {
    let mut key = scoped(subscription_id, "");
    key.extend_from_slice(&millis(start).to_be_bytes());
    key
}

/// The sled database and its trees.
#[derive(Clone)]
pub struct Store {
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
    meta: Tree,
    commit: mpsc::UnboundedSender<oneshot::Sender<Result<(), String>>>,
}

impl Store {
    /// Opens (or creates) the database in `dir` and starts the group commit.
    /// Must be called inside a tokio runtime.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            // Durability comes from the group commit; the periodic flush only
            // bounds how much non-acknowledged state (attempt results) a
            // crash can lose.
            .flush_every_ms(Some(500))
            .open()?;
        let tree = |name: &str| db.open_tree(name);
        let (commit, requests) = mpsc::unbounded_channel();
        let store = Store {
            tenants: tree("tenants")?,
            api_keys: tree("api_keys")?,
            subscriptions: tree("subscriptions")?,
            plugins: tree("plugins")?,
            plugin_blobs: tree("plugin_blobs")?,
            events: tree("events")?,
            events_by_time: tree("events_by_time")?,
            deliveries: tree("deliveries")?,
            tenant_deliveries: tree("tenant_deliveries")?,
            outbox: tree("outbox")?,
            held: tree("held")?,
            windows: tree("windows")?,
            meta: tree("meta")?,
            db,
            commit,
        };
        tokio::spawn(group_commit(store.db.clone(), requests));
        Ok(store)
    }

    /// Waits until everything written so far is on disk. Concurrent callers
    /// share one fsync: while one flush runs, the next callers queue up and
    /// are all served by the following flush.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.commit
            .send(tx)
            .map_err(|_| StoreError::Commit("the committer is gone".into()))?;
        rx.await
            .map_err(|_| StoreError::Commit("the committer is gone".into()))?
            .map_err(StoreError::Commit)
    }

    /// A small write made durable now: whether the store can take writes.
    pub async fn check(&self) -> Result<(), StoreError> {
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

    // ---- tenants and keys -----------------------------------------------

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

    // ---- subscriptions --------------------------------------------------

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

    /// How many plugins a tenant has uploaded.
    pub fn count_plugins(&self, tenant_id: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.plugins.scan_prefix(tenant_prefix(tenant_id)).keys() {
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

    // ---- plugins ----------------------------------------------------------

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

    // ---- events and deliveries -------------------------------------------

    pub fn get_event(&self, tenant_id: &str, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        let key = scoped(tenant_id, id);
        self.events.get(&key)?.map(|v| decode(&key, &v)).transpose()
    }

    /// Stores events with their deliveries in one transaction: each event is
    /// stored only if the tenant has not sent its id before, together with
    /// its deliveries, their outbox entries and indexes. Not yet durable:
    /// call [`Store::durable`] before acknowledging.
    pub fn accept(&self, batch: &[NewEvent]) -> Result<Vec<Accepted>, StoreError> {
        // A transaction locks every tree it names: leave the window trees
        // out when nothing is held (the common case).
        if batch.iter().all(|n| n.held.is_empty()) {
            (
                &self.events,
                &self.events_by_time,
                &self.deliveries,
                &self.tenant_deliveries,
                &self.outbox,
            )
                .transaction(|(e, t, d, td, o)| accept_tx(batch, [e, t, d, td, o], None))
                .map_err(tx_error)
        } else {
            (
                &self.events,
                &self.events_by_time,
                &self.deliveries,
                &self.tenant_deliveries,
                &self.outbox,
                &self.held,
                &self.windows,
            )
                .transaction(|(e, t, d, td, o, h, w)| {
                    accept_tx(batch, [e, t, d, td, o], Some((h, w)))
                })
                .map_err(tx_error)
        }
    }

    /// Adds deliveries outside ingest (retry, replay, test): delivery,
    /// outbox entry and index in one transaction.
    pub fn add_deliveries(&self, new: &[Delivery]) -> Result<(), StoreError> {
        (&self.deliveries, &self.tenant_deliveries, &self.outbox)
            .transaction(|(deliveries, tenant_deliveries, outbox)| {
                for d in new {
                    put_delivery_tx(deliveries, outbox, d, None)?;
                    tenant_deliveries.insert(scoped(&d.tenant_id, &d.id), &[])?;
                }
                Ok(())
            })
            .map_err(tx_error)
    }

    pub fn get_delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        self.deliveries
            .get(id)?
            .map(|v| decode(id.as_bytes(), &v))
            .transpose()
    }

    /// Replaces a delivery, moving its outbox entry from `previous_due` to
    /// its new `next_attempt_at` in the same transaction.
    pub fn update_delivery(
        &self,
        delivery: &Delivery,
        previous_due: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        (&self.deliveries, &self.outbox)
            .transaction(|(deliveries, outbox)| {
                put_delivery_tx(deliveries, outbox, delivery, previous_due)
            })
            .map_err(tx_error)
    }

    /// A tenant's deliveries, newest first, from `before` (exclusive).
    pub fn tenant_delivery_ids(
        &self,
        tenant_id: &str,
        before: Option<&str>,
    ) -> impl Iterator<Item = Result<String, StoreError>> + '_ {
        let prefix = tenant_prefix(tenant_id);
        let start = prefix.clone();
        let end = match before {
            Some(id) => scoped(tenant_id, id),
            None => {
                let mut end = prefix.clone();
                end.push(0xff);
                end
            }
        };
        let skip = prefix.len();
        self.tenant_deliveries
            .range(start..end)
            .rev()
            .map(move |kv| {
                let (k, _) = kv?;
                Ok(String::from_utf8_lossy(&k[skip..]).into_owned())
            })
    }

    /// Every outbox entry (the queue loads them at start).
    pub fn outbox_entries(&self) -> impl Iterator<Item = Result<DueEntry, StoreError>> + '_ {
        self.outbox.iter().map(|kv| {
            let (key, value) = kv?;
            Ok(DueEntry { key, value })
        })
    }

    /// Number of pending outbox entries.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// A fresh number for ordering held items (monotonic across restarts).
    pub fn next_seq(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    /// Every window with held items, earliest close first.
    pub fn windows(&self) -> Result<Vec<WindowState>, StoreError> {
        let mut all: Vec<WindowState> = self
            .windows
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect::<Result<_, _>>()?;
        all.sort_by_key(|w| w.close_at);
        Ok(all)
    }

    /// One subscription's windows with held items, oldest first.
    pub fn windows_of(&self, subscription_id: &str) -> Result<Vec<WindowState>, StoreError> {
        self.windows
            .scan_prefix(scoped(subscription_id, ""))
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// The items held in one window, in arrival order, with their keys.
    pub fn held_items(
        &self,
        subscription_id: &str,
        start: Timestamp,
    ) -> Result<Vec<(Vec<u8>, HeldRecord)>, StoreError> {
        self.held
            .scan_prefix(window_key(subscription_id, start))
            .map(|kv| {
                let (k, v) = kv?;
                Ok((k.to_vec(), decode(&k, &v)?))
            })
            .collect()
    }

    /// Records a failed flush on the window (its items stay).
    pub fn window_failed(
        &self,
        subscription_id: &str,
        start: Timestamp,
        error: &str,
        retry_at: Timestamp,
    ) -> Result<(), StoreError> {
        let key = window_key(subscription_id, start);
        self.windows
            .transaction(|windows| {
                if let Some(bytes) = windows.get(&key)? {
                    let mut state: WindowState =
                        decode(&key, &bytes).map_err(ConflictableTransactionError::Abort)?;
                    state.last_error = Some(error.to_string());
                    state.retry_at = Some(retry_at);
                    windows.insert(key.as_slice(), encode(&state))?;
                }
                Ok(())
            })
            .map_err(tx_error)
    }

    /// The flush of one window, atomically: the items that were flushed are
    /// removed and the deliveries made of them are added, or nothing changes.
    /// Returns false (and changes nothing) when some of the items are gone
    /// already: another flush took them.
    pub fn commit_flush(
        &self,
        subscription_id: &str,
        start: Timestamp,
        flushed: &[(Vec<u8>, u64)],
        new: &[Delivery],
    ) -> Result<bool, StoreError> {
        let key = window_key(subscription_id, start);
        (
            &self.held,
            &self.windows,
            &self.deliveries,
            &self.tenant_deliveries,
            &self.outbox,
        )
            .transaction(|(held, windows, deliveries, tenant_deliveries, outbox)| {
                for (item_key, _) in flushed {
                    if held.get(item_key)?.is_none() {
                        return Ok(false);
                    }
                }
                for (item_key, _) in flushed {
                    held.remove(item_key.as_slice())?;
                }
                if flushed.is_empty() {
                    windows.remove(key.as_slice())?;
                } else if let Some(bytes) = windows.get(&key)? {
                    let mut state: WindowState =
                        decode(&key, &bytes).map_err(ConflictableTransactionError::Abort)?;
                    state.items = state.items.saturating_sub(flushed.len() as u64);
                    state.bytes = state
                        .bytes
                        .saturating_sub(flushed.iter().map(|(_, b)| b).sum());
                    state.last_error = None;
                    state.retry_at = None;
                    if state.items == 0 {
                        windows.remove(key.as_slice())?;
                    } else {
                        windows.insert(key.as_slice(), encode(&state))?;
                    }
                }
                for d in new {
                    put_delivery_tx(deliveries, outbox, d, None)?;
                    tenant_deliveries.insert(scoped(&d.tenant_id, &d.id), &[])?;
                }
                Ok(true)
            })
            .map_err(tx_error)
    }

    /// Drops every held item of a deleted subscription.
    pub fn drop_windows(&self, subscription_id: &str) -> Result<(), StoreError> {
        let prefix = scoped(subscription_id, "");
        for tree in [&self.held, &self.windows] {
            for kv in tree.scan_prefix(&prefix) {
                tree.remove(kv?.0)?;
            }
        }
        Ok(())
    }

    /// Removes events received before `cutoff` and finished deliveries
    /// created before it. Returns (events, deliveries) removed.
    pub fn prune(&self, cutoff: Timestamp) -> Result<(usize, usize), StoreError> {
        let end = millis(cutoff).to_be_bytes();
        let mut events = 0;
        for kv in self.events_by_time.range(..end.as_slice()) {
            let (k, _) = kv?;
            self.events.remove(&k[8..])?;
            self.events_by_time.remove(&k)?;
            events += 1;
        }
        let boundary = format!(
            "dlv_{}",
            ulid::Ulid::from_parts(millis(cutoff), 0)
                .to_string()
                .to_ascii_lowercase()
        );
        let mut deliveries = 0;
        for kv in self.deliveries.range(..boundary.as_bytes()) {
            let (k, v) = kv?;
            let d: Delivery = decode(&k, &v)?;
            if d.status.is_final() {
                self.deliveries.remove(&k)?;
                self.tenant_deliveries.remove(scoped(&d.tenant_id, &d.id))?;
                deliveries += 1;
            }
        }
        Ok((events, deliveries))
    }

    /// Stored events of a tenant received at or after `since`, oldest first.
    pub fn events_since(
        &self,
        tenant_id: &str,
        since: Timestamp,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let start = millis(since).to_be_bytes();
        let prefix = tenant_prefix(tenant_id);
        let mut out = Vec::new();
        for kv in self.events_by_time.range(start.as_slice()..) {
            let (k, _) = kv?;
            if k[8..].starts_with(&prefix)
                && let Some(v) = self.events.get(&k[8..])?
            {
                out.push(decode(&k[8..], &v)?);
            }
        }
        Ok(out)
    }
}

/// The body of [`Store::accept`]: each event only if its id is new, with
/// its deliveries, outbox entries, indexes and held items.
fn accept_tx(
    batch: &[NewEvent],
    [events, by_time, deliveries, tenant_deliveries, outbox]: [&TransactionalTree; 5],
    windows: Option<(&TransactionalTree, &TransactionalTree)>,
) -> TxResult<Vec<Accepted>> {
    let mut results = Vec::with_capacity(batch.len());
    let mut seen = std::collections::HashSet::new();
    for new in batch {
        let e = &new.event;
        let key = scoped(&e.tenant_id, &e.event.id);
        if new.replay {
            if let Some(bytes) = events.get(&key)? {
                let mut stored: StoredEvent =
                    decode(&key, &bytes).map_err(ConflictableTransactionError::Abort)?;
                stored
                    .deliveries
                    .extend(new.deliveries.iter().map(|d| d.id.clone()));
                events.insert(key.as_slice(), encode(&stored))?;
            }
        } else if let Some(existing) = events.get(&key)? {
            let existing = decode(&key, &existing).map_err(ConflictableTransactionError::Abort)?;
            results.push(Accepted::Duplicate(Box::new(existing)));
            continue;
        }
        if !new.replay && !seen.insert(key.clone()) {
            // The same id twice in one batch: the first one counts.
            results.push(Accepted::Duplicate(Box::new(e.clone())));
            continue;
        }
        if !new.replay {
            events.insert(key.as_slice(), encode(e))?;
            let mut time_key = millis(e.received_at).to_be_bytes().to_vec();
            time_key.extend_from_slice(&key);
            by_time.insert(time_key, &[])?;
        }
        for d in &new.deliveries {
            put_delivery_tx(deliveries, outbox, d, None)?;
            tenant_deliveries.insert(scoped(&d.tenant_id, &d.id), &[])?;
        }
        if let Some((held, windows)) = windows {
            for h in &new.held {
                hold_tx(held, windows, h, &e.event.id)?;
            }
        }
        results.push(Accepted::New);
    }
    Ok(results)
}

/// Stores one held item and counts it in its window's state.
fn hold_tx(
    held: &TransactionalTree,
    windows: &TransactionalTree,
    h: &HeldWrite,
    event_id: &str,
) -> TxResult<()> {
    let wkey = window_key(&h.subscription_id, h.start);
    let mut state: WindowState = match windows.get(&wkey)? {
        Some(bytes) => decode(&wkey, &bytes).map_err(ConflictableTransactionError::Abort)?,
        None => WindowState {
            tenant_id: h.tenant_id.clone(),
            subscription_id: h.subscription_id.clone(),
            start: h.start,
            end: h.end,
            close_at: h.close_at,
            items: 0,
            bytes: 0,
            last_error: None,
            retry_at: None,
        },
    };
    state.items += 1;
    state.bytes += (h.group.len() + h.item.len()) as u64;
    windows.insert(wkey.as_slice(), encode(&state))?;
    let mut key = wkey;
    key.extend_from_slice(&h.seq.to_be_bytes());
    let record = HeldRecord {
        group: h.group.clone(),
        item: h.item.clone(),
        event_id: event_id.to_string(),
    };
    held.insert(key, encode(&record))?;
    Ok(())
}

/// Writes a delivery and keeps the outbox in step: the old entry (if any) is
/// removed, a new one added when the delivery is pending.
fn put_delivery_tx(
    deliveries: &TransactionalTree,
    outbox: &TransactionalTree,
    d: &Delivery,
    previous_due: Option<Timestamp>,
) -> TxResult<()> {
    if let Some(due) = previous_due {
        outbox.remove(outbox_key(due, &d.id))?;
    }
    if d.status == DeliveryStatus::Pending
        && let Some(due) = d.next_attempt_at
    {
        // The value names the subscription, so the worker can apply the
        // per-subscription cap without decoding the delivery.
        outbox.insert(
            outbox_key(due, &d.id),
            scoped(&d.tenant_id, &d.subscription_id),
        )?;
    }
    deliveries.insert(d.id.as_bytes(), encode(d))?;
    Ok(())
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

/// The committer: one `flush` serves every request that arrived before it.
async fn group_commit(
    db: Db,
    mut requests: mpsc::UnboundedReceiver<oneshot::Sender<Result<(), String>>>,
) {
    while let Some(first) = requests.recv().await {
        let mut waiters = vec![first];
        while let Ok(next) = requests.try_recv() {
            waiters.push(next);
        }
        let result = db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}
