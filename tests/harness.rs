//! Test harness: start targets in-process (or the `switchyard` binary) and talk to them
//! with a small raw iSCSI initiator built on `iscsi-wire`. The initiator is deliberately
//! low-level so tests can also send malformed PDUs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use blockdev::{BlockStore, MemStore};
use bytes::{Bytes, BytesMut};
use fcwwn::Masking;
use iscsi::{ChapConfig, FabricConfig, LunDef, PortalDef, Server, TargetDef};
use iscsi_wire::digest::Digests;
use iscsi_wire::pdu::{
    self, DataOut, LoginRequest, LogoutReason, LogoutRequest, Response, ScsiCommand, Stage,
    TaskAttr,
};
use iscsi_wire::text::TextPairs;
use scsi::{LogicalUnit, LuConfig, TargetInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub mod cluster_rig;
pub mod host_load;
#[path = "../initiator/tests/common/ports.rs"]
pub mod ports;
#[path = "../initiator/tests/common/tgtd.rs"]
pub mod tgtd;

pub use ports::free_port;

pub const TARGET: &str = "iqn.2026-11.org.switchyard:test";
pub const INITIATOR: &str = "iqn.2026-11.org.switchyard:test-initiator";

/// A target running inside the test process.
pub struct TestTarget {
    pub addr: SocketAddr,
    pub stores: Vec<Arc<dyn BlockStore>>,
    pub server: Server,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// How to build a test target.
pub struct TargetSpec {
    pub luns: Vec<Arc<dyn BlockStore>>,
    pub chap: Option<ChapConfig>,
    pub masking: Masking,
    pub fabric: FabricConfig,
}

impl Default for TargetSpec {
    fn default() -> Self {
        TargetSpec {
            luns: vec![Arc::new(MemStore::new(512, 16384))],
            chap: None,
            masking: Masking::open(),
            fabric: FabricConfig::default(),
        }
    }
}

impl TestTarget {
    pub async fn start(spec: TargetSpec) -> TestTarget {
        let info = Arc::new(TargetInfo {
            name: TARGET.into(),
            port_name: format!("{TARGET},t,0x0001"),
        });
        let luns = spec
            .luns
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut wwn = [0u8; 16];
                wwn[0] = 0x60;
                wwn[15] = i as u8 + 1;
                let cfg = LuConfig {
                    wwn,
                    naa_len: 16,
                    serial: format!("SERIAL{i}"),
                    product: "TEST".into(),
                    ..LuConfig::default()
                };
                LunDef {
                    lun: i as u16,
                    lu: Arc::new(LogicalUnit::new(cfg, s.clone())),
                }
            })
            .collect();
        let target = TargetDef {
            name: TARGET.into(),
            alias: Some("test".into()),
            luns,
            masking: Arc::new(spec.masking),
            chap: spec.chap,
            info,
        };
        let server = Server::new(
            spec.fabric,
            vec![target],
            vec![PortalDef {
                addr: "127.0.0.1:0".parse().unwrap(),
                tpgt: 1,
                relative_port: 0,
            }],
        );
        let listeners = server.bind().await.expect("bind");
        let addr = listeners[0].local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let s2 = server.clone();
        let sd = shutdown.clone();
        let task = tokio::spawn(async move { s2.run(listeners, sd).await });
        TestTarget {
            addr,
            stores: spec.luns,
            server,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// Login options.
#[derive(Clone, Default)]
pub struct LoginOpts {
    pub initiator: Option<String>,
    pub target: Option<String>,
    pub discovery: bool,
    pub isid: Option<[u8; 6]>,
    /// (user, secret) for CHAP.
    pub chap: Option<(String, String)>,
    /// (expected target user, target secret) for mutual CHAP.
    pub mutual: Option<(String, String)>,
    /// Extra operational keys.
    pub keys: Vec<(String, String)>,
    pub digests: bool,
}

/// A login refused by the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginFailure {
    pub class: u8,
    pub detail: u8,
}

/// Result of one SCSI command.
#[derive(Debug, Clone, Default)]
pub struct ScsiResult {
    pub status: u8,
    pub sense: Bytes,
    pub data: Vec<u8>,
    pub residual: pdu::Residual,
}

impl ScsiResult {
    pub fn sense_key(&self) -> u8 {
        if self.sense.len() < 3 {
            return 0;
        }
        if self.sense[0] & 0x7f >= 0x72 {
            self.sense[1] & 0x0f
        } else {
            self.sense[2] & 0x0f
        }
    }
    /// (ASC, ASCQ) from fixed or descriptor sense.
    pub fn asc(&self) -> (u8, u8) {
        if self.sense.len() < 14 && self.sense.first().is_some_and(|b| b & 0x7f < 0x72) {
            return (0, 0);
        }
        if self.sense[0] & 0x7f >= 0x72 {
            (self.sense[2], self.sense[3])
        } else {
            (self.sense[12], self.sense[13])
        }
    }
}

/// A raw iSCSI initiator for tests.
pub struct Initiator {
    pub sock: TcpStream,
    rbuf: BytesMut,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub next_itt: u32,
    pub digests: Digests,
    /// What the target accepts per PDU.
    pub target_mrdsl: u32,
    pub first_burst: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub tsih: u16,
    pub isid: [u8; 6],
}

pub const TIMEOUT: Duration = Duration::from_secs(20);

impl Initiator {
    pub async fn connect(addr: SocketAddr) -> Initiator {
        let sock = TcpStream::connect(addr).await.expect("connect");
        sock.set_nodelay(true).unwrap();
        Initiator {
            sock,
            rbuf: BytesMut::new(),
            cmd_sn: 1,
            exp_stat_sn: 0,
            next_itt: 1,
            digests: Digests::NONE,
            target_mrdsl: 8192,
            first_burst: 65536,
            immediate_data: true,
            initial_r2t: true,
            tsih: 0,
            isid: [0x80, 0, 0, 0, 0, 1],
        }
    }

    /// Connect and log in to the test target with default options.
    pub async fn login_to(addr: SocketAddr) -> Initiator {
        let mut i = Initiator::connect(addr).await;
        i.login(&LoginOpts::default()).await.expect("login");
        i
    }

    pub fn itt(&mut self) -> u32 {
        let t = self.next_itt;
        self.next_itt += 1;
        t
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.expect("write");
    }

    pub async fn send(&mut self, req: &pdu::Request) {
        let mut b = BytesMut::new();
        req.encode(&mut b, self.digests);
        self.send_raw(&b).await;
    }

    /// Next PDU from the target; `None` when the connection closed or on timeout.
    pub async fn recv_timeout(&mut self, t: Duration) -> Option<Response> {
        let fut = async {
            loop {
                match pdu::decode_frame(&mut self.rbuf, self.digests, 16 << 20) {
                    Ok(Some(raw)) => {
                        return Some(raw.parse_response().expect("target sent a bad PDU"));
                    }
                    Ok(None) => {}
                    Err(e) => panic!("target sent an unframeable PDU: {e}"),
                }
                self.rbuf.reserve(65536);
                match self.sock.read_buf(&mut self.rbuf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        let r = tokio::time::timeout(t, fut).await.ok().flatten();
        if let Some(r) = &r {
            if let Some(sn) = stat_sn_of(r) {
                self.exp_stat_sn = sn.wrapping_add(1);
            }
        }
        r
    }

    pub async fn recv(&mut self) -> Option<Response> {
        self.recv_timeout(TIMEOUT).await
    }

    /// Is the connection closed by the target (reads EOF within `t`)?
    pub async fn closed_within(&mut self, t: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut tmp = vec![0u8; 4096];
            match tokio::time::timeout(left, self.sock.read(&mut tmp)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// A Login request of this session's state (ISID, TSIH, CmdSN) carrying `data`.
    pub fn login_pdu(&self, csg: Stage, nsg: Stage, transit: bool, data: Bytes) -> pdu::Request {
        pdu::Request::Login(LoginRequest {
            transit,
            cont: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: self.isid,
            tsih: self.tsih,
            itt: 0x1000,
            cid: 1,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data,
        })
    }

    async fn login_exchange(
        &mut self,
        csg: Stage,
        nsg: Stage,
        transit: bool,
        keys: &TextPairs,
    ) -> Result<pdu::LoginResponse, LoginFailure> {
        let req = self.login_pdu(csg, nsg, transit, keys.to_bytes());
        self.send(&req).await;
        match self.recv().await {
            Some(Response::Login(r)) => {
                if r.status_class != 0 {
                    return Err(LoginFailure {
                        class: r.status_class,
                        detail: r.status_detail,
                    });
                }
                Ok(r)
            }
            Some(other) => panic!("expected a login response, got {other:?}"),
            None => Err(LoginFailure {
                class: 0xff,
                detail: 0xff,
            }),
        }
    }

    /// Full login: security stage (CHAP if asked), operational stage, full feature.
    pub async fn login(&mut self, o: &LoginOpts) -> Result<TextPairs, LoginFailure> {
        if let Some(isid) = o.isid {
            self.isid = isid;
        }
        let mut first = TextPairs::new();
        first.push(
            "InitiatorName",
            o.initiator.clone().unwrap_or_else(|| INITIATOR.to_string()),
        );
        if o.discovery {
            first.push("SessionType", "Discovery");
        } else {
            first.push(
                "TargetName",
                o.target.clone().unwrap_or_else(|| TARGET.to_string()),
            );
        }
        if let Some((user, secret)) = &o.chap {
            first.push("AuthMethod", "CHAP,None");
            let r = self
                .login_exchange(Stage::Security, Stage::Operational, false, &first)
                .await?;
            let keys = TextPairs::parse(&r.data).unwrap();
            assert_eq!(keys.get("AuthMethod"), Some("CHAP"));
            let mut a = TextPairs::new();
            a.push("CHAP_A", "5");
            let r = self
                .login_exchange(Stage::Security, Stage::Operational, false, &a)
                .await?;
            let keys = TextPairs::parse(&r.data).unwrap();
            let id = keys.get("CHAP_I").expect("CHAP_I").to_string();
            let c = keys.get("CHAP_C").expect("CHAP_C").to_string();
            let resp = iscsi_wire::chap::initiator_response(&id, &c, secret.as_bytes()).unwrap();
            let mut n = TextPairs::new();
            n.push("CHAP_N", user.clone());
            n.push("CHAP_R", resp);
            let my_id = 77u8;
            let my_chal = [0x5au8; 16];
            if o.mutual.is_some() {
                n.push("CHAP_I", my_id.to_string());
                n.push("CHAP_C", iscsi_wire::text::encode_binary(&my_chal));
            }
            let r = self
                .login_exchange(Stage::Security, Stage::Operational, true, &n)
                .await?;
            if let Some((tuser, tsecret)) = &o.mutual {
                let keys = TextPairs::parse(&r.data).unwrap();
                assert_eq!(keys.get("CHAP_N"), Some(tuser.as_str()));
                let want = iscsi_wire::chap::chap_md5(my_id, tsecret.as_bytes(), &my_chal);
                let got = iscsi_wire::text::decode_binary(keys.get("CHAP_R").unwrap()).unwrap();
                if got != want {
                    return Err(LoginFailure {
                        class: 0xfe,
                        detail: 0,
                    });
                }
            }
            first = TextPairs::new();
        }
        let mut op = first;
        let digest = if o.digests { "CRC32C" } else { "None" };
        op.push("HeaderDigest", digest);
        op.push("DataDigest", digest);
        if !o.discovery {
            op.push("MaxRecvDataSegmentLength", "262144");
            op.push("ImmediateData", "Yes");
            op.push("InitialR2T", "No");
            op.push("FirstBurstLength", "65536");
            op.push("MaxBurstLength", "262144");
            op.push("MaxOutstandingR2T", "1");
            op.push("ErrorRecoveryLevel", "0");
            op.push("MaxConnections", "1");
        } else {
            op.push("MaxRecvDataSegmentLength", "262144");
        }
        for (k, v) in &o.keys {
            op.push(k.clone(), v.clone());
        }
        let r = self
            .login_exchange(Stage::Operational, Stage::FullFeature, true, &op)
            .await?;
        let keys = TextPairs::parse(&r.data).unwrap();
        assert!(r.transit, "target did not move to full feature phase");
        self.tsih = r.tsih;
        if let Some(v) = keys.get("MaxRecvDataSegmentLength") {
            self.target_mrdsl = v.parse().unwrap();
        }
        if let Some(v) = keys.get("FirstBurstLength") {
            self.first_burst = v.parse().unwrap();
        }
        if let Some(v) = keys.get("ImmediateData") {
            self.immediate_data = v == "Yes";
        }
        if let Some(v) = keys.get("InitialR2T") {
            self.initial_r2t = v == "Yes";
        }
        self.digests = Digests {
            header: keys.get("HeaderDigest") == Some("CRC32C"),
            data: keys.get("DataDigest") == Some("CRC32C"),
        };
        Ok(keys)
    }

    /// Build a SCSI Command PDU (immediate data as allowed), advancing CmdSN.
    pub fn command(&mut self, lun: u16, cdb: &[u8], data_out: &[u8], read_len: u32) -> ScsiCommand {
        let itt = self.itt();
        let imm = if self.immediate_data {
            data_out
                .len()
                .min(self.first_burst as usize)
                .min(self.target_mrdsl as usize)
        } else {
            0
        };
        let cmd = ScsiCommand {
            immediate: false,
            final_bit: self.initial_r2t || imm == data_out.len(),
            read: read_len > 0,
            write: !data_out.is_empty(),
            attr: TaskAttr::Simple,
            lun: iscsi_wire::lun::encode_lun(u64::from(lun)),
            itt,
            edtl: if data_out.is_empty() {
                read_len
            } else {
                data_out.len() as u32
            },
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: pdu::CdbBuf::from_slice(cdb),
            bidi_read_edtl: None,
            data: Bytes::copy_from_slice(&data_out[..imm]),
        };
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        cmd
    }

    /// Run one SCSI command to completion (handles R2T and Data-In).
    pub async fn scsi(
        &mut self,
        lun: u16,
        cdb: &[u8],
        data_out: &[u8],
        read_len: u32,
    ) -> ScsiResult {
        let mut v = self
            .scsi_many(vec![(lun, cdb.to_vec(), data_out.to_vec(), read_len)], 1)
            .await;
        v.pop().unwrap()
    }

    /// Run many commands with up to `depth` outstanding; results in input order.
    pub async fn scsi_many(
        &mut self,
        cmds: Vec<(u16, Vec<u8>, Vec<u8>, u32)>,
        depth: usize,
    ) -> Vec<ScsiResult> {
        use std::collections::HashMap;
        let n = cmds.len();
        let mut results: Vec<Option<ScsiResult>> = vec![None; n];
        let mut by_itt: HashMap<u32, (usize, Vec<u8>, u64)> = HashMap::new();
        let mut next = 0usize;
        let mut done = 0usize;
        while done < n {
            while next < n && by_itt.len() < depth {
                let (lun, cdb, out, rl) = &cmds[next];
                let cmd = self.command(*lun, cdb, out, *rl);
                let itt = cmd.itt;
                let imm = cmd.data.len();
                let lun_raw = cmd.lun;
                self.send(&pdu::Request::ScsiCommand(cmd)).await;
                // Unsolicited Data-Out up to FirstBurstLength when InitialR2T=No.
                if !self.initial_r2t && imm < out.len() {
                    let end = out.len().min(self.first_burst as usize);
                    self.send_data_out(itt, lun_raw, 0xffff_ffff, out, imm, end)
                        .await;
                }
                by_itt.insert(itt, (next, out.clone(), lun_raw));
                results[next] = Some(ScsiResult::default());
                next += 1;
            }
            let r = self.recv().await.expect("target closed the connection");
            match r {
                Response::R2T(r2t) => {
                    let (_, out, lun_raw) =
                        by_itt.get(&r2t.itt).expect("R2T for unknown ITT").clone();
                    let s = r2t.buffer_offset as usize;
                    let e = s + r2t.desired_len as usize;
                    self.send_data_out(r2t.itt, lun_raw, r2t.ttt, &out, s, e)
                        .await;
                }
                Response::DataIn(d, data) => {
                    let idx = by_itt.get(&d.itt).expect("Data-In for unknown ITT").0;
                    let res = results[idx].as_mut().unwrap();
                    let off = d.buffer_offset as usize;
                    if res.data.len() < off + data.len() {
                        res.data.resize(off + data.len(), 0);
                    }
                    res.data[off..off + data.len()].copy_from_slice(&data);
                    if let Some(st) = d.status {
                        res.status = st;
                        res.residual = d.residual;
                        by_itt.remove(&d.itt);
                        done += 1;
                    }
                }
                Response::ScsiResponse(s) => {
                    let (idx, _, _) = by_itt.remove(&s.itt).expect("response for unknown ITT");
                    let res = results[idx].as_mut().unwrap();
                    res.status = s.status;
                    res.sense = s.sense;
                    res.residual = s.residual;
                    done += 1;
                }
                Response::NopIn(n) => {
                    if n.ttt != 0xffff_ffff {
                        self.nop_reply(n.ttt, n.lun).await;
                    }
                }
                other => panic!("unexpected PDU during SCSI command: {other:?}"),
            }
        }
        results.into_iter().map(|r| r.unwrap()).collect()
    }

    async fn send_data_out(
        &mut self,
        itt: u32,
        lun: u64,
        ttt: u32,
        out: &[u8],
        start: usize,
        end: usize,
    ) {
        let mut off = start;
        let mut data_sn = 0;
        let mut buf = BytesMut::new();
        while off < end {
            let n = (end - off).min(self.target_mrdsl as usize);
            pdu::Request::DataOut(DataOut {
                final_bit: off + n == end,
                lun,
                itt,
                ttt,
                exp_stat_sn: self.exp_stat_sn,
                data_sn,
                buffer_offset: off as u32,
                data: Bytes::copy_from_slice(&out[off..off + n]),
            })
            .encode(&mut buf, self.digests);
            data_sn += 1;
            off += n;
        }
        self.send_raw(&buf).await;
    }

    /// Answer a target ping.
    pub async fn nop_reply(&mut self, ttt: u32, lun: u64) {
        let req = pdu::Request::NopOut(pdu::NopOut {
            immediate: true,
            lun,
            itt: 0xffff_ffff,
            ttt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data: Bytes::new(),
        });
        self.send(&req).await;
    }

    pub async fn logout(&mut self) -> Option<Response> {
        let itt = self.itt();
        let req = pdu::Request::Logout(LogoutRequest {
            immediate: true,
            reason: LogoutReason::CloseSession,
            itt,
            cid: 1,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        });
        self.send(&req).await;
        self.recv().await
    }

    pub async fn write10(&mut self, lun: u16, lba: u32, data: &[u8], bs: usize) -> ScsiResult {
        let cdb = cdb10(0x2a, lba, (data.len() / bs) as u16);
        self.scsi(lun, &cdb, data, 0).await
    }

    pub async fn read10(&mut self, lun: u16, lba: u32, blocks: u16, bs: usize) -> ScsiResult {
        let cdb = cdb10(0x28, lba, blocks);
        self.scsi(lun, &cdb, &[], u32::from(blocks) * bs as u32)
            .await
    }

    /// TEST UNIT READY until it stops reporting unit attentions.
    pub async fn clear_ua(&mut self, lun: u16) {
        for _ in 0..8 {
            let r = self.scsi(lun, &[0u8; 6], &[], 0).await;
            if r.status == 0 {
                return;
            }
        }
        panic!("unit attention did not clear");
    }
}

/// A 10-byte CDB with an LBA and a transfer length.
pub fn cdb10(op: u8, lba: u32, len: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

/// A 16-byte CDB with an LBA and a transfer length.
pub fn cdb16(op: u8, lba: u64, len: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&len.to_be_bytes());
    c
}

fn stat_sn_of(r: &Response) -> Option<u32> {
    match r {
        Response::ScsiResponse(p) => Some(p.stat_sn),
        Response::DataIn(d, _) if d.status.is_some() => Some(d.stat_sn),
        Response::NopIn(p) if p.itt != 0xffff_ffff => Some(p.stat_sn),
        Response::TaskMgmt(p) => Some(p.stat_sn),
        Response::Login(p) => Some(p.stat_sn),
        Response::Text(p) => Some(p.stat_sn),
        Response::Logout(p) => Some(p.stat_sn),
        Response::Reject(p) => Some(p.stat_sn),
        _ => None,
    }
}

/// A deterministic pattern for block `lba` written by `writer`.
pub fn pattern(writer: u32, lba: u64, bs: usize) -> Vec<u8> {
    let mut v = vec![0u8; bs];
    for (i, b) in v.iter_mut().enumerate() {
        let x = (lba.wrapping_mul(2654435761) ^ u64::from(writer) << 40 ^ i as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        *b = (x >> 56) as u8;
    }
    v
}

/// Path of the `switchyard` binary built by `cargo build` (the test command builds it).
pub fn switchyard_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let p = target.join(profile).join("switchyard");
    assert!(
        p.exists(),
        "{} not found: run `cargo build -p switchyard` first",
        p.display()
    );
    p
}

/// Wait (up to 20 s) until something listens on 127.0.0.1:`port`.
pub async fn wait_port(port: u16) {
    for _ in 0..400 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listening on 127.0.0.1:{port}");
}

/// A `switchyard serve` process; killed (SIGKILL) when dropped, unless stopped.
pub struct NodeProcess(pub std::process::Child);

impl NodeProcess {
    /// Start `switchyard serve --config CFG`, its log (stderr) appended to `log` if given.
    pub fn spawn(cfg: &std::path::Path, log: Option<&std::path::Path>) -> NodeProcess {
        NodeProcess::spawn_with_env(cfg, log, &[])
    }

    /// [`NodeProcess::spawn`] with extra environment variables (they override the
    /// default `RUST_LOG=warn`).
    pub fn spawn_with_env(
        cfg: &std::path::Path,
        log: Option<&std::path::Path>,
        env: &[(&str, &str)],
    ) -> NodeProcess {
        use std::process::{Command, Stdio};
        let stderr = match log {
            Some(p) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .expect("node log file"),
            ),
            None => Stdio::inherit(),
        };
        let child = Command::new(switchyard_bin())
            .args(["serve", "--config"])
            .arg(cfg)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start switchyard");
        NodeProcess(child)
    }

    /// SIGTERM, then wait: the node finishes in-flight commands, flushes and exits 0.
    pub fn stop(mut self) {
        let pid = self.0.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = self.0.wait().unwrap();
        assert!(status.success(), "node exited with {status}");
    }

    /// SIGKILL, then wait.
    pub fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
