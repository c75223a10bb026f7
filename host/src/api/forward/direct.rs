//! Forwarding straight to the holder's API over HTTP, when it advertises
//! one (`cluster.advertise_url`; the lease bucket tells who holds what).
//!
//! Why beside NATS: a request relayed over NATS crosses the NATS servers
//! four times (request and answer, each in and out, and between servers
//! when the two nodes use different ones). Measured with a load balancer
//! that does not know the partitions, that was about 170 µs of NATS CPU
//! per delivery, and a NATS message bounds the body (1 MiB by default).
//! Sent directly, the NATS servers do nothing for it.
//!
//! The request carries [`FORWARDED`], signed with a key every node derives
//! from `server.secrets_key` (the same on every node of a cluster): it
//! names the sender, the node it is for, the client's address (what the
//! holder counts failed authentications by), when it was sent and a
//! random nonce, and the signature covers them with the method, the path
//! and query as sent and the client's `Authorization` (so a header seen on
//! the wire cannot be reused with other credentials to charge failed
//! logins to another address). The holder serves a nonce once
//! ([`first_use`]): a request captured between two nodes cannot be
//! played again, even whole, within the clocks' allowance. A client cannot
//! claim to be a node: an unsigned or wrongly signed header is refused
//! (400), a signed one for another node is answered 421 (its sender
//! learned of the holder before the partition moved); both carry
//! [`REFUSED`], on which the sender goes over NATS instead. The client's
//! own credentials travel as they came: the holder authenticates them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{FORWARD_TIMEOUT, FORWARDED};
use crate::api::error::PARTITION_MOVING;
use crate::cluster::leases::Peer;

/// On an answer: the forwarded request was refused as such, and nothing
/// was done there. Its value says what the sender does: `replayed`, a
/// header already served (its copy may have acted: the client gets a 503
/// and decides); `earlier`, signed before this node could remember it
/// (over NATS this once); anything else, a key, clock or node that
/// disagrees (over NATS, the holder avoided for a while).
pub const REFUSED: &str = "x-wasmhook-forward-refused";
/// How far the sender's and the holder's clocks may be apart.
const SKEW_SECS: u64 = 60;
/// `v1` had no nonce (a whole request could be replayed within
/// [`SKEW_SECS`]): refused, so a node of the older build sends over NATS.
const VERSION: &str = "v2";

/// A forwarded request's header, verified.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub from: String,
    /// The client's address as the node it reached saw it.
    pub peer: Option<SocketAddr>,
    /// When it was signed (Unix seconds) and its nonce: for [`first_use`].
    pub at: u64,
    pub nonce: u64,
}

/// Why a request's [`FORWARDED`] header is not accepted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "the x-wasmhook-forwarded header is not signed by a node of this cluster (it is for the nodes' own use)"
    )]
    Unverified,
    #[error("a forwarded request signed {0} s away from this node's clock (at most {SKEW_SECS} s)")]
    Stale(u64),
    #[error("a request forwarded to node {0}, not to this one")]
    Misdirected(String),
    #[error("a forwarded request already served here (a header is good for one request)")]
    Replayed,
    #[error(
        "a forwarded request signed before this node remembers its headers (it started, or the time is past)"
    )]
    Earlier,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let (status, code, refused) = match self {
            Refused::Misdirected(_) => (
                StatusCode::MISDIRECTED_REQUEST,
                "forwarded_misdirected",
                "1",
            ),
            Refused::Replayed => (StatusCode::BAD_REQUEST, "forwarded_replayed", "replayed"),
            Refused::Earlier => (StatusCode::BAD_REQUEST, "forwarded_unverified", "earlier"),
            _ => (StatusCode::BAD_REQUEST, "forwarded_unverified", "1"),
        };
        let body = serde_json::json!({ "error": { "code": code, "message": self.to_string() } });
        let mut response = (status, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert(REFUSED, HeaderValue::from_static(refused));
        response
    }
}

/// What a forwarded request's signature covers besides its header's
/// fields.
pub struct Signed<'a> {
    pub method: &'a str,
    /// The path and query, as sent.
    pub uri: &'a str,
    /// The client's `Authorization` header (empty: none).
    pub authorization: &'a [u8],
}

