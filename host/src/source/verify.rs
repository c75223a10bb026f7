//! Checking a platform's signature on an inbound request: the mirror of
//! `sign`, with the same three schemes plus `none` (the platform does not
//! sign; the unguessable URL is the credential). Comparisons are constant
//! time; a timestamped scheme also refuses a stale or future timestamp, so
//! a captured request cannot be replayed later.

use jiff::Timestamp;

use crate::runtime::Header;
use crate::sign;

pub use crate::store::Verify;

impl Verify {
    /// Header names are matched case-insensitively: store them lowercase.
    pub fn normalized(self) -> Self {
        match self {
            Verify::TimestampedHex { header } => Verify::TimestampedHex {
                header: header.to_ascii_lowercase(),
            },
            Verify::BodyHex { header } => Verify::BodyHex {
                header: header.to_ascii_lowercase(),
            },
            other => other,
        }
    }
}

/// Why a request's signature was refused (answered 401, nothing kept).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the {0} header is missing")]
    Missing(String),
    #[error("the {header} header is malformed: {reason}")]
    Malformed { header: String, reason: String },
    #[error(
        "the signature timestamp is {age_secs} s away from now, over the {tolerance_secs} s tolerance"
    )]
    Stale { age_secs: i64, tolerance_secs: u64 },
    #[error("the signature does not match the body under the source's secret")]
    Mismatch,
}

fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.trim())
}

fn required<'a>(headers: &'a [Header], name: &str) -> Result<&'a str, VerifyError> {
    header(headers, name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| VerifyError::Missing(name.to_string()))
}

fn fresh(timestamp: i64, now: Timestamp, tolerance_secs: u64) -> Result<(), VerifyError> {
    let age_secs = now.as_second() - timestamp;
    if age_secs.unsigned_abs() > tolerance_secs {
        return Err(VerifyError::Stale {
            age_secs,
            tolerance_secs,
        });
    }
    Ok(())
}

fn unix_seconds(header: &str, value: &str) -> Result<i64, VerifyError> {
    value.parse().map_err(|_| VerifyError::Malformed {
        header: header.to_string(),
        reason: format!("{value:?} is not Unix seconds"),
    })
}

/// Signatures one `webhook-signature` header may list.
const MAX_SIGNATURES: usize = 10;

/// Chatwoot's signature headers (`lib/webhooks/trigger.rb`).
const CHATWOOT_SIGNATURE: &str = "x-chatwoot-signature";
const CHATWOOT_TIMESTAMP: &str = "x-chatwoot-timestamp";

