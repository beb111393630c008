//! The cluster layer of switchyard: every node carries a replica of the cluster state
//! (members, the mapping table and its epoch, persistent reservations, ALUA states and
//! the remap change log), kept consistent by Raft over the management network.
//!
//! - [`state`]: the replicated [`ClusterState`] and the [`Command`]s that change it — a
//!   deterministic state machine with no I/O.
//! - [`change`]: the remap change log, an explicit state machine
//!   (`Proposed → Staged → Quiescing → Switched → Resumed → Done | RolledBack | Failed`)
//!   so that a new leader can finish or roll back a change.
//! - [`migration`]: online migrations (what moves where, its state and counters; the
//!   progress map is the mapping table itself).
//! - [`store`]: durable Raft storage (log, vote, snapshots on disk, fsynced).
//! - [`auth`]: HMAC-SHA256 request signing with the shared cluster secret.
//! - [`transport`] / `server`: the management network (signed HTTP/JSON, timeouts,
//!   backoff, fault injection).
//! - [`node`]: [`ClusterNode`], which ties them together and implements [`Cluster`],
//!   the API the switchyard node uses. openraft (pinned, 0.9) does not leak past it.
//!
//! The data path never waits on consensus: it reads [`Cluster::state`], an
//! `Arc<ClusterState>` swapped after every applied batch.
#![forbid(unsafe_code)]

use std::future::Future;
// openraft's default `SnapshotData` is `Cursor<Vec<u8>>`, named unqualified by the macro.
use std::io::Cursor;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod auth;
pub mod catalog;
pub mod change;
pub mod config;
pub mod migration;
pub mod node;
pub mod sealed;
mod server;
pub mod state;
pub mod store;
pub mod transport;

pub use catalog::{BackendSpec, Catalog, Export, MAX_EXPORT_LUN};
pub use change::{ChangeError, ChangeId, ChangeRecord, ChangeState, Phase, Recovery};
pub use config::ClusterConfig;
pub use migration::{
    ChunkHome, CopyEngine, LuHome, MigrationId, MigrationProgress, MigrationRecord, MigrationSpec,
    MigrationState,
};
pub use node::{ClusterNode, ReleaseHandler};
pub use sealed::{SealError, Sealer};
pub use state::{
    AluaAccess, ClusterState, Command, Health, NodeInfo, Outcome, PrHold, PrRecord, PrReg, PrState,
    PrUa, Role,
};
pub use store::{Event, SettleGuard, Settling};
pub use transport::Faults;

/// A member's id: unique in the cluster, never reused.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft's type configuration for switchyard (internal).
    pub TypeConfig:
        D = state::Command,
        R = state::Outcome,
);

/// What [`Cluster::propose`] returns once a command is committed and applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Raft log index of the command.
    pub index: u64,
    /// What applying it did (never `Refused`: that is returned as
    /// [`ClusterError::Refused`]).
    pub outcome: Outcome,
}

/// A member as this node sees it: Raft membership merged with the registration, plus
/// the locally observed reachability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    /// Management address from the Raft membership.
    pub addr: String,
    /// The registration (name, portals, role, health); `None` until the node has
    /// registered.
    pub info: Option<NodeInfo>,
    /// Votes in Raft (data nodes and witnesses), as opposed to a learner still
    /// catching up.
    pub voter: bool,
    pub is_leader: bool,
    /// Milliseconds since this node last heard from it (`Some(0)` for itself).
    pub last_contact_ms: Option<u64>,
    /// Heard from within three election timeouts.
    pub reachable: bool,
}

/// Why a cluster operation failed. Each says what happened and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ClusterError {
    /// The state machine refused the command; the state is unchanged.
    #[error("refused: {0}")]
    Refused(String),
    /// No leader could commit the request in time.
    #[error("no quorum: {detail} (waited {waited_ms} ms); this node cannot reach a majority of the cluster's voters; check the management network and `members`")]
    NoQuorum { waited_ms: u64, detail: String },
    /// The request reached a node that is not (or no longer) the leader.
    #[error("node {this} is not the leader (leader: {leader:?}); retry")]
    NotLeader {
        this: NodeId,
        leader: Option<NodeId>,
    },
    /// A peer refused this node's credentials.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A request was sent but its outcome is unknown (no answer in time).
    #[error("outcome unknown: {0}; check `state` before retrying")]
    Uncertain(String),
    /// Membership change failed.
    #[error("membership change failed: {0}")]
    Membership(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("the cluster node is shutting down")]
    Shutdown,
}

/// A boxed future returned by [`Cluster`] methods (keeps the trait object-safe).
pub type ClusterFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ClusterError>> + Send + 'a>>;

/// The cluster as the switchyard node uses it. [`ClusterNode`] implements it over Raft;
/// a test double can implement it in memory.
pub trait Cluster: Send + Sync {
    /// This node's id.
    fn id(&self) -> NodeId;

    /// The last applied cluster state. No consensus round: safe on the data path.
    fn state(&self) -> Arc<ClusterState>;

    /// The current leader as this node knows it.
    fn leader(&self) -> Option<NodeId>;

    /// Every member, with locally observed reachability.
    fn members(&self) -> Vec<Member>;

    /// Applied commands, membership changes and snapshot installs, in order. A receiver
    /// that lags gets `RecvError::Lagged` and should re-read [`Cluster::state`].
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event>;

    /// How long ago this node last had confirmation that a leader with a quorum exists
    /// (on the leader: its last quorum acknowledgement; on a follower: its last message
    /// from the leader). `None` when there is no leader. A node uses it as a lease:
    /// holds and cluster-coherent operations need a recent one.
    fn leader_contact(&self) -> Option<Duration>;

    /// Replicate `cmd`: accepted on any node, forwarded to the leader, returns once it
    /// is committed and applied on the leader (followers apply it moments later).
    fn propose(&self, cmd: Command) -> ClusterFuture<'_, Applied>;

    /// Add a data node or a witness (by `info.role`): it joins as a learner, catches
    /// up, becomes a voter and is registered.
    fn add_node(&self, info: NodeInfo) -> ClusterFuture<'_, ()>;

    /// Add a witness (a voter that serves no I/O).
    fn add_witness(&self, id: NodeId, name: &str, mgmt_addr: &str) -> ClusterFuture<'_, ()> {
        let info = NodeInfo::witness(id, name, mgmt_addr);
        self.add_node(info)
    }

    /// Remove a member from the voters and forget its registration.
    fn remove_node(&self, id: NodeId) -> ClusterFuture<'_, ()>;
}
