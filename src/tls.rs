//! Built-in TLS for sites without a reverse proxy: the server's rustls configuration from
//! a PEM certificate chain and private key (`--tls-cert`, `--tls-key`). rustls speaks only
//! TLS 1.2 and 1.3, so nothing older is ever offered. With TLS on, every response carries
//! HSTS and session cookies are `Secure`.

use crate::config::TlsFiles;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// What browsers are told: use HTTPS for this host for a year.
pub const HSTS: &str = "max-age=31536000";

/// Makes ring the process's TLS crypto provider, for every rustls client and server built
/// after it. Idempotent and cheap: [`crate::outbound::builder`] calls it before each client,
/// and so must anything else that builds a `reqwest::Client` (the tests' own clients). An
/// HTTP client built before a provider is installed panics inside reqwest.
pub fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Loads the certificate chain and key and checks that they belong together. Errors say
/// which file is wrong and why.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, String> {
    let cert_path = files.cert.display();
    let key_path = files.key.display();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| format!("cannot read the TLS certificate {cert_path}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the TLS certificate {cert_path} is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "the TLS certificate {cert_path} holds no certificate (expected PEM with -----BEGIN CERTIFICATE-----)"
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!("cannot read a private key from {key_path} (expected a PEM private key): {e}")
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!("the TLS key {key_path} does not fit the certificate {cert_path}: {e}")
        })
}
