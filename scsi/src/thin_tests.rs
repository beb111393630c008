//! Tests for thin provisioning (UNMAP, GET LBA STATUS, WRITE SAME with UNMAP/NDOB),
//! COMPARE AND WRITE, WRITE ATOMIC and REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS,
//! through [`LunMap::execute`] over a `MemStore` (and a `FileStore` for holes).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use blockdev::{BlockError, BlockStore, Capabilities, FileStore, FileStoreOptions, MemStore};

use crate::tests::{assert_sense, nexus, read10, write10, TUR};
use crate::{Limits, LogicalUnit, LuConfig, LunMap, Nexus, Request, Response, Sense};
use crate::{SenseKey, Status, TargetInfo};

const BS: u32 = 512;
const BLOCKS: u64 = 4096;
/// MemStore tracks allocation in runs of this many blocks.
const SHARD: u64 = 256;

struct Lun {
    map: LunMap,
    n: Nexus,
}

fn lun_over(store: Arc<dyn BlockStore>, thin: bool, limits: Option<Limits>) -> Lun {
    let cfg = LuConfig {
        serial: "thin-0".into(),
        thin,
        ..LuConfig::default()
    };
    let limits = limits.unwrap_or_else(|| Limits::for_block_size(store.block_size()));
    let mut map = LunMap::new(Arc::new(TargetInfo {
        name: "iqn.2026-11.org.switchyard:thin".into(),
        port_name: "iqn.2026-11.org.switchyard:thin,t,0x0001".into(),
    }));
    map.insert(0, Arc::new(LogicalUnit::with_limits(cfg, store, limits)));
    let n = nexus(1);
    let lun = Lun { map, n };
    assert_eq!(lun.run(&TUR, &[]).sense, Some(Sense::power_on_reset()));
    lun
}

fn thin_lun() -> Lun {
    lun_over(Arc::new(MemStore::new(BS, BLOCKS)), true, None)
}

impl Lun {
    fn run(&self, cdb: &[u8], data_out: &[u8]) -> Response {
        self.map.execute(&Request {
            lun: 0,
            cdb,
            data_out,
            data_in_len: 0,
            nexus: &self.n,
        })
    }

    fn good(&self, cdb: &[u8], data_out: &[u8]) -> Vec<u8> {
        let r = self.run(cdb, data_out);
        assert_eq!(r.status, Status::Good, "{cdb:02x?}: {:?}", r.sense);
        r.data_in
    }

    fn read(&self, lba: u32, blocks: u16) -> Vec<u8> {
        self.good(&read10(lba, blocks), &[])
    }

    fn fill(&self, lba: u32, blocks: u16, byte: u8) {
        let data = vec![byte; blocks as usize * BS as usize];
        self.good(&write10(lba, blocks, 0), &data);
    }

    fn store(&self) -> Arc<dyn BlockStore> {
        self.map.get(0).unwrap().store().clone()
    }

    fn vpd(&self, page: u8) -> Vec<u8> {
        self.good(&[0x12, 0x01, page, 0x01, 0x00, 0x00], &[])
    }

    /// GET LBA STATUS descriptors: (lba, blocks, provisioning status).
    fn lba_status(&self, lba: u64, alloc: u32) -> Vec<(u64, u32, u8)> {
        let d = self.good(&get_lba_status(lba, alloc), &[]);
        let len = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
        assert_eq!((len - 4) % 16, 0, "PARAMETER DATA LENGTH");
        d[8..]
            .chunks_exact(16)
            .map(|c| {
                (
                    u64::from_be_bytes(c[..8].try_into().unwrap()),
                    u32::from_be_bytes(c[8..12].try_into().unwrap()),
                    c[12] & 0x0F,
                )
            })
            .collect()
    }
}

