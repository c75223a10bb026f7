//! Moving an embedded store into a cluster (`wasmhook migrate`): every
//! record the cluster replicates, copied as stored — ids, delivery ids,
//! due times, held items and all — through the cluster's log, and the
//! plugin bytes into its object store.

use std::collections::BTreeMap;

use super::*;

/// The trees a move carries: all the records the cluster replicates, that
/// is every tree but the node-local ones ([`super::NODE_LOCAL_TREES`]; the
/// move puts the plugin bytes into the object store instead).
/// `tenants` goes last: a move that failed part-way leaves no tenant, so
/// the cluster still counts as empty and the move can run again (every
/// record is copied as it is, so copying it twice is harmless).
pub const CARRIED: &[&str] = &[
    "api_keys",
    "subscriptions",
    "ops_endpoints",
    "plugins",
    "sources",
    "source_index",
    "apps",
    "app_uids",
    "event_types",
    "portal_links",
    "portal_tokens",
    "dead_letters",
    "poll_states",
    "events",
    "events_by_time",
    "deliveries",
    "tenant_deliveries",
    "outbox",
    // Windows before their held items: a partitioned cluster tells a held
    // item's tenant by its window.
    "windows",
    "held",
    "lanes",
    "lane_items",
    "tenants",
];

/// The bytes of writes sent to the log in one batch: big enough that a
/// large store moves in few batches, small enough to hold in memory.
const BATCH_BYTES: usize = 4 << 20;

/// What a move carried.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Moved {
    /// Records per tree.
    pub records: BTreeMap<&'static str, usize>,
    /// Plugin components put into the object store.
    pub plugin_components: usize,
    /// Records whose secrets were sealed again with the cluster's key on
    /// the way (sealed with another key, or not at all).
    pub resealed: usize,
}

/// Why a move did not start.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("the target is not a cluster store")]
    NotACluster,
    #[error(
        "the cluster already holds wasmhook data ({tenants} tenant(s)); a move goes into an empty cluster"
    )]
    NotEmpty { tenants: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// A cluster to move from (`wasmhook migrate --from-nats`), its nodes
    /// stopped: its whole state read into a scratch view in `dir` (the
    /// control log and, if it is partitioned, every partition's log, as
    /// the cluster itself records its layout), and its plugins' bytes
    /// fetched from its object store, so that [`Store::import_from`] reads
    /// it as it reads an embedded store. Nothing is written to it.
    pub async fn open_to_move_from(
        dir: &std::path::Path,
        cache_bytes: u64,
        client: async_nats::Client,
    ) -> Result<Store, StoreError> {
        let (replicas, partitions) = crate::store::cluster::log::layout(&client).await?;
        let node = format!("migrate-from-{}", ulid::Ulid::new());
        let store =
            Store::open_cluster(dir, cache_bytes, client, replicas, &node, partitions).await?;
        for p in 0..partitions.unwrap_or(0) {
            store.open_partition(p).await?;
        }
        for kv in store.plugins.iter() {
            let (key, value) = kv?;
            let record: PluginRecord = decode(&key, &value)?;
            store.fetch_plugin(&record.sha256).await?;
        }
        Ok(store)
    }

    /// Copies every carried record of `from` (an embedded store, or a
    /// cluster read by [`Store::open_to_move_from`]) into this
    /// cluster store, which must hold no tenant yet. The plugin bytes go
    /// first, so no record names a component the nodes cannot fetch.
    /// Nothing else may write the cluster meanwhile (start its nodes after).
    pub async fn import_from(&self, from: &Store) -> Result<Moved, MoveError> {
        let Some(blobs) = self.blobs() else {
            return Err(MoveError::NotACluster);
        };
        if !self.tenants.is_empty() {
            return Err(MoveError::NotEmpty {
                tenants: self.tenants.len(),
            });
        }
        Ok(self.copy_from(from, blobs).await?)
    }

    async fn copy_from(
        &self,
        from: &Store,
        blobs: &crate::store::cluster::blobs::Blobs,
    ) -> Result<Moved, StoreError> {
        let mut moved = Moved::default();
        for kv in from.plugin_blobs.iter() {
            let (sha256, bytes) = kv?;
            blobs.put(&String::from_utf8_lossy(&sha256), &bytes).await?;
            moved.plugin_components += 1;
        }
        for &name in CARRIED {
            let source = from.db.open_tree(name)?;
            let target = self.db.open_tree(name)?;
            let mut w = self.plain().await;
            let (mut pending, mut records) = (0, 0);
            for kv in source.iter() {
                let (key, value) = kv?;
                // Records with secrets are opened and sealed again with the
                // cluster's key as they go: a secret no configured key opens
                // stops the move before its tenant is written.
                if matches!(name, "subscriptions" | "ops_endpoints" | "sources")
                    && let Some(keys) = crate::secrets::keys()
                    && super::secrets::is_stale(&key, &value, keys)?
                {
                    moved.resealed += 1;
                }
                let value = match name {
                    "subscriptions" | "ops_endpoints" => {
                        encode(&decode::<Subscription>(&key, &value)?)
                    }
                    "sources" => encode(&decode::<Source>(&key, &value)?),
                    _ => value.to_vec(),
                };
                pending += key.len() + value.len();
                w.insert(&target, &key, &value)?;
                records += 1;
                if pending >= BATCH_BYTES {
                    w.commit().await?;
                    w = self.plain().await;
                    pending = 0;
                }
            }
            w.commit().await?;
            moved.records.insert(name, records);
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    /// A move cut short leaves no tenant: the cluster still counts as empty
    /// and the move can run again.
    #[test]
    fn tenants_are_moved_last() {
        assert_eq!(super::CARRIED.last(), Some(&"tenants"));
    }

    /// Every tree the store opens is either carried or named here as this
    /// machine's: a new tree must be placed on one side.
    #[test]
    fn every_tree_is_carried_or_local() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::Store::open(dir.path()).unwrap();
        let local = [
            "meta",
            "plugin_blobs",
            super::embedded::intent::INTENTS_TREE,
            "__sled__default",
        ];
        for name in store.db.tree_names() {
            let name = String::from_utf8_lossy(&name).into_owned();
            assert!(
                super::CARRIED.contains(&name.as_str()) || local.contains(&name.as_str()),
                "tree {name} is neither carried by a move nor local"
            );
        }
    }
}
