//! Ordered deliveries: one line ("lane") per subscription and ordering key.
//!
//! A subscription with `ordering` gives each pending delivery an
//! [`OrderSlot`]: the value its event has at the ordering key. Deliveries
//! of one subscription with the same value go one at a time in the order
//! they joined their line. Only the line's head is in the outbox; the ones
//! behind it are stored `blocked`, with no outbox entry, so the scheduler
//! never sees them and a waiting line holds no worker and costs nothing.
//! When the head finishes, the same write takes it off the line and makes
//! the next one pending (due now): the order is the stored order, so it
//! survives a restart or kill -9, and in cluster mode it is one guarded
//! batch of the log like any other change.
//!
//! Each step reads and writes by key only (no scans), so it is the same
//! atomic read-modify-write on both backends ([`TxTree`]): a line's
//! members are contiguous sequence numbers from `head` to `next`, and the
//! line's state record is read (so guarded) by every step that moves it.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `lanes` | tenant id `\0` subscription id `\0` SHA-256 of the key (16 bytes, hex) | [`LaneState`] |
//! | `lane_items` | lane key `\0` sequence (BE u64) | delivery id |

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::deliveries::put_delivery_tx;
use super::*;

/// Where a line stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneState {
    /// The sequence of the head (the one pending, or failed and blocking).
    pub head: u64,
    /// The sequence the next delivery to join gets.
    pub next: u64,
    /// The head failed for good under `on_failure: block`: the line waits
    /// until it is retried or dismissed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
}

/// The line a delivery belongs to.
pub(super) fn lane_key(d: &Delivery, slot: &OrderSlot) -> Vec<u8> {
    let digest = sha2::Sha256::digest(slot.key.as_bytes());
    let mut hex = String::with_capacity(32);
    for b in &digest[..16] {
        hex.push_str(&format!("{b:02x}"));
    }
    [
        d.tenant_id.as_bytes(),
        &[0],
        d.subscription_id.as_bytes(),
        &[0],
        hex.as_bytes(),
    ]
    .concat()
}

fn item_key(lane: &[u8], seq: u64) -> Vec<u8> {
    [lane, &[0], &seq.to_be_bytes()].concat()
}

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

fn read_state(lanes: &dyn TxTree, lane: &[u8]) -> TxResult<Option<LaneState>> {
    lanes
        .get(lane)?
        .map(|v| decode::<LaneState>(lane, &v).map_err(abort))
        .transpose()
}

fn write_state(lanes: &dyn TxTree, lane: &[u8], state: &LaneState) -> TxResult<()> {
    if state.head >= state.next && state.blocked.is_none() {
        lanes.remove(lane)?;
    } else {
        lanes.insert(lane, &encode(state))?;
    }
    Ok(())
}

/// The four trees a line's step touches.
pub(in crate::store) struct LaneTrees<'t> {
    pub lanes: &'t dyn TxTree,
    pub items: &'t dyn TxTree,
    pub deliveries: &'t dyn TxTree,
    pub outbox: &'t dyn TxTree,
}

