//! End-to-end tests of the console in headless Chromium (Debian's `chromium` and
//! `chromedriver`) against the real server with demo data and a local OpenAI-speaking
//! upstream: first-run setup, the operator console's update state, sign-in, the overview
//! without console errors, freezing a key and watching its calls get 423, unfreezing,
//! searching an end user, an incident and its timeline, a call, an export download, the
//! other pages, and signing out.
//!
//! Every page is photographed into `target/e2e-screenshots/` (not committed). When
//! chromedriver is missing the test prints SKIPPED and passes, unless
//! `AGV_TEST_REQUIRE_ALL=1` (CI), where a skip is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code, unused_imports)]
#[path = "api/helpers.rs"]
mod helpers;

use helpers::{Backend, DataHome, MockUpstream, TestApp};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use thirtyfour::prelude::*;

const PASSWORD: &str = "a long enough password";
const WAIT: Duration = Duration::from_secs(20);

fn chromedriver() -> Option<PathBuf> {
    let path = std::env::var_os("AGV_CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"));
    if path.exists() {
        return Some(path);
    }
    let msg = format!(
        "SKIPPED: browser tests need chromedriver at {} (apt-get install chromium chromium-driver)",
        path.display()
    );
    if std::env::var("AGV_TEST_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{msg}; AGV_TEST_REQUIRE_ALL=1 forbids skipping");
    }
    eprintln!("{msg}");
    None
}

struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_chromedriver(bin: &Path) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    // Owned at once, so that it is killed and waited for on every path.
    let driver = Driver { child, port };
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(res) = client
            .get(format!("http://127.0.0.1:{port}/status"))
            .send()
            .await
            && res.status().is_success()
        {
            return driver;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not start on port {port}");
}

struct Ui {
    driver: WebDriver,
    base: String,
    shots: PathBuf,
    downloads: PathBuf,
    shot: usize,
}

