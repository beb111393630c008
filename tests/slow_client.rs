//! Slow and hostile clients (issue 11, "Limits"): a client that stops reading its socket
//! cannot make the target buffer more than its command window of responses, cannot
//! stall other sessions, and is cleaned up when it goes away; a client that stalls or
//! trickles in the middle of a PDU is dropped by the NOP/idle logic (or the login
//! timeout) while other sessions carry on.
//!
//! Nothing here asserts on how long something took: timeouts are hang guards only.

use std::sync::Arc;
use std::time::Duration;

use blockdev::MemStore;
use integration_tests::*;
use iscsi::FabricConfig;
use iscsi_wire::pdu;
use tokio::io::AsyncWriteExt;

/// The CmdSN window of every session in these tests.
const DEPTH: u32 = 16;
/// One READ's size: 1 MiB of 512-byte blocks.
const READ_BLOCKS: u16 = 2048;
/// Hang guard for anything we wait for.
const GUARD: Duration = Duration::from_secs(30);

fn fabric() -> FabricConfig {
    FabricConfig {
        queue_depth: DEPTH,
        nop_interval: Duration::from_secs(1),
        nop_timeout: Duration::from_secs(2),
        login_timeout: Duration::from_secs(2),
        ..FabricConfig::default()
    }
}

async fn start() -> TestTarget {
    start_with(fabric()).await
}

async fn start_with(fabric: FabricConfig) -> TestTarget {
    TestTarget::start(TargetSpec {
        // 32 MiB: room for 1 MiB reads and the bystanders' blocks.
        luns: vec![Arc::new(MemStore::new(512, 65536))],
        fabric,
        ..TargetSpec::default()
    })
    .await
}

/// Poll `f` every 10 ms until it holds; panics after [`GUARD`] (a hang guard).
async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// MiB the kernel may buffer on a loopback connection: the sender's largest send
/// buffer plus the receiver's largest receive buffer (tcp_wmem / tcp_rmem maxima).
fn kernel_buffer_mib() -> u32 {
    let max = |f: &str| -> u64 {
        std::fs::read_to_string(f)
            .ok()
            .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
            .unwrap_or(8 << 20)
    };
    let bytes = max("/proc/sys/net/ipv4/tcp_wmem") + max("/proc/sys/net/ipv4/tcp_rmem");
    bytes.div_ceil(1 << 20) as u32
}

fn has_session(t: &TestTarget, tsih: u16) -> bool {
    t.server.shared().sessions().iter().any(|s| s.tsih == tsih)
}

/// A well-behaved session that writes and reads back `rounds` × 8 blocks of its own
/// pattern (1 MiB writes and reads interleaved with small ones) and verifies every byte.
async fn bystander(t: &TestTarget, id: u8, rounds: u32) {
    let mut b = Initiator::connect(t.addr).await;
    b.login(&LoginOpts {
        isid: Some([0x80, 0, 0, 0, 0x0b, id]),
        ..Default::default()
    })
    .await
    .unwrap();
    b.clear_ua(0).await;
    // Each bystander owns 4096 blocks (2 MiB) from 32768 + (id % 8) * 4096 (ids that
    // share a range never run at the same time).
    let base = 32768 + u32::from(id % 8) * 4096;
    for r in 0..rounds {
        let lba = base + (r * 8) % 2048;
        let small: Vec<u8> = (0..8)
            .flat_map(|i| pattern(u32::from(id) * 1000 + r, u64::from(lba + i), 512))
            .collect();
        assert_eq!(b.write10(0, lba, &small, 512).await.status, 0);
        assert_eq!(
            b.read10(0, lba, 8, 512).await.data,
            small,
            "bystander {id} round {r}"
        );
        let big_lba = base + 2048;
        let big: Vec<u8> = (0..u32::from(READ_BLOCKS))
            .flat_map(|i| pattern(u32::from(id) * 1000 + r, u64::from(big_lba + i), 512))
            .collect();
        assert_eq!(b.write10(0, big_lba, &big, 512).await.status, 0);
        let got = b.read10(0, big_lba, READ_BLOCKS, 512).await;
        assert_eq!(got.status, 0);
        assert!(
            got.data == big,
            "bystander {id} round {r}: 1 MiB read back differs"
        );
    }
    b.logout().await;
}

