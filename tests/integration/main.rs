//! wasmhook's integration tests: one test binary (one link of wasmtime), a
//! module per topic. Plugins are the real wasm components built from
//! `plugins/` and `tests/fixtures/` by `host/build.rs`; receivers are real
//! HTTP servers on loopback; the server tests start the real binary.

mod api;
mod apps;
mod cli;
mod cluster;
mod dashboard;
mod delivery;
mod destinations;
mod e2e;
mod golden;
mod harness;
mod isolation;
mod languages;
mod observability;
mod ordering;
mod partitioned;
mod polling;
mod portal;
mod sandbox;
mod security;
mod sources;
mod support;
mod svix;
mod upgrades;
mod windows;
