//! dg-004: the failure-spike detector.
//!
//! Responsible for noticing when a tenant's upstream calls start failing en masse: it keeps
//! a per-tenant sliding window of call outcomes and reports once when at least
//! `failure_spike_ratio` of at least `failure_spike_min_calls` calls within
//! `failure_spike_window_secs` failed, then starts the window afresh.
//!
//! It must not freeze anything itself: the caller records the freeze (actor
//! `policy:dg-004`, the report's reason) and applies it to the kill switch. Memory per
//! tenant is bounded: outcomes are counted in at most [`MAX_SLOTS`] time slots, never
//! kept one by one.

use super::Sharded;
use crate::domain::{TenantId, Timestamp};
use serde::Serialize;
use std::collections::VecDeque;

/// Time slots per window; the window's edge is accurate to `window / MAX_SLOTS`.
pub const MAX_SLOTS: u32 = 60;

/// The thresholds of the detector (from the tenant's policy).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpikeConfig {
    pub ratio: f64,
    pub min_calls: u32,
    pub window_secs: u32,
}

/// A spike was detected; the window has been reset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpikeDetected {
    pub failures: u32,
    pub calls: u32,
    pub ratio: f64,
    pub threshold_ratio: f64,
    pub window_secs: u32,
}

impl SpikeDetected {
    /// The freeze reason to record.
    pub fn reason(&self) -> String {
        format!(
            "dg-004 failure spike: {} of {} upstream calls failed within {} s ({:.0} %, threshold {:.0} %)",
            self.failures,
            self.calls,
            self.window_secs,
            self.ratio * 100.0,
            self.threshold_ratio * 100.0
        )
    }
}

#[derive(Debug, Default)]
struct Window {
    /// (slot index, calls, failures), oldest first.
    slots: VecDeque<(i64, u32, u32)>,
    calls: u32,
    failures: u32,
}

impl Window {
    fn expire(&mut self, oldest_slot: i64) {
        while let Some(&(slot, calls, failures)) = self.slots.front() {
            if slot >= oldest_slot {
                break;
            }
            self.calls -= calls;
            self.failures -= failures;
            self.slots.pop_front();
        }
    }

    fn push(&mut self, slot: i64, failed: bool) {
        let f = u32::from(failed);
        match self.slots.back_mut() {
            // A clock stepping back lands in the newest slot.
            Some(last) if last.0 >= slot => {
                last.1 += 1;
                last.2 += f;
            }
            _ => self.slots.push_back((slot, 1, f)),
        }
        self.calls += 1;
        self.failures += f;
    }
}

pub struct SpikeDetector {
    windows: Sharded<TenantId, Window>,
}

impl Default for SpikeDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl SpikeDetector {
    pub fn new() -> Self {
        Self {
            windows: Sharded::new(usize::MAX),
        }
    }

    /// Records one upstream outcome of `tenant`; reports a spike at most once, then the
    /// tenant's window starts empty.
    pub fn record(
        &self,
        tenant: &TenantId,
        failed: bool,
        cfg: SpikeConfig,
        now: Timestamp,
    ) -> Option<SpikeDetected> {
        let window_ms = i64::from(cfg.window_secs.max(1)) * 1000;
        let slot_ms = (window_ms / i64::from(MAX_SLOTS)).max(1000);
        let slot = now.millis().div_euclid(slot_ms);
        let slots_per_window = window_ms.div_euclid(slot_ms).max(1);
        self.windows.with(
            tenant,
            |_| false,
            |_| 0,
            Window::default,
            |w| {
                w.expire(slot - slots_per_window + 1);
                w.push(slot, failed);
                let ratio = f64::from(w.failures) / f64::from(w.calls);
                if failed && w.calls >= cfg.min_calls.max(1) && ratio >= cfg.ratio {
                    let detected = SpikeDetected {
                        failures: w.failures,
                        calls: w.calls,
                        ratio,
                        threshold_ratio: cfg.ratio,
                        window_secs: cfg.window_secs,
                    };
                    *w = Window::default();
                    Some(detected)
                } else {
                    None
                }
            },
        )
    }

    /// Forgets a tenant's window (e.g. after it was unfrozen, to start clean).
    pub fn reset(&self, tenant: &TenantId) {
        self.windows.update(tenant, |w| *w = Window::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Range;

    const CFG: SpikeConfig = SpikeConfig {
        ratio: 0.5,
        min_calls: 10,
        window_secs: 300,
    };

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_millis(1_700_000_000_000 + secs * 1000)
    }

    /// Records a call of `t` at each second of `secs`, failed or not, none of which may
    /// report a spike.
    fn record_quietly(d: &SpikeDetector, t: &TenantId, failed: bool, secs: Range<i64>) {
        for i in secs {
            assert_eq!(d.record(t, failed, CFG, at(i)), None, "second {i}");
        }
    }

    #[test]
    fn a_spike_is_reported_once_when_ratio_and_min_calls_are_reached() {
        let d = SpikeDetector::new();
        let t = TenantId::generate();
        record_quietly(&d, &t, false, 0..5);
        record_quietly(&d, &t, true, 5..9);
        // 10 calls, 5 failed: 50 %.
        let s = d.record(&t, true, CFG, at(9)).unwrap();
        assert_eq!((s.failures, s.calls), (5, 10));
        assert!(s.reason().contains("5 of 10"), "{}", s.reason());
        // The window was reset: the next failure alone is not a spike.
        assert_eq!(d.record(&t, true, CFG, at(10)), None);
    }

    #[test]
    fn too_few_calls_or_a_low_ratio_is_not_a_spike() {
        let d = SpikeDetector::new();
        let t = TenantId::generate();
        record_quietly(&d, &t, true, 0..9);
        let t2 = TenantId::generate();
        for i in 0..100 {
            assert_eq!(d.record(&t2, i % 3 == 0, CFG, at(i)), None);
        }
    }

    #[test]
    fn failures_older_than_the_window_are_forgotten() {
        let d = SpikeDetector::new();
        let t = TenantId::generate();
        record_quietly(&d, &t, true, 0..9);
        // Ten minutes later the old failures have left the window.
        record_quietly(&d, &t, true, 600..609);
        assert!(d.record(&t, true, CFG, at(609)).is_some());
    }

    #[test]
    fn tenants_are_independent_and_success_does_not_report() {
        let d = SpikeDetector::new();
        let (a, b) = (TenantId::generate(), TenantId::generate());
        let cfg = SpikeConfig {
            ratio: 0.1,
            min_calls: 2,
            window_secs: 60,
        };
        assert_eq!(d.record(&a, true, cfg, at(0)), None);
        assert_eq!(d.record(&b, false, cfg, at(0)), None);
        assert_eq!(d.record(&b, false, cfg, at(1)), None);
        assert!(d.record(&a, true, cfg, at(1)).is_some());
        d.reset(&a);
        assert_eq!(d.record(&a, true, cfg, at(2)), None);
    }
}
