//! ALUA through the loopback fabric ([`LunMap::execute`]): INQUIRY TPGS, REPORT TARGET
//! PORT GROUPS, access per state, ASYMMETRIC ACCESS STATE CHANGED, VPD 83h.

use std::sync::Arc;

use blockdev::MemStore;

use crate::tests::{assert_sense, read10, TUR};
use crate::{
    AluaState, LogicalUnit, LuConfig, LunMap, Nexus, PortGroup, PortGroups, Request, Response,
    Sense, SenseKey, Status, TargetInfo, TargetPortGroups,
};

/// A LUN map over logical units built by the caller.
pub(crate) struct Harness {
    pub(crate) map: LunMap,
}

pub(crate) fn lu() -> LogicalUnit {
    LogicalUnit::new(
        LuConfig {
            serial: "alua-0".into(),
            ..LuConfig::default()
        },
        Arc::new(MemStore::new(512, 1024)),
    )
}

pub(crate) fn harness(luns: Vec<LogicalUnit>) -> Harness {
    let mut map = LunMap::new(Arc::new(TargetInfo {
        name: "iqn.2026-11.org.switchyard:alua".into(),
        port_name: "iqn.2026-11.org.switchyard:alua,t,0x0001".into(),
    }));
    for (i, lu) in luns.into_iter().enumerate() {
        map.insert(i as u64, Arc::new(lu));
    }
    Harness { map }
}

/// A nexus on relative target port `port`; `port_group` as the iSCSI layer sets it
/// today (always 1), which the model must override.
pub(crate) fn nexus_on(id: u64, port: u16) -> Nexus {
    Nexus {
        id,
        initiator: format!("iqn.2007-10.test:init{id},i,0x00000000000{id}"),
        relative_port: port,
        port_group: 1,
    }
}

impl Harness {
    pub(crate) fn run_lun(&self, lun: u64, n: &Nexus, cdb: &[u8], data_out: &[u8]) -> Response {
        self.map.execute(&Request {
            lun,
            cdb,
            data_out,
            data_in_len: 0,
            nexus: n,
        })
    }

    pub(crate) fn run(&self, n: &Nexus, cdb: &[u8], data_out: &[u8]) -> Response {
        self.run_lun(0, n, cdb, data_out)
    }

    /// A nexus that has consumed its power-on unit attention on every LUN.
    pub(crate) fn ready(&self, id: u64, port: u16) -> Nexus {
        let n = nexus_on(id, port);
        for lun in self.map.luns().collect::<Vec<_>>() {
            // REQUEST SENSE is admitted in every ALUA state and takes the UA.
            let r = self.run_lun(lun, &n, &[0x03, 0, 0, 0, 252, 0], &[]);
            assert_eq!(r.status, Status::Good);
            assert_eq!(r.data_in[12], 0x29, "power-on UA consumed");
        }
        n
    }
}

