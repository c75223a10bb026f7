//! The records of the stages that keep their settings here — sources
//! (their kind, verification, NATS feed, dead letters) and subscription
//! windows — defined with the store that keeps them, so the store imports
//! nothing above it. Their behaviour (verifying, normalizing, scheduling)
//! stays with the stages: `crate::source`, `crate::window`.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{PluginRef, Secret};
use crate::runtime::Header;

/// The platform a source speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// OneHash Chat and Chatwoot, its upstream (seed 001; `chatwoot` is
    /// the same kind).
    #[serde(alias = "chatwoot")]
    Onehash,
    /// onWebChat (seed 003).
    Onwebchat,
    /// Convosphere AI (seed 004).
    Convosphere,
    /// Hello Client (seed 002).
    Helloclient,
    /// oHallo (seed 000).
    Ohallo,
    /// Any sender of the Standard Webhooks payload form, wasmhook included.
    StandardWebhooks,
    /// The tenant's own adapter (`plugin`).
    Plugin,
    /// A NATS subject instead of HTTP requests (`nats`).
    Nats,
    /// wasmhook polls the platform's REST API (`poll`): for a platform
    /// with no webhooks yet (oHallo).
    Poll,
}

/// A tenant's inbound endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// `src_` + 128 random bits: the path is the credential where the
    /// platform does not sign.
    pub id: String,
    pub tenant_id: String,
    pub kind: Kind,
    /// The current secret first, then any still inside its grace period.
    pub secrets: Vec<Secret>,
    pub verify: Verify,
    /// How old a signed timestamp may be (timestamped schemes), seconds.
    pub tolerance_secs: u64,
    /// The adapter of a `plugin` source.
    pub plugin: Option<PluginRef>,
    /// Where a `nats` source reads; its URL sealed at rest.
    #[serde(default, with = "stored_feed")]
    pub nats: Option<NatsFeed>,
    /// What a `poll` source fetches (its bearer token is the source's
    /// secret, sealed like every secret).
    #[serde(default)]
    pub poll: Option<PollFeed>,
    /// A `standard-webhooks` source: the type of an event whose body names
    /// none (`type` or `eventType`); default `standard_webhooks.message`.
    #[serde(default)]
    pub default_type: Option<String>,
    pub description: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A request kept because it verified but could not be normalized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub id: String,
    pub source_id: String,
    pub tenant_id: String,
    pub received_at: Timestamp,
    /// The request's headers (lowercase), as the adapter saw them.
    #[schema(value_type = Vec<Object>)]
    pub headers: Vec<Header>,
    /// The body as received (invalid UTF-8 replaced).
    pub body: String,
    /// Why it could not be normalized, the last time it was tried.
    pub error: String,
    /// How many times it was tried (the request, then each replay).
    pub attempts: u32,
    pub updated_at: Timestamp,
}

/// How a source checks its platform's requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scheme", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Verify {
    /// No signature: the URL is the credential.
    None,
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`
    /// over `id.timestamp.body`, keyed by the `whsec_` secret's bytes.
    StandardWebhooks,
    /// `t=<unix>,v1=<hex HMAC-SHA256 of "t.body">` (Hello Client).
    TimestampedHex {
        #[serde(default = "default_timestamped_header")]
        header: String,
    },
    /// Hex HMAC-SHA256 of the exact body (onWebChat, oHallo); an optional
    /// `sha256=` prefix is accepted.
    BodyHex {
        #[serde(default = "default_body_header")]
        header: String,
    },
    /// Chatwoot ≥ 4.11.2: `X-Chatwoot-Signature: sha256=<hex HMAC-SHA256
    /// of "{timestamp}.{body}">` with `X-Chatwoot-Timestamp: <unix>`.
    Chatwoot,
}

fn default_timestamped_header() -> String {
    "x-webhook-signature".into()
}

fn default_body_header() -> String {
    "x-owc-signature".into()
}

/// Where a `nats` source reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsFeed {
    /// `nats://host:4222` (credentials in the URL if the server needs them).
    pub url: String,
    /// The subject (wildcards allowed) carrying the platform's events.
    pub subject: String,
    /// The platform whose events the messages are: a bundled kind
    /// (`ohallo`, `onwebchat`, …), normalized by its adapter.
    pub format: String,
}

/// How a source keeps its feed: the URL sealed like every other secret
/// (it may carry the broker's user and password), so the data directory
/// and, in cluster mode, the replicated log hold it encrypted. A URL stored
/// before sealing reads as it is and is sealed at its next write.
mod stored_feed {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::NatsFeed;

