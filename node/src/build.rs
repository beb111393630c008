//! Turn a validated [`Config`] into running pieces: open the back-end stores, create the
//! logical units, and describe the targets and portals for the iSCSI fabric.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use blockdev::{BlockStore, FileStore, FileStoreOptions};
use fcwwn::{IscsiName, Wwn};
use iscsi::{ChapConfig, FabricConfig, LunDef, PortalDef, TargetDef};
use scsi::{
    FilePrStore, LogicalUnit, LuConfig, PortGroup, PortGroups, TargetInfo, TargetPortGroups,
};

use cluster::Cluster as _;
use iscsi_initiator::{ChapCredentials, Client, InitiatorConfig, RemoteStore, RemoteStoreOptions};
use volume::{LiveVolume, Registry, VirtualVolume};

use crate::api::Managed;
use crate::config::{
    alua_state, backend_ref, parse_size, BackendRef, BackendSection, Config, LunSection,
};

/// Everything `serve` runs.
pub struct Node {
    pub fabric: FabricConfig,
    pub targets: Vec<TargetDef>,
    pub portals: Vec<PortalDef>,
    /// Every store, to flush on shutdown.
    pub stores: Vec<Arc<dyn BlockStore>>,
    /// What the management API sees: back-end LUs, volumes, registry, table.
    pub managed: Managed,
    /// In a cluster: the LUs whose persistent reservations the cluster keeps.
    pub clustered: Vec<Arc<crate::clustered::ClusteredLu>>,
}

/// What `build` needs to know when the node is a cluster member.
#[derive(Clone)]
pub struct ClusterCtx {
    pub cluster: Arc<cluster::ClusterNode>,
    /// The port group model every LU of the node shares (kept in step with the
    /// replicated state by `clustered::spawn_follower`).
    pub groups: Arc<PortGroups>,
    /// How long a member serves without word from a leader (`clustered::lease`).
    pub lease: std::time::Duration,
}

