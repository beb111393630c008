//! The node's TOML configuration: portals, targets, LUNs and their back-ends, zoning
//! (LUN masking) and CHAP. Parsing is strict (unknown keys are errors, so a typo cannot
//! silently change behaviour) and every error names the key and what to do.

use std::path::{Path, PathBuf};

use fcwwn::{IscsiName, Masking, Wwn};
use serde::{Deserialize, Serialize};

/// A whole node configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub node: NodeSection,
    #[serde(default)]
    pub fabric: FabricSection,
    #[serde(rename = "portal", default)]
    pub portals: Vec<PortalSection>,
    #[serde(rename = "target", default)]
    pub targets: Vec<TargetSection>,
    /// Zoning / LUN masking (see the fcwwn crate). Absent: every target is open.
    #[serde(default)]
    pub zoning: Masking,
    /// Remote arrays whose LUs back virtual volumes.
    #[serde(rename = "backend", default)]
    pub backends: Vec<BackendSection>,
    /// Local files or block devices that back virtual volumes.
    #[serde(rename = "store", default)]
    pub stores: Vec<StoreSection>,
    /// The mapping table: virtual volumes as extents over back-end LUs.
    #[serde(default)]
    pub mapping: Option<volume::MappingTable>,
    /// The management API (REST, console, metrics). Absent: no API.
    #[serde(default)]
    pub management: Option<ManagementSection>,
    /// Membership of a cluster of nodes serving the same volumes (see the cluster
    /// crate's README). Absent: a stand-alone node.
    #[serde(default)]
    pub cluster: Option<cluster::ClusterConfig>,
}

/// Highest `[cluster] id` of a data node: relative target port ids are
/// `id * 16 + portal index + 1` and must fit in 16 bits.
pub const MAX_CLUSTER_NODE_ID: u64 = 4000;
/// Portals per clustered node (see [`MAX_CLUSTER_NODE_ID`]).
pub const MAX_CLUSTER_PORTALS: usize = 15;

/// `[management]`: where the API listens and who may use it. Without tokens the API
/// must listen on loopback, reads are open and changes are refused.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ManagementSection {
    /// `ip:port`, e.g. `127.0.0.1:8080`.
    pub listen: String,
    /// Bearer token that may read and change (env `SWITCHYARD_ADMIN_TOKEN` overrides).
    pub admin_token: Option<String>,
    /// Bearer token that may only read (env `SWITCHYARD_READ_TOKEN` overrides).
    pub read_token: Option<String>,
    /// How long a remap waits for in-flight I/O in the affected ranges (default 5000).
    pub drain_timeout_ms: Option<u64>,
}

/// A remote iSCSI array. Its LUs are named `<id>/lun<N>` in the mapping table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSection {
    pub id: String,
    /// `ip:port` of the array's portal.
    pub portal: String,
    /// The array's target name.
    pub target: String,
    /// Our initiator name towards the array (default: derived from the node name).
    pub initiator_name: Option<String>,
    pub chap: Option<ChapSection>,
    /// Sessions to the array (commands are spread over them).
    #[serde(default = "one_usize")]
    pub sessions: usize,
    /// Commands in flight per session.
    #[serde(default = "default_backend_qd")]
    pub queue_depth: usize,
    /// Per-command timeout; keep it below the hosts' SCSI timeout (30 s on Linux).
    #[serde(default = "default_backend_timeout")]
    pub timeout_secs: u64,
    /// Offer CRC32C header and data digests.
    #[serde(default)]
    pub digests: bool,
}

fn one_usize() -> usize {
    1
}
fn default_backend_qd() -> usize {
    32
}
fn default_backend_timeout() -> u64 {
    15
}

/// A local file or block device usable as a back-end LU (named by its `id`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    pub id: String,
    pub path: PathBuf,
    /// Create a sparse file of this size if `path` does not exist.
    pub size: Option<String>,
    #[serde(default = "default_bs")]
    pub block_size: u32,
    #[serde(default)]
    pub read_only: bool,
    /// Let the kernel read ahead on the file (default: off; see the README).
    #[serde(default)]
    pub readahead: bool,
}

