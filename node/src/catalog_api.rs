//! The management side of the cluster's catalog: creating and deleting volumes,
//! exporting them as LUNs, and the zoning. Each request is checked here against the
//! replicated state and this node's back-ends and targets, so an admin gets a precise
//! error and nothing changes; then it is one replicated command, which every member
//! applies (`catalog.rs`).

use cluster::{Cluster as _, ClusterNode, Command, Export, Outcome};
use fcwwn::Wwn;
use mgmt::model::{CreateVolumeRequest, ExportView, ZoningRequest};
use mgmt::{ApiError, Journal, StatusCode};
use tokio::runtime::Handle;
use volume::{HolePolicy, Registry, VolumeDef};

use crate::catalog::Catalog;

/// Longest volume name.
const MAX_NAME: usize = 64;

/// Propose `cmd`; a refusal is a conflict with the cluster's reason.
fn commit(c: &ClusterNode, rt: &Handle, what: &str, cmd: Command) -> Result<(), ApiError> {
    let answer = rt.block_on(c.propose(cmd)).map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the cluster did not record {what}: {e}"),
            "check `switchyard nodes` for the leader and unreachable members",
        )
    })?;
    match answer.outcome {
        Outcome::Refused(why) => Err(ApiError::conflict(
            format!("the cluster refused {what}: {why}"),
            "nothing was changed",
        )),
        _ => Ok(()),
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            format!("{name:?} is not a valid volume name"),
            format!("use 1 to {MAX_NAME} letters, digits, '-', '_' or '.'"),
        ))
    }
}

/// A target name as this node serves it, or a precise error.
fn served_target(catalog: &Catalog, target: &str) -> Result<String, ApiError> {
    let norm = fcwwn::IscsiName::parse(target)
        .map_err(|e| {
            ApiError::bad_request(
                format!("target {target:?}: {e}"),
                "name a target of `switchyard targets`",
            )
        })?
        .as_str()
        .to_string();
    if !catalog.serves_target(&norm) {
        return Err(ApiError::not_found(
            format!("this node serves no target named {norm}"),
            "`switchyard targets` lists them; targets come from each node's config",
        ));
    }
    Ok(norm)
}

/// Check that LUN `lun` of `target` is free on this node and in the cluster.
fn free_lun(
    catalog: &Catalog,
    st: &cluster::ClusterState,
    target: &str,
    lun: u16,
) -> Result<(), ApiError> {
    if lun > cluster::MAX_EXPORT_LUN {
        return Err(ApiError::bad_request(
            format!("LUN {lun} is out of range"),
            format!("use 0..={}", cluster::MAX_EXPORT_LUN),
        ));
    }
    if catalog.lun_taken(st, target, lun) {
        return Err(ApiError::conflict(
            format!("LUN {lun} of {target} is in use"),
            "`switchyard targets` shows the LUNs in use; pick a free one",
        ));
    }
    Ok(())
}

/// A locally assigned NAA (type 6) for a new volume: unique per name and moment.
fn new_wwn(oui: u32, name: &str) -> Result<String, ApiError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let h = crate::build::fnv1a(format!("volume/{name}/{nanos}").as_bytes());
    let w = Wwn::naa6_from(oui & 0xff_ffff, h >> 28, h.rotate_left(17)).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot assign a WWN: {e}"),
            "give one with \"wwn\"",
        )
    })?;
    Ok(format!("naa.{}", w.to_hex()))
}

