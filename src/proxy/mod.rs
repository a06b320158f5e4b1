//! The OpenAI-compatible front door: authenticate (done by the extractor), check the kill
//! switch and guardrails in memory, forward to the upstream, relay streams chunk by chunk,
//! and record every call — forwarded or stopped — before answering.
//!
//! The hot path touches no database except the recorder's commit, and — on Postgres, when
//! this instance's lease of a shared rate limit or budget has run out — one lease taken on
//! the blocking pool (see `guard::shared`). Request bodies pass
//! through unchanged (unknown fields included); the one exception is a streaming request
//! that did not ask for usage: agv-server asks the upstream for it, and removes it again
//! from what the client receives.

pub mod install;
pub mod killswitch;
pub mod recorder;
pub mod relay;
pub mod upstream;

use crate::domain::call::endpoint;
use crate::domain::decision::policy;
use crate::domain::{CallId, CallRecord, Decision, TenantId, Timestamp};
use crate::error::ApiError;
use crate::error::Code;
use crate::guard::shared::Fetched;
use crate::guard::{
    AfterCall, CallResult, Endpoint as GuardEndpoint, Guard, RequestFacts, SharedStep, Verdict,
    read, write,
};
use crate::store::{DynStore, StoreError, run_blocking};
use bytes::Bytes;
use recorder::Recorder;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use upstream::{Upstream, UpstreamError};

pub const CALL_ID_HEADER: &str = "x-agv-call-id";
/// The largest `x-agv-metadata` header accepted.
pub const MAX_METADATA_BYTES: usize = 4096;
/// The longest end-user or session id accepted.
pub const MAX_ATTRIBUTION_LEN: usize = 256;

/// Everything the front door needs, shared by all requests.
pub struct Proxy {
    pub guard: Arc<Guard>,
    /// The instance upstream, used by every tenant without its own. Replaced as a whole
    /// when the operator sets another in the console; the hot path only reads.
    instance: RwLock<Arc<Upstream>>,
    /// Tenants' own upstreams (decrypted keys live only here). The hot path only reads.
    tenant_upstreams: RwLock<HashMap<TenantId, Arc<Upstream>>>,
    pub recorder: Recorder,
    pub store: DynStore,
    /// Takes the signals of what went wrong; never waited for.
    pub incidents: crate::incidents::Engine,
    /// Bodies longer than this are stored truncated (the hash covers the whole body).
    pub max_stored_body: usize,
    models_cache: Mutex<Option<(Instant, Bytes)>>,
    enforcement: LatencyWindow,
    /// Calls, upstream errors and latency of the last minutes, for the system alerts.
    pub health: Arc<crate::incidents::alerts::CallHealth>,
}

/// Who made the call and what they attached to it.
#[derive(Debug, Clone, Default)]
pub struct Attribution {
    pub end_user: Option<String>,
    pub session_id: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

/// The parts of a call known before it is forwarded.
pub struct Incoming {
    pub call_id: CallId,
    pub tenant_id: TenantId,
    pub key_id: crate::domain::KeyId,
    pub endpoint: &'static str,
    pub received: Instant,
    pub created_at: Timestamp,
    pub raw: Bytes,
    pub body: serde_json::Value,
    pub attribution: Attribution,
}

impl Incoming {
    pub fn model(&self) -> Option<String> {
        self.body
            .get("model")
            .and_then(|m| m.as_str())
            .map(str::to_owned)
    }

    pub fn stream(&self) -> bool {
        self.body
            .get("stream")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    }
}

/// What the handler sends back: a full response or a relayed stream.
pub enum Outcome {
    Full {
        status: u16,
        content_type: String,
        body: Bytes,
        retry_after: Option<String>,
    },
    Stream(relay::StreamBody),
    Error(ApiError),
}

impl Proxy {
    pub fn new(
        guard: Arc<Guard>,
        upstream: Upstream,
        recorder: Recorder,
        store: DynStore,
        incidents: crate::incidents::Engine,
        max_stored_body: usize,
    ) -> Self {
        Self {
            guard,
            instance: RwLock::new(Arc::new(upstream)),
            tenant_upstreams: RwLock::new(HashMap::new()),
            recorder,
            store,
            incidents,
            max_stored_body,
            models_cache: Mutex::new(None),
            enforcement: LatencyWindow::default(),
            health: Arc::default(),
        }
    }

