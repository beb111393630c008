//! Typed iSCSI PDUs (RFC 7143 §11): parsers and encoders for both directions.
//!
//! Requests are what an initiator sends ([`Request`], parsed by the target with
//! [`parse_request`]); responses are what a target sends ([`Response`], parsed
//! by an initiator with [`parse_response`]). Every PDU struct can encode itself
//! into a caller's `BytesMut` with optional digests, so a connection can reuse
//! one output buffer. Parsers are total: any input gives a value or a typed
//! [`PduError`], never a panic.
//!
//! Receivers ignore reserved bits and fields (RFC 7143 §11.2.1: "Any compliant
//! receiver MUST ignore any bit not defined and all reserved fields"), but
//! reserved *code values* in defined fields are protocol errors.

use bytes::{BufMut, Bytes, BytesMut};

use crate::bhs::{be16, be32, be64, put16, put32, put64, put_dsl, Bhs, Opcode, BHS_LEN};
use crate::digest::{self, pad_len, Digests, DIGEST_LEN};

/// Reject reason codes (RFC 7143 §11.17.1).
pub mod reject_reason {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_DATA_ACK: u8 = 0x08;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const OUT_OF_RESOURCES: u8 = 0x0a;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

/// Login response Status-Class and Status-Detail (RFC 7143 §11.13.5), as
/// `(class, detail)` pairs.
pub mod login_status {
    pub const SUCCESS: (u8, u8) = (0x00, 0x00);
    pub const TARGET_MOVED_TEMPORARILY: (u8, u8) = (0x01, 0x01);
    pub const TARGET_MOVED_PERMANENTLY: (u8, u8) = (0x01, 0x02);
    pub const INITIATOR_ERROR: (u8, u8) = (0x02, 0x00);
    pub const AUTHENTICATION_FAILURE: (u8, u8) = (0x02, 0x01);
    pub const AUTHORIZATION_FAILURE: (u8, u8) = (0x02, 0x02);
    pub const NOT_FOUND: (u8, u8) = (0x02, 0x03);
    pub const TARGET_REMOVED: (u8, u8) = (0x02, 0x04);
    pub const UNSUPPORTED_VERSION: (u8, u8) = (0x02, 0x05);
    pub const TOO_MANY_CONNECTIONS: (u8, u8) = (0x02, 0x06);
    pub const MISSING_PARAMETER: (u8, u8) = (0x02, 0x07);
    pub const CANT_INCLUDE_IN_SESSION: (u8, u8) = (0x02, 0x08);
    pub const SESSION_TYPE_NOT_SUPPORTED: (u8, u8) = (0x02, 0x09);
    pub const SESSION_DOES_NOT_EXIST: (u8, u8) = (0x02, 0x0a);
    pub const INVALID_DURING_LOGIN: (u8, u8) = (0x02, 0x0b);
    pub const TARGET_ERROR: (u8, u8) = (0x03, 0x00);
    pub const SERVICE_UNAVAILABLE: (u8, u8) = (0x03, 0x01);
    pub const OUT_OF_RESOURCES: (u8, u8) = (0x03, 0x02);
}

/// Task management function responses (RFC 7143 §11.6.1).
pub mod tmf_response {
    pub const COMPLETE: u8 = 0;
    pub const TASK_DOES_NOT_EXIST: u8 = 1;
    pub const LUN_DOES_NOT_EXIST: u8 = 2;
    pub const TASK_STILL_ALLEGIANT: u8 = 3;
    pub const REASSIGNMENT_NOT_SUPPORTED: u8 = 4;
    pub const NOT_SUPPORTED: u8 = 5;
    pub const AUTHORIZATION_FAILED: u8 = 6;
    pub const REJECTED: u8 = 255;
}

/// Logout responses (RFC 7143 §11.15.1).
pub mod logout_response {
    pub const CLOSED: u8 = 0;
    pub const CID_NOT_FOUND: u8 = 1;
    pub const RECOVERY_NOT_SUPPORTED: u8 = 2;
    pub const CLEANUP_FAILED: u8 = 3;
}

/// SCSI Response "Response" field (RFC 7143 §11.4.3).
pub mod scsi_response {
    pub const COMPLETED_AT_TARGET: u8 = 0x00;
    pub const TARGET_FAILURE: u8 = 0x01;
}

/// AsyncEvent codes (RFC 7143 §11.9.1).
pub mod async_event {
    pub const SCSI_EVENT: u8 = 0;
    pub const LOGOUT_REQUESTED: u8 = 1;
    pub const CONNECTION_DROPPED: u8 = 2;
    pub const SESSION_DROPPED: u8 = 3;
    pub const NEGOTIATION_REQUESTED: u8 = 4;
    pub const TASK_TERMINATION: u8 = 5;
    pub const VENDOR: u8 = 255;
}

/// The reserved tag value (RFC 7143 §11.2.1.8).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Why a PDU could not be framed or parsed. [`PduError::reject_reason`] says
/// which Reject reason to send, or that the connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    #[error("PDU truncated: {need} bytes needed, {have} present")]
    Truncated { need: usize, have: usize },
    #[error("opcode {0:#04x} is not valid in this direction")]
    BadOpcode(u8),
    #[error("reserved value {value:#x} in field {field}")]
    ReservedField { field: &'static str, value: u32 },
    #[error("invalid value in field {0}")]
    InvalidField(&'static str),
    #[error("data segment of {len} bytes exceeds the limit of {max}")]
    DataTooLong { len: u32, max: u32 },
    #[error("malformed additional header segment: {0}")]
    BadAhs(&'static str),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("header digest mismatch (received {received:#010x}, computed {computed:#010x}); the connection must be dropped")]
    HeaderDigest { received: u32, computed: u32 },
    #[error("data digest mismatch on {bhs:?}")]
    DataDigest { bhs: Bhs },
}

impl PduError {
    /// The Reject reason to send for this error (RFC 7143 §11.17.1), or
    /// `None` when the connection must be closed instead (the header cannot
    /// be trusted, or the stream cannot be resynchronised).
    pub fn reject_reason(&self) -> Option<u8> {
        use reject_reason::*;
        match self {
            PduError::HeaderDigest { .. } | PduError::DataTooLong { .. } => None,
            PduError::DataDigest { .. } => Some(DATA_DIGEST_ERROR),
            PduError::InvalidField(_) | PduError::BadAhs(_) => Some(INVALID_PDU_FIELD),
            PduError::Truncated { .. }
            | PduError::BadOpcode(_)
            | PduError::ReservedField { .. }
            | PduError::Protocol(_) => Some(PROTOCOL_ERROR),
        }
    }

    /// True when the connection cannot continue after this error.
    pub fn is_fatal(&self) -> bool {
        self.reject_reason().is_none()
    }
}

// ---------------------------------------------------------------------------
// Small shared field types.

/// Login stages (CSG/NSG, RFC 7143 §11.12.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Security = 0,
    Operational = 1,
    FullFeature = 3,
}

impl Stage {
    /// The two-bit wire code.
    pub fn code(self) -> u8 {
        self as u8
    }

    fn from_bits(v: u8) -> Option<Stage> {
        match v & 3 {
            0 => Some(Stage::Security),
            1 => Some(Stage::Operational),
            3 => Some(Stage::FullFeature),
            _ => None,
        }
    }
}

impl PartialEq<u8> for Stage {
    fn eq(&self, other: &u8) -> bool {
        self.code() == *other
    }
}

impl PartialOrd<u8> for Stage {
    fn partial_cmp(&self, other: &u8) -> Option<std::cmp::Ordering> {
        self.code().partial_cmp(other)
    }
}

impl From<Stage> for u8 {
    fn from(s: Stage) -> u8 {
        s.code()
    }
}

/// SCSI task attributes (RFC 7143 §11.3.1, SAM-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskAttr {
    Untagged = 0,
    Simple = 1,
    Ordered = 2,
    HeadOfQueue = 3,
    Aca = 4,
}

/// Task management functions (RFC 7143 §11.5.1). Total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TmFunction {
    AbortTask,
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    LogicalUnitReset,
    TargetWarmReset,
    TargetColdReset,
    TaskReassign,
    /// Any other code: answer "Task management function not supported".
    Other(u8),
}

