//! The `agv-server` binary: parse the command line and hand over to the library.

use clap::Parser;

// The proxy allocates and frees many short-lived buffers on several threads; mimalloc
// handles that pattern with less contention and fragmentation than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = agv_server::cli::Cli::parse();
    std::process::exit(agv_server::cli::run(cli));
}
