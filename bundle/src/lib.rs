//! The bundled plugins' components, built for `wasm32-wasip2` by this
//! crate's build script (`build.rs`) and embedded here; the `wasmhook`
//! crate lists them (`runtime::bundled`). A crate of its own so that the
//! plugins' build starts at once, beside the host's dependencies, instead
//! of after them.

/// A bundled plugin's component, by package name.
macro_rules! component {
    ($name:literal) => {
        include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".wasm"))
    };
}

pub const HELLOCLIENT_LEAD: &[u8] = component!("helloclient-lead");
pub const HELLOCLIENT_CHATLOG: &[u8] = component!("helloclient-chatlog");
pub const EVENT_FILTER: &[u8] = component!("event-filter");
pub const ONEHASH_MESSAGE: &[u8] = component!("onehash-message");
pub const ONWEBCHAT: &[u8] = component!("onwebchat");
pub const CONVOSPHERE: &[u8] = component!("convosphere");
pub const OHALLO: &[u8] = component!("ohallo");
pub const PLATFORM_SOURCES: &[u8] = component!("platform-sources");

/// Where the tests' fixture components are (`fixture-<name>.wasm`).
pub const FIXTURES_DIR: &str = env!("WASMHOOK_FIXTURES_DIR");
