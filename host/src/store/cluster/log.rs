//! The replicated log of guarded write batches, and each node's view of it.
//!
//! - A **batch** is what one change of the records writes (tree, key, new
//!   value or removal) together with its **guards**: the keys the change
//!   read and what it found there (a digest of the value, or absent). A
//!   writer builds one with a [`Recorder`] over its view.
//! - The batches go to one JetStream stream ([`STREAM`]), replicated R
//!   times; a publish is acknowledged once R/2+1 servers hold it. The
//!   batch's id is the message id, so a publish retried after a lost
//!   acknowledgement is stored once.
//! - Every node's applier reads the stream in order from where its view
//!   stopped (through a consumer, or by sequence while none can be made:
//!   `log/read.rs`) and applies each batch to the view ([`View::apply`]): if every
//!   guard still holds, its writes in one sled transaction; if one does
//!   not, nothing (a *conflict*). Either way the view records the
//!   sequence it reached in the same transaction, so a restarted node
//!   resumes exactly after the last batch its view kept. The same batches
//!   in the same order with the same rule: every view ends up the same.
//! - The writer waits for its own applier to reach its batch and gets the
//!   outcome: applied, or conflict (someone else changed what it read;
//!   re-run the change on the newer view).
//! - A batch larger than a NATS message (1 MiB unless the servers say
//!   otherwise) goes as **parts**, published in order under one batch id.
//!   A view keeps the parts it has read (in its own tree, with the sequence
//!   reached) and applies the batch at its last part's sequence: the
//!   batch's place in the log's order is where it became whole.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use crate::cluster::{ClusterError, check_setting};

/// The stream of batches.
pub const STREAM: &str = "WASMHOOK_LOG";
/// Its one subject.
const SUBJECT: &str = "wasmhook.log";
/// Scale-out: partition `p`'s data goes to its own stream
/// (`WASMHOOK_P<p>`, subject `wasmhook.p.<p>`), so the streams' leaders
/// spread over the NATS servers and a node reads only what it owns.
pub const PARTITION_STREAM_PREFIX: &str = "WASMHOOK_P";
/// How long JetStream remembers a batch id to drop a re-sent publish.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a writer waits for its own view to apply its batch (the
/// ordered consumer recreates itself after a lost server within this).
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a wait for the view goes before the applier reads anew.
const KICK_AFTER: Duration = Duration::from_secs(3);
/// The view's own tree: the sequence it has applied.
pub(super) const LOG_TREE: &str = "__log";
const APPLIED: &str = "applied";
/// Key prefix of a large batch's parts in [`LOG_TREE`].
pub(super) const PARTS: &str = "part/";

/// Which log a [`View`] follows: the control log (every node), or one
/// partition's data log (its owner). Several views may share one sled
/// database; each keeps its own place in [`LOG_TREE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub stream: String,
    pub subject: String,
    /// Key in [`LOG_TREE`] of the sequence applied.
    applied: Vec<u8>,
    /// Key prefix in [`LOG_TREE`] of a large batch's stashed parts.
    parts: String,
    /// The partition, for a data log.
    pub partition: Option<u32>,
    /// The control stream's description: how the cluster splits its
    /// records (None: a replica set). Checked at every start, so a node
    /// of the other kind cannot join.
    pub mode: Option<String>,
}

impl Channel {
    /// The one log of a replica set; the control log of a partitioned
    /// cluster.
    pub fn control() -> Self {
        Channel {
            stream: STREAM.to_string(),
            subject: SUBJECT.to_string(),
            applied: APPLIED.as_bytes().to_vec(),
            parts: PARTS.to_string(),
            partition: None,
            mode: None,
        }
    }

    /// The control log of a cluster whose data is split into `partitions`.
    pub fn partitioned_control(partitions: u32) -> Self {
        Channel {
            mode: Some(format!("wasmhook: data in {partitions} partitions")),
            ..Self::control()
        }
    }

    /// Partition `p`'s data log. Its keys in [`LOG_TREE`] start with
    /// `applied/` and `ppart/`, which the control log's never do (its
    /// snapshots keep them as they are).
    pub fn partition(p: u32) -> Self {
        Channel {
            stream: format!("{PARTITION_STREAM_PREFIX}{p}"),
            subject: format!("wasmhook.p.{p}"),
            applied: format!("{APPLIED}/p{p}").into_bytes(),
            parts: format!("ppart/{p}/"),
            partition: Some(p),
            mode: None,
        }
    }
}
/// Header of a part: `index/count`.
const PART_HEADER: &str = "Wasmhook-Part";
/// Header of a part: the id of the batch it belongs to.
const BATCH_HEADER: &str = "Wasmhook-Batch";
/// Room left in a message for its headers when a batch is cut into parts.
const PART_HEADROOM: usize = 16 * 1024;
/// Parts of a batch whose last part has not come within this many
/// sequences are dropped (its writer failed midway and re-ran its change
/// under a new id). Counted in sequences so that every view drops them at
/// the same point.
const ORPHAN_PARTS_AFTER: u64 = 100_000;

/// One change of the records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Unique (a ULID); the message id that deduplicates a re-sent publish.
    pub id: String,
    /// The node that wrote it (its applier answers the waiting writer).
    pub node: String,
    pub guards: Vec<Guard>,
    pub writes: Vec<Write>,
}

/// What a key held when the change read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guard {
    pub tree: String,
    pub key: Vec<u8>,
    /// SHA-256 of the value; None: the key was absent.
    pub digest: Option<[u8; 32]>,
}

/// A key set or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    pub tree: String,
    pub key: Vec<u8>,
    /// None: removed.
    pub value: Option<Vec<u8>>,
}

/// What became of a batch, decided by the log's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied {
        seq: u64,
    },
    /// A guard no longer held: the batch changed nothing.
    Conflict {
        seq: u64,
        tree: String,
        key: Vec<u8>,
    },
}

fn digest(value: &[u8]) -> [u8; 32] {
    Sha256::digest(value).into()
}

