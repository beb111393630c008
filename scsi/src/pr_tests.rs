//! Persistent reservation tests through the loopback fabric ([`LunMap::execute`] with
//! several I_T nexuses): every transition of SPC-4 5.13 and the access matrix.

use crate::tests::{assert_sense, fixture, read10, write10, Fixture, TUR};
use crate::{Nexus, Response, Sense, SenseKey, Status};

pub(crate) const WE: u8 = 1;
const EA: u8 = 3;
const WE_RO: u8 = 5;
const EA_RO: u8 = 6;
const WE_AR: u8 = 7;
const EA_AR: u8 = 8;
const ALL_TYPES: [u8; 6] = [WE, EA, WE_RO, EA_RO, WE_AR, EA_AR];

const REGISTER: u8 = 0;
pub(crate) const RESERVE: u8 = 1;
const RELEASE: u8 = 2;
const CLEAR: u8 = 3;
const PREEMPT: u8 = 4;
pub(crate) const PREEMPT_AND_ABORT: u8 = 5;
pub(crate) const REGISTER_IGNORE: u8 = 6;

pub(crate) fn prout_cdb(sa: u8, pr_type: u8, len: u32) -> Vec<u8> {
    let mut c = vec![0x5F, sa, pr_type, 0, 0, 0, 0, 0, 0, 0];
    c[5..9].copy_from_slice(&len.to_be_bytes());
    c
}

pub(crate) fn params(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = flags;
    p
}

fn prin_cdb(sa: u8, alloc: u16) -> Vec<u8> {
    let mut c = vec![0x5E, sa, 0, 0, 0, 0, 0, 0, 0, 0];
    c[7..9].copy_from_slice(&alloc.to_be_bytes());
    c
}

impl Fixture {
    fn prout(&self, n: &Nexus, sa: u8, pr_type: u8, key: u64, sa_key: u64) -> Response {
        self.run(n, &prout_cdb(sa, pr_type, 24), &params(key, sa_key, 0))
    }

    fn ok(&self, n: &Nexus, sa: u8, pr_type: u8, key: u64, sa_key: u64) {
        let r = self.prout(n, sa, pr_type, key, sa_key);
        assert_eq!(
            r.status,
            Status::Good,
            "PROUT {sa:#x} type {pr_type}: {r:?}"
        );
    }

    fn conflict(&self, n: &Nexus, sa: u8, pr_type: u8, key: u64, sa_key: u64) {
        let r = self.prout(n, sa, pr_type, key, sa_key);
        assert_eq!(
            r.status,
            Status::ReservationConflict,
            "PROUT {sa:#x}: {r:?}"
        );
    }

    fn register(&self, n: &Nexus, key: u64) {
        self.ok(n, REGISTER_IGNORE, 0, 0, key);
    }

    fn prin(&self, n: &Nexus, sa: u8) -> Vec<u8> {
        let r = self.run(n, &prin_cdb(sa, 0xFFFF), &[]);
        assert_eq!(r.status, Status::Good, "{r:?}");
        r.data_in
    }

    /// PRGENERATION and the registered keys.
    fn keys(&self, n: &Nexus) -> (u32, Vec<u64>) {
        let d = self.prin(n, 0);
        let len = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize;
        assert_eq!(len, d.len() - 8);
        let keys = d[8..]
            .chunks(8)
            .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
            .collect();
        (u32::from_be_bytes(d[..4].try_into().unwrap()), keys)
    }

    /// The reservation's key and type.
    fn reservation(&self, n: &Nexus) -> Option<(u64, u8)> {
        let d = self.prin(n, 1);
        match u32::from_be_bytes(d[4..8].try_into().unwrap()) {
            0 => None,
            16 => Some((u64::from_be_bytes(d[8..16].try_into().unwrap()), d[21])),
            l => panic!("READ RESERVATION additional length {l}"),
        }
    }

    fn status(&self, n: &Nexus, cdb: &[u8]) -> Status {
        let data = if cdb[0] == 0x2A {
            vec![0x5A; 512]
        } else {
            Vec::new()
        };
        self.run(n, cdb, &data).status
    }

