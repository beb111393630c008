//! Valid inputs for each target, built with the crates' own encoders: the starting corpus
//! for `cargo fuzz` (see `examples/seed_corpus.rs`) and the inputs the smoke test
//! truncates and bit-flips.

use bytes::{Bytes, BytesMut};
use iscsi_wire::digest::Digests;
use iscsi_wire::pdu::{
    self, CdbBuf, DataIn, DataOut, LoginRequest, LoginResponse, LogoutReason, LogoutRequest, NopIn,
    NopOut, Residual, ScsiCommand, ScsiResponse, SnackRequest, SnackType, Stage, TaskAttr,
    TaskMgmtRequest, TextRequest, TmFunction, R2T,
};

/// The seeds of a target (by its name in `fuzz_targets/`).
pub fn for_target(target: &str) -> Vec<Vec<u8>> {
    match target {
        "pdu" => pdus(),
        "frame" => frames(),
        "text_negotiate" => texts(),
        "cdb" => cdbs(),
        "scsi_execute" => scsi_sequences(),
        "names" => names().into_iter().map(|s| s.as_bytes().to_vec()).collect(),
        "admin_input" => admin_inputs(),
        "session" => sessions(),
        other => panic!("no fuzz target named {other}"),
    }
}

fn login_keys() -> Bytes {
    Bytes::from_static(
        b"InitiatorName=iqn.1994-05.com.redhat:host1\0SessionType=Normal\0\
          TargetName=iqn.2026-11.org.switchyard:fuzz\0AuthMethod=None\0\
          HeaderDigest=CRC32C,None\0DataDigest=CRC32C,None\0\
          MaxRecvDataSegmentLength=262144\0",
    )
}

fn command(cdb: &[u8], edtl: u32, read: bool, write: bool, data: &[u8]) -> pdu::Request {
    pdu::Request::ScsiCommand(ScsiCommand {
        immediate: false,
        final_bit: true,
        read,
        write,
        attr: TaskAttr::Simple,
        lun: 0x0001_0000_0000_0000,
        itt: 0x10,
        edtl,
        cmd_sn: 3,
        exp_stat_sn: 2,
        cdb: CdbBuf::from_slice(cdb),
        bidi_read_edtl: None,
        data: Bytes::copy_from_slice(data),
    })
}

/// Request PDUs of every opcode (with and without AHS and data).
pub fn requests() -> Vec<pdu::Request> {
    let mut big_cdb = vec![0x7F, 0, 0, 0, 0, 0, 0, 0x18, 0x00, 0x0B];
    big_cdb.resize(32, 0);
    let mut bidi = command(&[0x53, 0, 0, 0, 0, 0, 0, 0, 1, 0], 512, true, true, &[]);
    if let pdu::Request::ScsiCommand(c) = &mut bidi {
        c.bidi_read_edtl = Some(512);
    }
    vec![
        pdu::Request::Login(LoginRequest {
            transit: true,
            cont: false,
            csg: Stage::Operational,
            nsg: Stage::FullFeature,
            version_max: 0,
            version_min: 0,
            isid: [0x40, 0, 0x01, 0x37, 0, 0],
            tsih: 0,
            itt: 1,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
            data: login_keys(),
        }),
        command(
            &[0x28, 0, 0, 0, 0, 0x10, 0, 0, 8, 0],
            4096,
            true,
            false,
            &[],
        ),
        command(
            &[0x2A, 0, 0, 0, 0, 0x10, 0, 0, 1, 0],
            512,
            false,
            true,
            &[0x5A; 100],
        ),
        command(&big_cdb, 0, false, false, &[]),
        bidi,
        pdu::Request::TaskMgmt(TaskMgmtRequest {
            immediate: true,
            function: TmFunction::AbortTask,
            lun: 0,
            itt: 0x20,
            rtt: 0x10,
            cmd_sn: 4,
            exp_stat_sn: 2,
            ref_cmd_sn: 3,
            exp_data_sn: 0,
        }),
        pdu::Request::Text(TextRequest {
            immediate: true,
            final_bit: true,
            cont: false,
            lun: 0,
            itt: 0x30,
            ttt: pdu::RESERVED_TAG,
            cmd_sn: 5,
            exp_stat_sn: 3,
            data: Bytes::from_static(b"SendTargets=All\0"),
        }),
        pdu::Request::DataOut(DataOut {
            final_bit: true,
            lun: 0x0001_0000_0000_0000,
            itt: 0x10,
            ttt: 0x99,
            exp_stat_sn: 3,
            data_sn: 0,
            buffer_offset: 100,
            data: Bytes::from_static(&[0xA5; 13]),
        }),
        pdu::Request::Logout(LogoutRequest {
            immediate: true,
            reason: LogoutReason::CloseSession,
            itt: 0x40,
            cid: 0,
            cmd_sn: 6,
            exp_stat_sn: 4,
        }),
        pdu::Request::Snack(SnackRequest {
            snack_type: SnackType::DataR2t,
            lun: 0,
            itt: 0x10,
            ttt: pdu::RESERVED_TAG,
            exp_stat_sn: 4,
            beg_run: 0,
            run_length: 0,
        }),
        pdu::Request::NopOut(NopOut {
            immediate: true,
            lun: 0,
            itt: 0x50,
            ttt: pdu::RESERVED_TAG,
            cmd_sn: 7,
            exp_stat_sn: 5,
            data: Bytes::from_static(b"ping"),
        }),
        pdu::Request::Unknown {
            opcode: 0x1C,
            immediate: false,
            itt: 0x60,
        },
    ]
}

