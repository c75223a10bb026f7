//! Delivery the way receivers need it: ordered per key, paced per
//! subscription, through the operator's proxy and with the endpoint's own
//! TLS. The rules on both backends with a manual clock (the engine), the
//! measured behaviour through the real binary.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering as Atomic};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
        // s1 fails for good (400), s2 goes and fails once (500).
        let rx = Receiver::start(vec![Answer::status(400), Answer::status(500)], Answer::status(200)).await;
        e.subscribe(&key, ordered(&rx.url(), "skip")).await;
        let s1 = e.send(&key, conv_event("s1", "S", 1)).await;
        let s2 = e.send(&key, conv_event("s2", "S", 2)).await;
        e.worker.run_due().await;
        assert_eq!(e.delivery(&key, &s1[0]).await["status"], "failed");
        assert_eq!(e.delivery(&key, &s2[0]).await["status"], "pending");
        // A manual retry of s1 joins the end of the line, behind s2.
        let (status, retried) = e
            .call("POST", &format!("/v1/deliveries/{}/retry", s1[0]), &key, None)
            .await;
        assert_eq!(status, 202, "{retried}");
        assert_eq!(retried["status"], "blocked");
        assert_eq!(retried["line"]["head"], s2[0].as_str());
        e.clock.advance(Duration::from_secs(61));
        e.worker.run_due().await;
        assert_eq!(e.delivery(&key, &s1[0]).await["status"], "succeeded");
        assert_eq!(e.delivery(&key, &s2[0]).await["status"], "succeeded");
        assert_eq!(arrivals(&rx)["S"], [1, 2, 2, 1]);

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
    async fn events_without_the_key_are_not_held_back_by_a_line(backing) {
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

/// An HTTPS receiver on 127.0.0.1 with a certificate from `ca`; with
/// `require_client`, the handshake needs a client certificate `ca` signed.
/// Answers 200 and counts the requests.
struct TlsReceiver {
    port: u16,
    requests: Arc<AtomicUsize>,
}

impl TlsReceiver {
    async fn start(ca: &Ca, require_client: bool) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let (cert, key) = ca.server();
        let certs = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
                .unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder.with_single_cert(certs, key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |_req| {
                        counted.fetch_add(1, Atomic::SeqCst);
                        async {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                "ok".to_string(),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsReceiver { port, requests }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/hook", self.port)
    }

    fn requests(&self) -> usize {
        self.requests.load(Atomic::SeqCst)
    }
}

both_backends! {
    #[tokio::test]
    async fn a_private_ca_and_mutual_tls_per_endpoint(backing) {
        let e = backing.engine().await;
        let key = e.tenant().await;
        let ca = Ca::new();
        let plain = TlsReceiver::start(&ca, false).await;
        let mutual = TlsReceiver::start(&ca, true).await;
        let (cert, client_key) = ca.client("wasmhook");
        let sub = |url: String, tls: Value| {
            let mut s = json!({"url": url, "event_types": ["*"], "retry": {"preset": "convosphere"}});
            if !tls.is_null() {
                s["tls"] = tls;
            }
            s
        };
        let cases = [
            // (subscription, should succeed, what the error names)
            (sub(plain.url(), Value::Null), false, "tls"),
            (sub(plain.url(), json!({"ca": ca.pem()})), true, ""),
            (sub(mutual.url(), json!({"ca": ca.pem()})), false, ""),
            (
                sub(mutual.url(), json!({"ca": ca.pem(), "client_certificate": cert, "client_key": client_key})),
                true,
                "",
            ),
        ];
        for (i, (body, ok, named)) in cases.into_iter().enumerate() {
            let key = e.tenant().await;
            e.subscribe(&key, body.clone()).await;
            let ids = e.send(&key, message_event(&format!("tls{i}"))).await;
            e.worker.run_due().await;
            let d = e.delivery(&key, &ids[0]).await;
            let status = if ok { "succeeded" } else { "pending" };
            assert_eq!(d["status"], status, "case {i} {body}: {d}");
            if !ok {
                let error = d["last_error"].as_str().unwrap();
                assert!(error.contains(named), "case {i}: {error}");
            }
        }
        assert_eq!(plain.requests(), 1);
        assert_eq!(mutual.requests(), 1);
        let _ = key;
    }
}

/// `[delivery] ca_file`: a private CA trusted for every delivery of the
/// binary; without it the same receiver is refused.
#[tokio::test]
async fn a_private_ca_for_every_delivery_from_the_config() {
    let ca = Ca::new();
    let rx = TlsReceiver::start(&ca, false).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with(
        &data,
        &[],
        &[("WASMHOOK_DELIVERY_CA_FILE", ca_file.to_str().unwrap())],
    );
    let (_, key) = server.tenant("t").await;
    server
        .subscribe(&key, json!({"url": rx.url(), "event_types": ["*"]}))
        .await;
    let (status, body) = server
        .call("POST", "/v1/events", &key, Some(message_event("ca1")))
        .await;
    assert_eq!(status, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while rx.requests() == 0 {
        assert!(
            Instant::now() < deadline,
            "the private-CA receiver got nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(server);
    // A CA file that is not PEM stops the start with the key named.
    std::fs::write(&ca_file, "not a certificate").unwrap();
    let out = std::process::Command::new(crate::support::binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env("WASMHOOK_DELIVERY_CA_FILE", &ca_file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("delivery.ca_file"), "{stderr}");
}

/// A forward proxy for tests: CONNECT (https) and absolute-form (http).
/// It sends a request for port `p` on to `map[p]` on 127.0.0.1, so a
/// receiver reached through a mapped port was reached through the proxy.
/// Logs `METHOD host:port` per connection.
async fn start_proxy(map: HashMap<u16, u16>) -> (u16, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let map = map.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match client.read(&mut byte).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&byte[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let mut first = text.lines().next().unwrap_or("").split(' ');
                let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
                let authority = if method == "CONNECT" {
                    target.to_string()
                } else {
                    let rest = target.strip_prefix("http://").unwrap_or(target);
                    rest.split('/').next().unwrap_or("").to_string()
                };
                seen.lock().unwrap().push(format!("{method} {authority}"));
                let (host, asked) = authority.rsplit_once(':').unwrap_or((&authority, "80"));
                let asked: u16 = asked.parse().unwrap_or(80);
                let Some(real) = map.get(&asked).filter(|_| host == "127.0.0.1") else {
                    let _ = client
                        .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(("127.0.0.1", *real)).await
                else {
                    return;
                };
                if method == "CONNECT" {
                    let _ = client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await;
                } else if upstream.write_all(&head).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (port, log)
}

/// `[delivery] proxy`: every delivery goes through it (plain http in
/// absolute form, https through CONNECT), and the SSRF guard still decides
/// on each destination before the proxy is asked.
#[tokio::test]
async fn deliveries_go_through_the_egress_proxy_and_the_guard_still_decides() {
    let rx = Receiver::ok().await;
    let ca = Ca::new();
    let tls_rx = TlsReceiver::start(&ca, false).await;
    // Ports nothing listens on: only the proxy knows where they lead.
    let (http_port, https_port) = (free_port(), free_port());
    let (proxy_port, log) = start_proxy(HashMap::from([
        (http_port, rx.addr.port()),
        (https_port, tls_rx.port),
    ]))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let server = Server::start_guarded(
        dir.path(),
        &[],
        &[
            ("WASMHOOK_DELIVERY_PROXY", proxy.as_str()),
            ("WASMHOOK_DELIVERY_ALLOW_CIDRS", "127.0.0.1/32"),
        ],
    );
    let (_, key) = server.tenant("t").await;
    server
        .subscribe(
            &key,
            json!({"url": format!("http://127.0.0.1:{http_port}/hook"), "event_types": ["message.*"]}),
        )
        .await;
    server
        .subscribe(
            &key,
            json!({"url": format!("https://127.0.0.1:{https_port}/hook"), "event_types": ["message.*"],
                   "tls": {"ca": ca.pem()}}),
        )
        .await;
    // Private and not allowed: refused before the proxy is asked.
    let private = server
        .subscribe(
            &key,
            json!({"url": format!("http://127.0.0.2:{http_port}/hook"), "event_types": ["message.*"]}),
        )
        .await;
    for i in 0..5 {
        let (status, body) = server
            .call(
                "POST",
                "/v1/events",
                &key,
                Some(message_event(&format!("px{i}"))),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    rx.wait_for_ids(5, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while tls_rx.requests() < 5 {
        assert!(
            Instant::now() < deadline,
            "https through CONNECT: {}",
            tls_rx.requests()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let path = format!(
        "/v1/deliveries?subscription_id={}",
        private["id"].as_str().unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, page) = server.call("GET", &path, &key, None).await;
        let items = page["items"].as_array().unwrap();
        if items.len() == 5 && items.iter().all(|d| d["status"] == "failed") {
            let error = items[0]["last_error"].as_str().unwrap();
            assert!(
                error.contains("SSRF guard") && error.contains("127.0.0.2"),
                "{error}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = log.lock().unwrap().clone();
    assert!(
        log.iter().any(|l| l.starts_with("POST 127.0.0.1:")),
        "{log:?}"
    );
    assert!(
        log.iter().any(|l| l.starts_with("CONNECT 127.0.0.1:")),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.contains("127.0.0.2")), "{log:?}");
}

/// What the order-checking receiver saw.
#[derive(Default)]
struct OrderBook {
    /// Per conversation, the highest seq answered 200.
    acked: HashMap<String, u64>,
    /// Per conversation, requests being answered now.
    busy: HashMap<String, u32>,
    in_flight: u32,
    max_in_flight: u32,
    violations: Vec<String>,
    requests: usize,
}

/// A receiver that fails about one request in five (500) and checks that
/// each conversation's messages come in order, one at a time: a message
/// ahead of the next expected one, or two of one conversation at once, is
/// a violation. A message already acknowledged may come again (at least
/// once: an attempt a kill -9 cut short is sent again under its id).
async fn order_checking_receiver() -> (String, Arc<Mutex<OrderBook>>) {
    let book = Arc::new(Mutex::new(OrderBook::default()));
    let state = book.clone();
    let app = axum::Router::new().fallback(
        move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let book = state.clone();
            async move {
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let event: Value = serde_json::from_slice(&body).unwrap();
                let conv = event["data"]["conversation_id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let seq = event["data"]["seq"].as_u64().unwrap();
                {
                    let mut b = book.lock().unwrap();
                    b.requests += 1;
                    b.in_flight += 1;
                    b.max_in_flight = b.max_in_flight.max(b.in_flight);
                    let busy = b.busy.entry(conv.clone()).or_default();
                    *busy += 1;
                    if *busy > 1 {
                        b.violations
                            .push(format!("{conv}: two at once (seq {seq}, {id})"));
                    }
                }
                // Counted out even when the sender goes away mid-request (a
                // kill -9 drops the connection, and axum drops this future).
                struct Done(Arc<Mutex<OrderBook>>, String);
                impl Drop for Done {
                    fn drop(&mut self) {
                        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
                        b.in_flight -= 1;
                        *b.busy.get_mut(&self.1).unwrap() -= 1;
                    }
                }
                let done = Done(book.clone(), conv.clone());
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(done);
                let mut b = book.lock().unwrap();
                let acked = b.acked.get(&conv).copied().unwrap_or(0);
                if seq <= acked {
                    return axum::http::StatusCode::OK;
                }
                if seq > acked + 1 {
                    b.violations.push(format!(
                        "{conv}: seq {seq} before {} was acknowledged",
                        acked + 1
                    ));
                    return axum::http::StatusCode::CONFLICT;
                }
                if rand::random::<f64>() < 0.2 {
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                b.acked.insert(conv, seq);
                axum::http::StatusCode::OK
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, book)
}

both_backends! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_messages_over_fifty_conversations_arrive_in_order_through_failures_and_a_kill9(backing) {
        const CONVERSATIONS: u64 = 50;
        const PER_CONVERSATION: u64 = 20;
        let (url, book) = order_checking_receiver().await;
        let dir = tempfile::tempdir().unwrap();
        let server = backing.start(dir.path()).await;
        let (_, key) = server.tenant("t").await;
        server
            .subscribe(
                &key,
                json!({"url": url, "event_types": ["*"], "max_in_flight": 16,
                       "ordering": {"key": "/data/conversation_id"},
                       "retry": {"schedule_secs": vec![1; 20], "jitter": 0, "disable_after_failures": 0}}),
            )
            .await;
        // In acceptance order per conversation: round by round.
        let events: Vec<Value> = (1..=PER_CONVERSATION)
            .flat_map(|seq| {
                (0..CONVERSATIONS).map(move |c| conv_event(&format!("c{c}-{seq}"), &format!("c{c}"), seq))
            })
            .collect();
        let half = events.len() / 2;
        let send = |server: &Server, batch: &[Value]| {
            let batch = batch.to_vec();
            let (base, key) = (server.base.clone(), key.clone());
            async move {
                let http = reqwest::Client::new();
                for chunk in batch.chunks(50) {
                    // A 503 (JetStream slow to acknowledge on a loaded
                    // machine) is retried as a sender does, with the same
                    // ids (stored or not, each event is accepted once),
                    // before the next chunk: the order per conversation
                    // stays the acceptance order.
                    let mut tries = 0;
                    loop {
                        let response = http
                            .post(format!("{base}/v1/events/batch"))
                            .bearer_auth(&key)
                            .json(&json!({"events": chunk}))
                            .send()
                            .await
                            .unwrap();
                        tries += 1;
                        if response.status() == 503 && tries < 5 {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                        assert_eq!(response.status(), 202);
                        break;
                    }
                }
            }
        };
        send(&server, &events[..half]).await;
        // Kill -9 while lines are moving.
        let deadline = Instant::now() + Duration::from_secs(60);
        while book.lock().unwrap().requests < 150 {
            assert!(Instant::now() < deadline, "nothing arrives");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.kill9();
        let server = backing.start(dir.path()).await;
        send(&server, &events[half..]).await;
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            {
                let b = book.lock().unwrap();
                assert!(b.violations.is_empty(), "{:?}", b.violations);
                let done = b.acked.values().filter(|a| **a == PER_CONVERSATION).count();
                if done == CONVERSATIONS as usize {
                    assert!(
                        b.max_in_flight > 1,
                        "conversations went one at a time overall: {}",
                        b.max_in_flight
                    );
                    break;
                }
                assert!(Instant::now() < deadline, "{done} of {CONVERSATIONS} conversations complete");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Every delivery succeeded; none is left waiting in a line.
        let (_, blocked) = server
            .call("GET", "/v1/deliveries?status=blocked", &key, None)
            .await;
        assert_eq!(blocked["items"].as_array().unwrap().len(), 0, "{blocked}");
    }
}

/// A rate limit of 50/s, measured by the receiver over 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_as_the_receiver_measures_it() {
    let arrivals = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let seen = arrivals.clone();
    let app = axum::Router::new().fallback(move || {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(Instant::now());
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (_, key) = server.tenant("t").await;
    server
        .subscribe(
            &key,
            json!({"url": url, "event_types": ["*"], "max_in_flight": 32,
                   "rate_limit": {"per_second": 50, "burst": 5}}),
        )
        .await;
    let events: Vec<Value> = (0..700).map(|i| message_event(&format!("rl{i}"))).collect();
    for chunk in events.chunks(100) {
        let (status, body) = server
            .call(
                "POST",
                "/v1/events/batch",
                &key,
                Some(json!({"events": chunk})),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    tokio::time::sleep(Duration::from_secs(12)).await;
    let arrivals = arrivals.lock().unwrap().clone();
    let start = arrivals[0] + Duration::from_secs(1);
    let end = start + Duration::from_secs(10);
    let in_window = arrivals
        .iter()
        .filter(|t| **t >= start && **t < end)
        .count();
    assert!(
        (450..=550).contains(&in_window),
        "{in_window} deliveries in 10 s at 50/s"
    );
}

/// A plugin that splits each event into three requests: the parts keep
/// their order within the conversation, across a failure of the first,
/// and a replay joins the end of the line.
#[tokio::test]
async fn a_plugins_split_requests_keep_their_order_and_a_replay_joins_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (_, key) = server.tenant("t").await;
    let plugin = server
        .upload_plugin(&key, "name=splitter", crate::support::fixture("hostile"))
        .await;
    let rx = Receiver::start(vec![Answer::status(500)], Answer::status(200)).await;
    let sub = server
        .subscribe(
            &key,
            json!({"url": rx.url(), "event_types": ["*"],
                   "plugin": {"id": plugin["id"], "config": {"mode": "split"}},
                   "ordering": {"key": "/data/conversation_id"},
                   "retry": {"schedule_secs": [1, 1, 1], "jitter": 0}}),
        )
        .await;
    for seq in 1..=2 {
        let (status, body) = server
            .call(
                "POST",
                "/v1/events",
                &key,
                Some(conv_event(&format!("s{seq}"), "S", seq)),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let parts = |n: usize| {
        let rx = rx.clone();
        async move {
            rx.wait_for(n, Duration::from_secs(20))
                .await
                .iter()
                .map(|r| {
                    let body = r.json();
                    let event: Value = match &body["event"] {
                        Value::String(text) => serde_json::from_str(text).unwrap(),
                        other => other.clone(),
                    };
                    // The plugin sees the event's data (or its envelope).
                    let seq = event["data"]["seq"]
                        .as_u64()
                        .or(event["seq"].as_u64())
                        .unwrap();
                    (seq, body["part"].as_u64().unwrap())
                })
                .collect::<Vec<_>>()
        }
    };
    // The first part failed once and went again before anything behind it.
    assert_eq!(
        parts(7).await,
        [(1, 0), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    );
    // A replay of both events: their new deliveries go in order, after.
    let (status, body) = server
        .call(
            "POST",
            &format!("/v1/subscriptions/{}/replay", sub["id"].as_str().unwrap()),
            &key,
            Some(json!({"since": "2000-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deliveries"], 6);
    let all = parts(13).await;
    assert_eq!(all[7..], [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]);
}

both_backends! {
    #[tokio::test]
    async fn a_deleted_subscriptions_lines_drain_even_under_block(backing) {
        let e = backing.engine().await;
        let key = e.tenant().await;
        let rx = Receiver::start(vec![Answer::status(500)], Answer::status(200)).await;
        let sub = e.subscribe(&key, ordered(&rx.url(), "block")).await;
        let d1 = e.send(&key, conv_event("d1", "D", 1)).await;
        let d2 = e.send(&key, conv_event("d2", "D", 2)).await;
        e.worker.run_due().await;
        assert_eq!(e.delivery(&key, &d2[0]).await["status"], "blocked");
        let (status, _) = e
            .call("DELETE", &format!("/v1/subscriptions/{}", sub["id"].as_str().unwrap()), &key, None)
            .await;
        assert_eq!(status, 204);
        e.clock.advance(Duration::from_secs(61));
        e.worker.run_due().await;
        for id in [&d1, &d2] {
            let d = e.delivery(&key, &id[0]).await;
            assert_eq!(d["status"], "failed", "{d}");
            assert_eq!(d["last_error"], "subscription deleted");
            assert!(d.get("line").is_none(), "the line is gone: {d}");
        }
    }
}

both_backends! {
    #[tokio::test]
    async fn stale_records_a_second_retry_and_deleted_subscriptions_never_break_a_line(backing) {
        use wasmhook::clock::Clock;
        let e = backing.engine().await;
        let key = e.tenant().await;
        let store = e.app.store.clone();
        // z1 goes and its line empties; z2 starts the line again at the
        // same place, fails once; z3 waits behind it.
        let rx = Receiver::start(vec![Answer::status(200), Answer::status(500)], Answer::status(200)).await;
        e.subscribe(&key, ordered(&rx.url(), "block")).await;
        let z1 = e.send(&key, conv_event("z1", "Z", 1)).await;
        e.worker.run_due().await;
        let z2 = e.send(&key, conv_event("z2", "Z", 2)).await;
        let z3 = e.send(&key, conv_event("z3", "Z", 3)).await;
        e.worker.run_due().await;
        assert_eq!(e.delivery(&key, &z2[0]).await["status"], "pending");
        // A stale final record of z1 (an outbox entry a crash left behind)
        // holds the same place number as z2: the line must not move.
        let stale = store.get_delivery(&z1[0]).unwrap().unwrap();
        assert_eq!(store.record_delivery(&stale, None).await.unwrap(), None);
        assert_eq!(e.delivery(&key, &z3[0]).await["status"], "blocked");
        e.clock.advance(Duration::from_secs(61));
        e.worker.run_due().await;
        assert_eq!(arrivals(&rx)["Z"], [1, 2, 2, 3]);

        // Two retries of one stopped head (a double click): the second
        // finds it no longer finished and changes nothing.
        let rx = Receiver::start(vec![Answer::status(400)], Answer::status(200)).await;
        let key = e.tenant().await;
        let sub = e.subscribe(&key, ordered(&rx.url(), "block")).await;
        let h1 = e.send(&key, conv_event("h1", "H", 1)).await;
        let h2 = e.send(&key, conv_event("h2", "H", 2)).await;
        e.worker.run_due().await;
        let mut head = store.get_delivery(&h1[0]).unwrap().unwrap();
        head.status = wasmhook::store::DeliveryStatus::Pending;
        head.next_attempt_at = Some(e.clock.now());
        assert!(e.app.queue.requeue(&head).await.unwrap().is_some());
        assert!(e.app.queue.requeue(&head).await.unwrap().is_none(), "the second retry");
        e.worker.run_due().await;
        assert_eq!(arrivals(&rx)["H"], [1, 1, 2]);

        // A stopped line whose subscription is deleted: the prune fails
        // what waits in it and drops the line.
        let rx = Receiver::start(vec![Answer::status(400)], Answer::status(200)).await;
        let sub2 = e.subscribe(&key, ordered(&rx.url(), "block")).await;
        let _ = sub;
        let g1 = e.send(&key, conv_event("g1", "G", 1)).await;
        let g2: Vec<String> = e
            .send(&key, conv_event("g2", "G", 2))
            .await
            .into_iter()
            .filter(|id| !h1.contains(id) && !h2.contains(id))
            .collect();
        e.worker.run_due().await;
        let g1 = g1
            .into_iter()
            .find(|id| store.get_delivery(id).unwrap().unwrap().subscription_id == sub2["id"])
            .unwrap();
        let g2 = g2
            .into_iter()
            .find(|id| store.get_delivery(id).unwrap().unwrap().subscription_id == sub2["id"])
            .unwrap();
        assert_eq!(e.delivery(&key, &g1).await["line"]["stopped"], true);
        let (status, _) = e
            .call("DELETE", &format!("/v1/subscriptions/{}", sub2["id"].as_str().unwrap()), &key, None)
            .await;
        assert_eq!(status, 204);
        store.prune(jiff::Timestamp::UNIX_EPOCH).await.unwrap();
        let d = e.delivery(&key, &g2).await;
        assert_eq!(d["status"], "failed", "{d}");
        assert_eq!(d["last_error"], "subscription deleted");
        assert!(e.delivery(&key, &g1).await.get("line").is_none());
    }
}

/// `[delivery] no_proxy`: a listed destination is reached directly (the
/// proxy sees nothing), through the same resolver guard.
#[tokio::test]
async fn no_proxy_destinations_are_reached_directly() {
    let rx = Receiver::ok().await;
    let (proxy_port, log) = start_proxy(HashMap::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let server = Server::start_guarded(
        dir.path(),
        &[],
        &[
            ("WASMHOOK_DELIVERY_PROXY", proxy.as_str()),
            ("WASMHOOK_DELIVERY_NO_PROXY", "127.0.0.1"),
            ("WASMHOOK_DELIVERY_ALLOW_CIDRS", "127.0.0.1/32"),
        ],
    );
    let (_, key) = server.tenant("t").await;
    server
        .subscribe(&key, json!({"url": rx.url(), "event_types": ["*"]}))
        .await;
    let (status, body) = server
        .call("POST", "/v1/events", &key, Some(message_event("np1")))
        .await;
    assert_eq!(status, 202, "{body}");
    rx.wait_for_ids(1, Duration::from_secs(20)).await;
    assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());
}
