//! EXTENDED COPY / RECEIVE COPY RESULTS through [`LunMap::execute`], with the
//! parameter lists built by [`crate::xcopy_builder`] where possible (so these are also
//! the builder's round trip) and by hand where a list must be malformed.

use std::sync::Arc;

use blockdev::MemStore;

use super::*;
use crate::xcopy_builder::{
    block_copy, extended_copy_cdb, receive_copy_results_cdb, BlockCopy, BlockSegment, CopyStatus,
    CopyTarget, ExtendedCopyList, ListIdUsage, RcrAction,
};
use crate::{LuConfig, TargetInfo};

const BS: u32 = 512;
const BLOCKS: u64 = 8192;

fn naa(n: u8) -> [u8; 16] {
    let mut w = [0u8; 16];
    w[..4].copy_from_slice(&[0x60, 0x01, 0x40, 0x5F]);
    w[15] = n;
    w
}

fn lu(n: u8, bs: u32, blocks: u64) -> Arc<LogicalUnit> {
    let cfg = LuConfig {
        wwn: naa(n),
        ..LuConfig::default()
    };
    Arc::new(LogicalUnit::new(cfg, Arc::new(MemStore::new(bs, blocks))))
}

fn target(lu: &LogicalUnit) -> CopyTarget {
    CopyTarget {
        naa: lu.config().naa_bytes().to_vec(),
        block_size: lu.store().block_size(),
    }
}

fn nexus(id: u64) -> Nexus {
    Nexus {
        id,
        initiator: format!("iqn.2007-10.test:init{id},i,0x1"),
        relative_port: 1,
        port_group: 1,
    }
}

fn map_of(luns: &[(u64, &Arc<LogicalUnit>)]) -> LunMap {
    let mut m = LunMap::new(Arc::new(TargetInfo {
        name: "iqn.2026-11.org.switchyard:xcopy".into(),
        port_name: "iqn.2026-11.org.switchyard:xcopy,t,0x0001".into(),
    }));
    for (n, lu) in luns {
        m.insert(*n, Arc::clone(lu));
    }
    m
}

fn run(map: &LunMap, lun: u64, n: &Nexus, cdb: &[u8], data_out: &[u8]) -> Response {
    map.execute(&Request {
        lun,
        cdb,
        data_out,
        data_in_len: 0,
        nexus: n,
    })
}

/// A nexus with the power-on unit attentions of every LUN in `map` consumed.
fn ready(map: &LunMap, id: u64) -> Nexus {
    let n = nexus(id);
    for lun in map.luns().collect::<Vec<_>>() {
        let r = run(map, lun, &n, &[0; 6], &[]);
        assert_eq!(r.sense, Some(Sense::power_on_reset()));
    }
    n
}

fn xcopy(map: &LunMap, lun: u64, n: &Nexus, list: &[u8]) -> Response {
    run(map, lun, n, &extended_copy_cdb(list.len() as u32), list)
}

fn fill(lu: &LogicalUnit, lba: u64, blocks: u64, seed: u8) -> Vec<u8> {
    let bs = lu.store().block_size() as usize;
    let data: Vec<u8> = (0..blocks as usize * bs)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    lu.store().write(lba, &data, false).unwrap();
    data
}

fn read(lu: &LogicalUnit, lba: u64, blocks: u64) -> Vec<u8> {
    let mut buf = vec![0u8; blocks as usize * lu.store().block_size() as usize];
    lu.store().read(lba, &mut buf).unwrap();
    buf
}

fn assert_sense(r: &Response, key: SenseKey, asc: u8, ascq: u8) {
    assert_eq!(r.status, Status::CheckCondition, "{r:?}");
    let s = r.sense.as_ref().unwrap();
    assert_eq!((s.key, s.asc, s.ascq), (key, asc, ascq), "{s}");
}

fn seg(src: u16, dst: u16, blocks: u16, src_lba: u64, dst_lba: u64) -> BlockSegment {
    BlockSegment {
        src,
        dst,
        blocks,
        src_lba,
        dst_lba,
        dc: false,
    }
}

