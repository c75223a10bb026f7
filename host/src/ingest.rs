//! Ingest: from validated events to durable deliveries.
//!
//! For each event: route it to the tenant's enabled subscriptions, run each
//! subscription's plugin **once** (the requests it returns are stored with the
//! delivery, so every retry sends the same bytes under the same delivery id),
//! then store the event with all its deliveries in one transaction and wait
//! for the group commit before answering. A plugin that skips, fails or
//! traps produces a recorded delivery (filtered / failed), never a lost event
//! and never an error for the sender.

use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;
use tracing::{debug, warn};

use crate::app::App;
use crate::event::Envelope;
use crate::route;
use crate::runtime::{Action, PluginRequest};
use crate::store::{
    Accepted, Delivery, DeliveryStatus, HeldWrite, NewEvent, StoreError, StoredEvent,
    StoredRequest, Subscription,
};
use crate::util::new_id;

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
/// their deliveries are on disk.
pub async fn accept(
    app: &App,
    tenant_id: &str,
    events: Vec<Envelope>,
) -> Result<Vec<IngestResult>, StoreError> {
    let now = app.clock.now();
    let subscriptions = app.store.list_subscriptions(tenant_id)?;
    let mut batch = Vec::with_capacity(events.len());
    for event in events {
        // A retried request must not run plugins again for nothing.
        if let Some(existing) = app.store.get_event(tenant_id, &event.id)? {
            batch.push(NewEvent {
                event: existing,
                deliveries: Vec::new(),
                held: Vec::new(),
            });
            continue;
        }
        let mut deliveries = Vec::new();
        let mut held = Vec::new();
        for sub in subscriptions
            .iter()
            .filter(|s| s.enabled && route::matches_any(&s.event_types, &event.event_type))
        {
            let out = transform(app, sub, &event, now).await;
            deliveries.extend(out.deliveries);
            held.extend(out.held);
        }
        batch.push(NewEvent {
            held,
            event: StoredEvent {
                tenant_id: tenant_id.to_string(),
                event,
                received_at: now,
                deliveries: deliveries.iter().map(|d| d.id.clone()).collect(),
            },
            deliveries,
        });
    }
    let outcomes = app.store.accept(&batch)?;
    app.store.durable().await?;
    app.wake.notify_one();
    Ok(batch
        .into_iter()
        .zip(outcomes)
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

/// The body sent when a subscription has no plugin: the Standard Webhooks
/// payload form (`type`, `timestamp`, `data`) plus the event id.
pub fn envelope_body(event: &Envelope) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        id: &'a str,
        #[serde(rename = "type")]
        event_type: &'a str,
        timestamp: &'a str,
        data: &'a Value,
    }
    serde_json::to_string(&Body {
        id: &event.id,
        event_type: &event.event_type,
        timestamp: &event.occurred_at,
        data: &event.data,
    })
    .expect("serializable")
}

/// What routing one event to one subscription produced.
#[derive(Debug, Default)]
pub struct Transformed {
    pub deliveries: Vec<Delivery>,
    /// Items the plugin held for the subscription's window.
    pub held: Vec<HeldWrite>,
}

/// Runs the subscription's plugin on the event (once) and turns the action
/// into deliveries: one pending delivery per request, or one filtered,
/// held or failed delivery that records why nothing is sent.
pub async fn transform(
    app: &App,
    sub: &Subscription,
    event: &Envelope,
    now: Timestamp,
) -> Transformed {
    let mut held = Vec::new();
    let deliveries = transform_inner(app, sub, event, now, &mut held).await;
    Transformed { deliveries, held }
}

async fn transform_inner(
    app: &App,
    sub: &Subscription,
    event: &Envelope,
    now: Timestamp,
    held: &mut Vec<HeldWrite>,
) -> Vec<Delivery> {
    let delivery =
        |status: DeliveryStatus, request: Option<StoredRequest>, note: Option<String>| Delivery {
            id: new_id("dlv"),
            tenant_id: sub.tenant_id.clone(),
            event_id: event.id.clone(),
            event_type: event.event_type.clone(),
            subscription_id: sub.id.clone(),
            status,
            next_attempt_at: (status == DeliveryStatus::Pending).then_some(now),
            request,
            attempts: Vec::new(),
            last_error: note,
            created_at: now,
            updated_at: now,
        };
    let Some(plugin_ref) = &sub.plugin else {
        let request = StoredRequest {
            body: envelope_body(event),
            content_type: "application/json".into(),
            headers: Vec::new(),
        };
        return vec![delivery(DeliveryStatus::Pending, Some(request), None)];
    };
    let plugin = match app.plugins.resolve(&sub.tenant_id, &plugin_ref.id) {
        Ok(p) => p,
        Err(e) => {
            warn!(subscription_id = %sub.id, error = %e, "plugin unavailable");
            return vec![delivery(
                DeliveryStatus::Failed,
                None,
                Some(format!("plugin {}: {e}", plugin_ref.id)),
            )];
        }
    };
    let config = plugin_ref.config.to_string();
    let report = app
        .plugins
        .runtime()
        .handle(&plugin, &event.to_plugin_event(), &config)
        .await;
    debug!(subscription_id = %sub.id, event_id = %event.id, elapsed_us = report.elapsed.as_micros() as u64, "plugin ran");
    let reserved = crate::sign::reserved_names(&sub.signature);
    match report.result {
        Ok(Action::Skip { reason }) => vec![delivery(
            DeliveryStatus::Filtered,
            None,
            Some(reason.unwrap_or_else(|| "skipped by the plugin".into())),
        )],
        Ok(Action::Deliver { requests }) if requests.is_empty() => vec![delivery(
            DeliveryStatus::Filtered,
            None,
            Some("the plugin returned no requests".into()),
        )],
        Ok(Action::Deliver { requests }) => {
            // The scheme's own header names (configurable per subscription)
            // are reserved too.
            if let Some(h) = requests
                .iter()
                .flat_map(|r| &r.headers)
                .find(|h| reserved.contains(&h.name.to_ascii_lowercase()))
            {
                return vec![delivery(
                    DeliveryStatus::Failed,
                    None,
                    Some(format!(
                        "plugin set the reserved header {:?}; wasmhook sets it itself",
                        h.name
                    )),
                )];
            }
            requests
                .into_iter()
                .map(|r: PluginRequest| {
                    let request = StoredRequest {
                        body: r.body,
                        content_type: r.content_type,
                        headers: r.headers,
                    };
                    delivery(DeliveryStatus::Pending, Some(request), None)
                })
                .collect()
        }
        Ok(Action::Hold { items }) => match crate::window::hold(app, sub, event, items) {
            Ok((writes, note)) => {
                held.extend(writes);
                vec![delivery(DeliveryStatus::Held, None, Some(note))]
            }
            Err(why) => vec![delivery(DeliveryStatus::Failed, None, Some(why))],
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
            vec![delivery(DeliveryStatus::Failed, None, Some(message))]
        }
    }
}
