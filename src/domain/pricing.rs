//! The built-in price table of upstream models and the cost of a call.
//!
//! Responsible for turning token counts into [`Money`]: list prices in USD per million
//! tokens (input, cached input, output), looked up by the exact model name or, for a dated
//! snapshot such as `gpt-4o-2024-08-06`, by the longest known base name. Operators may
//! override or add prices from configuration.
//!
//! It must never guess: a model it does not know has no cost (`None`), never a cost of
//! zero, so an unknown price is visible in the record instead of silently free. It does no
//! I/O; the table is versioned so a recorded cost can say which prices it used.

use crate::domain::{Money, ParseError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The date of the list prices below; bump it whenever a price changes.
pub const PRICE_TABLE_VERSION: &str = "2026-11-01";

/// List prices of one model in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    pub input: f64,
    /// Input tokens served from the provider's prompt cache.
    pub cached_input: f64,
    pub output: f64,
}

impl ModelPrice {
    pub const fn new(input: f64, cached_input: f64, output: f64) -> Self {
        Self {
            input,
            cached_input,
            output,
        }
    }

    fn is_valid(&self) -> bool {
        [self.input, self.cached_input, self.output]
            .iter()
            .all(|p| p.is_finite() && *p >= 0.0)
    }
}

/// OpenAI list prices (standard tier), USD per 1M tokens: input, cached input, output.
/// Models without prompt caching charge cached input at the input price.
const BUILTIN: &[(&str, ModelPrice)] = &[
    ("gpt-4o", ModelPrice::new(2.50, 1.25, 10.00)),
    ("gpt-4o-mini", ModelPrice::new(0.15, 0.075, 0.60)),
    ("gpt-4.1", ModelPrice::new(2.00, 0.50, 8.00)),
    ("gpt-4.1-mini", ModelPrice::new(0.40, 0.10, 1.60)),
    ("gpt-4.1-nano", ModelPrice::new(0.10, 0.025, 0.40)),
    ("o1", ModelPrice::new(15.00, 7.50, 60.00)),
    ("o1-mini", ModelPrice::new(1.10, 0.55, 4.40)),
    ("o3", ModelPrice::new(2.00, 0.50, 8.00)),
    ("o3-mini", ModelPrice::new(1.10, 0.55, 4.40)),
    ("o4-mini", ModelPrice::new(1.10, 0.275, 4.40)),
    ("gpt-5", ModelPrice::new(1.25, 0.125, 10.00)),
    ("gpt-5-mini", ModelPrice::new(0.25, 0.025, 2.00)),
    ("gpt-5-nano", ModelPrice::new(0.05, 0.005, 0.40)),
    ("gpt-3.5-turbo", ModelPrice::new(0.50, 0.50, 1.50)),
    ("text-embedding-3-small", ModelPrice::new(0.02, 0.02, 0.0)),
    ("text-embedding-3-large", ModelPrice::new(0.13, 0.13, 0.0)),
    ("text-embedding-ada-002", ModelPrice::new(0.10, 0.10, 0.0)),
];

/// The price table in force: the built-in list plus any configured overrides.
#[derive(Debug, Clone)]
pub struct Pricing {
    table: HashMap<String, ModelPrice>,
    version: String,
}

impl Default for Pricing {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Pricing {
    /// The built-in table of [`PRICE_TABLE_VERSION`].
    pub fn builtin() -> Self {
        Self {
            table: BUILTIN.iter().map(|(m, p)| ((*m).to_owned(), *p)).collect(),
            version: PRICE_TABLE_VERSION.to_owned(),
        }
    }

    /// The built-in table with configured prices replacing or adding models. A negative or
    /// non-finite price is rejected, naming the model.
    pub fn with_overrides(overrides: HashMap<String, ModelPrice>) -> Result<Self, ParseError> {
        let mut pricing = Self::builtin();
        for (model, price) in overrides {
            let model = model.trim();
            if model.is_empty() {
                return Err(ParseError::new("a price override needs a model name"));
            }
            if !price.is_valid() {
                return Err(ParseError::new(format!(
                    "the price of '{model}' must be non-negative numbers (USD per 1M tokens)"
                )));
            }
            pricing.table.insert(model.to_owned(), price);
            pricing.version = format!("{PRICE_TABLE_VERSION}+overrides");
        }
        Ok(pricing)
    }

    /// Which prices were used: the table version, marked when overrides are in force.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The price of `model`: the exact name, else the longest known name that the model
    /// extends with `-` and a dated or numbered suffix (`gpt-4o-2024-08-06`,
    /// `gpt-3.5-turbo-0125`). Other variants (`gpt-4o-audio-preview`) are unknown: their
    /// prices differ, and a wrong price is worse than none.
    pub fn price(&self, model: &str) -> Option<ModelPrice> {
        self.entry(model).map(|(_, p)| p)
    }

