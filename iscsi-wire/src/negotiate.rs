//! Operational parameter negotiation, target side (RFC 7143 §6 and §13).
//!
//! A [`Negotiator`] lives for one login (and later for text negotiation in
//! full feature phase). For each login/text request the caller hands it the
//! initiator's keys ([`Negotiator::process`]) and sends back the keys it
//! returns, adding [`Negotiator::target_offers`] to the first response in
//! which it wants to declare or propose its own values. The caller may move
//! to the next stage only when [`Negotiator::is_settled`].
//!
//! Security keys (`AuthMethod`, `CHAP_*`, …) and `SendTargets` are left to
//! the login state machine ([`crate::chap`]) and the discovery code; use
//! [`classify`] to tell them apart.

use std::collections::{HashMap, HashSet};

use crate::digest::Digests;
use crate::text::{parse_numeric, TextPairs};

/// Largest MaxRecvDataSegmentLength, MaxBurstLength, FirstBurstLength (2^24-1).
pub const MAX_LENGTH: u32 = 0x00ff_ffff;
/// Smallest of those lengths.
pub const MIN_LENGTH: u32 = 512;

const REJECT: &str = "Reject";
const NOT_UNDERSTOOD: &str = "NotUnderstood";
const IRRELEVANT: &str = "Irrelevant";

/// Session type (RFC 7143 §13.21).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SessionType {
    #[default]
    Normal,
    Discovery,
}

/// Digest algorithms (RFC 7143 §13.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestAlg {
    None,
    Crc32c,
}

impl DigestAlg {
    fn parse(s: &str) -> Option<DigestAlg> {
        match s {
            "None" => Some(DigestAlg::None),
            "CRC32C" => Some(DigestAlg::Crc32c),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlg::None => "None",
            DigestAlg::Crc32c => "CRC32C",
        }
    }
}

/// The negotiated parameters of a session and connection, starting at the
/// RFC 7143 §13 defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    pub session_type: SessionType,
    pub header_digest: bool,
    pub data_digest: bool,
    /// The data segment limit WE declared (what we accept). Default 8192.
    pub max_recv_data_segment_length: u32,
    /// The data segment limit the INITIATOR declared: limits what we send
    /// (Data-In, text and login responses). Default 8192.
    pub initiator_mrdsl: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u16,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u8,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub max_connections: u16,
    /// Markers are obsolete (RFC 7143 §13.26) and always off.
    pub ifmarker: bool,
    pub ofmarker: bool,
    pub protocol_level: u8,
    pub initiator_name: Option<String>,
    pub initiator_alias: Option<String>,
    pub target_name: Option<String>,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            session_type: SessionType::Normal,
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length: 8192,
            initiator_mrdsl: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            default_time2wait: 2,
            default_time2retain: 20,
            max_connections: 1,
            ifmarker: false,
            ofmarker: false,
            protocol_level: 1,
            initiator_name: None,
            initiator_alias: None,
            target_name: None,
        }
    }
}

impl SessionParams {
    /// The digests to use once login completes.
    pub fn digests(&self) -> Digests {
        Digests {
            header: self.header_digest,
            data: self.data_digest,
        }
    }
}

/// What the target is willing to accept and would like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPolicy {
    /// Acceptable HeaderDigest values; the initiator's order decides.
    pub header_digests: Vec<DigestAlg>,
    pub data_digests: Vec<DigestAlg>,
    /// Our MaxRecvDataSegmentLength, always declared.
    pub max_recv_data_segment_length: u32,
    /// Upper bound for MaxBurstLength.
    pub max_burst_length: u32,
    /// Upper bound for FirstBurstLength.
    pub first_burst_length: u32,
    /// True if we insist on InitialR2T=Yes; false lets the initiator choose No.
    pub initial_r2t: bool,
    /// False to refuse immediate data.
    pub immediate_data: bool,
    pub max_outstanding_r2t: u16,
    /// True if we need Data PDUs in order.
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub max_error_recovery_level: u8,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub max_connections: u16,
    pub protocol_level: u8,
    /// Declared as TargetAlias in normal sessions when set.
    pub target_alias: Option<String>,
    /// Declared as TargetPortalGroupTag when set.
    pub target_portal_group_tag: Option<u16>,
}

impl Default for TargetPolicy {
    fn default() -> Self {
        TargetPolicy {
            header_digests: vec![DigestAlg::None, DigestAlg::Crc32c],
            data_digests: vec![DigestAlg::None, DigestAlg::Crc32c],
            max_recv_data_segment_length: 256 * 1024,
            max_burst_length: 1024 * 1024,
            first_burst_length: 64 * 1024,
            initial_r2t: false,
            immediate_data: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            max_error_recovery_level: 0,
            default_time2wait: 2,
            default_time2retain: 20,
            max_connections: 1,
            protocol_level: 1,
            target_alias: None,
            target_portal_group_tag: None,
        }
    }
}

/// Kinds of keys, for routing them to the right handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyClass {
    /// AuthMethod and the CHAP/SRP/Kerberos/SPKM keys (RFC 7143 §12).
    Security,
    /// Negotiated operational keys (RFC 7143 §13).
    Operational,
    /// Declarations (names, aliases, addresses, MaxRecvDataSegmentLength).
    Declarative,
    /// SendTargets (text requests in a discovery session, RFC 7143 §13.3).
    SendTargets,
    /// Anything else: answer NotUnderstood.
    Unknown,
}

