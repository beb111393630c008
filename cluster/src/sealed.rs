//! Secrets in the replicated state, sealed with the cluster secret.
//!
//! The CHAP secret of an array added online travels in a Raft entry, so it would sit in
//! every member's Raft log and snapshots (`[cluster] data_dir`), and in any copy of
//! them. It is stored sealed instead: ChaCha20-Poly1305 under a key derived from the
//! cluster secret (SHA-256 of a fixed label and the secret), with a random nonce per
//! value, as `sealed:v1:<hex of nonce and ciphertext>`. Every member has the cluster
//! secret (it must, to join), so every member can open it; the Raft directory alone
//! cannot.
//!
//! A value without the prefix is taken as it is: entries written before sealing
//! existed keep working.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

const PREFIX: &str = "sealed:v1:";
const NONCE: usize = 12;

/// Why a sealed value cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("a sealed secret is not valid hex or too short")]
    Malformed,
    #[error("a sealed secret does not open with this cluster secret (sealed by a cluster with another secret, or altered)")]
    WrongKey,
    #[error("a sealed secret is not UTF-8 text")]
    NotText,
}

/// Seals and opens secrets with one cluster secret.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    pub fn new(cluster_secret: &str) -> Sealer {
        let mut h = Sha256::new();
        h.update(b"switchyard-sealed-v1");
        h.update(cluster_secret.as_bytes());
        let key: [u8; 32] = h.finalize().into();
        Sealer {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        }
    }

    /// `plaintext` sealed, as text for the replicated state.
    pub fn seal(&self, plaintext: &str) -> String {
        let mut nonce = [0u8; NONCE];
        rand::thread_rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
            .expect("ChaCha20-Poly1305 seals any length of text a secret can have");
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        format!("{PREFIX}{}", hex::encode(bytes))
    }

    /// The plaintext of a value [`Sealer::seal`] made; a value without the prefix is
    /// returned as it is.
    pub fn open(&self, stored: &str) -> Result<String, SealError> {
        let Some(body) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let bytes = hex::decode(body).map_err(|_| SealError::Malformed)?;
        if bytes.len() < NONCE {
            return Err(SealError::Malformed);
        }
        let (nonce, sealed) = bytes.split_at(NONCE);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| SealError::WrongKey)?;
        String::from_utf8(plain).map_err(|_| SealError::NotText)
    }

    /// Whether `stored` is a sealed value (rather than one written before sealing).
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_with_the_same_secret_only() {
        let s = Sealer::new("cluster-secret-0123456789");
        let sealed = s.seal("array-chap-secret");
        assert!(Sealer::is_sealed(&sealed));
        assert!(!sealed.contains("array-chap-secret"));
        assert_eq!(s.open(&sealed).unwrap(), "array-chap-secret");
        // A fresh nonce every time: the same secret never seals to the same text.
        assert_ne!(s.seal("array-chap-secret"), sealed);
        let other = Sealer::new("another-cluster-secret-00");
        assert_eq!(other.open(&sealed), Err(SealError::WrongKey));
    }

    #[test]
    fn altered_or_malformed_values_are_refused_and_old_plain_values_pass() {
        let s = Sealer::new("cluster-secret-0123456789");
        let sealed = s.seal("x");
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 1;
        altered[last] = if altered[last] == b'0' { b'1' } else { b'0' };
        let altered = String::from_utf8(altered).unwrap();
        assert_eq!(s.open(&altered), Err(SealError::WrongKey));
        assert_eq!(s.open("sealed:v1:zz"), Err(SealError::Malformed));
        assert_eq!(s.open("sealed:v1:0011"), Err(SealError::Malformed));
        assert_eq!(s.open("plain-old-secret").unwrap(), "plain-old-secret");
        assert!(!Sealer::is_sealed("plain-old-secret"));
    }
}
