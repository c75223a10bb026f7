//! Deliveries with their attempts, the index by tenant and subscription, and the outbox of pending attempts by due time.

use super::*;

impl Store {
    /// Adds deliveries outside ingest (retry, replay, test): delivery,
    /// outbox entry and index in one transaction.
    pub async fn add_deliveries(&self, new: &[Delivery]) -> Result<(), StoreError> {
        for (tenant, indexes) in self.by_partition(new, |d| &d.tenant_id) {
            self.change_of(
                tenant,
                [&self.deliveries, &self.tenant_deliveries, &self.outbox],
                |[deliveries, tenant_deliveries, outbox]| {
                    for d in indexes.iter().map(|i| &new[*i]) {
                        put_delivery_tx(deliveries, outbox, d, None)?;
                        index_tx(tenant_deliveries, d)?;
                    }
                    Ok(())
                },
            )
            .await?;
        }
        Ok(())
    }

    pub fn get_delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        self.deliveries
            .get(id)?
            .map(|v| decode_delivery(id.as_bytes(), &v))
            .transpose()
    }

    /// A manual retry: the finished delivery `d`, made pending by the
    /// caller, stored again; an ordered one takes its place in its line
    /// (see `lanes.rs`) and may be stored blocked. The delivery as stored;
    /// None when an ordered one was retried by someone else meanwhile.
    pub async fn retry_delivery(&self, d: &Delivery) -> Result<Option<Delivery>, StoreError> {
        if d.order.is_some() {
            return self.retry_ordered(d).await;
        }
        self.update_delivery(d, None).await?;
        Ok(Some(d.clone()))
    }

    /// Replaces a delivery, moving its outbox entry from `previous_due` to
    /// its new `next_attempt_at` in the same transaction.
    pub async fn update_delivery(
        &self,
        delivery: &Delivery,
        previous_due: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        self.change_of(
            Some(&delivery.tenant_id),
            [&self.deliveries, &self.outbox],
            |[deliveries, outbox]| put_delivery_tx(deliveries, outbox, delivery, previous_due),
        )
        .await
    }

    /// Some of a tenant's subscriptions' deliveries, newest first, from
    /// `before` (exclusive): the merge of their indexes (see
    /// [`Store::tenant_delivery_ids`]).
    pub fn subscriptions_delivery_ids(
        &self,
        tenant_id: &str,
        subscriptions: &[String],
        before: Option<&str>,
    ) -> Box<dyn Iterator<Item = Result<String, StoreError>> + '_> {
        let lanes = subscriptions
            .iter()
            .map(|sub| self.subscription_delivery_ids(tenant_id, sub, before))
            .collect();
        Box::new(NewestFirst::new(lanes))
    }

    /// A tenant's deliveries, newest first, from `before` (exclusive): the
    /// newest-first merge of its subscriptions' indexes (delivery ids are
    /// time-ordered, so the merge is by id). Costs one seek per
    /// subscription the tenant has had, then O(1) per id.
    pub fn tenant_delivery_ids(
        &self,
        tenant_id: &str,
        before: Option<&str>,
    ) -> Box<dyn Iterator<Item = Result<String, StoreError>> + '_> {
        let subscriptions = match self.indexed_subscriptions(tenant_id) {
            Ok(subs) => subs,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let lanes = subscriptions
            .iter()
            .map(|sub| self.subscription_delivery_ids(tenant_id, sub, before))
            .collect();
        Box::new(NewestFirst::new(lanes))
    }

    /// One subscription's deliveries, newest first, from `before`
    /// (exclusive): a range of the index, so a page costs the same whatever
    /// the rest of the tenant's history holds.
    pub fn subscription_delivery_ids(
        &self,
        tenant_id: &str,
        subscription_id: &str,
        before: Option<&str>,
    ) -> impl Iterator<Item = Result<String, StoreError>> + 'static {
        let prefix = scoped(tenant_id, &format!("{subscription_id}\0"));
        let end = match before {
            Some(id) => [prefix.as_slice(), id.as_bytes()].concat(),
            None => [prefix.as_slice(), &[0xff]].concat(),
        };
        let skip = prefix.len();
        self.tenant_deliveries
            .range(prefix..end)
            .rev()
            .map(move |kv| {
                let (k, _) = kv?;
                Ok(String::from_utf8_lossy(&k[skip..]).into_owned())
            })
    }

    /// The subscriptions (deleted ones too) that have deliveries in the
    /// tenant's index: a skip scan, one seek per subscription.
    fn indexed_subscriptions(&self, tenant_id: &str) -> Result<Vec<String>, StoreError> {
        let prefix = tenant_prefix(tenant_id);
        let mut from = prefix.clone();
        let mut subs = Vec::new();
        while let Some(kv) = self.tenant_deliveries.range(from.as_slice()..).next() {
            let (key, _) = kv?;
            let Some(rest) = key.strip_prefix(prefix.as_slice()) else {
                break;
            };
            let Some(end) = rest.iter().position(|b| *b == 0) else {
                return Err(StoreError::Corrupt {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    message: "a delivery index key without its subscription".into(),
                });
            };
            let sub = &rest[..end];
            subs.push(String::from_utf8_lossy(sub).into_owned());
            // Past every `sub \0 …` key: `sub \x01` sorts right after them.
            from = [prefix.as_slice(), sub, &[1]].concat();
        }
        Ok(subs)
    }

    /// Every outbox entry (the queue loads them at start).
    pub fn outbox_entries(&self) -> impl Iterator<Item = Result<DueEntry, StoreError>> + '_ {
        self.outbox.iter().map(|kv| {
            let (key, value) = kv?;
            Ok(DueEntry { key, value })
        })
    }
}

