//! A subscription's rules, beside its type: building one from the API's
//! input, applying a change, rotating its secret. Pure (no store, no
//! sandbox): the API handlers validate the plugin, call these, and store
//! the result.

use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::app::Bounds;
use crate::destination::{DestinationInput, Resolved, check_http};
use crate::event::Envelope;
use crate::retry::{PRESETS, RetryPolicy};
use crate::route;
use crate::runtime::PluginRequest;
use crate::sign::{self, Scheme};
use crate::store::{
    Delivery, DeliveryStatus, EndpointTls, OnFailure, OrderSlot, Ordering, PluginRef, RateLimit,
    Secret, StoredRequest, Subscription, WindowSpec,
};
use crate::util::new_id_at;

/// Retry settings: a preset, then any field overridden.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryInput {
    /// `standard` (default), `onwebchat`, `convosphere`, `helloclient`.
    pub preset: Option<String>,
    /// Delays before each retry, in seconds (at most 20, each at most 7 days).
    pub schedule_secs: Option<Vec<u64>>,
    /// 0 to 1 (default 0.2: ±20 %).
    pub jitter: Option<f64>,
    pub retry_after_max_secs: Option<u64>,
    pub stop_on_4xx: Option<bool>,
    pub retry_4xx: Option<Vec<u16>>,
    /// Exhausted deliveries in a row that disable the subscription (0: never).
    pub disable_after_failures: Option<u32>,
}

impl RetryInput {
    /// The policy these settings describe; the error names the field.
    pub fn resolve(self) -> Result<RetryPolicy, String> {
        let preset = self.preset.as_deref().unwrap_or("standard");
        let mut p = RetryPolicy::preset(preset).ok_or_else(|| {
            format!(
                "retry.preset {preset:?} is unknown; use one of {}",
                PRESETS.join(", ")
            )
        })?;
        if let Some(s) = self.schedule_secs {
            if s.len() > 20 || s.iter().any(|d| *d > 7 * 24 * 3600) {
                return Err(
                    "retry.schedule_secs: at most 20 delays, each at most 604800 s (7 days)".into(),
                );
            }
            p.schedule_secs = s;
            p.preset = None;
        }
        if let Some(j) = self.jitter {
            if !(0.0..=1.0).contains(&j) {
                return Err("retry.jitter must be between 0 and 1".into());
            }
            p.jitter = j;
        }
        if let Some(v) = self.retry_after_max_secs {
            p.retry_after_max_secs = v;
        }
        if let Some(v) = self.stop_on_4xx {
            p.stop_on_4xx = v;
        }
        if let Some(v) = self.retry_4xx {
            if v.iter().any(|c| !(400..500).contains(c)) {
                return Err("retry.retry_4xx lists 4xx status codes only".into());
            }
            p.retry_4xx = v;
        }
        if let Some(v) = self.disable_after_failures {
            p.disable_after_failures = v;
        }
        Ok(p)
    }
}

