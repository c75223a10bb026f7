//! The canonical event envelope, `{"id", "type", "occurred_at", "source",
//! "data"}`, and its validation. Everything that enters wasmhook (the API,
//! the CLI, later source adapters) is turned into this shape first, so the
//! stages after it see only valid events. See `docs/events.md`.

use std::fmt;

use jiff::Timestamp;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::runtime::PluginEvent;

/// An event as a client sends it; every field but `type` and `data` optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub event_type: String,
    pub occurred_at: Option<String>,
    pub source: Option<String>,
    pub data: Box<RawValue>,
    /// The application (id or uid) the event is for: only its endpoints
    /// get it. None: the tenant-wide endpoints.
    #[serde(default)]
    pub app: Option<String>,
}

/// A validated event with every field filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// RFC 3339 in UTC.
    pub occurred_at: String,
    pub source: String,
    pub data: Data,
    /// The application it was sent to (its id): it routes only to that
    /// application's subscriptions; None, only to tenant-wide ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Svix's channels (a Svix message's): an endpoint with channels gets
    /// only events with one of its channels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
}

/// An event's `data`: a JSON object, kept as the text the sender sent.
///
/// Nothing on the way to delivery needs its structure: routing reads the
/// type, the body sent without a plugin is the envelope around this text,
/// a plugin gets it as text. Kept parsed (a `Value`), every event cost a
/// tree of allocations at ingest and a serialization for its record, for
/// the body and again for each body made from the record (issue 13). As
/// text it is copied, never rewritten: a retry made from the stored event
/// sends the first attempt's bytes because they are the same bytes.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Data(Box<RawValue>);

impl Data {
    /// The JSON text of a value made here (compact).
    pub fn from_value(value: &Value) -> Data {
        Data(serde_json::value::to_raw_value(value).expect("a Value is always JSON"))
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for Data {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks JSON text as strictly as parsing it into a `Value` would (every
/// string's escapes decoded, so a lone surrogate is refused; every number
/// read, so one out of range is refused) without building anything. A
/// `RawValue` alone only skims strings and numbers.
fn check_json(text: &str) -> Result<(), serde_json::Error> {
    struct Check;
    impl<'de> DeserializeSeed<'de> for Check {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(Check)
        }
    }
    impl<'de> Visitor<'de> for Check {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Check)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while map.next_key_seed(Check)?.is_some() {
                map.next_value_seed(Check)?;
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    Check.deserialize(&mut de)?;
    de.end()
}

/// What is wrong with an event; the message names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error(
        "`type` {0:?} is not a dotted lowercase event type such as \"message.created\" (letters, digits, `_`, at least one `.`)"
    )]
    BadType(String),
    #[error("`id` must be 1 to 200 printable characters")]
    BadId,
    #[error("`occurred_at` {0:?} is not an RFC 3339 time such as \"2026-11-21T10:00:00Z\"")]
    BadTime(String),
    #[error("`occurred_at` {0:?} is out of range: it must be between 1970-01-01 and 2999-12-31")]
    TimeOutOfRange(String),
    #[error("`source` must be 1 to 100 printable characters")]
    BadSource,
    #[error("`data` must be a JSON object")]
    DataNotObject,
    #[error("`data` is not valid JSON: {0}")]
    BadData(String),
    #[error("`app` must be 1 to 200 printable characters (an application's id or uid)")]
    BadApp,
}

/// Whether `t` is a dotted lowercase type: `segment(.segment)+`, each segment
/// made of `a-z`, `0-9`, `_`, `-`, the first starting with a letter and the
/// others with a letter or a digit.
pub fn is_valid_type(t: &str) -> bool {
    let mut segments = 0;
    for segment in t.split('.') {
        let mut chars = segment.chars();
        // The first segment starts with a letter; later ones may start
        // with a digit too (Svix's `event.<hex>`).
        match chars.next() {
            Some(c) if c.is_ascii_lowercase() => {}
            Some(c) if segments > 0 && c.is_ascii_digit() => {}
            _ => return false,
        }
        if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-') {
            return false;
        }
        segments += 1;
    }
    segments >= 2 && t.len() <= 100
}

