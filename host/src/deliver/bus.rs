//! Publishing one attempt to a broker: NATS JetStream, AMQP 0-9-1
//! (RabbitMQ), a Redis stream. The same attempt as an HTTP POST — the
//! plugin's body and headers, the signature headers, the timeout, an
//! outcome the retry policy reads — with the broker's acknowledgement in
//! place of a 2xx:
//!
//! - **NATS**: a JetStream publish acknowledged by the stream that captures
//!   the subject; `Nats-Msg-Id` is the delivery id, so a publish retried
//!   after a lost acknowledgement (or a kill) within the stream's duplicate
//!   window is stored once.
//! - **AMQP**: persistent and mandatory on a channel in confirm mode; the
//!   broker's confirm is the success, an unroutable message is a failure.
//!   The delivery id is the `message_id`, but AMQP has no deduplication: a
//!   retried publish whose confirm was lost is stored again (at least once).
//! - **Redis**: one script that adds the entry (`XADD … MAXLEN ~`) only if
//!   no entry was added for the delivery id in the last [`REDIS_ONCE`];
//!   Redis runs a script whole, so a retried publish is stored once.
//!
//! Connections are pooled per node (by broker and login), made on first
//! use, dropped when the connection fails (not when one message does: no
//! stream for the subject, unroutable, a wrong key type), closed after
//! `IDLE` (10 minutes) unused; one found closed under a publish is replaced at once,
//! within the same attempt.
//! Every connection goes through the egress guard first: the broker's
//! addresses are checked as an HTTP endpoint's are (private ones refused
//! unless allowed) and the cluster's own NATS is never one; a plain
//! connection goes to the address checked, a TLS one to the name its
//! certificate must match.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use super::ssrf::{self, Guard};
use super::{AttemptResult, Request};
use crate::retry::Outcome;
use crate::store::Destination;

/// How long a Redis stream remembers that a delivery id was added.
pub const REDIS_ONCE: Duration = Duration::from_secs(72 * 3600);
/// Connections kept at most; past it the pool starts again.
const MAX_CONNECTIONS: usize = 1024;
/// How long a connection may take (within the attempt's timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Adds the entry once per delivery id: `KEYS[1]` the stream, `KEYS[2]`
/// the delivery id's marker; `ARGV[1]` the marker's lifetime (s),
/// `ARGV[2]` the stream's length bound, then the entry's fields. A script
/// is not rolled back: the type is checked before the marker is set, and
/// an `XADD` that fails anyway (an ACL, exhausted ids) removes it again,
/// so a retry is not taken for a duplicate.
const REDIS_ADD_ONCE: &str = r#"
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'stream' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' is a ' .. kind .. ', not a stream')
end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  return false
end
local added = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
if type(added) == 'table' and added.err then
  redis.call('DEL', KEYS[2])
end
return added
"#;

/// A pooled connection.
#[derive(Clone)]
enum Conn {
    Nats(async_nats::jetstream::Context),
    Amqp(Arc<Amqp>),
    Redis(redis::aio::MultiplexedConnection),
}

/// The connection is kept beside its channels: dropping it closes all.
/// A channel carries one publish and its confirm at a time: a returned
/// (unroutable) message is matched to the next confirm of its channel, so
/// two publishes in flight on one channel could swap their outcomes.
struct Amqp {
    connection: lapin::Connection,
    channels: Vec<tokio::sync::Mutex<lapin::Channel>>,
    next: std::sync::atomic::AtomicUsize,
}

/// Channels per AMQP connection (publishes in flight at once on it).
const AMQP_CHANNELS: usize = 32;

type Slot = Arc<OnceCell<Conn>>;

/// A pooled connection and when an attempt last took it.
struct Entry {
    slot: Slot,
    used: Instant,
}

