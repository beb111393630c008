//! Fibre Channel World Wide Names and SCSI NAA identifiers.
//!
//! A [`Wwn`] is a Name_Identifier in the Network Address Authority (NAA)
//! formats of FC-FS-3 §19 (the same layouts as the SCSI NAA designator,
//! SPC-4 §7.8.6.6.5). The NAA type is the top nibble of the first byte:
//!
//! | NAA | name                          | bytes | layout (most significant first)                               |
//! | --- | ----------------------------- | ----- | ------------------------------------------------------------- |
//! | 1   | IEEE 48-bit                   | 8     | `1` · 12 reserved bits · 48-bit IEEE address (OUI + 24 bits)  |
//! | 2   | IEEE extended                 | 8     | `2` · 12 vendor-specific bits · 48-bit IEEE address           |
//! | 3   | locally assigned              | 8     | `3` · 60 locally assigned bits                                |
//! | 5   | IEEE registered               | 8     | `5` · 24-bit OUI · 36-bit vendor-specific identifier          |
//! | 6   | IEEE registered extended      | 16    | as NAA 5, then a 64-bit vendor-specific identifier extension  |
//!
//! Every other NAA value (0, 4, 7-15) is reserved or not a SCSI/FC port or
//! LU name and is rejected. The reserved bits of NAA 1 are not checked, so
//! odd but real hardware names still parse.
//!
//! # Text forms
//!
//! [`Wwn::from_str`](std::str::FromStr) accepts, for 16 or 32 hex digits in
//! either case: `50:06:0e:80:10:2a:3b:4c`, `50-06-0E-80-10-2A-3B-4C`,
//! `0x50060e80102a3b4c`, `50060e80102a3b4c` and `naa.50060e80102a3b4c`.
//! Separated forms need exactly two digits per byte and one kind of separator.
//!
//! The canonical form ([`Display`](fmt::Display)) is:
//! - 8-byte names (NAA 1, 2, 3, 5): lowercase, colon-separated bytes, the
//!   usual way FC port names appear in zoning: `50:06:0e:80:10:2a:3b:4c`;
//! - 16-byte names (NAA 6): `naa.` and 32 lowercase hex digits, the usual way
//!   LU names appear (VMware, LIO): `naa.60014050123456789abcdef012345678`.
//!
//! `s.parse::<Wwn>()` of the canonical form gives back the same value, and
//! serde writes the canonical form and reads any accepted form.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// The NAA type of a [`Wwn`] (FC-FS-3 §19.2, SPC-4 table 458).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Naa {
    /// NAA 1: IEEE 48-bit address with 12 reserved bits.
    IeeeStandard = 1,
    /// NAA 2: IEEE 48-bit address with a 12-bit vendor-specific field.
    IeeeExtended = 2,
    /// NAA 3: locally assigned; carries no company id.
    LocallyAssigned = 3,
    /// NAA 5: IEEE registered, 24-bit OUI and 36-bit vendor-specific id.
    IeeeRegistered = 5,
    /// NAA 6: IEEE registered extended, NAA 5 plus a 64-bit extension.
    IeeeRegisteredExtended = 6,
}

impl Naa {
    /// The NAA nibble value (1, 2, 3, 5 or 6).
    pub fn value(self) -> u8 {
        self as u8
    }

    /// The length in bytes of a name of this type: 16 for NAA 6, else 8.
    pub fn byte_len(self) -> usize {
        match self {
            Naa::IeeeRegisteredExtended => 16,
            _ => 8,
        }
    }

    /// The type for an NAA nibble, or `None` if it is reserved/unsupported.
    pub fn from_nibble(nibble: u8) -> Option<Naa> {
        match nibble {
            1 => Some(Naa::IeeeStandard),
            2 => Some(Naa::IeeeExtended),
            3 => Some(Naa::LocallyAssigned),
            5 => Some(Naa::IeeeRegistered),
            6 => Some(Naa::IeeeRegisteredExtended),
            _ => None,
        }
    }
}

impl fmt::Display for Naa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NAA {}", self.value())
    }
}

