//! CHAP authentication with MD5 (RFC 1994; RFC 7143 §12.1.3) and the
//! `AuthMethod` key.
//!
//! Exchange, target side (the initiator offers `AuthMethod=CHAP,None`):
//!
//! 1. initiator: `CHAP_A=5` → target: [`ChapServer::start`] answers
//!    `CHAP_A=5`, `CHAP_I=<id>`, `CHAP_C=0x<challenge>`;
//! 2. initiator: `CHAP_N`, `CHAP_R` (and for mutual CHAP its own `CHAP_I`,
//!    `CHAP_C`) → [`ChapServer::finish`] checks the response and, for
//!    mutual CHAP, answers `CHAP_N`, `CHAP_R`.
//!
//! `R = MD5(id || secret || challenge)`; binary values travel as `0x` hex or
//! `0b` base64 (RFC 7143 §6.1).

use md5::{Digest, Md5};
use rand::RngCore;

use crate::text::{encode_binary, parse_numeric, TextPairs, MAX_BINARY_LEN};

/// CHAP_A value for MD5 (RFC 1994 / IANA PPP authentication algorithms).
pub const CHAP_MD5: u8 = 5;
/// Length of the challenges we send.
pub const CHALLENGE_LEN: usize = 16;
/// Shortest challenge we accept from an initiator for mutual CHAP. Shorter
/// challenges make precomputed response tables practical.
pub const MIN_PEER_CHALLENGE_LEN: usize = 16;
/// Longest challenge we accept (RFC 7143 §12.1.3 caps CHAP_C at 1024 bytes).
pub const MAX_PEER_CHALLENGE_LEN: usize = 1024;
/// Shortest secret RFC 7143 §12.1.3 allows without IPsec (96 bits).
pub const MIN_SECRET_LEN: usize = 12;
/// Length of an MD5 response.
pub const RESPONSE_LEN: usize = 16;

/// Authentication failures. All end the login with status 02/01
/// (authentication failure), except [`ChapError::Protocol`] (02/00).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChapError {
    #[error("no acceptable CHAP algorithm offered (only MD5, CHAP_A=5, is supported)")]
    NoAlgorithm,
    #[error("missing key {0}")]
    MissingKey(&'static str),
    #[error("malformed value for {0}")]
    BadValue(&'static str),
    #[error("challenge of {0} bytes is outside 16..=1024")]
    ChallengeLength(usize),
    #[error("the initiator reflected our own challenge back (RFC 7143 §12.1.3)")]
    Reflection,
    #[error("unknown CHAP user `{0}`")]
    UnknownUser(String),
    #[error("CHAP response does not match the secret")]
    WrongResponse,
    #[error("the initiator asked for mutual CHAP but no target secret is configured")]
    MutualNotConfigured,
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

/// Authentication methods (RFC 7143 §13.13 AuthMethod values we know).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    None,
    Chap,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::None => "None",
            AuthMethod::Chap => "CHAP",
        }
    }
}

/// Picks the first method in the initiator's `AuthMethod` list that we
/// allow (RFC 7143 §6.2.1 list negotiation). `None` means answer
/// `AuthMethod=Reject` and fail the login with 02/01.
pub fn negotiate_auth_method(offer: &str, allowed: &[AuthMethod]) -> Option<AuthMethod> {
    offer
        .split(',')
        .filter_map(|v| match v {
            "None" => Some(AuthMethod::None),
            "CHAP" => Some(AuthMethod::Chap),
            _ => None,
        })
        .find(|m| allowed.contains(m))
}

/// True when the initiator's `CHAP_A` list offers MD5.
pub fn offers_md5(chap_a: &str) -> bool {
    chap_a
        .split(',')
        .any(|v| parse_numeric(v) == Some(u64::from(CHAP_MD5)))
}

/// `MD5(id || secret || challenge)` (RFC 1994 §4.1).
pub fn chap_md5(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; RESPONSE_LEN] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Initiator side: the `CHAP_R` value answering `CHAP_I`/`CHAP_C` with `secret`.
pub fn initiator_response(chap_i: &str, chap_c: &str, secret: &[u8]) -> Result<String, ChapError> {
    let id = parse_id(chap_i)?;
    let challenge = parse_challenge(chap_c)?;
    Ok(encode_binary(&chap_md5(id, secret, &challenge)))
}

