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
//!   log (tree [`TREE`], every third of the lease). It serves reads from its
//!   view, without asking the stream, until `ttl × 4/5` after it *sent* the
//!   renewal, counted only once its own view has applied that renewal.
//! - A control write, once in the log at sequence `s` and applied here, is
//!   acknowledged to its client only when every other node whose lease
//!   record this view holds has applied `s` (it asks each over core NATS),
//!   or that node's lease has run out: `ttl` after this view applied its
//!   latest renewal, which is after the node sent it.
//!
//! Why that is enough: a node serving a read under a renewal `R` either has
//! `R` before `s` in the log (then the writer saw `R` and waited for the
//! node, or for the end of the lease `R` gives), or after `s` (then the
//! node applied `s` before `R`, in the log's order, and `R` counts only once
//! applied). A node that joins writes its record before its first lease
//! read; a node that leaves stops reading under its lease before it removes
//! its record. Only durations measured on one machine are compared, never
//! two machines' clocks; the fifth kept back covers clocks that run at
//! slightly different rates.
//!
//! The cost: a write waits for one core NATS round trip to each other node,
//! and for up to `ttl` after a node dies without leaving (its record then
//! stays, and is removed by the others once it is ten leases old). A
//! change that no client has been told of yet may be seen on the node that
//! wrote it a moment before the others. Only partitioned clusters use
//! this: there the control log carries the rare writes (tenants, keys,
//! subscriptions), the data has its own logs, and a tenant's requests all go
//! to one node anyway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::log::{Batch, Log, Outcome, Recorder};
use crate::cluster::ClusterError;

/// The control tree of lease records: node id → a fresh value per renewal.
pub const TREE: &str = "readers";

/// How long a node answers "have you applied `s`?" before saying where it
/// is (the writer then asks again).
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// A record whose node has not renewed for this many leases is removed.
const FORGET_AFTER_LEASES: u32 = 10;

fn subject(node: &str) -> String {
    format!("wasmhook.readers.{node}")
}

/// Whether a batch only renews or removes lease records (it changes
/// nothing a request reads, so no other node is waited for).
pub fn only_leases(batch: &Batch) -> bool {
    !batch.writes.is_empty() && batch.writes.iter().all(|w| w.tree == TREE)
}

