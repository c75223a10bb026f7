//! Who is calling: the operator (token from the config or generated at first
//! start), a tenant (an API key, stored hashed), or a tenant's customer
//! through a portal link (a `whp_` token, stored hashed, scoped to one
//! application). All come as `Authorization: Bearer <token>`; anything
//! else is a 401.
//!
//! A handler says whom it serves by the extractor it takes: [`Tenant`]
//! refuses portal tokens (403), so a route is open to a portal link only
//! where a handler takes a [`Caller`] and applies its scope.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::{ApiError, ApiState};
use crate::store::token_hash;

fn bearer(parts: &Parts) -> Option<&str> {
    bearer_token(&parts.headers)
}

/// The token of an `Authorization: Bearer` header.
pub(super) fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Constant-time comparison of two hashes.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The operator, authenticated.
pub struct Operator;

impl FromRequestParts<ApiState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(|| refused(parts))?;
        if same(&token_hash(token), &state.admin_token_hash) {
            Ok(Operator)
        } else {
            Err(refused(parts))
        }
    }
}

/// Failed authentications per address: 5 a second, bursts of 10. Past
/// that the answer is 429 instead of 401, so guessing tokens or keys is
/// slow. IPv6 addresses count per /64 (one host may have them all).
fn failed_authentications() -> &'static RateLimiter {
    static LIMITER: std::sync::OnceLock<RateLimiter> = std::sync::OnceLock::new();
    LIMITER.get_or_init(|| RateLimiter::new(5))
}

/// The answer to a request without valid credentials: 401, or 429 when its
/// address failed too often.
fn refused(parts: &Parts) -> ApiError {
    let Some(axum::extract::ConnectInfo(peer)) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
    else {
        return ApiError::Unauthorized;
    };
    let key = match peer.ip() {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets()[..8].to_vec(),
    };
    match failed_authentications().take(&key, 1) {
        Ok(()) => ApiError::Unauthorized,
        Err(wait) => {
            crate::telemetry::auth_throttled();
            ApiError::TooManyRequests {
                code: "too_many_failed_authentications",
                message: "too many requests with invalid credentials from this address; wait"
                    .into(),
                retry_after_secs: wait.as_secs().max(1),
            }
        }
    }
}

/// A tenant, authenticated by one of its API keys (looked up on every
/// request, so a revoked key is refused at once).
pub struct Tenant {
    pub id: String,
    /// The key's hash (rate limiting is per key).
    pub key_hash: Vec<u8>,
}

impl FromRequestParts<ApiState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.portal.is_some() {
            return Err(ApiError::Forbidden {
                code: "portal_scope",
                message:
                    "a portal link opens only its application's endpoints and their deliveries"
                        .into(),
            });
        }
        Ok(Tenant {
            id: caller.id,
            key_hash: caller.key_hash,
        })
    }
}

/// The prefix of portal tokens (`whp_` and 64 hex digits).
pub const PORTAL_TOKEN_PREFIX: &str = "whp_";

/// What a portal link opens: one application's endpoints.
#[derive(Debug, Clone)]
pub struct Portal {
    pub app_id: String,
    /// Reads only: nothing changed, no secret shown.
    pub read_only: bool,
    pub expires_at: jiff::Timestamp,
}

/// A tenant's key, or a portal link of one of its applications: the
/// callers of the endpoint and delivery routes. Handlers taking it apply
/// [`Caller::sees`] to every record they touch and [`Caller::may_change`]
/// before every change.
pub struct Caller {
    /// The tenant.
    pub id: String,
    /// The key's or token's hash (rate limiting is per key).
    pub key_hash: Vec<u8>,
    /// Set when the caller came with a portal link.
    pub portal: Option<Portal>,
}

impl Caller {
    /// Whether a record of this application (None: tenant-wide) is the
    /// caller's to see.
    pub fn sees(&self, app_id: Option<&str>) -> bool {
        match &self.portal {
            None => true,
            Some(p) => app_id == Some(p.app_id.as_str()),
        }
    }

    /// A 403 for a read-only portal link.
    pub fn may_change(&self) -> Result<(), ApiError> {
        match &self.portal {
            Some(p) if p.read_only => Err(ApiError::Forbidden {
                code: "portal_read_only",
                message: "this portal link is read-only".into(),
            }),
            _ => Ok(()),
        }
    }
}

