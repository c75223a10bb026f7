//! Sending one attempt: an HTTP POST through the SSRF guard, with a timeout,
//! classified into a [`retry::Outcome`](crate::retry::Outcome) plus what the
//! delivery log records (status, duration, truncated response, error text).

pub mod bus;
pub mod listen;
pub mod ssrf;
pub mod tls;
pub mod worker;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde_json::Value;

use crate::clock::Clock;
use crate::queue::Queue;
use crate::retry::{Outcome, parse_retry_after};
use crate::store::{Destination, EndpointTls, Store};

/// What the delivery stage is handed, and nothing more: the records it
/// updates, the queue it leases from, the HTTP sender, the clock.
#[derive(Clone)]
pub struct Stage {
    pub store: Store,
    pub queue: Queue,
    pub sender: Sender,
    pub clock: Arc<dyn Clock>,
    /// How long shutdown waits for in-flight attempts.
    pub shutdown_grace: Duration,
}

/// Response bodies are recorded up to this many bytes.
pub const RECORDED_BODY_BYTES: usize = 4 * 1024;
/// Response bodies are read up to this many bytes (to compare `expect_body`).
const READ_BODY_BYTES: usize = 64 * 1024;

/// One attempt to send: a POST to `url`, or a publish to `destination`.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub url: &'a str,
    /// A broker instead of the POST (`bus.rs`).
    pub destination: Option<&'a Destination>,
    /// The delivery's id (a broker's message id).
    pub delivery_id: &'a str,
    /// Its subscription (a listen destination's session).
    pub subscription_id: &'a str,
    pub event_type: &'a str,
    pub body: &'a [u8],
    pub content_type: &'a str,
    /// Signature headers and the plugin's extra headers.
    pub headers: &'a [(String, String)],
    pub timeout: Duration,
    /// A required response body, compared as JSON.
    pub expect_body: Option<&'a Value>,
    /// The endpoint's own TLS settings (mutual TLS, a private CA).
    pub tls: Option<&'a EndpointTls>,
}

/// What the delivery log keeps of one attempt.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub outcome: Outcome,
    pub status: Option<u16>,
    pub duration_ms: u64,
    /// Truncated to [`RECORDED_BODY_BYTES`].
    pub response_body: Option<String>,
    pub error: Option<String>,
}

/// Where deliveries go out: the operator's egress proxy and the CAs
/// trusted besides the system's (`[delivery] proxy`, `no_proxy`,
/// `ca_file`).
#[derive(Clone, Default)]
pub struct Egress {
    pub proxy: Option<reqwest::Url>,
    /// Destinations reached directly (reqwest's `NO_PROXY` syntax).
    pub no_proxy: Vec<String>,
    pub roots: Vec<reqwest::Certificate>,
    /// The cluster's own NATS URLs (cluster mode): never a destination.
    pub internal_nats: Vec<String>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a proxy's password.
        let proxy = self.proxy.as_ref().map(|u| {
            let mut u = u.clone();
            let _ = u.set_password(None);
            u.to_string()
        });
        f.debug_struct("Egress")
            .field("proxy", &proxy)
            .field("no_proxy", &self.no_proxy)
            .field("roots", &self.roots.len())
            .field("internal_nats", &self.internal_nats)
            .finish()
    }
}

impl Egress {
    /// From the config's text; an error names its key.
    pub fn from_config(
        proxy: &str,
        no_proxy: &[String],
        ca_file: &str,
    ) -> Result<Self, (&'static str, String)> {
        let proxy = match proxy.trim() {
            "" => None,
            text => {
                // Never echoed: it may carry the proxy's password.
                let url = reqwest::Url::parse(text)
                    .map_err(|e| ("delivery.proxy", format!("not a URL: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    return Err((
                        "delivery.proxy",
                        "must be an http:// or https:// proxy URL with a host".into(),
                    ));
                }
                Some(url)
            }
        };
        if let Some(bad) = no_proxy.iter().find(|h| {
            h.is_empty() || h.contains([',', ' ', '/']) && h.parse::<ssrf::Cidr>().is_err()
        }) {
            return Err((
                "delivery.no_proxy",
                format!("{bad:?} is not a host name, an IP or a CIDR"),
            ));
        }
        let roots = match ca_file.trim() {
            "" => Vec::new(),
            path => {
                let pem = std::fs::read_to_string(path)
                    .map_err(|e| ("delivery.ca_file", format!("cannot read {path:?}: {e}")))?;
                tls::certificates(&pem).map_err(|e| ("delivery.ca_file", format!("{path}: {e}")))?
            }
        };
        Ok(Egress {
            proxy,
            no_proxy: no_proxy.to_vec(),
            roots,
            internal_nats: Vec::new(),
        })
    }
}