/// Check a create request and turn it into the volume and its exports.
pub fn plan_create(
    c: &ClusterNode,
    registry: &Registry,
    catalog: &Catalog,
    oui: u32,
    req: &CreateVolumeRequest,
) -> Result<(VolumeDef, Vec<Export>), ApiError> {
    check_name(&req.name)?;
    let st = c.state();
    if st.table.volume(&req.name).is_some() {
        return Err(ApiError::conflict(
            format!("volume {:?} already exists", req.name),
            "pick another name, or delete the volume first",
        ));
    }
    if req.extents.iter().any(|e| e.mirror.is_some()) {
        return Err(ApiError::bad_request(
            "a new volume's extents cannot have mirrors",
            "mirrors are made by migrations (`switchyard migrate`)",
        ));
    }
    let end = req.extents.iter().map(|e| e.vstart + e.blocks).max();
    let blocks = match (req.blocks, end) {
        (Some(b), _) => b,
        (None, Some(e)) => e,
        (None, None) => {
            return Err(ApiError::bad_request(
                "a volume needs a size",
                "give \"blocks\" or at least one extent",
            ))
        }
    };
    let cat = registry.catalog();
    let block_size = req.block_size.unwrap_or_else(|| {
        req.extents
            .first()
            .and_then(|e| cat.get(&e.backend))
            .map_or(512, |b| b.block_size)
    });
    let wwn = match &req.wwn {
        Some(w) => {
            let parsed = w.parse::<Wwn>().map_err(|e| {
                ApiError::bad_request(
                    format!("wwn {w:?}: {e}"),
                    "use naa. followed by 16 or 32 hex digits",
                )
            })?;
            format!("naa.{}", parsed.to_hex())
        }
        None => new_wwn(oui, &req.name)?,
    };
    let def = VolumeDef {
        name: req.name.clone(),
        wwn,
        block_size,
        blocks,
        holes: req.holes.unwrap_or(HolePolicy::Zero),
        extents: req.extents.clone(),
    };
    let mut table = st.table.clone();
    table.volumes.push(def.clone());
    if let Err(e) = table.validate_with(&cat) {
        return Err(ApiError::invalid(
            format!("volume {} does not fit", req.name),
            e.0.iter().map(|p| p.to_string()).collect(),
        ));
    }
    let mut exports = Vec::new();
    for x in &req.exports {
        let target = served_target(catalog, &x.target)?;
        free_lun(catalog, &st, &target, x.lun)?;
        if exports
            .iter()
            .any(|e: &Export| e.target == target && e.lun == x.lun)
        {
            return Err(ApiError::bad_request(
                format!("LUN {} of {target} is named twice", x.lun),
                "give each export once",
            ));
        }
        exports.push(Export {
            target,
            lun: x.lun,
            volume: req.name.clone(),
        });
    }
    Ok((def, exports))
}

/// Create a volume (checked by [`plan_create`]).
pub fn create(
    c: &ClusterNode,
    rt: &Handle,
    journal: &Journal,
    def: VolumeDef,
    exports: Vec<Export>,
) -> Result<(), ApiError> {
    let name = def.name.clone();
    let shown: Vec<String> = exports
        .iter()
        .map(|e| format!("{} LUN {}", e.target, e.lun))
        .collect();
    commit(
        c,
        rt,
        &format!("volume {name}"),
        Command::CreateVolume { def, exports },
    )?;
    journal.event(
        "info",
        "volume",
        if shown.is_empty() {
            format!("volume {name} created (admin)")
        } else {
            format!(
                "volume {name} created, exported as {} (admin)",
                shown.join(", ")
            )
        },
    );
    Ok(())
}

/// Delete a volume: refused while this node's config shows it, and while it is
/// exported unless `force`.
pub fn delete(
    c: &ClusterNode,
    rt: &Handle,
    catalog: &Catalog,
    journal: &Journal,
    name: &str,
    force: bool,
) -> Result<(), ApiError> {
    let st = c.state();
    let def = st.table.volume(name).ok_or_else(|| {
        ApiError::not_found(
            format!("no volume named {name:?}"),
            "`switchyard volumes` lists them",
        )
    })?;
    if let Some(s) = catalog.statically_exported(name) {
        return Err(ApiError::conflict(
            format!(
                "LUN {} of {} in this node's config shows volume {name}",
                s.lun, s.target
            ),
            "remove that [[target.lun]] from the config of every node that has it, restart them, then delete",
        ));
    }
    let exports: Vec<String> = st
        .catalog
        .exports_of(name)
        .map(|e| format!("{} LUN {}", e.target, e.lun))
        .collect();
    if !exports.is_empty() && !force {
        return Err(ApiError::conflict(
            format!("volume {name} is exported as {}", exports.join(", ")),
            "unexport it first (`switchyard volumes unexport`), or delete with --force: hosts then see the LUN disappear",
        ));
    }
    let pr_key = def.wwn.parse::<Wwn>().ok().map(|w| w.to_hex());
    commit(
        c,
        rt,
        &format!("the deletion of volume {name}"),
        Command::DeleteVolume {
            name: name.to_string(),
            pr_key,
        },
    )?;
    journal.event(
        "info",
        "volume",
        format!("volume {name} deleted (admin); its data stays on the back-end LUs"),
    );
    Ok(())
}

