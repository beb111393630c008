//! What the cluster serves beyond the mapping table: which target LUN shows which
//! volume (exports), and the zoning (LUN masking) every node applies. Replicated, so
//! a volume created, exported or zoned through any member appears on all of them.
//!
//! Targets themselves (their names, portals, CHAP) stay in each node's config: an
//! export names a target, and every node that serves a target of that name shows the
//! volume there. A node's own `[[target.lun]] volume = …` entries keep working beside
//! the replicated exports; a LUN number both claim stays the config's (the node warns).

use std::collections::BTreeMap;

use fcwwn::{IscsiName, Masking};
use serde::{Deserialize, Serialize};

/// Volume `volume` is LUN `lun` of target `target`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Export {
    /// The target's iSCSI name (normalised when the export is recorded).
    pub target: String,
    pub lun: u16,
    pub volume: String,
}

/// The highest LUN number an export may use (flat space addressing, SAM-5 4.7.7).
pub const MAX_EXPORT_LUN: u16 = 16383;

/// A back-end array added online: every data member logs in to it and opens its LUs
/// (named `<id>/lun<N>`, like a config's `[[backend]]`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    pub id: String,
    /// `ip:port` of the array's portal.
    pub portal: String,
    /// The array's target name.
    pub target: String,
    /// CHAP user name and secret towards the array.
    #[serde(default)]
    pub chap: Option<(String, String)>,
    /// The members' initiator name towards the array (default: derived from each
    /// member's name).
    #[serde(default)]
    pub initiator_name: Option<String>,
    /// Sessions per member (default 1).
    #[serde(default = "one")]
    pub sessions: usize,
    /// Commands in flight per session (default 32).
    #[serde(default = "thirty_two")]
    pub queue_depth: usize,
    /// Per-command timeout, seconds (default 15).
    #[serde(default = "fifteen")]
    pub timeout_secs: u64,
}

fn one() -> usize {
    1
}
fn thirty_two() -> usize {
    32
}
fn fifteen() -> u64 {
    15
}

impl std::fmt::Debug for BackendSpec {
    // The CHAP secret is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendSpec")
            .field("id", &self.id)
            .field("portal", &self.portal)
            .field("target", &self.target)
            .field("chap_user", &self.chap.as_ref().map(|c| &c.0))
            .field("initiator_name", &self.initiator_name)
            .field("sessions", &self.sessions)
            .field("queue_depth", &self.queue_depth)
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

/// Exports and zoning, as the cluster agrees on them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Bumped by every change of the catalog or of the set of volumes, so a node
    /// knows when to bring its targets in line.
    pub version: u64,
    /// Target name -> LUN -> volume.
    pub exports: BTreeMap<String, BTreeMap<u16, String>>,
    /// The zoning every node applies; `None`: each node's own `[zoning]` section.
    pub zoning: Option<Masking>,
    /// Bumped by every zoning change (what `SetZoning` compares against).
    pub zoning_version: u64,
    /// Back-end arrays added online, by id.
    #[serde(default)]
    pub backends: BTreeMap<String, BackendSpec>,
}

