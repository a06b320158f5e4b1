//! The search language a person types into the console or `GET /v1/calls?q=…`, and the
//! text rules both store backends share.
//!
//! `user:cust_8372 policy:prompt_injection since:24h "auto-renew" refund` parses into a
//! [`SearchQuery`]: bare words, quoted phrases and typed filters. Anything malformed is a
//! [`ParseError`] that says what is wrong and what is expected (the API answers it with a
//! 400). Relative times are resolved against a `now` given by the caller, so parsing
//! stays pure.
//!
//! Text matching is defined here, once, for both backends: a body is reduced to its
//! readable text ([`index_tokens`]), split into lowercase runs of letters and digits
//! ([`tokenize`]), and a query becomes groups of tokens that must appear next to each
//! other ([`CallSearch::text`]). The stores only ever see these tokens, so SQLite FTS5
//! and Postgres full-text search answer the same query the same way.
//! This module performs no I/O.

use super::incident::{IncidentStatus, Severity};
use super::{CallFilter, KeyId, ParseError, Timestamp, decision::policy as ids};
use std::collections::HashSet;

/// The longest query accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 1000;
/// The most tokens of one call that are indexed (request first, then response). Postgres
/// positions stop at 16,383, so both backends index the same prefix of a long call.
pub const MAX_INDEXED_TOKENS: usize = 16_000;
/// Tokens longer than this (base64 blobs, hashes) are not indexed on either backend.
pub const MAX_TOKEN_BYTES: usize = 100;

/// An HTTP status to match: one code, or a class (`4` for 4xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Exact(u16),
    Class(u16),
}

impl StatusFilter {
    /// The statuses matched, as `low..high`.
    pub fn range(self) -> (u16, u16) {
        match self {
            Self::Exact(s) => (s, s + 1),
            Self::Class(c) => (c * 100, c * 100 + 100),
        }
    }
}

/// A parsed search. Every filter narrows the result; terms and phrases must all match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchQuery {
    /// Bare words, as typed.
    pub terms: Vec<String>,
    /// Quoted phrases, without the quotes.
    pub phrases: Vec<String>,
    pub end_user: Option<String>,
    pub session_id: Option<String>,
    pub key_id: Option<KeyId>,
    pub model: Option<String>,
    pub status: Option<StatusFilter>,
    /// A policy id (`dg-005`, `budget`, `killswitch`, …); friendly names are resolved.
    pub policy: Option<String>,
    /// For the incident search: `severity:`.
    pub severity: Option<Severity>,
    /// For the incident search: `state:` (an incident's status).
    pub state: Option<IncidentStatus>,
    pub blocked: Option<bool>,
    /// Inclusive.
    pub since: Option<Timestamp>,
    /// Exclusive.
    pub until: Option<Timestamp>,
}

const EXPECTED_FILTERS: &str =
    "user:, session:, key:, model:, status:, policy:, severity:, state:, blocked:, since:, until:";

fn err(msg: impl Into<String>) -> ParseError {
    ParseError::new(msg)
}

/// A value shortened for an error message.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if s.chars().count() > 60 {
        out.push('…');
    }
    out
}

