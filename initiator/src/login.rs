//! The login phase, initiator side (RFC 7143 §6, §11.12-13): the security stage with
//! CHAP (one-way or mutual, §12.1.3), operational negotiation, and what the target
//! answered turned into [`NegotiatedParams`] that the full feature phase obeys.
//!
//! We always start in the security stage (`AuthMethod=None` when no CHAP is
//! configured): every target accepts that, and a target that requires CHAP then
//! fails the login with a clear "authentication failed" instead of a protocol error.

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use iscsi_wire::chap;
use iscsi_wire::digest::Digests;
use iscsi_wire::negotiate::{MAX_LENGTH, MIN_LENGTH};
use iscsi_wire::pdu::{self, LoginRequest, LoginResponse, Request, Response, Stage};
use iscsi_wire::text::{self, TextPairs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::InitiatorConfig;
use crate::error::{InitiatorError, LoginError};

/// ITT of our login requests (login has its own task; any value is fine).
const LOGIN_ITT: u32 = 0;
/// Round trips we allow in one stage before calling the target broken.
const MAX_ROUNDS: usize = 8;
/// Largest text data we accept in one login sequence.
const MAX_LOGIN_TEXT: usize = 64 * 1024;

/// The operational values in force after login: what the target answered, never
/// more than we offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiatedParams {
    pub digests: Digests,
    /// The target's MaxRecvDataSegmentLength: no data segment we send is longer.
    pub target_mrdsl: u32,
    /// Ours: what the target may send us per PDU.
    pub our_mrdsl: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u16,
}

impl NegotiatedParams {
    /// Bytes of unsolicited data (immediate plus unsolicited Data-Out) a write of
    /// `len` bytes may carry (RFC 7143 §13.14).
    pub fn unsolicited_len(&self, len: u32) -> u32 {
        if self.initial_r2t && !self.immediate_data {
            0
        } else if self.initial_r2t {
            // Immediate data only: one PDU.
            len.min(self.first_burst).min(self.target_mrdsl)
        } else {
            len.min(self.first_burst)
        }
    }

    /// Of those, the bytes that ride in the command PDU itself.
    pub fn immediate_len(&self, len: u32) -> u32 {
        if self.immediate_data {
            self.unsolicited_len(len).min(self.target_mrdsl)
        } else {
            0
        }
    }
}

/// A finished login: the socket in full feature phase and the session state.
pub(crate) struct LoggedIn {
    pub stream: TcpStream,
    /// Bytes read past the final login response (normally empty).
    pub leftover: BytesMut,
    pub params: NegotiatedParams,
    pub tsih: u16,
    pub cmd_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub target_alias: Option<String>,
}

/// Where a login ended up.
pub(crate) enum LoginOutcome {
    Done(Box<LoggedIn>),
    /// "Target moved": try this portal instead.
    Redirect(SocketAddr),
}

struct Exchange<'a> {
    cfg: &'a InitiatorConfig,
    portal: SocketAddr,
    stream: TcpStream,
    rbuf: BytesMut,
    isid: [u8; 6],
    cmd_sn: u32,
    exp_stat_sn: u32,
    /// Every key the target sent, last value wins.
    received: HashMap<String, String>,
    last: Option<LoginResponse>,
}

/// Logs in over `stream` with ISID `isid` (TSIH 0: a new session, or the
/// reinstatement of an old one with the same ISID, RFC 7143 §6.3.5).
pub(crate) async fn login(
    cfg: &InitiatorConfig,
    portal: SocketAddr,
    stream: TcpStream,
    isid: [u8; 6],
) -> Result<LoginOutcome, InitiatorError> {
    let cmd_sn: u32 = rand::random::<u32>() & 0x7fff_ffff;
    let mut x = Exchange {
        cfg,
        portal,
        stream,
        rbuf: BytesMut::with_capacity(8192),
        isid,
        cmd_sn,
        exp_stat_sn: 0,
        received: HashMap::new(),
        last: None,
    };
    if let Some(addr) = x.security().await? {
        return Ok(LoginOutcome::Redirect(addr));
    }
    if let Some(addr) = x.operational().await? {
        return Ok(LoginOutcome::Redirect(addr));
    }
    let params = x.negotiated()?;
    let last = x.last.take().expect("a login response was received");
    Ok(LoginOutcome::Done(Box::new(LoggedIn {
        stream: x.stream,
        leftover: x.rbuf,
        params,
        tsih: last.tsih,
        cmd_sn: x.cmd_sn,
        exp_cmd_sn: last.exp_cmd_sn,
        max_cmd_sn: last.max_cmd_sn,
        exp_stat_sn: last.stat_sn.wrapping_add(1),
        target_alias: x.received.get("TargetAlias").cloned(),
    })))
}

