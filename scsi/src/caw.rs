//! Atomic block commands: COMPARE AND WRITE (SBC-3 5.2) and WRITE ATOMIC(16) (SBC-4
//! 5.48). Both hold their LBA range exclusively (`range_lock.rs`) for the whole
//! read-compare-write or write, so no other command sees or makes a torn result.
//!
//! That lock is node-local. When several nodes serve the same blocks (a virtual volume
//! mapped onto one array LU by every node of a cluster), a read-compare-write on one
//! node can interleave with another node's and both succeed — which breaks VMware ATS.
//! So COMPARE AND WRITE goes to the store's own atomic compare-and-write when it has
//! one ([`BlockStore::supports_compare_and_write`]: a remote array LU that runs COMPARE
//! AND WRITE, a volume whose range lies in one extent on such a LU); the
//! read-compare-write here is the fallback for stores that answer `Unsupported`.
//!
//! Atomicity is with respect to other commands. A power loss in the middle of a WRITE
//! ATOMIC on a `FileStore` may leave part of it written: `pwrite` of several blocks is
//! not crash-atomic on common filesystems.

use blockdev::{BlockError, BlockStore, CawOutcome};

use crate::cdb::{check_range, Cdb};
use crate::lu::LogicalUnit;
use crate::sense::{IoKind, Sense};

pub(crate) fn execute(lu: &LogicalUnit, cdb: &Cdb, data_out: &[u8]) -> Result<Vec<u8>, Sense> {
    match *cdb {
        Cdb::CompareAndWrite {
            lba, blocks, fua, ..
        } => compare_and_write(lu, lba, blocks, fua, data_out)?,
        Cdb::WriteAtomic {
            lba,
            boundary,
            blocks,
            fua,
            ..
        } => write_atomic(lu, lba, boundary, blocks, fua, data_out)?,
        _ => return Err(Sense::invalid_opcode()),
    }
    Ok(Vec::new())
}

/// COMPARE AND WRITE: the data-out is NUMBER OF LOGICAL BLOCKS blocks to compare with
/// the medium, then as many to write. A miscompare writes nothing and reports the
/// offset of the first differing byte in INFORMATION (VALID=1).
fn compare_and_write(
    lu: &LogicalUnit,
    lba: u64,
    blocks: u8,
    fua: bool,
    data_out: &[u8],
) -> Result<(), Sense> {
    lu.check_writable()?;
    if blocks > lu.limits().max_compare_write_blocks {
        return Err(Sense::invalid_field_in_cdb(13, None));
    }
    let store = lu.store().as_ref();
    check_range(lba, u64::from(blocks), store.num_blocks())?;
    let len = usize::from(blocks) * store.block_size() as usize;
    // The data-out must be exactly both halves (LIO refuses under- and overflow; a
    // 256-block request wraps NUMBER OF LOGICAL BLOCKS to 0 and must fail too).
    if data_out.len() != 2 * len {
        return Err(Sense::invalid_field_in_cdb(13, None));
    }
    // SBC-3 5.2: zero blocks is not an error and transfers nothing.
    if blocks == 0 {
        return Ok(());
    }
    let (expect, new) = data_out.split_at(len);
    let fua = fua || !lu.mode().wce;
    // Held in the atomic path too: it orders this command against the node's other
    // commands on these blocks exactly as the fallback does.
    let _held = lu.lock_exclusive(lba, u64::from(blocks));
    if store.supports_compare_and_write() {
        match store.compare_and_write(lba, expect, new, fua) {
            Ok(CawOutcome::Written) => return Ok(()),
            Ok(CawOutcome::Miscompare { offset }) => return Err(Sense::miscompare(offset)),
            // Refused without doing anything (e.g. the range spans two back-ends, or
            // the array turned out not to run COMPARE AND WRITE): emulate.
            Err(BlockError::Unsupported(why)) => {
                tracing::debug!(
                    lba,
                    blocks,
                    why,
                    "store-level compare and write refused; emulating"
                );
            }
            Err(e) => return Err(Sense::from_block_error(&e, IoKind::Write)),
        }
    }
    read_compare_write(store, lba, expect, new, fua)
}

/// The emulation: read, compare, write — atomic only against commands of this node
/// (the caller holds the range exclusively).
fn read_compare_write(
    store: &dyn BlockStore,
    lba: u64,
    expect: &[u8],
    new: &[u8],
    fua: bool,
) -> Result<(), Sense> {
    let mut current = vec![0u8; expect.len()];
    store
        .read(lba, &mut current)
        .map_err(|e| Sense::from_block_error(&e, IoKind::Read))?;
    if let Some(i) = current.iter().zip(expect).position(|(a, b)| a != b) {
        return Err(Sense::miscompare(i as u64));
    }
    store
        .write(lba, new, fua)
        .map_err(|e| Sense::from_block_error(&e, IoKind::Write))
}

