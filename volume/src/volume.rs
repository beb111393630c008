//! [`VirtualVolume`]: a block store over one resolved volume definition.
//!
//! Extents are resolved once, when the volume is built, to `Arc<dyn BlockStore>`
//! back-ends from a [`Registry`]. An I/O is cut at extent boundaries into pieces (an
//! iterator over the sorted extent vector: one binary search, no allocation) and each
//! piece goes to its back-end; the I/O completes when every piece has.
//!
//! A mirrored extent (see [`crate::Mirror`]) has two homes: reads use the primary one
//! only, and every data-changing I/O (write, unmap, the write of a COMPARE AND WRITE)
//! goes to the primary and then to the mirror, under a [`WriteOrder`] that keeps the
//! two homes identical.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use blockdev::{BlockError, BlockStore, Capabilities, CawOutcome, IoFuture, LbaStatus};
use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard, RwLock};

use crate::range::BlockRange;
use crate::table::{
    BackendCatalog, BackendInfo, Extent, HolePolicy, HomeRole, MappingTable, TableError,
    ValidationErrors, VolumeDef,
};

/// The back-end LUs a node can reach, by id. Clones share one registry, so a back-end
/// added at run time (an array an admin adds online) is seen by every holder.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<RwLock<RegistryInner>>,
}

#[derive(Default)]
struct RegistryInner {
    stores: BTreeMap<String, Arc<dyn BlockStore>>,
    /// What each back-end LU is, where known (an array LU's NAA designator, a file's
    /// canonical path): two ids with the same identity are two paths to one LU.
    identities: BTreeMap<String, String>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Record what back-end `id` is (e.g. `naa.6001405...` for an array LU): ids with
    /// the same identity reach the same LU.
    pub fn set_identity(&self, id: impl Into<String>, identity: impl Into<String>) {
        self.inner
            .write()
            .identities
            .insert(id.into(), identity.into());
    }

    /// Whether back-end ids `a` and `b` reach the same LU: the same id, or both with the
    /// same recorded identity. Unknown identities are never the same.
    pub fn same_lu(&self, a: &str, b: &str) -> bool {
        let r = self.inner.read();
        a == b
            || matches!(
                (r.identities.get(a), r.identities.get(b)),
                (Some(x), Some(y)) if x == y
            )
    }

    /// Add (or replace) back-end `id`.
    pub fn insert(&self, id: impl Into<String>, store: Arc<dyn BlockStore>) {
        self.inner.write().stores.insert(id.into(), store);
    }

    /// Remove back-end `id` (and its identity).
    pub fn remove(&self, id: &str) -> Option<Arc<dyn BlockStore>> {
        let mut w = self.inner.write();
        w.identities.remove(id);
        w.stores.remove(id)
    }

    /// Builder form of [`Registry::insert`].
    pub fn with(self, id: impl Into<String>, store: Arc<dyn BlockStore>) -> Registry {
        self.insert(id, store);
        self
    }

    /// Back-end `id`.
    pub fn get(&self, id: &str) -> Option<Arc<dyn BlockStore>> {
        self.inner.read().stores.get(id).cloned()
    }

    /// The ids of every back-end.
    pub fn ids(&self) -> Vec<String> {
        self.inner.read().stores.keys().cloned().collect()
    }

    /// Block size and capacity of every back-end, for [`MappingTable::validate_with`].
    pub fn catalog(&self) -> BackendCatalog {
        self.inner
            .read()
            .stores
            .iter()
            .map(|(id, s)| {
                (
                    id.clone(),
                    BackendInfo {
                        block_size: s.block_size(),
                        blocks: s.num_blocks(),
                    },
                )
            })
            .collect()
    }
}

/// Number of lock stripes of a [`WriteOrder`]: one bit each of a `u64` mask.
const STRIPES: u32 = u64::BITS;
/// Virtual blocks per stripe chunk (1 MiB at 512-byte blocks).
const STRIPE_BLOCKS: u64 = 2048;

/// Keeps the two homes of a mirrored extent identical under concurrent writes.
///
/// A data-changing I/O on a mirrored extent goes to the primary home, then to the
/// mirror. Two concurrent overlapping writes W1 and W2 could otherwise land as W1, W2
/// on the primary and W2, W1 on the mirror: the primary would hold W2 and the mirror
/// W1, and aborting the migration (the mirror becoming the only home again) would bring
/// back W1, which the host had overwritten. So such an I/O holds, across both back-end
/// I/Os, every stripe its virtual range touches: the stripe of virtual block `lba` is
/// `(lba / STRIPE_BLOCKS) % STRIPES`, and stripes are taken in ascending index order,
/// so two I/Os never deadlock. Extents without a mirror take no lock: normal volumes
/// pay nothing.
///
/// Every generation of a volume on a node shares one `WriteOrder` (see
/// [`VirtualVolume::successor`]): a write still running on the old table and one on
/// the new table can both reach a mirrored extent that a remap left unchanged (so did
/// not quiesce). The order is node-local: it does not order writes that two nodes
/// serve to the same mirrored extent.
struct WriteOrder {
    stripes: [Mutex<()>; STRIPES as usize],
}

impl WriteOrder {
    fn new() -> WriteOrder {
        WriteOrder {
            stripes: std::array::from_fn(|_| Mutex::new(())),
        }
    }

    /// Lock every stripe `range` touches, in ascending index order.
    fn lock(&self, range: BlockRange) -> Vec<MutexGuard<'_, ()>> {
        let mask = stripe_mask(range);
        self.stripes
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, m)| m.lock())
            .collect()
    }
}

