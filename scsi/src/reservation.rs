//! Reservations: SPC-2 RESERVE/RELEASE (SPC-2 5.5.1, 7.21, 7.24).
//!
//! One I_T nexus may hold the logical unit; every other nexus gets RESERVATION
//! CONFLICT for commands whose table row is not [`Access::NoConflict`]. The holder
//! releases it, or it goes with the holder's nexus, a LUN reset or a target reset.
//! Persistent reservations (SPC-4 5.13) live beside this state in `pr.rs`; the logical
//! unit asks both whether a command conflicts.

use parking_lot::RwLock;

use crate::commands::Access;

#[derive(Debug, Default)]
pub(crate) struct Reservations {
    /// Nexus id of the SPC-2 reservation holder.
    holder: RwLock<Option<u64>>,
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

    #[cfg(test)]
    pub(crate) fn holder(&self) -> Option<u64> {
        *self.holder.read()
    }
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
