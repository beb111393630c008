//! The logic of switchyard's fuzz targets, one function per target.
//!
//! Each `fuzz_targets/<name>.rs` is a one-line `fuzz_target!` calling the function of the
//! same name here, and `tests/fuzz_smoke.rs` calls the same functions in the normal test
//! suite on a bounded, seeded set of inputs. Every function takes arbitrary bytes, must
//! never panic, and checks cheap properties with `assert!` (a failed assertion is a crash
//! the fuzzer reports like any other panic).

use std::sync::Arc;

use blockdev::{BlockStore, MemStore};
use bytes::BytesMut;
use fcwwn::{InitiatorId, IscsiName, Masking, Wwn};
use iscsi_wire::chap::{ChapChallenge, ChapSecrets, ChapServer};
use iscsi_wire::digest::Digests;
use iscsi_wire::negotiate::{Negotiator, TargetPolicy};
use iscsi_wire::pdu::{self, PduError, Stage};
use iscsi_wire::text::{self, TextBuffer, TextPairs};
use scsi::{DataDirection, LogicalUnit, LuConfig, LunMap, Nexus, Status, TargetInfo};

pub mod seeds;

/// The fuzz targets, by their names in `fuzz_targets/`.
pub const TARGETS: [&str; 8] = [
    "pdu",
    "frame",
    "text_negotiate",
    "cdb",
    "scsi_execute",
    "names",
    "admin_input",
    "session",
];

/// Runs the target named `target` on one input.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "pdu" => pdu(data),
        "frame" => frame(data),
        "text_negotiate" => text_negotiate(data),
        "cdb" => cdb(data),
        "scsi_execute" => scsi_execute(data),
        "names" => names(data),
        "admin_input" => admin_input(data),
        "session" => session(data),
        other => panic!("no fuzz target named {other}"),
    }
}

/// `admin_input`: what admins and peers send a node that is not iSCSI — a mapping
/// table and a `[cluster]` section in TOML, the management API's JSON bodies, and
/// replicated cluster commands (JSON lines) applied in order to a cluster state.
///
/// Properties: nothing panics; a table that validates survives TOML and diff/apply
/// round trips; the cluster state machine never panics on any command sequence, its
/// epoch never goes down, and a refused command leaves the state unchanged.
pub fn admin_input(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(t) = volume::MappingTable::from_toml(text) {
            if t.validate().is_ok() {
                let again = volume::MappingTable::from_toml(&t.to_toml())
                    .unwrap_or_else(|e| panic!("a valid table does not round-trip: {e}"));
                assert_eq!(again.normalized(), t.normalized(), "TOML round trip");
                let empty = volume::MappingTable::new(t.epoch);
                let cs = volume::MappingTable::diff(&empty, &t);
                if let Ok(applied) = empty.apply(&cs) {
                    assert_eq!(
                        applied.normalized().volumes,
                        t.normalized().volumes,
                        "diff/apply round trip"
                    );
                }
            }
            let _ = t.to_string();
        }
        if let Ok(c) = toml::from_str::<cluster::ClusterConfig>(text) {
            let _ = c.validate();
        }
        // `config import` and `zoning set` files.
        if let Ok(d) = toml::from_str::<mgmt::model::ConfigDoc>(text) {
            let _ = toml::to_string(&d);
        }
        let _ = toml::from_str::<fcwwn::Masking>(text);
    }
    let _ = serde_json::from_slice::<mgmt::model::CreateVolumeRequest>(data);
    let _ = serde_json::from_slice::<mgmt::model::ZoningRequest>(data);
    let _ = serde_json::from_slice::<mgmt::model::AddBackendRequest>(data);
    let _ = serde_json::from_slice::<mgmt::model::ExportView>(data);
    let _ = serde_json::from_slice::<mgmt::model::RemapRequest>(data);
    let _ = serde_json::from_slice::<mgmt::model::NodeStateRequest>(data);
    let _ = serde_json::from_slice::<mgmt::model::MigrateRequest>(data);
    let _ = serde_json::from_slice::<mgmt::model::FaultRequest>(data);
    let mut st = cluster::ClusterState::default();
    for line in data.split(|b| *b == b'\n') {
        let Ok(cmd) = serde_json::from_slice::<cluster::Command>(line) else {
            continue;
        };
        let before = st.clone();
        match st.apply(&cmd) {
            cluster::Outcome::Refused(_) => {
                let mut b = before.clone();
                b.applied_index = st.applied_index;
                assert_eq!(st, b, "a refused command changed the state: {cmd:?}");
            }
            _ => assert!(st.table.epoch >= before.table.epoch, "the epoch went down"),
        }
    }
}

