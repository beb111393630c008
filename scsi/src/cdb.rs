//! CDB parsing (SPC-4 4.2, SBC-3 5): bytes → a total, typed [`Cdb`].
//!
//! Parsing has two steps, both nom parsers over the CDB bytes with [`CdbError`], an
//! error that remembers where in the CDB it happened:
//! 1. every bit the command table's usage mask does not allow must be zero (reserved
//!    bits, unsupported flags such as RDPROTECT, NACA in the CONTROL byte);
//! 2. a per-layout field parser pulls out the typed fields and checks field values.
//!
//! Either failure becomes ILLEGAL REQUEST, INVALID FIELD IN CDB with the field pointer
//! set to the offending byte and bit. An opcode that is not in the table parses to
//! [`Cdb::Unsupported`]. Range checks against the capacity happen at execution time
//! with [`check_range`] (overflow-safe).

use nom::error::{ErrorKind, ParseError};
use nom::number::complete::{be_u16, be_u24, be_u32, be_u64, be_u8};
use nom::{IResult, Parser};

use crate::commands::{self, CommandInfo};
use crate::sense::Sense;

/// MODE SENSE page control (SPC-4 6.11.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageControl {
    Current,
    Changeable,
    Default,
    Saved,
}

/// VERIFY byte check (SBC-4 5.29, BYTCHK field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteCheck {
    /// 00b: verify the medium only; no data-out.
    None,
    /// 01b: compare the medium with the data-out buffer.
    Compare,
    /// 11b: compare every block with the single block of data-out.
    CompareOneBlock,
}

/// PERSISTENT RESERVE IN service actions (SPC-4 6.15.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrIn {
    ReadKeys,
    ReadReservation,
    ReportCapabilities,
    ReadFullStatus,
}

/// PERSISTENT RESERVE OUT service actions (SPC-4 6.16.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrOut {
    Register,
    Reserve,
    Release,
    Clear,
    Preempt,
    PreemptAndAbort,
    RegisterAndIgnore,
    RegisterAndMove,
}

/// A parsed CDB. Commands that exist in several sizes are normalised into one variant;
/// `cdb_len` says which size arrived (for field pointers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cdb {
    TestUnitReady,
    RequestSense {
        desc: bool,
        alloc: u8,
    },
    Inquiry {
        evpd: bool,
        page: u8,
        alloc: u16,
    },
    ModeSense {
        /// MODE SENSE(10) rather than (6).
        ten: bool,
        dbd: bool,
        llbaa: bool,
        pc: PageControl,
        page: u8,
        subpage: u8,
        alloc: u16,
    },
    ModeSelect {
        ten: bool,
        pf: bool,
        param_len: u16,
    },
    /// RESERVE(6) or RESERVE(10) (SPC-2), without third-party or extents.
    Reserve,
    /// RELEASE(6) or RELEASE(10) (SPC-2).
    Release,
    StartStopUnit {
        immed: bool,
        no_flush: bool,
        start: bool,
    },
    ReadCapacity10,
    ReadCapacity16 {
        alloc: u32,
    },
    /// READ(6/10/12/16). READ(6) with transfer length 0 means 256 blocks.
    Read {
        lba: u64,
        blocks: u32,
        dpo: bool,
        fua: bool,
        cdb_len: u8,
    },
    /// WRITE(6/10/12/16). WRITE(6) with transfer length 0 means 256 blocks.
    Write {
        lba: u64,
        blocks: u32,
        dpo: bool,
        fua: bool,
        cdb_len: u8,
    },
    /// VERIFY(10/12/16).
    Verify {
        lba: u64,
        blocks: u32,
        dpo: bool,
        bytchk: ByteCheck,
        cdb_len: u8,
    },
    /// WRITE AND VERIFY(10/12/16).
    WriteAndVerify {
        lba: u64,
        blocks: u32,
        dpo: bool,
        bytchk: bool,
        cdb_len: u8,
    },
    /// ORWRITE(16).
    OrWrite {
        lba: u64,
        blocks: u32,
        dpo: bool,
        fua: bool,
        cdb_len: u8,
    },
    /// WRITE SAME(10/16). `blocks == 0` means to the end of the medium. NDOB (no
    /// data-out buffer, WRITE SAME(16) only): the block is all zeroes.
    WriteSame {
        lba: u64,
        blocks: u32,
        unmap: bool,
        anchor: bool,
        ndob: bool,
        cdb_len: u8,
    },
    /// UNMAP (SBC-3 5.28).
    Unmap {
        anchor: bool,
        param_len: u16,
    },
    /// GET LBA STATUS (SBC-3 5.16).
    GetLbaStatus {
        lba: u64,
        alloc: u32,
    },
    /// COMPARE AND WRITE (SBC-3 5.2): `blocks` to compare, then the same to write.
    CompareAndWrite {
        lba: u64,
        blocks: u8,
        dpo: bool,
        fua: bool,
    },
    /// WRITE ATOMIC(16) (SBC-4 5.48).
    WriteAtomic {
        lba: u64,
        boundary: u16,
        blocks: u16,
        dpo: bool,
        fua: bool,
    },
    /// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 6.38).
    ReportSupportedTmf {
        repd: bool,
        alloc: u32,
    },
    /// SYNCHRONIZE CACHE(10/16). `blocks == 0` means to the end of the medium.
    SyncCache {
        lba: u64,
        blocks: u32,
        immed: bool,
    },
    /// PRE-FETCH(10/16). `blocks == 0` means to the end of the medium.
    PreFetch {
        lba: u64,
        blocks: u32,
        immed: bool,
        cdb_len: u8,
    },
    ReportLuns {
        select: u8,
        alloc: u32,
    },
    ReportSupportedOpcodes {
        rctd: bool,
        options: u8,
        opcode: u8,
        service_action: u16,
        alloc: u32,
    },
    PersistentReserveIn {
        action: PrIn,
        alloc: u16,
    },
    /// SCOPE and TYPE stay raw: which values are valid depends on the service action
    /// and the reservation (RELEASE with the wrong type is not an invalid CDB field).
    PersistentReserveOut {
        action: PrOut,
        scope: u8,
        pr_type: u8,
        param_len: u32,
    },
    /// MAINTENANCE IN / REPORT TARGET PORT GROUPS (SPC-4 6.36): PARAMETER DATA FORMAT
    /// 001b asks for the extended header.
    ReportTargetPortGroups {
        extended: bool,
        alloc: u32,
    },
    /// EXTENDED COPY(LID1) (SPC-4 6.4).
    ExtendedCopy {
        param_len: u32,
    },
    /// RECEIVE COPY RESULTS (SPC-4 6.18): `action` is the service action the command
    /// table admitted.
    ReceiveCopyResults {
        action: u8,
        list_id: u8,
        alloc: u32,
    },
    /// An operation code this target does not implement.
    Unsupported(u8),
}

