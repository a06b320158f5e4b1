//! The `agv-server` binary: parse the command line and hand over to the library.

use clap::Parser;

fn main() {
    let cli = agv_server::cli::Cli::parse();
    std::process::exit(agv_server::cli::run(cli));
}
