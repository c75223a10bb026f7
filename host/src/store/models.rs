//! The records the store keeps, one type per tree. Values are JSON (readable
//! with any sled tool, and tolerant of added fields); keys are raw bytes
//! chosen for the scans each tree needs.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Envelope;
use crate::retry::RetryPolicy;
use crate::runtime::Header;
use crate::sign::Scheme;

use super::WindowSpec;

/// A tenant: the unit of isolation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub created_at: Timestamp,
}

/// An API key, stored by the SHA-256 of the key (the key itself is shown once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub tenant_id: String,
    /// The first characters of the key, to tell keys apart in listings.
    pub prefix: String,
    pub created_at: Timestamp,
}

/// Which plugin a subscription runs, with its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    /// `builtin:<name>` or an uploaded plugin's `plg_…` id.
    pub id: String,
    /// The plugin's settings (checked by its `check-config`).
    #[serde(default = "empty_object")]
    pub config: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// A signing secret; an old one keeps signing until `expires_at` after a rotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Secret {
    /// Sealed wherever the record is written (`crate::secrets`).
    #[serde(with = "crate::secrets::sealed")]
    pub secret: String,
    pub expires_at: Option<Timestamp>,
}

impl Secret {
    /// `secrets` after a rotation to `fresh`: the current one expires
    /// `grace` from `now`, older ones keep their expiry, expired ones go.
    pub fn rotated(
        secrets: &[Secret],
        fresh: String,
        now: Timestamp,
        grace: jiff::SignedDuration,
    ) -> Vec<Secret> {
        let mut out = vec![Secret {
            secret: fresh,
            expires_at: None,
        }];
        for (i, old) in secrets.iter().enumerate() {
            let expires_at = if i == 0 {
                Some(now + grace)
            } else {
                old.expires_at
            };
            if expires_at.is_none_or(|t| t > now) {
                out.push(Secret {
                    secret: old.secret.clone(),
                    expires_at,
                });
            }
        }
        out
    }
}

/// A subscription: where matching events go and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    pub id: String,
    pub tenant_id: String,
    pub url: String,
    /// Patterns: exact types, `prefix.*`, `*`.
    pub event_types: Vec<String>,
    pub plugin: Option<PluginRef>,
    pub signature: Scheme,
    pub retry: RetryPolicy,
    /// A required response body, compared as JSON.
    pub expect_body: Option<Value>,
    pub timeout_ms: u64,
    /// Attempts in flight at once to this endpoint.
    pub max_in_flight: u32,
    /// Collect held items and flush them when the window closes.
    #[serde(default)]
    pub window: Option<WindowSpec>,
    pub description: Option<String>,
    pub enabled: bool,
    /// Why it was disabled (by an operator, a 410, or too many failures).
    pub disabled_reason: Option<String>,
    /// Current secret first, then ones still in their rotation grace period.
    pub secrets: Vec<Secret>,
    /// Exhausted deliveries in a row; reset by a success.
    pub consecutive_failures: u32,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Deliveries with the same key go one at a time, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<Ordering>,
    /// At most this many attempts a second (across the cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Mutual TLS and a private CA for this endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<EndpointTls>,
    /// A message broker the deliveries are published to instead of an
    /// HTTP POST to `url` (which then shows the broker's URL, without
    /// credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    /// Each attempt carries a W3C `traceparent` header naming its span,
    /// when traces are exported (`traces.rs`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trace_context: bool,
    /// The application it belongs to: it gets only that application's
    /// events (None: a tenant-wide endpoint, which gets the events sent to
    /// no application).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// Svix's channels: with any, only events with one of them reach it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Svix's endpoint uid: unique among its application's endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Svix's endpoint metadata (string values).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, Value>,
}

impl Subscription {
    /// Whether an event with `channels` reaches it: always without
    /// channels of its own, else with one in common (Svix's rule).
    pub(crate) fn takes_channels(&self, channels: &[String]) -> bool {
        self.channels.is_empty() || channels.iter().any(|c| self.channels.contains(c))
    }

