//! Sense data (SPC-4 4.5): the typed error every parse and execute step returns.
//!
//! A [`Sense`] is a sense key, an additional sense code and qualifier, and optionally
//! the INFORMATION field and a sense-key-specific field pointer. The one mapping to
//! bytes lives here: [`Sense::fixed`] (response code 70h) and [`Sense::descriptor`]
//! (response code 72h). Back-end errors become sense data in one place,
//! [`Sense::from_block_error`].

use std::fmt;

use blockdev::BlockError;

/// Sense keys (SPC-4 table 27).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SenseKey {
    NoSense = 0x0,
    RecoveredError = 0x1,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    BlankCheck = 0x8,
    VendorSpecific = 0x9,
    CopyAborted = 0xA,
    AbortedCommand = 0xB,
    VolumeOverflow = 0xD,
    Miscompare = 0xE,
    Completed = 0xF,
}

impl SenseKey {
    /// The 4-bit code on the wire.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The sense key with this 4-bit code (0Ch, obsolete, has none).
    pub fn from_code(code: u8) -> Option<SenseKey> {
        use SenseKey::*;
        Some(match code & 0x0f {
            0x0 => NoSense,
            0x1 => RecoveredError,
            0x2 => NotReady,
            0x3 => MediumError,
            0x4 => HardwareError,
            0x5 => IllegalRequest,
            0x6 => UnitAttention,
            0x7 => DataProtect,
            0x8 => BlankCheck,
            0x9 => VendorSpecific,
            0xA => CopyAborted,
            0xB => AbortedCommand,
            0xD => VolumeOverflow,
            0xE => Miscompare,
            0xF => Completed,
            _ => return None,
        })
    }
}

/// Sense-key-specific field pointer (SPC-4 4.5.2.4.2): which CDB or parameter-list byte
/// (and optionally bit) was invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldPointer {
    /// C/D: true when the field is in the CDB, false in the parameter list.
    pub cdb: bool,
    /// Byte offset of the field.
    pub byte: u16,
    /// Bit of the field's most significant bit within that byte, when known (BPV).
    pub bit: Option<u8>,
}

/// Sense data: what went wrong with a command.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
    /// INFORMATION field (e.g. the offset of the first miscompare).
    pub info: Option<u64>,
    /// Sense-key-specific field pointer (SKSV=1).
    pub field: Option<FieldPointer>,
}

/// Whether a back-end error happened while reading, writing or neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    Read,
    Write,
    Other,
}

