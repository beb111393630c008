//! Initiator side of EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18):
//! builders for the CDBs and parameter lists a copy offload sends to a back-end array,
//! and parsers for the COPY STATUS and OPERATING PARAMETERS answers. No I/O: a
//! back-end (iSCSI initiator, loopback) sends the bytes and hands the answers back.
//!
//! A typical offload:
//! 1. send [`receive_copy_results_cdb`] with [`RcrAction::OperatingParameters`] and
//!    parse the answer with [`OperatingParameters::parse`];
//! 2. [`block_copy`] splits "copy N blocks from LU x at LBA a to LU y at LBA b" into
//!    as many [`ExtendedCopyList`]s as those limits ask for;
//! 3. send each list's [`ExtendedCopyList::cdb`] with [`ExtendedCopyList::to_bytes`]
//!    as data-out, and optionally [`RcrAction::CopyStatus`] for its list identifier.

use std::fmt;

/// EXTENDED COPY operation code; LID1 is service action 00h.
pub const EXTENDED_COPY: u8 = 0x83;
/// RECEIVE COPY RESULTS operation code.
pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
/// Identification descriptor target descriptor (SPC-4 6.4.5.6).
pub const IDENT_TARGET_DESCRIPTOR: u8 = 0xE4;
/// Block device to block device segment descriptor (SPC-4 6.4.6.5).
pub const BLOCK_TO_BLOCK_SEGMENT: u8 = 0x02;
/// Length of the parameter list header.
pub const HEADER_LEN: usize = 16;
/// Length of an identification descriptor target descriptor.
pub const TARGET_DESCRIPTOR_LEN: usize = 32;
/// Length of a block-to-block segment descriptor (DESCRIPTOR LENGTH 18h + 4).
pub const BLOCK_SEGMENT_LEN: usize = 28;

/// LIST ID USAGE (SPC-4 6.4.3.2, LID1 header byte 1 bits 4:3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListIdUsage {
    /// 00b: the copy manager holds the results for RECEIVE COPY RESULTS.
    Hold,
    /// 10b: no results held; the list identifier is still unique while in progress.
    Discard,
    /// 11b: no results held and LIST IDENTIFIER is zero (needs SNLID=1).
    NoListId,
}

impl ListIdUsage {
    /// The two-bit field value.
    pub fn code(self) -> u8 {
        match self {
            ListIdUsage::Hold => 0b00,
            ListIdUsage::Discard => 0b10,
            ListIdUsage::NoListId => 0b11,
        }
    }
}

/// A copy target: a block device logical unit named by its NAA designator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyTarget {
    /// NAA designator bytes (8 for NAA 5, 16 for NAA 6), as in VPD page 83h.
    pub naa: Vec<u8>,
    /// Logical block size in bytes (DISK BLOCK LENGTH).
    pub block_size: u32,
}

/// One block device to block device segment (type 02h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSegment {
    /// Index of the source in the target descriptor list.
    pub src: u16,
    /// Index of the destination in the target descriptor list.
    pub dst: u16,
    /// BLOCK DEVICE NUMBER OF BLOCKS.
    pub blocks: u16,
    pub src_lba: u64,
    pub dst_lba: u64,
    /// DC: `blocks` counts destination blocks rather than source blocks.
    pub dc: bool,
}

/// An EXTENDED COPY (LID1) parameter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendedCopyList {
    pub list_id: u8,
    pub usage: ListIdUsage,
    /// PRIORITY (3 bits).
    pub priority: u8,
    pub targets: Vec<CopyTarget>,
    pub segments: Vec<BlockSegment>,
}