/// Export volume `name` as `at`.
pub fn export(
    c: &ClusterNode,
    rt: &Handle,
    catalog: &Catalog,
    journal: &Journal,
    name: &str,
    at: &ExportView,
) -> Result<(), ApiError> {
    let st = c.state();
    if st.table.volume(name).is_none() {
        return Err(ApiError::not_found(
            format!("no volume named {name:?}"),
            "`switchyard volumes` lists them",
        ));
    }
    let target = served_target(catalog, &at.target)?;
    free_lun(catalog, &st, &target, at.lun)?;
    commit(
        c,
        rt,
        "the export",
        Command::Export(Export {
            target: target.clone(),
            lun: at.lun,
            volume: name.to_string(),
        }),
    )?;
    journal.event(
        "info",
        "volume",
        format!("volume {name} exported as {target} LUN {} (admin)", at.lun),
    );
    Ok(())
}

/// Stop showing volume `name` at `at`.
pub fn unexport(
    c: &ClusterNode,
    rt: &Handle,
    journal: &Journal,
    name: &str,
    at: &ExportView,
) -> Result<(), ApiError> {
    let st = c.state();
    let target = fcwwn::IscsiName::parse(&at.target)
        .map(|n| n.as_str().to_string())
        .unwrap_or_else(|_| at.target.clone());
    let shown = st.catalog.exports.get(&target).and_then(|l| l.get(&at.lun));
    if shown.map(String::as_str) != Some(name) {
        return Err(ApiError::not_found(
            format!("volume {name} is not exported as {target} LUN {}", at.lun),
            "`switchyard volumes show NAME` lists its exports (a LUN of a node's config is removed in that config)",
        ));
    }
    commit(
        c,
        rt,
        "the unexport",
        Command::Unexport {
            target: target.clone(),
            lun: at.lun,
        },
    )?;
    journal.event(
        "info",
        "volume",
        format!(
            "volume {name} no longer exported as {target} LUN {} (admin)",
            at.lun
        ),
    );
    Ok(())
}

/// Replace the cluster's zoning.
pub fn set_zoning(
    c: &ClusterNode,
    rt: &Handle,
    journal: &Journal,
    req: &ZoningRequest,
) -> Result<(), ApiError> {
    commit(
        c,
        rt,
        "the zoning",
        Command::SetZoning {
            expected_version: req.expected_version,
            zoning: req.zoning.clone(),
        },
    )?;
    journal.event(
        "info",
        "zoning",
        match &req.zoning {
            Some(z) => format!(
                "zoning replaced (admin): {} group(s), {} rule(s)",
                z.groups().len(),
                z.rules().len()
            ),
            None => "zoning reset to each node's [zoning] (admin)".to_string(),
        },
    );
    Ok(())
}

/// Check an array to add (by logging in to it from this node) and record it.
pub fn add_backend(
    c: &ClusterNode,
    rt: &Handle,
    catalog: &Catalog,
    journal: &Journal,
    req: &mgmt::model::AddBackendRequest,
) -> Result<(), ApiError> {
    let st = c.state();
    let id = req.id.as_str();
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
    {
        return Err(ApiError::bad_request(
            format!("{id:?} is not a valid back-end id"),
            "use 1 to 64 letters, digits, '-', '_' or '.'",
        ));
    }
    if catalog.configured_backend(id) || st.catalog.backends.contains_key(id) {
        return Err(ApiError::conflict(
            format!("back-end {id} exists already"),
            "`switchyard backends` lists them; pick another id",
        ));
    }
    if req.portal.parse::<std::net::SocketAddr>().is_err() {
        return Err(ApiError::bad_request(
            format!("portal {:?} is not ip:port", req.portal),
            "e.g. 192.0.2.10:3260",
        ));
    }
    fcwwn::IscsiName::parse(&req.target).map_err(|e| {
        ApiError::bad_request(
            format!("target {:?}: {e}", req.target),
            "give the array's iSCSI target name",
        )
    })?;
    let chap = match (&req.chap_username, &req.chap_secret) {
        (Some(u), Some(s)) => Some((u.clone(), s.clone())),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "give both chap_username and chap_secret, or neither",
                "",
            ))
        }
    };
    if let Some(n) = &req.initiator_name {
        fcwwn::IscsiName::parse(n).map_err(|e| {
            ApiError::bad_request(
                format!("initiator_name {n:?}: {e}"),
                "give an iSCSI name (iqn.…), or leave it out",
            )
        })?;
    }
    let spec = cluster::BackendSpec {
        id: id.to_string(),
        portal: req.portal.clone(),
        target: req.target.clone(),
        chap,
        initiator_name: req.initiator_name.clone(),
        sessions: req.sessions.unwrap_or(1),
        queue_depth: req.queue_depth.unwrap_or(32),
        timeout_secs: req.timeout_secs.unwrap_or(15),
    };
    if !(1..=8).contains(&spec.sessions) || !(1..=256).contains(&spec.queue_depth) {
        return Err(ApiError::bad_request(
            "sessions must be 1..=8 and queue_depth 1..=256",
            "",
        ));
    }
    // Log in once from here, so a wrong portal, name or secret is reported now. The
    // secret goes into the replicated state sealed (`cluster::sealed`).
    let mut spec = spec;
    if let Some((_, secret)) = &mut spec.chap {
        *secret = c.sealer().seal(secret);
    }
    let section = crate::catalog::section_of(&spec, c.sealer()).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e,
            "nothing was recorded; this is a bug, please report it",
        )
    })?;
    let probe = rt.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            crate::build::connect_backend(catalog.node_name(), &section),
        )
        .await
    });
    match probe {
        Ok(Ok(client)) => drop(client),
        Ok(Err(e)) => {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                e,
                "nothing was recorded; check the portal, the target name, the CHAP account and the array's ACL for this node's initiator name",
            ))
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("no login to {} at {} within 10 s", req.target, req.portal),
                "nothing was recorded; check that the portal is reachable",
            ))
        }
    }
    commit(c, rt, &format!("back-end {id}"), Command::AddBackend(spec))?;
    journal.event(
        "info",
        "backend",
        format!(
            "back-end array {id} added (admin): {} at {}",
            req.target, req.portal
        ),
    );
    Ok(())
}

