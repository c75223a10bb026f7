//! The fair scheduler: which due delivery runs next. Pure and in memory (no
//! I/O, time passed in), so the cluster backend can reuse it inside a node
//! and the rules get dense unit tests.
//!
//! Work is kept per subscription (a queue ordered by due time). Picking is
//! round robin across tenants with ready work, then round robin across that
//! tenant's ready subscriptions — deficit round robin with a unit cost per
//! attempt — within three caps: attempts in flight overall, per tenant and
//! per subscription.
//!
//! Every state change costs O(log n) of the queue it touches and nothing
//! else: a subscription at its cap, or whose next item is not due yet, is in
//! no ring at all (a blocked subscription with 10,000 queued items is never
//! looked at until one of its attempts finishes); a not-yet-due one sits in
//! a timer heap under its earliest due time. So with due work blocked only
//! by caps, nothing runs.
//!
//! The unit of scheduling is a *lane*, one per subscription. Ordering per
//! key (one conversation's messages in order) needs nothing here: the store
//! keeps only the head of each key's line in the outbox (`store/lanes.rs`).
//!
//! **Pace.** A subscription may also have a rate limit (a token bucket) and
//! a pause (a receiver's 429 with `Retry-After`): both only move the time
//! its lane may next start an attempt, so a paced lane waits in the timer
//! heap like one whose work is not due yet, and holds no worker.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// The caps the scheduler enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Attempts in flight at once, all tenants together.
    pub global: u32,
    /// Attempts in flight at once for one tenant.
    pub per_tenant: u32,
}

/// A delivery handed to a worker; give it back with [`Scheduler::complete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub tenant_id: Arc<str>,
    pub subscription_id: Arc<str>,
    pub delivery_id: Arc<str>,
    /// The due time it was queued under (ms since the epoch): the key of its
    /// outbox entry.
    pub due_ms: u64,
}

/// One subscription's queue.
#[derive(Debug)]
struct Lane {
    tenant: Arc<str>,
    /// (due ms, delivery id), earliest first.
    queue: BTreeSet<(u64, Arc<str>)>,
    in_flight: u32,
    cap: u32,
    /// In its tenant's ready ring.
    ready: bool,
    /// The due time of its live timer, if one is in the heap.
    timer: Option<u64>,
}

#[derive(Debug, Default)]
struct TenantState {
    /// Subscriptions with due work and room under their cap.
    ready: VecDeque<Arc<str>>,
    in_flight: u32,
    /// Queued plus in flight: the backlog quota counts this.
    pending: u64,
    /// In the scheduler's tenant ring.
    in_ring: bool,
}

/// A subscription's pace: its token bucket and its pause.
#[derive(Debug, Clone, Default)]
struct Pace {
    /// (tokens per ms, bucket size), when rate limited.
    rate: Option<(f64, f64)>,
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at_ms: u64,
    /// No attempt starts before this (a 429's `Retry-After`).
    paused_until: u64,
}

