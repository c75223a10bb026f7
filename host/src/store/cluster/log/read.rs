//! How a view's applier reads its log: two readers of the same messages.
//!
//! - A **consumer** (an ordered, ephemeral pull consumer): the usual
//!   reader. It pushes batches as they are stored, in large runs, so the
//!   applier can group them.
//! - **Gets by sequence** (direct gets, which any current replica
//!   answers, when the stream allows them; else gets from the stream's
//!   leader): the reader while a consumer cannot be had. Making a
//!   consumer goes through the NATS cluster's meta leader; after a NATS
//!   server dies, every node's every log asks for one at once and the
//!   requests can wait for tens of seconds (BENCHMARKS.md, "a NATS server
//!   killed under load"). A node reading only through consumers stopped
//!   applying for that long and answered its writers 503. Reading by
//!   sequence needs no consumer, so the view keeps up meanwhile; once a
//!   consumer can be made again the applier goes back to it.
//!
//! Both give [`Entry`]s in the log's order; a reader may give again what
//! the view has applied (a consumer made from an earlier sequence), which
//! the view answers as applied.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{consumer, stream};
use futures_util::{Stream, StreamExt};
use tokio::sync::Notify;

use crate::cluster::ClusterError;

/// One message of the log, as either reader gives it.
pub(super) struct Entry {
    pub seq: u64,
    pub headers: Option<async_nats::HeaderMap>,
    pub payload: bytes::Bytes,
}

/// A reader: entries in order; an error or its end makes the applier
/// take another.
pub(super) type Entries = Pin<Box<dyn Stream<Item = Result<Entry, ClusterError>> + Send>>;

/// How long making a consumer may take before the applier reads by
/// sequence instead (a healthy cluster answers in milliseconds).
pub(super) const CONSUMER_WITHIN: Duration = Duration::from_secs(3);
/// How often a reader by sequence asks again at the log's end (sooner
/// when this node publishes).
const POLL: Duration = Duration::from_millis(50);
/// The longest pause between gets that fail.
const PAUSE_AT_MOST: Duration = Duration::from_secs(1);
/// How often a reader by sequence says it still cannot read.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// An ordered reader of the stream from sequence `from`.
pub(super) async fn consumer_from(
    stream: &stream::Stream,
    from: u64,
) -> Result<consumer::pull::Ordered, ClusterError> {
    stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            // Short pulls, so heartbeats every second: a reader lost with
            // its server is noticed within seconds, not after 30 s.
            max_expires: Duration::from_secs(2),
            ..Default::default()
        })
        .await
        .map_err(ClusterError::jetstream)?
        .messages()
        .await
        .map_err(ClusterError::jetstream)
}

/// [`consumer_from`], given up after [`CONSUMER_WITHIN`].
pub(super) async fn consumer_within(
    stream: &stream::Stream,
    from: u64,
) -> Result<consumer::pull::Ordered, ClusterError> {
    tokio::time::timeout(CONSUMER_WITHIN, consumer_from(stream, from))
        .await
        .map_err(|_| {
            ClusterError::JetStream(format!(
                "no consumer of {} within {CONSUMER_WITHIN:?}",
                stream.cached_info().config.name
            ))
        })?
}

/// A consumer's messages as entries.
pub(super) fn consumed(messages: consumer::pull::Ordered) -> Entries {
    Box::pin(messages.map(|m| {
        let m = m.map_err(ClusterError::jetstream)?;
        let seq = m.info().map_err(ClusterError::jetstream)?.stream_sequence;
        let m = m.message;
        Ok(Entry {
            seq,
            headers: m.headers,
            payload: m.payload,
        })
    }))
}

/// Where a consumer made while reading by sequence is handed to the
/// applier (the reader by sequence ends then).
pub(super) type Handover = Arc<Mutex<Option<consumer::pull::Ordered>>>;

/// A reader by sequence from `from`. From `try_consumer_at` on, whenever
/// it is at the log's end it also tries to make a consumer; once one is
/// made it puts it in `handover` and ends.
pub(super) fn by_sequence(
    stream: stream::Stream,
    from: u64,
    wake: Arc<Notify>,
    try_consumer_at: Instant,
    handover: Handover,
) -> Entries {
    let direct = stream.cached_info().config.allow_direct;
    let state = Gets {
        stream,
        direct,
        next: from,
        wake,
        try_consumer_at,
        handover,
        making: None,
        failing_since: None,
        warned: None,
    };
    Box::pin(futures_util::stream::unfold(state, Gets::next_entry))
}

type Making = Pin<
    Box<dyn std::future::Future<Output = Result<consumer::pull::Ordered, ClusterError>> + Send>,
>;

