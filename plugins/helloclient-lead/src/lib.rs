//! `helloclient-lead`: `lead.created` / `appointment.created` → the lead record
//! that Hello Client pushes to a CRM (seed 002, "Listening for Leads and
//! Appointments Events"), field for field and in the same order.
//!
//! Every other event type is skipped with a reason, so a subscription to `*`
//! with this plugin delivers leads and appointments only.

use serde::{Deserialize, Serialize};
use wasmhook_guest::{Action, Event, Plugin, PluginError, Request};

/// The plugin (no state: every call gets a fresh instance).
pub struct HelloClientLead;

/// No settings yet; unknown keys are refused so a typo is caught at subscribe time.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// `data` of `lead.created` and `appointment.created` (docs/events.md).
#[derive(Debug, Deserialize)]
pub struct LeadData {
    pub chatbot_id: String,
    #[serde(default)]
    pub first_name: String,
    #[serde(default)]
    pub last_name: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub phone: String,
    #[serde(default)]
    pub content: String,
    #[serde(deserialize_with = "session_id")]
    pub session_id: u64,
    #[serde(default)]
    pub uri: String,
    /// Falls back to the event's `occurred_at`.
    #[serde(default)]
    pub created_at: Option<String>,
}

/// Hello Client's CRM record; field order is the seed's.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LeadRecord<'a> {
    pub serial_number: &'a str,
    #[serde(rename = "Type")]
    pub kind: &'static str,
    pub first_name: &'a str,
    pub last_name: &'a str,
    pub email: &'a str,
    pub phone_number: &'a str,
    pub create_time: &'a str,
    pub content: &'a str,
    #[serde(rename = "SessionID")]
    pub session_id: u64,
    #[serde(rename = "URI")]
    pub uri: &'a str,
}

/// Accepts the session id as a JSON integer or a string of digits (some
/// platforms send ids as strings); Hello Client wants an integer.
fn session_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Int(u64),
        Text(String),
    }
    match Id::deserialize(d)? {
        Id::Int(n) => Ok(n),
        Id::Text(s) => s.trim().parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "session_id {s:?} is not an integer (Hello Client's SessionID is numeric)"
            ))
        }),
    }
}

impl Plugin for HelloClientLead {
    type Config = Config;

    fn handle(event: Event, _config: Config) -> Result<Action, PluginError> {
        let kind = match event.event_type.as_str() {
            "lead.created" => "Lead",
            "appointment.created" => "Appointment",
            other => {
                return Ok(Action::skip(format!(
                    "helloclient-lead sends leads and appointments only, not {other}"
                )));
            }
        };
        let lead: LeadData = event.json()?;
        let record = LeadRecord {
            serial_number: &lead.chatbot_id,
            kind,
            first_name: &lead.first_name,
            last_name: &lead.last_name,
            email: &lead.email,
            phone_number: &lead.phone,
            create_time: lead.created_at.as_deref().unwrap_or(&event.occurred_at),
            content: &lead.content,
            session_id: lead.session_id,
            uri: &lead.uri,
        };
        Ok(Action::deliver(Request::json(&record)?))
    }
}

wasmhook_guest::export_plugin!(HelloClientLead);
