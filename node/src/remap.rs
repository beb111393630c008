//! The cluster-wide online remap (DESIGN.md, "The remap protocol"): any node accepts
//! the admin's request and records it in the replicated change log; the leader's
//! **driver** walks it through its phases; every data node's **participant** does its
//! part and acknowledges. Each transition is a replicated command, so a new leader
//! resumes exactly where the old one stopped (`ChangeRecord::recovery`).
//! Acknowledgements go to the leader directly (`ClusterNode::ack_direct`) and are
//! committed with the transition that needs them, so no consensus round per node
//! happens while ranges are held; a participant whose direct acknowledgement fails
//! proposes it as `AckChange`, and sends it again while the phase waits (a new leader
//! has not seen it).
//!
//! ```text
//! phase      participant (every data node)                 driver (leader) moves on when
//! Proposed   -                                             at once -> Staged
//! Staged     stage the new table beside the live one, ack  all acked -> Quiescing
//! Quiescing  hold the affected ranges, drain them, ack     all acked -> Switched (commit)
//!            (drain timeout: propose the retry edge)       retry edge -> Staged, at most N times, then Failed
//! Switched   swap the staged table in (ranges still held)  all acked -> tell every node to
//!            (release when the leader says all switched)   release (RPC), then -> Resumed
//! Resumed    release the hold if not yet (held I/O runs,   all acked -> Done
//!            new table)
//! ```
//!
//! Once every participant has acknowledged `switched` nothing can roll the change back
//! (only a failed switch does, before its acknowledgement), so the leader lets every
//! node release its hold at once and commits `resumed` afterwards; a node that misses
//! the release releases when it applies `resumed`. A hold thus spans one consensus
//! commit (`switched`).
//!
//! Failures:
//! - A node that cannot stage proposes `Failed` with its reason (nothing was held).
//! - A drain that times out resumes I/O on the old table and proposes the retry edge.
//! - A switch that fails proposes `RolledBack` (applies the inverse changeset as a new
//!   epoch); every node that had switched switches back while it still holds.
//! - A node that does not answer within the phase timeout: before the commit point the
//!   change fails (nothing changed); at or after it, the driver waits until the node has
//!   been silent for longer than its lease plus the back-end command timeout (by then it
//!   serves no I/O and its last back-end write has landed or failed), then **excludes**
//!   it, which fences it: it serves nothing until it has caught up and an admin
//!   activates it again.
//! - **Local lease**: a participant whose lease runs out while it holds ranges fences
//!   its changing volumes — held and new I/O there fail with NOT READY / ASYMMETRIC
//!   ACCESS STATE TRANSITION, which hosts retry through another node — drops what it
//!   staged and releases the hold. It never lets held I/O run against a table the
//!   cluster may have replaced. It unfences once it is in contact again and at the
//!   table's epoch.
//! - The leader dies: the next leader's driver finds the change in the log and goes on
//!   (acks already given count; participants re-do idempotent steps).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::BlockStore as _;
use cluster::{ChangeId, ChangeRecord, Cluster, ClusterNode, ClusterState, Command, NodeId, Phase};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use volume::{BlockRange, HoldGuard, LiveVolume, MappingTable, Registry, VolumeChange};

use crate::served::{Served, ServedVolume};

/// Remap timing.
#[derive(Debug, Clone)]
pub struct RemapOpts {
    /// How long a node may take to drain one attempt; well below host SCSI timeouts.
    pub drain_timeout: Duration,
    /// How long the driver waits for every node's acknowledgement of a phase.
    pub phase_timeout: Duration,
    /// Drain attempts before the change fails.
    pub max_retries: u32,
    /// The member lease (see `clustered::lease`).
    pub lease: Duration,
    /// The longest a back-end command can take (the `[[backend]] timeout_secs` maximum).
    pub backend_timeout: Duration,
}

impl Default for RemapOpts {
    fn default() -> Self {
        RemapOpts {
            drain_timeout: Duration::from_secs(5),
            phase_timeout: Duration::from_secs(10),
            max_retries: 3,
            lease: Duration::from_secs(3),
            backend_timeout: Duration::from_secs(15),
        }
    }
}

