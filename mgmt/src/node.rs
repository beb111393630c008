//! What a node must provide to be managed: [`NodeApi`]. The REST server
//! ([`crate::server`]) is written against this trait only; the `switchyard` binary
//! implements it over its running pieces, and the cluster will implement it over the
//! replicated state (answering for every node, forwarding changes to the leader).

use std::sync::Arc;

use axum::http::StatusCode;
use volume::MappingTable;

use crate::journal::Journal;
use crate::model::{
    AddBackendRequest, BackendView, CreateVolumeRequest, ErrorBody, ExportView, FaultRequest,
    MetricsSnapshot, MigrateRequest, MigrationAction, MigrationView, NodeStateRequest, NodeStatus,
    NodeView, RemapRequest, SessionView, TargetView, ValidationReport, VolumeView, ZoningRequest,
    ZoningView,
};

/// A management request that failed: an HTTP status, a message and advice.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Box<ErrorBody>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>, hint: impl Into<String>) -> ApiError {
        let hint = hint.into();
        ApiError {
            status,
            body: Box::new(ErrorBody {
                error: error.into(),
                hint: (!hint.is_empty()).then_some(hint),
                problems: Vec::new(),
                change: None,
            }),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(error: impl Into<String>, hint: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error, hint)
    }

    /// 404: no such volume, change, ...
    pub fn not_found(error: impl Into<String>, hint: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, error, hint)
    }

    /// 409: the request conflicts with the node's state (another change running, stale
    /// epoch).
    pub fn conflict(error: impl Into<String>, hint: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, error, hint)
    }

    /// 422: well-formed but invalid (the mapping does not validate); every problem is
    /// listed.
    pub fn invalid(error: impl Into<String>, problems: Vec<String>) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            error,
            "fix every problem listed and send the request again; nothing was changed",
        );
        e.body.problems = problems;
        e
    }

    pub fn with_change(mut self, change: crate::model::ChangeRecord) -> ApiError {
        self.body.change = Some(change);
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.body.error)?;
        for p in &self.body.problems {
            write!(f, "\n  - {p}")?;
        }
        if let Some(h) = &self.body.hint {
            write!(f, "\nhint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

fn not_a_member(what: &str) -> ApiError {
    ApiError::not_found(
        format!("this node is not a cluster member; {what} are run by the cluster"),
        "add a [cluster] section (one member is enough) and restart the node",
    )
}

/// The management view of one node. Methods are synchronous and cheap (they read the
/// node's state); [`NodeApi::start_remap`] only validates and starts the change, which
/// runs on its own thread and reports through the [`Journal`].
pub trait NodeApi: Send + Sync + 'static {
    /// Name, version, uptime, portals, leader, health, counters.
    fn status(&self) -> NodeStatus;
    /// Host sessions logged in to this node.
    fn sessions(&self) -> Vec<SessionView>;
    /// Targets and their LUNs.
    fn targets(&self) -> Vec<TargetView>;
    /// Back-end arrays and stores with their LUs.
    fn backends(&self) -> Vec<BackendView>;
    /// Virtual volumes with their live extent maps.
    fn volumes(&self) -> Vec<VolumeView>;
    /// One volume.
    fn volume(&self, name: &str) -> Option<VolumeView> {
        self.volumes().into_iter().find(|v| v.name == name)
    }
    /// The mapping table as served now.
    fn mapping(&self) -> MappingTable;
    /// Check a whole table (structure and against this node's back-ends) and describe
    /// what applying it would change. Changes nothing.
    fn validate_mapping(&self, table: &MappingTable) -> ValidationReport;
    /// Validate a remap of `volume` and start it. Returns the change id; the change's
    /// progress is in the journal. Errors (unknown volume, invalid extents, another
    /// change running, stale epoch) change nothing.
    fn start_remap(&self, volume: &str, req: RemapRequest) -> Result<u64, ApiError>;
    /// Event log and change records.
    fn journal(&self) -> &Arc<Journal>;
    /// Counters for `/metrics`.
    fn metrics(&self) -> MetricsSnapshot;
    /// Set a cluster member's service state (drain / activate, ALUA state); accepted by
    /// any member, committed by the cluster. May block (called off the runtime).
    fn set_node_state(&self, node: &str, req: NodeStateRequest) -> Result<NodeView, ApiError> {
        let _ = (node, req);
        Err(ApiError::not_found(
            "this node is not a cluster member",
            "node states exist in a cluster: add a [cluster] section",
        ))
    }
    /// Remove a member from the cluster (it stops voting and its registration goes);
    /// the member itself should be stopped first. May block.
    fn remove_node(&self, node: &str) -> Result<(), ApiError> {
        let _ = node;
        Err(ApiError::not_found(
            "this node is not a cluster member",
            "membership exists in a cluster: add a [cluster] section",
        ))
    }
    /// Start an online migration of blocks of `volume` (cluster members). May block.
    fn start_migration(
        &self,
        volume: &str,
        req: MigrateRequest,
    ) -> Result<MigrationView, ApiError> {
        let _ = (volume, req);
        Err(not_a_member("migrations"))
    }
    /// Every migration the cluster remembers (unfinished and recent).
    fn migrations(&self) -> Vec<MigrationView> {
        Vec::new()
    }
    /// Pause, resume or abort migration `id`. May block.
    fn migration_action(
        &self,
        id: u64,
        action: MigrationAction,
    ) -> Result<MigrationView, ApiError> {
        let _ = (id, action);
        Err(not_a_member("migrations"))
    }
    /// Create a volume and export it where asked (cluster members). May block.
    fn create_volume(&self, req: CreateVolumeRequest) -> Result<VolumeView, ApiError> {
        let _ = req;
        Err(not_a_member("online volume creation and deletion"))
    }
    /// Delete a volume. Refused while it is exported, unless `force` (then its exports
    /// go first, and hosts see its LUNs disappear). May block.
    fn delete_volume(&self, name: &str, force: bool) -> Result<(), ApiError> {
        let _ = (name, force);
        Err(not_a_member("online volume creation and deletion"))
    }
    /// Show a volume as a LUN of a target. May block.
    fn export_volume(&self, name: &str, at: ExportView) -> Result<VolumeView, ApiError> {
        let _ = (name, at);
        Err(not_a_member("online exports"))
    }
    /// Stop showing the volume at a target's LUN. May block.
    fn unexport_volume(&self, name: &str, at: ExportView) -> Result<VolumeView, ApiError> {
        let _ = (name, at);
        Err(not_a_member("online exports"))
    }
    /// Add a back-end array: checked by logging in to it, then every data member
    /// logs in and opens its LUs. May block.
    fn add_backend(&self, req: AddBackendRequest) -> Result<BackendView, ApiError> {
        let _ = req;
        Err(not_a_member("back-end arrays added online"))
    }
    /// Remove a back-end array added online (refused while a volume uses it). May
    /// block.
    fn remove_backend(&self, id: &str) -> Result<(), ApiError> {
        let _ = id;
        Err(not_a_member("back-end arrays added online"))
    }
    /// What was configured online, as one document (export/import).
    fn config_doc(&self) -> crate::model::ConfigDoc {
        let z = self.zoning();
        crate::model::ConfigDoc {
            backends: Vec::new(),
            mapping: self.mapping(),
            exports: Vec::new(),
            zoning: (z.source == "cluster").then_some(z.zoning),
        }
    }
    /// The zoning in force.
    fn zoning(&self) -> ZoningView;
    /// Replace the cluster's zoning (cluster members). May block.
    fn set_zoning(&self, req: ZoningRequest) -> Result<ZoningView, ApiError> {
        let _ = req;
        Err(not_a_member("zoning changes"))
    }
    /// Test fault injection; refused unless the node was started for tests.
    fn inject_fault(&self, req: FaultRequest) -> Result<(), ApiError> {
        let _ = req;
        Err(ApiError::not_found(
            "fault injection is off",
            "start the node with SWITCHYARD_TEST_FAULTS=1 (tests only)",
        ))
    }
}
