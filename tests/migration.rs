//! Online migration (issue 7) in a cluster of processes: `vol1` (on the array's LUN 0)
//! moves to LUN 1 window by window while pattern writers/checkers run through both data
//! nodes; copied by the nodes, or by the array with EXTENDED COPY; the driving node is
//! killed mid-way; a migration is aborted mid-way. Every test ends with a full
//! read-back of the volume (and, after an abort, of the source LU itself).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::cluster_rig::*;
use integration_tests::host_load::*;
use integration_tests::*;
use mgmt::model::MigrationView;
use serde_json::json;

const BS: usize = 512;
/// 32 MiB volume.
const BLOCKS: u64 = 65536;
/// Each checker owns `AREA` blocks from `w * AREA`; the rest is prefilled.
const AREA: u64 = 2048;
const CHECKERS: u64 = 4;
/// The prefilled pattern's writer id.
const PREFILL: u32 = 7;

async fn rig(witness: bool) -> ClusterRig {
    rig_of(witness, false, BLOCKS).await
}

/// Two data nodes (and a witness), vol1 of `blocks` blocks on the array's LUN 0 (or
/// on tgtd's LU), prefilled.
async fn rig_of(witness: bool, tgtd: bool, blocks: u64) -> ClusterRig {
    let rig = ClusterRig::start(RigOpts {
        data_nodes: 2,
        witness,
        blocks,
        drain_timeout_ms: 1000,
        tgtd,
    })
    .await;
    prefill(&rig).await;
    rig
}

/// Write the prefill pattern to every block outside the checkers' areas.
async fn prefill(rig: &ClusterRig) {
    let mut i = session(rig, 0, "prefill", 20).await;
    let per = 256u64;
    let mut lba = CHECKERS * AREA;
    while lba < rig.blocks {
        let data: Vec<u8> = (lba..lba + per)
            .flat_map(|b| pattern(PREFILL, b, BS))
            .collect();
        let (r, _) = host_cmd(&mut i, &cdb10(0x2a, lba as u32, per as u16), &data, 0).await;
        assert_eq!(r.status, 0, "prefill write at {lba}: {r:?}");
        lba += per;
    }
}

/// Read the whole volume through member `node` and count blocks that differ from the
/// checkers' last versions (`last`), zeroes in their unwritten blocks, and the prefill.
async fn wrong_blocks(rig: &ClusterRig, node: usize, last: &BTreeMap<u64, u32>) -> u64 {
    let mut i = session(rig, node, "readback", 21).await;
    read_back(&mut i, 0, last, rig.blocks).await
}

async fn read_back(i: &mut Initiator, lun: u16, last: &BTreeMap<u64, u32>, blocks: u64) -> u64 {
    let per = 256u64;
    let mut wrong = 0;
    let mut lba = 0;
    while lba < blocks {
        let r = i
            .scsi(
                lun,
                &cdb10(0x28, lba as u32, per as u16),
                &[],
                (per as usize * BS) as u32,
            )
            .await;
        assert_eq!(r.status, 0, "read-back at {lba}: {r:?}");
        for (k, got) in r.data.chunks(BS).enumerate() {
            let b = lba + k as u64;
            let want = if b < CHECKERS * AREA {
                last.get(&b)
                    .map_or_else(|| vec![0u8; BS], |&v| pattern(v, b, BS))
            } else {
                pattern(PREFILL, b, BS)
            };
            if got != want.as_slice() {
                wrong += 1;
            }
        }
        lba += per;
    }
    wrong
}

/// Start a migration of vol1 through member `i`.
async fn migrate(rig: &ClusterRig, i: usize, body: serde_json::Value) -> MigrationView {
    let c = rig.nodes[i].client();
    tokio::task::spawn_blocking(move || {
        c.post::<_, MigrationView>("/api/v1/volumes/vol1/migrate", &body)
            .map(|(_, m)| m)
    })
    .await
    .unwrap()
    .expect("migrate")
}

