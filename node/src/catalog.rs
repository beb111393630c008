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

/// Back-end arrays added online, as this node has them.
#[derive(Default)]
struct Arrays {
    /// Logged in, LUs in the registry.
    online: BTreeSet<String>,
    /// A login is under way.
    connecting: BTreeSet<String>,
    /// The last failed attempt (retried after `ARRAY_RETRY`).
    failed: BTreeMap<String, std::time::Instant>,
}

/// How long after a failed login to an array added online the node tries again.
const ARRAY_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Catalog {
    ctx: ClusterCtx,
    served: Arc<Served>,
    registry: Registry,
    /// The node's back-ends, volumes and offload map (shared with the API).
    managed: crate::api::Managed,
    node_name: String,
    /// Back-end ids of the node's config (an array added online with one of these
    /// ids is not opened here).
    config_backends: BTreeSet<String>,
    arrays: Arc<Mutex<Arrays>>,
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
        managed: crate::api::Managed,
        cfg: &crate::config::Config,
        prs: PrLus,
        base: Vec<TargetDef>,
    ) -> Arc<Catalog> {
        // `join` put the arrays the cluster added online among the config's back-ends,
        // so `build` opened them; they stay the cluster's (removable online).
        let online: BTreeSet<String> = ctx
            .cluster
            .state()
            .catalog
            .backends
            .keys()
            .cloned()
            .collect();
        let registry = managed.registry();
        let opened = registry.ids();
        let arrays = Arrays {
            online: online
                .iter()
                .filter(|id| opened.iter().any(|lu| lu.starts_with(&format!("{id}/"))))
                .cloned()
                .collect(),
            ..Arrays::default()
        };
        Arc::new(Catalog {
            ctx,
            served: managed.served(),
            registry,
            managed,
            node_name: cfg.node.name.clone(),
            config_backends: cfg
                .backends
                .iter()
                .map(|b| b.id.clone())
                .filter(|id| !online.contains(id))
                .collect(),
            arrays: Arc::new(Mutex::new(arrays)),
            statics: statics(cfg),
            config_zoning: Arc::new(cfg.zoning.clone()),
            prs,
            base,
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
    pub fn sync(self: &Arc<Self>, st: &ClusterState) {
        self.sync_arrays(st);
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

    /// Log in to arrays added online (in the background; a failed login is retried
    /// every `ARRAY_RETRY`), and let go of the ones removed.
    fn sync_arrays(self: &Arc<Self>, st: &ClusterState) {
        let mut a = self.arrays.lock();
        let gone: Vec<String> = a
            .online
            .iter()
            .filter(|id| !st.catalog.backends.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            a.online.remove(&id);
            self.managed.remove_backend(&id);
            tracing::info!(backend = %id, "back-end array removed by the cluster: logged out");
        }
        for (id, spec) in &st.catalog.backends {
            if self.config_backends.contains(id)
                || a.online.contains(id)
                || a.connecting.contains(id)
                || a.failed.get(id).is_some_and(|t| t.elapsed() < ARRAY_RETRY)
            {
                continue;
            }
            let section = match section_of(spec, self.ctx.cluster.sealer()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("{e}; retrying in {} s", ARRAY_RETRY.as_secs());
                    a.failed.insert(id.clone(), std::time::Instant::now());
                    continue;
                }
            };
            a.connecting.insert(id.clone());
            let me = self.clone();
            tokio::spawn(async move {
                let r = crate::build::open_backend(
                    &me.node_name,
                    &section,
                    &BTreeSet::new(),
                    &me.managed,
                    &me.registry,
                )
                .await;
                let mut a = me.arrays.lock();
                a.connecting.remove(&section.id);
                match r {
                    Ok(n) => {
                        tracing::info!(backend = %section.id, lus = n, "logged in to a back-end array the cluster added");
                        a.failed.remove(&section.id);
                        a.online.insert(section.id.clone());
                        // Volumes waiting for it can be assembled now.
                        *me.synced.lock() = None;
                    }
                    Err(e) => {
                        tracing::error!(backend = %section.id, "{e}; retrying in {} s", ARRAY_RETRY.as_secs());
                        a.failed
                            .insert(section.id.clone(), std::time::Instant::now());
                    }
                }
            });
        }
    }

    /// Is back-end `id` one this node can use (config, or added online and logged in)?
    pub fn has_backend(&self, id: &str) -> bool {
        self.config_backends.contains(id) || self.arrays.lock().online.contains(id)
    }

    /// Is back-end `id` defined in this node's config?
    pub fn configured_backend(&self, id: &str) -> bool {
        self.config_backends.contains(id)
    }

    /// The node's name (its default initiator name derives from it).
    pub fn node_name(&self) -> &str {
        &self.node_name
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

/// A config back-end section for an array added online; its CHAP secret is opened
/// with the cluster secret (`cluster::sealed`; the replicated state holds it sealed).
pub fn section_of(
    spec: &cluster::BackendSpec,
    sealer: &cluster::Sealer,
) -> Result<crate::config::BackendSection, String> {
    let chap = match &spec.chap {
        None => None,
        Some((u, s)) => Some(crate::config::ChapSection {
            username: u.clone(),
            secret: sealer.open(s).map_err(|e| {
                format!(
                    "back-end array {id}: its CHAP secret cannot be opened: {e}; remove the \
                         array (`switchyard backends remove {id}`) and add it again with \
                         its secret",
                    id = spec.id
                )
            })?,
            mutual_username: None,
            mutual_secret: None,
        }),
    };
    Ok(crate::config::BackendSection {
        id: spec.id.clone(),
        portal: spec.portal.clone(),
        target: spec.target.clone(),
        initiator_name: spec.initiator_name.clone(),
        chap,
        sessions: spec.sessions,
        queue_depth: spec.queue_depth,
        timeout_secs: spec.timeout_secs,
        digests: false,
    })
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