/// Why a WWN could not be parsed or built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WwnError {
    /// The input string was empty.
    #[error("empty WWN: expected 16 or 32 hex digits such as 50:06:0e:80:10:2a:3b:4c")]
    Empty,
    /// A character that is not a hex digit (or an allowed separator).
    #[error("WWN {input:?}: character {ch:?} at position {pos} is not a hex digit")]
    BadChar {
        /// The text that was parsed.
        input: String,
        /// The offending character.
        ch: char,
        /// Its byte offset in `input`.
        pos: usize,
    },
    /// Both ':' and '-' were used as separators.
    #[error("WWN {input:?} mixes ':' and '-' separators; use one kind")]
    MixedSeparators {
        /// The text that was parsed.
        input: String,
    },
    /// A separated group that is not exactly two hex digits.
    #[error("WWN {input:?}: byte {group:?} must be exactly two hex digits")]
    BadGroup {
        /// The text that was parsed.
        input: String,
        /// The offending group.
        group: String,
    },
    /// Neither 16 nor 32 hex digits.
    #[error("WWN {input:?} has {digits} hex digits; a WWN has 16 (NAA 1, 2, 3, 5) or 32 (NAA 6)")]
    BadLength {
        /// The text that was parsed.
        input: String,
        /// How many hex digits it held.
        digits: usize,
    },
    /// A byte string that is neither 8 nor 16 bytes long.
    #[error("WWN of {len} bytes; a WWN has 8 (NAA 1, 2, 3, 5) or 16 (NAA 6)")]
    BadByteLength {
        /// The length given.
        len: usize,
    },
    /// The NAA nibble is reserved or not a name type this crate supports.
    #[error(
        "WWN {hex}: NAA type {naa:x} (the first hex digit) is reserved or unsupported; \
         expected 1, 2, 3 or 5 (8 bytes) or 6 (16 bytes)"
    )]
    ReservedNaa {
        /// The name as plain hex.
        hex: String,
        /// The NAA nibble found.
        naa: u8,
    },
    /// The NAA type does not match the length.
    #[error("WWN {hex}: NAA {naa} names are {expected} bytes long, but this one has {len}")]
    NaaLengthMismatch {
        /// The name as plain hex.
        hex: String,
        /// The NAA nibble found.
        naa: u8,
        /// The length that NAA type requires.
        expected: usize,
        /// The length given.
        len: usize,
    },
    /// A constructor argument does not fit its field.
    #[error("WWN field {field} = {value:#x} does not fit in {bits} bits")]
    FieldTooWide {
        /// Which argument.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The width of the field.
        bits: u32,
    },
}

/// A validated NAA name of 8 or 16 bytes. See the [module docs](self).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Wwn {
    /// Big-endian name; bytes past `len` are zero.
    bytes: [u8; 16],
    /// 8 or 16.
    len: u8,
}

const VSID_BITS: u32 = 36;
const OUI_MAX: u32 = 0x00ff_ffff;

impl Wwn {
    /// Builds a WWN from its 8 or 16 bytes, checking the NAA type.
    pub fn from_bytes(bytes: &[u8]) -> Result<Wwn, WwnError> {
        if bytes.len() != 8 && bytes.len() != 16 {
            return Err(WwnError::BadByteLength { len: bytes.len() });
        }
        let nibble = bytes[0] >> 4;
        let naa = Naa::from_nibble(nibble).ok_or_else(|| WwnError::ReservedNaa {
            hex: hex_string(bytes),
            naa: nibble,
        })?;
        if naa.byte_len() != bytes.len() {
            return Err(WwnError::NaaLengthMismatch {
                hex: hex_string(bytes),
                naa: nibble,
                expected: naa.byte_len(),
                len: bytes.len(),
            });
        }
        let mut out = [0u8; 16];
        out[..bytes.len()].copy_from_slice(bytes);
        Ok(Wwn {
            bytes: out,
            len: bytes.len() as u8,
        })
    }

    /// Builds an 8-byte WWN from its big-endian integer value.
    pub fn from_u64(value: u64) -> Result<Wwn, WwnError> {
        Wwn::from_bytes(&value.to_be_bytes())
    }

