//! Backups and upgrades of the embedded store, through the binaries: a
//! store written by the previous release opens and delivers what it had
//! pending; a store of a newer format is refused with both versions
//! named; a backup taken under load is one moment of the store, and a
//! restore of it (after the server was killed) delivers every pending
//! delivery under its id.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;
use crate::support::{binary, repo_root};

/// The API key and subscription in `tests/fixtures/stores/format-0.tar.gz`
/// (its README says how it was made).
const OLD_KEY: &str = "whk_fd87619df9c72f8b21f86527cd43c0c05bc21ee9e7caa26b386549591047790d";
const OLD_SUBSCRIPTION: &str = "sub_01m96wf5b8p5f4a6b4g1nmk6w1";

fn untar(fixture: &str, into: &std::path::Path) {
    std::fs::create_dir_all(into).unwrap();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(repo_root().join("tests/fixtures/stores").join(fixture))
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(status.success());
}

/// The previous release's store (no format marker: format 0) opens with
/// this build, is marked with this format, and its pending delivery —
/// made by the previous release — is delivered under its id, signed with
/// the subscription's secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_from_the_previous_release_opens_and_delivers_what_it_had_pending() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    untar("format-0.tar.gz", &data);
    let server = Server::start(&data);
    let (status, event) = server
        .call("GET", "/v1/events/evt_lead_31305", OLD_KEY, None)
        .await;
    assert_eq!(status, 200, "{event}");
    let delivery = event["deliveries"][0].as_str().unwrap().to_string();
    let (_, d) = server
        .call("GET", &format!("/v1/deliveries/{delivery}"), OLD_KEY, None)
        .await;
    assert_eq!(d["status"], "pending", "{d}");
    let rx = Receiver::ok().await;
    let (status, body) = server
        .call(
            "PATCH",
            &format!("/v1/subscriptions/{OLD_SUBSCRIPTION}"),
            OLD_KEY,
            Some(json!({"url": rx.url()})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Its next retry (every 2 s) goes to the receiver.
    let got = &rx.wait_for(1, PATIENCE).await[0];
    assert_eq!(got.header("webhook-id"), delivery);
    let (_, secret) = server
        .call(
            "GET",
            &format!("/v1/subscriptions/{OLD_SUBSCRIPTION}/secret"),
            OLD_KEY,
            None,
        )
        .await;
    assert_eq!(
        verify_standard(secret["secret"].as_str().unwrap(), got),
        1,
        "{secret}"
    );
    assert!(server.stop().success());
    let store = wasmhook::store::Store::open(&data).unwrap();
    let mark = store.format().unwrap().expect("marked at its first open");
    assert_eq!(mark.format, wasmhook::store::backup::FORMAT);
    assert_eq!(mark.written_by, env!("CARGO_PKG_VERSION"));
}

/// A store marked by a newer wasmhook is refused at start, before any
/// record is read, with both formats and the writer's version named.
#[test]
fn a_store_of_a_newer_format_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let store = wasmhook::store::Store::open(&data).unwrap();
        store
            .meta_put("format", br#"{"format": 99, "written_by": "9.9.9"}"#)
            .unwrap();
        store.flush().unwrap();
    }
    // The committer thread lets go of the database once the store is gone.
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env("WASMHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("WASMHOOK_SERVER_SECRETS_KEY", SECRETS_KEY)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("format 99")
            && err.contains("9.9.9")
            && err.contains(&format!(
                "reads formats up to {}",
                wasmhook::store::backup::FORMAT
            )),
        "{err}"
    );
}

