//! OpenID Connect sign-in, the parts without I/O: PKCE, the checks of an ID token
//! (signature against the provider's JWKS, issuer, audience, lifetime, nonce), and the
//! rules that turn the provider's claims into a person here (email, allowed domains, the
//! role given by groups).
//!
//! Signatures are checked with `ring` (already the TLS provider of the binary): RS256
//! (`RSA_PKCS1_2048_8192_SHA256`) and ES256 (`ECDSA_P256_SHA256_FIXED`). Every other
//! algorithm — `none` and the HMAC ones above all — is refused, so a token can never choose
//! to be checked more weakly. Fetching discovery documents, keys and tokens is
//! `ops::oidc`'s job.

use super::user::{Email, Role};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Clock difference tolerated between agv-server and the provider, in seconds.
pub const LEEWAY_SECS: i64 = 120;

/// 32 random bytes, base64url: for `state`, `nonce` and the PKCE verifier (43 characters,
/// within the 43 to 128 that RFC 7636 asks of a verifier).
pub fn random_token() -> String {
    let mut raw = [0u8; 32];
    rand::fill(&mut raw);
    URL_SAFE_NO_PAD.encode(raw)
}

/// The PKCE `code_challenge` of `verifier` for the method S256.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A provider's signing keys (`jwks_uri`). Keys of kinds agv-server does not use are kept
/// out; an empty set is allowed (every token then fails with [`TokenError::UnknownKey`]).
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Debug, Clone)]
struct Jwk {
    kid: Option<String>,
    key: PublicKey,
}

#[derive(Debug, Clone)]
enum PublicKey {
    /// Modulus and exponent, big-endian, without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The uncompressed point `04 || x || y` of a P-256 key.
    P256(Vec<u8>),
}

#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

impl Jwks {
    /// Parses a JWK Set document; `Err` says what is wrong with it.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Set {
            keys: Vec<Value>,
        }
        let set: Set = serde_json::from_slice(body)
            .map_err(|e| format!("the provider's JWKS is not a JWK Set ({e})"))?;
        let keys = set
            .keys
            .into_iter()
            .filter_map(|v| serde_json::from_value::<RawJwk>(v).ok())
            .filter(|k| k.use_.as_deref().is_none_or(|u| u == "sig"))
            .filter_map(|k| {
                let key = match (k.kty.as_deref(), k.crv.as_deref()) {
                    (Some("RSA"), _) => PublicKey::Rsa {
                        n: strip_zeros(b64(k.n.as_deref()?)?),
                        e: strip_zeros(b64(k.e.as_deref()?)?),
                    },
                    (Some("EC"), Some("P-256")) => {
                        let (x, y) = (b64(k.x.as_deref()?)?, b64(k.y.as_deref()?)?);
                        if x.len() != 32 || y.len() != 32 {
                            return None;
                        }
                        let mut point = vec![4u8];
                        point.extend(x);
                        point.extend(y);
                        PublicKey::P256(point)
                    }
                    _ => return None,
                };
                Some(Jwk { kid: k.kid, key })
            })
            .collect();
        Ok(Self { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn b64(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

/// What an ID token must say to be accepted for one sign-in.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The `issuer` of the provider's discovery document, exactly.
    pub issuer: &'a str,
    pub client_id: &'a str,
    /// The nonce sent with this sign-in's authorization request.
    pub nonce: &'a str,
    /// Now, in seconds since the Unix epoch.
    pub now: i64,
}

/// Why an ID token was refused; each message says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the ID token is not a signed JWT")]
    Malformed,
    #[error(
        "the ID token is signed with {0}; agv-server accepts RS256 and ES256 (set the client's ID token signature algorithm at the provider)"
    )]
    Algorithm(String),
    #[error("none of the provider's published keys (JWKS) can check the ID token (key id {0})")]
    UnknownKey(String),
    #[error("the ID token's signature does not verify against the provider's published keys")]
    BadSignature,
    #[error("the ID token was issued by {got}, not by the configured issuer {want}")]
    Issuer { got: String, want: String },
    #[error("the ID token was issued to another client (its audience does not name {0})")]
    Audience(String),
    #[error(
        "the ID token has expired (check that the clocks of agv-server and the provider agree)"
    )]
    Expired,
    #[error(
        "the ID token is not valid yet (issued in the future: check that the clocks of agv-server and the provider agree)"
    )]
    NotYetValid,
    #[error("the ID token's nonce does not belong to this sign-in")]
    Nonce,
    #[error("the ID token has no {0} claim")]
    Missing(&'static str),
}