    /// An NAA 5 (IEEE registered) name from a 24-bit OUI and a 36-bit
    /// vendor-specific identifier (SPC-4 §7.8.6.6.5).
    pub fn naa5_from(oui: u32, vsid: u64) -> Result<Wwn, WwnError> {
        Wwn::from_u64(naa5_word(5, oui, vsid)?)
    }

    /// An NAA 6 (IEEE registered extended) name from a 24-bit OUI, a 36-bit
    /// vendor-specific identifier and a 64-bit extension (SPC-4 §7.8.6.6.6).
    /// Used to derive per-LU names, e.g. the extension from a volume id.
    pub fn naa6_from(oui: u32, vendor_specific: u64, ext: u64) -> Result<Wwn, WwnError> {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&naa5_word(6, oui, vendor_specific)?.to_be_bytes());
        bytes[8..].copy_from_slice(&ext.to_be_bytes());
        Wwn::from_bytes(&bytes)
    }

    /// The NAA type.
    pub fn naa(&self) -> Naa {
        // The constructor checked the nibble, so this cannot fail.
        Naa::from_nibble(self.bytes[0] >> 4).unwrap_or(Naa::LocallyAssigned)
    }

    /// The name's bytes: 8, or 16 for NAA 6.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The first 8 bytes as a big-endian integer (the whole name unless NAA 6).
    pub fn high_u64(&self) -> u64 {
        u64::from_be_bytes(first8(&self.bytes))
    }

    /// The 8-byte name as an integer, or `None` for 16-byte NAA 6 names.
    pub fn as_u64(&self) -> Option<u64> {
        (self.len == 8).then(|| self.high_u64())
    }

    /// The 24-bit IEEE company id (OUI): for NAA 1 and 2 the top half of the
    /// 48-bit IEEE address, for NAA 5 and 6 the company id field; `None` for
    /// locally assigned (NAA 3) names.
    pub fn oui(&self) -> Option<u32> {
        let v = self.high_u64();
        match self.naa() {
            Naa::IeeeStandard | Naa::IeeeExtended => Some(((v >> 24) & 0xff_ffff) as u32),
            Naa::IeeeRegistered | Naa::IeeeRegisteredExtended => {
                Some(((v >> VSID_BITS) & 0xff_ffff) as u32)
            }
            Naa::LocallyAssigned => None,
        }
    }

    /// The vendor-assigned part of the name: for NAA 1 and 2 the low 24 bits
    /// of the IEEE address, for NAA 5 and 6 the 36-bit vendor-specific
    /// identifier, for NAA 3 the 60 locally assigned bits.
    pub fn vendor_specific(&self) -> u64 {
        let v = self.high_u64();
        match self.naa() {
            Naa::IeeeStandard | Naa::IeeeExtended => v & 0xff_ffff,
            Naa::IeeeRegistered | Naa::IeeeRegisteredExtended => v & ((1 << VSID_BITS) - 1),
            Naa::LocallyAssigned => v & ((1 << 60) - 1),
        }
    }

    /// The extra field some types carry: the 12-bit vendor-specific field of
    /// NAA 2 or the 64-bit vendor-specific identifier extension of NAA 6.
    pub fn extension(&self) -> Option<u64> {
        match self.naa() {
            Naa::IeeeExtended => Some((self.high_u64() >> 48) & 0xfff),
            Naa::IeeeRegisteredExtended => Some(u64::from_be_bytes(first8(&self.bytes[8..]))),
            _ => None,
        }
    }

    /// Plain lowercase hex, no prefix or separators: `50060e80102a3b4c`.
    pub fn to_hex(&self) -> String {
        hex_string(self.as_bytes())
    }

    /// Lowercase colon-separated bytes, for either length:
    /// `50:06:0e:80:10:2a:3b:4c`.
    pub fn to_colon(&self) -> String {
        let parts: Vec<String> = self.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        parts.join(":")
    }
}

