//! The command line: clap definitions and the dispatch of subcommands.
//!
//! Results go to stdout (an id, a key, JSON), human messages to stderr. Every subcommand
//! reads the data dir and database URL like `serve` does and is safe while the server
//! runs: they talk to the database only (SQLite in WAL mode allows that), never to the
//! server's job queue, which the running server holds open.

use crate::config::{FIELDS, Flags, Settings};
use crate::domain::audit::{Actor, AuditAction, NewAuditEntry};
use crate::domain::time::parse_duration;
use crate::domain::{KeyId, NewApiKey, Scope, Tenant, TenantId, TenantName, Timestamp};
use crate::startup::{Application, StartupError, open_store};
use crate::store::{DynStore, StoreError};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "agv-server", version, about = "Self-hosted AI incident console: an OpenAI-compatible gateway that enforces, records and explains every LLM call.", after_help = settings_help(false), after_long_help = settings_help(true))]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The flags every subcommand takes: `--data`, and the settings of [`FIELDS`] that have a
/// flag, by config key.
#[derive(Debug, Default)]
pub struct GlobalArgs {
    pub data: Option<PathBuf>,
    pub flags: Flags,
}

impl clap::Args for GlobalArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let data = clap::Arg::new("data")
            .long("data")
            .global(true)
            .value_name("DIR")
            .value_parser(clap::value_parser!(PathBuf))
            .help("Data directory: SQLite database, job queue, config.toml [env: AGV_DATA] [default: ./data]");
        FIELDS.iter().fold(cmd.arg(data), |cmd, field| {
            let Some((long, value_name)) = field.flag else {
                return cmd;
            };
            let default = field.default.map(|d| format!(" [default: {d}]"));
            cmd.arg(
                clap::Arg::new(field.key)
                    .long(long)
                    .global(true)
                    .value_name(value_name)
                    .help(format!(
                        "{} [env: {}]{}",
                        field.help,
                        field.env(),
                        default.unwrap_or_default()
                    )),
            )
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for GlobalArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut args = Self::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        if let Some(data) = matches.get_one::<PathBuf>("data") {
            self.data = Some(data.clone());
        }
        for field in FIELDS.iter().filter(|f| f.flag.is_some()) {
            if let Some(value) = matches.get_one::<String>(field.key) {
                self.flags.insert(field.key, value.clone());
            }
        }
        Ok(())
    }
}

