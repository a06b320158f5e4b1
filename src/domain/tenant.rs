//! Tenants: the unit of isolation. Every tenant-owned row carries a `TenantId`.

use super::{ParseError, TenantId, Timestamp};
use serde::Serialize;

/// A tenant's display name: 1–100 characters, no control characters, trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TenantName(String);

impl TenantName {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(ParseError::new("a tenant name must not be empty"));
        }
        if t.chars().count() > 100 {
            return Err(ParseError::new(
                "a tenant name must be at most 100 characters",
            ));
        }
        if t.chars().any(char::is_control) {
            return Err(ParseError::new(
                "a tenant name must not contain control characters",
            ));
        }
        Ok(Self(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: TenantName,
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_trimmed_and_checked() {
        assert_eq!(TenantName::parse("  Acme ").unwrap().as_str(), "Acme");
        assert!(TenantName::parse("   ").is_err());
        assert!(TenantName::parse("a\u{0}b").is_err());
        assert!(TenantName::parse(&"x".repeat(101)).is_err());
        assert!(TenantName::parse(&"é".repeat(100)).is_ok());
    }
}
