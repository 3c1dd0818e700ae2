//! Rate limits by the generic cell rate algorithm (GCRA): one timestamp
//! per key (the theoretical arrival time), no timers, exact retry-after.
//!
//! A limit is a sustained rate plus a burst. Keys are whatever the caller
//! limits on — identity, identity × tool, identity × segment, identity ×
//! policy rate class. State is sharded and bounded: idle keys whose bucket
//! has refilled are forgotten first.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::BoxFuture;
use serde::Deserialize;

use crate::store::StoreError;

/// A sustained rate with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Sustained calls per minute.
    pub per_minute: u32,
    /// Calls allowed at once above the sustained rate (at least 1).
    #[serde(default = "one")]
    pub burst: u32,
}

fn one() -> u32 {
    1
}

impl Rate {
    /// Time between two calls at the sustained rate.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(60.0 / f64::from(self.per_minute.max(1)))
    }

    /// How far ahead of schedule a caller may run (the burst).
    pub fn tolerance(&self) -> Duration {
        self.interval() * self.burst.max(1)
    }
}

const SHARDS: usize = 16;
/// Keys kept per shard before idle ones are dropped.
const SHARD_CAP: usize = 8192;

/// GCRA state for many keys under one rate each.
pub struct Limiter {
    shards: Vec<Mutex<HashMap<String, Instant>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }
}

impl Limiter {
    /// Takes one cell for `key` under `rate` at `now`: `Err` carries how
    /// long to wait before the call would be allowed.
    pub fn check(&self, key: &str, rate: Rate, now: Instant) -> Result<(), Duration> {
        let Some(shard) = self.shards.get(self.hasher.hash_one(key) as usize % SHARDS) else {
            return Ok(());
        };
        let interval = rate.interval();
        let tolerance = rate.tolerance();
        let mut m = shard.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= SHARD_CAP && !m.contains_key(key) {
            // A key whose arrival time is in the past has a full bucket:
            // forgetting it changes nothing.
            m.retain(|_, tat| *tat > now);
            if m.len() >= SHARD_CAP {
                // Still full of busy keys: refuse rather than forget a
                // limited caller (which would reset its bucket).
                return Err(interval);
            }
        }
        let tat = m.get(key).copied().unwrap_or(now).max(now);
        let next = tat + interval;
        if next > now + tolerance {
            return Err(next - now - tolerance);
        }
        m.insert(key.to_owned(), next);
        Ok(())
    }

    /// Keys currently tracked (for metrics and tests).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A GCRA limiter whose state lives in a shared store (Redis), so one limit
/// holds across every gateway replica; same semantics as [`Limiter`] (per
/// key, sustained rate plus burst, exact wait), one round trip per check.
pub trait SharedLimiter: Send + Sync + 'static {
    /// Takes one cell for `key` under `rate`: `Ok(None)` when allowed,
    /// `Ok(Some(wait))` when refused, `wait` being how long until the call
    /// would be allowed. `now` is the wall clock to decide at; `None` uses
    /// the store's own clock, the one every replica shares (prefer it: it
    /// needs no clock agreement between replicas). `Err` when the shared
    /// state cannot be reached: the caller chooses to fail open (a local
    /// [`Limiter`]) or closed.
    fn check<'a>(
        &'a self,
        key: &'a str,
        rate: Rate,
        now: Option<SystemTime>,
    ) -> BoxFuture<'a, Result<Option<Duration>, StoreError>>;
}