impl Pace {
    fn refill(&mut self, now_ms: u64) {
        if let Some((per_ms, burst)) = self.rate {
            let elapsed = now_ms.saturating_sub(self.at_ms) as f64;
            self.tokens = (self.tokens + elapsed * per_ms).min(burst);
        }
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// The earliest time an attempt may start.
    fn not_before(&mut self, now_ms: u64) -> u64 {
        self.refill(now_ms);
        let token = match self.rate {
            Some((per_ms, _)) if self.tokens < 1.0 => {
                now_ms + ((1.0 - self.tokens) / per_ms).ceil() as u64
            }
            _ => now_ms,
        };
        token.max(self.paused_until)
    }

    fn is_idle(&self, now_ms: u64) -> bool {
        self.rate.is_none() && self.paused_until <= now_ms
    }
}

/// The fair scheduler.
#[derive(Debug)]
pub struct Scheduler {
    caps: Caps,
    lanes: HashMap<Arc<str>, Lane>,
    tenants: HashMap<Arc<str>, TenantState>,
    /// Tenants with a ready subscription and room under the tenant cap.
    ring: VecDeque<Arc<str>>,
    /// Lanes whose earliest item is not due yet, by that due time. Entries
    /// are checked against `Lane::timer` when popped (stale ones skipped).
    timers: BinaryHeap<Reverse<(u64, Arc<str>)>>,
    in_flight: u32,
    queued: u64,
    /// Every delivery queued or leased: pushing one of them again is a
    /// no-op, so publishing the same delivery twice (a re-sent event) can
    /// never start two attempts at once.
    known: HashSet<Arc<str>>,
    /// Subscriptions with a rate limit or a pause.
    paces: HashMap<Arc<str>, Pace>,
}

impl Scheduler {
    pub fn new(caps: Caps) -> Self {
        Scheduler {
            caps: Caps {
                global: caps.global.max(1),
                per_tenant: caps.per_tenant.max(1),
            },
            lanes: HashMap::new(),
            tenants: HashMap::new(),
            ring: VecDeque::new(),
            timers: BinaryHeap::new(),
            in_flight: 0,
            queued: 0,
            known: HashSet::new(),
            paces: HashMap::new(),
        }
    }

    /// Sets (or with None removes) a subscription's rate limit:
    /// `per_second` attempts a second, at most `burst` at once after a
    /// quiet spell. A new limit starts with a full bucket.
    pub fn set_rate(&mut self, subscription_id: &str, rate: Option<(f64, u32)>, now_ms: u64) {
        let wanted = rate.map(|(per_second, burst)| (per_second / 1000.0, f64::from(burst.max(1))));
        let current = self.paces.get(subscription_id).and_then(|p| p.rate);
        if current == wanted {
            return;
        }
        let pace = self.paces.entry(Arc::from(subscription_id)).or_default();
        pace.rate = wanted;
        pace.tokens = wanted.map_or(0.0, |(_, burst)| burst);
        pace.at_ms = now_ms;
        if pace.is_idle(now_ms) {
            self.paces.remove(subscription_id);
        }
        self.reschedule(subscription_id, now_ms);
    }

    /// No attempt of the subscription starts before `until_ms` (a
    /// receiver asked for a pause); a later pause extends it.
    pub fn pause(&mut self, subscription_id: &str, until_ms: u64, now_ms: u64) {
        if until_ms <= now_ms {
            return;
        }
        let pace = self.paces.entry(Arc::from(subscription_id)).or_default();
        pace.paused_until = pace.paused_until.max(until_ms);
        self.reschedule(subscription_id, now_ms);
    }

    /// When the subscription may next start an attempt (ms), if paced.
    fn gate(&mut self, subscription_id: &str, now_ms: u64) -> u64 {
        match self.paces.get_mut(subscription_id) {
            Some(pace) => {
                let at = pace.not_before(now_ms);
                if pace.is_idle(now_ms) {
                    self.paces.remove(subscription_id);
                }
                at
            }
            None => now_ms,
        }
    }

    /// A ready lane whose pace changed goes back through `refresh`.
    fn reschedule(&mut self, subscription_id: &str, now_ms: u64) {
        let Some(lane) = self.lanes.get_mut(subscription_id) else {
            return;
        };
        if lane.ready {
            lane.ready = false;
            let tenant_id = lane.tenant.clone();
            if let Some(t) = self.tenants.get_mut(&tenant_id) {
                t.ready.retain(|s| &**s != subscription_id);
            }
        }
        lane.timer = None;
        self.refresh(subscription_id, now_ms);
    }

    /// Queues a delivery, unless it is queued or leased already. `cap` is
    /// its subscription's in-flight cap (the latest value wins).
    pub fn push(
        &mut self,
        tenant_id: &str,
        subscription_id: &str,
        cap: u32,
        delivery_id: &str,
        due_ms: u64,
        now_ms: u64,
    ) {
        if self.known.contains(delivery_id) {
            return;
        }
        self.insert(tenant_id, subscription_id, cap, delivery_id, due_ms, now_ms);
    }