/// Response PDUs (what the initiator side parses).
pub fn responses() -> Vec<pdu::Response> {
    vec![
        pdu::Response::Login(LoginResponse {
            transit: true,
            cont: false,
            csg: Stage::Operational,
            nsg: Stage::FullFeature,
            version_max: 0,
            version_active: 0,
            isid: [0x40, 0, 0x01, 0x37, 0, 0],
            tsih: 1,
            itt: 1,
            stat_sn: 1,
            exp_cmd_sn: 2,
            max_cmd_sn: 33,
            status_class: 0,
            status_detail: 0,
            data: Bytes::from_static(b"HeaderDigest=None\0"),
        }),
        pdu::Response::ScsiResponse(ScsiResponse {
            response: 0,
            status: 2,
            itt: 0x10,
            stat_sn: 2,
            exp_cmd_sn: 3,
            max_cmd_sn: 34,
            residual: Residual::Underflow(512),
            sense: Bytes::from_static(&[0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0]),
            ..ScsiResponse::default()
        }),
        pdu::Response::DataIn(
            DataIn {
                final_bit: true,
                status: Some(0),
                lun: 0x0001_0000_0000_0000,
                itt: 0x10,
                ttt: pdu::RESERVED_TAG,
                stat_sn: 3,
                exp_cmd_sn: 4,
                max_cmd_sn: 35,
                residual: Residual::Overflow(7),
                ..DataIn::default()
            },
            Bytes::from_static(&[0x3C; 37]),
        ),
        pdu::Response::R2T(R2T {
            lun: 0x0001_0000_0000_0000,
            itt: 0x10,
            ttt: 0x99,
            stat_sn: 4,
            exp_cmd_sn: 4,
            max_cmd_sn: 35,
            r2t_sn: 0,
            buffer_offset: 512,
            desired_len: 8192,
        }),
        pdu::Response::NopIn(NopIn {
            itt: 0x50,
            ttt: pdu::RESERVED_TAG,
            data: Bytes::from_static(b"pong"),
            ..NopIn::default()
        }),
    ]
}

fn encode_req(r: &pdu::Request, digests: Digests) -> Vec<u8> {
    let mut out = BytesMut::new();
    r.encode(&mut out, digests);
    out.to_vec()
}

