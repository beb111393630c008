//! The one command table: every operation code (and service action) this target
//! implements, with its CDB length, CDB usage mask, data direction, kind of medium
//! access and what it may do under a persistent reservation. The parser checks reserved
//! bits against the usage mask, the reservation checks read the two access columns,
//! and REPORT SUPPORTED OPERATION CODES (SPC-4 6.35) is generated from it, so the three
//! cannot drift apart.
//!
//! To add a command (REPORT TARGET PORT GROUPS): add a row here, a variant and a field parser in `cdb.rs`, and
//! an executor. Nothing is listed that is not implemented.

use crate::sense::Sense;

/// Direction of the data transfer a command may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirection {
    None,
    /// Data-in: device to initiator.
    In,
    /// Data-out: initiator to device.
    Out,
}

/// What a command does to the medium (for SPC-2 reservations and, later, range holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Does not touch the medium and never conflicts with a reservation held by
    /// another I_T nexus (SPC-2 5.5.1: INQUIRY, REPORT LUNS, REQUEST SENSE, RELEASE).
    NoConflict,
    /// Does not touch the medium, but conflicts with another nexus' reservation.
    Control,
    /// Reads the medium.
    Read,
    /// Writes the medium.
    Write,
}

/// What a command may do while a persistent reservation is held by another I_T nexus
/// (SPC-4 5.13.1, table 47 for SPC commands; SBC-3 4.17, table 13 for block
/// commands). "Holder" below means the reservation holder, or any registrant for an
/// all-registrants reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrAccess {
    /// Allowed from every I_T nexus (INQUIRY, REPORT LUNS, TEST UNIT READY, READ
    /// CAPACITY, REQUEST SENSE, RELEASE(6/10)).
    Allowed,
    /// Reads: allowed from every I_T nexus under the Write Exclusive types; under the
    /// Exclusive Access types only from the holder or, for the registrants-only and
    /// all-registrants types, from a registrant. MODE SENSE and REPORT SUPPORTED
    /// OPERATION CODES behave the same way (ALLOW COMMANDS 011b).
    Read,
    /// Writes and state changes: only from the holder (Write Exclusive, Exclusive
    /// Access) or from a registrant (registrants-only, all-registrants types).
    Write,
    /// START STOP UNIT: allowed with START=1 (no power condition), else as `Write`.
    StartStop,
    /// SPC-2 RESERVE(6/10): conflicts while any registration exists (SPC-4 5.13.3).
    LegacyReserve,
    /// PERSISTENT RESERVE IN/OUT: the OUT executor applies SPC-4 table 48 itself; both
    /// conflict while an SPC-2 reservation is held (SPC-4 5.13.3).
    PersistentReserve,
}

/// One row of the command table.
#[derive(Debug)]
pub struct CommandInfo {
    pub opcode: u8,
    /// Service action (in byte 1, bits 4:0) for opcodes that have them.
    pub service_action: Option<u16>,
    pub name: &'static str,
    /// CDB usage data (SPC-4 6.35.3): byte 0 is the opcode, then a 1 for every bit the
    /// device server evaluates; every other bit must be zero or the command fails with
    /// INVALID FIELD IN CDB. Its length is the CDB length.
    pub usage: &'static [u8],
    pub direction: DataDirection,
    /// Conflicts with SPC-2 reservations.
    pub access: Access,
    /// Conflicts with persistent reservations.
    pub pr: PrAccess,
}

impl CommandInfo {
    /// CDB length in bytes.
    pub fn cdb_len(&self) -> usize {
        self.usage.len()
    }
}

/// CONTROL byte usage: vendor bits, NACA and LINK are not supported (SAM-5 5.2).
const CTL: u8 = 0x00;

const fn row(
    opcode: u8,
    service_action: Option<u16>,
    name: &'static str,
    usage: &'static [u8],
    direction: DataDirection,
    access: Access,
    pr: PrAccess,
) -> CommandInfo {
    CommandInfo {
        opcode,
        service_action,
        name,
        usage,
        direction,
        access,
        pr,
    }
}

use Access::{Control, NoConflict, Read, Write};
use DataDirection::{In, None as NoData, Out};
use PrAccess::{
    Allowed as PrAllowed, LegacyReserve, PersistentReserve, Read as PrRead, StartStop,
    Write as PrWrite,
};

