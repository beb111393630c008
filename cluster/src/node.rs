//! [`ClusterNode`]: one member of the cluster — Raft, durable storage, the management
//! server — behind the [`Cluster`] API.
//!
//! Admin requests ([`Cluster::propose`], membership changes) are accepted on any node.
//! A node that is not the leader forwards the request to the leader it knows; with no
//! leader it retries with backoff until `propose_timeout`, then fails with
//! [`ClusterError::NoQuorum`]. A leader that cannot commit within that time (it lost
//! its majority) fails the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, ServerState};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::auth::Authenticator;
use crate::change::{ChangeId, Phase};
use crate::config::ClusterConfig;
use crate::state::{ClusterState, Command, NodeInfo, Outcome, Role};
use crate::store::{Event, LogStore, Published, StateMachine};
use crate::transport::{Faults, NetworkFactory, RpcError, Transport};
use crate::{Applied, Cluster, ClusterError, ClusterFuture, Member, NodeId, TypeConfig};

/// An admin request: sent to any member on `/v1/admin` (it forwards), or by a member
/// to the leader on `/v1/leader` (executed there or refused with `NotLeader`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum AdminRequest {
    Propose(Command),
    AddNode(NodeInfo),
    RemoveNode(NodeId),
    /// A participant finished `phase` of change `id`: kept by the leader in memory and
    /// committed with the change's next transition (see [`ClusterNode::ack_direct`]).
    Ack {
        id: ChangeId,
        node: NodeId,
        phase: Phase,
        /// The change's drain retries when the phase began: a phase entered again
        /// after a retry needs new acknowledgements.
        round: u32,
        at_ms: u64,
    },
}

/// The answer to an [`AdminRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum AdminReply {
    Applied(Applied),
    Done,
}

/// A node's view, served on `/v1/status` (for the console and tests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub id: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub state: String,
    pub applied_index: u64,
    /// Applied and settled (see [`crate::store::Settling`]); absent from nodes that
    /// predate it, whose applied index is also their settled one.
    #[serde(default)]
    pub settled_index: Option<u64>,
    pub table_epoch: u64,
}

/// Direct acknowledgements by (change, phase, round): node -> when.
pub(crate) type DirectAcks = BTreeMap<(ChangeId, Phase, u32), BTreeMap<NodeId, u64>>;

pub(crate) struct Inner {
    pub id: NodeId,
    pub raft: Raft<TypeConfig>,
    pub transport: Arc<Transport>,
    pub published: Arc<Published>,
    pub sm: StateMachine,
    pub cfg: ClusterConfig,
    pub addr: String,
    /// Acknowledgements received directly (leader only), by change and phase: node ->
    /// when. Only the newest change's are kept.
    pub acks: parking_lot::Mutex<DirectAcks>,
    /// What this node does when the leader says every participant of a change has
    /// switched (`/v1/release`): the remap participant releases its hold.
    pub release: parking_lot::RwLock<Option<ReleaseHandler>>,
    /// Woken when a direct acknowledgement arrives (the remap driver waits on it).
    pub ack_arrived: tokio::sync::Notify,
    /// The management API URL this node registers (set once the API listens).
    pub api: parking_lot::Mutex<Option<String>>,
    /// Seals secrets kept in the replicated state (`sealed.rs`).
    pub sealer: crate::sealed::Sealer,
}

/// Called with a change id when the leader tells this node it may release the hold of
/// that change early (every participant has switched).
pub type ReleaseHandler = Arc<dyn Fn(ChangeId) + Send + Sync>;

/// One running member of the cluster.
pub struct ClusterNode {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    local_addr: SocketAddr,
}

fn raft_config(cfg: &ClusterConfig) -> Result<openraft::Config, ClusterError> {
    openraft::Config {
        cluster_name: "switchyard".to_string(),
        heartbeat_interval: cfg.heartbeat_ms,
        election_timeout_min: cfg.election_timeout_ms,
        election_timeout_max: cfg.election_timeout_ms * 2,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
        max_in_snapshot_log_to_keep: cfg.snapshot_every.min(200),
        purge_batch_size: cfg.snapshot_every.min(256),
        ..Default::default()
    }
    .validate()
    .map_err(|e| ClusterError::Config(e.to_string()))
}

