//! Sources: a chat platform's own webhooks in, canonical events out.
//!
//! A source is a tenant's inbound endpoint, `POST /in/{id}`. The platform
//! posts there what it sends to any receiver; wasmhook checks the
//! platform's signature ([`verify`]), hands the request to the source's
//! **adapter** (a WASM component of the `source` world: the bundled
//! `builtin:platform-sources` for the seed platforms, or the tenant's own),
//! and accepts the canonical events it returns exactly as `POST /v1/events`
//! does. The platform's delivery id becomes the event id, so its retries
//! are routed once.
//!
//! A request that verifies but cannot be normalized is answered 422 and
//! kept in the source's **dead letters**, to be replayed once the adapter
//! (or its config) is fixed. A request that fails verification is answered
//! 401 and nothing of it is kept.

pub mod nats;
pub mod poll;
pub mod verify;

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use crate::app::App;
use crate::event::{Envelope, EventInput};
use crate::ingest::{self, IngestError, IngestResult};
use crate::runtime::admission::Busy;
use crate::runtime::{CallError, Header, Inbound, PluginError, World};
use crate::store::{Secret, StoreError};
use crate::util::new_id_at;

pub use crate::store::{DeadLetter, Kind, Source};
pub use verify::Verify;

/// The bundled adapter of every kind but `plugin`.
pub const BUNDLED_ADAPTER: &str = "builtin:platform-sources";

/// Most events one platform request may carry (a Hello Client day).
pub const MAX_EVENTS_PER_REQUEST: usize = 1000;

/// Dead letters kept per source; the oldest go first beyond it.
pub const MAX_DEAD_LETTERS: usize = 1000;

/// Headers handed to an adapter at most (the rest are dropped).
const MAX_HEADERS: usize = 64;

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Onehash,
        Kind::Onwebchat,
        Kind::Convosphere,
        Kind::Helloclient,
        Kind::Ohallo,
        Kind::StandardWebhooks,
        Kind::Plugin,
        Kind::Nats,
        Kind::Poll,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Onehash => "onehash",
            Kind::Onwebchat => "onwebchat",
            Kind::Convosphere => "convosphere",
            Kind::Helloclient => "helloclient",
            Kind::Ohallo => "ohallo",
            Kind::StandardWebhooks => "standard-webhooks",
            Kind::Plugin => "plugin",
            Kind::Nats => "nats",
            Kind::Poll => "poll",
        }
    }

    /// How the platform signs, as far as its docs say. OneHash's and
    /// Convosphere's seeds do not say how (or whether) they sign: their
    /// sources rely on the unguessable URL.
    pub fn default_verify(self) -> Verify {
        match self {
            Kind::Onwebchat => Verify::BodyHex {
                header: "x-owc-signature".into(),
            },
            Kind::Ohallo => Verify::BodyHex {
                header: "x-ohallo-signature".into(),
            },
            Kind::Helloclient => Verify::TimestampedHex {
                header: "x-webhook-signature".into(),
            },
            Kind::StandardWebhooks => Verify::StandardWebhooks,
            Kind::Onehash | Kind::Convosphere | Kind::Plugin | Kind::Nats | Kind::Poll => {
                Verify::None
            }
        }
    }
}

/// Default signature-timestamp tolerance: Standard Webhooks' 5 minutes.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

impl Source {
    /// The path the platform posts to.
    pub fn url(&self) -> String {
        format!("/in/{}", self.id)
    }

    /// The adapter's plugin id and the config it is called with.
    pub fn adapter(&self) -> (String, String) {
        if let Some(feed) = &self.nats {
            return (
                BUNDLED_ADAPTER.to_string(),
                serde_json::json!({ "kind": feed.format }).to_string(),
            );
        }
        match (&self.plugin, &self.poll) {
            // An uploaded adapter: a `plugin` source's, or a `poll` source's
            // instead of a bundled format.
            (Some(p), _) => (p.id.clone(), p.config.to_string()),
            (None, Some(feed)) => (
                BUNDLED_ADAPTER.to_string(),
                serde_json::json!({ "kind": feed.format }).to_string(),
            ),
            (None, None) => {
                let mut config = serde_json::json!({ "kind": self.kind.name() });
                if let Some(t) = &self.default_type {
                    config["default_type"] = serde_json::json!(t);
                }
                (BUNDLED_ADAPTER.to_string(), config.to_string())
            }
        }
    }