/// Names of the additional sense codes this crate produces (SPC-4 table D.1), for
/// messages and logs.
const ASC_NAMES: &[(u8, u8, &str)] = &[
    (0x00, 0x00, "NO ADDITIONAL SENSE INFORMATION"),
    (0x00, 0x16, "OPERATION IN PROGRESS"),
    (0x04, 0x00, "LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE"),
    (0x04, 0x01, "LOGICAL UNIT IS IN PROCESS OF BECOMING READY"),
    (
        0x04,
        0x02,
        "LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED",
    ),
    (
        0x04,
        0x03,
        "LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED",
    ),
    (
        0x04,
        0x0A,
        "LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION",
    ),
    (0x0C, 0x00, "WRITE ERROR"),
    (0x0D, 0x02, "COPY TARGET DEVICE NOT REACHABLE"),
    (0x0D, 0x03, "INCORRECT COPY TARGET DEVICE TYPE"),
    (0x0E, 0x03, "INVALID FIELD IN COMMAND INFORMATION UNIT"),
    (0x11, 0x00, "UNRECOVERED READ ERROR"),
    (0x1A, 0x00, "PARAMETER LIST LENGTH ERROR"),
    (0x1D, 0x00, "MISCOMPARE DURING VERIFY OPERATION"),
    (0x20, 0x00, "INVALID COMMAND OPERATION CODE"),
    (0x21, 0x00, "LOGICAL BLOCK ADDRESS OUT OF RANGE"),
    (0x24, 0x00, "INVALID FIELD IN CDB"),
    (0x25, 0x00, "LOGICAL UNIT NOT SUPPORTED"),
    (0x26, 0x00, "INVALID FIELD IN PARAMETER LIST"),
    (0x26, 0x04, "INVALID RELEASE OF PERSISTENT RESERVATION"),
    (0x26, 0x06, "TOO MANY TARGET DESCRIPTORS"),
    (0x26, 0x07, "UNSUPPORTED TARGET DESCRIPTOR TYPE CODE"),
    (0x26, 0x08, "TOO MANY SEGMENT DESCRIPTORS"),
    (0x26, 0x09, "UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE"),
    (0x27, 0x00, "WRITE PROTECTED"),
    (0x27, 0x02, "SOFTWARE WRITE PROTECTED"),
    (0x27, 0x07, "SPACE ALLOCATION FAILED WRITE PROTECT"),
    (0x29, 0x00, "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED"),
    (0x29, 0x03, "BUS DEVICE RESET FUNCTION OCCURRED"),
    (0x29, 0x07, "I_T NEXUS LOSS OCCURRED"),
    (0x2A, 0x01, "MODE PARAMETERS CHANGED"),
    (0x2A, 0x03, "RESERVATIONS PREEMPTED"),
    (0x2A, 0x04, "RESERVATIONS RELEASED"),
    (0x2A, 0x05, "REGISTRATIONS PREEMPTED"),
    (0x2A, 0x09, "CAPACITY DATA HAS CHANGED"),
    (0x39, 0x00, "SAVING PARAMETERS NOT SUPPORTED"),
    (0x3A, 0x00, "MEDIUM NOT PRESENT"),
    (0x3F, 0x0E, "REPORTED LUNS DATA HAS CHANGED"),
    (0x44, 0x00, "INTERNAL TARGET FAILURE"),
    (0x55, 0x03, "INSUFFICIENT RESOURCES"),
];

