//! One iSCSI session with one connection (ErrorRecoveryLevel 0), initiator side.
//!
//! After login, one reader task and one writer task own the socket halves. Callers of
//! [`Session::execute`] are multiplexed by Initiator Task Tag:
//!
//! - a semaphore bounds the commands in flight (the configured queue depth);
//! - CmdSN is assigned and the command PDU queued to the writer under one lock, so
//!   commands leave in CmdSN order; a command whose CmdSN would pass MaxCmdSN waits
//!   (FIFO) until the target opens the window (RFC 7143 §3.2.2.1);
//! - write data goes as immediate data, unsolicited Data-Out up to FirstBurstLength
//!   (when InitialR2T=No) and Data-Out answering each R2T, every PDU at most the
//!   target's MaxRecvDataSegmentLength, DataSN counted per sequence, F on the last
//!   PDU of each sequence (§11.7);
//! - the reader collects Data-In by offset (no copy: the segments are slices of the
//!   received frames), and completes a command on the status in the final Data-In or
//!   the SCSI Response;
//! - the reader answers the target's NOP-In pings and sends our own NOP-Out when the
//!   connection is idle;
//! - a command that times out is aborted with ABORT TASK; if that fails too, the
//!   connection is dropped.
//!
//! At ErrorRecoveryLevel 0 any protocol or digest error ends the connection and with
//! it the session; every command in flight then fails with
//! [`InitiatorError::ConnectionLost`]. [`crate::Client`] logs in again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use iscsi_wire::lun::try_encode_lun;
use iscsi_wire::pdu::{
    self, async_event, reject_reason, tmf_response, CdbBuf, DataIn, DataOut, LogoutReason,
    LogoutRequest, NopOut, Request, Residual, Response, ScsiCommand, TaskAttr, TaskMgmtRequest,
    TmFunction, RESERVED_TAG,
};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{random_isid, InitiatorConfig};
use crate::error::{InitiatorError, LoginError, MAX_REDIRECTS};
use crate::login::{self, LoggedIn, LoginOutcome, NegotiatedParams};
use crate::outcome::ScsiOutcome;

/// `a < b` in 32-bit serial arithmetic (RFC 1982).
fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

/// The socket write buffer is flushed once it holds this much.
const WRITE_BATCH: usize = 512 * 1024;

/// A logged-in session. Cheap to clone; the connection closes when the last clone is
/// dropped (without a Logout: call [`Session::logout`] for an orderly end).
#[derive(Clone)]
pub struct Session {
    handle: Arc<Handle>,
}

/// Dropping the last handle ends the connection.
struct Handle {
    inner: Arc<Inner>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.fail_all("session handle dropped".into(), true);
    }
}

struct Inner {
    cfg: Arc<InitiatorConfig>,
    portal: SocketAddr,
    isid: [u8; 6],
    tsih: u16,
    params: NegotiatedParams,
    target_alias: Option<String>,
    state: Mutex<State>,
    out: mpsc::UnboundedSender<Request>,
    /// Woken when MaxCmdSN moves or the session dies.
    window: Notify,
    /// Keeps CmdSN assignment FIFO among callers waiting for the window.
    issue: tokio::sync::Mutex<()>,
    /// Queue depth.
    slots: Semaphore,
    depth: usize,
    /// Cancelled when the connection is gone.
    closed: CancellationToken,
}

struct State {
    /// CmdSN of the next non-immediate command.
    cmd_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    exp_stat_sn: u32,
    next_itt: u32,
    tasks: HashMap<u32, Task>,
    /// Why the session ended; `Some` once it has.
    dead: Option<Ended>,
}

#[derive(Clone)]
struct Ended {
    why: String,
    /// Ended by us (logout, drop) rather than by a failure.
    orderly: bool,
}

enum Task {
    Scsi(ScsiTask),
    Tmf(oneshot::Sender<u8>),
    Logout(oneshot::Sender<u8>),
    /// Our keepalive NOP-Out.
    Ping,
}

struct ScsiTask {
    lun: u64,
    cmd_sn: u32,
    data_out: Bytes,
    read_len: u32,
    /// Data-In segments by offset.
    segments: Vec<(u32, Bytes)>,
    next_data_sn: u32,
    done: Option<oneshot::Sender<Result<Completion, InitiatorError>>>,
}

/// What the reader hands back to the caller; assembled into a [`ScsiOutcome`] outside
/// the session lock.
struct Completion {
    status: u8,
    sense: Bytes,
    residual: Residual,
    segments: Vec<(u32, Bytes)>,
}

impl Completion {
    fn into_outcome(self) -> ScsiOutcome {
        let data = assemble(self.segments);
        ScsiOutcome {
            status: self.status,
            sense: self.sense,
            data,
            residual: self.residual,
        }
    }
}