    /// The secrets that sign at `now`: the current one and unexpired old ones.
    pub fn signing_secrets(&self, now: Timestamp) -> Vec<&str> {
        self.secrets
            .iter()
            .filter(|s| s.expires_at.is_none_or(|t| t > now))
            .map(|s| s.secret.as_str())
            .collect()
    }
}

/// An uploaded plugin's metadata (the bytes live in `plugin_blobs` by hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginRecord {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size: usize,
    pub created_at: Timestamp,
    /// Which world the component implements (records from before sources
    /// existed are all `transform`).
    #[serde(default)]
    pub world: crate::runtime::World,
}

/// One of a tenant's own customers: its endpoints (subscriptions with its
/// `app_id`) get only the events sent to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Application {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    /// The tenant's own id for it, unique within the tenant; usable wherever
    /// the id is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A link that opens the dashboard for one application only (the
/// consumer portal). Its token is stored only as a hash: the link is shown
/// once, when created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortalLink {
    pub id: String,
    pub tenant_id: String,
    pub app_id: String,
    /// SHA-256 of the token, hex (the key of `portal_tokens`).
    pub token_hash: String,
    /// Only reads: no change, no secret shown.
    pub read_only: bool,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// An entry of the tenant's event-type catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventType {
    pub tenant_id: String,
    /// The dotted type (`message.created`).
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A JSON Schema for the events' `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    /// An example of `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example: Option<serde_json::Value>,
    /// Events of this type are refused (400) when `data` does not match
    /// `schema`.
    #[serde(default)]
    pub validate: bool,
    /// No longer offered to new subscriptions; events still route.
    #[serde(default)]
    pub archived: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// An accepted event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub tenant_id: String,
    pub event: Envelope,
    pub received_at: Timestamp,
    /// The deliveries it produced.
    pub deliveries: Vec<String>,
    /// The W3C `traceparent` of its span, when traces are exported: its
    /// deliveries' attempts are children of it (`traces.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Due in the outbox (first attempt or a retry).
    Pending,
    Succeeded,
    /// Given up, refused, or the plugin failed.
    Failed,
    /// The plugin skipped the event.
    Filtered,
    /// The plugin held the event's items for a window.
    Held,
    /// Ordered: waits behind an earlier delivery with the same ordering
    /// key (see [`OrderSlot`]); made pending when it reaches the head.
    Blocked,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Filtered => "filtered",
            DeliveryStatus::Held => "held",
            DeliveryStatus::Blocked => "blocked",
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, DeliveryStatus::Pending | DeliveryStatus::Blocked)
    }
}

/// The exact request a delivery sends on every attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRequest {
    pub body: String,
    pub content_type: String,
    pub headers: Vec<Header>,
    /// The event name a body-hex signature's event header carries: the
    /// body's own top-level `event` (a platform format names its events
    /// there: onWebChat's `chat.closed`), else the delivery's event type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_name: Option<String>,
    /// The body is the event's own envelope ([`Envelope::webhook_body`]),
    /// as for every subscription without a plugin. Such a delivery is
    /// stored with an empty `body`: the event record already holds it, so
    /// an event with ten subscriptions stores its payload once instead of
    /// eleven times, and every attempt rewrites a small record. The store
    /// makes the body from the event when it is needed
    /// ([`crate::store::Store::request_body`]); the API shows it filled in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub body_from_event: bool,
}

impl StoredRequest {
    /// The body's top-level `"event"` string, if it is a JSON object with one.
    pub fn event_name_of(body: &str) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Named {
            event: Option<String>,
        }
        if !body.trim_start().starts_with('{') {
            return None;
        }
        serde_json::from_str::<Named>(body).ok()?.event
    }
}

