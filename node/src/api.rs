//! The node's implementation of [`mgmt::NodeApi`]: what the management API sees of a
//! running node (portals, sessions, targets, back-ends, volumes, the mapping table) and
//! the node-local online remap it runs on request.
//!
//! A remap runs the steps of the remap protocol on this node — stage, hold, drain, copy
//! the moved blocks from their old back-end location to the new one, switch, release —
//! and records each state in the [`Journal`], so the API, the CLI and the console can
//! follow it. On any failure the staged table is dropped and held I/O goes on against
//! the old table (rolled back). One change runs at a time.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{BlockError, BlockStore, CawOutcome, IoFuture};
use bytes::Bytes;
use iscsi::server::ServerShared;
use iscsi_initiator::Client;
use mgmt::histogram::{Histogram, HistogramSnapshot, IO_BUCKETS};
use mgmt::model::{
    BackendLuView, BackendView, ChangeRecord, ChangeState, Counters, ExportView, IoCounters,
    LunView, MetricsSnapshot, NodeStatus, NodeView, PortalView, RemapRequest, SessionView,
    TargetView, ValidationReport, VolumeView,
};
use mgmt::{ApiError, Journal, NodeApi, StatusCode};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use volume::{BlockRange, LiveVolume, MappingTable, Registry};

use crate::config::Config;
use crate::moves::{crossing_moves, moves, segments, Move};
use crate::served::{Served, ServedVolume};

/// Default time a remap waits for I/O in flight in the affected ranges: well below the
/// hold wait (10 s), so a remap gives up before held host I/O fails.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// I/O counters of one store (cheap: a few relaxed atomic adds per I/O), with read and
/// write latency histograms.
pub struct IoStats {
    reads: AtomicU64,
    writes: AtomicU64,
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
    errors: AtomicU64,
    read_latency: Histogram,
    write_latency: Histogram,
}

impl Default for IoStats {
    fn default() -> IoStats {
        IoStats {
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            write_bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            read_latency: Histogram::new(IO_BUCKETS),
            write_latency: Histogram::new(IO_BUCKETS),
        }
    }
}