/// Joins Data-In segments; a single segment at offset 0 is returned without a copy.
fn assemble(mut segments: Vec<(u32, Bytes)>) -> Bytes {
    match segments.len() {
        0 => Bytes::new(),
        1 if segments[0].0 == 0 => segments.pop().map(|(_, b)| b).unwrap_or_default(),
        _ => {
            let end = segments
                .iter()
                .map(|(o, b)| *o as usize + b.len())
                .max()
                .unwrap_or(0);
            let mut out = BytesMut::zeroed(end);
            for (o, b) in &segments {
                out[*o as usize..*o as usize + b.len()].copy_from_slice(b);
            }
            out.freeze()
        }
    }
}

impl Session {
    /// Connects to `cfg.portal` and logs in (following "target moved" redirects),
    /// with `cfg.isid` or a random ISID.
    pub async fn connect(cfg: InitiatorConfig) -> Result<Session, InitiatorError> {
        let isid = cfg.isid.unwrap_or_else(|| random_isid(0));
        Session::connect_with_isid(Arc::new(cfg), isid).await
    }

    /// Connects with a given ISID. Logging in with the ISID of a session the target
    /// still holds reinstates it: the target ends the old one (RFC 7143 §6.3.5).
    pub async fn connect_with_isid(
        cfg: Arc<InitiatorConfig>,
        isid: [u8; 6],
    ) -> Result<Session, InitiatorError> {
        let mut portal = cfg.portal;
        for _ in 0..=MAX_REDIRECTS {
            let stream =
                match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(portal)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        return Err(InitiatorError::Io {
                            portal,
                            what: "connecting",
                            kind: e.kind(),
                        })
                    }
                    Err(_) => {
                        return Err(InitiatorError::PhaseTimeout {
                            portal,
                            what: "TCP connect",
                            after: cfg.connect_timeout,
                        })
                    }
                };
            let _ = stream.set_nodelay(true);
            let outcome =
                tokio::time::timeout(cfg.login_timeout, login::login(&cfg, portal, stream, isid))
                    .await
                    .map_err(|_| InitiatorError::PhaseTimeout {
                        portal,
                        what: "login",
                        after: cfg.login_timeout,
                    })??;
            match outcome {
                LoginOutcome::Done(l) => return Ok(Session::start(cfg, portal, isid, *l)),
                LoginOutcome::Redirect(to) => portal = to,
            }
        }
        Err(LoginError::TooManyRedirects {
            target: cfg.target_name.clone(),
        }
        .into())
    }

    fn start(cfg: Arc<InitiatorConfig>, portal: SocketAddr, isid: [u8; 6], l: LoggedIn) -> Session {
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let depth = cfg.queue_depth.max(1);
        let inner = Arc::new(Inner {
            cfg,
            portal,
            isid,
            tsih: l.tsih,
            params: l.params,
            target_alias: l.target_alias,
            state: Mutex::new(State {
                cmd_sn: l.cmd_sn,
                exp_cmd_sn: l.exp_cmd_sn,
                max_cmd_sn: l.max_cmd_sn,
                exp_stat_sn: l.exp_stat_sn,
                next_itt: 1,
                tasks: HashMap::new(),
                dead: None,
            }),
            out: out_tx,
            window: Notify::new(),
            issue: tokio::sync::Mutex::new(()),
            slots: Semaphore::new(depth),
            depth,
            closed: CancellationToken::new(),
        });
        tracing::info!(
            target = %inner.cfg.target_name,
            %portal,
            tsih = l.tsih,
            params = ?l.params,
            "logged in"
        );
        let (rd, wr) = l.stream.into_split();
        tokio::spawn(writer(inner.clone(), wr, out_rx));
        tokio::spawn(reader(inner.clone(), rd, l.leftover));
        Session {
            handle: Arc::new(Handle { inner }),
        }
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.handle.inner
    }

    /// The operational values in force.
    pub fn params(&self) -> NegotiatedParams {
        self.inner().params
    }

    /// The target's name as configured.
    pub fn target_name(&self) -> &str {
        &self.inner().cfg.target_name
    }

    /// The portal this session is connected to (after redirects).
    pub fn portal(&self) -> SocketAddr {
        self.inner().portal
    }

    pub fn isid(&self) -> [u8; 6] {
        self.inner().isid
    }

    /// The Target Session Identifying Handle the target assigned.
    pub fn tsih(&self) -> u16 {
        self.inner().tsih
    }

    pub fn target_alias(&self) -> Option<&str> {
        self.inner().target_alias.as_deref()
    }

    /// True once the connection is gone (failure, logout or drop).
    pub fn is_closed(&self) -> bool {
        self.inner().closed.is_cancelled()
    }

    /// Resolves when the connection is gone.
    pub async fn closed(&self) {
        self.inner().closed.cancelled().await
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<String> {
        self.inner()
            .state
            .lock()
            .dead
            .as_ref()
            .map(|e| e.why.clone())
    }

    /// Drops the connection without a Logout (commands in flight fail).
    pub fn abort_connection(&self, why: &str) {
        self.inner().fail_all(why.to_string(), false);
    }

    /// Runs one SCSI command on `lun`. `data_out` is the write data (empty for none);
    /// `read_len` the Data-In buffer size (0 for none); bidirectional commands are not
    /// supported. The command is aborted after `timeout`.
    pub async fn execute(
        &self,
        lun: u64,
        cdb: &[u8],
        data_out: Bytes,
        read_len: u32,
        timeout: Duration,
    ) -> Result<ScsiOutcome, InitiatorError> {
        let inner = self.inner();
        if cdb.is_empty() || cdb.len() > 260 {
            return Err(InitiatorError::Invalid(format!(
                "a CDB of {} bytes",
                cdb.len()
            )));
        }
        if !data_out.is_empty() && read_len > 0 {
            return Err(InitiatorError::Invalid(
                "bidirectional commands are not supported".into(),
            ));
        }
        let edtl = if data_out.is_empty() {
            read_len
        } else {
            u32::try_from(data_out.len())
                .map_err(|_| InitiatorError::Invalid("write data over 4 GiB".into()))?
        };
        let lun_raw = try_encode_lun(lun)
            .ok_or_else(|| InitiatorError::Invalid(format!("LUN {lun} cannot be addressed")))?;
        let deadline = Instant::now() + timeout;
        let timed_out = || InitiatorError::Timeout {
            target: inner.cfg.target_name.clone(),
            opcode: cdb[0],
            after: timeout,
        };
        // Queue depth, then the CmdSN window. A free slot is taken without arming a
        // timer.
        let _permit = match inner.slots.try_acquire() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(inner.not_connected()),
            Err(tokio::sync::TryAcquireError::NoPermits) => tokio::select! {
                p = inner.slots.acquire() => p.map_err(|_| inner.not_connected())?,
                _ = tokio::time::sleep_until(deadline) => return Err(timed_out()),
            },
        };
        let (tx, mut rx) = oneshot::channel();
        let task = ScsiTask {
            lun: lun_raw,
            cmd_sn: 0,
            data_out,
            read_len,
            segments: Vec::new(),
            next_data_sn: 0,
            done: Some(tx),
        };
        let itt = match tokio::time::timeout_at(deadline, inner.issue(task, cdb, edtl)).await {
            Ok(r) => r?,
            Err(_) => return Err(timed_out()),
        };
        match tokio::time::timeout_at(deadline, &mut rx).await {
            Ok(Ok(r)) => r.map(Completion::into_outcome),
            Ok(Err(_)) => Err(inner.lost()),
            Err(_) => {
                inner.abort_task(itt, &mut rx).await;
                Err(timed_out())
            }
        }
    }

    /// Sends a NOP-Out ping and waits for the answer: a round trip through the target.
    pub async fn ping(&self, timeout: Duration) -> Result<Duration, InitiatorError> {
        let inner = self.inner();
        let start = Instant::now();
        let (tx, rx) = oneshot::channel();
        // A ping is answered like a TMF: reuse the TMF slot type with a dummy code.
        let itt = {
            let mut st = inner.state.lock();
            if st.dead.is_some() {
                return Err(inner.not_connected());
            }
            let itt = st.alloc_itt();
            st.tasks.insert(itt, Task::Tmf(tx));
            let req = Request::NopOut(NopOut {
                immediate: true,
                lun: 0,
                itt,
                ttt: RESERVED_TAG,
                cmd_sn: st.cmd_sn,
                exp_stat_sn: st.exp_stat_sn,
                data: Bytes::new(),
            });
            let _ = inner.out.send(req);
            itt
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(_)) => Ok(start.elapsed()),
            Ok(Err(_)) => Err(inner.lost()),
            Err(_) => {
                inner.state.lock().tasks.remove(&itt);
                Err(InitiatorError::Timeout {
                    target: inner.cfg.target_name.clone(),
                    opcode: 0,
                    after: timeout,
                })
            }
        }
    }

    /// Waits (bounded) for commands in flight, sends a Logout for the session and
    /// closes the connection. Idempotent.
    pub async fn logout(&self) -> Result<(), InitiatorError> {
        let inner = self.inner();
        let t = inner.cfg.logout_timeout;
        let depth = inner.cfg.queue_depth.max(1) as u32;
        // Hold every slot: no new commands, and the ones in flight have finished.
        let _all = tokio::time::timeout(t, inner.slots.acquire_many(depth)).await;
        let (tx, rx) = oneshot::channel();
        {
            let mut st = inner.state.lock();
            if st.dead.is_some() {
                return Ok(());
            }
            let itt = st.alloc_itt();
            st.tasks.insert(itt, Task::Logout(tx));
            let req = Request::Logout(LogoutRequest {
                immediate: true,
                reason: LogoutReason::CloseSession,
                itt,
                cid: 0,
                cmd_sn: st.cmd_sn,
                exp_stat_sn: st.exp_stat_sn,
            });
            let _ = inner.out.send(req);
        }
        let r = tokio::time::timeout(t, rx).await;
        inner.fail_all("logged out".into(), true);
        match r {
            Ok(Ok(pdu::logout_response::CLOSED)) => Ok(()),
            Ok(Ok(code)) => Err(InitiatorError::Protocol {
                target: inner.cfg.target_name.clone(),
                why: format!("logout answered with response {code}"),
            }),
            // The connection went away: the session is gone either way.
            Ok(Err(_)) => Ok(()),
            Err(_) => Err(InitiatorError::PhaseTimeout {
                portal: inner.portal,
                what: "logout",
                after: t,
            }),
        }
    }
}