/// Every command this target implements, sorted by opcode and service action.
pub static COMMANDS: &[CommandInfo] = &[
    row(
        0x00,
        None,
        "TEST UNIT READY",
        &[0x00, 0, 0, 0, 0, CTL],
        NoData,
        Control,
        PrAllowed,
    ),
    // DESC bit.
    row(
        0x03,
        None,
        "REQUEST SENSE",
        &[0x03, 0x01, 0, 0, 0xFF, CTL],
        In,
        NoConflict,
        PrAllowed,
    ),
    row(
        0x08,
        None,
        "READ(6)",
        &[0x08, 0x1F, 0xFF, 0xFF, 0xFF, CTL],
        In,
        Read,
        PrRead,
    ),
    row(
        0x0A,
        None,
        "WRITE(6)",
        &[0x0A, 0x1F, 0xFF, 0xFF, 0xFF, CTL],
        Out,
        Write,
        PrWrite,
    ),
    // EVPD; CMDDT is obsolete and rejected.
    row(
        0x12,
        None,
        "INQUIRY",
        &[0x12, 0x01, 0xFF, 0xFF, 0xFF, CTL],
        In,
        NoConflict,
        PrAllowed,
    ),
    // PF, SP.
    row(
        0x15,
        None,
        "MODE SELECT(6)",
        &[0x15, 0x11, 0, 0, 0xFF, CTL],
        Out,
        Control,
        PrWrite,
    ),
    // Third-party reservations and extents are not supported.
    row(
        0x16,
        None,
        "RESERVE(6)",
        &[0x16, 0, 0, 0, 0, CTL],
        NoData,
        Control,
        LegacyReserve,
    ),
    row(
        0x17,
        None,
        "RELEASE(6)",
        &[0x17, 0, 0, 0, 0, CTL],
        NoData,
        NoConflict,
        PrAllowed,
    ),
    // DBD; PC + page code; subpage; allocation length.
    row(
        0x1A,
        None,
        "MODE SENSE(6)",
        &[0x1A, 0x08, 0xFF, 0xFF, 0xFF, CTL],
        In,
        Control,
        PrRead,
    ),
    // IMMED; NO_FLUSH and START (no LOEJ: not removable; no power conditions).
    row(
        0x1B,
        None,
        "START STOP UNIT",
        &[0x1B, 0x01, 0, 0, 0x05, CTL],
        NoData,
        Control,
        StartStop,
    ),
    // LBA and PMI (obsolete in SBC-3 but still evaluated).
    row(
        0x25,
        None,
        "READ CAPACITY(10)",
        &[0x25, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, CTL],
        In,
        Control,
        PrAllowed,
    ),
    // DPO, FUA, RARC, FUA_NV; group number.
    row(
        0x28,
        None,
        "READ(10)",
        &[0x28, 0x1E, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, CTL],
        In,
        Read,
        PrRead,
    ),
    // DPO, FUA, FUA_NV; group number.
    row(
        0x2A,
        None,
        "WRITE(10)",
        &[0x2A, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, CTL],
        Out,
        Write,
        PrWrite,
    ),
    // DPO, BYTCHK.
    row(
        0x2E,
        None,
        "WRITE AND VERIFY(10)",
        &[0x2E, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, CTL],
        Out,
        Write,
        PrWrite,
    ),
    // DPO, BYTCHK (2 bits, SBC-4).
    row(
        0x2F,
        None,
        "VERIFY(10)",
        &[0x2F, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, CTL],
        Out,
        Read,
        PrRead,
    ),
    // IMMED.
    row(
        0x34,
        None,
        "PRE-FETCH(10)",
        &[0x34, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, CTL],
        NoData,
        Read,
        PrRead,
    ),
    // SYNC_NV, IMMED.
    row(
        0x35,
        None,
        "SYNCHRONIZE CACHE(10)",
        &[0x35, 0x06, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, CTL],
        NoData,
        Write,
        PrWrite,
    ),
    // ANCHOR, UNMAP (ANCHOR is refused: ANC_SUP=0; UNMAP needs a thin LU).
    row(
        0x41,
        None,
        "WRITE SAME(10)",
        &[0x41, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, CTL],
        Out,
        Write,
        PrWrite,
    ),
    // UNMAP (SBC-3 5.28): ANCHOR (refused: ANC_SUP=0), group, parameter list length.
    row(
        0x42,
        None,
        "UNMAP",
        &[0x42, 0x01, 0, 0, 0, 0, 0x1F, 0xFF, 0xFF, CTL],
        Out,
        Write,
        PrWrite,
    ),
    row(
        0x55,
        None,
        "MODE SELECT(10)",
        &[0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTL],
        Out,
        Control,
        PrWrite,
    ),
    row(
        0x56,
        None,
        "RESERVE(10)",
        &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, CTL],
        NoData,
        Control,
        LegacyReserve,
    ),
    row(
        0x57,
        None,
        "RELEASE(10)",
        &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, CTL],
        NoData,
        NoConflict,
        PrAllowed,
    ),
    // LLBAA, DBD.
    row(
        0x5A,
        None,
        "MODE SENSE(10)",
        &[0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, CTL],
        In,
        Control,
        PrRead,
    ),
    // PERSISTENT RESERVE IN (SPC-4 6.15): allocation length. One row per service
    // action; REGISTER AND MOVE (OUT 07h) is not implemented.
    row(
        0x5E,
        Some(0),
        "PERSISTENT RESERVE IN/READ KEYS",
        &[0x5E, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTL],
        In,
        Control,
        PersistentReserve,
    ),
    row(
        0x5E,
        Some(1),
        "PERSISTENT RESERVE IN/READ RESERVATION",
        &[0x5E, 1, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTL],
        In,
        Control,
        PersistentReserve,
    ),
    row(
        0x5E,
        Some(2),
        "PERSISTENT RESERVE IN/REPORT CAPABILITIES",
        &[0x5E, 2, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTL],
        In,
        Control,
        PersistentReserve,
    ),
    row(
        0x5E,
        Some(3),
        "PERSISTENT RESERVE IN/READ FULL STATUS",
        &[0x5E, 3, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTL],
        In,
        Control,
        PersistentReserve,
    ),
    // PERSISTENT RESERVE OUT (SPC-4 6.16): SCOPE and TYPE, PARAMETER LIST LENGTH.
    row(
        0x5F,
        Some(0),
        "PERSISTENT RESERVE OUT/REGISTER",
        &[0x5F, 0, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, CTL],
        Out,
        Control,
        PersistentReserve,
    ),
    row(
        0x5F,
        Some(1),
        "PERSISTENT RESERVE OUT/RESERVE",
        &[0x5F, 1, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, CTL],
        Out,
        Control,
        PersistentReserve,
    ),
    row(
        0x5F,
        Some(2),
        "PERSISTENT RESERVE OUT/RELEASE",
        &[0x5F, 2, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, CTL],
        Out,
        Control,
        PersistentReserve,
    ),
    row(
        0x5F,
        Some(3),
        "PERSISTENT RESERVE OUT/CLEAR",
        &[0x5F, 3, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, CTL],
        Out,
        Control,
        PersistentReserve,
    ),
    row(
        0x5F,
        Some(4),
        "PERSISTENT RESERVE OUT/PREEMPT",
        &[0x5F, 4, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, CTL],
        Out,
        Control,
        PersistentReserve,
    ),
    row(
        0x5F,
        Some(5),
        "PERSISTENT RESERVE OUT/PREEMPT AND ABORT",
        &[0x5F, 5, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, CTL],
        Out,
        Control,
        PersistentReserve,
    ),
    row(
        0x5F,
        Some(6),
        "PERSISTENT RESERVE OUT/REGISTER AND IGNORE EXISTING KEY",
        &[0x5F, 6, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, CTL],
        Out,
        Control,
        PersistentReserve,
    ),
    row(
        0x5F,
        Some(7),
        "PERSISTENT RESERVE OUT/REGISTER AND MOVE",
        &[0x5F, 7, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, CTL],
        Out,
        Control,
        PersistentReserve,
    ),
    // EXTENDED COPY(LID1) (SPC-4 6.4): PARAMETER LIST LENGTH. Writes its copy
    // targets; xcopy.rs checks the source and destination LUs' reservations itself.
    row(
        0x83,
        Some(0x00),
        "EXTENDED COPY(LID1)",
        &[
            0x83, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL,
        ],
        Out,
        Write,
        PrWrite,
    ),
    // RECEIVE COPY RESULTS (SPC-4 6.18): LIST IDENTIFIER, ALLOCATION LENGTH.
    // RECEIVE DATA (01h) is not supported.
    row(
        0x84,
        Some(0x00),
        "RECEIVE COPY RESULTS/COPY STATUS",
        &[
            0x84, 0x00, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL,
        ],
        In,
        Control,
        PrRead,
    ),
    row(
        0x84,
        Some(0x03),
        "RECEIVE COPY RESULTS/OPERATING PARAMETERS",
        &[
            0x84, 0x03, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL,
        ],
        In,
        Control,
        PrRead,
    ),
    row(
        0x84,
        Some(0x04),
        "RECEIVE COPY RESULTS/FAILED SEGMENT DETAILS",
        &[
            0x84, 0x04, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL,
        ],
        In,
        Control,
        PrRead,
    ),
    row(
        0x88,
        None,
        "READ(16)",
        &[
            0x88, 0x1E, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x1F, CTL,
        ],
        In,
        Read,
        PrRead,
    ),
    // COMPARE AND WRITE (SBC-3 5.2): DPO, FUA, FUA_NV; NUMBER OF LOGICAL BLOCKS.
    row(
        0x89,
        None,
        "COMPARE AND WRITE",
        &[
            0x89, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0x1F, CTL,
        ],
        Out,
        Write,
        PrWrite,
    ),
    row(
        0x8A,
        None,
        "WRITE(16)",
        &[
            0x8A, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x1F, CTL,
        ],
        Out,
        Write,
        PrWrite,
    ),
    row(
        0x8B,
        None,
        "ORWRITE(16)",
        &[
            0x8B, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x1F, CTL,
        ],
        Out,
        Write,
        PrWrite,
    ),
    row(
        0x8E,
        None,
        "WRITE AND VERIFY(16)",
        &[
            0x8E, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x1F, CTL,
        ],
        Out,
        Write,
        PrWrite,
    ),
    row(
        0x8F,
        None,
        "VERIFY(16)",
        &[
            0x8F, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x1F, CTL,
        ],
        Out,
        Read,
        PrRead,
    ),
    row(
        0x90,
        None,
        "PRE-FETCH(16)",
        &[
            0x90, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x1F, CTL,
        ],
        NoData,
        Read,
        PrRead,
    ),
    row(
        0x91,
        None,
        "SYNCHRONIZE CACHE(16)",
        &[
            0x91, 0x06, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x1F, CTL,
        ],
        NoData,
        Write,
        PrWrite,
    ),
    // ANCHOR, UNMAP, NDOB.
    row(
        0x93,
        None,
        "WRITE SAME(16)",
        &[
            0x93, 0x19, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x1F, CTL,
        ],
        Out,
        Write,
        PrWrite,
    ),
    // WRITE ATOMIC(16) (SBC-4 5.48): DPO, FUA; ATOMIC BOUNDARY; TRANSFER LENGTH.
    row(
        0x9C,
        None,
        "WRITE ATOMIC(16)",
        &[
            0x9C, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x1F, CTL,
        ],
        Out,
        Write,
        PrWrite,
    ),
    // SERVICE ACTION IN(16) / READ CAPACITY(16): LBA and PMI as READ CAPACITY(10).
    row(
        0x9E,
        Some(0x10),
        "READ CAPACITY(16)",
        &[
            0x9E, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x01, CTL,
        ],
        In,
        Control,
        PrAllowed,
    ),
    // SERVICE ACTION IN(16) / GET LBA STATUS (SBC-3 5.16): starting LBA, allocation
    // length.
    row(
        0x9E,
        Some(0x12),
        "GET LBA STATUS",
        &[
            0x9E, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0,
            CTL,
        ],
        In,
        Read,
        PrRead,
    ),
    row(
        0xA0,
        None,
        "REPORT LUNS",
        &[0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL],
        In,
        NoConflict,
        PrAllowed,
    ),
    // MAINTENANCE IN / REPORT TARGET PORT GROUPS (SPC-4 6.36): PARAMETER DATA FORMAT,
    // allocation length. Allowed in every ALUA state and under every reservation.
    row(
        0xA3,
        Some(0x0A),
        "REPORT TARGET PORT GROUPS",
        &[0xA3, 0xEA, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL],
        In,
        NoConflict,
        PrAllowed,
    ),
    // MAINTENANCE IN / REPORT SUPPORTED OPERATION CODES: RCTD + reporting options.
    row(
        0xA3,
        Some(0x0C),
        "REPORT SUPPORTED OPERATION CODES",
        &[
            0xA3, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL,
        ],
        In,
        Control,
        PrRead,
    ),
    // MAINTENANCE IN / REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 6.38): REPD,
    // allocation length.
    row(
        0xA3,
        Some(0x0D),
        "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS",
        &[0xA3, 0x0D, 0x80, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL],
        In,
        Control,
        PrRead,
    ),
    row(
        0xA8,
        None,
        "READ(12)",
        &[
            0xA8, 0x1E, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, CTL,
        ],
        In,
        Read,
        PrRead,
    ),
    row(
        0xAA,
        None,
        "WRITE(12)",
        &[
            0xAA, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, CTL,
        ],
        Out,
        Write,
        PrWrite,
    ),
    row(
        0xAE,
        None,
        "WRITE AND VERIFY(12)",
        &[
            0xAE, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, CTL,
        ],
        Out,
        Write,
        PrWrite,
    ),
    row(
        0xAF,
        None,
        "VERIFY(12)",
        &[
            0xAF, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, CTL,
        ],
        Out,
        Read,
        PrRead,
    ),
];

