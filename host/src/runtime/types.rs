//! The values that cross the plugin boundary, as the rest of the host sees
//! them: plain serde types, free of wasmtime. `runtime` converts them to and
//! from the generated bindings, so no other module depends on wasmtime.

use serde::{Deserialize, Serialize};

/// One event as a plugin receives it (WIT `event`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub source: String,
    pub occurred_at: String,
    /// The event's `data`: its JSON text as it arrived.
    pub payload: String,
}

/// An extra header on a request (WIT `header`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// One HTTP request a plugin asked for (WIT `request`), with the content type
/// already defaulted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRequest {
    pub body: String,
    pub content_type: String,
    pub headers: Vec<Header>,
}

/// An item held for a window (WIT `held`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldItem {
    pub group: String,
    pub item: String,
}

/// What a plugin decided (WIT `action`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Action {
    Skip { reason: Option<String> },
    Deliver { requests: Vec<PluginRequest> },
    Hold { items: Vec<HeldItem> },
}

/// A closed window `[start, end)` (WIT `window`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowBounds {
    pub start: String,
    pub end: String,
}

/// Held items of one group, in arrival order (WIT `group`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldGroup {
    pub key: String,
    pub items: Vec<String>,
}

/// A plugin's own complaint (WIT `plugin-error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "message", rename_all = "kebab-case")]
pub enum PluginError {
    #[error("plugin refused its config: {0}")]
    BadConfig(String),
    #[error("plugin refused the event: {0}")]
    BadEvent(String),
    #[error("plugin failed: {0}")]
    Failed(String),
}

/// Severity of a plugin log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// One line of a call's plugin log: from `host.log`, or captured stdout
/// (info) / stderr (warn).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// A platform's verified HTTP request, as a source adapter receives it (WIT
/// `inbound`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inbound {
    /// Lowercase names, in the order received.
    pub headers: Vec<Header>,
    pub body: String,
    /// RFC 3339 in UTC.
    pub received_at: String,
}

/// One canonical event a source adapter found (WIT `incoming`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingEvent {
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub event_type: String,
    pub occurred_at: Option<String>,
    /// The event's `data` as JSON text.
    pub payload: String,
}

/// What a source adapter made of one request (WIT `normalized`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Normalized {
    pub events: Vec<IncomingEvent>,
    /// JSON text answered to the platform, when it expects a given body.
    pub reply: Option<String>,
}

/// Which world a component implements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum World {
    /// Subscriptions' plugins: events in, requests out.
    #[default]
    Transform,
    /// Sources' adapters: a platform's request in, events out.
    Source,
}

impl World {
    /// The WIT name of the world.
    pub fn wit_name(self) -> &'static str {
        match self {
            World::Transform => "wasmhook:plugin/transform@0.1.0",
            World::Source => "wasmhook:plugin/source@0.1.0",
        }
    }
}

/// A held item a plugin took with `host.take-held`: removed from its window
/// when the call's result is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenItem {
    /// Its key in the store (window key and arrival sequence).
    pub key: Vec<u8>,
    pub item: String,
    /// Group and item bytes, as the window counts them.
    pub bytes: u64,
}

/// Where `host.take-held` finds one subscription's held items (the store,
/// for a subscription with a window): runtime stays free of the store.
pub trait HeldSource: Send + Sync {
    /// The items held under `group`, in arrival order.
    fn held_in_group(&self, group: &str) -> Vec<TakenItem>;
}
