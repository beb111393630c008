//! `switchyard`: run a node (`serve --config FILE`), or a ready-made single-machine
//! setup (`up`), or check a config (`check`); and the admin commands (`status`,
//! `volumes`, `remap`, ...) that talk to a running node's management API.

mod api;
mod build;
mod catalog;
mod catalog_api;
mod clustered;
mod config;
mod migrate;
mod migrate_api;
mod moves;
mod remap;
mod served;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The target name the embedded default and etc/quickstart.toml serve.
const QUICKSTART_TARGET: &str = "iqn.2026-11.org.switchyard:quickstart";

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Userspace SCSI target with an iSCSI fabric"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    conn: mgmt::cli::ConnOpts,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node from a TOML config file.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the embedded default: one sparse LU served on 127.0.0.1:3260.
    Up {
        /// Folder for the LU file (created if missing).
        #[arg(long, default_value = "data")]
        data: PathBuf,
        /// Portal address.
        #[arg(long, default_value = "127.0.0.1:3260")]
        listen: String,
        /// Size of the LU file when it is created.
        #[arg(long, default_value = "1GiB")]
        size: String,
        /// Management API and console address (`off` for none). Without tokens
        /// (SWITCHYARD_ADMIN_TOKEN, SWITCHYARD_READ_TOKEN) it is read-only.
        #[arg(long, default_value = DEFAULT_API)]
        api: String,
    },
    /// Validate a config file and print what it would serve.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    #[command(flatten)]
    Admin(mgmt::cli::AdminCmd),
}

/// Where `switchyard up` serves the management API and console.
const DEFAULT_API: &str = "127.0.0.1:8080";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve { config } => Config::load(&config)
            .map_err(|e| e.to_string())
            .and_then(|c| serve(c, true)),
        Cmd::Up {
            data,
            listen,
            size,
            api,
        } => embedded_default(&data, &listen, &size, &api).and_then(|c| serve(c, false)),
        Cmd::Check { config } => check(&config),
        Cmd::Admin(cmd) => mgmt::cli::run(&cli.conn, &cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration `switchyard up` runs: the same target, LUN and portal as
/// etc/quickstart.toml.
fn embedded_default(data: &Path, listen: &str, size: &str, api: &str) -> Result<Config, String> {
    let text = format!(
        r#"
[node]
name = "quickstart"

[[portal]]
listen = "{listen}"

[[target]]
name = "{QUICKSTART_TARGET}"
alias = "quickstart"
[[target.lun]]
lun = 0
path = "lun0.img"
size = "{size}"
"#
    );
    let mut cfg = Config::parse(&text).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(data)
        .map_err(|e| format!("cannot create data folder {}: {e}", data.display()))?;
    cfg.node.data_dir = Some(data.to_path_buf());
    if api != "off" {
        if api.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!("--api {api}: expected ip:port (or off)"));
        }
        cfg.management = Some(config::ManagementSection {
            listen: api.to_string(),
            ..Default::default()
        });
    }
    Ok(cfg)
}

fn check(path: &Path) -> Result<(), String> {
    let cfg = Config::load(path).map_err(|e| e.to_string())?;
    for p in &cfg.portals {
        println!("portal {} (tpgt {})", p.listen, p.tpgt);
    }
    if let Some(c) = cfg.cluster_config() {
        let how = match (&c.join, c.peers.is_empty()) {
            (Some(j), _) => format!("joins through {j}"),
            (None, false) => format!(
                "forms a cluster with {}",
                c.peers
                    .iter()
                    .map(|p| format!("{}@{}", p.id, p.addr))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (None, true) => "a one-member cluster".to_string(),
        };
        println!(
            "cluster member {} ({}{}) on {}, {how}; state in {}",
            c.id,
            c.name,
            if c.witness { ", witness" } else { "" },
            c.listen,
            c.data_dir.display()
        );
        if cfg.mapping.is_some() {
            println!("[mapping] seeds the cluster's table on first start; then the replicated table wins");
        }
    }
    if let Some(m) = &cfg.management {
        let auth = api::auth_from(&cfg);
        let addr = m.listen.parse().expect("validated");
        mgmt::server::check_listen(&addr, &auth)?;
        println!(
            "management API on http://{} ({})",
            m.listen,
            match (&auth.admin_token, &auth.read_token) {
                (Some(_), Some(_)) => "admin and read tokens",
                (Some(_), None) => "admin token",
                (None, Some(_)) => "read token; no changes",
                (None, None) => "no tokens: read-only",
            }
        );
    }
    if let Some(m) = &cfg.mapping {
        print!("{m}");
    }
    for t in &cfg.targets {
        for l in &t.luns {
            let what = match (&l.path, &l.volume) {
                (Some(p), _) => cfg.resolve(p).display().to_string(),
                (None, Some(v)) => format!("volume {v}"),
                (None, None) => String::new(),
            };
            println!(
                "target {} lun {} -> {} ({} B blocks{})",
                t.name,
                l.lun,
                what,
                l.block_size,
                if l.read_only { ", read-only" } else { "" }
            );
        }
    }
    println!("config OK");
    Ok(())
}

/// Keep the data buffers of large commands in the heap. glibc's defaults give each
/// buffer of 128 KiB or more its own mapping, or return the heap's top to the kernel
/// as soon as it is free; either way every 128K read then page-faults its buffer in
/// again (a fifth of the node's CPU at 128K sequential reads). Buffers up to 4 MiB
/// stay in the heap, and up to 16 MiB of free top is kept per arena.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
}