/// A back-end LU reference from the mapping table: `<backend>/lun<N>` (remote) or a
/// store id (local).
pub enum BackendRef<'a> {
    Remote { backend: &'a str, lun: u64 },
    Local(&'a str),
}

/// Parse a back-end LU id.
pub fn backend_ref(id: &str) -> BackendRef<'_> {
    if let Some((b, l)) = id.rsplit_once("/lun") {
        if let Ok(lun) = l.parse::<u64>() {
            return BackendRef::Remote { backend: b, lun };
        }
    }
    BackendRef::Local(id)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Name of this node (logs, management).
    #[serde(default = "default_node_name")]
    pub name: String,
    /// Where relative LU paths are resolved (default: the config file's folder).
    pub data_dir: Option<PathBuf>,
    /// IEEE company ID (OUI) used to derive NAA 6 WWNs for LUs that do not set one.
    #[serde(default = "default_oui")]
    pub oui: u32,
    /// Event-loop threads (default: one per CPU). See the README's benchmarks: on a
    /// machine whose cores the hosts or arrays share, fewer can be faster.
    #[serde(default)]
    pub workers: Option<usize>,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            name: default_node_name(),
            data_dir: None,
            oui: default_oui(),
            workers: None,
        }
    }
}

/// Upper bound of `[fabric] busy_poll_us`.
pub const MAX_BUSY_POLL_US: u64 = 1000;
/// Upper bound of `[node] workers`.
pub const MAX_WORKERS: usize = 256;

fn default_node_name() -> String {
    "node1".into()
}

/// Default OUI for derived WWNs. Not a registered company ID: set `node.oui` to your
/// organisation's when LU identities must be globally unique.
pub const DEFAULT_OUI: u32 = 0x00_53_59; // "SY"
fn default_oui() -> u32 {
    DEFAULT_OUI
}

/// Fabric tunables; every field is optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FabricSection {
    pub max_recv_data_segment_length: Option<u32>,
    pub max_burst_length: Option<u32>,
    pub first_burst_length: Option<u32>,
    pub immediate_data: Option<bool>,
    pub initial_r2t: Option<bool>,
    pub max_outstanding_r2t: Option<u32>,
    pub queue_depth: Option<u32>,
    pub max_sessions: Option<usize>,
    pub max_sessions_per_initiator: Option<usize>,
    pub nop_interval_secs: Option<u64>,
    pub nop_timeout_secs: Option<u64>,
    /// Busy-poll a connection for up to this many microseconds for the host's next
    /// command, while its host sends commands in quick succession (default 50; 0:
    /// never). Lower latency at queue depth 1, for up to a core of CPU per such
    /// connection. At most 1000.
    pub busy_poll_us: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PortalSection {
    /// `ip:port`, e.g. `127.0.0.1:3260` or `0.0.0.0:3260`.
    pub listen: String,
    /// Target portal group tag.
    #[serde(default = "one")]
    pub tpgt: u16,
}

fn one() -> u16 {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// iSCSI name: `iqn.…`, `eui.…` or `naa.…`.
    pub name: String,
    pub alias: Option<String>,
    pub chap: Option<ChapSection>,
    #[serde(rename = "lun", default)]
    pub luns: Vec<LunSection>,
    /// ALUA target port groups (implicit ALUA). Absent: one active/optimized group
    /// with every port.
    #[serde(rename = "port_group", default)]
    pub port_groups: Vec<PortGroupSection>,
}

/// One ALUA target port group.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PortGroupSection {
    pub id: u16,
    /// `active-optimized`, `active-non-optimized`, `standby`, `unavailable`,
    /// `offline` or `transitioning`.
    #[serde(default = "default_alua_state")]
    pub state: String,
    /// Relative target port identifiers (portal order, 1-based).
    pub ports: Vec<u16>,
    #[serde(default)]
    pub preferred: bool,
}

fn default_alua_state() -> String {
    "active-optimized".into()
}

/// The config/API name of an ALUA state (the inverse of [`alua_state`]).
pub fn alua_name(s: scsi::AluaState) -> &'static str {
    use scsi::AluaState::*;
    match s {
        ActiveOptimized => "active-optimized",
        ActiveNonOptimized => "active-non-optimized",
        Standby => "standby",
        Unavailable => "unavailable",
        Offline => "offline",
        Transitioning => "transitioning",
    }
}

