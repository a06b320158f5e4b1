//! The front door end to end against a real local OpenAI-speaking upstream: pass-through,
//! streaming, attribution, recording, call search, tenant isolation, upstream failures and
//! bad input.

use crate::helpers::{Backend, ProxySetup, call_id, chat_body, error_code};
use crate::on_both_backends;
use agv_testkit::upstream::Mode;
use futures_util::StreamExt;
use std::time::{Duration, Instant};

async fn a_chat_call_passes_through_and_is_recorded(backend: Backend) {
    let Some(setup) = ProxySetup::new(backend) else {
        return;
    };
    let (app, upstream, tenant, key, admin) = setup.start().await;
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hello there"}],
        "user": "cust_8372",
        "some_future_field": {"kept": true},
    });
    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("x-agv-session-id", "sess-1")
        .header("x-agv-metadata", r#"{"feature":"support-bot"}"#)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let id = call_id(&res);
    let reply: serde_json::Value = res.json().await.unwrap();
    assert_eq!(reply["object"], "chat.completion");
    assert!(reply["usage"]["total_tokens"].as_i64().unwrap() > 0);

    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].body, body,
        "the body reaches the upstream unchanged, unknown fields included"
    );

    let call = app.call(&admin, &id).await;
    assert_eq!(call["tenant_id"], tenant.as_str());
    assert_eq!(call["end_user"], "cust_8372");
    assert_eq!(call["session_id"], "sess-1");
    assert_eq!(call["metadata"]["feature"], "support-bot");
    assert_eq!(call["status"], 200);
    assert_eq!(call["blocked"], false);
    assert_eq!(call["total_tokens"], reply["usage"]["total_tokens"]);
    assert!(
        call["cost"].as_i64().unwrap() > 0,
        "gpt-4o-mini has a price: {call}"
    );
    assert_eq!(call["request_sha256"].as_str().unwrap().len(), 64);
    assert!(
        call["response_body"]
            .as_str()
            .unwrap()
            .contains("chat.completion"),
        "{call}"
    );
    let decisions: Vec<&str> = call["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["policy"].as_str().unwrap())
        .collect();
    for p in ["killswitch", "dg-002", "dg-001", "dg-003", "dg-005"] {
        assert!(
            decisions.contains(&p),
            "decision {p} recorded: {decisions:?}"
        );
    }
    app.stop().await;
}

async fn calls_are_searchable_and_isolated_by_tenant(backend: Backend) {
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
    let mut ids = Vec::new();
    for i in 0..5 {
        let res = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("x-agv-user-id", format!("user-{}", i % 2))
            .json(&chat_body("hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        ids.push(call_id(&res));
    }
    let page: serde_json::Value = app
        .get_with_key("/v1/calls?user=user-1", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    // Cursor pagination walks every call once, newest first.
    let mut seen = Vec::new();
    let mut url = "/v1/calls?limit=2".to_owned();
    loop {
        let page: serde_json::Value = app.get_with_key(&url, &admin).await.json().await.unwrap();
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => url = format!("/v1/calls?limit=2&cursor={c}"),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected);

    // Another tenant sees none of it.
    let res = app
        .get_with_key(&format!("/v1/calls/{}", ids[0]), &other_admin)
        .await;
    assert_eq!(res.status(), 404);
    let page: serde_json::Value = app
        .get_with_key("/v1/calls", &other_admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 0);
    // A proxy key may not read records.
    assert_eq!(
        app.get_with_key(&format!("/v1/calls/{}", ids[0]), &key)
            .await
            .status(),
        403
    );
    app.stop().await;
}

on_both_backends!(
    a_chat_call_passes_through_and_is_recorded,
    calls_are_searchable_and_isolated_by_tenant
);

#[tokio::test]
async fn streaming_relays_chunks_as_they_arrive_and_hides_usage_the_client_did_not_ask_for() {
    let setup = ProxySetup::new(Backend::Sqlite).unwrap();
    let (app, upstream, _tenant, key, admin) = setup.start().await;
    upstream.set_chunk_delay(Duration::from_millis(300));
    let started = Instant::now();
    let res = app
        .post_json("/v1/chat/completions", &key, &serde_json::json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "one two three four"}]}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let id = call_id(&res);
    let mut stream = res.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    let first_at = started.elapsed();
    let mut text = String::from_utf8_lossy(&first).into_owned();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let total = started.elapsed();
    assert!(
        first_at + Duration::from_millis(500) < total,
        "first chunk at {first_at:?}, stream done at {total:?}: not buffered"
    );
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        !text.contains("\"usage\""),
        "the client did not ask for usage: {text}"
    );
    // The upstream was asked for usage, and the record has it.
    assert_eq!(
        upstream.requests()[0].body["stream_options"]["include_usage"],
        true
    );
    let call = app.call(&admin, &id).await;
    assert!(call["total_tokens"].as_i64().unwrap() > 0, "{call}");
    assert_eq!(call["stream"], true);
    app.stop().await;
}