/// A connection no attempt took for this long is closed (a deleted
/// subscription's, an old password's): the next attempt connects again.
const IDLE: Duration = Duration::from_secs(600);
/// How often the pool looks for idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The brokers' connections of this node, and the guard they pass.
pub struct Buses {
    guard: Arc<Guard>,
    /// The cluster's own NATS URLs: never a destination.
    internal: Vec<String>,
    pool: Mutex<Pool>,
}

#[derive(Default)]
struct Pool {
    entries: HashMap<[u8; 32], Entry>,
    swept: Option<Instant>,
}

impl Pool {
    /// Drops the connections idle since before `now - IDLE`.
    fn sweep(&mut self, now: Instant) {
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.used) < IDLE);
        self.swept = Some(now);
    }
}

/// Why a publish did not happen or was not acknowledged.
#[derive(Debug)]
struct Failed {
    outcome: Outcome,
    error: String,
    /// The connection is broken (or may be): the next attempt makes a new
    /// one. A failure of this one message (no stream for the subject,
    /// unroutable, a wrong key type) keeps the connection, which other
    /// subscriptions share.
    broken: bool,
    /// The pooled connection was found closed before any answer (the
    /// broker restarted, an idle connection was cut): worth one more try
    /// at once on a new one, within the same attempt. Safe for NATS and
    /// Redis (deduplicated by delivery id); for AMQP at least once anyway.
    gone: bool,
}

impl Failed {
    /// The connection failed: retried, on a new connection.
    fn broken(error: impl Into<String>) -> Self {
        Failed {
            outcome: Outcome::Transport,
            error: error.into(),
            broken: true,
            gone: false,
        }
    }

    /// The connection was closed under the publish.
    fn gone(error: impl Into<String>) -> Self {
        Failed {
            gone: true,
            ..Failed::broken(error)
        }
    }

    /// This message failed: retried, on the same connection.
    fn transport(error: impl Into<String>) -> Self {
        Failed {
            outcome: Outcome::Transport,
            error: error.into(),
            broken: false,
            gone: false,
        }
    }

    /// Retrying cannot help (the guard refused, the message cannot be sent).
    fn refused(error: impl Into<String>) -> Self {
        Failed {
            outcome: Outcome::Refused,
            error: error.into(),
            broken: false,
            gone: false,
        }
    }
}

impl Buses {
    pub fn new(guard: Arc<Guard>, internal: Vec<String>) -> Self {
        Buses {
            guard,
            internal,
            pool: Mutex::default(),
        }
    }

