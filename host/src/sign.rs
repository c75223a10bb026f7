//! Signing: pure functions from (scheme, secrets, ids, timestamp, body) to
//! the headers a receiver checks. A fresh timestamp is passed per attempt;
//! the body is signed exactly as it is sent.
//!
//! Three schemes, chosen per subscription:
//! - `standard-webhooks` (default): `webhook-id`, `webhook-timestamp`,
//!   `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, the
//!   key being the base64 part of a `whsec_…` secret. During a secret rotation
//!   the old secret signs too (space-separated signatures), as the spec says.
//! - `timestamped-hex` (Hello Client): `X-Webhook-Signature:
//!   t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`.
//! - `body-hex` (onWebChat, oHallo): hex HMAC-SHA256 of the body in a
//!   configurable header (default `X-OWC-Signature`), plus event-type and
//!   delivery-id headers.
//!
//! For the two hex schemes the HMAC key is the secret string exactly as the
//! subscription shows it: that is what those platforms' receivers pass to
//! their HMAC (`crypto.createHmac('sha256', webhookSigningKey)`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How a subscription's requests are signed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scheme", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Scheme {
    #[default]
    StandardWebhooks,
    TimestampedHex {
        #[serde(default = "default_timestamped_header")]
        header: String,
    },
    BodyHex {
        #[serde(default = "default_body_header")]
        header: String,
        #[serde(default = "default_event_header")]
        event_header: String,
        #[serde(default = "default_delivery_header")]
        delivery_header: String,
    },
    /// As Chatwoot ≥ 4.11.2 signs its webhooks (`lib/webhooks/trigger.rb`):
    /// `X-Chatwoot-Signature: sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">`,
    /// `X-Chatwoot-Timestamp`, and `X-Chatwoot-Delivery` (the delivery id,
    /// stable across retries).
    Chatwoot,
    /// Svix's own form of Standard Webhooks (what Svix's libraries and
    /// existing Svix receivers verify): the same signatures under
    /// `svix-id`, `svix-timestamp` and `svix-signature`, and the body is
    /// the event's `data` alone (a Svix message's payload, as sent), not
    /// the envelope. Endpoints made through the Svix-compatible API sign
    /// this way.
    Svix,
}

/// Header names HTTP itself owns in a request wasmhook sends: `Host`, the
/// framing (`Content-Length`, `Transfer-Encoding`), the body's type, and
/// the hop-by-hop headers. Neither a plugin nor a signature may set them.
pub const HTTP_OWNED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "proxy-authorization",
    "proxy-connection",
];

/// Besides those, names a signature may not take: the body's encoding,
/// credentials and the client's name, which a receiver reads as such (a
/// plugin may set them on purpose, a signature never).
const NOT_A_SIGNATURE_HEADER: &[&str] = &[
    "content-encoding",
    "proxy-authenticate",
    "authorization",
    "cookie",
    "user-agent",
];

/// Why `name` cannot carry a signature (or an event type, a delivery id),
/// if it cannot: it must be an HTTP token of at most 100 characters, and
/// not one of the headers HTTP or wasmhook owns.
pub fn check_header_name(name: &str) -> Result<(), String> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || name.len() > 100 || !name.chars().all(token) {
        return Err(format!(
            "{name:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~, at most 100)"
        ));
    }
    let lower = name.to_ascii_lowercase();
    if HTTP_OWNED_HEADERS.contains(&lower.as_str())
        || NOT_A_SIGNATURE_HEADER.contains(&lower.as_str())
    {
        return Err(format!(
            "{name:?} is a header HTTP or wasmhook sets itself; choose another name"
        ));
    }
    Ok(())
}

impl Scheme {
    /// Whether the scheme's header names are usable: each a valid name of
    /// its own (no two the same).
    pub fn check(&self) -> Result<(), String> {
        let names: Vec<(&str, &String)> = match self {
            Scheme::StandardWebhooks | Scheme::Svix | Scheme::Chatwoot => return Ok(()),
            Scheme::TimestampedHex { header } => vec![("signature.header", header)],
            Scheme::BodyHex {
                header,
                event_header,
                delivery_header,
            } => vec![
                ("signature.header", header),
                ("signature.event_header", event_header),
                ("signature.delivery_header", delivery_header),
            ],
        };
        for (field, name) in &names {
            check_header_name(name).map_err(|e| format!("{field}: {e}"))?;
        }
        for (i, (field, name)) in names.iter().enumerate() {
            if let Some((other, _)) = names[..i]
                .iter()
                .find(|(_, n)| n.eq_ignore_ascii_case(name))
            {
                return Err(format!("{field} and {other} are the same header {name:?}"));
            }
        }
        Ok(())
    }
}

