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

/// Which home of an extent a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HomeRole {
    /// The extent's own back-end blocks (`backend`, `bstart`): reads and writes.
    Primary,
    /// Its [`Mirror`]: writes only.
    Mirror,
}

impl fmt::Display for HomeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HomeRole::Primary => "the extent",
            HomeRole::Mirror => "the mirror of the extent",
        })
    }
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
    /// The extent's blocks on its mirror's back-end, when it has a mirror.
    pub fn mirror_brange(&self) -> Option<BlockRange> {
        self.mirror
            .as_ref()
            .map(|m| BlockRange::at(m.bstart, self.blocks))
    }
    /// Every home of the extent, the primary first: (role, back-end id, first
    /// back-end LBA).
    pub fn homes(&self) -> impl Iterator<Item = (HomeRole, &str, u64)> {
        let primary = (HomeRole::Primary, self.backend.as_str(), self.bstart);
        let mirror = self
            .mirror
            .as_ref()
            .map(|m| (HomeRole::Mirror, m.backend.as_str(), m.bstart));
        std::iter::once(primary).chain(mirror)
    }
}

/// Displays as ` (mirror <back-end> <blocks>)` for a mirrored extent, as nothing
/// otherwise: the suffix both [`Extent`] and [`VolumeDef`] print.
struct MirrorSuffix<'a>(&'a Extent);

impl fmt::Display for MirrorSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.mirror {
            Some(m) => write!(
                f,
                " (mirror {} {})",
                m.backend,
                BlockRange::at(m.bstart, self.0.blocks)
            ),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Extent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} {}{}",
            self.vrange(),
            self.backend,
            self.brange(),
            MirrorSuffix(self)
        )
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
    #[error(
        "volume {volume:?}: {home} at virtual block {vstart} names unknown back-end {backend:?}"
    )]
    UnknownBackend {
        volume: String,
        vstart: u64,
        home: HomeRole,
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
        "volume {volume:?}: {home} at virtual block {vstart} reaches back-end blocks {range} of {backend:?}, which has {backend_blocks} blocks"
    )]
    PastBackendEnd {
        volume: String,
        vstart: u64,
        home: HomeRole,
        backend: String,
        range: BlockRange,
        backend_blocks: u64,
    },
    #[error(
        "volume {volume:?}: the mirror of the extent at virtual block {vstart} shares back-end blocks {range} of {backend:?} with the extent itself; a mirror must be a second copy elsewhere"
    )]
    MirrorOnPrimary {
        volume: String,
        vstart: u64,
        backend: String,
        range: BlockRange,
    },
    #[error("back-end {backend:?} blocks {range} are used twice: by {first} and by {second}")]
    BackendAliased {
        backend: String,
        range: BlockRange,
        first: HomeUse,
        second: HomeUse,
    },
}

/// One use of back-end blocks by a volume, as [`TableError::BackendAliased`] names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeUse {
    /// The volume.
    pub volume: String,
    /// Virtual start of the extent.
    pub vstart: u64,
    /// Whether the blocks are the extent's primary home or its mirror.
    pub home: HomeRole,
}