fn rtpg(extended: bool, alloc: u32) -> Vec<u8> {
    let mut c = vec![0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    if extended {
        c[1] |= 0x20;
    }
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

fn two_groups() -> Arc<PortGroups> {
    PortGroups::new(TargetPortGroups {
        groups: vec![
            PortGroup {
                id: 10,
                state: AluaState::ActiveOptimized,
                ports: vec![1, 2],
                preferred: true,
            },
            PortGroup {
                id: 20,
                state: AluaState::Standby,
                ports: vec![3, 4],
                preferred: false,
            },
        ],
        implicit_transition_secs: 15,
    })
    .unwrap()
}

#[test]
fn inquiry_reports_implicit_alua() {
    let h = harness(vec![lu()]);
    let n = h.ready(1, 1);
    let r = h.run(&n, &[0x12, 0, 0, 0, 96, 0], &[]);
    assert_eq!(r.data_in[5] & 0x30, 0x10, "TPGS 01b");
    // A LUN that does not exist does not claim ALUA support.
    let r = h.run_lun(5, &n, &[0x12, 0, 0, 0, 96, 0], &[]);
    assert_eq!(r.data_in[5] & 0x30, 0);
}

#[test]
fn default_model_is_one_active_optimized_group_with_every_port() {
    let h = harness(vec![lu()]);
    let a = h.ready(1, 1);
    let b = h.ready(2, 7);
    let r = h.run(&a, &rtpg(false, 1024), &[]);
    assert_eq!(r.status, Status::Good);
    assert_eq!(
        r.data_in,
        vec![0, 0, 0, 16, 0x00, 0xCF, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 7]
    );
    // Every port is Active/Optimized: I/O works on both.
    assert_eq!(h.run(&b, &read10(0, 1), &[]).status, Status::Good);
}

#[test]
fn rtpg_formats_truncation_and_invalid_format() {
    let h = harness(vec![lu().with_port_groups(two_groups())]);
    let n = h.ready(1, 1);
    let full = h.run(&n, &rtpg(false, 1024), &[]).data_in;
    assert_eq!(full.len(), 4 + 8 + 8 + 8 + 8);
    assert_eq!(u32::from_be_bytes(full[..4].try_into().unwrap()), 32);
    assert_eq!(&full[4..12], &[0x80, 0xCF, 0, 10, 0, 0, 0, 2]);
    assert_eq!(&full[12..20], &[0, 0, 0, 1, 0, 0, 0, 2]);
    assert_eq!(&full[20..28], &[0x02, 0xCF, 0, 20, 0, 0, 0, 2]);
    assert_eq!(&full[28..36], &[0, 0, 0, 3, 0, 0, 0, 4]);
    // Extended header: FORMAT TYPE 001b, IMPLICIT TRANSITION TIME, same descriptors.
    let ext = h.run(&n, &rtpg(true, 1024), &[]).data_in;
    assert_eq!(&ext[..8], &[0, 0, 0, 36, 0x10, 15, 0, 0]);
    assert_eq!(&ext[8..], &full[4..]);
    // Truncation keeps RETURN DATA LENGTH (libiscsi rtpg_alloc_length reads 4 bytes
    // first, then cuts descriptors in half).
    for alloc in [0u32, 4, 8, 13, 35] {
        let d = h.run(&n, &rtpg(false, alloc), &[]).data_in;
        assert_eq!(d, full[..alloc as usize].to_vec(), "alloc {alloc}");
    }
    // PARAMETER DATA FORMAT 010b..111b: INVALID FIELD IN CDB, byte 1 bit 7.
    let mut c = rtpg(false, 64);
    c[1] = 0x40 | 0x0A;
    let r = h.run(&n, &c, &[]);
    assert_sense(&r, SenseKey::IllegalRequest, 0x24, 0x00);
    let fp = r.sense.unwrap().field.unwrap();
    assert_eq!((fp.cdb, fp.byte, fp.bit), (true, 1, Some(7)));
    // SET TARGET PORT GROUPS (explicit ALUA) is not implemented.
    let r = h.run(&n, &[0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0], &[0; 4]);
    assert_sense(&r, SenseKey::IllegalRequest, 0x20, 0x00);
}

#[test]
fn standby_port_admits_only_the_standby_commands() {
    let h = harness(vec![lu().with_port_groups(two_groups())]);
    let active = h.ready(1, 2);
    let standby = h.ready(2, 3);
    for cdb in [TUR.to_vec(), read10(0, 1)] {
        let r = h.run(&standby, &cdb, &[]);
        assert_sense(&r, SenseKey::NotReady, 0x04, 0x0B);
    }
    let mut write = read10(0, 1);
    write[0] = 0x2A;
    assert_sense(
        &h.run(&standby, &write, &[0; 512]),
        SenseKey::NotReady,
        0x04,
        0x0B,
    );
    // Admitted: INQUIRY, REPORT LUNS, RTPG, READ CAPACITY, MODE SENSE, PR IN.
    for cdb in [
        vec![0x12, 0, 0, 0, 96, 0],
        vec![0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        rtpg(false, 64),
        vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        vec![0x1A, 0, 0x3F, 0, 255, 0],
        vec![0x5E, 0, 0, 0, 0, 0, 0, 0, 64, 0],
    ] {
        let r = h.run(&standby, &cdb, &[]);
        assert_eq!(r.status, Status::Good, "{cdb:02x?}: {r:?}");
    }
    // The Active/Optimized port of the same logical unit is unaffected.
    assert_eq!(h.run(&active, &read10(0, 1), &[]).status, Status::Good);
}

#[test]
fn state_change_raises_ua_for_the_ports_of_the_changed_group() {
    let groups = two_groups();
    // Two LUs of one target share the model.
    let h = harness(vec![
        lu().with_port_groups(groups.clone()),
        lu().with_port_groups(groups.clone()),
    ]);
    let a = h.ready(1, 1);
    let b = h.ready(2, 4);
    groups.set_state(20, AluaState::ActiveNonOptimized).unwrap();
    for lun in [0, 1] {
        // b (group 20) sees the unit attention once per LU, then the command runs.
        let r = h.run_lun(lun, &b, &TUR, &[]);
        assert_eq!(
            r.sense,
            Some(Sense::new(SenseKey::UnitAttention, 0x2A, 0x06))
        );
        assert_eq!(h.run_lun(lun, &b, &TUR, &[]).status, Status::Good);
        // a (group 10) saw no change.
        assert_eq!(h.run_lun(lun, &a, &TUR, &[]).status, Status::Good);
    }
    // RTPG shows the new state and STATUS CODE 02h (implicit).
    let d = h.run(&b, &rtpg(false, 64), &[]).data_in;
    assert_eq!((d[20], d[25]), (0x01, 0x02));
    // Setting the same state again is no change.
    groups.set_state(20, AluaState::ActiveNonOptimized).unwrap();
    assert_eq!(h.run(&b, &TUR, &[]).status, Status::Good);
    // Group 10 goes Transitioning, then Unavailable: a gets the UA first (unit
    // attentions come before the access check), then NOT READY.
    groups.set_state(10, AluaState::Transitioning).unwrap();
    let r = h.run(&a, &read10(0, 1), &[]);
    assert_sense(&r, SenseKey::UnitAttention, 0x2A, 0x06);
    assert_sense(
        &h.run(&a, &read10(0, 1), &[]),
        SenseKey::NotReady,
        0x04,
        0x0A,
    );
    groups.set_state(10, AluaState::Unavailable).unwrap();
    h.run(&a, &TUR, &[]);
    assert_sense(&h.run(&a, &TUR, &[]), SenseKey::NotReady, 0x04, 0x0C);
    // Unavailable still answers INQUIRY and REPORT TARGET PORT GROUPS, not MODE SENSE.
    assert_eq!(h.run(&a, &rtpg(true, 64), &[]).status, Status::Good);
    assert_sense(
        &h.run(&a, &[0x1A, 0, 0x3F, 0, 255, 0], &[]),
        SenseKey::NotReady,
        0x04,
        0x0C,
    );
    groups.set_state(10, AluaState::Offline).unwrap();
    h.run(&a, &TUR, &[]);
    assert_sense(&h.run(&a, &TUR, &[]), SenseKey::NotReady, 0x04, 0x12);
    // Replacing the model tells every nexus.
    groups.replace(TargetPortGroups::default()).unwrap();
    assert_sense(&h.run(&b, &TUR, &[]), SenseKey::UnitAttention, 0x2A, 0x06);
    assert_eq!(h.run(&a, &TUR, &[]).sense.unwrap().ascq, 0x06);
    assert_eq!(h.run(&a, &TUR, &[]).status, Status::Good);
}

/// The (type, value) of the port designators of VPD page 83h.
fn port_designators(d: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 4;
    while i < d.len() {
        let len = usize::from(d[i + 3]);
        if (d[i + 1] >> 4) & 3 == 1 && matches!(d[i + 1] & 0x0F, 4 | 5) {
            out.push((d[i + 1] & 0x0F, d[i + 4..i + 4 + len].to_vec()));
        }
        i += 4 + len;
    }
    out
}

#[test]
fn vpd_83_names_the_port_and_its_group_from_the_model() {
    let groups = two_groups();
    let h = harness(vec![lu().with_port_groups(groups.clone())]);
    let n = h.ready(1, 3);
    let d = h.run(&n, &[0x12, 1, 0x83, 0, 255, 0], &[]).data_in;
    assert_eq!(
        port_designators(&d),
        vec![(4, vec![0, 0, 0, 3]), (5, vec![0, 0, 0, 20])],
        "relative port 3, group 20 (not the nexus' port_group 1)"
    );
    // The same group id as RTPG reports for port 3.
    let r = h.run(&n, &rtpg(false, 255), &[]).data_in;
    assert_eq!(&r[20..24], &[0x02, 0xCF, 0, 20]);
    assert_eq!(&r[28..36], &[0, 0, 0, 3, 0, 0, 0, 4]);
    // An unlisted port falls in the first group.
    let m = h.ready(2, 9);
    let d = h.run(&m, &[0x12, 1, 0x83, 0, 255, 0], &[]).data_in;
    assert_eq!(port_designators(&d)[1], (5, vec![0, 0, 0, 10]));
}
