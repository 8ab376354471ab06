//! Counting and logging degraded decisions.
//!
//! Every decision made without the store is counted in `spillway_degraded_decisions_total`
//! by route and mode. The route label is the route's pattern (or the Envoy domain), a value
//! from configuration, so the series stay bounded. Logging is limited to one line per mode per
//! second, which says how many similar lines were held back since the last one: an outage at
//! 50,000 requests a second writes three lines a second, not 50,000.

use parking_lot::Mutex;
use spillway_core::policy::FailureMode;
use spillway_core::store::StoreError;
use std::time::Duration;
use tokio::time::Instant;

/// Counter of decisions made without the store, by `route` and `mode`.
pub const DEGRADED_DECISIONS: &str = "spillway_degraded_decisions_total";
/// The `route` label of a request that matched no route.
pub const NO_ROUTE: &str = "(none)";
/// At most one log line per mode per this period.
pub const LOG_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Gate {
    last: Option<Instant>,
    held_back: u64,
}

/// The counters and the rate-limited log; see the module docs.
#[derive(Debug)]
pub struct Report {
    gates: [Mutex<Gate>; 3],
}

impl Default for Report {
    fn default() -> Self {
        Self::new()
    }
}

impl Report {
    /// A report with nothing logged yet.
    pub fn new() -> Self {
        metrics::describe_counter!(
            DEGRADED_DECISIONS,
            "Decisions made without the store, by route and failure mode."
        );
        Self {
            gates: Default::default(),
        }
    }

    /// Counts one degraded decision and logs it if this mode has not logged in the last
    /// [`LOG_EVERY`].
    pub fn record(&self, route: &str, mode: FailureMode, err: &StoreError) {
        metrics::counter!(DEGRADED_DECISIONS, "route" => route.to_owned(), "mode" => mode.as_str())
            .increment(1);
        if let Some(held_back) = self.admit(mode, Instant::now()) {
            let action = match mode {
                FailureMode::Open => "letting through",
                FailureMode::Closed => "refusing",
                FailureMode::Degrade => "using emergency limits",
            };
            tracing::warn!(
                error = %err, route, failure_mode = %mode, held_back,
                "rate-limit store failed; {action}"
            );
        }
    }

    /// Whether a line for `mode` may be written at `now`; if so, how many were held back.
    fn admit(&self, mode: FailureMode, now: Instant) -> Option<u64> {
        let index = match mode {
            FailureMode::Open => 0,
            FailureMode::Closed => 1,
            FailureMode::Degrade => 2,
        };
        let mut gate = self.gates[index].lock();
        match gate.last {
            Some(last) if now.saturating_duration_since(last) < LOG_EVERY => {
                gate.held_back += 1;
                None
            }
            _ => {
                gate.last = Some(now);
                Some(std::mem::take(&mut gate.held_back))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_mode_per_second_with_a_count_of_the_rest() {
        let report = Report::new();
        let t0 = Instant::now();
        assert_eq!(report.admit(FailureMode::Open, t0), Some(0));
        for _ in 0..41 {
            assert_eq!(report.admit(FailureMode::Open, t0 + LOG_EVERY / 2), None);
        }
        assert_eq!(
            report.admit(FailureMode::Closed, t0),
            Some(0),
            "modes are apart"
        );
        assert_eq!(report.admit(FailureMode::Open, t0 + LOG_EVERY), Some(41));
    }
}