/// Why a list could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildError {
    /// A NAA designator that is not 8 or 16 bytes.
    BadDesignator(usize),
    /// A block size that does not fit DISK BLOCK LENGTH (24 bits) or is zero.
    BadBlockSize(u32),
    /// A segment names a target descriptor the list does not have.
    BadIndex(u16),
    /// NoListId with a non-zero list identifier.
    ListIdNotZero,
    /// The copy does not fit the copy manager's limits (e.g. a block size larger
    /// than its maximum segment length, or no descriptors allowed).
    Limits(&'static str),
    /// Source and destination block sizes do not divide into whole blocks.
    InexactSegment,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::BadDesignator(n) => write!(f, "NAA designator of {n} bytes (want 8 or 16)"),
            BuildError::BadBlockSize(n) => {
                write!(f, "block size {n} does not fit DISK BLOCK LENGTH")
            }
            BuildError::BadIndex(i) => write!(
                f,
                "segment names target descriptor {i}, which the list does not have"
            ),
            BuildError::ListIdNotZero => write!(f, "LIST ID USAGE 11b needs list identifier 0"),
            BuildError::Limits(what) => {
                write!(f, "copy does not fit the copy manager's limits: {what}")
            }
            BuildError::InexactSegment => write!(
                f,
                "source and destination block sizes do not divide the copy into whole blocks"
            ),
        }
    }
}

impl std::error::Error for BuildError {}

/// EXTENDED COPY (LID1) CDB with PARAMETER LIST LENGTH `param_len`.
pub fn extended_copy_cdb(param_len: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = EXTENDED_COPY;
    c[10..14].copy_from_slice(&param_len.to_be_bytes());
    c
}

/// RECEIVE COPY RESULTS service actions (SPC-4 6.18.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcrAction {
    CopyStatus,
    ReceiveData,
    OperatingParameters,
    FailedSegmentDetails,
}

impl RcrAction {
    pub fn code(self) -> u8 {
        match self {
            RcrAction::CopyStatus => 0x00,
            RcrAction::ReceiveData => 0x01,
            RcrAction::OperatingParameters => 0x03,
            RcrAction::FailedSegmentDetails => 0x04,
        }
    }
}

/// RECEIVE COPY RESULTS CDB.
pub fn receive_copy_results_cdb(action: RcrAction, list_id: u8, alloc: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = RECEIVE_COPY_RESULTS;
    c[1] = action.code();
    c[2] = list_id;
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

impl ExtendedCopyList {
    /// The parameter list bytes (header, target descriptors, segment descriptors).
    pub fn to_bytes(&self) -> Result<Vec<u8>, BuildError> {
        if self.usage == ListIdUsage::NoListId && self.list_id != 0 {
            return Err(BuildError::ListIdNotZero);
        }
        let tdl = self.targets.len() * TARGET_DESCRIPTOR_LEN;
        let sdl = self.segments.len() * BLOCK_SEGMENT_LEN;
        let tdl16 =
            u16::try_from(tdl).map_err(|_| BuildError::Limits("too many target descriptors"))?;
        let mut out = Vec::with_capacity(HEADER_LEN + tdl + sdl);
        out.push(self.list_id);
        out.push((self.usage.code() << 3) | (self.priority & 0x07));
        out.extend_from_slice(&tdl16.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(sdl as u32).to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes()); // no inline data
        for t in &self.targets {
            out.extend_from_slice(&target_descriptor(t)?);
        }
        for s in &self.segments {
            if usize::from(s.src) >= self.targets.len() {
                return Err(BuildError::BadIndex(s.src));
            }
            if usize::from(s.dst) >= self.targets.len() {
                return Err(BuildError::BadIndex(s.dst));
            }
            out.extend_from_slice(&block_segment(s));
        }
        Ok(out)
    }

    /// Length of [`ExtendedCopyList::to_bytes`].
    pub fn len(&self) -> usize {
        HEADER_LEN
            + self.targets.len() * TARGET_DESCRIPTOR_LEN
            + self.segments.len() * BLOCK_SEGMENT_LEN
    }

    /// True without segments (such a list copies nothing).
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// The CDB that carries this list.
    pub fn cdb(&self) -> [u8; 16] {
        extended_copy_cdb(self.len() as u32)
    }

    /// Total blocks the list copies, counted on the side each segment's DC names.
    pub fn blocks(&self) -> u64 {
        self.segments.iter().map(|s| u64::from(s.blocks)).sum()
    }
}

/// An identification descriptor target descriptor (E4h): NAA designator, LU
/// association, binary code set, peripheral device type 0 with DISK BLOCK LENGTH.
fn target_descriptor(t: &CopyTarget) -> Result<[u8; TARGET_DESCRIPTOR_LEN], BuildError> {
    if !matches!(t.naa.len(), 8 | 16) {
        return Err(BuildError::BadDesignator(t.naa.len()));
    }
    if t.block_size == 0 || t.block_size > 0x00FF_FFFF {
        return Err(BuildError::BadBlockSize(t.block_size));
    }
    let mut d = [0u8; TARGET_DESCRIPTOR_LEN];
    d[0] = IDENT_TARGET_DESCRIPTOR;
    // d[1]: LU ID TYPE 00b, NUL 0, peripheral device type 00h; d[2..4]: relative
    // initiator port identifier 0 (any port).
    d[4] = 0x01; // code set: binary
    d[5] = 0x03; // association: logical unit; designator type: NAA
    d[7] = t.naa.len() as u8;
    d[8..8 + t.naa.len()].copy_from_slice(&t.naa);
    d[29..32].copy_from_slice(&t.block_size.to_be_bytes()[1..]);
    Ok(d)
}

fn block_segment(s: &BlockSegment) -> [u8; BLOCK_SEGMENT_LEN] {
    let mut d = [0u8; BLOCK_SEGMENT_LEN];
    d[0] = BLOCK_TO_BLOCK_SEGMENT;
    d[1] = if s.dc { 0x02 } else { 0 };
    d[2..4].copy_from_slice(&((BLOCK_SEGMENT_LEN - 4) as u16).to_be_bytes());
    d[4..6].copy_from_slice(&s.src.to_be_bytes());
    d[6..8].copy_from_slice(&s.dst.to_be_bytes());
    d[10..12].copy_from_slice(&s.blocks.to_be_bytes());
    d[12..20].copy_from_slice(&s.src_lba.to_be_bytes());
    d[20..28].copy_from_slice(&s.dst_lba.to_be_bytes());
    d
}

/// The limits [`block_copy`] has to respect: usually the parsed
/// [`OperatingParameters`] of the copy manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyLimits {
    pub max_target_descriptors: u16,
    pub max_segment_descriptors: u16,
    pub max_descriptor_list_len: u32,
    /// Bytes per segment.
    pub max_segment_len: u32,
}

