//! The hash chains that make stored records tamper-evident: their link hash and the
//! canonical bytes it covers. Pure: no I/O; the store feeds it stored values.
//!
//! Every tenant has two chains, its calls and its audit entries, and the instance has one
//! more for operator actions without a tenant. Link `n` of a chain is
//!
//! ```text
//! hash_n = SHA-256( "agv-chain-v1\n" || hash_{n-1} as 64 lowercase hex chars
//!                   || n as 8 bytes big-endian || canonical(fields of record n) )
//! hash_0 = 64 × '0'   (the genesis)
//! ```
//!
//! `canonical` encodes each field in a fixed order: `0x00` for NULL; `0x01` and 8 bytes
//! big-endian for an integer (booleans are 0/1); `0x02`, the byte length as 8 bytes
//! big-endian and the UTF-8 bytes for text. For a call the fields are every stored column
//! of `calls` except the chain columns themselves, in `CALL_COLUMNS` order (ids, tenant,
//! key, time, endpoint, model, stream flag, end user, session, metadata JSON, request body,
//! truncation flag and SHA-256, response body, truncation flag and SHA-256, status, error,
//! blocked flag and guardrail, decisions JSON, token counts, cost in nano-dollars,
//! latencies, attempts, upstream); for an audit entry, see `AUDIT_CHAIN_FIELDS` in the
//! store. So editing any stored field, moving a row to another position, or deleting a
//! row changes what the walk computes and the chain no longer matches.
//!
//! # Call links, version 2
//! A call recorded since migration 0012 is linked with version 2 ([`LinkVersion::V2`]):
//!
//! ```text
//! hash_n = SHA-256( "agv-chain-v2\n" || hash_{n-1} (hex) || n (8 bytes BE)
//!                   || canonical(fields of record n, each body replaced by its digest) )
//! ```
//!
//! The fields are the same, in the same order, except that the request body and the
//! response body are replaced by `request_body_sha256` and `response_body_sha256`: the
//! SHA-256 (hex) of each body exactly as stored (NULL when no response body was stored).
//! So retention can remove a body later and the link still verifies, while the body, as
//! long as it is there, must still hash to its digest ([`check_body`]). Versions share a
//! chain (a tenant's chain may hold v1 links, then v2 links); the domain strings differ,
//! so a row cannot be passed off as the other version. v1 links keep verifying as before
//! and their bodies are never removed.

use super::TenantId;
use sha2::{Digest, Sha256};

/// The hash before the first link.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const DOMAIN: &[u8] = b"agv-chain-v1\n";
const DOMAIN_V2: &[u8] = b"agv-chain-v2\n";

/// Which formula a link uses (see the module docs). Audit entries are always v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum LinkVersion {
    /// The link covers every stored field, bodies included.
    #[default]
    V1,
    /// The link covers the digests of the stored bodies instead of the bodies.
    V2,
}

impl LinkVersion {
    /// The number stored in `calls.chain_version`.
    pub fn number(self) -> i64 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
        }
    }

    /// `None` for a number no version has.
    pub fn from_number(n: i64) -> Option<Self> {
        match n {
            1 => Some(Self::V1),
            2 => Some(Self::V2),
            _ => None,
        }
    }

    fn domain(self) -> &'static [u8] {
        match self {
            Self::V1 => DOMAIN,
            Self::V2 => DOMAIN_V2,
        }
    }
}

/// SHA-256 of text, lowercase hex: how a stored body's digest is made.
pub fn body_digest(body: &str) -> String {
    hex::encode(Sha256::digest(body.as_bytes()))
}

