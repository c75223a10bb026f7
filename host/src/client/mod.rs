//! The command line for the API (`wasmhook login`, `subscriptions`,
//! `events`, `deliveries`, `tenants`): HTTP to a running server only, never
//! the store, so it works the same against a single server and any node of
//! a cluster. Human tables by default, `--json` for scripts; the exit code
//! says what failed ([`ClientError::exit_code`]).
//!
//! Where the server and key come from, later winning: the file written by
//! `wasmhook login` (`$WASMHOOK_CLI_CONFIG`, else
//! `$XDG_CONFIG_HOME/wasmhook/cli.toml`, else `~/.config/wasmhook/cli.toml`;
//! 0600), then `WASMHOOK_URL` and `WASMHOOK_KEY`.

mod listen;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What went wrong, with the exit code that says so.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad arguments, or no server or key configured (exit 2).
    #[error("{0}")]
    Usage(String),
    /// 404 (exit 3).
    #[error("not found: {0}")]
    NotFound(String),
    /// 401 or 403 (exit 4).
    #[error("refused: {0}")]
    Auth(String),
    /// 400, 409, 413, 422, 429 (exit 5).
    #[error("{0}")]
    Invalid(String),
    /// 5xx, or the server cannot be reached (exit 6).
    #[error("server unavailable: {0}")]
    Unavailable(String),
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => 2,
            ClientError::NotFound(_) => 3,
            ClientError::Auth(_) => 4,
            ClientError::Invalid(_) => 5,
            ClientError::Unavailable(_) => 6,
        }
    }
}

/// Flags every API command takes.
#[derive(Debug, Args, Clone)]
pub struct Target {
    /// The server (default: `WASMHOOK_URL`, else `wasmhook login`'s).
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The nouns and verbs of the API.
#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Tenants (operator token: `--admin-token` or `WASMHOOK_ADMIN_TOKEN`).
    #[command(subcommand)]
    Tenants(TenantCommand),
    /// Subscriptions (endpoints) of the logged-in tenant.
    #[command(subcommand)]
    Subscriptions(SubscriptionCommand),
    /// The tenant's API keys.
    #[command(subcommand)]
    Keys(KeyCommand),
    /// Uploaded plugins (and the bundled ones).
    #[command(subcommand)]
    Plugins(PluginApiCommand),
    /// Inbound sources (a URL per platform, feeds, polls).
    #[command(subcommand)]
    Sources(SourceCommand),
    /// Applications: the tenant's own customers, each with its endpoints.
    #[command(subcommand)]
    Apps(AppCommand),
    /// The event-type catalog.
    #[command(subcommand, name = "event-types")]
    EventTypes(EventTypeCommand),
    /// Send events.
    #[command(subcommand)]
    Events(EventCommand),
    /// The delivery log: list, show, retry, follow.
    #[command(subcommand)]
    Deliveries(DeliveryCommand),
    /// Save a consistent backup of the server's embedded store to FILE
    /// (operator token: `--admin-token` or `WASMHOOK_ADMIN_TOKEN`); taken
    /// while the server runs. `wasmhook restore` brings it back.
    Backup {
        /// Where to write it (a new file, mode 0600).
        file: PathBuf,
        #[arg(long, env = "WASMHOOK_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: String,
    },
    /// Receive deliveries on this machine without a public URL: a
    /// temporary subscription whose deliveries come over this command's
    /// own connection to the server, each forwarded to `--forward` with
    /// the headers the subscription signs with; the local answer is the
    /// attempt's outcome. The subscription is deleted when this stops (and
    /// expires if this is killed).
    Listen(listen::ListenArgs),
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant; prints its id and API key (shown once).
    Create {
        name: String,
        #[arg(long, env = "WASMHOOK_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: String,
    },
    /// List tenants.
    List {
        #[arg(long, env = "WASMHOOK_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: String,
    },
}