impl SearchQuery {
    /// Parses what a person typed. `now` resolves relative times such as `since:24h`.
    pub fn parse(input: &str, now: Timestamp) -> Result<Self, ParseError> {
        let chars = input.chars().count();
        if chars > MAX_QUERY_CHARS {
            return Err(err(format!(
                "the search is {chars} characters long; the most accepted is {MAX_QUERY_CHARS}: search for fewer or shorter words"
            )));
        }
        let mut q = Self::default();
        let mut seen: HashSet<&'static str> = HashSet::new();
        let unsearchable = |text: &str| tokenize(text).next().is_none();
        for token in lex(input)? {
            match token {
                Lexed::Phrase(p) if unsearchable(&p) => {
                    return Err(err(format!(
                        "the phrase \"{}\" has no letters or digits to search for: put words between the quotes",
                        shown(&p)
                    )));
                }
                Lexed::Phrase(p) => q.phrases.push(p),
                Lexed::Word(w) if unsearchable(&w) => {
                    return Err(err(format!(
                        "'{}' has no letters or digits to search for: search for words, or quote text that contains them",
                        shown(&w)
                    )));
                }
                Lexed::Word(w) => q.terms.push(w),
                Lexed::Filter { key, value } => {
                    let name = filter_name(&key).ok_or_else(|| {
                        err(format!(
                            "unknown filter '{}:': the filters are {EXPECTED_FILTERS} (to search for text containing ':', put it in double quotes)",
                            shown(&key)
                        ))
                    })?;
                    if value.trim().is_empty() {
                        return Err(err(format!(
                            "{name}: has no value: write it without a space, e.g. {}",
                            example(name)
                        )));
                    }
                    if !seen.insert(name) {
                        return Err(err(format!(
                            "{name}: is given twice: give each filter at most once"
                        )));
                    }
                    q.apply(name, value.trim(), now)?;
                }
            }
        }
        if let (Some(since), Some(until)) = (q.since, q.until)
            && since >= until
        {
            return Err(err(format!(
                "since: ({since}) is not before until: ({until}): give a start that is earlier than the end"
            )));
        }
        Ok(q)
    }

    fn apply(&mut self, name: &'static str, v: &str, now: Timestamp) -> Result<(), ParseError> {
        // The value's own error, named after its filter.
        let named = |e: ParseError| err(format!("{name}: {e}"));
        match name {
            "user" => self.end_user = Some(v.to_owned()),
            "session" => self.session_id = Some(v.to_owned()),
            "model" => self.model = Some(v.to_owned()),
            "key" => self.key_id = Some(KeyId::parse(v).map_err(named)?),
            "status" => self.status = Some(parse_status(v)?),
            "policy" => self.policy = Some(parse_policy(v)?),
            "severity" => self.severity = Some(Severity::parse(v).map_err(named)?),
            "state" => self.state = Some(IncidentStatus::parse(v).map_err(named)?),
            "blocked" => {
                self.blocked = Some(match v.to_ascii_lowercase().as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(err(format!(
                            "blocked: '{}' is not true or false: use blocked:true or blocked:false",
                            shown(v)
                        )));
                    }
                });
            }
            "since" => self.since = Some(parse_time("since", v, now)?),
            "until" => self.until = Some(parse_time("until", v, now)?),
            _ => {
                return Err(err(format!(
                    "unknown filter '{name}:': the filters are {EXPECTED_FILTERS}"
                )));
            }
        }
        Ok(())
    }

    /// The query as a search over recorded calls. Incident-only filters (`severity:`,
    /// `state:`) are refused rather than ignored.
    pub fn to_call_search(&self) -> Result<CallSearch, ParseError> {
        if self.severity.is_some() || self.state.is_some() {
            return Err(err(
                "severity: and state: filter incidents, not calls: remove them to search calls, or search incidents instead",
            ));
        }
        let (status, status_range) = match self.status {
            Some(StatusFilter::Exact(s)) => (Some(s), None),
            Some(class @ StatusFilter::Class(_)) => (None, Some(class.range())),
            None => (None, None),
        };
        let mut text: Vec<Vec<String>> = Vec::new();
        for t in self.terms.iter().chain(&self.phrases) {
            let group: Vec<String> = tokenize(t).collect();
            if !group.is_empty() && !text.contains(&group) {
                text.push(group);
            }
        }
        Ok(CallSearch {
            filter: CallFilter {
                since: self.since,
                until: self.until,
                end_user: self.end_user.clone(),
                session_id: self.session_id.clone(),
                key_id: self.key_id.clone(),
                model: self.model.clone(),
                status,
                blocked: self.blocked,
            },
            status_range,
            policy: self.policy.clone(),
            text,
        })
    }
}

