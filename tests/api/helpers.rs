//! Test helpers: the real server on port 0 with a fresh data dir, on SQLite or on a fresh
//! Postgres database, plus the real binary for CLI tests.

use agv_server::config::Settings;
use agv_server::startup::{Application, StartupError};
use agv_server::store::testing::{PgTestDb, fresh_postgres_db};
pub use agv_testkit::upstream::MockUpstream;
use std::path::Path;
use std::process::{Command, Output};
use tempfile::TempDir;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where the server keeps its data; kept across restarts of a `TestApp`.
pub struct DataHome {
    pub dir: TempDir,
    pub pg: Option<PgTestDb>,
}

impl DataHome {
    /// `None` when the backend is Postgres and no server is reachable (the helper prints
    /// SKIPPED, or fails when AGV_TEST_REQUIRE_ALL=1).
    pub fn new(backend: Backend) -> Option<Self> {
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(fresh_postgres_db()?),
        };
        Some(Self {
            dir: tempfile::tempdir().expect("tempdir"),
            pg,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn database_url(&self) -> Option<String> {
        self.pg.as_ref().map(|p| p.url.clone())
    }

    pub fn settings(&self) -> Settings {
        let mut s = Settings::for_data_dir(self.path()).expect("settings");
        s.database_url = self.database_url();
        s
    }

    /// Runs the real binary with this data dir (and database URL) and a clean environment.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = cli_command();
        cmd.arg("--data").arg(self.path());
        if let Some(url) = self.database_url() {
            cmd.arg("--database-url").arg(url);
        }
        cmd.args(args).output().expect("run agv-server")
    }

    /// Runs the CLI and returns trimmed stdout, failing the test with stderr if it failed.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "agv-server {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8 stdout")
            .trim()
            .to_owned()
    }

    /// A console user made headless through the CLI, with `password`; returns its id.
    pub fn make_user(
        &self,
        email: &str,
        role: &str,
        tenant: Option<&str>,
        password: &str,
    ) -> String {
        let pass = self.path().join(format!("pw-{email}"));
        std::fs::write(&pass, password).expect("write the password file");
        let mut args = vec![
            "user",
            "create",
            "--email",
            email,
            "--role",
            role,
            "--password-file",
            pass.to_str().expect("utf-8 path"),
        ];
        if let Some(t) = tenant {
            args.extend(["--tenant", t]);
        }
        self.cli_ok(&args)
    }

    pub fn tenant_and_key(&self, scope: &str) -> (String, String) {
        let tenant = self.cli_ok(&["tenant", "create", "Acme"]);
        let key = self.cli_ok(&["key", "create", "--tenant", &tenant, "--scope", scope]);
        (tenant, key)
    }
}

