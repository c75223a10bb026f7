//! Reads without a round trip: **read leases** on the control log.
//!
//! A request must see every write acknowledged before it, whichever node
//! made it. Without leases a node makes sure of that by asking the stream
//! where it ends and applying up to there ([`Log::reach_end`]): one
//! JetStream API round trip to the stream's leader per round of requests,
//! the largest single cost of a partitioned cluster's request (BENCHMARKS.md,
//! "Issue 25, sixth pass").
//!
//! With leases the wait moves to the rare side, the writes:
//!
//! - Each node renews its **lease** by writing a record of its own to the
//!   log (tree [`TREE`]: its lease time and a fresh id, every third of the
//!   lease). It serves reads from its view, without asking the stream,
//!   until `ttl × 4/5` after it *sent* the renewal, counted only once its own
//!   view has applied that renewal, and only while every node the partition
//!   leases know of has a record (a node of an older version, which would
//!   not wait, keeps every node asking the log).
//! - A control write, once in the log at sequence `s` and applied here, is
//!   acknowledged only when every other node whose lease record this view
//!   holds has applied `s` (it asks each over core NATS), or that node's
//!   lease has run out: the lease time its record gives, after this view
//!   applied its latest renewal (which is after the node sent it).
//!
//! Why that is enough: a node serving a read under a renewal `R` either has
//! `R` before `s` in the log (then the writer saw `R` and waited for the
//! node, or for the end of the lease `R` gives), or after `s` (then the
//! node applied `s` before `R`, in the log's order, and `R` counts only once
//! applied). A node that joins writes its record before its first lease
//! read; a node that leaves stops reading under its lease before it removes
//! its record. Only durations measured on one machine are compared, never
//! two machines' clocks; the fifth kept back covers clocks that run at
//! slightly different rates, and the reader counts in `CLOCK_BOOTTIME`, which
//! goes on while the machine is suspended (a writer's clock that stops only
//! makes it wait longer).
//!
//! The cost: a write waits for one core NATS round trip to each other node,
//! and for up to a lease after a node dies without leaving (its record then
//! stays, and is removed by the others once it is ten leases old). Writes
//! a node makes on its own ([`unacknowledged`]: a delivery's failure count,
//! a poll's state) do not wait: no client is told of them, and the tenant's
//! requests go to the node that made them. A change no client has been told
//! of yet may be seen on the node that wrote it a moment before the others;
//! so may what a change that writes nothing read there (a re-run finding
//! its effect already made): no change answers success on that alone today.
//! Only partitioned clusters use this: there the control log carries the
//! rare writes (tenants, keys, subscriptions), the data has its own logs,
//! and a tenant's requests all go to one node anyway.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::log::{Batch, Log, Outcome, Recorder};
use crate::cluster::ClusterError;

/// The control tree of lease records: node id → its lease time (ms, 8
/// bytes) and a fresh id per renewal.
pub const TREE: &str = "readers";

/// How long a node answers "have you applied `s`?" before saying where it
/// is (the writer then asks again).
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// A record whose node has not renewed for this many leases is removed.
const FORGET_AFTER_LEASES: u32 = 10;

/// A record that does not say its lease time (or says more): waited for as
/// long as the longest lease `cluster.read_lease_secs` allows.
const LONGEST_LEASE: Duration = Duration::from_secs(60);

/// How often a node that does not read under leases (but waits for the
/// others') says so.
const WAIT_ONLY_RENEWAL: Duration = Duration::from_secs(2);

/// After an answer below the sequence asked for, or an error: a pause
/// before asking again.
const ASK_AGAIN_AFTER: Duration = Duration::from_millis(50);

fn subject(node: &str) -> String {
    format!("wasmhook.readers.{node}")
}

tokio::task_local! {
    static UNACKNOWLEDGED: ();
}

/// Runs `f` as work a node does on its own (a delivery attempt, a poll):
/// its control writes do not wait for the other nodes' views.
pub async fn unacknowledged<F: Future>(f: F) -> F::Output {
    UNACKNOWLEDGED.scope((), f).await
}

