//! The remap change log: one [`ChangeRecord`] per online remap, an explicit state
//! machine replicated with the rest of the cluster state (DESIGN.md, "The remap
//! protocol"; STYLE.md item 8).
//!
//! ```text
//!  Proposed ──▶ Staged(acks) ──▶ Quiescing(acks) ──▶ Switched(acks) ──▶ Resumed(acks) ──▶ Done
//!     │              │    ▲            │                  │
//!     │              │    └── retry ───┤                  │
//!     ▼              ▼                 ▼                  ▼
//!  RolledBack | Failed (table unchanged)             RolledBack (inverse changeset applied)
//! ```
//!
//! Every step is a replicated command, so the state a new leader reads is exactly the
//! state the old one reached. The **commit point** is the transition to `Switched`: it
//! applies the changeset to the replicated table (epoch + 1). Before it a new leader
//! rolls back (resume every node on the old table); from it on it rolls forward (tell
//! every node to switch and resume). [`ChangeRecord::recovery`] says which.
//!
//! Forward transitions out of `Staged`, `Quiescing`, `Switched` and `Resumed` require
//! an acknowledgement from every participant (the data nodes that were active when the
//! change began, minus those the leader excluded). Excluding a node fences it: it must
//! not serve I/O again until it has caught up with the table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use volume::Changeset;

use crate::NodeId;

/// Identifies one change in the change log (1, 2, 3, … per cluster).
pub type ChangeId = u64;

/// The name of a [`ChangeState`], without its data: what commands name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Phase {
    Proposed,
    Staged,
    Quiescing,
    Switched,
    Resumed,
    Done,
    RolledBack,
    Failed,
}

impl Phase {
    /// True for `Done`, `RolledBack` and `Failed`: nothing more happens to the change.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Done | Phase::RolledBack | Phase::Failed)
    }

    /// True for the phases in which nodes acknowledge.
    pub fn takes_acks(self) -> bool {
        matches!(
            self,
            Phase::Staged | Phase::Quiescing | Phase::Switched | Phase::Resumed
        )
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Phase::Proposed => "proposed",
            Phase::Staged => "staged",
            Phase::Quiescing => "quiescing",
            Phase::Switched => "switched",
            Phase::Resumed => "resumed",
            Phase::Done => "done",
            Phase::RolledBack => "rolled back",
            Phase::Failed => "failed",
        };
        f.write_str(s)
    }
}

/// Where a change is, with the nodes that have acknowledged the current phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeState {
    /// Recorded; the leader has not yet sent the diff.
    Proposed,
    /// Every node builds the new table beside the live one; `acks` have done so.
    Staged { acks: BTreeSet<NodeId> },
    /// Every node holds the affected ranges and drains them; `acks` have drained.
    Quiescing { acks: BTreeSet<NodeId> },
    /// Committed: the replicated table is the new one; `acks` have switched.
    Switched { acks: BTreeSet<NodeId> },
    /// Held I/O released against the new table; `acks` have resumed.
    Resumed { acks: BTreeSet<NodeId> },
    /// Finished.
    Done,
    /// Undone; every node runs the old mapping.
    RolledBack { reason: String },
    /// Given up before the commit point (e.g. drains kept timing out); the table is unchanged.
    Failed { reason: String },
}

impl ChangeState {
    /// The phase of this state.
    pub fn phase(&self) -> Phase {
        match self {
            ChangeState::Proposed => Phase::Proposed,
            ChangeState::Staged { .. } => Phase::Staged,
            ChangeState::Quiescing { .. } => Phase::Quiescing,
            ChangeState::Switched { .. } => Phase::Switched,
            ChangeState::Resumed { .. } => Phase::Resumed,
            ChangeState::Done => Phase::Done,
            ChangeState::RolledBack { .. } => Phase::RolledBack,
            ChangeState::Failed { .. } => Phase::Failed,
        }
    }

    /// The nodes that acknowledged the current phase (empty for phases without acks).
    pub fn acks(&self) -> Option<&BTreeSet<NodeId>> {
        match self {
            ChangeState::Staged { acks }
            | ChangeState::Quiescing { acks }
            | ChangeState::Switched { acks }
            | ChangeState::Resumed { acks } => Some(acks),
            _ => None,
        }
    }