// Parsed once per run: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum SubscriptionCommand {
    List,
    Get {
        id: String,
    },
    /// Create one: `--url https://… --events 'message.*' [--plugin builtin:…]`,
    /// or `--destination` for a broker.
    Create {
        #[arg(
            long,
            required_unless_present = "destination",
            conflicts_with = "destination"
        )]
        url: Option<String>,
        /// A broker instead of an HTTP URL, JSON or `@file` (a file keeps
        /// the broker's password out of the shell's history):
        /// `{"type": "nats", "url": "nats://…", "subject": "crm.leads"}`,
        /// `{"type": "amqp", "url": "amqp://…/vhost", "exchange": "", "routing_key": "crm"}`,
        /// `{"type": "redis", "url": "redis://…", "stream": "crm:leads"}`.
        #[arg(long, value_name = "JSON|@FILE")]
        destination: Option<String>,
        /// Comma-separated patterns (`*`, `message.*`, exact types).
        #[arg(long, default_value = "*")]
        events: String,
        /// `builtin:<name>` or an uploaded plugin's id.
        #[arg(long)]
        plugin: Option<String>,
        /// The plugin's config, JSON.
        #[arg(long, value_name = "JSON")]
        plugin_config: Option<String>,
        /// A retry preset: standard, onwebchat, convosphere, helloclient, ohallo.
        #[arg(long)]
        retry: Option<String>,
        /// Order deliveries by this JSON pointer into the event.
        #[arg(long, value_name = "POINTER")]
        ordering_key: Option<String>,
        /// At most this many attempts a second.
        #[arg(long, value_name = "PER_SECOND")]
        rate_limit: Option<f64>,
        #[arg(long)]
        description: Option<String>,
        /// The application (id or uid) it belongs to.
        #[arg(long)]
        app: Option<String>,
    },
    Delete {
        id: String,
    },
    Enable {
        id: String,
    },
    Disable {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    List,
    /// A new key for the tenant (shown once).
    Create,
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PluginApiCommand {
    List,
    /// Upload a `.wasm` component.
    Upload {
        file: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: Option<String>,
    },
    /// Run a plugin on a sample event (a JSON file, or stdin), nothing sent.
    DryRun {
        /// `builtin:<name>` or an uploaded plugin's id.
        id: String,
        event: Option<PathBuf>,
        /// The plugin's config, JSON.
        #[arg(long, value_name = "JSON")]
        config: Option<String>,
    },
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SourceCommand {
    List,
    /// Create one from its JSON (`{"kind": "helloclient", …}`; see the API).
    Create {
        /// The source as JSON (a file, or stdin with `-` or no file).
        file: Option<PathBuf>,
    },
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// Send an event (a JSON object) or a batch (`{"events": […]}` or an
    /// array) from a file, or from stdin with `-` or no file.
    Send {
        file: Option<PathBuf>,
        /// To one application (id or uid): only its endpoints get them.
        #[arg(long)]
        app: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    List,
    /// Create one: `wasmhook apps create "Clinique Dupont" --uid clinic-42`.
    Create {
        name: String,
        /// Your own id for it (usable wherever the id is).
        #[arg(long)]
        uid: Option<String>,
    },
    /// Delete one (by id or uid) and its endpoints.
    Delete {
        app: String,
    },
    /// A link for the application's customer to manage its own endpoints
    /// in the dashboard (shown once): `wasmhook apps portal-link clinic-42
    /// --expires-in 86400`.
    PortalLink {
        app: String,
        /// Seconds it works for (default 3600, at most 30 days).
        #[arg(long)]
        expires_in: Option<u64>,
        /// The customer sees, changes nothing, sees no secret.
        #[arg(long)]
        read_only: bool,
    },
    /// The application's live portal links.
    PortalLinks {
        app: String,
    },
    /// Revoke a portal link.
    RevokeLink {
        app: String,
        link: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventTypeCommand {
    /// The catalog (`--archived` for archived types too).
    List {
        #[arg(long)]
        archived: bool,
    },
    /// Add a type: `wasmhook event-types create message.created --schema @schema.json --validate`.
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// A JSON Schema of `data`, JSON or `@file`.
        #[arg(long, value_name = "JSON|@FILE")]
        schema: Option<String>,
        /// An example of `data`, JSON or `@file`.
        #[arg(long, value_name = "JSON|@FILE")]
        example: Option<String>,
        /// Refuse events whose `data` does not match the schema.
        #[arg(long)]
        validate: bool,
    },
    /// Archive a type (no longer offered to new endpoints).
    Archive {
        name: String,
    },
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeliveryCommand {
    List {
        #[arg(long)]
        subscription: Option<String>,
        /// pending, blocked, succeeded, failed, filtered, held.
        #[arg(long)]
        status: Option<String>,
        /// 1 to 500.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=500))]
        limit: u16,
    },
    Show {
        id: String,
    },
    Retry {
        id: String,
    },
    /// Follow new deliveries, one line each, until interrupted.
    Tail {
        #[arg(long)]
        subscription: Option<String>,
    },
}

/// `wasmhook login`'s file.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    url: Option<String>,
    key: Option<String>,
}

fn config_path() -> Result<PathBuf, ClientError> {
    if let Some(p) = std::env::var_os("WASMHOOK_CLI_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(
            std::env::var_os("HOME")
                .ok_or_else(|| ClientError::Usage("no HOME: set WASMHOOK_CLI_CONFIG".into()))?,
        )
        .join(".config"),
    };
    Ok(base.join("wasmhook").join("cli.toml"))
}

fn saved() -> Saved {
    config_path()
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| toml::from_str(&text).ok())
        .unwrap_or_default()
}

/// Checks the key against the server, then keeps both in the config file
/// (0600).
pub async fn login(target: &Target, key: Option<String>) -> Result<(), ClientError> {
    let url = server_url(target)?;
    let key = key
        .or_else(|| std::env::var("WASMHOOK_KEY").ok())
        .ok_or_else(|| ClientError::Usage("give --key (or WASMHOOK_KEY)".into()))?;
    let api = Api::new(url.clone(), key.clone())?;
    api.call("GET", "/v1/subscriptions", None).await?;
    let path = config_path()?;
    let text = toml::to_string(&Saved {
        url: Some(url.clone()),
        key: Some(key),
    })
    .map_err(|e| ClientError::Usage(e.to_string()))?;
    write_private(&path, &text)
        .map_err(|e| ClientError::Usage(format!("writing {}: {e}", path.display())))?;
    println!("logged in to {url}; saved in {}", path.display());
    Ok(())
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode on open: make it 0600 too.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(text.as_bytes())
}

fn server_url(target: &Target) -> Result<String, ClientError> {
    target
        .server
        .clone()
        .or_else(|| std::env::var("WASMHOOK_URL").ok())
        .or_else(|| saved().url)
        .map(|u| u.trim_end_matches('/').to_string())
        .ok_or_else(|| {
            ClientError::Usage(
                "no server: run `wasmhook login --server …`, or set WASMHOOK_URL".into(),
            )
        })
}

/// `WASMHOOK_KEY`, else the key `login` saved — only for the server it was
/// saved with, so that `--server` elsewhere never sends it there.
fn tenant_key(url: &str) -> Result<String, ClientError> {
    if let Ok(key) = std::env::var("WASMHOOK_KEY") {
        return Ok(key);
    }
    let saved = saved();
    match (saved.url, saved.key) {
        (Some(saved_url), Some(key)) if saved_url.trim_end_matches('/') == url => Ok(key),
        (Some(saved_url), Some(_)) => Err(ClientError::Usage(format!(
            "the saved key is for {saved_url}, not {url}: log in there, or set WASMHOOK_KEY"
        ))),
        _ => Err(ClientError::Usage(
            "no API key: run `wasmhook login`, or set WASMHOOK_KEY".into(),
        )),
    }
}

/// One server and one bearer token.
struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    fn new(base: String, token: String) -> Result<Self, ClientError> {
        crate::deliver::install_tls_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        Ok(Api { base, token, http })
    }

    /// A component's bytes, as `application/wasm`.
    async fn upload(&self, path: &str, wasm: Vec<u8>) -> Result<Value, ClientError> {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/wasm")
            .body(wasm);
        self.answer(request).await
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.answer(request).await
    }

    /// Sends `request`; its JSON, or the error its status says.
    async fn answer(&self, request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::Unavailable(format!("{}: {e}", self.base)))?;
        if !response.status().is_success() {
            return Err(self.answer_error(response).await);
        }
        let text = response
            .text()
            .await
            .map_err(|e| ClientError::Unavailable(e.to_string()))?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// The error a failed answer's status and body say.
    async fn answer_error(&self, response: reqwest::Response) -> ClientError {
        let status = response.status().as_u16();
        let text = match response.text().await {
            Ok(text) => text,
            Err(e) => return ClientError::Unavailable(e.to_string()),
        };
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let message = value["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        let message = format!("{status}: {message}");
        match status {
            404 => ClientError::NotFound(message),
            401 | 403 => ClientError::Auth(message),
            500.. => ClientError::Unavailable(message),
            _ => ClientError::Invalid(message),
        }
    }
}

/// Prints a value: as JSON with `--json`, else with the table function.
type Printer<'a> = &'a dyn Fn(&Value, &dyn Fn(&Value));

/// Runs one API command.
pub async fn run(target: Target, command: ApiCommand) -> Result<(), ClientError> {
    let url = server_url(&target)?;
    let json_out = target.json;
    let print = |value: &Value, table: &dyn Fn(&Value)| {
        if json_out {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            table(value);
        }
    };
    match command {
        ApiCommand::Tenants(TenantCommand::Create { name, admin_token }) => {
            let api = Api::new(url, admin_token)?;
            let t = api
                .call("POST", "/v1/tenants", Some(json!({ "name": name })))
                .await?;
            print(&t, &|t| {
                println!("tenant {}  {}", s(&t["id"]), s(&t["name"]));
                println!("api key (shown once): {}", s(&t["api_key"]));
            });
        }
        ApiCommand::Tenants(TenantCommand::List { admin_token }) => {
            let api = Api::new(url, admin_token)?;
            let list = api.call("GET", "/v1/tenants", None).await?;
            print(&list, &|list| {
                rows(&["ID", "NAME", "CREATED"], items(list), |t| {
                    vec![s(&t["id"]), s(&t["name"]), s(&t["created_at"])]
                })
            });
        }
        ApiCommand::Subscriptions(command) => {
            let api = Api::new(url.clone(), tenant_key(&url)?)?;
            subscriptions(&api, command, &print).await?;
        }
        ApiCommand::Keys(command) => {
            let api = Api::new(url.clone(), tenant_key(&url)?)?;
            let out = match command {
                KeyCommand::List => api.call("GET", "/v1/keys", None).await?,
                KeyCommand::Create => api.call("POST", "/v1/keys", Some(json!({}))).await?,
                KeyCommand::Delete { id } => {
                    api.call("DELETE", &format!("/v1/keys/{}", seg(&id)), None)
                        .await?;
                    json!({ "deleted": id })
                }
            };
            print(&out, &|out| {
                listing(out, &["id", "prefix", "created_at", "api_key"])
            });
        }
        ApiCommand::Plugins(command) => {
            let api = Api::new(url.clone(), tenant_key(&url)?)?;
            let out = match command {
                PluginApiCommand::List => api.call("GET", "/v1/plugins", None).await?,
                PluginApiCommand::Upload {
                    file,
                    name,
                    version,
                } => {
                    let wasm = std::fs::read(&file)
                        .map_err(|e| ClientError::Usage(format!("{}: {e}", file.display())))?;
                    let mut path = format!("/v1/plugins?name={}", seg(&name));
                    if let Some(v) = version {
                        path.push_str(&format!("&version={}", seg(&v)));
                    }
                    api.upload(&path, wasm).await?
                }
                PluginApiCommand::DryRun { id, event, config } => {
                    let event: Value = read_json(event.as_deref(), "the event")?;
                    let config: Value = match config {
                        Some(text) => serde_json::from_str(&text).map_err(|e| {
                            ClientError::Usage(format!("--config is not JSON: {e}"))
                        })?,
                        None => json!({}),
                    };
                    let result = api
                        .call(
                            "POST",
                            &format!("/v1/plugins/{}/dry-run", seg(&id)),
                            Some(json!({ "event": event, "config": config })),
                        )
                        .await?;
                    if let Some(error) = result["error"].as_str() {
                        // The plugin failed on the event: printed, and exit 5.
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&result).unwrap_or_default()
                        );
                        return Err(ClientError::Invalid(format!("the plugin failed: {error}")));
                    }
                    result
                }
                PluginApiCommand::Delete { id } => {
                    api.call("DELETE", &format!("/v1/plugins/{}", seg(&id)), None)
                        .await?;
                    json!({ "deleted": id })
                }
            };
            print(&out, &|out| {
                if out.get("action").is_some() || out.get("error").is_some() {
                    println!("{}", serde_json::to_string_pretty(out).unwrap_or_default());
                } else {
                    listing(out, &["id", "name", "version", "world", "size"]);
                }
            });
        }
        ApiCommand::Sources(command) => {
            let api = Api::new(url.clone(), tenant_key(&url)?)?;
            let out = match command {
                SourceCommand::List => api.call("GET", "/v1/sources", None).await?,
                SourceCommand::Create { file } => {
                    let body = read_json(file.as_deref(), "the source")?;
                    api.call("POST", "/v1/sources", Some(body)).await?
                }
                SourceCommand::Delete { id } => {
                    api.call("DELETE", &format!("/v1/sources/{}", seg(&id)), None)
                        .await?;
                    json!({ "deleted": id })
                }
            };
            print(&out, &|out| listing(out, &["id", "kind", "url", "secret"]));
        }
        ApiCommand::Apps(command) => {
            let api = Api::new(url.clone(), tenant_key(&url)?)?;
            let out = match command {
                AppCommand::List => api.call("GET", "/v1/apps", None).await?,
                AppCommand::Create { name, uid } => {
                    let mut body = json!({ "name": name });
                    if let Some(uid) = uid {
                        body["uid"] = json!(uid);
                    }
                    api.call("POST", "/v1/apps", Some(body)).await?
                }
                AppCommand::Delete { app } => {
                    api.call("DELETE", &format!("/v1/apps/{}", seg(&app)), None)
                        .await?;
                    json!({ "deleted": app })
                }
                AppCommand::PortalLink {
                    app,
                    expires_in,
                    read_only,
                } => {
                    let mut body = json!({ "read_only": read_only });
                    if let Some(secs) = expires_in {
                        body["expires_in"] = json!(secs);
                    }
                    let path = format!("/v1/apps/{}/portal-links", seg(&app));
                    let link = api.call("POST", &path, Some(body)).await?;
                    print(&link, &|l| {
                        println!(
                            "portal link {} until {} (shown once): {}",
                            s(&l["id"]),
                            s(&l["expires_at"]),
                            s(&l["url"])
                        )
                    });
                    return Ok(());
                }
                AppCommand::PortalLinks { app } => {
                    let path = format!("/v1/apps/{}/portal-links", seg(&app));
                    let links = api.call("GET", &path, None).await?;
                    print(&links, &|l| listing(l, &["id", "read_only", "expires_at"]));
                    return Ok(());
                }
                AppCommand::RevokeLink { app, link } => {
                    let path = format!("/v1/apps/{}/portal-links/{}", seg(&app), seg(&link));
                    api.call("DELETE", &path, None).await?;
                    json!({ "deleted": link })
                }
            };
            print(&out, &|out| {
                listing(out, &["id", "uid", "name", "subscriptions"])
            });
        }
        ApiCommand::EventTypes(command) => {
            let api = Api::new(url.clone(), tenant_key(&url)?)?;
            let out = match command {
                EventTypeCommand::List { archived } => {
                    let path = if archived {
                        "/v1/event-types?include_archived=true"
                    } else {
                        "/v1/event-types"
                    };
                    api.call("GET", path, None).await?
                }
                EventTypeCommand::Create {
                    name,
                    description,
                    schema,
                    example,
                    validate,
                } => {
                    let mut body = json!({ "name": name, "validate": validate });
                    if let Some(d) = description {
                        body["description"] = json!(d);
                    }
                    for (key, text) in [("schema", schema), ("example", example)] {
                        if let Some(text) = text {
                            body[key] = json_arg(&text, key)?;
                        }
                    }
                    api.call("POST", "/v1/event-types", Some(body)).await?
                }
                EventTypeCommand::Archive { name } => {
                    let path = format!("/v1/event-types/{}", seg(&name));
                    api.call("PATCH", &path, Some(json!({ "archived": true })))
                        .await?
                }
                EventTypeCommand::Delete { name } => {
                    let path = format!("/v1/event-types/{}", seg(&name));
                    api.call("DELETE", &path, None).await?;
                    json!({ "deleted": name })
                }
            };
            print(&out, &|out| {
                listing(out, &["name", "description", "validate", "archived"])
            });
        }
        ApiCommand::Events(EventCommand::Send { file, app }) => {
            let api = Api::new(url.clone(), tenant_key(&url)?)?;
            let mut body = read_json(file.as_deref(), "the event")?;
            if let Some(app) = &app {
                // Every event of it, to that application.
                let events = match &mut body {
                    Value::Array(events) => events.iter_mut().collect::<Vec<_>>(),
                    Value::Object(o) if o.contains_key("events") => o["events"]
                        .as_array_mut()
                        .map(|e| e.iter_mut().collect())
                        .unwrap_or_default(),
                    other => vec![other],
                };
                for event in events {
                    event["app"] = json!(app);
                }
            }
            let (path, body) = match body {
                Value::Array(events) => ("/v1/events/batch", json!({ "events": events })),
                Value::Object(o) if o.contains_key("events") => {
                    ("/v1/events/batch", Value::Object(o))
                }
                other => ("/v1/events", other),
            };
            let sent = api.call("POST", path, Some(body)).await?;
            // Each event with the deliveries it made (from the stored event).
            let mut accepted: Vec<Value> = match sent["items"].as_array() {
                Some(items) => items.clone(),
                None => vec![sent.clone()],
            };
            // Best effort: the events are accepted whatever these answer (a
            // failure here must not make a script send them again).
            for item in &mut accepted {
                let id = s(&item["id"]);
                let path = format!("/v1/events/{}", seg(&id));
                item["deliveries"] = match api.call("GET", &path, None).await {
                    Ok(stored) => stored["deliveries"].clone(),
                    Err(_) => Value::Null,
                };
            }
            let out = match accepted.len() {
                1 if sent.get("items").is_none() => accepted[0].clone(),
                _ => json!({ "items": accepted }),
            };
            print(&out, &|_| {
                for r in &accepted {
                    let deliveries = match r["deliveries"].as_array() {
                        Some(d) => format!("{} deliveries", d.len()),
                        None => "accepted".into(),
                    };
                    let duplicate = if r["duplicate"] == true {
                        " (a duplicate: not routed again)"
                    } else {
                        ""
                    };
                    println!("{}  {deliveries}{duplicate}", s(&r["id"]));
                }
            });
        }
        ApiCommand::Backup { file, admin_token } => {
            let api = Api::new(url.clone(), admin_token)?;
            let saved = backup(&api, &file).await?;
            print(&saved, &|v| {
                println!(
                    "saved {} ({} bytes, {} entries, format {})",
                    file.display(),
                    s(&v["bytes"]),
                    s(&v["entries"]),
                    s(&v["format"])
                )
            });
        }
        ApiCommand::Listen(args) => {
            let api = Api::new(url.clone(), tenant_key(&url)?)?;
            listen::run(&api, args, json_out).await?;
        }
        ApiCommand::Deliveries(command) => {
            let api = Api::new(url.clone(), tenant_key(&url)?)?;
            deliveries(&api, command, json_out, &print).await?;
        }
    }
    Ok(())
}

