//! A subscription's destination as the API takes it: an HTTP URL (the
//! default) or a broker — NATS JetStream, AMQP 0-9-1 (RabbitMQ), a Redis
//! stream. Pure: it checks the shape of what was given and splits a
//! broker URL's credentials off (kept sealed in the record, never shown);
//! the egress guard checks the broker's address at each connection
//! (`deliver::bus`), as it does an HTTP endpoint's at each attempt.

use percent_encoding::percent_decode_str;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::store::{Credentials, Destination};

/// Where deliveries go: `{"type": "http", "url"}` (what `url` alone
/// means), `{"type": "nats", "url": "nats://…", "subject"}`,
/// `{"type": "amqp", "url": "amqp://…/vhost", "exchange", "routing_key"}`,
/// `{"type": "redis", "url": "redis://…", "stream", "max_len"?}`. A
/// broker URL may carry credentials (`user:password@`, or a NATS token as
/// `token@`): they are stored sealed and never shown again; a changed
/// destination whose URL has none keeps those of the same broker.
#[derive(Clone, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum DestinationInput {
    Http {
        url: String,
    },
    Nats {
        url: String,
        subject: String,
    },
    Amqp {
        url: String,
        /// `""` (the default exchange, where the routing key names a queue).
        #[serde(default)]
        exchange: String,
        routing_key: String,
    },
    Redis {
        url: String,
        stream: String,
        /// The stream is trimmed to about this many entries (default
        /// 100000, at most 10000000).
        max_len: Option<u64>,
    },
    /// `wasmhook listen`: the deliveries go to a developer's CLI connected
    /// to this server, which forwards them to a local URL. The
    /// subscription is deleted once no CLI has been connected for
    /// `expire_after_secs` (default 60, 1 to 86400).
    Listen {
        expire_after_secs: Option<u64>,
    },
}

impl std::fmt::Debug for DestinationInput {
    /// Never the URL: it may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            DestinationInput::Http { .. } => "http",
            DestinationInput::Nats { .. } => "nats",
            DestinationInput::Amqp { .. } => "amqp",
            DestinationInput::Redis { .. } => "redis",
            DestinationInput::Listen { .. } => "listen",
        };
        write!(f, "DestinationInput({kind}, ..)")
    }
}

/// The longest a stream may be kept at.
const MAX_STREAM_LEN: u64 = 10_000_000;
const DEFAULT_STREAM_LEN: u64 = 100_000;
/// How long a listen subscription outlives its CLI's connection.
const DEFAULT_LISTEN_EXPIRY: u64 = 60;
const MAX_LISTEN_EXPIRY: u64 = 86_400;

/// What a destination input becomes: an HTTP URL, or a broker.
#[derive(Debug)]
pub enum Resolved {
    Http(String),
    /// The broker, and the URL shown for it (without credentials).
    Broker(Destination),
}

