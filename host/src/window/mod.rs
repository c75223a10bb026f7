//! Windows: items a plugin holds (e.g. a day's chat messages) wait in the
//! store, keyed by (subscription, window, arrival); when the window closes
//! the scheduler calls the plugin's `flush` and turns its requests into
//! deliveries **in the same transaction** that removes the items. A crash
//! before that transaction leaves the items for the next try; after it, the
//! deliveries exist and the items are gone, so a day is sent once.
//!
//! Late items — events whose window was already flushed — are held in that
//! same window again and flushed at the next scheduler tick, as a separate
//! late delivery for that window (same `StartTime`/`EndTime`). Nothing is
//! moved into the next window: a receiver always gets an item under the
//! window its event happened in.

mod schedule;

use std::future::Future;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use tracing::{info, warn};

use crate::app::App;
use crate::event::Envelope;
use crate::runtime::{CallError, HeldGroup, HeldItem, WindowBounds};
use crate::store::{HeldWrite, StoreError, Subscription, WindowState};
use crate::util::{failpoint, new_id_at};
pub use schedule::{Bounds, Schedule, WindowSpec};

/// How often the scheduler looks for closed windows.
const TICK: Duration = Duration::from_secs(1);
/// After a failed flush, the next try.
const RETRY_AFTER_FAILURE: SignedDuration = SignedDuration::from_mins(5);

/// Why a hold was not taken.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// The hold breaks the subscription's window or its limits: the
    /// delivery fails with this reason.
    #[error("{0}")]
    Refused(String),
    /// The store could not be read: nothing is stored, the request is a 503.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<String> for HoldError {
    fn from(why: String) -> Self {
        HoldError::Refused(why)
    }
}

/// Checks a hold against the subscription's window and limits, and prepares
/// the writes that store the items with the event.
pub fn hold(
    app: &App,
    sub: &Subscription,
    event: &Envelope,
    items: Vec<HeldItem>,
) -> Result<(Vec<HeldWrite>, String), HoldError> {
    let Some(spec) = &sub.window else {
        return Err(HoldError::Refused(format!(
            "the plugin held {} item(s), but this subscription has no window to collect them",
            items.len()
        )));
    };
    let schedule = spec.schedule()?;
    let occurred: Timestamp = event
        .occurred_at
        .parse()
        .map_err(|_| format!("occurred_at {:?} is not a time", event.occurred_at))?;
    let (bounds, close_at) = schedule
        .window_of(occurred)
        .and_then(|b| Some((b, schedule.close_at(&b)?)))
        .ok_or_else(|| {
            format!(
                "occurred_at {} has no window that ever closes",
                event.occurred_at
            )
        })?;
    if crate::util::failpoint_active("window-hold-store-fault") {
        // Test hook: the held-item tally cannot be read, as on an I/O error.
        return Err(HoldError::Store(StoreError::Sled(sled::Error::Io(
            std::io::Error::other("failpoint window-hold-store-fault"),
        ))));
    }
    let (held_items, held_bytes) = app
        .store
        .windows_of(&sub.id)?
        .iter()
        .fold((0, 0), |(n, b), w| (n + w.items, b + w.bytes));
    let new_bytes: u64 = items
        .iter()
        .map(|i| (i.group.len() + i.item.len()) as u64)
        .sum();
    if held_items + items.len() as u64 > spec.max_items || held_bytes + new_bytes > spec.max_bytes {
        return Err(HoldError::Refused(format!(
            "held-item limit reached: {held_items} items / {held_bytes} bytes held, limits {} items / {} bytes (window.max_items / window.max_bytes); flush the window or raise the limits",
            spec.max_items, spec.max_bytes
        )));
    }
    let mut writes = Vec::with_capacity(items.len());
    for item in items {
        writes.push(HeldWrite {
            tenant_id: sub.tenant_id.clone(),
            subscription_id: sub.id.clone(),
            start: bounds.start,
            end: bounds.end,
            close_at,
            seq: app.store.next_seq()?,
            group: item.group,
            item: item.item,
        });
    }
    let note = format!(
        "held {} item(s) for the window [{}, {}), closing at {close_at}",
        writes.len(),
        bounds.start,
        bounds.end
    );
    Ok((writes, note))
}

