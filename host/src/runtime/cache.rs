//! Compiled plugin artifacts on disk, keyed by the component's SHA-256 and
//! the engine's compatibility hash: compiling takes ~100 ms per plugin,
//! mapping a cached artifact ~0.2 ms, so a restart with many tenants' plugins
//! stays fast. An artifact built by another wasmtime version or with other
//! settings simply has another name.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::PathBuf;

use wasmtime::Engine;
use wasmtime::component::Component;

use super::LoadError;

pub struct ArtifactCache {
    dir: PathBuf,
    /// Hex of the engine's compatibility hash, part of every file name.
    engine_tag: String,
}

impl ArtifactCache {
    pub fn open(dir: PathBuf, engine: &Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(ArtifactCache {
            dir,
            engine_tag: format!("{:016x}", hasher.finish()),
        })
    }

    /// The compiled component for `wasm`, from the cache or freshly compiled
    /// (and then written atomically: temp file + rename).
    pub fn load(&self, engine: &Engine, sha256: &str, wasm: &[u8]) -> Result<Component, LoadError> {
        let path = self.dir.join(format!("{sha256}-{}.cwasm", self.engine_tag));
        if path.exists() {
            // SAFETY: the file is one this cache wrote from `precompile_component`
            // (named by the wasm's hash in a directory the operator owns);
            // wasmtime still checks that it matches this engine.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unusable compiled plugin");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let artifact = engine
            .precompile_component(wasm)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        if let Err(e) = write_atomically(&path, &artifact) {
            // The cache is an optimisation: a read-only disk must not refuse plugins.
            tracing::warn!(path = %path.display(), error = %e, "cannot cache compiled plugin");
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
