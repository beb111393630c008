//! PREEMPT AND ABORT waits for the writes admitted before it (`write_drain.rs`): a
//! write the preempted initiator sent before the fence lands before the PREEMPT AND
//! ABORT completes, never after; its writes after it get RESERVATION CONFLICT.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blockdev::GatedStore;

use crate::pr_tests::{params, prout_cdb, PREEMPT_AND_ABORT, REGISTER_IGNORE, RESERVE, WE};
use crate::tests::{nexus, write10, TUR};
use crate::{LogicalUnit, LuConfig, LunMap, Nexus, Request, Response, Status, TargetInfo};

const BS: u32 = 512;

fn run(map: &LunMap, n: &Nexus, cdb: &[u8], data: &[u8]) -> Response {
    map.execute(&Request {
        lun: 0,
        cdb,
        data_out: data,
        data_in_len: 0,
        nexus: n,
    })
}

fn prout(map: &LunMap, n: &Nexus, sa: u8, pr_type: u8, key: u64, sa_key: u64) -> Response {
    run(map, n, &prout_cdb(sa, pr_type, 24), &params(key, sa_key, 0))
}

/// A and B registered (keys 0xA and 0xB), B holding a Write Exclusive reservation;
/// both nexuses past their power-on unit attention.
fn reserved_by_b(map: &LunMap) -> (Nexus, Nexus) {
    let (a, b) = (nexus(1), nexus(2));
    for n in [&a, &b] {
        let _ = run(map, n, &TUR, &[]);
    }
    for (n, key) in [(&a, 0xA), (&b, 0xB)] {
        assert_eq!(
            prout(map, n, REGISTER_IGNORE, 0, 0, key).status,
            Status::Good
        );
    }
    assert_eq!(prout(map, &b, RESERVE, WE, 0xB, 0).status, Status::Good);
    (a, b)
}

#[test]
fn preempt_and_abort_completes_only_after_the_preempted_write_in_flight() {
    let (store, gate) = GatedStore::new(BS, 1024);
    let store = Arc::new(store);
    let mut map = LunMap::new(Arc::new(TargetInfo {
        name: "iqn.2026-11.org.switchyard:fence".into(),
        port_name: "iqn.2026-11.org.switchyard:fence,t,0x0001".into(),
    }));
    map.insert(
        0,
        Arc::new(LogicalUnit::new(
            LuConfig {
                serial: "fence-0".into(),
                ..LuConfig::default()
            },
            store.clone(),
        )),
    );
    let map = Arc::new(map);
    let (a, b) = reserved_by_b(&map);

    // B, the reservation holder, writes; the write is admitted and waits in the store.
    let writer = {
        let (map, b) = (map.clone(), b.clone());
        std::thread::spawn(move || run(&map, &b, &write10(8, 1, 0), &[0xBB; BS as usize]))
    };
    assert!(gate.arrived(Duration::from_secs(10)));

    // A fences B: PREEMPT AND ABORT of B's key, A now holding Write Exclusive.
    let done = Arc::new(AtomicBool::new(false));
    let fencer = {
        let (map, a, done) = (map.clone(), a.clone(), done.clone());
        std::thread::spawn(move || {
            let r = prout(&map, &a, PREEMPT_AND_ABORT, WE, 0xA, 0xB);
            done.store(true, Ordering::SeqCst);
            r
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !done.load(Ordering::SeqCst),
        "PREEMPT AND ABORT completed while the preempted initiator's write was still in flight"
    );
    gate.open_one();
    assert_eq!(writer.join().unwrap().status, Status::Good);
    assert_eq!(fencer.join().unwrap().status, Status::Good);
    assert!(done.load(Ordering::SeqCst));

    // B's next commands: REGISTRATIONS PREEMPTED, then RESERVATION CONFLICT for a write
    // (it is no longer registered and A holds Write Exclusive). Nothing reaches the
    // store: a write that did would wait at the closed gate and fail this test.
    let ua = run(&map, &b, &TUR, &[]);
    assert_eq!(ua.status, Status::CheckCondition, "{ua:?}");
    let w = run(&map, &b, &write10(9, 1, 0), &[0xBB; BS as usize]);
    assert_eq!(w.status, Status::ReservationConflict, "{w:?}");
    assert!(
        !gate.any_arrived(),
        "a write from the fenced initiator reached the store"
    );
}
