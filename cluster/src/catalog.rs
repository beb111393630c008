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
