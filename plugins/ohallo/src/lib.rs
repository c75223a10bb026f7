//! `ohallo`: canonical events → oHallo's webhook events (seed 000): a
//! visitor's `message.created` → `message.received`, an agent's or the AI's
//! → `message.sent`; `conversation.created`, `.updated`, `.resolved`,
//! `.status_changed`, `attention_item.created`, `kb_entry.proposed`,
//! `policy_entry.proposed` keep their names. The body is `{"event",
//! "idempotency_key", "occurred_at", "data"}`: the idempotency key is the
//! delivery id (`host.delivery-id`), the same on every retry, as oHallo's
//! receivers expect. Every other event type is skipped.
//!
//! Pair it with the `ohallo` retry preset (exponential, 3 attempts) and a
//! `body-hex` signature in `X-OHallo-Signature`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use wasmhook_guest::{Action, Event, Plugin, PluginError, Request};

pub struct OHallo;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

#[derive(Debug, Serialize)]
struct Body<'a> {
    event: &'static str,
    idempotency_key: String,
    occurred_at: &'a str,
    data: Map<String, Value>,
}

impl Plugin for OHallo {
    type Config = Config;

    fn handle(event: Event, _config: Config) -> Result<Action, PluginError> {
        let mut data: Map<String, Value> = event.json()?;
        data.remove("raw");
        let name = match event.event_type.as_str() {
            "message.created" => match data.get("author").and_then(Value::as_str).unwrap_or("") {
                "visitor" => "message.received",
                _ => "message.sent",
            },
            "conversation.created" => "conversation.created",
            "conversation.updated" => "conversation.updated",
            "conversation.resolved" => "conversation.resolved",
            "conversation.status_changed" => "conversation.status_changed",
            "attention_item.created" => "attention_item.created",
            "kb_entry.proposed" => "kb_entry.proposed",
            "policy_entry.proposed" => "policy_entry.proposed",
            other => return Ok(Action::skip(format!("oHallo has no event for {other}"))),
        };
        let body = Body {
            event: name,
            idempotency_key: wasmhook_guest::delivery_id(0),
            occurred_at: &event.occurred_at,
            data,
        };
        Ok(Action::deliver(Request::json(&body)?))
    }
}

wasmhook_guest::export_plugin!(OHallo);
