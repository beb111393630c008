//! Full feature phase of one connection (RFC 7143 §4.2, §11): reads PDUs, enforces the
//! command window, gathers write data (immediate, unsolicited, R2T-solicited), runs SCSI
//! commands on the blocking pool, handles task management, text, NOP and logout, and
//! pings idle initiators. Everything it sends goes through the writer task.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use iscsi_wire::lun::decode_lun;
use iscsi_wire::pdu::{self, LogoutReason, Request, ScsiCommand};
use iscsi_wire::text;
use parking_lot::Mutex;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::busy_poll::BusyPoll;
use crate::codec::{FrameError, PduCodec};
use crate::seq::CmdSnCheck;
use crate::server::ServerShared;
use crate::session::Session;
use crate::writer::{Out, Residual};

/// Reject reasons (RFC 7143 §11.17.1).
pub mod reject {
    pub const DATA_DIGEST: u8 = 0x02;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const NOT_SUPPORTED: u8 = 0x05;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_FIELD: u8 = 0x09;
}

/// Task management responses (§11.6.1).
mod tmf_rsp {
    pub const COMPLETE: u8 = 0;
    pub const NO_TASK: u8 = 1;
    pub const NO_LUN: u8 = 2;
    pub const NOT_SUPPORTED: u8 = 5;
    pub const REJECTED: u8 = 255;
}

/// Per-connection values fixed at the end of login.
#[derive(Debug, Clone)]
pub struct ConnParams {
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub first_burst: u32,
    pub max_burst: u32,
    pub max_outstanding_r2t: u32,
    /// Largest write we accept (bounds per-command memory).
    pub max_transfer: u32,
    pub max_send_data: u32,
    pub nop_interval: Duration,
    pub nop_timeout: Duration,
    /// See `FabricConfig::busy_poll`.
    pub busy_poll: Duration,
}

struct TaskEntry {
    lun: u64,
    aborted: Arc<AtomicBool>,
    /// On the blocking pool (removes itself when done); false while waiting for data.
    running: bool,
}

/// [`INLINE_SLOW_COUNT`] inline commands slower than [`INLINE_SLOW`] within
/// [`INLINE_SLOW_WINDOW`] send the connection's commands to the thread pool for
/// [`INLINE_BACKOFF`]. One slow command is not enough: on a busy machine a thread is
/// often preempted for a few milliseconds, and falling back to the pool for that
/// costs far more than it saves (buffered writes to one file serialize on its inode
/// lock, so pool threads mostly spin and sleep on it: 4K random writes at QD32 went
/// from ~90K to ~50K IOPS, and 16 sessions of 50/50 read/write from 164K to 27K).
const INLINE_SLOW: Duration = Duration::from_millis(2);
const INLINE_SLOW_COUNT: u32 = 8;
const INLINE_SLOW_WINDOW: Duration = Duration::from_secs(1);
const INLINE_BACKOFF: Duration = Duration::from_secs(2);

/// Free space kept in a connection's read buffer, so that one socket read can take
/// many PDUs at high queue depth.
const READ_ROOM: usize = 64 * 1024;

/// Execute one command. Its slot in the command window stays taken until the writer
/// hands the response to the socket (see `writer::encode`), so a client that stops
/// reading can make us hold at most `queue_depth` responses, not one per command it
/// keeps sending as earlier ones finish.
fn run_command(
    sess: &Session,
    stats: &crate::server::Stats,
    cmd: &ScsiCommand,
    data: &Bytes,
) -> Out {
    let resp = sess.luns.load().execute(&scsi_request(sess, cmd, data));
    command_out(stats, cmd, resp)
}

/// The SCSI core's view of a command.
fn scsi_request<'a>(sess: &'a Session, cmd: &'a ScsiCommand, data: &'a Bytes) -> scsi::Request<'a> {
    scsi::Request {
        lun: decode_lun(cmd.lun),
        cdb: &cmd.cdb,
        data_out: data,
        data_in_len: if cmd.read { cmd.edtl } else { 0 },
        nexus: &sess.nexus,
    }
}

/// A command's response as the writer sends it; it holds its window slot.
fn command_out(stats: &crate::server::Stats, cmd: &ScsiCommand, resp: scsi::Response) -> Out {
    stats.commands.fetch_add(1, Ordering::Relaxed);
    let mut out = response_out(cmd, resp);
    if let Out::Scsi { holds_slot, .. } = &mut out {
        *holds_slot = true;
    }
    out
}

type Reader = FramedRead<OwnedReadHalf, PduCodec>;
type Framed = Result<crate::codec::Frame, FrameError>;

/// A whole frame from what is already in the reader's buffer, if there is one.
/// Decoding is stateless (the codec holds only the negotiated settings), so a copy of
/// the codec decodes exactly as the reader would.
fn decode_buffered(reader: &mut Reader) -> Option<Framed> {
    use tokio_util::codec::Decoder;
    let mut codec = reader.decoder().clone();
    codec.decode(reader.read_buffer_mut()).transpose()
}

