//! A bounded, deterministic fuzz run in the normal test suite: the logic of every
//! `cargo fuzz` target (`fuzz/src/lib.rs`, shared with `fuzz/fuzz_targets/`) on a seeded
//! set of inputs: random bytes, truncations and mutations of valid seeds built with the
//! crates' own encoders, and every saved crash under `fuzz/regressions/<target>/`.
//! The targets assert their properties themselves (round trips, framing bounds, data-in
//! within the allocation length); here nothing may panic.

use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Instant;

use bytes::BytesMut;
use iscsi_wire::digest::Digests;
use iscsi_wire::pdu;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switchyard_fuzz::seeds;

/// Inputs per target (besides seeds and regressions).
const INPUTS: usize = 20_000;

fn regressions(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .map(|e| e.expect("read fuzz/regressions").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).expect("read regression input");
            (p, data)
        })
        .collect()
}

/// One random change: bit flip, byte set, interesting value, insert, delete, duplicate.
fn mutate_once(rng: &mut StdRng, m: &mut Vec<u8>) {
    if m.is_empty() {
        m.push(rng.gen());
        return;
    }
    let i = rng.gen_range(0..m.len());
    match rng.gen_range(0..7) {
        0 | 1 => m[i] ^= 1 << rng.gen_range(0..8),
        2 => m[i] = rng.gen(),
        3 => m[i] = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0x10, 0x20][rng.gen_range(0..7)],
        4 => m.insert(i, rng.gen()),
        5 => {
            m.remove(i);
        }
        _ => {
            let end = (i + rng.gen_range(1..9)).min(m.len());
            let chunk = m[i..end].to_vec();
            let at = rng.gen_range(0..=m.len());
            m.splice(at..at, chunk);
        }
    }
}

fn inputs(target: &str, rng: &mut StdRng) -> Vec<Vec<u8>> {
    let seeds = seeds::for_target(target);
    let mut out: Vec<Vec<u8>> = seeds.clone();
    // Truncations: every length for short seeds, a sample for long ones.
    for s in &seeds {
        if s.len() <= 64 {
            out.extend((0..s.len()).map(|n| s[..n].to_vec()));
        } else {
            out.extend((0..64).map(|_| s[..rng.gen_range(0..s.len())].to_vec()));
        }
    }
    // A `session` input is a whole TCP connection to a live target: fewer of them.
    let n = if target == "session" {
        INPUTS / 40
    } else {
        INPUTS
    };
    while out.len() < n {
        let mut m = match rng.gen_range(0..10) {
            // Random bytes.
            0 => {
                let len = rng.gen_range(0..300);
                (0..len).map(|_| rng.gen()).collect()
            }
            // Two seeds spliced.
            1 => {
                let a = &seeds[rng.gen_range(0..seeds.len())];
                let b = &seeds[rng.gen_range(0..seeds.len())];
                let mut m = a[..rng.gen_range(0..=a.len())].to_vec();
                m.extend_from_slice(&b[rng.gen_range(0..=b.len())..]);
                m
            }
            _ => seeds[rng.gen_range(0..seeds.len())].clone(),
        };
        for _ in 0..rng.gen_range(1..6) {
            mutate_once(rng, &mut m);
        }
        if rng.gen_bool(0.1) {
            m.truncate(rng.gen_range(0..=m.len()));
        }
        out.push(m);
    }
    out
}

