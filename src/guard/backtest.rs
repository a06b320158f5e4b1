//! Policy backtest: runs a proposed guardrail configuration over recorded calls, in the
//! order they arrived and at the times they arrived, and reports every call it would have
//! decided differently from what was recorded.
//!
//! The simulation uses a private [`Guard`] — the same pipeline as live traffic, with its
//! own empty rate-limit windows, budgets and failure-spike counters — so the stateful
//! guardrails (dg-003 rate limits, dg-004 failure spikes, budgets) see the history as
//! they would have seen it. Nothing of the live guard is read or changed. A call the
//! simulation admits is settled with the usage the record holds; a call that was blocked
//! when it happened has no upstream result, so it is admitted without usage. Calls stopped
//! by a person's kill switch are outside any policy and are only counted; a freeze that
//! dg-004 raises inside the simulation does block the simulated calls after it.
//!
//! [`run_paged`] reads the calls a page at a time and drops each page once replayed, so a
//! backtest over 200,000 calls holds one page of requests ([`RecordedRequest`]: no
//! responses), not the whole range.

use super::{CallResult, Endpoint, Guard, RequestFacts, Verdict};
use crate::domain::call::endpoint;
use crate::domain::decision::policy as ids;
use crate::domain::pricing::Pricing;
use crate::domain::{
    CallCursor, CallId, CallRecord, Decision, FreezeAction, FreezeEvent, FreezeId, PolicyConfig,
    RecordedRequest, TenantId, Timestamp,
};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The most changed calls a report lists (all are counted).
pub const MAX_LISTED: usize = 1_000;

/// How a call was, or would have been, decided.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub blocked: bool,
    pub blocked_by: Option<String>,
    pub status: u16,
}

/// A call the proposed configuration decides differently.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub call_id: CallId,
    pub created_at: Timestamp,
    pub model: Option<String>,
    pub end_user: Option<String>,
    pub recorded: Outcome,
    pub proposed: Outcome,
    /// The proposed pipeline's decision that stopped the call (with the measured value and
    /// the threshold), when it stops it; when it lets a recorded block pass, its decision
    /// for the guardrail that blocked it, when that guardrail still runs.
    pub decision: Option<Decision>,
    /// Why the proposal decides differently, in a sentence.
    pub why: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Calls the simulation decided.
    pub evaluated: u64,
    /// Calls stopped by a person's kill switch: outside any policy, not compared.
    pub skipped_kill_switch: u64,
    /// Calls whose request was not stored (hashes only, truncated, not JSON).
    pub skipped_no_request: u64,
    pub unchanged: u64,
    pub changed: u64,
    /// Passed when recorded, stopped under the proposal.
    pub newly_blocked: u64,
    /// Stopped when recorded, passed under the proposal.
    pub newly_allowed: u64,
    /// Changed calls by the policy that stops them under the proposal (`none` when the
    /// proposal lets them pass).
    pub changed_by_policy: BTreeMap<String, u64>,
    /// The first [`MAX_LISTED`] changed calls, oldest first.
    pub changes: Vec<Change>,
    pub changes_truncated: bool,
}

fn guard_endpoint(call: &RecordedRequest) -> Option<Endpoint> {
    match call.endpoint.as_str() {
        endpoint::CHAT_COMPLETIONS => Some(Endpoint::ChatCompletions),
        endpoint::EMBEDDINGS => Some(Endpoint::Embeddings),
        _ => None,
    }
}

fn recorded(call: &RecordedRequest) -> Outcome {
    Outcome {
        blocked: call.blocked,
        blocked_by: call.blocked_by.clone(),
        status: call.status,
    }
}

/// Runs `proposed` for `tenant` over `calls`, which must be in arrival order (oldest
/// first) and belong to the tenant.
pub fn run<'a>(
    pricing: &Pricing,
    tenant: &TenantId,
    proposed: PolicyConfig,
    calls: impl IntoIterator<Item = &'a CallRecord>,
) -> Report {
    let mut replay = Replay::new(pricing, tenant, proposed);
    for call in calls {
        replay.call(&RecordedRequest::from(call));
    }
    replay.finish()
}