fn encode_resp(r: &pdu::Response, digests: Digests) -> Vec<u8> {
    let mut out = BytesMut::new();
    r.encode(&mut out, digests);
    out.to_vec()
}

fn pdus() -> Vec<Vec<u8>> {
    let reqs = requests()
        .into_iter()
        .map(|r| encode_req(&r, Digests::NONE));
    let resps = responses()
        .into_iter()
        .map(|r| encode_resp(&r, Digests::NONE));
    reqs.chain(resps).collect()
}

/// A byte stream of several PDUs with digests on or off, after the config byte of the
/// `frame` target (bits 0-1 digests, 2-3 MaxRecvDataSegmentLength 8192, 4-5 chunking).
fn frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (cfg, digests) in [
        (0x00, Digests::NONE),
        (0x03, Digests::BOTH),
        (
            0x11,
            Digests {
                header: true,
                data: false,
            },
        ),
        (
            0x22,
            Digests {
                header: false,
                data: true,
            },
        ),
    ] {
        let mut stream = vec![cfg];
        for r in requests() {
            stream.extend(encode_req(&r, digests));
        }
        out.push(stream);
        let mut stream = vec![cfg | 0x30];
        for r in responses() {
            stream.extend(encode_resp(&r, digests));
        }
        out.push(stream);
    }
    out
}

/// Login/text sequences for `text_negotiate` (mode byte, then segments split at 0xFF).
fn texts() -> Vec<Vec<u8>> {
    let seq = |mode: u8, segments: &[&[u8]]| {
        let mut v = vec![mode];
        for (i, s) in segments.iter().enumerate() {
            if i > 0 {
                v.push(0xFF);
            }
            v.extend_from_slice(s);
        }
        v
    };
    vec![
        seq(0, &[&login_keys()]),
        seq(
            0,
            &[
                b"InitiatorName=iqn.1994-05.com.redhat:host1\0SessionType=Normal\0AuthMethod=CHAP,None\0",
                b"CHAP_A=5\0",
                b"CHAP_N=user\0CHAP_R=0x0123456789abcdef0123456789abcdef\0",
            ],
        ),
        seq(
            8,
            &[
                b"AuthMethod=CHAP\0",
                b"CHAP_A=7,5\0",
                b"CHAP_N=user\0CHAP_R=0x0123456789abcdef0123456789abcdef\0\
                  CHAP_I=9\0CHAP_C=0x00112233445566778899aabbccddeeff\0",
            ],
        ),
        seq(
            2,
            &[
                b"SessionType=Normal\0ErrorRecoveryLevel=0\0InitialR2T=No\0ImmediateData=Yes\0\
                  MaxBurstLength=262144\0FirstBurstLength=65536\0MaxConnections=1\0\
                  DataPDUInOrder=Yes\0DataSequenceInOrder=Yes\0DefaultTime2Wait=2\0\
                  DefaultTime2Retain=20\0MaxOutstandingR2T=1\0",
                b"MaxRecvDataSegmentLength=65536\0X-com.example.Vendor=1\0",
                b"SendTargets=All\0",
            ],
        ),
        seq(
            1,
            &[b"SessionType=Discovery\0MaxBurstLength=512\0TargetAlias=x\0OFMarker=No\0IFMarker=No\0"],
        ),
    ]
}

