//! Logging (text or JSON via tracing) and the Prometheus metrics registry.
//!
//! The metrics recorder is process-global (the `metrics` crate's design), so it is
//! installed once and shared by every server in the process — tests start many.

use crate::config::LogFormat;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber. Calling it again is harmless (tests).
///
/// Lines are formatted on the thread that logs and written to stderr by a background
/// thread, so a request never waits on a `write` to a slow terminal, pipe or log file.
/// Nothing is dropped when that thread falls behind (the buffer is not lossy). Keep the
/// returned guard alive until the process is done: dropping it flushes what is queued.
#[must_use = "dropping the guard stops the log writer; hold it until exit"]
pub fn init_logging(format: LogFormat, level: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = EnvFilter::try_new(level)
        .or_else(|_| EnvFilter::try_new("info"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("agv-log-writer")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets in seconds, from 50 µs to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// The process-wide Prometheus handle, installing the recorder on first use. `None` only
/// if another recorder was installed by someone else first.
pub fn prometheus() -> Option<PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => {
                    spawn_upkeep(handle.clone());
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!("metrics recorder not installed: {e}");
                    None
                }
            }
        })
        .clone()
}

/// How often histogram samples are folded into their buckets when `/metrics` is not read.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The recorder keeps every histogram sample until an upkeep folds it into its buckets, and
/// `install_recorder` leaves the upkeep to its caller (the crate's documentation says so).
/// Run only when `/metrics` was read, a server nobody scrapes kept every sample of every
/// call — several per call — for as long as it ran. This thread runs it every 5 s.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("agv-metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the metrics upkeep thread; histograms are folded only when /metrics is read");
    }
}

/// An error's whole story: its own text, then each cause below it that adds something
/// ("error sending request: …: Connection refused"). Many libraries' top-level message
/// leaves out the why, which is what an operator needs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}
