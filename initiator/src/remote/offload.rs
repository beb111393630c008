//! Copy offload: EXTENDED COPY (LID1, SPC-4 6.4) between two LUs of one array, so
//! that an online migration moves the data inside the array instead of through the
//! node.
//!
//! # When the array copies
//!
//! [`RemoteStore::extended_copy_to`] asks the array of the source LU to copy blocks to
//! another of its LUs. That applies when
//! - both stores reach the same target (same target name and portal): a copy manager
//!   reaches only the LUs of its own array;
//! - both LUs report an NAA designator (VPD page 83h, read at open): target
//!   descriptors name LUs by it;
//! - the copy manager takes identification target descriptors and block-to-block
//!   segments (RECEIVE COPY RESULTS, OPERATING PARAMETERS: asked once per store, the
//!   answer kept for the store's life);
//! - the destination LU is visible to the initiator of the source store's sessions:
//!   the array resolves target descriptors against the issuing initiator's LUN map
//!   (COPY TARGET DEVICE NOT REACHABLE otherwise).
//!
//! # Fallback contract
//!
//! [`OffloadOutcome::Unsupported`] means "offload does not apply here: copy through the
//! node" (read the source, write the destination). It comes back without sending
//! anything when a precondition above fails, and when the array refuses before moving
//! data: INVALID COMMAND OPERATION CODE (or any ILLEGAL REQUEST to OPERATING
//! PARAMETERS), OPERATING PARAMETERS without block copy or with limits no list fits,
//! UNSUPPORTED TARGET / SEGMENT DESCRIPTOR TYPE CODE, or COPY ABORTED, COPY TARGET
//! DEVICE NOT REACHABLE that does not point at a segment descriptor. Lists of the same
//! call that completed before such a refusal copied exactly the blocks asked for, so
//! copying the whole range again through the node is always safe.
//!
//! `Err` is everything else: a range beyond either LU, a destination that is write
//! protected or a length that is not whole destination blocks (all checked before
//! anything is sent); transport failures and timeouts; sense such as MEDIUM ERROR or
//! DATA PROTECT; RESERVATION CONFLICT; COPY ABORTED pointing at a segment descriptor
//! (the array's own range check: our capacity was stale), which comes back as
//! [`BlockError::Sense`] with the array's codes (0A/0D/02) and the byte it named; and a
//! COPY STATUS that does not report the list completed with all its segments and
//! bytes. After an `Err` the destination range may hold part of the copy.
//!
//! # How
//!
//! The range is cut into pieces of at most `RemoteStoreOptions::max_copy_bytes`, and
//! each piece by [`block_copy`] into parameter lists that fit the copy manager's
//! limits. The lists run one after the other, each as an EXTENDED COPY with LIST ID
//! USAGE 00b (results held) to the source LU, then RECEIVE COPY RESULTS (COPY STATUS)
//! for its list identifier on the same session, since held results belong to one I_T
//! nexus. Both commands have the store's command timeout.

use std::io;
use std::sync::atomic::Ordering;

use blockdev::{BlockError, BlockStore};
use bytes::Bytes;
use scsi::xcopy_builder::{
    block_copy, receive_copy_results_cdb, BlockCopy, CopyManagerStatus, CopyStatus, CopyTarget,
    ExtendedCopyList, ListIdUsage, OperatingParameters, RcrAction, HEADER_LEN,
    TARGET_DESCRIPTOR_LEN,
};

use super::{backend_sense, RemoteStore};
use crate::outcome::{sense_key, status};
use crate::session::Session;

const XCOPY: &str = "EXTENDED COPY";
const RCR: &str = "RECEIVE COPY RESULTS";
/// Allocation length of RECEIVE COPY RESULTS: OPERATING PARAMETERS is 44 bytes and
/// up to 255 descriptor type codes.
const RCR_ALLOC: u32 = 512;

