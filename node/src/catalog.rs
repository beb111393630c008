//! A cluster member keeps what it serves in line with the cluster's catalog
//! (`cluster::Catalog`) and table: volumes created through any member are assembled
//! here, volumes exported online appear as LUNs of this node's targets of that name,
//! the cluster's zoning replaces the config's `[zoning]` once an admin sets one, and
//! deleted volumes disappear. Live sessions see each change at once
//! (`ServerShared::update_targets`: a new LUN map and REPORTED LUNS DATA HAS CHANGED).
//!
//! `sync` runs from the remap participant's loop, only while no change is active: a
//! volume is never assembled from a table a running remap is about to replace, and
//! never removed under one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use cluster::ClusterState;
use fcwwn::{Masking, Wwn};
use iscsi::server::ServerShared;
use iscsi::{LunDef, TargetDef};
use parking_lot::Mutex;
use scsi::LogicalUnit;
use volume::{LiveVolume, Registry, VirtualVolume};

use cluster::Cluster as _;

use crate::build::ClusterCtx;
use crate::clustered::PrLus;
use crate::served::{Served, ServedVolume};

/// A LUN of the node's config that shows a volume (`[[target.lun]] volume = …`).
#[derive(Debug, Clone)]
pub struct StaticExport {
    /// Normalised target name.
    pub target: String,
    pub lun: u16,
    pub volume: String,
}

pub struct Catalog {
    ctx: ClusterCtx,
    served: Arc<Served>,
    registry: Registry,
    prs: PrLus,
    /// The targets as the config builds them (static LUNs, the config's zoning).
    base: Vec<TargetDef>,
    statics: Vec<StaticExport>,
    config_zoning: Arc<Masking>,
    server: OnceLock<Arc<ServerShared>>,
    /// What was last brought in line: (catalog version, table epoch).
    synced: Mutex<Option<(u64, u64)>>,
    /// The zoning version last applied.
    zoning_version: std::sync::atomic::AtomicU64,
    /// Volumes this node cannot assemble (a back-end it does not reach), with the
    /// reason, logged once per table epoch.
    unservable: Mutex<BTreeMap<String, String>>,
}

impl Catalog {
    pub fn new(
        ctx: ClusterCtx,
        served: Arc<Served>,
        registry: Registry,
        prs: PrLus,
        base: Vec<TargetDef>,
        statics: Vec<StaticExport>,
        config_zoning: Arc<Masking>,
    ) -> Arc<Catalog> {
        Arc::new(Catalog {
            ctx,
            served,
            registry,
            prs,
            base,
            statics,
            config_zoning,
            server: OnceLock::new(),
            synced: Mutex::new(None),
            zoning_version: Default::default(),
            unservable: Mutex::new(BTreeMap::new()),
        })
    }

    /// The fabric whose targets `sync` updates (set once it exists).
    pub fn set_server(&self, server: Arc<ServerShared>) {
        let _ = self.server.set(server);
    }

    /// The targets this node should serve for `st` (also used before the fabric
    /// starts, so the first login already sees them).
    pub fn targets(&self, st: &ClusterState) -> Vec<TargetDef> {
        let masking = match &st.catalog.zoning {
            Some(z) => Arc::new(z.clone()),
            None => self.config_zoning.clone(),
        };
        let mut out = Vec::new();
        for base in &self.base {
            let mut luns: Vec<LunDef> = base
                .luns
                .iter()
                .filter(|l| {
                    // A config LUN showing a volume the cluster deleted goes away.
                    self.statics
                        .iter()
                        .find(|s| s.target == base.name && s.lun == l.lun)
                        .is_none_or(|s| st.table.volume(&s.volume).is_some())
                })
                .cloned()
                .collect();
            if let Some(exports) = st.catalog.exports.get(&base.name) {
                for (&lun, volume) in exports {
                    if luns.iter().any(|l| l.lun == lun) {
                        tracing::warn!(target = %base.name, lun, volume = %volume,
                            "the cluster exports a volume at a LUN this node's config uses; the config's LUN stays");
                        continue;
                    }
                    if let Some(lu) = self.lu_of(volume, st) {
                        luns.push(LunDef { lun, lu });
                    }
                }
            }
            luns.sort_by_key(|l| l.lun);
            out.push(TargetDef {
                luns,
                masking: masking.clone(),
                ..base.clone()
            });
        }
        out
    }