/// A subscription as created (all fields) or changed (any fields).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    /// Where to POST (http or https); the same as `destination`
    /// `{"type": "http", "url": …}`.
    pub url: Option<String>,
    /// Where deliveries go instead of an HTTP POST: a NATS JetStream
    /// subject, an AMQP exchange (RabbitMQ) or a Redis stream (see
    /// [`DestinationInput`]); `{"type": "http", "url"}` goes back to HTTP.
    pub destination: Option<DestinationInput>,
    /// `*`, `message.*`, or exact types.
    pub event_types: Option<Vec<String>>,
    /// `{"id": "builtin:helloclient-lead" | "plg_…", "config": {…}}`; `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    pub plugin: Option<Option<PluginRef>>,
    /// `{"scheme": "standard-webhooks" | "timestamped-hex" | "body-hex", "header"?, …}`.
    #[schema(value_type = Option<Object>)]
    pub signature: Option<Scheme>,
    pub retry: Option<RetryInput>,
    /// A response body required for success, compared as JSON; `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    pub expect_body: Option<Option<Value>>,
    /// Per-attempt timeout (1 to 120000 ms; default 15000).
    pub timeout_ms: Option<u64>,
    /// Attempts in flight at once to this endpoint (1 to 256).
    pub max_in_flight: Option<u32>,
    /// `{"every": "1d", "at": "02:00", "timezone": "UTC", "max_items"?, "max_bytes"?}`:
    /// items the plugin holds are flushed when each window closes; `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<WindowSpec>)]
    pub window: Option<Option<WindowSpec>>,
    pub description: Option<String>,
    /// Use this signing secret instead of a generated one (to keep an
    /// existing receiver's key): `whsec_…` (or an ed25519 `whsk_…` key,
    /// `v1a`) for standard-webhooks, 16 to 200 characters for the others.
    pub secret: Option<String>,
    /// Creation only, standard-webhooks: generate an asymmetric ed25519
    /// key (`whsk_…`, signatures `v1a`) instead of a `whsec_…` secret;
    /// receivers verify with its public `whpk_…` key (`public_key`).
    pub asymmetric: Option<bool>,
    /// Creation only: send a `webhook.test` event through the plugin and
    /// signer right away, as Convosphere does when an endpoint is created,
    /// and answer with its first attempt's result (`verification`). The
    /// subscription is created whatever the receiver answers.
    pub verify_on_create: Option<bool>,
    /// Creation only: the application (id or uid) this endpoint belongs
    /// to; it then gets only the events sent to that application.
    pub app: Option<String>,
    /// `{"key": "/data/conversation_id", "on_failure": "skip" | "block"}`:
    /// deliveries whose events have the same value at `key` (a JSON
    /// pointer into the event) are attempted one at a time, in the order
    /// they were accepted; `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Ordering>)]
    pub ordering: Option<Option<Ordering>>,
    /// `{"per_second": 20, "burst": 40}`: at most this many attempts a
    /// second (a token bucket; across the cluster); `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<RateLimit>)]
    pub rate_limit: Option<Option<RateLimit>>,
    /// Each attempt carries a W3C `traceparent` header naming its span
    /// (when the server exports traces), so the receiver's own trace joins
    /// the event's.
    pub trace_context: Option<bool>,
    /// `{"client_certificate": "<PEM>", "client_key": "<PEM>", "ca": "<PEM>"}`:
    /// a client certificate for mutual TLS (certificate and key together;
    /// the key is never returned) and/or a CA trusted for this endpoint;
    /// `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    pub tls: Option<Option<TlsInput>>,
}

/// `tls` as the API takes it: plain PEM text (what is stored seals the
/// key; a value that looks sealed is taken as text, never opened).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsInput {
    pub client_certificate: Option<String>,
    pub client_key: Option<String>,
    pub ca: Option<String>,
}

impl std::fmt::Debug for TlsInput {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsInput { .. }")
    }
}

/// The largest PEM accepted in `tls` (a chain of a few certificates).
const MAX_PEM_BYTES: usize = 64 * 1024;

/// Checks an ordering setting; the error names the field.
fn check_ordering(o: &Ordering) -> Result<(), String> {
    let key = &o.key;
    if !key.starts_with('/') || key.len() > 200 {
        return Err(format!(
            "ordering.key {key:?} must be a JSON pointer into the event of at most 200 bytes, like \"/data/conversation_id\""
        ));
    }
    // RFC 6901: `~` only as `~0` or `~1`.
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "ordering.key {key:?}: `~` must be followed by 0 or 1 (RFC 6901)"
            ));
        }
        if c.is_control() {
            return Err("ordering.key must not contain control characters".into());
        }
    }
    Ok(())
}

/// Checks a rate limit; the error names the field.
fn check_rate_limit(r: &RateLimit) -> Result<(), String> {
    if !r.per_second.is_finite() || !(0.01..=100_000.0).contains(&r.per_second) {
        return Err("rate_limit.per_second must be 0.01 to 100000".into());
    }
    if r.burst.is_some_and(|b| !(1..=100_000).contains(&b)) {
        return Err("rate_limit.burst must be 1 to 100000".into());
    }
    Ok(())
}

/// Checks TLS settings by building what the sender will build from them;
/// the error names the field.
pub fn check_tls(t: &EndpointTls) -> Result<(), String> {
    for (name, pem) in [
        ("client_certificate", &t.client_certificate),
        ("client_key", &t.client_key),
        ("ca", &t.ca),
    ] {
        if pem.as_ref().is_some_and(|p| p.len() > MAX_PEM_BYTES) {
            return Err(format!("tls.{name} is over {MAX_PEM_BYTES} bytes"));
        }
    }
    match (&t.client_certificate, &t.client_key) {
        (Some(cert), Some(key)) => {
            crate::deliver::tls::identity(cert, key)
                .map_err(|e| format!("tls.client_certificate/client_key: {e}"))?;
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err("tls.client_key is required with tls.client_certificate".into());
        }
        (None, Some(_)) => {
            return Err("tls.client_certificate is required with tls.client_key".into());
        }
    }
    if let Some(ca) = &t.ca {
        crate::deliver::tls::certificates(ca).map_err(|e| format!("tls.ca: {e}"))?;
    }
    if t.client_certificate.is_none() && t.ca.is_none() {
        return Err(
            "tls: give client_certificate and client_key, or ca, or both (null removes tls)".into(),
        );
    }
    Ok(())
}