impl Cdb {
    /// Bytes of data-out this CDB asks for, given the logical block size.
    pub fn data_out_len(&self, block_size: u32) -> u32 {
        let blocks = |n: u32| n.saturating_mul(block_size);
        match *self {
            Cdb::Write { blocks: n, .. }
            | Cdb::WriteAndVerify { blocks: n, .. }
            | Cdb::OrWrite { blocks: n, .. } => blocks(n),
            Cdb::Verify {
                blocks: n, bytchk, ..
            } => match bytchk {
                ByteCheck::None => 0,
                ByteCheck::Compare => blocks(n),
                ByteCheck::CompareOneBlock if n == 0 => 0,
                ByteCheck::CompareOneBlock => block_size,
            },
            Cdb::WriteSame { ndob: true, .. } => 0,
            Cdb::WriteSame { .. } => block_size,
            Cdb::Unmap { param_len, .. } => u32::from(param_len),
            Cdb::CompareAndWrite { blocks: n, .. } => blocks(2 * u32::from(n)),
            Cdb::WriteAtomic { blocks: n, .. } => blocks(u32::from(n)),
            Cdb::ModeSelect { param_len, .. } => u32::from(param_len),
            Cdb::PersistentReserveOut { param_len, .. } => param_len,
            Cdb::ExtendedCopy { param_len } => param_len,
            _ => 0,
        }
    }
}

/// Byte offset of the TRANSFER LENGTH (or NUMBER OF BLOCKS) field for a CDB size.
pub(crate) fn transfer_length_offset(cdb_len: u8) -> u16 {
    match cdb_len {
        6 => 4,
        10 => 7,
        12 => 6,
        _ => 10,
    }
}

/// LBA OUT OF RANGE unless `blocks` blocks at `lba` lie inside `capacity` (SBC-3
/// 4.5: the check is on LBA + transfer length, so a zero-length transfer just past
/// the end is also out of range).
pub fn check_range(lba: u64, blocks: u64, capacity: u64) -> Result<(), Sense> {
    match lba.checked_add(blocks) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(Sense::lba_out_of_range()),
    }
}

/// Where parsing failed: the number of CDB bytes left at the failing field (nom's
/// view), turned into a byte offset at the top, and the bit if known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CdbError {
    remaining: usize,
    bit: Option<u8>,
}

impl CdbError {
    fn at(input: &[u8], bit: Option<u8>) -> nom::Err<CdbError> {
        nom::Err::Failure(CdbError {
            remaining: input.len(),
            bit,
        })
    }

    fn into_sense(self, cdb_len: usize) -> Sense {
        let byte = cdb_len.saturating_sub(self.remaining);
        Sense::invalid_field_in_cdb(byte as u16, self.bit)
    }
}

impl ParseError<&[u8]> for CdbError {
    fn from_error_kind(input: &[u8], _kind: ErrorKind) -> Self {
        CdbError {
            remaining: input.len(),
            bit: None,
        }
    }

    fn append(_input: &[u8], _kind: ErrorKind, other: Self) -> Self {
        other
    }
}

type In<'a> = &'a [u8];
type PResult<'a, T> = IResult<In<'a>, T, CdbError>;

/// Step 1: every bit outside the usage mask must be zero. Byte 0 is the opcode; byte 1
/// of a service-action command holds the (already matched) service action.
fn check_usage<'a>(info: &'static CommandInfo) -> impl Fn(In<'a>) -> PResult<'a, ()> {
    move |input: In<'a>| {
        let mut rest = input;
        for (i, &usage) in info.usage.iter().enumerate() {
            let at = rest;
            let (r, b) = be_u8(rest)?;
            rest = r;
            let allowed = match i {
                0 => 0xFF,
                // The service action itself was matched by the table lookup.
                1 if info.service_action.is_some() => usage | 0x1F,
                _ => usage,
            };
            let bad = b & !allowed;
            if bad != 0 {
                return Err(CdbError::at(at, Some(7 - bad.leading_zeros() as u8)));
            }
        }
        Ok((rest, ()))
    }
}