impl LaneTrees<'_> {
    /// `d` (pending, with a slot) joins the end of its line: it keeps its
    /// due time if it is the head of a line that is not blocked, else it is
    /// stored `blocked`. Writes the delivery (and its outbox entry).
    pub(super) fn join(&self, d: &mut Delivery) -> TxResult<()> {
        let Some(slot) = d.order.clone() else {
            return put_delivery_tx(self.deliveries, self.outbox, d, None);
        };
        let lane = lane_key(d, &slot);
        let mut state = read_state(self.lanes, &lane)?.unwrap_or_default();
        let seq = state.next;
        if let Some(slot) = d.order.as_mut() {
            slot.seq = seq;
        }
        let head = state.head == state.next && state.blocked.is_none();
        state.next += 1;
        self.items.insert(&item_key(&lane, seq), d.id.as_bytes())?;
        if !head {
            d.status = DeliveryStatus::Blocked;
            d.next_attempt_at = None;
        }
        write_state(self.lanes, &lane, &state)?;
        put_delivery_tx(self.deliveries, self.outbox, d, None)
    }

    /// `d` (with a slot) was written with a final status: if it is its
    /// line's head, the line moves on — or stops, when it failed and its
    /// slot says `block`. Returns the delivery made pending, if one was.
    pub(super) fn finished(&self, d: &Delivery, now: Timestamp) -> TxResult<Option<Delivery>> {
        let Some(slot) = &d.order else {
            return Ok(None);
        };
        let lane = lane_key(d, slot);
        let Some(mut state) = read_state(self.lanes, &lane)? else {
            return Ok(None);
        };
        if !self.holds(&lane, slot.seq, d)? {
            // Not (or no longer) in its line: a stale record of a
            // delivery the line has moved past. The line is not touched.
            return Ok(None);
        }
        if slot.seq != state.head {
            // Finished while waiting (not by an attempt): its place goes.
            self.items.remove(&item_key(&lane, slot.seq))?;
            return Ok(None);
        }
        if d.status == DeliveryStatus::Failed && slot.block {
            state.blocked = Some(d.id.clone());
            write_state(self.lanes, &lane, &state)?;
            return Ok(None);
        }
        self.advance(&lane, state, now)
    }

    /// Takes the head off the line and makes the next waiting one pending.
    fn advance(
        &self,
        lane: &[u8],
        mut state: LaneState,
        now: Timestamp,
    ) -> TxResult<Option<Delivery>> {
        state.blocked = None;
        self.items.remove(&item_key(lane, state.head))?;
        state.head += 1;
        let mut promoted = None;
        while state.head < state.next {
            let item = item_key(lane, state.head);
            let Some(id) = self.items.get(&item)? else {
                state.head += 1;
                continue;
            };
            let next = match self.deliveries.get(&id)? {
                Some(bytes) => Some(decode_delivery(&id, &bytes).map_err(abort)?),
                None => None,
            };
            match next {
                Some(mut next) if next.status == DeliveryStatus::Blocked => {
                    next.status = DeliveryStatus::Pending;
                    next.next_attempt_at = Some(now);
                    next.updated_at = now;
                    put_delivery_tx(self.deliveries, self.outbox, &next, None)?;
                    promoted = Some(next);
                    break;
                }
                // Already the pending head (nothing to do).
                Some(next) if next.status == DeliveryStatus::Pending => break,
                // Gone, or finished some other way: not a member any more.
                _ => {
                    self.items.remove(&item)?;
                    state.head += 1;
                }
            }
        }
        write_state(self.lanes, lane, &state)?;
        Ok(promoted)
    }

    /// Writes the final record of `d` (taking its leased outbox entry
    /// away) and moves its line on; with `guarded`, nothing is written
    /// when that entry is gone (cluster: another node owns it now).
    pub(in crate::store) fn record_final(
        &self,
        d: &Delivery,
        leased: Option<Timestamp>,
        guarded: bool,
    ) -> TxResult<Option<Delivery>> {
        if let Some(due) = leased {
            let old = outbox_key(due, &d.id);
            if !self.outbox.remove(&old)? && guarded {
                return Ok(None);
            }
        }
        put_delivery_tx(self.deliveries, self.outbox, d, None)?;
        self.finished(d, d.updated_at)
    }

    /// A manual retry of a finished ordered delivery `d` (made pending by
    /// the caller): the head that blocks its line is attempted again where
    /// it stands; any other joins the end of its line.
    /// False (nothing written) when the stored delivery is no longer
    /// finished: a concurrent retry took it first.
    pub(super) fn retry(&self, d: &mut Delivery) -> TxResult<bool> {
        let Some(slot) = d.order.clone() else {
            put_delivery_tx(self.deliveries, self.outbox, d, None)?;
            return Ok(true);
        };
        match self.deliveries.get(d.id.as_bytes())? {
            Some(bytes)
                if decode_delivery(d.id.as_bytes(), &bytes)
                    .map_err(abort)?
                    .status
                    .is_final() => {}
            _ => return Ok(false),
        }
        let lane = lane_key(d, &slot);
        if let Some(mut state) = read_state(self.lanes, &lane)?
            && state.blocked.as_deref() == Some(d.id.as_str())
            && state.head == slot.seq
        {
            state.blocked = None;
            write_state(self.lanes, &lane, &state)?;
            put_delivery_tx(self.deliveries, self.outbox, d, None)?;
            return Ok(true);
        }
        self.join(d)?;
        Ok(true)
    }

    /// Whether `d` holds place `seq` of `lane` (a place is reused once a
    /// line empties and starts again, so the seq alone does not say).
    fn holds(&self, lane: &[u8], seq: u64, d: &Delivery) -> TxResult<bool> {
        Ok(self
            .items
            .get(&item_key(lane, seq))?
            .is_some_and(|id| &id[..] == d.id.as_bytes()))
    }

    /// Lets the line of the failed head `d` go on without it. False when
    /// `d` is not blocking its line.
    pub(super) fn dismiss(
        &self,
        d: &Delivery,
        now: Timestamp,
    ) -> TxResult<(bool, Option<Delivery>)> {
        let Some(slot) = &d.order else {
            return Ok((false, None));
        };
        let lane = lane_key(d, slot);
        match read_state(self.lanes, &lane)? {
            Some(state)
                if state.blocked.as_deref() == Some(d.id.as_str())
                    && self.holds(&lane, state.head, d)? =>
            {
                Ok((true, self.advance(&lane, state, now)?))
            }
            _ => Ok((false, None)),
        }
    }
}

