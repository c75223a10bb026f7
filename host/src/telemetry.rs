//! Prometheus metrics: what operators scrape at `GET /metrics`.
//!
//! Stages record through the `metrics` facade with the helpers below, so
//! every family's name, help text, labels and buckets live in this one file
//! and a call site cannot invent a label. Label values come from small fixed
//! sets (a status, an outcome, a route template), never from ids or URLs, so
//! the number of series stays bounded whatever the tenants do.
//!
//! The recorder is process-global (the `metrics` facade's design); it is
//! installed once, by [`Telemetry::install`], and rendered on demand, with
//! the gauges that are cheaper to read than to maintain (queue depth,
//! process figures) sampled at scrape time.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Attempt and request durations: 1 ms to 30 s (a delivery's default
/// timeout is 10 s; beyond 30 s it has timed out anyway).
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Plugin calls: tens of microseconds to the 5 s flush budget.
const PLUGIN_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0,
];
/// Accepted → delivered: milliseconds for a healthy endpoint, hours after
/// retries, a day for a window.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0,
    86400.0,
];

/// The installed recorder.
#[derive(Clone)]
pub struct Telemetry {
    handle: PrometheusHandle,
}

static INSTALLED: OnceLock<Telemetry> = OnceLock::new();

impl Telemetry {
    /// Installs the process-wide recorder (once; later calls share it) and
    /// starts its upkeep, which keeps histograms bounded between scrapes.
    /// Must be called inside a tokio runtime.
    pub fn install() -> Telemetry {
        let telemetry = INSTALLED.get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("wasmhook_plugin_call_duration_seconds".into()),
                    PLUGIN_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("wasmhook_delivery_latency_seconds".into()),
                        LATENCY_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_duration_seconds".into()),
                        DURATION_BUCKETS,
                    )
                })
                .expect("bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder already installed (an embedding program):
            // rendering then shows what this one saw, which is nothing.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            zeroes();
            Telemetry { handle }
        });
        let handle = telemetry.handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
        telemetry.clone()
    }

    /// The text exposition, with the sampled gauges read now.
    pub fn render(&self, queued: u64, in_flight: u32) -> String {
        gauge!("wasmhook_queue_depth", "state" => "queued").set(queued as f64);
        gauge!("wasmhook_queue_depth", "state" => "in_flight").set(f64::from(in_flight));
        process_collector().collect();
        self.handle.render()
    }
}

fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let c = metrics_process::Collector::default();
        c.describe();
        c
    })
}

fn describe() {
    describe_counter!(
        "wasmhook_subscription_pauses_total",
        "Subscriptions paused because their receiver answered 429 or 503 with Retry-After."
    );
    describe_counter!(
        "wasmhook_ordered_advances_total",
        "Ordered lines that moved on: the next delivery of a key made pending."
    );
    describe_counter!(
        "wasmhook_forwarded_requests_total",
        "Partitioned cluster: requests forwarded to the node holding their tenant's partition, by the way they went (direct: HTTP to its advertised API; nats: over the cluster's NATS)."
    );
    describe_counter!(
        "wasmhook_auth_throttled_total",
        "Requests with invalid credentials answered 429: their address failed too often."
    );
    describe_counter!(
        "wasmhook_http_connections_over_cap_total",
        "Connections over server.max_connections served one quick request (/healthz, else 503)."
    );
    describe_counter!(
        "wasmhook_http_connections_refused_total",
        "Connections over server.max_connections and the spare ones: closed at once."
    );
    describe_counter!(
        "wasmhook_events_accepted_total",
        "Events stored (202), one per event of a batch."
    );
    describe_counter!(
        "wasmhook_events_duplicate_total",
        "Events whose id the tenant had sent before: answered, nothing stored."
    );
    describe_counter!(
        "wasmhook_deliveries_created_total",
        "Deliveries created, by their first status (pending, filtered, held, failed)."
    );
    describe_counter!(
        "wasmhook_delivery_attempts_total",
        "Attempts, by what followed: succeeded, retry, failed (given up), disabled (the endpoint was disabled)."
    );
    describe_histogram!(
        "wasmhook_delivery_attempt_duration_seconds",
        Unit::Seconds,
        "One HTTP attempt, request sent to response read."
    );
    describe_histogram!(
        "wasmhook_delivery_latency_seconds",
        Unit::Seconds,
        "Delivery created (event accepted or window flushed) to its successful attempt."
    );
    describe_gauge!(
        "wasmhook_queue_depth",
        "Deliveries queued for an attempt or in flight now."
    );
    describe_counter!(
        "wasmhook_plugin_calls_total",
        "Plugin calls, by outcome (ok, plugin_error, timeout, memory, trap, output, instantiate, busy)."
    );
    describe_histogram!(
        "wasmhook_plugin_call_duration_seconds",
        Unit::Seconds,
        "One plugin call, instantiation included."
    );
    describe_histogram!(
        "wasmhook_plugin_load_seconds",
        Unit::Seconds,
        "Loading a plugin into memory on first use: mapping its cached artifact, or compiling it (seconds for a JavaScript or Python component)."
    );
    describe_counter!(
        "wasmhook_subscriptions_disabled_total",
        "Subscriptions disabled, by reason (gone: the endpoint answered 410; failures: too many failed deliveries in a row; operator)."
    );
    describe_counter!(
        "wasmhook_subscriptions_enabled_total",
        "Disabled subscriptions enabled again."
    );
    describe_counter!(
        "wasmhook_window_flushes_total",
        "Window flushes, by outcome (ok, failed)."
    );
    describe_counter!(
        "wasmhook_source_requests_total",
        "Platform requests to sources (/in/{id}), by source kind and outcome (accepted, unauthorized: a bad signature, dead_letter: verified but not normalizable)."
    );
    describe_counter!(
        "wasmhook_http_requests_total",
        "API requests, by route template and status code."
    );
    describe_histogram!(
        "wasmhook_http_request_duration_seconds",
        Unit::Seconds,
        "API requests, by route template."
    );
}

