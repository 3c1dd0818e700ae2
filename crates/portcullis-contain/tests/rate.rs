//! The GCRA limiter on a manual clock: burst, exact retry-after, refill,
//! key independence, a seeded property check of the window bound, and
//! bounded state.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::{Duration, Instant};

use portcullis_contain::rate::{Limiter, Rate};

fn close(a: Duration, b: Duration) -> bool {
    a.abs_diff(b) <= Duration::from_millis(2)
}

#[test]
fn burst_then_exact_wait_then_one_per_interval() {
    let l = Limiter::default();
    let rate = Rate {
        per_minute: 60,
        burst: 3,
    };
    let t0 = Instant::now();
    for i in 0..3 {
        assert_eq!(l.check("k", rate, t0), Ok(()), "call {i} of the burst");
    }
    let wait = l.check("k", rate, t0).unwrap_err();
    assert!(close(wait, Duration::from_secs(1)), "{wait:?}");
    // A refused call takes no cell: asking again says the same.
    assert!(close(l.check("k", rate, t0).unwrap_err(), wait));
    // Half-way, the wait has halved.
    let half = t0 + Duration::from_millis(500);
    let w = l.check("k", rate, half).unwrap_err();
    assert!(close(w, Duration::from_millis(500)), "{w:?}");

    // After exactly the wait, exactly one more goes through.
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(l.check("k", rate, t1), Ok(()));
    let w = l.check("k", rate, t1).unwrap_err();
    assert!(close(w, Duration::from_secs(1)), "{w:?}");

    // Just before the next cell, still refused; at it, allowed.
    let t2 = t1 + Duration::from_millis(990);
    let w = l.check("k", rate, t2).unwrap_err();
    assert!(close(w, Duration::from_millis(10)), "{w:?}");
    assert_eq!(l.check("k", rate, t1 + Duration::from_secs(1)), Ok(()));

    // A long idle refills the whole burst, and no more.
    let t3 = t0 + Duration::from_secs(3600);
    for _ in 0..3 {
        assert_eq!(l.check("k", rate, t3), Ok(()));
    }
    assert!(l.check("k", rate, t3).is_err());
}

#[test]
fn wait_is_the_exact_gcra_value_for_odd_rates() {
    let l = Limiter::default();
    let rate = Rate {
        per_minute: 7,
        burst: 2,
    };
    let interval = Duration::from_secs_f64(60.0 / 7.0);
    assert_eq!(rate.interval(), interval);
    assert_eq!(rate.tolerance(), interval * 2);
    let t0 = Instant::now();
    assert!(l.check("k", rate, t0).is_ok());
    assert!(l.check("k", rate, t0).is_ok());
    let w = l.check("k", rate, t0).unwrap_err();
    assert!(close(w, interval), "{w:?} vs {interval:?}");
    // One second later, one second less.
    let w = l.check("k", rate, t0 + Duration::from_secs(1)).unwrap_err();
    assert!(close(w, interval - Duration::from_secs(1)), "{w:?}");
}

