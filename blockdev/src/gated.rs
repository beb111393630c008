//! A RAM store whose writes wait at a gate, for tests of code that must wait for
//! writes in flight (PREEMPT AND ABORT's drain): each write reports that it has
//! arrived, then waits until the test lets one write through.

use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use parking_lot::Mutex;

use crate::{BlockError, BlockStore, MemStore};

/// A [`MemStore`] whose writes wait at a gate; reads and flushes do not.
pub struct GatedStore {
    inner: MemStore,
    arrived: Mutex<Sender<()>>,
    gate: Mutex<Receiver<()>>,
}

/// The test's side of a [`GatedStore`]: hears writes arrive, lets them through.
pub struct Gate {
    arrived: Receiver<()>,
    open: Sender<()>,
}

impl GatedStore {
    /// A zero-filled gated store of `blocks` blocks of `block_size` bytes, and its gate.
    pub fn new(block_size: u32, blocks: u64) -> (GatedStore, Gate) {
        let (arrived_tx, arrived) = mpsc::channel();
        let (open, gate) = mpsc::channel();
        let store = GatedStore {
            inner: MemStore::new(block_size, blocks),
            arrived: Mutex::new(arrived_tx),
            gate: Mutex::new(gate),
        };
        (store, Gate { arrived, open })
    }
}

impl Gate {
    /// Wait up to `timeout` for a write to reach the store; false if none did.
    pub fn arrived(&self, timeout: Duration) -> bool {
        self.arrived.recv_timeout(timeout).is_ok()
    }

    /// Whether a write reached the store since the last look (without waiting).
    pub fn any_arrived(&self) -> bool {
        self.arrived.try_recv().is_ok()
    }

    /// Let one waiting (or the next) write through.
    pub fn open_one(&self) {
        let _ = self.open.send(());
    }
}

impl BlockStore for GatedStore {
    crate::forward_to!(inner: block_size, num_blocks, capabilities, read, flush);
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), BlockError> {
        let _ = self.arrived.lock().send(());
        // A dropped gate lets every write through.
        let _ = self.gate.lock().recv();
        self.inner.write(lba, data, fua)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_waits_until_the_gate_opens() {
        let (store, gate) = GatedStore::new(512, 8);
        let store = std::sync::Arc::new(store);
        let w = {
            let store = store.clone();
            std::thread::spawn(move || store.write(1, &[7u8; 512], false))
        };
        assert!(gate.arrived(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!w.is_finished(), "the write went through a closed gate");
        gate.open_one();
        w.join().unwrap().unwrap();
        let mut buf = [0u8; 512];
        store.read(1, &mut buf).unwrap();
        assert_eq!(buf, [7u8; 512]);
        assert!(!gate.any_arrived());
    }
}