/// `agv-server` with no AGV_* or OPENAI_* variables from the outer environment.
pub fn cli_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agv-server"));
    for (k, _) in std::env::vars() {
        if k.starts_with("AGV_") || k.starts_with("OPENAI_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A data home and a mock upstream, with a tenant and keys made through the CLI.
pub struct ProxySetup {
    pub home: DataHome,
    pub upstream: MockUpstream,
    pub tenant: String,
    pub key: String,
    pub admin: String,
}

impl ProxySetup {
    pub fn new(backend: Backend) -> Option<Self> {
        let home = DataHome::new(backend)?;
        let upstream = MockUpstream::start();
        let (tenant, admin) = home.tenant_and_key("admin");
        let key = home.cli_ok(&["key", "create", "--tenant", &tenant, "--scope", "proxy"]);
        Some(Self {
            home,
            upstream,
            tenant,
            key,
            admin,
        })
    }

    /// Starts the server pointed at the mock upstream.
    pub async fn start(self) -> (TestApp, MockUpstream, String, String, String) {
        let url = self.upstream.url();
        let app = TestApp::start_with(self.home, |s| {
            s.upstream_url = url;
            s.upstream_timeout = std::time::Duration::from_secs(3);
            s.unauth_rate_limit_per_minute = 0;
        })
        .await;
        (app, self.upstream, self.tenant, self.key, self.admin)
    }
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub home: DataHome,
    pub app_state: actix_web::web::Data<agv_server::startup::AppState>,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<Result<(), StartupError>>,
}

impl TestApp {
    pub async fn start(home: DataHome) -> TestApp {
        Self::start_with(home, |_| {}).await
    }

    pub async fn start_with(home: DataHome, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        let mut settings = home.settings();
        tweak(&mut settings);
        let app = Application::build(settings).await.expect("server starts");
        let port = app.port();
        let handle = app.handle();
        let app_state = app.state();
        let task = tokio::spawn(app.run_until_stopped());
        TestApp {
            address: format!("http://127.0.0.1:{port}"),
            client: agv_testkit::http_builder()
                .redirect(reqwest::redirect::Policy::none())
                // Below the server's keep-alive (actix's default, 5 s): a connection idle
                // longer may be closed by the server just as it is reused, which fails the
                // request (the flake of faults::slow_clients_time_out_while_others_are_served).
                .pool_idle_timeout(std::time::Duration::from_secs(2))
                .build()
                .expect("client"),
            home,
            app_state,
            handle,
            task,
        }
    }

    /// Stops the server gracefully and hands back its data for a restart.
    pub async fn stop(self) -> DataHome {
        self.handle.stop(true).await;
        self.task
            .await
            .expect("server task")
            .expect("server stopped cleanly");
        self.home
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// [`TestApp::post_json`] in a task of its own, started now: for bursts of parallel calls.
    pub fn spawn_post_json(
        &self,
        path: &str,
        key: &str,
        body: &serde_json::Value,
    ) -> tokio::task::JoinHandle<reqwest::Response> {
        let request = self.client.post(self.url(path)).bearer_auth(key).json(body);
        tokio::spawn(async move { request.send().await.expect("request") })
    }

    pub async fn post_json(
        &self,
        path: &str,
        key: &str,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn chat(&self, key: &str, content: &str) -> reqwest::Response {
        self.post_json("/v1/chat/completions", key, &chat_body(content))
            .await
    }

    /// Sets the tenant's policy overrides through the admin API.
    pub async fn set_policy(&self, admin: &str, overrides: serde_json::Value) {
        let res = self
            .client
            .put(self.url("/v1/policies"))
            .bearer_auth(admin)
            .json(&overrides)
            .send()
            .await
            .expect("request");
        assert_eq!(
            res.status(),
            200,
            "PUT /v1/policies: {}",
            res.text().await.unwrap_or_default()
        );
    }

    /// The recorded call, read through the API.
    pub async fn call(&self, admin: &str, id: &str) -> serde_json::Value {
        let res = self.get_with_key(&format!("/v1/calls/{id}"), admin).await;
        assert_eq!(res.status(), 200, "GET /v1/calls/{id}");
        res.json().await.expect("call JSON")
    }

    pub async fn get_with_key(&self, path: &str, key: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .expect("request")
    }
}

/// Starts a server on a fresh data home for `backend`, or `None` when that backend is
/// unavailable and skipping is allowed.
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    Some(TestApp::start(DataHome::new(backend)?).await)
}

pub fn chat_body(content: &str) -> serde_json::Value {
    serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]})
}

pub fn call_id(res: &reqwest::Response) -> String {
    res.headers()
        .get("x-agv-call-id")
        .expect("x-agv-call-id header")
        .to_str()
        .expect("ascii")
        .to_owned()
}

