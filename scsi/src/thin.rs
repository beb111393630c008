//! Logical block provisioning (SBC-3 4.7): UNMAP (5.28), GET LBA STATUS (5.16) and the
//! unmap side of WRITE SAME (5.42, 5.43).
//!
//! A logical unit is thin when its configuration asks for it and its store can unmap
//! (`LuConfig::thin` is cleared otherwise). Thin LUs report LBPME=1 and LBPRZ=1: every
//! store zeroes what it deallocates, including partial filesystem blocks. Anchored
//! unmaps are not supported (ANC_SUP=0).
//!
//! WRITE SAME with UNMAP=1 deallocates its range whatever the data-out block holds, so
//! it reads back as zeroes afterwards: LIO does the same, and libiscsi's
//! test_writesame*_unmap_until_end sends a block of FFh and expects zeroes.
//!
//! On a fully provisioned LU, UNMAP is INVALID COMMAND OPERATION CODE (as LIO and tgt
//! answer; libiscsi's test_unmap_vpd then expects LBPU=0), WRITE SAME with UNMAP is
//! INVALID FIELD IN CDB (LBPWS=0), and GET LBA STATUS reports every block mapped.

use blockdev::BlockStore;

use crate::cdb::{check_range, Cdb};
use crate::lu::{truncate, LogicalUnit};
use crate::sense::{IoKind, Sense};

/// Length of the UNMAP parameter list header and of one block descriptor.
const HEADER: usize = 8;
const DESCRIPTOR: usize = 16;
/// GET LBA STATUS never builds more descriptors than this, whatever the allocation
/// length.
const MAX_STATUS_DESCRIPTORS: usize = 1024;

pub(crate) fn execute(lu: &LogicalUnit, cdb: &Cdb, data_out: &[u8]) -> Result<Vec<u8>, Sense> {
    match *cdb {
        Cdb::Unmap { anchor, param_len } => {
            unmap(lu, anchor, param_len, data_out)?;
            Ok(Vec::new())
        }
        Cdb::GetLbaStatus { lba, alloc } => {
            let data = get_lba_status(lu, lba, alloc)?;
            Ok(truncate(data, alloc as usize))
        }
        _ => Err(Sense::invalid_opcode()),
    }
}

/// WRITE SAME flags: ANCHOR is never supported (ANC_SUP=0; ANCHOR without UNMAP is
/// invalid anyway), UNMAP only on a thin LU (LBPWS/LBPWS10).
pub(crate) fn check_write_same_flags(
    lu: &LogicalUnit,
    unmap: bool,
    anchor: bool,
) -> Result<(), Sense> {
    if anchor {
        return Err(Sense::invalid_field_in_cdb(1, Some(4)));
    }
    if unmap && !lu.config().thin {
        return Err(Sense::invalid_field_in_cdb(1, Some(3)));
    }
    Ok(())
}

/// Deallocates `blocks` blocks at `lba` (already range-checked). The stores zero
/// unaligned edges themselves, so this is also right for partial filesystem blocks.
pub(crate) fn deallocate(lu: &LogicalUnit, lba: u64, blocks: u64) -> Result<(), Sense> {
    if blocks == 0 {
        return Ok(());
    }
    lu.store()
        .unmap(lba, blocks)
        .map_err(|e| Sense::from_block_error(&e, IoKind::Write))
}

fn be16(b: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([b[0], b[1]]))
}

