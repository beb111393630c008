//! `switchyard config export|import`: what was configured online (back-end arrays,
//! volumes, exports, zoning) as one TOML document, and applying such a document to a
//! cluster. An import only does what needs no data to move: it adds arrays, creates
//! volumes, exports and unexports, and sets the zoning; a volume whose extents differ
//! from the cluster's is reported (change it with `remap` or `migrate`). With
//! `--prune` it also deletes volumes and removes arrays the file does not have.

use std::collections::BTreeMap;
use std::path::Path;

use clap::Subcommand;

use crate::client::{Client, ClientError};
use crate::model::{
    AddBackendRequest, ConfigDoc, CreateVolumeRequest, ExportDoc, ExportView, VolumeView,
    ZoningRequest, ZoningView,
};

/// `config` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum ConfigCmd {
    /// Print what was configured online as TOML (`--output json` for JSON). CHAP
    /// secrets are never exported.
    Export,
    /// Apply a document written by `config export` (or by hand).
    Import {
        file: std::path::PathBuf,
        /// Print the plan, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete volumes (with their exports) and remove arrays the file does not
        /// have.
        #[arg(long)]
        prune: bool,
    },
}

/// One step of an import.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    AddBackend(String),
    CreateVolume(String),
    Export(ExportDoc),
    Unexport(ExportDoc),
    SetZoning,
    DeleteVolume(String),
    RemoveBackend(String),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::AddBackend(id) => write!(f, "add back-end array {id}"),
            Step::CreateVolume(v) => write!(f, "create volume {v}"),
            Step::Export(e) => write!(f, "export {} as {} LUN {}", e.volume, e.target, e.lun),
            Step::Unexport(e) => write!(f, "unexport {} from {} LUN {}", e.volume, e.target, e.lun),
            Step::SetZoning => write!(f, "replace the zoning"),
            Step::DeleteVolume(v) => write!(f, "delete volume {v}"),
            Step::RemoveBackend(id) => write!(f, "remove back-end array {id}"),
        }
    }
}

/// What importing `want` over `have` does, in order; Err lists what an import cannot
/// do (volumes that exist with other extents or size).
pub fn plan(have: &ConfigDoc, want: &ConfigDoc, prune: bool) -> Result<Vec<Step>, Vec<String>> {
    let mut steps = Vec::new();
    let mut problems = Vec::new();
    for b in &want.backends {
        if !have.backends.iter().any(|h| h.id == b.id) {
            steps.push(Step::AddBackend(b.id.clone()));
        }
    }
    let have_vols: BTreeMap<&str, &volume::VolumeDef> = have
        .mapping
        .volumes
        .iter()
        .map(|v| (v.name.as_str(), v))
        .collect();
    for v in &want.mapping.volumes {
        match have_vols.get(v.name.as_str()) {
            None => steps.push(Step::CreateVolume(v.name.clone())),
            Some(h) => {
                let mut a = h.extents.clone();
                let mut b = v.extents.clone();
                a.sort_by_key(|e| e.vstart);
                b.sort_by_key(|e| e.vstart);
                if a != b || h.blocks != v.blocks || h.block_size != v.block_size {
                    problems.push(format!(
                        "volume {} exists with other extents or size; change it with `switchyard remap` or `migrate`",
                        v.name
                    ));
                }
            }
        }
    }
    // Exports of created volumes go with their creation; the rest are steps.
    let created: Vec<String> = steps
        .iter()
        .filter_map(|s| match s {
            Step::CreateVolume(v) => Some(v.clone()),
            _ => None,
        })
        .collect();
    let norm = |e: &ExportDoc| {
        let mut e = e.clone();
        if let Ok(n) = fcwwn::IscsiName::parse(&e.target) {
            e.target = n.as_str().to_string();
        }
        e
    };
    let have_ex: Vec<ExportDoc> = have.exports.iter().map(norm).collect();
    let want_ex: Vec<ExportDoc> = want.exports.iter().map(norm).collect();
    for e in &have_ex {
        let keep = want_ex.contains(e);
        let volume_stays = want.mapping.volumes.iter().any(|v| v.name == e.volume);
        if !keep && (volume_stays || !prune) {
            steps.push(Step::Unexport(e.clone()));
        }
    }
    for e in &want_ex {
        if !have_ex.contains(e) && !created.contains(&e.volume) {
            steps.push(Step::Export(e.clone()));
        }
    }
    if have.zoning != want.zoning {
        steps.push(Step::SetZoning);
    }
    if prune {
        for h in &have.mapping.volumes {
            if !want.mapping.volumes.iter().any(|v| v.name == h.name) {
                steps.push(Step::DeleteVolume(h.name.clone()));
            }
        }
        for h in &have.backends {
            if !want.backends.iter().any(|b| b.id == h.id) {
                steps.push(Step::RemoveBackend(h.id.clone()));
            }
        }
    }
    if problems.is_empty() {
        Ok(steps)
    } else {
        Err(problems)
    }
}

