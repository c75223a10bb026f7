//! Poll sources against a real local API (axum on loopback) that pages its
//! `updatedSince` list, changes items, fails for a while and rate-limits:
//! every change delivered once, nothing twice after a `kill -9` in the
//! middle of a poll; the egress guard, the bearer token and bad settings.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::harness::*;

pub(crate) const TOKEN: &str = "sf_live_v1_test_token";
const PAGE: usize = 2;

/// An oHallo-like conversations API: items sorted by `updatedAt`,
/// `updatedSince` inclusive, pages of two with a `next` cursor.
#[derive(Default)]
pub(crate) struct Api {
    items: Mutex<Vec<Value>>,
    /// Answer 500 to this many requests.
    failing: AtomicU32,
    /// Answer 429 (`Retry-After: 1`) to this many requests.
    limited: AtomicU32,
    /// Hold a request for a second page (the test kills the server then).
    hold_second_page: AtomicBool,
    requests: AtomicU32,
    unauthorized: AtomicU32,
    /// Name this absolute URL as the next page instead of a cursor.
    next_url: Mutex<Option<String>>,
}

impl Api {
    pub(crate) fn put(&self, id: &str, status: &str, created: &str, updated: &str) {
        let mut items = self.items.lock().unwrap();
        items.retain(|i| i["id"] != id);
        items.push(json!({"id": id, "status": status, "createdAt": created, "updatedAt": updated}));
        items.sort_by(|a, b| {
            (a["updatedAt"].as_str(), a["id"].as_str())
                .cmp(&(b["updatedAt"].as_str(), b["id"].as_str()))
        });
    }
}

async fn conversations(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    api.requests.fetch_add(1, Ordering::SeqCst);
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {TOKEN}"))
    {
        api.unauthorized.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let take = |n: &AtomicU32| {
        n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
            .is_ok()
    };
    if take(&api.failing) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "down for a while").into_response();
    }
    if take(&api.limited) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        )
            .into_response();
    }
    let offset: usize = q.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    if offset > 0 && api.hold_second_page.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    let since = q.get("updatedSince").cloned().unwrap_or_default();
    let items: Vec<Value> = api
        .items
        .lock()
        .unwrap()
        .iter()
        .filter(|i| i["updatedAt"].as_str().unwrap() >= since.as_str())
        .cloned()
        .collect();
    let page: Vec<Value> = items.iter().skip(offset).take(PAGE).cloned().collect();
    let next = (offset + PAGE < items.len()).then(|| {
        api.next_url
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| (offset + PAGE).to_string())
    });
    axum::Json(json!({"items": page, "next": next})).into_response()
}

pub(crate) async fn start_api(api: Arc<Api>) -> String {
    let app = axum::Router::new()
        .route("/api/conversations", axum::routing::get(conversations))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/api/conversations?workspaceId=w1")
}

/// Event ids of what the receiver got (the Standard Webhooks form carries
/// the event's id), with how many deliveries (distinct `webhook-id`s) each
/// was routed to. A delivery may arrive twice (a kill -9 between the
/// receiver's answer and its record: at least once, the same id); an event
/// routed twice would have two.
fn event_counts(rx: &Receiver) -> HashMap<String, usize> {
    let mut deliveries: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    for r in rx.received() {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        deliveries
            .entry(body["id"].as_str().unwrap().to_string())
            .or_default()
            .insert(r.header("webhook-id"));
    }
    deliveries.into_iter().map(|(e, d)| (e, d.len())).collect()
}

