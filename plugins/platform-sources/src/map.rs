//! Each seed platform's request → canonical events. Plain Rust, no WIT, so
//! it is unit-tested natively.

use serde_json::{Map, Value, json};

use crate::time;

/// The platform a source speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OneHash,
    OnWebChat,
    Convosphere,
    HelloClient,
    OHallo,
    StandardWebhooks,
    /// oHallo's REST API items, as a `poll` source fetches them.
    OHalloConversation,
    OHalloKbEntry,
    OHalloAttentionItem,
}

impl Kind {
    /// The config the host passes: `{"kind": "<name>"}`.
    pub fn from_config(config: &str) -> Result<Kind, String> {
        Ok(Settings::from_config(config)?.kind)
    }
}

/// The whole config: the kind, and a standard-webhooks source's type for
/// events whose body names none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub kind: Kind,
    pub default_type: Option<String>,
}

impl Settings {
    pub fn from_config(config: &str) -> Result<Settings, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Config {
            kind: String,
            #[serde(default)]
            default_type: Option<String>,
        }
        let text = if config.trim().is_empty() {
            "{}"
        } else {
            config
        };
        let c: Config = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let kind = Kind::from_name(&c.kind).ok_or_else(|| {
            format!(
                "unknown kind {:?}: onehash, onwebchat, convosphere, helloclient, ohallo, standard-webhooks, ohallo-conversation, ohallo-kb-entry or ohallo-attention-item",
                c.kind
            )
        })?;
        Ok(Settings {
            kind,
            default_type: c.default_type,
        })
    }
}

impl Kind {
    pub fn from_name(name: &str) -> Option<Kind> {
        Some(match name {
            "onehash" | "chatwoot" => Kind::OneHash,
            "onwebchat" => Kind::OnWebChat,
            "convosphere" => Kind::Convosphere,
            "helloclient" => Kind::HelloClient,
            "ohallo" => Kind::OHallo,
            "standard-webhooks" => Kind::StandardWebhooks,
            "ohallo-conversation" => Kind::OHalloConversation,
            "ohallo-kb-entry" => Kind::OHalloKbEntry,
            "ohallo-attention-item" => Kind::OHalloAttentionItem,
            _ => return None,
        })
    }

    /// The prefix of a platform event with no canonical type.
    fn prefix(self) -> &'static str {
        match self {
            Kind::OneHash => "onehash",
            Kind::OnWebChat => "onwebchat",
            Kind::Convosphere => "convosphere",
            Kind::HelloClient => "helloclient",
            Kind::OHallo
            | Kind::OHalloConversation
            | Kind::OHalloKbEntry
            | Kind::OHalloAttentionItem => "ohallo",
            Kind::StandardWebhooks => "standard_webhooks",
        }
    }

    /// `<kind>.<name>` with the name folded into the type grammar
    /// (lowercase segments of `a-z0-9_`, each starting with a letter).
    pub(crate) fn unknown(self, name: &str) -> String {
        let segments: Vec<String> = name
            .split(['.', '/', ':'])
            .map(|segment| {
                let mut s: String = segment
                    .chars()
                    .map(|c| {
                        let c = c.to_ascii_lowercase();
                        if c.is_ascii_lowercase() || c.is_ascii_digit() {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
                    s.insert(0, 'e');
                }
                s
            })
            .filter(|s| s != "e")
            .collect();
        let name = if segments.is_empty() {
            "unknown".to_string()
        } else {
            segments.join(".")
        };
        let mut t = format!("{}.{name}", self.prefix());
        t.truncate(100);
        t
    }
}

/// One canonical event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// None: the host derives one from the source and the body.
    pub id: Option<String>,
    pub event_type: String,
    pub occurred_at: Option<String>,
    pub data: Value,
    /// The request's body, kept byte for byte as `data.raw` (the host
    /// keeps an event's data as the text it arrived as, so a plugin can
    /// send the platform's own bytes on): set where one request is one
    /// event (Chatwoot). Other platforms keep their item in `data.raw`.
    pub raw: Option<String>,
}

impl Event {
    /// The event's data as JSON text: `data`, with `raw` spliced in as
    /// written.
    pub fn payload(&self) -> String {
        let data = self.data.to_string();
        let Some(raw) = &self.raw else {
            return data;
        };
        let raw = raw.trim();
        match data.strip_suffix('}') {
            Some("{") => format!("{{\"raw\":{raw}}}"),
            Some(open) => format!("{open},\"raw\":{raw}}}"),
            None => data,
        }
    }
}