/// `naa(4) | oui(24) | vsid(36)` with range checks.
fn naa5_word(naa: u64, oui: u32, vsid: u64) -> Result<u64, WwnError> {
    if oui > OUI_MAX {
        return Err(WwnError::FieldTooWide {
            field: "oui",
            value: u64::from(oui),
            bits: 24,
        });
    }
    if vsid >> VSID_BITS != 0 {
        return Err(WwnError::FieldTooWide {
            field: "vendor_specific",
            value: vsid,
            bits: VSID_BITS,
        });
    }
    Ok(naa << 60 | u64::from(oui) << VSID_BITS | vsid)
}

fn first8(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&bytes[..8]);
    out
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Strips `prefix` from `s`, ignoring ASCII case.
pub(crate) fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

impl FromStr for Wwn {
    type Err = WwnError;

    fn from_str(input: &str) -> Result<Wwn, WwnError> {
        if input.is_empty() {
            return Err(WwnError::Empty);
        }
        let bad_char = |pos: usize, ch: char| WwnError::BadChar {
            input: input.to_owned(),
            ch,
            pos,
        };
        // Collect the hex digits, checking the layout of the chosen form.
        let mut digits = String::with_capacity(32);
        let prefixed = strip_prefix_ci(input, "naa.").or_else(|| strip_prefix_ci(input, "0x"));
        if let Some(body) = prefixed {
            let offset = input.len() - body.len();
            for (i, ch) in body.char_indices() {
                if !ch.is_ascii_hexdigit() {
                    return Err(bad_char(offset + i, ch));
                }
                digits.push(ch);
            }
        } else {
            let has_colon = input.contains(':');
            let has_dash = input.contains('-');
            if has_colon && has_dash {
                return Err(WwnError::MixedSeparators {
                    input: input.to_owned(),
                });
            }
            let sep = if has_colon {
                Some(':')
            } else {
                has_dash.then_some('-')
            };
            let mut pos = 0;
            let groups: Vec<&str> = match sep {
                Some(sep) => input.split(sep).collect(),
                None => vec![input],
            };
            for group in groups {
                for (i, ch) in group.char_indices() {
                    if !ch.is_ascii_hexdigit() {
                        return Err(bad_char(pos + i, ch));
                    }
                }
                if sep.is_some() && group.len() != 2 {
                    return Err(WwnError::BadGroup {
                        input: input.to_owned(),
                        group: group.to_owned(),
                    });
                }
                digits.push_str(group);
                pos += group.len() + 1;
            }
        }
        if digits.len() != 16 && digits.len() != 32 {
            return Err(WwnError::BadLength {
                input: input.to_owned(),
                digits: digits.len(),
            });
        }
        let bytes: Vec<u8> = digits
            .as_bytes()
            .chunks(2)
            .map(|pair| (hex_val(pair[0]) << 4) | hex_val(pair[1]))
            .collect();
        Wwn::from_bytes(&bytes)
    }
}

/// Value of an ASCII hex digit already checked with `is_ascii_hexdigit`.
fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}

impl TryFrom<&str> for Wwn {
    type Error = WwnError;
    fn try_from(s: &str) -> Result<Wwn, WwnError> {
        s.parse()
    }
}

impl TryFrom<&[u8]> for Wwn {
    type Error = WwnError;
    fn try_from(bytes: &[u8]) -> Result<Wwn, WwnError> {
        Wwn::from_bytes(bytes)
    }
}

impl fmt::Display for Wwn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len == 16 {
            write!(f, "naa.{}", self.to_hex())
        } else {
            f.write_str(&self.to_colon())
        }
    }
}

impl fmt::Debug for Wwn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Wwn({self})")
    }
}

impl PartialOrd for Wwn {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Wwn {
    /// Orders by bytes (so a name sorts before its own extensions).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl Serialize for Wwn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Wwn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Wwn, D::Error> {
        struct WwnVisitor;
        impl de::Visitor<'_> for WwnVisitor {
            type Value = Wwn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a WWN string such as \"50:06:0e:80:10:2a:3b:4c\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Wwn, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(WwnVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HDS: &str = "50:06:0e:80:10:2a:3b:4c";
    const NAA6: &str = "naa.60014050123456789abcdef012345678";