impl TmFunction {
    pub fn from_u8(v: u8) -> TmFunction {
        match v & 0x7f {
            1 => TmFunction::AbortTask,
            2 => TmFunction::AbortTaskSet,
            3 => TmFunction::ClearAca,
            4 => TmFunction::ClearTaskSet,
            5 => TmFunction::LogicalUnitReset,
            6 => TmFunction::TargetWarmReset,
            7 => TmFunction::TargetColdReset,
            8 => TmFunction::TaskReassign,
            o => TmFunction::Other(o),
        }
    }

    pub fn code(self) -> u8 {
        match self {
            TmFunction::AbortTask => 1,
            TmFunction::AbortTaskSet => 2,
            TmFunction::ClearAca => 3,
            TmFunction::ClearTaskSet => 4,
            TmFunction::LogicalUnitReset => 5,
            TmFunction::TargetWarmReset => 6,
            TmFunction::TargetColdReset => 7,
            TmFunction::TaskReassign => 8,
            TmFunction::Other(o) => o & 0x7f,
        }
    }
}

/// Alias of [`TmFunction`].
pub type TmfFunction = TmFunction;
/// Alias of [`TaskMgmtRequest`].
pub type TaskMgmt = TaskMgmtRequest;
/// Alias of [`R2T`].
pub type R2t = R2T;

/// Logout reason codes (RFC 7143 §11.14.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogoutReason {
    CloseSession = 0,
    CloseConnection = 1,
    RemoveConnectionForRecovery = 2,
}

/// SNACK types (RFC 7143 §11.16.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SnackType {
    DataR2t = 0,
    Status = 1,
    DataAck = 2,
    RData = 3,
}

/// Residual of a command (the O/U bits plus the residual count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Residual {
    #[default]
    None,
    /// Fewer bytes were transferred than expected by this many.
    Underflow(u32),
    /// More bytes were requested than expected, by this many.
    Overflow(u32),
}

impl Residual {
    /// (O bit, U bit, count) for the given bit positions.
    fn bits(self, o: u8, u: u8) -> (u8, u32) {
        match self {
            Residual::None => (0, 0),
            Residual::Underflow(n) => (u, n),
            Residual::Overflow(n) => (o, n),
        }
    }

    fn parse(flags: u8, o: u8, u: u8, count: u32) -> Result<Residual, PduError> {
        match (flags & o != 0, flags & u != 0) {
            (true, true) => Err(PduError::Protocol(
                "both residual overflow and underflow set",
            )),
            (true, false) => Ok(Residual::Overflow(count)),
            (false, true) => Ok(Residual::Underflow(count)),
            (false, false) => Ok(Residual::None),
        }
    }

    /// The residual count (0 for `None`).
    pub fn count(self) -> u32 {
        match self {
            Residual::None => 0,
            Residual::Underflow(n) | Residual::Overflow(n) => n,
        }
    }
}

/// A CDB: 16 bytes inline from the BHS, or longer with an Extended CDB AHS
/// (RFC 7143 §11.2.2.3). Dereferences to the CDB bytes.
#[derive(Clone, PartialEq, Eq)]
pub enum CdbBuf {
    Inline([u8; 16]),
    Extended(Vec<u8>),
}

impl CdbBuf {
    /// Builds a CDB from bytes; shorter than 16 is zero-padded to 16.
    pub fn from_slice(cdb: &[u8]) -> CdbBuf {
        if cdb.len() <= 16 {
            let mut b = [0u8; 16];
            b[..cdb.len()].copy_from_slice(cdb);
            CdbBuf::Inline(b)
        } else {
            CdbBuf::Extended(cdb.to_vec())
        }
    }
}

impl std::ops::Deref for CdbBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            CdbBuf::Inline(b) => b,
            CdbBuf::Extended(v) => v,
        }
    }
}

impl std::fmt::Debug for CdbBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cdb(")?;
        for b in self.iter() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl Default for CdbBuf {
    fn default() -> Self {
        CdbBuf::Inline([0; 16])
    }
}

// ---------------------------------------------------------------------------
// Framing.

/// One PDU cut out of the byte stream, digests verified and stripped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPdu {
    pub bhs: Bhs,
    pub ahs: Bytes,
    pub data: Bytes,
}

impl RawPdu {
    /// Parses as a request (target side).
    pub fn parse_request(&self) -> Result<Request, PduError> {
        parse_request(&self.bhs.0, &self.ahs, self.data.clone())
    }

    /// Parses as a response (initiator side).
    pub fn parse_response(&self) -> Result<Response, PduError> {
        parse_response(&self.bhs.0, &self.ahs, self.data.clone())
    }
}

/// Check-then-cut framing: if `buf` holds a whole PDU, removes it and returns
/// it; `Ok(None)` means "read more". `max_data` is the largest data segment
/// this side accepts (its declared MaxRecvDataSegmentLength; during login use
/// 8192 or the declared value). On a data digest error the PDU is still
/// consumed and [`PduError::DataDigest`] carries its header, so the caller
/// can send a Reject and go on; other errors are fatal to the connection.
pub fn decode_frame(
    buf: &mut BytesMut,
    digests: Digests,
    max_data: u32,
) -> Result<Option<RawPdu>, PduError> {
    let Some(bhs) = Bhs::from_slice(buf) else {
        return Ok(None);
    };
    let dsl = bhs.data_segment_len();
    if dsl > max_data {
        return Err(PduError::DataTooLong {
            len: dsl,
            max: max_data,
        });
    }
    let need = bhs.frame_len(digests.header, digests.data);
    if buf.len() < need {
        buf.reserve(need - buf.len());
        return Ok(None);
    }
    let frame = buf.split_to(need).freeze();
    let ahs_end = BHS_LEN + bhs.total_ahs_len();
    let mut at = ahs_end;
    if digests.header {
        let received =
            digest::read_digest([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]]);
        let computed = digest::header_digest(&frame[..BHS_LEN], &frame[BHS_LEN..ahs_end]);
        if received != computed {
            return Err(PduError::HeaderDigest { received, computed });
        }
        at += DIGEST_LEN;
    }
    let dsl = dsl as usize;
    let data = frame.slice(at..at + dsl);
    if dsl > 0 && digests.data {
        let padded = dsl + pad_len(dsl);
        let d = at + padded;
        let received = digest::read_digest([frame[d], frame[d + 1], frame[d + 2], frame[d + 3]]);
        if received != digest::crc32c(&frame[at..d]) {
            return Err(PduError::DataDigest { bhs });
        }
    }
    Ok(Some(RawPdu {
        bhs,
        ahs: frame.slice(BHS_LEN..ahs_end),
        data,
    }))
}