/// The stripes `range` touches, as a bit mask (bit `i`: stripe `i`).
fn stripe_mask(range: BlockRange) -> u64 {
    if range.is_empty() {
        return 0;
    }
    let first = range.start / STRIPE_BLOCKS;
    let last = (range.end - 1) / STRIPE_BLOCKS;
    if last - first >= u64::from(STRIPES) - 1 {
        return u64::MAX;
    }
    (first..=last).fold(0, |mask, chunk| mask | 1 << (chunk % u64::from(STRIPES)))
}

/// One home of a resolved extent: a back-end and where the extent starts on it.
struct Home {
    store: Arc<dyn BlockStore>,
    bstart: u64,
}

/// One extent, resolved.
struct Mapped {
    vstart: u64,
    vend: u64,
    /// Where reads and writes go.
    primary: Home,
    /// Where writes also go.
    mirror: Option<Home>,
}

impl Mapped {
    /// The back-end LBA of virtual block `vlba` (inside the extent) in `home`.
    fn lba(&self, home: &Home, vlba: u64) -> u64 {
        home.bstart + (vlba - self.vstart)
    }

    /// The primary home, then the mirror if any: where data-changing I/O goes.
    fn homes(&self) -> impl Iterator<Item = &Home> {
        std::iter::once(&self.primary).chain(&self.mirror)
    }
}

/// A back-end the volume uses, once.
struct Backend {
    id: String,
    store: Arc<dyn BlockStore>,
    /// The primary home of at least one extent (not only a mirror).
    primary: bool,
}

/// A virtual volume over one immutable, resolved mapping. Cheap to share (`Arc`); a
/// [`crate::LiveVolume`] swaps whole `VirtualVolume`s to change the mapping.
pub struct VirtualVolume {
    def: VolumeDef,
    epoch: u64,
    /// Sorted by `vstart`, non-overlapping.
    extents: Vec<Mapped>,
    /// Each back-end once (primary or mirror home), in order of first use.
    backends: Vec<Backend>,
    caps: Capabilities,
    /// Serializes data-changing I/O on mirrored extents.
    order: Arc<WriteOrder>,
}

/// A run of blocks of one I/O: on a back-end, or in a hole.
enum Piece<'a> {
    Mapped { ext: &'a Mapped, blocks: u64 },
    Hole { blocks: u64 },
}

/// Cuts `cur..end` at extent boundaries.
struct Pieces<'a> {
    extents: &'a [Mapped],
    idx: usize,
    cur: u64,
    end: u64,
}

impl<'a> Iterator for Pieces<'a> {
    /// (virtual LBA where the piece starts, the piece)
    type Item = (u64, Piece<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.cur >= self.end {
            return None;
        }
        let at = self.cur;
        match self.extents.get(self.idx) {
            Some(ext) if ext.vstart <= at => {
                let blocks = ext.vend.min(self.end) - at;
                self.idx += 1;
                self.cur += blocks;
                Some((at, Piece::Mapped { ext, blocks }))
            }
            next => {
                let stop = next.map_or(self.end, |e| e.vstart.min(self.end));
                let blocks = stop - at;
                self.cur = stop;
                Some((at, Piece::Hole { blocks }))
            }
        }
    }
}

fn hole_error(volume: &str, what: &str, lba: u64, blocks: u64) -> BlockError {
    BlockError::Io(io::Error::other(format!(
        "volume {volume:?}: cannot {what} blocks {}: no extent maps them (a hole); \
         add an extent for them to the mapping table",
        BlockRange::at(lba, blocks)
    )))
}

impl VirtualVolume {
    /// Resolve `def` (at table epoch `epoch`) against the back-ends in `registry`. The
    /// definition is validated first, including its back-end ids, block sizes and
    /// capacities.
    pub fn new(
        def: &VolumeDef,
        registry: &Registry,
        epoch: u64,
    ) -> Result<VirtualVolume, ValidationErrors> {
        VirtualVolume::resolve(def, registry, epoch, Arc::new(WriteOrder::new()))
    }

    /// [`VirtualVolume::new`] for the next generation of this volume (a remap): the two
    /// share the lock table that orders writes to mirrored extents, so that writes still
    /// running on this generation and writes on the next one stay ordered.
    pub fn successor(
        &self,
        def: &VolumeDef,
        registry: &Registry,
        epoch: u64,
    ) -> Result<VirtualVolume, ValidationErrors> {
        VirtualVolume::resolve(def, registry, epoch, self.order.clone())
    }

    fn resolve(
        def: &VolumeDef,
        registry: &Registry,
        epoch: u64,
        order: Arc<WriteOrder>,
    ) -> Result<VirtualVolume, ValidationErrors> {
        let one = MappingTable {
            epoch,
            volumes: vec![def.clone()],
        };
        one.validate_with(&registry.catalog())?;
        let mut def = def.clone();
        def.extents.sort();
        let mut backends: Vec<Backend> = Vec::new();
        let mut home = |e: &Extent, role: HomeRole, id: &str, bstart: u64| {
            // Validated above; still an error, not a panic, should it not hold.
            let store = registry.get(id).ok_or_else(|| {
                ValidationErrors(vec![TableError::UnknownBackend {
                    volume: def.name.clone(),
                    vstart: e.vstart,
                    home: role,
                    backend: id.to_string(),
                }])
            })?;
            let primary = role == HomeRole::Primary;
            match backends.iter_mut().find(|b| b.id == id) {
                Some(b) => b.primary |= primary,
                None => backends.push(Backend {
                    id: id.to_string(),
                    store: store.clone(),
                    primary,
                }),
            }
            Ok::<_, ValidationErrors>(Home { store, bstart })
        };
        let mut extents = Vec::with_capacity(def.extents.len());
        for e in &def.extents {
            let primary = home(e, HomeRole::Primary, &e.backend, e.bstart)?;
            let mirror = match &e.mirror {
                Some(m) => Some(home(e, HomeRole::Mirror, &m.backend, m.bstart)?),
                None => None,
            };
            extents.push(Mapped {
                vstart: e.vstart,
                vend: e.vstart + e.blocks,
                primary,
                mirror,
            });
        }
        // What the volume can do is what all its back-ends can do; it is read-only
        // when any back-end is. Writes (and so unmap and FUA) go to mirrors too, which
        // count like primaries; GET LBA STATUS asks only the primary home, like reads.
        let mut caps = Capabilities {
            unmap: true,
            lba_status: true,
            read_only: false,
            fua: true,
        };
        for b in &backends {
            let c = b.store.capabilities();
            caps.unmap &= c.unmap;
            caps.fua &= c.fua;
            caps.read_only |= c.read_only;
            if b.primary {
                caps.lba_status &= c.lba_status;
            }
        }
        Ok(VirtualVolume {
            def,
            epoch,
            extents,
            backends,
            caps,
            order,
        })
    }