/// The `occurred_at` values accepted: 1970-01-01 to the end of 2999.
fn occurred_at_range() -> (Timestamp, Timestamp) {
    (
        Timestamp::UNIX_EPOCH,
        "2999-12-31T23:59:59.999999999Z"
            .parse()
            .expect("a valid constant"),
    )
}

fn printable(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.chars().all(|c| !c.is_control())
}

impl EventInput {
    /// Validates and fills in defaults: a generated id, `occurred_at` = `now`,
    /// the given default source.
    pub fn validate(
        self,
        now: Timestamp,
        default_source: &str,
        new_id: impl FnOnce() -> String,
    ) -> Result<Envelope, EventError> {
        if !is_valid_type(&self.event_type) {
            return Err(EventError::BadType(self.event_type));
        }
        let id = match self.id {
            Some(id) if printable(&id, 200) => id,
            Some(_) => return Err(EventError::BadId),
            None => new_id(),
        };
        let occurred_at = match self.occurred_at {
            Some(t) => {
                let parsed = t
                    .parse::<Timestamp>()
                    .map_err(|_| EventError::BadTime(t.clone()))?;
                // Far enough from jiff's edges (year 9999) that every
                // schedule computed from it stays representable.
                let (min, max) = occurred_at_range();
                if parsed < min || parsed > max {
                    return Err(EventError::TimeOutOfRange(t));
                }
                parsed
            }
            None => now,
        };
        let source = match self.source {
            Some(s) if printable(&s, 100) => s,
            Some(_) => return Err(EventError::BadSource),
            None => default_source.to_string(),
        };
        // A RawValue starts at its value's first byte.
        if !self.data.get().starts_with('{') {
            return Err(EventError::DataNotObject);
        }
        check_json(self.data.get()).map_err(|e| EventError::BadData(e.to_string()))?;
        if self.app.as_ref().is_some_and(|a| !printable(a, 200)) {
            return Err(EventError::BadApp);
        }
        Ok(Envelope {
            id,
            event_type: self.event_type,
            occurred_at: occurred_at.to_string(),
            source,
            data: Data(self.data),
            app: self.app,
            channels: Vec::new(),
        })
    }
}

