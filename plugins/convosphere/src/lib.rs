//! `convosphere`: canonical events → Convosphere AI's webhook events (seed
//! 004): `message.created` (from a visitor) / `message.completed` (the
//! agent's answer), `conversation.started` / `conversation.ended`,
//! `user.feedback` (thumbs up or down), `error.occurred`. The body is
//! `{"event", "id", "timestamp", "data"}`, `data` being the canonical data
//! without `raw`. Every other event type is skipped.
//!
//! Pair it with the `convosphere` retry preset (1, 2, 4, 8, 16 minutes; a
//! 4xx other than 429 stops) and `"verify_on_create": true` (Convosphere
//! sends a test event when an endpoint is created).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use wasmhook_guest::{Action, Event, Plugin, PluginError, Request};

pub struct Convosphere;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

#[derive(Debug, Serialize)]
struct Body<'a> {
    event: &'static str,
    id: &'a str,
    timestamp: &'a str,
    data: Map<String, Value>,
}

impl Plugin for Convosphere {
    type Config = Config;

    fn handle(event: Event, _config: Config) -> Result<Action, PluginError> {
        let mut data: Map<String, Value> = event.json()?;
        data.remove("raw");
        let author = data.get("author").and_then(Value::as_str).unwrap_or("");
        let name = match event.event_type.as_str() {
            "message.created" if author == "visitor" => "message.created",
            "message.created" => "message.completed",
            "conversation.created" => "conversation.started",
            "conversation.closed" => "conversation.ended",
            "chat.rated" => {
                let rating = data.get("rating").and_then(Value::as_i64).ok_or_else(|| {
                    PluginError::BadEvent("chat.rated data has no integer `rating`".into())
                })?;
                data.insert(
                    "feedback".into(),
                    json!(if rating > 0 { "up" } else { "down" }),
                );
                "user.feedback"
            }
            "error.occurred" => "error.occurred",
            "webhook.test" => "webhook.test",
            other => {
                return Ok(Action::skip(format!(
                    "Convosphere has no event for {other}"
                )));
            }
        };
        let body = Body {
            event: name,
            id: &event.id,
            timestamp: &event.occurred_at,
            data,
        };
        Ok(Action::deliver(Request::json(&body)?))
    }
}

wasmhook_guest::export_plugin!(Convosphere);
