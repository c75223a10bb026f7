//! Ingest: from validated events to durable deliveries.
//!
//! For each event: route it to the tenant's enabled subscriptions, run each
//! subscription's plugin **once** (the requests it returns are stored with the
//! delivery, so every retry sends the same bytes under the same delivery id),
//! then store the event with all its deliveries atomically (in one group
//! with concurrent requests, see the store's committer) and wait until it
//! is on disk before answering.
//! A plugin that skips, fails or traps produces a recorded delivery
//! (filtered / failed), never a lost event and never an error for the
//! sender.

use jiff::Timestamp;
use serde::Serialize;
use tracing::{Instrument, debug, warn};

use crate::traces;

use crate::app::App;
use crate::event::Envelope;
use crate::route;
use crate::runtime::Action;
use crate::runtime::admission::Busy;
use crate::store::{
    Accepted, Delivery, DeliveryStatus, HeldWrite, NewEvent, StoreError, StoredEvent,
    StoredRequest, Subscription,
};
use crate::subscription::{new_delivery, pending_deliveries};

/// Why a request was not accepted. Nothing of it was stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No plugin slot within the admission wait: answered 503 before
    /// anything is stored, so the sender's retry loses nothing.
    #[error(transparent)]
    Busy(#[from] Busy),
    #[error(
        "this request would create {count} deliveries, over limits.deliveries_per_request = {limit}; send fewer events per request"
    )]
    TooManyDeliveries { count: usize, limit: usize },
    #[error(
        "the tenant has {pending} deliveries pending and this request adds {adding}, over its backlog quota limits.pending_deliveries_per_tenant = {limit}; retry when its endpoints have caught up"
    )]
    BacklogFull {
        pending: u64,
        adding: usize,
        limit: u64,
    },
    /// The tenant sent this event id before, to another application (or
    /// to none): it is not routed again, and this is no duplicate of it.
    #[error(
        "event {id:?} was sent before to {}; an event id names one event (send this one under a new id)",
        .was.as_deref().map_or("no application".to_string(), |a| format!("application {a}"))
    )]
    OtherApp { id: String, was: Option<String> },
}

/// The answer for one event: its id, and whether it was new.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IngestResult {
    pub id: String,
    /// False when the tenant had sent this id before (nothing was routed).
    pub accepted_new: bool,
    /// The deliveries of the event (the first time's, for a duplicate).
    pub deliveries: Vec<String>,
}

/// Accepts a batch of a tenant's validated events; returns once they and
/// their deliveries are on disk (and only then can a worker see them).
pub async fn accept(
    app: &App,
    tenant_id: &str,
    events: Vec<Envelope>,
) -> Result<Vec<IngestResult>, IngestError> {
    let now = app.clock.now();
    let subscriptions = app.store.routes(tenant_id)?;
    let mut batch = Vec::with_capacity(events.len());
    let mut fresh = Vec::with_capacity(events.len());
    for event in events {
        // A retried request must not run plugins again for nothing.
        match app.store.get_event(tenant_id, &event.id)? {
            Some(existing) if existing.event.app != event.app => {
                return Err(IngestError::OtherApp {
                    id: event.id,
                    was: existing.event.app,
                });
            }
            Some(existing) => batch.push(NewEvent {
                replay: false,
                event: existing,
                deliveries: Vec::new(),
                held: Vec::new(),
                released: Vec::new(),
            }),
            None => fresh.push(event),
        }
    }
    let routed: Vec<(Envelope, Vec<&Subscription>)> = fresh
        .into_iter()
        .map(|event| {
            let subs = subscriptions
                .iter()
                .filter(|s| s.enabled && route::wants(s, &event))
                .collect();
            (event, subs)
        })
        .collect();
    // Each routed pair makes at least one delivery record: refuse before
    // running any plugin when that alone is over a bound.
    let pairs: usize = routed.iter().map(|(_, subs)| subs.len()).sum();
    check_bounds(app, tenant_id, pairs, 0)?;
    for (event, subs) in routed {
        // Its attempts, later and maybe elsewhere, are children of this
        // span (`traces.rs`).
        let span = tracing::info_span!(
            target: traces::TARGET,
            "event",
            event.id = %event.id,
            event.type = %event.event_type,
            tenant.id = %tenant_id,
            subscriptions = subs.len() as i64,
        );
        let trace = traces::traceparent(&span);
        let mut deliveries = Vec::new();
        let mut held = Vec::new();
        let mut released = Vec::new();
        for sub in subs {
            let out = transform(app, sub, &event, now, HoldMode::Keep)
                .instrument(span.clone())
                .await?;
            deliveries.extend(out.deliveries);
            held.extend(out.held);
            released.extend(out.released);
        }
        drop(span);
        batch.push(NewEvent {
            replay: false,
            held,
            released,
            event: StoredEvent {
                tenant_id: tenant_id.to_string(),
                event,
                received_at: now,
                deliveries: deliveries.iter().map(|d| d.id.clone()).collect(),
                trace,
            },
            deliveries,
        });
    }
    check_batch(app, tenant_id, &batch)?;
    let commit = tracing::info_span!(target: traces::TARGET, "commit", events = batch.len() as i64);
    Ok(app
        .queue
        .accept(batch)
        .instrument(commit)
        .await?
        .into_iter()
        .map(|(new, outcome)| match outcome {
            Accepted::New => IngestResult {
                id: new.event.event.id,
                accepted_new: true,
                deliveries: new.event.deliveries,
            },
            Accepted::Duplicate(existing) => IngestResult {
                id: existing.event.id,
                accepted_new: false,
                deliveries: existing.deliveries,
            },
        })
        .collect())
}

