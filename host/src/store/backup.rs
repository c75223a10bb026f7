//! The embedded store's format version, its backups and their restore.
//!
//! **Format.** `meta` records the format of the records
//! ([`FORMAT`]) and the version of wasmhook that wrote it. At open, a store
//! of an older format is converted (the one-time conversions in
//! `open.rs` and [`migrate`]) and marked with this one; a store of a newer
//! format is refused before any record is read, with a message that names
//! both — rather than failing on the first record this binary cannot
//! read. A store from before the marker existed is format 0.
//!
//! **Backup.** [`Store::backup`] writes every record tree (and the plugin
//! components, whose only copy the embedded store holds) to one file while
//! the server runs: the writers are paused meanwhile (`gate.rs`), so the
//! file is one moment of the store. Left out: the machine's own trees
//! (`meta`, the committer's intents, sled's default tree) and the
//! compiled-plugin cache, which are rebuilt.
//!
//! The file: [`MAGIC`], the format (4 bytes, big-endian), the time it was
//! taken (Unix ms, 8 bytes), the writer's version (a length-prefixed
//! string), then frames as in a cluster snapshot (a tree name, then its
//! entries), then a trailer: the entry count and the SHA-256 of everything
//! before it. A file cut short or altered is refused.
//!
//! **Restore** ([`restore`]) fills an empty data directory from a file
//! (the server stopped); the secrets in it are sealed, so the server that
//! opens it needs the same `server.secrets_key` (or the old data
//! directory's `secrets-key` file).

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::*;

/// The format of the records this binary writes (and the newest it reads).
/// Raise it with a conversion in [`migrate`] whenever a record's encoding
/// changes in a way an older binary would misread.
pub const FORMAT: u32 = 1;
/// `meta` key of the format marker.
const FORMAT_KEY: &str = "format";
const MAGIC: &[u8; 10] = b"WHBACKUP1\n";
/// Name prefix of a backup being written in the data directory.
const BACKUP_PREFIX: &str = ".backup-";
/// How long a backup waits for the writers to pause.
const PAUSE_WITHIN: Duration = Duration::from_secs(10);
/// Trees left out of a backup: this machine's own (`plugin_blobs` is
/// carried: in the embedded store it is the only copy).
/// (The read lease records name the nodes of the cluster that wrote the
/// backup, not of the one it is restored into.)
const NOT_BACKED_UP: &[&str] = &[
    "__sled__default",
    "meta",
    INTENTS_TREE,
    crate::store::cluster::readers::TREE,
];

/// What a store's format marker says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FormatMark {
    pub format: u32,
    /// The wasmhook version that wrote it.
    pub written_by: String,
}

/// What a backup file holds, as its header says.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupInfo {
    pub format: u32,
    pub written_by: String,
    pub taken_at_ms: u64,
    pub entries: u64,
    pub bytes: u64,
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Commit(e.to_string())
}

fn bad_file(message: impl Into<String>) -> StoreError {
    StoreError::Backup(message.into())
}

/// The format marker of `db`; None: written before markers (format 0).
fn read_mark(meta: &Tree) -> Result<Option<FormatMark>, StoreError> {
    match meta.get(FORMAT_KEY)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: FORMAT_KEY.into(),
                message: e.to_string(),
            }),
    }
}

fn this_mark() -> FormatMark {
    FormatMark {
        format: FORMAT,
        written_by: env!("CARGO_PKG_VERSION").to_string(),
    }
}

fn write_mark(meta: &Tree) -> Result<(), StoreError> {
    meta.insert(
        FORMAT_KEY,
        serde_json::to_vec(&this_mark()).expect("serializable"),
    )?;
    Ok(())
}

/// Refuses a store of a newer format, before anything reads a record.
pub(super) fn check_format(meta: &Tree) -> Result<u32, StoreError> {
    let found = read_mark(meta)?;
    match found {
        Some(mark) if mark.format > FORMAT => Err(StoreError::NewerFormat {
            found: mark.format,
            written_by: mark.written_by,
            supported: FORMAT,
        }),
        Some(mark) => Ok(mark.format),
        None => Ok(0),
    }
}

