//! Standard INQUIRY data (SPC-4 6.6.2).

use crate::lu::LuConfig;

/// Version descriptors (SPC-4 table 150): SAM-5, SPC-4, SBC-3, iSCSI.
const VERSION_DESCRIPTORS: [u16; 4] = [0x00A0, 0x0460, 0x04C0, 0x0960];

/// Standard INQUIRY data length: 36 bytes plus version descriptors, padded to 96.
const STANDARD_LEN: usize = 96;

/// An ASCII field of `n` bytes, space padded; characters outside 20h..7Eh become
/// spaces (SPC-4 4.4.1).
pub(crate) fn ascii_field(s: &str, n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s
        .bytes()
        .map(|b| if (0x20..=0x7E).contains(&b) { b } else { b' ' })
        .take(n)
        .collect();
    v.resize(n, b' ');
    v
}

/// Standard INQUIRY data for a logical unit, or for a LUN that does not exist
/// (`None`: peripheral qualifier 011b, device type 1Fh).
pub(crate) fn standard(cfg: Option<&LuConfig>) -> Vec<u8> {
    let mut d = vec![0u8; STANDARD_LEN];
    d[0] = match cfg {
        Some(_) => 0x00, // qualifier 000b, direct-access block device
        None => 0x7F,
    };
    d[2] = 0x06; // SPC-4
    d[3] = 0x12; // HISUP, response data format 2
    d[4] = (STANDARD_LEN - 5) as u8;
    d[7] = 0x02; // CMDQUE
    let (vendor, product, revision) = match cfg {
        Some(c) => (c.vendor.as_str(), c.product.as_str(), c.revision.as_str()),
        None => ("", "", ""),
    };
    d[8..16].copy_from_slice(&ascii_field(vendor, 8));
    d[16..32].copy_from_slice(&ascii_field(product, 16));
    d[32..36].copy_from_slice(&ascii_field(revision, 4));
    if cfg.is_some() {
        // TPGS 01b: implicit asymmetric logical unit access only (SPC-4 5.15).
        d[5] |= 0x10;
        // 3PC: EXTENDED COPY and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18).
        d[5] |= 0x08;
        for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
            d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_inquiry_golden_header() {
        let cfg = LuConfig {
            vendor: "SWITCHYD".into(),
            product: "vol\u{1}".into(),
            revision: "0.1".into(),
            ..LuConfig::default()
        };
        let d = standard(Some(&cfg));
        assert_eq!(&d[..8], &[0x00, 0x00, 0x06, 0x12, 91, 0x18, 0x00, 0x02]);
        assert_eq!(&d[8..16], b"SWITCHYD");
        assert_eq!(&d[16..32], b"vol             ");
        assert_eq!(&d[32..36], b"0.1 ");
        assert_eq!(
            &d[58..66],
            &[0x00, 0xA0, 0x04, 0x60, 0x04, 0xC0, 0x09, 0x60]
        );
    }

    #[test]
    fn missing_lun_has_qualifier_3() {
        let d = standard(None);
        assert_eq!(d[0], 0x7F);
        assert_eq!(d[2], 0x06);
    }
}
