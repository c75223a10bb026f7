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

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures_util::StreamExt;
use tracing::{info, warn};

use super::{ReceiveError, Source};
use crate::app::App;
use crate::deliver::ssrf::BrokerPolicy;
use crate::runtime::Header;

pub use crate::store::NatsFeed;

impl NatsFeed {
    /// The feed as a response shows it: a password in the URL is masked
    /// (it is a secret, shown only in the request that set it).
    pub fn redacted(&self) -> NatsFeed {
        let mut shown = self.clone();
        if let Ok(mut url) = reqwest::Url::parse(&self.url) {
            // A password, or a token alone in the user part
            // (`nats://TOKEN@host`): both are credentials.
            let masked = if url.password().is_some() {
                url.set_password(Some("****")).is_ok()
            } else if !url.username().is_empty() {
                url.set_username("****").is_ok()
            } else {
                false
            };
            if masked {
                shown.url = url.to_string();
            }
        }
        shown
    }
}

/// Why a feed's setting is unusable (the broker itself is the egress
/// guard's to judge: [`BrokerPolicy::check`]).
pub fn check(feed: &NatsFeed) -> Result<(), String> {
    if !(feed.url.starts_with("nats://") || feed.url.starts_with("tls://")) || feed.url.len() > 500
    {
        return Err("nats.url is nats://host:port (or tls://)".into());
    }
    let tokens: Vec<&str> = feed.subject.split('.').collect();
    let valid_subject = !feed.subject.is_empty()
        && feed.subject.len() <= 200
        && tokens.iter().enumerate().all(|(i, t)| {
            !t.is_empty()
                && !t.contains(|c: char| c.is_whitespace() || c.is_control())
                && (!t.contains('>') || (*t == ">" && i == tokens.len() - 1))
                && (!t.contains('*') || *t == "*")
        });
    if !valid_subject {
        return Err(format!(
            "nats.subject {:?} is not a NATS subject",
            feed.subject
        ));
    }
    if let Some(reserved) = reserved_subject(&feed.subject) {
        return Err(format!(
            "nats.subject {:?} may match {reserved}: subjects of wasmhook and of the NATS server are not sources",
            feed.subject
        ));
    }
    Ok(())
}

/// Subjects no source may read, whatever the broker: wasmhook's own (in
/// cluster mode `wasmhook.log` carries every tenant's records), the
/// server's and JetStream's APIs, key-value and object stores, and reply
/// inboxes.
const RESERVED_SUBJECTS: &[&str] = &[
    "wasmhook.>",
    "$JS.>",
    "$KV.>",
    "$O.>",
    "$SYS.>",
    "$SRV.>",
    "$NRG.>",
    "_INBOX.>",
];

/// Whether some subject matches both patterns (`*` one token, `>` the
/// rest, at least one token).
fn overlaps(a: &[&str], b: &[&str]) -> bool {
    match (a.first(), b.first()) {
        (None, None) => true,
        (Some(&">"), Some(_)) | (Some(_), Some(&">")) => true,
        (Some(x), Some(y)) => (*x == "*" || *y == "*" || x == y) && overlaps(&a[1..], &b[1..]),
        _ => false,
    }
}

/// Why a source may not read `subject`, if it may not.
fn reserved_subject(subject: &str) -> Option<&'static str> {
    let tokens: Vec<&str> = subject.split('.').collect();
    if tokens[0].starts_with('$') {
        return Some("$…");
    }
    RESERVED_SUBJECTS.iter().copied().find(|reserved| {
        let r: Vec<&str> = reserved.split('.').collect();
        overlaps(&tokens, &r)
    })
}

/// How long a message that hit a passing fault waits to be redelivered.
const REDELIVER_AFTER: Duration = Duration::from_secs(5);
/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The running feeds, one task per `nats` source.
#[derive(Default)]
pub struct Feeds {
    running: super::Tasks,
    /// Which brokers feeds may connect to.
    policy: Arc<BrokerPolicy>,
}

impl Feeds {
    pub fn new(policy: BrokerPolicy) -> Self {
        Feeds {
            running: super::Tasks::default(),
            policy: Arc::new(policy),
        }
    }

    /// The egress guard's word on brokers.
    pub fn policy(&self) -> &BrokerPolicy {
        &self.policy
    }

    /// Starts (or restarts, after a change) the source's feed.
    pub fn start(&self, app: &App, source: &Source) {
        let Some(feed) = source.nats.clone() else {
            return;
        };
        let task = tokio::spawn(run(app.clone(), self.policy.clone(), source.clone(), feed));
        self.running.replace(&source.id, task.abort_handle());
    }

    /// Stops a deleted source's feed (its durable consumer stays on the
    /// server; delete it there if the subject is gone for good).
    pub fn stop(&self, source_id: &str) {
        self.running.stop(source_id);
    }

