//! Delivery the way receivers need it: ordered per key, paced per
//! subscription, through the operator's proxy and with the endpoint's own
//! TLS. The rules on both backends with a manual clock (the engine), the
//! measured behaviour through the real binary.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

/// A message in conversation `conv` carrying its place `seq`.
fn conv_event(id: &str, conv: &str, seq: u64) -> Value {
    json!({
        "id": id,
        "type": "message.created",
        "data": {"conversation_id": conv, "seq": seq, "content": "hi"},
    })
}

fn ordered(url: &str, on_failure: &str) -> Value {
    json!({
        "url": url,
        "event_types": ["*"],
        "ordering": {"key": "/data/conversation_id", "on_failure": on_failure},
        // convosphere: stops on a 4xx (fails for good at once), retries 5xx.
        "retry": {"preset": "convosphere", "jitter": 0},
    })
}

/// The `seq` of each received body, in arrival order, per conversation.
fn arrivals(rx: &Receiver) -> HashMap<String, Vec<u64>> {
    let mut by_conv: HashMap<String, Vec<u64>> = HashMap::new();
    for r in rx.received() {
        let body = r.json();
        by_conv
            .entry(body["data"]["conversation_id"].as_str().unwrap().into())
            .or_default()
            .push(body["data"]["seq"].as_u64().unwrap());
    }
    by_conv
}

both_backends! {
    #[tokio::test]
    async fn one_keys_deliveries_wait_behind_a_retrying_head_while_other_keys_go(backing) {
        let e = backing.engine().await;
        let key = e.tenant().await;
        // The first request (a1) fails with a 500 and is retried.
        let rx = Receiver::start(vec![Answer::status(500)], Answer::status(200)).await;
        e.subscribe(&key, ordered(&rx.url(), "skip")).await;
        let a1 = e.send(&key, conv_event("a1", "A", 1)).await;
        let a2 = e.send(&key, conv_event("a2", "A", 2)).await;
        let a3 = e.send(&key, conv_event("a3", "A", 3)).await;
        let b1 = e.send(&key, conv_event("b1", "B", 1)).await;

        e.worker.run_due().await;
        // a1 failed once and waits for its retry; a2, a3 wait behind it; B went.
        let d = e.delivery(&key, &a1[0]).await;
        assert_eq!(d["status"], "pending");
        assert_eq!(d["ordering_key"], "A");
        let d2 = e.delivery(&key, &a2[0]).await;
        assert_eq!(d2["status"], "blocked", "{d2}");
        assert_eq!(d2["line"]["head"], a1[0].as_str());
        assert_eq!(d2["line"]["ahead"], 1);
        assert_eq!(e.delivery(&key, &a3[0]).await["line"]["ahead"], 2);
        assert_eq!(e.delivery(&key, &b1[0]).await["status"], "succeeded");
        assert_eq!(arrivals(&rx)["A"], [1]);

        // A blocked delivery cannot be pushed ahead by hand.
        let (status, body) = e
            .call("POST", &format!("/v1/deliveries/{}/retry", a2[0]), &key, None)
            .await;
        assert_eq!(status, 409, "{body}");
        let (status, page) = e.call("GET", "/v1/deliveries?status=blocked", &key, None).await;
        assert_eq!(status, 200);
        assert_eq!(page["items"].as_array().unwrap().len(), 2);

        // The retry comes; the line follows it, one at a time, in order.
        e.clock.advance(Duration::from_secs(61));
        e.worker.run_due().await;
        for id in [&a1, &a2, &a3] {
            assert_eq!(e.delivery(&key, &id[0]).await["status"], "succeeded");
        }
        assert_eq!(arrivals(&rx)["A"], [1, 1, 2, 3]);
        // The line is gone once empty.
        assert!(e.delivery(&key, &a3[0]).await.get("line").is_none());
    }
}

