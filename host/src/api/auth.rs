//! Who is calling: the operator (token from the config or generated at first
//! start) or a tenant (an API key, stored hashed). Both come as
//! `Authorization: Bearer <token>`; anything else is a 401.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::{ApiError, ApiState};
use crate::store::token_hash;

fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
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
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        if same(&token_hash(token), &state.admin_token_hash) {
            Ok(Operator)
        } else {
            Err(ApiError::Unauthorized)
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
        let key = bearer(parts).ok_or(ApiError::Unauthorized)?;
        match state.app.store.tenant_for_key(key)? {
            Some(id) => Ok(Tenant {
                id,
                key_hash: token_hash(key),
            }),
            None => Err(ApiError::Unauthorized),
        }
    }
}

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

    /// Takes `n` tokens for `key`, or says how long to wait.
    pub fn take(&self, key: &[u8], n: usize) -> Result<(), Duration> {
        self.take_at(key, n, Instant::now())
    }

    /// [`Self::take`] at `now` (the tests' clock: no refill between their
    /// calls, however slowly they run).
    fn take_at(&self, key: &[u8], n: usize, now: Instant) -> Result<(), Duration> {
        let capacity = self.rate * 2.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
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
