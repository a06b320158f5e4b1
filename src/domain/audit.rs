//! Audit log entries: who (a key, a user, the CLI, the system) did what to what, when,
//! from where, with the state before and after. Pure types and the rules of the
//! `GET /v1/audit` filter; the store chains and keeps them (see `domain::chain`).

use super::{AuditId, KeyId, ParseError, TenantId, Timestamp, UserId};

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An API key (the HTTP API).
    Key(KeyId),
    /// A signed-in person (sign-in, password change, managing people, every console change).
    User(UserId),
    /// The command line on the server's host (`who` is the OS user when known).
    Cli(String),
    /// The server itself (an automatic freeze, a job).
    System(String),
}

impl Actor {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Key(_) => "key",
            Self::User(_) => "user",
            Self::Cli(_) => "cli",
            Self::System(_) => "system",
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Self::Key(k) => k.as_str(),
            Self::User(u) => u.as_str(),
            Self::Cli(s) | Self::System(s) => s,
        }
    }

    /// The CLI actor for this process: `cli` plus the OS user when the environment says.
    pub fn cli() -> Self {
        let who = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_default();
        Self::Cli(if who.is_empty() {
            "cli".into()
        } else {
            format!("cli:{who}")
        })
    }
}

named_enum! {
    /// What was done. The names are what `GET /v1/audit?action=` takes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum AuditAction {
        /// Instance-wide (no tenant): an operator made a tenant.
        TenantCreate => "tenant.create",
        /// Instance-wide: an operator deleted a tenant and everything it held.
        TenantErase => "tenant.erase",
        TenantExport => "tenant.export",
        /// Instance-wide: a backup was restored (written into the restored database).
        Restore => "instance.restore",
        UserCreate => "user.create",
        UserSignIn => "user.sign_in",
        UserSignOut => "user.sign_out",
        /// A person changed their password.
        UserPasswordChange => "user.password_change",
        /// An owner or the operator invited a person to a tenant.
        UserInvite => "user.invite",
        /// An owner or the operator took back an invitation before it was used.
        InvitationRevoke => "invitation.revoke",
        /// A person was disabled: they cannot sign in and their sessions ended.
        UserDisable => "user.disable",
        UserEnable => "user.enable",
        /// A person got another role in their tenant (`before` and `after` name both).
        UserRoleChange => "user.role_change",
        /// A person was deleted (`before` holds who they were).
        UserDelete => "user.delete",
        /// Every session of a person was ended by an owner, the operator or the CLI.
        UserSessionsEnd => "user.sessions_end",
        /// Instance-wide: an operator started a backup from the console.
        Backup => "instance.backup",
        /// Instance-wide: a retention sweep removed the bodies of old calls.
        Retention => "instance.retention",
        KeyCreate => "key.create",
        KeyRevoke => "key.revoke",
        KeyRotate => "key.rotate",
        Freeze => "killswitch.freeze",
        Unfreeze => "killswitch.unfreeze",
        PolicyUpdate => "policy.update",
        PolicyBacktest => "policy.backtest",
        UpstreamUpdate => "upstream.update",
        UpstreamDelete => "upstream.delete",
        Replay => "replay.run",
        /// A replay of every call of an incident was queued.
        IncidentReplay => "incident.replay",
        CertificateIssue => "certificate.issue",
        /// An incident exported (JSON pack, PDF or CSV); `after` names the format.
        Export => "incident.export",
        AlertRouteCreate => "alert_route.create",
        AlertRouteUpdate => "alert_route.update",
        AlertRouteDelete => "alert_route.delete",
        IncidentAck => "incident.ack",
        IncidentResolve => "incident.resolve",
        IncidentReopen => "incident.reopen",
        IncidentAssign => "incident.assign",
        IncidentSeverity => "incident.severity",
        IncidentNote => "incident.note",
        /// Duplicates merged into an incident; `after` names them.
        IncidentMerge => "incident.merge",
    }
}

impl AuditAction {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        Self::from_name(s).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|a| a.as_str()).collect();
            ParseError::new(format!(
                "unknown audit action '{}': use one of {}",
                s.chars().take(48).collect::<String>(),
                known.join(", ")
            ))
        })
    }
}

/// An entry to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEntry {
    /// `None`: an operator action without a tenant (the instance-wide chain).
    pub tenant_id: Option<TenantId>,
    pub actor: Actor,
    pub action: AuditAction,
    /// What was acted on, e.g. a key, incident or route id, or the tenant id.
    pub target: String,
    /// The client's address (the TCP peer; never a forwarded header, which anyone can set).
    pub source: Option<String>,
    pub at: Timestamp,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

impl NewAuditEntry {
    pub fn new(
        tenant_id: Option<TenantId>,
        actor: Actor,
        action: AuditAction,
        target: impl Into<String>,
    ) -> Self {
        Self {
            tenant_id,
            actor,
            action,
            target: target.into(),
            source: None,
            at: Timestamp::now(),
            before: None,
            after: None,
        }
    }

    pub fn source(mut self, source: Option<String>) -> Self {
        self.source = source;
        self
    }

    pub fn before(mut self, v: serde_json::Value) -> Self {
        self.before = Some(v);
        self
    }

    pub fn after(mut self, v: serde_json::Value) -> Self {
        self.after = Some(v);
        self
    }
}

/// An entry as stored, with its place in the chain.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditEntry {
    pub id: AuditId,
    pub seq: i64,
    pub tenant_id: Option<TenantId>,
    pub actor_kind: String,
    pub actor_id: String,
    pub action: String,
    pub target: String,
    pub source: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    pub at: Timestamp,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub prev_hash: String,
    pub hash: String,
}

fn rfc3339<S: serde::Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339())
}

/// Filters of `GET /v1/audit`; all optional, all must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub action: Option<AuditAction>,
    /// The actor's id (a key id, user id, `cli:…`).
    pub actor: Option<String>,
    /// Inclusive.
    pub since: Option<Timestamp>,
    /// Exclusive.
    pub until: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_name_parses_back_and_unknown_names_list_the_known_ones() {
        for a in AuditAction::ALL {
            assert_eq!(AuditAction::parse(a.as_str()).unwrap(), *a);
        }
        let err = AuditAction::parse("key.eat").unwrap_err();
        assert!(err.0.contains("key.create"), "{err}");
    }
}