/// CDBs of every command the target implements, plus some it does not.
pub fn cdb_list() -> Vec<Vec<u8>> {
    vec![
        vec![0x00, 0, 0, 0, 0, 0],                      // TEST UNIT READY
        vec![0x03, 0, 0, 0, 252, 0],                    // REQUEST SENSE
        vec![0x03, 1, 0, 0, 8, 0],                      // REQUEST SENSE, desc
        vec![0x12, 0, 0, 0, 96, 0],                     // INQUIRY
        vec![0x12, 0, 0, 0, 5, 0],                      // INQUIRY, short
        vec![0x12, 1, 0x00, 0, 255, 0],                 // VPD list
        vec![0x12, 1, 0x80, 0, 255, 0],                 // VPD serial
        vec![0x12, 1, 0x83, 0x10, 0, 0],                // VPD device id
        vec![0x12, 1, 0xB0, 0, 64, 0],                  // VPD block limits
        vec![0x12, 1, 0xB1, 0, 64, 0],                  // VPD characteristics
        vec![0x12, 1, 0x86, 0, 64, 0],                  // VPD extended
        vec![0x1A, 0, 0x3F, 0, 255, 0],                 // MODE SENSE(6) all
        vec![0x1A, 0x08, 0x48, 0, 255, 0],              // changeable caching
        vec![0x5A, 0x10, 0x0A, 0, 0, 0, 0, 0x10, 0, 0], // MODE SENSE(10)
        vec![0x5A, 0, 0xBF, 0, 0, 0, 0, 0, 9, 0],       // default values
        vec![0x15, 0x10, 0, 0, 44, 0],                  // MODE SELECT(6)
        vec![0x55, 0x10, 0, 0, 0, 0, 0, 0, 48, 0],      // MODE SELECT(10)
        vec![0x16, 0, 0, 0, 0, 0],                      // RESERVE(6)
        vec![0x17, 0, 0, 0, 0, 0],                      // RELEASE(6)
        vec![0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0],          // RESERVE(10)
        vec![0x1B, 0, 0, 0, 1, 0],                      // START STOP UNIT
        vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],          // READ CAPACITY(10)
        vec![0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], // READ CAPACITY(16)
        vec![0x08, 0, 0, 1, 2, 0],                      // READ(6)
        vec![0x28, 0x18, 0, 0, 0, 8, 0, 0, 4, 0],       // READ(10) DPO FUA
        vec![0xA8, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],    // READ(12)
        vec![0x88, 0, 0, 0, 0, 0, 0, 0, 0x07, 0xFF, 0, 0, 0, 1, 0, 0], // READ(16) last
        vec![0x0A, 0, 0, 2, 1, 0],                      // WRITE(6)
        vec![0x2A, 0, 0, 0, 0, 8, 0, 0, 2, 0],          // WRITE(10)
        vec![0xAA, 0x08, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0], // WRITE(12) FUA
        vec![0x8A, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 2, 0, 0], // WRITE(16)
        vec![0x2E, 0x02, 0, 0, 0, 8, 0, 0, 1, 0],       // WRITE AND VERIFY
        vec![0x2F, 0x02, 0, 0, 0, 8, 0, 0, 2, 0],       // VERIFY(10) compare
        vec![0x8F, 0x06, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 4, 0, 0], // VERIFY(16) one blk
        vec![0x8B, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0], // ORWRITE(16)
        vec![0x41, 0, 0, 0, 0, 16, 0, 0, 4, 0],         // WRITE SAME(10)
        vec![0x93, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0, 0, 32, 0, 0], // WRITE SAME(16)
        vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],          // SYNC CACHE(10)
        vec![0x91, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], // SYNC CACHE(16)
        vec![0x34, 0, 0, 0, 0, 0, 0, 0, 8, 0],          // PRE-FETCH(10)
        vec![0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],    // REPORT LUNS
        vec![0xA0, 0, 2, 0, 0, 0, 0, 0, 0, 16, 0, 0],   // REPORT LUNS short
        vec![0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], // RSOC all
        vec![0xA3, 0x0C, 0x81, 0x28, 0, 0, 0, 0, 0, 64, 0, 0], // RSOC one, RCTD
        vec![0xA3, 0x0C, 0x02, 0x9E, 0, 0x10, 0, 0, 0, 64, 0, 0], // RSOC with SA
        vec![0x4D, 0, 0x40, 0, 0, 0, 0, 0, 64, 0],      // LOG SENSE (no)
        vec![0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],         // UNMAP (no)
        vec![0x7F, 0, 0, 0, 0, 0, 0, 0x18, 0x00, 0x0B, 0, 0, 0, 0, 0, 0], // variable length
    ]
}

