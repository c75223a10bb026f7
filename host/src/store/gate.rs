//! The embedded store's write gate: a backup pauses every writer, so the
//! copy is one moment of the store (an acceptance whole or absent, a
//! delivery with its outbox entry), while reads go on.
//!
//! Every write of the records holds a [`Pass`] for its duration: a
//! transaction, a run of plain writes until committed, one group of the
//! committer. A backup takes the gate exclusively ([`Gate::pause`]): it
//! waits for the passes out, and new writers wait (asynchronously: no
//! runtime thread is held) until it is done. Writers never barge in, so a
//! finished backup is always one moment. A pause that cannot start in time
//! (a long prune holds its pass) gives up, and the backup answers 503.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

#[derive(Default)]
pub struct Gate(Arc<RwLock<()>>);

/// A writer's permission; given back when dropped.
pub type Pass = OwnedRwLockReadGuard<()>;

/// The writers held; released when dropped.
pub type Paused = OwnedRwLockWriteGuard<()>;

impl Gate {
    /// Waits while a backup holds the writers, then lets this writer in.
    pub async fn enter(&self) -> Pass {
        self.0.clone().read_owned().await
    }

    /// [`Gate::enter`] from a thread outside the runtime (the committer).
    pub fn enter_blocking(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.0.blocking_read()
    }

    /// Holds new writers and waits until none is writing, for at most
    /// `within`; None if that did not happen in time.
    pub async fn pause(&self, within: Duration) -> Option<Paused> {
        tokio::time::timeout(within, self.0.clone().write_owned())
            .await
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pause_waits_for_writers_and_holds_new_ones() {
        let gate = Arc::new(Gate::default());
        let pass = gate.enter().await;
        // A writer is out: the pause gives up in time.
        assert!(gate.pause(Duration::from_millis(50)).await.is_none());
        let g = gate.clone();
        let pausing = tokio::spawn(async move { g.pause(Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A pause is waiting: new writers wait behind it.
        let g = gate.clone();
        let second = tokio::spawn(async move {
            let _pass = g.enter().await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished());
        drop(pass);
        let paused = pausing.await.unwrap().expect("the writer came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "held while paused");
        drop(paused);
        second.await.unwrap();
    }
}
