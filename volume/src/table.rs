//! The mapping table as data: virtual volumes made of extents on back-end LUs.
//!
//! A [`MappingTable`] is what an admin edits (TOML or JSON), what the cluster stores and
//! what a remap changes. It is plain data: [`MappingTable::validate`] checks it,
//! `Display` prints it for an admin, and [`MappingTable::diff`] / [`MappingTable::apply`]
//! turn two tables into a [`Changeset`] and back. A changeset names, per volume, the
//! virtual ranges whose mapping changes: exactly what a remap must quiesce.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::range::{coalesce, display_ranges, BlockRange};

/// The whole mapping table of a cluster at one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingTable {
    /// Version of the table; every applied change adds one.
    pub epoch: u64,
    /// The virtual volumes.
    #[serde(default)]
    pub volumes: Vec<VolumeDef>,
}

/// One virtual volume: a WWN, a size, and the extents that give its blocks a home.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeDef {
    /// Unique name (what the admin and the LUN configuration refer to).
    pub name: String,
    /// The LU's NAA identifier, `naa.` followed by 16 or 32 hex digits.
    pub wwn: String,
    /// Logical block size in bytes; every back-end of the volume must use it too.
    pub block_size: u32,
    /// Size of the volume in blocks.
    pub blocks: u64,
    /// What I/O to blocks no extent maps does.
    #[serde(default)]
    pub holes: HolePolicy,
    /// Where the blocks live. Blocks no extent covers are holes.
    #[serde(default)]
    pub extents: Vec<Extent>,
}

/// What reading an unmapped block of a volume does. Writes to holes always fail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HolePolicy {
    /// Holes read as zeroes (a thin volume).
    #[default]
    Zero,
    /// Reading a hole fails with a medium error.
    Error,
}

/// `blocks` blocks of a volume, starting at `vstart`, live on back-end LU `backend`
/// starting at `bstart`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extent {
    /// First LBA in the virtual volume.
    pub vstart: u64,
    /// Length in blocks.
    pub blocks: u64,
    /// Back-end LU id (a key of the back-end registry).
    pub backend: String,
    /// First LBA in the back-end LU.
    pub bstart: u64,
    /// A second home the extent's writes also go to (reads use only the first): what
    /// an online migration keeps while it copies, so the source stays complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
}

/// The second home of a mirrored [`Extent`]: `blocks` blocks on back-end LU `backend`
/// from `bstart`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// Back-end LU id.
    pub backend: String,
    /// First LBA in the back-end LU.
    pub bstart: u64,
}

impl Extent {
    /// The extent's virtual blocks.
    pub fn vrange(&self) -> BlockRange {
        BlockRange::at(self.vstart, self.blocks)
    }
    /// The extent's blocks on its back-end.
    pub fn brange(&self) -> BlockRange {
        BlockRange::at(self.bstart, self.blocks)
    }
}

impl fmt::Display for Extent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {} {}", self.vrange(), self.backend, self.brange())
    }
}

/// What validation knows about a back-end LU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendInfo {
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Capacity in blocks.
    pub blocks: u64,
}

/// The known back-end LUs, by id.
pub type BackendCatalog = BTreeMap<String, BackendInfo>;

/// One thing wrong with a mapping table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("a volume has an empty name")]
    EmptyName,
    #[error("volume {0:?} is defined more than once")]
    DuplicateVolume(String),
    #[error("volumes {first:?} and {second:?} have the same WWN {wwn}")]
    DuplicateWwn {
        wwn: String,
        first: String,
        second: String,
    },
    #[error("volume {volume:?}: WWN {wwn:?} is not `naa.` followed by 16 or 32 hex digits")]
    BadWwn { volume: String, wwn: String },
    #[error("volume {volume:?}: block size {block_size} is not 512 or 4096")]
    BadBlockSize { volume: String, block_size: u32 },
    #[error("volume {volume:?} has zero blocks")]
    EmptyVolume { volume: String },
    #[error("volume {volume:?}: the extent at virtual block {vstart} has zero length")]
    ZeroLengthExtent { volume: String, vstart: u64 },
    #[error(
        "volume {volume:?}: extent {extent} ends past the end of the volume ({volume_blocks} blocks)"
    )]
    ExtentPastEnd {
        volume: String,
        extent: BlockRange,
        volume_blocks: u64,
    },
    #[error("volume {volume:?}: extents {a} and {b} overlap")]
    Overlap {
        volume: String,
        a: BlockRange,
        b: BlockRange,
    },
    #[error("volume {volume:?}: the extent at virtual block {vstart} names unknown back-end {backend:?}")]
    UnknownBackend {
        volume: String,
        vstart: u64,
        backend: String,
    },
    #[error(
        "volume {volume:?}: back-end {backend:?} has {backend_block_size}-byte blocks, the volume {volume_block_size}-byte blocks"
    )]
    BlockSizeMismatch {
        volume: String,
        backend: String,
        volume_block_size: u32,
        backend_block_size: u32,
    },
    #[error(
        "volume {volume:?}: the extent at virtual block {vstart} reaches back-end blocks {range} of {backend:?}, which has {backend_blocks} blocks"
    )]
    PastBackendEnd {
        volume: String,
        vstart: u64,
        backend: String,
        range: BlockRange,
        backend_blocks: u64,
    },
    #[error(
        "back-end {backend:?} blocks {range} are used twice: by volume {first:?} and by volume {second:?}"
    )]
    BackendAliased {
        backend: String,
        range: BlockRange,
        first: String,
        second: String,
    },
}

