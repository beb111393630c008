//! Security audit, rule 1: CHAP secrets are never logged, never in Debug output, never
//! in what the target sends. Every tracing event of the process (TRACE level, every
//! crate) is captured while hosts log in to CHAP targets with right and wrong secrets,
//! mutual CHAP, malformed responses and enough failures to trip the login throttle;
//! then neither the log, nor any login response, nor the Debug form of the
//! configuration types holds a secret (as text, hex or base64).
//!
//! One test per file: it installs the process-wide tracing subscriber.

use std::io::Write;
use std::sync::Arc;

use integration_tests::*;
use iscsi::ChapConfig;
use iscsi_wire::pdu::{LoginRequest, Request, Response, Stage};
use iscsi_wire::text::TextPairs;
use parking_lot::Mutex;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;

const USER: &str = "host1";
const SECRET: &str = "Zq7-initiator-s";
const TSECRET: &str = "Kp3-target-sec!";
const WRONG: &str = "Wx9-wrong-guess";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every form of `secret` that must never show: itself, hex (either case), base64.
fn forms(secret: &str) -> Vec<String> {
    let h = hex(secret.as_bytes());
    let b64 = iscsi_wire::text::encode_binary(secret.as_bytes()); // 0x form
    let mut v = vec![secret.to_string(), h.clone(), h.to_uppercase(), b64];
    // base64 of the secret (what a `0b` value would carry), without padding.
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for ch in secret.as_bytes().chunks(3) {
        let n = (u32::from(ch[0]) << 16)
            | (u32::from(*ch.get(1).unwrap_or(&0)) << 8)
            | u32::from(*ch.get(2).unwrap_or(&0));
        for k in 0..=ch.len() {
            s.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
        }
    }
    v.push(s);
    v
}

fn assert_clean(what: &str, text: &str) {
    for secret in [SECRET, TSECRET, WRONG] {
        for f in forms(secret) {
            assert!(!text.contains(&f), "{what} holds a secret ({f:?}):\n{text}");
        }
    }
}

