//! Scale-out (issue 25; the design is `docs/cluster.md`, "Scale-out"): in a
//! partitioned cluster the records are of two kinds.
//!
//! - The **control plane** (tenants, keys, subscriptions, plugins, sources,
//!   applications, the catalog, portal links, ops endpoints, dead letters)
//!   goes through the control log, which every node applies, as before.
//! - The **data** ([`DATA_TREES`]: events, deliveries and their indexes, the
//!   outbox, windows and held items, ordering lines) belongs to its
//!   tenant's partition (`partition_of(tenant)`), and each partition has a
//!   log of its own (a stream per partition, so their leaders spread over
//!   the NATS servers). Only the partition's owner (the node holding its
//!   lease) reads that log into its view: a node applies and stores only
//!   its partitions' data.
//!
//! All of a tenant's data is in one partition, so an acceptance, an
//! attempt record or a window's flush is one batch of one log, guarded
//! against one view, as in the replica set: nothing spans partitions. The
//! cost is that one tenant's load is one node's (docs/cluster.md says what
//! bounds it). Requests for a tenant another node owns are forwarded to
//! it (`api/forward.rs`).
//!
//! The views share the node's one sled database: every log's batches touch
//! keys no other log's do (a partition's keys are its tenants'), so each
//! view is a function of its own log whatever order the node reads them in.
//! A partition that moves away is dropped from the database; its next
//! owner rebuilds it from the partition's log.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use super::cluster::log::{Batch, Channel, Log, View, Write};
use super::*;

/// The trees of the data: each key belongs to one tenant's partition.
pub const DATA_TREES: &[&str] = &[
    "events",
    "events_by_time",
    "deliveries",
    "tenant_deliveries",
    "outbox",
    "held",
    "windows",
    "lanes",
    "lane_items",
];

/// Whether `tree` holds data (partitioned) rather than the control plane.
pub fn is_data_tree(tree: &str) -> bool {
    DATA_TREES.contains(&tree)
}

/// The trees a partitioned node keeps out of the control log's snapshots:
/// its own, and the data (which has its own logs).
pub(super) const PARTITIONED_LOCAL_TREES: &[&str] =
    &joined::<{ NODE_LOCAL_TREES.len() + DATA_TREES.len() }>(NODE_LOCAL_TREES, DATA_TREES);

/// Two lists of names as one (`N`: their lengths' sum).
const fn joined<const N: usize>(a: &[&'static str], b: &[&'static str]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < a.len() {
        out[i] = a[i];
        i += 1;
    }
    let mut j = 0;
    while j < b.len() {
        out[a.len() + j] = b[j];
        j += 1;
    }
    out
}

/// A hook on applied batches, shared by every view of the node.
pub(super) type SharedHook = Arc<dyn Fn(&Batch) + Send + Sync>;

/// The partitions' logs this node follows.
pub(super) struct Partitions {
    pub(super) count: u32,
    client: async_nats::Client,
    replicas: usize,
    node: String,
    db: sled::Db,
    scratch: PathBuf,
    logs: RwLock<HashMap<u32, Arc<Log>>>,
    /// Given up, their data not dropped yet.
    released: Mutex<HashMap<u32, Arc<Log>>>,
    /// One partition opened or dropped at a time.
    turns: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<()>>>>,
    /// Hooks every view gets, including those opened later.
    hooks: Mutex<Vec<SharedHook>>,
    /// The database's applier thread, shared by every view.
    coalescer: Arc<super::cluster::log::Coalescer>,
    /// Each partition's write groups (`group.rs`), made at its first write.
    groups: Mutex<HashMap<u32, Arc<super::group::Groups>>>,
}

impl Partitions {
    pub(super) fn new(
        count: u32,
        client: async_nats::Client,
        replicas: usize,
        node: &str,
        db: sled::Db,
        scratch: PathBuf,
        coalescer: Arc<super::cluster::log::Coalescer>,
    ) -> Self {
        Partitions {
            coalescer,
            count: count.max(1),
            client,
            replicas,
            node: node.to_string(),
            db,
            scratch,
            logs: RwLock::default(),
            released: Mutex::default(),
            turns: Mutex::default(),
            hooks: Mutex::default(),
            groups: Mutex::default(),
        }
    }

