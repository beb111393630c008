//! A switchyard cluster as separate processes on this machine: one array node (a
//! plain switchyard target with a file LU) and N cluster members that serve volume
//! `vol1` over the array's LUN 0, each with its own portal, cluster (Raft) address and
//! management API. Members run with short Raft timeouts (heartbeat 50 ms, election
//! 300-600 ms, lease 1.2 s) and with test fault injection on.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mgmt::client::Client;
use mgmt::model::{NodeStatus, NodeView};

use crate::{free_port, wait_port, NodeProcess};

pub const ARRAY_TARGET: &str = "iqn.2026-11.org.switchyard:rig-array";
pub const CLUSTER_TARGET: &str = "iqn.2026-11.org.switchyard:rig";
pub const ADMIN_TOKEN: &str = "rig-admin-token-0123456789";
pub const SECRET: &str = "rig-cluster-secret-0123456789";
/// vol1's WWN.
pub const VOL_WWN: &str = "naa.6005359000000000000000000000d001";

/// One member.
pub struct RigNode {
    pub id: u64,
    pub name: String,
    pub portal: u16,
    pub raft: u16,
    pub api: u16,
    pub cfg: PathBuf,
    pub log: PathBuf,
    pub witness: bool,
    pub proc: Option<NodeProcess>,
}

impl RigNode {
    pub fn portal_addr(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.portal).parse().unwrap()
    }

    pub fn client(&self) -> Client {
        Client::new(
            &format!("127.0.0.1:{}", self.api),
            Some(ADMIN_TOKEN.to_string()),
        )
    }
}

pub struct ClusterRig {
    pub dir: tempfile::TempDir,
    pub array_port: u16,
    pub array: NodeProcess,
    pub nodes: Vec<RigNode>,
    /// Volume size in 512-byte blocks.
    pub blocks: u64,
    pub drain_timeout_ms: u64,
    /// Extra `[[backend]]` TOML every member gets (tgtd), and vol1's first home.
    backends_toml: String,
    vol_home: String,
    /// The tgtd behind backend `tgt` (its LU is `tgt/lun1`), when asked for.
    pub tgtd: Option<crate::tgtd::Tgtd>,
}

/// Rig options.
pub struct RigOpts {
    pub data_nodes: usize,
    pub witness: bool,
    /// Volume size in 512-byte blocks.
    pub blocks: u64,
    /// `[management] drain_timeout_ms` of the members (remap drain attempts; the
    /// phase timeout is twice it plus 5 s).
    pub drain_timeout_ms: u64,
    /// Also start Debian's tgtd with one LU of `blocks` blocks, as back-end `tgt`
    /// (LU `tgt/lun1`) of every member, and put vol1 there instead of `array/lun0`.
    pub tgtd: bool,
}

impl Default for RigOpts {
    fn default() -> Self {
        RigOpts {
            data_nodes: 2,
            witness: false,
            blocks: 16384,
            drain_timeout_ms: 1000,
            tgtd: false,
        }
    }
}

impl ClusterRig {
    /// Start the array and every member, and wait until each data member's portal
    /// listens (which it does only once it has joined the cluster).
    pub async fn start(o: RigOpts) -> ClusterRig {
        let dir = tempfile::tempdir().unwrap();
        let array_port = free_port();
        let array_cfg = dir.path().join("array.toml");
        let bytes = o.blocks * 512;
        std::fs::write(
            &array_cfg,
            format!(
                "[node]\nname = \"array\"\ndata_dir = \"{d}\"\n[[portal]]\nlisten = \"127.0.0.1:{array_port}\"\n\
                 [[target]]\nname = \"{ARRAY_TARGET}\"\n\
                 [[target.lun]]\nlun = 0\npath = \"a0.img\"\nsize = \"{bytes}\"\n\
                 [[target.lun]]\nlun = 1\npath = \"a1.img\"\nsize = \"{bytes}\"\n",
                d = dir.path().display()
            ),
        )
        .unwrap();
        let array = NodeProcess::spawn(&array_cfg, Some(&dir.path().join("array.log")));
        wait_port(array_port).await;
        let tgtd = o.tgtd.then(|| crate::tgtd::Tgtd::start(bytes, None, None));
        let backends_toml = tgtd
            .as_ref()
            .map(|t| {
                format!(
                    "[[backend]]\nid = \"tgt\"\nportal = \"{}\"\ntarget = \"{}\"\nsessions = 2\ntimeout_secs = 5\n",
                    t.addr, t.iqn
                )
            })
            .unwrap_or_default();
        let vol_home = if o.tgtd { "tgt/lun1" } else { "array/lun0" }.to_string();
        let total = o.data_nodes + usize::from(o.witness);
        let mut nodes: Vec<RigNode> = (0..total)
            .map(|i| {
                let id = i as u64 + 1;
                let witness = o.witness && i == total - 1;
                RigNode {
                    id,
                    name: if witness {
                        format!("w{id}")
                    } else {
                        format!("n{id}")
                    },
                    portal: free_port(),
                    raft: free_port(),
                    api: free_port(),
                    cfg: dir.path().join(format!("n{id}.toml")),
                    log: dir.path().join(format!("n{id}.log")),
                    witness,
                    proc: None,
                }
            })
            .collect();
        for n in &nodes {
            let peers: Vec<String> = nodes
                .iter()
                .filter(|p| p.id != n.id)
                .map(|p| format!("\"{}@127.0.0.1:{}\"", p.id, p.raft))
                .collect();
            let membership = format!("peers = [{}]", peers.join(", "));
            write_config(
                n,
                &membership,
                &Shared {
                    dir: dir.path(),
                    array_port,
                    blocks: o.blocks,
                    drain: o.drain_timeout_ms,
                    more_backends: &backends_toml,
                    vol_home: &vol_home,
                },
            );
        }
        for n in &mut nodes {
            n.proc = Some(spawn_member(n));
        }
        let rig = ClusterRig {
            dir,
            array_port,
            array,
            nodes,
            blocks: o.blocks,
            drain_timeout_ms: o.drain_timeout_ms,
            backends_toml,
            vol_home,
            tgtd,
        };
        for n in rig.nodes.iter().filter(|n| !n.witness) {
            rig.wait_serving(n).await;
        }
        rig
    }

