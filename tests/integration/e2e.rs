//! Through the real binary: signatures checked by an independent HMAC
//! implementation, secret rotation, and the crash test (kill -9 mid-stream,
//! restart, every accepted event delivered).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::harness::*;

both_backends! {
    #[tokio::test]
    async fn signatures_of_all_three_schemes_verify_independently(backing) {
        let dir = tempfile::tempdir().unwrap();
        let server = backing.start(dir.path()).await;
        let (_, key) = server.tenant("sig").await;
        let standard_rx = Receiver::ok().await;
        let hello_rx = Receiver::ok().await;
        let owc_rx = Receiver::ok().await;
        let standard = server
            .subscribe(
                &key,
                json!({"url": standard_rx.url(), "event_types": ["lead.created"]}),
            )
            .await;
        let hello = server
            .subscribe(
                &key,
                json!({"url": hello_rx.url(), "event_types": ["lead.created"],
                       "plugin": {"id": "builtin:helloclient-lead"},
                       "signature": {"scheme": "timestamped-hex"}}),
            )
            .await;
        let owc = server
            .subscribe(
                &key,
                json!({"url": owc_rx.url(), "event_types": ["lead.*"],
                       "signature": {"scheme": "body-hex", "header": "X-OHallo-Signature"},
                       "secret": "ohallo-shared-secret-123"}),
            )
            .await;
        let lead = std::fs::read(crate::support::repo_root().join("examples/lead.json")).unwrap();
        let (status, _) = server
            .raw("POST", "/v1/events", &key, "application/json", lead)
            .await;
        assert_eq!(status, 202);

        let r = &standard_rx.wait_for(1, PATIENCE).await[0];
        assert_eq!(verify_standard(standard["secret"].as_str().unwrap(), r), 1);
        assert!(r.header("webhook-id").starts_with("dlv_"));
        let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
        assert!((ts - jiff::Timestamp::now().as_second()).abs() < 60);

        // Hello Client: t=<unix>,v1=<hex HMAC of "t.body">, keyed by the secret string.
        let r = &hello_rx.wait_for(1, PATIENCE).await[0];
        let header = r.header("x-webhook-signature");
        let (t, v1) = header
            .strip_prefix("t=")
            .and_then(|rest| rest.split_once(",v1="))
            .unwrap_or_else(|| panic!("bad header {header}"));
        let secret = hello["secret"].as_str().unwrap();
        let signed = format!("{t}.{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            v1,
            hex::encode(hmac_sha256(secret.as_bytes(), signed.as_bytes()))
        );
        // Hello Client's sample verifies JSON.stringify(req.body): compact JSON
        // re-serialised in order must equal the bytes sent.
        let reserialized = serde_json::to_string(&r.json()).unwrap();
        assert_eq!(reserialized.as_bytes(), &r.body[..]);

        // body-hex with the oHallo header name and a given secret.
        let r = &owc_rx.wait_for(1, PATIENCE).await[0];
        assert_eq!(
            r.header("x-ohallo-signature"),
            hex::encode(hmac_sha256(b"ohallo-shared-secret-123", &r.body))
        );
        assert_eq!(r.header("x-owc-event"), "lead.created");
        assert!(r.header("x-owc-delivery").starts_with("dlv_"));
        assert_eq!(owc["signature"]["header"], "X-OHallo-Signature");
    }
}

both_backends! {
    #[tokio::test]
    async fn after_a_rotation_old_and_new_secrets_both_sign(backing) {
        let dir = tempfile::tempdir().unwrap();
        let server = backing.start(dir.path()).await;
        let (_, key) = server.tenant("rot").await;
        let rx = Receiver::ok().await;
        let sub = server
            .subscribe(&key, json!({"url": rx.url(), "event_types": ["*"]}))
            .await;
        let old = sub["secret"].as_str().unwrap().to_string();
        let (status, rotated) = server
            .call(
                "POST",
                &format!(
                    "/v1/subscriptions/{}/rotate-secret",
                    sub["id"].as_str().unwrap()
                ),
                &key,
                None,
            )
            .await;
        assert_eq!(status, 200, "{rotated}");
        let new = rotated["secret"].as_str().unwrap().to_string();
        assert_ne!(old, new);
        assert_eq!(rotated["previous"][0]["secret"], old.as_str());
        let (status, _) = server
            .call("POST", "/v1/events", &key, Some(message_event("rot1")))
            .await;
        assert_eq!(status, 202);
        let r = &rx.wait_for(1, PATIENCE).await[0];
        assert_eq!(r.header("webhook-signature").split(' ').count(), 2);
        assert_eq!(verify_standard(&new, r), 1);
        assert_eq!(verify_standard(&old, r), 1);
    }
}

