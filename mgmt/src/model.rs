//! What the management API returns and accepts: plain serde types, shaped around the
//! cluster's concepts (nodes, back-ends, volumes, sessions, changes, events) so that
//! the same documents describe one node today and a cluster later.

use serde::{Deserialize, Serialize};
use volume::{BlockRange, Extent, HolePolicy};

/// One node: `GET /api/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    /// The node's name (`[node] name`).
    pub name: String,
    /// The switchyard version the node runs.
    pub version: String,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// Unix time (seconds) the node started.
    pub started_at: u64,
    /// iSCSI portals (`ip:port`) actually bound, with their portal group tags.
    pub portals: Vec<PortalView>,
    /// The node that leads changes. A single node leads itself.
    pub leader: String,
    /// The nodes of the cluster as this node knows them (itself when stand-alone).
    pub nodes: Vec<NodeView>,
    /// `ok`, or `degraded` when a back-end is reconnecting.
    pub health: String,
    /// Epoch of the mapping table the node serves.
    pub epoch: u64,
    /// Counters since start.
    pub counters: Counters,
}

/// An iSCSI portal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PortalView {
    pub address: String,
    pub tpgt: u16,
}

/// A member of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeView {
    pub name: String,
    /// `up` (answers), `draining`, `fenced` or `unreachable`.
    pub state: String,
    /// The management URL of the node, when known.
    pub api: Option<String>,
    pub is_self: bool,
    /// `[cluster] id` (absent for a stand-alone node).
    #[serde(default)]
    pub id: Option<u64>,
    /// `data` (serves I/O) or `witness` (votes only).
    #[serde(default)]
    pub role: String,
    /// Leads changes now.
    #[serde(default)]
    pub is_leader: bool,
    /// ALUA state of the node's target port group, e.g. `active-optimized`.
    #[serde(default)]
    pub alua: Option<String>,
    /// Milliseconds since this node last heard from it.
    #[serde(default)]
    pub last_contact_ms: Option<u64>,
    /// Its iSCSI portals.
    #[serde(default)]
    pub portals: Vec<String>,
    /// Cluster management (node-to-node) address.
    #[serde(default)]
    pub mgmt_addr: Option<String>,
}

/// Node-wide counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    pub commands: u64,
    pub logins: u64,
    pub login_failures: u64,
    pub sessions: u64,
    pub backend_errors: u64,
    /// Bytes this node read and wrote to copy data (remaps and migration windows).
    #[serde(default)]
    pub copy_node_bytes: u64,
    /// Bytes back-end arrays copied for this node (EXTENDED COPY); none passed through it.
    #[serde(default)]
    pub copy_offloaded_bytes: u64,
}

/// A host's iSCSI session: `GET /api/v1/sessions`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionView {
    /// The node that serves the session.
    pub node: String,
    pub initiator: String,
    /// `0x` + 12 hex digits.
    pub isid: String,
    /// `None` for a discovery session.
    pub target: Option<String>,
    pub tsih: u16,
    /// The portal address the host connected to.
    pub portal: String,
}

/// A target and its LUNs: `GET /api/v1/targets`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TargetView {
    pub name: String,
    pub alias: Option<String>,
    /// Whether CHAP is required (secrets are never shown).
    pub chap: bool,
    pub luns: Vec<LunView>,
}

/// One LUN of a target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LunView {
    pub lun: u16,
    /// `naa.` + hex.
    pub wwn: String,
    /// `volume` (a virtual volume) or `file` (a file or block device).
    pub kind: String,
    /// The volume name or the file path.
    pub backing: String,
    pub block_size: u32,
    pub blocks: u64,
    pub read_only: bool,
}

