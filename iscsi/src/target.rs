//! What the fabric serves: targets (by iSCSI name), their LUNs, who may log in (ACLs and
//! LUN masking) and how they authenticate (CHAP), and the portals they listen on.

use std::net::SocketAddr;
use std::sync::Arc;

use fcwwn::{InitiatorId, LunSet, Masking};
use scsi::{LogicalUnit, LunMap, PortAccess, PortRefusal, TargetInfo};

/// CHAP secrets for one target (RFC 7143 §12.1.3). `mutual` adds the target's own
/// name and secret, which the initiator checks.
#[derive(Clone)]
pub struct ChapConfig {
    pub username: String,
    pub secret: String,
    pub mutual: Option<(String, String)>,
}

impl std::fmt::Debug for ChapConfig {
    // Secrets are never printed, not even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapConfig")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .field("mutual", &self.mutual.as_ref().map(|(u, _)| u))
            .finish()
    }
}

/// One LUN of a target.
#[derive(Clone)]
pub struct LunDef {
    pub lun: u16,
    pub lu: Arc<LogicalUnit>,
}

/// A target as the fabric serves it.
#[derive(Clone)]
pub struct TargetDef {
    /// Normalised iSCSI name (`iqn.`, `eui.` or `naa.`).
    pub name: String,
    pub alias: Option<String>,
    pub luns: Vec<LunDef>,
    /// Who may log in and which LUNs each initiator sees (shared by all targets).
    pub masking: Arc<Masking>,
    pub chap: Option<ChapConfig>,
    /// Identity reported in VPD pages.
    pub info: Arc<TargetInfo>,
}

impl TargetDef {
    /// What this initiator may see: `None` when it may not log in.
    fn access(&self, initiator: &str) -> Option<LunSet> {
        match InitiatorId::parse(initiator) {
            Ok(id) => self.masking.access(&id, &self.name),
            // A malformed initiator name only gets into open targets.
            Err(_) if !self.masking.is_restricted(&self.name) => Some(LunSet::All),
            Err(_) => None,
        }
    }

    /// May this initiator log in (zoning)?
    pub fn allows(&self, initiator: &str) -> bool {
        self.access(initiator).is_some()
    }

    /// The LUN map one initiator sees (LUN masking applied). `ports` are the
    /// relative target port identifiers of the fabric's portals: with the logical
    /// units' port groups, the ports a command may name.
    pub fn lun_map_for(&self, initiator: &str, ports: &Arc<[u16]>) -> LunMap {
        let visible = self.access(initiator).unwrap_or_else(LunSet::none);
        let mut map = LunMap::new(self.info.clone());
        for l in &self.luns {
            if visible.contains(l.lun) {
                map.insert(u64::from(l.lun), l.lu.clone());
            }
        }
        map.with_access(Arc::new(TargetAccess {
            name: self.name.clone(),
            masking: self.masking.clone(),
            luns: self.luns.iter().map(|l| (l.lun, l.lu.clone())).collect(),
            ports: ports.clone(),
        }))
    }
}

/// One target's zoning and ports, for commands that name other initiator ports
/// (REGISTER AND MOVE).
#[derive(Debug)]
struct TargetAccess {
    name: String,
    masking: Arc<Masking>,
    luns: Vec<(u16, Arc<LogicalUnit>)>,
    ports: Arc<[u16]>,
}

impl PortAccess for TargetAccess {
    fn check(&self, initiator: &str, port: u16, lu: &LogicalUnit) -> Result<(), PortRefusal> {
        let lun = self
            .luns
            .iter()
            .find(|(_, l)| std::ptr::eq(Arc::as_ptr(l), lu))
            .map(|(n, _)| *n);
        let admitted = match (InitiatorId::parse(initiator), lun) {
            (Ok(id), Some(lun)) => self
                .masking
                .access(&id, &self.name)
                .is_some_and(|s| s.contains(lun)),
            (Err(_), Some(_)) => !self.masking.is_restricted(&self.name),
            (_, None) => false,
        };
        if !admitted {
            return Err(PortRefusal::Initiator);
        }
        let in_groups = lu
            .port_groups()
            .snapshot()
            .groups
            .iter()
            .any(|g| g.ports.contains(&port));
        if self.ports.contains(&port) || in_groups {
            Ok(())
        } else {
            Err(PortRefusal::Port)
        }
    }
}

/// A listening address and its target portal group tag.
#[derive(Debug, Clone, Copy)]
pub struct PortalDef {
    pub addr: SocketAddr,
    pub tpgt: u16,
    /// Relative target port identifier of the sessions on this portal (SPC-4 4.3.5):
    /// unique among every port that serves the same logical units — in a cluster,
    /// across nodes. 0: the portal's position in the list plus one.
    pub relative_port: u16,
}