/// Common shape of the block-access CDBs: flags byte, LBA, transfer length.
struct Access {
    flags: u8,
    lba: u64,
    blocks: u32,
    len: u8,
}

fn access6(i: In) -> PResult<Access> {
    let (i, (_op, lba, blocks, _ctl)) = (be_u8, be_u24, be_u8, be_u8).parse(i)?;
    let blocks = if blocks == 0 { 256 } else { u32::from(blocks) };
    let lba = u64::from(lba & 0x1F_FFFF);
    Ok((
        i,
        Access {
            flags: 0,
            lba,
            blocks,
            len: 6,
        },
    ))
}

fn access10(i: In) -> PResult<Access> {
    let (i, (_op, flags, lba, _group, blocks, _ctl)) =
        (be_u8, be_u8, be_u32, be_u8, be_u16, be_u8).parse(i)?;
    Ok((
        i,
        Access {
            flags,
            lba: u64::from(lba),
            blocks: u32::from(blocks),
            len: 10,
        },
    ))
}

fn access12(i: In) -> PResult<Access> {
    let (i, (_op, flags, lba, blocks, _group, _ctl)) =
        (be_u8, be_u8, be_u32, be_u32, be_u8, be_u8).parse(i)?;
    Ok((
        i,
        Access {
            flags,
            lba: u64::from(lba),
            blocks,
            len: 12,
        },
    ))
}

fn access16(i: In) -> PResult<Access> {
    let (i, (_op, flags, lba, blocks, _group, _ctl)) =
        (be_u8, be_u8, be_u64, be_u32, be_u8, be_u8).parse(i)?;
    Ok((
        i,
        Access {
            flags,
            lba,
            blocks,
            len: 16,
        },
    ))
}

fn access(i: In) -> PResult<Access> {
    match i.len() {
        6 => access6(i),
        10 => access10(i),
        12 => access12(i),
        _ => access16(i),
    }
}

const DPO: u8 = 0x10;
const FUA: u8 = 0x08;

fn read(i: In) -> PResult<Cdb> {
    let (i, a) = access(i)?;
    Ok((
        i,
        Cdb::Read {
            lba: a.lba,
            blocks: a.blocks,
            dpo: a.flags & DPO != 0,
            fua: a.flags & FUA != 0,
            cdb_len: a.len,
        },
    ))
}

fn write(i: In) -> PResult<Cdb> {
    let (i, a) = access(i)?;
    Ok((
        i,
        Cdb::Write {
            lba: a.lba,
            blocks: a.blocks,
            dpo: a.flags & DPO != 0,
            fua: a.flags & FUA != 0,
            cdb_len: a.len,
        },
    ))
}

fn orwrite(i: In) -> PResult<Cdb> {
    let (i, a) = access(i)?;
    Ok((
        i,
        Cdb::OrWrite {
            lba: a.lba,
            blocks: a.blocks,
            dpo: a.flags & DPO != 0,
            fua: a.flags & FUA != 0,
            cdb_len: a.len,
        },
    ))
}

fn verify(input: In) -> PResult<Cdb> {
    let (i, a) = access(input)?;
    let bytchk = match (a.flags >> 1) & 0x03 {
        0 => ByteCheck::None,
        1 => ByteCheck::Compare,
        3 => ByteCheck::CompareOneBlock,
        // 10b is reserved.
        _ => return Err(CdbError::at(&input[1..], Some(2))),
    };
    Ok((
        i,
        Cdb::Verify {
            lba: a.lba,
            blocks: a.blocks,
            dpo: a.flags & DPO != 0,
            bytchk,
            cdb_len: a.len,
        },
    ))
}

fn write_and_verify(i: In) -> PResult<Cdb> {
    let (i, a) = access(i)?;
    Ok((
        i,
        Cdb::WriteAndVerify {
            lba: a.lba,
            blocks: a.blocks,
            dpo: a.flags & DPO != 0,
            bytchk: a.flags & 0x02 != 0,
            cdb_len: a.len,
        },
    ))
}

fn write_same(i: In) -> PResult<Cdb> {
    let (i, a) = access(i)?;
    Ok((
        i,
        Cdb::WriteSame {
            lba: a.lba,
            blocks: a.blocks,
            unmap: a.flags & 0x08 != 0,
            anchor: a.flags & 0x10 != 0,
            // Bit 0 is reserved in WRITE SAME(10): the usage mask refused it.
            ndob: a.flags & 0x01 != 0,
            cdb_len: a.len,
        },
    ))
}

fn unmap(i: In) -> PResult<Cdb> {
    let (i, (_op, flags, _r, _group, param_len, _ctl)) =
        (be_u8, be_u8, be_u32, be_u8, be_u16, be_u8).parse(i)?;
    Ok((
        i,
        Cdb::Unmap {
            anchor: flags & 0x01 != 0,
            param_len,
        },
    ))
}

fn get_lba_status(i: In) -> PResult<Cdb> {
    let (i, (_op, _sa, lba, alloc, _r, _ctl)) =
        (be_u8, be_u8, be_u64, be_u32, be_u8, be_u8).parse(i)?;
    Ok((i, Cdb::GetLbaStatus { lba, alloc }))
}

