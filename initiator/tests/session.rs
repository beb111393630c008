//! Sessions against our own target in-process: login with and without CHAP, data at
//! queue depth 16, negotiation limits honoured, timeouts, NOP and logout.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{pattern, read16, write16, SlowStore, Spec, Target};
use iscsi::{ChapConfig, FabricConfig};
use iscsi_initiator::{ChapCredentials, Client, InitiatorError, LoginError, Session};

const T: Duration = Duration::from_secs(20);

fn chap_target() -> ChapConfig {
    ChapConfig {
        username: "node1".into(),
        secret: "initiator-secret-1".into(),
        mutual: Some(("array".into(), "target-secret-22".into())),
    }
}

#[tokio::test]
async fn login_without_chap_and_logout() {
    let t = Target::start(Spec::default()).await;
    let s = Session::connect(t.config()).await.expect("login");
    assert_ne!(s.tsih(), 0);
    assert_eq!(s.target_alias(), Some("array"));
    let p = s.params();
    assert_eq!(p.target_mrdsl, 256 * 1024);
    assert!(!p.initial_r2t && p.immediate_data);
    // TEST UNIT READY (the first may report the power-on unit attention).
    let mut good = false;
    for _ in 0..3 {
        let o = s.execute(0, &[0; 6], Bytes::new(), 0, T).await.unwrap();
        if o.is_good() {
            good = true;
            break;
        }
        assert_eq!(o.sense_info().unwrap().key, 6);
    }
    assert!(good);
    s.ping(T).await.expect("NOP-Out ping");
    s.logout().await.expect("logout");
    assert!(s.is_closed());
    let e = s.execute(0, &[0; 6], Bytes::new(), 0, T).await.unwrap_err();
    assert!(e.never_sent(), "{e}");
    t.stop().await;
}