fn unmap_cdb(param_len: u16) -> Vec<u8> {
    let mut c = vec![0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[7..9].copy_from_slice(&param_len.to_be_bytes());
    c
}

/// A well-formed UNMAP parameter list.
fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let bd = (ranges.len() * 16) as u16;
    let mut d = Vec::new();
    d.extend_from_slice(&(bd + 6).to_be_bytes());
    d.extend_from_slice(&bd.to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for &(lba, n) in ranges {
        d.extend_from_slice(&lba.to_be_bytes());
        d.extend_from_slice(&n.to_be_bytes());
        d.extend_from_slice(&[0; 4]);
    }
    d
}

fn get_lba_status(lba: u64, alloc: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x9E;
    c[1] = 0x12;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

fn caw(lba: u64, blocks: u8) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = blocks;
    c
}

fn write_atomic(lba: u64, boundary: u16, blocks: u16) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x9C;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..12].copy_from_slice(&boundary.to_be_bytes());
    c[12..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn write_same10(lba: u32, blocks: u16, flags: u8) -> Vec<u8> {
    let mut c = read10(lba, blocks);
    c[0] = 0x41;
    c[1] = flags;
    c
}

fn write_same16(lba: u64, blocks: u32, flags: u8) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x93;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn field_byte(r: &Response) -> u16 {
    r.sense.as_ref().unwrap().field.expect("field pointer").byte
}

fn all(data: &[u8], byte: u8) -> bool {
    data.iter().all(|&b| b == byte)
}

/// A store that cannot unmap.
struct NoUnmap(MemStore);

impl BlockStore for NoUnmap {
    blockdev::forward_to!(0: block_size, num_blocks, read, write, flush);
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            unmap: false,
            lba_status: false,
            ..self.0.capabilities()
        }
    }
}

#[test]
fn thin_lu_advertises_logical_block_provisioning() {
    let lun = thin_lun();
    let mut rc16 = get_lba_status(0, 32);
    rc16[1] = 0x10; // READ CAPACITY(16)
    let rc16 = lun.good(&rc16, &[]);
    assert_eq!(rc16[14] & 0xC0, 0xC0, "LBPME and LBPRZ");
    let lbp = lun.vpd(0xB2);
    assert_eq!(lbp, vec![0, 0xB2, 0, 4, 0, 0xE4, 0x02, 0]);
    let bl = lun.vpd(0xB0);
    let limits = Limits::for_block_size(BS);
    assert_eq!(bl[5], limits.max_compare_write_blocks);
    assert_eq!(&bl[20..24], &limits.max_unmap_blocks.to_be_bytes());
    assert!(limits.max_unmap_blocks > 0 && limits.max_unmap_blocks <= 1 << 20);
    assert_eq!(&bl[24..28], &256u32.to_be_bytes());
    assert_eq!(
        &bl[28..32],
        &1u32.to_be_bytes(),
        "OPTIMAL UNMAP GRANULARITY"
    );
    assert_eq!(bl[32], 0x80, "UGAVALID");
    assert_eq!(&bl[44..48], &limits.max_transfer_blocks.to_be_bytes());
}

#[test]
fn fully_provisioned_lu_refuses_unmap_and_reports_everything_mapped() {
    for (store, thin) in [
        (
            Arc::new(MemStore::new(BS, BLOCKS)) as Arc<dyn BlockStore>,
            false,
        ),
        // Asked to be thin over a store that cannot unmap: fully provisioned.
        (Arc::new(NoUnmap(MemStore::new(BS, BLOCKS))), true),
    ] {
        let lun = lun_over(store, thin, None);
        assert!(!lun.map.get(0).unwrap().config().thin);
        let mut rc16 = vec![0u8; 16];
        rc16[0] = 0x9E;
        rc16[1] = 0x10;
        rc16[13] = 32;
        assert_eq!(lun.good(&rc16, &[])[14], 0);
        assert_eq!(&lun.vpd(0xB2)[4..], &[0; 4]);
        assert_eq!(
            &lun.vpd(0xB0)[20..28],
            &[0; 8],
            "no unmap limits without LBPU"
        );
        let list = unmap_list(&[(0, 1)]);
        let r = lun.run(&unmap_cdb(list.len() as u16), &list);
        assert_sense(&r, SenseKey::IllegalRequest, 0x20, 0);
        let r = lun.run(&write_same10(0, 1, 0x08), &[0; BS as usize]);
        assert_sense(&r, SenseKey::IllegalRequest, 0x24, 0);
        assert_eq!(lun.lba_status(10, 64), vec![(10, (BLOCKS - 10) as u32, 0)]);
    }
}

