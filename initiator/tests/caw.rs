//! COMPARE AND WRITE passed through `RemoteStore` to the array: support detection at
//! open, success, miscompare with the array's offset, refusals, and atomicity between
//! two nodes (two clients) racing on one block.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use blockdev::{BlockError, BlockStore, CawOutcome, MemStore};
use common::{Spec, Target, Tgtd};
use iscsi_initiator::{CawSupport, Client, InitiatorConfig, RemoteStore, RemoteStoreOptions};
use scsi::Limits;

const BS: usize = 512;

async fn open_cfg(cfg: InitiatorConfig, lun: u64) -> Arc<RemoteStore> {
    let c = Client::connect(cfg).await.unwrap();
    Arc::new(
        RemoteStore::open(c, lun, RemoteStoreOptions::default())
            .await
            .expect("open remote LU"),
    )
}

fn block(lba: u64, array: &MemStore) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    array.read(lba, &mut b).unwrap();
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_write_runs_on_the_array() {
    let array = Arc::new(MemStore::new(512, 4096));
    let t = Target::start(Spec {
        luns: vec![array.clone()],
        ..Spec::default()
    })
    .await;
    let s = open_cfg(t.config(), 0).await;
    assert_eq!(s.compare_and_write_support(), CawSupport::Supported);
    assert!(s.supports_compare_and_write());
    assert_eq!(s.max_compare_write_blocks(), 255);
    let a = array.clone();
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || {
        let s = s2;
        a.write(10, &[1u8; 2 * BS], false).unwrap();
        let out = s
            .compare_and_write(10, &[1u8; 2 * BS], &[2u8; 2 * BS], true)
            .unwrap();
        assert_eq!(out, CawOutcome::Written);
        assert_eq!(block(10, &a), vec![2u8; BS]);
        assert_eq!(block(11, &a), vec![2u8; BS]);
        // Miscompare: the offset is the array's (sense INFORMATION), nothing written.
        let mut expect = vec![2u8; 2 * BS];
        expect[BS + 300] = 0xee;
        let out = s
            .compare_and_write(10, &expect, &[3u8; 2 * BS], false)
            .unwrap();
        assert_eq!(
            out,
            CawOutcome::Miscompare {
                offset: BS as u64 + 300
            }
        );
        assert_eq!(block(11, &a), vec![2u8; BS]);
        // Local checks, before anything is sent.
        assert!(matches!(
            s.compare_and_write(4095, &[0u8; 2 * BS], &[0u8; 2 * BS], false),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            s.compare_and_write(0, &[0u8; BS], &[0u8; 2 * BS], false),
            Err(BlockError::Misaligned { .. })
        ));
        // Longer than MAXIMUM COMPARE AND WRITE LENGTH: refused locally.
        let big = vec![0u8; 256 * BS];
        assert!(matches!(
            s.compare_and_write(0, &big, &big, false),
            Err(BlockError::Unsupported(_))
        ));
    })
    .await
    .unwrap();
    s.client().close().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_array_without_compare_and_write_is_not_asked() {
    // MAXIMUM COMPARE AND WRITE LENGTH 0 in the block limits: not supported.
    let array = Arc::new(MemStore::new(512, 1024));
    let t = Target::start(Spec {
        luns: vec![array.clone()],
        limits: Some(Limits {
            max_compare_write_blocks: 0,
            ..Limits::for_block_size(512)
        }),
        ..Spec::default()
    })
    .await;
    let s = open_cfg(t.config(), 0).await;
    assert_eq!(s.compare_and_write_support(), CawSupport::Unsupported);
    assert!(!s.supports_compare_and_write());
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || {
        assert!(matches!(
            s2.compare_and_write(0, &[0u8; BS], &[1u8; BS], false),
            Err(BlockError::Unsupported(_))
        ));
    })
    .await
    .unwrap();
    assert_eq!(block(0, &array), vec![0u8; BS], "nothing written");
    s.client().close().await;
    t.stop().await;

    // A smaller limit is kept and enforced locally.
    let t = Target::start(Spec {
        luns: vec![Arc::new(MemStore::new(512, 1024))],
        limits: Some(Limits {
            max_compare_write_blocks: 2,
            ..Limits::for_block_size(512)
        }),
        ..Spec::default()
    })
    .await;
    let s = open_cfg(t.config(), 0).await;
    assert_eq!(s.max_compare_write_blocks(), 2);
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || {
        let three = vec![0u8; 3 * BS];
        assert!(matches!(
            s2.compare_and_write(0, &three, &three, false),
            Err(BlockError::Unsupported(_))
        ));
        let two = vec![0u8; 2 * BS];
        assert_eq!(
            s2.compare_and_write(0, &two, &two, false).unwrap(),
            CawOutcome::Written
        );
    })
    .await
    .unwrap();
    s.client().close().await;
    t.stop().await;
}