/// What [`run_paged`] replayed.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    pub report: Report,
    /// When the first (oldest) call replayed arrived; `None` when there was none.
    pub first_at: Option<Timestamp>,
}

/// Runs `proposed` for `tenant` over recorded calls read a page at a time, holding one
/// page only: `next_page(after, n)` returns up to `n` of the tenant's calls in arrival
/// order (oldest first) strictly after `after` (from the start when `None`), and a page
/// shorter than asked ends the replay, as does reaching `max_calls`. The report is the
/// one [`run`] gives over the same calls at once.
pub fn run_paged<E>(
    pricing: &Pricing,
    tenant: &TenantId,
    proposed: PolicyConfig,
    start: Option<CallCursor>,
    max_calls: u64,
    page_size: u32,
    mut next_page: impl FnMut(Option<&CallCursor>, u32) -> Result<Vec<RecordedRequest>, E>,
) -> Result<Replayed, E> {
    let mut replay = Replay::new(pricing, tenant, proposed);
    let mut after = start;
    let mut replayed = 0u64;
    let mut first_at = None;
    let page_size = page_size.max(1);
    while replayed < max_calls {
        let want = u32::try_from(max_calls - replayed).map_or(page_size, |n| n.min(page_size));
        let page = next_page(after.as_ref(), want)?;
        for call in &page {
            first_at.get_or_insert(call.created_at);
            replay.call(call);
        }
        replayed += page.len() as u64;
        match page.last() {
            Some(last) if page.len() == want as usize => after = Some(last.cursor()),
            _ => break,
        }
    }
    Ok(Replayed {
        report: replay.finish(),
        first_at,
    })
}

/// The simulation: a private guard with the proposed policy, fed the calls one by one in
/// arrival order.
struct Replay<'t> {
    sim: Guard,
    tenant: &'t TenantId,
    report: Report,
}

impl<'t> Replay<'t> {
    fn new(pricing: &Pricing, tenant: &'t TenantId, proposed: PolicyConfig) -> Self {
        let sim = Guard::new(pricing.clone());
        sim.set_policy(tenant, Arc::new(proposed));
        Self {
            sim,
            tenant,
            report: Report::default(),
        }
    }

    fn finish(self) -> Report {
        self.report
    }

    fn call(&mut self, call: &RecordedRequest) {
        let (sim, tenant, report) = (&self.sim, self.tenant, &mut self.report);
        if call.blocked_by.as_deref() == Some(ids::KILL_SWITCH) {
            report.skipped_kill_switch += 1;
            return;
        }
        let body = (!call.request_truncated)
            .then(|| serde_json::from_str::<Value>(&call.request_body).ok())
            .flatten()
            .filter(Value::is_object);
        let (Some(body), Some(ep)) = (body, guard_endpoint(call)) else {
            report.skipped_no_request += 1;
            return;
        };
        let now = call.created_at;
        let verdict = sim.check(
            &RequestFacts {
                tenant_id: tenant,
                key_id: &call.key_id,
                endpoint: ep,
                model: body.get("model").and_then(Value::as_str),
                body: &body,
            },
            now,
        );
        report.evaluated += 1;
        let (proposed, decision) = match verdict {
            Verdict::Allow {
                admission,
                decisions,
            } => {
                if call.blocked {
                    sim.abandon(admission);
                } else {
                    let result = CallResult {
                        model: call.model.as_deref(),
                        prompt_tokens: count(call.prompt_tokens),
                        cached_tokens: count(call.cached_tokens),
                        completion_tokens: count(call.completion_tokens),
                        upstream_failed: call.status >= 500,
                    };
                    let after = sim.complete(admission, result, now);
                    if let Some(spike) = after.spike {
                        sim.killswitch().apply(&FreezeEvent {
                            id: FreezeId::generate(),
                            tenant_id: tenant.clone(),
                            key_id: None,
                            action: FreezeAction::Freeze,
                            actor: "policy:dg-004".into(),
                            reason: format!("dg-004 failure spike: {}", spike.reason()),
                            at: now,
                        });
                    }
                }
                // What the proposal says of the guardrail that blocked the call when it
                // was recorded.
                let passed = call
                    .blocked_by
                    .as_deref()
                    .and_then(|p| decisions.iter().rev().find(|d| d.policy == p).cloned());
                (
                    Outcome {
                        blocked: false,
                        blocked_by: None,
                        status: if call.blocked { 200 } else { call.status },
                    },
                    passed,
                )
            }
            Verdict::Stop { decisions, stop } => (
                Outcome {
                    blocked: true,
                    blocked_by: Some(stop.policy.to_owned()),
                    status: stop.code.status(),
                },
                decisions.into_iter().last(),
            ),
        };
        let was = recorded(call);
        if was.blocked == proposed.blocked && was.blocked_by == proposed.blocked_by {
            report.unchanged += 1;
            return;
        }
        let why = why(&was, &proposed, decision.as_ref());
        report.changed += 1;
        if proposed.blocked && !was.blocked {
            report.newly_blocked += 1;
        } else if !proposed.blocked && was.blocked {
            report.newly_allowed += 1;
        }
        *report
            .changed_by_policy
            .entry(proposed.blocked_by.clone().unwrap_or_else(|| "none".into()))
            .or_default() += 1;
        if report.changes.len() < MAX_LISTED {
            report.changes.push(Change {
                call_id: call.id.clone(),
                created_at: call.created_at,
                model: call.model.clone(),
                end_user: call.end_user.clone(),
                recorded: was,
                proposed,
                decision,
                why,
            });
        } else {
            report.changes_truncated = true;
        }
    }
}