/// Poll the socket without blocking for up to `budget` until a whole frame has
/// arrived. `None`: nothing whole yet (what did arrive stays in the reader's buffer,
/// where the reader finds it), the peer closed, or an error the reader will see too.
fn poll_for_frame(reader: &mut Reader, budget: Duration) -> Option<Framed> {
    let start = Instant::now();
    let mut tmp = [0u8; 8192];
    while start.elapsed() < budget {
        let sock: &tokio::net::TcpStream = reader.get_ref().as_ref();
        match rustix::net::recv(sock, &mut tmp[..], rustix::net::RecvFlags::DONTWAIT) {
            Ok((0, _)) => return None,
            Ok((n, _)) => {
                reader.read_buffer_mut().extend_from_slice(&tmp[..n]);
                if let Some(f) = decode_buffered(reader) {
                    return Some(f);
                }
            }
            // Spinning, not sched_yield: measured, yielding between tries caught
            // fewer commands (17-24K IOPS at QD1 against 25-30K).
            Err(rustix::io::Errno::AGAIN) => std::hint::spin_loop(),
            Err(_) => return None,
        }
    }
    None
}

/// Free one command-window slot (a command that will send no response).
pub(crate) fn release_slot(sess: &Session) {
    let mut w = sess.window.lock();
    w.outstanding = w.outstanding.saturating_sub(1);
}

/// One R2T's data sequence (RFC 7143 §4.2.3 / §11.7.4): its own TTT, the range it
/// asked for, and the next DataSN and offset expected (DataPDUInOrder=Yes).
struct R2tSeq {
    ttt: u32,
    end: u32,
    next_offset: u32,
    next_sn: u32,
}

/// A write command waiting for its data.
struct WriteTask {
    cmd: ScsiCommand,
    buf: BytesMut,
    received: u32,
    /// Where the next R2T starts (solicited data follows the unsolicited burst).
    next_r2t_offset: u32,
    r2t_sn: u32,
    r2ts: Vec<R2tSeq>,
    /// The unsolicited sequence: end, next offset and DataSN expected.
    unsol_end: u32,
    unsol_offset: u32,
    unsol_sn: u32,
}

pub struct Conn {
    sess: Arc<Session>,
    server: Arc<ServerShared>,
    params: ConnParams,
    tx: mpsc::Sender<Out>,
    tasks: Arc<Mutex<HashMap<u32, TaskEntry>>>,
    writes: HashMap<u32, WriteTask>,
    /// Non-immediate commands received ahead of a CmdSN gap.
    held: BTreeMap<u32, (Request, [u8; 48])>,
    next_ttt: u32,
    text_pending: Option<(u32, Bytes)>,
    text_in: BytesMut,
    last_rx: Instant,
    ping_sent: Option<Instant>,
    /// Inline execution is allowed again from this instant (see [`Conn::execute`]).
    inline_after: Instant,
    /// Slow inline commands seen since `slow_since`.
    slow_count: u32,
    /// Whether to poll the socket while idle (see `busy_poll`).
    poll: BusyPoll,
    slow_since: Instant,
}

impl Conn {
    pub fn new(
        sess: Arc<Session>,
        server: Arc<ServerShared>,
        params: ConnParams,
        tx: mpsc::Sender<Out>,
    ) -> Conn {
        Conn {
            poll: BusyPoll::new(params.busy_poll),
            sess,
            server,
            params,
            tx,
            tasks: Arc::new(Mutex::new(HashMap::new())),
            writes: HashMap::new(),
            held: BTreeMap::new(),
            next_ttt: 1,
            text_pending: None,
            text_in: BytesMut::new(),
            last_rx: Instant::now(),
            ping_sent: None,
            inline_after: Instant::now(),
            slow_count: 0,
            slow_since: Instant::now(),
        }
    }

