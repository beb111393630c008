//! The node as a cluster member: start the replicated cluster state, wait until this
//! node has caught up with it, seed the mapping table, and keep the things every node
//! must answer identically — target port groups (ALUA) and persistent reservations —
//! in step with it.
//!
//! - **Identity.** Every node serves a volume under the volume's WWN from the
//!   replicated table, so INQUIRY and VPD answers are byte-identical through every
//!   node. Relative target port ids are unique across the cluster:
//!   `node id × 16 + portal index + 1`; each data node is one target port group whose
//!   id is its node id. Every node derives the same port group model from the same
//!   replicated state, so REPORT TARGET PORT GROUPS answers the same through every
//!   path.
//! - **ALUA state of a group.** The replicated `SetAlua` state (active/optimized by
//!   default); a node that is draining or fenced is *unavailable*. A node that has had
//!   no word from a leader with a quorum for longer than its lease reports its own
//!   group *transitioning* — hosts retry through another node — until it hears from
//!   one again (see "I/O safety" in the README).
//! - **Persistent reservations.** A PR OUT is committed through the cluster before it
//!   completes ([`ClusterPr`]); other nodes install the result and raise its unit
//!   attentions when they apply it.
//! - **The data path never waits on consensus**: it reads the node's own LU state.

use std::sync::Arc;
use std::time::Duration;

use cluster::{Cluster, ClusterNode, ClusterState, Command, Event, Health, NodeId, Role, Settling};
use scsi::{AluaState, PortGroup, PortGroups, TargetPortGroups};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Relative target port identifier of portal `index` of node `id`.
pub fn relative_port(id: NodeId, index: usize) -> u16 {
    (id * 16 + index as u64 + 1) as u16
}

/// The target port group model every node derives from the replicated state.
/// `lease_ok`: this node (`me`) has recent word from a leader with a quorum.
pub fn port_model(state: &ClusterState, me: NodeId, lease_ok: bool) -> TargetPortGroups {
    let mut groups: Vec<PortGroup> = state
        .nodes
        .values()
        .filter(|n| n.role == Role::Voter)
        .map(|n| {
            let mut st: AluaState = match n.health {
                Health::Active => state.alua_of(n.id).into(),
                Health::Draining | Health::Fenced { .. } => AluaState::Unavailable,
            };
            if n.id == me && !lease_ok {
                st = AluaState::Transitioning;
            }
            PortGroup {
                id: n.id as u16,
                state: st,
                ports: (0..n.portals.len())
                    .map(|i| relative_port(n.id, i))
                    .collect(),
                preferred: false,
            }
        })
        .collect();
    if !state.nodes.contains_key(&me) {
        // Not registered yet (cannot happen once serving: registration comes first).
        groups.push(PortGroup {
            id: me as u16,
            state: AluaState::Transitioning,
            ports: Vec::new(),
            preferred: false,
        });
    }
    TargetPortGroups {
        groups,
        implicit_transition_secs: 30,
    }
}

/// How long a node keeps serving without word from a leader with a quorum. Longer
/// than an election (so a leader change does not interrupt I/O), shorter than the
/// time the cluster waits before it excludes a silent node from a change.
pub fn lease(c: &cluster::ClusterConfig) -> Duration {
    Duration::from_millis(c.election_timeout_ms * 6)
}