/// The HTTP client: connection reuse across deliveries, no redirects (a
/// redirect could lead past the SSRF guard, and webhooks are not browsers),
/// no proxies from the environment (only the configured one). An endpoint
/// with TLS settings of its own gets a client of its own, built once and
/// kept while its settings stay the same.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    guard: Arc<ssrf::Guard>,
    egress: Arc<Egress>,
    /// Clients of endpoints with TLS settings, by the SHA-256 of those.
    endpoints: Arc<std::sync::Mutex<std::collections::HashMap<[u8; 32], reqwest::Client>>>,
    /// Brokers' connections.
    buses: Arc<bus::Buses>,
    /// The `wasmhook listen` CLIs connected here.
    listeners: Arc<listen::Listeners>,
}

/// Endpoint clients kept at most (each holds its own connection pool);
/// past it the cache starts again.
const MAX_ENDPOINT_CLIENTS: usize = 1024;

pub use crate::util::install_tls_provider;

impl Sender {
    pub fn new(guard: ssrf::Guard, egress: Egress) -> anyhow::Result<Self> {
        install_tls_provider();
        let guard = Arc::new(guard);
        let client = Self::builder(&guard, &egress)?.build()?;
        let buses = Arc::new(bus::Buses::new(guard.clone(), egress.internal_nats.clone()));
        Ok(Sender {
            client,
            guard,
            egress: Arc::new(egress),
            endpoints: Default::default(),
            buses,
            listeners: Default::default(),
        })
    }

    /// What every client of the sender shares: the guarded resolver, the
    /// proxy, the extra roots.
    fn builder(
        guard: &Arc<ssrf::Guard>,
        egress: &Egress,
    ) -> reqwest::Result<reqwest::ClientBuilder> {
        let mut builder = reqwest::Client::builder()
            .dns_resolver(Arc::new(ssrf::GuardedResolver {
                guard: guard.clone(),
                proxy_host: egress
                    .proxy
                    .as_ref()
                    .and_then(|p| p.host_str().map(str::to_string)),
            }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(64)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("wasmhook/", env!("CARGO_PKG_VERSION")));
        if let Some(url) = &egress.proxy {
            let no_proxy = reqwest::NoProxy::from_string(&egress.no_proxy.join(","));
            builder = builder.proxy(reqwest::Proxy::all(url.clone())?.no_proxy(no_proxy));
        }
        if !egress.roots.is_empty() {
            builder = builder.tls_certs_merge(egress.roots.iter().cloned());
        }
        Ok(builder)
    }

    /// The client for an endpoint: the shared one, or one with the
    /// endpoint's client certificate and CA.
    fn client_for(&self, tls: Option<&EndpointTls>) -> Result<reqwest::Client, String> {
        let Some(tls) = tls else {
            return Ok(self.client.clone());
        };
        let digest: [u8; 32] = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            for part in [&tls.client_certificate, &tls.client_key, &tls.ca] {
                let part = part.as_deref().unwrap_or("");
                h.update((part.len() as u64).to_be_bytes());
                h.update(part.as_bytes());
            }
            h.finalize().into()
        };
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = endpoints.get(&digest) {
            return Ok(client.clone());
        }
        let mut builder = Self::builder(&self.guard, &self.egress).map_err(|e| e.to_string())?;
        if let (Some(cert), Some(key)) = (&tls.client_certificate, &tls.client_key) {
            builder = builder.identity(tls::identity(cert, key)?);
        }
        if let Some(ca) = &tls.ca {
            builder = builder.tls_certs_merge(tls::certificates(ca)?);
        }
        let client = builder.build().map_err(|e| e.to_string())?;
        if endpoints.len() >= MAX_ENDPOINT_CLIENTS {
            endpoints.clear();
        }
        endpoints.insert(digest, client.clone());
        Ok(client)
    }

    /// The brokers' connections (a destination's check at creation).
    pub fn buses(&self) -> &bus::Buses {
        &self.buses
    }

