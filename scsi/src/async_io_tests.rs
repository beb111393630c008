//! [`LunMap::start`]: plain READ and WRITE as futures over a store with an
//! asynchronous path, and every way back to the blocking path.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use blockdev::{BlockError, BlockStore, IoFuture, MemStore};
use bytes::Bytes;

use crate::tests::{assert_sense, nexus, read10, write10, TUR};
use crate::{LogicalUnit, LuConfig, LunMap, Nexus, Request, Response, SenseKey, Started, Status};
use crate::{ResponseFuture, TargetInfo};

const BS: u32 = 512;
const BLOCKS: u64 = 256;

/// A RAM store whose asynchronous path can be switched off, counting which path ran.
struct AsyncMem {
    inner: MemStore,
    decline: AtomicBool,
    sync_ios: AtomicUsize,
    async_ios: AtomicUsize,
    /// FUA flags of the writes that reached the store, in order.
    fua: parking_lot::Mutex<Vec<bool>>,
}

impl BlockStore for AsyncMem {
    blockdev::forward_to!(inner: block_size, num_blocks, capabilities, flush);
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.sync_ios.fetch_add(1, Ordering::SeqCst);
        self.inner.read(lba, buf)
    }
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), BlockError> {
        self.sync_ios.fetch_add(1, Ordering::SeqCst);
        self.fua.lock().push(fua);
        self.inner.write(lba, data, fua)
    }
    fn async_ok(&self) -> bool {
        true
    }
    fn read_async(self: Arc<Self>, lba: u64, blocks: u32) -> Option<IoFuture<Vec<u8>>> {
        if self.decline.load(Ordering::SeqCst) {
            return None;
        }
        self.async_ios.fetch_add(1, Ordering::SeqCst);
        let mut buf = vec![0u8; blocks as usize * BS as usize];
        let r = self.inner.read(lba, &mut buf).map(|()| buf);
        Some(blockdev::ready(r))
    }
    fn write_async(self: Arc<Self>, lba: u64, data: Bytes, fua: bool) -> Option<IoFuture<()>> {
        if self.decline.load(Ordering::SeqCst) {
            return None;
        }
        self.async_ios.fetch_add(1, Ordering::SeqCst);
        self.fua.lock().push(fua);
        Some(blockdev::ready(self.inner.write(lba, &data, fua)))
    }
}

struct Rig {
    map: LunMap,
    store: Arc<AsyncMem>,
}

fn rig_with(cfg: LuConfig) -> Rig {
    let store = Arc::new(AsyncMem {
        inner: MemStore::new(BS, BLOCKS),
        decline: AtomicBool::new(false),
        sync_ios: AtomicUsize::new(0),
        async_ios: AtomicUsize::new(0),
        fua: parking_lot::Mutex::new(Vec::new()),
    });
    let mut map = LunMap::new(Arc::new(TargetInfo {
        name: "iqn.2026-11.org.switchyard:async".into(),
        port_name: "iqn.2026-11.org.switchyard:async,t,0x0001".into(),
    }));
    map.insert(0, Arc::new(LogicalUnit::new(cfg, store.clone())));
    Rig { map, store }
}

fn rig() -> Rig {
    rig_with(LuConfig {
        serial: "async-0".into(),
        ..LuConfig::default()
    })
}

/// Poll a future whose store completes at once.
fn finish(mut f: ResponseFuture) -> Response {
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(r) => r,
        Poll::Pending => panic!("the store's futures are ready at once"),
    }
}

impl Rig {
    fn start(&self, n: &Nexus, cdb: &[u8], data: &[u8]) -> Started {
        let data = Bytes::copy_from_slice(data);
        self.map.start(
            &Request {
                lun: 0,
                cdb,
                data_out: &data,
                data_in_len: 0,
                nexus: n,
            },
            &data,
        )
    }

    /// Start and finish a command, whichever path it takes; also returns the path.
    fn run(&self, n: &Nexus, cdb: &[u8], data: &[u8]) -> (Response, &'static str) {
        match self.start(n, cdb, data) {
            Started::NotAsync => {
                let r = self.map.execute(&Request {
                    lun: 0,
                    cdb,
                    data_out: data,
                    data_in_len: 0,
                    nexus: n,
                });
                (r, "not async")
            }
            Started::Done(r) => (r, "done"),
            Started::Running(f) => (finish(f), "running"),
            Started::Blocking(f) => (f(), "blocking"),
        }
    }

    fn ready(&self, id: u64) -> Nexus {
        let n = nexus(id);
        let (r, _) = self.run(&n, &TUR, &[]);
        assert_sense(&r, SenseKey::UnitAttention, 0x29, 0x00);
        n
    }
}