/// `pdu`: a whole request (and response) PDU in one buffer, without digests.
///
/// Properties: whatever parses re-encodes to bytes that parse back to the same value
/// (up to NSG in Login PDUs with T=0: reserved there, kept by the parser, written as 0 by
/// the encoder), and re-encoding that value gives the same bytes.
pub fn pdu(data: &[u8]) {
    if let Ok(req) = pdu::parse_request_bytes(data) {
        let _ = (req.opcode(), req.itt(), req.immediate(), req.cmd_sn());
        let _ = req.exp_stat_sn();
        let mut out = BytesMut::new();
        req.encode(&mut out, Digests::NONE);
        let again = pdu::parse_request_bytes(&out)
            .unwrap_or_else(|e| panic!("re-encoded {req:?} does not parse: {e}"));
        assert_eq!(again, canonical_request(req), "request round trip");
        let mut out2 = BytesMut::new();
        again.encode(&mut out2, Digests::NONE);
        assert_eq!(out, out2, "request encoding is not stable");
    }
    if let Ok(resp) = pdu::parse_response_bytes(data) {
        let mut out = BytesMut::new();
        resp.encode(&mut out, Digests::NONE);
        let again = pdu::parse_response_bytes(&out)
            .unwrap_or_else(|e| panic!("re-encoded {resp:?} does not parse: {e}"));
        assert_eq!(again, canonical_response(resp), "response round trip");
        let mut out2 = BytesMut::new();
        again.encode(&mut out2, Digests::NONE);
        assert_eq!(out, out2, "response encoding is not stable");
    }
}

/// NSG is reserved when T=0 (RFC 7143 §11.12.3): the encoder writes 0 (Security).
fn canonical_request(mut req: pdu::Request) -> pdu::Request {
    if let pdu::Request::Login(l) = &mut req {
        if !l.transit {
            l.nsg = Stage::Security;
        }
    }
    req
}

fn canonical_response(mut resp: pdu::Response) -> pdu::Response {
    if let pdu::Response::Login(l) = &mut resp {
        if !l.transit {
            l.nsg = Stage::Security;
        }
    }
    resp
}

/// `frame`: the stream framer. Byte 0 picks the digests, MaxRecvDataSegmentLength and a
/// chunk size; the rest is the byte stream, decoded once whole and once fed in chunks.
///
/// Properties: a frame is consumed only whole (never more than the buffer, exactly its
/// `frame_len`), "read more" consumes nothing, no data segment exceeds `max_data`, and
/// chunked feeding yields the same PDUs as one buffer.
pub fn frame(data: &[u8]) {
    let Some((&cfg, stream)) = data.split_first() else {
        return;
    };
    let digests = Digests {
        header: cfg & 1 != 0,
        data: cfg & 2 != 0,
    };
    let max_data = [8192, 512, 262_144, 1 << 24][usize::from((cfg >> 2) & 3)];
    let chunk = [1, 7, 48, 4096][usize::from((cfg >> 4) & 3)];

    let whole = decode_all(stream, digests, max_data, stream.len().max(1));
    let chunked = decode_all(stream, digests, max_data, chunk);
    assert_eq!(
        whole, chunked,
        "chunked framing differs from whole-buffer framing"
    );
}

/// One decoded frame, or the error that stopped the stream.
#[derive(Debug, PartialEq, Eq)]
enum Framed {
    Pdu(pdu::RawPdu),
    DataDigest(u32),
    Fatal(String),
}

fn decode_all(stream: &[u8], digests: Digests, max_data: u32, chunk: usize) -> Vec<Framed> {
    let mut out = Vec::new();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    loop {
        let before = buf.len();
        match pdu::decode_frame(&mut buf, digests, max_data) {
            Ok(Some(raw)) => {
                let consumed = before - buf.len();
                assert!(consumed > 0 && consumed <= before);
                assert_eq!(consumed, raw.bhs.frame_len(digests.header, digests.data));
                assert_eq!(raw.ahs.len(), raw.bhs.total_ahs_len());
                assert_eq!(raw.data.len(), raw.bhs.data_segment_len() as usize);
                assert!(raw.data.len() <= max_data as usize);
                let _ = raw.parse_request();
                let _ = raw.parse_response();
                out.push(Framed::Pdu(raw));
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "`read more` consumed bytes");
                if fed == stream.len() {
                    break;
                }
                let n = chunk.min(stream.len() - fed);
                buf.extend_from_slice(&stream[fed..fed + n]);
                fed += n;
            }
            Err(PduError::DataDigest { bhs }) => {
                // Consumed (the connection goes on after a Reject).
                let consumed = before - buf.len();
                assert_eq!(consumed, bhs.frame_len(digests.header, digests.data));
                out.push(Framed::DataDigest(bhs.itt()));
            }
            Err(e) => {
                out.push(Framed::Fatal(e.to_string()));
                break;
            }
        }
    }
    out
}