/// Merges a filter given both in a typed query and as a request parameter: one side only,
/// or equal values, is fine; different values are refused rather than one silently
/// winning.
pub fn merge_filter<T: PartialEq>(
    name: &str,
    slot: &mut Option<T>,
    other: Option<T>,
) -> Result<(), ParseError> {
    match (slot.as_ref(), other) {
        (Some(a), Some(b)) if *a != b => Err(err(format!(
            "'{name}' is given both as a parameter and in the query with different values: give it once"
        ))),
        (None, Some(b)) => {
            *slot = Some(b);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Two time ranges given both ways: the narrower one (the later start, the earlier end).
pub fn narrower(
    (since, until): (Option<Timestamp>, Option<Timestamp>),
    (since2, until2): (Option<Timestamp>, Option<Timestamp>),
) -> (Option<Timestamp>, Option<Timestamp>) {
    let end = match (until, until2) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    (since.max(since2), end)
}

/// What the store needs to search calls: the plain filters, plus a status class, a policy
/// and the text to match.
#[derive(Debug, Clone, Default)]
pub struct CallSearch {
    pub filter: CallFilter,
    /// Statuses `low..high` (a class such as 4xx).
    pub status_range: Option<(u16, u16)>,
    /// Calls stopped by this policy: `blocked_by` equals it, or a decision of this policy
    /// did not pass.
    pub policy: Option<String>,
    /// Groups of tokens; each group must appear in the call's text with its tokens next to
    /// each other and in order (a group of one token is a word). Every group must match.
    pub text: Vec<Vec<String>>,
}

/// One lexical unit of a query.
#[derive(Debug, PartialEq)]
enum Lexed {
    Word(String),
    Phrase(String),
    Filter { key: String, value: String },
}

/// Splits a query into words, quoted phrases and `key:value` filters (the value may be
/// quoted: `user:"Jane Doe"`).
fn lex(input: &str) -> Result<Vec<Lexed>, ParseError> {
    let mut out = Vec::new();
    let mut it = input.char_indices().peekable();
    while let Some(&(start, c)) = it.peek() {
        if c.is_whitespace() {
            it.next();
            continue;
        }
        if c == '"' {
            it.next();
            out.push(Lexed::Phrase(quoted(input, start, &mut it)?));
            continue;
        }
        // A word runs to the next whitespace; a quote right after `key:` opens its value.
        let mut word = String::new();
        let mut value_quoted = None;
        while let Some(&(_, c)) = it.peek() {
            if c.is_whitespace() {
                break;
            }
            if c == '"' {
                if word.ends_with(':') && !word[..word.len() - 1].contains(':') {
                    let (at, _) = it.next().unwrap_or((start, c));
                    value_quoted = Some(quoted(input, at, &mut it)?);
                    break;
                }
                return Err(err(format!(
                    "a quote inside '{}' : put whole phrases in double quotes, e.g. \"auto-renew\"",
                    shown(&input[start..])
                )));
            }
            word.push(c);
            it.next();
        }
        match word.split_once(':') {
            Some((key, value)) if is_filter_key(key) => out.push(Lexed::Filter {
                key: key.to_ascii_lowercase(),
                value: value_quoted.unwrap_or_else(|| value.to_owned()),
            }),
            _ => out.push(Lexed::Word(word)),
        }
    }
    Ok(out)
}

/// Reads a quoted text whose opening quote (at byte `open`) was consumed.
fn quoted(
    input: &str,
    open: usize,
    it: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
) -> Result<String, ParseError> {
    let mut s = String::new();
    for (_, c) in it.by_ref() {
        if c == '"' {
            if s.trim().is_empty() {
                return Err(err(
                    "an empty phrase \"\": put the words to search for between the quotes",
                ));
            }
            return Ok(s);
        }
        s.push(c);
    }
    Err(err(format!(
        "the quote opened at character {} is never closed: end the phrase with a second \"",
        input[..open].chars().count() + 1
    )))
}

/// Whether `key` in `key:value` looks like a filter name (letters and `_`), as opposed to
/// text that happens to contain a colon, such as `12:30`.
fn is_filter_key(key: &str) -> bool {
    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphabetic() || c == '_')
}

/// Each filter's name and an example of its use.
const FILTERS: &[(&str, &str)] = &[
    ("user", "user:cust_8372"),
    ("session", "session:checkout-42"),
    ("key", "key:key_0123456789abcdef0123456789abcdef"),
    ("model", "model:gpt-4o-mini"),
    ("status", "status:423 or status:5xx"),
    ("policy", "policy:prompt_injection or policy:dg-005"),
    ("severity", "severity:high"),
    ("state", "state:open"),
    ("blocked", "blocked:true"),
    ("since", "since:24h"),
    ("until", "until:2024-05-01"),
];

/// The filter `key` names (`end_user` is another name of `user`).
fn filter_name(key: &str) -> Option<&'static str> {
    let key = if key == "end_user" { "user" } else { key };
    FILTERS
        .iter()
        .map(|(name, _)| *name)
        .find(|name| *name == key)
}

fn example(name: &str) -> &'static str {
    let filter = FILTERS.iter().find(|(n, _)| *n == name);
    filter.map_or("until:2024-05-01", |(_, example)| example)
}

