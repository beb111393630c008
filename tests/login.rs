//! Login: CHAP (one-way and mutual), ACLs and LUN masking, discovery, reinstatement.

use std::sync::Arc;
use std::time::Duration;

use blockdev::MemStore;
use fcwwn::{AccessRule, InitiatorId, LunSet, Masking};
use integration_tests::*;
use iscsi::ChapConfig;
use iscsi_wire::pdu::{self, Response};
use iscsi_wire::text::TextPairs;

fn chap(mutual: bool) -> ChapConfig {
    ChapConfig {
        username: "host1".into(),
        secret: "host1-secret-12".into(),
        mutual: mutual.then(|| ("switchyard".into(), "target-secret-16".into())),
    }
}

#[tokio::test]
async fn chap_one_way_accepts_right_secret_only() {
    let t = TestTarget::start(TargetSpec {
        chap: Some(chap(false)),
        ..Default::default()
    })
    .await;
    // Right secret.
    let mut i = Initiator::connect(t.addr).await;
    let o = LoginOpts {
        chap: Some(("host1".into(), "host1-secret-12".into())),
        ..Default::default()
    };
    i.login(&o).await.expect("right secret logs in");
    i.clear_ua(0).await;
    let r = i.read10(0, 0, 1, 512).await;
    assert_eq!(r.status, 0);
    // Wrong secret: authentication failure (2/1).
    let mut i = Initiator::connect(t.addr).await;
    let o = LoginOpts {
        chap: Some(("host1".into(), "wrong-secret-xx".into())),
        ..Default::default()
    };
    assert_eq!(
        i.login(&o).await.unwrap_err(),
        LoginFailure {
            class: 2,
            detail: 1
        }
    );
    // Wrong user name.
    let mut i = Initiator::connect(t.addr).await;
    let o = LoginOpts {
        chap: Some(("intruder".into(), "host1-secret-12".into())),
        ..Default::default()
    };
    assert_eq!(
        i.login(&o).await.unwrap_err(),
        LoginFailure {
            class: 2,
            detail: 1
        }
    );
    // No CHAP at all: straight to the operational stage is refused.
    let mut i = Initiator::connect(t.addr).await;
    assert_eq!(
        i.login(&LoginOpts::default()).await.unwrap_err(),
        LoginFailure {
            class: 2,
            detail: 1
        }
    );
    t.stop().await;
}

#[tokio::test]
async fn chap_mutual_target_proves_its_secret() {
    let t = TestTarget::start(TargetSpec {
        chap: Some(chap(true)),
        ..Default::default()
    })
    .await;
    let mut i = Initiator::connect(t.addr).await;
    let o = LoginOpts {
        chap: Some(("host1".into(), "host1-secret-12".into())),
        mutual: Some(("switchyard".into(), "target-secret-16".into())),
        ..Default::default()
    };
    i.login(&o).await.expect("mutual CHAP succeeds");
    // An initiator that expects another target secret detects the mismatch.
    let mut i = Initiator::connect(t.addr).await;
    let o = LoginOpts {
        chap: Some(("host1".into(), "host1-secret-12".into())),
        mutual: Some(("switchyard".into(), "not-the-secret!!".into())),
        ..Default::default()
    };
    assert_eq!(i.login(&o).await.unwrap_err().class, 0xfe);
    // The target requires mutual CHAP: one-way login is refused.
    let mut i = Initiator::connect(t.addr).await;
    let o = LoginOpts {
        chap: Some(("host1".into(), "host1-secret-12".into())),
        ..Default::default()
    };
    assert_eq!(
        i.login(&o).await.unwrap_err(),
        LoginFailure {
            class: 2,
            detail: 1
        }
    );
    t.stop().await;
}

fn masking() -> Masking {
    let allowed = InitiatorId::parse(INITIATOR).unwrap();
    let lun1_only = InitiatorId::parse("iqn.2026-11.org.switchyard:lun1-only").unwrap();
    Masking::new(
        vec![],
        vec![
            AccessRule::initiator(TARGET, allowed, LunSet::All),
            AccessRule::initiator(TARGET, lun1_only, LunSet::only([1])),
        ],
    )
    .unwrap()
}

