//! The shared context every stage works with: the store, the sandbox, the
//! plugin registry, the HTTP sender, the clock, and the settings they need.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::clock::Clock;
use crate::deliver::Sender;
use crate::plugins::Registry;
use crate::store::Store;

/// Engine settings (from the `[delivery]` and `[events]` config sections).
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Attempts in flight at once, all subscriptions together.
    pub workers: usize,
    /// Default per-subscription cap on attempts in flight.
    pub max_in_flight_per_subscription: u32,
    /// How long shutdown waits for in-flight attempts.
    pub shutdown_grace: Duration,
    /// Events and finished deliveries are kept this long.
    pub retention: Duration,
    /// How long an old secret keeps signing after a rotation.
    pub secret_grace: Duration,
    /// Per-attempt timeout of new subscriptions.
    pub default_timeout: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            workers: 64,
            max_in_flight_per_subscription: 8,
            shutdown_grace: Duration::from_secs(10),
            retention: Duration::from_secs(30 * 24 * 3600),
            secret_grace: Duration::from_secs(24 * 3600),
            default_timeout: Duration::from_secs(15),
        }
    }
}

/// Cheap to clone; one per process.
#[derive(Clone)]
pub struct App {
    pub store: Store,
    pub plugins: Registry,
    pub sender: Sender,
    pub clock: Arc<dyn Clock>,
    pub settings: EngineSettings,
    /// Wakes the delivery worker when new work is due now.
    pub wake: Arc<Notify>,
    /// Flush deliveries not yet on disk; the worker leaves them alone.
    pub unsettled: crate::window::Unsettled,
}
