//! Streaming relay: forwards a server-sent-event stream to the client event by event as it
//! arrives (never buffered whole), collects usage on the way, and sends the final
//! `data: [DONE]` only after the call's record is committed.
//!
//! When the client did not ask for usage (`stream_options.include_usage`), the upstream is
//! asked anyway and the usage-only chunk, and the `"usage": null` field the upstream then
//! adds to every chunk, are removed again, so the client receives what it asked for.

use super::upstream::{UpstreamError, UpstreamResponse};
use super::{Incoming, Proxy, Usage, micros, upstream_error};
use crate::domain::CallRecord;
use crate::guard::Admission;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;

pub type StreamBody = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

const DONE: &[u8] = b"data: [DONE]\n\n";

/// The body to send upstream for a streaming request, and whether usage must be stripped
/// from the client's stream (because agv-server added the request for it).
pub fn ask_for_usage(incoming: &Incoming) -> (Bytes, bool) {
    let asked = incoming
        .body
        .pointer("/stream_options/include_usage")
        .and_then(serde_json::Value::as_bool)
        == Some(true);
    if asked {
        return (incoming.raw.clone(), false);
    }
    let mut body = incoming.body.clone();
    let Some(obj) = body.as_object_mut() else {
        return (incoming.raw.clone(), false);
    };
    let options = obj
        .entry("stream_options")
        .or_insert_with(|| serde_json::json!({}));
    match options.as_object_mut() {
        Some(o) => {
            o.insert("include_usage".into(), serde_json::Value::Bool(true));
        }
        None => *options = serde_json::json!({"include_usage": true}),
    }
    match serde_json::to_vec(&body) {
        Ok(v) => (Bytes::from(v), true),
        Err(_) => (incoming.raw.clone(), false),
    }
}