    /// Starts a feed for every stored `nats` source that has none running
    /// here (server start): how many run now.
    pub fn start_all(&self, app: &App) -> Result<usize, crate::store::StoreError> {
        self.running
            .start_missing(app, |s| s.nats.is_some(), |s| self.start(app, s))
    }

    /// Cluster mode: feeds for the sources created through other nodes
    /// ([`super::supervise`]), so that every node consumes every feed (one
    /// durable consumer per source: JetStream hands each message to one
    /// of them).
    pub async fn supervise(self: Arc<Self>, app: App) {
        super::supervise("nats", || self.start_all(&app)).await
    }
}

/// Reads the feed for as long as the task lives, reconnecting with backoff.
/// The broker is checked again before every connection: a name that
/// resolves elsewhere now, or an allow-list that changed, stops it.
async fn run(app: App, policy: Arc<BrokerPolicy>, source: Source, feed: NatsFeed) {
    let mut backoff = Duration::from_millis(200);
    loop {
        if gone(&app, &source) {
            info!(source_id = %source.id, "NATS feed stopped: its source is deleted");
            return;
        }
        if !app.store.has_data_of(&source.tenant_id) {
            // A partitioned cluster: the node holding the tenant's
            // partition consumes the feed; look again soon (it may move).
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        match policy.check(&feed.url).await {
            Ok(target) => match consume(&app, &source, &feed, &target.connect_url).await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(e) => {
                    warn!(source_id = %source.id, broker = %target.display, error = %e, "NATS feed interrupted; retrying");
                }
            },
            Err(refused) => {
                warn!(source_id = %source.id, error = %refused, "NATS feed refused by the egress guard; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A feed's settings are usable and its broker answers now, as NATS (a
/// typo in the URL is refused at once, not retried forever by a task).
pub async fn check_reachable(policy: &BrokerPolicy, feed: &NatsFeed) -> Result<(), String> {
    check(feed)?;
    // The bundled adapter's kinds: every source kind but these three.
    let formats: Vec<&str> = super::Kind::ALL
        .iter()
        .filter(|k| {
            !matches!(
                k,
                super::Kind::Plugin | super::Kind::Nats | super::Kind::Poll
            )
        })
        .map(|k| k.name())
        .collect();
    if !formats.contains(&feed.format.as_str()) {
        return Err(format!(
            "nats.format {:?} is not one of {}",
            feed.format,
            formats.join(", ")
        ));
    }
    let target = policy.check(&feed.url).await.map_err(|e| e.to_string())?;
    // One answer for every failure (refused, silent, not NATS): what it
    // was would tell a tenant whether something listens at the address.
    match tokio::time::timeout(CONNECT_TIMEOUT, connect(&target.connect_url)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(format!(
            "cannot connect to the broker {} as NATS",
            target.display
        )),
    }
}

/// Whether the source was deleted since its feed started (by this node or
/// another: in cluster mode every node runs every feed).
fn gone(app: &App, source: &Source) -> bool {
    matches!(
        app.store.get_source(&source.tenant_id, &source.id),
        Ok(None)
    )
}

/// Connects to a broker the egress guard passed (`connect_url`): only to
/// that address, never to the servers it announces (a broker a tenant
/// names could announce internal ones).
pub async fn connect(connect_url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .ignore_discovered_servers()
        .retain_servers_order()
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(connect_url)
        .await
}

/// How long a connection to a broker may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One connection's worth of consuming; returns when the stream of
/// messages ends or fails.
async fn consume(
    app: &App,
    source: &Source,
    feed: &NatsFeed,
    connect_url: &str,
) -> anyhow::Result<()> {
    let client = connect(connect_url).await?;
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
        if !app.store.has_data_of(&source.tenant_id) {
            // The tenant's partition moved away: its new holder consumes.
            let _ = message.ack_with(AckKind::Nak(None)).await;
            return Ok(());
        }
        if gone(app, source) {
            // Deleted (on any node, or with its tenant): leave the message
            // to the broker and stop.
            return Ok(());
        }
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

#[cfg(test)]
mod tests {
    use super::NatsFeed;

    fn shown(url: &str) -> String {
        NatsFeed {
            url: url.into(),
            subject: "a.b".into(),
            format: "ohallo".into(),
        }
        .redacted()
        .url
    }

    /// Answers never carry a credential: a password, or a token alone in
    /// the user part.
    #[test]
    fn credentials_in_a_broker_url_are_masked() {
        assert_eq!(shown("nats://u:secret-pw@h:4222"), "nats://u:****@h:4222");
        assert_eq!(shown("nats://s3cr3t-token@h:4222"), "nats://****@h:4222");
        assert_eq!(shown("nats://h:4222"), "nats://h:4222");
    }
}