    fn wwn(s: &str) -> Wwn {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        s.parse::<Wwn>().expect_err(s).to_string()
    }

    #[test]
    fn every_8_byte_form_parses_to_the_same_name() {
        let forms = [
            "50:06:0e:80:10:2a:3b:4c",
            "50:06:0E:80:10:2A:3B:4C",
            "50-06-0e-80-10-2a-3b-4c",
            "50-06-0E-80-10-2A-3B-4C",
            "0x50060e80102a3b4c",
            "0X50060E80102A3B4C",
            "50060e80102a3b4c",
            "50060E80102A3B4C",
            "naa.50060e80102a3b4c",
            "NAA.50060E80102A3B4C",
        ];
        for form in forms {
            let w = wwn(form);
            assert_eq!(
                w.as_bytes(),
                [0x50, 0x06, 0x0e, 0x80, 0x10, 0x2a, 0x3b, 0x4c],
                "{form}"
            );
            assert_eq!(w.to_string(), HDS, "{form}");
        }
    }

    #[test]
    fn every_16_byte_form_parses_to_the_same_name() {
        let hex = "60014050123456789abcdef012345678";
        let colon = "60:01:40:50:12:34:56:78:9a:bc:de:f0:12:34:56:78";
        let forms = [
            NAA6.to_owned(),
            NAA6.to_uppercase(),
            format!("0x{hex}"),
            hex.to_owned(),
            hex.to_uppercase(),
            colon.to_owned(),
            colon.replace(':', "-"),
        ];
        for form in &forms {
            let w = wwn(form);
            assert_eq!(w.naa(), Naa::IeeeRegisteredExtended, "{form}");
            assert_eq!(w.as_bytes().len(), 16);
            assert_eq!(w.to_string(), NAA6, "{form}");
            assert_eq!(w.to_hex(), hex);
            assert_eq!(w.to_colon(), colon);
        }
    }

    #[test]
    fn display_round_trips_for_every_naa_type() {
        for s in [
            "10:00:00:00:c9:12:34:56",
            "20:00:00:25:b5:00:00:0f",
            "3f:ff:ff:ff:ff:ff:ff:ff",
            HDS,
            NAA6,
        ] {
            let w = wwn(s);
            assert_eq!(w.to_string(), s);
            assert_eq!(wwn(&w.to_string()), w);
            assert_eq!(wwn(&w.to_colon()), w);
            assert_eq!(wwn(&w.to_hex()), w);
        }
    }

    #[test]
    fn naa1_fields() {
        // Emulex WWPN: NAA 1, OUI 00:00:c9.
        let w = wwn("10:00:00:00:c9:12:34:56");
        assert_eq!(w.naa(), Naa::IeeeStandard);
        assert_eq!(w.oui(), Some(0x0000c9));
        assert_eq!(w.vendor_specific(), 0x123456);
        assert_eq!(w.extension(), None);
        assert_eq!(w.as_u64(), Some(0x1000_0000_c912_3456));
    }

    #[test]
    fn naa2_fields() {
        // Cisco UCS style: NAA 2, vendor-specific 0x000, OUI 00:25:b5.
        let w = wwn("2a:bc:00:25:b5:00:00:0f");
        assert_eq!(w.naa(), Naa::IeeeExtended);
        assert_eq!(w.oui(), Some(0x0025b5));
        assert_eq!(w.vendor_specific(), 0x00000f);
        assert_eq!(w.extension(), Some(0xabc));
    }

    #[test]
    fn naa3_has_no_oui() {
        let w = wwn("3123456789abcdef");
        assert_eq!(w.naa(), Naa::LocallyAssigned);
        assert_eq!(w.oui(), None);
        assert_eq!(w.vendor_specific(), 0x123456789abcdef);
        assert_eq!(w.extension(), None);
    }