impl State {
    fn alloc_itt(&mut self) -> u32 {
        loop {
            let itt = self.next_itt;
            self.next_itt = self.next_itt.wrapping_add(1);
            if itt != RESERVED_TAG && !self.tasks.contains_key(&itt) {
                return itt;
            }
        }
    }
}

impl Inner {
    fn target(&self) -> String {
        self.cfg.target_name.clone()
    }

    fn not_connected(&self) -> InitiatorError {
        InitiatorError::NotConnected {
            portal: self.portal,
            target: self.target(),
        }
    }

    fn lost(&self) -> InitiatorError {
        let st = self.state.lock();
        match &st.dead {
            Some(e) if e.orderly => InitiatorError::Closed {
                target: self.target(),
            },
            Some(e) => InitiatorError::ConnectionLost {
                portal: self.portal,
                target: self.target(),
                why: e.why.clone(),
            },
            None => InitiatorError::ConnectionLost {
                portal: self.portal,
                target: self.target(),
                why: "the task was dropped".into(),
            },
        }
    }

    /// Assigns ITT and CmdSN (waiting for the window) and queues the command and its
    /// unsolicited data. Returns the ITT.
    async fn issue(
        &self,
        mut task: ScsiTask,
        cdb: &[u8],
        edtl: u32,
    ) -> Result<u32, InitiatorError> {
        let _order = self.issue.lock().await;
        loop {
            let notified = self.window.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.state.lock();
                if st.dead.is_some() {
                    return Err(self.not_connected());
                }
                if sn_le(st.cmd_sn, st.max_cmd_sn) {
                    let itt = st.alloc_itt();
                    let cmd_sn = st.cmd_sn;
                    st.cmd_sn = st.cmd_sn.wrapping_add(1);
                    task.cmd_sn = cmd_sn;
                    let exp_stat_sn = st.exp_stat_sn;
                    self.send_command(&task, itt, cdb, edtl, cmd_sn, exp_stat_sn);
                    st.tasks.insert(itt, Task::Scsi(task));
                    return Ok(itt);
                }
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = self.closed.cancelled() => return Err(self.not_connected()),
            }
        }
    }

    /// Queues the SCSI Command PDU and unsolicited Data-Out (called under the state
    /// lock so that commands leave in CmdSN order).
    fn send_command(
        &self,
        t: &ScsiTask,
        itt: u32,
        cdb: &[u8],
        edtl: u32,
        cmd_sn: u32,
        exp_stat_sn: u32,
    ) {
        let p = &self.params;
        let write = !t.data_out.is_empty();
        let (imm, unsolicited) = if write {
            (p.immediate_len(edtl), p.unsolicited_len(edtl))
        } else {
            (0, 0)
        };
        let cmd = ScsiCommand {
            immediate: false,
            // F: no unsolicited Data-Out follows (RFC 7143 §11.3.4).
            final_bit: unsolicited == imm,
            read: t.read_len > 0,
            write,
            attr: TaskAttr::Simple,
            lun: t.lun,
            itt,
            edtl,
            cmd_sn,
            exp_stat_sn,
            cdb: CdbBuf::from_slice(cdb),
            bidi_read_edtl: None,
            data: t.data_out.slice(..imm as usize),
        };
        let _ = self.out.send(Request::ScsiCommand(cmd));
        if unsolicited > imm {
            self.send_data_out(t, itt, RESERVED_TAG, imm, unsolicited, exp_stat_sn);
        }
    }

    /// Queues one Data-Out sequence covering `[from, to)` of the task's data:
    /// PDUs of at most the target's MaxRecvDataSegmentLength, DataSN from 0, F on
    /// the last (RFC 7143 §11.7).
    fn send_data_out(
        &self,
        t: &ScsiTask,
        itt: u32,
        ttt: u32,
        from: u32,
        to: u32,
        exp_stat_sn: u32,
    ) {
        let max = self.params.target_mrdsl.max(512);
        let mut off = from;
        let mut data_sn = 0u32;
        while off < to {
            let n = (to - off).min(max);
            let _ = self.out.send(Request::DataOut(DataOut {
                final_bit: off + n == to,
                lun: t.lun,
                itt,
                ttt,
                exp_stat_sn,
                data_sn,
                buffer_offset: off,
                data: t.data_out.slice(off as usize..(off + n) as usize),
            }));
            data_sn = data_sn.wrapping_add(1);
            off += n;
        }
    }

    /// ABORT TASK for a timed-out command (RFC 7143 §11.5); drops the connection if
    /// the abort does not succeed in time.
    async fn abort_task(
        &self,
        itt: u32,
        rx: &mut oneshot::Receiver<Result<Completion, InitiatorError>>,
    ) {
        let (tx, tmf_rx) = oneshot::channel();
        let tmf_itt = {
            let mut st = self.state.lock();
            if st.dead.is_some() {
                return;
            }
            let Some(Task::Scsi(t)) = st.tasks.get(&itt) else {
                return;
            };
            let (lun, ref_cmd_sn) = (t.lun, t.cmd_sn);
            let tmf_itt = st.alloc_itt();
            st.tasks.insert(tmf_itt, Task::Tmf(tx));
            let req = Request::TaskMgmt(TaskMgmtRequest {
                immediate: true,
                function: TmFunction::AbortTask,
                lun,
                itt: tmf_itt,
                rtt: itt,
                cmd_sn: st.cmd_sn,
                exp_stat_sn: st.exp_stat_sn,
                ref_cmd_sn,
                exp_data_sn: 0,
            });
            let _ = self.out.send(req);
            tmf_itt
        };
        tracing::warn!(target = %self.cfg.target_name, itt, "command timed out; sending ABORT TASK");
        let answer = tokio::select! {
            r = tokio::time::timeout(self.cfg.abort_timeout, tmf_rx) => r,
            // The command finished after all; the abort will find no task.
            _ = &mut *rx => Ok(Ok(tmf_response::TASK_DOES_NOT_EXIST)),
        };
        match answer {
            Ok(Ok(tmf_response::COMPLETE | tmf_response::TASK_DOES_NOT_EXIST)) => {
                let mut st = self.state.lock();
                st.tasks.remove(&itt);
                st.tasks.remove(&tmf_itt);
            }
            Ok(Ok(code)) => self.fail_all(
                format!("ABORT TASK for a timed-out command was answered with {code}; dropping the connection"),
                false,
            ),
            Ok(Err(_)) => self.fail_all(
                "ABORT TASK for a timed-out command was rejected; dropping the connection".into(),
                false,
            ),
            Err(_) => self.fail_all(
                format!(
                    "ABORT TASK for a timed-out command got no answer within {:?}; dropping the connection",
                    self.cfg.abort_timeout
                ),
                false,
            ),
        }
    }

    /// Ends the session: every task fails, the tasks stop, the socket closes.
    fn fail_all(&self, why: String, orderly: bool) {
        let tasks = {
            let mut st = self.state.lock();
            if st.dead.is_some() {
                return;
            }
            st.dead = Some(Ended {
                why: why.clone(),
                orderly,
            });
            std::mem::take(&mut st.tasks)
        };
        if orderly {
            tracing::info!(target = %self.cfg.target_name, portal = %self.portal, "session closed: {why}");
        } else {
            tracing::warn!(target = %self.cfg.target_name, portal = %self.portal, "connection lost: {why}");
        }
        let err = if orderly {
            InitiatorError::Closed {
                target: self.target(),
            }
        } else {
            InitiatorError::ConnectionLost {
                portal: self.portal,
                target: self.target(),
                why,
            }
        };
        for (_, t) in tasks {
            if let Task::Scsi(mut t) = t {
                if let Some(done) = t.done.take() {
                    let _ = done.send(Err(err.clone()));
                }
            }
        }
        self.closed.cancel();
        self.window.notify_waiters();
        self.slots.close();
    }

    /// Records ExpCmdSN/MaxCmdSN from a target PDU (RFC 7143 §4.2.2.1).
    fn update_window(st: &mut State, exp: u32, max: u32) -> bool {
        // A MaxCmdSN below ExpCmdSN - 1 is invalid and ignored.
        if sn_lt(max, exp.wrapping_sub(1)) {
            return false;
        }
        if sn_lt(st.exp_cmd_sn, exp) {
            st.exp_cmd_sn = exp;
        }
        if sn_lt(st.max_cmd_sn, max) {
            st.max_cmd_sn = max;
            return true;
        }
        false
    }

    fn protocol_error(&self, why: String) {
        self.fail_all(format!("protocol error: {why}"), false);
    }

    /// Handles one target PDU. Returns false when the connection must end.
    fn handle(&self, resp: Response) -> bool {
        let mut st = self.state.lock();
        if let Some((stat_sn, advances)) = stat_sn_of(&resp) {
            let next = if advances {
                stat_sn.wrapping_add(1)
            } else {
                stat_sn
            };
            if sn_lt(st.exp_stat_sn, next) {
                st.exp_stat_sn = next;
            }
        }
        if let Some((exp, max)) = window_of(&resp) {
            if Self::update_window(&mut st, exp, max) {
                self.window.notify_waiters();
            }
        }
        match resp {
            Response::DataIn(d, data) => self.data_in(st, d, data),
            Response::ScsiResponse(r) => {
                let Some(Task::Scsi(mut t)) = st.tasks.remove(&r.itt) else {
                    tracing::debug!(itt = r.itt, "SCSI Response for an unknown task (aborted?)");
                    return true;
                };
                drop(st);
                let result = if r.response != pdu::scsi_response::COMPLETED_AT_TARGET {
                    Err(InitiatorError::TargetFailure {
                        target: self.target(),
                        response: r.response,
                    })
                } else {
                    Ok(Completion {
                        status: r.status,
                        sense: r.sense,
                        residual: r.residual,
                        segments: std::mem::take(&mut t.segments),
                    })
                };
                if let Some(done) = t.done.take() {
                    let _ = done.send(result);
                }
                true
            }
            Response::R2T(r) => {
                let Some(Task::Scsi(t)) = st.tasks.get(&r.itt) else {
                    tracing::debug!(itt = r.itt, "R2T for an unknown task (aborted?)");
                    return true;
                };
                let end = u64::from(r.buffer_offset) + u64::from(r.desired_len);
                if r.desired_len == 0
                    || end > t.data_out.len() as u64
                    || r.desired_len > self.params.max_burst
                {
                    let why = format!(
                        "R2T for bytes {}+{} of a {}-byte write (MaxBurstLength {})",
                        r.buffer_offset,
                        r.desired_len,
                        t.data_out.len(),
                        self.params.max_burst
                    );
                    drop(st);
                    self.protocol_error(why);
                    return false;
                }
                let exp_stat_sn = st.exp_stat_sn;
                self.send_data_out(t, r.itt, r.ttt, r.buffer_offset, end as u32, exp_stat_sn);
                true
            }
            Response::NopIn(n) => {
                if n.ttt != RESERVED_TAG {
                    // The target pings us: answer at once (RFC 7143 §11.18).
                    let data = n
                        .data
                        .slice(..n.data.len().min(self.params.target_mrdsl as usize));
                    let req = Request::NopOut(NopOut {
                        immediate: true,
                        lun: n.lun,
                        itt: RESERVED_TAG,
                        ttt: n.ttt,
                        cmd_sn: st.cmd_sn,
                        exp_stat_sn: st.exp_stat_sn,
                        data,
                    });
                    let _ = self.out.send(req);
                } else if n.itt != RESERVED_TAG {
                    match st.tasks.remove(&n.itt) {
                        Some(Task::Tmf(tx)) => {
                            let _ = tx.send(0);
                        }
                        Some(Task::Ping) | None => {}
                        Some(other) => {
                            st.tasks.insert(n.itt, other);
                        }
                    }
                }
                true
            }
            Response::TaskMgmt(t) => {
                if let Some(Task::Tmf(tx)) = st.tasks.remove(&t.itt) {
                    let _ = tx.send(t.response);
                }
                true
            }
            Response::Logout(l) => {
                if let Some(Task::Logout(tx)) = st.tasks.remove(&l.itt) {
                    let _ = tx.send(l.response);
                }
                true
            }
            Response::Reject(r) => {
                let hdr_itt =
                    u32::from_be_bytes([r.header[16], r.header[17], r.header[18], r.header[19]]);
                tracing::warn!(target = %self.cfg.target_name, reason = r.reason, itt = hdr_itt, "target rejected a PDU");
                if r.reason == reject_reason::WAITING_FOR_LOGOUT {
                    drop(st);
                    self.fail_all("the target is waiting for a logout".into(), false);
                    return false;
                }
                // A rejected command fails; a rejected TMF fails its abort (the
                // waiting side then drops the connection).
                if let Some(Task::Scsi(mut t)) = st.tasks.remove(&hdr_itt) {
                    if let Some(done) = t.done.take() {
                        let _ = done.send(Err(InitiatorError::Rejected {
                            target: self.target(),
                            reason: r.reason,
                        }));
                    }
                }
                true
            }
            Response::Async(a) => {
                drop(st);
                match a.event {
                    async_event::LOGOUT_REQUESTED => {
                        tracing::info!(target = %self.cfg.target_name, "target asked us to log out");
                        // Handled by the reader after this returns.
                        self.closed_by_request();
                        true
                    }
                    async_event::CONNECTION_DROPPED | async_event::SESSION_DROPPED => {
                        self.fail_all(
                            "the target dropped the session (asynchronous message)".into(),
                            false,
                        );
                        false
                    }
                    async_event::SCSI_EVENT => {
                        let s = crate::outcome::SenseInfo::parse(&a.sense);
                        tracing::info!(target = %self.cfg.target_name, sense = ?s, "asynchronous SCSI event");
                        true
                    }
                    other => {
                        tracing::debug!(event = other, "asynchronous message ignored");
                        true
                    }
                }
            }
            Response::Login(_) | Response::Text(_) => {
                drop(st);
                self.protocol_error("unexpected Login/Text response in full feature phase".into());
                false
            }
        }
    }

    fn data_in(&self, mut st: parking_lot::MutexGuard<'_, State>, d: DataIn, data: Bytes) -> bool {
        let Some(Task::Scsi(t)) = st.tasks.get_mut(&d.itt) else {
            tracing::debug!(itt = d.itt, "Data-In for an unknown task (aborted?)");
            return true;
        };
        let end = u64::from(d.buffer_offset) + data.len() as u64;
        if end > u64::from(t.read_len) {
            let why = format!(
                "Data-In for bytes {}..{end} of a {}-byte read",
                d.buffer_offset, t.read_len
            );
            drop(st);
            self.protocol_error(why);
            return false;
        }
        if d.data_sn != t.next_data_sn {
            // At ErrorRecoveryLevel 0 a lost Data-In cannot be recovered.
            let why = format!(
                "Data-In DataSN {} where {} was expected",
                d.data_sn, t.next_data_sn
            );
            drop(st);
            self.protocol_error(why);
            return false;
        }
        t.next_data_sn = t.next_data_sn.wrapping_add(1);
        if !data.is_empty() {
            t.segments.push((d.buffer_offset, data));
        }
        if let Some(status) = d.status {
            let Some(Task::Scsi(mut t)) = st.tasks.remove(&d.itt) else {
                return true;
            };
            drop(st);
            if let Some(done) = t.done.take() {
                let _ = done.send(Ok(Completion {
                    status,
                    sense: Bytes::new(),
                    residual: d.residual,
                    segments: std::mem::take(&mut t.segments),
                }));
            }
        }
        true
    }

    /// The target asked for a logout: we end the session (the client logs in anew).
    fn closed_by_request(&self) {
        self.fail_all("the target asked for a logout".into(), false);
    }
}

