//! What a cluster serves, changed online through the `switchyard` CLI: a volume is
//! created and exported through one member and appears on both (a live session gets
//! REPORTED LUNS DATA HAS CHANGED), is written through one member and read through the
//! other, grown, remapped by a migration and shown; the zoning closes the target to a
//! logged-in initiator (its session ends) and masks LUNs; bad admin input gets a
//! precise error and changes nothing; a forced delete takes the LUN away.

use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::cluster_rig::*;
use integration_tests::*;

const BS: usize = 512;
/// 16 MiB array LUs: vol1 takes all of LUN 0, the new volume lives on LUN 1.
const BLOCKS: u64 = 32768;

/// Run the CLI against member `i`; (success, stdout + stderr).
fn cli(rig: &ClusterRig, i: usize, args: &[&str]) -> (bool, String) {
    let out = Command::new(switchyard_bin())
        .args([
            "--node",
            &format!("http://127.0.0.1:{}", rig.nodes[i].api),
            "--token",
            ADMIN_TOKEN,
        ])
        .args(args)
        .output()
        .expect("run the CLI");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn cli_ok(rig: &ClusterRig, i: usize, args: &[&str]) -> String {
    let (ok, text) = cli(rig, i, args);
    assert!(ok, "switchyard {args:?} failed:\n{text}");
    text
}

fn cli_err(rig: &ClusterRig, i: usize, args: &[&str], want: &str) -> String {
    let (ok, text) = cli(rig, i, args);
    assert!(!ok, "switchyard {args:?} succeeded:\n{text}");
    assert!(
        text.contains(want),
        "switchyard {args:?}: the error does not say {want:?}:\n{text}"
    );
    text
}

async fn login(
    rig: &ClusterRig,
    node: usize,
    name: &str,
    isid: u8,
) -> Result<Initiator, LoginFailure> {
    let mut i = Initiator::connect(rig.nodes[node].portal_addr()).await;
    i.login(&LoginOpts {
        initiator: Some(format!("iqn.2026-11.org.test:{name}")),
        target: Some(CLUSTER_TARGET.into()),
        isid: Some([0x80, 0, 0, 0, 8, isid]),
        ..Default::default()
    })
    .await
    .map(|_| i)
}

/// REPORT LUNS: the LUN numbers.
async fn report_luns(i: &mut Initiator) -> Vec<u16> {
    let r = i
        .scsi(0, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], 256)
        .await;
    assert_eq!(r.status, 0, "REPORT LUNS: {r:?}");
    let n = u32::from_be_bytes(r.data[0..4].try_into().unwrap()) as usize / 8;
    (0..n)
        .map(|k| u16::from_be_bytes([r.data[8 + 8 * k], r.data[9 + 8 * k]]) & 0x3fff)
        .collect()
}

/// READ CAPACITY (16): the number of blocks.
async fn capacity(i: &mut Initiator, lun: u16) -> u64 {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9e;
    cdb[1] = 0x10;
    cdb[13] = 32;
    let (r, _) = past_ua(i, lun, &cdb, &[], 32).await;
    assert_eq!(r.status, 0, "READ CAPACITY: {r:?}");
    u64::from_be_bytes(r.data[0..8].try_into().unwrap()) + 1
}

/// Run `cdb` until it is not a unit attention (at most 5 tries); the result and the
/// (ASC, ASCQ) of the unit attentions seen.
async fn past_ua(
    i: &mut Initiator,
    lun: u16,
    cdb: &[u8],
    data: &[u8],
    len: u32,
) -> (ScsiResult, Vec<(u8, u8)>) {
    let mut seen = Vec::new();
    for _ in 0..5 {
        let r = i.scsi(lun, cdb, data, len).await;
        if r.status == 2 && r.sense_key() == 6 {
            seen.push((r.sense[12], r.sense[13]));
            continue;
        }
        return (r, seen);
    }
    panic!("unit attentions never end: {seen:?}");
}