/// A fresh random `(identifier, challenge)` of [`CHALLENGE_LEN`] bytes.
pub fn new_challenge() -> (u8, Vec<u8>) {
    let c = ChapChallenge::generate();
    (c.id, c.challenge)
}

/// `0x` hex form of a binary value.
pub fn encode_hex(bytes: &[u8]) -> String {
    encode_binary(bytes)
}

/// Decodes a `0x` hex or `0b` base64 binary value.
pub fn decode_binary(s: &str) -> Result<Vec<u8>, ChapError> {
    crate::text::decode_binary(s).ok_or(ChapError::BadValue("binary value"))
}

/// The response to `(id, challenge)` with `secret`: same as [`chap_md5`].
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; RESPONSE_LEN] {
    chap_md5(id, secret, challenge)
}

/// True when `resp` (decoded) answers `(id, challenge)` with `secret`;
/// compares in constant time.
pub fn verify(id: u8, secret: &[u8], challenge: &[u8], resp: &[u8]) -> bool {
    constant_time_eq(resp, &chap_md5(id, secret, challenge))
}

fn parse_id(chap_i: &str) -> Result<u8, ChapError> {
    parse_numeric(chap_i)
        .and_then(|v| u8::try_from(v).ok())
        .ok_or(ChapError::BadValue("CHAP_I"))
}

fn parse_challenge(chap_c: &str) -> Result<Vec<u8>, ChapError> {
    let c = crate::text::decode_binary(chap_c).ok_or(ChapError::BadValue("CHAP_C"))?;
    if c.len() > MAX_BINARY_LEN {
        return Err(ChapError::ChallengeLength(c.len()));
    }
    Ok(c)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A challenge we issued: identifier and random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapChallenge {
    pub id: u8,
    pub challenge: Vec<u8>,
}

impl std::fmt::Debug for ChapChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapChallenge")
            .field("id", &self.id)
            .field("len", &self.challenge.len())
            .finish()
    }
}

impl ChapChallenge {
    /// A fresh random identifier and [`CHALLENGE_LEN`]-byte challenge.
    pub fn generate() -> ChapChallenge {
        ChapChallenge::generate_with(&mut rand::thread_rng(), CHALLENGE_LEN)
    }

    /// A random challenge of `len` bytes from `rng`.
    pub fn generate_with<R: RngCore>(rng: &mut R, len: usize) -> ChapChallenge {
        let mut challenge = vec![0u8; len];
        rng.fill_bytes(&mut challenge);
        let mut id = [0u8; 1];
        rng.fill_bytes(&mut id);
        ChapChallenge {
            id: id[0],
            challenge,
        }
    }

    /// `CHAP_I` and `CHAP_C` keys for this challenge.
    pub fn to_pairs(&self) -> TextPairs {
        let mut p = TextPairs::new();
        p.push("CHAP_I", self.id.to_string());
        p.push("CHAP_C", encode_binary(&self.challenge));
        p
    }

    /// Checks a peer's `CHAP_R` against `secret` (constant time).
    pub fn verify(&self, secret: &[u8], chap_r: &str) -> Result<(), ChapError> {
        let r = crate::text::decode_binary(chap_r).ok_or(ChapError::BadValue("CHAP_R"))?;
        let expect = chap_md5(self.id, secret, &self.challenge);
        if constant_time_eq(&r, &expect) {
            Ok(())
        } else {
            Err(ChapError::WrongResponse)
        }
    }
}

/// Secrets for one CHAP user, looked up by the initiator's `CHAP_N`.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapSecrets {
    /// The secret the initiator proves it knows.
    pub initiator_secret: Vec<u8>,
    /// For mutual CHAP: our name (`CHAP_N` we send) and secret.
    pub target: Option<(String, Vec<u8>)>,
}

impl std::fmt::Debug for ChapSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapSecrets")
            .field("mutual", &self.target.as_ref().map(|(n, _)| n))
            .finish_non_exhaustive()
    }
}

