//! The asynchronous path of virtual volumes (`read_async` / `write_async`): which
//! requests take it, that it reaches the right back-end blocks, and that a future in
//! flight counts for a remap's hold and drain exactly like blocking I/O.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use blockdev::{BlockError, BlockStore, IoFuture, MemStore};
use bytes::Bytes;
use volume::{
    BlockRange, Extent, HolePolicy, LiveVolume, Mirror, Registry, VirtualVolume, VolumeDef,
};

const BS: usize = 512;

/// RAM with an asynchronous path (ready futures), counting the I/O it sees.
struct AsyncMem {
    inner: MemStore,
    ios: AtomicUsize,
}

impl AsyncMem {
    fn new(blocks: u64) -> Arc<AsyncMem> {
        Arc::new(AsyncMem {
            inner: MemStore::new(BS as u32, blocks),
            ios: AtomicUsize::new(0),
        })
    }
}

impl BlockStore for AsyncMem {
    blockdev::forward_to!(inner: block_size, num_blocks, capabilities, read, write);
    fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }
    fn async_ok(&self) -> bool {
        true
    }
    fn read_async(self: Arc<Self>, lba: u64, blocks: u32) -> Option<IoFuture<Vec<u8>>> {
        self.ios.fetch_add(1, Ordering::SeqCst);
        let mut buf = vec![0u8; blocks as usize * BS];
        Some(blockdev::ready(
            self.inner.read(lba, &mut buf).map(|()| buf),
        ))
    }
    fn write_async(self: Arc<Self>, lba: u64, data: Bytes, fua: bool) -> Option<IoFuture<()>> {
        self.ios.fetch_add(1, Ordering::SeqCst);
        Some(blockdev::ready(self.inner.write(lba, &data, fua)))
    }
}

fn finish<T>(mut f: Pin<Box<dyn Future<Output = T> + Send>>) -> T {
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("ready futures only"),
    }
}

fn extent(vstart: u64, blocks: u64, backend: &str, bstart: u64) -> Extent {
    Extent {
        vstart,
        blocks,
        backend: backend.into(),
        bstart,
        mirror: None,
    }
}

/// Blocks 0..32 on `a` at 100, 32..64 on `b` at 0, 64..96 a hole, 96..128 on `a` at
/// 0 mirrored to `b` at 200.
fn volume(a: &Arc<AsyncMem>, b: &Arc<dyn BlockStore>) -> Arc<LiveVolume> {
    let reg = Registry::new()
        .with("a/lun0", a.clone() as Arc<dyn BlockStore>)
        .with("b/lun0", b.clone());
    let mut mirrored = extent(96, 32, "a/lun0", 0);
    mirrored.mirror = Some(Mirror {
        backend: "b/lun0".into(),
        bstart: 200,
    });
    let def = VolumeDef {
        name: "v".into(),
        wwn: "naa.6001405000000002".into(),
        block_size: BS as u32,
        blocks: 128,
        holes: HolePolicy::Zero,
        extents: vec![
            extent(0, 32, "a/lun0", 100),
            extent(32, 32, "b/lun0", 0),
            mirrored,
        ],
    };
    Arc::new(LiveVolume::new(VirtualVolume::new(&def, &reg, 1).unwrap()))
}

fn pattern(blocks: usize, seed: u8) -> Vec<u8> {
    (0..blocks * BS)
        .map(|i| (i as u8).wrapping_add(seed))
        .collect()
}

#[test]
fn one_extent_goes_to_its_backend_the_rest_takes_the_blocking_path() {
    let a = AsyncMem::new(512);
    let b = AsyncMem::new(512);
    let v = volume(&a, &(b.clone() as Arc<dyn BlockStore>));
    assert!(v.async_ok());

    // Inside the first extent: to `a`, the LBA translated.
    let data = pattern(4, 3);
    let w = v
        .clone()
        .write_async(8, Bytes::from(data.clone()), false)
        .unwrap();
    finish(w).unwrap();
    let mut back = vec![0u8; 4 * BS];
    a.inner.read(108, &mut back).unwrap();
    assert_eq!(back, data);
    let r = v.clone().read_async(8, 4).unwrap();
    assert_eq!(finish(r).unwrap(), data);
    // Inside the second extent: to `b`.
    finish(
        v.clone()
            .write_async(40, Bytes::from(pattern(1, 9)), true)
            .unwrap(),
    )
    .unwrap();
    let mut one = vec![0u8; BS];
    b.inner.read(8, &mut one).unwrap();
    assert_eq!(one, pattern(1, 9));
    assert_eq!(
        (a.ios.load(Ordering::SeqCst), b.ios.load(Ordering::SeqCst)),
        (2, 1)
    );

    // A hole reads as zeroes and refuses writes, without touching a back-end.
    assert_eq!(
        finish(v.clone().read_async(70, 2).unwrap()).unwrap(),
        vec![0u8; 2 * BS]
    );
    let err = finish(
        v.clone()
            .write_async(70, Bytes::from(pattern(1, 1)), false)
            .unwrap(),
    );
    assert!(err.unwrap_err().to_string().contains("hole"));
    // Out of range: an error, not a panic.
    assert!(finish(v.clone().read_async(127, 2).unwrap()).is_err());

    // Across two extents, or on a mirrored one: the blocking path (None, nothing done).
    assert!(v.clone().read_async(30, 4).is_none());
    assert!(v
        .clone()
        .write_async(30, Bytes::from(pattern(4, 0)), false)
        .is_none());
    assert!(v
        .clone()
        .write_async(100, Bytes::from(pattern(1, 0)), false)
        .is_none());
    assert_eq!(
        (a.ios.load(Ordering::SeqCst), b.ios.load(Ordering::SeqCst)),
        (2, 1)
    );
    assert_eq!(v.holds().in_flight(&[BlockRange::new(0, 128)]), 0);
}