    fn can_read(&self, n: &Nexus) -> bool {
        self.status(n, &read10(1, 1)) == Status::Good
    }

    fn can_write(&self, n: &Nexus) -> bool {
        self.status(n, &write10(1, 1, 0)) == Status::Good
    }

    /// The next command on `n` reports this unit attention, then runs.
    fn expect_ua(&self, n: &Nexus, sense: Sense) {
        assert_eq!(self.run(n, &TUR, &[]).sense, Some(sense));
    }

    fn expect_no_ua(&self, n: &Nexus) {
        let r = self.run(n, &TUR, &[]);
        assert_eq!(r.sense, None, "{r:?}");
    }
}

#[test]
fn register_change_and_unregister() {
    let f = fixture();
    let a = f.ready(1);
    let b = f.ready(2);
    assert_eq!(f.keys(&a), (0, vec![]));
    // Unregistered: a non-zero RESERVATION KEY conflicts; SA key 0 is a GOOD no-op.
    f.conflict(&a, REGISTER, 0, 5, 0x11);
    f.ok(&a, REGISTER, 0, 0, 0);
    assert_eq!(f.keys(&a), (0, vec![]));
    f.ok(&a, REGISTER, 0, 0, 0x11);
    f.register(&b, 0x22);
    assert_eq!(f.keys(&b), (2, vec![0x11, 0x22]));
    // Registered: the key must match (libiscsi's re-register-fails check).
    f.conflict(&a, REGISTER, 0, 0, 0x12);
    f.conflict(&a, REGISTER, 0, 0x22, 0x12);
    f.ok(&a, REGISTER, 0, 0x11, 0x12);
    // REGISTER AND IGNORE EXISTING KEY ignores the RESERVATION KEY.
    f.ok(&a, REGISTER_IGNORE, 0, 0x999, 0x13);
    assert_eq!(f.keys(&a), (4, vec![0x13, 0x22]));
    // Unregister.
    f.ok(&a, REGISTER, 0, 0x13, 0);
    assert_eq!(f.keys(&a), (5, vec![0x22]));
    f.ok(&b, REGISTER_IGNORE, 0, 0, 0);
    assert_eq!(f.keys(&a), (6, vec![]));
    f.expect_no_ua(&a);
    f.expect_no_ua(&b);
}

#[test]
fn registrations_survive_nexus_loss_and_lun_reset() {
    let f = fixture();
    let a = f.ready(1);
    let b = f.ready(2);
    f.register(&a, 0xA);
    f.ok(&a, RESERVE, EA, 0xA, 0);
    f.map.nexus_gone(&a);
    f.map.lun_reset(0, &b).unwrap();
    f.expect_ua(&b, Sense::bus_device_reset());
    f.expect_no_ua(&b);
    assert_eq!(f.reservation(&b), Some((0xA, EA)));
    // The same initiator port logs in again: still the holder.
    let a2 = f.ready(1);
    assert!(f.can_write(&a2));
    assert!(!f.can_read(&b));
}

#[test]
fn reserve_rules() {
    let f = fixture();
    let a = f.ready(1);
    let b = f.ready(2);
    let c = f.ready(3);
    f.register(&a, 0xA);
    f.register(&b, 0xB);
    let (generation, _) = f.keys(&a);
    // Not registered, or the wrong key: conflict.
    f.conflict(&c, RESERVE, WE, 0, 0);
    f.conflict(&a, RESERVE, WE, 0xB, 0);
    // Invalid type or scope: INVALID FIELD IN CDB.
    for bad in [0u8, 2, 4, 9, 0x10 | WE] {
        let r = f.prout(&a, RESERVE, bad, 0xA, 0);
        assert_sense(&r, SenseKey::IllegalRequest, 0x24, 0x00);
    }
    f.ok(&a, RESERVE, WE, 0xA, 0);
    assert_eq!(f.reservation(&c), Some((0xA, WE)));
    // The holder again with the same type: GOOD; another type: conflict.
    f.ok(&a, RESERVE, WE, 0xA, 0);
    f.conflict(&a, RESERVE, EA, 0xA, 0);
    // Another registrant: conflict, whatever the type.
    f.conflict(&b, RESERVE, WE, 0xB, 0);
    f.conflict(&b, RESERVE, EA, 0xB, 0);
    assert_eq!(f.reservation(&c), Some((0xA, WE)));
    // RESERVE does not change PRGENERATION.
    assert_eq!(f.keys(&a).0, generation);
}

