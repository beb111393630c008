//! Mode parameters (SPC-4 7.5, SBC-3 6.4): MODE SENSE(6/10) and MODE SELECT(6/10).
//!
//! Pages: caching (08h: WCE and RCD changeable), control (0Ah: D_SENSE and SWP
//! changeable) and informational exceptions control (1Ch: nothing changeable). Values
//! are kept per logical unit, not per nexus; a change raises MODE PARAMETERS CHANGED
//! for the other nexuses (the caller does that). There are no saved values: page
//! control 11b and SP=1 are refused. A LUN reset restores the defaults (SAM-5 6.3.3).

use crate::cdb::PageControl;
use crate::sense::Sense;

/// Mutable mode parameters of one logical unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ModeState {
    /// Caching page WCE: writes may be cached; with WCE=0 every write is FUA.
    pub(crate) wce: bool,
    /// Caching page RCD (read cache disable); accepted, no effect.
    pub(crate) rcd: bool,
    /// Control page D_SENSE: return descriptor-format sense data.
    pub(crate) d_sense: bool,
    /// Control page SWP: software write protect.
    pub(crate) swp: bool,
}

impl Default for ModeState {
    fn default() -> Self {
        ModeState {
            wce: true,
            rcd: false,
            d_sense: false,
            swp: false,
        }
    }
}

const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0A;
const INFO_EXCEPTIONS: u8 = 0x1C;
const ALL_PAGES: u8 = 0x3F;

/// Supported pages, in the order "return all pages" lists them.
const PAGES: [u8; 3] = [CACHING, CONTROL, INFO_EXCEPTIONS];

/// Bytes of one page for a page control value (not `Saved`).
fn page(code: u8, pc: PageControl, st: &ModeState) -> Vec<u8> {
    let cur = match pc {
        PageControl::Default => ModeState::default(),
        _ => *st,
    };
    let changeable = pc == PageControl::Changeable;
    match code {
        CACHING => {
            let mut p = vec![0u8; 20];
            p[0] = CACHING;
            p[1] = 0x12;
            p[2] = if changeable {
                0x05
            } else {
                u8::from(cur.wce) << 2 | u8::from(cur.rcd)
            };
            p
        }
        CONTROL => {
            let mut p = vec![0u8; 12];
            p[0] = CONTROL;
            p[1] = 0x0A;
            if changeable {
                p[2] = 0x04;
                p[4] = 0x08;
            } else {
                p[2] = u8::from(cur.d_sense) << 2;
                // QUEUE ALGORITHM MODIFIER 1: commands may be reordered.
                p[3] = 0x10;
                p[4] = u8::from(cur.swp) << 3;
                // BUSY TIMEOUT PERIOD: unlimited.
                p[8] = 0xFF;
                p[9] = 0xFF;
            }
            p
        }
        _ => {
            let mut p = vec![0u8; 12];
            p[0] = INFO_EXCEPTIONS;
            p[1] = 0x0A;
            if !changeable {
                // DEXCPT: informational exception reporting is disabled.
                p[2] = 0x08;
            }
            p
        }
    }
}

/// What MODE SENSE needs to know about the logical unit.
pub(crate) struct MediumInfo {
    pub(crate) block_size: u32,
    pub(crate) blocks: u64,
    pub(crate) write_protected: bool,
}

/// MODE SENSE parameter data, before allocation-length truncation.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mode_sense(
    st: &ModeState,
    medium: &MediumInfo,
    ten: bool,
    dbd: bool,
    llbaa: bool,
    pc: PageControl,
    page_code: u8,
    subpage: u8,
) -> Result<Vec<u8>, Sense> {
    if pc == PageControl::Saved {
        return Err(Sense::saving_params_not_supported());
    }
    // Only subpage 00h (or FFh, "all subpages", which for these pages is the same).
    if subpage != 0x00 && subpage != 0xFF {
        return Err(Sense::invalid_field_in_cdb(3, None));
    }
    let single;
    let codes: &[u8] = if page_code == ALL_PAGES {
        &PAGES
    } else if PAGES.contains(&page_code) {
        single = [page_code];
        &single
    } else {
        return Err(Sense::invalid_field_in_cdb(2, Some(5)));
    };

    // Block descriptor (SPC-4 7.5.5, SBC-3 6.4.2): short, or long with LLBAA.
    let mut bd = Vec::new();
    if !dbd {
        let zero = pc == PageControl::Changeable;
        let (blocks, bs) = if zero {
            (0, 0)
        } else {
            (medium.blocks, medium.block_size)
        };
        if ten && llbaa {
            bd.extend_from_slice(&blocks.to_be_bytes());
            bd.extend_from_slice(&[0, 0, 0, 0]);
            bd.extend_from_slice(&bs.to_be_bytes());
        } else {
            let n = u32::try_from(blocks).unwrap_or(u32::MAX).min(0x00FF_FFFF);
            bd.extend_from_slice(&n.to_be_bytes());
            bd.extend_from_slice(&(bs & 0x00FF_FFFF).to_be_bytes());
        }
    }

    // DEVICE-SPECIFIC PARAMETER (SBC-3 6.4.1): WP and DPOFUA.
    let dsp = if medium.write_protected { 0x80 } else { 0 } | 0x10;
    let mut out = if ten {
        let mut h = vec![0u8; 8];
        h[3] = dsp;
        if llbaa && !dbd {
            h[4] = 0x01; // LONGLBA
        }
        h[6..8].copy_from_slice(&(bd.len() as u16).to_be_bytes());
        h
    } else {
        vec![0, 0, dsp, bd.len() as u8]
    };
    out.extend_from_slice(&bd);
    for &c in codes {
        out.extend_from_slice(&page(c, pc, st));
    }
    if ten {
        let len = (out.len() - 2) as u16;
        out[..2].copy_from_slice(&len.to_be_bytes());
    } else {
        out[0] = (out.len() - 1) as u8;
    }
    Ok(out)
}

