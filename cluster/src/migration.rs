//! Online migrations in the replicated state: what is being moved where, and how far it
//! got (DESIGN.md, "Online migration").
//!
//! A migration moves the virtual blocks `vstart..vstart+blocks` of a volume from their
//! home on back-end LU A (`from`) to LU B (`to`). The **progress map is the mapping
//! table itself**: a chunk that has been copied is mapped to B with A as its mirror
//! (reads from B, writes to both, so A stays complete); a chunk that has not is mapped
//! to A alone; the chunk being copied is the range the active remap holds. Each window's
//! copy and switch is one cluster remap, so every checkpoint is committed together with
//! the table it describes, and a restarted or new leader resumes from the table: the
//! window in flight simply counts as not copied.
//!
//! The record here carries the request, the state the admin sees
//! (`Running → Finishing → Done`, `Paused`, `Aborting → Aborted`, `Failed`) and counters.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use volume::{BlockRange, Extent, Mirror, VolumeDef};

use crate::NodeId;

/// A migration's id: unique in the cluster, never reused.
pub type MigrationId = u64;

/// Finished migrations kept for the admin to look at.
pub const MIGRATION_HISTORY: usize = 32;

/// Unfinished migrations allowed at once (each may hold one window at a time; windows
/// of different migrations take turns).
pub const MAX_ACTIVE_MIGRATIONS: usize = 4;

/// A run of blocks on one back-end LU.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LuHome {
    /// Back-end LU id (a key of the back-end registry).
    pub backend: String,
    /// First LBA on it.
    pub bstart: u64,
}

impl fmt::Display for LuHome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.backend, self.bstart)
    }
}

/// Who copies the data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyEngine {
    /// EXTENDED COPY on the array when A and B are LUs of one array that accepts it,
    /// otherwise the nodes.
    #[default]
    Auto,
    /// Always the nodes (read A, write B).
    Node,
}

/// What the admin asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationSpec {
    pub volume: String,
    /// First virtual block moved.
    pub vstart: u64,
    /// Blocks moved.
    pub blocks: u64,
    /// Where they live now (the whole range, contiguous).
    pub from: LuHome,
    /// Where they go.
    pub to: LuHome,
    /// Blocks per window: the range one remap holds while it is copied.
    pub window_blocks: u64,
    /// Copy rate cap, MiB/s (0: none).
    pub max_rate_mib_s: u32,
    /// Copy rate floor, MiB/s: the pace the copy keeps however busy hosts are.
    pub min_rate_mib_s: u32,
    /// UNMAP the range on A once B is the only home.
    pub release_source: bool,
    #[serde(default)]
    pub engine: CopyEngine,
}

/// Where a migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationState {
    /// Windows are being copied (by the leader, one remap each).
    Running,
    /// No window is started; copied chunks stay mirrored (writes go to both homes).
    Paused,
    /// Every chunk is copied; a remap makes B the only home.
    Finishing,
    /// A remap makes A the only home again.
    Aborting,
    /// B is the only home.
    Done,
    /// A is the only home; the migration is over.
    Aborted,
    /// Cannot go on (the table no longer has the shape the migration left it in).
    Failed,
}

impl MigrationState {
    /// Over: nothing more happens.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            MigrationState::Done | MigrationState::Aborted | MigrationState::Failed
        )
    }

    /// Whether an admin or the driver may move a migration from `self` to `to`.
    pub fn can_become(self, to: MigrationState) -> bool {
        use MigrationState::*;
        matches!(
            (self, to),
            (Running, Paused | Finishing | Aborting | Failed)
                | (Paused, Running | Aborting | Failed)
                | (Finishing, Done | Failed)
                | (Aborting, Aborted | Failed)
        )
    }
}

impl fmt::Display for MigrationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            MigrationState::Running => "running",
            MigrationState::Paused => "paused",
            MigrationState::Finishing => "finishing",
            MigrationState::Aborting => "aborting",
            MigrationState::Done => "done",
            MigrationState::Aborted => "aborted",
            MigrationState::Failed => "failed",
        };
        f.write_str(s)
    }
}

/// One migration, as every node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationRecord {
    pub id: MigrationId,
    pub spec: MigrationSpec,
    pub state: MigrationState,
    /// Why it is paused, failed or was aborted (the last copy error, the admin).
    pub reason: Option<String>,
    pub requested_by: NodeId,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Blocks copied so far (as of the last committed window).
    pub copied_blocks: u64,
    /// Of those, blocks the array copied (EXTENDED COPY).
    pub offloaded_blocks: u64,
    /// Windows committed.
    pub windows: u64,
    /// Failed window attempts in a row (reset by a committed window).
    pub failures: u32,
}