/// Recommended command timeout reported with RCTD=1, in seconds.
const RECOMMENDED_TIMEOUT_SECS: u32 = 30;

/// True when the opcode is one whose byte 1 carries a service action.
pub fn has_service_actions(opcode: u8) -> bool {
    COMMANDS
        .iter()
        .any(|c| c.opcode == opcode && c.service_action.is_some())
}

/// The table row for (opcode, service action).
pub fn lookup(opcode: u8, service_action: Option<u16>) -> Option<&'static CommandInfo> {
    COMMANDS
        .iter()
        .find(|c| c.opcode == opcode && c.service_action == service_action)
}

/// The table row for a CDB: INVALID COMMAND OPERATION CODE for an opcode not in the
/// table, INVALID FIELD IN CDB (byte 1) for a service action not in it.
pub fn find(cdb: &[u8]) -> Result<&'static CommandInfo, Sense> {
    let Some(&opcode) = cdb.first() else {
        return Err(Sense::invalid_opcode());
    };
    if has_service_actions(opcode) {
        let sa = cdb.get(1).map(|b| u16::from(b & 0x1F));
        let Some(sa) = sa else {
            return Err(Sense::invalid_field_in_cdb(1, Some(4)));
        };
        lookup(opcode, Some(sa)).ok_or(Sense::invalid_field_in_cdb(1, Some(4)))
    } else {
        lookup(opcode, None).ok_or_else(Sense::invalid_opcode)
    }
}