fn list(id: u8, targets: &[&LogicalUnit], segments: Vec<BlockSegment>) -> ExtendedCopyList {
    ExtendedCopyList {
        list_id: id,
        usage: ListIdUsage::Hold,
        priority: 0,
        targets: targets.iter().map(|l| target(l)).collect(),
        segments,
    }
}

fn copy_status(map: &LunMap, lun: u64, n: &Nexus, id: u8) -> Response {
    run(
        map,
        lun,
        n,
        &receive_copy_results_cdb(RcrAction::CopyStatus, id, 64),
        &[],
    )
}

#[test]
fn copy_within_one_lu() {
    let a = lu(1, BS, BLOCKS);
    let map = map_of(&[(0, &a)]);
    let n = ready(&map, 1);
    let data = fill(&a, 0, 2048, 7);
    let l = list(1, &[&a], vec![seg(0, 0, 2048, 0, BLOCKS - 2048)]);
    let r = xcopy(&map, 0, &n, &l.to_bytes().unwrap());
    assert_eq!(r.status, Status::Good, "{r:?}");
    assert_eq!(read(&a, BLOCKS - 2048, 2048), data);
    assert_eq!(
        r.data_out_len,
        l.len() as u32,
        "the fabric sees the whole list taken"
    );
}

#[test]
fn overlapping_copy_within_one_lu_behaves_like_memmove() {
    let a = lu(1, BS, BLOCKS);
    let map = map_of(&[(0, &a)]);
    let n = ready(&map, 1);
    // 4096 blocks (2 MiB, two chunks) moved up by 100 blocks, then back down.
    let data = fill(&a, 0, 4096, 3);
    let up = list(1, &[&a], vec![seg(0, 0, 4096, 0, 100)]);
    assert_eq!(
        xcopy(&map, 0, &n, &up.to_bytes().unwrap()).status,
        Status::Good
    );
    assert_eq!(read(&a, 100, 4096), data);
    let down = list(2, &[&a], vec![seg(0, 0, 4096, 100, 50)]);
    assert_eq!(
        xcopy(&map, 0, &n, &down.to_bytes().unwrap()).status,
        Status::Good
    );
    assert_eq!(read(&a, 50, 4096), data);
}

#[test]
fn copy_between_two_lus_with_several_segments() {
    let (a, b) = (lu(1, BS, BLOCKS), lu(2, BS, BLOCKS));
    let map = map_of(&[(0, &a), (1, &b)]);
    let n = ready(&map, 1);
    let d1 = fill(&a, 10, 8, 1);
    let d2 = fill(&a, 500, 3000, 2);
    let d3 = fill(&b, 0, 4, 9);
    // A→B twice, then B→A: the list may go either way between its targets.
    let l = list(
        4,
        &[&a, &b],
        vec![
            seg(0, 1, 8, 10, 7000),
            seg(0, 1, 3000, 500, 1000),
            seg(1, 0, 4, 0, 8000),
        ],
    );
    // Sent to LUN 1 (the destination of the first two segments): any LU of the map
    // may be the copy manager.
    let r = xcopy(&map, 1, &n, &l.to_bytes().unwrap());
    assert_eq!(r.status, Status::Good, "{r:?}");
    assert_eq!(read(&b, 7000, 8), d1);
    assert_eq!(read(&b, 1000, 3000), d2);
    assert_eq!(read(&a, 8000, 4), d3);
    let cs = copy_status(&map, 1, &n, 4);
    let st = CopyStatus::parse(&cs.data_in).unwrap();
    assert_eq!(st.status, CopyManagerStatus::Completed);
    assert_eq!(st.segments_processed, 3);
    assert_eq!(st.transferred_bytes, u64::from(BS) * (8 + 3000 + 4));
}

