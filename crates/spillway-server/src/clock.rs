//! The clock the whole process runs on.
//!
//! Everything that asks "what time is it" (the engine, the sweeper, the readiness report)
//! goes through one [`ServerClock`], so the hidden `--manual-clock` flag can freeze time for
//! the integration tests and let them move it with `POST /debug/clock` instead of sleeping
//! until a rate refills.

use spillway_core::time::{Clock, ManualClock, Micros, SystemClock};
use std::sync::Arc;

/// The process's clock: the system clock in production, a manual one under test.
#[derive(Clone)]
pub struct ServerClock {
    clock: Arc<dyn Clock>,
    manual: Option<Arc<ManualClock>>,
}

impl ServerClock {
    /// The real wall clock.
    pub fn system() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            manual: None,
        }
    }

    /// A clock stopped at `start_ms` milliseconds since the epoch, moved only on request.
    pub fn manual(start_ms: u64) -> Self {
        let manual = Arc::new(ManualClock::new(start_ms.saturating_mul(1_000)));
        Self {
            clock: manual.clone(),
            manual: Some(manual),
        }
    }

    /// From the `--manual-clock` flag: manual when given, the system clock otherwise.
    pub fn from_flag(manual_start_ms: Option<u64>) -> Self {
        manual_start_ms.map_or_else(Self::system, Self::manual)
    }

    /// The clock to hand to the engine and the store.
    pub fn shared(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// The current time in microseconds since the epoch.
    pub fn now(&self) -> Micros {
        self.clock.now()
    }

    /// The manual clock, when running on one; `None` in production.
    pub fn manual_control(&self) -> Option<&ManualClock> {
        self.manual.as_deref()
    }
}

impl std::fmt::Debug for ServerClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerClock")
            .field("manual", &self.manual.is_some())
            .field("now", &self.now())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clocks_start_where_told_and_move_only_when_told() {
        let clock = ServerClock::manual(1_000);
        assert_eq!(clock.now(), 1_000_000);
        let control = clock.manual_control().expect("manual");
        control.advance(500);
        assert_eq!(clock.now(), 1_000_500);
        assert_eq!(clock.shared().now(), 1_000_500);
    }

    #[test]
    fn the_system_clock_has_no_manual_control() {
        let clock = ServerClock::from_flag(None);
        assert!(clock.manual_control().is_none());
        assert!(clock.now() > 0);
    }
}