/// Brings a store of format `from` to [`FORMAT`] and marks it. Format 0
/// (before markers) needs only the conversions every open runs already
/// (`open.rs`); later formats add their steps here.
pub(super) fn migrate(store: &Store, from: u32) -> Result<(), StoreError> {
    if from == FORMAT && read_mark(&store.meta)?.is_some_and(|m| m == this_mark()) {
        return Ok(());
    }
    if from < FORMAT {
        tracing::info!(
            from,
            to = FORMAT,
            "the store's records are converted to this version's format"
        );
    }
    write_mark(&store.meta)?;
    store.db.flush()?;
    Ok(())
}

impl Store {
    /// The store's format marker, as recorded.
    pub fn format(&self) -> Result<Option<FormatMark>, StoreError> {
        read_mark(&self.meta)
    }

    /// Writes a consistent copy of the store to a new file in `dir`, with
    /// the writers paused meanwhile, and returns it open (and already
    /// unlinked: it is gone once dropped, however the caller ends).
    /// Embedded store only: a cluster's records are in its NATS servers
    /// (back those up, or rely on its snapshots).
    pub async fn backup(&self, dir: &Path) -> Result<(std::fs::File, BackupInfo), StoreError> {
        if self.log().is_some() {
            return Err(StoreError::Backup(
                "cluster mode: the records live in the cluster's JetStream; back up the NATS servers' streams (nats stream backup) instead".into(),
            ));
        }
        let Some(paused) = self.gate.pause(PAUSE_WITHIN).await else {
            return Err(StoreError::Commit(
                "the store was too busy to pause its writers for a backup; try again".into(),
            ));
        };
        let store = self.clone();
        let path = dir.join(format!("{BACKUP_PREFIX}{}", crate::util::new_id("bak")));
        tokio::task::spawn_blocking(move || {
            let written = store.write_backup(&path);
            drop(paused);
            let opened = written.and_then(|info| {
                let file = std::fs::File::open(&path).map_err(io)?;
                Ok((file, info))
            });
            let _ = std::fs::remove_file(&path);
            opened
        })
        .await
        .map_err(|e| StoreError::Commit(format!("the backup task failed: {e}")))?
    }

    /// The file itself; the writers are paused by the caller.
    fn write_backup(&self, to: &Path) -> Result<BackupInfo, StoreError> {
        let taken_at_ms = millis(jiff::Timestamp::now());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(to)
            .map_err(io)?;
        let mut out = Hashing {
            inner: BufWriter::new(file),
            hash: Sha256::new(),
            bytes: 0,
        };
        out.write_all(MAGIC).map_err(io)?;
        out.write_all(&FORMAT.to_be_bytes()).map_err(io)?;
        out.write_all(&taken_at_ms.to_be_bytes()).map_err(io)?;
        let version = env!("CARGO_PKG_VERSION").as_bytes();
        crate::store::cluster::snapshot::frame(&mut out, 0, &[version]).map_err(io)?;
        let mut entries = 0u64;
        for name in self.db.tree_names() {
            if NOT_BACKED_UP.iter().any(|t| t.as_bytes() == &name[..]) {
                continue;
            }
            crate::store::cluster::snapshot::frame(&mut out, 1, &[&name]).map_err(io)?;
            for entry in self.db.open_tree(&name)?.iter() {
                let (k, v) = entry?;
                crate::store::cluster::snapshot::frame(&mut out, 2, &[&k, &v]).map_err(io)?;
                entries += 1;
            }
        }
        let digest = out.hash.clone().finalize();
        let mut inner = out.inner;
        inner.write_all(&[3]).map_err(io)?;
        inner.write_all(&entries.to_be_bytes()).map_err(io)?;
        inner.write_all(&digest).map_err(io)?;
        let file = inner.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok(BackupInfo {
            format: FORMAT,
            written_by: env!("CARGO_PKG_VERSION").to_string(),
            taken_at_ms,
            entries,
            bytes: out.bytes + 1 + 8 + 32,
        })
    }

    /// A pass for one write (embedded; cluster writes go through the log).
    pub(super) async fn pass(&self) -> Option<gate::Pass> {
        match self.log() {
            None => Some(self.gate.enter().await),
            Some(_) => None,
        }
    }
}

