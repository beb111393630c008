//! Security audit, rule 2: CHAP on the wire (RFC 7143 §12.1.3, RFC 1994). Each test
//! drives the security stage of a login by hand so it can send what a well-behaved
//! initiator never would: other CHAP_A algorithms, a response computed with another
//! identifier, malformed or mis-sized CHAP_R and CHAP_C values, CHAP keys out of
//! order, a reflected challenge; and checks that the target refuses each one (status
//! class 2) and never completes the login. Mutual challenges must be 16..=1024 bytes
//! and come as a pair (CHAP_I with CHAP_C).

use integration_tests::*;
use iscsi::{ChapConfig, FabricConfig};
use iscsi_wire::chap::{chap_md5, CHALLENGE_LEN};
use iscsi_wire::pdu::{Response, Stage};
use iscsi_wire::text::{decode_binary, encode_binary, TextPairs, MAX_BINARY_LEN};

const USER: &str = "host1";
const SECRET: &str = "host1-secret-12";
const TUSER: &str = "switchyard";
const TSECRET: &str = "target-secret-16";

fn chap(mutual: bool) -> ChapConfig {
    ChapConfig {
        username: USER.into(),
        secret: SECRET.into(),
        mutual: mutual.then(|| (TUSER.into(), TSECRET.into())),
    }
}

async fn target(mutual: bool) -> TestTarget {
    TestTarget::start(TargetSpec {
        chap: Some(chap(mutual)),
        fabric: FabricConfig::default(),
        ..Default::default()
    })
    .await
}

/// A login refusal: (status class, status detail); (0xff, 0xff) when the target
/// closed the connection without answering.
type Refusal = (u8, u8);

/// One login request/response exchange with the given keys.
async fn step(
    i: &mut Initiator,
    csg: Stage,
    nsg: Stage,
    transit: bool,
    keys: &[(&str, String)],
) -> Result<(bool, TextPairs), Refusal> {
    let mut t = TextPairs::new();
    for (k, v) in keys {
        t.push(*k, v.clone());
    }
    let req = i.login_pdu(csg, nsg, transit, t.to_bytes());
    i.send(&req).await;
    match i.recv().await {
        Some(Response::Login(r)) if r.status_class == 0 => {
            Ok((r.transit, TextPairs::parse(&r.data).expect("target text")))
        }
        Some(Response::Login(r)) => Err((r.status_class, r.status_detail)),
        Some(other) => panic!("expected a login response, got {other:?}"),
        None => Err((0xff, 0xff)),
    }
}

/// Security-stage step that does not ask to leave the stage.
async fn sec(i: &mut Initiator, keys: &[(&str, String)]) -> Result<TextPairs, Refusal> {
    step(i, Stage::Security, Stage::Operational, false, keys)
        .await
        .map(|(_, k)| k)
}

/// Connect as `initiator` (each case uses its own name so the per-initiator login
/// throttle never gets in the way) and offer CHAP.
async fn offer_chap(t: &TestTarget, initiator: &str) -> Initiator {
    let mut i = Initiator::connect(t.addr).await;
    let k = sec(
        &mut i,
        &[
            ("InitiatorName", initiator.to_string()),
            ("TargetName", TARGET.to_string()),
            ("AuthMethod", "CHAP,None".to_string()),
        ],
    )
    .await
    .expect("AuthMethod answered");
    assert_eq!(k.get("AuthMethod"), Some("CHAP"));
    i
}

/// Offer CHAP and CHAP_A=5: the target's (CHAP_I, challenge).
async fn challenged(t: &TestTarget, initiator: &str) -> (Initiator, u8, Vec<u8>) {
    let mut i = offer_chap(t, initiator).await;
    let k = sec(&mut i, &[("CHAP_A", "5".to_string())])
        .await
        .expect("challenge");
    assert_eq!(k.get("CHAP_A"), Some("5"), "MD5 chosen: {k:?}");
    let id: u8 = k
        .get("CHAP_I")
        .expect("CHAP_I")
        .parse()
        .expect("CHAP_I is a number 0..=255");
    let c = decode_binary(k.get("CHAP_C").expect("CHAP_C")).expect("CHAP_C is binary");
    (i, id, c)
}