/// Build the node: open local stores, log in to the back-end arrays the mapping table
/// uses, assemble the virtual volumes, and create the LUs. Runs inside the runtime
/// (remote back-ends need it). Errors name the target, LUN or back-end and say what
/// to fix.
pub async fn build(cfg: &Config, cl: Option<&ClusterCtx>) -> Result<Node, String> {
    let masking = Arc::new(cfg.zoning.clone());
    let mut clustered = Vec::new();
    let mut stores: Vec<Arc<dyn BlockStore>> = Vec::new();
    let mut managed = Managed::default();
    let volumes = open_volumes(cfg, &mut managed).await?;
    let mut targets = Vec::new();
    for t in &cfg.targets {
        let name = IscsiName::parse(&t.name).map_err(|e| format!("target {}: {e}", t.name))?;
        let name = name.as_str().to_string();
        let info = Arc::new(TargetInfo {
            name: name.clone(),
            port_name: format!("{name},t,0x0001"),
        });
        let groups = if let Some(c) = cl {
            Some(c.groups.clone())
        } else if t.port_groups.is_empty() {
            None
        } else {
            let mut gs = Vec::new();
            for g in &t.port_groups {
                gs.push(PortGroup {
                    id: g.id,
                    state: alua_state(&g.state)?,
                    ports: g.ports.clone(),
                    preferred: g.preferred,
                });
            }
            Some(
                PortGroups::new(TargetPortGroups {
                    groups: gs,
                    implicit_transition_secs: 30,
                })
                .map_err(|e| format!("target {name}: port groups: {e}"))?,
            )
        };
        let mut luns = Vec::new();
        for l in &t.luns {
            let (store, volume_wwn): (Arc<dyn BlockStore>, Option<Wwn>) = match &l.volume {
                // A member leaves out a LUN whose volume it does not serve (deleted by
                // the cluster, or on a back-end it does not reach): `join` warned.
                Some(v) if cl.is_some() && !volumes.contains_key(v) => continue,
                Some(v) => volumes.get(v).cloned().ok_or_else(|| {
                    format!(
                        "target {name} LUN {}: volume \"{v}\" is not in the mapping table",
                        l.lun
                    )
                })?,
                None => (
                    open_store(cfg, l).map_err(|e| format!("target {name} LUN {}: {e}", l.lun))?,
                    None,
                ),
            };
            if l.thin == Some(true) && !store.capabilities().unmap {
                return Err(format!(
                    "target {name} LUN {}: thin = true needs a back-end that can deallocate \
                     (a writable regular file); set thin = false",
                    l.lun
                ));
            }
            // A virtual volume keeps its own identity wherever it is served.
            let wwn = match (l.wwn, volume_wwn) {
                (Some(w), _) | (None, Some(w)) => w,
                (None, None) => derive_wwn(cfg.node.oui, &name, l.lun)?,
            };
            let serial = l.serial.clone().unwrap_or_else(|| wwn.to_hex());
            let mut naa = [0u8; 16];
            naa[..wwn.as_bytes().len()].copy_from_slice(wwn.as_bytes());
            let lu_cfg = LuConfig {
                wwn: naa,
                naa_len: wwn.as_bytes().len() as u8,
                serial,
                vendor: l.vendor.clone(),
                product: l.product.clone(),
                read_only: l.read_only,
                thin: l.thin.unwrap_or(true) && store.capabilities().unmap,
                ..LuConfig::default()
            };
            let mut lu = LogicalUnit::new(lu_cfg, store.clone());
            if let Some(g) = &groups {
                lu = lu.with_port_groups(g.clone());
            }
            let lu = match cl {
                Some(c) => {
                    let (lu, pr) = clustered_lu(c, lu, &wwn)
                        .map_err(|e| format!("target {name} LUN {}: {e}", l.lun))?;
                    clustered.push(pr);
                    lu
                }
                None => {
                    let pr_path = match &l.pr_file {
                        Some(p) => cfg.resolve(p),
                        None => cfg.resolve(Path::new(&format!(
                            "{}.lun{}.pr",
                            name.replace(':', "_"),
                            l.lun
                        ))),
                    };
                    Arc::new(
                        lu.with_pr_store(Arc::new(FilePrStore::new(pr_path)))
                            .map_err(|e| format!("target {name} LUN {}: {e}", l.lun))?,
                    )
                }
            };
            stores.push(store);
            if let Some(sv) = l.volume.as_ref().and_then(|v| managed.served().get(v)) {
                sv.lus.lock().push(lu.clone());
            }
            luns.push(LunDef { lun: l.lun, lu });
        }
        let chap = t.chap.as_ref().map(|c| ChapConfig {
            username: c.username.clone(),
            secret: c.secret.clone(),
            mutual: match (&c.mutual_username, &c.mutual_secret) {
                (Some(u), Some(s)) => Some((u.clone(), s.clone())),
                _ => None,
            },
        });
        targets.push(TargetDef {
            name,
            alias: t.alias.clone(),
            luns,
            masking: masking.clone(),
            chap,
            info,
        });
    }
    let portals = cfg
        .portals
        .iter()
        .enumerate()
        .map(|(i, p)| PortalDef {
            addr: p.listen.parse::<SocketAddr>().expect("validated"),
            tpgt: p.tpgt,
            relative_port: match cl {
                Some(c) => crate::clustered::relative_port(c.cluster.id(), i),
                None => 0,
            },
        })
        .collect();
    Ok(Node {
        fabric: fabric_config(cfg),
        targets,
        portals,
        stores,
        managed,
        clustered,
    })
}

/// Put a logical unit under the cluster's persistent reservations, keyed by its WWN:
/// the same LU served by every node shares one record.
pub fn clustered_lu(
    c: &ClusterCtx,
    lu: LogicalUnit,
    wwn: &Wwn,
) -> Result<(Arc<LogicalUnit>, Arc<crate::clustered::ClusteredLu>), String> {
    let key = wwn.to_hex();
    let coord = crate::clustered::ClusterPr::new(c.cluster.clone(), key.clone(), c.lease);
    let lu = Arc::new(lu.with_pr_coordinator(coord).map_err(|e| e.to_string())?);
    let pr = Arc::new(crate::clustered::ClusteredLu {
        key,
        lu: lu.clone(),
    });
    Ok((lu, pr))
}