/// A client that queues far more 1 MiB READs than its window allows and never reads
/// a byte of the answers: the target accepts at most the window's worth (each accepted
/// command is a response the target must hold), two other sessions' verified I/O goes
/// on meanwhile, and once the client closes its session is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stops_reading_is_bounded_and_isolated() {
    // The slow client answers no NOP-In (it reads nothing): give the idle logic more
    // time than the bystanders need on a loaded machine, so the session is still there
    // when (b) looks; (c) ends it by closing the socket, not by timing out.
    let t = start_with(FabricConfig {
        nop_interval: Duration::from_secs(10),
        nop_timeout: Duration::from_secs(20),
        ..fabric()
    })
    .await;
    let mut slow = Initiator::connect(t.addr).await;
    slow.login(&LoginOpts {
        isid: Some([0x80, 0, 0, 0, 0x0a, 1]),
        ..Default::default()
    })
    .await
    .unwrap();
    slow.clear_ua(0).await;
    let tsih = slow.tsih;
    let sess = t
        .server
        .shared()
        .session_by_tsih(tsih)
        .expect("the slow client's session is registered");
    let first = slow.cmd_sn;
    assert_eq!(sess.window.lock().exp_cmd_sn, first);

    // Eight windows' worth of 1 MiB READs with consecutive CmdSNs, as a hostile client
    // that guesses the window keeps moving would send them. Only headers: ~3 KiB.
    let flood = 8 * DEPTH;
    let mut bytes = bytes::BytesMut::new();
    for i in 0..flood {
        let cdb = cdb10(0x28, i * u32::from(READ_BLOCKS) % 32768, READ_BLOCKS);
        let cmd = slow.command(0, &cdb, &[], u32::from(READ_BLOCKS) * 512);
        pdu::Request::ScsiCommand(cmd).encode(&mut bytes, slow.digests);
    }
    // Then an immediate one-block WRITE of a marker: immediate commands bypass the
    // window, and the target reads PDUs in order, so once the marker is on the LU
    // every READ above has been accepted or ignored.
    let marker = pattern(0x5107, 30000, 512);
    let mut m = slow.command(0, &cdb10(0x2a, 30000, 1), &marker, 0);
    slow.cmd_sn = slow.cmd_sn.wrapping_sub(1);
    m.immediate = true;
    m.cmd_sn = slow.cmd_sn;
    pdu::Request::ScsiCommand(m).encode(&mut bytes, slow.digests);
    slow.send_raw(&bytes).await;
    let store = t.stores[0].clone();
    wait_until("the marker write lands", || {
        let mut b = vec![0u8; 512];
        store.read(30000, &mut b).unwrap();
        b == marker
    })
    .await;

    // (a) The target holds at most one window of responses: a command's slot is free
    // only once its response went to the socket, so besides the window only what the
    // kernel's socket buffers took (and the one batch being written) was accepted;
    // every other READ was outside the window and ignored (RFC 7143 §4.2.2.1).
    let (accepted, held) = {
        let w = sess.window.lock();
        (w.exp_cmd_sn.wrapping_sub(first), w.outstanding)
    };
    eprintln!("slow client: {accepted} of {flood} READs accepted, {held} responses held");
    // The immediate marker WRITE is outside the window, and its response may be held
    // behind the READs' too.
    assert!(
        held <= DEPTH + 1,
        "{held} responses held, window {DEPTH} (+1: the immediate marker)"
    );
    let bound = DEPTH + kernel_buffer_mib() + 2;
    assert!(
        accepted <= bound,
        "target accepted {accepted} 1 MiB READs from a client that reads nothing \
         (window {DEPTH}, socket buffers and one batch allow {bound})"
    );
    assert!(accepted < flood, "most of the flood was ignored");
    assert!(accepted >= DEPTH, "a whole window was accepted");

    // (b) Two other sessions do verified I/O while the slow client still holds its
    // window full of unread responses.
    tokio::join!(bystander(&t, 1, 8), bystander(&t, 2, 8));
    assert!(has_session(&t, tsih), "the slow session is still there");
    assert_eq!(
        sess.window.lock().exp_cmd_sn.wrapping_sub(first),
        accepted,
        "nothing more was accepted meanwhile"
    );

    // (c) The slow client goes away without reading: its session is cleaned up.
    drop(slow);
    wait_until("the slow session is unregistered", || {
        !has_session(&t, tsih)
    })
    .await;
    drop(sess);
    bystander(&t, 3, 2).await;
    t.stop().await;
}