#[test]
fn copy_between_block_sizes_and_dc_bit() {
    let (a, b) = (lu(1, 512, BLOCKS), lu(2, 4096, 1024));
    let map = map_of(&[(0, &a), (1, &b)]);
    let n = ready(&map, 1);
    let data = fill(&a, 0, 16, 5);
    // DC=1: NUMBER OF BLOCKS counts destination (4 KiB) blocks.
    let mut s = seg(0, 1, 2, 0, 3);
    s.dc = true;
    let l = list(1, &[&a, &b], vec![s]);
    assert_eq!(
        xcopy(&map, 0, &n, &l.to_bytes().unwrap()).status,
        Status::Good
    );
    assert_eq!(read(&b, 3, 2), data);
    // 3 source blocks are not a whole destination block: refused, nothing written.
    let l = list(2, &[&a, &b], vec![seg(0, 1, 3, 0, 100)]);
    let r = xcopy(&map, 0, &n, &l.to_bytes().unwrap());
    assert_sense(&r, SenseKey::IllegalRequest, 0x26, 0x00);
    assert_eq!(read(&b, 100, 1), vec![0u8; 4096]);
}

#[test]
fn lu_outside_the_initiators_map_is_not_reachable() {
    // Two initiators' maps share A; C is only in the second map.
    let (a, b, c) = (lu(1, BS, BLOCKS), lu(2, BS, BLOCKS), lu(3, BS, BLOCKS));
    let map1 = map_of(&[(0, &a), (1, &b)]);
    let map2 = map_of(&[(0, &a), (1, &c)]);
    let n1 = ready(&map1, 1);
    let n2 = ready(&map2, 2);
    let secret = fill(&c, 0, 8, 0x5A);
    // Initiator 1 tries to read C into A: refused although C exists.
    let steal = list(1, &[&c, &a], vec![seg(0, 1, 8, 0, 0)]);
    let r = xcopy(&map1, 0, &n1, &steal.to_bytes().unwrap());
    assert_sense(&r, SenseKey::CopyAborted, 0x0D, 0x02);
    let f = r.sense.unwrap().field.unwrap();
    assert_eq!(
        (f.cdb, f.byte),
        (false, 16 + 4),
        "points at the first designator"
    );
    assert_eq!(read(&a, 0, 8), vec![0u8; 8 * BS as usize]);
    // ... or to overwrite C from A.
    let clobber = list(2, &[&a, &c], vec![seg(0, 1, 8, 0, 0)]);
    let r = xcopy(&map1, 0, &n1, &clobber.to_bytes().unwrap());
    assert_sense(&r, SenseKey::CopyAborted, 0x0D, 0x02);
    assert_eq!(read(&c, 0, 8), secret);
    // An unused descriptor naming C is refused too: every descriptor must resolve.
    let mut unused = list(3, &[&a, &c], vec![seg(0, 0, 1, 0, 1)]);
    let r = xcopy(&map1, 0, &n1, &unused.to_bytes().unwrap());
    assert_sense(&r, SenseKey::CopyAborted, 0x0D, 0x02);
    // Initiator 2, who sees C, may.
    unused.segments = vec![seg(1, 0, 8, 0, 0)];
    let r = xcopy(&map2, 0, &n2, &unused.to_bytes().unwrap());
    assert_eq!(r.status, Status::Good, "{r:?}");
    assert_eq!(read(&a, 0, 8), secret);
    // A designator that matches nothing at all.
    let mut ghost = list(4, &[&a], vec![seg(0, 0, 1, 0, 1)]);
    ghost.targets[0].naa[15] = 0xEE;
    let r = xcopy(&map1, 0, &n1, &ghost.to_bytes().unwrap());
    assert_sense(&r, SenseKey::CopyAborted, 0x0D, 0x02);
}

