//! The sending half of a connection: one task owns the socket's write half, numbers
//! status-bearing PDUs (StatSN) in the order they leave, stamps ExpCmdSN/MaxCmdSN at send
//! time, splits read data into Data-In PDUs (MaxRecvDataSegmentLength, MaxBurstLength)
//! and batches whatever is queued into one socket write. Large read data is not copied:
//! a batch is a list of buffers (headers encoded here, data segments as the `Bytes` the
//! SCSI core returned) written with one vectored write.

use std::io::IoSlice;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use iscsi_wire::digest::{self, Digests};
use iscsi_wire::pdu::{
    self, DataIn, LogoutResponse, NopIn, Reject, ScsiResponse, TaskMgmtResponse, TextResponse, R2T,
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
        /// The command holds a slot in the session's command window until this
        /// response is handed to the socket (false for commands refused up front).
        holds_slot: bool,
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
    /// A socket write that makes no progress for this long (the initiator stopped
    /// reading) ends the connection.
    pub stall_timeout: std::time::Duration,
}

const BATCH_BYTES: usize = 1 << 20;

/// Data segments at least this long go to the socket from their own buffer (one more
/// iovec) instead of being copied into the batch; shorter ones are cheaper to copy.
const ZERO_COPY_MIN: usize = 16 * 1024;

/// Buffers per vectored write (Linux takes up to 1024).
const MAX_IOVECS: usize = 64;

/// What one socket write sends: headers and small PDUs are encoded into `buf`; each
/// large data segment is cut in as its own buffer, after the bytes of `buf` before it.
struct Batch {
    buf: BytesMut,
    parts: Vec<Bytes>,
    /// Bytes in `parts`.
    parts_len: usize,
}

impl Batch {
    fn len(&self) -> usize {
        self.buf.len() + self.parts_len
    }

    /// Append `data` without copying it.
    fn push_data(&mut self, data: Bytes) {
        if !self.buf.is_empty() {
            let head = self.buf.split().freeze();
            self.parts_len += head.len();
            self.parts.push(head);
        }
        self.parts_len += data.len();
        self.parts.push(data);
    }

    /// Write everything and empty the batch. Fails if one write makes no progress
    /// within `stall`.
    async fn flush(
        &mut self,
        sock: &mut OwnedWriteHalf,
        stall: std::time::Duration,
    ) -> std::io::Result<()> {
        let stalled =
            |_| std::io::Error::new(std::io::ErrorKind::TimedOut, "initiator stopped reading");
        if self.parts.is_empty() {
            let mut off = 0;
            while off < self.buf.len() {
                let n = tokio::time::timeout(stall, sock.write(&self.buf[off..]))
                    .await
                    .map_err(stalled)??;
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                off += n;
            }
            self.buf.clear();
            return Ok(());
        }
        if !self.buf.is_empty() {
            self.parts.push(self.buf.split().freeze());
        }
        let mut i = 0;
        while i < self.parts.len() {
            let mut n = {
                let iov: Vec<IoSlice<'_>> = self.parts[i..]
                    .iter()
                    .take(MAX_IOVECS)
                    .map(|b| IoSlice::new(b))
                    .collect();
                tokio::time::timeout(stall, sock.write_vectored(&iov))
                    .await
                    .map_err(stalled)??
            };
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            while n > 0 {
                let part = &mut self.parts[i];
                if n >= part.len() {
                    n -= part.len();
                    i += 1;
                } else {
                    part.advance(n);
                    n = 0;
                }
            }
        }
        self.parts.clear();
        self.parts_len = 0;
        Ok(())
    }
}

/// Run the writer until `Out::Close`, the channel closes, or the socket fails.
pub async fn run(
    mut sock: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Out>,
    sess: Arc<Session>,
    params: WriterParams,
    mut stat_sn: u32,
) {
    let mut batch = Batch {
        buf: BytesMut::with_capacity(256 * 1024),
        parts: Vec::new(),
        parts_len: 0,
    };
    'outer: while let Some(first) = rx.recv().await {
        let mut close = encode(first, &mut batch, &sess, &params, &mut stat_sn);
        let mut gathered = false;
        loop {
            while !close && batch.len() < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(m) => close = encode(m, &mut batch, &sess, &params, &mut stat_sn),
                    Err(_) => break,
                }
            }
            // Commands still running will answer soon, often within this turn of the
            // scheduler (their back-end answers arrived together): let them run once,
            // so that their responses leave in this write rather than one write each.
            // A lone command (queue depth 1) is never delayed.
            if close
                || gathered
                || batch.len() >= BATCH_BYTES
                || sess.window.lock().outstanding == 0
            {
                break;
            }
            gathered = true;
            tokio::task::yield_now().await;
        }
        if batch.len() > 0 {
            if let Err(e) = batch.flush(&mut sock, params.stall_timeout).await {
                tracing::debug!(error = %e, "connection write failed");
                break 'outer;
            }
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
fn encode(m: Out, batch: &mut Batch, sess: &Session, p: &WriterParams, stat_sn: &mut u32) -> bool {
    if let Out::Scsi {
        holds_slot: true, ..
    } = m
    {
        // The response leaves now: its command's window slot is free, and this
        // response already advertises it in MaxCmdSN.
        crate::conn::release_slot(sess);
    }
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
            holds_slot: _,
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
                let pdu = DataIn {
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
                };
                if n >= ZERO_COPY_MIN {
                    // Header (and header digest) here, the data from its own buffer,
                    // then padding and data digest (RFC 7143 §11.1).
                    pdu::write_pdu(&mut batch.buf, &pdu.to_bhs(n), &[], &[], d);
                    let seg = data.slice(off..off + n);
                    let crc = d.data.then(|| digest::data_digest(&seg));
                    batch.push_data(seg);
                    batch.buf.put_bytes(0, digest::pad_len(n));
                    if let Some(crc) = crc {
                        batch.buf.put_slice(&digest::digest_bytes(crc));
                    }
                } else {
                    pdu.encode(&data[off..off + n], &mut batch.buf, d);
                }
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
                .encode(&mut batch.buf, d);
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
            .encode(&mut batch.buf, d);
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
            .encode(&mut batch.buf, d);
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
            .encode(&mut batch.buf, d);
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
            .encode(&mut batch.buf, d);
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
            .encode(&mut batch.buf, d);
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
            .encode(&mut batch.buf, d);
            false
        }
        Out::Close => true,
    }
}
