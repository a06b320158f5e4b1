//! Certificate sign / verify benchmark (DESIGN.md targets: sign < 5 ms, verify < 1 ms).
//!
//! Measures, on one realistic replay certificate, the whole path a request takes:
//! - sign: serialise the certificate, canonicalise it, Ed25519-sign (`Certificate::sign`);
//! - verify: parse the JSON text, check its shape, canonicalise, Ed25519-verify strictly
//!   against a trusted key (`domain::certificate::verify`, what `agv-server verify` runs);
//!
//! and, in the same run, the same paths with HMAC-SHA256 over the same canonical bytes as
//! the baseline (what a vendor-only, shared-secret signature costs), printing each p50/p99
//! and the Ed25519/HMAC ratio. Also the bare primitives on the canonical bytes.
//!
//! `cargo run --release --example bench_certificates [-- --iterations N] [--smoke]`

use agv_server::domain::certificate::{
    CERTIFICATE_VERSION, CallEvidence, CertSigningKey, Certificate, CertificateKind,
    ReplayEvidence, canonical_json, verify,
};
use agv_server::domain::replay::MatchLevel;
use agv_server::domain::{CallId, CertificateId, ReplayId, TenantId};
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use std::hint::black_box;
use std::time::{Duration, Instant};

type HmacSha256 = Hmac<sha2::Sha256>;

const TARGET_SIGN_MS: f64 = 5.0;
const TARGET_VERIFY_MS: f64 = 1.0;

fn evidence(seed: &str) -> CallEvidence {
    CallEvidence {
        call_id: CallId::generate(),
        created_at: "2026-11-23T18:00:00.123Z".into(),
        model: Some("gpt-4o-mini-2024-07-18".into()),
        status: 200,
        request_sha256: format!("{seed:a>64}"),
        response_sha256: Some(format!("{seed:b>64}")),
        content_sha256: Some(format!("{seed:c>64}")),
    }
}

fn sample() -> Certificate {
    Certificate {
        version: CERTIFICATE_VERSION,
        certificate_id: CertificateId::generate(),
        kind: CertificateKind::Replay,
        tenant_id: TenantId::generate(),
        subject_id: ReplayId::generate().to_string(),
        original: Some(evidence("1")),
        replay: Some(ReplayEvidence {
            replay_id: ReplayId::generate(),
            mode: "upstream".into(),
            replayed_at: "2026-11-23T18:05:00.456Z".into(),
            call: Some(evidence("2")),
            model_drift: Some(false),
            would_block: None,
            decisions_differ: None,
        }),
        incident: None,
        model: Some("gpt-4o-mini-2024-07-18".into()),
        policy_version: "prices-2026-11-01+policy-0123456789abcdef".into(),
        match_level: Some(MatchLevel::Exact),
        instance_id: String::new(),
        issued_at: "2026-11-23T18:05:01.000Z".into(),
        chain_head: None,
        public_key: String::new(),
        signature: String::new(),
    }
}

/// The canonical bytes of a certificate without its signature (as the module documents).
fn canonical(cert: &Certificate) -> Vec<u8> {
    let mut v = serde_json::to_value(cert).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.remove("signature");
    }
    let mut out = String::new();
    canonical_json(&v, &mut out);
    out.into_bytes()
}

fn hmac_sign(key: &[u8], cert: &Certificate) -> Vec<u8> {
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    mac.update(&canonical(cert));
    mac.finalize().into_bytes().to_vec()
}

fn hmac_verify(key: &[u8], text: &[u8], tag: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(text) else {
        return false;
    };
    let Ok(cert) = serde_json::from_value::<Certificate>(v.clone()) else {
        return false;
    };
    let Some(mut map) = v.as_object().cloned() else {
        return false;
    };
    map.remove("signature");
    let mut out = String::new();
    canonical_json(&Value::Object(map), &mut out);
    black_box(&cert);
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return false;
    };
    mac.update(out.as_bytes());
    mac.verify_slice(tag).is_ok()
}

struct Stats {
    p50: Duration,
    p99: Duration,
}

