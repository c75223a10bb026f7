//! Settings: the fully commented defaults compiled in
//! (`default-config.toml`), then a file, then `WASMHOOK_*` environment
//! variables, then flags; validated once at start-up into typed values, with
//! errors that name the key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::deliver::ssrf::Cidr;
use crate::runtime::Limits;

/// The defaults, as shipped (`wasmhook config` would print them).
pub const DEFAULT_CONFIG: &str = include_str!("default-config.toml");

/// A configuration problem; the message names the key or variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("config key {key}: {message}")]
    Invalid { key: String, message: String },
}

/// The shortest operator token accepted: the token opens every tenant.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: ServerSection,
    pub metrics: MetricsSection,
    pub telemetry: TelemetrySection,
    pub delivery: DeliverySection,
    pub events: EventsSection,
    pub plugins: PluginsSection,
    pub limits: LimitsSection,
    pub sources: SourcesSection,
    pub cluster: ClusterSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesSection {
    pub nats_allow: Vec<String>,
    pub rate_limit: u32,
    pub dead_letter_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub nats_urls: Vec<String>,
    pub replicas: usize,
    pub mode: String,
    pub partitions: u32,
    pub lease_secs: u64,
    pub read_lease_secs: u64,
    pub snapshot_secs: u64,
    pub node_id: String,
    pub advertise_url: String,
    pub tls_ca_file: String,
    pub tls_cert_file: String,
    pub tls_key_file: String,
    pub creds_file: String,
    pub nkey_seed_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub subscriptions_per_tenant: usize,
    pub apps_per_tenant: usize,
    pub event_types_per_tenant: usize,
    pub plugins_per_tenant: usize,
    pub keys_per_tenant: usize,
    pub sources_per_tenant: usize,
    pub deliveries_per_request: usize,
    pub pending_deliveries_per_tenant: u64,
    pub window_max_bytes: u64,
    pub window_max_items: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub listen: String,
    pub data_dir: PathBuf,
    pub store_cache_mb: u64,
    pub admin_token: String,
    pub log_format: String,
    pub max_event_bytes: usize,
    pub max_plugin_bytes: usize,
    pub ingest_rate_limit: u32,
    pub max_connections: usize,
    pub header_read_timeout_secs: u64,
    pub body_read_timeout_secs: u64,
    pub secrets_key: String,
    pub previous_secrets_keys: Vec<String>,
    pub public_url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    pub otlp_endpoint: String,
    pub service_name: String,
    pub sample_percent: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySection {
    pub workers: usize,
    pub max_in_flight_per_subscription: u32,
    pub max_in_flight_per_tenant: u32,
    pub default_timeout_ms: u64,
    pub shutdown_grace_secs: u64,
    pub allow_private_destinations: bool,
    pub allow_cidrs: Vec<String>,
    pub secret_grace_secs: u64,
    pub proxy: String,
    pub no_proxy: Vec<String>,
    pub ca_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSection {
    pub retention_days: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsSection {
    pub memory_mb: usize,
    pub handle_timeout_ms: u64,
    pub flush_timeout_ms: u64,
    pub output_bytes: usize,
    pub max_requests: usize,
    pub log_lines: usize,
    pub max_concurrent_calls: u32,
    pub tenant_share_percent: u32,
    pub admission_wait_ms: u64,
    pub shared_cache_dir: String,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// A second address serving only `/metrics`, without authentication.
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// sled's page cache, bytes.
    pub store_cache_bytes: u64,
    pub admin_token: Option<String>,
    /// The key secrets are sealed with (None: generated into the data
    /// directory at first start).
    pub secrets_key: Option<String>,
    /// Keys that still open secrets sealed before a rotation.
    pub previous_secrets_keys: Vec<String>,
    pub json_logs: bool,
    /// OpenTelemetry traces go to this OTLP/HTTP collector (`traces.rs`).
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
    /// Traces kept, in percent (the root spans'; children follow).
    pub sample_percent: u32,
    pub max_event_bytes: usize,
    pub max_plugin_bytes: usize,
    /// The address the dashboard is reached at from outside (portal
    /// links point there); None: the request's own `Host`.
    pub public_url: Option<String>,
    pub ingest_rate_limit: u32,
    /// The HTTP listener's bounds.
    pub http: crate::http::HttpLimits,
    pub workers: usize,
    pub max_in_flight_per_subscription: u32,
    pub max_in_flight_per_tenant: u32,
    pub default_timeout: Duration,
    pub shutdown_grace: Duration,
    pub allow_private_destinations: bool,
    pub allow_cidrs: Vec<Cidr>,
    /// Deliveries go out through this proxy, with the SSRF guard still
    /// deciding on each destination (see `deliver::Egress`).
    pub egress: crate::deliver::Egress,
    /// Brokers `nats` sources may read (`sources.nats_allow`).
    pub nats_allow: Vec<crate::deliver::ssrf::BrokerAllow>,
    /// Requests per second per source on `/in/{id}` (0: no limit).
    pub source_rate_limit: u32,
    /// The bytes of dead letters one source keeps (the oldest go first).
    pub dead_letter_bytes: u64,
    pub secret_grace: Duration,
    pub retention: Duration,
    pub limits: Limits,
    /// Percent of the plugin slots one tenant may hold.
    pub tenant_share_percent: u32,
    pub admission_wait: Duration,
    /// Compiled plugins shared by this host's wasmhook processes
    /// (`plugins.shared_cache_dir`; trusted like the binary).
    pub shared_cache_dir: Option<PathBuf>,
    pub bounds: crate::app::Bounds,
    /// Cluster mode (NATS JetStream), when set.
    pub cluster: Option<ClusterConfig>,
}

/// Validated `[cluster]` settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub urls: Vec<String>,
    /// None: decided from the NATS cluster's size.
    pub replicas: Option<usize>,
    pub leases: crate::cluster::leases::LeaseSettings,
    /// Each tenant's data stored and worked only by the node leasing its
    /// partition (`cluster.mode = "partitioned"`); else a replica set.
    pub partitioned: bool,
    /// Partitioned: how long a read lease lasts (`store/cluster/readers.rs`);
    /// None: every request asks the control log where it ends.
    pub read_lease: Option<Duration>,
    /// How often the leading node snapshots its view and compacts the
    /// log; None: never.
    pub snapshot_every: Option<Duration>,
    pub node_id: String,
    /// Where the other nodes reach this node's API (partitioned: they
    /// forward a tenant's requests there directly rather than over NATS).
    pub advertise: Advertise,
    /// TLS and credentials for the cluster's NATS.
    pub auth: crate::cluster::NatsAuth,
}

impl ClusterConfig {
    /// How to reach the cluster's NATS: what a node and `wasmhook migrate`
    /// both connect with.
    pub fn settings(&self) -> crate::cluster::ClusterSettings {
        crate::cluster::ClusterSettings {
            urls: self.urls.clone(),
            replicas: self.replicas,
            request_timeout: Duration::from_secs(5),
            auth: self.auth.clone(),
        }
    }
}

/// `cluster.advertise_url`: where the other nodes reach this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advertise {
    /// `"listen"`: `http://` and the address the API listens on, when that
    /// is one address (not 0.0.0.0 or ::, which name no address to reach).
    Listen,
    /// Only over NATS (the default: see `cluster.advertise_url`).
    Nowhere,
    Url(String),
}

impl Advertise {
    /// The URL to advertise, the API being bound to `bound`, the cluster's
    /// NATS servers at `nats_urls` (`nats_tls`: reached over TLS). A
    /// loopback address is advertised only when the NATS servers are on
    /// loopback too (the whole cluster on one machine): nodes on machines
    /// of their own listening on loopback (behind a proxy of their own)
    /// would reach themselves there. `"listen"` advertises nothing when the
    /// nodes' NATS traffic is encrypted: plain HTTP between them would
    /// carry in clear what NATS carried over TLS (set an https:// URL).
    pub fn url(
        &self,
        bound: std::net::SocketAddr,
        nats_urls: &[String],
        nats_tls: bool,
    ) -> Option<String> {
        match self {
            Advertise::Listen if bound.ip().is_unspecified() || nats_tls => None,
            Advertise::Listen
                if bound.ip().is_loopback() && !nats_urls.iter().all(|u| on_loopback(u)) =>
            {
                None
            }
            Advertise::Listen => Some(format!("http://{bound}")),
            Advertise::Nowhere => None,
            Advertise::Url(url) => Some(url.clone()),
        }
    }
}

/// Whether a NATS URL names this machine.
fn on_loopback(url: &str) -> bool {
    let host = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()));
    host.is_some_and(|h| {
        h == "localhost"
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

fn advertise(text: &str) -> Result<Advertise, ConfigError> {
    match text.trim() {
        "" | "none" => Ok(Advertise::Nowhere),
        "listen" => Ok(Advertise::Listen),
        text => {
            let url = reqwest::Url::parse(text).ok().filter(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some()
                    && u.username().is_empty()
                    && u.password().is_none()
                    && u.query().is_none()
                    && matches!(u.path(), "" | "/")
                    && u.fragment().is_none()
            });
            match url {
                Some(url) => Ok(Advertise::Url(url.as_str().trim_end_matches('/').to_string())),
                None => Err(ConfigError::Invalid {
                    key: "cluster.advertise_url".into(),
                    // Not echoed: it might carry a password.
                    message: "must be an http:// or https:// URL with a host and no credentials, path or query, like http://10.0.0.5:8080, \"listen\" or \"none\"".into(),
                }),
            }
        }
    }
}

/// The `[cluster]` TLS and credential files, each checked readable now
/// (a typo is a start refused with the key's name, not a node that cannot
/// reconnect later).
fn nats_auth(c: &ClusterSection) -> Result<crate::cluster::NatsAuth, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        key: key.to_string(),
        message,
    };
    let file = |key: &str, value: &str| -> Result<Option<PathBuf>, ConfigError> {
        if value.is_empty() {
            return Ok(None);
        }
        let path = PathBuf::from(value);
        std::fs::File::open(&path)
            .map_err(|e| invalid(key, format!("cannot read {value:?}: {e}")))?;
        Ok(Some(path))
    };
    let tls_client = match (
        file("cluster.tls_cert_file", &c.tls_cert_file)?,
        file("cluster.tls_key_file", &c.tls_key_file)?,
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            return Err(invalid(
                "cluster.tls_cert_file",
                "a client certificate needs both cluster.tls_cert_file and cluster.tls_key_file"
                    .into(),
            ));
        }
    };
    let auth = crate::cluster::NatsAuth {
        tls_ca_file: file("cluster.tls_ca_file", &c.tls_ca_file)?,
        tls_client,
        creds_file: file("cluster.creds_file", &c.creds_file)?,
        nkey_seed_file: file("cluster.nkey_seed_file", &c.nkey_seed_file)?,
    };
    if auth.creds_file.is_some() && auth.nkey_seed_file.is_some() {
        return Err(invalid(
            "cluster.creds_file",
            "set cluster.creds_file or cluster.nkey_seed_file, not both".into(),
        ));
    }
    Ok(auth)
}

