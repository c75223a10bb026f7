//! wasmhook: a self-hosted webhook router for chat platforms that runs each
//! subscriber's own WebAssembly plugin on its events.
//!
//! The flow, stage by stage (rustfmt sorts the `mod` lines; this list keeps
//! the order in which an event travels):
//!
//! 1. [`api`] — the admin REST API (axum): tenants, events, plugins,
//!    subscriptions, sources, deliveries; authenticates and validates.
//!    Beside it, [`source`]: a platform's own webhook (`POST /in/{id}`),
//!    its signature checked, normalized into canonical events by the
//!    source's adapter (a `source`-world component), then handed on to
//!    [`ingest`].
//! 2. [`ingest`] — accepts validated [`event`]s: [`route`]s each to the
//!    tenant's subscriptions, runs their plugins (after an admission slot),
//!    checks the bounds, and hands event and deliveries to the [`queue`].
//! 3. [`route`] — which subscriptions want an event type (`*`, `message.*`, exact).
//! 4. [`runtime`] — the sandbox: a subscription's plugin on an event in a
//!    fresh WebAssembly instance with memory, time and output limits. The
//!    only module that touches wasmtime; [`plugins`] resolves plugin ids.
//! 5. [`sign`] — the signature headers of each attempt, per scheme.
//! 6. [`queue`] — work enqueued in one transaction with the records that
//!    produced it, visible to workers once durable, leased fairly across
//!    tenants and subscriptions within caps.
//! 7. [`deliver`] — the worker that runs leased attempts, and the HTTP POST
//!    through the SSRF guard.
//! 8. [`retry`] — what happens after an attempt: the pure retry policy.
//! 9. [`window`] — items plugins hold, flushed by a scheduler when their
//!    window closes, in one transaction with the deliveries they become.
//! 10. [`store`] — the records: the ground floor, importing no stage
//!     (`layers.rs` checks it). One interface, two backends in their own
//!     folders: `store/embedded/` (sled on this machine, one committer) and
//!     `store/cluster/` (each node's sled trees as its view of a replicated
//!     JetStream log of guarded write batches, snapshots, plugin bytes in
//!     an object store). The stages follow other nodes' writes through a
//!     typed change feed ([`store::Changes`]), never by tree names.
//!
//! Cluster mode beside the store: [`cluster`] — the NATS connection, and
//! the work split into partitions leased to nodes (`docs/cluster.md`).
//!
//! Beside the flow: [`telemetry`] (Prometheus metrics) and [`traces`]
//! (OpenTelemetry spans, when an OTLP endpoint is configured),
//! [`app`] (the shared context), [`subscription`] (a
//! subscription's rules), [`clock`], [`config`],
//! [`server`] (`wasmhook serve`), [`cli`] (the command line), [`scaffold`]
//! (`wasmhook plugin new`: plugin projects in Rust, JavaScript, Python),
//! [`util`].

pub mod api;
pub mod app;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod deliver;
pub mod destination;
pub mod event;
pub mod http;
pub mod ingest;
#[cfg(test)]
mod layers;
pub mod migrate;
pub mod notify;
pub mod plugins;
pub mod queue;
pub mod retry;
pub mod route;
pub mod runtime;
pub mod scaffold;
pub mod secrets;
pub mod server;
pub mod sign;
pub mod source;
pub mod store;
pub mod subscription;
pub mod telemetry;
pub mod traces;
pub mod ui;
pub mod util;
pub mod window;
