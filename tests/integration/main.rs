//! wasmhook's integration tests: one test binary (one link of wasmtime), a
//! module per topic. Plugins are the real wasm components built from
//! `plugins/` and `tests/fixtures/` by `host/build.rs`.

mod cli;
mod golden;
mod sandbox;
mod support;
