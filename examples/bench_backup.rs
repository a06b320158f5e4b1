//! Online backup and restore of a large SQLite database: how long `agv-server backup`'s
//! work takes, how long a writer waits while it runs, and how long the restore (into a new
//! database, with every row count and hash chain checked) takes.
//!
//! `cargo run --release --example bench_backup -- [--mb 1024] [--data DIR] [--keep]`
//!
//! The database is filled with realistic calls (`agv-server demo`'s generator, bodies
//! padded to about 2 KB) until its file reaches `--mb` megabytes; an existing `--data`
//! directory is reused (and topped up). Baselines in the same run: the writer's latency
//! without a backup running, and a plain file copy of the database.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use agv_server::domain::{KeyId, NewApiKey, Scope, Tenant, TenantId, TenantName, Timestamp};
use agv_server::incidents::demo::CallStream;
use agv_server::store::{DynRecording, DynStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const WORDS: &[&str] = &[
    "invoice", "refund", "shipping", "delayed", "customer", "account", "password", "reset",
    "order", "warranty", "return", "label", "address", "update", "billing", "cycle", "premium",
    "support", "ticket", "escalate", "manager", "policy", "coverage", "claim", "status",
];

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The database file's size (the WAL is folded in by the fill's checkpoints).
fn db_mb(dir: &Path) -> f64 {
    std::fs::metadata(dir.join("agv.db")).map_or(0.0, |m| m.len() as f64 / 1e6)
}

fn pad(text: &mut String, seed: u64, len: usize) {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    while text.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        text.push(' ');
        text.push_str(WORDS[(x >> 33) as usize % WORDS.len()]);
        text.push_str(&((x >> 20) % 10_000).to_string());
    }
}

fn fill(store: &DynStore, dir: &Path, target_mb: f64) -> (TenantId, KeyId) {
    let tenants = store.list_tenants().expect("tenants");
    let (tenant, key) = if let Some(t) = tenants.first() {
        let k = store.list_api_keys(&t.id).expect("keys")[0].id.clone();
        (t.id.clone(), k)
    } else {
        let t = Tenant {
            id: TenantId::generate(),
            name: TenantName::parse("Bench").expect("name"),
            created_at: Timestamp::now(),
        };
        store.create_tenant(&t).expect("tenant");
        let (k, _) = NewApiKey::generate(t.id.clone(), "bench", Scope::Proxy, None).expect("key");
        store.create_api_key(&k).expect("key");
        (t.id, k.id)
    };
    let mut seed = 1u64;
    let started = Instant::now();
    while db_mb(dir) < target_mb {
        let batch: Vec<_> = CallStream::new(
            tenant.clone(),
            vec![key.clone()],
            5_000,
            Timestamp::now(),
            3_600_000,
            seed,
        )
        .map(|mut c| {
            pad(
                &mut c.request_body,
                seed ^ c.created_at.millis() as u64,
                1_200,
            );
            c
        })
        .collect();
        seed += 1;
        store.insert_calls(&batch).expect("insert");
        if seed.is_multiple_of(10) {
            store.checkpoint().expect("checkpoint");
        }
        eprint!(
            "\rfilling: {:.0} of {target_mb:.0} MB ({:.0} s)   ",
            db_mb(dir),
            started.elapsed().as_secs_f64()
        );
    }
    eprintln!();
    // Bring the text index up to date first: after a bulk fill its catch-up is heavy
    // background I/O of its own, which is not what this measures (the backup's effect on a
    // writer is).
    let indexing = Instant::now();
    let indexed = store.index_pending_calls().expect("index");
    eprintln!(
        "text index caught up: {indexed} calls in {:.1} s",
        indexing.elapsed().as_secs_f64()
    );
    store.checkpoint().expect("checkpoint");
    // Let the disk settle: the writer's baseline should measure the writer, not the
    // write-back of the data just made.
    #[cfg(unix)]
    unsafe {
        libc::sync();
    }
    std::thread::sleep(Duration::from_secs(10));
    (tenant, key)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

/// Inserts one call every 5 ms until told to stop, with the recorder's upkeep between
/// commits; returns each insert's latency in ms.
fn writer(store: DynRecording, tenant: TenantId, key: KeyId, stop: Arc<AtomicBool>) -> Vec<f64> {
    let mut lat = Vec::new();
    let mut seed = 1_000_000u64;
    while !stop.load(Ordering::Relaxed) {
        let call: Vec<_> = CallStream::new(
            tenant.clone(),
            vec![key.clone()],
            1,
            Timestamp::now(),
            1,
            seed,
        )
        .collect();
        seed += 1;
        let t = Instant::now();
        store.insert(&call).expect("insert during the benchmark");
        // As the server's recorder does after each commit (a WAL checkpoint finish every
        // 2 s); counted in this writer's latency.
        store.between_commits();
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(5));
    }
    lat
}

