//! `wasmhook listen`: deliveries to a developer's machine without a public
//! URL. A subscription whose destination is `listen` is delivered to the
//! CLI over the CLI's own connection to the server (a server-sent-events
//! stream, `GET /v1/subscriptions/{id}/listen`); the CLI forwards each
//! delivery to its local URL and posts the local answer back
//! (`POST /v1/subscriptions/{id}/listen/answers`), which becomes the
//! attempt's outcome. So the SSRF guard is not involved (the server never
//! connects anywhere) and everything else — the plugin, the signature,
//! retries, the delivery log — is the subscription's as usual.
//!
//! In cluster mode the attempt may run on another node than the one the CLI
//! is connected to: that node asks over the cluster's NATS
//! (`wasmhook.listen.<subscription>`, answered by the node holding the
//! stream), and "no responders" says no CLI is connected anywhere.
//!
//! A listen subscription is temporary: the CLI deletes it when it stops,
//! and [`sweep`] deletes it once no CLI has been connected for its
//! `expire_after_secs` (the CLI was killed, or its machine went away).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use super::{AttemptResult, RECORDED_BODY_BYTES, Request};
use crate::retry::Outcome;
use crate::store::{Destination, Store, StoreError, Subscription};

/// Deliveries waiting to be written to one CLI's stream.
const STREAM_BUFFER: usize = 64;
/// The subject a node holding a CLI's stream answers on, per subscription.
const SUBJECT_PREFIX: &str = "wasmhook.listen.";

/// One delivery attempt as the CLI receives it (an SSE `delivery` event).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Frame {
    /// This attempt's id: the answer names it.
    pub id: String,
    pub delivery_id: String,
    pub event_type: String,
    pub content_type: String,
    /// The signature headers and the plugin's headers, as the POST would
    /// carry them.
    pub headers: Vec<(String, String)>,
    /// The body, base64 (a plugin's output need not be UTF-8).
    pub body: String,
    /// How long the server waits for the answer (the subscription's
    /// timeout).
    pub timeout_ms: u64,
}

/// What the CLI's local URL answered (or why it could not).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// The [`Frame`]'s id.
    pub id: String,
    /// The local answer's status; none when the local URL could not be
    /// reached.
    pub status: Option<u16>,
    /// The local answer's body (recorded truncated).
    pub body: Option<String>,
    #[serde(default)]
    pub duration_ms: u64,
    /// Why the local URL could not be reached.
    pub error: Option<String>,
}

/// A listen subscription as [`sweep`] follows it.
struct Seen {
    tenant_id: String,
    absent_since: Option<Instant>,
}

/// A CLI connected to this node.
struct Session {
    frames: mpsc::Sender<Frame>,
    /// Tells a replaced connection from the current one.
    generation: u64,
    /// Cluster mode: the task answering for it on NATS.
    responder: Option<tokio::task::AbortHandle>,
}