#[test]
fn every_type_reserves_reports_and_releases() {
    // libiscsi prout_reserve_simple / prin_report_caps_simple.
    let f = fixture();
    let a = f.ready(1);
    f.register(&a, 0xA);
    for t in ALL_TYPES {
        f.ok(&a, RESERVE, t, 0xA, 0);
        let key = if t >= WE_AR { 0 } else { 0xA };
        assert_eq!(f.reservation(&a), Some((key, t)), "type {t}");
        f.ok(&a, RELEASE, t, 0xA, 0);
        assert_eq!(f.reservation(&a), None);
    }
}

#[test]
fn release_rules() {
    let f = fixture();
    let a = f.ready(1);
    let b = f.ready(2);
    let c = f.ready(3);
    f.register(&a, 0xA);
    f.register(&b, 0xB);
    // Nothing reserved: GOOD.
    f.ok(&a, RELEASE, WE, 0xA, 0);
    f.ok(&a, RESERVE, WE, 0xA, 0);
    // A registered non-holder: GOOD, nothing happens.
    f.ok(&b, RELEASE, WE, 0xB, 0);
    assert_eq!(f.reservation(&a), Some((0xA, WE)));
    // Not registered, or the wrong key: conflict.
    f.conflict(&c, RELEASE, WE, 0, 0);
    f.conflict(&a, RELEASE, WE, 0xB, 0);
    // The holder with the wrong type: INVALID RELEASE OF PERSISTENT RESERVATION.
    let r = f.prout(&a, RELEASE, EA, 0xA, 0);
    assert_sense(&r, SenseKey::IllegalRequest, 0x26, 0x04);
    assert_eq!(f.reservation(&a), Some((0xA, WE)));
    // Released; no unit attention for Write Exclusive.
    f.ok(&a, RELEASE, WE, 0xA, 0);
    assert_eq!(f.reservation(&a), None);
    f.expect_no_ua(&b);
    // Registrants-only and all-registrants: RESERVATIONS RELEASED to the other
    // registrants, not to the releasing nexus or to non-registrants.
    for t in [WE_RO, EA_RO, WE_AR, EA_AR] {
        f.ok(&a, RESERVE, t, 0xA, 0);
        f.ok(&a, RELEASE, t, 0xA, 0);
        f.expect_ua(&b, Sense::reservations_released());
        f.expect_no_ua(&b);
        f.expect_no_ua(&a);
        f.expect_no_ua(&c);
    }
    // An all-registrants reservation may be released by any registrant.
    f.ok(&a, RESERVE, EA_AR, 0xA, 0);
    f.ok(&b, RELEASE, EA_AR, 0xB, 0);
    f.expect_ua(&a, Sense::reservations_released());
    assert_eq!(f.reservation(&a), None);
}

/// Expected access (read, write) for a registered non-holder and for a non-registrant,
/// per SPC-4 5.13.1 / SBC-3 table 13 (libiscsi prout_reserve_access).
fn expected_access(t: u8) -> ((bool, bool), (bool, bool)) {
    match t {
        WE => ((true, false), (true, false)),
        EA => ((false, false), (false, false)),
        WE_RO | WE_AR => ((true, true), (true, false)),
        EA_RO | EA_AR => ((true, true), (false, false)),
        _ => unreachable!(),
    }
}