/// The bounds on a transformed batch, exactly; returns the deliveries it creates.
fn check_batch(app: &App, tenant_id: &str, batch: &[NewEvent]) -> Result<usize, IngestError> {
    let created: usize = batch.iter().map(|n| n.deliveries.len()).sum();
    let pending = batch
        .iter()
        .flat_map(|n| &n.deliveries)
        .filter(|d| d.status == DeliveryStatus::Pending)
        .count();
    check_bounds(app, tenant_id, created, pending)?;
    Ok(created)
}

/// The per-request and per-tenant bounds on what a request creates:
/// `created` delivery records, `pending` of them to be sent (0 skips the
/// backlog quota: a request that adds nothing to send is never refused by it).
fn check_bounds(
    app: &App,
    tenant_id: &str,
    created: usize,
    pending: usize,
) -> Result<(), IngestError> {
    let bounds = &app.settings.bounds;
    if created > bounds.deliveries_per_request {
        return Err(IngestError::TooManyDeliveries {
            count: created,
            limit: bounds.deliveries_per_request,
        });
    }
    if pending == 0 {
        return Ok(());
    }
    let queued = app.queue.tenant_pending(tenant_id);
    if queued + pending as u64 > bounds.pending_deliveries_per_tenant {
        return Err(IngestError::BacklogFull {
            pending: queued,
            adding: pending,
            limit: bounds.pending_deliveries_per_tenant,
        });
    }
    Ok(())
}

/// Routes the tenant's stored events received since `since` again through
/// one subscription (replay), in one transaction with their new deliveries,
/// visible once durable. Returns (events, deliveries) routed. A replay is
/// one request: more matching events than `limits.deliveries_per_request`
/// are refused (replay a later `since`).
pub async fn replay(
    app: &App,
    sub: &Subscription,
    since: Timestamp,
) -> Result<(usize, usize), IngestError> {
    let now = app.clock.now();
    let limit = app.settings.bounds.deliveries_per_request;
    let events = app.store.events_since(
        &sub.tenant_id,
        since,
        |e| route::wants(sub, &e.event),
        limit + 1,
    )?;
    check_bounds(app, &sub.tenant_id, events.len(), 0)?;
    let mut batch = Vec::with_capacity(events.len());
    for stored in events {
        let out = transform(app, sub, &stored.event, now, HoldMode::Keep).await?;
        batch.push(NewEvent {
            replay: true,
            event: stored,
            deliveries: out.deliveries,
            held: out.held,
            released: out.released,
        });
    }
    let created = check_batch(app, &sub.tenant_id, &batch)?;
    let events = batch.len();
    app.queue.accept(batch).await?;
    Ok((events, created))
}