    /// Publishes one attempt. Never fails: every problem becomes an
    /// outcome with an error text for the delivery log. Connecting (on
    /// first use, or after a failure) has its own timeout; the attempt's
    /// timeout is the publish and its acknowledgement.
    pub async fn publish(&self, d: &Destination, m: &Request<'_>) -> AttemptResult {
        let started = Instant::now();
        let (mut result, mut used) = self.publish_once(d, m, m.timeout).await;
        if let Err(f) = &result
            && f.gone
        {
            // A pooled connection found closed: once more, on a new one,
            // within what is left of the attempt's time.
            self.forget(d, &used);
            (result, used) = self
                .publish_once(d, m, m.timeout.saturating_sub(started.elapsed()))
                .await;
        }
        let duration_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(answer) => AttemptResult {
                outcome: Outcome::Delivered,
                status: None,
                duration_ms,
                response_body: Some(answer),
                error: None,
            },
            Err(f) => {
                if f.broken {
                    self.forget(d, &used);
                }
                AttemptResult {
                    outcome: f.outcome,
                    status: None,
                    duration_ms,
                    response_body: None,
                    error: Some(format!("{}: {}", d.kind(), f.error)),
                }
            }
        }
    }

    /// One try: the pooled connection (or a new one), the publish, its
    /// acknowledgement within the attempt's timeout. Only a connection
    /// that was pooled can be found `gone`.
    /// Answers the slot it used too (only that one is forgotten after a
    /// failure, not one another task has made since).
    async fn publish_once(
        &self,
        d: &Destination,
        m: &Request<'_>,
        within: Duration,
    ) -> (Result<String, Failed>, Slot) {
        let slot = self.slot(d);
        let reused = slot.initialized();
        // One bound on the whole wait: tokio's OnceCell lets each waiter
        // try the connect again after a failed one.
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, self.connection(d, &slot)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(f)) => return (Err(f), slot),
            Err(_) => {
                let f =
                    Failed::broken(format!("connect: no connection within {CONNECT_TIMEOUT:?}"));
                return (Err(f), slot);
            }
        };
        let result = tokio::time::timeout(within, publish_on(conn, d, m))
            .await
            .unwrap_or_else(|_| {
                Err(Failed::broken(format!(
                    "timeout: no acknowledgement within {} ms",
                    m.timeout.as_millis()
                )))
            })
            .map_err(|mut f| {
                f.gone &= reused;
                f
            });
        (result, slot)
    }

    /// The pooled connection, made if there is none (a failed connect
    /// leaves no slot behind).
    async fn connection(&self, d: &Destination, slot: &Slot) -> Result<Conn, Failed> {
        let made = slot
            .get_or_try_init(|| async {
                tokio::time::timeout(CONNECT_TIMEOUT, self.connect(d))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Failed::broken(format!(
                            "connect: no connection within {CONNECT_TIMEOUT:?}"
                        )))
                    })
            })
            .await
            .cloned();
        if made.is_err() {
            self.forget(d, slot);
        }
        made
    }

    /// The pool's slot of this broker and login.
    fn slot(&self, d: &Destination) -> Slot {
        let key = pool_key(d);
        let now = Instant::now();
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool
            .swept
            .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY)
        {
            pool.sweep(now);
        }
        if pool.entries.len() >= MAX_CONNECTIONS
            && !pool.entries.contains_key(&key)
            && let Some(oldest) = pool
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| *k)
        {
            // Full: the least recently used goes, not everyone's.
            pool.entries.remove(&oldest);
        }
        let entry = pool.entries.entry(key).or_insert_with(|| Entry {
            slot: Slot::default(),
            used: now,
        });
        entry.used = now;
        entry.slot.clone()
    }

    /// Drops the connection `used` after a failure (if the pool still
    /// holds that one): the next attempt connects again.
    fn forget(&self, d: &Destination, used: &Slot) {
        let key = pool_key(d);
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool
            .entries
            .get(&key)
            .is_some_and(|e| Arc::ptr_eq(&e.slot, used))
        {
            pool.entries.remove(&key);
        }
    }

    /// The address to connect to, checked: every address the host
    /// resolves to passes the guard, and none is the cluster's own NATS.
    pub async fn check(&self, d: &Destination) -> Result<(String, SocketAddr), String> {
        let (host, port) = host_port_of(d)?;
        let addrs = self.guard.resolve_checked(&host, port).await?;
        self.refuse_internal(&host, port, &addrs).await?;
        Ok((host, addrs[0]))
    }

    /// Whether the destination is the cluster's own NATS (by name, or by
    /// an address its name resolves to): checked when a subscription is
    /// created or changed, and at each connection.
    pub async fn check_not_internal(&self, d: &Destination) -> Result<(), String> {
        if matches!(d, Destination::Listen { .. }) {
            // Not a connection the server makes.
            return Ok(());
        }
        let (host, port) = host_port_of(d)?;
        let addrs = self.guard.resolve_any(&host, port).await;
        self.refuse_internal(&host, port, &addrs).await
    }

    async fn refuse_internal(
        &self,
        host: &str,
        port: u16,
        addrs: &[SocketAddr],
    ) -> Result<(), String> {
        // 0.0.0.0 and :: reach this host's own listeners, whatever they are.
        if let Some(a) = addrs.iter().find(|a| a.ip().is_unspecified()) {
            return Err(format!(
                "{} is the unspecified address {}, never a destination",
                ssrf::format_host_port(host, port),
                a.ip()
            ));
        }
        for own in &self.internal {
            if let Ok((h, p)) = ssrf::broker_host_port(own) {
                let theirs = self.guard.resolve_any(&h, p).await;
                if (h == host && p == port) || addrs.iter().any(|a| theirs.contains(a)) {
                    return Err(format!(
                        "{} is this cluster's own NATS, never a destination",
                        ssrf::format_host_port(host, port)
                    ));
                }
            }
        }
        Ok(())
    }

    async fn connect(&self, d: &Destination) -> Result<Conn, Failed> {
        // A name that does not resolve now may tomorrow: retried. An
        // address the guard refuses is refused for good.
        let (host, addr) = self.check(d).await.map_err(|e| {
            if e.starts_with("dns: ") {
                Failed::broken(e)
            } else {
                Failed::refused(e)
            }
        })?;
        let url = reqwest::Url::parse(d.url()).map_err(|e| Failed::refused(e.to_string()))?;
        let tls = matches!(url.scheme(), "tls" | "amqps" | "rediss");
        let credentials = d.credentials();
        match d {
            Destination::Nats { .. } => {
                let mut options = async_nats::ConnectOptions::new()
                    .ignore_discovered_servers()
                    .retain_servers_order()
                    .connection_timeout(CONNECT_TIMEOUT)
                    .max_reconnects(Some(1));
                options = match (&credentials.username, &credentials.password) {
                    (Some(user), Some(pass)) => {
                        options.user_and_password(user.clone(), pass.clone())
                    }
                    (Some(user), None) => options.user_and_password(user.clone(), String::new()),
                    (None, Some(token)) => options.token(token.clone()),
                    (None, None) => options,
                };
                let target = if tls {
                    format!("tls://{}", ssrf::format_host_port(&host, addr.port()))
                } else {
                    format!("nats://{addr}")
                };
                let client = options
                    .connect(target)
                    .await
                    .map_err(|e| Failed::broken(format!("connect: {e}")))?;
                Ok(Conn::Nats(async_nats::jetstream::new(client)))
            }
            Destination::Amqp { .. } => {
                // The URI is built field by field, not reparsed from text:
                // the checked address itself (an IPv6 one included), the
                // login as given, never lapin's guest default.
                use lapin::uri::{AMQPAuthority, AMQPScheme, AMQPUri, AMQPUserInfo};
                let (Some(username), Some(password)) =
                    (credentials.username.clone(), credentials.password.clone())
                else {
                    return Err(Failed::refused(
                        "an amqp destination needs user:password in its URL",
                    ));
                };
                let vhost = match url.path() {
                    "" => "/".to_string(),
                    path => percent_encoding::percent_decode_str(&path[1..])
                        .decode_utf8()
                        .map_err(|_| Failed::refused("the vhost is not UTF-8"))?
                        .into_owned(),
                };
                let uri = AMQPUri {
                    scheme: if tls {
                        AMQPScheme::AMQPS
                    } else {
                        AMQPScheme::AMQP
                    },
                    authority: AMQPAuthority {
                        userinfo: AMQPUserInfo { username, password },
                        host: if tls {
                            host.clone()
                        } else {
                            addr.ip().to_string()
                        },
                        port: addr.port(),
                    },
                    vhost,
                    query: Default::default(),
                };
                let connection =
                    lapin::Connection::connect_uri(uri, lapin::ConnectionProperties::default())
                        .await
                        .map_err(|e| Failed::broken(format!("connect: {e}")))?;
                let mut channels = Vec::with_capacity(AMQP_CHANNELS);
                for _ in 0..AMQP_CHANNELS {
                    let channel = connection
                        .create_channel()
                        .await
                        .map_err(|e| Failed::broken(format!("channel: {e}")))?;
                    channel
                        .confirm_select(lapin::options::ConfirmSelectOptions::default())
                        .await
                        .map_err(|e| Failed::broken(format!("confirm mode: {e}")))?;
                    channels.push(tokio::sync::Mutex::new(channel));
                }
                Ok(Conn::Amqp(Arc::new(Amqp {
                    connection,
                    channels,
                    next: Default::default(),
                })))
            }
            Destination::Listen { .. } => Err(Failed::refused("a listen destination is no broker")),
            Destination::Redis { .. } => {
                let address = if tls {
                    redis::ConnectionAddr::TcpTls {
                        host: host.clone(),
                        port: addr.port(),
                        insecure: false,
                        tls_params: None,
                    }
                } else {
                    redis::ConnectionAddr::Tcp(addr.ip().to_string(), addr.port())
                };
                let db = url
                    .path()
                    .trim_start_matches('/')
                    .parse::<i64>()
                    .unwrap_or(0);
                let mut settings = redis::RedisConnectionInfo::default().set_db(db);
                if let Some(user) = &credentials.username {
                    settings = settings.set_username(user);
                }
                if let Some(pass) = &credentials.password {
                    settings = settings.set_password(pass);
                }
                let info = redis::IntoConnectionInfo::into_connection_info(address)
                    .map_err(|e| Failed::refused(e.to_string()))?
                    .set_redis_settings(settings);
                let client =
                    redis::Client::open(info).map_err(|e| Failed::refused(e.to_string()))?;
                // The attempt's own timeout bounds each publish (not the
                // client's 500 ms default).
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(None);
                let con = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| Failed::broken(format!("connect: {e}")))?;
                Ok(Conn::Redis(con))
            }
        }
    }
}