impl ClusterNode {
    /// Start a member: open its data directory, bind the management address, start
    /// Raft, and — on first start only — form a cluster with `peers` (or alone), or
    /// join one through `join`.
    pub async fn start(cfg: ClusterConfig) -> Result<ClusterNode, ClusterError> {
        cfg.validate()?;
        let secret = cfg.load_secret()?;
        let storage =
            |e: std::io::Error| ClusterError::Storage(format!("{}: {e}", cfg.data_dir.display()));
        let listener = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .map_err(|e| ClusterError::Config(format!("cannot listen on {}: {e}", cfg.listen)))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| ClusterError::Config(e.to_string()))?;
        let addr = cfg
            .advertise
            .clone()
            .unwrap_or_else(|| local_addr.to_string());

        let log = LogStore::open(&cfg.data_dir).map_err(storage)?;
        let fresh = log.is_empty();
        let published = Published::new();
        let sm = StateMachine::open(&cfg.data_dir, published.clone()).map_err(storage)?;
        let transport = Arc::new(Transport::new(
            cfg.id,
            Arc::new(Authenticator::new(&secret)),
            Arc::new(Faults::default()),
            Duration::from_millis(cfg.rpc_timeout_ms),
        ));
        let raft = Raft::new(
            cfg.id,
            Arc::new(raft_config(&cfg)?),
            NetworkFactory {
                transport: transport.clone(),
            },
            log,
            sm.clone(),
        )
        .await
        .map_err(|e| ClusterError::Storage(e.to_string()))?;

        if cfg.witness {
            // A witness votes but never stands for election: leadership is the right to
            // lead a remap, which takes a node that serves I/O.
            raft.runtime_config().elect(false);
        }
        let inner = Arc::new(Inner {
            id: cfg.id,
            raft,
            transport,
            published,
            sm,
            cfg: cfg.clone(),
            addr: addr.clone(),
            acks: parking_lot::Mutex::new(BTreeMap::new()),
            release: parking_lot::RwLock::new(None),
            ack_arrived: tokio::sync::Notify::new(),
            api: parking_lot::Mutex::new(None),
            sealer: crate::sealed::Sealer::new(&secret),
        });
        let mut tasks = Vec::new();
        let app = crate::server::router(inner.clone());
        tasks.push(tokio::spawn(async move {
            let svc = app.into_make_service_with_connect_info::<SocketAddr>();
            // Small request/response pairs: without TCP_NODELAY a response split in
            // two segments waits for the peer's delayed ACK (~40 ms per RPC).
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            if let Err(e) = axum::serve(listener, svc).await {
                tracing::error!("cluster management server stopped: {e}");
            }
        }));

