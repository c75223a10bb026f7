//! Applying batches to views, and one applier thread per database for
//! every view of it.
//!
//! A node's views share one sled database (the control log's and, in a
//! partitioned cluster, each held partition's). Every sled transaction
//! costs waiting disk writes whatever its size (a `pwrite` and a
//! `sync_file_range` before and after), and a partition's log alone seldom
//! has many batches waiting. So the views hand their groups to one thread
//! ([`Coalescer`]) that applies whatever groups wait, of every view, in one
//! transaction. The views' batches touch disjoint keys (each log its own),
//! so applying them together gives each view what applying it alone gives.

use std::sync::{Arc, mpsc};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::oneshot;

use super::{Applying, Batch, ClusterError, Outcome, View, digest};

/// The outcomes of one view's group, or why it was not applied.
pub(super) type GroupResult = Result<Vec<Outcome>, ClusterError>;

/// Applies each view's group (consecutive batches of its log) in one sled
/// transaction, as [`View::apply_group`] describes for one. All views are
/// of one database. A closed view's group is refused (`Stopped`).
pub(super) fn apply_groups(
    jobs: &[(&View, &[Applying<'_>])],
) -> Result<Vec<GroupResult>, ClusterError> {
    let Some((first, _)) = jobs.first() else {
        return Ok(Vec::new());
    };
    // Held through the transaction (a view's records are not dropped
    // meanwhile); a view closed before applies nothing.
    let applying: Vec<_> = jobs
        .iter()
        .map(|(view, _)| view.applying.lock().unwrap_or_else(|e| e.into_inner()))
        .collect();
    let open: Vec<bool> = jobs.iter().map(|(view, _)| !view.is_closed()).collect();
    let mut applied = Vec::with_capacity(jobs.len());
    for (view, _) in jobs {
        applied.push(view.applied()?);
    }
    // The trees the batches touch, each once, then the log tree last.
    let mut names: Vec<&str> = jobs
        .iter()
        .zip(&open)
        .filter(|(_, open)| **open)
        .flat_map(|((_, group), _)| group.iter())
        .flat_map(|a| {
            a.batch
                .guards
                .iter()
                .map(|g| g.tree.as_str())
                .chain(a.batch.writes.iter().map(|w| w.tree.as_str()))
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut trees = names
        .iter()
        .map(|n| first.tree(n))
        .collect::<Result<Vec<_>, _>>()?;
    trees.push(first.log.clone());
    let index = |name: &str| names.binary_search(&name).expect("collected above");
    let result = trees.as_slice().transaction(|tx| {
        let log = tx.last().expect("the log tree");
        let mut all = Vec::with_capacity(jobs.len());
        for (j, (view, group)) in jobs.iter().enumerate() {
            // Each outcome, and whether the batch was new to the view.
            let mut outcomes = Vec::with_capacity(group.len());
            if !open[j] {
                all.push(outcomes);
                continue;
            }
            let mut last = applied[j];
            'batches: for a in group.iter() {
                // A sequence at or below the applied one: seen before.
                if a.seq <= last {
                    outcomes.push((Outcome::Applied { seq: a.seq }, false));
                    continue;
                }
                last = a.seq;
                for key in a.parts {
                    log.remove(key.as_slice())?;
                }
                for g in &a.batch.guards {
                    let found = tx[index(&g.tree)].get(&g.key)?;
                    if found.as_deref().map(digest) != g.digest {
                        let conflict = Outcome::Conflict {
                            seq: a.seq,
                            tree: g.tree.clone(),
                            key: g.key.clone(),
                        };
                        outcomes.push((conflict, true));
                        continue 'batches;
                    }
                }
                for w in &a.batch.writes {
                    let t = &tx[index(&w.tree)];
                    match &w.value {
                        Some(v) => t.insert(w.key.as_slice(), v.as_slice())?,
                        None => t.remove(w.key.as_slice())?,
                    };
                }
                outcomes.push((Outcome::Applied { seq: a.seq }, true));
            }
            if last > applied[j] {
                log.insert(view.channel.applied.as_slice(), &last.to_be_bytes())?;
            }
            all.push(outcomes);
        }
        Ok::<_, ConflictableTransactionError<()>>(all)
    });
    drop(applying);
    let all = match result {
        Ok(all) => all,
        Err(TransactionError::Storage(e)) => return Err(e.into()),
        Err(TransactionError::Abort(())) => unreachable!("the closure never aborts"),
    };
    let mut results = Vec::with_capacity(jobs.len());
    for (((view, group), outcomes), open) in jobs.iter().zip(all).zip(open) {
        if !open {
            results.push(Err(ClusterError::Stopped));
            continue;
        }
        let hooks = view.hooks.read().unwrap_or_else(|e| e.into_inner());
        for (a, (outcome, new)) in group.iter().zip(&outcomes) {
            if *new && matches!(outcome, Outcome::Applied { .. }) {
                for hook in hooks.iter() {
                    hook(a.batch);
                }
            }
        }
        results.push(Ok(outcomes.into_iter().map(|(o, _)| o).collect()));
    }
    Ok(results)
}

/// A group handed to the [`Coalescer`]: given back with its outcomes.
type Reply = oneshot::Sender<(Vec<(u64, Batch)>, GroupResult)>;

struct Job {
    view: Arc<View>,
    group: Vec<(u64, Batch)>,
    reply: Reply,
}

/// A transaction this long is logged (see [`run`]).
const SLOW_APPLY: std::time::Duration = std::time::Duration::from_secs(1);

/// At most this many groups in one transaction.
const MAX_GROUPS: usize = 64;

/// The one applier thread of a database (see the module doc).
pub struct Coalescer {
    jobs: std::sync::Mutex<mpsc::Sender<Job>>,
}

impl Coalescer {
    /// Starts the thread; it ends when the coalescer is dropped.
    pub fn start() -> Arc<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("wasmhook-apply".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    while waiting.len() < MAX_GROUPS {
                        match rx.try_recv() {
                            Ok(job) => waiting.push(job),
                            Err(_) => break,
                        }
                    }
                    run(waiting);
                }
            })
            .expect("starting the apply thread");
        Arc::new(Coalescer {
            jobs: std::sync::Mutex::new(jobs),
        })
    }

    /// Applies `group` (consecutive whole batches of `view`'s log) with
    /// whatever else waits: the group given back with its outcomes.
    pub(super) async fn apply(
        &self,
        view: Arc<View>,
        group: Vec<(u64, Batch)>,
    ) -> (Vec<(u64, Batch)>, GroupResult) {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Job { view, group, reply });
        if let Err(mpsc::SendError(job)) = sent {
            return (job.group, Err(ClusterError::Stopped));
        }
        answer
            .await
            .unwrap_or_else(|_| (Vec::new(), Err(ClusterError::Stopped)))
    }
}

