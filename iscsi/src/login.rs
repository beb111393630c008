//! The login phase (RFC 7143 §6, §11.12-13): security negotiation (CHAP, one-way or
//! mutual), operational negotiation of every key, target lookup and ACLs, session
//! reinstatement by ISID, and TSIH assignment. Failures answer with the right status
//! class/detail and close the connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use iscsi_wire::chap;
use iscsi_wire::digest::Digests;
use iscsi_wire::negotiate::{Negotiator, TargetPolicy};
use iscsi_wire::pdu::{self, LoginRequest, LoginResponse, Request, Stage};
use iscsi_wire::text;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::codec::PduCodec;
use crate::seq::CmdWindow;
use crate::server::ServerShared;
use crate::session::{isid_hex, Session, SessionKey};
use crate::target::TargetDef;

/// Login status class and detail (§11.13.5).
pub mod status {
    pub const SUCCESS: (u8, u8) = (0, 0);
    pub const AUTH_FAILED: (u8, u8) = (2, 1);
    pub const NOT_AUTHORIZED: (u8, u8) = (2, 2);
    pub const NOT_FOUND: (u8, u8) = (2, 3);
    pub const UNSUPPORTED_VERSION: (u8, u8) = (2, 5);
    pub const TOO_MANY_CONNECTIONS: (u8, u8) = (2, 6);
    pub const MISSING_PARAMETER: (u8, u8) = (2, 7);
    pub const SESSION_NOT_FOUND: (u8, u8) = (2, 10);
    pub const INVALID_REQUEST: (u8, u8) = (2, 11);
    pub const INITIATOR_ERROR: (u8, u8) = (2, 0);
    pub const OUT_OF_RESOURCES: (u8, u8) = (3, 2);
    pub const SERVICE_UNAVAILABLE: (u8, u8) = (3, 1);
}

/// Negotiated values the connection needs after login.
#[derive(Debug, Clone, Copy)]
pub struct LoginParams {
    pub digests: Digests,
    pub max_send_data: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
}

pub struct LoginOutcome {
    pub session: Arc<Session>,
    pub params: LoginParams,
    /// StatSN for the first response in full feature phase.
    pub stat_sn: u32,
}

enum Auth {
    /// No CHAP configured, or already authenticated.
    Done,
    /// CHAP required; waiting for AuthMethod / CHAP_A.
    Required,
    /// We sent CHAP_I/CHAP_C; waiting for CHAP_N/CHAP_R.
    Challenged { id: u8, challenge: Vec<u8> },
}

struct Login<'a> {
    shared: &'a ServerShared,
    first: Option<LoginRequest>,
    initiator: String,
    discovery: bool,
    target: Option<Arc<TargetDef>>,
    auth: Auth,
    neg: Negotiator,
    stat_sn: u32,
    cmd_sn: u32,
    tsih: u16,
    pending: Vec<u8>,
    /// Stage we are in.
    csg: Stage,
    /// The status the login failed with, if it did.
    failed_with: Option<(u8, u8)>,
    /// Login throttling is keyed by this and the initiator name, so a stranger who
    /// knows a host's name cannot lock that host out from another address.
    peer_ip: std::net::IpAddr,
}