    fn insert(
        &mut self,
        tenant_id: &str,
        subscription_id: &str,
        cap: u32,
        delivery_id: &str,
        due_ms: u64,
        now_ms: u64,
    ) {
        let sub: Arc<str> = match self.lanes.get_key_value(subscription_id) {
            Some((k, _)) => k.clone(),
            None => Arc::from(subscription_id),
        };
        let tenant: Arc<str> = match self.tenants.get_key_value(tenant_id) {
            Some((k, _)) => k.clone(),
            None => Arc::from(tenant_id),
        };
        let lane = self.lanes.entry(sub.clone()).or_insert_with(|| Lane {
            tenant: tenant.clone(),
            queue: BTreeSet::new(),
            in_flight: 0,
            cap: 1,
            ready: false,
            timer: None,
        });
        lane.cap = cap.max(1);
        let id: Arc<str> = match self.known.get(delivery_id) {
            Some(id) => id.clone(),
            None => Arc::from(delivery_id),
        };
        if lane.queue.insert((due_ms, id.clone())) {
            self.queued += 1;
            self.tenants.entry(tenant).or_default().pending += 1;
        }
        self.known.insert(id);
        self.refresh(&sub, now_ms);
    }

    /// Changes a subscription's cap (an API change).
    pub fn set_cap(&mut self, subscription_id: &str, cap: u32, now_ms: u64) {
        let Some(lane) = self.lanes.get_mut(subscription_id) else {
            return;
        };
        lane.cap = cap.max(1);
        self.refresh(subscription_id, now_ms);
    }

    /// The next delivery to attempt, fairly, within the caps; None when
    /// nothing is due or every due item is blocked by a cap.
    pub fn lease(&mut self, now_ms: u64) -> Option<Lease> {
        self.promote(now_ms);
        if self.in_flight >= self.caps.global {
            return None;
        }
        while let Some(tenant_id) = self.ring.pop_front() {
            let tenant = self
                .tenants
                .get_mut(&tenant_id)
                .expect("ring names tenants");
            tenant.in_ring = false;
            if tenant.in_flight >= self.caps.per_tenant {
                // Back in the ring when one of its attempts completes.
                continue;
            }
            let Some(sub) = tenant.ready.pop_front() else {
                continue;
            };
            let lane = self.lanes.get_mut(&sub).expect("ready names lanes");
            lane.ready = false;
            let Some(first) = lane.queue.first().cloned() else {
                self.requeue_tenant(&tenant_id);
                continue;
            };
            if first.0 > now_ms || lane.in_flight >= lane.cap {
                self.refresh(&sub, now_ms);
                self.requeue_tenant(&tenant_id);
                continue;
            }
            if self.gate(&sub, now_ms) > now_ms {
                self.refresh(&sub, now_ms);
                self.requeue_tenant(&tenant_id);
                continue;
            }
            if let Some(pace) = self.paces.get_mut(&sub)
                && pace.rate.is_some()
            {
                pace.tokens -= 1.0;
            }
            let lane = self.lanes.get_mut(&sub).expect("ready names lanes");
            lane.queue.pop_first();
            lane.in_flight += 1;
            self.queued -= 1;
            self.in_flight += 1;
            tenant_mut(&mut self.tenants, &tenant_id).in_flight += 1;
            let lease = Lease {
                tenant_id: tenant_id.clone(),
                subscription_id: sub.clone(),
                delivery_id: first.1,
                due_ms: first.0,
            };
            self.refresh(&sub, now_ms);
            self.requeue_tenant(&tenant_id);
            return Some(lease);
        }
        None
    }

