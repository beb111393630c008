//! Admin commands that change what the cluster serves: creating, growing, exporting
//! and deleting volumes, and the zoning (initiator groups and LUN masking).

use std::path::PathBuf;

use clap::Subcommand;
use fcwwn::{AccessRule, InitiatorGroup, InitiatorId, LunSet, Masking, Subject};
use volume::{Extent, HolePolicy};

use crate::client::{Client, ClientError};
use crate::model::{
    ChangeRecord, CreateVolumeRequest, ExportView, RemapRequest, VolumeView, ZoningRequest,
    ZoningView,
};

/// `volumes` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum VolumesCmd {
    /// One volume with its extent map.
    Show { name: String },
    /// Create a volume on blocks of back-end LUs no other volume uses (cluster
    /// members): `--on LU [--bstart N] --size SIZE`, or `--extents FILE`.
    Create {
        name: String,
        /// Back-end LU (`switchyard backends`) holding the whole volume.
        #[arg(long, conflicts_with = "extents")]
        on: Option<String>,
        /// First block on that LU.
        #[arg(long, requires = "on", default_value_t = 0)]
        bstart: u64,
        /// Size (bytes, or with K/M/G/T or KiB/MiB/GiB/TiB); default with --extents:
        /// where the last extent ends.
        #[arg(long)]
        size: Option<String>,
        /// Extents file (as for `remap`).
        #[arg(long)]
        extents: Option<PathBuf>,
        /// `naa.` + 16 or 32 hex digits (default: assigned).
        #[arg(long)]
        wwn: Option<String>,
        /// Logical block size (default: the LU's).
        #[arg(long)]
        block_size: Option<u32>,
        /// Reads of unmapped blocks: zero or error.
        #[arg(long)]
        holes: Option<String>,
        /// Export it at once as TARGET:LUN (repeatable).
        #[arg(long, value_name = "TARGET:LUN")]
        export: Vec<String>,
    },
    /// Grow a volume online (a remap): the new blocks go on `--on LU [--bstart N]`, or
    /// read as the volume's holes.
    Grow {
        name: String,
        /// The new size.
        #[arg(long)]
        size: String,
        #[arg(long)]
        on: Option<String>,
        #[arg(long, requires = "on", default_value_t = 0)]
        bstart: u64,
    },
    /// Show a volume as LUN `--lun` of `--target` on every node serving that target.
    Export {
        name: String,
        #[arg(long)]
        target: String,
        #[arg(long)]
        lun: u16,
    },
    /// Stop showing a volume at a target's LUN.
    Unexport {
        name: String,
        #[arg(long)]
        target: String,
        #[arg(long)]
        lun: u16,
    },
    /// Delete a volume (its data stays on the back-end LUs). Refused while exported,
    /// unless --force.
    Delete {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

/// `backends` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum BackendsCmd {
    /// Add an array: this node logs in to check it, then every data member logs in
    /// and opens its LUs (`ID/lun<N>`).
    Add {
        id: String,
        /// `ip:port` of the array's portal.
        #[arg(long)]
        portal: String,
        /// The array's target name.
        #[arg(long)]
        target: String,
        /// CHAP user name towards the array.
        #[arg(long, requires = "chap_secret")]
        chap_user: Option<String>,
        /// CHAP secret (better from the environment than the command line).
        #[arg(
            long,
            env = "SWITCHYARD_BACKEND_CHAP_SECRET",
            hide_env_values = true,
            requires = "chap_user"
        )]
        chap_secret: Option<String>,
        /// The members' initiator name towards the array (default: from each name).
        #[arg(long)]
        initiator_name: Option<String>,
        /// Sessions per member (default 1).
        #[arg(long)]
        sessions: Option<usize>,
        /// Commands in flight per session (default 32).
        #[arg(long)]
        queue_depth: Option<usize>,
    },
    /// Remove an array added online (refused while a volume uses one of its LUs).
    Remove { id: String },
}