#[test]
fn unmap_reads_back_zero_and_reports_deallocated() {
    let lun = thin_lun();
    lun.fill(0, 1024, 0xAB);
    assert_eq!(lun.lba_status(0, 24), vec![(0, 1024, 0)]);
    let list = unmap_list(&[(SHARD, SHARD as u32), (700, 3)]);
    lun.good(&unmap_cdb(list.len() as u16), &list);
    assert!(all(&lun.read(SHARD as u32, SHARD as u16), 0));
    assert!(all(&lun.read(700, 3), 0), "partial run reads zero (LBPRZ)");
    assert!(all(&lun.read(703, 1), 0xAB));
    assert!(all(&lun.read(255, 1), 0xAB));
    // Mapped, deallocated, mapped again, then never written.
    assert_eq!(
        lun.lba_status(0, 8 + 16 * 8),
        vec![
            (0, 256, 0),
            (256, 256, 1),
            (512, 512, 0),
            (1024, (BLOCKS - 1024) as u32, 1)
        ]
    );
    // The first descriptor starts at the starting LBA; the allocation length
    // truncates but PARAMETER DATA LENGTH does not change.
    assert_eq!(lun.lba_status(300, 24), vec![(300, 212, 1)]);
    let d = lun.good(&get_lba_status(0, 10), &[]);
    assert_eq!(d.len(), 10);
    assert_eq!(&d[..4], &[0, 0, 0, 4 + 16]);
}

#[test]
fn get_lba_status_beyond_the_end_is_out_of_range() {
    let lun = thin_lun();
    for lba in [BLOCKS, BLOCKS + 1, 1 << 63, u64::MAX] {
        assert_sense(
            &lun.run(&get_lba_status(lba, 24), &[]),
            SenseKey::IllegalRequest,
            0x21,
            0,
        );
    }
    assert_eq!(lun.lba_status(BLOCKS - 1, 24), vec![(BLOCKS - 1, 1, 1)]);
}

#[test]
fn unmap_parameter_list_checks() {
    let lun = thin_lun();
    lun.fill(0, 16, 0x11);
    // No parameter list: nothing to do.
    lun.good(&unmap_cdb(0), &[]);
    // Shorter than the header.
    let r = lun.run(&unmap_cdb(4), &[0, 0, 0, 0]);
    assert_sense(&r, SenseKey::IllegalRequest, 0x1A, 0);
    // Header announces two descriptors, one arrived.
    let mut list = unmap_list(&[(0, 1), (1, 1)]);
    list.truncate(24);
    let r = lun.run(&unmap_cdb(24), &list);
    assert_sense(&r, SenseKey::IllegalRequest, 0x1A, 0);
    // PARAMETER LIST LENGTH larger than the data-out that arrived: same.
    let r = lun.run(&unmap_cdb(40), &list);
    assert_sense(&r, SenseKey::IllegalRequest, 0x1A, 0);
    // UNMAP DATA LENGTH too small for the descriptors.
    let mut bad = unmap_list(&[(0, 1)]);
    bad[1] = 4;
    let r = lun.run(&unmap_cdb(bad.len() as u16), &bad);
    assert_sense(&r, SenseKey::IllegalRequest, 0x26, 0);
    assert_eq!(field_byte(&r), 0);
    // ANCHOR is not supported.
    let ok = unmap_list(&[(0, 1)]);
    let mut anchored = unmap_cdb(ok.len() as u16);
    anchored[1] = 0x01;
    let r = lun.run(&anchored, &ok);
    assert_sense(&r, SenseKey::IllegalRequest, 0x24, 0);
    assert_eq!(r.sense.unwrap().field.unwrap().bit, Some(0));
    // A range past the end: LBA OUT OF RANGE, and the valid first descriptor was
    // not applied either.
    let list = unmap_list(&[(0, 1), (BLOCKS - 1, 2)]);
    let r = lun.run(&unmap_cdb(list.len() as u16), &list);
    assert_sense(&r, SenseKey::IllegalRequest, 0x21, 0);
    assert!(all(&lun.read(0, 1), 0x11));
    // Zero-length descriptors, even at the end of the medium, are no-ops.
    let list = unmap_list(&[(5, 0), (BLOCKS, 0)]);
    lun.good(&unmap_cdb(list.len() as u16), &list);
    assert!(all(&lun.read(5, 1), 0x11));
    // An incomplete trailing descriptor is ignored.
    let mut list = unmap_list(&[(2, 1)]);
    list.extend_from_slice(&[0; 8]);
    list[3] = 24;
    list[1] = 30;
    lun.good(&unmap_cdb(list.len() as u16), &list);
    assert!(all(&lun.read(2, 1), 0));
    assert!(all(&lun.read(3, 1), 0x11));
}

