//! HTTP handlers only: extract, parse into domain types, call a service, map the error.
//!
//! No SQL and no business rules live here. Errors leave as [`crate::error::ApiError`],
//! whose one table of codes fixes each status and OpenAI type; [`error`] turns it into a
//! response. Files of this layer import each other in layers too: `error`, `names`,
//! `page`, `key_cache`, `limits` and `state` at the bottom; then `session`, `audit`, `access`,
//! `auth` and `middleware`; the handlers on top.

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
pub mod oidc;
pub mod openai;
pub mod operator;
pub mod page;
pub mod people;
pub mod session;
pub mod state;
pub mod tasks;
pub mod v1;

pub use error::ApiError;
