//! The plugin sandbox: the only module that touches wasmtime.
//!
//! One [`Runtime`] per process holds the engine (pooling allocator,
//! copy-on-write memory images, epoch interruption) and a linker with the
//! host's imports. [`Runtime::load`] validates a component against the
//! `wasmhook:plugin/transform` world and pre-instantiates it once; every call
//! then gets a **fresh instance** with its own limits, so a plugin keeps no
//! state and one misbehaving call cannot affect the next one or another
//! tenant's.

pub mod admission;
mod bindings;
pub mod bundled;
mod cache;
mod state;
pub mod types;

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap, UpdateDeadline,
};

use bindings::source::{Source, SourcePre};
use bindings::{Transform, TransformPre};
pub use cache::{ArtifactDigests, CacheDirs, MemoryDigests};
pub use state::IdClock;
use state::{Determinism, LogLimits, State};
pub use types::*;

/// How often the epoch advances: the granularity of time limits and of a
/// long-running plugin's yields to the async executor.
const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Bytes a call may copy into the host beyond its output limit: list and
/// record overhead, and the error variants' strings.
const LIFT_SLACK_BYTES: usize = 64 * 1024;

/// wasmtime 48's message when a lift runs out of hostcall fuel (its error
/// type is private, so the text is all there is to recognise it by).
const HOSTCALL_FUEL_EXHAUSTED: &str = "fuel allocated for hostcalls has been exhausted";

/// Sandbox limits; every field has the default the design card gives.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Linear memory a call may grow to (bytes).
    pub memory_bytes: usize,
    /// Wall-clock budget of `handle` and `check-config` (ms).
    pub handle_timeout_ms: u64,
    /// Wall-clock budget of `flush` (ms).
    pub flush_timeout_ms: u64,
    /// Total bytes a call may return (request bodies and headers, held items).
    pub output_bytes: usize,
    /// Requests one call may return.
    pub max_requests: usize,
    /// Log lines kept per call.
    pub log_lines: usize,
    /// Longest kept log line (bytes).
    pub log_line_bytes: usize,
    /// Largest component accepted (bytes).
    pub plugin_bytes: usize,
    /// Instances that may run at once (sizes the pooling allocator).
    pub max_concurrent_calls: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 32 << 20,
            handle_timeout_ms: 50,
            flush_timeout_ms: 1_000,
            output_bytes: 1 << 20,
            max_requests: 16,
            log_lines: 100,
            log_line_bytes: 1024,
            // A JavaScript component (SpiderMonkey inside) is ~12 MB, a
            // Python one (CPython inside) ~18 MB.
            plugin_bytes: 32 << 20,
            max_concurrent_calls: 256,
        }
    }
}

/// Why a component was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error(
        "this is a core WebAssembly module, not a component: build the plugin with `cargo build --target wasm32-wasip2`"
    )]
    CoreModule,
    #[error("not a WebAssembly component (the file does not start with the wasm magic bytes)")]
    NotWasm,
    #[error("invalid component: {0}")]
    Invalid(String),
    #[error(
        "plugin imports something wasmhook does not provide: {0} (plugins may import only wasmhook:plugin/host and WASI 0.2 io, cli, clocks, random, filesystem and sockets)"
    )]
    UnsupportedImport(String),
    #[error(
        "plugin does not implement the wasmhook:plugin/transform world (nor the source world): {0}"
    )]
    WrongWorld(String),
    #[error("setting up the sandbox failed: {0}")]
    Engine(String),
}

