//! Copy offload with EXTENDED COPY (`RemoteStore::extended_copy_to`): copies inside a
//! switchyard array (data read back and compared), lists split by our cap and by the
//! array's limits, and every way offload does not apply (tgtd without EXTENDED COPY,
//! two different targets, a destination outside this initiator's LUN map) or fails
//! (ranges beyond the LUs, on our side or the array's).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use blockdev::{BlockError, BlockStore, Capabilities, MemStore};
use common::{pattern, GrowStore, Spec, Target, Tgtd, INITIATOR};
use fcwwn::{AccessRule, InitiatorId, LunSet, Masking};
use iscsi_initiator::{Client, InitiatorConfig, OffloadOutcome, RemoteStore, RemoteStoreOptions};
use parking_lot::Mutex;

const BS: usize = 512;

async fn open(cfg: InitiatorConfig, lun: u64, opts: RemoteStoreOptions) -> Arc<RemoteStore> {
    let c = Client::connect(cfg).await.expect("login");
    Arc::new(
        RemoteStore::open(c, lun, opts)
            .await
            .expect("open remote LU"),
    )
}

/// Blocks `lba..lba+blocks` read through a store.
fn read(s: &dyn BlockStore, lba: u64, blocks: usize) -> Vec<u8> {
    let mut v = vec![0u8; blocks * s.block_size() as usize];
    s.read(lba, &mut v).expect("read back");
    v
}

/// Runs `f` on a blocking thread (the sync API blocks on the store's runtime).
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn copied(r: Result<OffloadOutcome, BlockError>) -> usize {
    match r {
        Ok(OffloadOutcome::Copied { lists }) => lists,
        other => panic!("expected the array to copy, got {other:?}"),
    }
}

