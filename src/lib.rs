//! agv-server: a self-hosted AI incident console in one binary.
//!
//! `main.rs` only parses the command line; everything else lives in this library so that
//! subcommands and tests call the same code.

pub mod domain;
pub mod jobs;
pub mod store;