/// A destination's host (lowercase, without brackets) and port.
fn host_port_of(d: &Destination) -> Result<(String, u16), String> {
    let url = reqwest::Url::parse(d.url()).map_err(|e| format!("invalid URL: {e}"))?;
    let host = url
        .host_str()
        .ok_or("the URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = url
        .port()
        .unwrap_or_else(|| crate::destination::default_port(url.scheme()));
    Ok((host, port))
}

/// The pool's key: the broker's URL and login (a digest, so the pool holds
/// no password beside the connection that uses it).
fn pool_key(d: &Destination) -> [u8; 32] {
    use sha2::Digest;
    let c = d.credentials();
    let mut h = sha2::Sha256::new();
    for part in [
        d.kind(),
        d.url(),
        c.username.as_deref().unwrap_or("\0"),
        c.password.as_deref().unwrap_or("\0"),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// Publishes on a pooled connection of the destination's kind.
async fn publish_on(conn: Conn, d: &Destination, m: &Request<'_>) -> Result<String, Failed> {
    match (conn, d) {
        (Conn::Nats(js), Destination::Nats { subject, .. }) => publish_nats(&js, subject, m).await,
        (
            Conn::Amqp(amqp),
            Destination::Amqp {
                exchange,
                routing_key,
                ..
            },
        ) => publish_amqp(&amqp, exchange, routing_key, m).await,
        (
            Conn::Redis(mut con),
            Destination::Redis {
                stream, max_len, ..
            },
        ) => publish_redis(&mut con, stream, *max_len, m).await,
        _ => Err(Failed::broken("the pooled connection is of another kind")),
    }
}

async fn publish_nats(
    js: &async_nats::jetstream::Context,
    subject: &str,
    m: &Request<'_>,
) -> Result<String, Failed> {
    use async_nats::jetstream::context::PublishErrorKind;
    use std::str::FromStr;
    let mut headers = async_nats::HeaderMap::new();
    let mut put = |name: &str, value: &str| -> Result<(), Failed> {
        let n = async_nats::HeaderName::from_str(name)
            .map_err(|_| Failed::refused(format!("header {name:?} is not a NATS header name")))?;
        let v = async_nats::HeaderValue::from_str(value).map_err(|_| {
            Failed::refused(format!("header {name:?} has a value NATS cannot carry"))
        })?;
        headers.insert(n, v);
        Ok(())
    };
    // The plugin's headers first, without JetStream's own (`Nats-Msg-Id`,
    // `Nats-Rollup`, `Nats-Expected-…`): the dedup id is the delivery's.
    for (name, value) in m.headers {
        if !name.to_ascii_lowercase().starts_with("nats-") {
            put(name, value)?;
        }
    }
    put("Content-Type", m.content_type)?;
    put("Wasmhook-Event-Type", m.event_type)?;
    put("Nats-Msg-Id", m.delivery_id)?;
    let ack = js
        .publish_with_headers(subject.to_string(), headers, m.body.to_vec().into())
        .await
        .map_err(|e| match e.kind() {
            PublishErrorKind::MaxPayloadExceeded => {
                Failed::refused(format!("the message is too large for the server: {e}"))
            }
            _ => Failed::gone(format!("publish: {e}")),
        })?
        .await
        .map_err(|e| match e.kind() {
            PublishErrorKind::StreamNotFound => Failed::transport(format!(
                "no JetStream stream captures the subject {subject:?}"
            )),
            PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::WrongLastSequence
            | PublishErrorKind::Other => Failed::transport(format!("acknowledgement: {e}")),
            _ => Failed::broken(format!("acknowledgement: {e}")),
        })?;
    Ok(serde_json::json!({
        "stream": ack.stream,
        "seq": ack.sequence,
        "duplicate": ack.duplicate,
    })
    .to_string())
}

/// An AMQP short string (at most 255 bytes), or why the message cannot go.
fn short(what: &str, text: &str) -> Result<lapin::types::ShortString, Failed> {
    // `try_new`, not `from`/`try_from`: those panic past 255 bytes.
    lapin::types::ShortString::try_new(text)
        .map_err(|_| Failed::refused(format!("{what} is over 255 bytes (an AMQP short string)")))
}

async fn publish_amqp(
    amqp: &Amqp,
    exchange: &str,
    routing_key: &str,
    m: &Request<'_>,
) -> Result<String, Failed> {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let mut table = FieldTable::default();
    for (name, value) in m.headers {
        table.insert(
            short(&format!("header {name:?}"), name)?,
            AMQPValue::LongString(LongString::from(value.clone())),
        );
    }
    let properties = lapin::BasicProperties::default()
        .with_content_type(short("the content type", m.content_type)?)
        .with_delivery_mode(2)
        .with_message_id(short("the delivery id", m.delivery_id)?)
        .with_type(short("the event type", m.event_type)?)
        .with_app_id(short("", "wasmhook")?)
        .with_headers(table);
    let (exchange_name, key) = (
        short("exchange", exchange)?,
        short("routing_key", routing_key)?,
    );
    // One publish and its confirm at a time per channel (see `Amqp`).
    let n = amqp.channels.len();
    let start = amqp.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // A free channel if there is one, else wait for this attempt's turn.
    let mut channel = match (0..n).find_map(|k| amqp.channels[(start + k) % n].try_lock().ok()) {
        Some(free) => free,
        None => amqp.channels[start % n].lock().await,
    };
    if !channel.status().connected() {
        // The broker closed this channel (an unknown exchange, a refused
        // message): a new one on the same connection, if it stands.
        if !amqp.connection.status().connected() {
            return Err(Failed::gone("the connection is closed"));
        }
        let fresh = amqp
            .connection
            .create_channel()
            .await
            .map_err(|e| Failed::broken(format!("channel: {e}")))?;
        fresh
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .map_err(|e| Failed::broken(format!("confirm mode: {e}")))?;
        *channel = fresh;
    }
    // A channel-level refusal closes this channel only: the connection,
    // which other subscriptions share, stays.
    let failed = |what: &str, e: lapin::Error, gone: bool| {
        let text = format!("{what}: {e}");
        if amqp.connection.status().connected() {
            Failed::transport(text)
        } else if gone {
            Failed::gone(text)
        } else {
            Failed::broken(text)
        }
    };
    let confirm = channel
        .basic_publish(
            exchange_name,
            key,
            lapin::options::BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            m.body,
            properties,
        )
        .await
        // The channel (an unknown exchange closes it) or the connection
        // is gone: a new connection next time.
        .map_err(|e| failed("publish", e, true))?
        .await
        .map_err(|e| failed("confirm", e, false))?;
    match confirm {
        lapin::Confirmation::Ack(None) => Ok("confirmed".into()),
        lapin::Confirmation::Ack(Some(_)) => Err(Failed::transport(format!(
            "unroutable: no queue is bound to exchange {exchange:?} with routing key {routing_key:?}"
        ))),
        lapin::Confirmation::Nack(_) => {
            Err(Failed::transport("the broker refused the message (nack)"))
        }
        lapin::Confirmation::NotRequested => {
            Err(Failed::broken("the channel is not in confirm mode"))
        }
    }
}

async fn publish_redis(
    con: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    max_len: u64,
    m: &Request<'_>,
) -> Result<String, Failed> {
    let headers: serde_json::Map<String, serde_json::Value> = m
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let script = redis::Script::new(REDIS_ADD_ONCE);
    let mut call = script.key(stream);
    call.key(format!("wasmhook:sent:{stream}:{}", m.delivery_id))
        .arg(REDIS_ONCE.as_secs())
        .arg(max_len)
        .arg("delivery_id")
        .arg(m.delivery_id)
        .arg("event_type")
        .arg(m.event_type)
        .arg("content_type")
        .arg(m.content_type)
        .arg("headers")
        .arg(serde_json::Value::Object(headers).to_string())
        .arg("body")
        .arg(m.body);
    let added: Option<String> = call.invoke_async(con).await.map_err(|e| {
        // An error the server answered (a wrong key type, no permission)
        // leaves the connection as it was.
        if (e.is_io_error() || e.is_connection_dropped()) && !e.is_timeout() {
            Failed::gone(format!("XADD: {e}"))
        } else if e.is_timeout() || e.is_unrecoverable_error() {
            Failed::broken(format!("XADD: {e}"))
        } else {
            Failed::transport(format!("XADD: {e}"))
        }
    })?;
    Ok(match added {
        Some(id) => serde_json::json!({ "id": id }).to_string(),
        None => serde_json::json!({ "duplicate": true }).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connections_leave_the_pool() {
        let buses = Buses::new(
            Arc::new(Guard {
                allow_private: true,
                allow: Vec::new(),
            }),
            Vec::new(),
        );
        let d = Destination::Redis {
            url: "redis://127.0.0.1:1".into(),
            stream: "s".into(),
            max_len: 10,
            credentials: Default::default(),
        };
        let a = buses.slot(&d);
        assert!(
            Arc::ptr_eq(&a, &buses.slot(&d)),
            "one slot per broker and login"
        );
        let mut pool = buses.pool.lock().unwrap();
        let now = Instant::now();
        pool.sweep(now + IDLE / 2);
        assert_eq!(pool.entries.len(), 1, "kept while in use");
        pool.sweep(now + IDLE + Duration::from_secs(1));
        assert!(pool.entries.is_empty(), "closed once idle");
    }

    #[test]
    fn an_over_long_amqp_short_string_is_a_refused_attempt_not_a_panic() {
        let long = "a".repeat(256);
        let f = short("the content type", &long).unwrap_err();
        assert_eq!(f.outcome, Outcome::Refused);
        assert!(f.error.contains("255 bytes"), "{}", f.error);
        assert_eq!(short("x", &"a".repeat(255)).unwrap().as_str().len(), 255);
    }
}