impl IoStats {
    /// Reads plus writes so far.
    pub fn ops(&self) -> u64 {
        self.reads.load(Ordering::Relaxed) + self.writes.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> IoCounters {
        IoCounters {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            write_bytes: self.write_bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    /// Read and write latency: `[("read", ..), ("write", ..)]`.
    fn latency(&self) -> [(&'static str, HistogramSnapshot); 2] {
        [
            ("read", self.read_latency.snapshot()),
            ("write", self.write_latency.snapshot()),
        ]
    }

    fn count<T>(&self, r: Result<T, BlockError>) -> Result<T, BlockError> {
        if r.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

/// A [`BlockStore`] that counts the I/O passing through it.
pub struct Counted {
    inner: Arc<dyn BlockStore>,
    stats: Arc<IoStats>,
}

impl BlockStore for Counted {
    blockdev::forward_to!(inner: block_size, num_blocks, capabilities, lba_status);
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats
            .read_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        let t = Instant::now();
        let r = self.inner.read(lba, buf);
        self.stats.read_latency.observe(t.elapsed());
        self.stats.count(r)
    }
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), BlockError> {
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .write_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let t = Instant::now();
        let r = self.inner.write(lba, data, fua);
        self.stats.write_latency.observe(t.elapsed());
        self.stats.count(r)
    }
    fn flush(&self) -> Result<(), BlockError> {
        self.stats.count(self.inner.flush())
    }
    fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BlockError> {
        self.stats.count(self.inner.unmap(lba, blocks))
    }
    fn compare_and_write(
        &self,
        lba: u64,
        compare: &[u8],
        write: &[u8],
        fua: bool,
    ) -> Result<CawOutcome, BlockError> {
        let r = self.inner.compare_and_write(lba, compare, write, fua);
        if matches!(r, Err(BlockError::Unsupported(_))) {
            // Refused, nothing done: the caller emulates with counted reads and writes.
            return r;
        }
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .write_bytes
            .fetch_add(write.len() as u64, Ordering::Relaxed);
        self.stats.count(r)
    }
    fn supports_compare_and_write(&self) -> bool {
        self.inner.supports_compare_and_write()
    }
    fn inline_ok(&self) -> bool {
        self.inner.inline_ok()
    }
    fn async_ok(&self) -> bool {
        self.inner.async_ok()
    }
    fn read_async(self: Arc<Self>, lba: u64, blocks: u32) -> Option<IoFuture<Vec<u8>>> {
        let io = self.inner.clone().read_async(lba, blocks)?;
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats.read_bytes.fetch_add(
            u64::from(blocks) * u64::from(self.inner.block_size()),
            Ordering::Relaxed,
        );
        let t = Instant::now();
        Some(Box::pin(async move {
            let r = io.await;
            self.stats.read_latency.observe(t.elapsed());
            self.stats.count(r)
        }))
    }
    fn write_async(self: Arc<Self>, lba: u64, data: Bytes, fua: bool) -> Option<IoFuture<()>> {
        let len = data.len() as u64;
        let io = self.inner.clone().write_async(lba, data, fua)?;
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        self.stats.write_bytes.fetch_add(len, Ordering::Relaxed);
        let t = Instant::now();
        Some(Box::pin(async move {
            let r = io.await;
            self.stats.write_latency.observe(t.elapsed());
            self.stats.count(r)
        }))
    }
}

pub(crate) fn counted(store: Arc<dyn BlockStore>) -> (Arc<dyn BlockStore>, Arc<IoStats>) {
    let stats = Arc::new(IoStats::default());
    let c: Arc<dyn BlockStore> = Arc::new(Counted {
        inner: store,
        stats: stats.clone(),
    });
    (c, stats)
}

/// A back-end as management sees it.
struct Backend {
    id: String,
    /// `Some` for a remote array.
    client: Option<Client>,
    address: String,
    target: Option<String>,
    lus: Vec<(String, Arc<dyn BlockStore>, Arc<IoStats>)>,
}

/// What `build` hands to management: the back-end LUs and volumes (counted), the
/// registry and the mapping table. Clones share the back-ends, volumes and registry.
#[derive(Clone, Default)]
pub struct Managed {
    /// Shared by every clone: back-ends added online join it.
    backends: Arc<Mutex<Vec<Backend>>>,
    volumes: Arc<Served>,
    registry: Registry,
    /// The remote LUs among the back-ends, for copy offload.
    offload: crate::moves::Offload,
    mapping: Option<MappingTable>,
}

impl Managed {
    /// Remember remote LU `id` for copy offload (EXTENDED COPY on its array).
    pub fn offload_lu(&self, id: &str, store: Arc<iscsi_initiator::RemoteStore>) {
        self.offload.insert(id, store);
    }

    /// Forget back-end array `id` (added online, now removed): its LUs leave the
    /// registry, the view and the offload map; its sessions close once unused.
    pub fn remove_backend(&self, id: &str) {
        let gone = {
            let mut b = self.backends.lock();
            let pos = b.iter().position(|x| x.id == id);
            pos.map(|i| b.remove(i))
        };
        if let Some(b) = gone {
            for (lu, _, _) in &b.lus {
                self.registry.remove(lu);
                self.offload.remove(lu);
            }
        }
    }

    /// The remote LUs, for copy offload.
    pub fn offload(&self) -> crate::moves::Offload {
        self.offload.clone()
    }

    /// A local store LU; returns the store to put in the registry (counted).
    pub fn store_lu(
        &self,
        id: &str,
        path: &Path,
        store: Arc<dyn BlockStore>,
    ) -> Arc<dyn BlockStore> {
        let (c, stats) = counted(store);
        self.backends.lock().push(Backend {
            id: id.to_string(),
            client: None,
            address: path.display().to_string(),
            target: None,
            lus: vec![(id.to_string(), c.clone(), stats)],
        });
        c
    }

    /// An LU of a remote array; returns the store to put in the registry (counted).
    pub fn remote_lu(
        &self,
        backend: &str,
        portal: &str,
        target: &str,
        lu_id: &str,
        client: &Client,
        store: Arc<dyn BlockStore>,
    ) -> Arc<dyn BlockStore> {
        let (c, stats) = counted(store);
        let mut backends = self.backends.lock();
        let i = match backends.iter().position(|b| b.id == backend) {
            Some(i) => i,
            None => {
                backends.push(Backend {
                    id: backend.to_string(),
                    client: Some(client.clone()),
                    address: portal.to_string(),
                    target: Some(target.to_string()),
                    lus: Vec::new(),
                });
                backends.len() - 1
            }
        };
        backends[i].lus.push((lu_id.to_string(), c.clone(), stats));
        c
    }

    /// A virtual volume; returns the store the LU serves (counted).
    pub fn volume(&mut self, live: Arc<LiveVolume>) -> Arc<dyn BlockStore> {
        let sv = ServedVolume::new(live);
        let c = sv.store.clone();
        self.volumes.insert(sv);
        c
    }

    /// The served volumes (shared with the remap participant, the migration driver
    /// and the catalog).
    pub fn served(&self) -> Arc<Served> {
        self.volumes.clone()
    }

    /// The back-end registry (a copy: the stores are shared).
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// The registry remaps resolve against, and the table the node starts with.
    pub fn set_mapping(&mut self, table: MappingTable, registry: Registry) {
        self.mapping = Some(table);
        self.registry = registry;
    }
}

/// What the config says backs each LUN: (normalised target name, LUN) -> (kind,
/// backing). LUNs exported online are volumes of the cluster's catalog.
type Backing = HashMap<(String, u16), (String, String)>;

struct Inner {
    name: String,
    started: Instant,
    started_at: u64,
    server: Arc<ServerShared>,
    portals: Vec<PortalView>,
    api_url: Option<String>,
    backing: Backing,
    m: Managed,
    table: Mutex<MappingTable>,
    /// A change is running.
    busy: AtomicBool,
    journal: Arc<Journal>,
    drain_timeout: Duration,
    /// The cluster member, when the node is one.
    cluster: Option<Arc<cluster::ClusterNode>>,
    /// The members as the leader last reported them (only the leader knows who else
    /// is reachable), refreshed every second by `spawn_watchers`.
    leader_view: Mutex<Option<Vec<cluster::Member>>>,
    /// Cluster change id -> journal change id (0: not mirrored).
    mirrored: Mutex<BTreeMap<u64, u64>>,
    /// Runs cluster proposals from the API's blocking threads.
    rt: tokio::runtime::Handle,
    /// `SWITCHYARD_TEST_FAULTS=1`: `POST /api/v1/faults` works (tests only).
    faults: bool,
    /// A member's catalog: volumes, exports and zoning changed online.
    catalog: Option<Arc<crate::catalog::Catalog>>,
    /// The config's `[zoning]`, in force until the cluster sets one.
    config_zoning: fcwwn::Masking,
    /// The NAA OUI for WWNs this node assigns.
    oui: u32,
}

/// The node's management view. Cheap to clone.
#[derive(Clone)]
pub struct NodeMgmt(Arc<Inner>);

impl NodeMgmt {
    /// `portals` are the addresses actually bound; `api_url` the management URL.
    pub fn new(
        cfg: &Config,
        server: Arc<ServerShared>,
        portals: Vec<PortalView>,
        managed: Managed,
        api_url: Option<String>,
    ) -> NodeMgmt {
        let mut backing = HashMap::new();
        for t in &cfg.targets {
            let Ok(name) = fcwwn::IscsiName::parse(&t.name) else {
                continue;
            };
            for l in &t.luns {
                let b = match (&l.path, &l.volume) {
                    (_, Some(v)) => ("volume".to_string(), v.clone()),
                    (Some(p), None) => ("file".to_string(), cfg.resolve(p).display().to_string()),
                    (None, None) => ("file".to_string(), String::new()),
                };
                backing.insert((name.as_str().to_string(), l.lun), b);
            }
        }
        let targets = server.targets();
        let table = managed
            .mapping
            .clone()
            .unwrap_or_else(|| cfg.mapping.clone().unwrap_or_else(|| MappingTable::new(0)));
        let drain_timeout = cfg
            .management
            .as_ref()
            .and_then(|m| m.drain_timeout_ms)
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_DRAIN_TIMEOUT);
        let journal = Arc::new(Journal::new(cfg.node.name.clone()));
        journal.event(
            "info",
            "node",
            format!(
                "node {} started: {} portal(s), {} target(s), {} volume(s), epoch {}",
                cfg.node.name,
                portals.len(),
                targets.len(),
                managed.volumes.all().len(),
                table.epoch
            ),
        );
        NodeMgmt(Arc::new(Inner {
            name: cfg.node.name.clone(),
            started: Instant::now(),
            started_at: mgmt::model::now_ms() / 1000,
            server,
            portals,
            api_url,
            backing,
            m: managed,
            table: Mutex::new(table),
            busy: AtomicBool::new(false),
            journal,
            drain_timeout,
            cluster: None,
            leader_view: Mutex::new(None),
            mirrored: Mutex::new(BTreeMap::new()),
            rt: tokio::runtime::Handle::current(),
            faults: std::env::var("SWITCHYARD_TEST_FAULTS").is_ok_and(|v| v == "1"),
            catalog: None,
            config_zoning: cfg.zoning.clone(),
            oui: cfg.node.oui,
        }))
    }

    /// The node is a cluster member: status shows the members and the leader, and
    /// changes go through the cluster.
    pub fn with_cluster(
        self,
        member: Arc<cluster::ClusterNode>,
        catalog: Option<Arc<crate::catalog::Catalog>>,
    ) -> NodeMgmt {
        let mut inner =
            Arc::try_unwrap(self.0).unwrap_or_else(|_| panic!("with_cluster before sharing"));
        inner.cluster = Some(member);
        inner.catalog = catalog;
        NodeMgmt(Arc::new(inner))
    }

    /// The cluster member, or the error for a stand-alone node.
    fn member(&self) -> Result<&Arc<cluster::ClusterNode>, ApiError> {
        self.0.cluster.as_ref().ok_or_else(|| {
            ApiError::not_found(
                "this node is not a cluster member",
                "node states and membership exist in a cluster: add a [cluster] section",
            )
        })
    }

    /// The table this node serves: the replicated one in a cluster.
    fn current_table(&self) -> MappingTable {
        match &self.0.cluster {
            Some(c) => cluster::Cluster::state(&**c).table.clone(),
            None => self.0.table.lock().clone(),
        }
    }

    /// A remap in a cluster: validate here, record the change in the replicated change
    /// log (the leader drives it, every node takes part), and mirror it into this
    /// node's journal. Returns the journal's id.
    fn cluster_remap(
        &self,
        c: &Arc<cluster::ClusterNode>,
        volume: &str,
        req: RemapRequest,
    ) -> Result<u64, ApiError> {
        use cluster::Cluster as _;
        let inner = &self.0;
        // A change that is finishing (this node may apply its end a moment after the
        // node that asked for it) is waited for, briefly.
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.state().active().is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let st = c.state();
        let old_def = st.table.volume(volume).cloned().ok_or_else(|| {
            ApiError::not_found(
                format!("no volume named {volume:?} in the cluster's table"),
                "GET /api/v1/volumes lists the volumes",
            )
        })?;
        if let Some(e) = req.expect_epoch {
            if e != st.table.epoch {
                return Err(ApiError::conflict(
                    format!("the mapping table is at epoch {}, not {e}", st.table.epoch),
                    "someone changed it meanwhile; look at the volume again and retry",
                ));
            }
        }
        if let Some(a) = st.active() {
            return Err(ApiError::conflict(
                format!("cluster change {} is running ({})", a.id, a.phase()),
                "wait for it to finish (`switchyard changes`), then retry",
            ));
        }
        let mut new_def = old_def.clone();
        new_def.extents = req.extents.clone();
        new_def.extents.sort();
        if let Some(b) = req.blocks {
            if b < old_def.blocks {
                return Err(ApiError::bad_request(
                    format!(
                        "volume {volume} has {} blocks; shrinking it online to {b} is not supported",
                        old_def.blocks
                    ),
                    "give blocks >= the current size",
                ));
            }
            new_def.blocks = b;
        }
        let mut sorted_old = old_def.extents.clone();
        sorted_old.sort();
        if sorted_old == new_def.extents && new_def.blocks == old_def.blocks {
            return Err(ApiError::bad_request(
                "the new extents are the volume's current extents; nothing to do",
                "send the complete new extent list of the volume",
            ));
        }
        let mut new_table = st.table.clone();
        new_table.epoch = st.table.epoch + 1;
        if let Some(v) = new_table.volumes.iter_mut().find(|v| v.name == volume) {
            *v = new_def.clone();
        }
        if let Err(e) = new_table.validate_with(&inner.m.registry.catalog()) {
            return Err(ApiError::invalid(
                format!("the new extents of volume {volume} are not valid"),
                e.0.iter().map(|p| p.to_string()).collect(),
            ));
        }
        // Ranges that only change path (same LBAs of the same LU) keep their data: no
        // hold, nothing to copy.
        let reg = &inner.m.registry;
        let affected =
            volume::table::affected_ranges_by(&old_def, &new_def, &|a, b| reg.same_lu(a, b));
        let copy = req.copy.unwrap_or(true);
        let mv = if copy {
            moves(&old_def, &new_def, &affected)
        } else {
            Vec::new()
        };
        if let Some(why) = crossing_moves(&mv) {
            return Err(ApiError::invalid(
                format!("volume {volume}: the remap cannot be done in one step"),
                vec![format!("{why}; remap in two steps (first to free blocks)")],
            ));
        }
        let moved: u64 = mv.iter().map(|m| m.blocks).sum();
        let limit = MAX_COPY_UNDER_HOLD / u64::from(old_def.block_size);
        if moved > limit {
            return Err(ApiError::invalid(
                format!(
                    "volume {volume}: the remap moves {} MiB of data, which would be copied while hosts wait",
                    (moved * u64::from(old_def.block_size)) >> 20
                ),
                vec![format!(
                    "at most {} MiB is copied under a hold; migrate large ranges instead, or send \"copy\": false if the new homes already hold the data",
                    MAX_COPY_UNDER_HOLD >> 20
                )],
            ));
        }
        let mut changeset = MappingTable::diff_by(&st.table, &new_table, &|a, b| reg.same_lu(a, b));
        changeset.base_epoch = st.table.epoch;
        let no_quorum = |e: cluster::ClusterError| match e {
            cluster::ClusterError::Refused(why) => ApiError::conflict(
                format!("the cluster refused the change: {why}"),
                "look at the volume and the running changes again, then retry",
            ),
            e => ApiError::new(
                axum_status(503),
                format!("the cluster did not record the change: {e}"),
                "check `switchyard nodes` for the leader and unreachable members",
            ),
        };
        let proposed = inner.rt.block_on(c.propose(cluster::Command::BeginChange {
            changeset: changeset.clone(),
            requested_by: c.id(),
            at_ms: mgmt::model::now_ms(),
            copy_data: !mv.is_empty(),
            migration: None,
        }));
        let cid = match proposed {
            Ok(a) => match a.outcome {
                cluster::Outcome::ChangeBegun(cid) => cid,
                _ => {
                    return Err(ApiError::new(
                        axum_status(500),
                        "the cluster answered BeginChange without a change id",
                        "",
                    ))
                }
            },
            // The leader went away before it answered: the change may be recorded.
            // Look for it once a new leader is there.
            Err(e @ cluster::ClusterError::Uncertain(_)) => {
                let find = || {
                    c.state()
                        .changes
                        .iter()
                        .rev()
                        .find(|(_, r)| {
                            r.requested_by == c.id()
                                && r.changeset == changeset
                                && r.timeline
                                    .first()
                                    .is_some_and(|t| t.at_ms + 120_000 > mgmt::model::now_ms())
                        })
                        .map(|(id, _)| *id)
                };
                let found = inner.rt.block_on(async {
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                    while tokio::time::Instant::now() < deadline {
                        if c.sync_with_leader(Duration::from_secs(1)).await {
                            return find();
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    None
                });
                match found {
                    Some(cid) => cid,
                    None => return Err(no_quorum(e)),
                }
            }
            Err(e) => return Err(no_quorum(e)),
        };
        let leader = self.cluster_nodes(c).0;
        // The mirror may have seen the change first: then its record is the one.
        let mut mirrored = inner.mirrored.lock();
        if let Some(&jid) = mirrored.get(&cid) {
            inner.journal.update(jid, |r| {
                r.moved_blocks = moved;
                r.extents_before = sorted_old.clone();
                r.extents_after = new_def.extents.clone();
            });
            return Ok(jid);
        }
        let jid = inner.journal.open_change(ChangeRecord {
            id: 0,
            kind: "remap".into(),
            volume: volume.to_string(),
            state: ChangeState::Staged,
            leader,
            from_epoch: st.table.epoch,
            to_epoch: st.table.epoch + 1,
            affected,
            moved_blocks: moved,
            copied_blocks: 0,
            hold_ms: None,
            extents_before: sorted_old,
            extents_after: new_def.extents.clone(),
            created_ms: 0,
            updated_ms: 0,
            error: None,
            hint: None,
            history: Vec::new(),
            cluster_change: Some(cid),
            timeline: Vec::new(),
        });
        mirrored.insert(cid, jid);
        Ok(jid)
    }

    /// Mirror the cluster's change log into this node's journal (changes requested
    /// through any node), until `shutdown`.
    /// The member and its catalog, or the error for a stand-alone node.
    fn catalog(&self) -> Result<(&Arc<cluster::ClusterNode>, &crate::catalog::Catalog), ApiError> {
        match (&self.0.cluster, &self.0.catalog) {
            (Some(c), Some(cat)) => Ok((c, cat)),
            _ => Err(ApiError::not_found(
                "this node is not a cluster member; volumes, exports and zoning are changed online by the cluster",
                "add a [cluster] section (one member is enough) and restart the node",
            )),
        }
    }

    /// Wait (briefly) until this node's catalog has applied a committed change, so the
    /// answer shows it; the change is committed either way.
    fn wait_catalog(&self, done: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(5);
        while !done() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The zoning version this node's catalog has applied.
    fn synced_zoning(&self) -> u64 {
        self.0.catalog.as_ref().map_or(0, |c| c.zoning_version())
    }

    /// A volume's view once this node serves it.
    fn served_view(&self, name: &str) -> Result<mgmt::model::VolumeView, ApiError> {
        self.wait_catalog(|| self.0.m.volumes.contains(name));
        if let Some(v) = self.volume(name) {
            return Ok(v);
        }
        // Recorded, but not (yet) served here: the cluster's view of it.
        let (c, _) = self.catalog()?;
        crate::catalog_api::recorded_view(&cluster::Cluster::state(&**c), name)
    }

    /// The cluster's exports (target -> LUN -> volume); empty for a single node.
    fn catalog_exports(&self) -> BTreeMap<String, BTreeMap<u16, String>> {
        match &self.0.cluster {
            Some(c) => cluster::Cluster::state(&**c).catalog.exports.clone(),
            None => BTreeMap::new(),
        }
    }

    /// What backs LUN `lun` of `target`: the config's entry, or a volume the cluster
    /// exported there.
    fn lun_backing(
        &self,
        exports: &BTreeMap<String, BTreeMap<u16, String>>,
        target: &str,
        lun: u16,
    ) -> (String, String) {
        if let Some(b) = self.0.backing.get(&(target.to_string(), lun)) {
            return b.clone();
        }
        match exports.get(target).and_then(|l| l.get(&lun)) {
            Some(v) => ("volume".into(), v.clone()),
            None => Default::default(),
        }
    }

    fn spawn_change_mirror(&self, c: Arc<cluster::ClusterNode>, shutdown: CancellationToken) {
        use cluster::Cluster as _;
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let st = c.state();
                let names: BTreeMap<u64, String> =
                    st.nodes.values().map(|n| (n.id, n.name.clone())).collect();
                for (cid, rec) in st.changes.iter() {
                    me.mirror(*cid, rec, &st, &names);
                }
            }
        });
    }

    fn mirror(
        &self,
        cid: u64,
        rec: &cluster::ChangeRecord,
        st: &cluster::ClusterState,
        names: &BTreeMap<u64, String>,
    ) {
        let j = &self.0.journal;
        let mut mirrored = self.0.mirrored.lock();
        let known = mirrored.get(&cid).copied();
        let jid = match known {
            Some(id) => id,
            None => {
                let started = rec.timeline.first().map(|t| t.at_ms).unwrap_or(0);
                if rec.phase().is_terminal() && started < self.0.started_at * 1000 {
                    // Finished before this node started: history, not news.
                    mirrored.insert(cid, 0);
                    return;
                }
                let volume = rec
                    .changeset
                    .volumes
                    .first()
                    .map(|v| v.name().to_string())
                    .unwrap_or_default();
                let id = j.open_change(ChangeRecord {
                    id: 0,
                    // A migration's windows and its final switch are remaps too.
                    kind: match rec.migration {
                        Some(m) => format!("migration {m} window"),
                        None => "remap".into(),
                    },
                    volume,
                    state: ChangeState::Staged,
                    leader: names.get(&rec.requested_by).cloned().unwrap_or_default(),
                    from_epoch: rec.changeset.base_epoch,
                    to_epoch: rec.changeset.base_epoch + 1,
                    affected: rec
                        .changeset
                        .volumes
                        .first()
                        .map(|v| rec.changeset.affected(v.name()))
                        .unwrap_or_default(),
                    moved_blocks: 0,
                    copied_blocks: 0,
                    hold_ms: None,
                    extents_before: Vec::new(),
                    extents_after: Vec::new(),
                    created_ms: 0,
                    updated_ms: 0,
                    error: None,
                    hint: None,
                    history: Vec::new(),
                    cluster_change: Some(cid),
                    timeline: Vec::new(),
                });
                mirrored.insert(cid, id);
                id
            }
        };
        drop(mirrored);
        if jid == 0 {
            return;
        }
        let Some(cur) = j.change(jid) else {
            return;
        };
        if cur.state.is_final() {
            return;
        }
        let timeline: Vec<mgmt::model::TimelineEntry> = rec
            .timeline
            .iter()
            .map(|t| mgmt::model::TimelineEntry {
                at_ms: t.at_ms,
                node: t
                    .node
                    .map(|n| names.get(&n).cloned().unwrap_or_else(|| n.to_string())),
                what: t.what.clone(),
            })
            .collect();
        if timeline.len() != cur.timeline.len() {
            let leader = self.0.cluster.as_ref().map(|c| self.cluster_nodes(c).0);
            j.update(jid, |r| {
                r.timeline = timeline;
                if let Some(l) = leader {
                    r.leader = l;
                }
                if rec.phase() == cluster::Phase::Switched {
                    r.to_epoch = st.table.epoch.max(r.to_epoch);
                }
            });
        }
        let (state, error) = match &rec.state {
            cluster::ChangeState::Proposed | cluster::ChangeState::Staged { .. } => {
                (ChangeState::Staged, None)
            }
            cluster::ChangeState::Quiescing { .. } => (ChangeState::Draining, None),
            cluster::ChangeState::Switched { .. } | cluster::ChangeState::Resumed { .. } => {
                (ChangeState::Switched, None)
            }
            cluster::ChangeState::Done => (ChangeState::Done, None),
            cluster::ChangeState::RolledBack { reason } => {
                (ChangeState::RolledBack, Some(reason.clone()))
            }
            cluster::ChangeState::Failed { reason } => (ChangeState::Failed, Some(reason.clone())),
        };
        if state != cur.state {
            let hint = error.as_ref().map(|_| {
                "the cluster's table is unchanged (or was restored); fix the cause and retry"
                    .to_string()
            });
            j.set_state(jid, state, error, hint);
        }
    }

    fn cluster_nodes(&self, member: &cluster::ClusterNode) -> (String, Vec<NodeView>) {
        use cluster::Cluster as _;
        let st = member.state();
        let me = member.id();
        let mut leader = String::from("(none)");
        let view = self.0.leader_view.lock().clone();
        let nodes = view
            .unwrap_or_else(|| member.members())
            .into_iter()
            .map(|m| {
                // Reachability as the leader saw it a moment ago; the rest from the
                // replicated state as applied here.
                let info = st.nodes.get(&m.id).cloned().or_else(|| m.info.clone());
                let name = info
                    .as_ref()
                    .map(|i| i.name.clone())
                    .unwrap_or_else(|| format!("node{}", m.id));
                if m.is_leader {
                    leader = name.clone();
                }
                let state = match info.as_ref().map(|i| &i.health) {
                    _ if !m.reachable => "unreachable".to_string(),
                    Some(cluster::Health::Draining) => "draining".into(),
                    Some(cluster::Health::Fenced { .. }) => "fenced".into(),
                    Some(cluster::Health::Active) => "up".into(),
                    None => "joining".into(),
                };
                let witness = info
                    .as_ref()
                    .is_some_and(|i| i.role == cluster::Role::Witness);
                NodeView {
                    name,
                    state,
                    api: if m.id == me {
                        self.0.api_url.clone()
                    } else {
                        info.as_ref().and_then(|i| i.api.clone())
                    },
                    is_self: m.id == me,
                    id: Some(m.id),
                    role: if witness { "witness" } else { "data" }.into(),
                    is_leader: m.is_leader,
                    alua: (!witness).then(|| {
                        crate::config::alua_name(scsi::AluaState::from(st.alua_of(m.id)))
                            .to_string()
                    }),
                    last_contact_ms: m.last_contact_ms,
                    portals: info.as_ref().map(|i| i.portals.clone()).unwrap_or_default(),
                    mgmt_addr: Some(m.addr.clone()),
                }
            })
            .collect();
        (leader, nodes)
    }

    /// Watch sessions and back-ends once a second and log what changes, until
    /// `shutdown`.
    pub fn spawn_watchers(&self, shutdown: CancellationToken) {
        if let Some(c) = self.0.cluster.clone() {
            self.spawn_change_mirror(c.clone(), shutdown.clone());
            let me = self.clone();
            let sd = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let mut last: Option<Vec<(u64, bool)>> = None;
                loop {
                    tokio::select! {
                        _ = sd.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let view = c.leader_view(Duration::from_millis(500)).await;
                    let seen: Option<Vec<(u64, bool)>> = view
                        .as_ref()
                        .map(|v| v.iter().map(|m| (m.id, m.reachable)).collect());
                    if seen != last {
                        let msg = match &view {
                            Some(v) => {
                                let down: Vec<String> = v
                                    .iter()
                                    .filter(|m| !m.reachable)
                                    .map(|m| m.id.to_string())
                                    .collect();
                                format!(
                                    "cluster: leader {:?}, {} member(s){}",
                                    cluster::Cluster::leader(&*c),
                                    v.len(),
                                    if down.is_empty() {
                                        String::new()
                                    } else {
                                        format!(", unreachable: {}", down.join(", "))
                                    }
                                )
                            }
                            None => "cluster: no leader reachable from this node".to_string(),
                        };
                        me.0.journal.event(
                            if view.as_ref().is_some_and(|v| v.iter().all(|m| m.reachable)) {
                                "info"
                            } else {
                                "warn"
                            },
                            "cluster",
                            msg,
                        );
                        last = seen;
                    }
                    *me.0.leader_view.lock() = view;
                }
            });
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut sessions: BTreeMap<(String, String, u16), SessionView> = BTreeMap::new();
            let mut states: HashMap<String, String> = HashMap::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now: BTreeMap<_, _> = me
                    .sessions()
                    .into_iter()
                    .map(|s| ((s.initiator.clone(), s.isid.clone(), s.tsih), s))
                    .collect();
                let j = &me.0.journal;
                for (k, s) in &now {
                    if !sessions.contains_key(k) {
                        j.event(
                            "info",
                            "session",
                            format!(
                                "{} logged in to {} via {} (ISID {}, TSIH {})",
                                s.initiator,
                                s.target.as_deref().unwrap_or("discovery"),
                                s.portal,
                                s.isid,
                                s.tsih
                            ),
                        );
                    }
                }
                for (k, s) in &sessions {
                    if !now.contains_key(k) {
                        j.event(
                            "info",
                            "session",
                            format!(
                                "{} logged out of {} (TSIH {})",
                                s.initiator,
                                s.target.as_deref().unwrap_or("discovery"),
                                s.tsih
                            ),
                        );
                    }
                }
                sessions = now;
                for b in me.backends() {
                    let prev = states.insert(b.id.clone(), b.state.clone());
                    if prev.is_some_and(|p| p != b.state) {
                        let level = if b.state == "reconnecting" {
                            "warn"
                        } else {
                            "info"
                        };
                        j.event(
                            level,
                            "backend",
                            format!("back-end {} is {}", b.id, b.state),
                        );
                    }
                }
            }
        });
    }

