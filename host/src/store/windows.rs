//! Windows and their held items; a flush removes the items and adds its deliveries in one transaction.

use super::deliveries::put_delivery_tx;
use super::*;

impl Store {
    /// A fresh number for ordering held items (monotonic across restarts).
    pub fn next_seq(&self) -> Result<u64, StoreError> {
        let local = self.db.generate_id()?;
        if self.log().is_none() {
            return Ok(local);
        }
        // Cluster mode: the arrival millisecond, then this node's counter,
        // so items held through different nodes sort by time. Two nodes
        // may still pick one number: `hold_tx` takes the next free one.
        let ms = jiff::Timestamp::now().as_millisecond().max(0) as u64;
        Ok((ms << 22) | (local & 0x3f_ffff))
    }

    /// Every window with held items, earliest close first.
    pub fn windows(&self) -> Result<Vec<WindowState>, StoreError> {
        let mut all: Vec<WindowState> = self
            .windows
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect::<Result<_, _>>()?;
        all.sort_by_key(|w| w.close_at);
        Ok(all)
    }

    /// One subscription's windows with held items, oldest first.
    pub fn windows_of(&self, subscription_id: &str) -> Result<Vec<WindowState>, StoreError> {
        self.windows
            .scan_prefix(scoped(subscription_id, ""))
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// The items held in one window, in arrival order, with their keys.
    pub fn held_items(
        &self,
        subscription_id: &str,
        start: Timestamp,
    ) -> Result<Vec<(Vec<u8>, HeldRecord)>, StoreError> {
        self.held
            .scan_prefix(window_key(subscription_id, start))
            .map(|kv| {
                let (k, v) = kv?;
                Ok((k.to_vec(), decode(&k, &v)?))
            })
            .collect()
    }

    /// Records a failed flush on the window (its items stay).
    pub async fn window_failed(
        &self,
        tenant_id: &str,
        subscription_id: &str,
        start: Timestamp,
        error: &str,
        retry_at: Timestamp,
    ) -> Result<(), StoreError> {
        let key = window_key(subscription_id, start);
        self.change_of(Some(tenant_id), [&self.windows], |[windows]| {
            if let Some(bytes) = windows.get(&key)? {
                let mut state: WindowState =
                    decode(&key, &bytes).map_err(ConflictableTransactionError::Abort)?;
                state.last_error = Some(error.to_string());
                state.retry_at = Some(retry_at);
                windows.insert(&key, &encode(&state))?;
            }
            Ok(())
        })
        .await
    }

    /// The flush of one window, atomically: the items that were flushed are
    /// removed and the deliveries made of them are added, or nothing changes.
    /// Returns false (and changes nothing) when some of the items are gone
    /// already: another flush took them.
    pub async fn commit_flush(
        &self,
        tenant_id: &str,
        subscription_id: &str,
        start: Timestamp,
        flushed: &[(Vec<u8>, u64)],
        new: &[Delivery],
    ) -> Result<bool, StoreError> {
        let key = window_key(subscription_id, start);
        self.change_of(
            Some(tenant_id),
            [
                &self.held,
                &self.windows,
                &self.deliveries,
                &self.tenant_deliveries,
                &self.outbox,
            ],
            |[held, windows, deliveries, tenant_deliveries, outbox]| {
                for (item_key, _) in flushed {
                    if held.get(item_key)?.is_none() {
                        return Ok(false);
                    }
                }
                for (item_key, _) in flushed {
                    held.remove(item_key)?;
                }
                if flushed.is_empty() {
                    windows.remove(&key)?;
                } else if let Some(bytes) = windows.get(&key)? {
                    let mut state: WindowState =
                        decode(&key, &bytes).map_err(ConflictableTransactionError::Abort)?;
                    state.items = state.items.saturating_sub(flushed.len() as u64);
                    state.bytes = state
                        .bytes
                        .saturating_sub(flushed.iter().map(|(_, b)| b).sum());
                    state.last_error = None;
                    state.retry_at = None;
                    if state.items == 0 {
                        windows.remove(&key)?;
                    } else {
                        windows.insert(&key, &encode(&state))?;
                    }
                }
                for d in new {
                    put_delivery_tx(deliveries, outbox, d, None)?;
                    super::deliveries::index_tx(tenant_deliveries, d)?;
                }
                Ok(true)
            },
        )
        .await
    }

    /// Drops every held item of a deleted subscription.
    pub async fn drop_windows(
        &self,
        tenant_id: &str,
        subscription_id: &str,
    ) -> Result<(), StoreError> {
        let prefix = scoped(subscription_id, "");
        let mut w = self.plain_of(Some(tenant_id)).await;
        for tree in [&self.held, &self.windows] {
            for kv in tree.scan_prefix(&prefix) {
                w.remove(tree, kv?.0)?;
            }
        }
        w.commit().await
    }
}

/// Stores one held item and counts it in its window's state.
/// Removes an item a plugin took (`host.take-held`) from its window. One
/// already gone (flushed, or taken by a concurrent event) is skipped.
pub(super) fn release_tx(
    held: &dyn TxTree,
    windows: &dyn TxTree,
    taken: &crate::runtime::TakenItem,
) -> TxResult<()> {
    if !held.remove(&taken.key)? || taken.key.len() < 8 {
        return Ok(());
    }
    let wkey = &taken.key[..taken.key.len() - 8];
    if let Some(bytes) = windows.get(wkey)? {
        let mut state: WindowState =
            decode(wkey, &bytes).map_err(ConflictableTransactionError::Abort)?;
        state.items = state.items.saturating_sub(1);
        state.bytes = state.bytes.saturating_sub(taken.bytes);
        if state.items == 0 {
            windows.remove(wkey)?;
        } else {
            windows.insert(wkey, &encode(&state))?;
        }
    }
    Ok(())
}

/// The store as `host.take-held` sees one subscription's held items.
pub struct SubscriptionHeld {
    pub store: Store,
    pub subscription_id: String,
}

impl crate::runtime::HeldSource for SubscriptionHeld {
    fn held_in_group(&self, group: &str) -> Vec<crate::runtime::TakenItem> {
        let mut items = Vec::new();
        for kv in self
            .store
            .held
            .scan_prefix(scoped(&self.subscription_id, ""))
        {
            let Ok((key, value)) = kv else { break };
            let Ok(record) = decode::<HeldRecord>(&key, &value) else {
                continue;
            };
            if record.group == group {
                items.push(crate::runtime::TakenItem {
                    key: key.to_vec(),
                    bytes: (record.group.len() + record.item.len()) as u64,
                    item: record.item,
                });
            }
        }
        // Keys sort by window, then arrival: put them in arrival order.
        items.sort_by_key(|t| t.key[t.key.len().saturating_sub(8)..].to_vec());
        items
    }
}

pub(super) fn hold_tx(
    held: &dyn TxTree,
    windows: &dyn TxTree,
    h: &HeldWrite,
    event_id: &str,
) -> TxResult<()> {
    let wkey = window_key(&h.subscription_id, h.start);
    let mut state: WindowState = match windows.get(&wkey)? {
        Some(bytes) => decode(&wkey, &bytes).map_err(ConflictableTransactionError::Abort)?,
        None => WindowState {
            tenant_id: h.tenant_id.clone(),
            subscription_id: h.subscription_id.clone(),
            start: h.start,
            end: h.end,
            close_at: h.close_at,
            items: 0,
            bytes: 0,
            last_error: None,
            retry_at: None,
        },
    };
    state.items += 1;
    state.bytes += (h.group.len() + h.item.len()) as u64;
    windows.insert(&wkey, &encode(&state))?;
    // The item's own key; should another item hold it already (cluster
    // mode: two nodes picked one sequence), the next free one.
    let mut seq = h.seq;
    let mut key = wkey.clone();
    key.extend_from_slice(&seq.to_be_bytes());
    while held.get(&key)?.is_some() {
        seq = seq.wrapping_add(1);
        key.truncate(wkey.len());
        key.extend_from_slice(&seq.to_be_bytes());
    }
    let record = HeldRecord {
        group: h.group.clone(),
        item: h.item.clone(),
        event_id: event_id.to_string(),
    };
    held.insert(&key, &encode(&record))
}
