//! Cost of the tamper-evident call chain on the recorder's hot path, per call: encoding
//! the stored fields canonically and one SHA-256 link (`domain::chain::{encode,
//! link_hash}`), exactly what `insert_calls` adds per call inside its transaction (the
//! head read/write is two statements per tenant per batch, not per call). Bodies of
//! 1 KiB, 4 KiB and 32 KiB; prints p50/p99 per call and the throughput.
//!
//! `cargo run --release --example bench_chain [-- --iterations N]`

use agv_server::domain::chain::{Field, encode, link_hash};
use std::hint::black_box;
use std::time::Instant;

fn call_fields<'a>(request: &'a str, response: &'a str) -> Vec<Field<'a>> {
    vec![
        Field::Text("call_0123456789abcdef0123456789abcdef"),
        Field::Text("ten_0123456789abcdef0123456789abcdef"),
        Field::Text("key_0123456789abcdef0123456789abcdef"),
        Field::Int(1_763_900_000_000),
        Field::Text("/v1/chat/completions"),
        Field::Text("gpt-4o-mini"),
        Field::Int(0),
        Field::Text("cust_8372"),
        Field::Null,
        Field::Text(r#"{"team":"search"}"#),
        Field::Text(request),
        Field::Int(0),
        Field::Text("ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12"),
        Field::Text(response),
        Field::Int(0),
        Field::Text("cd34cd34cd34cd34cd34cd34cd34cd34cd34cd34cd34cd34cd34cd34cd34cd34"),
        Field::Int(200),
        Field::Null,
        Field::Int(0),
        Field::Null,
        Field::Text(
            r#"[{"policy":"killswitch","outcome":"pass","reason":"not frozen","micros":1},{"policy":"dg-002","outcome":"pass","value":120.0,"threshold":16000.0,"unit":"tokens","reason":"within","micros":2}]"#,
        ),
        Field::Int(12),
        Field::Int(34),
        Field::Int(0),
        Field::Int(46),
        Field::Int(123_456),
        Field::Int(812_345),
        Field::Int(800_000),
        Field::Int(42),
        Field::Int(1),
        Field::Text("https://api.openai.com/v1"),
    ]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let mut iterations: usize = 200_000;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--iterations")
        && let Some(n) = args.get(i + 1).and_then(|v| v.parse().ok())
    {
        iterations = n;
    }
    for body_len in [1024usize, 4096, 32 * 1024] {
        let request = "q".repeat(body_len);
        let response = "r".repeat(body_len);
        let fields = call_fields(&request, &response);
        let mut prev = "0".repeat(64);
        let mut buf = Vec::with_capacity(2 * body_len + 1024);
        let mut samples = Vec::with_capacity(iterations);
        let all = Instant::now();
        for seq in 1..=iterations as i64 {
            let t = Instant::now();
            buf.clear();
            encode(black_box(&fields), &mut buf);
            prev = link_hash(&prev, seq, &buf);
            samples.push(t.elapsed().as_nanos() as f64 / 1000.0);
        }
        let total = all.elapsed();
        black_box(&prev);
        samples.sort_by(f64::total_cmp);
        println!(
            "chain link, 2 x {:>5} B bodies: p50 {:.2} us  p99 {:.2} us  mean {:.2} us/call  ({:.0} calls/s on one core)",
            body_len,
            percentile(&samples, 0.50),
            percentile(&samples, 0.99),
            total.as_secs_f64() * 1e6 / iterations as f64,
            iterations as f64 / total.as_secs_f64()
        );
    }
}