    #[test]
    fn naa5_fields_and_constructor() {
        // Hitachi: OUI 00:60:e8 → 5 0060e8 ...
        let w = wwn("50:06:0e:80:10:2a:3b:4c");
        assert_eq!(w.naa(), Naa::IeeeRegistered);
        assert_eq!(w.oui(), Some(0x0060e8));
        assert_eq!(w.vendor_specific(), 0x0_102a_3b4c);
        assert_eq!(w.extension(), None);
        assert_eq!(Wwn::naa5_from(0x0060e8, 0x0_102a_3b4c).unwrap(), w);
        assert_eq!(w.naa().value(), 5);
        assert_eq!(w.naa().to_string(), "NAA 5");
    }

    #[test]
    fn naa6_fields_and_constructor() {
        // LIO: OUI 00:14:05.
        let w = wwn(NAA6);
        assert_eq!(w.oui(), Some(0x001405));
        assert_eq!(w.vendor_specific(), 0x0_1234_5678);
        assert_eq!(w.extension(), Some(0x9abc_def0_1234_5678));
        assert_eq!(w.as_u64(), None);
        assert_eq!(w.high_u64(), 0x6001_4050_1234_5678);
        let built = Wwn::naa6_from(0x001405, 0x0_1234_5678, 0x9abc_def0_1234_5678).unwrap();
        assert_eq!(built, w);
        // Per-LU derivation: same OUI and vsid, different extension.
        let lu1 = Wwn::naa6_from(0x001405, 7, 1).unwrap();
        let lu2 = Wwn::naa6_from(0x001405, 7, 2).unwrap();
        assert_ne!(lu1, lu2);
        assert_eq!(lu1.to_string(), "naa.60014050000000070000000000000001");
        assert!(lu1 < lu2);
    }

    #[test]
    fn constructor_range_checks() {
        assert_eq!(
            Wwn::naa5_from(0x0100_0000, 0).unwrap_err().to_string(),
            "WWN field oui = 0x1000000 does not fit in 24 bits"
        );
        assert_eq!(
            Wwn::naa6_from(1, 1 << 36, 0).unwrap_err().to_string(),
            "WWN field vendor_specific = 0x1000000000 does not fit in 36 bits"
        );
        assert!(Wwn::naa5_from(OUI_MAX, (1 << 36) - 1).is_ok());
    }

    #[test]
    fn from_bytes_checks_length_and_naa() {
        assert_eq!(
            Wwn::from_bytes(&[0x50; 7]).unwrap_err(),
            WwnError::BadByteLength { len: 7 }
        );
        assert_eq!(
            Wwn::from_bytes(&[0x50, 0, 0, 0, 0, 0, 0, 1])
                .unwrap()
                .to_string(),
            "50:00:00:00:00:00:00:01"
        );
        assert!(Wwn::try_from(&[0x60u8; 16][..]).is_ok());
        assert!(Wwn::from_u64(0).is_err());
    }

    #[test]
    fn bad_inputs_say_what_is_wrong() {
        assert_eq!(
            err(""),
            "empty WWN: expected 16 or 32 hex digits such as 50:06:0e:80:10:2a:3b:4c"
        );
        assert_eq!(
            err("50:06:0e:80:10:2a:3b:4g"),
            "WWN \"50:06:0e:80:10:2a:3b:4g\": character 'g' at position 22 is not a hex digit"
        );
        assert_eq!(
            err("0x50060e80102a3b4z"),
            "WWN \"0x50060e80102a3b4z\": character 'z' at position 17 is not a hex digit"
        );
        assert_eq!(
            err("naa.5006:0e80102a3b4c"),
            "WWN \"naa.5006:0e80102a3b4c\": character ':' at position 8 is not a hex digit"
        );
        assert_eq!(
            err("50:06-0e:80:10:2a:3b:4c"),
            "WWN \"50:06-0e:80:10:2a:3b:4c\" mixes ':' and '-' separators; use one kind"
        );
        assert_eq!(
            err("50:6:0e:80:10:2a:3b:4c"),
            "WWN \"50:6:0e:80:10:2a:3b:4c\": byte \"6\" must be exactly two hex digits"
        );
        assert_eq!(
            err("50:06:0e:80:10:2a:3b:4c:"),
            "WWN \"50:06:0e:80:10:2a:3b:4c:\": byte \"\" must be exactly two hex digits"
        );
        assert_eq!(
            err("50060e80102a3b"),
            "WWN \"50060e80102a3b\" has 14 hex digits; a WWN has 16 (NAA 1, 2, 3, 5) or 32 (NAA 6)"
        );
        assert_eq!(
            err(" 50060e80102a3b4c"),
            "WWN \" 50060e80102a3b4c\": character ' ' at position 0 is not a hex digit"
        );
        assert_eq!(
            err("é0060e80102a3b4c"),
            "WWN \"é0060e80102a3b4c\": character 'é' at position 0 is not a hex digit"
        );
    }