#[test]
fn target_descriptor_checks() {
    let a = lu(1, BS, BLOCKS);
    let map = map_of(&[(0, &a)]);
    let n = ready(&map, 1);
    let good = list(1, &[&a], vec![seg(0, 0, 1, 0, 1)]).to_bytes().unwrap();
    let with = |at: usize, v: u8| {
        let mut l = good.clone();
        l[at] = v;
        xcopy(&map, 0, &n, &l)
    };
    // LU ID TYPE is ignored (SPC-4; libiscsi ValidTgtDescr with a reserved type).
    assert_eq!(with(17, 0x80).status, Status::Good);
    // NUL: not reachable; a stream device: incorrect copy target device type.
    assert_sense(&with(17, 0x20), SenseKey::CopyAborted, 0x0D, 0x02);
    assert_sense(&with(17, 0x01), SenseKey::CopyAborted, 0x0D, 0x03);
    // An ASCII T10 designator, a port association: not how LUs are named here.
    assert_sense(&with(20, 0x02), SenseKey::CopyAborted, 0x0D, 0x02);
    assert_sense(&with(21, 0x13), SenseKey::CopyAborted, 0x0D, 0x02);
    // Designator longer than the descriptor has room for.
    assert_sense(&with(23, 17), SenseKey::IllegalRequest, 0x26, 0x00);
    // DISK BLOCK LENGTH must be the LU's.
    let r = with(46, 0x10);
    assert_sense(&r, SenseKey::IllegalRequest, 0x26, 0x00);
    assert_eq!(r.sense.unwrap().field.unwrap().byte, 16 + 29);
    // Unsupported target descriptor type (Fibre Channel N_Port_Name, E0h).
    assert_sense(&with(16, 0xE0), SenseKey::IllegalRequest, 0x26, 0x07);
}

#[test]
fn segment_checks() {
    let a = lu(1, BS, BLOCKS);
    let map = map_of(&[(0, &a)]);
    let n = ready(&map, 1);
    let data = fill(&a, 0, 4, 1);
    // Destination index past the target descriptor list (libiscsi ValidSegDescr).
    let l = list(1, &[&a], vec![seg(0, 1, 1, 0, 1)]);
    let mut bytes = l.to_bytes();
    assert!(bytes.is_err(), "the builder refuses it");
    let mut raw = list(1, &[&a], vec![seg(0, 0, 1, 0, 1)]).to_bytes().unwrap();
    raw[48 + 7] = 1;
    assert_sense(&xcopy(&map, 0, &n, &raw), SenseKey::CopyAborted, 0x0D, 0x02);
    // Past the end: nothing copied, not even the good segment before it.
    let l = list(
        2,
        &[&a],
        vec![seg(0, 0, 4, 0, 100), seg(0, 0, 2048, 0, BLOCKS - 1)],
    );
    let r = xcopy(&map, 0, &n, &l.to_bytes().unwrap());
    assert_sense(&r, SenseKey::CopyAborted, 0x0D, 0x02);
    assert_eq!(
        r.sense.unwrap().field.unwrap().byte as usize,
        16 + 32 + 28 + 20
    );
    assert_ne!(read(&a, 100, 4), data);
    // An overflowing source LBA.
    let l = list(3, &[&a], vec![seg(0, 0, 2, u64::MAX, 0)]);
    assert_sense(
        &xcopy(&map, 0, &n, &l.to_bytes().unwrap()),
        SenseKey::CopyAborted,
        0x0D,
        0x02,
    );
    // Unsupported segment descriptor type (stream to stream, 03h).
    bytes = list(4, &[&a], vec![seg(0, 0, 1, 0, 1)]).to_bytes();
    let mut raw = bytes.unwrap();
    raw[48] = 0x03;
    assert_sense(
        &xcopy(&map, 0, &n, &raw),
        SenseKey::IllegalRequest,
        0x26,
        0x09,
    );
    // A block-to-block descriptor with the wrong DESCRIPTOR LENGTH.
    raw[48] = 0x02;
    raw[51] = 0x14;
    assert_sense(
        &xcopy(&map, 0, &n, &raw),
        SenseKey::IllegalRequest,
        0x26,
        0x00,
    );
    // Zero blocks copy nothing and succeed.
    let l = list(5, &[&a], vec![seg(0, 0, 0, 0, 1)]);
    assert_eq!(
        xcopy(&map, 0, &n, &l.to_bytes().unwrap()).status,
        Status::Good
    );
}

