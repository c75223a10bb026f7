//! Window boundaries: pure functions of the subscription's window spec and a
//! time. A spec `{"every": "1d", "at": "02:00", "timezone": "UTC"}` cuts time
//! into calendar days `[D 00:00, D+1 00:00)` and closes each at `D+1 02:00`;
//! sub-day periods (`"5m"`, `"1h"`) cut each local day into equal slices and
//! close each slice `at` after its end.

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan, Zoned};

pub use crate::store::WindowSpec;

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
    // The unit is the last character, which need not be one byte ("1é").
    let unit_at = s.char_indices().last()?.0;
    let (n, unit) = s.split_at(unit_at);
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
    if !s.is_ascii() {
        return None;
    }
    let (h, m) = s.split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    ((0..24).contains(&h) && (0..60).contains(&m) && s.len() == 5)
        .then(|| SignedDuration::from_mins(h * 60 + m))
}

impl Schedule {
    /// The window that contains `t`; None at the edges of representable
    /// time (year 9999), where a window has no end.
    pub fn window_of(&self, t: Timestamp) -> Option<Bounds> {
        let local = t.to_zoned(self.tz.clone());
        let midnight = local.start_of_day().ok()?;
        let since_midnight = local.datetime().time().duration_since(Time::midnight());
        let slice = since_midnight.as_mins() / self.minutes;
        let start = self.at_minutes(&midnight, slice * self.minutes)?;
        let end = self.at_minutes(&midnight, (slice + 1) * self.minutes)?;
        Some(Bounds { start, end })
    }

    /// Local midnight plus `minutes` of civil time, as an instant.
    fn at_minutes(&self, midnight: &Zoned, minutes: i64) -> Option<Timestamp> {
        if minutes >= 1440 {
            let next = midnight.date().tomorrow().ok()?;
            return next.to_zoned(self.tz.clone()).ok().map(|z| z.timestamp());
        }
        let civil = midnight.datetime().checked_add(minutes.minutes()).ok()?;
        civil.to_zoned(self.tz.clone()).ok().map(|z| z.timestamp())
    }

    /// When a window closes: its end plus `at` (None past representable time).
    pub fn close_at(&self, w: &Bounds) -> Option<Timestamp> {
        w.end.checked_add(self.at).ok()
    }