/// The CLIs connected to this node, and the attempts waiting for their
/// answers.
#[derive(Default)]
pub struct Listeners {
    sessions: Mutex<HashMap<String, Session>>,
    /// By frame id: the subscription, and where its answer goes.
    waiting: Mutex<HashMap<String, (String, oneshot::Sender<Answer>)>>,
    /// The listen subscriptions this node knows of, by id: their tenant,
    /// and since when no CLI has been connected anywhere (None: one is),
    /// what [`sweep`] measures expiry from.
    seen: Mutex<HashMap<String, Seen>>,
    generation: std::sync::atomic::AtomicU64,
    /// Cluster mode: the cluster's NATS connection.
    nats: OnceLock<async_nats::Client>,
    /// Set at shutdown: the streams end, so that the server can stop.
    closing: OnceLock<watch::Sender<bool>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Listeners {
    /// Cluster mode: attempts reach CLIs connected to other nodes.
    pub fn set_cluster(&self, client: async_nats::Client) {
        let _ = self.nats.set(client);
    }

    fn closing(&self) -> &watch::Sender<bool> {
        self.closing.get_or_init(|| watch::channel(false).0)
    }

    /// Ends every stream (shutdown): the CLIs reconnect to another node or
    /// once this one is back. The attempts waiting here end at once.
    pub fn close(&self) {
        self.closing().send_replace(true);
        for (_, session) in lock(&self.sessions).drain() {
            if let Some(r) = session.responder {
                r.abort();
            }
        }
        lock(&self.waiting).clear();
    }

    /// Ends the stream of a subscription deleted or changed away from
    /// `listen`.
    pub fn disconnect(&self, subscription_id: &str) {
        if let Some(r) = lock(&self.sessions)
            .remove(subscription_id)
            .and_then(|s| s.responder)
        {
            r.abort();
        }
    }

    /// A listen subscription was created here: it expires if no CLI
    /// connects in time.
    pub fn created(&self, tenant_id: &str, subscription_id: &str) {
        self.mark(tenant_id, subscription_id, false);
    }

    /// Records whether a CLI is connected for the subscription (`here`),
    /// or since when none is.
    fn mark(&self, tenant_id: &str, subscription_id: &str, present: bool) {
        let mut seen = lock(&self.seen);
        let entry = seen
            .entry(subscription_id.to_string())
            .or_insert_with(|| Seen {
                tenant_id: tenant_id.to_string(),
                absent_since: None,
            });
        if present {
            entry.absent_since = None;
        } else {
            entry.absent_since.get_or_insert_with(Instant::now);
        }
    }

    /// Whether an attempt still waits for this frame (one that timed out
    /// is not sent to the CLI).
    fn waits_for(&self, frame_id: &str) -> bool {
        lock(&self.waiting).contains_key(frame_id)
    }

    /// A CLI connects for `subscription_id` (replacing an earlier
    /// connection, which ends): the stream of its frames, which ends at
    /// shutdown, when replaced or disconnected, or when `still_valid`
    /// (asked every [`RECHECK_EVERY`]: the key not revoked, the
    /// subscription still a listen one) says no. Dropping the stream
    /// disconnects.
    pub fn connect<F>(
        self: &Arc<Self>,
        tenant_id: &str,
        subscription_id: &str,
        still_valid: F,
    ) -> impl futures_util::Stream<Item = Frame> + Send + use<F>
    where
        F: Fn() -> bool + Send + Sync + 'static,
    {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let responder = self.nats.get().cloned().map(|client| {
            tokio::spawn(respond(client, self.clone(), subscription_id.to_string())).abort_handle()
        });
        let old = lock(&self.sessions).insert(
            subscription_id.to_string(),
            Session {
                frames: tx,
                generation,
                responder,
            },
        );
        if let Some(old) = old.and_then(|s| s.responder) {
            old.abort();
        }
        self.mark(tenant_id, subscription_id, true);
        let guard = Connected {
            hub: self.clone(),
            tenant_id: tenant_id.to_string(),
            subscription_id: subscription_id.to_string(),
            generation,
        };
        let closing = self.closing().subscribe();
        let recheck =
            tokio::time::interval_at(tokio::time::Instant::now() + RECHECK_EVERY, RECHECK_EVERY);
        futures_util::stream::unfold(
            (rx, guard, closing, recheck, still_valid),
            |(mut rx, guard, mut closing, mut recheck, still_valid)| async move {
                loop {
                    let frame = tokio::select! {
                        frame = rx.recv() => frame?,
                        _ = closing.wait_for(|c| *c) => return None,
                        _ = recheck.tick() => {
                            if still_valid() {
                                continue;
                            }
                            return None;
                        }
                    };
                    // An attempt that timed out meanwhile is not sent.
                    if guard.hub.waits_for(&frame.id) {
                        return Some((frame, (rx, guard, closing, recheck, still_valid)));
                    }
                }
            },
        )
    }

    /// The CLI's answer to one of its subscription's frames. False: no
    /// attempt of that subscription is waiting for it (it timed out, or the
    /// id is unknown). In cluster mode the answer may come to another node
    /// than the stream's: it is passed on to that one.
    pub async fn answer(&self, subscription_id: &str, answer: Answer) -> bool {
        if self.answer_here(subscription_id, &answer) {
            return true;
        }
        let Some(client) = self.nats.get() else {
            return false;
        };
        let Ok(payload) = serde_json::to_vec(&Message::Answer(answer)) else {
            return false;
        };
        let request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(Duration::from_secs(5)));
        match client
            .send_request(format!("{SUBJECT_PREFIX}{subscription_id}"), request)
            .await
        {
            Ok(reply) => reply.payload.as_ref() == b"true",
            Err(_) => false,
        }
    }