fn default_timestamped_header() -> String {
    "X-Webhook-Signature".into()
}
fn default_body_header() -> String {
    "X-OWC-Signature".into()
}
fn default_event_header() -> String {
    "X-OWC-Event".into()
}
fn default_delivery_header() -> String {
    "X-OWC-Delivery".into()
}

/// Why a secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "a standard-webhooks secret is the base64 of 24 to 64 bytes, with or without a whsec_ prefix"
    )]
    BadStandardSecret,
    #[error(
        "an asymmetric signing key looks like whsk_<base64 of a 32-byte ed25519 seed, or of the seed and its public key>"
    )]
    BadSigningKey,
    #[error("a public key looks like whpk_<base64 of a 32-byte ed25519 public key>")]
    BadPublicKey,
}

/// What is signed: one attempt of one delivery.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The delivery id: stable across retries (receivers dedup on it).
    pub delivery_id: &'a str,
    pub event_type: &'a str,
    /// Unix seconds, fresh per attempt.
    pub timestamp: i64,
    pub body: &'a [u8],
}

/// A new random secret in the scheme's format: `whsec_<base64 of 32 bytes>`
/// for every scheme (the hex schemes use the whole string as the key).
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("whsec_{}", BASE64.encode(bytes))
}

/// A new asymmetric (Standard Webhooks `v1a`, ed25519) signing key:
/// `whsk_<base64 of the 32-byte seed and the 32-byte public key>`, the
/// form Svix stores. Its public key ([`public_key`]) is what receivers
/// verify with.
pub fn generate_signing_key() -> String {
    let key = ed25519_dalek::SigningKey::from_bytes(&rand::random());
    format!("whsk_{}", BASE64.encode(key.to_keypair_bytes()))
}

/// Whether a subscription's secret is an asymmetric signing key.
pub fn is_signing_key(secret: &str) -> bool {
    secret.starts_with("whsk_")
}

/// The ed25519 key of a `whsk_` secret: the 64-byte keypair (its public
/// half must match the seed) or the bare 32-byte seed.
pub fn signing_key(secret: &str) -> Result<ed25519_dalek::SigningKey, SecretError> {
    let bytes = secret
        .strip_prefix("whsk_")
        .and_then(|b| LENIENT_BASE64.decode(b).ok())
        .ok_or(SecretError::BadSigningKey)?;
    match bytes.len() {
        32 => Ok(ed25519_dalek::SigningKey::from_bytes(
            bytes[..].try_into().expect("32 bytes"),
        )),
        64 => {
            ed25519_dalek::SigningKey::from_keypair_bytes(bytes[..].try_into().expect("64 bytes"))
                .map_err(|_| SecretError::BadSigningKey)
        }
        _ => Err(SecretError::BadSigningKey),
    }
}

/// `whpk_<base64 of the public key>` of a `whsk_` secret (None for any
/// other secret): safe to show, it verifies and cannot sign.
pub fn public_key(secret: &str) -> Option<String> {
    let key = signing_key(secret).ok()?;
    Some(format!(
        "whpk_{}",
        BASE64.encode(key.verifying_key().as_bytes())
    ))
}

/// The ed25519 key of a `whpk_` public key (an inbound source verifying
/// `v1a` signatures).
pub fn verifying_key(public: &str) -> Result<ed25519_dalek::VerifyingKey, SecretError> {
    let bytes: [u8; 32] = public
        .strip_prefix("whpk_")
        .and_then(|b| LENIENT_BASE64.decode(b).ok())
        .and_then(|b| b.try_into().ok())
        .ok_or(SecretError::BadPublicKey)?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| SecretError::BadPublicKey)
}

