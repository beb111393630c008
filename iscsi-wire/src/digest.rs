//! CRC32C header and data digests (RFC 7143 §13.1, Appendix B.4).
//!
//! A header digest covers the BHS and any AHS; a data digest covers the data
//! segment *and its padding* to a multiple of four bytes. Digests are sent in
//! the byte order that RFC 7143 Appendix B.4 shows: least significant byte
//! first (32 zero bytes give the bytes `aa 36 91 8a`).

/// Which digests are in use on a connection (negotiated `HeaderDigest` and
/// `DataDigest`; both off during login).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Digests {
    /// `HeaderDigest=CRC32C`.
    pub header: bool,
    /// `DataDigest=CRC32C`.
    pub data: bool,
}

impl Digests {
    /// No digests (the state during login).
    pub const NONE: Digests = Digests {
        header: false,
        data: false,
    };
    /// Both digests on.
    pub const BOTH: Digests = Digests {
        header: true,
        data: true,
    };
}

/// Length of one digest on the wire.
pub const DIGEST_LEN: usize = 4;

/// Number of zero bytes that pad `len` to a multiple of four.
pub fn pad_len(len: usize) -> usize {
    (4 - (len % 4)) % 4
}

/// CRC32C of `bytes` (hardware accelerated where the CPU has it).
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Header digest over the BHS followed by the AHS.
pub fn header_digest(bhs: &[u8], ahs: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(bhs), ahs)
}

/// Data digest over `data` and its zero padding to a multiple of four.
pub fn data_digest(data: &[u8]) -> u32 {
    const ZEROS: [u8; 3] = [0; 3];
    let crc = crc32c::crc32c(data);
    crc32c::crc32c_append(crc, &ZEROS[..pad_len(data.len())])
}

/// The four bytes of a digest as sent on the wire.
pub fn digest_bytes(digest: u32) -> [u8; 4] {
    digest.to_le_bytes()
}

/// Reads a digest from its four wire bytes.
pub fn read_digest(bytes: [u8; 4]) -> u32 {
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known CRC32C values (RFC 3720 Appendix B.4, unchanged in RFC 7143).
    #[test]
    fn rfc_vectors() {
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(digest_bytes(crc32c(&[0u8; 32])), [0xaa, 0x36, 0x91, 0x8a]);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&inc), 0x46dd_794e);
        let dec: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(crc32c(&dec), 0x113f_db5c);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn data_digest_covers_padding() {
        assert_eq!(data_digest(b"abc"), crc32c(b"abc\0"));
        assert_eq!(data_digest(b"abcd"), crc32c(b"abcd"));
        assert_eq!(data_digest(b"abcde"), crc32c(b"abcde\0\0\0"));
        assert_eq!(data_digest(b""), crc32c(b""));
    }

    #[test]
    fn header_digest_is_over_bhs_then_ahs() {
        let bhs = [7u8; 48];
        let ahs = [9u8; 8];
        let mut all = bhs.to_vec();
        all.extend_from_slice(&ahs);
        assert_eq!(header_digest(&bhs, &ahs), crc32c(&all));
    }

    #[test]
    fn padding() {
        assert_eq!(pad_len(0), 0);
        assert_eq!(pad_len(1), 3);
        assert_eq!(pad_len(2), 2);
        assert_eq!(pad_len(3), 1);
        assert_eq!(pad_len(4), 0);
    }
}
