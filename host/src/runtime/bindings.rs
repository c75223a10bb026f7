//! The one `bindgen!` of the host, and the conversions between its generated
//! types and the plain types in [`super::types`].

use super::state::State;
use super::types as t;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "transform",
    exports: { default: async },
});

use self::wasmhook::plugin::types as wit;

pub use wit::PluginError as WitPluginError;

impl self::wasmhook::plugin::host::Host for State {
    fn log(&mut self, level: self::wasmhook::plugin::host::Level, message: String) {
        use self::wasmhook::plugin::host::Level;
        let level = match level {
            Level::Debug => t::LogLevel::Debug,
            Level::Info => t::LogLevel::Info,
            Level::Warn => t::LogLevel::Warn,
            Level::Error => t::LogLevel::Error,
        };
        self.push_log(level, &message);
    }
}

impl wit::Host for State {}

pub fn to_wit_event(e: &t::PluginEvent) -> wit::Event {
    wit::Event {
        id: e.id.clone(),
        event_type: e.event_type.clone(),
        source: e.source.clone(),
        occurred_at: e.occurred_at.clone(),
        payload: e.payload.clone(),
    }
}

pub fn to_wit_window(w: &t::WindowBounds) -> wit::Window {
    wit::Window {
        start: w.start.clone(),
        end: w.end.clone(),
    }
}

pub fn to_wit_groups(groups: &[t::HeldGroup]) -> Vec<wit::Group> {
    groups
        .iter()
        .map(|g| wit::Group {
            key: g.key.clone(),
            items: g.items.clone(),
        })
        .collect()
}

pub fn from_wit_request(r: wit::Request) -> t::PluginRequest {
    t::PluginRequest {
        body: r.body,
        content_type: r
            .content_type
            .unwrap_or_else(|| "application/json".to_string()),
        headers: r
            .headers
            .into_iter()
            .map(|h| t::Header {
                name: h.name,
                value: h.value,
            })
            .collect(),
    }
}

pub fn from_wit_action(a: wit::Action) -> t::Action {
    match a {
        wit::Action::Skip(reason) => t::Action::Skip { reason },
        wit::Action::Deliver(requests) => t::Action::Deliver {
            requests: requests.into_iter().map(from_wit_request).collect(),
        },
        wit::Action::Hold(items) => t::Action::Hold {
            items: items
                .into_iter()
                .map(|h| t::HeldItem {
                    group: h.group,
                    item: h.item,
                })
                .collect(),
        },
    }
}

pub fn from_wit_error(e: wit::PluginError) -> t::PluginError {
    match e {
        wit::PluginError::BadConfig(m) => t::PluginError::BadConfig(m),
        wit::PluginError::BadEvent(m) => t::PluginError::BadEvent(m),
        wit::PluginError::Failed(m) => t::PluginError::Failed(m),
    }
}