fn parse_status(v: &str) -> Result<StatusFilter, ParseError> {
    let bad = || {
        err(format!(
            "status: '{}' is not an HTTP status: use a code from 100 to 599 such as 200 or 423, or a class such as 4xx or 5xx",
            shown(v)
        ))
    };
    let lower = v.to_ascii_lowercase();
    if let Some(class) = lower.strip_suffix("xx") {
        return match class.parse::<u16>() {
            Ok(c @ 1..=5) if class.len() == 1 => Ok(StatusFilter::Class(c)),
            _ => Err(bad()),
        };
    }
    match lower.parse::<u16>() {
        Ok(s @ 100..=599) if lower.len() == 3 => Ok(StatusFilter::Exact(s)),
        _ => Err(bad()),
    }
}

/// Friendly names of the built-in policies, and the ids they stand for.
const POLICY_NAMES: &[(&str, &str)] = &[
    ("max_cost", ids::MAX_COST),
    ("max_tokens", ids::MAX_TOKENS),
    ("rate_limit", ids::RATE_LIMIT),
    ("failure_spike", ids::FAILURE_SPIKE),
    ("prompt_injection", ids::PROMPT_INJECTION),
    ("budget", ids::BUDGET),
    ("killswitch", ids::KILL_SWITCH),
    ("kill_switch", ids::KILL_SWITCH),
];

/// A policy by id (`dg-005`, `budget`) or friendly name (`prompt_injection`), as its id.
pub fn parse_policy(v: &str) -> Result<String, ParseError> {
    let lower = v.to_ascii_lowercase().replace('-', "_");
    if let Some((_, id)) = POLICY_NAMES.iter().find(|(name, _)| *name == lower) {
        return Ok((*id).to_owned());
    }
    // The incident engine's own rules (an incident's `rule`; no call is blocked by them).
    use super::incident::rule;
    if let Some(r) = [
        rule::UPSTREAM_ERROR,
        rule::COST_SPIKE,
        rule::BUDGET_SOFT,
        rule::OVERFLOW,
    ]
    .into_iter()
    .find(|r| *r == lower)
    {
        return Ok(r.to_owned());
    }
    // Policy ids: the built-in dg-001 … dg-005 and any further dg-NNN rule.
    let id = v.to_ascii_lowercase();
    if let Some(n) = id.strip_prefix("dg-")
        && n.len() == 3
        && n.bytes().all(|b| b.is_ascii_digit())
    {
        return Ok(id);
    }
    Err(err(format!(
        "policy: '{}' is not a policy: use an id such as dg-005, budget or killswitch, or a name: prompt_injection, max_cost, max_tokens, rate_limit, failure_spike, budget, killswitch (incidents also: upstream_error, cost_spike, budget_soft, overflow)",
        shown(v)
    )))
}