fn smoke(target: &str, seed: u64) {
    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let regressions = regressions(target);
    let mut all: Vec<(String, Vec<u8>)> = regressions
        .into_iter()
        .map(|(p, d)| (p.display().to_string(), d))
        .collect();
    let n_regressions = all.len();
    all.extend(
        inputs(target, &mut rng)
            .into_iter()
            .enumerate()
            .map(|(i, d)| (format!("generated input {i}"), d)),
    );
    for (name, data) in &all {
        let r = panic::catch_unwind(AssertUnwindSafe(|| switchyard_fuzz::run(target, data)));
        if r.is_err() {
            panic!(
                "fuzz target `{target}` panicked on {name} ({} bytes): {}\n\
                 save it under fuzz/regressions/{target}/ and reproduce with \
                 `cargo fuzz run {target} <file>`",
                data.len(),
                hex(data)
            );
        }
    }
    eprintln!(
        "fuzz_smoke {target}: {} inputs ({n_regressions} regressions) in {:.2?}",
        all.len(),
        start.elapsed()
    );
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn pdu() {
    smoke("pdu", 0x5157_0001);
}

#[test]
fn frame() {
    smoke("frame", 0x5157_0002);
}

#[test]
fn text_negotiate() {
    smoke("text_negotiate", 0x5157_0003);
}

#[test]
fn cdb() {
    smoke("cdb", 0x5157_0004);
}

#[test]
fn scsi_execute() {
    smoke("scsi_execute", 0x5157_0005);
}

#[test]
fn names() {
    smoke("names", 0x5157_0006);
}

#[test]
fn admin_input() {
    smoke("admin_input", 0x5157_0006);
}

#[test]
fn session() {
    smoke("session", 0x5157_0006);
}

/// Every seed PDU parses back to the value it was encoded from, with and without
/// digests, through both entry points.
#[test]
fn encoded_pdus_round_trip() {
    for req in seeds::requests() {
        for digests in [Digests::NONE, Digests::BOTH] {
            let mut buf = BytesMut::new();
            req.encode(&mut buf, digests);
            if digests == Digests::NONE {
                assert_eq!(pdu::parse_request_bytes(&buf).as_ref(), Ok(&req));
            }
            let raw = pdu::decode_frame(&mut buf, digests, 1 << 24)
                .expect("frame")
                .expect("a whole PDU");
            assert!(buf.is_empty(), "{req:?} left {} bytes", buf.len());
            assert_eq!(raw.parse_request().as_ref(), Ok(&req));
        }
    }
    for resp in seeds::responses() {
        let mut buf = BytesMut::new();
        resp.encode(&mut buf, Digests::NONE);
        assert_eq!(pdu::parse_response_bytes(&buf).as_ref(), Ok(&resp));
    }
}

/// Every seed is a valid input that its target accepts, and the `scsi_execute` seeds
/// reach the commands they name (GOOD status for the basic ones).
#[test]
fn seeds_are_valid() {
    for target in switchyard_fuzz::TARGETS {
        let seeds = seeds::for_target(target);
        assert!(!seeds.is_empty(), "{target}");
        for s in seeds {
            switchyard_fuzz::run(target, &s);
        }
    }
    // The scsi_execute seeds get past unit attentions, reservations and parameter
    // checks: each implemented command ends GOOD in at least one of them.
    let mut good = std::collections::BTreeSet::new();
    for s in seeds::for_target("scsi_execute") {
        for (cdb, resp) in switchyard_fuzz::scsi_execute_trace(&s) {
            if resp.status == scsi::Status::Good {
                good.insert(cdb[0]);
            }
        }
    }
    for op in [
        0x00, 0x03, 0x08, 0x0A, 0x12, 0x15, 0x16, 0x17, 0x1A, 0x1B, 0x25, 0x28, 0x2A, 0x2E, 0x2F,
        0x34, 0x35, 0x41, 0x55, 0x56, 0x5A, 0x88, 0x8A, 0x8B, 0x8F, 0x91, 0x93, 0x9E, 0xA0, 0xA3,
        0xA8, 0xAA,
    ] {
        assert!(
            good.contains(&op),
            "no scsi_execute seed runs opcode {op:#04x} to GOOD"
        );
    }
    for cdb in seeds::cdb_list() {
        let parsed = scsi::parse_cdb(&cdb);
        if !matches!(cdb[0], 0x4D | 0x42 | 0x7F) {
            assert!(
                !matches!(parsed, Ok(scsi::Cdb::Unsupported(_)) | Err(_)),
                "seed CDB {cdb:02x?} does not parse: {parsed:?}"
            );
        }
    }
}

/// The admin_input seeds are not all refused: the command sequence takes a change
/// through its phases, so the fuzzer starts from inputs that reach deep states.
#[test]
fn admin_seeds_drive_the_cluster_state_machine() {
    let seeds = seeds::for_target("admin_input");
    let lines = seeds.last().unwrap();
    let mut st = cluster::ClusterState::default();
    let mut applied = 0;
    for line in lines.split(|b| *b == b'\n') {
        let cmd: cluster::Command = serde_json::from_slice(line).unwrap_or_else(|e| {
            panic!(
                "seed line does not parse: {e}: {}",
                String::from_utf8_lossy(line)
            )
        });
        if !matches!(st.apply(&cmd), cluster::Outcome::Refused(_)) {
            applied += 1;
        }
    }
    assert_eq!(
        applied, 23,
        "every seed command applies but the stale table and the removal of an array in use"
    );
    // The remap went through its phases (epoch 2); a volume was created and deleted.
    assert_eq!(st.table.epoch, 4);
    assert!(st.table.volume("v2").is_none() && st.catalog.backends.is_empty());
    assert_eq!(st.catalog.exports().count(), 0);
    assert_eq!(st.catalog.zoning, Some(fcwwn::Masking::open()));
    assert!(st.active().is_none());
    let m = &st.migrations.records[&1];
    assert_eq!(
        (m.state, m.copied_blocks, m.offloaded_blocks),
        (cluster::MigrationState::Aborting, 512, 512),
        "the migration seeds reach a started, progressed, aborting migration"
    );
}