/// What flushing one window did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FlushResult {
    pub start: Timestamp,
    pub end: Timestamp,
    pub items: usize,
    /// The deliveries made of the window's requests.
    pub deliveries: Vec<String>,
    /// Why the flush failed (the items are kept).
    pub error: Option<String>,
}

/// A failure to flush; the items stay held.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No plugin slot within the admission wait; the window is tried again.
    #[error(transparent)]
    Busy(#[from] crate::runtime::admission::Busy),
}

/// Why one `flush` call produced no requests.
enum CallFailure {
    /// The output (or the memory to build it) was too large: smaller parts
    /// may fit.
    TooLarge(String),
    Other(String),
}

/// Flushes one window now: reads its items, runs `flush`, and commits the
/// deliveries with the removal of exactly those items. A window whose
/// collection is over the plugin's output or memory limit is split — by
/// groups, then by items — into parts flushed one call each, all committed
/// in the one transaction, so a full window is always sent.
pub async fn flush_window(app: &App, state: &WindowState) -> Result<FlushResult, FlushError> {
    let mut result = FlushResult {
        start: state.start,
        end: state.end,
        items: 0,
        deliveries: vec![],
        error: None,
    };
    let Some(sub) = app
        .store
        .get_subscription(&state.tenant_id, &state.subscription_id)?
    else {
        app.store
            .drop_windows(&state.tenant_id, &state.subscription_id)
            .await?;
        return Ok(result);
    };
    let items = app.store.held_items(&sub.id, state.start)?;
    if items.is_empty() {
        app.queue
            .commit_flush(&sub.tenant_id, &sub.id, state.start, &[], &[])
            .await?;
        return Ok(result);
    }
    result.items = items.len();
    // Groups in the order their first item arrived, items in arrival order.
    let mut groups: Vec<HeldGroup> = Vec::new();
    for (_, record) in &items {
        match groups.iter_mut().find(|g| g.key == record.group) {
            Some(g) => g.items.push(record.item.clone()),
            None => groups.push(HeldGroup {
                key: record.group.clone(),
                items: vec![record.item.clone()],
            }),
        }
    }
    let flushed: Vec<(Vec<u8>, u64)> = items
        .iter()
        .map(|(k, r)| (k.clone(), (r.group.len() + r.item.len()) as u64))
        .collect();
    drop(items);

    let now = app.clock.now();
    let requests = match &sub.plugin {
        None => Err("the subscription has no plugin to flush its window".to_string()),
        Some(p) => match app.plugins.resolve(&sub.tenant_id, &p.id).await {
            Err(e) => Err(format!("plugin {}: {e}", p.id)),
            Ok(plugin) => {
                let bounds = WindowBounds {
                    start: state.start.to_string(),
                    end: state.end.to_string(),
                };
                let config = p.config.to_string();
                flush_in_parts(app, &sub.tenant_id, &plugin, &bounds, groups, &config).await?
            }
        },
    };
    let event_id = format!("window:{}", state.start);
    let deliveries = requests.and_then(|(requests, ids)| {
        crate::subscription::pending_deliveries(
            &sub,
            &event_id,
            "window.closed",
            requests,
            ids,
            now,
        )
    });
    let deliveries = match deliveries {
        Ok(d) => d,
        Err(error) => {
            warn!(subscription_id = %sub.id, start = %state.start, %error, "window flush failed; items kept");
            app.store
                .window_failed(
                    &sub.tenant_id,
                    &sub.id,
                    state.start,
                    &error,
                    now + RETRY_AFTER_FAILURE,
                )
                .await?;
            app.store.durable().await?;
            crate::telemetry::window_flush(false);
            result.error = Some(error);
            return Ok(result);
        }
    };

    let ids: Vec<String> = deliveries.iter().map(|d| d.id.clone()).collect();
    failpoint("flush-before-commit");
    // Visible to the workers only once the transaction is on disk: a crash
    // cannot undo a flush whose collection already went out.
    if app
        .queue
        .commit_flush(&sub.tenant_id, &sub.id, state.start, &flushed, &deliveries)
        .await?
    {
        info!(subscription_id = %sub.id, start = %state.start, items = result.items, deliveries = ids.len(), "window flushed");
        crate::telemetry::window_flush(true);
        result.deliveries = ids;
    }
    Ok(result)
}