impl DestinationInput {
    /// Checks the input and splits its credentials off; `previous`: the
    /// subscription's current broker, whose credentials a URL without any
    /// keeps when it names the same broker. The error names the field.
    pub fn resolve(self, previous: Option<&Destination>) -> Result<Resolved, String> {
        let (kind, url) = match &self {
            DestinationInput::Http { url } => return check_http(url).map(Resolved::Http),
            DestinationInput::Nats { url, .. } => ("nats", url),
            DestinationInput::Amqp { url, .. } => ("amqp", url),
            DestinationInput::Redis { url, .. } => ("redis", url),
            DestinationInput::Listen { expire_after_secs } => {
                let expire_after_secs = expire_after_secs.unwrap_or(DEFAULT_LISTEN_EXPIRY);
                if !(1..=MAX_LISTEN_EXPIRY).contains(&expire_after_secs) {
                    return Err(format!(
                        "destination.expire_after_secs must be 1 to {MAX_LISTEN_EXPIRY}"
                    ));
                }
                return Ok(Resolved::Broker(Destination::Listen { expire_after_secs }));
            }
        };
        let (mut shown, mut credentials) = split_url(kind, url)?;
        // The URL as shown (no password, maybe the user) keeps the stored
        // password of the same broker and user.
        if credentials.password.is_none()
            && let Some(prev) = previous
            && prev.kind() == kind
            && same_broker(prev.url(), &shown)
            && credentials
                .username
                .as_ref()
                .is_none_or(|u| prev.credentials().username.as_ref() == Some(u))
        {
            credentials = prev.credentials().clone();
            if let (Some(user), Ok(mut u)) = (&credentials.username, reqwest::Url::parse(&shown))
                && kind != "nats"
                && u.set_username(user).is_ok()
            {
                shown = u.to_string();
            }
        }
        let destination = match self {
            DestinationInput::Http { .. } | DestinationInput::Listen { .. } => {
                unreachable!("returned above")
            }
            DestinationInput::Nats { subject, .. } => {
                check_subject(&subject)?;
                Destination::Nats {
                    url: shown,
                    subject,
                    credentials,
                }
            }
            DestinationInput::Amqp {
                exchange,
                routing_key,
                ..
            } => {
                check_amqp_names(&exchange, &routing_key)?;
                if credentials.username.is_none() || credentials.password.is_none() {
                    // Never the client's guest/guest default.
                    return Err(
                        "destination.url: an amqp URL needs user:password@ (RabbitMQ has no anonymous login)"
                            .into(),
                    );
                }
                Destination::Amqp {
                    url: shown,
                    exchange,
                    routing_key,
                    credentials,
                }
            }
            DestinationInput::Redis {
                stream, max_len, ..
            } => {
                if stream.is_empty()
                    || stream.len() > 256
                    || stream.chars().any(|c| c.is_control() || c.is_whitespace())
                {
                    return Err(
                        "destination.stream: 1 to 256 bytes, no spaces or control characters"
                            .into(),
                    );
                }
                let max_len = max_len.unwrap_or(DEFAULT_STREAM_LEN);
                if !(1..=MAX_STREAM_LEN).contains(&max_len) {
                    return Err(format!("destination.max_len must be 1 to {MAX_STREAM_LEN}"));
                }
                Destination::Redis {
                    url: shown,
                    stream,
                    max_len,
                    credentials,
                }
            }
        };
        Ok(Resolved::Broker(destination))
    }
}

/// An HTTP(S) URL with a host.
pub fn check_http(url: &str) -> Result<String, String> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            Ok(url.to_string())
        }
        _ => Err(format!("url {url:?} is not an http(s) URL")),
    }
}

/// The schemes of each broker: plain, then TLS.
fn schemes(kind: &str) -> [&'static str; 2] {
    match kind {
        "nats" => ["nats", "tls"],
        "amqp" => ["amqp", "amqps"],
        _ => ["redis", "rediss"],
    }
}

/// A broker URL's default port.
pub fn default_port(scheme: &str) -> u16 {
    match scheme {
        "nats" | "tls" => 4222,
        "amqp" => 5672,
        "amqps" => 5671,
        _ => 6379,
    }
}

/// The URL as shown and stored (no password; a NATS token is no user
/// name either), and its credentials, percent-decoded.
fn split_url(kind: &str, text: &str) -> Result<(String, Credentials), String> {
    let allowed = schemes(kind);
    let bad = || {
        format!(
            "destination.url must be a {} URL with a host",
            allowed
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or ")
        )
    };
    // ASCII only: an internationalised host is given in its punycode form,
    // and no bidi or invisible character can disguise the broker's name.
    if text.len() > 2048 || !text.is_ascii() || text.chars().any(|c| c.is_ascii_control()) {
        return Err(bad());
    }
    let mut url = reqwest::Url::parse(text).map_err(|_| bad())?;
    if !allowed.contains(&url.scheme()) || url.host_str().is_none_or(str::is_empty) {
        return Err(bad());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("destination.url: no query or fragment (the settings are fields)".into());
    }
    let path = url.path().to_string();
    match kind {
        "nats" if !(path.is_empty() || path == "/") => {
            return Err("destination.url: a NATS URL has no path".into());
        }
        "redis" => {
            let db = path.trim_start_matches('/');
            if !db.is_empty() && db.parse::<u16>().is_err() {
                return Err(
                    "destination.url: a Redis URL's path is its database number (/0)".into(),
                );
            }
        }
        _ => {}
    }
    let decode = |s: &str| -> Result<Option<String>, String> {
        if s.is_empty() {
            return Ok(None);
        }
        percent_decode_str(s)
            .decode_utf8()
            .map(|d| Some(d.into_owned()))
            .map_err(|_| "destination.url: the credentials are not UTF-8".to_string())
    };
    let user = decode(url.username())?;
    let password = decode(url.password().unwrap_or(""))?;
    let credentials = match (kind, user, password) {
        // `nats://token@host`: the token is a secret, not a name.
        ("nats", Some(token), None) => Credentials {
            username: None,
            password: Some(token),
        },
        (_, username, password) => Credentials { username, password },
    };
    url.set_password(None).map_err(|_| bad())?;
    // A NATS URL shows no user: `user@` alone would read back as a token.
    if credentials.username.is_none() || kind == "nats" {
        url.set_username("").map_err(|_| bad())?;
    }
    let mut shown = url.to_string();
    // reqwest::Url keeps a bare `/` path; a NATS or Redis URL reads
    // better without it.
    if kind != "amqp" && shown.ends_with('/') && url.path() == "/" {
        shown.pop();
    }
    Ok((shown, credentials))
}