/// The claims of an accepted ID token (or of the userinfo answer merged into them).
#[derive(Debug, Clone, PartialEq)]
pub struct Claims(Map<String, Value>);

impl Claims {
    pub fn new(map: Map<String, Value>) -> Self {
        Self(map)
    }

    pub fn subject(&self) -> Option<&str> {
        self.0.get("sub").and_then(Value::as_str)
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// Adds the claims of `more` (the userinfo answer) this one lacks.
    pub fn fill_from(&mut self, more: &Map<String, Value>) {
        for (k, v) in more {
            if !self.0.contains_key(k) {
                self.0.insert(k.clone(), v.clone());
            }
        }
    }

    /// The `email` claim, parsed; `Ok(None)` when the provider sent none.
    pub fn email(&self) -> Result<Option<Email>, String> {
        match self.0.get("email") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Email::parse(s)
                .map(Some)
                .map_err(|e| format!("the identity provider's email claim: {e}")),
            Some(_) => Err("the identity provider's email claim is not a text".into()),
        }
    }

    /// `email_verified` as the provider said it (some send `"true"`/`"false"` as text);
    /// `None` when it said nothing.
    pub fn email_verified(&self) -> Option<bool> {
        match self.0.get("email_verified")? {
            Value::Bool(b) => Some(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
            _ => None,
        }
    }

    /// The groups in the claim `name`: a list of texts, or one text.
    pub fn groups(&self, name: &str) -> Vec<String> {
        match self.0.get(name) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
            _ => Vec::new(),
        }
    }
}

/// Checks `token` (a compact JWS) against the provider's `keys` and what this sign-in
/// expects, and returns its claims.
pub fn verify_id_token(token: &str, keys: &Jwks, want: &Expected) -> Result<Claims, TokenError> {
    let mut parts = token.trim().split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header: Map<String, Value> = b64(header_b64)
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or(TokenError::Malformed)?;
    let signature = b64(sig_b64).ok_or(TokenError::Malformed)?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("none");
    let kid = header.get("kid").and_then(Value::as_str);
    let signed = format!("{header_b64}.{payload_b64}");
    let candidates: Vec<&Jwk> = keys
        .keys
        .iter()
        .filter(|k| match alg {
            "RS256" => matches!(k.key, PublicKey::Rsa { .. }),
            "ES256" => matches!(k.key, PublicKey::P256(_)),
            _ => false,
        })
        .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
        .collect();
    if !matches!(alg, "RS256" | "ES256") {
        return Err(TokenError::Algorithm(alg.to_owned()));
    }
    if candidates.is_empty() {
        return Err(TokenError::UnknownKey(kid.unwrap_or("(none)").to_owned()));
    }
    let verified = candidates.iter().any(|k| match &k.key {
        PublicKey::Rsa { n, e } => signature::RsaPublicKeyComponents {
            n: n.as_slice(),
            e: e.as_slice(),
        }
        .verify(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            signed.as_bytes(),
            &signature,
        )
        .is_ok(),
        PublicKey::P256(point) => {
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(signed.as_bytes(), &signature)
                .is_ok()
        }
    });
    if !verified {
        return Err(TokenError::BadSignature);
    }
    let claims: Map<String, Value> = b64(payload_b64)
        .and_then(|p| serde_json::from_slice(&p).ok())
        .ok_or(TokenError::Malformed)?;
    check_claims(&claims, want)?;
    Ok(Claims(claims))
}