/// Splits a whole PDU held in one buffer (no digests) into its parts.
fn split_bytes(buf: &[u8]) -> Result<([u8; BHS_LEN], &[u8], Bytes), PduError> {
    let bhs = Bhs::from_slice(buf).ok_or(PduError::Truncated {
        need: BHS_LEN,
        have: buf.len(),
    })?;
    let ahs_end = BHS_LEN + bhs.total_ahs_len();
    let end = ahs_end + bhs.data_segment_len() as usize;
    if buf.len() < end {
        return Err(PduError::Truncated {
            need: end,
            have: buf.len(),
        });
    }
    Ok((
        bhs.0,
        &buf[BHS_LEN..ahs_end],
        Bytes::copy_from_slice(&buf[ahs_end..end]),
    ))
}

/// Parses a whole request PDU held in one buffer without digests (padding
/// after the data segment is optional). The entry point for fuzzing.
pub fn parse_request_bytes(buf: &[u8]) -> Result<Request, PduError> {
    let (bhs, ahs, data) = split_bytes(buf)?;
    parse_request(&bhs, ahs, data)
}

/// Parses a whole response PDU held in one buffer without digests.
pub fn parse_response_bytes(buf: &[u8]) -> Result<Response, PduError> {
    let (bhs, ahs, data) = split_bytes(buf)?;
    parse_response(&bhs, ahs, data)
}

/// Writes one PDU: BHS, AHS, header digest, data parts, padding, data digest.
/// The data segment is the concatenation of `data`.
pub fn write_pdu(
    out: &mut BytesMut,
    bhs: &[u8; BHS_LEN],
    ahs: &[u8],
    data: &[&[u8]],
    digests: Digests,
) {
    let dlen: usize = data.iter().map(|d| d.len()).sum();
    let pad = pad_len(dlen);
    out.reserve(BHS_LEN + ahs.len() + dlen + pad + 2 * DIGEST_LEN);
    out.put_slice(bhs);
    out.put_slice(ahs);
    if digests.header {
        out.put_slice(&digest::digest_bytes(digest::header_digest(bhs, ahs)));
    }
    if dlen == 0 {
        return;
    }
    let mut crc = 0u32;
    for d in data {
        out.put_slice(d);
        if digests.data {
            crc = crc32c::crc32c_append(crc, d);
        }
    }
    let zeros = [0u8; 3];
    out.put_slice(&zeros[..pad]);
    if digests.data {
        crc = crc32c::crc32c_append(crc, &zeros[..pad]);
        out.put_slice(&digest::digest_bytes(crc));
    }
}

fn new_bhs(op: Opcode, immediate: bool, flags: u8, data_len: usize) -> [u8; BHS_LEN] {
    let mut b = [0u8; BHS_LEN];
    b[0] = op.code() | if immediate { 0x40 } else { 0 };
    b[1] = flags;
    put_dsl(&mut b, data_len);
    b
}

fn check_data_len(bhs: &[u8; BHS_LEN], ahs: &[u8], data: &Bytes) -> Result<(), PduError> {
    let h = Bhs(*bhs);
    if ahs.len() != h.total_ahs_len() {
        return Err(PduError::Protocol(
            "AHS length does not match TotalAHSLength",
        ));
    }
    if data.len() != h.data_segment_len() as usize {
        return Err(PduError::Protocol(
            "data length does not match DataSegmentLength",
        ));
    }
    Ok(())
}

fn bit(b: u8, mask: u8) -> bool {
    b & mask != 0
}

fn flag(on: bool, mask: u8) -> u8 {
    if on {
        mask
    } else {
        0
    }
}

// ---------------------------------------------------------------------------
// Requests (initiator → target).

/// NOP-Out (RFC 7143 §11.18).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Bytes,
}

/// SCSI Command (RFC 7143 §11.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub final_bit: bool,
    pub read: bool,
    pub write: bool,
    pub attr: TaskAttr,
    pub lun: u64,
    pub itt: u32,
    /// Expected Data Transfer Length (the write length for bidirectional).
    pub edtl: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    /// 16 bytes from the BHS, plus the Extended CDB AHS when present.
    pub cdb: CdbBuf,
    /// Bidirectional Read Expected Data Transfer Length AHS (§11.2.2.4).
    pub bidi_read_edtl: Option<u32>,
    /// Immediate (unsolicited, in-PDU) data.
    pub data: Bytes,
}

/// SCSI Task Management Function Request (RFC 7143 §11.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    pub function: TmFunction,
    pub lun: u64,
    pub itt: u32,
    /// Referenced Task Tag.
    pub rtt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
    pub exp_data_sn: u32,
}

/// Login Request (RFC 7143 §11.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    pub transit: bool,
    pub cont: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Bytes,
}

/// Text Request (RFC 7143 §11.10).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_bit: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Bytes,
}

/// SCSI Data-Out (RFC 7143 §11.7).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataOut {
    pub final_bit: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub data: Bytes,
}

/// Logout Request (RFC 7143 §11.14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequest {
    pub immediate: bool,
    pub reason: LogoutReason,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// SNACK Request (RFC 7143 §11.16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnackRequest {
    pub snack_type: SnackType,
    pub lun: u64,
    pub itt: u32,
    /// Target Transfer Tag or SNACK Tag.
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub beg_run: u32,
    pub run_length: u32,
}

/// Every PDU an initiator can send. Total: unknown opcodes are a variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmt(TaskMgmtRequest),
    Login(LoginRequest),
    Text(TextRequest),
    DataOut(DataOut),
    Logout(LogoutRequest),
    Snack(SnackRequest),
    /// An initiator opcode we do not implement (vendor specific or reserved):
    /// answer with Reject reason "command not supported" (0x05).
    Unknown {
        opcode: u8,
        immediate: bool,
        itt: u32,
    },
}

