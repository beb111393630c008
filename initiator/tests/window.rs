//! The CmdSN window against a strict fake target: it starts with a closed window,
//! opens it by NOP-In, keeps it two commands wide, and counts every command that
//! arrives beyond MaxCmdSN (switchyard's own target accepts in-order commands past
//! MaxCmdSN, so it cannot catch this).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use iscsi_initiator::{Client, InitiatorConfig};
use iscsi_wire::digest::Digests;
use iscsi_wire::pdu::{self, LoginResponse, NopIn, Request, ScsiResponse, Stage};
use iscsi_wire::text::TextPairs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WINDOW: u32 = 2;

fn sn_le(a: u32, b: u32) -> bool {
    a == b || b.wrapping_sub(a) < 0x8000_0000
}

async fn recv(sock: &mut TcpStream, buf: &mut BytesMut) -> Option<Request> {
    loop {
        if let Some(raw) = pdu::decode_frame(buf, Digests::NONE, 1 << 20).unwrap() {
            return Some(raw.parse_request().unwrap());
        }
        if sock.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

async fn send(sock: &mut TcpStream, r: pdu::Response) {
    let mut b = BytesMut::new();
    r.encode(&mut b, Digests::NONE);
    sock.write_all(&b).await.unwrap();
}

async fn fake_target(mut sock: TcpStream, violations: Arc<AtomicU32>, done: Arc<AtomicU32>) {
    let mut buf = BytesMut::new();
    let mut stat_sn = 0u32;
    let mut exp_cmd_sn: u32;
    // Login: accept whatever is offered, move to full feature phase.
    loop {
        let Some(Request::Login(l)) = recv(&mut sock, &mut buf).await else {
            return;
        };
        exp_cmd_sn = l.cmd_sn;
        let ffp = l.csg == Stage::Operational;
        let mut keys = TextPairs::new();
        if ffp {
            keys.push("MaxRecvDataSegmentLength", "8192");
            keys.push("HeaderDigest", "None");
            keys.push("DataDigest", "None");
        } else {
            keys.push("AuthMethod", "None");
        }
        send(
            &mut sock,
            pdu::Response::Login(LoginResponse {
                transit: true,
                cont: false,
                csg: l.csg,
                nsg: if ffp {
                    Stage::FullFeature
                } else {
                    Stage::Operational
                },
                version_max: 0,
                version_active: 0,
                isid: l.isid,
                tsih: if ffp { 7 } else { 0 },
                itt: l.itt,
                stat_sn,
                exp_cmd_sn,
                // A closed window: nothing may be sent until we open it.
                max_cmd_sn: exp_cmd_sn.wrapping_sub(1),
                status_class: 0,
                status_detail: 0,
                data: keys.to_bytes(),
            }),
        )
        .await;
        stat_sn += 1;
        if ffp {
            break;
        }
    }
    let mut max_cmd_sn = exp_cmd_sn.wrapping_sub(1);
    let mut opened = false;
    loop {
        let req = if opened {
            recv(&mut sock, &mut buf).await
        } else {
            match tokio::time::timeout(Duration::from_millis(200), recv(&mut sock, &mut buf)).await
            {
                Ok(r) => r,
                Err(_) => {
                    // Open the window with an unsolicited NOP-In.
                    opened = true;
                    max_cmd_sn = exp_cmd_sn.wrapping_add(WINDOW - 1);
                    send(
                        &mut sock,
                        pdu::Response::NopIn(NopIn {
                            lun: 0,
                            itt: 0xffff_ffff,
                            ttt: 0xffff_ffff,
                            stat_sn,
                            exp_cmd_sn,
                            max_cmd_sn,
                            data: Bytes::new(),
                        }),
                    )
                    .await;
                    continue;
                }
            }
        };
        let Some(req) = req else { return };
        match req {
            Request::ScsiCommand(c) => {
                if !sn_le(c.cmd_sn, max_cmd_sn) || c.cmd_sn != exp_cmd_sn {
                    violations.fetch_add(1, Ordering::Relaxed);
                }
                exp_cmd_sn = c.cmd_sn.wrapping_add(1);
                max_cmd_sn = exp_cmd_sn.wrapping_add(WINDOW - 1);
                tokio::time::sleep(Duration::from_millis(2)).await;
                send(
                    &mut sock,
                    pdu::Response::ScsiResponse(ScsiResponse {
                        itt: c.itt,
                        stat_sn,
                        exp_cmd_sn,
                        max_cmd_sn,
                        ..ScsiResponse::default()
                    }),
                )
                .await;
                stat_sn += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Request::Logout(l) => {
                send(
                    &mut sock,
                    pdu::Response::Logout(pdu::LogoutResponse {
                        itt: l.itt,
                        stat_sn,
                        exp_cmd_sn,
                        max_cmd_sn,
                        ..Default::default()
                    }),
                )
                .await;
                return;
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn commands_wait_for_the_cmdsn_window() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let violations = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicU32::new(0));
    let (v, d) = (violations.clone(), done.clone());
    tokio::spawn(async move {
        let (sock, _) = l.accept().await.unwrap();
        fake_target(sock, v, d).await;
    });
    let mut cfg = InitiatorConfig::new(addr, "iqn.2026-11.org.switchyard:node1", "iqn.fake:t");
    cfg.nop_interval = None;
    let c = Client::connect(cfg).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let o = c
                    .execute(0, &[0u8; 6], Bytes::new(), 0, Duration::from_secs(10))
                    .await
                    .expect("TEST UNIT READY");
                assert!(o.is_good());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(done.load(Ordering::Relaxed), 80);
    assert_eq!(
        violations.load(Ordering::Relaxed),
        0,
        "commands were sent beyond MaxCmdSN or out of order"
    );
    c.close().await;
}
