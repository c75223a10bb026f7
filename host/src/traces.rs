//! OpenTelemetry traces (`[telemetry] otlp_endpoint`, off by default):
//! one event followed from the request that brought it, through each
//! subscription's transform and the durable commit, to every attempt of
//! each of its deliveries — retries and restarts included.
//!
//! - The spans are `tracing` spans of one target, [`TARGET`], exported over
//!   OTLP/HTTP (protobuf) by `tracing-opentelemetry` and the SDK's batch
//!   processor. The log output never shows them, and when no endpoint is
//!   configured nothing enables them: they cost what a disabled `tracing`
//!   callsite costs.
//! - `HTTP <method> <route>` for each API request, a child of the caller's
//!   W3C `traceparent` if it sent one; under it `event` per event (its id
//!   and type), `transform` per subscription with a plugin (plugin,
//!   outcome, how many deliveries) and `commit` (the durable write).
//! - The `event` span's context is stored with the event
//!   ([`crate::store::StoredEvent::trace`]): each `attempt` span (delivery
//!   id, attempt number, status, outcome) is its child, whichever node
//!   makes the attempt and however long after. No payload is ever an
//!   attribute.
//! - The exporter sends with this process's own reqwest client on the
//!   server's runtime (the SDK's export thread waits for it): one HTTP
//!   stack, the operator's endpoint only (not a tenant's destination, so
//!   not behind the egress guard, like the cluster's NATS).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState, TracerProvider};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every exported span.
/// (Not a module path, nor the prefix of one: the log filter turns it
/// off without silencing any module.)
pub const TARGET: &str = "wasmhook_otel";

/// Whether traces are exported (set once, at start).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported: callers skip work only traces need (reading
/// an event's trace context before an attempt).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The exporter, kept to flush it at exit.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Sends what is still buffered (at shutdown).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "flushing the traces failed");
        }
    }
}

/// What can go wrong setting traces up.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("telemetry.otlp_endpoint {0:?} is not an http(s) URL")]
    Endpoint(String),
    #[error("building the OTLP exporter: {0}")]
    Build(String),
}

/// The layer that exports [`TARGET`]'s spans to `endpoint` (an OTLP/HTTP
/// collector's base URL, `/v1/traces` added when it has no path), and
/// what flushes it. Must run inside the server's tokio runtime.
pub fn layer<S>(
    endpoint: &str,
    service_name: &str,
    sample_percent: u32,
) -> Result<(impl tracing_subscriber::Layer<S> + use<S>, Exporter), TraceError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let url = traces_url(endpoint)?;
    crate::util::install_tls_provider();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| TraceError::Build(e.to_string()))?;
    let client = OnRuntime {
        http,
        runtime: tokio::runtime::Handle::current(),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_timeout(Duration::from_secs(10))
        .with_http_client(client)
        .build()
        .map_err(|e| TraceError::Build(e.to_string()))?;
    // A trace starts sampled or not at its root; its children (the
    // event, its transforms and attempts) follow, and a caller's sampled
    // traceparent is followed too.
    let sampler = opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
        opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(f64::from(sample_percent) / 100.0),
    ));
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service_name.to_string())
                .build(),
        )
        .build();
    let tracer = provider.tracer("wasmhook");
    ENABLED.store(true, Ordering::Relaxed);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_level(false);
    Ok((layer, Exporter { provider }))
}

/// The collector's traces URL: `endpoint` as given when it has a path,
/// else with `/v1/traces`.
fn traces_url(endpoint: &str) -> Result<String, TraceError> {
    let url = reqwest::Url::parse(endpoint.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| TraceError::Endpoint(endpoint.to_string()))?;
    Ok(if url.path() == "/" || url.path().is_empty() {
        format!("{}/v1/traces", url.as_str().trim_end_matches('/'))
    } else {
        url.to_string()
    })
}

/// The exporter's HTTP client: each request runs on the server's runtime
/// (the SDK exports from a thread of its own, without one).
#[derive(Debug)]
struct OnRuntime {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let http = self.http.clone();
        let (parts, body) = request.into_parts();
        let call = async move {
            let mut builder = http.request(parts.method, parts.uri.to_string()).body(body);
            for (name, value) in &parts.headers {
                builder = builder.header(name, value);
            }
            let response = builder.send().await?;
            let status = response.status();
            let bytes = response.bytes().await?;
            let mut answer = http::Response::new(bytes);
            *answer.status_mut() = status;
            Ok::<_, reqwest::Error>(answer)
        };
        Ok(self.runtime.spawn(call).await??)
    }
}

/// The W3C `traceparent` of a span (None when traces are off).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !enabled() || span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| format_traceparent(&sc))
}

fn format_traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// The span context a `traceparent` names, if well-formed.
fn parse_traceparent(text: &str) -> Option<SpanContext> {
    let mut parts = text.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let sc = SpanContext::new(
        opentelemetry::trace::TraceId::from_hex(trace).ok()?,
        opentelemetry::trace::SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

/// Makes `span` a child of the span `traceparent` names (an incoming
/// request's caller, a stored event). Nothing when either is missing.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if !enabled() || span.is_disabled() {
        return;
    }
    if let Some(sc) = traceparent.and_then(parse_traceparent) {
        let cx = opentelemetry::Context::new().with_remote_span_context(sc);
        let _ = span.set_parent(cx);
    }
}

/// Marks `span` as failed with `message` (an attempt that did not deliver,
/// a plugin that failed).
pub fn set_error(span: &tracing::Span, message: &str) {
    if enabled() && !span.is_disabled() {
        span.set_status(opentelemetry::trace::Status::error(message.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_round_trip_and_bad_ones_are_ignored() {
        let text = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let sc = parse_traceparent(text).unwrap();
        assert_eq!(format_traceparent(&sc), text);
        for bad in [
            "",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-zzf7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_traces_url_gets_its_path_when_it_has_none() {
        assert_eq!(
            traces_url("http://collector:4318").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://c.example/otlp/v1/traces").unwrap(),
            "https://c.example/otlp/v1/traces"
        );
        assert!(traces_url("collector:4318").is_err());
        assert!(traces_url("ftp://c").is_err());
    }
}
