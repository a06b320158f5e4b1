//! Builds the application (state, background workers, HTTP server) and runs it until a
//! signal or a test stops it, then shuts down in order: stop accepting, let in-flight
//! requests finish, stop the scheduler and workers, flush what is buffered.
//!
//! `Application::build` binds the listener first, so a test can ask for port 0 and read
//! the real port; every failure to start is a [`StartupError`] that says what to do.

use crate::api::auth::KeyCache;
use crate::api::error::{json_error_handler, path_error_handler, query_error_handler};
use crate::api::middleware::{AddressRateLimiter, limit_unauthenticated, observe};
pub use crate::api::state::AppState;
use crate::api::{alerts as alert_api, evidence as evidence_api, health, incidents, openai, v1};
use crate::config::Settings;
use crate::domain::Timestamp;
use crate::domain::alert::SystemThresholds;
use crate::domain::secret_box::MasterKey;
use crate::domain::upstream_url::UpstreamAllowlist;
use crate::domain::{PolicyConfig, TenantId};
use crate::guard::Guard;
use crate::incidents::alerts::{
    ALERT_DELIVERY, Alerts, OperatorRoute, SystemProbe, spawn_system_checks,
};
use crate::incidents::summary_llm::{INCIDENT_SUMMARY, Narrator};
use crate::jobs::scheduler::{HOUSEKEEPING, ScheduleEntry, SchedulerHandle, start_scheduler};
use crate::jobs::{Handlers, Queue, QueueLimits, spawn_workers};
use crate::proxy::Proxy;
use crate::proxy::install::{
    apply_policy, configured_upstream, install_instance_upstream, install_tenant_upstream,
    set_policy_and_seed,
};
use crate::proxy::recorder::Recorder;
use crate::proxy::upstream::{Upstream, UpstreamSettings, UpstreamTarget};
use crate::store::{self, DynStore, run_blocking};
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::{DefaultHeaders, from_fn};
use actix_web::{App, HttpServer, web};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupError(pub String);

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    shutdown: watch::Sender<bool>,
    background: Vec<tokio::task::JoinHandle<()>>,
    scheduler: Option<SchedulerHandle>,
    recorder_done: Option<crate::proxy::recorder::RecorderDone>,
    incidents_task: Option<tokio::task::JoinHandle<()>>,
}

