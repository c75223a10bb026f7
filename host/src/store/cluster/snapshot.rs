//! Log compaction: a node's view written at a sequence S to a JetStream
//! object store, so that the log below it can be purged.
//!
//! - **Taken by the applier itself**, between two batches: the applier is
//!   the only writer of the replicated trees, so while it exports them the
//!   view is exactly the log up to S. The node's writers wait meanwhile
//!   (seconds for a view of a few hundred MB); other nodes go on.
//! - **One object** ([`OBJECT`]) holds the newest snapshot, with S in its
//!   metadata. The log is purged below the *previous* snapshot's sequence,
//!   not below S: a node that is up to one snapshot interval behind still
//!   finds every batch it needs, and a node further behind (or a new one)
//!   finds a snapshot at or after the log's first message.
//! - **Loaded at start** by a node whose view ends before the log's first
//!   message ([`Log::open`](super::log::Log::open)): the replicated trees
//!   are cleared and refilled, then the node reads the log from S + 1. A
//!   running node that finds the log purged past it stops and says so; a
//!   restart loads the snapshot.
//!
//! The file: [`MAGIC`], S (8 bytes, big-endian), then frames: a tree name
//! (`1`, length, name) followed by its entries (`2`, key length, key, value
//! length, value); lengths are 4 bytes, big-endian.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use async_nats::jetstream::{self, object_store};

use super::log::{LOG_TREE, PARTS};
use crate::cluster::ClusterError;

/// The object store's bucket.
pub const BUCKET: &str = "wasmhook_snapshots";
/// The newest snapshot's name in it.
pub const OBJECT: &str = "view";
/// Metadata key of the sequence a snapshot was taken at.
const SEQ_KEY: &str = "seq";
const MAGIC: &[u8; 8] = b"WHSNAP1\n";

/// Whether a tree goes in a snapshot: not the log's own bookkeeping tree
/// (of `__log`, only the parts of batches not yet whole go, so a node
/// loading it reads their last parts after S) and not one of the trees
/// the node keeps for itself (`local`, named by the store that owns them).
fn replicated(name: &[u8], local: &[&str]) -> bool {
    name != LOG_TREE.as_bytes() && !local.iter().any(|t| t.as_bytes() == name)
}

fn io(e: std::io::Error) -> ClusterError {
    ClusterError::Snapshot(e.to_string())
}

/// Writes every replicated tree of `db`, as it is at sequence `seq`, to
/// `to`. The caller guarantees nothing writes them meanwhile.
pub fn export(db: &sled::Db, local: &[&str], seq: u64, to: &Path) -> Result<(), ClusterError> {
    write_snapshot(to, seq, |out| {
        for name in db.tree_names() {
            let entries = if replicated(&name, local) {
                db.open_tree(&name)?.iter()
            } else if &name[..] == LOG_TREE.as_bytes() {
                db.open_tree(&name)?.scan_prefix(PARTS)
            } else {
                continue;
            };
            frame(out, 1, &[&name]).map_err(io)?;
            for entry in entries {
                let (k, v) = entry?;
                frame(out, 2, &[&k, &v]).map_err(io)?;
            }
        }
        Ok(())
    })
}

/// A snapshot file at `to`: the header for `seq`, the frames `body`
/// writes, then made durable.
fn write_snapshot(
    to: &Path,
    seq: u64,
    body: impl FnOnce(&mut BufWriter<std::fs::File>) -> Result<(), ClusterError>,
) -> Result<(), ClusterError> {
    let mut out = BufWriter::new(std::fs::File::create(to).map_err(io)?);
    out.write_all(MAGIC).map_err(io)?;
    out.write_all(&seq.to_be_bytes()).map_err(io)?;
    body(&mut out)?;
    out.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)
}

/// Whether a key (with its value) of a tree is a scoped view's.
pub type Member = std::sync::Arc<dyn Fn(&str, &[u8], &[u8]) -> bool + Send + Sync>;

