//! Policy backtest end to end: a proposed configuration over recorded calls, the calls it
//! would decide differently, the live policy untouched, an audit entry; and bad input.

use crate::helpers::{Backend, ProxySetup, TestApp, call_id};
use crate::on_both_backends;
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
    bad_backtest_requests_are_400,
);
