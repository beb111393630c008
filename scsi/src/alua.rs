//! Implicit asymmetric logical unit access (ALUA, SPC-4 5.15): the target port groups
//! of a logical unit, their asymmetric access states, REPORT TARGET PORT GROUPS (SPC-4
//! 6.36), which commands each state admits, and the ASYMMETRIC ACCESS STATE CHANGED
//! unit attention.
//!
//! The model ([`TargetPortGroups`]) lives in a [`PortGroups`] handle that the node
//! shares between the logical units of a target (`Arc<PortGroups>`) and changes at run
//! time with [`PortGroups::set_state`] (an implicit transition: the TPGS field of
//! standard INQUIRY says implicit only, and SET TARGET PORT GROUPS is not in the
//! command table). Each logical unit notices a change on its next command (one atomic
//! load on the fast path) and raises the unit attention then, for the I_T nexuses
//! whose target port is in a group that changed; as a unit attention is only ever
//! seen through a command, that is indistinguishable from raising it at once.
//!
//! Ports: a relative target port listed in no group belongs to the first group. So the
//! default model (one Active/Optimized group 1 with no listed ports) contains every
//! port, and REPORT TARGET PORT GROUPS lists, for the first group, its listed ports
//! plus the unlisted ports the logical unit has seen commands on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::commands::CommandInfo;
use crate::nexus::Nexuses;
use crate::sense::{Sense, SenseKey};

/// Primary target port asymmetric access states (SPC-4 6.36, table 275).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AluaState {
    ActiveOptimized = 0x0,
    ActiveNonOptimized = 0x1,
    Standby = 0x2,
    Unavailable = 0x3,
    Offline = 0xE,
    Transitioning = 0xF,
}

impl AluaState {
    /// The ASYMMETRIC ACCESS STATE code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The state for a code; `None` for LBA dependent (4h, not supported) and reserved
    /// codes.
    pub fn from_code(code: u8) -> Option<AluaState> {
        Some(match code {
            0x0 => AluaState::ActiveOptimized,
            0x1 => AluaState::ActiveNonOptimized,
            0x2 => AluaState::Standby,
            0x3 => AluaState::Unavailable,
            0xE => AluaState::Offline,
            0xF => AluaState::Transitioning,
            _ => return None,
        })
    }

    /// NOT READY sense for a command this state does not admit (SPC-4 5.15.2.4).
    fn not_accessible(self) -> Option<Sense> {
        let ascq = match self {
            AluaState::ActiveOptimized | AluaState::ActiveNonOptimized => return None,
            AluaState::Transitioning => 0x0A,
            AluaState::Standby => 0x0B,
            AluaState::Unavailable => 0x0C,
            // LOGICAL UNIT NOT READY, OFFLINE.
            AluaState::Offline => 0x12,
        };
        Some(Sense::new(SenseKey::NotReady, 0x04, ascq))
    }
}

/// Supported states reported for every group (SPC-4 table 274): T_SUP, O_SUP, U_SUP,
/// S_SUP, AN_SUP, AO_SUP; not LBD_SUP.
const SUPPORTED_STATES: u8 = 0x80 | 0x40 | 0x08 | 0x04 | 0x02 | 0x01;

/// STATUS CODE: altered by implicit asymmetric logical unit access behaviour.
const STATUS_IMPLICIT: u8 = 0x02;

/// UNIT ATTENTION, ASYMMETRIC ACCESS STATE CHANGED (SPC-4 5.15.2.5).
pub const fn access_state_changed() -> Sense {
    Sense::new(SenseKey::UnitAttention, 0x2A, 0x06)
}

/// One target port group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortGroup {
    /// TARGET PORT GROUP identifier.
    pub id: u16,
    pub state: AluaState,
    /// Relative target port identifiers in this group (at most 255).
    pub ports: Vec<u16>,
    /// PREF: the preferred group for this logical unit.
    pub preferred: bool,
}

/// The target port groups of a logical unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPortGroups {
    /// At least one. A port listed in no group belongs to the first.
    pub groups: Vec<PortGroup>,
    /// IMPLICIT TRANSITION TIME in seconds, reported in the extended header: how long
    /// a host should wait for a Transitioning group before giving up (0: unspecified;
    /// Linux then times out at once, so keep it non-zero).
    pub implicit_transition_secs: u8,
}