/// The Standard Webhooks signed content: `id.timestamp.body`.
fn standard_content(msg: &Message<'_>) -> Vec<u8> {
    let ts = msg.timestamp.to_string();
    let mut content = Vec::with_capacity(msg.delivery_id.len() + ts.len() + msg.body.len() + 2);
    content.extend_from_slice(msg.delivery_id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(ts.as_bytes());
    content.push(b'.');
    content.extend_from_slice(msg.body);
    content
}

/// `v1a,<base64 ed25519 signature of "id.timestamp.body">`.
pub fn asymmetric_signature(key: &ed25519_dalek::SigningKey, msg: &Message<'_>) -> String {
    use ed25519_dalek::Signer;
    format!(
        "v1a,{}",
        BASE64.encode(key.sign(&standard_content(msg)).to_bytes())
    )
}

/// Whether `signature` (64 bytes) is `key`'s over `content`.
pub fn asymmetric_matches(
    key: &ed25519_dalek::VerifyingKey,
    content: &[u8],
    signature: &[u8],
) -> bool {
    let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
        return false;
    };
    key.verify_strict(content, &signature).is_ok()
}

/// Base64 as the Standard Webhooks libraries read a secret: the standard
/// alphabet, with or without its `=` padding.
const LENIENT_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The HMAC key of a standard-webhooks secret: its base64, after an
/// optional `whsec_` prefix, padded or not (what the reference libraries
/// and Svix's accept, so a secret copied from another sender works).
pub fn standard_key(secret: &str) -> Result<Vec<u8>, SecretError> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = LENIENT_BASE64
        .decode(encoded)
        .map_err(|_| SecretError::BadStandardSecret)?;
    if !(24..=64).contains(&key.len()) {
        return Err(SecretError::BadStandardSecret);
    }
    Ok(key)
}

/// HMAC-SHA256 under `key` fed with `parts` in order.
fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac
}

/// HMAC-SHA256 of `parts` under `key`.
pub fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    mac(key, parts).finalize().into_bytes().to_vec()
}

/// Whether `expected` is the HMAC-SHA256 of `parts` under `key`, compared
/// in constant time (inbound verification, `source::verify`).
pub fn hmac_matches(key: &[u8], parts: &[&[u8]], expected: &[u8]) -> bool {
    mac(key, parts).verify_slice(expected).is_ok()
}

/// Standard base64, or None.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    BASE64.decode(text).ok()
}

/// `v1,<base64>` for one standard-webhooks key.
pub fn standard_signature(key: &[u8], msg: &Message<'_>) -> String {
    let ts = msg.timestamp.to_string();
    let sig = hmac(
        key,
        &[
            msg.delivery_id.as_bytes(),
            b".",
            ts.as_bytes(),
            b".",
            msg.body,
        ],
    );
    format!("v1,{}", BASE64.encode(sig))
}

/// `t=<unix>,v1=<hex>` (Hello Client).
pub fn timestamped_hex_signature(secret: &str, msg: &Message<'_>) -> String {
    let ts = msg.timestamp.to_string();
    let sig = hmac(secret.as_bytes(), &[ts.as_bytes(), b".", msg.body]);
    format!("t={ts},v1={}", hex::encode(sig))
}

/// Chatwoot's signature headers, as its code names them.
pub const CHATWOOT_SIGNATURE: &str = "X-Chatwoot-Signature";
pub const CHATWOOT_TIMESTAMP: &str = "X-Chatwoot-Timestamp";
pub const CHATWOOT_DELIVERY: &str = "X-Chatwoot-Delivery";

/// `sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">` (Chatwoot): the
/// whole secret string is the key, as Chatwoot uses its webhook's secret.
pub fn chatwoot_signature(secret: &str, msg: &Message<'_>) -> String {
    let ts = msg.timestamp.to_string();
    let sig = hmac(secret.as_bytes(), &[ts.as_bytes(), b".", msg.body]);
    format!("sha256={}", hex::encode(sig))
}

/// Hex HMAC of the body alone (onWebChat, oHallo).
pub fn body_hex_signature(secret: &str, body: &[u8]) -> String {
    hex::encode(hmac(secret.as_bytes(), &[body]))
}

