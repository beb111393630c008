//! COMPARE AND WRITE through volumes: passed to the back-end (LBA translated) when the
//! blocks lie in one extent of a back-end that does it atomically, refused
//! (`Unsupported`, nothing done) otherwise, and gated by a live volume's range holds
//! like a write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use blockdev::{BlockError, BlockStore, CawOutcome, MemStore};
use parking_lot::{Condvar, Mutex};
use volume::{BlockRange, Extent, HolePolicy, LiveVolume, Registry, VirtualVolume, VolumeDef};

const BS: usize = 512;
const LONG: Duration = Duration::from_secs(10);

/// A `MemStore` with an atomic compare-and-write (as an array has) that records the
/// back-end LBA of every call. `gate` (when set) makes a call wait until it is opened.
struct AtomicStore {
    inner: MemStore,
    atomic: AtomicBool,
    calls: Mutex<Vec<u64>>,
    lock: Mutex<()>,
    gate: Mutex<Option<mpsc::Sender<()>>>,
    closed: Mutex<bool>,
    opened: Condvar,
}

impl AtomicStore {
    fn new(blocks: u64, atomic: bool) -> Arc<AtomicStore> {
        Arc::new(AtomicStore {
            inner: MemStore::new(BS as u32, blocks),
            atomic: AtomicBool::new(atomic),
            calls: Mutex::new(Vec::new()),
            lock: Mutex::new(()),
            gate: Mutex::new(None),
            closed: Mutex::new(false),
            opened: Condvar::new(),
        })
    }

    fn calls(&self) -> Vec<u64> {
        self.calls.lock().clone()
    }

    fn block(&self, lba: u64) -> Vec<u8> {
        let mut b = vec![0u8; BS];
        self.inner.read(lba, &mut b).unwrap();
        b
    }

    /// The next call signals `tx` when it starts, then waits for `open`.
    fn close_gate(&self, tx: mpsc::Sender<()>) {
        *self.closed.lock() = true;
        *self.gate.lock() = Some(tx);
    }

    fn open(&self) {
        *self.closed.lock() = false;
        self.opened.notify_all();
    }
}

impl BlockStore for AtomicStore {
    blockdev::forward_to!(inner: block_size, num_blocks, capabilities, read, write);
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
        if !self.atomic.load(Ordering::SeqCst) {
            return Err(BlockError::Unsupported("compare and write"));
        }
        self.check_buf(lba, compare.len())?;
        self.calls.lock().push(lba);
        if let Some(tx) = self.gate.lock().take() {
            tx.send(()).unwrap();
        }
        {
            let mut closed = self.closed.lock();
            while *closed {
                self.opened.wait(&mut closed);
            }
        }
        let _g = self.lock.lock();
        let mut cur = vec![0u8; compare.len()];
        self.inner.read(lba, &mut cur)?;
        if let Some(i) = cur.iter().zip(compare).position(|(a, b)| a != b) {
            return Ok(CawOutcome::Miscompare { offset: i as u64 });
        }
        self.inner.write(lba, write, fua)?;
        Ok(CawOutcome::Written)
    }
    fn supports_compare_and_write(&self) -> bool {
        self.atomic.load(Ordering::SeqCst)
    }
}

fn ext(vstart: u64, blocks: u64, backend: &str, bstart: u64) -> Extent {
    Extent {
        vstart,
        blocks,
        backend: backend.into(),
        bstart,
        mirror: None,
    }
}

fn def(blocks: u64, extents: Vec<Extent>) -> VolumeDef {
    VolumeDef {
        name: "vol".into(),
        wwn: "naa.600140500000000000000000000000ca".into(),
        block_size: BS as u32,
        blocks,
        holes: HolePolicy::Zero,
        extents,
    }
}

fn caw(
    s: &dyn BlockStore,
    lba: u64,
    old: u8,
    new: u8,
    blocks: usize,
) -> Result<CawOutcome, BlockError> {
    s.compare_and_write(lba, &vec![old; blocks * BS], &vec![new; blocks * BS], false)
}