fn compare_and_write(i: In) -> PResult<Cdb> {
    let (i, (_op, flags, lba, _r, blocks, _group, _ctl)) =
        (be_u8, be_u8, be_u64, be_u24, be_u8, be_u8, be_u8).parse(i)?;
    Ok((
        i,
        Cdb::CompareAndWrite {
            lba,
            blocks,
            dpo: flags & DPO != 0,
            fua: flags & FUA != 0,
        },
    ))
}

fn write_atomic(i: In) -> PResult<Cdb> {
    let (i, (_op, flags, lba, boundary, blocks, _group, _ctl)) =
        (be_u8, be_u8, be_u64, be_u16, be_u16, be_u8, be_u8).parse(i)?;
    Ok((
        i,
        Cdb::WriteAtomic {
            lba,
            boundary,
            blocks,
            dpo: flags & DPO != 0,
            fua: flags & FUA != 0,
        },
    ))
}

fn report_supported_tmf(i: In) -> PResult<Cdb> {
    let (i, (_op, _sa, flags, _r, alloc, _r2, _ctl)) =
        (be_u8, be_u8, be_u8, be_u24, be_u32, be_u8, be_u8).parse(i)?;
    Ok((
        i,
        Cdb::ReportSupportedTmf {
            repd: flags & 0x80 != 0,
            alloc,
        },
    ))
}

fn sync_cache(i: In) -> PResult<Cdb> {
    let (i, a) = access(i)?;
    Ok((
        i,
        Cdb::SyncCache {
            lba: a.lba,
            blocks: a.blocks,
            immed: a.flags & 0x02 != 0,
        },
    ))
}

fn prefetch(i: In) -> PResult<Cdb> {
    let (i, a) = access(i)?;
    Ok((
        i,
        Cdb::PreFetch {
            lba: a.lba,
            blocks: a.blocks,
            immed: a.flags & 0x02 != 0,
            cdb_len: a.len,
        },
    ))
}

fn inquiry(input: In) -> PResult<Cdb> {
    let (i, (_op, flags)) = (be_u8, be_u8).parse(input)?;
    let at_page = i;
    let (i, (page, alloc, _ctl)) = (be_u8, be_u16, be_u8).parse(i)?;
    let evpd = flags & 0x01 != 0;
    // SPC-4 6.6.1: PAGE CODE must be zero when EVPD is zero.
    if !evpd && page != 0 {
        return Err(CdbError::at(at_page, Some(7)));
    }
    Ok((i, Cdb::Inquiry { evpd, page, alloc }))
}

fn request_sense(i: In) -> PResult<Cdb> {
    let (i, (_op, flags, _r, _r2, alloc, _ctl)) =
        (be_u8, be_u8, be_u8, be_u8, be_u8, be_u8).parse(i)?;
    Ok((
        i,
        Cdb::RequestSense {
            desc: flags & 0x01 != 0,
            alloc,
        },
    ))
}

fn page_control(b: u8) -> PageControl {
    match b >> 6 {
        0 => PageControl::Current,
        1 => PageControl::Changeable,
        2 => PageControl::Default,
        _ => PageControl::Saved,
    }
}

fn mode_sense6(i: In) -> PResult<Cdb> {
    let (i, (_op, flags, pcp, subpage, alloc, _ctl)) =
        (be_u8, be_u8, be_u8, be_u8, be_u8, be_u8).parse(i)?;
    Ok((
        i,
        Cdb::ModeSense {
            ten: false,
            dbd: flags & 0x08 != 0,
            llbaa: false,
            pc: page_control(pcp),
            page: pcp & 0x3F,
            subpage,
            alloc: u16::from(alloc),
        },
    ))
}

fn mode_sense10(i: In) -> PResult<Cdb> {
    let (i, (_op, flags, pcp, subpage, _r, alloc, _ctl)) =
        (be_u8, be_u8, be_u8, be_u8, be_u24, be_u16, be_u8).parse(i)?;
    Ok((
        i,
        Cdb::ModeSense {
            ten: true,
            dbd: flags & 0x08 != 0,
            llbaa: flags & 0x10 != 0,
            pc: page_control(pcp),
            page: pcp & 0x3F,
            subpage,
            alloc,
        },
    ))
}

/// MODE SELECT flags byte: SP=1 asks to save pages, which we cannot (SPC-4 6.9).
fn mode_select_flags(input: In) -> PResult<bool> {
    let (i, flags) = be_u8(input)?;
    if flags & 0x01 != 0 {
        return Err(CdbError::at(input, Some(0)));
    }
    Ok((i, flags & 0x10 != 0))
}

fn mode_select6(i: In) -> PResult<Cdb> {
    let (i, (_op, pf, _r, len, _ctl)) =
        (be_u8, mode_select_flags, be_u16, be_u8, be_u8).parse(i)?;
    Ok((
        i,
        Cdb::ModeSelect {
            ten: false,
            pf,
            param_len: u16::from(len),
        },
    ))
}

fn mode_select10(i: In) -> PResult<Cdb> {
    let (i, (_op, pf, _r, _r2, len, _ctl)) =
        (be_u8, mode_select_flags, be_u24, be_u16, be_u16, be_u8).parse(i)?;
    Ok((
        i,
        Cdb::ModeSelect {
            ten: true,
            pf,
            param_len: len,
        },
    ))
}