/// The logical unit of a volume exported online (a cluster member's catalog): the
/// volume's WWN, the cluster's port groups and persistent reservations.
pub fn volume_lu(
    c: &ClusterCtx,
    store: Arc<dyn BlockStore>,
    wwn: &Wwn,
) -> Result<(Arc<LogicalUnit>, Arc<crate::clustered::ClusteredLu>), String> {
    let mut naa = [0u8; 16];
    naa[..wwn.as_bytes().len()].copy_from_slice(wwn.as_bytes());
    let cfg = LuConfig {
        wwn: naa,
        naa_len: wwn.as_bytes().len() as u8,
        serial: wwn.to_hex(),
        thin: store.capabilities().unmap,
        ..LuConfig::default()
    };
    let lu = LogicalUnit::new(cfg, store).with_port_groups(c.groups.clone());
    clustered_lu(c, lu, wwn)
}

fn open_store(cfg: &Config, l: &LunSection) -> Result<Arc<dyn BlockStore>, String> {
    let path = cfg.resolve(l.path.as_deref().expect("validated: path or volume"));
    open_file(
        &path,
        l.size.as_deref(),
        FileStoreOptions {
            block_size: l.block_size,
            read_only: l.read_only,
            readahead: l.readahead,
            create_size: None,
        },
    )
}

/// Open a file LU; `size` (a config size string) creates a sparse file if the path
/// does not exist.
fn open_file(
    path: &Path,
    size: Option<&str>,
    mut opts: FileStoreOptions,
) -> Result<Arc<dyn BlockStore>, String> {
    opts.create_size = match size {
        Some(s) => Some(parse_size(s)?),
        None => None,
    };
    if opts.create_size.is_none() && !path.exists() {
        return Err(format!(
            "{} does not exist; create it or set `size` to create a sparse file",
            path.display()
        ));
    }
    let store = FileStore::open(path, &opts).map_err(|e| e.to_string())?;
    Ok(Arc::new(store))
}

/// Open every back-end LU the mapping table uses and assemble each volume as a
/// [`LiveVolume`] (remappable online). Returns volume name -> (store, WWN).
async fn open_volumes(
    cfg: &Config,
    mg: &mut Managed,
) -> Result<HashMap<String, (Arc<dyn BlockStore>, Option<Wwn>)>, String> {
    let mut out = HashMap::new();
    let Some(table) = &cfg.mapping else {
        return Ok(out);
    };
    let registry = Registry::new();
    for st in &cfg.stores {
        let store = open_file(
            &cfg.resolve(&st.path),
            st.size.as_deref(),
            FileStoreOptions {
                block_size: st.block_size,
                read_only: st.read_only,
                readahead: st.readahead,
                create_size: None,
            },
        )
        .map_err(|e| format!("store {}: {e}", st.id))?;
        let path = cfg.resolve(&st.path);
        if let Ok(canonical) = std::fs::canonicalize(&path) {
            registry.set_identity(st.id.clone(), format!("file:{}", canonical.display()));
        }
        registry.insert(st.id.clone(), mg.store_lu(&st.id, &path, store));
    }
    // Log in to every configured array once and open every LU it reports (a remap or
    // a migration may move an extent to any of them); the LUs the table uses must
    // open, the others are skipped with a warning when they do not.
    let mut used: std::collections::BTreeMap<&str, std::collections::BTreeSet<u64>> =
        Default::default();
    for v in &table.volumes {
        for e in &v.extents {
            if let BackendRef::Remote { backend, lun } = backend_ref(&e.backend) {
                if !registry.catalog().contains_key(&e.backend) {
                    used.entry(backend).or_default().insert(lun);
                }
            }
        }
    }
    for b in &cfg.backends {
        let needed = used.get(b.id.as_str()).cloned().unwrap_or_default();
        match open_backend(&cfg.node.name, b, &needed, mg, &registry).await {
            Ok(_) => {}
            Err(e) if needed.is_empty() => {
                tracing::warn!(backend = %b.id, "{e}; no volume uses it yet, so the node starts without it");
            }
            Err(e) => return Err(e),
        }
    }
    // A cluster member serves the volumes whose back-ends it reaches (the others serve
    // the rest); a single node must reach them all.
    let mut servable = table.clone();
    if cfg.cluster.is_some() {
        let cat = registry.catalog();
        servable.volumes.retain(|v| {
            let missing = v
                .extents
                .iter()
                .flat_map(|e| std::iter::once(&e.backend).chain(e.mirror.iter().map(|m| &m.backend)))
                .find(|b| !cat.contains_key(*b));
            if let Some(b) = missing {
                tracing::warn!(volume = %v.name, backend = %b, "not served by this node: it does not reach that back-end");
            }
            missing.is_none()
        });
    }
    servable
        .validate_with(&registry.catalog())
        .map_err(|e| format!("[mapping] does not fit the back-ends: {e}"))?;
    for def in &servable.volumes {
        let vv = VirtualVolume::new(def, &registry, table.epoch)
            .map_err(|e| format!("volume {}: {e}", def.name))?;
        let wwn = def
            .wwn
            .parse::<Wwn>()
            .map_err(|e| format!("volume {}: wwn: {e}", def.name))?;
        let live: Arc<dyn BlockStore> = mg.volume(Arc::new(LiveVolume::new(vv)));
        out.insert(def.name.clone(), (live, Some(wwn)));
    }
    mg.set_mapping(table.clone(), registry);
    Ok(out)
}