/// The delivery index key: `tenant \0 subscription \0 delivery`. One
/// key per delivery serves both views: a subscription's deliveries are a
/// range, the tenant's a merge of its subscriptions' ranges.
pub(super) fn index_key(d: &Delivery) -> Vec<u8> {
    [
        d.tenant_id.as_bytes(),
        &[0],
        d.subscription_id.as_bytes(),
        &[0],
        d.id.as_bytes(),
    ]
    .concat()
}

/// Adds a new delivery to the delivery index.
pub(super) fn index_tx(index: &dyn TxTree, d: &Delivery) -> TxResult<()> {
    index.insert(&index_key(d), &[])
}

/// Merges newest-first id streams into one newest-first stream.
struct NewestFirst<I> {
    lanes: Vec<I>,
    heads: std::collections::BinaryHeap<(String, usize)>,
    failed: Option<StoreError>,
}

impl<I: Iterator<Item = Result<String, StoreError>>> NewestFirst<I> {
    fn new(lanes: Vec<I>) -> Self {
        let mut merge = NewestFirst {
            lanes,
            heads: Default::default(),
            failed: None,
        };
        for lane in 0..merge.lanes.len() {
            merge.advance(lane);
        }
        merge
    }

    fn advance(&mut self, lane: usize) {
        match self.lanes[lane].next() {
            Some(Ok(id)) => self.heads.push((id, lane)),
            Some(Err(e)) => self.failed = Some(e),
            None => {}
        }
    }
}

impl<I: Iterator<Item = Result<String, StoreError>>> Iterator for NewestFirst<I> {
    type Item = Result<String, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        let (id, lane) = self.heads.pop()?;
        self.advance(lane);
        Some(Ok(id))
    }
}

/// Writes a delivery and keeps the outbox in step: the old entry (if any) is
/// removed, a new one added when the delivery is pending.
pub(super) fn put_delivery_tx(
    deliveries: &dyn TxTree,
    outbox: &dyn TxTree,
    d: &Delivery,
    previous_due: Option<Timestamp>,
) -> TxResult<()> {
    if let Some(due) = previous_due {
        outbox.remove(&outbox_key(due, &d.id))?;
    }
    if let Some((key, value)) = outbox_entry(d) {
        outbox.insert(&key, &value)?;
    }
    deliveries.insert(d.id.as_bytes(), &codec::encode_delivery(d))
}

/// The outbox entry of a pending delivery. The value names the
/// subscription, so the worker can apply the per-subscription cap without
/// decoding the delivery.
pub(super) fn outbox_entry(d: &Delivery) -> Option<(Vec<u8>, Vec<u8>)> {
    let due = d
        .next_attempt_at
        .filter(|_| d.status == DeliveryStatus::Pending)?;
    Some((
        outbox_key(due, &d.id),
        scoped(&d.tenant_id, &d.subscription_id),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(ids: &[&str]) -> std::vec::IntoIter<Result<String, StoreError>> {
        ids.iter()
            .map(|s| Ok(s.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn lanes_merge_newest_first() {
        let merged: Vec<String> = NewestFirst::new(vec![
            lane(&["dlv_9", "dlv_5", "dlv_1"]),
            lane(&[]),
            lane(&["dlv_8", "dlv_7", "dlv_2"]),
            lane(&["dlv_6"]),
        ])
        .map(Result::unwrap)
        .collect();
        assert_eq!(
            merged,
            [
                "dlv_9", "dlv_8", "dlv_7", "dlv_6", "dlv_5", "dlv_2", "dlv_1"
            ]
        );
    }

    #[test]
    fn an_index_error_is_not_swallowed() {
        let failing = vec![Err(StoreError::Commit("disk".into()))].into_iter();
        let mut merged = NewestFirst::new(vec![lane(&["dlv_1"]), failing]);
        assert!(matches!(merged.next(), Some(Err(_))));
    }
}
