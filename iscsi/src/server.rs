//! The portal server: accepts connections on every portal, runs login, registers
//! sessions (TSIH allocation, reinstatement by ISID), and hands each connection to the
//! full feature phase. Bounded: a semaphore caps connections, and sessions are capped in
//! total and per initiator.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::codec::PduCodec;
use crate::conn::{Conn, ConnParams};
use crate::login::{self, LoginOutcome};
use crate::session::{Session, SessionKey};
use crate::target::{PortalDef, TargetDef};
use crate::writer::{self, WriterParams};

/// Tunables of the fabric. Defaults suit a LAN and a Linux initiator.
#[derive(Debug, Clone)]
pub struct FabricConfig {
    /// Our MaxRecvDataSegmentLength (what we accept per PDU).
    pub max_recv_data_segment: u32,
    /// Upper bounds we accept for MaxBurstLength and FirstBurstLength.
    pub max_burst: u32,
    pub first_burst: u32,
    /// Whether we allow ImmediateData=Yes and InitialR2T=No.
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
    /// Commands a session may have outstanding (the CmdSN window).
    pub queue_depth: u32,
    /// Largest single write we buffer (bytes).
    pub max_transfer: u32,
    pub max_sessions: usize,
    pub max_sessions_per_initiator: usize,
    /// Idle time before we ping with NOP-In, and how long we wait for the answer.
    pub nop_interval: Duration,
    pub nop_timeout: Duration,
    pub login_timeout: Duration,
    /// Busy-poll a connection's socket for up to this long after its last response
    /// while none of its commands is running, when its host has been sending its
    /// commands in quick succession (zero: never; see `busy_poll`). Spends CPU for
    /// latency at low queue depth: the next command is picked up without waking a
    /// sleeping thread.
    pub busy_poll: Duration,
}

/// Default [`FabricConfig::busy_poll`].
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);

impl Default for FabricConfig {
    fn default() -> Self {
        FabricConfig {
            max_recv_data_segment: 256 * 1024,
            max_burst: 1024 * 1024,
            first_burst: 256 * 1024,
            immediate_data: true,
            initial_r2t: false,
            max_outstanding_r2t: 4,
            queue_depth: 128,
            max_transfer: 8 * 1024 * 1024,
            max_sessions: 1024,
            max_sessions_per_initiator: 64,
            nop_interval: Duration::from_secs(15),
            nop_timeout: Duration::from_secs(30),
            login_timeout: Duration::from_secs(30),
            busy_poll: DEFAULT_BUSY_POLL,
        }
    }
}

/// Counters exported to management.
#[derive(Debug, Default)]
pub struct Stats {
    pub commands: AtomicU64,
    pub logins: AtomicU64,
    pub login_failures: AtomicU64,
}

/// Login failure throttling: after `LIMIT` failed authentications within `WINDOW` by
/// one initiator name from one source address, or `LIMIT_PER_ADDRESS` by any names from
/// one address, further logins from there (by that name, or by any) are refused
/// (status 3/1, "service unavailable", which initiators retry later) until the window
/// has passed. Stops CHAP secret guessing, also by a guesser who changes initiator
/// names, without locking out a correctly configured host for long, or letting a
/// stranger elsewhere lock it out.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    /// By `name@address`, and by `@address` for every name.
    failures: Mutex<HashMap<String, (std::time::Instant, u32)>>,
}

impl LoginThrottle {
    pub const LIMIT: u32 = 8;
    pub const LIMIT_PER_ADDRESS: u32 = 32;
    pub const WINDOW: Duration = Duration::from_secs(30);

    /// Record a failed login by `initiator` from `addr`.
    pub fn failed(&self, initiator: &str, addr: IpAddr) {
        let now = std::time::Instant::now();
        let mut m = self.failures.lock();
        if m.len() > 4096 {
            m.retain(|_, (t, _)| now.duration_since(*t) < Self::WINDOW);
        }
        for key in [format!("{initiator}@{addr}"), format!("@{addr}")] {
            let e = m.entry(key).or_insert((now, 0));
            if now.duration_since(e.0) >= Self::WINDOW {
                *e = (now, 0);
            }
            e.1 += 1;
        }
    }