/// A raw CHAP login that answers with `CHAP_R` = `r` (hex), keeping every response's
/// data for inspection.
async fn raw_chap_login(t: &TestTarget, initiator: &str, r: Option<&str>, seen: &mut Vec<u8>) {
    let mut i = Initiator::connect(t.addr).await;
    let step = |keys: Vec<(&'static str, String)>, transit: bool| {
        let mut p = TextPairs::new();
        for (k, v) in keys {
            p.push(k, v);
        }
        Request::Login(LoginRequest {
            transit,
            cont: false,
            csg: Stage::Security,
            nsg: Stage::Operational,
            version_max: 0,
            version_min: 0,
            isid: [0x80, 0, 0, 0, 0, 7],
            tsih: 0,
            itt: 0x1000,
            cid: 1,
            cmd_sn: 1,
            exp_stat_sn: 0,
            data: p.to_bytes(),
        })
    };
    let reqs = vec![
        step(
            vec![
                ("InitiatorName", initiator.to_string()),
                ("TargetName", TARGET.to_string()),
                ("AuthMethod", "CHAP".to_string()),
            ],
            false,
        ),
        step(vec![("CHAP_A", "5".to_string())], false),
        step(
            vec![
                ("CHAP_N", USER.to_string()),
                ("CHAP_R", r.unwrap_or("0xnothex").to_string()),
            ],
            true,
        ),
    ];
    for req in reqs {
        i.send(&req).await;
        match i.recv().await {
            Some(Response::Login(l)) => {
                seen.extend_from_slice(&l.data);
                if l.status_class != 0 {
                    return;
                }
            }
            _ => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chap_secrets_never_reach_logs_debug_output_or_the_wire() {
    let cap = Capture::default();
    tracing_subscriber::fmt()
        .with_max_level(LevelFilter::TRACE)
        .with_ansi(false)
        .with_writer(cap.clone())
        .init();

    let one_way = TestTarget::start(TargetSpec {
        chap: Some(ChapConfig {
            username: USER.into(),
            secret: SECRET.into(),
            mutual: None,
        }),
        ..Default::default()
    })
    .await;
    let mutual = TestTarget::start(TargetSpec {
        chap: Some(ChapConfig {
            username: USER.into(),
            secret: SECRET.into(),
            mutual: Some(("switchyard".into(), TSECRET.into())),
        }),
        ..Default::default()
    })
    .await;
    let login = |chap: &str, mutual: Option<&str>, who: &str| LoginOpts {
        initiator: Some(format!("iqn.2026-11.org.example:{who}")),
        chap: Some((USER.into(), chap.into())),
        mutual: mutual.map(|m| ("switchyard".to_string(), m.to_string())),
        ..Default::default()
    };
    // Right secret, then commands.
    let mut i = Initiator::connect(one_way.addr).await;
    i.login(&login(SECRET, None, "ok"))
        .await
        .expect("right secret");
    i.clear_ua(0).await;
    assert_eq!(i.write10(0, 1, &[7u8; 512], 512).await.status, 0);
    i.logout().await;
    // Wrong secret, wrong user, until the throttle refuses even the right one.
    for _ in 0..=iscsi::server::LoginThrottle::LIMIT {
        let mut i = Initiator::connect(one_way.addr).await;
        assert!(i.login(&login(WRONG, None, "guesser")).await.is_err());
    }
    let mut i = Initiator::connect(one_way.addr).await;
    assert_eq!(
        i.login(&login(SECRET, None, "guesser")).await.unwrap_err(),
        LoginFailure {
            class: 3,
            detail: 1
        }
    );
    // Mutual CHAP: right, the initiator expecting another target secret, one-way refused.
    let mut i = Initiator::connect(mutual.addr).await;
    i.login(&login(SECRET, Some(TSECRET), "m-ok"))
        .await
        .expect("mutual");
    let mut i = Initiator::connect(mutual.addr).await;
    assert!(i.login(&login(SECRET, Some(WRONG), "m-bad")).await.is_err());
    let mut i = Initiator::connect(mutual.addr).await;
    assert!(i.login(&login(SECRET, None, "m-none")).await.is_err());
    // Malformed and wrong responses, keeping what the target answers.
    let mut wire = Vec::new();
    raw_chap_login(&one_way, "iqn.2026-11.org.example:raw1", None, &mut wire).await;
    let zero = format!("0x{}", "00".repeat(16));
    raw_chap_login(
        &one_way,
        "iqn.2026-11.org.example:raw2",
        Some(&zero),
        &mut wire,
    )
    .await;
    raw_chap_login(
        &mutual,
        "iqn.2026-11.org.example:raw3",
        Some(&zero),
        &mut wire,
    )
    .await;
    assert!(!wire.is_empty(), "the target answered the raw logins");
    assert_clean("login responses", &String::from_utf8_lossy(&wire));
    one_way.stop().await;
    mutual.stop().await;

    // Debug forms of everything that carries a secret.
    let cfg = ChapConfig {
        username: USER.into(),
        secret: SECRET.into(),
        mutual: Some(("t".into(), TSECRET.into())),
    };
    assert_clean("ChapConfig Debug", &format!("{cfg:?} {cfg:#?}"));
    let creds = iscsi_initiator::ChapCredentials {
        username: USER.into(),
        secret: SECRET.into(),
        mutual: Some(("t".into(), TSECRET.into())),
    };
    assert_clean("ChapCredentials Debug", &format!("{creds:?} {creds:#?}"));
    let secrets = iscsi_wire::chap::ChapSecrets {
        initiator_secret: SECRET.as_bytes().to_vec(),
        target: Some(("t".into(), TSECRET.as_bytes().to_vec())),
    };
    assert_clean("ChapSecrets Debug", &format!("{secrets:?} {secrets:#?}"));

    let log = String::from_utf8_lossy(&cap.0.lock()).into_owned();
    // The capture worked: the failures were logged (at info) with the initiator.
    assert!(
        log.contains("login authentication failed") && log.contains("guesser"),
        "expected the failed logins in the log:\n{log}"
    );
    assert!(log.contains("too many failed logins"), "{log}");
    assert_clean("the log", &log);
}
