//! Cluster-wide online remaps under host I/O (issue 6): a cluster of processes (two
//! data nodes and a witness, or three data nodes) serves `vol1` over an array node; a
//! pattern writer/checker runs through each data node while remaps split and merge
//! extents, switch extents between two back-end paths to the same LU, move extents
//! that hold no live data and grow the volume; and the protocol's failure handling is
//! driven with fault points (the `fail` crate, set through the test-only faults API)
//! on remaps that move the checkers' live data to another LU (held, drained, copied).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::cluster_rig::*;
use integration_tests::host_load::*;
use integration_tests::*;
use serde_json::json;

const BS: usize = 512;
/// Each writer owns `AREA` blocks: writer w has [w * AREA, (w + 1) * AREA).
const AREA: u64 = 1024;
/// [DEAD, DEAD_END): never written; its extent moves between LUs without copying.
const DEAD: u64 = 8192;
const DEAD_END: u64 = 16384;

fn ext(vstart: u64, blocks: u64, backend: &str, bstart: u64) -> serde_json::Value {
    json!({"vstart": vstart, "blocks": blocks, "backend": backend, "bstart": bstart})
}

/// The volume's layout as the test models it: (vstart, blocks, backend, bstart).
type Layout = Vec<(u64, u64, String, u64)>;

fn body(layout: &Layout, blocks: Option<u64>, copy: bool) -> serde_json::Value {
    let extents: Vec<_> = layout
        .iter()
        .map(|(v, n, b, s)| ext(*v, *n, b, *s))
        .collect();
    let mut j = json!({"extents": extents, "copy": copy});
    if let Some(b) = blocks {
        j["blocks"] = json!(b);
    }
    j
}

/// The next remap of the sequence; mutates `layout` (and `size` when it grows).
fn next_remap(
    n: usize,
    rng: &mut u64,
    layout: &mut Layout,
    size: &mut u64,
) -> (&'static str, serde_json::Value) {
    let mut rnd = |m: u64| {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng % m.max(1)
    };
    if n % 40 == 39 && *size < DEAD_END + 4096 {
        // Grow by 1024 blocks on LUN 1 (beyond the dead region's alternate home).
        let at = *size;
        layout.push((at, 1024, "array/lun1".into(), 8192 + (at - DEAD_END)));
        *size += 1024;
        return ("grow", body(layout, Some(*size), false));
    }
    match n % 4 {
        0 => {
            // Split a live extent in two (same home).
            let cands: Vec<usize> = (0..layout.len())
                .filter(|&i| layout[i].0 < DEAD && layout[i].1 >= 2)
                .collect();
            let i = cands[rnd(cands.len() as u64) as usize];
            let (v, b, be, s) = layout[i].clone();
            let cut = 1 + rnd(b - 1);
            layout[i] = (v, cut, be.clone(), s);
            layout.insert(i + 1, (v + cut, b - cut, be, s + cut));
            ("split", body(layout, None, false))
        }
        1 => {
            // Merge two neighbours that continue each other on the same path.
            let i = (0..layout.len().saturating_sub(1)).find(|&i| {
                let (a, b) = (&layout[i], &layout[i + 1]);
                a.0 + a.1 == b.0 && a.2 == b.2 && a.3 + a.1 == b.3 && b.0 < DEAD
            });
            match i {
                Some(i) => {
                    let b = layout.remove(i + 1);
                    layout[i].1 += b.1;
                    ("merge", body(layout, None, false))
                }
                None => next_remap(n + 1, rng, layout, size),
            }
        }
        2 => {
            // Switch one live extent to the other path to the same LU.
            let cands: Vec<usize> = (0..layout.len()).filter(|&i| layout[i].0 < DEAD).collect();
            let i = cands[rnd(cands.len() as u64) as usize];
            layout[i].2 = if layout[i].2 == "array/lun0" {
                "array2/lun0".into()
            } else {
                "array/lun0".into()
            };
            ("path", body(layout, None, false))
        }
        _ => {
            // Move the dead region between its two homes (it holds no live data).
            let i = layout.iter().position(|e| e.0 == DEAD).unwrap();
            layout[i] = if layout[i].2 == "array/lun1" {
                (DEAD, DEAD_END - DEAD, "array/lun0".into(), DEAD)
            } else {
                (DEAD, DEAD_END - DEAD, "array/lun1".into(), 0)
            };
            ("dead", body(layout, None, false))
        }
    }
}

