//! The embedded store's write gate: a backup pauses every writer, so the
//! copy is one moment of the store (an acceptance whole or absent, a
//! delivery with its outbox entry), while reads go on.
//!
//! Every write of the records takes a [`Pass`] for its duration: a
//! transaction, a run of plain writes until committed, one group of the
//! committer. [`Gate::pause`] stops new passes, waits for the ones out to
//! come back, and holds the writers until the pause is dropped. A pause
//! that cannot get every pass back in time (a writer that waits on another
//! write while holding one) gives up rather than stall the server: the
//! backup fails with a 503 and the writers go on.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Gate {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    writers: usize,
    paused: bool,
}

/// A writer's permission; given back when dropped.
pub struct Pass(Arc<Gate>);

/// The writers held; released when dropped.
pub struct Paused(Arc<Gate>);

/// How long a paused writer waits at most: past it, it writes anyway (a
/// pause never stalls a writer for longer than the backup would take).
const WRITER_WAIT: Duration = Duration::from_secs(30);

impl Gate {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits while a backup holds the writers (blocking: a write is sync
    /// work already), then lets this writer in.
    pub fn enter(self: &Arc<Self>) -> Pass {
        let mut state = self.lock();
        let deadline = Instant::now() + WRITER_WAIT;
        while state.paused {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.writers += 1;
        Pass(self.clone())
    }

    /// Holds new writers and waits until none is writing, for at most
    /// `within`; None if some still were (the pause is lifted again).
    pub fn pause(self: &Arc<Self>, within: Duration) -> Option<Paused> {
        let deadline = Instant::now() + within;
        let mut state = self.lock();
        while state.paused {
            // Another backup: one at a time.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.paused = true;
        while state.writers > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                state.paused = false;
                self.changed.notify_all();
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Some(Paused(self.clone()))
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.writers -= 1;
        if state.writers == 0 {
            self.0.changed.notify_all();
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        self.0.lock().paused = false;
        self.0.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_waits_for_writers_and_holds_new_ones() {
        let gate = Arc::new(Gate::default());
        let pass = gate.enter();
        // A writer is out: the pause gives up in time.
        assert!(gate.pause(Duration::from_millis(50)).is_none());
        let g = gate.clone();
        let writer_done = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(pass);
            // The pause below holds this one until it is dropped.
            let started = Instant::now();
            let _second = g.enter();
            started.elapsed()
        });
        let paused = gate
            .pause(Duration::from_secs(10))
            .expect("the writer came back");
        std::thread::sleep(Duration::from_millis(200));
        drop(paused);
        let held = writer_done.join().unwrap();
        assert!(held >= Duration::from_millis(50), "{held:?}");
    }
}