    /// The first close time strictly after `now`.
    #[cfg(test)]
    fn next_close(&self, now: Timestamp) -> Option<Timestamp> {
        let current = self.window_of(now)?;
        // The previous window closes `at` after the current one starts.
        let previous_close = current.start.checked_add(self.at).ok()?;
        if previous_close > now {
            Some(previous_close)
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
        let w = s.window_of(t("2023-11-21T16:22:42.264484Z")).unwrap();
        assert_eq!(w.start, t("2023-11-21T00:00:00Z"));
        assert_eq!(w.end, t("2023-11-22T00:00:00Z"));
        assert_eq!(s.close_at(&w).unwrap(), t("2023-11-22T02:00:00Z"));
        // Before 02:00 the previous day's window is still to close.
        assert_eq!(
            s.next_close(t("2023-11-22T01:59:59Z")).unwrap(),
            t("2023-11-22T02:00:00Z")
        );
        assert_eq!(
            s.next_close(t("2023-11-22T02:00:00Z")).unwrap(),
            t("2023-11-23T02:00:00Z")
        );
        assert_eq!(
            s.next_close(t("2023-11-22T23:59:59Z")).unwrap(),
            t("2023-11-23T02:00:00Z")
        );
        // Boundaries: midnight belongs to the new day.
        assert_eq!(
            s.window_of(t("2023-11-22T00:00:00Z")).unwrap().start,
            t("2023-11-22T00:00:00Z")
        );
        assert_eq!(
            s.window_of(t("2023-11-21T23:59:59.999Z")).unwrap().start,
            t("2023-11-21T00:00:00Z")
        );
        // Month and year ends.
        let w = s.window_of(t("2023-12-31T23:00:00Z")).unwrap();
        assert_eq!(w.end, t("2024-01-01T00:00:00Z"));
        let w = s.window_of(t("2024-02-29T12:00:00Z")).unwrap();
        assert_eq!(
            (w.start, w.end),
            (t("2024-02-29T00:00:00Z"), t("2024-03-01T00:00:00Z"))
        );
    }

    #[test]
    fn five_minute_slices() {
        let s = spec("5m", "00:00", "UTC");
        let w = s.window_of(t("2026-11-21T10:07:30Z")).unwrap();
        assert_eq!(
            (w.start, w.end),
            (t("2026-11-21T10:05:00Z"), t("2026-11-21T10:10:00Z"))
        );
        assert_eq!(
            s.next_close(t("2026-11-21T10:07:30Z")).unwrap(),
            t("2026-11-21T10:10:00Z")
        );
        assert_eq!(
            s.next_close(t("2026-11-21T10:10:00Z")).unwrap(),
            t("2026-11-21T10:15:00Z")
        );
        // The last slice of a day ends at the next midnight.
        let w = s.window_of(t("2026-11-21T23:58:00Z")).unwrap();
        assert_eq!(w.end, t("2026-11-22T00:00:00Z"));
        let s = spec("5m", "00:01", "UTC");
        assert_eq!(
            s.next_close(t("2026-11-21T10:10:30Z")).unwrap(),
            t("2026-11-21T10:11:00Z")
        );
        assert_eq!(
            s.next_close(t("2026-11-21T10:11:00Z")).unwrap(),
            t("2026-11-21T10:16:00Z")
        );
    }

    #[test]
    fn hours_and_time_zones() {
        let s = spec("6h", "00:30", "UTC");
        let w = s.window_of(t("2026-11-21T13:00:00Z")).unwrap();
        assert_eq!(
            (w.start, w.end),
            (t("2026-11-21T12:00:00Z"), t("2026-11-21T18:00:00Z"))
        );
        assert_eq!(s.close_at(&w).unwrap(), t("2026-11-21T18:30:00Z"));

        // Paris days start at 23:00 UTC in winter.
        let s = spec("1d", "02:00", "Europe/Paris");
        let w = s.window_of(t("2026-11-21T23:30:00Z")).unwrap();
        assert_eq!(
            (w.start, w.end),
            (t("2026-11-21T23:00:00Z"), t("2026-11-22T23:00:00Z"))
        );
        assert_eq!(s.close_at(&w).unwrap(), t("2026-11-23T01:00:00Z"));
        // The day DST ends is 25 hours long.
        let w = s.window_of(t("2026-10-25T12:00:00Z")).unwrap();
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

    #[test]
    fn non_ascii_specs_are_refused_not_panics() {
        for (every, at) in [
            ("1é", "02:00"),
            ("é", "02:00"),
            ("1d", "0é:00"),
            ("1d", "é"),
        ] {
            let spec = WindowSpec {
                every: every.into(),
                at: at.into(),
                timezone: "UTC".into(),
                max_items: 10,
                max_bytes: 10,
            };
            assert!(spec.schedule().is_err(), "{every} {at}");
        }
    }

    #[test]
    fn the_end_of_time_has_no_window() {
        let s = spec("1d", "02:00", "UTC");
        // jiff's last instant is 9999-12-30T22:00Z: that day has no end.
        assert_eq!(s.window_of(t("9999-12-30T12:00:00Z")), None);
        let w = s.window_of(t("9999-12-29T12:00:00Z")).unwrap();
        assert_eq!(w.end, t("9999-12-30T00:00:00Z"));
        assert!(s.close_at(&w).is_some());
        let s = spec("1d", "00:00", "Pacific/Kiritimati");
        let _ = s.window_of(Timestamp::MAX);
        let _ = s.window_of(Timestamp::MIN);
    }
}