#[test]
fn passed_to_the_backend_inside_one_extent_with_the_lba_translated() {
    let a = AtomicStore::new(100, true);
    let b = AtomicStore::new(100, true);
    let reg = Registry::new().with("A", a.clone()).with("B", b.clone());
    // [0,20) -> A@50, [20,40) -> B@10, [40,50) hole, [50,60) -> A@0.
    let v = VirtualVolume::new(
        &def(
            60,
            vec![
                ext(0, 20, "A", 50),
                ext(20, 20, "B", 10),
                ext(50, 10, "A", 0),
            ],
        ),
        &reg,
        1,
    )
    .unwrap();
    assert!(v.supports_compare_and_write());

    assert_eq!(caw(&v, 25, 0, 7, 2).unwrap(), CawOutcome::Written);
    assert_eq!(b.calls(), vec![15]);
    assert_eq!(b.block(15), vec![7u8; BS]);
    assert_eq!(b.block(16), vec![7u8; BS]);
    // The last blocks of an extent, and the back-end's miscompare offset unchanged.
    assert_eq!(caw(&v, 18, 0, 3, 2).unwrap(), CawOutcome::Written);
    assert_eq!(a.calls(), vec![68]);
    let mut expect = vec![3u8; 2 * BS];
    expect[BS + 9] = 4;
    let out = v
        .compare_and_write(18, &expect, &vec![5u8; 2 * BS], true)
        .unwrap();
    assert_eq!(
        out,
        CawOutcome::Miscompare {
            offset: BS as u64 + 9
        }
    );
    assert_eq!(a.block(69), vec![3u8; BS], "nothing written");

    // Across an extent boundary, or in a hole: refused, nothing reaches a back-end.
    let (na, nb) = (a.calls().len(), b.calls().len());
    assert!(matches!(
        caw(&v, 19, 3, 1, 2),
        Err(BlockError::Unsupported(_))
    ));
    assert!(matches!(
        caw(&v, 39, 0, 1, 2),
        Err(BlockError::Unsupported(_))
    ));
    assert!(matches!(
        caw(&v, 42, 0, 1, 1),
        Err(BlockError::Unsupported(_))
    ));
    assert_eq!((a.calls().len(), b.calls().len()), (na, nb));
    assert_eq!(a.block(69), vec![3u8; BS]);
    assert_eq!(b.block(10), vec![0u8; BS]);
    // Range and length checks.
    assert!(matches!(
        caw(&v, 59, 0, 1, 2),
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(
        v.compare_and_write(0, &[0u8; BS], &[0u8; 2 * BS], false),
        Err(BlockError::Misaligned { .. })
    ));
    assert_eq!(caw(&v, 0, 0, 0, 0).unwrap(), CawOutcome::Written);

    // A back-end without it (a local file) refuses on its extents; the volume still
    // says yes (some of its extents can) and the others still pass through.
    let plain = Arc::new(MemStore::new(BS as u32, 100));
    let reg = reg.with("P", plain);
    let mixed = VirtualVolume::new(
        &def(40, vec![ext(0, 20, "B", 50), ext(20, 20, "P", 0)]),
        &reg,
        1,
    )
    .unwrap();
    assert!(mixed.supports_compare_and_write());
    assert!(matches!(
        caw(&mixed, 25, 0, 1, 1),
        Err(BlockError::Unsupported(_))
    ));
    assert_eq!(caw(&mixed, 5, 0, 1, 1).unwrap(), CawOutcome::Written);
    assert_eq!(b.calls().last(), Some(&55));
    // Back-ends that find out they cannot (arrays refusing the opcode) turn the
    // volume's answer, on the next call; a volume on local files only says no.
    b.atomic.store(false, Ordering::SeqCst);
    assert!(v.supports_compare_and_write());
    a.atomic.store(false, Ordering::SeqCst);
    assert!(!v.supports_compare_and_write());
    let local = VirtualVolume::new(&def(40, vec![ext(0, 40, "P", 0)]), &reg, 1).unwrap();
    assert!(!local.supports_compare_and_write());
}

#[test]
fn a_live_volume_gates_compare_and_write_like_a_write() {
    let a = AtomicStore::new(100, true);
    let b = AtomicStore::new(100, true);
    let reg = Registry::new().with("A", a.clone()).with("B", b.clone());
    let vol = Arc::new(
        LiveVolume::new(VirtualVolume::new(&def(40, vec![ext(0, 40, "A", 0)]), &reg, 1).unwrap())
            .with_hold_wait(Duration::from_millis(50)),
    );
    assert!(vol.supports_compare_and_write());
    assert_eq!(caw(&*vol, 5, 0, 1, 1).unwrap(), CawOutcome::Written);
    assert_eq!(a.calls(), vec![5]);

    // Held: the CAW waits, then fails as a retryable timeout without reaching A.
    let hold = vol.hold(&[BlockRange::new(4, 8)]);
    let err = caw(&*vol, 5, 1, 2, 1).unwrap_err();
    match &err {
        BlockError::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(a.calls(), vec![5]);
    // Outside the hold it runs.
    assert_eq!(caw(&*vol, 20, 0, 1, 1).unwrap(), CawOutcome::Written);
    drop(hold);

    // A CAW in flight counts for a drain: the drain times out while it runs.
    let (tx, started) = mpsc::channel();
    a.close_gate(tx);
    let running = {
        let vol = vol.clone();
        thread::spawn(move || vol.compare_and_write_tagged(6, &[0u8; BS], &[9u8; BS], false))
    };
    started.recv_timeout(LONG).unwrap();
    let hold = vol.hold(&[BlockRange::new(6, 7)]);
    let err = hold.drain(Duration::from_millis(30)).unwrap_err();
    assert_eq!(err.busy, 1);
    a.open();
    assert_eq!(
        running.join().unwrap().unwrap(),
        (CawOutcome::Written, 1),
        "ran under epoch 1"
    );
    hold.drain(LONG).unwrap();
    drop(hold);

    // After a remap moving [0,20) to B@30, a CAW there goes to B at the new place
    // (with the data the remap copied).
    let new = def(40, vec![ext(0, 20, "B", 30), ext(20, 20, "A", 20)]);
    vol.remap(&new, &reg, 2, LONG, |_| {
        let mut buf = vec![0u8; 20 * BS];
        a.read(0, &mut buf)?;
        b.write(30, &buf, false)
    })
    .unwrap();
    let (out, epoch) = vol
        .compare_and_write_tagged(5, &[1u8; BS], &[2u8; BS], false)
        .unwrap();
    assert_eq!((out, epoch), (CawOutcome::Written, 2));
    assert_eq!(b.calls(), vec![35]);
    assert_eq!(b.block(35), vec![2u8; BS]);
    assert_eq!(a.block(5), vec![1u8; BS], "the old home is not touched");
}
