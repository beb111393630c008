//! Copy manager: EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18), and
//! the THIRD-PARTY COPY VPD page (SPC-4 7.8.17).
//!
//! Supported: identification descriptor target descriptors (E4h) naming block device
//! LUs by NAA designator, and block device to block device segments (02h). A copy runs
//! in three steps, so that a list that cannot be carried out moves no data:
//! 1. parse the parameter list (ILLEGAL REQUEST for malformed lists, with the
//!    TOO MANY / UNSUPPORTED ... DESCRIPTOR sense codes of SPC-4 6.4.5 and 6.4.6);
//! 2. resolve every target descriptor to a logical unit **of the issuing initiator's
//!    LUN map** and check every segment: range, block sizes, reservations. A designator
//!    that names no LU visible to the initiator is COPY ABORTED, COPY TARGET DEVICE NOT
//!    REACHABLE, even when the LU exists behind another initiator's map (the hole
//!    behind CVE-2020-28374 in LIO);
//! 3. copy each segment through the stores in chunks of at most 1 MiB.
//!
//! Errors while processing segments (unreachable or out-of-range copy targets, I/O
//! errors) are COPY ABORTED with a segment pointer (SPC-4 4.5.2.4.5, SD=0: the byte of
//! the parameter list at fault). Range errors use ASC 0D/02 like LIO, because
//! libiscsi's ExtendedCopy.ValidSegDescr accepts only 00/00, 08/04 and 0D/02 there.
//!
//! Results are kept per I_T nexus for LIST ID USAGE 00b and answered by RECEIVE COPY
//! RESULTS (COPY STATUS, FAILED SEGMENT DETAILS); OPERATING PARAMETERS reports the
//! limits below.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::cdb::check_range;
use crate::commands::Access;
use crate::lu::LogicalUnit;
use crate::sense::{FieldPointer, IoKind, Sense, SenseKey};
use crate::target::LunMap;
use crate::xcopy_builder::{
    lcm, CopyManagerStatus, OperatingParameters, BLOCK_SEGMENT_LEN, BLOCK_TO_BLOCK_SEGMENT,
    HEADER_LEN, IDENT_TARGET_DESCRIPTOR, TARGET_DESCRIPTOR_LEN,
};
use crate::{Nexus, PrAccess, Request, Response, Status};

/// MAXIMUM TARGET (CSCD) DESCRIPTOR COUNT.
pub(crate) const MAX_TARGET_DESCRIPTORS: u16 = 8;
/// MAXIMUM SEGMENT DESCRIPTOR COUNT.
pub(crate) const MAX_SEGMENT_DESCRIPTORS: u16 = 64;
/// MAXIMUM DESCRIPTOR LIST LENGTH: target plus segment descriptor lists, in bytes.
/// Large enough that MAX+1 descriptors of either kind fit, so that too many
/// descriptors are reported as such (libiscsi ExtendedCopy.DescrLimits).
pub(crate) const MAX_DESCRIPTOR_LIST_LEN: u32 = 2048;
/// MAXIMUM SEGMENT LENGTH in bytes.
pub(crate) const MAX_SEGMENT_LEN: u32 = 64 << 20;
/// MAXIMUM CONCURRENT COPIES and TOTAL CONCURRENT COPIES, per logical unit.
pub(crate) const MAX_CONCURRENT_COPIES: u8 = 8;
/// Results held per I_T nexus; the oldest go first.
const HELD_PER_NEXUS: usize = 16;
/// Data moves in pieces of at most this many bytes.
const CHUNK_BYTES: u64 = 1 << 20;

/// OPERATING PARAMETERS (SPC-4 6.18.4) of this copy manager.
pub(crate) fn operating_parameters() -> OperatingParameters {
    OperatingParameters {
        snlid: true,
        max_target_descriptors: MAX_TARGET_DESCRIPTORS,
        max_segment_descriptors: MAX_SEGMENT_DESCRIPTORS,
        max_descriptor_list_len: MAX_DESCRIPTOR_LIST_LEN,
        max_segment_len: MAX_SEGMENT_LEN,
        max_inline_data_len: 0,
        held_data_limit: 0,
        max_stream_transfer_size: 0,
        total_concurrent_copies: u16::from(MAX_CONCURRENT_COPIES),
        max_concurrent_copies: MAX_CONCURRENT_COPIES,
        data_segment_granularity_log2: 0,
        inline_data_granularity_log2: 0,
        held_data_granularity_log2: 0,
        descriptor_codes: vec![BLOCK_TO_BLOCK_SEGMENT, IDENT_TARGET_DESCRIPTOR],
    }
}