/// Checks one stored body of a v2 call against its stored digest. `pruned`: retention
/// removed the call's bodies, so an empty (or absent) body is expected — but a body that
/// is there must still be the one the digest names. `Err` says what does not hold.
pub fn check_body(
    what: &str,
    body: Option<&str>,
    digest: Option<&str>,
    pruned: bool,
) -> Result<(), BodyMismatch> {
    match (body, digest) {
        (None, None) => Ok(()),
        (Some(""), _) | (None, Some(_)) if pruned => Ok(()),
        (Some(b), Some(d)) => {
            let found = body_digest(b);
            if found == d {
                Ok(())
            } else {
                Err(BodyMismatch {
                    expected: d.to_owned(),
                    found,
                    reason: format!(
                        "the stored {what} body no longer matches its SHA-256: it was edited{}",
                        if pruned {
                            " (or put back differently after retention removed it)"
                        } else {
                            ""
                        }
                    ),
                })
            }
        }
        (None, Some(d)) => Err(BodyMismatch {
            expected: d.to_owned(),
            found: "no body".into(),
            reason: format!(
                "the {what} body was removed although the call is not marked as pruned by retention"
            ),
        }),
        (Some(b), None) => Err(BodyMismatch {
            expected: "no body".into(),
            found: body_digest(b),
            reason: format!("a {what} body is stored where the call recorded none"),
        }),
    }
}

/// A stored body that does not match its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyMismatch {
    pub expected: String,
    pub found: String,
    pub reason: String,
}

/// One stored value as the chain sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field<'a> {
    Null,
    Int(i64),
    Text(&'a str),
}

impl<'a> From<Option<&'a str>> for Field<'a> {
    fn from(v: Option<&'a str>) -> Self {
        v.map_or(Field::Null, Field::Text)
    }
}

impl From<Option<i64>> for Field<'_> {
    fn from(v: Option<i64>) -> Self {
        v.map_or(Field::Null, Field::Int)
    }
}

/// Appends the canonical encoding of `fields` to `out`.
pub fn encode(fields: &[Field<'_>], out: &mut Vec<u8>) {
    for f in fields {
        match *f {
            Field::Null => out.push(0),
            Field::Int(v) => {
                out.push(1);
                out.extend_from_slice(&v.to_be_bytes());
            }
            Field::Text(s) => {
                out.push(2);
                out.extend_from_slice(&(s.len() as u64).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
}

/// The hash of v1 link `seq` after `prev`, over already encoded fields.
pub fn link_hash(prev: &str, seq: i64, encoded: &[u8]) -> String {
    link_hash_as(LinkVersion::V1, prev, seq, encoded)
}

/// The hash of link `seq` after `prev` in the given version, over already encoded fields.
pub fn link_hash_as(version: LinkVersion, prev: &str, seq: i64, encoded: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(version.domain());
    h.update(prev.as_bytes());
    h.update(seq.to_be_bytes());
    h.update(encoded);
    hex::encode(h.finalize())
}

/// Which records a chain links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainKind {
    Calls,
    Audit,
}

impl ChainKind {
    /// The table the chain's records live in (named by `audit verify`).
    pub fn table(self) -> &'static str {
        match self {
            Self::Calls => "calls",
            Self::Audit => "audit_entries",
        }
    }
}

/// The name of a chain in `chain_heads`: `calls/<tenant>`, `audit/<tenant>`, or `audit/`
/// for the instance-wide audit chain (operator actions without a tenant).
pub fn chain_key(kind: ChainKind, tenant: Option<&TenantId>) -> String {
    let prefix = match kind {
        ChainKind::Calls => "calls/",
        ChainKind::Audit => "audit/",
    };
    format!("{prefix}{}", tenant.map_or("", TenantId::as_str))
}

/// The last link of a chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: String,
}

impl ChainHead {
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS.to_owned(),
        }
    }

    /// How a certificate names the head: `<seq>:<hash>`.
    pub fn label(&self) -> String {
        format!("{}:{}", self.seq, self.hash)
    }
}