#[test]
fn access_matrix_for_every_type() {
    for t in ALL_TYPES {
        let f = fixture();
        let holder = f.ready(1);
        let registrant = f.ready(2);
        let other = f.ready(3);
        f.register(&holder, 0xA);
        f.register(&registrant, 0xB);
        f.ok(&holder, RESERVE, t, 0xA, 0);
        let ((reg_r, reg_w), (un_r, un_w)) = expected_access(t);
        assert!(f.can_read(&holder) && f.can_write(&holder), "type {t}");
        assert_eq!(
            (f.can_read(&registrant), f.can_write(&registrant)),
            (reg_r, reg_w),
            "registrant, type {t}"
        );
        assert_eq!(
            (f.can_read(&other), f.can_write(&other)),
            (un_r, un_w),
            "non-registrant, type {t}"
        );
        // The other commands follow the same classes: MODE SENSE and REPORT SUPPORTED
        // OPERATION CODES as reads, MODE SELECT, SYNCHRONIZE CACHE and START STOP UNIT
        // (START=0) as writes; TEST UNIT READY, INQUIRY, READ CAPACITY, REPORT LUNS,
        // START STOP UNIT (START=1) and PERSISTENT RESERVE IN always run.
        let mode_sense = [0x1A, 0, 0x3F, 0, 255, 0];
        let rsoc = [0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0];
        let sync = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let stop = [0x1B, 0, 0, 0, 0x00, 0];
        let start = [0x1B, 0, 0, 0, 0x01, 0];
        let mode_select = [0x15, 0x10, 0, 0, 0, 0];
        for (n, (can_r, can_w)) in [(&registrant, (reg_r, reg_w)), (&other, (un_r, un_w))] {
            let want = |ok: bool| {
                if ok {
                    Status::Good
                } else {
                    Status::ReservationConflict
                }
            };
            assert_eq!(f.status(n, &mode_sense), want(can_r), "type {t}");
            assert_eq!(f.status(n, &rsoc), want(can_r), "type {t}");
            assert_eq!(f.status(n, &mode_select), want(can_w), "type {t}");
            assert_eq!(f.status(n, &sync), want(can_w), "type {t}");
            assert_eq!(f.status(n, &stop), want(can_w), "type {t}");
            for cdb in [
                &TUR[..],
                &[0x12, 0, 0, 0, 36, 0],
                &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0],
                &start,
                &prin_cdb(0, 64),
                &prin_cdb(2, 64),
            ] {
                assert_eq!(f.status(n, cdb), Status::Good, "type {t}, {cdb:02x?}");
            }
        }
        // Unregistered, the registrant loses its registrant rights.
        f.ok(&registrant, REGISTER, 0, 0xB, 0);
        assert_eq!(
            (f.can_read(&registrant), f.can_write(&registrant)),
            (un_r, un_w),
            "unregistered, type {t}"
        );
    }
}

#[test]
fn holder_unregistering_releases_unless_all_registrants() {
    // libiscsi prout_reserve_ownership.
    for t in ALL_TYPES {
        let f = fixture();
        let a = f.ready(1);
        let b = f.ready(2);
        f.register(&a, 0xA);
        f.register(&b, 0xB);
        f.ok(&a, RESERVE, t, 0xA, 0);
        f.ok(&a, REGISTER, 0, 0xA, 0);
        if t >= WE_AR {
            assert_eq!(f.reservation(&a), Some((0, t)), "type {t}");
            f.expect_no_ua(&b);
            // The last registrant going releases it.
            f.ok(&b, REGISTER, 0, 0xB, 0);
            assert_eq!(f.reservation(&a), None);
        } else {
            assert_eq!(f.reservation(&a), None, "type {t}");
            if t == WE_RO || t == EA_RO {
                f.expect_ua(&b, Sense::reservations_released());
            }
            f.expect_no_ua(&b);
        }
        f.expect_no_ua(&a);
    }
}

#[test]
fn preempt_removes_registrations() {
    // libiscsi prout_preempt_rm_reg: no reservation, preempt the other key.
    let f = fixture();
    let a = f.ready(1);
    let b = f.ready(2);
    let c = f.ready(3);
    f.register(&a, 0xA);
    f.register(&b, 0xB);
    let (generation, _) = f.keys(&a);
    // Not registered or wrong key: conflict. Key 0 with no reservation: invalid.
    f.conflict(&c, PREEMPT, EA, 0, 0xA);
    f.conflict(&b, PREEMPT, EA, 0xA, 0xA);
    let r = f.prout(&b, PREEMPT, EA, 0xB, 0);
    assert_sense(&r, SenseKey::IllegalRequest, 0x26, 0x00);
    // A key nobody holds: conflict.
    f.conflict(&b, PREEMPT, EA, 0xB, 0x77);
    f.ok(&b, PREEMPT, EA, 0xB, 0xA);
    f.expect_ua(&a, Sense::registrations_preempted());
    f.expect_no_ua(&b);
    assert_eq!(f.keys(&a), (generation + 1, vec![0xB]));
    assert_eq!(f.reservation(&a), None, "no reservation was made");
    // The preempted nexus is no longer registered.
    f.conflict(&a, RESERVE, WE, 0xA, 0);
}