impl Signed<'_> {
    fn parts<'a>(&'a self, head: &'a str) -> [&'a [u8]; 7] {
        [
            head.as_bytes(),
            b"\n",
            self.method.as_bytes(),
            b"\n",
            self.uri.as_bytes(),
            b"\n",
            self.authorization,
        ]
    }
}

/// The signed value of [`FORWARDED`] for a request from node `from` to
/// node `to`, at `now` (Unix seconds), with a `nonce` used for nothing
/// else.
pub fn sign(
    key: &[u8; 32],
    from: &str,
    to: &str,
    peer: Option<SocketAddr>,
    (now, nonce): (u64, u64),
    request: &Signed,
) -> String {
    let peer = peer.map_or_else(|| "-".to_string(), |p| p.to_string());
    let head = format!("{VERSION} {from} {to} {peer} {now} {nonce:016x}");
    let mac = crate::sign::hmac(key, &request.parts(&head));
    format!("{head} {}", hex::encode(mac))
}

/// Checks a [`FORWARDED`] value against the cluster's keys (the current
/// one first, then those of a rotation in progress) on node `this`.
pub fn verify(
    value: &[u8],
    keys: &[&[u8; 32]],
    this: &str,
    now: u64,
    request: &Signed,
) -> Result<Verified, Refused> {
    let value = std::str::from_utf8(value).map_err(|_| Refused::Unverified)?;
    let fields: Vec<&str> = value.split(' ').collect();
    let [version, from, to, peer, at, nonce, signature] = fields[..] else {
        return Err(Refused::Unverified);
    };
    let signature = hex::decode(signature).map_err(|_| Refused::Unverified)?;
    let head = format!("{version} {from} {to} {peer} {at} {nonce}");
    let parts = request.parts(&head);
    if version != VERSION
        || !keys
            .iter()
            .any(|key| crate::sign::hmac_matches(*key, &parts, &signature))
    {
        return Err(Refused::Unverified);
    }
    let at: u64 = at.parse().map_err(|_| Refused::Unverified)?;
    if now.abs_diff(at) > SKEW_SECS {
        return Err(Refused::Stale(now.abs_diff(at)));
    }
    if to != this {
        return Err(Refused::Misdirected(to.to_string()));
    }
    let peer = match peer {
        "-" => None,
        text => Some(text.parse().map_err(|_| Refused::Unverified)?),
    };
    let nonce = u64::from_str_radix(nonce, 16).map_err(|_| Refused::Unverified)?;
    Ok(Verified {
        from: from.to_string(),
        peer,
        at,
        nonce,
    })
}

/// The nonces served, by the second they were signed at, from a floor
/// on. A nonce is remembered while its time is within [`SKEW_SECS`] of
/// the clock (after that [`verify`] refuses it as stale), so this holds at
/// most about two minutes of one node's forwarded requests (8 bytes and a
/// table slot each). Only verified headers come here: a client cannot
/// fill it.
///
/// What is below the floor is not remembered, so it is refused
/// ([`Refused::Earlier`]: the sender goes over NATS): headers signed
/// before this process started (the one before may have served them),
/// and those whose second was forgotten meanwhile (a request that read
/// the clock just before another moved the floor, or a clock set back).
/// The floor only rises.
pub struct Nonces(Mutex<Served>);

struct Served {
    floor: u64,
    by_second: std::collections::BTreeMap<u64, std::collections::HashSet<u64>>,
}

impl Nonces {
    /// Remembering from the second after `now` (Unix seconds).
    pub fn starting_at(now: u64) -> Self {
        Nonces(Mutex::new(Served {
            floor: now + 1,
            by_second: Default::default(),
        }))
    }

    /// A verified request is served if it is the first to use its nonce
    /// (and from now on, the only one).
    pub fn first_use(&self, verified: &Verified, now: u64) -> Result<(), Refused> {
        let mut served = self.0.lock().unwrap_or_else(|e| e.into_inner());
        served.floor = served.floor.max(now.saturating_sub(SKEW_SECS));
        if verified.at < served.floor {
            return Err(Refused::Earlier);
        }
        let floor = served.floor;
        while let Some(first) = served.by_second.first_entry() {
            if *first.key() >= floor {
                break;
            }
            first.remove();
        }
        if served
            .by_second
            .entry(verified.at)
            .or_default()
            .insert(verified.nonce)
        {
            Ok(())
        } else {
            Err(Refused::Replayed)
        }
    }
}