/// How [`RemoteStore::extended_copy_to`] ended when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffloadOutcome {
    /// The array copied every block, with this many EXTENDED COPY commands (0 for a
    /// copy of no blocks).
    Copied { lists: usize },
    /// Offload does not apply, for the reason given: copy through the node. See the
    /// fallback contract in the module docs.
    Unsupported(String),
}

/// What the array's copy manager said about itself.
#[derive(Debug, Clone)]
pub(super) enum CopyManager {
    Ready(OperatingParameters),
    /// Why offload cannot be used with this array.
    Refused(String),
}

/// How one EXTENDED COPY ended, when not with an error.
enum ListOutcome {
    Copied,
    Refused(String),
}

impl RemoteStore {
    /// Copies `blocks` blocks (of this LU's block size) from this LU at `src_lba` to
    /// `dst` at `dst_lba` (in `dst`'s blocks) inside the array, with EXTENDED COPY.
    ///
    /// [`OffloadOutcome::Unsupported`]: offload does not apply (different arrays, no
    /// NAA designator, the array has no usable copy manager or cannot reach `dst` for
    /// this initiator), copy through the node instead; `Err`: the copy failed. See
    /// the module docs (`offload.rs`) for the full contract.
    pub async fn extended_copy_to(
        &self,
        dst: &RemoteStore,
        src_lba: u64,
        dst_lba: u64,
        blocks: u64,
    ) -> Result<OffloadOutcome, BlockError> {
        let (sbs, dbs) = (u64::from(self.block_size), u64::from(dst.block_size));
        let bytes = blocks
            .checked_mul(sbs)
            .ok_or_else(|| BlockError::OutOfRange {
                lba: src_lba,
                blocks,
                capacity: self.num_blocks(),
            })?;
        if bytes % dbs != 0 {
            return Err(BlockError::Misaligned {
                len: usize::try_from(bytes).unwrap_or(usize::MAX),
                block_size: dst.block_size,
            });
        }
        self.check_range(src_lba, blocks)?;
        dst.check_range(dst_lba, bytes / dbs)?;
        if dst.write_protected.load(Ordering::Acquire) {
            return Err(BlockError::ReadOnly);
        }
        if blocks == 0 {
            return Ok(OffloadOutcome::Copied { lists: 0 });
        }
        let (src_naa, dst_naa) = match self.copy_targets(dst) {
            Ok(naas) => naas,
            Err(why) => return Ok(self.unsupported(dst, why)),
        };
        let limits = match self.copy_manager().await? {
            CopyManager::Ready(p) => p.limits(),
            CopyManager::Refused(why) => return Ok(self.unsupported(dst, why.clone())),
        };
        let src_t = CopyTarget {
            naa: src_naa.to_vec(),
            block_size: self.block_size,
        };
        let dst_t = CopyTarget {
            naa: dst_naa.to_vec(),
            block_size: dst.block_size,
        };
        // Pieces of whole source and destination blocks (block sizes are powers of two).
        let step = sbs.max(dbs) / sbs;
        let piece = (self.opts.max_copy_bytes / sbs / step).max(1) * step;
        let mut lists = 0usize;
        let mut done = 0u64;
        while done < blocks {
            let n = piece.min(blocks - done);
            let copy = BlockCopy {
                src: src_t.clone(),
                src_lba: src_lba + done,
                dst: dst_t.clone(),
                dst_lba: dst_lba + done * sbs / dbs,
                blocks: n,
            };
            let built = match block_copy(&copy, &limits, 0, ListIdUsage::Hold) {
                Ok(built) => built,
                Err(e) => {
                    let why = format!("no EXTENDED COPY parameter list fits: {e}");
                    return Ok(self.unsupported(dst, after(why, lists)));
                }
            };
            for mut list in built {
                list.list_id = self.next_list_id.fetch_add(1, Ordering::Relaxed);
                match self.run_list(&list).await? {
                    ListOutcome::Copied => {
                        lists += 1;
                        self.offload_blocks
                            .fetch_add(list.blocks(), Ordering::Relaxed);
                    }
                    ListOutcome::Refused(why) => {
                        return Ok(self.unsupported(dst, after(why, lists)));
                    }
                }
            }
            done += n;
        }
        tracing::debug!(src = %self.name, dst = %dst.name, src_lba, dst_lba, blocks, lists, "copy offloaded to the array");
        Ok(OffloadOutcome::Copied { lists })
    }

