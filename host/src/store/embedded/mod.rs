//! The embedded backend: sled on this machine, written by one committer
//! thread that groups concurrent acceptances into one set of ordered plain
//! writes behind an intent record and makes them durable with one flush.
//! Reads need nothing from here: they read the trees directly.

pub(super) mod commit;
pub(super) mod intent;