    /// Wait (up to 30 s) until member `n` listens on its portal and its API answers.
    pub async fn wait_serving(&self, n: &RigNode) {
        for _ in 0..600 {
            if tokio::net::TcpStream::connect(n.portal_addr())
                .await
                .is_ok()
            {
                wait_port(n.api).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "member {} did not start serving; log:\n{}",
            n.name,
            std::fs::read_to_string(&n.log).unwrap_or_default()
        );
    }

    pub fn node(&self, name: &str) -> &RigNode {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    /// Start a new data member that joins the running cluster through member 0; waits
    /// until it serves. Returns its index.
    pub async fn add_member(&mut self) -> usize {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let n = RigNode {
            id,
            name: format!("n{id}"),
            portal: free_port(),
            raft: free_port(),
            api: free_port(),
            cfg: self.dir.path().join(format!("n{id}.toml")),
            log: self.dir.path().join(format!("n{id}.log")),
            witness: false,
            proc: None,
        };
        let join = format!("join = \"127.0.0.1:{}\"", self.nodes[0].raft);
        write_config(
            &n,
            &join,
            &Shared {
                dir: self.dir.path(),
                array_port: self.array_port,
                blocks: self.blocks,
                drain: self.drain_timeout_ms,
                more_backends: &self.backends_toml,
                vol_home: &self.vol_home,
            },
        );
        self.nodes.push(n);
        let i = self.nodes.len() - 1;
        self.restart(i).await;
        i
    }

    /// SIGKILL member `i` (index into `nodes`).
    pub fn kill(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].proc.take() {
            p.kill();
        }
    }

    /// Start member `i` again (same config, same data folder).
    pub async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].proc.is_none());
        let p = spawn_member(&self.nodes[i]);
        self.nodes[i].proc = Some(p);
        if !self.nodes[i].witness {
            self.wait_serving(&self.nodes[i]).await;
        }
    }

    /// The leader's name as member `i` reports it (`None` when it has none or does not
    /// answer).
    pub async fn leader_seen_by(&self, i: usize) -> Option<String> {
        let c = self.nodes[i].client();
        let s = tokio::task::spawn_blocking(move || c.get::<NodeStatus>("/api/v1/status"))
            .await
            .unwrap()
            .ok()?;
        (s.leader != "(none)").then_some(s.leader)
    }

    /// Wait until every member in `among` reports the same leader; returns it and how
    /// long it took.
    pub async fn wait_leader(&self, among: &[usize], timeout: Duration) -> (String, Duration) {
        let start = Instant::now();
        loop {
            let mut seen = Vec::new();
            for &i in among {
                seen.push(self.leader_seen_by(i).await);
            }
            if let Some(Some(l)) = seen.first() {
                if seen.iter().all(|s| s.as_deref() == Some(l.as_str())) {
                    return (l.clone(), start.elapsed());
                }
            }
            assert!(
                start.elapsed() < timeout,
                "no common leader after {timeout:?}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The members as member `i` reports them.
    pub async fn members_seen_by(&self, i: usize) -> Vec<NodeView> {
        let c = self.nodes[i].client();
        tokio::task::spawn_blocking(move || c.get::<Vec<NodeView>>("/api/v1/nodes"))
            .await
            .unwrap()
            .expect("nodes")
    }

    /// `POST path` with `body` on member `i`; the HTTP status, or the error.
    pub async fn post(
        &self,
        i: usize,
        path: &str,
        body: serde_json::Value,
    ) -> Result<u16, mgmt::client::ClientError> {
        let c = self.nodes[i].client();
        let path = path.to_string();
        tokio::task::spawn_blocking(move || {
            c.post::<_, serde_json::Value>(&path, &body).map(|(s, _)| s)
        })
        .await
        .unwrap()
    }

    /// Remap `vol1` through member `i` and wait for the change to finish: the final
    /// change record, or the API's error.
    pub async fn remap(
        &self,
        i: usize,
        body: serde_json::Value,
    ) -> Result<mgmt::model::ChangeRecord, mgmt::client::ClientError> {
        let c = self.nodes[i].client();
        tokio::task::spawn_blocking(move || {
            c.post::<_, mgmt::model::ChangeRecord>("/api/v1/volumes/vol1/remap", &body)
                .map(|(_, r)| r)
        })
        .await
        .unwrap()
    }

    /// `GET path` on member `i` as text.
    pub async fn get_text(&self, i: usize, path: &str) -> String {
        let c = self.nodes[i].client();
        let path = path.to_string();
        tokio::task::spawn_blocking(move || c.get_text(&path))
            .await
            .unwrap()
            .expect("GET")
    }

    /// Set fault point `name` to `actions` on member `i`.
    pub async fn failpoint(&self, i: usize, name: &str, actions: &str) {
        let r = self
            .post(
                i,
                "/api/v1/faults",
                serde_json::json!({"failpoint": name, "actions": actions}),
            )
            .await;
        assert_eq!(r.as_ref().ok(), Some(&200), "{r:?}");
    }

    /// The log of member `i`.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }
}

/// Write member `n`'s config; `membership` is its `peers = [...]` or `join = "..."`.
/// What every member's config shares.
struct Shared<'a> {
    dir: &'a std::path::Path,
    array_port: u16,
    blocks: u64,
    drain: u64,
    more_backends: &'a str,
    vol_home: &'a str,
}

fn write_config(n: &RigNode, membership: &str, sh: &Shared) {
    let Shared {
        dir,
        array_port,
        blocks,
        drain,
        more_backends,
        vol_home,
    } = *sh;
    let d = dir.join(&n.name);
    std::fs::create_dir_all(&d).unwrap();
    let cluster = format!(
        "[cluster]\nid = {id}\nname = \"{name}\"\nlisten = \"127.0.0.1:{raft}\"\n{membership}\n\
         secret = \"{SECRET}\"\ndata_dir = \"raft\"\nwitness = {w}\nheartbeat_ms = 50\n\
         election_timeout_ms = 300\npropose_timeout_ms = 3000\nrpc_timeout_ms = 500\n",
        id = n.id,
        name = n.name,
        raft = n.raft,
        w = n.witness,
    );
    let body = if n.witness {
        format!(
            "[node]\nname = \"{}\"\ndata_dir = \"{}\"\n{cluster}",
            n.name,
            d.display()
        )
    } else {
        format!(
            "[node]\nname = \"{name}\"\ndata_dir = \"{d}\"\n[[portal]]\nlisten = \"127.0.0.1:{portal}\"\ntpgt = {id}\n\
             {cluster}\
             [[backend]]\nid = \"array\"\nportal = \"127.0.0.1:{array_port}\"\ntarget = \"{ARRAY_TARGET}\"\n\
             initiator_name = \"iqn.2026-11.org.switchyard:{name}\"\nsessions = 2\ntimeout_secs = 5\n\
             [[backend]]\nid = \"array2\"\nportal = \"127.0.0.1:{array_port}\"\ntarget = \"{ARRAY_TARGET}\"\n\
             initiator_name = \"iqn.2026-11.org.switchyard:{name}-path2\"\nsessions = 1\ntimeout_secs = 5\n\
             {more_backends}\
             [mapping]\nepoch = 1\n[[mapping.volumes]]\nname = \"vol1\"\nwwn = \"{VOL_WWN}\"\n\
             block_size = 512\nblocks = {blocks}\n\
             [[mapping.volumes.extents]]\nvstart = 0\nblocks = {blocks}\nbackend = \"{vol_home}\"\nbstart = 0\n\
             [[target]]\nname = \"{CLUSTER_TARGET}\"\n[[target.lun]]\nlun = 0\nvolume = \"vol1\"\n\
             [management]\nlisten = \"127.0.0.1:{api}\"\nadmin_token = \"{ADMIN_TOKEN}\"\ndrain_timeout_ms = {drain}\n",
            name = n.name,
            d = d.display(),
            portal = n.portal,
            id = n.id,
            api = n.api,
        )
    };
    std::fs::write(&n.cfg, body).unwrap();
}

fn spawn_member(n: &RigNode) -> NodeProcess {
    NodeProcess::spawn_with_env(
        &n.cfg,
        Some(&n.log),
        &[
            ("SWITCHYARD_TEST_FAULTS", "1"),
            ("RUST_LOG", "warn,switchyard=info"),
        ],
    )
}
