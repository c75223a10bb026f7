//! `onwebchat`: canonical events → onWebChat's webhook events (seed 003):
//! `chat.created`, `chat.assigned`, `message.created`, `chat.closed`,
//! `chat.rated`, `offline_message.created`, `visitor.updated`,
//! `visitor.banned`, `visitor.unbanned`. The body is `{"event",
//! "created_at", "data"}`; with the `body-hex` signature scheme the
//! `X-OWC-Event` header carries the same name (the host reads the body's
//! `event`), `X-OWC-Delivery` the delivery id.
//!
//! `chat.closed` carries the full transcript, the visitor and the labels,
//! as onWebChat's does. With `"hold_messages": true` (the default) a
//! conversation's `message.created` events are held (group: the
//! conversation id) and sent inside its `chat.closed`: the plugin takes
//! them back with `host.take-held` when the conversation closes. The
//! subscription needs a `window` for that: a conversation still open when
//! the window closes is sent then, as `chat.closed` with `closed_by:
//! "system"` and `reason: "window_closed"`. With `false`, each message is
//! sent as its own `message.created` and `chat.closed` carries the
//! transcript the event itself brings (an onWebChat source's does).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use wasmhook_guest::{Action, Event, Group, Plugin, PluginError, Request, Window};

pub struct OnWebChat;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "yes")]
    pub hold_messages: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Serialize)]
struct Body<'a> {
    event: &'static str,
    created_at: &'a str,
    data: Map<String, Value>,
}

/// One transcript line; also the held item.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    author: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    author_name: Option<String>,
    content: String,
    created_at: String,
}

fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn send(
    event: &'static str,
    created_at: &str,
    data: Map<String, Value>,
) -> Result<Request, PluginError> {
    Request::json(&Body {
        event,
        created_at,
        data,
    })
}

impl Plugin for OnWebChat {
    type Config = Config;

    fn handle(event: Event, config: Config) -> Result<Action, PluginError> {
        let mut data: Map<String, Value> = event.json()?;
        data.remove("raw");
        let conversation = data.get("conversation_id").and_then(id_text);
        if let Some(id) = &conversation {
            data.insert("chat_id".into(), json!(id));
        }
        let name = match event.event_type.as_str() {
            "message.created" => {
                if config.hold_messages {
                    let id = conversation.ok_or_else(|| {
                        PluginError::BadEvent("message.created has no conversation_id".into())
                    })?;
                    let line = Line {
                        author: data
                            .get("author")
                            .and_then(Value::as_str)
                            .unwrap_or("visitor")
                            .into(),
                        author_name: data
                            .get("author_name")
                            .and_then(Value::as_str)
                            .map(Into::into),
                        content: data
                            .get("content")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .into(),
                        created_at: data
                            .get("created_at")
                            .and_then(Value::as_str)
                            .unwrap_or(&event.occurred_at)
                            .into(),
                    };
                    return Ok(Action::hold(id, serde_json::to_string(&line)?));
                }
                "message.created"
            }
            "conversation.created" => "chat.created",
            "conversation.assigned" => "chat.assigned",
            "conversation.closed" => {
                let held: Vec<Line> = match &conversation {
                    Some(id) => wasmhook_guest::take_held(id)
                        .iter()
                        .map(|item| serde_json::from_str(item))
                        .collect::<Result<_, _>>()?,
                    None => Vec::new(),
                };
                if !held.is_empty() || !data.contains_key("transcript") {
                    data.insert("message_count".into(), json!(held.len()));
                    data.insert("transcript".into(), serde_json::to_value(held)?);
                }
                data.entry("labels").or_insert_with(|| json!([]));
                "chat.closed"
            }
            "chat.rated" => "chat.rated",
            "offline_message.created" => "offline_message.created",
            "visitor.updated" => "visitor.updated",
            "visitor.banned" => "visitor.banned",
            "visitor.unbanned" => "visitor.unbanned",
            other => return Ok(Action::skip(format!("onWebChat has no event for {other}"))),
        };
        Ok(Action::deliver(send(name, &event.occurred_at, data)?))
    }

    fn check_config(_config: &Config) -> Result<(), PluginError> {
        Ok(())
    }

    /// Conversations still open when the window closes.
    fn flush(
        window: Window,
        groups: Vec<Group>,
        _config: Config,
    ) -> Result<Vec<Request>, PluginError> {
        groups
            .iter()
            .map(|g| {
                let lines: Vec<Line> = g.items_json()?;
                let mut data = Map::new();
                data.insert("chat_id".into(), json!(g.key));
                data.insert("conversation_id".into(), json!(g.key));
                data.insert("closed_by".into(), json!("system"));
                data.insert("reason".into(), json!("window_closed"));
                data.insert("message_count".into(), json!(lines.len()));
                data.insert("transcript".into(), serde_json::to_value(lines)?);
                data.insert("labels".into(), json!([]));
                send("chat.closed", &window.end, data)
            })
            .collect()
    }
}

wasmhook_guest::export_plugin!(OnWebChat);
