//! The SQL of a call search, shared by both backends so that they cannot drift apart:
//! the same conditions in the same order, only the full-text join and the JSON functions
//! differ. Also the text forms of a query and of an indexed document for each backend.
//! This module builds SQL text and parameters; the only thing it runs is one page of a
//! search that needs nothing of a backend's own ([`page`]).

use super::StoreResult;
use super::rows::{CALL_COLUMNS, MAX_PAGE};
pub(super) use super::sql::Dialect;
use super::sql::{Db, Param, Query, SearchPage};
use crate::domain::{CallCursor, CallRecord, CallSearch, TenantId};
use std::collections::BTreeMap;

/// Bits of an FTS5 time key below the millisecond (see `migrations/sqlite/0006`).
pub(super) const KEY_SHIFT: u32 = 20;

/// The smallest time key of calls made at `millis` or later.
pub(super) fn key_floor(millis: i64) -> i64 {
    millis.clamp(0, i64::MAX >> KEY_SHIFT) << KEY_SHIFT
}

/// A call's preferred time key: its time, then its own rowid modulo 2^20 as the slot.
pub(super) fn time_key(created_at: i64, rowid: i64) -> i64 {
    key_floor(created_at) | (rowid & ((1 << KEY_SHIFT) - 1))
}

/// The next slot to try for a call whose key was taken: same millisecond, wrapping.
pub(super) fn next_slot(key: i64) -> i64 {
    let mask = (1 << KEY_SHIFT) - 1;
    (key & !mask) | ((key + 1) & mask)
}

/// Filter-driven search checks at most this many calls against the text index; beyond
/// it, the text index drives (see [`TextPlan`]).
pub(super) const FILTER_DRIVEN_MAX: i64 = 4000;

/// How a search with text meets the text index.
#[derive(Debug, Clone, Copy)]
pub(super) enum TextPlan<'a> {
    /// No text: the calls indexes alone.
    None,
    /// Walk the calls of a narrow filter (an end user, a session, a key) newest first
    /// and check each against the text index: best when the filter has few calls.
    Check(&'a str),
    /// SQLite: walk the matches in the text index newest first (time-keyed rowids) and
    /// join each to its call; the caller stops reading after a page.
    SqliteWalk(&'a str),
}

/// Whether the search has a filter with its own index (an end user, a session, a key),
/// whose calls can be counted cheaply to choose [`TextPlan::Check`].
pub(super) fn has_narrow_filter(search: &CallSearch) -> bool {
    let f = &search.filter;
    f.end_user.is_some() || f.session_id.is_some() || f.key_id.is_some()
}

/// Counts, up to `cap`, the calls the narrow filters and time range select: the rows a
/// [`TextPlan::Check`] search would read. Reads only the filter's index.
pub(super) fn count_narrow_query<'a>(
    dialect: Dialect,
    tenant: &'a TenantId,
    search: &'a CallSearch,
    cap: i64,
) -> (String, Vec<Param<'a>>) {
    let mut q = Query::of(
        dialect,
        "SELECT COUNT(*) FROM (SELECT 1 FROM calls c WHERE ".into(),
    );
    narrow_conditions(&mut q, tenant, search);
    q.add(Param::BigInt(cap), " LIMIT {}) n");
    q.into_parts()
}

/// One page of a call search whose text (if any) needs no walk of a backend's own index:
/// [`TextPlan::None`] or [`TextPlan::Check`], newest first.
pub(super) fn page(
    db: &mut dyn Db,
    q: SearchPage<'_>,
    text: TextPlan<'_>,
) -> StoreResult<Vec<CallRecord>> {
    let limit = q.limit.min(MAX_PAGE);
    let (sql, args) = search_calls_query(db.dialect(), q.tenant, q.search, text, q.after, limit);
    let rows = db.query(&sql, &args)?;
    rows.iter().map(super::rows::call_from).collect()
}

