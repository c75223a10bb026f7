//! The one writer of acceptances: every request's events, deliveries and
//! outbox entries go to one thread, which turns all that arrived while it
//! was busy into **one sled transaction and one flush**.
//!
//! Why a thread of its own: in sled 0.34 every transaction (and every
//! `apply_batch`) takes the global write lock and rolls the log buffer
//! before and after itself, each roll a `pwrite` plus a waiting
//! `sync_file_range`. One transaction per request and one per attempt made
//! ~2.4 synchronous disk writes and ~15 context switches per event (`perf
//! stat` under `bench/e2e.sh`, see BENCHMARKS.md); one transaction per
//! group makes that cost per group, and the group grows with the load.
//! (Attempt records need no transaction: see [`Store::record_delivery`].)
//!
//! What each job is promised does not change: an acceptance is answered
//! once its writes are on disk; a `durable` call once everything written
//! before it is on disk. If a group's
//! transaction fails, its jobs are tried one by one, so one job's corrupt
//! record cannot fail the others.

use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::events::accept_tx;
use super::*;
use crate::util::failpoint_active;

/// At most this many jobs share a transaction: bounds the transaction's
/// write set and the wait of the group's first job.
const MAX_GROUP: usize = 512;

pub(super) enum Job {
    /// Store events with their deliveries; answered once on disk, with the
    /// batch given back.
    Accept {
        batch: Vec<NewEvent>,
        reply: oneshot::Sender<(Vec<NewEvent>, Result<Vec<Accepted>, StoreError>)>,
    },
    /// Answered once everything written before it is on disk.
    Durable {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// The trees the committer writes, and the database it flushes. Holds no
/// [`Store`], so the thread ends when the last store handle is dropped.
pub(super) struct Writer {
    pub(super) db: Db,
    pub(super) events: Tree,
    pub(super) events_by_time: Tree,
    pub(super) deliveries: Tree,
    pub(super) tenant_deliveries: Tree,
    pub(super) outbox: Tree,
    pub(super) held: Tree,
    pub(super) windows: Tree,
}

/// Starts the committer thread.
pub(super) fn start(writer: Writer) -> std::io::Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("wasmhook-commit".into())
        .spawn(move || writer.run(rx))?;
    Ok(tx)
}

impl Writer {
    fn run(self, jobs: mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match jobs.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            self.serve(group);
        }
    }

    /// One group: one transaction for its writes, then one flush if any job
    /// waits for the disk.
    fn serve(&self, group: Vec<Job>) {
        let writes = group
            .iter()
            .filter(|j| !matches!(j, Job::Durable { .. }))
            .count();
        let outcome = if writes == 0 {
            Ok(Vec::new())
        } else {
            self.transaction(&group)
        };
        let results = match outcome {
            Ok(results) => results,
            Err(e) if writes == 1 => vec![Err(e)],
            // One job's fault must not fail the others: each alone.
            Err(_) => group
                .iter()
                .filter(|j| !matches!(j, Job::Durable { .. }))
                .map(|job| {
                    self.transaction(std::slice::from_ref(job))
                        .map(|mut r| r.pop().unwrap_or(Ok(None)))
                        .and_then(|r| r)
                })
                .collect(),
        };
        let mut results = results.into_iter();

        let mut waiting = Vec::new();
        for job in group {
            match job {
                Job::Accept { batch, reply } => {
                    let result = results.next().unwrap_or(Ok(None));
                    waiting.push(Waiting::Accept(batch, reply, result));
                }
                Job::Durable { reply } => waiting.push(Waiting::Durable(reply)),
            }
        }
        if waiting.is_empty() {
            return;
        }
        if failpoint_active("accept-slow-commit")
            && waiting.iter().any(|w| matches!(w, Waiting::Accept(..)))
        {
            // Crash tests: a long window between the write and its fsync,
            // during which no worker may see the deliveries.
            std::thread::sleep(Duration::from_secs(2));
        }
        let flushed = self.db.flush().map(|_| ()).map_err(|e| e.to_string());
        for w in waiting {
            match w {
                Waiting::Durable(reply) => {
                    let _ = reply.send(flushed.clone().map_err(StoreError::Commit));
                }
                Waiting::Accept(batch, reply, result) => {
                    let result = match (result, &flushed) {
                        (Ok(accepted), Ok(())) => Ok(accepted.unwrap_or_default()),
                        (Err(e), _) => Err(e),
                        (Ok(_), Err(e)) => Err(StoreError::Commit(e.clone())),
                    };
                    let _ = reply.send((batch, result));
                }
            }
        }
    }

    /// The writes of `jobs` in one transaction: per acceptance, in order,
    /// its outcomes.
    #[allow(clippy::type_complexity)]
    fn transaction(
        &self,
        jobs: &[Job],
    ) -> Result<Vec<Result<Option<Vec<Accepted>>, StoreError>>, StoreError> {
        let events: Vec<&NewEvent> = jobs
            .iter()
            .filter_map(|j| match j {
                Job::Accept { batch, .. } => Some(batch.iter()),
                _ => None,
            })
            .flatten()
            .collect();
        let holds = events
            .iter()
            .any(|n| !n.held.is_empty() || !n.released.is_empty());
        // A transaction locks every tree it names: the window trees only
        // when something is held or taken (rare).
        let write = |[e, t, d, td, o]: [&TransactionalTree; 5],
                     windows: Option<(&TransactionalTree, &TransactionalTree)>| {
            let mut accepted = accept_tx(&events, [e, t, d, td, o], windows)?.into_iter();
            let mut out = Vec::with_capacity(jobs.len());
            for job in jobs {
                match job {
                    Job::Accept { batch, .. } => {
                        out.push(Ok(Some(accepted.by_ref().take(batch.len()).collect())));
                    }
                    Job::Durable { .. } => {}
                }
            }
            Ok(out)
        };
        let trees = (
            &self.events,
            &self.events_by_time,
            &self.deliveries,
            &self.tenant_deliveries,
            &self.outbox,
        );
        if holds {
            (
                &self.events,
                &self.events_by_time,
                &self.deliveries,
                &self.tenant_deliveries,
                &self.outbox,
                &self.held,
                &self.windows,
            )
                .transaction(|(e, t, d, td, o, h, w)| write([e, t, d, td, o], Some((h, w))))
                .map_err(tx_error)
        } else {
            trees
                .transaction(|(e, t, d, td, o)| write([e, t, d, td, o], None))
                .map_err(tx_error)
        }
    }
}

enum Waiting {
    Accept(
        Vec<NewEvent>,
        oneshot::Sender<(Vec<NewEvent>, Result<Vec<Accepted>, StoreError>)>,
        Result<Option<Vec<Accepted>>, StoreError>,
    ),
    Durable(oneshot::Sender<Result<(), StoreError>>),
}