/// Called with every batch the applier wrote (not with conflicts): what
/// the node keeps beside the view (caches) follows other nodes' writes.
pub type OnApplied = Box<dyn Fn(&Batch) + Send + Sync>;

/// A node's copy of the records: sled trees written only by the applier.
pub struct View {
    db: sled::Db,
    trees: Mutex<HashMap<String, sled::Tree>>,
    log: sled::Tree,
    hooks: std::sync::RwLock<Vec<OnApplied>>,
    /// Where snapshot files are written and downloaded.
    scratch: std::path::PathBuf,
    /// Trees of the database that are the node's own, not the log's:
    /// never written by batches, left out of snapshots.
    local: &'static [&'static str],
    /// The log this view follows.
    channel: Channel,
    /// True once the view is closed (a partition given up): no group
    /// starts after. An atomic, not a lock, so that closing it and a
    /// writer's check never wait on a transaction (both run on tokio
    /// workers).
    closed: std::sync::atomic::AtomicBool,
    /// Held while a group is applied (the flag above is read under it):
    /// [`View::drop_all`] takes it, so a group that started before the
    /// close has ended before the view's records are dropped.
    applying: Mutex<()>,
    /// A partition's view: which records of the shared database are its
    /// own (what its snapshots hold and loading one replaces).
    scope: Option<super::snapshot::Scope>,
    /// The database's applier thread, shared with its other views.
    coalescer: Arc<Coalescer>,
}

impl View {
    pub fn open(db: sled::Db) -> Result<Self, ClusterError> {
        Self::open_channel(db, Channel::control())
    }