/// One transaction for the waiting groups; a storage fault fails them all.
fn run(waiting: Vec<Job>) {
    let applying: Vec<Vec<Applying<'_>>> = waiting
        .iter()
        .map(|job| {
            job.group
                .iter()
                .map(|(seq, batch)| Applying {
                    seq: *seq,
                    batch,
                    parts: &[],
                })
                .collect()
        })
        .collect();
    let jobs: Vec<(&View, &[Applying<'_>])> = waiting
        .iter()
        .zip(&applying)
        .map(|(job, a)| (&*job.view, a.as_slice()))
        .collect();
    let started = std::time::Instant::now();
    let results = apply_groups(&jobs);
    // A transaction cannot be cut short, and every log of the database
    // waits behind it: a slow one is said, so that a stalled view is seen.
    let took = started.elapsed();
    if took >= SLOW_APPLY {
        tracing::warn!(
            groups = jobs.len(),
            batches = jobs.iter().map(|(_, g)| g.len()).sum::<usize>(),
            took_ms = took.as_millis() as u64,
            "applying to the view was slow; every log of this node waited behind it"
        );
    }
    drop(jobs);
    drop(applying);
    match results {
        Ok(results) => {
            for (job, result) in waiting.into_iter().zip(results) {
                let _ = job.reply.send((job.group, result));
            }
        }
        Err(e) => {
            for job in waiting {
                let e = match &e {
                    ClusterError::View(sled) => ClusterError::View(sled.clone()),
                    other => ClusterError::Snapshot(format!("applying to the view: {other}")),
                };
                let _ = job.reply.send((job.group, Err(e)));
            }
        }
    }
}
