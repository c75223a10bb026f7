//! Events: accepted with their deliveries and held items in one transaction, deduplicated per tenant, pruned by age.

use super::deliveries::put_delivery_tx;
use super::windows::hold_tx;
use super::*;

/// Bytes of event bodies the cache keeps at most: a few seconds of
/// deliveries at full load, so first attempts find their body here and
/// only retries and a backlog read the event back.
const BODY_CACHE_BYTES: u64 = 32 << 20;

/// The bodies of recent events that deliveries send without a plugin
/// (see [`StoredRequest::body_from_event`]), by event key, shared by the
/// event's deliveries. Only a cache: a miss makes the body from the event
/// record, and a restart starts it empty. An event removed (pruned, after
/// which its id may be sent again with other data) is forgotten: here by
/// `prune`, on other cluster nodes as their view applies the removal.
#[derive(Clone)]
pub(super) struct Bodies(Arc<quick_cache::sync::Cache<Vec<u8>, Arc<str>, BodyWeight>>);

impl Bodies {
    pub(super) fn forget(&self, event_key: &[u8]) {
        self.0.remove(event_key);
    }
}

/// A body weighs its bytes and its key's.
#[derive(Clone)]
struct BodyWeight;

impl quick_cache::Weighter<Vec<u8>, Arc<str>> for BodyWeight {
    fn weight(&self, key: &Vec<u8>, body: &Arc<str>) -> u64 {
        (key.len() + body.len()) as u64
    }
}

impl Default for Bodies {
    fn default() -> Self {
        Bodies(Arc::new(quick_cache::sync::Cache::with_weighter(
            16_384,
            BODY_CACHE_BYTES,
            BodyWeight,
        )))
    }
}

impl Store {
    /// The body the deliveries of an event send when they have no plugin:
    /// from the cache, else made from the event record (and cached for the
    /// event's other deliveries). None if the event is no longer stored.
    pub fn event_body(
        &self,
        tenant_id: &str,
        event_id: &str,
    ) -> Result<Option<Arc<str>>, StoreError> {
        let key = scoped(tenant_id, event_id);
        if let Some(body) = self.bodies.0.get(&key) {
            return Ok(Some(body));
        }
        let Some(bytes) = self.events.get(&key)? else {
            return Ok(None);
        };
        let stored: StoredEvent = decode(&key, &bytes)?;
        let body: Arc<str> = stored.event.webhook_body().into();
        self.bodies.0.insert(key, body.clone());
        Ok(Some(body))
    }

