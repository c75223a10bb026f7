//! One `handle` call of the bundled `helloclient-lead` plugin on a ~1 KB
//! `lead.created` event, in a fresh instance each time (what the delivery
//! engine does per event and subscription), against the same plugin code
//! compiled natively; then the `plugin new` scaffolds in Rust, JavaScript
//! and Python. Results and the machine: BENCHMARKS.md.
//!
//! `cargo bench -p wasmhook --bench plugin_call`

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use wasmhook::runtime::{Limits, PluginEvent, Runtime, bundled};

fn lead_event() -> PluginEvent {
    let data = json!({
        "chatbot_id": "59001dd73709417321c58b11693183a2",
        "first_name": "David",
        "last_name": "Garcia",
        "email": "david.garcia@example.com",
        "phone": "+1 415 555 0100",
        "content": "I would like a quote for the premium plan for 25 agents, with onboarding in \
                    January. We currently use another vendor and need the chat history migrated. \
                    Please call me in the afternoon, Pacific time, or email me the details. We \
                    also want to know about the API rate limits, SSO with Okta, data residency in \
                    the EU, and whether the AI assistant can be trained on our help-center \
                    articles. Budget approved for Q1; decision by mid-December. Our team \
                    works across three time zones, so asynchronous follow-up is best. Thanks!",
        "session_id": 31305,
        "uri": "https://www.helloclient.com/pricing?utm_source=newsletter&utm_medium=email",
        "created_at": "2023-11-23T18:36:21.512302Z"
    });
    PluginEvent {
        id: "evt_01JD2B8Q3Z7XKQ5N9V4W6R1T0M".into(),
        event_type: "lead.created".into(),
        source: "helloclient".into(),
        occurred_at: "2023-11-23T18:36:21.512302Z".into(),
        payload: data.to_string(),
    }
}

fn bench(c: &mut Criterion) {
    let event = lead_event();
    let size = event.payload.len() + event.id.len() + event.event_type.len() + 60;
    eprintln!("event size ≈ {size} bytes");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runtime = Runtime::new(Limits::default(), None).unwrap();
    let plugin = runtime
        .load(bundled::find("helloclient-lead").unwrap().wasm)
        .unwrap();

    let mut group = c.benchmark_group("handle/helloclient-lead");
    group.bench_function("wasm, fresh instance", |b| {
        b.to_async(&rt).iter(|| async {
            let report = runtime.handle(&plugin, &event, "{}").await;
            assert!(report.result.is_ok());
            report
        })
    });

    let native_event = wasmhook_guest::Event {
        id: event.id.clone(),
        event_type: event.event_type.clone(),
        source: event.source.clone(),
        occurred_at: event.occurred_at.clone(),
        payload: event.payload.clone(),
    };
    group.bench_function("native", |b| {
        b.iter(|| {
            // The same entry point the wasm export calls: config parse + handle.
            wasmhook_guest::__private::handle::<helloclient_lead::HelloClientLead>(
                native_event.clone(),
                "{}".to_string(),
            )
            .unwrap()
        })
    });
    group.finish();

    // The scaffolds' plugins (`wasmhook plugin new`, built by the
    // integration tests into target/plugin-scaffolds) on a ~1 KB
    // `message.created`: compile at upload, size on disk, and instantiate +
    // `handle` in a fresh instance.
    let message = PluginEvent {
        event_type: "message.created".into(),
        payload: json!({
            "conversation_id": "c_31305",
            "author": "visitor",
            "content": lead_event().payload,
        })
        .to_string(),
        ..lead_event()
    };
    eprintln!("message event size ≈ {} bytes", message.payload.len() + 100);
    for (lang, path) in scaffold_plugins() {
        let Ok(wasm) = std::fs::read(&path) else {
            eprintln!(
                "skipping {lang}: {} not built (run the integration tests)",
                path.display()
            );
            continue;
        };
        let cache = tempfile::tempdir().unwrap();
        let cached = Runtime::new(Limits::default(), Some(cache.path().to_path_buf())).unwrap();
        let started = std::time::Instant::now();
        cached.load(&wasm).unwrap();
        let compile = started.elapsed();
        let started = std::time::Instant::now();
        cached.load(&wasm).unwrap();
        let mapped = started.elapsed();
        let artifact: u64 = std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        eprintln!(
            "{lang}: component {} bytes, compiled {} bytes; compile {compile:?}, load from the cache {mapped:?}",
            wasm.len(),
            artifact
        );
        let plugin = runtime.load(&wasm).unwrap();
        let mut group = c.benchmark_group(format!("handle/scaffold-{lang}"));
        group.bench_function("wasm, fresh instance", |b| {
            b.to_async(&rt).iter(|| async {
                let report = runtime.handle(&plugin, &message, "{}").await;
                assert!(report.result.is_ok(), "{:?}", report.result);
                report
            })
        });
        group.finish();
    }
}

/// `WASMHOOK_BENCH_PLUGINS=js=a.wasm,python=b.wasm`, or the integration
/// tests' builds.
fn scaffold_plugins() -> Vec<(String, std::path::PathBuf)> {
    match std::env::var("WASMHOOK_BENCH_PLUGINS") {
        Ok(list) => list
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(lang, path)| (lang.to_string(), path.into()))
            .collect(),
        Err(_) => {
            let root =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugin-scaffolds");
            ["rust", "js", "python"]
                .into_iter()
                .map(|lang| {
                    let dir = root.join(format!("notify-{lang}"));
                    (lang.to_string(), dir.join("plugin.wasm"))
                })
                .collect()
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