/// Creates the data dir if needed and proves it is writable.
pub fn prepare_data_dir(dir: &Path) -> Result<(), StartupError> {
    let fail = |what: &str, e: std::io::Error| {
        StartupError(format!(
            "the data directory {} is not usable ({what}: {e}); choose another with --data or AGV_DATA, or fix its permissions",
            dir.display()
        ))
    };
    std::fs::create_dir_all(dir).map_err(|e| fail("cannot create it", e))?;
    let probe = dir.join(".agv-write-test");
    std::fs::write(&probe, b"ok").map_err(|e| fail("cannot write to it", e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Logs what the database's commits wait for, as read back from its connections, and
/// warns when that is less than the `durability` level promises (a Postgres server
/// configured with `synchronous_commit = off`).
async fn log_commit_settings(store: &DynStore, settings: &Settings) -> Result<(), StartupError> {
    let level = settings
        .durability
        .unwrap_or(store::Durability::default_for(store.backend()));
    let for_read = store.clone();
    let commits = run_blocking(move || for_read.commit_settings())
        .await
        .map_err(|e| StartupError(format!("cannot read the database's commit settings: {e}")))?;
    tracing::info!(
        durability = level.as_str(),
        calls = %commits.calls,
        other_writes = %commits.other_writes,
        "commits"
    );
    if level == store::Durability::Power && !commits.calls_wait_for_disk {
        tracing::warn!(
            calls = %commits.calls,
            "durability is power, but the database does not wait for its disk when it commits a call: a power cut can lose recent calls. Turn synchronous_commit back on in the Postgres server's configuration (or for its agv role)"
        );
    }
    Ok(())
}

/// Opens the store for the settings (Postgres URL or SQLite in the data dir).
pub fn open_store(settings: &Settings) -> Result<DynStore, StartupError> {
    open_recording(settings).map(|o| o.store)
}

/// [`open_store`], with the call recorder's ways into it (what the server runs on).
fn open_recording(settings: &Settings) -> Result<store::Opened, StartupError> {
    prepare_data_dir(&settings.data_dir)?;
    store::open_recording(
        &settings.data_dir,
        settings.database_url.as_deref(),
        settings.durability,
    )
    .map_err(|e| StartupError(e.to_string()))
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let settings = Arc::new(settings);
        let listener = TcpListener::bind(&settings.listen).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                "another process (perhaps another agv-server) is using it; stop it or choose another address with --listen or AGV_LISTEN"
            } else {
                "check the address given with --listen or AGV_LISTEN"
            };
            StartupError(format!("cannot listen on {}: {e}; {hint}", settings.listen))
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| StartupError(format!("cannot read the bound address: {e}")))?;
        let port = bound.port();
        // Checked before anything starts, so a bad certificate leaves nothing running.
        let tls = match &settings.tls {
            Some(files) => Some(crate::tls::server_config(files).map_err(StartupError)?),
            None => None,
        };

        let for_store = settings.clone();
        let store::Opened { store, recording } =
            run_blocking(move || open_recording(&for_store)).await?;
        let queue_dir = settings.queue_dir();
        let limits = QueueLimits {
            max_disk_bytes: settings.queue_max_bytes,
            max_jobs: None,
        };
        let queue = run_blocking(move || Queue::open(&queue_dir, limits))
            .await
            .map_err(|e| StartupError(e.to_string()))?;
        // Read the change-feed position before loading any state, so that a change made
        // while this server starts is applied by the first poll rather than lost.
        let for_seq = store.clone();
        let change_seq = run_blocking(move || for_seq.latest_change_seq())
            .await
            .map_err(|e| StartupError(e.to_string()))?;
        let keys = Arc::new(KeyCache::new(store.clone()));

        let for_key = settings.clone();
        let master_key = run_blocking(move || load_master_key(&for_key)).await?;
        let key_dir = settings.data_dir.clone();
        let signing_key = run_blocking(move || crate::evidence::signing::load_or_create(&key_dir))
            .await
            .map_err(StartupError)?;
        let pricing = crate::domain::pricing::Pricing::with_overrides(settings.prices.clone())
            .map_err(|e| StartupError(format!("invalid [prices] in config.toml: {e}")))?;
        let mut guard = Guard::new(pricing);
        if store.backend() == crate::store::Backend::Postgres {
            // Other instances may share this database: rate limits and budgets are leased
            // from it (guard::shared). SQLite keeps them purely in memory.
            guard = guard.with_shared_quotas();
        }
        let guard = Arc::new(guard);
        let upstream = Upstream::new(
            configured_upstream(&settings),
            settings
                .fallback_upstream_url
                .as_ref()
                .map(|url| UpstreamTarget {
                    base_url: url.clone(),
                    api_key: settings.fallback_upstream_api_key.clone(),
                }),
            UpstreamSettings {
                connect_timeout: settings.upstream_connect_timeout,
                first_byte_timeout: settings.upstream_first_byte_timeout,
                total_timeout: settings.upstream_timeout,
                retries: settings.upstream_retries,
                ..UpstreamSettings::default()
            },
        )
        .map_err(StartupError)?;
        let (recorder, recorder_done) = Recorder::start(recording)
            .map_err(|e| StartupError(format!("could not start the call recorder thread: {e}")))?;
        let alerts = Arc::new(Alerts::new(
            store.clone(),
            queue.downgrade(),
            master_key.clone(),
            settings.alert_webhook_allowed_hosts.clone(),
            settings
                .operator_alert_webhook_url
                .clone()
                .map(|url| OperatorRoute {
                    url,
                    secret: settings.operator_alert_webhook_secret.clone(),
                }),
        ));
        let narrator = match &settings.llm_base_url {
            Some(url) => Some(Arc::new(
                Narrator::new(
                    store.clone(),
                    queue.downgrade(),
                    url,
                    settings.llm_api_key.as_deref(),
                    &settings.llm_model,
                )
                .map_err(StartupError)?,
            )),
            None => None,
        };
        let mut listeners: Vec<Arc<dyn crate::incidents::Listener>> = vec![alerts.clone()];
        if let Some(n) = &narrator {
            listeners.push(n.clone());
        }
        let (incidents, incidents_task) = crate::incidents::Engine::start(store.clone(), listeners);
        let proxy = Arc::new(Proxy::new(
            guard.clone(),
            upstream,
            recorder,
            store.clone(),
            incidents,
            settings.max_stored_body_bytes,
        ));
        load_enforcement_state(&guard, &store).await?;
        let s = store.clone();
        let instance_row = run_blocking(move || s.get_instance_upstream())
            .await
            .map_err(|e| StartupError(format!("cannot load the instance upstream: {e}")))?;
        install_instance_upstream(&proxy, &master_key, &settings, instance_row.as_ref());
        load_tenant_upstreams(
            &proxy,
            &store,
            &master_key,
            &settings.tenant_upstream_allowlist,
        )
        .await?;

        for (key, value, source) in settings.describe() {
            tracing::info!(setting = key, value = %value, source = %source, "effective setting");
        }
        log_commit_settings(&store, &settings).await?;

        let state = web::Data::new(AppState {
            settings: settings.clone(),
            store: store.clone(),
            keys: keys.clone(),
            proxy,
            queue: queue.clone(),
            prometheus: crate::telemetry::prometheus(),
            unauth_limiter: AddressRateLimiter::new(settings.unauth_rate_limit_per_minute),
            login_throttle: crate::api::limits::LoginThrottle::default(),
            settings_lock: tokio::sync::Mutex::new(()),
            started_at: Instant::now(),
            master_key,
            change_seq: AtomicI64::new(change_seq),
            alerts: alerts.clone(),
            signing_key,
            setup: Default::default(),
            sso: crate::ops::oidc::Sso::new().map_err(StartupError)?,
            backup_now: Default::default(),
            update_check: Default::default(),
            instance: format!(
                "{}/{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "agv".into()),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
        });

        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut background = vec![
            spawn_change_feed(state.clone(), shutdown_rx.clone()),
            spawn_key_maintenance(keys, shutdown_rx.clone()),
            spawn_workers(
                queue.clone(),
                job_handlers(store.clone(), alerts.clone(), narrator, state.clone()),
                settings.job_workers,
                shutdown_rx.clone(),
            ),
        ];
        if guard.shared_quota().is_some() {
            background.push(spawn_quota_returns(
                guard.clone(),
                store.clone(),
                shutdown_rx.clone(),
            ));
        }
        if settings.operator_alert_webhook_url.is_some() {
            let probe = SystemProbe {
                store: store.clone(),
                queue: queue.downgrade(),
                health: state.proxy.health.clone(),
                data_dir: settings.data_dir.clone(),
                thresholds: SystemThresholds {
                    disk_percent: settings.system_alert_disk_percent,
                    queue_stuck_ms: i64::try_from(settings.system_alert_queue_stuck.as_millis())
                        .unwrap_or(i64::MAX),
                    ..SystemThresholds::default()
                },
            };
            background.push(spawn_system_checks(
                alerts,
                probe,
                settings.system_alert_interval,
                shutdown_rx,
            ));
        }
        let schedule: Vec<ScheduleEntry> = [
            (
                "housekeeping",
                Some(&settings.housekeeping_cron),
                HOUSEKEEPING,
            ),
            (
                "backup",
                settings.backup_cron.as_ref(),
                crate::ops::scheduled::BACKUP,
            ),
            (
                "backup verify",
                settings.backup_verify_cron.as_ref(),
                crate::ops::scheduled::BACKUP_VERIFY,
            ),
            (
                "retention",
                settings.retention_cron.as_ref(),
                crate::ops::retention::RETENTION,
            ),
        ]
        .into_iter()
        .filter_map(|(name, cron, kind)| {
            Some(ScheduleEntry {
                name: name.into(),
                cron: cron?.clone(),
                kind: kind.into(),
                payload: serde_json::json!({}),
            })
        })
        .collect();
        let claimer = crate::jobs::scheduler::Claimer {
            store: store.clone(),
            instance: state.instance.clone(),
        };
        let scheduler = start_scheduler(queue, schedule, Some(claimer))
            .await
            .map_err(|e| StartupError(format!("cannot start the scheduler: {e}")))?;

        let server = http_server(state.clone(), listener, tls)?;
        let host = match bound.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let for_setup = state.clone();
        let scheme = if settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let base = format!("{scheme}://{host}:{port}");
        if let Err(e) =
            run_blocking(move || crate::api::people::announce_setup(&for_setup, &base)).await
        {
            tracing::warn!(error = %e, "could not check whether a first user exists");
        }
        tracing::info!(
            port,
            backend = store.backend().as_str(),
            "agv-server listening"
        );
        Ok(Self {
            port,
            server,
            state,
            shutdown,
            background,
            scheduler: Some(scheduler),
            recorder_done: Some(recorder_done),
            incidents_task: Some(incidents_task),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// A handle that stops the server gracefully (what SIGTERM does).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM/SIGINT or `handle().stop(true)`, then shuts down in order.
    pub async fn run_until_stopped(mut self) -> Result<(), StartupError> {
        let result = (&mut self.server).await;
        tracing::info!("HTTP server stopped; stopping background work");
        if let Some(s) = self.scheduler.take()
            && let Err(e) = s.shutdown().await
        {
            tracing::warn!(error = %e, "the scheduler did not stop cleanly");
        }
        let _ = self.shutdown.send(true);
        for task in self.background.drain(..) {
            let _ = task.await;
        }
        if let Err(e) = self.state.keys.flush_last_used().await {
            tracing::warn!(error = %e, "could not save key last-used times at shutdown");
        }
        // Signals of the last calls reach their incidents before the engine stops.
        let _ =
            tokio::time::timeout(Duration::from_secs(5), self.state.proxy.incidents.flush()).await;
        // Every request has finished, so every record has been committed; the writer and
        // the engine end once the last handle on them is gone.
        drop(self.state);
        if let Some(done) = self.recorder_done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), done.wait()).await;
        }
        if let Some(task) = self.incidents_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        tracing::info!("agv-server stopped");
        result.map_err(|e| StartupError(format!("the HTTP server failed: {e}")))
    }
}

fn http_server(
    state: web::Data<AppState>,
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
) -> Result<Server, StartupError> {
    let max_body = state.settings.max_body_bytes;
    let shutdown_secs = state.settings.shutdown_timeout.as_secs();
    let hsts = tls.is_some();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(max_body)
                    .error_handler(json_error_handler),
            )
            .app_data(web::PayloadConfig::new(max_body))
            .app_data(web::QueryConfig::default().error_handler(query_error_handler))
            .app_data(web::PathConfig::default().error_handler(path_error_handler))
            .wrap(from_fn(crate::api::access::route_console))
            .wrap(from_fn(limit_unauthenticated))
            .wrap(security_headers(hsts))
            .wrap(from_fn(observe))
            .service(health::health)
            .service(crate::api::session::login)
            .service(crate::api::session::logout)
            .service(crate::api::session::me)
            .service(crate::api::oidc::methods)
            .service(crate::api::oidc::start)
            .service(crate::api::oidc::callback)
            .service(crate::api::people::setup_needed)
            .service(crate::api::people::setup)
            .service(crate::api::people::change_password)
            .service(crate::api::people::list_users)
            .service(crate::api::people::invite)
            .service(crate::api::people::accept)
            .service(crate::api::people::get_invitation)
            .service(crate::api::people::revoke_invitation)
            .service(crate::api::people::disable_user)
            .service(crate::api::people::enable_user)
            .service(crate::api::people::update_user)
            .service(crate::api::people::delete_user)
            .service(crate::api::people::end_sessions)
            .service(crate::api::console::overview)
            .service(crate::api::console::usage)
            .service(crate::api::console::usage_history)
            .service(crate::api::console::events)
            .service(crate::api::console::list_keys)
            .service(crate::api::console::create_key)
            .service(crate::api::console::revoke_key)
            .service(crate::api::operator::health)
            .service(crate::api::operator::tenants)
            .service(crate::api::instance::create_tenant)
            .service(crate::api::instance::get_upstream)
            .service(crate::api::instance::put_upstream)
            .service(crate::api::instance::delete_upstream)
            .service(crate::api::instance::test_upstream)
            .service(crate::api::instance::setup_state)
            .service(crate::api::operator::incidents)
            .service(crate::api::operator::enforcement)
            .service(crate::api::operator::backups)
            .service(crate::api::operator::backup_now)
            .service(crate::api::operator::verify_backup)
            .service(crate::api::operator::jobs)
            .service(crate::api::operator::retry_job)
            .service(crate::api::operator::discard_job)
            .service(crate::api::operator::update_state)
            .service(crate::api::operator::update_check_now)
            .service(health::ready)
            .service(health::prometheus_metrics)
            .service(openai::chat_completions)
            .service(openai::embeddings)
            .service(openai::models)
            .service(v1::status)
            .service(v1::killswitch_status)
            .service(v1::freeze_tenant)
            .service(v1::unfreeze_tenant)
            .service(v1::freeze_key)
            .service(v1::unfreeze_key)
            .service(v1::active_policies)
            .service(v1::put_policies)
            .service(v1::backtest_policies)
            .service(v1::get_upstream)
            .service(v1::put_upstream)
            .service(v1::delete_upstream)
            .service(v1::get_call)
            .service(v1::list_calls)
            .service(incidents::call_timeline)
            // `stats` before `{id}`, which would otherwise take it.
            .service(incidents::stats)
            .service(incidents::list)
            .service(incidents::get)
            .service(incidents::incident_timeline)
            .service(crate::api::export::export)
            .service(incidents::bulk)
            .service(incidents::merge)
            .service(incidents::ack)
            .service(incidents::resolve)
            .service(incidents::reopen)
            .service(incidents::note)
            .service(incidents::assign)
            .service(incidents::severity)
            .service(incidents::simulate)
            .service(alert_api::list_routes)
            .service(alert_api::create_route)
            .service(alert_api::update_route)
            .service(alert_api::delete_route)
            .service(alert_api::test_route)
            .service(crate::api::audit_log::list)
            .service(evidence_api::replay)
            .service(crate::api::tasks::replay_incident)
            .service(crate::api::tasks::list)
            .service(crate::api::tasks::get)
            .service(crate::api::tasks::download)
            .service(evidence_api::get_replay)
            .service(evidence_api::issue)
            // `public-key` before `{id}`, which would otherwise take it.
            .service(evidence_api::public_key)
            .service(evidence_api::verify)
            .service(evidence_api::get)
            .default_service(web::to(crate::web::serve))
    });
    // Without TCP_NODELAY, a response written in more than one segment waits for the
    // client's delayed acknowledgement (Nagle): that alone put milliseconds on the proxy's
    // p99. Every byte written here is a complete answer or a stream chunk meant to go now.
    let server = server.tcp_nodelay(true);
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config),
        None => server.listen(listener),
    }
    .map_err(|e| StartupError(format!("cannot start the HTTP server: {e}")))?
    .shutdown_timeout(shutdown_secs)
    .run();
    Ok(server)
}

