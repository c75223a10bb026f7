//! The sandbox under attack: hostile plugins each fail with their own typed
//! error within their limit, and the next call on the same runtime succeeds.

use std::time::Duration;

use serde_json::json;
use wasmhook::runtime::{Action, CallError, Limits, LoadError, LogLevel, PluginError};

use crate::support::*;

/// Runs the Rust hostile plugin in `mode`, then `ok` on the same plugin, in
/// a runtime with patient time limits (only `mode` decides how it fails).
async fn hostile(mode: &str) -> (CallError, Duration) {
    let runtime = runtime();
    let plugin = load_fixture(&runtime, "hostile");
    misbehave_then_recover(&runtime, &plugin, mode).await
}

#[tokio::test]
async fn endless_loop_is_stopped_at_the_time_limit() {
    let runtime = looping_runtime();
    let plugin = load_fixture(&runtime, "hostile");
    let (error, elapsed) = misbehave_then_recover(&runtime, &plugin, "loop").await;
    assert_eq!(
        error,
        CallError::Timeout {
            limit_ms: LOOP_LIMIT_MS
        }
    );
    assert_eq!(
        error.to_string(),
        format!("plugin exceeded its {LOOP_LIMIT_MS} ms time limit")
    );
    assert!(
        elapsed >= Duration::from_millis(LOOP_LIMIT_MS),
        "{elapsed:?}"
    );
    // Stopped at the limit, not at some later one (the call's own timeout
    // is the same; nothing else would stop it): a bound far above any
    // scheduling pause, even on a machine held to half a core.
    assert!(
        elapsed < Duration::from_millis(LOOP_LIMIT_MS) + PATIENCE / 6,
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn memory_bomb_hits_the_memory_limit() {
    let (error, _) = hostile("memory").await;
    assert_eq!(
        error,
        CallError::MemoryLimit {
            limit_bytes: 32 << 20
        }
    );
}

#[tokio::test]
async fn panic_is_reported_with_its_message() {
    let (error, _) = hostile("panic").await;
    match error {
        CallError::Panic { message } => {
            assert!(
                message.contains("the hostile plugin panics on purpose"),
                "{message}"
            )
        }
        other => panic!("expected a panic, got {other:?}"),
    }
}

#[tokio::test]
async fn oversized_output_is_refused_before_the_host_copies_it() {
    // The plugin returns more than 2 MB: the copy into the host stops near
    // the 1 MiB limit (hostcall fuel), instead of lifting it all first.
    let (error, _) = hostile("big-output").await;
    assert_eq!(error, CallError::OutputOverLimit { limit: 1048576 });
}

#[tokio::test]
async fn too_many_requests_are_refused() {
    let (error, _) = hostile("many-requests").await;
    assert_eq!(
        error,
        CallError::TooManyRequests {
            count: 100,
            limit: 16
        }
    );
}

#[tokio::test]
async fn reserved_header_is_refused() {
    let (error, _) = hostile("reserved-header").await;
    assert_eq!(
        error,
        CallError::ReservedHeader {
            name: "Webhook-Signature".into()
        }
    );
}

#[tokio::test]
async fn plugin_errors_pass_through_typed() {
    let (error, _) = hostile("bad-event").await;
    assert_eq!(
        error,
        CallError::Plugin(PluginError::BadEvent("no thanks".into()))
    );
}

#[tokio::test]
async fn log_flood_is_capped_and_does_not_fail_the_call() {
    let runtime = runtime();
    let plugin = load_fixture(&runtime, "hostile");
    let report = runtime
        .handle(&plugin, &event("a.b", json!({})), r#"{"mode":"log-flood"}"#)
        .await;
    assert!(
        matches!(report.result, Ok(Action::Skip { .. })),
        "{:?}",
        report.result
    );
    assert_eq!(report.log.len(), 101);
    assert!(report.log[0].message.len() <= 1024 + '…'.len_utf8());
    assert!(
        report.log[100]
            .message
            .starts_with("9900 more log lines dropped")
    );
}

#[tokio::test]
async fn stderr_is_captured_into_the_log() {
    let runtime = runtime();
    let plugin = load_fixture(&runtime, "hostile");
    let report = runtime
        .handle(&plugin, &event("a.b", json!({})), r#"{"mode":"stderr"}"#)
        .await;
    assert!(report.result.is_ok());
    assert!(
        report
            .log
            .iter()
            .any(|l| l.level == LogLevel::Warn && l.message == "written to stderr"),
        "{:?}",
        report.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_plugin_does_not_block_other_calls() {
    // The loop's limit is long enough that the quick calls finish inside it
    // even on a machine held to half a core.
    let runtime = runtime_with(Limits {
        handle_timeout_ms: 5_000,
        ..patient_limits()
    });
    let plugin = load_fixture(&runtime, "hostile");
    let looping = {
        let (runtime, plugin) = (runtime.clone(), plugin.clone());
        tokio::spawn(async move {
            runtime
                .handle(&plugin, &event("a.b", json!({})), r#"{"mode":"loop"}"#)
                .await
        })
    };
    // Many quick calls while the loop runs: all finish before it does.
    for _ in 0..20 {
        let report = runtime
            .handle(&plugin, &event("a.b", json!({})), r#"{"mode":"ok"}"#)
            .await;
        assert!(report.result.is_ok());
    }
    assert!(
        !looping.is_finished(),
        "the quick calls waited for the loop to be stopped"
    );
    let looped = looping.await.unwrap();
    assert_eq!(
        looped.result.unwrap_err(),
        CallError::Timeout { limit_ms: 5_000 }
    );
}

#[tokio::test]
async fn a_plugin_written_without_the_sdk_loads_and_runs() {
    let runtime = runtime();
    let plugin = load_fixture(&runtime, "raw-wit");
    let report = runtime
        .handle(&plugin, &event("a.b", json!({"x": true})), "{}")
        .await;
    match report.result.unwrap() {
        Action::Deliver { requests } => assert_eq!(requests[0].body, r#"{"raw":{"x":true}}"#),
        other => panic!("{other:?}"),
    }
    assert_eq!(report.log[0].message, "raw plugin saw evt_test");
}

#[test]
fn the_wrong_world_is_refused_naming_the_missing_export() {
    let runtime = runtime();
    let error = runtime.load(&fixture("wrong-world")).unwrap_err();
    assert!(matches!(error, LoadError::WrongWorld(_)), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("transform"), "{message}");
    assert!(message.contains("check-config"), "{message}");
}

#[test]
fn bad_bytes_are_refused_with_the_reason() {
    let runtime = runtime();
    assert!(matches!(runtime.load(b"hello"), Err(LoadError::NotWasm)));
    // A core module (the 8-byte preamble of an empty one).
    let core = b"\0asm\x01\0\0\0";
    let error = runtime.load(core).unwrap_err();
    assert!(matches!(error, LoadError::CoreModule), "{error:?}");
    assert!(error.to_string().contains("wasm32-wasip2"));
    // A component preamble followed by garbage.
    let mut broken = b"\0asm\x0d\0\x01\0".to_vec();
    broken.extend_from_slice(&[0xff; 32]);
    assert!(matches!(runtime.load(&broken), Err(LoadError::Invalid(_))));
}

#[test]
fn oversized_plugins_are_refused_before_compiling() {
    let runtime = runtime_with(Limits {
        plugin_bytes: 1000,
        ..Limits::default()
    });
    let error = runtime.load(&fixture("hostile")).unwrap_err();
    assert!(
        matches!(error, LoadError::TooLarge { limit: 1000, .. }),
        "{error:?}"
    );
}

#[test]
fn compiled_artifacts_are_cached_by_hash() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = fixture("raw-wit");
    let first = wasmhook::runtime::Runtime::new(
        Limits {
            max_concurrent_calls: 4,
            ..Limits::default()
        },
        Some(dir.path().into()),
    )
    .unwrap();
    let plugin = first.load(&wasm).unwrap();
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].starts_with(&plugin.sha256) && files[0].ends_with(".cwasm"));

    // A second runtime (a restart) maps the artifact instead of compiling:
    // the mapped load is far faster than the first compile.
    let second = wasmhook::runtime::Runtime::new(
        Limits {
            max_concurrent_calls: 4,
            ..Limits::default()
        },
        Some(dir.path().into()),
    )
    .unwrap();
    let again = second.load(&wasm).unwrap();
    assert_eq!(again.sha256, plugin.sha256);
    let files_after: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(files_after.len(), 1);

    // A corrupt artifact is discarded and rebuilt, not trusted.
    // (Replaced by rename, as the cache itself writes: truncating a file that
    // a live runtime has mapped would pull the pages from under it.)
    let path = dir.path().join(&files[0]);
    let tmp = dir.path().join("garbage.tmp");
    std::fs::write(&tmp, b"garbage").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let third = wasmhook::runtime::Runtime::new(
        Limits {
            max_concurrent_calls: 4,
            ..Limits::default()
        },
        Some(dir.path().into()),
    )
    .unwrap();
    assert!(third.load(&wasm).is_ok());
    assert!(std::fs::read(&path).unwrap().len() > 1000);
}

#[tokio::test]
async fn check_config_reports_bad_config() {
    let runtime = runtime();
    let lead = runtime
        .load(
            wasmhook::runtime::bundled::find("helloclient-lead")
                .unwrap()
                .wasm,
        )
        .unwrap();
    let report = runtime.check_config(&lead, r#"{"nope": 1}"#).await;
    match report.result {
        Err(CallError::Plugin(PluginError::BadConfig(m))) => assert!(m.contains("nope"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(runtime.check_config(&lead, "{}").await.result.is_ok());
}