impl Default for TargetPortGroups {
    /// One Active/Optimized group, id 1, containing every port.
    fn default() -> Self {
        TargetPortGroups {
            groups: vec![PortGroup {
                id: 1,
                state: AluaState::ActiveOptimized,
                ports: Vec::new(),
                preferred: false,
            }],
            implicit_transition_secs: 30,
        }
    }
}

/// A port group model that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AluaError {
    #[error("no target port groups: configure at least one")]
    NoGroups,
    #[error("target port group {0} is configured twice: group ids must be unique")]
    DuplicateGroup(u16),
    #[error("relative target port {0} is in two target port groups: a port belongs to one")]
    PortInTwoGroups(u16),
    #[error("relative target port 0 is reserved: ports are numbered from 1")]
    PortZero,
    #[error("target port group {0} has more than 255 ports")]
    TooManyPorts(u16),
    #[error("no target port group {0}")]
    NoSuchGroup(u16),
}

impl TargetPortGroups {
    /// Checks the model: at least one group, unique ids, each port in one group.
    pub fn validate(&self) -> Result<(), AluaError> {
        if self.groups.is_empty() {
            return Err(AluaError::NoGroups);
        }
        let mut ids = std::collections::HashSet::new();
        let mut ports = std::collections::HashSet::new();
        for g in &self.groups {
            if !ids.insert(g.id) {
                return Err(AluaError::DuplicateGroup(g.id));
            }
            if g.ports.len() > 255 {
                return Err(AluaError::TooManyPorts(g.id));
            }
            for &p in &g.ports {
                if p == 0 {
                    return Err(AluaError::PortZero);
                }
                if !ports.insert(p) {
                    return Err(AluaError::PortInTwoGroups(p));
                }
            }
        }
        Ok(())
    }

    /// Index of the group a relative target port belongs to (the first group for an
    /// unlisted port).
    fn index_of(&self, port: u16) -> usize {
        self.groups
            .iter()
            .position(|g| g.ports.contains(&port))
            .unwrap_or(0)
    }

    /// The group a relative target port belongs to.
    pub fn group_of(&self, port: u16) -> &PortGroup {
        &self.groups[self.index_of(port)]
    }

    fn listed(&self, port: u16) -> bool {
        self.groups.iter().any(|g| g.ports.contains(&port))
    }
}

#[derive(Debug)]
struct Inner {
    model: TargetPortGroups,
    /// Per group (same order): bumped by every change that concerns the group.
    changes: Vec<u64>,
    /// Per group: the STATUS CODE reported.
    status: Vec<u8>,
    version: u64,
}

/// The shared, run-time changeable port group model of one or more logical units.
#[derive(Debug)]
pub struct PortGroups {
    inner: RwLock<Inner>,
    /// Mirror of `inner.version` for the per-command check.
    version: AtomicU64,
    /// Report STATUS CODE 00h (no status available) for every group, whatever
    /// changed: several nodes that each derive the model from shared state answer
    /// REPORT TARGET PORT GROUPS byte for byte alike only without per-node history.
    no_status: std::sync::atomic::AtomicBool,
}

impl Default for PortGroups {
    fn default() -> Self {
        PortGroups::build(TargetPortGroups::default())
    }
}

impl PortGroups {
    /// A handle over a validated model, to share between logical units.
    pub fn new(model: TargetPortGroups) -> Result<Arc<PortGroups>, AluaError> {
        model.validate()?;
        Ok(Arc::new(PortGroups::build(model)))
    }