    #[test]
    fn reserved_naa_and_length_mismatch_are_rejected() {
        for nibble in ['0', '4', '7', '8', '9', 'a', 'b', 'c', 'd', 'e', 'f'] {
            let s = format!("{nibble}0060e80102a3b4c");
            assert!(
                matches!(s.parse::<Wwn>(), Err(WwnError::ReservedNaa { .. })),
                "{s}"
            );
        }
        assert_eq!(
            err("c0:06:0e:80:10:2a:3b:4c"),
            "WWN c0060e80102a3b4c: NAA type c (the first hex digit) is reserved or unsupported; \
             expected 1, 2, 3 or 5 (8 bytes) or 6 (16 bytes)"
        );
        assert_eq!(
            err("60060e80102a3b4c"),
            "WWN 60060e80102a3b4c: NAA 6 names are 16 bytes long, but this one has 8"
        );
        assert_eq!(
            err("naa.50060e80102a3b4c50060e80102a3b4c"),
            "WWN 50060e80102a3b4c50060e80102a3b4c: NAA 5 names are 8 bytes long, but this one has 16"
        );
    }

    #[test]
    fn serde_json_round_trip_and_any_form_in() {
        let w = wwn(HDS);
        assert_eq!(serde_json::to_string(&w).unwrap(), format!("\"{HDS}\""));
        let back: Wwn = serde_json::from_str("\"0x50060E80102A3B4C\"").unwrap();
        assert_eq!(back, w);
        let w6 = wwn(NAA6);
        let json = serde_json::to_string(&w6).unwrap();
        assert_eq!(json, format!("\"{NAA6}\""));
        assert_eq!(serde_json::from_str::<Wwn>(&json).unwrap(), w6);
        let e = serde_json::from_str::<Wwn>("\"40060e80102a3b4c\"").unwrap_err();
        assert!(e.to_string().contains("NAA type 4"), "{e}");
        let e = serde_json::from_str::<Wwn>("17").unwrap_err();
        assert!(e.to_string().contains("a WWN string"), "{e}");
    }

    #[test]
    fn serde_toml_round_trip() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Lu {
            wwn: Wwn,
            port: Wwn,
        }
        let lu = Lu {
            wwn: wwn(NAA6),
            port: wwn(HDS),
        };
        let text = toml::to_string(&lu).unwrap();
        assert_eq!(text, format!("wwn = \"{NAA6}\"\nport = \"{HDS}\"\n"));
        assert_eq!(toml::from_str::<Lu>(&text).unwrap(), lu);
        let loose: Lu = toml::from_str(
            "wwn = \"60014050123456789ABCDEF012345678\"\nport = \"50-06-0e-80-10-2a-3b-4c\"",
        )
        .unwrap();
        assert_eq!(loose, lu);
    }

    #[test]
    fn ordering_and_hashing_follow_bytes() {
        use std::collections::BTreeSet;
        let set: BTreeSet<Wwn> = [wwn(NAA6), wwn(HDS), wwn("10:00:00:00:c9:12:34:56")]
            .into_iter()
            .collect();
        let order: Vec<String> = set.iter().map(Wwn::to_string).collect();
        assert_eq!(order, ["10:00:00:00:c9:12:34:56", HDS, NAA6]);
        assert_eq!(format!("{:?}", wwn(HDS)), format!("Wwn({HDS})"));
    }
}
