//! Time for the risk engine, injected so scores are reproducible in tests
//! and replays.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A monotonic time source, injected so the engine is deterministic under test.
pub trait Clock: Send + Sync {
    /// Time since an arbitrary, fixed epoch; must never go backwards.
    fn now(&self) -> Duration;
}

/// The real monotonic clock, so wall-clock jumps cannot skew decay.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    /// Starts the epoch now, so `now()` reads as uptime.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

/// A clock moved by hand, so tests can script traces without sleeping.
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    /// Starts at zero, so traces read as offsets from their start.
    pub fn new() -> Self {
        Self::default()
    }

    /// Jumps to `t`, so a trace can be replayed from absolute timestamps.
    pub fn set(&self, t: Duration) {
        self.nanos.store(to_nanos(t), Ordering::SeqCst);
    }

    /// Moves forward by `d`, so a trace can be written as gaps.
    pub fn advance(&self, d: Duration) {
        let d = to_nanos(d);
        // fetch_update with a closure that always returns Some cannot fail.
        let _ = self
            .nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_add(d))
            });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

fn to_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