/// Removes what a backup interrupted by a crash left in `dir`.
pub fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(BACKUP_PREFIX))
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A writer that hashes and counts what it writes.
struct Hashing<W: Write> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Fills the data directory `dir` (absent or empty) from the backup
/// `from`: the file's digest is checked before anything is written, its
/// frames and count while they are written. The store is written into a
/// directory beside `dir` and moved into place only once complete, so a
/// failed restore leaves nothing a server would open.
pub fn restore(from: &Path, dir: &Path) -> Result<BackupInfo, StoreError> {
    let len = std::fs::metadata(from).map_err(io)?.len();
    let Some(body) = len.checked_sub(41) else {
        return Err(bad_file("the backup is cut short"));
    };
    let mut trailer = [0u8; 41];
    {
        let mut file = std::fs::File::open(from).map_err(io)?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(body)).map_err(io)?;
        file.read_exact(&mut trailer).map_err(io)?;
    }
    if trailer[0] != 3 || !trailer_matches(from, &trailer[9..])? {
        return Err(bad_file(
            "the backup's trailer does not match its contents: the file is cut short or damaged",
        ));
    }
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(bad_file(format!(
            "{} already holds files (a store?): restore into an empty directory",
            dir.display()
        )));
    }
    let name = dir
        .file_name()
        .ok_or_else(|| bad_file(format!("{} is no directory name", dir.display())))?;
    let staging = dir.with_file_name(format!(
        ".{}.restoring-{}",
        name.to_string_lossy(),
        crate::util::new_id("rst")
    ));
    let written = (|| {
        let db = sled::Config::new().path(&staging).open()?;
        let info = read_backup(from, Some(&db))?;
        let meta = db.open_tree("meta")?;
        meta.insert(
            FORMAT_KEY,
            serde_json::to_vec(&FormatMark {
                format: info.format,
                written_by: info.written_by.clone(),
            })
            .expect("serializable"),
        )?;
        db.flush()?;
        Ok::<_, StoreError>(info)
    })();
    let info = match written {
        Ok(info) => info,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if dir.exists() {
        std::fs::remove_dir(dir).map_err(io)?;
    }
    std::fs::rename(&staging, dir).map_err(io)?;
    Ok(info)
}

/// One part of a frame, at most `left` bytes (a damaged length never
/// allocates more than the file holds).
fn read_part(input: &mut impl Read, left: u64) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u64::from(u32::from_be_bytes(len));
    if len > left {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "a part longer than the file",
        ));
    }
    let mut bytes = vec![0u8; len as usize];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Reads a backup through: its header and frames checked; with `into`,
/// its entries written there.
fn read_backup(from: &Path, into: Option<&sled::Db>) -> Result<BackupInfo, StoreError> {
    let file = std::fs::File::open(from).map_err(io)?;
    let bytes = file.metadata().map_err(io)?.len();
    let mut input = BufReader::new(file);
    let mut magic = [0u8; 10];
    input
        .read_exact(&mut magic)
        .map_err(|_| bad_file("not a wasmhook backup (too short)"))?;
    if &magic != MAGIC {
        return Err(bad_file("not a wasmhook backup"));
    }
    let mut head = [0u8; 12];
    input
        .read_exact(&mut head)
        .map_err(|_| bad_file("the backup is cut short"))?;
    let format = u32::from_be_bytes(head[..4].try_into().expect("4 bytes"));
    let taken_at_ms = u64::from_be_bytes(head[4..].try_into().expect("8 bytes"));
    let cut = |_| bad_file("the backup is cut short");
    let mut kind = [0u8; 1];
    input.read_exact(&mut kind).map_err(cut)?;
    if kind[0] != 0 {
        return Err(bad_file("the backup's header is damaged"));
    }
    let written_by =
        String::from_utf8_lossy(&read_part(&mut input, bytes).map_err(cut)?).into_owned();
    if format > FORMAT {
        return Err(StoreError::NewerFormat {
            found: format,
            written_by,
            supported: FORMAT,
        });
    }
    let mut entries = 0u64;
    let mut tree: Option<sled::Tree> = None;
    let mut batch = sled::Batch::default();
    loop {
        input.read_exact(&mut kind).map_err(cut)?;
        match kind[0] {
            1 => {
                let name = read_part(&mut input, bytes).map_err(cut)?;
                if NOT_BACKED_UP.iter().any(|t| t.as_bytes() == &name[..]) {
                    return Err(bad_file(format!(
                        "the backup holds the tree {:?}, which backups never carry",
                        String::from_utf8_lossy(&name)
                    )));
                }
                if let Some(t) = &tree {
                    t.apply_batch(std::mem::take(&mut batch))?;
                }
                tree = into.map(|db| db.open_tree(&name)).transpose()?;
            }
            2 => {
                let key = read_part(&mut input, bytes).map_err(cut)?;
                let value = read_part(&mut input, bytes).map_err(cut)?;
                entries += 1;
                if let Some(t) = &tree {
                    batch.insert(key, value);
                    if entries.is_multiple_of(10_000) {
                        t.apply_batch(std::mem::take(&mut batch))?;
                    }
                }
            }
            3 => break,
            k => {
                return Err(bad_file(format!(
                    "unknown frame {k}: the backup is damaged"
                )));
            }
        }
    }
    let mut trailer = [0u8; 40];
    input.read_exact(&mut trailer).map_err(cut)?;
    let counted = u64::from_be_bytes(trailer[..8].try_into().expect("8 bytes"));
    if counted != entries {
        return Err(bad_file(
            "the backup's trailer does not match its contents: the file is damaged",
        ));
    }
    if let Some(t) = &tree {
        t.apply_batch(batch)?;
    }
    Ok(BackupInfo {
        format,
        written_by,
        taken_at_ms,
        entries,
        bytes,
    })
}

