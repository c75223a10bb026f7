//! `platform-sources`: the bundled source adapters (the `source` world) for
//! the seed platforms: each platform's own webhook request in, the canonical
//! events of `docs/events.md` out. The source's `kind` arrives as the config
//! (`{"kind": "onehash"}`); wasmhook has verified the signature before the
//! adapter runs.
//!
//! Every event keeps the platform's own object under `data.raw`, so a
//! subscription's plugin can reach fields the canonical shape does not
//! name. An event the platform has and the canonical list does not is kept
//! as `<kind>.<name>` rather than dropped.

// Generated code: clippy has opinions about its argument counts.
#![allow(clippy::too_many_arguments)]

pub mod chatwoot;
pub mod map;
mod ohallo_api;
mod time;

wit_bindgen::generate!({
    path: "../../wit",
    world: "source",
});

use wasmhook::plugin::source_types::Incoming;

/// The component's exports.
struct Adapter;

fn settings_of(config: &str) -> Result<map::Settings, SourceError> {
    map::Settings::from_config(config).map_err(SourceError::BadConfig)
}

impl Guest for Adapter {
    fn check_config(config: String) -> Result<(), SourceError> {
        settings_of(&config).map(|_| ())
    }

    fn normalize(request: Inbound, config: String) -> Result<Normalized, SourceError> {
        let settings = settings_of(&config)?;
        let headers: Vec<(String, String)> = request
            .headers
            .into_iter()
            .map(|h| (h.name, h.value))
            .collect();
        let out = map::normalize_with(&settings, &headers, &request.body, &request.received_at)
            .map_err(SourceError::BadPayload)?;
        Ok(Normalized {
            events: out
                .events
                .into_iter()
                .map(|e| Incoming {
                    payload: e.payload(),
                    id: e.id,
                    event_type: e.event_type,
                    occurred_at: e.occurred_at,
                })
                .collect(),
            reply: out.reply,
        })
    }
}

export!(Adapter);
