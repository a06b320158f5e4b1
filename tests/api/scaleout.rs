//! Scale-out on Postgres: two instances share one database. A freeze made on one reaches
//! the other within a second (the change feed, woken by LISTEN/NOTIFY), and each scheduled
//! run happens on exactly one of them (claims in the shared database).

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
