//! Reservations: SPC-2 RESERVE/RELEASE (SPC-2 5.5.1, 7.21, 7.24).
//!
//! One I_T nexus may hold the logical unit; every other nexus gets RESERVATION
//! CONFLICT for commands whose table row is not [`Access::NoConflict`]. The holder
//! releases it, or it goes with the holder's nexus, a LUN reset or a target reset.
//! Persistent reservations (SPC-4 5.13) live beside this state in `pr.rs`; the logical
//! unit asks both whether a command conflicts.
//!
//! # Without a coordinator
//!
//! [`Reservations`] keeps the holder by node-local nexus id, as always.
//!
//! # With a [`PrCoordinator`] (several nodes serve the logical unit)
//!
//! The holder is an I_T nexus named cluster-wide by initiator port name and relative
//! target port, kept in the persistent reservation state (`PrState::spc2`,
//! [`crate::PrSnapshot::spc2_reservation`]) and so committed, replicated and installed
//! exactly like a PERSISTENT RESERVE OUT: RESERVE and RELEASE go through the same
//! commit loop (`LogicalUnit::commit_change`: Stale → re-read and execute again,
//! Unavailable → NOT READY 04/0A). The I/O path checks the installed state behind
//! an atomic flag (`PersistentReservations::spc2_conflicts`). [`Reservations`] then
//! only remembers which local nexus ids reserved as which I_T nexus, because nexus
//! loss names the nexus by id alone.
//!
//! Releases that no command asks for (I_T nexus loss, LOGICAL UNIT RESET, TARGET
//! RESET) may run on an async runtime thread, where the coordinator's blocking
//! `commit` must not be called. They release in the installed state at once (same
//! version: this node treats the logical unit as free from then on) and hand the
//! commit of that state to a small background thread, [`commit_release_in_background`].
//!
//! The window this leaves, until that commit has been applied everywhere: this node
//! already lets every initiator in (the release has happened, as the standard
//! wants), while the other nodes still enforce the old holder — their initiators get
//! RESERVATION CONFLICT a little longer, and a RESERVE through them conflicts too.
//! No initiator gets a reservation the cluster does not know of: a RESERVE through
//! this node in the window is committed on the released state (and then makes the
//! background commit stale). When the cluster cannot commit it after
//! [`RELEASE_ATTEMPTS`] tries (about 7 s) the worker logs an error and gives up; the
//! other nodes then keep enforcing the stale holder until the next commit of this
//! logical unit's state through this node (every such commit starts from the
//! released state, so it carries the release; e.g. a RESERVE) or a LOGICAL UNIT or
//! TARGET RESET through another node. Likewise a node that stops without releasing
//! leaves its holders' reservations in the cluster until such a reset; the same
//! initiator port logging in again through the same target port is the same I_T
//! nexus and still holds it. A RESERVE still executing when its nexus is lost may
//! leave the reservation to the lost nexus (as without a coordinator), until a reset.
//!
//! The worker commits at the version it released at and stops when another commit
//! got in first ([`PrCommitError::Stale`]): while an SPC-2 reservation is held no node
//! commits anything but releases (RESERVE by others, PERSISTENT RESERVE IN/OUT all
//! conflict) and this node commits only from its released state, so whatever won
//! already released it — or is a new reservation made after the release, which the
//! worker must not undo.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::commands::Access;
use crate::pr::{ItNexus, PersistentReservations, PrState};
use crate::pr_cluster::{PrCommitError, PrCoordinator};
use crate::pr_store::PrSnapshot;

/// How many times the background commit of a release is tried while the cluster is
/// unavailable.
pub(crate) const RELEASE_ATTEMPTS: u32 = 8;
/// Pause after the first failed try; doubled after each, at most [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub(crate) struct Reservations {
    /// Nexus id of the SPC-2 reservation holder (without a coordinator).
    holder: RwLock<Option<u64>>,
    /// With a coordinator: the I_T nexus each local nexus id reserved as (from a
    /// successful RESERVE until the nexus is gone).
    reservers: Mutex<HashMap<u64, ItNexus>>,
}

impl Reservations {
    /// True when a command of this access kind from `nexus` conflicts.
    pub(crate) fn conflicts(&self, nexus: u64, access: Access) -> bool {
        if access == Access::NoConflict {
            return false;
        }
        matches!(*self.holder.read(), Some(h) if h != nexus)
    }

