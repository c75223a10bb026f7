//! Acceptances written without a transaction, and what makes that safe.
//!
//! Why: in sled 0.34 a transaction holds the database-wide write lock
//! (`concurrency_control::write`) for as long as it runs, and once any
//! transaction has run, every other read and write takes the lock's read
//! side. The committer's group transaction (hundreds of events, five trees
//! each) therefore stalled every attempt's read and record on the tokio
//! threads: under batched load, deliveries ran at ~100/s for as long as
//! acceptances kept coming (BENCHMARKS.md, "Acceptances without a
//! transaction").
//!
//! So the committer writes a group whose events are all plain (no replay,
//! no window items) with plain inserts, from its one thread, in an order
//! that a crash cannot break:
//!
//! 1. the group's **intent**, in the `intents` tree: per new event, its
//!    key, its receipt time and its delivery ids;
//! 2. per event: each delivery's record, then its index and outbox entries;
//!    then the event's time index and, last, the event record: the event's
//!    commit point (deduplication looks for it);
//! 3. the intent removed; then the flush, then the answers.
//!
//! sled recovers a prefix of its log (it stops at the first message
//! missing from the tail), and one thread wrote all of this in this order.
//! So after a crash either the intent is gone and the whole group is there,
//! or the intent names every event that may be half-written: at the next
//! start, [`Intents::recover`] undoes those without an event record. None
//! of them was answered, and the sender's retry makes them anew; an event
//! with its record has all its writes.

use super::deliveries::{index_key, outbox_entry};
use super::*;

/// The tree of intents; a node's own, never replicated.
pub(crate) const INTENTS_TREE: &str = "intents";

/// An intent is cut in records of at most this many bytes, well under
/// what sled stores inline (a value over an eighth of a segment, 64 KiB,
/// becomes a file of its own).
const CHUNK_BYTES: usize = 32 * 1024;

/// One new event of a group: enough to find every record it writes (a
/// delivery's index and outbox keys are read from its record, written
/// before them).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    pub(super) event_key: Vec<u8>,
    pub(super) received_ms: u64,
    pub(super) deliveries: Vec<String>,
}

impl Entry {
    pub(super) fn of(new: &NewEvent) -> Self {
        let e = &new.event;
        Entry {
            event_key: scoped(&e.tenant_id, &e.event.id),
            received_ms: millis(e.received_at),
            deliveries: new.deliveries.iter().map(|d| d.id.clone()).collect(),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let bytes = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        };
        bytes(out, &self.event_key);
        out.extend_from_slice(&self.received_ms.to_be_bytes());
        out.extend_from_slice(&(self.deliveries.len() as u32).to_be_bytes());
        for id in &self.deliveries {
            bytes(out, id.as_bytes());
        }
    }
}

/// The entries of one intent record; a damaged record is an error.
fn decode_chunk(key: &[u8], mut input: &[u8]) -> Result<Vec<Entry>, StoreError> {
    let corrupt = || StoreError::Corrupt {
        key: format!("{INTENTS_TREE}/{}", String::from_utf8_lossy(key)),
        message: "truncated intent record".into(),
    };
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = input.split_at_checked(n)?;
        *input = rest;
        Some(head)
    }
    fn number(input: &mut &[u8], n: usize) -> Option<u64> {
        Some(take(input, n)?.iter().fold(0, |v, b| v << 8 | *b as u64))
    }
    fn bytes<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = number(input, 4)? as usize;
        take(input, len)
    }
    let mut entries = Vec::new();
    while !input.is_empty() {
        let event_key = bytes(&mut input).ok_or_else(corrupt)?.to_vec();
        let received_ms = number(&mut input, 8).ok_or_else(corrupt)?;
        let n = number(&mut input, 4).ok_or_else(corrupt)?;
        let mut deliveries = Vec::new();
        for _ in 0..n {
            let id = bytes(&mut input).ok_or_else(corrupt)?;
            deliveries.push(String::from_utf8(id.to_vec()).map_err(|_| corrupt())?);
        }
        entries.push(Entry {
            event_key,
            received_ms,
            deliveries,
        });
    }
    Ok(entries)
}

/// The trees a plain acceptance writes, and its intents.
pub(super) struct Intents<'t> {
    pub(super) intents: &'t Tree,
    pub(super) events: &'t Tree,
    pub(super) events_by_time: &'t Tree,
    pub(super) deliveries: &'t Tree,
    pub(super) tenant_deliveries: &'t Tree,
    pub(super) outbox: &'t Tree,
}

