//! Scale-out on Postgres: two instances share one database. A freeze made on one reaches
//! the other within a second (the change feed, woken by LISTEN/NOTIFY), each scheduled
//! run happens on exactly one of them (claims in the shared database), and a rate limit or
//! a budget holds for both together, not for each (leases of shared quota rows).

use crate::helpers::{Backend, DataHome, ProxySetup, TestApp};
use agv_server::config::Settings;
use serde_json::json;
use std::time::{Duration, Instant};

fn tweak(s: &mut Settings, upstream: &str, backups: &std::path::Path, cron: &str) {
    s.upstream_url = upstream.to_owned();
    s.unauth_rate_limit_per_minute = 0;
    // Only the backups of the test fire while it runs.
    s.housekeeping_cron = "0 0 0 1 1 *".into();
    s.backup_verify_cron = None;
    s.backup_cron = Some(cron.to_owned());
    s.backup_dir = backups.to_owned();
}

async fn until_status(app: &TestApp, key: &str, want: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let status = app.chat(key, "scale-out").await.status().as_u16();
        if status == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "still {status} after {within:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_freezes_within_a_second_and_run_each_schedule_once() {
    let Some(setup) = ProxySetup::new(Backend::Postgres) else {
        return;
    };
    let db = setup.home.database_url().unwrap();
    let upstream = setup.upstream.url();
    let backups = tempfile::tempdir().unwrap();
    // Three firings, two seconds apart, starting three seconds from now.
    let now = chrono::Utc::now().timestamp();
    let secs: Vec<String> = [3, 5, 7]
        .iter()
        .map(|d| ((now + d) % 60).to_string())
        .collect();
    let cron = format!("{} * * * * *", secs.join(","));
    let (key, admin) = (setup.key.clone(), setup.admin.clone());
    let a = TestApp::start_with(setup.home, |s| tweak(s, &upstream, backups.path(), &cron)).await;
    let b_home = DataHome::new(Backend::Sqlite).unwrap();
    let b = TestApp::start_with(b_home, |s| {
        tweak(s, &upstream, backups.path(), &cron);
        s.database_url = Some(db.clone());
    })
    .await;
    assert_eq!(a.chat(&key, "via a").await.status(), 200);
    assert_eq!(b.chat(&key, "via b").await.status(), 200);

    // A freeze made on A holds on B within a second; an unfreeze on B frees A as fast.
    let res = a
        .post_json(
            "/v1/killswitch/tenant",
            &admin,
            &json!({"reason": "scale-out"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let took = until_status(&b, &key, 423, Duration::from_secs(1)).await;
    eprintln!("the freeze reached the other instance in {took:?}");
    let res = b
        .client
        .delete(b.url("/v1/killswitch/tenant"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    until_status(&a, &key, 200, Duration::from_secs(1)).await;

    // Each of the three scheduled backups ran once, on one instance or the other.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let store = a.app_state.store.clone();
    let claims = tokio::task::spawn_blocking(move || store.scheduled_run_claims("backup"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claims.len(), 3, "{claims:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let runs = loop {
        let (sa, sb) = (a.app_state.queue.stats(), b.app_state.queue.stats());
        let done = sa.completed_total + sb.completed_total;
        if sa.pending + sa.running + sb.pending + sb.running == 0 && done >= 3 {
            break done;
        }
        assert!(
            Instant::now() < deadline,
            "backups still running: {sa:?} {sb:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        runs, 3,
        "each scheduled run happened once, not once per instance"
    );
    let files = std::fs::read_dir(backups.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tar"))
        .count();
    // The keep rule (7 daily, 4 weekly) keeps the newest backup of the day.
    assert_eq!(files, 1);
    b.stop().await;
    a.stop().await;
}

fn quiet(s: &mut Settings, upstream: &str) {
    s.upstream_url = upstream.to_owned();
    s.unauth_rate_limit_per_minute = 0;
    s.housekeeping_cron = "0 0 0 1 1 *".into();
    s.backup_verify_cron = None;
    s.backup_cron = None;
}

/// Two instances on the Postgres of `setup`; the policy `overrides` set on the first is in
/// force on both when this returns.
async fn two_instances_with_policy(
    setup: ProxySetup,
    overrides: serde_json::Value,
    check: (&str, serde_json::Value),
) -> (
    TestApp,
    TestApp,
    crate::helpers::MockUpstream,
    String,
    String,
) {
    let db = setup.home.database_url().unwrap();
    let upstream_url = setup.upstream.url();
    let (key, admin, upstream) = (setup.key.clone(), setup.admin.clone(), setup.upstream);
    let a = TestApp::start_with(setup.home, |s| quiet(s, &upstream_url)).await;
    let b = TestApp::start_with(DataHome::new(Backend::Sqlite).unwrap(), |s| {
        quiet(s, &upstream_url);
        s.database_url = Some(db.clone());
    })
    .await;
    a.set_policy(&admin, overrides).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    for app in [&a, &b] {
        loop {
            let active: serde_json::Value = app
                .get_with_key("/v1/policies/active", &admin)
                .await
                .json()
                .await
                .unwrap();
            if active.pointer(check.0) == Some(&check.1) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the policy did not reach the instance: {active}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    (a, b, upstream, key, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rate_limit_holds_across_two_instances() {
    let Some(setup) = ProxySetup::new(Backend::Postgres) else {
        return;
    };
    let (a, b, upstream, key, _admin) = two_instances_with_policy(
        setup,
        json!({"key_requests_per_minute": 10}),
        ("/policies/3/thresholds/key_requests_per_minute", json!(10)),
    )
    .await;
    let started = Instant::now();
    let mut statuses = Vec::new();
    let mut retry_afters = Vec::new();
    let mut note = |res: reqwest::Response| {
        let status = res.status().as_u16();
        if status == 429 {
            let retry: u64 = res
                .headers()
                .get("retry-after")
                .expect("a 429 carries retry-after")
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            retry_afters.push(retry);
        }
        statuses.push(status);
    };
    // Sixteen calls one after another, alternating between the instances...
    for i in 0..16 {
        let app = if i % 2 == 0 { &a } else { &b };
        note(app.chat(&key, "limited").await);
    }
    // ...then fourteen at once, seven on each.
    let mut parallel = Vec::new();
    for i in 0..14 {
        let app = if i % 2 == 0 { &a } else { &b };
        parallel.push(app.spawn_post_json(
            "/v1/chat/completions",
            &key,
            &crate::helpers::chat_body("limited"),
        ));
    }
    for t in parallel {
        note(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    eprintln!("30 calls over two instances in {elapsed:?}: {ok} passed, {limited} limited");
    assert_eq!(ok + limited, 30, "{statuses:?}");
    // The bucket refills one request every six seconds; on a slow machine allow for it.
    let refilled = (elapsed.as_secs_f64() / 6.0).floor() as usize;
    assert!(
        (10..=10 + refilled).contains(&ok),
        "{ok} calls passed a limit of 10 per minute shared by two instances: {statuses:?}"
    );
    assert_eq!(upstream.hits(), ok as u64);
    assert!(
        retry_afters.iter().all(|r| (1..=120).contains(r)),
        "{retry_afters:?}"
    );
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_budget_holds_across_two_instances_under_fifty_parallel_calls() {
    let Some(setup) = ProxySetup::new(Backend::Postgres) else {
        return;
    };
    // A 4,000-word prompt on gpt-4o costs about $0.01 (the mock counts words as tokens) and
    // is estimated at about $0.0125, so $0.10 is about ten calls in all, not per instance.
    let (a, b, upstream, key, admin) = two_instances_with_policy(
        setup,
        json!({"budget_daily_usd": 0.1, "key_requests_per_minute": 1000}),
        ("/policies/6/thresholds/budget_daily_usd", json!(0.1)),
    )
    .await;
    let prompt = "word ".repeat(4000);
    let body = json!({"model": "gpt-4o", "max_tokens": 1, "messages": [{"role": "user", "content": prompt}]});
    let mut tasks = Vec::new();
    for i in 0..50 {
        let app = if i % 2 == 0 { &a } else { &b };
        tasks.push(app.spawn_post_json("/v1/chat/completions", &key, &body));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap().status().as_u16() {
            200 => ok += 1,
            402 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    eprintln!("50 parallel calls over two instances: {ok} passed, {refused} refused");
    assert!(ok >= 1 && refused >= 1, "ok {ok}, refused {refused}");
    assert_eq!(upstream.hits(), ok as u64);
    // Calls one after another, alternating, pass until the spend reaches the budget; then
    // both instances refuse.
    let mut refused_by = [false, false];
    for i in 0..20 {
        let app = if i % 2 == 0 { &a } else { &b };
        let res = app.post_json("/v1/chat/completions", &key, &body).await;
        match res.status().as_u16() {
            200 => {}
            402 => refused_by[i % 2] = true,
            other => panic!("unexpected status {other}"),
        }
        if refused_by == [true, true] {
            break;
        }
    }
    assert_eq!(
        refused_by,
        [true, true],
        "both instances refuse a used-up budget"
    );
    let page: serde_json::Value = a
        .get_with_key("/v1/calls?limit=500", &admin)
        .await
        .json()
        .await
        .unwrap();
    let calls = page["data"].as_array().unwrap();
    assert!(calls.len() >= 52, "every call is recorded: {}", calls.len());
    let spent: i64 = calls.iter().filter_map(|c| c["cost"].as_i64()).sum();
    let spent = spent as f64 / 1e9;
    eprintln!("spent ${spent} of a $0.10 budget");
    assert!(
        spent <= 0.1 + 0.0125,
        "two instances spent ${spent} of a $0.10 budget (at most one call's estimate, $0.0125, over)"
    );
    b.stop().await;
    a.stop().await;
}