#[tokio::test]
async fn login_with_chap_one_way_and_mutual() {
    let t = Target::start(Spec {
        chap: Some(chap_target()),
        ..Spec::default()
    })
    .await;
    // Mutual.
    let mut cfg = t.config();
    cfg.chap = Some(ChapCredentials {
        username: "node1".into(),
        secret: "initiator-secret-1".into(),
        mutual: Some(("array".into(), "target-secret-22".into())),
    });
    let s = Session::connect(cfg.clone())
        .await
        .expect("mutual CHAP login");
    s.logout().await.unwrap();

    // Wrong initiator secret: the target refuses with 02/01.
    let mut bad = cfg.clone();
    bad.chap.as_mut().unwrap().secret = "wrong-secret-000".into();
    match Session::connect(bad).await {
        Err(InitiatorError::Login(LoginError::Refused { class, detail, .. })) => {
            assert_eq!((class, detail), (2, 1))
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("login with a wrong secret succeeded"),
    }

    // Wrong mutual secret: the target answers, we refuse it.
    let mut bad = cfg.clone();
    bad.chap.as_mut().unwrap().mutual = Some(("array".into(), "not-the-target-secret".into()));
    match Session::connect(bad).await {
        Err(InitiatorError::Login(LoginError::Chap { why, .. })) => {
            assert!(why.contains("mutual secret"), "{why}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a target with the wrong mutual secret was accepted"),
    }

    // No CHAP at all against a CHAP target: authentication failure.
    let e = Session::connect(t.config()).await.err().expect("must fail");
    assert!(e.to_string().contains("authentication failed"), "{e}");
    t.stop().await;

    // One-way CHAP.
    let t = Target::start(Spec {
        chap: Some(ChapConfig {
            mutual: None,
            ..chap_target()
        }),
        ..Spec::default()
    })
    .await;
    let mut cfg = t.config();
    cfg.chap = Some(ChapCredentials {
        username: "node1".into(),
        secret: "initiator-secret-1".into(),
        mutual: None,
    });
    let s = Session::connect(cfg).await.expect("one-way CHAP login");
    s.logout().await.unwrap();
    t.stop().await;
}

/// 16 tasks share a client; each writes and reads back 1 MiB regions.
async fn qd16_mib(client: &Client, rounds: u64) {
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            for r in 0..rounds {
                let lba = (w * rounds + r) * 2048 % 65536;
                let data = pattern(w, lba, 1 << 20);
                let o = c
                    .execute(0, &write16(lba, 2048), Bytes::from(data.clone()), 0, T)
                    .await
                    .expect("write");
                assert!(o.is_good(), "write status {:?}", o);
                let o = c
                    .execute(0, &read16(lba, 2048), Bytes::new(), 1 << 20, T)
                    .await
                    .expect("read");
                assert!(o.is_good(), "read status {:?}", o.sense_info());
                assert_eq!(o.data.len(), 1 << 20);
                assert!(o.data[..] == data[..], "data mismatch at LBA {lba}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn clear_ua(c: &Client) {
    for _ in 0..4 {
        if c.execute(0, &[0; 6], Bytes::new(), 0, T)
            .await
            .unwrap()
            .is_good()
        {
            return;
        }
    }
}

#[tokio::test]
async fn one_mib_io_at_queue_depth_16_with_digests() {
    let t = Target::start(Spec::default()).await;
    let mut cfg = t.config();
    cfg.header_digest = true;
    cfg.data_digest = true;
    cfg.sessions = 2;
    let c = Client::connect(cfg).await.unwrap();
    for s in c.sessions() {
        assert!(s.params().digests.header && s.params().digests.data);
    }
    clear_ua(&c).await;
    clear_ua(&c).await;
    qd16_mib(&c, 2).await;
    c.close().await;
    t.stop().await;
}

/// A target with small MaxRecvDataSegmentLength / bursts and a CmdSN window of 4:
/// our target drops the connection on any oversized PDU and ignores commands
/// beyond MaxCmdSN, so this passes only if we honour both.
#[tokio::test]
async fn small_target_limits_are_honoured() {
    for (initial_r2t, immediate) in [(false, true), (true, false), (true, true)] {
        let t = Target::start(Spec {
            fabric: FabricConfig {
                max_recv_data_segment: 4096,
                max_burst: 16384,
                first_burst: 8192,
                initial_r2t,
                immediate_data: immediate,
                max_outstanding_r2t: 1,
                queue_depth: 4,
                ..FabricConfig::default()
            },
            ..Spec::default()
        })
        .await;
        let c = Client::connect(t.config()).await.unwrap();
        let p = c.sessions()[0].params();
        assert_eq!(p.target_mrdsl, 4096);
        assert_eq!(p.max_burst, 16384);
        assert_eq!(p.first_burst, 8192);
        assert_eq!(p.initial_r2t, initial_r2t);
        assert_eq!(p.immediate_data, immediate);
        assert_eq!(p.max_outstanding_r2t, 1);
        clear_ua(&c).await;
        qd16_mib(&c, 1).await;
        c.close().await;
        t.stop().await;
    }
}

#[tokio::test]
async fn command_timeout_aborts_the_task() {
    let store = Arc::new(SlowStore::new(8192));
    let t = Target::start(Spec {
        luns: vec![store.clone()],
        ..Spec::default()
    })
    .await;
    let s = Session::connect(t.config()).await.unwrap();
    for _ in 0..3 {
        let _ = s.execute(0, &[0; 6], Bytes::new(), 0, T).await;
    }
    store.delay_ms.store(1500, Ordering::Release);
    let e = s
        .execute(
            0,
            &read16(0, 8),
            Bytes::new(),
            4096,
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, InitiatorError::Timeout { opcode: 0x88, .. }),
        "{e}"
    );
    // The abort succeeded: the session is still usable.
    store.delay_ms.store(0, Ordering::Release);
    assert!(!s.is_closed(), "{:?}", s.close_reason());
    let o = s
        .execute(0, &read16(0, 8), Bytes::new(), 4096, T)
        .await
        .unwrap();
    assert!(o.is_good());
    s.logout().await.unwrap();
    t.stop().await;
}

#[tokio::test]
async fn failed_abort_drops_the_connection() {
    let store = Arc::new(SlowStore::new(8192));
    let t = Target::start(Spec {
        luns: vec![store.clone()],
        ..Spec::default()
    })
    .await;
    let mut cfg = t.config();
    cfg.abort_timeout = Duration::from_millis(200);
    let s = Session::connect(cfg).await.unwrap();
    for _ in 0..3 {
        let _ = s.execute(0, &[0; 6], Bytes::new(), 0, T).await;
    }
    // Our target answers ABORT TASK only once the running read has finished.
    store.delay_ms.store(2000, Ordering::Release);
    let e = s
        .execute(
            0,
            &read16(0, 8),
            Bytes::new(),
            4096,
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, InitiatorError::Timeout { .. }), "{e}");
    assert!(s.is_closed());
    assert!(s.close_reason().unwrap().contains("ABORT TASK"));
    store.delay_ms.store(0, Ordering::Release);
    t.stop().await;
}

#[tokio::test]
async fn target_nop_in_pings_are_answered() {
    let t = Target::start(Spec {
        fabric: FabricConfig {
            nop_interval: Duration::from_millis(300),
            nop_timeout: Duration::from_millis(900),
            ..FabricConfig::default()
        },
        ..Spec::default()
    })
    .await;
    let mut cfg = t.config();
    // Our own keepalive off: only the target's pings keep the connection.
    cfg.nop_interval = None;
    let s = Session::connect(cfg).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!s.is_closed(), "{:?}", s.close_reason());
    s.execute(0, &[0; 6], Bytes::new(), 0, T).await.unwrap();
    s.logout().await.unwrap();
    t.stop().await;
}

#[tokio::test]
async fn keepalive_detects_a_frozen_target() {
    let t = Target::start(Spec::default()).await;
    let proxy = common::Proxy::start(t.addr).await;
    let mut cfg = t.config();
    cfg.portal = proxy.addr;
    cfg.nop_interval = Some(Duration::from_millis(100));
    cfg.nop_timeout = Duration::from_millis(400);
    let s = Session::connect(cfg).await.unwrap();
    // Pings flow and keep the session up...
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!s.is_closed(), "{:?}", s.close_reason());
    // ...until the target stops answering.
    proxy.frozen.store(true, Ordering::Release);
    tokio::time::timeout(Duration::from_secs(5), s.closed())
        .await
        .expect("keepalive did not notice the frozen target");
    assert!(
        s.close_reason().unwrap().contains("NOP-Out"),
        "{:?}",
        s.close_reason()
    );
    proxy.frozen.store(false, Ordering::Release);
    t.stop().await;
}