async fn subscriptions(
    api: &Api,
    command: SubscriptionCommand,
    print: Printer<'_>,
) -> Result<(), ClientError> {
    let one = |s_: &Value| {
        println!(
            "{}  {}  {}  [{}]{}",
            s(&s_["id"]),
            if s_["enabled"] == true {
                "enabled"
            } else {
                "disabled"
            },
            s(&s_["url"]),
            s_["event_types"]
                .as_array()
                .map(|t| t.iter().map(s).collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
            s_["secret"]
                .as_str()
                .map(|k| format!("\nsigning secret (shown once): {k}"))
                .unwrap_or_default(),
        )
    };
    match command {
        SubscriptionCommand::List => {
            let list = api.call("GET", "/v1/subscriptions", None).await?;
            print(&list, &|list| {
                rows(
                    &["ID", "STATE", "URL", "EVENTS", "QUEUED"],
                    items(list),
                    |x| {
                        vec![
                            s(&x["id"]),
                            if x["enabled"] == true {
                                "enabled".into()
                            } else {
                                "disabled".into()
                            },
                            s(&x["url"]),
                            x["event_types"]
                                .as_array()
                                .map(|t| t.iter().map(s).collect::<Vec<_>>().join(","))
                                .unwrap_or_default(),
                            s(&x["queued_deliveries"]),
                        ]
                    },
                )
            });
        }
        SubscriptionCommand::Get { id } => {
            let x = api
                .call("GET", &format!("/v1/subscriptions/{}", seg(&id)), None)
                .await?;
            print(&x, &one);
        }
        SubscriptionCommand::Create {
            url,
            destination,
            events,
            plugin,
            plugin_config,
            retry,
            ordering_key,
            rate_limit,
            description,
            app,
        } => {
            let mut body = json!({
                "event_types": events.split(',').map(str::trim).filter(|e| !e.is_empty()).collect::<Vec<_>>(),
            });
            match (url, destination) {
                (Some(url), _) => body["url"] = json!(url),
                (None, Some(text)) => {
                    let text = match text.strip_prefix('@') {
                        Some(path) => std::fs::read_to_string(path).map_err(|e| {
                            ClientError::Usage(format!("--destination @{path}: {e}"))
                        })?,
                        None => text,
                    };
                    body["destination"] = serde_json::from_str(&text).map_err(|e| {
                        ClientError::Usage(format!("--destination is not JSON: {e}"))
                    })?;
                }
                (None, None) => {
                    return Err(ClientError::Usage(
                        "--url or --destination is required".into(),
                    ));
                }
            }
            if let Some(id) = plugin {
                let config: Value = match plugin_config {
                    Some(text) => serde_json::from_str(&text).map_err(|e| {
                        ClientError::Usage(format!("--plugin-config is not JSON: {e}"))
                    })?,
                    None => json!({}),
                };
                body["plugin"] = json!({ "id": id, "config": config });
            }
            if let Some(preset) = retry {
                body["retry"] = json!({ "preset": preset });
            }
            if let Some(key) = ordering_key {
                body["ordering"] = json!({ "key": key });
            }
            if let Some(rate) = rate_limit {
                body["rate_limit"] = json!({ "per_second": rate });
            }
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            if let Some(app) = app {
                body["app"] = json!(app);
            }
            let x = api.call("POST", "/v1/subscriptions", Some(body)).await?;
            print(&x, &one);
        }
        SubscriptionCommand::Delete { id } => {
            api.call("DELETE", &format!("/v1/subscriptions/{}", seg(&id)), None)
                .await?;
            print(&json!({ "deleted": id }), &|_| println!("deleted {id}"));
        }
        SubscriptionCommand::Enable { id } => {
            let x = api
                .call(
                    "POST",
                    &format!("/v1/subscriptions/{}/enable", seg(&id)),
                    None,
                )
                .await?;
            print(&x, &one);
        }
        SubscriptionCommand::Disable { id } => {
            let verb = "disable";
            let x = api
                .call(
                    "POST",
                    &format!("/v1/subscriptions/{}/{verb}", seg(&id)),
                    None,
                )
                .await?;
            print(&x, &one);
        }
    }
    Ok(())
}

async fn deliveries(
    api: &Api,
    command: DeliveryCommand,
    json_out: bool,
    print: Printer<'_>,
) -> Result<(), ClientError> {
    match command {
        DeliveryCommand::List {
            subscription,
            status,
            limit,
        } => {
            let page = api
                .call(
                    "GET",
                    &list_path(subscription.as_deref(), status.as_deref(), limit.into()),
                    None,
                )
                .await?;
            print(&page, &|page| {
                rows(
                    &[
                        "ID",
                        "STATUS",
                        "HTTP",
                        "ATTEMPTS",
                        "MS",
                        "EVENT",
                        "SUBSCRIPTION",
                        "ERROR",
                    ],
                    items(page),
                    |d| {
                        vec![
                            s(&d["id"]),
                            s(&d["status"]),
                            s(&d["last_http_status"]),
                            s(&d["attempts"]),
                            s(&d["last_duration_ms"]),
                            s(&d["event_type"]),
                            s(&d["subscription_id"]),
                            s(&d["last_error"]),
                        ]
                    },
                )
            });
        }
        DeliveryCommand::Show { id } => {
            let d = api
                .call("GET", &format!("/v1/deliveries/{}", seg(&id)), None)
                .await?;
            print(&d, &|d| {
                println!(
                    "{}  {}  event {} ({})  subscription {}",
                    s(&d["id"]),
                    s(&d["status"]),
                    s(&d["event_id"]),
                    s(&d["event_type"]),
                    s(&d["subscription_id"])
                );
                for a in d["attempt_log"].as_array().into_iter().flatten() {
                    println!(
                        "  {}  HTTP {}  {} ms  {}",
                        s(&a["at"]),
                        s(&a["status"]),
                        s(&a["duration_ms"]),
                        s(&a["error"])
                    );
                }
            });
        }
        DeliveryCommand::Retry { id } => {
            let d = api
                .call("POST", &format!("/v1/deliveries/{}/retry", seg(&id)), None)
                .await?;
            print(&d, &|d| println!("{}  {}", s(&d["id"]), s(&d["status"])));
        }
        DeliveryCommand::Tail { subscription } => {
            // The newest page, every half second: a delivery is printed
            // when it first appears and again each time its status changes.
            let mut seen: std::collections::HashMap<String, (String, String)> = Default::default();
            let mut first = true;
            let mut unavailable = 0u32;
            loop {
                let path = list_path(subscription.as_deref(), None, 100);
                let page = match api.call("GET", &path, None).await {
                    Ok(page) => {
                        unavailable = 0;
                        page
                    }
                    // A restart or a moment of 503: keep following (say
                    // so once), give up only after a minute of it.
                    Err(ClientError::Unavailable(why)) if unavailable < 120 => {
                        if unavailable == 0 {
                            eprintln!("server unavailable ({why}); still following");
                        }
                        unavailable += 1;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                // Only what the page still shows is remembered.
                let shown: std::collections::HashSet<String> =
                    items(&page).iter().map(|d| s(&d["id"])).collect();
                seen.retain(|id, _| shown.contains(id));
                let mut fresh: Vec<&Value> = items(&page).iter().collect();
                fresh.reverse();
                for d in fresh {
                    let id = s(&d["id"]);
                    let state = (s(&d["status"]), s(&d["attempts"]));
                    if seen.get(&id) == Some(&state) {
                        continue;
                    }
                    seen.insert(id, state);
                    if first {
                        continue;
                    }
                    if json_out {
                        println!("{d}");
                    } else {
                        println!(
                            "{}  {}  {}  HTTP {}  {} ms  {}",
                            s(&d["updated_at"]),
                            s(&d["id"]),
                            s(&d["status"]),
                            s(&d["last_http_status"]),
                            s(&d["last_duration_ms"]),
                            s(&d["event_type"])
                        );
                    }
                }
                first = false;
                use std::io::Write;
                let _ = std::io::stdout().flush();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Ok(())
}

/// Downloads `/v1/backup` into `file` (through a temporary file beside it,
/// renamed once complete, so a cut download never looks like a backup).
async fn backup(api: &Api, file: &std::path::Path) -> Result<Value, ClientError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if file.exists() {
        return Err(ClientError::Usage(format!(
            "{} exists: give a new file",
            file.display()
        )));
    }
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| ClientError::Usage(e.to_string()))?;
    let mut response = http
        .get(format!("{}/v1/backup", api.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .map_err(|e| ClientError::Unavailable(format!("{}: {e}", api.base)))?;
    if !response.status().is_success() {
        return Err(api.answer_error(response).await);
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (format, entries) = (
        header("wasmhook-backup-format"),
        header("wasmhook-backup-entries"),
    );
    let partial = file.with_extension("partial");
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| ClientError::Usage(format!("{}: {e}", partial.display())))?;
    let mut bytes = 0u64;
    let result: Result<(), ClientError> = async {
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ClientError::Unavailable(format!("the download broke off: {e}")))?
        {
            out.write_all(&chunk)
                .map_err(|e| ClientError::Usage(format!("{}: {e}", partial.display())))?;
            bytes += chunk.len() as u64;
        }
        out.sync_all()
            .map_err(|e| ClientError::Usage(format!("{}: {e}", partial.display())))?;
        std::fs::rename(&partial, file)
            .map_err(|e| ClientError::Usage(format!("{}: {e}", file.display())))
    }
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    Ok(json!({
        "file": file.display().to_string(),
        "bytes": bytes,
        "entries": entries.parse::<u64>().ok(),
        "format": format.parse::<u32>().ok(),
    }))
}

fn list_path(subscription: Option<&str>, status: Option<&str>, limit: usize) -> String {
    let mut path = format!("/v1/deliveries?limit={limit}");
    if let Some(sub) = subscription {
        path.push_str(&format!("&subscription_id={}", seg(sub)));
    }
    if let Some(status) = status {
        path.push_str(&format!("&status={}", seg(status)));
    }
    path
}

/// JSON from a file, or from stdin with `-` or no file.
fn read_json(file: Option<&std::path::Path>, what: &str) -> Result<Value, ClientError> {
    let text = match file {
        None => read_stdin()?,
        Some(p) if p.as_os_str() == "-" => read_stdin()?,
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| ClientError::Usage(format!("{}: {e}", p.display())))?,
    };
    serde_json::from_str(&text).map_err(|e| ClientError::Usage(format!("{what} is not JSON: {e}")))
}

/// One record, a list or a page as a table of `fields` (those present).
fn listing(out: &Value, fields: &[&str]) {
    if let Some(id) = out.get("deleted") {
        println!("deleted {}", s(id));
        return;
    }
    if let Some(key) = out.get("api_key").and_then(Value::as_str) {
        println!("key {} (shown once): {key}", s(&out["id"]));
        return;
    }
    let list: Vec<Value> = match out {
        Value::Array(_) => items(out).to_vec(),
        Value::Object(o) if o.contains_key("items") => items(out).to_vec(),
        other => vec![other.clone()],
    };
    let fields: Vec<&str> = fields
        .iter()
        .copied()
        .filter(|f| list.iter().any(|x| x.get(*f).is_some_and(|v| !v.is_null())))
        .collect();
    let header: Vec<String> = fields.iter().map(|f| f.to_uppercase()).collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    rows(&header, &list, |x| {
        fields.iter().map(|f| s(&x[*f])).collect()
    });
}

/// A JSON argument, inline or `@file`.
fn json_arg(text: &str, what: &str) -> Result<Value, ClientError> {
    let text = match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| ClientError::Usage(format!("--{what} @{path}: {e}")))?,
        None => text.to_string(),
    };
    serde_json::from_str(&text)
        .map_err(|e| ClientError::Usage(format!("--{what} is not JSON: {e}")))
}

fn read_stdin() -> Result<String, ClientError> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
        .map_err(|e| ClientError::Usage(format!("reading stdin: {e}")))?;
    Ok(text)
}

/// A path segment, percent-encoded.
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A JSON value as a table cell.
fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A page's or a list's items.
fn items(v: &Value) -> &[Value] {
    v["items"]
        .as_array()
        .or_else(|| v.as_array())
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// A table: each column as wide as its widest cell.
fn rows(header: &[&str], items: &[Value], cells: impl Fn(&Value) -> Vec<String>) {
    let body: Vec<Vec<String>> = items.iter().map(cells).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &body {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(header.iter().map(|h| h.to_string()).collect()));
    for row in body {
        println!("{}", line(row));
    }
}