#[test]
fn a_volume_is_asynchronous_where_its_backends_are() {
    let a = AsyncMem::new(512);
    let plain: Arc<dyn BlockStore> = Arc::new(MemStore::new(BS as u32, 512));
    let v = volume(&a, &plain);
    assert!(
        v.async_ok(),
        "the extents on `a` can take the asynchronous path"
    );
    assert!(v.clone().read_async(0, 1).is_some());
    // The extent on `plain` cannot: declined, nothing done, nothing left in flight.
    assert!(v.clone().read_async(40, 1).is_none());
    assert!(v
        .clone()
        .write_async(40, Bytes::from(pattern(1, 0)), false)
        .is_none());
    assert_eq!(v.holds().in_flight(&[BlockRange::new(0, 128)]), 0);
    // Only plain back-ends: not asynchronous at all.
    let reg = Registry::new().with("p/lun0", plain.clone());
    let def = VolumeDef {
        name: "w".into(),
        wwn: "naa.6001405000000003".into(),
        block_size: BS as u32,
        blocks: 64,
        holes: HolePolicy::Zero,
        extents: vec![extent(0, 64, "p/lun0", 0)],
    };
    let w = LiveVolume::new(VirtualVolume::new(&def, &reg, 1).unwrap());
    assert!(!w.async_ok());
}

#[test]
fn futures_in_flight_count_for_holds_and_drains() {
    let a = AsyncMem::new(512);
    let b = AsyncMem::new(512);
    let v = volume(&a, &(b.clone() as Arc<dyn BlockStore>));

    // Started but not finished: in flight until it completes.
    let pending = v
        .clone()
        .write_async(10, Bytes::from(pattern(1, 5)), false)
        .unwrap();
    assert_eq!(v.holds().in_flight(&[BlockRange::new(10, 11)]), 1);
    let hold = v.hold(&[BlockRange::new(0, 16)]);
    let err = hold.drain(Duration::from_millis(20)).unwrap_err();
    assert_eq!(err.busy, 1);
    // Under the hold: new I/O there is not started (it would wait on the blocking
    // path); I/O elsewhere still starts, and counts.
    assert!(v.clone().read_async(12, 1).is_none());
    let elsewhere = v.clone().read_async(20, 2).unwrap();
    assert_eq!(v.holds().in_flight(&[BlockRange::new(16, 32)]), 1);
    finish(pending).unwrap();
    hold.drain(Duration::from_secs(5)).unwrap();
    finish(elsewhere).unwrap();
    assert_eq!(v.holds().in_flight(&[BlockRange::new(0, 128)]), 0);
    drop(hold);
    assert!(v.clone().read_async(12, 1).is_some());

    // A future dropped unfinished leaves too.
    drop(v.clone().read_async(0, 1).unwrap());
    assert_eq!(v.holds().in_flight(&[BlockRange::new(0, 128)]), 0);

    // Fenced: refused with NOT READY, nothing reaches a back-end.
    let before = a.ios.load(Ordering::SeqCst);
    v.set_fenced(true);
    match finish(v.clone().read_async(0, 1).unwrap()) {
        Err(BlockError::Sense { key: 0x02, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(a.ios.load(Ordering::SeqCst), before);
}

#[test]
fn more_futures_than_fast_slots_all_count() {
    let a = AsyncMem::new(512);
    let b = AsyncMem::new(512);
    let v = volume(&a, &(b.clone() as Arc<dyn BlockStore>));
    let many: Vec<_> = (0..300)
        .map(|i| v.clone().read_async(i % 32, 1).unwrap())
        .collect();
    assert_eq!(v.holds().in_flight(&[BlockRange::new(0, 32)]), 300);
    for f in many {
        finish(f).unwrap();
    }
    assert_eq!(v.holds().in_flight(&[BlockRange::new(0, 128)]), 0);
}