fn security_headers(hsts: bool) -> DefaultHeaders {
    let headers = if hsts {
        DefaultHeaders::new().add(("strict-transport-security", crate::tls::HSTS))
    } else {
        DefaultHeaders::new()
    };
    headers
        .add(("x-content-type-options", "nosniff"))
        .add(("x-frame-options", "DENY"))
        .add(("referrer-policy", "no-referrer"))
        .add(("cross-origin-opener-policy", "same-origin"))
        .add(("permissions-policy", "camera=(), microphone=(), geolocation=()"))
        .add((
            "content-security-policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
        ))
}

/// Writes key last-used times every 5 s.
fn spawn_key_maintenance(
    keys: Arc<KeyCache>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut flush = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = flush.tick() => {
                    if let Err(e) = keys.flush_last_used().await {
                        tracing::warn!(error = %e, "could not save key last-used times");
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
    })
}

/// Gives the leases of shared rate limits and budgets that went unused for a second back to
/// the database, so other instances can use them; at shutdown, all of them.
fn spawn_quota_returns(
    guard: Arc<Guard>,
    store: DynStore,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(quota) = guard.shared_quota().cloned() else {
            return;
        };
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            let last = tokio::select! {
                _ = tick.tick() => false,
                _ = shutdown.changed() => true,
            };
            let now = Timestamp::now();
            let returns = quota.drain(now.millis(), last);
            if !returns.is_empty() {
                let s = store.clone();
                if let Err(e) = run_blocking(move || s.return_quotas(&returns, now)).await {
                    // Lost leases only make the limits stricter until their rows refill.
                    tracing::warn!(error = %e, "could not give unused rate-limit and budget leases back to the database");
                }
            }
            if last {
                break;
            }
        }
    })
}

