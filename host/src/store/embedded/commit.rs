//! The one writer of acceptances: every request's events, deliveries and
//! outbox entries go to one thread, which writes all that arrived while it
//! was busy as **one group with one flush**.
//!
//! Why a thread of its own: in sled 0.34 every transaction (and every
//! `apply_batch`) takes the global write lock and rolls the log buffer
//! before and after itself, each roll a `pwrite` plus a waiting
//! `sync_file_range`. One transaction per request and one per attempt made
//! ~2.4 synchronous disk writes and ~15 context switches per event (`perf
//! stat` under `bench/e2e.sh`, see BENCHMARKS.md); one flush per group
//! makes that cost per group, and the group grows with the load.
//!
//! A group of plain new events (the hot path) is not even a transaction:
//! its writes are ordered behind an intent record ([`super::intent`]), so
//! the write lock, which would stall every reader while the group is
//! written, is never taken. A group with a replay or window items is one
//! transaction, as it needs reads and writes to be atomic.
//! (Attempt records need no transaction: see [`Store::record_delivery`].)
//!
//! What each job is promised does not change: an acceptance is answered
//! once its writes are on disk; a `durable` call once everything written
//! before it is on disk. One job's corrupt record does not fail the
//! others: a plain group reads every job's duplicates before it writes, a
//! failed transaction is retried one job at a time.

use std::collections::HashSet;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::intent::Intents;
use crate::store::events::{accept_tx, split_by_batch};
use crate::store::*;
use crate::util::failpoint_active;

/// A group takes jobs until it holds this many events: bounds the group's
/// write set and the wait of its first job.
const MAX_GROUP: usize = 2048;

/// Where an acceptance's answer goes: its batch back, with the outcomes.
pub(in crate::store) type AcceptReply =
    oneshot::Sender<(Vec<NewEvent>, Result<Vec<Accepted>, StoreError>)>;

pub(in crate::store) enum Job {
    /// Store events with their deliveries; answered once on disk, with the
    /// batch given back.
    Accept {
        batch: Vec<NewEvent>,
        reply: AcceptReply,
    },
    /// Answered once everything written before it is on disk.
    Durable {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// An ordered delivery's final record (and the outbox entry it was
    /// leased from): concurrent ones share one transaction; answered once
    /// on disk with the delivery its line made pending, if any.
    Ordered {
        record: Box<(Delivery, Option<Timestamp>)>,
        reply: oneshot::Sender<Result<Option<Delivery>, StoreError>>,
    },
}

/// The trees the committer writes, and the database it flushes. Holds no
/// [`Store`], so the thread ends when the last store handle is dropped.
pub(in crate::store) struct Writer {
    pub(in crate::store) db: Db,
    pub(in crate::store) events: Tree,
    pub(in crate::store) events_by_time: Tree,
    pub(in crate::store) deliveries: Tree,
    pub(in crate::store) tenant_deliveries: Tree,
    pub(in crate::store) outbox: Tree,
    pub(in crate::store) held: Tree,
    pub(in crate::store) windows: Tree,
    pub(in crate::store) lanes: Tree,
    pub(in crate::store) lane_items: Tree,
    pub(in crate::store) intents: Tree,
    /// Shared with the store: a backup pauses the committer too.
    pub(in crate::store) gate: std::sync::Arc<crate::store::gate::Gate>,
    /// Set once a write failed in sled (a full disk, an I/O error); then
    /// nothing more is written or flushed, and every job is answered with
    /// this. sled 0.34 does not recover from such a failure: it poisons
    /// itself, and a large value's failed write even leaves a log buffer
    /// that never completes, so a flush after it waits forever (found with
    /// a full disk: requests hung instead of answering 503). The health
    /// check fails with it, and a restart clears it.
    pub(in crate::store) failed: std::cell::RefCell<Option<String>>,
}

impl Job {
    /// What the job adds to its group: its events.
    fn size(&self) -> usize {
        match self {
            Job::Accept { batch, .. } => batch.len().max(1),
            Job::Durable { .. } | Job::Ordered { .. } => 1,
        }
    }
}

/// Starts the committer thread.
pub(in crate::store) fn start(writer: Writer) -> std::io::Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("wasmhook-commit".into())
        .spawn(move || writer.run(rx))?;
    Ok(tx)
}

