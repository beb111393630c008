//! `RemoteStore` through the `BlockStore` trait from blocking threads, and a node that
//! serves a remote LU as its own (node → array chaining).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use blockdev::{BlockError, BlockStore, MemStore};
use bytes::Bytes;
use common::{pattern, read16, write16, GrowStore, Spec, Target};
use iscsi_initiator::{Client, RemoteStore, RemoteStoreOptions};
use scsi::Limits;

const T: Duration = Duration::from_secs(20);

async fn open(t: &Target, opts: RemoteStoreOptions) -> Arc<RemoteStore> {
    let c = Client::connect(t.config()).await.unwrap();
    Arc::new(RemoteStore::open(c, 0, opts).await.expect("open remote LU"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_store_over_a_remote_lu() {
    let array = Arc::new(MemStore::new(512, 65536));
    let t = Target::start(Spec {
        luns: vec![array.clone()],
        // A small MAXIMUM TRANSFER LENGTH: large I/O must be split.
        limits: Some(Limits {
            max_transfer_blocks: 256,
            ..Limits::for_block_size(512)
        }),
        thin: true,
        ..Spec::default()
    })
    .await;
    let store = open(&t, RemoteStoreOptions::default()).await;
    assert_eq!(store.block_size(), 512);
    assert_eq!(store.num_blocks(), 65536);
    assert_eq!(store.max_transfer_blocks(), 256);
    let caps = store.capabilities();
    assert!(caps.unmap && caps.lba_status && !caps.read_only);

    let s = store.clone();
    let a = array.clone();
    tokio::task::spawn_blocking(move || {
        // 3 MiB + 1 block at an odd LBA: 13 pieces, in flight together.
        let len = (3 << 20) + 512;
        let data = pattern(7, 1001, len);
        s.write(1001, &data, true).unwrap();
        let mut back = vec![0u8; len];
        s.read(1001, &mut back).unwrap();
        assert!(back == data);
        // The array holds the same bytes.
        let mut direct = vec![0u8; len];
        a.read(1001, &mut direct).unwrap();
        assert!(direct == data);
        s.flush().unwrap();

        // Errors map to BlockError.
        let mut one = vec![0u8; 512];
        assert!(matches!(
            s.read(65536, &mut one),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            s.read(0, &mut [0u8; 100]),
            Err(BlockError::Misaligned { .. })
        ));

        // Thin provisioning: unmap and LBA status.
        s.write(8192, &pattern(1, 8192, 256 * 512), false).unwrap();
        assert!(s.lba_status(8192).unwrap().mapped);
        s.unmap(8192, 256).unwrap();
        let st = s.lba_status(8192).unwrap();
        assert!(!st.mapped, "{st:?}");
        let mut z = vec![1u8; 256 * 512];
        s.read(8192, &mut z).unwrap();
        assert!(z.iter().all(|&b| b == 0));
    })
    .await
    .unwrap();
    store.client().close().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmap_unsupported_without_lbpu() {
    let t = Target::start(Spec::default()).await;
    let store = open(&t, RemoteStoreOptions::default()).await;
    assert!(!store.capabilities().unmap);
    let s = store.clone();
    tokio::task::spawn_blocking(move || {
        assert!(matches!(s.unmap(0, 8), Err(BlockError::Unsupported(_))));
    })
    .await
    .unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_change_unit_attention_refreshes_capacity() {
    let grow = Arc::new(GrowStore {
        inner: MemStore::new(512, 8192),
        visible: 4096.into(),
    });
    let t = Target::start(Spec {
        luns: vec![grow.clone()],
        ..Spec::default()
    })
    .await;
    let store = open(&t, RemoteStoreOptions::default()).await;
    assert_eq!(store.num_blocks(), 4096);
    grow.visible.store(8192, Ordering::Release);
    t.lus[0].capacity_changed();
    let s = store.clone();
    tokio::task::spawn_blocking(move || {
        // The next command meets 06/2A/09: capacity is re-read and the command retried.
        let mut b = vec![0u8; 4096];
        s.read(0, &mut b).unwrap();
        assert_eq!(s.num_blocks(), 8192);
        s.write(8000, &pattern(3, 8000, 4096), false).unwrap();
    })
    .await
    .unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_become_io_errors_naming_the_backend() {
    let slow = Arc::new(common::SlowStore::new(4096));
    let t = Target::start(Spec {
        luns: vec![slow.clone()],
        ..Spec::default()
    })
    .await;
    let store = open(
        &t,
        RemoteStoreOptions {
            timeout: Duration::from_millis(300),
            ..RemoteStoreOptions::default()
        },
    )
    .await;
    slow.delay_ms.store(1000, Ordering::Release);
    let s = store.clone();
    let e = tokio::task::spawn_blocking(move || s.read(0, &mut [0u8; 512]).unwrap_err())
        .await
        .unwrap();
    // A timed-out back-end command reaches the host as NOT READY, LOGICAL UNIT IS IN
    // PROCESS OF BECOMING READY (04/01), which Linux retries; the message names the
    // back-end for the node's log.
    let BlockError::Sense { key, asc, ascq, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!((*key, *asc, *ascq), (0x02, 0x04, 0x01), "{e}");
    assert!(e.to_string().contains(common::TARGET), "{e}");
    assert!(e.to_string().contains("did not complete"), "{e}");
    slow.delay_ms.store(0, Ordering::Release);
    t.stop().await;
}

/// A node serves a back-end LU it reaches over iSCSI: host → node → array.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_serves_a_remote_lu() {
    let array_store = Arc::new(MemStore::new(512, 32768));
    let array = Target::start(Spec {
        luns: vec![array_store.clone()],
        name: "iqn.2026-11.org.switchyard:array1".into(),
        ..Spec::default()
    })
    .await;
    let remote = open(&array, RemoteStoreOptions::default()).await;
    let node = Target::start(Spec {
        luns: vec![remote.clone()],
        name: "iqn.2026-11.org.switchyard:node".into(),
        ..Spec::default()
    })
    .await;
    let host = Client::connect(node.config()).await.unwrap();
    for _ in 0..4 {
        if host
            .execute(0, &[0; 6], Bytes::new(), 0, T)
            .await
            .unwrap()
            .is_good()
        {
            break;
        }
    }
    // READ CAPACITY(16) through the node shows the array's LU.
    let mut rc = [0u8; 16];
    rc[0] = 0x9e;
    rc[1] = 0x10;
    rc[13] = 32;
    let o = host.execute(0, &rc, Bytes::new(), 32, T).await.unwrap();
    assert_eq!(u64::from_be_bytes(o.data[..8].try_into().unwrap()), 32767);
    // Host writes through the node land on the array, and back.
    let data = pattern(9, 100, 1 << 20);
    let o = host
        .execute(0, &write16(100, 2048), Bytes::from(data.clone()), 0, T)
        .await
        .unwrap();
    assert!(o.is_good(), "{:?}", o.sense_info());
    let a = array_store.clone();
    let direct = tokio::task::spawn_blocking(move || {
        let mut v = vec![0u8; 1 << 20];
        a.read(100, &mut v).unwrap();
        v
    })
    .await
    .unwrap();
    assert!(direct == data);
    let o = host
        .execute(0, &read16(100, 2048), Bytes::new(), 1 << 20, T)
        .await
        .unwrap();
    assert!(o.data[..] == data[..]);
    host.close().await;
    node.stop().await;
    array.stop().await;
}
