//! The platforms' time formats to RFC 3339 in UTC, without a date library
//! (the component stays small).

/// Unix seconds to `YYYY-MM-DDTHH:MM:SSZ` (Howard Hinnant's civil-from-days).
pub fn from_unix(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A platform's time as RFC 3339, or None when it is not one of the forms
/// the platforms use: RFC 3339 itself, Chatwoot's old
/// `2020-03-03 13:05:57 UTC`, or Unix seconds (a number, a string of
/// digits, or a fraction such as Chatwoot's `updated_at`
/// `1764842472.561234`, whose digits are kept as written).
pub fn normalize(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(secs) => Some(from_unix(secs)),
            None => fractional(&n.to_string()),
        },
        serde_json::Value::String(s) => text(s),
        _ => None,
    }
}

/// `1764842472.561234` → `2025-12-04T10:01:12.561234Z` (at most 9 digits
/// of fraction; an exponent or a negative time is not a platform's time).
fn fractional(text: &str) -> Option<String> {
    let (whole, fraction) = text.split_once('.')?;
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || fraction.is_empty()
        || fraction.len() > 9
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let base = from_unix(secs);
    Some(format!("{}.{fraction}Z", base.strip_suffix('Z')?))
}

fn text(s: &str) -> Option<String> {
    let s = s.trim();
    if !s.is_empty() && s.len() <= 12 && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok().map(from_unix);
    }
    let b = s.as_bytes();
    // YYYY-MM-DD?HH:MM:SS…
    let shape = b.len() >= 19
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b' ')
        && b[13] == b':'
        && b[16] == b':';
    if !shape {
        return None;
    }
    let (date, rest) = (&s[..10], &s[11..]);
    if let Some(clock) = rest.strip_suffix(" UTC") {
        return Some(format!("{date}T{clock}Z"));
    }
    let zoned = rest.ends_with('Z')
        || rest
            .get(8..)
            .is_some_and(|tail| tail.contains('+') || tail.contains('-'));
    zoned.then(|| format!("{date}T{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_seed_formats_become_rfc3339() {
        assert_eq!(
            normalize(&json!("2020-03-03 13:05:57 UTC")).as_deref(),
            Some("2020-03-03T13:05:57Z")
        );
        assert_eq!(
            normalize(&json!("2023-11-21T16:22:42.264484Z")).as_deref(),
            Some("2023-11-21T16:22:42.264484Z")
        );
        assert_eq!(
            normalize(&json!("2026-11-21T10:00:00+01:00")).as_deref(),
            Some("2026-11-21T10:00:00+01:00")
        );
        assert_eq!(
            normalize(&json!(1492774577)).as_deref(),
            Some("2017-04-21T11:36:17Z")
        );
        assert_eq!(
            normalize(&json!("0")).as_deref(),
            Some("1970-01-01T00:00:00Z")
        );
        assert_eq!(
            normalize(&json!(1764842472.561234)).as_deref(),
            Some("2025-12-04T10:01:12.561234Z")
        );
        assert_eq!(normalize(&json!(1.5e300)), None);
        assert_eq!(normalize(&json!(-1.5)), None);
        assert_eq!(normalize(&json!("Tue Mar 03 2020")), None);
        assert_eq!(normalize(&json!("2020-03-03 13:05:57")), None);
        assert_eq!(normalize(&json!(null)), None);
    }
}
