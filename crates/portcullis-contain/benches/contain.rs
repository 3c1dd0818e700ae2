//! The per-request containment hot path: the quarantine / kill switch
//! verdict (nobody quarantined, 10,000 others quarantined, the caller
//! itself quarantined), a rate limit check, an in-flight slot, and a
//! breaker allow + record. The aim: all of it under 5 µs p50 a request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_contain::breaker::{Breaker, BreakerConfig};
use portcullis_contain::concurrency::InFlight;
use portcullis_contain::rate::{Limiter, Rate};
use portcullis_contain::{now_unix, Containment, Mode, Quarantine, Subject, Target, TargetKind};

const ID: &str = "w=spiffe://corp/ns/prod/sa/agent-a;u=https://idp.corp#alice";

fn subject() -> Subject<'static> {
    Subject {
        identity: ID,
        agent: Some("spiffe://corp/ns/prod/sa/agent-a"),
        user: Some("https://idp.corp#alice"),
        device: Some("device-0042"),
        session: Some("3f7a9c1e-5b2d-4e8f-9a6b-0c1d2e3f4a5b"),
    }
}

fn quarantine(kind: TargetKind, value: String, now: u64) -> Quarantine {
    Quarantine {
        target: Target::new(kind, value),
        mode: Mode::DenyAll,
        reason: "bench".into(),
        by: "admin:bench".into(),
        created_at: now,
        expires_at: None,
    }
}

fn verdict(c: &mut Criterion) {
    let now = now_unix();
    let s = subject();
    let mut g = c.benchmark_group("verdict");

    let empty = Containment::in_memory();
    g.bench_function("no_quarantines", |b| {
        b.iter(|| black_box(empty.verdict(black_box(&s), now)))
    });

    let crowded = Containment::in_memory();
    let kinds = [
        TargetKind::Identity,
        TargetKind::Agent,
        TargetKind::User,
        TargetKind::Device,
        TargetKind::Session,
    ];
    for i in 0..10_000usize {
        let kind = kinds[i % kinds.len()];
        crowded.enforce(quarantine(kind, format!("other-{i}"), now));
    }
    assert_eq!(crowded.quarantines.list(now).len(), 10_000);
    assert_eq!(crowded.verdict(&s, now), portcullis_contain::Verdict::Clear);
    g.bench_function("10k_other_quarantines", |b| {
        b.iter(|| black_box(crowded.verdict(black_box(&s), now)))
    });

    crowded.enforce(quarantine(
        TargetKind::User,
        "https://idp.corp#alice".into(),
        now,
    ));
    assert_eq!(crowded.verdict(&s, now).mode(), Some(Mode::DenyAll));
    g.bench_function("subject_quarantined", |b| {
        b.iter(|| black_box(crowded.verdict(black_box(&s), now)))
    });
    g.finish();
}

fn limits(c: &mut Criterion) {
    let mut g = c.benchmark_group("limits");

    let limiter = Limiter::default();
    let generous = Rate {
        per_minute: u32::MAX,
        burst: 1_000_000,
    };
    let t0 = Instant::now();
    // Other keys present, as on a busy gateway.
    for i in 0..1_000 {
        limiter
            .check(&format!("{ID}|tool-{i}"), generous, t0)
            .unwrap();
    }
    let key = format!("{ID}|tools/call");
    let mut tick = 0u64;
    g.bench_function("rate_check", |b| {
        b.iter(|| {
            tick += 1;
            let now = t0 + Duration::from_micros(tick);
            black_box(limiter.check(black_box(&key), generous, now)).unwrap();
        })
    });

    let inflight = InFlight::default();
    let held: Vec<_> = (0..8).map(|_| inflight.acquire(ID, 64).unwrap()).collect();
    g.bench_function("inflight_acquire_drop", |b| {
        b.iter(|| {
            let slot = inflight.acquire(black_box(ID), 64);
            black_box(slot.is_some());
            drop(slot);
        })
    });
    drop(held);

    let breaker = Arc::new(Breaker::new(BreakerConfig::default()));
    g.bench_function("breaker_allow_record", |b| {
        b.iter(|| {
            let now = Instant::now();
            let p = breaker.allow(now).unwrap();
            black_box(breaker.record(p, true, "", now));
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = verdict, limits
}
criterion_main!(benches);
