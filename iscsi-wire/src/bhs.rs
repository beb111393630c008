//! The Basic Header Segment (RFC 7143 §11.2.1): the 48 bytes that start every PDU.

use crate::digest::{pad_len, DIGEST_LEN};

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;

/// Largest value of the 24-bit DataSegmentLength field.
pub const MAX_DATA_SEGMENT_LEN: u32 = 0x00ff_ffff;

/// PDU opcodes (RFC 7143 §11.2.1.2). Total: unknown codes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    // Initiator opcodes.
    NopOut,
    ScsiCommand,
    TaskMgmtRequest,
    LoginRequest,
    TextRequest,
    DataOut,
    LogoutRequest,
    SnackRequest,
    // Target opcodes.
    NopIn,
    ScsiResponse,
    TaskMgmtResponse,
    LoginResponse,
    TextResponse,
    DataIn,
    LogoutResponse,
    R2T,
    AsyncMessage,
    Reject,
    /// Any other 6-bit code (vendor specific or reserved).
    Unknown(u8),
}

impl Opcode {
    /// Decodes the low six bits of byte 0.
    pub fn from_u8(code: u8) -> Opcode {
        match code & 0x3f {
            0x00 => Opcode::NopOut,
            0x01 => Opcode::ScsiCommand,
            0x02 => Opcode::TaskMgmtRequest,
            0x03 => Opcode::LoginRequest,
            0x04 => Opcode::TextRequest,
            0x05 => Opcode::DataOut,
            0x06 => Opcode::LogoutRequest,
            0x10 => Opcode::SnackRequest,
            0x20 => Opcode::NopIn,
            0x21 => Opcode::ScsiResponse,
            0x22 => Opcode::TaskMgmtResponse,
            0x23 => Opcode::LoginResponse,
            0x24 => Opcode::TextResponse,
            0x25 => Opcode::DataIn,
            0x26 => Opcode::LogoutResponse,
            0x31 => Opcode::R2T,
            0x32 => Opcode::AsyncMessage,
            0x3f => Opcode::Reject,
            other => Opcode::Unknown(other),
        }
    }

    /// The 6-bit code.
    pub fn code(self) -> u8 {
        match self {
            Opcode::NopOut => 0x00,
            Opcode::ScsiCommand => 0x01,
            Opcode::TaskMgmtRequest => 0x02,
            Opcode::LoginRequest => 0x03,
            Opcode::TextRequest => 0x04,
            Opcode::DataOut => 0x05,
            Opcode::LogoutRequest => 0x06,
            Opcode::SnackRequest => 0x10,
            Opcode::NopIn => 0x20,
            Opcode::ScsiResponse => 0x21,
            Opcode::TaskMgmtResponse => 0x22,
            Opcode::LoginResponse => 0x23,
            Opcode::TextResponse => 0x24,
            Opcode::DataIn => 0x25,
            Opcode::LogoutResponse => 0x26,
            Opcode::R2T => 0x31,
            Opcode::AsyncMessage => 0x32,
            Opcode::Reject => 0x3f,
            Opcode::Unknown(c) => c & 0x3f,
        }
    }

    /// True for codes a target sends (bit 5 set, RFC 7143 §11.2.1.2).
    pub fn is_target(self) -> bool {
        self.code() & 0x20 != 0
    }
}

/// A raw Basic Header Segment with accessors for the fields every PDU shares.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bhs(pub [u8; BHS_LEN]);

impl std::fmt::Debug for Bhs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bhs")
            .field("opcode", &self.opcode())
            .field("itt", &format_args!("{:#010x}", self.itt()))
            .field("ahs", &self.total_ahs_len())
            .field("data", &self.data_segment_len())
            .finish()
    }
}

impl Bhs {
    /// Wraps 48 bytes.
    pub fn new(bytes: [u8; BHS_LEN]) -> Bhs {
        Bhs(bytes)
    }