impl Ui {
    async fn open(driver_port: u16, base: &str, downloads: &Path) -> Ui {
        let mut caps = DesiredCapabilities::chrome();
        caps.set_binary("/usr/bin/chromium").unwrap();
        for arg in [
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--window-size=1366,900",
            "--no-first-run",
        ] {
            caps.add_arg(arg).unwrap();
        }
        caps.add_experimental_option(
            "prefs",
            json!({
                "download.default_directory": downloads.to_str().unwrap(),
                "download.prompt_for_download": false,
            }),
        )
        .unwrap();
        caps.set_browser_log_level(thirtyfour::LoggingPrefsLogLevel::All)
            .unwrap();
        let driver = WebDriver::new(format!("http://127.0.0.1:{driver_port}"), caps)
            .await
            .expect("a Chromium session");
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/e2e-screenshots");
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).unwrap();
        Ui {
            driver,
            base: base.to_owned(),
            shots,
            downloads: downloads.to_owned(),
            shot: 0,
        }
    }

    async fn goto(&self, route: &str) {
        self.driver
            .goto(format!("{}/{route}", self.base))
            .await
            .unwrap();
    }

    /// Waits until the page named `page` has finished loading (`body[data-page]`,
    /// `body[data-ready=1]`), then photographs it and checks the console is clean.
    async fn ready(&mut self, page: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self
                .driver
                .execute(
                    "return [document.body.dataset.page || '', document.body.dataset.ready || ''];",
                    vec![],
                )
                .await
                .unwrap();
            let got: Vec<String> = v.convert().unwrap();
            if got[0] == page && got[1] == "1" {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                self.photo(&format!("timeout-{page}")).await;
                panic!("page '{page}' not ready after {WAIT:?}: body says {got:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.photo(page).await;
        self.no_console_errors(page).await;
    }

    async fn photo(&mut self, name: &str) {
        self.shot += 1;
        let path = self.shots.join(format!("{:02}-{name}.png", self.shot));
        self.driver.screenshot(&path).await.unwrap();
    }

    async fn no_console_errors(&self, page: &str) {
        let logs = self.driver.browser_log().await.unwrap();
        let severe: Vec<String> = logs
            .iter()
            .filter(|e| e.level == "SEVERE")
            .map(|e| e.message.clone())
            .collect();
        assert!(severe.is_empty(), "console errors on '{page}': {severe:#?}");
    }

    async fn el(&self, testid: &str) -> WebElement {
        self.driver
            .query(By::Css(format!("[data-testid='{testid}']")))
            .wait(WAIT, Duration::from_millis(100))
            .first()
            .await
            .unwrap_or_else(|e| panic!("no [data-testid={testid}]: {e}"))
    }

    async fn css(&self, css: &str) -> WebElement {
        self.driver
            .query(By::Css(css.to_owned()))
            .wait(WAIT, Duration::from_millis(100))
            .first()
            .await
            .unwrap_or_else(|e| panic!("nothing matches {css}: {e}"))
    }

    async fn type_into(&self, testid: &str, text: &str) {
        let e = self.el(testid).await;
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    async fn click(&self, testid: &str) {
        self.el(testid).await.click().await.unwrap();
    }

    /// Waits for a downloaded file whose name ends with `suffix`.
    async fn downloaded(&self, suffix: &str) -> PathBuf {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(entries) = std::fs::read_dir(&self.downloads) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.ends_with(suffix) {
                        return e.path();
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no *{suffix} downloaded into {}",
                self.downloads.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn make_user(home: &DataHome, email: &str, role: &str, tenant: Option<&str>) {
    home.make_user(email, role, tenant, PASSWORD);
}

async fn chat(app: &TestApp, key: &str, user: &str) -> u16 {
    app.client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "gpt-4o-mini", "user": user,
                      "messages": [{"role": "user", "content": "hello from the browser test"}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_end_to_end_in_chromium() {
    let Some(bin) = chromedriver() else {
        return;
    };
    let home = DataHome::new(Backend::Sqlite).unwrap();
    let demo: Value =
        serde_json::from_str(&home.cli_ok(&["demo", "--calls", "600", "--json"])).unwrap();
    let tenant = demo["tenant_id"].as_str().unwrap().to_owned();
    let admin = demo["admin_key"].as_str().unwrap().to_owned();
    let key = home.cli_ok(&[
        "key", "create", "--tenant", &tenant, "--scope", "proxy", "--name", "e2e",
    ]);
    let downloads = home.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let upstream = MockUpstream::start();
    let url = upstream.url();
    let app = TestApp::start_with(home, |s| {
        s.upstream_url = url;
        s.unauth_rate_limit_per_minute = 0;
        // No release server: the update card shows why it could not check.
        s.update_source = "http://127.0.0.1:9/releases".into();
    })
    .await;
    assert_eq!(chat(&app, &key, "e2e-user").await, 200);
    let calls: Value = app
        .get_with_key("/v1/calls?user=e2e-user", &admin)
        .await
        .json()
        .await
        .unwrap();
    let key_id = calls["data"][0]["key_id"].as_str().unwrap().to_owned();
    let demo_user = {
        let all: Value = app
            .get_with_key("/v1/calls?limit=50", &admin)
            .await
            .json()
            .await
            .unwrap();
        all["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["end_user"].as_str())
            .find(|u| *u != "e2e-user")
            .unwrap()
            .to_owned()
    };

    let driver = start_chromedriver(&bin).await;
    let mut ui = Ui::open(driver.port, &app.address, &downloads).await;

    // First run: the setup link makes the operator, who lands in the operator console.
    let token = app.app_state.setup.issue();
    ui.goto(&format!("#/setup?token={token}")).await;
    ui.ready("setup").await;
    ui.type_into("setup-email", "op@example.com").await;
    ui.type_into("setup-password", "short").await;
    ui.click("setup-submit").await;
    // A field-level message for the short password, and no account made.
    ui.css("[data-testid='setup-password'][aria-invalid='true'], .field-error")
        .await;
    ui.photo("setup-invalid").await;
    ui.type_into("setup-password", PASSWORD).await;
    ui.click("setup-submit").await;
    ui.ready("operator").await;
    // The update state: no release server answers, which is said, not an error page.
    let update = ui
        .css("[data-testid='update-state'][data-state='error']")
        .await
        .text()
        .await
        .unwrap();
    assert!(update.starts_with("Could not check:"), "{update}");
    assert!(update.contains("cannot download"), "{update}");
    ui.click("update-check").await;
    ui.css("[data-testid='update-check']:not([disabled])").await;
    ui.css("[data-testid='update-state'][data-state='error']")
        .await;
    ui.photo("operator-update-state").await;
    // The operator stops the demo tenant from the tenants table: its calls get 423.
    let tenant_row = format!("[data-testid='tenant-row'][data-tenant-id='{tenant}']");
    ui.css(&format!("{tenant_row} [data-testid='tenant-freeze']"))
        .await
        .click()
        .await
        .unwrap();
    ui.type_into("reason-input", "e2e: operator stop").await;
    ui.click("reason-confirm").await;
    ui.css(&format!("{tenant_row} [data-testid='tenant-unfreeze']"))
        .await;
    ui.photo("operator-tenant-stopped").await;
    assert_eq!(chat(&app, &key, "e2e-user").await, 423);
    ui.css(&format!("{tenant_row} [data-testid='tenant-unfreeze']"))
        .await
        .click()
        .await
        .unwrap();
    ui.click("reason-confirm").await;
    ui.css(&format!("{tenant_row} [data-testid='tenant-freeze']"))
        .await;
    assert_eq!(chat(&app, &key, "e2e-user").await, 200);
    // Drill down into the tenant's console and back.
    ui.css(&format!("{tenant_row} [data-testid='tenant-view']"))
        .await
        .click()
        .await
        .unwrap();
    ui.ready("overview").await;
    ui.click("back-to-operator").await;
    ui.ready("operator").await;
    // The tenant's owner (made headless while the server runs).
    make_user(&app.home, "owner@demo.example", "owner", Some(&tenant));
    ui.click("signout").await;
    ui.ready("login").await;

    // Sign in as the tenant's owner: the overview loads without console errors.
    ui.type_into("login-email", "owner@demo.example").await;
    ui.type_into("login-password", PASSWORD).await;
    ui.click("login-submit").await;
    ui.ready("overview").await;
    let badge = ui.el("protection-badge").await.text().await.unwrap();
    assert!(!badge.is_empty());
    // Live: new calls show on the overview without a reload.
    let before: u64 = ui
        .el("kpi-calls")
        .await
        .attr("title")
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    for _ in 0..3 {
        assert_eq!(chat(&app, &key, "e2e-user").await, 200);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now: u64 = ui
            .el("kpi-calls")
            .await
            .attr("title")
            .await
            .unwrap()
            .unwrap()
            .parse()
            .unwrap();
        if now == before + 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the overview still shows {now} calls (expected {})",
            before + 3
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ui.photo("overview-live").await;

    // Freeze the e2e key from the keys page: its calls get 423; unfreeze: 200 again.
    ui.click("nav-keys").await;
    ui.ready("keys").await;
    let row = format!("[data-testid='key-row'][data-key-id='{key_id}']");
    ui.css(&format!("{row} [data-testid='key-freeze']"))
        .await
        .click()
        .await
        .unwrap();
    ui.type_into("reason-input", "e2e: frozen from the browser")
        .await;
    ui.photo("keys-freeze-dialog").await;
    ui.click("reason-confirm").await;
    ui.css(&format!("{row} [data-testid='key-unfreeze']")).await;
    ui.photo("keys-frozen").await;
    assert_eq!(chat(&app, &key, "e2e-user").await, 423);
    ui.css(&format!("{row} [data-testid='key-unfreeze']"))
        .await
        .click()
        .await
        .unwrap();
    // Unfreezing may ask to confirm.
    if let Ok(Some(confirm)) = ui
        .driver
        .query(By::Css("[data-testid='reason-confirm']"))
        .wait(Duration::from_secs(2), Duration::from_millis(100))
        .and_displayed()
        .first_opt()
        .await
    {
        confirm.click().await.unwrap();
    }
    ui.css(&format!("{row} [data-testid='key-freeze']")).await;
    assert_eq!(chat(&app, &key, "e2e-user").await, 200);

    // Search an end user: only their calls.
    ui.click("nav-calls").await;
    ui.ready("calls").await;
    ui.type_into("search-input", &format!("user:{demo_user}"))
        .await;
    ui.click("search-submit").await;
    ui.css("[data-testid='call-row']").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ui.photo("calls-search").await;
    let rows = ui
        .driver
        .find_all(By::Css("[data-testid='call-row']"))
        .await
        .unwrap();
    assert!(!rows.is_empty());
    for r in &rows {
        let id = r.attr("data-call-id").await.unwrap().unwrap();
        let call: Value = app
            .get_with_key(&format!("/v1/calls/{id}"), &admin)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(call["end_user"], json!(demo_user), "{id}");
    }
    // Open a call: request, response and decisions.
    rows[0].click().await.unwrap();
    ui.ready("call").await;
    ui.el("call-request").await;
    ui.el("decision-row").await;

    // An incident and its timeline; an export download.
    ui.click("nav-incidents").await;
    ui.ready("incidents").await;
    ui.css("[data-testid='incident-row']")
        .await
        .click()
        .await
        .unwrap();
    ui.ready("incident").await;
    ui.el("timeline").await;
    ui.el("timeline-item").await;
    ui.click("export-json").await;
    let file = ui.downloaded(".json").await;
    let pack: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert!(pack.is_object(), "the export is a JSON evidence pack");

    // Every other page loads cleanly.
    for (nav, page) in [
        ("nav-overview", "overview"),
        ("nav-policies", "policies"),
        ("nav-usage", "usage"),
        ("nav-alerts", "alerts"),
        ("nav-audit", "audit"),
        ("nav-settings", "settings"),
    ] {
        ui.click(nav).await;
        ui.ready(page).await;
    }

    // The owner invites a viewer and switches to the dark theme.
    ui.type_into("invite-email-input", "viewer@demo.example")
        .await;
    ui.click("invite-create").await;
    let invite = ui.el("invite-url").await.text().await.unwrap();
    let route = invite.split_once('#').map(|(_, r)| r.to_owned()).unwrap();
    ui.click("theme-dark").await;
    ui.photo("settings-dark").await;

    // Sign out: back to the sign-in page, and the console is closed.
    ui.click("signout").await;
    ui.ready("login").await;
    ui.goto("#/overview").await;
    ui.ready("login").await;

    // The invited viewer sets a password, lands on the overview and sees no kill switch.
    ui.goto(&format!("#{route}")).await;
    ui.ready("invite").await;
    ui.type_into("invite-password", PASSWORD).await;
    ui.type_into("invite-confirm", PASSWORD).await;
    ui.click("invite-submit").await;
    ui.ready("overview").await;
    let kill = ui
        .driver
        .find_all(By::Css("[data-testid='killswitch-button']"))
        .await
        .unwrap();
    assert!(kill.is_empty(), "a viewer has no kill switch");
    ui.click("signout").await;
    ui.ready("login").await;

    ui.driver.clone().quit().await.unwrap();
    drop(driver);
    app.stop().await;
    drop(upstream);
}