/// Where an ordered delivery's line stands, for the delivery log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanePosition {
    /// The delivery at the head of the line (pending, or failed and blocking).
    pub head: Option<String>,
    /// The line is stopped by its failed head (`on_failure: block`).
    pub blocked: bool,
    /// Deliveries ahead of this one.
    pub ahead: u64,
}

impl Store {
    /// Where `d`'s line stands, if `d` is ordered and its line still exists.
    pub fn lane_position(&self, d: &Delivery) -> Result<Option<LanePosition>, StoreError> {
        let Some((lane, state, seq)) = self.line_of(d)? else {
            return Ok(None);
        };
        let head = self
            .lane_items
            .get(item_key(&lane, state.head))?
            .map(|id| String::from_utf8_lossy(&id).into_owned());
        Ok(Some(LanePosition {
            head,
            blocked: state.blocked.is_some(),
            ahead: seq.saturating_sub(state.head),
        }))
    }

    /// Whether `d` is the failed head that stops its line.
    pub fn is_blocking(&self, d: &Delivery) -> Result<bool, StoreError> {
        Ok(self
            .line_of(d)?
            .is_some_and(|(_, state, _)| state.blocked.as_deref() == Some(d.id.as_str())))
    }

    /// An ordered delivery's line as stored: its key, its state, and the
    /// delivery's place in it.
    fn line_of(&self, d: &Delivery) -> Result<Option<(Vec<u8>, LaneState, u64)>, StoreError> {
        let Some(slot) = &d.order else {
            return Ok(None);
        };
        let lane = lane_key(d, slot);
        let Some(bytes) = self.lanes.get(&lane)? else {
            return Ok(None);
        };
        let state: LaneState = decode(&lane, &bytes)?;
        Ok(Some((lane, state, slot.seq)))
    }

