//! Cluster mode on NATS JetStream, **under construction** (issue 8; the
//! design and what is built so far: `docs/cluster.md`). Nothing in
//! `wasmhook serve` reaches this module yet.
//!
//! The records stay sled trees on every node, but in cluster mode each
//! node's sled directory is a *view*: a replicated JetStream stream carries
//! every change as a guarded write batch, and every node applies the
//! batches in the stream's order ([`log`]). JetStream 2.9's KV gives neither
//! atomic changes across keys nor ordered range scans, and the records need
//! both (an acceptance, a window flush, the outbox by due time, the delivery
//! log by tenant); a log of atomic batches applied to sled gives both, and
//! keeps one code path for the records on both backends.

pub mod leases;

use std::time::Duration;

/// What can go wrong talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No server of the list answered (at start: the node refuses to start).
    #[error("cannot reach NATS at {urls}: {message}")]
    Unreachable { urls: String, message: String },
    /// A stream, bucket or object store exists with a configuration this
    /// version does not use (another version, another replication).
    #[error("{what} {name} exists with {setting} = {found}, but this node needs {wanted}")]
    Incompatible {
        what: &'static str,
        name: String,
        setting: &'static str,
        found: String,
        wanted: String,
    },
    /// A JetStream request failed or timed out (NATS lost while running):
    /// callers answer 503; nothing was half-written.
    #[error("NATS JetStream: {0}")]
    JetStream(String),
    /// A batch in the log cannot be decoded (written by another version).
    #[error("log message {seq} is unreadable: {message}")]
    Corrupt { seq: u64, message: String },
    /// The local view (sled) failed.
    #[error("the local view: {0}")]
    View(#[from] sled::Error),
    /// A snapshot could not be written, stored or loaded.
    #[error("log snapshot: {0}")]
    Snapshot(String),
    /// The log was purged past this node's view while it ran: only a
    /// restart (which loads the newest snapshot) can bring it back.
    #[error(
        "the log was compacted past this node's view (applied {applied}, next in the log {next}); restart the node to load the newest snapshot"
    )]
    Behind { applied: u64, next: u64 },
    /// The node is shutting down or its applier stopped.
    #[error("the log applier stopped")]
    Stopped,
}

impl ClusterError {
    pub(crate) fn jetstream(e: impl std::fmt::Display) -> Self {
        ClusterError::JetStream(e.to_string())
    }
}

/// One setting of a stream (or of the stream behind a bucket or an object
/// store) that exists already: [`ClusterError::Incompatible`] naming it
/// unless it is what this version creates.
pub(crate) fn check_setting<T: PartialEq + std::fmt::Debug>(
    what: &'static str,
    name: &str,
    setting: &'static str,
    found: T,
    wanted: T,
) -> Result<(), ClusterError> {
    if found == wanted {
        return Ok(());
    }
    Err(ClusterError::Incompatible {
        what,
        name: name.to_string(),
        setting,
        found: format!("{found:?}"),
        wanted: format!("{wanted:?}"),
    })
}

/// How a node reaches the cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `nats://h1:4222,nats://h2:4222,…`
    pub urls: Vec<String>,
    /// The replication of the streams, buckets and object stores this node
    /// creates. None: 3 when the cluster has at least 3 servers, else 1.
    pub replicas: Option<usize>,
    /// How long a JetStream request may take before it fails.
    pub request_timeout: Duration,
    /// TLS and credentials beyond what the URLs carry.
    pub auth: NatsAuth,
}

impl ClusterSettings {
    pub fn new(urls: Vec<String>) -> Self {
        ClusterSettings {
            urls,
            replicas: None,
            request_timeout: Duration::from_secs(5),
            auth: NatsAuth::default(),
        }
    }
}

/// How a node proves itself to the cluster's NATS and checks the servers
/// (`[cluster]` settings; a user and password may also be in the URLs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsAuth {
    /// CA certificate (PEM) the servers' certificates must chain to; set,
    /// TLS is required.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Client certificate and key (PEM), for servers that verify clients.
    pub tls_client: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// A `.creds` file (user JWT and nkey seed) of a decentralized account.
    pub creds_file: Option<std::path::PathBuf>,
    /// A file holding an nkey seed (`SU…`).
    pub nkey_seed_file: Option<std::path::PathBuf>,
}

/// An object store as this version uses it (file storage, `replicas`):
/// created if missing, else its replication checked.
pub(crate) async fn object_store(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<async_nats::jetstream::object_store::ObjectStore, ClusterError> {
    use async_nats::jetstream::{object_store, stream::StorageType};
    let store = match js.get_object_store(bucket).await {
        Ok(store) => store,
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: bucket.to_string(),
                num_replicas: replicas,
                storage: StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(ClusterError::jetstream)?,
    };
    let found = js
        .get_stream(format!("OBJ_{bucket}"))
        .await
        .map_err(ClusterError::jetstream)?
        .info()
        .await
        .map_err(ClusterError::jetstream)?
        .config
        .num_replicas
        .max(1);
    check_setting("object store", bucket, "num_replicas", found, replicas)?;
    Ok(store)
}

/// Connects to the first server of `settings.urls` that answers; an error
/// that names the URLs when none does. Reconnects by itself afterwards.
pub async fn connect(settings: &ClusterSettings) -> Result<async_nats::Client, ClusterError> {
    let unreachable = |message: String| ClusterError::Unreachable {
        urls: settings.urls.join(","),
        message,
    };
    let addrs: Vec<async_nats::ServerAddr> = settings
        .urls
        .iter()
        .map(|u| u.parse().map_err(|e| unreachable(format!("{u}: {e}"))))
        .collect::<Result<_, _>>()?;
    let mut options = async_nats::ConnectOptions::new()
        .name("wasmhook")
        .connection_timeout(settings.request_timeout)
        .request_timeout(Some(settings.request_timeout));
    let auth = &settings.auth;
    if let Some(ca) = &auth.tls_ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &auth.tls_client {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    if let Some(creds) = &auth.creds_file {
        options = options
            .credentials_file(creds)
            .await
            .map_err(|e| unreachable(format!("cluster.creds_file {}: {e}", creds.display())))?;
    }
    if let Some(path) = &auth.nkey_seed_file {
        let seed = std::fs::read_to_string(path)
            .map_err(|e| unreachable(format!("cluster.nkey_seed_file {}: {e}", path.display())))?;
        options = options.nkey(seed.trim().to_string());
    }
    options
        .connect(addrs)
        .await
        .map_err(|e| unreachable(e.to_string()))
}

/// The replication to create with: the setting, or 3 when the cluster has
/// at least 3 servers (as the server the client reached advertises), else 1.
pub fn replicas(settings: &ClusterSettings, client: &async_nats::Client) -> usize {
    settings.replicas.unwrap_or_else(|| {
        let info = client.server_info();
        // `connect_urls` lists the cluster's client URLs, this server's
        // included; a server outside a cluster leaves it empty.
        if info.cluster.is_some() && info.connect_urls.len() >= 3 {
            3
        } else {
            1
        }
    })
}

/// Test support (a real NATS cluster), for this crate's tests and the
/// integration tests; not part of the product.
#[doc(hidden)]
pub mod testing;