    /// [`RemoteStore::extended_copy_to`] for synchronous callers, on the runtime
    /// captured at open, like the [`BlockStore`] methods: call it from a
    /// `spawn_blocking` thread or a plain thread, never from inside an async task.
    pub fn extended_copy_to_blocking(
        &self,
        dst: &RemoteStore,
        src_lba: u64,
        dst_lba: u64,
        blocks: u64,
    ) -> Result<OffloadOutcome, BlockError> {
        self.handle
            .block_on(self.extended_copy_to(dst, src_lba, dst_lba, blocks))
    }

    /// Blocks (of this LU's block size) that the array copied from this LU with
    /// EXTENDED COPY so far: every list that completed, including those of a call that
    /// later failed or fell back.
    pub fn offload_blocks(&self) -> u64 {
        self.offload_blocks.load(Ordering::Relaxed)
    }

    /// The NAA designators of both LUs, or why offload cannot name them.
    fn copy_targets<'a>(&'a self, dst: &'a RemoteStore) -> Result<(&'a [u8], &'a [u8]), String> {
        let (a, b) = (self.client.config(), dst.client.config());
        if a.portal != b.portal || !a.target_name.eq_ignore_ascii_case(&b.target_name) {
            return Err(format!(
                "{} (portal {}) and {} (portal {}) are not on the same target",
                self.name, a.portal, dst.name, b.portal
            ));
        }
        let naa = |s: &'a RemoteStore| {
            s.naa.as_deref().ok_or_else(|| {
                format!(
                    "{} reports no NAA designator of its LU (VPD page 83h)",
                    s.name
                )
            })
        };
        Ok((naa(self)?, naa(dst)?))
    }

    fn unsupported(&self, dst: &RemoteStore, why: String) -> OffloadOutcome {
        tracing::info!(src = %self.name, dst = %dst.name, %why, "copy offload does not apply; copy through the node");
        OffloadOutcome::Unsupported(why)
    }

    /// The copy manager of this LU's array: asked once, then remembered (failures
    /// that say nothing about the array, such as a timeout, are not).
    async fn copy_manager(&self) -> Result<&CopyManager, BlockError> {
        self.copy_manager
            .get_or_try_init(|| self.ask_copy_manager())
            .await
    }

    /// RECEIVE COPY RESULTS, OPERATING PARAMETERS.
    async fn ask_copy_manager(&self) -> Result<CopyManager, BlockError> {
        let cdb = receive_copy_results_cdb(RcrAction::OperatingParameters, 0, RCR_ALLOC);
        let out = self
            .command_outcome(None, RCR, &cdb, Bytes::new(), RCR_ALLOC, true)
            .await?;
        if out.status == status::CHECK_CONDITION {
            match out.sense_info() {
                Some(s) if s.key == sense_key::ILLEGAL_REQUEST => {
                    return Ok(CopyManager::Refused(format!(
                        "{} refuses RECEIVE COPY RESULTS (OPERATING PARAMETERS): {s}",
                        self.name
                    )));
                }
                _ => {
                    self.fail_on_sense(RCR, &cdb, &out)?;
                }
            }
        }
        let p = match OperatingParameters::parse(&out.data) {
            Ok(p) => p,
            Err(e) => {
                return Ok(CopyManager::Refused(format!(
                    "{}: unusable OPERATING PARAMETERS: {e}",
                    self.name
                )))
            }
        };
        if !p.supports_block_copy() {
            return Ok(CopyManager::Refused(format!(
                "the copy manager of {} lists no block-to-block copy (descriptor type codes {:02x?})",
                self.name, p.descriptor_codes
            )));
        }
        tracing::debug!(backend = %self.name, params = ?p, "copy manager");
        Ok(CopyManager::Ready(p))
    }

    /// One EXTENDED COPY and the COPY STATUS that confirms it, on one session.
    async fn run_list(&self, list: &ExtendedCopyList) -> Result<ListOutcome, BlockError> {
        let data = match list.to_bytes() {
            Ok(d) => d,
            Err(e) => {
                return Ok(ListOutcome::Refused(format!(
                    "cannot build the parameter list: {e}"
                )))
            }
        };
        let session = self
            .client
            .session(self.opts.timeout)
            .await
            .map_err(|e| self.transport_error(XCOPY, e))?;
        let cdb = list.cdb();
        let out = self
            .command_outcome(Some(&session), XCOPY, &cdb, Bytes::from(data), 0, true)
            .await?;
        if out.status == status::CHECK_CONDITION {
            let refused =
                |why: &str, s| Ok(ListOutcome::Refused(format!("{} {why} ({s})", self.name)));
            match out.sense_info() {
                Some(s) if (s.key, s.asc, s.ascq) == (sense_key::ILLEGAL_REQUEST, 0x20, 0x00) => {
                    return refused("does not implement EXTENDED COPY", s);
                }
                Some(s)
                    if s.key == sense_key::ILLEGAL_REQUEST
                        && s.asc == 0x26
                        && matches!(s.ascq, 0x07 | 0x09) =>
                {
                    return refused(
                        "refuses the target or segment descriptor type of a block copy",
                        s,
                    );
                }
                Some(s) if (s.key, s.asc, s.ascq) == (sense_key::COPY_ABORTED, 0x0d, 0x02) => {
                    let tdl_end = HEADER_LEN + list.targets.len() * TARGET_DESCRIPTOR_LEN;
                    let at = match fault_pointer(&out.sense) {
                        Some(Fault::Segment) => "a segment".to_string(),
                        Some(Fault::Byte(p)) if usize::from(p) >= tdl_end => {
                            format!("the segment descriptor at byte {p}")
                        }
                        _ => return refused("cannot reach a copy target for this initiator: COPY TARGET DEVICE NOT REACHABLE (is the destination LU in this initiator's LUN map?)", s),
                    };
                    return Err(backend_sense(
                        &self.name,
                        XCOPY,
                        (s.key, s.asc, s.ascq),
                        Some(s),
                        format!(
                            "{s}: the array refused {at} of list {} (a range beyond the end of a LU?)",
                            list.list_id
                        ),
                    ));
                }
                _ => {
                    self.fail_on_sense(XCOPY, &cdb, &out)?;
                }
            }
        }
        self.check_copy_status(&session, list).await?;
        Ok(ListOutcome::Copied)
    }

    /// RECEIVE COPY RESULTS, COPY STATUS for `list`: completed, with every segment and
    /// byte of it.
    async fn check_copy_status(
        &self,
        session: &Session,
        list: &ExtendedCopyList,
    ) -> Result<(), BlockError> {
        let cdb = receive_copy_results_cdb(RcrAction::CopyStatus, list.list_id, RCR_ALLOC);
        let out = self
            .command_outcome(Some(session), RCR, &cdb, Bytes::new(), RCR_ALLOC, true)
            .await?;
        self.fail_on_sense(RCR, &cdb, &out)?;
        let id = list.list_id;
        let st = CopyStatus::parse(&out.data).map_err(|e| {
            self.io_error(
                RCR,
                io::ErrorKind::InvalidData,
                None,
                format!("COPY STATUS of list {id}: {e}"),
            )
        })?;
        let want = list.blocks() * u64::from(self.block_size);
        // TRANSFER COUNT UNITS (byte 7): bytes, or a power of 1024 that rounds the count.
        let unit = match out.data.get(7) {
            Some(&u) if u <= 6 => 1u64 << (10 * u32::from(u)),
            _ => 1,
        };
        let segments = list.segments.len();
        if st.status != CopyManagerStatus::Completed
            || usize::from(st.segments_processed) != segments
            || st.transferred_bytes.abs_diff(want) >= unit
        {
            return Err(self.io_error(
                RCR,
                io::ErrorKind::InvalidData,
                None,
                format!(
                    "EXTENDED COPY list {id} ended GOOD but COPY STATUS reports {:?}, {} of {segments} segments, {} of {want} bytes",
                    st.status, st.segments_processed, st.transferred_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// `why`, noting the lists that had completed before.
fn after(why: String, lists: usize) -> String {
    if lists == 0 {
        why
    } else {
        format!("{why} (after {lists} lists had copied their blocks)")
    }
}

/// Where COPY ABORTED sense says the fault is (segment pointer, SPC-4 4.5.2.4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SD=0: this byte of the parameter list.
    Byte(u16),
    /// SD=1: a segment (the pointer is its number).
    Segment,
}

/// The segment pointer of fixed or descriptor sense data, if valid (SKSV).
fn fault_pointer(sense: &[u8]) -> Option<Fault> {
    let sks = match sense.first()? & 0x7f {
        0x70 | 0x71 => sense.get(15..18)?,
        0x72 | 0x73 => {
            // Sense key specific descriptor (type 02h): bytes 4..7.
            let end = sense.len().min(8 + usize::from(*sense.get(7)?));
            let mut at = 8;
            loop {
                if at + 2 > end {
                    return None;
                }
                let len = usize::from(sense[at + 1]);
                if sense[at] == 0x02 && len >= 6 && at + 7 <= end {
                    break &sense[at + 4..at + 7];
                }
                at += 2 + len;
            }
        }
        _ => return None,
    };
    if sks[0] & 0x80 == 0 {
        return None;
    }
    Some(if sks[0] & 0x20 != 0 {
        Fault::Segment
    } else {
        Fault::Byte(u16::from_be_bytes([sks[1], sks[2]]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_pointers() {
        let mut fixed = vec![0u8; 18];
        fixed[0] = 0x70;
        fixed[2] = sense_key::COPY_ABORTED;
        fixed[12] = 0x0d;
        fixed[13] = 0x02;
        assert_eq!(fault_pointer(&fixed), None, "SKSV clear");
        fixed[15] = 0x80;
        fixed[16..18].copy_from_slice(&20u16.to_be_bytes());
        assert_eq!(fault_pointer(&fixed), Some(Fault::Byte(20)));
        fixed[15] = 0xa0;
        assert_eq!(fault_pointer(&fixed), Some(Fault::Segment));
        assert_eq!(fault_pointer(&fixed[..17]), None);
        // Descriptor format: an information descriptor, then sense key specific.
        let mut desc = vec![0x72, 0x0a, 0x0d, 0x02, 0, 0, 0, 20];
        desc.extend_from_slice(&[0x00, 0x0a, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
        desc.extend_from_slice(&[0x02, 0x06, 0, 0, 0x80, 0x00, 0x4c, 0]);
        assert_eq!(fault_pointer(&desc), Some(Fault::Byte(0x4c)));
        // Truncated or malformed: no pointer, no panic.
        for n in 0..desc.len() {
            let _ = fault_pointer(&desc[..n]);
        }
        let mut bad = desc.clone();
        bad[7] = 0xff;
        bad[9] = 0xff;
        assert_eq!(fault_pointer(&bad), None);
        assert_eq!(fault_pointer(&[0x10, 0, 0]), None);
    }

    #[test]
    fn after_lists() {
        assert_eq!(after("x".into(), 0), "x");
        assert_eq!(
            after("x".into(), 2),
            "x (after 2 lists had copied their blocks)"
        );
    }
}
