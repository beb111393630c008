//! The management network, server side: one signed POST route per RPC.
//!
//! Every request is authenticated first ([`crate::auth`]); one that fails is answered
//! 401, logged with the peer's address and counted, and never reaches Raft. A node
//! isolated by fault injection answers 503 without looking at the request.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;

use crate::auth::{Signed, H_NODE, H_NONCE, H_SIG, H_TIME};
use crate::node::{AdminReply, AdminRequest, Inner};
use crate::{ClusterError, NodeId, TypeConfig};

pub(crate) fn router(node: Arc<Inner>) -> Router {
    Router::new()
        .route("/v1/{kind}", post(rpc))
        .with_state(node)
}

fn signed(headers: &HeaderMap) -> Option<Signed> {
    let get = |h: &str| headers.get(h)?.to_str().ok().map(str::to_string);
    Some(Signed {
        node: get(H_NODE)?.parse().ok()?,
        time_ms: get(H_TIME)?.parse().ok()?,
        nonce: get(H_NONCE)?,
        sig: get(H_SIG)?,
    })
}

fn reply<T: Serialize>(v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(b) => (StatusCode::OK, b).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn bad_request(e: serde_json::Error) -> Response {
    (StatusCode::BAD_REQUEST, format!("unreadable request: {e}")).into_response()
}

async fn rpc(
    State(node): State<Arc<Inner>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let faults = &node.transport.faults;
    if faults.is_isolated() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "dropped by fault injection",
        )
            .into_response();
    }
    let path = format!("/v1/{kind}");
    let from: NodeId = match signed(&headers)
        .ok_or(crate::auth::AuthError::Malformed)
        .and_then(|s| node.transport.auth.verify(&path, &s, &body))
    {
        Ok(id) => id,
        Err(e) => {
            node.transport.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, %path, "refused unauthenticated management request: {e}");
            return (StatusCode::UNAUTHORIZED, e.to_string()).into_response();
        }
    };
    if faults.drops(from) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "dropped by fault injection",
        )
            .into_response();
    }
    if from == node.id && matches!(kind.as_str(), "append" | "vote" | "snapshot") {
        // A member's address leads back here (or two nodes share an id): Raft must not
        // answer its own replication as a follower would.
        tracing::error!(%peer, %path, "refused a Raft message from this node's own id {from}: check that no two members share an id or an address");
        return (
            StatusCode::CONFLICT,
            format!("node {from} sent a Raft message to itself: no two members may share an id or an address"),
        )
            .into_response();
    }
    node.transport.saw(from);
    match kind.as_str() {
        "append" => match serde_json::from_slice::<AppendEntriesRequest<TypeConfig>>(&body) {
            Ok(req) => reply(&node.raft.append_entries(req).await),
            Err(e) => bad_request(e),
        },
        "vote" => match serde_json::from_slice::<VoteRequest<NodeId>>(&body) {
            Ok(req) => reply(&node.raft.vote(req).await),
            Err(e) => bad_request(e),
        },
        "snapshot" => match serde_json::from_slice::<InstallSnapshotRequest<TypeConfig>>(&body) {
            Ok(req) => reply(&node.raft.install_snapshot(req).await),
            Err(e) => bad_request(e),
        },
        "admin" => match serde_json::from_slice::<AdminRequest>(&body) {
            Ok(req) => {
                let r: Result<AdminReply, ClusterError> = node.execute(req).await;
                reply(&r)
            }
            Err(e) => bad_request(e),
        },
        "leader" => match serde_json::from_slice::<AdminRequest>(&body) {
            Ok(req) => {
                let r: Result<AdminReply, ClusterError> = node.execute_local(req).await;
                reply(&r)
            }
            Err(e) => bad_request(e),
        },
        "status" => reply(&node.status()),
        "members" => reply(&node.members()),
        "release" => match serde_json::from_slice::<crate::ChangeId>(&body) {
            Ok(id) => {
                // Only the leader may say so.
                if node.raft.current_leader().await != Some(from) {
                    return reply(&false);
                }
                let h = node.release.read().clone();
                if let Some(h) = h {
                    h(id);
                }
                reply(&true)
            }
            Err(e) => bad_request(e),
        },
        _ => (StatusCode::NOT_FOUND, format!("no RPC {path}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use openraft::raft::{VoteRequest, VoteResponse};
    use openraft::Vote;

    use crate::auth::Authenticator;
    use crate::transport::{Faults, RpcError, Transport};
    use crate::{ClusterConfig, ClusterNode, NodeId};

    const SECRET: &str = "0123456789abcdef0123";

    #[tokio::test]
    async fn a_raft_message_from_this_nodes_own_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = ClusterConfig::new(1, "n1", "127.0.0.1:0", SECRET, dir.path().join("n1"));
        let node = ClusterNode::start(c).await.unwrap();
        let addr = node.local_addr().to_string();
        let call = |id: NodeId| {
            let t = Transport::new(
                id,
                Arc::new(Authenticator::new(SECRET)),
                Arc::new(Faults::default()),
                Duration::from_secs(5),
            );
            let addr = addr.clone();
            async move {
                let req = VoteRequest::<NodeId>::new(Vote::new(9, id), None);
                t.call::<_, Result<VoteResponse<NodeId>, serde_json::Value>>(
                    1,
                    &addr,
                    "/v1/vote",
                    &req,
                    Duration::from_secs(5),
                )
                .await
            }
        };
        match call(1).await {
            Err(RpcError::Failed { reason, .. }) => {
                assert!(
                    reason.contains("409") && reason.contains("itself"),
                    "{reason}"
                )
            }
            other => panic!("a self-addressed vote was not refused: {other:?}"),
        }
        // Another id is answered.
        assert!(call(2).await.is_ok());
        node.shutdown().await;
    }
}
