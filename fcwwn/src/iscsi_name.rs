//! iSCSI names (RFC 7143 §4.2.7, formerly RFC 3720 §3.2.6; `naa.` from RFC 3980).
//!
//! Three types, told apart by a prefix that is matched without regard to case:
//! - `iqn.YYYY-MM.reversed.domain[:anything]` — the date is when the naming
//!   authority held the domain (month 01-12), then the domain reversed
//!   (`com.example`), then optionally `:` and a string of the authority's
//!   choosing (RFC 7143 §4.2.7.2);
//! - `eui.` and 16 hex digits — an IEEE EUI-64 (§4.2.7.3);
//! - `naa.` and 16 or 32 hex digits — an NAA identifier (RFC 3980), checked
//!   as a [`Wwn`] (NAA type against length).
//!
//! # Normalisation and printing
//!
//! Names are normalised with the RFC 3722 stringprep profile before use,
//! and compared in normalised form (RFC 7143 §4.2.7.1). For ASCII that
//! profile is a case fold, so `IQN.2001-04.COM.Example` and
//! `iqn.2001-04.com.example` are the same name. After normalisation only
//! `a-z`, `0-9`, `-`, `.` and `:` may appear. Non-ASCII input is rejected
//! with its own error: the NFKC and mapping steps of stringprep for
//! characters beyond ASCII are not implemented, and no initiator we serve
//! sends them.
//!
//! A name is stored and printed in its normalised form, all lowercase. That
//! includes the hex of `eui.` and `naa.` names: the RFCs' examples
//! (`eui.02004567A425678D`) show uppercase, but RFC 3722 case-folds it, so
//! the normalised, comparable and canonical form is `eui.02004567a425678d`.
//! This is also what Linux LIO and open-iscsi print. Normalised names are at
//! most 223 bytes (RFC 7143 §4.2.7.1).

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::wwn::{Wwn, WwnError};

/// Longest iSCSI name in bytes, after normalisation (RFC 7143 §4.2.7.1).
pub const MAX_NAME_LEN: usize = 223;

/// Which of the three iSCSI name types a name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IscsiNameKind {
    /// `iqn.` — iSCSI qualified name.
    Iqn,
    /// `eui.` — IEEE EUI-64.
    Eui,
    /// `naa.` — T11 Network Address Authority identifier.
    Naa,
}

/// Why a string is not a valid iSCSI name. Each message quotes the input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IscsiNameError {
    /// Nothing was given.
    #[error(
        "empty iSCSI name: expected iqn.YYYY-MM.reversed.domain[:id], \
         eui. and 16 hex digits, or naa. and 16 or 32 hex digits"
    )]
    Empty,
    /// Longer than [`MAX_NAME_LEN`] bytes.
    #[error(
        "iSCSI name is {len} bytes; at most 223 are allowed (RFC 7143 4.2.7.1): got {input:?}"
    )]
    TooLong {
        /// The name as given.
        input: String,
        /// Its length in bytes.
        len: usize,
    },
    /// An ASCII character outside the allowed set.
    #[error(
        "iSCSI name contains {ch:?} at byte {pos}; after normalisation only a-z, 0-9, \
         '-', '.' and ':' are allowed (RFC 3722): got {input:?}"
    )]
    BadChar {
        /// The name as given.
        input: String,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        pos: usize,
    },
    /// A character beyond ASCII.
    #[error(
        "iSCSI name contains non-ASCII {ch:?} at byte {pos}; only ASCII names are \
         accepted (RFC 3722 normalisation beyond ASCII is not implemented): got {input:?}"
    )]
    NonAscii {
        /// The name as given.
        input: String,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        pos: usize,
    },
    /// Not `iqn.`, `eui.` or `naa.`.
    #[error("iSCSI name must start with iqn., eui. or naa.: got {input:?}")]
    UnknownType {
        /// The name as given.
        input: String,
    },
    /// `iqn.` not followed by `YYYY-MM.`.
    #[error("iqn name must start with iqn.YYYY-MM.: got {input:?}")]
    IqnDate {
        /// The name as given.
        input: String,
    },
    /// The month of an `iqn.` date is not 01-12.
    #[error("iqn name has month {month:02} in its date; the month must be 01-12: got {input:?}")]
    IqnMonth {
        /// The name as given.
        input: String,
        /// The month found.
        month: u8,
    },
    /// The naming authority (reversed domain) is missing or malformed.
    #[error(
        "iqn name needs a reversed domain name such as com.example after the date, \
         with no empty labels: got {input:?}"
    )]
    IqnAuthority {
        /// The name as given.
        input: String,
    },
    /// `eui.` not followed by exactly 16 hex digits.
    #[error("eui name must be eui. followed by exactly 16 hex digits: got {input:?}")]
    Eui {
        /// The name as given.
        input: String,
    },
    /// `naa.` not followed by 16 or 32 hex digits.
    #[error("naa name must be naa. followed by 16 or 32 hex digits: got {input:?}")]
    NaaFormat {
        /// The name as given.
        input: String,
    },
    /// `naa.` hex that is not a valid NAA identifier.
    #[error("naa name {input:?} is not a valid NAA identifier: {source}")]
    Naa {
        /// The name as given.
        input: String,
        /// What is wrong with the identifier.
        source: WwnError,
    },
}