/// Migration `id` as member `i` sees it. A member that has not applied the start yet
/// (it was started through another one a moment ago) answers 404 for a while.
async fn migration(rig: &ClusterRig, i: usize, id: u64) -> MigrationView {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = rig.nodes[i].client();
        let r = tokio::task::spawn_blocking(move || {
            c.get::<MigrationView>(&format!("/api/v1/migrations/{id}"))
        })
        .await
        .unwrap();
        match r {
            Ok(m) => return m,
            Err(e) if Instant::now() < deadline => {
                eprintln!("member {i} does not show migration {id} yet: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("member {i}: migration {id}: {e}"),
        }
    }
}

/// Wait (up to `secs`) until migration `id`, as member `i` sees it, is in `state`.
async fn wait_state(rig: &ClusterRig, i: usize, id: u64, state: &str, secs: u64) -> MigrationView {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let m = migration(rig, i, id).await;
        if m.state == state {
            return m;
        }
        assert!(
            !matches!(m.state.as_str(), "failed" | "paused") || state == m.state,
            "migration {id} is {}: {:?}",
            m.state,
            m.reason
        );
        assert!(
            Instant::now() < deadline,
            "migration {id} not {state} after {secs} s: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until migration `id` has copied at least `percent`.
async fn wait_percent(rig: &ClusterRig, i: usize, id: u64, percent: f64) -> MigrationView {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let m = migration(rig, i, id).await;
        if m.percent >= percent {
            return m;
        }
        assert!(Instant::now() < deadline, "migration {id} stuck: {m:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sum of metric lines starting with `prefix` (a name and the start of its labels).
async fn metric(rig: &ClusterRig, i: usize, name: &str, label: &str) -> u64 {
    let text = rig.get_text(i, "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// vol1's extents as the cluster's table has them.
async fn extents(rig: &ClusterRig, i: usize) -> Vec<serde_json::Value> {
    let t: serde_json::Value =
        serde_json::from_str(&rig.get_text(i, "/api/v1/mapping").await).unwrap();
    t["volumes"][0]["extents"].as_array().unwrap().clone()
}

/// Four checkers, `w` through `nodes[w % len]`, until `stop`; their last versions.
async fn checkers(
    rig: &ClusterRig,
    nodes: &[usize],
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> BTreeMap<u64, u32> {
    let run = |w: u32| {
        let node = nodes[w as usize % nodes.len()];
        checker(
            rig,
            node,
            w,
            (u64::from(w) * AREA, AREA),
            stop.clone(),
            tally.clone(),
        )
    };
    let (a, b, c, d) = tokio::join!(run(0), run(1), run(2), run(3));
    a.into_iter().chain(b).chain(c).chain(d).collect()
}

fn report(tally: &Tally, what: &str) {
    let (ios, wrong, errors, retries) = (
        tally.ios.load(Ordering::Relaxed),
        tally.wrong.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        tally.retries.load(Ordering::Relaxed),
    );
    eprintln!("{what}: {ios} verified host I/Os, {wrong} wrong, {errors} errors, {retries} NOT READY retries");
    assert!(ios > 0, "no host I/O ran");
    assert_eq!((wrong, errors), (0, 0), "wrong data or failed host I/O");
}

/// Host I/Os per second in [from, to).
fn iops(tally: &Tally, from: Instant, to: Instant) -> f64 {
    let (n, ..) = tally.percentiles(from, to);
    n as f64 / (to - from).as_secs_f64().max(0.001)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migration_by_the_nodes_under_load_through_two_nodes_loses_nothing() {
    let rig = rig(false).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let load = checkers(&rig, &[0, 1], stop.clone(), tally.clone());
    let work = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let t0 = Instant::now();
        let m = migrate(
            &rig,
            1,
            json!({"to": "array/lun1", "window_mib": 1, "engine": "node", "max_rate_mib_s": 0}),
        )
        .await;
        assert_eq!(
            (m.state.as_str(), m.blocks, m.from.as_str()),
            ("running", BLOCKS, "array/lun0@0")
        );
        let done = wait_state(&rig, 0, m.id, "done", 180).await;
        let t1 = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
        (done, t0, t1)
    };
    let start = Instant::now();
    let (last, (done, t0, t1)) = tokio::join!(load, work);
    report(&tally, "node-copy migration");
    let secs = (t1 - t0).as_secs_f64();
    eprintln!(
        "migrated {} MiB in {secs:.1} s ({:.1} MiB/s, {} windows); host IOPS before {:.0}, during {:.0}",
        (BLOCKS * BS as u64) >> 20,
        (BLOCKS * BS as u64) as f64 / 1048576.0 / secs,
        done.windows,
        iops(&tally, start, t0),
        iops(&tally, t0, t1)
    );
    // Every window was copied once: writes to copied chunks went to both homes, so
    // nothing had to be copied again.
    let window = (1u64 << 20) / BS as u64;
    assert_eq!(done.windows, BLOCKS.div_ceil(window), "{done:?}");
    assert_eq!((done.copied_blocks, done.offloaded_blocks), (BLOCKS, 0));
    assert_eq!(
        extents(&rig, 0).await,
        vec![json!({"vstart": 0, "blocks": BLOCKS, "backend": "array/lun1", "bstart": 0})]
    );
    let node_bytes = metric(&rig, 0, "switchyard_copy_bytes_total", "engine=\"node\"").await
        + metric(&rig, 1, "switchyard_copy_bytes_total", "engine=\"node\"").await;
    assert!(
        node_bytes >= 2 * BLOCKS * BS as u64,
        "copy bytes counted: {node_bytes}"
    );
    for node in [0, 1] {
        assert_eq!(
            wrong_blocks(&rig, node, &last).await,
            0,
            "read-back through node {node}"
        );
    }
}

/// Acceptance 1 of issue 7: 1 GiB from a tgtd LU to a switchyard array LU under a
/// mixed load through both nodes (tgtd has no EXTENDED COPY: the nodes copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gibibyte_moves_from_tgtd_to_a_switchyard_array_under_load() {
    const GIB: u64 = (1 << 30) / BS as u64;
    let t = Instant::now();
    let rig = rig_of(false, true, GIB).await;
    eprintln!(
        "rig up and 1 GiB prefilled through node 0 in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let load = checkers(&rig, &[0, 1], stop.clone(), tally.clone());
    let work = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let t0 = Instant::now();
        let m = migrate(&rig, 0, json!({"to": "array/lun1", "max_rate_mib_s": 0})).await;
        assert_eq!(m.from, "tgt/lun1@0");
        let done = wait_state(&rig, 1, m.id, "done", 900).await;
        let t1 = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        (done, t0, t1)
    };
    let start = Instant::now();
    let (last, (done, t0, t1)) = tokio::join!(load, work);
    report(&tally, "1 GiB tgtd -> array migration");
    let secs = (t1 - t0).as_secs_f64();
    eprintln!(
        "migrated 1024 MiB tgtd -> switchyard array in {secs:.1} s: {:.1} MiB/s in {} windows; host IOPS before {:.0}, during {:.0}, after {:.0}",
        1024.0 / secs,
        done.windows,
        iops(&tally, start, t0),
        iops(&tally, t0, t1),
        iops(&tally, t1, t1 + Duration::from_secs(2))
    );
    assert_eq!((done.copied_blocks, done.offloaded_blocks), (GIB, 0));
    assert_eq!(
        extents(&rig, 0).await,
        vec![json!({"vstart": 0, "blocks": GIB, "backend": "array/lun1", "bstart": 0})]
    );
    let t = Instant::now();
    assert_eq!(wrong_blocks(&rig, 1, &last).await, 0, "full read-back");
    eprintln!(
        "full read-back of 1 GiB: 0 wrong blocks ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migration_between_lus_of_one_array_is_offloaded_with_extended_copy() {
    let rig = rig(false).await;
    let read_before = metric(
        &rig,
        0,
        "switchyard_backend_read_bytes_total",
        "backend=\"array/lun0\"",
    )
    .await
        + metric(
            &rig,
            1,
            "switchyard_backend_read_bytes_total",
            "backend=\"array/lun0\"",
        )
        .await;
    let m = migrate(&rig, 0, json!({"to": "array/lun1", "window_mib": 4})).await;
    let done = wait_state(&rig, 1, m.id, "done", 120).await;
    eprintln!("offloaded migration: {done:?}");
    assert_eq!(
        done.offloaded_blocks, BLOCKS,
        "every block copied by the array"
    );
    let sum = |name: &'static str, label: &'static str| {
        let rig = &rig;
        async move { metric(rig, 0, name, label).await + metric(rig, 1, name, label).await }
    };
    let node_bytes = sum("switchyard_copy_bytes_total", "engine=\"node\"").await;
    let xcopy_bytes = sum("switchyard_copy_bytes_total", "engine=\"xcopy\"").await;
    let read = sum(
        "switchyard_backend_read_bytes_total",
        "backend=\"array/lun0\"",
    )
    .await
        - read_before;
    let written = sum(
        "switchyard_backend_write_bytes_total",
        "backend=\"array/lun1\"",
    )
    .await;
    let volume = BLOCKS * BS as u64;
    eprintln!("node copy bytes {node_bytes}, array copy bytes {xcopy_bytes}, volume data the nodes read from A {read} and wrote to B {written} (volume {volume})");
    assert_eq!(node_bytes, 0);
    assert_eq!(xcopy_bytes, volume);
    assert!(
        (read + written) * 100 < volume,
        "nodes moved volume data: {read} + {written}"
    );
    assert_eq!(wrong_blocks(&rig, 1, &BTreeMap::new()).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_driving_node_mid_migration_does_not_stop_it() {
    let mut rig = rig(true).await;
    let (leader, _) = rig.wait_leader(&[0, 1], Duration::from_secs(10)).await;
    let victim = rig.nodes.iter().position(|n| n.name == leader).unwrap();
    let survivor = 1 - victim;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let m = migrate(
        &rig,
        survivor,
        json!({"to": "array/lun1", "window_mib": 1, "engine": "node", "max_rate_mib_s": 8}),
    )
    .await;
    let (last, done) = {
        let through = [survivor];
        let load = checkers(&rig, &through, stop.clone(), tally.clone());
        let work = async {
            let at = wait_percent(&rig, survivor, m.id, 50.0).await;
            eprintln!("killing the driving node {leader} at {:.1}%", at.percent);
            // SIGKILL: no chance to finish the window it holds.
            let pid = rig.nodes[victim].proc.as_ref().unwrap().0.id();
            std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .unwrap();
            let done = wait_state(&rig, survivor, m.id, "done", 180).await;
            stop.store(true, Ordering::Relaxed);
            done
        };
        tokio::join!(load, work)
    };
    report(&tally, "migration with the driver killed");
    eprintln!("finished by the survivor: {done:?}");
    assert_eq!(done.copied_blocks, BLOCKS);
    assert_eq!(wrong_blocks(&rig, survivor, &last).await, 0);
    // The killed node comes back, catches up and serves the moved volume.
    rig.kill(victim);
    rig.restart(victim).await;
    let name = rig.nodes[victim].name.clone();
    let _ = rig
        .post(
            survivor,
            &format!("/api/v1/nodes/{name}/state"),
            json!({"state": "active"}),
        )
        .await;
    // It was excluded (fenced) when it died mid-change: it serves again once activated
    // and caught up; until then reads get NOT READY (or unit attentions).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = logged_in(&rig, victim, "back", 22).await;
    loop {
        let r = i.scsi(0, &cdb10(0x28, 0, 1), &[], BS as u32).await;
        if r.status == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted node does not serve: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(wrong_blocks(&rig, victim, &last).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aborting_mid_migration_under_writes_leaves_the_source_current() {
    let rig = rig(false).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let load = checkers(&rig, &[0, 1], stop.clone(), tally.clone());
    let work = async {
        let m = migrate(
            &rig,
            0,
            json!({"to": "array/lun1", "window_mib": 1, "engine": "node", "max_rate_mib_s": 8}),
        )
        .await;
        let at = wait_percent(&rig, 1, m.id, 50.0).await;
        // Writes keep landing on copied chunks (mirrored to the source) for a while.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let c = rig.nodes[1].client();
        let id = m.id;
        let aborted = tokio::task::spawn_blocking(move || {
            c.post::<_, MigrationView>(&format!("/api/v1/migrations/{id}/abort"), &json!({}))
        })
        .await
        .unwrap()
        .expect("abort");
        assert!(
            matches!(aborted.1.state.as_str(), "aborting" | "aborted"),
            "{aborted:?}"
        );
        let end = wait_state(&rig, 0, m.id, "aborted", 60).await;
        eprintln!("aborted at {:.1}%: {end:?}", at.percent);
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
    };
    let (last, ()) = tokio::join!(load, work);
    report(&tally, "aborted migration");
    assert_eq!(
        extents(&rig, 0).await,
        vec![json!({"vstart": 0, "blocks": BLOCKS, "backend": "array/lun0", "bstart": 0})]
    );
    assert_eq!(wrong_blocks(&rig, 1, &last).await, 0);
    // The source LU itself, read from the array directly, has every write.
    let mut a = Initiator::connect(format!("127.0.0.1:{}", rig.array_port).parse().unwrap()).await;
    a.login(&LoginOpts {
        initiator: Some("iqn.2026-11.org.test:direct".into()),
        target: Some(ARRAY_TARGET.into()),
        ..Default::default()
    })
    .await
    .expect("login to the array");
    a.clear_ua(0).await;
    assert_eq!(
        read_back(&mut a, 0, &last, BLOCKS).await,
        0,
        "the source LU misses writes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_migration_requests_are_refused_clearly() {
    let rig = ClusterRig::start(RigOpts {
        blocks: 16384,
        ..RigOpts::default()
    })
    .await;
    let c = rig.nodes[0].client();
    let post = |path: &'static str, body: serde_json::Value| {
        let c = c.clone();
        async move {
            tokio::task::spawn_blocking(move || c.post::<_, serde_json::Value>(path, &body))
                .await
                .unwrap()
        }
    };
    for (path, body, want) in [
        (
            "/api/v1/volumes/nope/migrate",
            json!({"to": "array/lun1"}),
            "no volume named",
        ),
        (
            "/api/v1/volumes/vol1/migrate",
            json!({"to": "array/lun9"}),
            "not open on this node",
        ),
        (
            "/api/v1/volumes/vol1/migrate",
            json!({"to": "array/lun1", "at": 1}),
            "do not fit",
        ),
        (
            "/api/v1/volumes/vol1/migrate",
            json!({"to": "array/lun0"}),
            "already hold blocks",
        ),
        (
            "/api/v1/volumes/vol1/migrate",
            json!({"to": "array/lun1", "window_mib": 0}),
            "window_mib",
        ),
        (
            "/api/v1/volumes/vol1/migrate",
            json!({"to": "array/lun1", "engine": "magic"}),
            "engine",
        ),
        (
            "/api/v1/volumes/vol1/migrate",
            json!({"to": "array/lun1", "vstart": 100, "blocks": 1_000_000}),
            "not all in one extent",
        ),
        (
            "/api/v1/volumes/vol1/migrate",
            json!({"too": 1}),
            "unknown field",
        ),
        ("/api/v1/migrations/77/abort", json!({}), "no migration 77"),
        (
            "/api/v1/migrations/x/abort",
            json!({}),
            "not a migration id",
        ),
    ] {
        let e = post(path, body.clone()).await.expect_err(path).to_string();
        assert!(e.contains(want), "{path} {body}: {e}");
    }
    // A second migration of the same blocks is refused while the first runs.
    let m = migrate(
        &rig,
        0,
        json!({"to": "array/lun1", "max_rate_mib_s": 1, "window_mib": 1}),
    )
    .await;
    let e = post(
        "/api/v1/volumes/vol1/migrate",
        json!({"to": "array2/lun1", "at": 0}),
    )
    .await
    .expect_err("second")
    .to_string();
    assert!(e.contains("being migrated") || e.contains("already"), "{e}");
    let c2 = rig.nodes[1].client();
    let id = m.id;
    let paused = tokio::task::spawn_blocking(move || {
        c2.post::<_, MigrationView>(&format!("/api/v1/migrations/{id}/pause"), &json!({}))
    })
    .await
    .unwrap()
    .expect("pause");
    assert_eq!(paused.1.state, "paused");
    let e = post("/api/v1/volumes/vol1/migrate", json!({"to": "array/lun1"}))
        .await
        .expect_err("while paused")
        .to_string();
    assert!(e.contains("already") || e.contains("being migrated"), "{e}");
    let c3 = rig.nodes[0].client();
    tokio::task::spawn_blocking(move || {
        c3.post::<_, MigrationView>(&format!("/api/v1/migrations/{id}/abort"), &json!({}))
    })
    .await
    .unwrap()
    .expect("abort");
    wait_state(&rig, 0, id, "aborted", 60).await;
    assert_eq!(
        extents(&rig, 1).await,
        vec![json!({"vstart": 0, "blocks": 16384, "backend": "array/lun0", "bstart": 0})]
    );
}

/// Two migrations of one volume at once (their windows take turns), one of them paused
/// and resumed on the way, under writes through both nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_migrations_run_at_once_one_paused_and_resumed() {
    let rig = rig(false).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let load = checkers(&rig, &[0, 1], stop.clone(), tally.clone());
    let half = BLOCKS / 2;
    let work = async {
        let a = migrate(
            &rig,
            0,
            json!({"to": "array/lun1", "blocks": half, "window_mib": 1, "engine": "node", "max_rate_mib_s": 0}),
        )
        .await;
        let b = migrate(
            &rig,
            1,
            json!({"to": "array/lun1", "vstart": half, "at": half, "window_mib": 1, "max_rate_mib_s": 0}),
        )
        .await;
        assert_ne!(a.id, b.id);
        // Pause the first once it has started; it stays where it is.
        wait_percent(&rig, 0, a.id, 10.0).await;
        let c = rig.nodes[1].client();
        let id = a.id;
        let p = tokio::task::spawn_blocking(move || {
            c.post::<_, MigrationView>(&format!("/api/v1/migrations/{id}/pause"), &json!({}))
        })
        .await
        .unwrap()
        .expect("pause");
        assert_eq!(p.1.state, "paused");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let at = migration(&rig, 0, a.id).await.copied_blocks;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let still = migration(&rig, 1, a.id).await;
        assert_eq!(
            (still.state.as_str(), still.copied_blocks),
            ("paused", at),
            "{still:?}"
        );
        // The other one goes on meanwhile, and both finish after a resume.
        let c = rig.nodes[0].client();
        let r = tokio::task::spawn_blocking(move || {
            c.post::<_, MigrationView>(&format!("/api/v1/migrations/{id}/resume"), &json!({}))
        })
        .await
        .unwrap()
        .expect("resume");
        assert_eq!(r.1.state, "running");
        let da = wait_state(&rig, 1, a.id, "done", 180).await;
        let db = wait_state(&rig, 0, b.id, "done", 180).await;
        stop.store(true, Ordering::Relaxed);
        (da, db)
    };
    let (last, (da, db)) = tokio::join!(load, work);
    report(&tally, "two migrations at once");
    assert_eq!((da.copied_blocks, db.copied_blocks), (half, half));
    assert_eq!(db.offloaded_blocks, half, "the second one was offloaded");
    assert_eq!(
        extents(&rig, 0).await,
        vec![json!({"vstart": 0, "blocks": BLOCKS, "backend": "array/lun1", "bstart": 0})],
        "both halves moved and merged into one extent"
    );
    assert_eq!(wrong_blocks(&rig, 1, &last).await, 0);
}
