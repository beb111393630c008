//! Planning and copying the data a remap moves: which runs of virtual blocks get a new
//! home, whether they can be copied in one pass, and the copy itself (done while every
//! node holds the affected ranges, so the source cannot change underneath).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use blockdev::{BlockError, BlockStore};
use iscsi_initiator::{OffloadOutcome, RemoteStore};
use mgmt::model::MapSegment;
use volume::{BlockRange, Registry, VolumeDef};

/// Bytes this node read plus wrote to copy data (remaps, migration windows).
pub(crate) static NODE_COPY_BYTES: AtomicU64 = AtomicU64::new(0);
/// Bytes arrays copied for this node with EXTENDED COPY.
pub(crate) static OFFLOADED_COPY_BYTES: AtomicU64 = AtomicU64::new(0);

/// The back-end LUs reached over iSCSI, by registry id: the ones a copy can offload to
/// their array with EXTENDED COPY.
#[derive(Clone, Default)]
pub struct Offload {
    remote: BTreeMap<String, Arc<RemoteStore>>,
}

impl Offload {
    pub fn insert(&mut self, id: &str, store: Arc<RemoteStore>) {
        self.remote.insert(id.to_string(), store);
    }

    /// Ask the array to copy `m` (both LUs on it); `None`: it cannot, copy through
    /// the node. An error is a failed copy.
    fn try_copy(&self, m: &Move, bs: u32) -> Option<Result<(), BlockError>> {
        let (s, so) = m.src.as_ref()?;
        let (src, dst) = (self.remote.get(s)?, self.remote.get(&m.dst.0)?);
        if s == &m.dst.0 && ranges_overlap(*so, m.blocks, m.dst.1, m.blocks) {
            return None;
        }
        match src.extended_copy_to_blocking(dst, *so, m.dst.1, m.blocks) {
            Ok(OffloadOutcome::Copied { lists }) => {
                OFFLOADED_COPY_BYTES.fetch_add(m.blocks * u64::from(bs), Ordering::Relaxed);
                tracing::debug!(from = %s, to = %m.dst.0, blocks = m.blocks, lists, "copied by the array (EXTENDED COPY)");
                Some(Ok(()))
            }
            Ok(OffloadOutcome::Unsupported(why)) => {
                tracing::info!(from = %s, to = %m.dst.0, "EXTENDED COPY not possible ({why}); the node copies");
                None
            }
            Err(e) => Some(Err(e)),
        }
    }
}

pub(crate) fn segments(def: &VolumeDef) -> Vec<MapSegment> {
    let mut ex: Vec<_> = def.extents.iter().collect();
    ex.sort_by_key(|e| e.vstart);
    let mut out = Vec::new();
    let mut at = 0;
    for e in ex {
        if e.vstart > at {
            out.push(MapSegment {
                vstart: at,
                blocks: e.vstart - at,
                backend: None,
                bstart: None,
                mirror: None,
            });
        }
        out.push(MapSegment {
            vstart: e.vstart,
            blocks: e.blocks,
            backend: Some(e.backend.clone()),
            bstart: Some(e.bstart),
            mirror: e
                .mirror
                .as_ref()
                .map(|m| format!("{}@{}", m.backend, m.bstart)),
        });
        at = e.vstart + e.blocks;
    }
    if at < def.blocks {
        out.push(MapSegment {
            vstart: at,
            blocks: def.blocks - at,
            backend: None,
            bstart: None,
            mirror: None,
        });
    }
    out
}

/// Where virtual block `lba` lives, and how many blocks from it share that mapping.
fn home(segs: &[MapSegment], lba: u64) -> (Option<(String, u64)>, u64) {
    for s in segs {
        if lba >= s.vstart && lba < s.vstart + s.blocks {
            let left = s.vstart + s.blocks - lba;
            let h = s
                .backend
                .clone()
                .map(|b| (b, s.bstart.unwrap_or(0) + (lba - s.vstart)));
            return (h, left);
        }
    }
    (None, u64::MAX)
}

/// One run of blocks a remap moves: from its old home (`None`: a hole, zeroes) to its
/// new one.
#[derive(Debug, Clone)]
pub(crate) struct Move {
    pub(crate) blocks: u64,
    pub(crate) src: Option<(String, u64)>,
    pub(crate) dst: (String, u64),
}