/// Asserts an OpenAI-shaped error body and returns its `code`.
pub async fn error_code(res: reqwest::Response) -> String {
    let body: serde_json::Value = res.json().await.expect("JSON error body");
    let err = &body["error"];
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without message: {body}"
    );
    assert!(err["type"].as_str().is_some(), "error without type: {body}");
    err["code"].as_str().expect("error code").to_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Generates one `#[tokio::test]` per backend from `async fn name(backend: Backend)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name($crate::helpers::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { super::$name($crate::helpers::Backend::Postgres).await })*
        }
    };
}

/// A server process: the real binary serving on an ephemeral port with JSON logs.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub port: u16,
    /// The log lines up to "agv-server listening".
    pub startup_log: String,
    /// The rest of the log.
    pub log: std::io::BufReader<std::process::ChildStderr>,
}

/// Starts `agv-server serve` on `data` (and `database_url`) with `envs`, and returns once it
/// logs the port it listens on.
pub fn spawn_server_process(
    data: &Path,
    database_url: Option<&str>,
    envs: &[(&str, &str)],
) -> ServerProcess {
    use std::io::BufRead;
    let mut cmd = cli_command();
    cmd.arg("--data").arg(data);
    if let Some(url) = database_url {
        cmd.arg("--database-url").arg(url);
    }
    let mut child = cmd
        .args(["--listen", "127.0.0.1:0", "serve"])
        .env("AGV_LOG_FORMAT", "json")
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start agv-server");
    let mut log = std::io::BufReader::new(child.stderr.take().expect("piped stderr"));
    let mut line = String::new();
    let mut startup_log = String::new();
    let port = loop {
        line.clear();
        assert!(
            log.read_line(&mut line).expect("read the log") > 0,
            "server exited before listening: {startup_log}"
        );
        startup_log.push_str(&line);
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["message"] == "agv-server listening"
        {
            break v["port"].as_u64().expect("port") as u16;
        }
    };
    ServerProcess {
        child,
        port,
        startup_log,
        log,
    }
}

/// Fails when the SQLite database files in `dir` hold `secret` in clear (a file that does
/// not exist is skipped).
pub fn assert_sqlite_files_do_not_hold(dir: &Path, secret: &str) {
    for file in ["agv.db", "agv.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.join(file)) {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "the plaintext secret is in {file}"
            );
        }
    }
}

/// A signed-in console user: the session cookie and its CSRF token.
#[derive(Clone)]
pub struct ConsoleSession {
    pub cookie: String,
    pub csrf: String,
}

impl ConsoleSession {
    /// The session a successful sign-in (or first-run setup, or accepted invitation)
    /// answered with.
    pub async fn from_response(res: reqwest::Response) -> Self {
        let set = res.headers()["set-cookie"].to_str().unwrap().to_owned();
        let cookie = set.split(';').next().unwrap().to_owned();
        let body: serde_json::Value = res.json().await.unwrap();
        Self {
            cookie,
            csrf: body["csrf_token"].as_str().unwrap().to_owned(),
        }
    }

    /// Signs `email` in on the server at `base` (e.g. `http://127.0.0.1:PORT`).
    pub async fn sign_in(
        client: &reqwest::Client,
        base: &str,
        email: &str,
        password: &str,
    ) -> Self {
        let res = client
            .post(format!("{base}/api/auth/login"))
            .json(&serde_json::json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "sign in {email}");
        Self::from_response(res).await
    }
}

/// The client agv-server is registered as at the test identity provider.
pub const OIDC_CLIENT_ID: &str = "agv-console";
pub const OIDC_CLIENT_SECRET: &str = "agv-test-oidc-client-secret";

/// A port free at the moment (for a server whose address another one must know before it
/// starts: the identity provider registers agv-server's callback URL).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// A real OpenID Connect provider: `tests/oidc/provider.mjs` (panva's oidc-provider from
/// npm, installed by `tests/oidc/setup.sh`) on a free port of 127.0.0.1, its issuer named
/// `http://localhost:PORT` — another site than agv-server's `127.0.0.1`, as a company's
/// provider would be. Killed when dropped.
pub struct OidcProvider {
    child: std::process::Child,
    pub issuer: String,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OidcProvider {
    /// Starts the provider with agv-server's client registered for `redirect_uri` and
    /// `auth_method` at the token endpoint (`client_secret_basic`, or `client_secret_post`:
    /// then Basic is refused); `None` (after SKIPPED) when Node.js or the provider's
    /// packages are missing.
    pub fn start(redirect_uri: &str, auth_method: &str) -> Option<Self> {
        use std::io::BufRead;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
        if !dir.join("node_modules/oidc-provider").exists() {
            agv_server::store::testing::skip_or_fail(
                "single sign-on tests",
                "tests/oidc/node_modules is missing; run `sh tests/oidc/setup.sh` (needs Node.js 20+ and npm)",
            );
            return None;
        }
        let spawned = Command::new("node")
            .arg(dir.join("provider.mjs"))
            .arg("0")
            .env("OIDC_CLIENT_ID", OIDC_CLIENT_ID)
            .env("OIDC_CLIENT_SECRET", OIDC_CLIENT_SECRET)
            .env("OIDC_REDIRECT_URIS", redirect_uri)
            .env("OIDC_HOST", "localhost")
            .env("OIDC_AUTH_METHOD", auth_method)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(mut child) = spawned else {
            agv_server::store::testing::skip_or_fail(
                "single sign-on tests",
                "node is not installed (the test identity provider runs on Node.js 20+)",
            );
            return None;
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let mut provider = Self {
            child,
            issuer: String::new(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Kept open (and drained) for as long as the provider runs.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_default();
        provider.issuer = line.trim().to_owned();
        assert!(
            provider.issuer.starts_with("http://localhost:"),
            "the test identity provider did not start (its first line: {line:?})"
        );
        Some(provider)
    }
}