/// "Copy `blocks` source blocks from `src` at `src_lba` to `dst` at `dst_lba`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockCopy {
    pub src: CopyTarget,
    pub src_lba: u64,
    pub dst: CopyTarget,
    pub dst_lba: u64,
    /// Source blocks.
    pub blocks: u64,
}

/// Splits "copy `blocks` source blocks from `src` at `src_lba` to `dst` at `dst_lba`"
/// into parameter lists that each fit `limits`: segments of at most 65535 blocks and
/// MAXIMUM SEGMENT LENGTH bytes, lists of at most MAXIMUM SEGMENT DESCRIPTOR COUNT
/// segments and MAXIMUM DESCRIPTOR LIST LENGTH bytes. When `src` and `dst` are the same
/// LU one target descriptor serves both. List identifiers count up from
/// `first_list_id`, wrapping. Zero blocks give no lists.
pub fn block_copy(
    copy: &BlockCopy,
    limits: &CopyLimits,
    first_list_id: u8,
    usage: ListIdUsage,
) -> Result<Vec<ExtendedCopyList>, BuildError> {
    let BlockCopy {
        src,
        src_lba,
        dst,
        dst_lba,
        blocks,
    } = copy;
    let (src_lba, dst_lba, blocks) = (*src_lba, *dst_lba, *blocks);
    let (sbs, dbs) = (u64::from(src.block_size), u64::from(dst.block_size));
    if sbs == 0 {
        return Err(BuildError::BadBlockSize(src.block_size));
    }
    if dbs == 0 {
        return Err(BuildError::BadBlockSize(dst.block_size));
    }
    let total_bytes = blocks
        .checked_mul(sbs)
        .ok_or(BuildError::Limits("copy length overflows"))?;
    if !total_bytes.is_multiple_of(dbs) {
        return Err(BuildError::InexactSegment);
    }
    let same = src.naa == dst.naa;
    let targets = if same {
        vec![src.clone()]
    } else {
        vec![src.clone(), dst.clone()]
    };
    if targets.len() > usize::from(limits.max_target_descriptors) {
        return Err(BuildError::Limits("target descriptor count"));
    }
    // Source blocks per segment: whole destination blocks too, within both limits.
    let step = lcm(sbs, dbs) / sbs;
    let by_len = u64::from(limits.max_segment_len) / sbs;
    let per_segment = (by_len.min(0xFFFF) / step) * step;
    if per_segment == 0 {
        return Err(BuildError::Limits("maximum segment length below one block"));
    }
    let tdl = targets.len() * TARGET_DESCRIPTOR_LEN;
    let by_list_len =
        (limits.max_descriptor_list_len as usize).saturating_sub(tdl) / BLOCK_SEGMENT_LEN;
    let per_list = by_list_len.min(usize::from(limits.max_segment_descriptors));
    if per_list == 0 {
        return Err(BuildError::Limits("no room for a segment descriptor"));
    }
    let (si, di) = (0u16, if same { 0 } else { 1 });
    let mut segments = Vec::new();
    let mut done = 0u64;
    while done < blocks {
        let n = per_segment.min(blocks - done);
        let off = done * sbs;
        segments.push(BlockSegment {
            src: si,
            dst: di,
            blocks: n as u16,
            src_lba: src_lba
                .checked_add(done)
                .ok_or(BuildError::Limits("source LBA overflows"))?,
            dst_lba: dst_lba
                .checked_add(off / dbs)
                .ok_or(BuildError::Limits("destination LBA overflows"))?,
            dc: false,
        });
        done += n;
    }
    let mut id = first_list_id;
    Ok(segments
        .chunks(per_list)
        .map(|chunk| {
            let list_id = if usage == ListIdUsage::NoListId {
                0
            } else {
                id
            };
            id = id.wrapping_add(1);
            ExtendedCopyList {
                list_id,
                usage,
                priority: 0,
                targets: targets.clone(),
                segments: chunk.to_vec(),
            }
        })
        .collect())
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Least common multiple of two non-zero numbers.
pub(crate) fn lcm(a: u64, b: u64) -> u64 {
    a / gcd(a, b) * b
}

/// Why an answer could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer bytes than the format needs.
    Short { need: usize, got: usize },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Short { need, got } => {
                write!(f, "copy results too short: {got} bytes, need {need} (raise the allocation length)")
            }
        }
    }
}

