//! The worker process of `tests/security_load.rs` (the 64-session load test): one
//! process of SESSIONS_PER_PROC sessions against the node at 127.0.0.1:
//! SECURITY_LOAD_PORT, each writing and verifying its own blocks for
//! SECURITY_LOAD_SECS seconds.

use std::time::{Duration, Instant};

use integration_tests::*;

const TARGET_NAME: &str = "iqn.2026-11.org.switchyard:load";
const SESSIONS_PER_PROC: u32 = 16;
const BS: usize = 512;
/// Blocks each session owns (8 per command, 16 commands' worth).
const REGION: u64 = 128;

/// One worker process: SESSIONS_PER_PROC sessions, each writing and verifying its own
/// region until the deadline. Prints `LOADWORKER ios=N errors=E idle_sessions=S`.
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let port = std::env::var("SECURITY_LOAD_PORT").expect("SECURITY_LOAD_PORT");
    let proc_no: u32 = std::env::var("SECURITY_LOAD_PROC")
        .unwrap()
        .parse()
        .unwrap();
    let secs: u64 = std::env::var("SECURITY_LOAD_SECS")
        .unwrap()
        .parse()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for s in 0..SESSIONS_PER_PROC {
        tasks.push(tokio::spawn(async move {
            let n = proc_no * SESSIONS_PER_PROC + s;
            let mut i = Initiator::connect(addr).await;
            i.login(&LoginOpts {
                target: Some(TARGET_NAME.into()),
                isid: Some([0x80, 0, 0, 0, proc_no as u8, s as u8]),
                ..Default::default()
            })
            .await
            .expect("login");
            i.clear_ua(0).await;
            let base = u64::from(n) * REGION;
            let (mut ios, mut errors, mut round) = (0u64, 0u64, 0u32);
            // At least one round per session, however late it logged in.
            loop {
                let lba = base + u64::from(round % 16) * 8;
                let mut data = Vec::new();
                for b in 0..8 {
                    data.extend(pattern(n * 1000 + round, lba + b, BS));
                }
                let w = i.write10(0, lba as u32, &data, BS).await;
                let r = i.read10(0, lba as u32, 8, BS).await;
                ios += 2;
                if w.status != 0 || r.status != 0 || r.data != data {
                    errors += 1;
                }
                round += 1;
                if Instant::now() >= deadline {
                    break;
                }
            }
            i.logout().await;
            (ios, errors)
        }));
    }
    let (mut ios, mut errors, mut idle) = (0, 0, 0);
    for t in tasks {
        let (a, b) = t.await.unwrap();
        ios += a;
        errors += b;
        if a == 0 {
            idle += 1;
        }
    }
    println!("LOADWORKER ios={ios} errors={errors} idle_sessions={idle}");
}