/// Run a `backends add|remove`.
pub fn backends(c: &Client, cmd: &BackendsCmd, json: bool) -> Result<(), String> {
    let e = |e: ClientError| e.to_string();
    match cmd {
        BackendsCmd::Add {
            id,
            portal,
            target,
            chap_user,
            chap_secret,
            initiator_name,
            sessions,
            queue_depth,
        } => {
            let req = crate::model::AddBackendRequest {
                id: id.clone(),
                portal: portal.clone(),
                target: target.clone(),
                chap_username: chap_user.clone(),
                chap_secret: chap_secret.clone(),
                initiator_name: initiator_name.clone(),
                sessions: *sessions,
                queue_depth: *queue_depth,
                timeout_secs: None,
            };
            let (_, b): (u16, crate::model::BackendView) =
                c.post("/api/v1/backends", &req).map_err(e)?;
            if json {
                crate::cli::print_json(&b);
            } else {
                println!("back-end {} ({}): {} LU(s)", b.id, b.state, b.lus.len());
                for l in &b.lus {
                    println!("  {}  {} blocks of {} B", l.id, l.blocks, l.block_size);
                }
            }
        }
        BackendsCmd::Remove { id } => {
            c.delete(&format!("/api/v1/backends/{}", seg(id)))
                .map_err(e)?;
            if !json {
                println!("back-end {id} removed");
            }
        }
    }
    Ok(())
}

/// `zoning` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum ZoningCmd {
    /// The zoning in force (TOML, as in a config's [zoning]).
    Show,
    /// Replace the cluster's zoning with a file (TOML as in [zoning], or JSON).
    Set { file: PathBuf },
    /// Drop the cluster's zoning: each node applies its own [zoning] again.
    Clear,
    /// Create or change an initiator group.
    Group {
        name: String,
        /// Initiators to add (iSCSI names or WWPNs).
        #[arg(long, value_name = "INITIATOR")]
        add: Vec<String>,
        /// Initiators to remove.
        #[arg(long, value_name = "INITIATOR")]
        remove: Vec<String>,
        /// Delete the group (refused while a rule names it).
        #[arg(long, conflicts_with_all = ["add", "remove"])]
        delete: bool,
    },
    /// Let a group or an initiator log in to a target and see some LUNs (a target any
    /// rule names is closed to everyone else).
    Allow {
        #[arg(long)]
        target: String,
        #[command(flatten)]
        who: Who,
        /// all, or a list: 0,1,5
        #[arg(long, default_value = "all")]
        luns: String,
    },
    /// Remove the rule for a group or an initiator on a target.
    Deny {
        #[arg(long)]
        target: String,
        #[command(flatten)]
        who: Who,
    },
}

/// Whom a zoning rule names: a group or one initiator.
#[derive(clap::Args, Debug, Clone)]
pub struct Who {
    #[arg(
        long,
        conflicts_with = "initiator",
        required_unless_present = "initiator"
    )]
    group: Option<String>,
    #[arg(long)]
    initiator: Option<String>,
}

/// Parse "1GiB", "512MiB", "4096", "10G" (binary units) into bytes: what configs
/// and the CLI accept as sizes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size \"{s}\": expected a number with an optional unit, e.g. 1GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        "t" | "tib" | "tb" => 1 << 40,
        u => {
            return Err(format!(
                "size \"{s}\": unknown unit \"{u}\" (use KiB, MiB, GiB, TiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size \"{s}\" is too large"))
}

fn blocks_of(size: &str, block_size: u32) -> Result<u64, String> {
    let bytes = parse_size(size)?;
    let bs = u64::from(block_size);
    if bytes == 0 || bytes % bs != 0 {
        return Err(format!(
            "size {size} is not a positive multiple of the block size ({block_size} B)"
        ));
    }
    Ok(bytes / bs)
}

fn parse_export(s: &str) -> Result<ExportView, String> {
    let (target, lun) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("--export {s:?}: expected TARGET:LUN"))?;
    let lun = lun
        .parse()
        .map_err(|_| format!("--export {s:?}: {lun:?} is not a LUN number"))?;
    Ok(ExportView {
        target: target.to_string(),
        lun,
    })
}

/// The block size of back-end LU `lu`, as the node reports it.
fn lu_block_size(c: &Client, lu: &str) -> Result<u32, String> {
    let backends: Vec<crate::model::BackendView> =
        c.get("/api/v1/backends").map_err(|e| e.to_string())?;
    backends
        .iter()
        .flat_map(|b| b.lus.iter())
        .find(|l| l.id == lu)
        .map(|l| l.block_size)
        .ok_or_else(|| format!("no back-end LU {lu:?}; `switchyard backends` lists them"))
}

fn seg(s: &str) -> String {
    crate::cli::path_segment(s)
}

