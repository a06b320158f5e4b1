//! Test support shipped inside the library so that integration tests, examples and
//! benchmarks share one implementation.
//!
//! Nothing here is used by the server itself; it must never be wired into `startup` or
//! any request path.

pub mod upstream;
