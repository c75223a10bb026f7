//! oHallo's REST API items (seed 000: "poll the REST API with
//! `updatedSince`"), as a `poll` source fetches them, one item per call:
//! a conversation (`/api/conversations`), a pending KB entry
//! (`/api/workspaces/{id}/kb-entries/pending`), an attention item. The
//! seed names `id`, `status`, `question`, `confidence` and the
//! `updatedSince` cursor; the other field names follow the API's camelCase
//! (`updatedAt`, `createdAt`, `conversationId`, …), and each is optional:
//! what is missing is null, and the item is kept whole under `raw`.

use serde_json::{Map, Value, json};

use crate::map::{Event, Kind, text_of, time_field};

/// The first of `names` the item has (camelCase or snake_case).
fn field(item: &Map<String, Value>, names: &[&str]) -> Value {
    names
        .iter()
        .find_map(|n| item.get(*n).filter(|v| !v.is_null()))
        .cloned()
        .unwrap_or(Value::Null)
}

fn time(item: &Map<String, Value>, names: &[&str]) -> Result<Option<String>, String> {
    for n in names {
        if let Some(t) = time_field(item, n)? {
            return Ok(Some(t));
        }
    }
    Ok(None)
}

/// One item as its canonical event. The event id is the poll source's
/// (the item's id and updated time), not the adapter's.
pub fn item(kind: Kind, item: Map<String, Value>) -> Result<Event, String> {
    let id = text_of(item.get("id")).ok_or("`id` (the item's id) is missing")?;
    let updated = time(&item, &["updatedAt", "updated_at"])?;
    let created = time(&item, &["createdAt", "created_at"])?;
    let mut data = Map::new();
    let event_type = match kind {
        Kind::OHalloConversation => {
            data.insert("conversation_id".into(), json!(id));
            data.insert("status".into(), field(&item, &["status"]));
            data.insert("channel".into(), field(&item, &["channel", "channelType"]));
            data.insert("summary".into(), field(&item, &["summary"]));
            data.insert(
                "message_count".into(),
                field(&item, &["messageCount", "message_count"]),
            );
            data.insert("visitor".into(), field(&item, &["contact"]));
            data.insert("created_at".into(), json!(created));
            data.insert("updated_at".into(), json!(updated));
            // A conversation seen for the first time as it was created.
            if created.is_some() && created == updated {
                "conversation.created"
            } else {
                "conversation.updated"
            }
        }
        Kind::OHalloKbEntry => {
            data.insert("entry_id".into(), json!(id));
            data.insert("title".into(), field(&item, &["question", "title"]));
            data.insert("body".into(), field(&item, &["answer", "body"]));
            data.insert("confidence".into(), field(&item, &["confidence"]));
            data.insert(
                "source_conversation_id".into(),
                field(&item, &["sourceConversationId", "conversationId"]),
            );
            data.insert(
                "proposed_at".into(),
                json!(created.clone().or(updated.clone())),
            );
            "kb_entry.proposed"
        }
        Kind::OHalloAttentionItem => {
            data.insert("item_id".into(), json!(id));
            data.insert(
                "conversation_id".into(),
                field(&item, &["conversationId", "conversation_id"]),
            );
            data.insert("reason".into(), field(&item, &["reason", "type"]));
            data.insert("priority".into(), field(&item, &["priority"]));
            data.insert(
                "created_at".into(),
                json!(created.clone().or(updated.clone())),
            );
            "attention_item.created"
        }
        _ => return Err(format!("{kind:?} is not an oHallo API item")),
    };
    data.insert("raw".into(), Value::Object(item));
    Ok(Event {
        id: None,
        event_type: event_type.into(),
        occurred_at: updated.or(created),
        data: Value::Object(data),
        raw: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn items_become_their_events() {
        let e = item(
            Kind::OHalloConversation,
            obj(json!({"id": "c1", "status": "open", "createdAt": "2026-12-01T10:00:00Z", "updatedAt": "2026-12-01T10:00:00Z"})),
        )
        .unwrap();
        assert_eq!(e.event_type, "conversation.created");
        let e = item(
            Kind::OHalloConversation,
            obj(json!({"id": "c1", "status": "resolved", "createdAt": "2026-12-01T10:00:00Z", "updatedAt": "2026-12-01T11:00:00Z"})),
        )
        .unwrap();
        assert_eq!(e.event_type, "conversation.updated");
        assert_eq!(e.data["status"], "resolved");
        assert_eq!(e.occurred_at.as_deref(), Some("2026-12-01T11:00:00Z"));
        let e = item(
            Kind::OHalloKbEntry,
            obj(json!({"id": 9, "question": "Q?", "answer": "A", "confidence": 0.93})),
        )
        .unwrap();
        assert_eq!(
            (e.event_type.as_str(), &e.data["title"]),
            ("kb_entry.proposed", &json!("Q?"))
        );
        let e = item(
            Kind::OHalloAttentionItem,
            obj(json!({"id": "a", "conversationId": "c1", "priority": "high"})),
        )
        .unwrap();
        assert_eq!(e.data["conversation_id"], "c1");
        assert!(
            item(Kind::OHalloKbEntry, obj(json!({"question": "Q?"})))
                .unwrap_err()
                .contains("`id`")
        );
    }
}