    /// The instance upstream as it is now.
    pub fn instance_upstream(&self) -> Arc<Upstream> {
        read(&self.instance).clone()
    }

    /// Points the instance upstream at `primary`, at once for every call that starts after
    /// this returns. The pooled clients, timeouts and the fallback stay.
    pub fn set_instance_upstream(&self, primary: upstream::UpstreamTarget) {
        let next = Arc::new(self.instance_upstream().with_primary(primary));
        *write(&self.instance) = next;
        if let Ok(mut cache) = self.models_cache.lock() {
            *cache = None;
        }
    }

    /// The tenant's own upstream, when it has one.
    pub fn tenant_upstream(&self, tenant: &TenantId) -> Option<Arc<Upstream>> {
        read(&self.tenant_upstreams).get(tenant).cloned()
    }

    /// Sets (`Some`) or removes (`None`) a tenant's own upstream. It shares the instance
    /// upstream's pooled client and timeouts, and has no fallback.
    pub fn set_tenant_upstream(&self, tenant: &TenantId, target: Option<upstream::UpstreamTarget>) {
        let mut map = write(&self.tenant_upstreams);
        match target {
            Some(t) => {
                map.insert(
                    tenant.clone(),
                    Arc::new(self.instance_upstream().sibling(t)),
                );
            }
            None => {
                map.remove(tenant);
            }
        }
    }

    /// Covers an admitted call with this instance's leases of the rate limits and budgets
    /// shared with other instances (Postgres; see `guard::shared`). Only when a lease runs
    /// short does this wait for the database, on the blocking pool. If the database cannot
    /// be reached the call is held to this instance's own limits (and its record then
    /// cannot be committed either, so the client gets a 503).
    async fn share_quotas(&self, mut verdict: Verdict) -> Verdict {
        const ATTEMPTS: usize = 4;
        let Some(quota) = self.guard.shared_quota().cloned() else {
            return verdict;
        };
        let mut grants = Vec::new();
        for attempt in 1..=ATTEMPTS {
            let Verdict::Allow {
                decisions,
                admission,
            } = verdict
            else {
                return verdict;
            };
            let step = self.guard.take_shared(
                admission,
                decisions,
                &grants,
                Timestamp::now(),
                attempt == ATTEMPTS,
            );
            let (admission, decisions, requests) = match step {
                SharedStep::Done(v) => return v,
                SharedStep::Lease {
                    admission,
                    decisions,
                    requests,
                } => (admission, decisions, requests),
            };
            let (store, quota) = (self.store.clone(), quota.clone());
            let fetched = run_blocking(move || {
                // Grants that do not reach this call (it went away, or a later lease
                // failed) join the holdings when this is dropped.
                let mut fetched = Fetched::new(quota);
                for r in requests {
                    let grant = store.lease_quota(&r)?;
                    fetched.push(r, grant);
                }
                Ok::<_, crate::store::StoreError>(fetched)
            })
            .await;
            match fetched {
                Ok(fetched) => grants = fetched.into_grants(),
                Err(e) => {
                    tracing::warn!(error = %e, "could not lease the shared rate limits and budgets; the call is held to this instance's own limits");
                    return Verdict::Allow {
                        decisions,
                        admission,
                    };
                }
            }
            verdict = Verdict::Allow {
                decisions,
                admission,
            };
        }
        verdict
    }

