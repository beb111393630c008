//! Against a real third-party target: Debian's tgtd, started on private ports.
//! These tests fail (they never skip) when tgtd is not installed: `apt-get install tgt`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use blockdev::BlockStore;
use bytes::Bytes;
use common::{pattern, read16, write16, Tgtd};
use iscsi_initiator::{ChapCredentials, Client, RemoteStore, RemoteStoreOptions, Session};

const T: Duration = Duration::from_secs(30);
/// tgtd's LU is LUN 1 (LUN 0 is its controller).
const LUN: u64 = 1;

async fn clear_ua(c: &Client) {
    for _ in 0..4 {
        if c.execute(LUN, &[0; 6], Bytes::new(), 0, T)
            .await
            .unwrap()
            .is_good()
        {
            return;
        }
    }
}

#[tokio::test]
async fn tgtd_login_and_qd16_io() {
    let tgtd = Tgtd::start(64 << 20, None, None);
    let mut cfg = tgtd.config();
    cfg.sessions = 2;
    let c = Client::connect(cfg).await.expect("login to tgtd");
    let p = c.sessions()[0].params();
    eprintln!("negotiated with tgtd: {p:?}");
    clear_ua(&c).await;
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for r in 0..2u64 {
                let lba = (w * 2 + r) * 2048 % (60 * 2048);
                let data = pattern(w, lba, 1 << 20);
                let o = c
                    .execute(LUN, &write16(lba, 2048), Bytes::from(data.clone()), 0, T)
                    .await
                    .unwrap();
                assert!(o.is_good(), "{:?}", o.sense_info());
                let o = c
                    .execute(LUN, &read16(lba, 2048), Bytes::new(), 1 << 20, T)
                    .await
                    .unwrap();
                assert!(o.is_good(), "{:?}", o.sense_info());
                assert!(o.data[..] == data[..], "mismatch at {lba}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    c.close().await;
}

#[tokio::test]
async fn tgtd_chap_one_way_and_mutual() {
    let tgtd = Tgtd::start(
        16 << 20,
        Some(("node1", "initiator-secret-1")),
        Some(("tgtd", "target-secret-22")),
    );
    let mut cfg = tgtd.config();
    cfg.chap = Some(ChapCredentials {
        username: "node1".into(),
        secret: "initiator-secret-1".into(),
        mutual: Some(("tgtd".into(), "target-secret-22".into())),
    });
    let s = Session::connect(cfg.clone())
        .await
        .expect("mutual CHAP with tgtd");
    s.logout().await.unwrap();
    cfg.chap.as_mut().unwrap().mutual = None;
    let s = Session::connect(cfg.clone())
        .await
        .expect("one-way CHAP with tgtd");
    s.logout().await.unwrap();
    cfg.chap.as_mut().unwrap().secret = "wrong-secret-000".into();
    let e = Session::connect(cfg)
        .await
        .err()
        .expect("a wrong secret must fail");
    assert!(e.to_string().contains("authentication failed"), "{e}");
}

#[tokio::test]
async fn tgtd_small_limits_and_digests() {
    let tgtd = Tgtd::start(16 << 20, None, None);
    // tgtd's own limits apply (it declares MaxRecvDataSegmentLength); we ask for
    // small bursts and R2T-only writes, with digests.
    let mut cfg = tgtd.config();
    cfg.max_burst = 16384;
    cfg.first_burst = 8192;
    cfg.max_recv_data_segment = 8192;
    cfg.initial_r2t = true;
    cfg.header_digest = true;
    cfg.data_digest = true;
    let c = Client::connect(cfg).await.unwrap();
    let p = c.sessions()[0].params();
    assert!(p.initial_r2t);
    assert!(p.max_burst <= 16384);
    clear_ua(&c).await;
    let data = pattern(5, 0, 1 << 20);
    let o = c
        .execute(LUN, &write16(0, 2048), Bytes::from(data.clone()), 0, T)
        .await
        .unwrap();
    assert!(o.is_good());
    let o = c
        .execute(LUN, &read16(0, 2048), Bytes::new(), 1 << 20, T)
        .await
        .unwrap();
    assert!(o.data[..] == data[..]);
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tgtd_remote_store() {
    let tgtd = Tgtd::start(32 << 20, None, None);
    let c = Client::connect(tgtd.config()).await.unwrap();
    let store = Arc::new(
        RemoteStore::open(c, LUN, RemoteStoreOptions::default())
            .await
            .expect("open tgtd LU"),
    );
    assert_eq!(store.block_size(), 512);
    assert_eq!(store.num_blocks(), 65536);
    eprintln!("tgtd LU: {store:?} caps {:?}", store.capabilities());
    let s = store.clone();
    tokio::task::spawn_blocking(move || {
        let data = pattern(11, 77, 3 << 20);
        s.write(77, &data, true).unwrap();
        let mut back = vec![0u8; data.len()];
        s.read(77, &mut back).unwrap();
        assert!(back == data);
        s.flush().unwrap();
        let mut one = vec![0u8; 512];
        assert!(matches!(
            s.read(65536, &mut one),
            Err(blockdev::BlockError::OutOfRange { .. })
        ));
    })
    .await
    .unwrap();
    store.client().close().await;
}
