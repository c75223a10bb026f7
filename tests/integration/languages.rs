//! Plugins in JavaScript and Python (and Rust outside this repository):
//! projects made by `wasmhook plugin new`, built by their own `make` with the
//! real toolchains (componentize-js from npm, componentize-py from PyPI,
//! cargo), then run by the CLI, uploaded to and delivered by the server, and
//! — the hostile ones — contained exactly like the Rust hostile fixture.
//!
//! Builds are kept under `target/plugin-scaffolds/` (npm packages, the Python
//! venv, cargo's target dir): a file is rewritten only when the scaffold
//! changed it, so `make` rebuilds only what changed. Without node, npm or
//! python3 the tests skip locally and fail under `CI`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use clap::ValueEnum;
use serde_json::{Value, json};
use wasmhook::runtime::{Action, CallError, LogLevel, Plugin, PluginError, Runtime};
use wasmhook::scaffold::Lang;

use crate::harness::{Receiver, Server, verify_standard};
use crate::support::*;

/// The `--lang` value, as the CLI spells it.
fn flag(lang: Lang) -> String {
    lang.to_possible_value()
        .expect("every language has a flag")
        .get_name()
        .to_string()
}

/// The plugin's own source in a scaffold.
fn source(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "src/lib.rs",
        Lang::Js => "plugin.js",
        Lang::Python => "plugin.py",
    }
}

/// The tools its build needs.
fn tools(lang: Lang) -> &'static [&'static str] {
    match lang {
        Lang::Rust => &["make", "cargo", "rustup"],
        Lang::Js => &["make", "node", "npm"],
        Lang::Python => &["make", "python3"],
    }
}

fn scaffolds_dir() -> PathBuf {
    repo_root().join("target/plugin-scaffolds")
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds the scaffold `name` in `lang` (its example plugin, or the fixture
/// `replace` instead) and returns the project directory; `None` when the
/// toolchain is missing outside CI. Builds run one at a time and once per
/// test process.
fn build(lang: Lang, name: &str, replace: Option<&str>) -> Option<PathBuf> {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = built.get(name) {
        return Some(dir.clone());
    }
    let missing: Vec<&str> = tools(lang).iter().copied().filter(|t| !have(t)).collect();
    if !missing.is_empty() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{lang:?} plugins need {missing:?} (.ci/run installs them)"
        );
        eprintln!("skipping the {lang:?} plugin build: {missing:?} not installed");
        return None;
    }

    // Scaffold afresh, then carry over only what changed.
    let fresh = tempfile::tempdir().unwrap();
    let fresh_dir = fresh.path().join(name);
    let out = Command::new(binary())
        .args(["plugin", "new"])
        .arg(&fresh_dir)
        .args(["--lang", &flag(lang)])
        .output()
        .unwrap();
    assert!(out.status.success(), "plugin new: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("make"), "{stdout}");
    if let Some(fixture) = replace {
        std::fs::copy(
            repo_root().join("tests/fixtures").join(fixture),
            fresh_dir.join(source(lang)),
        )
        .unwrap();
    }
    let dir = scaffolds_dir().join(name);
    sync(&fresh_dir, &dir);

    // Share the heavy parts between projects of one language.
    let mut make = Command::new("make");
    make.current_dir(&dir).env("WASMHOOK", binary());
    match lang {
        Lang::Js => {
            let shared = scaffolds_dir().join("node_modules");
            std::fs::create_dir_all(&shared).unwrap();
            let link = dir.join("node_modules");
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(&shared, &link).unwrap();
            }
        }
        Lang::Python => {
            make.arg(format!("VENV={}", scaffolds_dir().join("venv").display()));
        }
        Lang::Rust => {
            make.arg(format!(
                "TARGET_DIR={}",
                scaffolds_dir().join("cargo-target").display()
            ))
            // The outer cargo's settings are not the plugin's.
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTC_WRAPPER");
        }
    }
    let out = make.output().unwrap();
    assert!(
        out.status.success(),
        "make in {}:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("plugin.wasm").exists());
    built.insert(name.to_string(), dir.clone());
    Some(dir)
}

/// Copies every file of `from` into `to` whose content differs (so an
/// unchanged file keeps its timestamp and `make` skips its rebuild).
fn sync(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            sync(&entry.path(), &target);
            continue;
        }
        let text = std::fs::read(entry.path()).unwrap();
        if std::fs::read(&target).ok().as_deref() != Some(&text[..]) {
            std::fs::create_dir_all(to).unwrap();
            std::fs::write(&target, &text).unwrap();
        }
    }
}