/// One stored link as read back for verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLink {
    pub seq: i64,
    /// The record's id (call id or audit entry id).
    pub id: String,
    /// The hash stored in the row.
    pub hash: String,
    /// The previous hash stored in the row, where the table keeps one (audit entries).
    pub prev_hash: Option<String>,
    /// The canonical encoding of the row's fields as stored now (for a v2 call, with the
    /// body digests in place of the bodies).
    pub encoded: Vec<u8>,
    /// The formula the row's link uses.
    pub version: LinkVersion,
    /// For a v2 call: a stored body that does not match its digest.
    pub body_mismatch: Option<BodyMismatch>,
}

/// The first link that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BrokenLink {
    /// The seq where the chain breaks.
    pub seq: i64,
    /// The record found there (`None` when the record is missing).
    pub id: Option<String>,
    pub expected: String,
    pub found: String,
    pub reason: String,
}

/// Checks links in order, one at a time, from the genesis.
#[derive(Debug, Clone)]
pub struct ChainWalk {
    head: ChainHead,
}

impl Default for ChainWalk {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainWalk {
    pub fn new() -> Self {
        Self {
            head: ChainHead::genesis(),
        }
    }

    /// The last link checked so far.
    pub fn head(&self) -> &ChainHead {
        &self.head
    }

    /// Checks the next stored link.
    pub fn step(&mut self, link: &StoredLink) -> Result<(), BrokenLink> {
        let want_seq = self.head.seq + 1;
        if link.seq != want_seq {
            return Err(BrokenLink {
                seq: want_seq,
                id: None,
                expected: format!("record with seq {want_seq}"),
                found: format!("record {} with seq {}", link.id, link.seq),
                reason: format!(
                    "link {want_seq} is missing: the record there was deleted or its position changed"
                ),
            });
        }
        let broken = |expected, found: &str, reason: &str| {
            Err(BrokenLink {
                seq: link.seq,
                id: Some(link.id.clone()),
                expected,
                found: found.to_owned(),
                reason: reason.to_owned(),
            })
        };
        if let Some(prev) = &link.prev_hash
            && *prev != self.head.hash
        {
            let reason = "the stored previous hash does not match the link before";
            return broken(self.head.hash.clone(), prev, reason);
        }
        let expected = link_hash_as(link.version, &self.head.hash, link.seq, &link.encoded);
        if expected != link.hash {
            let reason = "the record's stored fields no longer match its hash: it was edited";
            return broken(expected, &link.hash, reason);
        }
        if let Some(m) = &link.body_mismatch {
            return broken(m.expected.clone(), &m.found, &m.reason);
        }
        self.head = ChainHead {
            seq: link.seq,
            hash: link.hash.clone(),
        };
        Ok(())
    }

