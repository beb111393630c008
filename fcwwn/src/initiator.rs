//! Who an initiator is ([`InitiatorId`]) and named sets of them
//! ([`InitiatorGroup`]), as written in zoning/masking configs.
//!
//! In text an initiator is one string: an iSCSI name when it starts with
//! `iqn.`, `eui.` or `naa.` (any case), otherwise an FC port name in any
//! [`Wwn`] form (`21:00:00:24:ff:4b:9c:10`, `0x2100...`, plain hex). So an FC
//! WWPN must not be written with the `naa.` prefix: that spells the iSCSI
//! initiator whose name is `naa.…`, a different initiator. FC port names are
//! printed colon-separated, which keeps `parse(display(x)) == x`.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::iscsi_name::{IscsiName, IscsiNameError};
use crate::wwn::{strip_prefix_ci, Wwn, WwnError};

/// An initiator as seen by a target: an iSCSI initiator name or an FC port
/// name. Two ids are equal only if they are the same kind and the same name
/// (iSCSI names compare in normalised form).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InitiatorId {
    /// An iSCSI initiator, by its InitiatorName.
    Iscsi(IscsiName),
    /// An FC initiator, by its N_Port name (WWPN).
    Fc(Wwn),
}

/// Why a string is not an initiator id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InitiatorIdError {
    /// It starts like an iSCSI name but is not a valid one.
    #[error(transparent)]
    Iscsi(#[from] IscsiNameError),
    /// It does not start like an iSCSI name, and is not a WWN either.
    #[error(
        "{0} (an initiator is an iSCSI name starting iqn., eui. or naa., \
         or an FC port name such as 21:00:00:24:ff:4b:9c:10)"
    )]
    Wwn(#[from] WwnError),
}

impl InitiatorId {
    /// Parses an initiator id; see the [module docs](self) for the rule.
    pub fn parse(s: &str) -> Result<InitiatorId, InitiatorIdError> {
        let is_iscsi = ["iqn.", "eui.", "naa."]
            .iter()
            .any(|p| strip_prefix_ci(s, p).is_some());
        if is_iscsi {
            Ok(InitiatorId::Iscsi(IscsiName::parse(s)?))
        } else {
            Ok(InitiatorId::Fc(s.parse()?))
        }
    }

    /// The iSCSI name, if this is an iSCSI initiator.
    pub fn as_iscsi(&self) -> Option<&IscsiName> {
        match self {
            InitiatorId::Iscsi(name) => Some(name),
            InitiatorId::Fc(_) => None,
        }
    }

    /// The port name, if this is an FC initiator.
    pub fn as_fc(&self) -> Option<&Wwn> {
        match self {
            InitiatorId::Fc(wwn) => Some(wwn),
            InitiatorId::Iscsi(_) => None,
        }
    }
}

impl From<IscsiName> for InitiatorId {
    fn from(name: IscsiName) -> InitiatorId {
        InitiatorId::Iscsi(name)
    }
}

impl From<Wwn> for InitiatorId {
    fn from(wwn: Wwn) -> InitiatorId {
        InitiatorId::Fc(wwn)
    }
}

impl FromStr for InitiatorId {
    type Err = InitiatorIdError;
    fn from_str(s: &str) -> Result<InitiatorId, InitiatorIdError> {
        InitiatorId::parse(s)
    }
}

impl fmt::Display for InitiatorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitiatorId::Iscsi(name) => f.write_str(name.as_str()),
            // Always colon form, even for 16 bytes, so it never reads as `naa.`.
            InitiatorId::Fc(wwn) => f.write_str(&wwn.to_colon()),
        }
    }
}

impl Serialize for InitiatorId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for InitiatorId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<InitiatorId, D::Error> {
        struct IdVisitor;
        impl de::Visitor<'_> for IdVisitor {
            type Value = InitiatorId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an iSCSI initiator name or an FC port name (WWN)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<InitiatorId, E> {
                InitiatorId::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(IdVisitor)
    }
}

/// A named set of initiators, e.g. the hosts of one cluster. A group with
/// no members matches nobody.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitiatorGroup {
    /// The name rules refer to; unique within a [`Masking`](crate::Masking).
    pub name: String,
    /// The initiators in the group.
    #[serde(default)]
    pub members: Vec<InitiatorId>,
}

