//! agv-server: a self-hosted AI incident console in one binary.
//!
//! `main.rs` only parses the command line; everything else lives in this library so that
//! subcommands and tests call the same code.
//!
//! Layers, top first; each imports only those below it: `cli` and `startup`; `api` (the
//! handlers, over `api::state`); `ops` (backups, updates, and the key, tenant and people
//! services); `evidence`; `proxy`; `incidents` and `jobs`; `guard`; `error`; `store`;
//! `config` (with `telemetry`, `tls` and `outbound`); `domain`.

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
pub mod tls;
pub mod web;