fn measure(iterations: usize, mut f: impl FnMut()) -> Stats {
    for _ in 0..iterations.div_ceil(10) {
        f();
    }
    let mut samples: Vec<Duration> = (0..iterations)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    samples.sort_unstable();
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    Stats {
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn row(name: &str, s: &Stats, base: Option<&Stats>, target_ms: Option<f64>) {
    let ratio = base
        .map(|b| {
            format!(
                "  ×{:.1} p50 / ×{:.1} p99 vs HMAC",
                s.p50.as_secs_f64() / b.p50.as_secs_f64().max(1e-12),
                s.p99.as_secs_f64() / b.p99.as_secs_f64().max(1e-12)
            )
        })
        .unwrap_or_default();
    let target = target_ms
        .map(|t| {
            let verdict = if ms(s.p99) < t { "met" } else { "MISSED" };
            format!(
                "  target < {t} ms: {verdict} (p99 at {:.1}% of it)",
                ms(s.p99) / t * 100.0
            )
        })
        .unwrap_or_default();
    println!(
        "{name:<34} p50 {:>8.4} ms  p99 {:>8.4} ms{ratio}{target}",
        ms(s.p50),
        ms(s.p99)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let iterations = args
        .iter()
        .position(|a| a == "--iterations")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(if smoke { 200 } else { 20_000 });

    let key = CertSigningKey::generate();
    let trusted = key.public();
    let mut cert = sample();
    cert.instance_id = trusted.instance_id();
    let signed = match cert.clone().sign(&key) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: signing failed: {e}");
            std::process::exit(1);
        }
    };
    let text = serde_json::to_vec_pretty(&signed).unwrap_or_default();
    if let Err(e) = verify(&text, Some(&trusted)) {
        eprintln!("error: the sample certificate does not verify: {e}");
        std::process::exit(1);
    }
    let hmac_key = [7u8; 32];
    let tag = hmac_sign(&hmac_key, &signed);
    if !hmac_verify(&hmac_key, &text, &tag) {
        eprintln!("error: the HMAC baseline does not verify");
        std::process::exit(1);
    }
    let bytes = canonical(&signed);
    let raw_key = SigningKey::from_bytes(&[9u8; 32]);
    let raw_sig = raw_key.sign(&bytes);

    println!(
        "certificate benchmark: {iterations} iterations each, certificate {} bytes, canonical form {} bytes{}",
        text.len(),
        bytes.len(),
        if smoke {
            " (smoke: figures not representative)"
        } else {
            ""
        }
    );
    let hmac_sign_s = measure(iterations, || {
        black_box(hmac_sign(&hmac_key, black_box(&cert)));
    });
    let sign_s = measure(iterations, || {
        black_box(black_box(cert.clone()).sign(&key).ok());
    });
    let hmac_verify_s = measure(iterations, || {
        black_box(hmac_verify(&hmac_key, black_box(&text), &tag));
    });
    let verify_s = measure(iterations, || {
        black_box(verify(black_box(&text), Some(&trusted)).is_ok());
    });
    let prim_hmac = measure(iterations, || {
        if let Ok(mut mac) = HmacSha256::new_from_slice(&hmac_key) {
            mac.update(black_box(&bytes));
            black_box(mac.finalize());
        }
    });
    let prim_sign = measure(iterations, || {
        black_box(raw_key.sign(black_box(&bytes)));
    });
    let prim_verify = measure(iterations, || {
        black_box(
            raw_key
                .verifying_key()
                .verify_strict(black_box(&bytes), &raw_sig)
                .is_ok(),
        );
    });

    row(
        "sign (serialise+canonical+Ed25519)",
        &sign_s,
        Some(&hmac_sign_s),
        Some(TARGET_SIGN_MS),
    );
    row(
        "  baseline: same with HMAC-SHA256",
        &hmac_sign_s,
        None,
        None,
    );
    row(
        "verify (parse+canonical+Ed25519)",
        &verify_s,
        Some(&hmac_verify_s),
        Some(TARGET_VERIFY_MS),
    );
    row(
        "  baseline: same with HMAC-SHA256",
        &hmac_verify_s,
        None,
        None,
    );
    row(
        "primitive: Ed25519 sign",
        &prim_sign,
        Some(&prim_hmac),
        None,
    );
    row(
        "primitive: Ed25519 verify_strict",
        &prim_verify,
        Some(&prim_hmac),
        None,
    );
    row("primitive: HMAC-SHA256", &prim_hmac, None, None);
}