/// The COMMAND TIMEOUTS descriptor (SPC-4 6.35.4).
fn timeouts_descriptor(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0x00, 0x0A, 0x00, 0x00]);
    out.extend_from_slice(&0u32.to_be_bytes()); // nominal: not specified
    out.extend_from_slice(&RECOMMENDED_TIMEOUT_SECS.to_be_bytes());
}

/// Parameter data for REPORT SUPPORTED OPERATION CODES (SPC-4 6.35), before
/// allocation-length truncation. `options` is the REPORTING OPTIONS field.
pub fn report_supported_opcodes(
    rctd: bool,
    options: u8,
    opcode: u8,
    service_action: u16,
) -> Result<Vec<u8>, Sense> {
    // Where the field pointer goes when the request does not fit the command.
    let bad_options = || Sense::invalid_field_in_cdb(2, Some(2));
    let row = match options {
        0 => return Ok(all_commands(rctd)),
        // 001b: operation code only; wrong for commands with service actions.
        1 => {
            if has_service_actions(opcode) {
                return Err(bad_options());
            }
            lookup(opcode, None)
        }
        // 010b: operation code and service action; wrong for commands without.
        2 => {
            if lookup(opcode, None).is_some() {
                return Err(bad_options());
            }
            lookup(opcode, Some(service_action))
        }
        // 011b: service action only if the opcode has them.
        3 => {
            if has_service_actions(opcode) {
                lookup(opcode, Some(service_action))
            } else {
                lookup(opcode, None)
            }
        }
        _ => return Err(bad_options()),
    };
    Ok(one_command(rctd, row))
}