/// Run a `volumes` subcommand that changes something (`show` stays in `cli`).
pub fn volumes(c: &Client, cmd: &VolumesCmd, json: bool) -> Result<(), String> {
    let e = |e: ClientError| e.to_string();
    let show = |v: &VolumeView| {
        if json {
            crate::cli::print_json(v);
        } else {
            print!("{}", crate::cli::describe_volume(v));
        }
    };
    match cmd {
        VolumesCmd::Show { .. } => unreachable!("handled by cli::run"),
        VolumesCmd::Create {
            name,
            on,
            bstart,
            size,
            extents,
            wwn,
            block_size,
            holes,
            export,
        } => {
            let holes = match holes.as_deref() {
                None => None,
                Some("zero") => Some(HolePolicy::Zero),
                Some("error") => Some(HolePolicy::Error),
                Some(h) => return Err(format!("--holes {h:?}: use zero or error")),
            };
            let (extents, blocks) = match (on, extents) {
                (Some(lu), None) => {
                    let size = size
                        .as_deref()
                        .ok_or("--on needs --size (how much of the LU the volume takes)")?;
                    let bs = match block_size {
                        Some(b) => *b,
                        None => lu_block_size(c, lu)?,
                    };
                    let blocks = blocks_of(size, bs)?;
                    (
                        vec![Extent {
                            vstart: 0,
                            blocks,
                            backend: lu.clone(),
                            bstart: *bstart,
                            mirror: None,
                        }],
                        Some(blocks),
                    )
                }
                (None, Some(file)) => {
                    let ext = crate::cli::read_extents(file)?;
                    let blocks = match size {
                        Some(s) => {
                            let bs = match (block_size, ext.first()) {
                                (Some(b), _) => *b,
                                (None, Some(x)) => lu_block_size(c, &x.backend)?,
                                (None, None) => 512,
                            };
                            Some(blocks_of(s, bs)?)
                        }
                        None => None,
                    };
                    (ext, blocks)
                }
                (None, None) => {
                    let size = size.as_deref().ok_or(
                        "give --on LU --size SIZE, --extents FILE, or --size for a volume of holes",
                    )?;
                    (
                        Vec::new(),
                        Some(blocks_of(size, block_size.unwrap_or(512))?),
                    )
                }
                (Some(_), Some(_)) => unreachable!("clap: --on conflicts with --extents"),
            };
            let req = CreateVolumeRequest {
                name: name.clone(),
                wwn: wwn.clone(),
                block_size: *block_size,
                blocks,
                holes,
                extents,
                exports: export
                    .iter()
                    .map(|x| parse_export(x))
                    .collect::<Result<_, _>>()?,
            };
            let (_, v): (u16, VolumeView) = c.post("/api/v1/volumes", &req).map_err(e)?;
            show(&v);
        }
        VolumesCmd::Grow {
            name,
            size,
            on,
            bstart,
        } => {
            let v: VolumeView = c
                .get(&format!("/api/v1/volumes/{}", seg(name)))
                .map_err(e)?;
            let blocks = blocks_of(size, v.block_size)?;
            if blocks <= v.blocks {
                return Err(format!(
                    "volume {name} has {} blocks already; growing needs more (shrinking online is refused)",
                    v.blocks
                ));
            }
            let mut extents: Vec<Extent> = v
                .map
                .iter()
                .filter_map(|m| {
                    Some(Extent {
                        vstart: m.vstart,
                        blocks: m.blocks,
                        backend: m.backend.clone()?,
                        bstart: m.bstart?,
                        mirror: None,
                    })
                })
                .collect();
            if v.map.iter().any(|m| m.mirror.is_some()) {
                return Err(format!(
                    "volume {name} is being migrated; grow it once the migration has ended"
                ));
            }
            if let Some(lu) = on {
                extents.push(Extent {
                    vstart: v.blocks,
                    blocks: blocks - v.blocks,
                    backend: lu.clone(),
                    bstart: *bstart,
                    mirror: None,
                });
            }
            let req = RemapRequest {
                extents,
                expect_epoch: Some(v.epoch),
                drain_timeout_ms: None,
                blocks: Some(blocks),
                copy: Some(false),
            };
            let path = format!("/api/v1/volumes/{}/remap", seg(name));
            let (_, rec): (u16, ChangeRecord) = c.post(&path, &req).map_err(e)?;
            if json {
                crate::cli::print_json(&rec);
            } else {
                print!("{}", crate::cli::describe_change(&rec));
            }
        }
        VolumesCmd::Export { name, target, lun } => {
            let at = ExportView {
                target: target.clone(),
                lun: *lun,
            };
            let (_, v): (u16, VolumeView) = c
                .post(&format!("/api/v1/volumes/{}/exports", seg(name)), &at)
                .map_err(e)?;
            show(&v);
        }
        VolumesCmd::Unexport { name, target, lun } => {
            let v: VolumeView = c
                .delete_json(&format!(
                    "/api/v1/volumes/{}/exports/{}/{lun}",
                    seg(name),
                    seg(target)
                ))
                .map_err(e)?;
            show(&v);
        }
        VolumesCmd::Delete { name, force } => {
            c.delete(&format!(
                "/api/v1/volumes/{}{}",
                seg(name),
                if *force { "?force=true" } else { "" }
            ))
            .map_err(e)?;
            if !json {
                println!("volume {name} deleted (its data stays on the back-end LUs)");
            }
        }
    }
    Ok(())
}