#[test]
fn unmap_limits_are_enforced() {
    let limits = Limits {
        max_unmap_blocks: 100,
        max_unmap_descriptors: 4,
        ..Limits::for_block_size(BS)
    };
    let lun = lun_over(Arc::new(MemStore::new(BS, BLOCKS)), true, Some(limits));
    let bl = lun.vpd(0xB0);
    assert_eq!(&bl[20..28], &[0, 0, 0, 100, 0, 0, 0, 4]);
    lun.fill(0, 200, 0x22);
    // Five descriptors: INVALID FIELD IN PARAMETER LIST at the descriptor length.
    let list = unmap_list(&[(0, 1), (1, 1), (2, 1), (3, 1), (4, 1)]);
    let r = lun.run(&unmap_cdb(list.len() as u16), &list);
    assert_sense(&r, SenseKey::IllegalRequest, 0x26, 0);
    assert_eq!(field_byte(&r), 2);
    // 60 + 60 blocks: over MAXIMUM UNMAP LBA COUNT in total, pointing at the second
    // descriptor's count. Nothing unmapped.
    let list = unmap_list(&[(0, 60), (60, 60)]);
    let r = lun.run(&unmap_cdb(list.len() as u16), &list);
    assert_sense(&r, SenseKey::IllegalRequest, 0x26, 0);
    assert_eq!(field_byte(&r), 8 + 16 + 8);
    assert!(all(&lun.read(0, 1), 0x22));
    // Exactly at the limits: fine.
    let list = unmap_list(&[(0, 25), (25, 25), (50, 25), (75, 25)]);
    lun.good(&unmap_cdb(list.len() as u16), &list);
    assert!(all(&lun.read(0, 100), 0));
    assert!(all(&lun.read(100, 1), 0x22));
}

#[test]
fn write_same_with_unmap_and_ndob() {
    let lun = thin_lun();
    let zero = vec![0u8; BS as usize];
    lun.fill(0, 1024, 0x33);
    // WRITE SAME(10) UNMAP with a zero block deallocates (a whole MemStore run here).
    lun.good(&write_same10(SHARD as u32, SHARD as u16, 0x08), &zero);
    assert!(all(&lun.read(SHARD as u32, SHARD as u16), 0));
    assert_eq!(lun.lba_status(SHARD, 24), vec![(SHARD, SHARD as u32, 1)]);
    // A partial, unaligned range still reads zero.
    lun.good(&write_same10(3, 5, 0x08), &zero);
    assert!(all(&lun.read(3, 5), 0));
    assert!(all(&lun.read(8, 1), 0x33));
    // UNMAP with a non-zero block deallocates too (LIO; libiscsi's
    // test_writesame10_unmap_until_end sends FFh and expects zeroes).
    lun.fill(20, 2, 0x5A);
    lun.good(&write_same10(20, 2, 0x08), &[0xFF; BS as usize]);
    assert!(all(&lun.read(20, 2), 0));
    // Without UNMAP the block is written.
    lun.good(&write_same10(22, 2, 0), &[0x5B; BS as usize]);
    assert!(all(&lun.read(22, 2), 0x5B));
    // The data-out is still checked with UNMAP.
    let r = lun.run(&write_same10(20, 2, 0x08), &[0; 100]);
    assert_sense(&r, SenseKey::IllegalRequest, 0x0E, 0x03);
    // ANCHOR (with or without UNMAP): ANC_SUP=0.
    for flags in [0x10, 0x18] {
        let r = lun.run(&write_same10(0, 1, flags), &zero);
        assert_sense(&r, SenseKey::IllegalRequest, 0x24, 0);
    }
    // WRITE SAME(16) NDOB + UNMAP: no data-out, deallocates.
    lun.good(&write_same16(2 * SHARD, SHARD as u32, 0x09), &[]);
    assert_eq!(
        lun.lba_status(2 * SHARD, 24)[0],
        (2 * SHARD, SHARD as u32, 1)
    );
    // NDOB without UNMAP writes zeroes.
    lun.good(&write_same16(30, 4, 0x01), &[]);
    assert!(all(&lun.read(30, 4), 0));
    assert!(all(&lun.read(34, 1), 0x33));
    assert_eq!(
        crate::parse_cdb(&write_same16(0, 1, 0x01))
            .unwrap()
            .data_out_len(BS),
        0
    );
    // NDOB does not exist in WRITE SAME(10): reserved bit.
    let r = lun.run(&write_same10(0, 1, 0x01), &zero);
    assert_sense(&r, SenseKey::IllegalRequest, 0x24, 0);
    // UNMAP to the end of the medium (NUMBER OF BLOCKS 0).
    lun.fill(BLOCKS as u32 - 3, 3, 0x44);
    lun.good(&write_same10(BLOCKS as u32 - 3, 0, 0x08), &zero);
    assert!(all(&lun.read(BLOCKS as u32 - 3, 3), 0));
}

