//! Security audit, rule 10 (short version of `bench/soak.sh`): 64 sessions from 4
//! processes against one `switchyard` node for SECURITY_LOAD_SECS seconds (default
//! 20): each session writes its own blocks and reads them back (QD 1, 4 KiB). No
//! command may fail, every read must return what was written, and the node's resident
//! memory must stay flat (the last sample no more than 32 MiB or half above the sample
//! taken a quarter of the way in). It prints the figures.
//!
//! The worker processes are `tests/bin/load_worker.rs` (a binary of this package).
//! Needs `cargo build -p switchyard` first.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::*;

const TARGET_NAME: &str = "iqn.2026-11.org.switchyard:load";
const PROCS: u32 = 4;
const SESSIONS_PER_PROC: u32 = 16;

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_sessions_from_four_processes_no_errors_memory_flat() {
    let secs: u64 = std::env::var("SECURITY_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nname = \"load\"\ndata_dir = \"{}\"\n\
             [[portal]]\nlisten = \"127.0.0.1:{port}\"\n\
             [[target]]\nname = \"{TARGET_NAME}\"\n\
             [[target.lun]]\nlun = 0\npath = \"lun0.img\"\nsize = \"64MiB\"\n\
             [fabric]\nmax_sessions_per_initiator = 64\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let node = NodeProcess::spawn(&cfg, None);
    let pid = node.0.id();
    wait_port(port).await;

    let workers: Vec<_> = (0..PROCS)
        .map(|p| {
            Command::new(env!("CARGO_BIN_EXE_load_worker"))
                .env("SECURITY_LOAD_PORT", port.to_string())
                .env("SECURITY_LOAD_PROC", p.to_string())
                .env("SECURITY_LOAD_SECS", secs.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start a worker")
        })
        .collect();
    // Sample the node's RSS every second while the workers run.
    let started = Instant::now();
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let waiter = tokio::task::spawn_blocking(move || {
        workers
            .into_iter()
            .map(|w| w.wait_with_output().unwrap())
            .collect::<Vec<_>>()
    });
    while !waiter.is_finished() {
        samples.push((started.elapsed().as_secs(), rss_kib(pid)));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let outputs = waiter.await.unwrap();
    let (mut ios, mut errors) = (0u64, 0u64);
    for (p, o) in outputs.iter().enumerate() {
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "worker {p} failed:\n{text}");
        let line = text
            .lines()
            .find(|l| l.starts_with("LOADWORKER"))
            .unwrap_or_else(|| panic!("worker {p} reported nothing:\n{text}"));
        let field = |k: &str| -> u64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap()
        };
        ios += field("ios=");
        errors += field("errors=");
        assert!(field("idle_sessions=") == 0, "worker {p}: {line}");
    }
    let rss: Vec<u64> = samples.iter().map(|s| s.1).filter(|&r| r > 0).collect();
    assert!(rss.len() >= 4, "too few RSS samples: {samples:?}");
    let warm = rss[rss.len() / 4];
    let last = *rss.last().unwrap();
    let max = *rss.iter().max().unwrap();
    println!(
        "load: {} sessions from {PROCS} processes, {secs} s: {ios} I/Os (write+verify), {errors} errors; \
         node RSS at 25% {} MiB, last {} MiB, max {} MiB",
        PROCS * SESSIONS_PER_PROC,
        warm / 1024,
        last / 1024,
        max / 1024
    );
    assert_eq!(errors, 0);
    assert!(
        last <= warm + (warm / 2).max(32 * 1024),
        "node memory grew: {samples:?}"
    );
    node.stop();
}