/// `text_negotiate`: login/text key=value data through the negotiation engine and CHAP.
/// Byte 0 picks the negotiator's mode; the rest is split at 0xFF (never valid UTF-8) into
/// the data segments of successive login/text requests.
///
/// Properties: parsed pairs re-encode to the same pairs; the target's answers are
/// themselves valid text data.
pub fn text_negotiate(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut neg = if mode & 1 != 0 {
        Negotiator::new_secondary(TargetPolicy::default())
    } else {
        Negotiator::new(TargetPolicy::default())
    };
    let challenge = ChapChallenge {
        id: 7,
        challenge: (0u8..16).collect(),
    };
    let mut chap: Option<ChapServer> = None;
    let mut buffer = TextBuffer::default();
    for (step, segment) in rest.split(|&b| b == 0xFF).enumerate() {
        // The same bytes collected over several PDUs with the C bit.
        let mut collected = None;
        let pieces = text::chunks(&bytes::Bytes::copy_from_slice(segment), 5);
        for (i, piece) in pieces.iter().enumerate() {
            collected = Some(buffer.push(piece, i + 1 < pieces.len()));
        }
        let parsed = TextPairs::parse(segment);
        if segment.len() <= text::DEFAULT_SEQUENCE_LIMIT {
            let buffered = collected.expect("chunks yields at least one piece");
            assert_eq!(
                buffered.map(|p| p.expect("last piece completes the sequence")),
                parsed,
                "text collected over several PDUs parses differently"
            );
        }
        let Ok(pairs) = parsed else {
            continue;
        };
        let again = TextPairs::parse(&pairs.to_bytes()).expect("re-encoded pairs parse");
        assert_eq!(again, pairs, "text round trip");

        match neg.process(&pairs) {
            Ok(answer) => {
                let bytes = answer.to_bytes();
                if let Err(e) = TextPairs::parse(&bytes) {
                    panic!("target answer {answer:?} is not valid text data: {e}");
                }
            }
            Err(e) => {
                let _ = e.login_status();
            }
        }
        if let Some(a) = pairs.get("CHAP_A") {
            chap = ChapServer::start_with(a, challenge.clone())
                .ok()
                .map(|(s, _)| s);
        } else if let Some(server) = &chap {
            let _ = server.finish(&pairs, |_name| {
                Some(ChapSecrets {
                    initiator_secret: b"initiator-secret".to_vec(),
                    target: (mode & 8 != 0).then(|| ("target".into(), b"tsecret12345".to_vec())),
                })
            });
        }
        if mode & 2 != 0 && step == 1 {
            neg.start_full_feature();
        }
        if mode & 4 != 0 {
            neg.new_sequence();
        }
    }
    let _ = neg.is_settled();
    let offers = neg.target_offers();
    TextPairs::parse(&offers.to_bytes()).expect("target offers are valid text data");
    let _ = neg.final_declarations(mode & 16 != 0);
    let _ = neg.params().digests();
}

/// `cdb`: the CDB parser.
///
/// Properties: bytes past the opcode's CDB length do not change the result; a field
/// pointer never points past the opcode's CDB; sense data encodes.
pub fn cdb(data: &[u8]) {
    match scsi::parse_cdb(data) {
        Ok(cdb) => {
            let _ = (cdb.data_out_len(512), cdb.data_out_len(4096));
            let mut longer = data.to_vec();
            longer.extend_from_slice(&[0xA5; 20]);
            assert_eq!(
                scsi::parse_cdb(&longer),
                Ok(cdb),
                "trailing bytes changed the parse"
            );
        }
        Err(sense) => {
            let _ = (sense.fixed(), sense.descriptor(), sense.to_string());
            if let (Some(f), Ok(info)) = (sense.field, scsi::commands::find(data)) {
                assert!(f.cdb);
                assert!(
                    usize::from(f.byte) <= info.cdb_len(),
                    "field pointer {f:?} past a {}-byte CDB",
                    info.cdb_len()
                );
            }
        }
    }
}