#[test]
fn file_store_holes_through_get_lba_status() {
    let dir = tempfile::tempdir().unwrap();
    let opts = FileStoreOptions {
        block_size: 4096,
        create_size: Some(4 << 20),
        ..Default::default()
    };
    let store = Arc::new(FileStore::open(dir.path().join("thin.img"), &opts).unwrap());
    let blocks = store.num_blocks();
    let lun = lun_over(store, true, None);
    assert!(lun.map.get(0).unwrap().config().thin);
    // A fresh sparse file is one hole.
    assert_eq!(lun.lba_status(0, 24), vec![(0, blocks as u32, 1)]);
    let data = vec![0xC3u8; 4096 * 64];
    lun.good(&write10(0, 64, 0), &data);
    let list = unmap_list(&[(16, 8)]);
    lun.good(&unmap_cdb(list.len() as u16), &list);
    let mut back = vec![1u8; 4096 * 8];
    lun.store().read(16, &mut back).unwrap();
    assert!(all(&back, 0));
    assert_eq!(
        lun.lba_status(0, 8 + 16 * 4),
        vec![
            (0, 16, 0),
            (16, 8, 1),
            (24, 40, 0),
            (64, (blocks - 64) as u32, 1)
        ]
    );
}

#[test]
fn compare_and_write_success_and_miscompare() {
    let lun = thin_lun();
    let bs = BS as usize;
    lun.fill(10, 2, b'A');
    let mut data = vec![b'A'; 2 * bs];
    data.extend(vec![b'B'; 2 * bs]);
    lun.good(&caw(10, 2), &data);
    assert!(all(&lun.read(10, 2), b'B'));
    // Miscompare in the second block: INFORMATION is the byte offset, VALID=1, and
    // nothing is written.
    let mut data = vec![b'B'; 2 * bs];
    data[bs + 27] = b'C';
    data.extend(vec![b'D'; 2 * bs]);
    let r = lun.run(&caw(10, 2), &data);
    assert_sense(&r, SenseKey::Miscompare, 0x1D, 0);
    assert_eq!(r.sense.as_ref().unwrap().info, Some(bs as u64 + 27));
    let fixed = r.sense_bytes();
    assert_eq!(fixed[0], 0xF0, "VALID + current fixed format");
    assert_eq!(u32::from_be_bytes(fixed[3..7].try_into().unwrap()), BS + 27);
    assert!(all(&lun.read(10, 2), b'B'));
    // Never-written blocks compare as zeroes.
    let mut data = vec![0u8; bs];
    data.extend(vec![b'E'; bs]);
    lun.good(&caw(100, 1), &data);
    assert!(all(&lun.read(100, 1), b'E'));
    // FUA and DPO are accepted (DPOFUA=1).
    let mut data = vec![b'E'; bs];
    data.extend(vec![b'F'; bs]);
    let mut c = caw(100, 1);
    c[1] = 0x18;
    lun.good(&c, &data);
    assert!(all(&lun.read(100, 1), b'F'));
}