        // A witness does not initialize: `initialize` starts an election at once. The
        // data nodes, listing it among their peers, bring it in.
        let witness_waits = cfg.witness && !cfg.peers.is_empty();
        if fresh && cfg.join.is_none() && !witness_waits {
            let mut voters = BTreeMap::new();
            voters.insert(cfg.id, BasicNode { addr: addr.clone() });
            for p in &cfg.peers {
                voters.insert(
                    p.id,
                    BasicNode {
                        addr: p.addr.clone(),
                    },
                );
            }
            // Every initial member initializes with the same voter set: the same first
            // log entry everywhere, so this is safe to do on each.
            match inner.raft.initialize(voters).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(ClusterError::Membership(e.to_string())),
            }
        }
        let me = inner.clone();
        tasks.push(tokio::spawn(async move { me.register_self().await }));
        tracing::info!(id = cfg.id, %addr, fresh, "cluster node started");
        Ok(ClusterNode {
            inner,
            tasks,
            local_addr,
        })
    }

    /// The management address this node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Fault injection for tests: drop management traffic to and from this node.
    pub fn faults(&self) -> &Faults {
        &self.inner.transport.faults
    }

    /// Requests refused for bad credentials since start.
    pub fn refused_requests(&self) -> u64 {
        self.inner
            .transport
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Raft's view of this node.
    pub fn status(&self) -> Status {
        self.inner.status()
    }

    /// Wait until some node is leader (as this node sees it), up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<NodeId> {
        let mut rx = self.inner.raft.metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(l) = rx.borrow().current_leader {
                return Some(l);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// Wait until this node has applied log index `index`, up to `timeout`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.inner.raft.metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if rx.borrow().last_applied.is_some_and(|l| l.index >= index) {
                return true;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    /// A read barrier: ask the leader how far it has applied the log and wait until
    /// this node has applied as far (the leader itself: at once). A node that was cut
    /// off calls it before serving again, so it never serves a state older than what
    /// the cluster committed while it was away. False when there is no leader or it
    /// does not answer, or this node does not catch up within `timeout`.
    pub async fn sync_with_leader(&self, timeout: Duration) -> bool {
        let Some(leader) = self.inner.leader() else {
            return false;
        };
        if leader == self.inner.id {
            // Confirm leadership with a quorum (a restarted member may still name
            // itself from its stored vote) and wait for the state machine.
            return matches!(
                tokio::time::timeout(timeout, self.inner.raft.ensure_linearizable()).await,
                Ok(Ok(_))
            );
        }
        let Some(addr) = self.inner.addr_of(leader) else {
            return false;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let Ok(st) = self
            .inner
            .transport
            .call::<_, Status>(leader, &addr, "/v1/status", &(), timeout)
            .await
        else {
            return false;
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.wait_applied(st.applied_index, left).await
    }

    /// The members as the leader sees them (followers only hear from the leader, so
    /// only the leader knows who else is reachable). `None` when there is no leader or
    /// it does not answer within `timeout`.
    pub async fn leader_view(&self, timeout: Duration) -> Option<Vec<Member>> {
        let leader = self.inner.leader()?;
        if leader == self.inner.id {
            return Some(self.inner.members());
        }
        let addr = self.inner.addr_of(leader)?;
        self.inner
            .transport
            .call::<_, Vec<Member>>(leader, &addr, "/v1/members", &(), timeout)
            .await
            .ok()
    }

    /// Seals and opens secrets kept in the replicated state with the cluster secret
    /// (`sealed.rs`): the CHAP secrets of arrays added online.
    pub fn sealer(&self) -> &crate::sealed::Sealer {
        &self.inner.sealer
    }

    /// Observe every applied command synchronously, before Raft counts it as applied on
    /// this node: what `f` does is done when [`ClusterNode::confirm_applied`] (or a
    /// peer's `/v1/status`) reports the index. `f` must be quick and must not block;
    /// what must finish before the index counts (a PREEMPT AND ABORT's drain of writes
    /// in flight) holds a guard from [`ClusterNode::settling`] meanwhile. Replaces any
    /// previous one.
    pub fn set_applier(&self, f: crate::store::Applier) {
        *self.inner.published.applier.write() = Some(f);
    }

    /// Applied entries whose local effect is still being completed: an applier holds
    /// an index here until that effect is done, and
    /// [`ClusterNode::confirm_applied`] waits for it.
    pub fn settling(&self) -> Arc<crate::store::Settling> {
        self.inner.published.settling.clone()
    }

    /// Wait until this node has applied and settled log index `index`, up to `timeout`.
    pub async fn wait_settled(&self, index: u64, timeout: Duration) -> bool {
        let settling = &self.inner.published.settling;
        let mut rx = self.inner.raft.metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let settled = settling.changed.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            let applied = rx.borrow().last_applied.map(|l| l.index).unwrap_or(0);
            if settling.settled(applied) >= index {
                return true;
            }
            let more = async {
                tokio::select! {
                    r = rx.changed() => r.is_ok(),
                    _ = &mut settled => true,
                }
            };
            if !matches!(tokio::time::timeout_at(deadline, more).await, Ok(true)) {
                return false;
            }
        }
    }

    /// Wait until each of `nodes` has *applied* log index `index` and settled it (see
    /// [`ClusterNode::settling`]), asking each over the management network (this node:
    /// locally). Returns the nodes that did not confirm. A node is given up on once it
    /// has not answered for `silent`, or, while it answers but has not settled, after
    /// `limit` in all. A coherent operation (a PR OUT) completes once every serving node
    /// has settled it — or has been silent for longer than its lease, after which it
    /// serves no I/O; a node that answers is still serving, so it is waited for (its
    /// settling waits for writes, which its back-end timeout bounds).
    pub async fn confirm_applied(
        &self,
        index: u64,
        nodes: &[NodeId],
        silent: Duration,
        limit: Duration,
    ) -> Vec<NodeId> {
        let start = tokio::time::Instant::now();
        let limit = start + limit.max(silent);
        let checks = nodes.iter().map(|&n| async move {
            if n == self.inner.id {
                let left = limit.saturating_duration_since(tokio::time::Instant::now());
                return (n, self.wait_settled(index, left).await);
            }
            let mut heard = start;
            let mut pause = Duration::from_millis(2);
            loop {
                let now = tokio::time::Instant::now();
                let deadline = limit.min(heard + silent);
                let left = deadline.saturating_duration_since(now);
                if left.is_zero() {
                    return (n, false);
                }
                if let Some(addr) = self.inner.addr_of(n) {
                    let r = self
                        .inner
                        .transport
                        .call::<_, Status>(n, &addr, "/v1/status", &(), left)
                        .await;
                    if let Ok(s) = r {
                        if s.settled_index.unwrap_or(s.applied_index) >= index {
                            return (n, true);
                        }
                        heard = tokio::time::Instant::now();
                    }
                }
                let left = limit
                    .min(heard + silent)
                    .saturating_duration_since(tokio::time::Instant::now());
                tokio::time::sleep(pause.min(left)).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        });
        futures::future::join_all(checks)
            .await
            .into_iter()
            .filter(|(_, ok)| !ok)
            .map(|(n, _)| n)
            .collect()
    }

    /// Take a snapshot now and drop the log it covers (an admin "compact"; tests use it
    /// to make a lagging node catch up from a snapshot). Log entries still being sent
    /// to a follower are kept until that send ends, so this retries for up to
    /// `timeout`; returns whether the log was purged up to the snapshot.
    /// Tell the leader that this node finished `phase` of change `id`, without a
    /// consensus round: the leader keeps it in memory and commits it with the change's
    /// next transition (an `AdvanceChange` carrying the acknowledgements). Waits at most
    /// `timeout`; on an error the caller may fall back to proposing `AckChange`. A new
    /// leader has none of these: participants send them again while the phase waits.
    pub async fn ack_direct(
        &self,
        id: ChangeId,
        phase: Phase,
        round: u32,
        at_ms: u64,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let req = AdminRequest::Ack {
            id,
            node: self.inner.id,
            phase,
            round,
            at_ms,
        };
        match tokio::time::timeout(timeout, self.inner.execute(req)).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(ClusterError::Uncertain(format!(
                "no answer from the leader within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    /// Completes when a direct acknowledgement arrives at this node (as leader).
    pub async fn ack_arrived(&self) {
        self.inner.ack_arrived.notified().await
    }

    /// What to do when the leader says every participant of a change has switched.
    /// Register this node's management API URL in the replicated state (every member
    /// then lists it), retrying in the background until it is committed.
    pub fn set_api_url(&self, url: String) {
        *self.inner.api.lock() = Some(url);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            for _ in 0..30 {
                let info = inner.self_info();
                let registered = inner.published.state.load().nodes.get(&inner.id).map(|n| {
                    let mut n = n.clone();
                    n.health = info.health.clone();
                    n
                });
                if registered.as_ref() == Some(&info) {
                    return;
                }
                if inner
                    .execute(AdminRequest::Propose(Command::RegisterNode(info)))
                    .await
                    .is_ok()
                {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            tracing::warn!("could not register this node's management URL");
        });
    }

    pub fn set_release_handler(&self, f: ReleaseHandler) {
        *self.inner.release.write() = Some(f);
    }

    /// Tell member `node` that every participant of change `id` has switched, so it
    /// may release its hold before the `resumed` transition is committed (this node
    /// itself: its handler runs here). Best effort: a member that does not hear it
    /// releases when it applies `resumed`.
    pub async fn send_release(&self, node: NodeId, id: ChangeId, timeout: Duration) -> bool {
        if node == self.inner.id {
            let h = self.inner.release.read().clone();
            if let Some(h) = h {
                h(id);
            }
            return true;
        }
        let Some(addr) = self.inner.addr_of(node) else {
            return false;
        };
        self.inner
            .transport
            .call::<_, bool>(node, &addr, "/v1/release", &id, timeout)
            .await
            .unwrap_or(false)
    }

    /// The acknowledgements of `phase` (entered after `round` drain retries) of change
    /// `id` this node (as leader) received directly: node -> when.
    pub fn direct_acks(&self, id: ChangeId, phase: Phase, round: u32) -> BTreeMap<NodeId, u64> {
        self.inner
            .acks
            .lock()
            .get(&(id, phase, round))
            .cloned()
            .unwrap_or_default()
    }

    pub async fn compact(&self, timeout: Duration) -> bool {
        let raft = &self.inner.raft;
        let mut rx = raft.metrics();
        let Some(target) = rx.borrow().last_applied.map(|l| l.index) else {
            return false;
        };
        if raft.trigger().snapshot().await.is_err() {
            return false;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (snap, purged) = {
                let m = rx.borrow();
                (m.snapshot.map(|l| l.index), m.purged.map(|l| l.index))
            };
            if purged.is_some_and(|p| p >= target) {
                return true;
            }
            if snap.is_some_and(|s| s >= target) && raft.trigger().purge_log(target).await.is_err()
            {
                return false;
            }
            let tick = tokio::time::Instant::now() + Duration::from_millis(50);
            if tokio::time::timeout_at(tick.min(deadline), rx.changed())
                .await
                .is_ok_and(|r| r.is_err())
                || tokio::time::Instant::now() >= deadline
            {
                return false;
            }
        }
    }

    /// Stop everything: Raft, the server, background tasks. What is on disk stays.
    pub async fn shutdown(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let _ = self.inner.raft.shutdown().await;
    }
}

impl Drop for ClusterNode {
    /// Dropping without [`ClusterNode::shutdown`] still stops everything (in the
    /// background).
    fn drop(&mut self) {
        if self.tasks.is_empty() {
            return;
        }
        for t in &self.tasks {
            t.abort();
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let raft = self.inner.raft.clone();
            rt.spawn(async move {
                let _ = raft.shutdown().await;
            });
        }
    }
}

fn write_err(
    this: NodeId,
    e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
) -> ClusterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ClusterError::NotLeader {
            this,
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ClusterError::Membership(e.to_string())
        }
        RaftError::Fatal(_) => ClusterError::Shutdown,
    }
}

impl Inner {
    fn self_info(&self) -> NodeInfo {
        let mut info = if self.cfg.witness {
            NodeInfo::witness(self.id, &self.cfg.name, &self.addr)
        } else {
            NodeInfo::voter(
                self.id,
                &self.cfg.name,
                &self.addr,
                self.cfg.portals.clone(),
            )
        };
        info.api = self.api.lock().clone();
        info
    }

    pub(crate) fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let st = self.published.state.load();
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        Status {
            id: self.id,
            leader: m.current_leader,
            term: m.current_term,
            state: format!("{:?}", m.state),
            applied_index: applied,
            settled_index: Some(self.published.settling.settled(applied)),
            table_epoch: st.table.epoch,
        }
    }

    fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    fn addr_of(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership().get_node(&id).map(|n| n.addr.clone())
    }

    /// Register (or re-register, after a restart with new portals) this node once a
    /// leader exists; first join the cluster if configured to.
    async fn register_self(self: Arc<Self>) {
        let info = self.self_info();
        let mut backoff = Duration::from_millis(100);
        let fresh_join = self
            .cfg
            .join
            .clone()
            .filter(|_| self.addr_of(self.id).is_none());
        if let Some(seed) = fresh_join {
            loop {
                let req = AdminRequest::AddNode(info.clone());
                let timeout = self.cfg.propose_timeout() * 3;
                match self
                    .transport
                    .call::<_, Result<AdminReply, ClusterError>>(
                        0,
                        &seed,
                        "/v1/admin",
                        &req,
                        timeout,
                    )
                    .await
                {
                    Ok(Ok(_)) => {
                        tracing::info!(id = self.id, %seed, "joined the cluster");
                        return;
                    }
                    Ok(Err(e)) => tracing::warn!(%seed, "join refused: {e}; retrying"),
                    Err(e @ RpcError::Unauthorized { .. }) => {
                        tracing::error!("cannot join through {seed}: {e}");
                    }
                    Err(e) => tracing::warn!("join through {seed}: {e}; retrying"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        loop {
            let registered = self.published.state.load().nodes.get(&self.id).map(|n| {
                let mut n = n.clone();
                n.health = info.health.clone();
                n
            });
            if registered.as_ref() == Some(&info) {
                return;
            }
            if self.leader().is_some() {
                match self
                    .execute(AdminRequest::Propose(Command::RegisterNode(info.clone())))
                    .await
                {
                    Ok(_) => return,
                    Err(e) => tracing::debug!("registering node {}: {e}; retrying", self.id),
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Execute `req` on the leader, forwarding if needed, retrying with backoff while
    /// there is no leader, for at most `propose_timeout`.
    pub(crate) async fn execute(&self, req: AdminRequest) -> Result<AdminReply, ClusterError> {
        let limit = self.cfg.propose_timeout();
        let start = Instant::now();
        let mut backoff = Duration::from_millis(25);
        let mut last = "no leader elected".to_string();
        loop {
            let remaining = limit.saturating_sub(start.elapsed());
            if remaining.is_zero() {
                return Err(ClusterError::NoQuorum {
                    waited_ms: start.elapsed().as_millis() as u64,
                    detail: last,
                });
            }
            match self.leader() {
                Some(l) if l == self.id => {
                    // Membership changes bound their own waits (and clean up after a
                    // timeout), so only proposals get the outer limit here.
                    let limit = match req {
                        AdminRequest::Propose(_) => remaining,
                        _ => remaining.max(self.cfg.propose_timeout() * 2),
                    };
                    match tokio::time::timeout(limit, self.execute_local(req.clone())).await {
                        Ok(Err(ClusterError::NotLeader { .. })) => last = "leadership moved".into(),
                        Ok(r) => return r,
                        Err(_) => {
                            return Err(ClusterError::NoQuorum {
                                waited_ms: start.elapsed().as_millis() as u64,
                                detail: format!(
                                    "node {} is leader but could not commit: a majority of voters did not acknowledge (the entry is discarded if another leader is elected meanwhile)",
                                    self.id
                                ),
                            })
                        }
                    }
                }
                Some(l) => match self.addr_of(l) {
                    None => last = format!("leader {l} has no known address"),
                    Some(addr) => {
                        let res = self
                            .transport
                            .call::<_, Result<AdminReply, ClusterError>>(
                                l,
                                &addr,
                                "/v1/leader",
                                &req,
                                remaining,
                            )
                            .await;
                        match res {
                            Ok(Err(ClusterError::NotLeader { .. })) => {
                                last = format!("node {l} is no longer leader")
                            }
                            Ok(r) => return r,
                            Err(e @ RpcError::NotSent { .. }) => last = e.to_string(),
                            Err(e @ RpcError::Unauthorized { .. }) => {
                                return Err(ClusterError::Unauthorized(e.to_string()))
                            }
                            Err(e) => return Err(ClusterError::Uncertain(e.to_string())),
                        }
                    }
                },
                None => {}
            }
            tokio::time::sleep(backoff.min(remaining)).await;
            backoff = (backoff * 2).min(Duration::from_millis(400));
        }
    }

    /// Execute `req` here, which must be the leader.
    pub(crate) async fn execute_local(
        &self,
        req: AdminRequest,
    ) -> Result<AdminReply, ClusterError> {
        match req {
            AdminRequest::Propose(cmd) => {
                let r = self
                    .raft
                    .client_write(cmd)
                    .await
                    .map_err(|e| write_err(self.id, e))?;
                match r.data {
                    Outcome::Refused(reason) => Err(ClusterError::Refused(reason)),
                    outcome => Ok(AdminReply::Applied(Applied {
                        index: r.log_id.index,
                        outcome,
                    })),
                }
            }
            AdminRequest::AddNode(info) => {
                self.add_member(info).await?;
                Ok(AdminReply::Done)
            }
            AdminRequest::Ack {
                id,
                node,
                phase,
                round,
                at_ms,
            } => {
                let leader = self.raft.current_leader().await;
                if leader != Some(self.id) {
                    return Err(ClusterError::NotLeader {
                        this: self.id,
                        leader,
                    });
                }
                let mut acks = self.acks.lock();
                // Older changes are over: their acknowledgements are not needed.
                acks.retain(|(c, _, _), _| *c >= id);
                acks.entry((id, phase, round))
                    .or_default()
                    .entry(node)
                    .or_insert(at_ms);
                drop(acks);
                self.ack_arrived.notify_waiters();
                Ok(AdminReply::Done)
            }
            AdminRequest::RemoveNode(id) => {
                let voters: BTreeSet<NodeId> = [id].into();
                let is_member = self.addr_of(id).is_some();
                if is_member {
                    self.raft
                        .change_membership(ChangeMembers::RemoveVoters(voters), false)
                        .await
                        .map_err(|e| write_err(self.id, e))?;
                }
                if self.published.state.load().nodes.contains_key(&id) {
                    self.raft
                        .client_write(Command::ForgetNode { id })
                        .await
                        .map_err(|e| write_err(self.id, e))?;
                }
                Ok(AdminReply::Done)
            }
        }
    }

    async fn add_member(&self, info: NodeInfo) -> Result<(), ClusterError> {
        let id = info.id;
        let m = self.raft.metrics().borrow().membership_config.clone();
        if let Some((other, _)) = m
            .membership()
            .nodes()
            .find(|(n, a)| **n != id && a.addr == info.mgmt_addr)
        {
            return Err(ClusterError::Membership(format!(
                "node {id} at {}: member {other} already has that address",
                info.mgmt_addr
            )));
        }
        let is_voter = m.membership().voter_ids().any(|v| v == id);
        if !is_voter {
            let node = BasicNode {
                addr: info.mgmt_addr.clone(),
            };
            // A voter that cannot be reached would cost the cluster its quorum, so the
            // node is promoted only after it has replicated the log up to its own
            // learner entry (openraft's blocking add_learner accepts a lag of up to
            // `replication_lag_threshold` entries, which for a small log is any lag).
            // Bounded: a node that cannot be reached (or has another secret) is removed
            // again.
            let added = self
                .raft
                .add_learner(id, node, false)
                .await
                .map_err(|e| write_err(self.id, e))?;
            let target = added.log_id.index;
            let catch_up = self.cfg.propose_timeout() * 3 / 4;
            let mut rx = self.raft.metrics();
            let caught_up = tokio::time::timeout(catch_up, async {
                loop {
                    let matched = rx
                        .borrow()
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&id).cloned().flatten());
                    if matched.is_some_and(|l| l.index >= target) {
                        return true;
                    }
                    if rx.changed().await.is_err() {
                        return false;
                    }
                }
            })
            .await;
            if caught_up != Ok(true) {
                let undo = self
                    .raft
                    .change_membership(ChangeMembers::RemoveNodes([id].into()), false);
                match tokio::time::timeout(self.cfg.propose_timeout(), undo).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!("removing learner {id} again: {e}"),
                    Err(_) => tracing::warn!("removing learner {id} again: timed out"),
                }
                return Err(ClusterError::Membership(format!(
                    "node {id} at {} did not catch up within {catch_up:?} (unreachable, or a different cluster secret); it was not added",
                    info.mgmt_addr
                )));
            }
            self.raft
                .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                .await
                .map_err(|e| write_err(self.id, e))?;
        }
        let r = self
            .raft
            .client_write(Command::RegisterNode(info))
            .await
            .map_err(|e| write_err(self.id, e))?;
        if let Outcome::Refused(reason) = r.data {
            return Err(ClusterError::Refused(reason));
        }
        Ok(())
    }

    pub(crate) fn members(&self) -> Vec<Member> {
        let m = self.raft.metrics().borrow().clone();
        let state = self.published.state.load();
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let stale_after = Duration::from_millis(self.cfg.election_timeout_ms * 3);
        let mut out: Vec<Member> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| {
                let ago = if *id == self.id {
                    Some(Duration::ZERO)
                } else {
                    self.transport.last_contact(*id).map(|t| t.elapsed())
                };
                Member {
                    id: *id,
                    addr: n.addr.clone(),
                    info: state.nodes.get(id).cloned(),
                    voter: voters.contains(id),
                    is_leader: m.current_leader == Some(*id),
                    last_contact_ms: ago.map(|d| d.as_millis() as u64),
                    reachable: ago.is_some_and(|d| d < stale_after),
                }
            })
            .collect();
        out.sort_by_key(|m| m.id);
        out
    }

    fn leader_contact(&self) -> Option<Duration> {
        let m = self.raft.metrics().borrow().clone();
        match m.current_leader {
            Some(l) if l == self.id && m.state == ServerState::Leader => {
                m.millis_since_quorum_ack.map(Duration::from_millis)
            }
            Some(l) => self.transport.last_contact(l).map(|t| t.elapsed()),
            None => None,
        }
    }
}

impl Cluster for ClusterNode {
    fn id(&self) -> NodeId {
        self.inner.id
    }

    fn state(&self) -> Arc<ClusterState> {
        self.inner.published.state.load_full()
    }

    fn leader(&self) -> Option<NodeId> {
        self.inner.leader()
    }

    fn members(&self) -> Vec<Member> {
        self.inner.members()
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.published.events.subscribe()
    }

    fn leader_contact(&self) -> Option<Duration> {
        self.inner.leader_contact()
    }

    fn propose(&self, cmd: Command) -> ClusterFuture<'_, Applied> {
        Box::pin(async move {
            let start = Instant::now();
            let applied = match self.inner.execute(AdminRequest::Propose(cmd)).await? {
                AdminReply::Applied(a) => a,
                AdminReply::Done => return Err(ClusterError::Uncertain("unexpected reply".into())),
            };
            // Read your writes: return once this node's state includes the command.
            let wait = self
                .inner
                .cfg
                .propose_timeout()
                .saturating_sub(start.elapsed());
            if !self.wait_applied(applied.index, wait).await {
                return Err(ClusterError::Uncertain(format!(
                    "committed at index {} but not yet applied on node {}",
                    applied.index, self.inner.id
                )));
            }
            Ok(applied)
        })
    }

    fn add_node(&self, info: NodeInfo) -> ClusterFuture<'_, ()> {
        Box::pin(async move {
            if info.role == Role::Witness && !info.portals.is_empty() {
                return Err(ClusterError::Config(format!(
                    "witness {} must not have iSCSI portals",
                    info.id
                )));
            }
            self.inner
                .execute(AdminRequest::AddNode(info))
                .await
                .map(|_| ())
        })
    }

    fn remove_node(&self, id: NodeId) -> ClusterFuture<'_, ()> {
        Box::pin(async move {
            self.inner
                .execute(AdminRequest::RemoveNode(id))
                .await
                .map(|_| ())
        })
    }
}

impl ClusterNode {
    /// The state machine's Raft membership (voter ids), for tests and the console.
    pub fn voter_ids(&self) -> BTreeSet<NodeId> {
        self.inner
            .sm
            .membership()
            .membership()
            .voter_ids()
            .collect()
    }
}