#[test]
fn preempt_takes_over_the_reservation() {
    for sa in [PREEMPT, PREEMPT_AND_ABORT] {
        let f = fixture();
        let a = f.ready(1);
        let b = f.ready(2);
        let c = f.ready(3);
        f.register(&a, 0xA);
        f.register(&b, 0xB);
        f.register(&c, 0xC);
        f.ok(&a, RESERVE, WE_RO, 0xA, 0);
        let (generation, _) = f.keys(&a);
        // Preempting the holder's key with a new type: the holder's registration
        // goes, b holds an EA_RO reservation, c is told the old one was released.
        f.ok(&b, sa, EA_RO, 0xB, 0xA);
        assert_eq!(f.reservation(&b), Some((0xB, EA_RO)));
        assert_eq!(f.keys(&b), (generation + 1, vec![0xB, 0xC]));
        f.expect_ua(&a, Sense::registrations_preempted());
        f.expect_ua(&c, Sense::reservations_released());
        f.expect_no_ua(&c);
        f.expect_no_ua(&b);
        assert!(!f.can_read(&a));
        assert!(f.can_write(&c), "registrants-only: registrants write");
        // Preempting a non-holder's key leaves the reservation alone.
        f.ok(&b, sa, EA_RO, 0xB, 0xC);
        assert_eq!(f.reservation(&b), Some((0xB, EA_RO)));
        f.expect_ua(&c, Sense::registrations_preempted());
        assert!(!f.can_write(&c));
    }
}

#[test]
fn preempt_all_registrants_with_key_zero() {
    let f = fixture();
    let a = f.ready(1);
    let b = f.ready(2);
    let c = f.ready(3);
    f.register(&a, 0xA);
    f.register(&b, 0xB);
    f.register(&c, 0xC);
    f.ok(&a, RESERVE, WE_AR, 0xA, 0);
    f.ok(&b, PREEMPT, EA, 0xB, 0);
    assert_eq!(f.reservation(&b), Some((0xB, EA)));
    assert_eq!(f.keys(&b).1, vec![0xB]);
    f.expect_ua(&a, Sense::registrations_preempted());
    f.expect_ua(&c, Sense::registrations_preempted());
    f.expect_no_ua(&b);
}

#[test]
fn clear_removes_everything() {
    // libiscsi prout_clear_simple.
    let f = fixture();
    let a = f.ready(1);
    let b = f.ready(2);
    let c = f.ready(3);
    f.register(&a, 0xA);
    f.register(&b, 0xB);
    f.ok(&a, RESERVE, EA, 0xA, 0);
    let (generation, _) = f.keys(&a);
    f.conflict(&c, CLEAR, 0, 0, 0);
    f.conflict(&b, CLEAR, 0, 0xA, 0);
    // A registered non-holder may clear.
    f.ok(&b, CLEAR, 0, 0xB, 0);
    f.expect_ua(&a, Sense::reservations_preempted());
    assert_eq!(f.keys(&a), (generation + 1, vec![]));
    assert_eq!(f.reservation(&a), None);
    f.expect_no_ua(&b);
    f.expect_no_ua(&c);
    assert!(f.can_write(&c));
}

