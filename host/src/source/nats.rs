//! NATS feeds: a source that consumes a NATS subject instead of taking
//! HTTP requests (oHallo streams its internal events through a broker).
//!
//! Each `nats` source runs one task: it connects, finds the JetStream stream
//! that captures the subject (or creates `WASMHOOK_SRC_<id>` for it), and
//! reads through a durable pull consumer named after the source, so a
//! restart resumes where it stopped. A message is acknowledged only after
//! its events are durably accepted (or kept as a dead letter); a fault that
//! may clear (storage, a full plugin pool, the backlog quota) is answered
//! with a delayed redelivery, so nothing is lost and nothing is routed twice
//! (the event ids come from the payload). A lost connection is retried with
//! backoff for as long as the source exists.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::AbortHandle;
use tracing::{info, warn};

use super::{ReceiveError, Source};
use crate::app::App;
use crate::runtime::Header;

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

/// Why a feed's setting is unusable.
pub fn check(feed: &NatsFeed) -> Result<(), String> {
    if !(feed.url.starts_with("nats://") || feed.url.starts_with("tls://")) || feed.url.len() > 500
    {
        return Err("nats.url is nats://host:port (or tls://)".into());
    }
    let valid_subject = !feed.subject.is_empty()
        && feed.subject.len() <= 200
        && feed
            .subject
            .split('.')
            .all(|t| !t.is_empty() && !t.contains(char::is_whitespace));
    if !valid_subject {
        return Err(format!(
            "nats.subject {:?} is not a NATS subject",
            feed.subject
        ));
    }
    Ok(())
}

/// How long a message that hit a passing fault waits to be redelivered.
const REDELIVER_AFTER: Duration = Duration::from_secs(5);
/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The running feeds, one task per `nats` source.
#[derive(Default)]
pub struct Feeds {
    running: Mutex<HashMap<String, AbortHandle>>,
}

impl Feeds {
    /// Starts (or restarts, after a change) the source's feed.
    pub fn start(&self, app: &App, source: &Source) {
        let Some(feed) = source.nats.clone() else {
            return;
        };
        let task = tokio::spawn(run(app.clone(), source.clone(), feed));
        if let Some(old) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(source.id.clone(), task.abort_handle())
        {
            old.abort();
        }
    }

    /// Stops a deleted source's feed (its durable consumer stays on the
    /// server; delete it there if the subject is gone for good).
    pub fn stop(&self, source_id: &str) {
        if let Some(task) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(source_id)
        {
            task.abort();
        }
    }

    /// Starts every stored `nats` source (server start).
    pub fn start_all(&self, app: &App) -> Result<usize, crate::store::StoreError> {
        let sources = app.store.all_sources()?;
        let mut n = 0;
        for source in sources.iter().filter(|s| s.nats.is_some()) {
            self.start(app, source);
            n += 1;
        }
        Ok(n)
    }
}

/// Reads the feed for as long as the task lives, reconnecting with backoff.
async fn run(app: App, source: Source, feed: NatsFeed) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match consume(&app, &source, &feed).await {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                warn!(source_id = %source.id, url = %feed.url, error = %e, "NATS feed interrupted; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's worth of consuming; returns when the stream of
/// messages ends or fails.
async fn consume(app: &App, source: &Source, feed: &NatsFeed) -> anyhow::Result<()> {
    let client = async_nats::connect(&feed.url).await?;
    let js = jetstream::new(client);
    let stream = match js.stream_by_subject(feed.subject.clone()).await {
        Ok(name) => js.get_stream(name).await?,
        Err(_) => {
            js.get_or_create_stream(jetstream::stream::Config {
                name: format!("WASMHOOK_SRC_{}", source.id),
                subjects: vec![feed.subject.clone()],
                ..Default::default()
            })
            .await?
        }
    };
    let durable = format!("wasmhook-{}", source.id);
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .get_or_create_consumer(
            &durable,
            pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: feed.subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await?;
    info!(source_id = %source.id, subject = %feed.subject, "NATS feed consuming");
    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        let headers: Vec<Header> = message
            .message
            .headers
            .as_ref()
            .map(|h| {
                h.iter()
                    .flat_map(|(name, values)| {
                        values.iter().map(move |v| Header {
                            name: name.to_string().to_ascii_lowercase(),
                            value: v.to_string(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ack = match super::receive(app, source, headers, &message.message.payload).await {
            // Accepted, or kept as a dead letter: done with it either way.
            Ok(_) | Err(ReceiveError::Unprocessable { .. }) => AckKind::Ack,
            Err(e) => {
                warn!(source_id = %source.id, error = %e, "NATS message not accepted; redelivered later");
                AckKind::Nak(Some(REDELIVER_AFTER))
            }
        };
        message
            .ack_with(ack)
            .await
            .map_err(|e| anyhow::anyhow!("acknowledging: {e}"))?;
    }
    Ok(())
}
