//! The `[cluster]` section of a node's configuration.
//!
//! ```toml
//! [cluster]
//! id = 1                                  # unique, never reused
//! name = "sy-a"
//! listen = "10.0.0.1:7400"                # management address (not an iSCSI portal)
//! peers = ["2@10.0.0.2:7400", "3@10.0.0.3:7400"]   # initial voters besides this node
//! secret_file = "/etc/switchyard/cluster.secret"   # or: secret = "…"
//! data_dir = "/var/lib/switchyard/cluster"
//! ```
//!
//! Forming a cluster: start every initial member with the same `peers` set (each lists
//! the others); they form one cluster on first start. Growing it: start the new node
//! with `join = "<any member's listen address>"` and no `peers`. A node with neither is
//! a one-member cluster. Once a node has data in `data_dir`, `peers` and `join` are
//! ignored: membership lives in the replicated state.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ClusterError, NodeId};

/// An initial peer: `"<id>@<ip:port>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub addr: String,
}

impl std::str::FromStr for Peer {
    type Err = String;

    fn from_str(s: &str) -> Result<Peer, String> {
        let (id, addr) = s
            .split_once('@')
            .ok_or_else(|| format!("peer {s:?}: expected \"<id>@<ip:port>\""))?;
        let id = id
            .trim()
            .parse()
            .map_err(|_| format!("peer {s:?}: {id:?} is not a node id"))?;
        let addr = addr.trim();
        if !addr.contains(':') {
            return Err(format!("peer {s:?}: {addr:?} has no port"));
        }
        Ok(Peer {
            id,
            addr: addr.to_string(),
        })
    }
}

impl Serialize for Peer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}@{}", self.id, self.addr))
    }
}

impl<'de> Deserialize<'de> for Peer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Peer, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn default_heartbeat_ms() -> u64 {
    100
}
fn default_election_ms() -> u64 {
    500
}
fn default_propose_ms() -> u64 {
    5000
}
fn default_rpc_ms() -> u64 {
    1000
}
fn default_snapshot_every() -> u64 {
    1000
}

/// The node's cluster settings. Serialising never writes the secret, and neither does
/// `Debug`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub id: NodeId,
    pub name: String,
    /// Management address to listen on (`ip:port`; port 0 picks one, for tests).
    pub listen: String,
    /// Address the others reach this node at, if not `listen` (NAT, 0.0.0.0).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Initial voters besides this node (first start only).
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// Join a running cluster through this member (first start only).
    #[serde(default)]
    pub join: Option<String>,
    /// The shared cluster secret (prefer `secret_file`).
    #[serde(default, skip_serializing)]
    pub secret: Option<String>,
    /// A file holding the shared cluster secret (first line).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Vote only, serve no I/O.
    #[serde(default)]
    pub witness: bool,
    /// Where the Raft log, vote and snapshots live.
    pub data_dir: PathBuf,
    /// iSCSI portals this node serves on (registered for the console and discovery).
    #[serde(default)]
    pub portals: Vec<String>,
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Minimum election timeout; the maximum is twice this.
    #[serde(default = "default_election_ms")]
    pub election_timeout_ms: u64,
    /// How long `propose` (and membership changes) may take before failing.
    #[serde(default = "default_propose_ms")]
    pub propose_timeout_ms: u64,
    /// Timeout of one management RPC.
    #[serde(default = "default_rpc_ms")]
    pub rpc_timeout_ms: u64,
    /// Take a snapshot every this many log entries (and drop the log before it).
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("peers", &self.peers)
            .field("join", &self.join)
            .field("secret", &self.secret.as_ref().map(|_| "(redacted)"))
            .field("secret_file", &self.secret_file)
            .field("witness", &self.witness)
            .field("data_dir", &self.data_dir)
            .field("portals", &self.portals)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("election_timeout_ms", &self.election_timeout_ms)
            .field("propose_timeout_ms", &self.propose_timeout_ms)
            .field("rpc_timeout_ms", &self.rpc_timeout_ms)
            .field("snapshot_every", &self.snapshot_every)
            .finish()
    }
}

impl ClusterConfig {
    /// A config with defaults for everything optional.
    pub fn new(
        id: NodeId,
        name: &str,
        listen: &str,
        secret: &str,
        data_dir: PathBuf,
    ) -> ClusterConfig {
        ClusterConfig {
            id,
            name: name.to_string(),
            listen: listen.to_string(),
            advertise: None,
            peers: Vec::new(),
            join: None,
            secret: Some(secret.to_string()),
            secret_file: None,
            witness: false,
            data_dir,
            portals: Vec::new(),
            heartbeat_ms: default_heartbeat_ms(),
            election_timeout_ms: default_election_ms(),
            propose_timeout_ms: default_propose_ms(),
            rpc_timeout_ms: default_rpc_ms(),
            snapshot_every: default_snapshot_every(),
        }
    }