// Sense data of the copy manager (SPC-4 table D.1).

fn param_field(byte: usize, bit: Option<u8>) -> FieldPointer {
    FieldPointer {
        cdb: false,
        byte: u16::try_from(byte).unwrap_or(u16::MAX),
        bit,
    }
}

fn illegal(ascq: u8, byte: usize) -> Sense {
    Sense::new(SenseKey::IllegalRequest, 0x26, ascq).with_field(param_field(byte, None))
}

/// INVALID FIELD IN PARAMETER LIST (26/00).
fn invalid_field(byte: usize, bit: Option<u8>) -> Sense {
    Sense::invalid_field_in_param_list(u16::try_from(byte).unwrap_or(u16::MAX), bit)
}

/// COPY ABORTED with a segment pointer (SD=0) at `byte` of the parameter list.
fn copy_aborted(asc: u8, ascq: u8, byte: usize) -> Sense {
    Sense::new(SenseKey::CopyAborted, asc, ascq).with_field(param_field(byte, None))
}

/// COPY ABORTED, COPY TARGET DEVICE NOT REACHABLE (0D/02).
fn unreachable(byte: usize) -> Sense {
    copy_aborted(0x0D, 0x02, byte)
}

fn be16(d: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([d[at], d[at + 1]])
}

fn be32(d: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

fn be64(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[at..at + 8]);
    u64::from_be_bytes(b)
}

/// An identification descriptor target descriptor, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TargetDescriptor {
    /// Offset in the parameter list.
    at: usize,
    nul: bool,
    device_type: u8,
    code_set: u8,
    association: u8,
    designator_type: u8,
    designator: Vec<u8>,
    block_len: u32,
}

/// A block device to block device segment descriptor, as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    at: usize,
    src: u16,
    dst: u16,
    blocks: u16,
    src_lba: u64,
    dst_lba: u64,
    dc: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Usage {
    Hold,
    Discard,
    NoListId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ParamList {
    list_id: u8,
    usage: Usage,
    targets: Vec<TargetDescriptor>,
    segments: Vec<Segment>,
}

/// Step 1: the parameter list (SPC-4 6.4.3), `p` being the bytes received up to the
/// PARAMETER LIST LENGTH (which is not zero).
fn parse(p: &[u8]) -> Result<ParamList, Sense> {
    if p.len() < HEADER_LEN {
        return Err(Sense::parameter_list_length_error());
    }
    let list_id = p[0];
    let usage = match (p[1] >> 3) & 0x03 {
        0b00 => Usage::Hold,
        0b10 => Usage::Discard,
        0b11 => Usage::NoListId,
        _ => return Err(invalid_field(1, Some(4))),
    };
    if usage == Usage::NoListId && list_id != 0 {
        return Err(invalid_field(0, None));
    }
    let tdl = usize::from(be16(p, 2));
    let sdl = be32(p, 8) as usize;
    let inline = be32(p, 12) as usize;
    // SPC-4 6.4.3.1: a descriptor list longer than the copy manager takes is a
    // parameter list length error, checked before the descriptors are counted.
    if tdl as u64 + sdl as u64 > u64::from(MAX_DESCRIPTOR_LIST_LEN) {
        return Err(Sense::parameter_list_length_error());
    }
    if inline != 0 {
        // MAXIMUM INLINE DATA LENGTH is zero.
        return Err(invalid_field(12, None));
    }
    // Truncation: the lists the header announces must all have arrived.
    if HEADER_LEN + tdl + sdl > p.len() {
        return Err(Sense::parameter_list_length_error());
    }
    let targets = parse_targets(&p[HEADER_LEN..HEADER_LEN + tdl], HEADER_LEN)?;
    let base = HEADER_LEN + tdl;
    let segments = parse_segments(&p[base..base + sdl], base)?;
    Ok(ParamList {
        list_id,
        usage,
        targets,
        segments,
    })
}

fn parse_targets(list: &[u8], base: usize) -> Result<Vec<TargetDescriptor>, Sense> {
    if list.len().div_ceil(TARGET_DESCRIPTOR_LEN) > usize::from(MAX_TARGET_DESCRIPTORS) {
        return Err(illegal(0x06, 2)); // TOO MANY TARGET DESCRIPTORS
    }
    let mut out = Vec::new();
    for (i, d) in list.chunks(TARGET_DESCRIPTOR_LEN).enumerate() {
        let at = base + i * TARGET_DESCRIPTOR_LEN;
        if d[0] != IDENT_TARGET_DESCRIPTOR {
            return Err(illegal(0x07, at)); // UNSUPPORTED TARGET DESCRIPTOR TYPE CODE
        }
        if d.len() < TARGET_DESCRIPTOR_LEN {
            // The list ends inside a descriptor.
            return Err(invalid_field(2, None));
        }
        let len = usize::from(d[7]);
        if len > 16 {
            return Err(invalid_field(at + 7, None));
        }
        // d[1] bits 7:6 LU ID TYPE: ignored (SPC-4); d[2..4] RELATIVE INITIATOR PORT
        // IDENTIFIER: any port will do.
        out.push(TargetDescriptor {
            at,
            nul: d[1] & 0x20 != 0,
            device_type: d[1] & 0x1F,
            code_set: d[4] & 0x0F,
            association: (d[5] >> 4) & 0x03,
            designator_type: d[5] & 0x0F,
            designator: d[8..8 + len].to_vec(),
            block_len: u32::from_be_bytes([0, d[29], d[30], d[31]]),
        });
    }
    Ok(out)
}

fn parse_segments(list: &[u8], base: usize) -> Result<Vec<Segment>, Sense> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < list.len() {
        let at = base + off;
        let d = &list[off..];
        if d.len() < 4 {
            return Err(invalid_field(8, None));
        }
        if out.len() == usize::from(MAX_SEGMENT_DESCRIPTORS) {
            return Err(illegal(0x08, 8)); // TOO MANY SEGMENT DESCRIPTORS
        }
        if d[0] != BLOCK_TO_BLOCK_SEGMENT {
            return Err(illegal(0x09, at)); // UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE
        }
        let len = usize::from(be16(d, 2)) + 4;
        if len != BLOCK_SEGMENT_LEN {
            return Err(invalid_field(at + 2, None));
        }
        if d.len() < len {
            return Err(invalid_field(8, None));
        }
        // d[1]: DC (bit 1); CAT (bit 0) only matters for inexact segments, which
        // are refused.
        out.push(Segment {
            at,
            dc: d[1] & 0x02 != 0,
            src: be16(d, 4),
            dst: be16(d, 6),
            blocks: be16(d, 10),
            src_lba: be64(d, 12),
            dst_lba: be64(d, 20),
        });
        off += len;
    }
    Ok(out)
}

