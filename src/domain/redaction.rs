//! Per-tenant redaction of call bodies before they are stored: keep bodies whole, keep only
//! their SHA-256, or replace what looks personal (emails, phone numbers, card numbers) and
//! what the tenant's own patterns match with a `[REDACTED:<what>]` marker.
//!
//! The SHA-256 fields of a call are always those of the body as it was sent, so a customer
//! holding the original can still prove it against the record. Pure: the recorder and the
//! exports call [`Redactor::apply`] on a record.

use super::{CallRecord, ParseError};
use regex::{Captures, Regex};
use serde::{Deserialize, Serialize};

/// What is kept of a call's request and response bodies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyStorage {
    /// The bodies as sent and received.
    #[default]
    Full,
    /// No bodies: only their SHA-256 (and the call's metadata) are stored.
    HashesOnly,
    /// The bodies with the chosen patterns replaced by `[REDACTED:<what>]`.
    Redact,
}

/// The built-in patterns a tenant can choose by name.
pub const BUILT_IN: &[&str] = &["email", "phone", "card"];
/// The most custom patterns a tenant may set, and the longest one.
const MAX_CUSTOM: usize = 20;
const MAX_PATTERN_LEN: usize = 500;
/// Compiled size limit for one custom pattern (the regex crate runs in linear time; this
/// only bounds memory).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A tenant's choice, part of its policy settings (`"redaction": {…}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    pub mode: BodyStorage,
    /// Built-in patterns applied in `redact` mode: any of `email`, `phone`, `card`.
    pub patterns: Vec<String>,
    /// The tenant's own regular expressions (Rust `regex` syntax), applied in `redact` mode.
    pub custom: Vec<String>,
}

impl Default for RedactionConfig {
    fn default() -> Self {
        Self {
            mode: BodyStorage::Full,
            patterns: BUILT_IN.iter().map(|s| (*s).to_owned()).collect(),
            custom: Vec::new(),
        }
    }
}

impl RedactionConfig {
    /// Compiles the configuration; `None` when bodies are kept whole (nothing to do). A
    /// bad pattern is an error naming it.
    pub fn compile(&self) -> Result<Option<Redactor>, ParseError> {
        if self.mode == BodyStorage::Full {
            return Ok(None);
        }
        self.build().map(Some)
    }

    /// Checks the settings without keeping anything: pattern names, and custom patterns
    /// only when there are some (the built-in ones are known to compile).
    pub fn validate(&self) -> Result<(), ParseError> {
        if self.mode == BodyStorage::Full && self.custom.is_empty() {
            let unknown = self
                .patterns
                .iter()
                .find(|p| !BUILT_IN.contains(&p.as_str()));
            return unknown.map_or(Ok(()), |p| Err(unknown_pattern(p)));
        }
        self.build().map(|_| ())
    }

    fn build(&self) -> Result<Redactor, ParseError> {
        let mut rules = Vec::new();
        for name in &self.patterns {
            let rule = match name.as_str() {
                "email" => Rule::Email(regex(
                    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
                )?),
                "phone" => Rule::Phone(regex(r"\+?\(?\d[\d ().-]{6,20}\d")?),
                "card" => Rule::Card(regex(r"\b\d(?:[ -]?\d){12,18}\b")?),
                other => return Err(unknown_pattern(other)),
            };
            rules.push(rule);
        }
        if self.custom.len() > MAX_CUSTOM {
            return Err(ParseError::new(format!(
                "redaction.custom holds {} patterns; at most {MAX_CUSTOM} are allowed",
                self.custom.len()
            )));
        }
        for (i, pattern) in self.custom.iter().enumerate() {
            if pattern.is_empty() || pattern.len() > MAX_PATTERN_LEN {
                return Err(ParseError::new(format!(
                    "redaction.custom[{i}] must be 1 to {MAX_PATTERN_LEN} characters long"
                )));
            }
            let re = regex::RegexBuilder::new(pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| {
                    ParseError::new(format!(
                        "redaction.custom[{i}] is not a valid regular expression: {e}"
                    ))
                })?;
            if re.is_match("") {
                return Err(ParseError::new(format!(
                    "redaction.custom[{i}] matches the empty text; give a pattern that matches at least one character"
                )));
            }
            rules.push(Rule::Custom(re));
        }
        Ok(Redactor {
            mode: self.mode,
            rules,
        })
    }
}