/// Run the login phase. `None` when the login failed (the reason was sent).
pub async fn run(
    shared: &ServerShared,
    reader: &mut FramedRead<OwnedReadHalf, PduCodec>,
    w: &mut OwnedWriteHalf,
    peer: SocketAddr,
    local: SocketAddr,
) -> Option<LoginOutcome> {
    let policy = TargetPolicy {
        max_recv_data_segment_length: shared.config.max_recv_data_segment,
        max_burst_length: shared.config.max_burst,
        first_burst_length: shared.config.first_burst,
        immediate_data: shared.config.immediate_data,
        initial_r2t: shared.config.initial_r2t,
        max_outstanding_r2t: shared.config.max_outstanding_r2t.min(65535) as u16,
        ..TargetPolicy::default()
    };
    let mut st = Login {
        shared,
        first: None,
        initiator: String::new(),
        discovery: false,
        target: None,
        auth: Auth::Done,
        neg: Negotiator::new(policy),
        stat_sn: 0,
        cmd_sn: 0,
        tsih: 0,
        pending: Vec::new(),
        csg: Stage::Security,
        failed_with: None,
        peer_ip: peer.ip(),
    };
    loop {
        let frame = match reader.next().await {
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                tracing::debug!(%peer, error = %e, "login read failed");
                return None;
            }
            None => return None,
        };
        let req = match pdu::parse_request(&frame.bhs, &frame.ahs, frame.data) {
            Ok(Request::Login(l)) => l,
            Ok(_) | Err(_) => {
                // Anything but a Login request during login: reject the login.
                if let Some(first) = st.first.clone() {
                    st.fail(w, &first, status::INVALID_REQUEST).await;
                } else {
                    tracing::debug!(%peer, "first PDU is not a Login request; closing");
                }
                return None;
            }
        };
        match st.step(req, w, peer, local).await {
            Step::Continue => {}
            Step::Failed => {
                shared
                    .stats
                    .login_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Only authentication failures count: a host that retries with a stale
                // TSIH or a wrong target name must not lock itself out.
                if matches!(st.failed_with, Some(status::AUTH_FAILED)) && !st.initiator.is_empty() {
                    shared.throttle.failed(&st.initiator, st.peer_ip);
                }
                return None;
            }
            Step::Done(o) => return Some(o),
        }
    }
}

enum Step {
    Continue,
    Failed,
    Done(LoginOutcome),
}