    fn acks_mut(&mut self) -> Option<&mut BTreeSet<NodeId>> {
        match self {
            ChangeState::Staged { acks }
            | ChangeState::Quiescing { acks }
            | ChangeState::Switched { acks }
            | ChangeState::Resumed { acks } => Some(acks),
            _ => None,
        }
    }

    fn entered(phase: Phase, reason: Option<String>) -> ChangeState {
        let reason = reason.unwrap_or_else(|| "no reason given".to_string());
        match phase {
            Phase::Proposed => ChangeState::Proposed,
            Phase::Staged => ChangeState::Staged {
                acks: BTreeSet::new(),
            },
            Phase::Quiescing => ChangeState::Quiescing {
                acks: BTreeSet::new(),
            },
            Phase::Switched => ChangeState::Switched {
                acks: BTreeSet::new(),
            },
            Phase::Resumed => ChangeState::Resumed {
                acks: BTreeSet::new(),
            },
            Phase::Done => ChangeState::Done,
            Phase::RolledBack => ChangeState::RolledBack { reason },
            Phase::Failed => ChangeState::Failed { reason },
        }
    }
}

/// What a new leader must do with a change it finds unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing: the change is finished.
    None,
    /// Before the commit point: resume every node on the old table, then record
    /// `RolledBack`.
    RollBack,
    /// At or after the commit point: make every node switch (if it has not) and resume,
    /// then record `Done`.
    RollForward,
}

/// One entry of the change timeline (for the admin: who did what, when).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEvent {
    /// Milliseconds since the Unix epoch, as stamped by the proposer.
    pub at_ms: u64,
    /// The node that acknowledged, or `None` for a transition of the whole change.
    pub node: Option<NodeId>,
    pub what: String,
}

/// One remap in the change log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub id: ChangeId,
    /// The mapping diff, made against table epoch `changeset.base_epoch`.
    pub changeset: Changeset,
    /// The inverse diff, recorded at the commit point; applied by a rollback after it.
    pub rollback: Option<Changeset>,
    /// The nodes that must acknowledge every phase.
    pub participants: BTreeSet<NodeId>,
    /// Nodes excluded from the change (they did not answer), with the reason. They are
    /// fenced in the node list.
    pub excluded: BTreeMap<NodeId, String>,
    pub state: ChangeState,
    /// How many times the change went back from `Quiescing` to `Staged` (drain retries).
    pub retries: u32,
    /// The node the admin asked.
    pub requested_by: NodeId,
    pub timeline: Vec<TimelineEvent>,
    /// The leader copies the data of moved ranges before the switch.
    #[serde(default)]
    pub copy_data: bool,
    /// The migration this change is a window (or the end) of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<crate::migration::MigrationId>,
}

/// Why a change-log command was refused. Refusing changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("change {id}: cannot go from {from} to {to}")]
    IllegalTransition {
        id: ChangeId,
        from: Phase,
        to: Phase,
    },
    #[error("change {id}: cannot go from {from} to {to}: waiting for acknowledgements from nodes {missing:?}")]
    MissingAcks {
        id: ChangeId,
        from: Phase,
        to: Phase,
        missing: Vec<NodeId>,
    },
    #[error("change {id} is {current}; an acknowledgement for {acked} is stale or early")]
    WrongPhase {
        id: ChangeId,
        current: Phase,
        acked: Phase,
    },
    #[error("change {id}: node {node} is not a participant")]
    NotParticipant { id: ChangeId, node: NodeId },
    #[error("change {id} is finished ({phase})")]
    Finished { id: ChangeId, phase: Phase },
}