/// Everything wrong with a table, one problem per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<TableError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the mapping table has {} problem(s):", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

fn wwn_ok(wwn: &str) -> bool {
    let hex = wwn
        .strip_prefix("naa.")
        .or_else(|| wwn.strip_prefix("NAA."))
        .unwrap_or("");
    (hex.len() == 16 || hex.len() == 32) && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

impl VolumeDef {
    /// The volume's blocks.
    pub fn vrange(&self) -> BlockRange {
        BlockRange::new(0, self.blocks)
    }

    /// The volume's properties other than its extents.
    pub fn header(&self) -> VolumeHeader {
        VolumeHeader {
            wwn: self.wwn.clone(),
            block_size: self.block_size,
            blocks: self.blocks,
            holes: self.holes,
        }
    }

    /// Problems with this volume alone; back-end checks only when `catalog` is given.
    fn problems(&self, catalog: Option<&BackendCatalog>, out: &mut Vec<TableError>) {
        let volume = || self.name.clone();
        if self.name.is_empty() {
            out.push(TableError::EmptyName);
        }
        if !wwn_ok(&self.wwn) {
            out.push(TableError::BadWwn {
                volume: volume(),
                wwn: self.wwn.clone(),
            });
        }
        if self.block_size != 512 && self.block_size != 4096 {
            out.push(TableError::BadBlockSize {
                volume: volume(),
                block_size: self.block_size,
            });
        }
        if self.blocks == 0 {
            out.push(TableError::EmptyVolume { volume: volume() });
        }
        let mut sorted: Vec<&Extent> = self.extents.iter().collect();
        sorted.sort();
        let mut prev: Option<BlockRange> = None;
        for e in sorted {
            if e.blocks == 0 {
                out.push(TableError::ZeroLengthExtent {
                    volume: volume(),
                    vstart: e.vstart,
                });
                continue;
            }
            let end = e.vstart.checked_add(e.blocks);
            if end.is_none_or(|end| end > self.blocks) {
                out.push(TableError::ExtentPastEnd {
                    volume: volume(),
                    extent: e.vrange(),
                    volume_blocks: self.blocks,
                });
            }
            if let Some(p) = prev {
                if p.overlaps(&e.vrange()) {
                    out.push(TableError::Overlap {
                        volume: volume(),
                        a: p,
                        b: e.vrange(),
                    });
                }
            }
            if prev.is_none_or(|p| e.vrange().end > p.end) {
                prev = Some(e.vrange());
            }
            let Some(catalog) = catalog else { continue };
            match catalog.get(&e.backend) {
                None => out.push(TableError::UnknownBackend {
                    volume: volume(),
                    vstart: e.vstart,
                    backend: e.backend.clone(),
                }),
                Some(info) => {
                    if info.block_size != self.block_size {
                        out.push(TableError::BlockSizeMismatch {
                            volume: volume(),
                            backend: e.backend.clone(),
                            volume_block_size: self.block_size,
                            backend_block_size: info.block_size,
                        });
                    }
                    let bend = e.bstart.checked_add(e.blocks);
                    if bend.is_none_or(|end| end > info.blocks) {
                        out.push(TableError::PastBackendEnd {
                            volume: volume(),
                            vstart: e.vstart,
                            backend: e.backend.clone(),
                            range: e.brange(),
                            backend_blocks: info.blocks,
                        });
                    }
                }
            }
        }
    }
}

impl MappingTable {
    /// An empty table at `epoch`.
    pub fn new(epoch: u64) -> MappingTable {
        MappingTable {
            epoch,
            volumes: Vec::new(),
        }
    }

    /// Parse a table from TOML.
    pub fn from_toml(text: &str) -> Result<MappingTable, toml::de::Error> {
        toml::from_str(text)
    }

    /// Print the table as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a mapping table is always representable in TOML")
    }

    /// The volume called `name`.
    pub fn volume(&self, name: &str) -> Option<&VolumeDef> {
        self.volumes.iter().find(|v| v.name == name)
    }

    /// Check the table's structure: names, WWNs, block sizes, extents inside their
    /// volume and not overlapping, no back-end blocks used twice. Back-end ids are not
    /// checked; see [`MappingTable::validate_with`].
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        self.check(None)
    }

    /// [`MappingTable::validate`], plus: every back-end id is known, has the volume's
    /// block size, and is large enough for the extents on it.
    pub fn validate_with(&self, catalog: &BackendCatalog) -> Result<(), ValidationErrors> {
        self.check(Some(catalog))
    }

    fn check(&self, catalog: Option<&BackendCatalog>) -> Result<(), ValidationErrors> {
        let mut out = Vec::new();
        let mut names = BTreeSet::new();
        let mut wwns: BTreeMap<String, &str> = BTreeMap::new();
        for v in &self.volumes {
            if !v.name.is_empty() && !names.insert(v.name.as_str()) {
                out.push(TableError::DuplicateVolume(v.name.clone()));
            }
            let key = v.wwn.to_ascii_lowercase();
            if let Some(first) = wwns.get(&key) {
                out.push(TableError::DuplicateWwn {
                    wwn: v.wwn.clone(),
                    first: first.to_string(),
                    second: v.name.clone(),
                });
            } else {
                wwns.insert(key, &v.name);
            }
            v.problems(catalog, &mut out);
        }
        // Two extents must not share back-end blocks (that would alias data).
        let mut uses: Vec<(&str, BlockRange, &str)> = self
            .volumes
            .iter()
            .flat_map(|v| {
                v.extents
                    .iter()
                    .filter(|e| e.blocks > 0)
                    .map(move |e| (e.backend.as_str(), e.brange(), v.name.as_str()))
            })
            .collect();
        uses.sort();
        for w in uses.windows(2) {
            let ((b1, r1, v1), (b2, r2, v2)) = (w[0], w[1]);
            if b1 == b2 && r1.overlaps(&r2) {
                out.push(TableError::BackendAliased {
                    backend: b1.to_string(),
                    range: BlockRange::new(r2.start, r1.end.min(r2.end)),
                    first: v1.to_string(),
                    second: v2.to_string(),
                });
            }
        }
        if out.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(out))
        }
    }

    /// The same table with volumes sorted by name and extents by virtual start: the
    /// form [`MappingTable::apply`] produces.
    pub fn normalized(&self) -> MappingTable {
        let mut t = self.clone();
        t.volumes.sort_by(|a, b| a.name.cmp(&b.name));
        for v in &mut t.volumes {
            v.extents.sort();
        }
        t
    }

    /// What changes from `old` to `new`, per volume, with the virtual ranges each
    /// change affects.
    pub fn diff(old: &MappingTable, new: &MappingTable) -> Changeset {
        let olds: BTreeMap<&str, &VolumeDef> =
            old.volumes.iter().map(|v| (v.name.as_str(), v)).collect();
        let news: BTreeMap<&str, &VolumeDef> =
            new.volumes.iter().map(|v| (v.name.as_str(), v)).collect();
        let mut volumes = Vec::new();
        for (name, o) in &olds {
            match news.get(name) {
                None => volumes.push(VolumeChange::Removed((*o).clone())),
                Some(n) => {
                    let d = VolumeDiff::between(o, n);
                    if !d.is_empty() {
                        volumes.push(VolumeChange::Modified(d));
                    }
                }
            }
        }
        for (name, n) in &news {
            if !olds.contains_key(name) {
                volumes.push(VolumeChange::Added((*n).clone()));
            }
        }
        Changeset {
            base_epoch: old.epoch,
            volumes,
        }
    }

    /// Apply a changeset made against this table; the result has epoch + 1 and is
    /// [normalized](MappingTable::normalized). Fails, changing nothing, when the
    /// changeset was made against another epoch or does not fit this table.
    pub fn apply(&self, cs: &Changeset) -> Result<MappingTable, ApplyError> {
        if cs.base_epoch != self.epoch {
            return Err(ApplyError::StaleEpoch {
                changeset: cs.base_epoch,
                table: self.epoch,
            });
        }
        let mut vols: BTreeMap<String, VolumeDef> = BTreeMap::new();
        for v in &self.volumes {
            if vols.insert(v.name.clone(), v.clone()).is_some() {
                return Err(ApplyError::Conflict(format!(
                    "the table defines volume {:?} twice",
                    v.name
                )));
            }
        }
        for change in &cs.volumes {
            match change {
                VolumeChange::Added(v) => {
                    if vols.insert(v.name.clone(), v.clone()).is_some() {
                        return Err(ApplyError::Conflict(format!(
                            "volume {:?} already exists",
                            v.name
                        )));
                    }
                }
                VolumeChange::Removed(v) => {
                    let cur = vols.remove(&v.name);
                    if cur.as_ref().map(normalize_volume) != Some(normalize_volume(v)) {
                        return Err(ApplyError::Conflict(format!(
                            "volume {:?} to remove is not in the table as the changeset expects",
                            v.name
                        )));
                    }
                }
                VolumeChange::Modified(d) => {
                    let v = vols.get_mut(&d.name).ok_or_else(|| {
                        ApplyError::Conflict(format!("volume {:?} is not in the table", d.name))
                    })?;
                    d.apply_to(v)?;
                }
            }
        }
        let mut out = MappingTable {
            epoch: self.epoch + 1,
            volumes: vols.into_values().collect(),
        };
        for v in &mut out.volumes {
            v.extents.sort();
        }
        Ok(out)
    }
}