/// Calls `flush` on the groups; when the answer is too large, splits them
/// in two (by groups, or a lone group by items) and flushes each half.
/// Returns the requests and their delivery ids (those the plugin took
/// through `host.delivery-id`, new ones for the rest).
async fn flush_in_parts(
    app: &App,
    tenant_id: &str,
    plugin: &crate::runtime::Plugin,
    bounds: &WindowBounds,
    groups: Vec<HeldGroup>,
    config: &str,
) -> Result<Result<(Vec<crate::runtime::PluginRequest>, Vec<String>), String>, FlushError> {
    let mut pending = vec![groups];
    let mut requests = Vec::new();
    let mut ids = Vec::new();
    while let Some(part) = pending.pop() {
        let report = {
            let _slot = app.plugins.admit(tenant_id).await?;
            app.plugins
                .runtime()
                .flush(plugin, bounds, &part, config)
                .await
        };
        let failure = match report.result {
            Ok(r) => {
                let mut part_ids = report.delivery_ids;
                part_ids.truncate(r.len());
                part_ids.resize_with(r.len(), || new_id_at("dlv", app.clock.now()));
                ids.extend(part_ids);
                requests.extend(r);
                continue;
            }
            Err(
                e @ (CallError::OutputTooLarge { .. }
                | CallError::OutputOverLimit { .. }
                | CallError::TooManyRequests { .. }
                | CallError::MemoryLimit { .. }),
            ) => CallFailure::TooLarge(format!("flush failed: {e}")),
            Err(e) => CallFailure::Other(format!("flush failed: {e}")),
        };
        match failure {
            CallFailure::TooLarge(why) => match split(part) {
                Some((a, b)) => {
                    // Depth first, second half below the first: the parts
                    // go out in arrival order.
                    pending.push(b);
                    pending.push(a);
                }
                None => return Ok(Err(format!("{why} (even for a single held item)"))),
            },
            CallFailure::Other(why) => return Ok(Err(why)),
        }
    }
    Ok(Ok((requests, ids)))
}

/// Halves a part: by groups when there are several, else the lone group's
/// items. None when it is one item.
fn split(mut groups: Vec<HeldGroup>) -> Option<(Vec<HeldGroup>, Vec<HeldGroup>)> {
    if groups.len() > 1 {
        let second = groups.split_off(groups.len() / 2);
        return Some((groups, second));
    }
    let mut group = groups.pop()?;
    if group.items.len() < 2 {
        return None;
    }
    let rest = group.items.split_off(group.items.len() / 2);
    let second = HeldGroup {
        key: group.key.clone(),
        items: rest,
    };
    Some((vec![group], vec![second]))
}

/// Flushes every window of a subscription that holds items, closed or not
/// (`POST /v1/subscriptions/{id}/flush`).
pub async fn flush_subscription(
    app: &App,
    sub: &Subscription,
) -> Result<Vec<FlushResult>, FlushError> {
    let mut results = Vec::new();
    for state in app.store.windows_of(&sub.id)? {
        results.push(flush_window(app, &state).await?);
    }
    Ok(results)
}

/// Flushes every window whose close time has passed (and whose last failure
/// is old enough); returns how many were flushed.
pub async fn flush_due(app: &App) -> Result<usize, FlushError> {
    let now = app.clock.now();
    let mut flushed = 0;
    for state in app.store.windows()? {
        if state.close_at > now || !app.owns(&state.tenant_id, &state.subscription_id) {
            // Not closed yet, or (cluster mode) another node's to flush.
            continue;
        }
        if state.retry_at.is_some_and(|t| t > now) {
            continue;
        }
        // A disabled subscription keeps its items until it is enabled again
        // (or flushed by hand): flushing now would only fail the deliveries.
        let enabled = app
            .store
            .get_subscription(&state.tenant_id, &state.subscription_id)?
            .is_none_or(|s| s.enabled);
        if !enabled {
            continue;
        }
        match flush_window(app, &state).await {
            Ok(_) => flushed += 1,
            // The pool is busy: this window waits for the next tick.
            Err(FlushError::Busy(e)) => {
                warn!(subscription_id = %state.subscription_id, error = %e, "window flush postponed")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(flushed)
}

/// The scheduler: flushes due windows every tick until `shutdown`. Its first
/// tick runs at start-up, so windows that closed while the process was down
/// are flushed then.
pub async fn run_scheduler(app: App, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        if let Err(e) = flush_due(&app).await {
            warn!(error = %e, "window scheduler");
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}