#[test]
fn maximum_segment_length() {
    // 4 KiB blocks: 16385 blocks are just over 64 MiB.
    let a = lu(1, 4096, 32768);
    let map = map_of(&[(0, &a)]);
    let n = ready(&map, 1);
    let l = list(1, &[&a], vec![seg(0, 0, 16385, 0, 16385)]);
    let r = xcopy(&map, 0, &n, &l.to_bytes().unwrap());
    assert_sense(&r, SenseKey::IllegalRequest, 0x26, 0x00);
    assert_eq!(r.sense.unwrap().field.unwrap().byte, 16 + 32 + 10);
}

#[test]
fn descriptor_limits() {
    let a = lu(1, BS, BLOCKS);
    let map = map_of(&[(0, &a)]);
    let n = ready(&map, 1);
    let at_max = list(
        1,
        &vec![&*a; usize::from(MAX_TARGET_DESCRIPTORS)],
        vec![seg(0, 0, 1, 0, 1); usize::from(MAX_SEGMENT_DESCRIPTORS)],
    );
    assert!(at_max.len() - 16 <= MAX_DESCRIPTOR_LIST_LEN as usize);
    assert_eq!(
        xcopy(&map, 0, &n, &at_max.to_bytes().unwrap()).status,
        Status::Good
    );
    // One target descriptor too many (libiscsi DescrLimits).
    let mut l = at_max.clone();
    l.targets.push(target(&a));
    l.segments.truncate(1);
    assert_sense(
        &xcopy(&map, 0, &n, &l.to_bytes().unwrap()),
        SenseKey::IllegalRequest,
        0x26,
        0x06,
    );
    // One segment descriptor too many.
    let mut l = at_max.clone();
    l.targets.truncate(1);
    l.segments.push(seg(0, 0, 1, 0, 1));
    assert_sense(
        &xcopy(&map, 0, &n, &l.to_bytes().unwrap()),
        SenseKey::IllegalRequest,
        0x26,
        0x08,
    );
    // Both lists together longer than MAXIMUM DESCRIPTOR LIST LENGTH, with too many
    // target descriptors as well: the length is reported.
    let mut l = at_max.clone();
    l.targets.push(target(&a));
    l.segments.push(seg(0, 0, 1, 0, 1));
    assert!(l.len() - 16 > MAX_DESCRIPTOR_LIST_LEN as usize);
    assert_sense(
        &xcopy(&map, 0, &n, &l.to_bytes().unwrap()),
        SenseKey::IllegalRequest,
        0x1A,
        0x00,
    );
}

#[test]
fn truncated_parameter_lists() {
    let a = lu(1, BS, BLOCKS);
    let map = map_of(&[(0, &a)]);
    let n = ready(&map, 1);
    let full = list(1, &[&a], vec![seg(0, 0, 1, 0, 1)]).to_bytes().unwrap();
    // PARAMETER LIST LENGTH 0: nothing to do, not an error (libiscsi ParamHdr).
    assert_eq!(
        run(&map, 0, &n, &extended_copy_cdb(0), &[]).status,
        Status::Good
    );
    // Shorter than the header, cut inside the target and the segment descriptor.
    for len in [1, 15, 16 + 31, 16 + 32 + 27] {
        let r = run(&map, 0, &n, &extended_copy_cdb(len as u32), &full[..len]);
        assert_sense(&r, SenseKey::IllegalRequest, 0x1A, 0x00);
    }
    // The CDB asks for the whole list but the fabric delivered less.
    let r = run(
        &map,
        0,
        &n,
        &extended_copy_cdb(full.len() as u32),
        &full[..40],
    );
    assert_sense(&r, SenseKey::IllegalRequest, 0x1A, 0x00);
    // Inline data is not supported; LIST ID USAGE 01b is reserved; 11b needs id 0.
    let mut l = full.clone();
    l[15] = 4;
    l.extend_from_slice(&[0; 4]);
    assert_sense(
        &xcopy(&map, 0, &n, &l),
        SenseKey::IllegalRequest,
        0x26,
        0x00,
    );
    let mut l = full.clone();
    l[1] = 0x08;
    assert_sense(
        &xcopy(&map, 0, &n, &l),
        SenseKey::IllegalRequest,
        0x26,
        0x00,
    );
    l[1] = 0x18;
    assert_sense(
        &xcopy(&map, 0, &n, &l),
        SenseKey::IllegalRequest,
        0x26,
        0x00,
    );
    l[0] = 0;
    assert_eq!(xcopy(&map, 0, &n, &l).status, Status::Good);
}

