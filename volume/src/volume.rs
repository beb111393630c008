//! [`VirtualVolume`]: a block store over one resolved volume definition.
//!
//! Extents are resolved once, when the volume is built, to `Arc<dyn BlockStore>`
//! back-ends from a [`Registry`]. An I/O is cut at extent boundaries into pieces (an
//! iterator over the sorted extent vector: one binary search, no allocation) and each
//! piece goes to its back-end; the I/O completes when every piece has.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use blockdev::{BlockError, BlockStore, Capabilities, CawOutcome, LbaStatus};

use crate::range::BlockRange;
use crate::table::{
    BackendCatalog, BackendInfo, HolePolicy, MappingTable, ValidationErrors, VolumeDef,
};

/// The back-end LUs a node can reach, by id.
#[derive(Clone, Default)]
pub struct Registry {
    stores: BTreeMap<String, Arc<dyn BlockStore>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Add (or replace) back-end `id`.
    pub fn insert(&mut self, id: impl Into<String>, store: Arc<dyn BlockStore>) {
        self.stores.insert(id.into(), store);
    }

    /// Builder form of [`Registry::insert`].
    pub fn with(mut self, id: impl Into<String>, store: Arc<dyn BlockStore>) -> Registry {
        self.insert(id, store);
        self
    }

    /// Back-end `id`.
    pub fn get(&self, id: &str) -> Option<&Arc<dyn BlockStore>> {
        self.stores.get(id)
    }

