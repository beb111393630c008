//! Vital product data pages (SPC-4 7.8, SBC-3 6.5): supported pages (00h), unit
//! serial number (80h), device identification (83h), third-party copy (8Fh, built in
//! `xcopy.rs`), block limits (B0h), block device characteristics (B1h) and logical
//! block provisioning (B2h).

use crate::inquiry::ascii_field;
use crate::lu::{Limits, LuConfig};
use crate::sense::Sense;
use crate::{Nexus, TargetInfo};

/// Supported pages, ascending (SPC-4 7.8.16).
const PAGES: [u8; 7] = [0x00, 0x80, 0x83, 0x8F, 0xB0, 0xB1, 0xB2];

/// What the VPD pages describe.
pub(crate) struct VpdSource<'a> {
    pub(crate) cfg: &'a LuConfig,
    pub(crate) limits: &'a Limits,
    pub(crate) target: &'a TargetInfo,
    pub(crate) nexus: &'a Nexus,
}

/// A VPD page, before allocation-length truncation. An unsupported page code is
/// INVALID FIELD IN CDB (byte 2).
pub(crate) fn page(src: &VpdSource<'_>, code: u8) -> Result<Vec<u8>, Sense> {
    let body = match code {
        0x00 => PAGES.to_vec(),
        0x80 => serial(src.cfg),
        0x83 => device_identification(src),
        0x8F => crate::xcopy::third_party_copy_vpd(),
        0xB0 => block_limits(src.limits, src.cfg.thin),
        0xB1 => block_device_characteristics(),
        0xB2 => logical_block_provisioning(src.cfg.thin),
        _ => return Err(Sense::invalid_field_in_cdb(2, None)),
    };
    let mut d = vec![0x00, code];
    d.extend_from_slice(&(body.len() as u16).to_be_bytes());
    d.extend_from_slice(&body);
    Ok(d)
}

fn serial(cfg: &LuConfig) -> Vec<u8> {
    let s = if cfg.serial.is_empty() {
        hex_wwn(cfg)
    } else {
        cfg.serial.clone()
    };
    ascii_field(&s, s.len().min(252))
}