fn check_claims(claims: &Map<String, Value>, want: &Expected) -> Result<(), TokenError> {
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let number = |name: &str| claims.get(name).and_then(Value::as_f64).map(|n| n as i64);
    let iss = text("iss").ok_or(TokenError::Missing("iss"))?;
    if iss != want.issuer {
        return Err(TokenError::Issuer {
            got: iss.to_owned(),
            want: want.issuer.to_owned(),
        });
    }
    if text("sub").is_none_or(str::is_empty) {
        return Err(TokenError::Missing("sub"));
    }
    let for_us = match claims.get("aud") {
        Some(Value::String(a)) => a == want.client_id,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(want.client_id)),
        _ => return Err(TokenError::Missing("aud")),
    };
    // A token for several audiences names the one it was issued to in azp.
    if !for_us || text("azp").is_some_and(|azp| azp != want.client_id) {
        return Err(TokenError::Audience(want.client_id.to_owned()));
    }
    let exp = number("exp").ok_or(TokenError::Missing("exp"))?;
    if want.now > exp.saturating_add(LEEWAY_SECS) {
        return Err(TokenError::Expired);
    }
    let iat = number("iat").ok_or(TokenError::Missing("iat"))?;
    let not_before = number("nbf").unwrap_or(iat).max(iat);
    if not_before > want.now.saturating_add(LEEWAY_SECS) {
        return Err(TokenError::NotYetValid);
    }
    if text("nonce") != Some(want.nonce) {
        return Err(TokenError::Nonce);
    }
    Ok(())
}

/// Whether `email` may sign in: `allowed` (lower-case domains) is empty, or holds its
/// domain exactly (a subdomain is another domain).
pub fn domain_allowed(email: &Email, allowed: &[String]) -> bool {
    let domain = email.as_str().rsplit_once('@').map_or("", |(_, d)| d);
    allowed.is_empty() || allowed.iter().any(|a| a == domain)
}