    /// Run until logout, error, or the session is ended from outside.
    pub async fn run(
        mut self,
        mut reader: FramedRead<OwnedReadHalf, PduCodec>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.params.nop_interval.min(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Busy polling (see `busy_poll`): a frame already buffered is taken at
            // once; otherwise, once the writer has had its turn and no command of
            // this session is running, the host's next command may be awaited by
            // polling the socket for a while instead of sleeping.
            let mut early = None;
            if self.poll.wanted() {
                if !reader.read_buffer().is_empty() {
                    early = decode_buffered(&mut reader);
                } else {
                    // Only here, at low queue depth: a yield per turn of the loop
                    // would cost a fifth of the IOPS at QD32 (fewer responses per
                    // socket write).
                    tokio::task::yield_now().await;
                    if self.sess.window.lock().outstanding == 0 {
                        if self.poll.idle(Instant::now()) {
                            early = poll_for_frame(&mut reader, self.poll.budget());
                            self.poll.polled(early.is_some());
                        }
                    } else {
                        self.poll.busy();
                    }
                }
            }
            // Room for many PDUs per socket read: the codec reserves only what the
            // frame it is decoding still needs, so with 4K writes a read would
            // otherwise take about one PDU.
            let buf = reader.read_buffer_mut();
            if buf.capacity() - buf.len() < READ_ROOM / 4 {
                buf.reserve(READ_ROOM);
            }
            let f = match early {
                // A frame taken without the select below: check its other arms, so
                // that a session ended from outside does not go on while the host
                // keeps the connection busy.
                Some(_)
                    if self.sess.kill.is_cancelled()
                        || self.sess.conn_closed.is_cancelled()
                        || shutdown.is_cancelled() =>
                {
                    break
                }
                Some(f) => Some(f),
                None => tokio::select! {
                    _ = self.sess.kill.cancelled() => break,
                    _ = self.sess.conn_closed.cancelled() => break,
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        if !self.idle_check().await { break; }
                        continue;
                    }
                    f = reader.next() => f,
                },
            };
            self.last_rx = Instant::now();
            self.poll.arrived(self.last_rx);
            self.ping_sent = None;
            match f {
                None => break,
                Some(Ok(frame)) if frame.data_digest_error => {
                    // §7.8: at ERL 0 the PDU is discarded and rejected; the
                    // framing is intact, so the connection carries on.
                    self.send(Out::Reject {
                        reason: reject::DATA_DIGEST,
                        header: Box::new(frame.bhs),
                    })
                    .await;
                }
                Some(Ok(frame)) => match pdu::parse_request(&frame.bhs, &frame.ahs, frame.data) {
                    Ok(req) => {
                        if !self.handle(req, frame.bhs).await {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "malformed PDU");
                        let reason = match e.reject_reason() {
                            Some(r) => r,
                            None => reject::PROTOCOL_ERROR,
                        };
                        self.send(Out::Reject {
                            reason,
                            header: Box::new(frame.bhs),
                        })
                        .await;
                    }
                },
                Some(Err(FrameError::DataTooLong { len, max, bhs })) => {
                    tracing::warn!(
                        len,
                        max,
                        "data segment over MaxRecvDataSegmentLength; closing connection"
                    );
                    self.send(Out::Reject {
                        reason: reject::PROTOCOL_ERROR,
                        header: bhs,
                    })
                    .await;
                    break;
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "connection read failed; closing");
                    break;
                }
            }
        }
        self.finish().await;
    }

    /// Wait (bounded) for running commands, then close the writer.
    async fn finish(&mut self) {
        self.free_slots(self.writes.len());
        self.writes.clear();
        for _ in 0..3000 {
            if self.tasks.lock().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Bounded: if the writer is stuck behind a client that stopped reading, it
        // gives up on its own (WriterParams::stall_timeout) and the channel closes.
        let _ = tokio::time::timeout(self.params.nop_timeout, self.tx.send(Out::Close)).await;
        self.sess.luns.load().nexus_gone(&self.sess.nexus);
    }

    async fn send(&self, out: Out) {
        let _ = self.tx.send(out).await;
    }

    /// NOP-In pings for idle connections; false when the initiator stopped answering.
    async fn idle_check(&mut self) -> bool {
        let now = Instant::now();
        if let Some(sent) = self.ping_sent {
            if now.duration_since(sent) > self.params.nop_timeout {
                tracing::warn!(session = ?self.sess.key, "initiator did not answer NOP-In; dropping connection");
                return false;
            }
        } else if now.duration_since(self.last_rx) >= self.params.nop_interval {
            let ttt = self.alloc_ttt();
            self.ping_sent = Some(now);
            self.send(Out::NopIn {
                itt: 0xffff_ffff,
                ttt,
                lun: 0,
                data: Bytes::new(),
            })
            .await;
        }
        true
    }

    fn alloc_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == 0xffff_ffff {
            self.next_ttt = 1;
        }
        t
    }

    /// Handle one request; false to close the connection.
    async fn handle(&mut self, req: Request, hdr: [u8; 48]) -> bool {
        match req {
            Request::DataOut(d) => self.data_out(d, hdr).await,
            Request::NopOut(n) => {
                if n.itt != 0xffff_ffff {
                    // A ping: numbered like a command if not immediate.
                    if !n.immediate && !self.accept_cmd_sn(n.cmd_sn) {
                        return true;
                    }
                    self.send(Out::NopIn {
                        itt: n.itt,
                        ttt: 0xffff_ffff,
                        lun: n.lun,
                        data: n.data,
                    })
                    .await;
                }
                true
            }
            Request::Login(_) => {
                // §6.3: a Login request in full feature phase is a protocol error.
                tracing::debug!("login PDU in full feature phase");
                self.send(Out::Reject {
                    reason: reject::PROTOCOL_ERROR,
                    header: Box::new(hdr),
                })
                .await;
                false
            }
            other => self.ordered(other, hdr).await,
        }
    }

    /// Commands numbered by CmdSN: check the window, deliver in order.
    async fn ordered(&mut self, req: Request, hdr: [u8; 48]) -> bool {
        let Some((cmd_sn, immediate)) = cmd_sn_of(&req) else {
            self.send(Out::Reject {
                reason: reject::NOT_SUPPORTED,
                header: Box::new(hdr),
            })
            .await;
            return true;
        };
        if immediate {
            return self.deliver(req, hdr).await;
        }
        let check = {
            let mut w = self.sess.window.lock();
            let check = w.check(cmd_sn);
            if check == CmdSnCheck::InOrder {
                w.exp_cmd_sn = w.exp_cmd_sn.wrapping_add(1);
            }
            check
        };
        match check {
            CmdSnCheck::Outside => {
                tracing::debug!(
                    cmd_sn,
                    "CmdSN outside the window; ignored (RFC 7143 §4.2.2.1)"
                );
                true
            }
            CmdSnCheck::Ahead => {
                // Inside the window, so at most `queue_depth` of these can exist; a
                // duplicate CmdSN is a protocol error.
                if self.held.insert(cmd_sn, (req, hdr)).is_some() {
                    tracing::warn!(cmd_sn, "CmdSN used twice; dropping the connection");
                    return false;
                }
                true
            }
            CmdSnCheck::InOrder => {
                if !self.deliver(req, hdr).await {
                    return false;
                }
                // Release anything that was waiting for this gap.
                while !self.held.is_empty() {
                    let exp = self.sess.window.lock().exp_cmd_sn;
                    let Some((next, h)) = self.held.remove(&exp) else {
                        break;
                    };
                    self.advance_cmd_sn();
                    if !self.deliver(next, h).await {
                        return false;
                    }
                }
                true
            }
        }
    }

    fn accept_cmd_sn(&mut self, cmd_sn: u32) -> bool {
        let check = self.sess.window.lock().check(cmd_sn);
        if check == CmdSnCheck::InOrder {
            let mut w = self.sess.window.lock();
            w.exp_cmd_sn = w.exp_cmd_sn.wrapping_add(1);
        }
        check != CmdSnCheck::Outside
    }

    fn advance_cmd_sn(&self) {
        let mut w = self.sess.window.lock();
        w.exp_cmd_sn = w.exp_cmd_sn.wrapping_add(1);
    }

    async fn deliver(&mut self, req: Request, hdr: [u8; 48]) -> bool {
        match req {
            Request::ScsiCommand(cmd) => {
                self.scsi_command(cmd, hdr).await;
                true
            }
            Request::TaskMgmt(t) => {
                self.task_mgmt(t).await;
                true
            }
            Request::Text(t) => {
                self.text(t, hdr).await;
                true
            }
            Request::Logout(l) => {
                self.logout(l).await;
                false
            }
            _ => {
                self.send(Out::Reject {
                    reason: reject::NOT_SUPPORTED,
                    header: Box::new(hdr),
                })
                .await;
                true
            }
        }
    }

    async fn scsi_command(&mut self, cmd: ScsiCommand, hdr: [u8; 48]) {
        if self.sess.is_discovery() {
            self.send(Out::Reject {
                reason: reject::PROTOCOL_ERROR,
                header: Box::new(hdr),
            })
            .await;
            return;
        }
        if self.tasks.lock().contains_key(&cmd.itt) || self.writes.contains_key(&cmd.itt) {
            self.send(Out::Reject {
                reason: reject::TASK_IN_PROGRESS,
                header: Box::new(hdr),
            })
            .await;
            return;
        }
        let imm_len = cmd.data.len() as u32;
        if !cmd.write && imm_len > 0 {
            self.send(Out::Reject {
                reason: reject::PROTOCOL_ERROR,
                header: Box::new(hdr),
            })
            .await;
            return;
        }
        if cmd.write && cmd.edtl > 0 {
            if imm_len > 0 && !self.params.immediate_data
                || imm_len > self.params.first_burst
                || imm_len > cmd.edtl
            {
                self.send(Out::Reject {
                    reason: reject::PROTOCOL_ERROR,
                    header: Box::new(hdr),
                })
                .await;
                return;
            }
            if cmd.edtl > self.params.max_transfer {
                // Too large to buffer: refuse before any data is solicited.
                self.complete_now(
                    &cmd,
                    scsi::Response::check_condition(scsi::Sense::invalid_field_in_cdb(0, None)),
                )
                .await;
                return;
            }
            self.take_slot();
            self.start_write(cmd).await;
            return;
        }
        self.take_slot();
        self.execute(cmd, Bytes::new());
    }

    /// A command now occupies the window until it completes (see `seq::CmdWindow`).
    fn take_slot(&mut self) {
        let outstanding = {
            let mut w = self.sess.window.lock();
            w.outstanding += 1;
            w.outstanding
        };
        self.poll.command(outstanding);
    }

    /// `n` commands left without completing (aborted or dropped while waiting for data).
    fn free_slots(&self, n: usize) {
        let mut w = self.sess.window.lock();
        w.outstanding = w.outstanding.saturating_sub(n as u32);
    }

    async fn start_write(&mut self, mut cmd: ScsiCommand) {
        let edtl = cmd.edtl;
        if cmd.data.len() as u32 == edtl {
            // All the data came as immediate data (the common small write): hand the
            // received segment on as it is, no gather buffer and no copy.
            let data = std::mem::take(&mut cmd.data);
            self.execute(cmd, data);
            return;
        }
        let mut buf = BytesMut::zeroed(edtl as usize);
        let imm = cmd.data.len() as u32;
        buf[..imm as usize].copy_from_slice(&cmd.data);
        // Unsolicited data may follow up to FirstBurstLength when InitialR2T=No, unless
        // the command's F bit says no Data-Out follows.
        let unsol_end = if self.params.initial_r2t || cmd.final_bit {
            imm
        } else {
            self.params.first_burst.min(edtl).max(imm)
        };
        let mut w = WriteTask {
            cmd,
            buf,
            received: imm,
            next_r2t_offset: unsol_end,
            r2t_sn: 0,
            r2ts: Vec::new(),
            unsol_end,
            unsol_offset: imm,
            unsol_sn: 0,
        };
        if w.received >= edtl {
            let data = w.buf.freeze();
            self.execute(w.cmd, data);
            return;
        }
        self.issue_r2ts(&mut w).await;
        let itt = w.cmd.itt;
        self.tasks.lock().insert(
            itt,
            TaskEntry {
                lun: decode_lun(w.cmd.lun),
                aborted: Arc::new(AtomicBool::new(false)),
                running: false,
            },
        );
        self.writes.insert(itt, w);
    }

    async fn issue_r2ts(&mut self, w: &mut WriteTask) {
        let edtl = w.cmd.edtl;
        while (w.r2ts.len() as u32) < self.params.max_outstanding_r2t && w.next_r2t_offset < edtl {
            let len = (edtl - w.next_r2t_offset).min(self.params.max_burst);
            let ttt = self.alloc_ttt();
            self.send(Out::R2t {
                itt: w.cmd.itt,
                lun: w.cmd.lun,
                ttt,
                r2t_sn: w.r2t_sn,
                offset: w.next_r2t_offset,
                len,
            })
            .await;
            w.r2ts.push(R2tSeq {
                ttt,
                end: w.next_r2t_offset + len,
                next_offset: w.next_r2t_offset,
                next_sn: 0,
            });
            w.r2t_sn += 1;
            w.next_r2t_offset += len;
        }
    }

    /// Gather one Data-Out PDU. Data that breaks the sequence rules (wrong DataSN,
    /// offset or TTT, or beyond what was asked for) is a protocol error: at ERL 0
    /// the connection is dropped (§7.1.4). Returns false to close.
    async fn data_out(&mut self, d: pdu::DataOut, hdr: [u8; 48]) -> bool {
        let Some(mut w) = self.writes.remove(&d.itt) else {
            // Data for an aborted or finished task is discarded (§11.7).
            tracing::debug!(itt = d.itt, "Data-Out for no pending write; discarded");
            return true;
        };
        let off = d.buffer_offset;
        let len = d.data.len() as u32;
        let Some(end) = off.checked_add(len) else {
            return self.data_out_error(hdr, "offset overflow").await;
        };
        let mut seq_done = false;
        if d.ttt == 0xffff_ffff {
            if d.data_sn != w.unsol_sn || off != w.unsol_offset || end > w.unsol_end {
                return self
                    .data_out_error(hdr, "unsolicited Data-Out out of sequence")
                    .await;
            }
            w.unsol_sn += 1;
            w.unsol_offset = end;
        } else {
            let Some(i) = w.r2ts.iter().position(|r| r.ttt == d.ttt) else {
                return self.data_out_error(hdr, "Data-Out with unknown TTT").await;
            };
            let r = &mut w.r2ts[i];
            if d.data_sn != r.next_sn || off != r.next_offset || end > r.end {
                return self
                    .data_out_error(hdr, "solicited Data-Out out of sequence")
                    .await;
            }
            r.next_sn += 1;
            r.next_offset = end;
            if d.final_bit {
                if r.next_offset != r.end {
                    return self
                        .data_out_error(hdr, "R2T sequence ended before all data arrived")
                        .await;
                }
                w.r2ts.remove(i);
                seq_done = true;
            }
        }
        w.buf[off as usize..end as usize].copy_from_slice(&d.data);
        w.received += len;
        if w.received >= w.cmd.edtl {
            self.tasks.lock().remove(&d.itt);
            let data = w.buf.freeze();
            self.execute(w.cmd, data);
        } else {
            if seq_done {
                self.issue_r2ts(&mut w).await;
            }
            self.writes.insert(d.itt, w);
        }
        true
    }

    async fn data_out_error(&mut self, hdr: [u8; 48], why: &str) -> bool {
        tracing::warn!(session = ?self.sess.key, "{why}; dropping the connection");
        self.send(Out::Reject {
            reason: reject::PROTOCOL_ERROR,
            header: Box::new(hdr),
        })
        .await;
        false
    }

    /// Run a SCSI command; its response goes to the writer. Plain reads and cached
    /// writes on stores that never sleep long run inline on this task (no thread
    /// hand-off: about 3x the IOPS); everything else runs on the blocking pool. If
    /// inline commands keep turning out slow (the page cache misses, the disk is
    /// busy), this connection sends everything to the pool for a while.
    fn execute(&mut self, cmd: ScsiCommand, data: Bytes) {
        let lun = decode_lun(cmd.lun);
        let inline =
            Instant::now() >= self.inline_after && self.sess.luns.load().inline_ok(lun, &cmd.cdb);
        if inline {
            // The command runs to completion right here, so no task management
            // request can see it meanwhile: it needs no task entry or abort flag
            // unless its response has to wait for the writer.
            let start = Instant::now();
            let out = run_command(&self.sess, &self.server.stats, &cmd, &data);
            let elapsed = start.elapsed();
            if elapsed > INLINE_SLOW {
                let now = Instant::now();
                if now.duration_since(self.slow_since) > INLINE_SLOW_WINDOW {
                    self.slow_since = now;
                    self.slow_count = 0;
                }
                self.slow_count += 1;
                if self.slow_count >= INLINE_SLOW_COUNT {
                    tracing::debug!(
                        ?elapsed,
                        "inline commands are slow; using the thread pool for a while"
                    );
                    self.inline_after = now + INLINE_BACKOFF;
                    self.slow_count = 0;
                }
            }
            self.queue_response(cmd.itt, lun, out);
            return;
        }
        let started = self
            .sess
            .luns
            .load()
            .start(&scsi_request(&self.sess, &cmd, &data), &data);
        // What runs on the blocking pool: the whole command, or the rest of one the
        // SCSI core admitted but could not start as a future.
        let finish = match started {
            scsi::Started::NotAsync => None,
            scsi::Started::Blocking(finish) => Some(finish),
            scsi::Started::Done(resp) => {
                let out = command_out(&self.server.stats, &cmd, resp);
                self.queue_response(cmd.itt, lun, out);
                return;
            }
            scsi::Started::Running(io) => {
                // Runs on the event loop: the back-end's answer wakes it, no thread
                // waits for it.
                let aborted = self.track(cmd.itt, lun);
                let (tx, tasks) = (self.tx.clone(), self.tasks.clone());
                let (sess, stats) = (self.sess.clone(), self.server.stats.clone());
                tokio::spawn(async move {
                    let out = command_out(&stats, &cmd, io.await);
                    if aborted.load(Ordering::Acquire) {
                        release_slot(&sess);
                    } else {
                        let _ = tx.send(out).await;
                    }
                    tasks.lock().remove(&cmd.itt);
                });
                return;
            }
        };
        let aborted = self.track(cmd.itt, lun);
        let (tx, tasks) = (self.tx.clone(), self.tasks.clone());
        let (sess, stats) = (self.sess.clone(), self.server.stats.clone());
        tokio::task::spawn_blocking(move || {
            let resp = match finish {
                Some(finish) => finish(),
                None => sess.luns.load().execute(&scsi_request(&sess, &cmd, &data)),
            };
            let out = command_out(&stats, &cmd, resp);
            // An aborted task sends no response; its window slot is freed here.
            if aborted.load(Ordering::Acquire) {
                release_slot(&sess);
            } else {
                let _ = tx.blocking_send(out);
            }
            // Removed only after the response is queued, so a Logout or TMF
            // response that waits for the task set to drain comes after it.
            tasks.lock().remove(&cmd.itt);
        });
    }

    /// Register a running command for task management; returns its abort flag.
    fn track(&self, itt: u32, lun: u64) -> Arc<AtomicBool> {
        let aborted = Arc::new(AtomicBool::new(false));
        self.tasks.lock().insert(
            itt,
            TaskEntry {
                lun,
                aborted: aborted.clone(),
                running: true,
            },
        );
        aborted
    }

    /// Queue a response computed on this task without blocking the loop.
    fn queue_response(&self, itt: u32, lun: u64, out: Out) {
        match self.tx.try_send(out) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(out)) => {
                // The writer is behind (a slow reader): queue without blocking
                // this loop; the response keeps its place after the send. Until
                // it is queued the task is visible to task management.
                let aborted = self.track(itt, lun);
                let tx = self.tx.clone();
                let tasks = self.tasks.clone();
                let sess = self.sess.clone();
                tokio::spawn(async move {
                    if aborted.load(Ordering::Acquire) {
                        release_slot(&sess);
                    } else {
                        let _ = tx.send(out).await;
                    }
                    tasks.lock().remove(&itt);
                });
            }
        }
    }

    async fn complete_now(&self, cmd: &ScsiCommand, resp: scsi::Response) {
        let out = response_out(cmd, resp);
        self.send(out).await;
    }

    async fn task_mgmt(&mut self, t: pdu::TaskMgmt) {
        use iscsi_wire::pdu::TmfFunction as F;
        if self.sess.is_discovery() {
            self.send(Out::TaskMgmt {
                itt: t.itt,
                response: tmf_rsp::REJECTED,
            })
            .await;
            return;
        }
        let response = match t.function {
            F::AbortTask => {
                let found = self.abort_where(|itt, _| itt == t.rtt);
                if found == 0 {
                    tmf_rsp::NO_TASK
                } else {
                    tmf_rsp::COMPLETE
                }
            }
            F::AbortTaskSet | F::ClearTaskSet => {
                if self.sess.luns.load().get(decode_lun(t.lun)).is_none() {
                    tmf_rsp::NO_LUN
                } else {
                    let lun = decode_lun(t.lun);
                    self.abort_where(|_, l| l == lun);
                    tmf_rsp::COMPLETE
                }
            }
            F::LogicalUnitReset => {
                let lun = decode_lun(t.lun);
                if self.sess.luns.load().get(lun).is_none() {
                    tmf_rsp::NO_LUN
                } else {
                    self.abort_where(|_, l| l == lun);
                    self.wait_tasks_gone().await;
                    match self.sess.luns.load().lun_reset(lun, &self.sess.nexus) {
                        Ok(()) => tmf_rsp::COMPLETE,
                        Err(()) => tmf_rsp::NO_LUN,
                    }
                }
            }
            F::TargetWarmReset | F::TargetColdReset => {
                self.abort_where(|_, _| true);
                self.wait_tasks_gone().await;
                self.sess.luns.load().target_reset(&self.sess.nexus);
                if let Some(t) = &self.sess.target {
                    self.server.reset_target(&t.name, self.sess.tsih);
                }
                tmf_rsp::COMPLETE
            }
            F::ClearAca | F::TaskReassign | F::Other(_) => tmf_rsp::NOT_SUPPORTED,
        };
        self.wait_tasks_gone().await;
        self.send(Out::TaskMgmt {
            itt: t.itt,
            response,
        })
        .await;
        if matches!(t.function, F::TargetColdReset) {
            // A cold reset also ends the connection (§11.5.1).
            self.sess.kill.cancel();
        }
    }

    /// Mark matching tasks aborted (their responses are suppressed); returns how many.
    fn abort_where(&mut self, f: impl Fn(u32, u64) -> bool) -> usize {
        let mut n = 0;
        let mut tasks = self.tasks.lock();
        tasks.retain(|itt, e| {
            if !f(*itt, e.lun) {
                return true;
            }
            n += 1;
            e.aborted.store(true, Ordering::Release);
            // A running task removes itself when it finishes (its response is
            // suppressed); one still waiting for data is simply dropped.
            e.running
        });
        drop(tasks);
        let before = self.writes.len();
        self.writes.retain(|itt, w| !f(*itt, decode_lun(w.cmd.lun)));
        self.free_slots(before - self.writes.len());
        n
    }

    async fn wait_tasks_gone(&self) {
        for _ in 0..3000 {
            let busy = self
                .tasks
                .lock()
                .values()
                .any(|e| e.aborted.load(Ordering::Acquire));
            if !busy {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn text(&mut self, t: pdu::TextRequest, hdr: [u8; 48]) {
        // Continuation of a long response we split earlier.
        if t.ttt != 0xffff_ffff {
            if let Some((ttt, rest)) = self.text_pending.take() {
                if ttt == t.ttt {
                    self.send_text_chunked(t.itt, rest).await;
                    return;
                }
            }
            self.send(Out::Reject {
                reason: reject::INVALID_FIELD,
                header: Box::new(hdr),
            })
            .await;
            return;
        }
        if self.text_in.len() + t.data.len() > 64 * 1024 {
            self.text_in.clear();
            self.send(Out::Reject {
                reason: reject::PROTOCOL_ERROR,
                header: Box::new(hdr),
            })
            .await;
            return;
        }
        self.text_in.extend_from_slice(&t.data);
        if t.cont {
            // More request data follows: answer with an empty response (§11.10.2).
            let ttt = self.alloc_ttt();
            self.send(Out::Text {
                itt: t.itt,
                ttt,
                final_: false,
                cont: false,
                data: Bytes::new(),
            })
            .await;
            return;
        }
        let data = std::mem::take(&mut self.text_in);
        let keys = match text::parse(&data) {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!(error = %e, "bad text request");
                self.send(Out::Reject {
                    reason: reject::PROTOCOL_ERROR,
                    header: Box::new(hdr),
                })
                .await;
                return;
            }
        };
        let mut resp = Vec::new();
        for (k, v) in keys {
            if k == "SendTargets" {
                let target = self.sess.target.as_ref().map(|t| t.name.clone());
                self.server.send_targets(
                    &v,
                    &self.sess.key.initiator,
                    target.as_deref(),
                    self.sess.local_addr,
                    &mut resp,
                );
            } else {
                // Operational keys cannot change in full feature phase at ERL 0 with
                // one connection; report them as not understood or irrelevant.
                resp.push((k, "Irrelevant".to_string()));
            }
        }
        let bytes = text::encode(&resp);
        self.send_text_chunked(t.itt, Bytes::from(bytes)).await;
    }

    async fn send_text_chunked(&mut self, itt: u32, data: Bytes) {
        let max = self.params.max_send_data as usize;
        if data.len() <= max {
            self.send(Out::Text {
                itt,
                ttt: 0xffff_ffff,
                final_: true,
                cont: false,
                data,
            })
            .await;
        } else {
            let ttt = self.alloc_ttt();
            let head = data.slice(..max);
            self.text_pending = Some((ttt, data.slice(max..)));
            self.send(Out::Text {
                itt,
                ttt,
                final_: false,
                cont: true,
                data: head,
            })
            .await;
        }
    }

    async fn logout(&mut self, l: pdu::LogoutRequest) {
        // 0: close the session, 1: close this connection, 2: recovery (ERL 2 only).
        let response = match l.reason {
            LogoutReason::CloseSession | LogoutReason::CloseConnection => 0,
            LogoutReason::RemoveConnectionForRecovery => 2,
        };
        self.free_slots(self.writes.len());
        self.writes.clear();
        for _ in 0..3000 {
            if self.tasks.lock().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if response == 0 {
            // The session ends: a cluster commits its SPC-2 releases before the
            // Logout completes, so the initiator may reserve through another node next.
            let luns = self.sess.luns.load_full();
            let nexus = self.sess.nexus.clone();
            let _ = tokio::task::spawn_blocking(move || luns.release_nexus_blocking(&nexus)).await;
        }
        self.send(Out::Logout {
            itt: l.itt,
            response,
        })
        .await;
    }
}

/// Turn a SCSI core response into what the writer sends, with residuals (§11.4.5).
fn response_out(cmd: &ScsiCommand, resp: scsi::Response) -> Out {
    let edtl = cmd.edtl;
    let status = resp.status.code();
    let sense = resp.sense.is_some().then(|| resp.sense_bytes());
    let mut residual = Residual::None;
    let mut data = None;
    if !resp.data_in.is_empty() || cmd.read {
        let n = resp.data_in.len() as u32;
        let send = if cmd.read { n.min(edtl) } else { 0 };
        if n < edtl {
            residual = Residual::Underflow(edtl - n);
        } else if n > send {
            residual = Residual::Overflow(n - send);
        }
        if send > 0 {
            let mut v = resp.data_in;
            v.truncate(send as usize);
            data = Some(Bytes::from(v));
        }
    } else if cmd.write || resp.data_out_len > 0 {
        let want = resp.data_out_len;
        if want > edtl {
            residual = Residual::Overflow(want - edtl);
        } else if want < edtl {
            residual = Residual::Underflow(edtl - want);
        }
    } else if edtl > 0 {
        residual = Residual::Underflow(edtl);
    }
    Out::Scsi {
        itt: cmd.itt,
        lun: cmd.lun,
        status,
        sense,
        residual,
        data,
        holds_slot: false,
    }
}

/// CmdSN and the immediate bit of a numbered request; `None` for unnumbered ones.
fn cmd_sn_of(req: &Request) -> Option<(u32, bool)> {
    match req {
        Request::ScsiCommand(c) => Some((c.cmd_sn, c.immediate)),
        Request::TaskMgmt(t) => Some((t.cmd_sn, t.immediate)),
        Request::Text(t) => Some((t.cmd_sn, t.immediate)),
        Request::Logout(l) => Some((l.cmd_sn, l.immediate)),
        _ => None,
    }
}
