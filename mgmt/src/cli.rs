//! The admin commands of the `switchyard` binary: each talks to a node's management API
//! and prints a table (or, with `--output json`, the API's JSON).

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use volume::{Extent, MappingTable};

use crate::client::{Client, ClientError};
use crate::model::{
    BackendView, ChangeRecord, Event, MigrateRequest, MigrationView, NodeStateRequest, NodeStatus,
    NodeView, RemapRequest, SessionView, TargetView, ValidationReport, VolumeView,
};

/// Where the node is and how to talk to it (global options).
#[derive(Args, Debug, Clone)]
pub struct ConnOpts {
    /// Management URL of the node.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_NODE",
        default_value = "http://127.0.0.1:8080"
    )]
    pub node: String,
    /// Bearer token (the node's read or admin token).
    #[arg(long, global = true, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// `nodes` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum NodesCmd {
    /// Move hosts away from a node: its target port group reports unavailable.
    Drain {
        #[arg(value_name = "NODE")]
        member: String,
    },
    /// Serve I/O again (undo drain; clear a fence once the node has caught up).
    Activate {
        #[arg(value_name = "NODE")]
        member: String,
    },
    /// Remove a member from the cluster (stop it first). A new member joins by
    /// starting with `join = "<any member's cluster address>"` in its [cluster].
    Remove {
        #[arg(value_name = "NODE")]
        member: String,
    },
    /// Set the ALUA state of a node's target port group while it is active.
    Alua {
        #[arg(value_name = "NODE")]
        member: String,
        /// active-optimized, active-non-optimized, standby, unavailable, offline
        state: String,
    },
}

