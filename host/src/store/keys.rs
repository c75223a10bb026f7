//! The store's key layouts: tenant-scoped keys, outbox and window keys,
//! API key ids, and the outbox entry read from its key and value.

use jiff::Timestamp;
use sha2::{Digest, Sha256};
use sled::Tree;

use super::StoreError;
use crate::clock::millis;

/// `tenant \0 id`: tenant-scoped keys, so a prefix scan lists one tenant's.
pub fn scoped(tenant_id: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(tenant_id.len() + 1 + id.len());
    key.extend_from_slice(tenant_id.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

pub(super) fn tenant_prefix(tenant_id: &str) -> Vec<u8> {
    scoped(tenant_id, "")
}

/// How many keys of `tree` start with `prefix` (keys only, values unread).
pub(super) fn count_prefix(tree: &Tree, prefix: &[u8]) -> Result<usize, StoreError> {
    let mut n = 0;
    for kv in tree.scan_prefix(prefix).keys() {
        kv?;
        n += 1;
    }
    Ok(n)
}

/// `due ms (BE) ++ delivery id`: the outbox scans in due order.
pub fn outbox_key(due: Timestamp, delivery_id: &str) -> Vec<u8> {
    let mut key = millis(due).to_be_bytes().to_vec();
    key.extend_from_slice(delivery_id.as_bytes());
    key
}

/// The public id of an API key: derived from its stored hash, so it needs
/// no index and names the key without revealing it.
pub fn api_key_id(hash: &[u8]) -> String {
    format!("key_{}", hex::encode(&hash[..hash.len().min(10)]))
}

/// SHA-256 of a secret token, as stored.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// One due outbox entry; borrowed views, no allocation per entry scanned.
#[derive(Debug, Clone)]
pub struct DueEntry {
    pub(super) key: sled::IVec,
    pub(super) value: sled::IVec,
}

impl DueEntry {
    /// An outbox entry from its key and value as written (in cluster mode,
    /// read from another node's batch); None if the key is too short to be
    /// one.
    pub fn from_parts(key: &[u8], value: &[u8]) -> Option<Self> {
        (key.len() >= 8).then(|| DueEntry {
            key: key.into(),
            value: value.into(),
        })
    }

    pub fn delivery_id(&self) -> &str {
        std::str::from_utf8(&self.key[8..]).unwrap_or_default()
    }

    /// When it is due (ms since the epoch).
    pub fn due_ms(&self) -> u64 {
        let mut ms = [0u8; 8];
        ms.copy_from_slice(&self.key[..8]);
        u64::from_be_bytes(ms)
    }

    fn value_part(&self, first: bool) -> &str {
        let v = &self.value[..];
        let (tenant, sub) = match v.iter().position(|b| *b == 0) {
            Some(i) => (&v[..i], &v[i + 1..]),
            None => (&v[..0], &v[..0]),
        };
        std::str::from_utf8(if first { tenant } else { sub }).unwrap_or_default()
    }

    pub fn tenant_id(&self) -> &str {
        self.value_part(true)
    }

    pub fn subscription_id(&self) -> &str {
        self.value_part(false)
    }
}

/// `subscription \0 start ms (BE)`: one window of one subscription.
pub fn window_key(subscription_id: &str, start: Timestamp) -> Vec<u8> {
    let mut key = scoped(subscription_id, "");
    key.extend_from_slice(&millis(start).to_be_bytes());
    key
}
