//! Malformed PDUs and CDBs get the right Reject, sense data or a closed connection —
//! never a panic — and a concurrent session's I/O carries on.

use std::time::Duration;

use bytes::BytesMut;
use integration_tests::*;
use iscsi_wire::digest::Digests;
use iscsi_wire::pdu::{self, Response};

/// A second session doing I/O while the first misbehaves; returns after checking it.
async fn bystander_ok(t: &TestTarget) {
    let mut b = Initiator::connect(t.addr).await;
    b.login(&LoginOpts {
        isid: Some([0x80, 0, 0, 0, 0, 0x42]),
        ..Default::default()
    })
    .await
    .unwrap();
    b.clear_ua(0).await;
    let data = pattern(9, 77, 512);
    assert_eq!(b.write10(0, 77, &data, 512).await.status, 0);
    assert_eq!(b.read10(0, 77, 1, 512).await.data, data);
}

fn raw_bhs(op: u8, itt: u32, cmd_sn: u32) -> [u8; 48] {
    let mut b = [0u8; 48];
    b[0] = op;
    b[1] = 0x80;
    b[16..20].copy_from_slice(&itt.to_be_bytes());
    b[24..28].copy_from_slice(&cmd_sn.to_be_bytes());
    b
}

#[tokio::test]
async fn unknown_opcode_is_rejected_and_session_continues() {
    let t = TestTarget::start(TargetSpec::default()).await;
    let mut a = Initiator::login_to(t.addr).await;
    a.clear_ua(0).await;
    let b = raw_bhs(0x1c, 99, a.cmd_sn);
    a.send_raw(&b).await;
    match a.recv().await {
        Some(Response::Reject(r)) => {
            assert_eq!(r.reason, 0x05, "command not supported");
            assert_eq!(r.header[0] & 0x3f, 0x1c, "carries the offending header");
        }
        other => panic!("expected Reject, got {other:?}"),
    }
    assert_eq!(a.read10(0, 0, 1, 512).await.status, 0);
    bystander_ok(&t).await;
    t.stop().await;
}

