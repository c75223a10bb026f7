//! Plugin components in cluster mode: their bytes in a JetStream object
//! store (a component may be tens of MiB, far above what one log message
//! carries), named by their SHA-256; the log carries only the record that
//! names the digest. Each node keeps the bytes it used in its view's
//! `plugin_blobs` tree as a cache and compiles them itself.

use async_nats::jetstream::{self, object_store};
use tokio::io::AsyncReadExt;

use crate::cluster::ClusterError;

/// The object store's bucket.
pub const BUCKET: &str = "wasmhook_plugins";

#[derive(Clone)]
pub struct Blobs {
    store: object_store::ObjectStore,
}

impl Blobs {
    /// The bucket as this version uses it: created if missing, else checked.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, ClusterError> {
        let store = crate::cluster::object_store(js, BUCKET, replicas).await?;
        Ok(Blobs { store })
    }

    pub async fn put(&self, sha256: &str, bytes: &[u8]) -> Result<(), ClusterError> {
        let mut reader = bytes;
        self.store
            .put(sha256, &mut reader)
            .await
            .map_err(ClusterError::jetstream)?;
        Ok(())
    }

    /// None: no such component.
    pub async fn get(&self, sha256: &str) -> Result<Option<Vec<u8>>, ClusterError> {
        let mut object = match self.store.get(sha256).await {
            Ok(o) => o,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ClusterError::jetstream(e)),
        };
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(ClusterError::jetstream)?;
        Ok(Some(bytes))
    }

    pub async fn delete(&self, sha256: &str) -> Result<(), ClusterError> {
        self.store
            .delete(sha256)
            .await
            .map_err(ClusterError::jetstream)
    }
}