/// One node's read leases: its own, and what its view says of the others'.
pub struct Readers {
    node: String,
    client: async_nats::Client,
    ttl: Duration,
    /// When this view applied each other node's latest renewal.
    seen: Mutex<HashMap<String, Instant>>,
    /// Until when this node reads from its view without asking the log.
    until: Mutex<Option<Instant>>,
    /// Set when the node leaves: its lease is never extended again.
    left: std::sync::atomic::AtomicBool,
    /// Held across a renewal: the removal of the record when the node
    /// leaves comes after any renewal in the log.
    renewing: tokio::sync::Mutex<()>,
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
    /// Starts the leases of `log`'s node: learns the records the view has,
    /// follows the ones it applies, answers other writers, and renews its
    /// own from now on (its first lease read comes after its first renewal
    /// is applied).
    pub(super) async fn start(
        log: &Arc<Log>,
        ttl: Duration,
        applied: watch::Receiver<u64>,
    ) -> Result<Arc<Self>, ClusterError> {
        let node = log.node().to_string();
        let client = log.client();
        let now = Instant::now();
        // Records applied before this start: when is not known, so now (a
        // later time only makes a writer wait longer).
        let mut seen = HashMap::new();
        for entry in log.view().tree(TREE)?.iter() {
            let (key, _) = entry?;
            let other = String::from_utf8_lossy(&key).into_owned();
            if other != node {
                seen.insert(other, now);
            }
        }
        let readers = Arc::new(Readers {
            node: node.clone(),
            client: client.clone(),
            ttl,
            seen: Mutex::new(seen),
            until: Mutex::new(None),
            left: Default::default(),
            renewing: Default::default(),
            tasks: Mutex::default(),
        });
        let follower = Arc::downgrade(&readers);
        log.view().on_applied(Box::new(move |batch| {
            if let Some(readers) = follower.upgrade() {
                readers.note(batch);
            }
        }));
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
                    let _ = tokio::time::timeout(ANSWER_WITHIN, applied.wait_for(|a| *a >= wanted))
                        .await;
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

    /// Whether a read may be served from the view now.
    pub fn holds(&self) -> bool {
        self.until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    /// Whether this view holds a lease record of `node`.
    #[cfg(test)]
    pub fn knows(&self, node: &str) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(node)
    }

    /// A renewal sent at `sent` is in this node's view.
    fn extend(&self, sent: Instant) {
        let mut until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        let end = sent + self.ttl * 4 / 5;
        *until = Some(until.map_or(end, |u| u.max(end)));
    }

    /// Stops reading under the lease (before its record goes).
    fn end(&self) {
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The view applied `batch`: the lease records it renews or removes.
    fn note(&self, batch: &Batch) {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for w in batch.writes.iter().filter(|w| w.tree == TREE) {
            let other = String::from_utf8_lossy(&w.key).into_owned();
            if other == self.node {
                continue;
            }
            match w.value {
                Some(_) => seen.insert(other, now),
                None => seen.remove(&other),
            };
        }
    }

    /// A write at `seq`, applied here: waits until every other node under
    /// lease has applied it too, or its lease has run out.
    pub async fn wait_for_others(&self, seq: u64) {
        let now = Instant::now();
        let others: Vec<(String, Instant)> = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(node, at)| (node.clone(), *at + self.ttl))
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
            match self.client.send_request(subject.clone(), request).await {
                Ok(answer) => {
                    if <[u8; 8]>::try_from(answer.payload.as_ref())
                        .is_ok_and(|b| u64::from_be_bytes(b) >= seq)
                    {
                        return;
                    }
                }
                Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    // Gone (or not yet answering): its lease runs out.
                    tokio::time::sleep((until - now).min(Duration::from_millis(100))).await;
                }
                Err(_) => {}
            }
        }
    }

    /// The node leaves: no lease read from now on, and its record removed
    /// so that writers stop waiting for it.
    pub async fn leave(&self, log: &Log) {
        let _renewing = self.renewing.lock().await;
        self.left.store(true, std::sync::atomic::Ordering::SeqCst);
        self.end();
        let mut r = Recorder::new(log.view());
        r.remove(TREE, self.node.as_bytes());
        if let Err(e) = log.publish(&r.into_batch(&self.node)).await {
            tracing::debug!(error = %e, "removing this node's read lease record");
        }
    }
}

/// Renews the node's lease every third of it, and removes the records of
/// nodes gone for [`FORGET_AFTER_LEASES`] leases.
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
            let _renewing = readers.renewing.lock().await;
            if readers.left.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let sent = Instant::now();
            let mut r = Recorder::new(log.view());
            let fresh = ulid::Ulid::new().to_bytes().to_vec();
            r.insert(TREE, readers.node.as_bytes(), fresh);
            match log.publish(&r.into_batch(&readers.node)).await {
                Ok(Outcome::Applied { .. }) => readers.extend(sent),
                Ok(conflict) => tracing::debug!(?conflict, "renewing the read lease"),
                Err(e) => tracing::debug!(error = %e, "renewing the read lease"),
            }
        }
        let stale: Vec<String> = readers
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, at)| at.elapsed() > readers.ttl * FORGET_AFTER_LEASES)
            .map(|(node, _)| node.clone())
            .collect();
        for node in stale {
            // Guarded by the record read: a renewal since conflicts.
            let mut r = Recorder::new(log.view());
            if matches!(r.get(TREE, node.as_bytes()), Ok(Some(_))) {
                r.remove(TREE, node.as_bytes());
                let _ = log.publish(&r.into_batch(&readers.node)).await;
            }
        }
        let every = readers.ttl / 3;
        drop((log, readers));
        tokio::time::sleep(every).await;
    }
}