impl Login<'_> {
    async fn step(
        &mut self,
        req: LoginRequest,
        w: &mut OwnedWriteHalf,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Step {
        if self.first.is_none() {
            self.stat_sn = req.exp_stat_sn;
            self.cmd_sn = req.cmd_sn;
            if req.version_min > 0 {
                self.fail(w, &req, status::UNSUPPORTED_VERSION).await;
                return Step::Failed;
            }
            self.csg = req.csg;
            self.first = Some(req.clone());
        } else {
            let first = self.first.as_ref().expect("set");
            if req.isid != first.isid || req.tsih != first.tsih || req.cid != first.cid {
                self.fail(w, &req, status::INITIATOR_ERROR).await;
                return Step::Failed;
            }
        }
        // Text split over several PDUs (C bit): gather it, answer with an empty response.
        self.pending.extend_from_slice(&req.data);
        if self.pending.len() > 64 * 1024 {
            self.fail(w, &req, status::INITIATOR_ERROR).await;
            return Step::Failed;
        }
        if req.cont {
            self.respond(w, &req, false, req.csg, req.csg, &[]).await;
            return Step::Continue;
        }
        let data = std::mem::take(&mut self.pending);
        let keys: Vec<(String, String)> = match text::parse(&data) {
            Ok(k) => k.into_iter().collect(),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "malformed login text");
                self.fail(w, &req, status::INITIATOR_ERROR).await;
                return Step::Failed;
            }
        };
        if req.csg != self.csg || req.csg == Stage::FullFeature {
            self.fail(w, &req, status::INITIATOR_ERROR).await;
            return Step::Failed;
        }
        let mut out: Vec<(String, String)> = Vec::new();
        if self.first_keys_pending() {
            if let Err(st) = self.first_keys(&keys, &req) {
                self.fail(w, &req, st).await;
                return Step::Failed;
            }
            if !self.discovery {
                let tpgt = self
                    .shared
                    .portals
                    .iter()
                    .find(|p| p.addr.port() == local.port())
                    .map(|p| p.tpgt)
                    .unwrap_or(1);
                out.push(("TargetPortalGroupTag".into(), tpgt.to_string()));
                if let Some(alias) = self.target.as_ref().and_then(|t| t.alias.clone()) {
                    out.push(("TargetAlias".into(), alias));
                }
            }
        }
        let mut rest: Vec<(String, String)> = Vec::new();
        for (k, v) in keys {
            match k.as_str() {
                "InitiatorName" | "TargetName" | "SessionType" | "InitiatorAlias" => {}
                _ => rest.push((k, v)),
            }
        }
        if req.csg == Stage::Security {
            match self.security(&rest, &mut out) {
                Ok(()) => {}
                Err(st) => {
                    tracing::info!(%peer, initiator = %self.initiator, "login authentication failed");
                    self.fail(w, &req, st).await;
                    return Step::Failed;
                }
            }
        } else {
            if !matches!(self.auth, Auth::Done) {
                // CHAP required but the initiator skipped the security stage.
                tracing::info!(%peer, initiator = %self.initiator, "login without required CHAP");
                self.fail(w, &req, status::AUTH_FAILED).await;
                return Step::Failed;
            }
            match self.neg.respond(&rest, self.discovery) {
                Ok(resp) => out.extend(resp),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "login negotiation failed");
                    self.fail(w, &req, status::INITIATOR_ERROR).await;
                    return Step::Failed;
                }
            }
        }
        // Stage transition.
        let mut transit = req.transit;
        let mut nsg = req.nsg;
        if transit {
            let auth_done = matches!(self.auth, Auth::Done);
            if (req.csg == Stage::Security && !auth_done) || nsg <= req.csg {
                // Not ready to leave this stage yet (or an invalid next stage).
                if nsg <= req.csg {
                    self.fail(w, &req, status::INITIATOR_ERROR).await;
                    return Step::Failed;
                }
                transit = false;
                nsg = req.csg;
            }
        }
        if transit && nsg == Stage::FullFeature {
            // Declare the keys whose defaults we do not want, then enter full feature.
            out.extend(self.neg.final_declarations(self.discovery));
            return self.finish(w, &req, out, local).await;
        }
        if transit {
            self.csg = nsg;
        }
        self.respond(w, &req, transit, req.csg, nsg, &out).await;
        Step::Continue
    }

    fn first_keys_pending(&self) -> bool {
        self.initiator.is_empty()
    }

    /// InitiatorName, SessionType, TargetName: find the target, check the ACL.
    fn first_keys(
        &mut self,
        keys: &[(String, String)],
        req: &LoginRequest,
    ) -> Result<(), (u8, u8)> {
        let get = |name: &str| keys.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let Some(initiator) = get("InitiatorName") else {
            return Err(status::MISSING_PARAMETER);
        };
        if initiator.is_empty() {
            return Err(status::MISSING_PARAMETER);
        }
        self.initiator = initiator.to_ascii_lowercase();
        if let Some(wait) = self.shared.throttle.blocked(&self.initiator, self.peer_ip) {
            tracing::warn!(
                initiator = %self.initiator,
                address = %self.peer_ip,
                "login refused: too many failed logins; retry in {}s",
                wait.as_secs() + 1
            );
            return Err(status::SERVICE_UNAVAILABLE);
        }
        self.discovery = match get("SessionType").as_deref() {
            None | Some("Normal") => false,
            Some("Discovery") => true,
            Some(_) => return Err(status::INITIATOR_ERROR),
        };
        if req.tsih != 0 {
            // Adding a connection to an existing session: we negotiate MaxConnections=1.
            return match self.shared.session_by_tsih(req.tsih) {
                Some(_) => Err(status::TOO_MANY_CONNECTIONS),
                None => Err(status::SESSION_NOT_FOUND),
            };
        }
        if !self.discovery {
            let Some(name) = get("TargetName") else {
                return Err(status::MISSING_PARAMETER);
            };
            let Some(t) = self.shared.target(&name) else {
                return Err(status::NOT_FOUND);
            };
            if !t.allows(&self.initiator) {
                tracing::info!(initiator = %self.initiator, target = %t.name, "initiator not in the target's ACL");
                return Err(status::NOT_AUTHORIZED);
            }
            if t.chap.is_some() {
                self.auth = Auth::Required;
            }
            self.target = Some(t);
        }
        Ok(())
    }

    /// Security stage: AuthMethod and CHAP (RFC 7143 §12.1.3).
    fn security(
        &mut self,
        keys: &[(String, String)],
        out: &mut Vec<(String, String)>,
    ) -> Result<(), (u8, u8)> {
        let chap_cfg = self.target.as_ref().and_then(|t| t.chap.clone());
        let get = |name: &str| {
            keys.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        for (k, v) in keys {
            match k.as_str() {
                "AuthMethod" => {
                    let offered: Vec<&str> = v.split(',').collect();
                    let pick = if chap_cfg.is_some() {
                        if offered.contains(&"CHAP") {
                            "CHAP"
                        } else {
                            return Err(status::AUTH_FAILED);
                        }
                    } else if offered.contains(&"None") {
                        "None"
                    } else {
                        "Reject"
                    };
                    out.push(("AuthMethod".into(), pick.into()));
                }
                "CHAP_A" => {
                    if chap_cfg.is_none() {
                        return Err(status::AUTH_FAILED);
                    }
                    if !v.split(',').any(|a| a == "5") {
                        out.push(("CHAP_A".into(), "Reject".into()));
                        return Err(status::AUTH_FAILED);
                    }
                    let (id, challenge) = chap::new_challenge();
                    out.push(("CHAP_A".into(), "5".into()));
                    out.push(("CHAP_I".into(), id.to_string()));
                    out.push(("CHAP_C".into(), chap::encode_hex(&challenge)));
                    self.auth = Auth::Challenged { id, challenge };
                }
                "CHAP_N" | "CHAP_R" | "CHAP_I" | "CHAP_C" => {}
                _ => {
                    // Operational keys may ride along in the security stage.
                }
            }
        }
        if let (Some(name), Some(resp)) = (get("CHAP_N"), get("CHAP_R")) {
            let Some(cfg) = chap_cfg else {
                return Err(status::AUTH_FAILED);
            };
            let Auth::Challenged { id, challenge } = &self.auth else {
                return Err(status::AUTH_FAILED);
            };
            let Ok(resp) = chap::decode_binary(resp) else {
                return Err(status::AUTH_FAILED);
            };
            if name != cfg.username || !chap::verify(*id, cfg.secret.as_bytes(), challenge, &resp) {
                return Err(status::AUTH_FAILED);
            }
            // Mutual CHAP: the initiator challenges us.
            match (get("CHAP_I"), get("CHAP_C"), &cfg.mutual) {
                (Some(ci), Some(cc), Some((tuser, tsecret))) => {
                    let Ok(cid) = ci.parse::<u8>() else {
                        return Err(status::AUTH_FAILED);
                    };
                    let Ok(cchal) = chap::decode_binary(cc) else {
                        return Err(status::AUTH_FAILED);
                    };
                    // Refuse a reflected challenge and a shared secret (§12.1.3), and
                    // a challenge shorter than the hash or longer than 1024 bytes.
                    if cchal == *challenge
                        || tsecret == &cfg.secret
                        || cchal.len() < chap::MIN_PEER_CHALLENGE_LEN
                        || cchal.len() > chap::MAX_PEER_CHALLENGE_LEN
                    {
                        return Err(status::AUTH_FAILED);
                    }
                    let r = chap::response(cid, tsecret.as_bytes(), &cchal);
                    out.push(("CHAP_N".into(), tuser.clone()));
                    out.push(("CHAP_R".into(), chap::encode_hex(&r)));
                }
                (Some(_), Some(_), None) => return Err(status::AUTH_FAILED),
                (None, None, Some(_)) => {
                    // We require mutual authentication but the initiator did not ask.
                    return Err(status::AUTH_FAILED);
                }
                (None, None, None) => {}
                // Half a mutual challenge (CHAP_I without CHAP_C or the reverse) is a
                // protocol error, never a one-way login.
                _ => return Err(status::INITIATOR_ERROR),
            }
            self.auth = Auth::Done;
        } else if get("CHAP_R").is_some() || get("CHAP_N").is_some() {
            return Err(status::AUTH_FAILED);
        }
        // Operational keys sent in the security stage are negotiated too.
        let op: Vec<(String, String)> = keys
            .iter()
            .filter(|(k, _)| !k.starts_with("CHAP_") && k != "AuthMethod")
            .cloned()
            .collect();
        if !op.is_empty() {
            match self.neg.respond(&op, self.discovery) {
                Ok(r) => out.extend(r),
                Err(_) => return Err(status::INITIATOR_ERROR),
            }
        }
        Ok(())
    }

    async fn finish(
        &mut self,
        w: &mut OwnedWriteHalf,
        req: &LoginRequest,
        out: Vec<(String, String)>,
        local: SocketAddr,
    ) -> Step {
        let key = SessionKey {
            initiator: self.initiator.clone(),
            isid: req.isid,
            target: self
                .target
                .as_ref()
                .map(|t| t.name.clone())
                .unwrap_or_default(),
        };
        // Session reinstatement (§6.3.5): a new login with the same ISID replaces the
        // old session; wait (bounded) for it to wind down.
        if let Some(old) = self.shared.find_session(&key) {
            tracing::info!(initiator = %key.initiator, isid = %isid_hex(&key.isid), "reinstating session");
            old.kill.cancel();
            for _ in 0..500 {
                if self.shared.find_session(&key).is_none() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let params = self.neg.params().clone();
        let tsih = self.shared.alloc_tsih();
        self.tsih = tsih;
        let initiator_port = format!("{},i,{}", self.initiator, isid_hex(&req.isid));
        let luns = match &self.target {
            Some(t) => t.lun_map_for(&self.initiator, &self.shared.relative_ports()),
            None => scsi::LunMap::new(Arc::new(scsi::TargetInfo {
                name: String::new(),
                port_name: String::new(),
            })),
        };
        let relative_port = self
            .shared
            .portals
            .iter()
            .enumerate()
            .find(|(_, p)| p.addr == local)
            .or_else(|| {
                self.shared
                    .portals
                    .iter()
                    .enumerate()
                    .find(|(_, p)| p.addr.port() == local.port())
            })
            .map(|(i, p)| match p.relative_port {
                0 => i as u16 + 1,
                r => r,
            })
            .unwrap_or(1);
        let nexus = Arc::new(scsi::Nexus {
            id: self.shared.alloc_nexus_id(),
            initiator: initiator_port,
            relative_port,
            port_group: 1,
        });
        let session = Arc::new(Session {
            key,
            tsih,
            target: self.target.clone(),
            luns: arc_swap::ArcSwap::from_pointee(luns),
            nexus,
            window: Mutex::new(CmdWindow::new(self.cmd_sn, self.shared.config.queue_depth)),
            kill: CancellationToken::new(),
            conn_closed: CancellationToken::new(),
            local_addr: local,
        });
        if let Err(why) = self.shared.register(session.clone()) {
            tracing::warn!(initiator = %self.initiator, "{why}");
            self.fail(w, req, status::OUT_OF_RESOURCES).await;
            return Step::Failed;
        }
        self.respond(w, req, true, req.csg, Stage::FullFeature, &out)
            .await;
        let lp = LoginParams {
            digests: Digests {
                header: params.header_digest,
                data: params.data_digest,
            },
            max_send_data: params.initiator_mrdsl,
            max_burst: params.max_burst_length,
            first_burst: params.first_burst_length,
            immediate_data: params.immediate_data,
            initial_r2t: params.initial_r2t,
            max_outstanding_r2t: u32::from(params.max_outstanding_r2t),
        };
        Step::Done(LoginOutcome {
            session,
            params: lp,
            stat_sn: self.stat_sn,
        })
    }

    async fn respond(
        &mut self,
        w: &mut OwnedWriteHalf,
        req: &LoginRequest,
        transit: bool,
        csg: Stage,
        nsg: Stage,
        keys: &[(String, String)],
    ) {
        let data = text::encode(keys);
        let nsg = if transit { nsg } else { Stage::Security };
        self.send(w, req, transit, csg, nsg, status::SUCCESS, &data)
            .await;
    }

    async fn fail(&mut self, w: &mut OwnedWriteHalf, req: &LoginRequest, st: (u8, u8)) {
        self.failed_with = Some(st);
        self.send(w, req, false, req.csg, Stage::Security, st, &[])
            .await;
    }

    #[allow(clippy::too_many_arguments)]
    async fn send(
        &mut self,
        w: &mut OwnedWriteHalf,
        req: &LoginRequest,
        transit: bool,
        csg: Stage,
        nsg: Stage,
        st: (u8, u8),
        data: &[u8],
    ) {
        let mut buf = BytesMut::with_capacity(48 + data.len() + 4);
        let exp_cmd_sn = self.cmd_sn;
        let max_cmd_sn = self
            .cmd_sn
            .wrapping_add(self.shared.config.queue_depth.max(1) - 1);
        LoginResponse {
            transit,
            cont: false,
            csg,
            nsg,
            version_max: 0,
            version_active: 0,
            isid: req.isid,
            tsih: if transit && nsg == Stage::FullFeature {
                self.tsih
            } else {
                0
            },
            itt: req.itt,
            stat_sn: self.stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            status_class: st.0,
            status_detail: st.1,
            data: Bytes::copy_from_slice(data),
        }
        .encode(&mut buf, Digests::NONE);
        self.stat_sn = self.stat_sn.wrapping_add(1);
        if let Err(e) = w.write_all(&buf).await {
            tracing::debug!(error = %e, "login response write failed");
        }
    }
}
