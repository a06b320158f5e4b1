//! Operations on the whole instance: backups, their verification, restore and upload, call
//! retention, tenant creation, managing people, single sign-on, self-update.
//!
//! Blocking code (files, the store's synchronous API): the CLI calls it directly, the
//! server through `run_blocking`. Errors are strings that say what went wrong and what to
//! do, because every caller shows them to a person.

pub mod backup;
pub mod keys;
pub mod oidc;
pub mod people;
pub mod retention;
pub mod s3;
pub mod scheduled;
pub mod tenants;
pub mod update;
