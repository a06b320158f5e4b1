//! An HTTP load generator for the benchmarks in `bench/`: open loop at a fixed rate, or
//! closed loop at maximum throughput. Loopback targets only; bounded in time and count.
//!
//!     # 1,000 req/s for 10 s on a fixed arrival schedule
//!     loadgen --url http://127.0.0.1:8080/v1/chat/completions --body-file req.json \
//!             --header "Authorization: Bearer agv_..." --rate 1000 --duration 10
//!     # as fast as 64 concurrent connections go, for 10 s
//!     loadgen --url ... --max --concurrency 64 --duration 10
//!
//! Open loop: request i is due at `start + i / rate`. A dedicated pacing thread sleeps
//! until each due time and hands the request to the tokio runtime, and latency is
//! measured from the *due* time, not from when it was actually sent, so a slow server
//! cannot hide its queueing by slowing the generator down (coordinated omission).
//! Closed loop (`--max`): `concurrency` tasks each send the next request as soon as the
//! previous answer is read; latency is measured from the send.
//!
//! A request counts as ok when its status is 2xx and its body was read completely.
//! Prints one JSON object on stdout:
//! `{sent, ok, errors, status_counts, achieved_rps, p50_ms, p90_ms, p99_ms, max_ms, ...}`
//! where `achieved_rps` is completed responses (any status) per second of the measured
//! phase, and the percentiles cover every completed response (transport errors excluded;
//! they are counted under `status_counts["error"]`). Not shipped in the release binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};

const MAX_DURATION_S: f64 = 600.0;
const MAX_RATE: f64 = 200_000.0;
const MAX_CONCURRENCY: usize = 4096;

#[derive(Parser, Debug)]
#[command(about = "Open-loop / max-throughput HTTP load generator (loopback only)")]
struct Args {
    /// Target URL (host must be loopback).
    #[arg(long)]
    url: String,
    /// HTTP method.
    #[arg(long, default_value = "POST")]
    method: String,
    /// Request body.
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// Read the request body from this file.
    #[arg(long)]
    body_file: Option<std::path::PathBuf>,
    /// Extra header "Name: value" (repeatable). Content-Type defaults to application/json
    /// when a body is given.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Requests per second on a fixed arrival schedule (open loop).
    #[arg(long, conflicts_with = "max")]
    rate: Option<f64>,
    /// Closed loop at maximum throughput with --concurrency connections.
    #[arg(long)]
    max: bool,
    /// Concurrent requests in --max mode.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Open loop: most requests in flight at once; when reached the pacer waits (the
    /// wait still counts in the latency, measured from the due time).
    #[arg(long, default_value_t = 10_000)]
    max_in_flight: usize,
    /// Length of the measured phase in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Closed-loop warm-up before the measured phase, in seconds (results discarded).
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// tokio worker threads (default: number of cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// What one request produced: its latency and status (None = transport error).
struct Sample {
    latency: Duration,
    service: Duration,
    status: Option<u16>,
    done_at: Instant,
}

#[derive(Clone)]
struct Target {
    client: reqwest::Client,
    method: reqwest::Method,
    url: reqwest::Url,
    headers: HeaderMap,
    body: Option<Arc<[u8]>>,
}

impl Target {
    /// Sends one request and reads the whole answer; returns the status or None.
    async fn send(&self) -> Option<u16> {
        let mut req = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone());
        if let Some(body) = &self.body {
            req = req.body(body.to_vec());
        }
        let resp = req.send().await.ok()?;
        let status = resp.status().as_u16();
        resp.bytes().await.ok()?;
        Some(status)
    }
}

fn parse_args() -> Result<(Args, Target), String> {
    let args = Args::parse();
    if !(args.duration > 0.0 && args.duration <= MAX_DURATION_S) {
        return Err(format!("--duration must be in (0, {MAX_DURATION_S}]"));
    }
    if !(0.0..=MAX_DURATION_S).contains(&args.warmup) {
        return Err("--warmup out of range".into());
    }
    match (args.rate, args.max) {
        (Some(r), false) if r > 0.0 && r <= MAX_RATE => {}
        (Some(_), false) => return Err(format!("--rate must be in (0, {MAX_RATE}]")),
        (None, true) => {}
        _ => return Err("give exactly one of --rate N or --max".into()),
    }
    if args.concurrency == 0 || args.concurrency > MAX_CONCURRENCY {
        return Err(format!("--concurrency must be in 1..={MAX_CONCURRENCY}"));
    }
    let url = reqwest::Url::parse(&args.url).map_err(|e| format!("--url: {e}"))?;
    let loopback = match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    };
    if !loopback {
        return Err("--url must point at a loopback address".into());
    }
    let method = reqwest::Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|e| format!("--method: {e}"))?;
    let body: Option<Vec<u8>> = match (&args.body, &args.body_file) {
        (Some(b), _) => Some(b.clone().into_bytes()),
        (None, Some(path)) => {
            Some(std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        (None, None) => None,
    };
    let mut headers = HeaderMap::new();
    if body.is_some() {
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("--header {h:?}: expected \"Name: value\""))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|e| e.to_string())?;
        let value = HeaderValue::from_str(value.trim()).map_err(|e| e.to_string())?;
        headers.insert(name, value);
    }
    let pool = if args.max {
        args.concurrency
    } else {
        args.max_in_flight.min(1024)
    };
    let client = agv_testkit::http_builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(pool)
        .timeout(Duration::from_millis(args.timeout_ms))
        .build()
        .map_err(|e| e.to_string())?;
    let target = Target {
        client,
        method,
        url,
        headers,
        body: body.map(Arc::from),
    };
    Ok((args, target))
}