/// The node's remap timing: `[management] drain_timeout_ms` (default 5 s) per drain
/// attempt, a phase timeout of twice that plus 5 s, the member lease, and the longest
/// `[[backend]] timeout_secs`.
pub fn opts(cfg: &crate::config::Config, lease: Duration) -> RemapOpts {
    let d = RemapOpts::default();
    let drain = cfg
        .management
        .as_ref()
        .and_then(|m| m.drain_timeout_ms)
        .map(Duration::from_millis)
        .unwrap_or(d.drain_timeout);
    RemapOpts {
        drain_timeout: drain,
        phase_timeout: drain * 2 + Duration::from_secs(5),
        max_retries: d.max_retries,
        lease,
        backend_timeout: cfg
            .backends
            .iter()
            .map(|b| Duration::from_secs(b.timeout_secs))
            .max()
            .unwrap_or(Duration::ZERO),
    }
}

/// The pause before a drain is retried, times the retry number.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);
/// How long a participant waits for the leader to use a direct acknowledgement before
/// it sends it again.
const ACK_RESEND: Duration = Duration::from_millis(300);
/// How long a direct acknowledgement may take before the participant proposes it
/// through the cluster instead.
const ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the leader waits for a participant to take an early release.
const RELEASE_TIMEOUT: Duration = Duration::from_millis(500);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A volume this node serves, with what must learn about a size change.
/// What this node is doing for the active change.
#[derive(Default)]
struct Local {
    change: Option<ChangeId>,
    /// Volumes staged for `change` (name -> affected ranges).
    staged: BTreeMap<String, Vec<BlockRange>>,
    /// Holds on the affected ranges, with when they began.
    holds: Vec<(String, HoldGuard)>,
    held_since: Option<Instant>,
    /// Volumes fenced by this node (lease lost mid-change, or excluded).
    fenced: BTreeSet<String>,
    /// The last acknowledgement sent directly to the leader: change, phase, round
    /// (drain retries), when. Not in the replicated state until the leader moves the
    /// change on; sent again if that takes long (the leader may have changed).
    sent: Option<(ChangeId, Phase, u32, Instant)>,
    /// The change whose new table this node has switched to.
    switched: Option<ChangeId>,
}

/// The participant and the driver of one node.
pub struct Remapper {
    node: Arc<ClusterNode>,
    me: NodeId,
    volumes: Arc<Served>,
    registry: Registry,
    offload: crate::moves::Offload,
    opts: RemapOpts,
    local: Mutex<Local>,
    journal: Mutex<Option<Arc<mgmt::Journal>>>,
    /// Volumes, exports and zoning created online (kept in line between changes).
    catalog: Option<Arc<crate::catalog::Catalog>>,
}

impl Remapper {
    pub fn new(
        node: Arc<ClusterNode>,
        volumes: Arc<Served>,
        registry: Registry,
        offload: crate::moves::Offload,
        opts: RemapOpts,
        journal: Option<Arc<mgmt::Journal>>,
        catalog: Option<Arc<crate::catalog::Catalog>>,
    ) -> Arc<Remapper> {
        let me = node.id();
        Arc::new(Remapper {
            node,
            me,
            volumes,
            registry,
            offload,
            opts,
            local: Mutex::new(Local::default()),
            journal: Mutex::new(journal),
            catalog,
        })
    }

    /// Where hold times go (the management API's journal, once it runs).
    pub fn set_journal(&self, j: Arc<mgmt::Journal>) {
        *self.journal.lock() = Some(j);
    }

