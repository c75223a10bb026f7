//! What the end-to-end benches share: the real `wasmhook serve` (release
//! build) on a temp data dir and a free port, killed on drop.

// Each bench uses part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A size from the environment, or the default.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An HTTP client for the bench's requests; reqwest carries no crypto
/// provider of its own here (see host/Cargo.toml).
pub fn http_client() -> reqwest::Client {
    wasmhook::deliver::install_tls_provider();
    reqwest::Client::new()
}

/// The operator token the benches start the server with.
pub const TOKEN: &str = "bench-operator-token-0123456789abcdef";

/// The running server.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts `wasmhook serve` with loopback destinations allowed: this
    /// build's binary, or `WASMHOOK_BIN` (to compare two builds in one run).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Self::start_in(dir.path(), &[]);
        server._dir = Some(dir);
        server
    }

    /// The same on a data dir the caller keeps (restarts), with extra
    /// environment (config overrides).
    pub fn start_in(dir: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let binary =
            std::env::var("WASMHOOK_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_wasmhook").into());
        let mut child = Command::new(binary)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--allow-private-destinations",
                "--data",
            ])
            .arg(dir)
            .env("WASMHOOK_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", "error")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start wasmhook");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("wasmhook listening on ")
            .unwrap()
            .to_string();
        Server {
            child,
            base,
            _dir: None,
        }
    }

    /// SIGTERM, and wait for the process to finish its shutdown.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Resident memory of a process now, in MiB (Linux /proc).
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU seconds of a process so far (Linux /proc).
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces): utime is the 14th field.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// POSTs JSON with a bearer token; panics on anything but a 2xx.
pub async fn post(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    token: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let resp = http
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}
