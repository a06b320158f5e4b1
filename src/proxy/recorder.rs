//! The call recorder: ONE writer task that commits whatever has queued in one transaction
//! (group commit) and then releases the waiting requests.
//!
//! A request hands its record over and waits; the response — or a stream's final
//! `[DONE]` — is sent only after the commit, so an acknowledged call is never lost. While a
//! commit runs, new records pile up and go in the next one, so the cost of a commit is
//! shared by everyone who arrived during the previous one. Nothing here blocks the async
//! runtime: the store work runs on the blocking pool.

use crate::domain::CallRecord;
use crate::store::{DynStore, run_blocking};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// The most records one transaction takes.
const MAX_BATCH: usize = 1024;
/// Records waiting for the writer before `record` itself waits for room.
const QUEUE_CAPACITY: usize = 16_384;

type Ack = oneshot::Sender<Result<(), String>>;

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<(CallRecord, Ack)>,
}

impl Recorder {
    /// Starts the writer task. It ends when every `Recorder` clone is dropped, after
    /// committing what was queued.
    pub fn start(store: DynStore) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        (Self { tx }, tokio::spawn(writer(store, rx)))
    }

    /// Queues `record` and waits until it is committed.
    pub async fn record(&self, record: CallRecord) -> Result<(), String> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send((record, ack))
            .await
            .map_err(|_| "the call recorder has stopped".to_owned())?;
        done.await
            .map_err(|_| "the call recorder stopped before committing".to_owned())?
    }
}

async fn writer(store: DynStore, mut rx: mpsc::Receiver<(CallRecord, Ack)>) {
    let mut batch: Vec<(CallRecord, Ack)> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let started = Instant::now();
        let (records, acks): (Vec<CallRecord>, Vec<Ack>) = batch.drain(..).unzip();
        let size = records.len();
        let store2 = store.clone();
        let (result, records) = run_blocking(move || {
            let r = store2.insert_calls(&records);
            (r, records)
        })
        .await;
        let outcomes: Vec<Result<(), String>> = match result {
            Ok(()) => vec![Ok(()); size],
            // One bad record must not fail its neighbours: retry them one by one.
            Err(e) if size > 1 => {
                tracing::warn!(error = %e, size, "group commit failed; committing the records one by one");
                let store2 = store.clone();
                run_blocking(move || {
                    records
                        .iter()
                        .map(|r| {
                            store2
                                .insert_calls(std::slice::from_ref(r))
                                .map_err(|e| e.to_string())
                        })
                        .collect()
                })
                .await
            }
            Err(e) => vec![Err(e.to_string())],
        };
        metrics::histogram!("agv_recorder_batch_size").record(size as f64);
        metrics::histogram!("agv_recorder_commit_seconds").record(started.elapsed().as_secs_f64());
        for (ack, outcome) in acks.into_iter().zip(outcomes) {
            if let Err(e) = &outcome {
                metrics::counter!("agv_recorder_failures_total").increment(1);
                tracing::error!(error = %e, "a call record could not be committed");
            }
            let _ = ack.send(outcome);
        }
    }
}