fn unsupported(r: Result<OffloadOutcome, BlockError>) -> String {
    match r {
        Ok(OffloadOutcome::Unsupported(why)) => why,
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offload_copies_between_lus_of_a_switchyard_array() {
    let lus: Vec<Arc<dyn BlockStore>> = vec![
        Arc::new(MemStore::new(512, 16384)),
        Arc::new(MemStore::new(512, 16384)),
        Arc::new(MemStore::new(4096, 2048)),
    ];
    let t = Target::start(Spec {
        luns: lus,
        ..Spec::default()
    })
    .await;
    // Two sessions per client: the COPY STATUS must be asked on the session (I_T
    // nexus) that ran the EXTENDED COPY, since the array holds results per nexus.
    let mut cfg = t.config();
    cfg.sessions = 2;
    let opts = RemoteStoreOptions::default;
    let src = open(cfg.clone(), 0, opts()).await;
    let dst = open(cfg.clone(), 1, opts()).await;
    let big = open(cfg, 2, opts()).await;
    let (a, b) = (src.naa_designator().unwrap(), dst.naa_designator().unwrap());
    assert_eq!((a.len(), a[0] >> 4), (16, 6), "NAA 6 from VPD page 83h");
    assert_ne!(a, b);
    assert!(src.lists_third_party_copy_page());

    let (s, d, g) = (src.clone(), dst.clone(), big.clone());
    blocking(move || {
        let src_data = pattern(1, 0, 4096 * BS);
        let dst_data = pattern(2, 0, 4096 * BS);
        s.write(0, &src_data, false).unwrap();
        d.write(0, &dst_data, false).unwrap();
        let src_blocks = |lba: usize, n: usize| &src_data[lba * BS..(lba + n) * BS];
        let old_dst = |lba: usize, n: usize| &dst_data[lba * BS..(lba + n) * BS];

        // 1024 blocks, one list.
        assert_eq!(copied(s.extended_copy_to_blocking(&d, 0, 2048, 1024)), 1);
        assert!(read(&*d, 2048, 1024) == src_blocks(0, 1024));
        assert!(
            read(&*d, 2047, 1) == old_dst(2047, 1),
            "block before untouched"
        );
        assert!(
            read(&*d, 3072, 1) == old_dst(3072, 1),
            "block after untouched"
        );

        // An odd length at odd addresses.
        assert_eq!(copied(s.extended_copy_to_blocking(&d, 3, 1001, 37)), 1);
        assert!(read(&*d, 1001, 37) == src_blocks(3, 37));
        assert!(read(&*d, 1000, 1) == old_dst(1000, 1));
        assert!(read(&*d, 1038, 1) == old_dst(1038, 1));

        // Within one LU (one target descriptor for both ends).
        assert_eq!(copied(s.extended_copy_to_blocking(&s, 100, 9000, 16)), 1);
        assert!(read(&*s, 9000, 16) == src_blocks(100, 16));

        // 512-byte blocks onto a 4096-byte LU: 24 source blocks are 3 destination
        // blocks; 3 source blocks are not whole destination blocks.
        assert_eq!(copied(s.extended_copy_to_blocking(&g, 40, 7, 24)), 1);
        assert!(read(&*g, 7, 3) == src_blocks(40, 24));
        assert!(matches!(
            s.extended_copy_to_blocking(&g, 40, 7, 3),
            Err(BlockError::Misaligned { .. })
        ));

        // Nothing to copy.
        assert_eq!(copied(s.extended_copy_to_blocking(&d, 0, 0, 0)), 0);
    })
    .await;
    // The async form, from a task.
    let lists = copied(src.extended_copy_to(&dst, 200, 12000, 300).await);
    assert_eq!(lists, 1);
    let (s, d) = (src.clone(), dst.clone());
    blocking(move || assert!(read(&*d, 12000, 300) == read(&*s, 200, 300))).await;

    assert_eq!(src.offload_blocks(), 1024 + 37 + 16 + 24 + 300);
    assert_eq!(dst.offload_blocks(), 0);
    for s in [src, dst, big] {
        s.client().close().await;
    }
    t.stop().await;
}

/// Our cap on the bytes of one EXTENDED COPY (`max_copy_bytes`) splits a copy into
/// many lists, more than 256 of them, so that list identifiers wrap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offload_splits_a_copy_into_lists() {
    let t = Target::start(Spec {
        luns: vec![
            Arc::new(MemStore::new(512, 8192)),
            Arc::new(MemStore::new(512, 8192)),
        ],
        ..Spec::default()
    })
    .await;
    let opts = RemoteStoreOptions {
        max_copy_bytes: 8 * BS as u64,
        ..RemoteStoreOptions::default()
    };
    let src = open(t.config(), 0, opts).await;
    let dst = open(t.config(), 1, RemoteStoreOptions::default()).await;
    let (s, d) = (src.clone(), dst.clone());
    blocking(move || {
        let data = pattern(3, 0, 2100 * BS);
        s.write(10, &data, false).unwrap();
        // 2100 blocks in pieces of 8: 262 full lists and one of 4 blocks.
        assert_eq!(copied(s.extended_copy_to_blocking(&d, 10, 5000, 2100)), 263);
        assert!(read(&*d, 5000, 2100) == data);
        assert!(read(&*d, 4999, 1) == vec![0u8; BS]);
        assert!(read(&*d, 7100, 1) == vec![0u8; BS]);
        assert_eq!(s.offload_blocks(), 2100);
    })
    .await;
    src.client().close().await;
    dst.client().close().await;
    t.stop().await;
}

/// Source LU of the large copy: every block's content follows from its LBA, so that
/// 2 GiB need no memory.
struct PatternStore {
    blocks: u64,
}

fn pattern_block(lba: u64, b: &mut [u8]) {
    b.fill(lba.wrapping_mul(31) as u8);
    b[..8].copy_from_slice(&lba.to_le_bytes());
    b[8..16].copy_from_slice(&(!lba).to_le_bytes());
}

impl BlockStore for PatternStore {
    fn block_size(&self) -> u32 {
        BS as u32
    }
    fn num_blocks(&self) -> u64 {
        self.blocks
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            read_only: true,
            ..Capabilities::default()
        }
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.check_buf(lba, buf.len())?;
        for (i, b) in buf.chunks_mut(BS).enumerate() {
            pattern_block(lba + i as u64, b);
        }
        Ok(())
    }
    fn write(&self, _: u64, _: &[u8], _: bool) -> Result<(), BlockError> {
        Err(BlockError::ReadOnly)
    }
    fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }
}

/// Destination LU of the large copy: checks every block written against the
/// source's pattern (destination block `lba` holds source block `lba + shift`) and
/// records which blocks were written.
struct CheckStore {
    blocks: u64,
    shift: u64,
    written: Mutex<Vec<u64>>,
    bad: AtomicU64,
}

impl CheckStore {
    fn new(blocks: u64, shift: u64) -> CheckStore {
        CheckStore {
            blocks,
            shift,
            written: Mutex::new(vec![0; blocks.div_ceil(64) as usize]),
            bad: AtomicU64::new(0),
        }
    }

    fn written_in(&self, lba: u64, blocks: u64) -> u64 {
        let w = self.written.lock();
        (lba..lba + blocks)
            .filter(|&b| w[(b / 64) as usize] & (1 << (b % 64)) != 0)
            .count() as u64
    }
}

