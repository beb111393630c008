//! The management side of migrations: turning a [`MigrateRequest`] into a checked
//! [`MigrationSpec`] and starting it, pausing, resuming and aborting, and a
//! [`MigrationRecord`] plus the table into the [`MigrationView`] the CLI, API and
//! console show.

use cluster::{
    ChunkHome, Cluster as _, ClusterNode, ClusterState, Command, CopyEngine, LuHome,
    MigrationRecord, MigrationSpec, MigrationState, Outcome,
};
use mgmt::model::{ChunkRun, MigrateRequest, MigrationAction, MigrationView};
use mgmt::{ApiError, Journal, StatusCode};
use tokio::runtime::Handle;
use volume::{BlockRange, Registry};

/// The error for a proposal the cluster did not commit.
fn not_recorded(what: &str, e: cluster::ClusterError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the cluster did not record {what}: {e}"),
        "check `switchyard nodes` for the leader and unreachable members",
    )
}

/// Migration `id` as this member sees it.
fn view_of(c: &ClusterNode, id: u64) -> Result<MigrationView, ApiError> {
    let st = c.state();
    st.migrations
        .records
        .get(&id)
        .map(|m| view(&st, m))
        .ok_or_else(|| {
            ApiError::not_found(
                format!("there is no migration {id}"),
                "`switchyard migrations` lists them (finished ones are kept for a while)",
            )
        })
}

/// Check `req` and record the migration in the cluster (the leader starts copying).
/// Blocks on `rt`: call it off the runtime.
pub fn start(
    c: &ClusterNode,
    rt: &Handle,
    registry: &Registry,
    journal: &Journal,
    volume: &str,
    req: &MigrateRequest,
) -> Result<MigrationView, ApiError> {
    let spec = spec(&c.state(), registry, volume, req)?;
    let answer = rt
        .block_on(c.propose(Command::StartMigration {
            spec: spec.clone(),
            requested_by: c.id(),
            at_ms: mgmt::model::now_ms(),
        }))
        .map_err(|e| not_recorded("the migration", e))?;
    let id = match answer.outcome {
        Outcome::MigrationStarted(id) => id,
        Outcome::Refused(why) => {
            return Err(ApiError::conflict(
                format!("the cluster refused the migration: {why}"),
                "look at `switchyard migrations` and the volume, then retry",
            ))
        }
        other => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("unexpected answer to StartMigration: {other:?}"),
                "",
            ))
        }
    };
    journal.event(
        "info",
        "migration",
        format!(
            "migration {id}: volume {volume} blocks {}+{} from {} to {}",
            spec.vstart, spec.blocks, spec.from, spec.to
        ),
    );
    view_of(c, id)
}

/// Every migration the cluster remembers.
pub fn list(c: &ClusterNode) -> Vec<MigrationView> {
    let st = c.state();
    st.migrations
        .records
        .values()
        .map(|m| view(&st, m))
        .collect()
}

/// Pause, resume or abort migration `id`. Blocks on `rt`: call it off the runtime.
pub fn act(
    c: &ClusterNode,
    rt: &Handle,
    journal: &Journal,
    id: u64,
    action: MigrationAction,
) -> Result<MigrationView, ApiError> {
    use MigrationState as S;
    let state = c.state();
    let m = state.migrations.records.get(&id).ok_or_else(|| {
        ApiError::not_found(
            format!("there is no migration {id}"),
            "`switchyard migrations` lists them",
        )
    })?;
    let (to, reason) = match action {
        MigrationAction::Pause => (S::Paused, Some("paused by an admin".to_string())),
        MigrationAction::Resume => (S::Running, None),
        MigrationAction::Abort => (S::Aborting, Some("aborted by an admin".to_string())),
    };
    if !m.state.can_become(to) && m.state != to {
        return Err(ApiError::conflict(
            format!("migration {id} is {}; it cannot become {to}", m.state),
            match m.state {
                S::Finishing => "it is making the destination the only home; wait for it",
                _ => "only running or paused migrations can be paused, resumed or aborted",
            },
        ));
    }
    rt.block_on(c.propose(Command::SetMigrationState {
        id,
        state: to,
        reason,
        at_ms: mgmt::model::now_ms(),
    }))
    .map_err(|e| not_recorded("it", e))?;
    journal.event("info", "migration", format!("migration {id}: {to} (admin)"));
    view_of(c, id)
}

