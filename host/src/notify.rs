//! Owners told: when a subscription is disabled (its endpoint answered 410,
//! too many deliveries in a row failed, or someone disabled it through the
//! API) or enabled again, the tenant's **operational webhook** gets a
//! `subscription.disabled` / `subscription.enabled` event.
//!
//! The ops endpoint is a [`Subscription`] record kept apart from the
//! tenant's subscriptions (it never routes events), with the id
//! `ops_<tenant id>`. A notification is an ordinary [`Delivery`] to it, so it
//! is signed (Standard Webhooks), queued fairly, retried on the standard
//! schedule and shown in the delivery log like any other; only the
//! bookkeeping that could disable an endpoint is skipped for it, so a
//! failing ops endpoint can never notify about itself.

use jiff::Timestamp;
use serde_json::json;
use tracing::info;

use crate::queue::Queue;
use crate::store::{Delivery, DeliveryStatus, Store, StoreError, StoredRequest, Subscription};
use crate::telemetry::{self, DisableReason};
use crate::util::new_id_at;

const OPS_PREFIX: &str = "ops_";

/// The delivery-side id of a tenant's ops endpoint.
pub fn ops_endpoint_id(tenant_id: &str) -> String {
    format!("{OPS_PREFIX}{tenant_id}")
}

/// Whether deliveries with this subscription id go to an ops endpoint.
pub fn is_ops(subscription_id: &str) -> bool {
    subscription_id.starts_with(OPS_PREFIX)
}

/// Where a delivery goes: its subscription, or for a notification the
/// tenant's ops endpoint. None when that is gone.
pub fn endpoint_of(
    store: &Store,
    d: &Delivery,
) -> Result<Option<std::sync::Arc<Subscription>>, StoreError> {
    if is_ops(&d.subscription_id) {
        Ok(store
            .get_ops_endpoint(&d.tenant_id)?
            .map(std::sync::Arc::new))
    } else {
        store.cached_subscription(&d.tenant_id, &d.subscription_id)
    }
}

/// What happened to a subscription.
#[derive(Debug, Clone)]
pub enum Change {
    Disabled {
        why: DisableReason,
        /// The error of the delivery that tipped it over, if any.
        last_error: Option<String>,
    },
    Enabled,
}

impl Change {
    fn event_type(&self) -> &'static str {
        match self {
            Change::Disabled { .. } => "subscription.disabled",
            Change::Enabled => "subscription.enabled",
        }
    }
}

/// Records the change (metrics) and, when the tenant has an ops endpoint,
/// queues its notification. `sub` is the subscription after the change.
pub async fn subscription_changed(
    queue: &Queue,
    sub: &Subscription,
    change: Change,
    now: Timestamp,
) -> Result<(), StoreError> {
    match &change {
        Change::Disabled { why, .. } => telemetry::subscription_disabled(*why),
        Change::Enabled => telemetry::subscription_enabled(),
    }
    let Some(endpoint) = queue.store().get_ops_endpoint(&sub.tenant_id)? else {
        return Ok(());
    };
    let delivery = notification(&endpoint, sub, &change, now);
    info!(subscription_id = %sub.id, delivery_id = %delivery.id, event = change.event_type(), "telling the tenant's ops endpoint");
    queue.add(&[delivery]).await
}

/// The delivery that tells `endpoint` about `change` to `sub`.
fn notification(
    endpoint: &Subscription,
    sub: &Subscription,
    change: &Change,
    now: Timestamp,
) -> Delivery {
    let event_id = new_id_at("evt", now);
    let mut data = json!({
        "subscription_id": sub.id,
        "url": sub.url,
        "description": sub.description,
        "enabled": sub.enabled,
        "consecutive_failures": sub.consecutive_failures,
        "changed_at": now.to_string(),
    });
    if let Change::Disabled { why, last_error } = change {
        data["reason"] = json!(why.as_str());
        data["reason_text"] = json!(sub.disabled_reason);
        data["last_error"] = json!(last_error);
    }
    let body = json!({
        "id": event_id,
        "type": change.event_type(),
        "timestamp": now.to_string(),
        "data": data,
    });
    Delivery {
        id: new_id_at("dlv", now),
        tenant_id: endpoint.tenant_id.clone(),
        event_id,
        event_type: change.event_type().into(),
        subscription_id: endpoint.id.clone(),
        status: DeliveryStatus::Pending,
        request: Some(StoredRequest {
            body: body.to_string(),
            content_type: "application/json".into(),
            headers: vec![],
            event_name: None,
            body_from_event: false,
        }),
        attempts: vec![],
        next_attempt_at: Some(now),
        last_error: None,
        created_at: now,
        updated_at: now,
        order: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::RetryPolicy;
    use crate::sign::Scheme;

    fn sub(id: &str) -> Subscription {
        let now: Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        Subscription {
            id: id.into(),
            tenant_id: "ten_a".into(),
            url: "https://example.com/hook".into(),
            event_types: vec!["*".into()],
            plugin: None,
            signature: Scheme::default(),
            retry: RetryPolicy::default(),
            expect_body: None,
            timeout_ms: 1000,
            max_in_flight: 1,
            window: None,
            description: Some("<b>crm</b>".into()),
            enabled: false,
            disabled_reason: Some("410 Gone".into()),
            secrets: vec![],
            consecutive_failures: 2,
            created_at: now,
            updated_at: now,
            ordering: None,
            rate_limit: None,
            trace_context: false,
            app_id: None,
            channels: Vec::new(),
            uid: None,
            metadata: Default::default(),
            tls: None,
            destination: None,
        }
    }

    #[test]
    fn a_disable_notification_names_the_subscription_and_the_reason() {
        let now: Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        let endpoint = sub(&ops_endpoint_id("ten_a"));
        let change = Change::Disabled {
            why: DisableReason::Gone,
            last_error: Some("HTTP 410".into()),
        };
        let d = notification(&endpoint, &sub("sub_1"), &change, now);
        assert!(is_ops(&d.subscription_id));
        assert_eq!(d.event_type, "subscription.disabled");
        assert_eq!(d.status, DeliveryStatus::Pending);
        let body: serde_json::Value = serde_json::from_str(&d.request.unwrap().body).unwrap();
        assert_eq!(body["type"], "subscription.disabled");
        assert_eq!(body["id"], d.event_id);
        assert_eq!(body["data"]["subscription_id"], "sub_1");
        assert_eq!(body["data"]["reason"], "gone");
        assert_eq!(body["data"]["reason_text"], "410 Gone");
        assert_eq!(body["data"]["last_error"], "HTTP 410");
        assert_eq!(body["data"]["description"], "<b>crm</b>");
    }

    #[test]
    fn ops_ids_never_look_like_subscriptions() {
        assert!(is_ops(&ops_endpoint_id("ten_x")));
        assert!(!is_ops("sub_01j"));
    }
}