fn read_doc(path: &Path) -> Result<ConfigDoc, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let doc = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).map_err(|e| e.to_string())
    } else {
        toml::from_str(&text).map_err(|e| e.message().to_string())
    };
    doc.map_err(|e| format!("{}: {e}", path.display()))
}

/// Run a `config` subcommand.
pub fn run(c: &Client, cmd: &ConfigCmd, json: bool) -> Result<(), String> {
    let e = |e: ClientError| e.to_string();
    match cmd {
        ConfigCmd::Export => {
            if json {
                let d: ConfigDoc = c.get("/api/v1/config").map_err(e)?;
                crate::cli::print_json(&d);
            } else {
                print!("{}", c.get_text("/api/v1/config?format=toml").map_err(e)?);
            }
            Ok(())
        }
        ConfigCmd::Import {
            file,
            dry_run,
            prune,
        } => {
            let want = read_doc(file)?;
            let have: ConfigDoc = c.get("/api/v1/config").map_err(e)?;
            let steps = plan(&have, &want, *prune).map_err(|p| {
                format!(
                    "{} cannot be imported; nothing was changed:\n  - {}",
                    file.display(),
                    p.join("\n  - ")
                )
            })?;
            if steps.is_empty() {
                println!("nothing to do: the cluster already has {}", file.display());
                return Ok(());
            }
            for s in &steps {
                println!("{}{s}", if *dry_run { "would " } else { "" });
                if !*dry_run {
                    apply(c, s, &want).map_err(|err| format!("{s}: {err}"))?;
                }
            }
            Ok(())
        }
    }
}