/// A valid iSCSI name in normalised (lowercase) form. See the [module docs](self).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IscsiName {
    name: String,
}

impl IscsiName {
    /// Parses and normalises a name (same as `str::parse`).
    pub fn parse(input: &str) -> Result<IscsiName, IscsiNameError> {
        let name = normalise(input)?;
        if name.len() > MAX_NAME_LEN {
            return Err(IscsiNameError::TooLong {
                input: input.to_owned(),
                len: name.len(),
            });
        }
        let owned = || input.to_owned();
        if let Some(rest) = name.strip_prefix("iqn.") {
            check_iqn(rest, input)?;
        } else if let Some(hex) = name.strip_prefix("eui.") {
            if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(IscsiNameError::Eui { input: owned() });
            }
        } else if let Some(hex) = name.strip_prefix("naa.") {
            if !(hex.len() == 16 || hex.len() == 32) || !hex.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(IscsiNameError::NaaFormat { input: owned() });
            }
            hex.parse::<Wwn>().map_err(|source| IscsiNameError::Naa {
                input: owned(),
                source,
            })?;
        } else {
            return Err(IscsiNameError::UnknownType { input: owned() });
        }
        Ok(IscsiName { name })
    }

    /// The `eui.` name of an EUI-64.
    pub fn from_eui64(eui: u64) -> IscsiName {
        IscsiName {
            name: format!("eui.{eui:016x}"),
        }
    }

    /// The `naa.` name of an NAA identifier (RFC 3980).
    pub fn from_wwn(wwn: &Wwn) -> IscsiName {
        IscsiName {
            name: format!("naa.{}", wwn.to_hex()),
        }
    }

    /// The normalised name.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The name's type.
    pub fn kind(&self) -> IscsiNameKind {
        match &self.name[..4] {
            "iqn." => IscsiNameKind::Iqn,
            "eui." => IscsiNameKind::Eui,
            _ => IscsiNameKind::Naa,
        }
    }

    /// For `iqn.` names, the date as (year, month).
    pub fn iqn_date(&self) -> Option<(u16, u8)> {
        let rest = self.name.strip_prefix("iqn.")?;
        Some((rest[..4].parse().ok()?, rest[5..7].parse().ok()?))
    }

    /// For `iqn.` names, the naming authority (the reversed domain name).
    pub fn naming_authority(&self) -> Option<&str> {
        let rest = self.name.strip_prefix("iqn.")?;
        let authority = &rest[8..];
        Some(authority.split_once(':').map_or(authority, |(a, _)| a))
    }

    /// For `iqn.` names, the part after the first `:` (possibly empty), or
    /// `None` if there is no `:`.
    pub fn iqn_unique(&self) -> Option<&str> {
        let rest = self.name.strip_prefix("iqn.")?;
        rest.split_once(':').map(|(_, unique)| unique)
    }

    /// For `eui.` names, the EUI-64.
    pub fn eui64(&self) -> Option<u64> {
        let hex = self.name.strip_prefix("eui.")?;
        u64::from_str_radix(hex, 16).ok()
    }

    /// For `naa.` names, the NAA identifier.
    pub fn naa(&self) -> Option<Wwn> {
        self.name.strip_prefix("naa.")?.parse().ok()
    }
}

