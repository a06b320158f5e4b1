//! The body of `GET /v1/calls` (and `/api/calls`), written a slice of calls at a time.
//!
//! A list answers whole call records, bodies included, up to 500 of them. Reading them all,
//! turning them into one `serde_json::Value` tree and then into one string held each
//! record several times over at once: a page of 500 calls of 16 KiB prompts and answers
//! (17.5 MB of JSON) took +126–150 MB of heap, against +19–22 MB written this way
//! (`bench/memory.py`). Here the store is read [`SLICE`] calls at a time (strictly after the
//! previous slice's last call, as a client's own paging would), each slice is written out
//! as JSON and dropped before the next is read, and the next is read only when the client
//! has taken the previous one. The JSON is byte for byte what one `json!` of the whole
//! page gave.
//!
//! The first slice is read before the answer starts, so a bad query or a store outage is
//! still an ordinary error status. A store error after that ends the connection without
//! the closing bytes, which no client can mistake for a complete list.

use super::error::ApiError;
use crate::domain::{CallCursor, CallFilter, CallRecord, CallSearch, TenantId};
use crate::store::{DynStore, StoreResult, run_blocking};
use actix_web::HttpResponse;
use actix_web::web::Bytes;
use std::sync::Arc;

/// Calls read from the store per query while a list is written: the console's page size,
/// so that its lists take one query as before.
pub const SLICE: u32 = 50;

/// Which calls a list holds.
pub enum Listing {
    Filter(CallFilter),
    Search(CallSearch),
}

/// Answers up to `limit` of the tenant's calls of `listing`, newest first, strictly after
/// `after` when given: `{"object": "list", "data": [...], "next_cursor": ...}`, with a
/// next cursor when the list is full.
pub async fn respond(
    store: DynStore,
    tenant: TenantId,
    listing: Listing,
    after: Option<CallCursor>,
    limit: u32,
) -> Result<HttpResponse, ApiError> {
    let mut writer = Writer {
        store,
        tenant,
        listing: Arc::new(listing),
        limit,
        written: 0,
        after,
        first: None,
        done: false,
    };
    let asked = writer.next_ask();
    writer.first = Some((writer.read(asked).await?, asked));
    let body = futures_util::stream::unfold(Some(writer), |writer| async move {
        let mut writer = writer?;
        if writer.done {
            return None;
        }
        match writer.next_chunk().await {
            Ok(chunk) => Some((Ok(chunk), Some(writer))),
            Err(e) => {
                tracing::error!(error = %e, "a call list ended early, while it was written");
                Some((Err(actix_web::Error::from(e)), None))
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .streaming(body))
}

struct Writer {
    store: DynStore,
    tenant: TenantId,
    listing: Arc<Listing>,
    limit: u32,
    written: u32,
    /// The last call written (or the request's cursor before the first).
    after: Option<CallCursor>,
    /// The first slice, read before the answer started, and how many calls it asked for.
    first: Option<(Vec<CallRecord>, u32)>,
    done: bool,
}

impl Writer {
    fn next_ask(&self) -> u32 {
        self.limit.saturating_sub(self.written).min(SLICE)
    }

    async fn read(&self, n: u32) -> StoreResult<Vec<CallRecord>> {
        let (store, tenant, listing) = (
            self.store.clone(),
            self.tenant.clone(),
            self.listing.clone(),
        );
        let after = self.after.clone();
        run_blocking(move || match &*listing {
            Listing::Filter(f) => store.list_calls(&tenant, f, after.as_ref(), n),
            Listing::Search(s) => store.search_calls(&tenant, s, after.as_ref(), n),
        })
        .await
    }

    /// The JSON of the next slice: the opening before the first, the closing after the
    /// last (a slice shorter than asked, or the limit reached).
    async fn next_chunk(&mut self) -> Result<Bytes, ApiError> {
        let mut out = Vec::new();
        let (slice, asked) = match self.first.take() {
            Some(first) => {
                out.extend_from_slice(br#"{"object":"list","data":["#);
                first
            }
            None => {
                let asked = self.next_ask();
                (self.read(asked).await?, asked)
            }
        };
        let full = slice.len() == asked as usize;
        for call in slice {
            if self.written > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, &call).map_err(ApiError::internal)?;
            self.written += 1;
            self.after = Some(CallCursor {
                created_at: call.created_at,
                id: call.id,
            });
        }
        if !full || self.written >= self.limit {
            let next = (self.written == self.limit)
                .then(|| self.after.as_ref().map(CallCursor::encode))
                .flatten();
            out.extend_from_slice(br#"],"next_cursor":"#);
            serde_json::to_writer(&mut out, &next).map_err(ApiError::internal)?;
            out.push(b'}');
            self.done = true;
        }
        Ok(Bytes::from(out))
    }
}
