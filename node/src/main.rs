//! `switchyard`: run a node (`serve --config FILE`), or a ready-made single-machine
//! setup (`up`), or check a config (`check`).

mod build;
mod config;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
    },
    /// Validate a config file and print what it would serve.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve { config } => Config::load(&config)
            .map_err(|e| e.to_string())
            .and_then(serve),
        Cmd::Up { data, listen, size } => embedded_default(&data, &listen, &size).and_then(serve),
        Cmd::Check { config } => check(&config),
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
fn embedded_default(data: &Path, listen: &str, size: &str) -> Result<Config, String> {
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
    Ok(cfg)
}

fn check(path: &Path) -> Result<(), String> {
    let cfg = Config::load(path).map_err(|e| e.to_string())?;
    for p in &cfg.portals {
        println!("portal {} (tpgt {})", p.listen, p.tpgt);
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

fn serve(cfg: Config) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("switchyard")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async move {
        let node = build::build(&cfg).await?;
        let server = iscsi::Server::new(node.fabric.clone(), node.targets, node.portals);
        let listeners = server.bind().await.map_err(|e| e.to_string())?;
        for (l, p) in listeners.iter().zip(server.shared().portals.iter()) {
            let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(portal = %addr, tpgt = p.tpgt, "listening");
            for t in &server.shared().targets {
                for lun in &t.luns {
                    println!("iscsi://{addr}/{}/{}", t.name, lun.lun);
                }
            }
        }
        let shutdown = CancellationToken::new();
        let sd = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: finishing in-flight commands");
            sd.cancel();
        });
        server.run(listeners, shutdown).await;
        for s in &node.stores {
            if let Err(e) = s.flush() {
                tracing::error!(error = %e, "flush at shutdown failed");
            }
        }
        tracing::info!("stopped");
        Ok(())
    })
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