impl BlockStore for CheckStore {
    fn block_size(&self) -> u32 {
        BS as u32
    }
    fn num_blocks(&self) -> u64 {
        self.blocks
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.check_buf(lba, buf.len())?;
        buf.fill(0);
        Ok(())
    }
    fn write(&self, lba: u64, data: &[u8], _: bool) -> Result<(), BlockError> {
        self.check_buf(lba, data.len())?;
        let mut want = [0u8; BS];
        let mut w = self.written.lock();
        for (i, b) in data.chunks(BS).enumerate() {
            let at = lba + i as u64;
            pattern_block(at + self.shift, &mut want);
            if b != want {
                self.bad.fetch_add(1, Ordering::Relaxed);
            }
            w[(at / 64) as usize] |= 1 << (at % 64);
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }
}

/// A copy beyond what one parameter list of the array may carry (64 segments of
/// 65535 blocks) is split by the array's OPERATING PARAMETERS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offload_beyond_one_list_of_the_array() {
    const PER_LIST: u64 = 64 * 65535;
    const BLOCKS: u64 = PER_LIST + 777;
    const SRC_LBA: u64 = 5;
    const DST_LBA: u64 = 3;
    let check = Arc::new(CheckStore::new(BLOCKS + 10, SRC_LBA - DST_LBA));
    let t = Target::start(Spec {
        luns: vec![
            Arc::new(PatternStore {
                blocks: BLOCKS + 10,
            }),
            check.clone(),
        ],
        ..Spec::default()
    })
    .await;
    let opts = || RemoteStoreOptions {
        max_copy_bytes: u64::MAX,
        ..RemoteStoreOptions::default()
    };
    let src = open(t.config(), 0, opts()).await;
    let dst = open(t.config(), 1, opts()).await;
    let lists = copied(src.extended_copy_to(&dst, SRC_LBA, DST_LBA, BLOCKS).await);
    assert_eq!(lists, 2);
    assert_eq!(
        check.bad.load(Ordering::Relaxed),
        0,
        "blocks with wrong data"
    );
    assert_eq!(check.written_in(DST_LBA, BLOCKS), BLOCKS);
    assert_eq!(check.written_in(0, DST_LBA), 0);
    assert_eq!(check.written_in(DST_LBA + BLOCKS, 10 - DST_LBA), 0);
    assert_eq!(src.offload_blocks(), BLOCKS);
    src.client().close().await;
    dst.client().close().await;
    t.stop().await;
}

/// tgtd has no EXTENDED COPY: Unsupported, and the destination keeps its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tgtd_without_extended_copy_is_unsupported() {
    let tgtd = Tgtd::start(8 << 20, None, None);
    // A second LU on the same tgtd target.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lu2.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let file = file.to_str().unwrap().to_string();
    tgtd.adm(
        &[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "2",
            "-b",
            &file,
        ],
        true,
    );
    let src = open(tgtd.config(), 1, RemoteStoreOptions::default()).await;
    let dst = open(tgtd.config(), 2, RemoteStoreOptions::default()).await;
    eprintln!(
        "tgtd: NAA {:02x?} / {:02x?}, lists 8Fh: {}",
        src.naa_designator(),
        dst.naa_designator(),
        src.lists_third_party_copy_page()
    );
    let (s, d) = (src.clone(), dst.clone());
    blocking(move || {
        let src_data = pattern(4, 0, 64 * BS);
        let dst_data = pattern(5, 0, 64 * BS);
        s.write(0, &src_data, false).unwrap();
        d.write(0, &dst_data, false).unwrap();
        for _ in 0..2 {
            let why = unsupported(s.extended_copy_to_blocking(&d, 0, 0, 64));
            eprintln!("tgtd: {why}");
            assert!(read(&*d, 0, 64) == dst_data, "the destination changed");
        }
        assert_eq!(s.offload_blocks(), 0);
    })
    .await;
    src.client().close().await;
    dst.client().close().await;
}

/// Two targets (or one name on two portals): Unsupported before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_targets_are_unsupported() {
    let one = Target::start(Spec::default()).await;
    let two = Target::start(Spec {
        name: "iqn.2026-11.org.switchyard:array2".into(),
        ..Spec::default()
    })
    .await;
    let same_name = Target::start(Spec::default()).await;
    let src = open(one.config(), 0, RemoteStoreOptions::default()).await;
    let dst = open(two.config(), 0, RemoteStoreOptions::default()).await;
    let dst_same_name = open(same_name.config(), 0, RemoteStoreOptions::default()).await;
    assert!(src.naa_designator().is_some() && dst.naa_designator().is_some());
    // With the source's sessions closed, anything sent would fail with an error.
    src.client().close().await;
    let (s, d, d2) = (src.clone(), dst.clone(), dst_same_name.clone());
    blocking(move || {
        for d in [d, d2] {
            let why = unsupported(s.extended_copy_to_blocking(&d, 0, 0, 8));
            assert!(why.contains("not on the same target"), "{why}");
        }
    })
    .await;
    assert_eq!(src.offload_blocks(), 0);
    dst.client().close().await;
    dst_same_name.client().close().await;
    for t in [one, two, same_name] {
        t.stop().await;
    }
}

