//! The delivery worker: leases due deliveries from the [`Queue`] — fairly
//! across tenants and their subscriptions, within the global, per-tenant and
//! per-subscription caps — and runs each attempt in its own task: sign with
//! a fresh timestamp, send, record the attempt, let the retry policy decide,
//! and move the outbox entry in one store transaction; then give the lease
//! back with the retry's due time. A slow or dead endpoint holds at most its
//! own caps; while every due delivery is blocked by a cap, the worker sleeps.

use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;
use tokio::task::JoinSet;
use tracing::{Instrument, info, info_span, warn};

use crate::clock::from_millis;
use crate::deliver::{Request, Stage};
use crate::notify;
use crate::queue::{Lease, Queue};
use crate::retry::{self, Decision};
use crate::sign;
use crate::store::{Attempt, Delivery, DeliveryStatus, StoreError, Subscription};
use crate::telemetry::{self, AttemptOutcome, DisableReason};
use crate::traces;

/// Longest sleep when nothing is due sooner (a manual clock in tests, and a
/// bound on how late a wake-up can be).
const IDLE_POLL: Duration = Duration::from_millis(500);
/// After a storage error while recording an attempt, when it is tried again.
const AFTER_STORE_ERROR: jiff::SignedDuration = jiff::SignedDuration::from_secs(5);

/// Runs attempts for due deliveries.
pub struct Worker {
    stage: Stage,
    queue: Queue,
}

impl Worker {
    pub fn new(stage: Stage) -> Self {
        Worker {
            queue: stage.queue.clone(),
            stage,
        }
    }

    /// Runs until `shutdown` resolves, then stops taking work and lets
    /// in-flight attempts finish for up to the grace period; whatever is left
    /// stays due in the outbox for the next start.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tasks = JoinSet::new();
        loop {
            self.dispatch(&mut tasks);
            let wait = self.until_next_due();
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.queue.notified() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let grace = self.stage.shutdown_grace;
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
            total += self.dispatch(&mut tasks);
            if tasks.join_next().await.is_none() {
                break;
            }
        }
        total
    }

    fn until_next_due(&self) -> Duration {
        match self.queue.next_due() {
            Some(due) => {
                let wait = due.duration_since(self.stage.clock.now());
                Duration::try_from(wait)
                    .unwrap_or(Duration::ZERO)
                    .min(IDLE_POLL)
            }
            None => IDLE_POLL,
        }
    }

    /// Starts an attempt for every lease the queue grants now; returns how many.
    fn dispatch(&self, tasks: &mut JoinSet<()>) -> usize {
        let mut started = 0;
        while let Some(lease) = self.queue.lease() {
            let span = info_span!(
                "delivery",
                delivery_id = %lease.delivery_id,
                subscription_id = %lease.subscription_id,
                tenant_id = %lease.tenant_id,
                event_id = tracing::field::Empty,
                attempt = tracing::field::Empty,
            );
            // The attempt's own control writes (a failure count, a
            // subscription disabled) are told to no client: they do not wait
            // for other nodes' read leases.
            tasks.spawn(
                crate::store::cluster::readers::unacknowledged(run_lease(
                    self.stage.clone(),
                    lease,
                ))
                .instrument(span),
            );
            started += 1;
        }
        started
    }
}