/// Scheduler ticks between the runtime's checks for socket readiness while tasks are
/// runnable (tokio's default is 61). A virtual node is a pipeline of small tasks
/// between two sockets: checking sooner moves the next command or answer along
/// sooner. Measured with 4K random reads at QD32 through a virtual node on the 2-core
/// bench machine: 67-72K IOPS at 61, 74-82K at 7 or 11 (81-88K and 92-94K with
/// `workers = 1`); a file LU served directly is unchanged (203-215K).
const EVENT_INTERVAL: u32 = 7;

/// Run a node. `api_required`: a management API that cannot start is an error (else a
/// warning, for `up`).
fn serve(cfg: Config, api_required: bool) -> Result<(), String> {
    tune_allocator();
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cfg.node.workers {
        b.worker_threads(n);
    }
    b.event_interval(EVENT_INTERVAL);
    let rt = b
        .enable_all()
        .thread_name("switchyard")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async move {
        let (cfg, cl) = match &cfg.cluster {
            None => (cfg, None),
            Some(c) => {
                let lease = clustered::lease(c);
                let witness = c.witness;
                let (member, cfg) = clustered::join(&cfg).await?;
                if witness {
                    return run_witness(member).await;
                }
                let groups = scsi::PortGroups::new(clustered::port_model(
                    &cluster::Cluster::state(&*member),
                    cluster::Cluster::id(&*member),
                    true,
                ))
                .map_err(|e| format!("cluster port groups: {e}"))?
                // Identical REPORT TARGET PORT GROUPS answers on every node.
                .without_status_codes();
                let ctx = build::ClusterCtx {
                    cluster: member,
                    groups,
                    lease,
                };
                (cfg, Some((ctx, lease)))
            }
        };
        let mut node = build::build(&cfg, cl.as_ref().map(|(c, _)| c)).await?;
        let managed = std::mem::take(&mut node.managed);
        let prs: clustered::PrLus = Arc::new(parking_lot::RwLock::new(std::mem::take(
            &mut node.clustered,
        )));
        // A member serves what the cluster's catalog says: volumes created, exported
        // and zoned online (through any member), beside its config's LUNs.
        let catalog = cl.as_ref().map(|(c, _)| {
            let cat = catalog::Catalog::new(
                c.clone(),
                managed.clone(),
                &cfg,
                prs.clone(),
                node.targets.clone(),
            );
            let st = cluster::Cluster::state(&*c.cluster);
            cat.sync(&st);
            node.targets = cat.targets(&st);
            cat
        });
        // The remap participant and driver: ready before the first login.
        let remapper = cl.as_ref().map(|(c, lease)| {
            remap::Remapper::new(
                c.cluster.clone(),
                managed.served(),
                managed.registry(),
                managed.offload(),
                remap::opts(&cfg, *lease),
                None,
                catalog.clone(),
            )
        });
        // The migration driver (works while this node leads).
        let migrator = cl.as_ref().map(|(c, _)| {
            migrate::Migrator::new(c.cluster.clone(), managed.registry(), managed.served())
        });
        let server = iscsi::Server::new(node.fabric.clone(), node.targets, node.portals);
        if let Some(c) = &catalog {
            c.set_server(server.shared().clone());
        }
        let listeners = server.bind().await.map_err(|e| e.to_string())?;
        let mut portals = Vec::new();
        for (l, p) in listeners.iter().zip(server.shared().portals.iter()) {
            let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            portals.push(mgmt::model::PortalView {
                address: addr.clone(),
                tpgt: p.tpgt,
            });
            tracing::info!(portal = %addr, tpgt = p.tpgt, "listening");
            for t in &server.shared().targets() {
                for lun in &t.luns {
                    println!("iscsi://{addr}/{}/{}", t.name, lun.lun);
                }
            }
        }
        let shutdown = CancellationToken::new();
        let member = match (&cl, &remapper, &catalog) {
            (Some((c, _)), Some(r), Some(cat)) => Some(Member {
                node: c.cluster.clone(),
                remapper: r.clone(),
                catalog: cat.clone(),
            }),
            _ => None,
        };
        let api_task = match start_api(&cfg, &server, portals, managed, member, &shutdown).await {
            Ok(t) => t,
            Err(e) if api_required => return Err(e),
            Err(e) => {
                tracing::warn!("{e}; running without the management API");
                None
            }
        };
        let remap_task = remapper.as_ref().map(|r| r.spawn(shutdown.clone()));
        let migrate_task = migrator.as_ref().map(|m| m.spawn(shutdown.clone()));
        let follower = cl.as_ref().map(|(c, lease)| {
            clustered::spawn_follower(
                c.cluster.clone(),
                *lease,
                c.groups.clone(),
                prs.clone(),
                shutdown.clone(),
            )
        });
        let sd = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: finishing in-flight commands");
            sd.cancel();
        });
        server.run(listeners, shutdown).await;
        if let Some(t) = api_task {
            let _ = t.await;
        }
        // Flush every LU's store. Remote stores block on the runtime, so this runs on
        // the blocking pool, never on a runtime thread.
        let stores = node.stores.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            for s in &stores {
                if let Err(e) = s.flush() {
                    tracing::error!(error = %e, "flush at shutdown failed");
                }
            }
        })
        .await;
        if flushed.is_err() {
            tracing::error!("flush at shutdown panicked");
        }
        if let Some(f) = follower {
            let _ = f.await;
        }
        if let Some(t) = remap_task {
            let _ = t.await;
        }
        if let Some(t) = migrate_task {
            let _ = t.await;
        }
        if let Some((c, _)) = cl {
            stop_member(c.cluster).await;
        }
        tracing::info!("stopped");
        Ok(())
    })
}