    /// `Some(time left)` when `initiator` at `addr` must wait before logging in again.
    pub fn blocked(&self, initiator: &str, addr: IpAddr) -> Option<Duration> {
        let m = self.failures.lock();
        let left = |key: String, limit: u32| {
            let (start, n) = m.get(&key)?;
            let age = start.elapsed();
            (*n >= limit && age < Self::WINDOW).then(|| Self::WINDOW - age)
        };
        left(format!("{initiator}@{addr}"), Self::LIMIT)
            .or_else(|| left(format!("@{addr}"), Self::LIMIT_PER_ADDRESS))
    }
}

/// A session as management sees it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub initiator: String,
    pub isid: String,
    pub target: Option<String>,
    pub tsih: u16,
    pub local_addr: SocketAddr,
}

/// What [`ServerShared::update_targets`] did to the live sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetsUpdate {
    /// Sessions whose LUN map changed.
    pub remapped: usize,
    /// Sessions ended (target gone, or zoning no longer admits the initiator).
    pub ended: usize,
}

/// State shared by every connection of the server.
pub struct ServerShared {
    pub config: FabricConfig,
    /// The targets served; replaced online by [`ServerShared::update_targets`].
    targets: RwLock<Vec<Arc<TargetDef>>>,
    pub portals: Vec<PortalDef>,
    /// Addresses actually bound, in portal order (differs from `portals` for port 0).
    bound: Mutex<Vec<SocketAddr>>,
    pub stats: Arc<Stats>,
    pub throttle: LoginThrottle,
    sessions: Mutex<HashMap<SessionKey, Arc<Session>>>,
    next_tsih: AtomicU16,
    next_nexus: AtomicU64,
}

impl ServerShared {
    pub fn target(&self, name: &str) -> Option<Arc<TargetDef>> {
        self.targets
            .read()
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
            .cloned()
    }

    pub fn alloc_nexus_id(&self) -> u64 {
        self.next_nexus.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh non-zero TSIH not in use.
    pub fn alloc_tsih(&self) -> u16 {
        let sessions = self.sessions.lock();
        loop {
            let t = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 && !sessions.values().any(|s| s.tsih == t) {
                return t;
            }
        }
    }

    /// Existing session with this key (for reinstatement), if any.
    pub fn find_session(&self, key: &SessionKey) -> Option<Arc<Session>> {
        self.sessions.lock().get(key).cloned()
    }

    /// Is there a session with this TSIH for this initiator/ISID?
    pub fn session_by_tsih(&self, tsih: u16) -> Option<Arc<Session>> {
        self.sessions
            .lock()
            .values()
            .find(|s| s.tsih == tsih)
            .cloned()
    }

    /// The relative target port identifiers of the portals (0 in a portal's
    /// definition: its position plus one).
    pub fn relative_ports(&self) -> Arc<[u16]> {
        self.portals
            .iter()
            .enumerate()
            .map(|(i, p)| match p.relative_port {
                0 => i as u16 + 1,
                r => r,
            })
            .collect()
    }

    /// The targets served now.
    pub fn targets(&self) -> Vec<Arc<TargetDef>> {
        self.targets.read().clone()
    }

    /// Serve `targets` from now on (LUNs added or removed, zoning changed). Live
    /// sessions see the change at once: a session whose LUN map changed gets the new
    /// map and REPORTED LUNS DATA HAS CHANGED (SPC-4 6.33); a session whose target is
    /// gone, or whose initiator the zoning no longer admits, is ended. Commands already
    /// running finish on the logical unit they started on.
    pub fn update_targets(&self, targets: Vec<TargetDef>) -> TargetsUpdate {
        let new: Vec<Arc<TargetDef>> = targets.into_iter().map(Arc::new).collect();
        // Sessions first, then targets: `register` takes them in the same order, so a
        // login racing this update sees either the old targets (and is updated here)
        // or the new ones.
        let sessions = self.sessions.lock();
        *self.targets.write() = new.clone();
        let mut out = TargetsUpdate::default();
        for s in sessions.values() {
            let Some(t) = &s.target else { continue };
            let initiator = &s.key.initiator;
            match new.iter().find(|n| n.name.eq_ignore_ascii_case(&t.name)) {
                Some(n) if n.allows(initiator) => {
                    let map = n.lun_map_for(initiator, &self.relative_ports());
                    let old = s.luns.load_full();
                    if !map.same_luns(&old) {
                        map.replaces(&old, &s.nexus);
                        out.remapped += 1;
                    }
                    // Stored even when the LUNs are the same: the map also carries
                    // the zoning that REGISTER AND MOVE checks against.
                    s.luns.store(Arc::new(map));
                }
                found => {
                    tracing::warn!(
                        initiator = %initiator,
                        target = %t.name,
                        "ending the session: {}",
                        if found.is_some() {
                            "the zoning no longer admits this initiator"
                        } else {
                            "the target is no longer served"
                        }
                    );
                    s.kill.cancel();
                    out.ended += 1;
                }
            }
        }
        out
    }

    /// Register a new session; Err when a limit would be exceeded.
    pub fn register(&self, sess: Arc<Session>) -> Result<(), &'static str> {
        let mut sessions = self.sessions.lock();
        // The targets changed while this session logged in: it gets the current map.
        if let Some(t) = &sess.target {
            match self.target(&t.name) {
                None => return Err("the target is no longer served"),
                Some(cur) if Arc::ptr_eq(&cur, t) => {}
                Some(cur) if !cur.allows(&sess.key.initiator) => {
                    return Err("the zoning no longer admits this initiator")
                }
                Some(cur) => sess.luns.store(Arc::new(
                    cur.lun_map_for(&sess.key.initiator, &self.relative_ports()),
                )),
            }
        }
        if sessions.len() >= self.config.max_sessions {
            return Err("too many sessions on this node");
        }
        let per = sessions
            .keys()
            .filter(|k| k.initiator == sess.key.initiator)
            .count();
        if per >= self.config.max_sessions_per_initiator {
            return Err("too many sessions from this initiator");
        }
        sessions.insert(sess.key.clone(), sess);
        Ok(())
    }

