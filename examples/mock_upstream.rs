//! Runs the mock OpenAI upstream (`agv_testkit::upstream`) as a standalone
//! process for benchmarks: no request recording, one actix worker per core by default.
//!
//!     cargo run --release --example mock_upstream -- --listen 127.0.0.1:0 --latency-ms 0
//!
//! Prints its base URL (`http://127.0.0.1:PORT/v1`) alone on the first line of stdout,
//! then serves until the process is killed. Not shipped in the release binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use agv_testkit::upstream::{MockOptions, MockUpstream};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Mock OpenAI upstream for benchmarks (loopback only)")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Fixed latency before every response, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// actix worker threads (default: number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Keep the last N requests in memory (0 = record nothing, the default).
    #[arg(long, default_value_t = 0)]
    record: usize,
}

fn main() {
    let args = Args::parse();
    assert!(
        args.listen.ip().is_loopback(),
        "the mock upstream listens on loopback only"
    );
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let mock = MockUpstream::try_start(MockOptions {
        listen: args.listen,
        workers,
        record_limit: args.record,
        latency: Duration::from_millis(args.latency_ms),
    })
    .expect("start the mock upstream");
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", mock.url()).unwrap();
    out.flush().unwrap();
    drop(out);
    loop {
        std::thread::park();
    }
}
