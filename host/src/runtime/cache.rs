//! Compiled plugin artifacts on disk, keyed by the component's SHA-256 and
//! the engine's compatibility hash: compiling takes ~100 ms per plugin,
//! mapping a cached artifact ~0.2 ms, so a restart with many tenants' plugins
//! stays fast. An artifact built by another wasmtime version or with other
//! settings simply has another name.
//!
//! A `.cwasm` file is native code the host maps and runs: a file swapped on
//! disk would run anything in the host. So the SHA-256 of every artifact the
//! cache writes is kept in the store ([`ArtifactDigests`]), and a file is
//! deserialized only when its bytes hash to that digest; otherwise it is
//! discarded and compiled again from the component bytes.
//!
//! An operator may also name a directory shared by the wasmhook processes of
//! one host (`plugins.shared_cache_dir`): there no digest can vouch for a
//! file another process wrote, so the directory itself is trusted, and it is
//! refused unless only this user can write it.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use wasmtime::Engine;
use wasmtime::component::Component;

use super::LoadError;

/// Where the digests of the cached artifacts are kept (the store, outside
/// the directory whose files they vouch for).
pub trait ArtifactDigests: Send + Sync {
    /// The SHA-256 of the artifact file `name`, if the cache wrote it.
    fn get(&self, name: &str) -> Option<[u8; 32]>;
    /// Records the SHA-256 of an artifact file the cache wrote.
    fn put(&self, name: &str, digest: [u8; 32]);
    /// Forgets an artifact (its plugin was deleted).
    fn remove(&self, name: &str);
}

/// Digests kept for the life of the process only (a runtime without a
/// store: `wasmhook plugin run`, tests). Files from an earlier process are
/// then recompiled, never trusted.
#[derive(Default)]
pub struct MemoryDigests(Mutex<HashMap<String, [u8; 32]>>);

impl ArtifactDigests for MemoryDigests {
    fn get(&self, name: &str) -> Option<[u8; 32]> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
    }
    fn put(&self, name: &str, digest: [u8; 32]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), digest);
    }
    fn remove(&self, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }
}

/// Where compiled artifacts are kept: either, both or neither.
#[derive(Default, Clone)]
pub struct CacheDirs {
    /// This data directory's own cache. A file in it is used only when its
    /// SHA-256 matches the digest `digests` recorded when it was written.
    pub private: Option<(PathBuf, Arc<dyn ArtifactDigests>)>,
    /// A directory shared by the wasmhook processes of one host (several
    /// nodes, the CLI, a container image that ships compiled plugins), so a
    /// 12 MB JavaScript component is compiled once per host, not once per
    /// process. Its files are **trusted as they are**, like the binary: the
    /// directory must belong to this user and be writable by no one else
    /// ([`ArtifactCache::open`] refuses it otherwise).
    pub shared: Option<PathBuf>,
}

impl CacheDirs {
    fn is_empty(&self) -> bool {
        self.private.is_none() && self.shared.is_none()
    }
}

pub struct ArtifactCache {
    private: Option<(PathBuf, Arc<dyn ArtifactDigests>)>,
    shared: Option<PathBuf>,
    /// Hex of the engine's compatibility hash, part of every file name.
    engine_tag: String,
}