/// Why a call failed. Each sandbox limit has its own variant so the delivery
/// log can say exactly what happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("plugin exceeded its {limit_ms} ms time limit")]
    Timeout { limit_ms: u64 },
    #[error("plugin exceeded its memory limit of {limit_bytes} bytes")]
    MemoryLimit { limit_bytes: usize },
    #[error("plugin panicked: {message}")]
    Panic { message: String },
    #[error("plugin trapped: {message}")]
    Trap { message: String },
    #[error("plugin output is {size} bytes, over the {limit}-byte limit")]
    OutputTooLarge { size: usize, limit: usize },
    #[error("plugin tried to return more than its {limit}-byte output limit")]
    OutputOverLimit { limit: usize },
    #[error("plugin returned {count} requests, over the limit of {limit}")]
    TooManyRequests { count: usize, limit: usize },
    #[error("plugin set the reserved header {name:?}; wasmhook sets it itself")]
    ReservedHeader { name: String },
    #[error("plugin set an invalid header {name:?}: {reason}")]
    InvalidHeader { name: String, reason: String },
    #[error("the sandbox could not start the plugin: {message}")]
    Instantiate { message: String },
    #[error("this plugin implements the {actual} world; this use needs the {expected} world")]
    WrongWorld {
        expected: &'static str,
        actual: &'static str,
    },
    #[error(transparent)]
    Plugin(#[from] PluginError),
}

impl CallError {
    /// The outcome label of the plugin-call metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            CallError::Plugin(_) => "plugin_error",
            CallError::Timeout { .. } => "timeout",
            CallError::MemoryLimit { .. } => "memory",
            CallError::Panic { .. } | CallError::Trap { .. } => "trap",
            CallError::OutputTooLarge { .. }
            | CallError::OutputOverLimit { .. }
            | CallError::TooManyRequests { .. }
            | CallError::ReservedHeader { .. }
            | CallError::InvalidHeader { .. } => "output",
            CallError::Instantiate { .. } | CallError::WrongWorld { .. } => "instantiate",
        }
    }
}

/// The outcome of one call plus what the plugin logged and how long it took:
/// the log matters most when the call failed.
#[derive(Debug, Clone)]
pub struct CallReport<T> {
    pub result: Result<T, CallError>,
    pub log: Vec<LogLine>,
    pub elapsed: Duration,
    /// The ids `host.delivery-id` handed out, by request index: the
    /// deliveries made of the requests take them.
    pub delivery_ids: Vec<String>,
    /// The held items `host.take-held` handed out: to remove with the
    /// call's result.
    pub taken: Vec<TakenItem>,
}

impl<T> CallReport<T> {
    /// Post-processes a successful result (conversion, output checks),
    /// keeping the log and timing.
    fn and_then<U>(self, f: impl FnOnce(T) -> Result<U, CallError>) -> CallReport<U> {
        CallReport {
            result: self.result.and_then(f),
            log: self.log,
            elapsed: self.elapsed,
            delivery_ids: self.delivery_ids,
            taken: self.taken,
        }
    }
}

/// Headers a plugin may not set besides HTTP's own
/// ([`crate::sign::HTTP_OWNED_HEADERS`]): the signature and delivery
/// headers that `sign` owns.
const RESERVED_HEADERS: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-webhook-signature",
    "x-owc-signature",
    "x-owc-event",
    "x-owc-delivery",
    "x-ohallo-signature",
];

/// A validated, pre-instantiated plugin of either world. Cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    pre: Pre,
    component: Component,
    /// Hex SHA-256 of the component bytes: its identity in the store.
    pub sha256: String,
    /// Size of the component bytes.
    pub size: usize,
}

/// The pre-instantiated exports of the world the component implements.
#[derive(Clone)]
enum Pre {
    Transform(TransformPre<State>),
    Source(SourcePre<State>),
}

impl Plugin {
    /// The world the component implements.
    pub fn world(&self) -> World {
        match self.pre {
            Pre::Transform(_) => World::Transform,
            Pre::Source(_) => World::Source,
        }
    }

    fn wrong_world<T>(&self, expected: World) -> CallReport<T> {
        CallReport {
            result: Err(CallError::WrongWorld {
                expected: expected.wit_name(),
                actual: self.world().wit_name(),
            }),
            log: Vec::new(),
            elapsed: Duration::ZERO,
            delivery_ids: Vec::new(),
            taken: Vec::new(),
        }
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("world", &self.world())
            .field("sha256", &self.sha256)
            .field("size", &self.size)
            .finish()
    }
}