/// Whether two shown URLs name the same broker (scheme, host and port;
/// the user name may be left out of the new one).
fn same_broker(a: &str, b: &str) -> bool {
    let key = |u: &str| {
        reqwest::Url::parse(u).ok().map(|u| {
            (
                u.scheme().to_string(),
                u.host_str().map(str::to_ascii_lowercase),
                u.port_or_known_default()
                    .unwrap_or_else(|| default_port(u.scheme())),
            )
        })
    };
    key(a).is_some() && key(a) == key(b)
}

/// A NATS subject to publish to: dot-separated tokens, no wildcards, and
/// none of the subjects NATS or this cluster keep for themselves.
fn check_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() || subject.len() > 255 {
        return Err("destination.subject: 1 to 255 bytes".into());
    }
    if subject
        .split('.')
        .any(|t| t.is_empty() || t == "*" || t == ">")
        || subject.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "destination.subject {subject:?}: dot-separated tokens, no wildcards or spaces"
        ));
    }
    let lower = subject.to_ascii_lowercase();
    if lower.starts_with('$') || lower.starts_with("_inbox.") || lower.starts_with("wasmhook.") {
        return Err(format!(
            "destination.subject {subject:?} is reserved ($…, _INBOX.…, wasmhook.…)"
        ));
    }
    Ok(())
}