#[tokio::test]
async fn acl_refuses_unlisted_initiator_and_masks_luns() {
    let t = TestTarget::start(TargetSpec {
        luns: vec![
            Arc::new(MemStore::new(512, 1024)),
            Arc::new(MemStore::new(512, 2048)),
        ],
        masking: masking(),
        ..Default::default()
    })
    .await;
    // Not in the ACL: 2/2 "not authorized".
    let mut i = Initiator::connect(t.addr).await;
    let o = LoginOpts {
        initiator: Some("iqn.2026-11.org.example:stranger".into()),
        ..Default::default()
    };
    assert_eq!(
        i.login(&o).await.unwrap_err(),
        LoginFailure {
            class: 2,
            detail: 2
        }
    );
    // Nor does discovery show the target to it.
    let mut d = Initiator::connect(t.addr).await;
    let o = LoginOpts {
        initiator: Some("iqn.2026-11.org.example:stranger".into()),
        discovery: true,
        ..Default::default()
    };
    d.login(&o).await.unwrap();
    let keys = send_targets(&mut d).await;
    assert!(keys.get("TargetName").is_none(), "{keys:?}");

    // Allowed for LUN 1 only: REPORT LUNS lists just LUN 1, LUN 0 is not there.
    let mut i = Initiator::connect(t.addr).await;
    let o = LoginOpts {
        initiator: Some("iqn.2026-11.org.switchyard:lun1-only".into()),
        ..Default::default()
    };
    i.login(&o).await.unwrap();
    let mut rl = [0u8; 12];
    rl[0] = 0xa0;
    rl[6..10].copy_from_slice(&256u32.to_be_bytes());
    let r = i.scsi(1, &rl, &[], 256).await;
    let r = if r.status != 0 {
        i.scsi(1, &rl, &[], 256).await
    } else {
        r
    };
    assert_eq!(r.status, 0);
    assert_eq!(&r.data[0..4], &8u32.to_be_bytes(), "one LUN listed");
    assert_eq!(&r.data[8..16], &[0, 1, 0, 0, 0, 0, 0, 0]);
    let r = i.read10(0, 0, 1, 512).await;
    assert_eq!(r.status, 2);
    assert_eq!(r.asc(), (0x25, 0x00), "LOGICAL UNIT NOT SUPPORTED");
    // Fully allowed initiator sees both.
    let mut i = Initiator::login_to(t.addr).await;
    let r = i.scsi(0, &rl, &[], 256).await;
    assert_eq!(&r.data[0..4], &16u32.to_be_bytes());
    t.stop().await;
}

async fn send_targets(i: &mut Initiator) -> TextPairs {
    let mut keys = TextPairs::new();
    keys.push("SendTargets", "All");
    let itt = i.itt();
    let req = pdu::Request::Text(pdu::TextRequest {
        immediate: true,
        final_bit: true,
        cont: false,
        lun: 0,
        itt,
        ttt: 0xffff_ffff,
        cmd_sn: i.cmd_sn,
        exp_stat_sn: i.exp_stat_sn,
        data: keys.to_bytes(),
    });
    i.send(&req).await;
    match i.recv().await {
        Some(Response::Text(t)) => {
            assert!(t.final_bit);
            TextPairs::parse(&t.data).unwrap_or_default()
        }
        other => panic!("expected a text response, got {other:?}"),
    }
}