/// Outcome of a successful CHAP exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapOutcome {
    /// The authenticated `CHAP_N`.
    pub user: String,
    /// Keys to send back: `CHAP_N`/`CHAP_R` for mutual CHAP, else empty.
    pub response: TextPairs,
}

/// Target side of one CHAP exchange.
#[derive(Debug, Clone)]
pub struct ChapServer {
    challenge: ChapChallenge,
}

impl ChapServer {
    /// Handles the initiator's `CHAP_A` list: picks MD5 and issues a
    /// challenge. Returns the keys to send (`CHAP_A`, `CHAP_I`, `CHAP_C`).
    pub fn start(chap_a: &str) -> Result<(ChapServer, TextPairs), ChapError> {
        ChapServer::start_with(chap_a, ChapChallenge::generate())
    }

    /// As [`ChapServer::start`] with a given challenge (for tests).
    pub fn start_with(
        chap_a: &str,
        challenge: ChapChallenge,
    ) -> Result<(ChapServer, TextPairs), ChapError> {
        if !offers_md5(chap_a) {
            return Err(ChapError::NoAlgorithm);
        }
        let mut keys = TextPairs::new();
        keys.push("CHAP_A", CHAP_MD5.to_string());
        keys.extend(challenge.to_pairs());
        Ok((ChapServer { challenge }, keys))
    }

    /// The challenge we issued.
    pub fn challenge(&self) -> &ChapChallenge {
        &self.challenge
    }

