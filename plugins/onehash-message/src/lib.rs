//! `onehash-message`: `message.created` (and `message.updated`) → the body
//! Chatwoot's code (and OneHash's, its fork) sends for `message_created`
//! (`message_updated`): `Message#webhook_data` merged with `event`, field
//! for field and type for type (Chatwoot v4.15, `app/models/message.rb`,
//! `app/presenters/conversations/event_data_presenter.rb`):
//! `account {id, name}`, `additional_attributes`, `content_attributes`,
//! `content_type`, `content`, `conversation` (its push data: `id` is the
//! display id, `inbox_id`, `status`, `channel`, `meta {sender, assignee,
//! team}`, `messages`, `labels`, Unix times), `created_at` (ISO 8601 with
//! milliseconds), `id`, `inbox {id, name}`, `message_type`, `private`,
//! `sender` (the contact, or the agent with `type`), `source_id`,
//! `attachments` when there are some, then `event`. Numeric ids are
//! integers; an id that is not a number stays a string.
//!
//! An event that came in through a `onehash` (`chatwoot`) source carries
//! the request's body in `data.raw`, kept as it arrived: that is sent on
//! byte for byte, so Chatwoot → wasmhook → a Chatwoot receiver is
//! lossless (sign it with `"signature": {"scheme": "chatwoot"}`). Every
//! other event type is skipped.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use wasmhook_guest::{Action, Event, Plugin, PluginError, Request};

pub struct OneHashMessage;

/// No settings; unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// The canonical message fields this format reads (`docs/events.md`).
#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    message_id: Option<Value>,
    conversation_id: Value,
    #[serde(default)]
    conversation_created_at: Option<String>,
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
    private: Option<bool>,
    #[serde(default)]
    attachments: Option<Vec<Value>>,
    #[serde(default)]
    inbox: Option<Value>,
    #[serde(default)]
    sender: Option<Value>,
    #[serde(default)]
    raw: Option<Box<RawValue>>,
}

/// `data.raw`'s event name, to know it is a Chatwoot body of this event.
#[derive(Deserialize)]
struct RawEvent {
    #[serde(default)]
    event: Option<String>,
}

/// A numeric id as Chatwoot sends it (an integer); anything else as is.
pub fn as_id(v: &Value) -> Value {
    match v {
        Value::String(s) => match s.parse::<u64>() {
            Ok(n) if s == "0" || !s.starts_with('0') => json!(n),
            _ => v.clone(),
        },
        other => other.clone(),
    }
}

/// Days from 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SS[.fff…]Z` → (Unix seconds, the fraction's digits).
fn parse_utc(rfc3339: &str) -> Option<(i64, &str)> {
    let t = rfc3339.strip_suffix('Z')?;
    let b = t.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let fraction = match t.get(19..) {
        Some("") => "",
        Some(f) => f
            .strip_prefix('.')
            .filter(|f| f.bytes().all(|c| c.is_ascii_digit()))?,
        None => return None,
    };
    let days = days_from_civil(num(0..4)?, num(5..7)?, num(8..10)?);
    Some((
        days * 86_400 + num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?,
        fraction,
    ))
}

/// A canonical time as Chatwoot writes a message's: UTC with exactly three
/// decimals (`2025-12-04T10:01:12.533Z`). A time not in UTC stays as is.
pub fn chatwoot_time(rfc3339: &str) -> String {
    match parse_utc(rfc3339) {
        Some((_, fraction)) => {
            let millis: String = fraction.chars().chain("000".chars()).take(3).collect();
            format!("{}.{millis}Z", &rfc3339[..19])
        }
        None => rfc3339.to_string(),
    }
}

/// A canonical time as Chatwoot writes a conversation's: Unix seconds.
fn unix(rfc3339: &str) -> Value {
    parse_utc(rfc3339).map_or(Value::Null, |(secs, _)| json!(secs))
}

/// The person who wrote the message, as `Message#webhook_data` has it: a
/// contact (`Contact#webhook_data`, no `type`), an agent (`type: user`), a
/// bot (`type: agent_bot`), nobody for a template.
fn sender(m: &Message, account: &Value) -> Value {
    let name = m.author_name.clone().unwrap_or_default();
    let given = m.sender.as_ref().filter(|s| s.is_object());
    let id = given
        .and_then(|s| s.get("id"))
        .map(as_id)
        .unwrap_or(Value::Null);
    let field = |key: &str| {
        given
            .and_then(|s| s.get(key))
            .cloned()
            .unwrap_or(Value::Null)
    };
    match m.author.as_str() {
        "visitor" => json!({
            "account": account,
            "additional_attributes": {},
            "avatar": "",
            "custom_attributes": {},
            "email": field("email"),
            "id": id,
            "identifier": field("identifier"),
            "name": name,
            "phone_number": field("phone_number"),
            "thumbnail": "",
            "blocked": false,
        }),
        "agent" => json!({"id": id, "name": name, "email": field("email"), "type": "user"}),
        "ai" => json!({"id": id, "name": name, "type": "agent_bot"}),
        _ => Value::Null,
    }
}