/// Counters a driver reports after a window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationProgress {
    pub copied_blocks: u64,
    /// Blocks this window added to `offloaded_blocks`.
    pub offloaded_delta: u64,
    /// A committed window (true) or a failed attempt (false, with `error`).
    pub window_done: bool,
    pub error: Option<String>,
}

/// The migrations part of the cluster state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migrations {
    pub records: BTreeMap<MigrationId, MigrationRecord>,
    pub next_id: MigrationId,
}

impl Migrations {
    /// The unfinished migrations.
    pub fn active(&self) -> impl Iterator<Item = &MigrationRecord> {
        self.records.values().filter(|m| !m.state.is_final())
    }

    /// Record a new migration (checked against the other unfinished ones).
    pub fn start(
        &mut self,
        spec: &MigrationSpec,
        by: NodeId,
        at_ms: u64,
    ) -> Result<MigrationId, String> {
        if spec.blocks == 0 || spec.window_blocks == 0 {
            return Err("a migration needs a non-empty range and window".into());
        }
        if self.active().count() >= MAX_ACTIVE_MIGRATIONS {
            return Err(format!(
                "{MAX_ACTIVE_MIGRATIONS} migrations are unfinished; wait for one to end"
            ));
        }
        let end = |s: u64| s.saturating_add(spec.blocks);
        for m in self.active() {
            let o = &m.spec;
            let oend = |s: u64| s.saturating_add(o.blocks);
            if o.volume == spec.volume
                && spec.vstart < oend(o.vstart)
                && o.vstart < end(spec.vstart)
            {
                return Err(format!(
                    "migration {} already moves blocks {}..{} of volume {}",
                    m.id,
                    o.vstart,
                    oend(o.vstart),
                    o.volume
                ));
            }
            if o.to.backend == spec.to.backend
                && spec.to.bstart < oend(o.to.bstart)
                && o.to.bstart < end(spec.to.bstart)
            {
                return Err(format!(
                    "migration {} already copies to blocks {}..{} of {}",
                    m.id,
                    o.to.bstart,
                    oend(o.to.bstart),
                    o.to.backend
                ));
            }
        }
        let id = self.next_id.max(1);
        self.next_id = id + 1;
        self.records.insert(
            id,
            MigrationRecord {
                id,
                spec: spec.clone(),
                state: MigrationState::Running,
                reason: None,
                requested_by: by,
                created_ms: at_ms,
                updated_ms: at_ms,
                copied_blocks: 0,
                offloaded_blocks: 0,
                windows: 0,
                failures: 0,
            },
        );
        self.trim();
        Ok(id)
    }

    fn get_mut(&mut self, id: MigrationId) -> Result<&mut MigrationRecord, String> {
        self.records
            .get_mut(&id)
            .ok_or_else(|| format!("there is no migration {id}"))
    }

    /// Move migration `id` to `to` (checked).
    pub fn set_state(
        &mut self,
        id: MigrationId,
        to: MigrationState,
        reason: Option<String>,
        at_ms: u64,
    ) -> Result<(), String> {
        let m = self.get_mut(id)?;
        if m.state == to {
            return Ok(());
        }
        if !m.state.can_become(to) {
            return Err(format!(
                "migration {id} is {}; it cannot become {to}",
                m.state
            ));
        }
        m.state = to;
        if reason.is_some() || to == MigrationState::Running {
            m.reason = reason;
        }
        if to == MigrationState::Running {
            m.failures = 0;
        }
        m.updated_ms = at_ms;
        if to.is_final() {
            self.trim();
        }
        Ok(())
    }

    /// Record a window's outcome.
    pub fn progress(
        &mut self,
        id: MigrationId,
        p: &MigrationProgress,
        at_ms: u64,
    ) -> Result<(), String> {
        let m = self.get_mut(id)?;
        if m.state.is_final() {
            return Err(format!("migration {id} is {}", m.state));
        }
        m.copied_blocks = p.copied_blocks.min(m.spec.blocks);
        m.offloaded_blocks = m.offloaded_blocks.saturating_add(p.offloaded_delta);
        if p.window_done {
            m.windows += 1;
            m.failures = 0;
        } else {
            m.failures = m.failures.saturating_add(1);
        }
        if p.error.is_some() {
            m.reason = p.error.clone();
        }
        m.updated_ms = at_ms;
        Ok(())
    }

