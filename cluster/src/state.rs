//! The replicated cluster state and the commands that change it.
//!
//! [`ClusterState`] is plain data; [`ClusterState::apply`] is the deterministic state
//! machine every node runs on every committed [`Command`], in log order. A command that
//! does not fit the state (a stale epoch, an illegal change-log transition, a PR update
//! that lost a race) is *refused*: the state stays as it was and every node records the
//! same refusal, so the proposer gets the reason back.
//!
//! Nothing here does I/O, reads a clock or knows about Raft; timestamps come inside the
//! commands, stamped by the proposer.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use volume::{BlockRange, Changeset, MappingTable, VolumeDef};

use crate::catalog::{BackendSpec, Catalog, Export};
use crate::change::{ChangeError, ChangeId, ChangeRecord, Phase};
use crate::migration::{
    ChunkHome, MigrationId, MigrationProgress, MigrationSpec, MigrationState, Migrations,
};
use crate::NodeId;

/// How many finished changes the change log keeps.
pub const CHANGE_HISTORY: usize = 256;

/// What a member does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A data node: votes, serves I/O, takes part in remaps.
    Voter,
    /// Votes only (the quorum tie-breaker of a two-node pair); serves no I/O and takes
    /// no part in remaps.
    Witness,
}

/// The admin-visible service state of a node, replicated (unlike reachability, which
/// each node observes for itself; see [`crate::Member`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Serves I/O.
    Active,
    /// Being emptied by the admin; reports ALUA transitioning/unavailable.
    Draining,
    /// Excluded from a change (it did not answer): it must not serve I/O with its old
    /// table; it stops serving until it has caught up and the admin (or the node
    /// itself, after catching up) sets it active again.
    Fenced { reason: String },
}

/// One member of the cluster, as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub name: String,
    /// Management address (`ip:port`) of the cluster RPC.
    pub mgmt_addr: String,
    /// iSCSI portals (`ip:port`) the node serves on; empty for a witness.
    #[serde(default)]
    pub portals: Vec<String>,
    pub role: Role,
    pub health: Health,
    /// The node's management API URL (so admins and the CLI can reach every member).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
}

impl NodeInfo {
    /// A data node, active.
    pub fn voter(id: NodeId, name: &str, mgmt_addr: &str, portals: Vec<String>) -> NodeInfo {
        NodeInfo {
            id,
            name: name.to_string(),
            mgmt_addr: mgmt_addr.to_string(),
            portals,
            role: Role::Voter,
            health: Health::Active,
            api: None,
        }
    }

    /// A witness.
    pub fn witness(id: NodeId, name: &str, mgmt_addr: &str) -> NodeInfo {
        NodeInfo {
            role: Role::Witness,
            ..NodeInfo::voter(id, name, mgmt_addr, Vec::new())
        }
    }

    /// True for an active data node: one that serves I/O and takes part in remaps.
    pub fn serves_io(&self) -> bool {
        self.role == Role::Voter && self.health == Health::Active
    }
}

/// ALUA asymmetric access state of a node's target port group (mirrors
/// [`scsi::AluaState`], which is not serialisable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AluaAccess {
    ActiveOptimized,
    ActiveNonOptimized,
    Standby,
    Unavailable,
    Offline,
    Transitioning,
}

impl From<scsi::AluaState> for AluaAccess {
    fn from(s: scsi::AluaState) -> AluaAccess {
        match s {
            scsi::AluaState::ActiveOptimized => AluaAccess::ActiveOptimized,
            scsi::AluaState::ActiveNonOptimized => AluaAccess::ActiveNonOptimized,
            scsi::AluaState::Standby => AluaAccess::Standby,
            scsi::AluaState::Unavailable => AluaAccess::Unavailable,
            scsi::AluaState::Offline => AluaAccess::Offline,
            scsi::AluaState::Transitioning => AluaAccess::Transitioning,
        }
    }
}

impl From<AluaAccess> for scsi::AluaState {
    fn from(s: AluaAccess) -> scsi::AluaState {
        match s {
            AluaAccess::ActiveOptimized => scsi::AluaState::ActiveOptimized,
            AluaAccess::ActiveNonOptimized => scsi::AluaState::ActiveNonOptimized,
            AluaAccess::Standby => scsi::AluaState::Standby,
            AluaAccess::Unavailable => scsi::AluaState::Unavailable,
            AluaAccess::Offline => scsi::AluaState::Offline,
            AluaAccess::Transitioning => scsi::AluaState::Transitioning,
        }
    }
}

/// One PR registration (mirrors [`scsi::PrRegistration`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrReg {
    /// Initiator port name ("<iSCSI name>,i,0x<ISID>").
    pub initiator: String,
    pub relative_port: u16,
    pub key: u64,
    pub all_tg_pt: bool,
}