impl Request {
    pub fn opcode(&self) -> Opcode {
        match self {
            Request::NopOut(_) => Opcode::NopOut,
            Request::ScsiCommand(_) => Opcode::ScsiCommand,
            Request::TaskMgmt(_) => Opcode::TaskMgmtRequest,
            Request::Login(_) => Opcode::LoginRequest,
            Request::Text(_) => Opcode::TextRequest,
            Request::DataOut(_) => Opcode::DataOut,
            Request::Logout(_) => Opcode::LogoutRequest,
            Request::Snack(_) => Opcode::SnackRequest,
            Request::Unknown { opcode, .. } => Opcode::from_u8(*opcode),
        }
    }

    pub fn itt(&self) -> u32 {
        match self {
            Request::NopOut(p) => p.itt,
            Request::ScsiCommand(p) => p.itt,
            Request::TaskMgmt(p) => p.itt,
            Request::Login(p) => p.itt,
            Request::Text(p) => p.itt,
            Request::DataOut(p) => p.itt,
            Request::Logout(p) => p.itt,
            Request::Snack(p) => p.itt,
            Request::Unknown { itt, .. } => *itt,
        }
    }

    /// The I bit (Login Requests always have it set).
    pub fn immediate(&self) -> bool {
        match self {
            Request::NopOut(p) => p.immediate,
            Request::ScsiCommand(p) => p.immediate,
            Request::TaskMgmt(p) => p.immediate,
            Request::Login(_) => true,
            Request::Text(p) => p.immediate,
            Request::Logout(p) => p.immediate,
            Request::DataOut(_) | Request::Snack(_) => false,
            Request::Unknown { immediate, .. } => *immediate,
        }
    }

    /// CmdSN, for PDUs that carry one (not Data-Out and SNACK).
    pub fn cmd_sn(&self) -> Option<u32> {
        match self {
            Request::NopOut(p) => Some(p.cmd_sn),
            Request::ScsiCommand(p) => Some(p.cmd_sn),
            Request::TaskMgmt(p) => Some(p.cmd_sn),
            Request::Login(p) => Some(p.cmd_sn),
            Request::Text(p) => Some(p.cmd_sn),
            Request::Logout(p) => Some(p.cmd_sn),
            Request::DataOut(_) | Request::Snack(_) | Request::Unknown { .. } => None,
        }
    }

    /// ExpStatSN, for PDUs that carry one.
    pub fn exp_stat_sn(&self) -> Option<u32> {
        match self {
            Request::NopOut(p) => Some(p.exp_stat_sn),
            Request::ScsiCommand(p) => Some(p.exp_stat_sn),
            Request::TaskMgmt(p) => Some(p.exp_stat_sn),
            Request::Login(p) => Some(p.exp_stat_sn),
            Request::Text(p) => Some(p.exp_stat_sn),
            Request::DataOut(p) => Some(p.exp_stat_sn),
            Request::Logout(p) => Some(p.exp_stat_sn),
            Request::Snack(p) => Some(p.exp_stat_sn),
            Request::Unknown { .. } => None,
        }
    }

    /// Encodes the PDU (initiator side).
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        match self {
            Request::NopOut(p) => p.encode(out, digests),
            Request::ScsiCommand(p) => p.encode(out, digests),
            Request::TaskMgmt(p) => p.encode(out, digests),
            Request::Login(p) => p.encode(out, digests),
            Request::Text(p) => p.encode(out, digests),
            Request::DataOut(p) => p.encode(out, digests),
            Request::Logout(p) => p.encode(out, digests),
            Request::Snack(p) => p.encode(out, digests),
            Request::Unknown {
                opcode,
                immediate,
                itt,
            } => {
                let mut b = new_bhs(Opcode::from_u8(*opcode), *immediate, 0x80, 0);
                put32(&mut b, 16, *itt);
                write_pdu(out, &b, &[], &[], digests);
            }
        }
    }
}