    /// The secrets that verify now: the current one, and older ones until
    /// their grace period ends.
    pub fn live_secrets(&self, now: Timestamp) -> Vec<&str> {
        self.secrets
            .iter()
            .filter(|s| s.expires_at.is_none_or(|t| t > now))
            .map(|s| s.secret.as_str())
            .collect()
    }

    /// A new current secret; the old one keeps verifying for `grace`.
    pub fn rotate_secret(&mut self, fresh: String, now: Timestamp, grace: SignedDuration) {
        self.secrets = Secret::rotated(&self.secrets, fresh, now, grace);
        self.updated_at = now;
    }
}

/// A new source id: 128 random bits, hex.
pub fn new_source_id() -> String {
    format!("src_{}", hex::encode(rand::random::<[u8; 16]>()))
}

/// Whether `secret` can verify under `verify`: a `whsec_` secret for
/// Standard Webhooks, 1–200 printable characters otherwise.
pub fn check_secret(verify: &Verify, secret: &str) -> Result<(), String> {
    if matches!(verify, Verify::StandardWebhooks) {
        // A symmetric secret, or the sender's `whpk_` public key (`v1a`).
        if secret.starts_with("whpk_") {
            crate::sign::verifying_key(secret).map_err(|e| e.to_string())?;
        } else {
            crate::sign::standard_key(secret).map_err(|e| e.to_string())?;
        }
    }
    if secret.is_empty() || secret.len() > 200 || secret.chars().any(char::is_control) {
        return Err("a secret is 1 to 200 printable characters".into());
    }
    Ok(())
}