    /// Takes a slot of the global cap and of `tenant_id`'s for an attempt
    /// made outside the queue (a test event, a verification on create):
    /// false when either cap is full. Give it back with [`Self::release`].
    pub fn reserve(&mut self, tenant_id: &str) -> bool {
        if self.in_flight >= self.caps.global {
            return false;
        }
        let id: Arc<str> = Arc::from(tenant_id);
        let tenant = tenant_mut(&mut self.tenants, &id);
        if tenant.in_flight >= self.caps.per_tenant {
            return false;
        }
        tenant.in_flight += 1;
        self.in_flight += 1;
        true
    }

    /// Gives a [`Self::reserve`]d slot back.
    pub fn release(&mut self, tenant_id: &str) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let id: Arc<str> = Arc::from(tenant_id);
        let tenant = tenant_mut(&mut self.tenants, &id);
        tenant.in_flight = tenant.in_flight.saturating_sub(1);
        // Queued work of the tenant may have waited for this slot.
        self.requeue_tenant(&id);
    }

    /// Gives a lease back: the attempt is over. `next_due_ms` queues the
    /// delivery again (a retry); None means it is finished.
    pub fn complete(&mut self, lease: &Lease, next_due_ms: Option<u64>, now_ms: u64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let tenant = tenant_mut(&mut self.tenants, &lease.tenant_id);
        tenant.in_flight = tenant.in_flight.saturating_sub(1);
        tenant.pending = tenant.pending.saturating_sub(1);
        if let Some(lane) = self.lanes.get_mut(&lease.subscription_id) {
            lane.in_flight = lane.in_flight.saturating_sub(1);
        }
        match next_due_ms {
            Some(due) => {
                // The lane and tenant exist: the lease came from them.
                let cap = self.lanes.get(&lease.subscription_id).map_or(1, |l| l.cap);
                self.insert(
                    &lease.tenant_id,
                    &lease.subscription_id,
                    cap,
                    &lease.delivery_id,
                    due,
                    now_ms,
                );
            }
            None => {
                self.known.remove(&lease.delivery_id);
                self.refresh(&lease.subscription_id, now_ms)
            }
        }
        self.requeue_tenant(&lease.tenant_id);
        self.forget_if_idle(&lease.subscription_id);
    }

    /// Forgets the queued (not in-flight) deliveries of every subscription
    /// `drop` names: in cluster mode, when this node loses the partition
    /// they belong to (their new owner loads them from the records). An
    /// attempt still in flight completes as usual. Returns how many.
    pub fn drop_queued(&mut self, drop: impl Fn(&str, &str) -> bool) -> u64 {
        let subs: Vec<Arc<str>> = self
            .lanes
            .iter()
            .filter(|(s, lane)| drop(&lane.tenant, s.as_ref()))
            .map(|(s, _)| s.clone())
            .collect();
        let mut dropped = 0;
        for sub in subs {
            let lane = self.lanes.get_mut(&sub).expect("listed above");
            let items = std::mem::take(&mut lane.queue);
            lane.timer = None;
            let was_ready = std::mem::replace(&mut lane.ready, false);
            let tenant_id = lane.tenant.clone();
            let tenant = tenant_mut(&mut self.tenants, &tenant_id);
            if was_ready {
                tenant.ready.retain(|s| *s != sub);
            }
            tenant.pending = tenant.pending.saturating_sub(items.len() as u64);
            self.queued = self.queued.saturating_sub(items.len() as u64);
            dropped += items.len() as u64;
            for (_, id) in items {
                self.known.remove(&id);
            }
            self.forget_if_idle(&sub);
        }
        dropped
    }

