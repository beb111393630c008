//! `loadgen`: a benchmark load generator on [`iscsi_initiator::Client`]. It keeps
//! `--qd` commands in flight per session for `--secs` seconds — random reads, random
//! writes, a random mix, or sequential reads — and prints IOPS, MB/s and latency
//! percentiles. `bench/run.sh` runs it against switchyard and tgtd.
//!
//! ```text
//! loadgen iscsi://127.0.0.1:3260/iqn.2026-11.org.switchyard:bench/0 --pattern write --qd 32 --secs 10
//! ```
//!
//! The last line of output is `key=value` pairs for scripts:
//! `pattern=write bs=4096 qd=32 sessions=1 ios=… errors=… secs=… iops=… mbs=… p50_us=… p90_us=… p99_us=… p999_us=… max_us=…`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use iscsi_initiator::{Client, InitiatorConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Pattern {
    /// Random reads.
    Read,
    /// Random writes.
    Write,
    /// Random reads and writes, `--read-pct` percent reads.
    Mixed,
    /// Sequential reads (each worker takes the next block range).
    SeqRead,
}

#[derive(Debug, Parser)]
#[command(
    about = "iSCSI load generator: fixed queue depth, prints IOPS, MB/s and latency percentiles"
)]
struct Args {
    /// iscsi://HOST:PORT/TARGET-IQN/LUN
    url: String,
    #[arg(long, value_enum, default_value = "read")]
    pattern: Pattern,
    /// Transfer size in bytes (a multiple of the LU's block size).
    #[arg(long, default_value_t = 4096)]
    bs: u32,
    /// Commands in flight per session.
    #[arg(long, default_value_t = 32)]
    qd: usize,
    /// Sessions (connections) to open; commands are spread round-robin.
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Percentage of reads in `--pattern mixed`.
    #[arg(long, default_value_t = 50)]
    read_pct: u32,
    /// Runtime worker threads (1: a single-threaded runtime, like iscsi-perf's loop).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value = "iqn.2026-11.org.switchyard:loadgen")]
    initiator: String,
}

/// `iscsi://host:port/target/lun` -> (portal, target, lun).
fn parse_url(url: &str) -> Result<(SocketAddr, String, u64), String> {
    let rest = url
        .strip_prefix("iscsi://")
        .ok_or_else(|| format!("{url}: expected iscsi://HOST:PORT/TARGET/LUN"))?;
    let mut parts = rest.splitn(3, '/');
    let (hostport, target, lun) = match (parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(t), Some(l)) if !t.is_empty() => (h, t, l),
        _ => return Err(format!("{url}: expected iscsi://HOST:PORT/TARGET/LUN")),
    };
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:3260")
    };
    let portal = std::net::ToSocketAddrs::to_socket_addrs(&hostport)
        .map_err(|e| format!("{hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport}: no address"))?;
    let lun = lun
        .parse()
        .map_err(|_| format!("{url}: LUN {lun:?} is not a number"))?;
    Ok((portal, target.to_string(), lun))
}

/// xorshift64*: cheap, good enough to spread LBAs.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

#[derive(Default)]
struct Tally {
    ios: u64,
    errors: u64,
    bytes: u64,
    /// Latencies in microseconds.
    lat: Vec<u32>,
}