    /// Run participant and driver until `shutdown`.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        self.node.set_release_handler(Arc::new(move |id| {
            if let Some(r) = weak.upgrade() {
                r.released_by_leader(id);
            }
        }));
        let me = self.clone();
        tokio::spawn(async move {
            let mut events = me.node.subscribe();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                    ev = events.recv() => if let Err(tokio::sync::broadcast::error::RecvError::Closed) = ev {
                        return;
                    },
                    _ = me.node.ack_arrived() => {}
                }
                me.participate().await;
                if me.node.leader() == Some(me.me) {
                    me.drive().await;
                }
            }
        })
    }

    fn lease_ok(&self) -> bool {
        self.node
            .leader_contact()
            .is_some_and(|c| c <= self.opts.lease)
    }

    async fn propose(&self, cmd: Command) -> bool {
        match self.node.propose(cmd).await {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!("remap: proposal not committed: {e}");
                false
            }
        }
    }

    /// Acknowledge `phase` of change `id`: directly to the leader (it commits the
    /// acknowledgements with the next transition: no consensus round per node while
    /// ranges are held), or, when that fails, as a replicated `AckChange`.
    async fn ack(&self, id: ChangeId, phase: Phase, round: u32) {
        fail::fail_point!("remap::ack", |_| ());
        let at_ms = now_ms();
        match self
            .node
            .ack_direct(id, phase, round, at_ms, ACK_TIMEOUT)
            .await
        {
            Ok(()) => self.local.lock().sent = Some((id, phase, round, Instant::now())),
            Err(e) => {
                tracing::debug!(change = id, %phase, "direct acknowledgement failed ({e}); proposing it");
                self.propose(Command::AckChange {
                    id,
                    node: self.me,
                    phase,
                    at_ms,
                })
                .await;
            }
        }
    }

    // ---------------------------------------------------------------- participant

    /// Bring this node in line with the change log; idempotent.
    async fn participate(&self) {
        let st = self.node.state();
        if !self.lease_ok() {
            self.lease_lost(&st);
            return;
        }
        let me_fenced = st
            .nodes
            .get(&self.me)
            .is_some_and(|n| matches!(n.health, cluster::Health::Fenced { .. }));
        let active = st.active().cloned();
        match active {
            Some(rec)
                if rec.participants.contains(&self.me) && !rec.excluded.contains_key(&self.me) =>
            {
                self.take_part(&st, &rec).await
            }
            _ => {
                // No change for this node: finish what a finished one left, catch up
                // with the table, and lift a local fence once at the table's epoch.
                let last = self.local.lock().change;
                if let Some(id) = last {
                    let rec = st.changes.get(&id).cloned();
                    self.finish(&st, rec.as_ref());
                }
                self.catch_up(&st, me_fenced);
                if let (Some(c), None) = (&self.catalog, st.active_change) {
                    c.sync(&st);
                }
            }
        }
    }

    async fn take_part(&self, st: &ClusterState, rec: &ChangeRecord) {
        let previous = self.local.lock().change.filter(|&id| id != rec.id);
        if let Some(id) = previous {
            // The previous change ended and this one began between two looks: finish
            // it first (a node that was switched back by a rollback must switch while
            // it still holds, before anything is released).
            self.finish(st, st.changes.get(&id));
        }
        {
            let mut l = self.local.lock();
            if l.change != Some(rec.id) {
                l.staged.clear();
                l.holds.clear();
                l.held_since = None;
                l.change = Some(rec.id);
            }
        }
        let acked = rec.state.acks().is_some_and(|a| a.contains(&self.me));
        let (phase, round) = (rec.phase(), rec.retries);
        if !acked && phase.takes_acks() {
            let sent = self
                .local
                .lock()
                .sent
                .filter(|&(c, p, r, _)| (c, p, r) == (rec.id, phase, round))
                .map(|s| s.3);
            if let Some(at) = sent {
                // Done here and told the leader; say it again if it waits too long.
                if at.elapsed() >= ACK_RESEND {
                    self.ack(rec.id, phase, round).await;
                }
                return;
            }
        }
        if !acked {
            // Test faults: this node dies as it reaches a phase.
            match rec.phase() {
                Phase::Staged => {
                    fail::fail_point!("remap::participant::staged", |_| std::process::abort())
                }
                Phase::Quiescing => {
                    fail::fail_point!("remap::participant::quiescing", |_| std::process::abort())
                }
                Phase::Switched => {
                    fail::fail_point!("remap::participant::switched", |_| std::process::abort())
                }
                Phase::Resumed => {
                    fail::fail_point!("remap::participant::resumed", |_| std::process::abort())
                }
                _ => {}
            }
        }
        match rec.phase() {
            Phase::Proposed => {}
            Phase::Staged => {
                // The retry edge comes back here: resume I/O on the old table.
                self.release_holds(rec.id);
                if !acked {
                    match self.stage(st, rec) {
                        Ok(()) => self.ack(rec.id, Phase::Staged, round).await,
                        Err(e) => {
                            tracing::error!(change = rec.id, "cannot stage: {e}");
                            self.propose(Command::AdvanceChange {
                                id: rec.id,
                                to: Phase::Failed,
                                reason: Some(format!(
                                    "node {} cannot stage the new table: {e}",
                                    self.me
                                )),
                                at_ms: now_ms(),
                                acks: Vec::new(),
                            })
                            .await;
                        }
                    }
                }
            }
            Phase::Quiescing if !acked => {
                if self.local.lock().staged.is_empty() {
                    // Restarted mid-change, or the stage was lost: stage again.
                    if let Err(e) = self.stage(st, rec) {
                        tracing::error!(change = rec.id, "cannot stage: {e}");
                        return;
                    }
                }
                self.hold();
                match self.drain().await {
                    Ok(()) => self.ack(rec.id, Phase::Quiescing, round).await,
                    Err(e) => {
                        tracing::warn!(
                            change = rec.id,
                            "drain failed: {e}; resuming I/O on the old table"
                        );
                        self.release_holds(rec.id);
                        self.propose(Command::AdvanceChange {
                            id: rec.id,
                            to: Phase::Staged,
                            reason: Some(format!("node {}: {e}", self.me)),
                            at_ms: now_ms(),
                            acks: Vec::new(),
                        })
                        .await;
                    }
                }
            }
            Phase::Switched if !acked => match self.switch(st) {
                Ok(()) => {
                    self.local.lock().switched = Some(rec.id);
                    self.ack(rec.id, Phase::Switched, round).await
                }
                Err(e) => {
                    tracing::error!(
                        change = rec.id,
                        "switch failed: {e}; rolling the change back"
                    );
                    self.propose(Command::AdvanceChange {
                        id: rec.id,
                        to: Phase::RolledBack,
                        reason: Some(format!("the switch failed on node {}: {e}", self.me)),
                        at_ms: now_ms(),
                        acks: Vec::new(),
                    })
                    .await;
                }
            },
            Phase::Resumed if !acked => {
                // Make sure the switch happened here (a restarted node, a retried ack).
                if let Err(e) = self.switch(st) {
                    tracing::error!(change = rec.id, "cannot reach the table's epoch: {e}");
                    return;
                }
                self.release_holds(rec.id);
                self.ack(rec.id, Phase::Resumed, round).await;
            }
            _ => {}
        }
    }

    /// The volumes the change modifies, that this node serves, with their new
    /// definitions from `table`.
    fn changed<'a>(
        &'a self,
        rec: &ChangeRecord,
        table: &'a MappingTable,
    ) -> Vec<(Arc<ServedVolume>, &'a volume::VolumeDef)> {
        rec.changeset
            .volumes
            .iter()
            .filter_map(|c| match c {
                VolumeChange::Modified(d) => {
                    let sv = self.volumes.get(&d.name)?;
                    Some((sv, table.volume(&d.name)?))
                }
                _ => None,
            })
            .collect()
    }

    fn stage(&self, st: &ClusterState, rec: &ChangeRecord) -> Result<(), String> {
        fail::fail_point!("remap::stage", |_| Err(
            "fault injected at remap::stage".into()
        ));
        let new = st.table.apply(&rec.changeset).map_err(|e| {
            format!(
                "the changeset does not apply to epoch {}: {e}",
                st.table.epoch
            )
        })?;
        let mut staged = BTreeMap::new();
        for (sv, def) in self.changed(rec, &new) {
            let affected = sv
                .live
                .stage(def, &self.registry, new.epoch)
                .map_err(|e| format!("volume {}: {e}", def.name))?;
            staged.insert(def.name.clone(), affected);
        }
        self.local.lock().staged = staged;
        Ok(())
    }

    fn hold(&self) {
        let mut l = self.local.lock();
        if !l.holds.is_empty() {
            return;
        }
        let staged: Vec<(String, Vec<BlockRange>)> = l
            .staged
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // A volume whose change affects no range (a split, another path to the same
        // LU) needs no hold at all.
        for (name, ranges) in staged.into_iter().filter(|(_, r)| !r.is_empty()) {
            if let Some(sv) = self.volumes.get(&name) {
                l.holds.push((name, sv.live.hold(&ranges)));
            }
        }
        if !l.holds.is_empty() {
            l.held_since = Some(Instant::now());
        }
    }

    /// Drain every hold, in short steps so a lost lease is noticed.
    async fn drain(&self) -> Result<(), String> {
        let deadline = Instant::now() + self.opts.drain_timeout;
        // Test fault: `remap::drain=return` behaves as I/O that never drains.
        if fail::eval("remap::drain", |_| ()).is_some() {
            tokio::time::sleep(self.opts.drain_timeout).await;
            return Err(format!(
                "fault injected at remap::drain: the affected ranges did not drain within {} ms",
                self.opts.drain_timeout.as_millis()
            ));
        }
        loop {
            if !self.lease_ok() {
                return Err("lost contact with the leader while draining".into());
            }
            let pending: Vec<(Arc<LiveVolume>, Vec<BlockRange>)> = {
                let l = self.local.lock();
                l.holds
                    .iter()
                    .filter_map(|(n, g)| {
                        let sv = self.volumes.get(n)?;
                        (sv.live.holds().in_flight(g.ranges()) > 0)
                            .then(|| (sv.live.clone(), g.ranges().to_vec()))
                    })
                    .collect()
            };
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let n: usize = pending.iter().map(|(v, r)| v.holds().in_flight(r)).sum();
                return Err(format!(
                    "{n} command(s) still in flight in the affected ranges after {} ms",
                    self.opts.drain_timeout.as_millis()
                ));
            }
            let step = Duration::from_millis(50);
            let done = tokio::task::spawn_blocking(move || {
                pending.iter().all(|(v, r)| v.drain(r, step).is_ok())
            })
            .await
            .unwrap_or(false);
            if done {
                return Ok(());
            }
        }
    }

    /// Make every changed volume run the replicated table's definition.
    fn switch(&self, st: &ClusterState) -> Result<(), String> {
        fail::fail_point!("remap::switch", |_| Err(
            "fault injected at remap::switch".into()
        ));
        let l = self.local.lock();
        for (name, _) in l.staged.iter() {
            let Some(sv) = self.volumes.get(name) else {
                continue;
            };
            if sv.live.epoch() >= st.table.epoch {
                continue;
            }
            let before = sv.live.current().num_blocks();
            sv.live
                .switch()
                .map_err(|e| format!("volume {name}: {e}"))?;
            if sv.live.current().num_blocks() != before {
                sv.capacity_changed();
            }
        }
        Ok(())
    }

    fn release_holds(&self, id: ChangeId) {
        let mut l = self.local.lock();
        if l.holds.is_empty() {
            return;
        }
        l.holds.clear();
        if let Some(t) = l.held_since.take() {
            let held = t.elapsed();
            tracing::info!(
                change = id,
                held_ms = held.as_millis() as u64,
                "released the hold"
            );
            if let Some(j) = self.journal.lock().as_ref() {
                j.record_hold(held);
            }
        }
    }

    /// The change this node worked on is finished (or gone): leave nothing behind.
    fn finish(&self, st: &ClusterState, rec: Option<&ChangeRecord>) {
        let Some(id) = self.local.lock().change else {
            return;
        };
        match rec.map(|r| r.phase()) {
            Some(Phase::Done) => {
                // Switched and resumed everywhere; a node that missed the end switches
                // now (its ranges are still held, so nothing ran on the old table).
                if let Err(e) = self.switch(st) {
                    tracing::error!(
                        change = id,
                        "cannot switch to the table's epoch: {e}; fencing the volume until it can"
                    );
                    self.fence_changing();
                }
            }
            _ => {
                // Rolled back or failed. Before the commit point: drop the staged table.
                // After it (RolledBack from Switched): the table is the inverse, at a
                // newer epoch; `catch_up` switches to it while the hold is still on.
                for name in self.local.lock().staged.keys() {
                    if let Some(sv) = self.volumes.get(name) {
                        sv.live.rollback();
                    }
                }
                if let Err(e) = self.catch_up_volumes(st) {
                    tracing::error!(
                        change = id,
                        "cannot switch back to the table: {e}; fencing the volume until it can"
                    );
                    self.fence_changing();
                }
            }
        }
        self.release_holds(id);
        let mut l = self.local.lock();
        l.staged.clear();
        l.change = None;
    }

    /// Fence the volumes of the change this node holds (held and new I/O there fail
    /// over to other nodes) until `catch_up` has them at the table's epoch.
    fn fence_changing(&self) {
        let mut l = self.local.lock();
        let names: Vec<String> = l
            .staged
            .keys()
            .cloned()
            .chain(l.holds.iter().map(|(n, _)| n.clone()))
            .collect();
        for name in names {
            if let Some(sv) = self.volumes.get(&name) {
                sv.live.set_fenced(true);
                l.fenced.insert(name);
            }
        }
    }

    /// Switch every served volume whose definition differs from the table's (a node
    /// that was excluded, fenced, or restarted mid-change). Its ranges are held (or it
    /// is fenced), so no I/O runs on the old table meanwhile.
    fn catch_up_volumes(&self, st: &ClusterState) -> Result<(), String> {
        for (name, sv) in self.volumes.all() {
            let Some(def) = st.table.volume(&name) else {
                continue;
            };
            let live = sv.live.current();
            if live.epoch() >= st.table.epoch || live.def() == def {
                continue;
            }
            let all = [BlockRange::at(0, live.num_blocks().max(def.blocks))];
            let hold = sv.live.hold(&all);
            hold.drain(self.opts.drain_timeout)
                .map_err(|e| format!("volume {name}: {e}"))?;
            sv.live
                .stage(def, &self.registry, st.table.epoch)
                .map_err(|e| format!("volume {name}: {e}"))?;
            let before = live.num_blocks();
            sv.live
                .switch()
                .map_err(|e| format!("volume {name}: {e}"))?;
            if def.blocks != before {
                sv.capacity_changed();
            }
            tracing::info!(volume = %name, epoch = st.table.epoch, "caught up with the cluster's table");
        }
        Ok(())
    }

    fn catch_up(&self, st: &ClusterState, me_fenced: bool) {
        if let Err(e) = self.catch_up_volumes(st) {
            tracing::warn!("catching up with the table: {e}");
            return;
        }
        if me_fenced {
            return;
        }
        let fenced: Vec<String> = std::mem::take(&mut self.local.lock().fenced)
            .into_iter()
            .collect();
        for name in fenced {
            if let Some(sv) = self.volumes.get(&name) {
                sv.live.set_fenced(false);
                tracing::info!(volume = %name, "serving again: in contact and at the table's epoch");
            }
        }
    }

    /// No word from a leader within the lease: fence what is changing, drop the
    /// staged tables and release the holds (held I/O fails over to other nodes).
    fn lease_lost(&self, _st: &ClusterState) {
        let mut l = self.local.lock();
        if l.holds.is_empty() && l.staged.is_empty() {
            return;
        }
        let names: Vec<String> = l.staged.keys().cloned().collect();
        for name in &names {
            if let Some(sv) = self.volumes.get(name) {
                sv.live.set_fenced(true);
                sv.live.rollback();
                l.fenced.insert(name.clone());
            }
        }
        tracing::warn!(
            volumes = ?names,
            "lost the leader during a remap: fenced the changing volumes (I/O fails over to other nodes) and released the hold"
        );
        l.holds.clear();
        l.held_since = None;
        l.staged.clear();
        l.change = None;
    }

    // --------------------------------------------------------------------- driver

    /// Copy the blocks whose home the change moves (leader, during the hold).
    async fn copy_moved(&self, st: &ClusterState, rec: &ChangeRecord) -> Result<(), String> {
        let plans = Self::plans(st, rec)?;
        if plans.is_empty() {
            return Ok(());
        }
        let reg = self.registry.clone();
        // A migration may ask for copies through the nodes only.
        let node_only = rec
            .migration
            .and_then(|m| st.migrations.records.get(&m))
            .is_some_and(|m| m.spec.engine == cluster::CopyEngine::Node);
        let offload = (!node_only).then(|| self.offload.clone());
        let id = rec.id;
        tokio::task::spawn_blocking(move || {
            for (name, bs, mv) in plans {
                let total: u64 = mv.iter().map(|m| m.blocks).sum();
                let started = Instant::now();
                crate::moves::copy(&reg, offload.as_ref(), &mv, bs, |_, _| {})
                    .map_err(|e| format!("volume {name}: {e}"))?;
                tracing::info!(change = id, volume = %name, blocks = total, ms = started.elapsed().as_millis() as u64, "copied the moved blocks");
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Flush the destinations of the blocks the change moves before every node holds
    /// (see `moves::flush_destinations`). Best effort: the copy reports failures.
    async fn flush_before_hold(&self, st: &ClusterState, rec: &ChangeRecord) {
        let Ok(plans) = Self::plans(st, rec) else {
            return;
        };
        if plans.is_empty() {
            return;
        }
        let reg = self.registry.clone();
        let id = rec.id;
        let _ = tokio::task::spawn_blocking(move || {
            for (_, _, mv) in plans {
                if let Err(e) = crate::moves::flush_destinations(&reg, &mv) {
                    tracing::debug!(
                        change = id,
                        "flushing the destinations before the hold: {e}"
                    );
                }
            }
        })
        .await;
    }

    /// Per volume the change modifies: its name, block size and the moves of its data.
    fn plans(
        st: &ClusterState,
        rec: &ChangeRecord,
    ) -> Result<Vec<(String, u32, Vec<crate::moves::Move>)>, String> {
        let new = st.table.apply(&rec.changeset).map_err(|e| e.to_string())?;
        let mut plans = Vec::new();
        for c in &rec.changeset.volumes {
            let VolumeChange::Modified(d) = c else {
                continue;
            };
            let (Some(old), Some(newdef)) = (st.table.volume(&d.name), new.volume(&d.name)) else {
                continue;
            };
            // Exactly the ranges every node holds (the changeset's): anything else
            // keeps its data where it is.
            let mv = crate::moves::moves(old, newdef, &d.affected);
            if let Some(why) = crate::moves::crossing_moves(&mv) {
                return Err(why);
            }
            if !mv.is_empty() {
                plans.push((d.name.clone(), old.block_size, mv));
            }
        }
        Ok(plans)
    }

    /// Leader: tell every participant of `rec` (all switched) to release its hold.
    async fn release_early(&self, rec: &ChangeRecord) {
        let sends: Vec<_> = rec
            .participants
            .iter()
            .map(|&n| {
                let node = self.node.clone();
                let id = rec.id;
                tokio::spawn(async move { node.send_release(n, id, RELEASE_TIMEOUT).await })
            })
            .collect();
        for s in sends {
            let _ = s.await;
        }
    }

    /// Participant: the leader says every participant of change `id` has switched;
    /// release the hold if this node has switched to it too.
    fn released_by_leader(&self, id: ChangeId) {
        let ours = {
            let l = self.local.lock();
            l.change == Some(id) && l.switched == Some(id)
        };
        if ours {
            self.release_holds(id);
        }
    }

    /// The leader moves the active change on when its phase is complete.
    async fn drive(&self) {
        let st = self.node.state();
        let Some(rec) = st.active().cloned() else {
            return;
        };
        let entered = rec
            .timeline
            .iter()
            .rev()
            .find(|t| t.node.is_none())
            .map(|t| t.at_ms)
            .unwrap_or(0);
        let waited = Duration::from_millis(now_ms().saturating_sub(entered));
        let phase = rec.phase();
        // Acknowledgements sent to this leader directly count, and ride on the
        // transition that needs them.
        let direct = self.node.direct_acks(rec.id, phase, rec.retries);
        let missing: Vec<NodeId> = rec
            .missing_acks()
            .into_iter()
            .filter(|n| !direct.contains_key(n))
            .collect();
        let advance = |to: Phase, reason: Option<String>| Command::AdvanceChange {
            id: rec.id,
            to,
            reason,
            at_ms: now_ms(),
            acks: direct.iter().map(|(n, at)| (*n, *at)).collect(),
        };
        match phase {
            Phase::Proposed => {
                fail::fail_point!("remap::driver::proposed", |_| std::process::abort());
                self.propose(advance(Phase::Staged, None)).await;
            }
            Phase::Staged if rec.retries > self.opts.max_retries => {
                self.propose(advance(
                    Phase::Failed,
                    Some(format!(
                        "the affected ranges did not drain on every node in {} attempts; I/O was resumed on the old table each time; retry when I/O is lower",
                        rec.retries
                    )),
                ))
                .await;
            }
            // A retry waits a little longer each time before holding again.
            Phase::Staged if missing.is_empty() && waited < RETRY_BACKOFF * rec.retries => {}
            Phase::Staged | Phase::Quiescing | Phase::Switched | Phase::Resumed
                if missing.is_empty() =>
            {
                let next = match phase {
                    Phase::Staged => {
                        fail::fail_point!("remap::driver::staged", |_| std::process::abort());
                        if rec.copy_data {
                            self.flush_before_hold(&st, &rec).await;
                        }
                        Phase::Quiescing
                    }
                    Phase::Quiescing => {
                        fail::fail_point!("remap::driver::quiesced", |_| std::process::abort());
                        if rec.copy_data {
                            // Every node holds and has drained the ranges: the old homes
                            // cannot change. A new leader repeats this (idempotent).
                            if let Err(e) = self.copy_moved(&st, &rec).await {
                                self.propose(advance(
                                    Phase::Failed,
                                    Some(format!("copying the moved blocks failed on the leader: {e}; the old table stays in force and its data is intact")),
                                ))
                                .await;
                                return;
                            }
                        }
                        Phase::Switched
                    }
                    Phase::Switched => {
                        fail::fail_point!("remap::driver::switched", |_| std::process::abort());
                        // Every participant has switched, so nothing can roll the change
                        // back any more (only a failed switch does): tell them to release
                        // their holds now, then commit `resumed` (which releases the
                        // holds of anyone who did not hear it).
                        self.release_early(&rec).await;
                        Phase::Resumed
                    }
                    _ => {
                        fail::fail_point!("remap::driver::resumed", |_| std::process::abort());
                        Phase::Done
                    }
                };
                self.propose(advance(next, None)).await;
            }
            Phase::Staged | Phase::Quiescing | Phase::Switched | Phase::Resumed
                if waited > self.opts.phase_timeout =>
            {
                // A node that is in contact but does not answer is stuck: before the
                // commit point the change fails (nothing changed); after it the node
                // is excluded (it applies its fence and stops serving). A node out of
                // contact is excluded once its lease and its last back-end command are
                // certainly over, in any phase: a dead node must not block changes.
                let fence_after =
                    self.opts.lease + self.opts.backend_timeout + Duration::from_millis(500);
                let contact: BTreeMap<NodeId, Option<u64>> = self
                    .node
                    .members()
                    .into_iter()
                    .map(|m| (m.id, m.last_contact_ms))
                    .collect();
                let committed = matches!(phase, Phase::Switched | Phase::Resumed);
                let mut stuck = Vec::new();
                for n in missing {
                    let since = contact
                        .get(&n)
                        .copied()
                        .flatten()
                        .map(Duration::from_millis);
                    let in_contact = since.is_some_and(|d| d <= self.opts.lease);
                    let gone = since.is_none_or(|d| d > fence_after);
                    if in_contact && !committed {
                        stuck.push(n);
                    } else if in_contact || gone {
                        self.propose(Command::ExcludeFromChange {
                            id: rec.id,
                            node: n,
                            reason: if in_contact {
                                format!(
                                    "in contact but no acknowledgement of {phase} within {} ms",
                                    self.opts.phase_timeout.as_millis()
                                )
                            } else {
                                format!("no contact for more than {} ms", fence_after.as_millis())
                            },
                            at_ms: now_ms(),
                        })
                        .await;
                    }
                }
                if !stuck.is_empty() {
                    self.propose(advance(
                        Phase::Failed,
                        Some(format!(
                            "nodes {stuck:?} did not acknowledge {phase} within {} ms; nothing was changed",
                            self.opts.phase_timeout.as_millis()
                        )),
                    ))
                    .await;
                }
            }
            _ => {}
        }
    }
}