fn summary(mut v: Vec<f64>) -> (f64, f64, f64, usize) {
    v.sort_by(f64::total_cmp);
    (
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v.last().copied().unwrap_or(0.0),
        v.len(),
    )
}

fn main() {
    let target_mb: f64 = arg("--mb").and_then(|v| v.parse().ok()).unwrap_or(1024.0);
    let keep = std::env::args().any(|a| a == "--keep");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = arg("--data").map_or_else(|| tmp.path().to_owned(), PathBuf::from);
    std::fs::create_dir_all(&dir).expect("data dir");
    let agv_server::store::Opened { store, recording } =
        agv_server::store::open_recording(&dir, None, None).expect("store");
    let (tenant, key) = fill(&store, &dir, target_mb);
    let size = db_mb(&dir);
    let calls: i64 = store
        .table_counts()
        .expect("counts")
        .iter()
        .find(|(t, _)| t == "calls")
        .map_or(0, |(_, n)| *n);
    let signing = agv_server::domain::certificate::CertSigningKey::generate();
    let out = dir.join("bench-backups");

    // Baseline: a plain copy of the database file.
    let t = Instant::now();
    std::fs::copy(dir.join("agv.db"), dir.join("copy.db")).expect("copy");
    let copy_s = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(dir.join("copy.db"));

    // Baseline: the writer alone for 5 s.
    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let (s, t, k, st) = (recording.clone(), tenant.clone(), key.clone(), stop.clone());
        std::thread::spawn(move || writer(s, t, k, st))
    };
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    let alone = summary(w.join().expect("writer"));

    // The backup, with the writer going on.
    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let (s, t, k, st) = (recording.clone(), tenant.clone(), key.clone(), stop.clone());
        std::thread::spawn(move || writer(s, t, k, st))
    };
    let t = Instant::now();
    let done =
        agv_server::ops::backup::create(&store, None, &dir, &out, &signing, None, &mut |_, _| {})
            .expect("backup");
    let backup_s = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let during = summary(w.join().expect("writer"));

    // Restore into a new database, with every count and chain checked.
    let t = Instant::now();
    agv_server::ops::backup::verify(&done.path, Some(signing.public()), &mut |_, _| {})
        .expect("restore");
    let restore_s = t.elapsed().as_secs_f64();

    println!("database: {size:.0} MB, {calls} calls");
    println!(
        "backup: {backup_s:.1} s ({:.0} MB/s of database), file {:.0} MB; a plain file copy took {copy_s:.1} s (backup/copy {:.1}x); target < 30 s for 1 GB",
        size / backup_s,
        done.bytes as f64 / 1e6,
        backup_s / copy_s.max(1e-9)
    );
    println!(
        "writer (one insert every 5 ms): alone p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms ({} inserts); during the backup p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms ({} inserts); longest stall {:.1}x the baseline's; target max < 100 ms",
        alone.0,
        alone.1,
        alone.2,
        alone.3,
        during.0,
        during.1,
        during.2,
        during.3,
        during.2 / alone.2.max(1e-9)
    );
    println!(
        "restore into a new database with every row count and hash chain checked: {restore_s:.1} s"
    );
    if keep {
        println!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&out);
    }
}