/// Admin commands (they talk to a running node).
#[derive(Subcommand, Debug, Clone)]
pub enum AdminCmd {
    /// The node: name, version, uptime, portals, leader, health.
    Status,
    /// Cluster members (leader, reachability, ALUA state); `nodes drain NAME`,
    /// `nodes activate NAME`, `nodes alua NAME STATE` change one.
    Nodes {
        #[command(subcommand)]
        cmd: Option<NodesCmd>,
    },
    /// Host sessions logged in to the node; `--all`: to every cluster member (each
    /// asked through its own API, with the same token).
    Sessions {
        #[arg(long)]
        all: bool,
    },
    /// Targets and their LUNs.
    Targets,
    /// Back-end arrays and stores, with their LUs; `backends add|remove` change the
    /// arrays (cluster members).
    Backends {
        #[command(subcommand)]
        cmd: Option<BackendsCmd>,
    },
    /// Virtual volumes; `volumes show NAME` prints one volume's extent map;
    /// `volumes create|grow|export|unexport|delete` change them (cluster members).
    Volumes {
        #[command(subcommand)]
        cmd: Option<VolumesCmd>,
    },
    /// Zoning (initiator groups, LUN masking): `zoning` shows it; `zoning set FILE`,
    /// `zoning group NAME --add INITIATOR`, `zoning allow|deny ...` change it on every
    /// member; live sessions follow at once.
    Zoning {
        #[command(subcommand)]
        cmd: Option<ZoningCmd>,
    },
    /// What was configured online (arrays, volumes, exports, zoning) as one TOML
    /// document: `config export`, `config import FILE [--dry-run] [--prune]`.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Export or validate the mapping table.
    Mapping {
        #[command(subcommand)]
        cmd: MappingCmd,
    },
    /// Move a volume's extents online: give the complete new extent list.
    Remap {
        /// The volume.
        volume: String,
        /// TOML (`[[extents]]` tables) or JSON (`{"extents": [...]}` or a bare list) file
        /// with the new extents (vstart, blocks, backend, bstart).
        #[arg(long)]
        extents: PathBuf,
        /// Refuse unless the table is still at this epoch.
        #[arg(long)]
        expect_epoch: Option<u64>,
        /// Drain timeout in milliseconds.
        #[arg(long)]
        drain_timeout_ms: Option<u64>,
        /// Grow the volume to this many blocks.
        #[arg(long)]
        blocks: Option<u64>,
        /// Do not copy the data of moved ranges (the new homes already hold it: another
        /// path to the same LU, or ranges without live data).
        #[arg(long)]
        no_copy: bool,
        /// Start the change and return at once (follow it with `changes ID`).
        #[arg(long)]
        no_wait: bool,
    },
    /// Move blocks of a volume to another back-end LU while hosts use it (cluster
    /// members): copied window by window (by the array with EXTENDED COPY when it can),
    /// writes mirrored to the source until the end. Shows a progress bar until it ends
    /// (Ctrl-C leaves it running; `migrations ID` follows it again).
    Migrate {
        /// The volume.
        volume: String,
        /// Destination back-end LU id (`switchyard backends`), e.g. array/lun1.
        #[arg(long)]
        to: String,
        /// First block on the destination.
        #[arg(long)]
        at: Option<u64>,
        /// First virtual block moved (default 0).
        #[arg(long)]
        vstart: Option<u64>,
        /// Blocks moved (default: to the end of the extent holding --vstart).
        #[arg(long)]
        blocks: Option<u64>,
        /// MiB copied per window (each window is held briefly; default 16).
        #[arg(long)]
        window_mib: Option<u32>,
        /// Copy rate cap, MiB/s (default 200; 0: none).
        #[arg(long)]
        max_rate: Option<u32>,
        /// Copy rate floor, MiB/s, kept however busy hosts are (default 20).
        #[arg(long)]
        min_rate: Option<u32>,
        /// UNMAP the source blocks when the destination is the only home.
        #[arg(long)]
        release_source: bool,
        /// auto (EXTENDED COPY when the array can, else the nodes) or node.
        #[arg(long)]
        engine: Option<String>,
        /// Start it and return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Migrations with their progress; `migrations ID` follows one,
    /// `migrations pause|resume|abort ID` steers it.
    Migrations {
        #[command(subcommand)]
        cmd: Option<MigrationsCmd>,
    },
    /// Changes (remaps) with their states; `changes ID` shows one.
    Changes { id: Option<u64> },
    /// The event log; `--follow` streams new events.
    Events {
        #[arg(long, short)]
        follow: bool,
        /// Only events after this sequence number.
        #[arg(long)]
        since: Option<u64>,
        /// At most this many past events.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum MigrationsCmd {
    /// Follow one migration until it ends (a progress bar; `--output json`: its record).
    #[command(name = "show")]
    Show { id: u64 },
    /// Stop starting windows; copied chunks stay mirrored.
    Pause { id: u64 },
    /// Go on after a pause (or after the migration paused itself on errors).
    Resume { id: u64 },
    /// Make the source the only home again; nothing is lost.
    Abort { id: u64 },
}

pub use crate::cli_catalog::{parse_size, BackendsCmd, VolumesCmd, ZoningCmd};
pub use crate::cli_config::ConfigCmd;

#[derive(Subcommand, Debug, Clone)]
pub enum MappingCmd {
    /// Print the mapping table (TOML by default; `--output json` for JSON).
    Export,
    /// Check a table file (TOML or JSON) against the node: structure and back-ends.
    Validate { file: PathBuf },
}

pub(crate) fn print_json<T: Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into())
    );
}

/// Columns padded to their widest cell.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// Read a file of extents: TOML `[[extents]]`, JSON `{"extents": [...]}` or a JSON list.
pub fn read_extents(path: &std::path::Path) -> Result<Vec<Extent>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let t = text.trim_start();
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        extents: Vec<Extent>,
    }
    let parsed = if t.starts_with('[') && !t.starts_with("[[") {
        serde_json::from_str::<Vec<Extent>>(t).map_err(|e| e.to_string())
    } else if t.starts_with('{') {
        serde_json::from_str::<File>(t)
            .map(|f| f.extents)
            .map_err(|e| e.to_string())
    } else {
        toml::from_str::<File>(t)
            .map(|f| f.extents)
            .map_err(|e| e.to_string())
    };
    parsed.map_err(|e| {
        format!(
            "{}: {e}\nexpected [[extents]] tables with vstart, blocks, backend, bstart (TOML), \
             or {{\"extents\": [...]}} (JSON)",
            path.display()
        )
    })
}