impl Intents<'_> {
    /// Writes the new events of a group in the order the module doc gives,
    /// intent first and removed last. On a failed write, what was written is
    /// undone (as a failed transaction would leave nothing) and the error
    /// returned.
    pub(super) fn write(&self, new: &[&NewEvent]) -> Result<(), StoreError> {
        if new.is_empty() {
            return Ok(());
        }
        let entries: Vec<Entry> = new.iter().map(|n| Entry::of(n)).collect();
        let written = self.mark(&entries).and_then(|chunks| {
            for n in new {
                self.write_event(n)?;
            }
            self.clear(chunks)
        });
        if let Err(e) = written {
            if let Err(undo) = self.undo(&entries, false).and_then(|()| self.clear(usize::MAX)) {
                // The intent stays: the next start finishes the undo.
                tracing::error!(error = %undo, "undoing a failed acceptance failed");
            }
            return Err(e);
        }
        Ok(())
    }

    /// The intent, in records of at most [`CHUNK_BYTES`]; how many.
    fn mark(&self, entries: &[Entry]) -> Result<usize, StoreError> {
        let mut chunks = 0u32;
        let mut out = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            entry.encode(&mut out);
            if out.len() >= CHUNK_BYTES || i + 1 == entries.len() {
                self.intents
                    .insert(chunks.to_be_bytes(), std::mem::take(&mut out))?;
                chunks += 1;
            }
        }
        Ok(chunks as usize)
    }

    /// Removes the first `chunks` intent records (all of them, with
    /// `usize::MAX`).
    fn clear(&self, chunks: usize) -> Result<(), StoreError> {
        if chunks == usize::MAX {
            return Ok(self.intents.clear()?);
        }
        for i in 0..chunks as u32 {
            self.intents.remove(i.to_be_bytes())?;
        }
        Ok(())
    }

    fn write_event(&self, new: &NewEvent) -> Result<(), StoreError> {
        let e = &new.event;
        for d in &new.deliveries {
            self.deliveries.insert(d.id.as_bytes(), encode_packed(d))?;
            self.tenant_deliveries.insert(index_key(d), &[])?;
            if let Some((key, value)) = outbox_entry(d) {
                self.outbox.insert(key, value)?;
            }
        }
        let key = scoped(&e.tenant_id, &e.event.id);
        self.events_by_time
            .insert(events::time_key(millis(e.received_at), &key), &[])?;
        self.events.insert(key, encode_packed(e))?;
        Ok(())
    }

    /// Removes what the entries' events wrote; with `keep_committed`, an
    /// event whose record is there is whole and stays.
    fn undo(&self, entries: &[Entry], keep_committed: bool) -> Result<(), StoreError> {
        for entry in entries {
            if keep_committed && self.events.contains_key(&entry.event_key)? {
                continue;
            }
            for id in &entry.deliveries {
                let Some(bytes) = self.deliveries.get(id)? else {
                    continue;
                };
                let d: Delivery = decode(id.as_bytes(), &bytes)?;
                self.tenant_deliveries.remove(index_key(&d))?;
                if let Some((key, _)) = outbox_entry(&d) {
                    self.outbox.remove(key)?;
                }
                self.deliveries.remove(id.as_bytes())?;
            }
            self.events_by_time
                .remove(events::time_key(entry.received_ms, &entry.event_key))?;
            self.events.remove(&entry.event_key)?;
        }
        Ok(())
    }

    /// At start, before anything reads the outbox: undoes the events a
    /// crash left half-written (see the module doc). Returns how many.
    pub(super) fn recover(&self) -> Result<usize, StoreError> {
        let mut entries = Vec::new();
        for kv in self.intents.iter() {
            let (key, value) = kv?;
            entries.extend(decode_chunk(&key, &value)?);
        }
        if entries.is_empty() {
            return Ok(0);
        }
        let mut undone = 0;
        for entry in &entries {
            if !self.events.contains_key(&entry.event_key)? {
                undone += 1;
            }
        }
        self.undo(&entries, true)?;
        self.clear(usize::MAX)?;
        if undone > 0 {
            tracing::warn!(
                events = undone,
                "undid the half-written acceptances of an interrupted group (never answered)"
            );
        }
        Ok(undone)
    }
}
