//! The host's `bindgen!`s (one per world, sharing the `types` and `host`
//! interfaces), and the conversions between their generated types and the
//! plain types in [`super::types`].

use super::state::State;
use super::types as t;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "transform",
    exports: { default: async },
});

use self::wasmhook::plugin::types as wit;

/// The `source` world: its own exports, the `transform` world's interfaces.
pub mod source {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "source",
        exports: { default: async },
        with: {
            "wasmhook:plugin/types": crate::runtime::bindings::wasmhook::plugin::types,
            "wasmhook:plugin/host": crate::runtime::bindings::wasmhook::plugin::host,
        },
    });
}

use self::source::wasmhook::plugin::source_types as src;

impl src::Host for State {}

pub fn to_wit_inbound(r: &t::Inbound) -> src::Inbound {
    src::Inbound {
        headers: r
            .headers
            .iter()
            .map(|h| wit::Header {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect(),
        body: r.body.clone(),
        received_at: r.received_at.clone(),
    }
}

pub fn from_wit_normalized(n: src::Normalized) -> t::Normalized {
    t::Normalized {
        events: n
            .events
            .into_iter()
            .map(|e| t::IncomingEvent {
                id: e.id,
                event_type: e.event_type,
                occurred_at: e.occurred_at,
                payload: e.payload,
            })
            .collect(),
        reply: n.reply,
    }
}

/// A source adapter's error as the host's plugin error: a payload it cannot
/// read is the source's "bad event".
pub fn from_wit_source_error(e: src::SourceError) -> t::PluginError {
    match e {
        src::SourceError::BadConfig(m) => t::PluginError::BadConfig(m),
        src::SourceError::BadPayload(m) => t::PluginError::BadEvent(m),
        src::SourceError::Failed(m) => t::PluginError::Failed(m),
    }
}

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

    fn delivery_id(&mut self, index: u32) -> String {
        State::delivery_id(self, index)
    }

    fn take_held(&mut self, group: String) -> Vec<String> {
        State::take_held(self, &group)
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
