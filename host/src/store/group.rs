//! Cluster mode: concurrent writes of one kind share one batch of the log,
//! as the embedded committer makes acceptances share one transaction and
//! one flush.
//!
//! Each batch costs a publish acknowledged at the stream's replication and
//! a transaction on every node's view, whatever its size. So writes wait in
//! a queue; a few groups are in flight at once ([`IN_FLIGHT`]), and each
//! takes everything that queued while the others were being written (up to
//! a size). A group is one [`Store::change`](crate::store::Store::change): if a key
//! it read changed meanwhile, the whole group is computed again on the newer
//! view, so each write keeps the meaning it has alone. A group that fails
//! is retried one write at a time, so that one caller's fault is not
//! another's.
//!
//! Two kinds use it: acceptances (`Store::accept`) and attempt records
//! (`Store::record_delivery`).

use std::sync::{Arc, Weak};

use futures_util::future::BoxFuture;
use tokio::sync::{Semaphore, mpsc, oneshot};

use jiff::Timestamp;

use crate::store::{Accepted, Delivery, NewEvent, Store, StoreError, Trees};

/// Groups written at once: a publish's round trip is spent waiting, so a
/// second group fills while the first is acknowledged.
const IN_FLIGHT: usize = 4;
/// The same for one partition's groups (a partitioned cluster): fewer, so
/// that each batch of a partition's log takes more of its writes; the
/// partitions' groups are written beside each other.
pub(super) const PARTITION_IN_FLIGHT: usize = 2;

/// Writes a group: the items given back, with one outcome per item.
pub(super) type WriteGroup<I, O> = Arc<
    dyn Fn(Store, Vec<I>) -> BoxFuture<'static, (Vec<I>, Result<Vec<O>, StoreError>)> + Send + Sync,
>;

/// What a job's caller gets: its item back with its outcome.
type Done<I, O> = Result<(I, O), StoreError>;

struct Job<I, O> {
    item: I,
    reply: oneshot::Sender<Done<I, O>>,
}

/// The queue in front of one kind of write.
pub(super) struct Grouper<I, O> {
    jobs: mpsc::UnboundedSender<Job<I, O>>,
}

impl<I: Send + 'static, O: Send + 'static> Grouper<I, O> {
    /// Starts the grouping task: a group holds at most `max` by `size`
    /// (the first item always fits). The task holds the store weakly: it
    /// ends when the store is dropped.
    pub(super) fn start(
        trees: Weak<Trees>,
        in_flight: usize,
        max: usize,
        size: fn(&I) -> usize,
        write: WriteGroup<I, O>,
    ) -> Self {
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(trees, rx, in_flight, max, size, write));
        Grouper { jobs }
    }

    /// Writes `item` within a group: the item given back with its outcome.
    pub(super) async fn write(&self, item: I) -> Done<I, O> {
        let stopped = || StoreError::Commit("the write queue stopped".into());
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { item, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run<I: Send + 'static, O: Send + 'static>(
    trees: Weak<Trees>,
    mut rx: mpsc::UnboundedReceiver<Job<I, O>>,
    in_flight: usize,
    max: usize,
    size: fn(&I) -> usize,
    write: WriteGroup<I, O>,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Whatever queued while waiting for a slot joins the group.
        let mut total = size(&first.item);
        let mut jobs = vec![first];
        while total < max {
            match rx.try_recv() {
                Ok(job) => {
                    total += size(&job.item);
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let Some(trees) = trees.upgrade() else {
            return;
        };
        let write = write.clone();
        tokio::spawn(async move {
            write_group(Store(trees), jobs, write).await;
            drop(slot);
        });
    }
}

/// One change for the whole group; on failure, each job alone.
async fn write_group<I, O>(store: Store, jobs: Vec<Job<I, O>>, write: WriteGroup<I, O>) {
    let (items, replies): (Vec<I>, Vec<_>) = jobs.into_iter().map(|j| (j.item, j.reply)).unzip();
    let alone = items.len() == 1;
    let (items, result) = write(store.clone(), items).await;
    match result {
        Ok(outcomes) => {
            for ((item, reply), outcome) in items.into_iter().zip(replies).zip(outcomes) {
                let _ = reply.send(Ok((item, outcome)));
            }
        }
        Err(e) if alone => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(e));
            }
        }
        Err(_) => {
            for (item, reply) in items.into_iter().zip(replies) {
                let (items, result) = write(store.clone(), vec![item]).await;
                let done = result.and_then(|outcomes| {
                    items
                        .into_iter()
                        .zip(outcomes)
                        .next()
                        .ok_or_else(|| StoreError::Commit("a write gave no outcome".into()))
                });
                let _ = reply.send(done);
            }
        }
    }
}

/// Cluster mode's write groups (below).
pub(super) struct Groups {
    /// Batches of events; each gets its acceptances.
    pub(super) accepts: Grouper<Vec<NewEvent>, Vec<Accepted>>,
    /// An attempt's record and the due time it was leased from; each gets
    /// whether it was recorded.
    pub(super) records: Grouper<(Delivery, Timestamp), bool>,
}

/// Events in one group of acceptances at most (a batch larger than a NATS
/// message goes in parts, which costs more round trips).
const GROUP_EVENTS: usize = 1000;
/// Attempt records in one group at most.
const GROUP_RECORDS: usize = 500;

impl Groups {
    pub(super) fn start(store: &Store) -> Self {
        Self::start_with(store, IN_FLIGHT)
    }

    /// Groups with `in_flight` of each kind written at once.
    pub(super) fn start_with(store: &Store, in_flight: usize) -> Self {
        let accepts: WriteGroup<Vec<NewEvent>, Vec<Accepted>> =
            Arc::new(|store: Store, batches: Vec<Vec<NewEvent>>| {
                Box::pin(async move {
                    let events: Vec<&NewEvent> = batches.iter().flatten().collect();
                    let result = store.accept_in_log(&events).await;
                    drop(events);
                    let result = result
                        .map(|accepted| crate::store::events::split_by_batch(accepted, &batches));
                    (batches, result)
                })
            });
        let records: WriteGroup<(Delivery, Timestamp), bool> =
            Arc::new(|store: Store, records: Vec<(Delivery, Timestamp)>| {
                Box::pin(async move {
                    let result = store.record_leased_in_log(&records).await;
                    (records, result)
                })
            });
        let trees = Arc::downgrade(&store.0);
        Groups {
            accepts: Grouper::start(trees.clone(), in_flight, GROUP_EVENTS, Vec::len, accepts),
            records: Grouper::start(trees, in_flight, GROUP_RECORDS, |_| 1, records),
        }
    }
}
