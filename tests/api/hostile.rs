//! Upstreams that misbehave on purpose (a tenant may bring its own): a huge answer, a
//! stream in one-byte pieces, a stream event that never ends, a body that stalls. Each
//! must end in a clear error or a correct answer, never in unbounded memory or a hang.

use crate::helpers::{Backend, ProxySetup, TestApp, error_code};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How the hostile upstream answers every request.
#[derive(Clone, Copy)]
enum Hostile {
    /// 200 declaring a 300 MB JSON body (and sending a little of it).
    HugeDeclared,
    /// A correct chat stream written one byte at a time.
    OneByteStream,
    /// A stream whose first event never ends: 4 MiB of `x` in 16 KiB pieces.
    EndlessEvent,
    /// Headers promising 1,000 bytes, then nothing.
    Stall,
}

/// Reads one request (headers and a Content-Length body).
fn read_request(stream: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    let _ = stream.read_exact(&mut body);
}

fn answer(mut stream: TcpStream, how: Hostile) {
    read_request(&mut stream);
    let _ = stream.set_nodelay(true);
    match how {
        Hostile::HugeDeclared => {
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 300000000\r\n\r\n{\"id\":\"",
            );
            std::thread::sleep(Duration::from_secs(5));
        }
        Hostile::OneByteStream => {
            let mut body = String::new();
            for word in ["Hello", " from", " a", " slow", " upstream"] {
                body.push_str(&format!(
                    "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{word}\"}}}}]}}\n\n"
                ));
            }
            body.push_str("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":5,\"total_tokens\":10}}\n\n");
            body.push_str("data: [DONE]\n\n");
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
            );
            for b in body.bytes() {
                if stream.write_all(&[b]).is_err() {
                    return;
                }
            }
        }
        Hostile::EndlessEvent => {
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\ndata: ",
            );
            let piece = vec![b'x'; 16 << 10];
            for _ in 0..256 {
                if stream.write_all(&piece).is_err() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_secs(5));
        }
        Hostile::Stall => {
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{",
            );
            std::thread::sleep(Duration::from_secs(30));
        }
    }
}

/// A hostile upstream on a free port; its base URL.
fn hostile(how: Hostile) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer(stream, how));
        }
    });
    format!("http://{addr}/v1")
}

async fn start(how: Hostile) -> (TestApp, String, String) {
    let setup = ProxySetup::new(Backend::Sqlite).unwrap();
    let (key, admin) = (setup.key.clone(), setup.admin.clone());
    let url = hostile(how);
    let app = TestApp::start_with(setup.home, |s| {
        s.upstream_url = url;
        s.upstream_timeout = Duration::from_secs(3);
        s.upstream_first_byte_timeout = Duration::from_secs(2);
        s.upstream_retries = 0;
        s.unauth_rate_limit_per_minute = 0;
    })
    .await;
    (app, key, admin)
}

fn stream_body(content: &str) -> serde_json::Value {
    serde_json::json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": content}]})
}

#[tokio::test]
async fn a_body_larger_than_the_cap_is_an_upstream_error_read_no_further() {
    let (app, key, admin) = start(Hostile::HugeDeclared).await;
    let res = tokio::time::timeout(Duration::from_secs(20), app.chat(&key, "huge"))
        .await
        .expect("answered, not hung");
    assert_eq!(res.status(), 502);
    let id = crate::helpers::call_id(&res);
    let call = app.call(&admin, &id).await;
    assert!(
        call["error"].as_str().unwrap_or("").contains("larger than"),
        "{call}"
    );
    let res = tokio::time::timeout(
        Duration::from_secs(20),
        app.get_with_key("/v1/models", &key),
    )
    .await
    .expect("answered, not hung");
    assert_eq!(res.status(), 502);
    app.stop().await;
}

#[tokio::test]
async fn a_stream_in_one_byte_pieces_is_relayed_whole() {
    let (app, key, admin) = start(Hostile::OneByteStream).await;
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        app.post_json("/v1/chat/completions", &key, &stream_body("slow")),
    )
    .await
    .expect("answered, not hung");
    assert_eq!(res.status(), 200);
    let id = crate::helpers::call_id(&res);
    let text = res.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    for word in ["Hello", " from", " a", " slow", " upstream"] {
        assert!(text.contains(&format!("\"content\":\"{word}\"")), "{text}");
    }
    let call = app.call(&admin, &id).await;
    assert_eq!(call["total_tokens"], 10, "{call}");
    app.stop().await;
}

#[tokio::test]
async fn a_stream_event_that_never_ends_stops_the_stream_with_an_error() {
    let (app, key, admin) = start(Hostile::EndlessEvent).await;
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        app.post_json("/v1/chat/completions", &key, &stream_body("endless")),
    )
    .await
    .expect("answered, not hung");
    let id = crate::helpers::call_id(&res);
    let text = tokio::time::timeout(Duration::from_secs(30), res.text())
        .await
        .expect("the stream ended")
        .unwrap();
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(
        text.contains("\"error\""),
        "the stream ends with an error event: {text}"
    );
    let call = app.call(&admin, &id).await;
    assert!(
        call["error"].as_str().unwrap_or("").contains("larger than"),
        "{call}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_model_list_that_stalls_times_out() {
    let (app, key, _admin) = start(Hostile::Stall).await;
    let res = tokio::time::timeout(
        Duration::from_secs(20),
        app.get_with_key("/v1/models", &key),
    )
    .await
    .expect("answered within the upstream timeout, not hung");
    assert_eq!(res.status(), 504);
    assert_eq!(error_code(res).await, "upstream_timeout");
    app.stop().await;
}