/// Parse an ALUA state name.
pub fn alua_state(s: &str) -> Result<scsi::AluaState, String> {
    use scsi::AluaState::*;
    Ok(match s {
        "active-optimized" => ActiveOptimized,
        "active-non-optimized" => ActiveNonOptimized,
        "standby" => Standby,
        "unavailable" => Unavailable,
        "offline" => Offline,
        "transitioning" => Transitioning,
        other => {
            return Err(format!(
                "ALUA state \"{other}\" is not one of active-optimized, active-non-optimized, \
                 standby, unavailable, offline, transitioning"
            ))
        }
    })
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChapSection {
    pub username: String,
    pub secret: String,
    /// Mutual CHAP: the name and secret the target answers with.
    pub mutual_username: Option<String>,
    pub mutual_secret: Option<String>,
}

/// What a secret prints as in debug output.
const REDACTED: &str = "(redacted)";

impl std::fmt::Debug for ChapSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapSection")
            .field("username", &self.username)
            .field("secret", &REDACTED)
            .field("mutual_username", &self.mutual_username)
            .field(
                "mutual_secret",
                &self.mutual_secret.as_ref().map(|_| REDACTED),
            )
            .finish()
    }
}

impl std::fmt::Debug for ManagementSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagementSection")
            .field("listen", &self.listen)
            .field("admin_token", &self.admin_token.as_ref().map(|_| REDACTED))
            .field("read_token", &self.read_token.as_ref().map(|_| REDACTED))
            .field("drain_timeout_ms", &self.drain_timeout_ms)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LunSection {
    pub lun: u16,
    /// File or block device; relative paths are resolved against the data folder.
    /// Exactly one of `path` and `volume`.
    pub path: Option<PathBuf>,
    /// A virtual volume from the mapping table.
    pub volume: Option<String>,
    /// Create a sparse file of this size if `path` does not exist ("1GiB", "512MiB").
    pub size: Option<String>,
    #[serde(default = "default_bs")]
    pub block_size: u32,
    /// NAA WWN of the LU; derived from the target name and LUN when absent.
    pub wwn: Option<Wwn>,
    /// Unit serial number (VPD 0x80); derived from the WWN when absent.
    pub serial: Option<String>,
    #[serde(default = "default_vendor")]
    pub vendor: String,
    #[serde(default = "default_product")]
    pub product: String,
    #[serde(default)]
    pub read_only: bool,
    /// Let the kernel read ahead on the file (default: off; see the README).
    #[serde(default)]
    pub readahead: bool,
    /// Thin provisioning (UNMAP, WRITE SAME with UNMAP, GET LBA STATUS). Default: on
    /// for regular files (holes are punched), off for block devices.
    pub thin: Option<bool>,
    /// Where persistent reservations with APTPL are kept; default
    /// `<data_dir>/<target>.lun<N>.pr`.
    pub pr_file: Option<PathBuf>,
}

fn default_bs() -> u32 {
    512
}
fn default_vendor() -> String {
    "SWITCHYD".into()
}
fn default_product() -> String {
    "VIRTUAL-DISK".into()
}

/// A config problem, with where it is and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

