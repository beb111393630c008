//! What a SCSI command returns ([`ScsiOutcome`]) and the sense data in it, read from
//! the initiator side (SPC-4 §4.5: fixed and descriptor formats).

use bytes::Bytes;
pub use iscsi_wire::pdu::Residual;

/// SCSI status codes (SAM-5 §5.3).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const ACA_ACTIVE: u8 = 0x30;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Sense keys (SPC-4 §4.5.6).
pub mod sense_key {
    pub const NO_SENSE: u8 = 0x0;
    pub const RECOVERED_ERROR: u8 = 0x1;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const COPY_ABORTED: u8 = 0xa;
    pub const ABORTED_COMMAND: u8 = 0xb;
    pub const MISCOMPARE: u8 = 0xe;
}

/// The result of one SCSI command that reached the target and got a status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScsiOutcome {
    /// SCSI status byte (see [`status`]).
    pub status: u8,
    /// Sense data (empty unless CHECK CONDITION).
    pub sense: Bytes,
    /// Data-In, as many bytes as the target sent.
    pub data: Bytes,
    /// Residual of the data transfer (RFC 7143 §11.4.5).
    pub residual: Residual,
}

impl ScsiOutcome {
    /// GOOD (or CONDITION MET).
    pub fn is_good(&self) -> bool {
        matches!(self.status, status::GOOD | status::CONDITION_MET)
    }

    /// Parsed sense, if there is any.
    pub fn sense_info(&self) -> Option<SenseInfo> {
        SenseInfo::parse(&self.sense)
    }
}

/// Sense key, additional sense code and qualifier, and the INFORMATION field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenseInfo {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    /// INFORMATION (e.g. the failing LBA of a medium error), when valid.
    pub info: Option<u64>,
}

impl SenseInfo {
    /// Parses fixed (70h/71h) or descriptor (72h/73h) sense data.
    pub fn parse(b: &[u8]) -> Option<SenseInfo> {
        let code = *b.first()? & 0x7f;
        match code {
            0x70 | 0x71 => {
                let key = *b.get(2)? & 0x0f;
                let asc = b.get(12).copied().unwrap_or(0);
                let ascq = b.get(13).copied().unwrap_or(0);
                let info = (b[0] & 0x80 != 0 && b.len() >= 7)
                    .then(|| u64::from(u32::from_be_bytes([b[3], b[4], b[5], b[6]])));
                Some(SenseInfo {
                    key,
                    asc,
                    ascq,
                    info,
                })
            }
            0x72 | 0x73 => {
                let key = *b.get(1)? & 0x0f;
                let asc = b.get(2).copied().unwrap_or(0);
                let ascq = b.get(3).copied().unwrap_or(0);
                // Information descriptor (type 0), if present.
                let mut info = None;
                let total = 8 + usize::from(b.get(7).copied().unwrap_or(0));
                let mut at = 8;
                while at + 2 <= total.min(b.len()) {
                    let ty = b[at];
                    let len = usize::from(b[at + 1]);
                    if ty == 0 && len >= 10 && at + 12 <= b.len() && b[at + 2] & 0x80 != 0 {
                        let mut x = [0u8; 8];
                        x.copy_from_slice(&b[at + 4..at + 12]);
                        info = Some(u64::from_be_bytes(x));
                    }
                    at += 2 + len;
                }
                Some(SenseInfo {
                    key,
                    asc,
                    ascq,
                    info,
                })
            }
            _ => None,
        }
    }

    /// `key/asc/ascq` in the usual hex notation.
    pub fn code(&self) -> String {
        format!("{:02X}/{:02X}/{:02X}", self.key, self.asc, self.ascq)
    }
}

impl std::fmt::Display for SenseInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.key {
            sense_key::NO_SENSE => "NO SENSE",
            sense_key::RECOVERED_ERROR => "RECOVERED ERROR",
            sense_key::NOT_READY => "NOT READY",
            sense_key::MEDIUM_ERROR => "MEDIUM ERROR",
            sense_key::HARDWARE_ERROR => "HARDWARE ERROR",
            sense_key::ILLEGAL_REQUEST => "ILLEGAL REQUEST",
            sense_key::UNIT_ATTENTION => "UNIT ATTENTION",
            sense_key::DATA_PROTECT => "DATA PROTECT",
            sense_key::COPY_ABORTED => "COPY ABORTED",
            sense_key::ABORTED_COMMAND => "ABORTED COMMAND",
            sense_key::MISCOMPARE => "MISCOMPARE",
            _ => "sense",
        };
        write!(f, "{name} {}", self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_sense() {
        let mut b = [0u8; 18];
        b[0] = 0xf0;
        b[2] = 0x03;
        b[3..7].copy_from_slice(&0x1234u32.to_be_bytes());
        b[7] = 10;
        b[12] = 0x11;
        b[13] = 0x00;
        let s = SenseInfo::parse(&b).unwrap();
        assert_eq!((s.key, s.asc, s.ascq, s.info), (3, 0x11, 0, Some(0x1234)));
        assert_eq!(s.to_string(), "MEDIUM ERROR 03/11/00");
    }

    #[test]
    fn descriptor_sense() {
        let mut b = vec![0x72, 0x06, 0x2a, 0x09, 0, 0, 0, 12];
        b.extend_from_slice(&[0x00, 0x0a, 0x80, 0x00]);
        b.extend_from_slice(&7u64.to_be_bytes());
        let s = SenseInfo::parse(&b).unwrap();
        assert_eq!((s.key, s.asc, s.ascq, s.info), (6, 0x2a, 0x09, Some(7)));
        assert!(SenseInfo::parse(&[]).is_none());
        assert!(SenseInfo::parse(&[0x70]).is_none());
        assert!(SenseInfo::parse(&[0x10, 0, 0]).is_none());
    }
}