/// Parses an initiator PDU from its parts (digests already checked).
/// `ahs` must be `TotalAHSLength` bytes and `data` the unpadded data segment.
pub fn parse_request(bhs: &[u8; BHS_LEN], ahs: &[u8], data: Bytes) -> Result<Request, PduError> {
    check_data_len(bhs, ahs, &data)?;
    let b = bhs;
    let immediate = bit(b[0], 0x40);
    let op = Opcode::from_u8(b[0]);
    let lun = be64(b, 8);
    let itt = be32(b, 16);
    Ok(match op {
        Opcode::NopOut => Request::NopOut(NopOut {
            immediate,
            lun,
            itt,
            ttt: be32(b, 20),
            cmd_sn: be32(b, 24),
            exp_stat_sn: be32(b, 28),
            data,
        }),
        Opcode::ScsiCommand => {
            let attr = match b[1] & 0x07 {
                0 => TaskAttr::Untagged,
                1 => TaskAttr::Simple,
                2 => TaskAttr::Ordered,
                3 => TaskAttr::HeadOfQueue,
                4 => TaskAttr::Aca,
                v => {
                    return Err(PduError::ReservedField {
                        field: "ATTR",
                        value: v.into(),
                    })
                }
            };
            let mut cdb16 = [0u8; 16];
            cdb16.copy_from_slice(&b[32..48]);
            let (cdb, bidi_read_edtl) = parse_command_ahs(cdb16, ahs)?;
            Request::ScsiCommand(ScsiCommand {
                immediate,
                final_bit: bit(b[1], 0x80),
                read: bit(b[1], 0x40),
                write: bit(b[1], 0x20),
                attr,
                lun,
                itt,
                edtl: be32(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
                cdb,
                bidi_read_edtl,
                data,
            })
        }
        Opcode::TaskMgmtRequest => Request::TaskMgmt(TaskMgmtRequest {
            immediate,
            function: TmFunction::from_u8(b[1]),
            lun,
            itt,
            rtt: be32(b, 20),
            cmd_sn: be32(b, 24),
            exp_stat_sn: be32(b, 28),
            ref_cmd_sn: be32(b, 32),
            exp_data_sn: be32(b, 36),
        }),
        Opcode::LoginRequest => {
            let transit = bit(b[1], 0x80);
            let cont = bit(b[1], 0x40);
            if transit && cont {
                return Err(PduError::Protocol("login request with both T and C set"));
            }
            let csg = Stage::from_bits(b[1] >> 2).ok_or(PduError::ReservedField {
                field: "CSG",
                value: 2,
            })?;
            let nsg = match Stage::from_bits(b[1]) {
                Some(s) => s,
                None if transit => {
                    return Err(PduError::ReservedField {
                        field: "NSG",
                        value: 2,
                    })
                }
                // NSG is reserved when T is 0.
                None => csg,
            };
            let mut isid = [0u8; 6];
            isid.copy_from_slice(&b[8..14]);
            Request::Login(LoginRequest {
                transit,
                cont,
                csg,
                nsg,
                version_max: b[2],
                version_min: b[3],
                isid,
                tsih: be16(b, 14),
                itt,
                cid: be16(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
                data,
            })
        }
        Opcode::TextRequest => {
            let final_bit = bit(b[1], 0x80);
            let cont = bit(b[1], 0x40);
            if final_bit && cont {
                return Err(PduError::Protocol("text request with both F and C set"));
            }
            Request::Text(TextRequest {
                immediate,
                final_bit,
                cont,
                lun,
                itt,
                ttt: be32(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
                data,
            })
        }
        Opcode::DataOut => Request::DataOut(DataOut {
            final_bit: bit(b[1], 0x80),
            lun,
            itt,
            ttt: be32(b, 20),
            exp_stat_sn: be32(b, 28),
            data_sn: be32(b, 36),
            buffer_offset: be32(b, 40),
            data,
        }),
        Opcode::LogoutRequest => {
            let reason = match b[1] & 0x7f {
                0 => LogoutReason::CloseSession,
                1 => LogoutReason::CloseConnection,
                2 => LogoutReason::RemoveConnectionForRecovery,
                v => {
                    return Err(PduError::ReservedField {
                        field: "logout reason",
                        value: v.into(),
                    })
                }
            };
            Request::Logout(LogoutRequest {
                immediate,
                reason,
                itt,
                cid: be16(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
            })
        }
        Opcode::SnackRequest => {
            let snack_type = match b[1] & 0x0f {
                0 => SnackType::DataR2t,
                1 => SnackType::Status,
                2 => SnackType::DataAck,
                3 => SnackType::RData,
                v => {
                    return Err(PduError::ReservedField {
                        field: "SNACK type",
                        value: v.into(),
                    })
                }
            };
            Request::Snack(SnackRequest {
                snack_type,
                lun,
                itt,
                ttt: be32(b, 20),
                exp_stat_sn: be32(b, 28),
                beg_run: be32(b, 40),
                run_length: be32(b, 44),
            })
        }
        op if op.is_target() => return Err(PduError::BadOpcode(op.code())),
        op => Request::Unknown {
            opcode: op.code(),
            immediate,
            itt,
        },
    })
}

/// AHS types (RFC 7143 §11.2.2.2).
const AHS_EXTENDED_CDB: u8 = 1;
const AHS_BIDI_READ_LEN: u8 = 2;

fn parse_command_ahs(cdb16: [u8; 16], ahs: &[u8]) -> Result<(CdbBuf, Option<u32>), PduError> {
    let mut cdb = CdbBuf::Inline(cdb16);
    let mut bidi = None;
    let mut rest = ahs;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(PduError::BadAhs("AHS shorter than its header"));
        }
        let len = usize::from(be16(rest, 0));
        // AHSType: two reserved bits, then the six-bit AHS code.
        let ty = rest[2] & 0x3f;
        let total = 3 + len + pad_len(3 + len);
        if total > rest.len() {
            return Err(PduError::BadAhs("AHSLength runs past TotalAHSLength"));
        }
        match ty {
            AHS_EXTENDED_CDB => {
                if len < 2 {
                    return Err(PduError::BadAhs("empty extended CDB"));
                }
                if matches!(cdb, CdbBuf::Extended(_)) {
                    return Err(PduError::BadAhs("two extended CDB AHSs"));
                }
                // AHSLength counts the reserved byte plus the CDB bytes past 16.
                let mut v = Vec::with_capacity(16 + len - 1);
                v.extend_from_slice(&cdb16);
                v.extend_from_slice(&rest[4..3 + len]);
                cdb = CdbBuf::Extended(v);
            }
            AHS_BIDI_READ_LEN => {
                if len != 5 {
                    return Err(PduError::BadAhs(
                        "bidirectional read length AHS must be 5 bytes",
                    ));
                }
                if bidi.is_some() {
                    return Err(PduError::BadAhs("two bidirectional read length AHSs"));
                }
                bidi = Some(be32(rest, 4));
            }
            // AHS codes 59..=63 are non-iSCSI extensions: ignored.
            59..=63 => {}
            _ => return Err(PduError::BadAhs("reserved AHS type")),
        }
        rest = &rest[total..];
    }
    Ok((cdb, bidi))
}

/// Length in bytes of the AHS that [`command_ahs`] builds.
fn command_ahs_len(cmd: &ScsiCommand) -> usize {
    let ext = cmd.cdb.len().saturating_sub(16);
    let ext_ahs = if ext > 0 { 4 + ext + pad_len(ext) } else { 0 };
    ext_ahs + if cmd.bidi_read_edtl.is_some() { 8 } else { 0 }
}

/// Builds the AHS for a command (Extended CDB, bidi read length).
fn command_ahs(cmd: &ScsiCommand) -> Vec<u8> {
    let mut v = Vec::new();
    if cmd.cdb.len() > 16 {
        let ext = &cmd.cdb[16..];
        let len = ext.len() + 1;
        v.extend_from_slice(&(len as u16).to_be_bytes());
        v.push(AHS_EXTENDED_CDB);
        v.push(0);
        v.extend_from_slice(ext);
        v.resize(v.len() + pad_len(3 + len), 0);
    }
    if let Some(n) = cmd.bidi_read_edtl {
        v.extend_from_slice(&[0, 5, AHS_BIDI_READ_LEN, 0]);
        v.extend_from_slice(&n.to_be_bytes());
    }
    v
}

impl NopOut {
    pub fn to_bhs(&self) -> [u8; BHS_LEN] {
        let mut b = new_bhs(Opcode::NopOut, self.immediate, 0x80, self.data.len());
        put64(&mut b, 8, self.lun);
        put32(&mut b, 16, self.itt);
        put32(&mut b, 20, self.ttt);
        put32(&mut b, 24, self.cmd_sn);
        put32(&mut b, 28, self.exp_stat_sn);
        b
    }
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        write_pdu(out, &self.to_bhs(), &[], &[&self.data], digests);
    }
}

impl ScsiCommand {
    pub fn to_bhs(&self) -> [u8; BHS_LEN] {
        let flags = flag(self.final_bit, 0x80)
            | flag(self.read, 0x40)
            | flag(self.write, 0x20)
            | self.attr as u8;
        let mut b = new_bhs(Opcode::ScsiCommand, self.immediate, flags, self.data.len());
        b[4] = (command_ahs_len(self) / 4) as u8;
        put64(&mut b, 8, self.lun);
        put32(&mut b, 16, self.itt);
        put32(&mut b, 20, self.edtl);
        put32(&mut b, 24, self.cmd_sn);
        put32(&mut b, 28, self.exp_stat_sn);
        let n = self.cdb.len().min(16);
        b[32..32 + n].copy_from_slice(&self.cdb[..n]);
        b
    }
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        if self.cdb.len() <= 16 && self.bidi_read_edtl.is_none() {
            write_pdu(out, &self.to_bhs(), &[], &[&self.data], digests);
        } else {
            write_pdu(
                out,
                &self.to_bhs(),
                &command_ahs(self),
                &[&self.data],
                digests,
            );
        }
    }
}

