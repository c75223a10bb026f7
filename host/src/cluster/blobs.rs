//! Plugin components in cluster mode: their bytes in a JetStream object
//! store (a component may be tens of MiB, far above what one log message
//! carries), named by their SHA-256; the log carries only the record that
//! names the digest. Each node keeps the bytes it used in its view's
//! `plugin_blobs` tree as a cache and compiles them itself.

use async_nats::jetstream::{self, object_store};
use tokio::io::AsyncReadExt;

use super::{ClusterError, check_setting};

/// The object store's bucket.
pub const BUCKET: &str = "wasmhook_plugins";

#[derive(Clone)]
pub struct Blobs {
    store: object_store::ObjectStore,
}

impl Blobs {
    /// The bucket as this version uses it: created if missing, else checked.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, ClusterError> {
        let store = match js.get_object_store(BUCKET).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: BUCKET.to_string(),
                    num_replicas: replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(ClusterError::jetstream)?,
        };
        let mut stream = js
            .get_stream(format!("OBJ_{BUCKET}"))
            .await
            .map_err(ClusterError::jetstream)?;
        let found = stream
            .info()
            .await
            .map_err(ClusterError::jetstream)?
            .config
            .num_replicas
            .max(1);
        check_setting("object store", BUCKET, "num_replicas", found, replicas)?;
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
