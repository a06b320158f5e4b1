//! People who sign in to the console: users (argon2id passwords) and their sessions.

use super::{InvitationId, ParseError, SessionId, TenantId, Timestamp, UserId};
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// A deliberately simple check (one `@`, something either side, no spaces); the
    /// address is lower-cased so that lookups are case-insensitive.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let t = s.trim().to_lowercase();
        let ok = t.len() <= 254
            && !t.chars().any(|c| c.is_whitespace() || c.is_control())
            && matches!(t.split_once('@'), Some((l, d)) if !l.is_empty() && d.contains('.') && !d.contains('@') && !d.starts_with('.') && !d.ends_with('.'));
        if ok {
            Ok(Self(t))
        } else {
            Err(ParseError::new(format!(
                "'{}' is not an email address",
                s.trim()
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

named_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Role {
        /// Runs the instance; sees every tenant.
        Operator => "operator",
        Owner => "owner",
        Admin => "admin",
        Viewer => "viewer",
    }
}

impl Role {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let name = s.trim();
        Self::from_name(name).ok_or_else(|| {
            ParseError::new(format!(
                "unknown role '{name}': use operator, owner, admin or viewer"
            ))
        })
    }

    /// A role within one tenant (owner, admin or viewer), as opposed to the operator's,
    /// which belongs to the instance.
    pub fn is_tenant_role(self) -> bool {
        !matches!(self, Self::Operator)
    }
}

/// An argon2id PHC string. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// Hashes a new password (at least 10 characters) with argon2id and a random salt.
    pub fn create(password: &str) -> Result<Self, ParseError> {
        if password.chars().count() < 10 {
            return Err(ParseError::new("a password must be at least 10 characters"));
        }
        if password.len() > 1024 {
            return Err(ParseError::new("a password must be at most 1024 bytes"));
        }
        let mut salt_bytes = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut salt_bytes);
        let hash = argon2::Argon2::default()
            .hash_password_with_salt(password.as_bytes(), &salt_bytes)
            .map_err(|e| ParseError::new(format!("could not hash the password: {e}")))?;
        Ok(Self(hash.to_string()))
    }

    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn verify(&self, password: &str) -> bool {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), self.0.as_str())
            .is_ok()
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(…)")
    }
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: UserId,
    pub email: Email,
    pub password: PasswordHash,
    pub role: Role,
    /// `None` only for operators, who belong to the instance rather than a tenant.
    pub tenant_id: Option<TenantId>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    #[serde(skip)]
    pub password: PasswordHash,
    pub role: Role,
    pub tenant_id: Option<TenantId>,
    pub created_at: Timestamp,
    /// Set while the account is disabled: it cannot sign in and has no live session.
    pub disabled_at: Option<Timestamp>,
}

impl User {
    pub fn is_disabled(&self) -> bool {
        self.disabled_at.is_some()
    }
}

/// A session is looked up by the SHA-256 of its cookie token; the token itself is never stored.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: SessionId,
    pub user_id: UserId,
    pub token_hash: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// An owner's (or the operator's) invitation for one person to join a tenant. Only the
/// SHA-256 of its token is stored; the token travels in the invitation URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invitation {
    pub id: InvitationId,
    pub tenant_id: TenantId,
    pub email: Email,
    pub role: Role,
    #[serde(skip)]
    pub token_hash: String,
    pub created_by: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub accepted_at: Option<Timestamp>,
    /// Set when an owner or the operator took the invitation back before it was used.
    pub revoked_at: Option<Timestamp>,
}

impl Invitation {
    /// Whether the invitation can still be accepted at `now`.
    pub fn is_open(&self, now: Timestamp) -> bool {
        self.accepted_at.is_none()
            && self.revoked_at.is_none()
            && now.millis() < self.expires_at.millis()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            Email::parse(" Ada@Example.COM ").unwrap().as_str(),
            "ada@example.com"
        );
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada@example",
            "a da@example.com",
            "a@b@c.com",
            "a@.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_verify_only_with_the_right_password() {
        let h = PasswordHash::create("correct horse battery").unwrap();
        assert!(h.as_str().starts_with("$argon2id$"));
        assert!(h.verify("correct horse battery"));
        assert!(!h.verify("wrong horse battery"));
        assert!(PasswordHash::create("short").is_err());
        assert_eq!(format!("{h:?}"), "PasswordHash(…)");
    }
}