/// Default window: 16 MiB.
const DEFAULT_WINDOW_MIB: u32 = 16;
/// Largest window: what may be copied while hosts wait for that range.
const MAX_WINDOW_MIB: u32 = 64;
const DEFAULT_MAX_RATE: u32 = 200;
const DEFAULT_MIN_RATE: u32 = 20;

/// Check `req` against the cluster state and this node's back-ends.
pub fn spec(
    st: &ClusterState,
    registry: &Registry,
    volume: &str,
    req: &MigrateRequest,
) -> Result<MigrationSpec, ApiError> {
    let def = st.table.volume(volume).ok_or_else(|| {
        ApiError::not_found(
            format!("no volume named {volume:?} in the cluster's table"),
            "GET /api/v1/volumes lists the volumes",
        )
    })?;
    let bad = |what: String, hint: &str| ApiError::bad_request(what, hint.to_string());
    let vstart = req.vstart.unwrap_or(0);
    let ext = def
        .extents
        .iter()
        .find(|e| e.vrange().contains(vstart))
        .ok_or_else(|| {
            bad(
                format!("block {vstart} of volume {volume} is not mapped to any back-end"),
                "give a vstart inside an extent (`switchyard volumes` shows them)",
            )
        })?;
    if let Some(m) = &ext.mirror {
        return Err(ApiError::conflict(
            format!(
                "blocks of volume {volume} at {vstart} are being migrated already (mirrored to {})",
                m.backend
            ),
            "wait for that migration to end (`switchyard migrations`)",
        ));
    }
    let blocks = req.blocks.unwrap_or(ext.vrange().end - vstart);
    if blocks == 0 || vstart.saturating_add(blocks) > ext.vrange().end {
        return Err(bad(
            format!(
                "blocks {vstart}+{blocks} of volume {volume} are not all in one extent (the one at {} ends at {})",
                ext.vstart,
                ext.vrange().end
            ),
            "migrate each extent on its own",
        ));
    }
    let to = registry.get(&req.to).ok_or_else(|| {
        bad(
            format!("back-end LU {:?} is not open on this node", req.to),
            "`switchyard backends` lists the back-end LUs (ids like array/lun1)",
        )
    })?;
    let at = req.at.unwrap_or(0);
    if to.block_size() != def.block_size {
        return Err(bad(
            format!(
                "{} has {}-byte blocks; volume {volume} has {}-byte blocks",
                req.to,
                to.block_size(),
                def.block_size
            ),
            "pick a back-end LU with the volume's block size",
        ));
    }
    if at.saturating_add(blocks) > to.num_blocks() {
        return Err(bad(
            format!(
                "{} has {} blocks; blocks {at}+{blocks} do not fit",
                req.to,
                to.num_blocks()
            ),
            "pick a smaller range or another LU",
        ));
    }
    let window_mib = req.window_mib.unwrap_or(DEFAULT_WINDOW_MIB);
    if window_mib == 0 || window_mib > MAX_WINDOW_MIB {
        return Err(bad(
            format!("window_mib {window_mib} is not 1..={MAX_WINDOW_MIB}"),
            "each window is held (hosts wait for it) while it is copied; keep it small",
        ));
    }
    let engine = match req.engine.as_deref() {
        None | Some("auto") => CopyEngine::Auto,
        Some("node") => CopyEngine::Node,
        Some(other) => {
            return Err(bad(
                format!("engine {other:?} is not auto or node"),
                "auto: EXTENDED COPY on the array when it can, else the nodes",
            ))
        }
    };
    let rel = vstart - ext.vstart;
    Ok(MigrationSpec {
        volume: volume.to_string(),
        vstart,
        blocks,
        from: LuHome {
            backend: ext.backend.clone(),
            bstart: ext.bstart + rel,
        },
        to: LuHome {
            backend: req.to.clone(),
            bstart: at,
        },
        window_blocks: (u64::from(window_mib) << 20) / u64::from(def.block_size),
        max_rate_mib_s: req.max_rate_mib_s.unwrap_or(DEFAULT_MAX_RATE),
        min_rate_mib_s: req.min_rate_mib_s.unwrap_or(DEFAULT_MIN_RATE),
        release_source: req.release_source.unwrap_or(false),
        engine,
    })
}