/// Start the cluster member and wait until this node is registered in the replicated
/// state (which means it has caught up with the log up to its registration). Logs
/// while it waits for a quorum. Then seeds the table from `[mapping]` if the cluster
/// has none, and returns the config with the replicated table as its `[mapping]`.
pub async fn join(cfg: &Config) -> Result<(Arc<ClusterNode>, Config), String> {
    let ccfg = cfg.cluster_config().expect("called with [cluster]");
    let id = ccfg.id;
    let node = ClusterNode::start(ccfg.clone())
        .await
        .map_err(|e| format!("[cluster]: {e}"))?;
    println!("cluster: node {id} on {}", node.local_addr());
    let node = Arc::new(node);
    let started = std::time::Instant::now();
    let mut next_log = Duration::from_secs(2);
    loop {
        if node.state().nodes.contains_key(&id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() >= next_log {
            tracing::warn!(
                leader = ?node.leader(),
                waited_s = started.elapsed().as_secs(),
                "waiting to join the cluster: no leader with a quorum has registered this node yet; start the other members (check [cluster] peers and the secret)"
            );
            next_log += Duration::from_secs(5);
        }
    }
    // A restarted member finds its registration in its own log: catch up with the
    // leader before building anything from the state.
    while !node.sync_with_leader(Duration::from_secs(2)).await {
        if started.elapsed() >= next_log {
            tracing::warn!(
                waited_s = started.elapsed().as_secs(),
                "waiting to catch up with the cluster's leader"
            );
            next_log += Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(
        id,
        leader = ?node.leader(),
        ms = started.elapsed().as_millis() as u64,
        "joined the cluster"
    );
    let mut cfg = cfg.clone();
    if ccfg.witness {
        return Ok((node, cfg));
    }
    let st = node.state();
    if st.table.epoch == 0 && st.table.volumes.is_empty() {
        if let Some(table) = &cfg.mapping {
            match node
                .propose(Command::ReplaceTable {
                    expected_epoch: 0,
                    table: table.clone(),
                })
                .await
            {
                Ok(_) => tracing::info!(
                    volumes = table.volumes.len(),
                    "seeded the cluster's mapping table from [mapping]"
                ),
                Err(cluster::ClusterError::Refused(why)) => {
                    tracing::info!("another node seeded the mapping table first ({why})")
                }
                Err(e) => return Err(format!("cannot seed the cluster's mapping table: {e}")),
            }
        }
    }
    let table = node.state().table.clone();
    if table.epoch > 0 || !table.volumes.is_empty() {
        if cfg
            .mapping
            .as_ref()
            .is_some_and(|m| m.volumes != table.volumes)
        {
            tracing::warn!(
                epoch = table.epoch,
                "[mapping] in the config differs from the cluster's table; the cluster's table wins (export it with `switchyard mapping`)"
            );
        }
        cfg.mapping = Some(table);
    }
    // Arrays the cluster added online are opened at start like the config's own.
    for spec in st.catalog.backends.values() {
        if !cfg.backends.iter().any(|b| b.id == spec.id) {
            match crate::catalog::section_of(spec, node.sealer()) {
                Ok(section) => cfg.backends.push(section),
                // Not served here until it opens (logged; the catalog retries).
                Err(e) => tracing::error!("{e}: not opened"),
            }
        }
    }
    check_volumes(&cfg);
    Ok((node, cfg))
}

/// Warn about `volume = …` LUNs that name no volume of the (replicated) table (the
/// cluster deleted it: the LUN is left out) and about volumes on back-ends this node
/// does not reach (it does not serve them; the others do).
fn check_volumes(cfg: &Config) {
    for t in &cfg.targets {
        for l in &t.luns {
            let Some(v) = &l.volume else { continue };
            let known = cfg
                .mapping
                .as_ref()
                .is_some_and(|m| m.volumes.iter().any(|d| &d.name == v));
            if !known {
                tracing::warn!(
                    target = %t.name,
                    lun = l.lun,
                    "volume \"{v}\" is not in the cluster's mapping table (deleted?); the LUN is left out: remove it from this config"
                );
            }
        }
    }
    if let Some(m) = &cfg.mapping {
        for v in &m.volumes {
            for e in &v.extents {
                let known = match crate::config::backend_ref(&e.backend) {
                    crate::config::BackendRef::Remote { backend, .. } => {
                        cfg.backends.iter().any(|b| b.id == backend)
                    }
                    crate::config::BackendRef::Local(id) => cfg.stores.iter().any(|s| s.id == id),
                };
                if !known {
                    tracing::warn!(
                        volume = %v.name,
                        "the cluster's volume uses back-end \"{}\", which this node does not configure: it is not served here (add the [[backend]] or [[store]] it names)",
                        e.backend
                    );
                }
            }
        }
    }
}

/// Keep the node's port group model in step with the replicated state and with its
/// own lease; runs until `shutdown`.
pub fn spawn_follower(
    node: Arc<ClusterNode>,
    lease: Duration,
    groups: Arc<PortGroups>,
    lus: PrLus,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let me = node.id();
    // Persistent reservations other nodes commit are installed synchronously as the
    // entry is applied, so a node that reports the index applied enforces them.
    {
        let lus = lus.clone();
        let settling = node.settling();
        node.set_applier(Arc::new(move |st: &ClusterState, ev: &Event| {
            apply_pr_event(me, &lus.read(), &settling, st, ev)
        }));
    }
    // Changes applied before the applier was installed.
    let st = node.state();
    for l in lus.read().iter() {
        l.catch_up(&st);
    }
    let mut events = node.subscribe();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut lease_ok = true;
        let started = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                ev = events.recv() => if let Err(tokio::sync::broadcast::error::RecvError::Closed) = ev {
                    return;
                },
            }
            // Right after start (just joined, so a leader was heard) a new leader may
            // not have its first quorum acknowledgement yet: the lease holds from start.
            let mut ok =
                node.leader_contact().is_some_and(|c| c <= lease) || started.elapsed() < lease;
            // Back in contact after a loss: catch up with what the cluster committed
            // meanwhile before serving again.
            if ok && !lease_ok && !node.sync_with_leader(lease).await {
                ok = false;
            }
            let st = node.state();
            if ok != lease_ok {
                if ok {
                    tracing::info!("in contact with a leader again: serving I/O");
                } else {
                    tracing::warn!(
                        lease_ms = lease.as_millis() as u64,
                        "no leader with a quorum within the lease: reporting this node's port group transitioning (hosts retry through other nodes) until a leader is heard from"
                    );
                }
                lease_ok = ok;
            }
            sync_groups(&groups, &port_model(&st, me, lease_ok));
        }
    })
}

