//! A wasmhook plugin: turns each new chat message into a short notification
//! for a team channel, and skips every other event.
//!
//! Build: `make` (writes plugin.wasm). Try it: `make run`, or
//!   wasmhook plugin run plugin.wasm --event event.json --config config.json

use serde::Deserialize;
use wasmhook_guest::{Action, Event, Plugin, PluginError, Request};

struct Notify;

/// The subscription's settings; a config that does not parse is refused
/// when the subscription is created, with serde's message.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    channel: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    author: Option<String>,
    content: String,
    #[serde(default)]
    conversation_id: serde_json::Value,
}

impl Plugin for Notify {
    type Config = Config;

    fn handle(event: Event, config: Config) -> Result<Action, PluginError> {
        if event.event_type != "message.created" {
            return Ok(Action::skip(format!("not a message: {}", event.event_type)));
        }
        let message: Message = event.json()?;
        let author = message.author.as_deref().unwrap_or("someone");
        wasmhook_guest::info!("message {} from {author}", event.id);
        let body = serde_json::json!({
            "channel": config.channel.as_deref().unwrap_or("#general"),
            "text": format!("[{author}] {}", message.content),
            "conversation": message.conversation_id,
            "at": event.occurred_at,
        });
        Ok(Action::deliver(Request::json(&body)?))
    }
}

wasmhook_guest::export_plugin!(Notify);