fn start_stop_unit(i: In) -> PResult<Cdb> {
    let (i, (_op, immed, _r, _r2, flags, _ctl)) =
        (be_u8, be_u8, be_u8, be_u8, be_u8, be_u8).parse(i)?;
    Ok((
        i,
        Cdb::StartStopUnit {
            immed: immed & 0x01 != 0,
            no_flush: flags & 0x04 != 0,
            start: flags & 0x01 != 0,
        },
    ))
}

/// SBC-3 5.16: with PMI zero the LOGICAL BLOCK ADDRESS field must be zero.
fn pmi_rule(lba_at: In, lba: u64, pmi: u8) -> Result<(), nom::Err<CdbError>> {
    if pmi & 0x01 == 0 && lba != 0 {
        return Err(CdbError::at(lba_at, None));
    }
    Ok(())
}

fn read_capacity10(input: In) -> PResult<Cdb> {
    let (i, (_op, _r)) = (be_u8, be_u8).parse(input)?;
    let lba_at = i;
    let (i, (lba, _r2, pmi, _ctl)) = (be_u32, be_u16, be_u8, be_u8).parse(i)?;
    pmi_rule(lba_at, u64::from(lba), pmi)?;
    Ok((i, Cdb::ReadCapacity10))
}

fn read_capacity16(input: In) -> PResult<Cdb> {
    let (i, (_op, _sa)) = (be_u8, be_u8).parse(input)?;
    let lba_at = i;
    let (i, (lba, alloc, pmi, _ctl)) = (be_u64, be_u32, be_u8, be_u8).parse(i)?;
    pmi_rule(lba_at, lba, pmi)?;
    Ok((i, Cdb::ReadCapacity16 { alloc }))
}

fn report_luns(input: In) -> PResult<Cdb> {
    let (i, (_op, _r)) = (be_u8, be_u8).parse(input)?;
    let select_at = i;
    let (i, (select, _r2)) = (be_u8, be_u24).parse(i)?;
    let alloc_at = i;
    let (i, (alloc, _r3, _ctl)) = (be_u32, be_u8, be_u8).parse(i)?;
    // SPC-4 6.33: 00h, 01h and 02h; the administrative LU selections are not supported.
    if select > 2 {
        return Err(CdbError::at(select_at, None));
    }
    // SPC-4 6.33: an allocation length below 16 is an error.
    if alloc < 16 {
        return Err(CdbError::at(alloc_at, None));
    }
    Ok((i, Cdb::ReportLuns { select, alloc }))
}

fn report_supported_opcodes(i: In) -> PResult<Cdb> {
    let (i, (_op, _sa, flags, opcode, service_action, alloc, _r, _ctl)) =
        (be_u8, be_u8, be_u8, be_u8, be_u16, be_u32, be_u8, be_u8).parse(i)?;
    Ok((
        i,
        Cdb::ReportSupportedOpcodes {
            rctd: flags & 0x80 != 0,
            options: flags & 0x07,
            opcode,
            service_action,
            alloc,
        },
    ))
}

fn report_target_port_groups(i: In) -> PResult<Cdb> {
    let (i, (_op, format_sa, _r, alloc, _r2, _ctl)) =
        (be_u8, be_u8, be_u32, be_u32, be_u8, be_u8).parse(i)?;
    // PARAMETER DATA FORMAT: 000b length only, 001b extended header.
    let format = format_sa >> 5;
    if format > 1 {
        return Err(nom::Err::Failure(CdbError {
            remaining: 11,
            bit: Some(7),
        }));
    }
    Ok((
        i,
        Cdb::ReportTargetPortGroups {
            extended: format == 1,
            alloc,
        },
    ))
}

fn persistent_reserve_in(i: In) -> PResult<Cdb> {
    let (i, (_op, sa, _r, _r2, alloc, _ctl)) =
        (be_u8, be_u8, be_u32, be_u8, be_u16, be_u8).parse(i)?;
    // The table lookup admitted only service actions 0..=3.
    let action = match sa & 0x1F {
        0 => PrIn::ReadKeys,
        1 => PrIn::ReadReservation,
        2 => PrIn::ReportCapabilities,
        _ => PrIn::ReadFullStatus,
    };
    Ok((i, Cdb::PersistentReserveIn { action, alloc }))
}

fn persistent_reserve_out(i: In) -> PResult<Cdb> {
    let (i, (_op, sa, scope_type, _r, param_len, _ctl)) =
        (be_u8, be_u8, be_u8, be_u16, be_u32, be_u8).parse(i)?;
    // The table lookup admitted only service actions 0..=7.
    let action = match sa & 0x1F {
        0 => PrOut::Register,
        1 => PrOut::Reserve,
        2 => PrOut::Release,
        3 => PrOut::Clear,
        4 => PrOut::Preempt,
        5 => PrOut::PreemptAndAbort,
        6 => PrOut::RegisterAndIgnore,
        _ => PrOut::RegisterAndMove,
    };
    Ok((
        i,
        Cdb::PersistentReserveOut {
            action,
            scope: scope_type >> 4,
            pr_type: scope_type & 0x0F,
            param_len,
        },
    ))
}

fn extended_copy(i: In) -> PResult<Cdb> {
    let (i, (_op, _sa, _r, param_len, _r2, _ctl)) =
        (be_u8, be_u8, be_u64, be_u32, be_u8, be_u8).parse(i)?;
    Ok((i, Cdb::ExtendedCopy { param_len }))
}

