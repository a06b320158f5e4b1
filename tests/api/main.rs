//! HTTP and CLI integration tests: the real server on port 0 with a temp data dir, on
//! SQLite and on Postgres; the real binary for the CLI; a real local OpenAI-speaking
//! upstream for the front door.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod alerts;
mod audit;
mod auth;
mod backtest;
mod backup;
mod certificates;
mod cli;
mod console;
mod durability;
mod enforcement;
mod export;
mod faults;
mod health;
mod hostile;
mod incidents;
mod install;
mod instance;
mod oidc;
mod operator_depth;
mod operator_update;
mod outages;
mod people;
mod proxy;
mod redaction;
mod replay;
mod retention;
mod s3;
mod savings;
mod scaleout;
mod sdk;
mod search;
mod session;
mod startup_errors;
mod streams;
mod tasks;
mod tls;
mod update;
mod upstreams;
mod web;
