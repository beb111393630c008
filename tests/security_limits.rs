//! Security audit, rules 4 and 8: sessions are limited per initiator and in total, and
//! so are connections (including ones that never finish logging in). A refused login
//! gets status 3/2 (out of resources); a connection over the limit is closed at once;
//! capacity comes back when sessions and connections go away.
//!
//! Nothing here asserts on durations: waits are polls with generous hang guards.

use std::time::Duration;

use integration_tests::*;
use iscsi::FabricConfig;

const GUARD: Duration = Duration::from_secs(60);

fn opts(initiator: &str, isid: u8) -> LoginOpts {
    LoginOpts {
        initiator: Some(format!("iqn.2026-11.org.example:{initiator}")),
        isid: Some([0x80, 0, 0, 0, 0, isid]),
        ..Default::default()
    }
}

async fn login(t: &TestTarget, initiator: &str, isid: u8) -> Result<Initiator, LoginFailure> {
    let mut i = Initiator::connect(t.addr).await;
    i.login(&opts(initiator, isid)).await.map(|_| i)
}

/// Poll until the server holds `n` sessions.
async fn wait_sessions(t: &TestTarget, n: usize) {
    let start = tokio::time::Instant::now();
    while t.server.shared().sessions().len() != n {
        assert!(
            start.elapsed() < GUARD,
            "hang guard: {} sessions, waiting for {n}",
            t.server.shared().sessions().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const OUT_OF_RESOURCES: LoginFailure = LoginFailure {
    class: 3,
    detail: 2,
};

#[tokio::test]
async fn sessions_are_limited_per_initiator_and_in_total() {
    let t = TestTarget::start(TargetSpec {
        fabric: FabricConfig {
            max_sessions: 3,
            max_sessions_per_initiator: 2,
            ..FabricConfig::default()
        },
        ..Default::default()
    })
    .await;
    // Two sessions of host a; a third (another ISID) is over its limit.
    let _a1 = login(&t, "a", 1).await.expect("a/1");
    let mut a2 = login(&t, "a", 2).await.expect("a/2");
    assert_eq!(login(&t, "a", 3).await.err(), Some(OUT_OF_RESOURCES));
    // Reinstating an existing session (same ISID) is not a new session: allowed.
    let mut a2b = login(&t, "a", 2).await.expect("reinstate a/2");
    assert!(a2.closed_within(GUARD).await, "the old a/2 connection ends");
    // Host b gets one session: the node total (3) is reached.
    let _b1 = login(&t, "b", 1).await.expect("b/1");
    wait_sessions(&t, 3).await;
    assert_eq!(login(&t, "c", 1).await.err(), Some(OUT_OF_RESOURCES));
    assert_eq!(login(&t, "b", 2).await.err(), Some(OUT_OF_RESOURCES));
    // Discovery sessions count too.
    let mut d = Initiator::connect(t.addr).await;
    let r = d
        .login(&LoginOpts {
            discovery: true,
            ..opts("c", 9)
        })
        .await;
    assert_eq!(r.err(), Some(OUT_OF_RESOURCES));
    // The limits refuse; they do not end what runs: a's sessions still work.
    a2b.clear_ua(0).await;
    assert_eq!(a2b.read10(0, 0, 1, 512).await.status, 0);
    // A logout frees a slot for another host.
    a2b.logout().await;
    wait_sessions(&t, 2).await;
    let mut c1 = login(&t, "c", 1).await.expect("c/1 once a slot is free");
    c1.clear_ua(0).await;
    assert_eq!(c1.read10(0, 0, 1, 512).await.status, 0);
    assert_eq!(t.server.shared().sessions().len(), 3);
    t.stop().await;
}

#[tokio::test]
async fn connections_are_bounded_even_before_login() {
    // The server accepts max_sessions + 16 connections at once (logged in or not).
    let max_sessions = 2usize;
    let limit = max_sessions + 16;
    let t = TestTarget::start(TargetSpec {
        fabric: FabricConfig {
            max_sessions,
            // Idle connections must not time out during the test, however slow it runs.
            login_timeout: Duration::from_secs(600),
            ..FabricConfig::default()
        },
        ..Default::default()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..limit {
        idle.push(Initiator::connect(t.addr).await);
    }
    // One more is accepted by the kernel, then closed by the server, unanswered.
    let mut extra = Initiator::connect(t.addr).await;
    assert!(
        extra.closed_within(GUARD).await,
        "a connection over the limit is closed"
    );
    // The ones within the limit are still served: the first logs in.
    let mut first = idle.remove(0);
    first
        .login(&opts("idle", 1))
        .await
        .expect("a connection within the limit logs in");
    // Closing the idle ones gives the capacity back (each is released when the server
    // reads its end of stream).
    drop(idle);
    let start = tokio::time::Instant::now();
    loop {
        let mut i = Initiator::connect(t.addr).await;
        if i.login(&opts("later", 2)).await.is_ok() {
            break;
        }
        assert!(
            start.elapsed() < GUARD,
            "hang guard: capacity never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.stop().await;
}
