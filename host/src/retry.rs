//! The retry policy: a pure function of (outcome, attempts so far, policy,
//! now, a jitter draw) that says what happens next. Everything time-based in
//! delivery comes from here, so it is tested densely without a network.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A subscription's retry settings, as stored (presets already expanded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// The preset these settings came from, if any (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Delay before retry 1, 2, …: the delivery gets `1 + len` attempts.
    pub schedule_secs: Vec<u64>,
    /// Each delay is scaled by a random factor in `[1 - jitter, 1 + jitter]`.
    pub jitter: f64,
    /// `Retry-After` on 429/503 is honoured up to this many seconds.
    pub retry_after_max_secs: u64,
    /// Whether a 4xx answer ends the delivery (except `retry_4xx`).
    pub stop_on_4xx: bool,
    /// 4xx codes that are retried even when `stop_on_4xx` is set.
    pub retry_4xx: Vec<u16>,
    /// Exhausted deliveries in a row that disable the subscription (0: never).
    pub disable_after_failures: u32,
}

/// The named presets, from the platforms' documented schedules.
pub const PRESETS: &[&str] = &[
    "standard",
    "onwebchat",
    "convosphere",
    "helloclient",
    "ohallo",
];

impl RetryPolicy {
    /// A preset by name: `standard` (Standard-Webhooks-like), `onwebchat`
    /// (1m, 5m, 20m, 1h, 2h), `convosphere` (1, 2, 4, 8, 16 min; every 4xx but
    /// 429 is final), `helloclient` (1m, 3m), `ohallo` (exponential, 3
    /// attempts in all: 1m, 2m; 4xx and 5xx alike).
    pub fn preset(name: &str) -> Option<Self> {
        let base = RetryPolicy {
            preset: Some(name.to_string()),
            schedule_secs: vec![],
            jitter: 0.2,
            retry_after_max_secs: 3600,
            stop_on_4xx: false,
            retry_4xx: vec![408, 429],
            disable_after_failures: 5,
        };
        let minutes = |m: &[u64]| m.iter().map(|m| m * 60).collect();
        Some(match name {
            "standard" => RetryPolicy {
                schedule_secs: vec![5, 300, 1800, 7200, 18000, 36000, 36000],
                ..base
            },
            "onwebchat" => RetryPolicy {
                schedule_secs: minutes(&[1, 5, 20, 60, 120]),
                ..base
            },
            "convosphere" => RetryPolicy {
                schedule_secs: minutes(&[1, 2, 4, 8, 16]),
                stop_on_4xx: true,
                retry_4xx: vec![429],
                ..base
            },
            "helloclient" => RetryPolicy {
                schedule_secs: minutes(&[1, 3]),
                ..base
            },
            // Seed 000: "exponential backoff on 4xx/5xx responses (up to 3
            // attempts)"; the base is not given, so a doubling minute.
            "ohallo" => RetryPolicy {
                schedule_secs: minutes(&[1, 2]),
                ..base
            },
            _ => return None,
        })
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::preset("standard").expect("standard preset")
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 2xx, and the required body if the subscription has one.
    Delivered,
    /// An HTTP answer that is not success.
    Status {
        code: u16,
        retry_after: Option<Duration>,
    },
    /// 2xx but not the body the subscription requires.
    BodyMismatch,
    /// DNS, connect, TLS, timeout, or a broken response.
    Transport,
    /// Refused before sending (SSRF guard, unusable URL): retrying cannot help.
    Refused,
}

/// What happens next.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Succeeded,
    /// Try again at this time.
    RetryAt(Timestamp),
    /// The delivery has failed for good.
    GiveUp {
        reason: String,
    },
    /// The delivery failed and the endpoint must be disabled now (HTTP 410).
    Disable {
        reason: String,
    },
}

/// The pause a receiver asked for: `Retry-After` on a 429 or 503, capped by
/// the policy's `retry_after_max_secs`. The retry waits that long, and so
/// does the whole subscription (the worker pauses it).
pub fn requested_pause(outcome: &Outcome, policy: &RetryPolicy) -> Option<Duration> {
    match outcome {
        Outcome::Status {
            code: 429 | 503,
            retry_after: Some(asked),
        } => Some((*asked).min(Duration::from_secs(policy.retry_after_max_secs))),
        _ => None,
    }
}