/// What `plugin check` prints about a component.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginInfo {
    pub sha256: String,
    pub size: usize,
    pub world: &'static str,
    /// `transform` (a subscription's plugin) or `source` (a source's adapter).
    pub kind: World,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// The sandbox. Cheap to clone; one per process.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<State>,
    limits: Limits,
    cache: Option<cache::ArtifactCache>,
    /// Advances the epoch while calls run (and only then).
    ticker: Arc<Ticker>,
    /// Stamps the ids `host.delivery-id` hands out (the engine's clock).
    id_clock: RwLock<IdClock>,
}

impl Runtime {
    /// Builds the engine and linker. `cache_dir` keeps compiled artifacts
    /// (None: compile in memory every load); their digests live only as long
    /// as this runtime, so a file left by an earlier process is recompiled.
    pub fn new(limits: Limits, cache_dir: Option<PathBuf>) -> Result<Self, LoadError> {
        Self::with_cache(
            limits,
            CacheDirs {
                private: cache_dir.map(|dir| (dir, Arc::new(cache::MemoryDigests::default()) as _)),
                shared: None,
            },
        )
    }

    /// Like [`Runtime::new`], with the private cache's digests kept where
    /// the caller says (the store, so a restart maps the artifacts it can
    /// trust) and, optionally, a directory shared with the host's other
    /// wasmhook processes.
    pub fn with_cache(limits: Limits, cache: CacheDirs) -> Result<Self, LoadError> {
        let engine_err = |e: wasmtime::Error| LoadError::Engine(format!("{e:#}"));
        let mut pool = PoolingAllocationConfig::default();
        // Resetting a used instance's memory (BENCHMARKS.md, "Plugin
        // calls"): with Linux's PAGEMAP_SCAN (6.7+) wasmtime copies back only
        // the pages a call dirtied, up to 1 MiB, and the slot's pages stay
        // mapped for the next call: 10 µs a Rust call instead of 22, 0.26 ms
        // a JavaScript one instead of 0.54. Without it, keeping memory
        // resident means a memset of the whole 1 MiB (38 µs), so madvise it
        // all instead (keep_resident 0).
        let pagemap = PoolingAllocationConfig::is_pagemap_scan_available();
        let slots = limits.max_concurrent_calls.max(1);
        // A Rust wasip2 component has one main core instance plus a few small
        // shim instances; 8 per call leaves headroom for other toolchains.
        pool.total_component_instances(slots)
            .total_core_instances(slots * 8)
            .total_memories(slots * 2)
            .total_tables(slots * 8)
            .total_stacks(slots)
            .max_memories_per_component(2)
            .max_memory_size(limits.memory_bytes.next_multiple_of(64 * 1024) * 2)
            .pagemap_scan(if pagemap {
                wasmtime::Enabled::Yes
            } else {
                wasmtime::Enabled::No
            })
            .linear_memory_keep_resident(if pagemap { 1 << 20 } else { 0 })
            // Tables are small and cheaper to memset than to madvise.
            .table_keep_resident(64 * 1024);

        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(engine_err)?;

        let mut linker = Linker::<State>::new(&engine);
        // All of WASI 0.2, each interface with nothing real behind it (see
        // `state`): a JavaScript or Python runtime imports them all.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_err)?;
        Transform::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(engine_err)?;

        let ticker = Ticker::spawn(&engine);
        let cache = cache::ArtifactCache::open(cache, &engine)
            .map_err(|e| LoadError::Engine(format!("compiled-plugin cache: {e}")))?;
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                linker,
                limits,
                cache,
                ticker,
                id_clock: RwLock::new(Arc::new(jiff::Timestamp::now)),
            }),
        })
    }

    /// Drops the cached artifact of a component no plugin uses any more.
    pub fn forget(&self, sha256: &str) {
        if let Some(cache) = &self.inner.cache {
            cache.remove(sha256);
        }
    }

    /// The clock that stamps delivery ids handed to plugins (the engine's,
    /// so a manual clock in tests stamps them too).
    pub fn set_id_clock(&self, clock: IdClock) {
        *self
            .inner
            .id_clock
            .write()
            .unwrap_or_else(|e| e.into_inner()) = clock;
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Validates and pre-instantiates a component: size cap, component (not
    /// core module), compiles (or reuses the cached artifact), imports only
    /// what the host provides, exports the whole `transform` or `source`
    /// world.
    pub fn load(&self, wasm: &[u8]) -> Result<Plugin, LoadError> {
        let limits = &self.inner.limits;
        if wasm.len() > limits.plugin_bytes {
            return Err(LoadError::TooLarge {
                size: wasm.len(),
                limit: limits.plugin_bytes,
            });
        }
        check_header(wasm)?;
        let sha256 = hex::encode(Sha256::digest(wasm));
        let component = match &self.inner.cache {
            Some(cache) => cache.load(&self.inner.engine, &sha256, wasm)?,
            None => Component::new(&self.inner.engine, wasm)
                .map_err(|e| LoadError::Invalid(format!("{e:#}")))?,
        };
        let instance_pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::UnsupportedImport(format!("{e:#}")))?;
        let pre = match TransformPre::new(instance_pre.clone()) {
            Ok(pre) => Pre::Transform(pre),
            Err(not_transform) => match SourcePre::new(instance_pre) {
                Ok(pre) => Pre::Source(pre),
                Err(_) => return Err(LoadError::WrongWorld(format!("{not_transform:#}"))),
            },
        };
        Ok(Plugin {
            pre,
            component,
            sha256,
            size: wasm.len(),
        })
    }

    /// Describes a loaded plugin: its imports, exports and identity.
    pub fn info(&self, plugin: &Plugin) -> PluginInfo {
        let ty = plugin.component.component_type();
        let engine = &self.inner.engine;
        PluginInfo {
            sha256: plugin.sha256.clone(),
            size: plugin.size,
            world: plugin.world().wit_name(),
            kind: plugin.world(),
            imports: ty
                .imports(engine)
                .map(|(name, _)| name.to_string())
                .collect(),
            exports: ty
                .exports(engine)
                .map(|(name, _)| name.to_string())
                .collect(),
        }
    }

    /// Runs `check-config` on a subscription's plugin settings or a
    /// source's adapter settings (either world has it).
    pub async fn check_config(&self, plugin: &Plugin, config: &str) -> CallReport<()> {
        let limit = self.inner.limits.handle_timeout_ms;
        let determinism = Determinism {
            now: Duration::ZERO,
            seed: Sha256::digest(config.as_bytes()).into(),
        };
        match &plugin.pre {
            Pre::Transform(pre) => {
                self.call(limit, determinism, async |store| {
                    let bindings = pre.instantiate_async(&mut *store).await?;
                    let result = bindings.call_check_config(store, config).await?;
                    Ok(result.map_err(bindings::from_wit_error))
                })
                .await
            }
            Pre::Source(pre) => {
                self.call(limit, determinism, async |store| {
                    let bindings: Source = pre.instantiate_async(&mut *store).await?;
                    let result = bindings.call_check_config(store, config).await?;
                    Ok(result.map_err(bindings::from_wit_source_error))
                })
                .await
            }
        }
    }

    /// Runs a source adapter's `normalize` on one verified request.
    pub async fn normalize(
        &self,
        plugin: &Plugin,
        request: &Inbound,
        config: &str,
    ) -> CallReport<Normalized> {
        let Pre::Source(pre) = &plugin.pre else {
            return plugin.wrong_world(World::Source);
        };
        let limit = self.inner.limits.handle_timeout_ms;
        let determinism = Determinism {
            now: since_epoch(&request.received_at),
            seed: Sha256::digest(request.body.as_bytes()).into(),
        };
        let inbound = bindings::to_wit_inbound(request);
        self.call(limit, determinism, async |store| {
            let bindings = pre.instantiate_async(&mut *store).await?;
            let result = bindings.call_normalize(store, &inbound, config).await?;
            Ok(result
                .map(bindings::from_wit_normalized)
                .map_err(bindings::from_wit_source_error))
        })
        .await
        .and_then(|normalized| {
            let size: usize = normalized
                .events
                .iter()
                .map(|e| e.payload.len() + e.event_type.len())
                .sum::<usize>()
                + normalized.reply.as_ref().map_or(0, String::len);
            self.check_size(size)?;
            Ok(normalized)
        })
    }

    /// Runs `handle` on one event (no held items to take: dry runs, tests).
    pub async fn handle(
        &self,
        plugin: &Plugin,
        event: &PluginEvent,
        config: &str,
    ) -> CallReport<Action> {
        self.handle_with(plugin, event, config, None).await
    }

    /// Runs `handle` on one event; `held` serves `host.take-held`.
    pub async fn handle_with(
        &self,
        plugin: &Plugin,
        event: &PluginEvent,
        config: &str,
        held: Option<Arc<dyn HeldSource>>,
    ) -> CallReport<Action> {
        let limit = self.inner.limits.handle_timeout_ms;
        let determinism = Determinism {
            now: since_epoch(&event.occurred_at),
            seed: Sha256::digest(event.id.as_bytes()).into(),
        };
        let Pre::Transform(pre) = &plugin.pre else {
            return plugin.wrong_world(World::Transform);
        };
        let event = bindings::to_wit_event(event);
        self.call_with(limit, determinism, held, async |store| {
            let bindings = pre.instantiate_async(&mut *store).await?;
            let result = bindings.call_handle(store, &event, config).await?;
            Ok(result.map_err(bindings::from_wit_error))
        })
        .await
        .and_then(|action| self.check_action(bindings::from_wit_action(action)))
    }

    /// Runs `flush` on one closed window's groups.
    pub async fn flush(
        &self,
        plugin: &Plugin,
        window: &WindowBounds,
        groups: &[HeldGroup],
        config: &str,
    ) -> CallReport<Vec<PluginRequest>> {
        let limit = self.inner.limits.flush_timeout_ms;
        let determinism = Determinism {
            now: since_epoch(&window.end),
            seed: Sha256::digest(format!("{}/{}", window.start, window.end)).into(),
        };
        let Pre::Transform(pre) = &plugin.pre else {
            return plugin.wrong_world(World::Transform);
        };
        let window = bindings::to_wit_window(window);
        let groups = bindings::to_wit_groups(groups);
        self.call(limit, determinism, async |store| {
            let bindings = pre.instantiate_async(&mut *store).await?;
            let result = bindings.call_flush(store, &window, &groups, config).await?;
            Ok(result.map_err(bindings::from_wit_error))
        })
        .await
        .and_then(|requests| {
            self.check_requests(
                requests
                    .into_iter()
                    .map(bindings::from_wit_request)
                    .collect(),
            )
        })
    }

    /// One call in a fresh store: set the limits, run `f` (which
    /// instantiates and calls), classify any failure, collect the log.
    async fn call<T, F>(&self, limit_ms: u64, determinism: Determinism, f: F) -> CallReport<T>
    where
        F: AsyncFnOnce(&mut Store<State>) -> wasmtime::Result<Result<T, PluginError>>,
    {
        self.call_with(limit_ms, determinism, None, f).await
    }

    /// [`Runtime::call`] with `held` behind `host.take-held`.
    async fn call_with<T, F>(
        &self,
        limit_ms: u64,
        determinism: Determinism,
        held: Option<Arc<dyn HeldSource>>,
        f: F,
    ) -> CallReport<T>
    where
        F: AsyncFnOnce(&mut Store<State>) -> wasmtime::Result<Result<T, PluginError>>,
    {
        let started = Instant::now();
        let _ticking = self.inner.ticker.running();
        let limits = &self.inner.limits;
        let log_limits = LogLimits {
            max_lines: limits.log_lines,
            max_line_bytes: limits.log_line_bytes,
        };
        let mut store = Store::new(
            &self.inner.engine,
            State::new(
                limits.memory_bytes,
                log_limits,
                determinism,
                self.inner
                    .id_clock
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            ),
        );
        store.data_mut().held = held;
        store.limiter(|state| &mut state.limiter);
        // Lifting a result copies it into host memory before any output
        // check can look at it: cap the copy near the output limit (the
        // slack covers the records' own bytes) instead of wasmtime's 128 MiB.
        store.set_hostcall_fuel(limits.output_bytes.saturating_add(LIFT_SLACK_BYTES));
        // Every epoch tick, a running plugin yields to tokio (so a busy plugin
        // never holds a worker thread for its whole budget) and is
        // interrupted once its wall-clock budget is spent.
        let deadline = started + Duration::from_millis(limit_ms);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });

        // The epoch interrupts only running wasm; a plugin waiting in a host
        // call (a WASI poll on a clock) is stopped by this timeout instead.
        let run = f(&mut store);
        let outcome = match tokio::time::timeout(Duration::from_millis(limit_ms), run).await {
            Ok(outcome) => outcome,
            Err(_) => Err(wasmtime::Error::new(Trap::Interrupt)),
        };
        let mut log = store.data_mut().take_log();
        let delivery_ids = std::mem::take(&mut store.data_mut().delivery_ids);
        let taken = std::mem::take(&mut store.data_mut().taken);
        let result = match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(plugin_error)) => Err(CallError::Plugin(plugin_error)),
            Err(e) => Err(classify(e, store.data(), limit_ms, limits, &log)),
        };
        if let Err(CallError::Panic { .. }) = &result {
            // The panic message is the error; keep the log for everything else.
            log.retain(|l| !l.message.contains("panicked at"));
        }
        drop(store);
        let elapsed = started.elapsed();
        crate::telemetry::plugin_call(
            result.as_ref().err().map_or("ok", CallError::outcome),
            elapsed,
        );
        CallReport {
            result,
            log,
            elapsed,
            delivery_ids,
            taken,
        }
    }

    fn check_action(&self, action: Action) -> Result<Action, CallError> {
        match action {
            Action::Deliver { requests } => Ok(Action::Deliver {
                requests: self.check_requests(requests)?,
            }),
            Action::Hold { items } => {
                let size: usize = items.iter().map(|i| i.group.len() + i.item.len()).sum();
                self.check_size(size)?;
                Ok(Action::Hold { items })
            }
            skip @ Action::Skip { .. } => Ok(skip),
        }
    }

    fn check_requests(
        &self,
        requests: Vec<PluginRequest>,
    ) -> Result<Vec<PluginRequest>, CallError> {
        let limit = self.inner.limits.max_requests;
        if requests.len() > limit {
            return Err(CallError::TooManyRequests {
                count: requests.len(),
                limit,
            });
        }
        let mut size = 0;
        for request in &requests {
            size += request.body.len() + request.content_type.len();
            for header in &request.headers {
                check_header_name(header)?;
                size += header.name.len() + header.value.len();
            }
        }
        self.check_size(size)?;
        Ok(requests)
    }

    fn check_size(&self, size: usize) -> Result<(), CallError> {
        let limit = self.inner.limits.output_bytes;
        if size > limit {
            return Err(CallError::OutputTooLarge { size, limit });
        }
        Ok(())
    }
}

