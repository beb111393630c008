//! Per-logical-unit LBA range locks: what makes COMPARE AND WRITE (SBC-3 5.2), WRITE
//! ATOMIC (SBC-4 5.48) and ORWRITE (SBC-3 5.8) atomic with respect to every other
//! command that touches their blocks.
//!
//! Design: the common case has no atomic command at all, so the hot path must not take
//! a lock. Two counters decide which path a command takes:
//!
//! - `exclusive`: atomic commands that hold or wait for a range;
//! - `fast`: plain commands running on the lock-free fast path.
//!
//! A plain command (READ, WRITE, VERIFY, WRITE SAME, UNMAP, ...) increments `fast` and
//! then looks at `exclusive`; when it is zero it runs without registering its range,
//! and decrements `fast` when done (two atomic operations per command). When an atomic
//! command is active it undoes the increment and registers its range in shared mode in
//! the table instead, waiting while an overlapping exclusive range is held.
//!
//! An atomic command increments `exclusive`, waits until `fast` drains to zero (no
//! command can enter the fast path once it has seen `exclusive > 0`), and then waits
//! until no registered range overlaps its own before registering it exclusively. Both
//! sides use sequentially consistent operations: either the plain command sees the
//! atomic one and takes the slow path, or the atomic one sees the plain command in
//! `fast` and waits for it (the store-buffering pattern).
//!
//! Overlapping shared holders can delay an exclusive waiter indefinitely only if they
//! keep overlapping without a gap; atomic commands are short (MAXIMUM COMPARE AND WRITE
//! LENGTH blocks) so this is not worth a fairness queue.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use parking_lot::{Condvar, Mutex};

use crate::cdb::Cdb;

/// The blocks a plain block command touches, held shared around its execution.
/// ORWRITE, COMPARE AND WRITE and WRITE ATOMIC are not plain: they hold their range
/// exclusively themselves. UNMAP holds each descriptor's range as it goes.
pub(crate) fn plain_range(cdb: &Cdb, capacity: u64) -> Option<(u64, u64)> {
    match *cdb {
        Cdb::Read { lba, blocks, .. }
        | Cdb::Write { lba, blocks, .. }
        | Cdb::Verify { lba, blocks, .. }
        | Cdb::WriteAndVerify { lba, blocks, .. } => Some((lba, u64::from(blocks))),
        // NUMBER OF BLOCKS 0: to the end of the medium.
        Cdb::WriteSame { lba, blocks: 0, .. } => Some((lba, capacity.saturating_sub(lba))),
        Cdb::WriteSame { lba, blocks, .. } => Some((lba, u64::from(blocks))),
        _ => None,
    }
}

/// A registered range: `[start, end)` in logical blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    start: u64,
    end: u64,
    exclusive: bool,
}

impl Held {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end
    }
}

/// The range lock table of one logical unit.
#[derive(Debug, Default)]
pub(crate) struct RangeLocks {
    exclusive: AtomicUsize,
    fast: AtomicUsize,
    held: Mutex<Vec<Held>>,
    changed: Condvar,
}

/// Held while a command touches its range; releases it on drop.
#[must_use = "the range is released when the guard is dropped"]
pub(crate) struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fast,
    Shared(u64, u64),
    Exclusive(u64, u64),
}

/// `[lba, lba + blocks)`, saturating (ranges are checked against the capacity
/// elsewhere; a lock only needs to be at least as wide as the access).
fn span(lba: u64, blocks: u64) -> (u64, u64) {
    (lba, lba.saturating_add(blocks.max(1)))
}