/// Checks the request's signature under any of `secrets` (the current one
/// and those still in their rotation grace period).
pub fn check(
    verify: &Verify,
    secrets: &[&str],
    tolerance_secs: u64,
    headers: &[Header],
    body: &[u8],
    now: Timestamp,
) -> Result<(), VerifyError> {
    match verify {
        Verify::None => Ok(()),
        Verify::BodyHex { header: name } => {
            let value = required(headers, name)?;
            let hex_sig = value.strip_prefix("sha256=").unwrap_or(value);
            let sig = hex::decode(hex_sig).map_err(|_| VerifyError::Malformed {
                header: name.clone(),
                reason: "not hex".into(),
            })?;
            secrets
                .iter()
                .any(|s| sign::hmac_matches(s.as_bytes(), &[body], &sig))
                .then_some(())
                .ok_or(VerifyError::Mismatch)
        }
        Verify::TimestampedHex { header: name } => {
            let value = required(headers, name)?;
            let mut t = None;
            let mut signatures = Vec::new();
            for part in value.split(',') {
                match part.trim().split_once('=') {
                    Some(("t", v)) => t = Some(v),
                    Some(("v1", v)) => signatures.push(v),
                    _ => {}
                }
            }
            let (Some(t), false) = (t, signatures.is_empty()) else {
                return Err(VerifyError::Malformed {
                    header: name.clone(),
                    reason: "expected t=<unix>,v1=<hex>".into(),
                });
            };
            fresh(unix_seconds(name, t)?, now, tolerance_secs)?;
            let matched = signatures.iter().any(|v| {
                hex::decode(v).is_ok_and(|sig| {
                    secrets.iter().any(|s| {
                        sign::hmac_matches(s.as_bytes(), &[t.as_bytes(), b".", body], &sig)
                    })
                })
            });
            matched.then_some(()).ok_or(VerifyError::Mismatch)
        }
        Verify::Chatwoot => {
            let ts = required(headers, CHATWOOT_TIMESTAMP)?;
            let value = required(headers, CHATWOOT_SIGNATURE)?;
            fresh(unix_seconds(CHATWOOT_TIMESTAMP, ts)?, now, tolerance_secs)?;
            let hex_sig = value.strip_prefix("sha256=").unwrap_or(value);
            let sig = hex::decode(hex_sig).map_err(|_| VerifyError::Malformed {
                header: CHATWOOT_SIGNATURE.into(),
                reason: "expected sha256=<hex>".into(),
            })?;
            secrets
                .iter()
                .any(|s| sign::hmac_matches(s.as_bytes(), &[ts.as_bytes(), b".", body], &sig))
                .then_some(())
                .ok_or(VerifyError::Mismatch)
        }
        Verify::StandardWebhooks => {
            let id = required(headers, "webhook-id")?;
            let ts = required(headers, "webhook-timestamp")?;
            let value = required(headers, "webhook-signature")?;
            fresh(unix_seconds("webhook-timestamp", ts)?, now, tolerance_secs)?;
            // `whpk_` public keys verify `v1a` (ed25519) signatures; every
            // other secret is a symmetric key for `v1` (HMAC).
            let (public, symmetric): (Vec<&str>, Vec<&str>) =
                secrets.iter().partition(|s| s.starts_with("whpk_"));
            let keys: Vec<Vec<u8>> = symmetric
                .iter()
                .filter_map(|s| sign::standard_key(s).ok())
                .collect();
            let public: Vec<_> = public
                .iter()
                .filter_map(|s| sign::verifying_key(s).ok())
                .collect();
            let parts = [id.as_bytes(), b".", ts.as_bytes(), b".", body];
            // ed25519 needs the message in one piece: copied only for a
            // `v1a` candidate, never for the HMAC of `v1`.
            let content = std::cell::OnceCell::new();
            // A sender signs with a few keys at most (a rotation): a header
            // listing more is refused before any of them costs a MAC.
            let candidates: Vec<&str> = value.split(' ').filter(|c| !c.is_empty()).collect();
            if candidates.len() > MAX_SIGNATURES {
                return Err(VerifyError::Malformed {
                    header: "webhook-signature".into(),
                    reason: format!("more than {MAX_SIGNATURES} signatures"),
                });
            }
            let matched = candidates.iter().any(|candidate| {
                if let Some(sig) = candidate.strip_prefix("v1a,").and_then(sign::decode_base64) {
                    return sig.len() == 64
                        && public.iter().any(|k| {
                            sign::asymmetric_matches(
                                k,
                                content.get_or_init(|| parts.concat()),
                                &sig,
                            )
                        });
                }
                candidate
                    .strip_prefix("v1,")
                    .and_then(sign::decode_base64)
                    .is_some_and(|sig| {
                        sig.len() == 32 && keys.iter().any(|k| sign::hmac_matches(k, &parts, &sig))
                    })
            });
            matched.then_some(()).ok_or(VerifyError::Mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::Message;

    fn h(name: &str, value: &str) -> Header {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }

    const NOW: i64 = 1_800_000_000;

    fn now() -> Timestamp {
        Timestamp::from_second(NOW).unwrap()
    }

    #[test]
    fn body_hex_accepts_the_exact_body_only() {
        let v = Verify::BodyHex {
            header: "x-owc-signature".into(),
        };
        let sig = sign::body_hex_signature("s3cret", b"{\"a\":1}");
        let ok = [h("X-OWC-Signature", &sig)];
        assert_eq!(
            check(&v, &["s3cret"], 300, &ok, b"{\"a\":1}", now()),
            Ok(())
        );
        let prefixed = [h("x-owc-signature", &format!("sha256={sig}"))];
        assert_eq!(
            check(&v, &["old", "s3cret"], 300, &prefixed, b"{\"a\":1}", now()),
            Ok(())
        );
        assert_eq!(
            check(&v, &["s3cret"], 300, &ok, b"{\"a\": 1}", now()),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check(&v, &["s3cret"], 300, &[], b"{}", now()),
            Err(VerifyError::Missing("x-owc-signature".into()))
        );
        assert!(matches!(
            check(
                &v,
                &["s3cret"],
                300,
                &[h("x-owc-signature", "zz")],
                b"{}",
                now()
            ),
            Err(VerifyError::Malformed { .. })
        ));
    }

    /// Chatwoot's scheme, against a signature computed outside this code
    /// (Python's hmac, as `lib/webhooks/trigger.rb` computes it with
    /// OpenSSL: hex HMAC-SHA256 of "{timestamp}.{body}", `sha256=` prefix).
    #[test]
    fn chatwoot_signatures_as_chatwoot_computes_them() {
        let body = br#"{"event":"message_created","id":1}"#;
        let signed = |sig: &str, ts: i64| {
            vec![
                h("X-Chatwoot-Signature", sig),
                h("X-Chatwoot-Timestamp", &ts.to_string()),
                h(
                    "X-Chatwoot-Delivery",
                    "0b5a7f9e-2c1d-4e57-9a8b-3f6d2e1c0a99",
                ),
            ]
        };
        let good = "sha256=a2315e256317c93a76f7d4cadc0dde942950986e84a2e6e9415129df0f738050";
        let check_with = |headers: &[Header], body: &[u8]| {
            check(
                &Verify::Chatwoot,
                &["old", "cw_s3cret"],
                300,
                headers,
                body,
                now(),
            )
        };
        assert_eq!(check_with(&signed(good, NOW - 10), body), Ok(()));
        // The timestamp is signed: moving it breaks the signature.
        assert_eq!(
            check_with(&signed(good, NOW - 11), body),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check_with(
                &signed(good, NOW - 10),
                br#"{"event":"message_created","id":2}"#
            ),
            Err(VerifyError::Mismatch)
        );
        assert!(matches!(
            check_with(&signed(good, NOW - 400), body),
            Err(VerifyError::Stale { .. })
        ));
        assert!(matches!(
            check_with(&signed("sha256=zz", NOW - 10), body),
            Err(VerifyError::Malformed { .. })
        ));
        assert_eq!(
            check_with(&signed(good, NOW - 10)[..1], body),
            Err(VerifyError::Missing("x-chatwoot-timestamp".into()))
        );
        assert_eq!(
            check_with(&[], body),
            Err(VerifyError::Missing("x-chatwoot-timestamp".into()))
        );
    }

    /// A `v1a` signature (Svix's asymmetric signing) verified with the
    /// sender's `whpk_` public key; a `v1` signature does not pass with a
    /// public key, nor a `v1a` one with a symmetric secret.
    #[test]
    fn standard_webhooks_v1a_with_a_public_key() {
        let signing = "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8DoQe/884Qvh1w3RjnS8CZZ+TWMJulDV8d3IZkElUxuA==";
        let public = sign::public_key(signing).unwrap();
        let body = br#"{"type":"a.b","data":{}}"#;
        let msg = Message {
            delivery_id: "msg_1",
            event_type: "a.b",
            timestamp: NOW,
            body,
        };
        let v1a = sign::asymmetric_signature(&sign::signing_key(signing).unwrap(), &msg);
        let headers = |sig: &str| {
            vec![
                h("webhook-id", "msg_1"),
                h("webhook-timestamp", &NOW.to_string()),
                h("webhook-signature", sig),
            ]
        };
        let v = Verify::StandardWebhooks;
        assert_eq!(
            check(&v, &[&public], 300, &headers(&v1a), body, now()),
            Ok(())
        );
        assert_eq!(
            check(
                &v,
                &[&public],
                300,
                &headers(&format!("v1,abc {v1a}")),
                body,
                now()
            ),
            Ok(())
        );
        assert_eq!(
            check(&v, &[&public], 300, &headers(&v1a), b"{}", now()),
            Err(VerifyError::Mismatch)
        );
        let symmetric = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        assert_eq!(
            check(&v, &[symmetric], 300, &headers(&v1a), body, now()),
            Err(VerifyError::Mismatch)
        );
        let v1 = sign::standard_signature(&sign::standard_key(symmetric).unwrap(), &msg);
        assert_eq!(
            check(&v, &[&public], 300, &headers(&v1), body, now()),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check(&v, &[symmetric, &public], 300, &headers(&v1), body, now()),
            Ok(())
        );
    }

    #[test]
    fn timestamped_hex_refuses_stale_timestamps() {
        let v = Verify::TimestampedHex {
            header: "x-webhook-signature".into(),
        };
        let msg = |ts| Message {
            delivery_id: "d",
            event_type: "t",
            timestamp: ts,
            body: b"{}",
        };
        let good = sign::timestamped_hex_signature("k", &msg(NOW - 10));
        assert_eq!(
            check(
                &v,
                &["k"],
                300,
                &[h("x-webhook-signature", &good)],
                b"{}",
                now()
            ),
            Ok(())
        );
        let stale = sign::timestamped_hex_signature("k", &msg(NOW - 301));
        assert!(matches!(
            check(
                &v,
                &["k"],
                300,
                &[h("x-webhook-signature", &stale)],
                b"{}",
                now()
            ),
            Err(VerifyError::Stale { age_secs: 301, .. })
        ));
        assert_eq!(
            check(
                &v,
                &["other"],
                300,
                &[h("x-webhook-signature", &good)],
                b"{}",
                now()
            ),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn standard_webhooks_checks_id_timestamp_and_body() {
        let secret = sign::generate_secret();
        let key = sign::standard_key(&secret).unwrap();
        let msg = Message {
            delivery_id: "msg_1",
            event_type: "t",
            timestamp: NOW,
            body: b"{}",
        };
        let sig = sign::standard_signature(&key, &msg);
        let headers = [
            h("webhook-id", "msg_1"),
            h("webhook-timestamp", &NOW.to_string()),
            h("webhook-signature", &format!("v1,bm9wZQ== {sig}")),
        ];
        assert_eq!(
            check(
                &Verify::StandardWebhooks,
                &[&secret],
                300,
                &headers,
                b"{}",
                now()
            ),
            Ok(())
        );
        let mut forged = headers.clone();
        forged[0] = h("webhook-id", "msg_2");
        assert_eq!(
            check(
                &Verify::StandardWebhooks,
                &[&secret],
                300,
                &forged,
                b"{}",
                now()
            ),
            Err(VerifyError::Mismatch)
        );
    }
}