/// Turns a wasmtime error into the limit or fault that caused it.
fn classify(
    error: wasmtime::Error,
    state: &State,
    limit_ms: u64,
    limits: &Limits,
    log: &[LogLine],
) -> CallError {
    if state.limiter.exceeded {
        return CallError::MemoryLimit {
            limit_bytes: limits.memory_bytes,
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Timeout { limit_ms },
        Some(trap) => {
            // Rust guests print "panicked at <file>:<line>:<col>:\n<message>"
            // to stderr, then abort with `unreachable`.
            if let Some(message) = panic_message(log) {
                CallError::Panic { message }
            } else {
                CallError::Trap {
                    message: trap.to_string(),
                }
            }
        }
        None => {
            let message = format!("{error:#}");
            if message.contains(HOSTCALL_FUEL_EXHAUSTED) {
                CallError::OutputOverLimit {
                    limit: limits.output_bytes,
                }
            } else if message.contains("instantiat") {
                CallError::Instantiate { message }
            } else {
                CallError::Trap { message }
            }
        }
    }
}

/// The panic message from captured stderr, if the guest panicked.
fn panic_message(log: &[LogLine]) -> Option<String> {
    let at = log.iter().position(|l| l.message.contains("panicked at"))?;
    let location = log[at].message.trim();
    let detail: Vec<&str> = log[at + 1..]
        .iter()
        .map(|l| l.message.trim())
        .take_while(|m| !m.starts_with("note:"))
        .collect();
    Some(if detail.is_empty() {
        location.to_string()
    } else {
        format!("{} ({})", detail.join(" "), location.trim_end_matches(':'))
    })
}

fn check_header_name(header: &Header) -> Result<(), CallError> {
    let lower = header.name.to_ascii_lowercase();
    if RESERVED_HEADERS.contains(&lower.as_str())
        || crate::sign::HTTP_OWNED_HEADERS.contains(&lower.as_str())
    {
        return Err(CallError::ReservedHeader {
            name: header.name.clone(),
        });
    }
    let invalid = |reason: &str| CallError::InvalidHeader {
        name: header.name.clone(),
        reason: reason.to_string(),
    };
    let is_token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if header.name.is_empty() || !header.name.chars().all(is_token) {
        return Err(invalid(
            "a header name is letters, digits and !#$%&'*+-.^_`|~",
        ));
    }
    if header
        .value
        .chars()
        .any(|c| c == '\r' || c == '\n' || c == '\0')
    {
        return Err(invalid("the value contains a line break or NUL"));
    }
    Ok(())
}

/// An RFC 3339 instant as time since the Unix epoch (the epoch itself when
/// the text is not one, or is before it).
fn since_epoch(rfc3339: &str) -> Duration {
    rfc3339
        .parse::<jiff::Timestamp>()
        .ok()
        .and_then(|t| Duration::try_from(t.duration_since(jiff::Timestamp::UNIX_EPOCH)).ok())
        .unwrap_or(Duration::ZERO)
}

/// Component vs core module vs not wasm, from the preamble, so the error says
/// which.
fn check_header(wasm: &[u8]) -> Result<(), LoadError> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return Err(LoadError::NotWasm);
    }
    match &wasm[4..8] {
        [1, 0, 0, 0] => Err(LoadError::CoreModule),
        [_, _, 1, 0] => Ok(()),
        other => Err(LoadError::Invalid(format!(
            "unknown WebAssembly version/layer bytes {other:?}"
        ))),
    }
}

