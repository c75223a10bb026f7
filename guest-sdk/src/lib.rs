//! Write [wasmhook](https://example.invalid/wasmhook) plugins in Rust.
//!
//! A plugin is a WebAssembly component that wasmhook runs, in a fresh sandbox,
//! for every event routed to a subscription. It decides what the subscriber
//! receives: nothing ([`Action::skip`]), one or several HTTP requests
//! ([`Action::deliver`]), or items to collect until the subscription's window
//! closes ([`Action::hold`], then [`Plugin::flush`]).
//!
//! This crate hides the WIT bindings: implement [`Plugin`], call
//! [`export_plugin!`], build with `cargo build --target wasm32-wasip2`.
//!
//! ```
//! use serde::Deserialize;
//! use wasmhook_guest::{Action, Event, Plugin, PluginError, Request};
//!
//! /// Forwards new messages as `{"text": …}`, optionally only from visitors.
//! struct Forward;
//!
//! #[derive(Deserialize, Default)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     #[serde(default)]
//!     visitors_only: bool,
//! }
//!
//! #[derive(Deserialize)]
//! struct Message {
//!     author: String,
//!     content: String,
//! }
//!
//! impl Plugin for Forward {
//!     type Config = Config;
//!
//!     fn handle(event: Event, config: Config) -> Result<Action, PluginError> {
//!         if event.event_type != "message.created" {
//!             return Ok(Action::skip(format!("not a message: {}", event.event_type)));
//!         }
//!         let message: Message = event.json()?;
//!         if config.visitors_only && message.author != "visitor" {
//!             return Ok(Action::skip("not from a visitor"));
//!         }
//!         let body = serde_json::json!({ "text": message.content });
//!         Ok(Action::deliver(Request::json(&body)?))
//!     }
//! }
//!
//! wasmhook_guest::export_plugin!(Forward);
//! # fn main() {}
//! ```
//!
//! The plugin keeps no state between calls: every call gets a new instance.
//! Settings come in as the subscription's config (JSON), parsed into
//! [`Plugin::Config`]; a config that does not parse is refused when the
//! subscription is created, with serde's message.

#![deny(missing_docs)]

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The generated WIT bindings. Public only so that [`export_plugin!`] can
/// reach them; plugin code uses the re-exports at the crate root.
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        // The SDK carries its own copy of the WIT (kept identical to the
        // repository's wit/plugin.wit by a test), so it builds on its own.
        path: "wit",
        world: "transform",
        pub_export_macro: true,
        export_macro_name: "__export_transform",
        default_bindings_module: "wasmhook_guest::bindings",
        runtime_path: "wasmhook_guest::__private::wit_bindgen::rt",
        additional_derives: [PartialEq, Eq],
    });
}

// Lets the generated code name this crate the way a plugin crate does.
extern crate self as wasmhook_guest;

pub use bindings::wasmhook::plugin::host::Level;
pub use bindings::wasmhook::plugin::types::{
    Action, Event, Group, Header, Held, PluginError, Request, Window,
};

/// Implementation details used by [`export_plugin!`]; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    use super::*;

    /// Parses the subscription's config text; an empty text means `{}`.
    pub fn parse_config<C: DeserializeOwned>(config: &str) -> Result<C, PluginError> {
        let text = if config.trim().is_empty() {
            "{}"
        } else {
            config
        };
        serde_json::from_str(text).map_err(|e| PluginError::BadConfig(e.to_string()))
    }

    pub fn check_config<P: Plugin>(config: String) -> Result<(), PluginError> {
        P::check_config(&parse_config::<P::Config>(&config)?)
    }

    pub fn handle<P: Plugin>(event: Event, config: String) -> Result<Action, PluginError> {
        P::handle(event, parse_config(&config)?)
    }

    pub fn flush<P: Plugin>(
        window: Window,
        groups: Vec<Group>,
        config: String,
    ) -> Result<Vec<Request>, PluginError> {
        P::flush(window, groups, parse_config(&config)?)
    }
}

/// A wasmhook plugin: what to do with each event routed to a subscription.
///
/// All functions are associated functions (no `self`): the host creates a new
/// instance for every call, so there is nothing to keep between calls.
pub trait Plugin {
    /// The subscription's settings, parsed from its config JSON (`{}` when it
    /// has none). Use [`NoConfig`] for a plugin without settings; add
    /// `#[serde(deny_unknown_fields)]` so typos are refused up front.
    type Config: DeserializeOwned;

    /// Decide what to do with one event.
    fn handle(event: Event, config: Self::Config) -> Result<Action, PluginError>;

    /// Check settings beyond what parsing them checks (called when a
    /// subscription is created or changed). Parsing already happened, so the
    /// default accepts every config that parses.
    fn check_config(config: &Self::Config) -> Result<(), PluginError> {
        let _ = config;
        Ok(())
    }

    /// Turn the items held during one window into requests. Only plugins
    /// that return [`Action::hold`] need this; the default refuses.
    fn flush(
        window: Window,
        groups: Vec<Group>,
        config: Self::Config,
    ) -> Result<Vec<Request>, PluginError> {
        let _ = (window, groups, config);
        Err(PluginError::Failed(
            "this plugin does not hold items, so it has nothing to flush".into(),
        ))
    }
}