async fn wait_for_events(rx: &Receiver, n: usize) -> HashMap<String, usize> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let counts = event_counts(rx);
        if counts.len() >= n {
            return counts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} events, got {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn poll_state(server: &Server, key: &str, id: &str) -> Value {
    let (status, source) = server
        .call("GET", &format!("/v1/sources/{id}"), key, None)
        .await;
    assert_eq!(status, 200, "{source}");
    source["poll_state"].clone()
}

/// The source's `poll_state` once `done` holds for it (fails after
/// [`PATIENCE`], showing the last state).
async fn poll_state_when(
    server: &Server,
    key: &str,
    id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let state = poll_state(server, key, id).await;
        if done(&state) {
            return state;
        }
        assert!(tokio::time::Instant::now() < deadline, "{state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_polled_api_is_delivered_once_per_change_through_failures_and_a_kill_9() {
    let api = Arc::new(Api::default());
    api.put("c1", "open", "2026-12-01T10:00:00Z", "2026-12-01T10:00:00Z");
    api.put("c2", "open", "2026-12-01T10:01:00Z", "2026-12-01T10:01:00Z");
    api.put("c3", "open", "2026-12-01T10:02:00Z", "2026-12-01T10:02:00Z");
    api.failing.store(2, Ordering::SeqCst);
    let url = start_api(api.clone()).await;

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (_, key) = server.tenant("poller").await;
    let rx = Receiver::ok().await;
    server
        .subscribe(
            &key,
            json!({"url": rx.url(), "event_types": ["conversation.*"]}),
        )
        .await;
    let (status, source) = server
        .call(
            "POST",
            "/v1/sources",
            &key,
            Some(json!({"kind": "poll", "secret": TOKEN,
                        "poll": {"url": url, "every_secs": 1, "format": "ohallo-conversation",
                                 "next": "/next", "headers": {"X-Workspace": "w1"}}})),
        )
        .await;
    assert_eq!(status, 201, "{source}");
    assert!(source.get("secret").is_some());
    let id = source["id"].as_str().unwrap().to_string();

    // The API fails twice: the error shows, then the items come through.
    let state = poll_state_when(&server, &key, &id, |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("HTTP 500"))
    })
    .await;
    assert!(state["failures"].as_u64().unwrap() >= 1, "{state}");
    let counts = wait_for_events(&rx, 3).await;
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");

    // A change is a new event; the unchanged items are polled again and
    // routed no more. A 429 on the way is waited out.
    api.limited.store(1, Ordering::SeqCst);
    api.put(
        "c2",
        "resolved",
        "2026-12-01T10:01:00Z",
        "2026-12-01T10:05:00Z",
    );
    let counts = wait_for_events(&rx, 4).await;
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    let state = poll_state_when(&server, &key, &id, |s| {
        s["cursor"] == "2026-12-01T10:05:00Z" && s["last_error"].is_null()
    })
    .await;
    assert_eq!(state["accepted"], 4, "{state}");

    // Three new items (two pages): the second page is held, the first is
    // accepted, and the server is killed before the cursor moves.
    api.hold_second_page.store(true, Ordering::SeqCst);
    api.put("c4", "open", "2026-12-01T10:06:00Z", "2026-12-01T10:06:00Z");
    api.put("c5", "open", "2026-12-01T10:07:00Z", "2026-12-01T10:07:00Z");
    api.put("c6", "open", "2026-12-01T10:08:00Z", "2026-12-01T10:08:00Z");
    let counts = wait_for_events(&rx, 5).await;
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    server.kill9();

    api.hold_second_page.store(false, Ordering::SeqCst);
    let server = Server::start(dir.path());
    let counts = wait_for_events(&rx, 7).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counts_later = event_counts(&rx);
    assert_eq!(counts_later.len(), 7, "{counts_later:?}");
    assert!(
        counts_later.values().all(|n| *n == 1),
        "every change once, after the kill too: {counts_later:?} (was {counts:?})"
    );
    let updated: std::collections::HashSet<String> = rx
        .received()
        .iter()
        .filter(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["type"] == "conversation.updated"
        })
        .map(|r| r.header("webhook-id"))
        .collect();
    assert_eq!(updated.len(), 1, "one change, one conversation.updated");
    assert_eq!(
        api.unauthorized.load(Ordering::SeqCst),
        0,
        "the bearer token went with every poll"
    );
    let state = poll_state(&server, &key, &id).await;
    assert!(state["last_run_at"].is_string(), "{state}");

    // Deleted: the poller stops asking.
    let (status, _) = server
        .call("DELETE", &format!("/v1/sources/{id}"), &key, None)
        .await;
    assert_eq!(status, 204);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let asked = api.requests.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        api.requests.load(Ordering::SeqCst),
        asked,
        "a deleted source is not polled"
    );
}