fn normalize_volume(v: &VolumeDef) -> VolumeDef {
    let mut v = v.clone();
    v.extents.sort();
    v
}

/// Why a changeset does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("the changeset was made against epoch {changeset}, the table is at epoch {table}; diff again against the current table")]
    StaleEpoch { changeset: u64, table: u64 },
    #[error("the changeset does not fit the table: {0}")]
    Conflict(String),
}

/// A set of changes between two tables (the patent's "configuration difference").
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Changeset {
    /// Epoch of the table the changeset was made against; applying it gives epoch + 1.
    pub base_epoch: u64,
    /// Changed volumes (volumes that did not change are not listed).
    pub volumes: Vec<VolumeChange>,
}

/// How one volume changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeChange {
    /// A new volume. No I/O can be in flight to it: nothing to quiesce.
    Added(VolumeDef),
    /// A volume that goes away (as it was): its whole range must be quiesced.
    Removed(VolumeDef),
    /// A volume whose properties or extents change.
    Modified(VolumeDiff),
}

impl VolumeChange {
    /// Name of the volume.
    pub fn name(&self) -> &str {
        match self {
            VolumeChange::Added(v) | VolumeChange::Removed(v) => &v.name,
            VolumeChange::Modified(d) => &d.name,
        }
    }

    /// The virtual ranges whose I/O must be held and drained for this change.
    pub fn affected(&self) -> Vec<BlockRange> {
        match self {
            VolumeChange::Added(_) => Vec::new(),
            VolumeChange::Removed(v) => vec![v.vrange()],
            VolumeChange::Modified(d) => d.affected.clone(),
        }
    }
}