/// Step 2a: a target descriptor → a logical unit the initiator can see.
fn resolve(map: &LunMap, t: &TargetDescriptor) -> Result<Arc<LogicalUnit>, Sense> {
    if t.nul {
        // A null device (obsolete in SPC-4) is nothing this copy manager can reach.
        return Err(unreachable(t.at + 1));
    }
    if t.device_type != 0 {
        // INCORRECT COPY TARGET DEVICE TYPE: only block devices.
        return Err(copy_aborted(0x0D, 0x03, t.at + 1));
    }
    // Only NAA designators of a logical unit identify our LUs (binary code set).
    if t.code_set != 1 || t.association != 0 || t.designator_type != 3 {
        return Err(unreachable(t.at + 4));
    }
    let lu = map
        .luns()
        .filter_map(|n| map.get(n))
        .find(|lu| lu.config().naa_bytes() == t.designator.as_slice())
        .ok_or_else(|| unreachable(t.at + 4))?;
    if t.block_len != lu.store().block_size() {
        return Err(invalid_field(t.at + 29, None));
    }
    Ok(lu.clone())
}

/// A segment ready to copy.
struct Plan {
    src: Arc<LogicalUnit>,
    dst: Arc<LogicalUnit>,
    src_lba: u64,
    dst_lba: u64,
    bytes: u64,
}

/// What went wrong, for the response and the held results.
enum Failure {
    Conflict,
    Sense(Sense),
}

impl From<Sense> for Failure {
    fn from(s: Sense) -> Failure {
        Failure::Sense(s)
    }
}

