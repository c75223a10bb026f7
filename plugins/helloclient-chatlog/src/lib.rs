//! `helloclient-chatlog`: the daily chat-log collection of Hello Client
//! (seed 002, "Listening for Chat Logs Events").
//!
//! `handle` holds every `message.created` event under its chatbot; when the
//! subscription's window closes, `flush` turns the held messages into one
//! `{"Collection": [...]}` document: one entry per chatbot (in the order the
//! chatbots were first seen), its conversations in creation order, each
//! conversation's messages in the order they were sent. Visitor messages are
//! `User`; agent, ai and trigger messages are `AI`. `StartTime` / `EndTime` are
//! the window's bounds.
//!
//! Config: `{"split_per_chatbot": true}` sends one document per chatbot
//! instead of one for all (for very busy tenants near the output limit).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use wasmhook_guest::{Action, Event, Group, Plugin, PluginError, Request, Window};

/// The plugin.
pub struct HelloClientChatlog;

/// Settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// One request per chatbot instead of one collection for all.
    #[serde(default)]
    pub split_per_chatbot: bool,
}

/// `data` of `message.created` (docs/events.md).
#[derive(Debug, Deserialize)]
pub struct MessageData {
    pub conversation_id: ConversationId,
    pub conversation_created_at: String,
    pub chatbot_id: String,
    #[serde(default)]
    pub chatbot_name: String,
    #[serde(default)]
    pub uri: String,
    pub author: Author,
    #[serde(default)]
    pub content: String,
    pub created_at: String,
}

/// Who wrote a message.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Author {
    Visitor,
    Agent,
    Ai,
    Trigger,
}

/// A conversation id as platforms send it: an integer or a string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ConversationId {
    Int(u64),
    Text(String),
}

/// What is held per message: only what the collection needs, with the
/// session id already numeric and the message type already mapped.
#[derive(Debug, Serialize, Deserialize)]
pub struct HeldMessage {
    pub session_id: u64,
    pub conversation_created_at: String,
    pub chatbot_name: String,
    pub uri: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub content: String,
    pub created_at: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Collection<'a> {
    collection: Vec<Chatbot<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Chatbot<'a> {
    serial_number: &'a str,
    name: &'a str,
    start_time: &'a str,
    end_time: &'a str,
    conversations: Vec<Conversation<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Conversation<'a> {
    #[serde(rename = "SessionID")]
    session_id: u64,
    create_time: &'a str,
    #[serde(rename = "URI")]
    uri: &'a str,
    messages: Vec<Message<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Message<'a> {
    #[serde(rename = "Type")]
    kind: &'a str,
    content: &'a str,
}

fn timestamp(field: &str, value: &str) -> Result<Timestamp, PluginError> {
    value.parse().map_err(|e| {
        PluginError::BadEvent(format!("{field} {value:?} is not an RFC 3339 time: {e}"))
    })
}

impl Plugin for HelloClientChatlog {
    type Config = Config;

    fn handle(event: Event, _config: Config) -> Result<Action, PluginError> {
        if event.event_type != "message.created" {
            return Ok(Action::skip(format!(
                "helloclient-chatlog collects message.created only, not {}",
                event.event_type
            )));
        }
        let m: MessageData = event.json()?;
        let session_id = match m.conversation_id {
            ConversationId::Int(n) => n,
            ConversationId::Text(s) => s.trim().parse().map_err(|_| {
                PluginError::BadEvent(format!(
                    "conversation_id {s:?} is not numeric; Hello Client's SessionID is an integer"
                ))
            })?,
        };
        // Refuse unparseable times now, not at flush time when the day is due.
        timestamp("conversation_created_at", &m.conversation_created_at)?;
        timestamp("created_at", &m.created_at)?;
        let held = HeldMessage {
            session_id,
            conversation_created_at: m.conversation_created_at,
            chatbot_name: m.chatbot_name,
            uri: m.uri,
            kind: if m.author == Author::Visitor {
                "User"
            } else {
                "AI"
            }
            .to_string(),
            content: m.content,
            created_at: m.created_at,
        };
        Ok(Action::hold(m.chatbot_id, serde_json::to_string(&held)?))
    }

    fn flush(
        window: Window,
        groups: Vec<Group>,
        config: Config,
    ) -> Result<Vec<Request>, PluginError> {
        let mut held = Vec::with_capacity(groups.len());
        for group in &groups {
            let messages: Vec<HeldMessage> = group.items_json()?;
            if !messages.is_empty() {
                held.push((group.key.as_str(), messages));
            }
        }
        let chatbots = held
            .iter()
            .map(|(key, messages)| chatbot(key, messages, &window))
            .collect::<Result<Vec<_>, _>>()?;
        if chatbots.is_empty() {
            return Ok(Vec::new());
        }
        if config.split_per_chatbot {
            chatbots
                .into_iter()
                .map(|c| {
                    Request::json(&Collection {
                        collection: vec![c],
                    })
                })
                .collect()
        } else {
            Ok(vec![Request::json(&Collection {
                collection: chatbots,
            })?])
        }
    }
}

/// One chatbot's entry: conversations by creation time (then session id),
/// messages by send time (ties keep arrival order: the sort is stable).
fn chatbot<'a>(
    key: &'a str,
    messages: &'a [HeldMessage],
    window: &'a Window,
) -> Result<Chatbot<'a>, PluginError> {
    let mut order: Vec<(Timestamp, &HeldMessage)> = messages
        .iter()
        .map(|m| Ok((timestamp("created_at", &m.created_at)?, m)))
        .collect::<Result<_, PluginError>>()?;
    order.sort_by_key(|(at, _)| *at);

    let mut conversations: Vec<(Timestamp, Conversation<'a>)> = Vec::new();
    // BTreeMap, not HashMap: std's HashMap seeds itself from wasi:random,
    // which the sandbox does not provide (plugins are deterministic).
    let mut by_session: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, m) in order {
        let index = match by_session.get(&m.session_id) {
            Some(i) => *i,
            None => {
                let created = timestamp("conversation_created_at", &m.conversation_created_at)?;
                conversations.push((
                    created,
                    Conversation {
                        session_id: m.session_id,
                        create_time: &m.conversation_created_at,
                        uri: &m.uri,
                        messages: Vec::new(),
                    },
                ));
                by_session.insert(m.session_id, conversations.len() - 1);
                conversations.len() - 1
            }
        };
        conversations[index].1.messages.push(Message {
            kind: &m.kind,
            content: &m.content,
        });
    }
    conversations.sort_by_key(|(created, c)| (*created, c.session_id));

    // The name as of the latest message, in case the chatbot was renamed.
    let name = messages
        .iter()
        .rev()
        .map(|m| m.chatbot_name.as_str())
        .find(|n| !n.is_empty())
        .unwrap_or("");
    Ok(Chatbot {
        serial_number: key,
        name,
        start_time: &window.start,
        end_time: &window.end,
        conversations: conversations.into_iter().map(|(_, c)| c).collect(),
    })
}

wasmhook_guest::export_plugin!(HelloClientChatlog);