#[tokio::test]
async fn segment_over_max_recv_data_segment_length_closes() {
    let t = TestTarget::start(TargetSpec::default()).await;
    let mut a = Initiator::login_to(t.addr).await;
    // A NOP-Out announcing 1 MiB of data: more than the 256 KiB we declared.
    let mut b = raw_bhs(0x40, 5, a.cmd_sn); // NOP-Out, immediate
    b[5..8].copy_from_slice(&[0x10, 0x00, 0x00]);
    b[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
    a.send_raw(&b).await;
    match a.recv().await {
        Some(Response::Reject(r)) => assert_eq!(r.reason, 0x04),
        None => {}
        other => panic!("expected Reject or close, got {other:?}"),
    }
    assert!(a.closed_within(Duration::from_secs(5)).await);
    bystander_ok(&t).await;
    t.stop().await;
}

#[tokio::test]
async fn login_pdu_in_full_feature_phase_is_rejected() {
    let t = TestTarget::start(TargetSpec::default()).await;
    let mut a = Initiator::login_to(t.addr).await;
    let mut b = raw_bhs(0x03 | 0x40, 7, a.cmd_sn);
    b[1] = 0x87;
    a.send_raw(&b).await;
    match a.recv().await {
        Some(Response::Reject(r)) => assert_eq!(r.reason, 0x04),
        other => panic!("expected Reject, got {other:?}"),
    }
    assert!(a.closed_within(Duration::from_secs(5)).await);
    bystander_ok(&t).await;
    t.stop().await;
}

#[tokio::test]
async fn cmd_sn_outside_window_is_ignored() {
    let t = TestTarget::start(TargetSpec::default()).await;
    let mut a = Initiator::login_to(t.addr).await;
    a.clear_ua(0).await;
    // Far beyond MaxCmdSN: silently ignored (RFC 7143 §4.2.2.1).
    let saved = a.cmd_sn;
    a.cmd_sn = saved.wrapping_add(100_000);
    let cmd = a.command(0, &[0u8; 6], &[], 0);
    a.send(&pdu::Request::ScsiCommand(cmd)).await;
    assert!(a.recv_timeout(Duration::from_millis(500)).await.is_none());
    // Stale (already used) CmdSN: ignored as well.
    a.cmd_sn = saved.wrapping_sub(1);
    let cmd = a.command(0, &[0u8; 6], &[], 0);
    a.send(&pdu::Request::ScsiCommand(cmd)).await;
    assert!(a.recv_timeout(Duration::from_millis(500)).await.is_none());
    // The in-window command still works.
    a.cmd_sn = saved;
    assert_eq!(a.read10(0, 0, 1, 512).await.status, 0);
    t.stop().await;
}

#[tokio::test]
async fn bad_header_digest_closes_and_bad_data_digest_rejects() {
    let t = TestTarget::start(TargetSpec::default()).await;
    let mut a = Initiator::connect(t.addr).await;
    a.login(&LoginOpts {
        digests: true,
        ..Default::default()
    })
    .await
    .unwrap();
    a.clear_ua(0).await;
    // Data digest wrong on a NOP-Out ping: Reject (data digest error), session lives.
    let mut buf = BytesMut::new();
    pdu::Request::NopOut(pdu::NopOut {
        immediate: true,
        lun: 0,
        itt: 0x55,
        ttt: 0xffff_ffff,
        cmd_sn: a.cmd_sn,
        exp_stat_sn: a.exp_stat_sn,
        data: bytes::Bytes::from_static(b"ping-data"),
    })
    .encode(&mut buf, Digests::BOTH);
    let n = buf.len();
    buf[n - 1] ^= 0xff;
    a.send_raw(&buf).await;
    match a.recv().await {
        Some(Response::Reject(r)) => assert_eq!(r.reason, 0x02),
        other => panic!("expected Reject, got {other:?}"),
    }
    assert_eq!(a.read10(0, 0, 1, 512).await.status, 0);
    // Header digest wrong: the framing cannot be trusted, the connection closes.
    let mut buf = BytesMut::new();
    let cmd = a.command(0, &[0u8; 6], &[], 0);
    pdu::Request::ScsiCommand(cmd).encode(&mut buf, Digests::BOTH);
    buf[49] ^= 0xff;
    a.send_raw(&buf).await;
    assert!(a.closed_within(Duration::from_secs(5)).await);
    bystander_ok(&t).await;
    t.stop().await;
}

#[tokio::test]
async fn malformed_cdbs_get_the_right_sense() {
    let t = TestTarget::start(TargetSpec::default()).await;
    let mut a = Initiator::login_to(t.addr).await;
    a.clear_ua(0).await;
    // LBA + length overflows 64 bits: LOGICAL BLOCK ADDRESS OUT OF RANGE.
    let r = a.scsi(0, &cdb16(0x88, u64::MAX - 1, 4), &[], 2048).await;
    assert_eq!((r.status, r.sense_key()), (2, 5));
    assert_eq!(r.asc(), (0x21, 0x00));
    // Past the end of the LU.
    let r = a.read10(0, 16383, 2, 512).await;
    assert_eq!(r.asc(), (0x21, 0x00));
    // Reserved byte set in TEST UNIT READY: INVALID FIELD IN CDB.
    let r = a.scsi(0, &[0, 0, 0xff, 0, 0, 0], &[], 0).await;
    assert_eq!((r.status, r.sense_key(), r.asc()), (2, 5, (0x24, 0)));
    // Unsupported opcode: INVALID COMMAND OPERATION CODE.
    let r = a.scsi(0, &[0xc7, 0, 0, 0, 0, 0], &[], 0).await;
    assert_eq!((r.status, r.sense_key(), r.asc()), (2, 5, (0x20, 0)));
    // INQUIRY with a 5-byte allocation length: 5 bytes come back, not more.
    let r = a.scsi(0, &[0x12, 0, 0, 0, 5, 0], &[], 255).await;
    assert_eq!(r.status, 0);
    assert_eq!(r.data.len(), 5);
    // Every bad command left the session usable.
    assert_eq!(a.read10(0, 0, 1, 512).await.status, 0);
    bystander_ok(&t).await;
    t.stop().await;
}

#[tokio::test]
async fn residuals_reported() {
    let t = TestTarget::start(TargetSpec::default()).await;
    let mut a = Initiator::login_to(t.addr).await;
    a.clear_ua(0).await;
    // Ask for 2 blocks with an EDTL of one block: overflow of 512.
    let cdb = cdb10(0x28, 0, 2);
    let r = a.scsi(0, &cdb, &[], 512).await;
    assert_eq!(r.status, 0);
    assert_eq!(r.data.len(), 512);
    assert_eq!(r.residual, pdu::Residual::Overflow(512));
    // EDTL larger than the transfer: underflow.
    let cdb = cdb10(0x28, 0, 1);
    let r = a.scsi(0, &cdb, &[], 4096).await;
    assert_eq!(r.residual, pdu::Residual::Underflow(4096 - 512));
    t.stop().await;
}