fn cdbs() -> Vec<Vec<u8>> {
    cdb_list()
}

/// MODE SELECT parameter data: header, block descriptor, caching page (WCE off) and
/// control page (D_SENSE on): 44 bytes, or 48 with the MODE SELECT(10) header (`ten`).
pub fn mode_select_params(ten: bool) -> Vec<u8> {
    let mut p = if ten {
        vec![0, 0, 0, 0, 0, 0, 0, 8]
    } else {
        vec![0, 0, 0, 8]
    };
    // Block descriptor: 2048 blocks of 512 bytes.
    p.extend_from_slice(&[0, 0, 0x08, 0x00, 0, 0, 0x02, 0x00]);
    let mut caching = vec![0u8; 20];
    caching[0] = 0x08;
    caching[1] = 0x12;
    p.extend_from_slice(&caching);
    p.extend_from_slice(&[0x0A, 0x0A, 0x04, 0x10, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0]);
    p
}

/// One command in the `scsi_execute` input format.
pub fn scsi_command(lun_sel: u8, nexus: u8, cdb: &[u8], data_out: &[u8]) -> Vec<u8> {
    assert!((6..=32).contains(&cdb.len()));
    let mut v = vec![lun_sel & 3 | (nexus & 1) << 2, (cdb.len() - 6) as u8];
    v.extend_from_slice(cdb);
    v.extend_from_slice(&(data_out.len() as u16).to_le_bytes());
    v.extend_from_slice(data_out);
    v
}

fn scsi_sequences() -> Vec<Vec<u8>> {
    let tur = [0u8, 0, 0, 0, 0, 0];
    let mut out = Vec::new();
    // Every CDB alone, after a TEST UNIT READY that takes the power-on unit attention,
    // with plausible data-out.
    for cdb in cdb_list() {
        let data: Vec<u8> = match cdb[0] {
            0x15 => mode_select_params(false),
            0x55 => mode_select_params(true),
            // VERIFY compares with the (still zero) medium.
            0x2F | 0x8F => vec![0; 2048],
            0x0A | 0x2A | 0xAA | 0x8A | 0x2E | 0x8B => {
                (0..2048u32).map(|i| (i * 7) as u8).collect()
            }
            0x41 | 0x93 => vec![0xEE; 512],
            _ => Vec::new(),
        };
        let mut seq = scsi_command(0, 0, &tur, &[]);
        seq.extend(scsi_command(0, 0, &cdb, &data));
        out.push(seq);
        // The same on the read-only 4096-byte LU and on the missing LUN.
        let mut seq = scsi_command(1, 1, &tur, &[]);
        seq.extend(scsi_command(1, 1, &cdb, &data));
        seq.extend(scsi_command(2, 1, &cdb, &data));
        out.push(seq);
    }
    // Write then read back, reservations across two nexuses, a reset in between.
    let mut seq = scsi_command(0, 0, &tur, &[]);
    seq.extend(scsi_command(
        0,
        0,
        &[0x8A, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0],
        &[0x42; 1024],
    ));
    seq.extend(scsi_command(
        0,
        0,
        &[0x2F, 0x02, 0, 0, 0, 4, 0, 0, 2, 0],
        &[0x42; 1024],
    ));
    seq.extend(scsi_command(0, 0, &[0x16, 0, 0, 0, 0, 0], &[]));
    seq.extend(scsi_command(0, 1, &[0x28, 0, 0, 0, 0, 4, 0, 0, 2, 0], &[]));
    seq.push(6 << 5); // LUN reset from nexus 0
    seq.extend(scsi_command(0, 1, &[0x28, 0, 0, 0, 0, 4, 0, 0, 2, 0], &[]));
    seq.extend(scsi_command(0, 1, &[0x03, 0, 0, 0, 252, 0], &[]));
    out.push(seq);
    // MODE SELECT then MODE SENSE and a write refused by SWP.
    let mut seq = scsi_command(0, 0, &tur, &[]);
    let mut params = mode_select_params(false);
    params[4 + 8 + 20 + 4] = 0x08; // SWP
    seq.extend(scsi_command(
        0,
        0,
        &[0x15, 0x10, 0, 0, params.len() as u8, 0],
        &params,
    ));
    seq.extend(scsi_command(0, 0, &[0x1A, 0, 0x3F, 0, 255, 0], &[]));
    seq.extend(scsi_command(
        0,
        0,
        &[0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0],
        &[0x11; 512],
    ));
    seq.extend(scsi_command(0, 1, &[0x00, 0, 0, 0, 0, 0], &[]));
    out.push(seq);
    out
}