/// One attempt, as the delivery log shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub at: Timestamp,
    pub status: Option<u16>,
    pub duration_ms: u64,
    pub response_body: Option<String>,
    pub error: Option<String>,
}

/// One request of one event to one subscription, and its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Also the `webhook-id` / delivery-id header: stable across retries.
    pub id: String,
    pub tenant_id: String,
    pub event_id: String,
    pub event_type: String,
    pub subscription_id: String,
    pub status: DeliveryStatus,
    /// What is sent (None for filtered / held / plugin-failed deliveries).
    pub request: Option<StoredRequest>,
    pub attempts: Vec<Attempt>,
    /// When the next attempt is due (pending only); also its outbox key.
    pub next_attempt_at: Option<Timestamp>,
    /// The last error, the skip reason, or why it failed for good.
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Ordered deliveries only: its place in its key's line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<OrderSlot>,
}

/// Where an ordered delivery stands: deliveries of one subscription with
/// the same key are attempted one at a time in `seq` order (the store's
/// `lanes`, see `store/lanes.rs`). The line is the stored order, so it
/// survives restarts and moves with the records in cluster mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSlot {
    /// The ordering key's value, as text (at most [`OrderSlot::MAX_KEY`] bytes).
    pub key: String,
    /// Its place in the line, given when it joins it (0 before).
    pub seq: u64,
    /// When it fails for good, the line stops until it is retried or
    /// dismissed (`on_failure: block`), instead of the next one going.
    pub block: bool,
}

impl OrderSlot {
    /// Longer keys are cut (on a character boundary) before they are used.
    pub const MAX_KEY: usize = 256;
}

/// A subscription's ordering: deliveries whose event has the same value at
/// `key` (a JSON pointer into the event) go one at a time, in the order
/// they were accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ordering {
    /// A JSON pointer into the event, e.g. `/data/conversation_id`.
    pub key: String,
    /// When the head of a key's line fails for good: `skip` (the next one
    /// goes) or `block` (the line stops until the head is retried or
    /// dismissed).
    #[serde(default)]
    pub on_failure: OnFailure,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    #[default]
    Skip,
    Block,
}

impl<'de> Deserialize<'de> for OnFailure {
    /// By hand, so that a wrong value's error names the field.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "skip" => Ok(OnFailure::Skip),
            "block" => Ok(OnFailure::Block),
            other => Err(serde::de::Error::custom(format!(
                "ordering.on_failure {other:?} is not \"skip\" or \"block\""
            ))),
        }
    }
}

/// A subscription's pace: a token bucket (`per_second` tokens a second,
/// at most `burst` saved up). A delivery that may not go yet stays queued
/// and holds no worker.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: f64,
    /// Attempts that may go at once after a quiet spell (default: one
    /// second's worth, at least 1).
    #[serde(default)]
    pub burst: Option<u32>,
}

impl RateLimit {
    pub fn burst(&self) -> u32 {
        self.burst
            .unwrap_or_else(|| self.per_second.ceil() as u32)
            .max(1)
    }
}

/// TLS settings of one subscription's endpoint (as stored: the key
/// sealed; as the API takes them, see `subscription::TlsInput`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointTls {
    /// PEM: a client certificate (chain) presented for mutual TLS.
    #[serde(default)]
    pub client_certificate: Option<String>,
    /// PEM: its private key; sealed like a secret, never returned.
    #[serde(default, with = "crate::secrets::sealed_opt")]
    pub client_key: Option<String>,
    /// PEM: a CA (or several) trusted for this endpoint besides the
    /// system's and `[delivery] ca_file`.
    #[serde(default)]
    pub ca: Option<String>,
}

impl std::fmt::Debug for EndpointTls {
    /// Never the key: a subscription may be logged with `?`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointTls")
            .field("client_certificate", &self.client_certificate.is_some())
            .field(
                "client_key",
                &self.client_key.as_ref().map(|_| "<redacted>"),
            )
            .field("ca", &self.ca.is_some())
            .finish()
    }
}

