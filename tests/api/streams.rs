//! Streamed calls end like any other call: a stream the upstream breaks is a failed call
//! (a 5xx record, usage estimated from what was relayed, an upstream-error incident, a
//! count toward dg-004); a stream the client abandons is recorded as abandoned.

use crate::helpers::{Backend, ProxySetup, TestApp, call_id};
use crate::on_both_backends;
use agv_testkit::upstream::Mode;
use serde_json::{Value, json};
use std::time::Duration;

fn stream_body(content: &str) -> Value {
    json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": content}]})
}

async fn settle(app: &TestApp) {
    app.app_state.proxy.incidents.flush().await;
}

async fn incidents(app: &TestApp, admin: &str, query: &str) -> Vec<Value> {
    let res = app
        .get_with_key(&format!("/v1/incidents{query}"), admin)
        .await;
    assert_eq!(res.status(), 200);
    let list: Value = res.json().await.unwrap();
    list["data"].as_array().cloned().unwrap_or_default()
}

/// The call's record once it is stored (a call the client left is recorded after the
/// relay notices).
async fn record(app: &TestApp, admin: &str, id: &str) -> Value {
    for _ in 0..100 {
        let res = app.get_with_key(&format!("/v1/calls/{id}"), admin).await;
        if res.status() == 200 {
            return res.json().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("call {id} was never recorded");
}

async fn a_stream_the_upstream_cuts_is_a_failed_call_with_estimated_usage_and_an_incident(
    backend: Backend,
) {
    let Some(setup) = ProxySetup::new(backend) else {
        return;
    };
    let (app, upstream, _tenant, key, admin) = setup.start().await;
    upstream.set_chunks(Some(8));
    upstream.set_mode(Mode::CutStream { after_chunks: 5 });
    let res = app
        .post_json(
            "/v1/chat/completions",
            &key,
            &stream_body(&"sixteen words of weather news ".repeat(4)),
        )
        .await;
    assert_eq!(res.status(), 200, "the stream had started");
    let id = call_id(&res);
    let text = res.text().await.unwrap();
    assert!(!text.contains("data: [DONE]"), "{text}");
    assert!(text.contains("\"error\""), "{text}");

    let call = record(&app, &admin, &id).await;
    assert_eq!(
        call["status"], 502,
        "a broken stream is a failed call: {call}"
    );
    let error = call["error"].as_str().unwrap();
    assert!(error.contains("before [DONE]"), "{call}");
    assert!(
        error.contains("usage estimated"),
        "marked as estimated: {call}"
    );
    assert!(call["prompt_tokens"].as_i64().unwrap() > 0, "{call}");
    assert!(
        call["completion_tokens"].as_i64().unwrap() > 0,
        "tokens were relayed: {call}"
    );
    assert!(call["cost"].as_f64().unwrap() > 0.0, "{call}");

    settle(&app).await;
    let list = incidents(&app, &admin, "?policy=upstream_error").await;
    assert_eq!(
        list.len(),
        1,
        "the same incident a unary failure opens: {list:?}"
    );
    assert_eq!(list[0]["subject"], "model:gpt-4o-mini");
    app.stop().await;
}

async fn broken_streams_count_toward_the_failure_spike(backend: Backend) {
    let Some(setup) = ProxySetup::new(backend) else {
        return;
    };
    let (app, upstream, _tenant, key, admin) = setup.start().await;
    upstream.set_mode(Mode::CutStream { after_chunks: 2 });
    let mut frozen = false;
    for _ in 0..12 {
        let res = app
            .post_json("/v1/chat/completions", &key, &stream_body("x"))
            .await;
        if res.status() == 423 {
            frozen = true;
            break;
        }
        assert_eq!(res.status(), 200);
        let _ = res.text().await;
    }
    assert!(frozen, "ten broken streams in a row freeze the tenant");
    settle(&app).await;
    assert_eq!(incidents(&app, &admin, "?policy=dg-004").await.len(), 1);
    app.stop().await;
}

async fn a_stream_the_client_abandons_is_recorded_as_abandoned(backend: Backend) {
    let Some(setup) = ProxySetup::new(backend) else {
        return;
    };
    let (app, upstream, _tenant, key, admin) = setup.start().await;
    upstream.set_chunks(Some(40));
    upstream.set_chunk_delay(Duration::from_millis(50));
    let mut res = app
        .post_json(
            "/v1/chat/completions",
            &key,
            &stream_body(&"a long answer word by word ".repeat(10)),
        )
        .await;
    assert_eq!(res.status(), 200);
    let id = call_id(&res);
    let first = res.chunk().await.unwrap();
    assert!(first.is_some());
    drop(res);

    let call = record(&app, &admin, &id).await;
    assert_eq!(call["status"], 499, "the client closed the request: {call}");
    let error = call["error"].as_str().unwrap();
    assert!(error.contains("client disconnected"), "{call}");
    assert!(
        call["completion_tokens"].as_i64().unwrap() > 0,
        "what was relayed is counted: {call}"
    );
    settle(&app).await;
    assert!(
        incidents(&app, &admin, "?policy=upstream_error")
            .await
            .is_empty(),
        "a client leaving is not an upstream error"
    );
    app.stop().await;
}

async fn a_complete_stream_is_recorded_with_the_upstreams_usage(backend: Backend) {
    let Some(setup) = ProxySetup::new(backend) else {
        return;
    };
    let (app, _upstream, _tenant, key, admin) = setup.start().await;
    let res = app
        .post_json("/v1/chat/completions", &key, &stream_body("hello there"))
        .await;
    let id = call_id(&res);
    assert!(res.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    let call = record(&app, &admin, &id).await;
    assert_eq!(call["status"], 200);
    assert!(call["error"].is_null(), "{call}");
    assert!(call["total_tokens"].as_i64().unwrap() > 0, "{call}");
    assert!(call["cost"].as_f64().unwrap() > 0.0, "{call}");
    app.stop().await;
}

on_both_backends!(
    a_stream_the_upstream_cuts_is_a_failed_call_with_estimated_usage_and_an_incident,
    broken_streams_count_toward_the_failure_spike,
    a_stream_the_client_abandons_is_recorded_as_abandoned,
    a_complete_stream_is_recorded_with_the_upstreams_usage,
);
