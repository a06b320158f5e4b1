//! What each check decided about a call: the record that makes enforcement explainable.
//!
//! Every proxied call carries the ordered list of decisions that were taken on it — the
//! kill switch first, then each guardrail — each with the measured value and the threshold
//! it was compared with, so the timeline can say exactly why a call passed or was stopped.

use serde::{Deserialize, Serialize};

named_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum Outcome {
        Pass => "pass",
        Block => "block",
        Throttle => "throttle",
        Freeze => "freeze",
    }
}

impl Outcome {
    pub fn parse(s: &str) -> Option<Self> {
        Self::from_name(s)
    }

    /// Whether the call was stopped by this decision.
    pub fn stops(self) -> bool {
        !matches!(self, Self::Pass)
    }
}

/// Policy ids of the built-in checks.
pub mod policy {
    pub const KILL_SWITCH: &str = "killswitch";
    pub const MAX_COST: &str = "dg-001";
    pub const MAX_TOKENS: &str = "dg-002";
    pub const RATE_LIMIT: &str = "dg-003";
    pub const FAILURE_SPIKE: &str = "dg-004";
    pub const PROMPT_INJECTION: &str = "dg-005";
    pub const BUDGET: &str = "budget";
    /// The policies that stop a call: a guard's stop names one of these (the failure-spike
    /// check stops calls through the kill switch). What cost avoided counts.
    pub const STOPPING: [&str; 6] = [
        KILL_SWITCH,
        MAX_COST,
        MAX_TOKENS,
        RATE_LIMIT,
        PROMPT_INJECTION,
        BUDGET,
    ];
}

/// One check's verdict on one call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// `killswitch`, `dg-001` … `dg-005`, `budget`, or a tenant rule id.
    pub policy: String,
    pub outcome: Outcome,
    /// What was measured (tokens, dollars, requests in the window, …), when numeric.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub threshold: Option<f64>,
    /// The unit of value and threshold: "tokens", "usd", "requests/min", …
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub unit: Option<String>,
    /// A sentence a person can read.
    pub reason: String,
    /// Time the check took, in microseconds.
    #[serde(default)]
    pub micros: u32,
}

impl Decision {
    pub fn pass(policy: &str, reason: impl Into<String>) -> Self {
        Self {
            policy: policy.into(),
            outcome: Outcome::Pass,
            value: None,
            threshold: None,
            unit: None,
            reason: reason.into(),
            micros: 0,
        }
    }

    pub fn new(policy: &str, outcome: Outcome, reason: impl Into<String>) -> Self {
        Self {
            outcome,
            ..Self::pass(policy, reason)
        }
    }

    pub fn measured(mut self, value: f64, threshold: f64, unit: &str) -> Self {
        self.value = Some(value);
        self.threshold = Some(threshold);
        self.unit = Some(unit.into());
        self
    }
}