both_backends! {
    /// Start the binary, send events concurrently, kill -9 it mid-stream,
    /// restart on the same data dir: every event answered 202 is delivered
    /// (each delivery id at least once).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_accepted_event_survives_kill_9(backing) {
        let dir = tempfile::tempdir().unwrap();
        let server = backing.start(dir.path()).await;
        let (_, key) = server.tenant("crash").await;
        // The receiver is slow enough that deliveries are still pending at the kill.
        let rx = Receiver::start(vec![], Answer::status(200).delay(Duration::from_millis(20))).await;
        server
            .subscribe(&key, json!({"url": rx.url(), "event_types": ["*"], "retry": {"schedule_secs": [1, 2, 5, 10, 30]}}))
            .await;

        let accepted = Arc::new(std::sync::Mutex::new(HashSet::new()));
        let client = crate::support::http_client();
        let mut senders = Vec::new();
        for worker in 0..8 {
            let (client, base, key, accepted) = (
                client.clone(),
                server.base.clone(),
                key.clone(),
                accepted.clone(),
            );
            senders.push(tokio::spawn(async move {
                for i in 0..1000 {
                    let id = format!("crash-{worker}-{i}");
                    let sent = client
                        .post(format!("{base}/v1/events"))
                        .bearer_auth(&key)
                        .json(&message_event(&id))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().as_u16() == 202 => {
                            accepted.lock().unwrap().insert(id);
                        }
                        // The server died under us: stop sending.
                        _ => return,
                    }
                }
            }));
        }
        // Let a few hundred events in, then pull the plug.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while accepted.lock().unwrap().len() < 300 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.kill9();
        for s in senders {
            s.await.unwrap();
        }
        let accepted = accepted.lock().unwrap().clone();
        assert!(
            accepted.len() >= 100,
            "only {} accepted before the kill",
            accepted.len()
        );
        let delivered_before = rx.received().len();
        eprintln!(
            "crash test: {} events accepted before kill -9, {delivered_before} delivered before it",
            accepted.len()
        );

        let server = backing.start(dir.path()).await;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let delivered: HashSet<String> = rx
                .received()
                .iter()
                .map(|r| r.json()["id"].as_str().unwrap().to_string())
                .collect();
            let missing: Vec<_> = accepted.difference(&delivered).collect();
            if missing.is_empty() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{} of {} accepted events never delivered, e.g. {:?} (delivered before the kill: {delivered_before})",
                    missing.len(),
                    accepted.len(),
                    &missing[..missing.len().min(5)]
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Each delivery kept its id across the restart.
        let ids: HashSet<String> = rx
            .received()
            .iter()
            .map(|r| r.header("webhook-id"))
            .collect();
        assert!(ids.len() >= accepted.len());
        assert!(server.stop().success());
    }
}

