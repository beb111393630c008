//! client-rs-check: drive a switchyard node with the third-party initiator crate
//! `iscsi-client-rs` 0.0.9 and print one line per check plus
//! `client-rs: P passed, F failed`.
//!
//! Environment:
//! - `SWITCHYARD_BIN`  the switchyard binary (default `$CARGO_TARGET_DIR/debug/switchyard`,
//!   `CARGO_TARGET_DIR` defaulting to `/work/main/target`)
//! - `CLIENT_RS_LOG`   tracing filter for the crate's own logs (e.g. `debug`)
//! - `CLIENT_RS_STRESS` number of 1 MiB writes in the write-race probe (default 100)
//!
//! The crate does not apply the target's negotiated values: it uses its own
//! configuration as "the peer's" MaxRecvDataSegmentLength, FirstBurstLength,
//! MaxBurstLength, InitialR2T and ImmediateData. So every session here offers exactly
//! the values the node is configured with, which makes the negotiated result equal to
//! what the crate assumes.

use std::{
    collections::HashMap,
    fs,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use iscsi_client_rs::{
    cfg::{
        config::{
            AuthConfig, ChapConfig, Config, Extensions, Flow, Identity, Integrity, Limits,
            LoginConfig, Ordering, Recovery, RuntimeConfig, Timers, TransportHints,
            WriteFlow,
        },
        enums::{Digest, SessionType, YesNo},
    },
    client::{client::ClientConnection, pool_sessions::Pool},
    control_block::{
        inquiry::{
            fill_inquiry_standard_simple, fill_inquiry_vpd_simple, parse_inquiry_standard,
            parse_vpd_device_id, parse_vpd_supported_pages, parse_vpd_unit_serial, VpdPage,
        },
        read::{build_read10, build_read16},
        read_capacity::{
            build_read_capacity10, build_read_capacity16, parse_read_capacity10_zerocopy,
            parse_read_capacity16_zerocopy,
        },
        report_luns::fill_report_luns_simple,
        write::{build_write10, build_write16},
    },
    models::nop::request::NopOutRequest,
    state_machine::{
        nop_states::NopCtx, read_states::ReadCtx, tur_states::TurCtx, write_states::WriteCtx,
    },
};

const TARGET: &str = "iqn.2026-11.org.switchyard:client-rs";
const TARGET_CHAP: &str = "iqn.2026-11.org.switchyard:client-rs-chap";
const CHAP_USER: &str = "crs-user";
const CHAP_SECRET: &str = "crs-secret-1234"; // 15 bytes: RFC 7143 wants 12-16
// Each group of checks logs in with its own InitiatorName: the node throttles an
// initiator name after 8 failed logins in 30 s, and the crate's connection "recovery"
// makes 3 doomed logins (old TSIH) every time a connection drops.
const INITIATOR: &str = "iqn.2026-11.org.switchyard:client-rs-check";

// What the node is told in [fabric] and what the crate offers. The crate needs
// MaxBurstLength <= MaxRecvDataSegmentLength (0.0.9 sets the F bit on every Data-Out
// PDU, so an R2T window must fit one PDU) and every READ <= MaxBurstLength (it takes
// the F bit of the first Data-In sequence as the end of the command). So MRDSL =
// MaxBurstLength = 1 MiB, and the main checks move at most 1 MiB per command; bigger
// transfers are in the probes (CLIENT_RS_PROBES=1). See README.
const MRDSL: u32 = 1_048_576;
const NODE_MAX_BURST: u32 = 1_048_576;
const MAX_BURST: u32 = 1_048_576;
const FIRST_BURST: u32 = 262_144;

const LU0_BYTES: u64 = 64 << 20; // 512-byte blocks
const LU1_BYTES: u64 = 32 << 20; // 4096-byte blocks

fn lun_addr(lun: u16) -> u64 {
    // SAM single-level peripheral addressing: LUN in bytes 0-1 of the 8-byte field.
    (lun as u64) << 48
}

// ---------------------------------------------------------------------------------
// Report

#[derive(Default)]
struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    fn record(&mut self, name: &str, r: Result<String>) {
        match r {
            Ok(detail) => {
                self.passed += 1;
                println!("PASS  {name}: {detail}");
            }
            Err(e) => {
                self.failed += 1;
                println!("FAIL  {name}: {}", one_line(&format!("{e:#}")));
            }
        }
    }
}

fn one_line(s: &str) -> String {
    let s = s.replace('\n', " | ");
    if s.len() > 600 {
        format!("{}…", &s[..600])
    } else {
        s
    }
}

// ---------------------------------------------------------------------------------
// The node under test

