//! The plugins compiled into the binary by `build.rs`, available to every
//! tenant as `builtin:<name>` and to the CLI by bare name.

/// A plugin shipped inside the `wasmhook` binary.
#[derive(Debug, Clone, Copy)]
pub struct Bundled {
    /// The name tenants and the CLI use (`helloclient-lead`).
    pub name: &'static str,
    /// One line on what it does.
    pub description: &'static str,
    /// The component bytes.
    pub wasm: &'static [u8],
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
    },
    Bundled {
        name: "helloclient-chatlog",
        description: "message.created held per chatbot -> Hello Client's daily chat-log Collection",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/helloclient-chatlog.wasm")),
    },
    Bundled {
        name: "event-filter",
        description: "conditions on JSON pointers (equals, one_of, exists, prefix; all/any/not) -> the event unchanged",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/event-filter.wasm")),
    },
];

/// Finds a bundled plugin by `name` or `builtin:name`.
pub fn find(name: &str) -> Option<&'static Bundled> {
    let name = name.strip_prefix("builtin:").unwrap_or(name);
    BUNDLED.iter().find(|b| b.name == name)
}