impl fmt::Display for HomeUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "volume {:?} ({} at virtual block {})",
            self.volume, self.home, self.vstart
        )
    }
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
        let mut mismatched: BTreeSet<&str> = BTreeSet::new();
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
            if let Some(m) = &e.mirror {
                let (r, mr) = (e.brange(), BlockRange::at(m.bstart, e.blocks));
                if m.backend == e.backend && mr.overlaps(&r) {
                    out.push(TableError::MirrorOnPrimary {
                        volume: volume(),
                        vstart: e.vstart,
                        backend: m.backend.clone(),
                        range: BlockRange::new(r.start.max(mr.start), r.end.min(mr.end)),
                    });
                }
            }
            let Some(catalog) = catalog else { continue };
            for (home, backend, bstart) in e.homes() {
                let Some(info) = catalog.get(backend) else {
                    out.push(TableError::UnknownBackend {
                        volume: volume(),
                        vstart: e.vstart,
                        home,
                        backend: backend.to_string(),
                    });
                    continue;
                };
                // Once per back-end, however many extents or mirrors use it.
                if info.block_size != self.block_size && mismatched.insert(backend) {
                    out.push(TableError::BlockSizeMismatch {
                        volume: volume(),
                        backend: backend.to_string(),
                        volume_block_size: self.block_size,
                        backend_block_size: info.block_size,
                    });
                }
                if bstart
                    .checked_add(e.blocks)
                    .is_none_or(|end| end > info.blocks)
                {
                    out.push(TableError::PastBackendEnd {
                        volume: volume(),
                        vstart: e.vstart,
                        home,
                        backend: backend.to_string(),
                        range: BlockRange::at(bstart, e.blocks),
                        backend_blocks: info.blocks,
                    });
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
    /// volume and not overlapping, no back-end blocks used twice (primary and mirror
    /// homes alike, a mirror not on its own extent's blocks). Back-end ids are not
    /// checked; see [`MappingTable::validate_with`].
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        self.check(None)
    }

    /// [`MappingTable::validate`], plus: every back-end id (of extents and of their
    /// mirrors) is known, has the volume's block size, and is large enough for the
    /// extents on it.
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
        aliasing(&self.volumes, &mut out);
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
        MappingTable::diff_by(old, new, &|a, b| a == b)
    }

    /// [`MappingTable::diff`] where `same_lu(a, b)` says whether back-end ids `a` and
    /// `b` reach the same LU: moving an extent to another path to the same LU (same
    /// LBAs) changes the table but affects no range (see [`affected_ranges_by`]).
    pub fn diff_by(
        old: &MappingTable,
        new: &MappingTable,
        same_lu: &dyn Fn(&str, &str) -> bool,
    ) -> Changeset {
        let olds: BTreeMap<&str, &VolumeDef> =
            old.volumes.iter().map(|v| (v.name.as_str(), v)).collect();
        let news: BTreeMap<&str, &VolumeDef> =
            new.volumes.iter().map(|v| (v.name.as_str(), v)).collect();
        let mut volumes = Vec::new();
        for (name, o) in &olds {
            match news.get(name) {
                None => volumes.push(VolumeChange::Removed((*o).clone())),
                Some(n) => {
                    let d = VolumeDiff::between(o, n, same_lu);
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

/// One use of back-end blocks: a home (primary or mirror) of one extent.
#[derive(Clone, Copy)]
struct BlockUse<'a> {
    backend: &'a str,
    range: BlockRange,
    volume: &'a str,
    vstart: u64,
    home: HomeRole,
    /// Which extent: (volume index, extent index). The two homes of one extent share
    /// it; their overlap is [`TableError::MirrorOnPrimary`], reported per volume.
    extent: (usize, usize),
}

impl BlockUse<'_> {
    fn named(&self) -> HomeUse {
        HomeUse {
            volume: self.volume.to_string(),
            vstart: self.vstart,
            home: self.home,
        }
    }
}

/// Report back-end blocks that two extents use (as primary or mirror homes): that
/// would alias data. One error for every use that overlaps an earlier use (by back-end
/// start) of another extent, in O(n log n).
fn aliasing(volumes: &[VolumeDef], out: &mut Vec<TableError>) {
    let mut uses: Vec<BlockUse<'_>> = Vec::new();
    for (vi, v) in volumes.iter().enumerate() {
        for (ei, e) in v.extents.iter().enumerate().filter(|(_, e)| e.blocks > 0) {
            uses.extend(e.homes().map(|(home, backend, bstart)| BlockUse {
                backend,
                range: BlockRange::at(bstart, e.blocks),
                volume: &v.name,
                vstart: e.vstart,
                home,
                extent: (vi, ei),
            }));
        }
    }
    uses.sort_by_key(|u| (u.backend, u.range, u.extent));
    // Among the earlier uses of the current back-end: `reach[0]` reaches furthest, and
    // `reach[1]` furthest among those of another extent than `reach[0]`. So the
    // furthest-reaching earlier use of any extent but `u`'s is one of the two, and `u`
    // (which starts at or after every earlier use) overlaps some use of another extent
    // exactly when it overlaps that one.
    let mut reach: [Option<BlockUse<'_>>; 2] = [None, None];
    for (i, u) in uses.iter().enumerate() {
        if i == 0 || uses[i - 1].backend != u.backend {
            reach = [None, None];
        }
        let other = reach.iter().flatten().find(|r| r.extent != u.extent);
        if let Some(o) = other.filter(|o| o.range.end > u.range.start) {
            out.push(TableError::BackendAliased {
                backend: u.backend.to_string(),
                range: BlockRange::new(u.range.start, o.range.end.min(u.range.end)),
                first: o.named(),
                second: u.named(),
            });
        }
        match reach[0] {
            Some(top) if u.range.end <= top.range.end => {
                if u.extent != top.extent && reach[1].is_none_or(|r| u.range.end > r.range.end) {
                    reach[1] = Some(*u);
                }
            }
            top => {
                if top.is_some_and(|t| t.extent != u.extent) {
                    reach[1] = top;
                }
                reach[0] = Some(*u);
            }
        }
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
    /// The virtual ranges whose block-for-block mapping (back-end and back-end LBA of
    /// the primary home and of the mirror, hole, or past the end) differs between the
    /// two tables, coalesced. Extents that are only split or merged without moving data
    /// (primary and mirror homes both contiguous) affect nothing.
    pub affected: Vec<BlockRange>,
}

/// Where one virtual block resolves to, for comparing two versions of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Home<'a> {
    /// On a back-end: (back-end id, LBA) of the primary home and of the mirror, if
    /// any. A block whose mirror comes, goes or moves changes its mapping too: writes
    /// in flight must not miss (or still reach) the mirror.
    Mapped {
        primary: (&'a str, u64),
        mirror: Option<(&'a str, u64)>,
    },
    Hole(HolePolicy),
    PastEnd,
}

/// Whether two homes hold a block at the same place: equal, or the same LBAs on
/// back-ends that `same_lu` says are one LU.
fn same_home(a: &Home<'_>, b: &Home<'_>, same_lu: &dyn Fn(&str, &str) -> bool) -> bool {
    let at = |x: (&str, u64), y: (&str, u64)| x.1 == y.1 && (x.0 == y.0 || same_lu(x.0, y.0));
    match (a, b) {
        (
            Home::Mapped {
                primary: pa,
                mirror: ma,
            },
            Home::Mapped {
                primary: pb,
                mirror: mb,
            },
        ) => {
            at(*pa, *pb)
                && match (ma, mb) {
                    (None, None) => true,
                    (Some(x), Some(y)) => at(*x, *y),
                    _ => false,
                }
        }
        _ => a == b,
    }
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
            // Wrapping: it never wraps in a valid table, and a diff of an invalid one
            // must not panic.
            let off = lba - e.vstart;
            return Home::Mapped {
                primary: (&e.backend, e.bstart.wrapping_add(off)),
                mirror: e
                    .mirror
                    .as_ref()
                    .map(|m| (m.backend.as_str(), m.bstart.wrapping_add(off))),
            };
        }
    }
    Home::Hole(v.holes)
}

/// The virtual ranges whose mapping differs between two versions of a volume: a block
/// is affected when its primary home or its mirror home differs (see
/// [`VolumeDiff::affected`]).
pub fn affected_ranges(old: &VolumeDef, new: &VolumeDef) -> Vec<BlockRange> {
    affected_ranges_by(old, new, &|a, b| a == b)
}

/// [`affected_ranges`], where `same_lu(a, b)` says whether back-end ids `a` and `b`
/// reach the same LU (two paths to one array LU): a block whose home moves to the same
/// LBA of the same LU through another path keeps its data where it is, so it is not
/// affected and nobody needs to hold it.
pub fn affected_ranges_by(
    old: &VolumeDef,
    new: &VolumeDef,
    same_lu: &dyn Fn(&str, &str) -> bool,
) -> Vec<BlockRange> {
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
        if !same_home(&home_of(old, &os, a), &home_of(new, &ns, a), same_lu) {
            out.push(BlockRange::new(a, b));
        }
    }
    coalesce(out)
}

impl VolumeDiff {
    fn between(
        old: &VolumeDef,
        new: &VolumeDef,
        same_lu: &dyn Fn(&str, &str) -> bool,
    ) -> VolumeDiff {
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
            affected: affected_ranges_by(old, new, same_lu),
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
            // A table that does not validate (an extent past the end) prints too.
            let gap_end = e.vstart.min(self.blocks);
            if gap_end > cur {
                hole(f, cur, gap_end)?;
            }
            writeln!(
                f,
                "  {:<28} {:>12}  {:<20} {}{}",
                e.vrange().to_string(),
                e.blocks,
                e.backend,
                e.brange(),
                MirrorSuffix(e)
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

    fn mirror(backend: &str, bstart: u64) -> Mirror {
        Mirror {
            backend: backend.into(),
            bstart,
        }
    }

    /// [`ext`] with a mirror.
    fn mext(vstart: u64, blocks: u64, backend: &str, bstart: u64, m: Mirror) -> Extent {
        Extent {
            mirror: Some(m),
            ..ext(vstart, blocks, backend, bstart)
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
    fn another_path_to_the_same_lu_affects_nothing() {
        // "a" and "a2" are two paths to one LU; "b" is another LU.
        let same = |x: &str, y: &str| x == y || (x.starts_with('a') && y.starts_with('a'));
        let old = vol("v", 300, vec![ext(0, 100, "a", 0), ext(100, 200, "b", 0)]);
        let path = vol("v", 300, vec![ext(0, 100, "a2", 0), ext(100, 200, "b", 0)]);
        assert!(affected_ranges_by(&old, &path, &same).is_empty());
        assert_eq!(affected_ranges(&old, &path), vec![BlockRange::new(0, 100)]);
        // Same LU, other blocks: the data moves.
        let shifted = vol("v", 300, vec![ext(0, 100, "a2", 1), ext(100, 200, "b", 0)]);
        assert_eq!(
            affected_ranges_by(&old, &shifted, &same),
            vec![BlockRange::new(0, 100)]
        );
        // Mirrors compare the same way; a mirror that comes or goes still counts.
        let m1 = vol(
            "v",
            300,
            vec![
                mext(0, 100, "b", 500, mirror("a", 0)),
                ext(100, 200, "b", 0),
            ],
        );
        let m2 = vol(
            "v",
            300,
            vec![
                mext(0, 100, "b", 500, mirror("a2", 0)),
                ext(100, 200, "b", 0),
            ],
        );
        assert!(affected_ranges_by(&m1, &m2, &same).is_empty());
        assert_eq!(
            affected_ranges_by(&old, &m1, &same),
            vec![BlockRange::new(0, 100)]
        );
        // The changeset still carries the new extents (the table changes), with nothing
        // to quiesce.
        let (mut t0, mut t1) = (MappingTable::new(1), MappingTable::new(1));
        t0.volumes.push(old);
        t1.volumes.push(path);
        let cs = MappingTable::diff_by(&t0, &t1, &same);
        assert!(!cs.is_empty());
        assert!(cs.affected("v").is_empty());
        assert_eq!(t0.apply(&cs).unwrap().volumes, t1.normalized().volumes);
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
                let mut e = ext(cur, len, backend, rng.gen_range(0..4) * 50);
                if rng.gen_bool(0.3) {
                    e.mirror = Some(mirror(["A", "B", "C"][rng.gen_range(0..3)], 1000));
                }
                extents.push(e);
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
                    3 => {
                        e.mirror = match e.mirror {
                            Some(_) => None,
                            None => Some(mirror("A", 700)),
                        }
                    }
                    4 => {
                        if let Some(m) = &mut e.mirror {
                            m.bstart += 1;
                        }
                    }
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

    fn catalog(entries: &[(&str, u32, u64)]) -> BackendCatalog {
        entries
            .iter()
            .map(|&(id, block_size, blocks)| (id.to_string(), BackendInfo { block_size, blocks }))
            .collect()
    }

    fn errors(t: &MappingTable, cat: Option<&BackendCatalog>) -> Vec<TableError> {
        match cat {
            Some(cat) => t.validate_with(cat),
            None => t.validate(),
        }
        .err()
        .map_or_else(Vec::new, |e| e.0)
    }

    #[test]
    fn mirrors_parse_print_and_round_trip() {
        let text = EXAMPLE.replace(
            "bstart = 1048576\n",
            "bstart = 1048576\n\n[volumes.extents.mirror]\nbackend = \"arrayA/lun0\"\nbstart = 2097152\n",
        );
        let t = MappingTable::from_toml(&text).unwrap();
        let e = &t.volumes[0].extents[1];
        assert_eq!(e.mirror, Some(mirror("arrayA/lun0", 2097152)));
        assert_eq!(e.mirror_brange(), Some(BlockRange::new(2097152, 3145728)));
        assert_eq!(
            e.homes().collect::<Vec<_>>(),
            [
                (HomeRole::Primary, "arrayB/lun3", 1048576),
                (HomeRole::Mirror, "arrayA/lun0", 2097152)
            ]
        );
        t.validate().unwrap();
        assert_eq!(MappingTable::from_toml(&t.to_toml()).unwrap(), t);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<MappingTable>(&json).unwrap(), t);
        // Extents without a mirror print no mirror key.
        assert_eq!(t.to_toml().matches("mirror").count(), 1, "{}", t.to_toml());
        assert_eq!(
            e.to_string(),
            "[2097152, 3145728) -> arrayB/lun3 [1048576, 2097152) (mirror arrayA/lun0 [2097152, 3145728))"
        );
        assert_eq!(
            t.volumes[0].extents[0].to_string(),
            "[0, 2097152) -> arrayA/lun0 [0, 2097152)"
        );
        let s = t.to_string();
        assert!(
            s.contains("[1048576, 2097152) (mirror arrayA/lun0 [2097152, 3145728))\n"),
            "{s}"
        );
    }

    #[test]
    fn a_mirror_is_checked_like_a_primary_home() {
        let good = MappingTable {
            epoch: 1,
            volumes: vec![vol(
                "v",
                100,
                vec![
                    mext(0, 60, "x", 0, mirror("y", 40)),
                    mext(60, 40, "x", 60, mirror("y", 0)),
                ],
            )],
        };
        let cat = catalog(&[("x", 512, 100), ("y", 512, 100)]);
        good.validate_with(&cat).unwrap();

        // Unknown back-end: named as the mirror's.
        let cat_no_y = catalog(&[("x", 512, 100)]);
        let errs = errors(&good, Some(&cat_no_y));
        assert_eq!(
            errs,
            [0, 60].map(|vstart| TableError::UnknownBackend {
                volume: "v".into(),
                vstart,
                home: HomeRole::Mirror,
                backend: "y".into(),
            })
        );
        let msg = errs[0].to_string();
        assert!(
            msg.contains(
                "the mirror of the extent at virtual block 0 names unknown back-end \"y\""
            ),
            "{msg}"
        );
        // Too small, and the wrong block size (reported once per back-end).
        let errs = errors(&good, Some(&catalog(&[("x", 512, 100), ("y", 4096, 90)])));
        assert_eq!(
            errs,
            [
                TableError::BlockSizeMismatch {
                    volume: "v".into(),
                    backend: "y".into(),
                    volume_block_size: 512,
                    backend_block_size: 4096,
                },
                TableError::PastBackendEnd {
                    volume: "v".into(),
                    vstart: 0,
                    home: HomeRole::Mirror,
                    backend: "y".into(),
                    range: BlockRange::new(40, 100),
                    backend_blocks: 90,
                },
            ]
        );
        assert!(errs[1]
            .to_string()
            .contains("the mirror of the extent at virtual block 0 reaches back-end blocks [40, 100) of \"y\", which has 90 blocks"));
        // A mirror that would overflow the LBA space is past the end, without a panic.
        let mut huge = good.clone();
        huge.volumes[0].extents[0].mirror = Some(mirror("y", u64::MAX - 5));
        assert!(matches!(
            &errors(&huge, Some(&cat))[..],
            [TableError::PastBackendEnd {
                home: HomeRole::Mirror,
                ..
            }]
        ));
    }

    #[test]
    fn a_mirror_must_not_share_blocks_with_any_home() {
        let one = |extents| MappingTable {
            epoch: 1,
            volumes: vec![vol("v", 100, extents)],
        };
        // On its own primary blocks, exactly or in part.
        for (bstart, range) in [(10, BlockRange::new(10, 30)), (25, BlockRange::new(25, 30))] {
            let t = one(vec![mext(0, 20, "x", 10, mirror("x", bstart))]);
            let errs = errors(&t, None);
            assert_eq!(
                errs,
                [TableError::MirrorOnPrimary {
                    volume: "v".into(),
                    vstart: 0,
                    backend: "x".into(),
                    range,
                }]
            );
            assert!(
                errs[0].to_string().contains("shares back-end blocks"),
                "{}",
                errs[0]
            );
        }
        // Elsewhere on the same back-end is fine.
        one(vec![mext(0, 20, "x", 10, mirror("x", 30))])
            .validate()
            .unwrap();

        // On another extent's primary home.
        let t = one(vec![
            mext(0, 20, "x", 0, mirror("y", 0)),
            ext(20, 20, "y", 15),
        ]);
        let errs = errors(&t, None);
        assert_eq!(
            errs,
            [TableError::BackendAliased {
                backend: "y".into(),
                range: BlockRange::new(15, 20),
                first: HomeUse {
                    volume: "v".into(),
                    vstart: 0,
                    home: HomeRole::Mirror,
                },
                second: HomeUse {
                    volume: "v".into(),
                    vstart: 20,
                    home: HomeRole::Primary,
                },
            }]
        );
        let msg = errs[0].to_string();
        assert!(
            msg.contains("back-end \"y\" blocks [15, 20) are used twice: by volume \"v\" (the mirror of the extent at virtual block 0) and by volume \"v\" (the extent at virtual block 20)"),
            "{msg}"
        );
        // On another volume's mirror.
        let t = MappingTable {
            epoch: 1,
            volumes: vec![
                vol("v", 10, vec![mext(0, 10, "x", 0, mirror("z", 0))]),
                vol("ww", 10, vec![mext(0, 10, "y", 0, mirror("z", 5))]),
            ],
        };
        assert!(matches!(
            &errors(&t, None)[..],
            [TableError::BackendAliased { backend, first, second, .. }]
                if backend == "z" && first.volume == "v" && second.volume == "ww"
        ));
    }

    #[test]
    fn aliasing_is_found_behind_a_longer_use() {
        // The primary home [0, 100) of the first extent reaches past its mirror [10, 20)
        // and still aliases [50, 60) of the second extent.
        let t = MappingTable {
            epoch: 1,
            volumes: vec![vol(
                "v",
                200,
                vec![
                    mext(0, 100, "x", 0, mirror("x", 200)),
                    ext(100, 10, "x", 50),
                ],
            )],
        };
        assert_eq!(
            errors(&t, None),
            [TableError::BackendAliased {
                backend: "x".into(),
                range: BlockRange::new(50, 60),
                first: HomeUse {
                    volume: "v".into(),
                    vstart: 0,
                    home: HomeRole::Primary,
                },
                second: HomeUse {
                    volume: "v".into(),
                    vstart: 100,
                    home: HomeRole::Primary,
                },
            }]
        );
        // An extent whose mirror overlaps its own primary home, both inside a long
        // extent: MirrorOnPrimary for the pair, and each home aliases the long one.
        let t = MappingTable {
            epoch: 1,
            volumes: vec![vol(
                "v",
                210,
                vec![ext(0, 200, "x", 0), mext(200, 10, "x", 10, mirror("x", 15))],
            )],
        };
        let errs = errors(&t, None);
        let alias = |range, home| TableError::BackendAliased {
            backend: "x".into(),
            range,
            first: HomeUse {
                volume: "v".into(),
                vstart: 0,
                home: HomeRole::Primary,
            },
            second: HomeUse {
                volume: "v".into(),
                vstart: 200,
                home,
            },
        };
        assert_eq!(
            errs,
            [
                TableError::MirrorOnPrimary {
                    volume: "v".into(),
                    vstart: 200,
                    backend: "x".into(),
                    range: BlockRange::new(15, 20),
                },
                alias(BlockRange::new(10, 20), HomeRole::Primary),
                alias(BlockRange::new(15, 25), HomeRole::Mirror),
            ]
        );
        // Several extents under one long one: each is reported.
        let t = MappingTable {
            epoch: 1,
            volumes: vec![vol(
                "v",
                200,
                vec![
                    ext(0, 100, "x", 0),
                    ext(100, 10, "x", 10),
                    ext(110, 10, "x", 50),
                ],
            )],
        };
        assert_eq!(errors(&t, None).len(), 2);
    }

    #[test]
    fn a_mirror_only_change_is_a_mapping_change() {
        let table = |e: Extent| MappingTable {
            epoch: 4,
            volumes: vec![vol("v", 100, vec![ext(0, 40, "A", 0), e])],
        };
        let plain = table(ext(40, 60, "B", 0));
        let mirrored = table(mext(40, 60, "B", 0, mirror("A", 40)));
        let moved = table(mext(40, 60, "B", 0, mirror("A", 41)));
        let elsewhere = table(mext(40, 60, "B", 0, mirror("C", 40)));
        for (old, new) in [
            (&plain, &mirrored),
            (&mirrored, &plain),
            (&mirrored, &moved),
            (&mirrored, &elsewhere),
        ] {
            let cs = MappingTable::diff(old, new);
            assert_eq!(cs.affected("v"), [BlockRange::new(40, 100)], "{cs}");
            let Some(VolumeChange::Modified(d)) = cs.volume("v") else {
                panic!("{cs}");
            };
            assert_eq!(d.changed.len(), 1, "{cs}");
            assert!(d.added.is_empty() && d.removed.is_empty(), "{cs}");
            assert_eq!(
                old.apply(&cs).unwrap(),
                MappingTable {
                    epoch: 5,
                    ..new.normalized()
                }
            );
        }
        let text = MappingTable::diff(&plain, &mirrored).to_string();
        assert!(
            text.contains("=>  [40, 100) -> B [0, 60) (mirror A [40, 100))"),
            "{text}"
        );
        assert!(text.contains("quiesce: [40, 100)"), "{text}");
        assert!(MappingTable::diff(&mirrored, &mirrored.clone()).is_empty());
    }

    #[test]
    fn extents_join_only_with_primary_and_mirror_contiguous() {
        let one = |extents| MappingTable {
            epoch: 1,
            volumes: vec![vol("v", 100, extents)],
        };
        let whole = one(vec![mext(0, 100, "B", 0, mirror("A", 0))]);
        let affected = |new: &MappingTable| MappingTable::diff(&whole, new).affected("v");
        // Split with both homes contiguous: nothing moves, either way round.
        let split = one(vec![
            mext(0, 40, "B", 0, mirror("A", 0)),
            mext(40, 60, "B", 40, mirror("A", 40)),
        ]);
        assert!(affected(&split).is_empty());
        assert!(MappingTable::diff(&split, &whole).affected("v").is_empty());
        // The primary contiguous but the mirror not: the second part moves.
        let gap = one(vec![
            mext(0, 40, "B", 0, mirror("A", 0)),
            mext(40, 60, "B", 40, mirror("A", 50)),
        ]);
        assert_eq!(affected(&gap), [BlockRange::new(40, 100)]);
        // The mirror contiguous but the primary not.
        let gap = one(vec![
            mext(0, 40, "B", 0, mirror("A", 0)),
            mext(40, 60, "C", 40, mirror("A", 40)),
        ]);
        assert_eq!(affected(&gap), [BlockRange::new(40, 100)]);
        // One part without a mirror (what a finished chunk of a migration looks like).
        let half = one(vec![
            ext(0, 40, "B", 0),
            mext(40, 60, "B", 40, mirror("A", 40)),
        ]);
        assert_eq!(affected(&half), [BlockRange::new(0, 40)]);
        // Two unmirrored halves join into one unmirrored extent.
        let plain = one(vec![ext(0, 100, "B", 0)]);
        let halves = one(vec![ext(0, 40, "B", 0), ext(40, 60, "B", 40)]);
        assert!(MappingTable::diff(&plain, &halves).affected("v").is_empty());
    }
}