/// StatSN of a PDU and whether it acknowledges a status (advances ExpStatSN).
fn stat_sn_of(r: &Response) -> Option<(u32, bool)> {
    match r {
        Response::ScsiResponse(p) => Some((p.stat_sn, true)),
        Response::DataIn(d, _) if d.status.is_some() => Some((d.stat_sn, true)),
        Response::NopIn(p) => Some((p.stat_sn, p.itt != RESERVED_TAG)),
        Response::TaskMgmt(p) => Some((p.stat_sn, true)),
        Response::Logout(p) => Some((p.stat_sn, true)),
        Response::Text(p) => Some((p.stat_sn, true)),
        Response::Reject(p) => Some((p.stat_sn, true)),
        Response::Async(p) => Some((p.stat_sn, true)),
        _ => None,
    }
}

/// ExpCmdSN and MaxCmdSN carried by a PDU.
fn window_of(r: &Response) -> Option<(u32, u32)> {
    match r {
        Response::NopIn(p) => Some((p.exp_cmd_sn, p.max_cmd_sn)),
        Response::ScsiResponse(p) => Some((p.exp_cmd_sn, p.max_cmd_sn)),
        Response::TaskMgmt(p) => Some((p.exp_cmd_sn, p.max_cmd_sn)),
        Response::DataIn(p, _) => Some((p.exp_cmd_sn, p.max_cmd_sn)),
        Response::Logout(p) => Some((p.exp_cmd_sn, p.max_cmd_sn)),
        Response::R2T(p) => Some((p.exp_cmd_sn, p.max_cmd_sn)),
        Response::Async(p) => Some((p.exp_cmd_sn, p.max_cmd_sn)),
        Response::Reject(p) => Some((p.exp_cmd_sn, p.max_cmd_sn)),
        Response::Text(p) => Some((p.exp_cmd_sn, p.max_cmd_sn)),
        Response::Login(_) => None,
    }
}

