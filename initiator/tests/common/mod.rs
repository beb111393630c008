//! Shared test fixtures: our own target in-process (switchyard's `iscsi::Server` over
//! `MemStore` LUs), test stores with knobs (slow reads, a growable capacity), and a
//! real tgtd started on private ports.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blockdev::{BlockError, BlockStore, MemStore};
use fcwwn::Masking;
use iscsi::{ChapConfig, FabricConfig, LunDef, PortalDef, Server, TargetDef};
use iscsi_initiator::InitiatorConfig;
use scsi::{Limits, LogicalUnit, LuConfig, TargetInfo};
use tokio_util::sync::CancellationToken;

pub const TARGET: &str = "iqn.2026-11.org.switchyard:array";
pub const INITIATOR: &str = "iqn.2026-11.org.switchyard:node1";

/// How to build an in-process target.
pub struct Spec {
    pub luns: Vec<Arc<dyn BlockStore>>,
    pub chap: Option<ChapConfig>,
    pub fabric: FabricConfig,
    /// Limits for every LU (default: `Limits::for_block_size`).
    pub limits: Option<Limits>,
    pub thin: bool,
    pub name: String,
    /// Bind here (for restarts on the same port); default 127.0.0.1:0.
    pub addr: Option<SocketAddr>,
    /// LUN masking; default open (every initiator sees every LUN).
    pub masking: Option<Masking>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            luns: vec![Arc::new(MemStore::new(512, 65536))],
            chap: None,
            fabric: FabricConfig::default(),
            limits: None,
            thin: false,
            name: TARGET.into(),
            addr: None,
            masking: None,
        }
    }
}

/// A target running in this process.
pub struct Target {
    pub addr: SocketAddr,
    pub server: Server,
    pub lus: Vec<Arc<LogicalUnit>>,
    pub name: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Target {
    pub async fn start(spec: Spec) -> Target {
        let info = Arc::new(TargetInfo {
            name: spec.name.clone(),
            port_name: format!("{},t,0x0001", spec.name),
        });
        let lus: Vec<Arc<LogicalUnit>> = spec
            .luns
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut wwn = [0u8; 16];
                wwn[0] = 0x60;
                wwn[1] = spec.name.len() as u8;
                wwn[15] = i as u8 + 1;
                let cfg = LuConfig {
                    wwn,
                    naa_len: 16,
                    serial: format!("SERIAL{i}"),
                    thin: spec.thin,
                    ..LuConfig::default()
                };
                let limits = spec
                    .limits
                    .unwrap_or_else(|| Limits::for_block_size(s.block_size()));
                Arc::new(LogicalUnit::with_limits(cfg, s.clone(), limits))
            })
            .collect();
        let target = TargetDef {
            name: spec.name.clone(),
            alias: Some("array".into()),
            luns: lus
                .iter()
                .enumerate()
                .map(|(i, lu)| LunDef {
                    lun: i as u16,
                    lu: lu.clone(),
                })
                .collect(),
            masking: Arc::new(spec.masking.unwrap_or_else(Masking::open)),
            chap: spec.chap,
            info,
        };
        let server = Server::new(
            spec.fabric,
            vec![target],
            vec![PortalDef {
                addr: spec.addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()),
                tpgt: 1,
                relative_port: 0,
            }],
        );
        let listeners = server.bind().await.expect("bind");
        let addr = listeners[0].local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let (s2, sd) = (server.clone(), shutdown.clone());
        let task = tokio::spawn(async move { s2.run(listeners, sd).await });
        Target {
            addr,
            server,
            lus,
            name: spec.name,
            shutdown,
            task,
        }
    }

    /// Ends every session of this target from the server side.
    pub fn kill_sessions(&self) {
        self.server.shared().reset_target(&self.name, 0);
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }

    /// Initiator configuration for this target, with short timeouts for tests.
    pub fn config(&self) -> InitiatorConfig {
        let mut c = InitiatorConfig::new(self.addr, INITIATOR, self.name.clone());
        c.reconnect_initial = Duration::from_millis(20);
        c.reconnect_max = Duration::from_millis(500);
        c.abort_timeout = Duration::from_secs(2);
        c
    }
}

/// A deterministic pattern: block `lba` written by `writer`.
pub fn pattern(writer: u64, lba: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x = (lba.wrapping_mul(0x9e37_79b9_7f4a_7c15)) ^ (writer << 48) ^ 0x1234_5678;
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    v
}

pub fn read16(lba: u64, blocks: u32) -> [u8; 16] {
    cdb16(0x88, lba, blocks)
}

pub fn write16(lba: u64, blocks: u32) -> [u8; 16] {
    cdb16(0x8a, lba, blocks)
}

fn cdb16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// A MemStore whose reads sleep while `delay_ms` is non-zero.
pub struct SlowStore {
    pub inner: MemStore,
    pub delay_ms: AtomicU64,
}

impl SlowStore {
    pub fn new(blocks: u64) -> SlowStore {
        SlowStore {
            inner: MemStore::new(512, blocks),
            delay_ms: AtomicU64::new(0),
        }
    }
}

impl BlockStore for SlowStore {
    blockdev::forward_to!(inner: block_size, num_blocks, capabilities, write, flush);
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let d = self.delay_ms.load(Ordering::Acquire);
        if d > 0 {
            std::thread::sleep(Duration::from_millis(d));
        }
        self.inner.read(lba, buf)
    }
}

/// A MemStore that shows only `visible` of its blocks (to grow it online).
pub struct GrowStore {
    pub inner: MemStore,
    pub visible: AtomicU64,
}

impl BlockStore for GrowStore {
    blockdev::forward_to!(inner: block_size, capabilities, flush, unmap, lba_status);
    fn num_blocks(&self) -> u64 {
        self.visible.load(Ordering::Acquire)
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.check_buf(lba, buf.len())?;
        self.inner.read(lba, buf)
    }
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), BlockError> {
        self.check_buf(lba, data.len())?;
        self.inner.write(lba, data, fua)
    }
}

mod ports;
mod tgtd;
pub use tgtd::Tgtd;

impl Tgtd {
    pub fn config(&self) -> InitiatorConfig {
        let mut c = InitiatorConfig::new(self.addr, INITIATOR, self.iqn.clone());
        c.reconnect_initial = Duration::from_millis(20);
        c.reconnect_max = Duration::from_millis(500);
        c
    }
}

/// A TCP proxy in front of a target whose forwarding can be frozen (the peer seems
/// alive at the TCP level but never answers) or cut (every connection reset).
pub struct Proxy {
    pub addr: SocketAddr,
    pub frozen: Arc<std::sync::atomic::AtomicBool>,
    cut: Arc<parking_lot::Mutex<CancellationToken>>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cut = Arc::new(parking_lot::Mutex::new(CancellationToken::new()));
        let (f, c) = (frozen.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((down, _)) = l.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let token = c.lock().clone();
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, f.clone(), token.clone()));
                tokio::spawn(pump(ur, dw, f.clone(), token));
            }
        });
        Proxy { addr, frozen, cut }
    }

    /// Drops every current connection (both sides see the socket close).
    pub fn cut(&self) {
        let mut t = self.cut.lock();
        t.cancel();
        *t = CancellationToken::new();
    }
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<std::sync::atomic::AtomicBool>,
    cut: CancellationToken,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            _ = cut.cancelled() => return,
            r = r.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        while frozen.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if cut.is_cancelled() || w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