/// What one request amounts to.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    pub events: Vec<Event>,
    pub reply: Option<String>,
}

/// A request the platform sent, as canonical events. The error names the
/// field that is missing or ill-typed.
pub fn normalize(
    kind: Kind,
    headers: &[(String, String)],
    body_text: &str,
    received_at: &str,
) -> Result<Normalized, String> {
    normalize_with(
        &Settings {
            kind,
            default_type: None,
        },
        headers,
        body_text,
        received_at,
    )
}

/// [`normalize`] with the source's whole config.
pub fn normalize_with(
    settings: &Settings,
    headers: &[(String, String)],
    body_text: &str,
    received_at: &str,
) -> Result<Normalized, String> {
    let _ = received_at;
    let kind = settings.kind;
    let value: Value =
        serde_json::from_str(body_text).map_err(|e| format!("the body is not JSON: {e}"))?;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    if kind == Kind::StandardWebhooks {
        // Any JSON: a Standard Webhooks sender posts its own payload.
        return Ok(Normalized {
            events: vec![standard(
                value,
                header("webhook-id"),
                settings.default_type.as_deref(),
            )?],
            reply: None,
        });
    }
    let Value::Object(body) = value else {
        return Err("the body is not a JSON object".into());
    };
    let events = match kind {
        Kind::OneHash => {
            let mut event = crate::chatwoot::event(body, header("x-chatwoot-delivery"))?;
            event.raw = Some(body_text.to_string());
            vec![event]
        }
        Kind::OnWebChat => vec![onwebchat(
            body,
            header("x-owc-event"),
            header("x-owc-delivery"),
        )?],
        Kind::Convosphere => convosphere(body)?,
        Kind::HelloClient => {
            return Ok(Normalized {
                events: helloclient(body)?,
                reply: Some(r#"{"status":"success"}"#.into()),
            });
        }
        Kind::OHallo => vec![ohallo(body)?],
        Kind::OHalloConversation | Kind::OHalloKbEntry | Kind::OHalloAttentionItem => {
            vec![crate::ohallo_api::item(kind, body)?]
        }
        Kind::StandardWebhooks => unreachable!("answered above"),
    };
    Ok(Normalized {
        events,
        reply: None,
    })
}

pub(crate) fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(crate) fn required<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a Value, String> {
    obj.get(field)
        .filter(|v| !v.is_null())
        .ok_or_else(|| format!("`{field}` is missing"))
}

pub(crate) fn string_field(obj: &Map<String, Value>, field: &str) -> Result<String, String> {
    match required(obj, field)? {
        Value::String(s) => Ok(s.clone()),
        other => Err(format!("`{field}` must be a string, not {other}")),
    }
}

pub(crate) fn object<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
) -> Result<&'a Map<String, Value>, String> {
    match required(obj, field)? {
        Value::Object(o) => Ok(o),
        other => Err(format!("`{field}` must be an object, not {other}")),
    }
}

pub(crate) fn time_field(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => time::normalize(v)
            .map(Some)
            .ok_or_else(|| format!("`{field}` {v} is not a time (RFC 3339, \"YYYY-MM-DD HH:MM:SS UTC\" or Unix seconds)")),
    }
}

// ---- onWebChat (seed 003) -------------------------------------------------

fn onwebchat(
    body: Map<String, Value>,
    event_header: Option<&str>,
    delivery: Option<&str>,
) -> Result<Event, String> {
    let name = match event_header {
        Some(name) => name.to_string(),
        None => string_field(&body, "event").map_err(|_| {
            "the X-OWC-Event header is missing (and the body has no `event`)".to_string()
        })?,
    };
    let event_type = match name.as_str() {
        "chat.created" => "conversation.created".to_string(),
        "chat.assigned" => "conversation.assigned".to_string(),
        "chat.closed" => "conversation.closed".to_string(),
        "message.created"
        | "chat.rated"
        | "offline_message.created"
        | "visitor.updated"
        | "visitor.banned"
        | "visitor.unbanned" => name.clone(),
        _ => Kind::OnWebChat.unknown(&name),
    };
    let source = match body.get("data") {
        Some(Value::Object(d)) => d.clone(),
        Some(other) => return Err(format!("`data` must be an object, not {other}")),
        None => body.clone(),
    };
    let mut data = Map::new();
    for (k, v) in &source {
        if k != "event" {
            data.insert(k.clone(), v.clone());
        }
    }
    if !data.contains_key("conversation_id")
        && let Some(id) = source
            .get("chat_id")
            .or_else(|| source.get("chat").and_then(|c| c.get("id")))
    {
        data.insert("conversation_id".into(), id.clone());
    }
    if event_type == "message.created" {
        let author = data.get("author").and_then(Value::as_str).unwrap_or("");
        if !["visitor", "agent", "ai", "trigger"].contains(&author) {
            return Err(format!(
                "`data.author` {author:?} is not visitor, agent, ai or trigger"
            ));
        }
    }
    let occurred_at = match time_field(&source, "created_at")? {
        Some(t) => Some(t),
        None => time_field(&body, "created_at")?,
    };
    data.insert("raw".into(), Value::Object(body));
    Ok(Event {
        id: delivery.map(str::to_string),
        event_type,
        occurred_at,
        data: Value::Object(data),
        raw: None,
    })
}