/// An AMQP exchange and routing key: short strings (at most 255 bytes);
/// the default exchange needs a routing key (the queue's name).
fn check_amqp_names(exchange: &str, routing_key: &str) -> Result<(), String> {
    if exchange.len() > 255
        || !exchange
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    {
        return Err(
            "destination.exchange: at most 255 of letters, digits, `-`, `_`, `.`, `:`".into(),
        );
    }
    if routing_key.len() > 255 || routing_key.chars().any(char::is_control) {
        return Err("destination.routing_key: at most 255 bytes, no control characters".into());
    }
    if exchange.is_empty() && routing_key.is_empty() {
        return Err(
            "destination.routing_key is required with the default exchange (it names the queue)"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(v: serde_json::Value, previous: Option<&Destination>) -> Result<Resolved, String> {
        serde_json::from_value::<DestinationInput>(v)
            .map_err(|e| e.to_string())?
            .resolve(previous)
    }

    fn broker(v: serde_json::Value) -> Destination {
        match resolve(v, None).unwrap() {
            Resolved::Broker(d) => d,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn credentials_are_split_off_the_url_and_never_shown() {
        let d = broker(serde_json::json!({
            "type": "amqp", "url": "amqp://app:s%3Acret@rabbit.example:5672/prod",
            "exchange": "events", "routing_key": "crm"
        }));
        assert_eq!(d.url(), "amqp://app@rabbit.example:5672/prod");
        assert_eq!(d.credentials().username.as_deref(), Some("app"));
        assert_eq!(d.credentials().password.as_deref(), Some("s:cret"));
        assert!(!format!("{d:?}").contains("s:cret"));

        let d = broker(serde_json::json!({
            "type": "nats", "url": "nats://t0ken@nats.example", "subject": "crm.leads"
        }));
        assert_eq!(d.url(), "nats://nats.example");
        assert_eq!(d.credentials().username, None);
        assert_eq!(d.credentials().password.as_deref(), Some("t0ken"));

        let d = broker(serde_json::json!({
            "type": "redis", "url": "redis://:pw@redis.example:6380/2", "stream": "hooks"
        }));
        assert_eq!(d.url(), "redis://redis.example:6380/2");
        assert_eq!(d.credentials().password.as_deref(), Some("pw"));
        assert!(matches!(
            d,
            Destination::Redis {
                max_len: 100_000,
                ..
            }
        ));
    }

    #[test]
    fn a_changed_destination_keeps_the_credentials_of_the_same_broker_only() {
        let old = broker(serde_json::json!({
            "type": "nats", "url": "nats://u:p@nats.example:4222", "subject": "a"
        }));
        let same = broker_with(
            serde_json::json!({"type": "nats", "url": "nats://nats.example", "subject": "b"}),
            &old,
        );
        assert_eq!(same.credentials().password.as_deref(), Some("p"));
        assert_eq!(same.credentials().username.as_deref(), Some("u"));
        let as_shown = broker_with(
            serde_json::json!({"type": "nats", "url": same.url(), "subject": "c"}),
            &old,
        );
        assert_eq!(
            as_shown.credentials().password.as_deref(),
            Some("p"),
            "saved back as shown"
        );
        let other_user = broker_with(
            serde_json::json!({"type": "nats", "url": "nats://v@nats.example:4222", "subject": "c"}),
            &old,
        );
        assert_eq!(
            other_user.credentials().password.as_deref(),
            Some("v"),
            "a token, not u's password"
        );
        let other = broker_with(
            serde_json::json!({"type": "nats", "url": "nats://elsewhere.example", "subject": "b"}),
            &old,
        );
        assert_eq!(
            other.credentials().password,
            None,
            "never sent to another host"
        );
    }

    fn broker_with(v: serde_json::Value, previous: &Destination) -> Destination {
        match resolve(v, Some(previous)).unwrap() {
            Resolved::Broker(d) => d,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hostile_and_malformed_destinations_are_refused_naming_the_field() {
        for (input, field) in [
            (
                serde_json::json!({"type": "nats", "url": "http://x", "subject": "a"}),
                "destination.url",
            ),
            (
                serde_json::json!({"type": "nats", "url": "nats://x", "subject": "a.*"}),
                "destination.subject",
            ),
            (
                serde_json::json!({"type": "nats", "url": "nats://x", "subject": "$JS.API.STREAM.DELETE.X"}),
                "reserved",
            ),
            (
                serde_json::json!({"type": "nats", "url": "nats://x", "subject": "wasmhook.log"}),
                "reserved",
            ),
            (
                serde_json::json!({"type": "nats", "url": "nats://x", "subject": "a b"}),
                "destination.subject",
            ),
            (
                serde_json::json!({"type": "nats", "url": "nats://x/path", "subject": "a"}),
                "no path",
            ),
            (
                serde_json::json!({"type": "amqp", "url": "amqp://x", "routing_key": ""}),
                "routing_key",
            ),
            (
                serde_json::json!({"type": "amqp", "url": "amqp://x", "exchange": "a b", "routing_key": "q"}),
                "exchange",
            ),
            (
                serde_json::json!({"type": "redis", "url": "redis://x", "stream": ""}),
                "destination.stream",
            ),
            (
                serde_json::json!({"type": "redis", "url": "redis://x", "stream": "s", "max_len": 0}),
                "max_len",
            ),
            (
                serde_json::json!({"type": "redis", "url": "redis://x/db", "stream": "s"}),
                "database",
            ),
            (
                serde_json::json!({"type": "redis", "url": "redis://x?password=p", "stream": "s"}),
                "query",
            ),
            (
                serde_json::json!({"type": "redis", "url": "redis://\u{202e}x", "stream": "s"}),
                "destination.url",
            ),
            (
                serde_json::json!({"type": "http", "url": "ftp://x"}),
                "http(s)",
            ),
            (
                serde_json::json!({"type": "kafka", "url": "x"}),
                "unknown variant",
            ),
            (
                serde_json::json!({"type": "nats", "url": "nats://x", "subject": "a", "extra": 1}),
                "unknown field",
            ),
        ] {
            let err = resolve(input.clone(), None).unwrap_err();
            assert!(err.contains(field), "{input}: {err}");
        }
    }
}