/// After `-h`: where settings come from; after `--help`: every setting as well.
fn settings_help(every_setting: bool) -> String {
    let mut help = "Settings come from flags, then the environment, then <data>/config.toml, then defaults. \
Each config.toml key has an environment variable AGV_<KEY>; secrets may be read from a file named by <VAR>_FILE, \
and AGV_UPSTREAM_API_KEY falls back to OPENAI_API_KEY."
        .to_owned();
    if every_setting {
        help.push_str("\n\nSettings (config.toml key, environment variable, default):");
        for field in FIELDS {
            let default = match field.default {
                Some("") => "empty",
                Some(default) => default,
                None => "unset",
            };
            let secret = if field.secret { " (or _FILE)" } else { "" };
            help.push_str(&format!(
                "\n  {}, {}{secret}, {default}\n      {}",
                field.key,
                field.env(),
                field.help
            ));
        }
    }
    help
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default when no subcommand is given).
    Serve,
    /// Create and list tenants. Safe while the server runs.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Create, list, revoke and rotate API keys. Safe while the server runs; changes take effect at once.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Apply pending database migrations and print the schema version. Safe while the server runs.
    Migrate,
    /// Create a demo tenant with realistic calls and the incidents they raise; prints the
    /// tenant id. Safe while the server runs. Also the benchmark fixture (1,000,000 calls
    /// take a few minutes).
    Demo {
        /// How many calls to make.
        #[arg(long, default_value_t = 10_000)]
        calls: u64,
        /// Spread the calls over this many days before now.
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// The same seed gives the same calls.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Print {"tenant_id","admin_key","calls","incidents"} as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Check a signed certificate or an incident evidence pack offline: exit 0 when it is
    /// valid, 1 with the reason on stderr when it is not (bad signature, changed field —
    /// for a pack, the call whose chain proof fails —, wrong key, invalid embedded
    /// certificate, truncated or invalid JSON, unknown version). Needs no server or
    /// database; safe while the server runs.
    Verify {
        /// The certificate file, as GET /v1/certificates/{id} gives it, or the evidence
        /// pack of GET /v1/incidents/{id}/export?format=json (`-` reads stdin).
        certificate: PathBuf,
        /// The trusted public key: base64 or hex, or a file holding it (also the JSON of
        /// GET /v1/certificates/public-key). Without it, the key in the data directory
        /// (--data / AGV_DATA) is the trusted one.
        #[arg(long, value_name = "KEY")]
        public_key: Option<String>,
    },
    /// Create, list and manage console users (disable, enable, role, delete, logout) and
    /// revoke invitations. Safe while the server runs; changes take effect at once.
    #[command(subcommand)]
    User(UserCommand),
    /// Check the tamper-evident records. Safe while the server runs (it reads only).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Call retention: remove the bodies of old calls now (the server also does it on
    /// `retention_cron`). Safe while the server runs.
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Back up the instance now: every table from one snapshot (writers are not blocked),
    /// compressed, with a manifest signed by the instance key; prints the file's path on
    /// stdout. With backup_s3_* set, also uploads it to the bucket (exit 1 if that fails;
    /// the local file is kept). Safe while the server runs. `backup verify FILE` checks a
    /// backup.
    Backup(BackupArgs),
    /// Restore a backup. Into the data directory's SQLite database (refused while the
    /// server runs; the previous files are kept in <data>/pre-restore-<time>/), or with
    /// --database-url into that Postgres database, which must be empty. The backup is
    /// loaded and checked (row counts, every hash chain) before anything is replaced.
    Restore {
        /// The backup file (agv-backup-….tar).
        file: PathBuf,
        /// The key the backup's signature must match (base64, hex, or a file); default:
        /// the data directory's key, else the backup's own (and said so).
        #[arg(long, value_name = "KEY")]
        public_key: Option<String>,
        /// A file holding the passphrase that opens the backup's sealed key files
        /// (or AGV_BACKUP_PASSPHRASE); without it the data directory's keys are kept.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Update this binary in place: fetch the release (GitHub releases, or --from a
    /// mirror), check the signature of its checksums and the archive's SHA-256, back the
    /// instance up, keep the current binary as agv-server.prev and swap the new one in.
    /// Only a newer version is installed: an older one is refused without
    /// --allow-downgrade, a VERSION that is not a version always. Restart the service
    /// afterwards; safe while it runs. Refused inside a container (pull the new image).
    Update {
        /// Only say whether a newer version exists (prints its version on stdout).
        #[arg(long)]
        check: bool,
        /// Where the release files are: a mirror's http(s) URL, or a directory holding them
        /// (an absolute path or a file:// URL; air-gapped sites) [default: the
        /// update_source setting]
        #[arg(long, value_name = "SOURCE")]
        from: Option<String>,
        /// Put agv-server.prev back.
        #[arg(long)]
        rollback: bool,
        /// Reinstall the release when it is this binary's version.
        #[arg(long)]
        force: bool,
        /// Install the release even when it is older than this binary.
        #[arg(long)]
        allow_downgrade: bool,
        /// The binary to replace [default: this one]
        #[arg(long, value_name = "PATH")]
        exe: Option<PathBuf>,
    },
    /// Ask the running server whether it is ready (GET /ready on the listen address):
    /// exit 0 when it answers 200, 1 otherwise. For container and service health checks.
    Healthcheck {
        /// The server's base URL [default: from the listen address, 0.0.0.0 → 127.0.0.1]
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Print the version.
    Version,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub command: Option<BackupCommand>,
    /// Where to write the backup file [default: <data>/backups]
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// A file holding a passphrase (12+ characters) that seals the data directory's key
    /// files into the backup (or AGV_BACKUP_PASSPHRASE); without one they are left out.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Do not upload the backup to the S3 bucket, even when backup_s3_* is set.
    #[arg(long)]
    pub no_upload: bool,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Check a backup: its signature and checksums, then restore it into a temporary
    /// database and check every row count and hash chain. Exit 0 when it is good, 1 with
    /// the reason when not. Touches nothing of the instance.
    Verify {
        file: PathBuf,
        /// The key the signature must match (base64, hex, or a file); default: the data
        /// directory's key, else the backup's own (and said so).
        #[arg(long, value_name = "KEY")]
        public_key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chains of calls and audit entries of every tenant (and the instance's
    /// audit chain) and recompute every link from the stored fields: exit 0 when all are
    /// intact, 1 naming the first broken link of each broken chain (tenant, table, seq,
    /// record id, expected and found hash). Progress goes to stderr. Safe while the server
    /// runs: links appended during the walk are left for the next run.
    Verify {
        /// Only this tenant's chains (ten_…).
        #[arg(long)]
        tenant: Option<String>,
        /// Print {"intact", "chains": [...]} as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Run one retention sweep now: remove the request and response bodies of calls
    /// older than the retention period (metadata, tokens, cost, decisions and every
    /// SHA-256 stay; the chain still verifies), except calls of open or acknowledged
    /// incidents, certified calls and calls recorded before chain v2. Works in batches of
    /// 500 calls, each a short transaction, so it is safe while the server runs. Progress
    /// on stderr; prints how many calls were pruned on stdout.
    Run {
        /// Keep bodies of this many days instead of `retention_days` (default 90; 0
        /// removes nothing).
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        days: Option<String>,
        /// Print {"pruned", "examined", "kept", "candidates", "cutoff", "retention_days"} as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user who signs in to the console; prints the user id on stdout. Without
    /// --password-file a random password is made and printed once on stderr.
    Create {
        #[arg(long)]
        email: String,
        /// operator (the whole instance), owner, admin or viewer (of --tenant).
        #[arg(long)]
        role: String,
        /// The tenant of an owner, admin or viewer (ten_…).
        #[arg(long)]
        tenant: Option<String>,
        /// A file holding the password (at least 10 characters).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// List people (id, email, role, tenant, state); with --tenant, that tenant's people
    /// and its open invitations.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Disable a person: they cannot sign in, and every session of theirs ends at once.
    /// Refused for the last enabled operator, or a tenant's last enabled owner.
    Disable {
        /// The user's id (usr_…) or email.
        user: String,
    },
    /// Enable a disabled person again (they sign in with their password).
    Enable {
        /// The user's id (usr_…) or email.
        user: String,
    },
    /// Give a tenant's person another role (owner, admin or viewer), in force from their
    /// next request. Refused for a tenant's last enabled owner, and for the operator.
    Role {
        /// The user's id (usr_…) or email.
        user: String,
        /// owner, admin or viewer.
        role: String,
    },
    /// Delete a person and their sessions; the audit log keeps what they did. Refused for
    /// the last enabled operator, or a tenant's last enabled owner.
    Delete {
        /// The user's id (usr_…) or email.
        user: String,
        /// Confirm by giving the same id or email again.
        #[arg(long, value_name = "USER")]
        confirm: String,
    },
    /// End every session of a person (they may sign in again); prints how many ended.
    Logout {
        /// The user's id (usr_…) or email.
        user: String,
    },
    /// Revoke an invitation that was not accepted: its link stops working at once.
    RevokeInvitation {
        /// The invitation's id (inv_…; `user list --tenant` shows open ones).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant; prints its id alone on stdout.
    Create {
        /// The tenant's display name.
        name: String,
        /// Print {"id","name","created_at"} as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// List tenants.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Export everything of one tenant (calls, incidents, keys, users, evidence, its
    /// chains and audit log) as a signed bundle in the backup format; prints its path.
    /// `agv-server restore` loads it into an empty database. Safe while the server runs.
    Export {
        /// The tenant (ten_…).
        id: String,
        /// Where to write the bundle [default: <data>/backups]
        #[arg(long, value_name = "DIR")]
        output: Option<PathBuf>,
    },
    /// Delete a tenant completely: calls, incidents, keys, users and sessions, policies,
    /// alert routes, evidence, its chains and audit entries, its text-index entries. An
    /// entry in the instance's audit log records it. Cannot be undone: export first.
    /// Safe while the server runs (its keys stop working at once).
    Delete {
        /// The tenant (ten_…).
        id: String,
        /// Confirm by giving the tenant id again.
        #[arg(long, value_name = "ID")]
        confirm: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an API key; prints the key alone on stdout, once. It cannot be shown again.
    Create {
        /// The tenant the key belongs to (ten_…).
        #[arg(long)]
        tenant: String,
        /// A name to recognise the key by.
        #[arg(long, default_value = "")]
        name: String,
        /// proxy: call the OpenAI-compatible endpoints; admin: also kill switch, policies, incidents.
        #[arg(long, default_value = "proxy")]
        scope: String,
        /// Let the key expire after this long (e.g. 90d, 12h).
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
        /// Print {"id","key","tenant_id","scope"} as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// List a tenant's keys (never the secrets).
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key; it stops working within a second, also on a running server.
    Revoke {
        /// The key's id (key_…).
        id: String,
    },
    /// Issue a new key with the same tenant, name and scope; the old one keeps working for the grace period.
    Rotate {
        id: String,
        /// How long the old key keeps working (e.g. 24h, 0s to stop it at once).
        #[arg(long, default_value = "24h", value_name = "DURATION")]
        grace: String,
        #[arg(long)]
        json: bool,
    },
}

/// A failed command: the message for stderr and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: i32,
}

impl CliError {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 2,
        }
    }

    fn failed(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }
}

impl From<StartupError> for CliError {
    fn from(e: StartupError) -> Self {
        Self::failed(e.0)
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        Self::failed(e.to_string())
    }
}

/// Maps a store error: `NotFound` fails with `message`, any other error as itself.
fn or_not_found(message: impl FnOnce() -> String) -> impl FnOnce(StoreError) -> CliError {
    move |e| match e {
        StoreError::NotFound => CliError::failed(message()),
        other => other.into(),
    }
}

/// The message for a tenant id that names no tenant.
fn no_tenant(tenant: impl std::fmt::Display) -> String {
    format!("no tenant {tenant}: list tenants with `agv-server tenant list`")
}

/// Prints a command's result: `value` as JSON with `--json`, else `text`.
fn print_result(json: bool, value: serde_json::Value, text: impl std::fmt::Display) {
    if json {
        print_json(&value);
    } else {
        println!("{text}");
    }
}

/// Shows a progress line on stderr: rewritten in place on a terminal, else one line each.
fn show_progress(tty: bool, line: &str) {
    if tty {
        eprint!("\r{line}          ");
    } else {
        eprintln!("{line}");
    }
}

/// A runtime on this thread for the commands that talk over the network.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn settings(global: &GlobalArgs) -> Result<Settings, CliError> {
    Settings::load(global.data.clone(), &global.flags).map_err(|e| CliError::usage(e.0))
}

/// Runs the parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    // Everything the server writes (the data directory, the database, keys, logs, backups)
    // is for the service user alone: created 0700 / 0600 whatever the inherited umask.
    // SAFETY: umask only sets this process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    match dispatch(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", e.message);
            e.code
        }
    }
}

fn dispatch(cli: Cli) -> Result<(), CliError> {
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Version = command {
        println!("agv-server {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    if let Command::Verify {
        certificate,
        public_key,
    } = &command
    {
        return verify_certificate(&cli.global, certificate, public_key.as_deref());
    }
    let settings = settings(&cli.global)?;
    match command {
        Command::Serve => serve(settings),
        Command::Version | Command::Verify { .. } => Ok(()),
        Command::Migrate => {
            let store = open_store(&settings)?;
            let version = store.schema_version()?;
            eprintln!(
                "database is up to date ({} backend)",
                store.backend().as_str()
            );
            println!("{version}");
            Ok(())
        }
        Command::User(cmd) => user(&open_store(&settings)?, cmd),
        Command::Tenant(cmd) => tenant(&open_store(&settings)?, &settings.data_dir, cmd),
        Command::Demo {
            calls,
            days,
            seed,
            json,
        } => demo(&open_store(&settings)?, calls, days, seed, json),
        Command::Key(cmd) => key(&open_store(&settings)?, cmd),
        Command::Healthcheck { url } => healthcheck(&settings, url.as_deref()),
        Command::Update {
            check,
            from,
            rollback,
            force,
            allow_downgrade,
            exe,
        } => update(
            &settings,
            check,
            from.as_deref(),
            rollback,
            Reinstall {
                same: force,
                older: allow_downgrade,
            },
            exe,
        ),
        Command::Backup(args) => backup(&settings, args),
        Command::Restore {
            file,
            public_key,
            passphrase_file,
        } => restore(
            &settings,
            &file,
            public_key.as_deref(),
            passphrase_file.as_deref(),
        ),
        Command::Retention(RetentionCommand::Run { days, json }) => {
            // Checked before the database is opened: bad input changes nothing.
            let days = match days.as_deref() {
                Some(d) => parse_days(d)?,
                None => settings.retention_days,
            };
            retention_run(&open_store(&settings)?, days, json)
        }
        Command::Audit(AuditCommand::Verify { tenant, json }) => {
            let tenant = tenant.as_deref().map(parse_tenant).transpose()?;
            audit_verify(&open_store(&settings)?, tenant.as_ref(), json)
        }
    }
}

/// Calls per transaction while making demo data.
const DEMO_BATCH: usize = 5_000;

fn demo(store: &DynStore, calls: u64, days: u32, seed: u64, json: bool) -> Result<(), CliError> {
    use crate::incidents::demo::CallStream;
    use std::io::IsTerminal;
    if calls > 100_000_000 {
        return Err(CliError::usage("--calls may be at most 100000000"));
    }
    if days == 0 || days > 3650 {
        return Err(CliError::usage("--days must be between 1 and 3650"));
    }
    let now = Timestamp::now();
    let tenant = Tenant {
        id: TenantId::generate(),
        name: TenantName::parse("Demo").map_err(|e| CliError::failed(e.0))?,
        created_at: now,
    };
    store.create_tenant(&tenant)?;
    store.mark_demo_tenant(&tenant.id, now)?;
    let mut keys = Vec::new();
    for name in ["support-bot", "search", "batch-jobs"] {
        let (row, _secret) = NewApiKey::generate(tenant.id.clone(), name, Scope::Proxy, None)
            .map_err(|e| CliError::failed(e.0))?;
        store.create_api_key(&row)?;
        keys.push(row.id);
    }
    let (admin, admin_secret) =
        NewApiKey::generate(tenant.id.clone(), "demo-admin", Scope::Admin, None)
            .map_err(|e| CliError::failed(e.0))?;
    store.create_api_key(&admin)?;
    eprintln!(
        "created demo tenant {} with 3 proxy keys and admin key {}; making {calls} calls over {days} days",
        tenant.id, admin.id
    );
    let span = i64::from(days) * 86_400_000;
    let mut stream = CallStream::new(tenant.id.clone(), keys, calls, now, span, seed).peekable();
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let (mut done, mut incidents, mut last_tenth) = (0u64, std::collections::HashSet::new(), 0);
    while stream.peek().is_some() {
        let batch: Vec<_> = stream.by_ref().take(DEMO_BATCH).collect();
        store.insert_calls(&batch)?;
        let signals: Vec<_> = batch
            .iter()
            .flat_map(crate::domain::incident::signals_from_call)
            .map(|mut s| {
                s.demo = true;
                s
            })
            .collect();
        for a in store.apply_signals(&signals)? {
            incidents.insert(a.incident_id);
        }
        done += batch.len() as u64;
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
        if tty {
            eprint!(
                "\r{done}/{calls} calls ({:.0}%), {} incidents, {rate:.0} calls/s   ",
                done as f64 * 100.0 / calls as f64,
                incidents.len()
            );
        } else if done * 10 / calls.max(1) > last_tenth || done == calls {
            last_tenth = done * 10 / calls.max(1);
            eprintln!(
                "{done}/{calls} calls, {} incidents, {rate:.0} calls/s",
                incidents.len()
            );
        }
    }
    if tty {
        eprintln!();
    }
    eprintln!("indexing the calls for text search…");
    let indexed = store.index_pending_calls()?;
    eprintln!("indexed {indexed} calls; compacting the index…");
    store.optimize_search()?;
    store.checkpoint()?;
    eprintln!(
        "done in {:.1} s: {done} calls, {} incidents. Admin key (shown only now): use it with /v1/calls and /v1/incidents",
        started.elapsed().as_secs_f64(),
        incidents.len()
    );
    print_result(
        json,
        serde_json::json!({
            "tenant_id": tenant.id, "admin_key": admin_secret.expose(), "calls": done, "incidents": incidents.len(),
        }),
        &tenant.id,
    );
    Ok(())
}

fn serve(settings: Settings) -> Result<(), CliError> {
    // Flushes the log writer when `serve` returns, before the process exits.
    let _log_writer = crate::telemetry::init_logging(settings.log_format, &settings.log_level);
    let system = actix_web::rt::System::new();
    system.block_on(async move {
        let app = Application::build(settings).await?;
        app.run_until_stopped().await?;
        Ok(())
    })
}

/// `agv-server verify`: offline, read-only. The trusted key comes from `--public-key`, or
/// else from the data directory (never created here); the certificate's own key is used
/// only when it is that trusted key.
fn verify_certificate(
    global: &GlobalArgs,
    path: &std::path::Path,
    public_key: Option<&str>,
) -> Result<(), CliError> {
    use crate::domain::certificate::verify;
    use std::io::Read;
    let bytes = if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| CliError::usage(format!("cannot read the certificate from stdin: {e}")))?;
        buf
    } else {
        std::fs::read(path).map_err(|e| {
            CliError::usage(format!(
                "cannot read the certificate file {}: {e}",
                path.display()
            ))
        })?
    };
    let trusted = match public_key {
        Some(given) => public_key_arg(given)?,
        None => {
            let env = |k: &str| std::env::var(k).ok();
            let (dir, _) = crate::config::data_dir(global.data.clone(), &env);
            match crate::evidence::signing::read_public_key(&dir) {
                Ok(Some(k)) => k,
                Ok(None) => {
                    return Err(CliError::usage(format!(
                        "no trusted public key: pass --public-key KEY (the public_key of GET /v1/certificates/public-key on the issuing instance), or run this on that instance with --data DIR (no signing key found in {})",
                        dir.display()
                    )));
                }
                Err(e) => return Err(CliError::usage(e)),
            }
        }
    };
    if crate::domain::evidence_pack::looks_like_pack(&bytes) {
        return verify_pack(&bytes, &trusted);
    }
    let cert = verify(&bytes, Some(&trusted))
        .map_err(|e| CliError::failed(format!("the certificate is NOT valid: {e}")))?;
    eprintln!(
        "valid: {} certificate {} issued {} by instance {}",
        cert.kind.as_str(),
        cert.certificate_id,
        cert.issued_at,
        cert.instance_id
    );
    print_json(&serde_json::json!({
        "valid": true,
        "certificate_id": cert.certificate_id,
        "kind": cert.kind,
        "subject_id": cert.subject_id,
        "issued_at": cert.issued_at,
        "instance_id": cert.instance_id,
        "match_level": cert.match_level,
    }));
    Ok(())
}

/// The evidence-pack half of `agv-server verify` (the file was told apart by its
/// `format` member).
fn verify_pack(
    bytes: &[u8],
    trusted: &crate::domain::certificate::PublicKey,
) -> Result<(), CliError> {
    use crate::domain::evidence_pack::verify;
    let (pack, omitted) = verify(bytes, Some(trusted))
        .map_err(|e| CliError::failed(format!("the evidence pack is NOT valid: {e}")))?;
    let incident = pack
        .incident
        .get("id")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    let checked = pack.calls.len() - omitted;
    eprintln!(
        "valid: evidence pack for incident {incident} made {} by instance {}: signature, embedded certificate and {checked} chain proofs hold{}",
        pack.generated_at,
        pack.instance_id,
        if omitted > 0 {
            format!(" ({omitted} calls carry no proof: see their \"omitted\" reason)")
        } else {
            String::new()
        }
    );
    print_json(&serde_json::json!({
        "valid": true,
        "kind": "evidence_pack",
        "incident_id": incident,
        "generated_at": pack.generated_at,
        "instance_id": pack.instance_id,
        "certificate_id": pack.certificate.certificate_id,
        "calls": pack.calls.len(),
        "calls_total": pack.calls_total,
        "chain_proofs_checked": checked,
        "chain_proofs_omitted": omitted,
        "chain_head": pack.chain_head,
    }));
    Ok(())
}

fn audit_verify(store: &DynStore, tenant: Option<&TenantId>, json: bool) -> Result<(), CliError> {
    use crate::evidence::audit::verify_all;
    let started = std::time::Instant::now();
    let mut checked: u64 = 0;
    let mut next_report: u64 = 100_000;
    let mut progress = |n: u64| {
        checked += n;
        if checked >= next_report {
            eprintln!("checked {checked} links…");
            next_report += 100_000;
        }
    };
    let results =
        verify_all(store.as_ref(), tenant, &mut progress).map_err(or_not_found(|| {
            no_tenant(tenant.map_or("", TenantId::as_str))
        }))?;
    let broken: Vec<_> = results.iter().filter(|r| r.broken.is_some()).collect();
    let links: i64 = results.iter().map(|r| r.links).sum();
    if json {
        print_json(&serde_json::json!({
            "intact": broken.is_empty(),
            "links_checked": links,
            "chains": results,
        }));
    }
    if broken.is_empty() {
        let msg = format!(
            "all {} chains intact: {links} links checked in {:.1}s",
            results.len(),
            started.elapsed().as_secs_f64()
        );
        if json {
            eprintln!("{msg}");
        } else {
            println!("{msg}");
        }
        return Ok(());
    }
    let lines: Vec<String> = broken
        .iter()
        .filter_map(|r| {
            let b = r.broken.as_ref()?;
            Some(format!(
                "chain broken: tenant {}, table {}, seq {}, id {}: {}; expected {}, found {}",
                r.tenant_id.as_ref().map_or("(instance)", TenantId::as_str),
                r.table,
                b.seq,
                b.id.as_deref().unwrap_or("(missing)"),
                b.reason,
                b.expected,
                b.found
            ))
        })
        .collect();
    Err(CliError::failed(format!(
        "{}\nthe records above were changed or removed after they were written; restore them from a backup and investigate who had write access to the database",
        lines.join("\n")
    )))
}

/// `--days N`: a whole number of days, 0 to 36500.
fn parse_days(raw: &str) -> Result<u32, CliError> {
    raw.trim()
        .parse::<u32>()
        .ok()
        .filter(|d| *d <= 36_500)
        .ok_or_else(|| {
            CliError::usage(format!(
                "--days must be a whole number of days from 0 to 36500 (0 removes nothing), not '{}'",
                raw.chars().take(40).collect::<String>()
            ))
        })
}

fn retention_run(store: &DynStore, days: u32, json: bool) -> Result<(), CliError> {
    use crate::ops::retention::{self, SweepReport};
    use std::io::IsTerminal;
    if days == 0 {
        eprintln!("retention is 0 days: call bodies are kept forever; nothing to do");
    }
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let mut last = std::time::Instant::now();
    let mut shown_total = false;
    let mut progress = |r: &SweepReport| {
        if !shown_total {
            shown_total = true;
            if let Some(cutoff) = r.cutoff {
                eprintln!(
                    "removing the bodies of calls recorded before {} ({} days): {} calls to look at",
                    cutoff.to_rfc3339(),
                    days,
                    r.candidates
                );
            }
            return;
        }
        if last.elapsed() >= std::time::Duration::from_millis(500) {
            last = std::time::Instant::now();
            let line = format!(
                "pruned {} of {} calls looked at ({} kept for open incidents or certificates)",
                r.pruned, r.examined, r.protected
            );
            show_progress(tty, &line);
        }
    };
    let report = retention::sweep(
        store.as_ref(),
        days,
        Timestamp::now(),
        retention::BATCH,
        retention::PAUSE,
        Actor::cli(),
        &mut progress,
    )?;
    if tty && report.examined > 0 {
        eprintln!();
    }
    print_result(
        json,
        serde_json::json!({
            "retention_days": days,
            "cutoff": report.cutoff.map(Timestamp::to_rfc3339),
            "candidates": report.candidates,
            "examined": report.examined,
            "pruned": report.pruned,
            "kept": report.protected,
        }),
        report.pruned,
    );
    eprintln!(
        "pruned the bodies of {} calls in {:.1}s; {} kept for open incidents or certificates",
        report.pruned,
        started.elapsed().as_secs_f64(),
        report.protected
    );
    Ok(())
}

fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

fn tenant(
    store: &DynStore,
    data_dir: &std::path::Path,
    cmd: TenantCommand,
) -> Result<(), CliError> {
    match cmd {
        TenantCommand::Create { name, json } => {
            let name = TenantName::parse(&name).map_err(|e| CliError::usage(e.0))?;
            let tenant = crate::ops::tenants::create(
                store.as_ref(),
                name,
                Actor::cli(),
                Some("local".into()),
            )?;
            eprintln!("created tenant '{}'", tenant.name.as_str());
            print_result(json, tenant_json(&tenant), &tenant.id);
            Ok(())
        }
        TenantCommand::Export { id, output } => {
            let tenant = parse_tenant(&id)?;
            existing_tenant(store, &tenant)?;
            let settings_dir = output.unwrap_or_else(|| data_dir.join("backups"));
            let key =
                crate::evidence::signing::load_or_create(data_dir).map_err(CliError::failed)?;
            let done = crate::ops::backup::create(
                store,
                Some(&tenant),
                data_dir,
                &settings_dir,
                &key,
                None,
                &mut row_progress("exporting"),
            )
            .map_err(|e| CliError::failed(format!("the export failed: {e}")))?;
            let rows: u64 = done.manifest.tables.iter().map(|t| t.rows).sum();
            audit(
                store,
                NewAuditEntry::new(
                    Some(tenant.clone()),
                    Actor::cli(),
                    AuditAction::TenantExport,
                    tenant.as_str(),
                )
                .after(serde_json::json!({"file": done.path.display().to_string(), "rows": rows})),
            );
            eprintln!("exported {rows} rows of tenant {tenant}");
            println!("{}", done.path.display());
            Ok(())
        }
        TenantCommand::Delete { id, confirm } => {
            let tenant = parse_tenant(&id)?;
            if confirm != id {
                return Err(CliError::usage(format!(
                    "to delete tenant {id} and everything it holds, confirm with --confirm {id}"
                )));
            }
            let before = existing_tenant(store, &tenant)?;
            let counts = store.erase_tenant(&tenant)?;
            let deleted: serde_json::Map<String, serde_json::Value> = counts
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(t, n)| (t.clone(), serde_json::json!(n)))
                .collect();
            // The tenant's own audit chain is gone with it: the instance's keeps the record.
            audit(
                store,
                NewAuditEntry::new(
                    None,
                    Actor::cli(),
                    AuditAction::TenantErase,
                    tenant.as_str(),
                )
                .before(serde_json::json!({"id": before.id, "name": before.name}))
                .after(serde_json::json!({"deleted_rows": deleted})),
            );
            let total: i64 = counts.iter().map(|(_, n)| n).sum();
            eprintln!(
                "deleted tenant {tenant} ('{}'): {total} rows; recorded in the instance's audit log",
                before.name.as_str()
            );
            Ok(())
        }
        TenantCommand::List { json } => {
            let tenants = store.list_tenants()?;
            if json {
                print_json(&tenants.iter().map(tenant_json).collect());
            } else if tenants.is_empty() {
                eprintln!("no tenants yet: create one with `agv-server tenant create NAME`");
            } else {
                for t in tenants {
                    println!(
                        "{}\t{}\t{}",
                        t.id,
                        t.name.as_str(),
                        t.created_at.to_rfc3339()
                    );
                }
            }
            Ok(())
        }
    }
}

fn tenant_json(t: &Tenant) -> serde_json::Value {
    serde_json::json!({"id": t.id, "name": t.name, "created_at": t.created_at.to_rfc3339()})
}

fn parse_tenant(s: &str) -> Result<TenantId, CliError> {
    TenantId::parse(s).map_err(|e| CliError::usage(e.0))
}

fn parse_key_id(s: &str) -> Result<KeyId, CliError> {
    KeyId::parse(s).map_err(|e| CliError::usage(e.0))
}

fn key_json(row: &NewApiKey, secret: &str) -> serde_json::Value {
    serde_json::json!({
        "id": row.id,
        "key": secret,
        "tenant_id": row.tenant_id,
        "scope": row.scope,
        "name": row.name,
        "expires_at": row.expires_at.map(Timestamp::to_rfc3339),
    })
}

/// Records a CLI action in the audit log (actor `cli:<os user>`, source `local`).
fn audit(store: &DynStore, entry: NewAuditEntry) {
    crate::evidence::audit::record(store.as_ref(), &entry.source(Some("local".into())));
}

/// The CLI as the author of a change: actor `cli:<os user>`, source `local`.
fn cli_actor() -> crate::ops::keys::By {
    crate::ops::keys::By {
        actor: Actor::cli(),
        source: Some("local".into()),
    }
}

fn key(store: &DynStore, cmd: KeyCommand) -> Result<(), CliError> {
    match cmd {
        KeyCommand::Create {
            tenant,
            name,
            scope,
            expires_in,
            json,
        } => {
            let tenant_id = parse_tenant(&tenant)?;
            let scope = Scope::parse(&scope).map_err(|e| CliError::usage(e.0))?;
            let expires_at = expires_in
                .map(|d| parse_duration(&d).map(|d| Timestamp::now().plus(d)))
                .transpose()
                .map_err(|e| CliError::usage(e.0))?;
            let (row, secret) = NewApiKey::generate(tenant_id.clone(), &name, scope, expires_at)
                .map_err(|e| CliError::usage(e.0))?;
            crate::ops::keys::create(store.as_ref(), &row, &cli_actor())
                .map_err(or_not_found(|| no_tenant(&tenant_id)))?;
            eprintln!(
                "created {} key {} for tenant {}; it is shown only now, keep it safe",
                row.scope, row.id, row.tenant_id
            );
            print_result(json, key_json(&row, secret.expose()), secret.expose());
            Ok(())
        }
        KeyCommand::List { tenant, json } => {
            let tenant_id = parse_tenant(&tenant)?;
            store
                .get_tenant(&tenant_id)
                .map_err(or_not_found(|| format!("no tenant {tenant_id}")))?;
            let keys = store.list_api_keys(&tenant_id)?;
            let now = Timestamp::now();
            if json {
                let rows: Vec<_> = keys
                    .iter()
                    .map(|k| {
                        serde_json::json!({
                            "id": k.id, "tenant_id": k.tenant_id, "name": k.name, "scope": k.scope, "prefix": k.prefix,
                            "status": k.status(now), "created_at": k.created_at.to_rfc3339(),
                            "expires_at": k.expires_at.map(Timestamp::to_rfc3339),
                            "revoked_at": k.revoked_at.map(Timestamp::to_rfc3339),
                            "last_used_at": k.last_used_at.map(Timestamp::to_rfc3339),
                        })
                    })
                    .collect();
                print_json(&serde_json::Value::Array(rows));
            } else if keys.is_empty() {
                eprintln!(
                    "tenant {tenant_id} has no keys: create one with `agv-server key create --tenant {tenant_id}`"
                );
            } else {
                for k in keys {
                    let last = k
                        .last_used_at
                        .map(Timestamp::to_rfc3339)
                        .unwrap_or_else(|| "never used".into());
                    println!(
                        "{}\t{}…\t{}\t{}\t{}\t{}",
                        k.id,
                        k.prefix,
                        k.scope,
                        k.status(now),
                        k.name,
                        last
                    );
                }
            }
            Ok(())
        }
        KeyCommand::Revoke { id } => {
            let id = parse_key_id(&id)?;
            let rec = crate::ops::keys::revoke(store.as_ref(), None, &id, &cli_actor())
                .map_err(or_not_found(|| format!("no key {id}")))?;
            eprintln!("revoked key {} (tenant {})", rec.id, rec.tenant_id);
            println!("{}", rec.id);
            Ok(())
        }
        KeyCommand::Rotate { id, grace, json } => {
            let id = parse_key_id(&id)?;
            let grace = parse_duration(&grace).map_err(|e| CliError::usage(e.0))?;
            let old = store
                .get_api_key(None, &id)
                .map_err(or_not_found(|| format!("no key {id}")))?;
            let now = Timestamp::now();
            if !old.is_active(now) {
                return Err(CliError::failed(format!(
                    "key {id} is {}; create a new key instead",
                    old.status(now)
                )));
            }
            let (row, secret) =
                NewApiKey::generate(old.tenant_id.clone(), &old.name, old.scope, old.expires_at)
                    .map_err(|e| CliError::usage(e.0))?;
            let rotated = crate::ops::keys::rotate(
                store.as_ref(),
                &old,
                &row,
                now.plus(grace),
                &cli_actor(),
            )?;
            let old_until = rotated.old_until;
            eprintln!(
                "new key {} replaces {}; the old key works until {}",
                row.id,
                id,
                old_until.to_rfc3339()
            );
            print_result(json, key_json(&row, secret.expose()), secret.expose());
            Ok(())
        }
    }
}

/// A public key given on the command line: the key itself or a file holding it.
fn public_key_arg(given: &str) -> Result<crate::domain::certificate::PublicKey, CliError> {
    let as_path = std::path::Path::new(given);
    let text = if as_path.is_file() {
        std::fs::read_to_string(as_path)
            .map_err(|e| CliError::usage(format!("cannot read the public key file {given}: {e}")))?
    } else {
        given.to_owned()
    };
    crate::domain::certificate::PublicKey::parse(&text)
        .map_err(|e| CliError::usage(format!("invalid --public-key: {e}")))
}

fn passphrase(
    settings: &Settings,
    file: Option<&std::path::Path>,
) -> Result<Option<String>, CliError> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).map_err(|e| {
            CliError::usage(format!(
                "cannot read the passphrase file {}: {e}",
                f.display()
            ))
        })?;
        return Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()));
    }
    Ok(settings.backup_passphrase.clone())
}