/// Every counter series at 0 from the start, so a rate reads 0 rather than
/// "no data" before the first event of its kind.
fn zeroes() {
    counter!("wasmhook_events_accepted_total").increment(0);
    counter!("wasmhook_events_duplicate_total").increment(0);
    for status in ["pending", "filtered", "held", "failed"] {
        counter!("wasmhook_deliveries_created_total", "status" => status).increment(0);
    }
    for outcome in ["succeeded", "retry", "failed", "disabled"] {
        for destination in ["http", "nats", "amqp", "redis", "listen"] {
            counter!("wasmhook_delivery_attempts_total", "outcome" => outcome, "destination" => destination)
                .increment(0);
        }
    }
    for outcome in [
        "ok",
        "plugin_error",
        "timeout",
        "memory",
        "trap",
        "output",
        "instantiate",
        "busy",
    ] {
        counter!("wasmhook_plugin_calls_total", "outcome" => outcome).increment(0);
    }
    for reason in [
        DisableReason::Gone,
        DisableReason::Failures,
        DisableReason::Operator,
    ] {
        counter!("wasmhook_subscriptions_disabled_total", "reason" => reason.as_str()).increment(0);
    }
    counter!("wasmhook_subscriptions_enabled_total").increment(0);
    for outcome in ["ok", "failed"] {
        counter!("wasmhook_window_flushes_total", "outcome" => outcome).increment(0);
    }
}

/// Events stored and duplicates answered by one ingest write.
pub fn events(accepted: usize, duplicate: usize) {
    if accepted > 0 {
        counter!("wasmhook_events_accepted_total").increment(accepted as u64);
    }
    if duplicate > 0 {
        counter!("wasmhook_events_duplicate_total").increment(duplicate as u64);
    }
}

/// A delivery was created with `status` (pending, filtered, held, failed).
pub fn delivery_created(status: &'static str) {
    counter!("wasmhook_deliveries_created_total", "status" => status).increment(1);
}

/// A subscription paused at its receiver's request (429/503 with
/// `Retry-After`).
pub fn paused() {
    counter!("wasmhook_subscription_pauses_total").increment(1);
}

/// An ordered line moved on: its next delivery made pending.
pub fn line_advanced() {
    counter!("wasmhook_ordered_advances_total").increment(1);
}

/// What an attempt led to.
#[derive(Debug, Clone, Copy)]
pub enum AttemptOutcome {
    Succeeded,
    Retry,
    Failed,
    Disabled,
}

