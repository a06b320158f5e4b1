//! A byte relay for benchmarks: the least any proxy can add. Every accepted connection gets
//! its own connection to the target, and bytes are copied both ways as they come, with no
//! parsing, no checks and no recording.
//!
//!     cargo run --release --example relay -- --listen 127.0.0.1:0 --target 127.0.0.1:PORT
//!
//! Prints its address (`127.0.0.1:PORT`) alone on the first line of stdout, then relays
//! until the process is killed. `bench/proxy.py --relay` puts it in front of the mock
//! upstream to show the cost of the extra loopback hop alone. Not shipped in the release
//! binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::SocketAddr;

use clap::Parser;
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
#[command(about = "Byte relay for benchmarks (loopback only)")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to relay every connection.
    #[arg(long)]
    target: SocketAddr,
    /// Runtime worker threads (default: number of cores).
    #[arg(long)]
    workers: Option<usize>,
}

fn main() {
    let args = Args::parse();
    assert!(
        args.listen.ip().is_loopback() && args.target.ip().is_loopback(),
        "the relay works on loopback only"
    );
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("start the runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(args.listen).await.expect("bind");
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", listener.local_addr().unwrap()).unwrap();
        out.flush().unwrap();
        drop(out);
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            let target = args.target;
            tokio::spawn(async move {
                let Ok(mut upstream) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
}