fn apply(c: &Client, step: &Step, want: &ConfigDoc) -> Result<(), String> {
    let e = |e: ClientError| e.to_string();
    let seg = crate::cli::path_segment;
    match step {
        Step::AddBackend(id) => {
            let b = want.backends.iter().find(|b| &b.id == id).expect("planned");
            let req = AddBackendRequest {
                id: b.id.clone(),
                portal: b.portal.clone(),
                target: b.target.clone(),
                chap_username: b.chap_username.clone(),
                chap_secret: b.chap_secret.clone(),
                initiator_name: b.initiator_name.clone(),
                sessions: Some(b.sessions),
                queue_depth: Some(b.queue_depth),
                timeout_secs: Some(b.timeout_secs),
            };
            if req.chap_username.is_some() && req.chap_secret.is_none() {
                return Err(format!(
                    "back-end {id} uses CHAP: put its chap_secret in the file (exports never hold secrets)"
                ));
            }
            c.post::<_, crate::model::BackendView>("/api/v1/backends", &req)
                .map_err(e)?;
        }
        Step::CreateVolume(name) => {
            let v = want
                .mapping
                .volumes
                .iter()
                .find(|v| &v.name == name)
                .expect("planned");
            let req = CreateVolumeRequest {
                name: v.name.clone(),
                wwn: Some(v.wwn.clone()),
                block_size: Some(v.block_size),
                blocks: Some(v.blocks),
                holes: Some(v.holes),
                extents: v.extents.clone(),
                exports: want
                    .exports
                    .iter()
                    .filter(|x| &x.volume == name)
                    .map(|x| ExportView {
                        target: x.target.clone(),
                        lun: x.lun,
                    })
                    .collect(),
            };
            c.post::<_, VolumeView>("/api/v1/volumes", &req)
                .map_err(e)?;
        }
        Step::Export(x) => {
            let at = ExportView {
                target: x.target.clone(),
                lun: x.lun,
            };
            c.post::<_, VolumeView>(&format!("/api/v1/volumes/{}/exports", seg(&x.volume)), &at)
                .map_err(e)?;
        }
        Step::Unexport(x) => {
            c.delete_json::<VolumeView>(&format!(
                "/api/v1/volumes/{}/exports/{}/{}",
                seg(&x.volume),
                seg(&x.target),
                x.lun
            ))
            .map_err(e)?;
        }
        Step::SetZoning => {
            let cur: ZoningView = c.get("/api/v1/zoning").map_err(e)?;
            let req = ZoningRequest {
                expected_version: cur.version,
                zoning: want.zoning.clone(),
            };
            c.put::<_, ZoningView>("/api/v1/zoning", &req).map_err(e)?;
        }
        Step::DeleteVolume(name) => {
            c.delete(&format!("/api/v1/volumes/{}?force=true", seg(name)))
                .map_err(e)?;
        }
        Step::RemoveBackend(id) => {
            c.delete(&format!("/api/v1/backends/{}", seg(id)))
                .map_err(e)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use volume::{Extent, HolePolicy, MappingTable, VolumeDef};

    fn vol(name: &str, bstart: u64) -> VolumeDef {
        VolumeDef {
            name: name.into(),
            wwn: "naa.6005359000000000000000000000a001".into(),
            block_size: 512,
            blocks: 100,
            holes: HolePolicy::Zero,
            extents: vec![Extent {
                vstart: 0,
                blocks: 100,
                backend: "a/lun0".into(),
                bstart,
                mirror: None,
            }],
        }
    }

    fn doc(vols: Vec<VolumeDef>, exports: Vec<ExportDoc>) -> ConfigDoc {
        let mut mapping = MappingTable::new(1);
        mapping.volumes = vols;
        ConfigDoc {
            backends: Vec::new(),
            mapping,
            exports,
            zoning: None,
        }
    }

    fn ex(lun: u16, volume: &str) -> ExportDoc {
        ExportDoc {
            target: "iqn.2026-11.org.example:t".into(),
            lun,
            volume: volume.into(),
        }
    }

    #[test]
    fn plans_only_what_needs_no_data_to_move() {
        let have = doc(
            vec![vol("a", 0), vol("b", 100)],
            vec![ex(0, "a"), ex(1, "b")],
        );
        let want = doc(
            vec![vol("a", 0), vol("c", 200)],
            vec![ex(0, "a"), ex(2, "c"), ex(3, "a")],
        );
        let s = plan(&have, &want, false).unwrap();
        // c is created with its export; a gains LUN 3; b loses its export but stays.
        assert_eq!(
            s,
            vec![
                Step::CreateVolume("c".into()),
                Step::Unexport(ex(1, "b")),
                Step::Export(ex(3, "a")),
            ]
        );
        let s = plan(&have, &want, true).unwrap();
        assert!(s.contains(&Step::DeleteVolume("b".into())));
        assert!(!s.contains(&Step::Unexport(ex(1, "b"))), "{s:?}");
        // Moving a volume is not an import.
        let moved = doc(vec![vol("a", 500)], vec![]);
        let e = plan(&have, &moved, false).unwrap_err();
        assert!(e[0].contains("remap"), "{e:?}");
        // The same document is nothing to do.
        assert!(plan(&have, &have, true).unwrap().is_empty());
    }

    #[test]
    fn a_document_round_trips_through_toml_without_secrets() {
        let mut d = doc(vec![vol("a", 0)], vec![ex(0, "a")]);
        d.backends.push(crate::model::BackendDoc {
            id: "arr".into(),
            portal: "127.0.0.1:3260".into(),
            target: "iqn.2026-11.org.example:arr".into(),
            chap_username: Some("u".into()),
            chap_secret: Some("very-secret-1".into()),
            initiator_name: None,
            sessions: 1,
            queue_depth: 32,
            timeout_secs: 15,
        });
        let text = toml::to_string(&d).unwrap();
        assert!(!text.contains("very-secret-1"), "{text}");
        let back: ConfigDoc = toml::from_str(&text).unwrap();
        assert_eq!(back.mapping, d.mapping);
        assert_eq!(back.exports, d.exports);
        assert_eq!(back.backends[0].chap_secret, None);
    }
}