// ---- Convosphere AI (seed 004) --------------------------------------------

fn convosphere(body: Map<String, Value>) -> Result<Vec<Event>, String> {
    let name = string_field(&body, "event")?;
    if matches!(name.as_str(), "webhook.test" | "test" | "ping") {
        // The verification event sent when an endpoint is created.
        return Ok(Vec::new());
    }
    let source = match body.get("data") {
        Some(Value::Object(d)) => d.clone(),
        Some(other) => return Err(format!("`data` must be an object, not {other}")),
        None => Map::new(),
    };
    let mut data = source.clone();
    if !data.contains_key("conversation_id")
        && let Some(id) = body.get("conversation_id")
    {
        data.insert("conversation_id".into(), id.clone());
    }
    let event_type = match name.as_str() {
        "message.created" | "message.completed" => {
            let author = if name == "message.created" {
                "visitor"
            } else {
                "ai"
            };
            data.insert("author".into(), json!(author));
            "message.created".to_string()
        }
        "conversation.started" => "conversation.created".into(),
        "conversation.ended" => "conversation.closed".into(),
        "user.feedback" => {
            // Thumbs up/down: 1 or 0.
            let rating = match source.get("rating").or_else(|| source.get("feedback")) {
                Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
                Some(Value::String(s)) if matches!(s.as_str(), "up" | "thumbs_up" | "positive") => {
                    1
                }
                Some(Value::String(s))
                    if matches!(s.as_str(), "down" | "thumbs_down" | "negative") =>
                {
                    0
                }
                Some(Value::Bool(b)) => i64::from(*b),
                Some(other) => {
                    return Err(format!("`data.rating` {other} is not up, down or a number"));
                }
                None => return Err("`data.rating` is missing".into()),
            };
            data.insert("rating".into(), json!(rating));
            "chat.rated".into()
        }
        "error.occurred" => "error.occurred".into(),
        _ => Kind::Convosphere.unknown(&name),
    };
    let occurred_at = match time_field(&body, "timestamp")? {
        Some(t) => Some(t),
        None => time_field(&body, "created_at")?,
    };
    let id = text_of(body.get("id")).or_else(|| text_of(body.get("event_id")));
    data.insert("raw".into(), Value::Object(body));
    Ok(vec![Event {
        id,
        event_type,
        occurred_at,
        data: Value::Object(data),
        raw: None,
    }])
}

// ---- Hello Client (seed 002) ------------------------------------------------