fn change_rows(cs: &[ChangeRecord]) -> String {
    table(
        &[
            "ID", "KIND", "VOLUME", "STATE", "EPOCH", "COPIED", "HOLD", "ERROR",
        ],
        cs.iter()
            .map(|c| {
                vec![
                    c.id.to_string(),
                    c.kind.clone(),
                    c.volume.clone(),
                    c.state.to_string(),
                    format!("{} -> {}", c.from_epoch, c.to_epoch),
                    format!("{}/{}", c.copied_blocks, c.moved_blocks),
                    c.hold_ms.map(|h| format!("{h} ms")).unwrap_or_default(),
                    c.error.clone().unwrap_or_default(),
                ]
            })
            .collect(),
    )
}

pub(crate) fn describe_change(c: &ChangeRecord) -> String {
    let mut s = format!(
        "change {}: {} of volume {} — {} (epoch {} -> {}, leader {})\n",
        c.id, c.kind, c.volume, c.state, c.from_epoch, c.to_epoch, c.leader
    );
    let affected: Vec<String> = c.affected.iter().map(|r| r.to_string()).collect();
    s.push_str(&format!(
        "  affected: {}\n  copied: {} of {} blocks\n",
        if affected.is_empty() {
            "nothing".to_string()
        } else {
            affected.join(", ")
        },
        c.copied_blocks,
        c.moved_blocks
    ));
    if let Some(h) = c.hold_ms {
        s.push_str(&format!("  held for {h} ms\n"));
    }
    for st in &c.history {
        s.push_str(&format!(
            "  {:>13}  +{} ms\n",
            st.state.to_string(),
            st.at_ms.saturating_sub(c.created_ms)
        ));
    }
    if let Some(e) = &c.error {
        s.push_str(&format!("  error: {e}\n"));
    }
    if let Some(h) = &c.hint {
        s.push_str(&format!("  hint: {h}\n"));
    }
    s
}

pub(crate) fn describe_volume(v: &VolumeView) -> String {
    let mut s = format!(
        "volume {}  {}  {} blocks of {} B ({})  epoch {}\n",
        v.name,
        v.wwn,
        v.blocks,
        v.block_size,
        human_bytes(v.blocks * u64::from(v.block_size)),
        v.epoch
    );
    for e in &v.exports {
        s.push_str(&format!("  served as {} LUN {}\n", e.target, e.lun));
    }
    s.push_str(&format!(
        "  I/O: {} reads ({}), {} writes ({}), {} errors\n",
        v.io.reads,
        human_bytes(v.io.read_bytes),
        v.io.writes,
        human_bytes(v.io.write_bytes),
        v.io.errors
    ));
    let rows = v
        .map
        .iter()
        .map(|m| {
            vec![
                format!("[{}, {})", m.vstart, m.vstart + m.blocks),
                m.blocks.to_string(),
                m.backend.clone().unwrap_or_else(|| "(hole)".into()),
                m.bstart
                    .map(|b| format!("[{b}, {})", b + m.blocks))
                    .unwrap_or_default(),
                m.mirror.clone().unwrap_or_default(),
            ]
        })
        .collect();
    for line in table(
        &[
            "VIRTUAL BLOCKS",
            "BLOCKS",
            "BACK-END",
            "BACK-END BLOCKS",
            "MIRROR",
        ],
        rows,
    )
    .lines()
    {
        s.push_str("  ");
        s.push_str(line);
        s.push('\n');
    }
    if !v.held.is_empty() {
        let held: Vec<String> = v.held.iter().map(|r| r.to_string()).collect();
        s.push_str(&format!("  held now: {}\n", held.join(", ")));
    }
    s
}

