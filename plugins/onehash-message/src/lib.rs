//! `onehash-message`: `message.created` → OneHash Chat's (Chatwoot's)
//! `message_created` webhook body, exactly as seed 001 shows it: `event`,
//! `id`, `content`, `created_at` (`YYYY-MM-DD HH:MM:SS UTC`),
//! `message_type`, `content_type`, `content_attributes`, `source_id`,
//! `sender`, `contact`, `conversation` (`display_id`,
//! `additional_attributes`), `account`, in that order.
//!
//! An event that came in through a `onehash` source carries the original
//! body in `data.raw`: it is sent back unchanged, so OneHash → wasmhook →
//! a OneHash receiver is lossless. Every other event type is skipped.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use wasmhook_guest::{Action, Event, Plugin, PluginError, Request};

pub struct OneHashMessage;

/// No settings; unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// The canonical `message.created` fields this format reads.
#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    message_id: Option<Value>,
    conversation_id: Value,
    #[serde(default)]
    chatbot_id: Value,
    #[serde(default)]
    chatbot_name: String,
    #[serde(default)]
    uri: String,
    author: String,
    #[serde(default)]
    author_name: Option<String>,
    #[serde(default)]
    content: String,
    created_at: String,
    #[serde(default)]
    sender: Option<Value>,
    #[serde(default)]
    contact: Option<Value>,
    #[serde(default)]
    account: Option<Value>,
    #[serde(default)]
    raw: Option<Value>,
}

/// Chatwoot's body; field order is the seed's.
#[derive(Debug, Serialize)]
struct Body {
    event: &'static str,
    id: Value,
    content: String,
    created_at: String,
    message_type: &'static str,
    content_type: &'static str,
    content_attributes: Map<String, Value>,
    source_id: &'static str,
    sender: Value,
    contact: Value,
    conversation: Value,
    account: Value,
}

/// `2020-03-03T13:05:57Z` (or with fractions) → `2020-03-03 13:05:57 UTC`;
/// anything else unchanged.
pub fn chatwoot_time(rfc3339: &str) -> String {
    let b = rfc3339.as_bytes();
    if b.len() >= 20 && b[10] == b'T' && rfc3339.ends_with('Z') {
        format!("{} {} UTC", &rfc3339[..10], &rfc3339[11..19])
    } else {
        rfc3339.to_string()
    }
}

fn as_id(v: &Value) -> Value {
    match v {
        Value::Number(n) => Value::String(n.to_string()),
        other => other.clone(),
    }
}

impl Plugin for OneHashMessage {
    type Config = Config;

    fn handle(event: Event, _config: Config) -> Result<Action, PluginError> {
        if event.event_type != "message.created" {
            return Ok(Action::skip(format!(
                "onehash-message sends message.created only, not {}",
                event.event_type
            )));
        }
        let m: Message = event.json()?;
        if let Some(raw) = &m.raw
            && raw.get("event").and_then(Value::as_str) == Some("message_created")
        {
            return Ok(Action::deliver(Request::json(raw)?));
        }
        let message_type = match m.author.as_str() {
            "visitor" => "incoming",
            "agent" | "ai" => "outgoing",
            "trigger" => "template",
            other => {
                return Err(PluginError::BadEvent(format!(
                    "author {other:?} is not visitor, agent, ai or trigger"
                )));
            }
        };
        let name = m.author_name.clone().unwrap_or_default();
        let body = Body {
            event: "message_created",
            id: as_id(
                m.message_id
                    .as_ref()
                    .unwrap_or(&Value::String(event.id.clone())),
            ),
            content: m.content,
            created_at: chatwoot_time(&m.created_at),
            message_type,
            content_type: "text",
            content_attributes: Map::new(),
            source_id: "",
            sender: m.sender.unwrap_or_else(|| {
                if m.author == "visitor" {
                    json!({})
                } else {
                    json!({ "id": "", "name": name, "email": "" })
                }
            }),
            contact: m.contact.unwrap_or_else(|| {
                if m.author == "visitor" {
                    json!({ "id": "", "name": name })
                } else {
                    json!({})
                }
            }),
            conversation: json!({
                "display_id": as_id(&m.conversation_id),
                "additional_attributes": { "referer": m.uri },
            }),
            account: m
                .account
                .unwrap_or_else(|| json!({ "id": as_id(&m.chatbot_id), "name": m.chatbot_name })),
        };
        Ok(Action::deliver(Request::json(&body)?))
    }
}

wasmhook_guest::export_plugin!(OneHashMessage);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_become_chatwoots() {
        assert_eq!(
            chatwoot_time("2020-03-03T13:05:57Z"),
            "2020-03-03 13:05:57 UTC"
        );
        assert_eq!(
            chatwoot_time("2020-03-03T13:05:57.25Z"),
            "2020-03-03 13:05:57 UTC"
        );
        assert_eq!(chatwoot_time("yesterday"), "yesterday");
    }
}