impl TaskMgmtRequest {
    pub fn to_bhs(&self) -> [u8; BHS_LEN] {
        let mut b = new_bhs(
            Opcode::TaskMgmtRequest,
            self.immediate,
            0x80 | self.function.code(),
            0,
        );
        put64(&mut b, 8, self.lun);
        put32(&mut b, 16, self.itt);
        put32(&mut b, 20, self.rtt);
        put32(&mut b, 24, self.cmd_sn);
        put32(&mut b, 28, self.exp_stat_sn);
        put32(&mut b, 32, self.ref_cmd_sn);
        put32(&mut b, 36, self.exp_data_sn);
        b
    }
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        write_pdu(out, &self.to_bhs(), &[], &[], digests);
    }
}

fn login_flags(transit: bool, cont: bool, csg: Stage, nsg: Stage) -> u8 {
    flag(transit, 0x80)
        | flag(cont, 0x40)
        | ((csg as u8) << 2)
        | if transit { nsg as u8 } else { 0 }
}

impl LoginRequest {
    pub fn to_bhs(&self) -> [u8; BHS_LEN] {
        let flags = login_flags(self.transit, self.cont, self.csg, self.nsg);
        let mut b = new_bhs(Opcode::LoginRequest, true, flags, self.data.len());
        b[2] = self.version_max;
        b[3] = self.version_min;
        b[8..14].copy_from_slice(&self.isid);
        put16(&mut b, 14, self.tsih);
        put32(&mut b, 16, self.itt);
        put16(&mut b, 20, self.cid);
        put32(&mut b, 24, self.cmd_sn);
        put32(&mut b, 28, self.exp_stat_sn);
        b
    }
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        write_pdu(out, &self.to_bhs(), &[], &[&self.data], digests);
    }
}

impl TextRequest {
    pub fn to_bhs(&self) -> [u8; BHS_LEN] {
        let flags = flag(self.final_bit, 0x80) | flag(self.cont, 0x40);
        let mut b = new_bhs(Opcode::TextRequest, self.immediate, flags, self.data.len());
        put64(&mut b, 8, self.lun);
        put32(&mut b, 16, self.itt);
        put32(&mut b, 20, self.ttt);
        put32(&mut b, 24, self.cmd_sn);
        put32(&mut b, 28, self.exp_stat_sn);
        b
    }
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        write_pdu(out, &self.to_bhs(), &[], &[&self.data], digests);
    }
}

impl DataOut {
    pub fn to_bhs(&self) -> [u8; BHS_LEN] {
        let mut b = new_bhs(
            Opcode::DataOut,
            false,
            flag(self.final_bit, 0x80),
            self.data.len(),
        );
        put64(&mut b, 8, self.lun);
        put32(&mut b, 16, self.itt);
        put32(&mut b, 20, self.ttt);
        put32(&mut b, 28, self.exp_stat_sn);
        put32(&mut b, 36, self.data_sn);
        put32(&mut b, 40, self.buffer_offset);
        b
    }
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        write_pdu(out, &self.to_bhs(), &[], &[&self.data], digests);
    }
}

impl LogoutRequest {
    pub fn to_bhs(&self) -> [u8; BHS_LEN] {
        let mut b = new_bhs(
            Opcode::LogoutRequest,
            self.immediate,
            0x80 | self.reason as u8,
            0,
        );
        put32(&mut b, 16, self.itt);
        put16(&mut b, 20, self.cid);
        put32(&mut b, 24, self.cmd_sn);
        put32(&mut b, 28, self.exp_stat_sn);
        b
    }
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        write_pdu(out, &self.to_bhs(), &[], &[], digests);
    }
}

impl SnackRequest {
    pub fn to_bhs(&self) -> [u8; BHS_LEN] {
        let mut b = new_bhs(Opcode::SnackRequest, false, 0x80 | self.snack_type as u8, 0);
        put64(&mut b, 8, self.lun);
        put32(&mut b, 16, self.itt);
        put32(&mut b, 20, self.ttt);
        put32(&mut b, 28, self.exp_stat_sn);
        put32(&mut b, 40, self.beg_run);
        put32(&mut b, 44, self.run_length);
        b
    }
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        write_pdu(out, &self.to_bhs(), &[], &[], digests);
    }
}

// ---------------------------------------------------------------------------
// Responses (target → initiator).

/// NOP-In (RFC 7143 §11.19).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NopIn {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data: Bytes,
}

/// SCSI Response (RFC 7143 §11.4).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScsiResponse {
    /// See [`scsi_response`]; `status` is valid only for "completed at target".
    pub response: u8,
    pub status: u8,
    pub itt: u32,
    pub snack_tag: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub exp_data_sn: u32,
    /// Residual of the (write, or only) data transfer: the O and U bits.
    pub residual: Residual,
    /// Residual of the read part of a bidirectional command: the o and u bits.
    pub bidi_read_residual: Residual,
    /// Sense data without its two-byte SenseLength prefix; empty for none.
    pub sense: Bytes,
}

/// SCSI Data-In header (RFC 7143 §11.8). The data travels separately so a
/// target can encode straight from its buffer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataIn {
    pub final_bit: bool,
    /// The A bit: ask for a DataACK SNACK (ERL ≥ 1 only).
    pub ack: bool,
    /// `Some(status)` sets the S bit: this PDU carries the command status
    /// (and then F is set too, RFC 7143 §11.8.1).
    pub status: Option<u8>,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    /// Valid only with `status`.
    pub residual: Residual,
}

/// Ready To Transfer (RFC 7143 §11.8).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct R2T {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_len: u32,
}

/// SCSI Task Management Function Response (RFC 7143 §11.6).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskMgmtResponse {
    /// See [`tmf_response`].
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// Login Response (RFC 7143 §11.13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: bool,
    pub cont: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    /// See [`login_status`].
    pub status_class: u8,
    pub status_detail: u8,
    pub data: Bytes,
}

/// Text Response (RFC 7143 §11.11).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TextResponse {
    pub final_bit: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data: Bytes,
}

/// Logout Response (RFC 7143 §11.15).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogoutResponse {
    /// See [`logout_response`].
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub time2wait: u16,
    pub time2retain: u16,
}

/// Asynchronous Message (RFC 7143 §11.9).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AsyncMessage {
    pub lun: u64,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    /// See [`async_event`].
    pub event: u8,
    pub vcode: u8,
    pub param1: u16,
    pub param2: u16,
    pub param3: u16,
    /// Sense data (without SenseLength) for a SCSI event; may be empty.
    pub sense: Bytes,
    /// iSCSI event data following the sense data.
    pub event_data: Bytes,
}

/// Reject (RFC 7143 §11.17).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// See [`reject_reason`].
    pub reason: u8,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    /// DataSN/R2TSN for SNACK rejects, else 0.
    pub data_sn: u32,
    /// The complete header of the rejected PDU.
    pub header: [u8; BHS_LEN],
}

/// Every PDU a target can send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskMgmt(TaskMgmtResponse),
    Login(LoginResponse),
    Text(TextResponse),
    DataIn(DataIn, Bytes),
    Logout(LogoutResponse),
    R2T(R2T),
    Async(AsyncMessage),
    Reject(Reject),
}