    /// Partition `p`'s turn: one opening or dropping of it at a time.
    fn turn(&self, p: u32) -> Arc<tokio::sync::Mutex<()>> {
        self.turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(p)
            .or_default()
            .clone()
    }

    pub(super) fn log(&self, p: u32) -> Option<Arc<Log>> {
        self.logs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&p)
            .cloned()
    }

    pub(super) fn add_hook(&self, hook: SharedHook) {
        for log in self.logs.read().unwrap_or_else(|e| e.into_inner()).values() {
            let hook = hook.clone();
            log.view().on_applied(Box::new(move |b| hook(b)));
        }
        self.hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    fn opened(&self) -> Vec<u32> {
        let mut open: Vec<u32> = self
            .logs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        open.sort_unstable();
        open
    }
}

/// The partition of a tenant's data: FNV-1a of its id, as every node and
/// version computes it.
pub fn partition_of_tenant(tenant_id: &str, partitions: u32) -> u32 {
    crate::cluster::leases::partition_of(tenant_id, partitions)
}

impl Store {
    pub(super) fn partitions(&self) -> Option<&Partitions> {
        self.cluster().and_then(|c| c.parts.as_deref())
    }

    /// A partitioned cluster: how many partitions the data has (None: the
    /// embedded store or a replica set, where every node has everything).
    pub fn data_partitions(&self) -> Option<u32> {
        self.partitions().map(|p| p.count)
    }

    /// A partitioned cluster: the partition of a tenant's data.
    pub fn partition_of(&self, tenant_id: &str) -> Option<u32> {
        self.partitions()
            .map(|p| partition_of_tenant(tenant_id, p.count))
    }

    /// Whether this node has the tenant's data (always, unless in a
    /// partitioned cluster another node owns its partition).
    pub fn has_data_of(&self, tenant_id: &str) -> bool {
        self.require_data(tenant_id).is_ok()
    }

    /// Before a read of a tenant's data: a partitioned node that does not
    /// hold the tenant's partition answers 503 (the partition is moving, or
    /// the cluster is starting), never "not found".
    pub fn require_data(&self, tenant_id: &str) -> Result<(), StoreError> {
        match self.partitions() {
            Some(_) => self.data_log(tenant_id).map(|_| ()),
            None => Ok(()),
        }
    }

    /// A partitioned cluster: the write groups of the tenant's partition
    /// (each partition's writes are grouped apart, into its own log's
    /// batches). None: not partitioned (the store's one set of groups).
    pub(super) fn partition_groups(&self, tenant_id: &str) -> Option<Arc<super::group::Groups>> {
        let parts = self.partitions()?;
        let p = partition_of_tenant(tenant_id, parts.count);
        let mut groups = parts.groups.lock().unwrap_or_else(|e| e.into_inner());
        Some(
            groups
                .entry(p)
                .or_insert_with(|| {
                    Arc::new(super::group::Groups::start_with(
                        self,
                        super::group::PARTITION_IN_FLIGHT,
                    ))
                })
                .clone(),
        )
    }

    /// The partitions whose data this node holds now.
    pub fn open_partitions(&self) -> Vec<u32> {
        self.partitions()
            .map(Partitions::opened)
            .unwrap_or_default()
    }

    /// The log a write of `tenant`'s data goes to: the partition's, which
    /// this node must own; else (control, or not partitioned) the one log.
    pub(super) fn data_log(&self, tenant_id: &str) -> Result<Arc<Log>, StoreError> {
        let parts = self.partitions().expect("partitioned");
        self.partition_log(partition_of_tenant(tenant_id, parts.count))
    }