/// LUN 0: 1 MiB of 512-byte blocks; LUN 1: read-only, 4096-byte blocks; LUN 7: absent.
const LUNS: [u64; 4] = [0, 1, 7, 0];

fn build_map() -> LunMap {
    let target = Arc::new(TargetInfo {
        name: "iqn.2026-11.org.switchyard:fuzz".into(),
        port_name: "iqn.2026-11.org.switchyard:fuzz,t,0x0001".into(),
    });
    let mut map = LunMap::new(target);
    let stores: [(Arc<dyn BlockStore>, bool); 2] = [
        (Arc::new(MemStore::new(512, 2048)), false),
        (Arc::new(MemStore::new(4096, 64)), true),
    ];
    for (i, (store, read_only)) in stores.into_iter().enumerate() {
        let mut wwn = [0u8; 16];
        wwn[0] = 0x60;
        wwn[15] = i as u8 + 1;
        let cfg = LuConfig {
            wwn,
            naa_len: if i == 0 { 16 } else { 8 },
            serial: format!("FUZZ{i}"),
            product: "FUZZ".into(),
            read_only,
            ..LuConfig::default()
        };
        map.insert(i as u64, Arc::new(LogicalUnit::new(cfg, store)));
    }
    map
}

fn be(cdb: &[u8], at: usize, n: usize) -> Option<u64> {
    let b = cdb.get(at..at + n)?;
    Some(b.iter().fold(0u64, |acc, &x| acc << 8 | u64::from(x)))
}

/// The most data-in a command may return, from the raw CDB bytes (independently of the
/// parser): the allocation length, the transfer length, none for commands the command
/// table does not list as data-in, and no bound (`None`) for other data-in commands.
fn max_data_in(cdb: &[u8], block_size: u64) -> Option<u64> {
    let blocks = |at, n| be(cdb, at, n).map(|b| b * block_size);
    let bound = match *cdb.first()? {
        0x03 | 0x1A => be(cdb, 4, 1),
        0x12 => be(cdb, 3, 2),
        0x5A | 0x5E => be(cdb, 7, 2),
        0xA0 | 0xA3 => be(cdb, 6, 4),
        0x9E => be(cdb, 10, 4),
        0x25 => Some(8),
        0x08 => be(cdb, 4, 1).map(|b| if b == 0 { 256 } else { b } * block_size),
        0x28 => blocks(7, 2),
        0xA8 => blocks(6, 4),
        0x88 => blocks(10, 4),
        _ => None,
    };
    bound.or_else(|| match scsi::commands::find(cdb) {
        Ok(info) if info.direction != DataDirection::In => Some(0),
        // Unknown opcodes fail; a data-in command not listed above: no bound known here.
        Err(_) => Some(0),
        Ok(_) => None,
    })
}

/// `scsi_execute`: whole commands through `LunMap::execute` over RAM-backed LUs. The
/// input is a sequence of commands: a header byte (LUN, nexus, action), a CDB length
/// byte, the CDB, a 2-byte little-endian data-out length and the data-out.
///
/// Properties: CHECK CONDITION exactly when there is sense data; data-in only on GOOD and
/// never more than the CDB's allocation or transfer length allows.
pub fn scsi_execute(data: &[u8]) {
    scsi_execute_trace(data);
}