/// A sentence saying why `proposed` differs from `was`, from the proposal's decision (the
/// one that stops the call, or its verdict on the guardrail that had stopped it).
fn why(was: &Outcome, proposed: &Outcome, decision: Option<&Decision>) -> String {
    let reason = decision.map(|d| d.reason.as_str());
    let by = |p: &Option<String>| p.clone().unwrap_or_else(|| "a guardrail".into());
    match (was.blocked, proposed.blocked) {
        (false, _) => format!(
            "Allowed when recorded; the proposed {} blocks it: {}.",
            by(&proposed.blocked_by),
            reason.unwrap_or("over its limit")
        ),
        (true, false) => match reason {
            Some(reason) => format!(
                "Blocked by {} when recorded; under the proposal it passes: {reason}.",
                by(&was.blocked_by)
            ),
            None => format!(
                "Blocked by {} when recorded; the proposal does not run that check.",
                by(&was.blocked_by)
            ),
        },
        (true, true) => format!(
            "Blocked by {} when recorded; under the proposal {} blocks it first: {}.",
            by(&was.blocked_by),
            by(&proposed.blocked_by),
            reason.unwrap_or("over its limit")
        ),
    }
}

fn count(v: Option<i64>) -> u64 {
    v.and_then(|v| u64::try_from(v).ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{KeyId, Money};
    use crate::guard::tests::policy_with;

    fn call(
        tenant: &TenantId,
        key: &KeyId,
        at_ms: i64,
        max_tokens: u64,
        status: u16,
    ) -> CallRecord {
        let body = serde_json::json!({
            "model": "gpt-4o-mini",
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "hello"}],
        });
        CallRecord {
            model: Some("gpt-4o-mini".into()),
            request_body: body.to_string(),
            status,
            prompt_tokens: Some(10),
            completion_tokens: Some(5),
            total_tokens: Some(15),
            cost: Some(Money::from_usd(0.0001)),
            latency_us: 1_000,
            upstream_latency_us: Some(900),
            enforcement_us: 10,
            upstream_attempts: 1,
            ..CallRecord::new(tenant.clone(), key.clone(), Timestamp::from_millis(at_ms))
        }
    }

    /// Marks `c` as stopped by `policy` with `status` when it was recorded.
    fn block(c: &mut CallRecord, policy: &str, status: u16) {
        c.blocked = true;
        c.blocked_by = Some(policy.into());
        c.status = status;
    }

    #[test]
    fn a_tighter_token_limit_reports_exactly_the_calls_over_it() {
        let (t, k) = (TenantId::generate(), KeyId::generate());
        let start = 1_700_000_000_000;
        let calls: Vec<CallRecord> = (0..10)
            .map(|i| {
                call(
                    &t,
                    &k,
                    start + i * 10_000,
                    if i % 3 == 0 { 5_000 } else { 100 },
                    200,
                )
            })
            .collect();
        let same = run(&Pricing::builtin(), &t, PolicyConfig::default(), &calls);
        assert_eq!((same.evaluated, same.changed, same.unchanged), (10, 0, 10));

        let proposed = policy_with(|p| p.max_tokens_per_request = 1_000);
        let r = run(&Pricing::builtin(), &t, proposed, &calls);
        assert_eq!(r.changed, 4, "{r:?}");
        assert_eq!(r.newly_blocked, 4);
        assert_eq!(r.changed_by_policy.get("dg-002"), Some(&4));
        let ids: Vec<_> = r.changes.iter().map(|c| c.call_id.clone()).collect();
        let want: Vec<_> = calls.iter().step_by(3).map(|c| c.id.clone()).collect();
        assert_eq!(ids, want);
        let d = r.changes[0].decision.as_ref().unwrap();
        assert_eq!(d.policy, "dg-002");
        assert_eq!(r.changes[0].proposed.status, 400);
        let why = &r.changes[0].why;
        assert!(
            why.starts_with("Allowed when recorded; the proposed dg-002 blocks it: ")
                && why.contains(&d.reason),
            "{why}"
        );
    }

    #[test]
    fn a_call_the_proposal_lets_through_says_what_had_blocked_it_and_why_it_now_passes() {
        let (t, k) = (TenantId::generate(), KeyId::generate());
        let mut blocked = call(&t, &k, 1_700_000_000_000, 5_000, 400);
        block(&mut blocked, ids::MAX_TOKENS, 400);
        let proposed = policy_with(|p| p.max_tokens_per_request = 10_000);
        let r = run(&Pricing::builtin(), &t, proposed, [&blocked]);
        assert_eq!((r.changed, r.newly_allowed), (1, 1), "{r:?}");
        let change = &r.changes[0];
        let d = change
            .decision
            .as_ref()
            .expect("the proposal's dg-002 verdict");
        assert_eq!(d.policy, ids::MAX_TOKENS);
        assert!(
            change
                .why
                .starts_with("Blocked by dg-002 when recorded; under the proposal it passes: ")
                && change.why.contains(&d.reason),
            "{}",
            change.why
        );
    }

    #[test]
    fn rate_limits_are_simulated_at_the_recorded_times_and_kill_switch_blocks_are_skipped() {
        let (t, k) = (TenantId::generate(), KeyId::generate());
        let start = 1_700_000_000_000;
        // Five calls in one second, then five a minute later.
        let mut calls: Vec<CallRecord> = (0..5)
            .map(|i| call(&t, &k, start + i * 100, 10, 200))
            .chain((0..5).map(|i| call(&t, &k, start + 120_000 + i * 100, 10, 200)))
            .collect();
        block(&mut calls[9], "killswitch", 423);
        let proposed = policy_with(|p| p.key_requests_per_minute = 3);
        let r = run(&Pricing::builtin(), &t, proposed, &calls);
        assert_eq!(r.skipped_kill_switch, 1);
        assert_eq!(r.evaluated, 9);
        // Two over the limit in each burst (the second burst has one call fewer to compare).
        assert_eq!(r.newly_blocked, 3, "{r:?}");
        assert!(r.changes.iter().all(|c| c.proposed.status == 429));
    }

    /// Serves `calls` (in arrival order) as a store would: up to `n` strictly after `after`.
    fn pages<'c>(
        calls: &'c [CallRecord],
        asked: &'c std::cell::RefCell<Vec<u32>>,
    ) -> impl FnMut(Option<&CallCursor>, u32) -> Result<Vec<RecordedRequest>, String> + 'c {
        move |after, n| {
            asked.borrow_mut().push(n);
            Ok(calls
                .iter()
                .filter(|c| after.is_none_or(|a| (c.created_at, &c.id) > (a.created_at, &a.id)))
                .take(n as usize)
                .map(RecordedRequest::from)
                .collect())
        }
    }

    /// The report without the time each decision took, which differs from run to run.
    fn timeless(mut r: Report) -> Report {
        for c in &mut r.changes {
            if let Some(d) = &mut c.decision {
                d.micros = 0;
            }
        }
        r
    }

    #[test]
    fn a_replay_page_by_page_reports_exactly_what_one_pass_over_all_calls_does() {
        let (t, k) = (TenantId::generate(), KeyId::generate());
        let start = 1_700_000_000_000;
        // Bursts over a rate limit that straddle page boundaries, calls sharing a
        // millisecond, an oversized request, a kill-switch block and a hashed body.
        let mut calls: Vec<CallRecord> = (0..40)
            .map(|i| {
                let at = start + (i / 8) * 90_000 + (i % 8) * 10 - (i % 2) * 10;
                call(&t, &k, at, if i % 7 == 0 { 5_000 } else { 10 }, 200)
            })
            .collect();
        block(&mut calls[11], "killswitch", 423);
        calls[23].request_body.clear();
        calls.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let proposed = PolicyConfig {
            key_requests_per_minute: 5,
            max_tokens_per_request: 1_000,
            ..PolicyConfig::default()
        };
        let whole = timeless(run(&Pricing::builtin(), &t, proposed.clone(), &calls));
        assert!(whole.changed > 0 && whole.unchanged > 0, "{whole:?}");

        for page_size in [1, 3, 7, 40, 1_000] {
            let asked = std::cell::RefCell::new(Vec::new());
            let paged = run_paged(
                &Pricing::builtin(),
                &t,
                proposed.clone(),
                None,
                200_000,
                page_size,
                pages(&calls, &asked),
            )
            .unwrap();
            assert_eq!(timeless(paged.report), whole, "page size {page_size}");
            assert_eq!(paged.first_at, Some(calls[0].created_at));
            let asked = asked.into_inner();
            assert!(asked.iter().all(|&n| n <= page_size), "{asked:?}");
            assert_eq!(asked.len(), 40 / page_size as usize + 1, "{asked:?}");
        }

        // A cap and a start: the calls after the tenth, twenty of them, as `run` over those.
        let asked = std::cell::RefCell::new(Vec::new());
        let capped = run_paged(
            &Pricing::builtin(),
            &t,
            proposed.clone(),
            Some(CallCursor {
                created_at: calls[9].created_at,
                id: calls[9].id.clone(),
            }),
            20,
            6,
            pages(&calls, &asked),
        )
        .unwrap();
        assert_eq!(
            timeless(capped.report),
            timeless(run(&Pricing::builtin(), &t, proposed, &calls[10..30]))
        );
        assert_eq!(capped.first_at, Some(calls[10].created_at));
        assert_eq!(asked.into_inner(), [6, 6, 6, 2]);

        // A store error ends the replay with that error.
        let failed = run_paged(
            &Pricing::builtin(),
            &t,
            PolicyConfig::default(),
            None,
            10,
            3,
            |_, _| Err::<Vec<RecordedRequest>, _>("down"),
        );
        assert_eq!(failed.map(|r| r.first_at), Err("down"));
    }

    #[test]
    fn a_looser_policy_lets_recorded_blocks_through_and_missing_bodies_are_counted() {
        let (t, k) = (TenantId::generate(), KeyId::generate());
        let mut blocked = call(&t, &k, 1_700_000_000_000, 20_000, 400);
        block(&mut blocked, "dg-002", 400);
        let mut hashed = call(&t, &k, 1_700_000_001_000, 10, 200);
        hashed.request_body.clear();
        let proposed = policy_with(|p| p.max_tokens_per_request = 50_000);
        let r = run(&Pricing::builtin(), &t, proposed, [&blocked, &hashed]);
        assert_eq!((r.newly_allowed, r.skipped_no_request), (1, 1), "{r:?}");
        assert_eq!(r.changed_by_policy.get("none"), Some(&1));
    }
}