/// Classifies a key name.
pub fn classify(key: &str) -> KeyClass {
    match key {
        "AuthMethod" => KeyClass::Security,
        k if k.starts_with("CHAP_")
            || k.starts_with("SRP_")
            || k.starts_with("KRB_")
            || k.starts_with("SPKM_")
            || k == "TargetAuth" =>
        {
            KeyClass::Security
        }
        "SendTargets" => KeyClass::SendTargets,
        "InitiatorName"
        | "InitiatorAlias"
        | "TargetName"
        | "TargetAlias"
        | "TargetAddress"
        | "TargetPortalGroupTag"
        | "SessionType"
        | "MaxRecvDataSegmentLength" => KeyClass::Declarative,
        "HeaderDigest"
        | "DataDigest"
        | "MaxConnections"
        | "InitialR2T"
        | "ImmediateData"
        | "MaxBurstLength"
        | "FirstBurstLength"
        | "DefaultTime2Wait"
        | "DefaultTime2Retain"
        | "MaxOutstandingR2T"
        | "DataPDUInOrder"
        | "DataSequenceInOrder"
        | "ErrorRecoveryLevel"
        | "IFMarker"
        | "OFMarker"
        | "IFMarkInt"
        | "OFMarkInt"
        | "TaskReporting"
        | "iSCSIProtocolLevel" => KeyClass::Operational,
        _ => KeyClass::Unknown,
    }
}

/// Keys that may only be negotiated on the leading connection (LO).
fn leading_only(key: &str) -> bool {
    matches!(
        key,
        "MaxConnections"
            | "InitialR2T"
            | "ImmediateData"
            | "MaxBurstLength"
            | "FirstBurstLength"
            | "DefaultTime2Wait"
            | "DefaultTime2Retain"
            | "MaxOutstandingR2T"
            | "DataPDUInOrder"
            | "DataSequenceInOrder"
            | "ErrorRecoveryLevel"
            | "TaskReporting"
            | "iSCSIProtocolLevel"
    )
}

/// Keys that are irrelevant in a discovery session (RFC 7143 §13).
fn irrelevant_in_discovery(key: &str) -> bool {
    matches!(
        key,
        "MaxConnections"
            | "InitialR2T"
            | "ImmediateData"
            | "MaxBurstLength"
            | "FirstBurstLength"
            | "MaxOutstandingR2T"
            | "DataPDUInOrder"
            | "DataSequenceInOrder"
    )
}

/// Keys that may be (re)negotiated in full feature phase (use "ALL" or "FFPO").
fn allowed_in_full_feature(key: &str) -> bool {
    matches!(
        key,
        "MaxRecvDataSegmentLength" | "InitiatorAlias" | "TargetAlias" | "SendTargets"
    )
}

/// How a numerical key combines offer and our limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumRule {
    Min,
    Max,
}

/// (range, rule) of the negotiated numerical keys (RFC 7143 §13).
fn numeric_key(key: &str) -> Option<(u32, u32, NumRule)> {
    Some(match key {
        "MaxBurstLength" | "FirstBurstLength" => (MIN_LENGTH, MAX_LENGTH, NumRule::Min),
        "DefaultTime2Wait" => (0, 3600, NumRule::Max),
        "DefaultTime2Retain" => (0, 3600, NumRule::Min),
        "MaxOutstandingR2T" | "MaxConnections" => (1, 65535, NumRule::Min),
        "ErrorRecoveryLevel" => (0, 2, NumRule::Min),
        "iSCSIProtocolLevel" => (0, 31, NumRule::Min),
        _ => return None,
    })
}