fn main() {
    let args = Args::parse();
    let rt = loadgen::runtime(args.threads).expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    if let Err(e) = local.block_on(&rt, run(args)) {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let (portal, target, lun) = parse_url(&args.url)?;
    let mut cfg = InitiatorConfig::new(portal, args.initiator.clone(), target);
    cfg.sessions = args.sessions.max(1);
    cfg.queue_depth = args.qd.max(1);
    let client = Client::connect(cfg)
        .await
        .map_err(|e| format!("login to {}: {e}", args.url))?;
    let timeout = Duration::from_secs(30);

    // READ CAPACITY(16): block size and count.
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9e;
    cdb[1] = 0x10;
    cdb[13] = 32;
    // The first command on each new nexus may get UNIT ATTENTION (power on, reset);
    // commands go round-robin over the sessions, so try on every one of them.
    let mut cap = Default::default();
    for _ in 0..2 * args.sessions.max(1) + 4 {
        cap = client
            .execute(lun, &cdb, Bytes::new(), 32, timeout)
            .await
            .map_err(|e| format!("READ CAPACITY(16): {e}"))?;
        if cap.is_good() {
            break;
        }
    }
    let cap: iscsi_initiator::ScsiOutcome = cap;
    if !cap.is_good() || cap.data.len() < 12 {
        return Err(format!(
            "READ CAPACITY(16) failed: status {:#x}",
            cap.status
        ));
    }
    let last_lba = u64::from_be_bytes(cap.data[0..8].try_into().expect("8 bytes"));
    let block = u32::from_be_bytes(cap.data[8..12].try_into().expect("4 bytes"));
    if args.bs == 0 || !args.bs.is_multiple_of(block) {
        return Err(format!(
            "--bs {} is not a multiple of the block size {block}",
            args.bs
        ));
    }
    let blocks = args.bs / block;
    let slots = (last_lba + 1) / u64::from(blocks);
    if slots == 0 {
        return Err("the LU is smaller than one transfer".into());
    }
    let mut seed = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let payload: Bytes = (0..args.bs)
        .map(|_| seed.next() as u8)
        .collect::<Vec<u8>>()
        .into();

    let workers = args.qd.max(1) * args.sessions.max(1);
    let stop = Instant::now() + Duration::from_secs(args.secs);
    let seq_next = Rc::new(RefCell::new(0u64));
    let start = Instant::now();
    let mut handles = Vec::with_capacity(workers);
    for w in 0..workers {
        let client = client.clone();
        let payload = payload.clone();
        let seq_next = seq_next.clone();
        let pattern = args.pattern;
        let read_pct = u64::from(args.read_pct.min(100));
        let mut rng = Rng(seed.next() | 1 | (w as u64) << 1);
        handles.push(tokio::task::spawn_local(async move {
            let mut t = Tally {
                lat: Vec::with_capacity(1 << 16),
                ..Tally::default()
            };
            while Instant::now() < stop {
                let r = rng.next();
                let slot = match pattern {
                    Pattern::SeqRead => {
                        let mut n = seq_next.borrow_mut();
                        let s = *n % slots;
                        *n += 1;
                        s
                    }
                    _ => r % slots,
                };
                let lba = slot * u64::from(blocks);
                let write = match pattern {
                    Pattern::Write => true,
                    Pattern::Mixed => (r >> 40) % 100 >= read_pct,
                    Pattern::Read | Pattern::SeqRead => false,
                };
                let t0 = Instant::now();
                let res = if write {
                    client
                        .execute(lun, &rw16(0x8a, lba, blocks), payload.clone(), 0, timeout)
                        .await
                } else {
                    client
                        .execute(
                            lun,
                            &rw16(0x88, lba, blocks),
                            Bytes::new(),
                            blocks * block,
                            timeout,
                        )
                        .await
                };
                let us = t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                match res {
                    Ok(o) if o.is_good() => {
                        t.ios += 1;
                        t.bytes += u64::from(blocks * block);
                        t.lat.push(us);
                    }
                    Ok(o) => {
                        t.errors += 1;
                        if t.errors == 1 {
                            eprintln!("loadgen: status {:#x} sense {:?}", o.status, o.sense_info());
                        }
                    }
                    Err(e) => {
                        t.errors += 1;
                        if t.errors == 1 {
                            eprintln!("loadgen: {e}");
                        }
                    }
                }
            }
            t
        }));
    }
    let mut all = Tally::default();
    for h in handles {
        let t = h.await.map_err(|e| format!("worker: {e}"))?;
        all.ios += t.ios;
        all.errors += t.errors;
        all.bytes += t.bytes;
        all.lat.extend(t.lat);
    }
    let secs = start.elapsed().as_secs_f64();
    client.close().await;

    all.lat.sort_unstable();
    let pct = |p: f64| -> u32 {
        if all.lat.is_empty() {
            return 0;
        }
        let i = ((all.lat.len() as f64 - 1.0) * p).round() as usize;
        all.lat[i]
    };
    let iops = all.ios as f64 / secs;
    let mbs = all.bytes as f64 / secs / 1e6;
    let name = format!("{:?}", args.pattern).to_lowercase();
    println!(
        "{name} bs={} qd={} sessions={}: {:.0} IOPS, {:.1} MB/s, latency us p50 {} p90 {} p99 {} p99.9 {} max {}{}",
        args.bs,
        args.qd,
        args.sessions,
        iops,
        mbs,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        all.lat.last().copied().unwrap_or(0),
        if all.errors > 0 { format!(", {} errors", all.errors) } else { String::new() }
    );
    println!(
        "pattern={name} bs={} qd={} sessions={} ios={} errors={} secs={:.2} iops={:.0} mbs={:.1} p50_us={} p90_us={} p99_us={} p999_us={} max_us={}",
        args.bs,
        args.qd,
        args.sessions,
        all.ios,
        all.errors,
        secs,
        iops,
        mbs,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        all.lat.last().copied().unwrap_or(0)
    );
    if all.errors > 0 && all.ios == 0 {
        return Err("every command failed".into());
    }
    Ok(())
}
