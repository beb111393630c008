//! Executor tests: a loopback fabric drives [`LunMap::execute`] over a `MemStore`.

use std::sync::Arc;

use blockdev::{BlockError, BlockStore, MemStore};
use parking_lot::Mutex;

use crate::commands::{self, COMMANDS};
use crate::{parse_cdb, Cdb, LogicalUnit, LuConfig, LunMap, Nexus, Request, Response, Sense};
use crate::{SenseKey, Status, TargetInfo};

const BS: u32 = 512;
const BLOCKS: u64 = 4096;

/// A store that records the writes and flushes that reach it.
struct Recorder {
    inner: MemStore,
    writes: Mutex<Vec<(u64, usize, bool)>>,
    flushes: Mutex<usize>,
}

impl BlockStore for Recorder {
    blockdev::forward_to!(inner: block_size, num_blocks, capabilities, read);
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), BlockError> {
        self.writes.lock().push((lba, data.len(), fua));
        self.inner.write(lba, data, fua)
    }
    fn flush(&self) -> Result<(), BlockError> {
        *self.flushes.lock() += 1;
        self.inner.flush()
    }
}

pub(crate) struct Fixture {
    pub(crate) map: LunMap,
    store: Arc<Recorder>,
}

pub(crate) fn nexus(id: u64) -> Nexus {
    Nexus {
        id,
        initiator: format!("iqn.2007-10.test:init{id},i,0x1"),
        relative_port: 1,
        port_group: 1,
    }
}

fn target() -> Arc<TargetInfo> {
    Arc::new(TargetInfo {
        name: "iqn.2026-11.org.switchyard:test".into(),
        port_name: "iqn.2026-11.org.switchyard:test,t,0x0001".into(),
    })
}

fn fixture_with(cfg: LuConfig) -> Fixture {
    let store = Arc::new(Recorder {
        inner: MemStore::new(BS, BLOCKS),
        writes: Mutex::new(Vec::new()),
        flushes: Mutex::new(0),
    });
    let mut map = LunMap::new(target());
    map.insert(0, Arc::new(LogicalUnit::new(cfg, store.clone())));
    Fixture { map, store }
}

pub(crate) fn fixture() -> Fixture {
    fixture_with(LuConfig {
        serial: "serial-0".into(),
        ..LuConfig::default()
    })
}

impl Fixture {
    pub(crate) fn run(&self, n: &Nexus, cdb: &[u8], data_out: &[u8]) -> Response {
        self.run_lun(0, n, cdb, data_out)
    }

    fn run_lun(&self, lun: u64, n: &Nexus, cdb: &[u8], data_out: &[u8]) -> Response {
        self.map.execute(&Request {
            lun,
            cdb,
            data_out,
            data_in_len: 0,
            nexus: n,
        })
    }

    /// A nexus that has already consumed its power-on unit attention.
    pub(crate) fn ready(&self, id: u64) -> Nexus {
        let n = nexus(id);
        let r = self.run(&n, &TUR, &[]);
        assert_eq!(r.sense, Some(Sense::power_on_reset()));
        assert_eq!(self.run(&n, &TUR, &[]).status, Status::Good);
        n
    }
}

pub(crate) const TUR: [u8; 6] = [0; 6];

pub(crate) fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub(crate) fn write10(lba: u32, blocks: u16, flags: u8) -> Vec<u8> {
    let mut c = read10(lba, blocks);
    c[0] = 0x2A;
    c[1] = flags;
    c
}

fn verify10(lba: u32, blocks: u16, bytchk: bool) -> Vec<u8> {
    let mut c = read10(lba, blocks);
    c[0] = 0x2F;
    c[1] = if bytchk { 0x02 } else { 0 };
    c
}