/// Install another node's PR change (or, after a snapshot, every record) into the LUs.
/// After a PREEMPT AND ABORT the entry settles (`settling`) once the writes the LU
/// admitted before it have finished.
fn apply_pr_event(
    me: NodeId,
    lus: &[Arc<ClusteredLu>],
    settling: &Arc<Settling>,
    st: &ClusterState,
    ev: &Event,
) {
    match ev {
        Event::Applied {
            index,
            command,
            outcome,
        } if *outcome == cluster::Outcome::Ok => {
            let Command::SetPr {
                lu,
                by,
                attentions,
                expected_version,
                state,
                abort,
            } = &**command
            else {
                return;
            };
            if *by == me {
                // Installed by the PR OUT itself before it completed.
                return;
            }
            // `st` is the state after the whole batch; the command itself says what
            // this entry set (a compare-and-set entry sets version expected + 1).
            let (version, state) = match (expected_version, st.pr.get(lu)) {
                (Some(v), _) => (v + 1, state),
                (None, Some(r)) => (r.version, &r.state),
                (None, None) => return,
            };
            for l in lus.iter().filter(|l| &l.key == lu) {
                l.apply_remote(version, state, attentions);
                if *abort {
                    // PREEMPT AND ABORT: this node reports the entry settled (which
                    // the PR OUT waits for) only once the writes it admitted before
                    // have finished.
                    drain_writes(settling, *index, &l.lu);
                }
            }
        }
        Event::Snapshot { index } => {
            for l in lus {
                if let Some(r) = st.pr.get(&l.key) {
                    // A snapshot does not say whether the entries it covers held a
                    // PREEMPT AND ABORT: drain as if one had.
                    if l.apply_remote(r.version, &r.state, &[]) {
                        drain_writes(settling, *index, &l.lu);
                    }
                }
            }
        }
        _ => {}
    }
}