fn name(case: &str) -> String {
    format!("iqn.2026-11.org.example:chap-{case}")
}

/// The last security step: CHAP_N/CHAP_R (and more), asking to move on.
async fn answer(i: &mut Initiator, keys: &[(&str, String)]) -> Result<TextPairs, Refusal> {
    step(i, Stage::Security, Stage::Operational, true, keys)
        .await
        .map(|(_, k)| k)
}

fn right_r(id: u8, c: &[u8]) -> String {
    encode_binary(&chap_md5(id, SECRET.as_bytes(), c))
}

#[tokio::test]
async fn chap_a_negotiation_and_the_targets_challenge() {
    let t = target(false).await;
    // Only MD5 (5) is acceptable: a list without it fails the login (2/1).
    for (n, list) in ["6", "7,6", "0x81", "", "5x"].into_iter().enumerate() {
        let mut i = offer_chap(&t, &name(&format!("alg{n}"))).await;
        let r = sec(&mut i, &[("CHAP_A", list.to_string())]).await;
        assert_eq!(r.unwrap_err(), (2, 1), "CHAP_A={list}");
    }
    // MD5 anywhere in the list is picked.
    let mut i = offer_chap(&t, &name("alg-list")).await;
    let k = sec(&mut i, &[("CHAP_A", "7,6,5".to_string())])
        .await
        .unwrap();
    assert_eq!(k.get("CHAP_A"), Some("5"));
    // The target's challenge: CHALLENGE_LEN random bytes, within 1..=1024, fresh per login.
    let (_, _, c1) = challenged(&t, &name("c1")).await;
    let (_, _, c2) = challenged(&t, &name("c2")).await;
    assert_eq!(c1.len(), CHALLENGE_LEN);
    assert!((16..=MAX_BINARY_LEN).contains(&c1.len()));
    assert_ne!(c1, c2, "challenges are not reused");
    t.stop().await;
}

#[tokio::test]
async fn the_response_must_answer_the_identifier_sent() {
    let t = target(false).await;
    // A response over another identifier (or the right one over another challenge)
    // is refused.
    let (mut i, id, c) = challenged(&t, &name("id-other")).await;
    let r = answer(
        &mut i,
        &[
            ("CHAP_N", USER.into()),
            ("CHAP_R", right_r(id.wrapping_add(1), &c)),
        ],
    )
    .await;
    assert_eq!(r.unwrap_err(), (2, 1));
    let (mut i, id, mut c) = challenged(&t, &name("id-chal")).await;
    c[0] ^= 1;
    let r = answer(
        &mut i,
        &[("CHAP_N", USER.into()), ("CHAP_R", right_r(id, &c))],
    )
    .await;
    assert_eq!(r.unwrap_err(), (2, 1));
    // The right identifier and challenge: accepted, and the login completes.
    let (mut i, id, c) = challenged(&t, &name("id-right")).await;
    let r = answer(
        &mut i,
        &[("CHAP_N", USER.into()), ("CHAP_R", right_r(id, &c))],
    )
    .await;
    r.expect("the right response is accepted");
    t.stop().await;
}

/// Builds a CHAP_R value from the target's identifier and challenge.
type MakeR = Box<dyn Fn(u8, &[u8]) -> String>;