impl Exchange<'_> {
    fn protocol(&self, why: impl Into<String>) -> InitiatorError {
        LoginError::Protocol {
            portal: self.portal,
            target: self.cfg.target_name.clone(),
            why: why.into(),
        }
        .into()
    }

    fn chap_error(&self, why: impl Into<String>) -> InitiatorError {
        LoginError::Chap {
            portal: self.portal,
            target: self.cfg.target_name.clone(),
            why: why.into(),
        }
        .into()
    }

    fn io(&self, what: &'static str, e: std::io::Error) -> InitiatorError {
        InitiatorError::Io {
            portal: self.portal,
            what,
            kind: e.kind(),
        }
    }

    /// Sends one login request and returns the complete response text (following the
    /// C bit), or a redirect. Status failures become [`LoginError::Refused`].
    async fn round(
        &mut self,
        csg: Stage,
        nsg: Stage,
        transit: bool,
        keys: &TextPairs,
    ) -> Result<Result<(LoginResponse, TextPairs), SocketAddr>, InitiatorError> {
        let data = keys.to_bytes();
        let mut text_buf: Vec<u8> = Vec::new();
        // A request text longer than 8192 bytes would need the C bit; ours never is.
        self.send(csg, nsg, transit, data).await?;
        loop {
            let resp = self.recv().await?;
            if resp.status_class != 0 {
                if resp.status_class == 1 {
                    let keys = TextPairs::parse(&resp.data).unwrap_or_default();
                    if let Some(addr) = keys.get("TargetAddress").and_then(parse_target_address) {
                        tracing::info!(target = %self.cfg.target_name, from = %self.portal, to = %addr, "login redirected");
                        return Ok(Err(addr));
                    }
                }
                return Err(LoginError::Refused {
                    portal: self.portal,
                    target: self.cfg.target_name.clone(),
                    class: resp.status_class,
                    detail: resp.status_detail,
                }
                .into());
            }
            if resp.isid != self.isid {
                return Err(self.protocol("login response for another ISID"));
            }
            text_buf.extend_from_slice(&resp.data);
            if text_buf.len() > MAX_LOGIN_TEXT {
                return Err(self.protocol("login response text too long"));
            }
            if resp.cont {
                // The target has more text: ask for it with an empty request
                // (RFC 7143 §6.1, the C bit).
                self.send(csg, nsg, false, Bytes::new()).await?;
                continue;
            }
            let pairs = TextPairs::parse(&text_buf)
                .map_err(|e| self.protocol(format!("malformed login text: {e}")))?;
            for (k, v) in pairs.iter() {
                self.received.insert(k.to_string(), v.to_string());
            }
            self.last = Some(resp.clone());
            return Ok(Ok((resp, pairs)));
        }
    }

    async fn send(
        &mut self,
        csg: Stage,
        nsg: Stage,
        transit: bool,
        data: Bytes,
    ) -> Result<(), InitiatorError> {
        let req = Request::Login(LoginRequest {
            transit,
            cont: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: self.isid,
            tsih: 0,
            itt: LOGIN_ITT,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data,
        });
        let mut buf = BytesMut::new();
        req.encode(&mut buf, Digests::NONE);
        self.stream
            .write_all(&buf)
            .await
            .map_err(|e| self.io("sending a login request", e))
    }

    async fn recv(&mut self) -> Result<LoginResponse, InitiatorError> {
        let max = self.cfg.max_recv_data_segment.max(8192);
        loop {
            match pdu::decode_frame(&mut self.rbuf, Digests::NONE, max) {
                Ok(Some(raw)) => {
                    let resp = raw
                        .parse_response()
                        .map_err(|e| self.protocol(format!("bad PDU during login: {e}")))?;
                    return match resp {
                        Response::Login(l) => {
                            if l.version_active != 0 {
                                return Err(self.protocol(format!(
                                    "target chose iSCSI version {}, we speak 0",
                                    l.version_active
                                )));
                            }
                            self.exp_stat_sn = l.stat_sn.wrapping_add(1);
                            Ok(l)
                        }
                        Response::Reject(r) => Err(self.protocol(format!(
                            "target rejected the login request (reason {:#04x})",
                            r.reason
                        ))),
                        other => {
                            Err(self
                                .protocol(format!("unexpected {:?} during login", other.opcode())))
                        }
                    };
                }
                Ok(None) => {}
                Err(e) => return Err(self.protocol(format!("cannot frame a login PDU: {e}"))),
            }
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| self.io("reading a login response", e))?;
            if n == 0 {
                return Err(self.io(
                    "reading a login response",
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
        }
    }

    /// Security stage. `Some(addr)` for a redirect.
    async fn security(&mut self) -> Result<Option<SocketAddr>, InitiatorError> {
        let chap_cfg = self.cfg.chap.clone();
        let mut keys = TextPairs::new();
        keys.push("InitiatorName", self.cfg.initiator_name.clone());
        keys.push("SessionType", "Normal");
        keys.push("TargetName", self.cfg.target_name.clone());
        let offer = match &chap_cfg {
            None => "None",
            // With mutual CHAP the target must authenticate: do not offer None.
            Some(c) if c.mutual.is_some() => "CHAP",
            Some(_) => "CHAP,None",
        };
        keys.push("AuthMethod", offer);
        let (mut resp, pairs) = match self
            .round(
                Stage::Security,
                Stage::Operational,
                chap_cfg.is_none(),
                &keys,
            )
            .await?
        {
            Ok(r) => r,
            Err(addr) => return Ok(Some(addr)),
        };
        let chosen = pairs.get("AuthMethod").unwrap_or("None").to_string();
        match (chosen.as_str(), &chap_cfg) {
            ("None", None) => {}
            ("None", Some(c)) if c.mutual.is_none() => {
                tracing::info!(target = %self.cfg.target_name, "target chose AuthMethod=None; CHAP not used");
            }
            ("None", Some(_)) => {
                return Err(
                    self.chap_error("the target declined CHAP, but mutual CHAP is configured")
                )
            }
            ("CHAP", Some(c)) => {
                let c = c.clone();
                resp = match self.chap(&c).await? {
                    Ok(r) => r,
                    Err(addr) => return Ok(Some(addr)),
                };
            }
            (other, _) => {
                return Err(self.chap_error(format!(
                    "the target answered AuthMethod={other} to our offer {offer}"
                )))
            }
        }
        // Move on to the operational stage, asking again if the target did not.
        for _ in 0..MAX_ROUNDS {
            if resp.transit {
                if resp.nsg != Stage::Operational {
                    return Err(self.protocol(
                        "target left the security stage for a stage we did not ask for",
                    ));
                }
                return Ok(None);
            }
            resp = match self
                .round(Stage::Security, Stage::Operational, true, &TextPairs::new())
                .await?
            {
                Ok((r, _)) => r,
                Err(addr) => return Ok(Some(addr)),
            };
        }
        Err(self.protocol("target never left the security stage"))
    }

    /// CHAP_A / CHAP_I+CHAP_C / CHAP_N+CHAP_R exchange (RFC 7143 §12.1.3).
    async fn chap(
        &mut self,
        c: &crate::config::ChapCredentials,
    ) -> Result<Result<LoginResponse, SocketAddr>, InitiatorError> {
        let mut a = TextPairs::new();
        a.push("CHAP_A", chap::CHAP_MD5.to_string());
        let pairs = match self
            .round(Stage::Security, Stage::Operational, false, &a)
            .await?
        {
            Ok((_, p)) => p,
            Err(addr) => return Ok(Err(addr)),
        };
        if pairs.get("CHAP_A") != Some("5") {
            return Err(self.chap_error(format!(
                "the target chose CHAP_A={}; only MD5 (5) is supported",
                pairs.get("CHAP_A").unwrap_or("(none)")
            )));
        }
        let (Some(id), Some(challenge)) = (pairs.get("CHAP_I"), pairs.get("CHAP_C")) else {
            return Err(self.chap_error("the target sent no CHAP_I/CHAP_C challenge"));
        };
        let response = chap::initiator_response(id, challenge, c.secret.as_bytes())
            .map_err(|e| self.chap_error(format!("bad challenge from the target: {e}")))?;
        let their_challenge = chap::decode_binary(challenge).unwrap_or_default();
        let mut n = TextPairs::new();
        n.push("CHAP_N", c.username.clone());
        n.push("CHAP_R", response);
        let mine = c.mutual.as_ref().map(|_| {
            // A fresh challenge that is not the target's own (reflection, §12.1.3).
            loop {
                let ch = chap::ChapChallenge::generate();
                if ch.challenge != their_challenge {
                    break ch;
                }
            }
        });
        if let Some(ch) = &mine {
            n.extend(ch.to_pairs());
        }
        let (resp, pairs) = match self
            .round(Stage::Security, Stage::Operational, true, &n)
            .await?
        {
            Ok(r) => r,
            Err(addr) => return Ok(Err(addr)),
        };
        if let (Some(ch), Some((tuser, tsecret))) = (&mine, &c.mutual) {
            let name = pairs.get("CHAP_N");
            let Some(r) = pairs.get("CHAP_R") else {
                return Err(self.chap_error("the target did not answer our mutual CHAP challenge"));
            };
            if name != Some(tuser.as_str()) {
                return Err(self.chap_error(format!(
                    "the target answered as `{}`, expected `{tuser}`",
                    name.unwrap_or("")
                )));
            }
            if ch.verify(tsecret.as_bytes(), r).is_err() {
                return Err(self.chap_error(
                    "the target's CHAP response is wrong: it does not know the mutual secret",
                ));
            }
        }
        Ok(Ok(resp))
    }

    /// Our proposals for the operational stage.
    fn proposals(&self) -> TextPairs {
        let c = self.cfg;
        let digest = |on: bool| if on { "CRC32C,None" } else { "None" };
        let yes = |b: bool| if b { "Yes" } else { "No" };
        let mut p = TextPairs::new();
        p.push("HeaderDigest", digest(c.header_digest));
        p.push("DataDigest", digest(c.data_digest));
        p.push(
            "MaxRecvDataSegmentLength",
            clamp_len(c.max_recv_data_segment).to_string(),
        );
        p.push("MaxBurstLength", clamp_len(c.max_burst).to_string());
        p.push(
            "FirstBurstLength",
            clamp_len(c.first_burst)
                .min(clamp_len(c.max_burst))
                .to_string(),
        );
        p.push("InitialR2T", yes(c.initial_r2t));
        p.push("ImmediateData", yes(c.immediate_data));
        p.push(
            "MaxOutstandingR2T",
            c.max_outstanding_r2t.max(1).to_string(),
        );
        p.push("MaxConnections", "1");
        p.push("ErrorRecoveryLevel", "0");
        p.push("DataPDUInOrder", "Yes");
        p.push("DataSequenceInOrder", "Yes");
        p.push("DefaultTime2Wait", "2");
        p.push("DefaultTime2Retain", "0");
        p
    }

    /// Operational stage: propose, answer what the target proposes, reach full feature.
    async fn operational(&mut self) -> Result<Option<SocketAddr>, InitiatorError> {
        let proposals = self.proposals();
        let offered: Vec<String> = proposals.iter().map(|(k, _)| k.to_string()).collect();
        let mut keys = proposals;
        for _ in 0..MAX_ROUNDS {
            let (resp, pairs) = match self
                .round(Stage::Operational, Stage::FullFeature, true, &keys)
                .await?
            {
                Ok(r) => r,
                Err(addr) => return Ok(Some(addr)),
            };
            // Keys the target proposed on its own need an answer (RFC 7143 §6.2).
            keys = TextPairs::new();
            for (k, v) in pairs.iter() {
                if offered.iter().any(|o| o == k) || is_declarative(k) {
                    continue;
                }
                keys.push(k.to_string(), self.answer(k, v));
            }
            if resp.transit {
                if resp.nsg != Stage::FullFeature {
                    return Err(self.protocol("target moved to a stage we did not ask for"));
                }
                if !keys.is_empty() {
                    tracing::debug!(target = %self.cfg.target_name, ?keys, "target proposed keys in its final login response; ignored");
                }
                return Ok(None);
            }
        }
        Err(self.protocol("operational negotiation did not finish"))
    }

    /// Our answer to a key the target proposed.
    fn answer(&self, key: &str, value: &str) -> String {
        let c = self.cfg;
        let num = |ours: u64| match text::parse_numeric(value) {
            Some(v) => v.min(ours).to_string(),
            None => "Reject".to_string(),
        };
        let yes = |b: bool| if b { "Yes" } else { "No" }.to_string();
        match key {
            "MaxBurstLength" => num(u64::from(clamp_len(c.max_burst))),
            "FirstBurstLength" => num(u64::from(clamp_len(c.first_burst))),
            "MaxOutstandingR2T" => num(u64::from(c.max_outstanding_r2t.max(1))),
            "MaxConnections" => num(1),
            "ErrorRecoveryLevel" => num(0),
            "DefaultTime2Retain" => num(0),
            "DefaultTime2Wait" => match text::parse_numeric(value) {
                Some(v) => v.clamp(2, 3600).to_string(),
                None => "Reject".into(),
            },
            // OR functions: "Yes" wins.
            "InitialR2T" => yes(c.initial_r2t || value == "Yes"),
            "DataPDUInOrder" | "DataSequenceInOrder" => yes(true),
            // AND function.
            "ImmediateData" => yes(c.immediate_data && value == "Yes"),
            "HeaderDigest" | "DataDigest" => {
                let ours = if key == "HeaderDigest" {
                    c.header_digest
                } else {
                    c.data_digest
                };
                value
                    .split(',')
                    .find(|v| *v == "None" || (ours && *v == "CRC32C"))
                    .unwrap_or("Reject")
                    .to_string()
            }
            "IFMarker" | "OFMarker" => "No".into(),
            _ => "NotUnderstood".into(),
        }
    }

    /// Turns the target's answers into the values in force.
    fn negotiated(&self) -> Result<NegotiatedParams, InitiatorError> {
        let c = self.cfg;
        let get = |k: &str| self.received.get(k).map(String::as_str);
        let num = |k: &str, default: u32| -> u32 {
            match get(k).and_then(text::parse_numeric) {
                Some(v) => u32::try_from(v).unwrap_or(u32::MAX),
                None => default,
            }
        };
        let digest = |k: &str, ours: bool| -> Result<bool, InitiatorError> {
            match get(k) {
                None | Some("None") | Some("Reject") | Some("NotUnderstood") => Ok(false),
                Some("CRC32C") if ours => Ok(true),
                Some(v) => {
                    Err(self.protocol(format!("target chose {k}={v}, which we did not offer")))
                }
            }
        };
        let target_mrdsl = num("MaxRecvDataSegmentLength", 8192);
        if target_mrdsl < MIN_LENGTH {
            return Err(self.protocol(format!(
                "target declared MaxRecvDataSegmentLength={target_mrdsl}, below the minimum 512"
            )));
        }
        // Results can only be at or below what we offered; a target that answers
        // more is held to our offer. Absent answers leave the RFC 7143 defaults.
        let max_burst = num("MaxBurstLength", 262_144)
            .min(clamp_len(c.max_burst))
            .max(MIN_LENGTH);
        let first_burst = num("FirstBurstLength", 65_536)
            .min(clamp_len(c.first_burst))
            .min(max_burst)
            .max(MIN_LENGTH.min(max_burst));
        let yes = |k: &str, default: bool| match get(k) {
            Some("Yes") => true,
            Some("No") => false,
            _ => default,
        };
        let initial_r2t = yes("InitialR2T", true) || c.initial_r2t;
        let immediate_data = yes("ImmediateData", true) && c.immediate_data;
        let max_outstanding_r2t =
            num("MaxOutstandingR2T", 1).clamp(1, u32::from(c.max_outstanding_r2t.max(1))) as u16;
        if let Some(v) = get("ErrorRecoveryLevel").and_then(text::parse_numeric) {
            if v != 0 {
                return Err(
                    self.protocol(format!("target chose ErrorRecoveryLevel={v}; we offered 0"))
                );
            }
        }
        Ok(NegotiatedParams {
            digests: Digests {
                header: digest("HeaderDigest", c.header_digest)?,
                data: digest("DataDigest", c.data_digest)?,
            },
            target_mrdsl: target_mrdsl.min(MAX_LENGTH),
            our_mrdsl: clamp_len(c.max_recv_data_segment),
            max_burst,
            first_burst,
            initial_r2t,
            immediate_data,
            max_outstanding_r2t,
        })
    }
}

fn clamp_len(v: u32) -> u32 {
    v.clamp(MIN_LENGTH, MAX_LENGTH)
}

/// Keys the target declares (no answer expected).
fn is_declarative(key: &str) -> bool {
    matches!(
        key,
        "MaxRecvDataSegmentLength"
            | "TargetAlias"
            | "TargetPortalGroupTag"
            | "TargetAddress"
            | "TargetName"
            | "AuthMethod"
    ) || key.starts_with("X-")
        || key.starts_with("X#")
}

/// Parses `TargetAddress=host:port,tpgt` (RFC 7143 §13.9) into a socket address.
/// Host names are not resolved here (IP literals only).
pub(crate) fn parse_target_address(v: &str) -> Option<SocketAddr> {
    let addr = v.split(',').next()?;
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Some(a);
    }
    // Without a port: the well-known 3260.
    let ip = addr.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, 3260))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_address() {
        assert_eq!(
            parse_target_address("10.0.0.1:3261,1"),
            Some("10.0.0.1:3261".parse().unwrap())
        );
        assert_eq!(
            parse_target_address("[::1]:3260,2"),
            Some("[::1]:3260".parse().unwrap())
        );
        assert_eq!(
            parse_target_address("10.0.0.2"),
            Some("10.0.0.2:3260".parse().unwrap())
        );
        assert_eq!(parse_target_address("array.example:3260,1"), None);
    }

    #[test]
    fn unsolicited_lengths() {
        let mut p = NegotiatedParams {
            digests: Digests::NONE,
            target_mrdsl: 8192,
            our_mrdsl: 65536,
            max_burst: 262144,
            first_burst: 65536,
            initial_r2t: false,
            immediate_data: true,
            max_outstanding_r2t: 1,
        };
        assert_eq!(p.unsolicited_len(1 << 20), 65536);
        assert_eq!(p.immediate_len(1 << 20), 8192);
        assert_eq!(p.immediate_len(4096), 4096);
        p.initial_r2t = true;
        assert_eq!(p.unsolicited_len(1 << 20), 8192);
        p.immediate_data = false;
        assert_eq!(p.unsolicited_len(1 << 20), 0);
        assert_eq!(p.immediate_len(1 << 20), 0);
        p.initial_r2t = false;
        assert_eq!(p.unsolicited_len(1 << 20), 65536);
        assert_eq!(p.immediate_len(1 << 20), 0);
    }
}
