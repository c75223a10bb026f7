//! Golden tests of the bundled plugins, run as the real wasm components the
//! binary embeds. Each `plugins/<name>/golden/*.json` case lists events (run
//! through `handle` in order), the expected action per event, and optionally
//! a window to `flush` the held items into the expected requests. Held items
//! are grouped the way the host's window store groups them: groups in order
//! of their first item, items in arrival order; `host.take-held` takes a
//! group from them. A delivery id a plugin asked for (`host.delivery-id`)
//! reads `{delivery_id_N}` in the expectation.
//!
//! A source adapter's case lists platform `requests` (`headers`, `body`)
//! and the expected `normalized` output (or `error_contains`) per request.
//!
//! `WASMHOOK_BLESS=1` writes what the plugins return into the cases'
//! `expect` / `expect_flush` where a full output is expected (then read the
//! diff before committing it).

use std::sync::{Arc, Mutex};

use serde_json::Value;
use wasmhook::event::EventInput;
use wasmhook::runtime::{
    Action, Header, HeldGroup, HeldSource, Inbound, TakenItem, WindowBounds, World, bundled,
};

use crate::support::*;

#[tokio::test]
async fn every_bundled_plugin_matches_its_golden_files() {
    let runtime = runtime();
    let mut cases = 0;
    for plugin in bundled::BUNDLED {
        let dir = repo_root().join("plugins").join(plugin.name).join("golden");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} has no golden cases", plugin.name);
        let loaded = runtime.load(plugin.wasm).expect("bundled plugin loads");
        for file in files {
            let case: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            run_case(&runtime, &loaded, &case, &file.display().to_string()).await;
            cases += 1;
        }
    }
    assert!(cases >= 6, "only {cases} golden cases ran");
}

async fn run_case(
    runtime: &wasmhook::runtime::Runtime,
    plugin: &wasmhook::runtime::Plugin,
    case: &Value,
    name: &str,
) {
    let config = case
        .get("config")
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
    let config = config.to_string();
    let checked = runtime.check_config(plugin, &config).await.result;
    match case
        .get("check_config_error_contains")
        .and_then(Value::as_str)
    {
        Some(needle) => {
            let error = checked.expect_err(name).to_string();
            assert!(
                error.contains(needle),
                "{name}: check-config said {error:?}"
            );
        }
        None => checked.unwrap_or_else(|e| panic!("{name}: check-config failed: {e}")),
    }

    if plugin.world() == World::Source {
        return run_source_case(runtime, plugin, case, &config, name).await;
    }
    let events = case["events"].as_array().expect("events");
    let expect = case["expect"].as_array().expect("expect");
    assert_eq!(
        events.len(),
        expect.len(),
        "{name}: one expectation per event"
    );
    let held = Arc::new(Memory::default());
    let bless = std::env::var_os("WASMHOOK_BLESS").is_some();
    let mut blessed = case.clone();
    for (i, (event, want)) in events.iter().zip(expect).enumerate() {
        let input: EventInput = serde_json::from_value(event.clone()).expect("event shape");
        let event = input
            .validate("2026-11-21T10:00:00Z".parse().unwrap(), "test", || {
                format!("evt_{i}")
            })
            .expect("valid event");
        let report = runtime
            .handle_with(
                plugin,
                &event.to_plugin_event(),
                &config,
                Some(held.clone() as Arc<dyn HeldSource>),
            )
            .await;
        let result = report.result;
        let at = format!("{name} event {i}");
        if result.is_ok() {
            held.release(&report.taken);
        }
        if let Ok(Action::Hold { items }) = &result {
            let mut groups = held.0.lock().unwrap();
            for item in items {
                match groups.iter_mut().find(|g| g.key == item.group) {
                    Some(group) => group.items.push(item.item.clone()),
                    None => groups.push(HeldGroup {
                        key: item.group.clone(),
                        items: vec![item.item.clone()],
                    }),
                }
            }
        }
        match (want, result) {
            (Value::String(kind), Ok(action)) => {
                let got = serde_json::to_value(&action).unwrap();
                assert_eq!(got["action"], Value::String(kind.clone()), "{at}: {got}");
            }
            (want, Ok(action)) if want.get("action").is_some() => {
                let got =
                    with_placeholders(serde_json::to_value(&action).unwrap(), &report.delivery_ids);
                if bless {
                    blessed["expect"][i] = got;
                    continue;
                }
                assert_eq!(&got, want, "{at}");
            }
            (want, Err(error)) if want.get("error_contains").is_some() => {
                let needle = want["error_contains"].as_str().unwrap();
                assert!(error.to_string().contains(needle), "{at}: {error}");
            }
            (want, got) => panic!("{at}: expected {want}, got {got:?}"),
        }
    }

    if let Some(window) = case.get("window") {
        let window: WindowBounds = serde_json::from_value(window.clone()).unwrap();
        let groups = held.0.lock().unwrap().clone();
        let requests = runtime
            .flush(plugin, &window, &groups, &config)
            .await
            .result
            .unwrap_or_else(|e| panic!("{name}: flush failed: {e}"));
        if bless {
            blessed["expect_flush"] = serde_json::to_value(&requests).unwrap();
        } else {
            assert_eq!(
                serde_json::to_value(&requests).unwrap(),
                case["expect_flush"],
                "{name}: flush"
            );
        }
    }
    if bless {
        std::fs::write(name, serde_json::to_string_pretty(&blessed).unwrap() + "\n").unwrap();
    }
}