/// Names and LUN masking configs for `names`.
pub fn names() -> Vec<&'static str> {
    vec![
        "iqn.1994-05.com.redhat:host1",
        "IQN.2024-01.io.switchyard:VOL1",
        "iqn.2026-11.org.switchyard:quickstart",
        "eui.02004567A425678D",
        "naa.52004567BA64678D",
        "naa.6001405000000007000000000000002a",
        "21:00:00:24:ff:4b:9c:10",
        "0x21000024ff4b9c10",
        "50:06:0e:80:10:2a:3b:4c",
        "10000000c9abcdef",
        "3fffffffffffffff",
        r#"
[[groups]]
name = "esx"
members = ["iqn.1998-01.com.vmware:esx01", "IQN.1998-01.com.vmware:ESX02", "0x21000024ff4b9c10"]

[[groups]]
name = "nobody"
members = []

[[rules]]
target = "IQN.2024-01.io.switchyard:VOL1"
group = "esx"
luns = "all"

[[rules]]
target = "iqn.2024-01.io.switchyard:vol1"
initiator = "iqn.1994-05.com.redhat:backup"
luns = [0, 2, 3]

[[rules]]
target = "50:06:0e:80:10:2a:3b:4c"
initiator = "21:00:00:24:ff:4b:9c:10"
luns = []
"#,
        "[[rules]]\ntarget = \"t\"\ninitiator = \"iqn.1994-05.com.redhat:x\"\nluns = [0, 1]\n",
    ]
}