/// A back-end: a remote array or a local store: `GET /api/v1/backends`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendView {
    pub id: String,
    /// `array` (a remote iSCSI target) or `store` (a local file or device).
    pub kind: String,
    /// Portal of the array (`ip:port`); the path of a store.
    pub address: String,
    /// The array's target name; `None` for a store.
    pub target: Option<String>,
    /// `connected`, `reconnecting` or (for a store) `online`.
    pub state: String,
    /// Logins to the array so far (reconnects add one each).
    pub logins: u64,
    pub lus: Vec<BackendLuView>,
}

/// `POST /api/v1/backends`: add a back-end array (cluster members: every data member
/// logs in to it).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AddBackendRequest {
    /// Its LUs are named `<id>/lun<N>`.
    pub id: String,
    /// `ip:port` of the array's portal.
    pub portal: String,
    /// The array's target name.
    pub target: String,
    #[serde(default)]
    pub chap_username: Option<String>,
    #[serde(default)]
    pub chap_secret: Option<String>,
    /// The members' initiator name towards the array (default: derived from each
    /// member's name, `iqn.2026-11.org.switchyard:<name>`).
    #[serde(default)]
    pub initiator_name: Option<String>,
    /// Sessions per member (default 1).
    #[serde(default)]
    pub sessions: Option<usize>,
    /// Commands in flight per session (default 32).
    #[serde(default)]
    pub queue_depth: Option<usize>,
    /// Per-command timeout, seconds (default 15).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

impl std::fmt::Debug for AddBackendRequest {
    // The CHAP secret is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddBackendRequest")
            .field("id", &self.id)
            .field("portal", &self.portal)
            .field("target", &self.target)
            .field("chap_username", &self.chap_username)
            .finish_non_exhaustive()
    }
}

/// One LU of a back-end, as the mapping table names it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendLuView {
    /// The id extents use (`<backend>/lun<N>` or the store id).
    pub id: String,
    pub block_size: u32,
    pub blocks: u64,
    pub capacity_bytes: u64,
    /// Blocks the mapping table maps onto this LU.
    pub mapped_blocks: u64,
    pub state: String,
    pub io: IoCounters,
}

/// I/O counters of a volume or a back-end LU.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IoCounters {
    pub reads: u64,
    pub writes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub errors: u64,
}

/// A virtual volume with its extent map: `GET /api/v1/volumes[/{name}]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeView {
    pub name: String,
    pub wwn: String,
    pub block_size: u32,
    pub blocks: u64,
    pub holes: HolePolicy,
    /// Epoch of the table the volume serves I/O from.
    pub epoch: u64,
    /// Where the volume is served: `target` and `lun`.
    pub exports: Vec<ExportView>,
    /// The live extent map, sorted by virtual start, holes included.
    pub map: Vec<MapSegment>,
    /// Ranges held right now by a change.
    pub held: Vec<BlockRange>,
    pub io: IoCounters,
}

/// Where a volume is served.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExportView {
    pub target: String,
    pub lun: u16,
}

/// A run of a volume's blocks: an extent on a back-end LU or a hole.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MapSegment {
    pub vstart: u64,
    pub blocks: u64,
    /// `None` for a hole.
    pub backend: Option<String>,
    pub bstart: Option<u64>,
    /// A mirrored extent's second home (`LU@lba`): writes go there too (a migration
    /// keeps its source so while it copies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
}

/// `POST /api/v1/volumes`: create a volume (cluster members). Nothing moves: the
/// extents name blocks of back-end LUs that no other volume uses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeRequest {
    pub name: String,
    /// `naa.` + 16 or 32 hex digits; default: a locally assigned NAA derived from the
    /// name and the creation time.
    #[serde(default)]
    pub wwn: Option<String>,
    /// Default: the block size of the first extent's LU (512 without extents).
    #[serde(default)]
    pub block_size: Option<u32>,
    /// Size in blocks; default: where the last extent ends.
    #[serde(default)]
    pub blocks: Option<u64>,
    /// What reads of unmapped blocks do (default `zero`).
    #[serde(default)]
    pub holes: Option<HolePolicy>,
    #[serde(default)]
    pub extents: Vec<Extent>,
    /// Where to show it at once (a volume can also be exported later).
    #[serde(default)]
    pub exports: Vec<ExportView>,
}