/// Prints "<what> <table>: <rows> rows" to stderr at most twice a second (on one line on a
/// terminal).
fn row_progress(what: &'static str) -> impl FnMut(&str, u64) {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let mut last = std::time::Instant::now();
    move |table, rows| {
        if last.elapsed() >= std::time::Duration::from_millis(500) {
            last = std::time::Instant::now();
            show_progress(tty, &format!("{what} {table}: {rows} rows"));
        }
    }
}

fn backup(settings: &Settings, args: BackupArgs) -> Result<(), CliError> {
    if let Some(BackupCommand::Verify { file, public_key }) = args.command {
        let trusted = match public_key.as_deref() {
            Some(k) => Some(public_key_arg(k)?),
            None => crate::evidence::signing::read_public_key(&settings.data_dir)
                .map_err(CliError::failed)?,
        };
        let started = std::time::Instant::now();
        let (manifest, counts, trusted) =
            crate::ops::backup::verify(&file, trusted, &mut row_progress("checking")).map_err(
                |e| CliError::failed(format!("the backup {} is not good: {e}", file.display())),
            )?;
        eprintln!();
        if !trusted {
            eprintln!(
                "note: checked against the backup's own key (instance {}); pass --public-key to check it against a key you trust",
                manifest.instance_id
            );
        }
        let rows: i64 = counts.iter().map(|(_, n)| n).sum();
        eprintln!(
            "the backup is good: {} rows in {} tables restored and every hash chain verified in {:.1} s (made {} by agv-server {}, schema {}, from {})",
            rows,
            counts.len(),
            started.elapsed().as_secs_f64(),
            manifest.created_at,
            manifest.agv_version,
            manifest.schema_version,
            manifest.backend
        );
        println!("{}", file.display());
        return Ok(());
    }
    let store = open_store(settings)?;
    let key =
        crate::evidence::signing::load_or_create(&settings.data_dir).map_err(CliError::failed)?;
    let out = args.output.unwrap_or_else(|| settings.backup_dir.clone());
    let pass = passphrase(settings, args.passphrase_file.as_deref())?;
    if pass.is_none() {
        eprintln!(
            "note: no passphrase given (--passphrase-file or AGV_BACKUP_PASSPHRASE): the data directory's key files are not in this backup; keep {} safe separately",
            crate::ops::backup::SECRET_FILES.join(", ")
        );
    }
    let started = std::time::Instant::now();
    let done = crate::ops::backup::create(
        &store,
        None,
        &settings.data_dir,
        &out,
        &key,
        pass.as_deref(),
        &mut row_progress("backing up"),
    )
    .map_err(|e| CliError::failed(format!("the backup failed: {e}")))?;
    let rows: u64 = done.manifest.tables.iter().map(|t| t.rows).sum();
    eprintln!();
    eprintln!(
        "backed up {rows} rows of {} tables ({} bytes) in {:.1} s",
        done.manifest.tables.len(),
        done.bytes,
        started.elapsed().as_secs_f64()
    );
    match (&settings.backup_s3, args.no_upload) {
        (Some(cfg), false) => upload_backup(cfg, &done.path)?,
        (Some(cfg), true) => eprintln!("not uploaded to {} (--no-upload)", cfg.location()),
        (None, _) => {}
    }
    println!("{}", done.path.display());
    Ok(())
}