/// A broker a subscription publishes to (the HTTP POST is the default,
/// when a subscription has none). The URL is stored without its
/// credentials; the password (or NATS token) is sealed like a secret and
/// never returned.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Destination {
    /// A JetStream publish, acknowledged by the stream that captures
    /// `subject`; the delivery id is the `Nats-Msg-Id`.
    Nats {
        url: String,
        subject: String,
        #[serde(default)]
        credentials: Credentials,
    },
    /// An AMQP 0-9-1 publish (RabbitMQ) with publisher confirms, persistent,
    /// mandatory (an unroutable message is a failed attempt); the delivery
    /// id is the `message_id`.
    Amqp {
        url: String,
        exchange: String,
        routing_key: String,
        #[serde(default)]
        credentials: Credentials,
    },
    /// An `XADD` to a Redis stream trimmed to about `max_len` entries,
    /// once per delivery id.
    Redis {
        url: String,
        stream: String,
        max_len: u64,
        #[serde(default)]
        credentials: Credentials,
    },
    /// `wasmhook listen`: a developer's CLI receives the deliveries over
    /// its own connection to the server and forwards each to a local URL
    /// (`deliver::listen`). The subscription is deleted when the CLI
    /// stops, or once no CLI has been connected for `expire_after_secs`.
    Listen { expire_after_secs: u64 },
}

/// A listen destination's URL, as the subscription shows it.
pub const LISTEN_URL: &str = "listen://cli";

/// A listen destination has no login.
static NO_CREDENTIALS: Credentials = Credentials {
    username: None,
    password: None,
};

/// A broker's login: a user name (shown) and a password or token (sealed,
/// never shown).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Credentials {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::secrets::sealed_opt"
    )]
    pub password: Option<String>,
}

impl Destination {
    /// `nats`, `amqp`, `redis` or `listen` (the metrics' and the log's label).
    pub fn kind(&self) -> &'static str {
        match self {
            Destination::Nats { .. } => "nats",
            Destination::Amqp { .. } => "amqp",
            Destination::Redis { .. } => "redis",
            Destination::Listen { .. } => "listen",
        }
    }

    /// The broker's URL, without credentials.
    pub fn url(&self) -> &str {
        match self {
            Destination::Nats { url, .. }
            | Destination::Amqp { url, .. }
            | Destination::Redis { url, .. } => url,
            Destination::Listen { .. } => LISTEN_URL,
        }
    }

    pub fn credentials(&self) -> &Credentials {
        match self {
            Destination::Nats { credentials, .. }
            | Destination::Amqp { credentials, .. }
            | Destination::Redis { credentials, .. } => credentials,
            Destination::Listen { .. } => &NO_CREDENTIALS,
        }
    }
}

impl std::fmt::Debug for Destination {
    /// Never the password: a subscription may be logged with `?`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.credentials();
        f.debug_struct("Destination")
            .field("type", &self.kind())
            .field("url", &self.url())
            .field("username", &c.username)
            .field("password", &c.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One subscription's window that has held items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowState {
    pub tenant_id: String,
    pub subscription_id: String,
    pub start: Timestamp,
    pub end: Timestamp,
    /// When the scheduler flushes it (items that arrive later are flushed
    /// at the next tick, as a late delivery for the same window).
    pub close_at: Timestamp,
    pub items: u64,
    pub bytes: u64,
    /// Why the last flush failed (the items are kept).
    pub last_error: Option<String>,
    /// After a failed flush: not before this time.
    pub retry_at: Option<Timestamp>,
}

/// An item to hold, written with its event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldWrite {
    pub tenant_id: String,
    pub subscription_id: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub close_at: Timestamp,
    /// Arrival order across the whole store.
    pub seq: u64,
    pub group: String,
    pub item: String,
}

/// A held item as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldRecord {
    pub group: String,
    pub item: String,
    pub event_id: String,
}