fn event_line(e: &Event) -> String {
    format!(
        "{:>6}  {}  {:<5}  {:<8}  {}",
        e.seq, e.time_ms, e.level, e.kind, e.message
    )
}

/// Run one admin command. Errors are printed by the caller.
pub fn run(conn: &ConnOpts, cmd: &AdminCmd) -> Result<(), String> {
    let c = Client::new(&conn.node, conn.token.clone());
    let json = conn.output == Output::Json;
    let e = |e: ClientError| e.to_string();
    match cmd {
        AdminCmd::Status => {
            let s: NodeStatus = c.get("/api/v1/status").map_err(e)?;
            if json {
                print_json(&s);
            } else {
                let portals: Vec<String> = s
                    .portals
                    .iter()
                    .map(|p| format!("{} (tpgt {})", p.address, p.tpgt))
                    .collect();
                println!("node      {}", s.name);
                println!("version   {}", s.version);
                println!("uptime    {} s", s.uptime_secs);
                println!("health    {}", s.health);
                println!("leader    {}", s.leader);
                println!("epoch     {}", s.epoch);
                println!("portals   {}", portals.join(", "));
                println!(
                    "counters  {} commands, {} logins, {} login failures, {} sessions, {} back-end errors",
                    s.counters.commands,
                    s.counters.logins,
                    s.counters.login_failures,
                    s.counters.sessions,
                    s.counters.backend_errors
                );
            }
        }
        AdminCmd::Nodes { cmd } => {
            let view = match cmd {
                None => None,
                Some(NodesCmd::Remove { member }) => {
                    let path = format!("/api/v1/nodes/{}", path_segment(member));
                    c.delete(&path).map_err(e)?;
                    println!("{member}: removed from the cluster");
                    return Ok(());
                }
                Some(NodesCmd::Drain { member }) => Some((
                    member,
                    NodeStateRequest {
                        state: Some("draining".into()),
                        alua: None,
                    },
                )),
                Some(NodesCmd::Activate { member }) => Some((
                    member,
                    NodeStateRequest {
                        state: Some("active".into()),
                        alua: None,
                    },
                )),
                Some(NodesCmd::Alua { member, state }) => Some((
                    member,
                    NodeStateRequest {
                        state: None,
                        alua: Some(state.clone()),
                    },
                )),
            };
            if let Some((node, req)) = view {
                let path = format!("/api/v1/nodes/{}/state", path_segment(node));
                let (_, n): (u16, NodeView) = c.post(&path, &req).map_err(e)?;
                if json {
                    print_json(&n);
                } else {
                    println!(
                        "{}: {}{}",
                        n.name,
                        n.state,
                        n.alua.map(|a| format!(", ALUA {a}")).unwrap_or_default()
                    );
                }
                return Ok(());
            }
            let nodes: Vec<NodeView> = c.get("/api/v1/nodes").map_err(e)?;
            if json {
                print_json(&nodes);
            } else {
                print!(
                    "{}",
                    table(
                        &[
                            "ID",
                            "NAME",
                            "ROLE",
                            "STATE",
                            "ALUA",
                            "LAST CONTACT",
                            "PORTALS"
                        ],
                        nodes
                            .iter()
                            .map(|n| vec![
                                n.id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                                format!("{}{}", n.name, if n.is_self { " (this)" } else { "" }),
                                if n.is_leader {
                                    format!("{} leader", n.role)
                                } else {
                                    n.role.clone()
                                },
                                n.state.clone(),
                                n.alua.clone().unwrap_or_else(|| "-".into()),
                                n.last_contact_ms
                                    .map(|m| format!("{m} ms"))
                                    .unwrap_or_else(|| "-".into()),
                                n.portals.join(" "),
                            ])
                            .collect::<Vec<_>>()
                    )
                );
            }
        }
        AdminCmd::Sessions { all } => {
            let mut s: Vec<SessionView> = Vec::new();
            if *all {
                let nodes: Vec<NodeView> = c.get("/api/v1/nodes").map_err(e)?;
                for n in nodes.iter().filter(|n| n.role != "witness") {
                    let Some(api) = &n.api else {
                        eprintln!(
                            "node {}: its management URL is not known (no [management]?)",
                            n.name
                        );
                        continue;
                    };
                    match Client::new(api, conn.token.clone())
                        .get::<Vec<SessionView>>("/api/v1/sessions")
                    {
                        Ok(v) => s.extend(v),
                        Err(err) => eprintln!("node {}: {err}", n.name),
                    }
                }
            } else {
                s = c.get("/api/v1/sessions").map_err(e)?;
            }
            if json {
                print_json(&s);
            } else {
                print!(
                    "{}",
                    table(
                        &["NODE", "INITIATOR", "ISID", "TARGET", "TSIH", "PORTAL"],
                        s.iter()
                            .map(|s| vec![
                                s.node.clone(),
                                s.initiator.clone(),
                                s.isid.clone(),
                                s.target.clone().unwrap_or_else(|| "(discovery)".into()),
                                s.tsih.to_string(),
                                s.portal.clone(),
                            ])
                            .collect()
                    )
                );
            }
        }
        AdminCmd::Targets => {
            let t: Vec<TargetView> = c.get("/api/v1/targets").map_err(e)?;
            if json {
                print_json(&t);
            } else {
                let mut rows = Vec::new();
                for t in &t {
                    for l in &t.luns {
                        rows.push(vec![
                            t.name.clone(),
                            l.lun.to_string(),
                            format!("{} {}", l.kind, l.backing),
                            human_bytes(l.blocks * u64::from(l.block_size)),
                            l.wwn.clone(),
                            if t.chap { "chap" } else { "" }.to_string(),
                        ]);
                    }
                }
                print!(
                    "{}",
                    table(&["TARGET", "LUN", "BACKING", "SIZE", "WWN", "AUTH"], rows)
                );
            }
        }
        AdminCmd::Backends { cmd: Some(cmd) } => crate::cli_catalog::backends(&c, cmd, json)?,
        AdminCmd::Backends { cmd: None } => {
            let b: Vec<BackendView> = c.get("/api/v1/backends").map_err(e)?;
            if json {
                print_json(&b);
            } else {
                let mut rows = Vec::new();
                for b in &b {
                    for l in &b.lus {
                        rows.push(vec![
                            b.id.clone(),
                            b.kind.clone(),
                            l.id.clone(),
                            b.state.clone(),
                            human_bytes(l.capacity_bytes),
                            format!("{}/{}", l.mapped_blocks, l.blocks),
                            l.io.errors.to_string(),
                            b.address.clone(),
                        ]);
                    }
                }
                print!(
                    "{}",
                    table(
                        &[
                            "BACKEND", "KIND", "LU", "STATE", "CAPACITY", "MAPPED", "ERRORS",
                            "ADDRESS"
                        ],
                        rows
                    )
                );
            }
        }
        AdminCmd::Volumes { cmd: None } => {
            let v: Vec<VolumeView> = c.get("/api/v1/volumes").map_err(e)?;
            if json {
                print_json(&v);
            } else {
                print!(
                    "{}",
                    table(
                        &["VOLUME", "WWN", "SIZE", "EPOCH", "EXTENTS", "BACK-ENDS"],
                        v.iter()
                            .map(|v| {
                                let mut bs: Vec<String> = Vec::new();
                                for b in v.map.iter().filter_map(|m| m.backend.clone()) {
                                    if !bs.contains(&b) {
                                        bs.push(b);
                                    }
                                }
                                vec![
                                    v.name.clone(),
                                    v.wwn.clone(),
                                    human_bytes(v.blocks * u64::from(v.block_size)),
                                    v.epoch.to_string(),
                                    v.map
                                        .iter()
                                        .filter(|m| m.backend.is_some())
                                        .count()
                                        .to_string(),
                                    bs.join(","),
                                ]
                            })
                            .collect()
                    )
                );
            }
        }
        AdminCmd::Volumes {
            cmd: Some(VolumesCmd::Show { name }),
        } => {
            let v: VolumeView = c
                .get(&format!("/api/v1/volumes/{}", path_segment(name)))
                .map_err(e)?;
            if json {
                print_json(&v);
            } else {
                print!("{}", describe_volume(&v));
            }
        }
        AdminCmd::Volumes { cmd: Some(other) } => crate::cli_catalog::volumes(&c, other, json)?,
        AdminCmd::Zoning { cmd } => crate::cli_catalog::zoning(&c, cmd.as_ref(), json)?,
        AdminCmd::Config { cmd } => crate::cli_config::run(&c, cmd, json)?,
        AdminCmd::Mapping {
            cmd: MappingCmd::Export,
        } => {
            if json {
                let t: MappingTable = c.get("/api/v1/mapping").map_err(e)?;
                print_json(&t);
            } else {
                print!("{}", c.get_text("/api/v1/mapping?format=toml").map_err(e)?);
            }
        }
        AdminCmd::Mapping {
            cmd: MappingCmd::Validate { file },
        } => {
            let text = std::fs::read_to_string(file)
                .map_err(|err| format!("cannot read {}: {err}", file.display()))?;
            let ctype = if text.trim_start().starts_with('{') {
                "application/json"
            } else {
                "application/toml"
            };
            let (_, r): (u16, ValidationReport) = c
                .post_text("/api/v1/mapping/validate", ctype, &text)
                .map_err(e)?;
            if json {
                print_json(&r);
            } else if r.valid {
                println!(
                    "{}: valid ({} volumes, epoch {})",
                    file.display(),
                    r.volumes,
                    r.epoch
                );
                if r.changes.is_empty() {
                    println!("no changes against the node's table");
                } else {
                    print!("{}", r.changes);
                }
            }
            if !r.valid {
                let mut msg = format!("{}: not valid", file.display());
                for p in &r.problems {
                    msg.push_str(&format!("\n  - {p}"));
                }
                return Err(msg);
            }
        }
        AdminCmd::Remap {
            volume,
            extents,
            expect_epoch,
            drain_timeout_ms,
            blocks,
            no_copy,
            no_wait,
        } => {
            let req = RemapRequest {
                extents: read_extents(extents)?,
                expect_epoch: *expect_epoch,
                drain_timeout_ms: *drain_timeout_ms,
                blocks: *blocks,
                copy: no_copy.then_some(false),
            };
            let path = format!(
                "/api/v1/volumes/{}/remap{}",
                path_segment(volume),
                if *no_wait { "?wait=false" } else { "" }
            );
            let (_, rec): (u16, ChangeRecord) = c.post(&path, &req).map_err(e)?;
            if json {
                print_json(&rec);
            } else {
                print!("{}", describe_change(&rec));
            }
        }
        AdminCmd::Migrate {
            volume,
            to,
            at,
            vstart,
            blocks,
            window_mib,
            max_rate,
            min_rate,
            release_source,
            engine,
            no_wait,
        } => {
            let req = MigrateRequest {
                to: to.clone(),
                at: *at,
                vstart: *vstart,
                blocks: *blocks,
                window_mib: *window_mib,
                max_rate_mib_s: *max_rate,
                min_rate_mib_s: *min_rate,
                release_source: release_source.then_some(true),
                engine: engine.clone(),
            };
            let path = format!("/api/v1/volumes/{}/migrate", path_segment(volume));
            let (_, m): (u16, MigrationView) = c.post(&path, &req).map_err(e)?;
            if *no_wait {
                if json {
                    print_json(&m);
                } else {
                    println!("migration {} started: {}", m.id, migration_line(&m));
                }
            } else {
                follow_migration(&c, m.id, json)?;
            }
        }
        AdminCmd::Migrations { cmd } => match cmd {
            None => {
                let ms: Vec<MigrationView> = c.get("/api/v1/migrations").map_err(e)?;
                if json {
                    print_json(&ms);
                } else {
                    print!("{}", migration_rows(&ms));
                }
            }
            Some(MigrationsCmd::Show { id }) => follow_migration(&c, *id, json)?,
            Some(
                MigrationsCmd::Pause { id }
                | MigrationsCmd::Resume { id }
                | MigrationsCmd::Abort { id },
            ) => {
                let action = match cmd {
                    Some(MigrationsCmd::Pause { .. }) => "pause",
                    Some(MigrationsCmd::Resume { .. }) => "resume",
                    _ => "abort",
                };
                let (_, m): (u16, MigrationView) = c
                    .post(&format!("/api/v1/migrations/{id}/{action}"), &())
                    .map_err(e)?;
                if json {
                    print_json(&m);
                } else {
                    println!("migration {}: {}", m.id, migration_line(&m));
                }
            }
        },
        AdminCmd::Changes { id: None } => {
            let cs: Vec<ChangeRecord> = c.get("/api/v1/changes").map_err(e)?;
            if json {
                print_json(&cs);
            } else {
                print!("{}", change_rows(&cs));
            }
        }
        AdminCmd::Changes { id: Some(id) } => {
            let rec: ChangeRecord = c.get(&format!("/api/v1/changes/{id}")).map_err(e)?;
            if json {
                print_json(&rec);
            } else {
                print!("{}", describe_change(&rec));
            }
        }
        AdminCmd::Events {
            follow,
            since,
            limit,
        } => {
            let evs: Vec<Event> = c
                .get(&format!(
                    "/api/v1/events?since={}&limit={limit}",
                    since.unwrap_or(0)
                ))
                .map_err(e)?;
            let last = evs.last().map(|e| e.seq).or(*since).unwrap_or(0);
            let show = |ev: &Event| {
                if json {
                    println!("{}", serde_json::to_string(ev).unwrap_or_default());
                } else {
                    println!("{}", event_line(ev));
                }
            };
            for ev in &evs {
                show(ev);
            }
            if *follow {
                use std::io::Write;
                let _ = std::io::stdout().flush();
                c.follow_events(Some(last), |ev| {
                    show(&ev);
                    std::io::stdout().flush().is_ok()
                })
                .map_err(e)?;
            }
        }
    }
    Ok(())
}