/// Uploads a backup just written, with progress on stderr.
fn upload_backup(cfg: &crate::config::BackupS3, path: &std::path::Path) -> Result<(), CliError> {
    use std::io::IsTerminal;
    use std::sync::atomic::{AtomicU64, Ordering};
    let failed = |e: String| {
        CliError::failed(format!(
            "the backup {} was written, but {e}. The local file is kept; copy it to {} by hand, or run `agv-server backup` again (--no-upload skips the upload)",
            path.display(),
            cfg.location()
        ))
    };
    let total = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let runtime =
        runtime().map_err(|e| failed(format!("the upload cannot start a runtime: {e}")))?;
    let remote = crate::ops::s3::Remote::new(cfg).map_err(failed)?;
    let sent = std::sync::Arc::new(AtomicU64::new(0));
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    eprintln!(
        "uploading to {}{} ({total} bytes)",
        cfg.location(),
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let result = runtime.block_on(async {
        let upload = remote.upload(path, Some(sent.clone()));
        tokio::pin!(upload);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        tick.tick().await;
        loop {
            tokio::select! {
                r = &mut upload => break r,
                _ = tick.tick() => {
                    let n = sent.load(Ordering::Relaxed);
                    let pct = (n * 100).checked_div(total).unwrap_or(100);
                    show_progress(tty, &format!("uploading: {pct}% ({n} of {total} bytes)"));
                }
            }
        }
    });
    if tty {
        eprintln!();
    }
    let up = result.map_err(failed)?;
    eprintln!(
        "uploaded to s3://{}/{} ({} bytes) in {:.1} s",
        cfg.bucket,
        up.key,
        up.bytes,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn restore(
    settings: &Settings,
    file: &std::path::Path,
    public_key: Option<&str>,
    passphrase_file: Option<&std::path::Path>,
) -> Result<(), CliError> {
    let trusted = public_key.map(public_key_arg).transpose()?;
    let pass = passphrase(settings, passphrase_file)?;
    let started = std::time::Instant::now();
    let done = crate::ops::backup::restore(
        file,
        &settings.data_dir,
        settings.database_url.as_deref(),
        trusted,
        pass.as_deref(),
        &mut row_progress("restoring"),
    )
    .map_err(|e| CliError::failed(format!("the restore failed: {e}")))?;
    eprintln!();
    for note in &done.notes {
        eprintln!("note: {note}");
    }
    let rows: i64 = done.counts.iter().map(|(_, n)| n).sum();
    eprintln!(
        "restored {rows} rows of {} tables in {:.1} s; every hash chain verified",
        done.counts.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(safety) = &done.safety_copy {
        eprintln!("the previous database is kept in {}", safety.display());
    }
    if !done.files_restored.is_empty() {
        eprintln!(
            "restored from the backup: {}",
            done.files_restored.join(", ")
        );
    }
    eprintln!("the text index is rebuilt in the background at the next start");
    // Recorded in the restored database's instance-wide audit chain.
    match open_store(settings) {
        Ok(store) => audit(
            &store,
            NewAuditEntry::new(
                None,
                Actor::cli(),
                AuditAction::Restore,
                file.display().to_string(),
            )
            .after(serde_json::json!({
                "rows": rows,
                "tables": done.counts.len(),
                "safety_copy": done.safety_copy.as_ref().map(|p| p.display().to_string()),
                "files_restored": done.files_restored,
            })),
        ),
        Err(e) => eprintln!(
            "warning: the restore is done but could not be recorded in the audit log: {}",
            e.0
        ),
    }
    Ok(())
}

fn existing_tenant(store: &DynStore, tenant: &TenantId) -> Result<Tenant, CliError> {
    store
        .get_tenant(tenant)
        .map_err(or_not_found(|| no_tenant(tenant)))
}

/// The server's own listen address as this machine reaches it (a wildcard host becomes
/// 127.0.0.1).
fn local_address(settings: &Settings) -> String {
    let listen = settings.listen.as_str();
    match listen.rsplit_once(':') {
        Some(("0.0.0.0" | "[::]" | "", port)) => format!("127.0.0.1:{port}"),
        _ => listen.to_owned(),
    }
}

/// GET /ready over plain HTTP/1.0 with a 3 s budget (over HTTPS when the server has
/// built-in TLS, see `healthcheck_tls`); the check runs beside the server.
fn healthcheck(settings: &Settings, url: Option<&str>) -> Result<(), CliError> {
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    let https = url.map_or(settings.tls.is_some(), |u| u.starts_with("https://"));
    if https {
        return healthcheck_tls(settings, url);
    }
    let target = match url {
        Some(u) => u
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned(),
        None => local_address(settings),
    };
    let (host, path_prefix) = target.split_once('/').unwrap_or((target.as_str(), ""));
    let timeout = std::time::Duration::from_secs(3);
    let addr = host
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| CliError::failed(format!("unhealthy: cannot resolve {host}")))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| CliError::failed(format!("unhealthy: cannot connect to {addr}: {e}")))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let path = if path_prefix.is_empty() {
        "/ready".to_owned()
    } else {
        format!("/{path_prefix}/ready")
    };
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: agv-server-healthcheck\r\n\r\n"
    )
    .map_err(|e| CliError::failed(format!("unhealthy: {e}")))?;
    let mut answer = String::new();
    let _ = stream.take(64 * 1024).read_to_string(&mut answer);
    let status = answer.split_whitespace().nth(1).unwrap_or("none");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    health(&format!("{host}{path}"), status, body)
}

/// The healthcheck's verdict on `target`'s answer: healthy when it is 200.
fn health(target: &str, status: &str, body: &str) -> Result<(), CliError> {
    if status != "200" {
        let body = body.trim();
        return Err(CliError::failed(format!(
            "unhealthy: {target} answered {status} {body}"
        )));
    }
    eprintln!("healthy: {target} answered 200");
    Ok(())
}

/// GET /ready over HTTPS, for a server with built-in TLS. The check runs beside the
/// server on its own address, so the certificate is not checked (it may be self-signed or
/// name another host).
fn healthcheck_tls(settings: &Settings, url: Option<&str>) -> Result<(), CliError> {
    let base = match url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => format!("https://{}", local_address(settings)),
    };
    let target = format!("{base}/ready");
    let runtime = runtime()
        .map_err(|e| CliError::failed(format!("unhealthy: cannot start a runtime: {e}")))?;
    runtime.block_on(async {
        let client = crate::outbound::builder()
            .danger_accept_invalid_certs(true)
            .timeout(std::time::Duration::from_secs(3))
            .build()
            .map_err(|e| CliError::failed(format!("unhealthy: {e}")))?;
        let res = client
            .get(&target)
            .header("user-agent", "agv-server-healthcheck")
            .send()
            .await
            .map_err(|e| CliError::failed(format!("unhealthy: cannot reach {target}: {e}")))?;
        let status = res.status().as_u16().to_string();
        health(&target, &status, &res.text().await.unwrap_or_default())
    })
}

