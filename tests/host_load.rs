//! Host load for cluster tests: sessions through a member, a host's retry rules, and
//! a pattern writer/checker that counts wrong data, errors and latencies.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster_rig::{ClusterRig, CLUSTER_TARGET};
use crate::{cdb10, pattern, Initiator, LoginOpts, ScsiResult};

const BS: usize = 512;

/// A session through member `node` with its unit attentions cleared.
pub async fn session(rig: &ClusterRig, node: usize, name: &str, isid: u8) -> Initiator {
    let mut i = logged_in(rig, node, name, isid).await;
    i.clear_ua(0).await;
    i
}

/// A session that has not looked at the LU yet (the node may still refuse I/O).
pub async fn logged_in(rig: &ClusterRig, node: usize, name: &str, isid: u8) -> Initiator {
    let mut i = Initiator::connect(rig.nodes[node].portal_addr()).await;
    i.login(&LoginOpts {
        initiator: Some(format!("iqn.2026-11.org.test:{name}")),
        target: Some(CLUSTER_TARGET.into()),
        isid: Some([0x80, 0, 0, 0, 9, isid]),
        ..Default::default()
    })
    .await
    .expect("login");
    i
}

/// PERSISTENT RESERVE OUT on LUN 0 with a 24-byte parameter list (reservation key,
/// service action reservation key).
pub async fn pr_out(
    i: &mut Initiator,
    action: u8,
    pr_type: u8,
    key: u64,
    sa_key: u64,
) -> ScsiResult {
    let cdb = [0x5f, action, pr_type, 0, 0, 0, 0, 0, 24, 0];
    let mut p = [0u8; 24];
    p[..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    i.scsi(0, &cdb, &p, 0).await
}

/// What a host does: unit attentions (capacity changed, ALUA changed) and NOT READY
/// are retried; anything else is an error. Returns the result and the retries.
pub async fn host_cmd(
    i: &mut Initiator,
    cdb: &[u8],
    data: &[u8],
    read_len: u32,
) -> (ScsiResult, u64) {
    let mut retries = 0;
    for _ in 0..2000 {
        let r = i.scsi(0, cdb, data, read_len).await;
        match (r.status, r.sense_key()) {
            (2, 6) => continue,
            (2, 2) | (8, _) => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            _ => return (r, retries),
        }
    }
    panic!("a command kept failing with NOT READY for 20 s");
}

#[derive(Default)]
pub struct Tally {
    pub ios: AtomicU64,
    pub retries: AtomicU64,
    pub wrong: AtomicU64,
    pub errors: AtomicU64,
    /// (when it started, how long it took) of every host command.
    pub latencies: parking_lot::Mutex<Vec<(Instant, Duration)>>,
}

impl Tally {
    pub fn lat(&self, start: Instant) {
        self.latencies.lock().push((start, start.elapsed()));
    }

    /// p50, p99 and max of the commands started in [from, to).
    pub fn percentiles(&self, from: Instant, to: Instant) -> (usize, Duration, Duration, Duration) {
        let mut v: Vec<Duration> = self
            .latencies
            .lock()
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, d)| *d)
            .collect();
        v.sort();
        if v.is_empty() {
            return (0, Duration::ZERO, Duration::ZERO, Duration::ZERO);
        }
        let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
        (v.len(), at(0.5), at(0.99), v[v.len() - 1])
    }
}

/// Write versioned patterns into writer `w`'s area (`area` blocks from `base`) through
/// `node` and read each back (and an earlier one), until `stop`. Blocks are 512 bytes
/// and start zeroed. Returns the last version of every block written.
pub async fn checker(
    rig: &ClusterRig,
    node: usize,
    w: u32,
    (base, area): (u64, u64),
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> BTreeMap<u64, u32> {
    let mut i = session(rig, node, &format!("checker{w}"), w as u8).await;
    let mut last: BTreeMap<u64, u32> = BTreeMap::new();
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let lba = base + (k * 7) % area;
        let version = (k / area) as u32 + 1;
        let data = pattern(version * 16 + w, lba, BS);
        let t = Instant::now();
        let (r, n) = host_cmd(&mut i, &cdb10(0x2a, lba as u32, 1), &data, 0).await;
        tally.lat(t);
        tally.retries.fetch_add(n, Ordering::Relaxed);
        if r.status != 0 {
            eprintln!("writer {w}: WRITE {lba} failed: {r:?}");
            tally.errors.fetch_add(1, Ordering::Relaxed);
            k += 1;
            continue;
        }
        last.insert(lba, version * 16 + w);
        // Read it back, and a block written earlier.
        let other = base + (k * 13) % area;
        for (b, want) in [
            (lba, Some(version * 16 + w)),
            (other, last.get(&other).copied()),
        ] {
            let t = Instant::now();
            let (r, n) = host_cmd(&mut i, &cdb10(0x28, b as u32, 1), &[], BS as u32).await;
            tally.lat(t);
            tally.retries.fetch_add(n, Ordering::Relaxed);
            if r.status != 0 {
                eprintln!("writer {w}: READ {b} failed: {r:?}");
                tally.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let expected = match want {
                Some(v) => pattern(v, b, BS),
                None => vec![0u8; BS],
            };
            if r.data != expected {
                eprintln!("writer {w}: block {b} has wrong data");
                tally.wrong.fetch_add(1, Ordering::Relaxed);
            }
        }
        tally.ios.fetch_add(3, Ordering::Relaxed);
        k += 1;
    }
    last
}