/// One line about a migration: state, progress, rate, ETA.
pub fn migration_line(m: &MigrationView) -> String {
    let bs = u64::from(m.block_size.max(1));
    let mut s = format!(
        "{} {}+{} {} -> {}: {} {:.1}% ({} of {})",
        m.volume,
        m.vstart,
        m.blocks,
        m.from,
        m.to,
        m.state,
        m.percent,
        human_bytes(m.copied_blocks * bs),
        human_bytes(m.blocks * bs)
    );
    if m.offloaded_blocks > 0 {
        s.push_str(&format!(
            ", {} by EXTENDED COPY",
            human_bytes(m.offloaded_blocks * bs)
        ));
    }
    s.push_str(&format!(", {:.1} MiB/s", m.rate_mib_s));
    if let Some(eta) = m.eta_s {
        s.push_str(&format!(", ETA {eta} s"));
    }
    if let Some(r) = &m.reason {
        s.push_str(&format!(" ({r})"));
    }
    s
}

fn migration_rows(ms: &[MigrationView]) -> String {
    table(
        &[
            "ID", "VOLUME", "RANGE", "FROM", "TO", "STATE", "DONE", "RATE", "ETA",
        ],
        ms.iter()
            .map(|m| {
                vec![
                    m.id.to_string(),
                    m.volume.clone(),
                    format!("{}+{}", m.vstart, m.blocks),
                    m.from.clone(),
                    m.to.clone(),
                    m.state.clone(),
                    format!("{:.1}%", m.percent),
                    format!("{:.1} MiB/s", m.rate_mib_s),
                    m.eta_s.map(|s| format!("{s} s")).unwrap_or_default(),
                ]
            })
            .collect(),
    )
}