    /// Runs one call end to end.
    pub async fn handle(self: &Arc<Self>, incoming: Incoming) -> Outcome {
        let enforce_started = Instant::now();
        let model = incoming.model();
        let embeddings = incoming.endpoint == endpoint::EMBEDDINGS;
        let verdict = self.guard.check(
            &RequestFacts {
                tenant_id: &incoming.tenant_id,
                key_id: &incoming.key_id,
                endpoint: if embeddings {
                    GuardEndpoint::Embeddings
                } else {
                    GuardEndpoint::ChatCompletions
                },
                model: model.as_deref(),
                body: &incoming.body,
            },
            Timestamp::now(),
        );
        let verdict = self.share_quotas(verdict).await;
        let enforcement = enforce_started.elapsed();
        let enforcement_us = micros(enforcement);
        self.enforcement.push(enforcement);
        metrics::histogram!("agv_enforcement_seconds").record(enforcement.as_secs_f64());
        let (decisions, admission) = match verdict {
            Verdict::Stop { decisions, stop } => {
                let err = ApiError {
                    code: stop.code,
                    message: stop.message.clone(),
                    retry_after_secs: stop.retry_after_secs,
                    param: None,
                };
                let mut rec = self.base_record(&incoming, model, decisions, enforcement_us);
                rec.status = err.status();
                rec.error = Some(stop.message);
                rec.blocked = true;
                rec.blocked_by = Some(stop.policy.to_string());
                rec.response_body = Some(err.body_json());
                return self
                    .commit(
                        rec,
                        incoming.received,
                        AfterCall::default(),
                        Outcome::Error(err),
                    )
                    .await;
            }
            Verdict::Allow {
                decisions,
                admission,
            } => (decisions, admission),
        };

        let stream = incoming.stream();
        let (upstream_body, strip_usage) = if stream {
            relay::ask_for_usage(&incoming)
        } else {
            (incoming.raw.clone(), false)
        };
        let path = if embeddings {
            upstream::EMBEDDINGS_PATH
        } else {
            upstream::CHAT_PATH
        };
        let mut rec = self.base_record(&incoming, model.clone(), decisions, enforcement_us);
        let upstream = self
            .tenant_upstream(&incoming.tenant_id)
            .unwrap_or_else(|| self.instance_upstream());
        let sent = upstream.post(path, upstream_body, &[]).await;
        let response = match sent {
            Ok(r) => r,
            Err((e, attempts)) => {
                rec.upstream_attempts = attempts as i32;
                rec.upstream_latency_us = Some(micros(incoming.received.elapsed()));
                return self.upstream_failed(incoming, rec, admission, e).await;
            }
        };
        rec.upstream_attempts = response.attempts as i32;
        rec.upstream = Some(response.base_url.clone());
        let status = response.response.status();

        if stream && status.is_success() {
            return Outcome::Stream(relay::start(
                self.clone(),
                incoming,
                rec,
                admission,
                response,
                strip_usage,
            ));
        }

        // A full response (or an error from the upstream, streaming or not).
        let header = |name: &str| {
            let value = response.response.headers().get(name)?;
            value.to_str().ok()
        };
        let retry_after = header("retry-after").map(str::to_owned);
        let content_type = header("content-type")
            .unwrap_or("application/json")
            .to_owned();
        let deadline =
            tokio::time::Instant::from_std(response.started + upstream.settings().total_timeout);
        let body = match upstream::read_body(response.response, upstream::MAX_BODY_BYTES, deadline)
            .await
        {
            Ok(b) => b,
            Err(e) => return self.upstream_failed(incoming, rec, admission, e).await,
        };
        rec.upstream_latency_us = Some(micros(response.started.elapsed()));

        if !status.is_success() {
            return self
                .upstream_status(incoming, rec, admission, status.as_u16(), body, retry_after)
                .await;
        }
        // Only `model` and `usage` are needed: a typed read skips building the whole tree
        // (and still proves the body is valid JSON).
        let parsed: ResponseSummary = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return self
                    .upstream_failed(
                        incoming,
                        rec,
                        admission,
                        UpstreamError::Broken(format!("the upstream sent invalid JSON: {e}")),
                    )
                    .await;
            }
        };
        let usage = Usage::from_json(parsed.usage.as_ref());
        let served_model = parsed.model.or(model);
        let after = self.settle(&mut rec, admission, usage, served_model, false);
        rec.status = 200;
        self.set_response(&mut rec, &body);
        let answer = Outcome::Full {
            status: 200,
            content_type,
            body,
            retry_after: None,
        };
        self.commit(rec, incoming.received, after, answer).await
    }

    /// The upstream answered with an error status: pass client errors through, map the
    /// rest to 502/503/504.
    async fn upstream_status(
        &self,
        incoming: Incoming,
        mut rec: CallRecord,
        admission: crate::guard::Admission,
        status: u16,
        body: Bytes,
        retry_after: Option<String>,
    ) -> Outcome {
        let redirect = (300..400).contains(&status);
        let upstream_fault = status >= 500 || status == 401 || status == 403 || redirect;
        let upstream_message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .and_then(|m| m.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
        if upstream_fault {
            let err = match status {
                _ if redirect => ApiError::new(
                    Code::UpstreamRedirect,
                    format!(
                        "the upstream answered with a redirect ({status}); agv-server never follows an upstream's redirects: set the upstream URL to the address that answers"
                    ),
                ),
                503 => ApiError::new(
                    Code::UpstreamUnavailable,
                    format!("the upstream is unavailable ({status}): {upstream_message}"),
                ),
                504 => ApiError::new(
                    Code::UpstreamTimeout,
                    format!("the upstream timed out ({status}): {upstream_message}"),
                ),
                401 | 403 => ApiError::new(
                    Code::UpstreamAuthFailed,
                    if self.tenant_upstream(&incoming.tenant_id).is_some() {
                        format!(
                            "the tenant's own upstream refused its credentials ({status}); a tenant admin must set a valid api_key with PUT /v1/upstream"
                        )
                    } else {
                        format!(
                            "the upstream refused agv-server's credentials ({status}); the operator must check AGV_UPSTREAM_API_KEY"
                        )
                    },
                ),
                _ => ApiError::new(
                    Code::UpstreamError,
                    format!("the upstream failed ({status}): {upstream_message}"),
                ),
            };
            let error = format!("upstream status {status}: {upstream_message}");
            return self
                .settle_failed(incoming, rec, admission, err, error)
                .await;
        }
        self.guard.abandon(admission);
        // A client error (bad model, bad parameter, upstream rate limit): the client sees
        // exactly what the upstream said.
        rec.status = status;
        rec.error = Some(upstream_message);
        self.set_response(&mut rec, &body);
        let answer = Outcome::Full {
            status,
            content_type: "application/json".into(),
            body,
            retry_after,
        };
        self.commit(rec, incoming.received, AfterCall::default(), answer)
            .await
    }

    async fn upstream_failed(
        &self,
        incoming: Incoming,
        rec: CallRecord,
        admission: crate::guard::Admission,
        e: UpstreamError,
    ) -> Outcome {
        let err = upstream_error(&e);
        self.settle_failed(incoming, rec, admission, err, e.to_string())
            .await
    }

    /// Settles a call that got an answer with the guard by its `usage`, and notes on `rec`
    /// the tokens, the `model` that served it, its cost and the after-the-fact cost check
    /// (dg-001 is estimated before the call; the real cost is only known after it).
    pub(crate) fn settle(
        &self,
        rec: &mut CallRecord,
        admission: crate::guard::Admission,
        usage: Usage,
        model: Option<String>,
        upstream_failed: bool,
    ) -> AfterCall {
        let result = usage.result(model.as_deref(), upstream_failed);
        let after = self.guard.complete(admission, result, Timestamp::now());
        usage.apply(rec);
        rec.model = model;
        rec.cost = after.cost;
        if after.over_cost
            && let Some(cost) = after.cost
        {
            rec.decisions.push(Decision::new(
                crate::domain::decision::policy::MAX_COST,
                crate::domain::Outcome::Block,
                format!("the call cost {cost}, more than the per-request maximum; it had already been served"),
            ));
        }
        after
    }

    /// Settles a call the upstream failed (no usage; it counts toward dg-004), records
    /// `error` as what went wrong, and answers `err`.
    async fn settle_failed(
        &self,
        incoming: Incoming,
        mut rec: CallRecord,
        admission: crate::guard::Admission,
        err: ApiError,
        error: String,
    ) -> Outcome {
        let after = self.guard.complete(
            admission,
            Usage::default().result(rec.model.as_deref(), true),
            Timestamp::now(),
        );
        rec.status = err.status();
        rec.error = Some(error);
        rec.response_body = Some(err.body_json());
        self.commit(rec, incoming.received, after, Outcome::Error(err))
            .await
    }

    /// Finishes the call ([`Proxy::finish`]); only then does `answer` go out, so an
    /// acknowledged call is never lost. If the record cannot be committed the client gets
    /// a 503 instead of an answer without evidence.
    pub(crate) async fn commit(
        &self,
        rec: CallRecord,
        received: Instant,
        after: AfterCall,
        answer: Outcome,
    ) -> Outcome {
        match self.finish(rec, received, after).await {
            Ok(()) => answer,
            Err(e) => Outcome::Error(record_failed(&e)),
        }
    }

    /// The one end of every call, unary or streamed, passed, blocked or failed: acts on
    /// what the guard noticed when it settled the call (`after`), redacts the record,
    /// counts it, commits it, and only then raises its signals and feeds its cost to the
    /// incident engine, so that an incident never points at a call that is not stored.
    pub(crate) async fn finish(
        &self,
        mut rec: CallRecord,
        received: Instant,
        after: AfterCall,
    ) -> Result<(), StoreError> {
        self.after_call(&rec.tenant_id, after).await;
        rec.latency_us = micros(received.elapsed());
        // Before anything else sees the bodies: signals and the store get them redacted.
        self.guard.redact(&mut rec);
        self.count_call(&rec);
        // Derived before the record moves to the writer; sent only once it is committed,
        // so an incident never points at a call that is not stored.
        let signals = crate::domain::incident::signals_from_call(&rec);
        let cost = rec
            .cost
            .filter(|_| !rec.blocked)
            .map(|cost| crate::incidents::CallCost {
                tenant_id: rec.tenant_id.clone(),
                key_id: rec.key_id.clone(),
                call_id: rec.id.clone(),
                end_user: rec.end_user.clone(),
                cost,
                at: rec.created_at,
            });
        self.recorder.record(rec).await?;
        for s in signals {
            self.incidents.signal(s);
        }
        if let Some(c) = cost {
            self.incidents.cost(c);
        }
        Ok(())
    }

    /// Acts on what the guard noticed after a call: a failure spike freezes the tenant.
    async fn after_call(&self, tenant: &TenantId, after: AfterCall) {
        use crate::domain::incident::{Signal, Subject, rule};
        let tenant_signal = |rule: &str, detail: String| Signal {
            tenant_id: tenant.clone(),
            rule: rule.to_owned(),
            subject: Subject::Tenant,
            at: Timestamp::now(),
            call_id: None,
            end_user: None,
            cost: None,
            detail,
            demo: false,
        };
        if let Some(spike) = after.spike {
            let reason = format!("dg-004 failure spike: {}", spike.reason());
            // The incident first, so the freeze below is noted on it.
            self.incidents
                .signal(tenant_signal(policy::FAILURE_SPIKE, reason.clone()));
            if let Err(e) = killswitch::set(
                self,
                tenant,
                None,
                crate::domain::FreezeAction::Freeze,
                "policy:dg-004",
                &reason,
            )
            .await
            {
                tracing::error!(error = %e, tenant = %tenant, "could not record the automatic freeze");
            }
        }
        if let Some(soft) = after.budget_soft_crossed {
            tracing::warn!(tenant = %tenant, period = soft.period.as_str(), spent = %soft.spent, limit = %soft.limit, "budget soft threshold crossed");
            metrics::counter!("agv_budget_soft_threshold_total", "period" => soft.period.as_str())
                .increment(1);
            self.incidents.signal(tenant_signal(
                rule::BUDGET_SOFT,
                format!(
                    "the {} budget passed its soft threshold of {}%: ${:.6} spent of ${:.2}",
                    soft.period.as_str(),
                    (soft.ratio * 100.0 * 1e6).round() / 1e6,
                    soft.spent.usd(),
                    soft.limit.usd()
                ),
            ));
        }
    }

    pub(crate) fn base_record(
        &self,
        incoming: &Incoming,
        model: Option<String>,
        decisions: Vec<Decision>,
        enforcement_us: i64,
    ) -> CallRecord {
        let (request_body, request_truncated) = truncate(&incoming.raw, self.max_stored_body);
        CallRecord {
            model,
            stream: incoming.stream(),
            end_user: incoming.attribution.end_user.clone(),
            session_id: incoming.attribution.session_id.clone(),
            metadata: incoming.attribution.metadata.clone(),
            request_body,
            request_truncated,
            request_sha256: sha256_hex(&incoming.raw),
            decisions,
            latency_us: micros(incoming.received.elapsed()),
            enforcement_us,
            ..CallRecord::blank(
                incoming.call_id.clone(),
                incoming.tenant_id.clone(),
                incoming.key_id.clone(),
                incoming.created_at,
                incoming.endpoint.to_owned(),
            )
        }
    }

    pub(crate) fn set_response(&self, rec: &mut CallRecord, body: &[u8]) {
        let (text, truncated) = truncate(body, self.max_stored_body);
        rec.response_body = Some(text);
        rec.response_truncated = truncated;
        rec.response_sha256 = Some(sha256_hex(body));
    }

    pub(crate) fn count_call(&self, rec: &CallRecord) {
        self.health
            .record(rec.created_at.millis(), rec.status, rec.latency_us);
        let decision = rec.blocked_by.clone().unwrap_or_else(|| "pass".into());
        metrics::counter!(
            "agv_calls_total",
            "tenant" => rec.tenant_id.to_string(),
            // Bounded: a model the price table does not know counts as `other`.
            "model" => rec.model.as_deref().map_or("unknown", |m| self.guard.pricing().label(m)).to_owned(),
            "status" => rec.status.to_string(),
            "decision" => decision,
        )
        .increment(1);
        if let Some(t) = rec.total_tokens {
            metrics::counter!("agv_tokens_total", "tenant" => rec.tenant_id.to_string())
                .increment(t.max(0) as u64);
        }
        if let Some(c) = rec.cost {
            metrics::counter!("agv_cost_nanodollars_total", "tenant" => rec.tenant_id.to_string())
                .increment(c.nanos().max(0) as u64);
        }
        if let Some(u) = rec.upstream_latency_us {
            metrics::histogram!("agv_upstream_latency_seconds").record(u as f64 / 1e6);
        }
    }

    /// The model list from the tenant's upstream: its own (not cached), else the
    /// instance upstream's, cached for a minute.
    pub async fn models(&self, tenant: &TenantId) -> Result<Bytes, ApiError> {
        let own = self.tenant_upstream(tenant);
        if let Some(up) = own.as_deref() {
            return fetch_models(up).await;
        }
        if let Ok(cache) = self.models_cache.lock()
            && let Some((at, body)) = cache.as_ref()
            && at.elapsed() < Duration::from_secs(60)
        {
            return Ok(body.clone());
        }
        let body = fetch_models(&self.instance_upstream()).await?;
        if let Ok(mut cache) = self.models_cache.lock() {
            *cache = Some((Instant::now(), body.clone()));
        }
        Ok(body)
    }

    /// p95 of the most recent enforcement latencies, in milliseconds.
    pub fn enforcement_p95_ms(&self) -> Option<f64> {
        self.enforcement.p95().map(|d| d.as_secs_f64() * 1000.0)
    }
}