/// Step 2b: every segment checked before any data moves.
fn plan(map: &LunMap, nexus: &Nexus, list: &ParamList) -> Result<Vec<Plan>, Failure> {
    let lus = list
        .targets
        .iter()
        .map(|t| resolve(map, t))
        .collect::<Result<Vec<_>, _>>()?;
    let mut plans = Vec::with_capacity(list.segments.len());
    for s in &list.segments {
        let src = lus
            .get(usize::from(s.src))
            .ok_or_else(|| unreachable(s.at + 4))?;
        let dst = lus
            .get(usize::from(s.dst))
            .ok_or_else(|| unreachable(s.at + 6))?;
        let (sbs, dbs) = (
            u64::from(src.store().block_size()),
            u64::from(dst.store().block_size()),
        );
        let bytes = u64::from(s.blocks) * if s.dc { dbs } else { sbs };
        if !bytes.is_multiple_of(sbs) || !bytes.is_multiple_of(dbs) {
            // An inexact segment (SPC-4 6.4.6.1): not supported.
            return Err(invalid_field(s.at + 10, None).into());
        }
        if bytes > u64::from(MAX_SEGMENT_LEN) {
            return Err(invalid_field(s.at + 10, None).into());
        }
        if check_range(s.src_lba, bytes / sbs, src.store().num_blocks()).is_err() {
            return Err(unreachable(s.at + 12).into());
        }
        if check_range(s.dst_lba, bytes / dbs, dst.store().num_blocks()).is_err() {
            return Err(unreachable(s.at + 20).into());
        }
        if src.conflicts(nexus, Access::Read, PrAccess::Read)
            || dst.conflicts(nexus, Access::Write, PrAccess::Write)
        {
            return Err(Failure::Conflict);
        }
        dst.check_writable()?;
        plans.push(Plan {
            src: src.clone(),
            dst: dst.clone(),
            src_lba: s.src_lba,
            dst_lba: s.dst_lba,
            bytes,
        });
    }
    Ok(plans)
}

/// Step 3: one segment, in chunks. Within one logical unit an overlapping copy to a
/// higher address runs backwards, so that it reads no block it already wrote.
fn copy_segment(p: &Plan, copied: &mut u64) -> Result<(), Sense> {
    let (src, dst) = (p.src.store().as_ref(), p.dst.store().as_ref());
    let (sbs, dbs) = (u64::from(src.block_size()), u64::from(dst.block_size()));
    let unit = lcm(sbs, dbs);
    let chunk = (CHUNK_BYTES / unit).max(1) * unit;
    let fua = !p.dst.mode().wce;
    let mut offsets: Vec<u64> = (0..p.bytes).step_by(chunk as usize).collect();
    let (s0, d0) = (p.src_lba * sbs, p.dst_lba * dbs);
    if Arc::ptr_eq(&p.src, &p.dst) && d0 > s0 && d0 < s0 + p.bytes {
        offsets.reverse();
    }
    let mut buf = vec![0u8; chunk.min(p.bytes) as usize];
    for off in offsets {
        let n = chunk.min(p.bytes - off) as usize;
        let piece = &mut buf[..n];
        // Each side under its logical unit's shared range lock, one at a time, like
        // a READ followed by a WRITE.
        let (slba, dlba) = (p.src_lba + off / sbs, p.dst_lba + off / dbs);
        {
            let _held = p.src.lock_shared(slba, n as u64 / sbs);
            src.read(slba, piece)
                .map_err(|e| Sense::from_block_error(&e, IoKind::Read))?;
        }
        let _held = p.dst.lock_shared(dlba, n as u64 / dbs);
        dst.write(dlba, piece, fua)
            .map_err(|e| Sense::from_block_error(&e, IoKind::Write))?;
        *copied += n as u64;
    }
    Ok(())
}

/// The outcome of one EXTENDED COPY, as RECEIVE COPY RESULTS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    list_id: u8,
    status: CopyManagerStatus,
    segments: u16,
    bytes: u64,
    sense: Option<Sense>,
}

#[derive(Debug, Default)]
struct NexusCopies {
    running: Vec<u8>,
    held: VecDeque<Held>,
}

#[derive(Debug, Default)]
struct State {
    running: usize,
    nexuses: HashMap<u64, NexusCopies>,
}

/// Per logical unit: copies in progress and results held per I_T nexus.
#[derive(Debug, Default)]
pub(crate) struct CopyManager {
    state: Mutex<State>,
}

/// A copy in progress; dropping it ends it.
struct Running<'a> {
    mgr: &'a CopyManager,
    nexus: u64,
    list_id: Option<u8>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut st = self.mgr.state.lock();
        st.running -= 1;
        if let (Some(id), Some(n)) = (self.list_id, st.nexuses.get_mut(&self.nexus)) {
            if let Some(i) = n.running.iter().position(|&r| r == id) {
                n.running.swap_remove(i);
            }
        }
    }
}

