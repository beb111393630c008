//! `[fabric] busy_poll_us` (on by default; here at its largest budget): while a
//! connection polls, its loop reads commands itself. Every kind of traffic must still
//! arrive whole and in order: ping-pong at queue depth 1 (the case polling is for, and
//! the only one it starts for), writes whose data follows in Data-Out PDUs after an
//! R2T, many commands in flight, and two sessions polling at once. (Dropping the bytes
//! a poll reads makes the first test hang and the second fail.)

use std::path::Path;

use integration_tests::*;

const BS: usize = 512;
const TARGET_NAME: &str = "iqn.2026-11.org.switchyard:poll";

fn start_node(dir: &Path, port: u16) -> NodeProcess {
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nname = \"poll\"\ndata_dir = \"{}\"\n\
             [[portal]]\nlisten = \"127.0.0.1:{port}\"\n\
             [[target]]\nname = \"{TARGET_NAME}\"\n\
             [[target.lun]]\nlun = 0\npath = \"lun0.img\"\nsize = \"16MiB\"\n\
             [fabric]\nbusy_poll_us = 1000\n",
            dir.display()
        ),
    )
    .unwrap();
    NodeProcess::spawn(&cfg, None)
}

async fn session(port: u16, n: u8) -> Initiator {
    let mut i = Initiator::connect(format!("127.0.0.1:{port}").parse().unwrap()).await;
    i.login(&LoginOpts {
        target: Some(TARGET_NAME.into()),
        isid: Some([0x80, 0, 0, 0, 2, n]),
        ..Default::default()
    })
    .await
    .expect("login");
    i.clear_ua(0).await;
    i
}

/// Queue depth 1 on its own region: every write read back at once.
async fn ping_pong(port: u16, n: u8, rounds: u32) {
    let mut i = session(port, n).await;
    let base = u32::from(n) * 4096;
    for r in 0..rounds {
        let lba = base + (r * 7) % 4000;
        let data = pattern(u32::from(n) * 100_000 + r, u64::from(lba), BS);
        assert_eq!(i.write10(0, lba, &data, BS).await.status, 0);
        let back = i.read10(0, lba, 1, BS).await;
        assert_eq!(back.status, 0);
        assert_eq!(back.data, data, "session {n} round {r}");
    }
    i.logout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_arrive_whole_while_the_node_busy_polls() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let node = start_node(dir.path(), port);
    wait_port(port).await;

    // Two sessions in ping-pong at once: both connections poll.
    let a = tokio::spawn(ping_pong(port, 1, 400));
    let b = tokio::spawn(ping_pong(port, 2, 400));
    a.await.unwrap();
    b.await.unwrap();

    let mut i = session(port, 3).await;
    // 1 MiB: over FirstBurstLength, so most of it comes in Data-Out PDUs after R2Ts.
    let big: Vec<u8> = (0..2048u64)
        .flat_map(|b| pattern(7, 20_000 + b, BS))
        .collect();
    assert_eq!(i.write10(0, 20_000, &big, BS).await.status, 0);
    let back = i.read10(0, 20_000, 2048, BS).await;
    assert_eq!((back.status, back.data == big), (0, true));

    // 32 writes in flight, then 32 reads in flight.
    let writes = (0..32u32)
        .map(|k| {
            let lba = 24_000 + k * 8;
            let data: Vec<u8> = (0..8)
                .flat_map(|b| pattern(9, u64::from(lba + b), BS))
                .collect();
            (0u16, cdb10(0x2a, lba, 8).to_vec(), data, 0u32)
        })
        .collect();
    assert!(i.scsi_many(writes, 32).await.iter().all(|r| r.status == 0));
    let reads = (0..32u32)
        .map(|k| {
            (
                0u16,
                cdb10(0x28, 24_000 + k * 8, 8).to_vec(),
                Vec::new(),
                8 * BS as u32,
            )
        })
        .collect();
    for (k, r) in i.scsi_many(reads, 32).await.iter().enumerate() {
        let lba = 24_000 + k as u32 * 8;
        let want: Vec<u8> = (0..8)
            .flat_map(|b| pattern(9, u64::from(lba + b), BS))
            .collect();
        assert_eq!((r.status, r.data == want), (0, true), "read {k}");
    }
    assert!(i.logout().await.is_some(), "logout answered");
    node.stop();
}

/// A session ended from outside (here: reinstated by a new login with the same ISID)
/// while its host keeps it busy at queue depth 1 — so that every command is picked up
/// by polling — must still end. (Reinstatement also closes the socket, so this passes
/// even without the connection loop's own check of the session's end after a polled
/// frame; that check covers endings that leave the socket open.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_polling_session_ended_from_outside_still_ends() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let node = start_node(dir.path(), port);
    wait_port(port).await;

    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let busy = tokio::spawn(async move {
        let mut i = session(port, 9).await;
        let mut started = Some(started_tx);
        let mut done = 0u64;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let cmd = i.command(0, &cdb10(0x28, (done % 1000) as u32, 1), &[], BS as u32);
            i.send(&iscsi_wire::pdu::Request::ScsiCommand(cmd)).await;
            if i.recv_timeout(Duration::from_secs(2)).await.is_none() {
                return (done, Instant::now());
            }
            done += 1;
            if done == 200 {
                let _ = started.take().map(|t| t.send(()));
            }
        }
        panic!("the session was never ended ({done} commands answered)");
    });
    started_rx.await.expect("the busy session got going");
    let ended_at = Instant::now();
    // Same initiator name and ISID: the target reinstates, ending the busy session.
    let mut again = session(port, 9).await;
    let (done, closed) = busy.await.unwrap();
    assert!(done >= 200);
    assert!(
        closed.duration_since(ended_at) < Duration::from_secs(5),
        "the old session ended {:?} after the new login",
        closed.duration_since(ended_at)
    );
    let back = again.read10(0, 0, 1, BS).await;
    assert_eq!(back.status, 0);
    node.stop();
}