impl Plugin for OneHashMessage {
    type Config = Config;

    fn handle(event: Event, _config: Config) -> Result<Action, PluginError> {
        let name = match event.event_type.as_str() {
            "message.created" => "message_created",
            "message.updated" => "message_updated",
            other => {
                return Ok(Action::skip(format!(
                    "onehash-message sends message.created and message.updated only, not {other}"
                )));
            }
        };
        let m: Message = event.json()?;
        if let Some(raw) = &m.raw
            && serde_json::from_str::<RawEvent>(raw.get())
                .ok()
                .and_then(|r| r.event)
                .as_deref()
                == Some(name)
        {
            // Chatwoot's own body: its bytes, as they arrived.
            return Ok(Action::deliver(Request::raw(raw.get(), "application/json")));
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
        let account = json!({"id": as_id(&m.chatbot_id), "name": m.chatbot_name});
        let id = as_id(
            m.message_id
                .as_ref()
                .unwrap_or(&Value::String(event.id.clone())),
        );
        let inbox = m
            .inbox
            .clone()
            .unwrap_or_else(|| json!({"id": Value::Null, "name": ""}));
        let sender = sender(&m, &account);
        let visitor = (m.author == "visitor").then(|| {
            let mut push = sender.clone();
            if let Some(p) = push.as_object_mut() {
                // In place: Chatwoot's key order stays.
                p.shift_remove("account");
                p.shift_remove("avatar");
                p.insert("type".into(), json!("contact"));
            }
            push
        });
        let last_activity = unix(&m.created_at);
        let conversation = json!({
            "additional_attributes": {"referer": m.uri},
            "can_reply": true,
            "channel": "Channel::Api",
            "contact_inbox": Value::Null,
            "id": as_id(&m.conversation_id),
            "inbox_id": inbox.get("id").cloned().unwrap_or(Value::Null),
            "messages": [],
            "labels": [],
            "meta": {
                "sender": visitor.unwrap_or(Value::Null),
                "assignee": Value::Null,
                "assignee_type": Value::Null,
                "team": Value::Null,
                "hmac_verified": false,
            },
            "status": "open",
            "custom_attributes": {},
            "snoozed_until": Value::Null,
            "unread_count": 0,
            "first_reply_created_at": Value::Null,
            "priority": Value::Null,
            "waiting_since": 0,
            "agent_last_seen_at": 0,
            "contact_last_seen_at": 0,
            "last_activity_at": last_activity,
            "timestamp": last_activity,
            "created_at": unix(m.conversation_created_at.as_deref().unwrap_or(&m.created_at)),
            "account": account,
        });
        // Chatwoot's key order (`Message#webhook_data`, then `event`).
        let mut body = Map::new();
        body.insert("account".into(), account.clone());
        body.insert("additional_attributes".into(), json!({}));
        body.insert("content_attributes".into(), json!({}));
        body.insert("content_type".into(), json!("text"));
        body.insert("content".into(), json!(m.content));
        body.insert("conversation".into(), conversation);
        body.insert("created_at".into(), json!(chatwoot_time(&m.created_at)));
        body.insert("id".into(), id);
        body.insert("inbox".into(), inbox);
        body.insert("message_type".into(), json!(message_type));
        body.insert("private".into(), json!(m.private.unwrap_or(false)));
        body.insert("sender".into(), sender);
        body.insert("source_id".into(), Value::Null);
        if let Some(attachments) = m.attachments.filter(|a| !a.is_empty()) {
            body.insert("attachments".into(), json!(attachments));
        }
        body.insert("event".into(), json!(name));
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
            "2020-03-03T13:05:57.000Z"
        );
        assert_eq!(
            chatwoot_time("2025-12-04T10:01:12.533917Z"),
            "2025-12-04T10:01:12.533Z"
        );
        assert_eq!(
            chatwoot_time("2020-03-03T13:05:57.2Z"),
            "2020-03-03T13:05:57.200Z"
        );
        assert_eq!(chatwoot_time("yesterday"), "yesterday");
        assert_eq!(unix("2025-12-04T10:01:12.533Z"), json!(1764842472));
        assert_eq!(unix("1970-01-01T00:00:00Z"), json!(0));
        assert_eq!(unix("2026-11-21T10:00:00+01:00"), Value::Null);
    }

    #[test]
    fn numeric_ids_are_integers_others_stay_strings() {
        assert_eq!(as_id(&json!("17")), json!(17));
        assert_eq!(as_id(&json!(17)), json!(17));
        assert_eq!(as_id(&json!("0")), json!(0));
        assert_eq!(as_id(&json!("007")), json!("007"));
        assert_eq!(as_id(&json!("conv-9")), json!("conv-9"));
        assert_eq!(as_id(&json!("")), json!(""));
    }
}