#[tokio::test]
async fn malformed_or_mis_sized_chap_r_is_refused() {
    let t = target(false).await;
    let cases: Vec<(&str, MakeR)> = vec![
        ("empty", Box::new(|_, _| String::new())),
        // The right digest without the 0x prefix is not a binary value.
        (
            "no-prefix",
            Box::new(|id, c| right_r(id, c).trim_start_matches("0x").to_string()),
        ),
        ("odd-hex", Box::new(|id, c| format!("{}0", right_r(id, c)))),
        ("not-hex", Box::new(|_, _| format!("0x{}", "zz".repeat(16)))),
        ("bad-base64", Box::new(|_, _| "0b!!!!".to_string())),
        // One byte short and one byte long (MD5 gives 16).
        (
            "15-bytes",
            Box::new(|id, c| encode_binary(&chap_md5(id, SECRET.as_bytes(), c)[..15])),
        ),
        (
            "17-bytes",
            Box::new(|id, c| {
                let mut r = chap_md5(id, SECRET.as_bytes(), c).to_vec();
                r.push(0);
                encode_binary(&r)
            }),
        ),
        // Longer than any binary value may be (1024 bytes): refused by the text layer.
        (
            "too-long",
            Box::new(|_, _| encode_binary(&vec![0xab; MAX_BINARY_LEN + 1])),
        ),
    ];
    for (case, make) in cases {
        let (mut i, id, c) = challenged(&t, &name(case)).await;
        let r = answer(&mut i, &[("CHAP_N", USER.into()), ("CHAP_R", make(id, &c))]).await;
        let (class, _) = r.expect_err(case);
        assert_eq!(
            class, 2,
            "{case}: an initiator error or authentication failure"
        );
    }
    // A wrong user name with the right response.
    let (mut i, id, c) = challenged(&t, &name("user")).await;
    let r = answer(
        &mut i,
        &[("CHAP_N", "host2".into()), ("CHAP_R", right_r(id, &c))],
    )
    .await;
    assert_eq!(r.unwrap_err(), (2, 1));
    t.stop().await;
}

#[tokio::test]
async fn chap_keys_out_of_order_are_refused() {
    let t = target(false).await;
    // CHAP_N/CHAP_R before any challenge was issued.
    let mut i = offer_chap(&t, &name("early-r")).await;
    let r = answer(
        &mut i,
        &[
            ("CHAP_N", USER.into()),
            ("CHAP_R", "0x".to_string() + &"00".repeat(16)),
        ],
    )
    .await;
    assert_eq!(r.unwrap_err(), (2, 1));
    // CHAP_R without CHAP_N, and CHAP_N without CHAP_R.
    let (mut i, id, c) = challenged(&t, &name("r-only")).await;
    assert_eq!(
        answer(&mut i, &[("CHAP_R", right_r(id, &c))])
            .await
            .unwrap_err(),
        (2, 1)
    );
    let (mut i, _, _) = challenged(&t, &name("n-only")).await;
    assert_eq!(
        answer(&mut i, &[("CHAP_N", USER.into())])
            .await
            .unwrap_err(),
        (2, 1)
    );
    // Asking to leave the security stage with no response: the target does not let the
    // login through; going on to the operational stage anyway is an authentication failure.
    let (mut i, _, _) = challenged(&t, &name("skip")).await;
    let (transit, _) = step(&mut i, Stage::Security, Stage::Operational, true, &[])
        .await
        .expect("answered");
    assert!(!transit, "no transit before authentication");
    let r = step(
        &mut i,
        Stage::Operational,
        Stage::FullFeature,
        true,
        &[("HeaderDigest", "None".into())],
    )
    .await;
    assert_eq!(r.unwrap_err().0, 2, "no full feature phase without CHAP");
    t.stop().await;
}

/// The mutual-CHAP step: a right response plus the initiator's own CHAP_I/CHAP_C.
async fn mutual_with(
    t: &TestTarget,
    case: &str,
    ci: &str,
    cc: String,
) -> Result<TextPairs, Refusal> {
    let (mut i, id, c) = challenged(t, &name(case)).await;
    answer(
        &mut i,
        &[
            ("CHAP_N", USER.into()),
            ("CHAP_R", right_r(id, &c)),
            ("CHAP_I", ci.to_string()),
            ("CHAP_C", cc),
        ],
    )
    .await
}

