//! The one place the store tells its two backends apart: where writes go.
//! Reads are the same on both (the trees of [`Trees`](super::Trees)).

use super::Store;
use super::cluster;
use super::commit;
use super::group::Groups;

/// The backend of a store. Reads are the same on both (the trees above);
/// writes go to the embedded committer or through the cluster's log.
pub(super) enum Backend {
    /// The committer thread (`embedded/commit.rs`).
    Embedded(std::sync::mpsc::Sender<commit::Job>),
    /// The trees are this node's view of the cluster's log.
    Cluster(Box<ClusterBackend>),
}

/// What the cluster backend keeps beside the view.
pub(super) struct ClusterBackend {
    /// The log every write goes through (see `change.rs`).
    pub(super) log: std::sync::Arc<cluster::log::Log>,
    /// Plugin components (see `cluster/blobs.rs`).
    pub(super) blobs: cluster::blobs::Blobs,
    /// Concurrent acceptances, and concurrent attempt records, each
    /// grouped into one batch of the log (`group.rs`); set once the
    /// store exists, since the groups write through it.
    pub(super) groups: std::sync::OnceLock<Groups>,
    /// A partitioned cluster: the logs of the partitions this node holds
    /// (`partitions.rs`); None: a replica set, one log for everything.
    pub(super) parts: Option<Box<super::partitions::Partitions>>,
}

impl Store {
    /// Cluster mode: the cluster backend.
    pub(super) fn cluster(&self) -> Option<&ClusterBackend> {
        match &self.backend {
            Backend::Cluster(c) => Some(c),
            Backend::Embedded(_) => None,
        }
    }

    /// Cluster mode: the cluster's NATS connection.
    pub fn nats_client(&self) -> Option<async_nats::Client> {
        self.cluster().map(|c| c.log.client())
    }

    /// Cluster mode: the plugin object store.
    pub(super) fn blobs(&self) -> Option<&cluster::blobs::Blobs> {
        self.cluster().map(|c| &c.blobs)
    }

    /// Cluster mode: the write groups, once started.
    pub(super) fn groups(&self) -> Option<&Groups> {
        self.cluster().and_then(|c| c.groups.get())
    }
}