fn hex_wwn(cfg: &LuConfig) -> String {
    cfg.naa_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Designator header (SPC-4 7.8.6.1).
fn designator(out: &mut Vec<u8>, proto: Option<u8>, code_set: u8, assoc: u8, kind: u8, v: &[u8]) {
    let (piv, proto) = match proto {
        Some(p) => (0x80, p << 4),
        None => (0, 0),
    };
    out.push(proto | code_set);
    out.push(piv | (assoc << 4) | kind);
    out.push(0);
    out.push(v.len() as u8);
    out.extend_from_slice(v);
}

/// SCSI name string: UTF-8, NUL terminated, padded with NULs to a multiple of 4.
fn name_string(name: &str) -> Vec<u8> {
    let mut v: Vec<u8> = name.bytes().take(251).collect();
    let padded = (v.len() + 1).div_ceil(4) * 4;
    v.resize(padded, 0);
    v
}

const ISCSI: u8 = 0x5;
const BINARY: u8 = 0x1;
const ASCII: u8 = 0x2;
const UTF8: u8 = 0x3;
const ASSOC_LU: u8 = 0;
const ASSOC_PORT: u8 = 1;
const ASSOC_DEVICE: u8 = 2;

fn device_identification(src: &VpdSource<'_>) -> Vec<u8> {
    let mut d = Vec::new();
    // NAA (type 3), binary, the logical unit.
    designator(&mut d, None, BINARY, ASSOC_LU, 0x3, src.cfg.naa_bytes());
    // T10 vendor ID (type 1): vendor then a vendor-specific identifier.
    let mut t10 = ascii_field(&src.cfg.vendor, 8);
    let id = if src.cfg.serial.is_empty() {
        hex_wwn(src.cfg)
    } else {
        src.cfg.serial.clone()
    };
    t10.extend(ascii_field(&id, id.len().min(200)));
    designator(&mut d, None, ASCII, ASSOC_LU, 0x1, &t10);
    // Relative target port (type 4) and target port group (type 5).
    let mut rel = vec![0, 0];
    rel.extend_from_slice(&src.nexus.relative_port.to_be_bytes());
    designator(&mut d, Some(ISCSI), BINARY, ASSOC_PORT, 0x4, &rel);
    let mut tpg = vec![0, 0];
    tpg.extend_from_slice(&src.nexus.port_group.to_be_bytes());
    designator(&mut d, Some(ISCSI), BINARY, ASSOC_PORT, 0x5, &tpg);
    // SCSI name strings (type 8) of the target port and the target device.
    let port = name_string(&src.target.port_name);
    designator(&mut d, Some(ISCSI), UTF8, ASSOC_PORT, 0x8, &port);
    let dev = name_string(&src.target.name);
    designator(&mut d, Some(ISCSI), UTF8, ASSOC_DEVICE, 0x8, &dev);
    d
}

/// Block limits (SBC-4 6.6.4), 3Ch bytes of page data (offsets below are in the page
/// data, 4 less than in the page).
fn block_limits(l: &Limits, thin: bool) -> Vec<u8> {
    let mut d = vec![0u8; 0x3C];
    // d[0] WSNZ = 0: WRITE SAME with NUMBER OF BLOCKS 0 writes to the end.
    d[1] = l.max_compare_write_blocks;
    d[2..4].copy_from_slice(&l.optimal_granularity_blocks.to_be_bytes());
    d[4..8].copy_from_slice(&l.max_transfer_blocks.to_be_bytes());
    d[8..12].copy_from_slice(&l.optimal_transfer_blocks.to_be_bytes());
    if thin {
        // Unmap limits only with LBPU=1 (libiscsi checks both ways).
        d[16..20].copy_from_slice(&l.max_unmap_blocks.to_be_bytes());
        d[20..24].copy_from_slice(&l.max_unmap_descriptors.to_be_bytes());
        // OPTIMAL UNMAP GRANULARITY 1; UGAVALID with UNMAP GRANULARITY ALIGNMENT 0.
        d[24..28].copy_from_slice(&1u32.to_be_bytes());
        d[28] = 0x80;
    }
    d[32..40].copy_from_slice(&l.max_write_same_blocks.to_be_bytes());
    // Atomic writes are never split, so the limits with an atomic boundary and the
    // maximum boundary size are the plain limit.
    d[40..44].copy_from_slice(&l.max_atomic_blocks.to_be_bytes());
    d[44..48].copy_from_slice(&l.atomic_alignment.to_be_bytes());
    d[48..52].copy_from_slice(&l.atomic_granularity.to_be_bytes());
    d[52..56].copy_from_slice(&l.max_atomic_blocks.to_be_bytes());
    d[56..60].copy_from_slice(&l.max_atomic_blocks.to_be_bytes());
    d
}

/// Block device characteristics (SBC-3 6.5.2).
fn block_device_characteristics() -> Vec<u8> {
    let mut d = vec![0u8; 0x3C];
    d[0..2].copy_from_slice(&1u16.to_be_bytes()); // non-rotating medium
    d
}

/// Logical block provisioning (SBC-3 6.5.4). Thin: LBPU, LBPWS, LBPWS10, LBPRZ (no
/// ANC_SUP, no DP), provisioning type 010b; THRESHOLD EXPONENT 0 (no thresholds).
/// Fully provisioned: all zero.
fn logical_block_provisioning(thin: bool) -> Vec<u8> {
    if thin {
        vec![0, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0]
    } else {
        vec![0u8; 4]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src_parts() -> (LuConfig, Limits, TargetInfo, Nexus) {
        let mut wwn = [0u8; 16];
        wwn[..8].copy_from_slice(&[0x50, 0x01, 0x40, 0x50, 0, 0, 0, 1]);
        let cfg = LuConfig {
            wwn,
            naa_len: 8,
            serial: "SN1".into(),
            vendor: "SWYD".into(),
            ..LuConfig::default()
        };
        let target = TargetInfo {
            name: "iqn.2026-11.org.switchyard:t".into(),
            port_name: "iqn.2026-11.org.switchyard:t,t,0x0001".into(),
        };
        let nexus = Nexus {
            id: 1,
            initiator: "iqn.x,i,0x1".into(),
            relative_port: 1,
            port_group: 2,
        };
        (cfg, Limits::for_block_size(512), target, nexus)
    }

    #[test]
    fn device_identification_designators() {
        let (cfg, limits, target, nexus) = src_parts();
        let src = VpdSource {
            cfg: &cfg,
            limits: &limits,
            target: &target,
            nexus: &nexus,
        };
        let d = page(&src, 0x83).unwrap();
        assert_eq!(usize::from(u16::from_be_bytes([d[2], d[3]])), d.len() - 4);
        // NAA 5, 8 bytes.
        assert_eq!(
            &d[4..16],
            &[0x01, 0x03, 0, 8, 0x50, 0x01, 0x40, 0x50, 0, 0, 0, 1]
        );
        // Walk the designators and collect (association, type, length).
        let mut seen = Vec::new();
        let mut i = 4;
        while i < d.len() {
            seen.push(((d[i + 1] >> 4) & 3, d[i + 1] & 0x0F, d[i + 3]));
            i += 4 + usize::from(d[i + 3]);
        }
        assert_eq!(i, d.len());
        let kinds: Vec<_> = seen.iter().map(|&(a, t, _)| (a, t)).collect();
        assert_eq!(kinds, vec![(0, 3), (0, 1), (1, 4), (1, 5), (1, 8), (2, 8)]);
        for &(_, t, len) in &seen {
            if t == 8 {
                assert_eq!(len % 4, 0, "SCSI name strings are multiples of 4");
            }
        }
        assert!(d.windows(4).any(|w| w == [0, 0, 0, 2]), "port group 2");
    }

    #[test]
    fn name_string_is_nul_terminated_and_padded() {
        assert_eq!(name_string("abc"), b"abc\0".to_vec());
        assert_eq!(name_string("abcd"), b"abcd\0\0\0\0".to_vec());
    }

    #[test]
    fn block_limits_and_supported_pages() {
        let (cfg, limits, target, nexus) = src_parts();
        let src = VpdSource {
            cfg: &cfg,
            limits: &limits,
            target: &target,
            nexus: &nexus,
        };
        let bl = page(&src, 0xB0).unwrap();
        assert_eq!(bl.len(), 64);
        assert_eq!(&bl[..4], &[0, 0xB0, 0, 0x3C]);
        assert_eq!(&bl[8..12], &limits.max_transfer_blocks.to_be_bytes());
        assert_eq!(&bl[20..28], &[0; 8], "no unmap limits without UNMAP");
        assert_eq!(&bl[36..44], &limits.max_write_same_blocks.to_be_bytes());
        let sup = page(&src, 0x00).unwrap();
        assert_eq!(
            sup,
            vec![0, 0, 0, 7, 0x00, 0x80, 0x83, 0x8F, 0xB0, 0xB1, 0xB2]
        );
        for &p in &sup[4..] {
            assert!(page(&src, p).is_ok());
        }
        assert_eq!(page(&src, 0x86).unwrap_err().asc, 0x24);
        assert_eq!(&page(&src, 0xB1).unwrap()[4..6], &[0, 1]);
        assert_eq!(
            page(&src, 0x80).unwrap(),
            vec![0, 0x80, 0, 3, b'S', b'N', b'1']
        );
    }
}