/// Whether the SHA-256 of the file up to its trailer (the last 41 bytes:
/// the `3`, the count and the digest) is `digest`.
fn trailer_matches(path: &Path, digest: &[u8]) -> Result<bool, StoreError> {
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let Some(body) = len.checked_sub(41) else {
        return Ok(false);
    };
    let mut hash = Sha256::new();
    let mut input = BufReader::new(file).take(body);
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = input.read(&mut chunk).map_err(io)?;
        if n == 0 {
            break;
        }
        hash.update(&chunk[..n]);
    }
    Ok(hash.finalize().as_slice() == digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backup file written by hand: `format`, one tree with one entry,
    /// a true trailer.
    fn file_of_format(path: &Path, format: u32) {
        let mut out = Hashing {
            inner: Vec::new(),
            hash: Sha256::new(),
            bytes: 0,
        };
        out.write_all(MAGIC).unwrap();
        out.write_all(&format.to_be_bytes()).unwrap();
        out.write_all(&0u64.to_be_bytes()).unwrap();
        crate::store::cluster::snapshot::frame(&mut out, 0, &[b"9.9.9"]).unwrap();
        crate::store::cluster::snapshot::frame(&mut out, 1, &[b"tenants"]).unwrap();
        crate::store::cluster::snapshot::frame(&mut out, 2, &[b"t", b"{}"]).unwrap();
        let digest = out.hash.clone().finalize();
        let mut bytes = out.inner;
        bytes.push(3);
        bytes.extend_from_slice(&1u64.to_be_bytes());
        bytes.extend_from_slice(&digest);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_backup_of_a_newer_format_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("newer.backup");
        file_of_format(&file, FORMAT + 1);
        let err = restore(&file, &dir.path().join("data")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("format {}", FORMAT + 1))
                && text.contains("9.9.9")
                && text.contains(&format!("up to {FORMAT}")),
            "{text}"
        );
        assert!(!dir.path().join("data").exists());
        // The same file in this format restores.
        file_of_format(&file, FORMAT);
        let info = restore(&file, &dir.path().join("data")).unwrap();
        assert_eq!((info.format, info.entries), (FORMAT, 1));
        let store = Store::open(&dir.path().join("data")).unwrap();
        assert_eq!(store.format().unwrap().unwrap().format, FORMAT);
    }

    #[test]
    fn a_damaged_length_is_refused_without_allocating_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("damaged.backup");
        file_of_format(&file, FORMAT);
        let mut bytes = std::fs::read(&file).unwrap();
        // The tree name's length: 4 GiB.
        let at = MAGIC.len() + 12 + 1 + 4 + 5 + 1;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        std::fs::write(&file, &bytes).unwrap();
        assert!(restore(&file, &dir.path().join("data")).is_err());
        assert!(read_backup(&file, None).is_err());
    }
}
