//! The plugins compiled into the binary by `build.rs`, available to every
//! tenant as `builtin:<name>` and to the CLI by bare name.

use super::World;

/// A plugin shipped inside the `wasmhook` binary.
#[derive(Debug, Clone, Copy)]
pub struct Bundled {
    /// The name tenants and the CLI use (`helloclient-lead`).
    pub name: &'static str,
    /// One line on what it does.
    pub description: &'static str,
    /// The component bytes.
    pub wasm: &'static [u8],
    /// Which world it implements: subscriptions use `transform` plugins,
    /// sources `source` adapters.
    pub world: World,
}

impl Bundled {
    /// The id under which the API lists it.
    pub fn id(&self) -> String {
        format!("builtin:{}", self.name)
    }
}

/// Every bundled plugin.
pub const BUNDLED: &[Bundled] = &[
    Bundled {
        name: "helloclient-lead",
        description: "lead.created / appointment.created -> Hello Client's CRM lead record",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/helloclient-lead.wasm")),
        world: World::Transform,
    },
    Bundled {
        name: "helloclient-chatlog",
        description: "message.created held per chatbot -> Hello Client's daily chat-log Collection",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/helloclient-chatlog.wasm")),
        world: World::Transform,
    },
    Bundled {
        name: "event-filter",
        description: "conditions on JSON pointers (equals, one_of, exists, prefix; all/any/not) -> the event unchanged",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/event-filter.wasm")),
        world: World::Transform,
    },
    Bundled {
        name: "onehash-message",
        description: "message.created -> OneHash Chat's (Chatwoot's) message_created body, as seed 001 shows it",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/onehash-message.wasm")),
        world: World::Transform,
    },
    Bundled {
        name: "onwebchat",
        description: "onWebChat's events; a conversation's messages held and sent in its chat.closed transcript",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/onwebchat.wasm")),
        world: World::Transform,
    },
    Bundled {
        name: "convosphere",
        description: "Convosphere AI's events (message.created/completed, conversation.started/ended, user.feedback, error.occurred)",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/convosphere.wasm")),
        world: World::Transform,
    },
    Bundled {
        name: "ohallo",
        description: "oHallo's events, with the delivery id as the payload's idempotency_key",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/ohallo.wasm")),
        world: World::Transform,
    },
    Bundled {
        name: "platform-sources",
        description: "source adapter: the seed platforms' webhooks (config {\"kind\": …}) -> canonical events",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/platform-sources.wasm")),
        world: World::Source,
    },
];

/// Finds a bundled plugin by `name` or `builtin:name`.
pub fn find(name: &str) -> Option<&'static Bundled> {
    let name = name.strip_prefix("builtin:").unwrap_or(name);
    BUNDLED.iter().find(|b| b.name == name)
}