/// MODE SELECT: validates the whole parameter list against the current values and the
/// changeable masks, then returns the new state. Nothing changes on error.
pub(crate) fn mode_select(
    st: &ModeState,
    medium: &MediumInfo,
    ten: bool,
    pf: bool,
    params: &[u8],
) -> Result<ModeState, Sense> {
    if params.is_empty() {
        return Ok(*st);
    }
    let hdr = if ten { 8 } else { 4 };
    if params.len() < hdr {
        return Err(Sense::parameter_list_length_error());
    }
    let (medium_type_at, bd_len, long) = if ten {
        (
            2,
            usize::from(u16::from_be_bytes([params[6], params[7]])),
            params[4] & 0x01 != 0,
        )
    } else {
        (1, usize::from(params[3]), false)
    };
    if params[medium_type_at] != 0 {
        return Err(Sense::invalid_field_in_param_list(
            medium_type_at as u16,
            None,
        ));
    }
    let bd_size = if long { 16 } else { 8 };
    if bd_len != 0 && bd_len != bd_size {
        let at = if ten { 6 } else { 3 };
        return Err(Sense::invalid_field_in_param_list(at, None));
    }
    if params.len() < hdr + bd_len {
        return Err(Sense::parameter_list_length_error());
    }
    if bd_len != 0 {
        check_block_descriptor(&params[hdr..hdr + bd_len], hdr, long, medium)?;
    }

    let mut new = *st;
    let mut pos = hdr + bd_len;
    if pos < params.len() && !pf {
        // PF=0: the pages would be vendor specific; we have none.
        return Err(Sense::invalid_field_in_cdb(1, Some(4)));
    }
    while pos < params.len() {
        let rest = &params[pos..];
        if rest.len() < 2 {
            return Err(Sense::parameter_list_length_error());
        }
        let code = rest[0] & 0x3F;
        if rest[0] & 0x80 != 0 {
            // PS is reserved in MODE SELECT.
            return Err(Sense::invalid_field_in_param_list(pos as u16, Some(7)));
        }
        if rest[0] & 0x40 != 0 {
            // No subpages are supported.
            return Err(Sense::invalid_field_in_param_list(pos as u16, Some(6)));
        }
        if !PAGES.contains(&code) {
            return Err(Sense::invalid_field_in_param_list(pos as u16, Some(5)));
        }
        let cur = page(code, PageControl::Current, &new);
        let mask = page(code, PageControl::Changeable, &new);
        if usize::from(rest[1]) != cur.len() - 2 {
            return Err(Sense::invalid_field_in_param_list(pos as u16 + 1, None));
        }
        if rest.len() < cur.len() {
            return Err(Sense::parameter_list_length_error());
        }
        let sent = &rest[..cur.len()];
        for i in 2..cur.len() {
            let bad = (sent[i] ^ cur[i]) & !mask[i];
            if bad != 0 {
                let bit = 7 - bad.leading_zeros() as u8;
                return Err(Sense::invalid_field_in_param_list(
                    (pos + i) as u16,
                    Some(bit),
                ));
            }
        }
        match code {
            CACHING => {
                new.wce = sent[2] & 0x04 != 0;
                new.rcd = sent[2] & 0x01 != 0;
            }
            CONTROL => {
                new.d_sense = sent[2] & 0x04 != 0;
                new.swp = sent[4] & 0x08 != 0;
            }
            _ => {}
        }
        pos += cur.len();
    }
    Ok(new)
}