/// Remove an array added online.
pub fn remove_backend(
    c: &ClusterNode,
    rt: &Handle,
    catalog: &Catalog,
    journal: &Journal,
    id: &str,
) -> Result<(), ApiError> {
    if catalog.configured_backend(id) {
        return Err(ApiError::conflict(
            format!("back-end {id} is defined in this node's config"),
            "remove its [[backend]] from the configs and restart the nodes",
        ));
    }
    if !c.state().catalog.backends.contains_key(id) {
        return Err(ApiError::not_found(
            format!("no back-end {id:?} was added online"),
            "`switchyard backends` lists them",
        ));
    }
    commit(
        c,
        rt,
        &format!("the removal of back-end {id}"),
        Command::RemoveBackend { id: id.to_string() },
    )?;
    journal.event(
        "info",
        "backend",
        format!("back-end array {id} removed (admin)"),
    );
    Ok(())
}

/// A volume the cluster recorded but this node does not serve (yet), as the cluster
/// describes it.
pub fn recorded_view(
    st: &cluster::ClusterState,
    name: &str,
) -> Result<mgmt::model::VolumeView, ApiError> {
    let def = st.table.volume(name).ok_or_else(|| {
        ApiError::not_found(
            format!("no volume named {name:?}"),
            "it was deleted meanwhile",
        )
    })?;
    tracing::warn!(
        volume = name,
        "recorded by the cluster but not served by this node (yet)"
    );
    Ok(mgmt::model::VolumeView {
        name: def.name.clone(),
        wwn: def.wwn.clone(),
        block_size: def.block_size,
        blocks: def.blocks,
        holes: def.holes,
        epoch: st.table.epoch,
        exports: st
            .catalog
            .exports_of(name)
            .map(|e| ExportView {
                target: e.target,
                lun: e.lun,
            })
            .collect(),
        map: crate::moves::segments(def),
        held: Vec::new(),
        io: Default::default(),
    })
}

/// The catalog's part of `GET /api/v1/config`: the exports and the arrays added
/// online (never their CHAP secrets).
pub fn fill_doc(st: &cluster::ClusterState, doc: &mut mgmt::model::ConfigDoc) {
    doc.exports = st
        .catalog
        .exports()
        .map(|e| mgmt::model::ExportDoc {
            target: e.target,
            lun: e.lun,
            volume: e.volume,
        })
        .collect();
    doc.backends = st
        .catalog
        .backends
        .values()
        .map(|b| mgmt::model::BackendDoc {
            id: b.id.clone(),
            portal: b.portal.clone(),
            target: b.target.clone(),
            chap_username: b.chap.as_ref().map(|c| c.0.clone()),
            chap_secret: None,
            initiator_name: b.initiator_name.clone(),
            sessions: b.sessions,
            queue_depth: b.queue_depth,
            timeout_secs: b.timeout_secs,
        })
        .collect();
}