/// The SQL and parameters of one page of a call search, newest first. With
/// [`TextPlan::SqliteWalk`] there is no LIMIT and rows come in time-key order (time
/// descending, ties in any order): the caller reads a page and sorts its last millisecond.
pub(super) fn search_calls_query<'a>(
    dialect: Dialect,
    tenant: &'a TenantId,
    search: &'a CallSearch,
    text: TextPlan<'a>,
    after: Option<&'a CallCursor>,
    limit: u32,
) -> (String, Vec<Param<'a>>) {
    let from = match text {
        TextPlan::None | TextPlan::Check(_) => "calls c",
        // CROSS JOIN: SQLite keeps the text index as the outer loop, so time-key order
        // holds without a sort.
        TextPlan::SqliteWalk(_) => "call_fts CROSS JOIN calls c ON c.id = call_fts.call_id",
    };
    let mut q = Query::of(
        dialect,
        format!("SELECT {} FROM {from} WHERE ", call_columns()),
    );
    if let TextPlan::SqliteWalk(m) = text {
        q.add(Param::Text(m), "call_fts MATCH {} AND ");
        let (low, high) = key_bounds(search, after);
        if let Some(low) = low {
            q.add(Param::BigInt(low), "call_fts.rowid >= {} AND ");
        }
        if let Some(high) = high {
            q.add(Param::BigInt(high), "call_fts.rowid < {} AND ");
        }
    }
    conditions(&mut q, tenant, search);
    if let TextPlan::Check(m) = text {
        let exists = match dialect {
            Dialect::Sqlite => format!(
                " AND EXISTS (SELECT 1 FROM call_fts WHERE call_fts MATCH {{}} AND call_fts.rowid >= (c.created_at << {KEY_SHIFT}) AND call_fts.rowid < ((c.created_at + 1) << {KEY_SHIFT}) AND call_fts.call_id = c.id)"
            ),
            Dialect::Postgres => " AND EXISTS (SELECT 1 FROM call_search s WHERE s.call_seq = c.search_seq AND s.doc @@ {}::text::tsquery)".to_owned(),
        };
        q.add(Param::Text(m), &exists);
    }
    if let Some(c) = after {
        q.add(
            Param::BigInt(c.created_at.millis()),
            " AND (c.created_at, c.id) < ({}, ",
        );
        q.add(Param::Text(c.id.as_str()), "{})");
    }
    let cap = match text {
        TextPlan::SqliteWalk(_) => None,
        // SQLite checks phrases on the rows it reads: every candidate may be needed.
        TextPlan::Check(_) if dialect == Dialect::Sqlite => Some(FILTER_DRIVEN_MAX),
        TextPlan::None | TextPlan::Check(_) => Some(i64::from(limit.min(MAX_PAGE))),
    };
    match cap {
        None => q.sql.push_str(" ORDER BY call_fts.rowid DESC"),
        Some(cap) => q.add(
            Param::BigInt(cap),
            " ORDER BY c.created_at DESC, c.id DESC LIMIT {}",
        ),
    }
    q.into_parts()
}

/// The time-key range of a search: from `since`, below `until` and below the
/// millisecond after the cursor's (the cursor's own millisecond is cut in SQL).
fn key_bounds(search: &CallSearch, after: Option<&CallCursor>) -> (Option<i64>, Option<i64>) {
    let low = search.filter.since.map(|t| key_floor(t.millis()));
    let until = search.filter.until.map(|t| key_floor(t.millis()));
    let cursor = after.map(|c| key_floor(c.created_at.millis().saturating_add(1)));
    let high = match (until, cursor) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    (low, high)
}

/// Appends the conditions on `calls c` that the calls indexes serve: the tenant, the time
/// range and the narrow filters (end user, session, key).
fn narrow_conditions<'a>(q: &mut Query<'a>, tenant: &'a TenantId, search: &'a CallSearch) {
    q.add(Param::Text(tenant.as_str()), "c.tenant_id = {}");
    for (column, op, p) in super::rows::narrow_filters(&search.filter) {
        q.add(p, &format!(" AND c.{column} {op} {{}}"));
    }
}

