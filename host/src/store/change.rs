//! How the records are written on either backend.
//!
//! Reads are the same everywhere: the sled trees on this machine (in
//! cluster mode, the node's view of the log). Writes take one of two forms:
//!
//! - [`Store::change`]: a read-modify-write over named trees that must be
//!   atomic. Embedded: one sled transaction. Cluster: the same closure runs
//!   against a [`Recorder`] of the view, its reads become the batch's
//!   guards, and the batch goes through the log; a conflict (another node
//!   changed what it read) re-runs it on the newer view.
//! - [`Plain`]: writes that need no atomicity. Embedded: each applied at
//!   once, in the order given (record_delivery's crash safety rests on that
//!   order). Cluster: gathered into one batch, applied all at once.
//!
//! The code of a change is written once, against [`TxTree`], for both.

use std::cell::RefCell;

use super::*;
use crate::store::cluster::log::{Batch, Log, Outcome, Recorder, Write, unguarded_batches};

/// How many times a change is re-run after conflicts before it fails
/// (503): only a key fought over by many nodes at once gets there.
const MAX_RERUNS: usize = 16;

/// The size plain writes are split at: under NATS's default message limit
/// (1 MiB) with room for the batch's framing.
const MAX_BATCH_BYTES: usize = 768 * 1024;

/// A tree inside one change: a sled transaction's, or a recorder's.
pub(crate) trait TxTree {
    fn get(&self, key: &[u8]) -> TxResult<Option<sled::IVec>>;
    fn insert(&self, key: &[u8], value: &[u8]) -> TxResult<()>;
    /// Whether the key was there.
    fn remove(&self, key: &[u8]) -> TxResult<bool>;
}