impl From<&Tenant> for Caller {
    fn from(t: &Tenant) -> Self {
        Caller {
            id: t.id.clone(),
            key_hash: t.key_hash.clone(),
            portal: None,
        }
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let key = bearer(parts).ok_or_else(|| refused(parts))?;
        if key.starts_with(PORTAL_TOKEN_PREFIX) {
            // Expired links are refused like revoked ones.
            return match state.app.store.portal_link_for_token(key)? {
                Some(link) if link.expires_at > state.app.clock.now() => Ok(Caller {
                    id: link.tenant_id,
                    key_hash: token_hash(key),
                    portal: Some(Portal {
                        app_id: link.app_id,
                        read_only: link.read_only,
                        expires_at: link.expires_at,
                    }),
                }),
                _ => Err(refused(parts)),
            };
        }
        match state.app.store.tenant_for_key(key)? {
            Some(id) => Ok(Caller {
                id,
                key_hash: token_hash(key),
                portal: None,
            }),
            None => Err(refused(parts)),
        }
    }
}

/// Buckets kept before the full ones are forgotten.
const MAX_BUCKETS: usize = 65_536;

/// A token bucket per API key: `rate` events per second, bursts of `2 × rate`.
/// A request costs one token per event. A batch larger than the burst is
/// admitted when the bucket is full and leaves it in debt, so the
/// `Retry-After` the next caller gets is always the true wait, and every
/// request that fits the rules can eventually succeed.
pub struct RateLimiter {
    rate: f64,
    buckets: Mutex<HashMap<Vec<u8>, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        RateLimiter {
            rate: per_second as f64,
            buckets: Mutex::default(),
        }
    }

    /// Events per second per key.
    pub fn rate(&self) -> u32 {
        self.rate as u32
    }

    /// [`Self::take`] as the API answers it: a 429 `rate_limited` with
    /// `Retry-After` (whole seconds, at least 1) and the message `explain`
    /// makes of the rate and that wait.
    pub fn admit(
        &self,
        key: &[u8],
        n: usize,
        explain: impl FnOnce(u32, u64) -> String,
    ) -> Result<(), ApiError> {
        self.take(key, n).map_err(|wait| {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            ApiError::TooManyRequests {
                code: "rate_limited",
                message: explain(self.rate(), secs),
                retry_after_secs: secs,
            }
        })
    }

    /// Takes `n` tokens for `key`, or says how long to wait.
    pub fn take(&self, key: &[u8], n: usize) -> Result<(), Duration> {
        self.take_at(key, n, Instant::now())
    }

    /// [`Self::take`] at `now` (the tests' clock: no refill between their
    /// calls, however slowly they run).
    fn take_at(&self, key: &[u8], n: usize, now: Instant) -> Result<(), Duration> {
        let capacity = self.rate * 2.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            // Keys are addresses in one use: forget the buckets that are
            // full again (they would start full anyway).
            let rate = self.rate;
            buckets.retain(|_, (tokens, last)| {
                *tokens + now.duration_since(*last).as_secs_f64() * rate < capacity
            });
        }
        let (tokens, last) = buckets.entry(key.to_vec()).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(capacity);
        *last = now;
        let cost = n as f64;
        // Waiting can never fill the bucket past its capacity.
        let need = cost.min(capacity);
        if *tokens >= need {
            *tokens -= cost;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((need - *tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_limits() {
        let limiter = RateLimiter::new(5);
        let now = Instant::now();
        for _ in 0..10 {
            assert!(limiter.take_at(b"k", 1, now).is_ok());
        }
        let wait = limiter.take_at(b"k", 1, now).unwrap_err();
        assert_eq!(wait, Duration::from_millis(200));
        // Another key has its own bucket.
        assert!(limiter.take_at(b"other", 1, now).is_ok());
        // Tokens come back at the rate.
        let later = now + Duration::from_millis(400);
        assert!(limiter.take_at(b"k", 2, later).is_ok());
        assert!(limiter.take_at(b"k", 1, later).is_err());
    }

    #[test]
    fn a_batch_larger_than_the_burst_gets_in_when_the_bucket_is_full() {
        let limiter = RateLimiter::new(5); // burst 10
        let now = Instant::now();
        assert!(
            limiter.take_at(b"k", 25, now).is_ok(),
            "a full bucket admits it"
        );
        // The bucket is 15 in debt: the wait for one event is the true one.
        let wait = limiter.take_at(b"k", 1, now).unwrap_err();
        assert_eq!(wait, Duration::from_millis(3_200));
        // A second big batch is told how long until the bucket is full.
        let wait = limiter.take_at(b"k", 25, now).unwrap_err();
        assert_eq!(wait, Duration::from_secs(5));
    }

    #[test]
    fn comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
