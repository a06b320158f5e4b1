//! `GET /v1/calls?q=…`: the search syntax over recorded calls, end to end through the
//! front door and a real local upstream, on both backends.

use crate::helpers::{Backend, ProxySetup, TestApp, call_id, chat_body, error_code};
use crate::on_both_backends;
use agv_server::store::run_blocking;

/// Sends a chat call as end user `user` and returns its call id.
async fn chat_as(app: &TestApp, key: &str, user: &str, prompt: &str) -> String {
    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("x-agv-user-id", user)
        .json(&chat_body(prompt))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    call_id(&res)
}

/// Indexes every recorded call now instead of waiting for the background indexer.
async fn index_now(app: &TestApp) {
    let store = app.app_state.store.clone();
    run_blocking(move || store.index_pending_calls())
        .await
        .unwrap();
}

async fn search(app: &TestApp, admin: &str, params: &[(&str, &str)]) -> reqwest::Response {
    let url = reqwest::Url::parse_with_params(&app.url("/v1/calls"), params).unwrap();
    app.client.get(url).bearer_auth(admin).send().await.unwrap()
}

async fn ids(app: &TestApp, admin: &str, params: &[(&str, &str)]) -> Vec<String> {
    let res = search(app, admin, params).await;
    assert_eq!(res.status(), 200, "{params:?}");
    let page: serde_json::Value = res.json().await.unwrap();
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn a_call_is_found_by_a_word_of_its_prompt_and_by_its_end_user(backend: Backend) {
    let Some(setup) = ProxySetup::new(backend) else {
        return;
    };
    let (app, _upstream, _tenant, key, admin) = setup.start().await;
    let renew = chat_as(
        &app,
        &key,
        "cust_8372",
        "Please cancel my auto-renew subscription",
    )
    .await;
    let weather = chat_as(&app, &key, "cust_1", "What is the weather in Lisbon?").await;
    index_now(&app).await;

    assert_eq!(
        ids(&app, &admin, &[("q", "subscription")]).await,
        vec![renew.clone()]
    );
    assert_eq!(
        ids(&app, &admin, &[("q", "LISBON weather")]).await,
        vec![weather.clone()]
    );
    assert_eq!(
        ids(&app, &admin, &[("q", "user:cust_8372")]).await,
        vec![renew.clone()]
    );
    assert_eq!(
        ids(
            &app,
            &admin,
            &[("q", r#"user:cust_8372 since:1h "auto-renew" status:200"#)]
        )
        .await,
        vec![renew.clone()]
    );
    // The separate parameters still work, and narrow q further.
    assert_eq!(
        ids(&app, &admin, &[("q", "weather"), ("user", "cust_1")]).await,
        vec![weather.clone()]
    );
    assert!(
        ids(&app, &admin, &[("q", "weather"), ("user", "cust_8372")])
            .await
            .is_empty()
    );
    assert!(ids(&app, &admin, &[("q", "zeppelin")]).await.is_empty());
    // An empty q lists every call, newest first.
    assert_eq!(ids(&app, &admin, &[("q", "")]).await, vec![weather, renew]);
    app.stop().await;
}

async fn a_malformed_q_is_a_400_that_says_what_is_wrong_and_the_server_keeps_working(
    backend: Backend,
) {
    let Some(setup) = ProxySetup::new(backend) else {
        return;
    };
    let (app, _upstream, _tenant, key, admin) = setup.start().await;
    let id = chat_as(&app, &key, "cust_8372", "refund please").await;
    index_now(&app).await;

    let too_long = "refund ".repeat(200);
    for (q, expected) in [
        ("colour:red", "unknown filter 'colour:'"),
        (r#"refund "auto renew"#, "never closed"),
        ("status:9xx", "4xx"),
        ("since:1h until:2h", "not before until"),
        ("user:", "has no value"),
        ("policy:nonsense", "prompt_injection"),
        (too_long.as_str(), "1000"),
    ] {
        let res = search(&app, &admin, &[("q", q)]).await;
        assert_eq!(res.status(), 400, "{q}");
        let body: serde_json::Value = res.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{q}: {message}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "invalid_query");
    }
    // A filter given both ways with different values is refused, not guessed.
    let res = search(&app, &admin, &[("q", "user:a"), ("user", "b")]).await;
    assert_eq!(res.status(), 400);
    assert_eq!(error_code(res).await, "invalid_query");

    assert_eq!(ids(&app, &admin, &[("q", "refund")]).await, vec![id]);
    app.stop().await;
}

async fn another_tenants_admin_key_finds_none_of_the_calls(backend: Backend) {
    let Some(setup) = ProxySetup::new(backend) else {
        return;
    };
    let other_tenant = setup.home.cli_ok(&["tenant", "create", "Other"]);
    let other_admin = setup.home.cli_ok(&[
        "key",
        "create",
        "--tenant",
        &other_tenant,
        "--scope",
        "admin",
    ]);
    let (app, _upstream, _tenant, key, admin) = setup.start().await;
    let id = chat_as(&app, &key, "cust_8372", "confidential merger plans").await;
    index_now(&app).await;

    assert_eq!(ids(&app, &admin, &[("q", "merger")]).await, vec![id]);
    for q in ["merger", "user:cust_8372", "\"merger plans\"", ""] {
        assert!(ids(&app, &other_admin, &[("q", q)]).await.is_empty(), "{q}");
    }
    // A proxy key may not search.
    assert_eq!(search(&app, &key, &[("q", "merger")]).await.status(), 403);
    app.stop().await;
}

/// Every page of `params` (with `limit`), walked through `next_cursor` to the end.
async fn walk(app: &TestApp, admin: &str, params: &[(&str, &str)], limit: &str) -> Vec<String> {
    let (mut all, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let mut p = params.to_vec();
        p.push(("limit", limit));
        if let Some(c) = &cursor {
            p.push(("cursor", c));
        }
        let res = search(app, admin, &p).await;
        assert_eq!(res.status(), 200, "{p:?}");
        let page: serde_json::Value = res.json().await.unwrap();
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= limit.parse::<usize>().unwrap());
        for c in data {
            // Whole records, bodies included.
            assert!(!c["request_body"].as_str().unwrap().is_empty(), "{c}");
            all.push(c["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return all,
        }
    }
}

async fn lists_longer_than_a_slice_hold_the_same_calls_as_small_pages(backend: Backend) {
    let Some(setup) = ProxySetup::new(backend) else {
        return;
    };
    let (app, _upstream, _tenant, key, admin) = setup.start().await;
    app.set_policy(
        &admin,
        serde_json::json!({"key_requests_per_minute": 10_000, "tenant_requests_per_minute": 10_000}),
    )
    .await;
    // 130 calls: lists of up to 500 are written 50 calls at a time.
    for i in 0..130 {
        chat_as(
            &app,
            &key,
            &format!("cust_{}", i % 2),
            &format!("invoice number {i}"),
        )
        .await;
    }
    index_now(&app).await;
    let by_one_query = walk(&app, &admin, &[], "500").await;
    assert_eq!(by_one_query.len(), 130);
    assert_eq!(walk(&app, &admin, &[], "7").await, by_one_query);
    assert_eq!(walk(&app, &admin, &[], "120").await, by_one_query);
    assert_eq!(walk(&app, &admin, &[], "50").await, by_one_query);
    assert_eq!(
        walk(&app, &admin, &[("q", "invoice")], "500").await,
        by_one_query
    );
    assert_eq!(
        walk(&app, &admin, &[("q", "invoice")], "60").await,
        by_one_query
    );
    let one_user = walk(&app, &admin, &[("user", "cust_1")], "500").await;
    assert_eq!(one_user.len(), 65);
    assert_eq!(
        walk(&app, &admin, &[("user", "cust_1")], "9").await,
        one_user
    );

    // A full page has a cursor to the rest; the JSON is the same object as before.
    let res = search(&app, &admin, &[("limit", "120")]).await;
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let text = res.text().await.unwrap();
    assert!(
        text.starts_with(r#"{"object":"list","data":[{"#),
        "{}",
        &text[..40]
    );
    let page: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 120);
    assert_eq!(
        page["next_cursor"].as_str().unwrap(),
        format!(
            "{}.{}",
            page["data"][119]["created_at"],
            page["data"][119]["id"].as_str().unwrap()
        )
    );
    let none: serde_json::Value = search(&app, &admin, &[("user", "nobody"), ("limit", "500")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        none,
        serde_json::json!({"object": "list", "data": [], "next_cursor": null})
    );
}

on_both_backends!(
    lists_longer_than_a_slice_hold_the_same_calls_as_small_pages,
    a_call_is_found_by_a_word_of_its_prompt_and_by_its_end_user,
    a_malformed_q_is_a_400_that_says_what_is_wrong_and_the_server_keeps_working,
    another_tenants_admin_key_finds_none_of_the_calls,
);
