//! Primary commands that need no logical unit state beyond the unit attention queue:
//! REQUEST SENSE (SPC-4 6.39) and REPORT LUNS (SPC-4 6.33). INQUIRY lives in
//! `inquiry.rs`/`vpd.rs`, mode pages in `mode.rs`, reservations in `reservation.rs`.

use crate::lu::truncate;
use crate::sense::Sense;

/// REQUEST SENSE parameter data: the sense (a pending unit attention, or NO SENSE) in
/// the format the DESC bit asks for, truncated to the allocation length.
pub(crate) fn request_sense(sense: &Sense, desc: bool, alloc: u8) -> Vec<u8> {
    let data = if desc {
        sense.descriptor()
    } else {
        sense.fixed()
    };
    truncate(data, usize::from(alloc))
}

/// One LUN in the 8-byte format of SAM-5 4.7: peripheral device addressing below 256,
/// flat space addressing below 16384, otherwise the number as given (already encoded).
pub(crate) fn encode_lun(lun: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    if lun < 256 {
        b[1] = lun as u8;
    } else if lun < 0x4000 {
        b[0] = 0x40 | (lun >> 8) as u8;
        b[1] = lun as u8;
    } else {
        b = lun.to_be_bytes();
    }
    b
}

/// REPORT LUNS parameter data (before allocation-length truncation). SELECT REPORT 1
/// (well-known LUNs only) is an empty list: there are no well-known LUNs.
pub(crate) fn report_luns(luns: impl Iterator<Item = u64>, select: u8) -> Vec<u8> {
    let mut d = vec![0u8; 8];
    if select != 1 {
        for lun in luns {
            d.extend_from_slice(&encode_lun(lun));
        }
    }
    let len = (d.len() - 8) as u32;
    d[..4].copy_from_slice(&len.to_be_bytes());
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_encoding() {
        assert_eq!(encode_lun(0), [0; 8]);
        assert_eq!(encode_lun(5), [0, 5, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(300), [0x41, 0x2C, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn report_luns_golden() {
        assert_eq!(
            report_luns([0u64, 1].into_iter(), 0),
            vec![0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(report_luns([0u64].into_iter(), 1), vec![0; 8]);
    }

    #[test]
    fn request_sense_formats() {
        let s = Sense::power_on_reset();
        let fixed = request_sense(&s, false, 252);
        assert_eq!((fixed[0], fixed[2], fixed[12]), (0x70, 0x06, 0x29));
        assert_eq!(
            request_sense(&s, true, 252),
            vec![0x72, 0x06, 0x29, 0, 0, 0, 0, 0]
        );
        assert_eq!(request_sense(&s, false, 8).len(), 8);
    }
}