    fn answer_here(&self, subscription_id: &str, answer: &Answer) -> bool {
        let mut waiting = lock(&self.waiting);
        if waiting
            .get(&answer.id)
            .is_none_or(|(sub, _)| sub != subscription_id)
        {
            return false;
        }
        let (_, tx) = waiting.remove(&answer.id).expect("checked above");
        tx.send(answer.clone()).is_ok()
    }

    /// Whether a CLI is connected to this node for the subscription.
    fn connected_here(&self, subscription_id: &str) -> bool {
        lock(&self.sessions).contains_key(subscription_id)
    }

    /// One attempt: the frame to the CLI (here, or through the node that
    /// has it), its answer as the attempt's result.
    pub async fn attempt(&self, subscription_id: &str, req: &Request<'_>) -> AttemptResult {
        let started = Instant::now();
        let frame = Frame {
            id: crate::util::new_id("lsn"),
            delivery_id: req.delivery_id.to_string(),
            event_type: req.event_type.to_string(),
            content_type: req.content_type.to_string(),
            headers: req.headers.to_vec(),
            body: base64::engine::general_purpose::STANDARD.encode(req.body),
            timeout_ms: req.timeout.as_millis() as u64,
        };
        let answer = match self.here(subscription_id, frame.clone(), req.timeout).await {
            Some(answer) => answer,
            None => match self.nats.get() {
                Some(client) => self.elsewhere(client, subscription_id, &frame, req).await,
                None => Err(NOT_CONNECTED.to_string()),
            },
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        match answer {
            Ok(answer) => result_of(answer, duration_ms),
            Err(error) => AttemptResult {
                outcome: Outcome::Transport,
                status: None,
                duration_ms,
                response_body: None,
                error: Some(error),
            },
        }
    }

    /// Through a CLI connected here; None if there is none.
    async fn here(
        &self,
        subscription_id: &str,
        frame: Frame,
        timeout: Duration,
    ) -> Option<Result<Answer, String>> {
        let frames = lock(&self.sessions)
            .get(subscription_id)
            .map(|s| s.frames.clone())?;
        let (tx, rx) = oneshot::channel();
        let id = frame.id.clone();
        lock(&self.waiting).insert(id.clone(), (subscription_id.to_string(), tx));
        let result = tokio::time::timeout(timeout, async {
            frames
                .send(frame)
                .await
                .map_err(|_| "the listening CLI disconnected".to_string())?;
            rx.await
                .map_err(|_| "the listening CLI disconnected before answering".to_string())
        })
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "timeout: the listening CLI gave no answer within {} ms",
                timeout.as_millis()
            ))
        });
        lock(&self.waiting).remove(&id);
        Some(result)
    }

    /// Cluster mode: through the node a CLI is connected to.
    async fn elsewhere(
        &self,
        client: &async_nats::Client,
        subscription_id: &str,
        frame: &Frame,
        req: &Request<'_>,
    ) -> Result<Answer, String> {
        let payload =
            serde_json::to_vec(&Message::Frame(frame.clone())).map_err(|e| e.to_string())?;
        let request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(req.timeout + Duration::from_secs(1)));
        match client
            .send_request(format!("{SUBJECT_PREFIX}{subscription_id}"), request)
            .await
        {
            Ok(message) => serde_json::from_slice::<Result<Answer, String>>(&message.payload)
                .map_err(|e| format!("the node with the listening CLI answered badly: {e}"))?,
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                Err(NOT_CONNECTED.to_string())
            }
            Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => Err(format!(
                "timeout: the listening CLI gave no answer within {} ms",
                req.timeout.as_millis()
            )),
            Err(e) => Err(format!("reaching the listening CLI's node: {e}")),
        }
    }

    /// Whether a CLI is connected for the subscription on any node.
    async fn presence(&self, subscription_id: &str) -> Presence {
        if self.connected_here(subscription_id) {
            return Presence::Present;
        }
        let Some(client) = self.nats.get() else {
            return Presence::Absent;
        };
        let Ok(payload) = serde_json::to_vec(&Message::Ping) else {
            return Presence::Unknown;
        };
        let request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(Duration::from_secs(2)));
        match client
            .send_request(format!("{SUBJECT_PREFIX}{subscription_id}"), request)
            .await
        {
            Ok(_) => Presence::Present,
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Presence::Absent,
            Err(_) => Presence::Unknown,
        }
    }
}