/// The headers for one attempt. `secrets` are the current secret first, then
/// any still in their rotation grace period (standard-webhooks signs with all
/// of them; the hex schemes, which carry one signature, with the current).
pub fn headers(
    scheme: &Scheme,
    secrets: &[&str],
    msg: &Message<'_>,
) -> Result<Vec<(String, String)>, SecretError> {
    let current = secrets.first().copied().unwrap_or_default();
    Ok(match scheme {
        Scheme::StandardWebhooks | Scheme::Svix => {
            let mut signatures = Vec::with_capacity(secrets.len());
            for secret in secrets {
                signatures.push(if is_signing_key(secret) {
                    asymmetric_signature(&signing_key(secret)?, msg)
                } else {
                    standard_signature(&standard_key(secret)?, msg)
                });
            }
            let [id, timestamp, signature] = standard_names(scheme);
            vec![
                (id.into(), msg.delivery_id.into()),
                (timestamp.into(), msg.timestamp.to_string()),
                (signature.into(), signatures.join(" ")),
            ]
        }
        Scheme::TimestampedHex { header } => {
            vec![(header.clone(), timestamped_hex_signature(current, msg))]
        }
        Scheme::BodyHex {
            header,
            event_header,
            delivery_header,
        } => vec![
            (header.clone(), body_hex_signature(current, msg.body)),
            (event_header.clone(), msg.event_type.into()),
            (delivery_header.clone(), msg.delivery_id.into()),
        ],
        Scheme::Chatwoot => vec![
            (CHATWOOT_SIGNATURE.into(), chatwoot_signature(current, msg)),
            (CHATWOOT_TIMESTAMP.into(), msg.timestamp.to_string()),
            (CHATWOOT_DELIVERY.into(), msg.delivery_id.into()),
        ],
    })
}

/// The id, timestamp and signature headers of the Standard Webhooks
/// schemes.
fn standard_names(scheme: &Scheme) -> [&'static str; 3] {
    match scheme {
        Scheme::Svix => ["svix-id", "svix-timestamp", "svix-signature"],
        _ => ["webhook-id", "webhook-timestamp", "webhook-signature"],
    }
}

/// The headers [`headers`] sets for `msg`, with every signature masked:
/// what the delivery log shows of a request (no secret needed).
pub fn masked_headers(scheme: &Scheme, msg: &Message<'_>) -> Vec<(String, String)> {
    const MASK: &str = "••••••";
    match scheme {
        Scheme::StandardWebhooks | Scheme::Svix => {
            let [id, timestamp, signature] = standard_names(scheme);
            vec![
                (id.into(), msg.delivery_id.into()),
                (timestamp.into(), msg.timestamp.to_string()),
                (signature.into(), format!("v1,{MASK}")),
            ]
        }
        Scheme::TimestampedHex { header } => {
            vec![(header.clone(), format!("t={},v1={MASK}", msg.timestamp))]
        }
        Scheme::BodyHex {
            header,
            event_header,
            delivery_header,
        } => vec![
            (header.clone(), MASK.into()),
            (event_header.clone(), msg.event_type.into()),
            (delivery_header.clone(), msg.delivery_id.into()),
        ],
        Scheme::Chatwoot => vec![
            (CHATWOOT_SIGNATURE.into(), format!("sha256={MASK}")),
            (CHATWOOT_TIMESTAMP.into(), msg.timestamp.to_string()),
            (CHATWOOT_DELIVERY.into(), msg.delivery_id.into()),
        ],
    }
}

