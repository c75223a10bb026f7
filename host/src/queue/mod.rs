//! The queue: the boundary between the records that produce work and the
//! workers that do it. This is the sled backend; the cluster backend
//! implements the same operations a second time.
//!
//! - **Enqueue atomically with the records** that produced the work: an
//!   event with its deliveries and held items ([`Queue::accept`]), a flush's
//!   deliveries with the removal of the flushed items
//!   ([`Queue::commit_flush`]), a manual retry ([`Queue::requeue`]).
//! - **Visible once durable**: each of those writes atomically (one sled
//!   transaction; an acceptance shares a write group and a flush with the
//!   concurrent ones, see the store's committer), waits until it is on disk, and only
//!   then hands the new pending
//!   deliveries to the scheduler. A worker can never send a delivery that a
//!   crash could still undo, so a sender that re-sends after a crash gets
//!   its event delivered under one delivery id.
//! - **Lease fairly within caps** ([`Queue::lease`]), then **complete or
//!   reschedule** ([`Queue::complete`]): see [`fair`].
//! - **Depth** per subscription and tenant, for quotas and operators.
//!
//! At start the outbox tree (everything sled recovered is on disk) is loaded
//! into the scheduler.
//!
//! In cluster mode ([`Queue::open_cluster`]) a node schedules only the
//! subscriptions of the partitions it leases (`crate::cluster::leases`):
//! it loads a partition's outbox entries when it gains it, drops them when
//! it loses it, and queues the deliveries other nodes add to its partitions
//! as its view applies their batches. The per-subscription cap and the
//! fair order then hold across the cluster, since one subscription's work
//! is on one node at a time.

pub mod fair;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use tokio::sync::Notify;

use crate::clock::{Clock, from_millis, millis};
use crate::cluster::leases::Ownership;
use crate::store::{Accepted, Delivery, DeliveryStatus, DueEntry, NewEvent, Store, StoreError};
use crate::telemetry;
use crate::util::failpoint;
pub use fair::{Caps, Lease};

/// The queue's settings.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    pub caps: Caps,
    /// The per-subscription cap of a subscription the store no longer has.
    pub default_subscription_cap: u32,
}

/// Cheap to clone; one per process.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    clock: Arc<dyn Clock>,
    scheduler: Mutex<Scheduled>,
    /// Wakes the worker: new work is visible, or a cap was freed.
    wake: Notify,
    default_cap: u32,
    /// Cluster mode: the partitions this node leases.
    owner: Option<Ownership>,
}

struct Scheduled {
    scheduler: fair::Scheduler,
    /// Per-subscription caps seen so far (read from the store once, kept up
    /// to date by [`Queue::set_cap`]).
    caps: HashMap<String, u32>,
}

impl Queue {
    /// Opens the queue on `store`, loading every pending outbox entry.
    pub fn open(
        store: Store,
        settings: QueueSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        let queue = Self::new(store, settings, clock, None);
        let entries: Vec<_> = queue
            .inner
            .store
            .outbox_entries()
            .collect::<Result<_, _>>()?;
        queue.load(&entries)?;
        Ok(queue)
    }

    /// Cluster mode: schedules nothing until [`Queue::gained`] hands it a
    /// partition; then also what other nodes add to its partitions.
    pub fn open_cluster(
        store: Store,
        settings: QueueSettings,
        clock: Arc<dyn Clock>,
        owner: Ownership,
    ) -> Self {
        let queue = Self::new(store, settings, clock, Some(owner));
        let weak = Arc::downgrade(&queue.inner);
        queue.inner.store.on_changes(Box::new(move |changes| {
            let Some(inner) = weak.upgrade() else {
                return;
            };
            let queue = Queue { inner };
            // A cap or a rate limit changed through another node.
            for sub in &changes.subscriptions {
                queue.set_limits(sub);
            }
            if !changes.due.is_empty() {
                queue.queue_remote(&changes.due);
            }
        }));
        queue
    }

    fn new(
        store: Store,
        settings: QueueSettings,
        clock: Arc<dyn Clock>,
        owner: Option<Ownership>,
    ) -> Self {
        Queue {
            inner: Arc::new(Inner {
                store,
                clock,
                scheduler: Mutex::new(Scheduled {
                    scheduler: fair::Scheduler::new(settings.caps),
                    caps: HashMap::new(),
                }),
                wake: Notify::new(),
                default_cap: settings.default_subscription_cap.max(1),
                owner,
            }),
        }
    }