/// Reads the store's change feed every 250 ms and applies what other processes changed:
/// keys (the CLI revoking one), freezes and policies (another instance on Postgres). So a
/// revoked key stops within a second, and a freeze reaches every instance within one.
fn spawn_change_feed(
    state: web::Data<AppState>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    // On Postgres, other instances' changes also arrive by NOTIFY: read the feed at once.
    let wake = Arc::new(tokio::sync::Notify::new());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(url) = state.settings.database_url.clone() {
        spawn_change_listener(url, wake.clone(), stop.clone());
    }
    tokio::spawn(async move {
        let mut poll = tokio::time::interval(Duration::from_millis(250));
        let mut failing = false;
        loop {
            tokio::select! {
                _ = poll.tick() => {}
                _ = wake.notified() => {}
                _ = shutdown.changed() => break,
            }
            match apply_changes(&state).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("reading the change feed again");
                    }
                    failing = false;
                }
                // Once per episode (an outage of the database), not four times a second.
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "could not read the change feed; retrying");
                    }
                    failing = true;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
    })
}

/// A thread holding a LISTEN connection to Postgres: each notification of the change feed
/// wakes the feed reader, so a freeze made on another instance applies here within
/// milliseconds (the 250 ms poll stays as the fallback). Reconnects after a failure.
fn spawn_change_listener(
    url: String,
    wake: Arc<tokio::sync::Notify>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let spawned = std::thread::Builder::new()
        .name("agv-change-listener".into())
        .spawn(move || {
            let mut listener = None;
            while !stop.load(Ordering::Relaxed) {
                let l = match listener.as_mut() {
                    Some(l) => l,
                    None => match crate::store::postgres::ChangeListener::connect(&url) {
                        Ok(l) => listener.insert(l),
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot LISTEN for changes yet; polling meanwhile");
                            std::thread::sleep(Duration::from_secs(1));
                            continue;
                        }
                    },
                };
                match l.wait(Duration::from_millis(500)) {
                    Ok(true) => wake.notify_one(),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "the LISTEN connection broke; reconnecting");
                        listener = None;
                        // Whatever was missed meanwhile is read by the next poll.
                        wake.notify_one();
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the change listener; changes from other instances arrive by polling");
    }
}

async fn apply_changes(state: &AppState) -> Result<(), crate::store::StoreError> {
    let since = state.change_seq.load(Ordering::Relaxed);
    let changes = state
        .with_store(move |store| store.changes_since(since, 1000))
        .await?;
    let Some(last) = changes.last() else {
        return Ok(());
    };
    if changes.iter().any(|c| c.topic == "api_key") {
        state.keys.invalidate_all();
    }
    if changes.iter().any(|c| c.topic == "killswitch") {
        crate::proxy::killswitch::reload(&state.proxy.guard, &state.store).await?;
    }
    // The tenants whose `topic` changed.
    let tenants = |topic: &'static str| {
        changes
            .iter()
            .filter(move |c| c.topic == topic)
            .filter_map(|c| TenantId::parse(&c.ref_id).ok())
    };
    for tenant in tenants("policy") {
        let _applying = state.settings_lock.lock().await;
        let overrides = state
            .with_tenant(&tenant, |store, t| store.get_tenant_policy(t))
            .await?;
        match PolicyConfig::with_overrides(&overrides.unwrap_or_else(|| serde_json::json!({}))) {
            Ok(cfg) => apply_policy(&state.proxy.guard, &state.store, &tenant, cfg).await,
            Err(e) => {
                tracing::error!(tenant = %tenant, error = %e, "stored policy overrides are invalid; keeping the previous ones")
            }
        }
    }
    if changes
        .iter()
        .any(|c| c.topic == "upstream" && c.ref_id == crate::store::INSTANCE_UPSTREAM_REF)
    {
        let _applying = state.settings_lock.lock().await;
        let row = state
            .with_store(move |store| store.get_instance_upstream())
            .await?;
        install_instance_upstream(
            &state.proxy,
            &state.master_key,
            &state.settings,
            row.as_ref(),
        );
    }
    for tenant in tenants("upstream") {
        let _applying = state.settings_lock.lock().await;
        let row = state
            .with_tenant(&tenant, |store, t| store.get_tenant_upstream(t))
            .await?;
        install_tenant_upstream(
            &state.proxy,
            &state.master_key,
            &state.settings.tenant_upstream_allowlist,
            &tenant,
            row.as_ref(),
        );
    }
    state.change_seq.store(last.seq, Ordering::Relaxed);
    Ok(())
}

