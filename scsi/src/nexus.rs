//! Per-I_T-nexus state of a logical unit: the unit attention queue (SAM-5 5.14,
//! SPC-4 5.14).
//!
//! A nexus the logical unit has never seen starts with POWER ON, RESET, OR BUS DEVICE
//! RESET OCCURRED. The queue is short and de-duplicated; a reset unit attention
//! replaces whatever was queued (the reset made those conditions moot).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};

use crate::sense::Sense;

/// Unit attentions kept per nexus; older ones are dropped first when it overflows.
const MAX_PENDING: usize = 8;

/// One I_T nexus as seen by one logical unit.
#[derive(Debug, Default)]
pub(crate) struct NexusState {
    /// Fast check on the I/O path: true when `ua` may be non-empty.
    pending: AtomicBool,
    ua: Mutex<VecDeque<Sense>>,
    /// Initiator port name and relative target port: what persistent reservations key
    /// registrations on, so their unit attentions can find the nexus.
    port: OnceLock<(String, u16)>,
}

impl NexusState {
    /// Queues a unit attention (ignored if the same one is already queued).
    pub(crate) fn push(&self, sense: Sense) {
        let mut q = self.ua.lock();
        if sense.asc == 0x29 {
            // A reset supersedes every other pending condition.
            q.clear();
        }
        if !q.contains(&sense) {
            if q.len() == MAX_PENDING {
                q.pop_front();
            }
            q.push_back(sense);
        }
        self.pending.store(true, Ordering::Release);
    }

    /// Records the initiator port and relative target port of this nexus (once).
    pub(crate) fn set_port(&self, initiator: &str, relative_port: u16) {
        if self.port.get().is_none() {
            let _ = self.port.set((initiator.to_owned(), relative_port));
        }
    }

    /// Takes the oldest pending unit attention.
    pub(crate) fn pop(&self) -> Option<Sense> {
        if !self.pending.load(Ordering::Acquire) {
            return None;
        }
        let mut q = self.ua.lock();
        let s = q.pop_front();
        self.pending.store(!q.is_empty(), Ordering::Release);
        s
    }

    /// Drops pending unit attentions with this ASC/ASCQ (e.g. REPORT LUNS clears
    /// REPORTED LUNS DATA HAS CHANGED).
    pub(crate) fn clear(&self, asc: u8, ascq: u8) {
        let mut q = self.ua.lock();
        q.retain(|s| !(s.asc == asc && s.ascq == ascq));
        self.pending.store(!q.is_empty(), Ordering::Release);
    }

    #[cfg(test)]
    pub(crate) fn pending(&self) -> Vec<Sense> {
        self.ua.lock().iter().cloned().collect()
    }
}

/// All nexuses a logical unit has seen.
#[derive(Debug, Default)]
pub(crate) struct Nexuses {
    map: RwLock<HashMap<u64, Arc<NexusState>>>,
}

impl Nexuses {
    /// The state for `id`, created with a power-on unit attention on first sight.
    pub(crate) fn get(&self, id: u64) -> Arc<NexusState> {
        if let Some(n) = self.map.read().get(&id) {
            return n.clone();
        }
        self.map
            .write()
            .entry(id)
            .or_insert_with(|| {
                let n = NexusState::default();
                n.push(Sense::power_on_reset());
                Arc::new(n)
            })
            .clone()
    }

    /// Forgets a nexus (the session ended).
    pub(crate) fn remove(&self, id: u64) {
        self.map.write().remove(&id);
    }

    /// Queues a unit attention for every nexus of this initiator port and relative
    /// target port (usually one; a registration names a port, not a session).
    pub(crate) fn notify_port(&self, initiator: &str, relative_port: u16, sense: &Sense) {
        for n in self.map.read().values() {
            if matches!(n.port.get(), Some((i, p)) if i == initiator && *p == relative_port) {
                n.push(sense.clone());
            }
        }
    }

    /// Queues a unit attention for every nexus whose relative target port `on_port`
    /// picks (and for nexuses whose port is not known yet).
    pub(crate) fn notify_ports(&self, on_port: impl Fn(u16) -> bool, sense: &Sense) {
        for n in self.map.read().values() {
            if n.port.get().is_none_or(|(_, p)| on_port(*p)) {
                n.push(sense.clone());
            }
        }
    }

    /// The relative target ports of the known nexuses, ascending, without repeats.
    pub(crate) fn relative_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .map
            .read()
            .values()
            .filter_map(|n| n.port.get().map(|(_, p)| *p))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Queues a unit attention for every known nexus except `except`.
    pub(crate) fn notify(&self, except: Option<u64>, sense: &Sense) {
        for (id, n) in self.map.read().iter() {
            if Some(*id) != except {
                n.push(sense.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_nexus_starts_with_power_on_reset() {
        let all = Nexuses::default();
        let n = all.get(7);
        assert_eq!(n.pop(), Some(Sense::power_on_reset()));
        assert_eq!(n.pop(), None);
        // Seen before: no new unit attention.
        assert_eq!(all.get(7).pop(), None);
    }

    #[test]
    fn queue_dedupes_and_resets_supersede() {
        let n = NexusState::default();
        n.push(Sense::parameters_changed());
        n.push(Sense::parameters_changed());
        n.push(Sense::capacity_changed());
        assert_eq!(
            n.pending(),
            vec![Sense::parameters_changed(), Sense::capacity_changed()]
        );
        n.push(Sense::bus_device_reset());
        assert_eq!(n.pending(), vec![Sense::bus_device_reset()]);
        n.clear(0x29, 0x03);
        assert_eq!(n.pop(), None);
    }

    #[test]
    fn notify_skips_the_sender() {
        let all = Nexuses::default();
        let a = all.get(1);
        let b = all.get(2);
        a.pop();
        b.pop();
        all.notify(Some(1), &Sense::parameters_changed());
        assert_eq!(a.pop(), None);
        assert_eq!(b.pop(), Some(Sense::parameters_changed()));
    }
}
