//! The management network, client side: signed HTTP/1.1 POSTs of JSON between nodes
//! (`/v1/append`, `/v1/vote`, `/v1/snapshot` for Raft; `/v1/admin` for forwarded
//! admin requests; `/v1/status`), with a timeout on every call, exponential backoff for
//! Raft replication towards an unreachable peer, a record of when each peer was last
//! heard from, and fault injection for tests ([`Faults`]).
//!
//! One TCP connection per call: management traffic is a few heartbeats a second, and a
//! fresh connection never carries a stale peer's state.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use parking_lot::Mutex;
use serde::{de::DeserializeOwned, Serialize};

use crate::auth::{Authenticator, H_NODE, H_NONCE, H_SIG, H_TIME};
use crate::{NodeId, TypeConfig};

/// Fault injection: make this node's management network drop traffic.
#[derive(Debug, Default)]
pub struct Faults {
    isolated: AtomicBool,
    blocked: Mutex<BTreeSet<NodeId>>,
}

impl Faults {
    /// Drop all traffic to and from this node (`true`), or restore it.
    pub fn isolate(&self, on: bool) {
        self.isolated.store(on, Ordering::SeqCst);
    }

    /// Drop traffic between this node and `peer` only.
    pub fn block(&self, peer: NodeId, on: bool) {
        let mut b = self.blocked.lock();
        if on {
            b.insert(peer);
        } else {
            b.remove(&peer);
        }
    }

    pub fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::SeqCst)
    }

    /// True when traffic with `peer` is dropped.
    pub fn drops(&self, peer: NodeId) -> bool {
        self.is_isolated() || self.blocked.lock().contains(&peer)
    }
}

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    /// The request was certainly not processed (no connection, refused, dropped by a
    /// fault, or not authenticated): safe to retry.
    #[error("node {target} at {addr} unreachable: {reason}")]
    NotSent {
        target: NodeId,
        addr: String,
        reason: String,
    },
    /// The peer refused our signature (401): the cluster secrets differ.
    #[error("node {target} at {addr} refused our credentials (401): is the cluster secret the same on both nodes?")]
    Unauthorized { target: NodeId, addr: String },
    /// Sent, but no answer in time: it may or may not have been processed.
    #[error("node {target} at {addr} did not answer in {timeout:?}")]
    Timeout {
        target: NodeId,
        addr: String,
        timeout: Duration,
    },
    /// Sent, and the answer was an error or unreadable.
    #[error("node {target} at {addr}: {reason}")]
    Failed {
        target: NodeId,
        addr: String,
        reason: String,
    },
}

/// The client side of the management network, shared by everything that sends.
pub struct Transport {
    pub(crate) id: NodeId,
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) faults: Arc<Faults>,
    contact: Mutex<HashMap<NodeId, Instant>>,
    /// Requests this node refused for bad credentials (for tests and metrics).
    pub(crate) refused: AtomicU64,
    pub(crate) rpc_timeout: Duration,
}