fn helloclient(body: Map<String, Value>) -> Result<Vec<Event>, String> {
    if let Some(collection) = body.get("Collection") {
        let Value::Array(bots) = collection else {
            return Err("`Collection` must be an array".into());
        };
        let mut events = Vec::new();
        for (b, bot) in bots.iter().enumerate() {
            let bot = bot
                .as_object()
                .ok_or_else(|| format!("`Collection[{b}]` must be an object"))?;
            let at = |e: String| format!("Collection[{b}].{}", e.trim_start_matches('`'));
            let serial = string_field(bot, "SerialNumber").map_err(|e| format!("`{}", at(e)))?;
            let name = bot.get("Name").and_then(Value::as_str).unwrap_or_default();
            let start = text_of(bot.get("StartTime")).unwrap_or_default();
            let conversations = match bot.get("Conversations") {
                Some(Value::Array(c)) => c.as_slice(),
                None | Some(Value::Null) => &[],
                Some(_) => return Err(format!("`Collection[{b}].Conversations` must be an array")),
            };
            for (c, conv) in conversations.iter().enumerate() {
                let path = format!("Collection[{b}].Conversations[{c}]");
                let conv = conv
                    .as_object()
                    .ok_or_else(|| format!("`{path}` must be an object"))?;
                let session = match conv.get("SessionID") {
                    Some(Value::Number(n)) if n.is_u64() => n.clone(),
                    Some(Value::String(s)) if s.parse::<u64>().is_ok() => {
                        serde_json::Number::from(s.parse::<u64>().expect("checked"))
                    }
                    Some(other) => {
                        return Err(format!("`{path}.SessionID` {other} is not an integer"));
                    }
                    None => return Err(format!("`{path}.SessionID` is missing")),
                };
                let created = time_field(conv, "CreateTime")
                    .map_err(|e| format!("`{path}.{}", e.trim_start_matches('`')))?
                    .ok_or_else(|| format!("`{path}.CreateTime` is missing"))?;
                let uri = conv.get("URI").and_then(Value::as_str).unwrap_or_default();
                let messages = match conv.get("Messages") {
                    Some(Value::Array(m)) => m.as_slice(),
                    None | Some(Value::Null) => &[],
                    Some(_) => return Err(format!("`{path}.Messages` must be an array")),
                };
                for (m, message) in messages.iter().enumerate() {
                    let mpath = format!("{path}.Messages[{m}]");
                    let message = message
                        .as_object()
                        .ok_or_else(|| format!("`{mpath}` must be an object"))?;
                    let author = match message.get("Type").and_then(Value::as_str) {
                        Some("User") => "visitor",
                        Some("AI") => "ai",
                        Some(other) => {
                            return Err(format!("`{mpath}.Type` {other:?} is not User or AI"));
                        }
                        None => return Err(format!("`{mpath}.Type` is missing")),
                    };
                    let content = message
                        .get("Content")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    events.push(Event {
                        // Stable across Hello Client's retries of the same day.
                        id: Some(format!("helloclient:{serial}:{session}:{start}:{m}")),
                        event_type: "message.created".into(),
                        occurred_at: Some(created.clone()),
                        data: json!({
                            "conversation_id": session,
                            "conversation_created_at": created,
                            "chatbot_id": serial,
                            "chatbot_name": name,
                            "uri": uri,
                            "author": author,
                            "content": content,
                            "created_at": created,
                            "sequence": m,
                            "raw": message,
                        }),
                        raw: None,
                    });
                }
            }
        }
        return Ok(events);
    }
    let kind = match body.get("Type") {
        Some(Value::String(t)) => t.clone(),
        Some(other) => return Err(format!("`Type` must be a string, not {other}")),
        None => {
            return Err(
                "neither `Collection` (a daily chat log) nor `Type` (a lead or appointment) is present".into(),
            );
        }
    };
    let event_type = match kind.as_str() {
        "Lead" => "lead.created".to_string(),
        "Appointment" => "appointment.created".to_string(),
        other => Kind::HelloClient.unknown(&format!("{other}.created")),
    };
    let serial = string_field(&body, "SerialNumber")?;
    let session = match body.get("SessionID") {
        Some(Value::Number(n)) => Value::Number(n.clone()),
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(other) => return Err(format!("`SessionID` {other} is not an integer")),
        None => return Err("`SessionID` is missing".into()),
    };
    let created = time_field(&body, "CreateTime")?;
    let field = |name: &str| json!(body.get(name).and_then(Value::as_str).unwrap_or_default());
    let mut data = json!({
        "chatbot_id": serial,
        "first_name": field("FirstName"),
        "last_name": field("LastName"),
        "email": field("Email"),
        "phone": field("PhoneNumber"),
        "content": field("Content"),
        "session_id": session,
        "uri": field("URI"),
    });
    if let Some(t) = &created {
        data["created_at"] = json!(t);
    }
    let id = format!(
        "helloclient:{serial}:{}:{}:{}",
        kind.to_ascii_lowercase(),
        text_of(body.get("SessionID")).unwrap_or_default(),
        created.clone().unwrap_or_default()
    );
    data["raw"] = Value::Object(body);
    Ok(vec![Event {
        id: Some(id),
        event_type,
        occurred_at: created,
        data,
        raw: None,
    }])
}

// ---- oHallo (seed 000) ----------------------------------------------------