fn unknown_pattern(name: &str) -> ParseError {
    ParseError::new(format!(
        "unknown redaction pattern '{name}': use {} (or a regular expression in \"custom\")",
        BUILT_IN.join(", ")
    ))
}

fn regex(p: &str) -> Result<Regex, ParseError> {
    Regex::new(p).map_err(|e| ParseError::new(format!("built-in pattern failed to compile: {e}")))
}

#[derive(Debug)]
enum Rule {
    Email(Regex),
    /// Candidates are checked: 9 to 15 digits with a `+` or a separator, so ids, counts and
    /// timestamps are left alone.
    Phone(Regex),
    /// Candidates are checked with the Luhn sum.
    Card(Regex),
    Custom(Regex),
}

/// A compiled redaction configuration.
#[derive(Debug)]
pub struct Redactor {
    mode: BodyStorage,
    rules: Vec<Rule>,
}

impl Redactor {
    pub fn mode(&self) -> BodyStorage {
        self.mode
    }

    /// Applies the configuration to a record's bodies, error text and metadata. The SHA-256
    /// fields are left as they are (they name the original content).
    pub fn apply(&self, rec: &mut CallRecord) {
        match self.mode {
            BodyStorage::Full => {}
            BodyStorage::HashesOnly => {
                rec.request_body.clear();
                rec.request_truncated = false;
                rec.response_body = None;
                rec.response_truncated = false;
            }
            BodyStorage::Redact => {
                let (response, error) = (rec.response_body.as_mut(), rec.error.as_mut());
                for text in [Some(&mut rec.request_body), response, error]
                    .into_iter()
                    .flatten()
                {
                    self.redact_in_place(text);
                }
                if let Some(meta) = rec.metadata.as_mut() {
                    self.redact_json(meta);
                }
            }
        }
    }

    /// The text with every match replaced, or `None` when nothing matched.
    pub fn redact(&self, text: &str) -> Option<String> {
        let mut out: Option<String> = None;
        for rule in &self.rules {
            let current = out.as_deref().unwrap_or(text);
            let replaced = match rule {
                Rule::Email(re) => re.replace_all(current, "[REDACTED:email]"),
                Rule::Custom(re) => re.replace_all(current, "[REDACTED:custom]"),
                Rule::Phone(re) => re.replace_all(current, |c: &Captures<'_>| {
                    keep_or(&c[0], is_phone(&c[0]), "[REDACTED:phone]")
                }),
                Rule::Card(re) => re.replace_all(current, |c: &Captures<'_>| {
                    keep_or(&c[0], luhn_valid(&c[0]), "[REDACTED:card]")
                }),
            };
            if let std::borrow::Cow::Owned(s) = replaced
                && s != current
            {
                out = Some(s);
            }
        }
        out
    }

    fn redact_in_place(&self, text: &mut String) {
        if let Some(new) = self.redact(text) {
            *text = new;
        }
    }

    fn redact_json(&self, v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => self.redact_in_place(s),
            serde_json::Value::Array(items) => items.iter_mut().for_each(|i| self.redact_json(i)),
            serde_json::Value::Object(map) => map.values_mut().for_each(|i| self.redact_json(i)),
            _ => {}
        }
    }
}

fn keep_or(found: &str, replace: bool, marker: &str) -> String {
    if replace {
        marker.to_owned()
    } else {
        found.to_owned()
    }
}

fn is_phone(s: &str) -> bool {
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    let separated = s.starts_with('+') || s.bytes().any(|b| matches!(b, b' ' | b'-' | b'.' | b'('));
    (9..=15).contains(&digits) && separated
}