struct Gets {
    stream: stream::Stream,
    /// Direct gets (any replica) rather than gets from the leader.
    direct: bool,
    next: u64,
    /// Notified when this node has published: the log has grown.
    wake: Arc<Notify>,
    try_consumer_at: Instant,
    handover: Handover,
    /// A consumer being made.
    making: Option<Making>,
    /// Since when gets fail (not "no such message": no answer at all).
    failing_since: Option<Instant>,
    warned: Option<Instant>,
}

/// What one get found.
enum Got {
    Entry(Entry),
    /// No message at that sequence yet (or it was purged: then the
    /// consumer made next starts past it and the applier says so).
    End,
    /// No answer (the replicas are electing, or the connection is lost).
    Failed(String),
}

/// The message at `seq`: by a direct get if allowed, else (or if no
/// replica answered one, or they are no longer allowed) from the leader.
async fn get(stream: &stream::Stream, direct: bool, seq: u64) -> Got {
    let mut failed = None;
    if direct {
        match stream.direct_get(seq).await {
            Ok(m) => return Got::Entry(entry(m)),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => return Got::End,
            Err(e) => failed = Some(e.to_string()),
        }
    }
    match stream.get_raw_message(seq).await {
        Ok(m) => Got::Entry(entry(m)),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Got::End,
        Err(e) => Got::Failed(match failed {
            Some(direct) => format!("{direct}; from the leader: {e}"),
            None => e.to_string(),
        }),
    }
}

fn entry(m: async_nats::jetstream::message::StreamMessage) -> Entry {
    Entry {
        seq: m.sequence,
        headers: (!m.headers.is_empty()).then_some(m.headers),
        payload: m.payload,
    }
}

/// The consumer being made, once it is (or could not be); never, while
/// none is being made.
async fn until_made(making: &mut Option<Making>) -> Result<consumer::pull::Ordered, ClusterError> {
    match making {
        Some(making) => making.await,
        None => std::future::pending().await,
    }
}

/// One step of a reader by sequence: a get's answer, or the consumer
/// being made beside it.
enum Step {
    Got(Got),
    Made(Box<Result<consumer::pull::Ordered, ClusterError>>),
}

impl Gets {
    async fn next_entry(mut self) -> Option<(Result<Entry, ClusterError>, Self)> {
        loop {
            // From its time on a consumer is made beside the gets, whether
            // or not they are at the log's end: a reader by sequence that is
            // behind must not stay one (it reads a batch per round trip).
            if self.making.is_none() && Instant::now() >= self.try_consumer_at {
                let stream = self.stream.clone();
                let from = self.next;
                self.making = Some(Box::pin(
                    async move { consumer_within(&stream, from).await },
                ));
            }
            let step = tokio::select! {
                made = until_made(&mut self.making) => Step::Made(Box::new(made)),
                got = get(&self.stream, self.direct, self.next) => Step::Got(got),
            };
            let pause = match step {
                Step::Made(made) => {
                    if self.made(*made) {
                        return None;
                    }
                    continue;
                }
                Step::Got(Got::Entry(entry)) => {
                    self.failing_since = None;
                    self.next = entry.seq + 1;
                    return Some((Ok(entry), self));
                }
                Step::Got(Got::End) => {
                    self.failing_since = None;
                    POLL
                }
                Step::Got(Got::Failed(e)) => {
                    let since = *self.failing_since.get_or_insert_with(Instant::now);
                    if self.warned.is_none_or(|w| w.elapsed() >= WARN_EVERY) {
                        self.warned = Some(Instant::now());
                        tracing::warn!(
                            stream = %self.stream.cached_info().config.name,
                            sequence = self.next,
                            failing_for = ?since.elapsed(),
                            error = %e,
                            "reading the cluster log by sequence"
                        );
                    }
                    // Backs off while nothing answers (every log of every
                    // node asks at once).
                    (since.elapsed() / 4).clamp(POLL, PAUSE_AT_MOST)
                }
            };
            let made = tokio::select! {
                made = until_made(&mut self.making) => Some(made),
                _ = self.wake.notified() => None,
                _ = tokio::time::sleep(pause) => None,
            };
            if let Some(made) = made
                && self.made(made)
            {
                return None;
            }
        }
    }

    /// A consumer was made (true: handed over, the reader ends; it gives
    /// again from where it was made, which the view answers as applied),
    /// or could not be (tried again later).
    fn made(&mut self, made: Result<consumer::pull::Ordered, ClusterError>) -> bool {
        self.making = None;
        match made {
            Ok(consumer) => {
                *self.handover.lock().unwrap_or_else(|e| e.into_inner()) = Some(consumer);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "making a consumer of the cluster log");
                self.try_consumer_at = Instant::now() + CONSUMER_WITHIN;
                false
            }
        }
    }
}
