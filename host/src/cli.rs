//! The `wasmhook` command line. Arguments are parsed by clap, validated into
//! typed values here, and every failure reaches `main` as one `anyhow` error
//! printed on one line.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use serde_json::Value;

use crate::event::EventInput;
use crate::runtime::{
    Action, CacheDirs, HeldGroup, Limits, Plugin, Runtime, WindowBounds, bundled,
};

/// A self-hosted webhook router for chat platforms, with sandboxed
/// WebAssembly transforms per subscriber.
#[derive(Debug, Parser)]
#[command(name = "wasmhook", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// `--server` and `--json` of the API commands.
    #[command(flatten)]
    pub target: crate::client::Target,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the router: the API, ingest and the delivery worker on the embedded store.
    Serve(ServeArgs),
    /// Tools for plugin authors: check a component, run it on an event.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Print the commented default configuration.
    DefaultConfig,
    /// Move the embedded store into a cluster: every tenant, key,
    /// subscription, plugin, source, window, held item, event and pending
    /// delivery (under its id), into an empty cluster's NATS JetStream.
    /// Stop the server first; start the cluster's nodes after (docs/cluster.md).
    Migrate(MigrateArgs),
    /// Bring back a backup (`wasmhook backup`) into an empty data
    /// directory, the server stopped. The secrets in it are sealed: start
    /// the server with the same `server.secrets_key` (or copy the old data
    /// directory's `secrets-key` file next to it).
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The new data directory (empty or absent).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
    /// Check an API key against a server and keep both for the API
    /// commands (a 0600 file; `WASMHOOK_URL` / `WASMHOOK_KEY` override it).
    Login {
        /// The tenant's API key (better: `WASMHOOK_KEY`, which stays out
        /// of process listings and shell history).
        #[arg(long, env = "WASMHOOK_KEY", hide_env_values = true)]
        key: Option<String>,
    },
    #[command(flatten)]
    Api(crate::client::ApiCommand),
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The cluster's TOML config file (its `[cluster]` TLS and credential
    /// files and `server.secrets_key` apply).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The embedded store's data directory (default ./wasmhook-data).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The cluster's NATS URLs, comma-separated.
    #[arg(long, value_name = "URLS")]
    pub to_nats: String,
    /// Moves a cluster instead of an embedded store (its nodes stopped):
    /// its NATS URLs, comma-separated. Its layout is read from it; the
    /// target's comes from the configuration (`cluster.mode`,
    /// `cluster.partitions`): a replica set becomes a partitioned cluster,
    /// or a partitioned cluster gets another partition count.
    #[arg(long, value_name = "URLS", conflicts_with = "data")]
    pub from_nats: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML config file (see `wasmhook default-config`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (default ./wasmhook-data).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Listen address (default 127.0.0.1:8080; port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Deliver to loopback and private addresses too (off: the SSRF guard refuses them).
    #[arg(long)]
    pub allow_private_destinations: bool,
    /// Cluster mode: the records and the queue in NATS JetStream at these
    /// comma-separated URLs (`[cluster] nats_urls`; see docs/cluster.md).
    #[arg(long, value_name = "URLS")]
    pub nats: Option<String>,
}

impl ServeArgs {
    /// The validated configuration for these flags.
    pub fn config(&self) -> Result<crate::config::Config, crate::config::ConfigError> {
        crate::config::Config::load(&crate::config::Overrides {
            config_file: self.config.clone(),
            data_dir: self.data.clone(),
            listen: self.listen.clone(),
            allow_private_destinations: self.allow_private_destinations,
            nats_urls: self.nats.clone(),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Validate a plugin and print what it imports, exports and the limits that apply.
    Check {
        /// A `.wasm` component path, or a bundled plugin name (`helloclient-lead`).
        plugin: String,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Run a plugin's `handle` on an event (or `flush` on held groups) and print the result as JSON.
    Run(RunArgs),
    /// List the bundled plugins.
    List,
    /// Create a plugin project: an example plugin, a sample event and config,
    /// a README and a Makefile whose default target builds `plugin.wasm`.
    New {
        /// The project directory to create; its last component names the plugin.
        dir: PathBuf,
        /// The plugin's language.
        #[arg(long, value_enum, default_value_t = crate::scaffold::Lang::Rust)]
        lang: crate::scaffold::Lang,
    },
}

/// Where the plugin commands find and keep compiled plugins.
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// The host's shared directory of compiled plugins (the server's
    /// `plugins.shared_cache_dir`): a large component is then compiled once
    /// per host, not once per command. Trusted like the binary: it must be
    /// this user's own and writable by no one else.
    #[arg(long, value_name = "DIR", env = "WASMHOOK_PLUGINS_SHARED_CACHE_DIR")]
    shared_cache_dir: Option<PathBuf>,
}

impl CacheArgs {
    fn runtime(&self, limits: Limits) -> anyhow::Result<Runtime> {
        Ok(Runtime::with_cache(
            limits,
            CacheDirs {
                private: None,
                shared: self
                    .shared_cache_dir
                    .clone()
                    .filter(|d| !d.as_os_str().is_empty()),
            },
        )?)
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A `.wasm` component path, or a bundled plugin name (`helloclient-lead`).
    plugin: String,
    /// The event, as the API takes it: {"id"?, "type", "occurred_at"?, "source"?, "data"}.
    #[arg(
        long,
        value_name = "EVENT_JSON",
        required_unless_present_any = ["flush", "request"],
        conflicts_with_all = ["flush", "request"]
    )]
    event: Option<PathBuf>,
    /// A source adapter: run `normalize` on this platform request body (the
    /// file's bytes, as the platform would post them).
    #[arg(long, value_name = "BODY_FILE", conflicts_with = "flush")]
    request: Option<PathBuf>,
    /// A header of that request, `Name: value` (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE", requires = "request")]
    headers: Vec<String>,
    /// The subscription's plugin settings (JSON); `{}` when absent.
    #[arg(long, value_name = "CONFIG_JSON")]
    config: Option<PathBuf>,
    /// Run `flush` on these groups: [{"key", "items": [text or JSON, …]}, …].
    #[arg(long, value_name = "GROUPS_JSON", requires_all = ["window_start", "window_end"])]
    flush: Option<PathBuf>,
    /// Start of the flushed window (RFC 3339).
    #[arg(long, value_name = "T")]
    window_start: Option<String>,
    /// End of the flushed window (RFC 3339).
    #[arg(long, value_name = "T")]
    window_end: Option<String>,
    /// Time limit of each call, in ms (the server's default: 50). A busy
    /// machine (a build running beside it, a CI runner) may need more for
    /// a large component's first call.
    #[arg(long, value_name = "MS", default_value_t = Limits::default().handle_timeout_ms)]
    timeout_ms: u64,
    /// Time limit of a `--flush` call, in ms (the server's default: 1000).
    #[arg(long, value_name = "MS", default_value_t = Limits::default().flush_timeout_ms)]
    flush_timeout_ms: u64,
    #[command(flatten)]
    cache: CacheArgs,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = args.config()?;
            crate::server::serve(config, crate::server::shutdown_signal()).await
        }
        Command::Migrate(args) => {
            let config = crate::config::Config::load(&crate::config::Overrides {
                config_file: args.config,
                data_dir: args.data,
                listen: None,
                allow_private_destinations: false,
                nats_urls: Some(args.to_nats),
            })?;
            let report = crate::migrate::run(&config, args.from_nats.as_deref()).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Restore { file, data } => {
            let info = crate::store::backup::restore(&file, &data)
                .with_context(|| format!("restoring {} into {}", file.display(), data.display()))?;
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(())
        }
        Command::Login { key } => Ok(crate::client::login(&cli.target, key).await?),
        Command::Api(command) => Ok(crate::client::run(cli.target, command).await?),
        Command::DefaultConfig => {
            print!("{}", crate::config::DEFAULT_CONFIG);
            Ok(())
        }
        Command::Plugin(PluginCommand::Check { plugin, cache }) => check(&plugin, &cache),
        Command::Plugin(PluginCommand::Run(args)) => run_plugin(args).await,
        Command::Plugin(PluginCommand::New { dir, lang }) => {
            let files = crate::scaffold::create(&dir, lang)?;
            println!(
                "created a {lang} plugin in {} ({} files). Next:\n  cd {}\n  make\n  wasmhook plugin run plugin.wasm --event event.json --config config.json",
                dir.display(),
                files.len(),
                dir.display()
            );
            Ok(())
        }
        Command::Plugin(PluginCommand::List) => {
            for b in bundled::BUNDLED {
                println!(
                    "{:<22} {:>7} bytes  {}",
                    b.name,
                    b.wasm.len(),
                    b.description
                );
            }
            Ok(())
        }
    }
}

/// Loads `<PLUGIN>`: a bundled name or a path to a component.
fn load(runtime: &Runtime, plugin: &str) -> anyhow::Result<Plugin> {
    let (bytes, what) = match bundled::find(plugin) {
        Some(b) if !Path::new(plugin).exists() => {
            (b.wasm.to_vec(), format!("bundled plugin {}", b.name))
        }
        _ => {
            let bytes = std::fs::read(plugin).with_context(|| {
                let names: Vec<_> = bundled::BUNDLED.iter().map(|b| b.name).collect();
                format!(
                    "cannot read plugin {plugin:?} (not a file, nor a bundled plugin: {})",
                    names.join(", ")
                )
            })?;
            (bytes, plugin.to_string())
        }
    };
    runtime
        .load(&bytes)
        .with_context(|| format!("{what} was refused"))
}

fn check(plugin: &str, cache: &CacheArgs) -> anyhow::Result<()> {
    let runtime = cache.runtime(Limits::default())?;
    let loaded = load(&runtime, plugin)?;
    let info = runtime.info(&loaded);
    let out = serde_json::json!({
        "plugin": plugin,
        "ok": true,
        "info": info,
        "limits": runtime.limits(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("the {what} file {} is not valid: ", path.display()))
}

/// A group as written for `--flush`: items may be strings or JSON values.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupInput {
    key: String,
    items: Vec<Value>,
}

async fn run_plugin(args: RunArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => read_json::<Value>(path, "config")?.to_string(),
        None => "{}".to_string(),
    };
    let limits = Limits {
        handle_timeout_ms: args.timeout_ms,
        flush_timeout_ms: args.flush_timeout_ms,
        ..Limits::default()
    };
    let runtime = args.cache.runtime(limits)?;
    let plugin = load(&runtime, &args.plugin)?;
    if args.config.is_some() {
        // As the server does when a subscription is saved.
        let report = runtime.check_config(&plugin, &config).await;
        for line in &report.log {
            eprintln!("plugin {:?}: {}", line.level, line.message);
        }
        report.result.context("the plugin refused the config")?;
    }

    let (output, log) = if let Some(body_path) = &args.request {
        let body = std::fs::read_to_string(body_path)
            .with_context(|| format!("reading the request body {}", body_path.display()))?;
        let headers = args
            .headers
            .iter()
            .map(|h| {
                let (name, value) = h
                    .split_once(':')
                    .with_context(|| format!("--header {h:?} is not `Name: value`"))?;
                Ok(crate::runtime::Header {
                    name: name.trim().to_ascii_lowercase(),
                    value: value.trim().to_string(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let inbound = crate::runtime::Inbound {
            headers,
            body,
            received_at: jiff::Timestamp::now().to_string(),
        };
        let report = runtime.normalize(&plugin, &inbound, &config).await;
        let normalized = report.result.context("normalize failed")?;
        (serde_json::to_value(normalized)?, report.log)
    } else if let Some(groups_path) = &args.flush {
        let groups: Vec<GroupInput> = read_json(groups_path, "groups")?;
        let groups: Vec<HeldGroup> = groups
            .into_iter()
            .map(|g| HeldGroup {
                key: g.key,
                items: g
                    .items
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .collect(),
            })
            .collect();
        let window = WindowBounds {
            start: parse_time(args.window_start.as_deref(), "--window-start")?,
            end: parse_time(args.window_end.as_deref(), "--window-end")?,
        };
        let report = runtime.flush(&plugin, &window, &groups, &config).await;
        let requests = report.result.context("flush failed")?;
        (serde_json::json!({ "requests": requests }), report.log)
    } else {
        let path = args
            .event
            .as_ref()
            .expect("clap requires --event without --flush");
        let input: EventInput = read_json(path, "event")?;
        let event = input
            .validate(jiff::Timestamp::now(), "cli", || "evt_cli".to_string())
            .with_context(|| format!("the event file {} is not valid", path.display()))?;
        let report = runtime
            .handle(&plugin, &event.to_plugin_event(), &config)
            .await;
        let action: Action = report.result.context("handle failed")?;
        (serde_json::to_value(action)?, report.log)
    };
    for line in log {
        eprintln!("plugin {:?}: {}", line.level, line.message);
    }
    println!("{}", serde_json::to_string_pretty(&output)?);
    Ok(())
}

fn parse_time(value: Option<&str>, flag: &str) -> anyhow::Result<String> {
    let Some(value) = value else {
        bail!("{flag} is required with --flush");
    };
    let t: jiff::Timestamp = value
        .parse()
        .with_context(|| format!("{flag} {value:?} is not an RFC 3339 time"))?;
    Ok(t.to_string())
}