    /// Lines whose subscription is gone (deleted, or its tenant): nothing
    /// will retry or dismiss their heads, so the deliveries waiting in them
    /// fail ("subscription deleted") and the lines go. Run by the prune.
    pub(super) async fn drop_orphan_lines(&self) -> Result<usize, StoreError> {
        let mut w = self.plain().await;
        let mut dropped = 0;
        for kv in self.lanes.iter() {
            let (lane, _) = kv?;
            let mut parts = lane.splitn(3, |b| *b == 0);
            let (Some(tenant), Some(sub)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (tenant, sub) = (
                String::from_utf8_lossy(tenant),
                String::from_utf8_lossy(sub),
            );
            if self.get_subscription(&tenant, &sub)?.is_some() {
                continue;
            }
            for item in self.lane_items.scan_prefix([&lane[..], &[0]].concat()) {
                let (item, id) = item?;
                let id = String::from_utf8_lossy(&id).into_owned();
                if let Some(mut d) = self.get_delivery(&id)?
                    && d.status == DeliveryStatus::Blocked
                {
                    d.status = DeliveryStatus::Failed;
                    d.last_error = Some("subscription deleted".into());
                    d.next_attempt_at = None;
                    w.insert(&self.deliveries, &d.id, super::codec::encode_delivery(&d))?;
                }
                w.remove(&self.lane_items, item)?;
            }
            w.remove(&self.lanes, &lane)?;
            dropped += 1;
        }
        w.commit().await?;
        Ok(dropped)
    }

    /// Every delivery waiting in a line (blocked): the prune keeps their
    /// events' bodies.
    pub(super) fn waiting_deliveries(
        &self,
    ) -> impl Iterator<Item = Result<String, StoreError>> + '_ {
        self.lane_items.iter().map(|kv| {
            let (_, id) = kv?;
            Ok(String::from_utf8_lossy(&id).into_owned())
        })
    }

    /// An ordered delivery's final record, with its line's step, in one
    /// atomic write, durable when this returns. Embedded: concurrent ones
    /// share one transaction and one flush of the committer (a transaction
    /// each costs waiting disk writes apiece). Cluster: one guarded batch,
    /// written only if the outbox entry it was leased from is still there
    /// (else another node owns it now). The delivery made pending, if any.
    pub(super) async fn record_ordered_final(
        &self,
        d: &Delivery,
        leased: Option<Timestamp>,
    ) -> Result<Option<Delivery>, StoreError> {
        if self.log().is_none() {
            let (reply, rx) = tokio::sync::oneshot::channel();
            self.send(super::commit::Job::Ordered {
                record: Box::new((d.clone(), leased)),
                reply,
            })?;
            return rx.await.map_err(|_| super::gone())?;
        }
        self.line_step(&d.tenant_id, |trees| trees.record_final(d, leased, true))
            .await
    }

    /// One atomic step over the four trees of the lines.
    async fn line_step<T>(
        &self,
        tenant: &str,
        step: impl Fn(&LaneTrees) -> TxResult<T>,
    ) -> Result<T, StoreError> {
        self.change_of(
            Some(tenant),
            [
                &self.outbox,
                &self.deliveries,
                &self.lanes,
                &self.lane_items,
            ],
            |[outbox, deliveries, lanes, items]| {
                step(&LaneTrees {
                    lanes,
                    items,
                    deliveries,
                    outbox,
                })
            },
        )
        .await
    }

    /// A manual retry of an ordered delivery (see [`LaneTrees::retry`]):
    /// the delivery as stored (pending, or blocked behind its line); None
    /// when a concurrent retry took it first.
    pub(super) async fn retry_ordered(&self, d: &Delivery) -> Result<Option<Delivery>, StoreError> {
        self.line_step(&d.tenant_id, |trees| {
            let mut d = d.clone();
            trees.retry(&mut d).map(|retried| retried.then_some(d))
        })
        .await
    }

    /// Dismisses the failed head `d` that stops its line: the line goes on.
    /// False when `d` does not stop a line; else the delivery made pending.
    pub async fn dismiss_head(
        &self,
        d: &Delivery,
        now: Timestamp,
    ) -> Result<(bool, Option<Delivery>), StoreError> {
        self.line_step(&d.tenant_id, |trees| trees.dismiss(d, now))
            .await
    }
}