#[test]
fn spc2_reserve_and_release_beside_persistent_reservations() {
    let f = fixture();
    let a = f.ready(1);
    let b = f.ready(2);
    let reserve6 = [0x16, 0, 0, 0, 0, 0];
    let reserve10 = [0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let release6 = [0x17, 0, 0, 0, 0, 0];
    // A registration alone makes RESERVE conflict, from any nexus (SPC-4 5.13.3).
    f.register(&a, 0xA);
    for n in [&a, &b] {
        assert_eq!(f.status(n, &reserve6), Status::ReservationConflict);
        assert_eq!(f.status(n, &reserve10), Status::ReservationConflict);
        assert_eq!(f.status(n, &release6), Status::Good);
    }
    f.ok(&a, RESERVE, WE, 0xA, 0);
    assert_eq!(f.status(&b, &release6), Status::Good);
    assert_eq!(f.reservation(&b), Some((0xA, WE)), "RELEASE(6) did nothing");
    f.ok(&a, CLEAR, 0, 0xA, 0);
    // An SPC-2 reservation makes PERSISTENT RESERVE IN/OUT conflict, even for its
    // holder.
    assert_eq!(f.status(&a, &reserve6), Status::Good);
    for n in [&a, &b] {
        assert_eq!(f.status(n, &prin_cdb(0, 64)), Status::ReservationConflict);
        assert_eq!(
            f.prout(n, REGISTER_IGNORE, 0, 0, 5).status,
            Status::ReservationConflict
        );
    }
    assert_eq!(f.status(&a, &release6), Status::Good);
    f.register(&b, 0xB);
    // A LUN reset clears SPC-2 reservations only.
    f.ok(&b, RESERVE, EA, 0xB, 0);
    f.map.lun_reset(0, &b).unwrap();
    f.expect_ua(&a, Sense::bus_device_reset());
    assert_eq!(f.reservation(&a), Some((0xB, EA)));
    assert!(!f.can_read(&a));
}

#[test]
fn parameter_list_errors() {
    let f = fixture();
    let a = f.ready(1);
    for len in [0u32, 8, 23, 25, 48] {
        let r = f.run(&a, &prout_cdb(REGISTER_IGNORE, 0, len), &[0; 48]);
        assert_sense(&r, SenseKey::IllegalRequest, 0x1A, 0x00);
        assert_eq!(r.data_out_len, len);
    }
    // Less data than the parameter list length says.
    let r = f.run(&a, &prout_cdb(REGISTER_IGNORE, 0, 24), &[0; 12]);
    assert_sense(&r, SenseKey::IllegalRequest, 0x1A, 0x00);
    // SPEC_I_PT is not supported; APTPL cannot be honoured (nothing persists).
    for (flags, bit) in [(0x08, 3), (0x01, 0)] {
        let r = f.run(&a, &prout_cdb(REGISTER, 0, 24), &params(0, 5, flags));
        assert_sense(&r, SenseKey::IllegalRequest, 0x26, 0x00);
        let fp = r.sense.unwrap().field.unwrap();
        assert_eq!((fp.cdb, fp.byte, fp.bit), (false, 20, Some(bit)));
    }
    assert_eq!(f.keys(&a).1, Vec::<u64>::new());
    // ALL_TG_PT is accepted and reported.
    let r = f.run(&a, &prout_cdb(REGISTER, 0, 24), &params(0, 5, 0x04));
    assert_eq!(r.status, Status::Good);
    assert_eq!(f.prin(&a, 3)[20] & 0x02, 0x02);
    // REGISTER AND MOVE needs a RELATIVE TARGET PORT IDENTIFIER and a TransportID
    // (pr_persist_tests has the rest).
    let r = f.run(&a, &prout_cdb(7, 0, 24), &params(5, 6, 0));
    assert_sense(&r, SenseKey::IllegalRequest, 0x26, 0x00);
}

#[test]
fn persistent_reserve_in_data() {
    let f = fixture();
    let a = f.ready(1);
    let b = f.ready(2);
    // Service actions 4..=1Fh are invalid (libiscsi prin_serviceaction_range).
    for sa in 4..0x20 {
        let r = f.run(&a, &prin_cdb(sa, 64), &[]);
        assert_sense(&r, SenseKey::IllegalRequest, 0x24, 0x00);
    }
    // REPORT CAPABILITIES.
    assert_eq!(
        f.prin(&a, 2),
        vec![0, 8, 0x04, 0xB0, 0xEA, 0x01, 0, 0],
        "ATP_C, TMV, ALLOW COMMANDS 011b, all six types"
    );
    f.register(&a, 0x0102_0304_0506_0708);
    f.register(&b, 0xB);
    f.ok(&b, RESERVE, WE_RO, 0xB, 0);
    // READ KEYS truncated to 8 bytes keeps the full ADDITIONAL LENGTH.
    let r = f.run(&a, &prin_cdb(0, 8), &[]);
    assert_eq!(r.data_in, vec![0, 0, 0, 2, 0, 0, 0, 16]);
    let r = f.run(&a, &prin_cdb(0, 12), &[]);
    assert_eq!(&r.data_in[8..], &[1, 2, 3, 4]);
    // READ RESERVATION.
    let d = f.prin(&a, 1);
    assert_eq!(
        d,
        vec![0, 0, 0, 2, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0xB, 0, 0, 0, 0, 0, WE_RO, 0, 0]
    );
    // READ FULL STATUS: one descriptor per registration with an iSCSI TransportID.
    let d = f.prin(&a, 3);
    assert_eq!(
        u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize,
        d.len() - 8
    );
    let mut at = 8;
    let mut seen = Vec::new();
    while at < d.len() {
        let desc = &d[at..];
        let key = u64::from_be_bytes(desc[..8].try_into().unwrap());
        let holder = desc[12] & 0x01 != 0;
        let scope_type = desc[13];
        let rel_port = u16::from_be_bytes([desc[18], desc[19]]);
        let tid_len = u32::from_be_bytes(desc[20..24].try_into().unwrap()) as usize;
        let tid = &desc[24..24 + tid_len];
        assert_eq!(tid[0], 0x45, "format 01b, iSCSI");
        assert_eq!(
            usize::from(u16::from_be_bytes([tid[2], tid[3]])),
            tid_len - 4
        );
        let name: Vec<u8> = tid[4..].iter().copied().take_while(|&c| c != 0).collect();
        seen.push((
            key,
            holder,
            scope_type,
            rel_port,
            String::from_utf8(name).unwrap(),
        ));
        at += 24 + tid_len;
    }
    assert_eq!(
        seen,
        vec![
            (
                0x0102_0304_0506_0708,
                false,
                0,
                1,
                "iqn.2007-10.test:init1,i,0x1".to_string()
            ),
            (
                0xB,
                true,
                WE_RO,
                1,
                "iqn.2007-10.test:init2,i,0x1".to_string()
            ),
        ]
    );
    // Truncation keeps the ADDITIONAL LENGTH.
    let r = f.run(&a, &prin_cdb(3, 10), &[]);
    assert_eq!(r.data_in.len(), 10);
    assert_eq!(&r.data_in[4..8], &d[4..8]);
}

#[test]
fn report_supported_operation_codes_lists_persistent_reserve() {
    let f = fixture();
    let a = f.ready(1);
    // One command, service action 1 (RESERVE) of PERSISTENT RESERVE OUT.
    let r = f.run(&a, &[0xA3, 0x0C, 0x02, 0x5F, 0, 1, 0, 0, 0, 64, 0, 0], &[]);
    assert_eq!(r.status, Status::Good);
    assert_eq!(
        r.data_in,
        vec![0, 3, 0, 10, 0x5F, 1, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0]
    );
    let r = f.run(&a, &[0xA3, 0x0C, 0x02, 0x5E, 0, 3, 0, 0, 0, 64, 0, 0], &[]);
    assert_eq!(
        r.data_in,
        vec![0, 3, 0, 10, 0x5E, 3, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0]
    );
    // REGISTER AND MOVE is implemented; PRIN service action 4 is not.
    let r = f.run(&a, &[0xA3, 0x0C, 0x02, 0x5F, 0, 7, 0, 0, 0, 64, 0, 0], &[]);
    assert_eq!(r.data_in[..6], [0, 3, 0, 10, 0x5F, 7]);
    let r = f.run(&a, &[0xA3, 0x0C, 0x02, 0x5E, 0, 4, 0, 0, 0, 64, 0, 0], &[]);
    assert_eq!(r.data_in, vec![0, 1, 0, 0]);
}