/// One attempt: its outcome, its destination's type (`http`, `nats`,
/// `amqp`, `redis`) and how long the request or publish took.
pub fn attempt(outcome: AttemptOutcome, destination: &'static str, duration: Duration) {
    let outcome = match outcome {
        AttemptOutcome::Succeeded => "succeeded",
        AttemptOutcome::Retry => "retry",
        AttemptOutcome::Failed => "failed",
        AttemptOutcome::Disabled => "disabled",
    };
    counter!("wasmhook_delivery_attempts_total", "outcome" => outcome, "destination" => destination)
        .increment(1);
    histogram!("wasmhook_delivery_attempt_duration_seconds", "destination" => destination)
        .record(duration.as_secs_f64());
}

/// A delivery succeeded `latency` after it was created.
pub fn delivered(latency: Duration) {
    histogram!("wasmhook_delivery_latency_seconds").record(latency.as_secs_f64());
}

/// One plugin call that ran (or failed to start) in the sandbox; `outcome`
/// is `ok` or its error's label (`runtime::CallError::outcome`).
pub fn plugin_call(outcome: &'static str, elapsed: Duration) {
    counter!("wasmhook_plugin_calls_total", "outcome" => outcome).increment(1);
    histogram!("wasmhook_plugin_call_duration_seconds").record(elapsed.as_secs_f64());
}

/// A plugin loaded into memory (first use after start, or a new upload).
pub fn plugin_loaded(elapsed: Duration) {
    histogram!("wasmhook_plugin_load_seconds").record(elapsed.as_secs_f64());
}

/// A request forwarded to its partition's holder (`via`: "direct" or "nats").
pub fn forwarded(via: &'static str) {
    counter!("wasmhook_forwarded_requests_total", "via" => via).increment(1);
}

/// A request with invalid credentials from an address that failed too often.
pub fn auth_throttled() {
    counter!("wasmhook_auth_throttled_total").increment(1);
}

/// A plugin call refused by admission (the pool or the tenant's share full).
pub fn plugin_busy() {
    counter!("wasmhook_plugin_calls_total", "outcome" => "busy").increment(1);
}

/// Why a subscription was disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisableReason {
    /// The endpoint answered 410 Gone.
    Gone,
    /// Too many deliveries in a row failed.
    Failures,
    /// Through the API (a tenant or the operator).
    Operator,
}

impl DisableReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisableReason::Gone => "gone",
            DisableReason::Failures => "failures",
            DisableReason::Operator => "operator",
        }
    }
}

pub fn subscription_disabled(reason: DisableReason) {
    counter!("wasmhook_subscriptions_disabled_total", "reason" => reason.as_str()).increment(1);
}

pub fn subscription_enabled() {
    counter!("wasmhook_subscriptions_enabled_total").increment(1);
}

/// One window flush attempt.
pub fn window_flush(ok: bool) {
    let outcome = if ok { "ok" } else { "failed" };
    counter!("wasmhook_window_flushes_total", "outcome" => outcome).increment(1);
}

/// One API request. `route` is the matched route template (`/v1/deliveries/{id}`),
/// or `other` for paths no route matched.
/// One platform request to a source, by kind and outcome.
pub fn source_request(kind: &'static str, outcome: &'static str) {
    counter!("wasmhook_source_requests_total", "kind" => kind, "outcome" => outcome).increment(1);
}

pub fn http_request(route: &str, status: u16, elapsed: Duration) {
    counter!(
        "wasmhook_http_requests_total",
        "route" => route.to_string(),
        "status" => status.to_string()
    )
    .increment(1);
    histogram!("wasmhook_http_request_duration_seconds", "route" => route.to_string())
        .record(elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
    /// The Grafana dashboard under `deploy/` queries only families this
    /// module defines (a renamed metric would leave a panel blank).
    #[test]
    fn the_grafana_dashboard_uses_only_our_families() {
        let dashboard = include_str!("../../deploy/grafana-dashboard.json");
        let source = include_str!("telemetry.rs");
        let mut seen = 0;
        for (i, _) in dashboard.match_indices("wasmhook_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let family = name.strip_suffix("_bucket").unwrap_or(&name);
            assert!(
                source.contains(&format!("\"{family}\"")),
                "the dashboard queries {family}, which telemetry.rs does not define"
            );
            seen += 1;
        }
        assert!(seen > 10);
    }
}
