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

pub struct ArtifactCache {
    dir: PathBuf,
    /// Hex of the engine's compatibility hash, part of every file name.
    engine_tag: String,
    digests: Arc<dyn ArtifactDigests>,
}

impl ArtifactCache {
    pub fn open(
        dir: PathBuf,
        engine: &Engine,
        digests: Arc<dyn ArtifactDigests>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(ArtifactCache {
            dir,
            engine_tag: format!("{:016x}", hasher.finish()),
            digests,
        })
    }

    fn file_name(&self, sha256: &str) -> String {
        format!("{sha256}-{}.cwasm", self.engine_tag)
    }

    /// Removes the artifact of a component no plugin uses any more.
    pub fn remove(&self, sha256: &str) {
        let name = self.file_name(sha256);
        self.digests.remove(&name);
        let _ = std::fs::remove_file(self.dir.join(&name));
    }

    /// The compiled component for `wasm`, from the cache or freshly compiled
    /// (and then written atomically: temp file + rename).
    pub fn load(&self, engine: &Engine, sha256: &str, wasm: &[u8]) -> Result<Component, LoadError> {
        let name = self.file_name(sha256);
        let path = self.dir.join(&name);
        if let Ok(bytes) = std::fs::read(&path) {
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            if self.digests.get(&name) == Some(digest) {
                // SAFETY: these exact bytes are the ones this cache wrote from
                // `precompile_component` (their SHA-256 matches the digest
                // recorded in the store when it wrote them); wasmtime still
                // checks that they match this engine.
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
        let artifact = engine
            .precompile_component(wasm)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        match write_atomically(&path, &artifact) {
            Ok(()) => self.digests.put(&name, Sha256::digest(&artifact).into()),
            // The cache is an optimisation: a read-only disk must not refuse plugins.
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot cache compiled plugin")
            }
        }
        // SAFETY: `artifact` was produced by `precompile_component` on this engine just now.
        unsafe { Component::deserialize(engine, &artifact) }
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))
    }
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