    /// Through the proxy, the destination's name is resolved by the proxy,
    /// not by the guarded resolver: the guard resolves and checks it first.
    async fn check_proxied(&self, url: &reqwest::Url) -> Result<(), String> {
        if self.egress.proxy.is_none() {
            return Ok(());
        }
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Err("the URL has no host".into());
        };
        self.guard.check_name(host, port).await
    }

    /// A GET through the same guarded client (a `poll` source's fetch):
    /// the status, the `Retry-After` seconds if any, and the body, read up
    /// to `max_bytes` (more is an error). A refused address, a timeout or a
    /// connection failure is an error text.
    pub async fn get(
        &self,
        url: &reqwest::Url,
        headers: &[(String, String)],
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<(u16, Option<u64>, Vec<u8>), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("unsupported URL scheme {:?}", url.scheme()));
        }
        if let Some(host) = url.host_str() {
            let literal = host.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = literal.parse::<IpAddr>() {
                self.guard.check(host, ip).map_err(|e| e.to_string())?;
            }
        }
        self.check_proxied(url).await?;
        let mut builder = self
            .client
            .get(url.clone())
            .timeout(timeout)
            .header("accept", "application/json");
        for (name, value) in headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let mut response = builder
            .send()
            .await
            .map_err(|e| classify_error(&e, timeout).1)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| classify_error(&e, timeout).1)?
        {
            if body.len() + chunk.len() > max_bytes {
                return Err(format!("the answer is over {max_bytes} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, retry_after, body))
    }

    /// The `wasmhook listen` CLIs connected to this node.
    pub fn listeners(&self) -> &Arc<listen::Listeners> {
        &self.listeners
    }

    /// Sends one attempt. Never fails: every problem becomes an outcome with
    /// an error text for the log.
    pub async fn send(&self, req: &Request<'_>, now: Timestamp) -> AttemptResult {
        if let Some(Destination::Listen { .. }) = req.destination {
            return self.listeners.attempt(req.subscription_id, req).await;
        }
        if let Some(destination) = req.destination {
            return self.buses.publish(destination, req).await;
        }
        let started = Instant::now();
        let refused = |error: String| AttemptResult {
            outcome: Outcome::Refused,
            status: None,
            duration_ms: 0,
            response_body: None,
            error: Some(error),
        };
        let url = match reqwest::Url::parse(req.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => url,
            Ok(url) => return refused(format!("unsupported URL scheme {:?}", url.scheme())),
            Err(e) => return refused(format!("invalid URL: {e}")),
        };
        // IP literals never reach the resolver, so check them here.
        if let Some(host) = url.host_str() {
            let literal = host.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = literal.parse::<IpAddr>()
                && let Err(e) = self.guard.check(host, ip)
            {
                return refused(e.to_string());
            }
        }
        if let Err(e) = self.check_proxied(&url).await {
            return refused(e);
        }
        let client = match self.client_for(req.tls) {
            Ok(client) => client,
            Err(e) => return refused(format!("tls: {e}")),
        };
        let mut builder = client
            .post(url)
            .timeout(req.timeout)
            .header(reqwest::header::CONTENT_TYPE, req.content_type)
            .body(req.body.to_vec());
        for (name, value) in req.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let response = match builder.send().await {
            Ok(response) => response,
            Err(e) => {
                let (outcome, error) = classify_error(&e, req.timeout);
                return AttemptResult {
                    outcome,
                    status: None,
                    duration_ms: started.elapsed().as_millis() as u64,
                    response_body: None,
                    error: Some(error),
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, now));
        let (body, body_error) = read_limited(response, READ_BODY_BYTES).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        let text = String::from_utf8_lossy(&body).into_owned();
        let recorded = Some(crate::util::truncate(&text, RECORDED_BODY_BYTES));

        let (outcome, error) = if let Some(e) = body_error {
            (
                Outcome::Transport,
                Some(format!("reading the response failed: {e}")),
            )
        } else if !(200..300).contains(&status) {
            (
                Outcome::Status {
                    code: status,
                    retry_after,
                },
                Some(format!("HTTP {status}")),
            )
        } else if let Some(expected) = req.expect_body {
            match serde_json::from_slice::<Value>(&body) {
                Ok(got) if &got == expected => (Outcome::Delivered, None),
                _ => (
                    Outcome::BodyMismatch,
                    Some(format!(
                        "response body mismatch: expected {expected}, got {:?}",
                        crate::util::truncate(&text, 200)
                    )),
                ),
            }
        } else {
            (Outcome::Delivered, None)
        };
        AttemptResult {
            outcome,
            status: Some(status),
            duration_ms,
            response_body: recorded,
            error,
        }
    }
}

/// Reads at most `limit` bytes of the body (the rest is not needed).
async fn read_limited(mut response: reqwest::Response, limit: usize) -> (Vec<u8>, Option<String>) {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= limit {
                    return (body, None);
                }
            }
            Ok(None) => return (body, None),
            Err(e) => return (body, Some(e.to_string())),
        }
    }
}

/// Names the transport failure: SSRF refusal, DNS, connect, timeout, TLS.
fn classify_error(e: &reqwest::Error, timeout: Duration) -> (Outcome, String) {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut chain = Vec::new();
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<ssrf::Refused>() {
            return (Outcome::Refused, refused.to_string());
        }
        chain.push(err.to_string());
        source = err.source();
    }
    let detail = chain.last().cloned().unwrap_or_default();
    let lower = chain.join(" ").to_ascii_lowercase();
    let error = if e.is_timeout() {
        format!("timeout: no answer within {} ms", timeout.as_millis())
    } else if lower.contains("dns error")
        || lower.contains("failed to lookup")
        || lower.contains("did not resolve")
    {
        format!("dns: {detail}")
    } else if lower.contains("certificate") || lower.contains("tls") {
        format!("tls: {detail}")
    } else if e.is_connect() {
        format!("connect: {detail}")
    } else {
        format!("request failed: {detail}")
    };
    (Outcome::Transport, error)
}
