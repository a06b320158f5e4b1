//! Money in nano-dollars (10⁻⁹ USD) as a 64-bit integer: exact sums, no float drift, and
//! room for nine billion dollars. Prices are per million tokens, so the cost of one token
//! at $0.075 per 1M is 75 nano-dollars — still an integer.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Money(i64);

pub const NANOS_PER_USD: i64 = 1_000_000_000;

impl Money {
    pub const ZERO: Money = Money(0);

    pub fn from_nanos(n: i64) -> Self {
        Self(n)
    }

    pub fn nanos(self) -> i64 {
        self.0
    }

    /// From a dollar amount (e.g. a threshold typed by a person); rounds to the nano-dollar.
    pub fn from_usd(usd: f64) -> Self {
        Self((usd * NANOS_PER_USD as f64).round() as i64)
    }

    pub fn usd(self) -> f64 {
        self.0 as f64 / NANOS_PER_USD as f64
    }

    /// `tokens` at `usd_per_million` dollars per million tokens.
    pub fn for_tokens(tokens: u64, usd_per_million: f64) -> Self {
        // usd_per_million dollars / 1e6 tokens = usd_per_million * 1e3 nanos per token.
        Self((tokens as f64 * usd_per_million * 1_000.0).round() as i64)
    }

    pub fn saturating_add(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }

    pub fn saturating_sub(self, other: Money) -> Money {
        Money(self.0.saturating_sub(other.0))
    }

    /// Dollars for people to read, with the precision the amount needs: cents from a
    /// dollar up, four decimals below (as the console shows money), "under $0.0001" for
    /// less.
    pub fn readable(self) -> String {
        let v = self.usd();
        if v >= 1.0 {
            return format!("${v:.2}");
        }
        if v < 0.000_05 {
            return "under $0.0001".into();
        }
        let s = format!("{v:.4}");
        let trimmed = s.trim_end_matches('0');
        // At least cents: $0.50, not $0.5.
        let decimals = trimmed.split_once('.').map_or(0, |(_, d)| d.len());
        if decimals < 2 {
            format!("${v:.2}")
        } else {
            format!("${trimmed}")
        }
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${:.6}", self.usd())
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${:.6}", self.usd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_costs_are_exact_in_nanos() {
        assert_eq!(Money::for_tokens(1_000_000, 2.5), Money::from_usd(2.5));
        assert_eq!(Money::for_tokens(1, 0.075).nanos(), 75);
        assert_eq!(Money::from_usd(1.0).nanos(), NANOS_PER_USD);
        assert_eq!(format!("{}", Money::from_usd(0.25)), "$0.250000");
    }
}