/// `GET /api/v1/config`: what an admin configured online, as one document
/// (`switchyard config export` writes it as TOML; `config import` applies one).
/// CHAP secrets of back-ends are never exported; an import file may carry them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigDoc {
    /// Back-end arrays added online (a node's own `[[backend]]`s are not listed).
    #[serde(default)]
    pub backends: Vec<BackendDoc>,
    /// The volumes (the mapping table).
    #[serde(default = "empty_table")]
    pub mapping: volume::MappingTable,
    /// Volumes shown as LUNs of targets (online exports; a node's own
    /// `[[target.lun]] volume = …` entries are not listed).
    #[serde(default)]
    pub exports: Vec<ExportDoc>,
    /// The cluster's zoning; absent: each node's own `[zoning]`.
    #[serde(default)]
    pub zoning: Option<fcwwn::Masking>,
}

fn empty_table() -> volume::MappingTable {
    volume::MappingTable::new(0)
}

/// A back-end array in a [`ConfigDoc`].
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendDoc {
    pub id: String,
    pub portal: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap_username: Option<String>,
    /// Only in import files: never exported.
    #[serde(default, skip_serializing)]
    pub chap_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator_name: Option<String>,
    pub sessions: usize,
    pub queue_depth: usize,
    pub timeout_secs: u64,
}

impl std::fmt::Debug for BackendDoc {
    // The CHAP secret is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendDoc")
            .field("id", &self.id)
            .field("portal", &self.portal)
            .field("target", &self.target)
            .field("chap_username", &self.chap_username)
            .finish_non_exhaustive()
    }
}

/// An export in a [`ConfigDoc`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct ExportDoc {
    pub target: String,
    pub lun: u16,
    pub volume: String,
}

/// `GET /api/v1/zoning`: the zoning (LUN masking) in force.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ZoningView {
    /// `cluster` (set through the API, on every member) or `config` (this node's
    /// `[zoning]` section; no zoning was set through the API).
    pub source: String,
    /// What `PUT /api/v1/zoning` must name as `expected_version`.
    pub version: u64,
    pub zoning: fcwwn::Masking,
}

/// `PUT /api/v1/zoning`: replace the cluster's zoning.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ZoningRequest {
    /// The version read from `GET /api/v1/zoning` (optimistic locking).
    pub expected_version: u64,
    /// The new zoning; `null`: back to each node's own `[zoning]` section.
    pub zoning: Option<fcwwn::Masking>,
}

/// `POST /api/v1/volumes/{name}/remap`: the volume's new extent list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemapRequest {
    /// The complete new extent list of the volume.
    pub extents: Vec<Extent>,
    /// Refuse the change unless the table is still at this epoch (optimistic locking).
    #[serde(default)]
    pub expect_epoch: Option<u64>,
    /// How long to wait for in-flight I/O in the affected ranges (ms).
    #[serde(default)]
    pub drain_timeout_ms: Option<u64>,
    /// Grow the volume to this many blocks (the new blocks need extents or read as
    /// the volume's holes). Shrinking online is refused.
    #[serde(default)]
    pub blocks: Option<u64>,
    /// Copy the data of ranges whose home moves, under the hold (default true). False:
    /// the new homes already hold the data (another path to the same LU) or the
    /// ranges hold no live data.
    #[serde(default)]
    pub copy: Option<bool>,
}

