//! wasmhook: a self-hosted webhook router for chat platforms that runs each
//! subscriber's own WebAssembly plugin on its events.
//!
//! The flow, stage by stage (rustfmt sorts the `mod` lines; this list keeps
//! the order in which an event travels):
//!
//! 1. `ingest` — authenticate, validate and durably accept events *(issue 4)*.
//! 2. `route` — match events to subscriptions by type pattern *(issue 3)*.
//! 3. [`runtime`] — the sandbox: run a subscription's plugin on the event in
//!    a fresh WebAssembly instance with memory, time and output limits. The
//!    only module that touches wasmtime.
//! 4. `sign` — sign each request per the subscription's scheme *(issue 3)*.
//! 5. `deliver` / `retry` — POST with retries kept durable in sled *(issue 3)*.
//!
//! Beside the flow: [`cli`] (the `wasmhook` command: `plugin check`,
//! `plugin run`) and [`event`] (the canonical event envelope).

pub mod cli;
pub mod event;
pub mod runtime;
