//! The call recorder: ONE writer thread that commits whatever has queued in one transaction
//! (group commit) and then releases the waiting requests.
//!
//! A request hands its record over and waits; the response — or a stream's final
//! `[DONE]` — is sent only after the commit, so an acknowledged call is never lost. While a
//! commit runs, new records pile up and go in the next one, so the cost of a commit is
//! shared by everyone who arrived during the previous one.
//!
//! The writer is a plain OS thread blocked on the queue, not a task: a record goes from the
//! request's task straight to the thread that commits it and the acknowledgement straight
//! back, with no runtime or blocking pool in between. That hop count is most of the
//! recorder's share of the proxy's added latency.

use crate::domain::CallRecord;
use crate::store::DynStore;
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

/// Resolves once the writer thread has committed everything queued and ended.
pub struct RecorderDone(oneshot::Receiver<()>);

impl RecorderDone {
    pub async fn wait(self) {
        let _ = self.0.await;
    }
}

impl Recorder {
    /// Starts the writer thread. It ends when every `Recorder` clone is dropped, after
    /// committing what was queued.
    pub fn start(store: DynStore) -> std::io::Result<(Self, RecorderDone)> {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("agv-recorder".into())
            .spawn(move || {
                writer(&store, rx);
                let _ = done_tx.send(());
            })?;
        Ok((Self { tx }, RecorderDone(done_rx)))
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

fn writer(store: &DynStore, mut rx: mpsc::Receiver<(CallRecord, Ack)>) {
    let mut records: Vec<CallRecord> = Vec::with_capacity(MAX_BATCH);
    let mut acks: Vec<Ack> = Vec::with_capacity(MAX_BATCH);
    // Blocks this thread (never a runtime's) until the first record of a batch arrives,
    // then takes whatever else is already waiting.
    while let Some((record, ack)) = rx.blocking_recv() {
        records.push(record);
        acks.push(ack);
        while records.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok((record, ack)) => {
                    records.push(record);
                    acks.push(ack);
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let size = records.len();
        let outcomes: Vec<Result<(), String>> = match store.insert_calls(&records) {
            Ok(()) => vec![Ok(()); size],
            // One bad record must not fail its neighbours: retry them one by one.
            Err(e) if size > 1 => {
                tracing::warn!(error = %e, size, "group commit failed; committing the records one by one");
                records
                    .iter()
                    .map(|r| {
                        store
                            .insert_calls(std::slice::from_ref(r))
                            .map_err(|e| e.to_string())
                    })
                    .collect()
            }
            Err(e) => vec![Err(e.to_string())],
        };
        records.clear();
        metrics::histogram!("agv_recorder_batch_size").record(size as f64);
        metrics::histogram!("agv_recorder_commit_seconds").record(started.elapsed().as_secs_f64());
        for (ack, outcome) in acks.drain(..).zip(outcomes) {
            if let Err(e) = &outcome {
                metrics::counter!("agv_recorder_failures_total").increment(1);
                tracing::error!(error = %e, "a call record could not be committed");
            }
            let _ = ack.send(outcome);
        }
    }
}
