//! The incident engine: a task that takes signals off the proxy's hands and groups them.
//!
//! The proxy never waits for it: `Engine::send` is a non-blocking `try_send` into a bounded
//! queue (a full queue drops the signal and counts it in
//! `agv_incident_signals_dropped_total`; the call itself is recorded regardless). The task
//! applies what has queued in one store transaction, attaches kill-switch actions to the
//! tenant's open incidents, and tells its listeners (alerts) what changed. Cost spikes are
//! spotted in `Engine::cost` itself, against per-tenant cost baselines, so that a call
//! whose cost is ordinary never wakes the task.

use crate::domain::incident::{Applied, CostBaseline, EventKind, Signal, Subject, rule};
use crate::domain::{CallId, FreezeAction, FreezeEvent, KeyId, Money, TenantId, Timestamp};
use crate::store::{DynStore, run_blocking};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

const CAPACITY: usize = 65_536;
const MAX_BATCH: usize = 512;
/// Open incidents of a tenant that a kill-switch action is noted on.
const FREEZE_NOTE_LIMIT: u32 = 20;

/// What the engine is told.
#[derive(Debug)]
pub enum Input {
    Signal(Signal),
    /// A kill-switch action, noted on the tenant's open incidents.
    Freeze(FreezeEvent),
    /// Answers once everything sent before it has been applied (tests, shutdown).
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// A call's known cost, for its tenant's cost baseline ([`Engine::cost`]).
pub struct CallCost {
    pub tenant_id: TenantId,
    pub key_id: KeyId,
    pub call_id: CallId,
    pub end_user: Option<String>,
    pub cost: Money,
    pub at: Timestamp,
}

/// Told about every batch of applied signals, on the blocking pool, in order.
pub trait Listener: Send + Sync {
    fn applied(&self, applied: &[Applied]);
}

#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Input>,
    /// Per-tenant cost baselines, updated on the sender's thread: most calls bring only
    /// their cost and most costs no spike, so a call wakes the engine's task only when it
    /// has something to store — not once per call, which on a busy proxy was a cross-thread
    /// wake-up (and a core taken from the requests) for every call.
    baselines: Arc<std::sync::Mutex<HashMap<TenantId, CostBaseline>>>,
}

impl Engine {
    pub fn start(
        store: DynStore,
        listeners: Vec<Arc<dyn Listener>>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(CAPACITY);
        let engine = Self {
            tx,
            baselines: Arc::default(),
        };
        (engine, tokio::spawn(run(store, listeners, rx)))
    }

    /// Adds a call's cost to its tenant's baseline, on the caller's thread; only a spike
    /// goes to the engine's task, as a signal. Never waits.
    pub fn cost(&self, c: CallCost) {
        let mut baselines = self
            .baselines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A lookup first: the tenant's id is copied only for its first call.
        let spike = match baselines.get_mut(&c.tenant_id) {
            Some(base) => base.observe(c.cost),
            None => baselines
                .entry(c.tenant_id.clone())
                .or_default()
                .observe(c.cost),
        };
        drop(baselines);
        if let Some(detail) = spike {
            self.send(Input::Signal(Signal {
                tenant_id: c.tenant_id,
                rule: rule::COST_SPIKE.into(),
                subject: Subject::Key(c.key_id),
                at: c.at,
                call_id: Some(c.call_id),
                end_user: c.end_user,
                cost: Some(c.cost),
                detail,
                demo: false,
            }));
        }
    }

    /// Never waits.
    pub fn send(&self, input: Input) {
        if self.tx.try_send(input).is_err() {
            metrics::counter!("agv_incident_signals_dropped_total").increment(1);
            tracing::warn!(
                "the incident engine is behind; a signal was dropped (the call itself is recorded)"
            );
        }
    }

    pub fn signal(&self, signal: Signal) {
        metrics::counter!("agv_incident_signals_total", "rule" => signal.rule.clone()).increment(1);
        self.send(Input::Signal(signal));
    }

