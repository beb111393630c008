//! Live remaps of a volume while threads do I/O against it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use blockdev::{BlockError, BlockStore, MemStore};
use parking_lot::{Condvar, Mutex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use volume::{
    BlockRange, Extent, HolePolicy, LiveVolume, Mirror, Registry, RemapError, VirtualVolume,
    VolumeDef,
};

const BS: usize = 512;
const CHUNK: u64 = 16;
const CHUNKS: u64 = 16;
const BLOCKS: u64 = CHUNK * CHUNKS;
const LONG: Duration = Duration::from_secs(10);

/// The volume with chunk `c` on back-end `homes[c]` ("A" or "B") at the same LBA;
/// neighbouring chunks with the same home form one extent.
fn def_from(homes: &[&'static str]) -> VolumeDef {
    let mut extents: Vec<Extent> = Vec::new();
    for (c, home) in homes.iter().enumerate() {
        let vstart = c as u64 * CHUNK;
        match extents.last_mut() {
            Some(e) if e.backend == *home && e.vstart + e.blocks == vstart => e.blocks += CHUNK,
            _ => extents.push(Extent {
                vstart,
                blocks: CHUNK,
                backend: home.to_string(),
                bstart: vstart,
                mirror: None,
            }),
        }
    }
    VolumeDef {
        name: "vol".into(),
        wwn: "naa.600140500000000000000000000000aa".into(),
        block_size: BS as u32,
        blocks: BLOCKS,
        holes: HolePolicy::Error,
        extents,
    }
}

/// Block `lba` as written by write `id` (id 0: never written, zeroes).
fn block(id: u64, lba: u64) -> Vec<u8> {
    if id == 0 {
        return vec![0; BS];
    }
    let word = (id << 20 | lba).to_le_bytes();
    word.iter().copied().cycle().take(BS).collect()
}

fn chunk_range(c: u64) -> BlockRange {
    BlockRange::at(c * CHUNK, CHUNK)
}

fn copy_range(from: &dyn BlockStore, to: &dyn BlockStore, r: BlockRange) {
    let mut buf = vec![0u8; r.len() as usize * BS];
    from.read(r.start, &mut buf).unwrap();
    to.write(r.start, &buf, false).unwrap();
    to.flush().unwrap();
}

#[test]
fn remap_under_load_never_returns_stale_or_torn_data() {
    let a = Arc::new(MemStore::new(BS as u32, BLOCKS));
    let b = Arc::new(MemStore::new(BS as u32, BLOCKS));
    let stores: HashMap<&str, Arc<MemStore>> = [("A", a.clone()), ("B", b.clone())].into();
    let reg = Registry::new().with("A", a.clone()).with("B", b.clone());
    let mut homes = vec!["A"; CHUNKS as usize];
    let vol = Arc::new(LiveVolume::new(
        VirtualVolume::new(&def_from(&homes), &reg, 1).unwrap(),
    ));

    let mut load = Load::new();
    load.start(&vol, 4, 0xfeed);

    // The remapper: move one chunk at a time between A and B.
    let mut rng = StdRng::seed_from_u64(42);
    // At least 150 remaps, and keep going until the workers have done plenty of I/O.
    let begin = std::time::Instant::now();
    let mut remaps = 0;
    while remaps < 150 || (load.ops() < 4000 && begin.elapsed() < Duration::from_secs(20)) {
        let i = remaps;
        remaps += 1;
        let c = rng.gen_range(0..CHUNKS);
        let r = chunk_range(c);
        let (from, to) = match homes[c as usize] {
            "A" => ("A", "B"),
            _ => ("B", "A"),
        };
        let hold = vol.hold(&[r]);
        hold.drain(LONG).expect("drain");
        copy_range(&*stores[from], &*stores[to], r);
        homes[c as usize] = to;
        let affected = vol.stage(&def_from(&homes), &reg, 2 + i).expect("stage");
        assert_eq!(affected, vec![r], "the diff names exactly the moved chunk");
        assert_eq!(vol.switch().expect("switch"), 2 + i);
        hold.release();
        if i % 4 == 0 {
            thread::sleep(Duration::from_micros(200));
        }
    }
    load.stop();
    assert_eq!(vol.epoch(), 1 + remaps);
    let ops = load.ops();
    eprintln!("{remaps} remaps during {ops} I/Os");
    assert!(ops >= 4000, "too little I/O ran during the remaps");
    load.check("the volume", &*vol);
}

/// The model of a volume under [`Load`]: per chunk, under one lock, the id of the last
/// write to each block.
type Model = Arc<Vec<Mutex<Vec<u64>>>>;

/// Threads that write and read random runs of a live volume while it is remapped, and
/// check every read against the model. A thread holds the model locks of the chunks
/// its I/O touches for the whole I/O, so the model and the volume change together.
/// The remapper takes no model lock: the volume's own hold and drain are what keep its
/// copy consistent.
struct Load {
    model: Model,
    next_id: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn new() -> Load {
        Load {
            model: Arc::new(
                (0..CHUNKS)
                    .map(|_| Mutex::new(vec![0; CHUNK as usize]))
                    .collect(),
            ),
            next_id: Arc::new(AtomicU64::new(1)),
            stop: Arc::new(AtomicBool::new(false)),
            ops: Arc::new(AtomicU64::new(0)),
            workers: Vec::new(),
        }
    }

    /// Start `threads` more threads against `vol`.
    fn start(&mut self, vol: &Arc<LiveVolume>, threads: u64, seed: u64) {
        for t in 0..threads {
            let (vol, model, next_id, stop, ops) = (
                vol.clone(),
                self.model.clone(),
                self.next_id.clone(),
                self.stop.clone(),
                self.ops.clone(),
            );
            self.workers.push(thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed + t);
                while !stop.load(Ordering::Relaxed) {
                    let lba = rng.gen_range(0..BLOCKS);
                    let n = rng.gen_range(1..=40).min(BLOCKS - lba);
                    let (c0, c1) = (lba / CHUNK, (lba + n - 1) / CHUNK);
                    let mut locks: Vec<_> = (c0..=c1).map(|c| model[c as usize].lock()).collect();
                    if rng.gen_bool(0.5) {
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        let data: Vec<u8> = (lba..lba + n).flat_map(|x| block(id, x)).collect();
                        vol.write(lba, &data, false)
                            .unwrap_or_else(|e| panic!("write {lba}+{n} failed: {e}"));
                        for x in lba..lba + n {
                            locks[(x / CHUNK - c0) as usize][(x % CHUNK) as usize] = id;
                        }
                    } else {
                        let mut buf = vec![0u8; n as usize * BS];
                        let epoch = vol
                            .read_tagged(lba, &mut buf)
                            .unwrap_or_else(|e| panic!("read {lba}+{n} failed: {e}"));
                        for x in lba..lba + n {
                            let want = locks[(x / CHUNK - c0) as usize][(x % CHUNK) as usize];
                            let off = (x - lba) as usize * BS;
                            assert!(
                                buf[off..off + BS] == block(want, x)[..],
                                "block {x} (read under epoch {epoch}) is not write {want}: stale or torn"
                            );
                        }
                    }
                    drop(locks);
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }

    /// Stop every thread and wait for them; fails if one saw an error or stale data.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            w.join().expect("a worker saw an error or stale data");
        }
        self.stop.store(false, Ordering::Relaxed);
    }

    /// I/Os done so far.
    fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    /// Check every block of `store` (the volume, or a back-end whose LBAs are the
    /// volume's) against the model.
    fn check(&self, what: &str, store: &dyn BlockStore) {
        let mut all = vec![0u8; BLOCKS as usize * BS];
        store.read(0, &mut all).unwrap();
        for x in 0..BLOCKS {
            let want = self.model[(x / CHUNK) as usize].lock()[(x % CHUNK) as usize];
            assert!(
                all[x as usize * BS..][..BS] == block(want, x)[..],
                "{what}: block {x} is not write {want}"
            );
        }
    }
}

/// An online migration from A to B that has copied the first `copied` chunks: those
/// live on B and, while `mirrored`, also on A (same LBAs); the rest on A only.
fn def_migrating(copied: u64, mirrored: bool) -> VolumeDef {
    let mut d = def_from(&["A"; CHUNKS as usize]);
    d.extents = (0..CHUNKS)
        .map(|c| {
            let r = chunk_range(c);
            let on_a = Extent {
                vstart: r.start,
                blocks: CHUNK,
                backend: "A".into(),
                bstart: r.start,
                mirror: None,
            };
            match c < copied {
                false => on_a,
                true => Extent {
                    backend: "B".into(),
                    mirror: mirrored.then(|| Mirror {
                        backend: "A".into(),
                        bstart: r.start,
                    }),
                    ..on_a
                },
            }
        })
        .collect();
    d
}

/// Move a live volume from A to B chunk by chunk while threads write and read: each
/// step copies one chunk (held and drained) and maps it on B mirrored on A, so A stays
/// complete. Then either abort (back to A only) or finish (B only) under load: no
/// write is lost either way, and until then the two homes stay identical.
#[test]
fn a_migration_under_load_can_abort_or_finish_without_losing_a_write() {
    for finish in [false, true] {
        let a = Arc::new(MemStore::new(BS as u32, BLOCKS));
        let b = Arc::new(MemStore::new(BS as u32, BLOCKS));
        let reg = Registry::new().with("A", a.clone()).with("B", b.clone());
        let vol = Arc::new(LiveVolume::new(
            VirtualVolume::new(&def_migrating(0, true), &reg, 1).unwrap(),
        ));
        let mut load = Load::new();
        load.start(&vol, 3, 0xabc);
        for c in 0..CHUNKS {
            let epoch = vol
                .remap(&def_migrating(c + 1, true), &reg, c + 2, LONG, |ranges| {
                    assert_eq!(ranges, [chunk_range(c)]);
                    copy_range(&*a, &*b, chunk_range(c));
                    Ok(())
                })
                .unwrap();
            assert_eq!(epoch, c + 2);
            thread::sleep(Duration::from_millis(2));
        }
        let copied = load.ops();
        while load.ops() < copied + 500 {
            thread::sleep(Duration::from_millis(1));
        }
        // Every write reached both homes.
        load.stop();
        load.check("A while mirrored", &*a);
        load.check("B while mirrored", &*b);
        load.start(&vol, 3, 0xdef);
        // Abort: A is complete; finish: B is. Nothing to copy either way.
        let (last, target) = match finish {
            true => (def_migrating(CHUNKS, false), &b),
            false => (def_migrating(0, false), &a),
        };
        let epoch = vol
            .remap(&last, &reg, CHUNKS + 2, LONG, |ranges| {
                assert_eq!(ranges, [BlockRange::new(0, BLOCKS)]);
                Ok(())
            })
            .unwrap();
        assert_eq!(epoch, CHUNKS + 2);
        let switched = load.ops();
        while load.ops() < switched + 200 {
            thread::sleep(Duration::from_millis(1));
        }
        load.stop();
        load.check("the volume", &*vol);
        load.check(if finish { "B" } else { "A" }, &**target);
    }
}

/// A store whose next write to blocks below `stick_below` blocks until `unstick`.
struct StickyStore {
    inner: MemStore,
    stick_below: u64,
    armed: AtomicBool,
    stuck: Mutex<bool>,
    cond: Condvar,
    entered: Mutex<Option<mpsc::Sender<()>>>,
}

impl StickyStore {
    fn new(blocks: u64, stick_below: u64, entered: mpsc::Sender<()>) -> StickyStore {
        StickyStore {
            inner: MemStore::new(BS as u32, blocks),
            stick_below,
            armed: AtomicBool::new(true),
            stuck: Mutex::new(true),
            cond: Condvar::new(),
            entered: Mutex::new(Some(entered)),
        }
    }

    fn unstick(&self) {
        *self.stuck.lock() = false;
        self.cond.notify_all();
    }
}

impl BlockStore for StickyStore {
    blockdev::forward_to!(inner: block_size, num_blocks, capabilities, read);
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), BlockError> {
        if lba < self.stick_below && self.armed.swap(false, Ordering::SeqCst) {
            if let Some(tx) = self.entered.lock().take() {
                tx.send(()).unwrap();
            }
            let mut stuck = self.stuck.lock();
            while *stuck {
                self.cond.wait(&mut stuck);
            }
        }
        self.inner.write(lba, data, fua)
    }
    fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }
}