    /// Partitioned: partition `p`'s log, which this node must hold.
    pub(super) fn partition_log(&self, p: u32) -> Result<Arc<Log>, StoreError> {
        self.partitions()
            .and_then(|parts| parts.log(p))
            .ok_or(StoreError::NotOwner(p))
    }

    /// Takes partition `p`: opens its log and applies it from where this
    /// node's view of it stopped (from the start after it was dropped),
    /// up to its end, before returning; from then on its data is here and
    /// its writes go through this node.
    pub async fn open_partition(&self, p: u32) -> Result<(), StoreError> {
        let Some(parts) = self.partitions() else {
            return Ok(());
        };
        let _turn = parts.turn(p).lock_owned().await;
        if parts.log(p).is_some() {
            return Ok(());
        }
        // Given up a moment ago and not dropped yet: read on from where its
        // view stopped (the log has everything written since).
        parts
            .released
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&p);
        let index = self.data_index();
        let count = parts.count;
        let member = Arc::new(move |tree: &str, key: &[u8], value: &[u8]| {
            // A record whose tenant cannot be told (a held item of a window
            // gone) is no one's: every holder drops it.
            index
                .tenant_of(tree, key, Some(value))
                .ok()
                .flatten()
                .is_none_or(|t| partition_of_tenant(&t, count) == p)
        });
        let view = View::open_channel(parts.db.clone(), Channel::partition(p))?
            .with_scratch(&parts.scratch)
            .with_local_trees(PARTITIONED_LOCAL_TREES)
            .with_coalescer(parts.coalescer.clone())
            .with_scope(DATA_TREES, member);
        for hook in parts.hooks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let hook = hook.clone();
            view.on_applied(Box::new(move |b| hook(b)));
        }
        let log = Log::open(
            parts.client.clone(),
            parts.replicas,
            &parts.node,
            Arc::new(view),
        )
        .await?;
        log.caught_up().await?;
        parts
            .logs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(p, Arc::new(log));
        Ok(())
    }

    /// Compaction of the partitions this node holds: each one's view
    /// snapshotted and its log purged below the previous snapshot (see
    /// [`Log::compact`]). Per partition: the snapshot's sequence and where
    /// its log starts now, if it was purged.
    pub async fn compact_partitions(&self) -> Vec<(u32, Result<(u64, Option<u64>), StoreError>)> {
        let Some(parts) = self.partitions() else {
            return Vec::new();
        };
        let mut done = Vec::new();
        for p in parts.opened() {
            let Some(log) = parts.log(p) else {
                continue;
            };
            done.push((p, log.compact().await.map_err(StoreError::from)));
        }
        done
    }

    /// Gives partition `p` up at once: its writes are refused from now
    /// on (503: the client retries, reaching the new holder) and its view
    /// applies nothing more. Its data is dropped by [`Store::drop_released`]
    /// (or before the partition is taken again).
    pub fn release_partition(&self, p: u32) {
        let Some(parts) = self.partitions() else {
            return;
        };
        let released = parts
            .logs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&p);
        if let Some(log) = released {
            log.stop();
            parts
                .released
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(p, log);
        }
    }

    /// Drops the data of partition `p`, given up and not taken back since
    /// (its next holder rebuilds it from the partition's log): how many
    /// records.
    pub async fn drop_released(&self, p: u32) -> Result<usize, StoreError> {
        let Some(parts) = self.partitions() else {
            return Ok(0);
        };
        let _turn = parts.turn(p).lock_owned().await;
        let released = parts
            .released
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&p);
        let Some(log) = released else {
            return Ok(0);
        };
        let dropped = tokio::task::spawn_blocking(move || log.view().drop_all())
            .await
            .map_err(|e| StoreError::Commit(e.to_string()))??;
        tracing::info!(
            partition = p,
            records = dropped,
            "a given-up partition's data dropped"
        );
        Ok(dropped)
    }

    /// The trees that tell a data record's tenant.
    fn data_index(&self) -> DataIndex {
        DataIndex {
            outbox: self.outbox.clone(),
            deliveries: self.deliveries.clone(),
            windows: self.windows.clone(),
        }
    }

    /// Partitioned: `writes` of data grouped by the partition each belongs
    /// to (`hint`: the tenant of those that cannot be told).
    pub(super) fn group_by_partition(
        &self,
        writes: Vec<Write>,
        hint: Option<&str>,
    ) -> Result<BTreeMap<u32, Vec<Write>>, StoreError> {
        let count = self.partitions().expect("partitioned").count;
        let index = self.data_index();
        let mut grouped: BTreeMap<u32, Vec<Write>> = BTreeMap::new();
        for w in writes {
            let tenant = match index.tenant_of(&w.tree, &w.key, w.value.as_deref())? {
                Some(t) => t,
                None => match hint {
                    Some(t) => t.to_string(),
                    None => {
                        return Err(StoreError::Commit(format!(
                            "a write of {} without a tenant in a partitioned cluster",
                            w.tree
                        )));
                    }
                },
            };
            grouped
                .entry(partition_of_tenant(&tenant, count))
                .or_default()
                .push(w);
        }
        Ok(grouped)
    }
}

