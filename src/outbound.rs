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
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("agv-server/", env!("CARGO_PKG_VERSION")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[tokio::test]
    async fn a_redirect_is_handed_back_not_followed() {
        let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target_addr = target.local_addr().unwrap();
        target.set_nonblocking(true).unwrap();
        let redirector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = redirector.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in redirector.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = write!(
                    stream,
                    "HTTP/1.1 302 Found\r\nLocation: http://{target_addr}/internal\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        let client = builder().build().unwrap();
        for res in [
            client.get(format!("http://{addr}/")).send().await.unwrap(),
            client
                .post(format!("http://{addr}/"))
                .body("x")
                .send()
                .await
                .unwrap(),
        ] {
            assert_eq!(res.status(), 302);
        }
        assert!(
            target.accept().is_err(),
            "the redirect's target was contacted"
        );
    }
}
