//! The two writes every event makes, on either backend: its acceptance
//! (the event with its deliveries, outbox entries, indexes and held items)
//! and each attempt's record. In a partitioned cluster a group of them is
//! cut by partition, each part one batch of its partition's log.

use super::*;

impl Store {
    /// Stores events with their deliveries, outbox entries, indexes and held
    /// items: each event only if the tenant has not sent its id before.
    /// Returns once on disk, with the batch given back beside its outcomes.
    /// The writes of concurrent calls share one group and one flush.
    pub async fn accept(
        &self,
        batch: Vec<NewEvent>,
    ) -> Result<(Vec<NewEvent>, Vec<Accepted>), StoreError> {
        if self.log().is_some() {
            // A partitioned cluster: one tenant's batch (as ingest makes
            // them) goes to its partition's groups.
            let partition_groups = batch
                .first()
                .map(|e| e.event.tenant_id.as_str())
                .filter(|t| batch.iter().all(|e| e.event.tenant_id == *t))
                .and_then(|t| self.partition_groups(t));
            let (batch, accepted) = match (partition_groups, self.groups()) {
                (Some(groups), _) => groups.accepts.write(batch).await?,
                (None, Some(groups)) => groups.accepts.write(batch).await?,
                (None, None) => {
                    let events: Vec<&NewEvent> = batch.iter().collect();
                    let accepted = self.accept_in_log(&events).await?;
                    (batch, accepted)
                }
            };
            if crate::util::failpoint_active("accept-slow-commit") {
                // Crash tests: the log has the events (they are durable and
                // may be sent), the caller has no answer yet. The test kills
                // the process inside this minute.
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            }
            self.remember_bodies(&batch, &accepted);
            return Ok((batch, accepted));
        }
        let (reply, rx) = oneshot::channel();
        self.send(commit::Job::Accept { batch, reply })?;
        let (batch, result) = rx.await.map_err(|_| gone())?;
        let accepted = result?;
        self.remember_bodies(&batch, &accepted);
        Ok((batch, accepted))
    }

    /// Cluster mode: `events` accepted in one guarded batch of the log (a
    /// partitioned cluster: one per partition they belong to, concurrently).
    pub(super) async fn accept_in_log(
        &self,
        events: &[&NewEvent],
    ) -> Result<Vec<Accepted>, StoreError> {
        let groups = self.by_partition(events, |e| &e.event.tenant_id);
        if groups.len() == 1 {
            return self.accept_in_log_of(groups[0].0, events).await;
        }
        written_per_group(&groups, events.len(), |tenant, indexes| {
            let events: Vec<&NewEvent> = indexes.iter().map(|i| events[*i]).collect();
            async move { self.accept_in_log_of(tenant, &events).await }
        })
        .await
    }

