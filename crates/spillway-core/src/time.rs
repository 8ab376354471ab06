//! Time as the engine sees it: integer microseconds since the Unix epoch, read from an
//! injected [`Clock`].
//!
//! Every algorithm takes `now` as an argument, so nothing in the engine reads the wall clock
//! itself. Production code uses [`SystemClock`]; tests use [`ManualClock`] and advance it
//! instead of sleeping. Microseconds match the resolution of Redis `TIME`, which the Redis
//! store uses so that nodes with skewed clocks still agree.

use std::sync::atomic::{AtomicU64, Ordering};

/// Microseconds since the Unix epoch (or, for durations, a span of microseconds).
pub type Micros = u64;

/// One second in [`Micros`].
pub const SECOND: Micros = 1_000_000;
/// One minute in [`Micros`].
pub const MINUTE: Micros = 60 * SECOND;
/// One hour in [`Micros`].
pub const HOUR: Micros = 60 * MINUTE;
/// One day in [`Micros`].
pub const DAY: Micros = 24 * HOUR;

/// A source of the current time, injected so tests can control it.
pub trait Clock: Send + Sync + 'static {
    /// The current time in microseconds since the Unix epoch.
    fn now(&self) -> Micros;

    /// Whether this is [`SystemClock`]: a store that reads the clock on every check can then
    /// call it directly (inlined) rather than through the trait object.
    fn is_system_clock(&self) -> bool {
        false
    }
}

/// The node's real clock: Unix time read once, then advanced by a monotonic counter.
///
/// Reading the wall clock costs about as much as a whole in-memory check, and it can step
/// backwards when NTP corrects it; a rate limiter wants neither. So the wall clock is read
/// once per process, and the time since then comes from `quanta`'s monotonic clock (the CPU's
/// time-stamp counter where it is reliable), which never steps back. Over a long uptime the
/// reading may drift from wall time by NTP's slew; only windows aligned to the calendar (a
/// fixed `1d` window) notice, by the size of that drift. Nodes that must agree take time from
/// their shared store (Redis `TIME`) instead.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

struct Anchor {
    unix: Micros,
    clock: quanta::Clock,
    /// The counter's raw reading when `unix` was read.
    start: u64,
}

fn anchor() -> &'static Anchor {
    static ANCHOR: std::sync::OnceLock<Anchor> = std::sync::OnceLock::new();
    ANCHOR.get_or_init(|| {
        let clock = quanta::Clock::new();
        let start = clock.raw();
        #[allow(clippy::disallowed_methods)] // the one sanctioned read of the wall clock
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as Micros)
            .unwrap_or(0);
        Anchor { unix, clock, start }
    })
}

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Micros {
        let a = anchor();
        // A raw counter reading scaled once to nanoseconds: the cheapest exact reading quanta
        // offers, and the hot path reads the clock on every check.
        a.unix + a.clock.delta_as_nanos(a.start, a.clock.raw()) / 1_000
    }

    fn is_system_clock(&self) -> bool {
        true
    }
}

/// A clock that only moves when told to, for deterministic tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Micros) -> Self {
        Self {
            now: AtomicU64::new(start),
        }
    }

    /// Moves the clock forward by `by` microseconds.
    pub fn advance(&self, by: Micros) {
        self.now.fetch_add(by, Ordering::SeqCst);
    }

    /// Sets the clock to `to` (which may be earlier than the current reading).
    pub fn set(&self, to: Micros) {
        self.now.store(to, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Micros {
        self.now.load(Ordering::SeqCst)
    }
}

impl<C: Clock> Clock for std::sync::Arc<C> {
    fn now(&self) -> Micros {
        (**self).now()
    }

    fn is_system_clock(&self) -> bool {
        (**self).is_system_clock()
    }
}

/// Rounds a span of microseconds up to whole seconds, as HTTP headers need.
pub fn ceil_secs(span: Micros) -> u64 {
    span.div_ceil(SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(5);
        assert_eq!(clock.now(), 5);
        clock.advance(10);
        assert_eq!(clock.now(), 15);
        clock.set(3);
        assert_eq!(clock.now(), 3);
    }

    #[test]
    fn system_clock_is_near_unix_time_and_monotonic() {
        #[allow(clippy::disallowed_methods)]
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as Micros;
        let a = SystemClock.now();
        let b = SystemClock.now();
        assert!(a.abs_diff(wall) < 5 * SECOND, "{a} vs {wall}");
        assert!(b >= a);
    }

    #[test]
    fn ceil_secs_rounds_up() {
        assert_eq!(ceil_secs(0), 0);
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(SECOND), 1);
        assert_eq!(ceil_secs(SECOND + 1), 2);
    }
}