/// Which releases that are not newer `agv-server update` installs all the same.
struct Reinstall {
    /// --force: this binary's version.
    same: bool,
    /// --allow-downgrade: an older one.
    older: bool,
}

fn update(
    settings: &Settings,
    check: bool,
    from: Option<&str>,
    rollback: bool,
    reinstall: Reinstall,
    exe: Option<PathBuf>,
) -> Result<(), CliError> {
    use crate::ops::update as up;
    use std::cmp::Ordering;
    if up::in_container() {
        return Err(CliError::failed(format!(
            "agv-server runs inside a container, so it is not updated in place: {}",
            up::IN_CONTAINER_HOW_TO
        )));
    }
    let exe = match exe {
        Some(e) => e,
        None => std::env::current_exe()
            .map_err(|e| CliError::failed(format!("cannot tell where this binary is: {e}")))?,
    };
    if rollback {
        up::rollback(&exe).map_err(CliError::failed)?;
        eprintln!(
            "put the previous binary back in {}; restart the service to run it",
            exe.display()
        );
        return Ok(());
    }
    let key = up::release_key().map_err(CliError::usage)?;
    let source = from.unwrap_or(&settings.update_source);
    up::Source::parse(source).map_err(|e| CliError::usage(format!("--from: {e}")))?;
    let runtime = runtime().map_err(|e| CliError::failed(format!("cannot start: {e}")))?;
    let current = env!("CARGO_PKG_VERSION");
    let release = runtime
        .block_on(up::check(source, &key))
        .map_err(CliError::failed)?;
    let order = up::compare(&release.version, current).map_err(CliError::failed)?;
    let older = format!(
        "the release at {} is agv-server {}, older than this binary ({current})",
        release.source, release.version
    );
    if check {
        match order {
            Ordering::Greater => {
                eprintln!("an update is available: {current} → {}", release.version)
            }
            Ordering::Equal => {
                eprintln!("up to date: {current} (the release is {})", release.version)
            }
            Ordering::Less => eprintln!(
                "up to date: {older}; `agv-server update` refuses it without --allow-downgrade"
            ),
        }
        println!("{}", release.version);
        return Ok(());
    }
    match order {
        Ordering::Greater => {}
        Ordering::Equal if reinstall.same => {}
        Ordering::Equal => {
            eprintln!(
                "already up to date: {current} (the release is {}); --force installs it anyway",
                release.version
            );
            return Ok(());
        }
        Ordering::Less if reinstall.older => {
            eprintln!("downgrading: {older}, and --allow-downgrade was given");
        }
        Ordering::Less => {
            return Err(CliError::failed(format!(
                "{older}: refused, so that whoever serves release files cannot take this server back to an old signed release; `agv-server update --allow-downgrade` installs it"
            )));
        }
    }
    eprintln!(
        "downloading agv-server {} from {}",
        release.version, release.source
    );
    let binary = runtime
        .block_on(up::download(&release))
        .map_err(CliError::failed)?;
    eprintln!("signature and SHA-256 verified; backing up before the update");
    // Run as root (`sudo agv-server update`), the backup is still the service user's.
    let backup = up::as_data_owner(&settings.data_dir, || {
        let store = open_store(settings)?;
        let signing = crate::evidence::signing::load_or_create(&settings.data_dir)
            .map_err(CliError::failed)?;
        crate::ops::backup::create(
            &store,
            None,
            &settings.data_dir,
            &settings.backup_dir,
            &signing,
            settings.backup_passphrase.as_deref(),
            &mut row_progress("backing up"),
        )
        .map_err(|e| {
            CliError::failed(format!(
                "the backup before the update failed: {e}; nothing was changed"
            ))
        })
    })
    .map_err(CliError::failed)??;
    let version = up::install(&exe, &binary).map_err(CliError::failed)?;
    eprintln!(
        "updated to {version}; backup {}; the previous binary is kept as {}. Restart the service (systemctl restart agv-server) to run it; `agv-server update --rollback` goes back",
        backup.path.display(),
        up::prev_path(&exe).display()
    );
    println!("{}", release.version);
    Ok(())
}