#[test]
fn a_stuck_io_times_out_the_drain_and_release_resumes_on_the_old_table() {
    let (entered_tx, entered) = mpsc::channel();
    let a = Arc::new(StickyStore::new(BLOCKS, CHUNK, entered_tx));
    let b = Arc::new(MemStore::new(BS as u32, BLOCKS));
    let reg = Registry::new().with("A", a.clone()).with("B", b.clone());
    let mut homes = vec!["A"; CHUNKS as usize];
    let vol = Arc::new(LiveVolume::new(
        VirtualVolume::new(&def_from(&homes), &reg, 1).unwrap(),
    ));

    // An I/O gets stuck in back-end A, in chunk 0.
    let stuck_io = {
        let vol = vol.clone();
        thread::spawn(move || vol.write_tagged(0, &block(1, 0), false))
    };
    entered.recv_timeout(LONG).unwrap();

    // Remap chunk 0 to B: the drain cannot finish.
    homes[0] = "B";
    let affected = vol.stage(&def_from(&homes), &reg, 2).unwrap();
    assert_eq!(affected, vec![chunk_range(0)]);
    let hold = vol.hold(&affected);
    let err = hold.drain(Duration::from_millis(100)).unwrap_err();
    assert_eq!(err.busy, 1);
    assert!(err.to_string().contains("retry"), "{err}");
    // The switch refuses while I/O is in flight.
    assert!(matches!(
        vol.switch(),
        Err(RemapError::NotDrained { busy: 1 })
    ));

    // New I/O in the held range waits; I/O elsewhere flows.
    let (done_tx, done) = mpsc::channel();
    let held_io = {
        let vol = vol.clone();
        thread::spawn(move || {
            let epoch = vol.write_tagged(4, &block(2, 4), false);
            done_tx.send(()).unwrap();
            epoch
        })
    };
    assert!(done.recv_timeout(Duration::from_millis(100)).is_err());
    assert_eq!(vol.write_tagged(100, &block(3, 100), false).unwrap(), 1);

    // Give up: roll back and release. Held I/O runs against the old table (epoch 1, A).
    assert!(vol.rollback());
    hold.release();
    assert_eq!(held_io.join().unwrap().unwrap(), 1);
    let mut buf = vec![0u8; BS];
    a.read(4, &mut buf).unwrap();
    assert_eq!(buf, block(2, 4));
    b.read(4, &mut buf).unwrap();
    assert_eq!(buf, block(0, 4));

    a.unstick();
    assert_eq!(stuck_io.join().unwrap().unwrap(), 1);
    assert_eq!(vol.epoch(), 1);
    assert!(vol.staged_affected().is_none());

    // Now the same remap goes through in one call.
    let epoch = vol
        .remap(&def_from(&homes), &reg, 2, LONG, |ranges| {
            for r in ranges {
                copy_range(&*a, &*b, *r);
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(epoch, 2);
    vol.read(0, &mut buf).unwrap();
    assert_eq!(buf, block(1, 0));
    assert_eq!(vol.current().backend_ids().collect::<Vec<_>>(), ["B", "A"]);
}

#[test]
fn switch_needs_a_staged_table_a_hold_and_a_newer_epoch() {
    let a = Arc::new(MemStore::new(BS as u32, BLOCKS));
    let b = Arc::new(MemStore::new(BS as u32, BLOCKS));
    let reg = Registry::new().with("A", a).with("B", b);
    let mut homes = vec!["A"; CHUNKS as usize];
    let vol = LiveVolume::new(VirtualVolume::new(&def_from(&homes), &reg, 5).unwrap())
        .with_hold_wait(Duration::from_millis(50));
    assert!(matches!(vol.switch(), Err(RemapError::NothingStaged)));
    homes[3] = "B";
    assert!(matches!(
        vol.stage(&def_from(&homes), &reg, 5),
        Err(RemapError::StaleEpoch { .. })
    ));
    let mut bad = def_from(&homes);
    bad.extents[0].backend = "nowhere".into();
    let err = vol.stage(&bad, &reg, 6).unwrap_err().to_string();
    assert!(err.contains("unknown back-end \"nowhere\""), "{err}");

    vol.stage(&def_from(&homes), &reg, 6).unwrap();
    assert!(matches!(vol.switch(), Err(RemapError::NotHeld { .. })));
    // A hold on part of the range is not enough.
    let part = vol.hold(&[BlockRange::new(48, 56)]);
    assert!(matches!(vol.switch(), Err(RemapError::NotHeld { .. })));
    // Held I/O that waits past the hold wait fails with a clear error.
    let err = vol.read(50, &mut vec![0u8; BS]).unwrap_err();
    assert!(err.to_string().contains("held by a remap"), "{err}");
    let rest = vol.hold(&[BlockRange::new(56, 64)]);
    assert_eq!(vol.switch().unwrap(), 6);
    drop((part, rest));
    assert_eq!(vol.current().def().extents.len(), 3);
    vol.read(50, &mut vec![0u8; BS]).unwrap();
}

#[test]
fn a_fenced_volume_fails_new_and_held_io_and_recovers() {
    let a = Arc::new(MemStore::new(BS as u32, BLOCKS));
    let reg = Registry::new().with("A", a.clone());
    let vol = Arc::new(LiveVolume::new(
        VirtualVolume::new(&def_from(&["A"; CHUNKS as usize]), &reg, 1).unwrap(),
    ));
    vol.write(0, &block(1, 0), false).unwrap();
    // An I/O waiting at a hold when the volume is fenced fails when it wakes up; it
    // never runs against the table.
    let hold = vol.hold(&[chunk_range(0)]);
    let (tx, rx) = mpsc::channel();
    let v = vol.clone();
    let waiter = thread::spawn(move || {
        tx.send(()).unwrap();
        v.write(0, &block(2, 0), false)
    });
    rx.recv().unwrap();
    thread::sleep(Duration::from_millis(50));
    vol.set_fenced(true);
    hold.release();
    let held = waiter.join().unwrap();
    assert!(
        matches!(held, Err(BlockError::Sense { key: 2, asc: 4, .. })),
        "{held:?}"
    );
    // New I/O fails the same way, reads included.
    let mut buf = vec![0u8; BS];
    assert!(matches!(
        vol.read(0, &mut buf),
        Err(BlockError::Sense { key: 2, .. })
    ));
    // The held write did not land.
    a.read(0, &mut buf).unwrap();
    assert_eq!(buf, block(1, 0));
    vol.set_fenced(false);
    vol.read(0, &mut buf).unwrap();
    assert_eq!(buf, block(1, 0));
    vol.write(0, &block(3, 0), false).unwrap();
}