impl CopyManager {
    /// Starts a copy: OPERATION IN PROGRESS (00/16) when this nexus already runs one
    /// with the list identifier, INSUFFICIENT RESOURCES (55/03) past MAXIMUM
    /// CONCURRENT COPIES.
    fn begin(&self, nexus: u64, list_id: Option<u8>) -> Result<Running<'_>, Sense> {
        let mut st = self.state.lock();
        if st.running >= usize::from(MAX_CONCURRENT_COPIES) {
            return Err(Sense::new(SenseKey::IllegalRequest, 0x55, 0x03));
        }
        if let Some(id) = list_id {
            let n = st.nexuses.entry(nexus).or_default();
            if n.running.contains(&id) {
                return Err(Sense::new(SenseKey::IllegalRequest, 0x00, 0x16));
            }
            n.running.push(id);
        }
        st.running += 1;
        Ok(Running {
            mgr: self,
            nexus,
            list_id,
        })
    }

    fn hold(&self, nexus: u64, held: Held) {
        let mut st = self.state.lock();
        let n = st.nexuses.entry(nexus).or_default();
        n.held.retain(|h| h.list_id != held.list_id);
        if n.held.len() == HELD_PER_NEXUS {
            n.held.pop_front();
        }
        n.held.push_back(held);
    }

    fn held(&self, nexus: u64, list_id: u8) -> Option<Held> {
        let st = self.state.lock();
        st.nexuses
            .get(&nexus)?
            .held
            .iter()
            .find(|h| h.list_id == list_id)
            .cloned()
    }

    fn discard(&self, nexus: u64, list_id: u8) {
        if let Some(n) = self.state.lock().nexuses.get_mut(&nexus) {
            n.held.retain(|h| h.list_id != list_id);
        }
    }

    /// The nexus is gone: so are its held results.
    pub(crate) fn nexus_gone(&self, nexus: u64) {
        let mut st = self.state.lock();
        if st.nexuses.get(&nexus).is_some_and(|n| n.running.is_empty()) {
            st.nexuses.remove(&nexus);
        }
    }
}

/// EXTENDED COPY (LID1) received by `lu` through `map` (the issuing initiator's LUNs).
pub(crate) fn extended_copy(
    lu: &LogicalUnit,
    map: &LunMap,
    req: &Request<'_>,
    param_len: u32,
) -> Response {
    // SPC-4 6.4.1: a zero PARAMETER LIST LENGTH copies nothing and is not an error.
    if param_len == 0 {
        return Response::good(Vec::new());
    }
    let n = (param_len as usize).min(req.data_out.len());
    let list = match parse(&req.data_out[..n]) {
        Ok(list) => list,
        Err(sense) => return Response::check_condition(sense),
    };
    let key = (list.usage != Usage::NoListId).then_some(list.list_id);
    let running = match lu.xcopy.begin(req.nexus.id, key) {
        Ok(r) => r,
        Err(sense) => return Response::check_condition(sense),
    };
    let mut done = 0u16;
    let mut copied = 0u64;
    let outcome = plan(map, req.nexus, &list).and_then(|plans| {
        for p in &plans {
            copy_segment(p, &mut copied).map_err(|s| {
                // A copy target failed: COPY ABORTED with its additional sense code.
                Failure::Sense(copy_aborted(
                    s.asc,
                    s.ascq,
                    list.segments[usize::from(done)].at,
                ))
            })?;
            done += 1;
        }
        Ok(())
    });
    drop(running);
    tracing::debug!(
        lun = req.lun,
        nexus = req.nexus.id,
        list_id = list.list_id,
        segments = done,
        bytes = copied,
        ok = outcome.is_ok(),
        "extended copy"
    );
    let sense = match &outcome {
        Err(Failure::Sense(s)) => Some(s.clone()),
        _ => None,
    };
    if list.usage == Usage::Hold {
        lu.xcopy.hold(
            req.nexus.id,
            Held {
                list_id: list.list_id,
                status: if outcome.is_ok() {
                    CopyManagerStatus::Completed
                } else {
                    CopyManagerStatus::CompletedWithErrors
                },
                segments: done,
                bytes: copied,
                sense: sense.clone(),
            },
        );
    }
    match outcome {
        Ok(()) => Response::good(Vec::new()),
        Err(Failure::Conflict) => Response::status(Status::ReservationConflict),
        Err(Failure::Sense(s)) => Response::check_condition(s),
    }
}

