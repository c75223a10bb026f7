//! The delivery worker: scans the outbox in due order and runs attempts
//! under a global cap (a pool of permits) and a per-subscription cap, so one
//! slow or dead endpoint occupies at most its own share and never delays the
//! others. Each attempt: sign with a fresh timestamp, send, record the
//! attempt, let the retry policy decide, and move the outbox entry — all in
//! one store transaction.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{Instrument, info, info_span, warn};

use crate::app::App;
use crate::deliver::Request;
use crate::retry::{self, Decision};
use crate::sign;
use crate::store::{Attempt, Delivery, DeliveryStatus, StoreError};

/// Outbox entries looked at per scan.
const SCAN_BATCH: usize = 512;
/// Longest sleep between scans when nothing is due sooner.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Attempts in flight, for the caps.
#[derive(Default)]
struct InFlight {
    deliveries: HashSet<String>,
    per_subscription: HashMap<String, u32>,
}

/// Runs attempts for due deliveries.
pub struct Worker {
    app: App,
    permits: Arc<Semaphore>,
    in_flight: Arc<Mutex<InFlight>>,
}

impl Worker {
    pub fn new(app: App) -> Self {
        let workers = app.settings.workers.max(1);
        Worker {
            app,
            permits: Arc::new(Semaphore::new(workers)),
            in_flight: Arc::default(),
        }
    }