fn all_commands(rctd: bool) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    for c in COMMANDS {
        out.push(c.opcode);
        out.push(0);
        out.extend_from_slice(&c.service_action.unwrap_or(0).to_be_bytes());
        out.push(0);
        let mut flags = 0;
        if rctd {
            flags |= 0x02; // CTDP
        }
        if c.service_action.is_some() {
            flags |= 0x01; // SERVACTV
        }
        out.push(flags);
        out.extend_from_slice(&(c.cdb_len() as u16).to_be_bytes());
        if rctd {
            timeouts_descriptor(&mut out);
        }
    }
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

fn one_command(rctd: bool, row: Option<&CommandInfo>) -> Vec<u8> {
    let Some(c) = row else {
        // SUPPORT 001b: not supported; no usage data.
        return vec![0, 0x01, 0, 0];
    };
    let mut out = vec![0, 0x03]; // SUPPORT 011b: supported per standard
    if rctd {
        out[1] |= 0x80; // CTDP
    }
    out.extend_from_slice(&(c.cdb_len() as u16).to_be_bytes());
    out.extend_from_slice(c.usage);
    if rctd {
        timeouts_descriptor(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_usage_starts_with_opcode() {
        for w in COMMANDS.windows(2) {
            assert!(
                (w[0].opcode, w[0].service_action) < (w[1].opcode, w[1].service_action),
                "{} before {}",
                w[0].name,
                w[1].name
            );
        }
        for c in COMMANDS {
            assert_eq!(c.usage[0], c.opcode, "{}", c.name);
            assert!(matches!(c.cdb_len(), 6 | 10 | 12 | 16), "{}", c.name);
            if let Some(sa) = c.service_action {
                assert_eq!(u16::from(c.usage[1] & 0x1F), sa, "{}", c.name);
            }
        }
    }

    #[test]
    fn find_distinguishes_opcode_and_service_action_errors() {
        assert_eq!(find(&[0x28; 10]).unwrap().name, "READ(10)");
        assert_eq!(find(&[0xC0, 0, 0, 0, 0, 0]).unwrap_err().asc, 0x20);
        assert_eq!(find(&[]).unwrap_err().asc, 0x20);
        // SERVICE ACTION IN(16) 13h is not implemented (10h and 12h are).
        let e = find(&[0x9E, 0x13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap_err();
        assert_eq!((e.asc, e.field.unwrap().byte), (0x24, 1));
    }

    #[test]
    fn all_commands_format_lists_every_row() {
        let d = report_supported_opcodes(false, 0, 0, 0).unwrap();
        assert_eq!(d.len(), 4 + 8 * COMMANDS.len());
        assert_eq!(
            u32::from_be_bytes(d[..4].try_into().unwrap()) as usize,
            d.len() - 4
        );
        // READ CAPACITY(16) carries SERVACTV and its service action.
        let rc16 = d[4..]
            .chunks(8)
            .find(|c| c[0] == 0x9E)
            .expect("READ CAPACITY(16) listed");
        assert_eq!(rc16, &[0x9E, 0, 0x00, 0x10, 0, 0x01, 0, 16]);
        let with_timeouts = report_supported_opcodes(true, 0, 0, 0).unwrap();
        assert_eq!(with_timeouts.len(), 4 + 20 * COMMANDS.len());
        assert_eq!(with_timeouts[4 + 5] & 0x02, 0x02, "CTDP set");
        assert_eq!(&with_timeouts[4 + 8..4 + 10], &[0x00, 0x0A]);
    }

    #[test]
    fn one_command_format() {
        let d = report_supported_opcodes(false, 1, 0x28, 0).unwrap();
        assert_eq!(&d[..4], &[0, 0x03, 0, 10]);
        assert_eq!(&d[4..], lookup(0x28, None).unwrap().usage);
        assert_eq!(d[5] & 0x18, 0x18, "DPO and FUA are supported");
        // Not supported.
        assert_eq!(
            report_supported_opcodes(false, 1, 0xC0, 0).unwrap(),
            vec![0, 1, 0, 0]
        );
        // Opcode with service actions asked with option 1, and the reverse.
        assert_eq!(
            report_supported_opcodes(false, 1, 0x9E, 0x10)
                .unwrap_err()
                .asc,
            0x24
        );
        assert_eq!(
            report_supported_opcodes(false, 2, 0x28, 0).unwrap_err().asc,
            0x24
        );
        let d = report_supported_opcodes(true, 2, 0x9E, 0x10).unwrap();
        assert_eq!(d[1], 0x83);
        assert_eq!(d.len(), 4 + 16 + 12);
        assert_eq!(
            report_supported_opcodes(false, 7, 0, 0).unwrap_err().asc,
            0x24
        );
    }
}