    /// Fills in the body of a delivery stored without it, for whoever
    /// shows or sends the delivery whole. False if it has none to fill in:
    /// its event is no longer stored.
    pub fn fill_body(&self, d: &mut Delivery) -> Result<bool, StoreError> {
        let Some(request) = d.request.as_mut().filter(|r| r.body_from_event) else {
            return Ok(true);
        };
        match self.event_body(&d.tenant_id, &d.event_id)? {
            Some(body) => {
                request.body = body.to_string();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// After an acceptance: the bodies of the new events whose deliveries
    /// send them, cached for their first attempts (a duplicate's body is
    /// not: its deliveries are the first event's).
    pub(super) fn remember_bodies(&self, batch: &[NewEvent], accepted: &[Accepted]) {
        for (new, outcome) in batch.iter().zip(accepted) {
            let sends_it = new
                .deliveries
                .iter()
                .any(|d| d.request.as_ref().is_some_and(|r| r.body_from_event));
            if *outcome == Accepted::New && sends_it {
                let e = &new.event;
                let body: Arc<str> = e.event.webhook_body().into();
                self.bodies
                    .0
                    .insert(scoped(&e.tenant_id, &e.event.id), body);
            }
        }
    }

    pub fn get_event(&self, tenant_id: &str, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        self.require_data(tenant_id)?;
        let key = scoped(tenant_id, id);
        self.events.get(&key)?.map(|v| decode(&key, &v)).transpose()
    }

    /// Removes events received before `cutoff` and finished deliveries
    /// created before it. Returns (events, deliveries) removed. An event
    /// whose pending deliveries still send its body stays until they are
    /// done (a later prune takes it).
    pub async fn prune(&self, cutoff: Timestamp) -> Result<(usize, usize), StoreError> {
        self.convert_time_keys()?;
        // First, so that their deliveries, now failed, are pruned below.
        self.drop_orphan_lines().await?;
        let cutoff_ms = millis(cutoff).to_be_bytes();
        let mut w = self.plain().await;
        let mut events = 0;
        let mut still_sent = None;
        // The index is by tenant, then time: each tenant's range up to the
        // cutoff, then a jump to the next tenant. Old-form keys (below 0x01)
        // are converted above.
        let mut next_tenant = vec![1u8];
        while let Some(first) = self.events_by_time.range(next_tenant.as_slice()..).next() {
            let (first, _) = first?;
            let Some(prefix) = tenant_of(&first) else {
                return Err(StoreError::Corrupt {
                    key: String::from_utf8_lossy(&first).into_owned(),
                    message: "an events_by_time key without a tenant".into(),
                });
            };
            let end = [prefix, &cutoff_ms[..]].concat();
            for kv in self.events_by_time.range(prefix..end.as_slice()) {
                let (k, _) = kv?;
                let Some(event_key) = event_key_of(&k) else {
                    continue;
                };
                // Read only when there is something to prune.
                let still_sent = match &mut still_sent {
                    Some(keys) => keys,
                    None => still_sent.insert(self.events_still_sent()?),
                };
                if still_sent.contains(&event_key) {
                    continue;
                }
                w.remove(&self.events, &event_key)?;
                self.bodies.forget(&event_key);
                w.remove(&self.events_by_time, &k)?;
                events += 1;
            }
            // The prefix ends in the tenant's `\0`; `\x01` is past all of it.
            next_tenant = prefix.to_vec();
            *next_tenant.last_mut().expect("a prefix ends in \\0") = 1;
        }
        let boundary = format!(
            "dlv_{}",
            ulid::Ulid::from_parts(millis(cutoff), 0)
                .to_string()
                .to_ascii_lowercase()
        );
        let mut deliveries = 0;
        for kv in self.deliveries.range(..boundary.as_bytes()) {
            let (k, v) = kv?;
            let d = decode_delivery(&k, &v)?;
            // A failed head that stops its line stays until it is retried
            // or dismissed (the line names it).
            if d.status.is_final() && !self.is_blocking(&d)? {
                w.remove(&self.deliveries, &k)?;
                w.remove(&self.tenant_deliveries, super::deliveries::index_key(&d))?;
                deliveries += 1;
            }
        }
        w.commit().await?;
        Ok((events, deliveries))
    }

    /// The keys of the events whose pending deliveries send the event's
    /// own body: the outbox's deliveries and those waiting in an ordered
    /// line, read once per prune.
    fn events_still_sent(&self) -> Result<std::collections::HashSet<Vec<u8>>, StoreError> {
        let mut keys = std::collections::HashSet::new();
        let due = self
            .outbox_entries()
            .map(|e| e.map(|e| (e.delivery_id().to_string(), false)));
        let waiting = self.waiting_deliveries().map(|id| id.map(|id| (id, true)));
        for item in due.chain(waiting) {
            let (id, in_line) = item?;
            // A line's members keep their bodies whatever their status:
            // a failed head that stops its line may be retried.
            if let Some(d) = self.get_delivery(&id)?
                && (in_line || d.status == DeliveryStatus::Pending)
                && d.request.is_some_and(|r| r.body_from_event)
            {
                keys.insert(scoped(&d.tenant_id, &d.event_id));
            }
        }
        Ok(keys)
    }

    /// Stored events of a tenant received at or after `since` that `wanted`
    /// keeps, oldest first, at most `limit` of them.
    pub fn events_since(
        &self,
        tenant_id: &str,
        since: Timestamp,
        wanted: impl Fn(&StoredEvent) -> bool,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.require_data(tenant_id)?;
        let prefix = tenant_prefix(tenant_id);
        let start = [&prefix[..], &millis(since).to_be_bytes()].concat();
        // Past every key of the tenant: its `\0` raised to `\x01`.
        let mut end = prefix.clone();
        *end.last_mut().expect("a prefix ends in \\0") = 1;
        let mut out = Vec::new();
        // Only this tenant's part of the index: another tenant's volume
        // costs a replay nothing.
        for kv in self.events_by_time.range(start..end) {
            let (k, _) = kv?;
            let Some(event_key) = event_key_of(&k) else {
                continue;
            };
            if let Some(v) = self.events.get(&event_key)? {
                let event: StoredEvent = decode(&event_key, &v)?;
                if wanted(&event) {
                    out.push(event);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A page of a tenant's events, newest first (see [`Store::events_newest`]).
pub struct EventPage {
    pub events: Vec<StoredEvent>,
    /// Where the next page starts (`received ms`.`event id`), when the
    /// history may hold more.
    pub next: Option<String>,
}

impl Store {
    /// A tenant's stored events that `wanted` keeps, newest first, from
    /// `before` (a [`EventPage::next`], exclusive): at most `limit` of
    /// them, reading at most `budget` index entries (then `next` says where
    /// to go on, even on a short page).
    pub fn events_newest(
        &self,
        tenant_id: &str,
        before: Option<&str>,
        wanted: impl Fn(&StoredEvent) -> bool,
        limit: usize,
        budget: usize,
    ) -> Result<EventPage, StoreError> {
        self.require_data(tenant_id)?;
        let prefix = tenant_prefix(tenant_id);
        let end = match before.and_then(|c| c.split_once('.')) {
            Some((ms, id)) => {
                let ms: u64 = ms.parse().unwrap_or(u64::MAX);
                [&prefix[..], &ms.to_be_bytes(), id.as_bytes()].concat()
            }
            None => {
                let mut end = prefix.clone();
                *end.last_mut().expect("a prefix ends in \\0") = 1;
                end
            }
        };
        let mut events = Vec::new();
        let mut last = None;
        for (read, kv) in self
            .events_by_time
            .range(prefix.clone()..end)
            .rev()
            .enumerate()
        {
            let (k, _) = kv?;
            if read == budget || events.len() == limit {
                return Ok(EventPage { events, next: last });
            }
            let rest = &k[prefix.len()..];
            if rest.len() < 8 {
                continue;
            }
            let mut ms = [0u8; 8];
            ms.copy_from_slice(&rest[..8]);
            last = Some(format!(
                "{}.{}",
                u64::from_be_bytes(ms),
                String::from_utf8_lossy(&rest[8..])
            ));
            let Some(event_key) = event_key_of(&k) else {
                continue;
            };
            if let Some(v) = self.events.get(&event_key)? {
                let event: StoredEvent = decode(&event_key, &v)?;
                if wanted(&event) {
                    events.push(event);
                }
            }
        }
        Ok(EventPage { events, next: None })
    }
}

/// The outcomes of a group's events (in their order) split back into each
/// batch's share, for the batches whose events were accepted together.
pub(super) fn split_by_batch<B>(accepted: Vec<Accepted>, batches: &[B]) -> Vec<Vec<Accepted>>
where
    B: AsRef<[NewEvent]>,
{
    let mut rest = accepted.into_iter();
    batches
        .iter()
        .map(|b| rest.by_ref().take(b.as_ref().len()).collect())
        .collect()
}

/// An event's key in `events_by_time`: its tenant with the `\0`, its
/// receipt (ms, big-endian), then its id. Tenant first, so that a tenant's
/// replay reads only its own events; prune walks each tenant's range.
/// `event_key` is the event's own key, `tenant \0 id`.
pub(super) fn time_key(received_ms: u64, event_key: &[u8]) -> Vec<u8> {
    let split = event_key
        .iter()
        .position(|&b| b == 0)
        .map_or(event_key.len(), |i| i + 1);
    let (tenant, id) = event_key.split_at(split);
    [tenant, &received_ms.to_be_bytes()[..], id].concat()
}

/// The tenant prefix (`tenant \0`) of a time key.
fn tenant_of(time_key: &[u8]) -> Option<&[u8]> {
    let end = time_key.iter().position(|&b| b == 0)? + 1;
    Some(&time_key[..end])
}

/// The event's own key (`tenant \0 id`) inside a time key.
fn event_key_of(time_key: &[u8]) -> Option<Vec<u8>> {
    let tenant = tenant_of(time_key)?;
    let id = time_key.get(tenant.len() + 8..)?;
    Some([tenant, id].concat())
}

/// Keys written before the index was by tenant started with the receipt
/// (8 bytes, big-endian: the first is 0 for any time before the year
/// 2,280,000); a tenant id never starts with a 0 byte.
const OLD_FORM_END: &[u8] = &[1];

impl Store {
    /// Rewrites time keys of the earlier form (receipt, then `tenant \0
    /// id`) into the tenant-first form: once at the first start of this
    /// version, and at each prune for a cluster view that applied an older
    /// node's batch since. Local to this machine's trees and a pure
    /// function of them, so every cluster view converts the same way.
    pub(super) fn convert_time_keys(&self) -> Result<usize, StoreError> {
        let mut converted = 0;
        for kv in self.events_by_time.range(..OLD_FORM_END) {
            let (k, v) = kv?;
            if k.len() > 8 {
                let received_ms = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
                self.events_by_time
                    .insert(time_key(received_ms, &k[8..]), v)?;
            }
            self.events_by_time.remove(&k)?;
            converted += 1;
        }
        Ok(converted)
    }
}

/// The acceptance in a committer's transaction: each event only if its id is new, with
/// its deliveries, outbox entries, indexes and held items.
pub(super) fn accept_tx(
    batch: &[&NewEvent],
    [events, by_time, deliveries, tenant_deliveries, outbox]: [&dyn TxTree; 5],
    windows: Option<(&dyn TxTree, &dyn TxTree)>,
    lanes: Option<(&dyn TxTree, &dyn TxTree)>,
) -> TxResult<Vec<Accepted>> {
    let mut results = Vec::with_capacity(batch.len());
    let mut seen = std::collections::HashSet::new();
    for &new in batch {
        let e = &new.event;
        let key = scoped(&e.tenant_id, &e.event.id);
        if new.replay {
            if let Some(bytes) = events.get(&key)? {
                let mut stored: StoredEvent =
                    decode(&key, &bytes).map_err(ConflictableTransactionError::Abort)?;
                stored
                    .deliveries
                    .extend(new.deliveries.iter().map(|d| d.id.clone()));
                events.insert(&key, &encode_packed(&stored))?;
            }
        } else if let Some(existing) = events.get(&key)? {
            let existing = decode(&key, &existing).map_err(ConflictableTransactionError::Abort)?;
            results.push(Accepted::Duplicate(Box::new(existing)));
            continue;
        }
        if !new.replay && !seen.insert(key.clone()) {
            // The same id twice in one batch: the first one counts.
            results.push(Accepted::Duplicate(Box::new(e.clone())));
            continue;
        }
        if !new.replay {
            events.insert(&key, &encode_packed(e))?;
            by_time.insert(&time_key(millis(e.received_at), &key), &[])?;
        }
        for d in &new.deliveries {
            match (lanes, &d.order) {
                (Some((lanes, items)), Some(_)) => {
                    // Joins its line: pending at the head, else blocked.
                    let mut d = d.clone();
                    super::lanes::LaneTrees {
                        lanes,
                        items,
                        deliveries,
                        outbox,
                    }
                    .join(&mut d)?;
                }
                _ => put_delivery_tx(deliveries, outbox, d, None)?,
            }
            super::deliveries::index_tx(tenant_deliveries, d)?;
        }
        if let Some((held, windows)) = windows {
            for h in &new.held {
                hold_tx(held, windows, h, &e.event.id)?;
            }
            for taken in &new.released {
                super::windows::release_tx(held, windows, taken)?;
            }
        }
        results.push(Accepted::New);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::commit::tests::new_event;

    /// An event whose delivery sends the event's own body (no plugin).
    fn sending_its_body(id: &str, delivery: &str, at: Timestamp) -> NewEvent {
        let mut new = new_event("t", id, delivery, at);
        // Key order, floats that parse inexactly without `float_roundtrip`,
        // and escapes: what could change when the record is read back.
        new.event.event.data = serde_json::from_str(
            r#"{"z":1,"a":0.30000000000000004,"f":2.2250738585072014e-308,"g":1.7976931348623157e308,"h":-0.0,"s":"é\u0000\ud83d\ude00"}"#,
        )
        .unwrap();
        let request = new.deliveries[0].request.as_mut().unwrap();
        request.body = String::new();
        request.body_from_event = true;
        new
    }

    #[tokio::test]
    async fn a_delivery_without_a_plugin_sends_its_events_body_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let at = Timestamp::from_second(4_000_000_000).unwrap();
        let new = sending_its_body("e1", "dlv_1", at);
        let expected = new.event.event.webhook_body();
        store.accept(vec![new]).await.unwrap();

        // The delivery's record does not hold the body.
        let raw = store.deliveries.get("dlv_1").unwrap().unwrap();
        let record = decode_delivery(b"dlv_1", &raw).unwrap();
        let request = record.request.unwrap();
        assert_eq!(request.body, "");
        assert!(request.body_from_event);
        // Cached at acceptance, and made again from the event record (as
        // after a restart) byte for byte.
        assert_eq!(
            store.event_body("t", "e1").unwrap().unwrap().as_ref(),
            expected
        );
        store.bodies.0.clear();
        assert_eq!(
            store.event_body("t", "e1").unwrap().unwrap().as_ref(),
            expected
        );
        let mut d = store.get_delivery("dlv_1").unwrap().unwrap();
        assert_eq!(d.request.as_ref().unwrap().body, "");
        assert!(store.fill_body(&mut d).unwrap());
        assert_eq!(d.request.unwrap().body, expected);

        // A duplicate with other data does not replace the cached body.
        let mut dup = sending_its_body("e1", "dlv_2", at);
        dup.event.event.data = crate::event::Data::from_value(&serde_json::json!({"other": true}));
        store.accept(vec![dup]).await.unwrap();
        assert_eq!(
            store.event_body("t", "e1").unwrap().unwrap().as_ref(),
            expected
        );
        assert_eq!(store.event_body("t", "missing").unwrap(), None);
    }

    #[tokio::test]
    async fn prune_keeps_an_event_while_a_pending_delivery_sends_its_body() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let at = Timestamp::from_second(4_000_000_000).unwrap();
        store
            .accept(vec![
                sending_its_body("pending", "dlv_1", at),
                new_event("t", "inline", "dlv_2", at),
            ])
            .await
            .unwrap();
        let cutoff = at + jiff::SignedDuration::from_secs(1);
        // dlv_2 holds its own body: its event goes, though it is pending.
        assert_eq!(store.prune(cutoff).await.unwrap(), (1, 0));
        assert!(store.get_event("t", "pending").unwrap().is_some());
        assert!(store.get_event("t", "inline").unwrap().is_none());

        let mut d = store.get_delivery("dlv_1").unwrap().unwrap();
        d.status = DeliveryStatus::Succeeded;
        d.next_attempt_at = None;
        store.record_delivery(&d, Some(at)).await.unwrap();
        assert_eq!(store.prune(cutoff).await.unwrap(), (1, 0));
        assert!(store.get_event("t", "pending").unwrap().is_none());
        // Forgotten by the cache too: the id may come again with other data.
        assert_eq!(store.event_body("t", "pending").unwrap(), None);
    }

    /// Events of two tenants at interleaved times, `n` each, one second
    /// apart; tenant `b`'s ids are `b0…`, `a`'s `a0…`. No deliveries.
    async fn two_tenants(store: &Store, n: u64) -> Timestamp {
        let at = Timestamp::from_second(4_000_000_000).unwrap();
        let mut batch = Vec::new();
        for i in 0..n {
            for t in ["a", "b"] {
                let when = at + jiff::SignedDuration::from_secs(i as i64);
                let mut new = new_event(t, &format!("{t}{i}"), &format!("dlv_{t}{i}"), when);
                new.deliveries.clear();
                batch.push(new);
            }
        }
        store.accept(batch).await.unwrap();
        at
    }

    #[tokio::test]
    async fn a_replay_reads_only_its_tenants_part_of_the_index_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let at = two_tenants(&store, 5).await;
        // A prefix of another tenant's id (`a` of `ab`) shares nothing.
        let mut other = new_event("ab", "x", "dlv_x", at);
        other.deliveries.clear();
        store.accept(vec![other]).await.unwrap();

        let seen = std::cell::Cell::new(0);
        let since = at + jiff::SignedDuration::from_secs(2);
        let events = store
            .events_since(
                "a",
                since,
                |e| {
                    seen.set(seen.get() + 1);
                    assert_eq!(e.tenant_id, "a");
                    true
                },
                10,
            )
            .unwrap();
        let ids: Vec<_> = events.iter().map(|e| e.event.id.as_str()).collect();
        assert_eq!(ids, ["a2", "a3", "a4"]);
        assert_eq!(
            seen.get(),
            3,
            "only the tenant's events at or after `since`"
        );
        // The limit holds.
        let two = store.events_since("b", at, |_| true, 2).unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[0].event.id, "b0");
        assert!(
            store
                .events_since("nobody", at, |_| true, 10)
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn prune_walks_every_tenant_up_to_the_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let at = two_tenants(&store, 4).await;
        let cutoff = at + jiff::SignedDuration::from_secs(2);
        assert_eq!(store.prune(cutoff).await.unwrap(), (4, 0));
        for t in ["a", "b"] {
            assert!(store.get_event(t, &format!("{t}1")).unwrap().is_none());
            assert!(store.get_event(t, &format!("{t}2")).unwrap().is_some());
            let left = store.events_since(t, at, |_| true, 10).unwrap();
            assert_eq!(left.len(), 2, "{t}");
        }
        assert_eq!(store.events_by_time.len(), 4);
    }

    #[tokio::test]
    async fn time_keys_of_the_earlier_form_are_converted_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let at = {
            let store = Store::open(dir.path()).unwrap();
            let at = two_tenants(&store, 3).await;
            // Rewrite the index as an earlier version wrote it: receipt first.
            let keys: Vec<_> = store
                .events_by_time
                .iter()
                .keys()
                .map(|k| k.unwrap())
                .collect();
            for k in keys {
                let event_key = event_key_of(&k).unwrap();
                let tenant = tenant_of(&k).unwrap();
                let ms = &k[tenant.len()..tenant.len() + 8];
                store.events_by_time.remove(&k).unwrap();
                store
                    .events_by_time
                    .insert([ms, &event_key[..]].concat(), &[])
                    .unwrap();
            }
            assert!(
                store
                    .events_by_time
                    .iter()
                    .keys()
                    .all(|k| k.unwrap()[0] == 0)
            );
            store.db.flush().unwrap();
            at
        };
        // The committer thread lets the database go once the store is
        // dropped; until then it is locked.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let store = loop {
            match Store::open(dir.path()) {
                Ok(store) => break store,
                Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert_eq!(store.events_by_time.len(), 6);
        assert!(
            store
                .events_by_time
                .iter()
                .keys()
                .all(|k| k.unwrap()[0] != 0)
        );
        let ids: Vec<_> = store
            .events_since("b", at, |_| true, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.event.id)
            .collect();
        assert_eq!(ids, ["b0", "b1", "b2"]);
        // A key of the old form that arrives later (a cluster view applying
        // an older node's batch) is converted at the next prune.
        let late = [&4_000_000_000_000u64.to_be_bytes()[..], b"a\0a0"].concat();
        store.events_by_time.insert(late, &[]).unwrap();
        store.prune(at).await.unwrap();
        assert_eq!(store.events_by_time.len(), 6);
    }
}
