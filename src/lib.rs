//! agv-server: a self-hosted AI incident console in one binary.
//!
//! `main.rs` only parses the command line; everything else lives in this library so that
//! subcommands and tests call the same code.

pub mod api;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod evidence;
pub mod guard;
pub mod incidents;
pub mod jobs;
pub mod ops;
pub mod outbound;
pub mod proxy;
pub mod startup;
pub mod store;
pub mod telemetry;
#[doc(hidden)]
pub mod testing;
pub mod tls;
pub mod web;
