//! The circuit breaker on a manual clock: opening on consecutive
//! failures, fail-fast with the remaining cool-down, half-open probes,
//! doubling cool-downs with a cap, trip and reset, abandoned tickets, and
//! snapshots.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_contain::breaker::{
    Breaker, BreakerConfig, Permit, Snapshot, State, Ticket, Transition,
};

fn cfg() -> BreakerConfig {
    BreakerConfig {
        failures: 3,
        open_secs: 10,
        max_open_secs: 35,
        half_open_probes: 1,
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Fails `n` calls at `now`; returns the last transition.
fn fail(b: &Breaker, n: u32, now: Instant) -> Option<Transition> {
    let mut last = None;
    for _ in 0..n {
        let p = b.allow(now).unwrap();
        last = b.record(p, false, "timeout", now);
    }
    last
}

#[test]
fn opens_after_n_consecutive_failures_not_before() {
    let b = Breaker::new(cfg());
    let t0 = Instant::now();
    assert_eq!(fail(&b, 2, t0), None);
    assert_eq!(b.snapshot(t0).state, State::Closed);
    assert_eq!(b.allow(t0), Ok(Permit::Call));
    let tr = b.record(Permit::Call, false, "crash", t0).unwrap();
    assert_eq!(tr.to, State::Open);
    assert!(
        tr.reason.contains("3 consecutive failures"),
        "{}",
        tr.reason
    );
    assert!(tr.reason.contains("crash"), "{}", tr.reason);
    assert!(b.allow(t0).is_err());
}

#[test]
fn a_success_in_between_resets_the_count() {
    let b = Breaker::new(cfg());
    let t0 = Instant::now();
    for round in 0..5 {
        assert_eq!(fail(&b, 2, t0), None, "round {round}");
        let p = b.allow(t0).unwrap();
        assert_eq!(b.record(p, true, "", t0), None);
        assert_eq!(b.snapshot(t0).consecutive_failures, 0);
    }
    assert_eq!(b.snapshot(t0).state, State::Closed);
    // Now three in a row do open it.
    assert_eq!(fail(&b, 3, t0).map(|t| t.to), Some(State::Open));
}

#[test]
fn open_fails_fast_with_the_remaining_cool_down() {
    let b = Breaker::new(cfg());
    let t0 = Instant::now();
    fail(&b, 3, t0);
    assert_eq!(b.allow(t0), Err(secs(10)));
    assert_eq!(b.allow(t0 + secs(4)), Err(secs(6)));
    assert_eq!(
        b.allow(t0 + Duration::from_millis(9_999)),
        Err(Duration::from_millis(1))
    );
}

#[test]
fn after_the_cool_down_one_probe_goes_and_a_second_caller_waits() {
    let b = Breaker::new(cfg());
    let t0 = Instant::now();
    fail(&b, 3, t0);
    let t1 = t0 + secs(10);
    assert_eq!(b.allow(t1), Ok(Permit::Probe));
    assert_eq!(b.snapshot(t1).state, State::HalfOpen);
    assert!(
        b.allow(t1).is_err(),
        "a second concurrent caller is refused"
    );
    assert!(
        b.allow(t1 + secs(100)).is_err(),
        "still waiting on the probe"
    );
}

#[test]
fn probe_success_closes() {
    let b = Breaker::new(cfg());
    let t0 = Instant::now();
    fail(&b, 3, t0);
    let t1 = t0 + secs(10);
    let p = b.allow(t1).unwrap();
    assert_eq!(p, Permit::Probe);
    let tr = b.record(p, true, "", t1).unwrap();
    assert_eq!(tr.to, State::Closed);
    assert_eq!(b.allow(t1), Ok(Permit::Call));
    assert_eq!(b.snapshot(t1).state, State::Closed);
    // The cool-down starts from open_secs again next time.
    fail(&b, 3, t1);
    assert_eq!(b.allow(t1), Err(secs(10)));
}

#[test]
fn probe_failure_reopens_with_a_doubled_capped_cool_down() {
    let b = Breaker::new(cfg());
    let mut now = Instant::now();
    fail(&b, 3, now);
    // 10 → 20 → 35 (cap; 40 would exceed it) → 35.
    for expected in [20, 35, 35] {
        now += secs(100);
        let p = b.allow(now).unwrap();
        assert_eq!(p, Permit::Probe);
        let tr = b.record(p, false, "still down", now).unwrap();
        assert_eq!(tr.to, State::Open);
        assert!(tr.reason.contains("probe failed"), "{}", tr.reason);
        assert_eq!(b.allow(now), Err(secs(expected)));
        assert_eq!(b.allow(now + secs(expected - 1)), Err(secs(1)));
    }
    // A successful probe resets the cool-down to open_secs.
    now += secs(100);
    let p = b.allow(now).unwrap();
    assert_eq!(
        b.record(p, true, "", now).map(|t| t.to),
        Some(State::Closed)
    );
    fail(&b, 3, now);
    assert_eq!(b.allow(now), Err(secs(10)));
}

#[test]
fn max_below_open_secs_never_shortens_the_cool_down() {
    let b = Breaker::new(BreakerConfig {
        failures: 1,
        open_secs: 10,
        max_open_secs: 5,
        half_open_probes: 1,
    });
    let t0 = Instant::now();
    fail(&b, 1, t0);
    assert_eq!(b.allow(t0), Err(secs(10)));
    let t1 = t0 + secs(10);
    let p = b.allow(t1).unwrap();
    b.record(p, false, "x", t1);
    assert_eq!(b.allow(t1), Err(secs(10)));
}

#[test]
fn trip_opens_at_once_and_reset_closes() {
    let b = Breaker::new(cfg());
    let t0 = Instant::now();
    let tr = b.trip("detector: exfiltration", t0).unwrap();
    assert_eq!(tr.to, State::Open);
    assert_eq!(tr.reason, "detector: exfiltration");
    assert_eq!(b.allow(t0), Err(secs(10)));
    assert_eq!(b.trip("again", t0), None, "already open");

    let tr = b.reset().unwrap();
    assert_eq!(tr.to, State::Closed);
    assert_eq!(b.allow(t0), Ok(Permit::Call));
    assert_eq!(b.reset(), None, "already closed");
    let s = b.snapshot(t0);
    assert_eq!((s.state, s.consecutive_failures), (State::Closed, 0));

    // Reset also clears a half-open breaker and its failure count.
    fail(&b, 3, t0);
    assert_eq!(b.allow(t0 + secs(10)), Ok(Permit::Probe));
    assert_eq!(b.reset().map(|t| t.to), Some(State::Closed));
    assert_eq!(fail(&b, 2, t0), None, "count restarted from zero");
}

#[test]
fn a_dropped_ticket_frees_the_half_open_slot() {
    let b = Arc::new(Breaker::new(cfg()));
    let t0 = Instant::now();
    fail(&b, 3, t0);
    let t1 = t0 + secs(10);
    let probe = Ticket::take(&b, t1).unwrap();
    assert!(Ticket::take(&b, t1).is_err(), "slot taken");
    drop(probe); // the caller went away
                 // The next caller probes at once: the breaker did not stick half-open.
    let probe = Ticket::take(&b, t1).unwrap();
    assert_eq!(
        probe.finish(true, "", t1).map(|t| t.to),
        Some(State::Closed)
    );
    assert_eq!(b.snapshot(t1).state, State::Closed);

    // A finished ticket is not cancelled again on drop: after a failed
    // probe the breaker stays open.
    fail(&b, 3, t1);
    let t2 = t1 + secs(10);
    let probe = Ticket::take(&b, t2).unwrap();
    assert_eq!(
        probe.finish(false, "down", t2).map(|t| t.to),
        Some(State::Open)
    );
    assert_eq!(b.allow(t2), Err(secs(20)));

    // A dropped normal call changes nothing.
    let b2 = Arc::new(Breaker::new(cfg()));
    fail(&b2, 2, t0);
    drop(Ticket::take(&b2, t0).unwrap());
    assert_eq!(b2.snapshot(t0).consecutive_failures, 2);
    assert_eq!(b2.snapshot(t0).state, State::Closed);
}

#[test]
fn snapshot_reports_state_failures_and_retry() {
    let b = Breaker::new(cfg());
    let t0 = Instant::now();
    assert_eq!(
        b.snapshot(t0),
        Snapshot {
            state: State::Closed,
            consecutive_failures: 0,
            retry_in_secs: None,
            last_failure: String::new(),
        }
    );
    fail(&b, 2, t0);
    let s = b.snapshot(t0);
    assert_eq!((s.state, s.consecutive_failures), (State::Closed, 2));
    assert_eq!(s.retry_in_secs, None);
    assert_eq!(s.last_failure, "timeout");
    let p = b.allow(t0).unwrap();
    b.record(p, false, "upstream crashed", t0);
    let s = b.snapshot(t0 + secs(4));
    assert_eq!(s.state, State::Open);
    assert_eq!(s.consecutive_failures, 3);
    assert!((s.retry_in_secs.unwrap() - 6.0).abs() < 1e-6, "{s:?}");
    assert!(s.last_failure.contains("upstream crashed"), "{s:?}");
    // Past the cool-down it reports zero, not a negative number.
    assert_eq!(b.snapshot(t0 + secs(60)).retry_in_secs, Some(0.0));
    let v = serde_json::to_value(b.snapshot(t0)).unwrap();
    assert_eq!(v["state"], "open");
    b.allow(t0 + secs(10)).unwrap();
    let s = b.snapshot(t0 + secs(10));
    assert_eq!((s.state, s.retry_in_secs), (State::HalfOpen, None));
    assert_eq!(State::HalfOpen.as_str(), "half-open");
}

#[test]
fn several_half_open_probes_and_config_defaults() {
    let b = Breaker::new(BreakerConfig {
        half_open_probes: 2,
        ..cfg()
    });
    let t0 = Instant::now();
    fail(&b, 3, t0);
    let t1 = t0 + secs(10);
    assert_eq!(b.allow(t1), Ok(Permit::Probe));
    assert_eq!(b.allow(t1), Ok(Permit::Probe));
    assert!(b.allow(t1).is_err());

    let d: BreakerConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(d, BreakerConfig::default());
    assert_eq!(
        (d.failures, d.open_secs, d.max_open_secs, d.half_open_probes),
        (5, 30, 300, 1)
    );
    assert!(serde_json::from_str::<BreakerConfig>(r#"{"failure": 2}"#).is_err());
}

#[test]
fn refusing_for_tells_an_open_breaker_without_taking_a_probe() {
    let b = Breaker::new(cfg());
    let t0 = Instant::now();
    assert_eq!(b.refusing_for(t0), None, "closed");
    fail(&b, 3, t0);
    assert_eq!(b.refusing_for(t0), Some(secs(10)));
    assert_eq!(b.refusing_for(t0 + secs(4)), Some(secs(6)));
    // Asking took nothing: the cool-down's end still lets one probe through.
    assert_eq!(b.refusing_for(t0 + secs(10)), None);
    assert_eq!(b.allow(t0 + secs(10)), Ok(Permit::Probe));
    assert_eq!(b.refusing_for(t0 + secs(10)), None, "half-open");
}
