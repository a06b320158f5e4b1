//! The kill switch's record: every freeze and unfreeze of a tenant or a key, with who did
//! it, why and when. The current state of a target is its latest event.

use super::{FreezeId, KeyId, TenantId, Timestamp};
use serde::{Deserialize, Serialize};

named_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum FreezeAction {
        Freeze => "freeze",
        Unfreeze => "unfreeze",
    }
}

impl FreezeAction {
    pub fn parse(s: &str) -> Option<Self> {
        Self::from_name(s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeEvent {
    pub id: FreezeId,
    pub tenant_id: TenantId,
    /// `None`: the whole tenant; `Some`: one key of it.
    pub key_id: Option<KeyId>,
    pub action: FreezeAction,
    /// Who: `key:<key id>`, `user:<user id>`, `operator`, or `policy:dg-004` for automatic freezes.
    pub actor: String,
    pub reason: String,
    pub at: Timestamp,
}

/// A freeze reason given by a person: 1–500 characters, no control characters.
pub fn parse_reason(s: &str) -> Result<String, super::ParseError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(super::ParseError::new(
            "a reason is required: say why (it is kept as evidence)",
        ));
    }
    if t.chars().count() > 500 {
        return Err(super::ParseError::new(
            "a reason must be at most 500 characters",
        ));
    }
    if t.chars().any(|c| c.is_control() && c != '\n') {
        return Err(super::ParseError::new(
            "a reason must not contain control characters",
        ));
    }
    Ok(t.to_owned())
}