/// The role of a person made by a first sign-in: the strongest role any of their `groups`
/// maps to, else `default`.
pub fn role_for(groups: &[String], mapping: &[(String, Role)], default: Role) -> Role {
    let rank = |r: Role| match r {
        Role::Operator => 3,
        Role::Owner => 2,
        Role::Admin => 1,
        Role::Viewer => 0,
    };
    mapping
        .iter()
        .filter(|(group, _)| groups.iter().any(|g| g == group))
        .map(|(_, role)| *role)
        .max_by_key(|r| rank(*r))
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair};
    use serde_json::json;

    /// A 2048-bit RSA key (PKCS#8) made for these tests only.
    const RSA_PKCS8: &str = include_str!("testdata/oidc-test-rsa.pk8.b64");

    fn rsa_key() -> RsaKeyPair {
        let der = base64::engine::general_purpose::STANDARD
            .decode(RSA_PKCS8.split_whitespace().collect::<String>())
            .unwrap();
        RsaKeyPair::from_pkcs8(&der).unwrap()
    }

    fn rsa_jwk(key: &RsaKeyPair, kid: &str) -> Value {
        let c: signature::RsaPublicKeyComponents<Vec<u8>> = key.public().into();
        json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
               "n": URL_SAFE_NO_PAD.encode(&c.n), "e": URL_SAFE_NO_PAD.encode(&c.e)})
    }

    fn jwt(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let p = URL_SAFE_NO_PAD.encode(claims.to_string());
        let sig = sign(format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn rs256(key: &RsaKeyPair, kid: &str, claims: &Value) -> String {
        jwt(&json!({"alg": "RS256", "kid": kid}), claims, |msg| {
            let mut sig = vec![0; key.public().modulus_len()];
            key.sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                msg,
                &mut sig,
            )
            .unwrap();
            sig
        })
    }

    const NOW: i64 = 1_800_000_000;
    const ISSUER: &str = "https://id.example.com";

    fn claims() -> Value {
        json!({"iss": ISSUER, "sub": "u-1", "aud": "agv", "exp": NOW + 300, "iat": NOW - 5,
               "nonce": "n-1", "email": "Ada@Example.com", "email_verified": true,
               "groups": ["agv-admins", "staff"]})
    }

    fn want() -> Expected<'static> {
        Expected {
            issuer: ISSUER,
            client_id: "agv",
            nonce: "n-1",
            now: NOW,
        }
    }

    fn keys(list: Vec<Value>) -> Jwks {
        Jwks::parse(json!({ "keys": list }).to_string().as_bytes()).unwrap()
    }

    /// `claims` signed with RS256 by key `k1`, checked against that key and [`want`].
    fn signed_and_checked(claims: &Value) -> Result<Claims, TokenError> {
        let key = rsa_key();
        let jwks = keys(vec![rsa_jwk(&key, "k1")]);
        verify_id_token(&rs256(&key, "k1", claims), &jwks, &want())
    }

    #[test]
    fn a_good_rs256_token_gives_its_claims() {
        let c = signed_and_checked(&claims()).unwrap();
        assert_eq!(c.subject(), Some("u-1"));
        assert_eq!(c.email().unwrap().unwrap().as_str(), "ada@example.com");
        assert_eq!(c.email_verified(), Some(true));
        assert_eq!(c.groups("groups"), vec!["agv-admins", "staff"]);
    }

    #[test]
    fn a_good_es256_token_gives_its_claims() {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let point = key.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "e1",
                         "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                         "y": URL_SAFE_NO_PAD.encode(&point[33..])});
        let token = jwt(&json!({"alg": "ES256", "kid": "e1"}), &claims(), |msg| {
            key.sign(&rng, msg).unwrap().as_ref().to_vec()
        });
        let jwks = keys(vec![jwk, rsa_jwk(&rsa_key(), "k1")]);
        assert!(verify_id_token(&token, &jwks, &want()).is_ok());
    }

    #[test]
    fn a_token_for_another_client_is_refused() {
        let mut c = claims();
        c["aud"] = json!("someone-else");
        let err = signed_and_checked(&c).unwrap_err();
        assert_eq!(err, TokenError::Audience("agv".into()));
        c["aud"] = json!(["someone-else", "agv"]);
        assert!(signed_and_checked(&c).is_ok());
        c["azp"] = json!("someone-else");
        let err = signed_and_checked(&c).unwrap_err();
        assert!(matches!(err, TokenError::Audience(_)), "{err}");
    }

    #[test]
    fn an_expired_or_future_token_is_refused_beyond_the_leeway() {
        let mut c = claims();
        c["exp"] = json!(NOW - LEEWAY_SECS - 1);
        let err = signed_and_checked(&c).unwrap_err();
        assert_eq!(err, TokenError::Expired);
        c["exp"] = json!(NOW - 30);
        assert!(signed_and_checked(&c).is_ok());
        c["iat"] = json!(NOW + LEEWAY_SECS + 60);
        c["exp"] = json!(NOW + 3600);
        let err = signed_and_checked(&c).unwrap_err();
        assert_eq!(err, TokenError::NotYetValid);
    }

    #[test]
    fn a_bad_signature_is_refused() {
        let key = rsa_key();
        let jwks = keys(vec![rsa_jwk(&key, "k1")]);
        let token = rs256(&key, "k1", &claims());
        // The same signature over other claims.
        let (_, sig) = token.rsplit_once('.').unwrap();
        let mut c = claims();
        c["email"] = json!("mallory@example.com");
        let forged = format!(
            "{}.{sig}",
            rs256(&key, "k1", &c).rsplit_once('.').unwrap().0
        );
        let err = verify_id_token(&forged, &jwks, &want()).unwrap_err();
        assert_eq!(err, TokenError::BadSignature);
        // Unsigned, or signed with a shared secret: refused whatever the signature.
        for alg in ["none", "HS256"] {
            let t = jwt(&json!({"alg": alg, "kid": "k1"}), &claims(), |_| {
                b"x".to_vec()
            });
            let err = verify_id_token(&t, &jwks, &want()).unwrap_err();
            assert_eq!(err, TokenError::Algorithm(alg.into()));
        }
        // A key id the provider does not publish.
        let err = verify_id_token(&rs256(&key, "k9", &claims()), &jwks, &want()).unwrap_err();
        assert_eq!(err, TokenError::UnknownKey("k9".into()));
        assert_eq!(
            verify_id_token("not.a-token", &jwks, &want()).unwrap_err(),
            TokenError::Malformed
        );
    }

    #[test]
    fn a_wrong_nonce_or_issuer_is_refused() {
        let mut c = claims();
        c["nonce"] = json!("n-2");
        let err = signed_and_checked(&c).unwrap_err();
        assert_eq!(err, TokenError::Nonce);
        c.as_object_mut().unwrap().retain(|k, _| k != "nonce");
        let err = signed_and_checked(&c).unwrap_err();
        assert_eq!(err, TokenError::Nonce);
        let mut c = claims();
        c["iss"] = json!("https://evil.example.com");
        let err = signed_and_checked(&c).unwrap_err();
        assert!(matches!(err, TokenError::Issuer { .. }), "{err}");
    }

    #[test]
    fn pkce_s256_matches_rfc_7636s_example() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let t = random_token();
        assert_eq!(t.len(), 43);
        assert_ne!(t, random_token());
    }

    #[test]
    fn domains_and_groups_decide_who_may_sign_in_and_as_what() {
        let ada = Email::parse("ada@example.com").unwrap();
        assert!(domain_allowed(&ada, &[]));
        assert!(domain_allowed(
            &ada,
            &["acme.org".into(), "example.com".into()]
        ));
        assert!(!domain_allowed(&ada, &["acme.org".into()]));
        let sub = Email::parse("ada@mail.example.com").unwrap();
        assert!(!domain_allowed(&sub, &["example.com".into()]));
        let mapping = vec![
            ("agv-admins".to_owned(), Role::Admin),
            ("agv-owners".to_owned(), Role::Owner),
        ];
        for (groups, role) in [
            (&[][..], Role::Viewer),
            (&["staff", "agv-admins"], Role::Admin),
            (&["agv-admins", "agv-owners"], Role::Owner),
        ] {
            let groups: Vec<String> = groups.iter().map(|s| s.to_string()).collect();
            assert_eq!(
                role_for(&groups, &mapping, Role::Viewer),
                role,
                "{groups:?}"
            );
        }
    }

    #[test]
    fn unverified_emails_and_odd_claims_are_read_carefully() {
        let c = |v: Value| Claims::new(v.as_object().unwrap().clone());
        assert_eq!(
            c(json!({"email_verified": false})).email_verified(),
            Some(false)
        );
        assert_eq!(
            c(json!({"email_verified": "false"})).email_verified(),
            Some(false)
        );
        assert_eq!(c(json!({})).email_verified(), None);
        assert!(c(json!({"email": 3})).email().is_err());
        assert!(c(json!({"email": "not an email"})).email().is_err());
        assert_eq!(c(json!({})).email(), Ok(None));
        assert_eq!(c(json!({"g": "one"})).groups("g"), vec!["one"]);
        assert!(c(json!({"g": {"x": 1}})).groups("g").is_empty());
        let mut base = c(json!({"sub": "u", "email": "a@b.co"}));
        base.fill_from(
            json!({"sub": "other", "groups": ["x"]})
                .as_object()
                .unwrap(),
        );
        assert_eq!(base.subject(), Some("u"));
        assert_eq!(base.groups("groups"), vec!["x"]);
    }
}