/// What routing one event to one subscription produced.
#[derive(Debug, Default)]
pub struct Transformed {
    pub deliveries: Vec<Delivery>,
    /// Items the plugin held for the subscription's window.
    pub held: Vec<HeldWrite>,
    /// Held items the plugin took (`host.take-held`), to remove.
    pub released: Vec<crate::runtime::TakenItem>,
}

/// What to do with items a plugin holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldMode {
    /// Keep them in the subscription's window (events, replay).
    Keep,
    /// Record the hold only (a test event must not land in a real window).
    Discard,
}

/// Runs the subscription's plugin on the event (once, after taking an
/// admission slot) and turns the action into deliveries: one pending
/// delivery per request, or one filtered, held or failed delivery that
/// records why nothing is sent. Only a full plugin pool and a storage
/// fault are errors (a 503: nothing is stored).
pub async fn transform(
    app: &App,
    sub: &Subscription,
    event: &Envelope,
    now: Timestamp,
    hold: HoldMode,
) -> Result<Transformed, IngestError> {
    let span = tracing::info_span!(
        target: traces::TARGET,
        "transform",
        subscription.id = %sub.id,
        plugin = sub.plugin.as_ref().map_or("none", |p| p.id.as_str()),
        outcome = tracing::field::Empty,
        deliveries = tracing::field::Empty,
    );
    let out = run_plugin(app, sub, event, now, hold)
        .instrument(span.clone())
        .await;
    if !span.is_disabled() {
        let outcome = match &out {
            Err(e) => {
                traces::set_error(&span, &e.to_string());
                "error"
            }
            Ok(t) => transform_outcome(t),
        };
        span.record("outcome", outcome);
        if let Ok(t) = &out {
            span.record("deliveries", t.deliveries.len() as i64);
        }
    }
    let mut out = out?;
    // An ordered subscription's pending deliveries join their key's line
    // (a plugin's several requests in their order). A test event is
    // attempted at once, outside any line.
    if hold == HoldMode::Keep
        && let Some(slot) = crate::subscription::order_slot(sub, event)
    {
        for d in out
            .deliveries
            .iter_mut()
            .filter(|d| d.status == DeliveryStatus::Pending)
        {
            d.order = Some(slot.clone());
        }
    }
    Ok(out)
}

/// What a transform did, as its span says: `deliver` (something to send),
/// `failed`, `held` or `filtered`.
fn transform_outcome(t: &Transformed) -> &'static str {
    let has = |status| t.deliveries.iter().any(|d| d.status == status);
    if has(DeliveryStatus::Pending) {
        "deliver"
    } else if has(DeliveryStatus::Failed) {
        "failed"
    } else if has(DeliveryStatus::Held) || !t.held.is_empty() {
        "held"
    } else {
        "filtered"
    }
}

