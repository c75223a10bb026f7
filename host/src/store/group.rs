//! Cluster mode: concurrent acceptances share one batch of the log, as the
//! embedded committer makes them share one transaction and one flush.
//!
//! Each batch costs a publish acknowledged at the stream's replication and
//! a transaction on every node's view, whatever its size. So acceptances
//! wait in a queue; a few groups are in flight at once ([`IN_FLIGHT`]), and
//! each takes everything that queued while the others were being written
//! (up to [`MAX_EVENTS`]). A group that fails is retried one acceptance at
//! a time, so that one caller's fault is not another's.

use std::sync::{Arc, Weak};

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{Accepted, NewEvent, StoreError, Trees};

/// Groups written at once: a publish's round trip is spent waiting, so a
/// second group fills while the first is acknowledged.
const IN_FLIGHT: usize = 4;
/// Events in one group at most (a batch larger than a NATS message goes
/// in parts, which costs more round trips).
const MAX_EVENTS: usize = 1000;

type Reply = oneshot::Sender<(Vec<NewEvent>, Result<Vec<Accepted>, StoreError>)>;

struct Job {
    batch: Vec<NewEvent>,
    reply: Reply,
}

/// The queue in front of the log's acceptances.
pub(super) struct Grouper {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Grouper {
    /// Starts the grouping task. It holds the store weakly: it ends when
    /// the store is dropped.
    pub(super) fn start(trees: Weak<Trees>) -> Self {
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(trees, rx));
        Grouper { jobs }
    }

    /// Stores `batch` within a group: the batch given back with its
    /// outcomes.
    pub(super) async fn accept(
        &self,
        batch: Vec<NewEvent>,
    ) -> Result<(Vec<NewEvent>, Vec<Accepted>), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { batch, reply })
            .map_err(|_| StoreError::Commit("the acceptance queue stopped".into()))?;
        let (batch, result) = answer
            .await
            .map_err(|_| StoreError::Commit("the acceptance queue stopped".into()))?;
        Ok((batch, result?))
    }
}

async fn run(trees: Weak<Trees>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Whatever queued while waiting for a slot joins the group.
        let mut events = first.batch.len();
        let mut jobs = vec![first];
        while events < MAX_EVENTS {
            match rx.try_recv() {
                Ok(job) => {
                    events += job.batch.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let Some(trees) = trees.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            write_group(&super::Store(trees), jobs).await;
            drop(slot);
        });
    }
}

/// One change for the whole group; on failure, each job alone.
async fn write_group(store: &super::Store, jobs: Vec<Job>) {
    let all: Vec<&NewEvent> = jobs.iter().flat_map(|j| j.batch.iter()).collect();
    let result = store.accept_in_log(&all).await;
    drop(all);
    match result {
        Ok(accepted) => {
            // In the order of the events: each job takes its share.
            let mut rest = accepted.into_iter();
            for job in jobs {
                let mine: Vec<Accepted> = rest.by_ref().take(job.batch.len()).collect();
                let _ = job.reply.send((job.batch, Ok(mine)));
            }
        }
        Err(e) if jobs.len() == 1 => {
            let job = jobs.into_iter().next().expect("one job");
            let _ = job.reply.send((job.batch, Err(e)));
        }
        Err(_) => {
            for job in jobs {
                let events: Vec<&NewEvent> = job.batch.iter().collect();
                let result = store.accept_in_log(&events).await;
                drop(events);
                let _ = job.reply.send((job.batch, result));
            }
        }
    }
}