    fn unregister(&self, sess: &Arc<Session>) {
        let mut sessions = self.sessions.lock();
        if let Some(cur) = sessions.get(&sess.key) {
            if Arc::ptr_eq(cur, sess) {
                sessions.remove(&sess.key);
            }
        }
    }

    /// Sessions currently logged in.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.sessions
            .lock()
            .values()
            .map(|s| SessionInfo {
                initiator: s.key.initiator.clone(),
                isid: crate::session::isid_hex(&s.key.isid),
                target: s.target.as_ref().map(|t| t.name.clone()),
                tsih: s.tsih,
                local_addr: s.local_addr,
            })
            .collect()
    }

    /// TARGET RESET: end every other session of this target (SAM-5 §7.11).
    pub fn reset_target(&self, target: &str, except_tsih: u16) {
        for s in self.sessions.lock().values() {
            if s.tsih != except_tsih
                && s.target
                    .as_ref()
                    .is_some_and(|t| t.name.eq_ignore_ascii_case(target))
            {
                s.kill.cancel();
            }
        }
    }

    /// SendTargets (RFC 7143 Appendix C): `All` lists every target this initiator may
    /// log in to; a name lists that one; empty lists the session's own target.
    pub fn send_targets(
        &self,
        what: &str,
        initiator: &str,
        session_target: Option<&str>,
        local: SocketAddr,
        out: &mut Vec<(String, String)>,
    ) {
        for t in self.targets.read().iter() {
            let wanted = match what {
                "All" => true,
                "" => session_target.is_some_and(|n| n.eq_ignore_ascii_case(&t.name)),
                name => name.eq_ignore_ascii_case(&t.name),
            };
            if !wanted || !t.allows(initiator) {
                continue;
            }
            out.push(("TargetName".into(), t.name.clone()));
            let bound = self.bound.lock().clone();
            for (i, p) in self.portals.iter().enumerate() {
                let mut p = *p;
                if let Some(b) = bound.get(i) {
                    p.addr = *b;
                }
                let addr = if p.addr.ip().is_unspecified() {
                    SocketAddr::new(local.ip(), p.addr.port())
                } else {
                    p.addr
                };
                let host = match addr {
                    SocketAddr::V4(a) => a.to_string(),
                    SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
                };
                out.push(("TargetAddress".into(), format!("{host},{}", p.tpgt)));
            }
        }
    }
}

/// An iSCSI target server over some portals.
#[derive(Clone)]
pub struct Server {
    shared: Arc<ServerShared>,
}