    /// When the earliest not-yet-due item becomes due (ms), if any.
    pub fn next_due(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((due, _))| *due)
    }

    /// Deliveries queued or in flight for a tenant.
    pub fn tenant_pending(&self, tenant_id: &str) -> u64 {
        self.tenants.get(tenant_id).map_or(0, |t| t.pending)
    }

    /// Deliveries queued (not in flight) for a subscription.
    pub fn subscription_depth(&self, subscription_id: &str) -> usize {
        self.lanes.get(subscription_id).map_or(0, |l| l.queue.len())
    }

    /// Attempts in flight, all tenants together.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Deliveries queued, all tenants together.
    pub fn queued(&self) -> u64 {
        self.queued
    }

    /// Moves lanes whose timers are due into their tenants' ready rings.
    fn promote(&mut self, now_ms: u64) {
        while let Some(Reverse((due, _))) = self.timers.peek() {
            if *due > now_ms {
                break;
            }
            let Reverse((due, sub)) = self.timers.pop().expect("peeked");
            let live = self.lanes.get(&sub).is_some_and(|l| l.timer == Some(due));
            if live {
                self.lanes.get_mut(&sub).expect("live").timer = None;
                self.refresh(&sub, now_ms);
            }
        }
    }

    /// Puts a lane where its state says: its tenant's ready ring (due work,
    /// room under its cap), the timer heap (work due later), or nowhere.
    fn refresh(&mut self, sub: &str, now_ms: u64) {
        let Some((sub, _)) = self.lanes.get_key_value(sub) else {
            return;
        };
        let sub = sub.clone();
        let lane = self.lanes.get(&sub).expect("just found");
        let Some(due) = lane.queue.first().map(|(d, _)| *d) else {
            return;
        };
        if lane.in_flight >= lane.cap || lane.ready {
            return;
        }
        let due = due.max(self.gate(&sub, now_ms));
        let lane = self.lanes.get_mut(&sub).expect("just found");
        if due <= now_ms {
            lane.ready = true;
            let tenant_id = lane.tenant.clone();
            tenant_mut(&mut self.tenants, &tenant_id)
                .ready
                .push_back(sub);
            self.requeue_tenant(&tenant_id);
        } else if lane.timer.is_none_or(|t| due < t) {
            lane.timer = Some(due);
            self.timers.push(Reverse((due, sub)));
        }
    }

    /// Puts a tenant back in the ring when it has ready work and room.
    fn requeue_tenant(&mut self, tenant_id: &Arc<str>) {
        let per_tenant = self.caps.per_tenant;
        let tenant = tenant_mut(&mut self.tenants, tenant_id);
        if !tenant.in_ring && !tenant.ready.is_empty() && tenant.in_flight < per_tenant {
            tenant.in_ring = true;
            self.ring.push_back(tenant_id.clone());
        }
    }

    /// Drops the bookkeeping of a lane with nothing queued or in flight, so
    /// memory follows the work, not every subscription ever seen.
    fn forget_if_idle(&mut self, sub: &str) {
        if let Some(lane) = self.lanes.get(sub)
            && lane.queue.is_empty()
            && lane.in_flight == 0
            && !lane.ready
            && lane.timer.is_none()
        {
            let tenant_id = lane.tenant.clone();
            self.lanes.remove(sub);
            if let Some(t) = self.tenants.get(&tenant_id)
                && t.pending == 0
                && t.in_flight == 0
                && t.ready.is_empty()
                && !t.in_ring
            {
                self.tenants.remove(&tenant_id);
            }
        }
    }
}