fn receive_copy_results(i: In) -> PResult<Cdb> {
    let (i, (_op, sa, list_id, _r, _r2, alloc, _r3, _ctl)) =
        (be_u8, be_u8, be_u8, be_u32, be_u24, be_u32, be_u8, be_u8).parse(i)?;
    Ok((
        i,
        Cdb::ReceiveCopyResults {
            action: sa & 0x1F,
            list_id,
            alloc,
        },
    ))
}

fn no_fields(cdb: Cdb) -> impl Fn(In) -> PResult<Cdb> {
    move |i: In| Ok((&i[i.len()..], cdb.clone()))
}

/// Step 2: the field parser for a table row.
fn fields<'a>(info: &CommandInfo, body: In<'a>) -> PResult<'a, Cdb> {
    match info.opcode {
        0x00 => no_fields(Cdb::TestUnitReady)(body),
        0x03 => request_sense(body),
        0x08 | 0x28 | 0xA8 | 0x88 => read(body),
        0x0A | 0x2A | 0xAA | 0x8A => write(body),
        0x12 => inquiry(body),
        0x15 => mode_select6(body),
        0x55 => mode_select10(body),
        0x16 | 0x56 => no_fields(Cdb::Reserve)(body),
        0x17 | 0x57 => no_fields(Cdb::Release)(body),
        0x1A => mode_sense6(body),
        0x5A => mode_sense10(body),
        0x5E => persistent_reserve_in(body),
        0x5F => persistent_reserve_out(body),
        0x1B => start_stop_unit(body),
        0x25 => read_capacity10(body),
        0x2E | 0xAE | 0x8E => write_and_verify(body),
        0x2F | 0xAF | 0x8F => verify(body),
        0x34 | 0x90 => prefetch(body),
        0x35 | 0x91 => sync_cache(body),
        0x41 | 0x93 => write_same(body),
        0x8B => orwrite(body),
        0x42 => unmap(body),
        0x89 => compare_and_write(body),
        0x9C => write_atomic(body),
        0x9E if info.service_action == Some(0x12) => get_lba_status(body),
        0x9E => read_capacity16(body),
        0xA0 => report_luns(body),
        0xA3 if info.service_action == Some(0x0D) => report_supported_tmf(body),
        0xA3 if info.service_action == Some(0x0A) => report_target_port_groups(body),
        0xA3 => report_supported_opcodes(body),
        0x83 => extended_copy(body),
        0x84 => receive_copy_results(body),
        op => no_fields(Cdb::Unsupported(op))(body),
    }
}