/// What nodes ask the node a CLI is connected to.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Message {
    /// Is a CLI connected? (Any reply says yes.)
    Ping,
    /// An attempt: the reply is `Result<Answer, String>`.
    Frame(Frame),
    /// The CLI's answer posted to another node: the reply is `true` if an
    /// attempt took it.
    Answer(Answer),
}

/// How often a stream checks that its key and subscription still hold.
pub const RECHECK_EVERY: Duration = Duration::from_secs(15);

/// Whether a CLI is connected for a subscription on some node.
enum Presence {
    Present,
    /// No node answers for it.
    Absent,
    /// NATS could not say (a timeout, a reconnect): decide nothing.
    Unknown,
}

/// What an attempt records when no CLI listens.
const NOT_CONNECTED: &str = "no `wasmhook listen` is connected for this subscription";

/// The attempt's result from the local answer, classified as an HTTP
/// answer is.
fn result_of(answer: Answer, duration_ms: u64) -> AttemptResult {
    let body = answer
        .body
        .map(|b| crate::util::truncate(&b, RECORDED_BODY_BYTES));
    match answer.status {
        Some(code) if (200..300).contains(&code) => AttemptResult {
            outcome: Outcome::Delivered,
            status: Some(code),
            duration_ms,
            response_body: body,
            error: None,
        },
        Some(code) => AttemptResult {
            outcome: Outcome::Status {
                code,
                retry_after: None,
            },
            status: Some(code),
            duration_ms,
            response_body: body,
            error: Some(format!("HTTP {code} (from the local URL)")),
        },
        None => AttemptResult {
            outcome: Outcome::Transport,
            status: None,
            duration_ms,
            response_body: None,
            error: Some(format!(
                "local: {}",
                answer.error.as_deref().unwrap_or("no answer")
            )),
        },
    }
}

/// Removes a session when its stream is dropped (the CLI went away).
struct Connected {
    hub: Arc<Listeners>,
    tenant_id: String,
    subscription_id: String,
    generation: u64,
}

impl Drop for Connected {
    fn drop(&mut self) {
        let mut sessions = lock(&self.hub.sessions);
        if sessions
            .get(&self.subscription_id)
            .is_some_and(|s| s.generation == self.generation)
            && let Some(s) = sessions.remove(&self.subscription_id)
            && let Some(r) = s.responder
        {
            r.abort();
        }
        drop(sessions);
        self.hub.mark(&self.tenant_id, &self.subscription_id, false);
    }
}

