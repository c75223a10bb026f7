//! Events: accepted with their deliveries and held items in one transaction, deduplicated per tenant, pruned by age.

use super::deliveries::put_delivery_tx;
use super::windows::hold_tx;
use super::*;

impl Store {
    pub fn get_event(&self, tenant_id: &str, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        let key = scoped(tenant_id, id);
        self.events.get(&key)?.map(|v| decode(&key, &v)).transpose()
    }

    /// Removes events received before `cutoff` and finished deliveries
    /// created before it. Returns (events, deliveries) removed.
    pub async fn prune(&self, cutoff: Timestamp) -> Result<(usize, usize), StoreError> {
        let end = millis(cutoff).to_be_bytes();
        let mut w = self.plain();
        let mut events = 0;
        for kv in self.events_by_time.range(..end.as_slice()) {
            let (k, _) = kv?;
            w.remove(&self.events, &k[8..])?;
            w.remove(&self.events_by_time, &k)?;
            events += 1;
        }
        let boundary = format!(
            "dlv_{}",
            ulid::Ulid::from_parts(millis(cutoff), 0)
                .to_string()
                .to_ascii_lowercase()
        );
        let mut deliveries = 0;
        for kv in self.deliveries.range(..boundary.as_bytes()) {
            let (k, v) = kv?;
            let d: Delivery = decode(&k, &v)?;
            if d.status.is_final() {
                w.remove(&self.deliveries, &k)?;
                w.remove(&self.tenant_deliveries, super::deliveries::index_key(&d))?;
                deliveries += 1;
            }
        }
        w.commit().await?;
        Ok((events, deliveries))
    }

    /// Stored events of a tenant received at or after `since` that `wanted`
    /// keeps, oldest first, at most `limit` of them.
    pub fn events_since(
        &self,
        tenant_id: &str,
        since: Timestamp,
        wanted: impl Fn(&StoredEvent) -> bool,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let start = millis(since).to_be_bytes();
        let prefix = tenant_prefix(tenant_id);
        let mut out = Vec::new();
        for kv in self.events_by_time.range(start.as_slice()..) {
            let (k, _) = kv?;
            if k[8..].starts_with(&prefix)
                && let Some(v) = self.events.get(&k[8..])?
            {
                let event: StoredEvent = decode(&k[8..], &v)?;
                if wanted(&event) {
                    out.push(event);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The outcomes of a group's events (in their order) split back into each
/// batch's share, for the batches whose events were accepted together.
pub(super) fn split_by_batch<B>(accepted: Vec<Accepted>, batches: &[B]) -> Vec<Vec<Accepted>>
where
    B: AsRef<[NewEvent]>,
{
    let mut rest = accepted.into_iter();
    batches
        .iter()
        .map(|b| rest.by_ref().take(b.as_ref().len()).collect())
        .collect()
}

/// The acceptance in a committer's transaction: each event only if its id is new, with
/// its deliveries, outbox entries, indexes and held items.
pub(super) fn accept_tx(
    batch: &[&NewEvent],
    [events, by_time, deliveries, tenant_deliveries, outbox]: [&dyn TxTree; 5],
    windows: Option<(&dyn TxTree, &dyn TxTree)>,
) -> TxResult<Vec<Accepted>> {
    let mut results = Vec::with_capacity(batch.len());
    let mut seen = std::collections::HashSet::new();
    for &new in batch {
        let e = &new.event;
        let key = scoped(&e.tenant_id, &e.event.id);
        if new.replay {
            if let Some(bytes) = events.get(&key)? {
                let mut stored: StoredEvent =
                    decode(&key, &bytes).map_err(ConflictableTransactionError::Abort)?;
                stored
                    .deliveries
                    .extend(new.deliveries.iter().map(|d| d.id.clone()));
                events.insert(&key, &encode(&stored))?;
            }
        } else if let Some(existing) = events.get(&key)? {
            let existing = decode(&key, &existing).map_err(ConflictableTransactionError::Abort)?;
            results.push(Accepted::Duplicate(Box::new(existing)));
            continue;
        }
        if !new.replay && !seen.insert(key.clone()) {
            // The same id twice in one batch: the first one counts.
            results.push(Accepted::Duplicate(Box::new(e.clone())));
            continue;
        }
        if !new.replay {
            events.insert(&key, &encode(e))?;
            let mut time_key = millis(e.received_at).to_be_bytes().to_vec();
            time_key.extend_from_slice(&key);
            by_time.insert(&time_key, &[])?;
        }
        for d in &new.deliveries {
            put_delivery_tx(deliveries, outbox, d, None)?;
            super::deliveries::index_tx(tenant_deliveries, d)?;
        }
        if let Some((held, windows)) = windows {
            for h in &new.held {
                hold_tx(held, windows, h, &e.event.id)?;
            }
            for taken in &new.released {
                super::windows::release_tx(held, windows, taken)?;
            }
        }
        results.push(Accepted::New);
    }
    Ok(results)
}