/// The reservation holder (mirrors [`scsi::PrHolder`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrHold {
    pub initiator: String,
    pub relative_port: u16,
    /// TYPE code (SPC-4 table 188).
    pub pr_type: u8,
}

/// The I_T nexus holding the SPC-2 reservation (RESERVE(6)/(10)) of a logical unit
/// (mirrors [`scsi::Spc2Holder`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spc2Hold {
    pub initiator: String,
    pub relative_port: u16,
}

/// The persistent reservation state of one logical unit (mirrors
/// [`scsi::PrSnapshot`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrState {
    pub generation: u32,
    pub aptpl: bool,
    pub registrations: Vec<PrReg>,
    pub reservation: Option<PrHold>,
    /// The SPC-2 reservation holder, kept cluster-wide so every node enforces it
    /// (absent in entries written before it existed: none).
    #[serde(default)]
    pub spc2_reservation: Option<Spc2Hold>,
}

impl From<&scsi::PrSnapshot> for PrState {
    fn from(s: &scsi::PrSnapshot) -> PrState {
        PrState {
            generation: s.generation,
            aptpl: s.aptpl,
            registrations: s
                .registrations
                .iter()
                .map(|r| PrReg {
                    initiator: r.initiator.clone(),
                    relative_port: r.relative_port,
                    key: r.key,
                    all_tg_pt: r.all_tg_pt,
                })
                .collect(),
            reservation: s.reservation.as_ref().map(|h| PrHold {
                initiator: h.initiator.clone(),
                relative_port: h.relative_port,
                pr_type: h.pr_type,
            }),
            spc2_reservation: s.spc2_reservation.as_ref().map(|h| Spc2Hold {
                initiator: h.initiator.clone(),
                relative_port: h.relative_port,
            }),
        }
    }
}

impl From<&PrState> for scsi::PrSnapshot {
    fn from(s: &PrState) -> scsi::PrSnapshot {
        scsi::PrSnapshot {
            generation: s.generation,
            aptpl: s.aptpl,
            registrations: s
                .registrations
                .iter()
                .map(|r| scsi::PrRegistration {
                    initiator: r.initiator.clone(),
                    relative_port: r.relative_port,
                    key: r.key,
                    all_tg_pt: r.all_tg_pt,
                })
                .collect(),
            reservation: s.reservation.as_ref().map(|h| scsi::PrHolder {
                initiator: h.initiator.clone(),
                relative_port: h.relative_port,
                pr_type: h.pr_type,
            }),
            spc2_reservation: s.spc2_reservation.as_ref().map(|h| scsi::Spc2Holder {
                initiator: h.initiator.clone(),
                relative_port: h.relative_port,
            }),
        }
    }
}

/// A unit attention a PR change raises for one I_T nexus, named by its initiator port
/// and relative target port (unique across the cluster); sense key UNIT ATTENTION.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrUa {
    pub initiator: String,
    pub relative_port: u16,
    pub asc: u8,
    pub ascq: u8,
}

/// PR state of one LU with a version that every update bumps (for compare-and-set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrRecord {
    pub version: u64,
    pub state: PrState,
    /// The node that made the last update (it already applied it locally).
    pub by: NodeId,
}

/// Everything the cluster agrees on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Registered members. Raft membership (who votes) is kept by Raft; see
    /// [`crate::Cluster::members`] for the merged view.
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// The committed mapping table; `table.epoch` is the cluster's table epoch.
    pub table: MappingTable,
    /// Persistent reservations per LU (keyed by the LU's NAA WWN or volume name, the
    /// node's choice, used the same way by every node).
    pub pr: BTreeMap<String, PrRecord>,
    /// ALUA state of each node's target port group; a node not listed is
    /// active/optimized.
    pub alua: BTreeMap<NodeId, AluaAccess>,
    /// The change log: the active change and the last [`CHANGE_HISTORY`] finished ones.
    pub changes: BTreeMap<ChangeId, ChangeRecord>,
    /// The unfinished change, if any (at most one at a time).
    pub active_change: Option<ChangeId>,
    pub next_change_id: ChangeId,
    /// Online migrations: the unfinished ones and the last few finished.
    #[serde(default)]
    pub migrations: Migrations,
    /// Volume exports and zoning (`catalog.rs`).
    #[serde(default)]
    pub catalog: Catalog,
    /// Raft log index of the last command applied to this state.
    pub applied_index: u64,
}