/// The Luhn check of a card number (separators ignored), 13 to 19 digits.
fn luhn_valid(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 { d2 - 9 } else { d2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agv_testkit::assert_contains;

    fn redactor(json: serde_json::Value) -> Redactor {
        let cfg: RedactionConfig = serde_json::from_value(json).unwrap();
        cfg.compile().unwrap().unwrap()
    }

    #[test]
    fn built_in_patterns_replace_personal_data_and_leave_the_rest() {
        let r = redactor(serde_json::json!({"mode": "redact"}));
        let text = r#"{"content":"mail jane.doe+x@example.co.uk or call +44 20 7946 0958, card 4111 1111 1111 1111, order 1700000000123, id 4111111111111112"}"#;
        let out = r.redact(text).unwrap();
        assert!(!out.contains("jane.doe"), "{out}");
        assert!(out.contains("[REDACTED:email]"), "{out}");
        assert!(out.contains("[REDACTED:phone]"), "{out}");
        assert!(out.contains("[REDACTED:card]"), "{out}");
        assert!(!out.contains("4111 1111"), "{out}");
        // A timestamp is not a phone number, and a number failing the Luhn check is not a card.
        assert!(out.contains("1700000000123"), "{out}");
        assert!(out.contains("4111111111111112"), "{out}");
        // Still JSON.
        serde_json::from_str::<serde_json::Value>(&out).unwrap();
        assert_eq!(r.redact("nothing personal here"), None);
    }

    #[test]
    fn custom_patterns_apply_and_bad_ones_are_named() {
        let r = redactor(
            serde_json::json!({"mode": "redact", "patterns": [], "custom": ["ACME-\\d{4}"]}),
        );
        assert_eq!(
            r.redact("ticket ACME-1234, mail a@b.io").unwrap(),
            "ticket [REDACTED:custom], mail a@b.io"
        );
        for (bad, says) in [
            (
                serde_json::json!({"mode": "redact", "custom": ["(unclosed"]}),
                "custom[0]",
            ),
            (
                serde_json::json!({"mode": "redact", "custom": ["x*"]}),
                "empty",
            ),
            (
                serde_json::json!({"mode": "redact", "patterns": ["ssn"]}),
                "ssn",
            ),
        ] {
            let cfg: RedactionConfig = serde_json::from_value(bad).unwrap();
            let e = cfg.compile().unwrap_err();
            assert!(e.0.contains(says), "{e}");
        }
        assert!(
            serde_json::from_value::<RedactionConfig>(serde_json::json!({"mode": "shred"}))
                .is_err()
        );
    }

    fn call() -> CallRecord {
        use crate::domain::{KeyId, TenantId, Timestamp};
        CallRecord {
            model: Some("gpt-4o".into()),
            end_user: Some("cust_1".into()),
            metadata: Some(serde_json::json!({"contact": "a@b.io", "n": 1})),
            request_body: r#"{"messages":[{"role":"user","content":"I am a@b.io"}]}"#.into(),
            request_sha256: "aa".repeat(32),
            response_body: Some(r#"{"choices":[]}"#.into()),
            response_sha256: Some("bb".repeat(32)),
            status: 200,
            upstream_attempts: 1,
            ..CallRecord::new(TenantId::generate(), KeyId::generate(), Timestamp::now())
        }
    }

    #[test]
    fn redact_mode_covers_bodies_and_metadata() {
        let r = redactor(serde_json::json!({"mode": "redact"}));
        let mut rec = call();
        let sha = rec.request_sha256.clone();
        r.apply(&mut rec);
        assert_contains(&rec.request_body, "[REDACTED:email]");
        assert_eq!(
            rec.metadata,
            Some(serde_json::json!({"contact": "[REDACTED:email]", "n": 1}))
        );
        assert_eq!(rec.request_sha256, sha);
    }

    #[test]
    fn hashes_only_drops_bodies_but_keeps_their_hashes() {
        let r = redactor(serde_json::json!({"mode": "hashes_only"}));
        let mut rec = call();
        let (req_sha, resp_sha) = (rec.request_sha256.clone(), rec.response_sha256.clone());
        r.apply(&mut rec);
        assert_eq!(rec.request_body, "");
        assert_eq!(rec.response_body, None);
        assert_eq!(
            (rec.request_sha256, rec.response_sha256),
            (req_sha, resp_sha)
        );
        let full: RedactionConfig =
            serde_json::from_value(serde_json::json!({"mode": "full"})).unwrap();
        assert!(full.compile().unwrap().is_none());
    }
}