impl Changeset {
    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.volumes.is_empty()
    }

    /// The change to volume `name`, if any.
    pub fn volume(&self, name: &str) -> Option<&VolumeChange> {
        self.volumes.iter().find(|c| c.name() == name)
    }

    /// The ranges of volume `name` a remap must quiesce (empty if it does not change).
    pub fn affected(&self, name: &str) -> Vec<BlockRange> {
        self.volume(name).map(|c| c.affected()).unwrap_or_default()
    }
}

/// A volume's properties other than its extents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeHeader {
    pub wwn: String,
    pub block_size: u32,
    pub blocks: u64,
    pub holes: HolePolicy,
}

/// A change of a volume's properties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderChange {
    pub before: VolumeHeader,
    pub after: VolumeHeader,
}

/// An extent replaced by another at the same virtual start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentChange {
    pub before: Extent,
    pub after: Extent,
}

/// How the properties and extents of one volume change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeDiff {
    /// The volume.
    pub name: String,
    /// Size, block size, WWN or hole policy, when one of them changes.
    pub header: Option<HeaderChange>,
    /// Extents that go away (no extent of the new table starts where they start).
    pub removed: Vec<Extent>,
    /// New extents (no extent of the old table started where they start).
    pub added: Vec<Extent>,
    /// Extents replaced by a different one starting at the same virtual block.
    pub changed: Vec<ExtentChange>,
    /// The virtual ranges whose block-for-block mapping (back-end and back-end LBA,
    /// hole, or past the end) differs between the two tables, coalesced. Extents that
    /// are only split or merged without moving data affect nothing.
    pub affected: Vec<BlockRange>,
}

/// Where one virtual block resolves to, for comparing two versions of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Home<'a> {
    Mapped(&'a str, u64),
    Hole(HolePolicy),
    PastEnd,
}

