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

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use tracing::{info, warn};

use crate::app::App;
use crate::event::Envelope;
use crate::runtime::{HeldGroup, HeldItem, WindowBounds};
use crate::store::{
    Delivery, DeliveryStatus, HeldWrite, StoreError, StoredRequest, Subscription, WindowState,
};
use crate::util::new_id;
pub use schedule::{Bounds, Schedule, WindowSpec};

/// How often the scheduler looks for closed windows.
const TICK: Duration = Duration::from_secs(1);
/// After a failed flush, the next try.
const RETRY_AFTER_FAILURE: SignedDuration = SignedDuration::from_mins(5);

/// Deliveries written by a flush whose transaction is not yet on disk: the
/// worker must not send them before it is (a crash could otherwise undo the
/// flush after its collection was sent, and the day would go out twice).
pub type Unsettled = Arc<Mutex<HashSet<String>>>;

/// Checks a hold against the subscription's window and limits, and prepares
/// the writes that store the items with the event.
pub fn hold(
    app: &App,
    sub: &Subscription,
    event: &Envelope,
    items: Vec<HeldItem>,
) -> Result<(Vec<HeldWrite>, String), String> {
    let Some(spec) = &sub.window else {
        return Err(format!(
            "the plugin held {} item(s), but this subscription has no window to collect them",
            items.len()
        ));
    };
    let schedule = spec.schedule()?;
    let occurred: Timestamp = event
        .occurred_at
        .parse()
        .map_err(|_| format!("occurred_at {:?} is not a time", event.occurred_at))?;
    let bounds = schedule.window_of(occurred);
    let close_at = schedule.close_at(&bounds);
    let (held_items, held_bytes) = app
        .store
        .windows_of(&sub.id)
        .map_err(|e| e.to_string())?
        .iter()
        .fold((0, 0), |(n, b), w| (n + w.items, b + w.bytes));
    let new_bytes: u64 = items
        .iter()
        .map(|i| (i.group.len() + i.item.len()) as u64)
        .sum();
    if held_items + items.len() as u64 > spec.max_items || held_bytes + new_bytes > spec.max_bytes {
        return Err(format!(
            "held-item limit reached: {held_items} items / {held_bytes} bytes held, limits {} items / {} bytes (window.max_items / window.max_bytes); flush the window or raise the limits",
            spec.max_items, spec.max_bytes
        ));
    }
    let mut writes = Vec::with_capacity(items.len());
    for item in items {
        writes.push(HeldWrite {
            tenant_id: sub.tenant_id.clone(),
            subscription_id: sub.id.clone(),
            start: bounds.start,
            end: bounds.end,
            close_at,
            seq: app.store.next_seq().map_err(|e| e.to_string())?,
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
}

/// Flushes one window now: reads its items, runs `flush`, and commits the
/// deliveries with the removal of exactly those items.
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
        app.store.drop_windows(&state.subscription_id)?;
        return Ok(result);
    };
    let items = app.store.held_items(&sub.id, state.start)?;
    if items.is_empty() {
        app.store.commit_flush(&sub.id, state.start, &[], &[])?;
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

    let now = app.clock.now();
    let outcome = match &sub.plugin {
        None => Err("the subscription has no plugin to flush its window".to_string()),
        Some(p) => match app.plugins.resolve(&sub.tenant_id, &p.id) {
            Err(e) => Err(format!("plugin {}: {e}", p.id)),
            Ok(plugin) => {
                let bounds = WindowBounds {
                    start: state.start.to_string(),
                    end: state.end.to_string(),
                };
                app.plugins
                    .runtime()
                    .flush(&plugin, &bounds, &groups, &p.config.to_string())
                    .await
                    .result
                    .map_err(|e| format!("flush failed: {e}"))
            }
        },
    };
    let requests = match outcome {
        Ok(r) => r,
        Err(error) => {
            warn!(subscription_id = %sub.id, start = %state.start, %error, "window flush failed; items kept");
            app.store
                .window_failed(&sub.id, state.start, &error, now + RETRY_AFTER_FAILURE)?;
            app.store.durable().await?;
            result.error = Some(error);
            return Ok(result);
        }
    };

    let event_id = format!("window:{}", state.start);
    let deliveries: Vec<Delivery> = requests
        .into_iter()
        .map(|r| Delivery {
            id: new_id("dlv"),
            tenant_id: sub.tenant_id.clone(),
            event_id: event_id.clone(),
            event_type: "window.closed".into(),
            subscription_id: sub.id.clone(),
            status: DeliveryStatus::Pending,
            request: Some(StoredRequest {
                body: r.body,
                content_type: r.content_type,
                headers: r.headers,
            }),
            attempts: vec![],
            next_attempt_at: Some(now),
            last_error: None,
            created_at: now,
            updated_at: now,
        })
        .collect();
    let ids: Vec<String> = deliveries.iter().map(|d| d.id.clone()).collect();
    lock(&app.unsettled).extend(ids.iter().cloned());
    failpoint("flush-before-commit");
    let committed = app
        .store
        .commit_flush(&sub.id, state.start, &flushed, &deliveries);
    failpoint("flush-after-commit");
    let durable = match committed {
        Ok(true) => app.store.durable().await.map(|_| true),
        other => other,
    };
    {
        let mut unsettled = lock(&app.unsettled);
        for id in &ids {
            unsettled.remove(id);
        }
    }
    if durable? {
        info!(subscription_id = %sub.id, start = %state.start, items = result.items, deliveries = ids.len(), "window flushed");
        result.deliveries = ids;
        app.wake.notify_one();
    }
    Ok(result)
}

fn lock(set: &Unsettled) -> std::sync::MutexGuard<'_, HashSet<String>> {
    set.lock().unwrap_or_else(|e| e.into_inner())
}

/// Crash-test hook: `WASMHOOK_FAILPOINT=<name>` aborts the process there.
fn failpoint(name: &str) {
    if std::env::var("WASMHOOK_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("wasmhook: failpoint {name}: aborting");
        std::process::abort();
    }
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
        if state.close_at > now {
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
        flush_window(app, &state).await?;
        flushed += 1;
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