    /// Waits until everything sent before this call has been applied.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Input::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn run(store: DynStore, listeners: Vec<Arc<dyn Listener>>, mut rx: mpsc::Receiver<Input>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut signals = Vec::new();
        let mut freezes = Vec::new();
        let mut flushes = Vec::new();
        for input in batch.drain(..) {
            match input {
                Input::Signal(s) => signals.push(s),
                Input::Freeze(e) => freezes.push(e),
                Input::Flush(done) => flushes.push(done),
            }
        }
        // Nothing to store (a flush alone): no hop to the blocking pool and back.
        if !signals.is_empty() || !freezes.is_empty() {
            let store2 = store.clone();
            let listeners2 = listeners.clone();
            run_blocking(move || apply(&store2, &listeners2, &signals, &freezes)).await;
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

fn apply(
    store: &DynStore,
    listeners: &[Arc<dyn Listener>],
    signals: &[Signal],
    freezes: &[FreezeEvent],
) {
    if !signals.is_empty() {
        match store.apply_signals(signals) {
            Ok(applied) => {
                let opened = applied.iter().filter(|a| a.opened).count();
                if opened > 0 {
                    metrics::counter!("agv_incidents_opened_total").increment(opened as u64);
                }
                for l in listeners {
                    l.applied(&applied);
                }
            }
            Err(e) => {
                metrics::counter!("agv_incident_engine_errors_total").increment(1);
                tracing::error!(error = %e, signals = signals.len(), "the incident engine could not store signals");
            }
        }
    }
    for f in freezes {
        let incidents = match store.unresolved_incidents(&f.tenant_id, FREEZE_NOTE_LIMIT) {
            Ok(list) => list,
            Err(e) => {
                tracing::error!(error = %e, "could not list open incidents to note a kill-switch action on");
                continue;
            }
        };
        let target = match &f.key_id {
            Some(k) => format!("key {k}"),
            None => "the tenant".to_owned(),
        };
        let verb = match f.action {
            FreezeAction::Freeze => "froze",
            FreezeAction::Unfreeze => "unfroze",
        };
        let note = format!("{} {verb} {target}: {}", f.actor, f.reason);
        for inc in incidents {
            let after = serde_json::json!({
                "action": f.action.as_str(), "key_id": f.key_id, "freeze_event_id": f.id, "reason": f.reason,
            });
            if let Err(e) = store.add_incident_event(
                &f.tenant_id,
                &inc.id,
                EventKind::KillSwitch,
                &f.actor,
                Some(after),
                Some(&note),
                f.at,
            ) {
                tracing::error!(error = %e, incident = %inc.id, "could not note a kill-switch action on an incident");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::incident::IncidentFilter;
    use crate::domain::{Tenant, TenantName};

    fn cost(tenant: &TenantId, key: &KeyId, usd: f64, at: i64) -> CallCost {
        CallCost {
            tenant_id: tenant.clone(),
            key_id: key.clone(),
            call_id: CallId::generate(),
            end_user: None,
            cost: Money::from_usd(usd),
            at: Timestamp::from_millis(at),
        }
    }

    #[tokio::test]
    async fn a_call_costing_ten_times_the_usual_opens_a_cost_spike_incident() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(dir.path(), None).unwrap();
        let tenant = Tenant {
            id: TenantId::generate(),
            name: TenantName::parse("acme").unwrap(),
            created_at: Timestamp::from_millis(0),
        };
        store.create_tenant(&tenant).unwrap();
        let (engine, task) = Engine::start(store.clone(), Vec::new());
        let key = KeyId::generate();
        let t0 = 1_700_000_000_000;
        for i in 0..CostBaseline::MIN_HISTORY as i64 {
            engine.cost(cost(&tenant.id, &key, 0.02, t0 + i));
        }
        engine.flush().await;
        let listed =
            |s: &DynStore| s.list_incidents(Some(&tenant.id), &IncidentFilter::default(), None, 10);
        assert!(
            listed(&store).unwrap().is_empty(),
            "usual costs raise nothing"
        );

        engine.cost(cost(&tenant.id, &key, 1.0, t0 + 100));
        engine.flush().await;
        let incidents = listed(&store).unwrap();
        assert_eq!(incidents.len(), 1);
        assert_eq!(incidents[0].rule, rule::COST_SPIKE);
        assert_eq!(incidents[0].subject, format!("key:{key}"));
        assert_eq!(incidents[0].cost, Money::from_usd(1.0));
        drop(engine);
        task.await.unwrap();
    }
}