#[test]
fn receive_copy_results_status_and_failed_segments() {
    let a = lu(1, BS, BLOCKS);
    let map = map_of(&[(0, &a)]);
    let n = ready(&map, 1);
    let other = ready(&map, 2);
    // Nothing held for list 1 yet (libiscsi CopyStatus).
    assert_sense(
        &copy_status(&map, 0, &n, 1),
        SenseKey::IllegalRequest,
        0x24,
        0x00,
    );
    let l = list(1, &[&a], vec![seg(0, 0, 16, 0, 16), seg(0, 0, 16, 0, 32)]);
    assert_eq!(
        xcopy(&map, 0, &n, &l.to_bytes().unwrap()).status,
        Status::Good
    );
    let r = copy_status(&map, 0, &n, 1);
    assert_eq!(r.data_in, vec![0, 0, 0, 8, 0x01, 0, 2, 0, 0, 0, 0x40, 0]);
    // Held per I_T nexus: another nexus does not see it.
    assert_sense(
        &copy_status(&map, 0, &other, 1),
        SenseKey::IllegalRequest,
        0x24,
        0x00,
    );
    // Allocation length truncates.
    let r = run(
        &map,
        0,
        &n,
        &receive_copy_results_cdb(RcrAction::CopyStatus, 1, 5),
        &[],
    );
    assert_eq!(r.data_in, vec![0, 0, 0, 8, 0x01]);
    // LIST ID USAGE 10b: not held.
    let mut d = list(2, &[&a], vec![seg(0, 0, 1, 0, 1)]);
    d.usage = ListIdUsage::Discard;
    assert_eq!(
        xcopy(&map, 0, &n, &d.to_bytes().unwrap()).status,
        Status::Good
    );
    assert_sense(
        &copy_status(&map, 0, &n, 2),
        SenseKey::IllegalRequest,
        0x24,
        0x00,
    );
    // A failed copy: completed with errors, and the failed segment's details.
    let bad = list(3, &[&a], vec![seg(0, 0, 8, BLOCKS, 0)]);
    assert_sense(
        &xcopy(&map, 0, &n, &bad.to_bytes().unwrap()),
        SenseKey::CopyAborted,
        0x0D,
        0x02,
    );
    let st = CopyStatus::parse(&copy_status(&map, 0, &n, 3).data_in).unwrap();
    assert_eq!(
        (st.status, st.segments_processed),
        (CopyManagerStatus::CompletedWithErrors, 0)
    );
    let fsd = receive_copy_results_cdb(RcrAction::FailedSegmentDetails, 3, 256);
    let r = run(&map, 0, &n, &fsd, &[]);
    assert_eq!(r.status, Status::Good);
    assert_eq!(r.data_in.len(), 60 + 18);
    assert_eq!(&r.data_in[56..60], &[0x02, 0, 0, 18]);
    assert_eq!((r.data_in[60 + 2], r.data_in[60 + 12]), (0x0A, 0x0D));
    // RECEIVE DATA is not supported; neither is an unknown service action.
    let rd = receive_copy_results_cdb(RcrAction::ReceiveData, 1, 64);
    assert_sense(
        &run(&map, 0, &n, &rd, &[]),
        SenseKey::IllegalRequest,
        0x24,
        0x00,
    );
}