/// The file holding the master key when `AGV_MASTER_KEY` is not set.
pub const MASTER_KEY_FILE: &str = "master.key";

/// The master key: from `AGV_MASTER_KEY` (or its `_FILE`), else `<data>/master.key`,
/// which is created with 32 random bytes (mode 0600) at the first start. Blocking.
pub fn load_master_key(settings: &Settings) -> Result<MasterKey, StartupError> {
    if let Some(text) = &settings.master_key {
        return MasterKey::parse(text).map_err(|e| {
            StartupError(format!(
                "invalid AGV_MASTER_KEY: {e}. Give 32 bytes as 64 hex characters or base64, or unset it to use {}",
                settings.data_dir.join(MASTER_KEY_FILE).display()
            ))
        });
    }
    let path = settings.data_dir.join(MASTER_KEY_FILE);
    let read = |path: &Path| -> Result<MasterKey, StartupError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            StartupError(format!(
                "cannot read the master key file {}: {e}; fix its permissions, or set AGV_MASTER_KEY",
                path.display()
            ))
        })?;
        MasterKey::parse(&text).map_err(|e| {
            StartupError(format!(
                "the master key file {} is not valid: {e}. Restore the original file (stored provider keys cannot be decrypted without it)",
                path.display()
            ))
        })
    };
    if path.exists() {
        return read(&path);
    }
    let key = MasterKey::generate();
    let created = crate::config::private_file::create(&path, &format!("{}\n", key.to_hex()))
        .map_err(|e| {
            StartupError(format!(
                "cannot create the master key file {}: {e}; check the data directory's permissions, or set AGV_MASTER_KEY",
                path.display()
            ))
        })?;
    if !created {
        return read(&path);
    }
    tracing::info!(path = %path.display(), "created a new master key; back it up with the data directory");
    Ok(key)
}

