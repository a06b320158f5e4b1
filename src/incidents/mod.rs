//! The incident engine and what is built on it: grouping signals into incidents (the
//! rules live in `domain::incident`), the decision timeline, alert delivery and
//! AI-written summaries.

pub mod alerts;
pub mod demo;
pub mod engine;
pub mod summary_llm;
pub mod timeline;

pub use engine::{CallCost, Engine, Input, Listener};
