//! Login and Text data segments: NUL-terminated `key=value` pairs (RFC 7143 §6.1).
//!
//! A request may be split over several PDUs with the C (continue) bit; the
//! caller appends each PDU's data to a [`TextBuffer`] and parses once the
//! final PDU of the sequence has arrived. Responses longer than the peer's
//! MaxRecvDataSegmentLength are cut with [`chunks`].

use bytes::{BufMut, Bytes, BytesMut};

/// Longest key name (RFC 7143 §6.1: "no longer than 63 bytes").
pub const MAX_KEY_LEN: usize = 63;
/// Longest value of most keys (RFC 7143 §6.1: 255 bytes).
pub const MAX_VALUE_LEN: usize = 255;
/// Longest binary value, in decoded bytes (CHAP_C and CHAP_R, RFC 7143 §12.1.3).
pub const MAX_BINARY_LEN: usize = 1024;
/// Longest encoded CHAP_C/CHAP_R string: `0x` and two hex digits per byte.
pub const MAX_LARGE_VALUE_LEN: usize = 2 + 2 * MAX_BINARY_LEN;
/// Default limit on the text data of one login or text sequence that
/// [`TextBuffer`] will hold (our choice; keeps a peer from growing it without end).
pub const DEFAULT_SEQUENCE_LIMIT: usize = 64 * 1024;

/// Why a text data segment was refused. All are initiator errors: a login
/// answers with status 02/00 (or 02/07), a text request with a Reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("`{0}` has no '='")]
    MissingEquals(String),
    #[error("empty key name")]
    EmptyKey,
    #[error("key `{0}…` is longer than 63 bytes")]
    KeyTooLong(String),
    #[error("key `{0}` has a character outside letters, digits and . - + @ _ #")]
    BadKeyChar(String),
    #[error("value of `{0}` is too long")]
    ValueTooLong(String),
    #[error("key `{0}` appears twice")]
    DuplicateKey(String),
    #[error("text data is not UTF-8")]
    NotUtf8,
    #[error("text data of a sequence exceeds {0} bytes")]
    TooLarge(usize),
}

/// Longest value allowed for `key`.
pub fn max_value_len(key: &str) -> usize {
    match key {
        "CHAP_C" | "CHAP_R" => MAX_LARGE_VALUE_LEN,
        _ => MAX_VALUE_LEN,
    }
}

fn valid_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'@' | b'_' | b'#')
}

/// An ordered list of `key=value` pairs with unique keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextPairs {
    pairs: Vec<(String, String)>,
}

impl TextPairs {
    pub fn new() -> TextPairs {
        TextPairs::default()
    }

    /// Parses a data segment (or several concatenated with the C bit).
    /// Empty entries (doubled NULs) are skipped; a missing final NUL is
    /// tolerated.
    pub fn parse(data: &[u8]) -> Result<TextPairs, TextError> {
        let mut out = TextPairs::new();
        for item in data.split(|&b| b == 0) {
            if item.is_empty() {
                continue;
            }
            let item = std::str::from_utf8(item).map_err(|_| TextError::NotUtf8)?;
            let Some((key, value)) = item.split_once('=') else {
                return Err(TextError::MissingEquals(truncate(item, MAX_KEY_LEN)));
            };
            if key.is_empty() {
                return Err(TextError::EmptyKey);
            }
            if key.len() > MAX_KEY_LEN {
                return Err(TextError::KeyTooLong(truncate(key, MAX_KEY_LEN)));
            }
            if !key.bytes().all(valid_key_char) {
                return Err(TextError::BadKeyChar(key.to_string()));
            }
            if value.len() > max_value_len(key) {
                return Err(TextError::ValueTooLong(key.to_string()));
            }
            if out.get(key).is_some() {
                return Err(TextError::DuplicateKey(key.to_string()));
            }
            out.pairs.push((key.to_string(), value.to_string()));
        }
        Ok(out)
    }