/// Wait for `lu`'s writes in flight (`scsi::LogicalUnit::drain_writes`) on a thread of
/// its own, holding `index` unsettled meanwhile. The applier does not wait: Raft goes on
/// applying later entries, such as the switch of a remap that holds one of those
/// writes.
fn drain_writes(settling: &Arc<Settling>, index: u64, lu: &Arc<scsi::LogicalUnit>) {
    let guard = settling.hold(index);
    let lu = lu.clone();
    let drain = move || {
        lu.drain_writes();
        drop(guard);
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn_blocking(drain)),
        Err(_) => drop(std::thread::spawn(drain)),
    }
}

/// Bring `groups` to `model`: state changes one group at a time (unit attentions for
/// that group's ports), any other difference by replacing the whole model.
pub fn sync_groups(groups: &PortGroups, model: &TargetPortGroups) {
    let cur = groups.snapshot();
    if &cur == model {
        return;
    }
    let same_shape = cur.groups.len() == model.groups.len()
        && cur
            .groups
            .iter()
            .zip(&model.groups)
            .all(|(a, b)| a.id == b.id && a.ports == b.ports && a.preferred == b.preferred);
    if same_shape {
        for g in &model.groups {
            let _ = groups.set_state(g.id, g.state);
        }
    } else if let Err(e) = groups.replace(model.clone()) {
        tracing::error!(error = %e, "cannot apply the cluster's port group model");
    }
}

/// Commits one LU's persistent reservation changes through the cluster
/// (compare-and-set on the record's version) before the PR OUT completes.
pub struct ClusterPr {
    node: Arc<ClusterNode>,
    key: String,
    rt: tokio::runtime::Handle,
    lease: Duration,
}

impl ClusterPr {
    /// Must be called inside the runtime.
    pub fn new(node: Arc<ClusterNode>, key: String, lease: Duration) -> Arc<ClusterPr> {
        Arc::new(ClusterPr {
            node,
            key,
            rt: tokio::runtime::Handle::current(),
            lease,
        })
    }

    /// Committed at `index`: wait until every other serving node has applied and
    /// settled it (and so enforces it, and has finished the writes a PREEMPT AND ABORT
    /// cut off), or has been silent for a whole lease — after which it has stopped
    /// serving I/O (its port group reports transitioning). A node that answers but is
    /// still settling is waited for up to [`SETTLE_LIMIT`].
    async fn confirm(&self, index: u64) {
        let me = self.node.id();
        let others: Vec<NodeId> = self
            .node
            .state()
            .serving_nodes()
            .into_iter()
            .filter(|&n| n != me)
            .collect();
        let silent = self
            .node
            .confirm_applied(index, &others, self.lease + LEASE_MARGIN, SETTLE_LIMIT)
            .await;
        if !silent.is_empty() {
            tracing::warn!(lu = %self.key, ?silent, "PR change committed; these nodes did not confirm it: silent for longer than their lease (they serve no I/O until they catch up), or still finishing writes after {SETTLE_LIMIT:?}");
        }
    }
}

/// Added to a peer's lease before its silence counts as "stopped serving" (clock rate
/// differences, scheduling).
const LEASE_MARGIN: Duration = Duration::from_millis(500);

/// How long a PR OUT waits for a node that answers but has not settled the change (its
/// writes admitted before a PREEMPT AND ABORT still running): longer than the default
/// back-end command timeout (15 s), which bounds those writes, and shorter than the
/// hosts' SCSI command timeout (30 s on Linux).
const SETTLE_LIMIT: Duration = Duration::from_secs(20);

impl std::fmt::Debug for ClusterPr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cluster PR record {}", self.key)
    }
}

impl scsi::PrCoordinator for ClusterPr {
    fn current(&self) -> Result<(u64, scsi::PrSnapshot), scsi::PrCommitError> {
        let st = self.node.state();
        Ok(match st.pr.get(&self.key) {
            Some(r) => (r.version, (&r.state).into()),
            None => (0, scsi::PrSnapshot::default()),
        })
    }