/// `POST /api/v1/volumes/{name}/migrate`: move blocks of a volume to another back-end
/// LU while hosts use it (cluster members only).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// The destination back-end LU (an id of `GET /api/v1/backends`).
    pub to: String,
    /// First block on the destination (default 0).
    #[serde(default)]
    pub at: Option<u64>,
    /// First virtual block moved (default 0).
    #[serde(default)]
    pub vstart: Option<u64>,
    /// Blocks moved (default: to the end of the extent that holds `vstart`).
    #[serde(default)]
    pub blocks: Option<u64>,
    /// MiB per window (one short hold each; default 16, at most 64).
    #[serde(default)]
    pub window_mib: Option<u32>,
    /// Copy rate cap in MiB/s (default 200; 0 for none).
    #[serde(default)]
    pub max_rate_mib_s: Option<u32>,
    /// Copy rate floor in MiB/s: kept however busy hosts are (default 20).
    #[serde(default)]
    pub min_rate_mib_s: Option<u32>,
    /// UNMAP the source blocks once the destination is the only home (default false).
    #[serde(default)]
    pub release_source: Option<bool>,
    /// `auto` (EXTENDED COPY on the array when it can, else the nodes) or `node`.
    #[serde(default)]
    pub engine: Option<String>,
}

/// `POST /api/v1/migrations/{id}/{action}`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MigrationAction {
    Pause,
    Resume,
    Abort,
}

/// A run of a migration's chunks in one state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkRun {
    /// First virtual block.
    pub vstart: u64,
    pub blocks: u64,
    /// `not-copied` (on the source only), `copying` (held by the running window),
    /// `copied` (on the destination, writes mirrored to the source), `moved` (on the
    /// destination only).
    pub state: String,
}

/// One migration (`GET /api/v1/migrations`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MigrationView {
    pub id: u64,
    pub volume: String,
    pub vstart: u64,
    pub blocks: u64,
    pub block_size: u32,
    /// `backend@lba`.
    pub from: String,
    pub to: String,
    /// running, paused, finishing, aborting, done, aborted, failed.
    pub state: String,
    pub reason: Option<String>,
    pub copied_blocks: u64,
    /// Of those, copied by the array (EXTENDED COPY).
    pub offloaded_blocks: u64,
    pub percent: f64,
    pub windows: u64,
    pub failures: u32,
    /// Average copy rate since the start, MiB/s.
    pub rate_mib_s: f64,
    /// Estimated seconds to go at that rate.
    pub eta_s: Option<u64>,
    pub window_blocks: u64,
    pub max_rate_mib_s: u32,
    pub min_rate_mib_s: u32,
    pub engine: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// The progress map, as runs of chunks in one state.
    pub chunks: Vec<ChunkRun>,
}

/// The state of a change. A remap goes staged → holding → draining → copying →
/// switched → done; on a failure it is rolled back (`rolled-back`) or, when it failed
/// before anything was staged, `failed`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeState {
    Staged,
    Holding,
    Draining,
    Copying,
    Switched,
    Done,
    RolledBack,
    Failed,
}

impl ChangeState {
    /// No further transitions.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ChangeState::Done | ChangeState::RolledBack | ChangeState::Failed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeState::Staged => "staged",
            ChangeState::Holding => "holding",
            ChangeState::Draining => "draining",
            ChangeState::Copying => "copying",
            ChangeState::Switched => "switched",
            ChangeState::Done => "done",
            ChangeState::RolledBack => "rolled-back",
            ChangeState::Failed => "failed",
        }
    }

    pub const ALL: [ChangeState; 8] = [
        ChangeState::Staged,
        ChangeState::Holding,
        ChangeState::Draining,
        ChangeState::Copying,
        ChangeState::Switched,
        ChangeState::Done,
        ChangeState::RolledBack,
        ChangeState::Failed,
    ];
}

