//! LUN masking / zoning: which initiators may log in to which targets, and
//! which LUNs they see there.
//!
//! # Semantics
//!
//! A [`Masking`] holds initiator groups and access rules. Each rule names one
//! target, one subject (a group or a single initiator) and a [`LunSet`].
//! - A target that no rule names is **open**: every initiator may log in and
//!   sees every LUN.
//! - A target that some rule names is **closed** to everyone the rules do not
//!   grant: an initiator may log in if at least one rule for that target
//!   matches it, and then sees the union of the LUN sets of all matching
//!   rules. A matching rule with `luns = []` allows login with no LUNs.
//! - A rule matches an initiator named in it, or a member of the group named
//!   in it. A group with no members matches nobody, so a rule for an empty
//!   group closes its target without letting anyone in.
//!
//! Target names compare in normalised form: iSCSI names case-folded (RFC
//! 3722), WWNs in their canonical form, anything else exactly. Group names
//! compare exactly. A rule naming a group that does not exist is an error
//! when the masking is built or deserialised, as are duplicate group names.
//!
//! # Config form (TOML)
//!
//! ```toml
//! [[groups]]
//! name = "esx"
//! members = ["iqn.1998-01.com.vmware:esx01", "21:00:00:24:ff:4b:9c:10"]
//!
//! [[rules]]
//! target = "iqn.2024-01.io.switchyard:vol1"
//! group = "esx"               # exactly one of `group` / `initiator`
//! luns = "all"                # or a list: [0, 1]
//!
//! [[rules]]
//! target = "iqn.2024-01.io.switchyard:vol1"
//! initiator = "iqn.1994-05.com.redhat:backup"
//! luns = [0]
//! ```
//!
//! `luns` is required, so a misspelt key cannot silently widen access, and
//! unknown keys are rejected.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::initiator::{InitiatorGroup, InitiatorId};
use crate::iscsi_name::IscsiName;
use crate::lun_set::LunSet;
use crate::wwn::Wwn;

/// Whom an access rule grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// Every member of the named group.
    Group(String),
    /// One initiator.
    Initiator(InitiatorId),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Group(name) => write!(f, "group {name:?}"),
            Subject::Initiator(id) => write!(f, "initiator {id}"),
        }
    }
}

/// One grant: `subject` may log in to `target` and see `luns` there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawRule", into = "RawRule")]
pub struct AccessRule {
    /// The target's name (an iSCSI target name, or another target name).
    pub target: String,
    /// Whom the rule grants.
    pub subject: Subject,
    /// Which LUNs the subject sees.
    pub luns: LunSet,
}

impl AccessRule {
    /// A rule granting one initiator.
    pub fn initiator(target: impl Into<String>, initiator: InitiatorId, luns: LunSet) -> Self {
        AccessRule {
            target: target.into(),
            subject: Subject::Initiator(initiator),
            luns,
        }
    }

    /// A rule granting every member of a group.
    pub fn group(target: impl Into<String>, group: impl Into<String>, luns: LunSet) -> Self {
        AccessRule {
            target: target.into(),
            subject: Subject::Group(group.into()),
            luns,
        }
    }
}

/// The serialised shape of an [`AccessRule`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    initiator: Option<InitiatorId>,
    luns: LunSet,
}

impl TryFrom<RawRule> for AccessRule {
    type Error = MaskingError;
    fn try_from(raw: RawRule) -> Result<AccessRule, MaskingError> {
        let subject = match (raw.group, raw.initiator) {
            (Some(group), None) => Subject::Group(group),
            (None, Some(initiator)) => Subject::Initiator(initiator),
            _ => return Err(MaskingError::RuleSubject { target: raw.target }),
        };
        Ok(AccessRule {
            target: raw.target,
            subject,
            luns: raw.luns,
        })
    }
}