fn ohallo(body: Map<String, Value>) -> Result<Event, String> {
    let name = string_field(&body, "event")?;
    let source = match body.get("data") {
        Some(Value::Object(d)) => d.clone(),
        Some(other) => return Err(format!("`data` must be an object, not {other}")),
        None => Map::new(),
    };
    let mut data = source.clone();
    let event_type = match name.as_str() {
        "channel.message_received" | "message.received" => {
            data.insert("author".into(), json!("visitor"));
            "message.created".to_string()
        }
        "message.sent" => {
            if !data.contains_key("author") {
                data.insert("author".into(), json!("agent"));
            }
            "message.created".to_string()
        }
        "conversation.updated"
        | "conversation.created"
        | "conversation.resolved"
        | "conversation.status_changed"
        | "attention_item.created"
        | "kb_entry.proposed"
        | "policy_entry.proposed" => name.clone(),
        _ => Kind::OHallo.unknown(&name),
    };
    if event_type == "message.created" && !data.contains_key("content") {
        for alias in ["body", "body_preview", "text"] {
            if let Some(v) = source.get(alias) {
                data.insert("content".into(), v.clone());
                break;
            }
        }
    }
    let occurred_at = match time_field(&body, "occurred_at")? {
        Some(t) => Some(t),
        None => time_field(&body, "timestamp")?,
    };
    let id = text_of(body.get("idempotency_key")).or_else(|| text_of(body.get("id")));
    data.insert("raw".into(), Value::Object(body));
    Ok(Event {
        id,
        event_type,
        occurred_at,
        data: Value::Object(data),
        raw: None,
    })
}

// ---- Standard Webhooks (any sender; what wasmhook sends) -------------------

