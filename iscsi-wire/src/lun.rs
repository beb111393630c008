//! SAM-5 LUN encoding (SAM-5 §4.7): the 8-byte LUN field of iSCSI PDUs.
//!
//! iSCSI carries the LUN as the raw 8-byte SAM structure (RFC 7143 §11.2.1.6).
//! We use peripheral device addressing for LUNs below 256, flat space
//! addressing below 16384 and extended flat space addressing below 2^24.

/// Highest LUN that [`encode_lun`] can express (extended flat space).
pub const MAX_LUN: u64 = 0x00ff_ffff;

/// Encodes a LUN number into the raw 8-byte field (as a big-endian u64).
///
/// Returns `None` for LUNs above [`MAX_LUN`].
pub fn try_encode_lun(lun: u64) -> Option<u64> {
    if lun < 256 {
        // Peripheral device addressing, bus 0 (SAM-5 §4.7.6.2).
        Some(lun << 48)
    } else if lun < 0x4000 {
        // Flat space addressing (SAM-5 §4.7.6.3).
        Some((0x4000 | lun) << 48)
    } else if lun <= MAX_LUN {
        // Extended flat space addressing, length 1 (SAM-5 §4.7.7.4).
        Some((0xd2 << 56) | (lun << 32))
    } else {
        None
    }
}

/// Encodes a LUN number; LUNs above [`MAX_LUN`] are truncated to 24 bits.
pub fn encode_lun(lun: u64) -> u64 {
    try_encode_lun(lun & MAX_LUN).unwrap_or(0)
}

/// Decodes the raw 8-byte LUN field into a LUN number.
///
/// A field that is not a single-level peripheral (bus 0), flat space or
/// extended flat space address is returned unchanged; such values are far
/// above [`MAX_LUN`], so a lookup of them simply finds no logical unit.
pub fn decode_lun(raw: u64) -> u64 {
    let b = raw.to_be_bytes();
    match b[0] >> 6 {
        0b00 if b[0] == 0 && raw & 0x0000_ffff_ffff_ffff == 0 => u64::from(b[1]),
        0b01 if raw & 0x0000_ffff_ffff_ffff == 0 => (u64::from(b[0] & 0x3f) << 8) | u64::from(b[1]),
        0b11 if b[0] == 0xd2 && raw & 0x0000_0000_ffff_ffff == 0 => {
            (u64::from(b[1]) << 16) | (u64::from(b[2]) << 8) | u64::from(b[3])
        }
        _ => raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden() {
        assert_eq!(encode_lun(0), 0);
        assert_eq!(encode_lun(1).to_be_bytes(), [0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(255).to_be_bytes(), [0, 0xff, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(256).to_be_bytes(), [0x41, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            encode_lun(0x3fff).to_be_bytes(),
            [0x7f, 0xff, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            encode_lun(0x4000).to_be_bytes(),
            [0xd2, 0, 0x40, 0, 0, 0, 0, 0]
        );
        assert_eq!(try_encode_lun(MAX_LUN + 1), None);
    }

    #[test]
    fn round_trip() {
        for lun in [0, 1, 7, 255, 256, 1000, 0x3fff, 0x4000, 0x12_3456, MAX_LUN] {
            assert_eq!(decode_lun(encode_lun(lun)), lun, "lun {lun}");
        }
        // Flat space addressing of a small LUN decodes too.
        assert_eq!(decode_lun(0x4005u64 << 48), 5);
    }

    #[test]
    fn odd_addresses_stay_raw() {
        // Peripheral addressing on bus 1, and a second level.
        let bus1 = 0x0105u64 << 48;
        assert_eq!(decode_lun(bus1), bus1);
        let two_level = (5u64 << 48) | (1 << 32);
        assert_eq!(decode_lun(two_level), two_level);
        assert!(decode_lun(bus1) > MAX_LUN && decode_lun(two_level) > MAX_LUN);
    }
}
