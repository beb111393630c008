//! The abort half of PERSISTENT RESERVE OUT with PREEMPT AND ABORT (SPC-4 5.13.11.4,
//! SAM-5 5.6): when it completes, no command that was admitted before it may still
//! change the medium. Fencing depends on this (Pacemaker's `fence_scsi` preempts and
//! aborts the fenced host's key): a write the fenced host sent before the fence must not
//! land after it.
//!
//! Every command that writes the medium holds a [`WriteTicket`] from before its
//! reservation check until it has finished (for a command running as a future, until
//! the future completes). Tickets are counted per generation, in two slots used in turn.
//! [`WriteDrain::drain`] starts a new generation and waits until the old one's slot is
//! empty, like a grace period:
//!
//! - a command that took its ticket in the old generation may have passed its
//!   reservation check against the state from before the preemption; the drain waits
//!   for it to finish, so it completes before the PREEMPT AND ABORT does (as if it had
//!   completed before the abort reached it);
//! - a command that takes its ticket in the new generation is checked against the
//!   state the preemption installed (the new generation starts after it is installed),
//!   and gets RESERVATION CONFLICT if the preempting initiator's reservation excludes
//!   it.
//!
//! Taking a ticket is two atomic increments of a counter and two loads on the fast
//! path. Commands that only read are not counted: one that finishes after the abort
//! changes nothing.
//!
//! Drains are serialized; a PREEMPT AND ABORT holds no ticket itself (it does not write
//! the medium), so it never waits for itself.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Writes in flight on one logical unit, by generation (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct WriteDrain {
    generation: AtomicU64,
    /// Tickets held, in the slot of their generation's parity.
    held: [AtomicUsize; 2],
    /// One drain at a time: a second one must not start a generation whose slot the
    /// first is still waiting on.
    draining: Mutex<()>,
}

/// Held by a command that writes the medium until it has finished.
#[derive(Debug)]
pub(crate) struct WriteTicket {
    drain: Arc<WriteDrain>,
    slot: usize,
}

impl Drop for WriteTicket {
    fn drop(&mut self) {
        self.drain.held[self.slot].fetch_sub(1, SeqCst);
    }
}

impl WriteDrain {
    /// A ticket in the current generation. Taken before the command's reservation
    /// check; the drain that starts the next generation waits for it.
    pub(crate) fn ticket(self: &Arc<Self>) -> WriteTicket {
        loop {
            let g = self.generation.load(SeqCst);
            let slot = (g & 1) as usize;
            self.held[slot].fetch_add(1, SeqCst);
            // Either this load sees `g` (the count above precedes the drain's bump,
            // so the drain sees it), or a drain started meanwhile: take a ticket in
            // the new generation instead.
            if self.generation.load(SeqCst) == g {
                return WriteTicket {
                    drain: self.clone(),
                    slot,
                };
            }
            self.held[slot].fetch_sub(1, SeqCst);
        }
    }

    /// Start a new generation and wait until every ticket of the previous one has
    /// been dropped. Blocks: call it where a thread may wait (PERSISTENT RESERVE OUT
    /// runs on the blocking pool).
    pub(crate) fn drain(&self) {
        let _one = self.draining.lock();
        let g = self.generation.fetch_add(1, SeqCst);
        let slot = (g & 1) as usize;
        let start = Instant::now();
        let mut warned = false;
        while self.held[slot].load(SeqCst) != 0 {
            if !warned && start.elapsed() > Duration::from_secs(1) {
                warned = true;
                tracing::warn!(
                    writes = self.held[slot].load(SeqCst),
                    "PREEMPT AND ABORT is waiting for writes admitted before it to finish"
                );
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A drain waits for a ticket taken before it, and not for one taken after it
    /// started.
    #[test]
    fn drain_waits_for_older_tickets_only() {
        let d = Arc::new(WriteDrain::default());
        let old = d.ticket();
        let done = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (d, done) = (d.clone(), done.clone());
            std::thread::spawn(move || {
                d.drain();
                done.store(true, SeqCst);
            })
        };
        // The drain has started once the generation moved; a ticket taken now is in
        // the new generation and must not hold it up.
        while d.generation.load(SeqCst) == 0 {
            std::thread::yield_now();
        }
        let newer = d.ticket();
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !done.load(SeqCst),
            "the drain finished while an older write was in flight"
        );
        drop(old);
        waiter.join().unwrap();
        assert!(done.load(SeqCst));
        drop(newer);
        // Nothing in flight: a drain returns at once, generation after generation.
        for _ in 0..4 {
            d.drain();
        }
        assert_eq!(d.held[0].load(SeqCst) + d.held[1].load(SeqCst), 0);
    }

    /// Many writers taking and dropping tickets while drains run: every drain
    /// returns, and no count is left behind.
    #[test]
    fn concurrent_tickets_and_drains_balance() {
        let d = Arc::new(WriteDrain::default());
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..3)
            .map(|_| {
                let (d, stop) = (d.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(SeqCst) {
                        let t = d.ticket();
                        std::hint::spin_loop();
                        drop(t);
                    }
                })
            })
            .collect();
        for _ in 0..200 {
            d.drain();
        }
        stop.store(true, SeqCst);
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(d.held[0].load(SeqCst) + d.held[1].load(SeqCst), 0);
    }
}