fn initial_layout() -> Layout {
    vec![
        (0, DEAD, "array/lun0".into(), 0),
        (DEAD, DEAD_END - DEAD, "array/lun0".into(), DEAD),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_remaps_under_load_lose_nothing() {
    let remaps: usize = std::env::var("REMAPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let rig = ClusterRig::start(RigOpts {
        data_nodes: 2,
        witness: true,
        blocks: DEAD_END,
        ..Default::default()
    })
    .await;
    // The initial table is one extent; make it the test's two-extent layout first.
    let mut layout = initial_layout();
    let mut size = DEAD_END;
    rig.remap(0, body(&layout, None, false))
        .await
        .expect("first remap");

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let run = {
        let (rig, stop, tally) = (&rig, stop.clone(), tally.clone());
        async move {
            let a = checker(rig, 0, 0, (0, AREA), stop.clone(), tally.clone());
            let b = checker(rig, 1, 1, (AREA, AREA), stop.clone(), tally.clone());
            let c = checker(rig, 0, 2, (2 * AREA, AREA), stop.clone(), tally.clone());
            let d = checker(rig, 1, 3, (3 * AREA, AREA), stop.clone(), tally.clone());
            tokio::join!(a, b, c, d)
        }
    };
    let windows = parking_lot::Mutex::new(Vec::new());
    let drive = async {
        // A window without remaps first, for comparison.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let quiet = Instant::now();
        tokio::time::sleep(Duration::from_secs(4)).await;
        let busy = Instant::now();
        windows.lock().extend([quiet, busy]);
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        let mut durations = Vec::new();
        for n in 0..remaps {
            let (kind, req) = next_remap(n, &mut rng, &mut layout, &mut size);
            let t = Instant::now();
            // Requests alternate between the two data nodes.
            let rec = rig
                .remap(n % 2, req)
                .await
                .unwrap_or_else(|e| panic!("remap {n} ({kind}) failed: {e}\nlayout {layout:?}"));
            durations.push(t.elapsed());
            if std::env::var("SHOW_TIMELINE").is_ok() {
                let t0 = rec.timeline.first().map(|t| t.at_ms).unwrap_or(0);
                let steps: Vec<String> = rec
                    .timeline
                    .iter()
                    .map(|t| {
                        format!(
                            "+{} {} {}",
                            t.at_ms - t0,
                            t.node.clone().unwrap_or_default(),
                            t.what
                        )
                    })
                    .collect();
                eprintln!("remap {n} ({kind}): {}", steps.join(" | "));
            }
            assert_eq!(
                rec.state,
                mgmt::model::ChangeState::Done,
                "remap {n} ({kind}): {rec:?}"
            );
            *kinds.entry(kind).or_default() += 1;
        }
        windows.lock().push(Instant::now());
        stop.store(true, Ordering::Relaxed);
        durations.sort();
        (kinds, durations)
    };
    let (last, (kinds, durations)) = tokio::join!(run, drive);
    let ios = tally.ios.load(Ordering::Relaxed);
    let wrong = tally.wrong.load(Ordering::Relaxed);
    let errors = tally.errors.load(Ordering::Relaxed);
    let retries = tally.retries.load(Ordering::Relaxed);
    eprintln!(
        "{remaps} remaps {kinds:?}: median {:?}, max {:?}; {ios} verified I/Os through 2 nodes, \
         {wrong} wrong, {errors} errors, {retries} NOT READY retries; volume grew to {size} blocks",
        durations[durations.len() / 2],
        durations[durations.len() - 1]
    );
    let w = windows.lock().clone();
    for (name, from, to) in [
        ("without remaps", w[0], w[1]),
        ("during remaps", w[1], w[2]),
    ] {
        let (n, p50, p99, max) = tally.percentiles(from, to);
        eprintln!("host latency {name}: {n} commands, p50 {p50:?}, p99 {p99:?}, max {max:?}");
    }
    assert_eq!(wrong, 0, "wrong data");
    assert_eq!(errors, 0, "host I/O errors");
    // Every node serves the final table, and every last write is there through each.
    // (the other node applies the last change a moment after the requester)
    let mut same = false;
    for _ in 0..100 {
        let (t0, t1) = (
            rig.get_text(0, "/api/v1/mapping").await,
            rig.get_text(1, "/api/v1/mapping").await,
        );
        if t0 == t1 {
            same = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(same, "both nodes serve the same table");
    for node in [0, 1] {
        let mut i = session(&rig, node, "final", 7).await;
        for (w, versions) in [&last.0, &last.1, &last.2, &last.3].iter().enumerate() {
            for (&lba, &v) in versions.iter() {
                let (r, _) = host_cmd(&mut i, &cdb10(0x28, lba as u32, 1), &[], BS as u32).await;
                assert_eq!(r.status, 0);
                assert_eq!(
                    r.data,
                    pattern(v, lba, BS),
                    "writer {w} block {lba} via node {node}"
                );
            }
        }
        // READ CAPACITY(16) shows the grown size through each node.
        let (r, _) = host_cmd(
            &mut i,
            &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
            &[],
            32,
        )
        .await;
        let last_lba = u64::from_be_bytes(r.data[0..8].try_into().unwrap());
        assert_eq!(last_lba + 1, size, "capacity through node {node}");
    }
    // The hold times are in the metrics.
    let m = rig.get_text(0, "/metrics").await;
    assert!(m.contains("switchyard_remap_hold_seconds_count"), "{m}");
    for l in m
        .lines()
        .filter(|l| l.starts_with("switchyard_remap_hold_seconds"))
    {
        eprintln!("node 1: {l}");
    }
}

/// The change record a finished remap request returned, whether it succeeded or not.
fn record(
    r: Result<mgmt::model::ChangeRecord, mgmt::client::ClientError>,
) -> mgmt::model::ChangeRecord {
    match r {
        Ok(rec) => rec,
        Err(mgmt::client::ClientError::Api { body, .. }) if body.change.is_some() => {
            body.change.unwrap()
        }
        Err(e) => panic!("remap request failed without a change record: {e}"),
    }
}

/// A rig of three data nodes with short drain timeouts (phase timeout 6 s), a
/// checker through each of the first two, and the test's layout in force.
async fn faulty_rig(data_nodes: usize) -> ClusterRig {
    let rig = ClusterRig::start(RigOpts {
        data_nodes,
        witness: false,
        blocks: DEAD_END,
        drain_timeout_ms: 500,
        tgtd: false,
    })
    .await;
    rig.remap(0, body(&initial_layout(), None, false))
        .await
        .expect("first remap");
    rig
}

/// Run `f` while checkers write and verify through nodes 0 and 1; then assert that
/// nothing was wrong and no host I/O failed.
async fn under_load<F: std::future::Future<Output = T>, T>(rig: &ClusterRig, f: F) -> T {
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let load = async {
        tokio::join!(
            checker(rig, 0, 0, (0, AREA), stop.clone(), tally.clone()),
            checker(rig, 1, 1, (AREA, AREA), stop.clone(), tally.clone())
        )
    };
    let work = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let out = f.await;
        stop.store(true, Ordering::Relaxed);
        out
    };
    let (_, out) = tokio::join!(load, work);
    let (ios, wrong, errors) = (
        tally.ios.load(Ordering::Relaxed),
        tally.wrong.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
    );
    eprintln!(
        "load: {ios} verified I/Os, {wrong} wrong, {errors} errors, {} NOT READY retries",
        tally.retries.load(Ordering::Relaxed)
    );
    assert!(ios > 0);
    assert_eq!((wrong, errors), (0, 0), "wrong data or host I/O errors");
    out
}

/// Move the checkers' extent to the array's other LU, copying it: a remap that changes
/// where live data lives, so every node holds and drains that range while the leader
/// copies it (a path switch to the same LU would hold nothing).
fn live_move() -> serde_json::Value {
    let mut l = initial_layout();
    l[0].2 = "array/lun1".into();
    body(&l, None, true)
}

async fn epoch(rig: &ClusterRig, i: usize) -> u64 {
    let t: serde_json::Value =
        serde_json::from_str(&rig.get_text(i, "/api/v1/mapping").await).unwrap();
    t["epoch"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_that_times_out_is_retried_then_fails_and_io_goes_on() {
    let rig = faulty_rig(2).await;
    let before = epoch(&rig, 0).await;
    rig.failpoint(1, "remap::drain", "return").await;
    let rec = under_load(&rig, async { record(rig.remap(0, live_move()).await) }).await;
    assert_eq!(rec.state, mgmt::model::ChangeState::Failed, "{rec:?}");
    let err = rec.error.unwrap_or_default();
    assert!(
        err.contains("did not drain") && err.contains("retry when I/O is lower"),
        "{err}"
    );
    // Retried: every attempt went back to staged.
    let retries = rec
        .timeline
        .iter()
        .filter(|t| t.what.contains("staged") && t.node.is_none())
        .count();
    assert!(retries >= 3, "{:?}", rec.timeline);
    assert_eq!(epoch(&rig, 0).await, before, "nothing changed");
    assert_no_holds(&rig, &[0, 1]).await;
    rig.failpoint(1, "remap::drain", "off").await;
    let rec = record(rig.remap(1, live_move()).await);
    assert_eq!(
        rec.state,
        mgmt::model::ChangeState::Done,
        "works again: {rec:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_cannot_stage_fails_the_change_and_nothing_changes() {
    let rig = faulty_rig(2).await;
    let before = epoch(&rig, 0).await;
    rig.failpoint(1, "remap::stage", "return").await;
    let rec = under_load(&rig, async { record(rig.remap(0, live_move()).await) }).await;
    assert_eq!(rec.state, mgmt::model::ChangeState::Failed, "{rec:?}");
    assert!(rec.error.unwrap_or_default().contains("cannot stage"));
    assert_eq!(epoch(&rig, 0).await, before);
    assert_no_holds(&rig, &[0, 1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switch_that_fails_on_one_node_rolls_every_node_back() {
    let rig = faulty_rig(2).await;
    rig.failpoint(1, "remap::switch", "return").await;
    let rec = under_load(&rig, async { record(rig.remap(0, live_move()).await) }).await;
    assert_eq!(rec.state, mgmt::model::ChangeState::RolledBack, "{rec:?}");
    assert!(rec.error.unwrap_or_default().contains("switch failed"));
    // Both nodes serve the old mapping again (at a newer epoch).
    for i in [0, 1] {
        let t: serde_json::Value =
            serde_json::from_str(&rig.get_text(i, "/api/v1/mapping").await).unwrap();
        let ex = &t["volumes"][0]["extents"];
        assert!(
            ex.as_array()
                .unwrap()
                .iter()
                .all(|e| e["backend"] == "array/lun0"),
            "node {i}: {t}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&rig.get_text(i, "/api/v1/volumes/vol1").await).unwrap();
        assert!(
            v["map"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["backend"] != "array/lun1"),
            "node {i} switched back: {v}"
        );
    }
    assert_no_holds(&rig, &[0, 1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_stops_answering_after_the_commit_is_excluded_and_fenced() {
    let rig = faulty_rig(3).await;
    // Node 3 acknowledges staged and quiescing, then nothing more.
    rig.failpoint(2, "remap::ack", "2*off->return").await;
    let mut c = session(&rig, 2, "third", 3).await;
    let rec = under_load(&rig, async { record(rig.remap(0, live_move()).await) }).await;
    assert_eq!(rec.state, mgmt::model::ChangeState::Done, "{rec:?}");
    assert!(
        rec.timeline.iter().any(|t| t.what.starts_with("excluded")),
        "{:?}",
        rec.timeline
    );
    // Node 3 is fenced: it serves nothing ...
    let nodes = rig.members_seen_by(0).await;
    assert_eq!(
        nodes
            .iter()
            .find(|n| n.name == "n3")
            .map(|n| n.state.as_str()),
        Some("fenced")
    );
    let r = c.read10(0, 0, 1, BS).await;
    let r = if r.status == 2 && r.sense_key() == 6 {
        c.read10(0, 0, 1, BS).await
    } else {
        r
    };
    assert_eq!(
        (r.status, r.sense_key()),
        (2, 2),
        "a fenced node refuses I/O: {r:?}"
    );
    // ... until the admin lets it back; then it serves the new table.
    rig.failpoint(2, "remap::ack", "off").await;
    assert_eq!(
        rig.post(0, "/api/v1/nodes/n3/state", json!({"state": "active"}))
            .await
            .ok(),
        Some(200)
    );
    read_once_served(&mut c, 0, "node 3").await;
    let v: serde_json::Value =
        serde_json::from_str(&rig.get_text(2, "/api/v1/volumes/vol1").await).unwrap();
    assert!(
        v["map"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["backend"] == "array/lun1"),
        "node 3 runs the new table: {v}"
    );
    assert_no_holds(&rig, &[0, 1, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_dies_at_each_step_and_the_next_one_finishes_the_change() {
    let mut rig = faulty_rig(3).await;
    let mut layout = initial_layout();
    for (n, step) in ["proposed", "staged", "quiesced", "switched", "resumed"]
        .into_iter()
        .enumerate()
    {
        let (leader, _) = rig.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
        let li = rig.nodes.iter().position(|x| x.name == leader).unwrap();
        let asker = (li + 1) % 3;
        rig.failpoint(li, &format!("remap::driver::{step}"), "return")
            .await;
        layout[0].2 = if n % 2 == 0 {
            "array/lun1"
        } else {
            "array/lun0"
        }
        .into();
        let req = body(&layout, None, true);
        let started = Instant::now();
        let rec = record(rig.remap(asker, req).await);
        // The leader aborted at that step; the next leader took the change over.
        let died = rig.nodes[li]
            .proc
            .as_mut()
            .unwrap()
            .0
            .try_wait()
            .unwrap()
            .is_some();
        assert!(died, "the leader did not reach {step}");
        eprintln!(
            "leader {leader} died at {step}: change {:?} after {:?} ({} timeline entries)",
            rec.state,
            started.elapsed(),
            rec.timeline.len()
        );
        let done = rec.state == mgmt::model::ChangeState::Done;
        let undone = matches!(
            rec.state,
            mgmt::model::ChangeState::Failed | mgmt::model::ChangeState::RolledBack
        );
        assert!(done || undone, "{rec:?}");
        if undone {
            // Before the commit point: nothing changed; put the model back.
            layout[0].2 = if n % 2 == 0 {
                "array/lun0"
            } else {
                "array/lun1"
            }
            .into();
        }
        // Every survivor serves the table the change left.
        let want = rig.get_text(asker, "/api/v1/mapping").await;
        for i in (0..3).filter(|&i| i != li) {
            assert_eq!(rig.get_text(i, "/api/v1/mapping").await, want);
        }
        // The dead leader comes back (fenced if it was excluded) and is let back in.
        rig.nodes[li].proc = None;
        rig.restart(li).await;
        let _ = rig
            .post(
                asker,
                &format!("/api/v1/nodes/{leader}/state"),
                json!({"state": "active"}),
            )
            .await;
        let mut s = logged_in(&rig, li, "back", 4).await;
        read_once_served(&mut s, 0, &leader).await;
        assert_eq!(
            rig.get_text(li, "/api/v1/mapping").await,
            want,
            "{leader} caught up"
        );
    }
}

/// A PREEMPT AND ABORT committed while a remap holds a write of the preempted host on
/// another member: that member's Raft state machine does not wait for the write
/// (only the entry's settling does), so it applies the remap's switch, the held write
/// runs and completes, the PREEMPT AND ABORT completes after it, and the remap
/// finishes in its first round.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_preempt_and_abort_during_a_remap_hold_stalls_neither() {
    let rig = faulty_rig(2).await;
    let mut x = session(&rig, 0, "x", 1).await;
    let mut y = session(&rig, 1, "y", 2).await;
    // X registers and holds WRITE EXCLUSIVE, REGISTRANTS ONLY (as fence_scsi does); Y
    // registers too.
    assert_eq!(pr_out(&mut x, 0x00, 0, 0, 0xaa).await.status, 0);
    assert_eq!(pr_out(&mut y, 0x00, 0, 0, 0xbb).await.status, 0);
    assert_eq!(pr_out(&mut x, 0x01, 5, 0xaa, 0).await.status, 0);
    // The leader's driver sleeps once every node holds the moving extent, so the hold
    // lasts at least that long.
    let (leader, _) = rig.wait_leader(&[0, 1], Duration::from_secs(15)).await;
    let li = rig.nodes.iter().position(|n| n.name == leader).unwrap();
    rig.failpoint(li, "remap::driver::quiesced", "1*sleep(3000)")
        .await;
    let fence = async {
        // Wait until node 0 holds the extent, then X writes into it there: held.
        let t = Instant::now();
        loop {
            let v: serde_json::Value =
                serde_json::from_str(&rig.get_text(0, "/api/v1/volumes/vol1").await).unwrap();
            if v["held"].as_array().is_some_and(|a| !a.is_empty()) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "node 0 never held");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let held_write = async {
            let r = x.write10(0, 10, &pattern(7, 10, BS), BS).await;
            (r, Instant::now())
        };
        let preempt = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let r = pr_out(&mut y, 0x05, 5, 0xbb, 0xaa).await;
            (r, Instant::now())
        };
        tokio::join!(held_write, preempt)
    };
    let started = Instant::now();
    let (rec, ((w, w_at), (p, p_at))) =
        tokio::join!(async { record(rig.remap(1, live_move()).await) }, fence);
    eprintln!(
        "remap {:?} after {:?}; held write {:?} at {:?}; PREEMPT AND ABORT {:?} at {:?}",
        rec.state,
        started.elapsed(),
        w.status,
        w_at - started,
        p.status,
        p_at - started
    );
    assert_eq!(rec.state, mgmt::model::ChangeState::Done, "{rec:?}");
    let rounds = rec
        .timeline
        .iter()
        .filter(|t| t.what.contains("staged") && t.node.is_none())
        .count();
    assert_eq!(rounds, 1, "the remap was retried: {:?}", rec.timeline);
    // The write was admitted before the PREEMPT AND ABORT: it completes, and first.
    assert_eq!(w.status, 0, "{w:?}");
    assert_eq!(p.status, 0, "{p:?}");
    assert!(
        w_at <= p_at,
        "the PREEMPT AND ABORT completed before the held write"
    );
    // X is fenced now (after the unit attention REGISTRATIONS PREEMPTED); Y's
    // reservation holds on node 0 too.
    x.clear_ua(0).await;
    let after = x.write10(0, 11, &pattern(8, 11, BS), BS).await;
    assert_eq!(after.status, 0x18, "RESERVATION CONFLICT: {after:?}");
    assert_eq!(x.read10(0, 10, 1, BS).await.data, pattern(7, 10, BS));
    rig.failpoint(li, "remap::driver::quiesced", "off").await;
    assert_no_holds(&rig, &[0, 1]).await;
}

/// READ block `lba` until the node serves it (a restarted or re-activated node), up to
/// 15 s.
async fn read_once_served(s: &mut Initiator, lba: u32, who: &str) -> ScsiResult {
    let t = Instant::now();
    loop {
        let r = s.read10(0, lba, 1, BS).await;
        if r.status == 0 {
            return r;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{who} did not serve again: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// No live node holds any range of the volume (no leaked hold).
async fn assert_no_holds(rig: &ClusterRig, nodes: &[usize]) {
    for &i in nodes {
        let mut held = serde_json::Value::Null;
        for _ in 0..100 {
            let v: serde_json::Value =
                serde_json::from_str(&rig.get_text(i, "/api/v1/volumes/vol1").await).unwrap();
            held = v["held"].clone();
            if held.as_array().is_some_and(|a| a.is_empty()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(held, json!([]), "node {i} still holds ranges");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_at_each_step_is_excluded_and_catches_up_on_restart() {
    let mut rig = faulty_rig(3).await;
    let mut layout = initial_layout();
    let mut marker = 0u32;
    for (n, step) in ["staged", "quiescing", "switched", "resumed"]
        .into_iter()
        .enumerate()
    {
        let (leader, _) = rig.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
        let li = rig.nodes.iter().position(|x| x.name == leader).unwrap();
        // The victim is neither the leader nor the node that takes the request.
        let victim = (li + 2) % 3;
        let asker = (li + 1) % 3;
        let name = rig.nodes[victim].name.clone();
        rig.failpoint(victim, &format!("remap::participant::{step}"), "return")
            .await;
        // Data written before the change must read back after it, through every node.
        marker += 1;
        let mut w = session(&rig, asker, "marker", 5).await;
        let (r, _) = host_cmd(&mut w, &cdb10(0x2a, 100, 1), &pattern(marker, 100, BS), 0).await;
        assert_eq!(r.status, 0);
        layout[0].2 = if n % 2 == 0 {
            "array/lun1"
        } else {
            "array/lun0"
        }
        .into();
        let rec = record(rig.remap(asker, body(&layout, None, true)).await);
        let died = rig.nodes[victim]
            .proc
            .as_mut()
            .unwrap()
            .0
            .try_wait()
            .unwrap()
            .is_some();
        assert!(died, "{name} did not reach {step}");
        assert_eq!(rec.state, mgmt::model::ChangeState::Done, "{step}: {rec:?}");
        assert!(
            rec.timeline.iter().any(|t| t.what.starts_with("excluded")),
            "{step}: {:?}",
            rec.timeline
        );
        let live: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
        let want = rig.get_text(asker, "/api/v1/mapping").await;
        for &i in &live {
            assert_eq!(rig.get_text(i, "/api/v1/mapping").await, want);
        }
        assert_no_holds(&rig, &live).await;
        // The victim restarts fenced, is let back in, and serves the new table.
        rig.nodes[victim].proc = None;
        rig.restart(victim).await;
        assert_eq!(
            rig.post(
                asker,
                &format!("/api/v1/nodes/{name}/state"),
                json!({"state": "active"})
            )
            .await
            .ok(),
            Some(200)
        );
        let mut s = logged_in(&rig, victim, "back", 6).await;
        let r = read_once_served(&mut s, 100, &name).await;
        assert_eq!(
            r.data,
            pattern(marker, 100, BS),
            "{step}: data through {name}"
        );
        assert_eq!(rig.get_text(victim, "/api/v1/mapping").await, want);
        assert_no_holds(&rig, &[0, 1, 2]).await;
        eprintln!("{name} killed at {step}: excluded, change done, restarted and caught up");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_back_end_fails_the_remap_cleanly_and_nothing_is_lost() {
    let rig = faulty_rig(2).await;
    let before = epoch(&rig, 0).await;
    let pid = rig.array.0.id().to_string();
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
    };
    let rec = under_load(&rig, async {
        // Let the checkers get commands in flight to the array, then stall it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        signal("-STOP");
        let rec = record(rig.remap(0, live_move()).await);
        signal("-CONT");
        tokio::time::sleep(Duration::from_secs(1)).await;
        rec
    })
    .await;
    eprintln!(
        "remap with a stalled back-end: {:?}: {:?}",
        rec.state, rec.error
    );
    let next = match rec.state {
        // The stuck commands kept the ranges from draining: retried, then given up.
        mgmt::model::ChangeState::Failed => {
            // Either commands stuck in the stalled array kept the range from draining,
            // or the copy under the hold timed out reading it.
            let e = rec.error.unwrap_or_default();
            assert!(e.contains("drain") || e.contains("copying"), "{e}");
            assert_eq!(epoch(&rig, 0).await, before);
            live_move()
        }
        // Or nothing was in flight in the affected range when it was held.
        mgmt::model::ChangeState::Done => body(&initial_layout(), None, true),
        other => panic!("unexpected end state {other:?}"),
    };
    assert_no_holds(&rig, &[0, 1]).await;
    let rec = record(rig.remap(1, next).await);
    assert!(
        matches!(rec.state, mgmt::model::ChangeState::Done),
        "remaps work again: {rec:?}"
    );
}