#[tokio::test]
async fn discovery_lists_target_and_portal() {
    let t = TestTarget::start(TargetSpec::default()).await;
    let mut d = Initiator::connect(t.addr).await;
    d.login(&LoginOpts {
        discovery: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let keys = send_targets(&mut d).await;
    assert_eq!(keys.get("TargetName"), Some(TARGET));
    assert_eq!(
        keys.get("TargetAddress"),
        Some(format!("{},1", t.addr).as_str())
    );
    // SCSI commands are not allowed in a discovery session.
    let cmd = d.command(0, &[0u8; 6], &[], 0);
    d.send(&pdu::Request::ScsiCommand(cmd)).await;
    assert!(matches!(d.recv().await, Some(Response::Reject(_))));
    t.stop().await;
}

#[tokio::test]
async fn unknown_target_and_missing_initiator_name() {
    let t = TestTarget::start(TargetSpec::default()).await;
    let mut i = Initiator::connect(t.addr).await;
    let o = LoginOpts {
        target: Some("iqn.2026-11.org.switchyard:nope".into()),
        ..Default::default()
    };
    assert_eq!(
        i.login(&o).await.unwrap_err(),
        LoginFailure {
            class: 2,
            detail: 3
        }
    );
    t.stop().await;
}

#[tokio::test]
async fn same_isid_reinstates_the_session() {
    let t = TestTarget::start(TargetSpec::default()).await;
    let mut a = Initiator::login_to(t.addr).await;
    a.clear_ua(0).await;
    let mut b = Initiator::login_to(t.addr).await;
    // The old connection is closed by the target.
    assert!(a.closed_within(Duration::from_secs(10)).await);
    b.clear_ua(0).await;
    assert_eq!(b.read10(0, 0, 1, 512).await.status, 0);
    assert_eq!(t.server.shared().sessions().len(), 1);
    t.stop().await;
}

#[tokio::test]
async fn logout_closes_cleanly() {
    let t = TestTarget::start(TargetSpec::default()).await;
    let mut a = Initiator::login_to(t.addr).await;
    match a.logout().await {
        Some(Response::Logout(l)) => assert_eq!(l.response, 0),
        other => panic!("expected a logout response, got {other:?}"),
    }
    assert!(a.closed_within(Duration::from_secs(5)).await);
    t.stop().await;
}

#[tokio::test]
async fn digests_negotiated_and_used() {
    let t = TestTarget::start(TargetSpec::default()).await;
    let mut a = Initiator::connect(t.addr).await;
    a.login(&LoginOpts {
        digests: true,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(a.digests.header && a.digests.data);
    a.clear_ua(0).await;
    let data = pattern(1, 5, 4096);
    assert_eq!(a.write10(0, 5, &data, 512).await.status, 0);
    assert_eq!(a.read10(0, 5, 8, 512).await.data, data);
    t.stop().await;
}

#[tokio::test]
async fn a_guesser_changing_initiator_names_is_throttled_by_address() {
    use iscsi::server::LoginThrottle;
    let t = TestTarget::start(TargetSpec {
        chap: Some(chap(false)),
        ..Default::default()
    })
    .await;
    // Each name fails fewer times than the per-name limit; together they reach the
    // per-address one.
    let per_name = LoginThrottle::LIMIT - 1;
    let names = LoginThrottle::LIMIT_PER_ADDRESS.div_ceil(per_name);
    let mut failed = 0;
    for n in 0..names {
        for _ in 0..per_name.min(LoginThrottle::LIMIT_PER_ADDRESS - failed) {
            let mut i = Initiator::connect(t.addr).await;
            let guess = LoginOpts {
                initiator: Some(format!("iqn.2026-11.org.example:guess-{n}")),
                chap: Some(("host1".into(), "wrong-secret-xx".into())),
                ..Default::default()
            };
            assert_eq!(
                i.login(&guess).await.unwrap_err(),
                LoginFailure {
                    class: 2,
                    detail: 1
                },
                "failure {failed}: authentication failed, not throttled yet"
            );
            failed += 1;
        }
    }
    assert_eq!(failed, LoginThrottle::LIMIT_PER_ADDRESS);
    // Now any name from this address is refused for a while, the right secret too.
    let mut i = Initiator::connect(t.addr).await;
    let fresh = LoginOpts {
        initiator: Some("iqn.2026-11.org.example:fresh-name".into()),
        chap: Some(("host1".into(), "host1-secret-12".into())),
        ..Default::default()
    };
    assert_eq!(
        i.login(&fresh).await.unwrap_err(),
        LoginFailure {
            class: 3,
            detail: 1
        }
    );
    t.stop().await;
}

#[tokio::test]
async fn repeated_login_failures_are_throttled_per_initiator() {
    let t = TestTarget::start(TargetSpec {
        chap: Some(chap(false)),
        ..Default::default()
    })
    .await;
    let wrong = LoginOpts {
        chap: Some(("host1".into(), "wrong-secret-xx".into())),
        ..Default::default()
    };
    for _ in 0..iscsi::server::LoginThrottle::LIMIT {
        let mut i = Initiator::connect(t.addr).await;
        assert_eq!(
            i.login(&wrong).await.unwrap_err(),
            LoginFailure {
                class: 2,
                detail: 1
            }
        );
    }
    // Now even the right secret is refused for a while: service unavailable (3/1).
    let right = LoginOpts {
        chap: Some(("host1".into(), "host1-secret-12".into())),
        ..Default::default()
    };
    let mut i = Initiator::connect(t.addr).await;
    assert_eq!(
        i.login(&right).await.unwrap_err(),
        LoginFailure {
            class: 3,
            detail: 1
        }
    );
    // Another initiator is not affected.
    let mut i = Initiator::connect(t.addr).await;
    let other = LoginOpts {
        initiator: Some("iqn.2026-11.org.example:other-host".into()),
        ..right
    };
    i.login(&other)
        .await
        .expect("other initiators still log in");
    t.stop().await;
}