/// Resolve virtual block `lba`. `sorted` is sorted by virtual start.
fn home_of<'a>(v: &'a VolumeDef, sorted: &[&'a Extent], lba: u64) -> Home<'a> {
    if lba >= v.blocks {
        return Home::PastEnd;
    }
    let i = sorted.partition_point(|e| e.vstart <= lba);
    if i > 0 {
        let e = sorted[i - 1];
        if e.vrange().contains(lba) {
            return Home::Mapped(&e.backend, e.bstart + (lba - e.vstart));
        }
    }
    Home::Hole(v.holes)
}

/// The virtual ranges whose mapping differs between two versions of a volume.
pub fn affected_ranges(old: &VolumeDef, new: &VolumeDef) -> Vec<BlockRange> {
    if old.block_size != new.block_size || old.wwn != new.wwn {
        // A different LU identity or block size: everything is affected.
        return vec![BlockRange::new(0, old.blocks.max(new.blocks))];
    }
    let mut os: Vec<&Extent> = old.extents.iter().filter(|e| e.blocks > 0).collect();
    let mut ns: Vec<&Extent> = new.extents.iter().filter(|e| e.blocks > 0).collect();
    os.sort();
    ns.sort();
    let limit = old.blocks.max(new.blocks);
    // Between two consecutive boundaries both versions map linearly (one extent, one
    // hole, or past the end), so comparing the first block of a segment decides it.
    let mut bounds: Vec<u64> = vec![0, old.blocks, new.blocks];
    for e in os.iter().chain(ns.iter()) {
        bounds.push(e.vstart);
        bounds.push(e.vrange().end);
    }
    bounds.retain(|&b| b <= limit);
    bounds.sort_unstable();
    bounds.dedup();
    let mut out = Vec::new();
    for w in bounds.windows(2) {
        let (a, b) = (w[0], w[1]);
        if home_of(old, &os, a) != home_of(new, &ns, a) {
            out.push(BlockRange::new(a, b));
        }
    }
    coalesce(out)
}

impl VolumeDiff {
    fn between(old: &VolumeDef, new: &VolumeDef) -> VolumeDiff {
        let header = (old.header() != new.header()).then(|| HeaderChange {
            before: old.header(),
            after: new.header(),
        });
        // Multiset difference: extents present in both are unchanged.
        let mut rem_old: Vec<Extent> = old.extents.clone();
        let mut rem_new: Vec<Extent> = Vec::new();
        for e in &new.extents {
            match rem_old.iter().position(|o| o == e) {
                Some(i) => {
                    rem_old.swap_remove(i);
                }
                None => rem_new.push(e.clone()),
            }
        }
        rem_old.sort();
        rem_new.sort();
        // Pair what is left by virtual start: those are changed extents.
        let mut by_start: BTreeMap<u64, Vec<Extent>> = BTreeMap::new();
        for e in rem_new {
            by_start.entry(e.vstart).or_default().push(e);
        }
        let mut removed = Vec::new();
        let mut changed = Vec::new();
        for before in rem_old {
            match by_start.get_mut(&before.vstart).filter(|v| !v.is_empty()) {
                Some(list) => {
                    let after = list.remove(0);
                    changed.push(ExtentChange { before, after });
                }
                None => removed.push(before),
            }
        }
        let added: Vec<Extent> = by_start.into_values().flatten().collect();
        VolumeDiff {
            name: old.name.clone(),
            header,
            removed,
            added,
            changed,
            affected: affected_ranges(old, new),
        }
    }

    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.header.is_none()
            && self.removed.is_empty()
            && self.added.is_empty()
            && self.changed.is_empty()
    }

    fn apply_to(&self, v: &mut VolumeDef) -> Result<(), ApplyError> {
        let conflict = |what: String| ApplyError::Conflict(format!("volume {:?}: {what}", v.name));
        if let Some(h) = &self.header {
            if v.header() != h.before {
                return Err(conflict(
                    "its properties are not what the changeset expects".into(),
                ));
            }
            v.wwn = h.after.wwn.clone();
            v.block_size = h.after.block_size;
            v.blocks = h.after.blocks;
            v.holes = h.after.holes;
        }
        let gone = self
            .removed
            .iter()
            .chain(self.changed.iter().map(|c| &c.before));
        for e in gone {
            match v.extents.iter().position(|x| x == e) {
                Some(i) => {
                    v.extents.swap_remove(i);
                }
                None => return Err(conflict(format!("extent {e} is not in the table"))),
            }
        }
        v.extents.extend(self.added.iter().cloned());
        v.extents
            .extend(self.changed.iter().map(|c| c.after.clone()));
        v.extents.sort();
        Ok(())
    }
}

fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl fmt::Display for VolumeDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let holes = match self.holes {
            HolePolicy::Zero => "holes read as zeroes",
            HolePolicy::Error => "holes fail",
        };
        writeln!(
            f,
            "volume {}  {}  {} blocks of {} B ({})  {}",
            self.name,
            self.wwn,
            self.blocks,
            self.block_size,
            human_bytes(self.blocks as u128 * self.block_size as u128),
            holes
        )?;
        writeln!(
            f,
            "  {:<28} {:>12}  {:<20} back-end blocks",
            "virtual blocks", "blocks", "back-end"
        )?;
        let mut sorted: Vec<&Extent> = self.extents.iter().collect();
        sorted.sort();
        let mut cur = 0u64;
        let hole = |f: &mut fmt::Formatter<'_>, a: u64, b: u64| {
            writeln!(
                f,
                "  {:<28} {:>12}  (hole)",
                BlockRange::new(a, b).to_string(),
                b - a
            )
        };
        for e in sorted {
            if e.vstart > cur {
                hole(f, cur, e.vstart.min(self.blocks))?;
            }
            writeln!(
                f,
                "  {:<28} {:>12}  {:<20} {}",
                e.vrange().to_string(),
                e.blocks,
                e.backend,
                e.brange()
            )?;
            cur = cur.max(e.vrange().end);
        }
        if cur < self.blocks {
            hole(f, cur, self.blocks)?;
        }
        Ok(())
    }
}

