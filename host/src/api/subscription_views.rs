//! How the API shows a subscription: its view, its destination's settings
//! but never a password, and the secret only where asked for.

use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::ApiState;
use super::auth::Caller;
use super::subscription_actions::TestResult;
use crate::retry::RetryPolicy;
use crate::sign::{self, Scheme};
use crate::store::{Destination, PluginRef, Subscription};
use crate::window::WindowSpec;

/// A subscription as the API shows it (the secret only on creation, reveal
/// and rotation).
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionView {
    pub id: String,
    pub url: String,
    pub event_types: Vec<String>,
    #[schema(value_type = Option<Object>)]
    pub plugin: Option<PluginRef>,
    #[schema(value_type = Object)]
    pub signature: Scheme,
    #[schema(value_type = Object)]
    pub retry: RetryPolicy,
    #[schema(value_type = Option<Object>)]
    pub expect_body: Option<Value>,
    pub timeout_ms: u64,
    pub max_in_flight: u32,
    pub window: Option<WindowSpec>,
    pub description: Option<String>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub consecutive_failures: u32,
    /// Deliveries waiting in its queue now (not counting those in flight).
    pub queued_deliveries: usize,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The `whpk_…` public key receivers verify `v1a` signatures with,
    /// when the subscription signs with an asymmetric key (not a secret:
    /// shown always).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// With `verify_on_create`: the test event's deliveries and their first
    /// attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<TestResult>,
    pub ordering: Option<crate::store::Ordering>,
    pub rate_limit: Option<crate::store::RateLimit>,
    /// Attempts carry a `traceparent` header (when traces are exported).
    pub trace_context: bool,
    /// The application it belongs to (None: tenant-wide).
    pub app_id: Option<String>,
    pub tls: Option<TlsView>,
    /// Where deliveries go: `{"type": "http", "url"}`, or a broker with
    /// its settings (the URL without credentials; `password_set` says
    /// whether a password or token is stored, which is never shown).
    #[schema(value_type = Object)]
    pub destination: serde_json::Value,
}

/// An endpoint's TLS settings as the API shows them: the certificates
/// (public), never the client key.
#[derive(Debug, Serialize, ToSchema)]
pub struct TlsView {
    pub client_certificate: Option<String>,
    /// A client key is stored (it is never shown).
    pub client_key_set: bool,
    pub ca: Option<String>,
}

impl SubscriptionView {
    /// [`Self::of`] as `caller` sees it: a portal link is not shown the
    /// tenant's plugin settings (they may hold the tenant's own
    /// credentials), only which plugin runs.
    pub(super) fn of_for(
        caller: &Caller,
        mut s: Subscription,
        with_secret: bool,
        state: &ApiState,
    ) -> Self {
        let portal = caller.portal.is_some();
        if portal && let Some(p) = &mut s.plugin {
            p.config = Value::Object(Default::default());
        }
        let mut view = Self::of(s, with_secret, state);
        if portal && view.destination["type"] != "http" {
            // Another destination's address and settings are the tenant's.
            view.destination = serde_json::json!({"type": view.destination["type"]});
        }
        if let Some(t) = &mut view.verification {
            for d in &mut t.deliveries {
                super::portal::mask_request(caller, d);
            }
        }
        view
    }

    fn of(s: Subscription, with_secret: bool, state: &ApiState) -> Self {
        SubscriptionView {
            queued_deliveries: state.app.queue.subscription_depth(&s.id),
            secret: with_secret
                .then(|| s.secrets.first().map(|x| x.secret.clone()))
                .flatten(),
            public_key: s.secrets.first().and_then(|x| sign::public_key(&x.secret)),
            destination: destination_view(&s.url, s.destination.as_ref()),
            id: s.id,
            url: s.url,
            event_types: s.event_types,
            plugin: s.plugin,
            signature: s.signature,
            retry: s.retry,
            expect_body: s.expect_body,
            timeout_ms: s.timeout_ms,
            max_in_flight: s.max_in_flight,
            window: s.window,
            description: s.description,
            enabled: s.enabled,
            disabled_reason: s.disabled_reason,
            consecutive_failures: s.consecutive_failures,
            created_at: s.created_at,
            updated_at: s.updated_at,
            verification: None,
            ordering: s.ordering,
            rate_limit: s.rate_limit,
            trace_context: s.trace_context,
            app_id: s.app_id,
            tls: s.tls.map(|t| TlsView {
                client_key_set: t.client_key.is_some(),
                client_certificate: t.client_certificate,
                ca: t.ca,
            }),
        }
    }
}

/// A destination as the API shows it: never the password.
fn destination_view(url: &str, d: Option<&Destination>) -> serde_json::Value {
    let Some(d) = d else {
        return serde_json::json!({"type": "http", "url": url});
    };
    let mut view = match d {
        Destination::Nats { url, subject, .. } => {
            serde_json::json!({"type": "nats", "url": url, "subject": subject})
        }
        Destination::Amqp {
            url,
            exchange,
            routing_key,
            ..
        } => serde_json::json!({
            "type": "amqp", "url": url, "exchange": exchange, "routing_key": routing_key
        }),
        Destination::Redis {
            url,
            stream,
            max_len,
            ..
        } => serde_json::json!({"type": "redis", "url": url, "stream": stream, "max_len": max_len}),
        Destination::Listen { expire_after_secs } => {
            return serde_json::json!({"type": "listen", "expire_after_secs": expire_after_secs});
        }
    };
    let c = d.credentials();
    view["username"] = serde_json::json!(c.username);
    view["password_set"] = serde_json::json!(c.password.is_some());
    view
}