struct Node {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
    addr: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn start_node(bin: &Path, mrdsl: u32) -> Result<Node> {
    ensure!(bin.exists(), "switchyard binary {} not found (build it first)", bin.display());
    let dir = std::env::temp_dir().join(format!("client-rs-check-{}-{mrdsl}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let toml = format!(
        r#"# written by initiator-tests/client-rs
[node]
name = "client-rs"
data_dir = "{dir}"

[[portal]]
listen = "{addr}"
tpgt = 1

[fabric]
max_recv_data_segment_length = {mrdsl}
max_burst_length = {NODE_MAX_BURST}
first_burst_length = {FIRST_BURST}
immediate_data = true
initial_r2t = false
max_outstanding_r2t = 4

[[target]]
name = "{TARGET}"
alias = "client-rs"

[[target.lun]]
lun = 0
path = "lu0.img"
size = "{lu0}"
block_size = 512

[[target.lun]]
lun = 1
path = "lu1.img"
size = "{lu1}"
block_size = 4096

[[target]]
name = "{TARGET_CHAP}"

[target.chap]
username = "{CHAP_USER}"
secret = "{CHAP_SECRET}"

[[target.lun]]
lun = 0
path = "chap0.img"
size = "8MiB"
block_size = 512
"#,
        dir = dir.display(),
        lu0 = LU0_BYTES,
        lu1 = LU1_BYTES,
    );
    let cfg_path = dir.join("node.toml");
    fs::write(&cfg_path, toml)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&cfg_path, fs::Permissions::from_mode(0o600))?;
    }
    let log = dir.join("node.log");
    let out = fs::File::create(&log)?;
    let child = Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(&cfg_path)
        .env("RUST_LOG", std::env::var("SWITCHYARD_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let mut node = Node { child, dir, log, addr };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if TcpStream::connect(&node.addr).is_ok() {
            return Ok(node);
        }
        if let Some(st) = node.child.try_wait()? {
            bail!(
                "switchyard exited early ({st}); log:\n{}",
                fs::read_to_string(&node.log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!("switchyard did not listen on {} within 30 s", node.addr);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------
// The initiator (iscsi-client-rs) side

#[derive(Clone, Copy)]
struct Opts {
    initiator: &'static str, // suffix of INITIATOR
    initial_r2t: bool,
    immediate_data: bool,
    max_outstanding_r2t: u8,
    max_burst: u32,
    mrdsl: u32,
    digests: bool,
    is_x86: bool,
}

impl Default for Opts {
    fn default() -> Self {
        // Matches the node's [fabric] except MaxOutstandingR2T=1: the crate handles one
        // R2T at a time and (0.0.9) drops the ITT's response channel after every R2T
        // (R2T has the F bit set), so several R2Ts in flight break it (see README).
        // IsX86 only selects the byte order of CRC32C digests; "Yes" sends them
        // byte-swapped (see README), so it stays "No".
        Opts {
            initiator: "main",
            initial_r2t: false,
            immediate_data: true,
            max_outstanding_r2t: 1,
            max_burst: MAX_BURST,
            mrdsl: MRDSL,
            digests: false,
            is_x86: false,
        }
    }
}

fn client_config(addr: &str, target: &str, auth: AuthConfig, o: Opts) -> Config {
    let digest = if o.digests { Digest::CRC32C } else { Digest::None };
    Config {
        login: LoginConfig {
            identity: Identity {
                session_type: SessionType::Normal,
                initiator_name: format!("{INITIATOR}-{}", o.initiator),
                initiator_alias: "client-rs-check".into(),
                target_name: target.into(),
                is_x86: o.is_x86.into(),
            },
            auth,
            integrity: Integrity { header_digest: digest, data_digest: digest },
            flow: Flow {
                max_recv_data_segment_length: o.mrdsl,
                max_burst_length: o.max_burst,
                first_burst_length: FIRST_BURST,
            },
            write_flow: WriteFlow {
                initial_r2t: o.initial_r2t.into(),
                immediate_data: o.immediate_data.into(),
                max_outstanding_r2t: o.max_outstanding_r2t,
            },
            ordering: Ordering { data_pdu_in_order: YesNo::Yes, data_sequence_in_order: YesNo::Yes },
            recovery: Recovery { error_recovery_level: 0 },
            timers: Timers {
                default_time2wait: Duration::from_secs(2),
                default_time2retain: Duration::from_secs(20),
            },
            limits: Limits { max_connections: 1 },
            extensions: Extensions {
                task_reporting: None,
                iscsi_protocol_level: None,
                custom: HashMap::new(),
            },
            transport: TransportHints { target_address: addr.into(), portal_group_tag: 1 },
        },
        runtime: RuntimeConfig { max_sessions: 1, timeout_connection: Duration::from_secs(15) },
    }
}

struct Client {
    pool: Arc<Pool>,
    tsih: u16,
    cid: u16,
    cfg: Config,
}

/// Failures that come from the crate's own ITT bookkeeping race (0.0.9): the read
/// loop drops an ITT's channel after any PDU with the F bit (an R2T, a Login Response
/// with T=1) and a later PDU for that ITT finds no channel; the connection is then
/// poisoned and the "recovery" loses the session.
fn is_crate_race(e: &anyhow::Error) -> bool {
    let m = format!("{e:#}");
    ["no pending request", "recovery attempts exhausted", "unknown TSIH", "connection closed before response"]
        .iter()
        .any(|k| m.contains(k))
}

/// Runs a check; while it fails with the crate's race (at most 3 tries), logs in again
/// (new session, unit attention cleared) and runs it again, saying so in the result.
macro_rules! retry_race {
    ($c:ident, $luns:expr, $e:expr) => {{
        let mut races: Vec<String> = Vec::new();
        loop {
            match $e {
                Ok(v) => {
                    break Ok(if races.is_empty() {
                        v
                    } else {
                        format!("{v} [{} earlier tr(ies) on other sessions broken by the crate's ITT race: {}]", races.len(), races.join("; "))
                    });
                }
                Err(e) if is_crate_race(&e) && races.len() < 2 => {
                    races.push(one_line(&format!("{e:#}")));
                    if let Err(e2) = $c.relogin($luns).await {
                        break Err(e2.context(format!("re-login after crate race ({})", races.join("; "))));
                    }
                }
                Err(e) => {
                    break Err(if races.is_empty() { e } else { e.context(format!("earlier tries: {}", races.join("; "))) });
                }
            }
        }
    }};
}

static NEXT_ISID: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);

impl Client {
    async fn login(cfg: &Config) -> Result<Client> {
        let pool = Arc::new(Pool::new(cfg));
        pool.attach_self();
        let conn = ClientConnection::connect(cfg.clone(), pool.cancel_token().child_token())
            .await
            .context("TCP connect")?;
        // Random-format ISID (type 0x80), unique per session of this run.
        let n = NEXT_ISID.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let isid = [0x80, 0x5c, 0x52, 0x53, (std::process::id() & 0xff) as u8, n];
        let tsih = tokio::time::timeout(
            Duration::from_secs(20),
            pool.login_and_insert(Arc::from(cfg.login.identity.target_name.as_str()), isid, 0, conn),
        )
        .await
        .map_err(|_| anyhow!("login timed out"))??;
        Ok(Client { pool, tsih, cid: 0, cfg: cfg.clone() })
    }

    async fn relogin(&mut self, luns: &[u16]) -> Result<()> {
        self.pool.shutdown_gracefully(Duration::from_millis(200)).await.ok();
        // A fresh InitiatorName each time: the crate's 3 doomed "recovery" logins per
        // broken connection count towards the node's failed-login throttle.
        let mut cfg = self.cfg.clone();
        let n = NEXT_ISID.load(std::sync::atomic::Ordering::SeqCst);
        cfg.login.identity.initiator_name = format!("{}-r{n}", self.cfg.login.identity.initiator_name);
        *self = Client::login(&cfg).await?;
        for &l in luns {
            self.clear_ua(l).await?;
        }
        Ok(())
    }

    /// A new I_T nexus starts with a POWER ON/RESET unit attention on every LU (SPC-4);
    /// the crate has no UA handling, so consume it with TEST UNIT READY like a host does.
    async fn clear_ua(&self, lun: u16) -> Result<()> {
        let mut last = None;
        for _ in 0..3 {
            match self.tur(lun).await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("set").context(format!("TEST UNIT READY LUN {lun} never GOOD")))
    }

    async fn read(&self, lun: u16, cdb: [u8; 16], len: u32) -> Result<Vec<u8>> {
        let fut = self.pool.execute_with(self.tsih, self.cid, move |c, itt, sn, esn| {
            ReadCtx::new(c, lun_addr(lun), itt, sn, esn, len, cdb)
        });
        let out = tokio::time::timeout(Duration::from_secs(60), fut)
            .await
            .map_err(|_| anyhow!("READ timed out"))??;
        Ok(out.data)
    }

    async fn write(&self, lun: u16, cdb: [u8; 16], data: &[u8]) -> Result<()> {
        let fut = self.pool.execute_with(self.tsih, self.cid, move |c, itt, sn, esn| {
            WriteCtx::new(c, lun_addr(lun), itt, sn, esn, cdb, data.to_vec())
        });
        tokio::time::timeout(Duration::from_secs(60), fut)
            .await
            .map_err(|_| anyhow!("WRITE timed out"))??;
        Ok(())
    }

    async fn tur(&self, lun: u16) -> Result<()> {
        self.pool
            .execute_with(self.tsih, self.cid, move |c, itt, sn, esn| {
                TurCtx::new(c, itt, sn, esn, lun_addr(lun))
            })
            .await?;
        Ok(())
    }

    async fn nop(&self) -> Result<()> {
        self.pool
            .execute_with(self.tsih, self.cid, |c, itt, sn, esn| {
                NopCtx::new(c, 0, itt, sn, esn, NopOutRequest::DEFAULT_TAG)
            })
            .await?;
        Ok(())
    }

    /// Writes `data` at `lba` with WRITE(10) (WRITE(16) if `w16`), reads it back
    /// with READ(10)/(16) and compares every byte.
    async fn write_read_verify(&self, lun: u16, bs: u32, lba: u64, data: &[u8], w16: bool) -> Result<String> {
        ensure!(data.len() % bs as usize == 0);
        let blocks = (data.len() / bs as usize) as u32;
        let t0 = Instant::now();
        let mut cdb = [0u8; 16];
        if w16 {
            build_write16(&mut cdb, lba, blocks, 0, 0);
        } else {
            build_write10(&mut cdb, lba as u32, blocks as u16, 0, 0);
        }
        self.write(lun, cdb, data).await.context("write")?;
        let tw = t0.elapsed();
        let mut cdb = [0u8; 16];
        if w16 {
            build_read16(&mut cdb, lba, blocks, 0, 0);
        } else {
            build_read10(&mut cdb, lba as u32, blocks as u16, 0, 0);
        }
        let got = self.read(lun, cdb, data.len() as u32).await.context("read back")?;
        ensure!(got.len() == data.len(), "read back {} bytes, wrote {}", got.len(), data.len());
        if let Some(i) = got.iter().zip(data).position(|(a, b)| a != b) {
            bail!("data mismatch at byte {i}: wrote {:#04x}, read {:#04x}", data[i], got[i]);
        }
        Ok(format!(
            "{} B at LBA {lba} written ({:.1} ms) and read back identical ({:.1} ms)",
            data.len(),
            tw.as_secs_f64() * 1e3,
            (t0.elapsed() - tw).as_secs_f64() * 1e3
        ))
    }

    async fn logout(&self) -> Result<()> {
        tokio::time::timeout(Duration::from_secs(10), self.pool.logout_session(self.tsih))
            .await
            .map_err(|_| anyhow!("logout timed out"))??;
        Ok(())
    }

    /// Logout for a check. The node sends the Logout Response and then closes the TCP
    /// connection; the crate's read loop poisons the connection on that EOF and throws
    /// away what is queued, so the response is sometimes lost ("connection poisoned").
    async fn logout_check(&self) -> Result<String> {
        match self.logout().await {
            Ok(()) => Ok("Logout Response received".into()),
            Err(e) if format!("{e:#}").contains("connection poisoned") => Ok(format!(
                "node closed the connection after Logout; the crate dropped the Logout Response in its EOF race [{}]",
                one_line(&format!("{e:#}"))
            )),
            Err(e) => Err(e),
        }
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    // xorshift64*: distinct per seed, no block repeats the previous one.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

// ---------------------------------------------------------------------------------
// The checks

async fn main_session(rep: &mut Report, node: &Node) -> Result<()> {
    let cfg = client_config(&node.addr, TARGET, AuthConfig::None, Opts::default());
    let t = Instant::now();
    let mut c = match Client::login(&cfg).await {
        Ok(c) => {
            rep.record("login (no auth)", Ok(format!("TSIH {:#06x} in {:.1} ms", c.tsih, t.elapsed().as_secs_f64() * 1e3)));
            c
        }
        Err(e) => {
            rep.record("login (no auth)", Err(e));
            bail!("no session: later checks skipped");
        }
    };

    // INQUIRY (standard) — exempt from unit attention, so first.
    let r = async {
        let mut cdb = [0u8; 16];
        fill_inquiry_standard_simple(&mut cdb, 96);
        let d = c.read(0, cdb, 96).await?;
        let inq = parse_inquiry_standard(&d)?;
        ensure!(inq.peripheral_qualifier == 0 && inq.device_type == 0, "PQ/PDT {}/{}", inq.peripheral_qualifier, inq.device_type);
        ensure!(inq.vendor_id == "SWITCHYD", "vendor {:?}", inq.vendor_id);
        ensure!(inq.product_id == "VIRTUAL-DISK", "product {:?}", inq.product_id);
        Ok(format!("{} B: {} {} rev {} (version {:#04x}, {})", d.len(), inq.vendor_id, inq.product_id, inq.product_rev, inq.version, inq.device_type_str()))
    }
    .await;
    rep.record("INQUIRY standard", r);

    let r = async {
        let mut cdb = [0u8; 16];
        fill_inquiry_vpd_simple(&mut cdb, VpdPage::SupportedPages, 255);
        let pages = parse_vpd_supported_pages(&c.read(0, cdb, 255).await?)?;
        for want in [0x00u8, 0x80, 0x83] {
            ensure!(pages.contains(&want), "page {want:#04x} missing from {pages:02x?}");
        }
        Ok(format!("pages {pages:02x?}"))
    }
    .await;
    rep.record("INQUIRY VPD 0x00 supported pages", r);

    let r = async {
        let mut cdb = [0u8; 16];
        fill_inquiry_vpd_simple(&mut cdb, VpdPage::UnitSerial, 255);
        let s = parse_vpd_unit_serial(&c.read(0, cdb, 255).await?)?;
        ensure!(!s.is_empty(), "empty serial");
        Ok(format!("serial {s:?}"))
    }
    .await;
    rep.record("INQUIRY VPD 0x80 unit serial", r);

    let r = async {
        let mut cdb = [0u8; 16];
        fill_inquiry_vpd_simple(&mut cdb, VpdPage::DeviceId, 255);
        let ids = parse_vpd_device_id(&c.read(0, cdb, 255).await?)?;
        // An NAA designator (type 3) for the LU itself (association 0).
        let naa = ids.iter().find(|d| d.id_type == 3 && d.association == 0).ok_or_else(|| anyhow!("no LU NAA designator in {ids:?}"))?;
        Ok(format!("{} designators, LU NAA {}", ids.len(), naa.identifier))
    }
    .await;
    rep.record("INQUIRY VPD 0x83 device identification", r);

    let r = async {
        let mut cdb = [0u8; 16];
        fill_report_luns_simple(&mut cdb, 256);
        let d = c.read(0, cdb, 256).await?;
        ensure!(d.len() >= 8, "short REPORT LUNS data ({} B)", d.len());
        let list_len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
        let luns: Vec<u16> = d[8..(8 + list_len).min(d.len())]
            .chunks_exact(8)
            .map(|e| u16::from_be_bytes([e[0] & 0x3f, e[1]]))
            .collect();
        ensure!(luns == vec![0, 1], "LUNs {luns:?}, expected [0, 1]");
        Ok(format!("LUNs {luns:?}"))
    }
    .await;
    rep.record("REPORT LUNS", r);

    // TEST UNIT READY: a unit attention after login is legitimate, so allow a retry.
    for lun in [0u16, 1] {
    let r = async {
        let mut notes = Vec::new();
        for _ in 0..3 {
            match c.tur(lun).await {
                Ok(()) => {
                    return Ok(if notes.is_empty() { "GOOD".to_string() } else { format!("GOOD after {}", notes.join("; ")) });
                }
                Err(e) => notes.push(one_line(&format!("{e:#}"))),
            }
        }
        bail!("{}", notes.join("; "))
    }
    .await;
    rep.record(&format!("TEST UNIT READY LUN {lun} (first one: POWER ON unit attention expected)"), r);
    }

    rep.record("NOP-Out ping", c.nop().await.map(|_| "NOP-In received".into()));

    // READ CAPACITY (10) and (16), both LUs.
    let mut last_lba0 = LU0_BYTES / 512 - 1;
    for (lun, bs, bytes) in [(0u16, 512u32, LU0_BYTES), (1, 4096, LU1_BYTES)] {
        let want_last = bytes / bs as u64 - 1;
        let r = async {
            let mut cdb = [0u8; 16];
            build_read_capacity10(&mut cdb, 0, false, 0);
            let d = c.read(lun, cdb, 8).await?;
            let rc = parse_read_capacity10_zerocopy(&d)?;
            ensure!(rc.block_len.get() == bs && rc.max_lba.get() as u64 == want_last,
                "last LBA {} block {}, want {want_last} / {bs}", rc.max_lba.get(), rc.block_len.get());
            Ok(format!("last LBA {} x {} B = {} MiB", rc.max_lba.get(), rc.block_len.get(), rc.total_bytes() >> 20))
        }
        .await;
        rep.record(&format!("READ CAPACITY(10) LUN {lun}"), r);
        let r = async {
            let mut cdb = [0u8; 16];
            build_read_capacity16(&mut cdb, 0, false, 32, 0);
            let d = c.read(lun, cdb, 32).await?;
            let rc = parse_read_capacity16_zerocopy(&d)?;
            ensure!(rc.block_len.get() == bs && rc.max_lba.get() == want_last,
                "last LBA {} block {}, want {want_last} / {bs}", rc.max_lba.get(), rc.block_len.get());
            if lun == 0 {
                last_lba0 = rc.max_lba.get();
            }
            Ok(format!("last LBA {} x {} B", rc.max_lba.get(), rc.block_len.get()))
        }
        .await;
        rep.record(&format!("READ CAPACITY(16) LUN {lun}"), r);
    }

    // Writes and reads with verification, LUN 0 (512 B blocks). Up to FirstBurstLength
    // (256 KiB) a write is immediate data only; above it the rest is solicited by R2T.
    let sizes: [(usize, &str); 7] = [
        (512, "512 B"),
        (4096, "4 KiB"),
        (8192 + 512, "8.5 KiB"),
        (65536, "64 KiB"),
        (262_144, "256 KiB (= FirstBurst, immediate only)"),
        (262_144 + 512, "256.5 KiB (immediate + R2T)"),
        (1 << 20, "1 MiB (256 KiB immediate + one 768 KiB R2T)"),
    ];
    let mut lba = 2048u64;
    for (i, (len, label)) in sizes.iter().enumerate() {
        let data = pattern(*len, 100 + i as u64);
        let r = retry_race!(c, &[0, 1], c.write_read_verify(0, 512, lba, &data, false).await);
        rep.record(&format!("WRITE(10)/READ(10) {label}"), r);
        lba += (*len as u64).div_ceil(512) + 8;
    }

    // WRITE(16)/READ(16) on the last 64 blocks of LUN 0.
    let data = pattern(64 * 512, 7);
    let r = retry_race!(c, &[0, 1], c.write_read_verify(0, 512, last_lba0 - 63, &data, true).await);
    rep.record("WRITE(16)/READ(16) last 64 blocks", r);

    // Reading past the end must fail with CHECK CONDITION (ILLEGAL REQUEST), and the
    // session must stay usable.
    let r = async {
        let mut cdb = [0u8; 16];
        build_read16(&mut cdb, last_lba0 + 1, 1, 0, 0);
        match c.read(0, cdb, 512).await {
            Ok(d) => bail!("READ past the end succeeded ({} B)", d.len()),
            Err(e) => {
                let msg = format!("{e:#}");
                ensure!(msg.contains("CheckCondition") && msg.contains("sense_key: 0x5"), "unexpected error: {msg}");
                c.tur(0).await.context("session unusable after the CHECK CONDITION")?;
                Ok(format!("CHECK CONDITION, ILLEGAL REQUEST; session still usable ({})", one_line(&msg)))
            }
        }
    }
    .await;
    rep.record("READ(16) past the end -> CHECK CONDITION", r);

    // LUN 1, 4096-byte blocks.
    for (len, label) in [(4096usize, "4 KiB"), (1 << 20, "1 MiB")] {
        let r = retry_race!(c, &[0, 1], c.write_read_verify(1, 4096, 64, &pattern(len, 300 + len as u64), false).await);
        rep.record(&format!("LUN 1 (4 KiB blocks) WRITE/READ {label}"), r);
    }

    // Concurrency: 16 commands in flight on one session (8 immediate-data writes then
    // 16 reads), each to its own range.
    let r = async {
        let base = 40_000u64;
        let bufs: Vec<Vec<u8>> = (0..16).map(|i| pattern(64 * 1024, 500 + i)).collect();
        let writes = (0..16).map(|i| {
            let mut cdb = [0u8; 16];
            build_write10(&mut cdb, (base + i as u64 * 256) as u32, 128, 0, 0);
            let c = &c;
            let d = &bufs[i];
            async move { c.write(0, cdb, d).await }
        });
        for (i, r) in futures_join(writes).await.into_iter().enumerate() {
            r.with_context(|| format!("concurrent write {i}"))?;
        }
        let reads = (0..16).map(|i| {
            let mut cdb = [0u8; 16];
            build_read10(&mut cdb, (base + i as u64 * 256) as u32, 128, 0, 0);
            let c = &c;
            async move { c.read(0, cdb, 64 * 1024).await }
        });
        for (i, r) in futures_join(reads).await.into_iter().enumerate() {
            let got = r.with_context(|| format!("concurrent read {i}"))?;
            ensure!(got == bufs[i], "concurrent read {i}: data differs");
        }
        Ok("16 concurrent 64 KiB writes + 16 concurrent reads verified".to_string())
    }
    .await;
    rep.record("16 concurrent 64 KiB writes/reads", r);

    rep.record("Logout (CloseSession)", c.logout_check().await);
    c.pool.shutdown_gracefully(Duration::from_secs(2)).await.ok();
    Ok(())
}

/// Runs futures concurrently on the current task (no extra dependency).
async fn futures_join<F, T>(futs: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.into_iter().map(|v| v.expect("all ready")).collect()
}

/// InitialR2T=Yes, ImmediateData=No: every byte of every write is solicited by R2T.
async fn r2t_session(rep: &mut Report, node: &Node) {
    let o = Opts { initiator: "r2t", initial_r2t: true, immediate_data: false, ..Opts::default() };
    let cfg = client_config(&node.addr, TARGET, AuthConfig::None, o);
    let mut c = match Client::login(&cfg).await {
        Ok(c) => c,
        Err(e) => return rep.record("R2T-only session: login", Err(e)),
    };
    if let Err(e) = c.clear_ua(0).await {
        rep.record("unit attention cleared", Err(e));
    }
    for (i, (len, label)) in [(512usize, "512 B"), (256 * 1024, "256 KiB"), (1 << 20, "1 MiB")].into_iter().enumerate() {
        let r = retry_race!(c, &[0], c.write_read_verify(0, 512, 100_000 + i as u64 * 10_000, &pattern(len, 900 + i as u64), false).await);
        rep.record(&format!("R2T-only (InitialR2T=Yes, ImmediateData=No) WRITE/READ {label}"), r);
    }
    rep.record("R2T-only session: Logout", c.logout_check().await);
    c.pool.shutdown_gracefully(Duration::from_secs(2)).await.ok();
}

/// CRC32C header and data digests.
async fn digest_session(rep: &mut Report, node: &Node) {
    let o = Opts { initiator: "digest", digests: true, ..Opts::default() };
    let cfg = client_config(&node.addr, TARGET, AuthConfig::None, o);
    let mut c = match Client::login(&cfg).await {
        Ok(c) => c,
        Err(e) => return rep.record("CRC32C digests: login", Err(e)),
    };
    if let Err(e) = c.clear_ua(0).await {
        rep.record("unit attention cleared", Err(e));
    }
    let r = retry_race!(c, &[0], c.write_read_verify(0, 512, 120_000, &pattern(1 << 20, 77), false).await);
    rep.record("CRC32C digests: WRITE/READ 1 MiB", r);
    c.logout().await.ok();
    c.pool.shutdown_gracefully(Duration::from_secs(2)).await.ok();
}

async fn chap_sessions(rep: &mut Report, node: &Node) {
    let auth = AuthConfig::Chap(ChapConfig { username: CHAP_USER.into(), secret: CHAP_SECRET.into() });
    let cfg = client_config(&node.addr, TARGET_CHAP, auth, Opts { initiator: "chap", ..Opts::default() });
    let mut notes = Vec::new();
    // Every step of a CHAP login can hit the crate's ITT race (it takes each Login
    // Response without the C bit as final), so allow up to 20 tries, each under its own
    // InitiatorName (the node throttles a name after 8 failed logins).
    let mut res = Client::login(&cfg).await;
    for t in 0..19 {
        match &res {
            Err(e) if is_crate_race(e) || format!("{e:#}").contains("connection poisoned") => {
                notes.push(one_line(&format!("{e:#}")));
                let mut c2 = cfg.clone();
                c2.login.identity.initiator_name = format!("{}-t{t}", cfg.login.identity.initiator_name);
                res = Client::login(&c2).await;
            }
            _ => break,
        }
    }
    match res {
        Ok(c) => {
            let note = if notes.is_empty() { String::new() } else {
                format!(" [after {} attempt(s) broken by the crate's ITT race; first: {}]", notes.len(), notes[0])
            };
            rep.record("CHAP login", Ok(format!("TSIH {:#06x}{note}", c.tsih)));
            if let Err(e) = c.clear_ua(0).await {
                rep.record("unit attention cleared", Err(e));
            }
            let mut c = c;
            let r = retry_race!(c, &[0], c.write_read_verify(0, 512, 0, &pattern(64 * 1024, 55), false).await);
            rep.record("CHAP session WRITE/READ 64 KiB", r);
            c.logout().await.ok();
            c.pool.shutdown_gracefully(Duration::from_secs(2)).await.ok();
        }
        Err(e) => rep.record("CHAP login", Err(e)),
    }
    let bad = AuthConfig::Chap(ChapConfig { username: CHAP_USER.into(), secret: "wrong-secret-99".into() });
    let cfg = client_config(&node.addr, TARGET_CHAP, bad, Opts { initiator: "chap-bad", ..Opts::default() });
    // The crate's ITT race can break the login before the CHAP response is even sent;
    // the node's log says what the node decided, so try up to 20 times (own InitiatorName each).
    let mut r = Err(anyhow!("not tried"));
    let mut races = Vec::new();
    for t in 0..20 {
        let mut c2 = cfg.clone();
        c2.login.identity.initiator_name = format!("{}-t{t}", cfg.login.identity.initiator_name);
        r = match Client::login(&c2).await {
            Ok(c) => Err(anyhow!("login with a wrong CHAP secret succeeded (TSIH {:#06x})", c.tsih)),
            Err(e) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let log = fs::read_to_string(&node.log).unwrap_or_default();
                if log.lines().any(|l| l.contains("login authentication failed") && l.contains("client-rs-check-chap-bad")) {
                    let note = if races.is_empty() { String::new() } else { format!(" [earlier attempt(s) broken by the crate's ITT race: {}]", races.join("; ")) };
                    Ok(format!("node logged \"login authentication failed\"; crate said: {}{note}", one_line(&format!("{e:#}"))))
                } else {
                    races.push(one_line(&format!("{e:#}")));
                    Err(e.context("the node did not log an authentication failure"))
                }
            }
        };
        if r.is_ok() || !format!("{:#}", r.as_ref().err().expect("err")).contains("did not log") {
            break;
        }
    }
    rep.record("CHAP wrong secret refused", r);
    let cfg = client_config(&node.addr, TARGET_CHAP, AuthConfig::None, Opts { initiator: "chap-none", ..Opts::default() });
    let r = match Client::login(&cfg).await {
        Ok(c) => Err(anyhow!("login without CHAP to a CHAP target succeeded (TSIH {:#06x})", c.tsih)),
        Err(e) => Ok(format!("refused: {}", one_line(&format!("{e:#}")))),
    };
    rep.record("CHAP target refuses AuthMethod=None", r);
}

async fn probe_login(node: &Node, o: Opts) -> Result<Client> {
    let cfg = client_config(&node.addr, TARGET, AuthConfig::None, o);
    let c = Client::login(&cfg).await?;
    c.clear_ua(0).await?;
    Ok(c)
}

fn probe(name: &str, r: Result<String>) {
    match r {
        Ok(s) => println!("PROBE {name}: {s}"),
        Err(e) => println!("PROBE {name}: {}", one_line(&format!("{e:#}"))),
    }
}

/// Reproduce the crate's known bugs against the node (outcomes printed, not counted).
async fn probes(node: &Node) {
    // 1. ITT race: n x 1 MiB writes (256 KiB immediate + one 768 KiB R2T).
    let n: usize = std::env::var("CLIENT_RS_STRESS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let r = async {
        let mut c = probe_login(node, Opts { initiator: "p-stress", ..Opts::default() }).await?;
        let data = pattern(1 << 20, 4242);
        let (mut fails, mut first) = (0, String::new());
        for i in 0..n {
            let mut cdb = [0u8; 16];
            build_write10(&mut cdb, (20_000 + (i as u64 % 16) * 2048) as u32, 2048, 0, 0);
            if let Err(e) = c.write(0, cdb, &data).await {
                fails += 1;
                if first.is_empty() {
                    first = format!("#{i}: {}", one_line(&format!("{e:#}")));
                }
                // Waits out the node's failed-login throttle if the crate's 3 doomed
                // "recovery" logins per broken connection tripped it.
                let mut ok = false;
                for _ in 0..3 {
                    if c.relogin(&[0]).await.is_ok() {
                        ok = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(16)).await;
                }
                ensure!(ok, "re-login failed after {fails} failures");
            }
        }
        c.logout().await.ok();
        Ok(format!("{fails} of {n} 1 MiB writes failed{}", if first.is_empty() { String::new() } else { format!("; first {first}") }))
    }
    .await;
    probe("ITT race, 1 MiB writes", r);

    // 2. A 4 MiB READ: four Data-In sequences of MaxBurstLength (1 MiB), each ending
    //    with F=1 as RFC 7143 11.7.1 requires; the crate stops at the first.
    let r = async {
        let c = probe_login(node, Opts { initiator: "p-bigread", ..Opts::default() }).await?;
        let mut cdb = [0u8; 16];
        build_read10(&mut cdb, 0, 8192, 0, 0);
        let d = c.read(0, cdb, 4 << 20).await?;
        Ok(format!("READ of 4 MiB returned {} bytes", d.len()))
    }
    .await;
    probe("4 MiB READ (several Data-In sequences)", r);

    // 5. CRC32C digests with IsX86=Yes: the crate sends the CRC byte-swapped.
    let r = async {
        let c = probe_login(node, Opts { initiator: "p-x86", digests: true, is_x86: true, ..Opts::default() }).await?;
        c.nop().await?;
        Ok("NOP with IsX86=Yes digests succeeded".to_string())
    }
    .await;
    probe("digests with IsX86=Yes", r);
}

/// Probes that need the node to declare MaxRecvDataSegmentLength = 256 KiB.
async fn probes_256k(node: &Node) {
    // 3. MaxBurstLength (1 MiB) > the crate's MRDSL (256 KiB): an R2T window takes
    //    several Data-Out PDUs and the crate sets F=1 on each.
    let r = async {
        let c = probe_login(node, Opts { initiator: "p-fbit", mrdsl: 262_144, ..Opts::default() }).await?;
        let mut cdb = [0u8; 16];
        build_write10(&mut cdb, 30_000, 2048, 0, 0);
        c.write(0, cdb, &pattern(1 << 20, 1)).await?;
        Ok("1 MiB write succeeded".to_string())
    }
    .await;
    probe("R2T window in several Data-Out PDUs (F bit)", r);

    // 4. MaxOutstandingR2T=4 with InitialR2T=Yes and 256 KiB bursts: four R2Ts at once.
    let r = async {
        let o = Opts {
            initiator: "p-mor2t",
            initial_r2t: true,
            immediate_data: false,
            max_outstanding_r2t: 4,
            max_burst: 262_144,
            mrdsl: 262_144,
            ..Opts::default()
        };
        let c = probe_login(node, o).await?;
        let mut cdb = [0u8; 16];
        build_write10(&mut cdb, 40_000, 2048, 0, 0);
        c.write(0, cdb, &pattern(1 << 20, 2)).await?;
        Ok("1 MiB write with 4 outstanding R2Ts succeeded".to_string())
    }
    .await;
    probe("MaxOutstandingR2T=4", r);

}

fn node_log_check(rep: &mut Report, node: &mut Node) {
    let alive = matches!(node.child.try_wait(), Ok(None));
    let log = fs::read_to_string(&node.log).unwrap_or_default();
    let bad: Vec<&str> = log.lines().filter(|l| l.contains("panicked") || l.contains(" ERROR ")).collect();
    let r = if !alive {
        Err(anyhow!("node exited during the run; log {}", node.log.display()))
    } else if !bad.is_empty() {
        Err(anyhow!("{} panic/ERROR lines in {}; first: {}", bad.len(), node.log.display(), bad[0]))
    } else {
        Ok(format!("node alive, no panic/ERROR lines ({} log lines)", log.lines().count()))
    };
    rep.record("node log clean", r);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    if let Ok(f) = std::env::var("CLIENT_RS_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(f).with_writer(std::io::stderr).try_init();
    }
    let bin = std::env::var_os("SWITCHYARD_BIN").map(PathBuf::from).unwrap_or_else(|| {
        let td = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "/work/main/target".into());
        PathBuf::from(td).join("debug/switchyard")
    });
    let mut rep = Report::default();
    let t0 = Instant::now();
    let mut node = match start_node(&bin, MRDSL) {
        Ok(n) => n,
        Err(e) => {
            rep.record("start switchyard node", Err(e));
            println!("client-rs: {} passed, {} failed", rep.passed, rep.failed);
            std::process::exit(1);
        }
    };
    println!("# node {} on {} (data and log in {})", bin.display(), node.addr, node.dir.display());
    if let Err(e) = main_session(&mut rep, &node).await {
        println!("# {e:#}");
    }
    r2t_session(&mut rep, &node).await;
    digest_session(&mut rep, &node).await;
    chap_sessions(&mut rep, &node).await;
    if std::env::var_os("CLIENT_RS_PROBES").is_some() {
        println!("# probes of the crate's known bugs (not counted)");
        probes(&node).await;
        // The crate insists that the node declares the same MaxRecvDataSegmentLength
        // as itself, so the 256 KiB probes need a node that declares 256 KiB.
        match start_node(&bin, 262_144) {
            Ok(n2) => {
                println!("# second node on {} declaring MaxRecvDataSegmentLength=262144", n2.addr);
                probes_256k(&n2).await;
                let log = fs::read_to_string(&n2.log).unwrap_or_default();
                for l in log.lines().filter(|l| l.contains("WARN")) {
                    println!("# second node: {}", one_line(l.split("WARN").nth(1).unwrap_or(l).trim()));
                }
                let d = n2.dir.clone();
                drop(n2);
                let _ = fs::remove_dir_all(d);
            }
            Err(e) => println!("# second node: {e:#}"),
        }
    }
    node_log_check(&mut rep, &mut node);
    println!("# {:.1} s", t0.elapsed().as_secs_f64());
    println!("client-rs: {} passed, {} failed", rep.passed, rep.failed);
    let keep = std::env::var_os("CLIENT_RS_KEEP").is_some() || rep.failed > 0;
    let dir = node.dir.clone();
    drop(node);
    if keep {
        println!("# kept {} for inspection", dir.display());
    } else {
        let _ = fs::remove_dir_all(&dir);
    }
    std::process::exit(if rep.failed == 0 { 0 } else { 1 });
}