    /// A partitioned cluster: `items` grouped by the partition of their
    /// tenant, each group with one of its tenants (whose partition's log
    /// its change goes to) and the items' indexes, in order. Otherwise one
    /// group of all, without a tenant.
    pub(super) fn by_partition<'a, T>(
        &self,
        items: &'a [T],
        tenant: impl Fn(&'a T) -> &'a str,
    ) -> Vec<(Option<&'a str>, Vec<usize>)> {
        let Some(count) = self.data_partitions() else {
            return vec![(None, (0..items.len()).collect())];
        };
        let mut groups: std::collections::BTreeMap<u32, (Option<&'a str>, Vec<usize>)> =
            Default::default();
        for (i, item) in items.iter().enumerate() {
            let t = tenant(item);
            let group = groups
                .entry(partitions::partition_of_tenant(t, count))
                .or_insert((Some(t), Vec::new()));
            group.1.push(i);
        }
        groups.into_values().collect()
    }

    /// [`Store::accept_in_log`] of events of one partition.
    async fn accept_in_log_of(
        &self,
        tenant: Option<&str>,
        events: &[&NewEvent],
    ) -> Result<Vec<Accepted>, StoreError> {
        self.change_of(
            tenant,
            [
                &self.events,
                &self.events_by_time,
                &self.deliveries,
                &self.tenant_deliveries,
                &self.outbox,
                &self.held,
                &self.windows,
                &self.lanes,
                &self.lane_items,
            ],
            |[e, t, d, td, o, h, w, l, li]| {
                events::accept_tx(events, [e, t, d, td, o], Some((h, w)), Some((l, li)))
            },
        )
        .await
    }

    /// An attempt's record: the delivery replaced, its outbox entry moved
    /// from `leased` (the entry the worker took it from) to its next due
    /// time, if it is still pending. Plain writes, no transaction (in sled
    /// every transaction costs two waiting disk writes), in an order whose
    /// every prefix a crash may leave is safe: the new entry first (at
    /// worst a delivery is due twice and attempted again under its id),
    /// then the record, then the old entry removed (at worst a stale entry,
    /// which the worker drops when it finds the delivery no longer due).
    /// On disk by the next flush, as before.
    ///
    /// An ordered delivery's final record moves its line on in the same
    /// change (`lanes.rs`): the delivery that becomes pending is returned,
    /// for the caller to hand to the queue.
    pub async fn record_delivery(
        &self,
        delivery: &Delivery,
        leased: Option<Timestamp>,
    ) -> Result<Option<Delivery>, StoreError> {
        if delivery.order.is_some() && delivery.status.is_final() {
            return self.record_ordered_final(delivery, leased).await;
        }
        if let (Some(_), Some(due)) = (self.log(), leased) {
            self.record_leased_attempt(delivery, due).await?;
            return Ok(None);
        }
        let mut w = self.plain().await;
        let entry = deliveries::outbox_entry(delivery);
        if let Some((key, value)) = &entry {
            w.insert(&self.outbox, key, value)?;
        }
        w.insert(
            &self.deliveries,
            &delivery.id,
            codec::encode_delivery(delivery),
        )?;
        if let Some(due) = leased {
            let old = outbox_key(due, &delivery.id);
            if entry.is_none_or(|(key, _)| key != old) {
                w.remove(&self.outbox, old)?;
            }
        }
        w.commit().await?;
        Ok(None)
    }

    /// Cluster mode: an attempt's record, guarded by the outbox entry it
    /// was leased from. If that entry is gone, another node took the
    /// partition and recorded this delivery since: the new owner's record
    /// stands and this one is dropped (the receiver saw one more attempt
    /// under the same delivery id, which at-least-once allows).
    async fn record_leased_attempt(
        &self,
        delivery: &Delivery,
        leased: Timestamp,
    ) -> Result<(), StoreError> {
        let record = (delivery.clone(), leased);
        let recorded = match (self.partition_groups(&delivery.tenant_id), self.groups()) {
            (Some(groups), _) => groups.records.write(record).await?.1,
            (None, Some(groups)) => groups.records.write(record).await?.1,
            (None, None) => {
                let item = [(delivery.clone(), leased)];
                self.record_leased_in_log(&item).await?[0]
            }
        };
        if !recorded {
            tracing::warn!(
                delivery_id = %delivery.id,
                "attempt not recorded: another node owns this delivery now"
            );
        }
        Ok(())
    }

    /// Attempt records in one batch, each guarded by the outbox entry it
    /// was leased from: whether each was recorded.
    pub(super) async fn record_leased_in_log(
        &self,
        records: &[(Delivery, Timestamp)],
    ) -> Result<Vec<bool>, StoreError> {
        let groups = self.by_partition(records, |(d, _)| &d.tenant_id);
        if groups.len() == 1 {
            return self.record_leased_in_log_of(groups[0].0, records).await;
        }
        written_per_group(&groups, records.len(), |tenant, indexes| {
            let records: Vec<(Delivery, Timestamp)> =
                indexes.iter().map(|i| records[*i].clone()).collect();
            async move { self.record_leased_in_log_of(tenant, &records).await }
        })
        .await
    }

    /// [`Store::record_leased_in_log`] of records of one partition.
    async fn record_leased_in_log_of(
        &self,
        tenant: Option<&str>,
        records: &[(Delivery, Timestamp)],
    ) -> Result<Vec<bool>, StoreError> {
        self.change_of(
            tenant,
            [&self.outbox, &self.deliveries],
            |[outbox, deliveries]| {
                let mut recorded = Vec::with_capacity(records.len());
                for (delivery, leased) in records {
                    if outbox.get(&outbox_key(*leased, &delivery.id))?.is_none() {
                        recorded.push(false);
                        continue;
                    }
                    deliveries::put_delivery_tx(deliveries, outbox, delivery, Some(*leased))?;
                    recorded.push(true);
                }
                Ok(recorded)
            },
        )
        .await
    }
}

/// A partitioned cluster's write of several partitions' items
/// ([`Store::by_partition`]'s groups): each group written at once beside
/// the others, the outcomes put back in the items' order. One failed group
/// fails the whole (its callers retry; what the others wrote is recognised
/// then, as after any cut).
async fn written_per_group<'a, O, Fut>(
    groups: &[(Option<&'a str>, Vec<usize>)],
    items: usize,
    write: impl Fn(Option<&'a str>, &[usize]) -> Fut,
) -> Result<Vec<O>, StoreError>
where
    Fut: std::future::Future<Output = Result<Vec<O>, StoreError>>,
{
    let results = futures_util::future::join_all(
        groups
            .iter()
            .map(|(tenant, indexes)| write(*tenant, indexes)),
    )
    .await;
    let mut outcomes: Vec<Option<O>> = (0..items).map(|_| None).collect();
    for ((_, indexes), result) in groups.iter().zip(results) {
        for (i, outcome) in indexes.iter().zip(result?) {
            outcomes[*i] = Some(outcome);
        }
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.expect("one outcome per item"))
        .collect())
}