fn rw16(op: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

pub(crate) fn assert_sense(r: &Response, key: SenseKey, asc: u8, ascq: u8) {
    assert_eq!(r.status, Status::CheckCondition, "{r:?}");
    let s = r.sense.as_ref().expect("sense");
    assert_eq!((s.key, s.asc, s.ascq), (key, asc, ascq), "{s}");
}

#[test]
fn unit_attention_on_first_command_then_cleared() {
    let f = fixture();
    let n = nexus(1);
    // INQUIRY is not blocked by the unit attention and does not clear it.
    let inq = f.run(&n, &[0x12, 0, 0, 0, 36, 0], &[]);
    assert_eq!(inq.status, Status::Good);
    assert_eq!(inq.data_in.len(), 36);
    let r = f.run(&n, &TUR, &[]);
    assert_sense(&r, SenseKey::UnitAttention, 0x29, 0x00);
    assert_eq!(r.sense_bytes()[0], 0x70, "fixed format by default");
    assert_eq!(f.run(&n, &TUR, &[]).status, Status::Good);
}

#[test]
fn request_sense_returns_and_clears_the_unit_attention() {
    let f = fixture();
    let n = nexus(1);
    let r = f.run(&n, &[0x03, 0, 0, 0, 18, 0], &[]);
    assert_eq!(r.status, Status::Good);
    assert_eq!(
        (r.data_in[2], r.data_in[12], r.data_in[13]),
        (0x06, 0x29, 0x00)
    );
    let r = f.run(&n, &[0x03, 0x01, 0, 0, 252, 0], &[]);
    assert_eq!(
        r.data_in,
        vec![0x72, 0, 0, 0, 0, 0, 0, 0],
        "NO SENSE, descriptor format"
    );
    assert_eq!(f.run(&n, &TUR, &[]).status, Status::Good);
}

#[test]
fn out_of_range_and_overflowing_lbas() {
    let f = fixture();
    let n = f.ready(1);
    let last = (BLOCKS - 1) as u32;
    assert_eq!(f.run(&n, &read10(last, 1), &[]).data_in.len(), BS as usize);
    for cdb in [
        read10(last, 2),
        read10(BLOCKS as u32, 1),
        read10(BLOCKS as u32 + 1, 0),
        read10(u32::MAX, 1),
        rw16(0x88, u64::MAX, 1),
        rw16(0x88, u64::MAX, 0),
        rw16(0x88, 1 << 63, 1),
        rw16(0x8F, u64::MAX - 1, 4),
        rw16(0x90, BLOCKS, 1),
    ] {
        assert_sense(&f.run(&n, &cdb, &[]), SenseKey::IllegalRequest, 0x21, 0x00);
    }
    // Zero blocks at LBA 0 is a successful transfer of nothing.
    let r = f.run(&n, &read10(0, 0), &[]);
    assert_eq!((r.status, r.data_in.len()), (Status::Good, 0));
}

#[test]
fn reserved_bits_and_protection_fields_are_invalid_fields() {
    let f = fixture();
    let n = f.ready(1);
    let mut cdb = read10(0, 1);
    cdb[1] = 0x20; // RDPROTECT=1
    let r = f.run(&n, &cdb, &[]);
    assert_sense(&r, SenseKey::IllegalRequest, 0x24, 0x00);
    assert_eq!(&r.sense_bytes()[15..18], &[0xCD, 0x00, 0x01]);
    let mut cdb = read10(0, 1);
    cdb[9] = 0x04; // NACA
    let r = f.run(&n, &cdb, &[]);
    assert_eq!(r.sense.unwrap().field.unwrap().byte, 9);
    // EVPD=0 with a page code.
    assert_sense(
        &f.run(&n, &[0x12, 0, 0x83, 0, 255, 0], &[]),
        SenseKey::IllegalRequest,
        0x24,
        0,
    );
}

#[test]
fn allocation_length_truncates_parameter_data() {
    let f = fixture();
    let n = f.ready(1);
    for alloc in [0u8, 5, 35, 36, 95, 96, 255] {
        let r = f.run(&n, &[0x12, 0, 0, 0, alloc, 0], &[]);
        assert_eq!(r.data_in.len(), usize::from(alloc).min(96));
    }
    let r = f.run(&n, &[0x1A, 0, 0x3F, 0, 4, 0], &[]);
    assert_eq!(r.data_in.len(), 4);
    assert!(
        usize::from(r.data_in[0]) + 1 > 4,
        "mode data length is not truncated"
    );
    for alloc in 0..=32u8 {
        let mut rc16 = [0u8; 16];
        rc16[0] = 0x9E;
        rc16[1] = 0x10;
        rc16[13] = alloc;
        let r = f.run(&n, &rc16, &[]);
        assert_eq!(r.status, Status::Good);
        assert_eq!(r.data_in.len(), usize::from(alloc));
    }
    let r = f.run(&n, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], &[]);
    assert_eq!(
        r.data_in,
        vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
}

#[test]
fn read_capacity() {
    let f = fixture();
    let n = f.ready(1);
    let r = f.run(&n, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(r.data_in, vec![0, 0, 0x0F, 0xFF, 0, 0, 0x02, 0x00]);
    let mut rc16 = [0u8; 16];
    rc16[0] = 0x9E;
    rc16[1] = 0x10;
    rc16[13] = 32;
    let r = f.run(&n, &rc16, &[]);
    assert_eq!(
        &r.data_in[..12],
        &[0, 0, 0, 0, 0, 0, 0x0F, 0xFF, 0, 0, 0x02, 0]
    );
    assert_eq!(
        &r.data_in[12..16],
        &[0, 0, 0, 0],
        "no PI, LBPPBE=0, LBPME=0"
    );
}

#[test]
fn mode_select_change_raises_unit_attention_for_other_nexuses() {
    let f = fixture();
    let a = f.ready(1);
    let b = f.ready(2);
    // Read the current control page and set D_SENSE.
    let r = f.run(&a, &[0x1A, 0x08, 0x0A, 0, 255, 0], &[]);
    let mut params = r.data_in.clone();
    params[0] = 0; // mode data length is reserved in MODE SELECT
    params[2] = 0;
    params[4 + 2] |= 0x04;
    let sel = [0x15, 0x10, 0, 0, params.len() as u8, 0];
    let r = f.run(&a, &sel, &params);
    assert_eq!(r.status, Status::Good, "{r:?}");
    assert_eq!(r.data_out_len, params.len() as u32);
    // The changer sees no unit attention; the other nexus does, once.
    assert_eq!(f.run(&a, &TUR, &[]).status, Status::Good);
    let r = f.run(&b, &TUR, &[]);
    assert_sense(&r, SenseKey::UnitAttention, 0x2A, 0x01);
    assert_eq!(r.sense_bytes(), vec![0x72, 0x06, 0x2A, 0x01, 0, 0, 0, 0]);
    assert_eq!(f.run(&b, &TUR, &[]).status, Status::Good);
    // Errors now come back in descriptor format.
    let r = f.run(&a, &rw16(0x88, u64::MAX, 1), &[]);
    assert!(r.descriptor_sense);
    assert_eq!(&r.sense_bytes()[..4], &[0x72, 0x05, 0x21, 0x00]);
    // Selecting the same values again changes nothing and raises nothing.
    assert_eq!(f.run(&a, &sel, &params).status, Status::Good);
    assert_eq!(f.run(&b, &TUR, &[]).status, Status::Good);
    // A non-changeable bit (TST) is an invalid field in the parameter list.
    params[4 + 2] |= 0x20;
    let r = f.run(&a, &sel, &params);
    assert_sense(&r, SenseKey::IllegalRequest, 0x26, 0x00);
    let fp = r.sense.unwrap().field.unwrap();
    assert_eq!((fp.cdb, fp.byte, fp.bit), (false, 6, Some(5)));
    // Saved values do not exist.
    let r = f.run(&a, &[0x1A, 0, 0xFF, 0, 255, 0], &[]);
    assert_sense(&r, SenseKey::IllegalRequest, 0x39, 0x00);
}

/// A CDB for a table row that passes both parse steps.
fn baseline(row: &commands::CommandInfo) -> Vec<u8> {
    let mut c = vec![0u8; row.cdb_len()];
    c[0] = row.opcode;
    if let Some(sa) = row.service_action {
        c[1] = sa as u8;
    }
    if row.opcode == 0xA0 {
        c[9] = 16; // REPORT LUNS allocation length >= 16
    }
    c
}

#[test]
fn report_supported_opcodes_is_consistent_with_the_parser() {
    let f = fixture();
    let n = f.ready(1);
    let rsoc = [0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0];
    let r = f.run(&n, &rsoc, &[]);
    assert_eq!(r.status, Status::Good);
    let listed: Vec<(u8, u16, bool, u16)> = r.data_in[4..]
        .chunks(8)
        .map(|d| {
            (
                d[0],
                u16::from_be_bytes([d[2], d[3]]),
                d[5] & 1 != 0,
                u16::from_be_bytes([d[6], d[7]]),
            )
        })
        .collect();
    assert_eq!(listed.len(), COMMANDS.len());
    for &(op, sa, servactv, len) in &listed {
        let row = commands::lookup(op, servactv.then_some(sa)).expect("listed row exists");
        assert_eq!(usize::from(len), row.cdb_len());
        let cdb = baseline(row);
        let parsed = parse_cdb(&cdb).unwrap_or_else(|e| panic!("{}: {e}", row.name));
        assert_ne!(parsed, Cdb::Unsupported(op), "{}", row.name);
        // Every bit the usage mask does not claim is refused, pointing at that bit.
        for (i, &usage) in row.usage.iter().enumerate().skip(1) {
            let allowed = if i == 1 && servactv {
                usage | 0x1F
            } else {
                usage
            };
            for bit in 0..8 {
                if allowed & (1 << bit) != 0 {
                    continue;
                }
                let mut bad = cdb.clone();
                bad[i] |= 1 << bit;
                let e = parse_cdb(&bad).expect_err(row.name);
                assert_eq!(e.asc, 0x24, "{} byte {i} bit {bit}", row.name);
                let fp = e.field.unwrap();
                assert_eq!((fp.byte, fp.bit), (i as u16, Some(bit)), "{}", row.name);
            }
        }
    }
    // Every opcode that is not listed is an invalid operation code.
    for op in 0..=255u8 {
        if listed.iter().any(|l| l.0 == op) {
            continue;
        }
        let mut cdb = [0u8; 16];
        cdb[0] = op;
        assert_sense(&f.run(&n, &cdb, &[]), SenseKey::IllegalRequest, 0x20, 0x00);
    }
    // One-command format agrees with the table's usage data.
    let r = f.run(&n, &[0xA3, 0x0C, 0x01, 0x2A, 0, 0, 0, 0, 1, 0, 0, 0], &[]);
    assert_eq!(&r.data_in[4..], commands::lookup(0x2A, None).unwrap().usage);
    let r = f.run(
        &n,
        &[0xA3, 0x0C, 0x01, 0x9E, 0, 0x10, 0, 0, 1, 0, 0, 0],
        &[],
    );
    assert_eq!(
        r.sense.unwrap().field.unwrap().byte,
        2,
        "not byte 1: RSOC itself works"
    );
}

#[test]
fn write_read_verify_and_miscompare() {
    let f = fixture();
    let n = f.ready(1);
    let data = pattern(4 * BS as usize, 3);
    let r = f.run(&n, &write10(100, 4, 0), &data);
    assert_eq!((r.status, r.data_out_len), (Status::Good, 4 * BS));
    assert_eq!(f.run(&n, &read10(100, 4), &[]).data_in, data);
    assert_eq!(
        f.run(&n, &verify10(100, 4, true), &data).status,
        Status::Good
    );
    assert_eq!(
        f.run(&n, &verify10(100, 4, false), &[]).status,
        Status::Good
    );
    let mut bad = data.clone();
    bad[1234] ^= 0x58;
    let r = f.run(&n, &verify10(100, 4, true), &bad);
    assert_sense(&r, SenseKey::Miscompare, 0x1D, 0x00);
    assert_eq!(r.sense.as_ref().unwrap().info, Some(1234));
    assert_eq!(&r.sense_bytes()[..7], &[0xF0, 0, 0x0E, 0, 0, 0x04, 0xD2]);
    // Without BYTCHK the medium is only checked for readability.
    assert_eq!(
        f.run(&n, &verify10(100, 4, false), &bad).status,
        Status::Good
    );
    // WRITE AND VERIFY writes and compares.
    let mut wav = write10(200, 4, 0x02);
    wav[0] = 0x2E;
    assert_eq!(f.run(&n, &wav, &data).status, Status::Good);
    assert_eq!(f.run(&n, &read10(200, 4), &[]).data_in, data);
    // READ(6) with transfer length 0 reads 256 blocks.
    let r = f.run(&n, &[0x08, 0, 0, 0, 0, 0], &[]);
    assert_eq!(r.data_in.len(), 256 * BS as usize);
}

#[test]
fn short_data_out_writes_the_blocks_that_arrived() {
    let f = fixture();
    let n = f.ready(1);
    let a = vec![b'a'; 2 * BS as usize];
    f.run(&n, &write10(0, 2, 0), &a);
    let b = vec![b'b'; BS as usize];
    let r = f.run(&n, &write10(0, 2, 0), &b);
    assert_eq!((r.status, r.data_out_len), (Status::Good, 2 * BS));
    let back = f.run(&n, &read10(0, 2), &[]).data_in;
    assert!(back[..BS as usize].iter().all(|&x| x == b'b'));
    assert!(back[BS as usize..].iter().all(|&x| x == b'a'));
    // No data at all: nothing written, still GOOD.
    let before = f.store.writes.lock().len();
    assert_eq!(f.run(&n, &write10(0, 1, 0), &[]).status, Status::Good);
    assert_eq!(f.store.writes.lock().len(), before);
}

#[test]
fn fua_reaches_the_store() {
    let f = fixture();
    let n = f.ready(1);
    let data = vec![1u8; BS as usize];
    f.run(&n, &write10(7, 1, 0x08), &data);
    f.run(&n, &write10(8, 1, 0x10), &data);
    let mut w16 = rw16(0x8A, 9, 1);
    w16[1] = 0x08;
    f.run(&n, &w16, &data);
    assert_eq!(
        *f.store.writes.lock(),
        vec![(7, 512, true), (8, 512, false), (9, 512, true)]
    );
    // With the write cache disabled (WCE=0) every write is FUA.
    let r = f.run(&n, &[0x1A, 0x08, 0x08, 0, 255, 0], &[]);
    let mut params = r.data_in;
    params[0] = 0;
    params[2] = 0;
    params[4 + 2] &= !0x04;
    let sel = [0x15, 0x10, 0, 0, params.len() as u8, 0];
    assert_eq!(f.run(&n, &sel, &params).status, Status::Good);
    f.run(&n, &write10(10, 1, 0), &data);
    assert_eq!(f.store.writes.lock().last(), Some(&(10, 512, true)));
    // SYNCHRONIZE CACHE flushes.
    assert_eq!(
        f.run(&n, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).status,
        Status::Good
    );
    assert_eq!(*f.store.flushes.lock(), 1);
}

#[test]
fn write_same() {
    let f = fixture();
    let n = f.ready(1);
    let block = pattern(BS as usize, 9);
    let mut ws = vec![0x41, 0, 0, 0, 0, 50, 0, 0, 5, 0];
    assert_eq!(f.run(&n, &ws, &block).status, Status::Good);
    let back = f.run(&n, &read10(50, 5), &[]).data_in;
    for chunk in back.chunks(BS as usize) {
        assert_eq!(chunk, &block[..]);
    }
    // Zero blocks: to the end of the LU (within MAXIMUM WRITE SAME LENGTH here).
    let mut to_end = rw16(0x93, BLOCKS - 3, 0);
    to_end[1] = 0;
    assert_eq!(f.run(&n, &to_end, &block).status, Status::Good);
    assert_eq!(f.run(&n, &read10(BLOCKS as u32 - 1, 1), &[]).data_in, block);
    assert_sense(
        &f.run(&n, &rw16(0x93, BLOCKS + 1, 0), &block),
        SenseKey::IllegalRequest,
        0x21,
        0,
    );
    // UNMAP on a fully provisioned LU (LBPWS10=0): invalid field (thin LUs:
    // thin_tests.rs).
    ws[1] = 0x08;
    let r = f.run(&n, &ws, &block);
    assert_sense(&r, SenseKey::IllegalRequest, 0x24, 0);
    ws[1] = 0;
    // The data-out must be exactly one block.
    let r = f.run(&n, &ws, &block[..100]);
    assert_eq!(r.sense.unwrap().key, SenseKey::IllegalRequest);
}

#[test]
fn write_same_respects_maximum_write_same_length() {
    let store = Arc::new(MemStore::new(BS, 1 << 20));
    let lu = LogicalUnit::new(LuConfig::default(), store);
    let max = lu.limits().max_write_same_blocks;
    assert!(max < 1 << 20);
    let mut map = LunMap::new(target());
    map.insert(0, Arc::new(lu));
    let f = Fixture {
        map,
        store: Arc::new(Recorder {
            inner: MemStore::new(BS, 1),
            writes: Mutex::new(Vec::new()),
            flushes: Mutex::new(0),
        }),
    };
    let n = f.ready(1);
    let block = vec![0u8; BS as usize];
    let r = f.run(&n, &rw16(0x93, 0, 0), &block);
    assert_sense(&r, SenseKey::IllegalRequest, 0x24, 0);
    assert_eq!(r.sense.unwrap().field.unwrap().byte, 10);
    let r = f.run(&n, &rw16(0x93, (1 << 20) - max, 0), &block);
    assert_eq!(r.status, Status::Good);
}

#[test]
fn orwrite_ors_into_the_medium() {
    let f = fixture();
    let n = f.ready(1);
    f.run(&n, &write10(3, 1, 0), &vec![0x0F; BS as usize]);
    let r = f.run(&n, &rw16(0x8B, 3, 1), &vec![0xA0; BS as usize]);
    assert_eq!(r.status, Status::Good);
    let back = f.run(&n, &read10(3, 1), &[]).data_in;
    assert!(back.iter().all(|&b| b == 0xAF));
}

#[test]
fn reserve_release_conflicts() {
    let f = fixture();
    let a = f.ready(1);
    let b = f.ready(2);
    let c = f.ready(3);
    let reserve6 = [0x16, 0, 0, 0, 0, 0];
    let release6 = [0x17, 0, 0, 0, 0, 0];
    assert_eq!(f.run(&a, &reserve6, &[]).status, Status::Good);
    assert_eq!(f.run(&a, &reserve6, &[]).status, Status::Good);
    assert_eq!(
        f.run(&b, &reserve6, &[]).status,
        Status::ReservationConflict
    );
    assert_eq!(
        f.run(&b, &read10(0, 1), &[]).status,
        Status::ReservationConflict
    );
    assert_eq!(
        f.run(&b, &[0x1A, 0, 0x3F, 0, 255, 0], &[]).status,
        Status::ReservationConflict
    );
    assert_eq!(f.run(&b, &[0x12, 0, 0, 0, 36, 0], &[]).status, Status::Good);
    // Release by a non-holder is a no-op.
    assert_eq!(f.run(&b, &release6, &[]).status, Status::Good);
    assert_eq!(f.run(&b, &TUR, &[]).status, Status::ReservationConflict);
    assert_eq!(f.run(&a, &read10(0, 1), &[]).status, Status::Good);
    assert_eq!(f.run(&a, &release6, &[]).status, Status::Good);
    assert_eq!(
        f.run(&b, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).status,
        Status::Good
    );
    // The holder's nexus goes away: the reservation goes with it.
    f.map.nexus_gone(&b);
    assert_eq!(f.run(&a, &read10(0, 1), &[]).status, Status::Good);
    // A LUN reset clears it too, and tells the other nexuses.
    assert_eq!(f.run(&a, &reserve6, &[]).status, Status::Good);
    assert_eq!(f.run(&c, &TUR, &[]).status, Status::ReservationConflict);
    f.map.lun_reset(0, &a).unwrap();
    assert_sense(&f.run(&c, &TUR, &[]), SenseKey::UnitAttention, 0x29, 0x03);
    assert_eq!(f.run(&c, &reserve6, &[]).status, Status::Good);
    // The issuer gets the reset unit attention too (SAM-5 §6.3.3).
    assert_sense(&f.run(&a, &TUR, &[]), SenseKey::UnitAttention, 0x29, 0x03);
    assert_eq!(
        f.run(&a, &TUR, &[]).status,
        Status::ReservationConflict,
        "the new reservation holds after the issuer's UA"
    );
    assert!(f.map.lun_reset(9, &a).is_err());
}

#[test]
fn lun_reset_restores_default_mode_pages() {
    let f = fixture();
    let a = f.ready(1);
    let r = f.run(&a, &[0x1A, 0x08, 0x0A, 0, 255, 0], &[]);
    let mut params = r.data_in;
    params[0] = 0;
    params[2] = 0;
    params[4 + 4] |= 0x08; // SWP
    let sel = [0x15, 0x10, 0, 0, params.len() as u8, 0];
    assert_eq!(f.run(&a, &sel, &params).status, Status::Good);
    let r = f.run(&a, &write10(0, 1, 0), &vec![0; BS as usize]);
    assert_sense(&r, SenseKey::DataProtect, 0x27, 0x02);
    let ms = f.run(&a, &[0x1A, 0x08, 0x3F, 0, 255, 0], &[]);
    assert_eq!(
        ms.data_in[2] & 0x80,
        0x80,
        "WP in the device-specific parameter"
    );
    f.map.lun_reset(0, &a).unwrap();
    assert_sense(&f.run(&a, &TUR, &[]), SenseKey::UnitAttention, 0x29, 0x03);
    assert_eq!(
        f.run(&a, &write10(0, 1, 0), &vec![0; BS as usize]).status,
        Status::Good
    );
}

#[test]
fn read_only_lu_refuses_writes() {
    let f = fixture_with(LuConfig {
        read_only: true,
        ..LuConfig::default()
    });
    let n = f.ready(1);
    let block = vec![0u8; BS as usize];
    for cdb in [
        write10(0, 1, 0),
        rw16(0x8A, 0, 1),
        rw16(0x8B, 0, 1),
        rw16(0x93, 0, 1),
    ] {
        assert_sense(&f.run(&n, &cdb, &block), SenseKey::DataProtect, 0x27, 0x00);
    }
    // WRITE SAME with UNMAP on a read-only LU is still WRITE PROTECTED.
    let mut ws = rw16(0x93, 0, 1);
    ws[1] = 0x08;
    assert_sense(&f.run(&n, &ws, &block), SenseKey::DataProtect, 0x27, 0x00);
    assert_eq!(f.run(&n, &read10(0, 1), &[]).status, Status::Good);
    assert!(f.store.writes.lock().is_empty());
}

#[test]
fn nonexistent_lun() {
    let f = fixture();
    let n = nexus(1);
    let r = f.run_lun(5, &n, &[0x12, 0, 0, 0, 96, 0], &[]);
    assert_eq!((r.status, r.data_in[0]), (Status::Good, 0x7F));
    assert_sense(
        &f.run_lun(5, &n, &TUR, &[]),
        SenseKey::IllegalRequest,
        0x25,
        0x00,
    );
    // Not supported wins over a bad CDB, an unknown opcode and a VPD page.
    let mut bad = read10(0, 1);
    bad[1] = 0xE0;
    for cdb in [bad, vec![0xC0; 16], vec![0x12, 1, 0x83, 0, 255, 0]] {
        assert_sense(
            &f.run_lun(5, &n, &cdb, &[]),
            SenseKey::IllegalRequest,
            0x25,
            0,
        );
    }
    let r = f.run_lun(5, &n, &[0x03, 0, 0, 0, 18, 0], &[]);
    assert_eq!(r.status, Status::Good);
    assert_eq!((r.data_in[2], r.data_in[12]), (0x05, 0x25));
    let r = f.run_lun(5, &n, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]);
    assert_eq!(&r.data_in[..4], &[0, 0, 0, 8]);
}

#[test]
fn new_lun_raises_reported_luns_changed_until_report_luns() {
    let mut f = fixture();
    let n = f.ready(1);
    let lu = LogicalUnit::new(LuConfig::default(), Arc::new(MemStore::new(BS, 64)));
    f.map.insert(1, Arc::new(lu));
    f.map.lun_inventory_changed();
    let report = [0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    let r = f.run(&n, &report, &[]);
    assert_eq!(
        &r.data_in[..4],
        &[0, 0, 0, 16],
        "REPORT LUNS is not blocked by the UA"
    );
    // REPORT LUNS cleared REPORTED LUNS DATA HAS CHANGED.
    assert_eq!(f.run(&n, &TUR, &[]).status, Status::Good);
    // Without REPORT LUNS, the next command reports it.
    let m = f.ready(2);
    f.map.remove(1);
    assert_eq!(
        f.run(&m, &TUR, &[]).status,
        Status::Good,
        "insert/remove are silent"
    );
    f.map.lun_inventory_changed();
    assert_sense(&f.run(&m, &TUR, &[]), SenseKey::UnitAttention, 0x3F, 0x0E);
}

#[test]
fn transfer_length_over_the_limit_is_an_invalid_field() {
    let f = fixture();
    let n = f.ready(1);
    let max = f.map.get(0).unwrap().limits().max_transfer_blocks;
    let r = f.run(&n, &rw16(0x88, 0, max + 1), &[]);
    assert_sense(&r, SenseKey::IllegalRequest, 0x24, 0);
    assert_eq!(r.sense.unwrap().field.unwrap().byte, 10);
}

#[test]
fn inquiry_vpd_pages_through_the_lun_map() {
    let f = fixture();
    let n = f.ready(1);
    let r = f.run(&n, &[0x12, 1, 0x00, 0, 255, 0], &[]);
    let pages = r.data_in[4..].to_vec();
    for p in pages {
        let r = f.run(&n, &[0x12, 1, p, 0, 255, 0], &[]);
        assert_eq!(r.status, Status::Good);
        assert_eq!(r.data_in[1], p);
        assert_eq!(
            usize::from(u16::from_be_bytes([r.data_in[2], r.data_in[3]])) + 4,
            r.data_in.len()
        );
    }
    let r = f.run(&n, &[0x12, 1, 0x83, 0, 255, 0], &[]);
    let text = String::from_utf8_lossy(&r.data_in);
    assert!(text.contains("iqn.2026-11.org.switchyard:test,t,0x0001"));
    assert_sense(
        &f.run(&n, &[0x12, 1, 0xC0, 0, 255, 0], &[]),
        SenseKey::IllegalRequest,
        0x24,
        0,
    );
}

#[test]
fn parse_cdb_never_panics_on_pseudo_random_input() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 20) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|i| (x >> (i % 8 * 8)) as u8 ^ i as u8)
            .collect();
        let _ = parse_cdb(&bytes);
    }
}