fn block(seed: u8) -> Vec<u8> {
    (0..BS as usize).map(|i| (i as u8) ^ seed).collect()
}

#[test]
fn reads_and_writes_run_as_futures_and_see_each_other() {
    let r = rig();
    let n = r.ready(1);
    let data = [block(1), block(2)].concat();
    let (w, path) = r.run(&n, &write10(10, 2, 0), &data);
    assert_eq!((w.status, path), (Status::Good, "running"));
    let (rd, path) = r.run(&n, &read10(10, 2), &[]);
    assert_eq!((rd.status, path), (Status::Good, "running"));
    assert_eq!(rd.data_in, data);
    assert_eq!(r.store.async_ios.load(Ordering::SeqCst), 2);
    assert_eq!(r.store.sync_ios.load(Ordering::SeqCst), 0);
    // The write cache is on by default: no FUA unless asked for.
    let (_, path) = r.run(&n, &write10(12, 1, 0x08), &block(3));
    assert_eq!(path, "running");
    assert_eq!(*r.store.fua.lock(), vec![false, true]);
}

#[test]
fn a_unit_attention_is_reported_once_and_nothing_runs() {
    let r = rig();
    let n = nexus(1);
    match r.start(&n, &read10(0, 1), &[]) {
        Started::Done(resp) => assert_sense(&resp, SenseKey::UnitAttention, 0x29, 0x00),
        other => panic!("{other:?}"),
    }
    let (resp, path) = r.run(&n, &read10(0, 1), &[]);
    assert_eq!((resp.status, path), (Status::Good, "running"));
    assert_eq!(r.store.async_ios.load(Ordering::SeqCst), 1);
}

#[test]
fn bad_ranges_lengths_and_protection_end_before_any_io() {
    let r = rig_with(LuConfig {
        serial: "async-ro".into(),
        read_only: true,
        ..LuConfig::default()
    });
    let n = r.ready(1);
    let (resp, path) = r.run(&n, &read10(BLOCKS as u32, 1), &[]);
    assert_eq!(path, "done");
    assert_sense(&resp, SenseKey::IllegalRequest, 0x21, 0x00);
    let (resp, path) = r.run(&n, &write10(0, 1, 0), &block(1));
    assert_eq!(path, "done");
    assert_sense(&resp, SenseKey::DataProtect, 0x27, 0x00);
    // Zero blocks: GOOD, nothing read.
    let (resp, path) = r.run(&n, &read10(0, 0), &[]);
    assert_eq!(
        (resp.status, path, resp.data_in.len()),
        (Status::Good, "done", 0)
    );
    assert_eq!(r.store.async_ios.load(Ordering::SeqCst), 0);
    assert_eq!(r.store.sync_ios.load(Ordering::SeqCst), 0);
}

#[test]
fn a_reservation_conflict_is_answered_without_io() {
    let r = rig();
    let a = r.ready(1);
    let b = r.ready(2);
    // SPC-2 RESERVE(6) by `a`: `b` may not read.
    let (resp, _) = r.run(&a, &[0x16, 0, 0, 0, 0, 0], &[]);
    assert_eq!(resp.status, Status::Good);
    let (resp, path) = r.run(&b, &read10(0, 1), &[]);
    assert_eq!((resp.status, path), (Status::ReservationConflict, "done"));
    let (resp, path) = r.run(&a, &read10(0, 1), &[]);
    assert_eq!((resp.status, path), (Status::Good, "running"));
}

#[test]
fn an_atomic_command_in_progress_sends_io_to_the_blocking_path() {
    let r = rig();
    let n = r.ready(1);
    let lu = r.map.get(0).expect("lu").clone();
    let atomic = lu.lock_exclusive(100, 1);
    // Admitted, but it may not pass the atomic command: it must wait on a thread.
    let Started::Blocking(finish_it) = r.start(&n, &write10(0, 1, 0), &block(7)) else {
        panic!("expected the blocking path");
    };
    drop(atomic);
    assert_eq!(finish_it().status, Status::Good);
    assert_eq!(r.store.sync_ios.load(Ordering::SeqCst), 1);
    let (resp, path) = r.run(&n, &read10(0, 1), &[]);
    assert_eq!((path, resp.data_in), ("running", block(7)));
}