    fn build(model: TargetPortGroups) -> PortGroups {
        let n = model.groups.len();
        PortGroups {
            inner: RwLock::new(Inner {
                model,
                changes: vec![0; n],
                status: vec![0; n],
                version: 0,
            }),
            version: AtomicU64::new(0),
            no_status: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Always report STATUS CODE 00h (see the field); for models shared by a cluster.
    pub fn without_status_codes(self: Arc<Self>) -> Arc<Self> {
        self.no_status.store(true, Ordering::Release);
        self
    }

    /// Implicit transition of one group to `state`. The I_T nexuses on the group's
    /// ports get ASYMMETRIC ACCESS STATE CHANGED (on their next command to each
    /// logical unit). Setting the state a group already has changes nothing.
    pub fn set_state(&self, group: u16, state: AluaState) -> Result<(), AluaError> {
        let mut g = self.inner.write();
        let i = g
            .model
            .groups
            .iter()
            .position(|x| x.id == group)
            .ok_or(AluaError::NoSuchGroup(group))?;
        if g.model.groups[i].state == state {
            return Ok(());
        }
        g.model.groups[i].state = state;
        g.changes[i] += 1;
        g.status[i] = STATUS_IMPLICIT;
        g.version += 1;
        self.version.store(g.version, Ordering::Release);
        tracing::info!(group, ?state, "target port group changed state");
        Ok(())
    }

    /// Replaces the whole model (groups added, removed, ports moved). Every I_T nexus
    /// gets ASYMMETRIC ACCESS STATE CHANGED.
    pub fn replace(&self, model: TargetPortGroups) -> Result<(), AluaError> {
        model.validate()?;
        let mut g = self.inner.write();
        let next = g.changes.iter().copied().max().unwrap_or(0) + 1;
        let n = model.groups.len();
        g.model = model;
        g.changes = vec![next; n];
        g.status = vec![STATUS_IMPLICIT; n];
        g.version += 1;
        self.version.store(g.version, Ordering::Release);
        Ok(())
    }

    /// A copy of the model.
    pub fn snapshot(&self) -> TargetPortGroups {
        self.inner.read().model.clone()
    }

    /// (group id, state) of a relative target port.
    pub fn state_of_port(&self, port: u16) -> (u16, AluaState) {
        let g = self.inner.read();
        let pg = g.model.group_of(port);
        (pg.id, pg.state)
    }
}

/// What one logical unit keeps about its port groups: the shared model and the
/// change counters it has already raised unit attentions for.
#[derive(Debug)]
pub(crate) struct LuAlua {
    groups: Arc<PortGroups>,
    seen_version: AtomicU64,
    /// (group id, changes) as last seen.
    seen: Mutex<Vec<(u16, u64)>>,
}

impl Default for LuAlua {
    fn default() -> Self {
        LuAlua::new(Arc::new(PortGroups::default()))
    }
}

impl LuAlua {
    pub(crate) fn new(groups: Arc<PortGroups>) -> LuAlua {
        let (version, seen) = {
            let g = groups.inner.read();
            (g.version, seen_of(&g))
        };
        LuAlua {
            groups,
            seen_version: AtomicU64::new(version),
            seen: Mutex::new(seen),
        }
    }

    pub(crate) fn groups(&self) -> &Arc<PortGroups> {
        &self.groups
    }

    /// Raises ASYMMETRIC ACCESS STATE CHANGED for the nexuses on ports of groups that
    /// changed since the last call. Cheap when nothing changed.
    pub(crate) fn sync(&self, nexuses: &Nexuses) {
        if self.groups.version.load(Ordering::Acquire) == self.seen_version.load(Ordering::Acquire)
        {
            return;
        }
        let mut seen = self.seen.lock();
        let g = self.groups.inner.read();
        if g.version == self.seen_version.load(Ordering::Acquire) {
            return;
        }
        let now = seen_of(&g);
        let changed: Vec<u16> = now
            .iter()
            .filter(|c| !seen.contains(c))
            .map(|&(id, _)| id)
            .collect();
        if !changed.is_empty() {
            nexuses.notify_ports(
                |port| changed.contains(&g.model.group_of(port).id),
                &access_state_changed(),
            );
        }
        *seen = now;
        self.seen_version.store(g.version, Ordering::Release);
    }

    /// The target port group of a relative target port.
    pub(crate) fn group_id(&self, port: u16) -> u16 {
        self.groups.state_of_port(port).0
    }

    /// NOT READY unless the state of `port`'s group admits the command.
    pub(crate) fn check(&self, port: u16, info: &CommandInfo) -> Result<(), Sense> {
        let (_, state) = self.groups.state_of_port(port);
        match state.not_accessible() {
            Some(sense) if !admits(state, info.opcode, info.service_action) => Err(sense),
            _ => Ok(()),
        }
    }

    /// REPORT TARGET PORT GROUPS parameter data (SPC-4 6.36.2), before allocation
    /// length truncation. `seen_ports`: relative target ports this logical unit has
    /// seen commands on (the unlisted ones are reported in the first group).
    pub(crate) fn report(&self, extended: bool, seen_ports: &[u16]) -> Vec<u8> {
        let g = self.groups.inner.read();
        let mut d = vec![0u8; 4];
        if extended {
            // FORMAT TYPE 001b, IMPLICIT TRANSITION TIME, reserved.
            d.extend_from_slice(&[0x10, g.model.implicit_transition_secs, 0, 0]);
        }
        for (i, pg) in g.model.groups.iter().enumerate() {
            let mut ports = pg.ports.clone();
            if i == 0 {
                ports.extend(seen_ports.iter().filter(|&&p| !g.model.listed(p)));
                ports.sort_unstable();
                ports.dedup();
                ports.truncate(255);
            }
            d.push(u8::from(pg.preferred) << 7 | pg.state.code());
            d.push(SUPPORTED_STATES);
            d.extend_from_slice(&pg.id.to_be_bytes());
            d.push(0);
            d.push(if self.groups.no_status.load(Ordering::Acquire) {
                0
            } else {
                g.status[i]
            });
            d.push(0); // vendor specific
            d.push(ports.len() as u8);
            for p in ports {
                d.extend_from_slice(&[0, 0]);
                d.extend_from_slice(&p.to_be_bytes());
            }
        }
        // RETURN DATA LENGTH (n - 3): everything after the field, in both formats.
        let len = (d.len() - 4) as u32;
        d[..4].copy_from_slice(&len.to_be_bytes());
        d
    }
}

fn seen_of(g: &Inner) -> Vec<(u16, u64)> {
    g.model
        .groups
        .iter()
        .zip(&g.changes)
        .map(|(pg, &c)| (pg.id, c))
        .collect()
}

/// The commands a state that is not active admits (SPC-4 5.15.2.4.4 to 5.15.2.4.6;
/// echo-buffer READ/WRITE BUFFER, LOG SENSE/SELECT, diagnostics and SET TARGET PORT
/// GROUPS are in those lists too but not implemented). Standby also admits READ
/// CAPACITY, as LIO does, so that hosts can size a standby path while scanning.
/// Offline admits what Unavailable does.
fn admits(state: AluaState, opcode: u8, service_action: Option<u16>) -> bool {
    // Every inaccessible state: INQUIRY, REQUEST SENSE, REPORT LUNS, REPORT TARGET
    // PORT GROUPS.
    let basic = matches!(
        (opcode, service_action),
        (0x12 | 0x03 | 0xA0, None) | (0xA3, Some(0x0A))
    );
    match state {
        AluaState::ActiveOptimized | AluaState::ActiveNonOptimized => true,
        AluaState::Standby => {
            basic
                || matches!(
                    (opcode, service_action),
                    // MODE SENSE/SELECT (6/10), PERSISTENT RESERVE IN/OUT, READ
                    // CAPACITY(10)/(16).
                    (0x15 | 0x55 | 0x1A | 0x5A | 0x25, None)
                        | (0x5E | 0x5F, Some(_))
                        | (0x9E, Some(0x10))
                )
        }
        AluaState::Unavailable | AluaState::Offline | AluaState::Transitioning => basic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{lookup, COMMANDS};

    fn two_groups() -> TargetPortGroups {
        TargetPortGroups {
            groups: vec![
                PortGroup {
                    id: 1,
                    state: AluaState::ActiveOptimized,
                    ports: vec![1, 2],
                    preferred: true,
                },
                PortGroup {
                    id: 2,
                    state: AluaState::Standby,
                    ports: vec![3],
                    preferred: false,
                },
            ],
            implicit_transition_secs: 10,
        }
    }

    #[test]
    fn state_codes_round_trip() {
        for s in [
            AluaState::ActiveOptimized,
            AluaState::ActiveNonOptimized,
            AluaState::Standby,
            AluaState::Unavailable,
            AluaState::Offline,
            AluaState::Transitioning,
        ] {
            assert_eq!(AluaState::from_code(s.code()), Some(s));
        }
        assert_eq!(AluaState::from_code(4), None, "LBA dependent unsupported");
        assert_eq!(AluaState::Offline.code(), 0xE);
    }

    #[test]
    fn validation() {
        assert!(two_groups().validate().is_ok());
        let mut m = two_groups();
        m.groups[1].id = 1;
        assert_eq!(m.validate(), Err(AluaError::DuplicateGroup(1)));
        let mut m = two_groups();
        m.groups[1].ports.push(2);
        assert_eq!(m.validate(), Err(AluaError::PortInTwoGroups(2)));
        let m = TargetPortGroups {
            groups: vec![],
            ..TargetPortGroups::default()
        };
        assert_eq!(PortGroups::new(m).unwrap_err(), AluaError::NoGroups);
        let pg = PortGroups::new(two_groups()).unwrap();
        assert_eq!(
            pg.set_state(9, AluaState::Standby),
            Err(AluaError::NoSuchGroup(9))
        );
    }

    #[test]
    fn unlisted_ports_belong_to_the_first_group() {
        let m = two_groups();
        assert_eq!(m.group_of(3).id, 2);
        assert_eq!(m.group_of(7).id, 1);
        let d = TargetPortGroups::default();
        assert_eq!(d.group_of(42).state, AluaState::ActiveOptimized);
    }

    #[test]
    fn report_both_formats() {
        let lu = LuAlua::new(PortGroups::new(two_groups()).unwrap());
        let d = lu.report(false, &[1, 5]);
        // Group 1: PREF, AO, ports 1, 2 and the unlisted port 5 seen; group 2: S, 3.
        let expect = vec![
            0, 0, 0, 32, //
            0x80, 0xCF, 0, 1, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 5, //
            0x02, 0xCF, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3,
        ];
        assert_eq!(d, expect);
        let e = lu.report(true, &[1, 5]);
        assert_eq!(&e[..8], &[0, 0, 0, 36, 0x10, 10, 0, 0]);
        assert_eq!(&e[8..], &expect[4..]);
        // A state change: status code 02h (implicit).
        lu.groups()
            .set_state(2, AluaState::ActiveNonOptimized)
            .unwrap();
        let d = lu.report(false, &[]);
        assert_eq!(&d[20..26], &[0x01, 0xCF, 0, 2, 0, 0x02]);
    }

    #[test]
    fn standby_admits_only_its_list() {
        let admitted: Vec<&str> = COMMANDS
            .iter()
            .filter(|c| admits(AluaState::Standby, c.opcode, c.service_action))
            .map(|c| c.name)
            .collect();
        for name in [
            "INQUIRY",
            "REQUEST SENSE",
            "REPORT LUNS",
            "MODE SENSE(6)",
            "MODE SELECT(10)",
            "READ CAPACITY(16)",
            "PERSISTENT RESERVE IN/READ KEYS",
            "PERSISTENT RESERVE OUT/REGISTER",
        ] {
            assert!(admitted.contains(&name), "{name}");
        }
        for name in [
            "TEST UNIT READY",
            "READ(10)",
            "WRITE(16)",
            "SYNCHRONIZE CACHE(10)",
        ] {
            assert!(!admitted.contains(&name), "{name}");
        }
        let lu = LuAlua::new(PortGroups::new(two_groups()).unwrap());
        let tur = lookup(0x00, None).unwrap();
        let e = lu.check(3, tur).unwrap_err();
        assert_eq!((e.key, e.asc, e.ascq), (SenseKey::NotReady, 0x04, 0x0B));
        assert!(lu.check(1, tur).is_ok(), "port 1 is Active/Optimized");
        for (state, ascq) in [
            (AluaState::Unavailable, 0x0C),
            (AluaState::Transitioning, 0x0A),
            (AluaState::Offline, 0x12),
        ] {
            lu.groups().set_state(2, state).unwrap();
            assert_eq!(lu.check(3, tur).unwrap_err().ascq, ascq);
            let mode_sense = lookup(0x1A, None).unwrap();
            assert!(lu.check(3, mode_sense).is_err(), "{state:?}");
            let inquiry = lookup(0x12, None).unwrap();
            assert!(lu.check(3, inquiry).is_ok(), "{state:?}");
        }
    }
}