/// Which records of a shared database a view owns (a partition's): the
/// trees it writes and, in them, the keys that are its own.
#[derive(Clone)]
pub struct Scope {
    pub trees: &'static [&'static str],
    /// Whether a key (with its value) of one of `trees` is the view's.
    pub member: Member,
    /// The view's key prefix of stashed parts in the log's tree.
    pub parts: String,
}

/// [`export`] of only what `scope` owns.
pub fn export_scope(db: &sled::Db, scope: &Scope, seq: u64, to: &Path) -> Result<(), ClusterError> {
    write_snapshot(to, seq, |out| {
        for name in scope.trees {
            frame(out, 1, &[name.as_bytes()]).map_err(io)?;
            for entry in db.open_tree(name)?.iter() {
                let (k, v) = entry?;
                if (scope.member)(name, &k, &v) {
                    frame(out, 2, &[&k, &v]).map_err(io)?;
                }
            }
        }
        frame(out, 1, &[LOG_TREE.as_bytes()]).map_err(io)?;
        for entry in db.open_tree(LOG_TREE)?.scan_prefix(&scope.parts) {
            let (k, v) = entry?;
            frame(out, 2, &[&k, &v]).map_err(io)?;
        }
        Ok(())
    })
}

/// Removes what `scope` owns from `db` (before a snapshot of it is loaded,
/// or when the view is given up): how many records.
pub fn clear_scope(db: &sled::Db, scope: &Scope) -> Result<usize, ClusterError> {
    let mut removed = 0;
    for name in scope.trees {
        let tree = db.open_tree(name)?;
        let mut batch = sled::Batch::default();
        for entry in tree.iter() {
            let (k, v) = entry?;
            if (scope.member)(name, &k, &v) {
                batch.remove(k);
                removed += 1;
            }
        }
        tree.apply_batch(batch)?;
    }
    let log = db.open_tree(LOG_TREE)?;
    for key in log.scan_prefix(&scope.parts).keys() {
        log.remove(key?)?;
    }
    Ok(removed)
}

/// One frame: its kind, then each part with its length (shared with the
/// embedded store's backups).
pub(crate) fn frame(out: &mut impl Write, kind: u8, parts: &[&[u8]]) -> std::io::Result<()> {
    out.write_all(&[kind])?;
    for p in parts {
        let len = u32::try_from(p.len()).map_err(std::io::Error::other)?;
        out.write_all(&len.to_be_bytes())?;
        out.write_all(p)?;
    }
    Ok(())
}