impl From<AccessRule> for RawRule {
    fn from(rule: AccessRule) -> RawRule {
        let (group, initiator) = match rule.subject {
            Subject::Group(group) => (Some(group), None),
            Subject::Initiator(id) => (None, Some(id)),
        };
        RawRule {
            target: rule.target,
            group,
            initiator,
            luns: rule.luns,
        }
    }
}

/// Why a masking configuration is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MaskingError {
    /// Two groups share a name.
    #[error("initiator group {name:?} is defined twice; group names must be unique")]
    DuplicateGroup {
        /// The repeated name.
        name: String,
    },
    /// A group has an empty name.
    #[error("an initiator group has an empty name; give every group a name")]
    EmptyGroupName,
    /// A rule has an empty target name.
    #[error("an access rule has an empty target name; name the target it grants")]
    EmptyTarget,
    /// A rule names a group that is not defined.
    #[error(
        "access rule for target {target:?} names group {group:?}, which is not defined; \
         define it under [[groups]] or fix the name"
    )]
    UnknownGroup {
        /// The rule's target.
        target: String,
        /// The missing group.
        group: String,
    },
    /// A rule names neither or both of `group` and `initiator`.
    #[error("access rule for target {target:?} must name exactly one of `group` or `initiator`")]
    RuleSubject {
        /// The rule's target.
        target: String,
    },
}

/// Validated masking configuration. See the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawMasking", into = "RawMasking")]
pub struct Masking {
    groups: Vec<InitiatorGroup>,
    /// Rules with their target names normalised.
    rules: Vec<AccessRule>,
}

/// The serialised shape of a [`Masking`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMasking {
    #[serde(default)]
    groups: Vec<InitiatorGroup>,
    #[serde(default)]
    rules: Vec<AccessRule>,
}

impl TryFrom<RawMasking> for Masking {
    type Error = MaskingError;
    fn try_from(raw: RawMasking) -> Result<Masking, MaskingError> {
        Masking::new(raw.groups, raw.rules)
    }
}

impl From<Masking> for RawMasking {
    fn from(m: Masking) -> RawMasking {
        RawMasking {
            groups: m.groups,
            rules: m.rules,
        }
    }
}

impl Masking {
    /// Checks and builds a masking configuration. Target names in rules are
    /// normalised (see the [module docs](self)).
    pub fn new(
        groups: Vec<InitiatorGroup>,
        mut rules: Vec<AccessRule>,
    ) -> Result<Masking, MaskingError> {
        for (i, group) in groups.iter().enumerate() {
            if group.name.is_empty() {
                return Err(MaskingError::EmptyGroupName);
            }
            if groups[..i].iter().any(|g| g.name == group.name) {
                return Err(MaskingError::DuplicateGroup {
                    name: group.name.clone(),
                });
            }
        }
        for rule in &mut rules {
            if rule.target.is_empty() {
                return Err(MaskingError::EmptyTarget);
            }
            if let Subject::Group(name) = &rule.subject {
                if !groups.iter().any(|g| &g.name == name) {
                    return Err(MaskingError::UnknownGroup {
                        target: rule.target.clone(),
                        group: name.clone(),
                    });
                }
            }
            rule.target = normalise_target(&rule.target);
        }
        Ok(Masking { groups, rules })
    }

    /// No groups and no rules: every target open to every initiator.
    pub fn open() -> Masking {
        Masking::default()
    }

    /// The initiator groups.
    pub fn groups(&self) -> &[InitiatorGroup] {
        &self.groups
    }

    /// The access rules, target names normalised.
    pub fn rules(&self) -> &[AccessRule] {
        &self.rules
    }

    /// The group called `name`.
    pub fn group(&self, name: &str) -> Option<&InitiatorGroup> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// Whether any rule names `target` (so it is closed to everyone else).
    pub fn is_restricted(&self, target: &str) -> bool {
        let target = normalise_target(target);
        self.rules.iter().any(|r| r.target == target)
    }

