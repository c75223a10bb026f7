//! OneHash Chat and Chatwoot (seed 001; OneHash is a Chatwoot fork): their
//! webhook bodies as their code builds them — `Message#webhook_data`,
//! `Conversations::EventDataPresenter#webhook_data`, `Contact#webhook_data`,
//! `ContactInbox#webhook_data`, merged with `event` (and
//! `changed_attributes`) by `app/listeners/webhook_listener.rb` — and the
//! older shape seed 001 shows (`conversation.display_id`, a top-level
//! `contact`, `"2020-03-03 13:05:57 UTC"` times), into canonical events.
//!
//! What the code sends, that the seed did not say: integer ids;
//! `conversation.id` is the display id; message times in ISO 8601 with
//! milliseconds, conversation times in Unix seconds (`updated_at` with a
//! fraction); `sender` is the contact (no `type` key) or the agent
//! (`type: "user"`, `"agent_bot"`, `"captain_assistant"`); no top-level
//! `contact`; `attachments` only when there are some;
//! `changed_attributes` a list of one-key objects
//! `{attr: {previous_value, current_value}}` (null on
//! `conversation_status_changed`). There is no `conversation_resolved`
//! event in Chatwoot (a resolve is a `conversation_status_changed` and a
//! `conversation_updated`); the name is still mapped for senders that use
//! it.

use serde_json::{Map, Value, json};

use crate::map::{Event, Kind, object, required, string_field, text_of, time_field};

/// A Chatwoot request as its canonical event. `delivery` is
/// `X-Chatwoot-Delivery` (Chatwoot ≥ 4.11.2): stable across its retries,
/// so it is the event id when present.
pub fn event(body: Map<String, Value>, delivery: Option<&str>) -> Result<Event, String> {
    let name = string_field(&body, "event")?;
    let mut event = match name.as_str() {
        "message_created" => message(&body, "message.created")?,
        "message_updated" => message(&body, "message.updated")?,
        "conversation_created" => conversation_created(&body)?,
        "conversation_updated" => conversation_updated(&body)?,
        "conversation_status_changed" => status_changed(&body)?,
        "conversation_resolved" => resolved(&body)?,
        "contact_created" => contact(&body, "contact.created")?,
        "contact_updated" => contact(&body, "contact.updated")?,
        "webwidget_triggered" => widget(&body)?,
        _ => {
            // Other events (typing, inboxes, a newer version's) keep their
            // body, under `onehash.<name>`.
            let mut data = Map::new();
            if let Some(id) = body
                .get("conversation")
                .and_then(Value::as_object)
                .and_then(conversation_id)
            {
                data.insert("conversation_id".into(), id);
            }
            Event {
                id: None,
                event_type: Kind::OneHash.unknown(&name),
                occurred_at: time_field(&body, "created_at")?,
                data: Value::Object(data),
                raw: None,
            }
        }
    };
    if let Some(delivery) = delivery {
        event.id = Some(format!("chatwoot:{delivery}"));
    }
    Ok(event)
}

/// `conversation.id` (the display id Chatwoot shows), or the seed's
/// `display_id`.
fn conversation_id(conversation: &Map<String, Value>) -> Option<Value> {
    conversation
        .get("id")
        .or_else(|| conversation.get("display_id"))
        .filter(|v| !v.is_null())
        .cloned()
}

/// `account {id, name}` as the canonical `chatbot_id`, `chatbot_name`.
fn account(body: &Map<String, Value>, data: &mut Map<String, Value>) {
    let account = body.get("account").and_then(Value::as_object);
    let field = |name: &str| account.and_then(|a| text_of(a.get(name)));
    data.insert("chatbot_id".into(), json!(field("id").unwrap_or_default()));
    data.insert(
        "chatbot_name".into(),
        json!(field("name").unwrap_or_default()),
    );
}

