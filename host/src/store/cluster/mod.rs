//! The cluster backend: this node's sled trees are its *view* of a
//! replicated JetStream log of guarded write batches (`log.rs`; the design
//! is `docs/cluster.md`). Every write of the records becomes a batch
//! (the store's `change.rs`; concurrent acceptances and attempt records
//! each share one batch, the store's `group.rs`), the view is compacted
//! into snapshots (`snapshot.rs`), and plugin components live in an object
//! store (`blobs.rs`). Nothing here knows the store's records: batches
//! name trees and carry bytes. What this backend needs from NATS beyond
//! that (the connection, its settings and errors) is [`crate::cluster`],
//! which knows nothing of the store.

pub mod blobs;
pub mod log;
pub mod readers;
pub mod snapshot;