fn user_create(
    store: &DynStore,
    email: &str,
    role: &str,
    tenant: Option<&str>,
    password_file: Option<&std::path::Path>,
) -> Result<(), CliError> {
    use crate::domain::user::{Email, NewUser, PasswordHash, Role};
    let email = Email::parse(email).map_err(|e| CliError::usage(format!("--email: {}", e.0)))?;
    let role = Role::parse(role).map_err(|e| CliError::usage(format!("--role: {}", e.0)))?;
    let tenant = match (role, tenant) {
        (Role::Operator, None) => None,
        (Role::Operator, Some(_)) => {
            return Err(CliError::usage(
                "an operator belongs to the instance: leave out --tenant",
            ));
        }
        (_, Some(t)) => {
            let t = parse_tenant(t)?;
            existing_tenant(store, &t)?;
            Some(t)
        }
        (_, None) => {
            return Err(CliError::usage(format!(
                "a {} belongs to a tenant: give --tenant ten_…",
                role.as_str()
            )));
        }
    };
    let (password, generated) = match password_file {
        Some(f) => (
            std::fs::read_to_string(f)
                .map_err(|e| CliError::usage(format!("cannot read {}: {e}", f.display())))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
            false,
        ),
        None => {
            let mut raw = [0u8; 18];
            rand::fill(&mut raw);
            use base64::Engine;
            (
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw),
                true,
            )
        }
    };
    let hash = PasswordHash::create(&password)
        .map_err(|e| CliError::usage(format!("--password-file: {}", e.0)))?;
    let user = store
        .create_user(&NewUser {
            id: crate::domain::UserId::generate(),
            email: email.clone(),
            password: hash,
            role,
            tenant_id: tenant.clone(),
            created_at: Timestamp::now(),
        })
        .map_err(|e| match e {
            StoreError::Conflict(_) => CliError::failed(format!(
                "a user with the email {} exists already",
                email.as_str()
            )),
            other => other.into(),
        })?;
    audit(
        store,
        NewAuditEntry::new(tenant.clone(), Actor::cli(), AuditAction::UserCreate, user.id.as_str())
            .after(serde_json::json!({"id": user.id, "email": user.email, "role": user.role, "tenant_id": user.tenant_id})),
    );
    if generated {
        eprintln!(
            "created {} {} with the password {password} (shown once: keep it, or change it after signing in)",
            role.as_str(),
            email.as_str()
        );
    } else {
        eprintln!("created {} {}", role.as_str(), email.as_str());
    }
    println!("{}", user.id);
    Ok(())
}