/// What [`scsi_execute`] ran: per command, the CDB and the response (for tests that
/// check the seeds reach the commands they name).
pub fn scsi_execute_trace(data: &[u8]) -> Vec<(Vec<u8>, scsi::Response)> {
    let mut trace = Vec::new();
    let map = build_map();
    let nexuses = [
        Nexus {
            id: 1,
            initiator: "iqn.2026-11.org.switchyard:a,i,0x00023d000001".into(),
            relative_port: 1,
            port_group: 1,
        },
        Nexus {
            id: 2,
            initiator: "iqn.2026-11.org.switchyard:b,i,0x00023d000002".into(),
            relative_port: 2,
            port_group: 1,
        },
    ];
    let mut rest = data;
    let mut take = |n: usize| {
        let n = n.min(rest.len());
        let (a, b) = rest.split_at(n);
        rest = b;
        a
    };
    for _ in 0..32 {
        let Some(&header) = take(1).first() else {
            break;
        };
        let lun = LUNS[usize::from(header & 3)];
        let nexus = &nexuses[usize::from((header >> 2) & 1)];
        match header >> 5 {
            6 => {
                let _ = map.lun_reset(lun, nexus);
                continue;
            }
            7 if header & 0x10 != 0 => {
                map.nexus_gone(nexus);
                continue;
            }
            7 => {
                map.target_reset(nexus);
                continue;
            }
            _ => {}
        }
        let cdb_len = 6 + usize::from(take(1).first().copied().unwrap_or(0) % 27);
        let cdb = take(cdb_len).to_vec();
        let dlen = take(2);
        let dlen = match dlen {
            [a, b] => usize::from(u16::from_le_bytes([*a, *b])),
            [a] => usize::from(*a),
            _ => 0,
        };
        let data_out = take(dlen).to_vec();
        let req = scsi::Request {
            lun,
            cdb: &cdb,
            data_out: &data_out,
            data_in_len: u32::from(header & 0x08 != 0) * 65536,
            nexus,
        };
        let resp = map.execute(&req);
        assert_eq!(
            resp.status == Status::CheckCondition,
            resp.sense.is_some(),
            "sense data without CHECK CONDITION or the reverse: {resp:?}"
        );
        let _ = resp.sense_bytes();
        if resp.status != Status::Good {
            assert!(resp.data_in.is_empty(), "data-in with {:?}", resp.status);
        }
        let block_size = map
            .get(lun)
            .map_or(512, |lu| u64::from(lu.store().block_size()));
        if let Some(max) = max_data_in(&cdb, block_size) {
            assert!(
                resp.data_in.len() as u64 <= max,
                "CDB {cdb:02x?} allows {max} bytes of data-in, got {}",
                resp.data_in.len()
            );
        }
        trace.push((cdb, resp));
    }
    trace
}

/// `names`: WWNs, iSCSI names, initiator ids and the TOML LUN masking config.
///
/// Properties: what parses prints back to a string that parses to the same value, and a
/// masking config serialises back to TOML that deserialises to the same config.
pub fn names(data: &[u8]) {
    if let Ok(w) = Wwn::try_from(data) {
        assert_eq!(Wwn::try_from(w.as_bytes()), Ok(w));
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(w) = s.parse::<Wwn>() {
        assert_eq!(
            w.to_string().parse::<Wwn>(),
            Ok(w),
            "Wwn display round trip"
        );
        assert_eq!(w.to_colon().parse::<Wwn>(), Ok(w), "Wwn colon round trip");
        let _ = (w.naa(), w.oui(), w.extension(), w.as_u64(), w.to_hex());
        let _ = IscsiName::from_wwn(&w);
    }
    if let Ok(n) = IscsiName::parse(s) {
        assert_eq!(
            IscsiName::parse(n.as_str()).as_ref(),
            Ok(&n),
            "name round trip"
        );
        let _ = (n.kind(), n.iqn_date(), n.naming_authority(), n.iqn_unique());
        let _ = (n.eui64(), n.naa());
    }
    if let Ok(id) = s.parse::<InitiatorId>() {
        assert_eq!(id.to_string().parse::<InitiatorId>().as_ref(), Ok(&id));
    }
    if let Ok(m) = toml::from_str::<Masking>(s) {
        let text = toml::to_string(&m).expect("a masking config serialises");
        let back: Masking = toml::from_str(&text)
            .unwrap_or_else(|e| panic!("re-serialised masking does not parse: {e}\n{text}"));
        assert_eq!(back, m, "masking round trip");
    }
}

/// A target on loopback with one 1 MiB in-memory LU, served by the real iSCSI fabric
/// (`iscsi::Server`) on its own runtime, shared by every `session` input; panics
/// anywhere in the process are counted.
struct SessionHarness {
    rt: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    panics: Arc<std::sync::atomic::AtomicU64>,
    inputs: std::sync::atomic::AtomicU64,
}

const FUZZ_TARGET: &str = "iqn.2026-11.org.switchyard:fuzz";

fn session_harness() -> &'static SessionHarness {
    static H: std::sync::OnceLock<SessionHarness> = std::sync::OnceLock::new();
    H.get_or_init(|| {
        let panics = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let p = panics.clone();
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            p.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            default(info);
        }));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let addr = rt.block_on(async {
            let info = Arc::new(TargetInfo {
                name: FUZZ_TARGET.into(),
                port_name: format!("{FUZZ_TARGET},t,0x0001"),
            });
            let lu = LogicalUnit::new(
                LuConfig::default(),
                Arc::new(MemStore::new(512, 2048)) as Arc<dyn BlockStore>,
            );
            let target = iscsi::TargetDef {
                name: FUZZ_TARGET.into(),
                alias: None,
                luns: vec![iscsi::LunDef {
                    lun: 0,
                    lu: Arc::new(lu),
                }],
                masking: Arc::new(Masking::default()),
                chap: None,
                info,
            };
            let server = iscsi::Server::new(
                iscsi::FabricConfig {
                    nop_interval: std::time::Duration::from_secs(5),
                    nop_timeout: std::time::Duration::from_secs(5),
                    login_timeout: std::time::Duration::from_secs(5),
                    ..iscsi::FabricConfig::default()
                },
                vec![target],
                vec![iscsi::PortalDef {
                    addr: "127.0.0.1:0".parse().expect("addr"),
                    tpgt: 1,
                    relative_port: 0,
                }],
            );
            let listeners = server.bind().await.expect("bind");
            let addr = listeners[0].local_addr().expect("addr");
            let shutdown = tokio_util::sync::CancellationToken::new();
            tokio::spawn(async move { server.run(listeners, shutdown).await });
            addr
        });
        SessionHarness {
            rt,
            addr,
            panics,
            inputs: std::sync::atomic::AtomicU64::new(0),
        }
    })
}