impl Response {
    pub fn opcode(&self) -> Opcode {
        match self {
            Response::NopIn(_) => Opcode::NopIn,
            Response::ScsiResponse(_) => Opcode::ScsiResponse,
            Response::TaskMgmt(_) => Opcode::TaskMgmtResponse,
            Response::Login(_) => Opcode::LoginResponse,
            Response::Text(_) => Opcode::TextResponse,
            Response::DataIn(..) => Opcode::DataIn,
            Response::Logout(_) => Opcode::LogoutResponse,
            Response::R2T(_) => Opcode::R2T,
            Response::Async(_) => Opcode::AsyncMessage,
            Response::Reject(_) => Opcode::Reject,
        }
    }

    /// Encodes the PDU (target side).
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        match self {
            Response::NopIn(p) => p.encode(out, digests),
            Response::ScsiResponse(p) => p.encode(out, digests),
            Response::TaskMgmt(p) => p.encode(out, digests),
            Response::Login(p) => p.encode(out, digests),
            Response::Text(p) => p.encode(out, digests),
            Response::DataIn(p, data) => p.encode(data, out, digests),
            Response::Logout(p) => p.encode(out, digests),
            Response::R2T(p) => p.encode(out, digests),
            Response::Async(p) => p.encode(out, digests),
            Response::Reject(p) => p.encode(out, digests),
        }
    }
}

fn put_sns(b: &mut [u8; BHS_LEN], stat_sn: u32, exp_cmd_sn: u32, max_cmd_sn: u32) {
    put32(b, 24, stat_sn);
    put32(b, 28, exp_cmd_sn);
    put32(b, 32, max_cmd_sn);
}

/// Splits `SenseLength + sense + rest` (RFC 7143 §11.4.7).
fn split_sense(data: &Bytes) -> Result<(Bytes, Bytes), PduError> {
    match data.len() {
        0 => Ok((Bytes::new(), Bytes::new())),
        1 => Err(PduError::InvalidField("SenseLength")),
        n => {
            let len = usize::from(be16(data, 0));
            if 2 + len > n {
                return Err(PduError::InvalidField("SenseLength"));
            }
            Ok((data.slice(2..2 + len), data.slice(2 + len..)))
        }
    }
}

fn sense_len_prefix(sense: &[u8]) -> [u8; 2] {
    (sense.len().min(usize::from(u16::MAX)) as u16).to_be_bytes()
}

impl NopIn {
    pub fn to_bhs(&self) -> [u8; BHS_LEN] {
        let mut b = new_bhs(Opcode::NopIn, false, 0x80, self.data.len());
        put64(&mut b, 8, self.lun);
        put32(&mut b, 16, self.itt);
        put32(&mut b, 20, self.ttt);
        put_sns(&mut b, self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn);
        b
    }
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        write_pdu(out, &self.to_bhs(), &[], &[&self.data], digests);
    }
}

impl ScsiResponse {
    pub fn to_bhs(&self) -> [u8; BHS_LEN] {
        let (f1, count) = self.residual.bits(0x04, 0x02);
        let (f2, bidi) = self.bidi_read_residual.bits(0x10, 0x08);
        let dlen = if self.sense.is_empty() {
            0
        } else {
            2 + self.sense.len()
        };
        let mut b = new_bhs(Opcode::ScsiResponse, false, 0x80 | f1 | f2, dlen);
        b[2] = self.response;
        b[3] = self.status;
        put32(&mut b, 16, self.itt);
        put32(&mut b, 20, self.snack_tag);
        put_sns(&mut b, self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn);
        put32(&mut b, 36, self.exp_data_sn);
        put32(&mut b, 40, bidi);
        put32(&mut b, 44, count);
        b
    }
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        if self.sense.is_empty() {
            write_pdu(out, &self.to_bhs(), &[], &[], digests);
        } else {
            let len = sense_len_prefix(&self.sense);
            write_pdu(out, &self.to_bhs(), &[], &[&len, &self.sense], digests);
        }
    }
}

impl DataIn {
    /// The header for a data segment of `data_len` bytes.
    pub fn to_bhs(&self, data_len: usize) -> [u8; BHS_LEN] {
        let (res, count) = match self.status {
            Some(_) => self.residual.bits(0x04, 0x02),
            None => (0, 0),
        };
        let flags = flag(self.final_bit || self.status.is_some(), 0x80)
            | flag(self.ack, 0x40)
            | res
            | flag(self.status.is_some(), 0x01);
        let mut b = new_bhs(Opcode::DataIn, false, flags, data_len);
        b[3] = self.status.unwrap_or(0);
        put64(&mut b, 8, self.lun);
        put32(&mut b, 16, self.itt);
        put32(&mut b, 20, self.ttt);
        put_sns(&mut b, self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn);
        put32(&mut b, 36, self.data_sn);
        put32(&mut b, 40, self.buffer_offset);
        put32(&mut b, 44, count);
        b
    }
    /// Encodes header, `data`, padding and digests.
    pub fn encode(&self, data: &[u8], out: &mut BytesMut, digests: Digests) {
        write_pdu(out, &self.to_bhs(data.len()), &[], &[data], digests);
    }
}

impl R2T {
    pub fn to_bhs(&self) -> [u8; BHS_LEN] {
        let mut b = new_bhs(Opcode::R2T, false, 0x80, 0);
        put64(&mut b, 8, self.lun);
        put32(&mut b, 16, self.itt);
        put32(&mut b, 20, self.ttt);
        put_sns(&mut b, self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn);
        put32(&mut b, 36, self.r2t_sn);
        put32(&mut b, 40, self.buffer_offset);
        put32(&mut b, 44, self.desired_len);
        b
    }
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        write_pdu(out, &self.to_bhs(), &[], &[], digests);
    }
}

impl TaskMgmtResponse {
    pub fn to_bhs(&self) -> [u8; BHS_LEN] {
        let mut b = new_bhs(Opcode::TaskMgmtResponse, false, 0x80, 0);
        b[2] = self.response;
        put32(&mut b, 16, self.itt);
        put_sns(&mut b, self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn);
        b
    }
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        write_pdu(out, &self.to_bhs(), &[], &[], digests);
    }
}

impl LoginResponse {
    pub fn to_bhs(&self) -> [u8; BHS_LEN] {
        let flags = login_flags(self.transit, self.cont, self.csg, self.nsg);
        let mut b = new_bhs(Opcode::LoginResponse, false, flags, self.data.len());
        b[2] = self.version_max;
        b[3] = self.version_active;
        b[8..14].copy_from_slice(&self.isid);
        put16(&mut b, 14, self.tsih);
        put32(&mut b, 16, self.itt);
        put_sns(&mut b, self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn);
        b[36] = self.status_class;
        b[37] = self.status_detail;
        b
    }
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        write_pdu(out, &self.to_bhs(), &[], &[&self.data], digests);
    }
}