    /// Queues outbox entries (at start, or a partition gained).
    fn load(&self, entries: &[crate::store::DueEntry]) -> Result<(), StoreError> {
        let now = millis(self.inner.clock.now());
        {
            let mut s = self.lock();
            for e in entries {
                let cap = self.cap_of(&mut s, e.tenant_id(), e.subscription_id())?;
                s.scheduler.push(
                    e.tenant_id(),
                    e.subscription_id(),
                    cap,
                    e.delivery_id(),
                    e.due_ms(),
                    now,
                );
            }
        }
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Whether this node schedules the subscription's work.
    fn owns(&self, tenant_id: &str, subscription_id: &str) -> bool {
        self.inner
            .owner
            .as_ref()
            .is_none_or(|o| o.owns(tenant_id, subscription_id))
    }

    /// Cluster mode: this node now leases `partition`: its outbox entries
    /// (as this node's view has them) are queued.
    pub fn gained(&self, partition: u32) -> Result<(), StoreError> {
        let Some(owner) = &self.inner.owner else {
            return Ok(());
        };
        let entries: Vec<_> = self
            .inner
            .store
            .outbox_entries()
            .filter(|e| {
                e.as_ref().map_or(true, |e| {
                    owner.partition(e.tenant_id(), e.subscription_id()) == partition
                })
            })
            .collect::<Result<_, _>>()?;
        self.load(&entries)
    }

    /// Cluster mode: another node leases `partition` now (or will): its
    /// queued deliveries are forgotten here.
    pub fn lost(&self, partition: u32) {
        let Some(owner) = &self.inner.owner else {
            return;
        };
        self.lock()
            .scheduler
            .drop_queued(|tenant, sub| owner.partition(tenant, sub) == partition);
    }

    /// Outbox entries another node's batch added (key: due ms + delivery
    /// id; value: tenant \0 subscription): queued if this node owns them.
    fn queue_remote(&self, added: &[DueEntry]) {
        let now = millis(self.inner.clock.now());
        let mut queued = false;
        {
            let mut s = self.lock();
            for e in added
                .iter()
                .filter(|e| self.owns(e.tenant_id(), e.subscription_id()))
            {
                let (tenant, sub) = (e.tenant_id(), e.subscription_id());
                let cap = self
                    .cap_of(&mut s, tenant, sub)
                    .unwrap_or(self.inner.default_cap);
                s.scheduler
                    .push(tenant, sub, cap, e.delivery_id(), e.due_ms(), now);
                queued = true;
            }
        }
        if queued {
            self.inner.wake.notify_one();
        }
    }

    /// The store the queue writes to.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Scheduled> {
        self.inner
            .scheduler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn cap_of(&self, s: &mut Scheduled, tenant_id: &str, sub_id: &str) -> Result<u32, StoreError> {
        if let Some(cap) = s.caps.get(sub_id) {
            return Ok(*cap);
        }
        let sub = self.inner.store.get_subscription(tenant_id, sub_id)?;
        let cap = sub
            .as_ref()
            .map_or(self.inner.default_cap, |sub| sub.max_in_flight.max(1));
        if let Some(rate) = sub.as_ref().and_then(|sub| sub.rate_limit) {
            let now = millis(self.inner.clock.now());
            s.scheduler
                .set_rate(sub_id, Some((rate.per_second, rate.burst())), now);
        }
        s.caps.insert(sub_id.to_string(), cap);
        Ok(cap)
    }

    /// Hands durable pending deliveries to the scheduler and wakes the worker.
    fn publish<'a>(&self, deliveries: impl IntoIterator<Item = &'a Delivery>) {
        let now = millis(self.inner.clock.now());
        let mut published = false;
        {
            let mut s = self.lock();
            for d in deliveries {
                let (DeliveryStatus::Pending, Some(due)) = (d.status, d.next_attempt_at) else {
                    continue;
                };
                if !self.owns(&d.tenant_id, &d.subscription_id) {
                    // Its partition's owner queues it from its own view.
                    continue;
                }
                // A store error here only costs the cap lookup: use the default.
                let cap = self
                    .cap_of(&mut s, &d.tenant_id, &d.subscription_id)
                    .unwrap_or(self.inner.default_cap);
                s.scheduler.push(
                    &d.tenant_id,
                    &d.subscription_id,
                    cap,
                    &d.id,
                    millis(due),
                    now,
                );
                published = true;
            }
        }
        if published {
            self.inner.wake.notify_one();
        }
    }

