//! Per-tenant redaction, applied before storage: checked through the API and in the
//! database itself, on both backends; and its bad input.

use crate::helpers::{Backend, DataHome, ProxySetup, call_id, error_code};
use crate::on_both_backends;
use crate::replay::completion;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// One text value read from the database directly, as someone with file or database
/// access would (the sync Postgres client runs on a thread of its own).
pub fn stored_text(home: &DataHome, sql: &str) -> Option<String> {
    let (path, url, sql) = (
        home.path().join(agv_server::store::sqlite::DB_FILE),
        home.database_url(),
        sql.to_owned(),
    );
    std::thread::spawn(move || match url {
        None => rusqlite::Connection::open(path)
            .unwrap()
            .query_row(&sql, [], |r| r.get::<_, Option<String>>(0))
            .unwrap(),
        Some(url) => ::postgres::Client::connect(&url, ::postgres::NoTls)
            .unwrap()
            .query_one(sql.as_str(), &[])
            .unwrap()
            .get::<_, Option<String>>(0),
    })
    .join()
    .unwrap()
}

const PERSONAL: &str = "I am jane.doe@example.com, call me on +1 415 555 0100, card 4111 1111 1111 1111, ticket ACME-1234";

async fn redact_mode_replaces_personal_data_before_it_is_stored(backend: Backend) {
    let Some(setup) = ProxySetup::new(backend) else {
        return;
    };
    let (app, up, _tenant, key, admin) = setup.start().await;
    app.set_policy(
        &admin,
        json!({"redaction": {"mode": "redact", "custom": ["ACME-\\d{4}"]}}),
    )
    .await;
    up.push_chat_reply(completion(
        Some("Noted: I will write to jane.doe@example.com"),
        &[],
        "gpt-4o-mini",
        "fp_1",
    ));
    let body = crate::helpers::chat_body(PERSONAL);
    let sent = serde_json::to_vec(&body).unwrap();
    let res = app.post_json("/v1/chat/completions", &key, &body).await;
    assert_eq!(res.status(), 200);
    let id = call_id(&res);
    // The client still got the whole answer.
    let answer: Value = res.json().await.unwrap();
    assert!(answer.to_string().contains("jane.doe@example.com"));

    let call = app.call(&admin, &id).await;
    let request = call["request_body"].as_str().unwrap();
    for gone in ["jane.doe@example.com", "555 0100", "4111 1111", "ACME-1234"] {
        assert!(!request.contains(gone), "{gone} was stored: {request}");
    }
    for marker in [
        "[REDACTED:email]",
        "[REDACTED:phone]",
        "[REDACTED:card]",
        "[REDACTED:custom]",
    ] {
        assert!(request.contains(marker), "{marker} missing: {request}");
    }
    assert!(
        call["response_body"]
            .as_str()
            .unwrap()
            .contains("[REDACTED:email]")
    );
    // The hash still names what was sent, so the customer can prove the original.
    assert_eq!(call["request_sha256"], hex::encode(Sha256::digest(&sent)));

    // In the database itself, not only through the API.
    let raw = stored_text(
        &app.home,
        &format!("SELECT request_body FROM calls WHERE id = '{id}'"),
    )
    .unwrap();
    assert!(!raw.contains("jane.doe"), "{raw}");
    let raw_resp = stored_text(
        &app.home,
        &format!("SELECT response_body FROM calls WHERE id = '{id}'"),
    )
    .unwrap();
    assert!(!raw_resp.contains("jane.doe"), "{raw_resp}");

    // The text index holds only what was stored.
    agv_server::store::run_blocking({
        let s = app.app_state.store.clone();
        move || s.index_pending_calls()
    })
    .await
    .unwrap();
    let found: Value = app
        .get_with_key("/v1/calls?q=jane", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(found["data"].as_array().unwrap().len(), 0, "{found}");
}

async fn hashes_only_keeps_no_body_and_cannot_be_replayed(backend: Backend) {
    let Some(setup) = ProxySetup::new(backend) else {
        return;
    };
    let (app, _up, _tenant, key, admin) = setup.start().await;
    app.set_policy(&admin, json!({"redaction": {"mode": "hashes_only"}}))
        .await;
    let res = app.chat(&key, PERSONAL).await;
    assert_eq!(res.status(), 200);
    let id = call_id(&res);
    let call = app.call(&admin, &id).await;
    assert_eq!(call["request_body"], "");
    assert!(call["response_body"].is_null());
    assert_eq!(call["request_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(call["response_sha256"].as_str().unwrap().len(), 64);
    let raw = stored_text(
        &app.home,
        &format!("SELECT request_body FROM calls WHERE id = '{id}'"),
    );
    assert_eq!(raw.as_deref(), Some(""));
    let res = app
        .post_json(
            &format!("/v1/replay/{id}"),
            &admin,
            &json!({"mode": "upstream"}),
        )
        .await;
    assert_eq!(res.status(), 409);
    assert_eq!(error_code(res).await, "request_not_stored");

    // Back to whole bodies: the next call is stored as sent. (The change feed may
    // re-apply the previous setting for up to one poll; it converges to the stored one.)
    app.set_policy(&admin, json!({})).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let id = call_id(&app.chat(&key, "plain again").await);
        let body = app.call(&admin, &id).await["request_body"].clone();
        if body.as_str().unwrap().contains("plain again") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still redacted: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn bad_redaction_settings_are_400_and_change_nothing(backend: Backend) {
    let Some(setup) = ProxySetup::new(backend) else {
        return;
    };
    let (app, _up, _tenant, key, admin) = setup.start().await;
    app.set_policy(&admin, json!({"redaction": {"mode": "redact"}}))
        .await;
    for (bad, says) in [
        (
            json!({"redaction": {"mode": "redact", "custom": ["(unclosed"]}}),
            "custom[0]",
        ),
        (
            json!({"redaction": {"mode": "redact", "custom": [".*"]}}),
            "empty",
        ),
        (
            json!({"redaction": {"mode": "redact", "patterns": ["ssn"]}}),
            "ssn",
        ),
        (json!({"redaction": {"mode": "shred"}}), "shred"),
        (json!({"redaction": {"mod": "redact"}}), "mod"),
        (json!({"redaction": "redact"}), "redact"),
    ] {
        let res = app
            .client
            .put(app.url("/v1/policies"))
            .bearer_auth(&admin)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{bad}");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_policy", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{bad}: {v}"
        );
    }
    // The redaction set before still holds.
    let id = call_id(&app.chat(&key, PERSONAL).await);
    let body = app.call(&admin, &id).await["request_body"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(body.contains("[REDACTED:email]"), "{body}");
}

on_both_backends!(
    a_call_list_previews_the_last_user_message_under_the_redaction_now,
    redact_mode_replaces_personal_data_before_it_is_stored,
    hashes_only_keeps_no_body_and_cannot_be_replayed,
    bad_redaction_settings_are_400_and_change_nothing,
);

/// The newest call as `GET /v1/calls` lists it.
async fn first_listed(app: &crate::helpers::TestApp, admin: &str) -> Value {
    let v: Value = app
        .get_with_key("/v1/calls", admin)
        .await
        .json()
        .await
        .unwrap();
    v["data"][0].clone()
}

async fn a_call_list_previews_the_last_user_message_under_the_redaction_now(backend: Backend) {
    let Some(setup) = ProxySetup::new(backend) else {
        return;
    };
    let (app, _up, _tenant, key, admin) = setup.start().await;
    let body = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You answer billing questions."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi, how can I help?"},
        {"role": "user", "content": format!("Where is my refund?\n I am jane.doe@example.com. {}", "More detail. ".repeat(20))},
    ]});
    let res = app.post_json("/v1/chat/completions", &key, &body).await;
    assert_eq!(res.status(), 200);
    let call = first_listed(&app, &admin).await;
    let preview = call["preview"].as_str().unwrap();
    assert!(
        preview.starts_with("Where is my refund? I am jane.doe@example.com. More detail."),
        "{preview}"
    );
    assert!(
        preview.ends_with('…') && preview.chars().count() <= 121,
        "{preview}"
    );
    // The whole record is still there beside it.
    assert!(call["request_body"].as_str().unwrap().contains("billing"));

    // A stricter redaction applies to the preview of calls stored before it.
    app.set_policy(&admin, json!({"redaction": {"mode": "redact"}}))
        .await;
    let call = first_listed(&app, &admin).await;
    let preview = call["preview"].as_str().unwrap();
    assert!(preview.contains("I am [REDACTED:email]."), "{preview}");
    app.set_policy(&admin, json!({"redaction": {"mode": "hashes_only"}}))
        .await;
    assert!(first_listed(&app, &admin).await["preview"].is_null());
}
