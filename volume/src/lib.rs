//! Virtual volumes: the virtualization layer of switchyard.
//!
//! This crate owns three things, one module each:
//!
//! - [`table`]: the mapping table as data — volumes made of extents on back-end LUs —
//!   with validation, an admin-readable `Display`, and `diff`/`apply` (a [`Changeset`]
//!   names the virtual ranges a remap must quiesce).
//! - [`volume`]: [`VirtualVolume`], a [`blockdev::BlockStore`] over one resolved volume:
//!   I/O is split at extent boundaries and sent to the back-ends.
//! - [`live`]: [`LiveVolume`], a volume whose table can be swapped while I/O runs: every
//!   I/O is tagged with the epoch of the table it ran under, and [`RangeHolds`] hold and
//!   drain just the ranges a change touches. This is the node-local half of the remap
//!   protocol in DESIGN.md; the cluster coordinator drives it.
//!
//! It depends on `blockdev` only; it knows nothing about SCSI, iSCSI or the cluster.
#![forbid(unsafe_code)]

pub mod live;
pub mod range;
pub mod table;
pub mod volume;

pub use live::{
    DrainError, HeldTooLong, HoldGuard, Inflight, LiveVolume, OwnedInflight, RangeHolds, RemapError,
};
pub use range::BlockRange;
pub use table::{
    ApplyError, BackendCatalog, BackendInfo, Changeset, Extent, ExtentChange, HeaderChange,
    HolePolicy, HomeRole, HomeUse, MappingTable, Mirror, TableError, ValidationErrors,
    VolumeChange, VolumeDef, VolumeDiff, VolumeHeader,
};
pub use volume::{Registry, VirtualVolume};
