//! `wasmhook migrate`: from one machine to a cluster without losing
//! anything. An operator who started on the embedded store moves every
//! tenant, key, subscription, plugin, source, window, held item, event and
//! pending delivery (under its delivery id and due time) into an empty
//! cluster's NATS JetStream, then starts the cluster's nodes. With
//! `--from-nats`, a cluster moves the same way into another (a replica set
//! into a partitioned cluster, or a partitioned cluster to another
//! partition count), its nodes stopped.
//!
//! The embedded store's secrets are sealed with its own key (its
//! `server.secrets_key`, or the one generated into `<data>/secrets-key`);
//! the cluster's nodes share `server.secrets_key`. The move opens the first
//! and seals every secret again with the second, so the nodes need only
//! their own configuration.

use std::path::Path;

use anyhow::Context;

use crate::config::Config;
use crate::secrets::{Key, Keys};
use crate::store::Store;
use crate::store::migrate::Moved;

/// What a move did, as the command prints it.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub moved: Moved,
}

/// Moves the embedded store in `config.data_dir` into the cluster of
/// `config.cluster`. The embedded store must not be in use (stop its
/// server first: its lock says so otherwise), and the cluster must hold no
/// wasmhook data yet.
pub async fn run(config: &Config, from_nats: Option<&str>) -> anyhow::Result<Report> {
    let cluster = config
        .cluster
        .as_ref()
        .context("wasmhook migrate needs the cluster's NATS (--to-nats URLS)")?;
    crate::secrets::install(keys(config)?).map_err(anyhow::Error::msg)?;
    // A cluster moved from is read into a scratch view, gone after.
    let source_view = tempfile::tempdir().context("a scratch directory for the source's view")?;
    let from = match from_nats {
        None => Store::open_with_cache(&config.data_dir, config.store_cache_bytes).with_context(
            || {
                format!(
                    "opening the embedded store in {} (is its server still running?)",
                    config.data_dir.display()
                )
            },
        )?,
        Some(urls) => {
            let urls: Vec<String> = urls
                .split(',')
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect();
            anyhow::ensure!(!urls.is_empty(), "--from-nats names no NATS URL");
            anyhow::ensure!(
                urls != cluster.urls,
                "--from-nats and --to-nats name the same NATS servers: a move goes into another, empty cluster"
            );
            let mut settings = cluster.settings();
            settings.urls = urls;
            let client = crate::cluster::connect(&settings)
                .await
                .context("connecting to the cluster moved from (--from-nats)")?;
            Store::open_to_move_from(source_view.path(), config.store_cache_bytes, client)
                .await
                .context(
                    "reading the cluster moved from (--from-nats; its nodes must be stopped)",
                )?
        }
    };
    let settings = cluster.settings();
    let client = crate::cluster::connect(&settings).await?;
    let replicas = crate::cluster::replicas(&settings, &client);
    // The move's own view of the log: a scratch directory, gone after.
    let view = tempfile::tempdir().context("a scratch directory for the move's view")?;
    let to = Store::open_cluster(
        view.path(),
        config.store_cache_bytes,
        client,
        replicas,
        &format!("migrate-{}", ulid::Ulid::new()),
        cluster.partitioned.then_some(cluster.leases.partitions),
    )
    .await
    .context("joining the cluster's log")?;
    // A partitioned cluster: the move writes every partition's log (no
    // node holds them yet; each reads its own when it starts).
    if let Some(count) = to.data_partitions() {
        for p in 0..count {
            to.open_partition(p)
                .await
                .with_context(|| format!("opening partition {p}'s log"))?;
        }
    }
    let mut moved = to.import_from(&from).await?;
    let keys = crate::secrets::keys().expect("installed above");
    let resealed = to
        .reseal_secrets(keys)
        .await
        .context("sealing the moved secrets with the cluster's server.secrets_key")?;
    from.flush()?;
    // Sealed on the way already; anything left (none expected) now.
    moved.resealed += resealed.records;
    Ok(Report { moved })
}

/// The cluster's key as the current one; the embedded store's own keys
/// (its configured previous ones, and the key generated into its data
/// directory) to open what it sealed.
fn keys(config: &Config) -> anyhow::Result<Keys> {
    let current = config
        .secrets_key
        .as_deref()
        .context("server.secrets_key: the cluster's key is needed")?;
    let current = Key::parse(current).context("server.secrets_key")?;
    let mut previous = config
        .previous_secrets_keys
        .iter()
        .map(|k| Key::parse(k).context("server.previous_secrets_keys"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(generated) = generated_key(&config.data_dir)? {
        previous.push(generated);
    }
    Ok(Keys { current, previous })
}

/// The key an embedded server generated into its data directory, if any.
fn generated_key(data_dir: &Path) -> anyhow::Result<Option<Key>> {
    let path = data_dir.join("secrets-key");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(Some(
            Key::parse(&text).with_context(|| path.display().to_string())?,
        )),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