/// `changed_attributes` (`[{attr: {previous_value, current_value}}]`) as
/// `{attr: {from, to}}`.
fn changes(body: &Map<String, Value>) -> Map<String, Value> {
    let mut changes = Map::new();
    for item in body
        .get("changed_attributes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for (attr, change) in item.as_object().into_iter().flatten() {
            changes.insert(
                attr.clone(),
                json!({
                    "from": change.get("previous_value").cloned().unwrap_or(Value::Null),
                    "to": change.get("current_value").cloned().unwrap_or(Value::Null),
                }),
            );
        }
    }
    changes
}

/// The person a conversation is with (`meta.sender`) as `visitor`.
fn visitor(person: Option<&Value>) -> Value {
    let field = |name: &str| person.and_then(|p| p.get(name)).cloned();
    json!({
        "id": field("id").unwrap_or(Value::Null),
        "name": field("name").unwrap_or(Value::Null),
        "email": field("email").unwrap_or(Value::Null),
        "phone": field("phone_number").unwrap_or(Value::Null),
    })
}

fn message(body: &Map<String, Value>, event_type: &str) -> Result<Event, String> {
    let id = body
        .get("id")
        .filter(|v| !v.is_null())
        .ok_or("`id` (the message id) is missing")?
        .clone();
    let conversation = object(body, "conversation")?;
    let conversation_id = conversation_id(conversation)
        .ok_or("`conversation.id` (the conversation's display id) is missing")?;
    let sender = body.get("sender").and_then(Value::as_object);
    let sender_type = sender
        .and_then(|s| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("contact");
    let author = match body.get("message_type") {
        Some(Value::String(t)) => match t.as_str() {
            "incoming" | "0" => "visitor",
            "outgoing" | "1" => outgoing_author(sender_type),
            "activity" | "2" | "template" | "3" => "trigger",
            other => {
                return Err(format!(
                    "`message_type` {other:?} is not incoming, outgoing, activity or template"
                ));
            }
        },
        Some(Value::Number(n)) => match n.as_i64() {
            Some(0) => "visitor",
            Some(1) => outgoing_author(sender_type),
            _ => "trigger",
        },
        _ => return Err("`message_type` is missing".into()),
    };
    let created_at = time_field(body, "created_at")?.ok_or("`created_at` is missing")?;
    let attributes = conversation
        .get("additional_attributes")
        .and_then(Value::as_object);
    let mut data = Map::new();
    data.insert("conversation_id".into(), conversation_id);
    data.insert(
        "conversation_created_at".into(),
        json!(time_field(conversation, "created_at")?.unwrap_or_else(|| created_at.clone())),
    );
    account(body, &mut data);
    data.insert(
        "uri".into(),
        json!(
            attributes
                .and_then(|a| text_of(a.get("referer")))
                .unwrap_or_default()
        ),
    );
    data.insert("author".into(), json!(author));
    data.insert(
        "content".into(),
        json!(
            body.get("content")
                .and_then(Value::as_str)
                .unwrap_or_default()
        ),
    );
    data.insert("created_at".into(), json!(created_at));
    data.insert("message_id".into(), id.clone());
    // The author's name: the sender (contact or agent); the seed's shape
    // put a visitor's in a top-level `contact` (and an agent in `sender`).
    let author_name = if author == "visitor" {
        body.get("contact")
            .and_then(|c| c.get("name"))
            .or_else(|| sender.and_then(|s| s.get("name")))
    } else {
        sender.and_then(|s| s.get("name"))
    }
    .and_then(Value::as_str)
    .filter(|n| !n.is_empty());
    if let Some(name) = author_name {
        data.insert("author_name".into(), json!(name));
    }
    for kept in [
        "attachments",
        "private",
        "inbox",
        "sender",
        "contact",
        "account",
        "content_type",
        "source_id",
    ] {
        if let Some(v) = body.get(kept) {
            data.insert(kept.into(), v.clone());
        }
    }
    let account_id = body
        .get("account")
        .and_then(|a| text_of(a.get("id")))
        .unwrap_or_default();
    let (event_id, occurred_at) = if event_type == "message.created" {
        // A message is created once: its id (per account) deduplicates a
        // sender's retries that carry no delivery id (OneHash's fork).
        (
            Some(format!(
                "onehash:{account_id}:message:{}",
                text_of(Some(&id)).unwrap_or_default()
            )),
            Some(created_at),
        )
    } else {
        // An update's time is the message's `updated_at`, which only the
        // conversation's copy of its last message carries.
        let updated_at = conversation
            .get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .find(|m| m.get("id") == Some(&id))
            .map(|m| time_field(m, "updated_at"))
            .transpose()?
            .flatten();
        (None, updated_at)
    };
    Ok(Event {
        id: event_id,
        event_type: event_type.into(),
        occurred_at,
        data: Value::Object(data),
        raw: None,
    })
}

/// An outgoing message's author by its sender: a bot or an AI assistant is
/// `ai`, a person `agent`.
fn outgoing_author(sender_type: &str) -> &'static str {
    match sender_type {
        "agent_bot" | "captain_assistant" => "ai",
        _ => "agent",
    }
}