/// `wasmhook backup` while events stream in: every event acknowledged
/// before it started is in it, and every event in it comes with its
/// delivery and every delivery with its event (one moment, never half an
/// acceptance). The server is then killed; `wasmhook restore` into a new
/// directory, a server on it, and every pending delivery of the backup
/// arrives under its own id. The file is 0600 and holds no secret in
/// clear; a damaged file and a used directory are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_restores_whole_and_delivers_its_pending_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("a"));
    let (_, key) = server.tenant("backed-up").await;
    // Pending until the restore: a dead port, retried every second.
    let sub = server
        .subscribe(
            &key,
            json!({"url": dead_port_url(), "event_types": ["message.*"],
                   "retry": {"schedule_secs": vec![1; 20], "jitter": 0.0}}),
        )
        .await;
    let secret = sub["secret"].as_str().unwrap().to_string();
    // Senders, until told to stop: each event's acknowledgement time.
    let acked: std::sync::Arc<std::sync::Mutex<Vec<(String, Instant)>>> = Default::default();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = vec![];
    for s in 0..4 {
        let (base, key, acked, stop) = (
            server.base.clone(),
            key.clone(),
            acked.clone(),
            stop.clone(),
        );
        senders.push(tokio::spawn(async move {
            let http = crate::support::http_client();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 400 {
                let id = format!("evt_b{s}_{n}");
                let r = http
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(&key)
                    .json(&message_event(&id))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == 202) {
                    acked.lock().unwrap().push((id, Instant::now()));
                }
                n += 1;
            }
        }));
    }
    while acked.lock().unwrap().len() < 50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let file = dir.path().join("store.backup");
    let started = Instant::now();
    let out = {
        let (file, base) = (file.clone(), server.base.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(binary())
                .arg("backup")
                .arg(&file)
                .args(["--json", "--server", &base])
                .env("WASMHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
                .env("WASMHOOK_CLI_CONFIG", "/nonexistent/cli.toml")
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(saved["format"], wasmhook::store::backup::FORMAT);
    // Events keep coming a moment after; then the server dies.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    server.kill9();
    let before: Vec<String> = acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, at)| *at < started)
        .map(|(id, _)| id.clone())
        .collect();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the signing secret in clear in the backup"
    );

    // Damaged files and a used directory are refused.
    let restore = |from: &std::path::Path, into: &std::path::Path| {
        Command::new(binary())
            .arg("restore")
            .arg(from)
            .arg("--data")
            .arg(into)
            .output()
            .unwrap()
    };
    let cut = dir.path().join("cut.backup");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = restore(&cut, &dir.path().join("x"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cut short"));
    let flipped = dir.path().join("flipped.backup");
    let mut altered = bytes.clone();
    let middle = altered.len() / 2;
    altered[middle] ^= 0x20;
    std::fs::write(&flipped, &altered).unwrap();
    let out = restore(&flipped, &dir.path().join("y"));
    assert!(!out.status.success());
    assert!(
        !dir.path().join("y").join("db").exists(),
        "nothing written from a damaged file"
    );
    let out = restore(&file, &dir.path().join("a"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds files"));

    let out = restore(&file, &dir.path().join("b"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = Server::start(&dir.path().join("b"));
    // One moment: each event with its delivery, each delivery with its event.
    let mut deliveries: HashMap<String, String> = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/deliveries?limit=500&cursor={c}"),
            None => "/v1/deliveries?limit=500".to_string(),
        };
        let (status, page) = server.call("GET", &path, &key, None).await;
        assert_eq!(status, 200, "{page}");
        for d in page["items"].as_array().unwrap() {
            deliveries.insert(
                d["id"].as_str().unwrap().to_string(),
                d["event_id"].as_str().unwrap().to_string(),
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let events: HashSet<&String> = deliveries.values().collect();
    assert_eq!(events.len(), deliveries.len(), "one delivery per event");
    for id in &before {
        assert!(
            events.contains(id),
            "{id} was acknowledged before the backup"
        );
    }
    for event in &events {
        let (status, e) = server
            .call("GET", &format!("/v1/events/{event}"), &key, None)
            .await;
        assert_eq!(status, 200, "{event}: {e}");
        for d in e["deliveries"].as_array().unwrap() {
            assert!(deliveries.contains_key(d.as_str().unwrap()), "{e}");
        }
    }
    // Delivered once the endpoint is back, each under its own id.
    let rx = Receiver::ok().await;
    let (status, body) = server
        .call(
            "PATCH",
            &format!("/v1/subscriptions/{}", sub["id"].as_str().unwrap()),
            &key,
            Some(json!({"url": rx.url()})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let got = rx.wait_for_ids(deliveries.len(), PATIENCE).await;
    let got: HashSet<&String> = got.keys().collect();
    let expected: HashSet<&String> = deliveries.keys().collect();
    assert_eq!(got, expected);
}
