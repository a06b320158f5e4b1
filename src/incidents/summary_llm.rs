//! AI-written incident narratives, when the operator configured an LLM
//! (`llm_base_url`, any OpenAI-compatible API, called through async-openai).
//!
//! When an incident opens, an `incident_summary` job is queued (so a slow or failing model
//! never holds up the engine); the job writes a short narrative from the incident's
//! stored facts and stores it as a `summary` event with `{"ai_written": true, "model": …}`
//! in `after`. The narrative is shown beside the deterministic template summary, never
//! instead of it. Without `llm_base_url` nothing here is started and nothing is queued.

use crate::domain::incident::{Applied, EventKind, IncidentEvent};
use crate::domain::{IncidentId, TenantId, Timestamp};
use crate::jobs::{EnqueueOptions, Job, WeakQueue};
use crate::store::{DynStore, run_blocking};
use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    CreateChatCompletionRequestArgs,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

pub const INCIDENT_SUMMARY: &str = "incident_summary";
/// One try and three retries.
pub const SUMMARY_ATTEMPTS: u32 = 4;
pub const LLM_TIMEOUT: Duration = Duration::from_secs(30);
const SIGNALS_SHOWN: u32 = 20;
const MAX_NARRATIVE_CHARS: usize = 4000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payload {
    tenant_id: TenantId,
    incident_id: IncidentId,
}

/// Writes narratives with the configured model.
pub struct Narrator {
    store: DynStore,
    queue: WeakQueue,
    client: Client<OpenAIConfig>,
    model: String,
}

impl Narrator {
    pub fn new(
        store: DynStore,
        queue: WeakQueue,
        base_url: &str,
        api_key: Option<&str>,
        model: &str,
    ) -> Result<Self, String> {
        let mut config = OpenAIConfig::new().with_api_base(base_url);
        if let Some(k) = api_key {
            config = config.with_api_key(k);
        }
        let http = crate::outbound::builder()
            .timeout(LLM_TIMEOUT)
            .build()
            .map_err(|e| format!("could not build the LLM client: {e}"))?;
        Ok(Self {
            store,
            queue,
            client: Client::with_config(config).with_http_client(http),
            model: model.to_owned(),
        })
    }

    /// Runs one `incident_summary` job; an error is retried by the queue.
    pub async fn write(self: Arc<Self>, job: Job) -> Result<(), String> {
        let p: Payload = serde_json::from_value(job.payload)
            .map_err(|e| format!("the summary job's payload is not valid: {e}"))?;
        let store = self.store.clone();
        let (t, id) = (p.tenant_id.clone(), p.incident_id.clone());
        let (incident, signals, events) = run_blocking(move || {
            let incident = store.get_incident(Some(&t), &id)?;
            let signals = store.incident_signals(Some(&t), &id, SIGNALS_SHOWN)?;
            let events = store.incident_events(Some(&t), &id)?;
            Ok::<_, crate::store::StoreError>((incident, signals, events))
        })
        .await
        .map_err(|e| format!("could not read the incident: {e}"))?;
        let facts = serde_json::json!({
            "title": incident.title,
            "rule": incident.rule,
            "subject": incident.subject,
            "status": incident.status,
            "severity": incident.severity,
            "first_signal_at": incident.first_signal_at.to_rfc3339(),
            "last_signal_at": incident.last_signal_at.to_rfc3339(),
            "signals": incident.signal_count,
            "calls": incident.call_count,
            "end_users": incident.end_user_count,
            "cost_usd": incident.cost.usd(),
            "template_summary": super::timeline::summary(&incident, &events),
            "signal_details": signals.iter().map(|s| &s.detail).collect::<Vec<_>>(),
        });
        let request = CreateChatCompletionRequestArgs::default()
            .model(self.model.clone())
            .messages([
                ChatCompletionRequestSystemMessage::from(
                    "You write the narrative of an incident in an LLM gateway for the on-call engineer: three to five plain sentences saying what happened, who was affected and what to check next. Use only the facts given; do not invent numbers.",
                )
                .into(),
                ChatCompletionRequestUserMessage::from(facts.to_string()).into(),
            ])
            .build()
            .map_err(|e| format!("could not build the LLM request: {e}"))?;
        let response = tokio::time::timeout(LLM_TIMEOUT, self.client.chat().create(request))
            .await
            .map_err(|_| format!("the LLM did not answer within {} s", LLM_TIMEOUT.as_secs()))?
            .map_err(|e| format!("the LLM call failed: {e}"))?;
        let text = response
            .choices
            .first()
            .and_then(|c| c.message.content.clone())
            .map(|t| {
                t.trim()
                    .chars()
                    .take(MAX_NARRATIVE_CHARS)
                    .collect::<String>()
            })
            .filter(|t| !t.is_empty())
            .ok_or("the LLM answered without any text")?;
        let model = response.model.clone();
        let store = self.store.clone();
        run_blocking(move || {
            store.add_incident_event(
                &p.tenant_id,
                &p.incident_id,
                EventKind::Summary,
                &format!("llm:{model}"),
                Some(serde_json::json!({"ai_written": true, "model": model})),
                Some(&text),
                Timestamp::now(),
            )
        })
        .await
        .map_err(|e| format!("could not store the narrative: {e}"))?;
        Ok(())
    }
}

impl super::Listener for Narrator {
    fn applied(&self, applied: &[Applied]) {
        let Some(queue) = self.queue.upgrade() else {
            return;
        };
        for a in applied.iter().filter(|a| a.opened) {
            let payload = Payload {
                tenant_id: a.tenant_id.clone(),
                incident_id: a.incident_id.clone(),
            };
            let Ok(payload) = serde_json::to_value(&payload) else {
                continue;
            };
            let opts = EnqueueOptions {
                max_attempts: SUMMARY_ATTEMPTS,
                run_at: None,
            };
            if let Err(e) = queue.enqueue(INCIDENT_SUMMARY, payload, opts) {
                tracing::error!(error = %e, incident = %a.incident_id, "the incident narrative was not queued");
            }
        }
    }
}

/// The newest AI-written narrative among an incident's events, for the API.
pub fn latest_narrative(events: &[IncidentEvent]) -> Option<serde_json::Value> {
    events
        .iter()
        .rev()
        .filter(|e| e.kind == EventKind::Summary)
        .find(|e| {
            e.after
                .as_ref()
                .is_some_and(|a| a["ai_written"] == serde_json::Value::Bool(true))
        })
        .map(|e| {
            serde_json::json!({
                "text": e.note,
                "ai_written": true,
                "model": e.after.as_ref().map(|a| a["model"].clone()),
                "at": e.at,
            })
        })
}
