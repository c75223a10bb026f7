//! The work split between nodes: every subscription belongs to one of a
//! fixed number of partitions (a hash of its id), and each partition is
//! leased to one node at a time through a JetStream KV bucket.
//!
//! - The bucket's entries expire after the lease time (`max_age`), so a
//!   dead node's leases vanish by themselves; a live node renews its own
//!   every third of that time (an update that names the revision it holds,
//!   so two nodes can never both renew one lease).
//! - Each node also keeps a `node.<id>` entry alive; the live entries say
//!   how many nodes share the partitions, and each node takes free ones
//!   until it has its share (and gives back any beyond it, so a node that
//!   joins gets work).
//! - A lease taken by another node is given up at once. One that cannot be
//!   renewed (NATS unreachable or slow to answer) is kept only while it is
//!   sure to outlast the next round, a second later, failing too: the node
//!   stops its work in a partition before another node can take it over,
//!   but one lost answer does not move every partition. Every request of
//!   a round is bounded (`ANSWER_WITHIN`, at most a quarter of the lease),
//!   the renewals and the listing's reads go out together, before each
//!   step a lease that could expire during it is given up, and the next
//!   round comes before the oldest lease is within two bounds of expiring.
//!
//! What a node does with a partition it gains or loses is its owner's
//! business ([`Ownership`]): the queue loads or drops that partition's
//! deliveries, the window scheduler its windows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use futures_util::TryStreamExt;

use super::{ClusterError, check_setting};

/// The lease bucket.
pub const BUCKET: &str = "wasmhook_leases";

/// How the work is split and leased.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings {
    /// Fixed for the life of the cluster (every node must agree).
    pub partitions: u32,
    /// How long a lease outlives its node: the longest a dead node's work
    /// waits for another node.
    pub lease: Duration,
    /// A partitioned cluster: work is split by tenant (a tenant's data
    /// and work are one partition); else by subscription.
    pub by_tenant: bool,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            partitions: 64,
            lease: Duration::from_secs(20),
            by_tenant: false,
        }
    }
}

/// The partition a subscription's work belongs to: FNV-1a of its id, so
/// every node and version computes the same.
pub fn partition_of(subscription_id: &str, partitions: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in subscription_id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % partitions.max(1)
}

/// Which partitions this node holds; cheap to ask on every lease.
#[derive(Clone)]
pub struct Ownership {
    partitions: u32,
    by_tenant: bool,
    owned: Arc<RwLock<HashSet<u32>>>,
    /// Who held each partition at this node's last round, with where that
    /// node's API is reached (only nodes that advertise one).
    holders: Arc<RwLock<HashMap<u32, Peer>>>,
    /// The nodes whose heartbeats were live at this node's last round
    /// (None before its first).
    nodes: Arc<RwLock<Option<HashSet<String>>>>,
}

/// Another node, as its heartbeat advertises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    /// Its API, like `http://10.0.0.5:8080`.
    pub url: String,
}

impl Ownership {
    /// The nodes whose heartbeats were live at this node's last lease
    /// round; None before its first.
    pub fn nodes(&self) -> Option<HashSet<String>> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Forgets that `node` holds partition `p` (it answered that it does
    /// not any more), until the next lease round learns who does.
    pub fn forget_holder(&self, p: u32, node: &str) {
        let mut holders = self.holders.write().unwrap_or_else(|e| e.into_inner());
        if holders.get(&p).is_some_and(|h| h.node == node) {
            holders.remove(&p);
        }
    }

    /// The node holding partition `p` and its API's URL, as of this
    /// node's last lease round (so up to a third of a lease old): None if
    /// no node held it or its holder advertises no URL.
    pub fn holder(&self, p: u32) -> Option<Peer> {
        self.holders
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&p)
            .cloned()
    }

    /// Whether this node does the work of a tenant's subscription (or
    /// source): its partition is leased here.
    pub fn owns(&self, tenant_id: &str, subscription_id: &str) -> bool {
        self.owns_partition(self.partition(tenant_id, subscription_id))
    }

    /// The partition of a tenant's subscription (or source): by tenant in
    /// a partitioned cluster, else by subscription.
    pub fn partition(&self, tenant_id: &str, subscription_id: &str) -> u32 {
        let key = if self.by_tenant {
            tenant_id
        } else {
            subscription_id
        };
        partition_of(key, self.partitions)
    }

    pub fn owns_partition(&self, p: u32) -> bool {
        self.owned
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&p)
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partitions this node holds, in order.
    pub fn owned(&self) -> Vec<u32> {
        let mut owned: Vec<u32> = self
            .owned
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        owned.sort_unstable();
        owned
    }