fn served() -> &'static Nonces {
    static SERVED: OnceLock<Nonces> = OnceLock::new();
    SERVED.get_or_init(|| Nonces::starting_at(unix_now()))
}

/// Starts remembering this node's forwarded headers: called when the
/// node starts serving, so that what it refuses as [`Refused::Earlier`]
/// is what was signed before.
pub fn remember_from_now() {
    served();
}

/// This node's [`Nonces::first_use`].
pub fn first_use(verified: &Verified, now: u64) -> Result<(), Refused> {
    served().first_use(verified, now)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What became of a request sent to its holder directly.
pub enum Direct {
    Answered(Response),
    /// Not reached, or refused as a forwarded request: nothing was done
    /// there, so the request may go over NATS instead.
    NotThere,
    /// The node no longer holds the partition (it moved since the last
    /// lease round): nothing was done there either.
    Moved,
    /// Sent, but no answer came (the holder may have acted on it).
    NoAnswer,
}

/// The one client for the nodes' own traffic: never through the delivery
/// proxy (the nodes reach each other directly), no redirects, connections
/// kept for the next request; `https://` peers checked against the system's
/// roots and the cluster's CA ([`trust`]).
fn client() -> &'static reqwest::Client {
    CLIENT.get_or_init(|| build_client(None))
}

static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();

fn build_client(ca: Option<reqwest::Certificate>) -> reqwest::Client {
    crate::util::install_tls_provider();
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(FORWARD_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    if let Some(ca) = ca {
        builder = builder.add_root_certificate(ca);
    }
    builder
        .build()
        .expect("a client with a checked certificate builds")
}

/// Trusts `ca` (the cluster's `cluster.tls_ca_file`, PEM) for peers
/// advertised at `https://` URLs; called once at start, before any
/// request is forwarded.
pub fn trust(ca_pem: &[u8]) -> Result<(), String> {
    let ca = reqwest::Certificate::from_pem(ca_pem).map_err(|e| e.to_string())?;
    let _ = CLIENT.set(build_client(Some(ca)));
    Ok(())
}

/// Nodes not to try directly until a time: one that could not be reached
/// (each try would wait out a connect timeout) or that refused a request
/// as forwarded (a key or a clock that disagrees): over NATS meanwhile.
fn avoided() -> &'static Mutex<HashMap<String, Instant>> {
    static AVOIDED: OnceLock<Mutex<HashMap<String, Instant>>> = OnceLock::new();
    AVOIDED.get_or_init(Mutex::default)
}

fn avoid(node: &str, for_: Duration, why: &str) {
    let mut avoided = avoided().lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    let fresh = avoided.get(node).is_none_or(|until| *until <= now);
    avoided.insert(node.to_string(), now + for_);
    if fresh {
        tracing::warn!(
            node,
            why,
            for_secs = for_.as_secs(),
            "forwarding to a node over NATS instead of directly"
        );
    }
}

fn is_avoided(node: &str) -> bool {
    avoided()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(node)
        .is_some_and(|until| *until > Instant::now())
}

