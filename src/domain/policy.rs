//! Guardrail thresholds: the built-in defaults and a tenant's overrides.
//!
//! A tenant stores only what it changes (a JSON object of the fields below); everything
//! else falls back to the defaults, so improving a default reaches every tenant that has
//! not chosen otherwise. Unknown fields are rejected so a typo never silently does nothing.

use super::redaction::RedactionConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// dg-001: the most one request may cost, in USD (estimated before, checked after).
    pub max_cost_per_request_usd: f64,
    /// dg-002: prompt estimate plus `max_tokens`.
    pub max_tokens_per_request: u64,
    /// dg-003: per key.
    pub key_requests_per_minute: u32,
    pub key_tokens_per_minute: u64,
    /// dg-003: per tenant, all keys together.
    pub tenant_requests_per_minute: u32,
    pub tenant_tokens_per_minute: u64,
    /// dg-004: freeze the tenant when at least `failure_spike_ratio` of at least
    /// `failure_spike_min_calls` calls within `failure_spike_window_secs` failed upstream.
    pub failure_spike_enabled: bool,
    pub failure_spike_ratio: f64,
    pub failure_spike_min_calls: u32,
    pub failure_spike_window_secs: u32,
    /// dg-005.
    pub prompt_injection_enabled: bool,
    /// Budgets in USD; `None` means no budget for that period.
    pub budget_daily_usd: Option<f64>,
    pub budget_monthly_usd: Option<f64>,
    /// Fraction of a budget at which an incident signal is raised (0.8 = 80 %).
    pub budget_soft_ratio: f64,
    /// What is stored of call bodies (see `domain::redaction`): applied before storage
    /// and again to exports.
    pub redaction: RedactionConfig,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            max_cost_per_request_usd: 1.0,
            max_tokens_per_request: 16_000,
            key_requests_per_minute: 100,
            key_tokens_per_minute: 1_000_000,
            tenant_requests_per_minute: 1_000,
            tenant_tokens_per_minute: 5_000_000,
            failure_spike_enabled: true,
            failure_spike_ratio: 0.5,
            failure_spike_min_calls: 10,
            failure_spike_window_secs: 300,
            prompt_injection_enabled: true,
            budget_daily_usd: None,
            budget_monthly_usd: None,
            budget_soft_ratio: 0.8,
            redaction: RedactionConfig::default(),
        }
    }
}

impl PolicyConfig {
    /// The defaults with a tenant's stored overrides applied; rejects unknown fields and
    /// out-of-range values with a message naming the field.
    pub fn with_overrides(overrides: &serde_json::Value) -> Result<Self, super::ParseError> {
        let mut merged = serde_json::to_value(Self::default())
            .map_err(|e| super::ParseError::new(e.to_string()))?;
        let (Some(base), Some(over)) = (merged.as_object_mut(), overrides.as_object()) else {
            return Err(super::ParseError::new(
                "policy overrides must be a JSON object",
            ));
        };
        for (k, v) in over {
            if !base.contains_key(k) {
                return Err(super::ParseError::new(format!(
                    "unknown policy setting '{k}'"
                )));
            }
            base.insert(k.clone(), v.clone());
        }
        let cfg: Self = serde_json::from_value(merged)
            .map_err(|e| super::ParseError::new(format!("invalid policy setting: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), super::ParseError> {
        let err = |m: &str| Err(super::ParseError::new(m.to_owned()));
        if !(self.max_cost_per_request_usd.is_finite() && self.max_cost_per_request_usd >= 0.0) {
            return err("max_cost_per_request_usd must be a non-negative number");
        }
        if !(self.failure_spike_ratio > 0.0 && self.failure_spike_ratio <= 1.0) {
            return err("failure_spike_ratio must be in (0, 1]");
        }
        if !(self.budget_soft_ratio > 0.0 && self.budget_soft_ratio <= 1.0) {
            return err("budget_soft_ratio must be in (0, 1]");
        }
        if self.failure_spike_window_secs == 0 {
            return err("failure_spike_window_secs must be at least 1");
        }
        for (name, v) in [
            ("budget_daily_usd", self.budget_daily_usd),
            ("budget_monthly_usd", self.budget_monthly_usd),
        ] {
            if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                return Err(super::ParseError::new(format!(
                    "{name} must be a non-negative number"
                )));
            }
        }
        self.redaction.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_on_top_of_defaults() {
        let cfg = PolicyConfig::with_overrides(
            &serde_json::json!({"key_requests_per_minute": 5, "budget_daily_usd": 10.0}),
        )
        .unwrap();
        assert_eq!(cfg.key_requests_per_minute, 5);
        assert_eq!(cfg.budget_daily_usd, Some(10.0));
        assert_eq!(cfg.max_tokens_per_request, 16_000);
    }

    #[test]
    fn unknown_and_invalid_overrides_are_rejected_by_name() {
        let e = PolicyConfig::with_overrides(&serde_json::json!({"max_tokenz": 5})).unwrap_err();
        assert!(e.0.contains("max_tokenz"));
        assert!(
            PolicyConfig::with_overrides(&serde_json::json!({"failure_spike_ratio": 2.0})).is_err()
        );
        assert!(
            PolicyConfig::with_overrides(&serde_json::json!({"key_requests_per_minute": "lots"}))
                .is_err()
        );
        assert!(PolicyConfig::with_overrides(&serde_json::json!([1])).is_err());
    }
}
