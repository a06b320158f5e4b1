//! Prefixed, opaque identifiers (`ten_…`, `key_…`, `usr_…`, `ses_…`).
//!
//! An id is a prefix plus 32 lowercase hex characters (a UUID). The prefix makes a pasted
//! id self-describing and lets us reject an id of the wrong kind early.
//!
//! Most ids are random (UUID v4). A call id is a UUID v7: the time in milliseconds, then
//! 74 random bits. Calls are stored keyed by id, and a new call's id then lands at the
//! end of that index, on a page the recorder has just written, instead of on a random
//! page of an index as large as the table's history (read from the disk when it is no
//! longer cached, and split more often).

use super::ParseError;
use std::fmt;

macro_rules! prefixed_id {
    ($name:ident, $prefix:literal, $what:literal) => {
        prefixed_id!($name, $prefix, $what, uuid::Uuid::new_v4);
    };
    ($name:ident, $prefix:literal, $what:literal, $uuid:path) => {
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A fresh id.
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, $uuid().simple()))
            }

            /// Parses an id typed or pasted by a user.
            pub fn parse(s: &str) -> Result<Self, ParseError> {
                let s = s.trim();
                let rest = s.strip_prefix($prefix).ok_or_else(|| {
                    ParseError::new(format!(
                        "'{}' is not a {} id: it must start with '{}'",
                        truncate(s),
                        $what,
                        $prefix
                    ))
                })?;
                if rest.len() != 32 || !rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return Err(ParseError::new(format!(
                        "'{}' is not a valid {} id: expected '{}' followed by 32 hex characters",
                        truncate(s),
                        $what,
                        $prefix
                    )));
                }
                Ok(Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn truncate(s: &str) -> String {
    s.chars().take(48).collect()
}

prefixed_id!(TenantId, "ten_", "tenant");
prefixed_id!(KeyId, "key_", "key");
prefixed_id!(UserId, "usr_", "user");
prefixed_id!(SessionId, "ses_", "session");
prefixed_id!(CallId, "call_", "call", uuid::Uuid::now_v7);
prefixed_id!(FreezeId, "frz_", "freeze");
prefixed_id!(IncidentId, "inc_", "incident");
prefixed_id!(IncidentEventId, "iev_", "incident event");
prefixed_id!(AlertRouteId, "alr_", "alert route");
prefixed_id!(ReplayId, "rpl_", "replay");
prefixed_id!(CertificateId, "cert_", "certificate");
prefixed_id!(AuditId, "aud_", "audit entry");
prefixed_id!(TaskId, "tsk_", "task");
prefixed_id!(InvitationId, "inv_", "invitation");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back() {
        let id = TenantId::generate();
        assert_eq!(TenantId::parse(id.as_str()).unwrap(), id);
    }

    #[test]
    fn call_ids_follow_the_order_they_were_made_in_and_other_ids_are_random() {
        let calls: Vec<CallId> = (0..64)
            .map(|i| {
                if i % 16 == 0 {
                    // Cross a millisecond now and then: the order holds across them too.
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                CallId::generate()
            })
            .collect();
        for pair in calls.windows(2) {
            assert!(pair[0] < pair[1], "{:?} then {:?}", pair[0], pair[1]);
            assert_eq!(CallId::parse(pair[1].as_str()).unwrap(), pair[1]);
        }
        // Tenants (and the rest) stay random: no order, and version 4 in the digit where
        // a UUID keeps its version (the 13th).
        let version = |id: &str, prefix: &str| id.as_bytes()[prefix.len() + 12];
        let tenants: Vec<TenantId> = (0..64).map(|_| TenantId::generate()).collect();
        assert!(tenants.windows(2).any(|p| p[0] > p[1]));
        assert!(
            tenants
                .iter()
                .all(|t| version(t.as_str(), TenantId::PREFIX) == b'4')
        );
        assert!(
            calls
                .iter()
                .all(|c| version(c.as_str(), CallId::PREFIX) == b'7')
        );
    }

    #[test]
    fn an_id_of_another_kind_is_rejected_with_the_expected_prefix() {
        let key = KeyId::generate();
        let err = TenantId::parse(key.as_str()).unwrap_err();
        assert!(err.0.contains("ten_"), "{err}");
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for bad in [
            "",
            "ten_",
            "ten_xyz",
            "ten_0123456789abcdef0123456789ABCDEF",
            "ten_0123456789abcdef0123456789abcdef0",
        ] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
