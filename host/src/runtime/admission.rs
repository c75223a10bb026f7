//! Plugin admission: every plugin call (ingest, dry-run, test, window flush,
//! config check) takes a slot here first. The slots are the instance pool's
//! size, so the pooling allocator never runs out mid-call (an accepted event
//! never fails "for lack of capacity"); each tenant may hold at most its
//! share of them, so one tenant's slow or looping plugin cannot starve the
//! others; and the wait is bounded, so a caller gets a clear "busy, retry"
//! instead of hanging.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// No slot could be had within the wait: nothing was run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "every plugin slot this tenant may use is busy (plugins.max_concurrent_calls = {pool}, {share} per tenant); retry in {retry_after_secs} s"
)]
pub struct Busy {
    pub pool: u32,
    pub share: u32,
    pub retry_after_secs: u64,
}

/// A slot for one plugin call; released on drop.
#[derive(Debug)]
pub struct Permit {
    _tenant: OwnedSemaphorePermit,
    _pool: OwnedSemaphorePermit,
}

/// The admission queue. Cheap to clone.
#[derive(Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Arc<Semaphore>,
    pool_size: u32,
    /// Slots one tenant may hold at once.
    share: u32,
    tenants: Mutex<HashMap<String, Arc<Semaphore>>>,
    wait: Duration,
}

impl Admission {
    /// `pool` slots in all, `share_percent` of them (at least one) per
    /// tenant, callers waiting at most `wait` for one.
    pub fn new(pool: u32, share_percent: u32, wait: Duration) -> Self {
        let pool = pool.max(1);
        let share =
            ((u64::from(pool) * u64::from(share_percent.clamp(1, 100))) / 100).max(1) as u32;
        Admission {
            inner: Arc::new(Inner {
                pool: Arc::new(Semaphore::new(pool as usize)),
                pool_size: pool,
                share,
                tenants: Mutex::default(),
                wait,
            }),
        }
    }

    /// Slots one tenant may hold at once.
    pub fn share(&self) -> u32 {
        self.inner.share
    }

    /// Waits (bounded) for a slot for `tenant_id`: first within its share,
    /// then in the pool.
    pub async fn admit(&self, tenant_id: &str) -> Result<Permit, Busy> {
        let inner = &self.inner;
        let tenant = inner
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(tenant_id.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(inner.share as usize)))
            .clone();
        let busy = Busy {
            pool: inner.pool_size,
            share: inner.share,
            retry_after_secs: inner.wait.as_secs().max(1),
        };
        let deadline = tokio::time::Instant::now() + inner.wait;
        let refused = |_| {
            crate::telemetry::plugin_busy();
            busy.clone()
        };
        let tenant = tokio::time::timeout_at(deadline, tenant.acquire_owned())
            .await
            .map_err(refused)?
            .map_err(|_| busy.clone())?;
        let pool = tokio::time::timeout_at(deadline, inner.pool.clone().acquire_owned())
            .await
            .map_err(refused)?
            .map_err(|_| busy.clone())?;
        Ok(Permit {
            _tenant: tenant,
            _pool: pool,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tenant_holds_at_most_its_share_and_others_still_get_slots() {
        // Real time: a short wait where the answer is "busy", a patient one
        // where a slot must come (a slow machine may take a while to run
        // the spawned waiter).
        let admission = Admission::new(4, 50, Duration::from_millis(100));
        assert_eq!(admission.share(), 2);
        let _a1 = admission.admit("a").await.unwrap();
        let _a2 = admission.admit("a").await.unwrap();
        let busy = admission.admit("a").await.unwrap_err();
        assert_eq!(busy.retry_after_secs, 1);
        assert!(
            busy.to_string()
                .contains("plugins.max_concurrent_calls = 4")
        );

        let admission = Admission::new(4, 50, Duration::from_secs(60));
        let a1 = admission.admit("a").await.unwrap();
        let _a2 = admission.admit("a").await.unwrap();
        let _b1 = admission.admit("b").await.unwrap();
        let _b2 = admission.admit("b").await.unwrap();
        // The pool is full: c waits, and gets a slot when a frees one.
        let c = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit("c").await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(a1);
        assert_eq!(c.await.unwrap(), Ok(()));
    }

    #[test]
    fn the_share_is_at_least_one_slot() {
        assert_eq!(Admission::new(1, 50, Duration::ZERO).share(), 1);
        assert_eq!(Admission::new(256, 25, Duration::ZERO).share(), 64);
    }
}