/// The fields every conversation event carries: the id, the account, the
/// status, the inbox, the channel, the page, the person.
fn conversation_fields(body: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let id = conversation_id(body).ok_or("`id` (the conversation's display id) is missing")?;
    let mut data = Map::new();
    data.insert("conversation_id".into(), id);
    account(body, &mut data);
    if data["chatbot_id"] == "" {
        // Before Chatwoot 4.14.2 (OneHash's fork) a conversation carries no
        // account; its messages name the account id.
        if let Some(id) = body
            .get("messages")
            .and_then(|m| m.get(0))
            .and_then(|m| text_of(m.get("account_id")))
        {
            data.insert("chatbot_id".into(), json!(id));
        }
    }
    for (to, from) in [
        ("status", "status"),
        ("channel", "channel"),
        ("inbox_id", "inbox_id"),
        ("labels", "labels"),
    ] {
        if let Some(v) = body.get(from) {
            data.insert(to.into(), v.clone());
        }
    }
    let meta = body.get("meta").and_then(Value::as_object);
    data.insert(
        "visitor".into(),
        visitor(meta.and_then(|m| m.get("sender"))),
    );
    if let Some(assignee) = meta
        .and_then(|m| m.get("assignee"))
        .filter(|a| !a.is_null())
    {
        data.insert("agent".into(), assignee.clone());
    }
    if let Some(referer) = body
        .get("additional_attributes")
        .and_then(|a| text_of(a.get("referer")))
    {
        data.insert("uri".into(), json!(referer));
    }
    Ok(data)
}

fn conversation_created(body: &Map<String, Value>) -> Result<Event, String> {
    let mut data = conversation_fields(body)?;
    let created_at = time_field(body, "created_at")?;
    data.insert("created_at".into(), json!(created_at));
    Ok(Event {
        id: None,
        event_type: "conversation.created".into(),
        occurred_at: created_at,
        data: Value::Object(data),
        raw: None,
    })
}

fn conversation_updated(body: &Map<String, Value>) -> Result<Event, String> {
    let mut data = conversation_fields(body)?;
    let changes = changes(body);
    if let Some(status) = changes.get("status") {
        data.insert("from".into(), status["from"].clone());
        data.insert("to".into(), status["to"].clone());
    }
    data.insert("changes".into(), Value::Object(changes));
    let updated_at = time_field(body, "updated_at")?;
    data.insert("updated_at".into(), json!(updated_at));
    Ok(Event {
        id: None,
        event_type: "conversation.updated".into(),
        occurred_at: updated_at,
        data: Value::Object(data),
        raw: None,
    })
}