    /// Appends a pair. A key already present is replaced in place, so a
    /// response never names a key twice.
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let (key, value) = (key.into(), value.into());
        match self.pairs.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.pairs.push((key, value)),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.pairs.iter().position(|(k, _)| k == key)?;
        Some(self.pairs.remove(i).1)
    }

    /// Appends all pairs of `other`.
    pub fn extend(&mut self, other: TextPairs) {
        for (k, v) in other.pairs {
            self.push(k, v);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Length of the encoded form.
    pub fn encoded_len(&self) -> usize {
        self.pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum()
    }

    /// Appends `key=value\0` for every pair.
    pub fn encode_into(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        for (k, v) in &self.pairs {
            out.put_slice(k.as_bytes());
            out.put_u8(b'=');
            out.put_slice(v.as_bytes());
            out.put_u8(0);
        }
    }

    /// The encoded data segment.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode_into(&mut b);
        b.freeze()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for TextPairs {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        let mut p = TextPairs::new();
        for (k, v) in iter {
            p.push(k, v);
        }
        p
    }
}

impl IntoIterator for TextPairs {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;
    fn into_iter(self) -> Self::IntoIter {
        self.pairs.into_iter()
    }
}

impl<'a> IntoIterator for &'a TextPairs {
    type Item = &'a (String, String);
    type IntoIter = std::slice::Iter<'a, (String, String)>;
    fn into_iter(self) -> Self::IntoIter {
        self.pairs.iter()
    }
}

/// Parses a data segment; see [`TextPairs::parse`].
pub fn parse(data: &[u8]) -> Result<TextPairs, TextError> {
    TextPairs::parse(data)
}

/// Encodes pairs as `key=value\0` (from a `TextPairs` or a slice of pairs).
pub fn encode<'a>(pairs: impl IntoIterator<Item = &'a (String, String)>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Collects the data of a login/text sequence sent with the C bit.
#[derive(Debug, Clone)]
pub struct TextBuffer {
    buf: BytesMut,
    limit: usize,
}

impl Default for TextBuffer {
    fn default() -> Self {
        TextBuffer::new(DEFAULT_SEQUENCE_LIMIT)
    }
}

impl TextBuffer {
    pub fn new(limit: usize) -> TextBuffer {
        TextBuffer {
            buf: BytesMut::new(),
            limit,
        }
    }

    /// Appends one PDU's data. With `cont` set, returns `Ok(None)` (wait for
    /// more); otherwise parses everything collected and empties the buffer.
    pub fn push(&mut self, data: &[u8], cont: bool) -> Result<Option<TextPairs>, TextError> {
        if self.buf.len() + data.len() > self.limit {
            self.buf.clear();
            return Err(TextError::TooLarge(self.limit));
        }
        self.buf.extend_from_slice(data);
        if cont {
            return Ok(None);
        }
        let all = std::mem::take(&mut self.buf);
        TextPairs::parse(&all).map(Some)
    }

    /// True while a continued sequence is being collected.
    pub fn is_pending(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// Cuts an encoded text segment into pieces of at most `max` bytes, for
/// responses sent over several PDUs with the C bit on all but the last.
/// Always yields at least one (possibly empty) piece.
pub fn chunks(data: &Bytes, max: usize) -> Vec<Bytes> {
    let max = max.max(1);
    if data.is_empty() {
        return vec![Bytes::new()];
    }
    (0..data.len())
        .step_by(max)
        .map(|i| data.slice(i..(i + max).min(data.len())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_encode() {
        let raw =
            b"InitiatorName=iqn.1994-05.com.redhat:x\0SessionType=Normal\0AuthMethod=CHAP,None\0";
        let p = TextPairs::parse(raw).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p.get("SessionType"), Some("Normal"));
        assert_eq!(p.get("AuthMethod"), Some("CHAP,None"));
        assert_eq!(&p.to_bytes()[..], &raw[..]);
        assert_eq!(p.encoded_len(), raw.len());
    }

    #[test]
    fn tolerant_framing() {
        let p = TextPairs::parse(b"A=1\0\0B=2").unwrap();
        assert_eq!(p.get("A"), Some("1"));
        assert_eq!(p.get("B"), Some("2"));
        assert!(TextPairs::parse(b"").unwrap().is_empty());
        // Values may contain '=' and be empty.
        let p = TextPairs::parse(b"X-a=b=c\0TargetAlias=\0").unwrap();
        assert_eq!(p.get("X-a"), Some("b=c"));
        assert_eq!(p.get("TargetAlias"), Some(""));
    }

    #[test]
    fn limits() {
        assert_eq!(
            TextPairs::parse(b"NoEquals\0"),
            Err(TextError::MissingEquals("NoEquals".into()))
        );
        assert_eq!(TextPairs::parse(b"=v\0"), Err(TextError::EmptyKey));
        assert_eq!(
            TextPairs::parse(b"A=1\0A=2\0"),
            Err(TextError::DuplicateKey("A".into()))
        );
        let key63 = "K".repeat(63);
        assert!(TextPairs::parse(format!("{key63}=v\0").as_bytes()).is_ok());
        let key64 = "K".repeat(64);
        assert!(matches!(
            TextPairs::parse(format!("{key64}=v\0").as_bytes()),
            Err(TextError::KeyTooLong(_))
        ));
        let v255 = "v".repeat(255);
        assert!(TextPairs::parse(format!("K={v255}\0").as_bytes()).is_ok());
        let v256 = "v".repeat(256);
        assert_eq!(
            TextPairs::parse(format!("K={v256}\0").as_bytes()),
            Err(TextError::ValueTooLong("K".into()))
        );
        // CHAP_C/CHAP_R carry up to 1024 binary bytes.
        let c = format!("CHAP_C=0x{}\0", "ab".repeat(1024));
        assert!(TextPairs::parse(c.as_bytes()).is_ok());
        let c = format!("CHAP_R=0x{}\0", "ab".repeat(1025));
        assert!(matches!(
            TextPairs::parse(c.as_bytes()),
            Err(TextError::ValueTooLong(_))
        ));
        assert!(matches!(
            TextPairs::parse(b"Bad Key=1\0"),
            Err(TextError::BadKeyChar(_))
        ));
        assert_eq!(TextPairs::parse(b"K=\xff\0"), Err(TextError::NotUtf8));
    }

    #[test]
    fn continued_sequence() {
        let mut tb = TextBuffer::default();
        assert_eq!(tb.push(b"InitiatorNa", true), Ok(None));
        assert!(tb.is_pending());
        assert_eq!(tb.push(b"me=iqn.x\0Sess", true), Ok(None));
        let p = tb.push(b"ionType=Discovery\0", false).unwrap().unwrap();
        assert_eq!(p.get("InitiatorName"), Some("iqn.x"));
        assert_eq!(p.get("SessionType"), Some("Discovery"));
        assert!(!tb.is_pending());

        let mut small = TextBuffer::new(8);
        assert_eq!(
            small.push(b"A=123456789", true),
            Err(TextError::TooLarge(8))
        );
    }

    #[test]
    fn push_replaces() {
        let mut p = TextPairs::new();
        p.push("A", "1");
        p.push("B", "2");
        p.push("A", "3");
        assert_eq!(&p.to_bytes()[..], b"A=3\0B=2\0");
        assert_eq!(p.remove("A").as_deref(), Some("3"));
        let q: TextPairs = [("X", "y")].into_iter().collect();
        assert_eq!(q.get("X"), Some("y"));
        assert_eq!(encode(&q), b"X=y\0");
        let v: Vec<(String, String)> = q.clone().into_iter().collect();
        assert_eq!(encode(&v), b"X=y\0");
        assert_eq!(parse(b"X=y\0").unwrap(), q);
    }

    #[test]
    fn chunking() {
        let data = Bytes::from_static(b"0123456789");
        let c = chunks(&data, 4);
        assert_eq!(c.len(), 3);
        assert_eq!(&c[2][..], b"89");
        assert_eq!(chunks(&Bytes::new(), 4), vec![Bytes::new()]);
    }
}

/// Parses a numerical value: decimal, or hexadecimal with a `0x`/`0X` prefix
/// (RFC 7143 §6.1 numerical-value). `None` when malformed or above u64.
pub fn parse_numeric(s: &str) -> Option<u64> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 16 {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()
    } else if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// Decodes a binary value: hexadecimal with a `0x`/`0X` prefix (an odd
/// number of digits gets a leading zero nibble) or base64 with a `0b`/`0B`
/// prefix (RFC 7143 §6.1 binary-value). `None` when malformed or empty.
pub fn decode_binary(s: &str) -> Option<Vec<u8>> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        decode_hex(hex)
    } else if let Some(b64) = s.strip_prefix("0b").or_else(|| s.strip_prefix("0B")) {
        decode_base64(b64)
    } else {
        None
    }
}

/// Encodes a binary value as `0x` and lowercase hex digits.
pub fn encode_binary(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() {
        return None;
    }
    if hex.len() % 2 == 1 {
        hex::decode(format!("0{hex}")).ok()
    } else {
        hex::decode(hex).ok()
    }
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let body = s.trim_end_matches('=');
    if body.is_empty() || s.len() - body.len() > 2 || body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for chunk in body.as_bytes().chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | val(c)?;
        }
        match chunk.len() {
            4 => out.extend_from_slice(&acc.to_be_bytes()[1..]),
            3 => out.extend_from_slice(&(acc << 6).to_be_bytes()[1..3]),
            2 => out.push((acc >> 4) as u8),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod value_tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_numeric("8192"), Some(8192));
        assert_eq!(parse_numeric("0x2000"), Some(8192));
        assert_eq!(parse_numeric("0X10"), Some(16));
        assert_eq!(parse_numeric(""), None);
        assert_eq!(parse_numeric("0x"), None);
        assert_eq!(parse_numeric("-1"), None);
        assert_eq!(parse_numeric("12a"), None);
        assert_eq!(parse_numeric("99999999999999999999999"), None);
    }

    #[test]
    fn binary() {
        assert_eq!(decode_binary("0x0102ff"), Some(vec![1, 2, 0xff]));
        assert_eq!(decode_binary("0X102"), Some(vec![1, 2]));
        assert_eq!(decode_binary("0baGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(decode_binary("0BaGVsbG8"), Some(b"hello".to_vec()));
        assert_eq!(decode_binary("0baGk="), Some(b"hi".to_vec()));
        assert_eq!(decode_binary("0bAAECAwQF"), Some(vec![0, 1, 2, 3, 4, 5]));
        assert_eq!(decode_binary("0b"), None);
        assert_eq!(decode_binary("0b!!!!"), None);
        assert_eq!(decode_binary("0bA"), None);
        assert_eq!(decode_binary("0xzz"), None);
        assert_eq!(decode_binary("1234"), None);
        assert_eq!(encode_binary(&[0xab, 0x01]), "0xab01");
    }
}
