//! `wasmhook serve`: opens the store, builds the sandbox and the HTTP
//! client, starts the delivery worker and the pruner, and serves the API
//! until SIGINT/SIGTERM — then stops taking requests, lets in-flight
//! attempts finish within the grace period and flushes the store.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::api::{self, ApiState, RateLimiter};
use crate::app::{App, EngineSettings};
use crate::clock::{Clock, SystemClock};
use crate::cluster::leases::{Leases, OnChange, Ownership};
use crate::config::{ClusterConfig, Config};
use crate::deliver::worker::Worker;
use crate::deliver::{self, Sender, ssrf};
use crate::plugins::Registry;
use crate::queue::{Caps, Queue, QueueSettings};
use crate::runtime::admission::Admission;
use crate::runtime::{ArtifactDigests, CacheDirs, Runtime};
use crate::store::{Store, token_hash};
use crate::telemetry::Telemetry;

/// How long a stopping node tries to give its leases back.
const LEASE_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// How often old events and deliveries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How long a partitioned node may take to read a partition it leased.
const PREPARE_PATIENCE: Duration = Duration::from_secs(120);

/// Builds the shared context from validated settings.
pub fn build_app(config: &Config, store: Store, clock: Arc<dyn Clock>) -> anyhow::Result<App> {
    build_app_with(config, store, clock, None)
}

/// The consumers of `nats` sources, none running yet: they may connect
/// to the brokers `[sources] nats_allow` names, never to the cluster's own.
pub fn build_feeds(config: &Config) -> Arc<crate::source::nats::Feeds> {
    Arc::new(crate::source::nats::Feeds::new(ssrf::BrokerPolicy {
        allow: config.nats_allow.clone(),
        internal: cluster_urls(config),
    }))
}

/// The cluster's own NATS URLs (none on the embedded store): never a
/// source's broker nor a destination.
fn cluster_urls(config: &Config) -> Vec<String> {
    config
        .cluster
        .as_ref()
        .map(|c| c.urls.clone())
        .unwrap_or_default()
}

/// [`build_app`]; in cluster mode with the partitions this node leases.
pub fn build_app_with(
    config: &Config,
    store: Store,
    clock: Arc<dyn Clock>,
    ownership: Option<Ownership>,
) -> anyhow::Result<App> {
    let runtime = Runtime::with_cache(
        config.limits.clone(),
        CacheDirs {
            private: Some((
                config.data_dir.join("plugin-cache"),
                Arc::new(store.clone()) as Arc<dyn ArtifactDigests>,
            )),
            shared: config.shared_cache_dir.clone(),
        },
    )
    .context("starting the plugin sandbox")?;
    let ids = clock.clone();
    runtime.set_id_clock(Arc::new(move || ids.now()));
    let admission = Admission::new(
        config.limits.max_concurrent_calls,
        config.tenant_share_percent,
        config.admission_wait,
    );
    let settings = QueueSettings {
        caps: Caps {
            global: config.workers as u32,
            per_tenant: config.max_in_flight_per_tenant,
        },
        default_subscription_cap: config.max_in_flight_per_subscription,
    };
    let queue = match &ownership {
        None => {
            Queue::open(store.clone(), settings, clock.clone()).context("loading the outbox")?
        }
        Some(owner) => Queue::open_cluster(store.clone(), settings, clock.clone(), owner.clone()),
    };
    let mut egress = config.egress.clone();
    egress.internal_nats = cluster_urls(config);
    let sender = Sender::new(
        ssrf::Guard {
            allow_private: config.allow_private_destinations,
            allow: config.allow_cidrs.clone(),
        },
        egress,
    )
    .context("building the HTTP client")?;
    Ok(App {
        plugins: Registry::new(runtime, store.clone(), admission),
        deliver: deliver::Stage {
            store: store.clone(),
            queue: queue.clone(),
            sender,
            clock: clock.clone(),
            shutdown_grace: config.shutdown_grace,
        },
        queue,
        store,
        clock,
        ownership,
        settings: EngineSettings {
            workers: config.workers,
            max_in_flight_per_subscription: config.max_in_flight_per_subscription,
            max_in_flight_per_tenant: config.max_in_flight_per_tenant,
            retention: config.retention,
            secret_grace: config.secret_grace,
            default_timeout: config.default_timeout,
            bounds: config.bounds,
            dead_letter_bytes: config.dead_letter_bytes,
        },
    })
}

