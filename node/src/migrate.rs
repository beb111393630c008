//! The migration engine (DESIGN.md, "Online migration"): the leader walks every running
//! migration window by window; each window is one cluster remap (`copy_data`) that
//! holds just that window on every node, copies it from A to B — by the array with
//! EXTENDED COPY when both LUs are on one array that accepts it, otherwise through the
//! leader — and switches it to "B, mirrored to A". The mapping table is the progress
//! map (see `cluster::migration`), so a new leader, or this one after a restart, goes on
//! from the first chunk still on A; a window whose remap did not commit is simply not
//! copied.
//!
//! - Reads of a copied chunk go to B, writes to both B and A: A stays complete until the
//!   final switch, so an abort (a remap of the whole range back to A alone) never loses
//!   a write; writes to uncopied chunks go to A; I/O to the window being copied waits
//!   for its short hold. No chunk is ever copied twice, so a write-heavy load cannot
//!   keep the copy from converging.
//! - Pacing: windows start no faster than `max_rate` allows; while hosts are doing I/O
//!   on the volume (as seen by the driving node) the pace drops to a quarter of it, but
//!   never below `min_rate`.
//! - A window that fails (copy error, a node that cannot drain) is retried; after
//!   [`MAX_WINDOW_FAILURES`] in a row the migration pauses with the error.
//! - Finish: a remap makes B the only home, then (optionally) the range on A is
//!   unmapped. Abort: a remap makes A the only home.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{
    ChunkHome, Cluster as _, ClusterNode, ClusterState, Command, MigrationId, MigrationProgress,
    MigrationRecord, MigrationState, NodeId, Outcome, Phase,
};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use volume::{BlockRange, MappingTable, Registry, VolumeDef};

/// Failed window attempts in a row before a migration pauses.
pub const MAX_WINDOW_FAILURES: u32 = 3;
/// How long the driver waits after a failed window before the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often the leader looks at the migrations.
const TICK: Duration = Duration::from_millis(50);

fn now_ms() -> u64 {
    mgmt::model::now_ms()
}

/// Pacing state of one migration on the driving node.
struct Pace {
    /// The next window may start then.
    next_at: Instant,
    /// Host commands on the volume when the last window started.
    host_ops: u64,
}

/// How a change the driver proposed ended.
enum Ended {
    Done,
    Failed(String),
    /// This node is no longer the leader; the next one goes on.
    Lost,
}

/// The leader's migration driver (idle on other nodes).
pub struct Migrator {
    node: Arc<ClusterNode>,
    me: NodeId,
    registry: Registry,
    served: Arc<crate::served::Served>,
    pace: Mutex<BTreeMap<MigrationId, Pace>>,
    last: Mutex<MigrationId>,
}

impl Migrator {
    pub fn new(
        node: Arc<ClusterNode>,
        registry: Registry,
        served: Arc<crate::served::Served>,
    ) -> Arc<Migrator> {
        let me = node.id();
        Arc::new(Migrator {
            node,
            me,
            registry,
            served,
            pace: Mutex::new(BTreeMap::new()),
            last: Mutex::new(0),
        })
    }