impl ArtifactCache {
    /// `None` when `dirs` names no directory.
    pub fn open(dirs: CacheDirs, engine: &Engine) -> std::io::Result<Option<Self>> {
        if dirs.is_empty() {
            return Ok(None);
        }
        if let Some((dir, _)) = &dirs.private {
            std::fs::create_dir_all(dir)?;
        }
        let shared = match &dirs.shared {
            Some(dir) => Some(open_shared(dir)?),
            None => None,
        };
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Some(ArtifactCache {
            private: dirs.private,
            shared,
            engine_tag: format!("{:016x}", hasher.finish()),
        }))
    }

    fn file_name(&self, sha256: &str) -> String {
        format!("{sha256}-{}.cwasm", self.engine_tag)
    }

    /// Removes the private artifact of a component no plugin uses any more
    /// (the shared directory's copy may serve other processes).
    pub fn remove(&self, sha256: &str) {
        let name = self.file_name(sha256);
        if let Some((dir, digests)) = &self.private {
            digests.remove(&name);
            let _ = std::fs::remove_file(dir.join(&name));
        }
    }

    /// The compiled component for `wasm`: from the private cache, else the
    /// shared directory, else freshly compiled (and then written to both,
    /// atomically: temp file + rename).
    pub fn load(&self, engine: &Engine, sha256: &str, wasm: &[u8]) -> Result<Component, LoadError> {
        let name = self.file_name(sha256);
        if let Some((dir, digests)) = &self.private {
            let path = dir.join(&name);
            if let Ok(bytes) = std::fs::read(&path) {
                let digest: [u8; 32] = Sha256::digest(&bytes).into();
                if digests.get(&name) == Some(digest) {
                    // SAFETY: these exact bytes are the ones this cache wrote
                    // from `precompile_component` (their SHA-256 matches the
                    // digest recorded in the store when it wrote them);
                    // wasmtime still checks that they match this engine.
                    match unsafe { Component::deserialize(engine, &bytes) } {
                        Ok(component) => return Ok(component),
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "discarding unusable compiled plugin");
                        }
                    }
                } else {
                    tracing::warn!(path = %path.display(), "compiled plugin does not match its recorded digest; compiling again");
                }
                let _ = std::fs::remove_file(&path);
            }
        }
        if let Some(dir) = &self.shared {
            let path = dir.join(&name);
            if let Ok(bytes) = std::fs::read(&path) {
                // SAFETY: the shared directory is trusted like the binary
                // (`open_shared` checked that only this user can write it),
                // and a wasmhook process wrote each file there from
                // `precompile_component`; wasmtime still checks the header
                // and that the artifact matches this engine.
                match unsafe { Component::deserialize(engine, &bytes) } {
                    Ok(component) => {
                        self.keep_private(&name, &bytes);
                        return Ok(component);
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "discarding unusable shared compiled plugin");
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
        }
        let artifact = engine
            .precompile_component(wasm)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        self.keep_private(&name, &artifact);
        if let Some(dir) = &self.shared {
            let path = dir.join(&name);
            if let Err(e) = write_atomically(&path, &artifact) {
                tracing::warn!(path = %path.display(), error = %e, "cannot share compiled plugin");
            }
        }
        // SAFETY: `artifact` was produced by `precompile_component` on this engine just now.
        unsafe { Component::deserialize(engine, &artifact) }
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))
    }

    /// Writes `artifact` to the private cache and records its digest.
    fn keep_private(&self, name: &str, artifact: &[u8]) {
        let Some((dir, digests)) = &self.private else {
            return;
        };
        let path = dir.join(name);
        match write_atomically(&path, artifact) {
            Ok(()) => digests.put(name, Sha256::digest(artifact).into()),
            // The cache is an optimisation: a read-only disk must not refuse plugins.
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot cache compiled plugin")
            }
        }
    }
}