/// Log in to array `b` and open every LU it reports (and the `needed` LUNs, which
/// must open): each goes into `registry` as `<id>/lun<N>`, and into the management
/// view and the copy offload map. Returns how many LUs opened. Used at start and for
/// arrays added online.
pub async fn open_backend(
    node_name: &str,
    b: &BackendSection,
    needed: &std::collections::BTreeSet<u64>,
    mg: &Managed,
    registry: &Registry,
) -> Result<usize, String> {
    let mut opened = 0;
    {
        let client = connect_backend(node_name, b).await?;
        let timeout = Duration::from_secs(b.timeout_secs);
        let mut luns = report_luns(&client, timeout).await.unwrap_or_else(|e| {
            tracing::warn!(backend = %b.id, "REPORT LUNS: {e}; opening only the LUs the table uses");
            Vec::new()
        });
        luns.extend(needed.iter().copied());
        luns.sort_unstable();
        luns.dedup();
        for lun in luns {
            let id = format!("{}/lun{lun}", b.id);
            let opts = RemoteStoreOptions {
                timeout,
                ..RemoteStoreOptions::default()
            };
            let store = match RemoteStore::open(client.clone(), lun, opts).await {
                Ok(s) => s,
                Err(e) if !needed.contains(&lun) => {
                    tracing::warn!(backend = %b.id, lun, "cannot open: {e}; skipped");
                    continue;
                }
                Err(e) => {
                    return Err(format!(
                        "backend {} ({} at {}) LUN {lun}: {e}",
                        b.id, b.target, b.portal
                    ))
                }
            };
            tracing::info!(backend = %b.id, lun, blocks = store.num_blocks(), "back-end LU opened");
            let c = store.client().clone();
            // Two back-ends (paths) reaching one array LU name the same target and
            // report the same designator. iSCSI names are unique, so a designator two
            // arrays happen to share (derived from the same LUN number, say) never
            // makes two LUs look like one; without a designator an LU is only itself.
            if let Some(naa) = store.naa_designator() {
                let hex: String = naa.iter().map(|b| format!("{b:02x}")).collect();
                registry.set_identity(id.clone(), format!("{} naa.{hex}", b.target));
            }
            let store = Arc::new(store);
            mg.offload_lu(&id, store.clone());
            let store = mg.remote_lu(&b.id, &b.portal, &b.target, &id, &c, store);
            registry.insert(id, store);
            opened += 1;
        }
    }
    Ok(opened)
}