    /// How many partitions this node holds.
    pub fn count(&self) -> usize {
        self.owned.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// What a node does when it gains or loses a partition.
pub trait OnChange: Send + Sync {
    /// Before a partition just leased counts as this node's: what must be
    /// ready first (a partitioned cluster reads the partition's data log).
    /// An error gives the lease back.
    fn prepare(&self, _partition: u32) -> futures_util::future::BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    /// Whether [`OnChange::prepare`] does anything: then it runs beside the
    /// rounds (reading a partition may take longer than a lease), and the
    /// partition counts once it is done.
    fn prepares(&self) -> bool {
        false
    }
    fn gained(&self, partition: u32);
    fn lost(&self, partition: u32);
}

/// The bucket as this version uses it: created if missing, else checked.
pub async fn ensure_bucket(
    js: &jetstream::Context,
    replicas: usize,
    settings: &LeaseSettings,
) -> Result<kv::Store, ClusterError> {
    // The bucket's stream, as `create_key_value` would make it: that call
    // first asks for the account's limits in a form nats-server 2.9 does
    // not answer, so the stream is created directly.
    let mut stream = js
        .get_or_create_stream(stream::Config {
            name: format!("KV_{BUCKET}"),
            subjects: vec![format!("$KV.{BUCKET}.>")],
            max_messages_per_subject: 1,
            max_age: settings.lease,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            num_replicas: replicas,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(ClusterError::jetstream)?;
    let config = &stream.info().await.map_err(ClusterError::jetstream)?.config;
    let what = "key-value bucket";
    check_setting(
        what,
        BUCKET,
        "num_replicas",
        config.num_replicas.max(1),
        replicas,
    )?;
    check_setting(
        what,
        BUCKET,
        "max_age (the lease time)",
        config.max_age,
        settings.lease,
    )?;
    js.get_key_value(BUCKET)
        .await
        .map_err(ClusterError::jetstream)
}

/// A partition whose preparation finished, and how.
type Prepared = (u32, u64, Result<(), String>);

/// A lease request not answered within this (or a quarter of the lease,
/// if shorter) has failed. Bounds how long a failing round takes, so a
/// node knows when it will next be able to check its leases.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// After a round that failed the next comes this soon (or a third of the
/// lease, if shorter), not a third of the lease later: one lost answer on
/// a loaded machine costs a second.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A lease this node holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    revision: u64,
    /// When the write that set it was sent: the bucket keeps it at least
    /// until this plus the lease time (its age counts from when the server
    /// stored it, which is later), so no other node can take it before.
    sent: tokio::time::Instant,
}

/// What became of one lease's renewal.
enum Renewed {
    Held(Held),
    /// Another node's now: not this node's work any more.
    Lost,
    /// No answer: still held, as far as this node knows.
    Unanswered,
}

/// The lease keeper of one node.
pub struct Leases {
    kv: kv::Store,
    node: String,
    settings: LeaseSettings,
    ownership: Ownership,
    /// Each lease held (being prepared or not).
    held: BTreeMap<u32, Held>,
    /// Leased, their preparation running: not this node's work yet. Each
    /// with the take it prepares for: a lease lost during a preparation
    /// and taken again starts another, and only that one's end counts
    /// (the first read the partition before another node's writes).
    preparing: HashMap<u32, u64>,
    /// Takes so far (what tells preparations apart).
    takes: u64,
    /// Preparations that finished, with their outcome.
    prepared: (
        tokio::sync::mpsc::UnboundedSender<Prepared>,
        tokio::sync::mpsc::UnboundedReceiver<Prepared>,
    ),
    /// Set by [`Leases::run`]: what preparations are spawned with.
    spawner: Option<Arc<dyn OnChange>>,
    /// This node's API as the other nodes reach it: its heartbeat's value.
    url: Option<String>,
    /// Random per process: in the leases' values beside the node's name.
    incarnation: String,
}

fn partition_key(p: u32) -> String {
    format!("p.{p}")
}

impl Leases {
    pub fn new(kv: kv::Store, node: &str, settings: LeaseSettings) -> Self {
        Leases {
            kv,
            node: node.to_string(),
            settings,
            ownership: Ownership {
                partitions: settings.partitions.max(1),
                by_tenant: settings.by_tenant,
                owned: Arc::default(),
                holders: Arc::default(),
                nodes: Arc::default(),
            },
            url: None,
            incarnation: hex::encode(rand::random::<[u8; 6]>()),
            held: BTreeMap::new(),
            preparing: HashMap::new(),
            takes: 0,
            prepared: tokio::sync::mpsc::unbounded_channel(),
            spawner: None,
        }
    }

    pub fn ownership(&self) -> Ownership {
        self.ownership.clone()
    }

    /// Advertises where the other nodes reach this node's API (in its
    /// heartbeat): they then forward its partitions' requests there.
    pub fn advertise(&mut self, url: Option<String>) {
        self.url = url;
    }

    /// How long one lease request may take ([`ANSWER_WITHIN`], at most a
    /// quarter of the lease: a lease renewed a moment ago must outlast it).
    fn answer_within(&self) -> Duration {
        ANSWER_WITHIN.min(self.settings.lease / 4)
    }

    /// How soon a round follows one that failed.
    fn retry_after(&self) -> Duration {
        RETRY_AFTER.min(self.settings.lease / 3)
    }

    /// One lease request, given up after [`Leases::answer_within`].
    async fn bounded<F: std::future::Future>(
        &self,
        request: F,
    ) -> Result<F::Output, tokio::time::error::Elapsed> {
        tokio::time::timeout(self.answer_within(), request).await
    }

    /// Deletes a lease this node held (if still at `revision`), bounded:
    /// an unanswered delete only leaves the lease to expire.
    async fn delete_lease(&self, p: u32, revision: u64) {
        let _ = self
            .bounded(
                self.kv
                    .delete_expect_revision(partition_key(p), Some(revision)),
            )
            .await;
    }

    /// A round every third of the lease until `stop` resolves; then the
    /// leases are given back, so that the other nodes take the partitions
    /// at their next round rather than after the lease time.
    pub async fn run(mut self, on: Arc<dyn OnChange>, stop: impl std::future::Future<Output = ()>) {
        let every = self.settings.lease / 3;
        self.spawner = Some(on.clone());
        tokio::pin!(stop);
        'rounds: loop {
            let started = tokio::time::Instant::now();
            let wait = match self.round(on.as_ref()).await {
                Ok(()) => every,
                Err(e) => {
                    tracing::warn!(error = %e, "renewing partition leases");
                    self.retry_after()
                }
            };
            // Counted from the round's start, and never later than the
            // oldest lease still leaves two requests' time to renew it.
            let mut next = started + wait;
            if let Some(oldest) = self.held.values().map(|h| h.sent).min() {
                next = next.min(oldest + self.settings.lease - 2 * self.answer_within());
            }
            // Rounds that fail at once (NATS refusing) do not spin.
            next = next.max(tokio::time::Instant::now() + Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => break,
                    _ = &mut stop => break 'rounds,
                    Some((p, take, result)) = self.prepared.1.recv() => self.finish(p, take, result, on.as_ref()).await,
                }
            }
        }
        self.release(on.as_ref()).await;
    }

    /// A preparation finished: the partition is this node's now, or (it
    /// failed) its lease is given back; if the lease went meanwhile, what
    /// was prepared is let go. The end of a preparation for an earlier
    /// take of the same partition is not this take's: ignored.
    async fn finish(&mut self, p: u32, take: u64, result: Result<(), String>, on: &dyn OnChange) {
        if self.preparing.get(&p) != Some(&take) {
            // An earlier take's: what it opened is let go, unless a later
            // take holds the partition (or prepares it) now.
            if !self.held.contains_key(&p) && !self.preparing.contains_key(&p) {
                on.lost(p);
            }
            return;
        }
        self.preparing.remove(&p);
        match (self.held.get(&p).map(|h| h.revision), result) {
            (Some(_), Ok(())) => {
                self.set_owned(p, true);
                on.gained(p);
            }
            (Some(revision), Err(e)) => self.give_back(p, revision, &e, on).await,
            (None, _) => on.lost(p),
        }
    }

    /// A partition whose preparation failed: let go here and its lease
    /// given back, so that another node (or this one, later) tries.
    async fn give_back(&mut self, p: u32, revision: u64, error: &str, on: &dyn OnChange) {
        tracing::warn!(partition = p, %error, "taking a partition; giving it back");
        self.held.remove(&p);
        on.lost(p);
        // The others must outlast the delete below (the rounds wait).
        self.lose_expiring_within(self.answer_within(), on);
        self.delete_lease(p, revision).await;
    }

    /// Gives back every lease held (each only if still this node's: the
    /// revision must match) and the node's heartbeat.
    pub async fn release(&mut self, on: &dyn OnChange) {
        let held = std::mem::take(&mut self.held);
        for p in held.keys() {
            self.set_owned(*p, false);
            on.lost(*p);
        }
        for (p, h) in held {
            if let Err(e) = self
                .kv
                .delete_expect_revision(partition_key(p), Some(h.revision))
                .await
            {
                // NATS unreachable (or the lease taken meanwhile): the rest
                // expire on their own rather than each waiting out a timeout.
                tracing::warn!(partition = p, error = %e, "giving back a lease; the rest expire instead");
                return;
            }
        }
        let _ = self.kv.delete(format!("node.{}", self.node)).await;
    }

    fn set_owned(&self, p: u32, owned: bool) {
        let mut set = self
            .ownership
            .owned
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if owned {
            set.insert(p);
        } else {
            set.remove(&p);
        }
    }

    /// Gives up every lease that could expire within `within` from now
    /// (before this node may next learn whether it still holds them).
    fn lose_expiring_within(&mut self, within: Duration, on: &dyn OnChange) {
        let when = tokio::time::Instant::now() + within;
        let lease = self.settings.lease;
        let expiring: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, h)| h.sent + lease <= when)
            .map(|(p, _)| *p)
            .collect();
        for p in expiring {
            self.lose(p, on);
        }
    }

    fn lose(&mut self, p: u32, on: &dyn OnChange) {
        if self.held.remove(&p).is_some() {
            self.set_owned(p, false);
            on.lost(p);
        }
    }

    /// Starts taking partition `p`, just leased: at once when there is
    /// nothing to prepare, else its preparation beside the rounds (or,
    /// without [`Leases::run`], here). False: given back.
    async fn take(&mut self, p: u32, lease: Held, on: &dyn OnChange) -> bool {
        let revision = lease.revision;
        self.held.insert(p, lease);
        if on.prepares() {
            if let Some(spawner) = self.spawner.clone() {
                self.takes += 1;
                let take = self.takes;
                self.preparing.insert(p, take);
                let done = self.prepared.0.clone();
                tokio::spawn(async move {
                    let result = spawner.prepare(p).await;
                    let _ = done.send((p, take, result));
                });
                return true;
            }
            if let Err(e) = on.prepare(p).await {
                self.give_back(p, revision, &e, on).await;
                return false;
            }
        }
        self.set_owned(p, true);
        on.gained(p);
        true
    }

    /// The bucket's live keys (node heartbeats and partition leases),
    /// without a consumer: the subjects the stream holds (a stream info
    /// request), then each one's last entry by a direct get (answered by
    /// any replica), keeping those whose last operation is a put. Listing
    /// through `keys()` creates a consumer each round, and right after a
    /// NATS server is killed consumer creation waits on the cluster's meta
    /// leader: rounds timed out for minutes there (BENCHMARKS.md, "Issue
    /// 25, third pass").
    async fn live_keys(&self) -> Result<Vec<(String, bytes::Bytes)>, ClusterError> {
        let listing =
            |e: &dyn std::fmt::Display| ClusterError::jetstream(format!("listing the leases: {e}"));
        let prefix = self.kv.prefix.clone();
        let subjects: Vec<(String, usize)> = self
            .kv
            .stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(|e| listing(&e))?
            .try_collect()
            .await
            .map_err(|e| listing(&e))?;
        // Every entry at once (a round's time is the leases' time).
        let entries = subjects.iter().filter_map(|(subject, _)| {
            let key = subject.strip_prefix(prefix.as_str())?;
            Some(async move { (key, self.kv.entry(key).await) })
        });
        let mut live = Vec::with_capacity(subjects.len());
        for (key, entry) in futures_util::future::join_all(entries).await {
            let entry = entry.map_err(|e| listing(&e))?;
            if let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) {
                live.push((key.to_string(), entry.value));
            }
        }
        Ok(live)
    }

    /// Renews the lease of partition `p`, held at `held` (a renewal sent
    /// at `sent`). A lease whose revision moved on is another node's (it
    /// had expired and was taken) unless its entry names this node: then
    /// it is this node's own earlier renewal, which took effect but whose
    /// answer was lost, and the lease is renewed again from that revision.
    /// Given up instead, the partition would sit idle for a whole lease
    /// (no node may take it before the entry expires).
    async fn renew(&self, p: u32, held: Held, sent: tokio::time::Instant) -> Renewed {
        let key = partition_key(p);
        let renewal = self.kv.update(&key, self.lease_value(), held.revision);
        match self.bounded(renewal).await {
            Ok(Ok(revision)) => return Renewed::Held(Held { revision, sent }),
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
            _ => return Renewed::Unanswered,
        }
        // Two more requests: only if the lease as last known outlasts them
        // (the entry, if this node's, is younger, so it outlasts them too).
        let deadline = tokio::time::Instant::now() + 2 * self.answer_within();
        if held.sent + self.settings.lease <= deadline {
            return Renewed::Lost;
        }
        let entry = match self.bounded(self.kv.entry(&key)).await {
            Ok(Ok(Some(entry))) => entry,
            Ok(Ok(None)) => return Renewed::Lost,
            _ => return Renewed::Unanswered,
        };
        if entry.operation != kv::Operation::Put || entry.value != self.lease_value() {
            return Renewed::Lost;
        }
        let again = tokio::time::Instant::now();
        let renewal = self.kv.update(&key, self.lease_value(), entry.revision);
        match self.bounded(renewal).await {
            Ok(Ok(revision)) => {
                tracing::info!(
                    partition = p,
                    "a lease renewal's lost answer; the lease kept"
                );
                Renewed::Held(Held {
                    revision,
                    sent: again,
                })
            }
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Renewed::Lost,
            _ => Renewed::Unanswered,
        }
    }

    /// What a lease this node holds says: its name, and this process's
    /// incarnation (so that a lease renewal this node finds taken effect
    /// without its answer is told from one of another process that was
    /// given the same name by mistake).
    fn lease_value(&self) -> bytes::Bytes {
        format!("{} {}", self.node, self.incarnation).into()
    }

    /// What this node's heartbeat says: where its API is reached (empty:
    /// nowhere but over NATS).
    fn heartbeat(&self) -> bytes::Bytes {
        self.url.clone().unwrap_or_default().into()
    }

    /// Who holds each partition and where their API is, from the bucket's
    /// live keys (a heartbeat's value is its node's URL, a lease's its
    /// holder): what forwarding sends a request to directly.
    fn learn_holders(&self, keys: &[(String, bytes::Bytes)]) {
        let urls: HashMap<&str, &str> = keys
            .iter()
            .filter_map(|(k, v)| {
                let node = k.strip_prefix("node.")?;
                let url = std::str::from_utf8(v).ok().filter(|u| !u.is_empty())?;
                Some((node, url))
            })
            .collect();
        let holders: HashMap<u32, Peer> = keys
            .iter()
            .filter_map(|(k, v)| {
                let p = k.strip_prefix("p.")?.parse().ok()?;
                // "<node> <incarnation>" (an older version: the node alone).
                let node = std::str::from_utf8(v).ok()?.split(' ').next()?;
                let url = urls.get(node)?;
                Some((
                    p,
                    Peer {
                        node: node.to_string(),
                        url: url.to_string(),
                    },
                ))
            })
            .collect();
        *self
            .ownership
            .holders
            .write()
            .unwrap_or_else(|e| e.into_inner()) = holders;
        let nodes = keys
            .iter()
            .filter_map(|(k, _)| k.strip_prefix("node.").map(str::to_string))
            .collect();
        *self
            .ownership
            .nodes
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(nodes);
    }

    /// One round: heartbeat, renew, then give back or take partitions
    /// until this node holds its share.
    pub async fn round(&mut self, on: &dyn OnChange) -> Result<(), ClusterError> {
        // Each request below may take answer_within(): a lease that could
        // expire meanwhile is given up before it is sent.
        self.lose_expiring_within(self.answer_within(), on);
        let heartbeat = self
            .bounded(self.kv.put(format!("node.{}", self.node), self.heartbeat()))
            .await;
        let heartbeat = match heartbeat {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.answer_within())),
        };
        if let Err(e) = heartbeat {
            // NATS unreachable or slow to answer: the next round comes in
            // RETRY_AFTER and may fail the same way. A lease that could
            // expire before then is given up now, so that this node stops
            // its work there before another can take it; the others are
            // kept (giving every partition up on one lost answer moved
            // them all on a loaded machine, and answered 503 meanwhile).
            self.lose_expiring_within(self.retry_after() + self.answer_within(), on);
            return Err(ClusterError::jetstream(format!("the heartbeat: {e}")));
        }
        // All renewals at once: a round costs a few round trips, not one
        // per lease, so the leases' time is not spent waiting in turn.
        self.lose_expiring_within(self.answer_within(), on);
        let sent = tokio::time::Instant::now();
        let this = &*self;
        let renewals = this
            .held
            .iter()
            .map(|(&p, held)| async move { (p, this.renew(p, *held, sent).await) });
        let mut unanswered = None;
        for (p, renewed) in futures_util::future::join_all(renewals).await {
            match renewed {
                Renewed::Held(held) => {
                    self.held.insert(p, held);
                }
                Renewed::Lost => self.lose(p, on),
                // No answer: as for the heartbeat (the next round is soon).
                Renewed::Unanswered => unanswered = Some(p),
            }
        }
        if let Some(p) = unanswered {
            self.lose_expiring_within(self.retry_after() + self.answer_within(), on);
            return Err(ClusterError::jetstream(format!(
                "renewing the lease of partition {p}: no answer"
            )));
        }
        // Every lease was just renewed; the listing, the give-backs and
        // the creates below are bounded, and checked before each.
        self.lose_expiring_within(self.answer_within(), on);
        let keys = self.bounded(self.live_keys()).await.map_err(|_| {
            ClusterError::jetstream(format!(
                "listing the leases: no answer within {:?}",
                self.answer_within()
            ))
        })??;
        self.learn_holders(&keys);
        let nodes = keys
            .iter()
            .filter(|(k, _)| k.starts_with("node."))
            .count()
            .max(1);
        let taken: HashSet<u32> = keys
            .iter()
            .filter_map(|(k, _)| k.strip_prefix("p.")?.parse().ok())
            .collect();
        let partitions = self.settings.partitions.max(1);
        let share = (partitions as usize).div_ceil(nodes);
        // Beyond the share (a node joined): give back the highest.
        while self.held.len() > share {
            self.lose_expiring_within(self.answer_within(), on);
            let Some((p, held)) = self.held.pop_last() else {
                break;
            };
            self.set_owned(p, false);
            on.lost(p);
            self.delete_lease(p, held.revision).await;
        }
        // Below it: take free partitions, starting at a place of this
        // node's own so that nodes starting together do not all race for
        // the same ones.
        let start = partition_of(&self.node, partitions);
        for i in 0..partitions {
            if self.held.len() >= share {
                break;
            }
            let p = (start + i) % partitions;
            if self.held.contains_key(&p) || taken.contains(&p) {
                continue;
            }
            self.lose_expiring_within(self.answer_within(), on);
            let sent = tokio::time::Instant::now();
            let created = self
                .bounded(self.kv.create(partition_key(p), self.lease_value()))
                .await;
            if let Ok(Ok(revision)) = created {
                self.take(p, Held { revision, sent }, on).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::cluster::testing::NatsCluster;
    use crate::cluster::{ClusterSettings, connect};

    #[derive(Default)]
    struct Record(Mutex<Vec<(bool, u32)>>);

    impl OnChange for Record {
        fn gained(&self, p: u32) {
            self.0.lock().unwrap().push((true, p));
        }
        fn lost(&self, p: u32) {
            self.0.lock().unwrap().push((false, p));
        }
    }

    async fn keeper(url: String, node: &str, settings: LeaseSettings) -> Leases {
        let client = connect(&ClusterSettings::new(vec![url])).await.unwrap();
        let js = jetstream::new(client);
        let kv = ensure_bucket(&js, 3, &settings).await.unwrap();
        Leases::new(kv, node, settings)
    }

    /// Leases by tenant over `partitions`, long enough that the tests'
    /// manual rounds renew them in time on a loaded machine.
    fn by_tenant(partitions: u32) -> LeaseSettings {
        LeaseSettings {
            by_tenant: true,
            partitions,
            lease: Duration::from_secs(20),
        }
    }

    fn owned(l: &Leases) -> Vec<u32> {
        let mut v: Vec<u32> = l.held.keys().copied().collect();
        v.sort();
        v
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        assert_eq!(partition_of("sub_1", 64), partition_of("sub_1", 64));
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[partition_of(&format!("sub_{i:05}"), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_split_the_partitions_and_a_dead_nodes_share_is_taken_over() {
        let Some(cluster) = NatsCluster::start(3).await else {
            return;
        };
        // Long enough that the manual rounds below renew in time even on a
        // slow machine; b's share still expires within the test's wait.
        let settings = LeaseSettings {
            by_tenant: false,
            partitions: 8,
            lease: Duration::from_secs(10),
        };
        let (ra, rb) = (Record::default(), Record::default());
        let mut a = keeper(cluster.url(0), "node-a", settings).await;
        let mut b = keeper(cluster.url(1), "node-b", settings).await;

        // Alone, a takes everything; once b's heartbeat is there, a gives
        // half back and b takes it.
        a.round(&ra).await.unwrap();
        assert_eq!(owned(&a).len(), 8);
        b.round(&rb).await.unwrap();
        a.round(&ra).await.unwrap();
        b.round(&rb).await.unwrap();
        assert_eq!(owned(&a).len(), 4);
        assert_eq!(owned(&b).len(), 4);
        let mut all = [owned(&a), owned(&b)].concat();
        all.sort();
        assert_eq!(all, (0..8).collect::<Vec<_>>(), "disjoint and complete");
        assert!(owned(&a).iter().all(|p| a.ownership().owns_partition(*p)));
        assert_eq!(rb.0.lock().unwrap().len(), 4);

        // b dies (no more rounds): its leases expire and a takes them.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while owned(&a).len() < 8 {
            assert!(std::time::Instant::now() < deadline, "not taken over");
            tokio::time::sleep(settings.lease / 3).await;
            a.round(&ra).await.unwrap();
        }
        // b comes back: its renewals fail (a holds them now), so it gives
        // them up before doing anything in them.
        b.round(&rb).await.unwrap();
        let lost: Vec<u32> =
            rb.0.lock()
                .unwrap()
                .iter()
                .filter(|(g, _)| !g)
                .map(|(_, p)| *p)
                .collect();
        assert_eq!(lost.len(), 4);
        assert!(owned(&b).iter().all(|p| !owned(&a).contains(p)));
    }

    /// A node whose NATS server stops answering keeps its leases through a
    /// failed round, and gives each up before it could expire (when it
    /// might not learn in time that another node took it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leases_outlive_a_lost_answer_but_never_their_lease_time() {
        let Some(cluster) = NatsCluster::start(3).await else {
            return;
        };
        let settings = by_tenant(4);
        let record = Record::default();
        let mut a = keeper(cluster.url(0), "node-a", settings).await;
        a.round(&record).await.unwrap();
        assert_eq!(owned(&a).len(), 4);
        let renewed = a.held.values().map(|h| h.sent).min().unwrap();

        cluster.freeze(0);
        assert!(a.round(&record).await.is_err(), "no answer while frozen");
        if renewed.elapsed() + a.retry_after() + a.answer_within() < settings.lease {
            assert_eq!(owned(&a).len(), 4, "kept through one failed round");
            assert!(record.0.lock().unwrap().iter().all(|(gained, _)| *gained));
        }
        // Failing rounds until the leases are given up: before they expire.
        while !owned(&a).is_empty() {
            assert!(a.round(&record).await.is_err());
            assert!(
                renewed.elapsed() < settings.lease,
                "still held {:?} after the lease time",
                owned(&a)
            );
        }
        let lost = record.0.lock().unwrap().iter().filter(|(g, _)| !g).count();
        assert_eq!(lost, 4);
        assert!(!a.ownership().owns_partition(0));
        cluster.thaw(0);
    }

    /// A renewal that took effect but whose answer was lost leaves the
    /// lease at a revision this node does not know. The next round finds
    /// this node's name there and keeps the lease (given up, the partition
    /// would sit idle for a lease); a lease another node wrote is given up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_renewal_whose_answer_was_lost_keeps_its_lease() {
        let Some(cluster) = NatsCluster::start(3).await else {
            return;
        };
        let settings = by_tenant(3);
        let record = Record::default();
        let mut a = keeper(cluster.url(0), "node-a", settings).await;
        a.round(&record).await.unwrap();
        assert_eq!(owned(&a), vec![0, 1, 2]);
        // Partition 0: a's own renewal, its answer lost. Partition 1: taken
        // by another node (as if it had expired). Partition 2: by another
        // process given the same name by mistake.
        let own =
            a.kv.update("p.0", a.lease_value(), a.held[&0].revision)
                .await
                .unwrap();
        a.kv.update("p.1", "node-b 00".into(), a.held[&1].revision)
            .await
            .unwrap();
        a.kv.update("p.2", "node-a 00".into(), a.held[&2].revision)
            .await
            .unwrap();
        a.round(&record).await.unwrap();
        assert_eq!(owned(&a), vec![0]);
        assert!(a.held[&0].revision > own, "renewed from its own revision");
        assert!(a.ownership().owns_partition(0));
        assert!(!a.ownership().owns_partition(1));
        let lost = |r: &Record| {
            let mut lost: Vec<u32> =
                r.0.lock()
                    .unwrap()
                    .iter()
                    .filter(|(g, _)| !g)
                    .map(|(_, p)| *p)
                    .collect();
            lost.sort();
            lost
        };
        assert_eq!(lost(&record), vec![1, 2]);
        // And the next round renews it as usual.
        a.round(&record).await.unwrap();
        assert_eq!(owned(&a), vec![0]);
        assert_eq!(lost(&record), vec![1, 2]);
    }

    /// Every round learns who holds each partition and where that node's
    /// API is (its heartbeat): what forwarding sends requests to.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_learns_who_holds_what_and_where() {
        let Some(cluster) = NatsCluster::start(3).await else {
            return;
        };
        let settings = by_tenant(4);
        let (ra, rb) = (Record::default(), Record::default());
        let mut a = keeper(cluster.url(0), "node-a", settings).await;
        let mut b = keeper(cluster.url(1), "node-b", settings).await;
        a.advertise(Some("http://10.0.0.1:8080".into()));
        a.round(&ra).await.unwrap();
        b.round(&rb).await.unwrap();
        a.round(&ra).await.unwrap();
        b.round(&rb).await.unwrap();
        // (A round learns before it gives back: one more, to know b's.)
        a.round(&ra).await.unwrap();
        let (a_owns, b_owns) = (owned(&a), owned(&b));
        assert_eq!(a_owns.len() + b_owns.len(), 4, "{a_owns:?} {b_owns:?}");
        // b learns a's partitions and URL; a learns nothing of b's (b
        // advertises none: over NATS).
        for p in &a_owns {
            let peer = b.ownership().holder(*p).expect("a's partition known");
            assert_eq!(peer.node, "node-a");
            assert_eq!(peer.url, "http://10.0.0.1:8080");
            // Told it moved: forgotten until the next round (only if still
            // that node's).
            b.ownership().forget_holder(*p, "node-c");
            assert!(b.ownership().holder(*p).is_some());
            b.ownership().forget_holder(*p, "node-a");
            assert_eq!(b.ownership().holder(*p), None);
        }
        b.round(&rb).await.unwrap();
        assert!(a_owns.iter().all(|p| b.ownership().holder(*p).is_some()));
        for p in &b_owns {
            assert_eq!(a.ownership().holder(*p), None);
            assert_eq!(b.ownership().holder(*p), None);
        }
    }

    /// Preparations that end when the test says.
    #[derive(Default)]
    struct Gated {
        record: Record,
        gates: Mutex<Vec<tokio::sync::oneshot::Sender<Result<(), String>>>>,
    }

    impl OnChange for Gated {
        fn prepares(&self) -> bool {
            true
        }
        fn prepare(&self, _p: u32) -> futures_util::future::BoxFuture<'_, Result<(), String>> {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.gates.lock().unwrap().push(tx);
            Box::pin(async move { rx.await.unwrap_or(Err("dropped".into())) })
        }
        fn gained(&self, p: u32) {
            self.record.gained(p)
        }
        fn lost(&self, p: u32) {
            self.record.lost(p)
        }
    }

    /// A lease lost while its partition was being prepared, then taken
    /// again: the first preparation's end is not the second take's (it
    /// read the partition before another node's writes), so the partition
    /// counts only once the second one ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_preparation_for_an_earlier_take_does_not_count() {
        let Some(cluster) = NatsCluster::start(3).await else {
            return;
        };
        let settings = by_tenant(1);
        let gated = Arc::new(Gated::default());
        let on: Arc<dyn OnChange> = gated.clone();
        let mut a = keeper(cluster.url(0), "node-a", settings).await;
        a.spawner = Some(on.clone());
        let lease = |revision| Held {
            revision,
            sent: tokio::time::Instant::now(),
        };
        let until_gates = |n: usize| {
            let gated = gated.clone();
            async move {
                while gated.gates.lock().unwrap().len() < n {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        assert!(a.take(0, lease(1), on.as_ref()).await);
        until_gates(1).await;
        a.lose(0, on.as_ref());
        assert!(a.take(0, lease(5), on.as_ref()).await);
        until_gates(2).await;

        // The first preparation ends: not counted.
        let first = gated.gates.lock().unwrap().remove(0);
        first.send(Ok(())).unwrap();
        let (p, take, result) = a.prepared.1.recv().await.unwrap();
        a.finish(p, take, result, on.as_ref()).await;
        assert!(!a.ownership().owns_partition(0));
        assert_eq!(*gated.record.0.lock().unwrap(), vec![(false, 0)]);

        // The second one ends: the partition is this node's.
        let second = gated.gates.lock().unwrap().remove(0);
        second.send(Ok(())).unwrap();
        let (p, take, result) = a.prepared.1.recv().await.unwrap();
        a.finish(p, take, result, on.as_ref()).await;
        assert!(a.ownership().owns_partition(0));
        assert_eq!(*gated.record.0.lock().unwrap(), vec![(false, 0), (true, 0)]);
    }
}