/// The login that opens every `session` input (leading login straight to full feature
/// phase, no authentication).
pub fn session_login() -> Vec<u8> {
    let mut out = BytesMut::new();
    seeds::plain_login().encode(&mut out, Digests::NONE);
    out.to_vec()
}

/// `session`: a whole connection from fuzzed bytes — a valid login, then the input as
/// the rest of the byte stream (PDUs, Data-Out, garbage), against the real target on
/// loopback; the connection is then half-closed and read until the target closes it.
///
/// Properties: nothing in the target panics (any thread), and after every 16th input a
/// fresh session logs in and gets GOOD for TEST UNIT READY (the target still serves
/// others).
pub fn session(data: &[u8]) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = session_harness();
    let before = h.panics.load(Ordering::SeqCst);
    h.rt.block_on(async {
        let Ok(mut sock) = tokio::net::TcpStream::connect(h.addr).await else {
            panic!("the target stopped accepting connections");
        };
        let _ = sock.set_nodelay(true);
        let mut bytes = session_login();
        bytes.extend_from_slice(data);
        let _ = sock.write_all(&bytes).await;
        let _ = sock.shutdown().await;
        let mut buf = vec![0u8; 1 << 16];
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            if n == 0 {
                break;
            }
        }
    });
    assert_eq!(
        h.panics.load(Ordering::SeqCst),
        before,
        "the target panicked on this input"
    );
    if h.inputs.fetch_add(1, Ordering::SeqCst) % 16 == 15 {
        assert!(
            h.rt.block_on(probe(h.addr)),
            "a fresh session is not served"
        );
    }
}

/// Log in and send TEST UNIT READY; true when it answers GOOD (a unit attention
/// first is fine).
async fn probe(addr: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut sock) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    // Another initiator than the fuzzed connections use: it must be served whatever
    // they left behind.
    let mut out = BytesMut::new();
    let mut login = seeds::plain_login();
    if let pdu::Request::Login(l) = &mut login {
        l.isid = [0x40, 0, 0x02, 0x38, 0, 2];
        l.data = bytes::Bytes::from(
            String::from_utf8_lossy(&l.data)
                .replace("redhat:host1", "redhat:probe")
                .into_bytes(),
        );
    }
    login.encode(&mut out, Digests::NONE);
    for cmd_sn in 1..=2u32 {
        seeds::tur(cmd_sn).encode(&mut out, Digests::NONE);
    }
    if sock.write_all(&out).await.is_err() {
        return false;
    }
    let mut buf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut goods = 0;
    let mut answers = 0;
    loop {
        while let Ok(Some(raw)) = pdu::decode_frame(&mut buf, Digests::NONE, 1 << 20) {
            if let Ok(pdu::Response::ScsiResponse(r)) = raw.parse_response() {
                answers += 1;
                if r.status == 0 {
                    goods += 1;
                }
            }
        }
        if answers == 2 {
            return goods >= 1;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, sock.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return false,
        }
    }
}