/// A TOML error without the quoted source line (it may hold a secret): where it is,
/// and the message with the string values of that line blanked out.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return e.message().to_string();
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..start].chars().count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    let mut msg = e.message().trim().to_string();
    for quote in ['"', '\''] {
        for (k, value) in line.split(quote).enumerate() {
            if k % 2 == 1 && !value.is_empty() {
                msg = msg.replace(value, "…");
            }
        }
    }
    format!("line {line_no}, column {column}: {msg}")
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        let mut cfg = Config::parse(&text).map_err(|e| match e {
            ConfigError::Invalid(m) => ConfigError::Parse {
                path: path.to_path_buf(),
                message: m,
            },
            other => other,
        })?;
        if cfg.node.data_dir.is_none() {
            cfg.node.data_dir = Some(
                path.parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from(".")),
            );
        }
        if let Some(c) = cfg.cluster_config() {
            c.validate().map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: format!("[cluster]: {e}"),
            })?;
            if let Some(f) = &c.secret_file {
                warn_if_readable(f, "the cluster secret");
            }
        }
        warn_if_secrets_readable(path, &cfg);
        Ok(cfg)
    }

    /// Parse and validate TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config =
            toml::from_str(text).map_err(|e| ConfigError::Invalid(toml_error(text, &e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if let Some(c) = &self.cluster {
            // A relative secret_file is read once the data folder is known (`load`).
            if c.secret_file.is_none() {
                c.validate()
                    .map_err(|e| ConfigError::Invalid(format!("[cluster]: {e}")))?;
            }
            if c.id == 0 || c.id > MAX_CLUSTER_NODE_ID {
                return bad(format!(
                    "[cluster] id = {}: use 1..={MAX_CLUSTER_NODE_ID} (relative target port ids are derived from it)",
                    c.id
                ));
            }
            if c.witness {
                if !self.targets.is_empty() || self.mapping.is_some() {
                    return bad("[cluster] witness = true: a witness serves no I/O; remove its [[target]] and [mapping] sections".into());
                }
                return Ok(());
            }
            if self.portals.len() > MAX_CLUSTER_PORTALS {
                return bad(format!(
                    "a clustered node has at most {MAX_CLUSTER_PORTALS} [[portal]]s"
                ));
            }
            if !c.portals.is_empty() {
                return bad("[cluster] portals: leave it out; a clustered node registers its [[portal]] addresses".into());
            }
            if let Some(t) = self.targets.iter().find(|t| !t.port_groups.is_empty()) {
                return bad(format!(
                    "target {}: [[target.port_group]] is not used in a cluster: each node is one target port group (its id is the node's [cluster] id), set with `switchyard alua`/the API",
                    t.name
                ));
            }
        }
        if let Some(us) = self.fabric.busy_poll_us.filter(|us| *us > MAX_BUSY_POLL_US) {
            return bad(format!(
                "[fabric] busy_poll_us = {us}: at most {MAX_BUSY_POLL_US} (0 turns busy polling off)"
            ));
        }
        if let Some(n) = self.node.workers.filter(|n| *n == 0 || *n > MAX_WORKERS) {
            return bad(format!(
                "[node] workers = {n}: use 1..={MAX_WORKERS}, or leave it out for one per CPU"
            ));
        }
        if self.portals.is_empty() {
            return bad(
                "no [[portal]] configured; add one, e.g. listen = \"127.0.0.1:3260\"".into(),
            );
        }
        for p in &self.portals {
            if p.listen.parse::<std::net::SocketAddr>().is_err() {
                return bad(format!(
                    "portal listen = \"{}\" is not an ip:port address",
                    p.listen
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for t in &self.targets {
            let name = IscsiName::parse(&t.name)
                .map_err(|e| ConfigError::Invalid(format!("target name \"{}\": {e}", t.name)))?;
            if !names.insert(name.as_str().to_string()) {
                return bad(format!("target {} is defined twice", name.as_str()));
            }
            if let Some(c) = &t.chap {
                if c.secret.len() < 12 || c.secret.len() > 16 {
                    tracing::warn!(
                        target = %t.name,
                        "CHAP secret is {} bytes; RFC 7143 §12.1.3 asks for 12-16 (initiators such as open-iscsi may refuse others)",
                        c.secret.len()
                    );
                }
                if c.mutual_username.is_some() != c.mutual_secret.is_some() {
                    return bad(format!(
                        "target {}: set both mutual_username and mutual_secret, or neither",
                        t.name
                    ));
                }
                if c.mutual_secret.as_deref() == Some(c.secret.as_str()) {
                    return bad(format!(
                        "target {}: the mutual CHAP secret must differ from the initiator's secret",
                        t.name
                    ));
                }
            }
            for g in &t.port_groups {
                alua_state(&g.state).map_err(|e| {
                    ConfigError::Invalid(format!("target {} port group {}: {e}", t.name, g.id))
                })?;
            }
            let mut luns = std::collections::HashSet::new();
            for l in &t.luns {
                match (&l.path, &l.volume) {
                    (Some(_), None) => {}
                    // In a cluster the replicated table wins; it is checked at start.
                    (None, Some(_)) if self.cluster.is_some() => {}
                    (None, Some(v)) => {
                        let known = self
                            .mapping
                            .as_ref()
                            .is_some_and(|m| m.volumes.iter().any(|d| &d.name == v));
                        if !known {
                            return bad(format!(
                                "target {} LUN {}: volume \"{v}\" is not in [mapping]",
                                t.name, l.lun
                            ));
                        }
                    }
                    _ => {
                        return bad(format!(
                            "target {} LUN {}: set exactly one of `path` and `volume`",
                            t.name, l.lun
                        ))
                    }
                }
                if !luns.insert(l.lun) {
                    return bad(format!("target {}: LUN {} is defined twice", t.name, l.lun));
                }
                if l.lun >= 16384 {
                    return bad(format!(
                        "target {}: LUN {} is too large (flat addressing allows 0-16383)",
                        t.name, l.lun
                    ));
                }
                if l.block_size != 512 && l.block_size != 4096 {
                    return bad(format!(
                        "target {} LUN {}: block_size {} is not supported (use 512 or 4096)",
                        t.name, l.lun, l.block_size
                    ));
                }
                if let Some(s) = &l.size {
                    let bytes = parse_size(s).map_err(ConfigError::Invalid)?;
                    if bytes == 0 || bytes % u64::from(l.block_size) != 0 {
                        return bad(format!(
                            "target {} LUN {}: size {s} is not a positive multiple of the {}-byte block size",
                            t.name, l.lun, l.block_size
                        ));
                    }
                }
            }
        }
        let mut ids = std::collections::HashSet::new();
        for b in &self.backends {
            if !ids.insert(b.id.as_str()) {
                return bad(format!("back-end id {} is defined twice", b.id));
            }
            if b.portal.parse::<std::net::SocketAddr>().is_err() {
                return bad(format!(
                    "backend {}: portal = \"{}\" is not an ip:port address",
                    b.id, b.portal
                ));
            }
            IscsiName::parse(&b.target)
                .map_err(|e| ConfigError::Invalid(format!("backend {}: target: {e}", b.id)))?;
            if b.sessions == 0 || b.queue_depth == 0 {
                return bad(format!(
                    "backend {}: sessions and queue_depth must be at least 1",
                    b.id
                ));
            }
        }
        for st in &self.stores {
            if !ids.insert(st.id.as_str()) {
                return bad(format!("back-end id {} is defined twice", st.id));
            }
            if st.id.contains("/lun") {
                return bad(format!(
                    "store id {}: \"/lun\" is reserved for remote back-ends",
                    st.id
                ));
            }
        }
        if let Some(m) = &self.management {
            if m.listen.parse::<std::net::SocketAddr>().is_err() {
                return bad(format!(
                    "[management] listen = \"{}\" is not an ip:port address",
                    m.listen
                ));
            }
            for t in [&m.admin_token, &m.read_token].into_iter().flatten() {
                if t.len() < 16 {
                    return bad("[management] tokens must be at least 16 characters".into());
                }
            }
        }
        if let Some(m) = &self.mapping {
            m.validate()
                .map_err(|e| ConfigError::Invalid(format!("[mapping]: {e}")))?;
            for v in &m.volumes {
                for e in &v.extents {
                    let known = match backend_ref(&e.backend) {
                        BackendRef::Remote { backend, .. } => {
                            self.backends.iter().any(|b| b.id == backend)
                        }
                        BackendRef::Local(id) => self.stores.iter().any(|s| s.id == id),
                    };
                    if !known {
                        return bad(format!(
                            "volume {}: extent at {} uses back-end \"{}\", which is neither a \
                             [[store]] id nor <[[backend]] id>/lun<N>",
                            v.name, e.vstart, e.backend
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The `[cluster]` section ready to start: paths resolved against the data folder
    /// and this node's portals filled in.
    pub fn cluster_config(&self) -> Option<cluster::ClusterConfig> {
        let mut c = self.cluster.clone()?;
        c.data_dir = self.resolve(&c.data_dir);
        c.secret_file = c.secret_file.as_deref().map(|p| self.resolve(p));
        if !c.witness {
            c.portals = self.portals.iter().map(|p| p.listen.clone()).collect();
        }
        Some(c)
    }

    /// Resolve an LU path against the data folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.node
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("."))
                .join(p)
        }
    }
}

pub use mgmt::cli::parse_size;

/// Config files holding CHAP secrets should be readable by their owner only.
fn warn_if_secrets_readable(path: &Path, cfg: &Config) {
    let tokens = cfg
        .management
        .as_ref()
        .is_some_and(|m| m.admin_token.is_some() || m.read_token.is_some());
    let cluster = cfg.cluster.as_ref().is_some_and(|c| c.secret.is_some());
    if !tokens && !cluster && !cfg.targets.iter().any(|t| t.chap.is_some()) {
        return;
    }
    warn_if_readable(
        path,
        "secrets (CHAP, management tokens or the cluster secret)",
    );
}

fn warn_if_readable(path: &Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "{} holds {what} but is readable by others; run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[portal]]
listen = "127.0.0.1:3260"

[[target]]
name = "IQN.2026-11.org.switchyard:t1"
[[target.lun]]
lun = 0
path = "lun0.img"
size = "64MiB"
"#;

    #[test]
    fn parses_minimal() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.targets[0].luns[0].block_size, 512);
        assert_eq!(c.portals[0].tpgt, 1);
    }

    #[test]
    fn rejects_unknown_key_and_bad_values() {
        let e = Config::parse(&GOOD.replace("size =", "sise =")).unwrap_err();
        assert!(e.to_string().contains("sise"), "{e}");
        let e = Config::parse(&GOOD.replace("64MiB", "1000")).unwrap_err();
        assert!(e.to_string().contains("multiple"), "{e}");
        let e = Config::parse(&GOOD.replace("IQN.2026-11", "iqn.2026-13")).unwrap_err();
        assert!(e.to_string().contains("target name"), "{e}");
        let e = Config::parse(&GOOD.replace("127.0.0.1:3260", "localhost")).unwrap_err();
        assert!(e.to_string().contains("ip:port"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn busy_poll_and_workers_are_bounded() {
        let with = |extra: &str| Config::parse(&format!("{GOOD}\n{extra}"));
        let c = with("[fabric]\nbusy_poll_us = 50").unwrap();
        assert_eq!(c.fabric.busy_poll_us, Some(50));
        let e = with("[fabric]\nbusy_poll_us = 5000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("busy_poll_us = 5000: at most 1000"), "{e}");
        let e = Config::parse(&format!("[node]\nworkers = 0\n{GOOD}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("workers = 0"), "{e}");
        let c = Config::parse(&format!("[node]\nworkers = 1\n{GOOD}")).unwrap();
        assert_eq!(c.node.workers, Some(1));
    }

    #[test]
    fn readahead_is_off_unless_asked_for() {
        let c = Config::parse(GOOD).unwrap();
        assert!(!c.targets[0].luns[0].readahead);
        let c =
            Config::parse(&GOOD.replace("size = \"64MiB\"", "size = \"64MiB\"\nreadahead = true"))
                .unwrap();
        assert!(c.targets[0].luns[0].readahead);
        let e = Config::parse(&GOOD.replace("size = \"64MiB\"", "readahead = \"yes\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 10") && e.contains("expected a boolean"),
            "{e}"
        );
    }

    #[test]
    fn mutual_secret_must_differ() {
        let t = GOOD.replace(
            "[[target.lun]]",
            "[target.chap]\nusername = \"u\"\nsecret = \"abcdefghijkl\"\nmutual_username = \"t\"\nmutual_secret = \"abcdefghijkl\"\n[[target.lun]]",
        );
        let e = Config::parse(&t).unwrap_err();
        assert!(e.to_string().contains("must differ"), "{e}");
    }

    #[test]
    fn secrets_stay_out_of_debug_output_and_parse_errors() {
        let text = "[node]\nname = \"n\"\n[[portal]]\nlisten = \"127.0.0.1:3260\"\n\
            [management]\nlisten = \"127.0.0.1:8080\"\nadmin_token = \"admin-token-0123456789\"\n\
            [[target]]\nname = \"iqn.2026-11.org.example:t\"\n\
            [target.chap]\nusername = \"u\"\nsecret = \"chap-secret-12\"\n\
            mutual_username = \"t\"\nmutual_secret = \"mutual-secr-16\"\n\
            [[target.lun]]\nlun = 0\npath = \"l.img\"\nsize = \"1MiB\"\n";
        let c = Config::parse(text).unwrap();
        let dbg = format!("{c:?}");
        for s in ["admin-token-0123456789", "chap-secret-12", "mutual-secr-16"] {
            assert!(!dbg.contains(s), "{s} in {dbg}");
        }
        // A typo, trailing junk, a wrong type: the error names the place, not the value.
        for broken in [
            text.replace("\nsecret =", "\nsecert ="),
            text.replace("\"chap-secret-12\"", "\"chap-secret-12\" junk"),
            text.replace("\"mutual-secr-16\"", "'mutual-secr-16' 1"),
        ] {
            let e = Config::parse(&broken).unwrap_err().to_string();
            assert!(e.contains("line "), "{e}");
            assert!(
                !e.contains("chap-secret-12") && !e.contains("mutual-secr-16"),
                "{e}"
            );
        }
    }
}