/// Header names a scheme sets (a plugin may not set them).
pub fn reserved_names(scheme: &Scheme) -> Vec<String> {
    match scheme {
        Scheme::StandardWebhooks | Scheme::Svix => standard_names(scheme)
            .iter()
            .map(|h| h.to_string())
            .collect(),
        Scheme::TimestampedHex { header } => vec![header.to_ascii_lowercase()],
        Scheme::BodyHex {
            header,
            event_header,
            delivery_header,
        } => vec![
            header.to_ascii_lowercase(),
            event_header.to_ascii_lowercase(),
            delivery_header.to_ascii_lowercase(),
        ],
        Scheme::Chatwoot => [CHATWOOT_SIGNATURE, CHATWOOT_TIMESTAMP, CHATWOOT_DELIVERY]
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_masked_view_names_every_header_a_scheme_sets_and_no_signature() {
        let msg = Message {
            delivery_id: "dlv_1",
            event_type: "lead.created",
            timestamp: 1_700_000_000,
            body: b"{}",
        };
        for scheme in [
            Scheme::StandardWebhooks,
            Scheme::TimestampedHex {
                header: "X-Webhook-Signature".into(),
            },
            Scheme::BodyHex {
                header: "X-OWC-Signature".into(),
                event_header: "X-OWC-Event".into(),
                delivery_header: "X-OWC-Delivery".into(),
            },
            Scheme::Chatwoot,
            Scheme::Svix,
        ] {
            let secret = match scheme {
                Scheme::StandardWebhooks | Scheme::Svix => generate_secret(),
                _ => "a-hex-scheme-secret".to_string(),
            };
            let sent = headers(&scheme, &[secret.as_str()], &msg).unwrap();
            let shown = masked_headers(&scheme, &msg);
            let names =
                |h: &[(String, String)]| h.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
            assert_eq!(names(&sent), names(&shown));
            for ((name, real), (_, masked)) in sent.iter().zip(&shown) {
                if name.to_ascii_lowercase().contains("signature") {
                    assert_ne!(real, masked);
                    assert!(masked.contains("••••••"));
                } else {
                    assert_eq!(real, masked);
                }
            }
        }
    }

    use super::*;

    /// The test vector of the Standard Webhooks spec and its reference
    /// libraries.
    #[test]
    fn standard_webhooks_spec_vector() {
        let key = standard_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let msg = Message {
            delivery_id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
            event_type: "x.y",
            timestamp: 1614265330,
            body: br#"{"test": 2432232314}"#,
        };
        assert_eq!(
            standard_signature(&key, &msg),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    /// The reference libraries take the secret with or without `whsec_`,
    /// and base64 with or without padding: every form is the same key.
    #[test]
    fn standard_secrets_in_every_form_the_libraries_accept() {
        let key = standard_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            standard_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
            key
        );
        let padded = format!("whsec_{}", BASE64.encode([7u8; 25]));
        assert!(padded.ends_with("=="));
        let unpadded = padded.trim_end_matches('=');
        assert_eq!(standard_key(unpadded).unwrap(), vec![7u8; 25]);
        assert_eq!(standard_key(&padded).unwrap(), vec![7u8; 25]);
        assert_eq!(
            standard_key(unpadded.strip_prefix("whsec_").unwrap()).unwrap(),
            vec![7u8; 25]
        );
    }

    #[test]
    fn standard_webhooks_signs_with_every_secret_during_rotation() {
        let new = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let old = generate_secret();
        let msg = Message {
            delivery_id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
            event_type: "x.y",
            timestamp: 1614265330,
            body: br#"{"test": 2432232314}"#,
        };
        let headers = headers(&Scheme::StandardWebhooks, &[new, &old], &msg).unwrap();
        let sig = &headers[2].1;
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(
            parts[1],
            standard_signature(&standard_key(&old).unwrap(), &msg)
        );
        assert_eq!(
            headers[0],
            ("webhook-id".into(), "msg_p5jXN8AQM9LWM0D4loKWxJek".into())
        );
        assert_eq!(
            headers[1],
            ("webhook-timestamp".into(), "1614265330".into())
        );
    }

    /// Fixed vectors computed with `openssl dgst -sha256 -hmac <key>` on the
    /// same input, as Hello Client's Node.js sample would compute them.
    #[test]
    fn timestamped_hex_vector() {
        let msg = Message {
            delivery_id: "d",
            event_type: "lead.created",
            timestamp: 1492774577,
            body: br#"{"status":"ok"}"#,
        };
        assert_eq!(
            timestamped_hex_signature("secret-key", &msg),
            "t=1492774577,v1=af57c07004b66371e982d30241d67c714c78cb2e56ab9f3b312885958b90f6f7"
        );
    }

    #[test]
    fn body_hex_vector() {
        assert_eq!(
            body_hex_signature("secret-key", br#"{"status":"ok"}"#),
            "26e848dd664ef03f871f050d6d055156a0426178a88a7695811f767fd0330c10"
        );
    }

    #[test]
    fn bad_standard_secrets_are_refused() {
        assert!(standard_key("not-base64!").is_err());
        assert!(standard_key("c2hvcnQ=").is_err()); // 5 bytes, bare
        assert!(standard_key("whsec_!!!").is_err());
        assert!(standard_key("whsec_c2hvcnQ=").is_err()); // 5 bytes
        assert!(standard_key(&generate_secret()).is_ok());
    }

    /// Chatwoot's three headers, the signature checked against one
    /// computed outside this code (Python's hmac, as Chatwoot's Ruby does).
    #[test]
    fn chatwoot_vector() {
        let msg = Message {
            delivery_id: "dlv_1",
            event_type: "message.created",
            timestamp: 1_799_999_990,
            body: br#"{"event":"message_created","id":1}"#,
        };
        assert_eq!(
            headers(&Scheme::Chatwoot, &["cw_s3cret", "older"], &msg).unwrap(),
            [
                (
                    "X-Chatwoot-Signature".to_string(),
                    "sha256=a2315e256317c93a76f7d4cadc0dde942950986e84a2e6e9415129df0f738050"
                        .to_string()
                ),
                ("X-Chatwoot-Timestamp".to_string(), "1799999990".to_string()),
                ("X-Chatwoot-Delivery".to_string(), "dlv_1".to_string()),
            ]
        );
        assert_eq!(
            reserved_names(&Scheme::Chatwoot),
            [
                "x-chatwoot-signature",
                "x-chatwoot-timestamp",
                "x-chatwoot-delivery"
            ]
        );
    }

    /// `v1a`: an ed25519 key as Svix serializes it (seed and public key),
    /// the signature checked against one made outside this code (Python's
    /// `cryptography`, seed 0..31, the spec's message).
    #[test]
    fn asymmetric_vector() {
        let secret = "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8DoQe/884Qvh1w3RjnS8CZZ+TWMJulDV8d3IZkElUxuA==";
        let msg = Message {
            delivery_id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
            event_type: "x.y",
            timestamp: 1614265330,
            body: br#"{"test": 2432232314}"#,
        };
        let expected = "v1a,yoUrgEkc12aGqm0n4Sydmdz55xJfTz4AsAgieHFjmkR7LJtqVCZOQYzvvHjI5kAey+r4iaBGxTFRrl2iBQxtDQ==";
        assert_eq!(
            asymmetric_signature(&signing_key(secret).unwrap(), &msg),
            expected
        );
        assert_eq!(
            public_key(secret).unwrap(),
            "whpk_A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
        );
        // The bare seed is the same key.
        let seed = format!("whsk_{}", BASE64.encode((0u8..32).collect::<Vec<_>>()));
        assert_eq!(
            asymmetric_signature(&signing_key(&seed).unwrap(), &msg),
            expected
        );
        // During a rotation from a symmetric secret both sign.
        let sent = headers(
            &Scheme::StandardWebhooks,
            &[secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
            &msg,
        )
        .unwrap();
        assert_eq!(
            sent[2].1,
            format!("{expected} v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        // A keypair whose public half is not the seed's is refused, as is
        // a public key used to sign.
        let mut wrong = signing_key(secret).unwrap().to_keypair_bytes();
        wrong[40] ^= 1;
        assert!(signing_key(&format!("whsk_{}", BASE64.encode(wrong))).is_err());
        assert!(signing_key("whpk_A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=").is_err());
        let generated = generate_signing_key();
        assert!(signing_key(&generated).is_ok() && public_key(&generated).is_some());
    }

    #[test]
    fn scheme_json_shapes() {
        let s: Scheme =
            serde_json::from_str(r#"{"scheme":"body-hex","header":"X-OHallo-Signature"}"#).unwrap();
        assert_eq!(
            s,
            Scheme::BodyHex {
                header: "X-OHallo-Signature".into(),
                event_header: "X-OWC-Event".into(),
                delivery_header: "X-OWC-Delivery".into()
            }
        );
        let s: Scheme = serde_json::from_str(r#"{"scheme":"timestamped-hex"}"#).unwrap();
        assert_eq!(
            s,
            Scheme::TimestampedHex {
                header: "X-Webhook-Signature".into()
            }
        );
        let s: Scheme = serde_json::from_str(r#"{"scheme":"chatwoot"}"#).unwrap();
        assert_eq!(s, Scheme::Chatwoot);
        assert!(serde_json::from_str::<Scheme>(r#"{"scheme":"md5"}"#).is_err());
        assert!(serde_json::from_str::<Scheme>(r#"{"scheme":"body-hex","hedaer":"x"}"#).is_err());
    }
}