/// RFC 3722 for ASCII: fold case; allow only a-z, 0-9, '-', '.', ':'.
fn normalise(input: &str) -> Result<String, IscsiNameError> {
    if input.is_empty() {
        return Err(IscsiNameError::Empty);
    }
    let mut name = String::with_capacity(input.len());
    for (pos, ch) in input.char_indices() {
        let folded = ch.to_ascii_lowercase();
        match folded {
            'a'..='z' | '0'..='9' | '-' | '.' | ':' => name.push(folded),
            _ if !ch.is_ascii() => {
                return Err(IscsiNameError::NonAscii {
                    input: input.to_owned(),
                    ch,
                    pos,
                })
            }
            _ => {
                return Err(IscsiNameError::BadChar {
                    input: input.to_owned(),
                    ch,
                    pos,
                })
            }
        }
    }
    Ok(name)
}

/// Checks `YYYY-MM.authority[:unique]` (the part after `iqn.`).
fn check_iqn(rest: &str, input: &str) -> Result<(), IscsiNameError> {
    let b = rest.as_bytes();
    let date_ok = b.len() >= 8
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'.';
    if !date_ok {
        return Err(IscsiNameError::IqnDate {
            input: input.to_owned(),
        });
    }
    let month = (b[5] - b'0') * 10 + (b[6] - b'0');
    if !(1..=12).contains(&month) {
        return Err(IscsiNameError::IqnMonth {
            input: input.to_owned(),
            month,
        });
    }
    let after_date = &rest[8..];
    let authority = after_date.split_once(':').map_or(after_date, |(a, _)| a);
    if authority.split('.').any(str::is_empty) {
        return Err(IscsiNameError::IqnAuthority {
            input: input.to_owned(),
        });
    }
    Ok(())
}

impl FromStr for IscsiName {
    type Err = IscsiNameError;
    fn from_str(s: &str) -> Result<IscsiName, IscsiNameError> {
        IscsiName::parse(s)
    }
}

impl TryFrom<&str> for IscsiName {
    type Error = IscsiNameError;
    fn try_from(s: &str) -> Result<IscsiName, IscsiNameError> {
        IscsiName::parse(s)
    }
}

impl TryFrom<String> for IscsiName {
    type Error = IscsiNameError;
    fn try_from(s: String) -> Result<IscsiName, IscsiNameError> {
        IscsiName::parse(&s)
    }
}

impl From<IscsiName> for String {
    fn from(name: IscsiName) -> String {
        name.name
    }
}

impl AsRef<str> for IscsiName {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for IscsiName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for IscsiName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IscsiName({})", self.name)
    }
}