/// `Some(None)` for an explicit null, `None` for an absent field.
pub fn double_option<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The defaults a new subscription starts from.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub timeout_ms: u64,
    pub max_in_flight: u32,
}

/// Whether `secret` can sign with `scheme`.
pub fn check_secret(scheme: &Scheme, secret: &str) -> Result<(), String> {
    match scheme {
        Scheme::StandardWebhooks | Scheme::Svix if sign::is_signing_key(secret) => sign::signing_key(secret)
            .map(|_| ())
            .map_err(|e| format!("secret: {e}")),
        Scheme::StandardWebhooks | Scheme::Svix => sign::standard_key(secret)
            .map(|_| ())
            .map_err(|e| format!("secret: {e}")),
        // A private key must not become another scheme's HMAC key.
        _ if sign::is_signing_key(secret) => Err(
            "secret: an asymmetric key (whsk_) signs standard-webhooks only; rotate to a secret first".into(),
        ),
        _ if (16..=200).contains(&secret.len()) && secret.chars().all(|c| c.is_ascii_graphic()) => {
            Ok(())
        }
        _ => Err("secret: 16 to 200 printable ASCII characters".into()),
    }
}

impl SubscriptionInput {
    /// A new subscription from a create request (`url` and `event_types`
    /// required), with a generated secret unless one is given.
    pub fn create(
        self,
        id: String,
        tenant_id: &str,
        defaults: Defaults,
        bounds: &Bounds,
        now: Timestamp,
    ) -> Result<Subscription, String> {
        if self.url.is_none() && self.destination.is_none() {
            return Err("url (or destination) is required".into());
        }
        let asymmetric = self.asymmetric.unwrap_or(false);
        if asymmetric && self.secret.is_some() {
            return Err(
                "asymmetric generates the key: give `secret` or `asymmetric`, not both".into(),
            );
        }
        if self.event_types.is_none() {
            return Err("event_types is required (`[\"*\"]` for every event)".into());
        }
        let mut sub = Subscription {
            id,
            tenant_id: tenant_id.to_string(),
            url: String::new(),
            event_types: Vec::new(),
            plugin: None,
            signature: Scheme::default(),
            retry: RetryPolicy::default(),
            expect_body: None,
            timeout_ms: defaults.timeout_ms,
            max_in_flight: defaults.max_in_flight,
            window: None,
            description: None,
            enabled: true,
            disabled_reason: None,
            secrets: vec![Secret {
                secret: if asymmetric {
                    sign::generate_signing_key()
                } else {
                    sign::generate_secret()
                },
                expires_at: None,
            }],
            consecutive_failures: 0,
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
        };
        self.apply(&mut sub, bounds)?;
        Ok(sub)
    }