    fn commit(
        &self,
        base_version: u64,
        next: &scsi::PrSnapshot,
        attentions: &[scsi::PrAttention],
        abort: bool,
    ) -> Result<u64, scsi::PrCommitError> {
        let cmd = Command::SetPr {
            lu: self.key.clone(),
            expected_version: Some(base_version),
            state: next.into(),
            by: self.node.id(),
            attentions: attentions
                .iter()
                .map(|a| cluster::PrUa {
                    initiator: a.initiator.clone(),
                    relative_port: a.relative_port,
                    asc: a.asc,
                    ascq: a.ascq,
                })
                .collect(),
            abort,
        };
        // PR OUT runs on the blocking pool, never on a runtime thread.
        let applied = self.rt.block_on(async {
            let a = self.node.propose(cmd).await?;
            self.confirm(a.index).await;
            Ok::<_, cluster::ClusterError>(a)
        });
        match applied {
            Ok(_) => Ok(base_version + 1),
            Err(cluster::ClusterError::Refused(why)) => {
                tracing::debug!(lu = %self.key, %why, "PR update lost a race; re-reading");
                Err(scsi::PrCommitError::Stale)
            }
            Err(e) => {
                tracing::warn!(lu = %self.key, error = %e, "cannot commit a PR change through the cluster");
                Err(scsi::PrCommitError::Unavailable(e.to_string()))
            }
        }
    }
}

/// An LU whose persistent reservations the cluster keeps.
pub struct ClusteredLu {
    /// The record's key in the replicated state (the LU's WWN in hex).
    pub key: String,
    pub lu: Arc<scsi::LogicalUnit>,
}

/// The node's clustered LUs, shared by the PR applier and the catalog (which adds the
/// LUs of volumes exported online).
pub type PrLus = Arc<parking_lot::RwLock<Vec<Arc<ClusteredLu>>>>;

impl ClusteredLu {
    /// Install the record the replicated state holds now (at start, or when the LU
    /// is created after the record).
    pub fn catch_up(&self, st: &ClusterState) {
        if let Some(r) = st.pr.get(&self.key) {
            self.apply_remote(r.version, &r.state, &[]);
        }
    }