fn parse_time(name: &str, v: &str, now: Timestamp) -> Result<Timestamp, ParseError> {
    let bad = || {
        err(format!(
            "{name}: '{}' is not a time: use a duration back from now such as 15m, 24h or 7d, a date such as 2024-05-01, or a time such as 2024-05-01T12:00:00Z",
            shown(v)
        ))
    };
    if v.starts_with(|c: char| c.is_ascii_digit()) && !v.contains('-') {
        let d = super::time::parse_duration(v).map_err(|_| bad())?;
        let ms = i64::try_from(d.as_millis()).map_err(|_| bad())?;
        return Ok(Timestamp::from_millis(now.millis().saturating_sub(ms)));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return Ok(Timestamp::from_millis(t.timestamp_millis()));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(Timestamp::from_millis(t.and_utc().timestamp_millis()));
    }
    Err(bad())
}

/// The words of a text: maximal runs of letters and digits, lowercased.
pub fn tokenize(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
}

/// The tokens of a call that are indexed: the readable text of the request body, then of
/// the response body, at most [`MAX_INDEXED_TOKENS`] of them.
///
/// JSON bodies contribute their string values (not their keys); a streamed response
/// (`data: {…}` lines) contributes each choice's deltas joined back into whole text, so
/// a word split across chunks is still found. Anything else is indexed as plain text.
pub fn index_tokens(request_body: &str, response_body: Option<&str>) -> Vec<String> {
    let mut text = readable_text(request_body);
    text.push('\n');
    if let Some(r) = response_body {
        text.push_str(&readable_text(r));
    }
    tokenize(&text)
        .filter(|t| t.len() <= MAX_TOKEN_BYTES)
        .take(MAX_INDEXED_TOKENS)
        .collect()
}

/// Whether every group of several tokens appears in `tokens` as a run, in order (a group
/// of one token is a word, found by the index alone).
pub fn contains_phrases(groups: &[Vec<String>], tokens: &[String]) -> bool {
    groups
        .iter()
        .filter(|g| g.len() > 1)
        .all(|g| tokens.windows(g.len()).any(|w| w == g.as_slice()))
}

fn readable_text(body: &str) -> String {
    let trimmed = body.trim_start();
    if (trimmed.starts_with('{') || trimmed.starts_with('['))
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(trimmed)
    {
        let mut out = String::new();
        json_strings(&v, &mut out);
        return out;
    }
    if trimmed.starts_with("data:") || trimmed.starts_with("event:") {
        return sse_text(trimmed);
    }
    body.to_owned()
}

fn json_strings(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| json_strings(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| json_strings(x, out)),
        _ => {}
    }
}