    /// Applies every field this input sets to `sub`, validating each; the
    /// error names the field. The plugin (if set) is taken as is: checking
    /// it against its `check-config` is the caller's (it needs the sandbox).
    pub fn apply(self, sub: &mut Subscription, bounds: &Bounds) -> Result<(), String> {
        match (self.url, self.destination) {
            (Some(_), Some(_)) => {
                return Err("give url or destination, not both".into());
            }
            (Some(url), None) => {
                sub.url = check_http(&url)?;
                sub.destination = None;
            }
            (None, Some(input)) => match input.resolve(sub.destination.as_ref())? {
                Resolved::Http(url) => {
                    sub.url = url;
                    sub.destination = None;
                }
                Resolved::Broker(d) => {
                    sub.url = d.url().to_string();
                    sub.destination = Some(d);
                }
            },
            (None, None) => {}
        }
        if let Some(types) = self.event_types {
            if types.is_empty() {
                return Err("event_types must list at least one pattern (`*` for all)".into());
            }
            if let Some(p) = types.iter().find(|p| !route::is_valid_pattern(p)) {
                return Err(format!(
                    "event_types: {p:?} is not `*`, `prefix.*` or a dotted lowercase type"
                ));
            }
            sub.event_types = types;
        }
        if let Some(signature) = self.signature {
            signature.check()?;
            sub.signature = signature;
        }
        if let Some(retry) = self.retry {
            sub.retry = retry.resolve()?;
        }
        if let Some(expect) = self.expect_body {
            sub.expect_body = expect;
        }
        if let Some(t) = self.timeout_ms {
            if !(1..=120_000).contains(&t) {
                return Err("timeout_ms must be 1 to 120000".into());
            }
            sub.timeout_ms = t;
        }
        if let Some(n) = self.max_in_flight {
            if !(1..=256).contains(&n) {
                return Err("max_in_flight must be 1 to 256".into());
            }
            sub.max_in_flight = n;
        }
        if let Some(window) = self.window {
            if let Some(w) = &window {
                w.schedule()?;
                if w.max_bytes > bounds.window_max_bytes {
                    return Err(format!(
                        "window.max_bytes {} is over limits.window_max_bytes = {} (a window must stay flushable)",
                        w.max_bytes, bounds.window_max_bytes
                    ));
                }
                if w.max_items > bounds.window_max_items {
                    return Err(format!(
                        "window.max_items {} is over limits.window_max_items = {}",
                        w.max_items, bounds.window_max_items
                    ));
                }
            }
            sub.window = window;
        }
        if let Some(d) = self.description {
            if d.chars().count() > 1000 {
                return Err("description must be at most 1000 characters".into());
            }
            sub.description = Some(d).filter(|d| !d.is_empty());
        }
        if let Some(secret) = self.secret {
            check_secret(&sub.signature, &secret)?;
            sub.secrets = vec![Secret {
                secret,
                expires_at: None,
            }];
        } else if let Some(current) = sub.secrets.first() {
            // A scheme change may make the current secret unusable.
            check_secret(&sub.signature, &current.secret)?;
        }
        if let Some(plugin) = self.plugin {
            sub.plugin = plugin;
        }
        if let Some(ordering) = self.ordering {
            if let Some(o) = &ordering {
                check_ordering(o)?;
            }
            sub.ordering = ordering;
        }
        if let Some(on) = self.trace_context {
            sub.trace_context = on;
        }
        if let Some(rate) = self.rate_limit {
            if let Some(r) = &rate {
                check_rate_limit(r)?;
            }
            sub.rate_limit = rate;
        }
        if let Some(tls) = self.tls {
            let tls = tls.map(|t| EndpointTls {
                client_certificate: t.client_certificate,
                client_key: t.client_key,
                ca: t.ca,
            });
            if let Some(t) = &tls {
                check_tls(t)?;
            }
            sub.tls = tls;
        }
        if let Some(d) = &sub.destination {
            // What only an HTTP endpoint has.
            if sub.tls.is_some() {
                return Err(format!(
                    "tls applies to http destinations; a {} destination takes a {}s:// URL",
                    d.kind(),
                    if d.kind() == "nats" { "tl" } else { d.kind() }
                ));
            }
            if sub.expect_body.is_some() {
                return Err(format!(
                    "expect_body applies to http destinations; a {} destination has no response body",
                    d.kind()
                ));
            }
        }
        Ok(())
    }
}

impl Subscription {
    /// A new secret signs from `now` on; the current one keeps signing for
    /// `grace` (standard-webhooks: alongside, space-separated); older ones
    /// keep their expiry and drop out once expired.
    pub fn rotate_secret(&mut self, fresh: String, now: Timestamp, grace: SignedDuration) {
        self.secrets = Secret::rotated(&self.secrets, fresh, now, grace);
    }

    /// Takes a changed copy (`changed`, from [`SubscriptionInput::apply`])
    /// over this stored one, keeping what the engine may have changed in
    /// the meantime: the failure streak, the enabled state, and a rotation.
    pub fn take_changes(&mut self, changed: &Subscription) {
        let (consecutive, enabled, reason, secrets) = (
            self.consecutive_failures,
            self.enabled,
            self.disabled_reason.clone(),
            self.secrets.clone(),
        );
        *self = changed.clone();
        self.consecutive_failures = consecutive;
        self.enabled = enabled;
        self.disabled_reason = reason;
        if changed.secrets.first() == secrets.first() {
            self.secrets = secrets;
        }
    }
}