fn tenant_mut<'a>(
    tenants: &'a mut HashMap<Arc<str>, TenantState>,
    id: &Arc<str>,
) -> &'a mut TenantState {
    tenants.entry(id.clone()).or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(global: u32, per_tenant: u32) -> Caps {
        Caps { global, per_tenant }
    }

    #[test]
    fn attempts_outside_the_queue_count_against_the_caps() {
        let mut s = Scheduler::new(caps(3, 2));
        assert!(s.reserve("a"));
        assert!(s.reserve("a"));
        assert!(!s.reserve("a"), "a's cap");
        assert!(s.reserve("b"));
        assert!(!s.reserve("c"), "the global cap");
        s.push("a", "sa", 8, "d1", 0, 0);
        assert_eq!(s.lease(0), None, "a's queued work waits for a slot");
        s.release("a");
        s.release("b");
        assert_eq!(
            s.lease(0).map(|l| l.delivery_id.to_string()),
            Some("d1".into())
        );
    }

    #[test]
    fn dropping_a_subscriptions_queue_keeps_the_rest_and_the_counts() {
        let mut s = Scheduler::new(caps(10, 10));
        for (sub, id, due) in [
            ("a", "1", 10),
            ("a", "2", 500),
            ("b", "3", 10),
            ("b", "4", 20),
        ] {
            s.push("t", sub, 1, id, due, 100);
        }
        let first = s.lease(100).unwrap();
        assert_eq!(
            s.drop_queued(|_, sub| sub == first.subscription_id.as_ref()),
            1
        );
        let other = if first.subscription_id.as_ref() == "a" {
            "b"
        } else {
            "a"
        };
        assert_eq!(s.subscription_depth(&first.subscription_id), 0);
        assert_eq!(s.subscription_depth(other), 2);
        assert_eq!(s.queued(), 2);
        assert_eq!(s.tenant_pending("t"), 3, "two queued and one in flight");
        // The in-flight attempt completes as usual; its subscription's
        // dropped items are never leased.
        s.complete(&first, None, 100);
        let rest: Vec<_> = drain(&mut s, 1_000)
            .into_iter()
            .map(|l| l.subscription_id)
            .collect();
        assert!(rest.iter().all(|sub| sub.as_ref() == other));
        // A dropped delivery can be queued again (its new owner's view).
        s.push("t", &first.subscription_id, 1, "again", 10, 100);
        assert_eq!(s.subscription_depth(&first.subscription_id), 1);
    }

    /// Leases everything leasable now, without completing.
    fn drain(s: &mut Scheduler, now: u64) -> Vec<Lease> {
        std::iter::from_fn(|| s.lease(now)).collect()
    }

    #[test]
    fn due_order_within_a_subscription() {
        let mut s = Scheduler::new(caps(10, 10));
        s.push("t", "s", 10, "b", 20, 100);
        s.push("t", "s", 10, "a", 10, 100);
        s.push("t", "s", 10, "c", 30, 100);
        let ids: Vec<_> = drain(&mut s, 100)
            .iter()
            .map(|l| l.delivery_id.to_string())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[test]
    fn nothing_before_its_time_then_a_timer_promotes_it() {
        let mut s = Scheduler::new(caps(10, 10));
        s.push("t", "s", 10, "later", 500, 100);
        assert_eq!(s.lease(100), None);
        assert_eq!(s.next_due(), Some(500));
        assert_eq!(s.lease(499), None);
        let l = s.lease(500).unwrap();
        assert_eq!(&*l.delivery_id, "later");
        assert_eq!(l.due_ms, 500);
    }

    #[test]
    fn an_earlier_item_for_a_waiting_lane_is_not_held_back_by_its_timer() {
        let mut s = Scheduler::new(caps(10, 10));
        s.push("t", "s", 10, "later", 500, 100);
        s.push("t", "s", 10, "now", 100, 100);
        assert_eq!(&*s.lease(100).unwrap().delivery_id, "now");
        assert_eq!(s.lease(100), None);
        // The stale-free timer for "later" still fires.
        assert_eq!(&*s.lease(500).unwrap().delivery_id, "later");
    }

    #[test]
    fn the_subscription_cap_holds_and_frees_on_completion() {
        let mut s = Scheduler::new(caps(100, 100));
        for i in 0..10 {
            s.push("t", "s", 3, &format!("d{i}"), 0, 0);
        }
        let leased = drain(&mut s, 0);
        assert_eq!(leased.len(), 3);
        s.complete(&leased[0], None, 0);
        let more = drain(&mut s, 0);
        assert_eq!(more.len(), 1);
        assert_eq!(&*more[0].delivery_id, "d3");
        assert_eq!(s.subscription_depth("s"), 6);
        assert_eq!(s.tenant_pending("t"), 9);
    }

    #[test]
    fn the_tenant_cap_holds_across_its_subscriptions() {
        let mut s = Scheduler::new(caps(100, 4));
        for sub in 0..10 {
            s.push("a", &format!("s{sub}"), 8, &format!("d{sub}"), 0, 0);
        }
        s.push("b", "sb", 8, "b1", 0, 0);
        let leased = drain(&mut s, 0);
        let of_a = leased.iter().filter(|l| &*l.tenant_id == "a").count();
        assert_eq!(of_a, 4, "tenant a holds at most its cap");
        assert!(leased.iter().any(|l| &*l.delivery_id == "b1"));
        // One of a's attempts ends: a gets exactly one more.
        let done = leased
            .iter()
            .find(|l| &*l.tenant_id == "a")
            .unwrap()
            .clone();
        s.complete(&done, None, 0);
        assert_eq!(drain(&mut s, 0).len(), 1);
    }

    #[test]
    fn the_global_cap_holds() {
        let mut s = Scheduler::new(caps(5, 100));
        for t in 0..10 {
            s.push(
                &format!("t{t}"),
                &format!("s{t}"),
                8,
                &format!("d{t}"),
                0,
                0,
            );
        }
        let leased = drain(&mut s, 0);
        assert_eq!(leased.len(), 5);
        assert_eq!(s.in_flight(), 5);
        s.complete(&leased[0], None, 0);
        assert_eq!(drain(&mut s, 0).len(), 1);
    }

    #[test]
    fn round_robin_across_tenants_not_by_backlog() {
        // Tenant a has 10,000 items due first, b has 5 due later: with one
        // worker free at a time, b's items are interleaved, never behind a's
        // whole backlog.
        let mut s = Scheduler::new(caps(1, 1));
        for i in 0..10_000 {
            s.push("a", "sa", 8, &format!("a{i:05}"), 0, 10);
        }
        for i in 0..5 {
            s.push("b", "sb", 8, &format!("b{i}"), 5, 10);
        }
        let mut order = Vec::new();
        for _ in 0..10 {
            let l = s.lease(10).unwrap();
            order.push(l.tenant_id.to_string());
            s.complete(&l, None, 10);
        }
        assert_eq!(order, ["a", "b", "a", "b", "a", "b", "a", "b", "a", "b"]);
    }

    #[test]
    fn round_robin_across_a_tenants_subscriptions() {
        let mut s = Scheduler::new(caps(1, 1));
        for i in 0..100 {
            s.push("t", "big", 8, &format!("big{i:03}"), 0, 0);
        }
        s.push("t", "small", 8, "small0", 1, 1);
        let mut subs = Vec::new();
        for _ in 0..4 {
            let l = s.lease(1).unwrap();
            subs.push(l.subscription_id.to_string());
            s.complete(&l, None, 1);
        }
        assert_eq!(subs, ["big", "small", "big", "big"]);
    }

    #[test]
    fn a_blocked_subscription_costs_nothing_and_others_flow() {
        // a's endpoint hangs: its 8 attempts never complete; 10,000 more
        // wait. b's work is leased at once.
        let mut s = Scheduler::new(caps(64, 16));
        for i in 0..10_000 {
            s.push("a", "hung", 8, &format!("a{i:05}"), 0, 0);
        }
        let held = drain(&mut s, 0);
        assert_eq!(held.len(), 8);
        // The blocked lane is in no ring and has no timer.
        assert!(s.ring.is_empty());
        assert!(s.timers.is_empty());
        for i in 0..5 {
            s.push("b", "ok", 8, &format!("b{i}"), 0, 0);
        }
        let got = drain(&mut s, 0);
        assert_eq!(got.len(), 5);
        assert!(got.iter().all(|l| &*l.tenant_id == "b"));
    }

    #[test]
    fn a_retry_goes_back_in_with_its_new_due_time() {
        let mut s = Scheduler::new(caps(10, 10));
        s.push("t", "s", 1, "d", 0, 0);
        let l = s.lease(0).unwrap();
        s.complete(&l, Some(60_000), 0);
        assert_eq!(s.lease(0), None);
        assert_eq!(s.tenant_pending("t"), 1);
        let again = s.lease(60_000).unwrap();
        assert_eq!(again.delivery_id, l.delivery_id);
        assert_eq!(again.due_ms, 60_000);
        s.complete(&again, None, 60_000);
        assert_eq!(s.tenant_pending("t"), 0);
        assert!(
            s.lanes.is_empty() && s.tenants.is_empty(),
            "idle state is dropped"
        );
    }

    #[test]
    fn pushing_the_same_item_twice_is_one_item() {
        let mut s = Scheduler::new(caps(10, 10));
        s.push("t", "s", 1, "d", 0, 0);
        s.push("t", "s", 1, "d", 0, 0);
        assert_eq!(s.queued(), 1);
        assert_eq!(s.tenant_pending("t"), 1);
    }

    #[test]
    fn a_leased_delivery_pushed_again_is_not_attempted_twice() {
        let mut s = Scheduler::new(caps(10, 10));
        s.push("t", "s", 8, "d", 0, 0);
        let l = s.lease(0).unwrap();
        s.push("t", "s", 8, "d", 0, 0);
        assert_eq!(s.lease(0), None, "d is in flight");
        s.complete(&l, None, 0);
        assert_eq!(s.lease(0), None);
        // Finished: a later push is new work again (a manual retry).
        s.push("t", "s", 8, "d", 5, 5);
        assert_eq!(&*s.lease(5).unwrap().delivery_id, "d");
    }

    #[test]
    fn raising_a_cap_releases_waiting_work() {
        let mut s = Scheduler::new(caps(10, 10));
        for i in 0..3 {
            s.push("t", "s", 1, &format!("d{i}"), 0, 0);
        }
        assert_eq!(drain(&mut s, 0).len(), 1);
        s.set_cap("s", 3, 0);
        assert_eq!(drain(&mut s, 0).len(), 2);
    }

    #[test]
    fn a_rate_limit_lets_a_burst_go_then_one_per_interval_and_holds_no_slot() {
        let mut s = Scheduler::new(caps(10, 10));
        s.set_rate("s", Some((10.0, 2)), 0);
        for i in 0..6 {
            s.push("t", "s", 8, &format!("d{i}"), 0, 0);
        }
        s.push("t", "other", 8, "o1", 0, 0);
        // The burst (2), and the unpaced subscription alongside.
        let first = drain(&mut s, 0);
        assert_eq!(first.len(), 3, "{first:?}");
        // The paced lane waits in the timer heap (no lease, no slot taken).
        assert_eq!(s.next_due(), Some(100));
        assert!(drain(&mut s, 99).is_empty());
        assert_eq!(drain(&mut s, 100).len(), 1);
        assert_eq!(drain(&mut s, 250).len(), 1, "tokens accrue, one at a time");
        assert_eq!(
            drain(&mut s, 1000).len(),
            2,
            "at most the burst after a pause"
        );
        // Removing the limit releases the rest at once.
        s.set_rate("s", None, 1000);
        for i in 6..9 {
            s.push("t", "s", 100, &format!("d{i}"), 1000, 1000);
        }
        assert_eq!(drain(&mut s, 1000).len(), 3);
    }

    #[test]
    fn a_pause_holds_the_whole_subscription_until_it_ends() {
        let mut s = Scheduler::new(caps(10, 10));
        s.push("t", "s", 8, "d1", 0, 0);
        s.push("t", "s", 8, "d2", 0, 0);
        s.push("t", "x", 8, "x1", 0, 0);
        s.pause("s", 30_000, 0);
        let leased: Vec<_> = drain(&mut s, 0)
            .into_iter()
            .map(|l| l.delivery_id)
            .collect();
        assert_eq!(leased, [Arc::from("x1")]);
        assert_eq!(s.next_due(), Some(30_000));
        // A shorter pause does not shorten it; time ends it.
        s.pause("s", 10_000, 5_000);
        assert!(drain(&mut s, 29_999).is_empty());
        assert_eq!(drain(&mut s, 30_000).len(), 2);
    }
}