/// The keys secrets are sealed with: `server.secrets_key` (and the
/// previous ones), or the key generated into `<data>/secrets-key` (mode
/// 0600) at first start.
fn secrets_keys(config: &Config) -> anyhow::Result<crate::secrets::Keys> {
    use crate::secrets::Key;
    let text = match &config.secrets_key {
        Some(key) => key.clone(),
        None => {
            let path = config.data_dir.join("secrets-key");
            match std::fs::read_to_string(&path) {
                Ok(text) if !text.trim().is_empty() => text,
                _ => {
                    let text = Key::generate();
                    write_private(&path, &text)
                        .with_context(|| format!("writing {}", path.display()))?;
                    info!(path = %path.display(), "generated the secrets key");
                    text
                }
            }
        }
    };
    let current = Key::parse(&text).context("server.secrets_key")?;
    let previous = config
        .previous_secrets_keys
        .iter()
        .map(|k| Key::parse(k).context("server.previous_secrets_keys"))
        .collect::<anyhow::Result<_>>()?;
    Ok(crate::secrets::Keys { current, previous })
}

/// The operator token: from the config / `WASMHOOK_ADMIN_TOKEN`, or the one
/// generated on first start into `<data>/admin-token` (mode 0600).
fn admin_token(config: &Config) -> anyhow::Result<String> {
    if let Some(token) = &config.admin_token {
        return Ok(token.clone());
    }
    let path = config.data_dir.join("admin-token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim().to_string();
        if !token.is_empty() {
            info!(path = %path.display(), "operator token read from file");
            return Ok(token);
        }
    }
    let token = format!("wha_{}", hex::encode(rand::random::<[u8; 32]>()));
    write_private(&path, &token).with_context(|| format!("writing {}", path.display()))?;
    info!(path = %path.display(), "generated an operator token");
    eprintln!("wasmhook: operator token written to {}", path.display());
    Ok(token)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// Runs the server until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data dir {}", config.data_dir.display()))?;
    make_private(&config.data_dir)
        .with_context(|| format!("restricting the data dir {}", config.data_dir.display()))?;
    check_writable(&config.data_dir)?;
    // A backup a crash interrupted: a copy of the store, no longer needed.
    crate::store::backup::remove_leftovers(&config.data_dir);
    // Before any record is read: they hold sealed secrets.
    let keys = secrets_keys(&config)?;
    let current_key = keys.current.id().to_string();
    crate::secrets::install(keys).map_err(anyhow::Error::msg)?;
    let (store, leases) = match &config.cluster {
        None => (
            Store::open_with_cache(&config.data_dir, config.store_cache_bytes)
                .with_context(|| format!("opening the store in {}", config.data_dir.display()))?,
            None,
        ),
        Some(cluster) => {
            let (store, leases) = join_cluster(&config, cluster).await?;
            (store, Some(leases))
        }
    };
    // Both backends: in cluster mode through guarded changes on the log,
    // while the other nodes serve (see `Store::reseal_secrets`).
    {
        let keys = crate::secrets::keys().expect("installed above");
        let resealed = store
            .reseal_secrets(keys)
            .await
            .context("sealing the stored secrets with server.secrets_key")?;
        if resealed.records > 0 {
            store
                .durable()
                .await
                .context("sealing the stored secrets")?;
            info!(records = resealed.records, key = %current_key, "secrets sealed again with the current key");
        }
    }
    let token = admin_token(&config)?;
    // Again, now that the store has created its files.
    make_private(&config.data_dir)
        .with_context(|| format!("restricting the data dir {}", config.data_dir.display()))?;
    let app = build_app_with(
        &config,
        store.clone(),
        Arc::new(SystemClock),
        leases.as_ref().map(Leases::ownership),
    )?;
    let (stop_tx, stop_rx) = watch::channel(false);
    // Leases are given back only after the workers stopped, so that no
    // other node starts a delivery this one is still attempting.
    let (leases_stop_tx, leases_stop) = watch::channel(false);
    let forwarding = api::forward::Forwarding::default();
    // Bound before the leases run: their heartbeat advertises the address.
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let local = listener.local_addr()?;
    let advertised = match config.cluster.as_ref().filter(|c| c.partitioned) {
        Some(cluster) => {
            let tls = cluster.auth.tls_ca_file.is_some()
                || cluster.urls.iter().any(|u| u.starts_with("tls://"));
            if let Some(ca) = &cluster.auth.tls_ca_file {
                // https:// peers may use the cluster's own CA.
                let pem = std::fs::read(ca)
                    .with_context(|| format!("reading cluster.tls_ca_file {}", ca.display()))?;
                api::forward::trust_peers(&pem)
                    .map_err(|e| anyhow::anyhow!("cluster.tls_ca_file: {e}"))?;
            }
            let url = cluster.advertise.url(local, &cluster.urls, tls);
            info!(
                url = url.as_deref().unwrap_or("none: over NATS"),
                "other nodes forward this node's partitions' requests to"
            );
            url
        }
        None => None,
    };
    let lease_keeper = leases.map(|mut leases| {
        leases.advertise(advertised);
        let on = Arc::new(LeaseChanges {
            queue: app.queue.clone(),
            forwarding: forwarding.clone(),
            keep_released: config
                .cluster
                .as_ref()
                .map_or(Duration::ZERO, |c| c.leases.lease * 2),
        });
        tokio::spawn(leases.run(on, wait_for(leases_stop.clone())))
    });
    info!(listen = %local, data = %config.data_dir.display(), outbox = app.queue.depth().0, "wasmhook serving");
    // Tests and scripts read the bound address (port 0 picks a free one).
    println!("wasmhook listening on http://{local}");

    let listeners = app.deliver.sender.listeners().clone();
    if let Some(client) = store.nats_client() {
        listeners.set_cluster(client);
    }
    tokio::spawn(listen_sweep(app.clone(), wait_for(stop_rx.clone())));
    let worker = tokio::spawn(Worker::new(app.deliver.clone()).run(wait_for(stop_rx.clone())));
    let pruner = tokio::spawn(prune_loop(app.clone(), wait_for(stop_rx.clone())));
    let scheduler = tokio::spawn(crate::window::run_scheduler(
        app.clone(),
        wait_for(stop_rx.clone()),
    ));
    let compactor = config
        .cluster
        .as_ref()
        .and_then(|c| c.snapshot_every)
        .map(|every| tokio::spawn(compact_loop(app.clone(), every, wait_for(stop_rx.clone()))));
    let feeds = build_feeds(&config);
    let consuming = feeds.start_all(&app)?;
    if consuming > 0 {
        info!(feeds = consuming, "NATS sources consuming");
    }
    let polls = Arc::new(crate::source::poll::Polls::default());
    let polling = polls.start_all(&app)?;
    if polling > 0 {
        info!(polls = polling, "poll sources polling");
    }
    if config.cluster.is_some() {
        tokio::spawn(polls.clone().supervise(app.clone()));
        tokio::spawn(feeds.clone().supervise(app.clone()));
    }

    let state = ApiState::new(api::ApiParts {
        app: app.clone(),
        feeds,
        polls,
        admin_token_hash: Arc::new(token_hash(&token)),
        max_event_bytes: config.max_event_bytes,
        max_plugin_bytes: config.max_plugin_bytes,
        public_url: config.public_url.clone(),
        rate_limiter: (config.ingest_rate_limit > 0)
            .then(|| Arc::new(RateLimiter::new(config.ingest_rate_limit))),
        source_rate_limiter: (config.source_rate_limit > 0)
            .then(|| Arc::new(RateLimiter::new(config.source_rate_limit))),
        telemetry: Telemetry::install(),
        backup_dir: config.data_dir.clone(),
        schemas: Default::default(),
    });
    if let Some(addr) = config.metrics_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening for metrics on {addr}"))?;
        info!(listen = %listener.local_addr()?, "metrics served without authentication");
        let metrics = api::metrics_router(state.clone());
        let stop = wait_for(stop_rx.clone());
        tokio::spawn(crate::http::serve(listener, metrics, config.http, stop));
    }
    let router = api::router(state);
    forwarding.set_router(router.clone());
    // A view that can no longer follow the cluster's log stops the node:
    // a restart loads the newest snapshot.
    let fault: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let watched = (store.clone(), fault.clone());
    crate::http::serve(listener, router, config.http, async move {
        tokio::select! {
            _ = shutdown => {}
            reason = watched.0.failed() => {
                error!(%reason, "this node cannot follow the cluster log: stopping");
                *watched.1.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
            }
        }
        info!("shutting down: no new requests");
        // The `wasmhook listen` streams end (they would hold the shutdown).
        listeners.close();
        let _ = stop_tx.send(true);
    })
    .await;
    let _ = worker.await;
    let _ = pruner.await;
    let _ = scheduler.await;
    if let Some(compactor) = compactor {
        let _ = compactor.await;
    }
    if let Some(keeper) = lease_keeper {
        // The work left is due in the records: give the partitions back.
        // With NATS gone that cannot be done; the leases then expire.
        let _ = leases_stop_tx.send(true);
        let abort = keeper.abort_handle();
        if tokio::time::timeout(LEASE_RELEASE_WAIT, keeper)
            .await
            .is_err()
        {
            abort.abort();
            warn!("giving the leases back took too long; they expire instead");
        }
    }
    // No request is served any more: the read lease ends, and other
    // nodes' writes stop waiting for this one.
    if tokio::time::timeout(LEASE_RELEASE_WAIT, store.leave())
        .await
        .is_err()
    {
        warn!("removing the read lease took too long; it runs out instead");
    }
    store.flush().context("flushing the store")?;
    if let Some(reason) = fault.lock().unwrap_or_else(|e| e.into_inner()).take() {
        anyhow::bail!("{reason}");
    }
    info!("stopped");
    Ok(())
}