/// Command-line overrides (the last layer).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub allow_private_destinations: bool,
    /// `--nats`: comma-separated NATS URLs (cluster mode).
    pub nats_urls: Option<String>,
}

impl Config {
    /// Loads every layer with the process environment.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_with_env(overrides, |name| std::env::var(name).ok())
    }

    /// Loads every layer, reading variables through `env` (testable).
    pub fn load_with_env(
        overrides: &Overrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = DEFAULT_CONFIG.parse().expect("the default config parses");
        if let Some(path) = &overrides.config_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let file: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Parse {
                        origin: format!("file {}", path.display()),
                        message: e.to_string(),
                    })?;
            merge(&mut table, file, "")?;
        }
        apply_env(&mut table, &env)?;
        if let Some(token) = env("WASMHOOK_ADMIN_TOKEN").filter(|t| !t.is_empty()) {
            table["server"]["admin_token"] = toml::Value::String(token);
        }
        if let Some(dir) = &overrides.data_dir {
            table["server"]["data_dir"] = toml::Value::String(dir.display().to_string());
        }
        if let Some(listen) = &overrides.listen {
            table["server"]["listen"] = toml::Value::String(listen.clone());
        }
        if overrides.allow_private_destinations {
            table["delivery"]["allow_private_destinations"] = toml::Value::Boolean(true);
        }
        if let Some(urls) = &overrides.nats_urls {
            table["cluster"]["nats_urls"] = toml::Value::Array(
                urls.split(',')
                    .map(|u| toml::Value::String(u.trim().to_string()))
                    .filter(|u| u.as_str() != Some(""))
                    .collect(),
            );
        }
        let raw: RawConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin: "merged".into(),
                    message: e.to_string(),
                })?;
        raw.validate()
    }
}

