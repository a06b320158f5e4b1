//! HTTP handlers only: extract, parse into domain types, call a service, map the error.
//!
//! No SQL and no business rules live here. Errors leave through [`error::ApiError`],
//! the one place that maps failures to status codes and OpenAI-shaped bodies.

pub mod access;
pub mod alerts;
pub mod audit;
pub mod audit_log;
pub mod auth;
pub mod call_list;
pub mod console;
pub mod error;
pub mod evidence;
pub mod export;
pub mod health;
pub mod incidents;
pub mod instance;
pub mod key_cache;
pub mod limits;
pub mod middleware;
pub mod names;
pub mod openai;
pub mod operator;
pub mod people;
pub mod session;
pub mod state;
pub mod tasks;
pub mod v1;

pub use error::ApiError;
