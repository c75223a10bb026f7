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

use crate::store::codec::encode_delivery;
use crate::store::deliveries::{index_key, outbox_entry};
use crate::store::*;

/// The tree of intents; a node's own, never replicated.
pub(crate) const INTENTS_TREE: &str = "intents";

/// Crash tests: aborts the process in a plain group, after the first
/// event's deliveries are on disk and before its record is written.
const CRASH_FAILPOINT: &str = "accept-crash-before-record";

/// An intent record is cut after the entry that reaches this many bytes,
/// to stay well under what sled stores inline (a message over a quarter of
/// a segment, 128 KiB, becomes a file of its own).
const CHUNK_BYTES: usize = 32 * 1024;

/// One new event of a group: enough to find every record it writes (a
/// delivery's index and outbox keys are read from its record, written
/// before them).
#[derive(Debug, Clone, PartialEq)]
pub(in crate::store) struct Entry {
    pub(in crate::store) event_key: Vec<u8>,
    pub(in crate::store) received_ms: u64,
    pub(in crate::store) deliveries: Vec<String>,
}

impl Entry {
    pub(in crate::store) fn of(new: &NewEvent) -> Self {
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
fn decode_chunk(key: &[u8], record: &[u8]) -> Result<Vec<Entry>, StoreError> {
    let corrupt = || StoreError::Corrupt {
        key: format!("{INTENTS_TREE}/{}", String::from_utf8_lossy(key)),
        message: "truncated intent record".into(),
    };
    let unpacked;
    let mut input = match record.first() {
        Some(&PACKED) => {
            unpacked = unpack(record).map_err(|message| StoreError::Corrupt {
                key: format!("{INTENTS_TREE}/{}", String::from_utf8_lossy(key)),
                message,
            })?;
            &unpacked[..]
        }
        _ => record,
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
pub(in crate::store) struct Intents<'t> {
    pub(in crate::store) intents: &'t Tree,
    pub(in crate::store) events: &'t Tree,
    pub(in crate::store) events_by_time: &'t Tree,
    pub(in crate::store) deliveries: &'t Tree,
    pub(in crate::store) tenant_deliveries: &'t Tree,
    pub(in crate::store) outbox: &'t Tree,
}

impl Intents<'_> {
    /// Writes the new events of a group in the order the module doc gives,
    /// intent first and removed last. On a failed write, what was written is
    /// undone (as a failed transaction would leave nothing) and the error
    /// returned.
    pub(in crate::store) fn write(&self, new: &[&NewEvent]) -> Result<(), StoreError> {
        if new.is_empty() {
            return Ok(());
        }
        let entries: Vec<Entry> = new.iter().map(|n| Entry::of(n)).collect();
        let crash = crate::util::failpoint_active(CRASH_FAILPOINT);
        let written = self.mark(&entries).and_then(|chunks| {
            for n in new {
                self.write_deliveries(n)?;
                if crash {
                    // Crash tests: the deliveries on disk, the event
                    // record not, then the process gone.
                    self.events.flush()?;
                    crate::util::failpoint(CRASH_FAILPOINT);
                }
                self.write_record(n)?;
            }
            self.clear(chunks)
        });
        if let Err(e) = written {
            if let Err(undo) = self
                .undo(&entries, false)
                .and_then(|_| Ok(self.intents.clear()?))
            {
                // The intent stays: the next start finishes the undo.
                tracing::error!(error = %undo, "undoing a failed acceptance failed");
            }
            return Err(e);
        }
        Ok(())
    }

    /// The intent, in records of about [`CHUNK_BYTES`]; how many.
    fn mark(&self, entries: &[Entry]) -> Result<usize, StoreError> {
        let mut chunks = 0u32;
        let mut out = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            entry.encode(&mut out);
            if out.len() >= CHUNK_BYTES || i + 1 == entries.len() {
                // Packed: event keys share their tenant, delivery ids
                // their time. Unpacked, a record starts with a key's
                // length, whose first byte is 0: never PACKED.
                self.intents
                    .insert(chunks.to_be_bytes(), pack(std::mem::take(&mut out)))?;
                chunks += 1;
            }
        }
        Ok(chunks as usize)
    }

    /// Removes the `chunks` intent records `mark` wrote.
    fn clear(&self, chunks: usize) -> Result<(), StoreError> {
        for i in 0..chunks as u32 {
            self.intents.remove(i.to_be_bytes())?;
        }
        Ok(())
    }

    /// An event's deliveries: each one's record first (undoing reads the
    /// index and outbox keys from it), then its index and outbox entries.
    fn write_deliveries(&self, new: &NewEvent) -> Result<(), StoreError> {
        for d in &new.deliveries {
            self.deliveries
                .insert(d.id.as_bytes(), encode_delivery(d))?;
            self.tenant_deliveries.insert(index_key(d), &[])?;
            if let Some((key, value)) = outbox_entry(d) {
                self.outbox.insert(key, value)?;
            }
        }
        Ok(())
    }

    /// The event's time index, then its record: the commit point.
    fn write_record(&self, new: &NewEvent) -> Result<(), StoreError> {
        let e = &new.event;
        let key = scoped(&e.tenant_id, &e.event.id);
        self.events_by_time
            .insert(events::time_key(millis(e.received_at), &key), &[])?;
        self.events.insert(key, encode_packed(e))?;
        Ok(())
    }

    /// Removes what the entries' events wrote; with `keep_committed`, an
    /// event whose record is there is whole and stays. Returns how many
    /// events had no record.
    fn undo(&self, entries: &[Entry], keep_committed: bool) -> Result<usize, StoreError> {
        let mut half_written = 0;
        for entry in entries {
            if !self.events.contains_key(&entry.event_key)? {
                half_written += 1;
            } else if keep_committed {
                continue;
            }
            for id in &entry.deliveries {
                let Some(bytes) = self.deliveries.get(id)? else {
                    continue;
                };
                let d = decode_delivery(id.as_bytes(), &bytes)?;
                self.tenant_deliveries.remove(index_key(&d))?;
                if let Some((key, _)) = outbox_entry(&d) {
                    self.outbox.remove(key)?;
                }
                self.deliveries.remove(id.as_bytes())?;
            }
            self.events_by_time
                .remove(events::time_key(entry.received_ms, &entry.event_key))?;
            // And the form an earlier version wrote (receipt first), should
            // the group be one it left half-written.
            self.events_by_time
                .remove([&entry.received_ms.to_be_bytes()[..], &entry.event_key[..]].concat())?;
            self.events.remove(&entry.event_key)?;
        }
        Ok(half_written)
    }

    /// At start, before anything reads the outbox: undoes the events a
    /// crash left half-written (see the module doc). Returns how many.
    pub(in crate::store) fn recover(&self) -> Result<usize, StoreError> {
        let mut entries = Vec::new();
        for kv in self.intents.iter() {
            let (key, value) = kv?;
            entries.extend(decode_chunk(&key, &value)?);
        }
        if entries.is_empty() {
            return Ok(0);
        }
        let undone = self.undo(&entries, true)?;
        self.intents.clear()?;
        if undone > 0 {
            tracing::warn!(
                events = undone,
                "undid the half-written acceptances of an interrupted group (never answered)"
            );
        }
        Ok(undone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::commit::tests::new_event;

    fn intents(tree: &Tree) -> Vec<Entry> {
        tree.iter()
            .flat_map(|kv| {
                let (k, v) = kv.unwrap();
                decode_chunk(&k, &v).unwrap()
            })
            .collect()
    }

    /// A crash in the middle of a group: one event whole, the next with its
    /// delivery written but not its event record. The next start undoes
    /// the second (never answered; its retry makes it anew) and keeps the
    /// first.
    #[tokio::test]
    async fn a_group_a_crash_interrupted_is_undone_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let at = Timestamp::from_second(4_000_000_000).unwrap();
        let before = new_event("t", "before", "dlv_0", at);
        let whole = new_event("t", "whole", "dlv_1", at);
        let mut half = new_event("t", "half", "dlv_2", at);
        half.deliveries.push(Delivery {
            id: "dlv_3".into(),
            ..half.deliveries[0].clone()
        });
        {
            let store = Store::open(dir.path()).unwrap();
            store.accept(vec![before]).await.unwrap();
            let tree = store.db.open_tree(INTENTS_TREE).unwrap();
            assert!(intents(&tree).is_empty(), "removed once written");
            let w = Intents {
                intents: &tree,
                events: &store.events,
                events_by_time: &store.events_by_time,
                deliveries: &store.deliveries,
                tenant_deliveries: &store.tenant_deliveries,
                outbox: &store.outbox,
            };
            w.mark(&[Entry::of(&whole), Entry::of(&half)]).unwrap();
            w.write_deliveries(&whole).unwrap();
            w.write_record(&whole).unwrap();
            // The crash: dlv_2 written whole, dlv_3 only its record, and
            // not the event's time index nor its record.
            let d = &half.deliveries[0];
            store.deliveries.insert(&d.id, encode_delivery(d)).unwrap();
            store.tenant_deliveries.insert(index_key(d), &[]).unwrap();
            let (key, value) = outbox_entry(d).unwrap();
            store.outbox.insert(key, value).unwrap();
            let d = &half.deliveries[1];
            store.deliveries.insert(&d.id, encode_delivery(d)).unwrap();
            store.db.flush().unwrap();
            assert_eq!(store.outbox_entries().count(), 3);
        }
        // The committer thread lets the database go once the store is
        // dropped; until then it is locked.
        let mut opened = Store::open(dir.path());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if opened.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            opened = Store::open(dir.path());
        }
        let store = opened.unwrap();

        for (event, delivery) in [("before", "dlv_0"), ("whole", "dlv_1")] {
            assert!(store.get_event("t", event).unwrap().is_some());
            assert!(store.get_delivery(delivery).unwrap().is_some());
        }
        assert!(store.get_event("t", "half").unwrap().is_none());
        for id in ["dlv_2", "dlv_3"] {
            assert!(store.get_delivery(id).unwrap().is_none(), "{id} undone");
        }
        let due: Vec<String> = store
            .outbox_entries()
            .map(|e| e.unwrap().delivery_id().to_string())
            .collect();
        assert_eq!(due, ["dlv_0", "dlv_1"]);
        assert_eq!(store.tenant_deliveries.len(), 2);
        assert_eq!(store.events_by_time.len(), 2);
        let tree = store.db.open_tree(INTENTS_TREE).unwrap();
        assert!(intents(&tree).is_empty());

        // The id comes again (the sender's retry): a new event.
        let (_, outcomes) = store
            .accept(vec![new_event("t", "half", "dlv_4", at)])
            .await
            .unwrap();
        assert_eq!(outcomes, [Accepted::New]);
    }

    /// An intent record reads back as written; a damaged one is an error,
    /// not a panic.
    #[test]
    fn intent_records_round_trip_and_damage_is_an_error() {
        let entries = vec![
            Entry {
                event_key: b"t\0e\xff".to_vec(),
                received_ms: u64::MAX,
                deliveries: vec!["dlv_a".into(), "dlv_é".into()],
            },
            Entry {
                event_key: vec![],
                received_ms: 0,
                deliveries: vec![],
            },
        ];
        let mut bytes = Vec::new();
        for e in &entries {
            e.encode(&mut bytes);
        }
        assert_eq!(decode_chunk(b"k", &bytes).unwrap(), entries);
        // As written: packed, when that is smaller.
        let many: Vec<u8> = (0..50).flat_map(|_| bytes.clone()).collect();
        let packed = pack(many);
        assert_eq!(packed[0], PACKED);
        assert_eq!(decode_chunk(b"k", &packed).unwrap().len(), 100);
        for cut in 1..bytes.len() {
            if let Ok(read) = decode_chunk(b"k", &bytes[..cut]) {
                // Cut exactly between the two entries.
                assert_eq!(read, entries[..1]);
            }
        }
        let mut huge = bytes.clone();
        huge[0] = 0xff;
        assert!(matches!(
            decode_chunk(b"k", &huge),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