/// The parts of an upstream response body the proxy reads.
#[derive(serde::Deserialize)]
struct ResponseSummary {
    model: Option<String>,
    usage: Option<serde_json::Value>,
}

/// Token counts from an OpenAI `usage` object.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub prompt: Option<i64>,
    pub completion: Option<i64>,
    pub cached: Option<i64>,
    pub total: Option<i64>,
}

impl Usage {
    pub fn from_json(v: Option<&serde_json::Value>) -> Self {
        let Some(u) = v.filter(|u| u.is_object()) else {
            return Self::default();
        };
        let int = |p: &str| u.pointer(p).and_then(serde_json::Value::as_i64);
        Self {
            prompt: int("/prompt_tokens"),
            completion: int("/completion_tokens"),
            cached: int("/prompt_tokens_details/cached_tokens"),
            total: int("/total_tokens"),
        }
    }

    pub fn result<'a>(&self, model: Option<&'a str>, upstream_failed: bool) -> CallResult<'a> {
        CallResult {
            model,
            prompt_tokens: self.prompt.unwrap_or(0).max(0) as u64,
            cached_tokens: self.cached.unwrap_or(0).max(0) as u64,
            completion_tokens: self.completion.unwrap_or(0).max(0) as u64,
            upstream_failed,
        }
    }

    pub fn apply(&self, rec: &mut CallRecord) {
        rec.prompt_tokens = self.prompt;
        rec.completion_tokens = self.completion;
        rec.cached_tokens = self.cached;
        rec.total_tokens = self.total.or(match (self.prompt, self.completion) {
            (Some(p), Some(c)) => Some(p + c),
            (Some(p), None) => Some(p),
            _ => None,
        });
    }
}