/// How a boolean key combines offer and ours.
fn bool_key(key: &str) -> Option<bool /* true = OR, false = AND */> {
    match key {
        "InitialR2T" | "DataPDUInOrder" | "DataSequenceInOrder" => Some(true),
        "ImmediateData" => Some(false),
        _ => None,
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

fn parse_in_range(v: &str, lo: u32, hi: u32) -> Option<u32> {
    parse_numeric(v)
        .filter(|n| (u64::from(lo)..=u64::from(hi)).contains(n))
        .map(|n| n as u32)
}

/// Negotiation failures that end the login (or text exchange).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("key {0} was negotiated twice (RFC 7143 §6.2: a protocol error)")]
    DuplicateKey(String),
    #[error("answer {key}={value} does not fit what the target offered")]
    BadAnswer { key: String, value: String },
    #[error("SessionType `{0}` is not Normal or Discovery")]
    BadSessionType(String),
}

impl NegotiationError {
    /// The login Status-Class/Status-Detail to fail the login with.
    pub fn login_status(&self) -> (u8, u8) {
        match self {
            NegotiationError::BadSessionType(_) => {
                crate::pdu::login_status::SESSION_TYPE_NOT_SUPPORTED
            }
            _ => crate::pdu::login_status::INITIATOR_ERROR,
        }
    }
}

/// Target-side negotiation state for one login or text sequence.
#[derive(Debug, Clone)]
pub struct Negotiator {
    policy: TargetPolicy,
    params: SessionParams,
    leading: bool,
    full_feature: bool,
    /// Keys the initiator has offered or answered in this sequence.
    seen: HashSet<String>,
    /// Our offers waiting for an answer: key → the value we offered.
    pending: HashMap<&'static str, String>,
    declared: bool,
}

impl Negotiator {
    /// A negotiator for a login on the leading connection of a session.
    pub fn new(policy: TargetPolicy) -> Negotiator {
        Negotiator::with_leading(policy, true)
    }

    /// A negotiator for a connection added to an existing session: leading
    /// only (LO) keys are refused.
    pub fn new_secondary(policy: TargetPolicy) -> Negotiator {
        Negotiator::with_leading(policy, false)
    }

    fn with_leading(policy: TargetPolicy, leading: bool) -> Negotiator {
        Negotiator {
            policy,
            params: SessionParams::default(),
            leading,
            full_feature: false,
            seen: HashSet::new(),
            pending: HashMap::new(),
            declared: false,
        }
    }

    /// The parameters negotiated so far.
    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    pub fn policy(&self) -> &TargetPolicy {
        &self.policy
    }

    /// True when none of our offers is awaiting an answer, so the stage may
    /// change (RFC 7143 §6.3).
    pub fn is_settled(&self) -> bool {
        self.pending.is_empty()
    }

    /// Switches to full feature phase text negotiation: only keys allowed
    /// there may be renegotiated, each once per text sequence.
    pub fn start_full_feature(&mut self) {
        self.full_feature = true;
        self.new_sequence();
    }

    /// Starts a new text negotiation sequence (a new ITT, after the previous
    /// one completed): keys may be offered again.
    pub fn new_sequence(&mut self) {
        self.seen.clear();
        self.pending.clear();
    }

    /// Handles the initiator's keys from one login or text request and
    /// returns our answers. Security keys and SendTargets are skipped.
    pub fn process(&mut self, keys: &TextPairs) -> Result<TextPairs, NegotiationError> {
        let mut out = TextPairs::new();
        // SessionType decides what other keys mean; handle it first.
        if let Some(v) = keys.get("SessionType") {
            self.offer("SessionType", v, &mut out)?;
        }
        for (k, v) in keys.iter() {
            if k != "SessionType" {
                self.offer(k, v, &mut out)?;
            }
        }
        Ok(out)
    }

    /// [`Negotiator::process`] over plain pairs. `discovery` marks a
    /// discovery session when SessionType was consumed by the caller.
    pub fn respond(
        &mut self,
        keys: &[(String, String)],
        discovery: bool,
    ) -> Result<Vec<(String, String)>, NegotiationError> {
        if discovery {
            self.params.session_type = SessionType::Discovery;
        }
        let mut pairs = TextPairs::new();
        for (k, v) in keys {
            if pairs.get(k).is_some() {
                return Err(NegotiationError::DuplicateKey(k.clone()));
            }
            pairs.push(k.as_str(), v.as_str());
        }
        Ok(self.process(&pairs)?.into_iter().collect())
    }

    /// [`Negotiator::target_offers`] as plain pairs.
    pub fn final_declarations(&mut self, discovery: bool) -> Vec<(String, String)> {
        if discovery {
            self.params.session_type = SessionType::Discovery;
        }
        self.target_offers().into_iter().collect()
    }

    fn offer(
        &mut self,
        key: &str,
        value: &str,
        out: &mut TextPairs,
    ) -> Result<(), NegotiationError> {
        let class = classify(key);
        if matches!(class, KeyClass::Security | KeyClass::SendTargets) {
            return Ok(());
        }
        if let Some((k, ours)) = self.pending.remove_entry(key) {
            self.seen.insert(k.to_string());
            return self.answer(k, &ours, value);
        }
        if matches!(value, REJECT | NOT_UNDERSTOOD | IRRELEVANT) {
            // An answer to something we never offered: nothing to do.
            return Ok(());
        }
        if !self.seen.insert(key.to_string()) {
            return Err(NegotiationError::DuplicateKey(key.to_string()));
        }
        if class == KeyClass::Unknown {
            out.push(key, NOT_UNDERSTOOD);
            return Ok(());
        }
        if self.full_feature && !allowed_in_full_feature(key) {
            out.push(key, REJECT);
            return Ok(());
        }
        if !self.leading && leading_only(key) {
            out.push(key, REJECT);
            return Ok(());
        }
        if self.params.session_type == SessionType::Discovery && irrelevant_in_discovery(key) {
            out.push(key, IRRELEVANT);
            return Ok(());
        }
        match key {
            "SessionType" => {
                self.params.session_type = match value {
                    "Normal" => SessionType::Normal,
                    "Discovery" => SessionType::Discovery,
                    _ => return Err(NegotiationError::BadSessionType(value.to_string())),
                };
            }
            "InitiatorName" => self.params.initiator_name = Some(value.to_string()),
            "InitiatorAlias" => self.params.initiator_alias = Some(value.to_string()),
            "TargetName" => self.params.target_name = Some(value.to_string()),
            // Only a target declares these.
            "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => out.push(key, REJECT),
            "MaxRecvDataSegmentLength" => match parse_in_range(value, MIN_LENGTH, MAX_LENGTH) {
                Some(n) => self.params.initiator_mrdsl = n,
                None => out.push(key, REJECT),
            },
            "HeaderDigest" | "DataDigest" => {
                let header = key == "HeaderDigest";
                let allowed = if header {
                    &self.policy.header_digests
                } else {
                    &self.policy.data_digests
                };
                let pick = value
                    .split(',')
                    .filter_map(DigestAlg::parse)
                    .find(|d| allowed.contains(d));
                match pick {
                    Some(d) => {
                        self.set_digest(header, d);
                        out.push(key, d.as_str());
                    }
                    None => out.push(key, REJECT),
                }
            }
            "IFMarker" | "OFMarker" => match parse_bool(value) {
                // Markers are obsolete (RFC 7143 §13.26); "No" keeps RFC 3720
                // initiators happy.
                Some(_) => out.push(key, "No"),
                None => out.push(key, REJECT),
            },
            "IFMarkInt" | "OFMarkInt" => out.push(key, REJECT),
            "TaskReporting" => {
                if value.split(',').any(|v| v == "RFC3720") {
                    out.push(key, "RFC3720");
                } else {
                    out.push(key, REJECT);
                }
            }
            _ => {
                if let Some(or) = bool_key(key) {
                    match parse_bool(value) {
                        Some(theirs) => {
                            let ours = self.policy_bool(key);
                            let result = if or { theirs || ours } else { theirs && ours };
                            self.set_bool(key, result);
                            out.push(key, yes_no(result));
                        }
                        None => out.push(key, REJECT),
                    }
                } else if let Some((lo, hi, rule)) = numeric_key(key) {
                    match parse_in_range(value, lo, hi) {
                        Some(theirs) => {
                            let ours = self.policy_num(key);
                            let result = match rule {
                                NumRule::Min => theirs.min(ours),
                                NumRule::Max => theirs.max(ours),
                            };
                            let result = self.set_num(key, result);
                            out.push(key, result.to_string());
                        }
                        None => out.push(key, REJECT),
                    }
                } else {
                    out.push(key, NOT_UNDERSTOOD);
                }
            }
        }
        Ok(())
    }

    /// The initiator's answer to one of our offers.
    fn answer(
        &mut self,
        key: &'static str,
        ours: &str,
        value: &str,
    ) -> Result<(), NegotiationError> {
        if matches!(value, REJECT | NOT_UNDERSTOOD | IRRELEVANT) {
            // The key keeps its default.
            return Ok(());
        }
        let bad = || NegotiationError::BadAnswer {
            key: key.to_string(),
            value: value.to_string(),
        };
        if key == "HeaderDigest" || key == "DataDigest" {
            let d = DigestAlg::parse(value).ok_or_else(bad)?;
            if !ours.split(',').any(|o| o == value) {
                return Err(bad());
            }
            self.set_digest(key == "HeaderDigest", d);
        } else if let Some(or) = bool_key(key) {
            let theirs = parse_bool(value).ok_or_else(bad)?;
            let offered = parse_bool(ours).ok_or_else(bad)?;
            // OR: having offered Yes the result must be Yes; AND: after No, No.
            if (or && offered && !theirs) || (!or && !offered && theirs) {
                return Err(bad());
            }
            self.set_bool(key, theirs);
        } else if let Some((lo, hi, rule)) = numeric_key(key) {
            let theirs = parse_in_range(value, lo, hi).ok_or_else(bad)?;
            let offered: u32 = ours.parse().map_err(|_| bad())?;
            let ok = match rule {
                NumRule::Min => theirs <= offered,
                NumRule::Max => theirs >= offered,
            };
            if !ok {
                return Err(bad());
            }
            self.set_num(key, theirs);
        }
        Ok(())
    }

    /// Keys the target declares or proposes itself, each once: our
    /// MaxRecvDataSegmentLength, TargetAlias and TargetPortalGroupTag, and
    /// proposals for keys the initiator has not offered whose RFC defaults
    /// our policy cannot accept. Proposals await an answer (see
    /// [`Negotiator::is_settled`]).
    pub fn target_offers(&mut self) -> TextPairs {
        let mut out = TextPairs::new();
        if !self.declared {
            self.declared = true;
            let mrdsl = self.policy.max_recv_data_segment_length;
            self.params.max_recv_data_segment_length = mrdsl;
            out.push("MaxRecvDataSegmentLength", mrdsl.to_string());
            if self.params.session_type == SessionType::Normal && !self.full_feature {
                if let Some(alias) = &self.policy.target_alias {
                    out.push("TargetAlias", alias.clone());
                }
                if let Some(tag) = self.policy.target_portal_group_tag {
                    out.push("TargetPortalGroupTag", tag.to_string());
                }
            }
        }
        if self.full_feature {
            return out;
        }
        let defaults = SessionParams::default();
        let mut proposals: Vec<(&'static str, String)> = Vec::new();
        for (key, header) in [("HeaderDigest", true), ("DataDigest", false)] {
            let allowed = if header {
                &self.policy.header_digests
            } else {
                &self.policy.data_digests
            };
            if !allowed.contains(&DigestAlg::None) && !allowed.is_empty() {
                let list: Vec<&str> = allowed.iter().map(|d| d.as_str()).collect();
                proposals.push((key, list.join(",")));
            }
        }
        if self.leading && self.params.session_type == SessionType::Normal {
            let p = &self.policy;
            if p.max_burst_length < defaults.max_burst_length {
                proposals.push(("MaxBurstLength", p.max_burst_length.to_string()));
            }
            let first = p.first_burst_length.min(p.max_burst_length);
            if first < defaults.first_burst_length {
                proposals.push(("FirstBurstLength", first.to_string()));
            }
            if !p.immediate_data {
                proposals.push(("ImmediateData", "No".into()));
            }
            if p.default_time2wait > defaults.default_time2wait {
                proposals.push(("DefaultTime2Wait", p.default_time2wait.to_string()));
            }
            if p.default_time2retain < defaults.default_time2retain {
                proposals.push(("DefaultTime2Retain", p.default_time2retain.to_string()));
            }
        }
        for (key, value) in proposals {
            if self.seen.contains(key) || self.pending.contains_key(key) {
                continue;
            }
            out.push(key, value.clone());
            self.pending.insert(key, value);
        }
        out
    }

    fn set_digest(&mut self, header: bool, d: DigestAlg) {
        let on = d == DigestAlg::Crc32c;
        if header {
            self.params.header_digest = on;
        } else {
            self.params.data_digest = on;
        }
    }

    fn policy_bool(&self, key: &str) -> bool {
        match key {
            "InitialR2T" => self.policy.initial_r2t,
            "ImmediateData" => self.policy.immediate_data,
            "DataPDUInOrder" => self.policy.data_pdu_in_order,
            _ => self.policy.data_sequence_in_order,
        }
    }

    fn set_bool(&mut self, key: &str, v: bool) {
        match key {
            "InitialR2T" => self.params.initial_r2t = v,
            "ImmediateData" => self.params.immediate_data = v,
            "DataPDUInOrder" => self.params.data_pdu_in_order = v,
            _ => self.params.data_sequence_in_order = v,
        }
    }

    fn policy_num(&self, key: &str) -> u32 {
        let p = &self.policy;
        match key {
            "MaxBurstLength" => p.max_burst_length,
            // FirstBurstLength must not exceed MaxBurstLength (RFC 7143 §13.14).
            "FirstBurstLength" => p.first_burst_length.min(self.params.max_burst_length),
            "DefaultTime2Wait" => p.default_time2wait.into(),
            "DefaultTime2Retain" => p.default_time2retain.into(),
            "MaxOutstandingR2T" => p.max_outstanding_r2t.into(),
            "MaxConnections" => p.max_connections.into(),
            "ErrorRecoveryLevel" => p.max_error_recovery_level.into(),
            _ => p.protocol_level.into(),
        }
    }

    /// Stores a negotiated number (already range checked) and returns the
    /// value in force.
    fn set_num(&mut self, key: &str, v: u32) -> u32 {
        let p = &mut self.params;
        match key {
            "MaxBurstLength" => {
                p.max_burst_length = v;
                p.first_burst_length = p.first_burst_length.min(v);
            }
            "FirstBurstLength" => p.first_burst_length = v.min(p.max_burst_length),
            "DefaultTime2Wait" => p.default_time2wait = v as u16,
            "DefaultTime2Retain" => p.default_time2retain = v as u16,
            "MaxOutstandingR2T" => p.max_outstanding_r2t = v as u16,
            "MaxConnections" => p.max_connections = v as u16,
            "ErrorRecoveryLevel" => p.error_recovery_level = v as u8,
            _ => p.protocol_level = v as u8,
        }
        if key == "FirstBurstLength" {
            p.first_burst_length
        } else {
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> TextPairs {
        pairs.iter().copied().collect()
    }

    fn neg() -> Negotiator {
        Negotiator::new(TargetPolicy::default())
    }

    fn one(n: &mut Negotiator, k: &str, v: &str) -> Option<String> {
        n.process(&kv(&[(k, v)]))
            .unwrap()
            .get(k)
            .map(str::to_string)
    }

    #[test]
    fn open_iscsi_style_login() {
        let mut n = neg();
        let r = n
            .process(&kv(&[
                ("InitiatorName", "iqn.2004-10.com.ubuntu:01:abc"),
                ("InitiatorAlias", "host1"),
                ("TargetName", "iqn.2024-01.io.switchyard:vol1"),
                ("SessionType", "Normal"),
                ("AuthMethod", "None"),
                ("HeaderDigest", "None"),
                ("DataDigest", "None"),
                ("DefaultTime2Wait", "2"),
                ("DefaultTime2Retain", "0"),
                ("IFMarker", "No"),
                ("OFMarker", "No"),
                ("ErrorRecoveryLevel", "0"),
                ("InitialR2T", "No"),
                ("ImmediateData", "Yes"),
                ("MaxBurstLength", "16776192"),
                ("FirstBurstLength", "262144"),
                ("MaxOutstandingR2T", "1"),
                ("MaxConnections", "1"),
                ("DataPDUInOrder", "Yes"),
                ("DataSequenceInOrder", "Yes"),
                ("MaxRecvDataSegmentLength", "262144"),
            ]))
            .unwrap();
        let expect = kv(&[
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("DefaultTime2Wait", "2"),
            ("DefaultTime2Retain", "0"),
            ("IFMarker", "No"),
            ("OFMarker", "No"),
            ("ErrorRecoveryLevel", "0"),
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "1048576"),
            ("FirstBurstLength", "65536"),
            ("MaxOutstandingR2T", "1"),
            ("MaxConnections", "1"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
        ]);
        assert_eq!(r, expect);
        let offers = n.target_offers();
        assert_eq!(offers, kv(&[("MaxRecvDataSegmentLength", "262144")]));
        assert!(n.is_settled());
        assert!(n.target_offers().is_empty(), "declared once");
        let p = n.params();
        assert_eq!(
            p.initiator_name.as_deref(),
            Some("iqn.2004-10.com.ubuntu:01:abc")
        );
        assert_eq!(p.initiator_alias.as_deref(), Some("host1"));
        assert_eq!(
            p.target_name.as_deref(),
            Some("iqn.2024-01.io.switchyard:vol1")
        );
        assert_eq!(p.initiator_mrdsl, 262_144);
        assert_eq!(p.max_recv_data_segment_length, 262_144);
        assert_eq!(p.max_burst_length, 1 << 20);
        assert_eq!(p.first_burst_length, 65_536);
        assert!(!p.initial_r2t && p.immediate_data);
        assert_eq!(p.default_time2retain, 0);
        assert_eq!(p.digests(), Digests::NONE);
    }

    #[test]
    fn digest_lists() {
        let mut n = neg();
        assert_eq!(
            one(&mut n, "HeaderDigest", "CRC32C,None").as_deref(),
            Some("CRC32C")
        );
        assert_eq!(
            one(&mut n, "DataDigest", "None,CRC32C").as_deref(),
            Some("None")
        );
        assert!(n.params().header_digest && !n.params().data_digest);

        let mut strict = Negotiator::new(TargetPolicy {
            data_digests: vec![DigestAlg::Crc32c],
            ..TargetPolicy::default()
        });
        assert_eq!(
            one(&mut strict, "DataDigest", "None").as_deref(),
            Some("Reject")
        );
        assert_eq!(
            one(&mut strict, "HeaderDigest", "MD5,CRC32C").as_deref(),
            Some("CRC32C")
        );
        assert_eq!(
            one(&mut neg(), "HeaderDigest", "bogus").as_deref(),
            Some("Reject")
        );
    }

    #[test]
    fn numeric_rules() {
        let cases: &[(&str, &str, &str)] = &[
            ("MaxBurstLength", "512", "512"),
            ("MaxBurstLength", "16777215", "1048576"),
            ("MaxBurstLength", "511", "Reject"),
            ("MaxBurstLength", "16777216", "Reject"),
            ("FirstBurstLength", "4096", "4096"),
            ("FirstBurstLength", "1048576", "65536"),
            ("FirstBurstLength", "100", "Reject"),
            ("DefaultTime2Wait", "0", "2"),
            ("DefaultTime2Wait", "10", "10"),
            ("DefaultTime2Wait", "3601", "Reject"),
            ("DefaultTime2Retain", "0", "0"),
            ("DefaultTime2Retain", "3600", "20"),
            ("DefaultTime2Retain", "-1", "Reject"),
            ("MaxOutstandingR2T", "16", "1"),
            ("MaxOutstandingR2T", "0", "Reject"),
            ("MaxOutstandingR2T", "65536", "Reject"),
            ("MaxConnections", "8", "1"),
            ("MaxConnections", "0", "Reject"),
            ("ErrorRecoveryLevel", "2", "0"),
            ("ErrorRecoveryLevel", "3", "Reject"),
            ("iSCSIProtocolLevel", "2", "1"),
            ("MaxBurstLength", "0x2000", "8192"),
            ("MaxBurstLength", "", "Reject"),
        ];
        for (k, v, want) in cases {
            assert_eq!(one(&mut neg(), k, v).as_deref(), Some(*want), "{k}={v}");
        }
    }

    #[test]
    fn first_burst_never_exceeds_max_burst() {
        let mut n = neg();
        let r = n
            .process(&kv(&[
                ("MaxBurstLength", "16384"),
                ("FirstBurstLength", "65536"),
            ]))
            .unwrap();
        assert_eq!(r.get("MaxBurstLength"), Some("16384"));
        assert_eq!(r.get("FirstBurstLength"), Some("16384"));
        // Reverse order across two PDUs: the stored value is clamped.
        let mut n = neg();
        assert_eq!(
            one(&mut n, "FirstBurstLength", "65536").as_deref(),
            Some("65536")
        );
        assert_eq!(
            one(&mut n, "MaxBurstLength", "8192").as_deref(),
            Some("8192")
        );
        assert_eq!(n.params().first_burst_length, 8192);
    }

    #[test]
    fn boolean_rules() {
        let cases: &[(&str, &str, &str)] = &[
            ("InitialR2T", "No", "No"),
            ("InitialR2T", "Yes", "Yes"),
            ("ImmediateData", "Yes", "Yes"),
            ("ImmediateData", "No", "No"),
            ("DataPDUInOrder", "No", "Yes"),
            ("DataSequenceInOrder", "No", "Yes"),
            ("InitialR2T", "yes", "Reject"),
        ];
        for (k, v, want) in cases {
            assert_eq!(one(&mut neg(), k, v).as_deref(), Some(*want), "{k}={v}");
        }
        let strict = TargetPolicy {
            initial_r2t: true,
            immediate_data: false,
            data_pdu_in_order: false,
            data_sequence_in_order: false,
            ..TargetPolicy::default()
        };
        let mut n = Negotiator::new(strict.clone());
        assert_eq!(one(&mut n, "InitialR2T", "No").as_deref(), Some("Yes"));
        assert_eq!(one(&mut n, "ImmediateData", "Yes").as_deref(), Some("No"));
        assert_eq!(one(&mut n, "DataPDUInOrder", "No").as_deref(), Some("No"));
        assert_eq!(
            one(&mut n, "DataSequenceInOrder", "No").as_deref(),
            Some("No")
        );
        let p = n.params();
        assert!(p.initial_r2t && !p.immediate_data && !p.data_pdu_in_order);
    }

    #[test]
    fn declarative_and_odd_keys() {
        let mut n = neg();
        let r = n
            .process(&kv(&[
                ("MaxRecvDataSegmentLength", "65536"),
                ("X-com.example.Foo", "1"),
                ("Frobnicate", "Yes"),
                ("TargetAlias", "me"),
                ("IFMarkInt", "2048~8192"),
                ("OFMarker", "Yes"),
                ("TaskReporting", "ResponseFence,RFC3720"),
                ("AuthMethod", "CHAP"),
                ("CHAP_A", "5"),
            ]))
            .unwrap();
        assert_eq!(
            r.get("MaxRecvDataSegmentLength"),
            None,
            "declarations get no answer"
        );
        assert_eq!(r.get("X-com.example.Foo"), Some("NotUnderstood"));
        assert_eq!(r.get("Frobnicate"), Some("NotUnderstood"));
        assert_eq!(r.get("TargetAlias"), Some("Reject"));
        assert_eq!(r.get("IFMarkInt"), Some("Reject"));
        assert_eq!(r.get("OFMarker"), Some("No"));
        assert_eq!(r.get("TaskReporting"), Some("RFC3720"));
        assert_eq!(
            r.get("AuthMethod"),
            None,
            "security keys are left to chap.rs"
        );
        assert_eq!(r.get("CHAP_A"), None);
        assert_eq!(n.params().initiator_mrdsl, 65536);
        assert_eq!(
            one(&mut neg(), "MaxRecvDataSegmentLength", "511").as_deref(),
            Some("Reject")
        );
        assert_eq!(
            one(&mut neg(), "MaxRecvDataSegmentLength", "16777216").as_deref(),
            Some("Reject")
        );
        assert_eq!(classify("CHAP_R"), KeyClass::Security);
        assert_eq!(classify("SendTargets"), KeyClass::SendTargets);
        assert_eq!(classify("TargetName"), KeyClass::Declarative);
        assert_eq!(classify("MaxBurstLength"), KeyClass::Operational);
        assert_eq!(classify("X#foo"), KeyClass::Unknown);
    }

    #[test]
    fn discovery_session() {
        let mut n = Negotiator::new(TargetPolicy {
            target_alias: Some("sy".into()),
            target_portal_group_tag: Some(1),
            ..TargetPolicy::default()
        });
        let r = n
            .process(&kv(&[
                ("MaxBurstLength", "262144"),
                ("SessionType", "Discovery"),
                ("HeaderDigest", "None"),
                ("InitialR2T", "No"),
                ("ImmediateData", "Yes"),
                ("MaxConnections", "1"),
                ("FirstBurstLength", "65536"),
                ("MaxOutstandingR2T", "1"),
                ("DataPDUInOrder", "Yes"),
                ("DataSequenceInOrder", "Yes"),
                ("DefaultTime2Wait", "2"),
                ("SendTargets", "All"),
            ]))
            .unwrap();
        assert_eq!(n.params().session_type, SessionType::Discovery);
        for k in [
            "MaxBurstLength",
            "InitialR2T",
            "ImmediateData",
            "MaxConnections",
            "FirstBurstLength",
            "MaxOutstandingR2T",
            "DataPDUInOrder",
            "DataSequenceInOrder",
        ] {
            assert_eq!(r.get(k), Some("Irrelevant"), "{k}");
        }
        assert_eq!(r.get("HeaderDigest"), Some("None"));
        assert_eq!(r.get("DefaultTime2Wait"), Some("2"));
        assert_eq!(r.get("SendTargets"), None);
        // No alias or portal group tag in discovery.
        assert_eq!(
            n.target_offers(),
            kv(&[("MaxRecvDataSegmentLength", "262144")])
        );
    }

    #[test]
    fn bad_session_type() {
        let err = neg().process(&kv(&[("SessionType", "Bogus")])).unwrap_err();
        assert_eq!(err, NegotiationError::BadSessionType("Bogus".into()));
        assert_eq!(err.login_status(), (2, 9));
    }

    #[test]
    fn key_offered_twice_is_an_error() {
        let mut n = neg();
        n.process(&kv(&[("MaxBurstLength", "8192")])).unwrap();
        let err = n.process(&kv(&[("MaxBurstLength", "8192")])).unwrap_err();
        assert_eq!(err, NegotiationError::DuplicateKey("MaxBurstLength".into()));
        assert_eq!(err.login_status(), (2, 0));
        // A new text sequence may negotiate it again.
        n.new_sequence();
        assert!(n.process(&kv(&[("MaxBurstLength", "8192")])).is_ok());
    }

    #[test]
    fn target_proposals_and_answers() {
        let policy = TargetPolicy {
            header_digests: vec![DigestAlg::Crc32c],
            max_burst_length: 131_072,
            first_burst_length: 16_384,
            immediate_data: false,
            default_time2wait: 5,
            default_time2retain: 0,
            target_alias: Some("switchyard".into()),
            target_portal_group_tag: Some(7),
            ..TargetPolicy::default()
        };
        let mut n = Negotiator::new(policy);
        n.process(&kv(&[
            ("InitiatorName", "iqn.x"),
            ("SessionType", "Normal"),
        ]))
        .unwrap();
        let offers = n.target_offers();
        assert_eq!(
            offers,
            kv(&[
                ("MaxRecvDataSegmentLength", "262144"),
                ("TargetAlias", "switchyard"),
                ("TargetPortalGroupTag", "7"),
                ("HeaderDigest", "CRC32C"),
                ("MaxBurstLength", "131072"),
                ("FirstBurstLength", "16384"),
                ("ImmediateData", "No"),
                ("DefaultTime2Wait", "5"),
                ("DefaultTime2Retain", "0"),
            ])
        );
        assert!(!n.is_settled());
        // The initiator answers; answers get no reply.
        let r = n
            .process(&kv(&[
                ("HeaderDigest", "CRC32C"),
                ("MaxBurstLength", "65536"),
                ("FirstBurstLength", "NotUnderstood"),
                ("ImmediateData", "No"),
                ("DefaultTime2Wait", "5"),
                ("DefaultTime2Retain", "0"),
            ]))
            .unwrap();
        assert!(r.is_empty());
        assert!(n.is_settled());
        let p = n.params();
        assert!(p.header_digest);
        assert_eq!(p.max_burst_length, 65536);
        assert_eq!(
            p.first_burst_length, 65536,
            "NotUnderstood keeps the default"
        );
        assert!(!p.immediate_data);
        assert_eq!(p.default_time2wait, 5);
        // Answering again is an offer of an already negotiated key.
        assert!(matches!(
            n.process(&kv(&[("MaxBurstLength", "512")])),
            Err(NegotiationError::DuplicateKey(_))
        ));
    }

    #[test]
    fn answers_that_break_the_rules() {
        let policy = TargetPolicy {
            max_burst_length: 131_072,
            immediate_data: false,
            default_time2wait: 5,
            ..TargetPolicy::default()
        };
        for (k, v) in [
            ("MaxBurstLength", "262144"),
            ("ImmediateData", "Yes"),
            ("DefaultTime2Wait", "1"),
            ("MaxBurstLength", "junk"),
        ] {
            let mut n = Negotiator::new(policy.clone());
            n.target_offers();
            assert!(
                matches!(
                    n.process(&kv(&[(k, v)])),
                    Err(NegotiationError::BadAnswer { .. })
                ),
                "{k}={v}"
            );
        }
    }

    #[test]
    fn non_leading_connection_and_full_feature() {
        let mut n = Negotiator::new_secondary(TargetPolicy::default());
        assert_eq!(
            one(&mut n, "MaxBurstLength", "8192").as_deref(),
            Some("Reject")
        );
        assert_eq!(
            one(&mut n, "HeaderDigest", "CRC32C").as_deref(),
            Some("CRC32C")
        );

        let mut n = neg();
        n.process(&kv(&[("MaxRecvDataSegmentLength", "8192")]))
            .unwrap();
        n.target_offers();
        n.start_full_feature();
        let r = n
            .process(&kv(&[
                ("MaxRecvDataSegmentLength", "131072"),
                ("MaxBurstLength", "512"),
            ]))
            .unwrap();
        assert_eq!(r.get("MaxBurstLength"), Some("Reject"));
        assert_eq!(n.params().initiator_mrdsl, 131_072);
        assert_eq!(n.params().max_burst_length, 262_144);
    }

    #[test]
    fn unsolicited_answer_values_are_ignored() {
        let mut n = neg();
        let r = n.process(&kv(&[("MaxBurstLength", "Reject")])).unwrap();
        assert!(r.is_empty());
        // …and do not count as an offer.
        assert_eq!(
            one(&mut n, "MaxBurstLength", "4096").as_deref(),
            Some("4096")
        );
    }

    #[test]
    fn plain_pair_interface() {
        let mut n = neg();
        let keys = vec![
            ("MaxBurstLength".to_string(), "262144".to_string()),
            ("HeaderDigest".to_string(), "None".to_string()),
        ];
        let r = n.respond(&keys, true).unwrap();
        assert_eq!(
            r,
            vec![
                ("MaxBurstLength".to_string(), "Irrelevant".to_string()),
                ("HeaderDigest".to_string(), "None".to_string()),
            ]
        );
        let dup = vec![
            ("DataDigest".to_string(), "None".to_string()),
            ("DataDigest".to_string(), "None".to_string()),
        ];
        assert!(matches!(
            neg().respond(&dup, false),
            Err(NegotiationError::DuplicateKey(_))
        ));
        assert_eq!(
            n.final_declarations(true),
            vec![("MaxRecvDataSegmentLength".to_string(), "262144".to_string())]
        );
    }
}