/// One leased attempt, then the lease back to the queue.
async fn run_lease(stage: Stage, lease: Lease) {
    let result = match stage.store.get_delivery(&lease.delivery_id) {
        Ok(Some(delivery)) => attempt(&stage, delivery, Some(from_millis(lease.due_ms))).await,
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    let next = match result {
        Ok(next) => next,
        Err(e) => {
            warn!(error = %e, "recording the attempt failed; it stays due");
            Some(stage.clock.now() + AFTER_STORE_ERROR)
        }
    };
    stage.queue.complete(&lease, next);
}

/// One attempt of one delivery, recorded with its consequence; `leased`:
/// the due time of the outbox entry it was taken from. Returns when the
/// next attempt is due, if the delivery is still pending.
pub async fn attempt(
    stage: &Stage,
    mut d: Delivery,
    leased: Option<Timestamp>,
) -> Result<Option<Timestamp>, StoreError> {
    record_attempt(stage, &mut d, leased).await?;
    Ok(d.next_attempt_at
        .filter(|_| d.status == DeliveryStatus::Pending))
}

async fn record_attempt(
    stage: &Stage,
    d: &mut Delivery,
    leased: Option<Timestamp>,
) -> Result<(), StoreError> {
    if d.status != DeliveryStatus::Pending {
        // A stale outbox entry (e.g. the delivery was finished by an operator).
        d.next_attempt_at = None;
        return record(stage, d, leased).await;
    }
    let now = stage.clock.now();
    let ops = notify::is_ops(&d.subscription_id);
    let sub = notify::endpoint_of(&stage.store, d)?;
    let span = tracing::Span::current();
    span.record("event_id", d.event_id.as_str());
    span.record("attempt", d.attempts.len() + 1);
    let sub = match sub {
        Some(s) if s.enabled => s,
        other => {
            let why = match other {
                Some(s) => format!(
                    "subscription disabled: {}",
                    s.disabled_reason.as_deref().unwrap_or("by an operator")
                ),
                None => {
                    // Nothing will retry or dismiss it: its line drains
                    // (each waiting delivery fails the same way in turn)
                    // instead of stopping for good.
                    if let Some(slot) = d.order.as_mut() {
                        slot.block = false;
                    }
                    "subscription deleted".into()
                }
            };
            finish(d, DeliveryStatus::Failed, Some(why), now);
            return record(stage, d, leased).await;
        }
    };
    // Taken out while it is sent (not copied per attempt), put back before
    // the record is written.
    let Some(request) = d.request.take() else {
        finish(
            d,
            DeliveryStatus::Failed,
            Some("nothing to send".into()),
            now,
        );
        return record(stage, d, leased).await;
    };
    // The event's own body, for a delivery without a plugin: cached since
    // its acceptance, or made again from the stored event.
    let from_event = match request.body_from_event {
        false => None,
        true => match stage.store.event_body(&d.tenant_id, &d.event_id) {
            Ok(Some(body)) => Some(body),
            Ok(None) => {
                d.request = Some(request);
                let why = "its event is no longer stored, so there is no body to send";
                finish(d, DeliveryStatus::Failed, Some(why.into()), now);
                return record(stage, d, leased).await;
            }
            Err(e) => {
                d.request = Some(request);
                return Err(e);
            }
        },
    };
    let body = from_event.as_deref().unwrap_or(&request.body);

    let secrets = sub.signing_secrets(now);
    let message = sign::Message {
        delivery_id: &d.id,
        event_type: request.event_name.as_deref().unwrap_or(&d.event_type),
        timestamp: now.as_second(),
        body: body.as_bytes(),
    };
    let mut headers = match sign::headers(&sub.signature, &secrets, &message) {
        Ok(h) => h,
        Err(e) => {
            d.request = Some(request);
            finish(
                d,
                DeliveryStatus::Failed,
                Some(format!("signing failed: {e}")),
                now,
            );
            return record(stage, d, leased).await;
        }
    };
    headers.extend(
        request
            .headers
            .iter()
            .map(|h| (h.name.clone(), h.value.clone())),
    );

    let kind = sub.destination.as_ref().map_or("http", |d| d.kind());
    // A child of its event's span, wherever and whenever it runs.
    let span = info_span!(
        target: traces::TARGET,
        "attempt",
        otel.kind = "client",
        delivery.id = %d.id,
        subscription.id = %sub.id,
        attempt = (d.attempts.len() + 1) as i64,
        retry = d.attempts.len() as i64,
        destination = kind,
        http.response.status_code = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    if traces::enabled() {
        let parent = stage
            .store
            .get_event(&d.tenant_id, &d.event_id)
            .ok()
            .flatten()
            .and_then(|e| e.trace);
        traces::set_parent(&span, parent.as_deref());
        if sub.trace_context
            && let Some(traceparent) = traces::traceparent(&span)
        {
            headers.push(("traceparent".into(), traceparent));
        }
    }
    let result = stage
        .sender
        .send(
            &Request {
                url: &sub.url,
                destination: sub.destination.as_ref(),
                delivery_id: &d.id,
                subscription_id: &sub.id,
                event_type: message.event_type,
                body: body.as_bytes(),
                content_type: &request.content_type,
                headers: &headers,
                timeout: Duration::from_millis(sub.timeout_ms),
                expect_body: sub.expect_body.as_ref(),
                tls: sub.tls.as_ref(),
            },
            now,
        )
        .instrument(span.clone())
        .await;
    d.request = Some(request);
    d.attempts.push(Attempt {
        at: now,
        status: result.status,
        duration_ms: result.duration_ms,
        response_body: result.response_body.clone(),
        error: result.error.clone(),
    });
    let decided_at = stage.clock.now();
    // A receiver that asks for a pause gets it for the whole subscription,
    // not only this delivery (within the policy's cap on Retry-After).
    if let Some(pause) = retry::requested_pause(&result.outcome, &sub.retry)
        && let Ok(pause) = jiff::SignedDuration::try_from(pause)
    {
        stage.queue.pause(&sub.id, decided_at + pause);
    }
    let draw = rand::random::<f64>() * 2.0 - 1.0;
    let decision = retry::decide(
        &result.outcome,
        d.attempts.len() as u32,
        &sub.retry,
        decided_at,
        draw,
    );
    info!(status = ?result.status, duration_ms = result.duration_ms, error = ?result.error, decision = ?decision, "attempt");
    if !span.is_disabled() {
        if let Some(status) = result.status {
            span.record("http.response.status_code", i64::from(status));
        }
        span.record(
            "outcome",
            match decision {
                Decision::Succeeded => "succeeded",
                Decision::RetryAt(_) => "retry",
                Decision::GiveUp { .. } => "failed",
                Decision::Disable { .. } => "disabled",
            },
        );
        if let Some(error) = &result.error {
            traces::set_error(&span, error);
        }
    }
    drop(span);
    let took = Duration::from_millis(result.duration_ms);
    match decision {
        Decision::Succeeded => {
            telemetry::attempt(AttemptOutcome::Succeeded, kind, took);
            telemetry::delivered(
                Duration::try_from(decided_at.duration_since(d.created_at)).unwrap_or_default(),
            );
            finish(d, DeliveryStatus::Succeeded, None, decided_at);
            record(stage, d, leased).await?;
            if sub.consecutive_failures != 0 && !ops {
                stage
                    .store
                    .update_subscription(&sub.tenant_id, &sub.id, |s| {
                        s.consecutive_failures = 0;
                        true
                    })
                    .await?;
            }
        }
        Decision::RetryAt(at) => {
            telemetry::attempt(AttemptOutcome::Retry, kind, took);
            d.next_attempt_at = Some(at);
            d.last_error = result.error;
            d.updated_at = decided_at;
            record(stage, d, leased).await?;
        }
        Decision::GiveUp { reason } => {
            telemetry::attempt(AttemptOutcome::Failed, kind, took);
            let error = match result.error {
                Some(e) => format!("{e}; {reason}"),
                None => reason,
            };
            finish(d, DeliveryStatus::Failed, Some(error.clone()), decided_at);
            record(stage, d, leased).await?;
            if !ops {
                let limit = sub.retry.disable_after_failures;
                let failed = Failure {
                    why: DisableReason::Failures,
                    error,
                    at: decided_at,
                };
                after_failure(stage, &sub, failed, |s| {
                    s.consecutive_failures += 1;
                    (limit > 0 && s.consecutive_failures >= limit).then(|| {
                        format!(
                            "{} deliveries in a row failed (limit {limit})",
                            s.consecutive_failures
                        )
                    })
                })
                .await?;
            }
        }
        Decision::Disable { reason } => {
            let error = format!("{}; {reason}", result.error.unwrap_or_default());
            finish(d, DeliveryStatus::Failed, Some(error.clone()), decided_at);
            record(stage, d, leased).await?;
            if ops {
                // The ops endpoint is never disabled: it is how owners hear of it.
                telemetry::attempt(AttemptOutcome::Failed, kind, took);
            } else {
                telemetry::attempt(AttemptOutcome::Disabled, kind, took);
                let failed = Failure {
                    why: DisableReason::Gone,
                    error,
                    at: decided_at,
                };
                after_failure(stage, &sub, failed, |_| Some(reason.clone())).await?;
            }
        }
    }
    Ok(())
}

/// A delivery that failed for good, and what it may do to its subscription.
struct Failure {
    why: DisableReason,
    /// The delivery's last error, for the owner's notification.
    error: String,
    at: Timestamp,
}

/// Records a failed delivery on its subscription: `mark` updates it and
/// returns why it must be disabled, if it must. When that disables an
/// enabled subscription, the owner is told (once: a subscription already
/// disabled is not disabled again).
async fn after_failure(
    stage: &Stage,
    sub: &Subscription,
    failed: Failure,
    mark: impl Fn(&mut Subscription) -> Option<String>,
) -> Result<(), StoreError> {
    let changed = stage
        .store
        .change_subscription(&sub.tenant_id, &sub.id, |s| {
            if let Some(reason) = mark(s)
                && s.enabled
            {
                s.enabled = false;
                s.disabled_reason = Some(reason);
                s.updated_at = failed.at;
            }
            true
        })
        .await?;
    if let Some((before, s)) = changed
        && before.enabled
        && !s.enabled
    {
        warn!(subscription_id = %s.id, reason = ?s.disabled_reason, "subscription disabled");
        let change = notify::Change::Disabled {
            why: failed.why,
            last_error: Some(failed.error),
        };
        notify::subscription_changed(&stage.queue, &s, change, failed.at).await?;
    }
    Ok(())
}

/// Records an attempt's outcome. When it finishes the head of an ordered
/// line, the next delivery of the line becomes pending in the same write,
/// which the store makes durable before it returns: the next one goes to
/// the queue only then (a crash must not undo a delivery a worker already
/// sent ahead of its head).
async fn record(stage: &Stage, d: &Delivery, leased: Option<Timestamp>) -> Result<(), StoreError> {
    if let Some(next) = stage.store.record_delivery(d, leased).await? {
        telemetry::line_advanced();
        stage.queue.rescheduled(&next);
    }
    Ok(())
}

fn finish(d: &mut Delivery, status: DeliveryStatus, error: Option<String>, now: jiff::Timestamp) {
    d.status = status;
    d.next_attempt_at = None;
    d.last_error = error;
    d.updated_at = now;
}
