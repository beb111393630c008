//! Persistent reservations coherent across several nodes that serve the same logical
//! unit (same NAA WWN): the [`PrCoordinator`] hook a logical unit calls to commit each
//! PERSISTENT RESERVE OUT cluster-wide, and the types it exchanges. The same hook
//! makes the SPC-2 reservation (RESERVE/RELEASE) cluster-wide: it travels in
//! [`PrSnapshot::spc2_reservation`] (see `reservation.rs`).
//!
//! The replication itself (e.g. a Raft log) lives outside this crate. The contract:
//!
//! - The cluster holds, per logical unit, a version (a counter, 0 before the first
//!   commit) and a [`PrSnapshot`]. [`PrCoordinator::commit`] is a compare-and-set on
//!   the version: it fails with [`PrCommitError::Stale`] when another node committed
//!   since `base_version`, and otherwise returns only once the change is committed
//!   *and applied on every node that serves the logical unit* (each node's
//!   [`crate::LogicalUnit::apply_remote_pr`] has returned, or that node is fenced
//!   off), so a reservation made through node A is enforced on node B before the PR
//!   OUT through A completes.
//! - Every node calls [`crate::LogicalUnit::apply_remote_pr`] for every committed
//!   version, in order. It may do so for the versions its own logical unit committed
//!   too, even before `commit` returned: a version already installed is a no-op and
//!   each version's unit attentions are raised exactly once on a node (by whichever of
//!   `apply_remote_pr` or the committing PR OUT installs it first).
//! - Relative target port identifiers are unique across the nodes, so an (initiator
//!   port name, relative target port) pair names one I_T nexus cluster-wide, and a
//!   [`PrAttention`] for a port of another node matches no local nexus.
//!
//! With a coordinator the cluster is the persistent store: the state is kept whatever
//! APTPL says (PTPL_C=1) and a local [`crate::PrStore`] is not used (see
//! [`crate::LogicalUnit::with_pr_coordinator`]).

use crate::pr::Attention;
use crate::pr_store::PrSnapshot;
use crate::sense::{Sense, SenseKey};

/// A unit attention a PR transition raises, for an I_T nexus named by port. The sense
/// key is always UNIT ATTENTION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrAttention {
    /// Initiator port name (`<iSCSI name>,i,0x<ISID>`).
    pub initiator: String,
    /// Relative target port identifier (unique across nodes).
    pub relative_port: u16,
    pub asc: u8,
    pub ascq: u8,
}

impl PrAttention {
    pub(crate) fn of((to, sense): &Attention) -> PrAttention {
        PrAttention {
            initiator: to.initiator.clone(),
            relative_port: to.relative_port,
            asc: sense.asc,
            ascq: sense.ascq,
        }
    }

    /// The sense data the nexus reports.
    pub fn sense(&self) -> Sense {
        Sense::new(SenseKey::UnitAttention, self.asc, self.ascq)
    }
}

/// Why [`PrCoordinator::current`] or [`PrCoordinator::commit`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrCommitError {
    /// Another node changed the state first (version mismatch): re-read and retry.
    #[error("another node changed the persistent reservations first")]
    Stale,
    /// The cluster cannot commit now (no quorum, timeout); message for the log.
    #[error("the cluster cannot commit persistent reservations now: {0}")]
    Unavailable(String),
}

/// Makes one logical unit's persistent reservation changes coherent across nodes.
pub trait PrCoordinator: Send + Sync + std::fmt::Debug {
    /// The current cluster-wide (version, snapshot); version 0 and an empty snapshot
    /// when nothing was ever committed.
    fn current(&self) -> Result<(u64, PrSnapshot), PrCommitError>;

    /// Commits `next`, computed from the state at `base_version`, with the unit
    /// attentions it raises. Blocks until committed cluster-wide (see the module
    /// documentation) and returns the new version. Called from a blocking thread
    /// (never from an async runtime thread), without any lock of the logical unit
    /// that [`crate::LogicalUnit::apply_remote_pr`] takes: the thread that runs the
    /// command, or for an SPC-2 release after I_T nexus loss or a reset a plain
    /// thread the logical unit starts (outside any async runtime's context).
    ///
    /// `abort`: the change is a PREEMPT AND ABORT. Each other node that serves the
    /// logical unit then counts as having applied it only once its writes admitted
    /// before it have finished ([`crate::LogicalUnit::drain_writes`] after
    /// [`crate::LogicalUnit::apply_remote_pr`]); the committing node drains its own
    /// after `commit` returns.
    fn commit(
        &self,
        base_version: u64,
        next: &PrSnapshot,
        attentions: &[PrAttention],
        abort: bool,
    ) -> Result<u64, PrCommitError>;
}

/// Why a logical unit could not join its cluster's persistent reservations.
#[derive(Debug, thiserror::Error)]
pub enum PrClusterError {
    #[error(
        "persistent reservations cannot be read from the cluster ({0}); the logical unit \
         is not started so that no reservation is ignored"
    )]
    Unavailable(String),
    #[error(
        "persistent reservations in the cluster are inconsistent at version {version} \
         ({reason}); the logical unit is not started so that no reservation is ignored"
    )]
    Corrupt { version: u64, reason: String },
}