    /// True when some nexus holds the SPC-2 reservation.
    pub(crate) fn is_held(&self) -> bool {
        self.holder.read().is_some()
    }

    /// RESERVE: succeeds when free or already held by `nexus`.
    pub(crate) fn reserve(&self, nexus: u64) -> bool {
        let mut h = self.holder.write();
        match *h {
            Some(other) if other != nexus => false,
            _ => {
                *h = Some(nexus);
                true
            }
        }
    }

    /// RELEASE: only the holder's release has an effect (SPC-2 7.21: otherwise GOOD
    /// and nothing happens).
    pub(crate) fn release(&self, nexus: u64) {
        let mut h = self.holder.write();
        if *h == Some(nexus) {
            *h = None;
        }
    }

    /// LUN reset or target reset.
    pub(crate) fn clear(&self) {
        *self.holder.write() = None;
    }

    /// The holder's nexus is gone.
    pub(crate) fn nexus_gone(&self, nexus: u64) {
        self.release(nexus);
    }

    /// With a coordinator: nexus `id`'s RESERVE as `who` succeeded.
    pub(crate) fn reserved_as(&self, id: u64, who: &ItNexus) {
        self.reservers.lock().insert(id, who.clone());
    }

    /// With a coordinator: nexus `id` is gone; the I_T nexus it reserved as, if it
    /// ever did.
    pub(crate) fn reserver_gone(&self, id: u64) -> Option<ItNexus> {
        self.reservers.lock().remove(&id)
    }

    #[cfg(test)]
    pub(crate) fn holder(&self) -> Option<u64> {
        *self.holder.read()
    }
}

/// Commits `released` (the installed state at `version`, from which an SPC-2
/// reservation was just released locally) through `coordinator` on a new thread, and
/// installs it in `pr` at the committed version. Tries [`RELEASE_ATTEMPTS`] times
/// with backoff while the cluster is unavailable; stops when another commit got in
/// first (see the module documentation for why that is right, and for the window).
/// Never blocks the caller.
pub(crate) fn commit_release_in_background(
    pr: Arc<PersistentReservations>,
    coordinator: Arc<dyn PrCoordinator>,
    version: u64,
    released: PrState,
    why: &'static str,
) {
    let spawned = std::thread::Builder::new()
        .name("spc2-release".into())
        .spawn(move || commit_release(&pr, coordinator.as_ref(), version, released, why));
    if let Err(e) = spawned {
        tracing::error!(
            error = %e,
            why,
            "cannot start committing an SPC-2 release; other nodes keep enforcing the reservation"
        );
    }
}

pub(crate) fn commit_release(
    pr: &PersistentReservations,
    coordinator: &dyn PrCoordinator,
    version: u64,
    released: PrState,
    why: &'static str,
) {
    let snapshot = PrSnapshot::of(&released);
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=RELEASE_ATTEMPTS {
        match coordinator.commit(version, &snapshot, &[], false) {
            Ok(committed) => {
                pr.install_committed(committed, released);
                tracing::debug!(why, version = committed, "SPC-2 release committed");
                return;
            }
            Err(PrCommitError::Stale) => {
                tracing::debug!(
                    why,
                    version,
                    "SPC-2 release: another commit got in first and carries it"
                );
                return;
            }
            Err(PrCommitError::Unavailable(msg)) => {
                tracing::warn!(why, attempt, error = %msg, "cannot commit an SPC-2 release yet");
                if attempt < RELEASE_ATTEMPTS {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
    tracing::error!(
        why,
        version,
        attempts = RELEASE_ATTEMPTS,
        "SPC-2 release could not be committed; other nodes keep enforcing the released \
         reservation until the next change of this logical unit's reservations or a reset"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_release_and_conflicts() {
        let r = Reservations::default();
        assert!(!r.conflicts(2, Access::Read));
        assert!(r.reserve(1));
        assert!(r.reserve(1), "the holder may reserve again");
        assert!(!r.reserve(2));
        assert!(r.conflicts(2, Access::Read));
        assert!(r.conflicts(2, Access::Control));
        assert!(!r.conflicts(2, Access::NoConflict));
        assert!(!r.conflicts(1, Access::Write));
        r.release(2);
        assert_eq!(r.holder(), Some(1), "release by a non-holder is a no-op");
        r.nexus_gone(1);
        assert_eq!(r.holder(), None);
        assert!(r.reserve(2));
        r.clear();
        assert_eq!(r.holder(), None);
    }
}