impl Writer {
    fn run(self, jobs: mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let mut size = first.size();
            let mut group = vec![first];
            while size < MAX_GROUP {
                match jobs.try_recv() {
                    Ok(job) => {
                        size += job.size();
                        group.push(job);
                    }
                    Err(_) => break,
                }
            }
            // A backup waits for the group, and the group for a backup (a
            // group that only flushes need not: health checks go on).
            let writes = group.iter().any(|job| !matches!(job, Job::Durable { .. }));
            let _pass = writes.then(|| self.gate.enter_blocking());
            self.serve(group);
        }
    }

    /// The trees of a plain group, with its intents.
    pub(in crate::store) fn intents(&self) -> Intents<'_> {
        Intents {
            intents: &self.intents,
            events: &self.events,
            events_by_time: &self.events_by_time,
            deliveries: &self.deliveries,
            tenant_deliveries: &self.tenant_deliveries,
            outbox: &self.outbox,
        }
    }

    /// One group: its acceptances written (plainly or in one transaction),
    /// then one flush.
    fn serve(&self, group: Vec<Job>) {
        let mut accepts = Vec::new();
        let mut durables = Vec::new();
        let mut ordered = Vec::new();
        for job in group {
            match job {
                Job::Accept { batch, reply } => accepts.push((batch, reply)),
                Job::Durable { reply } => durables.push(reply),
                Job::Ordered { record, reply } => ordered.push((record, reply)),
            }
        }
        // After a failed write, nothing is written or flushed (see `failed`).
        let earlier = self.failed.borrow().as_ref().map(|why| {
            format!("an earlier write failed ({why}); restart wasmhook once its cause is fixed")
        });
        let results = match &earlier {
            Some(e) => accepts
                .iter()
                .map(|_| Err(StoreError::Commit(e.clone())))
                .collect(),
            None => self.write(&accepts),
        };
        if earlier.is_none() && failpoint_active("accept-slow-commit") && !accepts.is_empty() {
            // Crash tests: a long window between the write and its fsync,
            // during which no worker may see the deliveries. The test kills
            // the process inside it; a minute keeps it open however slow
            // the machine is.
            std::thread::sleep(Duration::from_secs(60));
        }
        let records: Vec<&(Delivery, Option<Timestamp>)> =
            ordered.iter().map(|(r, _)| &**r).collect();
        let finals = match &earlier {
            Some(e) => records
                .iter()
                .map(|_| Err(StoreError::Commit(e.clone())))
                .collect(),
            None => self.write_ordered(&records),
        };
        if let Some(Err(e @ StoreError::Sled(_))) = results.iter().find(|r| r.is_err()) {
            self.failed.replace(Some(e.to_string()));
        }
        if let Some(Err(e @ StoreError::Sled(_))) = finals.iter().find(|r| r.is_err()) {
            self.failed.replace(Some(e.to_string()));
        }
        let flushed = match (earlier, self.failed.borrow().clone()) {
            (Some(e), _) => Err(e),
            // Not flushed: nothing of this group is answered as accepted.
            (None, Some(why)) => Err(why),
            (None, None) => self.db.flush().map(|_| ()).map_err(|e| e.to_string()),
        };
        for reply in durables {
            let _ = reply.send(flushed.clone().map_err(StoreError::Commit));
        }
        for ((_, reply), result) in ordered.into_iter().zip(finals) {
            let result = match (result, &flushed) {
                (Ok(promoted), Ok(())) => Ok(promoted),
                (Err(e), _) => Err(e),
                (Ok(_), Err(e)) => Err(StoreError::Commit(e.clone())),
            };
            let _ = reply.send(result);
        }
        for ((batch, reply), result) in accepts.into_iter().zip(results) {
            let result = match (result, &flushed) {
                (Ok(accepted), Ok(())) => Ok(accepted),
                (Err(e), _) => Err(e),
                (Ok(_), Err(e)) => Err(StoreError::Commit(e.clone())),
            };
            let _ = reply.send((batch, result));
        }
    }

    /// The acceptances of a group: plainly when every event is plain,
    /// else in one transaction. Per acceptance, its outcomes.
    fn write(
        &self,
        accepts: &[(Vec<NewEvent>, AcceptReply)],
    ) -> Vec<Result<Vec<Accepted>, StoreError>> {
        let batches: Vec<&[NewEvent]> = accepts.iter().map(|(b, _)| b.as_slice()).collect();
        let plain = batches.iter().flat_map(|b| b.iter()).all(|n| {
            !n.replay
                && n.held.is_empty()
                && n.released.is_empty()
                && n.deliveries.iter().all(|d| d.order.is_none())
        });
        if plain {
            self.write_plain(&batches)
        } else {
            self.write_transactions(&batches)
        }
    }

    /// Ordered deliveries' final records in one transaction (each line's
    /// steps in the order given); if it fails, each alone. Per record, the
    /// delivery its line made pending.
    fn write_ordered(
        &self,
        records: &[&(Delivery, Option<Timestamp>)],
    ) -> Vec<Result<Option<Delivery>, StoreError>> {
        if records.is_empty() {
            return Vec::new();
        }
        let trees = [
            &self.outbox,
            &self.deliveries,
            &self.lanes,
            &self.lane_items,
        ];
        let run = |records: &[&(Delivery, Option<Timestamp>)]| {
            trees
                .as_slice()
                .transaction(|tx| {
                    let lanes = crate::store::lanes::LaneTrees {
                        outbox: &tx[0],
                        deliveries: &tx[1],
                        lanes: &tx[2],
                        items: &tx[3],
                    };
                    records
                        .iter()
                        .map(|(d, leased)| lanes.record_final(d, *leased, false))
                        .collect::<TxResult<Vec<_>>>()
                })
                .map_err(tx_error)
        };
        together_or_alone(records, run)
    }

    /// A group of plain new events: each batch's duplicates read first (a
    /// batch that cannot be read fails alone), then every new event written
    /// behind the group's intent. Per batch, its outcomes.
    fn write_plain(&self, batches: &[&[NewEvent]]) -> Vec<Result<Vec<Accepted>, StoreError>> {
        let mut seen = HashSet::new();
        let results: Vec<_> = batches
            .iter()
            .map(|batch| self.outcomes(batch, &mut seen))
            .collect();
        let new: Vec<&NewEvent> = batches
            .iter()
            .zip(&results)
            .filter_map(|(batch, r)| Some(batch.iter().zip(r.as_ref().ok()?)))
            .flatten()
            .filter(|(_, outcome)| **outcome == Accepted::New)
            .map(|(n, _)| n)
            .collect();
        match self.intents().write(&new) {
            Ok(()) => results,
            // Nothing of the group stays: every batch read whole fails too.
            Err(e) => {
                if matches!(e, StoreError::Sled(_)) {
                    self.failed.replace(Some(e.to_string()));
                }
                let e = e.to_string();
                results
                    .into_iter()
                    .map(|r| r.and_then(|_| Err(StoreError::Commit(e.clone()))))
                    .collect()
            }
        }
    }

    /// Whether each event of `batch` is new: not stored, not earlier in the
    /// group (`seen`, which takes this batch's ids once it is read whole),
    /// not earlier in the batch. The first of an id counts.
    fn outcomes(
        &self,
        batch: &[NewEvent],
        seen: &mut HashSet<Vec<u8>>,
    ) -> Result<Vec<Accepted>, StoreError> {
        let mut mine = HashSet::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        for new in batch {
            let e = &new.event;
            let key = scoped(&e.tenant_id, &e.event.id);
            if let Some(existing) = self.events.get(&key)? {
                outcomes.push(Accepted::Duplicate(Box::new(decode(&key, &existing)?)));
            } else if seen.contains(&key) || !mine.insert(key) {
                outcomes.push(Accepted::Duplicate(Box::new(e.clone())));
            } else {
                outcomes.push(Accepted::New);
            }
        }
        seen.extend(mine);
        Ok(outcomes)
    }

    /// A group with replays or window items: one transaction; if it fails,
    /// each batch alone, so one job's fault does not fail the others.
    fn write_transactions(
        &self,
        batches: &[&[NewEvent]],
    ) -> Vec<Result<Vec<Accepted>, StoreError>> {
        together_or_alone(batches, |batches| self.transaction(batches))
    }

    /// The acceptances of `batches` in one transaction: per batch, in
    /// order, its outcomes. No batch, no transaction.
    fn transaction(&self, batches: &[&[NewEvent]]) -> Result<Vec<Vec<Accepted>>, StoreError> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let events: Vec<&NewEvent> = batches.iter().flat_map(|b| b.iter()).collect();
        let holds = events
            .iter()
            .any(|n| !n.held.is_empty() || !n.released.is_empty());
        let ordered = events
            .iter()
            .any(|n| n.deliveries.iter().any(|d| d.order.is_some()));
        // A transaction locks every tree it names: the window trees only
        // when something is held or taken, the lines' only when a delivery
        // is ordered (both rare next to plain events).
        let mut trees = vec![
            &self.events,
            &self.events_by_time,
            &self.deliveries,
            &self.tenant_deliveries,
            &self.outbox,
        ];
        if holds {
            trees.extend([&self.held, &self.windows]);
        }
        if ordered {
            trees.extend([&self.lanes, &self.lane_items]);
        }
        trees
            .as_slice()
            .transaction(|tx| {
                let t = |i: usize| &tx[i] as &dyn TxTree;
                let windows = holds.then(|| (t(5), t(6)));
                let first_lane = if holds { 7 } else { 5 };
                let lanes = ordered.then(|| (t(first_lane), t(first_lane + 1)));
                let accepted = accept_tx(&events, [t(0), t(1), t(2), t(3), t(4)], windows, lanes)?;
                Ok(split_by_batch(accepted, batches))
            })
            .map_err(tx_error)
    }
}