/// Whether the current task's writes are acknowledged to a client.
pub(super) fn acknowledged() -> bool {
    UNACKNOWLEDGED.try_with(|_| ()).is_err()
}

/// Whether a batch only renews or removes lease records (it changes
/// nothing a request reads, so no other node is waited for).
pub fn only_leases(batch: &Batch) -> bool {
    !batch.writes.is_empty() && batch.writes.iter().all(|w| w.tree == TREE)
}

/// The time since boot, suspended time included.
fn boot_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A record's lease time; [`LONGEST_LEASE`] when it does not say.
fn lease_of(value: &[u8]) -> Duration {
    value
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(|b| Duration::from_millis(u64::from_be_bytes(b)))
        .filter(|d| *d <= LONGEST_LEASE)
        .unwrap_or(LONGEST_LEASE)
}

/// Another node's lease as this view knows it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// When this view applied its latest renewal.
    at: Instant,
    /// The lease time that renewal gives.
    lease: Duration,
}

/// Who the cluster's nodes are (the partition leases' heartbeats); None
/// while not known.
pub type Members = Arc<dyn Fn() -> Option<HashSet<String>> + Send + Sync>;

/// One node's read leases: its own, and what its view says of the others'.
pub struct Readers {
    node: String,
    client: async_nats::Client,
    /// This node's lease time; None: it waits for the others' but never
    /// reads under one (`cluster.read_lease_secs = 0`).
    ttl: Option<Duration>,
    members: Members,
    seen: Mutex<HashMap<String, Seen>>,
    /// Until when (boot time) this node reads from its view without asking
    /// the log.
    until: Mutex<Option<Duration>>,
    /// Whether every member has a record (checked at each renewal).
    all_lease: AtomicBool,
    /// Set when the node leaves: its lease is never extended again.
    left: AtomicBool,
    /// Held across a renewal: the removal of the record when the node
    /// leaves comes after any renewal in the log.
    renewing: tokio::sync::Mutex<Option<Vec<u8>>>,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Drop for Readers {
    fn drop(&mut self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

impl Readers {
    /// Starts the leases of `log`'s node: follows the records its view
    /// applies, learns those it has, answers other writers, and renews its
    /// own from now on (its first lease read comes after its first renewal
    /// is applied).
    pub(super) async fn start(
        log: &Arc<Log>,
        ttl: Option<Duration>,
        members: Members,
        applied: watch::Receiver<u64>,
    ) -> Result<Arc<Self>, ClusterError> {
        let node = log.node().to_string();
        let client = log.client();
        let readers = Arc::new(Readers {
            node: node.clone(),
            client: client.clone(),
            ttl,
            members,
            seen: Mutex::default(),
            until: Mutex::new(None),
            all_lease: AtomicBool::new(false),
            left: AtomicBool::new(false),
            renewing: tokio::sync::Mutex::new(None),
            tasks: Mutex::default(),
        });
        // The hook first, then what the view has: a renewal applied in
        // between is not missed.
        let follower = Arc::downgrade(&readers);
        log.view().on_applied(Box::new(move |batch| {
            if let Some(readers) = follower.upgrade() {
                readers.note(batch);
            }
        }));
        // Records applied before this start: when is not known, so now (a
        // later time only makes a writer wait longer).
        let now = Instant::now();
        for entry in log.view().tree(TREE)?.iter() {
            let (key, value) = entry?;
            let other = String::from_utf8_lossy(&key).into_owned();
            if other != node {
                readers.lock_seen().entry(other).or_insert(Seen {
                    at: now,
                    lease: lease_of(&value),
                });
            }
        }
        let mut questions = client
            .subscribe(subject(&node))
            .await
            .map_err(ClusterError::jetstream)?;
        client.flush().await.map_err(ClusterError::jetstream)?;
        let answers = tokio::spawn(async move {
            while let Some(question) = questions.next().await {
                let (Some(reply), Ok(bytes)) = (
                    question.reply,
                    <[u8; 8]>::try_from(question.payload.as_ref()),
                ) else {
                    continue;
                };
                let wanted = u64::from_be_bytes(bytes);
                let (client, mut applied) = (client.clone(), applied.clone());
                tokio::spawn(async move {
                    // The applier gone: no answer (the writer waits the
                    // lease out).
                    let gone =
                        tokio::time::timeout(ANSWER_WITHIN, applied.wait_for(|a| *a >= wanted))
                            .await
                            .is_ok_and(|r| r.is_err());
                    if gone {
                        return;
                    }
                    let at = *applied.borrow();
                    let _ = client
                        .publish(reply, at.to_be_bytes().to_vec().into())
                        .await;
                });
            }
        });
        let renewals = tokio::spawn(renew(Arc::downgrade(log), Arc::downgrade(&readers)));
        readers
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([answers.abort_handle(), renewals.abort_handle()]);
        Ok(readers)
    }

    fn lock_seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a read may be served from the view now.
    pub fn holds(&self) -> bool {
        self.all_lease.load(Ordering::Acquire)
            && self
                .until
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|until| boot_now() < until)
    }

    /// Whether this view holds a lease record of `node`.
    #[cfg(test)]
    pub fn knows(&self, node: &str) -> bool {
        self.lock_seen().contains_key(node)
    }

    /// Until when this node's writes wait for `node` (its lease by this
    /// view), if they do.
    #[cfg(test)]
    pub fn waits_for_until(&self, node: &str) -> Option<Instant> {
        self.lock_seen().get(node).map(|s| s.at + s.lease)
    }

    /// A renewal sent at `sent` (boot time) is in this node's view.
    fn extend(&self, sent: Duration, ttl: Duration) {
        let mut until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        if self.left.load(Ordering::SeqCst) {
            return;
        }
        let end = sent + ttl * 4 / 5;
        *until = Some(until.map_or(end, |u| u.max(end)));
    }

    /// Stops reading under the lease (before its record goes).
    fn end(&self) {
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The view applied `batch`: the lease records it renews or removes.
    fn note(&self, batch: &Batch) {
        let now = Instant::now();
        let mut seen = self.lock_seen();
        for w in batch.writes.iter().filter(|w| w.tree == TREE) {
            let other = String::from_utf8_lossy(&w.key).into_owned();
            if other == self.node {
                continue;
            }
            match &w.value {
                Some(value) => seen.insert(
                    other,
                    Seen {
                        at: now,
                        lease: lease_of(value),
                    },
                ),
                None => seen.remove(&other),
            };
        }
    }

    /// Whether every member the partition leases know of (but this node)
    /// has a lease record here: a node without one (an older version)
    /// would acknowledge writes without waiting for anyone.
    fn check_members(&self) {
        let all = match (self.members)() {
            None => false,
            Some(members) => {
                let seen = self.lock_seen();
                members
                    .iter()
                    .all(|m| *m == self.node || seen.contains_key(m))
            }
        };
        self.all_lease.store(all, Ordering::Release);
    }

    /// A write at `seq`, applied here: waits until every other node under
    /// lease has applied it too, or its lease has run out.
    pub async fn wait_for_others(&self, seq: u64) {
        let now = Instant::now();
        let others: Vec<(String, Instant)> = self
            .lock_seen()
            .iter()
            .map(|(node, s)| (node.clone(), s.at + s.lease))
            .filter(|(_, until)| *until > now)
            .collect();
        futures_util::future::join_all(
            others
                .iter()
                .map(|(node, until)| self.wait_for(node, *until, seq)),
        )
        .await;
    }

    async fn wait_for(&self, node: &str, until: Instant, seq: u64) {
        let subject = subject(node);
        loop {
            let now = Instant::now();
            if now >= until {
                tracing::debug!(node, seq, "a write waited out a node's read lease");
                return;
            }
            let request = async_nats::Request::new()
                .payload(seq.to_be_bytes().to_vec().into())
                .timeout(Some((until - now).min(ANSWER_WITHIN * 2)));
            let reached = match self.client.send_request(subject.clone(), request).await {
                Ok(answer) => <[u8; 8]>::try_from(answer.payload.as_ref())
                    .is_ok_and(|b| u64::from_be_bytes(b) >= seq),
                Err(e) => {
                    tracing::debug!(node, seq, error = %e, "asking a node whether it applied a write");
                    false
                }
            };
            if reached {
                return;
            }
            // Behind, gone, or not yet answering: ask again shortly (its
            // lease runs out meanwhile if it never answers).
            let left = until.saturating_duration_since(Instant::now());
            tokio::time::sleep(left.min(ASK_AGAIN_AFTER)).await;
        }
    }

    /// The node leaves: no lease read from now on, and its record removed
    /// (if it is still the one this node wrote) so that writers stop
    /// waiting for it.
    pub async fn leave(&self, log: &Log) {
        self.left.store(true, Ordering::SeqCst);
        self.end();
        let last = self.renewing.lock().await;
        let Some(mine) = last.as_ref() else {
            return;
        };
        let mut r = Recorder::new(log.view());
        if r.get(TREE, self.node.as_bytes()).ok().flatten().as_ref() != Some(mine) {
            return;
        }
        r.remove(TREE, self.node.as_bytes());
        if let Err(e) = log.publish(&r.into_batch(&self.node)).await {
            tracing::debug!(error = %e, "removing this node's read lease record");
        }
    }
}

/// Renews the node's lease every third of it, keeps the member check
/// current, and removes the records of nodes gone for
/// [`FORGET_AFTER_LEASES`] leases.
async fn renew(log: Weak<Log>, readers: Weak<Readers>) {
    loop {
        let (Some(log), Some(readers)) = (log.upgrade(), readers.upgrade()) else {
            return;
        };
        if log.has_failed() {
            // The view no longer follows the log: renewing would only make
            // writers wait for a node that cannot answer.
            return;
        }
        {
            let mut last = readers.renewing.lock().await;
            if readers.left.load(Ordering::SeqCst) {
                return;
            }
            let sent = boot_now();
            let lease = readers.ttl.unwrap_or_default();
            let mut value = (lease.as_millis() as u64).to_be_bytes().to_vec();
            value.extend_from_slice(&ulid::Ulid::new().to_bytes());
            let mut r = Recorder::new(log.view());
            r.insert(TREE, readers.node.as_bytes(), value.clone());
            match log.publish(&r.into_batch(&readers.node)).await {
                Ok(Outcome::Applied { .. }) => {
                    *last = Some(value);
                    if let Some(ttl) = readers.ttl {
                        readers.extend(sent, ttl);
                    }
                }
                Ok(conflict) => tracing::debug!(?conflict, "renewing the read lease"),
                Err(e) => tracing::debug!(error = %e, "renewing the read lease"),
            }
        }
        readers.check_members();
        let stale: Vec<String> = readers
            .lock_seen()
            .iter()
            .filter(|(_, s)| s.at.elapsed() > s.lease.max(WAIT_ONLY_RENEWAL) * FORGET_AFTER_LEASES)
            .map(|(node, _)| node.clone())
            .collect();
        for node in stale {
            if matches!(log.view().tree(TREE).map(|t| t.get(&node)), Ok(Ok(None))) {
                // Removed already (read at start just before its removal
                // was applied): nothing left to wait for or remove.
                readers.lock_seen().remove(&node);
                continue;
            }
            // Guarded by the record read: a renewal since conflicts. Apart
            // from the renewals, so a slow removal does not delay them.
            let log = log.clone();
            tokio::spawn(async move {
                let mut r = Recorder::new(log.view());
                if matches!(r.get(TREE, node.as_bytes()), Ok(Some(_))) {
                    r.remove(TREE, node.as_bytes());
                    let _ = log.publish(&r.into_batch(log.node())).await;
                }
            });
        }
        let every = readers.ttl.map_or(WAIT_ONLY_RENEWAL, |t| t / 3);
        drop((log, readers));
        tokio::time::sleep(every).await;
    }
}