/// The epoch ticker: a thread that advances the engine's epoch every
/// [`EPOCH_TICK`] while at least one call runs, and sleeps otherwise (an
/// idle router should burn no CPU on 500 wake-ups a second). It ends once
/// the last handle to the engine is gone.
struct Ticker {
    /// Calls running now.
    running: Mutex<usize>,
    wake: Condvar,
}

/// One running call; the ticker may sleep once none is left.
struct Ticking<'a>(&'a Ticker);

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        let mut n = self.0.running.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
    }
}

impl Ticker {
    fn spawn(engine: &Engine) -> Arc<Self> {
        let ticker = Arc::new(Ticker {
            running: Mutex::new(0),
            wake: Condvar::new(),
        });
        let (engine, this) = (engine.weak(), ticker.clone());
        std::thread::Builder::new()
            .name("wasmhook-epoch".into())
            .spawn(move || {
                loop {
                    {
                        let mut n = this.running.lock().unwrap_or_else(|e| e.into_inner());
                        while *n == 0 {
                            // Wake now and then to notice the engine is gone.
                            n = this
                                .wake
                                .wait_timeout(n, Duration::from_secs(1))
                                .unwrap_or_else(|e| e.into_inner())
                                .0;
                            if *n == 0 && engine.upgrade().is_none() {
                                return;
                            }
                        }
                    }
                    std::thread::sleep(EPOCH_TICK);
                    match engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .expect("spawn the epoch thread");
        ticker
    }

    /// Marks a call as running (the ticker ticks) until the guard drops.
    fn running(&self) -> Ticking<'_> {
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.wake.notify_one();
        Ticking(self)
    }
}