/// Starts relaying `response`; the returned stream is the client's response body.
pub fn start(
    proxy: Arc<Proxy>,
    incoming: Incoming,
    rec: CallRecord,
    admission: Admission,
    response: UpstreamResponse,
    strip: bool,
) -> StreamBody {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(relay(proxy, incoming, rec, admission, response, strip, tx));
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// What the relay keeps of the client's stream for the record.
struct Transcript {
    kept: Vec<u8>,
    max: usize,
    cut: bool,
    hash: Sha256,
}

impl Transcript {
    fn push(&mut self, bytes: &[u8]) {
        self.hash.update(bytes);
        let room = self.max.saturating_sub(self.kept.len());
        if bytes.len() > room {
            self.cut = true;
        }
        self.kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

enum Event {
    Forward(Bytes),
    Skip,
    Done,
}

async fn relay(
    proxy: Arc<Proxy>,
    incoming: Incoming,
    mut rec: CallRecord,
    admission: Admission,
    response: UpstreamResponse,
    strip: bool,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let deadline = tokio::time::Instant::from_std(
        response.started + proxy.instance_upstream().settings().total_timeout,
    );
    let started = response.started;
    let mut upstream = response.response.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    // How far `pending` is known to hold no event boundary: each byte is scanned once,
    // however small the chunks an upstream sends.
    let mut scanned = 0;
    let mut transcript = Transcript {
        kept: Vec::new(),
        max: proxy.max_stored_body,
        cut: false,
        hash: Sha256::new(),
    };
    let mut usage = Usage::default();
    // Bytes of generated text relayed: the usage estimate of a stream that ends early.
    let mut relayed_text: u64 = 0;
    let mut served_model: Option<String> = None;
    let mut done = false;
    let mut client_gone = false;
    let mut failure: Option<UpstreamError> = None;

    'read: loop {
        let next = match tokio::time::timeout_at(deadline, upstream.next()).await {
            Err(_) => {
                failure = Some(UpstreamError::Timeout(
                    "the stream did not finish within the total timeout".into(),
                ));
                break;
            }
            Ok(next) => next,
        };
        match next {
            None => break,
            Some(Err(e)) => {
                failure = Some(UpstreamError::Broken(format!(
                    "the stream broke before [DONE]: {e}"
                )));
                break;
            }
            Some(Ok(chunk)) => {
                pending.extend_from_slice(&chunk);
                while let Some(end) = event_end(&pending, scanned) {
                    scanned = 0;
                    let event: Vec<u8> = pending.drain(..end).collect();
                    match process_event(
                        &event,
                        strip,
                        &mut usage,
                        &mut served_model,
                        &mut relayed_text,
                    ) {
                        Event::Done => {
                            done = true;
                            break 'read;
                        }
                        Event::Skip => {}
                        Event::Forward(bytes) => {
                            transcript.push(&bytes);
                            if tx.send(Ok(bytes)).await.is_err() {
                                client_gone = true;
                                break 'read;
                            }
                        }
                    }
                }
                // A boundary may straddle this chunk and the next: keep the last 3 bytes.
                scanned = pending.len().saturating_sub(3);
                if pending.len() > MAX_EVENT_BYTES {
                    failure = Some(UpstreamError::Broken(format!(
                        "the upstream sent a stream event larger than {} KiB",
                        MAX_EVENT_BYTES >> 10
                    )));
                    break;
                }
            }
        }
    }
    drop(upstream);
    if !done && failure.is_none() && !client_gone {
        failure = Some(UpstreamError::Broken(
            "the stream ended before [DONE]".into(),
        ));
    }

    rec.upstream_latency_us = Some(micros(started.elapsed()));
    let model = served_model.or_else(|| rec.model.clone());
    // A stream that ended early rarely got to its usage chunk: what it cost is estimated
    // from the request and the text relayed, and the record says so.
    let ended_early = failure.is_some() || client_gone;
    let estimated = ended_early && usage.prompt.is_none() && usage.completion.is_none();
    if estimated {
        // The total follows from the two (`Usage::apply`).
        usage = Usage {
            prompt: i64::try_from(admission.prompt_estimate()).ok(),
            completion: i64::try_from(crate::guard::tokens::bytes_tokens(relayed_text)).ok(),
            cached: None,
            total: None,
        };
    }
    let after = proxy.settle(&mut rec, admission, usage, model, failure.is_some());
    let estimate_note = if estimated {
        format!(
            "; usage estimated from the request and the {relayed_text} bytes of text relayed (the stream ended before the upstream reported usage)"
        )
    } else {
        String::new()
    };
    let tail: Vec<u8> = match (&failure, client_gone) {
        (Some(e), _) => {
            // A failed call like a unary one: its 5xx status, counted toward dg-004 above
            // and raising the upstream-error signal when it is finished.
            let err = upstream_error(e);
            rec.status = err.status();
            rec.error = Some(format!("{e}{estimate_note}"));
            format!("data: {}\n\n", err.body_json()).into_bytes()
        }
        (None, true) => {
            rec.status = CLIENT_CLOSED_REQUEST;
            rec.error = Some(format!(
                "the client disconnected before the end of the stream{estimate_note}"
            ));
            Vec::new()
        }
        (None, false) => {
            rec.status = 200;
            DONE.to_vec()
        }
    };
    transcript.push(&tail);
    rec.response_body = Some(String::from_utf8_lossy(&transcript.kept).into_owned());
    rec.response_truncated = transcript.cut;
    rec.response_sha256 = Some(hex::encode(transcript.hash.finalize()));
    match proxy.finish(rec, incoming.received, after).await {
        Ok(()) if !tail.is_empty() => {
            let _ = tx.send(Ok(Bytes::from(tail))).await;
        }
        Ok(()) => {}
        Err(e) => {
            // The recorder has logged the cause (once per episode, not per call).
            tracing::debug!(error = %e, "a streamed call could not be recorded; ending the stream without [DONE]");
            let err = super::record_failed(&e);
            let _ = tx
                .send(Ok(Bytes::from(format!("data: {}\n\n", err.body_json()))))
                .await;
        }
    }
}

/// The status recorded for a stream the client left before its end (nginx's 499 "client
/// closed request"); the client is gone, so no one receives it.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// The largest single event of a stream held while waiting for its end. OpenAI's events
/// are a few hundred bytes; an upstream that never ends one must not grow the buffer
/// without bound.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// The end (exclusive) of the first complete event in `buf`, looking from `from` on (no
/// boundary starts before it): a blank line ends an event.
fn event_end(buf: &[u8], from: usize) -> Option<usize> {
    let buf = buf.get(from..)?;
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| from + i + 2);
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| from + i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn process_event(
    event: &[u8],
    strip: bool,
    usage: &mut Usage,
    model: &mut Option<String>,
    relayed_text: &mut u64,
) -> Event {
    let text = String::from_utf8_lossy(event);
    let data_lines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .collect();
    let [data] = data_lines.as_slice() else {
        // Comments, keep-alives or multi-line events pass through untouched.
        return Event::Forward(Bytes::copy_from_slice(event));
    };
    if *data == "[DONE]" {
        return Event::Done;
    }
    let Ok(mut chunk) = serde_json::from_str::<serde_json::Value>(data) else {
        return Event::Forward(Bytes::copy_from_slice(event));
    };
    if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
        *usage = Usage::from_json(Some(u));
    }
    *relayed_text += generated_text_bytes(&chunk);
    if model.is_none() {
        *model = chunk
            .get("model")
            .and_then(|m| m.as_str())
            .map(str::to_owned);
    }
    if !strip {
        return Event::Forward(Bytes::copy_from_slice(event));
    }
    let usage_only = chunk
        .get("choices")
        .and_then(|c| c.as_array())
        .is_some_and(Vec::is_empty)
        && chunk.get("usage").is_some_and(|u| u.is_object());
    if usage_only {
        return Event::Skip;
    }
    match chunk.as_object_mut() {
        Some(obj) if obj.get("usage").is_some_and(serde_json::Value::is_null) => {
            obj.shift_remove("usage");
            match serde_json::to_string(&chunk) {
                Ok(s) => Event::Forward(Bytes::from(format!("data: {s}\n\n"))),
                Err(_) => Event::Forward(Bytes::copy_from_slice(event)),
            }
        }
        _ => Event::Forward(Bytes::copy_from_slice(event)),
    }
}

/// The bytes of generated text in a chunk: each choice's content, refusal and tool-call
/// arguments.
fn generated_text_bytes(chunk: &serde_json::Value) -> u64 {
    let Some(choices) = chunk.get("choices").and_then(|c| c.as_array()) else {
        return 0;
    };
    let len = |v: Option<&serde_json::Value>| v.and_then(|t| t.as_str()).map_or(0, str::len);
    choices
        .iter()
        .filter_map(|c| c.get("delta"))
        .map(|d| {
            let tools: usize = d
                .get("tool_calls")
                .and_then(|t| t.as_array())
                .map_or(0, |calls| {
                    calls
                        .iter()
                        .map(|c| len(c.pointer("/function/arguments")))
                        .sum()
                });
            (len(d.get("content")) + len(d.get("refusal")) + tools) as u64
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_end_at_a_blank_line() {
        assert_eq!(event_end(b"data: 1\n\ndata: 2", 0), Some(9));
        assert_eq!(event_end(b"data: 1\r\n\r\n", 0), Some(11));
        assert_eq!(event_end(b"data: 1\n", 0), None);
        // Scanning from where the last look stopped still finds a boundary that began
        // in the bytes kept before it.
        assert_eq!(event_end(b"data: 1\r\n\r\n", 5), Some(11));
        assert_eq!(event_end(b"data: 1\n\n", 5), Some(9));
        assert_eq!(event_end(b"data", 10), None);
    }

    #[test]
    fn usage_added_by_us_is_removed_and_captured() {
        let mut usage = Usage::default();
        let mut model = None;
        let chunk = br#"data: {"id":"c","model":"gpt-4o","choices":[{"delta":{"content":"hi"}}],"usage":null}

"#;
        let Event::Forward(out) = process_event(chunk, true, &mut usage, &mut model, &mut 0) else {
            panic!()
        };
        assert_eq!(&out[..], &b"data: {\"id\":\"c\",\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n"[..]);
        assert_eq!(model.as_deref(), Some("gpt-4o"));
        let last = b"data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n";
        assert!(matches!(
            process_event(last, true, &mut usage, &mut model, &mut 0),
            Event::Skip
        ));
        assert_eq!(usage.total, Some(7));
        assert!(matches!(
            process_event(b"data: [DONE]\n\n", true, &mut usage, &mut model, &mut 0),
            Event::Done
        ));
    }

    #[test]
    fn a_client_that_asked_for_usage_gets_every_byte_unchanged() {
        let mut usage = Usage::default();
        let mut model = None;
        let last = b"data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n";
        let Event::Forward(out) = process_event(last, false, &mut usage, &mut model, &mut 0) else {
            panic!()
        };
        assert_eq!(&out[..], &last[..]);
        assert_eq!(usage.prompt, Some(5));
        let comment = b": keep-alive\n\n";
        let Event::Forward(out) = process_event(comment, true, &mut usage, &mut model, &mut 0)
        else {
            panic!()
        };
        assert_eq!(&out[..], &comment[..]);
    }
}