impl Server {
    pub fn new(config: FabricConfig, targets: Vec<TargetDef>, portals: Vec<PortalDef>) -> Server {
        Server {
            shared: Arc::new(ServerShared {
                config,
                targets: RwLock::new(targets.into_iter().map(Arc::new).collect()),
                portals,
                bound: Mutex::new(Vec::new()),
                stats: Arc::new(Stats::default()),
                throttle: LoginThrottle::default(),
                sessions: Mutex::new(HashMap::new()),
                next_tsih: AtomicU16::new(1),
                next_nexus: AtomicU64::new(1),
            }),
        }
    }

    pub fn shared(&self) -> &Arc<ServerShared> {
        &self.shared
    }

    /// Bind every portal. Errors name the address ("127.0.0.1:3260: address in use").
    pub async fn bind(&self) -> io::Result<Vec<TcpListener>> {
        let mut out = Vec::new();
        for p in &self.shared.portals {
            let l = TcpListener::bind(p.addr).await.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on portal {}: {e}", p.addr))
            })?;
            out.push(l);
        }
        *self.shared.bound.lock() = out
            .iter()
            .map(|l| l.local_addr())
            .collect::<io::Result<Vec<_>>>()?;
        Ok(out)
    }

    /// Serve until `shutdown` is cancelled, then end sessions after their running
    /// commands finish.
    pub async fn run(&self, listeners: Vec<TcpListener>, shutdown: CancellationToken) {
        let limit = Arc::new(Semaphore::new(self.shared.config.max_sessions + 16));
        let mut tasks = tokio::task::JoinSet::new();
        for l in listeners {
            let shared = self.shared.clone();
            let sd = shutdown.clone();
            let limit = limit.clone();
            tasks.spawn(async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        _ = sd.cancelled() => break,
                        r = l.accept() => match r {
                            Ok((sock, peer)) => {
                                let Ok(permit) = limit.clone().try_acquire_owned() else {
                                    tracing::warn!(%peer, "connection limit reached; refusing");
                                    continue;
                                };
                                let shared = shared.clone();
                                let sd = sd.clone();
                                conns.spawn(async move {
                                    let _permit = permit;
                                    handle_connection(shared, sock, peer, sd).await;
                                });
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "accept failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        },
                        Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    }
                }
                while conns.join_next().await.is_some() {}
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}

async fn handle_connection(
    shared: Arc<ServerShared>,
    sock: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let _ = sock.set_nodelay(true);
    let local = match sock.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let (rd, mut wr) = sock.into_split();
    let mut reader = FramedRead::new(rd, PduCodec::new(8192));
    let outcome = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = tokio::time::timeout(
            shared.config.login_timeout,
            login::run(&shared, &mut reader, &mut wr, peer, local),
        ) => match r {
            Ok(o) => o,
            Err(_) => {
                tracing::info!(%peer, "login timed out");
                return;
            }
        }
    };
    let LoginOutcome {
        session,
        params,
        stat_sn,
    } = match outcome {
        Some(o) => o,
        None => return,
    };
    shared.stats.logins.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        %peer,
        initiator = %session.key.initiator,
        target = session.target.as_ref().map(|t| t.name.as_str()).unwrap_or("(discovery)"),
        tsih = session.tsih,
        "session logged in"
    );
    // Switch framing to the negotiated values.
    {
        let codec = reader.decoder_mut();
        codec.header_digest = params.digests.header;
        codec.data_digest = params.digests.data;
        codec.max_data = shared.config.max_recv_data_segment as usize;
    }
    let (tx, rx) = mpsc::channel(256);
    let wparams = WriterParams {
        digests: params.digests,
        max_send_data: params.max_send_data,
        max_burst: params.max_burst,
        stall_timeout: shared.config.nop_interval + shared.config.nop_timeout,
    };
    let wtask = tokio::spawn(writer::run(wr, rx, session.clone(), wparams, stat_sn));
    let conn = Conn::new(
        session.clone(),
        shared.clone(),
        ConnParams {
            immediate_data: params.immediate_data,
            initial_r2t: params.initial_r2t,
            first_burst: params.first_burst,
            max_burst: params.max_burst,
            max_outstanding_r2t: params.max_outstanding_r2t,
            max_transfer: shared.config.max_transfer,
            max_send_data: params.max_send_data,
            nop_interval: shared.config.nop_interval,
            nop_timeout: shared.config.nop_timeout,
            busy_poll: shared.config.busy_poll,
        },
        tx,
    );
    conn.run(reader, shutdown).await;
    let _ = wtask.await;
    shared.unregister(&session);
    tracing::info!(%peer, tsih = session.tsih, "session ended");
}