/// Two stores (two nodes' views of one array LU) increment a counter in block 7 with
/// compare-old/write-new from several threads each. Every successful CAW must count:
/// the counter ends equal to the number of GOOD CAWs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_compare_and_writes_from_two_nodes_never_lose_an_update() {
    let array = Arc::new(MemStore::new(512, 64));
    let t = Target::start(Spec {
        luns: vec![array.clone()],
        ..Spec::default()
    })
    .await;
    let stores = [open_cfg(t.config(), 0).await, open_cfg(t.config(), 0).await];
    let wins = Arc::new(AtomicU64::new(0));
    let enc = |n: u64| -> Vec<u8> { n.to_le_bytes().repeat(BS / 8) };
    let mut threads = Vec::new();
    for s in &stores {
        for _ in 0..3 {
            let (s, wins) = (s.clone(), wins.clone());
            threads.push(tokio::task::spawn_blocking(move || {
                let mut cur = vec![0u8; BS];
                for _ in 0..60 {
                    s.read(7, &mut cur).unwrap();
                    let n = u64::from_le_bytes(cur[..8].try_into().unwrap());
                    match s.compare_and_write(7, &cur, &enc(n + 1), false).unwrap() {
                        CawOutcome::Written => {
                            wins.fetch_add(1, Ordering::SeqCst);
                        }
                        CawOutcome::Miscompare { offset } => assert!(offset < 8, "{offset}"),
                    }
                }
            }));
        }
    }
    for th in threads {
        th.await.unwrap();
    }
    let b = block(7, &array);
    let n = u64::from_le_bytes(b[..8].try_into().unwrap());
    let w = wins.load(Ordering::SeqCst);
    assert!(w > 0);
    assert_eq!(n, w, "counter {n} after {w} successful compare-and-writes");
    assert_eq!(b, enc(n));
    for s in stores {
        s.client().close().await;
    }
    t.stop().await;
}

/// tgtd (a third-party array): whatever it reports, the store must behave — CAW runs
/// on it when it is supported (with miscompares), or is refused without writing.
#[tokio::test]
async fn tgtd_compare_and_write_support_is_detected() {
    let tgtd = Tgtd::start(16 << 20, None, None);
    let s = open_cfg(tgtd.config(), 1).await;
    let support = s.compare_and_write_support();
    eprintln!("tgtd COMPARE AND WRITE support: {support:?}");
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || {
        s2.write(5, &[4u8; BS], false).unwrap();
        let first = s2.compare_and_write(5, &[4u8; BS], &[6u8; BS], false);
        eprintln!("tgtd first CAW: {first:?}");
        match first {
            Ok(CawOutcome::Written) => {
                assert_ne!(s2.compare_and_write_support(), CawSupport::Unsupported);
                let mut b = vec![0u8; BS];
                s2.read(5, &mut b).unwrap();
                assert_eq!(b, vec![6u8; BS]);
                let mut expect = vec![6u8; BS];
                expect[33] = 0;
                let out = s2.compare_and_write(5, &expect, &[7u8; BS], false).unwrap();
                assert!(matches!(out, CawOutcome::Miscompare { .. }), "{out:?}");
                eprintln!("tgtd miscompare: {out:?}");
                s2.read(5, &mut b).unwrap();
                assert_eq!(b, vec![6u8; BS]);
            }
            Err(BlockError::Unsupported(_)) => {
                assert_eq!(s2.compare_and_write_support(), CawSupport::Unsupported);
                assert!(!s2.supports_compare_and_write());
                let mut b = vec![0u8; BS];
                s2.read(5, &mut b).unwrap();
                assert_eq!(b, vec![4u8; BS]);
            }
            other => panic!("{other:?}"),
        }
    })
    .await
    .unwrap();
    s.client().close().await;
    drop(tgtd);
}