#[test]
fn operating_parameters_content() {
    let a = lu(1, BS, BLOCKS);
    let map = map_of(&[(0, &a)]);
    let n = ready(&map, 1);
    let cdb = receive_copy_results_cdb(RcrAction::OperatingParameters, 0, 1024);
    let r = run(&map, 0, &n, &cdb, &[]);
    assert_eq!(r.status, Status::Good);
    let d = &r.data_in;
    assert_eq!(d.len(), 46);
    assert_eq!(&d[..4], &[0, 0, 0, 42]);
    assert_eq!(d[4] & 1, 1, "SNLID");
    assert_eq!(&d[8..10], &8u16.to_be_bytes());
    assert_eq!(&d[10..12], &64u16.to_be_bytes());
    assert_eq!(&d[12..16], &2048u32.to_be_bytes());
    assert_eq!(&d[16..20], &(64u32 << 20).to_be_bytes());
    assert_eq!(&d[20..24], &[0; 4], "no inline data");
    assert_eq!((d[36], d[43]), (8, 2));
    assert_eq!(&d[44..], &[0x02, 0xE4]);
    let op = OperatingParameters::parse(d).unwrap();
    assert!(op.supports_block_copy());
    assert_eq!(op, operating_parameters());
}

#[test]
fn list_ids_in_progress_and_concurrency() {
    let m = CopyManager::default();
    let r1 = m.begin(1, Some(5)).unwrap();
    assert_eq!((m.begin(1, Some(5)).err().unwrap().asc, 0x16), (0x00, 0x16));
    let r2 = m
        .begin(2, Some(5))
        .expect("another nexus may use the same id");
    let r3 = m.begin(1, None).expect("no list id: no uniqueness");
    drop(r1);
    let again = m.begin(1, Some(5)).expect("free once the first one ended");
    let mut more: Vec<_> = (10..15).map(|i| m.begin(1, Some(i)).unwrap()).collect();
    assert_eq!(
        m.begin(1, Some(20)).err().unwrap().asc,
        0x55,
        "ninth concurrent copy"
    );
    more.clear();
    drop((r2, r3, again));
    assert!(m.begin(1, Some(20)).is_ok());
}

#[test]
fn reservations_on_source_and_destination() {
    let (a, b) = (lu(1, BS, BLOCKS), lu(2, BS, BLOCKS));
    let map = map_of(&[(0, &a), (1, &b)]);
    let n1 = ready(&map, 1);
    let n2 = ready(&map, 2);
    // Nexus 2 registers and takes a Write Exclusive reservation of B.
    let mut reg = vec![0u8; 24];
    reg[8..16].copy_from_slice(&0xABu64.to_be_bytes());
    let prout = |sa: u8, ty: u8| [0x5F, sa, ty, 0, 0, 0, 0, 0, 24, 0];
    assert_eq!(run(&map, 1, &n2, &prout(0, 0), &reg).status, Status::Good);
    let mut res = vec![0u8; 24];
    res[..8].copy_from_slice(&0xABu64.to_be_bytes());
    assert_eq!(run(&map, 1, &n2, &prout(1, 1), &res).status, Status::Good);
    fill(&b, 0, 4, 1);
    // Nexus 1, through A, may not write B ...
    let to_b = list(1, &[&a, &b], vec![seg(0, 1, 4, 0, 0)]);
    let r = xcopy(&map, 0, &n1, &to_b.to_bytes().unwrap());
    assert_eq!(r.status, Status::ReservationConflict);
    assert_ne!(read(&b, 0, 4), vec![0u8; 4 * BS as usize]);
    // ... but may read it (Write Exclusive) ...
    let from_b = list(2, &[&a, &b], vec![seg(1, 0, 4, 0, 0)]);
    assert_eq!(
        xcopy(&map, 0, &n1, &from_b.to_bytes().unwrap()).status,
        Status::Good
    );
    // ... and the holder may write it.
    assert_eq!(
        xcopy(&map, 0, &n2, &to_b.to_bytes().unwrap()).status,
        Status::Good
    );
}