    /// Copies the first 48 bytes of `buf`; `None` if it is shorter.
    pub fn from_slice(buf: &[u8]) -> Option<Bhs> {
        buf.get(..BHS_LEN)
            .and_then(|b| <[u8; BHS_LEN]>::try_from(b).ok())
            .map(Bhs)
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &[u8; BHS_LEN] {
        &self.0
    }

    /// The opcode (byte 0, low six bits).
    pub fn opcode(&self) -> Opcode {
        Opcode::from_u8(self.0[0])
    }

    /// The I (immediate delivery) bit, byte 0 bit 6.
    pub fn immediate(&self) -> bool {
        self.0[0] & 0x40 != 0
    }

    /// The F (final) bit, byte 1 bit 7.
    pub fn final_bit(&self) -> bool {
        self.0[1] & 0x80 != 0
    }

    /// TotalAHSLength in bytes (the field counts 4-byte words).
    pub fn total_ahs_len(&self) -> usize {
        usize::from(self.0[4]) * 4
    }

    /// DataSegmentLength (24 bits), excluding padding and digest.
    pub fn data_segment_len(&self) -> u32 {
        u32::from_be_bytes([0, self.0[5], self.0[6], self.0[7]])
    }

    /// The LUN field, bytes 8..16, as a raw big-endian u64.
    pub fn lun(&self) -> u64 {
        be64(&self.0, 8)
    }

    /// The Initiator Task Tag, bytes 16..20.
    pub fn itt(&self) -> u32 {
        be32(&self.0, 16)
    }

    /// Length of the whole PDU on the wire: BHS, AHS, header digest, data
    /// segment, padding and data digest (RFC 7143 §11.1). A data digest is
    /// present only when there is a data segment.
    pub fn frame_len(&self, header_digest: bool, data_digest: bool) -> usize {
        let data = self.data_segment_len() as usize;
        let mut len = BHS_LEN + self.total_ahs_len();
        if header_digest {
            len += DIGEST_LEN;
        }
        if data > 0 {
            len += data + pad_len(data);
            if data_digest {
                len += DIGEST_LEN;
            }
        }
        len
    }
}

pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// Writes the 24-bit DataSegmentLength (truncating to 24 bits).
pub(crate) fn put_dsl(b: &mut [u8], len: usize) {
    let l = (len as u32) & MAX_DATA_SEGMENT_LEN;
    b[5..8].copy_from_slice(&l.to_be_bytes()[1..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_round_trip() {
        for code in 0u8..64 {
            assert_eq!(Opcode::from_u8(code).code(), code);
        }
        assert_eq!(Opcode::from_u8(0x41), Opcode::ScsiCommand);
        assert!(Opcode::R2T.is_target());
        assert!(!Opcode::SnackRequest.is_target());
    }

    #[test]
    fn accessors() {
        let mut b = [0u8; 48];
        b[0] = 0x41;
        b[1] = 0x80;
        b[4] = 2;
        b[5..8].copy_from_slice(&[0x01, 0x02, 0x03]);
        b[8..16].copy_from_slice(&[0, 5, 0, 0, 0, 0, 0, 0]);
        b[16..20].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let h = Bhs(b);
        assert_eq!(h.opcode(), Opcode::ScsiCommand);
        assert!(h.immediate());
        assert!(h.final_bit());
        assert_eq!(h.total_ahs_len(), 8);
        assert_eq!(h.data_segment_len(), 0x010203);
        assert_eq!(h.lun(), 5 << 48);
        assert_eq!(h.itt(), 0xdead_beef);
    }

    #[test]
    fn frame_len_rules() {
        let mut b = [0u8; 48];
        let h = Bhs(b);
        assert_eq!(h.frame_len(false, false), 48);
        assert_eq!(h.frame_len(true, true), 52, "no data digest without data");
        b[4] = 1; // 4 bytes AHS
        b[7] = 5; // 5 bytes data → 8 with padding
        let h = Bhs(b);
        assert_eq!(h.frame_len(false, false), 48 + 4 + 8);
        assert_eq!(h.frame_len(true, false), 48 + 4 + 4 + 8);
        assert_eq!(h.frame_len(true, true), 48 + 4 + 4 + 8 + 4);
        assert_eq!(h.frame_len(false, true), 48 + 4 + 8 + 4);
    }

    #[test]
    fn from_slice_short() {
        assert!(Bhs::from_slice(&[0u8; 47]).is_none());
        assert!(Bhs::from_slice(&[0u8; 49]).is_some());
    }
}