async fn load_tenant_upstreams(
    proxy: &Proxy,
    store: &DynStore,
    master_key: &MasterKey,
    allowlist: &UpstreamAllowlist,
) -> Result<(), StartupError> {
    let s = store.clone();
    let rows = run_blocking(move || s.list_tenant_upstreams())
        .await
        .map_err(|e| StartupError(format!("cannot load the tenants' upstreams: {e}")))?;
    for row in &rows {
        install_tenant_upstream(proxy, master_key, allowlist, &row.tenant_id, Some(row));
    }
    Ok(())
}

/// Loads freezes, tenant policies and the spend that budgets count against.
async fn load_enforcement_state(guard: &Arc<Guard>, store: &DynStore) -> Result<(), StartupError> {
    let fail = |e: crate::store::StoreError| {
        StartupError(format!("cannot load the enforcement state: {e}"))
    };
    crate::proxy::killswitch::reload(guard, store)
        .await
        .map_err(fail)?;
    let s = store.clone();
    let policies = run_blocking(move || s.list_tenant_policies())
        .await
        .map_err(fail)?;
    for (tenant, overrides) in policies {
        match PolicyConfig::with_overrides(&overrides) {
            Ok(cfg) => set_policy_and_seed(guard, store, &tenant, cfg)
                .await
                .map_err(fail)?,
            Err(e) => {
                tracing::error!(tenant = %tenant, error = %e, "stored policy overrides are invalid; using the defaults")
            }
        }
    }
    Ok(())
}