#[test]
fn compare_and_write_field_checks() {
    let lun = thin_lun();
    let bs = BS as usize;
    // Over MAXIMUM COMPARE AND WRITE LENGTH (255 by default; 4 here).
    let limits = Limits {
        max_compare_write_blocks: 4,
        ..Limits::for_block_size(BS)
    };
    let small = lun_over(Arc::new(MemStore::new(BS, BLOCKS)), false, Some(limits));
    assert_eq!(small.vpd(0xB0)[5], 4);
    let r = small.run(&caw(0, 5), &vec![0; 10 * bs]);
    assert_sense(&r, SenseKey::IllegalRequest, 0x24, 0);
    assert_eq!(field_byte(&r), 13);
    // Data-out not exactly both halves (libiscsi's invalid_dataout_size).
    for len in [bs, 3 * bs, 4 * bs] {
        let r = lun.run(&caw(0, 1), &vec![0; len]);
        assert_sense(&r, SenseKey::IllegalRequest, 0x24, 0);
    }
    // Range.
    let r = lun.run(&caw(BLOCKS - 1, 2), &vec![0; 4 * bs]);
    assert_sense(&r, SenseKey::IllegalRequest, 0x21, 0);
    // Zero blocks: nothing to do; but with data-out (256 blocks wrapped to 0 in the
    // one-byte field, libiscsi 1.19's CompareAndWrite.Simple) it is an error.
    lun.good(&caw(0, 0), &[]);
    let r = lun.run(&caw(0, 0), &vec![0; 512 * bs]);
    assert_sense(&r, SenseKey::IllegalRequest, 0x24, 0);
    // WRPROTECT and the reserved bits.
    let mut c = caw(0, 1);
    c[1] = 0x20;
    assert_sense(
        &lun.run(&c, &vec![0; 2 * bs]),
        SenseKey::IllegalRequest,
        0x24,
        0,
    );
    let mut c = caw(0, 1);
    c[11] = 1;
    assert_sense(
        &lun.run(&c, &vec![0; 2 * bs]),
        SenseKey::IllegalRequest,
        0x24,
        0,
    );
}

/// A store that writes one block at a time and pauses in between, so that two
/// unsynchronised multi-block writes interleave.
struct Slow(MemStore);

impl BlockStore for Slow {
    blockdev::forward_to!(0: block_size, num_blocks, capabilities, read, flush);
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), BlockError> {
        for (i, block) in data.chunks(BS as usize).enumerate() {
            self.0.write(lba + i as u64, block, fua)?;
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
        Ok(())
    }
}