/// Aborts a spawned task when dropped (the HTTP connection driver of one call).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Transport {
    pub(crate) fn new(
        id: NodeId,
        auth: Arc<Authenticator>,
        faults: Arc<Faults>,
        rpc_timeout: Duration,
    ) -> Transport {
        Transport {
            id,
            auth,
            faults,
            contact: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
            rpc_timeout,
        }
    }

    /// Note that `peer` was heard from (an authenticated request or a good answer).
    pub(crate) fn saw(&self, peer: NodeId) {
        self.contact.lock().insert(peer, Instant::now());
    }

    /// When `peer` was last heard from.
    pub(crate) fn last_contact(&self, peer: NodeId) -> Option<Instant> {
        self.contact.lock().get(&peer).copied()
    }

    /// POST `req` as JSON to `path` on `target` at `addr`, signed; decode the answer.
    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        let not_sent = |reason: String| RpcError::NotSent {
            target,
            addr: addr.to_string(),
            reason,
        };
        if self.faults.drops(target) {
            return Err(not_sent("dropped by fault injection".into()));
        }
        let body = serde_json::to_vec(req).map_err(|e| not_sent(e.to_string()))?;
        let signed = self.auth.sign(self.id, path, &body);
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, addr)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(H_NODE, signed.node.to_string())
            .header(H_TIME, signed.time_ms.to_string())
            .header(H_NONCE, &signed.nonce)
            .header(H_SIG, &signed.sig)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| not_sent(e.to_string()))?;

        // Connect within the timeout too; a connect failure means "not sent".
        let connect = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await;
        let stream = match connect {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(not_sent(e.to_string())),
            Err(_) => return Err(not_sent(format!("connect timed out after {timeout:?}"))),
        };
        let _ = stream.set_nodelay(true);
        let exchange = async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| not_sent(e.to_string()))?;
            let _driver = AbortOnDrop(tokio::spawn(async move {
                let _ = conn.await;
            }));
            let resp = sender
                .send_request(request)
                .await
                .map_err(|e| RpcError::Failed {
                    target,
                    addr: addr.to_string(),
                    reason: e.to_string(),
                })?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| RpcError::Failed {
                    target,
                    addr: addr.to_string(),
                    reason: e.to_string(),
                })?
                .to_bytes();
            Ok::<_, RpcError>((status, bytes))
        };
        let (status, bytes) = match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(RpcError::Timeout {
                    target,
                    addr: addr.to_string(),
                    timeout,
                })
            }
        };
        match status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => {
                return Err(RpcError::Unauthorized {
                    target,
                    addr: addr.to_string(),
                })
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                return Err(not_sent(String::from_utf8_lossy(&bytes).into_owned()))
            }
            s => {
                return Err(RpcError::Failed {
                    target,
                    addr: addr.to_string(),
                    reason: format!("HTTP {s}: {}", String::from_utf8_lossy(&bytes)),
                })
            }
        }
        self.saw(target);
        serde_json::from_slice(&bytes).map_err(|e| RpcError::Failed {
            target,
            addr: addr.to_string(),
            reason: format!("unreadable answer: {e}"),
        })
    }
}

/// Creates a [`Network`] per peer for openraft.
pub(crate) struct NetworkFactory {
    pub transport: Arc<Transport>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Network {
        Network {
            target,
            addr: node.addr.clone(),
            transport: self.transport.clone(),
        }
    }
}

/// openraft's connection to one peer.
pub(crate) struct Network {
    target: NodeId,
    addr: String,
    transport: Arc<Transport>,
}

impl Network {
    async fn raft_call<Req, Resp, E>(
        &self,
        path: &str,
        action: RPCTypes,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let timeout = option.hard_ttl().min(self.transport.rpc_timeout);
        let res: Result<Resp, RaftError<NodeId, E>> = self
            .transport
            .call(self.target, &self.addr, path, req, timeout)
            .await
            .map_err(|e| match e {
                RpcError::NotSent { .. } | RpcError::Unauthorized { .. } => {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                RpcError::Timeout { timeout, .. } => RPCError::Timeout(Timeout {
                    action,
                    id: self.transport.id,
                    target: self.target,
                    timeout,
                }),
                RpcError::Failed { .. } => RPCError::Network(NetworkError::new(&e)),
            })?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.raft_call("/v1/append", RPCTypes::AppendEntries, &rpc, &option)
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.raft_call("/v1/snapshot", RPCTypes::InstallSnapshot, &rpc, &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.raft_call("/v1/vote", RPCTypes::Vote, &rpc, &option)
            .await
    }

    /// Exponential backoff towards a peer that does not answer: 100 ms doubling to 1 s.
    fn backoff(&self) -> openraft::network::Backoff {
        let mut d = Duration::from_millis(100);
        openraft::network::Backoff::new(std::iter::from_fn(move || {
            let cur = d;
            d = (d * 2).min(Duration::from_secs(1));
            Some(cur)
        }))
    }
}