/// A pending delivery for each request a plugin returned, or why none can
/// be made: the one constructor for pending deliveries (ingest and window
/// flush), so the subscription's own signature headers are reserved on
/// every path.
/// `ids` are those the plugin took through `host.delivery-id`, by request
/// index: the delivery of such a request carries the id its body names.
pub fn pending_deliveries(
    sub: &Subscription,
    event_id: &str,
    event_type: &str,
    requests: Vec<PluginRequest>,
    ids: Vec<String>,
    now: Timestamp,
) -> Result<Vec<Delivery>, String> {
    let reserved = crate::sign::reserved_names(&sub.signature);
    if let Some(h) = requests
        .iter()
        .flat_map(|r| &r.headers)
        .find(|h| reserved.contains(&h.name.to_ascii_lowercase()))
    {
        return Err(format!(
            "plugin set the reserved header {:?}; wasmhook sets it itself",
            h.name
        ));
    }
    let mut ids = ids.into_iter();
    let names_events = matches!(sub.signature, crate::sign::Scheme::BodyHex { .. });
    Ok(requests
        .into_iter()
        .map(|r| {
            let request = StoredRequest {
                event_name: names_events
                    .then(|| StoredRequest::event_name_of(&r.body))
                    .flatten(),
                body: r.body,
                content_type: r.content_type,
                headers: r.headers,
                body_from_event: false,
            };
            let mut delivery = new_delivery(
                sub,
                event_id,
                event_type,
                now,
                DeliveryStatus::Pending,
                Some(request),
                None,
            );
            if let Some(id) = ids.next() {
                delivery.id = id;
            }
            delivery
        })
        .collect())
}

/// The place in line an event's deliveries to `sub` take, if `sub` is
/// ordered and the event has a value at its key (`null` or no value:
/// unordered). Strings are the key as they are, other values their JSON.
pub fn order_slot(sub: &Subscription, event: &Envelope) -> Option<OrderSlot> {
    let ordering = sub.ordering.as_ref()?;
    let value = pointer_value(event, &ordering.key)?;
    let mut key = match value {
        Value::Null => return None,
        Value::String(s) => s,
        other => other.to_string(),
    };
    if key.len() > OrderSlot::MAX_KEY {
        let mut cut = OrderSlot::MAX_KEY;
        while !key.is_char_boundary(cut) {
            cut -= 1;
        }
        key.truncate(cut);
    }
    Some(OrderSlot {
        key,
        seq: 0,
        block: ordering.on_failure == OnFailure::Block,
    })
}

/// The value at a JSON pointer into the event's envelope. Only `/data/…`
/// parses the event's data (kept as text), and only for an ordered
/// subscription.
fn pointer_value(event: &Envelope, pointer: &str) -> Option<Value> {
    let rest = pointer.strip_prefix('/')?;
    let (first, tail) = match rest.split_once('/') {
        Some((first, tail)) => (first, Some(tail)),
        None => (rest, None),
    };
    let top = |s: &str| (tail.is_none()).then(|| Value::String(s.to_string()));
    match first {
        "data" => {
            let data: Value = serde_json::from_str(event.data.as_str()).ok()?;
            match tail {
                None => Some(data),
                Some(tail) => data.pointer(&format!("/{tail}")).cloned(),
            }
        }
        "id" => top(&event.id),
        "type" => top(&event.event_type),
        "source" => top(&event.source),
        "occurred_at" => top(&event.occurred_at),
        _ => None,
    }
}