/// The config type of a plugin that takes no settings: accepts any JSON.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoConfig;

impl<'de> serde::Deserialize<'de> for NoConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| NoConfig)
    }
}

/// Exports a [`Plugin`] implementation as the component's `transform` world.
/// Call it once, at the crate root of a `cdylib` crate.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            struct __WasmhookExports;

            impl $crate::bindings::Guest for __WasmhookExports {
                fn check_config(config: String) -> Result<(), $crate::PluginError> {
                    $crate::__private::check_config::<$plugin>(config)
                }
                fn handle(
                    event: $crate::Event,
                    config: String,
                ) -> Result<$crate::Action, $crate::PluginError> {
                    $crate::__private::handle::<$plugin>(event, config)
                }
                fn flush(
                    window: $crate::Window,
                    groups: Vec<$crate::Group>,
                    config: String,
                ) -> Result<Vec<$crate::Request>, $crate::PluginError> {
                    $crate::__private::flush::<$plugin>(window, groups, config)
                }
            }

            $crate::bindings::__export_transform!(__WasmhookExports);
        };
    };
}

impl Event {
    /// Parses the event's `data` into `T`; a mismatch is a
    /// [`PluginError::BadEvent`] that names the field.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, PluginError> {
        serde_json::from_str(&self.payload).map_err(|e| {
            PluginError::BadEvent(format!("{} data does not fit: {e}", self.event_type))
        })
    }

    /// A copy of this event for tests and native runs.
    pub fn new(
        id: impl Into<String>,
        event_type: impl Into<String>,
        occurred_at: impl Into<String>,
        payload: &impl Serialize,
    ) -> Self {
        Event {
            id: id.into(),
            event_type: event_type.into(),
            source: "test".into(),
            occurred_at: occurred_at.into(),
            payload: serde_json::to_string(payload).expect("a serializable payload"),
        }
    }
}

impl Request {
    /// A request whose body is `value` as compact JSON (`application/json`).
    pub fn json(value: &impl Serialize) -> Result<Self, PluginError> {
        let body = serde_json::to_string(value)
            .map_err(|e| PluginError::Failed(format!("cannot serialize the body: {e}")))?;
        Ok(Request {
            body,
            content_type: None,
            headers: Vec::new(),
        })
    }

    /// A request with a raw body and an explicit content type.
    pub fn raw(body: impl Into<String>, content_type: impl Into<String>) -> Self {
        Request {
            body: body.into(),
            content_type: Some(content_type.into()),
            headers: Vec::new(),
        }
    }

    /// Adds an extra header (reserved ones are refused by the host).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push(Header {
            name: name.into(),
            value: value.into(),
        });
        self
    }
}

impl Action {
    /// Filter the event out; the reason is recorded on the delivery.
    pub fn skip(reason: impl Into<String>) -> Self {
        Action::Skip(Some(reason.into()))
    }

    /// Deliver one request.
    pub fn deliver(request: Request) -> Self {
        Action::Deliver(vec![request])
    }

    /// Hold one item under `group` until the window closes.
    pub fn hold(group: impl Into<String>, item: impl Into<String>) -> Self {
        Action::Hold(vec![Held {
            group: group.into(),
            item: item.into(),
        }])
    }
}

impl Group {
    /// Parses every item of this group as JSON of type `T`.
    pub fn items_json<T: DeserializeOwned>(&self) -> Result<Vec<T>, PluginError> {
        self.items
            .iter()
            .map(|item| {
                serde_json::from_str(item).map_err(|e| {
                    PluginError::Failed(format!(
                        "held item in group {:?} is unreadable: {e}",
                        self.key
                    ))
                })
            })
            .collect()
    }
}

impl From<serde_json::Error> for PluginError {
    fn from(e: serde_json::Error) -> Self {
        PluginError::Failed(e.to_string())
    }
}

/// Writes a line to this call's plugin log (see the WIT `host.log`). On a
/// native build (unit tests, benchmarks) it goes to stderr instead.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::wasmhook::plugin::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// The id of the delivery that the `index`-th request (0-based) returned by
/// this call will become: receivers deduplicate on it, so it makes a good
/// idempotency key in a body. On a native build, `dlv_native_<index>`.
pub fn delivery_id(index: u32) -> String {
    #[cfg(target_arch = "wasm32")]
    return bindings::wasmhook::plugin::host::delivery_id(index);
    #[cfg(not(target_arch = "wasm32"))]
    format!("dlv_native_{index}")
}

/// Takes the items this subscription holds under `group` (from every
/// window, in arrival order): they are removed once this call's result is
/// stored. Lets a plugin send a conversation when it closes rather than
/// when the window does. On a native build, always empty.
pub fn take_held(group: &str) -> Vec<String> {
    #[cfg(target_arch = "wasm32")]
    return bindings::wasmhook::plugin::host::take_held(group);
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = group;
        Vec::new()
    }
}

/// Logs at debug level with `format!` syntax.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log($crate::Level::Debug, &format!($($arg)*)) };
}

/// Logs at info level with `format!` syntax.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log($crate::Level::Info, &format!($($arg)*)) };
}

/// Logs at warn level with `format!` syntax.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log($crate::Level::Warn, &format!($($arg)*)) };
}