    /// The name `model` is priced under in the table (see [`Pricing::price`]), or `other`:
    /// a label from a known, bounded set, for metrics whose series a client must not be
    /// able to mint with made-up model names.
    pub fn label<'a>(&'a self, model: &str) -> &'a str {
        self.entry(model).map_or("other", |(name, _)| name)
    }

    fn entry<'a>(&'a self, model: &str) -> Option<(&'a str, ModelPrice)> {
        if let Some((name, p)) = self.table.get_key_value(model) {
            return Some((name.as_str(), *p));
        }
        let mut best: Option<(&str, ModelPrice)> = None;
        for (name, price) in &self.table {
            let Some(rest) = model.strip_prefix(name.as_str()) else {
                continue;
            };
            let dated = rest
                .strip_prefix('-')
                .is_some_and(|s| s.starts_with(|c: char| c.is_ascii_digit()));
            if dated && best.is_none_or(|(known, _)| name.len() > known.len()) {
                best = Some((name.as_str(), *price));
            }
        }
        best
    }

    /// The cost of a finished call. `cached` is the part of `prompt` served from the cache
    /// (as OpenAI reports it); `None` when the model's price is unknown.
    pub fn cost(&self, model: &str, prompt: u64, cached: u64, completion: u64) -> Option<Money> {
        let p = self.price(model)?;
        let cached = cached.min(prompt);
        Some(
            Money::for_tokens(prompt - cached, p.input)
                .saturating_add(Money::for_tokens(cached, p.cached_input))
                .saturating_add(Money::for_tokens(completion, p.output)),
        )
    }

    /// The most a call can cost before it is made: every prompt token uncached and the
    /// whole completion allowance used.
    pub fn estimate_max_cost(
        &self,
        model: &str,
        prompt_tokens: u64,
        max_completion: u64,
    ) -> Option<Money> {
        self.cost(model, prompt_tokens, 0, max_completion)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_model_names_have_their_list_price() {
        let p = Pricing::builtin();
        assert_eq!(p.price("gpt-4o"), Some(ModelPrice::new(2.5, 1.25, 10.0)));
        assert_eq!(p.price("gpt-4o-mini").map(|p| p.input), Some(0.15));
        assert_eq!(p.version(), PRICE_TABLE_VERSION);
    }

    #[test]
    fn dated_snapshots_use_the_longest_known_base_model() {
        let p = Pricing::builtin();
        assert_eq!(p.price("gpt-4o-2024-08-06"), p.price("gpt-4o"));
        assert_eq!(p.price("gpt-4o-mini-2024-07-18"), p.price("gpt-4o-mini"));
        assert_eq!(p.price("gpt-4.1-nano-2025-04-14"), p.price("gpt-4.1-nano"));
        assert_eq!(p.price("gpt-3.5-turbo-0125"), p.price("gpt-3.5-turbo"));
        assert_eq!(p.price("o3-mini-2025-01-31"), p.price("o3-mini"));
    }

    #[test]
    fn metric_labels_are_the_known_names_or_other() {
        let p = Pricing::builtin();
        assert_eq!(p.label("gpt-4o-mini"), "gpt-4o-mini");
        assert_eq!(p.label("gpt-4o-mini-2024-07-18"), "gpt-4o-mini");
        assert_eq!(p.label("gpt-4o-audio-preview"), "other");
        assert_eq!(p.label(&"x".repeat(60_000)), "other");
        let custom = Pricing::with_overrides(HashMap::from([(
            "my-finetune".to_owned(),
            ModelPrice::new(1.0, 1.0, 1.0),
        )]))
        .unwrap();
        assert_eq!(custom.label("my-finetune"), "my-finetune");
    }

    #[test]
    fn unknown_models_and_undated_variants_have_no_cost() {
        let p = Pricing::builtin();
        assert_eq!(p.cost("my-finetune", 100, 0, 100), None);
        assert_eq!(p.cost("gpt-4o-audio-preview", 100, 0, 100), None);
        assert_eq!(p.cost("gpt-4ox", 100, 0, 100), None);
        assert_eq!(p.cost("", 1, 0, 1), None);
        assert_eq!(p.estimate_max_cost("claude-3", 1, 1), None);
    }

    #[test]
    fn cost_charges_cached_prompt_tokens_at_the_cached_price() {
        let p = Pricing::builtin();
        // 1M prompt of which 400k cached, 100k completion on gpt-4o:
        // 600k * 2.5 + 400k * 1.25 + 100k * 10 = 1.5 + 0.5 + 1.0 = $3.
        assert_eq!(
            p.cost("gpt-4o", 1_000_000, 400_000, 100_000),
            Some(Money::from_usd(3.0))
        );
        // More cached than prompt is clamped rather than charging negative input.
        assert_eq!(
            p.cost("gpt-4o", 10, 50, 0),
            Some(Money::for_tokens(10, 1.25))
        );
        assert_eq!(p.cost("gpt-4o", 0, 0, 0), Some(Money::ZERO));
    }

    #[test]
    fn the_max_cost_estimate_assumes_no_cache_and_the_full_completion() {
        let p = Pricing::builtin();
        assert_eq!(
            p.estimate_max_cost("gpt-4o-mini", 1_000_000, 1_000_000),
            Some(Money::from_usd(0.75))
        );
        assert_eq!(
            p.estimate_max_cost("text-embedding-3-small", 1_000_000, 0),
            Some(Money::from_usd(0.02))
        );
    }

    #[test]
    fn overrides_replace_and_add_prices_and_reject_negative_ones() {
        let mut over = HashMap::new();
        over.insert("gpt-4o".to_owned(), ModelPrice::new(1.0, 0.5, 2.0));
        over.insert("local-llama".to_owned(), ModelPrice::new(0.0, 0.0, 0.0));
        let p = Pricing::with_overrides(over).unwrap();
        assert_eq!(p.price("gpt-4o-2024-11-20").map(|p| p.input), Some(1.0));
        assert_eq!(p.cost("local-llama", 10, 0, 10), Some(Money::ZERO));
        assert_eq!(p.version(), "2026-11-01+overrides");

        let mut bad = HashMap::new();
        bad.insert("gpt-4o".to_owned(), ModelPrice::new(-1.0, 0.0, 0.0));
        let err = Pricing::with_overrides(bad).unwrap_err();
        assert!(err.0.contains("gpt-4o"), "{err}");
    }
}
