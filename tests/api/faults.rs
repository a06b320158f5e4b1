//! Fault tests: slow clients are cut off by timeouts (a trickled request head, a trickled
//! body gets 408) while everyone else is served, and 1,000 connections held open at once
//! leave the server answering.

use crate::helpers::{Backend, ProxySetup, TestApp};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

async fn setup() -> Option<(TestApp, crate::helpers::MockUpstream, String)> {
    let setup = ProxySetup::new(Backend::Sqlite)?;
    let url = setup.upstream.url();
    let key = setup.key.clone();
    let upstream = setup.upstream;
    let app = TestApp::start_with(setup.home, |s| {
        s.upstream_url = url;
        s.unauth_rate_limit_per_minute = 0;
        s.body_read_timeout = Duration::from_secs(1);
    })
    .await;
    Some((app, upstream, key))
}

fn connect(app: &TestApp) -> TcpStream {
    let addr = app.address.trim_start_matches("http://");
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Reads until the server answers or closes; returns what came and how long it took.
fn read_answer(mut s: TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") && out.ends_with(b"}") {
                    break;
                }
            }
            Err(e) => panic!("the server neither answered nor closed: {e}"),
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_time_out_while_others_are_served() {
    let Some((app, _upstream, key)) = setup().await else {
        return;
    };
    // A head that never ends.
    let mut head = connect(&app);
    head.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // A body that never arrives in full.
    let mut body = connect(&app);
    write!(
        body,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\":"
    )
    .unwrap();
    // Everyone else is served meanwhile.
    assert_eq!(app.get("/health").await.status(), 200);
    assert_eq!(app.chat(&key, "not slow").await.status(), 200);

    let (answer, took) = tokio::task::spawn_blocking(move || read_answer(body))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let (answer, took) = tokio::task::spawn_blocking(move || read_answer(head))
        .await
        .unwrap();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_eq!(app.chat(&key, "still fine").await.status(), 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_held_open_leave_the_server_answering() {
    let Some((app, _upstream, key)) = setup().await else {
        return;
    };
    // Room for both ends of every connection in this one process.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < 4096 {
            lim.rlim_cur = lim.rlim_max.min(8192);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    let addr = app.address.trim_start_matches("http://").to_owned();
    let held = tokio::task::spawn_blocking(move || {
        (0..1000)
            .map(|_| TcpStream::connect(&addr).expect("connection accepted"))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(held.len(), 1000);
    for i in 0..5 {
        assert_eq!(app.get("/health").await.status(), 200, "health {i}");
        assert_eq!(app.chat(&key, "beside 1,000 idle").await.status(), 200);
    }
    drop(held);
    assert_eq!(app.chat(&key, "after").await.status(), 200);
    app.stop().await;
}