/// The held items of one case, as the window store would keep them.
#[derive(Default)]
struct Memory(Mutex<Vec<HeldGroup>>);

impl HeldSource for Memory {
    fn held_in_group(&self, group: &str) -> Vec<TakenItem> {
        let groups = self.0.lock().unwrap();
        let Some(g) = groups.iter().find(|g| g.key == group) else {
            return Vec::new();
        };
        g.items
            .iter()
            .enumerate()
            .map(|(i, item)| TakenItem {
                key: format!("{group}\0{i:08}").into_bytes(),
                item: item.clone(),
                bytes: (group.len() + item.len()) as u64,
            })
            .collect()
    }
}

impl Memory {
    /// Removes the groups a successful call took items from.
    fn release(&self, taken: &[TakenItem]) {
        let mut groups = self.0.lock().unwrap();
        for t in taken {
            let key = String::from_utf8_lossy(&t.key);
            let group = key.split('\0').next().unwrap_or_default().to_string();
            groups.retain(|g| g.key != group);
        }
    }
}

/// The ids the plugin asked for replaced by `{delivery_id_N}`.
fn with_placeholders(value: Value, ids: &[String]) -> Value {
    let mut text = value.to_string();
    for (i, id) in ids.iter().enumerate() {
        text = text.replace(id, &format!("{{delivery_id_{i}}}"));
    }
    serde_json::from_str(&text).unwrap()
}

/// A source adapter's case: each request through `normalize`.
async fn run_source_case(
    runtime: &wasmhook::runtime::Runtime,
    plugin: &wasmhook::runtime::Plugin,
    case: &Value,
    config: &str,
    name: &str,
) {
    let requests = case["requests"].as_array().expect("requests");
    let expect = case["expect"].as_array().expect("expect");
    assert_eq!(
        requests.len(),
        expect.len(),
        "{name}: one expectation per request"
    );
    let bless = std::env::var_os("WASMHOOK_BLESS").is_some();
    let mut blessed = Vec::new();
    for (i, (request, want)) in requests.iter().zip(expect).enumerate() {
        let headers = request
            .get("headers")
            .and_then(Value::as_object)
            .map(|h| {
                h.iter()
                    .map(|(k, v)| Header {
                        name: k.to_ascii_lowercase(),
                        value: v.as_str().unwrap().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let body = match &request["body"] {
            Value::String(s) => s.clone(),
            Value::Object(o) if o.contains_key("seed") => std::fs::read_to_string(
                repo_root()
                    .join("tests/fixtures/seeds")
                    .join(o["seed"].as_str().unwrap()),
            )
            .unwrap(),
            // A platform's body as its own code sends it (the file's bytes).
            Value::Object(o) if o.contains_key("fixture") => std::fs::read_to_string(
                repo_root()
                    .join("tests/fixtures")
                    .join(o["fixture"].as_str().unwrap()),
            )
            .unwrap(),
            other => other.to_string(),
        };
        let inbound = Inbound {
            headers,
            body,
            received_at: "2026-11-23T10:00:00Z".into(),
        };
        let result = runtime.normalize(plugin, &inbound, config).await.result;
        let at = format!("{name} request {i}");
        match (want.get("error_contains"), result) {
            (Some(needle), Err(e)) => {
                assert!(
                    e.to_string().contains(needle.as_str().unwrap()),
                    "{at}: {e}"
                );
                blessed.push(want.clone());
            }
            (None, Ok(normalized)) => {
                let mut got = serde_json::to_value(&normalized).unwrap();
                // Payloads as JSON values, so the files stay readable.
                for e in got["events"].as_array_mut().unwrap() {
                    let payload: Value =
                        serde_json::from_str(e["payload"].as_str().unwrap()).unwrap();
                    e["payload"] = payload;
                }
                if bless {
                    blessed.push(got);
                    continue;
                }
                assert_eq!(&got, want, "{at}");
            }
            (_, got) => panic!("{at}: expected {want}, got {got:?}"),
        }
    }
    if bless {
        let mut case = case.clone();
        case["expect"] = Value::Array(blessed);
        std::fs::write(name, serde_json::to_string_pretty(&case).unwrap() + "\n").unwrap();
    }
}