/// The handlers of the jobs this layer knows; later layers register theirs here too.
fn job_handlers(
    store: DynStore,
    alerts: Arc<Alerts>,
    narrator: Option<Arc<Narrator>>,
    state: web::Data<AppState>,
) -> Handlers {
    let mut handlers = Handlers::new();
    let backups = Arc::new(crate::ops::scheduled::Backups {
        store: state.store.clone(),
        settings: state.settings.clone(),
        signing_key: state.signing_key.clone(),
        alerts: state.alerts.clone(),
        queue: state.queue.clone(),
    });
    let b = backups.clone();
    handlers.register(crate::ops::scheduled::BACKUP, move |job| {
        crate::ops::scheduled::backup(b.clone(), job)
    });
    let b = backups.clone();
    handlers.register(crate::ops::scheduled::UPLOAD_BACKUP, move |job| {
        crate::ops::scheduled::upload(b.clone(), job)
    });
    handlers.register(crate::ops::scheduled::BACKUP_VERIFY, move |job| {
        crate::ops::scheduled::verify(backups.clone(), job)
    });
    let (s, days) = (state.store.clone(), state.settings.retention_days);
    handlers.register(crate::ops::retention::RETENTION, move |job| {
        crate::ops::retention::run_job(s.clone(), days, job)
    });
    let tasks = Arc::new(state.tasks());
    handlers.register(crate::evidence::tasks::TASK_RUN, move |job| {
        crate::evidence::tasks::run(tasks.clone(), job)
    });
    handlers.register(ALERT_DELIVERY, move |job| alerts.clone().deliver(job));
    if let Some(n) = narrator {
        handlers.register(INCIDENT_SUMMARY, move |job| n.clone().write(job));
    }
    handlers.register(HOUSEKEEPING, move |_job| {
        let store = store.clone();
        async move {
            let removed = run_blocking(move || store.purge_expired_sessions(Timestamp::now()))
                .await
                .map_err(|e| format!("purging expired sessions failed: {e}"))?;
            tracing::info!(removed, "housekeeping: expired sessions purged");
            Ok(())
        }
    });
    handlers
}
