//! Window boundaries: pure functions of the subscription's window spec and a
//! time. A spec `{"every": "1d", "at": "02:00", "timezone": "UTC"}` cuts time
//! into calendar days `[D 00:00, D+1 00:00)` and closes each at `D+1 02:00`;
//! sub-day periods (`"5m"`, `"1h"`) cut each local day into equal slices and
//! close each slice `at` after its end.

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan, Zoned};
use serde::{Deserialize, Serialize};

/// A subscription's window, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// `1d`, or minutes / hours that divide a day: `5m`, `15m`, `1h`, `6h`.
    pub every: String,
    /// `HH:MM` after the end of a window when it closes (default `00:00`);
    /// shorter than the period.
    #[serde(default = "default_at")]
    pub at: String,
    /// An IANA zone name; days start at local midnight (default `UTC`).
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Most items held at once for this subscription.
    #[serde(default = "default_max_items")]
    pub max_items: u64,
    /// Most bytes held at once for this subscription.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

fn default_at() -> String {
    "00:00".into()
}
fn default_timezone() -> String {
    "UTC".into()
}
fn default_max_items() -> u64 {
    100_000
}
fn default_max_bytes() -> u64 {
    64 << 20
}

/// One window, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub start: Timestamp,
    pub end: Timestamp,
}

/// A validated spec.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Length of a slice in minutes; 1440 for a day.
    minutes: i64,
    at: SignedDuration,
    tz: TimeZone,
}

impl WindowSpec {
    /// Validates the spec; the error names the field.
    pub fn schedule(&self) -> Result<Schedule, String> {
        let minutes = parse_period(&self.every).ok_or_else(|| {
            format!(
                "window.every {:?} must be `1d` or minutes/hours that divide a day (`5m`, `15m`, `1h`, `6h`)",
                self.every
            )
        })?;
        let at =
            parse_hhmm(&self.at).ok_or_else(|| format!("window.at {:?} must be HH:MM", self.at))?;
        if at >= SignedDuration::from_mins(minutes) {
            return Err(format!(
                "window.at {:?} must be shorter than the period {:?}",
                self.at, self.every
            ));
        }
        let tz = TimeZone::get(&self.timezone).map_err(|_| {
            format!(
                "window.timezone {:?} is not a known time zone",
                self.timezone
            )
        })?;
        if self.max_items == 0 || self.max_bytes == 0 {
            return Err("window.max_items and window.max_bytes must be greater than 0".into());
        }
        Ok(Schedule { minutes, at, tz })
    }
}

fn parse_period(s: &str) -> Option<i64> {
    let (n, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: i64 = n.parse().ok().filter(|n| *n > 0)?;
    let minutes = match unit {
        "d" if n == 1 => 1440,
        "h" => n * 60,
        "m" => n,
        _ => return None,
    };
    (minutes <= 1440 && 1440 % minutes == 0).then_some(minutes)
}

fn parse_hhmm(s: &str) -> Option<SignedDuration> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    ((0..24).contains(&h) && (0..60).contains(&m) && s.len() == 5)
        .then(|| SignedDuration::from_mins(h * 60 + m))
}

impl Schedule {
    /// The window that contains `t`.
    pub fn window_of(&self, t: Timestamp) -> Bounds {
        let local = t.to_zoned(self.tz.clone());
        let midnight = local.start_of_day().expect("every day has a start");
        let since_midnight = local.datetime().time().duration_since(Time::midnight());
        let slice = since_midnight.as_mins() / self.minutes;
        let start = self.at_minutes(&midnight, slice * self.minutes);
        let end = self.at_minutes(&midnight, (slice + 1) * self.minutes);
        Bounds { start, end }
    }

    /// Local midnight plus `minutes` of civil time, as an instant.
    fn at_minutes(&self, midnight: &Zoned, minutes: i64) -> Timestamp {
        if minutes >= 1440 {
            let next = midnight.date().tomorrow().expect("in range");
            return next
                .to_zoned(self.tz.clone())
                .expect("in range")
                .timestamp();
        }
        let civil = midnight.datetime() + minutes.minutes();
        civil
            .to_zoned(self.tz.clone())
            .expect("in range")
            .timestamp()
    }

    /// When a window closes: its end plus `at`.
    pub fn close_at(&self, w: &Bounds) -> Timestamp {
        w.end + self.at
    }