#[tokio::test]
async fn errors_are_reported() {
    let t = Target::start(Spec::default()).await;
    let mut cfg = t.config();
    cfg.target_name = "iqn.2026-11.org.switchyard:nope".into();
    let e = Session::connect(cfg).await.err().unwrap();
    assert!(e.to_string().contains("target not found"), "{e}");
    let s = Session::connect(t.config()).await.unwrap();
    // Bidirectional is refused locally.
    let e = s
        .execute(0, &write16(0, 1), Bytes::from(vec![0; 512]), 512, T)
        .await
        .unwrap_err();
    assert!(matches!(e, InitiatorError::Invalid(_)));
    // A read past the end: CHECK CONDITION, ILLEGAL REQUEST / LBA OUT OF RANGE.
    let mut o = s
        .execute(0, &read16(1 << 40, 1), Bytes::new(), 512, T)
        .await
        .unwrap();
    if o.sense_info().unwrap().key == 6 {
        o = s
            .execute(0, &read16(1 << 40, 1), Bytes::new(), 512, T)
            .await
            .unwrap();
    }
    let si = o.sense_info().unwrap();
    assert_eq!((si.key, si.asc), (5, 0x21), "{si}");
    // A short read: underflow residual.
    let mut inq = [0u8; 6];
    inq[0] = 0x12;
    inq[4] = 255;
    let o = s.execute(0, &inq, Bytes::new(), 255, T).await.unwrap();
    assert!(o.is_good());
    assert!(
        matches!(o.residual, iscsi_initiator::Residual::Underflow(n) if n as usize == 255 - o.data.len())
    );
    s.logout().await.unwrap();
    t.stop().await;
}