impl std::error::Error for ParseError {}

fn need(d: &[u8], n: usize) -> Result<(), ParseError> {
    if d.len() < n {
        Err(ParseError::Short {
            need: n,
            got: d.len(),
        })
    } else {
        Ok(())
    }
}

fn be16(d: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([d[at], d[at + 1]])
}

fn be32(d: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

/// COPY MANAGER STATUS (SPC-4 6.18.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyManagerStatus {
    InProgress,
    Completed,
    CompletedWithErrors,
    Other(u8),
}

impl CopyManagerStatus {
    pub fn code(self) -> u8 {
        match self {
            CopyManagerStatus::InProgress => 0x00,
            CopyManagerStatus::Completed => 0x01,
            CopyManagerStatus::CompletedWithErrors => 0x02,
            CopyManagerStatus::Other(c) => c,
        }
    }

    pub fn from_code(c: u8) -> CopyManagerStatus {
        match c {
            0x00 => CopyManagerStatus::InProgress,
            0x01 => CopyManagerStatus::Completed,
            0x02 => CopyManagerStatus::CompletedWithErrors,
            c => CopyManagerStatus::Other(c),
        }
    }
}

/// RECEIVE COPY RESULTS, COPY STATUS parameter data (SPC-4 6.18.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyStatus {
    pub status: CopyManagerStatus,
    /// HDD: held data was discarded.
    pub held_data_discarded: bool,
    pub segments_processed: u16,
    /// TRANSFER COUNT scaled by TRANSFER COUNT UNITS to bytes (saturating).
    pub transferred_bytes: u64,
}

/// TRANSFER COUNT UNITS (SPC-4 6.18.2): 00h bytes, then powers of 1024.
pub(crate) fn units_shift(units: u8) -> Option<u32> {
    (units <= 6).then(|| 10 * u32::from(units))
}

