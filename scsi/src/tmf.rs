//! REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 6.38): what the fabric answers.
//!
//! The iSCSI fabric (RFC 7143 11.5.1) performs ABORT TASK, ABORT TASK SET, CLEAR TASK
//! SET, LOGICAL UNIT RESET and TARGET WARM/COLD RESET; it answers CLEAR ACA and TASK
//! REASSIGN with "not supported", and iSCSI has no QUERY TASK, QUERY TASK SET, QUERY
//! ASYNCHRONOUS EVENT or I_T NEXUS RESET function.

use crate::lu::truncate;
use crate::sense::Sense;

/// Byte 0: ATS, ATSS, CTSS, LURS, TRS (not CACAS, QTS, WAKES).
const SUPPORTED: u8 = 0x80 | 0x40 | 0x10 | 0x08 | 0x02;

/// Parameter data, truncated to the allocation length. REPD=1 asks for the 16-byte
/// extended format; its timeouts are not reported (TMFTMOV=0).
pub(crate) fn report(repd: bool, alloc: u32) -> Result<Vec<u8>, Sense> {
    // SPC-4 6.38: an allocation length under four is an invalid field.
    if alloc < 4 {
        return Err(Sense::invalid_field_in_cdb(6, None));
    }
    let mut d = vec![SUPPORTED, 0, 0, 0];
    if repd {
        d[3] = 0x0C; // ADDITIONAL DATA LENGTH
        d.resize(16, 0);
    }
    Ok(truncate(d, alloc as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_and_extended_formats() {
        assert_eq!(report(false, 255).unwrap(), vec![0xDA, 0, 0, 0]);
        let ext = report(true, 255).unwrap();
        assert_eq!(ext.len(), 16);
        assert_eq!(&ext[..4], &[0xDA, 0, 0, 0x0C]);
        assert_eq!(ext[4] & 0x01, 0, "TMFTMOV: no timeouts");
        assert_eq!(report(true, 6).unwrap().len(), 6);
        let e = report(false, 3).unwrap_err();
        assert_eq!((e.asc, e.field.unwrap().byte), (0x24, 6));
    }
}
