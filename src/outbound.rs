//! The one way agv-server builds an HTTP client for talking to other hosts: the upstream
//! LLM, webhooks, S3, the update source, the console's own LLM. Every such client starts
//! from [`builder`], which never follows redirects: an address that was checked (an
//! allowlisted upstream, a webhook that passed the SSRF rules, the configured S3 endpoint)
//! must not be able to send the request, with its credentials, on to another address. A
//! 3xx is handed to the caller as it came, and each caller treats it as a failure.
//!
//! Callers add their own timeouts and pools; this module only fixes what must hold for all.

/// A client builder that never follows redirects and names agv-server as its user agent.
pub fn builder() -> reqwest::ClientBuilder {
    crate::tls::install_crypto();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("agv-server/", env!("CARGO_PKG_VERSION")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_redirect_is_handed_back_not_followed() {
        let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        target.set_nonblocking(true).unwrap();
        let to = format!("http://{}", target.local_addr().unwrap());
        let base = agv_testkit::upstream::redirector(to).unwrap();
        let client = builder().build().unwrap();
        let get = client.get(format!("{base}/models")).send().await.unwrap();
        let post = client.post(format!("{base}/chat")).body("x").send().await;
        for res in [get, post.unwrap()] {
            assert_eq!(res.status(), 302);
        }
        assert!(
            target.accept().is_err(),
            "the redirect's target was contacted"
        );
    }
}
