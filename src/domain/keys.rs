//! API keys: random 256-bit secrets shown once, stored only as SHA-256 hashes, scoped.
//!
//! A key looks like `agv_` + 64 hex characters. Because it carries 256 bits of entropy a
//! plain SHA-256 is a safe and fast lookup hash (no password stretching needed), which
//! keeps authentication on the hot path to one hash and one map lookup.

use super::{KeyId, ParseError, TenantId, Timestamp};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

pub const KEY_PREFIX: &str = "agv_";
/// How many characters of the key are kept in clear for display (`agv_` + 8 hex).
pub const DISPLAY_PREFIX_LEN: usize = 12;

named_enum! {
    /// What a key may do. `proxy` keys call the OpenAI-compatible endpoints; `admin` keys
    /// may also use the kill switch, policies, incidents and call records of their tenant.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum Scope {
        Proxy => "proxy",
        Admin => "admin",
    }
}

impl Scope {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let name = s.trim();
        Self::from_name(name).ok_or_else(|| {
            ParseError::new(format!("unknown scope '{name}': use 'proxy' or 'admin'"))
        })
    }

    /// Whether a key of this scope may act where `required` is needed.
    pub fn allows(self, required: Scope) -> bool {
        matches!(
            (self, required),
            (Self::Admin, _) | (Self::Proxy, Self::Proxy)
        )
    }
}

/// The secret key itself. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySecret(String);

impl KeySecret {
    /// 256 random bits from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(format!("{KEY_PREFIX}{}", hex::encode(bytes)))
    }

    /// Parses a key presented by a client (e.g. from `Authorization: Bearer …`).
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let rest = s
            .strip_prefix(KEY_PREFIX)
            .ok_or_else(|| ParseError::new("an agv-server API key starts with 'agv_'"))?;
        if rest.len() != 64 || !rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ParseError::new(
                "malformed API key: expected 'agv_' followed by 64 hex characters",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The secret, for showing once to the person who created it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> KeyHash {
        KeyHash(hex::encode(Sha256::digest(self.0.as_bytes())))
    }

    pub fn display_prefix(&self) -> String {
        self.0.chars().take(DISPLAY_PREFIX_LEN).collect()
    }
}

impl fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeySecret({}…)", self.display_prefix())
    }
}

/// SHA-256 of a key, lowercase hex: what the store keeps and looks keys up by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyHash(String);

impl KeyHash {
    /// Wraps a hash read back from the store.
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Everything needed to insert a key; the secret itself never reaches the store.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: KeyId,
    pub tenant_id: TenantId,
    pub name: String,
    pub scope: Scope,
    pub hash: KeyHash,
    pub prefix: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
}

impl NewApiKey {
    /// Makes a fresh key: returns the row to store and the secret to show once.
    pub fn generate(
        tenant_id: TenantId,
        name: &str,
        scope: Scope,
        expires_at: Option<Timestamp>,
    ) -> Result<(Self, KeySecret), ParseError> {
        let name = parse_key_name(name)?;
        let secret = KeySecret::generate();
        let row = Self {
            id: KeyId::generate(),
            tenant_id,
            name,
            scope,
            hash: secret.hash(),
            prefix: secret.display_prefix(),
            created_at: Timestamp::now(),
            expires_at,
        };
        Ok((row, secret))
    }
}

fn parse_key_name(s: &str) -> Result<String, ParseError> {
    let t = s.trim();
    if t.chars().count() > 100 {
        return Err(ParseError::new("a key name must be at most 100 characters"));
    }
    if t.chars().any(char::is_control) {
        return Err(ParseError::new(
            "a key name must not contain control characters",
        ));
    }
    Ok(t.to_owned())
}

/// A stored key as the store returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKeyRecord {
    pub id: KeyId,
    pub tenant_id: TenantId,
    pub name: String,
    pub scope: Scope,
    #[serde(skip)]
    pub hash: KeyHash,
    pub prefix: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
}

impl ApiKeyRecord {
    /// Whether the key may authenticate at `now`.
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }

    pub fn status(&self, now: Timestamp) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|e| now >= e) {
            "expired"
        } else {
            "active"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_hash_stably() {
        let k = KeySecret::generate();
        let again = KeySecret::parse(k.expose()).unwrap();
        assert_eq!(k.hash(), again.hash());
        assert_eq!(k.hash().as_str().len(), 64);
        assert_ne!(KeySecret::generate().hash(), k.hash());
    }

    #[test]
    fn debug_of_a_secret_does_not_reveal_it() {
        let k = KeySecret::generate();
        let shown = format!("{k:?}");
        assert!(!shown.contains(&k.expose()[12..]), "{shown}");
        let (row, secret) =
            NewApiKey::generate(TenantId::generate(), "ci", Scope::Proxy, None).unwrap();
        assert!(!format!("{row:?}").contains(secret.expose()));
    }

    #[test]
    fn malformed_keys_are_rejected() {
        for bad in [
            "",
            "sk-abc",
            "agv_",
            "agv_xyz",
            &format!("agv_{}", "A".repeat(64)),
        ] {
            assert!(KeySecret::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn admin_scope_covers_proxy_but_not_the_reverse() {
        assert!(Scope::Admin.allows(Scope::Proxy));
        assert!(Scope::Admin.allows(Scope::Admin));
        assert!(Scope::Proxy.allows(Scope::Proxy));
        assert!(!Scope::Proxy.allows(Scope::Admin));
        assert!(Scope::parse("root").is_err());
    }

    #[test]
    fn expired_and_revoked_keys_are_inactive() {
        let (row, _) = NewApiKey::generate(TenantId::generate(), "", Scope::Proxy, None).unwrap();
        let now = Timestamp::now();
        let mut rec = ApiKeyRecord {
            id: row.id,
            tenant_id: row.tenant_id,
            name: row.name,
            scope: row.scope,
            hash: row.hash,
            prefix: row.prefix,
            created_at: row.created_at,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        };
        assert!(rec.is_active(now));
        rec.expires_at = Some(now);
        assert!(!rec.is_active(now));
        assert_eq!(rec.status(now), "expired");
        rec.expires_at = None;
        rec.revoked_at = Some(now);
        assert_eq!(rec.status(now), "revoked");
    }
}