/// A block descriptor in MODE SELECT may only restate the current geometry.
fn check_block_descriptor(
    bd: &[u8],
    at: usize,
    long: bool,
    medium: &MediumInfo,
) -> Result<(), Sense> {
    let (blocks, bs_at) = if long {
        let mut n = [0u8; 8];
        n.copy_from_slice(&bd[..8]);
        (u64::from_be_bytes(n), 12)
    } else {
        (u64::from(u32::from_be_bytes([0, bd[1], bd[2], bd[3]])), 5)
    };
    if !long && bd[0] != 0 {
        // Density code.
        return Err(Sense::invalid_field_in_param_list(at as u16, None));
    }
    let short_max = 0x00FF_FFFF;
    let blocks_ok = blocks == 0
        || blocks == medium.blocks
        || (!long && blocks == short_max && medium.blocks >= short_max);
    if !blocks_ok {
        return Err(Sense::invalid_field_in_param_list(at as u16, None));
    }
    let bs = u32::from_be_bytes([0, bd[bs_at], bd[bs_at + 1], bd[bs_at + 2]]);
    if bs != medium.block_size {
        return Err(Sense::invalid_field_in_param_list(
            (at + bs_at) as u16,
            None,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEDIUM: MediumInfo = MediumInfo {
        block_size: 512,
        blocks: 2048,
        write_protected: false,
    };

    fn sense6(pc: PageControl, page: u8, dbd: bool) -> Result<Vec<u8>, Sense> {
        mode_sense(
            &ModeState::default(),
            &MEDIUM,
            false,
            dbd,
            false,
            pc,
            page,
            0,
        )
    }

    #[test]
    fn all_pages_with_block_descriptor_golden() {
        let d = sense6(PageControl::Current, 0x3F, false).unwrap();
        assert_eq!(d.len(), 4 + 8 + 20 + 12 + 12);
        assert_eq!(&d[..4], &[(d.len() - 1) as u8, 0, 0x10, 8]);
        assert_eq!(&d[4..12], &[0, 0, 0x08, 0x00, 0, 0, 0x02, 0x00]);
        assert_eq!(&d[12..15], &[0x08, 0x12, 0x04], "caching, WCE=1");
        assert_eq!(&d[32..36], &[0x0A, 0x0A, 0x00, 0x10], "control");
        assert_eq!(&d[44..47], &[0x1C, 0x0A, 0x08], "informational exceptions");
    }

    #[test]
    fn changeable_control_page_shows_d_sense_and_swp() {
        let d = sense6(PageControl::Changeable, 0x0A, true).unwrap();
        assert_eq!(
            d,
            vec![15, 0, 0x10, 0, 0x0A, 0x0A, 0x04, 0, 0x08, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn saved_and_unknown_pages_fail() {
        assert_eq!(
            sense6(PageControl::Saved, 0x3F, false).unwrap_err(),
            Sense::saving_params_not_supported()
        );
        let e = sense6(PageControl::Current, 0x19, false).unwrap_err();
        assert_eq!((e.asc, e.field.unwrap().byte), (0x24, 2));
    }

    #[test]
    fn mode_sense10_long_lba_descriptor() {
        let d = mode_sense(
            &ModeState::default(),
            &MEDIUM,
            true,
            false,
            true,
            PageControl::Current,
            0x08,
            0,
        )
        .unwrap();
        assert_eq!(&d[..8], &[0, (d.len() - 2) as u8, 0, 0x10, 0x01, 0, 0, 16]);
        assert_eq!(&d[8..16], &2048u64.to_be_bytes());
        assert_eq!(&d[20..24], &512u32.to_be_bytes());
        assert_eq!(d[24], 0x08);
    }

    fn select6_control(byte2: u8, byte4: u8) -> Vec<u8> {
        let mut p = vec![0, 0, 0, 0];
        let mut page = page(CONTROL, PageControl::Current, &ModeState::default());
        page[2] = byte2;
        page[4] = byte4;
        p.extend_from_slice(&page);
        p
    }

    #[test]
    fn select_changes_changeable_bits() {
        let st = ModeState::default();
        let new = mode_select(&st, &MEDIUM, false, true, &select6_control(0x04, 0x08)).unwrap();
        assert!(new.d_sense && new.swp);
        assert!(new.wce, "other pages untouched");
    }

    #[test]
    fn select_rejects_non_changeable_bits_with_pointer() {
        let st = ModeState::default();
        // TST=001b is not changeable: byte 4 + 2 of the parameter list, bit 5.
        let e = mode_select(&st, &MEDIUM, false, true, &select6_control(0x20, 0)).unwrap_err();
        assert_eq!(e.asc, 0x26);
        let f = e.field.unwrap();
        assert_eq!((f.cdb, f.byte, f.bit), (false, 6, Some(5)));
    }

    #[test]
    fn select_length_and_pf_errors() {
        let st = ModeState::default();
        let full = select6_control(0, 0);
        assert_eq!(
            mode_select(&st, &MEDIUM, false, true, &full[..10]).unwrap_err(),
            Sense::parameter_list_length_error()
        );
        assert_eq!(
            mode_select(&st, &MEDIUM, false, true, &full[..3]).unwrap_err(),
            Sense::parameter_list_length_error()
        );
        assert_eq!(
            mode_select(&st, &MEDIUM, false, false, &full)
                .unwrap_err()
                .asc,
            0x24
        );
        // Header only (no pages) is fine, also with a matching block descriptor.
        let mut bd = vec![0, 0, 0, 8, 0, 0, 0x08, 0x00, 0, 0, 0x02, 0x00];
        assert_eq!(mode_select(&st, &MEDIUM, false, true, &bd).unwrap(), st);
        bd[10] = 0x10; // 4096-byte blocks: not ours
        assert_eq!(
            mode_select(&st, &MEDIUM, false, true, &bd).unwrap_err().asc,
            0x26
        );
    }
}