impl CopyStatus {
    /// Parses COPY STATUS parameter data (12 bytes).
    pub fn parse(d: &[u8]) -> Result<CopyStatus, ParseError> {
        need(d, 12)?;
        let count = u64::from(be32(d, 8));
        let transferred_bytes = match units_shift(d[7]) {
            Some(s) => count
                .checked_shl(s)
                .filter(|v| v >> s == count)
                .unwrap_or(u64::MAX),
            None => count,
        };
        Ok(CopyStatus {
            status: CopyManagerStatus::from_code(d[4] & 0x7F),
            held_data_discarded: d[4] & 0x80 != 0,
            segments_processed: be16(d, 5),
            transferred_bytes,
        })
    }
}

/// RECEIVE COPY RESULTS, OPERATING PARAMETERS parameter data (SPC-4 6.18.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatingParameters {
    /// SNLID: LIST ID USAGE 11b is supported.
    pub snlid: bool,
    pub max_target_descriptors: u16,
    pub max_segment_descriptors: u16,
    pub max_descriptor_list_len: u32,
    pub max_segment_len: u32,
    pub max_inline_data_len: u32,
    pub held_data_limit: u32,
    pub max_stream_transfer_size: u32,
    pub total_concurrent_copies: u16,
    pub max_concurrent_copies: u8,
    pub data_segment_granularity_log2: u8,
    pub inline_data_granularity_log2: u8,
    pub held_data_granularity_log2: u8,
    /// Implemented descriptor type codes (segment and target descriptors).
    pub descriptor_codes: Vec<u8>,
}

impl OperatingParameters {
    /// Parses OPERATING PARAMETERS parameter data (44 bytes and the code list).
    pub fn parse(d: &[u8]) -> Result<OperatingParameters, ParseError> {
        need(d, 44)?;
        let n = usize::from(d[43]);
        need(d, 44 + n)?;
        Ok(OperatingParameters {
            snlid: d[4] & 0x01 != 0,
            max_target_descriptors: be16(d, 8),
            max_segment_descriptors: be16(d, 10),
            max_descriptor_list_len: be32(d, 12),
            max_segment_len: be32(d, 16),
            max_inline_data_len: be32(d, 20),
            held_data_limit: be32(d, 24),
            max_stream_transfer_size: be32(d, 28),
            total_concurrent_copies: be16(d, 34),
            max_concurrent_copies: d[36],
            data_segment_granularity_log2: d[37],
            inline_data_granularity_log2: d[38],
            held_data_granularity_log2: d[39],
            descriptor_codes: d[44..44 + n].to_vec(),
        })
    }

    /// True when the copy manager takes identification target descriptors and
    /// block-to-block segments, which is what [`block_copy`] builds.
    pub fn supports_block_copy(&self) -> bool {
        self.descriptor_codes.contains(&IDENT_TARGET_DESCRIPTOR)
            && self.descriptor_codes.contains(&BLOCK_TO_BLOCK_SEGMENT)
    }

    /// The limits [`block_copy`] needs.
    pub fn limits(&self) -> CopyLimits {
        CopyLimits {
            max_target_descriptors: self.max_target_descriptors,
            max_segment_descriptors: self.max_segment_descriptors,
            max_descriptor_list_len: self.max_descriptor_list_len,
            max_segment_len: self.max_segment_len,
        }
    }

