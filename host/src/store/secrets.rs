//! Re-sealing stored secrets after the secrets key changed (see
//! `crate::secrets`).

use serde_json::Value;

use super::*;
use crate::secrets::Keys;

/// What a pass over the stored secrets found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resealed {
    /// Records whose secrets were sealed again with the current key.
    pub records: usize,
}

impl Store {
    /// Seals again, with the current key, every stored secret that is not
    /// sealed with it (sealed with a previous key, or written before
    /// secrets were sealed). A secret sealed with a key that is neither
    /// current nor previous is an error naming it: the server must not
    /// start and answer without the secrets it signs with.
    ///
    /// Embedded, at start (nothing else writes yet): plain writes, one
    /// pass. Cluster mode, at each node's start while other nodes serve:
    /// each stale record re-sealed in its own guarded change, so a record
    /// another node changes meanwhile is read again rather than overwritten
    /// with what this node read; a record another node re-sealed first is
    /// left alone.
    pub async fn reseal_secrets(&self, keys: &Keys) -> Result<Resealed, StoreError> {
        let mut records = 0;
        for tree in [&self.subscriptions, &self.ops_endpoints] {
            records += self.reseal_tree::<Subscription>(tree, keys).await?;
        }
        records += self.reseal_tree::<Source>(&self.sources, keys).await?;
        Ok(Resealed { records })
    }

    /// Re-seals the records of `tree` (each a `T` with `secrets`, or a
    /// `nats` feed) that hold a secret not sealed with the current key;
    /// returns how many.
    async fn reseal_tree<T: Serialize + DeserializeOwned>(
        &self,
        tree: &Tree,
        keys: &Keys,
    ) -> Result<usize, StoreError> {
        let mut stale_keys = Vec::new();
        for kv in tree.iter() {
            let (key, bytes) = kv?;
            if is_stale(&key, &bytes, keys)? {
                stale_keys.push(key);
            }
        }
        if self.log().is_none() {
            let mut w = self.plain().await;
            for key in &stale_keys {
                if let Some(bytes) = tree.get(key)? {
                    // Decoding opens each secret (or names the unknown
                    // key); encoding seals it with the current key.
                    w.insert(tree, key, encode(&decode::<T>(key, &bytes)?))?;
                }
            }
            w.commit().await?;
            return Ok(stale_keys.len());
        }
        let mut records = 0;
        for key in &stale_keys {
            let resealed = self
                .change([tree], |[t]| {
                    let Some(bytes) = t.get(key)? else {
                        return Ok(false); // deleted meanwhile
                    };
                    if !is_stale(key, &bytes, keys).map_err(ConflictableTransactionError::Abort)? {
                        return Ok(false); // re-sealed by another node
                    }
                    let record: T =
                        decode(key, &bytes).map_err(ConflictableTransactionError::Abort)?;
                    t.insert(key, &encode(&record))?;
                    Ok(true)
                })
                .await?;
            records += usize::from(resealed);
        }
        Ok(records)
    }
}

/// Whether a stored record holds a secret not sealed with the current key:
/// a signing secret, a `nats` source's broker URL, an endpoint's TLS
/// client key, or a broker destination's password.
pub(super) fn is_stale(key: &[u8], bytes: &[u8], keys: &Keys) -> Result<bool, StoreError> {
    let raw: Value = decode(key, bytes)?;
    let secrets = raw["secrets"].as_array().is_some_and(|secrets| {
        secrets
            .iter()
            .filter_map(|s| s["secret"].as_str())
            .any(|s| !keys.is_current(s))
    });
    let broker = raw["nats"]["url"]
        .as_str()
        .is_some_and(|u| !keys.is_current(u));
    let client_key = raw["tls"]["client_key"]
        .as_str()
        .is_some_and(|k| !keys.is_current(k));
    let destination = raw["destination"]["credentials"]["password"]
        .as_str()
        .is_some_and(|p| !keys.is_current(p));
    Ok(secrets || broker || client_key || destination)
}