/// REPORT LUNS (SPC-4 6.33) on the array: the LUN numbers it reports.
async fn report_luns(client: &Client, timeout: Duration) -> Result<Vec<u64>, String> {
    let alloc: u32 = 16 + 8 * 1024;
    let mut cdb = [0u8; 12];
    cdb[0] = 0xa0;
    cdb[6..10].copy_from_slice(&alloc.to_be_bytes());
    let out = client
        .execute(0, &cdb, bytes::Bytes::new(), alloc, timeout)
        .await
        .map_err(|e| e.to_string())?;
    if !out.is_good() || out.data.len() < 8 {
        return Err(format!("status {:#04x}", out.status));
    }
    let len = u32::from_be_bytes([out.data[0], out.data[1], out.data[2], out.data[3]]) as usize;
    let list = &out.data[8..(8 + len).min(out.data.len())];
    Ok(list
        .chunks_exact(8)
        .map(|e| iscsi_wire::lun::decode_lun(u64::from_be_bytes(e.try_into().expect("8 bytes"))))
        .collect())
}

pub(crate) async fn connect_backend(node_name: &str, b: &BackendSection) -> Result<Client, String> {
    let portal = b
        .portal
        .parse::<SocketAddr>()
        .map_err(|e| format!("backend {}: portal {:?}: {e}", b.id, b.portal))?;
    let initiator = b.initiator_name.clone().unwrap_or_else(|| {
        format!(
            "iqn.2026-11.org.switchyard:{}",
            node_name.to_ascii_lowercase()
        )
    });
    let mut ic = InitiatorConfig::new(portal, initiator, b.target.clone());
    ic.sessions = b.sessions;
    ic.queue_depth = b.queue_depth;
    ic.header_digest = b.digests;
    ic.data_digest = b.digests;
    ic.chap = b.chap.as_ref().map(|c| ChapCredentials {
        username: c.username.clone(),
        secret: c.secret.clone(),
        mutual: match (&c.mutual_username, &c.mutual_secret) {
            (Some(u), Some(s)) => Some((u.clone(), s.clone())),
            _ => None,
        },
    });
    Client::connect(ic).await.map_err(|e| {
        format!(
            "backend {}: cannot log in to {} at {}: {e}; check the portal, target name and CHAP",
            b.id, b.target, b.portal
        )
    })
}

/// NAA 6 WWN from the OUI and a hash of (target name, LUN): stable across restarts and
/// the same on every node that serves the same config.
pub fn derive_wwn(oui: u32, target: &str, lun: u16) -> Result<Wwn, String> {
    let h = fnv1a(format!("{target}/{lun}").as_bytes());
    Wwn::naa6_from(oui & 0xff_ffff, h >> 28, h.rotate_left(17))
        .map_err(|e| format!("cannot derive a WWN for {target} LUN {lun}: {e}"))
}

pub(crate) fn fnv1a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn fabric_config(cfg: &Config) -> FabricConfig {
    let f = &cfg.fabric;
    let d = FabricConfig::default();
    FabricConfig {
        max_recv_data_segment: f
            .max_recv_data_segment_length
            .unwrap_or(d.max_recv_data_segment),
        max_burst: f.max_burst_length.unwrap_or(d.max_burst),
        first_burst: f.first_burst_length.unwrap_or(d.first_burst),
        immediate_data: f.immediate_data.unwrap_or(d.immediate_data),
        initial_r2t: f.initial_r2t.unwrap_or(d.initial_r2t),
        max_outstanding_r2t: f.max_outstanding_r2t.unwrap_or(d.max_outstanding_r2t),
        queue_depth: f.queue_depth.unwrap_or(d.queue_depth),
        max_sessions: f.max_sessions.unwrap_or(d.max_sessions),
        max_sessions_per_initiator: f
            .max_sessions_per_initiator
            .unwrap_or(d.max_sessions_per_initiator),
        nop_interval: f
            .nop_interval_secs
            .map(Duration::from_secs)
            .unwrap_or(d.nop_interval),
        nop_timeout: f
            .nop_timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(d.nop_timeout),
        busy_poll: f
            .busy_poll_us
            .map(Duration::from_micros)
            .unwrap_or(d.busy_poll),
        ..d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_wwn_is_stable_and_distinct() {
        let a = derive_wwn(0x5359, "iqn.2026-11.org.switchyard:a", 0).unwrap();
        let b = derive_wwn(0x5359, "iqn.2026-11.org.switchyard:a", 0).unwrap();
        let c = derive_wwn(0x5359, "iqn.2026-11.org.switchyard:a", 1).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.as_bytes().len(), 16);
        assert_eq!(a.as_bytes()[0] >> 4, 6);
    }
}
