//! Test support for agv-server, kept out of the server's own crate: the unit tests,
//! integration tests, examples and benchmarks share this one implementation, and the
//! shipped binary contains none of it.

pub mod upstream;

/// A plain HTTP client for tests (redirects followed, no user agent set), with the TLS
/// crypto provider installed first: reqwest is built without one of its own.
pub fn http_client() -> reqwest::Client {
    http_builder().build().unwrap_or_default()
}

/// [`http_client`]'s builder, for tests that set timeouts or trust roots.
pub fn http_builder() -> reqwest::ClientBuilder {
    install_crypto();
    reqwest::Client::builder()
}

/// Fails the test, showing `text`, unless `text` contains `part`.
#[track_caller]
pub fn assert_contains(text: &str, part: &str) {
    assert!(text.contains(part), "{part:?} is not in: {text}");
}

/// Installs ring as the process's TLS crypto provider, as the server's `tls::install_crypto`
/// does; whichever of the two runs first serves both.
fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