    /// The definition this volume was resolved from (extents sorted).
    pub fn def(&self) -> &VolumeDef {
        &self.def
    }

    /// Name of the volume.
    pub fn name(&self) -> &str {
        &self.def.name
    }

    /// Epoch of the table this volume was resolved from.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Ids of the back-ends the volume maps (primary and mirror homes), each once.
    pub fn backend_ids(&self) -> impl Iterator<Item = &str> {
        self.backends.iter().map(|b| b.id.as_str())
    }

    fn pieces(&self, lba: u64, blocks: u64) -> Pieces<'_> {
        // First extent that ends after `lba`: O(log n).
        let idx = self.extents.partition_point(|e| e.vend <= lba);
        Pieces {
            extents: &self.extents,
            idx,
            cur: lba,
            end: lba + blocks,
        }
    }

    /// The stripes of the [`WriteOrder`] that a data-changing I/O on `blocks` blocks of
    /// `ext` from virtual block `at` must hold: none unless `ext` is mirrored.
    fn order_guard(&self, ext: &Mapped, at: u64, blocks: u64) -> Option<Vec<MutexGuard<'_, ()>>> {
        ext.mirror
            .is_some()
            .then(|| self.order.lock(BlockRange::at(at, blocks)))
    }

    /// Run a data-changing `op` on `blocks` blocks of `ext` from virtual block `at` in
    /// each of the extent's homes, the primary first; `op` gets the back-end and the
    /// back-end LBA. Stops at (and returns) the first error. On a mirrored extent the
    /// write order is held throughout.
    fn change(
        &self,
        ext: &Mapped,
        at: u64,
        blocks: u64,
        mut op: impl FnMut(&dyn BlockStore, u64) -> Result<(), BlockError>,
    ) -> Result<(), BlockError> {
        let _order = self.order_guard(ext, at, blocks);
        for home in ext.homes() {
            op(home.store.as_ref(), ext.lba(home, at))?;
        }
        Ok(())
    }
}

impl BlockStore for VirtualVolume {
    fn block_size(&self) -> u32 {
        self.def.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.def.blocks
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// Read piece by piece, each from its extent's primary home (never the mirror).
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let blocks = self.check_buf(lba, buf.len())?;
        let bs = self.def.block_size as usize;
        for (at, piece) in self.pieces(lba, blocks) {
            let off = (at - lba) as usize * bs;
            match piece {
                Piece::Mapped { ext, blocks } => {
                    let len = blocks as usize * bs;
                    ext.primary
                        .store
                        .read(ext.lba(&ext.primary, at), &mut buf[off..off + len])?;
                }
                Piece::Hole { blocks } => match self.def.holes {
                    HolePolicy::Zero => buf[off..off + blocks as usize * bs].fill(0),
                    HolePolicy::Error => {
                        return Err(hole_error(&self.def.name, "read", at, blocks))
                    }
                },
            }
        }
        Ok(())
    }