    /// Block size and capacity of every back-end, for [`MappingTable::validate_with`].
    pub fn catalog(&self) -> BackendCatalog {
        self.stores
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

/// One extent, resolved.
struct Mapped {
    vstart: u64,
    vend: u64,
    bstart: u64,
    store: Arc<dyn BlockStore>,
}

/// A virtual volume over one immutable, resolved mapping. Cheap to share (`Arc`); a
/// [`crate::LiveVolume`] swaps whole `VirtualVolume`s to change the mapping.
pub struct VirtualVolume {
    def: VolumeDef,
    epoch: u64,
    /// Sorted by `vstart`, non-overlapping.
    extents: Vec<Mapped>,
    /// Each back-end once, for flush.
    backends: Vec<(String, Arc<dyn BlockStore>)>,
    caps: Capabilities,
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
        let one = MappingTable {
            epoch,
            volumes: vec![def.clone()],
        };
        one.validate_with(&registry.catalog())?;
        let mut def = def.clone();
        def.extents.sort();
        let mut backends: Vec<(String, Arc<dyn BlockStore>)> = Vec::new();
        let extents: Vec<Mapped> = def
            .extents
            .iter()
            .map(|e| {
                let store = registry.get(&e.backend).expect("validated").clone();
                if !backends.iter().any(|(id, _)| *id == e.backend) {
                    backends.push((e.backend.clone(), store.clone()));
                }
                Mapped {
                    vstart: e.vstart,
                    vend: e.vstart + e.blocks,
                    bstart: e.bstart,
                    store,
                }
            })
            .collect();
        // What the volume can do is what all its back-ends can do; it is read-only
        // when any back-end is.
        let mut caps = Capabilities {
            unmap: true,
            lba_status: true,
            read_only: false,
            fua: true,
        };
        for (_, s) in &backends {
            let c = s.capabilities();
            caps.unmap &= c.unmap;
            caps.lba_status &= c.lba_status;
            caps.fua &= c.fua;
            caps.read_only |= c.read_only;
        }
        Ok(VirtualVolume {
            def,
            epoch,
            extents,
            backends,
            caps,
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

    /// Ids of the back-ends the volume maps, each once.
    pub fn backend_ids(&self) -> impl Iterator<Item = &str> {
        self.backends.iter().map(|(id, _)| id.as_str())
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

    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let blocks = self.check_buf(lba, buf.len())?;
        let bs = self.def.block_size as usize;
        for (at, piece) in self.pieces(lba, blocks) {
            let off = (at - lba) as usize * bs;
            match piece {
                Piece::Mapped { ext, blocks } => {
                    let len = blocks as usize * bs;
                    ext.store
                        .read(ext.bstart + (at - ext.vstart), &mut buf[off..off + len])?;
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

    /// Write `data` at `lba`, piece by piece. A write that touches a hole fails before
    /// anything is written. A back-end error part-way through returns that error with
    /// the earlier pieces already written: SBC-4 promises all-or-nothing only for
    /// WRITE ATOMIC, so after a failed WRITE the addressed blocks may hold old data,
    /// new data or a mix, and the host rewrites them.
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
                let len = blocks as usize * bs;
                ext.store
                    .write(ext.bstart + (at - ext.vstart), &data[off..off + len], fua)?;
            }
        }
        Ok(())
    }

    /// Flush every back-end the volume maps, each once. All are tried; the first error
    /// is returned.
    fn flush(&self) -> Result<(), BlockError> {
        let mut first = None;
        for (id, s) in &self.backends {
            if let Err(e) = s.flush() {
                tracing::warn!(volume = %self.def.name, backend = %id, error = %e, "flush failed");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Unmap piece by piece (holes are already unmapped). Refused before anything is
    /// done when a back-end in the range cannot unmap.
    fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BlockError> {
        self.check_range(lba, blocks)?;
        for (_, piece) in self.pieces(lba, blocks) {
            if let Piece::Mapped { ext, .. } = piece {
                if !ext.store.capabilities().unmap {
                    return Err(BlockError::Unsupported("unmap"));
                }
            }
        }
        for (at, piece) in self.pieces(lba, blocks) {
            if let Piece::Mapped { ext, blocks } = piece {
                ext.store.unmap(ext.bstart + (at - ext.vstart), blocks)?;
            }
        }
        Ok(())
    }

    /// Passed to the back-end when the blocks lie inside one extent (the LBA
    /// translated), so that the back-end's atomicity — e.g. an array's own COMPARE AND
    /// WRITE — covers every node that maps the same back-end blocks. A range that
    /// crosses an extent boundary or touches a hole is `Unsupported` (nothing done):
    /// no back-end can compare and write across two of them atomically, and the
    /// caller falls back to its own read-compare-write.
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
            (Some((at, Piece::Mapped { ext, blocks: n })), None) if at == lba && n == blocks => ext
                .store
                .compare_and_write(ext.bstart + (lba - ext.vstart), compare, write, fua),
            (Some((_, Piece::Hole { .. })), None) => {
                Err(BlockError::Unsupported("compare and write in a hole"))
            }
            _ => Err(BlockError::Unsupported(
                "compare and write across extent boundaries",
            )),
        }
    }

    /// True when any back-end the volume maps supports it, so that a volume mixing
    /// array LUs and local files still passes COMPARE AND WRITE on the array extents
    /// to the array. Whether a given range can is decided per call by
    /// [`VirtualVolume::compare_and_write`], which refuses (`Unsupported`, nothing done,
    /// no I/O) a range on a back-end without it, across extents or in a hole; callers
    /// fall back then. Asked on each call: a remote back-end may find out that its
    /// array refuses the command.
    fn supports_compare_and_write(&self) -> bool {
        self.backends
            .iter()
            .any(|(_, s)| s.supports_compare_and_write())
    }

    fn lba_status(&self, lba: u64) -> Result<LbaStatus, BlockError> {
        self.check_range(lba, 1)?;
        let (at, piece) = self
            .pieces(lba, self.def.blocks - lba)
            .next()
            .expect("lba is inside the volume");
        match piece {
            Piece::Hole { blocks } => Ok(LbaStatus {
                mapped: false,
                blocks,
            }),
            Piece::Mapped { ext, blocks } => {
                let s = ext.store.lba_status(ext.bstart + (at - ext.vstart))?;
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
    use crate::table::Extent;
    use blockdev::MemStore;

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

    /// A store without unmap and with a failing write, to check capability
    /// intersection and mid-write failure.
    struct Plain {
        inner: MemStore,
        fail_writes: bool,
    }

    impl BlockStore for Plain {
        fn block_size(&self) -> u32 {
            512
        }
        fn num_blocks(&self) -> u64 {
            self.inner.num_blocks()
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
            self.inner.read(lba, buf)
        }
        fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), BlockError> {
            if self.fail_writes {
                return Err(BlockError::Io(io::Error::from_raw_os_error(5)));
            }
            self.inner.write(lba, data, fua)
        }
        fn flush(&self) -> Result<(), BlockError> {
            Ok(())
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
        let p = Arc::new(Plain {
            inner: MemStore::new(512, 100),
            fail_writes: true,
        });
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
}