/// The writer task: encodes queued PDUs with the negotiated digests and writes them,
/// batching whatever is queued into one flush.
async fn writer(inner: Arc<Inner>, wr: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Request>) {
    let digests = inner.params.digests;
    let mut w = BufWriter::with_capacity(WRITE_BATCH, wr);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let first = tokio::select! {
            r = rx.recv() => r,
            _ = inner.closed.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut next = Some(first);
        let mut gathered = false;
        loop {
            while let Some(req) = next.take() {
                buf.clear();
                req.encode(&mut buf, digests);
                if let Err(e) = w.write_all(&buf).await {
                    inner.fail_all(format!("socket write failed: {e}"), false);
                    return;
                }
                if let Ok(r) = rx.try_recv() {
                    next = Some(r);
                }
            }
            // Other commands in flight: their callers often issue the next ones in
            // this turn of the scheduler (answers arrive together). Let them run
            // once so that those commands leave in this write; a lone command is
            // never delayed.
            let in_flight = inner.depth.saturating_sub(inner.slots.available_permits());
            if gathered || in_flight <= 1 {
                break;
            }
            gathered = true;
            tokio::task::yield_now().await;
            next = rx.try_recv().ok();
            if next.is_none() {
                break;
            }
        }
        if let Err(e) = w.flush().await {
            inner.fail_all(format!("socket write failed: {e}"), false);
            return;
        }
    }
    // Flush anything still queued (e.g. the Logout) before closing.
    while let Ok(req) = rx.try_recv() {
        buf.clear();
        req.encode(&mut buf, digests);
        if w.write_all(&buf).await.is_err() {
            break;
        }
    }
    let _ = w.flush().await;
    let _ = w.into_inner().shutdown().await;
}