/// Creates the shared directory (0700) or checks the one there, and
/// returns its canonical path (later reads follow no symlink a check did
/// not see). Its files become native code in this process, so it must be
/// this user's own and writable by no one else, and so must every directory
/// above it be, or have the sticky bit (`/tmp`): someone who can write a
/// parent could swap this directory for one of theirs after the check. As
/// OpenSSH demands of `~/.ssh` and what leads to it.
fn open_shared(dir: &std::path::Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let canonical = std::fs::canonicalize(dir)?;
    let me = rustix::process::geteuid().as_raw();
    let refuse = |path: &std::path::Path, why: String| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{}: {why}: the compiled plugins in {} would run in this process",
                path.display(),
                dir.display()
            ),
        )
    };
    let meta = std::fs::metadata(&canonical)?;
    if meta.uid() != me {
        return Err(refuse(
            &canonical,
            format!("belongs to uid {}, not to this user (uid {me})", meta.uid()),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(
            &canonical,
            format!(
                "is writable by group or others (mode {:o})",
                meta.mode() & 0o777
            ),
        ));
    }
    for parent in canonical.ancestors().skip(1) {
        let meta = std::fs::metadata(parent)?;
        if meta.uid() != me && meta.uid() != 0 {
            return Err(refuse(
                parent,
                format!(
                    "a directory above it belongs to uid {}, neither this user (uid {me}) nor root",
                    meta.uid()
                ),
            ));
        }
        if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
            return Err(refuse(
                parent,
                format!(
                    "a directory above it is writable by group or others without the sticky bit (mode {:o})",
                    meta.mode() & 0o7777
                ),
            ));
        }
    }
    Ok(canonical)
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    // Unique per process and per call: two runtimes of one process, or two
    // processes on the shared directory, may write the same name at once.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn component() -> &'static [u8] {
        crate::runtime::bundled::find("event-filter").unwrap().wasm
    }

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        Engine::new(&config).unwrap()
    }

    fn shared_only(dir: &std::path::Path) -> CacheDirs {
        CacheDirs {
            private: None,
            shared: Some(dir.to_path_buf()),
        }
    }

    #[test]
    fn a_shared_directory_others_can_write_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("shared");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ArtifactCache::open(shared_only(&dir), &engine())
            .err()
            .expect("a world-writable directory is refused");
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(
            err.to_string().contains("writable by group or others"),
            "{err}"
        );

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        assert!(ArtifactCache::open(shared_only(&dir), &engine()).is_ok());

        // A parent others can write (no sticky bit) could swap it.
        let open_parent = root.path().join("open");
        std::fs::create_dir(&open_parent).unwrap();
        std::fs::set_permissions(&open_parent, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ArtifactCache::open(shared_only(&open_parent.join("shared")), &engine())
            .err()
            .expect("a parent others can write is refused");
        assert!(err.to_string().contains("without the sticky bit"), "{err}");
        // With the sticky bit (as /tmp, where these temp dirs live), it may.
        std::fs::set_permissions(&open_parent, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(ArtifactCache::open(shared_only(&open_parent.join("shared")), &engine()).is_ok());

        // A directory it creates is this user's alone.
        let fresh = root.path().join("a/b/fresh");
        ArtifactCache::open(shared_only(&fresh), &engine()).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_component_compiled_once_serves_the_next_process_from_the_shared_directory() {
        let root = tempfile::tempdir().unwrap();
        let shared = root.path().join("shared");
        let engine = engine();
        let sha = hex::encode(Sha256::digest(component()));

        let first = ArtifactCache::open(shared_only(&shared), &engine)
            .unwrap()
            .unwrap();
        first.load(&engine, &sha, component()).unwrap();
        let files: Vec<_> = std::fs::read_dir(&shared)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "one artifact, no temp file left: {files:?}");
        let artifact = std::fs::read(&files[0]).unwrap();

        // Another process: its own private cache, fed from the shared copy
        // (the same bytes, so not compiled again), its digest recorded.
        let digests = Arc::new(MemoryDigests::default());
        let second = ArtifactCache::open(
            CacheDirs {
                private: Some((root.path().join("private"), digests.clone())),
                shared: Some(shared.clone()),
            },
            &engine,
        )
        .unwrap()
        .unwrap();
        second.load(&engine, &sha, component()).unwrap();
        let name = files[0].file_name().unwrap().to_str().unwrap();
        let private = std::fs::read(root.path().join("private").join(name)).unwrap();
        assert_eq!(private, artifact);
        assert_eq!(digests.get(name), Some(Sha256::digest(&artifact).into()));

        // Deleting the plugin leaves the shared copy to the host's others.
        second.remove(&sha);
        assert!(!root.path().join("private").join(name).exists());
        assert!(files[0].exists());
    }

    #[test]
    fn an_unusable_shared_file_is_compiled_again() {
        let root = tempfile::tempdir().unwrap();
        let shared = root.path().join("shared");
        let engine = engine();
        let sha = hex::encode(Sha256::digest(component()));
        let cache = ArtifactCache::open(shared_only(&shared), &engine)
            .unwrap()
            .unwrap();
        let path = shared.join(cache.file_name(&sha));
        std::fs::write(&path, b"not an artifact").unwrap();
        cache.load(&engine, &sha, component()).unwrap();
        assert_ne!(std::fs::read(&path).unwrap(), b"not an artifact");
    }
}