    /// The first close time strictly after `now`.
    pub fn next_close(&self, now: Timestamp) -> Timestamp {
        let current = self.window_of(now);
        // The previous window closes `at` after the current one starts.
        let previous_close = current.start + self.at;
        if previous_close > now {
            previous_close
        } else {
            self.close_at(&current)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(every: &str, at: &str, tz: &str) -> Schedule {
        WindowSpec {
            every: every.into(),
            at: at.into(),
            timezone: tz.into(),
            max_items: 10,
            max_bytes: 10,
        }
        .schedule()
        .unwrap()
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn daily_utc_at_two() {
        let s = spec("1d", "02:00", "UTC");
        let w = s.window_of(t("2023-11-21T16:22:42.264484Z"));
        assert_eq!(w.start, t("2023-11-21T00:00:00Z"));
        assert_eq!(w.end, t("2023-11-22T00:00:00Z"));
        assert_eq!(s.close_at(&w), t("2023-11-22T02:00:00Z"));
        // Before 02:00 the previous day's window is still to close.
        assert_eq!(
            s.next_close(t("2023-11-22T01:59:59Z")),
            t("2023-11-22T02:00:00Z")
        );
        assert_eq!(
            s.next_close(t("2023-11-22T02:00:00Z")),
            t("2023-11-23T02:00:00Z")
        );
        assert_eq!(
            s.next_close(t("2023-11-22T23:59:59Z")),
            t("2023-11-23T02:00:00Z")
        );
        // Boundaries: midnight belongs to the new day.
        assert_eq!(
            s.window_of(t("2023-11-22T00:00:00Z")).start,
            t("2023-11-22T00:00:00Z")
        );
        assert_eq!(
            s.window_of(t("2023-11-21T23:59:59.999Z")).start,
            t("2023-11-21T00:00:00Z")
        );
        // Month and year ends.
        let w = s.window_of(t("2023-12-31T23:00:00Z"));
        assert_eq!(w.end, t("2024-01-01T00:00:00Z"));
        let w = s.window_of(t("2024-02-29T12:00:00Z"));
        assert_eq!(
            (w.start, w.end),
            (t("2024-02-29T00:00:00Z"), t("2024-03-01T00:00:00Z"))
        );
    }

    #[test]
    fn five_minute_slices() {
        let s = spec("5m", "00:00", "UTC");
        let w = s.window_of(t("2026-11-21T10:07:30Z"));
        assert_eq!(
            (w.start, w.end),
            (t("2026-11-21T10:05:00Z"), t("2026-11-21T10:10:00Z"))
        );
        assert_eq!(
            s.next_close(t("2026-11-21T10:07:30Z")),
            t("2026-11-21T10:10:00Z")
        );
        assert_eq!(
            s.next_close(t("2026-11-21T10:10:00Z")),
            t("2026-11-21T10:15:00Z")
        );
        // The last slice of a day ends at the next midnight.
        let w = s.window_of(t("2026-11-21T23:58:00Z"));
        assert_eq!(w.end, t("2026-11-22T00:00:00Z"));
        let s = spec("5m", "00:01", "UTC");
        assert_eq!(
            s.next_close(t("2026-11-21T10:10:30Z")),
            t("2026-11-21T10:11:00Z")
        );
        assert_eq!(
            s.next_close(t("2026-11-21T10:11:00Z")),
            t("2026-11-21T10:16:00Z")
        );
    }

    #[test]
    fn hours_and_time_zones() {
        let s = spec("6h", "00:30", "UTC");
        let w = s.window_of(t("2026-11-21T13:00:00Z"));
        assert_eq!(
            (w.start, w.end),
            (t("2026-11-21T12:00:00Z"), t("2026-11-21T18:00:00Z"))
        );
        assert_eq!(s.close_at(&w), t("2026-11-21T18:30:00Z"));

        // Paris days start at 23:00 UTC in winter.
        let s = spec("1d", "02:00", "Europe/Paris");
        let w = s.window_of(t("2026-11-21T23:30:00Z"));
        assert_eq!(
            (w.start, w.end),
            (t("2026-11-21T23:00:00Z"), t("2026-11-22T23:00:00Z"))
        );
        assert_eq!(s.close_at(&w), t("2026-11-23T01:00:00Z"));
        // The day DST ends is 25 hours long.
        let w = s.window_of(t("2026-10-25T12:00:00Z"));
        assert_eq!(
            (w.start, w.end),
            (t("2026-10-24T22:00:00Z"), t("2026-10-25T23:00:00Z"))
        );
    }

    #[test]
    fn bad_specs_name_the_field() {
        let bad = |every: &str, at: &str, tz: &str| {
            WindowSpec {
                every: every.into(),
                at: at.into(),
                timezone: tz.into(),
                max_items: 1,
                max_bytes: 1,
            }
            .schedule()
            .unwrap_err()
        };
        assert!(bad("7m", "00:00", "UTC").contains("window.every"));
        assert!(bad("2d", "00:00", "UTC").contains("window.every"));
        assert!(bad("d", "00:00", "UTC").contains("window.every"));
        assert!(bad("1d", "2:00", "UTC").contains("window.at"));
        assert!(bad("1d", "24:00", "UTC").contains("window.at"));
        assert!(bad("5m", "00:05", "UTC").contains("shorter than the period"));
        assert!(bad("1d", "02:00", "Mars/Olympus").contains("window.timezone"));
    }
}