#[tokio::test]
async fn a_streaming_client_that_asks_for_usage_receives_it() {
    let setup = ProxySetup::new(Backend::Sqlite).unwrap();
    let (app, _upstream, _tenant, key, _admin) = setup.start().await;
    let res = app
        .post_json(
            "/v1/chat/completions",
            &key,
            &serde_json::json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    let text = res.text().await.unwrap();
    assert!(text.contains("\"usage\":{"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    app.stop().await;
}

#[tokio::test]
async fn embeddings_and_models_pass_through() {
    let setup = ProxySetup::new(Backend::Sqlite).unwrap();
    let (app, upstream, _tenant, key, admin) = setup.start().await;
    let res = app
        .post_json(
            "/v1/embeddings",
            &key,
            &serde_json::json!({"model": "text-embedding-3-small", "input": "hello"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let id = call_id(&res);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(app.call(&admin, &id).await["endpoint"], "embeddings");
    let res = app.get_with_key("/v1/models", &key).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["object"],
        "list"
    );
    // The model list is cached: a second request does not reach the upstream.
    let hits = upstream.hits();
    assert_eq!(app.get_with_key("/v1/models", &key).await.status(), 200);
    assert_eq!(upstream.hits(), hits, "the model list came from the cache");
    let status: serde_json::Value = app
        .get_with_key("/v1/status", &key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["calls_last_hour"], 1);
    assert_eq!(status["protected"], true);
    assert!(
        status["enforcement_latency_p95_ms"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0),
        "{status}"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for name in [
        "agv_calls_total{",
        "decision=\"pass\"",
        "agv_tokens_total",
        "agv_cost_nanodollars_total",
        "agv_enforcement_seconds_bucket",
        "agv_recorder_batch_size",
        "agv_recorder_commit_seconds_bucket",
        "agv_recorder_wait_seconds_bucket",
        "agv_upstream_latency_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    app.stop().await;
}

#[tokio::test]
async fn upstream_failures_become_clean_errors_and_error_records() {
    let setup = ProxySetup::new(Backend::Sqlite).unwrap();
    let (app, upstream, _tenant, key, admin) = setup.start().await;

    upstream.set_mode(Mode::error(500));
    let res = app.chat(&key, "x").await;
    assert_eq!(res.status(), 502);
    let id = call_id(&res);
    assert_eq!(error_code(res).await, "upstream_error");
    let call = app.call(&admin, &id).await;
    assert_eq!(call["status"], 502);
    assert_eq!(
        call["upstream_attempts"], 4,
        "three retries after the first try: {call}"
    );

    upstream.set_mode(Mode::error(503));
    assert_eq!(app.chat(&key, "x").await.status(), 503);

    upstream.set_mode(Mode::MalformedJson);
    let res = app.chat(&key, "x").await;
    assert_eq!(res.status(), 502);
    assert_eq!(error_code(res).await, "upstream_invalid_response");

    upstream.set_mode(Mode::Hang);
    let started = Instant::now();
    let res = app.chat(&key, "x").await;
    assert_eq!(res.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(10));
    // The record's latency covers the time spent waiting for the upstream.
    let call = app.call(&admin, &call_id(&res)).await;
    let waited = call["upstream_latency_us"].as_i64().unwrap();
    assert!(waited >= 1_000_000, "{call}");
    assert!(call["latency_us"].as_i64().unwrap() >= waited, "{call}");

    upstream.set_mode(Mode::CutStream { after_chunks: 2 });
    let res = app.post_json("/v1/chat/completions", &key, &serde_json::json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "a b c d e f"}]})).await;
    let id = call_id(&res);
    let text = res.text().await.unwrap_or_default();
    assert!(
        !text.contains("data: [DONE]"),
        "a cut stream must not look complete: {text}"
    );
    assert!(text.contains("error"), "{text}");
    let call = app.call(&admin, &id).await;
    assert!(
        call["error"].as_str().unwrap().contains("before [DONE]"),
        "{call}"
    );

    upstream.set_mode(Mode::Normal);
    assert_eq!(
        app.chat(&key, "x").await.status(),
        200,
        "recovers once the upstream does"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502() {
    let setup = ProxySetup::new(Backend::Sqlite).unwrap();
    let dead = agv_testkit::upstream::refused_url();
    let app = crate::helpers::TestApp::start_with(setup.home, |s| {
        s.upstream_url = dead;
        s.upstream_retries = 1;
    })
    .await;
    let res = app.chat(&setup.key, "x").await;
    assert_eq!(res.status(), 502);
    assert_eq!(error_code(res).await, "upstream_unreachable");
    app.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_the_server_stays_up() {
    let setup = ProxySetup::new(Backend::Sqlite).unwrap();
    let (app, upstream, _tenant, key, admin) = setup.start().await;
    let post = |body: Vec<u8>| {
        let req = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body);
        async move { req.send().await.unwrap() }
    };
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed JSON", b"{\"model\": ".to_vec(), 400),
        ("not an object", b"[1,2,3]".to_vec(), 400),
        (
            "wrong model type",
            br#"{"model": 42, "messages": []}"#.to_vec(),
            400,
        ),
        (
            "wrong stream type",
            br#"{"model": "gpt-4o", "stream": "yes", "messages": []}"#.to_vec(),
            400,
        ),
        ("invalid UTF-8", b"{\"model\": \"\xff\xfe\"}".to_vec(), 400),
        (
            "10,000-deep nesting",
            format!(r#"{{"model":"gpt-4o","messages":{deep}}}"#).into_bytes(),
            400,
        ),
        ("empty body", Vec::new(), 400),
        ("30 MB body", vec![b' '; 30 * 1024 * 1024], 413),
    ];
    for (what, body, expected) in cases {
        let res = post(body).await;
        assert_eq!(res.status(), expected, "{what}");
        let code = error_code(res).await;
        assert!(!code.is_empty(), "{what}");
    }
    let huge = "x".repeat(64 * 1024);
    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("x-agv-user-id", &huge)
        .json(&chat_body("x"))
        .send()
        .await;
    match res {
        Ok(r) => assert!(r.status().is_client_error(), "huge header: {}", r.status()),
        Err(e) => assert!(
            e.is_request() || e.is_connect() || e.is_body(),
            "huge header: {e}"
        ),
    }
    for (header, value) in [
        ("x-agv-metadata", "not json"),
        ("x-agv-metadata", "[1]"),
        ("x-agv-user-id", &"u".repeat(300)),
    ] {
        let res = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header(header, value)
            .json(&chat_body("x"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{header}");
    }
    assert_eq!(upstream.hits(), 0, "nothing bad reached the upstream");
    let page: serde_json::Value = app
        .get_with_key("/v1/calls", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["data"].as_array().unwrap().len(),
        0,
        "nothing was recorded as a call"
    );
    assert_eq!(
        app.chat(&key, "still fine").await.status(),
        200,
        "the server stays up"
    );
    assert_eq!(
        app.get_with_key("/v1/calls?since=yesterday", &admin)
            .await
            .status(),
        400
    );
    assert_eq!(
        app.get_with_key("/v1/calls?cursor=zzz", &admin)
            .await
            .status(),
        400
    );
    assert_eq!(
        app.get_with_key("/v1/calls/call_nope", &admin)
            .await
            .status(),
        404
    );
    app.stop().await;
}

#[tokio::test]
async fn in_flight_requests_finish_during_a_graceful_shutdown() {
    let setup = ProxySetup::new(Backend::Sqlite).unwrap();
    let (app, upstream, _tenant, key, admin) = setup.start().await;
    upstream.set_latency(Duration::from_millis(800));
    let (client, url, k) = (
        app.client.clone(),
        app.url("/v1/chat/completions"),
        key.clone(),
    );
    let in_flight = tokio::spawn(async move {
        client
            .post(url)
            .bearer_auth(k)
            .json(&chat_body("slow"))
            .send()
            .await
    });
    // Let the request reach the upstream, then stop the server as SIGTERM does.
    let started = Instant::now();
    while upstream.hits() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let home = app.stop().await;
    let res = in_flight
        .await
        .unwrap()
        .expect("the in-flight request got an answer");
    assert_eq!(res.status(), 200, "the in-flight request finished");
    let id = call_id(&res);
    // And it was recorded before the server went away.
    let app = crate::helpers::TestApp::start(home).await;
    assert_eq!(app.call(&admin, &id).await["status"], 200);
    app.stop().await;
}

#[tokio::test]
async fn long_bodies_are_stored_truncated_and_marked_with_the_hash_of_the_whole() {
    let setup = ProxySetup::new(Backend::Sqlite).unwrap();
    let url = setup.upstream.url();
    let (home, upstream, key, admin) = (setup.home, setup.upstream, setup.key, setup.admin);
    let app = crate::helpers::TestApp::start_with(home, |s| {
        s.upstream_url = url;
        s.max_stored_body_bytes = 1024;
    })
    .await;
    let body = chat_body(&"long ".repeat(2000));
    let raw = serde_json::to_vec(&body).unwrap();
    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(raw.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let call = app.call(&admin, &call_id(&res)).await;
    assert_eq!(call["request_truncated"], true);
    assert!(call["request_body"].as_str().unwrap().len() <= 1024);
    assert_eq!(
        call["request_sha256"],
        agv_server::proxy::sha256_hex(&raw),
        "the hash covers the whole body"
    );
    assert_eq!(
        call["response_truncated"], true,
        "the echoed reply is long too"
    );
    assert_eq!(
        upstream.requests()[0].body_len,
        raw.len(),
        "the upstream got the whole body"
    );
    app.stop().await;
}

/// The WAL header's checkpoint sequence: SQLite adds one each time it starts writing the
/// WAL from its beginning again.
fn wal_restarts(data: &std::path::Path) -> u32 {
    let header = std::fs::read(data.join("agv.db-wal")).expect("the WAL file");
    u32::from_be_bytes([header[12], header[13], header[14], header[15]])
}

/// README: under steady traffic the WAL is rewritten from its start every two seconds
/// instead of growing, and `/metrics` exports the finish that makes it so. Through the
/// whole server: the calls commit their own records (nothing else writes), and the
/// checkpointer's finish must still come round.
#[tokio::test]
async fn under_steady_traffic_the_wal_starts_over_and_its_finish_is_in_the_metrics() {
    let setup = ProxySetup::new(Backend::Sqlite).unwrap();
    let (app, _upstream, _tenant, key, admin) = setup.start().await;
    app.set_policy(
        &admin,
        serde_json::json!({"key_requests_per_minute": 100_000}),
    )
    .await;
    assert_eq!(app.chat(&key, "first").await.status(), 200);
    let before = wal_restarts(app.home.dir.path());
    let until = std::time::Instant::now() + std::time::Duration::from_millis(5000);
    let mut calls = 0;
    while std::time::Instant::now() < until {
        assert_eq!(app.chat(&key, "steady").await.status(), 200);
        calls += 1;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let restarts = wal_restarts(app.home.dir.path()) - before;
    assert!(
        restarts >= 1,
        "the WAL was started over {restarts} times during {calls} calls"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("agv_sqlite_checkpoint_finish_seconds_count"),
        "/metrics lacks the WAL finish"
    );
    app.stop().await;
}

#[tokio::test]
async fn chat_requests_without_a_valid_messages_list_get_400_naming_the_field_and_reach_no_upstream()
 {
    let setup = ProxySetup::new(Backend::Sqlite).unwrap();
    let (app, upstream, _tenant, key, _admin) = setup.start().await;
    let bad = [
        serde_json::json!({"model": "gpt-4o-mini"}),
        serde_json::json!({"model": "gpt-4o-mini", "messages": null}),
        serde_json::json!({"model": "gpt-4o-mini", "messages": "hi"}),
        serde_json::json!({"model": "gpt-4o-mini", "messages": {"role": "user", "content": "hi"}}),
        serde_json::json!({"model": "gpt-4o-mini", "messages": []}),
        serde_json::json!({"model": "gpt-4o-mini", "messages": ["hi"]}),
        serde_json::json!({"model": "gpt-4o-mini", "messages": [{"content": "hi"}]}),
        serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": 7, "content": "hi"}]}),
        serde_json::json!({"model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "ok"}, {"content": "second lacks a role"}]}),
    ];
    for body in &bad {
        let res = app.post_json("/v1/chat/completions", &key, body).await;
        assert_eq!(res.status(), 400, "{body}");
        let err: serde_json::Value = res.json().await.unwrap();
        assert_eq!(err["error"]["type"], "invalid_request_error", "{err}");
        assert_eq!(err["error"]["param"], "messages", "{err}");
        assert_eq!(err["error"]["code"], "invalid_messages", "{err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("messages"),
            "the message names the field: {err}"
        );
    }
    assert_eq!(upstream.hits(), 0, "nothing invalid was forwarded");
    // A well-formed request still goes through, with any role the upstream knows.
    let ok = serde_json::json!({"model": "gpt-4o-mini", "messages": [
        {"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}]});
    assert_eq!(
        app.post_json("/v1/chat/completions", &key, &ok)
            .await
            .status(),
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn client_made_model_names_do_not_mint_metric_series() {
    let setup = ProxySetup::new(Backend::Sqlite).unwrap();
    let (app, _upstream, _tenant, key, _admin) = setup.start().await;
    assert_eq!(app.chat(&key, "warm").await.status(), 200);
    let before = app.get("/metrics").await.text().await.unwrap().len();
    for i in 0..30 {
        let model = format!("made-up-{i}-{}", "m".repeat(2_000));
        let body =
            serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        let res = app.post_json("/v1/chat/completions", &key, &body).await;
        assert!(res.status().as_u16() < 500, "{}", res.status());
    }
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        !metrics.contains("made-up-"),
        "a client-made model name became a label"
    );
    assert!(
        metrics.contains("model=\"other\""),
        "unknown models count as other"
    );
    assert!(
        metrics.len() < before + 4_000,
        "/metrics grew from {before} to {} bytes",
        metrics.len()
    );
    app.stop().await;
}