/// The text of a relayed stream: every choice's `delta.content` joined, then any other
/// data that is not a chunk (an error event, for instance).
fn sse_text(body: &str) -> String {
    let mut choices: Vec<String> = Vec::new();
    let mut other = String::new();
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let data = data.trim();
        if data == "[DONE]" {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
            other.push_str(data);
            other.push('\n');
            continue;
        };
        match v.get("choices").and_then(|c| c.as_array()) {
            Some(list) => {
                for (i, choice) in list.iter().enumerate() {
                    let index = choice
                        .get("index")
                        .and_then(serde_json::Value::as_u64)
                        .and_then(|n| usize::try_from(n).ok())
                        .unwrap_or(i)
                        .min(64);
                    if let Some(delta) = choice.get("delta") {
                        if choices.len() <= index {
                            choices.resize(index + 1, String::new());
                        }
                        if let Some(s) = delta.get("content").and_then(|c| c.as_str()) {
                            choices[index].push_str(s);
                        }
                    }
                }
            }
            None => json_strings(&v, &mut other),
        }
    }
    let mut out = choices.join("\n");
    out.push('\n');
    out.push_str(&other);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn parse(s: &str) -> Result<SearchQuery, ParseError> {
        SearchQuery::parse(s, Timestamp::from_millis(NOW))
    }

    fn error(s: &str) -> String {
        parse(s).expect_err(s).0
    }

    #[test]
    fn the_example_from_the_issue_parses_into_words_phrases_and_filters() {
        let q = parse(r#"user:cust_8372 policy:prompt_injection since:24h "auto-renew" refund"#)
            .unwrap();
        assert_eq!(q.end_user.as_deref(), Some("cust_8372"));
        assert_eq!(q.policy.as_deref(), Some("dg-005"));
        assert_eq!(q.since, Some(Timestamp::from_millis(NOW - 86_400_000)));
        assert_eq!(q.phrases, vec!["auto-renew"]);
        assert_eq!(q.terms, vec!["refund"]);
    }

    #[test]
    fn order_does_not_matter() {
        let a = parse(r#"refund user:u1 "late fee" model:gpt-4o blocked:false"#).unwrap();
        let b = parse(r#"blocked:false "late fee" model:gpt-4o refund user:u1"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.model.as_deref(), Some("gpt-4o"));
        assert_eq!(a.blocked, Some(false));
    }

    /// Each accepted query and what it sets on an otherwise empty query.
    #[test]
    fn each_filter_takes_its_values() {
        /// What a case sets on an empty query.
        type Set = fn(&mut SearchQuery);
        let cases: [(&str, Set); 10] = [
            ("   ", |_| {}),
            (r#"user:"Jane Doe" session:ses-1 model:gpt-4o-mini"#, |q| {
                q.end_user = Some("Jane Doe".into());
                q.session_id = Some("ses-1".into());
                q.model = Some("gpt-4o-mini".into());
            }),
            // end_user: is an alias of user:.
            ("end_user:x", |q| q.end_user = Some("x".into())),
            ("status:423", |q| q.status = Some(StatusFilter::Exact(423))),
            ("status:5xx", |q| q.status = Some(StatusFilter::Class(5))),
            ("status:4XX", |q| q.status = Some(StatusFilter::Class(4))),
            ("severity:HIGH state:acknowledged blocked:true", |q| {
                q.severity = Some(Severity::High);
                q.state = Some(IncidentStatus::Acknowledged);
                q.blocked = Some(true);
            }),
            // Text with a colon that is not a filter name stays a word.
            ("12:30", |q| q.terms = vec!["12:30".into()]),
            ("\"https://x.io\"", |q| {
                q.phrases = vec!["https://x.io".into()]
            }),
            // Phrases keep their inner spacing and words next to quotes split.
            (r#""late  fee"refund  "x y""#, |q| {
                q.phrases = vec!["late  fee".into(), "x y".into()];
                q.terms = vec!["refund".into()];
            }),
        ];
        for (query, set) in cases {
            let mut expected = SearchQuery::default();
            set(&mut expected);
            assert_eq!(parse(query).unwrap(), expected, "{query:?}");
        }
        let id = KeyId::generate();
        assert_eq!(parse(&format!("key:{id}")).unwrap().key_id, Some(id));
        assert_eq!(StatusFilter::Class(4).range(), (400, 500));
        assert_eq!(StatusFilter::Exact(200).range(), (200, 201));
    }

    #[test]
    fn policy_takes_ids_and_friendly_names() {
        for (typed, id) in [
            ("prompt_injection", "dg-005"),
            ("max_cost", "dg-001"),
            ("max_tokens", "dg-002"),
            ("rate_limit", "dg-003"),
            ("failure_spike", "dg-004"),
            ("budget", "budget"),
            ("killswitch", "killswitch"),
            ("dg-005", "dg-005"),
            ("DG-003", "dg-003"),
            ("prompt-injection", "dg-005"),
        ] {
            assert_eq!(
                parse(&format!("policy:{typed}")).unwrap().policy.as_deref(),
                Some(id),
                "{typed}"
            );
        }
    }

    /// Each refused query and the words its message must contain.
    #[test]
    fn refused_queries_say_why() {
        let status = &["4xx", "200"][..];
        let time = &["15m", "2024-05-01"][..];
        let cases: &[(&str, &[&str])] = &[
            ("key:abc", &["key_"]),
            ("status:42", status),
            ("status:600", status),
            ("status:9xx", status),
            ("status:ok", status),
            ("status:0200", status),
            ("policy:injection", &["prompt_injection", "dg-005"]),
            ("policy:dg-5", &[]),
            ("severity:urgent", &["low, medium, high or critical"]),
            ("state:closed", &["open, acknowledged or resolved"]),
            ("blocked:yes", &["blocked:true or blocked:false"]),
            ("since:yesterday", time),
            ("until:7w", time),
            ("since:2023-13-01", time),
            ("since:-5m", time),
            ("since:1h until:2h", &["not before until"]),
            ("since:2024-05-02 until:2024-05-01", &[]),
            ("since:2024-05-01 until:2024-05-01", &[]),
            ("colour:red", &["'colour:'", "user:", "quotes"]),
            ("user: cust_1", &["user: has no value", "user:cust_8372"]),
            ("since:", &["since:24h"]),
            (r#"user:"  ""#, &["empty"]),
            ("user:a user:b", &["given twice"]),
            ("user:a end_user:b", &["given twice"]),
            (r#"refund "auto renew"#, &["character 8", "never closed"]),
            (r#"user:"jane"#, &["never closed"]),
            (r#""""#, &["empty phrase"]),
            (r#"ab"cd""#, &["double quotes"]),
            ("refund !!", &["no letters or digits"]),
            (r#"" - ""#, &["no letters or digits"]),
        ];
        for (query, needles) in cases {
            let e = error(query);
            for needle in *needles {
                assert!(e.contains(needle), "{query:?} names {needle:?}: {e}");
            }
        }
        for (query, filter) in [("key:abc", "key:"), ("state:closed", "state:")] {
            let e = error(query);
            assert!(e.starts_with(filter), "{query:?}: {e}");
        }
    }

    #[test]
    fn since_and_until_take_durations_dates_and_times() {
        let q = parse("since:7d until:15m").unwrap();
        assert_eq!(q.since, Some(Timestamp::from_millis(NOW - 7 * 86_400_000)));
        assert_eq!(q.until, Some(Timestamp::from_millis(NOW - 900_000)));
        let q = parse("since:2023-11-01 until:2023-11-14T12:00:00Z").unwrap();
        assert_eq!(q.since.unwrap().to_rfc3339(), "2023-11-01T00:00:00.000Z");
        assert_eq!(q.until.unwrap().to_rfc3339(), "2023-11-14T12:00:00.000Z");
        let q = parse("since:2023-11-14T13:00:00+01:00").unwrap();
        assert_eq!(q.since.unwrap().to_rfc3339(), "2023-11-14T12:00:00.000Z");
    }

    #[test]
    fn filters_given_both_ways_must_agree_and_times_narrow() {
        let mut slot = Some("a".to_owned());
        assert!(merge_filter("user", &mut slot, Some("a".to_owned())).is_ok());
        assert!(
            merge_filter("user", &mut slot, Some("b".to_owned()))
                .unwrap_err()
                .0
                .contains("'user'")
        );
        let mut empty: Option<u16> = None;
        merge_filter("status", &mut empty, Some(423)).unwrap();
        assert_eq!(empty, Some(423));
        let t = Timestamp::from_millis;
        assert_eq!(
            narrower((Some(t(1)), Some(t(9))), (Some(t(3)), None)),
            (Some(t(3)), Some(t(9)))
        );
        assert_eq!(
            narrower((None, Some(t(9))), (None, Some(t(5)))),
            (None, Some(t(5)))
        );
    }

    #[test]
    fn absurdly_long_queries_are_refused_with_the_limit() {
        let e = error(&"a ".repeat(600));
        assert!(e.contains("1000"), "{e}");
        assert!(parse(&"a".repeat(1000)).is_ok());
    }

    #[test]
    fn a_call_search_groups_words_and_phrases_into_tokens() {
        let q = parse(r#"Refund "Auto-Renew policy" e-mail status:4xx policy:budget"#).unwrap();
        let s = q.to_call_search().unwrap();
        assert_eq!(
            s.text,
            vec![
                vec!["refund".to_owned()],
                vec!["e".to_owned(), "mail".to_owned()],
                vec!["auto".to_owned(), "renew".to_owned(), "policy".to_owned()],
            ]
        );
        assert_eq!(s.status_range, Some((400, 500)));
        assert_eq!(s.filter.status, None);
        assert_eq!(s.policy.as_deref(), Some("budget"));
        let s = parse("status:200").unwrap().to_call_search().unwrap();
        assert_eq!((s.filter.status, s.status_range), (Some(200), None));
        assert!(
            parse("state:open")
                .unwrap()
                .to_call_search()
                .unwrap_err()
                .0
                .contains("incidents")
        );
    }

    #[test]
    fn json_bodies_index_their_values_not_their_keys() {
        let req = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Cancel my auto-renew, please"}]}"#;
        let toks = index_tokens(
            req,
            Some(r#"{"choices":[{"message":{"content":"Done."}}]}"#),
        );
        assert!(toks.contains(&"renew".to_owned()));
        assert!(toks.contains(&"done".to_owned()));
        assert!(!toks.contains(&"messages".to_owned()));
        assert!(!toks.contains(&"content".to_owned()));
    }

    #[test]
    fn streamed_responses_are_indexed_as_the_joined_text() {
        let sse = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Your ref\"}}]}\n\n\
                   data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"und is due\"}}]}\n\n\
                   data: [DONE]\n\n";
        let toks = index_tokens("{}", Some(sse));
        assert_eq!(toks, vec!["your", "refund", "is", "due"]);
    }

    #[test]
    fn plain_and_truncated_bodies_are_indexed_as_text_and_long_tokens_are_skipped() {
        let long = "x".repeat(MAX_TOKEN_BYTES + 1);
        let toks = index_tokens(&format!("{{\"content\": \"Straße {long} ok"), None);
        assert!(toks.contains(&"straße".to_owned()));
        assert!(toks.contains(&"ok".to_owned()));
        assert!(!toks.contains(&long));
        let many = "w ".repeat(MAX_INDEXED_TOKENS + 10);
        assert_eq!(index_tokens(&many, None).len(), MAX_INDEXED_TOKENS);
    }

    #[test]
    fn phrases_must_appear_as_runs_in_order_and_words_are_left_to_the_index() {
        let t = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let doc = t("please cancel my auto renew now");
        let groups = |g: &[&str]| g.iter().map(|p| t(p)).collect::<Vec<_>>();
        assert!(contains_phrases(&groups(&["auto renew"]), &doc));
        assert!(contains_phrases(
            &groups(&["auto renew", "cancel my"]),
            &doc
        ));
        assert!(!contains_phrases(&groups(&["renew auto"]), &doc));
        assert!(!contains_phrases(&groups(&["auto now"]), &doc));
        assert!(!contains_phrases(
            &groups(&["auto renew", "now please"]),
            &doc
        ));
        assert!(
            contains_phrases(&groups(&["absent"]), &doc),
            "a word is the index's job"
        );
        assert!(contains_phrases(&[], &doc));
    }
}