/// Parses a CDB. Never panics, whatever the input (fuzzed in `fuzz/`).
///
/// Bytes past the opcode's CDB length are ignored (iSCSI pads CDBs to 16 bytes).
pub fn parse_cdb(cdb: &[u8]) -> Result<Cdb, Sense> {
    let Some(&opcode) = cdb.first() else {
        return Err(Sense::invalid_opcode());
    };
    let info = match commands::find(cdb) {
        Ok(info) => info,
        Err(sense) if sense.asc == 0x20 => return Ok(Cdb::Unsupported(opcode)),
        Err(sense) => return Err(sense),
    };
    let n = info.cdb_len();
    if cdb.len() < n {
        // Shorter than the opcode's CDB: point at the first missing byte.
        return Err(Sense::invalid_field_in_cdb(cdb.len() as u16, None));
    }
    let body = &cdb[..n];
    let parsed = check_usage(info)
        .parse(body)
        .and_then(|_| fields(info, body));
    match parsed {
        Ok((_, cdb)) => Ok(cdb),
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(e.into_sense(n)),
        Err(nom::Err::Incomplete(_)) => Err(Sense::invalid_field_in_cdb(0, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sense::FieldPointer;

    fn field(e: &Sense) -> (u8, u16, Option<u8>) {
        let f = e.field.expect("field pointer");
        assert!(f.cdb);
        (e.asc, f.byte, f.bit)
    }

    #[test]
    fn read6_zero_length_means_256_blocks() {
        assert_eq!(
            parse_cdb(&[0x08, 0x01, 0x02, 0x03, 0x00, 0x00]).unwrap(),
            Cdb::Read {
                lba: 0x010203,
                blocks: 256,
                dpo: false,
                fua: false,
                cdb_len: 6
            }
        );
        // LBA is 21 bits; bits 7:5 of byte 1 are reserved.
        let e = parse_cdb(&[0x08, 0x20, 0, 0, 1, 0]).unwrap_err();
        assert_eq!(field(&e), (0x24, 1, Some(5)));
    }

    #[test]
    fn read10_golden() {
        let cdb = [0x28, 0x18, 0x00, 0x00, 0x12, 0x34, 0x00, 0x00, 0x08, 0x00];
        assert_eq!(
            parse_cdb(&cdb).unwrap(),
            Cdb::Read {
                lba: 0x1234,
                blocks: 8,
                dpo: true,
                fua: true,
                cdb_len: 10
            }
        );
        // Zero blocks is a valid READ(10) that transfers nothing.
        let cdb = [0x28, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        assert!(matches!(parse_cdb(&cdb), Ok(Cdb::Read { blocks: 0, .. })));
    }

    #[test]
    fn padding_after_the_cdb_is_ignored() {
        let mut cdb = [0xFFu8; 16];
        cdb[..10].copy_from_slice(&[0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0]);
        assert!(matches!(parse_cdb(&cdb), Ok(Cdb::Read { lba: 1, .. })));
    }

    #[test]
    fn rdprotect_is_an_invalid_field() {
        for prot in 1u8..8 {
            let cdb = [0x28, prot << 5, 0, 0, 0, 0, 0, 0, 1, 0];
            let e = parse_cdb(&cdb).unwrap_err();
            assert_eq!(e.asc, 0x24);
            assert_eq!(e.field.unwrap().byte, 1);
            assert!(e.field.unwrap().bit.unwrap() >= 5);
        }
    }

    #[test]
    fn naca_in_control_byte_is_rejected() {
        let e = parse_cdb(&[0x00, 0, 0, 0, 0, 0x04]).unwrap_err();
        assert_eq!(
            e.field,
            Some(FieldPointer {
                cdb: true,
                byte: 5,
                bit: Some(2)
            })
        );
        let e = parse_cdb(&[0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0x04]).unwrap_err();
        assert_eq!(field(&e), (0x24, 15, Some(2)));
    }

    #[test]
    fn write16_golden() {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x8A;
        cdb[1] = 0x08;
        cdb[2..10].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        cdb[10..14].copy_from_slice(&0x10u32.to_be_bytes());
        cdb[14] = 0x03; // group number
        assert_eq!(
            parse_cdb(&cdb).unwrap(),
            Cdb::Write {
                lba: 0x0102_0304_0506_0708,
                blocks: 16,
                dpo: false,
                fua: true,
                cdb_len: 16
            }
        );
    }

    #[test]
    fn verify_bytchk_values() {
        let v = |b1: u8| parse_cdb(&[0x2F, b1, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert!(matches!(
            v(0),
            Ok(Cdb::Verify {
                bytchk: ByteCheck::None,
                ..
            })
        ));
        assert!(matches!(
            v(0x02),
            Ok(Cdb::Verify {
                bytchk: ByteCheck::Compare,
                ..
            })
        ));
        assert!(matches!(
            v(0x06),
            Ok(Cdb::Verify {
                bytchk: ByteCheck::CompareOneBlock,
                ..
            })
        ));
        assert_eq!(field(&v(0x04).unwrap_err()), (0x24, 1, Some(2)));
        // VRPROTECT.
        assert_eq!(field(&v(0x20).unwrap_err()), (0x24, 1, Some(5)));
    }

    #[test]
    fn inquiry_page_without_evpd_is_invalid() {
        let e = parse_cdb(&[0x12, 0x00, 0x80, 0x00, 0xFF, 0x00]).unwrap_err();
        assert_eq!(field(&e), (0x24, 2, Some(7)));
        assert_eq!(
            parse_cdb(&[0x12, 0x01, 0x83, 0x01, 0x00, 0x00]).unwrap(),
            Cdb::Inquiry {
                evpd: true,
                page: 0x83,
                alloc: 256
            }
        );
        // CMDDT (obsolete) is rejected.
        assert_eq!(
            field(&parse_cdb(&[0x12, 0x02, 0, 0, 36, 0]).unwrap_err()).1,
            1
        );
    }

    #[test]
    fn mode_sense_and_select() {
        assert_eq!(
            parse_cdb(&[0x1A, 0x08, 0x7F, 0x00, 0xFF, 0x00]).unwrap(),
            Cdb::ModeSense {
                ten: false,
                dbd: true,
                llbaa: false,
                pc: PageControl::Changeable,
                page: 0x3F,
                subpage: 0,
                alloc: 255
            }
        );
        let ms10 = [0x5A, 0x10, 0xCA, 0x00, 0, 0, 0, 0x01, 0x00, 0];
        assert!(matches!(
            parse_cdb(&ms10),
            Ok(Cdb::ModeSense {
                ten: true,
                llbaa: true,
                pc: PageControl::Saved,
                page: 0x0A,
                alloc: 256,
                ..
            })
        ));
        // SP=1: saving pages is not supported.
        assert_eq!(
            field(&parse_cdb(&[0x15, 0x11, 0, 0, 24, 0]).unwrap_err()),
            (0x24, 1, Some(0))
        );
        assert_eq!(
            parse_cdb(&[0x55, 0x10, 0, 0, 0, 0, 0, 0x01, 0x02, 0]).unwrap(),
            Cdb::ModeSelect {
                ten: true,
                pf: true,
                param_len: 0x102
            }
        );
    }

    #[test]
    fn service_action_commands() {
        let mut rc16 = [0u8; 16];
        rc16[0] = 0x9E;
        rc16[1] = 0x10;
        rc16[13] = 32;
        assert_eq!(parse_cdb(&rc16).unwrap(), Cdb::ReadCapacity16 { alloc: 32 });
        rc16[9] = 1; // LBA without PMI
        assert_eq!(field(&parse_cdb(&rc16).unwrap_err()), (0x24, 2, None));
        rc16[1] = 0x12; // GET LBA STATUS: LBA in bytes 2..10, allocation length 10..14
        assert_eq!(
            parse_cdb(&rc16).unwrap(),
            Cdb::GetLbaStatus { lba: 1, alloc: 32 }
        );
        rc16[1] = 0x13; // not implemented
        assert_eq!(field(&parse_cdb(&rc16).unwrap_err()), (0x24, 1, Some(4)));
        let rsoc = [0xA3, 0x0C, 0x81, 0x28, 0, 0, 0, 0, 0x10, 0, 0, 0];
        assert_eq!(
            parse_cdb(&rsoc).unwrap(),
            Cdb::ReportSupportedOpcodes {
                rctd: true,
                options: 1,
                opcode: 0x28,
                service_action: 0,
                alloc: 0x1000
            }
        );
    }

    #[test]
    fn persistent_reserve_golden() {
        assert_eq!(
            parse_cdb(&[0x5E, 0x03, 0, 0, 0, 0, 0, 0x40, 0x00, 0]).unwrap(),
            Cdb::PersistentReserveIn {
                action: PrIn::ReadFullStatus,
                alloc: 0x4000
            }
        );
        assert_eq!(
            field(&parse_cdb(&[0x5E, 0x04, 0, 0, 0, 0, 0, 0, 8, 0]).unwrap_err()),
            (0x24, 1, Some(4))
        );
        assert_eq!(
            field(&parse_cdb(&[0x5E, 0x00, 1, 0, 0, 0, 0, 0, 8, 0]).unwrap_err()),
            (0x24, 2, Some(0))
        );
        assert_eq!(
            parse_cdb(&[0x5F, 0x01, 0x03, 0, 0, 0, 0, 0, 24, 0]).unwrap(),
            Cdb::PersistentReserveOut {
                action: PrOut::Reserve,
                scope: 0,
                pr_type: 3,
                param_len: 24
            }
        );
        assert_eq!(
            parse_cdb(&[0x5F, 0x07, 0x01, 0, 0, 0, 0, 0, 76, 0]).unwrap(),
            Cdb::PersistentReserveOut {
                action: PrOut::RegisterAndMove,
                scope: 0,
                pr_type: 1,
                param_len: 76
            }
        );
        assert_eq!(
            field(&parse_cdb(&[0x5F, 0x08, 0, 0, 0, 0, 0, 0, 24, 0]).unwrap_err()),
            (0x24, 1, Some(4))
        );
        let prout = parse_cdb(&[0x5F, 0x06, 0, 0, 0, 0, 0, 0, 24, 0]).unwrap();
        assert_eq!(prout.data_out_len(512), 24);
    }

    #[test]
    fn report_luns_checks() {
        let ok = [0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0];
        assert_eq!(
            parse_cdb(&ok).unwrap(),
            Cdb::ReportLuns {
                select: 0,
                alloc: 16
            }
        );
        let short = [0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0];
        assert_eq!(field(&parse_cdb(&short).unwrap_err()), (0x24, 6, None));
        let bad_select = [0xA0, 0, 3, 0, 0, 0, 0, 0, 0, 16, 0, 0];
        assert_eq!(field(&parse_cdb(&bad_select).unwrap_err()), (0x24, 2, None));
    }

    #[test]
    fn unknown_opcodes_are_a_variant_not_an_error() {
        assert_eq!(parse_cdb(&[0xC0; 16]).unwrap(), Cdb::Unsupported(0xC0));
        assert_eq!(parse_cdb(&[0x3C; 10]).unwrap(), Cdb::Unsupported(0x3C));
        assert_eq!(parse_cdb(&[]).unwrap_err().asc, 0x20);
    }

    #[test]
    fn short_cdb_is_an_error_not_a_panic() {
        for len in 0..16 {
            for op in [0x28u8, 0x88, 0x9E, 0xA3, 0x12, 0x1A, 0x5A] {
                let mut cdb = vec![0u8; len];
                if len > 0 {
                    cdb[0] = op;
                }
                let _ = parse_cdb(&cdb);
            }
        }
        let e = parse_cdb(&[0x28, 0, 0]).unwrap_err();
        assert_eq!(field(&e), (0x24, 3, None));
    }

    #[test]
    fn every_byte_pattern_of_small_cdbs_is_total() {
        // A cheap exhaustive-ish sweep: every opcode with a few fill patterns.
        for op in 0..=255u8 {
            for fill in [0x00u8, 0x01, 0x80, 0xFF] {
                let mut cdb = [fill; 16];
                cdb[0] = op;
                for len in [1usize, 6, 10, 12, 16] {
                    let _ = parse_cdb(&cdb[..len]);
                }
            }
        }
    }

    #[test]
    fn range_checks_are_overflow_safe() {
        assert!(check_range(0, 10, 10).is_ok());
        assert!(check_range(9, 1, 10).is_ok());
        assert!(check_range(10, 0, 10).is_ok());
        assert_eq!(check_range(11, 0, 10), Err(Sense::lba_out_of_range()));
        assert_eq!(check_range(9, 2, 10), Err(Sense::lba_out_of_range()));
        assert_eq!(check_range(u64::MAX, 1, 10), Err(Sense::lba_out_of_range()));
        assert_eq!(check_range(u64::MAX, 0, 10), Err(Sense::lba_out_of_range()));
        assert_eq!(
            check_range(1 << 63, u64::MAX, u64::MAX),
            Err(Sense::lba_out_of_range())
        );
    }

    #[test]
    fn data_out_lengths() {
        let w = parse_cdb(&[0x2A, 0, 0, 0, 0, 0, 0, 0, 2, 0]).unwrap();
        assert_eq!(w.data_out_len(512), 1024);
        let v = parse_cdb(&[0x2F, 0, 0, 0, 0, 0, 0, 0, 2, 0]).unwrap();
        assert_eq!(v.data_out_len(512), 0);
        let ws = parse_cdb(&[0x41, 0, 0, 0, 0, 0, 0, 0, 9, 0]).unwrap();
        assert_eq!(ws.data_out_len(4096), 4096);
    }
}