/// The moves a change from `old` to `new` needs inside `affected`.
pub(crate) fn moves(old: &VolumeDef, new: &VolumeDef, affected: &[BlockRange]) -> Vec<Move> {
    let (so, sn) = (segments(old), segments(new));
    let mut out = Vec::new();
    for r in affected {
        let mut lba = r.start;
        while lba < r.end {
            let (src, lo) = home(&so, lba);
            let (dst, ln) = home(&sn, lba);
            let n = lo.min(ln).min(r.end - lba);
            if let Some(dst) = dst {
                if src.as_ref() != Some(&dst) {
                    out.push(Move {
                        blocks: n,
                        src,
                        dst,
                    });
                }
            }
            lba += n;
        }
    }
    out
}

fn ranges_overlap(a: u64, an: u64, b: u64, bn: u64) -> bool {
    a < b + bn && b < a + an
}

/// A move whose destination overwrites blocks another move still has to read cannot be
/// done in one pass.
pub(crate) fn crossing_moves(mv: &[Move]) -> Option<String> {
    for (i, a) in mv.iter().enumerate() {
        for (j, b) in mv.iter().enumerate() {
            if i == j {
                continue;
            }
            if let Some((sb, so)) = &b.src {
                if &a.dst.0 == sb && ranges_overlap(a.dst.1, a.blocks, *so, b.blocks) {
                    return Some(format!(
                        "the new home of {} blocks on {} at {} overwrites blocks that another \
                         moved range still reads from",
                        a.blocks, a.dst.0, a.dst.1
                    ));
                }
            }
        }
    }
    None
}

fn store<'a>(
    reg: &'a Registry,
    id: &str,
) -> Result<&'a std::sync::Arc<dyn BlockStore>, BlockError> {
    reg.get(id).ok_or_else(|| {
        BlockError::Io(std::io::Error::other(format!(
            "back-end {id} is not open on this node"
        )))
    })
}

/// Copy every move: by the array (EXTENDED COPY) when `offload` is given and both LUs
/// are on one array that accepts it, otherwise through this node in 1 MiB chunks
/// (backwards when a move overlaps itself upwards); calls `progress(copied_blocks,
/// emit)` after each piece (`emit` about every 5%); then flushes the destinations.
pub(crate) fn copy(
    reg: &Registry,
    offload: Option<&Offload>,
    mv: &[Move],
    bs: u32,
    mut progress: impl FnMut(u64, bool),
) -> Result<(), BlockError> {
    let chunk = u64::from((1u32 << 20) / bs).max(1);
    let total: u64 = mv.iter().map(|m| m.blocks).sum();
    let mut copied = 0u64;
    let mut last_emit = 0u64;
    let mut buf = vec![0u8; (chunk * u64::from(bs)) as usize];
    let mut dsts: Vec<&str> = Vec::new();
    for m in mv {
        let dst = store(reg, &m.dst.0)?;
        if !dsts.contains(&m.dst.0.as_str()) {
            dsts.push(&m.dst.0);
        }
        if let Some(done) = offload.and_then(|o| o.try_copy(m, bs)) {
            done?;
            copied += m.blocks;
            progress(copied, true);
            continue;
        }
        let backwards = m.src.as_ref().is_some_and(|(s, so)| {
            s == &m.dst.0 && m.dst.1 > *so && ranges_overlap(*so, m.blocks, m.dst.1, m.blocks)
        });
        let mut offsets: Vec<u64> = (0..m.blocks.div_ceil(chunk)).map(|k| k * chunk).collect();
        if backwards {
            offsets.reverse();
        }
        for off in offsets {
            let n = chunk.min(m.blocks - off);
            let b = &mut buf[..(n * u64::from(bs)) as usize];
            match &m.src {
                Some((s, so)) => {
                    store(reg, s)?.read(so + off, b)?;
                    NODE_COPY_BYTES.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
                None => b.fill(0),
            }
            dst.write(m.dst.1 + off, b, false)?;
            NODE_COPY_BYTES.fetch_add(b.len() as u64, Ordering::Relaxed);
            copied += n;
            let emit = copied == total || copied - last_emit >= (total / 20).max(chunk);
            if emit {
                last_emit = copied;
            }
            progress(copied, emit);
        }
    }
    for d in dsts {
        store(reg, d)?.flush()?;
    }
    Ok(())
}