/// GETs the model list and checks it is JSON.
async fn fetch_models(upstream: &Upstream) -> Result<Bytes, ApiError> {
    let deadline = tokio::time::Instant::now() + upstream.settings().total_timeout;
    let resp = upstream
        .get("/models")
        .await
        .map_err(|e| upstream_error(&e))?;
    let status = resp.status();
    let body = upstream::read_body(resp, upstream::MAX_BODY_BYTES, deadline)
        .await
        .map_err(|e| upstream_error(&e))?;
    if !status.is_success() || serde_json::from_slice::<serde_json::Value>(&body).is_err() {
        return Err(ApiError::new(
            Code::UpstreamError,
            format!("the upstream's model list failed ({status})"),
        ));
    }
    Ok(body)
}

pub fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The body as text, cut to `max` bytes at a character boundary; `true` when cut.
pub fn truncate(body: &[u8], max: usize) -> (String, bool) {
    let text = String::from_utf8_lossy(body);
    if text.len() <= max {
        return (text.into_owned(), false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_owned(), true)
}

pub fn upstream_error(e: &UpstreamError) -> ApiError {
    match e {
        UpstreamError::Unreachable(m) => ApiError::new(
            Code::UpstreamUnreachable,
            format!("the upstream could not be reached: {m}"),
        ),
        UpstreamError::Timeout(m) => ApiError::new(
            Code::UpstreamTimeout,
            format!("the upstream did not answer in time: {m}"),
        ),
        UpstreamError::Broken(m) => ApiError::new(
            Code::UpstreamInvalidResponse,
            format!("the upstream's response was unusable: {m}"),
        ),
    }
}

/// The 503 for a call whose record could not be committed: it is not answered, because an
/// answer without evidence is what agv-server exists to prevent. The writer has logged
/// the cause; the message tells the client what kind of failure it is.
pub(crate) fn record_failed(e: &StoreError) -> ApiError {
    let why = match e {
        StoreError::Full(_) => {
            "agv-server's storage is full, so it could not record this call and did not answer it; retry later (its operator must free disk space, after which it resumes by itself)"
        }
        StoreError::Unavailable(_) => {
            "agv-server's database is unavailable, so it could not record this call and did not answer it; retry shortly"
        }
        _ => "agv-server could not record this call, so it was not answered; try again shortly",
    };
    ApiError::new(Code::RecordingFailed, why)
}

/// A ring of recent latencies for the protection summary. Recording is two atomic
/// operations, so the hot path takes no lock for it.
struct LatencyWindow {
    /// Microseconds; 0 = slot not filled yet.
    samples: Box<[AtomicU32]>,
    next: AtomicUsize,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        Self {
            samples: (0..Self::SIZE).map(|_| AtomicU32::new(0)).collect(),
            next: AtomicUsize::new(0),
        }
    }
}