    #[derive(Serialize, Deserialize)]
    struct Stored {
        #[serde(with = "crate::secrets::sealed")]
        url: String,
        subject: String,
        format: String,
    }

    pub fn serialize<S: Serializer>(feed: &Option<NatsFeed>, s: S) -> Result<S::Ok, S::Error> {
        feed.as_ref()
            .map(|f| Stored {
                url: f.url.clone(),
                subject: f.subject.clone(),
                format: f.format.clone(),
            })
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NatsFeed>, D::Error> {
        Ok(Option::<Stored>::deserialize(d)?.map(|f| NatsFeed {
            url: f.url,
            subject: f.subject,
            format: f.format,
        }))
    }
}

/// What a `poll` source fetches, and how it reads the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PollFeed {
    /// The list to fetch (`https://api.ohallo.eu/api/conversations?workspaceId=…`).
    pub url: String,
    /// Seconds between two polls (at least 1; default 30; oHallo suggests
    /// 15 to 30 for conversations, minutes for KB entries).
    #[serde(default = "default_poll_every")]
    pub every_secs: u64,
    /// The bundled format each item is read as (`ohallo-conversation`,
    /// `ohallo-kb-entry`, `ohallo-attention-item`, or any bundled kind:
    /// the item is then the body that kind's adapter reads). Empty when
    /// the source has an uploaded adapter (`plugin`) instead.
    #[serde(default)]
    pub format: String,
    /// Headers sent with every fetch besides the bearer token (not
    /// secrets: shown in answers; `Authorization`, `Cookie` and `Host`
    /// are refused).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// The query parameter that carries the cursor: the newest updated
    /// time accepted so far (default `updatedSince`).
    #[serde(default = "default_cursor_param")]
    pub cursor_param: String,
    /// Where the items are in an answer (a JSON pointer; default `/items`,
    /// `""` for an answer that is the list itself).
    #[serde(default = "default_items")]
    pub items: String,
    /// Each item's id (default `id`) and updated time (default
    /// `updatedAt`): together the event id, so a changed item is a new
    /// event and an unchanged one is not.
    #[serde(default = "default_id_field")]
    pub id_field: String,
    #[serde(default = "default_updated_field")]
    pub updated_field: String,
    /// Where the next page is (a JSON pointer to a URL or a cursor);
    /// none: one page per poll.
    #[serde(default)]
    pub next: Option<String>,
    /// The query parameter a cursor-style next page goes in (default
    /// `cursor`); unused when `next` holds a URL.
    #[serde(default = "default_next_param")]
    pub next_param: String,
    /// Send the source's secret as `Authorization: Bearer …` (default true).
    #[serde(default = "default_true")]
    pub bearer: bool,
}

fn default_poll_every() -> u64 {
    30
}
fn default_cursor_param() -> String {
    "updatedSince".into()
}
fn default_items() -> String {
    "/items".into()
}
fn default_id_field() -> String {
    "id".into()
}
fn default_updated_field() -> String {
    "updatedAt".into()
}
fn default_next_param() -> String {
    "cursor".into()
}
fn default_true() -> bool {
    true
}

/// Where a `poll` source stands: kept apart from the source record, which
/// the API changes, and written after each page's events are durable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PollState {
    /// The newest updated time accepted (the next poll's cursor).
    pub cursor: Option<String>,
    pub last_run_at: Option<Timestamp>,
    /// The last poll that ended without an error.
    pub last_ok_at: Option<Timestamp>,
    /// Why the last poll failed (cleared by the next that works).
    pub last_error: Option<String>,
    /// Polls failed in a row (the backoff grows with it).
    pub failures: u32,
    /// Events accepted by polls, in all.
    pub accepted: u64,
}

/// A subscription's window, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// `1d`, or minutes / hours that divide a day: `5m`, `15m`, `1h`, `6h`.
    pub every: String,
    /// `HH:MM` after the end of a window when it closes (default `00:00`);
    /// shorter than the period.
    #[serde(default = "default_at")]
    pub at: String,
    /// An IANA zone name; days start at local midnight (default `UTC`).
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Most items held at once for this subscription.
    #[serde(default = "default_max_items")]
    pub max_items: u64,
    /// Most bytes held at once for this subscription.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

fn default_at() -> String {
    "00:00".into()
}
fn default_timezone() -> String {
    "UTC".into()
}
fn default_max_items() -> u64 {
    100_000
}
fn default_max_bytes() -> u64 {
    8 << 20
}
