//! Test support shipped inside the library so that integration tests, examples and
//! benchmarks share one implementation.
//!
//! Nothing here is used by the server itself; it must never be wired into `startup` or
//! any request path.

pub mod upstream;

/// A plain HTTP client for tests (redirects followed, no user agent set), with the TLS
/// crypto provider installed first: reqwest is built without one of its own.
pub fn http_client() -> reqwest::Client {
    http_builder().build().unwrap_or_default()
}

/// [`http_client`]'s builder, for tests that set timeouts or trust roots.
pub fn http_builder() -> reqwest::ClientBuilder {
    crate::tls::install_crypto();
    reqwest::Client::builder()
}

/// Fails the test, showing `text`, unless `text` contains `part`.
#[track_caller]
pub fn assert_contains(text: &str, part: &str) {
    assert!(text.contains(part), "{part:?} is not in: {text}");
}