fn read_part(input: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let mut bytes = vec![0u8; u32::from_be_bytes(len) as usize];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Replaces the replicated trees of `db` with the snapshot in `from`;
/// returns its sequence. The caller sets the view's applied sequence.
pub fn import(db: &sled::Db, local: &[&str], from: &Path) -> Result<u64, ClusterError> {
    import_with(db, from, || {
        for name in db.tree_names() {
            if replicated(&name, local) {
                db.open_tree(&name)?.clear()?;
            }
        }
        let log = db.open_tree(LOG_TREE)?;
        for key in log.scan_prefix(PARTS).keys() {
            log.remove(key?)?;
        }
        Ok(())
    })
}

/// [`import`] of a snapshot of what `scope` owns: that is removed first,
/// the rest of the database is left as it is.
pub fn import_scope(db: &sled::Db, scope: &Scope, from: &Path) -> Result<u64, ClusterError> {
    import_with(db, from, || clear_scope(db, scope).map(|_| ()))
}

fn import_with(
    db: &sled::Db,
    from: &Path,
    clear: impl FnOnce() -> Result<(), ClusterError>,
) -> Result<u64, ClusterError> {
    let mut input = BufReader::new(std::fs::File::open(from).map_err(io)?);
    let mut head = [0u8; 16];
    input.read_exact(&mut head).map_err(io)?;
    if &head[..8] != MAGIC {
        return Err(ClusterError::Snapshot(
            "not a wasmhook snapshot (written by another version?)".into(),
        ));
    }
    let seq = u64::from_be_bytes(head[8..].try_into().expect("8 bytes"));
    clear()?;
    let mut trees: HashMap<Vec<u8>, sled::Tree> = HashMap::new();
    let mut current: Option<sled::Tree> = None;
    let mut batch = sled::Batch::default();
    let mut pending = 0usize;
    loop {
        let mut kind = [0u8; 1];
        if input.read(&mut kind).map_err(io)? == 0 {
            break;
        }
        match kind[0] {
            1 => {
                if let Some(t) = &current {
                    t.apply_batch(std::mem::take(&mut batch))?;
                    pending = 0;
                }
                let name = read_part(&mut input).map_err(io)?;
                let tree = db.open_tree(&name)?;
                trees.insert(name, tree.clone());
                current = Some(tree);
            }
            2 => {
                let key = read_part(&mut input).map_err(io)?;
                let value = read_part(&mut input).map_err(io)?;
                batch.insert(key, value);
                pending += 1;
                if pending >= 10_000
                    && let Some(t) = &current
                {
                    t.apply_batch(std::mem::take(&mut batch))?;
                    pending = 0;
                }
            }
            k => {
                return Err(ClusterError::Snapshot(format!(
                    "unknown frame {k}: the file is damaged"
                )));
            }
        }
    }
    if let Some(t) = &current {
        t.apply_batch(batch)?;
    }
    db.flush()?;
    Ok(seq)
}

/// The snapshots' object store.
#[derive(Clone)]
pub struct Snapshots {
    store: object_store::ObjectStore,
    /// The object: [`OBJECT`] for the control log (or the one log of a
    /// replica set), `p<n>` for partition n's.
    object: String,
}

impl Snapshots {
    /// The bucket as this version uses it: created if missing, else checked.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, ClusterError> {
        Self::open_named(js, replicas, OBJECT).await
    }

    /// The snapshots of one log, by its object's name.
    pub async fn open_named(
        js: &jetstream::Context,
        replicas: usize,
        object: &str,
    ) -> Result<Self, ClusterError> {
        let store = crate::cluster::object_store(js, BUCKET, replicas).await?;
        Ok(Snapshots {
            store,
            object: object.to_string(),
        })
    }

    /// The newest snapshot's sequence; None when there is none.
    pub async fn latest(&self) -> Result<Option<u64>, ClusterError> {
        match self.store.info(&self.object).await {
            Ok(info) if !info.deleted => {
                Ok(info.metadata.get(SEQ_KEY).and_then(|s| s.parse().ok()))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(ClusterError::jetstream(e)),
        }
    }

    /// Stores the file `from` as the newest snapshot, taken at `seq`.
    pub async fn upload(&self, from: &Path, seq: u64) -> Result<(), ClusterError> {
        let mut file = tokio::fs::File::open(from).await.map_err(io)?;
        let meta = object_store::ObjectMetadata {
            name: self.object.clone(),
            description: Some(format!("wasmhook view at log sequence {seq}")),
            chunk_size: Some(1 << 20),
            metadata: HashMap::from([(SEQ_KEY.to_string(), seq.to_string())]),
            headers: None,
        };
        self.store
            .put(meta, &mut file)
            .await
            .map_err(ClusterError::jetstream)?;
        Ok(())
    }

    /// Writes the newest snapshot to `to`; false when there is none. Its
    /// sequence is in the file ([`import`] returns it).
    pub async fn download(&self, to: &Path) -> Result<bool, ClusterError> {
        let mut object = match self.store.get(&self.object).await {
            Ok(o) => o,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(ClusterError::jetstream(e)),
        };
        let mut file = tokio::fs::File::create(to).await.map_err(io)?;
        tokio::io::copy(&mut object, &mut file).await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        Ok(true)
    }
}