/// A text progress bar of `width` cells.
fn progress_bar(percent: f64, width: usize) -> String {
    let full = ((percent.clamp(0.0, 100.0) / 100.0) * width as f64).round() as usize;
    format!(
        "[{}{}]",
        "#".repeat(full),
        ".".repeat(width - full.min(width))
    )
}

/// Poll migration `id` until it ends, redrawing a progress bar (JSON: print the final
/// record). Fails when it ends failed.
fn follow_migration(c: &Client, id: u64, json: bool) -> Result<(), String> {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stdout().is_terminal();
    let mut last_line = String::new();
    loop {
        let m: MigrationView = c
            .get(&format!("/api/v1/migrations/{id}"))
            .map_err(|e| e.to_string())?;
        let finished = matches!(m.state.as_str(), "done" | "aborted" | "failed");
        if !json {
            let line = format!("{} {}", progress_bar(m.percent, 30), migration_line(&m));
            if tty {
                print!("\r\x1b[2K{line}");
                let _ = std::io::stdout().flush();
            } else if line != last_line {
                println!("{line}");
            }
            last_line = line;
        }
        if finished || m.state == "paused" {
            if tty && !json {
                println!();
            }
            if json {
                print_json(&m);
            }
            return match m.state.as_str() {
                "failed" => Err(format!(
                    "migration {id} failed: {}",
                    m.reason.unwrap_or_default()
                )),
                "paused" => Err(format!(
                    "migration {id} is paused: {}",
                    m.reason.unwrap_or_default()
                )),
                _ => Ok(()),
            };
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Percent-encode a path segment (volume names are plain, but be safe).
pub(crate) fn path_segment(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_progress_lines() {
        assert_eq!(progress_bar(0.0, 4), "[....]");
        assert_eq!(progress_bar(50.0, 4), "[##..]");
        assert_eq!(progress_bar(100.0, 4), "[####]");
        assert_eq!(progress_bar(250.0, 4), "[####]");
        let m = MigrationView {
            id: 3,
            volume: "vol1".into(),
            vstart: 0,
            blocks: 2048,
            block_size: 512,
            from: "a/lun0@0".into(),
            to: "a/lun1@0".into(),
            state: "running".into(),
            reason: None,
            copied_blocks: 1024,
            offloaded_blocks: 1024,
            percent: 50.0,
            windows: 1,
            failures: 0,
            rate_mib_s: 2.5,
            eta_s: Some(1),
            window_blocks: 1024,
            max_rate_mib_s: 200,
            min_rate_mib_s: 20,
            engine: "auto".into(),
            created_ms: 0,
            updated_ms: 0,
            chunks: Vec::new(),
        };
        assert_eq!(
            migration_line(&m),
            "vol1 0+2048 a/lun0@0 -> a/lun1@0: running 50.0% (512.0 KiB of 1.0 MiB), 512.0 KiB by EXTENDED COPY, 2.5 MiB/s, ETA 1 s"
        );
        let rows = migration_rows(&[m]);
        assert!(rows.starts_with("ID  VOLUME"), "{rows}");
        assert!(rows.contains("50.0%"), "{rows}");
    }

    #[test]
    fn extents_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("e.toml");
        std::fs::write(
            &p,
            "[[extents]]\nvstart = 0\nblocks = 8\nbackend = \"a\"\nbstart = 0\n",
        )
        .unwrap();
        assert_eq!(read_extents(&p).unwrap()[0].blocks, 8);
        std::fs::write(
            &p,
            r#"{"extents":[{"vstart":0,"blocks":8,"backend":"b","bstart":4}]}"#,
        )
        .unwrap();
        assert_eq!(read_extents(&p).unwrap()[0].backend, "b");
        std::fs::write(&p, r#"[{"vstart":0,"blocks":8,"backend":"b","bstart":4}]"#).unwrap();
        assert_eq!(read_extents(&p).unwrap()[0].bstart, 4);
        std::fs::write(&p, "[[extents]]\nvstart = 0\n").unwrap();
        assert!(read_extents(&p).unwrap_err().contains("blocks"));
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], vec![vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