impl Serialize for IscsiName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for IscsiName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<IscsiName, D::Error> {
        struct NameVisitor;
        impl de::Visitor<'_> for NameVisitor {
            type Value = IscsiName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an iSCSI name string (iqn., eui. or naa.)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IscsiName, E> {
                IscsiName::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> IscsiName {
        IscsiName::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        IscsiName::parse(s).expect_err(s).to_string()
    }

    #[test]
    fn golden_names_normalise_to_lowercase() {
        let vectors = [
            // RFC 7143 §4.2.7.2 examples.
            ("iqn.2001-04.com.example", "iqn.2001-04.com.example"),
            (
                "iqn.2001-04.com.example:storage:diskarrays-sn-a8675309",
                "iqn.2001-04.com.example:storage:diskarrays-sn-a8675309",
            ),
            (
                "iqn.2001-04.com.example:storage.tape1.sys1.xyz",
                "iqn.2001-04.com.example:storage.tape1.sys1.xyz",
            ),
            (
                "iqn.2001-04.com.example:storage.disk2.sys1.xyz",
                "iqn.2001-04.com.example:storage.disk2.sys1.xyz",
            ),
            // Real initiators.
            (
                "iqn.1994-05.com.redhat:a1b2c3d4e5f6",
                "iqn.1994-05.com.redhat:a1b2c3d4e5f6",
            ),
            (
                "iqn.1998-01.com.vmware:esx01-4b3c5d6e",
                "iqn.1998-01.com.vmware:esx01-4b3c5d6e",
            ),
            (
                "iqn.1991-05.com.microsoft:WIN-HOST.corp.Example.com",
                "iqn.1991-05.com.microsoft:win-host.corp.example.com",
            ),
            (
                "IQN.2001-04.COM.Example:Disk1",
                "iqn.2001-04.com.example:disk1",
            ),
            ("iqn.2001-04.com.example:", "iqn.2001-04.com.example:"),
            // RFC 7143 §4.2.7.3 / RFC 3980 examples, case-folded.
            ("eui.02004567A425678D", "eui.02004567a425678d"),
            ("EUI.02004567a425678d", "eui.02004567a425678d"),
            ("naa.52004567BA64678D", "naa.52004567ba64678d"),
            (
                "naa.62004567BA64678D0123456789ABCDEF",
                "naa.62004567ba64678d0123456789abcdef",
            ),
        ];
        for (input, want) in vectors {
            let n = name(input);
            assert_eq!(n.to_string(), want, "{input}");
            assert_eq!(name(n.as_str()), n, "{input} round trip");
            assert_eq!(
                n,
                name(&input.to_uppercase()),
                "{input} is case-insensitive"
            );
        }
    }

    #[test]
    fn iqn_parts() {
        let n = name("iqn.2001-04.com.example:storage:diskarrays-sn-a8675309");
        assert_eq!(n.kind(), IscsiNameKind::Iqn);
        assert_eq!(n.iqn_date(), Some((2001, 4)));
        assert_eq!(n.naming_authority(), Some("com.example"));
        assert_eq!(n.iqn_unique(), Some("storage:diskarrays-sn-a8675309"));
        assert_eq!(n.eui64(), None);
        assert_eq!(n.naa(), None);
        let bare = name("iqn.2001-04.com.example");
        assert_eq!(bare.naming_authority(), Some("com.example"));
        assert_eq!(bare.iqn_unique(), None);
    }

    #[test]
    fn eui_and_naa_parts() {
        let e = name("eui.02004567A425678D");
        assert_eq!(e.kind(), IscsiNameKind::Eui);
        assert_eq!(e.eui64(), Some(0x0200_4567_a425_678d));
        assert_eq!(e.iqn_date(), None);
        assert_eq!(IscsiName::from_eui64(0x0200_4567_a425_678d), e);

        let n = name("naa.50060E80102A3B4C");
        assert_eq!(n.kind(), IscsiNameKind::Naa);
        let wwn: Wwn = "50:06:0e:80:10:2a:3b:4c".parse().unwrap();
        assert_eq!(n.naa(), Some(wwn));
        assert_eq!(IscsiName::from_wwn(&wwn), n);
        let n6 = name("naa.60014050123456789abcdef012345678");
        assert_eq!(n6.naa().unwrap().oui(), Some(0x001405));
    }

    #[test]
    fn prefix_errors() {
        assert_eq!(
            err(""),
            "empty iSCSI name: expected iqn.YYYY-MM.reversed.domain[:id], \
             eui. and 16 hex digits, or naa. and 16 or 32 hex digits"
        );
        assert_eq!(
            err("iscsi.2001-04.com.example"),
            "iSCSI name must start with iqn., eui. or naa.: got \"iscsi.2001-04.com.example\""
        );
        assert_eq!(
            err("2001-04.com.example"),
            "iSCSI name must start with iqn., eui. or naa.: got \"2001-04.com.example\""
        );
    }

    #[test]
    fn iqn_errors() {
        for bad in [
            "iqn.",
            "iqn.2001.com.example",
            "iqn.01-04.com.example",
            "iqn.2001-4.com.example",
            "iqn.2001-04com.example",
            "iqn.2001-04",
            "iqn.200a-04.com.example",
        ] {
            assert_eq!(
                err(bad),
                format!("iqn name must start with iqn.YYYY-MM.: got {bad:?}"),
                "{bad}"
            );
        }
        assert_eq!(
            err("iqn.2001-13.com.example"),
            "iqn name has month 13 in its date; the month must be 01-12: \
             got \"iqn.2001-13.com.example\""
        );
        assert_eq!(
            err("iqn.2001-00.com.example"),
            "iqn name has month 00 in its date; the month must be 01-12: \
             got \"iqn.2001-00.com.example\""
        );
        for bad in [
            "iqn.2001-04.",
            "iqn.2001-04.:disk",
            "iqn.2001-04.com..example",
            "iqn.2001-04.com.example.:disk",
        ] {
            assert_eq!(
                err(bad),
                format!(
                    "iqn name needs a reversed domain name such as com.example after the date, \
                     with no empty labels: got {bad:?}"
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn character_errors() {
        assert_eq!(
            err("iqn.2001-04.com.example:disk 1"),
            "iSCSI name contains ' ' at byte 28; after normalisation only a-z, 0-9, \
             '-', '.' and ':' are allowed (RFC 3722): got \"iqn.2001-04.com.example:disk 1\""
        );
        assert_eq!(
            err("iqn.2001-04.com.example:disk_1"),
            "iSCSI name contains '_' at byte 28; after normalisation only a-z, 0-9, \
             '-', '.' and ':' are allowed (RFC 3722): got \"iqn.2001-04.com.example:disk_1\""
        );
        assert!(err("iqn.2001-04.com.example:a\n").contains("'\\n' at byte 25"));
        assert!(err("iqn.2001-04.com.example/x").contains("'/' at byte 23"));
        assert_eq!(
            err("iqn.2001-04.com.exämple"),
            "iSCSI name contains non-ASCII 'ä' at byte 18; only ASCII names are \
             accepted (RFC 3722 normalisation beyond ASCII is not implemented): \
             got \"iqn.2001-04.com.exämple\""
        );
    }

    #[test]
    fn length_limit_is_223_bytes() {
        let head = "iqn.2001-04.com.example:";
        let at_limit = format!("{head}{}", "x".repeat(MAX_NAME_LEN - head.len()));
        assert_eq!(name(&at_limit).as_str().len(), 223);
        let over = format!("{at_limit}x");
        assert_eq!(
            err(&over),
            format!(
                "iSCSI name is 224 bytes; at most 223 are allowed (RFC 7143 4.2.7.1): got {over:?}"
            )
        );
    }

    #[test]
    fn eui_and_naa_errors() {
        for bad in [
            "eui.",
            "eui.02004567A425678",
            "eui.02004567A425678D0",
            "eui.02004567A425678G",
        ] {
            assert_eq!(
                err(bad),
                format!("eui name must be eui. followed by exactly 16 hex digits: got {bad:?}")
            );
        }
        for bad in [
            "naa.",
            "naa.5200456",
            "naa.52004567BA64678D00",
            "naa.5200-4567BA64678",
        ] {
            assert_eq!(
                err(bad),
                format!("naa name must be naa. followed by 16 or 32 hex digits: got {bad:?}")
            );
        }
        assert_eq!(
            err("naa.42004567BA64678D"),
            "naa name \"naa.42004567BA64678D\" is not a valid NAA identifier: WWN \
             42004567ba64678d: NAA type 4 (the first hex digit) is reserved or unsupported; \
             expected 1, 2, 3 or 5 (8 bytes) or 6 (16 bytes)"
        );
        assert!(err("naa.62004567BA64678D").contains("NAA 6 names are 16 bytes long"));
    }

    #[test]
    fn serde_round_trips() {
        let n = name("iqn.2001-04.com.example:disk1");
        assert_eq!(
            serde_json::to_string(&n).unwrap(),
            "\"iqn.2001-04.com.example:disk1\""
        );
        let back: IscsiName = serde_json::from_str("\"IQN.2001-04.com.Example:Disk1\"").unwrap();
        assert_eq!(back, n);
        let e = serde_json::from_str::<IscsiName>("\"iqn.2001-13.com.example\"").unwrap_err();
        assert!(e.to_string().contains("month 13"), "{e}");

        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Target {
            name: IscsiName,
            alias: IscsiName,
        }
        let t = Target {
            name: n,
            alias: name("eui.02004567A425678D"),
        };
        let text = toml::to_string(&t).unwrap();
        assert_eq!(
            text,
            "name = \"iqn.2001-04.com.example:disk1\"\nalias = \"eui.02004567a425678d\"\n"
        );
        assert_eq!(toml::from_str::<Target>(&text).unwrap(), t);
    }

    #[test]
    fn conversions() {
        let n = IscsiName::try_from("iqn.2001-04.com.example").unwrap();
        assert_eq!(
            IscsiName::try_from(String::from("iqn.2001-04.com.example")).unwrap(),
            n
        );
        assert_eq!("iqn.2001-04.com.example".parse::<IscsiName>().unwrap(), n);
        assert_eq!(n.as_ref(), "iqn.2001-04.com.example");
        assert_eq!(String::from(n.clone()), "iqn.2001-04.com.example");
        assert_eq!(format!("{n:?}"), "IscsiName(iqn.2001-04.com.example)");
    }
}
