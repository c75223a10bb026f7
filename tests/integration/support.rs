//! Helpers shared by the integration tests.

use std::path::PathBuf;
use std::time::Duration;

use wasmhook::runtime::{Limits, Plugin, PluginEvent, Runtime};

/// How long a test waits for something that must happen (a delivery, a
/// lease, a page update) before it fails. A wait returns as soon as the
/// thing happens, so this costs time only when a test fails; it is long
/// because the suite must pass on a slow machine held to half a core
/// (`tests/slow-machine.sh`), where one request can take seconds.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The plugin time limit, in ms, of every runtime, engine and server in the
/// tests whose subject is not the time limit itself. Limits are wall-clock:
/// on a machine held to half a core a call can be paused for a whole CFS
/// period, so the product's 50 ms default would fail ordinary calls there.
pub const PATIENT_CALL_MS: u64 = 10_000;

/// The plugin time limit of the tests whose subject is the limit itself.
/// Their plugin loops forever, so it exceeds any limit by a wide margin.
/// The limit is still far above a CFS pause, because the same runtime then
/// runs an ordinary call that must succeed (`misbehave_then_recover`).
pub const LOOP_LIMIT_MS: u64 = 1_000;

/// A fixture component built by `host/build.rs` (`hostile`, `raw-wit`, `wrong-world`).
/// An HTTP client for a test's own requests. The crate's reqwest carries no
/// crypto provider of its own; this installs the one the server uses.
pub fn http_client() -> reqwest::Client {
    wasmhook::deliver::install_tls_provider();
    reqwest::Client::new()
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("WASMHOOK_FIXTURES_DIR")).join(format!("fixture-{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A runtime with the default limits but patient time limits
/// ([`PATIENT_CALL_MS`]) and a small pool, so parallel tests do not reserve
/// terabytes of address space.
pub fn runtime() -> Runtime {
    runtime_with(patient_limits())
}

/// The default limits with patient time limits ([`PATIENT_CALL_MS`]).
pub fn patient_limits() -> Limits {
    Limits {
        handle_timeout_ms: PATIENT_CALL_MS,
        flush_timeout_ms: PATIENT_CALL_MS,
        ..Limits::default()
    }
}

/// A runtime whose calls are stopped after [`LOOP_LIMIT_MS`]: only for a
/// plugin that loops forever.
pub fn looping_runtime() -> Runtime {
    runtime_with(Limits {
        handle_timeout_ms: LOOP_LIMIT_MS,
        ..Limits::default()
    })
}

pub fn runtime_with(limits: Limits) -> Runtime {
    Runtime::with_cache(
        Limits {
            max_concurrent_calls: 8,
            ..limits
        },
        wasmhook::runtime::CacheDirs {
            private: None,
            shared: Some(shared_compiled_plugins()),
        },
    )
    .expect("runtime")
}

/// The compiled plugins shared by every runtime of the test run: the
/// in-process ones, every server the tests start and every CLI run
/// (`plugins.shared_cache_dir`). A JavaScript or Python component takes
/// seconds of CPU to compile (tens on a slow machine), and many of them load
/// the same one.
pub fn shared_compiled_plugins() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shared-compiled-plugins")
}

pub fn load_fixture(runtime: &Runtime, name: &str) -> Plugin {
    runtime.load(&fixture(name)).expect("fixture loads")
}

pub fn event(event_type: &str, data: serde_json::Value) -> PluginEvent {
    PluginEvent {
        id: "evt_test".into(),
        event_type: event_type.into(),
        source: "test".into(),
        occurred_at: "2026-11-21T10:00:00Z".into(),
        payload: data.to_string(),
    }
}

/// Runs a hostile fixture plugin (any language: they share their modes) in
/// `mode`, which must fail, then proves the runtime still works by running
/// its well-behaved `ok` mode on the same plugin. Returns the failure and
/// how long the failing call took.
pub async fn misbehave_then_recover(
    runtime: &Runtime,
    plugin: &Plugin,
    mode: &str,
) -> (wasmhook::runtime::CallError, std::time::Duration) {
    let event = event("message.created", serde_json::json!({"n": 1}));
    let config = serde_json::json!({ "mode": mode }).to_string();
    let report = runtime.handle(plugin, &event, &config).await;
    let error = report.result.expect_err("the hostile call must fail");

    let ok = runtime
        .handle(
            plugin,
            &event,
            &serde_json::json!({"mode": "ok"}).to_string(),
        )
        .await;
    assert_eq!(
        ok.result.expect("the next call succeeds"),
        wasmhook::runtime::Action::Deliver {
            requests: vec![wasmhook::runtime::PluginRequest {
                body: r#"{"n":1}"#.into(),
                content_type: "application/json".into(),
                headers: vec![],
            }]
        }
    );
    (error, report.elapsed)
}

/// The path of the real `wasmhook` binary.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_wasmhook")
}

/// The repository root (for examples and golden files).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is in the workspace root")
        .to_path_buf()
}

/// A Python with `packages` from PyPI installed (a venv under the test
/// run's temp dir, made once and shared by the tests that need it): for
/// checking what wasmhook sends with other people's reference code.
/// `.ci/run` reaches PyPI; without it these tests fail, naming pip's error.
pub fn python_with(name: &str, packages: &[&str]) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("venv-{name}"));
    let python = venv.join("bin/python");
    let stamp = venv.join("installed");
    let wanted = packages.join("\n");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return python;
    }
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().expect("python3 runs");
        assert!(
            out.status.success(),
            "{cmd:?}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv));
    run(std::process::Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(packages));
    std::fs::write(&stamp, wanted).unwrap();
    python
}

/// Whether `tool --version` runs (skips outside CI, fails under it).
pub use wasmhook::cluster::testing::tool_installed;
