//! Tenant-chosen upstream base URLs and the operator's allowlist that guards them.
//!
//! A tenant may point its calls at its own OpenAI-compatible upstream only when the URL
//! falls under a prefix the operator allowlisted (`AGV_TENANT_UPSTREAM_ALLOWLIST`). This
//! allowlist is the SSRF guard: nothing outside it (cloud metadata addresses, localhost,
//! internal hosts) can be reached through a tenant's setting. Matching compares scheme,
//! host and port exactly and the path as a prefix on a `/` boundary, so
//! `https://api.openai.com.evil.com` never matches `https://api.openai.com`.
//! Pure: parsing and comparison only, no DNS and no I/O.

use reqwest::Url;
use std::fmt;

/// A parsed, normalized `http(s)` base URL without userinfo, query or fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    url: Url,
    normalized: String,
}

impl BaseUrl {
    /// Parses and normalizes (lower-case host, default port dropped, no trailing slash).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let url = Url::parse(text).map_err(|e| {
            format!("'{text}' is not a valid URL ({e}); expected e.g. https://api.openai.com/v1")
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "'{text}' uses the scheme '{}'; only http:// and https:// upstreams are allowed",
                url.scheme()
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "the URL must not contain a user name or password (user@host); send the credential as api_key instead"
                    .to_owned(),
            );
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("'{text}' has no host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "'{text}' has a query or fragment; give a base URL such as https://api.openai.com/v1"
            ));
        }
        let normalized = url.as_str().trim_end_matches('/').to_owned();
        Ok(Self { url, normalized })
    }

    pub fn as_str(&self) -> &str {
        &self.normalized
    }

    /// True when `self` lies under `prefix`: same scheme, host and port, and the path equal
    /// to the prefix's path or continuing it after a `/`.
    pub fn is_under(&self, prefix: &BaseUrl) -> bool {
        let (a, b) = (&self.url, &prefix.url);
        if a.scheme() != b.scheme()
            || a.host_str() != b.host_str()
            || a.port_or_known_default() != b.port_or_known_default()
        {
            return false;
        }
        let path = a.path().trim_end_matches('/');
        let base = b.path().trim_end_matches('/');
        base.is_empty()
            || path == base
            || path
                .strip_prefix(base)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.normalized)
    }
}

/// The longest provider API key accepted.
pub const MAX_PROVIDER_KEY_LEN: usize = 4096;

/// A provider's API key as a person typed it: trimmed, then 1 to
/// [`MAX_PROVIDER_KEY_LEN`] visible ASCII characters (it goes into a header as it is).
pub fn provider_key(raw: &str) -> Result<String, String> {
    let k = raw.trim();
    if k.is_empty() || k.len() > MAX_PROVIDER_KEY_LEN || !k.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "api_key must be 1 to {MAX_PROVIDER_KEY_LEN} visible ASCII characters without spaces"
        ));
    }
    Ok(k.to_owned())
}

/// The operator's list of base-URL prefixes tenants may use; empty means none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamAllowlist(Vec<BaseUrl>);

impl UpstreamAllowlist {
    /// Parses a comma-separated list of base URLs (blank entries are skipped).
    pub fn parse(text: &str) -> Result<Self, String> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| BaseUrl::parse(s).map_err(|e| format!("allowlist entry {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses a tenant's URL and accepts it only under an allowlisted prefix.
    pub fn check(&self, text: &str) -> Result<BaseUrl, String> {
        if self.is_empty() {
            return Err("tenants may not set their own upstream on this server: the operator has not allowlisted any (AGV_TENANT_UPSTREAM_ALLOWLIST is empty)".into());
        }
        let url = BaseUrl::parse(text)?;
        if self.0.iter().any(|p| url.is_under(p)) {
            Ok(url)
        } else {
            Err(format!(
                "'{url}' is not under an allowlisted upstream; allowed prefixes (AGV_TENANT_UPSTREAM_ALLOWLIST): {self}"
            ))
        }
    }
}

impl fmt::Display for UpstreamAllowlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<&str> = self.0.iter().map(BaseUrl::as_str).collect();
        f.write_str(&list.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_key_is_trimmed_and_must_be_visible_ascii() {
        assert_eq!(provider_key("  sk-abc ").unwrap(), "sk-abc");
        for bad in ["", "   ", "sk abc", "sk-\u{e9}", "sk-\n1"] {
            assert!(provider_key(bad).is_err(), "{bad:?}");
        }
        assert!(provider_key(&"k".repeat(MAX_PROVIDER_KEY_LEN)).is_ok());
        assert!(provider_key(&"k".repeat(MAX_PROVIDER_KEY_LEN + 1)).is_err());
    }

    fn list() -> UpstreamAllowlist {
        UpstreamAllowlist::parse("https://api.openai.com/v1, https://myco.openai.azure.com/")
            .unwrap()
    }

    #[test]
    fn urls_under_an_allowlisted_prefix_are_accepted_and_normalized() {
        let l = list();
        assert_eq!(
            l.check("https://API.openai.com:443/v1/").unwrap().as_str(),
            "https://api.openai.com/v1"
        );
        assert_eq!(
            l.check("https://api.openai.com/v1/deployments/x")
                .unwrap()
                .as_str(),
            "https://api.openai.com/v1/deployments/x"
        );
        assert!(l.check("https://myco.openai.azure.com/openai").is_ok());
    }

    #[test]
    fn lookalike_hosts_paths_ports_and_schemes_are_refused() {
        let l = list();
        for bad in [
            "https://api.openai.com.evil.com/v1",
            "https://api.openai.com/v10",
            "https://api.openai.com/",
            "http://api.openai.com/v1",
            "https://api.openai.com:8443/v1",
            "https://api.openai.com@evil.com/v1",
            "https://user:pw@api.openai.com/v1",
            "ftp://api.openai.com/v1",
            "http://169.254.169.254/latest",
            "http://localhost:8080/v1",
            "https://api.openai.com/v1/../../admin",
            "https://api.openai.com/v1?x=1",
            "not a url",
        ] {
            assert!(l.check(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn an_empty_allowlist_refuses_everything_and_says_why() {
        let l = UpstreamAllowlist::parse(" , ").unwrap();
        assert!(l.is_empty());
        let err = l.check("https://api.openai.com/v1").unwrap_err();
        assert!(err.contains("AGV_TENANT_UPSTREAM_ALLOWLIST"), "{err}");
    }

    #[test]
    fn a_refusal_names_the_allowlist() {
        let err = list().check("https://evil.example/v1").unwrap_err();
        assert!(err.contains("https://api.openai.com/v1"), "{err}");
    }

    #[test]
    fn bad_allowlist_entries_are_rejected() {
        assert!(UpstreamAllowlist::parse("ftp://x").is_err());
        assert!(UpstreamAllowlist::parse("https://u:p@x").is_err());
    }
}