both_backends! {
    /// SIGTERM: in-flight attempts get the grace period, the process exits, and
    /// what was not finished is delivered after the restart.
    #[tokio::test]
    async fn graceful_shutdown_leaves_unfinished_work_due(backing) {
        let dir = tempfile::tempdir().unwrap();
        let env = [("WASMHOOK_DELIVERY_SHUTDOWN_GRACE_SECS", "1")];
        let server = backing.start_with(dir.path(), &[], &env).await;
        let (_, key) = server.tenant("shutdown").await;
        // The first two attempts would hang for ten minutes, under a
        // two-minute attempt timeout: only the grace period can end them.
        let slow = Answer::status(200).delay(Duration::from_secs(600));
        let rx = Receiver::start(vec![slow.clone(), slow], Answer::status(200)).await;
        server
            .subscribe(
                &key,
                json!({"url": rx.url(), "event_types": ["*"], "max_in_flight": 2, "timeout_ms": 120000}),
            )
            .await;
        for i in 0..5 {
            let (s, _) = server
                .call(
                    "POST",
                    "/v1/events",
                    &key,
                    Some(message_event(&format!("sd{i}"))),
                )
                .await;
            assert_eq!(s, 202);
        }
        rx.wait_for(2, PATIENCE).await;
        let started = std::time::Instant::now();
        assert!(server.stop().success());
        let took = started.elapsed();
        // Far below the attempts' two minutes, however slow the machine.
        assert!(
            took < PATIENCE,
            "shutdown took {took:?} with a 1 s grace"
        );

        let _server = backing.start_with(dir.path(), &[], &env).await;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let ids: HashSet<String> = rx
                .received()
                .iter()
                .map(|r| r.header("webhook-id"))
                .collect();
            let events: HashSet<String> = rx
                .received()
                .iter()
                .map(|r| r.json()["id"].as_str().unwrap().to_string())
                .collect();
            if events.len() == 5 {
                assert_eq!(ids.len(), 5);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {events:?} delivered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A SIGTERM the moment the server says it listens, before anything else
/// happens, is a graceful stop (exit 0), not a kill: the handlers are in
/// place before the listener answers.
#[test]
fn a_sigterm_right_after_start_is_a_graceful_stop() {
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path());
        let status = server.stop();
        assert!(status.success(), "{status:?}");
    }
}

/// What wasmhook signs, checked by other people's code: the Standard
/// Webhooks reference library (PyPI) for `v1` (with and without the
/// `whsec_` prefix), `cryptography`'s ed25519 for an asymmetric key's `v1a`
/// with the public key the API shows, Python's hmac for Chatwoot's scheme.
/// Then a rotation to a new asymmetric key: both keys sign in the grace.
#[tokio::test]
async fn signatures_verify_with_the_reference_libraries() {
    let python = crate::support::python_with(
        "signatures",
        &["standardwebhooks==1.3.0", "cryptography>=42"],
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (_, key) = server.tenant("refs").await;
    let receivers = [
        Receiver::ok().await,
        Receiver::ok().await,
        Receiver::ok().await,
    ];
    let v1 = server
        .subscribe(
            &key,
            json!({"url": receivers[0].url(), "event_types": ["lead.created"]}),
        )
        .await;
    let v1a = server
        .subscribe(
            &key,
            json!({"url": receivers[1].url(), "event_types": ["lead.created"], "asymmetric": true}),
        )
        .await;
    let chatwoot = server
        .subscribe(
            &key,
            json!({"url": receivers[2].url(), "event_types": ["lead.created"],
                   "signature": {"scheme": "chatwoot"}, "secret": "cw-webhook-secret-24chr"}),
        )
        .await;
    let public = v1a["public_key"].as_str().unwrap().to_string();
    assert!(public.starts_with("whpk_"), "{v1a}");
    assert!(
        v1a["secret"].as_str().unwrap().starts_with("whsk_"),
        "{v1a}"
    );
    assert!(v1.get("public_key").is_none(), "{v1}");
    assert_eq!(chatwoot["signature"]["scheme"], "chatwoot", "{chatwoot}");

    let lead = std::fs::read(crate::support::repo_root().join("examples/lead.json")).unwrap();
    let (status, _) = server
        .raw("POST", "/v1/events", &key, "application/json", lead.clone())
        .await;
    assert_eq!(status, 202);
    let mut cases = Vec::new();
    for (rx, kind, key) in [
        (&receivers[0], "v1", v1["secret"].as_str().unwrap()),
        (&receivers[1], "v1a", public.as_str()),
        (&receivers[2], "chatwoot", "cw-webhook-secret-24chr"),
    ] {
        let r = &rx.wait_for(1, PATIENCE).await[0];
        cases.push(captured(kind, key, r));
    }

    // The rotation's body: hostile or contradictory input is a 400, another
    // tenant's key a 404, and neither changes the key.
    let id = v1a["id"].as_str().unwrap();
    let rotate = format!("/v1/subscriptions/{id}/rotate-secret");
    for body in [
        &b"{not json"[..],
        br#"{"nope": 1}"#,
        br#"{"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "asymmetric": true}"#,
        br#"{"asymmetric": "yes"}"#,
    ] {
        let (status, answer) = server
            .raw("POST", &rotate, &key, "application/json", body.to_vec())
            .await;
        assert_eq!(status, 400, "{answer}");
    }
    let (_, other) = server.tenant("refs-other").await;
    let (status, _) = server
        .call("POST", &rotate, &other, Some(json!({"asymmetric": true})))
        .await;
    assert_eq!(status, 404);
    let (status, shown) = server
        .call("GET", &format!("/v1/subscriptions/{id}"), &key, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(shown["public_key"], public.as_str(), "the key is unchanged");

    // Rotate the asymmetric subscription to a new key: the response shows
    // both public keys, and the next delivery carries both signatures.
    let (status, rotated) = server
        .call(
            "POST",
            &format!("/v1/subscriptions/{id}/rotate-secret"),
            &key,
            Some(json!({"asymmetric": true})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_public = rotated["public_key"].as_str().unwrap().to_string();
    assert_ne!(new_public, public);
    assert_eq!(rotated["previous"][0]["public_key"], public.as_str());
    // The same lead again under a new id (the first id would be a duplicate).
    let mut again: serde_json::Value = serde_json::from_slice(&lead).unwrap();
    again["id"] = json!("lead-after-rotation");
    let (status, _) = server.call("POST", "/v1/events", &key, Some(again)).await;
    assert_eq!(status, 202);
    let second = &receivers[1].wait_for(2, PATIENCE).await[1];
    assert_eq!(
        second.header("webhook-signature").matches("v1a,").count(),
        2
    );
    cases.push(captured("v1a", &public, second));
    cases.push(captured("v1a", &new_public, second));

    let file = dir.path().join("captured.json");
    std::fs::write(&file, serde_json::to_vec(&cases).unwrap()).unwrap();
    let out = std::process::Command::new(&python)
        .arg(crate::support::repo_root().join("tests/scripts/verify_signatures.py"))
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("ok ").count(), 5, "{stdout}");
}

/// One received request as the verification script reads it.
fn captured(kind: &str, key: &str, r: &Received) -> serde_json::Value {
    use base64::Engine as _;
    let headers: serde_json::Map<String, serde_json::Value> = r
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), json!(v.to_str().unwrap())))
        .collect();
    json!({
        "kind": kind,
        "key": key,
        "headers": headers,
        "body_b64": base64::engine::general_purpose::STANDARD.encode(&r.body),
    })
}
