//! Policy backtest end to end: a proposed configuration over recorded calls, the calls it
//! would decide differently, the live policy untouched, an audit entry; and bad input.

use crate::helpers::{Backend, ProxySetup, TestApp, call_id};
use crate::on_both_backends;
use agv_server::domain::{CallId, CallRecord, Timestamp};
use agv_server::store::run_blocking;
use serde_json::{Value, json};

async fn backtest(app: &TestApp, admin: &str, body: &Value) -> reqwest::Response {
    app.post_json("/v1/policies/backtest", admin, body).await
}

fn body_with_max_tokens(max_tokens: u64) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "summarise the quarter"}],
    })
}

async fn a_tighter_limit_names_exactly_the_calls_it_would_have_stopped(backend: Backend) {
    let Some(setup) = ProxySetup::new(backend) else {
        return;
    };
    let (app, _up, _tenant, key, admin) = setup.start().await;
    let mut big = Vec::new();
    for i in 0..6 {
        let max = if i % 2 == 0 { 4_000 } else { 200 };
        let res = app
            .post_json("/v1/chat/completions", &key, &body_with_max_tokens(max))
            .await;
        assert_eq!(res.status(), 200);
        if max == 4_000 {
            big.push(call_id(&res));
        }
    }
    let res = backtest(
        &app,
        &admin,
        &json!({"policy": {"max_tokens_per_request": 1000}}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    let r = &v["report"];
    assert_eq!(r["evaluated"], 6, "{v}");
    assert_eq!(r["changed"], 3, "{v}");
    assert_eq!(r["newly_blocked"], 3);
    assert_eq!(r["changed_by_policy"]["dg-002"], 3);
    let mut named: Vec<String> = r["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["call_id"].as_str().unwrap().to_owned())
        .collect();
    named.sort();
    big.sort();
    assert_eq!(named, big);
    let change = &r["changes"][0];
    assert_eq!(change["recorded"]["status"], 200);
    assert_eq!(change["proposed"]["status"], 400);
    assert_eq!(change["decision"]["policy"], "dg-002");

    // The same configuration as today changes nothing.
    let same: Value = backtest(&app, &admin, &json!({"policy": {}}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(same["report"]["changed"], 0, "{same}");

    // A range before any call holds nothing.
    let empty: Value = backtest(
        &app,
        &admin,
        &json!({"policy": {"max_tokens_per_request": 1000}, "since": "2020-01-01T00:00:00Z", "until": "2020-01-02T00:00:00Z"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(empty["report"]["evaluated"], 0, "{empty}");

    // The live policy is untouched: a big call still passes.
    let res = app
        .post_json("/v1/chat/completions", &key, &body_with_max_tokens(4_000))
        .await;
    assert_eq!(res.status(), 200);

    let audit: Value = app
        .get_with_key("/v1/audit?action=policy.backtest", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["data"].as_array().unwrap().len(), 3, "{audit}");
}

async fn a_looser_limit_lets_recorded_blocks_through(backend: Backend) {
    let Some(setup) = ProxySetup::new(backend) else {
        return;
    };
    let (app, _up, _tenant, key, admin) = setup.start().await;
    app.set_policy(&admin, json!({"max_tokens_per_request": 1000}))
        .await;
    let res = app
        .post_json("/v1/chat/completions", &key, &body_with_max_tokens(4_000))
        .await;
    assert_eq!(res.status(), 400);
    let blocked = call_id(&res);
    let v: Value = backtest(&app, &admin, &json!({"policy": {}}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["report"]["newly_allowed"], 1, "{v}");
    assert_eq!(v["report"]["changes"][0]["call_id"], blocked.as_str());
    assert_eq!(
        v["report"]["changes"][0]["recorded"]["blocked_by"],
        "dg-002"
    );
    // It says why: what had blocked it, and the proposal's own verdict on that check.
    let why = v["report"]["changes"][0]["why"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.starts_with("Blocked by dg-002 when recorded; under the proposal it passes: "),
        "{v}"
    );
    assert_eq!(v["report"]["changes"][0]["decision"]["policy"], "dg-002");
}

async fn put_policy(app: &TestApp, admin: &str, query: &str, body: &Value) -> reqwest::Response {
    app.client
        .put(app.url(&format!("/v1/policies{query}")))
        .bearer_auth(admin)
        .json(body)
        .send()
        .await
        .expect("request")
}

async fn a_budget_below_todays_spend_warns_first_that_it_stops_the_tenant(backend: Backend) {
    let Some(setup) = ProxySetup::new(backend) else {
        return;
    };
    let (app, _up, _tenant, key, admin) = setup.start().await;
    for _ in 0..2 {
        assert_eq!(app.chat(&key, "hello").await.status(), 200);
    }
    let tiny = json!({"budget_daily_usd": 0.000_000_01});

    // The backtest says it first.
    let v: Value = backtest(&app, &admin, &json!({"policy": tiny}))
        .await
        .json()
        .await
        .unwrap();
    let stops = v["budget_stops"].as_array().expect("budget_stops");
    assert_eq!(stops.len(), 1, "{v}");
    assert_eq!(stops[0]["period"], "daily");
    assert!(stops[0]["spent_usd"].as_f64().unwrap_or(0.0) > 0.0, "{v}");

    // Saving it is refused with a reason, and nothing is changed.
    let res = put_policy(&app, &admin, "", &tiny).await;
    assert_eq!(res.status(), 409);
    let e: Value = res.json().await.unwrap();
    assert_eq!(e["error"]["code"], "budget_stops_tenant", "{e}");
    assert_eq!(e["error"]["param"], "budget_daily_usd");
    let message = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("stops every call of this tenant") && message.contains("?confirm=stop"),
        "{message}"
    );
    let active: Value = app
        .get_with_key("/v1/policies/active", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        active["overrides"].get("budget_daily_usd").is_none(),
        "{active}"
    );
    // An editor sees what the budgets count against, to warn before saving.
    assert!(
        active["spend"]["day_usd"].as_f64().unwrap_or(0.0) > 0.0,
        "{active}"
    );
    assert!(
        active["spend"]["month_usd"].as_f64().unwrap_or(0.0) > 0.0,
        "{active}"
    );
    assert_eq!(app.chat(&key, "still served").await.status(), 200);

    let res = put_policy(&app, &admin, "?confirm=yes", &tiny).await;
    assert_eq!(res.status(), 400);

    // A dry run says the same, as an editor asks before saving, and saves nothing.
    let res = put_policy(&app, &admin, "?dry_run=true", &tiny).await;
    assert_eq!(res.status(), 200);
    let dry: Value = res.json().await.unwrap();
    assert_eq!(dry["saved"], false, "{dry}");
    assert_eq!(
        dry["budget_stops"].as_array().map(Vec::len),
        Some(1),
        "{dry}"
    );
    assert!(
        dry["budget_stops"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("stops every call of this tenant")),
        "{dry}"
    );
    assert_eq!(
        app.chat(&key, "still served after a dry run")
            .await
            .status(),
        200
    );

    // Confirmed, it is saved, and it does what it said.
    let res = put_policy(&app, &admin, "?confirm=stop", &tiny).await;
    assert_eq!(res.status(), 200);
    let saved: Value = res.json().await.unwrap();
    assert_eq!(
        saved["budget_stops"].as_array().map(Vec::len),
        Some(1),
        "{saved}"
    );
    assert_eq!(app.chat(&key, "now stopped").await.status(), 402);
}

/// Records `n` copies of `template` one second apart from `first_ms` on, every third one
/// asking for 4,000 tokens and the others for 200; returns their ids, oldest first.
async fn record_copies(
    app: &TestApp,
    template: &CallRecord,
    n: usize,
    first_ms: i64,
) -> Vec<String> {
    let calls: Vec<CallRecord> = (0..n)
        .map(|i| CallRecord {
            id: CallId::generate(),
            created_at: Timestamp::from_millis(first_ms + i as i64 * 1_000),
            request_body: body_with_max_tokens(if i % 3 == 0 { 4_000 } else { 200 }).to_string(),
            ..template.clone()
        })
        .collect();
    let ids = calls.iter().map(|c| c.id.to_string()).collect();
    let store = app.app_state.store.clone();
    run_blocking(move || store.insert_calls(&calls))
        .await
        .unwrap();
    ids
}

async fn a_backtest_over_many_pages_replays_the_newest_calls_in_arrival_order(backend: Backend) {
    let Some(setup) = ProxySetup::new(backend) else {
        return;
    };
    let (app, _up, _tenant, key, admin) = setup.start().await;
    let res = app
        .post_json("/v1/chat/completions", &key, &body_with_max_tokens(4_000))
        .await;
    assert_eq!(res.status(), 200);
    let newest = call_id(&res);
    let template: CallRecord = serde_json::from_value(app.call(&admin, &newest).await).unwrap();
    // 1,200 calls before it: more than one page of the store (1,000 calls) and many pages of
    // the replay (250 calls each).
    let copies = record_copies(
        &app,
        &template,
        1_200,
        template.created_at.millis() - 1_300_000,
    )
    .await;
    let policy = json!({"max_tokens_per_request": 1000});

    let all: Value = backtest(&app, &admin, &json!({"policy": policy}))
        .await
        .json()
        .await
        .unwrap();
    let r = &all["report"];
    assert_eq!(r["evaluated"], 1_201, "{all}");
    assert_eq!(r["newly_blocked"], 400 + 1, "{r}");
    assert_eq!(all["range_truncated"], false);
    assert_eq!(all["evaluated_from"], Value::Null);
    let named: Vec<&str> = r["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["call_id"].as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = copies.iter().step_by(3).map(String::as_str).collect();
    expected.push(&newest);
    assert_eq!(named, expected, "changed calls in arrival order");

    // Capped: the newest 1,100 (the call and 1,099 copies), from the 102nd copy on.
    let capped: Value = backtest(&app, &admin, &json!({"policy": policy, "max_calls": 1_100}))
        .await
        .json()
        .await
        .unwrap();
    let r = &capped["report"];
    assert_eq!(r["evaluated"], 1_100, "{capped}");
    assert_eq!(capped["range_truncated"], true);
    assert_eq!(
        capped["evaluated_from"],
        json!(template.created_at.millis() - 1_300_000 + 101 * 1_000)
    );
    let first_changed = 102; // the first copy from 101 on that asks for 4,000 tokens
    assert_eq!(r["changes"][0]["call_id"], copies[first_changed].as_str());
    assert_eq!(
        r["newly_blocked"],
        (first_changed..1_200).step_by(3).count() + 1
    );
}

async fn bad_backtest_requests_are_400(backend: Backend) {
    let Some(setup) = ProxySetup::new(backend) else {
        return;
    };
    let (app, _up, _tenant, key, admin) = setup.start().await;
    for (body, code) in [
        (json!(null), "invalid_json"),
        (json!({}), "invalid_json"),
        (json!({"policy": {"max_tokenz": 1}}), "invalid_policy"),
        (
            json!({"policy": {"failure_spike_ratio": 7}}),
            "invalid_policy",
        ),
        (json!({"policy": {}, "extra": 1}), "invalid_json"),
        (
            json!({"policy": {}, "since": "yesterday-ish"}),
            "invalid_query",
        ),
        (
            json!({"policy": {}, "since": "2h", "until": "3h"}),
            "invalid_range",
        ),
        (json!({"policy": {}, "max_calls": 0}), "invalid_max_calls"),
        (
            json!({"policy": {}, "max_calls": 10_000_000}),
            "invalid_max_calls",
        ),
    ] {
        let res = backtest(&app, &admin, &body).await;
        assert_eq!(res.status(), 400, "{body}");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
    }
    let raw = app
        .client
        .post(app.url("/v1/policies/backtest"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{\"policy\": {")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    // A proxy-scope key may not run it; no key at all is 401.
    assert_eq!(
        backtest(&app, &key, &json!({"policy": {}})).await.status(),
        403
    );
    let res = app
        .client
        .post(app.url("/v1/policies/backtest"))
        .json(&json!({"policy": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // Still serving.
    assert_eq!(app.chat(&key, "still up").await.status(), 200);
}

on_both_backends!(
    a_tighter_limit_names_exactly_the_calls_it_would_have_stopped,
    a_looser_limit_lets_recorded_blocks_through,
    a_budget_below_todays_spend_warns_first_that_it_stops_the_tenant,
    a_backtest_over_many_pages_replays_the_newest_calls_in_arrival_order,
    bad_backtest_requests_are_400,
);