/// The reader task: frames target PDUs, dispatches them, and keeps the connection
/// alive with NOP-Out when it is idle.
async fn reader(inner: Arc<Inner>, mut rd: OwnedReadHalf, leftover: BytesMut) {
    let digests = inner.params.digests;
    let max_data = inner.params.our_mrdsl;
    let mut rbuf = leftover;
    let nop_interval = inner.cfg.nop_interval;
    let tick = nop_interval
        .map(|i| (i / 2).max(Duration::from_millis(50)))
        .unwrap_or(Duration::from_secs(3600));
    let mut last_rx = Instant::now();
    let mut ping: Option<(u32, Instant)> = None;
    // One timer for the whole loop, re-armed when it fires (not one per read).
    let sleep = tokio::time::sleep(tick);
    tokio::pin!(sleep);
    loop {
        // Everything already buffered first.
        loop {
            match pdu::decode_frame(&mut rbuf, digests, max_data) {
                Ok(Some(raw)) => {
                    last_rx = Instant::now();
                    ping = None;
                    let resp = match raw.parse_response() {
                        Ok(r) => r,
                        Err(e) => {
                            inner.protocol_error(format!("malformed PDU from the target: {e}"));
                            return;
                        }
                    };
                    if !inner.handle(resp) {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // ErrorRecoveryLevel 0: digest and framing errors end the connection.
                    inner.protocol_error(format!("{e}"));
                    return;
                }
            }
        }
        if rbuf.capacity() - rbuf.len() < 16 * 1024 {
            rbuf.reserve(64 * 1024);
        }
        tokio::select! {
            _ = inner.closed.cancelled() => return,
            r = rd.read_buf(&mut rbuf) => match r {
                Ok(0) => {
                    inner.fail_all("the target closed the connection".into(), false);
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    inner.fail_all(format!("socket read failed: {e}"), false);
                    return;
                }
            },
            _ = &mut sleep, if nop_interval.is_some() => {
                sleep.as_mut().reset(tokio::time::Instant::now() + tick);
                let Some(interval) = nop_interval else { continue };
                let now = Instant::now();
                match ping {
                    Some((_, sent)) if now.duration_since(sent) > inner.cfg.nop_timeout => {
                        inner.fail_all(format!(
                            "no answer to NOP-Out within {:?}", inner.cfg.nop_timeout
                        ), false);
                        return;
                    }
                    Some(_) => {}
                    None if now.duration_since(last_rx) >= interval => {
                        let mut st = inner.state.lock();
                        if st.dead.is_some() {
                            return;
                        }
                        let itt = st.alloc_itt();
                        st.tasks.insert(itt, Task::Ping);
                        let req = Request::NopOut(NopOut {
                            immediate: true,
                            lun: 0,
                            itt,
                            ttt: RESERVED_TAG,
                            cmd_sn: st.cmd_sn,
                            exp_stat_sn: st.exp_stat_sn,
                            data: Bytes::new(),
                        });
                        let _ = inner.out.send(req);
                        ping = Some((itt, now));
                    }
                    None => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_arithmetic() {
        assert!(sn_lt(1, 2));
        assert!(sn_lt(0xffff_fff0, 5));
        assert!(!sn_lt(5, 0xffff_fff0));
        assert!(sn_le(7, 7));
    }

    #[test]
    fn window_updates_only_forward() {
        let mut st = State {
            cmd_sn: 10,
            exp_cmd_sn: 10,
            max_cmd_sn: 12,
            exp_stat_sn: 0,
            next_itt: 1,
            tasks: HashMap::new(),
            dead: None,
        };
        assert!(Inner::update_window(&mut st, 11, 20));
        assert_eq!((st.exp_cmd_sn, st.max_cmd_sn), (11, 20));
        // Stale values do not move it back.
        assert!(!Inner::update_window(&mut st, 10, 15));
        assert_eq!((st.exp_cmd_sn, st.max_cmd_sn), (11, 20));
        // MaxCmdSN < ExpCmdSN - 1 is invalid.
        assert!(!Inner::update_window(&mut st, 30, 25));
        assert_eq!(st.max_cmd_sn, 20);
        // A closed window (MaxCmdSN = ExpCmdSN - 1) is valid.
        assert!(!Inner::update_window(&mut st, 21, 20));
        assert_eq!(st.exp_cmd_sn, 21);
    }

    #[test]
    fn assemble_segments() {
        assert_eq!(assemble(vec![]), Bytes::new());
        let one = Bytes::from_static(b"abcd");
        assert_eq!(assemble(vec![(0, one.clone())]), one);
        let joined = assemble(vec![
            (4, Bytes::from_static(b"efgh")),
            (0, Bytes::from_static(b"abcd")),
        ]);
        assert_eq!(&joined[..], b"abcdefgh");
    }
}