#[tokio::test]
async fn mutual_chap_answers_our_identifier_and_refuses_bad_challenges() {
    let t = target(true).await;
    // A good 16-byte challenge: the target answers as TUSER with
    // MD5(our CHAP_I || target secret || our challenge).
    let mine = [0x3cu8; 16];
    let k = mutual_with(&t, "good", "201", encode_binary(&mine))
        .await
        .expect("mutual CHAP");
    assert_eq!(k.get("CHAP_N"), Some(TUSER));
    let r = decode_binary(k.get("CHAP_R").unwrap()).unwrap();
    assert_eq!(r, chap_md5(201, TSECRET.as_bytes(), &mine).to_vec());
    // Refused: too short, not binary, a bad identifier, and our own challenge reflected.
    let refused: Vec<(&str, &str, String)> = vec![
        ("short-2", "7", "0x0102".into()),
        ("short-0", "7", "0x".into()),
        ("not-binary", "7", "hello".into()),
        ("id-256", "256", encode_binary(&[9u8; 16])),
        ("id-neg", "-1", encode_binary(&[9u8; 16])),
        ("id-word", "seven", encode_binary(&[9u8; 16])),
    ];
    for (case, ci, cc) in refused {
        let r = mutual_with(&t, case, ci, cc).await;
        assert_eq!(r.unwrap_err().0, 2, "{case}");
    }
    let (mut i, id, c) = challenged(&t, &name("reflect")).await;
    let r = answer(
        &mut i,
        &[
            ("CHAP_N", USER.into()),
            ("CHAP_R", right_r(id, &c)),
            ("CHAP_I", id.to_string()),
            ("CHAP_C", encode_binary(&c)),
        ],
    )
    .await;
    assert_eq!(r.unwrap_err(), (2, 1), "a reflected challenge is refused");
    // The target requires mutual CHAP: an initiator that does not challenge it is refused.
    let (mut i, id, c) = challenged(&t, &name("no-mutual")).await;
    let r = answer(
        &mut i,
        &[("CHAP_N", USER.into()), ("CHAP_R", right_r(id, &c))],
    )
    .await;
    assert_eq!(r.unwrap_err(), (2, 1));
    t.stop().await;
}

#[tokio::test]
async fn mutual_chap_with_the_initiators_secret_is_refused() {
    // A target configured (bypassing the node's config check) with a mutual secret equal
    // to the initiator's: answering would let a host learn MD5(id || its own secret ||
    // c) for a challenge it chose, so the login is refused.
    let t = TestTarget::start(TargetSpec {
        chap: Some(ChapConfig {
            username: USER.into(),
            secret: SECRET.into(),
            mutual: Some((TUSER.into(), SECRET.into())),
        }),
        ..Default::default()
    })
    .await;
    let r = mutual_with(&t, "same-secret", "5", encode_binary(&[0x11u8; 16])).await;
    assert_eq!(r.unwrap_err(), (2, 1));
    t.stop().await;
}

// ---- Mutual challenge bounds and pairing (RFC 7143 §12.1.3). ----

#[tokio::test]
async fn mutual_chap_challenge_bounds_and_pairing() {
    let t = target(true).await;
    let long = base64(&vec![2u8; MAX_BINARY_LEN + 1]);
    assert_eq!(
        decode_binary(&long).map(|b| b.len()),
        Some(MAX_BINARY_LEN + 1)
    );
    let cases: Vec<(&str, Option<&str>, Option<String>)> = vec![
        // Shorter than the MD5 output (iscsi_wire::chap::MIN_PEER_CHALLENGE_LEN = 16).
        ("short-8", Some("7"), Some(encode_binary(&[1u8; 8]))),
        ("short-15", Some("7"), Some(encode_binary(&[1u8; 15]))),
        // Longer than 1024 bytes, in base64 so it passes the text layer's value limit.
        ("long-1025", Some("7"), Some(long)),
        // Half a mutual challenge is a protocol error, not a one-way login.
        ("i-only", Some("7"), None),
        ("c-only", None, Some(encode_binary(&[3u8; 16]))),
    ];
    let mut accepted = Vec::new();
    for (case, ci, cc) in cases {
        let (mut i, id, c) = challenged(&t, &name(case)).await;
        let mut keys = vec![("CHAP_N", USER.to_string()), ("CHAP_R", right_r(id, &c))];
        if let Some(ci) = ci {
            keys.push(("CHAP_I", ci.to_string()));
        }
        if let Some(cc) = cc {
            keys.push(("CHAP_C", cc));
        }
        if answer(&mut i, &keys).await.is_ok() {
            accepted.push(case);
        }
    }
    t.stop().await;
    assert!(
        accepted.is_empty(),
        "accepted, must be refused: {accepted:?}"
    );
}

/// `0b` base64 form of a binary value (RFC 7143 §6.1).
fn base64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::from("0b");
    for ch in b.chunks(3) {
        let n = (u32::from(ch[0]) << 16)
            | (u32::from(*ch.get(1).unwrap_or(&0)) << 8)
            | u32::from(*ch.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= ch.len() {
                s.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}