/// A delivery record of one event for one subscription.
pub fn new_delivery(
    sub: &Subscription,
    event_id: &str,
    event_type: &str,
    now: Timestamp,
    status: DeliveryStatus,
    request: Option<StoredRequest>,
    note: Option<String>,
) -> Delivery {
    Delivery {
        id: new_id_at("dlv", now),
        tenant_id: sub.tenant_id.clone(),
        event_id: event_id.to_string(),
        event_type: event_type.to_string(),
        subscription_id: sub.id.clone(),
        status,
        next_attempt_at: (status == DeliveryStatus::Pending).then_some(now),
        request,
        attempts: Vec::new(),
        last_error: note,
        created_at: now,
        updated_at: now,
        order: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-11-21T10:00:00Z".parse().unwrap()
    }

    fn input(json: Value) -> SubscriptionInput {
        serde_json::from_value(json).unwrap()
    }

    fn create(json: Value) -> Result<Subscription, String> {
        input(json).create(
            "sub_1".into(),
            "ten_1",
            Defaults {
                timeout_ms: 15_000,
                max_in_flight: 8,
            },
            &Bounds::default(),
            now(),
        )
    }

    #[test]
    fn create_requires_url_and_types_and_names_bad_fields() {
        assert_eq!(
            create(serde_json::json!({"event_types": ["*"]})).unwrap_err(),
            "url (or destination) is required"
        );
        let e = create(serde_json::json!({"url": "ftp://x", "event_types": ["*"]})).unwrap_err();
        assert!(e.contains("url"), "{e}");
        let e = create(serde_json::json!({"url": "http://x", "event_types": ["Bad"]})).unwrap_err();
        assert!(e.contains("event_types"), "{e}");
        let e = create(serde_json::json!({"url": "http://x", "event_types": ["*"], "retry": {"preset": "nope"}}))
            .unwrap_err();
        assert!(e.contains("retry.preset"), "{e}");
        let e = create(serde_json::json!({"url": "http://x", "event_types": ["*"],
            "window": {"every": "1d", "max_bytes": 1u64 << 30}}))
        .unwrap_err();
        assert!(e.contains("limits.window_max_bytes"), "{e}");
        let e = create(serde_json::json!({"url": "http://x", "event_types": ["*"],
            "window": {"every": "1é"}}))
        .unwrap_err();
        assert!(e.contains("window.every"), "{e}");
        let s = create(serde_json::json!({"url": "http://x", "event_types": ["*"]})).unwrap();
        assert!(s.secrets[0].secret.starts_with("whsec_"));
        assert_eq!(s.max_in_flight, 8);
    }

    #[test]
    fn rotation_keeps_the_old_secret_for_the_grace_period_only() {
        let mut s = create(serde_json::json!({"url": "http://x", "event_types": ["*"]})).unwrap();
        let first = s.secrets[0].secret.clone();
        s.rotate_secret("whsec_b".into(), now(), SignedDuration::from_hours(24));
        assert_eq!(s.signing_secrets(now()), ["whsec_b", first.as_str()]);
        let later = now() + SignedDuration::from_hours(25);
        s.rotate_secret("whsec_c".into(), later, SignedDuration::from_hours(24));
        assert_eq!(s.signing_secrets(later), ["whsec_c", "whsec_b"]);
    }

    #[test]
    fn a_change_keeps_what_the_engine_changed_meanwhile() {
        let mut stored =
            create(serde_json::json!({"url": "http://x", "event_types": ["*"]})).unwrap();
        let mut changed = stored.clone();
        input(serde_json::json!({"url": "http://y"}))
            .apply(&mut changed, &Bounds::default())
            .unwrap();
        stored.enabled = false;
        stored.consecutive_failures = 3;
        stored.take_changes(&changed);
        assert_eq!(stored.url, "http://y");
        assert!(!stored.enabled);
        assert_eq!(stored.consecutive_failures, 3);
    }

    fn body_hex_subscription() -> Subscription {
        serde_json::from_value::<SubscriptionInput>(serde_json::json!({
            "url": "http://example.com/hook",
            "event_types": ["*"],
            "signature": {"scheme": "body-hex", "header": "X-OHallo-Signature",
                          "event_header": "X-Acme-Event", "delivery_header": "X-Acme-Delivery"},
        }))
        .unwrap()
        .create(
            "sub_1".into(),
            "ten_1",
            Defaults {
                timeout_ms: 1000,
                max_in_flight: 1,
            },
            &Bounds::default(),
            "2026-11-21T10:00:00Z".parse().unwrap(),
        )
        .unwrap()
    }

    fn request(header: &str) -> PluginRequest {
        PluginRequest {
            body: "{}".into(),
            content_type: "application/json".into(),
            headers: vec![crate::runtime::Header {
                name: header.into(),
                value: "forged".into(),
            }],
        }
    }

    /// The flush path used to let a plugin set a subscription's own
    /// (configurable) signature headers; ingest and flush now share this
    /// one constructor.
    #[test]
    fn a_subscriptions_own_signature_headers_are_reserved_on_every_path() {
        let sub = body_hex_subscription();
        let now = "2026-11-21T10:00:00Z".parse().unwrap();
        for name in ["x-acme-event", "X-Acme-Delivery", "X-OHALLO-SIGNATURE"] {
            let e = pending_deliveries(
                &sub,
                "window:x",
                "window.closed",
                vec![request(name)],
                Vec::new(),
                now,
            )
            .unwrap_err();
            assert!(e.contains("reserved header"), "{e}");
        }
        let ok = pending_deliveries(&sub, "e1", "a.b", vec![request("X-Trace")], Vec::new(), now)
            .unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].status, DeliveryStatus::Pending);
        assert_eq!(ok[0].next_attempt_at, Some(now));
        assert!(ok[0].id.starts_with("dlv_"));
    }
}
