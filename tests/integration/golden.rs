//! Golden tests of the bundled plugins, run as the real wasm components the
//! binary embeds. Each `plugins/<name>/golden/*.json` case lists events (run
//! through `handle` in order), the expected action per event, and optionally
//! a window to `flush` the held items into the expected requests. Held items
//! are grouped the way the host's window store groups them: groups in order
//! of their first item, items in arrival order.

use serde_json::Value;
use wasmhook::event::EventInput;
use wasmhook::runtime::{Action, HeldGroup, WindowBounds, bundled};

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

    let events = case["events"].as_array().expect("events");
    let expect = case["expect"].as_array().expect("expect");
    assert_eq!(
        events.len(),
        expect.len(),
        "{name}: one expectation per event"
    );
    let mut groups: Vec<HeldGroup> = Vec::new();
    for (i, (event, want)) in events.iter().zip(expect).enumerate() {
        let input: EventInput = serde_json::from_value(event.clone()).expect("event shape");
        let event = input
            .validate("2026-11-21T10:00:00Z".parse().unwrap(), "test", || {
                format!("evt_{i}")
            })
            .expect("valid event");
        let result = runtime
            .handle(plugin, &event.to_plugin_event(), &config)
            .await
            .result;
        let at = format!("{name} event {i}");
        if let Ok(Action::Hold { items }) = &result {
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
                assert_eq!(&serde_json::to_value(&action).unwrap(), want, "{at}");
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
        let requests = runtime
            .flush(plugin, &window, &groups, &config)
            .await
            .result
            .unwrap_or_else(|e| panic!("{name}: flush failed: {e}"));
        assert_eq!(
            serde_json::to_value(&requests).unwrap(),
            case["expect_flush"],
            "{name}: flush"
        );
    }
}
