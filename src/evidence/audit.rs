//! The audit log's writer helper and the walk that checks every hash chain
//! (`agv-server audit verify`).
//!
//! Writing: handlers and the CLI call [`record`] right after a change succeeded; a failed
//! audit write is logged loudly but does not undo or fail the change (it already happened).
//! Checking: every chain is read in seq order, a page at a time, and recomputed from the
//! stored fields (see `domain::chain`); the first link that does not hold is named.

use crate::domain::TenantId;
use crate::domain::audit::{AuditEntry, NewAuditEntry};
use crate::domain::chain::{BrokenLink, ChainHead, ChainKind, ChainWalk};
use crate::store::{Store, StoreResult};

/// Appends an audit entry (blocking: from async code, call through `run_blocking`).
/// A failure is logged with the whole entry, so an operator can see what went unrecorded.
pub fn record(store: &dyn Store, entry: &NewAuditEntry) -> Option<AuditEntry> {
    match store.append_audit(entry) {
        Ok(e) => Some(e),
        Err(err) => {
            tracing::error!(
                action = entry.action.as_str(),
                target = %entry.target,
                actor = entry.actor.id(),
                tenant = ?entry.tenant_id,
                error = %err,
                "could not write an audit entry; the change itself was made"
            );
            metrics::counter!("agv_audit_write_failures_total").increment(1);
            None
        }
    }
}

/// Links read per query while walking a chain.
const PAGE: u32 = 2_000;

/// The result of walking one chain.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChainResult {
    /// `None`: the instance-wide audit chain.
    pub tenant_id: Option<TenantId>,
    pub table: &'static str,
    /// Links that were checked and hold.
    pub links: i64,
    /// The stored head (`None` when nothing was ever appended).
    pub head: Option<ChainHead>,
    /// The first link that does not hold, if any.
    pub broken: Option<BrokenLink>,
}

/// Walks one chain to its end or its first broken link. `progress` is told how many links
/// were checked after each page.
pub fn verify_chain(
    store: &dyn Store,
    kind: ChainKind,
    tenant: Option<&TenantId>,
    progress: &mut dyn FnMut(u64),
) -> StoreResult<ChainResult> {
    // The head first: links appended while we walk lie beyond it and are not checked.
    let head = store.chain_head(kind, tenant)?;
    let mut walk = ChainWalk::new();
    let mut broken = None;
    let end = head.as_ref().map_or(0, |h| h.seq);
    'pages: while walk.head().seq < end {
        let page = store.chain_links(kind, tenant, walk.head().seq, PAGE)?;
        if page.is_empty() {
            break;
        }
        for link in &page {
            if link.seq > end {
                break 'pages;
            }
            if let Err(b) = walk.step(link) {
                broken = Some(b);
                break 'pages;
            }
        }
        progress(page.len() as u64);
    }
    if broken.is_none() {
        // Links stored past the head (the head row edited or deleted) also break it.
        let beyond = store.chain_links(kind, tenant, walk.head().seq, 1)?;
        broken = match beyond.first() {
            Some(extra) if head.as_ref().is_none_or(|h| extra.seq > h.seq) => Some(BrokenLink {
                seq: extra.seq,
                id: Some(extra.id.clone()),
                expected: head.as_ref().map_or("no record".into(), |h| {
                    format!("the chain to end at {}", h.label())
                }),
                found: format!("record {} at seq {}", extra.id, extra.seq),
                reason:
                    "a record lies beyond the stored chain head: the head was changed or removed"
                        .into(),
            }),
            _ => walk.finish(head.as_ref()).err(),
        };
    }
    Ok(ChainResult {
        tenant_id: tenant.cloned(),
        table: kind.table(),
        links: walk.head().seq,
        head,
        broken,
    })
}

/// Walks the call and audit chains of one tenant, or of every tenant plus the instance's
/// audit chain.
pub fn verify_all(
    store: &dyn Store,
    only: Option<&TenantId>,
    progress: &mut dyn FnMut(u64),
) -> StoreResult<Vec<ChainResult>> {
    let tenants = match only {
        Some(t) => {
            store.get_tenant(t)?;
            vec![t.clone()]
        }
        None => store.list_tenants()?.into_iter().map(|t| t.id).collect(),
    };
    let mut out = Vec::new();
    for t in &tenants {
        out.push(verify_chain(store, ChainKind::Calls, Some(t), progress)?);
        out.push(verify_chain(store, ChainKind::Audit, Some(t), progress)?);
    }
    if only.is_none() {
        out.push(verify_chain(store, ChainKind::Audit, None, progress)?);
    }
    Ok(out)
}