/// Read a zoning file: TOML as in a config's [zoning] (groups and rules), or JSON.
pub fn read_zoning(path: &std::path::Path) -> Result<Masking, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let t = text.trim_start();
    let parsed = if t.starts_with('{') {
        serde_json::from_str::<Masking>(t).map_err(|e| e.to_string())
    } else {
        // Either bare `[[groups]]`/`[[rules]]` or under a `[zoning]` table.
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Wrapped {
            zoning: Masking,
        }
        toml::from_str::<Wrapped>(t)
            .map(|w| w.zoning)
            .or_else(|_| toml::from_str::<Masking>(t))
            .map_err(|e| e.to_string())
    };
    parsed.map_err(|e| format!("{}: {e}", path.display()))
}

fn subject(who: &Who) -> Result<Subject, String> {
    match (&who.group, &who.initiator) {
        (Some(g), None) => Ok(Subject::Group(g.clone())),
        (None, Some(i)) => InitiatorId::parse(i)
            .map(Subject::Initiator)
            .map_err(|e| format!("--initiator {i:?}: {e}")),
        _ => Err("give --group or --initiator".into()),
    }
}

fn parse_luns(s: &str) -> Result<LunSet, String> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(LunSet::All);
    }
    if s.trim().is_empty() || s.eq_ignore_ascii_case("none") {
        return Ok(LunSet::none());
    }
    let luns = s
        .split(',')
        .map(|x| {
            x.trim()
                .parse::<u16>()
                .map_err(|_| format!("--luns {s:?}: {x:?} is not a LUN number"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LunSet::only(luns))
}

/// Compare target names as the zoning does (iSCSI names case-folded).
fn same_target(a: &str, b: &str) -> bool {
    match (fcwwn::IscsiName::parse(a), fcwwn::IscsiName::parse(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The edit a fine-grained zoning command makes; `None` for the ones that replace the
/// whole zoning.
fn edit(cmd: &ZoningCmd, cur: &Masking) -> Result<Option<Masking>, String> {
    let mut groups: Vec<InitiatorGroup> = cur.groups().to_vec();
    let mut rules: Vec<AccessRule> = cur.rules().to_vec();
    match cmd {
        ZoningCmd::Group {
            name,
            add,
            remove,
            delete,
        } => {
            if *delete {
                if !groups.iter().any(|g| &g.name == name) {
                    return Err(format!("there is no group {name:?}"));
                }
                groups.retain(|g| &g.name != name);
            } else {
                let i = match groups.iter().position(|g| &g.name == name) {
                    Some(i) => i,
                    None => {
                        groups.push(InitiatorGroup::new(name.clone(), []));
                        groups.len() - 1
                    }
                };
                for m in add {
                    let id = InitiatorId::parse(m).map_err(|e| format!("--add {m:?}: {e}"))?;
                    if !groups[i].members.contains(&id) {
                        groups[i].members.push(id);
                    }
                }
                for m in remove {
                    let id = InitiatorId::parse(m).map_err(|e| format!("--remove {m:?}: {e}"))?;
                    let before = groups[i].members.len();
                    groups[i].members.retain(|x| x != &id);
                    if groups[i].members.len() == before {
                        return Err(format!("{m} is not a member of group {name}"));
                    }
                }
            }
        }
        ZoningCmd::Allow { target, who, luns } => {
            let who = subject(who)?;
            let luns = parse_luns(luns)?;
            rules.retain(|r| !(same_target(&r.target, target) && r.subject == who));
            rules.push(AccessRule {
                target: target.clone(),
                subject: who,
                luns,
            });
        }
        ZoningCmd::Deny { target, who } => {
            let who = subject(who)?;
            let before = rules.len();
            rules.retain(|r| !(same_target(&r.target, target) && r.subject == who));
            if rules.len() == before {
                return Err(format!("no rule for {who} on {target}"));
            }
        }
        ZoningCmd::Show | ZoningCmd::Set { .. } | ZoningCmd::Clear => return Ok(None),
    }
    Masking::new(groups, rules)
        .map(Some)
        .map_err(|e| format!("the zoning would be invalid: {e}"))
}

fn print_zoning(z: &ZoningView, json: bool) -> Result<(), String> {
    if json {
        crate::cli::print_json(z);
        return Ok(());
    }
    println!(
        "# zoning from the {} (version {}){}",
        z.source,
        z.version,
        if z.zoning.rules().is_empty() {
            "; no rules: every target is open"
        } else {
            ""
        }
    );
    let text = toml::to_string(&z.zoning).map_err(|e| e.to_string())?;
    print!("{text}");
    Ok(())
}

/// Run a `zoning` subcommand.
pub fn zoning(c: &Client, cmd: Option<&ZoningCmd>, json: bool) -> Result<(), String> {
    let e = |e: ClientError| e.to_string();
    let cur: ZoningView = c.get("/api/v1/zoning").map_err(e)?;
    let new = match cmd {
        None | Some(ZoningCmd::Show) => return print_zoning(&cur, json),
        Some(ZoningCmd::Set { file }) => Some(read_zoning(file)?),
        Some(ZoningCmd::Clear) => None,
        Some(other) => edit(other, &cur.zoning)?,
    };
    let req = ZoningRequest {
        expected_version: cur.version,
        zoning: new,
    };
    let z: ZoningView = c.put("/api/v1/zoning", &req).map_err(e)?;
    print_zoning(&z, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_luns_parse() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("12X").unwrap_err().contains("unknown unit"));
        assert_eq!(blocks_of("1MiB", 512).unwrap(), 2048);
        assert!(blocks_of("1000", 512).is_err());
        assert_eq!(parse_luns("0,2").unwrap(), LunSet::only([0, 2]));
        assert!(parse_luns("0,x").is_err());
        let x = parse_export("iqn.2026-11.org.example:t:3").unwrap();
        assert_eq!((x.target.as_str(), x.lun), ("iqn.2026-11.org.example:t", 3));
    }

    #[test]
    fn zoning_edits_check_their_input() {
        let t = "iqn.2026-11.org.example:t";
        let add = ZoningCmd::Group {
            name: "esx".into(),
            add: vec![
                "iqn.1998-01.com.vmware:esx01".into(),
                "21:00:00:24:ff:4b:9c:10".into(),
            ],
            remove: vec![],
            delete: false,
        };
        let z = edit(&add, &Masking::open()).unwrap().unwrap();
        assert_eq!(z.groups()[0].members.len(), 2);
        let allow = ZoningCmd::Allow {
            target: t.into(),
            who: Who {
                group: Some("esx".into()),
                initiator: None,
            },
            luns: "0,1".into(),
        };
        let z = edit(&allow, &z).unwrap().unwrap();
        assert_eq!(z.rules().len(), 1);
        // A malformed WWN is named precisely.
        let bad = ZoningCmd::Group {
            name: "esx".into(),
            add: vec!["21:00:00:24:ff:4b:9c".into()],
            remove: vec![],
            delete: false,
        };
        let e = edit(&bad, &z).unwrap_err();
        assert!(e.contains("21:00:00:24:ff:4b:9c"), "{e}");
        // A rule may not name a missing group; a group a rule names cannot go.
        let del = ZoningCmd::Group {
            name: "esx".into(),
            add: vec![],
            remove: vec![],
            delete: true,
        };
        let e = edit(&del, &z).unwrap_err();
        assert!(e.contains("invalid"), "{e}");
        let deny = ZoningCmd::Deny {
            target: t.to_uppercase().replace("IQN", "iqn"),
            who: Who {
                group: Some("esx".into()),
                initiator: None,
            },
        };
        let z = edit(&deny, &z).unwrap().unwrap();
        assert!(z.rules().is_empty());
        assert!(edit(&deny, &z).unwrap_err().contains("no rule"));
    }
}