    /// Keep every unfinished migration and the last [`MIGRATION_HISTORY`] finished ones.
    fn trim(&mut self) {
        let finished: Vec<MigrationId> = self
            .records
            .values()
            .filter(|m| m.state.is_final())
            .map(|m| m.id)
            .collect();
        let drop = finished.len().saturating_sub(MIGRATION_HISTORY);
        for id in finished.into_iter().take(drop) {
            self.records.remove(&id);
        }
    }
}

/// Where a run of a migration's blocks lives now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkHome {
    /// On A only: not copied.
    Source,
    /// On B, mirrored to A: copied.
    Copied,
    /// On B only: finished.
    Target,
}

impl MigrationSpec {
    /// The virtual blocks moved.
    pub fn vrange(&self) -> BlockRange {
        BlockRange::at(self.vstart, self.blocks)
    }

    /// `def`'s mapping of the migrated range as runs of [`ChunkHome`], in order. Fails
    /// when some block is mapped anywhere else (an admin remapped it meanwhile): then
    /// the migration cannot go on.
    pub fn layout(&self, def: &VolumeDef) -> Result<Vec<(BlockRange, ChunkHome)>, String> {
        let r = self.vrange();
        if def.name != self.volume || r.end > def.blocks {
            return Err(format!(
                "volume {} no longer has blocks {}..{}",
                self.volume, r.start, r.end
            ));
        }
        let mut ex: Vec<&Extent> = def
            .extents
            .iter()
            .filter(|e| e.vrange().overlaps(&r))
            .collect();
        ex.sort_by_key(|e| e.vstart);
        let mut out: Vec<(BlockRange, ChunkHome)> = Vec::new();
        let mut at = r.start;
        for e in ex {
            if e.vstart > at {
                break;
            }
            let run = BlockRange::new(at, e.vrange().end.min(r.end));
            let off = |home_start: u64| home_start + (run.start - e.vstart);
            let rel = run.start - r.start;
            let on = |h: &LuHome, backend: &str, bstart: u64| {
                h.backend == backend && bstart == h.bstart + rel
            };
            let home = match &e.mirror {
                None if on(&self.from, &e.backend, off(e.bstart)) => ChunkHome::Source,
                None if on(&self.to, &e.backend, off(e.bstart)) => ChunkHome::Target,
                Some(m)
                    if on(&self.to, &e.backend, off(e.bstart))
                        && on(&self.from, &m.backend, off(m.bstart)) =>
                {
                    ChunkHome::Copied
                }
                _ => break,
            };
            match out.last_mut() {
                Some((last, h)) if *h == home => last.end = run.end,
                _ => out.push((run, home)),
            }
            at = run.end;
        }
        if at < r.end {
            return Err(format!(
                "blocks {at}.. of volume {} are no longer on {} or {} where the migration left them",
                self.volume, self.from, self.to
            ));
        }
        Ok(out)
    }

    /// `def` with the blocks `run` (inside the migrated range) mapped as `home` says;
    /// adjacent extents with contiguous homes are merged.
    pub fn remapped(&self, def: &VolumeDef, run: BlockRange, home: ChunkHome) -> VolumeDef {
        let rel = run.start.saturating_sub(self.vstart);
        let at = |h: &LuHome| h.bstart + rel;
        let new = Extent {
            vstart: run.start,
            blocks: run.len(),
            backend: match home {
                ChunkHome::Source => self.from.backend.clone(),
                _ => self.to.backend.clone(),
            },
            bstart: match home {
                ChunkHome::Source => at(&self.from),
                _ => at(&self.to),
            },
            mirror: (home == ChunkHome::Copied).then(|| Mirror {
                backend: self.from.backend.clone(),
                bstart: at(&self.from),
            }),
        };
        let mut out = def.clone();
        out.extents = splice(&def.extents, new);
        out
    }
}