/// Headers that belong to one connection, not to the request or answer
/// (a request's `Host` is kept: the holder builds links from it).
fn hop_by_hop(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    ) || name == FORWARDED
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !hop_by_hop(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// Sends the request (`parts` and its whole `body`) to `holder`, signed
/// as from node `this`.
pub async fn send(
    holder: &Peer,
    this: &str,
    key: &[u8; 32],
    parts: &Parts,
    body: Bytes,
    peer: Option<SocketAddr>,
) -> Direct {
    if is_avoided(&holder.node) {
        return Direct::NotThere;
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    // Signed as it goes out: the URL as parsed is what the holder reads.
    let Ok(url) = reqwest::Url::parse(&format!("{}{path}", holder.url)) else {
        return Direct::NotThere;
    };
    let sent_path = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    };
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .map_or(&[][..], HeaderValue::as_bytes);
    let signed = sign(
        key,
        this,
        &holder.node,
        peer,
        (unix_now(), rand::random()),
        &Signed {
            method: parts.method.as_str(),
            uri: &sent_path,
            authorization,
        },
    );
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 1);
    copy_headers(&parts.headers, &mut headers);
    let Ok(signed) = HeaderValue::from_str(&signed) else {
        return Direct::NotThere;
    };
    headers.insert(FORWARDED, signed);
    let sent = client()
        .request(parts.method.clone(), url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(e) if e.is_connect() || e.is_builder() => {
            avoid(&holder.node, Duration::from_secs(5), "not reached");
            tracing::debug!(holder = %holder.node, error = %e, "forwarding directly");
            return Direct::NotThere;
        }
        Err(e) => {
            tracing::debug!(holder = %holder.node, error = %e, "forwarding directly: no answer");
            return Direct::NoAnswer;
        }
    };
    match answer.headers().get(REFUSED).map(HeaderValue::as_bytes) {
        // A copy of this header was served there (the wire between the
        // nodes is not private, or something on it sent it again): the
        // request may have been acted on, so it is not sent again.
        Some(b"replayed") => return Direct::NoAnswer,
        // Signed before the holder started: over NATS this once.
        Some(b"earlier") => return Direct::NotThere,
        Some(_) => {
            avoid(
                &holder.node,
                Duration::from_secs(30),
                "it refused a forwarded request",
            );
            return Direct::NotThere;
        }
        None => {}
    }
    // The holder the bucket named gave the partition up since (it moved):
    // it stored nothing, and NATS reaches whoever holds it now.
    if answer.headers().contains_key(PARTITION_MOVING) {
        return Direct::Moved;
    }
    let status = answer.status();
    let mut response_headers = HeaderMap::with_capacity(answer.headers().len());
    copy_headers(answer.headers(), &mut response_headers);
    let Ok(body) = answer.bytes().await else {
        return Direct::NoAnswer;
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = response_headers;
    Direct::Answered(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const OTHER: [u8; 32] = [8; 32];
    const REQUEST: Signed = Signed {
        method: "POST",
        uri: "/v1/events?x=1",
        authorization: b"Bearer whk_1",
    };

    fn signed(now: u64) -> String {
        let peer = "203.0.113.9:4711".parse().ok();
        sign(&KEY, "node-a", "node-b", peer, (now, 0xabc), &REQUEST)
    }

    #[test]
    fn a_signed_request_is_verified_by_its_node_only() {
        let now = 1_800_000_000;
        let value = signed(now);
        let ok = verify(
            value.as_bytes(),
            &[&OTHER, &KEY],
            "node-b",
            now + 5,
            &REQUEST,
        );
        assert_eq!(
            ok,
            Ok(Verified {
                from: "node-a".into(),
                peer: "203.0.113.9:4711".parse().ok(),
                at: now,
                nonce: 0xabc,
            })
        );
        // For another node: misdirected (its sender goes over NATS).
        assert_eq!(
            verify(value.as_bytes(), &[&KEY], "node-c", now, &REQUEST),
            Err(Refused::Misdirected("node-b".into()))
        );
        // Too old or from the future: refused.
        assert_eq!(
            verify(value.as_bytes(), &[&KEY], "node-b", now + 61, &REQUEST),
            Err(Refused::Stale(61))
        );
        assert!(verify(value.as_bytes(), &[&KEY], "node-b", now - 61, &REQUEST).is_err());
    }

    #[test]
    fn a_forged_altered_or_reused_header_is_refused() {
        let now = 1_800_000_000;
        let value = signed(now);
        let check =
            |v: &str, request: &Signed| verify(v.as_bytes(), &[&KEY], "node-b", now, request);
        // Another key.
        let forged = sign(&OTHER, "node-a", "node-b", None, (now, 1), &REQUEST);
        assert_eq!(check(&forged, &REQUEST), Err(Refused::Unverified));
        // Reused for another method, path, or client credentials.
        for other in [
            Signed {
                method: "DELETE",
                ..REQUEST
            },
            Signed {
                uri: "/v1/tenants/t_1",
                ..REQUEST
            },
            Signed {
                uri: "/v1/events?x=2",
                ..REQUEST
            },
            Signed {
                authorization: b"Bearer whk_2",
                ..REQUEST
            },
            Signed {
                authorization: b"",
                ..REQUEST
            },
        ] {
            assert_eq!(check(&value, &other), Err(Refused::Unverified));
        }
        // Another client address claimed, a field dropped, garbage, odd
        // unicode, an empty value.
        let spoofed = value.replace("203.0.113.9:4711", "198.51.100.1:1");
        assert_eq!(check(&spoofed, &REQUEST), Err(Refused::Unverified));
        let short: Vec<&str> = value.split(' ').take(6).collect();
        assert_eq!(check(&short.join(" "), &REQUEST), Err(Refused::Unverified));
        // Another nonce under the same signature.
        let renonced = value.replace(" 0000000000000abc ", " 0000000000000abd ");
        assert_ne!(renonced, value);
        assert_eq!(check(&renonced, &REQUEST), Err(Refused::Unverified));
        // The older version, without a nonce, even signed with the key.
        let head = format!("v1 node-a node-b - {now}");
        let old = format!(
            "{head} {}",
            hex::encode(crate::sign::hmac(&KEY, &REQUEST.parts(&head)))
        );
        assert_eq!(check(&old, &REQUEST), Err(Refused::Unverified));
        // Signed with the key but another version, or a nonce that is not
        // hex: the signature holds, the fields do not.
        for head in [
            format!("v3 node-a node-b - {now} 0000000000000001"),
            format!("v2 node-a node-b - {now} nonce"),
            format!("v2 node-a node-b - {now} é"),
        ] {
            let value = format!(
                "{head} {}",
                hex::encode(crate::sign::hmac(&KEY, &REQUEST.parts(&head)))
            );
            assert_eq!(check(&value, &REQUEST), Err(Refused::Unverified), "{head}");
        }
        for junk in [
            "",
            "v2",
            "v2 a b - 1 0 zz",
            "v2 é ü - 1 0 00",
            "v3 a b - 1 0 00",
            "v2 a b - 1 é 00",
        ] {
            assert_eq!(check(junk, &REQUEST), Err(Refused::Unverified), "{junk:?}");
        }
        assert_eq!(
            verify(&[0xff, 0xfe], &[&KEY], "node-b", now, &REQUEST),
            Err(Refused::Unverified)
        );
    }

    #[test]
    fn a_nonce_is_served_once_while_its_time_verifies() {
        let now = 1_800_000_000;
        let nonces = Nonces::starting_at(now - 1);
        let request = |at, nonce| Verified {
            from: "node-a".into(),
            peer: None,
            at,
            nonce,
        };
        assert_eq!(nonces.first_use(&request(now, 1), now), Ok(()));
        assert_eq!(
            nonces.first_use(&request(now, 1), now + 1),
            Err(Refused::Replayed)
        );
        assert_eq!(nonces.first_use(&request(now, 2), now + 1), Ok(()));
        // The same nonce at another time is another request.
        assert_eq!(nonces.first_use(&request(now + 1, 1), now + 1), Ok(()));
        // Up to the last second it verifies, it is still remembered.
        assert_eq!(
            nonces.first_use(&request(now, 1), now + SKEW_SECS),
            Err(Refused::Replayed)
        );
        // Then forgotten, and refused (verify refuses it as stale by then;
        // a request that read the clock before the floor moved is
        // refused here).
        let later = now + 2 * SKEW_SECS + 1;
        assert_eq!(
            nonces.first_use(&request(now + SKEW_SECS + 1, 9), later),
            Ok(())
        );
        assert_eq!(
            nonces.first_use(&request(now, 7), now + 1),
            Err(Refused::Earlier),
            "below the floor, whatever the caller's clock said"
        );
        assert_eq!(nonces.0.lock().unwrap().by_second.len(), 1);
        // A clock set back does not lower the floor.
        assert_eq!(
            nonces.first_use(&request(now + 1, 1), now),
            Err(Refused::Earlier)
        );
    }

    #[test]
    fn what_was_signed_before_a_start_is_refused_as_earlier() {
        let started = 1_800_000_000;
        let nonces = Nonces::starting_at(started);
        let request = |at| Verified {
            from: "node-a".into(),
            peer: None,
            at,
            nonce: 1,
        };
        // The process before this one may have served these.
        for at in [started - 30, started] {
            assert_eq!(
                nonces.first_use(&request(at), started + 1),
                Err(Refused::Earlier)
            );
        }
        assert_eq!(nonces.first_use(&request(started + 1), started + 1), Ok(()));
    }

    #[test]
    fn a_refusal_says_so_to_its_sender() {
        let response = Refused::Unverified.into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(response.headers().contains_key(REFUSED));
        let response = Refused::Replayed.into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[REFUSED], "replayed");
        let response = Refused::Earlier.into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[REFUSED], "earlier");
        let response = Refused::Misdirected("n".into()).into_response();
        assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
        assert!(response.headers().contains_key(REFUSED));
    }

    /// Through a real holder (an axum server on loopback): the request
    /// arrives signed for what was sent (a path reqwest re-encodes, the
    /// client's Host and credentials kept), the answer comes back whole,
    /// and a holder that refuses or has moved on sends it over NATS.
    #[tokio::test]
    async fn a_request_reaches_its_holder_as_signed() {
        use axum::extract::Request;
        let app = axum::Router::new().fallback(|request: Request| async move {
            let uri = request.uri().path_and_query().unwrap().as_str().to_string();
            let headers = request.headers();
            let signed = Signed {
                method: request.method().as_str(),
                uri: &uri,
                authorization: headers
                    .get("authorization")
                    .map_or(&[][..], |v| v.as_bytes()),
            };
            let value = headers.get(FORWARDED).unwrap().as_bytes();
            let verified = verify(value, &[&KEY], "holder", unix_now(), &signed);
            let host = headers.get("host").unwrap().to_str().unwrap().to_string();
            match (uri.as_str(), verified) {
                ("/replayed", Ok(_)) => Refused::Replayed.into_response(),
                ("/earlier", Ok(_)) => Refused::Earlier.into_response(),
                ("/moved", _) => {
                    let mut r = StatusCode::SERVICE_UNAVAILABLE.into_response();
                    r.headers_mut()
                        .insert(PARTITION_MOVING, HeaderValue::from_static("1"));
                    r
                }
                (_, Ok(v)) => {
                    let mut r =
                        (StatusCode::CREATED, format!("{uri} {host} {:?}", v.peer)).into_response();
                    r.headers_mut()
                        .append("set-cookie", HeaderValue::from_static("a=1"));
                    r.headers_mut()
                        .append("set-cookie", HeaderValue::from_static("b=2"));
                    r
                }
                (_, Err(e)) => e.into_response(),
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let holder = Peer {
            node: "holder".into(),
            url: format!("http://{addr}"),
        };
        let request = |uri: &str| {
            let (parts, ()) = axum::http::Request::builder()
                .method("POST")
                .uri(uri)
                .header("host", "hooks.example.com")
                .header("authorization", "Bearer whk_1")
                .header(FORWARDED, "forged by the client")
                .body(())
                .unwrap()
                .into_parts();
            parts
        };
        let peer = "203.0.113.9:4711".parse().ok();
        let parts = request("/in/src_1?q=it's%20here");
        let Direct::Answered(response) =
            send(&holder, "me", &KEY, &parts, Bytes::from_static(b"{}"), peer).await
        else {
            panic!("not answered");
        };
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers().get_all("set-cookie").iter().count(), 2);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            body.starts_with("/in/src_1?q=it%27s%20here hooks.example.com Some(203.0.113.9:4711)"),
            "{body}"
        );

        let parts = request("/moved");
        assert!(matches!(
            send(&holder, "me", &KEY, &parts, Bytes::new(), peer).await,
            Direct::Moved
        ));
        // Served there already (a copy on the wire was first): not sent
        // again either way, the client decides; signed before the holder
        // started: over NATS this once. Neither avoids the holder.
        let parts = request("/replayed");
        assert!(matches!(
            send(&holder, "me", &KEY, &parts, Bytes::new(), peer).await,
            Direct::NoAnswer
        ));
        let parts = request("/earlier");
        assert!(matches!(
            send(&holder, "me", &KEY, &parts, Bytes::new(), peer).await,
            Direct::NotThere
        ));
        assert!(!is_avoided("holder"));
        // Signed with a key the holder does not know: refused, and the
        // holder is then avoided for a while (over NATS meanwhile).
        let parts = request("/elsewhere");
        assert!(matches!(
            send(&holder, "me", &OTHER, &parts, Bytes::new(), peer).await,
            Direct::NotThere
        ));
        assert!(is_avoided("holder"));
        // Nothing listening: not there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let gone = Peer {
            node: "gone".into(),
            url: format!("http://127.0.0.1:{port}"),
        };
        assert!(matches!(
            send(&gone, "me", &KEY, &parts, Bytes::new(), peer).await,
            Direct::NotThere
        ));
        assert!(is_avoided("gone"));
    }
}