/// The notification every scaffold makes of its sample event.
fn expected_notification() -> Value {
    json!({
        "channel": "#front-desk",
        "text": "[visitor] Hello, can I move my appointment to Friday?",
        "conversation": "c_1042",
        "at": "2026-11-21T10:00:00Z",
    })
}

/// `plugin new`, `make`, then `wasmhook plugin run plugin.wasm --event
/// event.json --config config.json` as the README says.
fn scaffold_runs_in_the_cli(lang: Lang) {
    let name = format!("notify-{}", flag(lang));
    let Some(dir) = build(lang, &name, None) else {
        return;
    };
    let out = Command::new(binary())
        .current_dir(&dir)
        .args(["plugin", "run", "plugin.wasm", "--event", "event.json"])
        .args(["--config", "config.json"])
        // Tests run in parallel beside builds: a CPython component's first
        // call can take longer than the server's 50 ms on a loaded runner.
        .args(["--timeout-ms", &PATIENT_CALL_MS.to_string()])
        .env(
            "WASMHOOK_PLUGINS_SHARED_CACHE_DIR",
            shared_compiled_plugins(),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let action: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(action["action"], "deliver", "{action}");
    let request = &action["requests"][0];
    assert_eq!(request["content_type"], "application/json");
    let body: Value = serde_json::from_str(request["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, expected_notification());
    assert!(
        stderr.contains("message evt_example_1 from visitor"),
        "the plugin's log line: {stderr}"
    );
}

#[test]
fn a_javascript_scaffold_builds_with_make_and_runs() {
    scaffold_runs_in_the_cli(Lang::Js);
}

#[test]
fn a_python_scaffold_builds_with_make_and_runs() {
    scaffold_runs_in_the_cli(Lang::Python);
}

#[test]
fn a_rust_scaffold_builds_outside_the_workspace_and_runs() {
    scaffold_runs_in_the_cli(Lang::Rust);
    // It builds with the SDK copy it carries, not this repository's.
    if let Some(dir) = build(Lang::Rust, "notify-rust", None) {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(r#"path = "wasmhook-guest""#),
            "{manifest}"
        );
        assert!(dir.join("wasmhook-guest/wit/plugin.wit").exists());
    }
}

#[tokio::test]
async fn javascript_and_python_plugins_upload_dry_run_and_deliver() {
    let (Some(js), Some(py)) = (
        build(Lang::Js, "notify-js", None),
        build(Lang::Python, "notify-python", None),
    ) else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let (_, key) = server.tenant("Acme Dental").await;
    let event: Value =
        serde_json::from_str(&std::fs::read_to_string(js.join("event.json")).unwrap()).unwrap();

    let mut receivers = Vec::new();
    for (name, dir) in [("notify-js", &js), ("notify-python", &py)] {
        let wasm = std::fs::read(dir.join("plugin.wasm")).unwrap();
        let plugin = server
            .upload_plugin(&key, &format!("name={name}"), wasm)
            .await;
        let id = plugin["id"].as_str().unwrap().to_string();

        // Dry runs: the sample, then an event it skips.
        let dry_run = |event: Value| {
            let path = format!("/v1/plugins/{id}/dry-run");
            let server = &server;
            let key = &key;
            async move {
                let body = json!({"event": event, "config": {"channel": "#front-desk"}});
                let (status, dry) = server.call("POST", &path, key, Some(body)).await;
                assert_eq!(status, 200, "{dry}");
                dry
            }
        };
        let dry = dry_run(event.clone()).await;
        assert_eq!(dry["action"]["action"], "deliver", "{name}: {dry}");
        let body: Value =
            serde_json::from_str(dry["action"]["requests"][0]["body"].as_str().unwrap()).unwrap();
        assert_eq!(body, expected_notification(), "{name}");
        assert_eq!(
            dry["log"][0]["message"],
            "message evt_example_1 from visitor"
        );
        let dry = dry_run(json!({"type": "chat.rated", "data": {"rating": 5}})).await;
        assert_eq!(
            dry["action"],
            json!({"action": "skip", "reason": "not a message: chat.rated"}),
            "{name}"
        );

        // Its checkConfig / check_config refuses bad settings with its message.
        let rx = Receiver::ok().await;
        let (status, refused) = server
            .call(
                "POST",
                "/v1/subscriptions",
                &key,
                Some(json!({"url": rx.url(), "event_types": ["message.created"],
                            "plugin": {"id": id, "config": {"channel": 5}}})),
            )
            .await;
        assert_eq!(status, 400, "{name}: {refused}");
        assert!(
            refused.to_string().contains("channel must be a string"),
            "{name}: {refused}"
        );
        let sub = server
            .subscribe(
                &key,
                json!({"url": rx.url(), "event_types": ["message.created"],
                       "plugin": {"id": id, "config": {"channel": "#front-desk"}}}),
            )
            .await;
        receivers.push((name, rx, sub["secret"].as_str().unwrap().to_string()));
    }

    let (status, accepted) = server.call("POST", "/v1/events", &key, Some(event)).await;
    assert_eq!(status, 202, "{accepted}");
    for (name, rx, secret) in &receivers {
        let got = rx.wait_for(1, PATIENCE).await;
        assert_eq!(got.len(), 1, "{name}");
        assert_eq!(got[0].json(), expected_notification(), "{name}");
        assert_eq!(verify_standard(secret, &got[0]), 1, "{name}: signed");
    }
}

/// The hostile fixture in `lang`, compiled once per test process.
fn hostile(lang: Lang) -> Option<&'static (Runtime, Plugin)> {
    static JS: OnceLock<Option<(Runtime, Plugin)>> = OnceLock::new();
    static PY: OnceLock<Option<(Runtime, Plugin)>> = OnceLock::new();
    let (cell, name, source) = match lang {
        Lang::Js => (&JS, "hostile-js", "hostile-js/plugin.js"),
        Lang::Python => (&PY, "hostile-python", "hostile-py/plugin.py"),
        Lang::Rust => unreachable!("the Rust hostile fixture is tests/fixtures/hostile"),
    };
    cell.get_or_init(|| {
        let dir = build(lang, name, Some(source))?;
        let runtime = runtime();
        let plugin = runtime
            .load(&std::fs::read(dir.join("plugin.wasm")).unwrap())
            .expect("the hostile plugin loads");
        HOSTILE_DIRS.lock().unwrap().push((name, dir));
        Some((runtime, plugin))
    })
    .as_ref()
}

/// Where [`hostile`] built each fixture (by name), for a second runtime.
static HOSTILE_DIRS: Mutex<Vec<(&str, PathBuf)>> = Mutex::new(Vec::new());

/// The hostile plugin of `lang` in `mode`, then `ok` (see
/// `support::misbehave_then_recover`); `None` without its toolchain.
async fn misbehave(lang: Lang, mode: &str) -> Option<CallError> {
    let (runtime, plugin) = hostile(lang)?;
    Some(misbehave_then_recover(runtime, plugin, mode).await.0)
}

/// The hostile plugin of `lang` looping forever in a runtime whose time
/// limit is [`LOOP_LIMIT_MS`], then `ok` on the same runtime. The other
/// modes run in [`hostile`]'s patient runtime, so that each hits its own
/// limit (memory, output) however slow the machine, never the time limit.
async fn looping(lang: Lang) -> Option<CallError> {
    static JS: OnceLock<Option<(Runtime, Plugin)>> = OnceLock::new();
    static PY: OnceLock<Option<(Runtime, Plugin)>> = OnceLock::new();
    let (cell, name) = match lang {
        Lang::Js => (&JS, "hostile-js"),
        Lang::Python => (&PY, "hostile-python"),
        Lang::Rust => unreachable!("the Rust hostile fixture is tests/fixtures/hostile"),
    };
    let (runtime, plugin) = cell
        .get_or_init(|| {
            hostile(lang)?;
            let dirs = HOSTILE_DIRS.lock().unwrap();
            let (_, dir) = dirs.iter().find(|(n, _)| *n == name)?;
            let runtime = looping_runtime();
            let plugin = runtime
                .load(&std::fs::read(dir.join("plugin.wasm")).unwrap())
                .expect("the hostile plugin loads");
            Some((runtime, plugin))
        })
        .as_ref()?;
    Some(misbehave_then_recover(runtime, plugin, "loop").await.0)
}

/// Every misbehaviour fails with the same error as the Rust fixture's.
async fn contained_like_rust(lang: Lang) {
    let Some(error) = looping(lang).await else {
        return;
    };
    assert_eq!(
        error,
        CallError::Timeout {
            limit_ms: LOOP_LIMIT_MS
        },
        "{lang:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("plugin exceeded its {LOOP_LIMIT_MS} ms time limit")
    );

    let error = misbehave(lang, "memory").await.unwrap();
    assert_eq!(
        error,
        CallError::MemoryLimit {
            limit_bytes: 32 << 20
        },
        "{lang:?}"
    );
    let error = misbehave(lang, "big-output").await.unwrap();
    assert_eq!(
        error,
        CallError::OutputOverLimit { limit: 1048576 },
        "{lang:?}"
    );
    let error = misbehave(lang, "many-requests").await.unwrap();
    assert_eq!(
        error,
        CallError::TooManyRequests {
            count: 100,
            limit: 16
        },
        "{lang:?}"
    );
    let error = misbehave(lang, "reserved-header").await.unwrap();
    assert_eq!(
        error,
        CallError::ReservedHeader {
            name: "Webhook-Signature".into()
        },
        "{lang:?}"
    );
    // A thrown error / raised exception is the plugin's own error, with its message.
    let error = misbehave(lang, "throw").await.unwrap();
    assert_eq!(
        error,
        CallError::Plugin(PluginError::Failed(
            "the hostile plugin throws on purpose".into()
        )),
        "{lang:?}"
    );
    assert_eq!(
        error.to_string(),
        "plugin failed: the hostile plugin throws on purpose"
    );
}

#[tokio::test]
async fn a_hostile_javascript_plugin_is_contained_like_the_rust_one() {
    contained_like_rust(Lang::Js).await;
}

#[tokio::test]
async fn a_hostile_python_plugin_is_contained_like_the_rust_one() {
    contained_like_rust(Lang::Python).await;
}

/// Logging in a loop is capped and does not fail the call; stderr is a warning.
async fn logs_are_capped(lang: Lang) {
    let Some((runtime, plugin)) = hostile(lang) else {
        return;
    };
    let event = event("message.created", json!({"n": 1}));
    let report = runtime
        .handle(plugin, &event, &json!({"mode": "log-flood"}).to_string())
        .await;
    assert!(
        matches!(report.result, Ok(Action::Skip { .. })),
        "{lang:?}: {:?}",
        report.result
    );
    assert_eq!(report.log.len(), 101, "{lang:?}: 100 lines and a drop note");
    assert!(report.log[0].message.len() <= 1024 + 3, "{lang:?}");
    assert!(
        report.log[100].message.contains("more log lines dropped"),
        "{:?}",
        report.log[100]
    );

    let report = runtime
        .handle(plugin, &event, &json!({"mode": "stderr"}).to_string())
        .await;
    assert!(report.result.is_ok(), "{:?}", report.result);
    assert!(
        report
            .log
            .iter()
            .any(|l| matches!(l.level, LogLevel::Warn | LogLevel::Error)
                && l.message == "written to stderr"),
        "{lang:?}: {:?}",
        report.log
    );
}

#[tokio::test]
async fn javascript_logs_are_capped_and_console_error_is_a_warning() {
    logs_are_capped(Lang::Js).await;
}

#[tokio::test]
async fn python_logs_are_capped_and_stderr_is_a_warning() {
    logs_are_capped(Lang::Python).await;
}

/// What a plugin sees of time, chance, files and the network: the event's
/// own time, randomness that depends only on the event, nothing else.
async fn sees_a_deterministic_world(lang: Lang) {
    let Some((runtime, plugin)) = hostile(lang) else {
        return;
    };
    let config_text = json!({"mode": "world"}).to_string();
    let config = config_text.as_str();
    let world = |id: &str| {
        let mut event = event("message.created", json!({"n": 1}));
        event.id = id.to_string();
        async move {
            let report = runtime.handle(plugin, &event, config).await;
            match report.result {
                Ok(Action::Deliver { requests }) => {
                    serde_json::from_str::<Value>(&requests[0].body).unwrap()
                }
                other => panic!("{lang:?}: {other:?}"),
            }
        }
    };
    let first = world("evt_a").await;
    assert_eq!(
        world("evt_a").await,
        first,
        "{lang:?}: the same event, the same world"
    );
    // 2026-11-21T10:00:00Z, the event's occurred_at.
    let now_ms = first["now"].as_f64().unwrap() * if lang == Lang::Js { 1.0 } else { 1000.0 };
    assert_eq!(now_ms, 1_795_255_200_000.0, "{lang:?}: {first}");
    if lang == Lang::Python {
        let other = world("evt_b").await;
        assert_ne!(other["urandom"], first["urandom"], "seeded by the event id");
        assert_eq!(first["files"], "FileNotFoundError", "no files: {first}");
        assert_ne!(first["network"], "connected", "no network: {first}");
    } else {
        assert_eq!(first["date"], "2026-11-21T10:00:00.000Z");
    }
}

#[tokio::test]
async fn a_javascript_plugin_sees_a_frozen_clock() {
    sees_a_deterministic_world(Lang::Js).await;
}

#[tokio::test]
async fn a_python_plugin_sees_a_frozen_clock_seeded_random_no_files_no_network() {
    sees_a_deterministic_world(Lang::Python).await;
}

/// Items held by `handle` come back to `flush` as the values they were.
async fn holds_and_flushes(lang: Lang) {
    let Some((runtime, plugin)) = hostile(lang) else {
        return;
    };
    let config = json!({"mode": "hold"}).to_string();
    let mut items = Vec::new();
    for n in [1, 2] {
        let mut event = event("message.created", json!({"n": n, "group": "bot-1"}));
        event.id = format!("evt_{n}");
        match runtime.handle(plugin, &event, &config).await.result {
            Ok(Action::Hold { items: held }) => items.extend(held),
            other => panic!("{lang:?}: {other:?}"),
        }
    }
    assert_eq!(items[0].group, "bot-1");
    let groups = vec![wasmhook::runtime::HeldGroup {
        key: "bot-1".into(),
        items: items.into_iter().map(|h| h.item).collect(),
    }];
    let window = wasmhook::runtime::WindowBounds {
        start: "2026-11-21T00:00:00Z".into(),
        end: "2026-11-22T00:00:00Z".into(),
    };
    let requests = runtime
        .flush(plugin, &window, &groups, &config)
        .await
        .result
        .unwrap_or_else(|e| panic!("{lang:?}: {e}"));
    let body: Value = serde_json::from_str(&requests[0].body).unwrap();
    assert_eq!(
        body,
        json!({"window": {"start": "2026-11-21T00:00:00Z", "end": "2026-11-22T00:00:00Z"},
               "key": "bot-1",
               "items": [{"id": "evt_1", "n": 1}, {"id": "evt_2", "n": 2}]}),
        "{lang:?}"
    );
}

#[tokio::test]
async fn javascript_holds_come_back_to_flush_as_values() {
    holds_and_flushes(Lang::Js).await;
}

#[tokio::test]
async fn python_holds_come_back_to_flush_as_values() {
    holds_and_flushes(Lang::Python).await;
}

#[tokio::test]
async fn a_javascript_plugin_may_be_async() {
    let Some((runtime, plugin)) = hostile(Lang::Js) else {
        return;
    };
    let event = event("message.created", json!({"n": 7}));
    let report = runtime
        .handle(plugin, &event, &json!({"mode": "async"}).to_string())
        .await;
    match report.result {
        Ok(Action::Deliver { requests }) => assert_eq!(
            serde_json::from_str::<Value>(&requests[0].body).unwrap(),
            json!({"async": true, "n": 7})
        ),
        other => panic!("{other:?}"),
    }
    let report = runtime
        .handle(plugin, &event, &json!({"mode": "async-throw"}).to_string())
        .await;
    assert_eq!(
        report.result.unwrap_err(),
        CallError::Plugin(PluginError::Failed(
            "the hostile plugin rejects on purpose".into()
        ))
    );
}
