//! APTPL persistence and REGISTER AND MOVE through the loopback fabric: a "restart" is
//! a new [`LogicalUnit`] over the same [`PrStore`].

use std::sync::Arc;

use crate::alua_tests::{harness, lu, nexus_on, Harness};
use crate::pr::transport_id;
use crate::tests::{assert_sense, read10, write10};
use crate::{MemPrStore, Nexus, PrSnapshot, PrStore, PrStoreError, Response, SenseKey, Status};

const REGISTER: u8 = 0;
const RESERVE: u8 = 1;
const REGISTER_IGNORE: u8 = 6;
const REGISTER_AND_MOVE: u8 = 7;
const APTPL: u8 = 0x01;
const EA: u8 = 3;
const WE: u8 = 1;

fn prout_cdb(sa: u8, pr_type: u8, len: u32) -> Vec<u8> {
    let mut c = vec![0x5F, sa, pr_type, 0, 0, 0, 0, 0, 0, 0];
    c[5..9].copy_from_slice(&len.to_be_bytes());
    c
}

fn params(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = flags;
    p
}

fn move_params(key: u64, sa_key: u64, flags: u8, port: u16, to: &str) -> Vec<u8> {
    let tid = transport_id(to);
    let mut p = vec![0u8; 24];
    p[..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[17] = flags;
    p[18..20].copy_from_slice(&port.to_be_bytes());
    p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    p.extend_from_slice(&tid);
    p
}

impl Harness {
    fn prout(&self, n: &Nexus, sa: u8, pr_type: u8, data: &[u8]) -> Response {
        self.run(n, &prout_cdb(sa, pr_type, data.len() as u32), data)
    }

    fn prin(&self, n: &Nexus, sa: u8) -> Vec<u8> {
        let r = self.run(n, &[0x5E, sa, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]);
        assert_eq!(r.status, Status::Good, "{r:?}");
        r.data_in
    }

    /// (PRGENERATION, keys).
    fn keys(&self, n: &Nexus) -> (u32, Vec<u64>) {
        let d = self.prin(n, 0);
        let keys = d[8..]
            .chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect();
        (u32::from_be_bytes(d[..4].try_into().unwrap()), keys)
    }

    fn can_write(&self, n: &Nexus) -> bool {
        let r = self.run(n, &write10(0, 1, 0), &[0; 512]);
        r.status == Status::Good
    }
}

fn persisted(store: &Arc<MemPrStore>) -> Harness {
    harness(vec![lu().with_pr_store(store.clone()).unwrap()])
}

#[test]
fn report_capabilities_with_and_without_a_store() {
    let store = Arc::new(MemPrStore::default());
    let h = persisted(&store);
    let a = h.ready(1, 1);
    let caps = h.prin(&a, 2);
    assert_eq!(&caps[..4], &[0, 8, 0x05, 0xB0], "PTPL_C=1, PTPL_A=0");
    assert_eq!(
        h.prout(&a, REGISTER, 0, &params(0, 0xA, APTPL)).status,
        Status::Good
    );
    assert_eq!(h.prin(&a, 2)[3], 0xB1, "PTPL_A=1 after APTPL=1");
    // Without a store APTPL=1 is refused and PTPL_C=0 (pr_tests covers the refusal).
    let plain = harness(vec![lu()]);
    let b = plain.ready(1, 1);
    assert_eq!(&plain.prin(&b, 2)[2..4], &[0x04, 0xB0]);
}

#[test]
fn aptpl_registrations_and_reservation_survive_a_restart() {
    let store = Arc::new(MemPrStore::default());
    let h = persisted(&store);
    let a = h.ready(1, 1);
    let b = h.ready(2, 2);
    let c = h.ready(3, 1);
    // Nothing is saved while APTPL is 0.
    assert_eq!(
        h.prout(&c, REGISTER_IGNORE, 0, &params(0, 0xC, 0)).status,
        Status::Good
    );
    assert!(store.bytes().is_none());
    assert_eq!(
        h.prout(&a, REGISTER, 0, &params(0, 0xA, APTPL)).status,
        Status::Good
    );
    assert_eq!(
        h.prout(&b, REGISTER, 0, &params(0, 0xB, APTPL)).status,
        Status::Good
    );
    assert_eq!(
        h.prout(&a, RESERVE, EA, &params(0xA, 0, 0)).status,
        Status::Good
    );
    let before = h.keys(&a);
    assert_eq!(before, (3, vec![0xC, 0xA, 0xB]));
    let saved = PrSnapshot::decode(&store.bytes().unwrap()).unwrap();
    assert!(saved.aptpl);
    assert_eq!(saved.reservation.as_ref().unwrap().pr_type, EA);

    // Restart: a new logical unit over the same store, new sessions (new nexus ids)
    // from the same initiator ports.
    let h2 = persisted(&store);
    let a2 = Nexus {
        id: 11,
        ..a.clone()
    };
    let b2 = Nexus {
        id: 12,
        ..b.clone()
    };
    h2.ready(11, 1);
    h2.ready(12, 2);
    assert_eq!(h2.keys(&a2), before);
    let rr = h2.prin(&a2, 1);
    assert_eq!(&rr[8..16], &0xAu64.to_be_bytes(), "a holds it");
    assert_eq!(rr[21], EA);
    // Exclusive Access is enforced: b may neither read nor write, a may.
    assert_eq!(
        h2.run(&b2, &read10(0, 1), &[]).status,
        Status::ReservationConflict
    );
    assert!(!h2.can_write(&b2));
    assert!(h2.can_write(&a2));
    // A different initiator port (other ISID) is not registered.
    let stranger = nexus_on(13, 1);
    h2.ready(13, 1);
    assert_eq!(
        h2.prout(&stranger, RESERVE, EA, &params(0xA, 0, 0)).status,
        Status::ReservationConflict
    );

    // The last register action with APTPL=0 turns persistence off: after the next
    // restart nothing is restored.
    assert_eq!(
        h2.prout(&b2, REGISTER, 0, &params(0xB, 0xBB, 0)).status,
        Status::Good
    );
    assert!(!PrSnapshot::decode(&store.bytes().unwrap()).unwrap().aptpl);
    let h3 = persisted(&store);
    let a3 = h3.ready(21, 1);
    assert_eq!(h3.keys(&a3), (0, vec![]));
}

#[test]
fn file_store_restores_through_a_new_logical_unit() {
    let dir = std::env::temp_dir().join(format!("sy-pr-lu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vol0.img.pr");
    let open = || {
        let store: Arc<dyn PrStore> = Arc::new(crate::FilePrStore::new(&path));
        lu().with_pr_store(store)
    };
    let h = harness(vec![open().unwrap()]);
    let a = h.ready(1, 1);
    assert_eq!(
        h.prout(&a, REGISTER_IGNORE, 0, &params(0, 0x77, APTPL))
            .status,
        Status::Good
    );
    assert_eq!(
        h.prout(&a, RESERVE, WE, &params(0x77, 0, 0)).status,
        Status::Good
    );
    let h2 = harness(vec![open().unwrap()]);
    let a2 = h2.ready(5, 1);
    assert_eq!(h2.keys(&a2), (1, vec![0x77]));
    assert_eq!(h2.prin(&a2, 1)[21], WE);
    // A corrupt file refuses to start the logical unit and says which file.
    let mut bytes = std::fs::read(&path).unwrap();
    let i = bytes.iter().position(|&b| b == b'7').unwrap();
    bytes[i] = b'8';
    std::fs::write(&path, bytes).unwrap();
    let e = open().unwrap_err();
    assert!(matches!(e, PrStoreError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("vol0.img.pr"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupt_memory_store_refuses_to_start() {
    let store = Arc::new(MemPrStore::default());
    store.set_bytes(b"switchyard-pr v1\ngeneration 1\n".to_vec());
    let e = lu().with_pr_store(store.clone()).unwrap_err();
    assert!(e.to_string().contains("corrupt"), "{e}");
}

/// A store whose saves fail (disk full).
#[derive(Debug)]
struct FailingStore;

impl PrStore for FailingStore {
    fn load(&self) -> Result<Option<PrSnapshot>, PrStoreError> {
        Ok(None)
    }
    fn save(&self, _: &PrSnapshot) -> Result<(), PrStoreError> {
        Err(PrStoreError::Io {
            path: "x".into(),
            source: std::io::Error::other("no space"),
        })
    }
}

#[test]
fn a_failed_save_changes_nothing() {
    let h = harness(vec![lu().with_pr_store(Arc::new(FailingStore)).unwrap()]);
    let a = h.ready(1, 1);
    let r = h.prout(&a, REGISTER, 0, &params(0, 5, APTPL));
    assert_sense(&r, SenseKey::HardwareError, 0x44, 0x00);
    assert_eq!(h.keys(&a), (0, vec![]));
    // Without APTPL nothing is saved, so nothing fails.
    assert_eq!(
        h.prout(&a, REGISTER, 0, &params(0, 5, 0)).status,
        Status::Good
    );
}

#[test]
fn register_and_move_through_the_fabric() {
    let store = Arc::new(MemPrStore::default());
    let h = persisted(&store);
    let a = h.ready(1, 1);
    let b = h.ready(2, 2);
    assert_eq!(
        h.prout(&a, REGISTER_IGNORE, 0, &params(0, 0xA, 0)).status,
        Status::Good
    );
    // No reservation yet: INVALID FIELD IN CDB.
    let mv = move_params(0xA, 0xB, 0, 2, &b.initiator);
    assert_sense(
        &h.prout(&a, REGISTER_AND_MOVE, WE, &mv),
        SenseKey::IllegalRequest,
        0x24,
        0,
    );
    assert_eq!(
        h.prout(&a, RESERVE, WE, &params(0xA, 0, 0)).status,
        Status::Good
    );
    // b is not registered: RESERVATION CONFLICT.
    let r = h.prout(
        &b,
        REGISTER_AND_MOVE,
        WE,
        &move_params(0, 1, 0, 1, &a.initiator),
    );
    assert_eq!(r.status, Status::ReservationConflict);
    // a may not move it to itself (same initiator port, other target port).
    let r = h.prout(
        &a,
        REGISTER_AND_MOVE,
        WE,
        &move_params(0xA, 0xB, 0, 2, &a.initiator),
    );
    assert_sense(&r, SenseKey::IllegalRequest, 0x26, 0);
    // Parameter list length that disagrees with the TransportID.
    let mut short = mv.clone();
    short.truncate(mv.len() - 4);
    let r = h.prout(&a, REGISTER_AND_MOVE, WE, &short);
    assert_sense(&r, SenseKey::IllegalRequest, 0x1A, 0);
    let (generation, _) = h.keys(&a);
    // Move to b on port 2 with UNREG and APTPL: b registered with 0xB and holding,
    // a unregistered, the state persisted.
    let mv = move_params(0xA, 0xB, 0x03, 2, &b.initiator);
    assert_eq!(h.prout(&a, REGISTER_AND_MOVE, WE, &mv).status, Status::Good);
    assert_eq!(h.keys(&b), (generation + 1, vec![0xB]));
    let rr = h.prin(&b, 1);
    assert_eq!((&rr[8..16], rr[21]), (&0xBu64.to_be_bytes()[..], WE));
    assert!(h.can_write(&b));
    assert!(!h.can_write(&a));
    // READ FULL STATUS: b holds, on relative port 2, with its TransportID.
    let fs = h.prin(&b, 3);
    assert_eq!(fs[20], 0x01, "R_HOLDER");
    assert_eq!(&fs[26..28], &[0, 2]);
    let saved = PrSnapshot::decode(&store.bytes().unwrap()).unwrap();
    assert!(saved.aptpl);
    assert_eq!(saved.reservation.unwrap().initiator, b.initiator);
}