    /// Checks the initiator's `CHAP_N`/`CHAP_R`, and answers its
    /// `CHAP_I`/`CHAP_C` when it asks for mutual CHAP. `lookup` maps a
    /// `CHAP_N` to that user's secrets.
    pub fn finish(
        &self,
        keys: &TextPairs,
        lookup: impl FnOnce(&str) -> Option<ChapSecrets>,
    ) -> Result<ChapOutcome, ChapError> {
        let name = keys.get("CHAP_N").ok_or(ChapError::MissingKey("CHAP_N"))?;
        let chap_r = keys.get("CHAP_R").ok_or(ChapError::MissingKey("CHAP_R"))?;
        let mutual = match (keys.get("CHAP_I"), keys.get("CHAP_C")) {
            (Some(i), Some(c)) => Some((parse_id(i)?, parse_challenge(c)?)),
            (None, None) => None,
            _ => return Err(ChapError::Protocol("CHAP_I without CHAP_C or the reverse")),
        };
        let secrets = lookup(name).ok_or_else(|| ChapError::UnknownUser(name.to_string()))?;
        self.challenge.verify(&secrets.initiator_secret, chap_r)?;
        let mut response = TextPairs::new();
        if let Some((id, challenge)) = mutual {
            if !(MIN_PEER_CHALLENGE_LEN..=MAX_PEER_CHALLENGE_LEN).contains(&challenge.len()) {
                return Err(ChapError::ChallengeLength(challenge.len()));
            }
            // RFC 7143 §12.1.3: refuse a challenge equal to the one we sent.
            if challenge == self.challenge.challenge {
                return Err(ChapError::Reflection);
            }
            let (target_name, target_secret) =
                secrets.target.ok_or(ChapError::MutualNotConfigured)?;
            response.push("CHAP_N", target_name);
            response.push(
                "CHAP_R",
                encode_binary(&chap_md5(id, &target_secret, &challenge)),
            );
        }
        Ok(ChapOutcome {
            user: name.to_string(),
            response,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn fixed() -> ChapChallenge {
        ChapChallenge {
            id: 1,
            challenge: (0u8..16).collect(),
        }
    }

    #[test]
    fn md5_known_vector() {
        // Computed independently: md5(b"\x01" + b"secretsecret" + bytes(range(16))).
        let r = chap_md5(1, b"secretsecret", &(0u8..16).collect::<Vec<_>>());
        assert_eq!(hex::encode(r), "226dc576c33f04ff9c3a200ffe35f442");
        // RFC 1321 test suite: MD5("") through the same function.
        assert_eq!(
            hex::encode(Md5::digest(b"")),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
    }

    #[test]
    fn auth_method_list() {
        let both = [AuthMethod::Chap, AuthMethod::None];
        assert_eq!(
            negotiate_auth_method("CHAP,None", &both),
            Some(AuthMethod::Chap)
        );
        assert_eq!(
            negotiate_auth_method("None,CHAP", &both),
            Some(AuthMethod::None)
        );
        assert_eq!(
            negotiate_auth_method("KRB5,SRP,CHAP", &[AuthMethod::Chap]),
            Some(AuthMethod::Chap)
        );
        assert_eq!(negotiate_auth_method("None", &[AuthMethod::Chap]), None);
        assert_eq!(negotiate_auth_method("", &both), None);
    }

    #[test]
    fn chap_a() {
        assert!(offers_md5("5"));
        assert!(offers_md5("7,6,5"));
        assert!(!offers_md5("6,7"));
        let err = ChapServer::start("6").unwrap_err();
        assert_eq!(err, ChapError::NoAlgorithm);
    }

    #[test]
    fn one_way_exchange() {
        let (srv, keys) = ChapServer::start_with("5", fixed()).unwrap();
        assert_eq!(keys.get("CHAP_A"), Some("5"));
        assert_eq!(keys.get("CHAP_I"), Some("1"));
        assert_eq!(
            keys.get("CHAP_C"),
            Some("0x000102030405060708090a0b0c0d0e0f")
        );
        let r = initiator_response(
            keys.get("CHAP_I").unwrap(),
            keys.get("CHAP_C").unwrap(),
            b"secretsecret",
        )
        .unwrap();
        assert_eq!(r, "0x226dc576c33f04ff9c3a200ffe35f442");
        let reply: TextPairs = [("CHAP_N", "alice"), ("CHAP_R", r.as_str())]
            .into_iter()
            .collect();
        let secrets = |n: &str| {
            (n == "alice").then(|| ChapSecrets {
                initiator_secret: b"secretsecret".to_vec(),
                target: None,
            })
        };
        let out = srv.finish(&reply, secrets).unwrap();
        assert_eq!(out.user, "alice");
        assert!(out.response.is_empty());

        // Wrong secret, unknown user, missing keys.
        let bad = initiator_response("1", "0x000102030405060708090a0b0c0d0e0f", b"wrong").unwrap();
        let reply: TextPairs = [("CHAP_N", "alice"), ("CHAP_R", bad.as_str())]
            .into_iter()
            .collect();
        assert_eq!(srv.finish(&reply, secrets), Err(ChapError::WrongResponse));
        let reply: TextPairs = [("CHAP_N", "bob"), ("CHAP_R", r.as_str())]
            .into_iter()
            .collect();
        assert_eq!(
            srv.finish(&reply, secrets),
            Err(ChapError::UnknownUser("bob".into()))
        );
        let reply: TextPairs = [("CHAP_N", "alice")].into_iter().collect();
        assert_eq!(
            srv.finish(&reply, secrets),
            Err(ChapError::MissingKey("CHAP_R"))
        );
    }

    #[test]
    fn base64_response_accepted() {
        let c = fixed();
        let r = chap_md5(c.id, b"secretsecret", &c.challenge);
        // 0b form of the same 16 bytes.
        let b64 = "0bIm3FdsM/BP+cOiAP/jX0Qg==";
        assert_eq!(decode_binary(b64).unwrap(), r.to_vec());
        assert!(verify(c.id, b"secretsecret", &c.challenge, &r));
        assert!(!verify(c.id, b"secretsecreT", &c.challenge, &r));
        assert_eq!(response(c.id, b"secretsecret", &c.challenge), r);
        assert_eq!(new_challenge().1.len(), CHALLENGE_LEN);
        assert_eq!(encode_hex(&[1, 2]), "0x0102");
        assert!(decode_binary("nope").is_err());
        assert_eq!(c.verify(b"secretsecret", b64), Ok(()));
        assert_eq!(
            c.verify(b"secretsecret", "garbage"),
            Err(ChapError::BadValue("CHAP_R"))
        );
    }

    #[test]
    fn mutual_chap() {
        let (srv, _) = ChapServer::start_with("5", fixed()).unwrap();
        let r = encode_binary(&chap_md5(1, b"secretsecret", &fixed().challenge));
        let their_c = encode_binary(&[0xaa; 16]);
        let reply: TextPairs = [
            ("CHAP_N", "alice"),
            ("CHAP_R", r.as_str()),
            ("CHAP_I", "42"),
            ("CHAP_C", their_c.as_str()),
        ]
        .into_iter()
        .collect();
        let secrets = |_: &str| {
            Some(ChapSecrets {
                initiator_secret: b"secretsecret".to_vec(),
                target: Some((
                    "iqn.2024-01.switchyard:t".into(),
                    b"target-secret-1".to_vec(),
                )),
            })
        };
        let out = srv.finish(&reply, secrets).unwrap();
        assert_eq!(out.response.get("CHAP_N"), Some("iqn.2024-01.switchyard:t"));
        // md5(b"\x2a" + b"target-secret-1" + b"\xaa" * 16), computed independently.
        assert_eq!(
            out.response.get("CHAP_R"),
            Some("0xe87a8f4d807fc56ae199d792af487cd8")
        );
        // The initiator verifies with its own challenge.
        let mine = ChapChallenge {
            id: 42,
            challenge: vec![0xaa; 16],
        };
        assert_eq!(
            mine.verify(b"target-secret-1", out.response.get("CHAP_R").unwrap()),
            Ok(())
        );

        // No target secret configured.
        let one_way = |_: &str| {
            Some(ChapSecrets {
                initiator_secret: b"secretsecret".to_vec(),
                target: None,
            })
        };
        assert_eq!(
            srv.finish(&reply, one_way),
            Err(ChapError::MutualNotConfigured)
        );
    }

    #[test]
    fn mutual_refusals() {
        let (srv, keys) = ChapServer::start_with("5", fixed()).unwrap();
        let r = encode_binary(&chap_md5(1, b"secretsecret", &fixed().challenge));
        let secrets = |_: &str| {
            Some(ChapSecrets {
                initiator_secret: b"secretsecret".to_vec(),
                target: Some(("t".into(), b"target-secret-1".to_vec())),
            })
        };
        let with_c = |c: &str| -> TextPairs {
            [
                ("CHAP_N", "alice"),
                ("CHAP_R", r.as_str()),
                ("CHAP_I", "7"),
                ("CHAP_C", c),
            ]
            .into_iter()
            .collect()
        };
        // Reflection of our own challenge.
        let ours = keys.get("CHAP_C").unwrap();
        assert_eq!(
            srv.finish(&with_c(ours), secrets),
            Err(ChapError::Reflection)
        );
        // Too short and too long.
        assert_eq!(
            srv.finish(&with_c("0x0102"), secrets),
            Err(ChapError::ChallengeLength(2))
        );
        let long = encode_binary(&[1u8; 1025]);
        assert_eq!(
            srv.finish(&with_c(&long), secrets),
            Err(ChapError::ChallengeLength(1025))
        );
        // Bad identifier.
        let mut bad_i = with_c(&encode_binary(&[3u8; 16]));
        bad_i.push("CHAP_I", "256");
        assert_eq!(
            srv.finish(&bad_i, secrets),
            Err(ChapError::BadValue("CHAP_I"))
        );
        // CHAP_I without CHAP_C.
        let mut half = with_c("0x00");
        half.remove("CHAP_C");
        assert!(matches!(
            srv.finish(&half, secrets),
            Err(ChapError::Protocol(_))
        ));
    }

    #[test]
    fn generated_challenges() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let a = ChapChallenge::generate_with(&mut rng, 16);
        let b = ChapChallenge::generate_with(&mut rng, 16);
        assert_eq!(a.challenge.len(), 16);
        assert_ne!(a.challenge, b.challenge);
        assert_eq!(ChapChallenge::generate().challenge.len(), CHALLENGE_LEN);
        assert!(
            !format!("{a:?}").contains("challenge: ["),
            "no secrets in Debug"
        );
    }
}