/// The trees that tell a data record's tenant when its key does not.
struct DataIndex {
    outbox: Tree,
    deliveries: Tree,
    windows: Tree,
}

impl DataIndex {
    /// The tenant a write of the data (`value`: None for a removal)
    /// belongs to, from its key (most trees start with the tenant), its
    /// value, or what the key holds now (a removal). None: it cannot be
    /// told (a held item whose window is gone). Asked of every write of
    /// a partitioned node and of every record a partition's snapshot
    /// scans, so it copies nothing it can borrow and decodes a delivery's
    /// tenant alone.
    fn tenant_of(
        &self,
        tree: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<Option<String>, StoreError> {
        let first = |bytes: &[u8]| {
            bytes
                .split(|b| *b == 0)
                .next()
                .map(|t| String::from_utf8_lossy(t).into_owned())
        };
        // The value written, or (a removal) what the key holds now.
        let current = |tree: &Tree| -> Result<Option<Current<'_>>, StoreError> {
            Ok(match value {
                Some(v) => Some(Current::Written(v)),
                None => tree.get(key)?.map(Current::Stored),
            })
        };
        Ok(match tree {
            "events" | "events_by_time" | "tenant_deliveries" | "lanes" | "lane_items" => {
                first(key)
            }
            "outbox" => current(&self.outbox)?.and_then(|v| first(&v)),
            "deliveries" => match current(&self.deliveries)? {
                Some(v) => Some(delivery_tenant(key, &v)?),
                None => None,
            },
            "windows" => match current(&self.windows)? {
                Some(v) => Some(decode::<WindowState>(key, &v)?.tenant_id),
                None => None,
            },
            // sub \0 window start (8 bytes) \0 seq: the window's tenant.
            "held" => {
                let Some(sub_len) = key.iter().position(|b| *b == 0) else {
                    return Ok(None);
                };
                let window = &key[..(sub_len + 9).min(key.len())];
                match self.windows.get(window)? {
                    Some(v) => Some(decode::<WindowState>(window, &v)?.tenant_id),
                    None => None,
                }
            }
            _ => None,
        })
    }
}

/// A record's value as [`DataIndex::tenant_of`] reads it: the one being
/// written (borrowed), or the one a removal takes away (read from the view).
enum Current<'a> {
    Written(&'a [u8]),
    Stored(sled::IVec),
}

impl std::ops::Deref for Current<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Current::Written(v) => v,
            Current::Stored(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partitioned_nodes_own_trees_are_its_local_ones_and_the_data() {
        let want: Vec<&str> = NODE_LOCAL_TREES.iter().chain(DATA_TREES).copied().collect();
        assert_eq!(PARTITIONED_LOCAL_TREES, want.as_slice());
        assert!(DATA_TREES.iter().all(|t| is_data_tree(t)));
        assert!(!is_data_tree("subscriptions"));
    }
}