/// The array resolves the destination in the LUN map of the initiator that sends the
/// EXTENDED COPY: a destination LU masked from it is COPY TARGET DEVICE NOT
/// REACHABLE, which is Unsupported (nothing copied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_outside_the_lun_map_is_unsupported() {
    const OTHER: &str = "iqn.2026-11.org.switchyard:node2";
    let masking = Masking::new(
        vec![],
        vec![
            AccessRule::initiator(
                common::TARGET,
                InitiatorId::parse(INITIATOR).unwrap(),
                LunSet::only([0]),
            ),
            AccessRule::initiator(
                common::TARGET,
                InitiatorId::parse(OTHER).unwrap(),
                LunSet::All,
            ),
        ],
    )
    .unwrap();
    let dst_lu = Arc::new(MemStore::new(512, 4096));
    let t = Target::start(Spec {
        luns: vec![Arc::new(MemStore::new(512, 4096)), dst_lu.clone()],
        masking: Some(masking),
        ..Spec::default()
    })
    .await;
    let src = open(t.config(), 0, RemoteStoreOptions::default()).await;
    let mut other = t.config();
    other.initiator_name = OTHER.into();
    let dst = open(other, 1, RemoteStoreOptions::default()).await;
    let (s, d) = (src.clone(), dst.clone());
    let before = pattern(6, 0, 32 * BS);
    let dst_data = before.clone();
    blocking(move || {
        s.write(0, &pattern(7, 0, 32 * BS), false).unwrap();
        d.write(0, &dst_data, false).unwrap();
        let why = unsupported(s.extended_copy_to_blocking(&d, 0, 0, 32));
        assert!(why.contains("NOT REACHABLE"), "{why}");
    })
    .await;
    assert!(read(&*dst_lu, 0, 32) == before, "the destination changed");
    assert_eq!(src.offload_blocks(), 0);
    src.client().close().await;
    dst.client().close().await;
    t.stop().await;
}

/// Out of range is an error, not a fallback: checked against the capacities we know
/// before anything is sent (OutOfRange), and by the array when ours is stale (COPY
/// ABORTED pointing at the segment, as BlockError::Sense 0A/0D/02).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_copies_fail() {
    let grow = Arc::new(GrowStore {
        inner: MemStore::new(512, 4096),
        visible: AtomicU64::new(4096),
    });
    let t = Target::start(Spec {
        luns: vec![Arc::new(MemStore::new(512, 4096)), grow.clone()],
        ..Spec::default()
    })
    .await;
    let src = open(t.config(), 0, RemoteStoreOptions::default()).await;
    let dst = open(t.config(), 1, RemoteStoreOptions::default()).await;
    let (s, d, g) = (src.clone(), dst.clone(), grow.clone());
    blocking(move || {
        let oor = |r: Result<OffloadOutcome, BlockError>| {
            assert!(
                matches!(r, Err(BlockError::OutOfRange { capacity: 4096, .. })),
                "{r:?}"
            );
        };
        oor(s.extended_copy_to_blocking(&d, 4090, 0, 7));
        oor(s.extended_copy_to_blocking(&d, 0, 4095, 2));
        oor(s.extended_copy_to_blocking(&d, u64::MAX, 0, 2));
        assert!(s.extended_copy_to_blocking(&d, 0, 0, u64::MAX).is_err());

        // The array's LU shrinks behind our back: its own check refuses the segment.
        s.write(0, &pattern(8, 0, 64 * BS), false).unwrap();
        let old = pattern(9, 0, 64 * BS);
        d.write(4000, &old, false).unwrap();
        g.visible.store(4032, Ordering::Release);
        match s.extended_copy_to_blocking(&d, 0, 4000, 64) {
            Err(BlockError::Sense {
                key: 0x0a,
                asc: 0x0d,
                ascq: 0x02,
                msg,
            }) => assert!(msg.contains("segment"), "{msg}"),
            other => panic!("expected COPY ABORTED from the array, got {other:?}"),
        }
        let mut back = vec![0u8; 64 * BS];
        g.inner.read(4000, &mut back).unwrap();
        assert!(back == old, "the array copied part of a refused list");
        assert_eq!(s.offload_blocks(), 0);
    })
    .await;
    src.client().close().await;
    dst.client().close().await;
    t.stop().await;
}