    /// What `initiator` gets at `target`: `None` if it may not log in,
    /// otherwise the LUNs it sees. One call for both questions.
    pub fn access(&self, initiator: &InitiatorId, target: &str) -> Option<LunSet> {
        let target = normalise_target(target);
        let mut for_target = self.rules.iter().filter(|r| r.target == target).peekable();
        if for_target.peek().is_none() {
            return Some(LunSet::All);
        }
        let mut granted: Option<LunSet> = None;
        for rule in for_target.filter(|r| self.matches(&r.subject, initiator)) {
            granted.get_or_insert_with(LunSet::none).extend(&rule.luns);
        }
        granted
    }

    /// Whether `initiator` may log in to `target` (called at login).
    pub fn may_login(&self, initiator: &InitiatorId, target: &str) -> bool {
        self.access(initiator, target).is_some()
    }

    /// The LUNs `initiator` sees at `target` (for building a session's LUN
    /// map); empty if it may not log in at all.
    pub fn visible_luns(&self, initiator: &InitiatorId, target: &str) -> LunSet {
        self.access(initiator, target).unwrap_or_else(LunSet::none)
    }

    fn matches(&self, subject: &Subject, initiator: &InitiatorId) -> bool {
        match subject {
            Subject::Initiator(id) => id == initiator,
            Subject::Group(name) => self.group(name).is_some_and(|g| g.contains(initiator)),
        }
    }
}

