//! Authentication of management-network requests with the shared cluster secret.
//!
//! Every request carries four headers:
//!
//! ```text
//! x-switchyard-node:  <sender's node id>
//! x-switchyard-time:  <milliseconds since the Unix epoch>
//! x-switchyard-nonce: <16 random bytes, hex>
//! x-switchyard-sig:   hex(HMAC-SHA256(key, "v1\n" path "\n" node "\n" time "\n" nonce "\n" body))
//! ```
//!
//! where `key` is SHA-256("switchyard-cluster-v1" || secret), so the secret itself never
//! travels and is never logged. The receiver refuses (401) a request whose signature
//! does not verify, whose time is more than [`MAX_SKEW`] away from its own clock, or
//! whose nonce it has already seen within that window (a replay). Responses are not
//! signed: they travel back on the connection of a signed request.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::NodeId;

pub const H_NODE: &str = "x-switchyard-node";
pub const H_TIME: &str = "x-switchyard-time";
pub const H_NONCE: &str = "x-switchyard-nonce";
pub const H_SIG: &str = "x-switchyard-sig";

/// How far a request's timestamp may be from the receiver's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(30);

type HmacSha256 = Hmac<Sha256>;

/// The signing headers of one request.
#[derive(Debug, Clone)]
pub struct Signed {
    pub node: NodeId,
    pub time_ms: u64,
    pub nonce: String,
    pub sig: String,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing or malformed authentication headers")]
    Malformed,
    #[error("bad signature (wrong cluster secret?)")]
    BadSignature,
    #[error("timestamp {skew_ms} ms away from this node's clock (limit {} s); check clocks", MAX_SKEW.as_secs())]
    Skew { skew_ms: i64 },
    #[error("replayed nonce")]
    Replay,
}

/// Signs and verifies with one cluster secret.
pub struct Authenticator {
    key: [u8; 32],
    seen: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator { key: <redacted> }")
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Authenticator {
    pub fn new(secret: &str) -> Authenticator {
        let mut h = Sha256::new();
        h.update(b"switchyard-cluster-v1");
        h.update(secret.as_bytes());
        Authenticator {
            key: h.finalize().into(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn mac(&self, path: &str, node: NodeId, time_ms: u64, nonce: &str, body: &[u8]) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(format!("v1\n{path}\n{node}\n{time_ms}\n{nonce}\n").as_bytes());
        m.update(body);
        m
    }

    /// Sign a request from `node` to `path` with `body`.
    pub fn sign(&self, node: NodeId, path: &str, body: &[u8]) -> Signed {
        let time_ms = now_ms();
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let sig = hex::encode(
            self.mac(path, node, time_ms, &nonce, body)
                .finalize()
                .into_bytes(),
        );
        Signed {
            node,
            time_ms,
            nonce,
            sig,
        }
    }

    /// Verify a request; on success, the sender's node id.
    pub fn verify(&self, path: &str, s: &Signed, body: &[u8]) -> Result<NodeId, AuthError> {
        let sig = hex::decode(&s.sig).map_err(|_| AuthError::Malformed)?;
        self.mac(path, s.node, s.time_ms, &s.nonce, body)
            .verify_slice(&sig)
            .map_err(|_| AuthError::BadSignature)?;
        let now = now_ms();
        let skew_ms = now as i64 - s.time_ms as i64;
        if skew_ms.unsigned_abs() > MAX_SKEW.as_millis() as u64 {
            return Err(AuthError::Skew { skew_ms });
        }
        let mut seen = self.seen.lock();
        let window = MAX_SKEW.as_millis() as u64 * 2;
        if seen.len() > 4096 {
            seen.retain(|_, t| now.saturating_sub(*t) < window);
        }
        if seen.insert(s.nonce.clone(), s.time_ms).is_some() {
            return Err(AuthError::Replay);
        }
        Ok(s.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_replay_and_wrong_secret() {
        let a = Authenticator::new("s3cret");
        let s = a.sign(4, "/v1/vote", b"{}");
        assert_eq!(a.verify("/v1/vote", &s, b"{}"), Ok(4));
        assert_eq!(a.verify("/v1/vote", &s, b"{}"), Err(AuthError::Replay));
        let s = a.sign(4, "/v1/vote", b"{}");
        assert_eq!(
            a.verify("/v1/vote", &s, b"{ }"),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            a.verify("/v1/append", &s, b"{}"),
            Err(AuthError::BadSignature)
        );
        let mut forged = s.clone();
        forged.node = 5;
        assert_eq!(
            a.verify("/v1/vote", &forged, b"{}"),
            Err(AuthError::BadSignature)
        );
        let other = Authenticator::new("wrong");
        let s = other.sign(4, "/v1/vote", b"{}");
        assert_eq!(
            a.verify("/v1/vote", &s, b"{}"),
            Err(AuthError::BadSignature)
        );
        let mut old = a.sign(4, "/v1/vote", b"{}");
        old.time_ms -= 60_000;
        old.sig = hex::encode(
            a.mac("/v1/vote", 4, old.time_ms, &old.nonce, b"{}")
                .finalize()
                .into_bytes(),
        );
        assert!(matches!(
            a.verify("/v1/vote", &old, b"{}"),
            Err(AuthError::Skew { .. })
        ));
    }
}