    /// Stores events with their deliveries and held items (concurrent
    /// calls share one write group and one flush, see the store's
    /// committer), waits until it is on disk, then makes the deliveries
    /// visible to the workers. Gives each event back with its outcome.
    pub async fn accept(
        &self,
        batch: Vec<NewEvent>,
    ) -> Result<Vec<(NewEvent, Accepted)>, StoreError> {
        let (batch, outcomes) = self.inner.store.accept(batch).await?;
        let new = || {
            batch
                .iter()
                .zip(&outcomes)
                .filter(|(_, o)| matches!(o, Accepted::New))
                .map(|(n, _)| n)
        };
        let accepted = new().filter(|n| !n.replay).count();
        telemetry::events(accepted, outcomes.len() - new().count());
        counted(new().flat_map(|n| &n.deliveries));
        self.publish(
            new()
                .flat_map(|n| &n.deliveries)
                .filter(|d| d.order.is_none()),
        );
        // An ordered delivery was stored pending only at the head of its
        // line: the store says which.
        let mut heads = Vec::new();
        for d in new().flat_map(|n| &n.deliveries) {
            if d.order.is_some()
                && let Some(stored) = self.inner.store.get_delivery(&d.id)?
            {
                heads.push(stored);
            }
        }
        self.publish(&heads);
        // A re-sent event whose first request failed after its write (the
        // commit did not go through, yet the write later reached the disk):
        // its pending deliveries are made visible now, under their ids.
        let mut resent = Vec::new();
        for outcome in &outcomes {
            if let Accepted::Duplicate(existing) = outcome {
                for id in &existing.deliveries {
                    if let Some(d) = self.inner.store.get_delivery(id)? {
                        resent.push(d);
                    }
                }
            }
        }
        self.publish(&resent);
        Ok(batch.into_iter().zip(outcomes).collect())
    }

    /// A window flush: removes the flushed items and adds their deliveries in
    /// one transaction; visible once on disk. False: another flush took the
    /// items first (nothing changed).
    pub async fn commit_flush(
        &self,
        tenant_id: &str,
        subscription_id: &str,
        start: Timestamp,
        flushed: &[(Vec<u8>, u64)],
        deliveries: &[Delivery],
    ) -> Result<bool, StoreError> {
        let committed = self
            .inner
            .store
            .commit_flush(tenant_id, subscription_id, start, flushed, deliveries)
            .await?;
        failpoint("flush-after-commit");
        if committed {
            self.inner.store.durable().await?;
            counted(deliveries);
            self.publish(deliveries);
        }
        Ok(committed)
    }

    /// Makes a finished delivery pending again (a manual retry); an
    /// ordered one takes its place in its line. The delivery as stored;
    /// None when a concurrent retry of the same ordered delivery won.
    pub async fn requeue(&self, delivery: &Delivery) -> Result<Option<Delivery>, StoreError> {
        let Some(stored) = self.inner.store.retry_delivery(delivery).await? else {
            return Ok(None);
        };
        self.inner.store.durable().await?;
        self.publish([&stored]);
        Ok(Some(stored))
    }

    /// Lets the line stopped by the failed head `delivery` go on without
    /// it (`on_failure: block`); false when it stops no line.
    pub async fn dismiss(&self, delivery: &Delivery) -> Result<bool, StoreError> {
        let now = self.inner.clock.now();
        let (dismissed, promoted) = self.inner.store.dismiss_head(delivery, now).await?;
        self.inner.store.durable().await?;
        if let Some(next) = &promoted {
            self.publish([next]);
        }
        Ok(dismissed)
    }

    /// Stores deliveries that are attempted right away by the caller, not by
    /// the workers (a test event); a retry they need goes through
    /// [`Queue::rescheduled`].
    pub async fn add_unqueued(&self, deliveries: &[Delivery]) -> Result<(), StoreError> {
        debug_assert!(deliveries.iter().all(|d| d.next_attempt_at.is_none()));
        self.inner.store.add_deliveries(deliveries).await?;
        self.inner.store.durable().await?;
        counted(deliveries);
        Ok(())
    }