#[test]
fn burst_zero_means_one_and_defaults_parse() {
    let l = Limiter::default();
    let rate = Rate {
        per_minute: 60,
        burst: 0,
    };
    let t0 = Instant::now();
    assert!(l.check("k", rate, t0).is_ok());
    assert!(l.check("k", rate, t0).is_err());
    // per_minute 0 is treated as 1 per minute, not a division by zero.
    let slow = Rate {
        per_minute: 0,
        burst: 1,
    };
    assert_eq!(slow.interval(), Duration::from_secs(60));
    assert!(l.check("z", slow, t0).is_ok());
    let w = l.check("z", slow, t0).unwrap_err();
    assert!(close(w, Duration::from_secs(60)), "{w:?}");

    let r: Rate = serde_json::from_str(r#"{"per_minute": 120}"#).unwrap();
    assert_eq!(
        r,
        Rate {
            per_minute: 120,
            burst: 1
        }
    );
    assert!(serde_json::from_str::<Rate>(r#"{"per_minute": 1, "brust": 2}"#).is_err());
}

#[test]
fn keys_are_independent() {
    let l = Limiter::default();
    let rate = Rate {
        per_minute: 60,
        burst: 2,
    };
    let t0 = Instant::now();
    assert!(l.check("a", rate, t0).is_ok());
    assert!(l.check("a", rate, t0).is_ok());
    assert!(l.check("a", rate, t0).is_err());
    // "b" is untouched by "a" running dry.
    assert!(l.check("b", rate, t0).is_ok());
    assert!(l.check("b", rate, t0).is_ok());
    assert!(l.check("b", rate, t0).is_err());
    assert!(l.check("a", rate, t0).is_err());
    assert_eq!(l.len(), 2);
    assert!(!l.is_empty());
    assert!(Limiter::default().is_empty());
}

/// A tiny deterministic generator (Numerical Recipes LCG constants).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

#[test]
fn allowed_in_any_window_never_exceeds_burst_plus_rate() {
    let rates = [
        Rate {
            per_minute: 60,
            burst: 3,
        },
        Rate {
            per_minute: 600,
            burst: 1,
        },
        Rate {
            per_minute: 7,
            burst: 5,
        },
        Rate {
            per_minute: 6000,
            burst: 20,
        },
    ];
    for (seed, rate) in rates.into_iter().enumerate() {
        let mut rng = Lcg(0x5eed_0000 + seed as u64);
        let l = Limiter::default();
        let t0 = Instant::now();
        let interval = rate.interval();
        // Arrivals: random gaps from 0 to 2 intervals, with occasional
        // bursts of simultaneous calls and occasional long pauses.
        let mut t = Duration::ZERO;
        let mut allowed: Vec<Duration> = Vec::new();
        let mut refused = 0usize;
        for _ in 0..4000 {
            let r = rng.next() % 100;
            let gap = if r < 20 {
                Duration::ZERO
            } else if r < 23 {
                interval * 10
            } else {
                interval.mul_f64((rng.next() % 2000) as f64 / 1000.0)
            };
            t += gap;
            match l.check("k", rate, t0 + t) {
                Ok(()) => allowed.push(t),
                Err(w) => {
                    refused += 1;
                    assert!(w > Duration::ZERO && w <= interval, "wait {w:?}");
                }
            }
        }
        assert!(
            refused > 0 && allowed.len() > 100,
            "the check must exercise both sides"
        );
        for window in [
            Duration::ZERO,
            interval / 2,
            interval,
            interval * 3,
            interval * 10,
            interval * 57,
        ] {
            let bound = rate.burst.max(1) as usize
                + (window.as_secs_f64() / interval.as_secs_f64()).floor() as usize
                + 1;
            // Windows starting at each allowed call are the worst case.
            let mut j = 0;
            for i in 0..allowed.len() {
                if j < i {
                    j = i;
                }
                while j + 1 < allowed.len() && allowed[j + 1] - allowed[i] <= window {
                    j += 1;
                }
                let n = j - i + 1;
                assert!(
                    n <= bound,
                    "rate {rate:?}: {n} allowed within {window:?} from {:?} (bound {bound})",
                    allowed[i]
                );
            }
        }
    }
}

#[test]
fn idle_keys_are_forgotten_so_state_stays_bounded() {
    let l = Limiter::default();
    let rate = Rate {
        per_minute: 60,
        burst: 1,
    };
    let t0 = Instant::now();
    // Each key is used once, 2 s after the previous one: every earlier
    // key has a full bucket again and may be forgotten.
    let n = 16 * 8192 + 20_000;
    for i in 0..n {
        let now = t0 + Duration::from_secs(2 * i as u64);
        assert_eq!(l.check(&format!("k{i}"), rate, now), Ok(()), "key {i}");
    }
    assert!(l.len() <= 16 * 8192, "{} keys tracked", l.len());
    assert!(l.len() < n);
}