impl Default for ClusterState {
    fn default() -> ClusterState {
        ClusterState {
            nodes: BTreeMap::new(),
            table: MappingTable::new(0),
            pr: BTreeMap::new(),
            alua: BTreeMap::new(),
            changes: BTreeMap::new(),
            active_change: None,
            next_change_id: 1,
            migrations: Migrations::default(),
            catalog: Catalog::default(),
            applied_index: 0,
        }
    }
}

/// A change to the cluster state: what [`crate::Cluster::propose`] replicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Add or update a member's registration (name, addresses, role). A node registers
    /// itself at start; an existing `health` is kept.
    RegisterNode(NodeInfo),
    /// Drop a member's registration (after it left Raft membership).
    ForgetNode { id: NodeId },
    /// Set a member's service state.
    SetHealth { id: NodeId, health: Health },
    /// Set the ALUA state of a node's port group.
    SetAlua { node: NodeId, state: AluaAccess },
    /// Replace the whole table, if the cluster is still at `expected_epoch`; the new
    /// table gets epoch `expected_epoch + 1`. For bootstrap and admin imports; refused
    /// while a change is active.
    ReplaceTable {
        expected_epoch: u64,
        table: MappingTable,
    },
    /// Apply a changeset at once, without the remap protocol: for changes that need no
    /// quiesce (adding a volume). Refused while a change is active.
    ApplyChangeset(Changeset),
    /// Set the PR state of `lu`. With `expected_version`, refused unless the current
    /// version matches (the proposer re-reads and retries: two nodes racing on one LU).
    SetPr {
        lu: String,
        expected_version: Option<u64>,
        state: PrState,
        by: NodeId,
        /// The unit attentions the change raises, for the nodes that serve the named
        /// ports to deliver (each node applies the ones for its own ports).
        #[serde(default)]
        attentions: Vec<PrUa>,
        /// A PREEMPT AND ABORT: each serving node drains the logical unit's writes in
        /// flight before it reports the entry applied.
        #[serde(default)]
        abort: bool,
    },
    /// Add a volume to the table and export it. No quiesce is needed: nothing serves
    /// it yet. Refused while a change is active, when the name or WWN is taken, when
    /// its extents use blocks another volume or an unfinished migration uses, or when
    /// an export's LUN is taken.
    CreateVolume {
        def: VolumeDef,
        #[serde(default)]
        exports: Vec<Export>,
    },
    /// Remove a volume from the table, with its exports (every node stops showing it)
    /// and, when `pr_key` is given, its persistent reservation record. Refused while a
    /// change is active or a migration of it is unfinished.
    DeleteVolume {
        name: String,
        #[serde(default)]
        pr_key: Option<String>,
    },
    /// Show a volume as a LUN of a target on every node that serves the target.
    Export(Export),
    /// Stop showing the export at (`target`, `lun`).
    Unexport { target: String, lun: u16 },
    /// Add a back-end array every data member logs in to.
    AddBackend(BackendSpec),
    /// Forget a back-end array added online; refused while the table uses its LUs.
    RemoveBackend { id: String },
    /// Replace the cluster's zoning (`None`: each node's own `[zoning]`), if it is
    /// still at `expected_version`.
    SetZoning {
        expected_version: u64,
        zoning: Option<fcwwn::Masking>,
    },
    /// Begin an online remap (state `Proposed`); the reply carries its id.
    BeginChange {
        changeset: Changeset,
        requested_by: NodeId,
        at_ms: u64,
        /// Copy the data of ranges whose home moves while every node holds them
        /// (before the switch); false: the admin asserts the new homes already hold it.
        #[serde(default)]
        copy_data: bool,
        /// The migration this change is a window (or the end) of.
        #[serde(default)]
        migration: Option<MigrationId>,
    },
    /// A node finished `phase` of change `id`.
    AckChange {
        id: ChangeId,
        node: NodeId,
        phase: Phase,
        at_ms: u64,
    },
    /// Move change `id` to `to` (checked: see [`ChangeRecord::check_transition`]).
    AdvanceChange {
        id: ChangeId,
        to: Phase,
        reason: Option<String>,
        at_ms: u64,
        /// Acknowledgements of the current phase the leader received directly (node,
        /// when): recorded before the transition, which may need them.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        acks: Vec<(NodeId, u64)>,
    },
    /// Exclude a node that does not answer from change `id`, and fence it.
    ExcludeFromChange {
        id: ChangeId,
        node: NodeId,
        reason: String,
        at_ms: u64,
    },
    /// Start an online migration (checked against the table and the other migrations);
    /// the reply carries its id.
    StartMigration {
        spec: MigrationSpec,
        requested_by: NodeId,
        at_ms: u64,
    },
    /// Move migration `id` to `state` (checked: see [`MigrationState::can_become`]).
    SetMigrationState {
        id: MigrationId,
        state: MigrationState,
        reason: Option<String>,
        at_ms: u64,
    },
    /// A migration window committed or failed.
    MigrationProgress {
        id: MigrationId,
        progress: MigrationProgress,
        at_ms: u64,
    },
}