    fn backend_state(b: &Backend) -> &'static str {
        match &b.client {
            None => "online",
            Some(c) if c.sessions().is_empty() => "reconnecting",
            Some(_) => "connected",
        }
    }
}

impl Inner {
    /// Copy every move, in chunks, reporting progress; then flush the destinations.
    fn copy(&self, id: u64, mv: &[Move], bs: u32) -> Result<(), BlockError> {
        crate::moves::copy(
            &self.m.registry,
            Some(&self.m.offload),
            mv,
            bs,
            |copied, emit| self.journal.progress(id, copied, emit),
        )
    }

    /// The node-local remap, after staging: hold, drain, copy, switch, release.
    fn run_remap(
        &self,
        id: u64,
        live: &LiveVolume,
        affected: &[BlockRange],
        mv: &[Move],
        new_table: MappingTable,
        drain_timeout: Duration,
    ) {
        let j = &self.journal;
        if !mv.is_empty() {
            // Optional: a failure here shows again, and is reported, at the copy.
            if let Err(e) = crate::moves::flush_destinations(&self.m.registry, mv) {
                tracing::debug!(
                    change = id,
                    "flushing the destinations before the hold: {e}"
                );
            }
        }
        j.set_state(id, ChangeState::Holding, None, None);
        let hold = live.hold(affected);
        let held_at = Instant::now();
        j.set_state(id, ChangeState::Draining, None, None);
        let result = hold
            .drain(drain_timeout)
            .map_err(|e| {
                (
                    format!("drain timed out: {e}"),
                    "I/O in the affected ranges did not finish in time; held I/O was resumed \
                     against the old table. Retry when I/O is lower, or with a longer \
                     drain_timeout_ms",
                )
            })
            .and_then(|()| {
                j.set_state(id, ChangeState::Copying, None, None);
                self.copy(id, mv, live.block_size()).map_err(|e| {
                    (
                        format!("copying the moved blocks failed: {e}"),
                        "the old table stays in force and its data is intact; check the \
                         destination back-end (GET /api/v1/backends) and retry",
                    )
                })
            })
            .and_then(|()| {
                live.switch().map_err(|e| {
                    (
                        format!("switch refused: {e}"),
                        "the old table stays in force; retry the remap",
                    )
                })
            });
        match result {
            Ok(epoch) => {
                *self.table.lock() = new_table;
                j.set_state(id, ChangeState::Switched, None, None);
                hold.release();
                j.set_hold(id, held_at.elapsed());
                j.update(id, |r| r.to_epoch = epoch);
                j.set_state(id, ChangeState::Done, None, None);
            }
            Err((err, hint)) => {
                live.rollback();
                hold.release();
                j.set_hold(id, held_at.elapsed());
                j.set_state(
                    id,
                    ChangeState::RolledBack,
                    Some(err),
                    Some(hint.to_string()),
                );
            }
        }
    }
}