impl TxTree for TransactionalTree {
    fn get(&self, key: &[u8]) -> TxResult<Option<sled::IVec>> {
        Ok(TransactionalTree::get(self, key)?)
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> TxResult<()> {
        TransactionalTree::insert(self, key, value)?;
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> TxResult<bool> {
        Ok(TransactionalTree::remove(self, key)?.is_some())
    }
}

/// One tree of a change being recorded for the log.
struct Recorded<'r, 'v> {
    recorder: &'r RefCell<Recorder<'v>>,
    name: String,
}

fn abort(e: crate::cluster::ClusterError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(StoreError::Cluster(e))
}

impl TxTree for Recorded<'_, '_> {
    fn get(&self, key: &[u8]) -> TxResult<Option<sled::IVec>> {
        let value = self
            .recorder
            .borrow_mut()
            .get(&self.name, key)
            .map_err(abort)?;
        Ok(value.map(sled::IVec::from))
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> TxResult<()> {
        self.recorder
            .borrow_mut()
            .insert(&self.name, key, value.to_vec());
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> TxResult<bool> {
        let mut recorder = self.recorder.borrow_mut();
        let existed = recorder.get(&self.name, key).map_err(abort)?.is_some();
        recorder.remove(&self.name, key);
        Ok(existed)
    }
}

fn tree_name(tree: &Tree) -> String {
    String::from_utf8_lossy(&tree.name()).into_owned()
}

impl Store {
    /// The cluster log, in cluster mode.
    pub(super) fn log(&self) -> Option<&Log> {
        self.cluster().map(|c| &*c.log)
    }

    /// One atomic read-modify-write over `trees` (see the module doc).
    /// `f` may run more than once.
    pub(crate) async fn change<const N: usize, T>(
        &self,
        trees: [&Tree; N],
        f: impl Fn([&dyn TxTree; N]) -> TxResult<T>,
    ) -> Result<T, StoreError> {
        self.change_of(None, trees, f).await
    }

    /// [`Store::change`] of one tenant's data: in a partitioned cluster it
    /// goes to the log of the tenant's partition (which this node must
    /// hold); elsewhere it is the same as [`Store::change`]. A change is
    /// of the control plane or of one tenant's data, never both.
    pub(crate) async fn change_of<const N: usize, T>(
        &self,
        tenant: Option<&str>,
        trees: [&Tree; N],
        f: impl Fn([&dyn TxTree; N]) -> TxResult<T>,
    ) -> Result<T, StoreError> {
        let Some(control) = self.log() else {
            let _pass = self.pass().await;
            return trees
                .as_slice()
                .transaction(|tx| f(std::array::from_fn(|i| &tx[i] as &dyn TxTree)))
                .map_err(tx_error);
        };
        let names: [String; N] = std::array::from_fn(|i| tree_name(trees[i]));
        let partition_log;
        let log = if self.partitions().is_some() {
            let data = names.iter().filter(|n| partitions::is_data_tree(n)).count();
            match (data, tenant) {
                (0, _) => control,
                (d, Some(tenant)) if d == N => {
                    partition_log = self.data_log(tenant)?;
                    &*partition_log
                }
                _ => {
                    return Err(StoreError::Commit(format!(
                        "a change of {names:?} mixes the control plane and data, or names no tenant"
                    )));
                }
            }
        } else {
            control
        };
        let mut last = None;
        for _ in 0..MAX_RERUNS {
            let recorder = RefCell::new(Recorder::new(log.view()));
            let value = {
                let recorded: [Recorded; N] = std::array::from_fn(|i| Recorded {
                    recorder: &recorder,
                    name: names[i].clone(),
                });
                match f(std::array::from_fn(|i| &recorded[i] as &dyn TxTree)) {
                    Ok(v) => v,
                    Err(ConflictableTransactionError::Abort(e)) => return Err(e),
                    Err(ConflictableTransactionError::Storage(e)) => return Err(e.into()),
                    Err(_) => continue,
                }
            };
            let recorder = recorder.into_inner();
            if recorder.is_empty() {
                return Ok(value);
            }
            match log.publish(&recorder.into_batch(log.node())).await? {
                Outcome::Applied { .. } => return Ok(value),
                conflict => last = Some(conflict),
            }
        }
        Err(StoreError::Commit(format!(
            "gave up after {MAX_RERUNS} conflicting changes (the last: {last:?})"
        )))
    }

    /// Cluster mode: waits until this node's view has applied everything
    /// the log held when called (embedded: nothing to wait for).
    /// Cluster mode: snapshots the view and compacts the log (see
    /// [`Log::compact`]): the sequence of the snapshot and where the log
    /// now starts, if it was purged. Embedded: nothing to do (None).
    pub async fn compact(&self) -> Result<Option<(u64, Option<u64>)>, StoreError> {
        match self.log() {
            Some(log) => Ok(Some(log.compact().await?)),
            None => Ok(None),
        }
    }

    /// Cluster mode: resolves with the reason once this node's view can no
    /// longer follow the log (the node must restart). Embedded: never.
    pub async fn failed(&self) -> String {
        match self.log() {
            Some(log) => log.failed().await,
            None => std::future::pending().await,
        }
    }

    /// Partitioned cluster: read leases on the control log (see
    /// `cluster/readers.rs`). Elsewhere: nothing to start.
    /// `ttl` None: this node waits for the others' leases but reads none.
    /// `members`: the cluster's nodes as the partition leases know them.
    pub async fn lease_reads(
        &self,
        ttl: Option<std::time::Duration>,
        members: crate::store::cluster::readers::Members,
    ) -> Result<(), StoreError> {
        if let Some(cluster) = self.cluster() {
            cluster.log.lease_reads(ttl, members).await?;
        }
        Ok(())
    }

    /// Cluster mode: whether requests are served from the view under a
    /// read lease (no round trip to the log) right now.
    pub fn reads_under_lease(&self) -> bool {
        self.log().is_some_and(Log::reads_under_lease)
    }

    /// Cluster mode, at shutdown: this node's read lease ends and its
    /// record goes, so that other nodes' writes stop waiting for it.
    pub async fn leave(&self) {
        if let Some(log) = self.log() {
            log.leave().await;
        }
    }

    pub async fn sync(&self) -> Result<(), StoreError> {
        if let Some(log) = self.log() {
            log.caught_up().await?;
        }
        Ok(())
    }

    /// Cluster mode: this node's name in the log and the leases.
    pub fn node_id(&self) -> Option<&str> {
        self.log().map(Log::node)
    }

    /// Cluster mode: calls `hook` with what every batch this node's view
    /// applies changed, whichever node wrote it (embedded: never), typed:
    /// the stages above follow records, not the store's trees.
    pub fn on_changes(&self, hook: Box<dyn Fn(&Changes) + Send + Sync>) {
        if self.log().is_some() {
            self.on_applied_everywhere(Arc::new(move |batch| {
                let mut changes = Changes::default();
                for w in &batch.writes {
                    let Some(value) = w.value.as_deref() else {
                        continue;
                    };
                    match w.tree.as_str() {
                        "subscriptions" => {
                            if let Ok(sub) = decode::<Subscription>(&w.key, value) {
                                changes.subscriptions.push(sub);
                            }
                        }
                        "outbox" => {
                            if let Some(entry) = DueEntry::from_parts(&w.key, value) {
                                changes.due.push(entry);
                            }
                        }
                        _ => {}
                    }
                }
                if !changes.subscriptions.is_empty() || !changes.due.is_empty() {
                    hook(&changes);
                }
            }));
        }
    }

    /// Cluster mode: `hook` on every batch applied, by the control log's
    /// view and by every partition's (those opened later too).
    pub(super) fn on_applied_everywhere(&self, hook: partitions::SharedHook) {
        let Some(log) = self.log() else {
            return;
        };
        let on_control = hook.clone();
        log.view().on_applied(Box::new(move |b| on_control(b)));
        if let Some(parts) = self.partitions() {
            parts.add_hook(hook);
        }
    }

    /// Writes that need no atomicity (see the module doc). Embedded: waits
    /// while a backup holds the writers.
    pub(super) async fn plain(&self) -> Plain<'_> {
        self.plain_of(None).await
    }

    /// [`Store::plain`], where data written whose tenant the key does not
    /// tell belongs to `tenant` (a partitioned cluster routes each data
    /// write to its tenant's partition).
    pub(super) async fn plain_of(&self, tenant: Option<&str>) -> Plain<'_> {
        Plain {
            recorder: self.log().map(|log| Recorder::new(log.view())),
            store: self,
            tenant: tenant.map(str::to_string),
            _pass: self.pass().await,
        }
    }
}

/// What a batch applied from the cluster's log changed, for the stages
/// that follow it (the queue).
#[derive(Debug, Default)]
pub struct Changes {
    /// Subscriptions written (created or changed), as they are now.
    pub subscriptions: Vec<Subscription>,
    /// Outbox entries written: deliveries now due at their time.
    pub due: Vec<DueEntry>,
}

/// Writes applied at once (embedded) or gathered for one batch (cluster).
pub(super) struct Plain<'s> {
    store: &'s Store,
    recorder: Option<Recorder<'s>>,
    /// The tenant of data writes whose key does not tell it.
    tenant: Option<String>,
    /// Embedded: held until committed (a backup waits for it).
    _pass: Option<super::gate::Pass>,
}

impl Plain<'_> {
    pub(super) fn insert(
        &mut self,
        tree: &Tree,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<(), StoreError> {
        match &mut self.recorder {
            None => {
                tree.insert(key.as_ref(), value.as_ref())?;
            }
            Some(r) => r.insert(&tree_name(tree), key.as_ref(), value.as_ref().to_vec()),
        }
        Ok(())
    }

    /// Whether the key was there (read from this machine's trees).
    pub(super) fn remove(
        &mut self,
        tree: &Tree,
        key: impl AsRef<[u8]>,
    ) -> Result<bool, StoreError> {
        Ok(match &mut self.recorder {
            None => tree.remove(key.as_ref())?.is_some(),
            Some(r) => {
                let existed = tree.get(key.as_ref())?.is_some();
                r.remove(&tree_name(tree), key.as_ref());
                existed
            }
        })
    }

    /// Embedded: nothing left to do. Cluster: publishes the batch and
    /// returns once this node's view has applied it.
    pub(super) async fn commit(self) -> Result<(), StoreError> {
        let (Some(log), Some(recorder)) = (self.store.log(), self.recorder) else {
            return Ok(());
        };
        if self.store.partitions().is_none() {
            return publish_all(log, recorder.into_batches(log.node(), MAX_BATCH_BYTES)).await;
        }
        // Partitioned: the control plane's writes to the control log, each
        // data write to its tenant's partition's log.
        let (control, data): (Vec<Write>, Vec<Write>) = recorder
            .into_writes()
            .into_iter()
            .partition(|w| !partitions::is_data_tree(&w.tree));
        publish_all(log, unguarded_batches(log.node(), control, MAX_BATCH_BYTES)).await?;
        for (p, writes) in self
            .store
            .group_by_partition(data, self.tenant.as_deref())?
        {
            let log = self.store.partition_log(p)?;
            publish_all(&log, unguarded_batches(log.node(), writes, MAX_BATCH_BYTES)).await?;
        }
        Ok(())
    }
}

/// Publishes unguarded batches in order, each applied before the next.
async fn publish_all(log: &Log, batches: Vec<Batch>) -> Result<(), StoreError> {
    for batch in batches {
        match log.publish(&batch).await? {
            Outcome::Applied { .. } => {}
            // A batch without guards cannot conflict.
            conflict => return Err(StoreError::Commit(format!("unexpected {conflict:?}"))),
        }
    }
    Ok(())
}