impl InitiatorGroup {
    /// A group with these members.
    pub fn new(name: impl Into<String>, members: impl IntoIterator<Item = InitiatorId>) -> Self {
        InitiatorGroup {
            name: name.into(),
            members: members.into_iter().collect(),
        }
    }

    /// Whether `initiator` is a member.
    pub fn contains(&self, initiator: &InitiatorId) -> bool {
        self.members.contains(initiator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> InitiatorId {
        InitiatorId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn prefix_decides_the_kind() {
        assert!(matches!(
            id("iqn.1994-05.com.redhat:host1"),
            InitiatorId::Iscsi(_)
        ));
        assert!(matches!(id("EUI.02004567A425678D"), InitiatorId::Iscsi(_)));
        assert!(matches!(id("naa.52004567BA64678D"), InitiatorId::Iscsi(_)));
        for fc in [
            "21:00:00:24:ff:4b:9c:10",
            "0x21000024ff4b9c10",
            "21000024FF4B9C10",
        ] {
            let i = id(fc);
            assert_eq!(
                i.as_fc().unwrap().to_string(),
                "21:00:00:24:ff:4b:9c:10",
                "{fc}"
            );
            assert_eq!(i.as_iscsi(), None);
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "iqn.1994-05.com.redhat:host1",
            "eui.02004567a425678d",
            "naa.52004567ba64678d",
            "21:00:00:24:ff:4b:9c:10",
            "60:01:40:50:12:34:56:78:9a:bc:de:f0:12:34:56:78",
        ] {
            let i = id(s);
            assert_eq!(i.to_string(), s);
            assert_eq!(id(&i.to_string()), i);
        }
        // A 16-byte FC name built in code still prints in colon form.
        let w: Wwn = "naa.60014050123456789abcdef012345678".parse().unwrap();
        let i = InitiatorId::from(w);
        assert_eq!(id(&i.to_string()), i);
    }

    #[test]
    fn iscsi_naa_and_fc_wwn_are_different_initiators() {
        assert_ne!(id("naa.50060e80102a3b4c"), id("50:06:0e:80:10:2a:3b:4c"));
        assert_eq!(
            id("IQN.1994-05.com.RedHat:Host1"),
            id("iqn.1994-05.com.redhat:host1")
        );
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            InitiatorId::parse("iqn.1994-13.com.redhat:x")
                .unwrap_err()
                .to_string(),
            "iqn name has month 13 in its date; the month must be 01-12: \
             got \"iqn.1994-13.com.redhat:x\""
        );
        assert_eq!(
            InitiatorId::parse("host1").unwrap_err().to_string(),
            "WWN \"host1\": character 'h' at position 0 is not a hex digit (an initiator is \
             an iSCSI name starting iqn., eui. or naa., or an FC port name such as \
             21:00:00:24:ff:4b:9c:10)"
        );
    }

    #[test]
    fn group_membership_and_serde() {
        let g = InitiatorGroup::new(
            "esx",
            [
                id("iqn.1998-01.com.vmware:esx01"),
                id("21:00:00:24:ff:4b:9c:10"),
            ],
        );
        assert!(g.contains(&id("IQN.1998-01.com.vmware:ESX01")));
        assert!(g.contains(&id("0x21000024ff4b9c10")));
        assert!(!g.contains(&id("iqn.1998-01.com.vmware:esx02")));
        assert!(!InitiatorGroup::new("empty", []).contains(&id("iqn.1998-01.com.vmware:esx01")));

        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(
            json,
            r#"{"name":"esx","members":["iqn.1998-01.com.vmware:esx01","21:00:00:24:ff:4b:9c:10"]}"#
        );
        assert_eq!(serde_json::from_str::<InitiatorGroup>(&json).unwrap(), g);
        let text = toml::to_string(&g).unwrap();
        assert_eq!(toml::from_str::<InitiatorGroup>(&text).unwrap(), g);

        let e = serde_json::from_str::<InitiatorGroup>(r#"{"name":"x","member":[]}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `member`"), "{e}");
        let e = serde_json::from_str::<InitiatorGroup>(r#"{"name":"x","members":["bogus"]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("WWN \"bogus\""), "{e}");
    }
}