/// The call columns, qualified with the alias `c`.
pub(super) fn call_columns() -> String {
    CALL_COLUMNS
        .split(',')
        .map(|c| format!("c.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Appends the conditions on `calls c` of a search (tenant, filters, status class, policy).
pub(super) fn conditions<'a>(q: &mut Query<'a>, tenant: &'a TenantId, search: &'a CallSearch) {
    narrow_conditions(q, tenant, search);
    let f = &search.filter;
    if let Some(m) = &f.model {
        q.add(Param::Text(m), " AND c.model = {}");
    }
    if let Some(s) = f.status {
        q.add(Param::Int(i32::from(s)), " AND c.status = {}");
    }
    if let Some((low, high)) = search.status_range {
        q.add(Param::Int(i32::from(low)), " AND c.status >= {}");
        q.add(Param::Int(i32::from(high)), " AND c.status < {}");
    }
    if let Some(b) = f.blocked {
        q.add(Param::Bool(b), " AND c.blocked = {}");
    }
    // Calls that did not answer 200 are few, and indexed apart (`calls_tenant_status_unusual`,
    // migration 0019): saying that the status sought is not 200 lets a search for a rare or
    // absent status read that index, newest first, instead of every call. (Not for a class
    // such as 5xx: its calls would have to be sorted, and a common class is found at once by
    // walking the newest calls.)
    if f.status.is_some_and(|s| s != 200) {
        q.sql.push_str(" AND c.status <> 200");
    }
    if let Some(policy) = &search.policy {
        let (stopped, by) = STOPPED_BY.of(q.dialect);
        // With an end user or a session, whose own indexes hold few calls, SQLite is told
        // not to walk every call the policy stopped instead (`+` hides an index).
        let hide = if q.dialect == Dialect::Sqlite
            && (search.filter.end_user.is_some() || search.filter.session_id.is_some())
        {
            "+"
        } else {
            ""
        };
        q.add(
            Param::Text(policy),
            &format!(" AND ({stopped}) AND {hide}{by} = {{}}"),
        );
    }
}

/// Which guardrail stopped a call, as the `calls_tenant_stopped_by` index (migration
/// 0019) is built: the partial index's condition (the policy stopped the call, or its last
/// decision is not a pass) and its key (`blocked_by`, else that decision's policy). A
/// search repeats both word for word, with `c.` before each column, so that each database
/// reads the index instead of parsing every call's decisions.
pub(super) struct StoppedBy {
    sqlite: (&'static str, &'static str),
    postgres: (&'static str, &'static str),
}

pub(super) const STOPPED_BY: StoppedBy = StoppedBy {
    sqlite: (
        "c.blocked_by IS NOT NULL OR json_extract(c.decisions, '$[#-1].outcome') <> 'pass'",
        "COALESCE(c.blocked_by, json_extract(c.decisions, '$[#-1].policy'))",
    ),
    postgres: (
        "c.blocked_by IS NOT NULL OR (c.decisions::json -> -1 ->> 'outcome') <> 'pass'",
        "(COALESCE(c.blocked_by, c.decisions::json -> -1 ->> 'policy'))",
    ),
};

impl StoppedBy {
    pub(super) fn of(&self, dialect: Dialect) -> (&'static str, &'static str) {
        match dialect {
            Dialect::Sqlite => self.sqlite,
            Dialect::Postgres => self.postgres,
        }
    }
}

/// Tokens come from `domain::search::tokenize` (letters and digits only); quoting is
/// still applied so that no token can ever be read as syntax.
fn quote(token: &str, quote: char) -> String {
    let doubled = format!("{quote}{quote}");
    format!(
        "{quote}{}{quote}",
        token.replace(quote, &doubled).replace('\\', "\\\\")
    )
}

/// An FTS5 MATCH expression: every token of every group required, each once. The index
/// keeps no positions (`detail = none`), so the order of a phrase's tokens is checked
/// on the calls found ([`has_phrases`], `domain::search::contains_phrases`).
pub(super) fn fts5_match(groups: &[Vec<String>]) -> Option<String> {
    let mut tokens: Vec<&str> = groups.iter().flatten().map(String::as_str).collect();
    tokens.sort_unstable();
    tokens.dedup();
    if tokens.is_empty() {
        return None;
    }
    Some(
        tokens
            .iter()
            .map(|t| quote(t, '"'))
            .collect::<Vec<_>>()
            .join(" AND "),
    )
}

/// Whether a search has a group of several tokens, whose order the text index cannot
/// check.
pub(super) fn has_phrases(groups: &[Vec<String>]) -> bool {
    groups.iter().any(|g| g.len() > 1)
}

/// The tenant id as the single token FTS5 indexes in `call_fts.tenant` (letters and
/// digits only, so the tokenizer cannot split it).
pub(super) fn tenant_token(tenant: &str) -> String {
    tenant
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase()
}

/// [`fts5_match`] restricted to one tenant's calls: its token is indexed with every call
/// (no body text can hold it: it is the tenant id without its underscore).
pub(super) fn fts5_match_in(tenant: &TenantId, groups: &[Vec<String>]) -> Option<String> {
    let text = fts5_match(groups)?;
    Some(format!(
        "{} AND {text}",
        quote(&tenant_token(tenant.as_str()), '"')
    ))
}

/// A tsquery literal: tokens of a group follow each other (`<->`), groups are ANDed.
pub(super) fn tsquery(groups: &[Vec<String>]) -> Option<String> {
    if groups.is_empty() {
        return None;
    }
    Some(
        groups
            .iter()
            .map(|g| {
                let phrase: Vec<String> = g.iter().map(|t| quote(t, '\'')).collect();
                format!("({})", phrase.join(" <-> "))
            })
            .collect::<Vec<_>>()
            .join(" & "),
    )
}

/// Postgres keeps at most this many positions of one lexeme.
const MAX_POSITIONS: usize = 256;

/// A tsvector literal of a call's tokens with their positions (1-based), so Postgres
/// stores exactly the tokens agv-server made, without its own parser.
pub(super) fn tsvector(tokens: &[String]) -> String {
    let mut positions: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, t) in tokens.iter().enumerate() {
        let p = positions.entry(t.as_str()).or_default();
        if p.len() < MAX_POSITIONS {
            p.push(i + 1);
        }
    }
    positions
        .iter()
        .map(|(t, p)| {
            let p: Vec<String> = p.iter().map(usize::to_string).collect();
            format!("{}:{}", quote(t, '\''), p.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_search_spells_the_index_of_migration_0019_word_for_word() {
        // A database reads an expression index only for the same expression.
        for (dialect, migration) in [
            (
                Dialect::Sqlite,
                include_str!("../../migrations/sqlite/0019_call_stopped_by.sql"),
            ),
            (
                Dialect::Postgres,
                include_str!("../../migrations/postgres/0019_call_stopped_by.sql"),
            ),
        ] {
            let (stopped, by) = STOPPED_BY.of(dialect);
            for expr in [stopped, by] {
                let bare = expr.replace("c.", "");
                assert!(migration.contains(&bare), "{dialect:?}: {bare}");
            }
        }
    }

    fn groups(g: &[&[&str]]) -> Vec<Vec<String>> {
        g.iter()
            .map(|g| g.iter().map(|t| (*t).to_owned()).collect())
            .collect()
    }

    #[test]
    fn match_expressions_require_every_group_as_a_phrase() {
        let g = groups(&[&["refund"], &["auto", "renew"]]);
        assert_eq!(
            fts5_match(&g).unwrap(),
            r#""auto" AND "refund" AND "renew""#
        );
        assert!(has_phrases(&g));
        assert!(!has_phrases(&groups(&[&["refund"], &["renew"]])));
        assert_eq!(tsquery(&g).unwrap(), "('refund') & ('auto' <-> 'renew')");
        assert_eq!(fts5_match(&[]), None);
        assert_eq!(tsquery(&[]), None);
    }

    #[test]
    fn documents_list_each_token_once_with_its_positions() {
        let t: Vec<String> = ["a", "b", "a"].iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(tsvector(&t), "'a':1,3 'b':2");
        assert_eq!(tsvector(&[]), "");
    }

    #[test]
    fn quotes_cannot_break_out() {
        assert_eq!(quote("x\"y", '"'), "\"x\"\"y\"");
        assert_eq!(quote("it's", '\''), "'it''s'");
    }
}