/// WRITE ATOMIC(16): TRANSFER LENGTH within MAXIMUM ATOMIC TRANSFER LENGTH, ATOMIC
/// BOUNDARY within MAXIMUM ATOMIC BOUNDARY SIZE, the LBA a multiple of ATOMIC
/// ALIGNMENT and the length of ATOMIC TRANSFER LENGTH GRANULARITY (each INVALID FIELD
/// IN CDB). The whole transfer must arrive: a partial atomic write is no atomic write.
fn write_atomic(
    lu: &LogicalUnit,
    lba: u64,
    boundary: u16,
    blocks: u16,
    fua: bool,
    data_out: &[u8],
) -> Result<(), Sense> {
    lu.check_writable()?;
    let l = lu.limits();
    let n = u64::from(blocks);
    if u32::from(boundary) > l.max_atomic_blocks {
        return Err(Sense::invalid_field_in_cdb(10, None));
    }
    if u32::from(blocks) > l.max_atomic_blocks || u32::from(blocks) > l.max_transfer_blocks {
        return Err(Sense::invalid_field_in_cdb(12, None));
    }
    let store = lu.store().as_ref();
    check_range(lba, n, store.num_blocks())?;
    if l.atomic_alignment > 1 && !lba.is_multiple_of(u64::from(l.atomic_alignment)) {
        return Err(Sense::invalid_field_in_cdb(2, None));
    }
    if l.atomic_granularity > 1 && !n.is_multiple_of(u64::from(l.atomic_granularity)) {
        return Err(Sense::invalid_field_in_cdb(12, None));
    }
    if blocks == 0 {
        return Ok(());
    }
    let len = usize::from(blocks) * store.block_size() as usize;
    let Some(data) = data_out.get(..len) else {
        return Err(Sense::invalid_field_in_cdb(12, None));
    };
    let _held = lu.lock_exclusive(lba, n);
    store
        .write(lba, data, fua || !lu.mode().wce)
        .map_err(|e| Sense::from_block_error(&e, IoKind::Write))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use blockdev::{BlockError, BlockStore, Capabilities, CawOutcome, MemStore};
    use parking_lot::Mutex;

    use crate::tests::{assert_sense, nexus, TUR};
    use crate::{LogicalUnit, LuConfig, LunMap, Nexus, Request, Response, SenseKey, Status};
    use crate::{Sense, TargetInfo};

    const BS: usize = 512;

    /// A store with its own atomic compare-and-write (as an array would have), which
    /// counts what reaches it. `refuse` makes the CAW answer `Unsupported`; `fail`
    /// makes it fail with a back-end sense.
    struct AtomicStore {
        inner: MemStore,
        atomic: AtomicBool,
        refuse: AtomicBool,
        fail: AtomicBool,
        caws: AtomicUsize,
        reads: AtomicUsize,
        last_fua: AtomicBool,
        lock: Mutex<()>,
    }

    impl AtomicStore {
        fn new(atomic: bool) -> Arc<AtomicStore> {
            Arc::new(AtomicStore {
                inner: MemStore::new(BS as u32, 64),
                atomic: AtomicBool::new(atomic),
                refuse: AtomicBool::new(false),
                fail: AtomicBool::new(false),
                caws: AtomicUsize::new(0),
                reads: AtomicUsize::new(0),
                last_fua: AtomicBool::new(false),
                lock: Mutex::new(()),
            })
        }
        fn mem(&self) -> &MemStore {
            &self.inner
        }
        fn block(&self, lba: u64) -> Vec<u8> {
            let mut b = vec![0u8; BS];
            self.mem().read(lba, &mut b).unwrap();
            b
        }
    }

    impl BlockStore for AtomicStore {
        fn block_size(&self) -> u32 {
            BS as u32
        }
        fn num_blocks(&self) -> u64 {
            self.mem().num_blocks()
        }
        fn capabilities(&self) -> Capabilities {
            self.mem().capabilities()
        }
        fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.mem().read(lba, buf)
        }
        fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), BlockError> {
            self.mem().write(lba, data, fua)
        }
        fn flush(&self) -> Result<(), BlockError> {
            Ok(())
        }
        fn compare_and_write(
            &self,
            lba: u64,
            compare: &[u8],
            write: &[u8],
            fua: bool,
        ) -> Result<CawOutcome, BlockError> {
            self.caws.fetch_add(1, Ordering::SeqCst);
            if self.refuse.load(Ordering::SeqCst) {
                return Err(BlockError::Unsupported("compare and write"));
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(BlockError::Sense {
                    key: 0x2,
                    asc: 0x04,
                    ascq: 0x01,
                    msg: "array reconnecting".into(),
                });
            }
            self.last_fua.store(fua, Ordering::SeqCst);
            let _g = self.lock.lock();
            let mut cur = vec![0u8; compare.len()];
            self.mem().read(lba, &mut cur)?;
            if let Some(i) = cur.iter().zip(compare).position(|(a, b)| a != b) {
                return Ok(CawOutcome::Miscompare { offset: i as u64 });
            }
            self.mem().write(lba, write, fua)?;
            Ok(CawOutcome::Written)
        }
        fn supports_compare_and_write(&self) -> bool {
            self.atomic.load(Ordering::SeqCst)
        }
    }

    struct Lun {
        map: LunMap,
        n: Nexus,
    }

    fn lun(store: Arc<AtomicStore>) -> Lun {
        let mut map = LunMap::new(Arc::new(TargetInfo {
            name: "iqn.2026-11.org.switchyard:caw".into(),
            port_name: "iqn.2026-11.org.switchyard:caw,t,0x0001".into(),
        }));
        let cfg = LuConfig {
            serial: "caw-0".into(),
            ..LuConfig::default()
        };
        map.insert(0, Arc::new(LogicalUnit::new(cfg, store)));
        let l = Lun { map, n: nexus(1) };
        assert_eq!(l.run(&TUR, &[]).sense, Some(Sense::power_on_reset()));
        l
    }

    impl Lun {
        fn run(&self, cdb: &[u8], data_out: &[u8]) -> Response {
            self.map.execute(&Request {
                lun: 0,
                cdb,
                data_out,
                data_in_len: 0,
                nexus: &self.n,
            })
        }
    }

    fn caw_cdb(lba: u64, blocks: u8, fua: bool) -> Vec<u8> {
        let mut c = vec![0u8; 16];
        c[0] = 0x89;
        c[1] = if fua { 0x08 } else { 0 };
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[13] = blocks;
        c
    }

    fn both(compare: &[u8], write: &[u8]) -> Vec<u8> {
        [compare, write].concat()
    }

    #[test]
    fn compare_and_write_goes_to_an_atomic_store() {
        let store = AtomicStore::new(true);
        store.mem().write(3, &[5u8; 2 * BS], false).unwrap();
        let l = lun(store.clone());
        let r = l.run(&caw_cdb(3, 2, true), &both(&[5u8; 2 * BS], &[6u8; 2 * BS]));
        assert_eq!(r.status, Status::Good, "{:?}", r.sense);
        assert_eq!(store.caws.load(Ordering::SeqCst), 1);
        assert_eq!(store.reads.load(Ordering::SeqCst), 0, "no emulated read");
        assert!(store.last_fua.load(Ordering::SeqCst), "FUA passed on");
        assert_eq!(store.block(3), vec![6u8; BS]);
        assert_eq!(store.block(4), vec![6u8; BS]);

        // A miscompare reported by the store: MISCOMPARE 1D/00, INFORMATION = offset.
        let mut expect = vec![6u8; 2 * BS];
        expect[BS + 17] = 0;
        let r = l.run(&caw_cdb(3, 2, false), &both(&expect, &[7u8; 2 * BS]));
        assert_sense(&r, SenseKey::Miscompare, 0x1D, 0x00);
        assert_eq!(r.sense.unwrap().info, Some(BS as u64 + 17));
        assert_eq!(store.caws.load(Ordering::SeqCst), 2);
        assert_eq!(store.block(4), vec![6u8; BS], "nothing written");

        // Another back-end failure maps like a write error would.
        store.fail.store(true, Ordering::SeqCst);
        let r = l.run(&caw_cdb(3, 1, false), &both(&[6u8; BS], &[8u8; BS]));
        assert_sense(&r, SenseKey::NotReady, 0x04, 0x01);
        assert_eq!(store.reads.load(Ordering::SeqCst), 0);
        assert_eq!(store.block(3), vec![6u8; BS]);
    }

    #[test]
    fn falls_back_to_emulation_when_the_store_refuses() {
        // Claims support, then refuses (an array that answered INVALID COMMAND
        // OPERATION CODE): the emulation runs instead.
        let store = AtomicStore::new(true);
        store.refuse.store(true, Ordering::SeqCst);
        let l = lun(store.clone());
        let r = l.run(&caw_cdb(0, 1, false), &both(&[0u8; BS], &[9u8; BS]));
        assert_eq!(r.status, Status::Good, "{:?}", r.sense);
        assert_eq!(store.caws.load(Ordering::SeqCst), 1);
        assert_eq!(store.reads.load(Ordering::SeqCst), 1, "emulated read");
        assert_eq!(store.block(0), vec![9u8; BS]);
        let mut expect = vec![9u8; BS];
        expect[100] = 1;
        let r = l.run(&caw_cdb(0, 1, false), &both(&expect, &[1u8; BS]));
        assert_sense(&r, SenseKey::Miscompare, 0x1D, 0x00);
        assert_eq!(r.sense.unwrap().info, Some(100));
        assert_eq!(store.block(0), vec![9u8; BS]);
    }

    #[test]
    fn stores_without_atomic_caw_are_not_asked() {
        let store = AtomicStore::new(false);
        let l = lun(store.clone());
        let r = l.run(&caw_cdb(1, 1, false), &both(&[0u8; BS], &[4u8; BS]));
        assert_eq!(r.status, Status::Good, "{:?}", r.sense);
        assert_eq!(store.caws.load(Ordering::SeqCst), 0);
        assert_eq!(store.block(1), vec![4u8; BS]);
        // Zero blocks reaches no store method at all.
        let s2 = AtomicStore::new(true);
        let l2 = lun(s2.clone());
        assert_eq!(l2.run(&caw_cdb(1, 0, false), &[]).status, Status::Good);
        assert_eq!(s2.caws.load(Ordering::SeqCst), 0);
    }
}