/// What applying one command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied.
    Ok,
    /// `BeginChange` applied: the new change's id.
    ChangeBegun(ChangeId),
    /// `StartMigration` applied: the new migration's id.
    MigrationStarted(MigrationId),
    /// Refused (the state is unchanged), with the reason for the admin.
    Refused(String),
}

impl ClusterState {
    /// The unfinished change, if any.
    pub fn active(&self) -> Option<&ChangeRecord> {
        self.active_change.and_then(|id| self.changes.get(&id))
    }

    /// The data nodes that serve I/O now.
    pub fn serving_nodes(&self) -> BTreeSet<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.serves_io())
            .map(|n| n.id)
            .collect()
    }

    /// ALUA state of `node`'s port group (active/optimized unless set).
    pub fn alua_of(&self, node: NodeId) -> AluaAccess {
        self.alua
            .get(&node)
            .copied()
            .unwrap_or(AluaAccess::ActiveOptimized)
    }

    /// Apply one committed command. Deterministic: same state + same command gives the
    /// same result on every node.
    pub fn apply(&mut self, cmd: &Command) -> Outcome {
        match self.try_apply(cmd) {
            Ok(o) => o,
            Err(reason) => Outcome::Refused(reason),
        }
    }

    fn try_apply(&mut self, cmd: &Command) -> Result<Outcome, String> {
        match cmd {
            Command::RegisterNode(info) => {
                let mut info = info.clone();
                if let Some(old) = self.nodes.get(&info.id) {
                    info.health = old.health.clone();
                }
                self.nodes.insert(info.id, info);
            }
            Command::ForgetNode { id } => {
                if self.nodes.remove(id).is_none() {
                    return Err(format!("node {id} is not registered"));
                }
                self.alua.remove(id);
            }
            Command::SetHealth { id, health } => {
                let n = self
                    .nodes
                    .get_mut(id)
                    .ok_or_else(|| format!("node {id} is not registered"))?;
                n.health = health.clone();
            }
            Command::SetAlua { node, state } => {
                if !self.nodes.contains_key(node) {
                    return Err(format!("node {node} is not registered"));
                }
                self.alua.insert(*node, *state);
            }
            Command::ReplaceTable {
                expected_epoch,
                table,
            } => {
                self.no_active_change()?;
                self.check_epoch(*expected_epoch)?;
                let mut t = table.normalized();
                t.epoch = self.table.epoch + 1;
                t.validate().map_err(|e| e.to_string())?;
                self.table = t;
            }
            Command::ApplyChangeset(cs) => {
                self.no_active_change()?;
                self.table = self.apply_checked(cs)?;
                self.catalog.version += 1;
            }
            Command::CreateVolume { def, exports } => self.create_volume(def, exports)?,
            Command::DeleteVolume { name, pr_key } => {
                self.no_active_change()?;
                if self.table.volume(name).is_none() {
                    return Err(format!("there is no volume {name:?}"));
                }
                if let Some(m) = self.migrations.active().find(|m| &m.spec.volume == name) {
                    return Err(format!(
                        "migration {} of volume {name} is unfinished ({:?}); abort it first",
                        m.id, m.state
                    ));
                }
                let mut t = self.table.clone();
                t.volumes.retain(|v| &v.name != name);
                t.epoch += 1;
                self.table = t;
                self.catalog.forget_volume(name);
                if let Some(k) = pr_key {
                    self.pr.remove(k);
                }
            }
            Command::Export(e) => {
                if self.table.volume(&e.volume).is_none() {
                    return Err(format!("there is no volume {:?}", e.volume));
                }
                self.catalog.export(e)?;
            }
            Command::Unexport { target, lun } => {
                self.catalog.unexport(target, *lun)?;
            }
            Command::SetZoning {
                expected_version,
                zoning,
            } => self.catalog.set_zoning(*expected_version, zoning.clone())?,
            Command::AddBackend(b) => self.catalog.add_backend(b)?,
            Command::RemoveBackend { id } => {
                let prefix = format!("{id}/");
                for v in &self.table.volumes {
                    for e in &v.extents {
                        let homes =
                            std::iter::once(&e.backend).chain(e.mirror.iter().map(|m| &m.backend));
                        if let Some(b) = homes.into_iter().find(|b| b.starts_with(&prefix)) {
                            return Err(format!(
                                "volume {} uses {b}; move its blocks elsewhere first",
                                v.name
                            ));
                        }
                    }
                }
                if let Some(m) = self
                    .migrations
                    .active()
                    .find(|m| m.spec.to.backend.starts_with(&prefix))
                {
                    return Err(format!(
                        "migration {} copies to {}",
                        m.id, m.spec.to.backend
                    ));
                }
                self.catalog.remove_backend(id)?;
            }
            Command::SetPr {
                lu,
                expected_version,
                state,
                by,
                ..
            } => {
                let rec = self.pr.entry(lu.clone()).or_default();
                if let Some(v) = expected_version {
                    if *v != rec.version {
                        return Err(format!(
                            "PR state of {lu} changed (version {} now, {v} expected); re-read and retry",
                            rec.version
                        ));
                    }
                }
                rec.version += 1;
                rec.state = state.clone();
                rec.by = *by;
            }
            Command::BeginChange {
                changeset,
                requested_by,
                at_ms,
                copy_data,
                migration,
            } => {
                self.no_active_change()?;
                if changeset.is_empty() {
                    return Err("the changeset changes nothing".to_string());
                }
                // Refuse now what could not be switched later.
                self.apply_checked(changeset)?;
                let id = self.next_change_id;
                self.next_change_id += 1;
                let mut rec = ChangeRecord::new(
                    id,
                    changeset.clone(),
                    self.serving_nodes(),
                    *requested_by,
                    *at_ms,
                );
                rec.copy_data = *copy_data;
                rec.migration = *migration;
                self.changes.insert(id, rec);
                self.active_change = Some(id);
                return Ok(Outcome::ChangeBegun(id));
            }
            Command::AckChange {
                id,
                node,
                phase,
                at_ms,
            } => {
                self.change_mut(*id)?
                    .ack(*node, *phase, *at_ms)
                    .map_err(|e| e.to_string())?;
            }
            Command::AdvanceChange {
                id,
                to,
                reason,
                at_ms,
                acks,
            } => {
                // Record what the leader was told directly; a stale or duplicate
                // acknowledgement is ignored (the transition checks what it needs). A
                // refused transition leaves the record as it was.
                let rec = self.change_mut(*id)?;
                let before = rec.clone();
                let phase = rec.phase();
                for (node, at) in acks {
                    let _ = rec.ack(*node, phase, *at);
                }
                if let Err(e) = self.advance(*id, *to, reason.clone(), *at_ms) {
                    *self.change_mut(*id)? = before;
                    return Err(e);
                }
            }
            Command::ExcludeFromChange {
                id,
                node,
                reason,
                at_ms,
            } => {
                self.change_mut(*id)?
                    .exclude(*node, reason.clone(), *at_ms)
                    .map_err(|e| e.to_string())?;
                if let Some(n) = self.nodes.get_mut(node) {
                    n.health = Health::Fenced {
                        reason: format!("excluded from change {id}: {reason}"),
                    };
                }
            }
            Command::StartMigration {
                spec,
                requested_by,
                at_ms,
            } => {
                let def = self
                    .table
                    .volume(&spec.volume)
                    .ok_or_else(|| format!("there is no volume {:?}", spec.volume))?;
                let layout = spec.layout(def)?;
                if layout != [(spec.vrange(), ChunkHome::Source)] {
                    return Err(format!(
                        "blocks {} of volume {} are not all on {}",
                        spec.vrange(),
                        spec.volume,
                        spec.from
                    ));
                }
                let to = BlockRange::at(spec.to.bstart, spec.blocks);
                for v in &self.table.volumes {
                    for e in &v.extents {
                        let homes = std::iter::once((&e.backend, e.bstart))
                            .chain(e.mirror.iter().map(|m| (&m.backend, m.bstart)));
                        for (b, start) in homes {
                            if *b == spec.to.backend
                                && BlockRange::at(start, e.blocks).overlaps(&to)
                            {
                                return Err(format!(
                                    "blocks {to} of {} already hold blocks of volume {}",
                                    spec.to.backend, v.name
                                ));
                            }
                        }
                    }
                }
                let id = self.migrations.start(spec, *requested_by, *at_ms)?;
                return Ok(Outcome::MigrationStarted(id));
            }
            Command::SetMigrationState {
                id,
                state,
                reason,
                at_ms,
            } => self
                .migrations
                .set_state(*id, *state, reason.clone(), *at_ms)?,
            Command::MigrationProgress {
                id,
                progress,
                at_ms,
            } => self.migrations.progress(*id, progress, *at_ms)?,
        }
        Ok(Outcome::Ok)
    }

    fn advance(
        &mut self,
        id: ChangeId,
        to: Phase,
        reason: Option<String>,
        at_ms: u64,
    ) -> Result<(), String> {
        let rec = self.change_mut(id)?;
        rec.check_transition(to).map_err(|e| e.to_string())?;
        let from = rec.phase();
        let changeset = rec.changeset.clone();
        let rollback = rec.rollback.clone();
        // Table side effects first, so a failure refuses the whole transition.
        let new_table = match (from, to) {
            (_, Phase::Switched) => {
                let new = self.apply_checked(&changeset)?;
                let mut inverse = MappingTable::diff(&new, &self.table);
                inverse.base_epoch = new.epoch;
                Some((new, Some(inverse)))
            }
            (Phase::Switched, Phase::RolledBack) => {
                let inverse =
                    rollback.ok_or_else(|| format!("change {id} has no rollback recorded"))?;
                Some((self.apply_checked(&inverse)?, None))
            }
            _ => None,
        };
        let rec = self.change_mut(id)?;
        rec.transition(to, reason, at_ms)
            .map_err(|e: ChangeError| e.to_string())?;
        if let Some((table, inverse)) = new_table {
            if inverse.is_some() {
                rec.rollback = inverse;
            }
            self.table = table;
        }
        if to.is_terminal() {
            self.active_change = None;
            self.trim_history();
        }
        Ok(())
    }

    fn change_mut(&mut self, id: ChangeId) -> Result<&mut ChangeRecord, String> {
        self.changes
            .get_mut(&id)
            .ok_or_else(|| format!("change {id} is not in the change log"))
    }

    fn create_volume(&mut self, def: &VolumeDef, exports: &[Export]) -> Result<(), String> {
        self.no_active_change()?;
        if self.table.volume(&def.name).is_some() {
            return Err(format!("volume {:?} already exists", def.name));
        }
        // The blocks an unfinished migration copies to are taken, though no extent
        // maps them yet.
        for m in self.migrations.active() {
            let to = BlockRange::at(m.spec.to.bstart, m.spec.blocks);
            for e in &def.extents {
                if e.backend == m.spec.to.backend
                    && BlockRange::at(e.bstart, e.blocks).overlaps(&to)
                {
                    return Err(format!(
                        "blocks {to} of {} are the destination of migration {}",
                        m.spec.to.backend, m.id
                    ));
                }
            }
        }
        let mut t = self.table.clone();
        t.volumes.push(def.clone());
        t.epoch += 1;
        let t = t.normalized();
        t.validate().map_err(|e| e.to_string())?;
        let mut catalog = self.catalog.clone();
        for e in exports {
            if e.volume != def.name {
                return Err(format!(
                    "an export of new volume {:?} names volume {:?}",
                    def.name, e.volume
                ));
            }
            catalog.export(e)?;
        }
        catalog.version += 1;
        self.table = t;
        self.catalog = catalog;
        Ok(())
    }

    fn no_active_change(&self) -> Result<(), String> {
        match self.active() {
            Some(c) => Err(format!(
                "change {} is in progress ({}); wait for it to finish or roll it back",
                c.id,
                c.phase()
            )),
            None => Ok(()),
        }
    }

    fn check_epoch(&self, expected: u64) -> Result<(), String> {
        if expected != self.table.epoch {
            return Err(format!(
                "the table is at epoch {}, not {expected}; re-read it and retry",
                self.table.epoch
            ));
        }
        Ok(())
    }

    fn apply_checked(&self, cs: &Changeset) -> Result<MappingTable, String> {
        let t = self.table.apply(cs).map_err(|e| e.to_string())?;
        t.validate().map_err(|e| e.to_string())?;
        Ok(t)
    }

    fn trim_history(&mut self) {
        let finished: Vec<ChangeId> = self
            .changes
            .keys()
            .copied()
            .filter(|id| Some(*id) != self.active_change)
            .collect();
        if finished.len() > CHANGE_HISTORY {
            for id in &finished[..finished.len() - CHANGE_HISTORY] {
                self.changes.remove(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use volume::{Extent, HolePolicy, VolumeDef};

    fn vol(backend: &str) -> VolumeDef {
        VolumeDef {
            name: "db01".into(),
            wwn: "naa.6001405f0e1d2c3b4a5968778695a4b3".into(),
            block_size: 512,
            blocks: 1024,
            holes: HolePolicy::Zero,
            extents: vec![Extent {
                vstart: 0,
                blocks: 1024,
                backend: backend.into(),
                bstart: 0,
                mirror: None,
            }],
        }
    }

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        for id in [1, 2] {
            s.apply(&Command::RegisterNode(NodeInfo::voter(
                id,
                "n",
                "x:1",
                vec![],
            )));
        }
        s.apply(&Command::RegisterNode(NodeInfo::witness(3, "w", "x:3")));
        let mut t = MappingTable::new(0);
        t.volumes.push(vol("a/lun0"));
        assert_eq!(
            s.apply(&Command::ReplaceTable {
                expected_epoch: 0,
                table: t
            }),
            Outcome::Ok
        );
        s
    }

    fn advance(s: &mut ClusterState, id: ChangeId, to: Phase) -> Outcome {
        s.apply(&Command::AdvanceChange {
            id,
            to,
            reason: None,
            at_ms: 0,
            acks: Vec::new(),
        })
    }

    fn ack_all(s: &mut ClusterState, id: ChangeId, phase: Phase) {
        for node in [1, 2] {
            let o = s.apply(&Command::AckChange {
                id,
                node,
                phase,
                at_ms: 0,
            });
            assert_eq!(o, Outcome::Ok);
        }
    }

    #[test]
    fn direct_acknowledgements_ride_on_the_transition() {
        let mut s = state();
        let mut new = s.table.clone();
        new.volumes[0].extents[0].backend = "b/lun0".into();
        let cs = MappingTable::diff(&s.table, &new);
        let Outcome::ChangeBegun(id) = s.apply(&Command::BeginChange {
            copy_data: false,
            migration: None,
            changeset: cs,
            requested_by: 1,
            at_ms: 0,
        }) else {
            panic!("not begun")
        };
        assert_eq!(advance(&mut s, id, Phase::Staged), Outcome::Ok);
        let with = |acks: Vec<(NodeId, u64)>| Command::AdvanceChange {
            id,
            to: Phase::Quiescing,
            reason: None,
            at_ms: 9,
            acks,
        };
        // One of two: refused, and the one acknowledgement is not kept either.
        let before = s.clone();
        assert!(
            matches!(s.apply(&with(vec![(1, 5)])), Outcome::Refused(r) if r.contains("waiting for acknowledgements from nodes [2]"))
        );
        let mut b = before.clone();
        b.applied_index = s.applied_index;
        assert_eq!(s, b);
        // Both (a duplicate and a non-participant ignored): the change moves on, and the
        // timeline has each node's acknowledgement with its time.
        assert_eq!(
            s.apply(&with(vec![(1, 5), (2, 6), (1, 7), (3, 8)])),
            Outcome::Ok
        );
        let rec = s.active().unwrap();
        assert_eq!(rec.phase(), Phase::Quiescing);
        let acked: Vec<(Option<NodeId>, u64)> = rec
            .timeline
            .iter()
            .filter(|t| t.what.contains("acknowledged"))
            .map(|t| (t.node, t.at_ms))
            .collect();
        assert_eq!(acked, vec![(Some(1), 5), (Some(2), 6)]);
    }

    #[test]
    fn change_commits_at_switch_and_rolls_back_with_a_new_epoch() {
        let mut s = state();
        let old = s.table.clone();
        let mut new = old.clone();
        new.volumes[0].extents[0].backend = "b/lun0".into();
        let cs = MappingTable::diff(&old, &new);
        let Outcome::ChangeBegun(id) = s.apply(&Command::BeginChange {
            copy_data: false,
            migration: None,
            changeset: cs.clone(),
            requested_by: 2,
            at_ms: 0,
        }) else {
            panic!("not begun")
        };
        // The witness is not a participant.
        assert_eq!(s.active().unwrap().participants, [1, 2].into());
        // A second change, or a direct table change, is refused meanwhile.
        assert!(matches!(
            s.apply(&Command::BeginChange {
                copy_data: false,
                migration: None,
                changeset: cs.clone(),
                requested_by: 2,
                at_ms: 0
            }),
            Outcome::Refused(_)
        ));
        assert!(matches!(
            s.apply(&Command::ApplyChangeset(cs.clone())),
            Outcome::Refused(_)
        ));
        assert_eq!(advance(&mut s, id, Phase::Staged), Outcome::Ok);
        ack_all(&mut s, id, Phase::Staged);
        assert_eq!(advance(&mut s, id, Phase::Quiescing), Outcome::Ok);
        assert_eq!(s.table.epoch, 1);
        // Switch before every drain ack: refused, table unchanged.
        s.apply(&Command::AckChange {
            id,
            node: 1,
            phase: Phase::Quiescing,
            at_ms: 0,
        });
        assert!(
            matches!(advance(&mut s, id, Phase::Switched), Outcome::Refused(r) if r.contains("[2]"))
        );
        assert_eq!(s.table.epoch, 1);
        ack_all(&mut s, id, Phase::Quiescing);
        assert_eq!(advance(&mut s, id, Phase::Switched), Outcome::Ok);
        assert_eq!(s.table.epoch, 2);
        assert_eq!(s.table.volumes[0].extents[0].backend, "b/lun0");
        // A switch failed somewhere: roll back to the old mapping, at a new epoch.
        assert_eq!(advance(&mut s, id, Phase::RolledBack), Outcome::Ok);
        assert_eq!(s.table.epoch, 3);
        assert_eq!(s.table.volumes, old.volumes);
        assert_eq!(s.active_change, None);
        // A stale changeset (made against epoch 1) no longer applies.
        assert!(matches!(
            s.apply(&Command::ApplyChangeset(cs)),
            Outcome::Refused(r) if r.contains("epoch")
        ));
    }

    #[test]
    fn exclusion_fences_and_pr_cas() {
        let mut s = state();
        let mut new = s.table.clone();
        new.volumes[0].blocks = 2048;
        let cs = MappingTable::diff(&s.table, &new);
        let Outcome::ChangeBegun(id) = s.apply(&Command::BeginChange {
            copy_data: false,
            migration: None,
            changeset: cs,
            requested_by: 1,
            at_ms: 0,
        }) else {
            panic!()
        };
        s.apply(&Command::ExcludeFromChange {
            id,
            node: 2,
            reason: "no answer in 5s".into(),
            at_ms: 0,
        });
        assert!(matches!(s.nodes[&2].health, Health::Fenced { .. }));
        assert_eq!(s.serving_nodes(), [1].into());

        let pr = PrState {
            generation: 1,
            ..Default::default()
        };
        let set = |v| Command::SetPr {
            lu: "db01".into(),
            expected_version: v,
            state: pr.clone(),
            by: 1,
            attentions: Vec::new(),
            abort: false,
        };
        assert_eq!(s.apply(&set(Some(0))), Outcome::Ok);
        assert!(matches!(s.apply(&set(Some(0))), Outcome::Refused(_)));
        assert_eq!(s.apply(&set(Some(1))), Outcome::Ok);
        assert_eq!(s.pr["db01"].version, 2);
        let snap: scsi::PrSnapshot = (&s.pr["db01"].state).into();
        assert_eq!(PrState::from(&snap), pr);
    }

    fn refused(o: Outcome) -> String {
        match o {
            Outcome::Refused(r) => r,
            o => panic!("not refused: {o:?}"),
        }
    }

    #[test]
    fn volumes_are_created_exported_and_deleted() {
        let mut s = state();
        let mut v = vol("a/lun0");
        v.name = "db02".into();
        v.wwn = "naa.6001405f0e1d2c3b4a5968778695a4b4".into();
        let ex = |lun, volume: &str| Export {
            target: "iqn.2026-11.org.example:t".into(),
            lun,
            volume: volume.into(),
        };
        // Blocks db01 uses.
        let r = refused(s.apply(&Command::CreateVolume {
            def: v.clone(),
            exports: vec![],
        }));
        assert!(r.contains("overlap") || r.contains("db01"), "{r}");
        v.extents[0].bstart = 1024;
        let before = s.clone();
        // An export with a bad target refuses the whole command.
        let mut bad = ex(0, "db02");
        bad.target = "no name".into();
        refused(s.apply(&Command::CreateVolume {
            def: v.clone(),
            exports: vec![bad],
        }));
        assert_eq!(s, before);
        let epoch = s.table.epoch;
        assert_eq!(
            s.apply(&Command::CreateVolume {
                def: v.clone(),
                exports: vec![ex(0, "db02")],
            }),
            Outcome::Ok
        );
        assert_eq!(s.table.epoch, epoch + 1);
        assert!(s.table.volume("db02").is_some());
        let r = refused(s.apply(&Command::CreateVolume {
            def: v.clone(),
            exports: vec![],
        }));
        assert!(r.contains("already exists"), "{r}");
        let r = refused(s.apply(&Command::Export(ex(0, "db01"))));
        assert!(r.contains("already shows volume \"db02\""), "{r}");
        assert_eq!(s.apply(&Command::Export(ex(1, "db01"))), Outcome::Ok);
        let r = refused(s.apply(&Command::Export(ex(2, "nope"))));
        assert!(r.contains("no volume"), "{r}");
        s.pr.insert("k2".into(), PrRecord::default());
        assert_eq!(
            s.apply(&Command::DeleteVolume {
                name: "db02".into(),
                pr_key: Some("k2".into()),
            }),
            Outcome::Ok
        );
        assert!(s.table.volume("db02").is_none() && !s.pr.contains_key("k2"));
        assert_eq!(s.catalog.exports().count(), 1);
        let r = refused(s.apply(&Command::DeleteVolume {
            name: "db02".into(),
            pr_key: None,
        }));
        assert!(r.contains("no volume"), "{r}");
    }
}
