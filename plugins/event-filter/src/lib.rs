//! `event-filter`: a filter for tenants who write no code.
//!
//! The config lists conditions on JSON pointers into the canonical event
//! envelope `{"id", "type", "occurred_at", "source", "data"}` and combines them
//! with `all` / `any` (nestable, with `not`). Events that pass are delivered
//! unchanged in that envelope (the `data` bytes exactly as received); the
//! others are skipped with the condition that failed.
//!
//! ```json
//! {"all": [
//!   {"pointer": "/type", "prefix": "message."},
//!   {"pointer": "/data/author", "one_of": ["visitor", "ai"]},
//!   {"not": {"pointer": "/data/internal", "exists": true}}
//! ]}
//! ```
//!
//! Each leaf has a `pointer` (RFC 6901) and exactly one test: `equals` (any
//! JSON value), `one_of` (a list of values), `exists` (true/false) or `prefix`
//! (the value is a string that starts with it).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use wasmhook_guest::{Action, Event, Plugin, PluginError, Request};

/// The plugin.
pub struct EventFilter;

/// A condition as written in the config; validated into [`Condition`].
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    all: Option<Vec<RawCondition>>,
    any: Option<Vec<RawCondition>>,
    not: Option<Box<RawCondition>>,
    pointer: Option<String>,
    equals: Option<Value>,
    one_of: Option<Vec<Value>>,
    exists: Option<bool>,
    prefix: Option<String>,
}

/// A validated condition.
#[derive(Debug, PartialEq)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    Equals(String, Value),
    OneOf(String, Vec<Value>),
    Exists(String, bool),
    Prefix(String, String),
}

fn bad(message: String) -> PluginError {
    PluginError::BadConfig(message)
}

impl RawCondition {
    /// Checks that the condition has exactly one shape; `path` names it in errors.
    pub fn validate(self, path: &str) -> Result<Condition, PluginError> {
        let shapes = [
            self.all.is_some(),
            self.any.is_some(),
            self.not.is_some(),
            self.pointer.is_some(),
        ];
        match shapes.iter().filter(|s| **s).count() {
            0 => {
                return Err(bad(format!(
                    "{path}: a condition needs `all`, `any`, `not` or `pointer`"
                )));
            }
            1 => {}
            _ => {
                return Err(bad(format!(
                    "{path}: use only one of `all`, `any`, `not`, `pointer` per condition"
                )));
            }
        }
        let list = |items: Vec<RawCondition>, name: &str| {
            if items.is_empty() {
                return Err(bad(format!("{path}.{name}: the list is empty")));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, c)| c.validate(&format!("{path}.{name}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
        };
        if let Some(items) = self.all {
            return Ok(Condition::All(list(items, "all")?));
        }
        if let Some(items) = self.any {
            return Ok(Condition::Any(list(items, "any")?));
        }
        if let Some(inner) = self.not {
            return Ok(Condition::Not(Box::new(
                inner.validate(&format!("{path}.not"))?,
            )));
        }
        let pointer = self.pointer.unwrap_or_default();
        if !pointer.is_empty() && !pointer.starts_with('/') {
            return Err(bad(format!(
                "{path}.pointer: {pointer:?} is not a JSON pointer (it must start with `/`, e.g. \"/data/author\")"
            )));
        }
        let mut tests = Vec::new();
        if let Some(v) = self.equals {
            tests.push(Condition::Equals(pointer.clone(), v));
        }
        if let Some(v) = self.one_of {
            tests.push(Condition::OneOf(pointer.clone(), v));
        }
        if let Some(v) = self.exists {
            tests.push(Condition::Exists(pointer.clone(), v));
        }
        if let Some(v) = self.prefix {
            tests.push(Condition::Prefix(pointer.clone(), v));
        }
        match tests.len() {
            1 => Ok(tests.pop().expect("one test")),
            0 => Err(bad(format!(
                "{path}: pointer {pointer:?} needs a test: `equals`, `one_of`, `exists` or `prefix`"
            ))),
            _ => Err(bad(format!(
                "{path}: pointer {pointer:?} has several tests; use `all` to combine them"
            ))),
        }
    }
}

impl Condition {
    /// Evaluates against the envelope; on failure returns a description of
    /// the first leaf that failed (for the skip reason).
    pub fn eval(&self, doc: &Value) -> Result<(), String> {
        match self {
            Condition::All(items) => items.iter().try_for_each(|c| c.eval(doc)),
            Condition::Any(items) => {
                let mut reasons = Vec::new();
                for c in items {
                    match c.eval(doc) {
                        Ok(()) => return Ok(()),
                        Err(r) => reasons.push(r),
                    }
                }
                Err(format!("none of: {}", reasons.join("; ")))
            }
            Condition::Not(inner) => match inner.eval(doc) {
                Ok(()) => Err(format!(
                    "not({}) failed: the inner condition matched",
                    inner
                )),
                Err(_) => Ok(()),
            },
            Condition::Equals(p, v) => check(doc.pointer(p) == Some(v), || self.to_string()),
            Condition::OneOf(p, vs) => {
                check(doc.pointer(p).is_some_and(|x| vs.contains(x)), || {
                    self.to_string()
                })
            }
            Condition::Exists(p, want) => {
                check(doc.pointer(p).is_some() == *want, || self.to_string())
            }
            Condition::Prefix(p, prefix) => check(
                doc.pointer(p)
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.starts_with(prefix.as_str())),
                || self.to_string(),
            ),
        }
    }
}

fn check(ok: bool, describe: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(describe()) }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Condition::All(items) => write!(f, "all of {} conditions", items.len()),
            Condition::Any(items) => write!(f, "any of {} conditions", items.len()),
            Condition::Not(inner) => write!(f, "not({inner})"),
            Condition::Equals(p, v) => write!(f, "{p} equals {v}"),
            Condition::OneOf(p, vs) => write!(f, "{p} one of {}", Value::Array(vs.clone())),
            Condition::Exists(p, true) => write!(f, "{p} exists"),
            Condition::Exists(p, false) => write!(f, "{p} is absent"),
            Condition::Prefix(p, s) => write!(f, "{p} starts with {s:?}"),
        }
    }
}

/// The canonical envelope, with `data` passed through byte for byte.
#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    occurred_at: &'a str,
    source: &'a str,
    data: &'a RawValue,
}

impl Plugin for EventFilter {
    type Config = RawCondition;

    fn check_config(config: &RawCondition) -> Result<(), PluginError> {
        config.clone().validate("config").map(|_| ())
    }

    fn handle(event: Event, config: RawCondition) -> Result<Action, PluginError> {
        let condition = config.validate("config")?;
        let data: &RawValue = serde_json::from_str(&event.payload)
            .map_err(|e| PluginError::BadEvent(format!("data is not JSON: {e}")))?;
        let envelope = Envelope {
            id: &event.id,
            event_type: &event.event_type,
            occurred_at: &event.occurred_at,
            source: &event.source,
            data,
        };
        let body = serde_json::to_string(&envelope)?;
        let doc: Value = serde_json::from_str(&body)?;
        match condition.eval(&doc) {
            Ok(()) => Ok(Action::Deliver(vec![Request {
                body,
                content_type: None,
                headers: Vec::new(),
            }])),
            Err(reason) => Ok(Action::skip(format!("filtered out: {reason}"))),
        }
    }
}

wasmhook_guest::export_plugin!(EventFilter);