/// iSCSI names case-folded, WWNs canonical, other names as they are.
fn normalise_target(target: &str) -> String {
    if let Ok(name) = IscsiName::parse(target) {
        return name.into();
    }
    if let Ok(wwn) = target.parse::<Wwn>() {
        return wwn.to_string();
    }
    target.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOL1: &str = "iqn.2024-01.io.switchyard:vol1";
    const VOL2: &str = "iqn.2024-01.io.switchyard:vol2";
    const OPEN: &str = "iqn.2024-01.io.switchyard:scratch";

    fn id(s: &str) -> InitiatorId {
        InitiatorId::parse(s).unwrap()
    }

    fn esx1() -> InitiatorId {
        id("iqn.1998-01.com.vmware:esx01")
    }
    fn esx2() -> InitiatorId {
        id("iqn.1998-01.com.vmware:esx02")
    }
    fn fc_host() -> InitiatorId {
        id("21:00:00:24:ff:4b:9c:10")
    }
    fn backup() -> InitiatorId {
        id("iqn.1994-05.com.redhat:backup")
    }
    fn stranger() -> InitiatorId {
        id("iqn.1994-05.com.redhat:stranger")
    }

    const CONFIG: &str = r#"
[[groups]]
name = "esx"
members = ["iqn.1998-01.com.vmware:esx01", "IQN.1998-01.com.vmware:ESX02", "0x21000024ff4b9c10"]

[[groups]]
name = "nobody"
members = []

[[rules]]
target = "IQN.2024-01.io.switchyard:VOL1"
group = "esx"
luns = "all"

[[rules]]
target = "iqn.2024-01.io.switchyard:vol1"
initiator = "iqn.1994-05.com.redhat:backup"
luns = [0]

[[rules]]
target = "iqn.2024-01.io.switchyard:vol1"
initiator = "iqn.1994-05.com.redhat:backup"
luns = [2, 3]

[[rules]]
target = "iqn.2024-01.io.switchyard:vol2"
group = "nobody"
luns = "all"

[[rules]]
target = "50:06:0e:80:10:2a:3b:4c"
initiator = "21:00:00:24:ff:4b:9c:10"
luns = []
"#;

    fn config() -> Masking {
        toml::from_str(CONFIG).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn unnamed_target_is_open_to_all() {
        let m = config();
        assert!(!m.is_restricted(OPEN));
        for who in [esx1(), fc_host(), stranger()] {
            assert!(m.may_login(&who, OPEN));
            assert_eq!(m.visible_luns(&who, OPEN), LunSet::All);
        }
        assert!(Masking::open().may_login(&stranger(), VOL1));
        assert_eq!(Masking::open().access(&stranger(), VOL1), Some(LunSet::All));
    }

    #[test]
    fn named_target_admits_only_matching_initiators() {
        let m = config();
        assert!(m.is_restricted(VOL1));
        for who in [esx1(), esx2(), fc_host()] {
            assert!(m.may_login(&who, VOL1), "{who}");
            assert_eq!(m.visible_luns(&who, VOL1), LunSet::All, "{who}");
        }
        assert!(!m.may_login(&stranger(), VOL1));
        assert_eq!(m.visible_luns(&stranger(), VOL1), LunSet::none());
        assert_eq!(m.access(&stranger(), VOL1), None);
    }

    #[test]
    fn luns_of_matching_rules_are_unioned() {
        let m = config();
        assert!(m.may_login(&backup(), VOL1));
        assert_eq!(m.visible_luns(&backup(), VOL1), LunSet::only([0, 2, 3]));
        assert_eq!(m.visible_luns(&backup(), VOL1).filter(0..8), [0, 2, 3]);
    }

    #[test]
    fn empty_group_matches_nobody_and_closes_the_target() {
        let m = config();
        assert!(m.is_restricted(VOL2));
        for who in [esx1(), fc_host(), backup(), stranger()] {
            assert!(!m.may_login(&who, VOL2), "{who}");
        }
    }

    #[test]
    fn rule_with_no_luns_allows_login_only() {
        let m = config();
        let fc_target = "0x50060E80102A3B4C";
        assert!(m.is_restricted(fc_target));
        assert!(m.may_login(&fc_host(), fc_target));
        assert!(m.visible_luns(&fc_host(), fc_target).is_empty());
        assert!(!m.may_login(&esx1(), "50-06-0e-80-10-2a-3b-4c"));
    }

    #[test]
    fn target_and_initiator_names_compare_normalised() {
        let m = config();
        assert!(m.may_login(
            &id("IQN.1998-01.COM.VMWARE:ESX01"),
            "iqn.2024-01.io.SWITCHYARD:vol1"
        ));
        assert_eq!(m.rules()[0].target, VOL1);
        // Non-iSCSI, non-WWN target names compare exactly.
        let m = Masking::new(
            vec![],
            vec![AccessRule::initiator("Scratch", esx1(), LunSet::All)],
        )
        .unwrap();
        assert!(m.is_restricted("Scratch"));
        assert!(!m.is_restricted("scratch"));
    }

    #[test]
    fn built_in_code_like_from_config() {
        let m = Masking::new(
            vec![InitiatorGroup::new("esx", [esx1(), esx2()])],
            vec![
                AccessRule::group(VOL1, "esx", LunSet::only([0, 1])),
                AccessRule::initiator(VOL1, backup(), LunSet::only([1, 5])),
            ],
        )
        .unwrap();
        assert_eq!(m.visible_luns(&esx2(), VOL1), LunSet::only([0, 1]));
        assert_eq!(m.visible_luns(&backup(), VOL1), LunSet::only([1, 5]));
        assert!(!m.may_login(&fc_host(), VOL1));
        assert_eq!(m.group("esx").unwrap().members.len(), 2);
        assert!(m.group("ESX").is_none());
        assert_eq!(m.groups().len(), 1);
        assert_eq!(Subject::Group("esx".into()).to_string(), "group \"esx\"");
        assert_eq!(
            Subject::Initiator(fc_host()).to_string(),
            "initiator 21:00:00:24:ff:4b:9c:10"
        );
    }

    #[test]
    fn validation_errors() {
        let err = |groups, rules| Masking::new(groups, rules).unwrap_err().to_string();
        assert_eq!(
            err(
                vec![InitiatorGroup::new("a", []), InitiatorGroup::new("a", [])],
                vec![]
            ),
            "initiator group \"a\" is defined twice; group names must be unique"
        );
        assert_eq!(
            err(vec![InitiatorGroup::new("", [])], vec![]),
            "an initiator group has an empty name; give every group a name"
        );
        assert_eq!(
            err(vec![], vec![AccessRule::group(VOL1, "esx", LunSet::All)]),
            "access rule for target \"iqn.2024-01.io.switchyard:vol1\" names group \"esx\", \
             which is not defined; define it under [[groups]] or fix the name"
        );
        assert_eq!(
            err(vec![], vec![AccessRule::initiator("", esx1(), LunSet::All)]),
            "an access rule has an empty target name; name the target it grants"
        );
    }

    #[test]
    fn config_errors() {
        let err = |text: &str| toml::from_str::<Masking>(text).unwrap_err().to_string();
        let e = err("[[rules]]\ntarget = \"t\"\nluns = \"all\"\n");
        assert!(
            e.contains(
                "access rule for target \"t\" must name exactly one of `group` or `initiator`"
            ),
            "{e}"
        );
        let e = err(
            "[[groups]]\nname = \"g\"\n[[rules]]\ntarget = \"t\"\ngroup = \"g\"\n\
                     initiator = \"iqn.1994-05.com.redhat:x\"\nluns = \"all\"\n",
        );
        assert!(e.contains("exactly one of"), "{e}");
        // A misspelt `luns` must not silently grant everything.
        let e =
            err("[[rules]]\ntarget = \"t\"\ninitiator = \"iqn.1994-05.com.redhat:x\"\nlun = [0]\n");
        assert!(e.contains("unknown field `lun`"), "{e}");
        let e = err("[[rules]]\ntarget = \"t\"\ninitiator = \"iqn.1994-05.com.redhat:x\"\n");
        assert!(e.contains("missing field `luns`"), "{e}");
        let e = err("[[rules]]\ntarget = \"t\"\ngroup = \"ghost\"\nluns = \"all\"\n");
        assert!(
            e.contains("names group \"ghost\", which is not defined"),
            "{e}"
        );
        let e =
            err("[[rules]]\ntarget = \"t\"\ninitiator = \"iqn.1994-05.com.redhat_x\"\nluns = []\n");
        assert!(e.contains("'_'"), "{e}");
        let e = err("[[rulez]]\ntarget = \"t\"\n");
        assert!(e.contains("unknown field `rulez`"), "{e}");
    }

    #[test]
    fn toml_round_trip() {
        let m = config();
        let text = toml::to_string(&m).unwrap();
        let back: Masking = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, m);
        assert!(text.contains("group = \"esx\""), "{text}");
        assert!(
            text.contains("initiator = \"iqn.1994-05.com.redhat:backup\""),
            "{text}"
        );
        assert!(text.contains("luns = [2, 3]"), "{text}");
        assert!(!text.contains("initiator = \"\""), "{text}");
        // Embedded in a larger config.
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct NodeConfig {
            name: String,
            #[serde(default)]
            masking: Masking,
        }
        let node: NodeConfig = toml::from_str("name = \"n1\"\n").unwrap();
        assert_eq!(node.masking, Masking::open());
        let node = NodeConfig {
            name: "n1".into(),
            masking: m,
        };
        let text = toml::to_string(&node).unwrap();
        assert!(text.contains("[[masking.rules]]"), "{text}");
        assert_eq!(toml::from_str::<NodeConfig>(&text).unwrap(), node);
    }

    #[test]
    fn json_round_trip() {
        let m = config();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Masking>(&json).unwrap(), m);
        let rule: AccessRule = serde_json::from_str(
            r#"{"target":"iqn.2024-01.io.switchyard:vol1","initiator":"21:00:00:24:ff:4b:9c:10","luns":[1]}"#,
        )
        .unwrap();
        assert_eq!(
            rule,
            AccessRule::initiator(VOL1, fc_host(), LunSet::only([1]))
        );
        assert_eq!(
            serde_json::to_string(&rule).unwrap(),
            r#"{"target":"iqn.2024-01.io.switchyard:vol1","initiator":"21:00:00:24:ff:4b:9c:10","luns":[1]}"#
        );
        assert_eq!(
            serde_json::from_str::<Masking>("{}").unwrap(),
            Masking::open()
        );
    }
}