impl ChangeRecord {
    /// A new change in state `Proposed`.
    pub fn new(
        id: ChangeId,
        changeset: Changeset,
        participants: BTreeSet<NodeId>,
        requested_by: NodeId,
        at_ms: u64,
    ) -> ChangeRecord {
        ChangeRecord {
            id,
            changeset,
            rollback: None,
            participants,
            excluded: BTreeMap::new(),
            state: ChangeState::Proposed,
            retries: 0,
            requested_by,
            timeline: vec![TimelineEvent {
                at_ms,
                node: None,
                what: "proposed".to_string(),
            }],
            copy_data: false,
            migration: None,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.state.phase()
    }

    /// Participants that have not acknowledged the current phase.
    pub fn missing_acks(&self) -> Vec<NodeId> {
        match self.state.acks() {
            Some(acks) => self.participants.difference(acks).copied().collect(),
            None => Vec::new(),
        }
    }

    /// What a new leader must do with this change.
    pub fn recovery(&self) -> Recovery {
        match self.phase() {
            Phase::Proposed | Phase::Staged | Phase::Quiescing => Recovery::RollBack,
            Phase::Switched | Phase::Resumed => Recovery::RollForward,
            Phase::Done | Phase::RolledBack | Phase::Failed => Recovery::None,
        }
    }

    /// Check that the change may go to `to` now. Pure: changes nothing.
    pub fn check_transition(&self, to: Phase) -> Result<(), ChangeError> {
        let from = self.phase();
        if from.is_terminal() {
            return Err(ChangeError::Finished {
                id: self.id,
                phase: from,
            });
        }
        let needs_all_acks = match (from, to) {
            (Phase::Proposed, Phase::Staged) => false,
            (Phase::Staged, Phase::Quiescing) => true,
            // A drain timed out: everybody resumes on the old table and the leader retries.
            (Phase::Quiescing, Phase::Staged) => false,
            (Phase::Quiescing, Phase::Switched) => true,
            (Phase::Switched, Phase::Resumed) => true,
            (Phase::Resumed, Phase::Done) => true,
            (Phase::Proposed | Phase::Staged | Phase::Quiescing, Phase::RolledBack) => false,
            (Phase::Proposed | Phase::Staged | Phase::Quiescing, Phase::Failed) => false,
            // A switch failed on some node: every node goes back to the old table.
            (Phase::Switched, Phase::RolledBack) => false,
            _ => {
                return Err(ChangeError::IllegalTransition {
                    id: self.id,
                    from,
                    to,
                })
            }
        };
        if needs_all_acks {
            let missing = self.missing_acks();
            if !missing.is_empty() {
                return Err(ChangeError::MissingAcks {
                    id: self.id,
                    from,
                    to,
                    missing,
                });
            }
        }
        Ok(())
    }

    /// Move to `to` (after [`ChangeRecord::check_transition`]). The table side effects
    /// (applying the changeset or its inverse) are the caller's.
    pub(crate) fn transition(
        &mut self,
        to: Phase,
        reason: Option<String>,
        at_ms: u64,
    ) -> Result<(), ChangeError> {
        self.check_transition(to)?;
        if self.phase() == Phase::Quiescing && to == Phase::Staged {
            self.retries += 1;
        }
        let what = match &reason {
            Some(r) => format!("{to}: {r}"),
            None => to.to_string(),
        };
        self.state = ChangeState::entered(to, reason);
        self.timeline.push(TimelineEvent {
            at_ms,
            node: None,
            what,
        });
        Ok(())
    }

    /// Record that `node` completed phase `phase`. Acknowledging twice is harmless.
    pub(crate) fn ack(
        &mut self,
        node: NodeId,
        phase: Phase,
        at_ms: u64,
    ) -> Result<(), ChangeError> {
        let current = self.phase();
        if current.is_terminal() {
            return Err(ChangeError::Finished {
                id: self.id,
                phase: current,
            });
        }
        if !self.participants.contains(&node) {
            return Err(ChangeError::NotParticipant { id: self.id, node });
        }
        if current != phase || !phase.takes_acks() {
            return Err(ChangeError::WrongPhase {
                id: self.id,
                current,
                acked: phase,
            });
        }
        if let Some(acks) = self.state.acks_mut() {
            if acks.insert(node) {
                self.timeline.push(TimelineEvent {
                    at_ms,
                    node: Some(node),
                    what: format!("{phase} acknowledged"),
                });
            }
        }
        Ok(())
    }

    /// Drop `node` from the participants (it did not answer).
    pub(crate) fn exclude(
        &mut self,
        node: NodeId,
        reason: String,
        at_ms: u64,
    ) -> Result<(), ChangeError> {
        let current = self.phase();
        if current.is_terminal() {
            return Err(ChangeError::Finished {
                id: self.id,
                phase: current,
            });
        }
        if !self.participants.remove(&node) {
            return Err(ChangeError::NotParticipant { id: self.id, node });
        }
        self.timeline.push(TimelineEvent {
            at_ms,
            node: Some(node),
            what: format!("excluded: {reason}"),
        });
        self.excluded.insert(node, reason);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> ChangeRecord {
        ChangeRecord::new(7, Changeset::default(), [1, 2].into(), 1, 0)
    }

    #[test]
    fn happy_path_needs_every_ack() {
        let mut c = rec();
        c.transition(Phase::Staged, None, 1).unwrap();
        assert!(matches!(
            c.transition(Phase::Quiescing, None, 2),
            Err(ChangeError::MissingAcks { ref missing, .. }) if missing == &vec![1, 2]
        ));
        c.ack(1, Phase::Staged, 3).unwrap();
        c.ack(1, Phase::Staged, 3).unwrap();
        assert_eq!(c.missing_acks(), vec![2]);
        c.ack(2, Phase::Staged, 4).unwrap();
        c.transition(Phase::Quiescing, None, 5).unwrap();
        assert_eq!(c.recovery(), Recovery::RollBack);
        for n in [1, 2] {
            c.ack(n, Phase::Quiescing, 6).unwrap();
        }
        c.transition(Phase::Switched, None, 7).unwrap();
        assert_eq!(c.recovery(), Recovery::RollForward);
        for n in [1, 2] {
            c.ack(n, Phase::Switched, 8).unwrap();
        }
        c.transition(Phase::Resumed, None, 9).unwrap();
        for n in [1, 2] {
            c.ack(n, Phase::Resumed, 10).unwrap();
        }
        c.transition(Phase::Done, None, 11).unwrap();
        assert_eq!(c.recovery(), Recovery::None);
        assert!(matches!(
            c.transition(Phase::RolledBack, None, 12),
            Err(ChangeError::Finished { .. })
        ));
    }

    #[test]
    fn illegal_transitions_are_refused() {
        let mut c = rec();
        for to in [
            Phase::Quiescing,
            Phase::Switched,
            Phase::Resumed,
            Phase::Done,
            Phase::Proposed,
        ] {
            assert!(matches!(
                c.transition(to, None, 1),
                Err(ChangeError::IllegalTransition { .. })
            ));
        }
        assert_eq!(c.phase(), Phase::Proposed);
        // Acks only in ack-taking phases, only for the current phase, only from participants.
        assert!(matches!(
            c.ack(1, Phase::Proposed, 1),
            Err(ChangeError::WrongPhase { .. })
        ));
        c.transition(Phase::Staged, None, 1).unwrap();
        assert!(matches!(
            c.ack(1, Phase::Quiescing, 1),
            Err(ChangeError::WrongPhase { .. })
        ));
        assert!(matches!(
            c.ack(9, Phase::Staged, 1),
            Err(ChangeError::NotParticipant { .. })
        ));
        // Resumed cannot be rolled back (hosts already did I/O on the new table).
        let mut c = rec();
        c.participants.clear();
        for to in [
            Phase::Staged,
            Phase::Quiescing,
            Phase::Switched,
            Phase::Resumed,
        ] {
            c.transition(to, None, 1).unwrap();
        }
        assert!(matches!(
            c.transition(Phase::RolledBack, None, 1),
            Err(ChangeError::IllegalTransition { .. })
        ));
        assert!(matches!(
            c.transition(Phase::Failed, None, 1),
            Err(ChangeError::IllegalTransition { .. })
        ));
    }

    #[test]
    fn drain_retry_and_exclusion() {
        let mut c = rec();
        c.transition(Phase::Staged, None, 1).unwrap();
        c.ack(1, Phase::Staged, 1).unwrap();
        c.ack(2, Phase::Staged, 1).unwrap();
        c.transition(Phase::Quiescing, None, 1).unwrap();
        c.ack(1, Phase::Quiescing, 1).unwrap();
        c.transition(Phase::Staged, Some("node 2 did not drain in 2s".into()), 2)
            .unwrap();
        assert_eq!(c.retries, 1);
        assert_eq!(c.missing_acks(), vec![1, 2]);
        c.ack(1, Phase::Staged, 3).unwrap();
        c.exclude(2, "no answer".into(), 4).unwrap();
        assert!(c.missing_acks().is_empty());
        c.transition(Phase::Quiescing, None, 5).unwrap();
        assert_eq!(c.excluded.get(&2).map(String::as_str), Some("no answer"));
        c.transition(Phase::Failed, Some("retry when I/O is lower".into()), 6)
            .unwrap();
        assert!(c.timeline.iter().any(|e| e.what.contains("excluded")));
    }
}
