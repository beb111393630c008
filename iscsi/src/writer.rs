//! The sending half of a connection: one task owns the socket's write half, numbers
//! status-bearing PDUs (StatSN) in the order they leave, stamps ExpCmdSN/MaxCmdSN at send
//! time, splits read data into Data-In PDUs (MaxRecvDataSegmentLength, MaxBurstLength)
//! and batches whatever is queued into one socket write.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use iscsi_wire::digest::Digests;
use iscsi_wire::pdu::{
    DataIn, LogoutResponse, NopIn, Reject, ScsiResponse, TaskMgmtResponse, TextResponse, R2T,
};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use crate::session::Session;

pub use iscsi_wire::pdu::Residual;

/// Something to send. The writer fills in the sequence numbers.
#[derive(Debug)]
pub enum Out {
    /// Status (and read data, if any) of a SCSI command.
    Scsi {
        itt: u32,
        lun: u64,
        status: u8,
        sense: Option<Vec<u8>>,
        residual: Residual,
        data: Option<Bytes>,
    },
    R2t {
        itt: u32,
        lun: u64,
        ttt: u32,
        r2t_sn: u32,
        offset: u32,
        len: u32,
    },
    /// NOP-In: a reply to a ping (`itt` set) or our own ping (`ttt` set).
    NopIn {
        itt: u32,
        ttt: u32,
        lun: u64,
        data: Bytes,
    },
    TaskMgmt {
        itt: u32,
        response: u8,
    },
    Text {
        itt: u32,
        ttt: u32,
        final_: bool,
        cont: bool,
        data: Bytes,
    },
    Logout {
        itt: u32,
        response: u8,
    },
    Reject {
        reason: u8,
        header: Box<[u8; 48]>,
    },
    /// Flush what is queued and close the connection.
    Close,
}

/// Negotiated values the writer needs.
#[derive(Debug, Clone, Copy)]
pub struct WriterParams {
    pub digests: Digests,
    /// What the initiator declared it can receive per PDU.
    pub max_send_data: u32,
    pub max_burst: u32,
}

const BATCH_BYTES: usize = 1 << 20;

/// Run the writer until `Out::Close`, the channel closes, or the socket fails.
pub async fn run(
    mut sock: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Out>,
    sess: Arc<Session>,
    params: WriterParams,
    mut stat_sn: u32,
) {
    let mut buf = BytesMut::with_capacity(256 * 1024);
    'outer: while let Some(first) = rx.recv().await {
        let mut close = encode(first, &mut buf, &sess, &params, &mut stat_sn);
        while !close && buf.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(m) => close = encode(m, &mut buf, &sess, &params, &mut stat_sn),
                Err(_) => break,
            }
        }
        if !buf.is_empty() {
            if let Err(e) = sock.write_all(&buf).await {
                tracing::debug!(error = %e, "connection write failed");
                break 'outer;
            }
            buf.clear();
        }
        if close {
            break;
        }
    }
    let _ = sock.shutdown().await;
    // Tell the reader side we are gone, so it stops too.
    sess.conn_closed.cancel();
}

fn next(stat_sn: &mut u32) -> u32 {
    let s = *stat_sn;
    *stat_sn = stat_sn.wrapping_add(1);
    s
}

/// Encode one message; returns true when the connection should close after it.
fn encode(m: Out, buf: &mut BytesMut, sess: &Session, p: &WriterParams, stat_sn: &mut u32) -> bool {
    let (exp_cmd_sn, max_cmd_sn) = sess.window_values();
    let d = p.digests;
    match m {
        Out::Scsi {
            itt,
            lun,
            status,
            sense,
            residual,
            data,
        } => {
            let data = data.unwrap_or_default();
            // Phase collapse: GOOD status rides on the last Data-In (§11.7.4).
            let collapse = !data.is_empty() && status == 0 && sense.is_none();
            let seg = p.max_send_data.max(512) as usize;
            let burst = p.max_burst.max(512) as usize;
            let mut off = 0usize;
            let mut data_sn = 0u32;
            let mut in_burst = 0usize;
            while off < data.len() {
                let n = seg.min(data.len() - off).min(burst - in_burst);
                let last = off + n == data.len();
                in_burst += n;
                let end_of_burst = in_burst == burst;
                let with_status = last && collapse;
                DataIn {
                    final_bit: last || end_of_burst,
                    ack: false,
                    status: with_status.then_some(status),
                    lun,
                    itt,
                    ttt: 0xffff_ffff,
                    stat_sn: if with_status { next(stat_sn) } else { *stat_sn },
                    exp_cmd_sn,
                    max_cmd_sn,
                    data_sn,
                    buffer_offset: off as u32,
                    residual: if with_status {
                        residual
                    } else {
                        Residual::None
                    },
                }
                .encode(&data[off..off + n], buf, d);
                if end_of_burst {
                    in_burst = 0;
                }
                data_sn = data_sn.wrapping_add(1);
                off += n;
            }
            if !collapse {
                ScsiResponse {
                    response: 0,
                    status,
                    itt,
                    snack_tag: 0,
                    stat_sn: next(stat_sn),
                    exp_cmd_sn,
                    max_cmd_sn,
                    exp_data_sn: data_sn,
                    residual,
                    bidi_read_residual: Residual::None,
                    sense: sense.map(Bytes::from).unwrap_or_default(),
                }
                .encode(buf, d);
            }
            false
        }
        Out::R2t {
            itt,
            lun,
            ttt,
            r2t_sn,
            offset,
            len,
        } => {
            R2T {
                lun,
                itt,
                ttt,
                stat_sn: *stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
                r2t_sn,
                buffer_offset: offset,
                desired_len: len,
            }
            .encode(buf, d);
            false
        }
        Out::NopIn {
            itt,
            ttt,
            lun,
            data,
        } => {
            // A reply to a ping advances StatSN; our own ping (ITT 0xffffffff) does not.
            let sn = if itt != 0xffff_ffff {
                next(stat_sn)
            } else {
                *stat_sn
            };
            NopIn {
                lun,
                itt,
                ttt,
                stat_sn: sn,
                exp_cmd_sn,
                max_cmd_sn,
                data,
            }
            .encode(buf, d);
            false
        }
        Out::TaskMgmt { itt, response } => {
            TaskMgmtResponse {
                response,
                itt,
                stat_sn: next(stat_sn),
                exp_cmd_sn,
                max_cmd_sn,
            }
            .encode(buf, d);
            false
        }
        Out::Text {
            itt,
            ttt,
            final_,
            cont,
            data,
        } => {
            TextResponse {
                final_bit: final_,
                cont,
                lun: 0,
                itt,
                ttt,
                stat_sn: next(stat_sn),
                exp_cmd_sn,
                max_cmd_sn,
                data,
            }
            .encode(buf, d);
            false
        }
        Out::Logout { itt, response } => {
            LogoutResponse {
                response,
                itt,
                stat_sn: next(stat_sn),
                exp_cmd_sn,
                max_cmd_sn,
                time2wait: 0,
                time2retain: 0,
            }
            .encode(buf, d);
            false
        }
        Out::Reject { reason, header } => {
            Reject {
                reason,
                stat_sn: next(stat_sn),
                exp_cmd_sn,
                max_cmd_sn,
                data_sn: 0,
                header: *header,
            }
            .encode(buf, d);
            false
        }
        Out::Close => true,
    }
}
