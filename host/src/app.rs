//! The shared context every stage works with: the records, the queue, the
//! sandbox, the plugin registry, the HTTP sender, the clock, and the
//! settings they need.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::deliver;
use crate::plugins::Registry;
use crate::queue::Queue;
use crate::store::Store;

/// Engine settings (from the `[delivery]`, `[events]` and `[limits]`
/// config sections).
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Attempts in flight at once, all subscriptions together.
    pub workers: usize,
    /// Default per-subscription cap on attempts in flight.
    pub max_in_flight_per_subscription: u32,
    /// Cap on one tenant's attempts in flight, all its subscriptions together.
    pub max_in_flight_per_tenant: u32,
    /// Events and finished deliveries are kept this long.
    pub retention: Duration,
    /// How long an old secret keeps signing after a rotation.
    pub secret_grace: Duration,
    /// Per-attempt timeout of new subscriptions.
    pub default_timeout: Duration,
    /// Bounds on what one tenant or one request may create.
    pub bounds: Bounds,
    /// The bytes of dead letters one source keeps.
    pub dead_letter_bytes: u64,
}

/// Every input is bounded; each bound is a config key (`[limits]`) and
/// each excess a 4xx that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub subscriptions_per_tenant: usize,
    /// Applications one tenant may have.
    pub apps_per_tenant: usize,
    /// Entries of one tenant's event-type catalog.
    pub event_types_per_tenant: usize,
    pub plugins_per_tenant: usize,
    /// Deliveries one request (a batch × its fan-out × plugin splits) may create.
    pub deliveries_per_request: usize,
    /// The backlog quota: deliveries queued or in flight for one tenant.
    pub pending_deliveries_per_tenant: u64,
    /// The largest `window.max_bytes` a subscription may ask for (a window
    /// must stay flushable by a plugin with the sandbox's memory).
    pub window_max_bytes: u64,
    /// The largest `window.max_items`.
    pub window_max_items: u64,
    /// API keys one tenant may have.
    pub keys_per_tenant: usize,
    /// Sources (inbound platform endpoints) one tenant may have.
    pub sources_per_tenant: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            subscriptions_per_tenant: 1_000,
            apps_per_tenant: 10_000,
            event_types_per_tenant: 1_000,
            plugins_per_tenant: 100,
            deliveries_per_request: 10_000,
            pending_deliveries_per_tenant: 100_000,
            window_max_bytes: 8 << 20,
            window_max_items: 100_000,
            keys_per_tenant: 20,
            sources_per_tenant: 100,
        }
    }
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            workers: 64,
            max_in_flight_per_subscription: 8,
            max_in_flight_per_tenant: 16,
            retention: Duration::from_secs(30 * 24 * 3600),
            secret_grace: Duration::from_secs(24 * 3600),
            default_timeout: Duration::from_secs(15),
            bounds: Bounds::default(),
            dead_letter_bytes: 16 << 20,
        }
    }
}

/// Cheap to clone; one per process.
#[derive(Clone)]
pub struct App {
    pub store: Store,
    /// Work to do: enqueued with its records, visible once durable.
    pub queue: Queue,
    pub plugins: Registry,
    /// The delivery stage (worker, attempts): handed only what it uses.
    pub deliver: deliver::Stage,
    pub clock: Arc<dyn Clock>,
    pub settings: EngineSettings,
    /// Cluster mode: the partitions this node leases (None: embedded, this
    /// node does all the work).
    pub ownership: Option<crate::cluster::leases::Ownership>,
}

impl App {
    /// Whether this node does the subscription's work (its deliveries and
    /// window flushes): always, unless in cluster mode another node leases
    /// its partition.
    pub fn owns(&self, tenant_id: &str, subscription_id: &str) -> bool {
        self.ownership
            .as_ref()
            .is_none_or(|o| o.owns(tenant_id, subscription_id))
    }

    /// Whether this node does the work done once for the whole cluster
    /// (pruning): the holder of partition 0, or the only node.
    pub fn leads(&self) -> bool {
        self.ownership.as_ref().is_none_or(|o| o.owns_partition(0))
    }
}
