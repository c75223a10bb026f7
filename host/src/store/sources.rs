//! Sources (a tenant's inbound endpoints) and their dead letters.

use super::*;
use super::{DeadLetter, PollState, Source};

impl Store {
    /// Creates or replaces a source (and its id → tenant index).
    pub async fn put_source(&self, source: &Source) -> Result<(), StoreError> {
        self.change([&self.sources, &self.source_index], |[sources, index]| {
            sources.insert(&scoped(&source.tenant_id, &source.id), &encode(source))?;
            index.insert(source.id.as_bytes(), source.tenant_id.as_bytes())
        })
        .await
    }

    pub fn get_source(&self, tenant_id: &str, id: &str) -> Result<Option<Source>, StoreError> {
        let key = scoped(tenant_id, id);
        self.sources
            .get(&key)?
            .map(|v| decode(&key, &v))
            .transpose()
    }

    /// The source an inbound request names, whatever its tenant.
    pub fn find_source(&self, id: &str) -> Result<Option<Source>, StoreError> {
        match self.source_index.get(id.as_bytes())? {
            Some(tenant) => self.get_source(&String::from_utf8_lossy(&tenant), id),
            None => Ok(None),
        }
    }

    pub fn list_sources(&self, tenant_id: &str) -> Result<Vec<Source>, StoreError> {
        self.sources
            .scan_prefix(tenant_prefix(tenant_id))
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Every tenant's sources (starting the NATS feeds).
    pub fn all_sources(&self) -> Result<Vec<Source>, StoreError> {
        self.sources
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn count_sources(&self, tenant_id: &str) -> Result<usize, StoreError> {
        count_prefix(&self.sources, &tenant_prefix(tenant_id))
    }

    /// Removes a source and its dead letters; whether it existed.
    pub async fn delete_source(&self, tenant_id: &str, id: &str) -> Result<bool, StoreError> {
        let existed = self
            .change([&self.sources, &self.source_index], |[sources, index]| {
                let existed = sources.remove(&scoped(tenant_id, id))?;
                if existed {
                    index.remove(id.as_bytes())?;
                }
                Ok(existed)
            })
            .await?;
        // Dead letters are keyed by the source id alone: only the owner's
        // delete may touch them (another tenant's id is a 404, nothing more).
        if existed {
            let mut w = self.plain().await;
            w.remove(&self.poll_states, id)?;
            for key in self.dead_letters.scan_prefix(scoped(id, "")).keys() {
                w.remove(&self.dead_letters, key?)?;
            }
            w.commit().await?;
        }
        Ok(existed)
    }

    /// A `poll` source's cursor and last run (default: never polled).
    pub fn poll_state(&self, source_id: &str) -> Result<PollState, StoreError> {
        self.poll_states
            .get(source_id)?
            .map(|v| decode(source_id.as_bytes(), &v))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Records where a poll stands; durable when this returns (the cursor
    /// moves only past events already accepted).
    pub async fn put_poll_state(
        &self,
        source_id: &str,
        state: &PollState,
    ) -> Result<(), StoreError> {
        let mut w = self.plain().await;
        w.insert(&self.poll_states, source_id, encode(state))?;
        w.commit().await?;
        self.durable().await
    }

    /// Stores (or updates) a dead letter, dropping the source's oldest
    /// beyond `keep` letters or `max_bytes` bytes (stored size). The new
    /// letter itself is always kept.
    pub async fn put_dead_letter(
        &self,
        letter: &DeadLetter,
        keep: usize,
        max_bytes: u64,
    ) -> Result<(), StoreError> {
        let mut w = self.plain().await;
        let prefix = scoped(&letter.source_id, "");
        let key = scoped(&letter.source_id, &letter.id);
        let value = encode(letter);
        // The others, oldest first, with their sizes (the scan cannot see a
        // write that is only recorded yet, in cluster mode).
        let mut others = Vec::new();
        for kv in self.dead_letters.scan_prefix(&prefix) {
            let (k, v) = kv?;
            if k != key.as_slice() {
                others.push((k, v.len() as u64));
            }
        }
        let mut count = others.len() + 1;
        let mut bytes = others.iter().map(|(_, n)| n).sum::<u64>() + value.len() as u64;
        for (old, size) in others {
            if count <= keep && bytes <= max_bytes {
                break;
            }
            w.remove(&self.dead_letters, old)?;
            count -= 1;
            bytes -= size;
        }
        w.insert(&self.dead_letters, key, value)?;
        w.commit().await
    }

    /// A source's dead letters, oldest first, after `after` (an id).
    pub fn list_dead_letters(
        &self,
        source_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let prefix = scoped(source_id, "");
        let start = match after {
            Some(id) => {
                let mut k = scoped(source_id, id);
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        self.dead_letters
            .range(start..)
            .take_while(|kv| kv.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn get_dead_letter(
        &self,
        source_id: &str,
        id: &str,
    ) -> Result<Option<DeadLetter>, StoreError> {
        let key = scoped(source_id, id);
        self.dead_letters
            .get(&key)?
            .map(|v| decode(&key, &v))
            .transpose()
    }

    pub fn count_dead_letters(&self, source_id: &str) -> Result<usize, StoreError> {
        count_prefix(&self.dead_letters, &scoped(source_id, ""))
    }

    /// Whether it existed.
    pub async fn delete_dead_letter(&self, source_id: &str, id: &str) -> Result<bool, StoreError> {
        let mut w = self.plain().await;
        let existed = w.remove(&self.dead_letters, scoped(source_id, id))?;
        w.commit().await?;
        Ok(existed)
    }
}