    /// Stores new deliveries for the workers (an operational notification):
    /// visible once on disk.
    pub async fn add(&self, deliveries: &[Delivery]) -> Result<(), StoreError> {
        self.inner.store.add_deliveries(deliveries).await?;
        self.inner.store.durable().await?;
        counted(deliveries);
        self.publish(deliveries);
        Ok(())
    }

    /// A delivery attempted outside a lease that must be retried later.
    pub fn rescheduled(&self, delivery: &Delivery) {
        self.publish([delivery]);
    }

    /// The next delivery to attempt, fairly, within the caps.
    pub fn lease(&self) -> Option<Lease> {
        let now = millis(self.inner.clock.now());
        self.lock().scheduler.lease(now)
    }

    /// A slot of the tenant's in-flight cap for an attempt made outside the
    /// queue (a test event): None when the tenant (or the router) is at its
    /// cap. The slot is given back when the guard drops.
    pub fn reserve(&self, tenant_id: &str) -> Option<Reserved> {
        self.lock().scheduler.reserve(tenant_id).then(|| Reserved {
            queue: self.clone(),
            tenant_id: tenant_id.to_string(),
        })
    }

    /// The attempt of a lease is recorded: `next_due` queues the retry.
    pub fn complete(&self, lease: &Lease, next_due: Option<Timestamp>) {
        let now = millis(self.inner.clock.now());
        // A retry of a partition lost meanwhile is its new owner's.
        let next_due = next_due.filter(|_| self.owns(&lease.tenant_id, &lease.subscription_id));
        self.lock()
            .scheduler
            .complete(lease, next_due.map(millis), now);
        self.inner.wake.notify_one();
    }

    /// A subscription's cap or rate limit may have changed.
    pub fn set_limits(&self, sub: &crate::store::Subscription) {
        let now = millis(self.inner.clock.now());
        let mut s = self.lock();
        s.caps.insert(sub.id.clone(), sub.max_in_flight.max(1));
        s.scheduler.set_cap(&sub.id, sub.max_in_flight, now);
        let rate = sub.rate_limit.map(|r| (r.per_second, r.burst()));
        s.scheduler.set_rate(&sub.id, rate, now);
        drop(s);
        self.inner.wake.notify_one();
    }

    /// No attempt of the subscription starts before `until` (its receiver
    /// answered 429 or 503 with `Retry-After`).
    pub fn pause(&self, subscription_id: &str, until: Timestamp) {
        let now = millis(self.inner.clock.now());
        self.lock()
            .scheduler
            .pause(subscription_id, millis(until), now);
        telemetry::paused();
    }

    /// When the earliest not-yet-due delivery becomes due.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.lock().scheduler.next_due().map(from_millis)
    }

    /// Resolves when there may be new work to lease.
    pub async fn notified(&self) {
        self.inner.wake.notified().await
    }

    /// Wakes the worker (new time on a manual clock, tests).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Deliveries queued or in flight for a tenant (the backlog quota).
    pub fn tenant_pending(&self, tenant_id: &str) -> u64 {
        self.lock().scheduler.tenant_pending(tenant_id)
    }

    /// Deliveries queued for a subscription.
    pub fn subscription_depth(&self, subscription_id: &str) -> usize {
        self.lock().scheduler.subscription_depth(subscription_id)
    }

    /// (queued, in flight), all tenants together.
    pub fn depth(&self) -> (u64, u32) {
        let s = self.lock();
        (s.scheduler.queued(), s.scheduler.in_flight())
    }
}

/// Counts newly stored deliveries by their first status.
fn counted<'a>(deliveries: impl IntoIterator<Item = &'a Delivery>) {
    for d in deliveries {
        telemetry::delivery_created(d.status.as_str());
    }
}

/// A slot of a tenant's in-flight cap held outside the queue
/// ([`Queue::reserve`]); given back when dropped.
pub struct Reserved {
    queue: Queue,
    tenant_id: String,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.queue.lock().scheduler.release(&self.tenant_id);
        self.queue.inner.wake.notify_one();
    }
}