/// A person named on the command line by id (`usr_…`) or by email.
fn find_person(store: &DynStore, given: &str) -> Result<crate::domain::user::User, CliError> {
    use crate::domain::user::Email;
    let not_found = || format!("no user {given}: list people with `agv-server user list`");
    if given.contains('@') {
        let email = Email::parse(given).map_err(|e| CliError::usage(e.0))?;
        return store
            .find_user_by_email(&email)?
            .ok_or_else(|| CliError::failed(not_found()));
    }
    let id = crate::domain::UserId::parse(given)
        .map_err(|e| CliError::usage(format!("{} (or give the email)", e.0)))?;
    store.get_user(&id).map_err(or_not_found(not_found))
}

fn person_line(u: &crate::domain::user::User) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}",
        u.id,
        u.email.as_str(),
        u.role.as_str(),
        u.tenant_id.as_ref().map_or("-", |t| t.as_str()),
        u.disabled_at.map_or("enabled".to_owned(), |t| format!(
            "disabled since {}",
            t.to_rfc3339()
        ))
    )
}

fn user(store: &DynStore, cmd: UserCommand) -> Result<(), CliError> {
    use crate::ops::people::{self, Change, Manager, PeopleError};
    let by = Manager {
        actor: Actor::cli(),
        scope: None,
        source: Some("local".into()),
    };
    let failed = |what: &str| {
        let what = what.to_owned();
        move |e: PeopleError| match e {
            PeopleError::NotFound => CliError::failed(format!("no {what} (any more)")),
            PeopleError::Store(e) => e.into(),
            other => CliError::failed(other.to_string()),
        }
    };
    let (person, change) = match cmd {
        UserCommand::Create {
            email,
            role,
            tenant,
            password_file,
        } => {
            return user_create(
                store,
                &email,
                &role,
                tenant.as_deref(),
                password_file.as_deref(),
            );
        }
        UserCommand::List { tenant, json } => return user_list(store, tenant.as_deref(), json),
        UserCommand::RevokeInvitation { id } => {
            let inv_id =
                crate::domain::InvitationId::parse(&id).map_err(|e| CliError::usage(e.0))?;
            let inv = people::revoke_invitation(store.as_ref(), &by, &inv_id)
                .map_err(failed(&format!("invitation {id}")))?;
            eprintln!(
                "revoked the invitation of {} to tenant {}: its link no longer works",
                inv.email.as_str(),
                inv.tenant_id
            );
            println!("{}", inv.id);
            return Ok(());
        }
        UserCommand::Disable { user } => (user, Change::Disable),
        UserCommand::Enable { user } => (user, Change::Enable),
        UserCommand::Role { user, role } => {
            use crate::domain::user::Role;
            let role = match Role::parse(&role) {
                Ok(r) if r.is_tenant_role() => r,
                _ => {
                    return Err(CliError::usage(format!(
                        "unknown role '{}': a person's role is owner, admin or viewer",
                        role.trim()
                    )));
                }
            };
            (user, Change::Role(role))
        }
        UserCommand::Delete { user, confirm } => {
            if confirm.trim() != user.trim() {
                return Err(CliError::usage(format!(
                    "--confirm must repeat the user ({user}): deleting cannot be undone"
                )));
            }
            (user, Change::Delete)
        }
        UserCommand::Logout { user } => (user, Change::EndSessions),
    };
    let target = find_person(store, &person)?;
    let done = people::change(store.as_ref(), &by, &target.id, change)
        .map_err(failed(&format!("user {person}")))?;
    let email = target.email.as_str();
    match change {
        Change::Disable => {
            eprintln!("disabled {email}: they cannot sign in and their sessions ended")
        }
        Change::Enable => eprintln!("enabled {email}: they can sign in again"),
        Change::Role(role) => eprintln!(
            "{email} is now {} (was {})",
            role.as_str(),
            done.before.role.as_str()
        ),
        Change::Delete => eprintln!("deleted {email} and their sessions"),
        Change::EndSessions => {
            let n = done.sessions_ended.unwrap_or(0);
            eprintln!("ended {n} session(s) of {email}");
            println!("{n}");
            return Ok(());
        }
    }
    println!("{}", target.id);
    Ok(())
}