/// Without `allow_private_destinations`, a poll of a loopback address is
/// refused by the egress guard (the reason in the source's state). Bad
/// settings are 400s; a poll source takes no HTTP requests; another
/// tenant's poll source is a 404.
#[tokio::test]
async fn polls_go_through_the_egress_guard_and_bad_settings_are_refused() {
    let backing = Backing::new(Backend::Sled)
        .await
        .expect("the embedded store");
    let engine = Engine::on(&backing, false).await;
    let key = engine.tenant().await;
    let other = engine.tenant().await;
    let api = Arc::new(Api::default());
    api.put("c1", "open", "2026-12-01T10:00:00Z", "2026-12-01T10:00:00Z");
    let url = start_api(api.clone()).await;
    let create = |poll: Value, secret: Option<&str>| {
        let mut body = json!({"kind": "poll", "poll": poll});
        if let Some(s) = secret {
            body["secret"] = json!(s);
        }
        body
    };
    for (poll, secret, needle) in [
        (
            json!({"url": url, "format": "ohallo-conversation"}),
            None,
            "bearer",
        ),
        (
            json!({"url": url, "format": "ohallo-conversation", "every_secs": 0}),
            Some(TOKEN),
            "every_secs",
        ),
        (
            json!({"url": "file:///etc/passwd", "format": "ohallo-conversation"}),
            Some(TOKEN),
            "http(s)",
        ),
        (
            json!({"url": url, "format": "nope"}),
            Some(TOKEN),
            "poll.format",
        ),
        (
            json!({"url": url, "format": "ohallo", "items": "items"}),
            Some(TOKEN),
            "JSON pointer",
        ),
        (
            json!({"url": url, "format": "ohallo", "extra": 1}),
            Some(TOKEN),
            "unknown field",
        ),
    ] {
        let (status, body) = engine
            .call("POST", "/v1/sources", &key, Some(create(poll, secret)))
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(body.to_string().contains(needle), "{needle}: {body}");
    }
    let (status, body) = engine
        .call(
            "POST",
            "/v1/sources",
            &key,
            Some(json!({"kind": "onwebchat", "poll": {"url": url, "format": "ohallo"}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    let (status, source) = engine
        .call(
            "POST",
            "/v1/sources",
            &key,
            Some(create(
                json!({"url": url, "format": "ohallo-conversation", "every_secs": 1}),
                Some(TOKEN),
            )),
        )
        .await;
    assert_eq!(status, 201, "{source}");
    let id = source["id"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let state = loop {
        let (_, s) = engine
            .call("GET", &format!("/v1/sources/{id}"), &key, None)
            .await;
        if !s["poll_state"]["last_error"].is_null() {
            break s["poll_state"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        state["last_error"].as_str().unwrap().contains("SSRF guard"),
        "{state}"
    );
    assert_eq!(
        api.requests.load(Ordering::SeqCst),
        0,
        "nothing reached the address"
    );

    let (status, _) = engine
        .call("POST", &format!("/in/{id}"), &key, Some(json!({})))
        .await;
    assert_eq!(status, 404);
    for (method, path) in [
        ("GET", format!("/v1/sources/{id}")),
        ("DELETE", format!("/v1/sources/{id}")),
    ] {
        let (status, _) = engine.call(method, &path, &other, None).await;
        assert_eq!(status, 404, "{method} {path} from another tenant");
    }
    let (status, _) = engine
        .call("DELETE", &format!("/v1/sources/{id}"), &key, None)
        .await;
    assert_eq!(status, 204);
}

/// A poll source may read its items with the tenant's own adapter (an
/// uploaded source-world component) instead of a bundled format.
#[tokio::test]
async fn a_poll_source_reads_its_items_with_an_uploaded_adapter() {
    let api = Arc::new(Api::default());
    api.put(
        "kb1",
        "pending",
        "2026-12-01T10:00:00Z",
        "2026-12-01T10:00:00Z",
    );
    api.put(
        "kb2",
        "pending",
        "2026-12-01T10:01:00Z",
        "2026-12-01T10:01:00Z",
    );
    let url = start_api(api.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (_, key) = server.tenant("own-adapter").await;
    let rx = Receiver::ok().await;
    server
        .subscribe(
            &key,
            json!({"url": rx.url(), "event_types": ["kb_entry.*"]}),
        )
        .await;
    let wasm = wasmhook::runtime::bundled::find("platform-sources")
        .unwrap()
        .wasm
        .to_vec();
    let plugin = server.upload_plugin(&key, "name=kb-adapter", wasm).await;
    let (status, source) = server
        .call(
            "POST",
            "/v1/sources",
            &key,
            Some(json!({"kind": "poll", "secret": TOKEN,
                        "plugin": {"id": plugin["id"], "config": {"kind": "ohallo-kb-entry"}},
                        "poll": {"url": url, "every_secs": 1, "next": "/next",
                                 "headers": {"X-Workspace": "w1"}}})),
        )
        .await;
    assert_eq!(status, 201, "{source}");
    let counts = wait_for_events(&rx, 2).await;
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    let first: Value = serde_json::from_slice(&rx.received()[0].body).unwrap();
    assert_eq!(first["type"], "kb_entry.proposed", "{first}");

    // A next page on another origin is not followed: the token goes to
    // the polled API only.
    *api.next_url.lock().unwrap() = Some("http://127.0.0.2:9/steal?all=1".into());
    api.put(
        "kb3",
        "pending",
        "2026-12-01T10:02:00Z",
        "2026-12-01T10:02:00Z",
    );
    api.put(
        "kb4",
        "pending",
        "2026-12-01T10:03:00Z",
        "2026-12-01T10:03:00Z",
    );
    // A third, so that a poll between the puts still ends with a page
    // that names a next one.
    api.put(
        "kb5",
        "pending",
        "2026-12-01T10:04:00Z",
        "2026-12-01T10:04:00Z",
    );
    let id = source["id"].as_str().unwrap();
    poll_state_when(&server, &key, id, |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("another origin"))
    })
    .await;
}
