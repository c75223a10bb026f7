//! Re-sealing stored secrets after the secrets key changed (see
//! `crate::secrets`).

use serde_json::Value;

use super::*;
use crate::secrets::Keys;
use crate::source::Source;

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
    pub async fn reseal_secrets(&self, keys: &Keys) -> Result<Resealed, StoreError> {
        let mut w = self.plain();
        let mut records = 0;
        for tree in [&self.subscriptions, &self.ops_endpoints] {
            records += self.reseal_tree::<Subscription>(&mut w, tree, keys)?;
        }
        records += self.reseal_tree::<Source>(&mut w, &self.sources, keys)?;
        w.commit().await?;
        Ok(Resealed { records })
    }

    /// Queues in `w` the records of `tree` (each a `T` with `secrets`) that
    /// hold a secret not sealed with the current key; returns how many.
    fn reseal_tree<T: Serialize + DeserializeOwned>(
        &self,
        w: &mut change::Plain<'_>,
        tree: &Tree,
        keys: &Keys,
    ) -> Result<usize, StoreError> {
        let mut records = 0;
        for kv in tree.iter() {
            let (key, bytes) = kv?;
            let raw: Value = decode(&key, &bytes)?;
            let stale = raw["secrets"].as_array().is_some_and(|secrets| {
                secrets
                    .iter()
                    .filter_map(|s| s["secret"].as_str())
                    .any(|s| !keys.is_current(s))
            }) || raw["nats"]["url"] // a `nats` source's broker URL
                .as_str()
                .is_some_and(|u| !keys.is_current(u));
            if stale {
                // Decoding opens each secret (or names the unknown key);
                // encoding seals it with the current key.
                w.insert(tree, key.clone(), encode(&decode::<T>(&key, &bytes)?))?;
                records += 1;
            }
        }
        Ok(records)
    }
}
