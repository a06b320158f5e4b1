//! The SQL of a call search, shared by both backends so that they cannot drift apart:
//! the same conditions in the same order, only the full-text join and the JSON functions
//! differ. Also the text forms of a query and of an indexed document for each backend.
//! This module builds SQL text and parameters; it runs nothing.

use super::rows::{CALL_COLUMNS, MAX_PAGE, Param};
use crate::domain::{CallCursor, CallSearch, TenantId};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    fn placeholder(self, n: usize) -> String {
        match self {
            Self::Sqlite => format!("?{n}"),
            Self::Postgres => format!("${n}"),
        }
    }
}

/// The SQL and parameters of one page of a call search, newest first. `text` is the
/// backend's match expression ([`fts5_match`] or [`tsquery`]), `None` without text.
pub(super) fn search_calls_query<'a>(
    dialect: Dialect,
    tenant: &'a TenantId,
    search: &'a CallSearch,
    text: Option<&'a str>,
    after: Option<&'a CallCursor>,
    limit: u32,
) -> (String, Vec<Param<'a>>) {
    let ph = |n| dialect.placeholder(n);
    let mut params = vec![Param::Text(tenant.as_str())];
    let mut sql = format!("SELECT {CALL_COLUMNS} FROM ");
    let mut conds = format!("c.tenant_id = {}", ph(1));
    if let Some(text) = text {
        params.push(Param::Text(text));
        match dialect {
            // Joined on id too: a rowid reused after a deletion never shows another call.
            Dialect::Sqlite => {
                sql.push_str(
                    "call_fts JOIN calls c ON c.rowid = call_fts.rowid AND c.id = call_fts.call_id",
                );
                conds.push_str(&format!(" AND call_fts MATCH {}", ph(2)));
            }
            Dialect::Postgres => {
                sql.push_str("call_search s JOIN calls c ON c.id = s.call_id");
                conds.push_str(&format!(" AND s.doc @@ {}::text::tsquery", ph(2)));
            }
        }
    } else {
        sql.push_str("calls c");
    }
    let mut cond = |column: &str, op: &str, p: Param<'a>| {
        params.push(p);
        conds.push_str(&format!(" AND c.{column} {op} {}", ph(params.len())));
    };
    let f = &search.filter;
    if let Some(t) = f.since {
        cond("created_at", ">=", Param::BigInt(t.millis()));
    }
    if let Some(t) = f.until {
        cond("created_at", "<", Param::BigInt(t.millis()));
    }
    if let Some(u) = &f.end_user {
        cond("end_user", "=", Param::Text(u));
    }
    if let Some(s) = &f.session_id {
        cond("session_id", "=", Param::Text(s));
    }
    if let Some(k) = &f.key_id {
        cond("key_id", "=", Param::Text(k.as_str()));
    }
    if let Some(m) = &f.model {
        cond("model", "=", Param::Text(m));
    }
    if let Some(s) = f.status {
        cond("status", "=", Param::Int(i32::from(s)));
    }
    if let Some((low, high)) = search.status_range {
        cond("status", ">=", Param::Int(i32::from(low)));
        cond("status", "<", Param::Int(i32::from(high)));
    }
    if let Some(b) = f.blocked {
        cond("blocked", "=", Param::Bool(b));
    }
    if let Some(policy) = &search.policy {
        params.push(Param::Text(policy));
        let p = ph(params.len());
        // Decisions are JSON text: a call is this policy's when it was stopped by it, or
        // when a decision of it did anything but pass (a throttle, a freeze).
        let decided = match dialect {
            Dialect::Sqlite => format!(
                "EXISTS (SELECT 1 FROM json_each(c.decisions) d WHERE json_extract(d.value, '$.policy') = {p} AND json_extract(d.value, '$.outcome') <> 'pass')"
            ),
            // json, not jsonb: jsonb refuses a "\u0000" escape that a reason may hold.
            Dialect::Postgres => format!(
                "EXISTS (SELECT 1 FROM json_array_elements(c.decisions::json) d WHERE d->>'policy' = {p} AND d->>'outcome' <> 'pass')"
            ),
        };
        conds.push_str(&format!(" AND (c.blocked_by = {p} OR {decided})"));
    }
    if let Some(c) = after {
        params.push(Param::BigInt(c.created_at.millis()));
        params.push(Param::Text(c.id.as_str()));
        conds.push_str(&format!(
            " AND (c.created_at, c.id) < ({}, {})",
            ph(params.len() - 1),
            ph(params.len())
        ));
    }
    params.push(Param::BigInt(i64::from(limit.min(MAX_PAGE))));
    sql.push_str(&format!(
        " WHERE {conds} ORDER BY c.created_at DESC, c.id DESC LIMIT {}",
        ph(params.len())
    ));
    (sql, params)
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

/// An FTS5 MATCH expression: every group a quoted phrase, all of them required.
pub(super) fn fts5_match(groups: &[Vec<String>]) -> Option<String> {
    if groups.is_empty() {
        return None;
    }
    Some(
        groups
            .iter()
            .map(|g| quote(&g.join(" "), '"'))
            .collect::<Vec<_>>()
            .join(" AND "),
    )
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

    fn groups(g: &[&[&str]]) -> Vec<Vec<String>> {
        g.iter()
            .map(|g| g.iter().map(|t| (*t).to_owned()).collect())
            .collect()
    }

    #[test]
    fn match_expressions_require_every_group_as_a_phrase() {
        let g = groups(&[&["refund"], &["auto", "renew"]]);
        assert_eq!(fts5_match(&g).unwrap(), r#""refund" AND "auto renew""#);
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