/// Cluster mode: answers other nodes' attempts (and presence pings) for a
/// CLI connected here, until aborted.
async fn respond(client: async_nats::Client, hub: Arc<Listeners>, subscription_id: String) {
    let subject = format!("{SUBJECT_PREFIX}{subscription_id}");
    let mut requests = loop {
        match client.subscribe(subject.clone()).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "listen: cannot answer other nodes for a CLI yet; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    while let Some(message) = requests.next().await {
        let Some(reply) = message.reply.clone() else {
            continue;
        };
        let hub = hub.clone();
        let client = client.clone();
        let subscription_id = subscription_id.clone();
        tokio::spawn(async move {
            // Only the node with the CLI answers: another node's stale
            // responder stays silent rather than answer "not here".
            let payload = match serde_json::from_slice::<Message>(&message.payload) {
                Ok(Message::Ping) if hub.connected_here(&subscription_id) => b"pong".to_vec(),
                Ok(Message::Answer(answer)) if hub.answer_here(&subscription_id, &answer) => {
                    b"true".to_vec()
                }
                Ok(Message::Frame(frame)) => {
                    let timeout = Duration::from_millis(frame.timeout_ms);
                    match hub.here(&subscription_id, frame, timeout).await {
                        Some(answer) => serde_json::to_vec(&answer).unwrap_or_default(),
                        None => return,
                    }
                }
                _ => return,
            };
            let _ = client.publish(reply, payload.into()).await;
        });
    }
}

/// How often [`sweep`] looks for expired listen subscriptions.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Every this many sweeps, every tenant's subscriptions are read (to find
/// listen subscriptions this node did not create, e.g. after a restart).
const FULL_SWEEP_EVERY: u64 = 30;

/// Deletes the listen subscriptions whose CLI has been gone longer than
/// their `expire_after_secs`. `round` counts the calls: most look only at
/// the subscriptions this node knows of; every [`FULL_SWEEP_EVERY`]th
/// reads them all.
pub async fn sweep(store: &Store, hub: &Listeners, round: u64) -> Result<usize, StoreError> {
    if round.is_multiple_of(FULL_SWEEP_EVERY) {
        // The routes are each tenant's subscriptions decoded once and
        // cached: this reads no record that did not change.
        let mut found = Vec::new();
        for tenant in store.list_tenants()? {
            match store.routes(&tenant.id) {
                Ok(subs) => found.extend(
                    subs.iter()
                        .filter(|s| matches!(s.destination, Some(Destination::Listen { .. })))
                        .map(|s| (s.id.clone(), tenant.id.clone())),
                ),
                Err(e) => {
                    tracing::warn!(tenant_id = %tenant.id, error = %e, "listen sweep: skipped a tenant")
                }
            }
        }
        let mut seen = lock(&hub.seen);
        for (id, tenant_id) in found {
            seen.entry(id).or_insert(Seen {
                tenant_id,
                absent_since: None,
            });
        }
    }
    let known: Vec<(String, String)> = lock(&hub.seen)
        .iter()
        .map(|(id, s)| (id.clone(), s.tenant_id.clone()))
        .collect();
    let mut deleted = 0;
    for (id, tenant) in known {
        let expiry = match store.get_subscription(&tenant, &id)? {
            Some(Subscription {
                destination: Some(Destination::Listen { expire_after_secs }),
                ..
            }) => Duration::from_secs(expire_after_secs),
            _ => {
                lock(&hub.seen).remove(&id);
                hub.disconnect(&id);
                continue;
            }
        };
        match hub.presence(&id).await {
            Presence::Present => hub.mark(&tenant, &id, true),
            Presence::Absent => hub.mark(&tenant, &id, false),
            Presence::Unknown => continue,
        }
        let absent_for = lock(&hub.seen)
            .get(&id)
            .and_then(|s| s.absent_since)
            .map(|since| since.elapsed());
        if absent_for.is_none_or(|gone| gone < expiry) {
            continue;
        }
        if store.delete_subscription(&tenant, &id).await? {
            store.drop_windows(&tenant, &id).await?;
            deleted += 1;
            tracing::info!(subscription_id = %id, "listen subscription expired: no CLI connected");
        }
        lock(&hub.seen).remove(&id);
    }
    if deleted > 0 {
        store.durable().await?;
    }
    Ok(deleted)
}
