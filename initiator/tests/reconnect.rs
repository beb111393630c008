//! Reconnect: the server drops our sessions (or goes away and comes back on the same
//! port); the client logs in again with the same ISID, retries idempotent commands
//! and fails the others with a clear error.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{pattern, read16, write16, SlowStore, Spec, Target};
use iscsi_initiator::{Client, InitiatorError};

const T: Duration = Duration::from_secs(20);

async fn clear_ua(c: &Client) {
    for _ in 0..4 {
        if let Ok(o) = c.execute(0, &[0; 6], Bytes::new(), 0, T).await {
            if o.is_good() {
                return;
            }
        }
    }
}

#[tokio::test]
async fn lost_connection_retries_reads_and_fails_writes() {
    let store = Arc::new(SlowStore::new(16384));
    let t = Target::start(Spec {
        luns: vec![store.clone()],
        ..Spec::default()
    })
    .await;
    let proxy = common::Proxy::start(t.addr).await;
    let mut cfg = t.config();
    cfg.portal = proxy.addr;
    let c = Client::connect(cfg).await.unwrap();
    clear_ua(&c).await;
    let data = pattern(1, 0, 64 * 1024);
    let o = c
        .execute(0, &write16(0, 128), Bytes::from(data.clone()), 0, T)
        .await
        .unwrap();
    assert!(o.is_good());
    let isid = c.sessions()[0].isid();

    // A read in flight when the connection dies is retried on the new session.
    store.delay_ms.store(300, Ordering::Release);
    let c2 = c.clone();
    let read = tokio::spawn(async move {
        c2.execute(0, &read16(0, 128), Bytes::new(), 64 * 1024, T)
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.cut();
    let o = read.await.unwrap().expect("idempotent read retried");
    store.delay_ms.store(0, Ordering::Release);
    let o = if o.is_good() {
        o
    } else {
        // The retry may meet a unit attention of the new nexus.
        assert_eq!(o.sense_info().unwrap().key, 6);
        c.execute(0, &read16(0, 128), Bytes::new(), 64 * 1024, T)
            .await
            .unwrap()
    };
    assert!(o.data[..] == data[..]);
    assert!(c.wait_connected(T).await);
    assert_eq!(
        c.sessions()[0].isid(),
        isid,
        "the ISID is kept across reconnects"
    );
    assert_eq!(c.login_count(), 2);

    // A write in flight when the connection dies is not retried.
    clear_ua(&c).await;
    let c2 = c.clone();
    let write = tokio::spawn(async move {
        c2.execute(
            0,
            &write16(0, 128),
            Bytes::from(pattern(2, 0, 64 * 1024)),
            0,
            T,
        )
        .await
    });
    // Hold the write's response back, then cut.
    tokio::time::sleep(Duration::from_millis(20)).await;
    proxy.frozen.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.cut();
    proxy.frozen.store(false, Ordering::Release);
    match write.await.unwrap() {
        Err(InitiatorError::ConnectionLost { why, .. }) => assert!(!why.is_empty()),
        Ok(_) => {
            // The write completed before the freeze; try once more with the freeze first.
            proxy.frozen.store(true, Ordering::Release);
            let c2 = c.clone();
            let write = tokio::spawn(async move {
                c2.execute(
                    0,
                    &write16(0, 128),
                    Bytes::from(pattern(2, 0, 64 * 1024)),
                    0,
                    T,
                )
                .await
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            proxy.cut();
            proxy.frozen.store(false, Ordering::Release);
            let e = write.await.unwrap().unwrap_err();
            assert!(matches!(e, InitiatorError::ConnectionLost { .. }), "{e}");
        }
        Err(e) => panic!("unexpected error {e}"),
    }
    assert!(c.wait_connected(T).await);
    assert!(c.login_count() >= 3);
    c.close().await;
    t.stop().await;
}

#[tokio::test]
async fn session_killed_by_the_server_is_reinstated() {
    let t = Target::start(Spec::default()).await;
    let c = Client::connect(t.config()).await.unwrap();
    clear_ua(&c).await;
    let old = c.sessions()[0].clone();
    t.kill_sessions();
    tokio::time::timeout(T, old.closed()).await.unwrap();
    assert!(c.wait_connected(T).await);
    let new = c.sessions()[0].clone();
    assert_eq!(new.isid(), old.isid());
    assert_ne!(new.tsih(), old.tsih());
    clear_ua(&c).await;
    let o = c
        .execute(0, &read16(0, 8), Bytes::new(), 4096, T)
        .await
        .unwrap();
    assert!(o.is_good());
    // The target knows one session for us, the new one.
    let sessions = t.server.shared().sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].tsih, new.tsih());
    c.close().await;
    t.stop().await;
}

#[tokio::test]
async fn target_restart_on_the_same_port() {
    let t = Target::start(Spec::default()).await;
    let addr = t.addr;
    let mut cfg = t.config();
    cfg.sessions = 3;
    let c = Client::connect(cfg).await.unwrap();
    clear_ua(&c).await;
    assert_eq!(c.sessions().len(), 3);
    t.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(c.sessions().is_empty(), "sessions survived the server");
    // Commands issued while the target is down wait for the reconnect.
    let c2 = c.clone();
    let pending =
        tokio::spawn(async move { c2.execute(0, &read16(0, 8), Bytes::new(), 4096, T).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let t = Target::start(Spec {
        addr: Some(addr),
        ..Spec::default()
    })
    .await;
    let o = pending.await.unwrap().expect("command after reconnect");
    assert!(o.is_good() || o.sense_info().unwrap().key == 6);
    assert!(c.wait_connected(T).await);
    assert_eq!(c.sessions().len(), 3);
    c.close().await;
    assert!(c.sessions().is_empty());
    let e = c
        .execute(0, &read16(0, 8), Bytes::new(), 4096, T)
        .await
        .unwrap_err();
    assert!(matches!(e, InitiatorError::Closed { .. }), "{e}");
    t.stop().await;
}