/// The data directory holds secrets (the operator token, the records'
/// secrets): it is made readable by its owner only (0700), and so is
/// everything already in it (files 0600). What is created in it later is
/// behind the directory's mode.
#[cfg(unix)]
fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::symlink_metadata(dir)?;
    if metadata.is_dir() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        for entry in std::fs::read_dir(dir)? {
            make_private(&entry?.path())?;
        }
    } else if metadata.is_file() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn make_private(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Room the data directory must have at start: one probe of this size is
/// written and synced (a full disk is refused here, with a message, rather
/// than by the first event's 503).
const START_PROBE_BYTES: usize = 1 << 20;

/// Refuses a data directory that cannot take a write (full or read-only).
fn check_writable(dir: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let probe = dir.join(".wasmhook-space-probe");
    let result = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(&vec![0u8; START_PROBE_BYTES])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    result.map_err(|e| {
        let hint = if e.raw_os_error() == Some(28) {
            "the disk is full: free some space"
        } else {
            "check the permissions and the file system"
        };
        anyhow::anyhow!(
            "the data directory {} cannot take a 1 MiB write ({e}); {hint}",
            dir.display()
        )
    })
}

/// Cluster mode: connects (refusing to start, naming the URLs, when no
/// server answers), opens this node's view of the log (creating or checking
/// the stream) and the lease bucket. Public for the integration tests, which
/// run the engine in-process on both backends.
pub async fn join_cluster(
    config: &Config,
    cluster: &ClusterConfig,
) -> anyhow::Result<(Store, Leases)> {
    let settings = cluster.settings();
    let client = crate::cluster::connect(&settings).await?;
    let replicas = crate::cluster::replicas(&settings, &client);
    // A JetStream request that times out at start is most often a NATS
    // cluster that is still electing its meta leader (a fresh cluster, or
    // one restarting with this node): wait for it a while instead of
    // refusing to start. Any other fault still stops the start at once.
    let deadline = std::time::Instant::now() + JETSTREAM_START_PATIENCE;
    loop {
        match open_cluster_store(config, cluster, &client, replicas).await {
            Ok(joined) => return Ok(joined),
            Err(e) if jetstream_not_ready(&e) && std::time::Instant::now() < deadline => {
                warn!(error = %format!("{e:#}"), "JetStream is not answering yet; trying again");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// How long a starting node waits for JetStream to answer.
const JETSTREAM_START_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether the start failed on a JetStream request that may succeed later.
fn jetstream_not_ready(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<crate::cluster::ClusterError>(),
            Some(crate::cluster::ClusterError::JetStream(_))
        ) || matches!(
            cause.downcast_ref::<crate::store::StoreError>(),
            Some(crate::store::StoreError::Cluster(
                crate::cluster::ClusterError::JetStream(_)
            ))
        )
    })
}

async fn open_cluster_store(
    config: &Config,
    cluster: &ClusterConfig,
    client: &async_nats::Client,
    replicas: usize,
) -> anyhow::Result<(Store, Leases)> {
    let store = Store::open_cluster(
        &config.data_dir,
        config.store_cache_bytes,
        client.clone(),
        replicas,
        &cluster.node_id,
        cluster.partitioned.then_some(cluster.leases.partitions),
    )
    .await
    .with_context(|| {
        format!(
            "opening this node's view of the cluster log in {}",
            config.data_dir.display()
        )
    })?;
    let js = async_nats::jetstream::new(client.clone());
    let kv = crate::cluster::leases::ensure_bucket(&js, replicas, &cluster.leases).await?;
    let leases = Leases::new(kv, &cluster.node_id, cluster.leases);
    if cluster.partitioned {
        // Every node of a partitioned cluster waits for the others' read
        // leases; it reads under one of its own unless they are off.
        let ownership = leases.ownership();
        store
            .lease_reads(cluster.read_lease, Arc::new(move || ownership.nodes()))
            .await?;
    }
    info!(node = %cluster.node_id, replicas, partitions = cluster.leases.partitions, "joined the cluster");
    Ok((store, leases))
}

/// What a node does when it gains or loses a partition's lease: its queue
/// loads or drops the partition's deliveries. A partitioned cluster: the
/// partition's data log is read before the lease counts, and its
/// forwarded requests answered here while held.
pub struct LeaseChanges {
    pub queue: Queue,
    pub forwarding: api::forward::Forwarding,
    /// How long a given-up partition's data is kept: taken back within it
    /// (a NATS blip cost the lease), it is read on from where it stopped
    /// instead of from the start.
    pub keep_released: std::time::Duration,
}

impl OnChange for LeaseChanges {
    fn prepares(&self) -> bool {
        self.queue.store().data_partitions().is_some()
    }

    fn prepare(&self, partition: u32) -> futures_util::future::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let store = self.queue.store();
            let Some(client) = store
                .nats_client()
                .filter(|_| store.data_partitions().is_some())
            else {
                return Ok(());
            };
            let started = std::time::Instant::now();
            // Right after a NATS server is lost, JetStream requests time out
            // for a while: the lease is kept and the reading tried again
            // (giving it back would only make another node try the same),
            // up to a limit; a hanging call is cut off by it too.
            let reading = async {
                let mut wait = std::time::Duration::from_millis(500);
                loop {
                    match store.open_partition(partition).await {
                        Ok(()) => return Ok(()),
                        Err(e) if e.is_unavailable() => {
                            warn!(partition, error = %e, "reading a partition; trying again");
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(std::time::Duration::from_secs(8));
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
            };
            let read = tokio::time::timeout(PREPARE_PATIENCE, reading)
                .await
                .map_err(|_| format!("reading the partition took over {PREPARE_PATIENCE:?}"))
                .and_then(|read| read);
            read?;
            // Forwarded requests answered here from now on (subscribed and
            // flushed before the lease counts).
            if let Err(e) = self.forwarding.serve(client, partition).await {
                return Err(format!("answering the partition's forwarded requests: {e}"));
            }
            info!(
                partition,
                took_ms = started.elapsed().as_millis() as u64,
                "partition's data read"
            );
            Ok(())
        })
    }

    fn gained(&self, partition: u32) {
        if let Err(e) = self.queue.gained(partition) {
            warn!(partition, error = %e, "loading a gained partition's deliveries");
        }
        info!(partition, "partition leased");
    }

    fn lost(&self, partition: u32) {
        self.forwarding.stop(partition);
        self.queue.lost(partition);
        let store = self.queue.store().clone();
        if store.data_partitions().is_some() {
            store.release_partition(partition);
            let keep = self.keep_released;
            tokio::spawn(async move {
                tokio::time::sleep(keep).await;
                if let Err(e) = store.drop_released(partition).await {
                    warn!(partition, error = %e, "dropping a given-up partition's data");
                }
            });
        }
        info!(partition, "partition lease given up");
    }
}

async fn wait_for(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn prune_loop(app: App, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let cutoff = app.clock.now()
            - jiff::SignedDuration::try_from(app.settings.retention).unwrap_or_default();
        // In a replica set, one node prunes for all (the others would
        // repeat it); partitioned, each node its own partitions.
        let pruned = if app.leads() || app.store.data_partitions().is_some() {
            app.store.prune(cutoff).await
        } else {
            Ok((0, 0))
        };
        match pruned {
            Ok((0, 0)) => {}
            Ok((events, deliveries)) => info!(events, deliveries, "pruned"),
            Err(e) => warn!(error = %e, "pruning failed"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}

/// Cluster mode: every `every`, the node holding partition 0 snapshots
/// its view and compacts the log (one node does it for all).
/// Deletes the `wasmhook listen` subscriptions whose CLI is gone.
async fn listen_sweep(app: App, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut round = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(crate::deliver::listen::SWEEP_EVERY) => {}
            _ = &mut shutdown => return,
        }
        let listeners = app.deliver.sender.listeners();
        if let Err(e) = crate::deliver::listen::sweep(&app.store, listeners, round).await {
            warn!(error = %e, "expiring listen subscriptions failed; trying again");
        }
        round += 1;
    }
}

async fn compact_loop(app: App, every: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(every) => {}
        }
        // Partitioned: each node compacts the partitions it holds.
        for (partition, compacted) in app.store.compact_partitions().await {
            match compacted {
                Ok((seq, purged_below)) => {
                    info!(partition, seq, purged_below, "partition snapshot stored")
                }
                Err(e) => {
                    warn!(partition, error = %e, "partition compaction failed; retried at the next interval")
                }
            }
        }
        if !app.leads() {
            continue;
        }
        match app.store.compact().await {
            Ok(Some((seq, purged_below))) => {
                info!(seq, purged_below, "log snapshot stored")
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "log compaction failed; retried at the next interval"),
        }
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are registered here, at
/// once, not when the future is first polled: a signal that arrives
/// between the listener answering and the accept loop first polling this
/// future (a busy machine) must stop the server gracefully, not kill it.
/// Call it inside the runtime, before serving.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