/// UNMAP (SBC-3 5.28): validate the whole parameter list, then deallocate each
/// descriptor's range while holding it (so it cannot tear a COMPARE AND WRITE).
fn unmap(lu: &LogicalUnit, anchor: bool, param_len: u16, data_out: &[u8]) -> Result<(), Sense> {
    let cfg = lu.config();
    if !cfg.thin {
        return Err(Sense::invalid_opcode());
    }
    lu.check_writable()?;
    if anchor {
        return Err(Sense::invalid_field_in_cdb(1, Some(0)));
    }
    if param_len == 0 {
        return Ok(());
    }
    let list = &data_out[..usize::from(param_len).min(data_out.len())];
    if list.len() < HEADER {
        return Err(Sense::parameter_list_length_error());
    }
    let data_len = be16(&list[0..2]);
    let desc_len = be16(&list[2..4]);
    // UNMAP DATA LENGTH counts the bytes after itself: at least the rest of the
    // header and the descriptors.
    if data_len + 2 < HEADER + desc_len {
        return Err(Sense::invalid_field_in_param_list(0, None));
    }
    // Descriptors the header announces but the data-out does not hold.
    if HEADER + desc_len > list.len() {
        return Err(Sense::parameter_list_length_error());
    }
    // An incomplete last descriptor is ignored (SBC-3 5.28.2).
    let count = desc_len / DESCRIPTOR;
    let limits = lu.limits();
    if count > limits.max_unmap_descriptors as usize {
        return Err(Sense::invalid_field_in_param_list(2, None));
    }
    let capacity = lu.store().num_blocks();
    let mut ranges = Vec::with_capacity(count);
    let mut total = 0u64;
    for (i, d) in list[HEADER..HEADER + count * DESCRIPTOR]
        .chunks_exact(DESCRIPTOR)
        .enumerate()
    {
        let lba = u64::from_be_bytes(d[0..8].try_into().expect("8 bytes"));
        let blocks = u64::from(u32::from_be_bytes(d[8..12].try_into().expect("4 bytes")));
        total += blocks;
        if total > u64::from(limits.max_unmap_blocks) {
            let at = HEADER + i * DESCRIPTOR + 8;
            return Err(Sense::invalid_field_in_param_list(at as u16, None));
        }
        check_range(lba, blocks, capacity)?;
        ranges.push((lba, blocks));
    }
    for (lba, blocks) in ranges.into_iter().filter(|&(_, n)| n > 0) {
        let _held = lu.lock_shared(lba, blocks);
        deallocate(lu, lba, blocks)?;
    }
    Ok(())
}

/// GET LBA STATUS (SBC-3 5.16): LBA status descriptors from `lba` on, as many as the
/// allocation length holds (at least one). Mapped → provisioning status 0,
/// deallocated → 1.
fn get_lba_status(lu: &LogicalUnit, lba: u64, alloc: u32) -> Result<Vec<u8>, Sense> {
    let store = lu.store().as_ref();
    let capacity = store.num_blocks();
    if lba >= capacity {
        return Err(Sense::lba_out_of_range());
    }
    let want = (alloc as usize)
        .saturating_sub(HEADER)
        .div_ceil(DESCRIPTOR)
        .clamp(1, MAX_STATUS_DESCRIPTORS);
    let runs = if lu.config().thin && store.capabilities().lba_status {
        runs(store, lba, want)?
    } else {
        vec![(lba, capacity - lba, true)]
    };
    let mut d = vec![0u8; HEADER];
    for (mut start, mut blocks, mapped) in runs {
        // NUMBER OF LOGICAL BLOCKS is 32 bits: a longer run takes several descriptors.
        while blocks > 0 {
            let n = u32::try_from(blocks).unwrap_or(u32::MAX);
            d.extend_from_slice(&start.to_be_bytes());
            d.extend_from_slice(&n.to_be_bytes());
            d.push(if mapped { 0 } else { 1 });
            d.extend_from_slice(&[0, 0, 0]);
            start += u64::from(n);
            blocks -= u64::from(n);
        }
    }
    let len = (d.len() - 4) as u32;
    d[..4].copy_from_slice(&len.to_be_bytes());
    Ok(d)
}

/// Up to `want` runs of equal allocation state from `lba`: (start, blocks, mapped).
fn runs(store: &dyn BlockStore, lba: u64, want: usize) -> Result<Vec<(u64, u64, bool)>, Sense> {
    let capacity = store.num_blocks();
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    let mut cur = lba;
    while cur < capacity {
        let st = store
            .lba_status(cur)
            .map_err(|e| Sense::from_block_error(&e, IoKind::Read))?;
        let n = st.blocks.clamp(1, capacity - cur);
        let full = out.len() == want;
        match out.last_mut() {
            Some(last) if last.2 == st.mapped => last.1 += n,
            _ if full => break,
            _ => out.push((cur, n, st.mapped)),
        }
        cur += n;
    }
    Ok(out)
}