/// Overlays `from` on `into`; a key the defaults do not have is an error.
fn merge(into: &mut toml::Table, from: toml::Table, path: &str) -> Result<(), ConfigError> {
    for (key, value) in from {
        let full = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(value)) => {
                merge(inner, value, &full)?
            }
            (Some(slot), value) if !slot.is_table() => *slot = value,
            (Some(_), _) => {
                return Err(ConfigError::Invalid {
                    key: full,
                    message: "is a section, not a value".into(),
                });
            }
            (None, _) => {
                return Err(ConfigError::Invalid {
                    key: full,
                    message: "unknown key (see the commented defaults in the README)".into(),
                });
            }
        }
    }
    Ok(())
}

/// `WASMHOOK_<SECTION>_<KEY>` for every key of the defaults, typed like it.
fn apply_env(
    table: &mut toml::Table,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    for (section, values) in table.iter_mut() {
        let Some(values) = values.as_table_mut() else {
            continue;
        };
        for (key, slot) in values.iter_mut() {
            let name = format!("WASMHOOK_{}_{}", section, key).to_ascii_uppercase();
            let Some(raw) = env(&name) else { continue };
            let bad = |expected: &str| ConfigError::Invalid {
                key: name.clone(),
                message: format!("{raw:?} is not {expected}"),
            };
            *slot = match slot {
                toml::Value::String(_) => toml::Value::String(raw.clone()),
                toml::Value::Integer(_) => {
                    toml::Value::Integer(raw.trim().parse().map_err(|_| bad("an integer"))?)
                }
                toml::Value::Boolean(_) => toml::Value::Boolean(match raw.trim() {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => return Err(bad("true or false")),
                }),
                toml::Value::Array(_) => toml::Value::Array(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.to_string()))
                        .collect(),
                ),
                _ => continue,
            };
        }
    }
    Ok(())
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_string(),
            message,
        };
        let positive = |key: &str, v: u64| {
            if v == 0 {
                Err(invalid(key, "must be greater than 0".into()))
            } else {
                Ok(())
            }
        };
        let s = &self.server;
        let listen: SocketAddr = s.listen.parse().map_err(|_| {
            invalid(
                "server.listen",
                format!("{:?} is not an address like 127.0.0.1:8080", s.listen),
            )
        })?;
        let metrics_listen = match self.metrics.listen.trim() {
            "" => None,
            text => Some(text.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "metrics.listen",
                    format!("{text:?} is not an address like 127.0.0.1:9090 (or empty)"),
                )
            })?),
        };
        let otlp_endpoint = match self.telemetry.otlp_endpoint.trim() {
            "" => None,
            text => match reqwest::Url::parse(text) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                    Some(text.to_string())
                }
                _ => {
                    return Err(invalid(
                        "telemetry.otlp_endpoint",
                        format!(
                            "{text:?} is not an http(s) URL like http://127.0.0.1:4318 (or empty)"
                        ),
                    ));
                }
            },
        };
        if self.telemetry.sample_percent > 100 {
            return Err(invalid(
                "telemetry.sample_percent",
                format!("{} is over 100", self.telemetry.sample_percent),
            ));
        }
        let json_logs = match s.log_format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                return Err(invalid(
                    "server.log_format",
                    format!("{other:?} is not \"text\" or \"json\""),
                ));
            }
        };
        for (key, text) in std::iter::once(("server.secrets_key", &s.secrets_key))
            .filter(|(_, k)| !k.is_empty())
            .chain(
                s.previous_secrets_keys
                    .iter()
                    .map(|k| ("server.previous_secrets_keys", k)),
            )
        {
            crate::secrets::Key::parse(text).map_err(|e| invalid(key, e.to_string()))?;
        }
        let token_chars = s.admin_token.chars().count();
        if token_chars > 0 && token_chars < MIN_ADMIN_TOKEN_CHARS {
            return Err(invalid(
                "server.admin_token",
                format!(
                    "the operator token has {token_chars} characters; it needs at least {MIN_ADMIN_TOKEN_CHARS} (e.g. `openssl rand -hex 24`), or leave it unset to have one generated"
                ),
            ));
        }
        positive("server.max_event_bytes", s.max_event_bytes as u64)?;
        positive("server.store_cache_mb", s.store_cache_mb)?;
        positive("server.max_plugin_bytes", s.max_plugin_bytes as u64)?;
        let public_url = match s.public_url.trim_end_matches('/') {
            "" => None,
            u => {
                let parsed = reqwest::Url::parse(u)
                    .map_err(|e| invalid("server.public_url", format!("{u:?}: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https")
                    || parsed.host_str().is_none()
                    || parsed.query().is_some()
                    || parsed.fragment().is_some()
                {
                    return Err(invalid(
                        "server.public_url",
                        format!("{u:?} is not an http(s) address without query or fragment"),
                    ));
                }
                Some(u.to_string())
            }
        };
        positive("server.max_connections", s.max_connections as u64)?;
        positive(
            "server.header_read_timeout_secs",
            s.header_read_timeout_secs,
        )?;
        positive("server.body_read_timeout_secs", s.body_read_timeout_secs)?;
        let d = &self.delivery;
        positive("delivery.workers", d.workers as u64)?;
        positive(
            "delivery.max_in_flight_per_subscription",
            d.max_in_flight_per_subscription as u64,
        )?;
        positive(
            "delivery.max_in_flight_per_tenant",
            d.max_in_flight_per_tenant as u64,
        )?;
        positive("delivery.default_timeout_ms", d.default_timeout_ms)?;
        let allow_cidrs = d
            .allow_cidrs
            .iter()
            .map(|c| {
                c.parse::<Cidr>()
                    .map_err(|e| invalid("delivery.allow_cidrs", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let egress = crate::deliver::Egress::from_config(&d.proxy, &d.no_proxy, &d.ca_file)
            .map_err(|(key, e)| invalid(key, e))?;
        let nats_allow = self
            .sources
            .nats_allow
            .iter()
            .map(|a| a.parse().map_err(|e| invalid("sources.nats_allow", e)))
            .collect::<Result<Vec<_>, _>>()?;
        positive("sources.dead_letter_bytes", self.sources.dead_letter_bytes)?;
        positive("events.retention_days", self.events.retention_days)?;
        let p = &self.plugins;
        positive("plugins.memory_mb", p.memory_mb as u64)?;
        positive("plugins.handle_timeout_ms", p.handle_timeout_ms)?;
        positive("plugins.flush_timeout_ms", p.flush_timeout_ms)?;
        positive(
            "plugins.max_concurrent_calls",
            p.max_concurrent_calls as u64,
        )?;
        if !(1..=100).contains(&p.tenant_share_percent) {
            return Err(invalid(
                "plugins.tenant_share_percent",
                format!(
                    "{} is not a percentage from 1 to 100",
                    p.tenant_share_percent
                ),
            ));
        }
        let l = &self.limits;
        for (key, v) in [
            (
                "limits.subscriptions_per_tenant",
                l.subscriptions_per_tenant as u64,
            ),
            ("limits.plugins_per_tenant", l.plugins_per_tenant as u64),
            ("limits.apps_per_tenant", l.apps_per_tenant as u64),
            (
                "limits.event_types_per_tenant",
                l.event_types_per_tenant as u64,
            ),
            ("limits.keys_per_tenant", l.keys_per_tenant as u64),
            ("limits.sources_per_tenant", l.sources_per_tenant as u64),
            (
                "limits.deliveries_per_request",
                l.deliveries_per_request as u64,
            ),
            (
                "limits.pending_deliveries_per_tenant",
                l.pending_deliveries_per_tenant,
            ),
            ("limits.window_max_bytes", l.window_max_bytes),
            ("limits.window_max_items", l.window_max_items),
        ] {
            positive(key, v)?;
        }
        // A window is flushed into a plugin with `memory_mb` of memory: its
        // items must fit there with room to build the output.
        let memory = (p.memory_mb as u64) << 20;
        if l.window_max_bytes > memory / 2 {
            return Err(invalid(
                "limits.window_max_bytes",
                format!(
                    "{} is more than half of plugins.memory_mb ({} bytes): such a window could never be flushed",
                    l.window_max_bytes, memory
                ),
            ));
        }
        let c = &self.cluster;
        let cluster = if c.nats_urls.is_empty() {
            None
        } else {
            for url in &c.nats_urls {
                if !(url.starts_with("nats://") || url.starts_with("tls://")) {
                    return Err(invalid(
                        "cluster.nats_urls",
                        format!("{url:?} is not a NATS URL like nats://127.0.0.1:4222"),
                    ));
                }
            }
            if s.admin_token.is_empty() {
                return Err(invalid(
                    "server.admin_token",
                    "cluster mode needs the operator token set (server.admin_token or WASMHOOK_ADMIN_TOKEN), the same on every node: a token generated per node would differ".into(),
                ));
            }
            if s.secrets_key.is_empty() {
                return Err(invalid(
                    "server.secrets_key",
                    "cluster mode needs the secrets key set (server.secrets_key or WASMHOOK_SERVER_SECRETS_KEY, e.g. `openssl rand -hex 32`), the same on every node: a key generated per node would differ".into(),
                ));
            }
            positive("cluster.partitions", u64::from(c.partitions))?;
            let partitioned = match c.mode.as_str() {
                "replicas" => false,
                "partitioned" => true,
                other => {
                    return Err(invalid(
                        "cluster.mode",
                        format!("{other:?} is not \"replicas\" or \"partitioned\""),
                    ));
                }
            };
            if c.lease_secs < 3 {
                return Err(invalid(
                    "cluster.lease_secs",
                    format!(
                        "{} is too short: at least 3 (leases are renewed every third of it)",
                        c.lease_secs
                    ),
                ));
            }
            if c.read_lease_secs > 60 {
                return Err(invalid(
                    "cluster.read_lease_secs",
                    format!(
                        "{} is too long: at most 60 (a node that dies without leaving holds every control write up to that long)",
                        c.read_lease_secs
                    ),
                ));
            }
            let node_id = if c.node_id.is_empty() {
                format!("node-{}", hex::encode(rand::random::<[u8; 4]>()))
            } else if c
                .node_id
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
                && c.node_id.len() <= 64
            {
                c.node_id.clone()
            } else {
                return Err(invalid(
                    "cluster.node_id",
                    format!(
                        "{:?} may use only letters, digits, '-' and '_' (at most 64)",
                        c.node_id
                    ),
                ));
            };
            Some(ClusterConfig {
                urls: c.nats_urls.clone(),
                replicas: (c.replicas > 0).then_some(c.replicas),
                leases: crate::cluster::leases::LeaseSettings {
                    partitions: c.partitions,
                    lease: Duration::from_secs(c.lease_secs),
                    by_tenant: partitioned,
                },
                partitioned,
                read_lease: (partitioned && c.read_lease_secs > 0)
                    .then(|| Duration::from_secs(c.read_lease_secs)),
                snapshot_every: (c.snapshot_secs > 0).then(|| Duration::from_secs(c.snapshot_secs)),
                node_id,
                advertise: advertise(&c.advertise_url)?,
                auth: nats_auth(c)?,
            })
        };
        Ok(Config {
            cluster,
            listen,
            metrics_listen,
            data_dir: s.data_dir.clone(),
            store_cache_bytes: s.store_cache_mb << 20,
            admin_token: Some(s.admin_token.clone()).filter(|t| !t.is_empty()),
            secrets_key: Some(s.secrets_key.clone()).filter(|k| !k.is_empty()),
            previous_secrets_keys: s.previous_secrets_keys.clone(),
            json_logs,
            otlp_endpoint,
            service_name: self.telemetry.service_name.clone(),
            sample_percent: self.telemetry.sample_percent,
            max_event_bytes: s.max_event_bytes,
            max_plugin_bytes: s.max_plugin_bytes,
            public_url,
            ingest_rate_limit: s.ingest_rate_limit,
            http: crate::http::HttpLimits {
                max_connections: s.max_connections,
                header_read_timeout: Duration::from_secs(s.header_read_timeout_secs),
                body_read_timeout: Duration::from_secs(s.body_read_timeout_secs),
            },
            workers: d.workers,
            max_in_flight_per_subscription: d.max_in_flight_per_subscription,
            max_in_flight_per_tenant: d.max_in_flight_per_tenant,
            default_timeout: Duration::from_millis(d.default_timeout_ms),
            shutdown_grace: Duration::from_secs(d.shutdown_grace_secs),
            allow_private_destinations: d.allow_private_destinations,
            allow_cidrs,
            egress,
            nats_allow,
            source_rate_limit: self.sources.rate_limit,
            dead_letter_bytes: self.sources.dead_letter_bytes,
            secret_grace: Duration::from_secs(d.secret_grace_secs),
            retention: Duration::from_secs(self.events.retention_days * 24 * 3600),
            limits: Limits {
                memory_bytes: p.memory_mb << 20,
                handle_timeout_ms: p.handle_timeout_ms,
                flush_timeout_ms: p.flush_timeout_ms,
                output_bytes: p.output_bytes,
                max_requests: p.max_requests,
                log_lines: p.log_lines,
                plugin_bytes: s.max_plugin_bytes,
                max_concurrent_calls: p.max_concurrent_calls,
                ..Limits::default()
            },
            tenant_share_percent: p.tenant_share_percent,
            admission_wait: Duration::from_millis(p.admission_wait_ms),
            shared_cache_dir: Some(p.shared_cache_dir.trim())
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
            bounds: crate::app::Bounds {
                subscriptions_per_tenant: l.subscriptions_per_tenant,
                apps_per_tenant: l.apps_per_tenant,
                event_types_per_tenant: l.event_types_per_tenant,
                plugins_per_tenant: l.plugins_per_tenant,
                deliveries_per_request: l.deliveries_per_request,
                pending_deliveries_per_tenant: l.pending_deliveries_per_tenant,
                window_max_bytes: l.window_max_bytes,
                window_max_items: l.window_max_items,
                keys_per_tenant: l.keys_per_tenant,
                sources_per_tenant: l.sources_per_tenant,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)], file: Option<&str>) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let overrides = Overrides {
            config_file: file.map(|text| {
                let path = dir.path().join("wasmhook.toml");
                std::fs::write(&path, text).unwrap();
                path
            }),
            ..Overrides::default()
        };
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_with_env(&overrides, |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn defaults_are_valid() {
        let c = load(&[], None).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./wasmhook-data"));
        assert_eq!(c.limits, Limits::default());
        assert!(c.admin_token.is_none());
        assert!(!c.allow_private_destinations);
        assert_eq!(c.bounds, crate::app::Bounds::default());
        assert_eq!(c.max_in_flight_per_tenant, 16);
        assert!(c.max_in_flight_per_tenant < c.workers as u32);
    }

    #[test]
    fn a_node_advertises_where_the_others_reach_it() {
        let cluster = |advertise: &str| {
            let c = load(
                &[
                    ("WASMHOOK_CLUSTER_NATS_URLS", "nats://127.0.0.1:4222"),
                    ("WASMHOOK_ADMIN_TOKEN", "operator-token-0123456789abcdef-0"),
                    ("WASMHOOK_SERVER_SECRETS_KEY", &"ab".repeat(32)),
                    ("WASMHOOK_CLUSTER_ADVERTISE_URL", advertise),
                ],
                None,
            );
            c.map(|c| c.cluster.unwrap().advertise)
        };
        let local: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let any: std::net::SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let lan: std::net::SocketAddr = "10.0.0.5:8080".parse().unwrap();
        let on_one = [
            "nats://127.0.0.1:4222".to_string(),
            "nats://localhost:4223".into(),
        ];
        let spread = ["nats://10.0.0.7:4222".to_string()];
        assert_eq!(
            cluster("").unwrap(),
            Advertise::Nowhere,
            "over NATS by default"
        );
        let listen = cluster("listen").unwrap();
        assert_eq!(listen, Advertise::Listen);
        assert_eq!(
            listen.url(local, &on_one, false).as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            listen.url(local, &spread, false),
            None,
            "loopback, other machines"
        );
        assert_eq!(listen.url(any, &spread, false), None, "no one address");
        assert_eq!(
            listen.url(lan, &spread, false).as_deref(),
            Some("http://10.0.0.5:8080")
        );
        assert_eq!(
            listen.url(lan, &spread, true),
            None,
            "NATS over TLS: not plain HTTP by default"
        );
        assert_eq!(cluster("none").unwrap().url(lan, &spread, false), None);
        let set = cluster("https://n1.internal:8443/").unwrap();
        assert_eq!(
            set.url(any, &spread, true).as_deref(),
            Some("https://n1.internal:8443")
        );
        for bad in [
            "n1:8080",
            "ftp://n1",
            "http://user:pw@n1:8080",
            "http://n1/?a=1",
            "http://n1:8080/base",
            "http://",
        ] {
            let e = cluster(bad).unwrap_err().to_string();
            assert!(e.contains("cluster.advertise_url"), "{bad}: {e}");
            assert!(!e.contains("pw"), "{e}");
        }
    }

    #[test]
    fn a_window_limit_no_plugin_could_flush_is_refused() {
        let e = load(&[], Some("[limits]\nwindow_max_bytes = 67108864\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.window_max_bytes"), "{e}");
        let e = load(
            &[("WASMHOOK_LIMITS_PENDING_DELIVERIES_PER_TENANT", "0")],
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("limits.pending_deliveries_per_tenant"), "{e}");
    }

    #[test]
    fn file_then_env_override() {
        let c = load(
            &[("WASMHOOK_DELIVERY_WORKERS", "7"), ("WASMHOOK_DELIVERY_ALLOW_CIDRS", "10.0.0.0/8, fd00::/8")],
            Some("[delivery]\nworkers = 3\nallow_private_destinations = true\n[server]\nlisten = \"0.0.0.0:9000\"\n"),
        )
        .unwrap();
        assert_eq!(c.workers, 7);
        assert!(c.allow_private_destinations);
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.allow_cidrs.len(), 2);
        let token = "an-operator-token-of-32-characters";
        let c = load(&[("WASMHOOK_ADMIN_TOKEN", token)], None).unwrap();
        assert_eq!(c.admin_token.as_deref(), Some(token));
        let short = load(&[("WASMHOOK_ADMIN_TOKEN", "tok")], None)
            .unwrap_err()
            .to_string();
        assert!(
            short.contains("server.admin_token") && short.contains("at least 32"),
            "{short}"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = load(&[], Some("[server]\nlisen = \"x\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.lisen") && e.contains("unknown key"),
            "{e}"
        );
        let e = load(&[("WASMHOOK_DELIVERY_WORKERS", "many")], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("WASMHOOK_DELIVERY_WORKERS") && e.contains("integer"),
            "{e}"
        );
        let e = load(&[("WASMHOOK_SERVER_LISTEN", "nowhere")], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.listen"), "{e}");
        let e = load(&[], Some("[delivery]\nworkers = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("delivery.workers"), "{e}");
        let e = load(&[], Some("[delivery]\nallow_cidrs = [\"10.0.0.0/99\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("delivery.allow_cidrs"), "{e}");
        let e = load(&[], Some("[server\n")).unwrap_err().to_string();
        assert!(e.contains("wasmhook.toml"), "{e}");
        let e = load(&[], Some("[delivery]\nworkers = \"3\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("workers"), "{e}");
        let e = load(
            &[("WASMHOOK_TELEMETRY_OTLP_ENDPOINT", "collector:4318")],
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("telemetry.otlp_endpoint"), "{e}");
        let e = load(&[("WASMHOOK_TELEMETRY_SAMPLE_PERCENT", "101")], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("telemetry.sample_percent"), "{e}");
        let c = load(
            &[
                ("WASMHOOK_TELEMETRY_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("WASMHOOK_TELEMETRY_SAMPLE_PERCENT", "10"),
            ],
            None,
        )
        .unwrap();
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4318"));
        assert_eq!(c.sample_percent, 10);
    }
}