    /// Install a PR change another node committed (version `version`), raising the unit
    /// attentions it names for this node's ports.
    /// Whether it changed anything (an old or equal version does not).
    pub fn apply_remote(
        &self,
        version: u64,
        state: &cluster::PrState,
        uas: &[cluster::PrUa],
    ) -> bool {
        let uas: Vec<scsi::PrAttention> = uas
            .iter()
            .map(|a| scsi::PrAttention {
                initiator: a.initiator.clone(),
                relative_port: a.relative_port,
                asc: a.asc,
                ascq: a.ascq,
            })
            .collect();
        self.lu.apply_remote_pr(version, &state.into(), &uas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster::{AluaAccess, NodeInfo};

    fn state() -> ClusterState {
        let mut st = ClusterState::default();
        for id in [1, 2] {
            st.nodes.insert(
                id,
                NodeInfo::voter(
                    id,
                    &format!("n{id}"),
                    "127.0.0.1:1",
                    vec!["a".into(), "b".into()],
                ),
            );
        }
        st.nodes.insert(9, NodeInfo::witness(9, "w", "127.0.0.1:2"));
        st
    }

    #[test]
    fn every_node_derives_the_same_model() {
        let mut st = state();
        st.alua.insert(2, AluaAccess::Standby);
        let a = port_model(&st, 1, true);
        let b = port_model(&st, 2, true);
        assert_eq!(a, b);
        a.validate().unwrap();
        assert_eq!(a.groups.len(), 2, "witnesses have no port group");
        assert_eq!(a.groups[0].ports, vec![17, 18]);
        assert_eq!(a.groups[1].ports, vec![33, 34]);
        assert_eq!(a.groups[1].state, AluaState::Standby);
    }

    #[test]
    fn draining_fenced_and_leaseless_nodes() {
        let mut st = state();
        st.nodes.get_mut(&2).unwrap().health = Health::Draining;
        let m = port_model(&st, 1, false);
        assert_eq!(m.groups[0].state, AluaState::Transitioning);
        assert_eq!(m.groups[1].state, AluaState::Unavailable);
        st.nodes.get_mut(&2).unwrap().health = Health::Fenced { reason: "x".into() };
        assert_eq!(
            port_model(&st, 1, true).groups[1].state,
            AluaState::Unavailable
        );
    }

    #[test]
    fn sync_changes_only_what_differs() {
        let st = state();
        let groups = PortGroups::new(port_model(&st, 1, true)).unwrap();
        let mut m = port_model(&st, 1, false);
        sync_groups(&groups, &m);
        assert_eq!(groups.snapshot(), m);
        m.groups.pop();
        sync_groups(&groups, &m);
        assert_eq!(groups.snapshot(), m);
    }

    /// Another node's PREEMPT AND ABORT, applied here, is installed at once but settles
    /// (which the PR OUT waits for) only after the write this node admitted before it
    /// has finished; a plain PREEMPT settles at once.
    #[test]
    fn an_applied_preempt_and_abort_settles_after_local_writes() {
        let (store, gate) = blockdev::GatedStore::new(512, 64);
        let store = Arc::new(store);
        let lu = Arc::new(scsi::LogicalUnit::new(
            scsi::LuConfig {
                serial: "applier-0".into(),
                ..scsi::LuConfig::default()
            },
            store,
        ));
        let mut map = scsi::LunMap::new(Arc::new(scsi::TargetInfo {
            name: "iqn.2026-11.org.switchyard:applier".into(),
            port_name: "iqn.2026-11.org.switchyard:applier,t,0x0001".into(),
        }));
        map.insert(0, lu.clone());
        let map = Arc::new(map);
        let lus = vec![Arc::new(ClusteredLu {
            key: "lu0".into(),
            lu,
        })];
        let host = scsi::Nexus {
            id: 1,
            initiator: "iqn.2026-11.test:host,i,0x1".into(),
            relative_port: 1,
            port_group: 1,
        };
        let run = move |map: &scsi::LunMap, cdb: &[u8], data: &[u8]| {
            map.execute(&scsi::Request {
                lun: 0,
                cdb,
                data_out: data,
                data_in_len: 0,
                nexus: &host,
            })
        };
        let run2 = run.clone();
        let _ = run(&map, &[0; 6], &[]); // the power-on unit attention
        let event = |version: u64, abort: bool| Event::Applied {
            index: version + 1,
            command: Arc::new(Command::SetPr {
                lu: "lu0".into(),
                expected_version: Some(version),
                state: cluster::PrState::default(),
                by: 1,
                attentions: Vec::new(),
                abort,
            }),
            outcome: cluster::Outcome::Ok,
        };
        let st = ClusterState::default();
        let settling = Arc::new(Settling::default());

        let writer = {
            let map = map.clone();
            std::thread::spawn(move || {
                run2(&map, &[0x2A, 0, 0, 0, 0, 8, 0, 0, 1, 0], &[0x5A; 512]).status
            })
        };
        assert!(gate.arrived(Duration::from_secs(10)));
        // A plain PREEMPT installs and settles with the write still in flight.
        apply_pr_event(2, &lus, &settling, &st, &event(0, false));
        assert_eq!(settling.settled(1), 1);
        // A PREEMPT AND ABORT (index 2) installs at once (the applier does not wait) but
        // does not settle while a write admitted before it is in flight.
        apply_pr_event(2, &lus, &settling, &st, &event(1, true));
        assert_eq!(lus[0].lu.pr_version(), 2);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            settling.settled(5),
            1,
            "the PREEMPT AND ABORT settled while a write admitted before it was in flight"
        );
        gate.open_one();
        assert_eq!(writer.join().unwrap(), scsi::Status::Good);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while settling.settled(5) < 5 {
            assert!(
                std::time::Instant::now() < deadline,
                "the PREEMPT AND ABORT never settled after the write finished"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(lus[0].lu.pr_version(), 2);
    }
}
