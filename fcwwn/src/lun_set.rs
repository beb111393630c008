//! [`LunSet`]: which LUN numbers an access rule lets an initiator see.
//!
//! In configs it is either the string `"all"` or a list of LUN numbers:
//! `luns = "all"`, `luns = [0, 1, 7]`, `luns = []` (login allowed, no LUNs).

use std::collections::BTreeSet;
use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A LUN number as written in configs (SAM flat space addressing fits in 14 bits).
pub type Lun = u16;

/// A set of LUN numbers, or every LUN of a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LunSet {
    /// Every LUN the target has.
    All,
    /// Only these LUNs (possibly none).
    Only(BTreeSet<Lun>),
}

impl LunSet {
    /// The empty set.
    pub fn none() -> LunSet {
        LunSet::Only(BTreeSet::new())
    }

    /// Exactly these LUNs.
    pub fn only(luns: impl IntoIterator<Item = Lun>) -> LunSet {
        LunSet::Only(luns.into_iter().collect())
    }

    /// Whether `lun` is in the set.
    pub fn contains(&self, lun: Lun) -> bool {
        match self {
            LunSet::All => true,
            LunSet::Only(set) => set.contains(&lun),
        }
    }

    /// Whether the set holds no LUN at all (`All` is never empty).
    pub fn is_empty(&self) -> bool {
        matches!(self, LunSet::Only(set) if set.is_empty())
    }

    /// Adds every LUN of `other` to `self`.
    pub fn extend(&mut self, other: &LunSet) {
        match (&mut *self, other) {
            (LunSet::All, _) => {}
            (_, LunSet::All) => *self = LunSet::All,
            (LunSet::Only(mine), LunSet::Only(theirs)) => mine.extend(theirs),
        }
    }

    /// The LUNs of `luns` (e.g. the LUNs a target has) that are in the set,
    /// in the order given: what a session's LUN map should hold.
    pub fn filter(&self, luns: impl IntoIterator<Item = Lun>) -> Vec<Lun> {
        luns.into_iter().filter(|&lun| self.contains(lun)).collect()
    }
}

impl fmt::Display for LunSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LunSet::All => f.write_str("all LUNs"),
            LunSet::Only(set) if set.is_empty() => f.write_str("no LUNs"),
            LunSet::Only(set) => {
                let list: Vec<String> = set.iter().map(Lun::to_string).collect();
                write!(f, "LUNs {}", list.join(", "))
            }
        }
    }
}

impl Serialize for LunSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            LunSet::All => serializer.serialize_str("all"),
            LunSet::Only(set) => serializer.collect_seq(set),
        }
    }
}

impl<'de> Deserialize<'de> for LunSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<LunSet, D::Error> {
        struct LunSetVisitor;
        impl<'de> de::Visitor<'de> for LunSetVisitor {
            type Value = LunSet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"all\" or a list of LUN numbers such as [0, 1]")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LunSet, E> {
                if v == "all" {
                    Ok(LunSet::All)
                } else {
                    Err(E::custom(format_args!(
                        "luns must be \"all\" or a list of LUN numbers such as [0, 1]: got {v:?}"
                    )))
                }
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<LunSet, A::Error> {
                let mut set = BTreeSet::new();
                while let Some(lun) = seq.next_element::<Lun>()? {
                    set.insert(lun);
                }
                Ok(LunSet::Only(set))
            }
        }
        deserializer.deserialize_any(LunSetVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_and_empty() {
        assert!(LunSet::All.contains(16383));
        assert!(!LunSet::All.is_empty());
        assert!(LunSet::none().is_empty());
        assert!(!LunSet::none().contains(0));
        let s = LunSet::only([3, 1]);
        assert!(s.contains(1) && s.contains(3) && !s.contains(2));
        assert_eq!(s.filter([0, 1, 2, 3, 4]), [1, 3]);
        assert_eq!(LunSet::All.filter([5, 2]), [5, 2]);
    }

    #[test]
    fn extend_is_union() {
        let mut s = LunSet::only([1]);
        s.extend(&LunSet::only([2, 1]));
        assert_eq!(s, LunSet::only([1, 2]));
        s.extend(&LunSet::All);
        assert_eq!(s, LunSet::All);
        s.extend(&LunSet::none());
        assert_eq!(s, LunSet::All);
    }

    #[test]
    fn display() {
        assert_eq!(LunSet::All.to_string(), "all LUNs");
        assert_eq!(LunSet::none().to_string(), "no LUNs");
        assert_eq!(LunSet::only([2, 0]).to_string(), "LUNs 0, 2");
    }

    #[test]
    fn serde_forms() {
        assert_eq!(serde_json::to_string(&LunSet::All).unwrap(), "\"all\"");
        assert_eq!(
            serde_json::to_string(&LunSet::only([2, 0])).unwrap(),
            "[0,2]"
        );
        assert_eq!(
            serde_json::from_str::<LunSet>("\"all\"").unwrap(),
            LunSet::All
        );
        assert_eq!(
            serde_json::from_str::<LunSet>("[]").unwrap(),
            LunSet::none()
        );
        assert_eq!(
            serde_json::from_str::<LunSet>("[1,1,0]").unwrap(),
            LunSet::only([0, 1])
        );
        let e = serde_json::from_str::<LunSet>("\"some\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "luns must be \"all\" or a list of LUN numbers such as [0, 1]: got \"some\""
            ),
            "{e}"
        );
        let e = serde_json::from_str::<LunSet>("[70000]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("70000"), "{e}");
        let e = serde_json::from_str::<LunSet>("3").unwrap_err().to_string();
        assert!(e.contains("\"all\" or a list of LUN numbers"), "{e}");

        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct T {
            a: LunSet,
            b: LunSet,
        }
        let t = T {
            a: LunSet::All,
            b: LunSet::only([0, 7]),
        };
        let text = toml::to_string(&t).unwrap();
        assert_eq!(text, "a = \"all\"\nb = [0, 7]\n");
        assert_eq!(toml::from_str::<T>(&text).unwrap(), t);
    }
}