impl Sense {
    /// A sense with no INFORMATION and no field pointer.
    pub const fn new(key: SenseKey, asc: u8, ascq: u8) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            info: None,
            field: None,
        }
    }

    /// Adds the INFORMATION field.
    pub fn with_info(mut self, info: u64) -> Sense {
        self.info = Some(info);
        self
    }

    /// Adds a field pointer.
    pub fn with_field(mut self, field: FieldPointer) -> Sense {
        self.field = Some(field);
        self
    }

    /// NO SENSE (REQUEST SENSE with nothing to report).
    pub const fn no_sense() -> Sense {
        Sense::new(SenseKey::NoSense, 0x00, 0x00)
    }

    /// ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (20/00).
    pub fn invalid_opcode() -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x20, 0x00).with_field(FieldPointer {
            cdb: true,
            byte: 0,
            bit: None,
        })
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN CDB (24/00) pointing at `byte` (and `bit`).
    pub fn invalid_field_in_cdb(byte: u16, bit: Option<u8>) -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x24, 0x00).with_field(FieldPointer {
            cdb: true,
            byte,
            bit,
        })
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST (26/00) pointing at `byte`.
    pub fn invalid_field_in_param_list(byte: u16, bit: Option<u8>) -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x26, 0x00).with_field(FieldPointer {
            cdb: false,
            byte,
            bit,
        })
    }

    /// ILLEGAL REQUEST, INVALID RELEASE OF PERSISTENT RESERVATION (26/04): the holder
    /// released with a scope or type that is not the reservation's (SPC-4 5.13.11.2).
    pub const fn invalid_release() -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x26, 0x04)
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN COMMAND INFORMATION UNIT (0E/03).
    pub const fn invalid_field_in_iu() -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x0E, 0x03)
    }

    /// ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE (21/00).
    pub const fn lba_out_of_range() -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x21, 0x00)
    }

    /// ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED (25/00).
    pub const fn lun_not_supported() -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x25, 0x00)
    }

    /// ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR (1A/00).
    pub const fn parameter_list_length_error() -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x1A, 0x00)
    }

    /// ILLEGAL REQUEST, SAVING PARAMETERS NOT SUPPORTED (39/00).
    pub const fn saving_params_not_supported() -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x39, 0x00)
    }

    /// DATA PROTECT, WRITE PROTECTED (27/00).
    pub const fn write_protected() -> Sense {
        Sense::new(SenseKey::DataProtect, 0x27, 0x00)
    }

    /// DATA PROTECT, SOFTWARE WRITE PROTECTED (27/02): control mode page SWP=1.
    pub const fn software_write_protected() -> Sense {
        Sense::new(SenseKey::DataProtect, 0x27, 0x02)
    }

    /// DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT (27/07).
    pub const fn space_allocation_failed() -> Sense {
        Sense::new(SenseKey::DataProtect, 0x27, 0x07)
    }

    /// MEDIUM ERROR, UNRECOVERED READ ERROR (11/00).
    pub const fn unrecovered_read_error() -> Sense {
        Sense::new(SenseKey::MediumError, 0x11, 0x00)
    }

    /// MEDIUM ERROR, WRITE ERROR (0C/00).
    pub const fn write_error() -> Sense {
        Sense::new(SenseKey::MediumError, 0x0C, 0x00)
    }

    /// MISCOMPARE, MISCOMPARE DURING VERIFY OPERATION (1D/00); INFORMATION is the offset
    /// of the first byte that differed.
    pub fn miscompare(offset: u64) -> Sense {
        Sense::new(SenseKey::Miscompare, 0x1D, 0x00).with_info(offset)
    }

    /// HARDWARE ERROR, INTERNAL TARGET FAILURE (44/00).
    pub const fn internal_target_failure() -> Sense {
        Sense::new(SenseKey::HardwareError, 0x44, 0x00)
    }

    /// NOT READY, LOGICAL UNIT IS IN PROCESS OF BECOMING READY (04/01).
    pub const fn not_ready_becoming_ready() -> Sense {
        Sense::new(SenseKey::NotReady, 0x04, 0x01)
    }

    /// NOT READY, LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED (04/03).
    pub const fn not_ready_manual_intervention() -> Sense {
        Sense::new(SenseKey::NotReady, 0x04, 0x03)
    }

    /// NOT READY, LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION
    /// (04/0A): this path cannot serve the command right now (e.g. a persistent
    /// reservation change that the cluster cannot commit); a multipath host retries,
    /// possibly through another path.
    pub const fn not_ready_state_transition() -> Sense {
        Sense::new(SenseKey::NotReady, 0x04, 0x0A)
    }

    /// NOT READY, MEDIUM NOT PRESENT (3A/00).
    pub const fn medium_not_present() -> Sense {
        Sense::new(SenseKey::NotReady, 0x3A, 0x00)
    }

    /// UNIT ATTENTION, POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29/00).
    pub const fn power_on_reset() -> Sense {
        Sense::new(SenseKey::UnitAttention, 0x29, 0x00)
    }

    /// UNIT ATTENTION, BUS DEVICE RESET FUNCTION OCCURRED (29/03): a LUN or target reset.
    pub const fn bus_device_reset() -> Sense {
        Sense::new(SenseKey::UnitAttention, 0x29, 0x03)
    }

    /// UNIT ATTENTION, I_T NEXUS LOSS OCCURRED (29/07).
    pub const fn nexus_loss() -> Sense {
        Sense::new(SenseKey::UnitAttention, 0x29, 0x07)
    }

    /// UNIT ATTENTION, MODE PARAMETERS CHANGED (2A/01).
    pub const fn parameters_changed() -> Sense {
        Sense::new(SenseKey::UnitAttention, 0x2A, 0x01)
    }

    /// UNIT ATTENTION, RESERVATIONS PREEMPTED (2A/03): a PERSISTENT RESERVE OUT CLEAR
    /// removed this I_T nexus' registration (SPC-4 5.13.11.3).
    pub const fn reservations_preempted() -> Sense {
        Sense::new(SenseKey::UnitAttention, 0x2A, 0x03)
    }

    /// UNIT ATTENTION, RESERVATIONS RELEASED (2A/04): a registrants-only or
    /// all-registrants persistent reservation was released, or its type changed.
    pub const fn reservations_released() -> Sense {
        Sense::new(SenseKey::UnitAttention, 0x2A, 0x04)
    }

    /// UNIT ATTENTION, REGISTRATIONS PREEMPTED (2A/05): a PREEMPT removed this I_T
    /// nexus' registration (SPC-4 5.13.11.4).
    pub const fn registrations_preempted() -> Sense {
        Sense::new(SenseKey::UnitAttention, 0x2A, 0x05)
    }

    /// UNIT ATTENTION, CAPACITY DATA HAS CHANGED (2A/09).
    pub const fn capacity_changed() -> Sense {
        Sense::new(SenseKey::UnitAttention, 0x2A, 0x09)
    }

    /// UNIT ATTENTION, REPORTED LUNS DATA HAS CHANGED (3F/0E).
    pub const fn reported_luns_changed() -> Sense {
        Sense::new(SenseKey::UnitAttention, 0x3F, 0x0E)
    }

    /// The one place back-end errors become sense data.
    pub fn from_block_error(err: &BlockError, kind: IoKind) -> Sense {
        match err {
            BlockError::OutOfRange { .. } => Sense::lba_out_of_range(),
            BlockError::ReadOnly => Sense::write_protected(),
            BlockError::Unsupported(_) => Sense::invalid_opcode(),
            BlockError::Misaligned { .. } => Sense::internal_target_failure(),
            BlockError::Sense { key, asc, ascq, .. } => Sense::from_backend(*key, *asc, *ascq),
            BlockError::Io(e) => match (e.raw_os_error(), kind) {
                // ENOSPC / EDQUOT: a sparse back-end ran out of space.
                (Some(28) | Some(122), IoKind::Write | IoKind::Other) => {
                    Sense::space_allocation_failed()
                }
                // A wait that gave up (a volume's range hold during a remap, an NFS
                // back-end): transient, so NOT READY 04/01 and the host retries (see
                // `from_backend` for why not ABORTED COMMAND).
                _ if e.kind() == std::io::ErrorKind::TimedOut => Sense::not_ready_becoming_ready(),
                (_, IoKind::Read) => Sense::unrecovered_read_error(),
                (_, IoKind::Write) => Sense::write_error(),
                (_, IoKind::Other) => Sense::internal_target_failure(),
            },
        }
    }

    /// What the host sees when a back-end array failed a command the node sent on the
    /// host's behalf with sense `key/asc/ascq` (a [`BlockError::Sense`]).
    ///
    /// The back-end's sense describes the node's I_T nexus to the array, not the host's
    /// nexus to the node, and the CDB the array judged is the node's, not the host's.
    /// So only conditions of the medium or the device pass through verbatim:
    ///
    /// - MEDIUM ERROR, HARDWARE ERROR, ABORTED COMMAND, DATA PROTECT, MISCOMPARE and
    ///   COPY ABORTED keep their key, ASC and ASCQ (without INFORMATION: the array's
    ///   LBA is not the host's).
    /// - NOT READY 04/xx passes through (04/01 becoming ready, 04/03 manual
    ///   intervention, ...), except the array's own ALUA states 04/0A, 04/0B, 04/0C,
    ///   which a host would read as *our* target port group's state (SPC-4 5.16):
    ///   they become 04/01. Other NOT READY codes (e.g. 3A/00 MEDIUM NOT PRESENT,
    ///   which a host would act on as a removable medium) become 04/03.
    /// - UNIT ATTENTION is never passed through (SAM-5 5.14: a unit attention belongs
    ///   to the I_T nexus it was established for; the host's nexus saw no such event).
    ///   The node consumes the array's unit attentions and retries; one that is still
    ///   reported after those retries becomes NOT READY 04/01, so the host retries.
    /// - Back-end unreachable or timed out: the node reports NOT READY, 04/01 LOGICAL
    ///   UNIT IS IN PROCESS OF BECOMING READY (built by the initiator). SPC-4 4.5.6
    ///   defines NOT READY as "the logical unit is not accessible" and 04/01 as a
    ///   transient state; ABORTED COMMAND (0B) would say this one command was aborted
    ///   and may be retried. We choose 04/01 because a back-end restart takes seconds:
    ///   Linux retries ABORTED COMMAND only its 5 immediate retries
    ///   (`scsi_check_sense` → NEEDS_RETRY), which a reconnecting back-end exhausts,
    ///   while it requeues NOT READY 04/01 with a delay until (retries + 1) × the
    ///   command timeout has passed (`scsi_io_completion_action`,
    ///   ACTION_DELAYED_RETRY), and other initiators (libiscsi, VMware, Windows)
    ///   treat 04/01 as "retry later" too.
    /// - A back-end RESERVATION CONFLICT (a status, not sense: another initiator holds
    ///   the array LU) is reported by the initiator as NOT READY 04/03: the host's
    ///   own reservations live on the node's LU, so a RESERVATION CONFLICT status
    ///   would tell the host something false (SPC-4 5.13), and retrying cannot help
    ///   until an admin frees the array LU.
    /// - ILLEGAL REQUEST (the array rejected a CDB or parameter list the node built)
    ///   and anything else become HARDWARE ERROR 44/00 INTERNAL TARGET FAILURE: a field
    ///   pointer into a CDB the host never sent would mislead it.
    pub fn from_backend(key: u8, asc: u8, ascq: u8) -> Sense {
        match SenseKey::from_code(key) {
            Some(
                k @ (SenseKey::MediumError
                | SenseKey::HardwareError
                | SenseKey::AbortedCommand
                | SenseKey::DataProtect
                | SenseKey::Miscompare
                | SenseKey::CopyAborted),
            ) => Sense::new(k, asc, ascq),
            Some(SenseKey::NotReady) => match (asc, ascq) {
                (0x04, 0x0A..=0x0C) => Sense::not_ready_becoming_ready(),
                (0x04, q) => Sense::new(SenseKey::NotReady, 0x04, q),
                _ => Sense::not_ready_manual_intervention(),
            },
            Some(SenseKey::UnitAttention) => Sense::not_ready_becoming_ready(),
            _ => Sense::internal_target_failure(),
        }
    }

    /// Fixed-format sense data (SPC-4 4.5.3): 18 bytes, response code 70h.
    pub fn fixed(&self) -> Vec<u8> {
        let mut b = vec![0u8; 18];
        b[0] = 0x70;
        b[2] = self.key.code();
        if let Some(info) = self.info {
            // INFORMATION is 4 bytes here; VALID only when it fits.
            if let Ok(v) = u32::try_from(info) {
                b[0] |= 0x80;
                b[3..7].copy_from_slice(&v.to_be_bytes());
            }
        }
        b[7] = 10; // additional sense length
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some(sks) = self.sense_key_specific() {
            b[15..18].copy_from_slice(&sks);
        }
        b
    }

    /// Descriptor-format sense data (SPC-4 4.5.2): response code 72h with an
    /// information descriptor and a sense-key-specific descriptor when set.
    pub fn descriptor(&self) -> Vec<u8> {
        let mut b = vec![0x72, self.key.code(), self.asc, self.ascq, 0, 0, 0, 0];
        if let Some(info) = self.info {
            b.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            b.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(sks) = self.sense_key_specific() {
            b.extend_from_slice(&[0x02, 0x06, 0x00, 0x00]);
            b.extend_from_slice(&sks);
            b.push(0);
        }
        b[7] = (b.len() - 8) as u8;
        b
    }

    /// The three SENSE KEY SPECIFIC bytes for a field pointer (SKSV set).
    fn sense_key_specific(&self) -> Option<[u8; 3]> {
        let f = self.field?;
        let mut first = 0x80;
        if f.cdb {
            first |= 0x40;
        }
        if let Some(bit) = f.bit {
            first |= 0x08 | (bit & 0x07);
        }
        let [hi, lo] = f.byte.to_be_bytes();
        Some([first, hi, lo])
    }

    /// Name of the additional sense code, if it is one this crate knows.
    pub fn asc_name(&self) -> Option<&'static str> {
        ASC_NAMES
            .iter()
            .find(|(a, q, _)| *a == self.asc && *q == self.ascq)
            .map(|(_, _, n)| *n)
    }
}