impl TextResponse {
    pub fn to_bhs(&self) -> [u8; BHS_LEN] {
        let flags = flag(self.final_bit, 0x80) | flag(self.cont, 0x40);
        let mut b = new_bhs(Opcode::TextResponse, false, flags, self.data.len());
        put64(&mut b, 8, self.lun);
        put32(&mut b, 16, self.itt);
        put32(&mut b, 20, self.ttt);
        put_sns(&mut b, self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn);
        b
    }
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        write_pdu(out, &self.to_bhs(), &[], &[&self.data], digests);
    }
}

impl LogoutResponse {
    pub fn to_bhs(&self) -> [u8; BHS_LEN] {
        let mut b = new_bhs(Opcode::LogoutResponse, false, 0x80, 0);
        b[2] = self.response;
        put32(&mut b, 16, self.itt);
        put_sns(&mut b, self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn);
        put16(&mut b, 40, self.time2wait);
        put16(&mut b, 42, self.time2retain);
        b
    }
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        write_pdu(out, &self.to_bhs(), &[], &[], digests);
    }
}

impl AsyncMessage {
    fn data_len(&self) -> usize {
        if self.sense.is_empty() && self.event_data.is_empty() {
            0
        } else {
            2 + self.sense.len() + self.event_data.len()
        }
    }
    pub fn to_bhs(&self) -> [u8; BHS_LEN] {
        let mut b = new_bhs(Opcode::AsyncMessage, false, 0x80, self.data_len());
        put64(&mut b, 8, self.lun);
        put32(&mut b, 16, RESERVED_TAG);
        put_sns(&mut b, self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn);
        b[36] = self.event;
        b[37] = self.vcode;
        put16(&mut b, 38, self.param1);
        put16(&mut b, 40, self.param2);
        put16(&mut b, 42, self.param3);
        b
    }
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        let len = sense_len_prefix(&self.sense);
        let parts: &[&[u8]] = if self.data_len() == 0 {
            &[]
        } else {
            &[&len, &self.sense, &self.event_data]
        };
        write_pdu(out, &self.to_bhs(), &[], parts, digests);
    }
}

impl Reject {
    pub fn to_bhs(&self) -> [u8; BHS_LEN] {
        let mut b = new_bhs(Opcode::Reject, false, 0x80, BHS_LEN);
        b[2] = self.reason;
        put32(&mut b, 16, RESERVED_TAG);
        put_sns(&mut b, self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn);
        put32(&mut b, 36, self.data_sn);
        b
    }
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        write_pdu(out, &self.to_bhs(), &[], &[&self.header], digests);
    }
}

/// Parses a target PDU from its parts (initiator side).
pub fn parse_response(bhs: &[u8; BHS_LEN], ahs: &[u8], data: Bytes) -> Result<Response, PduError> {
    check_data_len(bhs, ahs, &data)?;
    let b = bhs;
    let lun = be64(b, 8);
    let itt = be32(b, 16);
    let (stat_sn, exp_cmd_sn, max_cmd_sn) = (be32(b, 24), be32(b, 28), be32(b, 32));
    Ok(match Opcode::from_u8(b[0]) {
        Opcode::NopIn => Response::NopIn(NopIn {
            lun,
            itt,
            ttt: be32(b, 20),
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            data,
        }),
        Opcode::ScsiResponse => {
            let (sense, _response_data) = split_sense(&data)?;
            Response::ScsiResponse(ScsiResponse {
                response: b[2],
                status: b[3],
                itt,
                snack_tag: be32(b, 20),
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
                exp_data_sn: be32(b, 36),
                residual: Residual::parse(b[1], 0x04, 0x02, be32(b, 44))?,
                bidi_read_residual: Residual::parse(b[1], 0x10, 0x08, be32(b, 40))?,
                sense,
            })
        }
        Opcode::DataIn => {
            let s = bit(b[1], 0x01);
            let hdr = DataIn {
                final_bit: bit(b[1], 0x80),
                ack: bit(b[1], 0x40),
                status: s.then_some(b[3]),
                lun,
                itt,
                ttt: be32(b, 20),
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
                data_sn: be32(b, 36),
                buffer_offset: be32(b, 40),
                residual: if s {
                    Residual::parse(b[1], 0x04, 0x02, be32(b, 44))?
                } else {
                    Residual::None
                },
            };
            if s && !hdr.final_bit {
                return Err(PduError::Protocol("Data-In with S set but not F"));
            }
            Response::DataIn(hdr, data)
        }
        Opcode::R2T => Response::R2T(R2T {
            lun,
            itt,
            ttt: be32(b, 20),
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            r2t_sn: be32(b, 36),
            buffer_offset: be32(b, 40),
            desired_len: be32(b, 44),
        }),
        Opcode::TaskMgmtResponse => Response::TaskMgmt(TaskMgmtResponse {
            response: b[2],
            itt,
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
        }),
        Opcode::LoginResponse => {
            let transit = bit(b[1], 0x80);
            let cont = bit(b[1], 0x40);
            if transit && cont {
                return Err(PduError::Protocol("login response with both T and C set"));
            }
            let csg = Stage::from_bits(b[1] >> 2).ok_or(PduError::ReservedField {
                field: "CSG",
                value: 2,
            })?;
            let nsg = match Stage::from_bits(b[1]) {
                Some(s) => s,
                None if transit => {
                    return Err(PduError::ReservedField {
                        field: "NSG",
                        value: 2,
                    })
                }
                None => csg,
            };
            let mut isid = [0u8; 6];
            isid.copy_from_slice(&b[8..14]);
            Response::Login(LoginResponse {
                transit,
                cont,
                csg,
                nsg,
                version_max: b[2],
                version_active: b[3],
                isid,
                tsih: be16(b, 14),
                itt,
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
                status_class: b[36],
                status_detail: b[37],
                data,
            })
        }
        Opcode::TextResponse => Response::Text(TextResponse {
            final_bit: bit(b[1], 0x80),
            cont: bit(b[1], 0x40),
            lun,
            itt,
            ttt: be32(b, 20),
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            data,
        }),
        Opcode::LogoutResponse => Response::Logout(LogoutResponse {
            response: b[2],
            itt,
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            time2wait: be16(b, 40),
            time2retain: be16(b, 42),
        }),
        Opcode::AsyncMessage => {
            let (sense, event_data) = split_sense(&data)?;
            Response::Async(AsyncMessage {
                lun,
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
                event: b[36],
                vcode: b[37],
                param1: be16(b, 38),
                param2: be16(b, 40),
                param3: be16(b, 42),
                sense,
                event_data,
            })
        }
        Opcode::Reject => {
            let header = <[u8; BHS_LEN]>::try_from(data.get(..BHS_LEN).unwrap_or(&[]))
                .map_err(|_| PduError::InvalidField("Reject without the rejected header"))?;
            Response::Reject(Reject {
                reason: b[2],
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
                data_sn: be32(b, 36),
                header,
            })
        }
        op => return Err(PduError::BadOpcode(op.code())),
    })
}

#[cfg(test)]
#[path = "pdu_tests.rs"]
mod tests;
