//! What the sources API takes and shows: a new source, a change, a
//! source as answered (its secret only on creation, reveal and rotation).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ApiState};
use crate::source::nats::NatsFeed;
use crate::source::{self, Kind, Source, Verify};
use crate::store::{PluginRef, PollFeed, PollState};

/// A new source.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceInput {
    /// The platform: `onehash` (or `chatwoot`), `onwebchat`, `convosphere`,
    /// `helloclient`, `ohallo`, `standard-webhooks`, `plugin` (your own
    /// adapter), `nats` (a NATS subject instead of HTTP requests), or
    /// `poll` (wasmhook polls the platform's REST API).
    pub(super) kind: Kind,
    /// The platform's signing secret (many platforms generate it: paste
    /// theirs). Default: a new `whsec_…` secret to give the platform.
    pub(super) secret: Option<String>,
    /// How requests are verified; default: the platform's own scheme
    /// (`none` where its docs name none: the URL is the credential).
    #[schema(value_type = Option<Object>)]
    pub(super) verify: Option<Verify>,
    /// How far a signed timestamp may be from now, seconds (default 300).
    pub(super) tolerance_secs: Option<u64>,
    /// The adapter of a `plugin` source: `{"id": "plg_…", "config": {…}}`.
    #[schema(value_type = Option<Object>)]
    pub(super) plugin: Option<PluginRef>,
    /// A `nats` source's subject: `{"url", "subject", "format"}`.
    pub(super) nats: Option<NatsFeed>,
    /// What a `poll` source fetches: `{"url", "format", "every_secs"?, …}`;
    /// its `secret` is the API's bearer token.
    pub(super) poll: Option<PollFeed>,
    /// A `standard-webhooks` source: the type of an event whose body names
    /// none.
    pub(super) default_type: Option<String>,
    pub(super) description: Option<String>,
}

/// Changes to a source (the kind and the id stay).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourcePatch {
    #[schema(value_type = Option<Object>)]
    pub(super) verify: Option<Verify>,
    pub(super) tolerance_secs: Option<u64>,
    /// A `plugin` source's adapter (fix the mapping, then replay the dead
    /// letters).
    #[schema(value_type = Option<Object>)]
    pub(super) plugin: Option<PluginRef>,
    pub(super) description: Option<String>,
}

/// A source as the API shows it (the secret on creation, reveal and
/// rotation only).
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceView {
    pub id: String,
    pub kind: Kind,
    /// The path the platform posts to: `/in/{id}` on this server.
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[schema(value_type = Object)]
    pub verify: Verify,
    pub tolerance_secs: u64,
    #[schema(value_type = Option<Object>)]
    pub plugin: Option<PluginRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsFeed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll: Option<PollFeed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_type: Option<String>,
    /// A `poll` source's cursor, last run and last error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_state: Option<PollState>,
    pub description: String,
    /// Requests kept because they could not be normalized.
    pub dead_letters: usize,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl SourceView {
    pub(super) fn of(s: Source, with_secret: bool, state: &ApiState) -> Result<Self, ApiError> {
        Ok(SourceView {
            url: s.url(),
            secret: with_secret
                .then(|| s.secrets.first().map(|x| x.secret.clone()))
                .flatten(),
            dead_letters: state.app.store.count_dead_letters(&s.id)?,
            poll_state: source::poll::state(&state.app, &s),
            id: s.id,
            kind: s.kind,
            verify: s.verify,
            tolerance_secs: s.tolerance_secs,
            plugin: s.plugin,
            nats: s.nats.as_ref().map(NatsFeed::redacted),
            poll: s.poll,
            default_type: s.default_type,
            description: s.description,
            created_at: s.created_at,
            updated_at: s.updated_at,
        })
    }
}
