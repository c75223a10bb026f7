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
//! holder counts failed authentications by) and when it was sent, and the
//! signature covers them with the method and the URI. A client cannot
//! claim to be a node: an unsigned or wrongly signed header is refused
//! (400), a signed one for another node is answered 421 (its sender
//! learned of the holder before the partition moved); both carry
//! [`REFUSED`], on which the sender goes over NATS instead. The client's
//! own credentials travel as they came: the holder authenticates them.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{FORWARD_TIMEOUT, FORWARDED};
use crate::cluster::leases::Peer;

/// On an answer: the forwarded request was refused as such (not this
/// node's, or not verified); its sender goes over NATS instead.
pub const REFUSED: &str = "x-wasmhook-forward-refused";
/// How far the sender's and the holder's clocks may be apart.
const SKEW_SECS: u64 = 60;
const VERSION: &str = "v1";

/// A forwarded request's header, verified.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub from: String,
    /// The client's address as the node it reached saw it.
    pub peer: Option<SocketAddr>,
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
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let (status, code) = match self {
            Refused::Misdirected(_) => (StatusCode::MISDIRECTED_REQUEST, "forwarded_misdirected"),
            _ => (StatusCode::BAD_REQUEST, "forwarded_unverified"),
        };
        let body = serde_json::json!({ "error": { "code": code, "message": self.to_string() } });
        let mut response = (status, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert(REFUSED, HeaderValue::from_static("1"));
        response
    }
}

/// The signed value of [`FORWARDED`] for a request from node `from` to
/// node `to`, at `now` (Unix seconds).
pub fn sign(
    key: &[u8; 32],
    from: &str,
    to: &str,
    peer: Option<SocketAddr>,
    now: u64,
    method: &str,
    uri: &str,
) -> String {
    let peer = peer.map_or_else(|| "-".to_string(), |p| p.to_string());
    let head = format!("{VERSION} {from} {to} {peer} {now}");
    let mac = crate::sign::hmac(
        key,
        &[
            head.as_bytes(),
            b"\n",
            method.as_bytes(),
            b"\n",
            uri.as_bytes(),
        ],
    );
    format!("{head} {}", hex::encode(mac))
}

/// Checks a [`FORWARDED`] value against the cluster's keys (the current
/// one first, then those of a rotation in progress) on node `this`.
pub fn verify(
    value: &[u8],
    keys: &[&[u8; 32]],
    this: &str,
    now: u64,
    method: &str,
    uri: &str,
) -> Result<Verified, Refused> {
    let value = std::str::from_utf8(value).map_err(|_| Refused::Unverified)?;
    let fields: Vec<&str> = value.split(' ').collect();
    let [version, from, to, peer, at, signature] = fields[..] else {
        return Err(Refused::Unverified);
    };
    let signature = hex::decode(signature).map_err(|_| Refused::Unverified)?;
    let head = format!("{version} {from} {to} {peer} {at}");
    let parts: [&[u8]; 5] = [
        head.as_bytes(),
        b"\n",
        method.as_bytes(),
        b"\n",
        uri.as_bytes(),
    ];
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
    Ok(Verified {
        from: from.to_string(),
        peer,
    })
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What became of a request sent to its holder directly.
pub enum Direct {
    Answered(Response),
    /// Not reached, or refused as a forwarded request, or the holder no
    /// longer holds the partition: nothing was done there, so the request
    /// may go over NATS instead.
    NotThere,
    /// Sent, but no answer came (the holder may have acted on it).
    NoAnswer,
}

/// The one client for the nodes' own traffic: never through the delivery
/// proxy (the nodes reach each other directly), no redirects, connections
/// kept for the next request.
fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        crate::util::install_tls_provider();
        reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FORWARD_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .build()
            .expect("a client without TLS settings of its own builds")
    })
}

/// Headers that belong to one connection, not to the request or answer.
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
            | "host"
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
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let signed = sign(
        key,
        this,
        &holder.node,
        peer,
        unix_now(),
        parts.method.as_str(),
        &path,
    );
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 1);
    copy_headers(&parts.headers, &mut headers);
    let Ok(signed) = HeaderValue::from_str(&signed) else {
        return Direct::NotThere;
    };
    headers.insert(FORWARDED, signed);
    let sent = client()
        .request(parts.method.clone(), format!("{}{path}", holder.url))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(e) if e.is_connect() || e.is_builder() => {
            tracing::debug!(holder = %holder.node, error = %e, "forwarding directly; over NATS instead");
            return Direct::NotThere;
        }
        Err(e) => {
            tracing::debug!(holder = %holder.node, error = %e, "forwarding directly: no answer");
            return Direct::NoAnswer;
        }
    };
    let status = answer.status();
    let refused = answer.headers().contains_key(REFUSED);
    let mut response_headers = HeaderMap::with_capacity(answer.headers().len());
    copy_headers(answer.headers(), &mut response_headers);
    let Ok(body) = answer.bytes().await else {
        return Direct::NoAnswer;
    };
    // The holder the bucket named gave the partition up since (it moved):
    // it stored nothing, and NATS reaches whoever holds it now.
    let moved = status == StatusCode::SERVICE_UNAVAILABLE && says_partition_moving(&body);
    if refused || moved {
        return Direct::NotThere;
    }
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = response_headers;
    Direct::Answered(response)
}