/// [`transform`] before the deliveries take their places in line.
async fn run_plugin(
    app: &App,
    sub: &Subscription,
    event: &Envelope,
    now: Timestamp,
    hold: HoldMode,
) -> Result<Transformed, IngestError> {
    let delivery =
        |status: DeliveryStatus, request: Option<StoredRequest>, note: Option<String>| {
            new_delivery(
                sub,
                &event.id,
                &event.event_type,
                now,
                status,
                request,
                note,
            )
        };
    let one = |d: Delivery| Transformed {
        deliveries: vec![d],
        held: Vec::new(),
        released: Vec::new(),
    };
    let Some(plugin_ref) = &sub.plugin else {
        if sub.signature == crate::sign::Scheme::Svix {
            // Svix's body: the payload alone, as it was sent.
            let request = StoredRequest {
                body: event.data.as_str().to_string(),
                content_type: "application/json".into(),
                headers: Vec::new(),
                event_name: None,
                body_from_event: false,
            };
            return Ok(one(delivery(DeliveryStatus::Pending, Some(request), None)));
        }
        // The body is the event's envelope: stored once, with the event.
        let request = StoredRequest {
            body: String::new(),
            content_type: "application/json".into(),
            headers: Vec::new(),
            event_name: None,
            body_from_event: true,
        };
        return Ok(one(delivery(DeliveryStatus::Pending, Some(request), None)));
    };
    let plugin = match app.plugins.resolve(&sub.tenant_id, &plugin_ref.id).await {
        Ok(p) => p,
        // The store cannot answer now (in cluster mode, the component not
        // yet visible through this node's NATS server): 503 before anything
        // is stored, and the sender's retry routes it, rather than a
        // delivery failed for good.
        Err(crate::plugins::ResolveError::Store(e)) if e.is_unavailable() => {
            return Err(e.into());
        }
        Err(e) => {
            warn!(subscription_id = %sub.id, error = %e, "plugin unavailable");
            return Ok(one(delivery(
                DeliveryStatus::Failed,
                None,
                Some(format!("plugin {}: {e}", plugin_ref.id)),
            )));
        }
    };
    let config = plugin_ref.config.to_string();
    // A subscription with a window may take its held items back (a
    // conversation sent when it closes); a test event takes nothing.
    let held: Option<std::sync::Arc<dyn crate::runtime::HeldSource>> =
        (sub.window.is_some() && hold == HoldMode::Keep).then(|| {
            std::sync::Arc::new(crate::store::SubscriptionHeld {
                store: app.store.clone(),
                subscription_id: sub.id.clone(),
            }) as _
        });
    let mut report = {
        let _slot = app.plugins.admit(&sub.tenant_id).await?;
        app.plugins
            .runtime()
            .handle_with(&plugin, &event.to_plugin_event(), &config, held)
            .await
    };
    let taken = std::mem::take(&mut report.taken);
    debug!(subscription_id = %sub.id, event_id = %event.id, elapsed_us = report.elapsed.as_micros() as u64, "plugin ran");
    let mut out = match report.result {
        Ok(Action::Skip { reason }) => one(delivery(
            DeliveryStatus::Filtered,
            None,
            Some(reason.unwrap_or_else(|| "skipped by the plugin".into())),
        )),
        Ok(Action::Deliver { requests }) if requests.is_empty() => one(delivery(
            DeliveryStatus::Filtered,
            None,
            Some("the plugin returned no requests".into()),
        )),
        Ok(Action::Deliver { requests }) => {
            match pending_deliveries(
                sub,
                &event.id,
                &event.event_type,
                requests,
                report.delivery_ids,
                now,
            ) {
                Ok(deliveries) => Transformed {
                    deliveries,
                    held: Vec::new(),
                    released: Vec::new(),
                },
                Err(why) => one(delivery(DeliveryStatus::Failed, None, Some(why))),
            }
        }
        Ok(Action::Hold { items }) if hold == HoldMode::Discard => one(delivery(
            DeliveryStatus::Held,
            None,
            Some(format!(
                "the plugin held {} item(s); a test event's items are not kept in the window",
                items.len()
            )),
        )),
        Ok(Action::Hold { items }) => match crate::window::hold(app, sub, event, items) {
            Ok((held, note)) => Transformed {
                deliveries: vec![delivery(DeliveryStatus::Held, None, Some(note))],
                held,
                released: Vec::new(),
            },
            Err(crate::window::HoldError::Refused(why)) => {
                one(delivery(DeliveryStatus::Failed, None, Some(why)))
            }
            Err(crate::window::HoldError::Store(e)) => return Err(e.into()),
        },
        Err(e) => {
            let log_tail: Vec<String> = report
                .log
                .iter()
                .rev()
                .take(3)
                .map(|l| l.message.clone())
                .collect();
            let mut message = e.to_string();
            if !log_tail.is_empty() && !matches!(e, crate::runtime::CallError::Panic { .. }) {
                message.push_str(&format!(" (plugin log: {})", log_tail.join(" | ")));
            }
            one(delivery(DeliveryStatus::Failed, None, Some(message)))
        }
    };
    // Taken items go only with a result that is kept: a failed call (or
    // one whose output was refused) leaves them held.
    if !out
        .deliveries
        .iter()
        .any(|d| d.status == DeliveryStatus::Failed)
    {
        out.released = taken;
    }
    Ok(out)
}