    /// The bytes of this parameter data (what a copy manager answers).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut d = vec![0u8; 44];
        d[4] = u8::from(self.snlid);
        d[8..10].copy_from_slice(&self.max_target_descriptors.to_be_bytes());
        d[10..12].copy_from_slice(&self.max_segment_descriptors.to_be_bytes());
        d[12..16].copy_from_slice(&self.max_descriptor_list_len.to_be_bytes());
        d[16..20].copy_from_slice(&self.max_segment_len.to_be_bytes());
        d[20..24].copy_from_slice(&self.max_inline_data_len.to_be_bytes());
        d[24..28].copy_from_slice(&self.held_data_limit.to_be_bytes());
        d[28..32].copy_from_slice(&self.max_stream_transfer_size.to_be_bytes());
        d[34..36].copy_from_slice(&self.total_concurrent_copies.to_be_bytes());
        d[36] = self.max_concurrent_copies;
        d[37] = self.data_segment_granularity_log2;
        d[38] = self.inline_data_granularity_log2;
        d[39] = self.held_data_granularity_log2;
        d[43] = self.descriptor_codes.len() as u8;
        d.extend_from_slice(&self.descriptor_codes);
        let avail = (d.len() - 4) as u32;
        d[..4].copy_from_slice(&avail.to_be_bytes());
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lu(n: u8, bs: u32) -> CopyTarget {
        CopyTarget {
            naa: vec![0x60, 0x01, 0x40, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n],
            block_size: bs,
        }
    }

    fn bc(src: CopyTarget, src_lba: u64, dst: CopyTarget, dst_lba: u64, blocks: u64) -> BlockCopy {
        BlockCopy {
            src,
            src_lba,
            dst,
            dst_lba,
            blocks,
        }
    }

    const LIMITS: CopyLimits = CopyLimits {
        max_target_descriptors: 2,
        max_segment_descriptors: 3,
        max_descriptor_list_len: 1024,
        max_segment_len: 1 << 20,
    };

    #[test]
    fn cdbs_golden() {
        assert_eq!(
            extended_copy_cdb(0x0102_0304),
            [0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 0, 0]
        );
        assert_eq!(
            receive_copy_results_cdb(RcrAction::OperatingParameters, 7, 1024),
            [0x84, 3, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0]
        );
    }

    #[test]
    fn parameter_list_golden() {
        let list = ExtendedCopyList {
            list_id: 9,
            usage: ListIdUsage::Discard,
            priority: 1,
            targets: vec![lu(1, 512)],
            segments: vec![BlockSegment {
                src: 0,
                dst: 0,
                blocks: 0x10,
                src_lba: 2,
                dst_lba: 0x1_0000_0000,
                dc: true,
            }],
        };
        let b = list.to_bytes().unwrap();
        assert_eq!(b.len(), 16 + 32 + 28);
        assert_eq!(b.len(), list.len());
        assert_eq!(
            &b[..16],
            &[9, 0x11, 0, 32, 0, 0, 0, 0, 0, 0, 0, 28, 0, 0, 0, 0]
        );
        assert_eq!(&b[16..24], &[0xE4, 0, 0, 0, 0x01, 0x03, 0, 16]);
        assert_eq!(&b[24..40], lu(1, 512).naa.as_slice());
        assert_eq!(&b[44..48], &[0, 0, 0x02, 0x00]);
        assert_eq!(
            &b[48..60],
            &[0x02, 0x02, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0x10]
        );
        assert_eq!(&b[60..68], &2u64.to_be_bytes());
        assert_eq!(&b[68..76], &0x1_0000_0000u64.to_be_bytes());
        assert_eq!(list.cdb()[13], 76);
    }

    #[test]
    fn bad_lists_are_refused() {
        let mut list = ExtendedCopyList {
            list_id: 1,
            usage: ListIdUsage::NoListId,
            priority: 0,
            targets: vec![lu(1, 512)],
            segments: vec![],
        };
        assert_eq!(list.to_bytes(), Err(BuildError::ListIdNotZero));
        list.usage = ListIdUsage::Hold;
        list.segments.push(BlockSegment {
            src: 0,
            dst: 1,
            blocks: 1,
            src_lba: 0,
            dst_lba: 0,
            dc: false,
        });
        assert_eq!(list.to_bytes(), Err(BuildError::BadIndex(1)));
        list.segments.clear();
        list.targets[0].naa.truncate(12);
        assert_eq!(list.to_bytes(), Err(BuildError::BadDesignator(12)));
    }