    /// The secret, from `secret` or `secret_file`.
    pub fn load_secret(&self) -> Result<String, ClusterError> {
        let s = match (&self.secret, &self.secret_file) {
            (Some(_), Some(_)) => {
                return Err(ClusterError::Config(
                    "set one of cluster.secret and cluster.secret_file, not both".into(),
                ))
            }
            (Some(s), None) => s.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map_err(|e| {
                    ClusterError::Config(format!("cluster.secret_file {}: {e}", f.display()))
                })?
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
            (None, None) => {
                return Err(ClusterError::Config(
                    "cluster.secret or cluster.secret_file is required".into(),
                ))
            }
        };
        if s.len() < 16 {
            return Err(ClusterError::Config(
                "the cluster secret must be at least 16 characters".into(),
            ));
        }
        Ok(s)
    }

    /// Check the values that cannot be checked by type.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |m: String| Err(ClusterError::Config(m));
        if !self.peers.is_empty() && self.join.is_some() {
            return bad("cluster.peers and cluster.join exclude each other: peers form a new cluster, join enters a running one".into());
        }
        if self.peers.iter().any(|p| p.id == self.id) {
            return bad(format!(
                "cluster.peers lists this node's own id {}",
                self.id
            ));
        }
        // Two members at one address would have the node there answer for both; a
        // leader replicating to its own address fails its own log checks.
        let own = self.advertise.as_deref().unwrap_or(&self.listen);
        for (i, p) in self.peers.iter().enumerate() {
            if p.addr == own {
                return bad(format!(
                    "cluster.peers: {}@{} is this node's own address",
                    p.id, p.addr
                ));
            }
            if let Some(q) = self.peers[..i]
                .iter()
                .find(|q| q.id == p.id || q.addr == p.addr)
            {
                return bad(format!(
                    "cluster.peers: {}@{} and {}@{} repeat an id or an address",
                    q.id, q.addr, p.id, p.addr
                ));
            }
        }
        if self.heartbeat_ms == 0 || self.election_timeout_ms < 3 * self.heartbeat_ms {
            return bad(format!(
                "cluster.election_timeout_ms ({}) must be at least 3 × heartbeat_ms ({})",
                self.election_timeout_ms, self.heartbeat_ms
            ));
        }
        if self.snapshot_every == 0 {
            return bad("cluster.snapshot_every must be at least 1".into());
        }
        self.load_secret().map(|_| ())
    }

    pub(crate) fn propose_timeout(&self) -> Duration {
        Duration::from_millis(self.propose_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_section() {
        #[derive(Deserialize)]
        struct File {
            cluster: ClusterConfig,
        }
        let f: File = toml::from_str(
            r#"
            [cluster]
            id = 1
            name = "sy-a"
            listen = "127.0.0.1:7400"
            peers = ["2@127.0.0.1:7401", "3@127.0.0.1:7402"]
            secret = "0123456789abcdef0123"
            data_dir = "/tmp/x"
            witness = false
            "#,
        )
        .unwrap();
        let c = f.cluster;
        assert_eq!(
            c.peers[1],
            Peer {
                id: 3,
                addr: "127.0.0.1:7402".into()
            }
        );
        c.validate().unwrap();
        let mut short = c.clone();
        short.secret = Some("short".into());
        assert!(short.validate().is_err());
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("0123456789abcdef0123") && shown.contains("redacted"),
            "{shown}"
        );
        assert!("x@1.2.3.4:5".parse::<Peer>().is_err());
        assert!(toml::from_str::<File>("[cluster]\nid=1\nbogus=2").is_err());
    }

    #[test]
    fn peers_must_be_distinct_and_not_this_node() {
        let mut c = ClusterConfig::new(
            1,
            "sy-a",
            "127.0.0.1:7400",
            "0123456789abcdef0123",
            "/tmp/x".into(),
        );
        let peers = |list: &[&str]| list.iter().map(|p| p.parse::<Peer>().unwrap()).collect();
        c.peers = peers(&["2@127.0.0.1:7401", "3@127.0.0.1:7402"]);
        c.validate().unwrap();
        for (list, says) in [
            (&["2@127.0.0.1:7401", "3@127.0.0.1:7400"][..], "own address"),
            (&["2@127.0.0.1:7401", "3@127.0.0.1:7401"][..], "repeat"),
            (&["2@127.0.0.1:7401", "2@127.0.0.1:7402"][..], "repeat"),
        ] {
            c.peers = peers(list);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(says), "{list:?}: {e}");
        }
        // With an advertised address, that is the one peers must not repeat.
        c.advertise = Some("10.0.0.1:7400".into());
        c.peers = peers(&["2@127.0.0.1:7400"]);
        c.validate().unwrap();
        c.peers = peers(&["2@10.0.0.1:7400"]);
        assert!(c.validate().is_err());
    }
}