impl From<BlockError> for Sense {
    fn from(err: BlockError) -> Sense {
        Sense::from_block_error(&err, IoKind::Other)
    }
}

impl fmt::Display for Sense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {:02X}/{:02X}", self.key, self.asc, self.ascq)?;
        if let Some(name) = self.asc_name() {
            write!(f, " {name}")?;
        }
        if let Some(fp) = self.field {
            let place = if fp.cdb { "CDB" } else { "parameter list" };
            write!(f, " ({place} byte {}", fp.byte)?;
            if let Some(bit) = fp.bit {
                write!(f, " bit {bit}")?;
            }
            write!(f, ")")?;
        }
        if let Some(info) = self.info {
            write!(f, " info {info:#x}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Sense {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_invalid_field_in_cdb_has_field_pointer() {
        let s = Sense::invalid_field_in_cdb(1, Some(5));
        assert_eq!(
            s.fixed(),
            vec![0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0x00, 0, 0xCD, 0x00, 0x01]
        );
    }

    #[test]
    fn fixed_param_list_pointer_has_cd_clear() {
        let s = Sense::invalid_field_in_param_list(0x0104, None);
        let b = s.fixed();
        assert_eq!(&b[12..18], &[0x26, 0x00, 0, 0x80, 0x01, 0x04]);
    }

    #[test]
    fn fixed_miscompare_sets_valid_and_information() {
        let b = Sense::miscompare(0x1234).fixed();
        assert_eq!(b[0], 0xF0);
        assert_eq!(b[2], 0x0E);
        assert_eq!(&b[3..7], &[0, 0, 0x12, 0x34]);
        assert_eq!((b[12], b[13]), (0x1D, 0x00));
        assert_eq!(b[15], 0, "no SKSV without a field pointer");
    }

    #[test]
    fn fixed_information_too_big_clears_valid() {
        let b = Sense::miscompare(1 << 40).fixed();
        assert_eq!(b[0], 0x70);
        assert_eq!(&b[3..7], &[0, 0, 0, 0]);
    }

    #[test]
    fn descriptor_unit_attention_is_eight_bytes() {
        assert_eq!(
            Sense::power_on_reset().descriptor(),
            vec![0x72, 0x06, 0x29, 0x00, 0, 0, 0, 0]
        );
    }

    #[test]
    fn descriptor_has_information_and_field_pointer_descriptors() {
        let s = Sense::invalid_field_in_cdb(2, None).with_info(1 << 40);
        assert_eq!(
            s.descriptor(),
            vec![
                0x72, 0x05, 0x24, 0x00, 0, 0, 0, 20, // header
                0x00, 0x0A, 0x80, 0x00, 0, 0, 0x01, 0, 0, 0, 0, 0, // information
                0x02, 0x06, 0x00, 0x00, 0xC0, 0x00, 0x02, 0x00, // sense key specific
            ]
        );
    }

    #[test]
    fn block_errors_map_to_sense() {
        let oob = BlockError::OutOfRange {
            lba: 9,
            blocks: 2,
            capacity: 10,
        };
        assert_eq!(Sense::from(oob), Sense::lba_out_of_range());
        assert_eq!(Sense::from(BlockError::ReadOnly), Sense::write_protected());
        let io = || BlockError::Io(std::io::Error::from_raw_os_error(5));
        assert_eq!(
            Sense::from_block_error(&io(), IoKind::Read),
            Sense::unrecovered_read_error()
        );
        assert_eq!(
            Sense::from_block_error(&io(), IoKind::Write),
            Sense::write_error()
        );
        let held = BlockError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "range held by a remap",
        ));
        assert_eq!(
            Sense::from_block_error(&held, IoKind::Write),
            Sense::not_ready_becoming_ready()
        );
        let nospc = BlockError::Io(std::io::Error::from_raw_os_error(28));
        assert_eq!(
            Sense::from_block_error(&nospc, IoKind::Write),
            Sense::space_allocation_failed()
        );
    }

    #[test]
    fn backend_sense_maps_to_host_sense() {
        let be = |key: u8, asc: u8, ascq: u8| {
            Sense::from_block_error(
                &BlockError::Sense {
                    key,
                    asc,
                    ascq,
                    msg: "back-end".into(),
                },
                IoKind::Read,
            )
        };
        // Medium and device conditions pass through.
        assert_eq!(be(0x3, 0x11, 0x00), Sense::unrecovered_read_error());
        assert_eq!(
            be(0x3, 0x0C, 0x02),
            Sense::new(SenseKey::MediumError, 0x0C, 0x02)
        );
        assert_eq!(be(0x4, 0x44, 0x00), Sense::internal_target_failure());
        assert_eq!(
            be(0xB, 0x47, 0x03),
            Sense::new(SenseKey::AbortedCommand, 0x47, 0x03)
        );
        assert_eq!(
            be(0xB, 0x00, 0x00),
            Sense::new(SenseKey::AbortedCommand, 0x00, 0x00)
        );
        // NOT READY 04/xx passes through; the array's ALUA states and non-04 codes don't.
        assert_eq!(be(0x2, 0x04, 0x01), Sense::not_ready_becoming_ready());
        assert_eq!(be(0x2, 0x04, 0x03), Sense::not_ready_manual_intervention());
        assert_eq!(
            be(0x2, 0x04, 0x07),
            Sense::new(SenseKey::NotReady, 0x04, 0x07)
        );
        for q in [0x0A, 0x0B, 0x0C] {
            assert_eq!(be(0x2, 0x04, q), Sense::not_ready_becoming_ready());
        }
        assert_eq!(be(0x2, 0x3A, 0x00), Sense::not_ready_manual_intervention());
        // Never a unit attention from the back-end: the host should retry.
        for (asc, ascq) in [(0x29, 0x00), (0x2A, 0x09), (0x2A, 0x03), (0x3F, 0x0E)] {
            let s = be(0x6, asc, ascq);
            assert_ne!(s.key, SenseKey::UnitAttention);
            assert_eq!(s, Sense::not_ready_becoming_ready());
        }
        // The array judged the node's CDB, not the host's: no field pointers leak.
        assert_eq!(be(0x5, 0x24, 0x00), Sense::internal_target_failure());
        assert_eq!(be(0x5, 0x24, 0x00).field, None);
        assert_eq!(be(0x0, 0x00, 0x00), Sense::internal_target_failure());
        assert_eq!(be(0x1, 0x17, 0x00), Sense::internal_target_failure());
        assert_eq!(be(0xC, 0x00, 0x00), Sense::internal_target_failure());
        // DATA PROTECT keeps its code.
        assert_eq!(be(0x7, 0x27, 0x00), Sense::write_protected());
        // The I/O direction does not change a back-end's sense.
        let w = Sense::from_block_error(
            &BlockError::Sense {
                key: 0x2,
                asc: 0x04,
                ascq: 0x01,
                msg: String::new(),
            },
            IoKind::Write,
        );
        assert_eq!(w, Sense::not_ready_becoming_ready());
    }

    #[test]
    fn sense_key_codes_round_trip() {
        for code in 0..16u8 {
            if let Some(k) = SenseKey::from_code(code) {
                assert_eq!(k.code(), code);
            } else {
                assert_eq!(code, 0xC);
            }
        }
    }

    #[test]
    fn display_names_the_code_and_field() {
        let s = Sense::invalid_field_in_cdb(1, Some(3)).to_string();
        assert_eq!(
            s,
            "IllegalRequest 24/00 INVALID FIELD IN CDB (CDB byte 1 bit 3)"
        );
    }
}