    /// Drive migrations while this node leads, until `shutdown`.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(TICK) => {}
                }
                if me.node.leader() == Some(me.me) {
                    me.step().await;
                }
            }
        })
    }

    fn leading(&self) -> bool {
        self.node.leader() == Some(self.me)
    }

    /// One unit of work for one migration (round robin among those that can move).
    async fn step(&self) {
        let st = self.node.state();
        if st.active().is_some() {
            return;
        }
        let live: Vec<&MigrationRecord> = st
            .migrations
            .active()
            .filter(|m| m.state != MigrationState::Paused)
            .collect();
        let last = *self.last.lock();
        let Some(m) = live
            .iter()
            .find(|m| m.id > last)
            .or_else(|| live.first())
            .copied()
        else {
            return;
        };
        *self.last.lock() = m.id;
        let Some(def) = st.table.volume(&m.spec.volume) else {
            self.set_state(
                m.id,
                MigrationState::Failed,
                Some(format!("volume {} is gone", m.spec.volume)),
            )
            .await;
            return;
        };
        let layout = match m.spec.layout(def) {
            Ok(l) => l,
            Err(e) => {
                self.set_state(m.id, MigrationState::Failed, Some(e)).await;
                return;
            }
        };
        let has = |h: ChunkHome| layout.iter().any(|(_, x)| *x == h);
        match m.state {
            MigrationState::Running if has(ChunkHome::Target) => {
                self.set_state(
                    m.id,
                    MigrationState::Failed,
                    Some(
                        "part of the range is on the destination only; someone remapped it".into(),
                    ),
                )
                .await;
            }
            MigrationState::Running => match layout.iter().find(|(_, h)| *h == ChunkHome::Source) {
                Some((run, _)) => self.window(&st, m, def, *run).await,
                None => {
                    self.set_state(m.id, MigrationState::Finishing, None).await;
                }
            },
            MigrationState::Finishing if has(ChunkHome::Source) => {
                self.set_state(
                    m.id,
                    MigrationState::Failed,
                    Some("part of the range is on the source only while finishing; someone remapped it".into()),
                )
                .await;
            }
            MigrationState::Finishing if has(ChunkHome::Copied) => {
                let new = m.spec.remapped(def, m.spec.vrange(), ChunkHome::Target);
                if let Ended::Failed(e) = self.change(&st, m.id, new, false).await {
                    tracing::warn!(migration = m.id, "the final switch failed: {e}; retrying");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
            MigrationState::Finishing => {
                // B is the only home: release A's range if asked, then done.
                let note = if m.spec.release_source {
                    self.release_source(m).await
                } else {
                    None
                };
                self.set_state(m.id, MigrationState::Done, note).await;
                self.pace.lock().remove(&m.id);
            }
            MigrationState::Aborting if has(ChunkHome::Target) => {
                self.set_state(
                    m.id,
                    MigrationState::Failed,
                    Some("cannot abort: part of the range is on the destination only".into()),
                )
                .await;
            }
            MigrationState::Aborting if has(ChunkHome::Copied) => {
                let new = m.spec.remapped(def, m.spec.vrange(), ChunkHome::Source);
                if let Ended::Failed(e) = self.change(&st, m.id, new, false).await {
                    tracing::warn!(
                        migration = m.id,
                        "switching back to the source failed: {e}; retrying"
                    );
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
            MigrationState::Aborting => {
                self.set_state(m.id, MigrationState::Aborted, None).await;
                self.pace.lock().remove(&m.id);
            }
            _ => {}
        }
    }

    /// Copy and switch the next window of `run` (the first run still on A), when the
    /// pace allows.
    async fn window(
        &self,
        st: &ClusterState,
        m: &MigrationRecord,
        def: &VolumeDef,
        run: BlockRange,
    ) {
        let ops = self.served.get(&m.spec.volume).map_or(0, |s| s.stats.ops());
        let now = Instant::now();
        let (due, busy) = {
            let mut p = self.pace.lock();
            let e = p.entry(m.id).or_insert(Pace {
                next_at: now,
                host_ops: ops,
            });
            (now >= e.next_at, ops != e.host_ops)
        };
        if !due {
            return;
        }
        let window = BlockRange::new(run.start, run.end.min(run.start + m.spec.window_blocks));
        let new = m.spec.remapped(def, window, ChunkHome::Copied);
        let offloaded =
            crate::moves::OFFLOADED_COPY_BYTES.load(std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        let bs = u64::from(def.block_size);
        let (progress, pause) = match self.change(st, m.id, new, true).await {
            Ended::Lost => return,
            Ended::Done => {
                let st = self.node.state();
                let copied = st
                    .table
                    .volume(&m.spec.volume)
                    .and_then(|d| m.spec.layout(d).ok())
                    .map_or(m.copied_blocks + window.len(), |l| {
                        l.iter()
                            .filter(|(_, h)| *h != ChunkHome::Source)
                            .map(|(r, _)| r.len())
                            .sum()
                    });
                let delta = crate::moves::OFFLOADED_COPY_BYTES
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .saturating_sub(offloaded)
                    / bs;
                let rate = pace_rate(m.spec.max_rate_mib_s, m.spec.min_rate_mib_s, busy);
                let next_at = rate.map_or(started, |r| {
                    started + Duration::from_secs_f64((window.len() * bs) as f64 / (r * 1048576.0))
                });
                self.pace.lock().insert(
                    m.id,
                    Pace {
                        next_at,
                        host_ops: self.served.get(&m.spec.volume).map_or(0, |s| s.stats.ops()),
                    },
                );
                tracing::info!(
                    migration = m.id,
                    window = %window,
                    ms = started.elapsed().as_millis() as u64,
                    copied,
                    of = m.spec.blocks,
                    offloaded = delta.min(window.len()),
                    busy,
                    "migration window copied and switched"
                );
                (
                    MigrationProgress {
                        copied_blocks: copied,
                        offloaded_delta: delta.min(window.len()),
                        window_done: true,
                        error: None,
                    },
                    None,
                )
            }
            Ended::Failed(e) => {
                let why = format!("window {window}: {e}");
                tracing::warn!(migration = m.id, "{why}");
                self.pace.lock().insert(
                    m.id,
                    Pace {
                        next_at: Instant::now() + RETRY_AFTER,
                        host_ops: ops,
                    },
                );
                let pause = (m.failures + 1 >= MAX_WINDOW_FAILURES).then(|| {
                    format!(
                        "{why} ({MAX_WINDOW_FAILURES} attempts failed); the copied chunks stay \
                         mirrored and the source stays complete; fix the cause, then `switchyard \
                         migrations resume {}` (or abort)",
                        m.id
                    )
                });
                (
                    MigrationProgress {
                        copied_blocks: m.copied_blocks,
                        offloaded_delta: 0,
                        window_done: false,
                        error: Some(why),
                    },
                    pause,
                )
            }
        };
        self.propose(Command::MigrationProgress {
            id: m.id,
            progress,
            at_ms: now_ms(),
        })
        .await;
        if let Some(why) = pause {
            self.set_state(m.id, MigrationState::Paused, Some(why))
                .await;
        }
    }

    /// Propose the remap of `m`'s volume to `new` and wait until it ends.
    async fn change(&self, st: &ClusterState, m: MigrationId, new: VolumeDef, copy: bool) -> Ended {
        let mut table = st.table.clone();
        let Some(v) = table.volumes.iter_mut().find(|v| v.name == new.name) else {
            return Ended::Failed(format!("volume {} is gone", new.name));
        };
        *v = new;
        table.epoch = st.table.epoch + 1;
        if let Err(e) = table.validate_with(&self.registry.catalog()) {
            return Ended::Failed(format!("the next mapping is not valid on this node: {e}"));
        }
        let mut changeset = MappingTable::diff(&st.table, &table);
        if changeset.is_empty() {
            return Ended::Done;
        }
        changeset.base_epoch = st.table.epoch;
        let cid = match self
            .node
            .propose(Command::BeginChange {
                changeset,
                requested_by: self.me,
                at_ms: now_ms(),
                copy_data: copy,
                migration: Some(m),
            })
            .await
        {
            Ok(a) => match a.outcome {
                Outcome::ChangeBegun(id) => id,
                Outcome::Refused(why) => return Ended::Failed(why),
                other => return Ended::Failed(format!("unexpected answer {other:?}")),
            },
            Err(e) => {
                tracing::debug!(migration = m, "window not proposed: {e}");
                return Ended::Lost;
            }
        };
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let st = self.node.state();
            if let Some(rec) = st.changes.get(&cid) {
                match rec.phase() {
                    Phase::Done => return Ended::Done,
                    Phase::Failed | Phase::RolledBack => {
                        let why = match &rec.state {
                            cluster::ChangeState::Failed { reason }
                            | cluster::ChangeState::RolledBack { reason } => reason.clone(),
                            _ => format!("change {cid} failed"),
                        };
                        return Ended::Failed(why);
                    }
                    _ => {}
                }
            }
            if !self.leading() {
                return Ended::Lost;
            }
        }
    }

    async fn set_state(&self, id: MigrationId, state: MigrationState, reason: Option<String>) {
        if let Some(r) = &reason {
            tracing::info!(migration = id, %state, "{r}");
        } else {
            tracing::info!(migration = id, %state, "migration state");
        }
        self.propose(Command::SetMigrationState {
            id,
            state,
            reason,
            at_ms: now_ms(),
        })
        .await;
    }

    async fn propose(&self, cmd: Command) {
        match self.node.propose(cmd).await {
            Ok(a) => {
                if let Outcome::Refused(why) = a.outcome {
                    tracing::warn!("migration: the cluster refused: {why}");
                }
            }
            Err(e) => tracing::debug!("migration: proposal not committed: {e}"),
        }
    }

    /// UNMAP the range on A (B is the only home now). Best effort: returns a note for
    /// the record when it could not.
    async fn release_source(&self, m: &MigrationRecord) -> Option<String> {
        let Some(store) = self.registry.get(&m.spec.from.backend) else {
            return Some(format!(
                "back-end {} is not open on the leader; its blocks were not released",
                m.spec.from.backend
            ));
        };
        let (start, blocks) = (m.spec.from.bstart, m.spec.blocks);
        let r = tokio::task::spawn_blocking(move || store.unmap(start, blocks)).await;
        match r {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!(
                "the source blocks were not released (UNMAP of {blocks} blocks at {start}: {e}); the data is on the destination"
            )),
            Err(e) => Some(format!("releasing the source failed: {e}")),
        }
    }
}

/// The copy rate to pace windows at, MiB/s (`None`: no cap): the cap when hosts are
/// idle; a quarter of it while they are busy, but never below the floor.
fn pace_rate(max: u32, min: u32, busy: bool) -> Option<f64> {
    if max == 0 {
        return None;
    }
    let max = f64::from(max);
    Some(if busy {
        (max / 4.0).max(f64::from(min)).min(max.max(f64::from(min)))
    } else {
        max.max(f64::from(min))
    })
}

#[cfg(test)]
mod tests {
    use super::pace_rate;

    #[test]
    fn pacing_keeps_cap_and_floor() {
        assert_eq!(pace_rate(0, 20, true), None);
        assert_eq!(pace_rate(200, 20, false), Some(200.0));
        assert_eq!(pace_rate(200, 20, true), Some(50.0));
        // The floor wins over the busy quarter, and over a cap set below it.
        assert_eq!(pace_rate(40, 20, true), Some(20.0));
        assert_eq!(pace_rate(10, 20, true), Some(20.0));
        assert_eq!(pace_rate(10, 20, false), Some(20.0));
    }
}