/// RECEIVE COPY RESULTS (SPC-4 6.18) before allocation-length truncation. A list
/// identifier with no held results is INVALID FIELD IN CDB (byte 2).
pub(crate) fn receive_copy_results(
    lu: &LogicalUnit,
    nexus: u64,
    action: u8,
    list_id: u8,
) -> Result<Vec<u8>, Sense> {
    let no_such_list = || Sense::invalid_field_in_cdb(2, None);
    match action {
        0x00 => {
            let h = lu.xcopy.held(nexus, list_id).ok_or_else(no_such_list)?;
            let mut d = vec![0u8; 12];
            d[3] = 8;
            d[4] = h.status.code();
            d[5..7].copy_from_slice(&h.segments.to_be_bytes());
            // TRANSFER COUNT UNITS: bytes, or the smallest power of 1024 that fits.
            let mut units = 0u8;
            let mut count = h.bytes;
            while count > u64::from(u32::MAX) {
                count >>= 10;
                units += 1;
            }
            d[7] = units;
            d[8..12].copy_from_slice(&(count as u32).to_be_bytes());
            Ok(d)
        }
        0x03 => Ok(operating_parameters().to_bytes()),
        0x04 => {
            let h = lu.xcopy.held(nexus, list_id).ok_or_else(no_such_list)?;
            // SPC-4 6.18.5: bytes 4..56 reserved, then the EXTENDED COPY status, the
            // sense data length and the sense data; discarded once returned.
            let mut d = vec![0u8; 60];
            if let Some(s) = &h.sense {
                let sense = s.fixed();
                d[56] = Status::CheckCondition.code();
                d[58..60].copy_from_slice(&(sense.len() as u16).to_be_bytes());
                d.extend_from_slice(&sense);
                lu.xcopy.discard(nexus, list_id);
            }
            let avail = (d.len() - 4) as u32;
            d[..4].copy_from_slice(&avail.to_be_bytes());
            Ok(d)
        }
        // The command table admits only 00h, 03h and 04h.
        _ => Err(Sense::invalid_field_in_cdb(1, Some(4))),
    }
}

/// THIRD-PARTY COPY VPD page body (SPC-4 7.8.17): Supported Commands, Parameter
/// Data, Supported Descriptors, Supported CSCD Descriptor IDs and General Copy
/// Operations descriptors, each padded to a multiple of 4 bytes.
pub(crate) fn third_party_copy_vpd() -> Vec<u8> {
    fn descriptor(out: &mut Vec<u8>, kind: u16, mut body: Vec<u8>) {
        while !body.len().is_multiple_of(4) {
            body.push(0);
        }
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&body);
    }
    let op = operating_parameters();
    let mut d = Vec::new();
    // Supported Commands (0001h): EXTENDED COPY LID1; RECEIVE COPY RESULTS 00h/03h/04h.
    let commands = [0x83, 1, 0x00, 0x84, 3, 0x00, 0x03, 0x04];
    let mut body = vec![commands.len() as u8];
    body.extend_from_slice(&commands);
    descriptor(&mut d, 0x0001, body);
    // Parameter Data (0004h).
    let mut body = vec![0u8; 28];
    body[4..6].copy_from_slice(&op.max_target_descriptors.to_be_bytes());
    body[6..8].copy_from_slice(&op.max_segment_descriptors.to_be_bytes());
    body[8..12].copy_from_slice(&op.max_descriptor_list_len.to_be_bytes());
    body[12..16].copy_from_slice(&op.max_inline_data_len.to_be_bytes());
    descriptor(&mut d, 0x0004, body);
    // Supported Descriptors (0008h).
    let mut body = vec![op.descriptor_codes.len() as u8];
    body.extend_from_slice(&op.descriptor_codes);
    descriptor(&mut d, 0x0008, body);
    // Supported CSCD Descriptor IDs (000Ch): none beyond list indexes.
    descriptor(&mut d, 0x000C, vec![0, 0]);
    // General Copy Operations (8001h).
    let mut body = vec![0u8; 32];
    body[0..4].copy_from_slice(&u32::from(op.total_concurrent_copies).to_be_bytes());
    body[4..8].copy_from_slice(&u32::from(op.max_concurrent_copies).to_be_bytes());
    body[8..12].copy_from_slice(&op.max_segment_len.to_be_bytes());
    body[12] = op.data_segment_granularity_log2;
    body[13] = op.inline_data_granularity_log2;
    descriptor(&mut d, 0x8001, body);
    d
}

#[cfg(test)]
#[path = "xcopy_tests.rs"]
mod tests;
