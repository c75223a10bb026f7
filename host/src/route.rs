//! Routing: which of a tenant's subscriptions want an event. Patterns are
//! exact types (`lead.created`), a prefix with a final `*` segment
//! (`message.*` matches `message.created` and `message.sent.late`), or `*`.

/// Whether an event-type pattern is well formed.
pub fn is_valid_pattern(pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        // A prefix is what a type is made of: `message.*` as `message.x`.
        Some(prefix) => !prefix.is_empty() && crate::event::is_valid_type(&format!("{prefix}.x")),
        None => crate::event::is_valid_type(pattern),
    }
}

/// Whether `event_type` matches `pattern`.
pub fn matches(pattern: &str, event_type: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        // "message.*" → the type starts with "message." and has more after it.
        Some(prefix) => event_type.len() > prefix.len() && event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

/// Whether `sub` wants `event` (enabled or not): the event is sent to its
/// application (or both to none), its type matches one of its patterns,
/// and its channels suit it.
pub fn wants(sub: &crate::store::Subscription, event: &crate::event::Envelope) -> bool {
    sub.app_id == event.app
        && matches_any(&sub.event_types, &event.event_type)
        && sub.takes_channels(&event.channels)
}

/// Whether any of `patterns` matches.
pub fn matches_any(patterns: &[String], event_type: &str) -> bool {
    patterns.iter().any(|p| matches(p, event_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_wildcard_and_prefix() {
        assert!(matches("*", "lead.created"));
        assert!(matches("lead.created", "lead.created"));
        assert!(!matches("lead.created", "lead.created2"));
        assert!(matches("message.*", "message.created"));
        assert!(matches("message.*", "message.sent.late"));
        assert!(!matches("message.*", "message"));
        assert!(!matches("message.*", "messages.created"));
        assert!(!matches("message.*", "chat.message.created"));
        assert!(matches_any(
            &["chat.rated".into(), "message.*".into()],
            "message.created"
        ));
        assert!(!matches_any(&[], "message.created"));
    }

    #[test]
    fn pattern_validation() {
        for ok in [
            "*",
            "message.*",
            "lead.created",
            "a.b.*",
            "conversation.status_changed",
        ] {
            assert!(is_valid_pattern(ok), "{ok}");
        }
        for bad in [
            "",
            "message",
            "message*",
            "*.created",
            "Message.*",
            "a..*",
            ".*",
            "a.*.b",
            "**",
        ] {
            assert!(!is_valid_pattern(bad), "{bad}");
        }
    }
}