/// A witness: votes in the cluster, serves no I/O, until a signal.
async fn run_witness(member: std::sync::Arc<cluster::ClusterNode>) -> Result<(), String> {
    println!("witness: voting only, no I/O");
    wait_for_signal().await;
    stop_member(member).await;
    Ok(())
}

/// Leave Raft cleanly when nothing else holds the member.
async fn stop_member(member: std::sync::Arc<cluster::ClusterNode>) {
    match std::sync::Arc::try_unwrap(member) {
        Ok(m) => m.shutdown().await,
        Err(m) => drop(m),
    }
}

/// Start the management API if `[management]` is configured; prints its URL.
/// A cluster member's pieces the management API works with.
struct Member {
    node: Arc<cluster::ClusterNode>,
    remapper: Arc<remap::Remapper>,
    catalog: Arc<catalog::Catalog>,
}

async fn start_api(
    cfg: &Config,
    server: &iscsi::Server,
    portals: Vec<mgmt::model::PortalView>,
    managed: api::Managed,
    member: Option<Member>,
    shutdown: &CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, String> {
    let Some(m) = &cfg.management else {
        return Ok(None);
    };
    let auth = api::auth_from(cfg);
    let addr: std::net::SocketAddr = m.listen.parse().expect("validated");
    mgmt::server::check_listen(&addr, &auth)?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        format!("cannot listen on [management] listen = {addr}: {e}; pick a free port")
    })?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let url = format!("http://{bound}/");
    let node = api::NodeMgmt::new(
        cfg,
        server.shared().clone(),
        portals,
        managed,
        Some(url.clone()),
    );
    let node = match member {
        Some(m) => {
            m.node.set_api_url(url.clone());
            let node = node.with_cluster(m.node, Some(m.catalog));
            m.remapper
                .set_journal(mgmt::NodeApi::journal(&node).clone());
            node
        }
        None => node,
    };
    node.spawn_watchers(shutdown.clone());
    let mode = if auth.is_open() {
        " (read-only: no tokens configured)"
    } else {
        ""
    };
    println!("management: {url}{mode}");
    tracing::info!(%bound, "management API listening");
    let sd = shutdown.clone();
    let api: std::sync::Arc<dyn mgmt::NodeApi> = std::sync::Arc::new(node);
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = mgmt::serve(listener, api, auth, sd).await {
            tracing::error!(error = %e, "management API stopped");
        }
    })))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node name given to `nodes …` must not be taken for the global `--node` URL.
    #[test]
    fn node_names_and_the_node_url_do_not_collide() {
        for args in [
            vec![
                "switchyard",
                "--node",
                "http://127.0.0.1:1",
                "nodes",
                "alua",
                "n2",
                "standby",
            ],
            vec![
                "switchyard",
                "nodes",
                "drain",
                "n2",
                "--node",
                "http://127.0.0.1:1",
            ],
        ] {
            let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(cli.conn.node, "http://127.0.0.1:1", "{args:?}");
            let Cmd::Admin(mgmt::cli::AdminCmd::Nodes { cmd: Some(c) }) = cli.cmd else {
                panic!("{args:?}: not a nodes command");
            };
            let member = match c {
                mgmt::cli::NodesCmd::Alua { member, .. }
                | mgmt::cli::NodesCmd::Drain { member }
                | mgmt::cli::NodesCmd::Activate { member }
                | mgmt::cli::NodesCmd::Remove { member } => member,
            };
            assert_eq!(member, "n2");
        }
    }
}