/// Why a platform's request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The signature is missing, malformed, stale or wrong: nothing kept.
    #[error("{0}")]
    Unauthorized(#[from] verify::VerifyError),
    /// Verified but not normalizable: kept as the dead letter `dead_letter`.
    #[error("{message} (kept as dead letter {dead_letter}; replay it once the adapter is fixed)")]
    Unprocessable {
        message: String,
        dead_letter: String,
    },
    /// Replaying a dead letter failed again (the letter is kept).
    #[error("{0}")]
    StillUnprocessable(String),
    #[error(transparent)]
    Busy(#[from] Busy),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the platform gets back once its events are durably accepted.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// The body answered with 200 (JSON).
    pub reply: String,
    pub events: Vec<IngestResult>,
}

/// One platform request: verify, normalize, accept. Returns once the events
/// and their deliveries are durable (or why not).
pub async fn receive(
    app: &App,
    source: &Source,
    headers: Vec<Header>,
    body: &[u8],
) -> Result<Receipt, ReceiveError> {
    let now = app.clock.now();
    verify::check(
        &source.verify,
        &source.live_secrets(now),
        source.tolerance_secs,
        &headers,
        body,
        now,
    )
    .inspect_err(|_| crate::telemetry::source_request(source.kind.name(), "unauthorized"))?;
    let headers: Vec<Header> = headers
        .into_iter()
        .filter(|h| !matches!(h.name.as_str(), "authorization" | "cookie"))
        .take(MAX_HEADERS)
        .collect();
    // Borrowed exactly when the body is valid UTF-8 (one pass, not two).
    let text = String::from_utf8_lossy(body);
    let utf8 = matches!(text, std::borrow::Cow::Borrowed(_));
    match normalize(app, source, &headers, &text, now, utf8).await? {
        Ok((events, reply)) => accept(app, source, events, reply).await,
        Err(message) => {
            let dead_letter =
                keep_dead_letter(app, source, headers, text.into_owned(), message.clone()).await?;
            Err(ReceiveError::Unprocessable {
                message,
                dead_letter,
            })
        }
    }
}

/// The running tasks of sources (a NATS feed's consumer, a poller), one
/// per source id: a new one replaces (aborts) the old.
#[derive(Default)]
pub struct Tasks(std::sync::Mutex<std::collections::HashMap<String, tokio::task::AbortHandle>>);

impl Tasks {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, tokio::task::AbortHandle>>
    {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `task` as the source's, aborting the one it replaces.
    pub fn replace(&self, source_id: &str, task: tokio::task::AbortHandle) {
        if let Some(old) = self.lock().insert(source_id.to_string(), task) {
            old.abort();
        }
    }

    /// Aborts the source's task, if any.
    pub fn stop(&self, source_id: &str) {
        if let Some(task) = self.lock().remove(source_id) {
            task.abort();
        }
    }

    /// Calls `start` for every stored source `wanted` picks that has no
    /// task here yet: how many run now.
    pub fn start_missing(
        &self,
        app: &App,
        wanted: impl Fn(&Source) -> bool,
        start: impl Fn(&Source),
    ) -> Result<usize, StoreError> {
        for source in app.store.all_sources()?.iter().filter(|s| wanted(s)) {
            if !self.lock().contains_key(&source.id) {
                start(source);
            }
        }
        Ok(self.lock().len())
    }
}

/// How often a cluster node looks for pulling sources (NATS feeds, polls)
/// created through other nodes.
pub const SUPERVISE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Cluster mode: runs `start_missing` every [`SUPERVISE_EVERY`], so that a
/// source created through another node gets its task here too and outlives
/// the node it was created on.
pub async fn supervise(what: &'static str, start_missing: impl Fn() -> Result<usize, StoreError>) {
    loop {
        tokio::time::sleep(SUPERVISE_EVERY).await;
        if let Err(e) = start_missing() {
            warn!(sources = what, error = %e, "looking for new sources failed");
        }
    }
}

/// Keeps a request (or a polled item) that verified but could not be
/// normalized, durably, as a dead letter of its source: its id.
async fn keep_dead_letter(
    app: &App,
    source: &Source,
    headers: Vec<Header>,
    body: String,
    error: String,
) -> Result<String, ReceiveError> {
    let now = app.clock.now();
    let letter = DeadLetter {
        id: new_id_at("dlq", now),
        source_id: source.id.clone(),
        tenant_id: source.tenant_id.clone(),
        received_at: now,
        headers,
        body,
        error,
        attempts: 1,
        updated_at: now,
    };
    app.store
        .put_dead_letter(&letter, MAX_DEAD_LETTERS, app.settings.dead_letter_bytes)
        .await?;
    app.store.durable().await?;
    crate::telemetry::source_request(source.kind.name(), "dead_letter");
    Ok(letter.id)
}

/// The items of one polled page: each through the source's adapter (the
/// item is the body its format reads), its events under ids made of the
/// source, the item's id and its updated time (`key`), so an item polled
/// again unchanged is the same event and a changed one a new event. All
/// the page's events are accepted together, durably, before this returns;
/// an item the adapter refuses is kept as a dead letter. Returns how many
/// events were new, and the keys of the items refused.
pub async fn receive_items(
    app: &App,
    source: &Source,
    items: Vec<(String, String)>,
) -> Result<(usize, Vec<String>), ReceiveError> {
    let mut refused = Vec::new();
    let now = app.clock.now();
    let mut events = Vec::new();
    for (text, key) in items {
        match normalize(app, source, &[], &text, now, true).await? {
            Ok((mut made, _)) => {
                let n = made.len();
                for (i, event) in made.iter_mut().enumerate() {
                    let mut id = format!("{}:{key}", source.id);
                    if n > 1 {
                        id.push_str(&format!(":{i}"));
                    }
                    if id.len() > 200 {
                        // Still the same id for the same item and time.
                        id = format!(
                            "{}:{}",
                            source.id,
                            hex::encode(Sha256::digest(id.as_bytes()))
                        );
                    }
                    event.id = id;
                }
                events.append(&mut made);
            }
            Err(message) => {
                refused.push(key);
                keep_dead_letter(app, source, Vec::new(), text, message).await?;
            }
        }
    }
    let receipt = accept(app, source, events, None).await?;
    let new = receipt.events.iter().filter(|e| e.accepted_new).count();
    Ok((new, refused))
}

/// Runs a dead letter through the source's adapter again (no signature
/// check: it was verified when it arrived). Accepted: the letter is gone.
/// Failing again: it stays, with the new error.
pub async fn replay_dead_letter(
    app: &App,
    source: &Source,
    letter: &DeadLetter,
) -> Result<Receipt, ReceiveError> {
    let now = app.clock.now();
    match normalize(
        app,
        source,
        &letter.headers,
        &letter.body,
        letter.received_at,
        true,
    )
    .await?
    {
        Ok((events, reply)) => {
            let receipt = accept(app, source, events, reply).await?;
            app.store.delete_dead_letter(&source.id, &letter.id).await?;
            app.store.durable().await?;
            Ok(receipt)
        }
        Err(message) => {
            let mut again = letter.clone();
            again.error = message.clone();
            again.attempts += 1;
            again.updated_at = now;
            app.store
                .put_dead_letter(&again, MAX_DEAD_LETTERS, app.settings.dead_letter_bytes)
                .await?;
            app.store.durable().await?;
            Err(ReceiveError::StillUnprocessable(message))
        }
    }
}

/// The adapter's events as validated envelopes and its reply, or why there
/// are none (the message names the field). Only what may clear by itself
/// is an error here: a full plugin pool, or the store unable to answer (in
/// cluster mode, the adapter's component not yet visible through this
/// node's NATS server) — the platform's retry then comes again, where a
/// dead letter would wait for a person.
async fn normalize(
    app: &App,
    source: &Source,
    headers: &[Header],
    body: &str,
    received_at: Timestamp,
    utf8: bool,
) -> Result<Result<(Vec<Envelope>, Option<String>), String>, ReceiveError> {
    if !utf8 {
        return Ok(Err("the body is not UTF-8 text".into()));
    }
    let (plugin_id, config) = source.adapter();
    let plugin = match app.plugins.resolve(&source.tenant_id, &plugin_id).await {
        Ok(p) if p.world() == World::Source => p,
        Ok(_) => {
            return Ok(Err(format!(
                "adapter {plugin_id} is not a source adapter (it implements the transform world)"
            )));
        }
        Err(crate::plugins::ResolveError::Store(e)) if e.is_unavailable() => {
            return Err(e.into());
        }
        Err(e) => return Ok(Err(format!("adapter {plugin_id}: {e}"))),
    };
    let inbound = Inbound {
        headers: headers.to_vec(),
        body: body.to_string(),
        received_at: received_at.to_string(),
    };
    let report = {
        let _slot = app.plugins.admit(&source.tenant_id).await?;
        app.plugins
            .runtime()
            .normalize(&plugin, &inbound, &config)
            .await
    };
    debug!(source_id = %source.id, elapsed_us = report.elapsed.as_micros() as u64, "adapter ran");
    let normalized = match report.result {
        Ok(n) => n,
        Err(CallError::Plugin(PluginError::BadEvent(m))) => return Ok(Err(m)),
        Err(CallError::Plugin(PluginError::BadConfig(m))) => {
            return Ok(Err(format!("the adapter refused its config: {m}")));
        }
        Err(e) => return Ok(Err(format!("the adapter failed: {e}"))),
    };
    if normalized.events.len() > MAX_EVENTS_PER_REQUEST {
        return Ok(Err(format!(
            "the request carries {} events, over the {MAX_EVENTS_PER_REQUEST} one request may carry",
            normalized.events.len()
        )));
    }
    if let Some(reply) = &normalized.reply
        && serde_json::from_str::<Value>(reply).is_err()
    {
        return Ok(Err("the adapter's reply is not JSON".into()));
    }
    let digest = hex::encode(&Sha256::digest(body.as_bytes())[..16]);
    let origin = match source.kind {
        Kind::Plugin => source.id.clone(),
        kind => kind.name().to_string(),
    };
    let mut events = Vec::with_capacity(normalized.events.len());
    for (i, incoming) in normalized.events.into_iter().enumerate() {
        let data: Box<RawValue> = match serde_json::from_str(&incoming.payload) {
            Ok(v) => v,
            Err(e) => {
                return Ok(Err(format!(
                    "event {i} from the adapter: `data` is not JSON: {e}"
                )));
            }
        };
        let input = EventInput {
            // No platform id: the same body is still routed once.
            id: Some(
                incoming
                    .id
                    .unwrap_or_else(|| format!("{}:{digest}:{i}", source.id)),
            ),
            event_type: incoming.event_type,
            occurred_at: incoming.occurred_at,
            source: Some(origin.clone()),
            data,
            app: None,
        };
        // The id is always set above, so validation never generates one.
        match input.validate(received_at, &origin, String::new) {
            Ok(e) => events.push(e),
            Err(e) => return Ok(Err(format!("event {i} from the adapter: {e}"))),
        }
    }
    Ok(Ok((events, normalized.reply)))
}

/// Accepts the events (durably, with their deliveries) and builds the
/// platform's answer: the adapter's reply, or `{"accepted": n}`.
async fn accept(
    app: &App,
    source: &Source,
    events: Vec<Envelope>,
    reply: Option<String>,
) -> Result<Receipt, ReceiveError> {
    let n = events.len();
    let results = if events.is_empty() {
        Vec::new()
    } else {
        ingest::accept(app, &source.tenant_id, events).await?
    };
    crate::telemetry::source_request(source.kind.name(), "accepted");
    Ok(Receipt {
        reply: reply.unwrap_or_else(|| serde_json::json!({ "accepted": n }).to_string()),
        events: results,
    })
}