    /// After the last link: the walk must end where the stored head says the chain ends.
    pub fn finish(&self, stored_head: Option<&ChainHead>) -> Result<(), BrokenLink> {
        let stored = stored_head.cloned().unwrap_or_else(ChainHead::genesis);
        if stored == self.head {
            return Ok(());
        }
        Err(BrokenLink {
            seq: self.head.seq + 1,
            id: None,
            expected: stored.label(),
            found: self.head.label(),
            reason: if stored.seq > self.head.seq {
                format!(
                    "the chain head says {} links but the records end at {}: records at the end were deleted",
                    stored.seq, self.head.seq
                )
            } else {
                "the stored chain head does not match the last record".into()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(walk: &ChainWalk, seq: i64, id: &str, fields: &[Field<'_>]) -> StoredLink {
        let mut encoded = Vec::new();
        encode(fields, &mut encoded);
        StoredLink {
            seq,
            id: id.into(),
            hash: link_hash(&walk.head().hash, seq, &encoded),
            prev_hash: None,
            encoded,
            version: LinkVersion::V1,
            body_mismatch: None,
        }
    }

    #[test]
    fn v1_and_v2_links_differ_and_each_walks_as_its_own_version() {
        let mut encoded = Vec::new();
        encode(&[Field::Text("x")], &mut encoded);
        let v1 = link_hash_as(LinkVersion::V1, GENESIS, 1, &encoded);
        let v2 = link_hash_as(LinkVersion::V2, GENESIS, 1, &encoded);
        assert_ne!(v1, v2);
        assert_eq!(v1, link_hash(GENESIS, 1, &encoded));
        let mut link = StoredLink {
            hash: v2.clone(),
            version: LinkVersion::V2,
            ..link(&ChainWalk::new(), 1, "a", &[Field::Text("x")])
        };
        ChainWalk::new().step(&link).unwrap();
        // Claiming the other version breaks the link.
        link.version = LinkVersion::V1;
        assert!(ChainWalk::new().step(&link).is_err());
        // A body that does not match its digest breaks it too, naming why.
        link.version = LinkVersion::V2;
        link.body_mismatch =
            check_body("request", Some("changed"), Some(&body_digest("x")), false).err();
        let err = ChainWalk::new().step(&link).unwrap_err();
        assert!(err.reason.contains("request body"), "{}", err.reason);
    }

    #[test]
    fn a_body_is_checked_against_its_digest_and_may_be_missing_only_when_pruned() {
        let d = body_digest("hello");
        assert!(check_body("request", Some("hello"), Some(&d), false).is_ok());
        assert!(check_body("response", None, None, false).is_ok());
        assert!(check_body("request", Some("hellO"), Some(&d), false).is_err());
        // Retention removed it: empty or absent is fine, the same body put back too.
        assert!(check_body("request", Some(""), Some(&d), true).is_ok());
        assert!(check_body("response", None, Some(&d), true).is_ok());
        assert!(check_body("request", Some("hello"), Some(&d), true).is_ok());
        // Put back differently, removed without being marked, or added where none was.
        let err = check_body("request", Some("bye"), Some(&d), true).unwrap_err();
        assert!(err.reason.contains("put back"), "{}", err.reason);
        assert!(check_body("request", Some(""), Some(&d), false).is_err());
        assert!(check_body("response", None, Some(&d), false).is_err());
        assert!(check_body("response", Some("x"), None, false).is_err());
        assert!(check_body("response", Some("x"), None, true).is_err());
    }

    #[test]
    fn an_intact_chain_walks_to_its_head() {
        let mut w = ChainWalk::new();
        for i in 1..=3 {
            let l = link(&w, i, "a", &[Field::Int(i), Field::Text("x"), Field::Null]);
            w.step(&l).unwrap();
        }
        let head = w.head().clone();
        assert_eq!(head.seq, 3);
        w.finish(Some(&head)).unwrap();
        assert!(w.finish(None).is_err());
    }

    #[test]
    fn an_edited_field_a_gap_and_a_deleted_tail_are_found() {
        let mut w = ChainWalk::new();
        let mut l = link(&w, 1, "a", &[Field::Text("200")]);
        l.encoded.clear();
        encode(&[Field::Text("500")], &mut l.encoded);
        let err = w.step(&l).unwrap_err();
        assert_eq!((err.seq, err.id.as_deref()), (1, Some("a")));

        let mut w = ChainWalk::new();
        let l = link(&w, 2, "b", &[]);
        assert_eq!(w.step(&l).unwrap_err().seq, 1);

        let w = ChainWalk::new();
        let err = w
            .finish(Some(&ChainHead {
                seq: 4,
                hash: "ab".into(),
            }))
            .unwrap_err();
        assert_eq!(err.seq, 1);
    }

    #[test]
    fn the_encoding_separates_null_empty_and_numbers() {
        let enc = |f: &[Field<'_>]| {
            let mut v = Vec::new();
            encode(f, &mut v);
            v
        };
        assert_ne!(enc(&[Field::Null]), enc(&[Field::Text("")]));
        assert_ne!(enc(&[Field::Int(0)]), enc(&[Field::Null]));
        assert_ne!(
            enc(&[Field::Text("ab"), Field::Text("c")]),
            enc(&[Field::Text("a"), Field::Text("bc")])
        );
    }
}