/// Without the range lock a WRITE and a COMPARE AND WRITE of the same two blocks
/// interleave on the `Slow` store and leave one block from each.
#[test]
fn compare_and_write_is_atomic_against_writes() {
    let lun = Arc::new(lun_over(
        Arc::new(Slow(MemStore::new(BS, BLOCKS))),
        true,
        None,
    ));
    let bs = BS as usize;
    let lba = 10u64;
    let tagged = move |tag: u8| vec![tag; 2 * bs];
    lun.good(&write10(lba as u32, 2, 0), &tagged(1));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (lun, stop) = (lun.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut tag = 1u8;
            let mut writes = 0u32;
            while !stop.load(Ordering::Relaxed) {
                tag = tag.wrapping_add(2) | 1; // odd tags
                lun.good(&write10(lba as u32, 2, 0), &tagged(tag));
                writes += 1;
                // Leave a torn result (if any) in place long enough to be matched.
                for _ in 0..20 {
                    std::thread::yield_now();
                }
            }
            writes
        })
    };
    let mut successes = 0u32;
    let mut miscompares = 0u32;
    for i in 0..1000u32 {
        // A plain READ may see a WRITE half done; COMPARE AND WRITE then miscompares.
        let seen = lun.read(lba as u32, 2);
        let mut data = seen.clone();
        data.extend(tagged((i as u8).wrapping_mul(2))); // even tags
        let r = lun.run(&caw(lba, 2), &data);
        match r.status {
            Status::Good => {
                // What matched the medium, atomically, must be one whole tag: a torn
                // medium at a moment when nothing else was writing would show here.
                assert!(all(&seen, seen[0]), "torn medium matched at iteration {i}");
                successes += 1;
            }
            _ => {
                assert_sense(&r, SenseKey::Miscompare, 0x1D, 0);
                miscompares += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    let end = lun.read(lba as u32, 2);
    assert!(all(&end, end[0]), "torn final state");
    assert!(
        successes > 0 && writes > 0,
        "{successes} {miscompares} {writes}"
    );
}

/// COMPARE AND WRITE as a counter: concurrent increments never get lost.
#[test]
fn compare_and_write_increments_are_never_lost() {
    let lun = Arc::new(thin_lun());
    let bs = BS as usize;
    let lba = SHARD - 1;
    let value = move |v: u64| {
        let mut d = vec![0u8; 2 * bs];
        d[..8].copy_from_slice(&v.to_be_bytes());
        d[2 * bs - 8..].copy_from_slice(&v.to_be_bytes());
        d
    };
    lun.good(&write10(lba as u32, 2, 0), &value(0));
    const PER_THREAD: u64 = 300;
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let lun = lun.clone();
            std::thread::spawn(move || {
                let mut done = 0;
                while done < PER_THREAD {
                    let seen = lun.read(lba as u32, 2);
                    let v = u64::from_be_bytes(seen[..8].try_into().unwrap());
                    let mut data = seen;
                    data.extend(value(v + 1));
                    if lun.run(&caw(lba, 2), &data).status == Status::Good {
                        done += 1;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let end = lun.read(lba as u32, 2);
    let count = |at: usize| u64::from_be_bytes(end[at..at + 8].try_into().unwrap());
    assert_eq!(
        (count(0), count(2 * bs - 8)),
        (2 * PER_THREAD, 2 * PER_THREAD)
    );
}

#[test]
fn write_atomic_default_limits() {
    let lun = thin_lun();
    let bs = BS as usize;
    let bl = lun.vpd(0xB0);
    let limits = Limits::for_block_size(BS);
    assert_eq!(&bl[44..48], &limits.max_transfer_blocks.to_be_bytes());
    assert_eq!(&bl[48..56], &[0; 8], "no alignment or granularity");
    assert_eq!(
        &bl[56..64],
        &[bl[44], bl[45], bl[46], bl[47], bl[44], bl[45], bl[46], bl[47]]
    );
    lun.good(&write_atomic(7, 0, 3), &vec![0x77; 3 * bs]);
    assert!(all(&lun.read(7, 3), 0x77));
    lun.good(&write_atomic(BLOCKS - 256, 0, 256), &vec![0x78; 256 * bs]);
    // Zero blocks; out of range, overflow.
    lun.good(&write_atomic(0, 0, 0), &[]);
    for (lba, n) in [
        (BLOCKS + 1, 0),
        (1 << 63, 0),
        (u64::MAX, 1),
        (BLOCKS - 1, 2),
    ] {
        let r = lun.run(&write_atomic(lba, 0, n), &vec![0; n as usize * bs]);
        assert_sense(&r, SenseKey::IllegalRequest, 0x21, 0);
    }
    // Short data-out: an atomic write is all or nothing.
    let r = lun.run(&write_atomic(40, 0, 2), &vec![0x79; bs]);
    assert_sense(&r, SenseKey::IllegalRequest, 0x24, 0);
    assert!(all(&lun.read(40, 2), 0));
    // WRPROTECT: no protection information.
    for prot in 1..8u8 {
        let mut c = write_atomic(0, 0, 1);
        c[1] = prot << 5;
        assert_sense(
            &lun.run(&c, &vec![0; bs]),
            SenseKey::IllegalRequest,
            0x24,
            0,
        );
    }
    // DPO/FUA accepted.
    let mut c = write_atomic(0, 0, 1);
    c[1] = 0x18;
    lun.good(&c, &vec![0x7A; bs]);
    assert!(all(&lun.read(0, 1), 0x7A));
}

#[test]
fn write_atomic_alignment_granularity_and_length() {
    let limits = Limits {
        max_atomic_blocks: 16,
        atomic_alignment: 8,
        atomic_granularity: 4,
        ..Limits::for_block_size(BS)
    };
    let lun = lun_over(Arc::new(MemStore::new(BS, BLOCKS)), false, Some(limits));
    let bs = BS as usize;
    let bl = lun.vpd(0xB0);
    assert_eq!(&bl[44..56], &[0, 0, 0, 16, 0, 0, 0, 8, 0, 0, 0, 4]);
    lun.good(&write_atomic(8, 0, 8), &vec![0x81; 8 * bs]);
    assert!(all(&lun.read(8, 8), 0x81));
    // Misaligned LBA → field pointer at the LBA.
    let r = lun.run(&write_atomic(1, 0, 4), &vec![0; 4 * bs]);
    assert_sense(&r, SenseKey::IllegalRequest, 0x24, 0);
    assert_eq!(field_byte(&r), 2);
    // Not a multiple of the granularity → the transfer length.
    let r = lun.run(&write_atomic(0, 0, 6), &vec![0; 6 * bs]);
    assert_sense(&r, SenseKey::IllegalRequest, 0x24, 0);
    assert_eq!(field_byte(&r), 12);
    // Over MAXIMUM ATOMIC TRANSFER LENGTH.
    let r = lun.run(&write_atomic(0, 0, 20), &vec![0; 20 * bs]);
    assert_eq!(field_byte(&r), 12);
    // ATOMIC BOUNDARY over the maximum boundary size.
    let r = lun.run(&write_atomic(0, 32, 8), &vec![0; 8 * bs]);
    assert_sense(&r, SenseKey::IllegalRequest, 0x24, 0);
    assert_eq!(field_byte(&r), 10);
    lun.good(&write_atomic(16, 8, 8), &vec![0x82; 8 * bs]);
    assert!(all(&lun.read(16, 8), 0x82));
    assert!(all(&lun.read(8, 8), 0x81), "neighbours untouched");
}

#[test]
fn new_commands_are_reported_and_task_management_is_reported() {
    let lun = thin_lun();
    let all_ops = lun.good(&[0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0], &[]);
    let listed: Vec<(u8, u16)> = all_ops[4..]
        .chunks(8)
        .map(|d| (d[0], u16::from_be_bytes([d[2], d[3]])))
        .collect();
    for want in [(0x42, 0), (0x89, 0), (0x9C, 0), (0x9E, 0x12), (0xA3, 0x0D)] {
        assert!(listed.contains(&want), "{want:02x?} listed");
    }
    // One-command format: DPO and FUA usage for COMPARE AND WRITE and WRITE ATOMIC
    // (libiscsi's *_dpofua tests compare them with the DPOFUA mode bit).
    for op in [0x89u8, 0x9C] {
        let d = lun.good(&[0xA3, 0x0C, 0x01, op, 0, 0, 0, 0, 1, 0, 0, 0], &[]);
        assert_eq!(&d[..4], &[0, 0x03, 0, 16]);
        assert_eq!(d[5] & 0x18, 0x18);
        assert_eq!(d[5] & 0xE0, 0, "no WRPROTECT");
    }
    let d = lun.good(&[0xA3, 0x0C, 0x02, 0x9E, 0, 0x12, 0, 0, 1, 0, 0, 0], &[]);
    assert_eq!(&d[..6], &[0, 0x03, 0, 16, 0x9E, 0x12]);
    // REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS, both formats.
    let d = lun.good(&[0xA3, 0x0D, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0, 0], &[]);
    assert_eq!(d, vec![0xDA, 0, 0, 0]);
    let d = lun.good(&[0xA3, 0x0D, 0x80, 0, 0, 0, 0, 0, 0, 0xFF, 0, 0], &[]);
    assert_eq!((d.len(), d[3]), (16, 0x0C));
    let r = lun.run(&[0xA3, 0x0D, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0], &[]);
    assert_sense(&r, SenseKey::IllegalRequest, 0x24, 0);
}

#[test]
fn read_only_lu_refuses_the_new_writes() {
    let store = Arc::new(MemStore::new(BS, BLOCKS));
    let mut map = LunMap::new(Arc::new(TargetInfo {
        name: "iqn.2026-11.org.switchyard:ro".into(),
        port_name: "iqn.2026-11.org.switchyard:ro,t,0x0001".into(),
    }));
    let cfg = LuConfig {
        thin: true,
        read_only: true,
        ..LuConfig::default()
    };
    map.insert(0, Arc::new(LogicalUnit::new(cfg, store)));
    let lun = Lun { map, n: nexus(2) };
    lun.run(&TUR, &[]);
    let bs = BS as usize;
    let list = unmap_list(&[(0, 1)]);
    for (cdb, data) in [
        (unmap_cdb(list.len() as u16), list.clone()),
        (caw(0, 1), vec![0; 2 * bs]),
        (write_atomic(0, 0, 1), vec![0; bs]),
        (write_same16(0, 1, 0x09), vec![]),
    ] {
        assert_sense(&lun.run(&cdb, &data), SenseKey::DataProtect, 0x27, 0);
    }
}