/// Closed loop: `concurrency` tasks until `until`.
async fn closed_loop(target: &Target, concurrency: usize, until: Instant) -> Vec<Sample> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let target = target.clone();
        tasks.spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < until {
                let sent = Instant::now();
                let status = target.send().await;
                let done_at = Instant::now();
                samples.push(Sample {
                    latency: done_at - sent,
                    service: done_at - sent,
                    status,
                    done_at,
                });
            }
            samples
        });
    }
    let mut all = Vec::new();
    while let Some(res) = tasks.join_next().await {
        all.extend(res.unwrap());
    }
    all
}

/// Open loop at `rate` for `duration`, paced by a dedicated OS thread.
fn open_loop(
    rt: &tokio::runtime::Runtime,
    target: &Target,
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
) -> (Instant, Vec<Sample>) {
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let collector = rt.spawn(async move {
        let mut samples = Vec::with_capacity(total as usize);
        while let Some(s) = rx.recv().await {
            samples.push(s);
        }
        samples
    });
    let handle = rt.handle().clone();
    let semaphore = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let start = Instant::now() + Duration::from_millis(20);
    let pacer = {
        let target = target.clone();
        std::thread::spawn(move || {
            precise_sleeps();
            for i in 0..total {
                let due = start + interval.mul_f64(i as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let permit = match Arc::clone(&semaphore).try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => handle
                        .block_on(Arc::clone(&semaphore).acquire_owned())
                        .unwrap(),
                };
                let target = target.clone();
                let tx = tx.clone();
                handle.spawn(async move {
                    let sent = Instant::now();
                    let status = target.send().await;
                    let done_at = Instant::now();
                    drop(permit);
                    let _ = tx.send(Sample {
                        latency: done_at.saturating_duration_since(due),
                        service: done_at - sent,
                        status,
                        done_at,
                    });
                });
            }
        })
    };
    pacer.join().unwrap();
    let samples = rt.block_on(collector).unwrap();
    (start, samples)
}

/// Linux lets a sleeping thread wake up to 50 µs late by default (its timer slack), to
/// batch timer interrupts; the pacer asks for its due times to the nanosecond, so that
/// the generator's own lateness does not count as the server's latency.
fn precise_sleeps() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and changes only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn main() {
    let (args, target) = match parse_args() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    let duration = Duration::from_secs_f64(args.duration);

    if args.warmup > 0.0 {
        let until = Instant::now() + Duration::from_secs_f64(args.warmup);
        let conc = if args.max { args.concurrency } else { 16 };
        rt.block_on(closed_loop(&target, conc, until));
    }

    let (start, samples) = match args.rate {
        Some(rate) => open_loop(&rt, &target, rate, duration, args.max_in_flight),
        None => {
            let start = Instant::now();
            let samples = rt.block_on(closed_loop(&target, args.concurrency, start + duration));
            (start, samples)
        }
    };

    let mut status_counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut latencies = Vec::with_capacity(samples.len());
    let mut service = Vec::with_capacity(samples.len());
    let mut ok = 0u64;
    let mut last_done = start;
    for s in &samples {
        let key = s
            .status
            .map_or_else(|| "error".to_owned(), |c| c.to_string());
        *status_counts.entry(key).or_default() += 1;
        if let Some(code) = s.status {
            if (200..300).contains(&code) {
                ok += 1;
            }
            latencies.push(s.latency);
            service.push(s.service);
            last_done = last_done.max(s.done_at);
        }
    }
    latencies.sort_unstable();
    service.sort_unstable();
    let completed = latencies.len() as f64;
    let elapsed = last_done.saturating_duration_since(start).as_secs_f64();
    let achieved_rps = if elapsed > 0.0 {
        completed / elapsed
    } else {
        0.0
    };
    let sent = samples.len() as u64;
    let mean = if latencies.is_empty() {
        0.0
    } else {
        latencies.iter().map(Duration::as_secs_f64).sum::<f64>() / completed * 1000.0
    };
    let report = json!({
        "mode": if args.max { "max" } else { "rate" },
        "rate": args.rate,
        "concurrency": if args.max { Some(args.concurrency) } else { None },
        "duration_s": args.duration,
        "sent": sent,
        "ok": ok,
        "errors": sent - ok,
        "status_counts": status_counts,
        "achieved_rps": round3(achieved_rps),
        "mean_ms": round3(mean),
        "p50_ms": round3(percentile(&latencies, 0.50)),
        "p90_ms": round3(percentile(&latencies, 0.90)),
        "p99_ms": round3(percentile(&latencies, 0.99)),
        "max_ms": round3(latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)),
        "service_p50_ms": round3(percentile(&service, 0.50)),
        "service_p99_ms": round3(percentile(&service, 0.99)),
    });
    println!("{report}");
}