impl NodeApi for NodeMgmt {
    fn status(&self) -> NodeStatus {
        let i = &self.0;
        let degraded =
            i.m.backends
                .lock()
                .iter()
                .any(|b| NodeMgmt::backend_state(b) == "reconnecting");
        let epoch = self.current_table().epoch;
        let counters = self.metrics().counters;
        let (leader, nodes) = match &i.cluster {
            Some(c) => self.cluster_nodes(c),
            None => (
                i.name.clone(),
                vec![NodeView {
                    name: i.name.clone(),
                    state: "up".into(),
                    api: i.api_url.clone(),
                    is_self: true,
                    id: None,
                    role: "data".into(),
                    is_leader: true,
                    alua: None,
                    last_contact_ms: None,
                    portals: i.portals.iter().map(|p| p.address.clone()).collect(),
                    mgmt_addr: None,
                }],
            ),
        };
        NodeStatus {
            name: i.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: i.started.elapsed().as_secs(),
            started_at: i.started_at,
            portals: i.portals.clone(),
            leader,
            nodes,
            health: if degraded { "degraded" } else { "ok" }.into(),
            epoch,
            counters,
        }
    }

    fn sessions(&self) -> Vec<SessionView> {
        let mut v: Vec<SessionView> = self
            .0
            .server
            .sessions()
            .into_iter()
            .map(|s| SessionView {
                node: self.0.name.clone(),
                initiator: s.initiator,
                isid: s.isid,
                target: s.target,
                tsih: s.tsih,
                portal: s.local_addr.to_string(),
            })
            .collect();
        v.sort_by_key(|s| s.tsih);
        v
    }