fn user_list(store: &DynStore, tenant: Option<&str>, json: bool) -> Result<(), CliError> {
    let tenant = tenant.map(parse_tenant).transpose()?;
    if let Some(t) = &tenant {
        existing_tenant(store, t)?;
    }
    let users = store.list_users(tenant.as_ref())?;
    let now = Timestamp::now();
    let invitations: Vec<_> = match &tenant {
        Some(t) => store
            .list_invitations(t)?
            .into_iter()
            .filter(|i| i.is_open(now))
            .collect(),
        None => Vec::new(),
    };
    if json {
        let people: Vec<_> = users
            .iter()
            .map(|u| {
                serde_json::json!({
                    "id": u.id, "email": u.email, "role": u.role, "tenant_id": u.tenant_id,
                    "created_at": u.created_at.to_rfc3339(),
                    "disabled_at": u.disabled_at.map(Timestamp::to_rfc3339),
                })
            })
            .collect();
        print_json(&serde_json::json!({"users": people, "invitations": invitations}));
        return Ok(());
    }
    if users.is_empty() {
        eprintln!("nobody yet: create a user with `agv-server user create`");
    }
    for u in &users {
        println!("{}", person_line(u));
    }
    for i in &invitations {
        println!(
            "{}\t{}\t{}\tinvited, open until {}",
            i.id,
            i.email.as_str(),
            i.role.as_str(),
            i.expires_at.to_rfc3339()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn settings_with_a_flag_are_global_flags_and_the_long_help_lists_every_setting() {
        let flagged = || FIELDS.iter().filter(|f| f.flag.is_some());
        let mut args = vec!["agv-server".to_owned(), "tenant".into(), "list".into()];
        for field in flagged() {
            let (long, _) = field.flag.unwrap();
            args.extend([format!("--{long}"), format!("value of {}", field.key)]);
        }
        let cli = Cli::try_parse_from(&args).unwrap();
        let expected: Flags = flagged()
            .map(|f| (f.key, format!("value of {}", f.key)))
            .collect();
        assert_eq!(cli.global.flags, expected);
        let help = Cli::command().render_long_help().to_string();
        for field in FIELDS {
            assert!(help.contains(&field.env()), "{}", field.key);
            assert!(help.contains(field.help), "{}", field.key);
        }
    }
}
