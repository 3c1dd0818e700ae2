//! Round trips of the shared store on loopback, against a real
//! redis-server this bench starts: a put (one entry, stored and published),
//! a batch of 100, a list of 10 and of 100 entries, and a global GCRA check
//! (Redis clock, and caller clock). What a replica pays when it writes
//! containment state, reads it at start, or checks a global rate limit.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use common::{cfg, RedisServer};
use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_contain::rate::{Rate, SharedLimiter};
use portcullis_contain::store::Entry;
use portcullis_contain::StateStore;
use portcullis_redis::RedisStore;
use serde_json::json;

fn value(i: u64) -> serde_json::Value {
    json!({
        "target": {"kind": "agent", "value": format!("spiffe://corp/ns/prod/sa/agent-{i}")},
        "mode": "deny-all",
        "reason": "bench",
        "by": "admin:bench",
        "created_at": 1_767_225_600u64,
    })
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(RedisServer::start(&[]));
    let store = rt
        .block_on(RedisStore::connect(&cfg(&server.url())))
        .unwrap();
    // A second replica listening, as in a real deployment (the publish
    // reaches a subscriber).
    let _other = rt
        .block_on(RedisStore::connect(&cfg(&server.url())))
        .unwrap();
    for (ns, n) in [("list10", 10), ("list100", 100)] {
        let entries = (0..n)
            .map(|i| Entry {
                key: format!("agent:spiffe://corp/ns/prod/sa/agent-{i}"),
                value: value(i),
                expires_at: None,
            })
            .collect();
        rt.block_on(store.put_many(ns, entries)).unwrap();
    }

    let mut g = c.benchmark_group("redis");
    g.measurement_time(Duration::from_secs(4));
    let mut i = 0u64;
    g.bench_function("put", |b| {
        b.iter(|| {
            i += 1;
            let key = format!("agent:spiffe://corp/ns/prod/sa/agent-{}", i % 1000);
            rt.block_on(store.put("put", &key, value(i), None)).unwrap()
        })
    });
    g.bench_function("put_many_100", |b| {
        b.iter(|| {
            let entries = (0..100)
                .map(|i| Entry {
                    key: format!("k{i}"),
                    value: value(i),
                    expires_at: None,
                })
                .collect();
            rt.block_on(store.put_many("batch", entries)).unwrap()
        })
    });
    g.bench_function("list_10", |b| {
        b.iter(|| black_box(rt.block_on(store.list("list10")).unwrap()))
    });
    g.bench_function("list_100", |b| {
        b.iter(|| black_box(rt.block_on(store.list("list100")).unwrap()))
    });
    let rate = Rate {
        per_minute: 60_000_000,
        burst: 1_000_000,
    };
    g.bench_function("gcra_check_redis_clock", |b| {
        b.iter(|| black_box(rt.block_on(store.check("id", rate, None)).unwrap()))
    });
    g.bench_function("gcra_check_caller_clock", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(store.check("id2", rate, Some(SystemTime::now())))
                    .unwrap(),
            )
        })
    });
    g.finish();
}

criterion_group!(redis_benches, benches);
criterion_main!(redis_benches);