impl fmt::Display for MappingTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "mapping table, epoch {}, {} volume(s)",
            self.epoch,
            self.volumes.len()
        )?;
        for v in &self.volumes {
            write!(f, "\n{v}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Changeset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.volumes.is_empty() {
            return writeln!(f, "no changes against epoch {}", self.base_epoch);
        }
        writeln!(
            f,
            "changes from epoch {} to epoch {}:",
            self.base_epoch,
            self.base_epoch + 1
        )?;
        for c in &self.volumes {
            match c {
                VolumeChange::Added(v) => writeln!(
                    f,
                    "  volume {}: added ({} blocks, {} extent(s))",
                    v.name,
                    v.blocks,
                    v.extents.len()
                )?,
                VolumeChange::Removed(v) => {
                    writeln!(f, "  volume {}: removed; quiesce {}", v.name, v.vrange())?
                }
                VolumeChange::Modified(d) => {
                    writeln!(f, "  volume {}:", d.name)?;
                    if let Some(h) = &d.header {
                        let (b, a) = (&h.before, &h.after);
                        if b.blocks != a.blocks {
                            writeln!(f, "    size {} -> {} blocks", b.blocks, a.blocks)?;
                        }
                        if b.block_size != a.block_size {
                            writeln!(f, "    block size {} -> {}", b.block_size, a.block_size)?;
                        }
                        if b.wwn != a.wwn {
                            writeln!(f, "    WWN {} -> {}", b.wwn, a.wwn)?;
                        }
                        if b.holes != a.holes {
                            writeln!(f, "    holes {:?} -> {:?}", b.holes, a.holes)?;
                        }
                    }
                    for e in &d.removed {
                        writeln!(f, "    - {e}")?;
                    }
                    for e in &d.added {
                        writeln!(f, "    + {e}")?;
                    }
                    for c in &d.changed {
                        writeln!(f, "    ~ {}  =>  {}", c.before, c.after)?;
                    }
                    writeln!(f, "    quiesce: {}", display_ranges(&d.affected))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    pub(crate) const EXAMPLE: &str = r#"
epoch = 3

[[volumes]]
name = "db01"
wwn = "naa.6001405f0e1d2c3b4a5968778695a4b3"
block_size = 512
blocks = 4194304
holes = "zero"

[[volumes.extents]]
vstart = 0
blocks = 2097152
backend = "arrayA/lun0"
bstart = 0

[[volumes.extents]]
vstart = 2097152
blocks = 1048576
backend = "arrayB/lun3"
bstart = 1048576
"#;

    fn ext(vstart: u64, blocks: u64, backend: &str, bstart: u64) -> Extent {
        Extent {
            vstart,
            blocks,
            backend: backend.into(),
            bstart,
            mirror: None,
        }
    }

    fn vol(name: &str, blocks: u64, extents: Vec<Extent>) -> VolumeDef {
        VolumeDef {
            name: name.into(),
            wwn: format!("naa.60014050000000{:02x}", name.len()),
            block_size: 512,
            blocks,
            holes: HolePolicy::Zero,
            extents,
        }
    }

    #[test]
    fn toml_and_json_round_trip() {
        let t = MappingTable::from_toml(EXAMPLE).unwrap();
        assert_eq!(t.epoch, 3);
        assert_eq!(t.volumes[0].extents.len(), 2);
        t.validate().unwrap();
        let again = MappingTable::from_toml(&t.to_toml()).unwrap();
        assert_eq!(again, t);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<MappingTable>(&json).unwrap(), t);
        let cs = MappingTable::diff(&t, &MappingTable::new(3));
        let json = serde_json::to_string(&cs).unwrap();
        assert_eq!(serde_json::from_str::<Changeset>(&json).unwrap(), cs);
    }

    #[test]
    fn the_readme_example_parses_and_validates() {
        let readme = include_str!("../README.md");
        let start = readme.find("```toml\n").unwrap() + 8;
        let len = readme[start..].find("```").unwrap();
        let t = MappingTable::from_toml(&readme[start..start + len]).unwrap();
        t.validate().unwrap();
        assert_eq!(t, MappingTable::from_toml(EXAMPLE).unwrap());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let bad = EXAMPLE.replace("holes = \"zero\"", "holes = \"zero\"\ncolour = 1");
        let err = MappingTable::from_toml(&bad).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn display_is_a_readable_table() {
        let t = MappingTable::from_toml(EXAMPLE).unwrap();
        let s = t.to_string();
        let mut n = t.clone();
        n.volumes[0].extents[1].backend = "arrayC/lun1".into();
        n.volumes[0].blocks += 8;
        let d = MappingTable::diff(&t, &n).to_string();
        assert!(d.contains("size 4194304 -> 4194312 blocks"), "{d}");
        assert!(d.contains("=>  [2097152, 3145728) -> arrayC/lun1"), "{d}");
        assert!(
            d.contains("quiesce: [2097152, 3145728), [4194304, 4194312)"),
            "{d}"
        );
        assert!(s.contains("epoch 3"), "{s}");
        assert!(s.contains("volume db01"), "{s}");
        assert!(s.contains("arrayB/lun3"), "{s}");
        assert!(s.contains("(hole)"), "{s}");
        assert!(s.contains("2.0 GiB"), "{s}");
    }

    #[test]
    fn validation_finds_each_problem() {
        let mut t = MappingTable::new(1);
        t.volumes.push(vol(
            "a",
            100,
            vec![
                ext(0, 50, "x", 0),
                ext(40, 20, "x", 100),
                ext(90, 20, "y", 0),
                ext(70, 0, "x", 500),
            ],
        ));
        let mut b = vol("a", 10, vec![ext(0, 10, "x", 10)]);
        b.block_size = 1000;
        b.wwn = "naa.zz".into();
        t.volumes.push(b);
        let errs = t.validate().unwrap_err().0;
        let has = |f: &dyn Fn(&TableError) -> bool| errs.iter().any(f);
        assert!(
            has(&|e| matches!(e, TableError::Overlap { .. })),
            "{errs:?}"
        );
        assert!(has(&|e| matches!(e, TableError::ExtentPastEnd { .. })));
        assert!(has(&|e| matches!(e, TableError::ZeroLengthExtent { .. })));
        assert!(has(&|e| matches!(e, TableError::DuplicateVolume(_))));
        assert!(has(&|e| matches!(e, TableError::BadBlockSize { .. })));
        assert!(has(&|e| matches!(e, TableError::BadWwn { .. })));
        assert!(has(&|e| matches!(e, TableError::BackendAliased { .. })));

        let good = MappingTable {
            epoch: 1,
            volumes: vec![vol("v", 100, vec![ext(0, 60, "x", 0), ext(60, 40, "y", 0)])],
        };
        good.validate().unwrap();
        let mut cat = BackendCatalog::new();
        cat.insert(
            "x".into(),
            BackendInfo {
                block_size: 512,
                blocks: 50,
            },
        );
        let errs = good.validate_with(&cat).unwrap_err();
        let msg = errs.to_string();
        assert!(msg.contains("unknown back-end \"y\""), "{msg}");
        assert!(msg.contains("which has 50 blocks"), "{msg}");
        cat.insert(
            "y".into(),
            BackendInfo {
                block_size: 4096,
                blocks: 1000,
            },
        );
        cat.get_mut("x").unwrap().blocks = 60;
        let errs = good.validate_with(&cat).unwrap_err().0;
        assert!(
            matches!(&errs[..], [TableError::BlockSizeMismatch { backend, .. }] if backend == "y"),
            "{errs:?}"
        );
    }

    #[test]
    fn diff_of_a_remap_names_exactly_the_moved_range() {
        let old = MappingTable {
            epoch: 7,
            volumes: vec![vol("v", 100, vec![ext(0, 100, "A", 0)])],
        };
        let new = MappingTable {
            epoch: 8,
            volumes: vec![vol(
                "v",
                100,
                vec![
                    ext(0, 40, "A", 0),
                    ext(40, 20, "B", 0),
                    ext(60, 40, "A", 60),
                ],
            )],
        };
        let cs = MappingTable::diff(&old, &new);
        assert_eq!(cs.affected("v"), vec![BlockRange::new(40, 60)]);
        let applied = old.apply(&cs).unwrap();
        assert_eq!(applied, new.normalized());
        let text = cs.to_string();
        assert!(text.contains("quiesce: [40, 60)"), "{text}");
        // A split that moves nothing affects nothing.
        let split = MappingTable {
            epoch: 7,
            volumes: vec![vol(
                "v",
                100,
                vec![ext(0, 50, "A", 0), ext(50, 50, "A", 50)],
            )],
        };
        let cs = MappingTable::diff(&old, &split);
        assert!(!cs.is_empty());
        assert!(cs.affected("v").is_empty());
        // Stale changesets are refused.
        assert!(matches!(
            applied.apply(&cs),
            Err(ApplyError::StaleEpoch { .. })
        ));
    }

    fn random_volume(rng: &mut StdRng, name: &str) -> VolumeDef {
        let blocks = rng.gen_range(1..200u64);
        let mut extents = Vec::new();
        let mut cur = 0;
        while cur < blocks {
            let len = rng.gen_range(1..=(blocks - cur).min(40));
            if rng.gen_bool(0.75) {
                let backend = ["A", "B", "C"][rng.gen_range(0..3)];
                extents.push(ext(cur, len, backend, rng.gen_range(0..4) * 50));
            }
            cur += len;
        }
        let mut v = vol(name, blocks, extents);
        if rng.gen_bool(0.2) {
            v.holes = HolePolicy::Error;
        }
        v
    }

    fn random_table(rng: &mut StdRng, epoch: u64) -> MappingTable {
        let mut volumes = Vec::new();
        for name in ["a", "b", "c", "d"] {
            if rng.gen_bool(0.7) {
                volumes.push(random_volume(rng, name));
            }
        }
        MappingTable { epoch, volumes }
    }

    /// Derive a table from `old` by small edits, so that diffs have shared extents.
    fn mutate(rng: &mut StdRng, old: &MappingTable) -> MappingTable {
        let mut t = old.clone();
        t.epoch += 1;
        for v in &mut t.volumes {
            for e in &mut v.extents {
                match rng.gen_range(0..10) {
                    0 => e.backend = "B".into(),
                    1 => e.bstart += 1,
                    2 if e.blocks > 1 => e.blocks -= 1,
                    _ => {}
                }
            }
            if rng.gen_bool(0.1) {
                v.extents.pop();
            }
            if rng.gen_bool(0.1) {
                v.blocks += 10;
                v.extents.push(ext(v.blocks - 10, 10, "C", 900));
            }
            if rng.gen_bool(0.05) {
                v.holes = HolePolicy::Error;
            }
        }
        if rng.gen_bool(0.2) {
            t.volumes.pop();
        }
        if rng.gen_bool(0.2) && t.volume("e").is_none() {
            t.volumes.push(random_volume(rng, "e"));
        }
        t.volumes.reverse();
        t
    }

    #[test]
    fn diff_apply_round_trips_on_random_tables() {
        let mut rng = StdRng::seed_from_u64(0x5317c4);
        for i in 0..400 {
            let old = random_table(&mut rng, i);
            let new = if i % 2 == 0 {
                mutate(&mut rng, &old)
            } else {
                random_table(&mut rng, i + 1)
            };
            let cs = MappingTable::diff(&old, &new);
            let applied = old.apply(&cs).unwrap();
            let mut want = new.normalized();
            want.epoch = old.epoch + 1;
            assert_eq!(applied, want, "round trip {i}:\n{cs}");
            assert!(MappingTable::diff(&old, &old).is_empty());
            // The affected ranges are exactly the blocks whose home changes.
            for c in &cs.volumes {
                let VolumeChange::Modified(d) = c else {
                    continue;
                };
                let (o, n) = (old.volume(&d.name).unwrap(), new.volume(&d.name).unwrap());
                let (mut os, mut ns): (Vec<&Extent>, Vec<&Extent>) =
                    (o.extents.iter().collect(), n.extents.iter().collect());
                os.sort();
                ns.sort();
                for lba in 0..o.blocks.max(n.blocks) + 2 {
                    let moved = home_of(o, &os, lba) != home_of(n, &ns, lba);
                    let listed = d.affected.iter().any(|r| r.contains(lba));
                    assert_eq!(moved, listed, "table {i} volume {} lba {lba}", d.name);
                }
            }
            // The changeset survives TOML-free transport as JSON.
            let json = serde_json::to_string(&cs).unwrap();
            assert_eq!(serde_json::from_str::<Changeset>(&json).unwrap(), cs);
        }
    }
}