    fn targets(&self) -> Vec<TargetView> {
        let exports = self.catalog_exports();
        self.0
            .server
            .targets()
            .iter()
            .map(|t| TargetView {
                name: t.name.clone(),
                alias: t.alias.clone(),
                chap: t.chap.is_some(),
                luns: t
                    .luns
                    .iter()
                    .map(|l| {
                        let c = l.lu.config();
                        let mut wwn = String::from("naa.");
                        for b in &c.wwn[..usize::from(c.naa_len).min(16)] {
                            wwn.push_str(&format!("{b:02x}"));
                        }
                        let (kind, backing) = self.lun_backing(&exports, &t.name, l.lun);
                        LunView {
                            lun: l.lun,
                            wwn,
                            kind,
                            backing,
                            block_size: l.lu.store().block_size(),
                            blocks: l.lu.store().num_blocks(),
                            read_only: c.read_only,
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    fn backends(&self) -> Vec<BackendView> {
        let table = self.current_table();
        let mapped = |id: &str| -> u64 {
            table
                .volumes
                .iter()
                .flat_map(|v| v.extents.iter())
                .filter(|e| e.backend == id)
                .map(|e| e.blocks)
                .sum()
        };
        self.0
            .m
            .backends
            .lock()
            .iter()
            .map(|b| {
                let state = NodeMgmt::backend_state(b).to_string();
                BackendView {
                    id: b.id.clone(),
                    kind: if b.client.is_some() { "array" } else { "store" }.into(),
                    address: b.address.clone(),
                    target: b.target.clone(),
                    logins: b.client.as_ref().map(|c| c.login_count()).unwrap_or(0),
                    lus: b
                        .lus
                        .iter()
                        .map(|(id, s, st)| BackendLuView {
                            id: id.clone(),
                            block_size: s.block_size(),
                            blocks: s.num_blocks(),
                            capacity_bytes: s.num_blocks() * u64::from(s.block_size()),
                            mapped_blocks: mapped(id),
                            state: state.clone(),
                            io: st.snapshot(),
                        })
                        .collect(),
                    state,
                }
            })
            .collect()
    }

    fn volumes(&self) -> Vec<VolumeView> {
        let catalog = self.catalog_exports();
        let served_targets = self.0.server.targets();
        self.0
            .m
            .volumes
            .all()
            .into_iter()
            .map(|(_, sv)| {
                let (live, stats) = (&sv.live, &sv.stats);
                let cur = live.current();
                let def = cur.def();
                let mut exports = served_targets
                    .iter()
                    .flat_map(|t| {
                        t.luns
                            .iter()
                            .filter(|l| {
                                let (kind, b) = self.lun_backing(&catalog, &t.name, l.lun);
                                kind == "volume" && b == def.name
                            })
                            .map(|l| ExportView {
                                target: t.name.clone(),
                                lun: l.lun,
                            })
                    })
                    .collect::<Vec<_>>();
                exports.sort_by(|a, b| (&a.target, a.lun).cmp(&(&b.target, b.lun)));
                VolumeView {
                    name: def.name.clone(),
                    wwn: def.wwn.clone(),
                    block_size: def.block_size,
                    blocks: def.blocks,
                    holes: def.holes,
                    epoch: cur.epoch(),
                    exports,
                    map: segments(def),
                    held: live.holds().held_ranges(),
                    io: stats.snapshot(),
                }
            })
            .collect()
    }

    fn mapping(&self) -> MappingTable {
        self.current_table()
    }

    fn validate_mapping(&self, table: &MappingTable) -> ValidationReport {
        let mut problems: Vec<String> = match table.validate_with(&self.0.m.registry.catalog()) {
            Ok(()) => Vec::new(),
            Err(e) => e.0.iter().map(|p| p.to_string()).collect(),
        };
        let cur = self.current_table();
        let reg = &self.0.m.registry;
        let changes = MappingTable::diff_by(&cur, table, &|a, b| reg.same_lu(a, b));
        for v in &table.volumes {
            if let Some(c) = cur.volume(&v.name) {
                if c.block_size != v.block_size {
                    problems.push(format!(
                        "volume {:?}: the block size of a served volume cannot change ({} -> {})",
                        v.name, c.block_size, v.block_size
                    ));
                }
            }
        }
        ValidationReport {
            valid: problems.is_empty(),
            epoch: table.epoch,
            volumes: table.volumes.len(),
            problems,
            changes: if changes.is_empty() {
                String::new()
            } else {
                changes.to_string()
            },
        }
    }

    fn start_remap(&self, volume: &str, req: RemapRequest) -> Result<u64, ApiError> {
        let inner = &self.0;
        if let Some(c) = &inner.cluster {
            return self.cluster_remap(c, volume, req);
        }
        if req.blocks.is_some() {
            return Err(ApiError::bad_request(
                "growing a volume online is done by the cluster's remap protocol",
                "run the node as a cluster member (a [cluster] section; one member is enough)",
            ));
        }
        let live = inner
            .m
            .volumes
            .get(volume)
            .map(|sv| sv.live.clone())
            .ok_or_else(|| {
                ApiError::not_found(
                    format!("no volume named {volume:?}"),
                    "GET /api/v1/volumes lists the volumes",
                )
            })?;
        if inner
            .busy
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            let running = inner
                .journal
                .changes()
                .into_iter()
                .find(|c| !c.state.is_final())
                .map(|c| format!("change {} ({} of {})", c.id, c.kind, c.volume))
                .unwrap_or_else(|| "another change".into());
            return Err(ApiError::conflict(
                format!("{running} is running on this node"),
                "wait for it to finish (`switchyard changes`), then retry",
            ));
        }
        struct Busy<'a>(&'a AtomicBool, bool);
        impl Drop for Busy<'_> {
            fn drop(&mut self) {
                if self.1 {
                    self.0.store(false, Ordering::SeqCst);
                }
            }
        }
        let mut busy = Busy(&inner.busy, true);
        let old_table = inner.table.lock().clone();
        if let Some(e) = req.expect_epoch {
            if e != old_table.epoch {
                return Err(ApiError::conflict(
                    format!("the mapping table is at epoch {}, not {e}", old_table.epoch),
                    "someone changed it meanwhile; look at the volume again and retry",
                ));
            }
        }
        let old_def = live.current().def().clone();
        let mut new_def = old_def.clone();
        new_def.extents = req.extents.clone();
        new_def.extents.sort();
        let mut sorted_old = old_def.extents.clone();
        sorted_old.sort();
        if sorted_old == new_def.extents {
            return Err(ApiError::bad_request(
                "the new extents are the volume's current extents; nothing to do",
                "send the complete new extent list of the volume",
            ));
        }
        let mut new_table = old_table.clone();
        new_table.epoch = old_table.epoch + 1;
        match new_table.volumes.iter_mut().find(|v| v.name == volume) {
            Some(v) => *v = new_def.clone(),
            None => new_table.volumes.push(new_def.clone()),
        }
        if let Err(e) = new_table.validate_with(&inner.m.registry.catalog()) {
            return Err(ApiError::invalid(
                format!("the new extents of volume {volume} are not valid"),
                e.0.iter().map(|p| p.to_string()).collect(),
            ));
        }
        // Ranges that only change path (same LBAs of the same LU) keep their data: no
        // hold, nothing to copy.
        let reg = &inner.m.registry;
        let affected =
            volume::table::affected_ranges_by(&old_def, &new_def, &|a, b| reg.same_lu(a, b));
        let mut mv = moves(&old_def, &new_def, &affected);
        if req.copy == Some(false) {
            mv.clear();
        }
        if let Some(why) = crossing_moves(&mv) {
            return Err(ApiError::invalid(
                format!("volume {volume}: the remap cannot be done in one step"),
                vec![format!("{why}; remap in two steps (first to free blocks)")],
            ));
        }
        let staged = live
            .stage(&new_def, &inner.m.registry, new_table.epoch)
            .map_err(|e| {
                ApiError::conflict(
                    format!("cannot stage the new table: {e}"),
                    "nothing was changed",
                )
            })?;
        let moved: u64 = mv.iter().map(|m| m.blocks).sum();
        let id = inner.journal.open_change(ChangeRecord {
            id: 0,
            kind: "remap".into(),
            volume: volume.to_string(),
            state: ChangeState::Staged,
            leader: inner.name.clone(),
            from_epoch: old_table.epoch,
            to_epoch: new_table.epoch,
            affected: staged.clone(),
            moved_blocks: moved,
            copied_blocks: 0,
            hold_ms: None,
            extents_before: sorted_old,
            extents_after: new_def.extents.clone(),
            created_ms: 0,
            updated_ms: 0,
            error: None,
            hint: None,
            history: Vec::new(),
            cluster_change: None,
            timeline: Vec::new(),
        });
        let drain_timeout = req
            .drain_timeout_ms
            .map(|ms| Duration::from_millis(ms.clamp(1, 60_000)))
            .unwrap_or(inner.drain_timeout);
        let me = self.0.clone();
        busy.1 = false; // the thread clears it
        let spawned = std::thread::Builder::new()
            .name(format!("remap-{id}"))
            .spawn(move || {
                let _busy = Busy(&me.busy, true);
                me.run_remap(id, &live, &staged, &mv, new_table, drain_timeout);
            });
        if let Err(e) = spawned {
            busy.1 = true;
            self.0.journal.set_state(
                id,
                ChangeState::Failed,
                Some(format!("cannot start the remap thread: {e}")),
                None,
            );
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot start the remap: {e}"),
                "the node is short of resources; retry",
            ));
        }
        Ok(id)
    }

    fn set_node_state(
        &self,
        node: &str,
        req: mgmt::model::NodeStateRequest,
    ) -> Result<NodeView, ApiError> {
        use cluster::Cluster as _;
        let c = self.member()?;
        let st = c.state();
        let target = find_member(&st, node)?;
        if target.role == cluster::Role::Witness {
            return Err(ApiError::bad_request(
                format!(
                    "{} is a witness: it serves no I/O and has no state to set",
                    target.name
                ),
                "",
            ));
        }
        let health = match req.state.as_deref() {
            None => None,
            Some("active") => Some(cluster::Health::Active),
            Some("draining") => Some(cluster::Health::Draining),
            Some(other) => {
                return Err(ApiError::bad_request(
                    format!("state {other:?} is not one of active, draining"),
                    "fenced is set by the cluster, not by hand",
                ))
            }
        };
        let alua = match req.alua.as_deref() {
            None => None,
            Some(a) => Some(cluster::AluaAccess::from(
                crate::config::alua_state(a).map_err(|e| ApiError::bad_request(e, ""))?,
            )),
        };
        if health.is_none() && alua.is_none() {
            return Err(ApiError::bad_request(
                "nothing to change",
                "send {\"state\": \"draining\"} or {\"alua\": \"standby\"}",
            ));
        }
        let id = target.id;
        let name = target.name.clone();
        let no_quorum = |e: cluster::ClusterError| {
            ApiError::new(
                axum_status(503),
                format!("the cluster did not commit the change: {e}"),
                "check `switchyard status` for the leader and unreachable members",
            )
        };
        self.0.rt.block_on(async {
            if let Some(h) = health {
                c.propose(cluster::Command::SetHealth { id, health: h })
                    .await
                    .map_err(no_quorum)?;
            }
            if let Some(a) = alua {
                c.propose(cluster::Command::SetAlua { node: id, state: a })
                    .await
                    .map_err(no_quorum)?;
            }
            Ok::<_, ApiError>(())
        })?;
        self.0.journal.event(
            "info",
            "cluster",
            format!(
                "node {name}: {}{}",
                req.state.map(|s| format!("state {s} ")).unwrap_or_default(),
                req.alua.map(|a| format!("ALUA {a}")).unwrap_or_default()
            ),
        );
        let (_, nodes) = self.cluster_nodes(c);
        nodes
            .into_iter()
            .find(|n| n.id == Some(id))
            .ok_or_else(|| ApiError::not_found("the node left the cluster", ""))
    }

    fn start_migration(
        &self,
        volume: &str,
        req: mgmt::model::MigrateRequest,
    ) -> Result<mgmt::model::MigrationView, ApiError> {
        let c = self.member()?;
        let i = &self.0;
        crate::migrate_api::start(c, &i.rt, &i.m.registry, &i.journal, volume, &req)
    }

    fn migrations(&self) -> Vec<mgmt::model::MigrationView> {
        self.0
            .cluster
            .as_ref()
            .map(|c| crate::migrate_api::list(c))
            .unwrap_or_default()
    }

    fn migration_action(
        &self,
        id: u64,
        action: mgmt::model::MigrationAction,
    ) -> Result<mgmt::model::MigrationView, ApiError> {
        let c = self.member()?;
        crate::migrate_api::act(c, &self.0.rt, &self.0.journal, id, action)
    }

    fn remove_node(&self, node: &str) -> Result<(), ApiError> {
        use cluster::Cluster as _;
        let c = self.member()?;
        let st = c.state();
        // A voter that never registered is named by its id.
        let id = match find_member(&st, node) {
            Ok(n) => n.id,
            Err(e) => node
                .parse()
                .ok()
                .filter(|id| c.voter_ids().contains(id))
                .ok_or(e)?,
        };
        if id == c.id() {
            return Err(ApiError::bad_request(
                "a member cannot remove itself",
                "ask another member to remove this one, after stopping it",
            ));
        }
        if let Some(a) = st.active() {
            if a.participants.contains(&id) {
                return Err(ApiError::conflict(
                    format!("member {node} takes part in running change {}", a.id),
                    "wait for the change to finish",
                ));
            }
        }
        self.0.rt.block_on(c.remove_node(id)).map_err(|e| {
            ApiError::new(axum_status(503), format!("cannot remove {node}: {e}"), "")
        })?;
        self.0.journal.event(
            "info",
            "cluster",
            format!("member {node} (id {id}) removed"),
        );
        Ok(())
    }

    fn create_volume(
        &self,
        req: mgmt::model::CreateVolumeRequest,
    ) -> Result<mgmt::model::VolumeView, ApiError> {
        let (c, cat) = self.catalog()?;
        let i = &self.0;
        let (def, exports) = crate::catalog_api::plan_create(c, &i.m.registry, cat, i.oui, &req)?;
        crate::catalog_api::create(c, &i.rt, &i.journal, def, exports)?;
        // Served, with its exports, on this node before the answer.
        self.wait_catalog(|| {
            self.volume(&req.name).is_some_and(|v| {
                req.exports
                    .iter()
                    .all(|x| v.exports.iter().any(|e| e.lun == x.lun))
            })
        });
        self.served_view(&req.name)
    }

    fn delete_volume(&self, name: &str, force: bool) -> Result<(), ApiError> {
        let (c, cat) = self.catalog()?;
        crate::catalog_api::delete(c, &self.0.rt, cat, &self.0.journal, name, force)?;
        // Gone from this node's targets before the answer.
        self.wait_catalog(|| !self.0.m.volumes.contains(name));
        Ok(())
    }

    fn export_volume(
        &self,
        name: &str,
        at: mgmt::model::ExportView,
    ) -> Result<mgmt::model::VolumeView, ApiError> {
        let (c, cat) = self.catalog()?;
        crate::catalog_api::export(c, &self.0.rt, cat, &self.0.journal, name, &at)?;
        self.wait_catalog(|| {
            self.volume(name)
                .is_some_and(|v| v.exports.iter().any(|e| e.lun == at.lun))
        });
        self.served_view(name)
    }

    fn unexport_volume(
        &self,
        name: &str,
        at: mgmt::model::ExportView,
    ) -> Result<mgmt::model::VolumeView, ApiError> {
        let (c, _) = self.catalog()?;
        crate::catalog_api::unexport(c, &self.0.rt, &self.0.journal, name, &at)?;
        self.wait_catalog(|| {
            self.volume(name)
                .is_some_and(|v| !v.exports.iter().any(|e| e.lun == at.lun))
        });
        self.served_view(name)
    }

    fn add_backend(&self, req: mgmt::model::AddBackendRequest) -> Result<BackendView, ApiError> {
        let (c, cat) = self.catalog()?;
        crate::catalog_api::add_backend(c, &self.0.rt, cat, &self.0.journal, &req)?;
        self.wait_catalog(|| cat.has_backend(&req.id));
        // Recorded; this node may still be logging in (its log says why if it cannot).
        Ok(self
            .backends()
            .into_iter()
            .find(|b| b.id == req.id)
            .unwrap_or(BackendView {
                id: req.id.clone(),
                kind: "array".into(),
                address: req.portal.clone(),
                target: Some(req.target.clone()),
                state: "logging in".into(),
                logins: 0,
                lus: Vec::new(),
            }))
    }

    fn remove_backend(&self, id: &str) -> Result<(), ApiError> {
        let (c, cat) = self.catalog()?;
        crate::catalog_api::remove_backend(c, &self.0.rt, cat, &self.0.journal, id)?;
        self.wait_catalog(|| !cat.has_backend(id));
        Ok(())
    }

    fn config_doc(&self) -> mgmt::model::ConfigDoc {
        let z = self.zoning();
        let mut doc = mgmt::model::ConfigDoc {
            backends: Vec::new(),
            mapping: self.mapping(),
            exports: Vec::new(),
            zoning: (z.source == "cluster").then_some(z.zoning),
        };
        if let Some(c) = &self.0.cluster {
            crate::catalog_api::fill_doc(&cluster::Cluster::state(&**c), &mut doc);
        }
        doc
    }

    fn zoning(&self) -> mgmt::model::ZoningView {
        let cluster = self
            .0
            .cluster
            .as_ref()
            .map(|c| cluster::Cluster::state(&**c).catalog.clone());
        match cluster {
            Some(cat) if cat.zoning.is_some() => mgmt::model::ZoningView {
                source: "cluster".into(),
                version: cat.zoning_version,
                zoning: cat.zoning.unwrap_or_default(),
            },
            other => mgmt::model::ZoningView {
                source: "config".into(),
                version: other.map_or(0, |c| c.zoning_version),
                zoning: self.0.config_zoning.clone(),
            },
        }
    }

    fn set_zoning(
        &self,
        req: mgmt::model::ZoningRequest,
    ) -> Result<mgmt::model::ZoningView, ApiError> {
        let (c, _) = self.catalog()?;
        crate::catalog_api::set_zoning(c, &self.0.rt, &self.0.journal, &req)?;
        let want = req.expected_version + 1;
        self.wait_catalog(|| self.synced_zoning() >= want);
        Ok(self.zoning())
    }

    fn inject_fault(&self, req: mgmt::model::FaultRequest) -> Result<(), ApiError> {
        let (true, Some(c)) = (self.0.faults, &self.0.cluster) else {
            return Err(ApiError::not_found(
                "fault injection is off",
                "start a cluster member with SWITCHYARD_TEST_FAULTS=1 (tests only)",
            ));
        };
        if let Some(on) = req.isolate {
            c.faults().isolate(on);
            tracing::warn!(isolated = on, "fault injection: cluster traffic");
        }
        if let Some(name) = &req.failpoint {
            let actions = req.actions.clone().unwrap_or_else(|| "off".into());
            fail::cfg(name.as_str(), &actions).map_err(|e| {
                ApiError::bad_request(
                    format!("fault point {name}: {e}"),
                    "e.g. return, 2*off->return, off",
                )
            })?;
            tracing::warn!(failpoint = %name, %actions, "fault injection: fault point set");
        }
        Ok(())
    }

    fn journal(&self) -> &Arc<Journal> {
        &self.0.journal
    }

    fn metrics(&self) -> MetricsSnapshot {
        let i = &self.0;
        let stats = &i.server.stats;
        let backends: Vec<(String, IoCounters, bool)> =
            i.m.backends
                .lock()
                .iter()
                .flat_map(|b| {
                    let up = NodeMgmt::backend_state(b) != "reconnecting";
                    b.lus
                        .iter()
                        .map(move |(id, _, st)| (id.clone(), st.snapshot(), up))
                })
                .collect();
        MetricsSnapshot {
            counters: Counters {
                commands: stats.commands.load(Ordering::Relaxed),
                logins: stats.logins.load(Ordering::Relaxed),
                login_failures: stats.login_failures.load(Ordering::Relaxed),
                sessions: i.server.sessions().len() as u64,
                backend_errors: backends.iter().map(|b| b.1.errors).sum(),
                copy_node_bytes: crate::moves::NODE_COPY_BYTES.load(Ordering::Relaxed),
                copy_offloaded_bytes: crate::moves::OFFLOADED_COPY_BYTES.load(Ordering::Relaxed),
            },
            uptime_secs: i.started.elapsed().as_secs(),
            epoch: self.current_table().epoch,
            volumes: i
                .m
                .volumes
                .all()
                .iter()
                .map(|(n, sv)| (n.clone(), sv.stats.snapshot()))
                .collect(),
            backends,
            volume_latency: i
                .m
                .volumes
                .all()
                .iter()
                .flat_map(|(n, sv)| sv.stats.latency().map(|(op, h)| (n.clone(), op, h)))
                .collect(),
            backend_latency: i
                .m
                .backends
                .lock()
                .iter()
                .flat_map(|b| b.lus.iter())
                .flat_map(|(id, _, s)| s.latency().map(|(op, h)| (id.clone(), op, h)))
                .collect(),
        }
    }
}

/// The management settings in force: listen address and tokens, with the environment
/// (`SWITCHYARD_ADMIN_TOKEN`, `SWITCHYARD_READ_TOKEN`) overriding the config.
/// The registered member named `node` (its name or its id).
fn find_member<'a>(
    st: &'a cluster::ClusterState,
    node: &str,
) -> Result<&'a cluster::NodeInfo, ApiError> {
    st.nodes
        .values()
        .find(|n| n.name == node || n.id.to_string() == node)
        .ok_or_else(|| {
            let known: Vec<String> = st.nodes.values().map(|n| n.name.clone()).collect();
            ApiError::not_found(
                format!("no cluster member named {node:?}"),
                format!("members: {}", known.join(", ")),
            )
        })
}