    /// Write `data` at `lba`, piece by piece; a piece on a mirrored extent goes to the
    /// primary home and then to the mirror (`fua` for both). A write that touches a
    /// hole fails before anything is written. A back-end error part-way through returns
    /// that error with the earlier pieces (or the primary home of the failed piece)
    /// already written: SBC-4 promises all-or-nothing only for WRITE ATOMIC, so after a
    /// failed WRITE the addressed blocks may hold old data, new data or a mix, and the
    /// host rewrites them.
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), BlockError> {
        let blocks = self.check_buf(lba, data.len())?;
        for (at, piece) in self.pieces(lba, blocks) {
            if let Piece::Hole { blocks } = piece {
                return Err(hole_error(&self.def.name, "write", at, blocks));
            }
        }
        let bs = self.def.block_size as usize;
        for (at, piece) in self.pieces(lba, blocks) {
            if let Piece::Mapped { ext, blocks } = piece {
                let off = (at - lba) as usize * bs;
                let chunk = &data[off..off + blocks as usize * bs];
                self.change(ext, at, blocks, |store, blba| store.write(blba, chunk, fua))?;
            }
        }
        Ok(())
    }

    /// Flush every back-end the volume maps, mirrors included, each once. All are
    /// tried; the first error is returned.
    fn flush(&self) -> Result<(), BlockError> {
        let mut first = None;
        for b in &self.backends {
            if let Err(e) = b.store.flush() {
                tracing::warn!(volume = %self.def.name, backend = %b.id, error = %e, "flush failed");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Unmap piece by piece (holes are already unmapped), in both homes of a mirrored
    /// extent. Refused before anything is done when a back-end in the range (primary
    /// or mirror) cannot unmap.
    fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BlockError> {
        self.check_range(lba, blocks)?;
        for (_, piece) in self.pieces(lba, blocks) {
            if let Piece::Mapped { ext, .. } = piece {
                if ext.homes().any(|h| !h.store.capabilities().unmap) {
                    return Err(BlockError::Unsupported("unmap"));
                }
            }
        }
        for (at, piece) in self.pieces(lba, blocks) {
            if let Piece::Mapped { ext, blocks } = piece {
                self.change(ext, at, blocks, |store, blba| store.unmap(blba, blocks))?;
            }
        }
        Ok(())
    }

    /// Passed to the back-end of the primary home when the blocks lie inside one
    /// extent (the LBA translated), so that the back-end's atomicity — e.g. an array's
    /// own COMPARE AND WRITE — covers every node that maps the same back-end blocks. On
    /// a mirrored extent, when it wrote, the write data then goes to the mirror too,
    /// the write order held throughout; a failure there fails the command with the
    /// primary already written. A range that crosses an extent boundary or touches a
    /// hole is `Unsupported` (nothing done): no back-end can compare and write across
    /// two of them atomically, and the caller falls back to its own
    /// read-compare-write.
    fn compare_and_write(
        &self,
        lba: u64,
        compare: &[u8],
        write: &[u8],
        fua: bool,
    ) -> Result<CawOutcome, BlockError> {
        if compare.len() != write.len() {
            return Err(BlockError::Misaligned {
                len: write.len(),
                block_size: self.def.block_size,
            });
        }
        let blocks = self.check_buf(lba, compare.len())?;
        if blocks == 0 {
            return Ok(CawOutcome::Written);
        }
        let mut pieces = self.pieces(lba, blocks);
        match (pieces.next(), pieces.next()) {
            (Some((at, Piece::Mapped { ext, blocks: n })), None) if at == lba && n == blocks => {
                let _order = self.order_guard(ext, lba, blocks);
                let outcome = ext.primary.store.compare_and_write(
                    ext.lba(&ext.primary, lba),
                    compare,
                    write,
                    fua,
                )?;
                if let (CawOutcome::Written, Some(mirror)) = (outcome, &ext.mirror) {
                    mirror.store.write(ext.lba(mirror, lba), write, fua)?;
                }
                Ok(outcome)
            }
            (Some((_, Piece::Hole { .. })), None) => {
                Err(BlockError::Unsupported("compare and write in a hole"))
            }
            _ => Err(BlockError::Unsupported(
                "compare and write across extent boundaries",
            )),
        }
    }

    /// True when any back-end that is the primary home of an extent supports it (a
    /// mirror only ever gets plain writes), so that a volume mixing array LUs and local
    /// files still passes COMPARE AND WRITE on the array extents to the array. Whether
    /// a given range can is decided per call by [`VirtualVolume::compare_and_write`],
    /// which refuses (`Unsupported`, nothing done, no I/O) a range on a back-end without
    /// it, across extents or in a hole; callers fall back then. Asked on each call: a
    /// remote back-end may find out that its array refuses the command.
    fn supports_compare_and_write(&self) -> bool {
        self.backends
            .iter()
            .any(|b| b.primary && b.store.supports_compare_and_write())
    }

    /// When some back-end has an asynchronous path: requests inside its extents can
    /// take it; [`VirtualVolume::read_async`] declines the others.
    fn async_ok(&self) -> bool {
        self.backends.iter().any(|b| b.store.async_ok())
    }

    /// Asynchronous when the blocks lie in one extent without a mirror (passed to its
    /// back-end, the LBA translated) or in one hole (zeroes, or the hole error). A
    /// range across extents or on a mirrored extent is `None`: [`BlockStore::read`].
    fn read_async(self: Arc<Self>, lba: u64, blocks: u32) -> Option<IoFuture<Vec<u8>>> {
        let n = u64::from(blocks);
        if let Err(e) = self.check_range(lba, n) {
            return Some(blockdev::ready(Err(e)));
        }
        let len = blocks as usize * self.def.block_size as usize;
        if n == 0 {
            return Some(blockdev::ready(Ok(Vec::new())));
        }
        let mut pieces = self.pieces(lba, n);
        match (pieces.next(), pieces.next()) {
            (Some((_, Piece::Mapped { ext, .. })), None) if ext.mirror.is_none() => ext
                .primary
                .store
                .clone()
                .read_async(ext.lba(&ext.primary, lba), blocks),
            (Some((_, Piece::Hole { .. })), None) => Some(blockdev::ready(match self.def.holes {
                HolePolicy::Zero => Ok(vec![0u8; len]),
                HolePolicy::Error => Err(hole_error(&self.def.name, "read", lba, n)),
            })),
            _ => None,
        }
    }

    /// Asynchronous under the same conditions as [`VirtualVolume::read_async`]; a
    /// write into one hole fails at once.
    fn write_async(self: Arc<Self>, lba: u64, data: Bytes, fua: bool) -> Option<IoFuture<()>> {
        let n = match self.check_buf(lba, data.len()) {
            Ok(n) => n,
            Err(e) => return Some(blockdev::ready(Err(e))),
        };
        if n == 0 {
            return Some(blockdev::ready(Ok(())));
        }
        let mut pieces = self.pieces(lba, n);
        match (pieces.next(), pieces.next()) {
            (Some((_, Piece::Mapped { ext, .. })), None) if ext.mirror.is_none() => ext
                .primary
                .store
                .clone()
                .write_async(ext.lba(&ext.primary, lba), data, fua),
            (Some((_, Piece::Hole { .. })), None) => Some(blockdev::ready(Err(hole_error(
                &self.def.name,
                "write",
                lba,
                n,
            )))),
            _ => None,
        }
    }

    /// The allocation state in the primary home.
    fn lba_status(&self, lba: u64) -> Result<LbaStatus, BlockError> {
        self.check_range(lba, 1)?;
        let Some((at, piece)) = self.pieces(lba, self.def.blocks - lba).next() else {
            return Err(BlockError::OutOfRange {
                lba,
                blocks: 1,
                capacity: self.def.blocks,
            });
        };
        match piece {
            Piece::Hole { blocks } => Ok(LbaStatus {
                mapped: false,
                blocks,
            }),
            Piece::Mapped { ext, blocks } => {
                let s = ext.primary.store.lba_status(ext.lba(&ext.primary, at))?;
                Ok(LbaStatus {
                    mapped: s.mapped,
                    blocks: s.blocks.min(blocks),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Mirror;
    use crate::LiveVolume;
    use blockdev::MemStore;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    fn ext(vstart: u64, blocks: u64, backend: &str, bstart: u64) -> Extent {
        Extent {
            vstart,
            blocks,
            backend: backend.into(),
            bstart,
            mirror: None,
        }
    }

    fn def(blocks: u64, holes: HolePolicy, extents: Vec<Extent>) -> VolumeDef {
        VolumeDef {
            name: "v".into(),
            wwn: "naa.6001405000000001".into(),
            block_size: 512,
            blocks,
            holes,
            extents,
        }
    }

    fn pattern(lba: u64, blocks: u64, seed: u8) -> Vec<u8> {
        (0..blocks * 512)
            .map(|i| (lba * 512 + i) as u8 ^ seed)
            .collect()
    }

    /// Three extents on two stores, the middle one on B.
    fn three_extents() -> (VirtualVolume, Arc<MemStore>, Arc<MemStore>) {
        let a = Arc::new(MemStore::new(512, 100));
        let b = Arc::new(MemStore::new(512, 100));
        let reg = Registry::new().with("A", a.clone()).with("B", b.clone());
        let d = def(
            60,
            HolePolicy::Zero,
            vec![
                ext(0, 20, "A", 50),
                ext(20, 20, "B", 10),
                ext(40, 20, "A", 0),
            ],
        );
        (VirtualVolume::new(&d, &reg, 1).unwrap(), a, b)
    }

    #[test]
    fn io_across_three_extents_is_split_byte_exact() {
        let (v, a, b) = three_extents();
        let data = pattern(5, 50, 0x5a);
        v.write(5, &data, false).unwrap();
        // Back-ends hold exactly the right slices.
        let mut got = vec![0u8; 15 * 512];
        a.read(55, &mut got).unwrap();
        assert_eq!(got, data[..15 * 512]);
        let mut got = vec![0u8; 20 * 512];
        b.read(10, &mut got).unwrap();
        assert_eq!(got, data[15 * 512..35 * 512]);
        let mut got = vec![0u8; 15 * 512];
        a.read(0, &mut got).unwrap();
        assert_eq!(got, data[35 * 512..]);
        // Reading back through the volume, at several offsets.
        let mut all = vec![0u8; 60 * 512];
        v.read(0, &mut all).unwrap();
        assert_eq!(&all[5 * 512..55 * 512], &data[..]);
        assert!(all[..5 * 512].iter().all(|&x| x == 0));
        let mut one = vec![0u8; 512];
        v.read(39, &mut one).unwrap();
        assert_eq!(one, data[34 * 512..35 * 512]);
        assert_eq!(v.backend_ids().collect::<Vec<_>>(), ["A", "B"]);
        v.flush().unwrap();
    }

    #[test]
    fn holes_read_as_zero_or_fail_and_writes_to_holes_fail() {
        let a = Arc::new(MemStore::new(512, 100));
        a.write(0, &[7u8; 512 * 10], false).unwrap();
        let reg = Registry::new().with("A", a.clone());
        let z = VirtualVolume::new(
            &def(30, HolePolicy::Zero, vec![ext(10, 10, "A", 0)]),
            &reg,
            1,
        )
        .unwrap();
        let mut buf = vec![1u8; 30 * 512];
        z.read(0, &mut buf).unwrap();
        assert!(buf[..10 * 512].iter().all(|&x| x == 0));
        assert!(buf[10 * 512..20 * 512].iter().all(|&x| x == 7));
        assert!(buf[20 * 512..].iter().all(|&x| x == 0));
        // A write touching a hole fails and writes nothing.
        let err = z.write(5, &[9u8; 512 * 10], false).unwrap_err();
        assert!(err.to_string().contains("hole"), "{err}");
        let mut one = vec![0u8; 512];
        a.read(0, &mut one).unwrap();
        assert_eq!(one[0], 7);
        assert_eq!(
            z.lba_status(3).unwrap(),
            LbaStatus {
                mapped: false,
                blocks: 7
            }
        );

        let e = VirtualVolume::new(
            &def(30, HolePolicy::Error, vec![ext(10, 10, "A", 0)]),
            &reg,
            1,
        )
        .unwrap();
        e.read(10, &mut vec![0u8; 10 * 512]).unwrap();
        let err = e.read(15, &mut vec![0u8; 10 * 512]).unwrap_err();
        assert!(err.to_string().contains("blocks [20, 25)"), "{err}");
        assert!(matches!(
            e.read(25, &mut vec![0u8; 10 * 512]),
            Err(BlockError::OutOfRange { .. })
        ));
    }

    #[test]
    fn resolution_checks_backends() {
        let reg = Registry::new().with("A", Arc::new(MemStore::new(4096, 10)));
        let err = VirtualVolume::new(
            &def(30, HolePolicy::Zero, vec![ext(0, 30, "A", 0)]),
            &reg,
            1,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("4096-byte blocks"), "{err}");
        assert!(err.contains("which has 10 blocks"), "{err}");
    }

    /// A test back-end over a `MemStore`: chosen capabilities, an atomic COMPARE AND
    /// WRITE (as an array has) when `caw`, writes that fail on demand or (`jitter`)
    /// take a varying time, up to 0.3 ms, to widen races, and counts of writes,
    /// flushes and FUA writes.
    struct Probe {
        inner: MemStore,
        caps: Capabilities,
        caw: bool,
        fail_writes: AtomicBool,
        jitter: bool,
        writes: AtomicUsize,
        flushes: AtomicUsize,
        fua_writes: AtomicUsize,
        caw_lock: Mutex<()>,
    }

    impl Probe {
        /// 1000 blocks with `MemStore`'s capabilities and an atomic COMPARE AND WRITE.
        fn new() -> Probe {
            let inner = MemStore::new(512, 1000);
            Probe {
                caps: inner.capabilities(),
                inner,
                caw: true,
                fail_writes: AtomicBool::new(false),
                jitter: false,
                writes: AtomicUsize::new(0),
                flushes: AtomicUsize::new(0),
                fua_writes: AtomicUsize::new(0),
                caw_lock: Mutex::new(()),
            }
        }

        /// No unmap, no FUA, no LBA status, no COMPARE AND WRITE.
        fn plain() -> Probe {
            Probe {
                caps: Capabilities::default(),
                caw: false,
                ..Probe::new()
            }
        }

        fn failing(self) -> Probe {
            self.fail_writes.store(true, Ordering::SeqCst);
            self
        }

        fn get(&self, lba: u64, blocks: u64) -> Vec<u8> {
            let mut buf = vec![0u8; blocks as usize * 512];
            self.inner.read(lba, &mut buf).unwrap();
            buf
        }
    }

    impl BlockStore for Probe {
        blockdev::forward_to!(inner: num_blocks, read, lba_status);
        fn block_size(&self) -> u32 {
            512
        }
        fn capabilities(&self) -> Capabilities {
            self.caps
        }
        fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), BlockError> {
            if self.fail_writes.load(Ordering::SeqCst) {
                return Err(BlockError::Io(io::Error::from_raw_os_error(5)));
            }
            if fua {
                self.fua_writes.fetch_add(1, Ordering::SeqCst);
            }
            let n = self.writes.fetch_add(1, Ordering::SeqCst) as u64;
            self.inner.write(lba, data, fua)?;
            if self.jitter {
                std::thread::sleep(Duration::from_micros(n * 7919 % 300));
            }
            Ok(())
        }
        fn flush(&self) -> Result<(), BlockError> {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BlockError> {
            if !self.caps.unmap {
                return Err(BlockError::Unsupported("unmap"));
            }
            self.inner.unmap(lba, blocks)
        }
        fn compare_and_write(
            &self,
            lba: u64,
            compare: &[u8],
            write: &[u8],
            fua: bool,
        ) -> Result<CawOutcome, BlockError> {
            if !self.caw {
                return Err(BlockError::Unsupported("compare and write"));
            }
            let _atomic = self.caw_lock.lock();
            let mut cur = vec![0u8; compare.len()];
            self.inner.read(lba, &mut cur)?;
            if let Some(offset) = cur.iter().zip(compare).position(|(a, b)| a != b) {
                return Ok(CawOutcome::Miscompare {
                    offset: offset as u64,
                });
            }
            self.write(lba, write, fua)?;
            Ok(CawOutcome::Written)
        }
        fn supports_compare_and_write(&self) -> bool {
            self.caw
        }
    }

    #[test]
    fn unmap_and_capabilities_follow_the_backends() {
        let (v, a, _) = three_extents();
        assert!(v.capabilities().unmap);
        v.write(0, &[3u8; 60 * 512], false).unwrap();
        v.unmap(15, 10).unwrap();
        let mut buf = vec![0u8; 60 * 512];
        v.read(0, &mut buf).unwrap();
        assert!(buf[15 * 512..25 * 512].iter().all(|&x| x == 0));
        assert!(buf[..15 * 512].iter().all(|&x| x == 3));
        // Status never runs past the end of the extent it starts in.
        assert!(v.lba_status(5).unwrap().blocks <= 15);
        drop(a);

        let a = Arc::new(MemStore::new(512, 100));
        let p = Arc::new(Probe::plain().failing());
        let reg = Registry::new().with("A", a.clone()).with("P", p);
        let v = VirtualVolume::new(
            &def(
                40,
                HolePolicy::Zero,
                vec![ext(0, 20, "A", 0), ext(20, 20, "P", 0)],
            ),
            &reg,
            1,
        )
        .unwrap();
        assert!(!v.capabilities().unmap && !v.capabilities().fua);
        // Unmap only within A works; across P it is refused and does nothing.
        v.unmap(0, 5).unwrap();
        assert!(matches!(v.unmap(10, 20), Err(BlockError::Unsupported(_))));
        // A write failing on the second piece reports the error; the first piece may
        // have been written (allowed by SBC for a failed WRITE).
        let err = v.write(10, &[1u8; 20 * 512], false).unwrap_err();
        assert!(matches!(err, BlockError::Io(_)));
    }

    /// [`ext`] with a mirror on `backend` from `bstart`.
    fn mext(vstart: u64, blocks: u64, primary: (&str, u64), mirror: (&str, u64)) -> Extent {
        Extent {
            mirror: Some(Mirror {
                backend: mirror.0.into(),
                bstart: mirror.1,
            }),
            ..ext(vstart, blocks, primary.0, primary.1)
        }
    }

    /// 60 blocks: [0, 20) on A (from 0), [20, 60) on P (from 100) mirrored on M (from
    /// 300).
    fn mirrored(p: Arc<Probe>, m: Arc<Probe>) -> (VirtualVolume, Arc<MemStore>) {
        let a = Arc::new(MemStore::new(512, 100));
        let reg = Registry::new()
            .with("A", a.clone())
            .with("P", p)
            .with("M", m);
        let d = def(
            60,
            HolePolicy::Error,
            vec![ext(0, 20, "A", 0), mext(20, 40, ("P", 100), ("M", 300))],
        );
        (VirtualVolume::new(&d, &reg, 1).unwrap(), a)
    }

    #[test]
    fn writes_reach_both_homes_and_reads_only_the_primary() {
        let (p, m) = (Arc::new(Probe::new()), Arc::new(Probe::new()));
        let (v, a) = mirrored(p.clone(), m.clone());
        assert_eq!(v.backend_ids().collect::<Vec<_>>(), ["A", "P", "M"]);
        let data = pattern(10, 40, 0x11);
        v.write(10, &data, false).unwrap();
        let mut got = vec![0u8; 10 * 512];
        a.read(10, &mut got).unwrap();
        assert_eq!(got, data[..10 * 512]);
        assert_eq!(p.get(100, 30), data[10 * 512..]);
        assert_eq!(m.get(300, 30), data[10 * 512..]);
        assert_eq!(m.get(330, 10), vec![0u8; 10 * 512]);

        // FUA reaches both homes, as FUA.
        let fua = pattern(30, 5, 0x22);
        v.write(30, &fua, true).unwrap();
        assert_eq!(p.get(110, 5), fua);
        assert_eq!(m.get(310, 5), fua);
        assert_eq!(p.fua_writes.load(Ordering::SeqCst), 1);
        assert_eq!(m.fua_writes.load(Ordering::SeqCst), 1);

        // What only the mirror holds is never read.
        m.inner.write(320, &[0xee; 10 * 512], false).unwrap();
        let mut back = vec![0u8; 60 * 512];
        v.read(0, &mut back).unwrap();
        assert_eq!(back[40 * 512..50 * 512], data[30 * 512..40 * 512]);
        assert_eq!(back[40 * 512..50 * 512], p.get(120, 10)[..]);
        assert_eq!(v.lba_status(45).unwrap().blocks, 15);

        // Flush reaches the mirror too.
        v.flush().unwrap();
        assert_eq!(p.flushes.load(Ordering::SeqCst), 1);
        assert_eq!(m.flushes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn unmap_and_compare_and_write_reach_both_homes() {
        let (p, m) = (Arc::new(Probe::new()), Arc::new(Probe::new()));
        let (v, _) = mirrored(p.clone(), m.clone());
        let old = pattern(20, 40, 0x33);
        v.write(20, &old, false).unwrap();
        v.unmap(25, 10).unwrap();
        assert_eq!(p.get(105, 10), vec![0u8; 10 * 512]);
        assert_eq!(m.get(305, 10), vec![0u8; 10 * 512]);
        assert_eq!(p.get(115, 5), old[15 * 512..20 * 512]);
        assert_eq!(m.get(315, 5), old[15 * 512..20 * 512]);

        assert!(v.supports_compare_and_write());
        let new = pattern(40, 4, 0x44);
        let cur = old[20 * 512..24 * 512].to_vec();
        // A miscompare writes nothing anywhere.
        let mut wrong = cur.clone();
        wrong[700] ^= 1;
        assert_eq!(
            v.compare_and_write(40, &wrong, &new, false).unwrap(),
            CawOutcome::Miscompare { offset: 700 }
        );
        assert_eq!(m.get(320, 4), cur);
        assert_eq!(
            v.compare_and_write(40, &cur, &new, true).unwrap(),
            CawOutcome::Written
        );
        assert_eq!(p.get(120, 4), new);
        assert_eq!(m.get(320, 4), new);
        assert_eq!(m.fua_writes.load(Ordering::SeqCst), 1);
        // Only the primary's own COMPARE AND WRITE counts.
        let (v, _) = mirrored(Arc::new(Probe::plain()), Arc::new(Probe::new()));
        assert!(!v.supports_compare_and_write());
        assert!(matches!(
            v.compare_and_write(40, &cur, &new, false),
            Err(BlockError::Unsupported(_))
        ));
    }

    #[test]
    fn a_failing_home_fails_the_io() {
        // The mirror fails: the primary was written first, the I/O fails.
        let (p, m) = (Arc::new(Probe::new()), Arc::new(Probe::new().failing()));
        let (v, _) = mirrored(p.clone(), m.clone());
        let data = pattern(20, 10, 0x55);
        assert!(matches!(v.write(20, &data, false), Err(BlockError::Io(_))));
        assert_eq!(p.get(100, 10), data);
        let zero = vec![0u8; 10 * 512];
        assert!(matches!(
            v.compare_and_write(20, &data, &zero, false),
            Err(BlockError::Io(_))
        ));
        // The primary fails: the mirror is not written.
        let (p, m) = (Arc::new(Probe::new().failing()), Arc::new(Probe::new()));
        let (v, _) = mirrored(p, m.clone());
        assert!(matches!(v.write(20, &data, false), Err(BlockError::Io(_))));
        assert_eq!(m.get(300, 10), zero);
    }

    #[test]
    fn a_mirror_counts_in_the_capabilities() {
        let (v, _) = mirrored(Arc::new(Probe::new()), Arc::new(Probe::new()));
        assert_eq!(v.capabilities(), MemStore::new(512, 1).capabilities());
        let m = Arc::new(Probe::plain());
        let (v, _) = mirrored(Arc::new(Probe::new()), m.clone());
        let caps = v.capabilities();
        assert!(!caps.unmap && !caps.fua && !caps.read_only);
        // GET LBA STATUS asks only the primary.
        assert!(caps.lba_status);
        // Unmap on the mirrored range is refused before anything is done.
        v.write(20, &[9u8; 512], false).unwrap();
        assert!(matches!(v.unmap(15, 10), Err(BlockError::Unsupported(_))));
        let mut block = vec![0u8; 512];
        v.read(20, &mut block).unwrap();
        assert_eq!(block, vec![9u8; 512]);
        assert_eq!(m.get(300, 1), vec![9u8; 512]);
        let ro = Probe {
            caps: Capabilities {
                read_only: true,
                ..Probe::new().caps
            },
            ..Probe::new()
        };
        let (v, _) = mirrored(Arc::new(Probe::new()), Arc::new(ro));
        assert!(v.capabilities().read_only);
    }

    #[test]
    fn concurrent_overlapping_writes_land_in_one_order_on_both_homes() {
        const BLOCKS: u64 = 4000;
        const AROUND: u64 = STRIPE_BLOCKS; // writes straddle a stripe boundary
        let slow = || {
            let mut s = Probe::new();
            s.inner = MemStore::new(512, BLOCKS);
            s.jitter = true;
            Arc::new(s)
        };
        let (p, m) = (slow(), slow());
        let reg = Registry::new().with("P", p.clone()).with("M", m.clone());
        let d = def(
            BLOCKS,
            HolePolicy::Error,
            vec![mext(0, BLOCKS, ("P", 0), ("M", 0))],
        );
        let v = Arc::new(VirtualVolume::new(&d, &reg, 1).unwrap());
        // Rounds of racing writers; after each, both homes must be identical (only the
        // last writes to a block show, so every round is a fresh chance to diverge).
        for round in 0..20u64 {
            let threads: Vec<_> = (0..8u8)
                .map(|t| {
                    let v = v.clone();
                    std::thread::spawn(move || {
                        let mut rng = StdRng::seed_from_u64(round << 8 | u64::from(t));
                        for i in 0..8u8 {
                            let lba = rng.gen_range(AROUND - 16..AROUND + 8);
                            let blocks = rng.gen_range(1..=24u64);
                            let data = vec![t << 4 | i; blocks as usize * 512];
                            v.write(lba, &data, false).unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let (pd, md) = (p.get(0, BLOCKS), m.get(0, BLOCKS));
            assert!(pd[AROUND as usize * 512..][..512].iter().any(|&b| b != 0));
            for lba in 0..BLOCKS as usize {
                let r = lba * 512..(lba + 1) * 512;
                assert_eq!(
                    pd[r.clone()],
                    md[r],
                    "round {round}: block {lba} differs between the homes"
                );
            }
        }
    }

    #[test]
    fn stripes_cover_the_range_in_order() {
        let s = STRIPE_BLOCKS;
        assert_eq!(stripe_mask(BlockRange::new(5, 5)), 0);
        assert_eq!(stripe_mask(BlockRange::new(0, 1)), 1);
        assert_eq!(stripe_mask(BlockRange::new(s - 1, s + 1)), 0b11);
        assert_eq!(stripe_mask(BlockRange::at(3 * s, s)), 0b1000);
        // Chunk 64 is stripe 0 again.
        assert_eq!(
            stripe_mask(BlockRange::new(64 * s - 1, 64 * s + 1)),
            1 << 63 | 1
        );
        assert_eq!(stripe_mask(BlockRange::at(10 * s, 64 * s)), u64::MAX);
        assert_eq!(
            stripe_mask(BlockRange::new(u64::MAX - 1, u64::MAX)),
            1 << 63
        );
        let order = WriteOrder::new();
        assert_eq!(order.lock(BlockRange::new(s - 1, s + 1)).len(), 2);
        // Released: taking them again does not block.
        assert_eq!(order.lock(BlockRange::at(0, 100 * s)).len(), 64);
    }

    #[test]
    fn every_generation_of_a_volume_shares_its_write_order() {
        let (p, m) = (Arc::new(Probe::new()), Arc::new(Probe::new()));
        let reg = Registry::new().with("P", p.clone()).with("M", m.clone());
        let plain = def(20, HolePolicy::Error, vec![ext(0, 20, "P", 0)]);
        let live = LiveVolume::new(VirtualVolume::new(&plain, &reg, 1).unwrap());
        let first = live.current();
        let d = def(20, HolePolicy::Error, vec![mext(0, 20, ("P", 0), ("M", 0))]);
        let copy_to_m = |ranges: &[BlockRange]| {
            for r in ranges {
                let mut buf = vec![0u8; r.len() as usize * 512];
                p.read(r.start, &mut buf)?;
                m.write(r.start, &buf, false)?;
            }
            Ok(())
        };
        v_write(&live, 0x66);
        live.remap(&d, &reg, 2, Duration::from_secs(5), copy_to_m)
            .unwrap();
        let second = live.current();
        assert_eq!(second.epoch(), 2);
        assert!(Arc::ptr_eq(&first.order, &second.order));
        assert!(!Arc::ptr_eq(
            &first.order,
            &VirtualVolume::new(&d, &reg, 2).unwrap().order
        ));
        // Both homes now hold what was written before and after the switch.
        assert_eq!(m.get(0, 20), p.get(0, 20));
        v_write(&live, 0x77);
        assert_eq!(m.get(0, 20), vec![0x77; 20 * 512]);
    }

    fn v_write(v: &dyn BlockStore, byte: u8) {
        v.write(0, &vec![byte; v.num_blocks() as usize * 512], false)
            .unwrap();
    }
}