#[test]
fn a_store_that_declines_gets_the_blocking_path_without_a_second_check() {
    let r = rig();
    let n = nexus(1);
    r.store.decline.store(true, Ordering::SeqCst);
    // The unit attention is consumed by the checks and reported once.
    let (resp, _) = r.run(&n, &TUR, &[]);
    assert_sense(&resp, SenseKey::UnitAttention, 0x29, 0x00);
    let (resp, path) = r.run(&n, &write10(5, 1, 0), &block(9));
    assert_eq!((resp.status, path), (Status::Good, "blocking"));
    let (resp, path) = r.run(&n, &read10(5, 1), &[]);
    assert_eq!((path, resp.data_in), ("blocking", block(9)));
    assert_eq!(r.store.sync_ios.load(Ordering::SeqCst), 2);
    assert_eq!(r.store.async_ios.load(Ordering::SeqCst), 0);
}

#[test]
fn other_commands_and_stores_without_an_async_path_are_not_started() {
    let r = rig();
    let n = r.ready(1);
    for cdb in [TUR.to_vec(), vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]] {
        assert!(matches!(r.start(&n, &cdb, &[]), Started::NotAsync));
    }
    // A LUN that does not exist: the ordinary path answers it.
    let data = Bytes::new();
    let started = r.map.start(
        &Request {
            lun: 3,
            cdb: &read10(0, 1),
            data_out: &data,
            data_in_len: 0,
            nexus: &n,
        },
        &data,
    );
    assert!(matches!(started, Started::NotAsync));
    let mut plain = LunMap::new(Arc::new(TargetInfo {
        name: "iqn.2026-11.org.switchyard:plain".into(),
        port_name: "iqn.2026-11.org.switchyard:plain,t,0x0001".into(),
    }));
    plain.insert(
        0,
        Arc::new(LogicalUnit::new(
            LuConfig::default(),
            Arc::new(MemStore::new(BS, BLOCKS)),
        )),
    );
    let started = plain.start(
        &Request {
            lun: 0,
            cdb: &read10(0, 1),
            data_out: &data,
            data_in_len: 0,
            nexus: &n,
        },
        &data,
    );
    assert!(matches!(started, Started::NotAsync));
}

/// A write running as a future holds off a PREEMPT AND ABORT until the future has
/// completed (`write_drain.rs`): the preempted initiator's write cannot land after it.
#[test]
fn preempt_and_abort_waits_for_a_running_write_future() {
    use crate::pr_tests::{params, prout_cdb, PREEMPT_AND_ABORT, REGISTER_IGNORE, RESERVE, WE};
    let r = Arc::new(rig());
    let (a, b) = (r.ready(1), r.ready(2));
    let prout = |n: &Nexus, sa: u8, pr_type: u8, key: u64, sa_key: u64| {
        r.map.execute(&Request {
            lun: 0,
            cdb: &prout_cdb(sa, pr_type, 24),
            data_out: &params(key, sa_key, 0),
            data_in_len: 0,
            nexus: n,
        })
    };
    assert_eq!(prout(&a, REGISTER_IGNORE, 0, 0, 0xA).status, Status::Good);
    assert_eq!(prout(&b, REGISTER_IGNORE, 0, 0, 0xB).status, Status::Good);
    assert_eq!(prout(&b, RESERVE, WE, 0xB, 0).status, Status::Good);
    let Started::Running(write) = r.start(&b, &write10(4, 1, 0), &[0xB0; BS as usize]) else {
        panic!("the write did not start as a future");
    };
    let done = Arc::new(AtomicBool::new(false));
    let fencer = {
        let (r, a, done) = (r.clone(), a.clone(), done.clone());
        std::thread::spawn(move || {
            let resp = r.map.execute(&Request {
                lun: 0,
                cdb: &prout_cdb(PREEMPT_AND_ABORT, WE, 24),
                data_out: &params(0xA, 0xB, 0),
                data_in_len: 0,
                nexus: &a,
            });
            done.store(true, Ordering::SeqCst);
            resp
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        !done.load(Ordering::SeqCst),
        "PREEMPT AND ABORT completed while the preempted write's future was pending"
    );
    assert_eq!(finish(write).status, Status::Good);
    assert_eq!(fencer.join().unwrap().status, Status::Good);
    // Fenced: the unit attention, then a write is refused before any I/O.
    let _ = r.map.execute(&Request {
        lun: 0,
        cdb: &TUR,
        data_out: &[],
        data_in_len: 0,
        nexus: &b,
    });
    match r.start(&b, &write10(5, 1, 0), &[0xB0; BS as usize]) {
        Started::Done(resp) => assert_eq!(resp.status, Status::ReservationConflict),
        other => panic!("a fenced write: {other:?}"),
    }
}