/// The most data a remap copies while hosts wait on its hold (larger moves are a
/// migration's job).
const MAX_COPY_UNDER_HOLD: u64 = 64 << 20;

fn axum_status(code: u16) -> mgmt::StatusCode {
    mgmt::StatusCode::from_u16(code).expect("valid status")
}

pub fn auth_from(cfg: &Config) -> mgmt::AuthConfig {
    let m = cfg.management.clone().unwrap_or_default();
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    mgmt::AuthConfig {
        admin_token: env("SWITCHYARD_ADMIN_TOKEN").or(m.admin_token),
        read_token: env("SWITCHYARD_READ_TOKEN").or(m.read_token),
    }
}

#[cfg(test)]
mod tests {
    //! In-process API tests: a node built from a temp config (two file stores, a volume
    //! over them), its router on an ephemeral port, and the blocking client.
    use super::*;
    use mgmt::client::{Client as ApiClient, ClientError};
    use mgmt::model::Event;
    use std::sync::atomic::AtomicUsize;
    use volume::VolumeDef;

    const ADMIN: &str = "admin-token-0123456789";
    const READ: &str = "read-token-0123456789";
    const BS: usize = 512;

    struct TestNode {
        _dir: tempfile::TempDir,
        rt: tokio::runtime::Runtime,
        url: String,
        volume: Arc<dyn BlockStore>,
        shutdown: CancellationToken,
        dir: PathBuf,
    }