impl std::fmt::Display for ChangeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change to the mapping table and its progress: `GET /api/v1/changes[/{id}]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChangeRecord {
    pub id: u64,
    /// `remap`, or `migration N window` for the remaps a migration runs (each window,
    /// the final switch, the switch back of an abort).
    pub kind: String,
    pub volume: String,
    pub state: ChangeState,
    /// The node leading the change.
    pub leader: String,
    pub from_epoch: u64,
    pub to_epoch: u64,
    /// The virtual ranges the change quiesces.
    pub affected: Vec<BlockRange>,
    /// Blocks whose home moves (copied before the switch).
    pub moved_blocks: u64,
    pub copied_blocks: u64,
    /// How long the affected ranges were held (ms), once released.
    pub hold_ms: Option<u64>,
    pub extents_before: Vec<Extent>,
    pub extents_after: Vec<Extent>,
    /// Unix time in milliseconds.
    pub created_ms: u64,
    pub updated_ms: u64,
    pub error: Option<String>,
    pub hint: Option<String>,
    /// Each state with the time it was entered (unix ms).
    pub history: Vec<StateStamp>,
    /// In a cluster: the change's id in the replicated change log.
    #[serde(default)]
    pub cluster_change: Option<u64>,
    /// In a cluster: every transition and every node's acknowledgement, in order.
    #[serde(default)]
    pub timeline: Vec<TimelineEntry>,
}

/// One step of a cluster change: a transition (`node` absent) or a node's
/// acknowledgement of a phase.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimelineEntry {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    pub node: Option<String>,
    pub what: String,
}

/// A state a change entered, and when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StateStamp {
    pub state: ChangeState,
    pub at_ms: u64,
}

/// One entry of the event log: `GET /api/v1/events`, `GET /api/v1/events/stream`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Increases by one per event; `?since=` takes it.
    pub seq: u64,
    pub time_ms: u64,
    /// `info`, `warn` or `error`.
    pub level: String,
    /// `change`, `progress`, `session`, `backend`, `node`.
    pub kind: String,
    pub node: String,
    pub message: String,
    /// The change this event is about, with its state at the time.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub change: Option<ChangeRecord>,
}

/// `POST /api/v1/mapping/validate` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ValidationReport {
    pub valid: bool,
    pub epoch: u64,
    pub volumes: usize,
    pub problems: Vec<String>,
    /// What applying the table would change, as text (empty when nothing would).
    pub changes: String,
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: String,
    pub hint: Option<String>,
    /// Every problem found, for validation errors.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub problems: Vec<String>,
    /// The change that failed, when there is one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub change: Option<ChangeRecord>,
}

/// Everything `/metrics` exports that the API itself does not count.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    pub counters: Counters,
    pub uptime_secs: u64,
    pub epoch: u64,
    pub volumes: Vec<(String, IoCounters)>,
    pub backends: Vec<(String, IoCounters, bool)>,
    /// Read and write latency per volume: (volume, "read" | "write", histogram).
    pub volume_latency: Vec<(String, &'static str, crate::histogram::HistogramSnapshot)>,
    /// The same per back-end LU.
    pub backend_latency: Vec<(String, &'static str, crate::histogram::HistogramSnapshot)>,
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `POST /api/v1/nodes/{name}/state`: set a cluster member's service state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeStateRequest {
    /// `active` (serve I/O) or `draining` (hosts are moved away: the node's target port
    /// group reports unavailable). Absent: unchanged.
    #[serde(default)]
    pub state: Option<String>,
    /// ALUA state of the node's target port group while active, e.g.
    /// `active-non-optimized` or `standby`. Absent: unchanged.
    #[serde(default)]
    pub alua: Option<String>,
}

/// `POST /api/v1/faults`: test fault injection (only when the node runs with
/// `SWITCHYARD_TEST_FAULTS=1`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    /// Drop all cluster (node-to-node) traffic to and from this node.
    #[serde(default)]
    pub isolate: Option<bool>,
    /// Configure a fault point (the `fail` crate): its name, e.g. `remap::switch` ...
    #[serde(default)]
    pub failpoint: Option<String>,
    /// ... and its actions, e.g. `return`, `2*off->return`, `return(8000)`, or `off`.
    #[serde(default)]
    pub actions: Option<String>,
}
