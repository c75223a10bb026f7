//! `wasmhook plugin …` through the real binary: what plugin authors run.

use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::support::*;

fn wasmhook(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .current_dir(repo_root())
        .env(
            "WASMHOOK_PLUGINS_SHARED_CACHE_DIR",
            shared_compiled_plugins(),
        )
        .output()
        .expect("run wasmhook")
}

/// `wasmhook plugin run ARGS` with patient time limits: these tests are
/// about what a plugin answers, not how fast (see `support::PATIENT_CALL_MS`).
fn plugin_run(args: &[&str]) -> Output {
    let patient = PATIENT_CALL_MS.to_string();
    let mut all = vec!["plugin", "run"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--timeout-ms", &patient, "--flush-timeout-ms", &patient]);
    wasmhook(&all)
}

fn stdout_json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "wasmhook failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is JSON")
}

/// The one-line reason of a failed run.
fn error_line(output: &Output) -> String {
    assert!(!output.status.success(), "expected a failure");
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    assert_eq!(stderr.lines().count(), 1, "one line, got: {stderr}");
    stderr
}

#[test]
fn run_a_bundled_plugin_on_an_example_event() {
    let out = plugin_run(&["helloclient-lead", "--event", "examples/lead.json"]);
    let action = stdout_json(&out);
    assert_eq!(action["action"], "deliver");
    let body: Value =
        serde_json::from_str(action["requests"][0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["SessionID"], 31305);
    assert_eq!(body["Type"], "Lead");
    assert_eq!(action["requests"][0]["content_type"], "application/json");
}

#[test]
fn run_a_wasm_file_with_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("hostile.wasm");
    std::fs::write(&wasm, fixture("hostile")).unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, r#"{"mode": "ok"}"#).unwrap();
    let out = plugin_run(&[
        wasm.to_str().unwrap(),
        "--event",
        "examples/lead.json",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(stdout_json(&out)["action"], "deliver");

    std::fs::write(&config, r#"{"mode": "loop"}"#).unwrap();
    let out = wasmhook(&[
        "plugin",
        "run",
        wasm.to_str().unwrap(),
        "--event",
        "examples/lead.json",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(error_line(&out).contains("plugin exceeded its 50 ms time limit"));
}

#[test]
fn flush_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let groups = dir.path().join("groups.json");
    std::fs::write(
        &groups,
        r#"[{"key": "bot-1", "items": [{"session_id": 7, "conversation_created_at": "2026-11-20T08:00:00Z", "chatbot_name": "Bot", "uri": "example.com", "type": "User", "content": "hi", "created_at": "2026-11-20T08:00:01Z"}]}]"#,
    )
    .unwrap();
    let out = plugin_run(&[
        "helloclient-chatlog",
        "--flush",
        groups.to_str().unwrap(),
        "--window-start",
        "2026-11-20T00:00:00Z",
        "--window-end",
        "2026-11-21T00:00:00Z",
    ]);
    let result = stdout_json(&out);
    let body: Value =
        serde_json::from_str(result["requests"][0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["Collection"][0]["SerialNumber"], "bot-1");
    assert_eq!(body["Collection"][0]["StartTime"], "2026-11-20T00:00:00Z");
    assert_eq!(body["Collection"][0]["Conversations"][0]["SessionID"], 7);
}

/// A source adapter on a platform's request, as an adapter author runs it.
#[test]
fn normalize_a_platform_request_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, r#"{"kind": "onwebchat"}"#).unwrap();
    let out = plugin_run(&[
        "platform-sources",
        "--request",
        "tests/fixtures/seeds/onwebchat-chat_closed.json",
        "--header",
        "X-OWC-Event: chat.closed",
        "--header",
        "X-OWC-Delivery: owc_1",
        "--config",
        config.to_str().unwrap(),
    ]);
    let result = stdout_json(&out);
    assert_eq!(result["events"][0]["id"], "owc_1");
    assert_eq!(result["events"][0]["type"], "conversation.closed");
    std::fs::write(&config, r#"{"kind": "helloclient"}"#).unwrap();
    let out = plugin_run(&[
        "platform-sources",
        "--request",
        "tests/fixtures/seeds/onwebchat-chat_closed.json",
        "--config",
        config.to_str().unwrap(),
    ]);
    let line = error_line(&out);
    assert!(line.contains("neither `Collection`"), "{line}");
}

#[test]
fn check_prints_exports_and_limits() {
    let out = wasmhook(&["plugin", "check", "event-filter"]);
    let info = stdout_json(&out);
    assert_eq!(info["ok"], true);
    assert_eq!(
        info["info"]["exports"],
        serde_json::json!(["check-config", "handle", "flush"])
    );
    assert_eq!(info["limits"]["handle_timeout_ms"], 50);
    assert_eq!(info["limits"]["memory_bytes"], 32 << 20);
}

#[test]
fn bad_input_exits_non_zero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.wasm");
    std::fs::write(&wrong, fixture("wrong-world")).unwrap();
    let bad_json = dir.path().join("bad.json");
    std::fs::write(&bad_json, "{not json").unwrap();
    let bad_event = dir.path().join("bad-event.json");
    std::fs::write(&bad_event, r#"{"type": "Lead", "data": {}}"#).unwrap();

    let line = error_line(&wasmhook(&["plugin", "check", wrong.to_str().unwrap()]));
    assert!(
        line.contains("does not implement the wasmhook:plugin/transform world"),
        "{line}"
    );

    let line = error_line(&wasmhook(&["plugin", "check", "no-such-plugin"]));
    assert!(
        line.contains("cannot read plugin \"no-such-plugin\""),
        "{line}"
    );
    assert!(line.contains("helloclient-lead"), "{line}");

    let line = error_line(&wasmhook(&[
        "plugin",
        "run",
        "helloclient-lead",
        "--event",
        bad_json.to_str().unwrap(),
    ]));
    assert!(line.contains("is not valid"), "{line}");

    let line = error_line(&wasmhook(&[
        "plugin",
        "run",
        "helloclient-lead",
        "--event",
        "/nonexistent.json",
    ]));
    assert!(line.contains("cannot read the event file"), "{line}");

    let line = error_line(&wasmhook(&[
        "plugin",
        "run",
        "helloclient-lead",
        "--event",
        bad_event.to_str().unwrap(),
    ]));
    assert!(line.contains("dotted lowercase"), "{line}");

    let line = error_line(&wasmhook(&["plugin", "check", bad_json.to_str().unwrap()]));
    assert!(line.contains("not a WebAssembly component"), "{line}");
}

/// The API commands (`wasmhook tenants|login|subscriptions|events|
/// deliveries`) against a real server: JSON output parsed, a table for
/// people, `deliveries tail` following a new delivery, and an exit code per
/// kind of failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_commands_drive_a_real_server() {
    use crate::harness::{ADMIN_TOKEN, Receiver, Server, message_event};
    use std::io::{BufRead, Write};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let config = dir.path().join("cli").join("cli.toml");
    let base = server.base.clone();
    let cli = |args: &[&str], env: &[(&str, &str)], stdin: Option<&str>| -> (i32, String, String) {
        let mut child = Command::new(binary())
            .args(args)
            .env("WASMHOOK_CLI_CONFIG", &config)
            .env("WASMHOOK_URL", &base)
            .env_remove("WASMHOOK_KEY")
            .env_remove("WASMHOOK_ADMIN_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let json = |out: &str| -> Value { serde_json::from_str(out).expect("JSON on stdout") };

    // No server key yet: a usage error (2).
    let (code, _, err) = cli(&["subscriptions", "list"], &[], None);
    assert_eq!(code, 2, "{err}");
    let (code, out, err) = cli(
        &["tenants", "create", "acme", "--json"],
        &[("WASMHOOK_ADMIN_TOKEN", ADMIN_TOKEN)],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let key = json(&out)["api_key"].as_str().unwrap().to_string();
    // A wrong key is refused at login (4) and nothing is saved.
    let (code, _, err) = cli(&["login", "--key", "whk_wrong"], &[], None);
    assert_eq!(code, 4, "{err}");
    assert!(!config.exists());
    let (code, _, err) = cli(&["login", "--key", &key], &[], None);
    assert_eq!(code, 0, "{err}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let rx = Receiver::ok().await;
    let (code, out, err) = cli(
        &[
            "subscriptions",
            "create",
            "--url",
            &rx.url(),
            "--events",
            "message.*",
            "--ordering-key",
            "/data/conversation_id",
            "--json",
        ],
        &[],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let sub = json(&out);
    assert_eq!(sub["ordering"]["key"], "/data/conversation_id");
    let (code, out, _) = cli(&["subscriptions", "list"], &[], None);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("ID") && out.contains(sub["id"].as_str().unwrap()),
        "{out}"
    );

    // An event from stdin; its delivery in the log.
    let (code, out, err) = cli(
        &["events", "send", "--json"],
        &[],
        Some(&message_event("cli-1").to_string()),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["deliveries"].as_array().unwrap().len(), 1);
    rx.wait_for(1, std::time::Duration::from_secs(20)).await;
    let (code, out, _) = cli(&["deliveries", "list", "--json"], &[], None);
    assert_eq!(code, 0);
    let page = json(&out);
    let delivery = page["items"][0]["id"].as_str().unwrap().to_string();
    let (code, out, _) = cli(&["deliveries", "show", &delivery], &[], None);
    assert_eq!(code, 0);
    assert!(out.contains(&delivery) && out.contains("HTTP 200"), "{out}");

    // `deliveries tail` prints a new delivery as it happens.
    let mut tail = Command::new(binary())
        .args(["deliveries", "tail"])
        .env("WASMHOOK_CLI_CONFIG", &config)
        .env_remove("WASMHOOK_URL")
        .env_remove("WASMHOOK_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = lines_tx.send(line.unwrap_or_default());
        }
    });
    // The tail's first page is the baseline it prints nothing of: an event
    // sent before the tail read it would never be printed, so one is sent
    // every two seconds until one is.
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut sent = 1;
    let line = loop {
        sent += 1;
        let event = format!("cli-{sent}");
        let (status, _) = server
            .call("POST", "/v1/events", &key, Some(message_event(&event)))
            .await;
        assert_eq!(status, 202);
        match lines_rx.recv_timeout(std::time::Duration::from_secs(2)) {
            Ok(line) => break line,
            Err(_) => assert!(
                std::time::Instant::now() < deadline,
                "tail never printed a new delivery"
            ),
        }
    };
    assert!(
        line.contains("dlv_") && line.contains("message.created"),
        "{line}"
    );
    tail.kill().unwrap();
    let _ = tail.wait();

    // Keys, plugins, sources.
    let (code, out, err) = cli(&["keys", "create", "--json"], &[], None);
    assert_eq!(code, 0, "{err}");
    let second = json(&out)["api_key"].as_str().unwrap().to_string();
    let (code, _, err) = cli(
        &["subscriptions", "list"],
        &[("WASMHOOK_KEY", &second)],
        None,
    );
    assert_eq!(code, 0, "the new key works: {err}");
    let wasm = dir.path().join("hostile.wasm");
    std::fs::write(&wasm, fixture("hostile")).unwrap();
    let (code, out, err) = cli(
        &[
            "plugins",
            "upload",
            wasm.to_str().unwrap(),
            "--name",
            "hostile",
            "--json",
        ],
        &[],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let plugin = json(&out)["id"].as_str().unwrap().to_string();
    let (code, out, err) = cli(
        &[
            "plugins",
            "dry-run",
            &plugin,
            "--config",
            r#"{"mode":"ok"}"#,
            "--json",
        ],
        &[],
        Some(&message_event("dry").to_string()),
    );
    assert_eq!(code, 0, "{err}");
    assert!(json(&out)["action"].is_object(), "{out}");
    let (code, out, _) = cli(&["plugins", "list"], &[], None);
    assert_eq!(code, 0);
    assert!(out.contains(&plugin), "{out}");
    let (code, out, err) = cli(
        &["sources", "create", "--json"],
        &[],
        Some(r#"{"kind": "helloclient"}"#),
    );
    assert_eq!(code, 0, "{err}");
    let source = json(&out)["id"].as_str().unwrap().to_string();
    let (code, out, _) = cli(&["sources", "list"], &[], None);
    assert_eq!(code, 0);
    assert!(out.contains(&source), "{out}");

    // Exit codes: not found 3, bad key 4, invalid 5, unreachable 6.
    let (code, _, err) = cli(&["deliveries", "show", "dlv_nope"], &[], None);
    assert_eq!(code, 3, "{err}");
    let (code, _, err) = cli(
        &["subscriptions", "list"],
        &[("WASMHOOK_KEY", "whk_wrong")],
        None,
    );
    assert_eq!(code, 4, "{err}");
    let (code, _, err) = cli(&["subscriptions", "create", "--url", "ftp://x"], &[], None);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("url"), "{err}");
    // A broker from a file (its password out of the shell's history).
    let dest = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        dest.path(),
        r#"{"type": "redis", "url": "redis://:cli-pw-4242@redis.example", "stream": "s"}"#,
    )
    .unwrap();
    let (code, out, err) = cli(
        &[
            "subscriptions",
            "create",
            "--json",
            "--destination",
            &format!("@{}", dest.path().display()),
        ],
        &[],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["destination"]["type"], "redis", "{out}");
    assert!(!out.contains("cli-pw-4242"), "{out}");
    let (code, _, err) = cli(
        &["subscriptions", "create", "--destination", "{"],
        &[],
        None,
    );
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cli(&["subscriptions", "create"], &[], None);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cli(
        &["subscriptions", "list", "--server", "http://127.0.0.1:9"],
        &[("WASMHOOK_KEY", &key)],
        None,
    );
    assert_eq!(code, 6, "{err}");
    // The saved key goes only to the server it was saved for.
    let (code, _, err) = cli(
        &["subscriptions", "list", "--server", "http://127.0.0.1:9"],
        &[],
        None,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("saved key is for"), "{err}");
    // A key shown in a table is whole (it is shown once).
    let (code, out, err) = cli(&["keys", "create"], &[], None);
    assert_eq!(code, 0, "{err}");
    let shown = out.trim().rsplit(' ').next().unwrap().to_string();
    let (code, _, err) = cli(
        &["subscriptions", "list"],
        &[("WASMHOOK_KEY", &shown)],
        None,
    );
    assert_eq!(code, 0, "the key as shown works: {err}");

    // Applications: an endpoint of one, an event to it.
    let (code, out, err) = cli(
        &["apps", "create", "Clinique", "--uid", "clinic-1", "--json"],
        &[],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["uid"], "clinic-1");
    let app_rx = Receiver::ok().await;
    let (code, out, err) = cli(
        &[
            "subscriptions",
            "create",
            "--url",
            &app_rx.url(),
            "--events",
            "message.*",
            "--app",
            "clinic-1",
            "--json",
        ],
        &[],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&out)["app_id"],
        json(&cli(&["apps", "list", "--json"], &[], None).1)["items"][0]["id"]
    );
    let (code, _, err) = cli(
        &["events", "send", "--app", "clinic-1"],
        &[],
        Some(&message_event("cli-app").to_string()),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        app_rx.wait_for(1, PATIENCE).await[0].json()["id"],
        "cli-app"
    );
    let (code, out, _) = cli(&["apps", "list"], &[], None);
    assert!(code == 0 && out.contains("clinic-1"), "{out}");
    // A portal link for the application's customer, listed, revoked.
    let (code, out, err) = cli(
        &[
            "apps",
            "portal-link",
            "clinic-1",
            "--expires-in",
            "600",
            "--read-only",
        ],
        &[],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("/ui/#portal=whp_"), "{out}");
    let (code, out, err) = cli(&["apps", "portal-links", "clinic-1", "--json"], &[], None);
    assert_eq!(code, 0, "{err}");
    let link = json(&out)["items"][0].clone();
    assert_eq!(link["read_only"], true, "{out}");
    assert!(!out.contains("whp_"), "never the token again: {out}");
    let (code, _, err) = cli(
        &[
            "apps",
            "revoke-link",
            "clinic-1",
            link["id"].as_str().unwrap(),
        ],
        &[],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&["apps", "delete", "no-such-app"], &[], None);
    assert_eq!(code, 3, "{err}");

    // The catalog, a schema from a file; an event that does not match it.
    let schema = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        schema.path(),
        r#"{"type": "object", "required": ["conversation_id"]}"#,
    )
    .unwrap();
    let (code, out, err) = cli(
        &[
            "event-types",
            "create",
            "message.created",
            "--schema",
            &format!("@{}", schema.path().display()),
            "--validate",
            "--json",
        ],
        &[],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["validate"], true);
    let (code, out, _) = cli(&["event-types", "list"], &[], None);
    assert!(code == 0 && out.contains("message.created"), "{out}");
    let (code, _, err) = cli(
        &["events", "send"],
        &[],
        Some(r#"{"type": "message.created", "data": {}}"#),
    );
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("conversation_id"), "{err}");
}

/// `wasmhook listen`: a plugin subscription's deliveries reach a local
/// receiver over the CLI's own connection, though the server refuses
/// private destinations (it never connects to the receiver); they carry
/// the subscription's signature and the plugin's exact output; the local
/// answers are the attempts' outcomes. The subscription is deleted when
/// the CLI stops, and expires when it is killed. Another tenant cannot
/// reach the stream or answer for it; hostile answers are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_forwards_signed_plugin_deliveries_and_cleans_up_after_itself() {
    use crate::harness::{Answer, Receiver, Server, error_code, verify_standard};
    let dir = tempfile::tempdir().unwrap();
    // The SSRF guard on: the loopback receiver is no destination.
    let server = Server::start_guarded(&dir.path().join("data"), &[], &[]);
    let (_, key) = server.tenant("dev").await;
    let (_, other_key) = server.tenant("other").await;
    let rx = Receiver::start(
        vec![Answer::status(500).body("not yet")],
        Answer::status(201).body("local-ok"),
    )
    .await;
    let listen = |expire: &str| {
        crate::harness::listen_cli(
            &server.base,
            &key,
            &[
                "--forward",
                &rx.url(),
                "--events",
                "lead.*",
                "--plugin",
                "builtin:helloclient-lead",
                "--expire-after",
                expire,
            ],
        )
    };
    let next = crate::harness::next_line;

    let (mut cli, lines) = listen("2");
    let started = next(&lines);
    let sub = started["listening"].as_str().unwrap().to_string();
    let secret = started["secret"].as_str().unwrap().to_string();
    assert_eq!(next(&lines)["connected"], sub.as_str());
    let (status, view) = server
        .call("GET", &format!("/v1/subscriptions/{sub}"), &key, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(view["destination"]["type"], "listen", "{view}");

    // Two leads: the first answered 500 locally, the second 201.
    let lead: Value = serde_json::from_slice(
        &std::fs::read(crate::support::repo_root().join("examples/lead.json")).unwrap(),
    )
    .unwrap();
    let mut ids = vec![];
    for n in 0..2 {
        let mut event = lead.clone();
        event["id"] = json!(format!("evt_listen_{n}"));
        let (status, answer) = server.call("POST", "/v1/events", &key, Some(event)).await;
        assert_eq!(status, 202, "{answer}");
        let (_, stored) = server
            .call("GET", &format!("/v1/events/evt_listen_{n}"), &key, None)
            .await;
        ids.push(stored["deliveries"][0].as_str().unwrap().to_string());
        let line = next(&lines);
        assert_eq!(line["delivery_id"], ids[n].as_str(), "{line}");
        assert_eq!(line["status"], if n == 0 { 500 } else { 201 }, "{line}");
    }
    let golden: Value = serde_json::from_slice(
        &std::fs::read(
            crate::support::repo_root().join("plugins/helloclient-lead/golden/seed-lead.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let expected_body = golden["expect"][0]["requests"][0]["body"].as_str().unwrap();
    for r in rx.wait_for(2, PATIENCE).await {
        assert_eq!(
            verify_standard(&secret, &r),
            1,
            "signed as the subscription signs"
        );
        assert_eq!(std::str::from_utf8(&r.body).unwrap(), expected_body);
        assert!(ids.contains(&r.header("webhook-id")));
    }
    // The local answers are the attempts' outcomes.
    // Read once each attempt is recorded: the receiver has the request a
    // moment before the delivery log has its outcome (a loaded machine).
    let delivery = |id: String| {
        let server = &server;
        let key = key.clone();
        async move {
            server
                .delivery_when(&key, &id, |d| d["attempts"].as_u64() >= Some(1))
                .await
        }
    };
    let failed = delivery(ids[0].clone()).await;
    assert_eq!(failed["status"], "pending", "{failed}");
    assert_eq!(failed["attempt_log"][0]["status"], 500, "{failed}");
    assert_eq!(failed["attempt_log"][0]["response_body"], "not yet");
    let delivered = delivery(ids[1].clone()).await;
    assert_eq!(delivered["status"], "succeeded", "{delivered}");
    assert_eq!(delivered["attempt_log"][0]["status"], 201);
    assert_eq!(delivered["attempt_log"][0]["response_body"], "local-ok");

    // Another tenant reaches neither the stream nor the answers.
    let stream_path = format!("/v1/subscriptions/{sub}/listen");
    let answers_path = format!("/v1/subscriptions/{sub}/listen/answers");
    let (status, _) = server.call("GET", &stream_path, &other_key, None).await;
    assert_eq!(status, 404);
    let (status, _) = server
        .call(
            "POST",
            &answers_path,
            &other_key,
            Some(json!({"id": "lsn_x", "status": 200})),
        )
        .await;
    assert_eq!(status, 404);
    // Hostile answers: unknown fields, an attempt nobody waits for.
    let (status, body) = server
        .call(
            "POST",
            &answers_path,
            &key,
            Some(json!({"id": "lsn_x", "status": 200, "extra": 1})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server
        .call(
            "POST",
            &answers_path,
            &key,
            Some(json!({"id": "lsn_\u{202e}nope", "status": 200})),
        )
        .await;
    assert_eq!((status, error_code(&body)), (410, "gone"), "{body}");
    let (status, body) = server
        .call(
            "POST",
            &answers_path,
            &key,
            Some(json!({"id": "lsn_x", "status": 999})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // A subscription of another kind has no stream.
    let plain = server
        .subscribe(
            &key,
            json!({"url": "https://example.com/hook", "event_types": ["*"]}),
        )
        .await;
    let (status, body) = server
        .call(
            "GET",
            &format!("/v1/subscriptions/{}/listen", plain["id"].as_str().unwrap()),
            &key,
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");

    // Killed: the subscription expires (2 s after its stream dropped).
    cli.kill().unwrap();
    let _ = cli.wait();
    let gone = |sub: String| {
        let server = &server;
        let key = key.clone();
        async move {
            let deadline = std::time::Instant::now() + PATIENCE;
            loop {
                let (status, _) = server
                    .call("GET", &format!("/v1/subscriptions/{sub}"), &key, None)
                    .await;
                if status == 404 {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "{sub} still there");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    };
    gone(sub.clone()).await;

    // Its subscription deleted through the API: the stream ends, and the
    // CLI says the subscription is gone (exit 3).
    let (mut cli, lines) = listen("3600");
    let sub = next(&lines)["listening"].as_str().unwrap().to_string();
    assert_eq!(next(&lines)["connected"], sub.as_str());
    let (status, _) = server
        .call("DELETE", &format!("/v1/subscriptions/{sub}"), &key, None)
        .await;
    assert_eq!(status, 204);
    let deadline = std::time::Instant::now() + PATIENCE;
    let code = loop {
        if let Some(status) = cli.try_wait().unwrap() {
            break status.code();
        }
        assert!(std::time::Instant::now() < deadline, "the CLI kept going");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(code, Some(3));

    // Stopped (SIGTERM): it deletes its subscription itself, at once, and
    // exits 0, though its expiry is an hour.
    let (mut cli, lines) = listen("3600");
    let sub = next(&lines)["listening"].as_str().unwrap().to_string();
    assert_eq!(next(&lines)["connected"], sub.as_str());
    let pid = cli.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(cli.wait().unwrap().success());
    let (status, _) = server
        .call("GET", &format!("/v1/subscriptions/{sub}"), &key, None)
        .await;
    assert_eq!(status, 404);

    // A connected CLI does not hold the server's shutdown: its stream ends
    // at once (else the server waits out its 10 s shutdown grace for it).
    let (mut cli, lines) = listen("3600");
    let sub = next(&lines)["listening"].as_str().unwrap().to_string();
    assert_eq!(next(&lines)["connected"], sub.as_str());
    let stopping = std::time::Instant::now();
    assert!(server.stop().success());
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(8),
        "the server took {:?} to stop",
        stopping.elapsed()
    );
    let _ = cli.kill();
    let _ = cli.wait();
}

/// The Helm chart under `deploy/helm/wasmhook`: every `.Values` path its
/// templates use is in `values.yaml`, the chart's version fields are
/// there, and the settings it passes are variables this build reads
/// (`WASMHOOK_<SECTION>_<KEY>` of the default config). `helm lint` and
/// `helm template` run too where helm is installed (it is not in this
/// machine's registries).
#[test]
fn the_helm_chart_uses_only_its_values_and_real_settings() {
    let chart = repo_root().join("deploy/helm/wasmhook");
    let values = std::fs::read_to_string(chart.join("values.yaml")).unwrap();
    // The mapping keys of values.yaml as dotted paths, by indentation.
    let mut paths = std::collections::HashSet::new();
    let mut stack: Vec<(usize, String)> = vec![];
    for line in values.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        stack.push((indent, key.trim().to_string()));
        paths.insert(
            stack
                .iter()
                .map(|(_, k)| k.as_str())
                .collect::<Vec<_>>()
                .join("."),
        );
    }
    let chart_yaml = std::fs::read_to_string(chart.join("Chart.yaml")).unwrap();
    for field in [
        "apiVersion: v2",
        "name: wasmhook",
        "version:",
        "appVersion:",
    ] {
        assert!(chart_yaml.contains(field), "Chart.yaml lacks {field}");
    }
    let defaults: toml::Table = wasmhook::config::DEFAULT_CONFIG.parse().unwrap();
    let mut used = 0;
    for entry in std::fs::read_dir(chart.join("templates")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, _) in text.match_indices(".Values.") {
            let rest = &text[i + ".Values.".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
                .unwrap_or(rest.len());
            let used_path = rest[..end].trim_end_matches('.');
            assert!(
                paths.contains(used_path),
                "{}: .Values.{used_path} is not in values.yaml",
                path.display()
            );
            used += 1;
        }
        for (i, _) in text.match_indices("name: WASMHOOK_") {
            let name = text[i + "name: ".len()..]
                .split_whitespace()
                .next()
                .unwrap();
            if name == "WASMHOOK_ADMIN_TOKEN" {
                continue;
            }
            let known = defaults.iter().any(|(section, keys)| {
                keys.as_table().is_some_and(|keys| {
                    keys.keys()
                        .any(|key| format!("WASMHOOK_{section}_{key}").to_ascii_uppercase() == name)
                })
            });
            assert!(known, "{}: {name} is no setting", path.display());
        }
    }
    assert!(used > 10, "the templates use the values");
    let helm = Command::new("helm").arg("version").output();
    if helm.is_ok_and(|o| o.status.success()) {
        for args in [vec!["lint"], vec!["template", "test"]] {
            let out = Command::new("helm")
                .args(&args)
                .arg(&chart)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "helm {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// `deploy/wasmhook.service` passes `systemd-analyze verify` without a
/// warning (with `ExecStart` pointed at this build's binary, which verify
/// requires to exist).
#[test]
fn the_systemd_unit_verifies() {
    if !tool_installed("systemd-analyze") {
        return;
    }
    let unit = std::fs::read_to_string(repo_root().join("deploy/wasmhook.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/wasmhook serve"));
    let unit = unit.replace(
        "ExecStart=/usr/local/bin/wasmhook",
        &format!("ExecStart={}", binary()),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasmhook.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
    // A unit that does not parse is caught (the check can fail).
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("ProtectSystem=strict", "ProtectSystem=bogus"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).trim().is_empty());
}

/// `wasmhook listen --app`: the CLI gets the events sent to that
/// application, as its endpoints do, and not those sent to no application
/// or to another; an unknown application is refused before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_to_one_application() {
    use crate::harness::{Receiver, Server, message_event};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_guarded(&dir.path().join("data"), &[], &[]);
    let (_, key) = server.tenant("dev").await;
    for uid in ["clinic", "dentist"] {
        let (status, app) = server
            .call(
                "POST",
                "/v1/apps",
                &key,
                Some(json!({"name": uid, "uid": uid})),
            )
            .await;
        assert_eq!(status, 201, "{app}");
    }
    let rx = Receiver::ok().await;
    let (mut cli, lines) = crate::harness::listen_cli(
        &server.base,
        &key,
        &["--forward", &rx.url(), "--app", "clinic"],
    );
    let started = crate::harness::next_line(&lines);
    let sub = started["listening"].as_str().unwrap().to_string();
    assert_eq!(crate::harness::next_line(&lines)["connected"], sub.as_str());
    for (path, id) in [
        ("/v1/events", "to-nobody"),
        ("/v1/apps/dentist/events", "to-dentist"),
        ("/v1/apps/clinic/events", "to-clinic"),
    ] {
        let (status, answer) = server
            .call("POST", path, &key, Some(message_event(id)))
            .await;
        assert_eq!(status, 202, "{answer}");
    }
    let got = rx.wait_for(1, PATIENCE).await;
    assert_eq!(got[0].json()["id"], "to-clinic");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(rx.received().len(), 1, "only the application's event");
    let _ = cli.kill();
    let _ = cli.wait();

    let out = std::process::Command::new(crate::support::binary())
        .args(["listen", "--forward", &rx.url(), "--app", "nope"])
        .env("WASMHOOK_URL", &server.base)
        .env("WASMHOOK_KEY", &key)
        .env("WASMHOOK_CLI_CONFIG", "/nonexistent/wasmhook-cli.toml")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
