//! Half-open runs of logical blocks, and the small set algebra remaps need.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The blocks `start..end` (half-open). Empty when `start >= end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlockRange {
    /// First block.
    pub start: u64,
    /// One past the last block.
    pub end: u64,
}

impl BlockRange {
    /// `blocks` blocks starting at `start`; the end saturates at `u64::MAX`.
    pub const fn at(start: u64, blocks: u64) -> BlockRange {
        BlockRange {
            start,
            end: start.saturating_add(blocks),
        }
    }

    /// The blocks `start..end`.
    pub const fn new(start: u64, end: u64) -> BlockRange {
        BlockRange { start, end }
    }

    /// Number of blocks.
    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// True when the range has no blocks.
    pub const fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    /// True when the two ranges share at least one block.
    pub const fn overlaps(&self, other: &BlockRange) -> bool {
        self.start < other.end && other.start < self.end && !self.is_empty() && !other.is_empty()
    }

    /// True when `lba` is inside the range.
    pub const fn contains(&self, lba: u64) -> bool {
        self.start <= lba && lba < self.end
    }

    /// True when any range in `set` overlaps this one.
    pub fn overlaps_any(&self, set: &[BlockRange]) -> bool {
        set.iter().any(|r| r.overlaps(self))
    }
}

impl fmt::Display for BlockRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

/// Sort, drop empty ranges, and merge overlapping or adjacent ones.
pub fn coalesce(mut ranges: Vec<BlockRange>) -> Vec<BlockRange> {
    ranges.retain(|r| !r.is_empty());
    ranges.sort_unstable();
    let mut out: Vec<BlockRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// True when every block of `need` lies in some range of `have`.
pub fn covers(have: &[BlockRange], need: &[BlockRange]) -> bool {
    let have = coalesce(have.to_vec());
    need.iter().filter(|r| !r.is_empty()).all(|r| {
        // After coalescing, a covered range lies inside a single merged range.
        have.iter().any(|h| h.start <= r.start && r.end <= h.end)
    })
}

/// Format a list of ranges as `[a, b), [c, d)` (or `none`).
pub fn display_ranges(ranges: &[BlockRange]) -> String {
    if ranges.is_empty() {
        return "none".to_string();
    }
    ranges
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesce_merges_adjacent_and_overlapping() {
        let r = coalesce(vec![
            BlockRange::new(10, 20),
            BlockRange::new(0, 5),
            BlockRange::new(5, 7),
            BlockRange::new(15, 30),
            BlockRange::new(40, 40),
        ]);
        assert_eq!(r, vec![BlockRange::new(0, 7), BlockRange::new(10, 30)]);
    }

    #[test]
    fn covers_and_overlaps() {
        let have = [BlockRange::new(0, 10), BlockRange::new(10, 20)];
        assert!(covers(&have, &[BlockRange::new(5, 15)]));
        assert!(!covers(&have, &[BlockRange::new(15, 25)]));
        assert!(BlockRange::new(0, 10).overlaps(&BlockRange::new(9, 10)));
        assert!(!BlockRange::new(0, 10).overlaps(&BlockRange::new(10, 11)));
        assert!(!BlockRange::new(5, 5).overlaps(&BlockRange::new(0, 10)));
    }
}