/// Chatwoot sends `changed_attributes: null` here: `from` is known only
/// when a sender includes it (the `conversation_updated` of the same save
/// carries it).
fn status_changed(body: &Map<String, Value>) -> Result<Event, String> {
    let mut data = conversation_fields(body)?;
    let changes = changes(body);
    let to = body.get("status").cloned().unwrap_or(Value::Null);
    let from = changes
        .get("status")
        .map(|c| c["from"].clone())
        .unwrap_or(Value::Null);
    data.insert("from".into(), from);
    data.insert("to".into(), to);
    let changed_at = time_field(body, "updated_at")?;
    data.insert("changed_at".into(), json!(changed_at));
    Ok(Event {
        id: None,
        event_type: "conversation.status_changed".into(),
        occurred_at: changed_at,
        data: Value::Object(data),
        raw: None,
    })
}

fn resolved(body: &Map<String, Value>) -> Result<Event, String> {
    // The seed's name; the conversation may be nested or at the top.
    let conversation = match body.get("conversation").and_then(Value::as_object) {
        Some(c) => c,
        None => body,
    };
    let mut data = conversation_fields(conversation)?;
    if !conversation.contains_key("account") {
        // The seed's shape: the account beside the conversation.
        account(body, &mut data);
    }
    let resolved_at = time_field(conversation, "updated_at")?.or(time_field(body, "created_at")?);
    data.insert("resolved_at".into(), json!(resolved_at));
    Ok(Event {
        id: None,
        event_type: "conversation.resolved".into(),
        occurred_at: resolved_at,
        data: Value::Object(data),
        raw: None,
    })
}

fn contact(body: &Map<String, Value>, event_type: &str) -> Result<Event, String> {
    let id = required(body, "id")
        .map_err(|_| "`id` (the contact id) is missing".to_string())?
        .clone();
    let mut data = Map::new();
    data.insert("contact_id".into(), id);
    account(body, &mut data);
    for (to, from) in [
        ("name", "name"),
        ("email", "email"),
        ("phone", "phone_number"),
        ("identifier", "identifier"),
        ("custom_attributes", "custom_attributes"),
    ] {
        data.insert(to.into(), body.get(from).cloned().unwrap_or(Value::Null));
    }
    let mut occurred_at = None;
    if event_type == "contact.updated" {
        let changes = changes(body);
        occurred_at = changes
            .get("updated_at")
            .and_then(|c| crate::time::normalize(&c["to"]));
        data.insert("changes".into(), Value::Object(changes));
        data.insert("updated_at".into(), json!(occurred_at));
    }
    Ok(Event {
        id: None,
        event_type: event_type.into(),
        occurred_at,
        data: Value::Object(data),
        raw: None,
    })
}