/// A mapping table, a `[cluster]` section, API bodies and a cluster command sequence
/// (a remap that goes all the way through its phases, and one that is refused).
fn admin_inputs() -> Vec<Vec<u8>> {
    let table = r#"epoch = 1
[[volumes]]
name = "vol1"
wwn = "naa.6005359000000000000000000000a001"
block_size = 512
blocks = 2048
[[volumes.extents]]
vstart = 0
blocks = 1024
backend = "array/lun0"
bstart = 0
[[volumes.extents]]
vstart = 1024
blocks = 1024
backend = "local"
bstart = 4096
"#;
    let cluster = r#"id = 1
name = "sy1"
listen = "127.0.0.1:7401"
peers = ["2@127.0.0.1:7402"]
secret = "0123456789abcdef0123"
data_dir = "raft"
"#;
    let vol = |backend: &str| volume::VolumeDef {
        name: "vol1".into(),
        wwn: "naa.6005359000000000000000000000a001".into(),
        block_size: 512,
        blocks: 2048,
        holes: volume::HolePolicy::Zero,
        extents: vec![volume::Extent {
            vstart: 0,
            blocks: 2048,
            backend: backend.into(),
            bstart: 0,
            mirror: None,
        }],
    };
    let mut t0 = volume::MappingTable::new(0);
    t0.volumes.push(vol("a"));
    let mut t1 = t0.clone();
    t1.epoch = 1;
    let mut t2 = volume::MappingTable::new(1);
    t2.volumes.push(vol("b"));
    let mut changeset = volume::MappingTable::diff(&t1, &t2);
    changeset.base_epoch = 1;
    use cluster::{Command, Phase};
    let advance = |to: Phase, at_ms: u64| Command::AdvanceChange {
        id: 1,
        to,
        reason: None,
        at_ms,
        acks: Vec::new(),
    };
    let ack = |phase: Phase, at_ms: u64| Command::AckChange {
        id: 1,
        node: 1,
        phase,
        at_ms,
    };
    let commands = [
        Command::RegisterNode(cluster::NodeInfo::voter(
            1,
            "n1",
            "127.0.0.1:1",
            vec!["127.0.0.1:3260".into()],
        )),
        Command::ReplaceTable {
            expected_epoch: 0,
            table: t0.clone(),
        },
        Command::BeginChange {
            changeset,
            requested_by: 1,
            at_ms: 1,
            copy_data: false,
            migration: None,
        },
        advance(Phase::Staged, 2),
        ack(Phase::Staged, 3),
        advance(Phase::Quiescing, 4),
        ack(Phase::Quiescing, 5),
        advance(Phase::Switched, 6),
        ack(Phase::Switched, 7),
        advance(Phase::Resumed, 8),
        ack(Phase::Resumed, 9),
        advance(Phase::Done, 10),
        Command::SetAlua {
            node: 1,
            state: cluster::AluaAccess::Standby,
        },
        // vol1 (now on b) migrates to c; then pauses, reports a window, aborts.
        Command::StartMigration {
            spec: cluster::MigrationSpec {
                volume: "vol1".into(),
                vstart: 0,
                blocks: 2048,
                from: cluster::LuHome {
                    backend: "b".into(),
                    bstart: 0,
                },
                to: cluster::LuHome {
                    backend: "c".into(),
                    bstart: 0,
                },
                window_blocks: 512,
                max_rate_mib_s: 200,
                min_rate_mib_s: 20,
                release_source: false,
                engine: cluster::CopyEngine::Auto,
            },
            requested_by: 1,
            at_ms: 11,
        },
        Command::MigrationProgress {
            id: 1,
            progress: cluster::MigrationProgress {
                copied_blocks: 512,
                offloaded_delta: 512,
                window_done: true,
                error: None,
            },
            at_ms: 12,
        },
        Command::SetMigrationState {
            id: 1,
            state: cluster::MigrationState::Aborting,
            reason: Some("admin".into()),
            at_ms: 13,
        },
        // Refused: a stale epoch.
        Command::ReplaceTable {
            expected_epoch: 0,
            table: t0,
        },
        // The catalog: an array, a volume on it, exports, zoning, and back.
        Command::AddBackend(cluster::BackendSpec {
            id: "arr".into(),
            portal: "127.0.0.1:3260".into(),
            target: "iqn.2026-11.org.example:arr".into(),
            chap: None,
            initiator_name: None,
            sessions: 1,
            queue_depth: 32,
            timeout_secs: 15,
        }),
        Command::CreateVolume {
            def: volume::VolumeDef {
                name: "v2".into(),
                wwn: "naa.6005359000000000000000000000a002".into(),
                extents: vec![volume::Extent {
                    vstart: 0,
                    blocks: 2048,
                    backend: "arr/lun0".into(),
                    bstart: 0,
                    mirror: None,
                }],
                ..vol("x")
            },
            exports: vec![cluster::Export {
                target: "iqn.2026-11.org.example:t".into(),
                lun: 1,
                volume: "v2".into(),
            }],
        },
        Command::Export(cluster::Export {
            target: "iqn.2026-11.org.example:t".into(),
            lun: 2,
            volume: "v2".into(),
        }),
        Command::SetZoning {
            expected_version: 0,
            zoning: Some(fcwwn::Masking::open()),
        },
        // Refused: the array is in use.
        Command::RemoveBackend { id: "arr".into() },
        Command::Unexport {
            target: "iqn.2026-11.org.example:t".into(),
            lun: 2,
        },
        Command::DeleteVolume {
            name: "v2".into(),
            pr_key: Some("6005359000000000000000000000a002".into()),
        },
        Command::RemoveBackend { id: "arr".into() },
    ];
    let commands: Vec<String> = commands
        .iter()
        .map(|c| serde_json::to_string(c).expect("commands serialise"))
        .collect();
    vec![
        table.as_bytes().to_vec(),
        cluster.as_bytes().to_vec(),
        br#"{"extents":[{"vstart":0,"blocks":8,"backend":"a","bstart":0}],"blocks":16,"copy":false}"#.to_vec(),
        br#"{"state":"draining","alua":"standby"}"#.to_vec(),
        br#"{"to":"array/lun1","at":0,"vstart":0,"blocks":2048,"window_mib":1,"engine":"node"}"#.to_vec(),
        br#"{"failpoint":"remap::switch","actions":"return"}"#.to_vec(),
        br#"{"name":"db","extents":[{"vstart":0,"blocks":8,"backend":"a/lun0","bstart":0}],"exports":[{"target":"iqn.2026-11.org.example:t","lun":1}]}"#.to_vec(),
        br#"{"expected_version":0,"zoning":{"groups":[{"name":"g","members":["iqn.1994-05.com.redhat:h1","21:00:00:24:ff:4b:9c:10"]}],"rules":[{"target":"iqn.2026-11.org.example:t","group":"g","luns":[0,1]}]}}"#.to_vec(),
        br#"{"id":"arr","portal":"127.0.0.1:3260","target":"iqn.2026-11.org.example:arr","chap_username":"u","chap_secret":"0123456789ab"}"#.to_vec(),
        b"[[backends]]\nid = \"arr\"\nportal = \"127.0.0.1:3260\"\ntarget = \"iqn.2026-11.org.example:arr\"\nsessions = 1\nqueue_depth = 32\ntimeout_secs = 15\n[mapping]\nepoch = 1\n[[exports]]\ntarget = \"iqn.2026-11.org.example:t\"\nlun = 0\nvolume = \"vol1\"\n[zoning]\n[[zoning.groups]]\nname = \"g\"\nmembers = [\"iqn.1994-05.com.redhat:h1\"]\n".to_vec(),
        commands.join("\n").into_bytes(),
    ]
}