/// A client that stops reading and then goes silent (keeps its socket open, sends
/// nothing, reads nothing) is dropped by the NOP-In idle logic even though its
/// responses can never be delivered, and its session is unregistered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_that_stops_reading_is_dropped() {
    let t = start().await;
    let mut slow = Initiator::connect(t.addr).await;
    slow.login(&LoginOpts {
        isid: Some([0x80, 0, 0, 0, 0x0a, 2]),
        ..Default::default()
    })
    .await
    .unwrap();
    slow.clear_ua(0).await;
    let tsih = slow.tsih;
    let mut bytes = bytes::BytesMut::new();
    for i in 0..DEPTH {
        let cdb = cdb10(0x28, i * u32::from(READ_BLOCKS) % 32768, READ_BLOCKS);
        let cmd = slow.command(0, &cdb, &[], u32::from(READ_BLOCKS) * 512);
        pdu::Request::ScsiCommand(cmd).encode(&mut bytes, slow.digests);
    }
    slow.send_raw(&bytes).await;
    bystander(&t, 4, 2).await;
    // Keep `slow` (and its socket) alive, reading nothing, until the target gives up.
    wait_until("the silent, non-reading session is dropped", || {
        !has_session(&t, tsih)
    })
    .await;
    bystander(&t, 5, 2).await;
    drop(slow);
    t.stop().await;
}

/// Full feature phase: a client sends a SCSI Command header announcing immediate data
/// and then stalls, or trickles a byte at a time without ever completing the PDU. The
/// connection is dropped by the idle logic (no complete PDU arrives, so NOP-In pings
/// go unanswered), the session is unregistered, and others are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_stalled_mid_pdu_is_dropped() {
    let t = start().await;
    let mut stalled = Vec::new();
    for (k, trickle) in [(3u8, false), (4u8, true)] {
        let mut c = Initiator::connect(t.addr).await;
        c.login(&LoginOpts {
            isid: Some([0x80, 0, 0, 0, 0x0a, k]),
            ..Default::default()
        })
        .await
        .unwrap();
        c.clear_ua(0).await;
        // A WRITE of 8 blocks whose header announces 4096 bytes of immediate data.
        let data = vec![0xa5u8; 4096];
        let cmd = c.command(0, &cdb10(0x2a, 100, 8), &data, 0);
        let mut b = bytes::BytesMut::new();
        pdu::Request::ScsiCommand(cmd).encode(&mut b, c.digests);
        // The header and 100 bytes of the data segment; the rest never comes.
        c.send_raw(&b[..48 + 100]).await;
        stalled.push((c, trickle));
    }
    let tsihs: Vec<u16> = stalled.iter().map(|(c, _)| c.tsih).collect();
    for &tsih in &tsihs {
        assert!(has_session(&t, tsih));
    }
    // The trickler sends one more byte of the segment every 100 ms (still far from
    // complete) until the target closes its connection.
    let (mut trickler, _) = stalled.pop().unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..3000 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if trickler.sock.write_all(&[0xa5]).await.is_err() {
                break;
            }
        }
        trickler
    });
    // Others are unaffected meanwhile.
    tokio::join!(bystander(&t, 6, 4), bystander(&t, 7, 4));
    for &tsih in &tsihs {
        wait_until("the stalled session is dropped", || !has_session(&t, tsih)).await;
    }
    let (mut staller, _) = stalled.pop().unwrap();
    assert!(
        staller.closed_within(GUARD).await,
        "staller's connection closed"
    );
    let mut trickler = tokio::time::timeout(GUARD, trickle)
        .await
        .expect("trickler stops once the target closes")
        .unwrap();
    assert!(
        trickler.closed_within(GUARD).await,
        "trickler's connection closed"
    );
    bystander(&t, 8, 2).await;
    t.stop().await;
}

/// Login phase: a client that sends half a Login PDU and stalls (or sends nothing
/// after connecting) is dropped by the login timeout; others log in and do I/O.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_stalled_mid_login_is_dropped() {
    let t = start().await;
    let mut half = Initiator::connect(t.addr).await;
    let mut bhs = [0u8; 48];
    bhs[0] = 0x43; // Login request, immediate
    bhs[1] = 0x87; // T, CSG 1, NSG 3
    bhs[5..8].copy_from_slice(&[0, 0x01, 0x00]); // 256 bytes of keys announced
    half.send_raw(&bhs).await;
    half.send_raw(b"InitiatorName=iqn.2026-11.org.switchyard:sl")
        .await;
    let mut silent = Initiator::connect(t.addr).await;
    bystander(&t, 9, 2).await;
    assert!(half.closed_within(GUARD).await, "half-sent login dropped");
    assert!(
        silent.closed_within(GUARD).await,
        "silent connection dropped"
    );
    assert!(
        t.server
            .shared()
            .sessions()
            .iter()
            .all(|s| s.isid != "0x800000000001"),
        "no session for the stalled logins"
    );
    bystander(&t, 10, 2).await;
    t.stop().await;
}
