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
        for tree in [&self.subscriptions, &self.ops_endpoints, &self.sources] {
            for kv in tree.iter() {
                let (key, bytes) = kv?;
                let raw: Value = decode(&key, &bytes)?;
                let stale = raw["secrets"].as_array().is_some_and(|secrets| {
                    secrets
                        .iter()
                        .filter_map(|s| s["secret"].as_str())
                        .any(|s| !keys.is_current(s))
                });
                if !stale {
                    continue;
                }
                // Decoding opens each secret (or names the unknown key);
                // encoding seals it with the current key.
                let again = if std::ptr::eq(tree, &self.sources) {
                    encode(&decode::<Source>(&key, &bytes)?)
                } else {
                    encode(&decode::<Subscription>(&key, &bytes)?)
                };
                w.insert(tree, key, again)?;
                records += 1;
            }
        }
        w.commit().await?;
        Ok(Resealed { records })
    }
}