/// What the admin sees of migration `m`.
pub fn view(st: &ClusterState, m: &MigrationRecord) -> MigrationView {
    let s = &m.spec;
    let def = st.table.volume(&s.volume);
    let bs = def.map_or(512, |d| d.block_size);
    // The window the running change holds, if it is one of this migration's.
    let copying: Vec<BlockRange> = st
        .active()
        .filter(|c| c.migration == Some(m.id))
        .map(|c| c.changeset.affected(&s.volume))
        .unwrap_or_default();
    let mut chunks: Vec<ChunkRun> = Vec::new();
    let mut push = |r: BlockRange, state: &str| {
        if r.is_empty() {
            return;
        }
        match chunks.last_mut() {
            Some(c) if c.state == state && c.vstart + c.blocks == r.start => c.blocks += r.len(),
            _ => chunks.push(ChunkRun {
                vstart: r.start,
                blocks: r.len(),
                state: state.to_string(),
            }),
        }
    };
    if let Some(layout) = def.and_then(|d| s.layout(d).ok()) {
        for (run, home) in layout {
            let state = match home {
                ChunkHome::Source => "not-copied",
                ChunkHome::Copied => "copied",
                ChunkHome::Target => "moved",
            };
            // Cut the run where the held window is.
            let mut at = run.start;
            for w in copying.iter().filter(|w| w.overlaps(&run)) {
                let (ws, we) = (w.start.max(run.start), w.end.min(run.end));
                push(BlockRange::new(at, ws), state);
                push(BlockRange::new(ws, we), "copying");
                at = we;
            }
            push(BlockRange::new(at, run.end), state);
        }
    }
    let copied = if m.state == MigrationState::Done {
        s.blocks
    } else {
        m.copied_blocks
    };
    let end_ms = if m.state.is_final() {
        m.updated_ms
    } else {
        mgmt::model::now_ms()
    };
    let secs = end_ms.saturating_sub(m.created_ms) as f64 / 1000.0;
    let mib = (copied * u64::from(bs)) as f64 / 1048576.0;
    let rate = if secs > 0.0 { mib / secs } else { 0.0 };
    let left = ((s.blocks - copied.min(s.blocks)) * u64::from(bs)) as f64 / 1048576.0;
    let eta_s = (!m.state.is_final() && rate > 0.0).then(|| (left / rate).ceil() as u64);
    MigrationView {
        id: m.id,
        volume: s.volume.clone(),
        vstart: s.vstart,
        blocks: s.blocks,
        block_size: bs,
        from: s.from.to_string(),
        to: s.to.to_string(),
        state: m.state.to_string(),
        reason: m.reason.clone(),
        copied_blocks: copied,
        offloaded_blocks: m.offloaded_blocks,
        percent: if s.blocks == 0 {
            100.0
        } else {
            copied as f64 * 100.0 / s.blocks as f64
        },
        windows: m.windows,
        failures: m.failures,
        rate_mib_s: (rate * 10.0).round() / 10.0,
        eta_s,
        window_blocks: s.window_blocks,
        max_rate_mib_s: s.max_rate_mib_s,
        min_rate_mib_s: s.min_rate_mib_s,
        engine: match s.engine {
            CopyEngine::Auto => "auto",
            CopyEngine::Node => "node",
        }
        .into(),
        created_ms: m.created_ms,
        updated_ms: m.updated_ms,
        chunks,
    }
}