    /// The logical unit of a served volume: the one the config made, or a new one.
    fn lu_of(&self, volume: &str, st: &ClusterState) -> Option<Arc<LogicalUnit>> {
        let sv = self.served.get(volume)?;
        if let Some(lu) = sv.lus.lock().first() {
            return Some(lu.clone());
        }
        let def = st.table.volume(volume)?;
        let made = def
            .wwn
            .parse::<Wwn>()
            .map_err(|e| format!("wwn: {e}"))
            .and_then(|wwn| crate::build::volume_lu(&self.ctx, sv.store.clone(), &wwn));
        match made {
            Ok((lu, pr)) => {
                sv.lus.lock().push(lu.clone());
                self.prs.write().push(pr.clone());
                pr.catch_up(&self.ctx.cluster.state());
                Some(lu)
            }
            Err(e) => {
                tracing::error!(volume, "cannot create the volume's logical unit: {e}");
                None
            }
        }
    }

    /// Bring volumes and targets in line with `st`. Call only while no change is
    /// active (see the module docs).
    pub fn sync(&self, st: &ClusterState) {
        let key = (st.catalog.version, st.table.epoch);
        if *self.synced.lock() == Some(key) {
            return;
        }
        // Volumes created since: assemble them at the table's epoch.
        for def in &st.table.volumes {
            if self.served.contains(&def.name) {
                continue;
            }
            match VirtualVolume::new(def, &self.registry, st.table.epoch) {
                Ok(vv) => {
                    self.served
                        .insert(ServedVolume::new(Arc::new(LiveVolume::new(vv))));
                    self.unservable.lock().remove(&def.name);
                    tracing::info!(volume = %def.name, epoch = st.table.epoch, "serving a volume the cluster created");
                }
                Err(e) => {
                    let e = e.to_string();
                    let mut u = self.unservable.lock();
                    if u.get(&def.name) != Some(&e) {
                        tracing::error!(volume = %def.name, "cannot serve the volume here: {e}");
                        u.insert(def.name.clone(), e);
                    }
                }
            }
        }
        let targets = self.targets(st);
        if let Some(server) = self.server.get() {
            let done = server.update_targets(targets);
            if done.remapped + done.ended > 0 {
                tracing::info!(
                    sessions_remapped = done.remapped,
                    sessions_ended = done.ended,
                    "targets changed: live sessions updated"
                );
            }
        }
        // Volumes deleted since: nothing shows them any more.
        let names: BTreeSet<&str> = st.table.volumes.iter().map(|v| v.name.as_str()).collect();
        for (name, sv) in self.served.all() {
            if names.contains(name.as_str()) {
                continue;
            }
            self.served.remove(&name);
            let lus = std::mem::take(&mut *sv.lus.lock());
            self.prs
                .write()
                .retain(|p| !lus.iter().any(|l| Arc::ptr_eq(l, &p.lu)));
            tracing::info!(volume = %name, "stopped serving a volume the cluster deleted");
        }
        *self.synced.lock() = Some(key);
        self.zoning_version.store(
            st.catalog.zoning_version,
            std::sync::atomic::Ordering::Release,
        );
    }

    /// The zoning version the node's targets apply.
    pub fn zoning_version(&self) -> u64 {
        self.zoning_version
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Is LUN `lun` of `target` used, by this node's config or by an export?
    pub fn lun_taken(&self, st: &ClusterState, target: &str, lun: u16) -> bool {
        self.base
            .iter()
            .any(|t| t.name == target && t.luns.iter().any(|l| l.lun == lun))
            || st
                .catalog
                .exports
                .get(target)
                .is_some_and(|l| l.contains_key(&lun))
    }

    /// Is `volume` shown by a LUN of this node's config (which the cluster cannot
    /// remove)?
    pub fn statically_exported(&self, volume: &str) -> Option<&StaticExport> {
        self.statics.iter().find(|s| s.volume == volume)
    }

    /// Does this node serve a target of this (normalised) name?
    pub fn serves_target(&self, target: &str) -> bool {
        self.base.iter().any(|t| t.name == target)
    }
}

/// The LUNs of `cfg` that show volumes.
pub fn statics(cfg: &crate::config::Config) -> Vec<StaticExport> {
    let mut out = Vec::new();
    for t in &cfg.targets {
        let Ok(name) = fcwwn::IscsiName::parse(&t.name) else {
            continue;
        };
        for l in &t.luns {
            if let Some(v) = &l.volume {
                out.push(StaticExport {
                    target: name.as_str().to_string(),
                    lun: l.lun,
                    volume: v.clone(),
                });
            }
        }
    }
    out
}