/// `items` written by `write` in one transaction, one outcome each; if
/// that fails, each item in a transaction of its own, so that one item's
/// fault (a corrupt record) fails only itself.
fn together_or_alone<I, O: Default>(
    items: &[I],
    write: impl Fn(&[I]) -> Result<Vec<O>, StoreError>,
) -> Vec<Result<O, StoreError>> {
    match write(items) {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(e) if items.len() <= 1 => vec![Err(e)],
        Err(_) => items
            .iter()
            .map(|item| write(std::slice::from_ref(item)).map(|mut o| o.pop().unwrap_or_default()))
            .collect(),
    }
}

#[cfg(test)]
pub(in crate::store) mod tests {
    use super::*;
    use crate::event::Envelope;

    pub(in crate::store) fn new_event(
        tenant: &str,
        id: &str,
        delivery: &str,
        at: Timestamp,
    ) -> NewEvent {
        let d = Delivery {
            id: delivery.into(),
            tenant_id: tenant.into(),
            event_id: id.into(),
            event_type: "message.created".into(),
            subscription_id: "sub_1".into(),
            status: DeliveryStatus::Pending,
            request: Some(StoredRequest {
                body: "{}".into(),
                content_type: "application/json".into(),
                headers: vec![],
                event_name: None,
                body_from_event: false,
            }),
            attempts: vec![],
            next_attempt_at: Some(at),
            last_error: None,
            created_at: at,
            updated_at: at,
            order: None,
        };
        NewEvent {
            replay: false,
            event: StoredEvent {
                tenant_id: tenant.into(),
                event: Envelope {
                    id: id.into(),
                    event_type: "message.created".into(),
                    occurred_at: at.to_string(),
                    source: "test".into(),
                    data: crate::event::Data::from_value(&serde_json::json!({})),
                    app: None,
                    channels: Vec::new(),
                },
                received_at: at,
                deliveries: vec![delivery.into()],
                trace: None,
            },
            deliveries: vec![d],
            held: vec![],
            released: vec![],
        }
    }