    /// A view of `channel` over `db`, which other views may share (each
    /// log's writes touch keys no other log's do).
    pub fn open_channel(db: sled::Db, channel: Channel) -> Result<Self, ClusterError> {
        Ok(View {
            log: db.open_tree(LOG_TREE)?,
            db,
            trees: Mutex::default(),
            hooks: Default::default(),
            scratch: std::env::temp_dir(),
            local: &["__sled__default"],
            channel,
            closed: Default::default(),
            applying: Mutex::default(),
            scope: None,
            coalescer: Coalescer::start(),
        })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Shares `coalescer` (the database's applier thread) with the other
    /// views of the database.
    pub fn with_coalescer(mut self, coalescer: Arc<Coalescer>) -> Self {
        self.coalescer = coalescer;
        self
    }

    /// The database's applier thread.
    pub fn coalescer(&self) -> Arc<Coalescer> {
        self.coalescer.clone()
    }

    /// A view of part of the database (a partition's records): `member`
    /// tells its keys of `trees`.
    pub fn with_scope(
        mut self,
        trees: &'static [&'static str],
        member: super::snapshot::Member,
    ) -> Self {
        self.scope = Some(super::snapshot::Scope {
            trees,
            member,
            parts: self.channel.parts.clone(),
        });
        self
    }

    /// Stops applying: no group starts after this; one being applied
    /// may end ([`View::drop_all`] waits for it). Never blocks.
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether [`View::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Drops what this view holds and where it stopped (a partition given
    /// up: a later holder reads it anew from its snapshot and log): how
    /// many records. Only for a scoped view.
    pub fn drop_all(&self) -> Result<usize, ClusterError> {
        let Some(scope) = &self.scope else {
            return Ok(0);
        };
        // A group that started before the close ends first.
        let _applying = self.applying.lock().unwrap_or_else(|e| e.into_inner());
        let removed = super::snapshot::clear_scope(&self.db, scope)?;
        self.log.remove(&self.channel.applied)?;
        self.db.flush()?;
        Ok(removed)
    }

    /// The sled database under this view.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Snapshot files go to `dir` (the node's data directory) rather than
    /// the system's temporary directory.
    pub fn with_scratch(mut self, dir: &std::path::Path) -> Self {
        self.scratch = dir.to_path_buf();
        self
    }

    /// The trees of the database that are the node's own (its owner's
    /// bookkeeping beside the view): left out of snapshots and kept when
    /// one is loaded.
    pub fn with_local_trees(mut self, local: &'static [&'static str]) -> Self {
        self.local = local;
        self
    }

    /// Writes the view at the sequence it has applied to a new file in its
    /// scratch directory. Only the applier may call it: the replicated
    /// trees must not change meanwhile.
    fn export(&self) -> Result<(tempfile::NamedTempFile, u64), ClusterError> {
        let seq = self.applied()?;
        let file = tempfile::Builder::new()
            .prefix("snapshot-")
            .tempfile_in(&self.scratch)
            .map_err(|e| ClusterError::Snapshot(e.to_string()))?;
        match &self.scope {
            Some(scope) => super::snapshot::export_scope(&self.db, scope, seq, file.path())?,
            None => super::snapshot::export(&self.db, self.local, seq, file.path())?,
        }
        Ok((file, seq))
    }

    /// Replaces the view with the snapshot in `from`; returns its sequence,
    /// which becomes the applied one.
    fn restore(&self, from: &std::path::Path) -> Result<u64, ClusterError> {
        let seq = match &self.scope {
            Some(scope) => super::snapshot::import_scope(&self.db, scope, from)?,
            None => super::snapshot::import(&self.db, self.local, from)?,
        };
        self.log.insert(&self.channel.applied, &seq.to_be_bytes())?;
        self.db.flush()?;
        Ok(seq)
    }

    /// Adds a hook called after each applied batch, in the log's order.
    pub fn on_applied(&self, hook: OnApplied) {
        self.hooks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    /// A tree of the view, by name.
    pub fn tree(&self, name: &str) -> Result<sled::Tree, ClusterError> {
        let mut trees = self.trees.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = trees.get(name) {
            return Ok(t.clone());
        }
        let t = self.db.open_tree(name)?;
        trees.insert(name.to_string(), t.clone());
        Ok(t)
    }

    /// The last log sequence applied (0: none).
    pub fn applied(&self) -> Result<u64, ClusterError> {
        Ok(self
            .log
            .get(&self.channel.applied)?
            .and_then(|v| v.as_ref().try_into().ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Applies the batch at `seq`: its writes if every guard holds,
    /// nothing otherwise; the sequence in the same transaction. A sequence
    /// at or below the applied one is skipped (a message seen twice after
    /// the consumer was recreated): it answers as applied.
    pub fn apply(&self, seq: u64, batch: &Batch) -> Result<Outcome, ClusterError> {
        self.apply_and_drop(seq, batch, &[])
    }

    /// [`View::apply`], also removing `parts` (keys of [`LOG_TREE`]: the
    /// parts the batch was assembled from) in the same transaction,
    /// whatever the outcome.
    fn apply_and_drop(
        &self,
        seq: u64,
        batch: &Batch,
        parts: &[Vec<u8>],
    ) -> Result<Outcome, ClusterError> {
        let outcomes = self.apply_group(&[Applying { seq, batch, parts }])?;
        Ok(outcomes.into_iter().next().expect("one outcome per batch"))
    }

    /// Applies consecutive batches in one sled transaction, each in turn as
    /// [`View::apply_and_drop`] would: a batch's guards see the writes of
    /// the batches before it in the group, a conflicting batch changes
    /// nothing, and the sequence of the last one is stored with them. One
    /// outcome per batch, in order.
    ///
    /// Why a group: every sled transaction rolls the log buffer before and
    /// after itself (a `pwrite` and a waiting `sync_file_range` each; see
    /// `store/commit.rs`), and under load the log holds many batches by the
    /// time one is applied. The outcomes are the ones batch-by-batch apply
    /// gives (the same guards against the same state, in the same order),
    /// so every node's view still agrees, however it grouped.
    fn apply_group(&self, group: &[Applying<'_>]) -> Result<Vec<Outcome>, ClusterError> {
        apply::apply_groups(&[(self, group)])?
            .pop()
            .expect("one result per group")
    }
}

/// One batch of a group [`View::apply_group`] applies.
struct Applying<'a> {
    seq: u64,
    batch: &'a Batch,
    /// Keys of the parts it was assembled from, removed with it.
    parts: &'a [Vec<u8>],
}

impl View {
    /// Keeps part `index` of batch `id`, read at `seq`, until its last part
    /// comes; the sequence reached in the same transaction.
    fn stash_part(&self, seq: u64, id: &str, index: u32, chunk: &[u8]) -> Result<(), ClusterError> {
        let _applying = self.applying.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_closed() {
            return Err(ClusterError::Stopped);
        }
        if seq <= self.applied()? {
            return Ok(());
        }
        let mut value = seq.to_be_bytes().to_vec();
        value.extend_from_slice(chunk);
        let key = part_key(&self.channel.parts, id, index);
        self.log
            .transaction(|log| {
                log.insert(self.channel.applied.as_slice(), &seq.to_be_bytes())?;
                log.insert(key.as_slice(), value.as_slice())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => ClusterError::from(e),
                TransactionError::Abort(()) => unreachable!("the closure never aborts"),
            })
    }

    /// Batch `id` from its kept parts and its last part `last` (the
    /// `count`-th), read at `seq`: its bytes, or None when a part is
    /// missing; and the keys to drop with it (its parts, and any orphans).
    fn assemble(
        &self,
        seq: u64,
        id: &str,
        count: u32,
        last: &[u8],
    ) -> Result<Assembled, ClusterError> {
        let mut bytes = Vec::new();
        let mut drop = Vec::new();
        let mut complete = true;
        for index in 0..count - 1 {
            let key = part_key(&self.channel.parts, id, index);
            match self.log.get(&key)? {
                Some(v) if v.len() >= 8 => bytes.extend_from_slice(&v[8..]),
                _ => complete = false,
            }
            drop.push(key);
        }
        bytes.extend_from_slice(last);
        for entry in self.log.scan_prefix(&self.channel.parts) {
            let (key, value) = entry?;
            let read_at = value
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_be_bytes);
            if read_at + ORPHAN_PARTS_AFTER < seq && !drop.iter().any(|k| k[..] == key[..]) {
                drop.push(key.to_vec());
            }
        }
        Ok((complete.then_some(bytes), drop))
    }
}

/// A batch's bytes (None: a part is missing) and the part keys to drop.
type Assembled = (Option<Vec<u8>>, Vec<Vec<u8>>);

fn part_key(prefix: &str, id: &str, index: u32) -> Vec<u8> {
    format!("{prefix}{id}/{index:08}").into_bytes()
}

/// Where a message stands in a batch cut into parts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Part {
    batch: String,
    index: u32,
    count: u32,
}

impl Part {
    fn from_headers(headers: &async_nats::HeaderMap) -> Option<Part> {
        let (index, count) = headers.get(PART_HEADER)?.as_str().split_once('/')?;
        let (index, count) = (index.parse().ok()?, count.parse().ok()?);
        let batch = headers.get(BATCH_HEADER)?.as_str().to_string();
        (index < count).then_some(Part {
            batch,
            index,
            count,
        })
    }
}

/// Builds a batch from reads and writes against a view: reads see the
/// recorder's own writes first, and the first read of each key from the
/// view becomes a guard.
pub struct Recorder<'v> {
    view: &'v View,
    guards: BTreeMap<(String, Vec<u8>), Option<[u8; 32]>>,
    writes: BTreeMap<(String, Vec<u8>), Option<Vec<u8>>>,
}

impl<'v> Recorder<'v> {
    pub fn new(view: &'v View) -> Self {
        Recorder {
            view,
            guards: BTreeMap::new(),
            writes: BTreeMap::new(),
        }
    }

    pub fn get(&mut self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ClusterError> {
        let k = (tree.to_string(), key.to_vec());
        if let Some(w) = self.writes.get(&k) {
            return Ok(w.clone());
        }
        let value = self.view.tree(tree)?.get(key)?.map(|v| v.to_vec());
        self.guards
            .entry(k)
            .or_insert_with(|| value.as_deref().map(digest));
        Ok(value)
    }

    /// Sets a key without reading it (no guard: the last batch in the
    /// log's order wins).
    pub fn insert(&mut self, tree: &str, key: &[u8], value: Vec<u8>) {
        self.writes
            .insert((tree.to_string(), key.to_vec()), Some(value));
    }

    pub fn remove(&mut self, tree: &str, key: &[u8]) {
        self.writes.insert((tree.to_string(), key.to_vec()), None);
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Unguarded writes split into batches of at most about `max_bytes`
    /// each (a NATS message is bounded; 1 MiB by default): for writes that
    /// need no atomicity, such as pruning. A single write larger than that
    /// gets a batch of its own (and fails to publish if the server's limit
    /// is lower). Guarded recorders give one batch, as [`Recorder::into_batch`].
    pub fn into_batches(self, node: &str, max_bytes: usize) -> Vec<Batch> {
        if !self.guards.is_empty() {
            return vec![self.into_batch(node)];
        }
        unguarded_batches(node, self.into_writes(), max_bytes)
    }

    /// The writes recorded, in key order (the guards are dropped: for
    /// unguarded writes only).
    pub fn into_writes(self) -> Vec<Write> {
        self.writes
            .into_iter()
            .map(|((tree, key), value)| Write { tree, key, value })
            .collect()
    }

    pub fn into_batch(self, node: &str) -> Batch {
        Batch {
            id: ulid::Ulid::new().to_string(),
            node: node.to_string(),
            guards: self
                .guards
                .into_iter()
                .map(|((tree, key), digest)| Guard { tree, key, digest })
                .collect(),
            writes: self
                .writes
                .into_iter()
                .map(|((tree, key), value)| Write { tree, key, value })
                .collect(),
        }
    }
}

/// Unguarded `writes` in batches of about `max_bytes` at most (see
/// [`Recorder::into_batches`]).
pub fn unguarded_batches(node: &str, writes: Vec<Write>, max_bytes: usize) -> Vec<Batch> {
    let batch_of = |writes| Batch {
        id: ulid::Ulid::new().to_string(),
        node: node.to_string(),
        guards: Vec::new(),
        writes,
    };
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for w in writes {
        let len = w.tree.len() + w.key.len() + w.value.as_ref().map_or(0, Vec::len) + 8;
        if size + len > max_bytes && !current.is_empty() {
            batches.push(batch_of(std::mem::take(&mut current)));
            size = 0;
        }
        size += len;
        current.push(w);
    }
    if !current.is_empty() {
        batches.push(batch_of(current));
    }
    batches
}

/// Writers waiting for their batches, by batch id.
type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Result<Outcome, ClusterError>>>>>;

/// A node's end of the log: publishes its batches, applies everyone's.
pub struct Log {
    js: jetstream::Context,
    node: String,
    view: Arc<View>,
    waiters: Waiters,
    applied: watch::Receiver<u64>,
    applier: AbortHandle,
    /// The last "where does the stream end" answer, and when its request
    /// was sent: concurrent [`Log::caught_up`] calls share requests.
    last_end: tokio::sync::Mutex<Option<(std::time::Instant, u64)>>,
    /// Makes the applier replace its reader: a writer or reader waited
    /// [`KICK_AFTER`] for the view to reach a sequence the stream has.
    kick: Arc<tokio::sync::Notify>,
    /// Tells an applier reading by sequence that this node published.
    wake: Arc<tokio::sync::Notify>,
    /// This log's snapshots.
    snapshots: super::snapshot::Snapshots,
    /// Asks the applier for a snapshot of the view between two batches.
    snapshot_requests: mpsc::Sender<SnapshotReply>,
    /// Why the applier stopped, once it has (the node cannot serve then).
    failure: watch::Receiver<Option<String>>,
    /// A partitioned cluster's control log: read leases
    /// (`readers.rs`), once started.
    readers: std::sync::OnceLock<Arc<super::readers::Readers>>,
}

/// The applier's answer to a snapshot request: the file and its sequence.
type SnapshotReply = oneshot::Sender<Result<(tempfile::NamedTempFile, u64), ClusterError>>;

impl Drop for Log {
    fn drop(&mut self) {
        self.applier.abort();
    }
}

impl Log {
    /// Creates the stream with `replicas` or checks the one that exists,
    /// then starts applying it to `view` from where the view stopped.
    pub async fn open(
        client: async_nats::Client,
        replicas: usize,
        node: &str,
        view: Arc<View>,
    ) -> Result<Self, ClusterError> {
        let js = jetstream::new(client);
        let channel = view.channel().clone();
        let mut stream = ensure_stream(&js, replicas, &channel).await?;
        let snapshots = match channel.partition {
            None => super::snapshot::Snapshots::open(&js, replicas).await?,
            Some(p) => {
                super::snapshot::Snapshots::open_named(&js, replicas, &format!("p{p}")).await?
            }
        };

        let first = stream
            .info()
            .await
            .map_err(ClusterError::jetstream)?
            .state
            .first_sequence;
        if view.applied()? + 1 < first {
            restore(&view, &snapshots, first).await?;
        }
        let from = view.applied()? + 1;
        // The first reader is made here, so a start-up fault is the
        // caller's error; later ones by the applier itself.
        // A consumer that cannot be made now (the NATS cluster is
        // electing a leader) is no start-up fault: the applier reads by
        // sequence meanwhile.
        let messages = match read::consumer_within(&stream, from).await {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(error = %e, "reading the cluster log by sequence for now");
                None
            }
        };
        let wake = Arc::new(tokio::sync::Notify::new());
        let (tx, applied) = watch::channel(from - 1);
        let waiters = Waiters::default();
        let kick = Arc::new(tokio::sync::Notify::new());
        let (snapshot_requests, requests) = mpsc::channel(1);
        let (failed, failure) = watch::channel(None);
        let task = tokio::spawn(apply_all(
            stream,
            messages,
            wake.clone(),
            Applier {
                view: view.clone(),
                node: node.to_string(),
                waiters: waiters.clone(),
                applied: tx,
                kick: kick.clone(),
                snapshot_requests: requests,
                failure: failed,
            },
        ));
        Ok(Log {
            js,
            node: node.to_string(),
            view,
            waiters,
            applied,
            applier: task.abort_handle(),
            last_end: tokio::sync::Mutex::new(None),
            kick,
            wake,
            snapshots,
            snapshot_requests,
            failure,
            readers: std::sync::OnceLock::new(),
        })
    }

    /// Starts read leases on this log (`readers.rs`): each write waits for
    /// the other nodes under lease, and with a lease time (`ttl`), from its
    /// first renewal on, [`Log::caught_up`] answers from the view while the
    /// lease holds and every one of `members` has a lease record.
    pub async fn lease_reads(
        self: &Arc<Self>,
        ttl: Option<Duration>,
        members: super::readers::Members,
    ) -> Result<(), ClusterError> {
        if self.readers.get().is_some() {
            return Ok(());
        }
        let readers =
            super::readers::Readers::start(self, ttl, members, self.applied.clone()).await?;
        let _ = self.readers.set(readers);
        Ok(())
    }

    /// Whether the applier stopped for good.
    pub fn has_failed(&self) -> bool {
        self.failure.borrow().is_some()
    }

    /// Whether this node reads under a read lease right now.
    pub fn reads_under_lease(&self) -> bool {
        !self.has_failed() && self.readers.get().is_some_and(|r| r.holds())
    }

    /// The node leaves: its read lease ends and its record is removed (so
    /// other nodes' writes stop waiting for it).
    pub async fn leave(&self) {
        if let Some(readers) = self.readers.get() {
            readers.leave(self).await;
        }
    }

    /// Resolves with the reason once the applier has stopped for good (the
    /// view can no longer follow the log: the node must restart).
    pub async fn failed(&self) -> String {
        let mut failure = self.failure.clone();
        match failure.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "the cluster log's applier is gone".to_string(),
        }
    }

    /// Compaction: has the applier write the view at the sequence S it has
    /// reached, stores it as the newest snapshot, then purges the log below
    /// the previous snapshot's sequence. Returns S and how far the log was
    /// purged (None: the first snapshot, nothing purged). A snapshot at
    /// or behind the newest one is not stored again.
    pub async fn compact(&self) -> Result<(u64, Option<u64>), ClusterError> {
        let (reply, answer) = oneshot::channel();
        self.snapshot_requests
            .send(reply)
            .await
            .map_err(|_| ClusterError::Stopped)?;
        let (file, seq) = answer.await.map_err(|_| ClusterError::Stopped)??;
        if seq == 0 {
            // An empty log (a partition nobody wrote to yet): nothing to keep.
            return Ok((0, None));
        }
        let snapshots = &self.snapshots;
        let previous = snapshots.latest().await?;
        if previous.is_some_and(|p| p >= seq) {
            return Ok((seq, None));
        }
        snapshots.upload(file.path(), seq).await?;
        drop(file);
        // Nothing below a snapshot at 0 to purge; and NATS (2.9) reads a
        // purge below sequence 1 as a purge of the whole stream, which would
        // take the batches written since the snapshot with it.
        let Some(previous) = previous.filter(|p| *p > 0) else {
            return Ok((seq, None));
        };
        // Below the previous snapshot's sequence: a node up to one interval
        // behind still reads every batch it lacks.
        self.js
            .get_stream_no_info(&self.view.channel().stream)
            .await
            .map_err(ClusterError::jetstream)?
            .purge()
            .sequence(previous + 1)
            .await
            .map_err(ClusterError::jetstream)?;
        Ok((seq, Some(previous + 1)))
    }

    /// Stops following the log for good (a partition given up): the
    /// applier ends, and a batch it was applying is the last one. Writers
    /// waiting for their batch to be applied here are answered at once
    /// (`Stopped`: the caller's 503) instead of at the end of their wait.
    pub fn stop(&self) {
        self.applier.abort();
        self.view.close();
        for (_, waiter) in self.lock_waiters().drain() {
            let _ = waiter.send(Err(ClusterError::Stopped));
        }
    }

    /// The NATS connection the log uses (other cluster traffic shares it).
    pub fn client(&self) -> async_nats::Client {
        self.js.client()
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    /// Publishes the batch and waits until this node's view has applied
    /// it: its outcome in the log's order. An error: the batch may or may
    /// not be in the log (a re-run of the change decides).
    pub async fn publish(&self, batch: &Batch) -> Result<Outcome, ClusterError> {
        let body =
            bytes::Bytes::from(postcard::to_allocvec(batch).map_err(ClusterError::jetstream)?);
        let limit = part_limit(self.js.client().max_payload());
        let count = body.len().div_ceil(limit).max(1);
        let (tx, rx) = oneshot::channel();
        self.lock_waiters().insert(batch.id.clone(), tx);
        // Stopped meanwhile (`Log::stop` closes the view, then answers the
        // waiters): nothing would ever apply it here.
        if self.view.is_closed() {
            self.lock_waiters().remove(&batch.id);
            return Err(ClusterError::Stopped);
        }
        let mut ack = None;
        // Parts go one after another, each acknowledged before the next:
        // a view applies the batch when its last part comes.
        for index in 0..count {
            let mut headers = async_nats::HeaderMap::new();
            if count == 1 {
                headers.insert("Nats-Msg-Id", batch.id.as_str());
            } else {
                headers.insert("Nats-Msg-Id", format!("{}.{index}", batch.id).as_str());
                headers.insert(PART_HEADER, format!("{index}/{count}").as_str());
                headers.insert(BATCH_HEADER, batch.id.as_str());
            }
            let chunk = body.slice(index * limit..((index + 1) * limit).min(body.len()));
            let sent = async {
                self.js
                    .publish_with_headers(self.view.channel().subject.clone(), headers, chunk)
                    .await
                    .map_err(ClusterError::jetstream)?
                    .await
                    .map_err(ClusterError::jetstream)
            }
            .await;
            match sent {
                Ok(a) => ack = Some(a),
                Err(e) => {
                    self.lock_waiters().remove(&batch.id);
                    return Err(e);
                }
            }
        }
        let ack = ack.expect("at least one part");
        self.wake.notify_one();
        if ack.duplicate && ack.sequence <= *self.applied.borrow() {
            // A re-sent batch the log already had, and the view applied
            // before this call waited for it: its outcome was given to no
            // one. The caller re-runs its change on the view, which shows
            // whether the batch took effect.
            self.lock_waiters().remove(&batch.id);
            return Err(ClusterError::JetStream(format!(
                "batch {} was in the log already (sequence {}); its outcome is in the view",
                batch.id, ack.sequence
            )));
        }
        let outcome = match self.patiently(rx).await {
            Ok(outcome) => outcome.map_err(|_| ClusterError::Stopped)?,
            Err(_) => {
                self.lock_waiters().remove(&batch.id);
                Err(ClusterError::JetStream(format!(
                    "batch {} is in the log but this node's view did not reach it within {APPLY_TIMEOUT:?}",
                    batch.id
                )))
            }
        }?;
        // Under read leases a write is acknowledged once every node reading
        // under one has it (or its lease ran out).
        if let (Outcome::Applied { seq }, Some(readers)) = (&outcome, self.readers.get())
            && !super::readers::only_leases(batch)
            && super::readers::acknowledged()
        {
            readers.wait_for_others(*seq).await;
        }
        Ok(outcome)
    }

    /// Waits until the view has applied everything the stream held when
    /// called: a read after this sees every write acknowledged before it,
    /// whichever node made it. Returns the sequence reached.
    ///
    /// One request at a time asks where the stream ends; a caller that
    /// arrived while one was under way waits for it, then uses the next
    /// one sent after it arrived (its own or another waiter's). Under load
    /// that is one request per round trip, not one per API request.
    ///
    /// Under a read lease (`readers.rs`) the view has every acknowledged
    /// write already: no request is sent.
    pub async fn caught_up(&self) -> Result<u64, ClusterError> {
        if self.reads_under_lease() {
            return Ok(*self.applied.borrow());
        }
        self.reach_end().await
    }

    /// [`Log::caught_up`] by asking the stream where it ends, lease or not
    /// (a health check proves the log answers).
    pub async fn reach_end(&self) -> Result<u64, ClusterError> {
        if self.failure.borrow().is_some() {
            return Err(ClusterError::Stopped);
        }
        let arrived = std::time::Instant::now();
        let last = {
            let mut last_end = self.last_end.lock().await;
            match *last_end {
                Some((sent, end)) if sent >= arrived => end,
                _ => {
                    let sent = std::time::Instant::now();
                    let stream = self
                        .js
                        .get_stream_no_info(&self.view.channel().stream)
                        .await
                        .map_err(ClusterError::jetstream)?;
                    let end = stream
                        .get_info()
                        .await
                        .map_err(ClusterError::jetstream)?
                        .state
                        .last_sequence;
                    *last_end = Some((sent, end));
                    end
                }
            }
        };
        let mut applied = self.applied.clone();
        let reached = self
            .patiently(applied.wait_for(|a| *a >= last))
            .await
            .map_err(|_| {
                ClusterError::JetStream(format!(
                    "this node's view did not reach the log's end ({last}) within {APPLY_TIMEOUT:?}"
                ))
            })?
            .map_err(|_| ClusterError::Stopped)?;
        Ok(*reached)
    }

    /// Waits for the view to reach something the stream has, up to
    /// [`APPLY_TIMEOUT`]; past [`KICK_AFTER`] the applier is told to read
    /// again (a reader can stall silently when its server went away).
    async fn patiently<F: std::future::Future>(
        &self,
        wait: F,
    ) -> Result<F::Output, tokio::time::error::Elapsed> {
        tokio::pin!(wait);
        if let Ok(done) = tokio::time::timeout(KICK_AFTER, &mut wait).await {
            return Ok(done);
        }
        self.kick.notify_one();
        tokio::time::timeout(APPLY_TIMEOUT - KICK_AFTER, wait).await
    }

    fn lock_waiters(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Result<Outcome, ClusterError>>>>
    {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How an existing cluster keeps its records, as its control stream
/// records it: its replication, and its partition count (None: a replica
/// set). Err: no wasmhook cluster there.
pub async fn layout(client: &async_nats::Client) -> Result<(usize, Option<u32>), ClusterError> {
    let js = jetstream::new(client.clone());
    let mut stream = js
        .get_stream(STREAM)
        .await
        .map_err(|e| ClusterError::jetstream(format!("no wasmhook cluster there ({e})")))?;
    let config = stream
        .info()
        .await
        .map_err(ClusterError::jetstream)?
        .config
        .clone();
    let partitions = config.description.as_deref().and_then(|d| {
        d.strip_prefix("wasmhook: data in ")?
            .strip_suffix(" partitions")?
            .parse()
            .ok()
    });
    Ok((config.num_replicas.max(1), partitions))
}

/// The stream as this version uses it: created if missing, else checked.
async fn ensure_stream(
    js: &jetstream::Context,
    replicas: usize,
    channel: &Channel,
) -> Result<stream::Stream, ClusterError> {
    let name = channel.stream.as_str();
    let mut s = js
        .get_or_create_stream(stream::Config {
            name: name.to_string(),
            description: channel.mode.clone(),
            subjects: vec![channel.subject.clone()],
            num_replicas: replicas,
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            duplicate_window: DUPLICATE_WINDOW,
            // Readers by sequence (`log/read.rs`) ask any replica.
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(ClusterError::jetstream)?;
    let config = s
        .info()
        .await
        .map_err(ClusterError::jetstream)?
        .config
        .clone();
    check_setting(
        "stream",
        name,
        "subjects",
        config.subjects.clone(),
        vec![channel.subject.clone()],
    )?;
    check_setting(
        "stream",
        name,
        "description (cluster.mode and cluster.partitions)",
        config.description.clone().filter(|d| !d.is_empty()),
        channel.mode.clone(),
    )?;
    check_setting(
        "stream",
        name,
        "num_replicas",
        config.num_replicas.max(1),
        replicas,
    )?;
    check_setting(
        "stream",
        name,
        "retention",
        config.retention,
        stream::RetentionPolicy::Limits,
    )?;
    check_setting(
        "stream",
        name,
        "storage",
        config.storage,
        stream::StorageType::File,
    )?;
    if !config.allow_direct {
        // Made by a version before direct gets: allowed now (any replica
        // then answers a reader by sequence, not only the leader).
        match js
            .update_stream(stream::Config {
                allow_direct: true,
                ..config
            })
            .await
        {
            Ok(_) => s = js.get_stream(name).await.map_err(ClusterError::jetstream)?,
            Err(e) => tracing::warn!(stream = name, error = %e, "allowing direct gets"),
        }
    }
    Ok(s)
}

/// Loads the newest snapshot into `view`, whose end is before the log's
/// `first` message (a new node, or one down for longer than the log keeps).
async fn restore(
    view: &Arc<View>,
    snapshots: &super::snapshot::Snapshots,
    first: u64,
) -> Result<(), ClusterError> {
    let file = tempfile::Builder::new()
        .prefix("snapshot-")
        .tempfile_in(&view.scratch)
        .map_err(|e| ClusterError::Snapshot(e.to_string()))?;
    if !snapshots.download(file.path()).await? {
        return Err(ClusterError::Snapshot(format!(
            "the log starts at {first}, after this node's view, and there is no snapshot to load"
        )));
    }
    let seq = {
        let view = view.clone();
        let path = file.path().to_path_buf();
        tokio::task::spawn_blocking(move || view.restore(&path))
            .await
            .map_err(ClusterError::jetstream)??
    };
    if seq + 1 < first {
        return Err(ClusterError::Snapshot(format!(
            "the newest snapshot (at {seq}) is older than the log's start ({first})"
        )));
    }
    tracing::info!(seq, "loaded the newest snapshot of the records");
    Ok(())
}

/// How long the applier first reads by sequence after a consumer failed,
/// before it tries to make another.
const REREAD_AFTER: Duration = Duration::from_millis(500);
/// A consumer that lasted less than this failed early: the next wait doubles.
const REREAD_SETTLED: Duration = Duration::from_secs(10);
/// The longest wait before a new consumer.
const REREAD_AT_MOST: Duration = Duration::from_secs(8);

/// At most this many batches, or about this many bytes of them, are
/// applied in one transaction (bounds its write set and the wait of the
/// group's first writer).
const MAX_APPLY_GROUP: usize = 64;
const MAX_APPLY_BYTES: usize = 8 << 20;

/// The applier: every batch in order into the view; answers this node's
/// writers; publishes the sequence reached. It reads through a consumer;
/// when that fails, ends or stalls (its server died, NATS is
/// unreachable) it reads by sequence at once ([`read`]) and makes a new
/// consumer from where the view is, for as long as the node runs. Stops
/// (waiters get an error) only if the view fails or a batch is
/// unreadable: a view that skipped a batch would no longer agree with
/// the others.
async fn apply_all(
    stream: stream::Stream,
    first: Option<consumer::pull::Ordered>,
    wake: Arc<tokio::sync::Notify>,
    mut a: Applier,
) {
    let mut consumer = first;
    // Backs off while consumers keep failing: after a NATS server is
    // lost, every node's every log asks for a new one at once, and asking
    // again each half second holds the servers' recovery back.
    let mut wait = REREAD_AFTER;
    let mut made = std::time::Instant::now();
    loop {
        let result = match consumer.take() {
            Some(messages) => {
                made = std::time::Instant::now();
                // A kick from a writer that waited while the log was read
                // by sequence is not about this consumer.
                let _ = a.kick.notified().now_or_never();
                a.apply_from(read::consumed(messages), true).await
            }
            None => {
                wait = if made.elapsed() < REREAD_SETTLED {
                    (wait * 2).min(REREAD_AT_MOST)
                } else {
                    REREAD_AFTER
                };
                let from = match a.view.applied() {
                    Ok(applied) => applied + 1,
                    Err(e) => return a.stop(e),
                };
                let handover = read::Handover::default();
                let entries = read::by_sequence(
                    stream.clone(),
                    from,
                    wake.clone(),
                    std::time::Instant::now() + wait,
                    handover.clone(),
                );
                let result = a.apply_from(entries, false).await;
                consumer = handover.lock().unwrap_or_else(|e| e.into_inner()).take();
                result
            }
        };
        if let Err(e) = result {
            return a.stop(e);
        }
    }
}

/// The batch id of a part message.
fn part_batch_id(headers: &Option<async_nats::HeaderMap>) -> Option<String> {
    Some(headers.as_ref()?.get(BATCH_HEADER)?.as_str().to_string())
}

/// How many bytes of a batch go in one message, given the servers'
/// `max_payload` (0: unknown, NATS's default of 1 MiB).
fn part_limit(max_payload: usize) -> usize {
    let max = if max_payload == 0 {
        1 << 20
    } else {
        max_payload
    };
    max.saturating_sub(PART_HEADROOM).max(4096)
}

/// What the applier task holds.
struct Applier {
    view: Arc<View>,
    node: String,
    waiters: Waiters,
    applied: watch::Sender<u64>,
    kick: Arc<tokio::sync::Notify>,
    snapshot_requests: mpsc::Receiver<SnapshotReply>,
    /// Why the applier stopped, once it has.
    failure: watch::Sender<Option<String>>,
}

impl Applier {
    /// Fails every waiting writer and tells the node: the applier stopped
    /// for good.
    fn stop(&self, e: ClusterError) {
        tracing::error!(error = %e, "the cluster log's applier stopped");
        let _ = self.failure.send(Some(e.to_string()));
        let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for (_, tx) in w.drain() {
            let _ = tx.send(Err(ClusterError::Stopped));
        }
    }
}

impl Applier {
    /// Applies what one reader gives until it fails, ends or is kicked
    /// (if `kickable`; Ok: take another reader), or the view fails (Err:
    /// stop). Batches that are already waiting are applied together
    /// ([`View::apply_group`]).
    async fn apply_from(
        &mut self,
        mut messages: read::Entries,
        kickable: bool,
    ) -> Result<(), ClusterError> {
        // A message read while gathering a group that could not join it
        // (part of a larger batch, not the next sequence, an error): it is
        // handled first in the next round.
        let mut carried = None;
        loop {
            let message = match carried.take() {
                Some(m) => m,
                None => tokio::select! {
                    m = messages.next() => m,
                    _ = self.kick.notified(), if kickable => {
                        tracing::info!("the cluster log's reader stalled: reading again");
                        return Ok(());
                    }
                    Some(reply) = self.snapshot_requests.recv() => {
                        // Between two batches: the view is the log up to the
                        // sequence it has applied.
                        let view = self.view.clone();
                        let export = tokio::task::spawn_blocking(move || view.export())
                            .await
                            .map_err(ClusterError::jetstream)
                            .and_then(|r| r);
                        let _ = reply.send(export);
                        continue;
                    }
                },
            };
            let message = match message {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "reading the cluster log");
                    return Ok(());
                }
                None => return Ok(()),
            };
            let seq = message.seq;
            let applied = *self.applied.borrow();
            if seq > applied + 1 {
                // Purged below a snapshot while this node lagged: the
                // batches in between are gone from the log.
                return Err(ClusterError::Behind { applied, next: seq });
            }
            let Some(part) = message.headers.as_ref().and_then(Part::from_headers) else {
                // A whole batch in one message, and the ones right behind it.
                let mut group = vec![(seq, decode(seq, &message.payload)?)];
                let mut bytes = message.payload.len();
                while group.len() < MAX_APPLY_GROUP && bytes < MAX_APPLY_BYTES {
                    let Some(next) = messages.next().now_or_never() else {
                        break;
                    };
                    let expected = group.last().map_or(seq, |g| g.0) + 1;
                    match next {
                        Some(Ok(m)) => match joinable(&m, expected) {
                            Some(next) => {
                                bytes += m.payload.len();
                                group.push(next);
                            }
                            None => {
                                carried = Some(Some(Ok(m)));
                                break;
                            }
                        },
                        other => {
                            carried = Some(other);
                            break;
                        }
                    }
                }
                let (group, outcomes) = self.view.coalescer.apply(self.view.clone(), group).await;
                let outcomes = outcomes?;
                let last = group.last().map_or(seq, |g| g.0);
                self.applied.send_modify(|a| *a = (*a).max(last));
                for ((_, batch), outcome) in group.into_iter().zip(outcomes) {
                    self.answer(&batch, outcome);
                }
                continue;
            };
            let view = self.view.clone();
            let (bytes, parts) = if part.index + 1 < part.count {
                let payload = message.payload.clone();
                tokio::task::spawn_blocking(move || {
                    view.stash_part(seq, &part.batch, part.index, &payload)
                })
                .await
                .map_err(ClusterError::jetstream)??;
                self.applied.send_modify(|a| *a = (*a).max(seq));
                continue;
            } else {
                let view = view.clone();
                let payload = message.payload.clone();
                tokio::task::spawn_blocking(move || {
                    view.assemble(seq, &part.batch, part.count, &payload)
                })
                .await
                .map_err(ClusterError::jetstream)??
            };
            let complete = bytes.is_some();
            let batch: Batch = match bytes {
                Some(bytes) => decode(seq, &bytes)?,
                // A part is missing (its writer's publish failed midway and
                // yet its last part came): nothing of it is applied, and
                // its writer re-runs its change.
                None => Batch {
                    id: part_batch_id(&message.headers).unwrap_or_default(),
                    node: self.node.clone(),
                    guards: Vec::new(),
                    writes: Vec::new(),
                },
            };
            let mut outcome = {
                let batch = batch.clone();
                tokio::task::spawn_blocking(move || view.apply_and_drop(seq, &batch, &parts))
                    .await
                    .map_err(ClusterError::jetstream)??
            };
            if !complete {
                outcome = Outcome::Conflict {
                    seq,
                    tree: LOG_TREE.to_string(),
                    key: b"missing part".to_vec(),
                };
            }
            self.applied.send_modify(|a| *a = (*a).max(seq));
            self.answer(&batch, outcome);
        }
    }

    /// Gives a batch's outcome to its writer, if it is waiting on this node.
    fn answer(&self, batch: &Batch, outcome: Outcome) {
        if batch.node == self.node {
            let waiter = self
                .waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&batch.id);
            if let Some(tx) = waiter {
                let _ = tx.send(Ok(outcome));
            }
        }
    }
}

/// The sequence and batch of `m` if it can join a group whose next
/// sequence is `expected`: a whole batch in one message, that sequence,
/// readable. Anything else (a part, a gap, an unreadable batch) is left to
/// the one-message path, after the group is applied, as one batch at a time
/// would meet it.
fn joinable(m: &read::Entry, expected: u64) -> Option<(u64, Batch)> {
    if m.headers.as_ref().and_then(Part::from_headers).is_some() {
        return None;
    }
    let seq = m.seq;
    if seq != expected {
        return None;
    }
    Some((seq, decode(seq, &m.payload).ok()?))
}

/// A batch as published.
fn decode(seq: u64, bytes: &[u8]) -> Result<Batch, ClusterError> {
    postcard::from_bytes(bytes).map_err(|e| ClusterError::Corrupt {
        seq,
        message: e.to_string(),
    })
}

mod apply;
mod read;
pub use apply::Coalescer;

#[cfg(test)]
mod tests;