/// A visitor opened the web widget (`ContactInbox#webhook_data` with the
/// widget's `event_info`).
fn widget(body: &Map<String, Value>) -> Result<Event, String> {
    let mut data = Map::new();
    data.insert("visitor".into(), visitor(body.get("contact")));
    account(body, &mut data);
    let info = body.get("event_info").and_then(Value::as_object);
    data.insert(
        "uri".into(),
        json!(
            info.and_then(|i| text_of(i.get("referer")))
                .unwrap_or_default()
        ),
    );
    data.insert(
        "conversation_id".into(),
        body.get("current_conversation")
            .and_then(Value::as_object)
            .and_then(conversation_id)
            .unwrap_or(Value::Null),
    );
    for kept in ["inbox", "source_id", "event_info"] {
        if let Some(v) = body.get(kept) {
            data.insert(kept.into(), v.clone());
        }
    }
    Ok(Event {
        id: None,
        event_type: "visitor.widget_opened".into(),
        occurred_at: None,
        data: Value::Object(data),
        raw: None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::map::{Kind, normalize};

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/../../tests/fixtures/chatwoot/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(path).unwrap()
    }

    fn one(body: &str, headers: &[(&str, &str)]) -> (crate::map::Event, Value) {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let mut out = normalize(Kind::OneHash, &headers, body, "2026-11-23T10:00:00Z").unwrap();
        let event = out.events.remove(0);
        let payload = serde_json::from_str(&event.payload()).unwrap();
        (event, payload)
    }

    /// What Chatwoot's code sends for a contact's message: integer ids kept
    /// as integers, the conversation's display id, the contact's name from
    /// `sender` (there is no top-level `contact`), the message's own time,
    /// the body kept byte for byte.
    #[test]
    fn a_contacts_message_as_chatwoot_sends_it() {
        let body = fixture("message_created_incoming");
        let (e, data) = one(&body, &[]);
        assert_eq!(e.event_type, "message.created");
        assert_eq!(e.id.as_deref(), Some("onehash:1:message:5001"));
        assert_eq!(e.occurred_at.as_deref(), Some("2025-12-04T10:01:12.533Z"));
        assert_eq!(data["conversation_id"], json!(17));
        assert_eq!(data["message_id"], json!(5001));
        assert_eq!(data["author"], "visitor");
        assert_eq!(data["author_name"], "Jane Doe");
        assert_eq!(data["conversation_created_at"], "2025-12-04T10:01:12Z");
        assert_eq!(data["uri"], "https://www.acme.example/checkout");
        assert_eq!(data["attachments"][0]["file_type"], "image");
        assert_eq!(data["private"], false);
        let payload = e.payload();
        assert!(
            payload.ends_with(&format!("\"raw\":{}}}", body.trim())),
            "the raw body is spliced as sent"
        );
    }

    /// The delivery id Chatwoot keeps across its retries is the event id;
    /// an agent's message is `agent`, a bot's `ai`.
    #[test]
    fn delivery_ids_and_authors() {
        let (e, _) = one(
            &fixture("message_created_incoming"),
            &[("X-Chatwoot-Delivery", "0b5a7f9e")],
        );
        assert_eq!(e.id.as_deref(), Some("chatwoot:0b5a7f9e"));
        let (_, data) = one(&fixture("message_created_outgoing"), &[]);
        assert_eq!(
            (data["author"].as_str(), data["author_name"].as_str()),
            (Some("agent"), Some("Alex Rivera"))
        );
        let mut bot: Value = serde_json::from_str(&fixture("message_created_outgoing")).unwrap();
        bot["sender"] = json!({"id": 3, "name": "Helper", "type": "agent_bot"});
        let (_, data) = one(&bot.to_string(), &[]);
        assert_eq!(data["author"], "ai");
    }

    /// A resolve: `conversation_updated` carries the status change (`from`,
    /// `to`, `changes`); `conversation_status_changed` has
    /// `changed_attributes: null`, so only `to` is known. Times are the
    /// event's (`updated_at`), not the conversation's creation.
    #[test]
    fn status_changes_and_their_times() {
        let (e, data) = one(&fixture("conversation_updated_on_resolve"), &[]);
        assert_eq!(e.event_type, "conversation.updated");
        assert_eq!(
            (data["from"].as_str(), data["to"].as_str()),
            (Some("open"), Some("resolved"))
        );
        assert_eq!(data["changes"]["status"]["to"], "resolved");
        assert_eq!(
            e.occurred_at.as_deref(),
            Some("2025-12-04T10:10:00.512904Z")
        );
        let (e, data) = one(&fixture("conversation_status_changed"), &[]);
        assert_eq!(e.event_type, "conversation.status_changed");
        assert_eq!(data["to"], "resolved");
        assert_eq!(data["from"], Value::Null);
        assert_eq!(data["conversation_id"], json!(17));
        assert_eq!(data["visitor"]["name"], "Jane Doe");
        assert_eq!(e.occurred_at, data["changed_at"].as_str().map(String::from));
    }

    #[test]
    fn contacts_and_the_widget() {
        let (e, data) = one(&fixture("contact_updated"), &[]);
        assert_eq!(e.event_type, "contact.updated");
        assert_eq!(data["contact_id"], json!(42));
        assert_eq!(data["changes"]["name"]["from"], "quiet-meadow-482");
        let (e, data) = one(&fixture("webwidget_triggered"), &[]);
        assert_eq!(e.event_type, "visitor.widget_opened");
        assert_eq!(data["uri"], "https://www.acme.example/checkout");
        assert_eq!(data["visitor"]["id"], json!(42));
    }
}
