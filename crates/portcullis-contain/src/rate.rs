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

    /// Takes up to `cells` cells at once (a lease a replica then spends
    /// locally, see [`Leases`]); the grant says how many, or how long to
    /// wait when none. The default takes one through [`Self::check`].
    fn take<'a>(
        &'a self,
        key: &'a str,
        rate: Rate,
        cells: u32,
        now: Option<SystemTime>,
    ) -> BoxFuture<'a, Result<Grant, StoreError>> {
        let _ = cells;
        Box::pin(async move {
            Ok(match self.check(key, rate, now).await? {
                None => Grant {
                    cells: 1,
                    wait: Duration::ZERO,
                },
                Some(wait) => Grant { cells: 0, wait },
            })
        })
    }
}

/// What a shared limiter granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Cells taken (0: refused).
    pub cells: u32,
    /// When refused, how long until one cell is free.
    pub wait: Duration,
}

/// How many cells a replica takes from a shared limiter at once: a quarter
/// of the burst, 1 to 16. A burst of 1–7 leases one cell at a time (exact,
/// one round trip per call); larger bursts spend most calls locally.
pub fn lease_size(rate: Rate) -> u32 {
    (rate.burst / 4).clamp(1, 16)
}

/// How long leased cells may wait to be spent: the interval, within 100 ms
/// and 1 s. Cells are counted in the shared state when leased, so the
/// global limit holds; spending them later can shift at most this much of
/// the rate in time. Unspent cells are dropped (the limit errs strict).
pub fn lease_for(rate: Rate) -> Duration {
    rate.interval()
        .clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Cells leased from a shared limiter and not spent yet, per key: most
/// calls under a large burst then cost no round trip. Bounded like
/// [`Limiter`]: expired leases are dropped first, and a full shard takes
/// no new lease (calls then go to the shared limiter each time).
pub struct Leases {
    shards: Vec<Mutex<HashMap<String, (u32, Instant)>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Leases {
    fn default() -> Self {
        Leases {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }
}

impl Leases {
    fn shard(&self, key: &str) -> Option<&Mutex<HashMap<String, (u32, Instant)>>> {
        self.shards.get(self.hasher.hash_one(key) as usize % SHARDS)
    }

    /// Spends one leased cell of `key`, if one is left and still valid.
    pub fn spend(&self, key: &str, now: Instant) -> bool {
        let Some(shard) = self.shard(key) else {
            return false;
        };
        let mut m = shard.lock().unwrap_or_else(|e| e.into_inner());
        match m.get_mut(key) {
            Some((left, until)) if *left > 0 && *until > now => {
                *left -= 1;
                if *left == 0 {
                    m.remove(key);
                }
                true
            }
            Some(_) => {
                m.remove(key);
                false
            }
            None => false,
        }
    }

    /// Keeps `cells` more cells of `key`, to be spent before `until`.
    pub fn lease(&self, key: &str, cells: u32, now: Instant, until: Instant) {
        if cells == 0 {
            return;
        }
        let Some(shard) = self.shard(key) else {
            return;
        };
        let mut m = shard.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= SHARD_CAP && !m.contains_key(key) {
            m.retain(|_, (_, u)| *u > now);
            if m.len() >= SHARD_CAP {
                return;
            }
        }
        m.insert(key.to_owned(), (cells, until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_spent_once_each_and_expire() {
        let l = Leases::default();
        let t0 = Instant::now();
        assert!(!l.spend("k", t0), "nothing leased");
        l.lease("k", 2, t0, t0 + Duration::from_millis(100));
        assert!(l.spend("k", t0));
        assert!(l.spend("k", t0 + Duration::from_millis(50)));
        assert!(
            !l.spend("k", t0 + Duration::from_millis(50)),
            "two cells, two calls"
        );
        l.lease("k", 5, t0, t0 + Duration::from_millis(100));
        assert!(!l.spend("k", t0 + Duration::from_millis(100)), "expired");
        assert!(!l.spend("k", t0), "an expired lease is dropped, not kept");
        l.lease("other", 0, t0, t0 + Duration::from_secs(1));
        assert!(!l.spend("other", t0), "a lease of nothing");
    }

    #[test]
    fn lease_size_and_lifetime_follow_the_rate() {
        let r = |per_minute, burst| Rate { per_minute, burst };
        assert_eq!(lease_size(r(60, 1)), 1);
        assert_eq!(lease_size(r(60, 7)), 1);
        assert_eq!(lease_size(r(600, 20)), 5);
        assert_eq!(lease_size(r(60_000, 1000)), 16);
        assert_eq!(lease_for(r(6, 1)), Duration::from_secs(1));
        assert_eq!(lease_for(r(60_000, 1)), Duration::from_millis(100));
        assert_eq!(lease_for(r(240, 1)), Duration::from_millis(250));
    }
}