/// Whether an answer's body is the store's "partition moving" refusal
/// (in whichever error shape the route answers: its code is in it).
fn says_partition_moving(body: &[u8]) -> bool {
    body.windows(b"partition_moving".len())
        .any(|w| w == b"partition_moving")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const OTHER: [u8; 32] = [8; 32];

    fn signed(now: u64) -> String {
        let peer = "203.0.113.9:4711".parse().ok();
        sign(
            &KEY,
            "node-a",
            "node-b",
            peer,
            now,
            "POST",
            "/v1/events?x=1",
        )
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
            "POST",
            "/v1/events?x=1",
        );
        assert_eq!(
            ok,
            Ok(Verified {
                from: "node-a".into(),
                peer: "203.0.113.9:4711".parse().ok()
            })
        );
        // For another node: misdirected (its sender goes over NATS).
        assert_eq!(
            verify(
                value.as_bytes(),
                &[&KEY],
                "node-c",
                now,
                "POST",
                "/v1/events?x=1"
            ),
            Err(Refused::Misdirected("node-b".into()))
        );
        // Too old or from the future: refused.
        assert_eq!(
            verify(
                value.as_bytes(),
                &[&KEY],
                "node-b",
                now + 61,
                "POST",
                "/v1/events?x=1"
            ),
            Err(Refused::Stale(61))
        );
        assert!(
            verify(
                value.as_bytes(),
                &[&KEY],
                "node-b",
                now - 61,
                "POST",
                "/v1/events?x=1"
            )
            .is_err()
        );
    }

    #[test]
    fn a_forged_or_altered_header_is_refused() {
        let now = 1_800_000_000;
        let value = signed(now);
        let check = |v: &str, method: &str, uri: &str| {
            verify(v.as_bytes(), &[&KEY], "node-b", now, method, uri)
        };
        // Another key, another method, another URI.
        let forged = sign(&OTHER, "node-a", "node-b", None, now, "POST", "/v1/events");
        assert_eq!(
            check(&forged, "POST", "/v1/events"),
            Err(Refused::Unverified)
        );
        assert_eq!(
            check(&value, "DELETE", "/v1/events?x=1"),
            Err(Refused::Unverified)
        );
        assert_eq!(
            check(&value, "POST", "/v1/tenants/t_1"),
            Err(Refused::Unverified)
        );
        // Another client address claimed, a field dropped, garbage, odd
        // unicode, an empty value.
        let spoofed = value.replace("203.0.113.9:4711", "198.51.100.1:1");
        assert_eq!(
            check(&spoofed, "POST", "/v1/events?x=1"),
            Err(Refused::Unverified)
        );
        let short: Vec<&str> = value.split(' ').take(5).collect();
        assert_eq!(
            check(&short.join(" "), "POST", "/v1/events?x=1"),
            Err(Refused::Unverified)
        );
        for junk in ["", "v1", "v1 a b - 1 zz", "v1 é ü - 1 00", "v2 a b - 1 00"] {
            assert_eq!(
                check(junk, "POST", "/"),
                Err(Refused::Unverified),
                "{junk:?}"
            );
        }
        assert_eq!(
            verify(&[0xff, 0xfe], &[&KEY], "node-b", now, "POST", "/"),
            Err(Refused::Unverified)
        );
    }

    #[test]
    fn a_refusal_says_so_to_its_sender() {
        let response = Refused::Unverified.into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(response.headers().contains_key(REFUSED));
        let response = Refused::Misdirected("n".into()).into_response();
        assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
        assert!(response.headers().contains_key(REFUSED));
    }

    #[test]
    fn a_moving_partitions_answer_is_told_apart() {
        assert!(says_partition_moving(
            br#"{"error":{"code":"partition_moving"}}"#
        ));
        assert!(!says_partition_moving(
            br#"{"error":{"code":"storage_unavailable"}}"#
        ));
    }
}