#[test]
fn write_protected_destination() {
    let a = lu(1, BS, BLOCKS);
    let cfg = LuConfig {
        wwn: naa(2),
        read_only: true,
        ..LuConfig::default()
    };
    let ro = Arc::new(LogicalUnit::new(cfg, Arc::new(MemStore::new(BS, BLOCKS))));
    let map = map_of(&[(0, &a), (1, &ro)]);
    let n = ready(&map, 1);
    let l = list(1, &[&a, &ro], vec![seg(0, 1, 1, 0, 0)]);
    assert_sense(
        &xcopy(&map, 0, &n, &l.to_bytes().unwrap()),
        SenseKey::DataProtect,
        0x27,
        0x00,
    );
}

#[test]
fn third_party_copy_vpd_page() {
    let d = third_party_copy_vpd();
    let mut kinds = Vec::new();
    let mut i = 0;
    while i < d.len() {
        let kind = u16::from_be_bytes([d[i], d[i + 1]]);
        let len = usize::from(u16::from_be_bytes([d[i + 2], d[i + 3]]));
        assert_eq!((4 + len) % 4, 0, "descriptor {kind:#06x} padded");
        if kind == 0x0001 {
            // EXTENDED COPY LID1 and RECEIVE COPY RESULTS' three service actions.
            assert_eq!(
                &d[i + 4..i + 13],
                &[8, 0x83, 1, 0x00, 0x84, 3, 0x00, 0x03, 0x04]
            );
        }
        if kind == 0x0008 {
            assert_eq!(&d[i + 4..i + 7], &[2, 0x02, 0xE4]);
        }
        kinds.push(kind);
        i += 4 + len;
    }
    assert_eq!(i, d.len());
    assert_eq!(kinds, vec![0x0001, 0x0004, 0x0008, 0x000C, 0x8001]);
}

#[test]
fn builder_round_trip_through_the_target() {
    let (a, b) = (lu(1, BS, 65536), lu(2, 4096, 8192));
    let map = map_of(&[(0, &a), (1, &b)]);
    let n = ready(&map, 1);
    // 1. Ask the copy manager for its limits, as a migration engine would.
    let cdb = receive_copy_results_cdb(RcrAction::OperatingParameters, 0, 1024);
    let op = OperatingParameters::parse(&run(&map, 0, &n, &cdb, &[]).data_in).unwrap();
    assert!(op.supports_block_copy());
    // Tighten them so that the copy needs several segments and several lists.
    let mut limits = op.limits();
    limits.max_segment_len = 1 << 20;
    limits.max_segment_descriptors = 4;
    let blocks = 2048 * 9 + 8; // 9 MiB + 4 KiB of 512-byte blocks
    let data = fill(&a, 1000, blocks, 0x33);
    let copy = BlockCopy {
        src: target(&a),
        src_lba: 1000,
        dst: target(&b),
        dst_lba: 10,
        blocks,
    };
    let lists = block_copy(&copy, &limits, 200, ListIdUsage::Hold).unwrap();
    assert_eq!(lists.len(), 3);
    let mut total = 0;
    for l in &lists {
        let r = run(&map, 1, &n, &l.cdb(), &l.to_bytes().unwrap());
        assert_eq!(r.status, Status::Good, "{r:?}");
        let cs = receive_copy_results_cdb(RcrAction::CopyStatus, l.list_id, 12);
        let st = CopyStatus::parse(&run(&map, 1, &n, &cs, &[]).data_in).unwrap();
        assert_eq!(st.status, CopyManagerStatus::Completed);
        assert_eq!(usize::from(st.segments_processed), l.segments.len());
        total += st.transferred_bytes;
    }
    assert_eq!(total, blocks * u64::from(BS));
    assert_eq!(read(&b, 10, blocks / 8), data);
}