impl Envelope {
    /// The body sent when a subscription has no plugin: the Standard
    /// Webhooks payload form (`type`, `timestamp`, `data`) plus the event id.
    /// A pure function of the event, and the same after the event's record
    /// is read back (`data` is the text as sent, copied), so a retry made
    /// from the stored event sends the first attempt's bytes.
    pub fn webhook_body(&self) -> String {
        #[derive(Serialize)]
        struct Body<'a> {
            id: &'a str,
            #[serde(rename = "type")]
            event_type: &'a str,
            timestamp: &'a str,
            data: &'a Data,
        }
        serde_json::to_string(&Body {
            id: &self.id,
            event_type: &self.event_type,
            timestamp: &self.occurred_at,
            data: &self.data,
        })
        .expect("serializable")
    }

    /// The event as a plugin sees it (`data` as its JSON text).
    pub fn to_plugin_event(&self) -> PluginEvent {
        PluginEvent {
            id: self.id.clone(),
            event_type: self.event_type.clone(),
            source: self.source.clone(),
            occurred_at: self.occurred_at.clone(),
            payload: self.data.as_str().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: &str) -> EventInput {
        serde_json::from_str(json).unwrap()
    }

    fn now() -> Timestamp {
        "2026-11-21T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn event_types() {
        for ok in [
            "message.created",
            "chat.rated",
            "a.b.c",
            "kb_entry.proposed",
            "x1.y2",
            "event.580cf5cc4a944386",
            "user.sign-up",
        ] {
            assert!(is_valid_type(ok), "{ok}");
        }
        for bad in [
            "message",
            "Message.created",
            "message..created",
            ".a",
            "a.",
            "1a.b",
            "-a.b",
            "a.-b",
            "",
        ] {
            assert!(!is_valid_type(bad), "{bad}");
        }
    }

    #[test]
    fn defaults_are_filled_in() {
        let e = input(r#"{"type":"lead.created","data":{"a":1}}"#)
            .validate(now(), "api", || "evt_1".into())
            .unwrap();
        assert_eq!(e.id, "evt_1");
        assert_eq!(e.occurred_at, "2026-11-21T10:00:00Z");
        assert_eq!(e.source, "api");
    }

    #[test]
    fn occurred_at_is_normalised_to_utc() {
        let e =
            input(r#"{"type":"lead.created","occurred_at":"2026-11-21T12:00:00+02:00","data":{}}"#)
                .validate(now(), "api", || "x".into())
                .unwrap();
        assert_eq!(e.occurred_at, "2026-11-21T10:00:00Z");
    }

    #[test]
    fn bad_fields_are_named() {
        let v = |j: &str| input(j).validate(now(), "api", || "x".into()).unwrap_err();
        assert_eq!(
            v(r#"{"type":"Lead","data":{}}"#),
            EventError::BadType("Lead".into())
        );
        assert_eq!(v(r#"{"type":"a.b","data":[1]}"#), EventError::DataNotObject);
        assert_eq!(v(r#"{"type":"a.b","id":"","data":{}}"#), EventError::BadId);
        assert!(matches!(
            v(r#"{"type":"a.b","occurred_at":"yesterday","data":{}}"#),
            EventError::BadTime(_)
        ));
        assert!(
            serde_json::from_str::<EventInput>(r#"{"type":"a.b","data":{},"extra":1}"#).is_err()
        );
    }

    #[test]
    fn data_is_kept_as_sent_and_sent_as_kept() {
        let data = r#"{ "z": 1, "a": [0.30000000000000004, 1e2, "\u00e9\ud83d\ude00"],
            "n": null }"#;
        let e = input(&format!(r#"{{"type":"a.b","id":"e1","data":{data}}}"#))
            .validate(now(), "api", || "x".into())
            .unwrap();
        assert_eq!(e.data.as_str(), data);
        let body = e.webhook_body();
        assert_eq!(
            body,
            format!(
                r#"{{"id":"e1","type":"a.b","timestamp":"2026-11-21T10:00:00Z","data":{data}}}"#
            )
        );
        // Through a stored record and back: the same text.
        let again: Envelope = serde_json::from_slice(&serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!(again, e);
        assert_eq!(again.webhook_body(), body);
        assert_eq!(e.to_plugin_event().payload, data);
    }

    #[test]
    fn data_is_checked_as_strictly_as_a_parse() {
        let v = |data: &str| {
            input(&format!(r#"{{"type":"a.b","data":{data}}}"#))
                .validate(now(), "api", || "x".into())
        };
        for bad in [
            r#"{"s":"\ud800"}"#,
            r#"{"s":"\udc00 alone"}"#,
            r#"{"n":1e400}"#,
            r#"{"deep":[[{"s":"\ud83d\u0041"}]]}"#,
        ] {
            match v(bad) {
                Err(EventError::BadData(message)) => {
                    assert!(!message.is_empty(), "{bad}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        for ok in [
            r#"{}"#,
            r#"{"s":"\ud83d\ude00","n":-0.0,"b":[true,false,null]}"#,
        ] {
            assert!(v(ok).is_ok(), "{ok}");
        }
        assert_eq!(v(r#""text""#).unwrap_err(), EventError::DataNotObject);
        assert_eq!(v("null").unwrap_err(), EventError::DataNotObject);
    }

    #[test]
    fn occurred_at_out_of_range_names_the_field() {
        for t in [
            "9999-12-30T12:00:00Z",
            "1969-12-31T23:59:59Z",
            "3000-01-01T00:00:00Z",
        ] {
            let e = input(&format!(
                r#"{{"type": "message.created", "occurred_at": "{t}", "data": {{}}}}"#
            ))
            .validate(now(), "api", || "x".into())
            .unwrap_err();
            assert_eq!(e, EventError::TimeOutOfRange(t.into()));
            assert!(e.to_string().contains("`occurred_at`"), "{e}");
        }
    }
}
