//! Deliveries with their attempts, the per-tenant index, and the outbox of pending attempts by due time.

use super::*;

impl Store {
    /// Adds deliveries outside ingest (retry, replay, test): delivery,
    /// outbox entry and index in one transaction.
    pub fn add_deliveries(&self, new: &[Delivery]) -> Result<(), StoreError> {
        (&self.deliveries, &self.tenant_deliveries, &self.outbox)
            .transaction(|(deliveries, tenant_deliveries, outbox)| {
                for d in new {
                    put_delivery_tx(deliveries, outbox, d, None)?;
                    index_tx(tenant_deliveries, d)?;
                }
                Ok(())
            })
            .map_err(tx_error)
    }

    pub fn get_delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        self.deliveries
            .get(id)?
            .map(|v| decode(id.as_bytes(), &v))
            .transpose()
    }

    /// Replaces a delivery, moving its outbox entry from `previous_due` to
    /// its new `next_attempt_at` in the same transaction.
    pub fn update_delivery(
        &self,
        delivery: &Delivery,
        previous_due: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        (&self.deliveries, &self.outbox)
            .transaction(|(deliveries, outbox)| {
                put_delivery_tx(deliveries, outbox, delivery, previous_due)
            })
            .map_err(tx_error)
    }

    /// A tenant's deliveries, newest first, from `before` (exclusive).
    pub fn tenant_delivery_ids(
        &self,
        tenant_id: &str,
        before: Option<&str>,
    ) -> impl Iterator<Item = Result<String, StoreError>> + '_ {
        self.delivery_ids(tenant_id, before)
    }

    /// One subscription's deliveries, newest first, from `before`
    /// (exclusive): its own index, so a page costs the same whatever the
    /// rest of the tenant's history holds.
    pub fn subscription_delivery_ids(
        &self,
        subscription_id: &str,
        before: Option<&str>,
    ) -> impl Iterator<Item = Result<String, StoreError>> + '_ {
        self.delivery_ids(subscription_id, before)
    }

    /// Ids under `owner \0` in the delivery index, newest first.
    fn delivery_ids(
        &self,
        owner: &str,
        before: Option<&str>,
    ) -> impl Iterator<Item = Result<String, StoreError>> + '_ {
        let prefix = tenant_prefix(owner);
        let start = prefix.clone();
        let end = match before {
            Some(id) => scoped(owner, id),
            None => {
                let mut end = prefix.clone();
                end.push(0xff);
                end
            }
        };
        let skip = prefix.len();
        self.tenant_deliveries
            .range(start..end)
            .rev()
            .map(move |kv| {
                let (k, _) = kv?;
                Ok(String::from_utf8_lossy(&k[skip..]).into_owned())
            })
    }

    /// Every outbox entry (the queue loads them at start).
    pub fn outbox_entries(&self) -> impl Iterator<Item = Result<DueEntry, StoreError>> + '_ {
        self.outbox.iter().map(|kv| {
            let (key, value) = kv?;
            Ok(DueEntry { key, value })
        })
    }
}

/// Adds a new delivery to the delivery index: under its tenant and under
/// its subscription. Tenant ids (`ten_…`) and subscription ids (`sub_…`,
/// `ops_…`) never share a prefix, so the two families share one tree (and
/// one transaction participant) without mixing in a scan.
pub(super) fn index_tx(index: &TransactionalTree, d: &Delivery) -> TxResult<()> {
    index.insert(scoped(&d.tenant_id, &d.id), &[])?;
    index.insert(scoped(&d.subscription_id, &d.id), &[])?;
    Ok(())
}

/// Writes a delivery and keeps the outbox in step: the old entry (if any) is
/// removed, a new one added when the delivery is pending.
pub(super) fn put_delivery_tx(
    deliveries: &TransactionalTree,
    outbox: &TransactionalTree,
    d: &Delivery,
    previous_due: Option<Timestamp>,
) -> TxResult<()> {
    if let Some(due) = previous_due {
        outbox.remove(outbox_key(due, &d.id))?;
    }
    if d.status == DeliveryStatus::Pending
        && let Some(due) = d.next_attempt_at
    {
        // The value names the subscription, so the worker can apply the
        // per-subscription cap without decoding the delivery.
        outbox.insert(
            outbox_key(due, &d.id),
            scoped(&d.tenant_id, &d.subscription_id),
        )?;
    }
    deliveries.insert(d.id.as_bytes(), encode(d))?;
    Ok(())
}