    impl Drop for TestNode {
        fn drop(&mut self) {
            self.shutdown.cancel();
        }
    }

    fn config(tokens: bool) -> String {
        let mgmt = if tokens {
            format!("[management]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN}\"\nread_token = \"{READ}\"\n")
        } else {
            "[management]\nlisten = \"127.0.0.1:0\"\n".to_string()
        };
        format!(
            r#"
[node]
name = "testnode"

[[portal]]
listen = "127.0.0.1:0"

[[store]]
id = "a"
path = "a.img"
size = "4MiB"

[[store]]
id = "b"
path = "b.img"
size = "4MiB"

[[target]]
name = "iqn.2026-11.org.switchyard:mgmt-test"
[[target.lun]]
lun = 0
volume = "v1"

{mgmt}
[mapping]
epoch = 1
[[mapping.volumes]]
name = "v1"
wwn = "naa.600140500000000000000000000000a1"
block_size = 512
blocks = 4096
[[mapping.volumes.extents]]
vstart = 0
blocks = 2048
backend = "a"
bstart = 0
[[mapping.volumes.extents]]
vstart = 2048
blocks = 2048
backend = "a"
bstart = 2048
"#
        )
    }

    fn start(tokens: bool) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::parse(&config(tokens)).unwrap();
        cfg.node.data_dir = Some(dir.path().to_path_buf());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let shutdown = CancellationToken::new();
        let (url, volume) = rt.block_on(async {
            let mut node = crate::build::build(&cfg, None).await.unwrap();
            let managed = std::mem::take(&mut node.managed);
            let server = iscsi::Server::new(node.fabric.clone(), node.targets, node.portals);
            let listeners = server.bind().await.unwrap();
            let portals = listeners
                .iter()
                .map(|l| PortalView {
                    address: l.local_addr().unwrap().to_string(),
                    tpgt: 1,
                })
                .collect();
            let volume = server.shared().targets()[0].luns[0].lu.store().clone();
            let api = NodeMgmt::new(&cfg, server.shared().clone(), portals, managed, None);
            api.spawn_watchers(shutdown.clone());
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", l.local_addr().unwrap());
            let sd = shutdown.clone();
            tokio::spawn(mgmt::serve(l, Arc::new(api), auth_from(&cfg), sd));
            let sd = shutdown.clone();
            tokio::spawn(async move { server.run(listeners, sd).await });
            (url, volume)
        });
        TestNode {
            dir: dir.path().to_path_buf(),
            _dir: dir,
            rt,
            url,
            volume,
            shutdown,
        }
    }

    fn status_of(e: ClientError) -> u16 {
        e.status()
            .unwrap_or_else(|| panic!("not an API error: {e}"))
    }

    fn remap_body(backend_hi: &str, bstart_hi: u64) -> serde_json::Value {
        serde_json::json!({"extents": [
            {"vstart": 0, "blocks": 2048, "backend": "a", "bstart": 0},
            {"vstart": 2048, "blocks": 2048, "backend": backend_hi, "bstart": bstart_hi}
        ]})
    }

    #[test]
    fn tokens_and_roles() {
        let n = start(true);
        let anon = ApiClient::new(&n.url, None);
        let bad = ApiClient::new(&n.url, Some("wrong-token-0123456789".into()));
        let read = ApiClient::new(&n.url, Some(READ.into()));
        let admin = ApiClient::new(&n.url, Some(ADMIN.into()));
        // No token, a wrong token: 401, with the JSON error body.
        let e = anon.get::<Vec<VolumeView>>("/api/v1/volumes").unwrap_err();
        assert_eq!(status_of(e), 401);
        let e = bad.get::<NodeStatus>("/api/v1/status").unwrap_err();
        assert!(e.to_string().contains("not valid"), "{e}");
        assert_eq!(status_of(e), 401);
        assert!(anon.get_text("/metrics").is_err());
        // The console page itself needs no token (it holds no data).
        assert!(anon.get_text("/").unwrap().contains("switchyard console"));
        // Read token: reads, but cannot remap.
        assert_eq!(
            read.get::<Vec<VolumeView>>("/api/v1/volumes")
                .unwrap()
                .len(),
            1
        );
        let e = read
            .post::<_, ChangeRecord>("/api/v1/volumes/v1/remap", &remap_body("b", 0))
            .unwrap_err();
        assert_eq!(status_of(e), 403);
        assert_eq!(read.get::<NodeStatus>("/api/v1/status").unwrap().epoch, 1);
        // Admin: remaps.
        let (code, rec) = admin
            .post::<_, ChangeRecord>("/api/v1/volumes/v1/remap", &remap_body("b", 0))
            .unwrap();
        assert_eq!(code, 200);
        assert_eq!(rec.state, ChangeState::Done);
        assert_eq!(admin.get::<NodeStatus>("/api/v1/status").unwrap().epoch, 2);
    }

    #[test]
    fn without_tokens_reads_are_open_and_changes_refused() {
        let n = start(false);
        let anon = ApiClient::new(&n.url, None);
        let s: NodeStatus = anon.get("/api/v1/status").unwrap();
        assert_eq!(s.name, "testnode");
        assert_eq!(s.leader, "testnode");
        let e = anon
            .post::<_, ChangeRecord>("/api/v1/volumes/v1/remap", &remap_body("b", 0))
            .unwrap_err();
        assert_eq!(status_of(e), 403);
        assert!(e_text(&anon).contains("admin_token"));
    }

    fn e_text(c: &ApiClient) -> String {
        c.post::<_, ChangeRecord>("/api/v1/volumes/v1/remap", &remap_body("b", 0))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn lists_mapping_and_bad_input() {
        let n = start(true);
        let c = ApiClient::new(&n.url, Some(ADMIN.into()));
        let s: NodeStatus = c.get("/api/v1/status").unwrap();
        assert_eq!((s.health.as_str(), s.nodes.len()), ("ok", 1));
        assert_eq!(s.portals.len(), 1);
        assert!(c
            .get::<Vec<SessionView>>("/api/v1/sessions")
            .unwrap()
            .is_empty());
        let t: Vec<TargetView> = c.get("/api/v1/targets").unwrap();
        assert_eq!(t[0].luns[0].kind, "volume");
        assert_eq!(t[0].luns[0].wwn, "naa.600140500000000000000000000000a1");
        assert_eq!(t[0].luns[0].blocks, 4096);
        let b: Vec<BackendView> = c.get("/api/v1/backends").unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].lus[0].mapped_blocks, 4096);
        assert_eq!(b[1].lus[0].mapped_blocks, 0);
        assert_eq!(b[0].lus[0].capacity_bytes, 4 << 20);
        let v: VolumeView = c.get("/api/v1/volumes/v1").unwrap();
        assert_eq!(v.epoch, 1);
        assert_eq!(v.map.len(), 2);
        assert_eq!(v.exports[0].lun, 0);
        let e = c.get::<VolumeView>("/api/v1/volumes/nope").unwrap_err();
        assert!(e.to_string().contains("v1"), "{e}");
        assert_eq!(status_of(e), 404);
        // Export as TOML and JSON; the TOML validates unchanged.
        let toml = c.get_text("/api/v1/mapping?format=toml").unwrap();
        assert!(toml.contains("epoch = 1"), "{toml}");
        let j: MappingTable = c.get("/api/v1/mapping").unwrap();
        assert_eq!(j.volumes[0].extents.len(), 2);
        let (code, r): (u16, ValidationReport) = c
            .post_text("/api/v1/mapping/validate", "application/toml", &toml)
            .unwrap();
        assert!(r.valid && code == 200 && r.changes.is_empty(), "{r:?}");
        // A table with overlapping extents, an unknown back-end and a LU too small.
        let bad = toml
            .replace("bstart = 2048", "bstart = 9000")
            .replacen("backend = \"a\"", "backend = \"zz\"", 1)
            .replace("vstart = 2048", "vstart = 2000");
        let (code, r): (u16, ValidationReport) = c
            .post_text("/api/v1/mapping/validate", "application/toml", &bad)
            .unwrap();
        assert_eq!(code, 422);
        assert!(!r.valid);
        let all = r.problems.join("\n");
        assert!(all.contains("zz"), "{all}");
        assert!(all.contains("overlap"), "{all}");
        assert!(all.contains("which has 8192 blocks"), "{all}");
        let e = c
            .post_text::<ValidationReport>(
                "/api/v1/mapping/validate",
                "application/toml",
                "epoch = ",
            )
            .unwrap_err();
        assert_eq!(status_of(e), 400);
        // Bad remaps change nothing: unknown volume, invalid extents, malformed body,
        // a stale epoch, the same extents.
        let e = c
            .post::<_, ChangeRecord>("/api/v1/volumes/nope/remap", &remap_body("b", 0))
            .unwrap_err();
        assert_eq!(status_of(e), 404);
        let e = c
            .post::<_, ChangeRecord>("/api/v1/volumes/v1/remap", &remap_body("b", 8000))
            .unwrap_err();
        assert!(e.to_string().contains("which has 8192 blocks"), "{e}");
        assert_eq!(status_of(e), 422);
        let e = c
            .post::<_, ChangeRecord>(
                "/api/v1/volumes/v1/remap",
                &serde_json::json!({"extent": []}),
            )
            .unwrap_err();
        assert_eq!(status_of(e), 400);
        let mut stale = remap_body("b", 0);
        stale["expect_epoch"] = 7.into();
        let e = c
            .post::<_, ChangeRecord>("/api/v1/volumes/v1/remap", &stale)
            .unwrap_err();
        assert_eq!(status_of(e), 409);
        let e = c
            .post::<_, ChangeRecord>("/api/v1/volumes/v1/remap", &remap_body("a", 2048))
            .unwrap_err();
        assert_eq!(status_of(e), 400);
        assert!(c
            .get::<Vec<ChangeRecord>>("/api/v1/changes")
            .unwrap()
            .is_empty());
        assert_eq!(c.get::<VolumeView>("/api/v1/volumes/v1").unwrap().epoch, 1);
        let e = c.get::<ChangeRecord>("/api/v1/changes/99").unwrap_err();
        assert_eq!(status_of(e), 404);
        let e = c.get::<serde_json::Value>("/api/v1/nothing").unwrap_err();
        assert_eq!(status_of(e), 404);
    }

    /// The block's expected content: `(lba, version)` stamped over the block.
    fn block(lba: u64, version: u32) -> Vec<u8> {
        let mut b = vec![0u8; BS];
        for (i, ch) in b.chunks_mut(12).enumerate() {
            let stamp = [&lba.to_le_bytes()[..], &version.to_le_bytes()[..]].concat();
            let n = ch.len();
            ch.copy_from_slice(&stamp[..n]);
            ch[0] ^= i as u8;
        }
        b
    }

    #[test]
    fn remap_under_load_moves_the_data_and_streams_events() {
        let n = start(true);
        let c = ApiClient::new(&n.url, Some(ADMIN.into()));
        // Initial content: every block stamped with version 0.
        for lba in 0..4096u64 {
            n.volume.write(lba, &block(lba, 0), false).unwrap();
        }
        // Follow the event stream from now on.
        let since = c
            .get::<Vec<Event>>("/api/v1/events?limit=1")
            .unwrap()
            .last()
            .map(|e| e.seq)
            .unwrap_or(0);
        let sse = c.clone();
        let events = std::thread::spawn(move || {
            let mut got = Vec::new();
            sse.follow_events(Some(since), |ev| {
                let done = ev.change.as_ref().is_some_and(|ch| ch.state.is_final());
                got.push(ev);
                !done
            })
            .unwrap();
            got
        });
        // Load: writers each own every 4th block and rewrite it with a rising version,
        // reading it back at once; they run before, during and after the remap.
        let stop = Arc::new(AtomicBool::new(false));
        let ios = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..3u64)
            .map(|w| {
                let (vol, stop, ios) = (n.volume.clone(), stop.clone(), ios.clone());
                std::thread::spawn(move || {
                    let mut last = vec![0u32; 4096];
                    let mut version = 0u32;
                    let mut rbuf = vec![0u8; BS];
                    while !stop.load(Ordering::Relaxed) {
                        version += 1;
                        // Focus on the moving half, but touch the other half too.
                        for lba in (2048 + w..4096).step_by(64).chain((w..2048).step_by(512)) {
                            vol.write(lba, &block(lba, version), false).unwrap();
                            last[lba as usize] = version;
                            vol.read(lba, &mut rbuf).unwrap();
                            assert_eq!(rbuf, block(lba, version), "lba {lba} read back");
                            ios.fetch_add(2, Ordering::Relaxed);
                        }
                    }
                    (w, last)
                })
            })
            .collect();
        while ios.load(Ordering::Relaxed) < 500 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (code, rec) = c
            .post::<_, ChangeRecord>("/api/v1/volumes/v1/remap", &remap_body("b", 0))
            .unwrap();
        let during = ios.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::Relaxed);
        let mut last = vec![0u32; 4096];
        for h in writers {
            let (_, l) = h.join().unwrap();
            for (i, v) in l.into_iter().enumerate() {
                last[i] = last[i].max(v);
            }
        }
        assert!(
            ios.load(Ordering::Relaxed) > during,
            "I/O kept running after the remap"
        );
        assert_eq!(code, 200);
        assert_eq!(rec.state, ChangeState::Done, "{rec:?}");
        assert_eq!((rec.from_epoch, rec.to_epoch), (1, 2));
        assert_eq!(rec.moved_blocks, 2048);
        assert_eq!(rec.copied_blocks, 2048);
        assert_eq!(rec.affected, vec![BlockRange::new(2048, 4096)]);
        assert!(rec.hold_ms.is_some());
        let states: Vec<ChangeState> = rec.history.iter().map(|h| h.state).collect();
        use ChangeState::*;
        assert_eq!(
            states,
            vec![Staged, Holding, Draining, Copying, Switched, Done]
        );
        // The data is intact, through the volume and on the new back-end.
        let mut rbuf = vec![0u8; BS];
        for lba in 0..4096u64 {
            n.volume.read(lba, &mut rbuf).unwrap();
            assert_eq!(rbuf, block(lba, last[lba as usize]), "lba {lba}");
        }
        let b = std::fs::read(n.dir.join("b.img")).unwrap();
        for lba in 2048..4096u64 {
            let off = (lba - 2048) as usize * BS;
            assert_eq!(
                &b[off..off + BS],
                &block(lba, last[lba as usize])[..],
                "b.img block {}",
                lba - 2048
            );
        }
        // The map shows the new home, at the new epoch.
        let v: VolumeView = c.get("/api/v1/volumes/v1").unwrap();
        assert_eq!(v.epoch, 2);
        assert_eq!(v.map[1].backend.as_deref(), Some("b"));
        assert_eq!(v.map[1].bstart, Some(0));
        assert!(v.held.is_empty());
        assert_eq!(v.io.errors, 0);
        let table: MappingTable = c.get("/api/v1/mapping").unwrap();
        assert_eq!(table.epoch, 2);
        let bk: Vec<BackendView> = c.get("/api/v1/backends").unwrap();
        assert_eq!(bk[1].lus[0].mapped_blocks, 2048);
        // SSE delivered every state of the change, in order, and progress.
        let evs = events.join().unwrap();
        let seen: Vec<ChangeState> = evs
            .iter()
            .filter(|e| e.kind == "change")
            .filter_map(|e| e.change.as_ref().map(|c| c.state))
            .collect();
        assert_eq!(
            seen,
            vec![Staged, Holding, Draining, Copying, Switched, Done]
        );
        assert!(evs.iter().any(|e| e.kind == "progress"));
        assert!(evs.windows(2).all(|w| w[0].seq < w[1].seq));
        // The change is listed; metrics count it.
        let cs: Vec<ChangeRecord> = c.get("/api/v1/changes").unwrap();
        assert_eq!(cs.len(), 1);
        let m = c.get_text("/metrics").unwrap();
        assert!(
            m.contains("switchyard_remap_hold_seconds_count{node=\"testnode\"} 1"),
            "{m}"
        );
        assert!(
            m.contains("switchyard_volume_writes_total{node=\"testnode\",volume=\"v1\"}"),
            "{m}"
        );
        assert!(
            m.contains("switchyard_backend_errors_total{node=\"testnode\"} 0"),
            "{m}"
        );
        assert!(
            m.contains("switchyard_changes{node=\"testnode\",state=\"done\"} 1"),
            "{m}"
        );
        assert!(m.contains("switchyard_commands_total"), "{m}");
        n.rt.block_on(async {});
    }

    #[test]
    fn move_planning() {
        let def = |ex: &[(u64, u64, &str, u64)]| VolumeDef {
            name: "v".into(),
            wwn: "naa.6001405000000000".into(),
            block_size: 512,
            blocks: 100,
            holes: Default::default(),
            extents: ex
                .iter()
                .map(|(v, n, b, s)| volume::Extent {
                    vstart: *v,
                    blocks: *n,
                    backend: b.to_string(),
                    bstart: *s,
                    mirror: None,
                })
                .collect(),
        };
        let old = def(&[(0, 50, "a", 0)]);
        let new = def(&[(0, 30, "a", 0), (30, 20, "b", 5), (50, 10, "b", 40)]);
        let aff = volume::table::affected_ranges(&old, &new);
        let mv = moves(&old, &new, &aff);
        assert_eq!(mv.len(), 2);
        assert_eq!(
            (mv[0].blocks, mv[0].src.clone(), mv[0].dst.clone()),
            (20, Some(("a".into(), 30)), ("b".into(), 5))
        );
        assert_eq!((mv[1].blocks, mv[1].src.clone()), (10, None));
        assert!(crossing_moves(&mv).is_none());
        // Swapping two halves in place cannot be done in one pass.
        let old = def(&[(0, 10, "a", 0), (10, 10, "a", 10)]);
        let new = def(&[(0, 10, "a", 10), (10, 10, "a", 0)]);
        let mv = moves(&old, &new, &volume::table::affected_ranges(&old, &new));
        assert!(crossing_moves(&mv).is_some());
    }
}