impl RangeLocks {
    /// Shared access for a plain command: nothing to do unless an atomic command is
    /// active.
    pub(crate) fn shared(&self, lba: u64, blocks: u64) -> RangeGuard<'_> {
        self.fast.fetch_add(1, SeqCst);
        if self.exclusive.load(SeqCst) == 0 {
            return RangeGuard {
                locks: self,
                kind: Kind::Fast,
            };
        }
        self.leave_fast();
        let (start, end) = span(lba, blocks);
        let mut held = self.held.lock();
        while held.iter().any(|h| h.exclusive && h.overlaps(start, end)) {
            self.changed.wait(&mut held);
        }
        held.push(Held {
            start,
            end,
            exclusive: false,
        });
        RangeGuard {
            locks: self,
            kind: Kind::Shared(start, end),
        }
    }

    /// Exclusive access for an atomic command (COMPARE AND WRITE, WRITE ATOMIC,
    /// ORWRITE): no other command touches an overlapping block until the guard drops.
    pub(crate) fn exclusive(&self, lba: u64, blocks: u64) -> RangeGuard<'_> {
        self.exclusive.fetch_add(1, SeqCst);
        let (start, end) = span(lba, blocks);
        let mut held = self.held.lock();
        while self.fast.load(SeqCst) > 0 || held.iter().any(|h| h.overlaps(start, end)) {
            self.changed.wait(&mut held);
        }
        held.push(Held {
            start,
            end,
            exclusive: true,
        });
        RangeGuard {
            locks: self,
            kind: Kind::Exclusive(start, end),
        }
    }

    /// Enters the fast path unless an atomic command is active (then nothing
    /// changes). True: the caller must call [`RangeLocks::leave_fast`] when done.
    pub(crate) fn try_fast(&self) -> bool {
        self.fast.fetch_add(1, SeqCst);
        if self.exclusive.load(SeqCst) == 0 {
            return true;
        }
        self.leave_fast();
        false
    }

    /// Leaves the fast path; wakes an exclusive waiter when this was the last one.
    pub(crate) fn leave_fast(&self) {
        if self.fast.fetch_sub(1, SeqCst) == 1 && self.exclusive.load(SeqCst) > 0 {
            // Taking the mutex orders this wake-up after the waiter's check.
            let _held = self.held.lock();
            self.changed.notify_all();
        }
    }

    fn release(&self, start: u64, end: u64, exclusive: bool) {
        let mut held = self.held.lock();
        let me = Held {
            start,
            end,
            exclusive,
        };
        if let Some(i) = held.iter().position(|h| *h == me) {
            held.swap_remove(i);
        }
        if exclusive {
            self.exclusive.fetch_sub(1, SeqCst);
        }
        self.changed.notify_all();
    }

    #[cfg(test)]
    fn registered(&self) -> usize {
        self.held.lock().len()
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        match self.kind {
            Kind::Fast => self.locks.leave_fast(),
            Kind::Shared(s, e) => self.locks.release(s, e, false),
            Kind::Exclusive(s, e) => self.locks.release(s, e, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn fast_path_registers_nothing() {
        let l = RangeLocks::default();
        let g = l.shared(0, 8);
        assert_eq!(g.kind, Kind::Fast);
        assert_eq!(l.registered(), 0);
        drop(g);
        assert_eq!(l.fast.load(SeqCst), 0);
    }

    #[test]
    fn disjoint_ranges_do_not_wait_and_overlapping_ones_do() {
        let l = Arc::new(RangeLocks::default());
        let a = l.exclusive(0, 4);
        // Disjoint: shared and exclusive both proceed at once.
        let b = l.shared(4, 4);
        assert!(matches!(b.kind, Kind::Shared(4, 8)));
        let c = l.exclusive(100, 1);
        drop((b, c));
        // Overlapping shared access waits for the exclusive holder.
        let done = Arc::new(AtomicBool::new(false));
        let t = {
            let (l, done) = (l.clone(), done.clone());
            std::thread::spawn(move || {
                let _g = l.shared(3, 2);
                done.store(true, SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !done.load(SeqCst),
            "shared access overlapped an exclusive range"
        );
        drop(a);
        t.join().unwrap();
        assert!(done.load(SeqCst));
        assert_eq!(l.registered(), 0);
        assert_eq!(l.exclusive.load(SeqCst), 0);
    }

    #[test]
    fn exclusive_waits_for_fast_path_commands() {
        let l = Arc::new(RangeLocks::default());
        let plain = l.shared(0, 1);
        assert_eq!(plain.kind, Kind::Fast);
        let done = Arc::new(AtomicBool::new(false));
        let t = {
            let (l, done) = (l.clone(), done.clone());
            std::thread::spawn(move || {
                let _g = l.exclusive(0, 1);
                done.store(true, SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !done.load(SeqCst),
            "exclusive ran beside a fast-path command"
        );
        drop(plain);
        t.join().unwrap();
        assert!(done.load(SeqCst));
    }
}