/// A Standard Webhooks request: any JSON the sender posts. wasmhook's own
/// form (`type`, `timestamp`, `data` object) gives its `data`; any other
/// payload (Svix and most senders post their own) is the event's data as a
/// whole (wrapped as `{"value": …}` when it is not an object). The type is
/// the body's `type` or `eventType`, else the source's `default_type`,
/// else `standard_webhooks.message`.
fn standard(
    body: Value,
    webhook_id: Option<&str>,
    default_type: Option<&str>,
) -> Result<Event, String> {
    let fields = body.as_object();
    let field = |name: &str| fields.and_then(|b| b.get(name));
    let name = match field("type").or_else(|| field("eventType")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(other) => return Err(format!("`type` must be a string, not {other}")),
    };
    let valid = |name: &str| {
        name.split('.').count() >= 2
            && name.split('.').all(|s| {
                s.starts_with(|c: char| c.is_ascii_lowercase())
                    && s.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            })
    };
    let event_type = match name {
        Some(name) if valid(&name) => name,
        Some(name) => Kind::StandardWebhooks.unknown(&name),
        None => default_type
            .unwrap_or("standard_webhooks.message")
            .to_string(),
    };
    // wasmhook's own deliveries carry the event id in the body: an event
    // forwarded by another wasmhook keeps its id. Otherwise the delivery id.
    let id = text_of(field("id")).or_else(|| webhook_id.map(str::to_string));
    let occurred_at = match fields {
        Some(b) => time_field(b, "timestamp")?,
        None => None,
    };
    let data = match (field("type"), field("data"), &body) {
        (Some(Value::String(_)), Some(Value::Object(d)), _) => Value::Object(d.clone()),
        (_, _, Value::Object(_)) => body.clone(),
        _ => json!({ "value": body }),
    };
    Ok(Event {
        id,
        event_type,
        occurred_at,
        data,
        raw: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(kind: Kind, headers: &[(&str, &str)], body: Value) -> Result<Normalized, String> {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        normalize(kind, &headers, &body.to_string(), "2026-11-23T10:00:00Z")
    }

    #[test]
    fn a_onehash_message_keeps_sender_contact_and_account() {
        let out = run(
            Kind::OneHash,
            &[],
            json!({
                "event": "message_created", "id": "1", "content": "Hi",
                "created_at": "2020-03-03 13:05:57 UTC", "message_type": "outgoing",
                "sender": {"id": "1", "name": "Agent"}, "contact": {"id": "1", "name": "c"},
                "conversation": {"display_id": "7", "additional_attributes": {"referer": "http://x"}},
                "account": {"id": "1", "name": "OneChat"}
            }),
        )
        .unwrap();
        let e = &out.events[0];
        assert_eq!(e.event_type, "message.created");
        assert_eq!(e.id.as_deref(), Some("onehash:1:message:1"));
        assert_eq!(e.data["author"], "agent");
        assert_eq!(e.data["author_name"], "Agent");
        assert_eq!(e.data["conversation_id"], "7");
        assert_eq!(e.data["created_at"], "2020-03-03T13:05:57Z");
        assert_eq!(e.data["uri"], "http://x");
        assert_eq!(e.data["account"]["name"], "OneChat");
        // The body is kept as sent, as `raw`, in the payload the host keeps.
        let payload: Value = serde_json::from_str(&e.payload()).unwrap();
        assert_eq!(payload["raw"]["event"], "message_created");
        assert_eq!(payload["conversation_id"], "7");
    }

    #[test]
    fn missing_fields_are_named() {
        let e = run(
            Kind::OneHash,
            &[],
            json!({"event": "message_created", "id": 1, "message_type": "incoming",
                   "created_at": "2020-03-03 13:05:57 UTC", "conversation": {}}),
        )
        .unwrap_err();
        assert!(e.contains("conversation.id"), "{e}");
        let e = run(
            Kind::HelloClient,
            &[],
            json!({"Collection": [{"SerialNumber": "s",
            "Conversations": [{"SessionID": "x", "CreateTime": "2023-11-21T16:22:42Z"}]}]}),
        )
        .unwrap_err();
        assert!(
            e.contains("Collection[0].Conversations[0].SessionID"),
            "{e}"
        );
        let e = run(Kind::OnWebChat, &[], json!({"data": {}})).unwrap_err();
        assert!(e.contains("X-OWC-Event"), "{e}");
    }

    #[test]
    fn unknown_events_are_kept_under_the_kind() {
        let out = run(
            Kind::OnWebChat,
            &[
                ("x-owc-event", "Visitor.Typing-Started"),
                ("x-owc-delivery", "d1"),
            ],
            json!({"data": {}}),
        )
        .unwrap();
        assert_eq!(out.events[0].event_type, "onwebchat.visitor.typing_started");
        assert_eq!(out.events[0].id.as_deref(), Some("d1"));
        let out = run(
            Kind::OneHash,
            &[],
            json!({"event": "conversation_typing_on"}),
        )
        .unwrap();
        assert_eq!(out.events[0].event_type, "onehash.conversation_typing_on");
        let out = run(
            Kind::HelloClient,
            &[],
            json!({"Type": "Quote", "SerialNumber": "s", "SessionID": 1}),
        )
        .unwrap();
        assert_eq!(out.events[0].event_type, "helloclient.quote.created");
        let out = run(
            Kind::StandardWebhooks,
            &[],
            json!({"type": "Order-Paid", "timestamp": "2026-11-23T10:00:00Z", "data": {}}),
        )
        .unwrap();
        assert_eq!(out.events[0].event_type, "standard_webhooks.order_paid");
        assert_eq!(Kind::OHallo.unknown("9lives"), "ohallo.e9lives");
    }

    #[test]
    fn a_collection_is_one_event_per_message_and_answers_success() {
        let out = run(
            Kind::HelloClient,
            &[],
            json!({"Collection": [{"SerialNumber": "s", "Name": "Bot",
            "StartTime": "2023-11-21T00:00:00Z", "Conversations": [{"SessionID": 31302,
            "CreateTime": "2023-11-21T16:22:42.264484Z", "URI": "u",
            "Messages": [{"Type": "AI", "Content": "a"}, {"Type": "User", "Content": "b"}]}]}]}),
        )
        .unwrap();
        assert_eq!(out.reply.as_deref(), Some(r#"{"status":"success"}"#));
        assert_eq!(out.events.len(), 2);
        assert_eq!(out.events[1].data["author"], "visitor");
        assert_eq!(out.events[1].data["conversation_id"], 31302);
        assert_eq!(
            out.events[1].id.as_deref(),
            Some("helloclient:s:31302:2023-11-21T00:00:00Z:1")
        );
    }

    #[test]
    fn convosphere_test_events_route_nothing() {
        let out = run(Kind::Convosphere, &[], json!({"event": "webhook.test"})).unwrap();
        assert!(out.events.is_empty());
        let out = run(
            Kind::Convosphere,
            &[],
            json!({"event": "user.feedback", "data": {"conversation_id": "c", "rating": "down"}}),
        )
        .unwrap();
        assert_eq!(out.events[0].event_type, "chat.rated");
        assert_eq!(out.events[0].data["rating"], 0);
    }

    #[test]
    fn config_names_the_kind() {
        assert_eq!(Kind::from_config(r#"{"kind":"ohallo"}"#), Ok(Kind::OHallo));
        assert!(
            Kind::from_config(r#"{"kind":"kafka"}"#)
                .unwrap_err()
                .contains("unknown kind")
        );
        assert!(Kind::from_config("{}").unwrap_err().contains("kind"));
    }
}