/// A leading login straight to full feature phase without digests (so the PDUs that
/// follow it need none).
pub fn plain_login() -> pdu::Request {
    pdu::Request::Login(LoginRequest {
        transit: true,
        cont: false,
        csg: Stage::Operational,
        nsg: Stage::FullFeature,
        version_max: 0,
        version_min: 0,
        isid: [0x40, 0, 0x01, 0x37, 0, 1],
        tsih: 0,
        itt: 1,
        cid: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
        data: Bytes::from_static(
            b"InitiatorName=iqn.1994-05.com.redhat:host1\0SessionType=Normal\0\
              TargetName=iqn.2026-11.org.switchyard:fuzz\0AuthMethod=None\0\
              HeaderDigest=None\0DataDigest=None\0MaxRecvDataSegmentLength=262144\0",
        ),
    })
}

/// TEST UNIT READY with `cmd_sn`.
pub fn tur(cmd_sn: u32) -> pdu::Request {
    let mut c = command(&[0; 6], 0, false, false, &[]);
    if let pdu::Request::ScsiCommand(sc) = &mut c {
        sc.cmd_sn = cmd_sn;
        sc.itt = 0x100 + cmd_sn;
        sc.lun = 0;
    }
    c
}

/// What follows the login in a `session` input: the request seeds as one stream, each
/// alone, and a stream of commands with CmdSN in order.
fn sessions() -> Vec<Vec<u8>> {
    let reqs = requests();
    let mut out = Vec::new();
    let mut all = BytesMut::new();
    for r in &reqs[1..] {
        let mut one = BytesMut::new();
        r.encode(&mut one, Digests::NONE);
        out.push(one.to_vec());
        r.encode(&mut all, Digests::NONE);
    }
    out.push(all.to_vec());
    let mut ordered = BytesMut::new();
    for sn in 1..=8 {
        tur(sn).encode(&mut ordered, Digests::NONE);
    }
    out.push(ordered.to_vec());
    out
}