/// Wait until `GET path` on member `i` answers a text for which `ok` holds (the other
/// member applies committed changes a moment later).
async fn until_get(rig: &ClusterRig, i: usize, path: &str, what: &str, ok: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let c = rig.nodes[i].client();
        let p = path.to_string();
        let got = tokio::task::spawn_blocking(move || c.get_text(&p))
            .await
            .unwrap();
        if got.as_deref().is_ok_and(&ok) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting: {what} ({got:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_and_zoning_change_online_through_the_cli() {
    let rig = ClusterRig::start(RigOpts {
        blocks: BLOCKS,
        ..RigOpts::default()
    })
    .await;
    let tgt = CLUSTER_TARGET;

    // A host logged in through member 1 before anything changes: LUN 0 only.
    let mut early = login(&rig, 1, "early", 1).await.expect("login");
    early.clear_ua(0).await;
    assert_eq!(report_luns(&mut early).await, [0]);

    // Bad input: precise errors, nothing changes.
    let taken = format!("{tgt}:0");
    let bad: [(&[&str], &str); 10] = [
        (
            &["create", "bad", "--on", "array/lun0", "--size", "1MiB"],
            "used twice",
        ),
        (
            &["create", "big", "--on", "array/lun1", "--size", "32MiB"],
            "array/lun1",
        ),
        (
            &["create", "x", "--on", "array/lun9", "--size", "1MiB"],
            "no back-end LU \"array/lun9\"",
        ),
        (
            &["create", "bad name", "--size", "1MiB"],
            "not a valid volume name",
        ),
        (&["create", "w", "--size", "1MiB", "--wwn", "naa.12"], "wwn"),
        (
            &[
                "create",
                "db",
                "--on",
                "array/lun1",
                "--size",
                "4MiB",
                "--export",
                &taken,
            ],
            "LUN 0 of",
        ),
        (
            &[
                "create",
                "db",
                "--on",
                "array/lun1",
                "--size",
                "4MiB",
                "--export",
                "iqn.2026-11.org.nowhere:x:1",
            ],
            "serves no target",
        ),
        (
            &["export", "nope", "--target", tgt, "--lun", "3"],
            "no volume named \"nope\"",
        ),
        (&["delete", "vol1"], "in this node's config"),
        (&["delete", "nope"], "no volume named \"nope\""),
    ];
    for (args, want) in bad {
        let args: Vec<&str> = std::iter::once("volumes")
            .chain(args.iter().copied())
            .collect();
        cli_err(&rig, 0, &args, want);
    }
    cli_err(
        &rig,
        0,
        &["zoning", "group", "esx", "--add", "21:00:00:24:ff:4b:9c"],
        "21:00:00:24:ff:4b:9c",
    );
    let vols = cli_ok(&rig, 1, &["volumes"]);
    assert!(!vols.contains("bad") && !vols.contains("big"), "{vols}");
    // The API refuses a malformed WWN in a zoning document (not only the CLI).
    let c = rig.nodes[0].client();
    let r = tokio::task::spawn_blocking(move || {
        c.put::<_, serde_json::Value>(
            "/api/v1/zoning",
            &serde_json::json!({"expected_version": 0, "zoning": {
                "groups": [{"name": "g", "members": ["21:00:00:24:ff:4b:9c"]}], "rules": []}}),
        )
    })
    .await
    .unwrap();
    let e = r.expect_err("a malformed WWN was accepted").to_string();
    assert!(e.contains("21:00:00:24:ff:4b:9c"), "{e}");
    assert!(cli_ok(&rig, 1, &["zoning"]).contains("config"));

    // Create through member 0, exported as LUN 1.
    let out = cli_ok(
        &rig,
        0,
        &[
            "volumes",
            "create",
            "db",
            "--on",
            "array/lun1",
            "--size",
            "4MiB",
            "--export",
            &format!("{tgt}:1"),
        ],
    );
    assert!(out.contains(&format!("served as {tgt} LUN 1")), "{out}");
    // The live session on member 1 is told, and sees the new LUN.
    let (r, uas) = past_ua(&mut early, 0, &[0, 0, 0, 0, 0, 0], &[], 0).await;
    assert_eq!(r.status, 0);
    until_get(&rig, 1, "/api/v1/targets", "member 1 shows LUN 1", |t| {
        t.contains("\"db\"")
    })
    .await;
    let (r, more) = past_ua(&mut early, 0, &[0, 0, 0, 0, 0, 0], &[], 0).await;
    assert_eq!(r.status, 0);
    let uas: Vec<(u8, u8)> = uas.into_iter().chain(more).collect();
    assert!(
        uas.contains(&(0x3f, 0x0e)),
        "no REPORTED LUNS DATA HAS CHANGED: {uas:?}"
    );
    assert_eq!(report_luns(&mut early).await, [0, 1]);
    assert_eq!(capacity(&mut early, 1).await, 8192);

    // Written through member 1, read through member 0.
    let data: Vec<u8> = (0..64).flat_map(|b| pattern(7, b, BS)).collect();
    let (w, _) = past_ua(&mut early, 1, &cdb10(0x2a, 0, 64), &data, 0).await;
    assert_eq!(w.status, 0, "write: {w:?}");
    let mut other = login(&rig, 0, "other", 2).await.expect("login");
    other.clear_ua(0).await;
    let (r, _) = past_ua(&mut other, 1, &cdb10(0x28, 0, 64), &[], (64 * BS) as u32).await;
    assert_eq!(r.status, 0);
    assert!(
        r.data == data,
        "the data written through member 1 differs through member 0"
    );

    // Who is logged in where: every member's sessions, asked through member 0.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = cli_ok(&rig, 0, &["sessions", "--all"]);
        let on = |who: &str, node: &str| {
            s.lines()
                .any(|l| l.contains(who) && l.split_whitespace().next() == Some(node))
        };
        if on("org.test:early", "n2") && on("org.test:other", "n1") {
            break;
        }
        assert!(Instant::now() < deadline, "sessions --all:\n{s}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Grow (a remap) through member 1: 6 MiB, the new blocks further on LUN 1.
    let out = cli_ok(
        &rig,
        1,
        &[
            "volumes",
            "grow",
            "db",
            "--size",
            "6MiB",
            "--on",
            "array/lun1",
            "--bstart",
            "8192",
        ],
    );
    assert!(out.contains("done"), "{out}");
    let (_, uas) = past_ua(&mut early, 1, &[0, 0, 0, 0, 0, 0], &[], 0).await;
    assert!(
        uas.contains(&(0x2a, 0x09)),
        "no CAPACITY DATA HAS CHANGED: {uas:?}"
    );
    assert_eq!(capacity(&mut early, 1).await, 12288);

    // Migrate its first extent further along LUN 1, through member 0, then show.
    let out = cli_ok(
        &rig,
        0,
        &[
            "migrate",
            "db",
            "--to",
            "array/lun1",
            "--at",
            "16384",
            "--vstart",
            "0",
            "--blocks",
            "8192",
        ],
    );
    assert!(out.contains("done") || out.contains("100%"), "{out}");
    let out = cli_ok(&rig, 1, &["volumes", "show", "db"]);
    assert!(
        out.contains("[16384, 24576)"),
        "the map does not show the migrated extent:\n{out}"
    );
    let (r, _) = past_ua(&mut early, 1, &cdb10(0x28, 0, 64), &[], (64 * BS) as u32).await;
    assert!(
        r.status == 0 && r.data == data,
        "data lost by the migration"
    );

    // Zoning: close the target to everyone but "other" (LUN 1 only). The early
    // session is ended; it may not log in again; "other" sees only LUN 1.
    cli_ok(
        &rig,
        0,
        &[
            "zoning",
            "allow",
            "--target",
            tgt,
            "--initiator",
            "iqn.2026-11.org.test:other",
            "--luns",
            "1",
        ],
    );
    let z = cli_ok(&rig, 1, &["zoning"]);
    assert!(
        z.contains("iqn.2026-11.org.test:other") && z.contains("cluster"),
        "{z}"
    );
    until_get(
        &rig,
        1,
        "/api/v1/sessions",
        "the early session is ended",
        |t| !t.contains("org.test:early"),
    )
    .await;
    let refused = login(&rig, 1, "early", 3).await;
    assert!(refused.is_err(), "a zoned-out initiator logged in");
    let mut masked = login(&rig, 1, "other", 4).await.expect("login");
    masked.clear_ua(1).await;
    assert_eq!(report_luns(&mut masked).await, [1]);
    cli_ok(&rig, 1, &["zoning", "clear"]);
    let z = cli_ok(&rig, 0, &["zoning"]);
    assert!(z.contains("config"), "{z}");

    // The configuration as a document, kept for the import below.
    let exported = cli_ok(&rig, 0, &["config", "export"]);
    assert!(
        exported.contains("name = \"db\"") && exported.contains("[[exports]]"),
        "{exported}"
    );
    let doc = rig.dir.path().join("cluster-config.toml");
    std::fs::write(&doc, &exported).unwrap();

    // Delete: refused while exported; --force takes the LUN away from live sessions.
    cli_err(&rig, 1, &["volumes", "delete", "db"], "exported as");
    cli_ok(&rig, 1, &["volumes", "delete", "db", "--force"]);
    until_get(
        &rig,
        0,
        "/api/v1/volumes",
        "member 0 no longer shows db",
        |t| !t.contains("\"db\""),
    )
    .await;
    let (r, _) = past_ua(&mut other, 0, &[0, 0, 0, 0, 0, 0], &[], 0).await;
    assert_eq!(r.status, 0);
    assert_eq!(report_luns(&mut other).await, [0]);
    let r = other.scsi(1, &cdb10(0x28, 0, 1), &[], BS as u32).await;
    assert_eq!(
        (r.status, r.sense_key()),
        (2, 5),
        "LUN 1 still answers: {r:?}"
    );
    // vol1 is untouched.
    let (r, _) = past_ua(&mut other, 0, &cdb10(0x28, 0, 1), &[], BS as u32).await;
    assert_eq!(r.status, 0);

    // Importing the document brings db back, on the same blocks: its data is there.
    let doc = doc.to_str().unwrap();
    let plan = cli_ok(&rig, 1, &["config", "import", doc, "--dry-run"]);
    assert!(plan.contains("would create volume db"), "{plan}");
    assert!(
        !cli_ok(&rig, 1, &["volumes"]).contains("db "),
        "a dry run changed something"
    );
    cli_ok(&rig, 1, &["config", "import", doc]);
    assert!(cli_ok(&rig, 0, &["config", "import", doc]).contains("nothing to do"));
    let (r, _) = past_ua(&mut other, 1, &cdb10(0x28, 0, 64), &[], (64 * BS) as u32).await;
    assert!(
        r.status == 0 && r.data == data,
        "db after the import: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_array_added_online_serves_a_new_volume_on_every_member() {
    let mut rig = ClusterRig::start(RigOpts::default()).await;
    // A second array, started after the cluster.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("array3.toml");
    let iqn = "iqn.2026-11.org.switchyard:array3";
    // The array admits one initiator name: the one the members are given; and it
    // wants CHAP.
    let client = "iqn.2026-11.org.test:arr3-client";
    const ARR3_SECRET: &str = "arr3-chap-sec-0";
    std::fs::write(
        &cfg,
        format!(
            "[node]\nname = \"array3\"\ndata_dir = \"{}\"\n[[portal]]\nlisten = \"127.0.0.1:{port}\"\n\
             [[target]]\nname = \"{iqn}\"\n[target.chap]\nusername = \"arr3user\"\nsecret = \"{ARR3_SECRET}\"\n\
             [[target.lun]]\nlun = 0\npath = \"l0.img\"\nsize = \"8MiB\"\n\
             [[zoning.rules]]\ntarget = \"{iqn}\"\ninitiator = \"{client}\"\nluns = \"all\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let _array3 = NodeProcess::spawn(&cfg, None);
    wait_port(port).await;
    let portal = format!("127.0.0.1:{port}");

    // A wrong target name is found by the login check; nothing is recorded.
    cli_err(
        &rig,
        0,
        &[
            "backends",
            "add",
            "arr3",
            "--portal",
            &portal,
            "--target",
            "iqn.2026-11.org.switchyard:nope",
        ],
        "cannot log in",
    );
    cli_err(
        &rig,
        0,
        &[
            "backends", "add", "array", "--portal", &portal, "--target", iqn,
        ],
        "exists already",
    );
    cli_err(
        &rig,
        0,
        &[
            "backends", "add", "a/b", "--portal", &portal, "--target", iqn,
        ],
        "not a valid back-end id",
    );
    // Without the initiator name the array admits, the login check fails.
    cli_err(
        &rig,
        0,
        &[
            "backends", "add", "arr3", "--portal", &portal, "--target", iqn,
        ],
        "cannot log in",
    );
    assert!(!cli_ok(&rig, 1, &["backends"]).contains("arr3"));

    let out = cli_ok(
        &rig,
        0,
        &[
            "backends",
            "add",
            "arr3",
            "--portal",
            &portal,
            "--target",
            iqn,
            "--initiator-name",
            client,
            "--chap-user",
            "arr3user",
            "--chap-secret",
            ARR3_SECRET,
        ],
    );
    assert!(out.contains("arr3/lun0"), "{out}");
    until_get(
        &rig,
        1,
        "/api/v1/backends",
        "member 1 logs in to arr3",
        |t| t.contains("arr3/lun0"),
    )
    .await;
    cli_ok(
        &rig,
        1,
        &[
            "volumes",
            "create",
            "v3",
            "--on",
            "arr3/lun0",
            "--size",
            "8MiB",
            "--export",
            &format!("{CLUSTER_TARGET}:2"),
        ],
    );
    let mut host = login(&rig, 0, "h3", 5).await.expect("login");
    host.clear_ua(0).await;
    until_get(&rig, 0, "/api/v1/volumes/v3", "member 0 shows LUN 2", |t| {
        t.contains("\"lun\":2")
    })
    .await;
    let data: Vec<u8> = (0..16).flat_map(|b| pattern(3, 100 + b, BS)).collect();
    let (w, _) = past_ua(&mut host, 2, &cdb10(0x2a, 100, 16), &data, 0).await;
    assert_eq!(w.status, 0, "write: {w:?}");
    let mut other = login(&rig, 1, "h4", 6).await.expect("login");
    other.clear_ua(0).await;
    let (r, _) = past_ua(&mut other, 2, &cdb10(0x28, 100, 16), &[], (16 * BS) as u32).await;
    assert!(r.status == 0 && r.data == data, "through member 1: {r:?}");

    // A restarted member opens the array added online at start and serves v3 again.
    drop(other);
    rig.kill(1);
    rig.restart(1).await;
    let mut again = login(&rig, 1, "h5", 7).await.expect("login");
    again.clear_ua(0).await;
    assert_eq!(report_luns(&mut again).await, [0, 2]);
    let (r, _) = past_ua(&mut again, 2, &cdb10(0x28, 100, 16), &[], (16 * BS) as u32).await;
    assert!(r.status == 0 && r.data == data, "after the restart: {r:?}");
    // The members opened the array with its CHAP secret, which the replicated state
    // holds sealed: no file of theirs (Raft log, snapshots, configs) contains it.
    assert_no_file_contains(rig.dir.path(), ARR3_SECRET.as_bytes());

    // Removal is refused while a volume uses the array, allowed once it is gone.
    cli_err(
        &rig,
        0,
        &["backends", "remove", "arr3"],
        "v3 uses arr3/lun0",
    );
    cli_err(&rig, 0, &["backends", "remove", "array"], "config");
    cli_ok(&rig, 0, &["volumes", "delete", "v3", "--force"]);
    cli_ok(&rig, 1, &["backends", "remove", "arr3"]);
    for i in [0, 1] {
        until_get(
            &rig,
            i,
            "/api/v1/backends",
            "the member lets go of arr3",
            |t| !t.contains("arr3"),
        )
        .await;
    }
}

/// Panics if any file under `dir` contains `needle`.
fn assert_no_file_contains(dir: &std::path::Path, needle: &[u8]) {
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                files += 1;
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{} holds the secret",
                    p.display()
                );
            }
        }
    }
    assert!(files > 0, "no files under {}", dir.display());
}