impl LatencyWindow {
    const SIZE: usize = 1024;

    fn push(&self, d: Duration) {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % Self::SIZE;
        let micros = u32::try_from(d.as_micros()).unwrap_or(u32::MAX).max(1);
        self.samples[slot].store(micros, Ordering::Relaxed);
    }

    fn p95(&self) -> Option<Duration> {
        let mut v: Vec<u32> = self
            .samples
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|&m| m > 0)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        v.get((v.len() * 95).div_ceil(100).saturating_sub(1))
            .map(|&m| Duration::from_micros(u64::from(m)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_characters_whole() {
        for (body, max, kept, cut) in [("héllo", 2, "h", true), ("abc", 10, "abc", false)] {
            let want = (kept.to_owned(), cut);
            assert_eq!(truncate(body.as_bytes(), max), want, "{body} cut to {max}");
        }
    }

    #[test]
    fn usage_is_read_from_openai_objects() {
        let u = Usage::from_json(Some(
            &serde_json::json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "prompt_tokens_details": {"cached_tokens": 1}}),
        ));
        assert_eq!(
            (u.prompt, u.completion, u.cached, u.total),
            (Some(3), Some(4), Some(1), Some(7))
        );
        let none = Usage::from_json(Some(&serde_json::Value::Null));
        assert!(none.prompt.is_none());
    }

    #[test]
    fn the_latency_window_reports_p95() {
        let w = LatencyWindow::default();
        for i in 1..=100 {
            w.push(Duration::from_micros(i));
        }
        assert_eq!(w.p95(), Some(Duration::from_micros(95)));
    }
}