impl Catalog {
    /// Every export, in (target, LUN) order.
    pub fn exports(&self) -> impl Iterator<Item = Export> + '_ {
        self.exports.iter().flat_map(|(t, luns)| {
            luns.iter().map(move |(lun, v)| Export {
                target: t.clone(),
                lun: *lun,
                volume: v.clone(),
            })
        })
    }

    /// The exports of one volume.
    pub fn exports_of<'a>(&'a self, volume: &'a str) -> impl Iterator<Item = Export> + 'a {
        self.exports().filter(move |e| e.volume == volume)
    }

    /// Record an export (checked: the LUN is free and in range; the target name is a
    /// valid iSCSI name). The caller checks that the volume exists.
    pub fn export(&mut self, e: &Export) -> Result<(), String> {
        let target = IscsiName::parse(&e.target)
            .map_err(|err| format!("target {:?}: {err}", e.target))?
            .as_str()
            .to_string();
        if e.lun > MAX_EXPORT_LUN {
            return Err(format!(
                "LUN {} is out of range (0..={MAX_EXPORT_LUN})",
                e.lun
            ));
        }
        let luns = self.exports.entry(target.clone()).or_default();
        if let Some(v) = luns.get(&e.lun) {
            return Err(format!(
                "LUN {} of {target} already shows volume {v:?}",
                e.lun
            ));
        }
        luns.insert(e.lun, e.volume.clone());
        self.version += 1;
        Ok(())
    }

    /// Remove the export at (`target`, `lun`); returns the volume it showed.
    pub fn unexport(&mut self, target: &str, lun: u16) -> Result<String, String> {
        let norm = IscsiName::parse(target)
            .map(|n| n.as_str().to_string())
            .unwrap_or_else(|_| target.to_string());
        let luns = self
            .exports
            .get_mut(&norm)
            .ok_or_else(|| format!("nothing is exported on target {target}"))?;
        let v = luns
            .remove(&lun)
            .ok_or_else(|| format!("LUN {lun} of {target} is not an export"))?;
        if luns.is_empty() {
            self.exports.remove(&norm);
        }
        self.version += 1;
        Ok(v)
    }

    /// Drop every export of `volume` (it is being deleted).
    pub fn forget_volume(&mut self, volume: &str) {
        for luns in self.exports.values_mut() {
            luns.retain(|_, v| v != volume);
        }
        self.exports.retain(|_, luns| !luns.is_empty());
        self.version += 1;
    }

    /// Record a back-end array (checked: a fresh id without `/`, at most 8 sessions).
    pub fn add_backend(&mut self, b: &BackendSpec) -> Result<(), String> {
        if b.id.is_empty() || b.id.contains('/') || b.id.len() > 64 {
            return Err(format!(
                "back-end id {:?} must be 1 to 64 characters without '/'",
                b.id
            ));
        }
        if self.backends.contains_key(&b.id) {
            return Err(format!("back-end {:?} exists already", b.id));
        }
        if b.sessions == 0 || b.sessions > 8 || b.queue_depth == 0 || b.queue_depth > 256 {
            return Err("sessions must be 1..=8 and queue_depth 1..=256".into());
        }
        self.backends.insert(b.id.clone(), b.clone());
        self.version += 1;
        Ok(())
    }

    /// Forget a back-end array added online.
    pub fn remove_backend(&mut self, id: &str) -> Result<(), String> {
        self.backends
            .remove(id)
            .ok_or_else(|| format!("no back-end {id:?} was added online"))?;
        self.version += 1;
        Ok(())
    }

    /// Replace the zoning, if it is still at `expected_version`.
    pub fn set_zoning(
        &mut self,
        expected_version: u64,
        zoning: Option<Masking>,
    ) -> Result<(), String> {
        if expected_version != self.zoning_version {
            return Err(format!(
                "the zoning is at version {}, not {expected_version}; re-read it and retry",
                self.zoning_version
            ));
        }
        self.zoning = zoning;
        self.zoning_version += 1;
        self.version += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(target: &str, lun: u16, volume: &str) -> Export {
        Export {
            target: target.into(),
            lun,
            volume: volume.into(),
        }
    }

    #[test]
    fn exports_are_checked_and_normalised() {
        let mut c = Catalog::default();
        c.export(&ex("IQN.2026-11.org.example:T", 1, "v1")).unwrap();
        assert_eq!(c.version, 1);
        // The same LUN under another spelling of the name is taken.
        let e = c
            .export(&ex("iqn.2026-11.org.example:t", 1, "v2"))
            .unwrap_err();
        assert!(e.contains("already shows volume \"v1\""), "{e}");
        assert!(c.export(&ex("not a name", 0, "v2")).is_err());
        let e = c
            .export(&ex("iqn.2026-11.org.example:t", 16384, "v2"))
            .unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        c.export(&ex("iqn.2026-11.org.example:t", 2, "v1")).unwrap();
        c.export(&ex("iqn.2026-11.org.example:u", 0, "v2")).unwrap();
        assert_eq!(c.exports_of("v1").count(), 2);
        assert_eq!(c.unexport("iqn.2026-11.org.example:T", 2).unwrap(), "v1");
        assert!(c.unexport("iqn.2026-11.org.example:t", 2).is_err());
        c.forget_volume("v1");
        assert_eq!(
            c.exports().collect::<Vec<_>>(),
            [ex("iqn.2026-11.org.example:u", 0, "v2")]
        );
    }

    #[test]
    fn zoning_is_compare_and_set() {
        let mut c = Catalog::default();
        c.set_zoning(0, Some(Masking::open())).unwrap();
        let e = c.set_zoning(0, None).unwrap_err();
        assert!(e.contains("version 1, not 0"), "{e}");
        c.set_zoning(1, None).unwrap();
        assert_eq!((c.zoning_version, c.zoning.is_none()), (2, true));
    }
}