/// `extents` with `new`'s virtual range cut out of every extent and `new` put there,
/// sorted, adjacent extents with contiguous homes merged.
fn splice(extents: &[Extent], new: Extent) -> Vec<Extent> {
    let r = new.vrange();
    let shifted = |e: &Extent, vstart: u64, vend: u64| Extent {
        vstart,
        blocks: vend - vstart,
        backend: e.backend.clone(),
        bstart: e.bstart + (vstart - e.vstart),
        mirror: e.mirror.as_ref().map(|m| Mirror {
            backend: m.backend.clone(),
            bstart: m.bstart + (vstart - e.vstart),
        }),
    };
    let mut out: Vec<Extent> = Vec::new();
    for e in extents {
        let er = e.vrange();
        if !er.overlaps(&r) {
            out.push(e.clone());
            continue;
        }
        if er.start < r.start {
            out.push(shifted(e, er.start, r.start));
        }
        if er.end > r.end {
            out.push(shifted(e, r.end, er.end));
        }
    }
    out.push(new);
    out.sort();
    let mut merged: Vec<Extent> = Vec::with_capacity(out.len());
    for e in out {
        if let Some(last) = merged.last_mut() {
            let follows = |a: u64, b: u64| a + last.blocks == b;
            let mirrors_follow = match (&last.mirror, &e.mirror) {
                (None, None) => true,
                (Some(a), Some(b)) => a.backend == b.backend && follows(a.bstart, b.bstart),
                _ => false,
            };
            if last.vrange().end == e.vstart
                && last.backend == e.backend
                && follows(last.bstart, e.bstart)
                && mirrors_follow
            {
                last.blocks += e.blocks;
                continue;
            }
        }
        merged.push(e);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(volume: &str, vstart: u64, blocks: u64, to: &str, tstart: u64) -> MigrationSpec {
        MigrationSpec {
            volume: volume.into(),
            vstart,
            blocks,
            from: LuHome {
                backend: "a".into(),
                bstart: vstart,
            },
            to: LuHome {
                backend: to.into(),
                bstart: tstart,
            },
            window_blocks: 128,
            max_rate_mib_s: 0,
            min_rate_mib_s: 0,
            release_source: false,
            engine: CopyEngine::Auto,
        }
    }

    #[test]
    fn overlapping_migrations_are_refused() {
        let mut m = Migrations::default();
        let a = m.start(&spec("v", 0, 1000, "b", 0), 1, 10).unwrap();
        assert_eq!(a, 1);
        let e = m.start(&spec("v", 999, 10, "c", 0), 1, 11).unwrap_err();
        assert!(e.contains("migration 1 already moves"), "{e}");
        let e = m.start(&spec("w", 0, 10, "b", 990), 1, 11).unwrap_err();
        assert!(e.contains("already copies to"), "{e}");
        // Disjoint in both: fine; once the first is over its ranges are free again.
        assert_eq!(m.start(&spec("v", 1000, 10, "b", 1000), 1, 12).unwrap(), 2);
        m.set_state(a, MigrationState::Aborting, Some("admin".into()), 13)
            .unwrap();
        m.set_state(a, MigrationState::Aborted, None, 14).unwrap();
        assert_eq!(m.start(&spec("v", 0, 10, "b", 0), 1, 15).unwrap(), 3);
        assert_eq!(m.records[&a].reason.as_deref(), Some("admin"));
    }

    #[test]
    fn transitions_are_checked() {
        let mut m = Migrations::default();
        let id = m.start(&spec("v", 0, 100, "b", 0), 1, 0).unwrap();
        m.set_state(id, MigrationState::Paused, Some("copy error".into()), 1)
            .unwrap();
        let e = m
            .set_state(id, MigrationState::Finishing, None, 2)
            .unwrap_err();
        assert!(e.contains("paused; it cannot become finishing"), "{e}");
        m.set_state(id, MigrationState::Running, None, 3).unwrap();
        assert_eq!(m.records[&id].reason, None);
        m.set_state(id, MigrationState::Finishing, None, 4).unwrap();
        assert!(m.set_state(id, MigrationState::Aborting, None, 5).is_err());
        m.set_state(id, MigrationState::Done, None, 6).unwrap();
        assert!(m
            .progress(id, &MigrationProgress::default(), 7)
            .unwrap_err()
            .contains("done"));
    }

    #[test]
    fn progress_counts_windows_and_failures() {
        let mut m = Migrations::default();
        let id = m.start(&spec("v", 0, 100, "b", 0), 1, 0).unwrap();
        let fail = MigrationProgress {
            copied_blocks: 0,
            offloaded_delta: 0,
            window_done: false,
            error: Some("I/O error".into()),
        };
        m.progress(id, &fail, 1).unwrap();
        m.progress(id, &fail, 2).unwrap();
        assert_eq!(m.records[&id].failures, 2);
        let ok = MigrationProgress {
            copied_blocks: 500,
            offloaded_delta: 40,
            window_done: true,
            error: None,
        };
        m.progress(id, &ok, 3).unwrap();
        let r = &m.records[&id];
        assert_eq!(
            (r.failures, r.windows, r.copied_blocks, r.offloaded_blocks),
            (0, 1, 100, 40)
        );
    }

    #[test]
    fn history_is_bounded_and_limits_hold() {
        let mut m = Migrations::default();
        for i in 0..(MIGRATION_HISTORY as u64 + 10) {
            let id = m.start(&spec("v", i * 10, 10, "b", i * 10), 1, i).unwrap();
            m.set_state(id, MigrationState::Aborting, None, i).unwrap();
            m.set_state(id, MigrationState::Aborted, None, i).unwrap();
        }
        assert_eq!(m.records.len(), MIGRATION_HISTORY);
        for i in 0..MAX_ACTIVE_MIGRATIONS as u64 {
            m.start(&spec("w", i * 10, 10, "c", i * 10), 1, 0).unwrap();
        }
        assert!(m
            .start(&spec("w", 9000, 10, "c", 9000), 1, 0)
            .unwrap_err()
            .contains("unfinished"));
        assert!(m.start(&spec("w", 0, 0, "c", 0), 1, 0).is_err());
    }

    fn vol(extents: Vec<Extent>) -> VolumeDef {
        VolumeDef {
            name: "v".into(),
            wwn: "naa.6001405000000001".into(),
            block_size: 512,
            blocks: 1000,
            holes: Default::default(),
            extents,
        }
    }

    fn ext(vstart: u64, blocks: u64, backend: &str, bstart: u64) -> Extent {
        Extent {
            vstart,
            blocks,
            backend: backend.into(),
            bstart,
            mirror: None,
        }
    }

    #[test]
    fn windows_walk_the_range_and_merge() {
        // Blocks 100..900 of v move from a@100 to b@5000; 0..100 and 900.. stay on a.
        let s = MigrationSpec {
            from: LuHome {
                backend: "a".into(),
                bstart: 100,
            },
            ..spec("v", 100, 800, "b", 5000)
        };
        let v0 = vol(vec![ext(0, 1000, "a", 0)]);
        assert_eq!(
            s.layout(&v0).unwrap(),
            vec![(BlockRange::new(100, 900), ChunkHome::Source)]
        );
        let v1 = s.remapped(&v0, BlockRange::new(100, 300), ChunkHome::Copied);
        let v2 = s.remapped(&v1, BlockRange::new(300, 500), ChunkHome::Copied);
        assert_eq!(
            s.layout(&v2).unwrap(),
            vec![
                (BlockRange::new(100, 500), ChunkHome::Copied),
                (BlockRange::new(500, 900), ChunkHome::Source)
            ]
        );
        // Copied windows merged into one mirrored extent with contiguous homes.
        let copied = v2.extents.iter().find(|e| e.vstart == 100).unwrap();
        assert_eq!(
            (copied.blocks, copied.backend.as_str(), copied.bstart),
            (400, "b", 5000)
        );
        assert_eq!(
            copied.mirror,
            Some(Mirror {
                backend: "a".into(),
                bstart: 100
            })
        );
        assert_eq!(v2.extents.len(), 3);
        // Abort: everything back on a, as one extent again.
        let back = s.remapped(&v2, s.vrange(), ChunkHome::Source);
        assert_eq!(back.extents, vec![ext(0, 1000, "a", 0)]);
        // Finish: b only.
        let done = s.remapped(
            &s.remapped(&v2, BlockRange::new(500, 900), ChunkHome::Copied),
            s.vrange(),
            ChunkHome::Target,
        );
        assert_eq!(
            done.extents,
            vec![
                ext(0, 100, "a", 0),
                ext(100, 800, "b", 5000),
                ext(900, 100, "a", 900)
            ]
        );
        assert_eq!(
            s.layout(&done).unwrap(),
            vec![(BlockRange::new(100, 900), ChunkHome::Target)]
        );
    }

    #[test]
    fn layout_refuses_a_range_remapped_elsewhere() {
        let s = spec("v", 0, 1000, "b", 0);
        let moved = vol(vec![ext(0, 500, "a", 0), ext(500, 500, "c", 0)]);
        let e = s.layout(&moved).unwrap_err();
        assert!(e.contains("blocks 500.. of volume v"), "{e}");
        let hole = vol(vec![ext(0, 500, "a", 0)]);
        assert!(s.layout(&hole).is_err());
        let shifted = vol(vec![ext(0, 1000, "a", 1)]);
        assert!(s.layout(&shifted).is_err());
        let small = VolumeDef {
            blocks: 10,
            ..vol(vec![])
        };
        assert!(s.layout(&small).unwrap_err().contains("no longer has"));
    }
}