    #[test]
    fn block_copy_splits_by_segment_and_list_limits() {
        // 1 MiB segments = 2048 blocks; 3 segments per list.
        let lists = block_copy(
            &bc(lu(1, 512), 100, lu(2, 512), 7, 2048 * 7 + 5),
            &LIMITS,
            250,
            ListIdUsage::Hold,
        )
        .unwrap();
        assert_eq!(lists.len(), 3);
        assert_eq!(
            lists.iter().map(|l| l.segments.len()).collect::<Vec<_>>(),
            vec![3, 3, 2]
        );
        assert_eq!(
            lists.iter().map(|l| l.list_id).collect::<Vec<_>>(),
            vec![250, 251, 252]
        );
        assert_eq!(
            lists.iter().map(ExtendedCopyList::blocks).sum::<u64>(),
            2048 * 7 + 5
        );
        let last = lists[2].segments[1];
        assert_eq!(
            (last.blocks, last.src_lba, last.dst_lba),
            (5, 100 + 2048 * 7, 7 + 2048 * 7)
        );
        assert_eq!((last.src, last.dst), (0, 1));
        assert_eq!(lists[0].targets.len(), 2);
        // The same LU: one target descriptor.
        let one = block_copy(
            &bc(lu(1, 512), 0, lu(1, 512), 10, 3),
            &LIMITS,
            0,
            ListIdUsage::NoListId,
        )
        .unwrap();
        assert_eq!(one[0].targets.len(), 1);
        assert_eq!((one[0].segments[0].src, one[0].segments[0].dst), (0, 0));
        assert_eq!(one[0].list_id, 0);
        assert!(block_copy(
            &bc(lu(1, 512), 0, lu(2, 512), 0, 0),
            &LIMITS,
            0,
            ListIdUsage::Hold
        )
        .unwrap()
        .is_empty());
    }

    #[test]
    fn block_copy_between_block_sizes() {
        // 512 → 4096: segments are multiples of 8 source blocks.
        let lists = block_copy(
            &bc(lu(1, 512), 0, lu(2, 4096), 0, 2048 * 2),
            &LIMITS,
            0,
            ListIdUsage::Hold,
        )
        .unwrap();
        let s = &lists[0].segments;
        assert_eq!(
            s[1].dst_lba, 256,
            "2048 source blocks = 256 destination blocks"
        );
        assert_eq!(
            block_copy(
                &bc(lu(1, 512), 0, lu(2, 4096), 0, 3),
                &LIMITS,
                0,
                ListIdUsage::Hold
            ),
            Err(BuildError::InexactSegment)
        );
        let tiny = CopyLimits {
            max_segment_len: 511,
            ..LIMITS
        };
        assert!(matches!(
            block_copy(
                &bc(lu(1, 512), 0, lu(2, 512), 0, 1),
                &tiny,
                0,
                ListIdUsage::Hold
            ),
            Err(BuildError::Limits(_))
        ));
    }

    #[test]
    fn copy_status_and_operating_parameters_parse() {
        let cs = [0, 0, 0, 8, 0x82, 0, 3, 1, 0, 0, 0, 5];
        assert_eq!(
            CopyStatus::parse(&cs).unwrap(),
            CopyStatus {
                status: CopyManagerStatus::CompletedWithErrors,
                held_data_discarded: true,
                segments_processed: 3,
                transferred_bytes: 5 * 1024,
            }
        );
        assert_eq!(
            CopyStatus::parse(&cs[..11]),
            Err(ParseError::Short { need: 12, got: 11 })
        );
        let op = OperatingParameters {
            snlid: true,
            max_target_descriptors: 8,
            max_segment_descriptors: 64,
            max_descriptor_list_len: 2048,
            max_segment_len: 1 << 26,
            max_inline_data_len: 0,
            held_data_limit: 0,
            max_stream_transfer_size: 0,
            total_concurrent_copies: 8,
            max_concurrent_copies: 8,
            data_segment_granularity_log2: 0,
            inline_data_granularity_log2: 0,
            held_data_granularity_log2: 0,
            descriptor_codes: vec![0x02, 0xE4],
        };
        let b = op.to_bytes();
        assert_eq!(b.len(), 46);
        assert_eq!(&b[..4], &[0, 0, 0, 42]);
        assert_eq!(OperatingParameters::parse(&b).unwrap(), op);
        assert!(op.supports_block_copy());
        assert!(OperatingParameters::parse(&b[..45]).is_err());
    }
}
