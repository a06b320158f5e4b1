//! Encryption of secrets at rest (tenants' upstream provider keys) with the master key.
//!
//! ChaCha20-Poly1305 with a fresh random 96-bit nonce per encryption, stored in front of
//! the ciphertext and base64-encoded as one text value. The tenant id is the associated
//! data, so a ciphertext copied to another tenant's row does not decrypt. Pure: no I/O
//! (reading or creating the key file is the caller's business). Neither the key nor a
//! plaintext is ever printed by `Debug`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use std::fmt;

pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// The 32-byte master key.
#[derive(Clone)]
pub struct MasterKey([u8; KEY_LEN]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(redacted)")
    }
}

/// A secret in memory; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretBoxError {
    #[error("the master key is not valid: {0}")]
    BadKey(String),
    /// Wrong key, wrong tenant, or a changed ciphertext: nothing can be said of which.
    #[error(
        "a stored secret could not be decrypted: it was encrypted with another master key, for another tenant, or was altered"
    )]
    Undecryptable,
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rand::fill(&mut bytes);
        Self(bytes)
    }

    /// Parses 32 bytes written as hex (64 characters) or base64 (44 characters).
    pub fn parse(text: &str) -> Result<Self, SecretBoxError> {
        let text = text.trim();
        let bytes = if text.len() == KEY_LEN * 2 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|e| SecretBoxError::BadKey(e.to_string()))?
        } else {
            B64.decode(text).map_err(|_| {
                SecretBoxError::BadKey(format!(
                    "expected {KEY_LEN} bytes as 64 hex characters or as base64 (e.g. the output of `openssl rand -hex 32`)"
                ))
            })?
        };
        let arr: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            SecretBoxError::BadKey(format!(
                "it holds {} bytes, but exactly {KEY_LEN} are needed (e.g. `openssl rand -hex 32`)",
                bytes.len()
            ))
        })?;
        Ok(Self(arr))
    }

    /// The key as 64 hex characters (for the key file).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&self.0.into())
    }

    /// Encrypts `plaintext` bound to `context` (the tenant id); returns base64(nonce||ct).
    pub fn seal(&self, context: &str, plaintext: &str) -> Result<String, SecretBoxError> {
        let mut nonce_bytes = [0u8; NONCE_LEN];
        rand::fill(&mut nonce_bytes);
        let nonce = Nonce::from(nonce_bytes);
        let ct = self
            .cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretBoxError::BadKey("encryption failed".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ct);
        Ok(B64.encode(out))
    }

    /// Decrypts what [`seal`](Self::seal) produced for the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Secret, SecretBoxError> {
        let raw = B64
            .decode(sealed.trim())
            .map_err(|_| SecretBoxError::Undecryptable)?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(SecretBoxError::Undecryptable);
        }
        let (nonce_bytes, ct) = raw.split_at(NONCE_LEN);
        let nonce_arr: [u8; NONCE_LEN] = nonce_bytes
            .try_into()
            .map_err(|_| SecretBoxError::Undecryptable)?;
        let plain = self
            .cipher()
            .decrypt(
                &Nonce::from(nonce_arr),
                Payload {
                    msg: ct,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretBoxError::Undecryptable)?;
        String::from_utf8(plain)
            .map(Secret)
            .map_err(|_| SecretBoxError::Undecryptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_with_the_same_key_and_tenant() {
        let key = MasterKey::generate();
        let sealed = key.seal("ten_a", "sk-secret-123").unwrap();
        assert!(!sealed.contains("sk-secret-123"));
        assert_eq!(
            key.open("ten_a", &sealed).unwrap().expose(),
            "sk-secret-123"
        );
        assert_ne!(
            sealed,
            key.seal("ten_a", "sk-secret-123").unwrap(),
            "a fresh nonce each time"
        );
    }

    #[test]
    fn the_wrong_key_fails() {
        let sealed = MasterKey::generate().seal("ten_a", "sk-1").unwrap();
        assert_eq!(
            MasterKey::generate().open("ten_a", &sealed),
            Err(SecretBoxError::Undecryptable)
        );
    }

    #[test]
    fn a_tampered_ciphertext_fails() {
        let key = MasterKey::generate();
        let sealed = key.seal("ten_a", "sk-1").unwrap();
        let mut raw = B64.decode(&sealed).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(key.open("ten_a", &B64.encode(&raw)).is_err());
        raw[last] ^= 1;
        raw[0] ^= 1;
        assert!(key.open("ten_a", &B64.encode(&raw)).is_err());
        assert!(key.open("ten_a", "not base64!").is_err());
        assert!(key.open("ten_a", "").is_err());
    }

    #[test]
    fn a_ciphertext_moved_to_another_tenant_fails() {
        let key = MasterKey::generate();
        let sealed = key.seal("ten_a", "sk-1").unwrap();
        assert!(key.open("ten_b", &sealed).is_err());
    }

    #[test]
    fn debug_never_prints_the_key_or_the_plaintext() {
        let key = MasterKey::from_bytes([7u8; KEY_LEN]);
        let shown = format!("{key:?}");
        assert!(
            !shown.contains(&key.to_hex()) && !shown.contains("7, 7"),
            "{shown}"
        );
        let secret = Secret::new("sk-very-secret");
        assert!(!format!("{secret:?}").contains("sk-very-secret"));
    }

    #[test]
    fn master_keys_parse_from_hex_or_base64_of_exactly_32_bytes() {
        let key = MasterKey::generate();
        assert_eq!(MasterKey::parse(&key.to_hex()).unwrap().0, key.0);
        assert_eq!(MasterKey::parse(&B64.encode(key.0)).unwrap().0, key.0);
        let err = MasterKey::parse(&hex::encode([1u8; 16])).unwrap_err();
        assert!(err.to_string().contains("32"), "{err}");
        assert!(MasterKey::parse("nonsense!").is_err());
    }
}