    /// Runs until `shutdown` resolves, then stops taking work and lets
    /// in-flight attempts finish for up to the grace period; whatever is left
    /// stays due in the outbox for the next start.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tasks = JoinSet::new();
        loop {
            if let Err(e) = self.dispatch(&mut tasks) {
                warn!(error = %e, "outbox scan failed");
            }
            let wait = self.until_next_due();
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.app.wake.notified() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let grace = self.app.settings.shutdown_grace;
        info!(
            in_flight = tasks.len(),
            grace_ms = grace.as_millis() as u64,
            "delivery worker draining"
        );
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(
                left = tasks.len(),
                "attempts still running at the end of the grace period; they stay due"
            );
            tasks.abort_all();
        }
    }

    /// Test and tooling hook: runs every attempt due now and waits for them.
    pub async fn run_due(&self) -> usize {
        let mut tasks = JoinSet::new();
        let mut total = 0;
        loop {
            match self.dispatch(&mut tasks) {
                Ok(0) if tasks.is_empty() => break,
                Ok(n) => total += n,
                Err(e) => {
                    warn!(error = %e, "outbox scan failed");
                    break;
                }
            }
            if tasks.join_next().await.is_none() {
                break;
            }
        }
        total
    }

    fn until_next_due(&self) -> Duration {
        match self.app.store.next_due() {
            Ok(Some(due)) => {
                let now = self.app.clock.now();
                let wait = due.duration_since(now);
                Duration::try_from(wait)
                    .unwrap_or(Duration::ZERO)
                    .min(IDLE_POLL)
            }
            _ => IDLE_POLL,
        }
    }

    /// Starts attempts for due entries within the caps; returns how many.
    /// Entries already in flight or over their subscription's cap are
    /// skipped without reading the delivery (the outbox value names the
    /// subscription), so a deep backlog on one endpoint costs little.
    fn dispatch(&self, tasks: &mut JoinSet<()>) -> Result<usize, StoreError> {
        let now = self.app.clock.now();
        let mut caps: HashMap<String, u32> = HashMap::new();
        let mut started = 0;
        for entry in self.app.store.due(now).take(SCAN_BATCH) {
            if self.permits.available_permits() == 0 {
                break;
            }
            let entry = entry?;
            let (delivery_id, sub_id) = (entry.delivery_id(), entry.subscription_id());
            if self.lock().deliveries.contains(delivery_id)
                || self
                    .app
                    .unsettled
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(delivery_id)
            {
                continue;
            }
            let cap = match caps.get(sub_id) {
                Some(cap) => *cap,
                None => {
                    let cap = self
                        .app
                        .store
                        .get_subscription(entry.tenant_id(), sub_id)?
                        .map(|s| s.max_in_flight.max(1))
                        .unwrap_or(1);
                    caps.insert(sub_id.to_string(), cap);
                    cap
                }
            };
            {
                let mut in_flight = self.lock();
                match in_flight.per_subscription.get_mut(sub_id) {
                    Some(count) if *count >= cap => continue,
                    Some(count) => *count += 1,
                    None => {
                        in_flight.per_subscription.insert(sub_id.to_string(), 1);
                    }
                }
                in_flight.deliveries.insert(delivery_id.to_string());
            }
            let (delivery_id, sub_id) = (delivery_id.to_string(), sub_id.to_string());
            let permit = self
                .permits
                .clone()
                .try_acquire_owned()
                .expect("checked above; only this loop acquires");
            let app = self.app.clone();
            let in_flight = self.in_flight.clone();
            let span = info_span!(
                "delivery",
                delivery_id = %delivery_id,
                subscription_id = %sub_id,
                event_id = tracing::field::Empty,
                attempt = tracing::field::Empty,
            );
            tasks.spawn(
                async move {
                    let result = match app.store.get_delivery(&delivery_id) {
                        Ok(Some(delivery)) => attempt(&app, delivery).await,
                        Ok(None) => Ok(()),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = result {
                        warn!(error = %e, "recording the attempt failed; it stays due");
                    }
                    drop(permit);
                    let mut in_flight = in_flight.lock().unwrap_or_else(|e| e.into_inner());
                    in_flight.deliveries.remove(&delivery_id);
                    if let Some(n) = in_flight.per_subscription.get_mut(&sub_id) {
                        *n = n.saturating_sub(1);
                    }
                }
                .instrument(span),
            );
            started += 1;
        }
        Ok(started)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One attempt of one delivery, recorded with its consequence.
pub async fn attempt(app: &App, mut d: Delivery) -> Result<(), StoreError> {
    let previous_due = d.next_attempt_at;
    if d.status != DeliveryStatus::Pending {
        // A stale outbox entry (e.g. the delivery was finished by an operator).
        d.next_attempt_at = None;
        return app.store.update_delivery(&d, previous_due);
    }
    let now = app.clock.now();
    let sub = app
        .store
        .get_subscription(&d.tenant_id, &d.subscription_id)?;
    let span = tracing::Span::current();
    span.record("event_id", d.event_id.as_str());
    span.record("attempt", d.attempts.len() + 1);
    let sub = match sub {
        Some(s) if s.enabled => s,
        other => {
            let why = match other {
                Some(s) => format!(
                    "subscription disabled: {}",
                    s.disabled_reason.unwrap_or_else(|| "by an operator".into())
                ),
                None => "subscription deleted".into(),
            };
            finish(&mut d, DeliveryStatus::Failed, Some(why), now);
            return app.store.update_delivery(&d, previous_due);
        }
    };
    let Some(request) = d.request.clone() else {
        finish(
            &mut d,
            DeliveryStatus::Failed,
            Some("nothing to send".into()),
            now,
        );
        return app.store.update_delivery(&d, previous_due);
    };

    let secrets = sub.signing_secrets(now);
    let message = sign::Message {
        delivery_id: &d.id,
        event_type: &d.event_type,
        timestamp: now.as_second(),
        body: request.body.as_bytes(),
    };
    let mut headers = match sign::headers(&sub.signature, &secrets, &message) {
        Ok(h) => h,
        Err(e) => {
            finish(
                &mut d,
                DeliveryStatus::Failed,
                Some(format!("signing failed: {e}")),
                now,
            );
            return app.store.update_delivery(&d, previous_due);
        }
    };
    headers.extend(
        request
            .headers
            .iter()
            .map(|h| (h.name.clone(), h.value.clone())),
    );

    let result = app
        .sender
        .send(
            &Request {
                url: &sub.url,
                body: request.body.as_bytes(),
                content_type: &request.content_type,
                headers: &headers,
                timeout: Duration::from_millis(sub.timeout_ms),
                expect_body: sub.expect_body.as_ref(),
            },
            now,
        )
        .await;
    d.attempts.push(Attempt {
        at: now,
        status: result.status,
        duration_ms: result.duration_ms,
        response_body: result.response_body.clone(),
        error: result.error.clone(),
    });
    let decided_at = app.clock.now();
    let draw = rand::random::<f64>() * 2.0 - 1.0;
    let decision = retry::decide(
        &result.outcome,
        d.attempts.len() as u32,
        &sub.retry,
        decided_at,
        draw,
    );
    info!(status = ?result.status, duration_ms = result.duration_ms, error = ?result.error, decision = ?decision, "attempt");
    match decision {
        Decision::Succeeded => {
            finish(&mut d, DeliveryStatus::Succeeded, None, decided_at);
            app.store.update_delivery(&d, previous_due)?;
            if sub.consecutive_failures != 0 {
                app.store
                    .update_subscription(&sub.tenant_id, &sub.id, |s| {
                        s.consecutive_failures = 0;
                        true
                    })?;
            }
        }
        Decision::RetryAt(at) => {
            d.next_attempt_at = Some(at);
            d.last_error = result.error;
            d.updated_at = decided_at;
            app.store.update_delivery(&d, previous_due)?;
        }
        Decision::GiveUp { reason } => {
            let error = match result.error {
                Some(e) => format!("{e}; {reason}"),
                None => reason,
            };
            finish(&mut d, DeliveryStatus::Failed, Some(error), decided_at);
            app.store.update_delivery(&d, previous_due)?;
            let limit = sub.retry.disable_after_failures;
            app.store.update_subscription(&sub.tenant_id, &sub.id, |s| {
                s.consecutive_failures += 1;
                if limit > 0 && s.consecutive_failures >= limit && s.enabled {
                    s.enabled = false;
                    s.disabled_reason = Some(format!(
                        "{} deliveries in a row failed (limit {limit})",
                        s.consecutive_failures
                    ));
                    s.updated_at = decided_at;
                    warn!(subscription_id = %s.id, "subscription disabled after repeated failures");
                }
                true
            })?;
        }
        Decision::Disable { reason } => {
            let error = result.error.unwrap_or_default();
            finish(
                &mut d,
                DeliveryStatus::Failed,
                Some(format!("{error}; {reason}")),
                decided_at,
            );
            app.store.update_delivery(&d, previous_due)?;
            app.store
                .update_subscription(&sub.tenant_id, &sub.id, |s| {
                    s.enabled = false;
                    s.disabled_reason = Some(reason.clone());
                    s.updated_at = decided_at;
                    true
                })?;
            warn!(subscription_id = %sub.id, %reason, "subscription disabled");
        }
    }
    Ok(())
}

fn finish(d: &mut Delivery, status: DeliveryStatus, error: Option<String>, now: jiff::Timestamp) {
    d.status = status;
    d.next_attempt_at = None;
    d.last_error = error;
    d.updated_at = now;
}