both_backends! {
    #[tokio::test]
    async fn skip_lets_the_next_go_and_block_holds_the_key_until_a_retry_or_dismissal(backing) {
        let e = backing.engine().await;
        let key = e.tenant().await;
        let other = e.tenant().await;
        // 400: convosphere gives up at once (a failure for good).
        let rx = Receiver::start(vec![Answer::status(400)], Answer::status(200)).await;
        e.subscribe(&key, ordered(&rx.url(), "skip")).await;
        let s1 = e.send(&key, conv_event("s1", "S", 1)).await;
        let s2 = e.send(&key, conv_event("s2", "S", 2)).await;
        e.worker.run_due().await;
        assert_eq!(e.delivery(&key, &s1[0]).await["status"], "failed");
        assert_eq!(e.delivery(&key, &s2[0]).await["status"], "succeeded");

        let rx = Receiver::start(
            vec![Answer::status(400), Answer::status(200), Answer::status(200), Answer::status(400)],
            Answer::status(200),
        )
        .await;
        let key2 = e.tenant().await;
        e.subscribe(&key2, ordered(&rx.url(), "block")).await;
        let k1 = e.send(&key2, conv_event("k1", "K", 1)).await;
        let k2 = e.send(&key2, conv_event("k2", "K", 2)).await;
        e.worker.run_due().await;
        let head = e.delivery(&key2, &k1[0]).await;
        assert_eq!(head["status"], "failed");
        assert_eq!(head["line"]["stopped"], true);
        // Time passes; nothing behind the failed head moves.
        e.clock.advance(Duration::from_secs(3600));
        e.worker.run_due().await;
        assert_eq!(e.delivery(&key2, &k2[0]).await["status"], "blocked");
        assert_eq!(rx.received().len(), 1);

        // Another tenant can neither see nor dismiss it; a delivery that
        // stops no line is not dismissed.
        let (status, _) = e
            .call("POST", &format!("/v1/deliveries/{}/dismiss", k1[0]), &other, None)
            .await;
        assert_eq!(status, 404);
        let (status, body) = e
            .call("POST", &format!("/v1/deliveries/{}/dismiss", k2[0]), &key2, None)
            .await;
        assert_eq!(status, 409, "{body}");

        // A retry of the head goes where it stands, then the line goes on.
        let (status, body) = e
            .call("POST", &format!("/v1/deliveries/{}/retry", k1[0]), &key2, None)
            .await;
        assert_eq!(status, 202, "{body}");
        e.worker.run_due().await;
        assert_eq!(e.delivery(&key2, &k1[0]).await["status"], "succeeded");
        assert_eq!(e.delivery(&key2, &k2[0]).await["status"], "succeeded");

        // Stopped again (k3 fails), then dismissed: k4 goes, k3 stays failed.
        let k3 = e.send(&key2, conv_event("k3", "K", 3)).await;
        let k4 = e.send(&key2, conv_event("k4", "K", 4)).await;
        e.worker.run_due().await;
        assert_eq!(e.delivery(&key2, &k4[0]).await["status"], "blocked");
        let (status, body) = e
            .call("POST", &format!("/v1/deliveries/{}/dismiss", k3[0]), &key2, None)
            .await;
        assert_eq!(status, 200, "{body}");
        e.worker.run_due().await;
        assert_eq!(e.delivery(&key2, &k3[0]).await["status"], "failed");
        assert_eq!(e.delivery(&key2, &k4[0]).await["status"], "succeeded");
        let seqs: Vec<u64> = rx
            .received()
            .iter()
            .map(|r| r.json()["data"]["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [1, 1, 2, 3, 4]);
    }
}

both_backends! {
    #[tokio::test]
    async fn a_plugins_split_requests_keep_their_order_and_events_without_the_key_are_unordered(backing) {
        let e = backing.engine().await;
        let key = e.tenant().await;
        let rx = Receiver::start(vec![Answer::status(500)], Answer::status(200)).await;
        e.subscribe(&key, ordered(&rx.url(), "skip")).await;
        // No conversation_id: not in any line, so not held back by A.
        let a1 = e.send(&key, conv_event("a1", "A", 1)).await;
        let free = e
            .send(&key, json!({"id": "n1", "type": "message.created", "data": {"seq": 9}}))
            .await;
        e.worker.run_due().await;
        assert_eq!(e.delivery(&key, &a1[0]).await["status"], "pending");
        let d = e.delivery(&key, &free[0]).await;
        assert_eq!(d["status"], "succeeded");
        assert!(d.get("ordering_key").is_none());
    }
}

both_backends! {
    #[tokio::test]
    async fn a_429_with_retry_after_pauses_the_subscription_and_a_rate_limit_paces_it(backing) {
        let e = backing.engine().await;
        let key = e.tenant().await;
        let rx = Receiver::start(
            vec![Answer::status(429).header("retry-after", "30")],
            Answer::status(200),
        )
        .await;
        e.subscribe(&key, json!({"url": rx.url(), "event_types": ["*"], "max_in_flight": 1})).await;
        let first = e.send(&key, message_event("p1")).await;
        e.worker.run_due().await;
        assert_eq!(rx.received().len(), 1);
        // A new delivery to the paused subscription waits with the retry.
        let second = e.send(&key, message_event("p2")).await;
        e.clock.advance(Duration::from_secs(20));
        assert_eq!(e.worker.run_due().await, 0, "paused for 30 s");
        e.clock.advance(Duration::from_secs(11));
        e.worker.run_due().await;
        assert_eq!(e.delivery(&key, &first[0]).await["status"], "succeeded");
        assert_eq!(e.delivery(&key, &second[0]).await["status"], "succeeded");

        // 1 a second, burst 2: two at once, then one a second.
        let rx = Receiver::ok().await;
        let key = e.tenant().await;
        e.subscribe(
            &key,
            json!({"url": rx.url(), "event_types": ["*"], "rate_limit": {"per_second": 1, "burst": 2}}),
        )
        .await;
        for i in 0..5 {
            e.send(&key, message_event(&format!("r{i}"))).await;
        }
        assert_eq!(e.worker.run_due().await, 2);
        assert_eq!(e.worker.run_due().await, 0);
        e.clock.advance(Duration::from_millis(1000));
        assert_eq!(e.worker.run_due().await, 1);
        e.clock.advance(Duration::from_millis(2000));
        assert_eq!(e.worker.run_due().await, 2);
        assert_eq!(rx.received().len(), 5);
    }
}

/// Every new field: a 400 that names it; the TLS key never comes back.
#[tokio::test]
async fn ordering_pacing_and_tls_settings_are_validated_and_the_key_is_never_shown() {
    let backing = Backing::new(Backend::Sled).await.unwrap();
    let e = backing.engine().await;
    let key = e.tenant().await;
    let base = || json!({"url": "http://example.com/hook", "event_types": ["*"]});
    for (field, value, named) in [
        (
            "ordering",
            json!({"key": "data.conversation_id"}),
            "ordering.key",
        ),
        ("ordering", json!({"key": "/data/~2x"}), "ordering.key"),
        (
            "ordering",
            json!({"key": "/data/x", "on_failure": "retry"}),
            "on_failure",
        ),
        ("ordering", json!({"key": "/data/x", "extra": 1}), "extra"),
        (
            "rate_limit",
            json!({"per_second": 0}),
            "rate_limit.per_second",
        ),
        (
            "rate_limit",
            json!({"per_second": 1e300}),
            "rate_limit.per_second",
        ),
        (
            "rate_limit",
            json!({"per_second": 5, "burst": 0}),
            "rate_limit.burst",
        ),
        (
            "tls",
            json!({"client_certificate": "nope"}),
            "tls.client_key",
        ),
        (
            "tls",
            json!({"client_certificate": "nope", "client_key": "nope"}),
            "tls.client_certificate",
        ),
        (
            "tls",
            json!({"ca": "-----BEGIN CERTIFICATE-----\n\u{0}\n-----END CERTIFICATE-----"}),
            "tls.ca",
        ),
        ("tls", json!({}), "tls"),
    ] {
        let mut body = base();
        body[field] = value.clone();
        let (status, err) = e.call("POST", "/v1/subscriptions", &key, Some(body)).await;
        assert_eq!(status, 400, "{field} {value}: {err}");
        assert!(
            error_message(&err).contains(named),
            "{field} {value}: {err}"
        );
    }
    let ca = Ca::new();
    let (cert, client_key) = ca.client("wasmhook");
    let mut body = base();
    body["tls"] = json!({"client_certificate": cert, "client_key": client_key, "ca": ca.pem()});
    body["ordering"] = json!({"key": "/data/conversation_id"});
    body["rate_limit"] = json!({"per_second": 20, "burst": 40});
    let created = e.subscribe(&key, body).await;
    assert_eq!(created["ordering"]["on_failure"], "skip");
    assert_eq!(created["rate_limit"]["burst"], 40);
    assert_eq!(created["tls"]["client_key_set"], true);
    let id = created["id"].as_str().unwrap();
    let (_, listed) = e.call("GET", "/v1/subscriptions", &key, None).await;
    let shown = e.subscription(&key, id).await;
    for text in [created.to_string(), listed.to_string(), shown.to_string()] {
        assert!(
            !text.contains("PRIVATE KEY"),
            "the client key is shown: {text}"
        );
    }
    // Removed with null.
    let (status, patched) = e
        .call(
            "PATCH",
            &format!("/v1/subscriptions/{id}"),
            &key,
            Some(json!({"tls": null, "ordering": null, "rate_limit": null})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert!(patched["tls"].is_null() && patched["ordering"].is_null());
}

/// A test CA that signs server and client certificates.
pub struct Ca {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let mut ca = CertificateParams::new(Vec::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "wasmhook test CA");
        let key = KeyPair::generate().unwrap();
        let pem = ca.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(ca, key),
        }
    }

    pub fn pem(&self) -> String {
        self.pem.clone()
    }

    fn leaf(&self, names: Vec<String>, client: Option<&str>) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        if let Some(name) = client {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A certificate for 127.0.0.1 and localhost: (cert PEM, key PEM).
    pub fn server(&self) -> (String, String) {
        self.leaf(vec!["127.0.0.1".into(), "localhost".into()], None)
    }

    /// A client certificate named `name`: (cert PEM, key PEM).
    pub fn client(&self, name: &str) -> (String, String) {
        self.leaf(Vec::new(), Some(name))
    }
}