    /// Many requests at once, several of them re-sending one id: they share
    /// transactions, and across them the id is still stored once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_acceptances_share_groups_and_deduplicate_across_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let at: Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        let mut calls = Vec::new();
        for i in 0..64 {
            let store = store.clone();
            // Every fourth call sends evt_same; the others their own id.
            let id = if i % 4 == 0 {
                "evt_same".to_string()
            } else {
                format!("evt_{i}")
            };
            let n = new_event("ten_1", &id, &format!("dlv_{i:03}"), at);
            calls.push(tokio::spawn(async move { store.accept(vec![n]).await }));
        }
        let mut new = 0;
        let mut duplicates = 0;
        for call in calls {
            let (batch, outcomes) = call.await.unwrap().unwrap();
            assert_eq!(batch.len(), 1, "each caller gets its own batch back");
            match &outcomes[..] {
                [Accepted::New] => new += 1,
                [Accepted::Duplicate(existing)] => {
                    assert_eq!(existing.event.id, "evt_same");
                    duplicates += 1;
                }
                other => panic!("unexpected outcomes {other:?}"),
            }
        }
        assert_eq!((new, duplicates), (49, 15));
        assert_eq!(store.outbox_entries().count(), 49);
        assert!(store.get_event("ten_1", "evt_same").unwrap().is_some());
    }

    /// A plain group where one batch meets a corrupt stored record: that
    /// batch fails whole (none of its events written), the other is
    /// stored, and no intent is left behind.
    #[tokio::test]
    async fn a_corrupt_record_fails_its_batch_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let at: Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        store
            .events
            .insert(scoped("ten_1", "evt_bad"), b"{not json".as_slice())
            .unwrap();
        let writer = Writer {
            db: store.db.clone(),
            events: store.events.clone(),
            events_by_time: store.events_by_time.clone(),
            deliveries: store.deliveries.clone(),
            tenant_deliveries: store.tenant_deliveries.clone(),
            outbox: store.outbox.clone(),
            held: store.held.clone(),
            windows: store.windows.clone(),
            lanes: store.lanes.clone(),
            lane_items: store.lane_items.clone(),
            intents: store.db.open_tree(crate::store::INTENTS_TREE).unwrap(),
            gate: Default::default(),
            failed: Default::default(),
        };
        let failing = [
            new_event("ten_1", "evt_fine", "dlv_1", at),
            new_event("ten_1", "evt_bad", "dlv_2", at),
        ];
        let passing = [
            new_event("ten_1", "evt_ok", "dlv_3", at),
            // Also in the failed batch: that one did not count.
            new_event("ten_1", "evt_fine", "dlv_4", at),
        ];
        let results = writer.write_plain(&[&failing, &passing]);
        assert!(
            matches!(results[0], Err(StoreError::Corrupt { .. })),
            "{:?}",
            results[0]
        );
        assert_eq!(
            results[1].as_ref().unwrap(),
            &[Accepted::New, Accepted::New]
        );
        assert_eq!(
            store
                .get_event("ten_1", "evt_fine")
                .unwrap()
                .unwrap()
                .deliveries,
            ["dlv_4"]
        );
        assert!(store.get_delivery("dlv_1").unwrap().is_none());
        assert_eq!(store.outbox_entries().count(), 2);
        assert!(writer.intents.is_empty());
    }

    /// An attempt's record moves the outbox entry it was leased from, and a
    /// finished delivery leaves none behind.
    #[tokio::test]
    async fn an_attempt_record_moves_the_leased_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let at: Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        let (mut batch, _) = store
            .accept(vec![new_event("ten_1", "evt_1", "dlv_1", at)])
            .await
            .unwrap();
        let mut d = batch.remove(0).deliveries.remove(0);
        let due = |store: &Store| -> Vec<u64> {
            store
                .outbox_entries()
                .map(|e| e.unwrap().due_ms())
                .collect()
        };
        assert_eq!(due(&store), [millis(at)]);

        let retry_at = at + jiff::SignedDuration::from_secs(60);
        d.next_attempt_at = Some(retry_at);
        store.record_delivery(&d, Some(at)).await.unwrap();
        assert_eq!(due(&store), [millis(retry_at)]);

        d.status = DeliveryStatus::Succeeded;
        d.next_attempt_at = None;
        store.record_delivery(&d, Some(retry_at)).await.unwrap();
        assert!(due(&store).is_empty());
        assert_eq!(
            store.get_delivery("dlv_1").unwrap().unwrap().status,
            DeliveryStatus::Succeeded
        );
    }

    /// `durable` alone (no writes in its group) is answered.
    #[tokio::test]
    async fn a_durable_call_alone_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.durable().await.unwrap();
        store.check().await.unwrap();
    }

    /// Two items held under one sequence number (in cluster mode two nodes
    /// can pick the same one): the second takes the next free key, and
    /// both are kept.
    #[tokio::test]
    async fn an_item_held_under_a_taken_sequence_is_kept_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let at: Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        let held = |event: &str, item: &str| {
            let mut n = new_event("ten_1", event, &format!("dlv_{event}"), at);
            n.deliveries.clear();
            n.event.deliveries.clear();
            n.held.push(HeldWrite {
                tenant_id: "ten_1".into(),
                subscription_id: "sub_w".into(),
                start: at,
                end: at,
                close_at: at,
                seq: 7,
                group: "conv".into(),
                item: item.into(),
            });
            n
        };
        store.accept(vec![held("evt_a", "first")]).await.unwrap();
        store.accept(vec![held("evt_b", "second")]).await.unwrap();
        let items: Vec<String> = store
            .held_items("sub_w", at)
            .unwrap()
            .into_iter()
            .map(|(_, r)| r.item)
            .collect();
        assert_eq!(items, ["first", "second"]);
        assert_eq!(store.windows_of("sub_w").unwrap()[0].items, 2);
    }
}