/// Decides after attempt number `attempts` (1-based: the attempt that just
/// ended). `jitter_draw` is uniform in `[-1, 1]` (0 in tests that want exact
/// times).
pub fn decide(
    outcome: &Outcome,
    attempts: u32,
    policy: &RetryPolicy,
    now: Timestamp,
    jitter_draw: f64,
) -> Decision {
    match outcome {
        Outcome::Delivered => return Decision::Succeeded,
        Outcome::Refused => {
            return Decision::GiveUp {
                reason: "the request was refused before sending; retrying cannot help".into(),
            };
        }
        Outcome::Status { code: 410, .. } => {
            return Decision::Disable {
                reason: "the endpoint answered 410 Gone".into(),
            };
        }
        Outcome::Status { code, .. } => {
            if (400..500).contains(code) && policy.stop_on_4xx && !policy.retry_4xx.contains(code) {
                return Decision::GiveUp {
                    reason: format!(
                        "the endpoint answered {code}, which this policy does not retry"
                    ),
                };
            }
        }
        Outcome::BodyMismatch | Outcome::Transport => {}
    }
    let index = attempts.saturating_sub(1) as usize;
    let Some(&base) = policy.schedule_secs.get(index) else {
        return Decision::GiveUp {
            reason: format!("gave up after {attempts} attempts"),
        };
    };
    let delay = match requested_pause(outcome, policy) {
        Some(pause) => pause,
        None => {
            let factor = 1.0 + policy.jitter.clamp(0.0, 1.0) * jitter_draw.clamp(-1.0, 1.0);
            Duration::from_secs_f64(base as f64 * factor)
        }
    };
    let at = now
        .checked_add(jiff::SignedDuration::try_from(delay).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX);
    Decision::RetryAt(at)
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let delta = date.duration_since(now);
    Some(Duration::try_from(delta).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Timestamp {
        "2026-11-21T00:00:00Z".parse().unwrap()
    }

    fn at(secs: i64) -> Timestamp {
        t0() + jiff::SignedDuration::from_secs(secs)
    }

    fn status(code: u16) -> Outcome {
        Outcome::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn presets_match_the_seeds() {
        let mins = |p: &str| -> Vec<u64> {
            RetryPolicy::preset(p)
                .unwrap()
                .schedule_secs
                .iter()
                .map(|s| s / 60)
                .collect()
        };
        assert_eq!(mins("onwebchat"), [1, 5, 20, 60, 120]);
        assert_eq!(mins("convosphere"), [1, 2, 4, 8, 16]);
        assert_eq!(mins("helloclient"), [1, 3]);
        assert_eq!(mins("ohallo"), [1, 2]);
        assert_eq!(
            RetryPolicy::preset("standard").unwrap().schedule_secs,
            [5, 300, 1800, 7200, 18000, 36000, 36000]
        );
        assert!(RetryPolicy::preset("nope").is_none());
        for p in PRESETS {
            assert!(RetryPolicy::preset(p).is_some());
        }
    }

    #[test]
    fn success_is_final() {
        let p = RetryPolicy::default();
        assert_eq!(
            decide(&Outcome::Delivered, 1, &p, t0(), 0.0),
            Decision::Succeeded
        );
        assert_eq!(
            decide(&Outcome::Delivered, 8, &p, t0(), 0.0),
            Decision::Succeeded
        );
    }

    #[test]
    fn every_step_of_the_onwebchat_schedule_then_give_up() {
        let p = RetryPolicy::preset("onwebchat").unwrap();
        let expected = [60, 300, 1200, 3600, 7200];
        for (i, secs) in expected.iter().enumerate() {
            assert_eq!(
                decide(&Outcome::Transport, i as u32 + 1, &p, t0(), 0.0),
                Decision::RetryAt(at(*secs)),
                "after attempt {}",
                i + 1
            );
        }
        assert!(matches!(
            decide(&Outcome::Transport, 6, &p, t0(), 0.0),
            Decision::GiveUp { .. }
        ));
    }

    #[test]
    fn helloclient_retries_after_one_and_three_minutes_on_body_mismatch() {
        let p = RetryPolicy::preset("helloclient").unwrap();
        assert_eq!(
            decide(&Outcome::BodyMismatch, 1, &p, t0(), 0.0),
            Decision::RetryAt(at(60))
        );
        assert_eq!(
            decide(&Outcome::BodyMismatch, 2, &p, t0(), 0.0),
            Decision::RetryAt(at(180))
        );
        assert!(matches!(
            decide(&Outcome::BodyMismatch, 3, &p, t0(), 0.0),
            Decision::GiveUp { .. }
        ));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let p = RetryPolicy::preset("onwebchat").unwrap();
        assert_eq!(
            decide(&Outcome::Transport, 1, &p, t0(), 1.0),
            Decision::RetryAt(at(72))
        );
        assert_eq!(
            decide(&Outcome::Transport, 1, &p, t0(), -1.0),
            Decision::RetryAt(at(48))
        );
        // Out-of-range draws are clamped.
        assert_eq!(
            decide(&Outcome::Transport, 1, &p, t0(), 7.0),
            Decision::RetryAt(at(72))
        );
    }

    #[test]
    fn gone_disables_at_once() {
        for p in PRESETS {
            let p = RetryPolicy::preset(p).unwrap();
            assert!(matches!(
                decide(&status(410), 1, &p, t0(), 0.0),
                Decision::Disable { .. }
            ));
        }
    }

    #[test]
    fn convosphere_stops_on_4xx_except_429() {
        let p = RetryPolicy::preset("convosphere").unwrap();
        for code in [400, 401, 403, 404, 408, 422] {
            assert!(
                matches!(
                    decide(&status(code), 1, &p, t0(), 0.0),
                    Decision::GiveUp { .. }
                ),
                "{code}"
            );
        }
        assert_eq!(
            decide(&status(429), 1, &p, t0(), 0.0),
            Decision::RetryAt(at(60))
        );
        assert_eq!(
            decide(&status(500), 1, &p, t0(), 0.0),
            Decision::RetryAt(at(60))
        );
    }

    #[test]
    fn standard_retries_4xx() {
        let p = RetryPolicy::default();
        assert_eq!(
            decide(&status(404), 1, &p, t0(), 0.0),
            Decision::RetryAt(at(5))
        );
        assert_eq!(
            decide(&status(500), 2, &p, t0(), 0.0),
            Decision::RetryAt(at(300))
        );
    }

    #[test]
    fn retry_after_is_honoured_and_capped_on_429_and_503_only() {
        let p = RetryPolicy {
            retry_after_max_secs: 600,
            ..RetryPolicy::preset("onwebchat").unwrap()
        };
        let ra = |code, secs| Outcome::Status {
            code,
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            decide(&ra(429, 7), 1, &p, t0(), 1.0),
            Decision::RetryAt(at(7))
        );
        assert_eq!(
            decide(&ra(503, 120), 3, &p, t0(), 0.0),
            Decision::RetryAt(at(120))
        );
        assert_eq!(
            decide(&ra(429, 99_999), 1, &p, t0(), 0.0),
            Decision::RetryAt(at(600))
        );
        // Other codes ignore it and follow the schedule.
        assert_eq!(
            decide(&ra(500, 7), 1, &p, t0(), 0.0),
            Decision::RetryAt(at(60))
        );
        // The schedule still bounds the number of attempts.
        assert!(matches!(
            decide(&ra(429, 7), 6, &p, t0(), 0.0),
            Decision::GiveUp { .. }
        ));
    }

    #[test]
    fn refused_is_final() {
        let p = RetryPolicy::default();
        assert!(matches!(
            decide(&Outcome::Refused, 1, &p, t0(), 0.0),
            Decision::GiveUp { .. }
        ));
    }

    #[test]
    fn empty_schedule_means_one_attempt() {
        let p = RetryPolicy {
            schedule_secs: vec![],
            ..RetryPolicy::default()
        };
        assert!(matches!(
            decide(&Outcome::Transport, 1, &p, t0(), 0.0),
            Decision::GiveUp { .. }
        ));
    }

    #[test]
    fn retry_after_formats() {
        assert_eq!(
            parse_retry_after("120", t0()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sat, 21 Nov 2026 00:01:00 GMT", t0()),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Fri, 20 Nov 2026 00:01:00 GMT", t0()),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", t0()), None);
    }
}
