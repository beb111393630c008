//! Atomic block commands: COMPARE AND WRITE (SBC-3 5.2) and WRITE ATOMIC(16) (SBC-4
//! 5.48). Both hold their LBA range exclusively (`range_lock.rs`) for the whole
//! read-compare-write or write, so no other command sees or makes a torn result.
//!
//! Atomicity is with respect to other commands. A power loss in the middle of a WRITE
//! ATOMIC on a `FileStore` may leave part of it written: `pwrite` of several blocks is
//! not crash-atomic on common filesystems.

use crate::cdb::{check_range, Cdb};
use crate::lu::LogicalUnit;
use crate::sense::{IoKind, Sense};

pub(crate) fn execute(lu: &LogicalUnit, cdb: &Cdb, data_out: &[u8]) -> Result<Vec<u8>, Sense> {
    match *cdb {
        Cdb::CompareAndWrite {
            lba, blocks, fua, ..
        } => compare_and_write(lu, lba, blocks, fua, data_out)?,
        Cdb::WriteAtomic {
            lba,
            boundary,
            blocks,
            fua,
            ..
        } => write_atomic(lu, lba, boundary, blocks, fua, data_out)?,
        _ => return Err(Sense::invalid_opcode()),
    }
    Ok(Vec::new())
}

/// COMPARE AND WRITE: the data-out is NUMBER OF LOGICAL BLOCKS blocks to compare with
/// the medium, then as many to write. A miscompare writes nothing and reports the
/// offset of the first differing byte in INFORMATION (VALID=1).
fn compare_and_write(
    lu: &LogicalUnit,
    lba: u64,
    blocks: u8,
    fua: bool,
    data_out: &[u8],
) -> Result<(), Sense> {
    lu.check_writable()?;
    if blocks > lu.limits().max_compare_write_blocks {
        return Err(Sense::invalid_field_in_cdb(13, None));
    }
    let store = lu.store().as_ref();
    check_range(lba, u64::from(blocks), store.num_blocks())?;
    let len = usize::from(blocks) * store.block_size() as usize;
    // The data-out must be exactly both halves (LIO refuses under- and overflow; a
    // 256-block request wraps NUMBER OF LOGICAL BLOCKS to 0 and must fail too).
    if data_out.len() != 2 * len {
        return Err(Sense::invalid_field_in_cdb(13, None));
    }
    // SBC-3 5.2: zero blocks is not an error and transfers nothing.
    if blocks == 0 {
        return Ok(());
    }
    let (expect, new) = data_out.split_at(len);
    let _held = lu.lock_exclusive(lba, u64::from(blocks));
    let mut current = vec![0u8; len];
    store
        .read(lba, &mut current)
        .map_err(|e| Sense::from_block_error(&e, IoKind::Read))?;
    if let Some(i) = current.iter().zip(expect).position(|(a, b)| a != b) {
        return Err(Sense::miscompare(i as u64));
    }
    store
        .write(lba, new, fua || !lu.mode().wce)
        .map_err(|e| Sense::from_block_error(&e, IoKind::Write))
}

/// WRITE ATOMIC(16): TRANSFER LENGTH within MAXIMUM ATOMIC TRANSFER LENGTH, ATOMIC
/// BOUNDARY within MAXIMUM ATOMIC BOUNDARY SIZE, the LBA a multiple of ATOMIC
/// ALIGNMENT and the length of ATOMIC TRANSFER LENGTH GRANULARITY (each INVALID FIELD
/// IN CDB). The whole transfer must arrive: a partial atomic write is no atomic write.
fn write_atomic(
    lu: &LogicalUnit,
    lba: u64,
    boundary: u16,
    blocks: u16,
    fua: bool,
    data_out: &[u8],
) -> Result<(), Sense> {
    lu.check_writable()?;
    let l = lu.limits();
    let n = u64::from(blocks);
    if u32::from(boundary) > l.max_atomic_blocks {
        return Err(Sense::invalid_field_in_cdb(10, None));
    }
    if u32::from(blocks) > l.max_atomic_blocks || u32::from(blocks) > l.max_transfer_blocks {
        return Err(Sense::invalid_field_in_cdb(12, None));
    }
    let store = lu.store().as_ref();
    check_range(lba, n, store.num_blocks())?;
    if l.atomic_alignment > 1 && !lba.is_multiple_of(u64::from(l.atomic_alignment)) {
        return Err(Sense::invalid_field_in_cdb(2, None));
    }
    if l.atomic_granularity > 1 && !n.is_multiple_of(u64::from(l.atomic_granularity)) {
        return Err(Sense::invalid_field_in_cdb(12, None));
    }
    if blocks == 0 {
        return Ok(());
    }
    let len = usize::from(blocks) * store.block_size() as usize;
    let Some(data) = data_out.get(..len) else {
        return Err(Sense::invalid_field_in_cdb(12, None));
    };
    let _held = lu.lock_exclusive(lba, n);
    store
        .write(lba, data, fua || !lu.mode().wce)
        .map_err(|e| Sense::from_block_error(&e, IoKind::Write))
}
