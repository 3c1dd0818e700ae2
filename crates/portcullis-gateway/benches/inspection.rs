//! Cost of the inspection stage on one call, as the gateway runs it: the
//! result message parsed out of its raw JSON, the call's rules (default
//! config: credentials redacted, personal data flagged, injection markers
//! flagged) applied, and the result written back when it changed. Inputs:
//! a small `echo` result (the per-call floor, aim ≤ 10 µs), the demo's
//! `runbook` (a redaction and two flags), and 64 KiB of ordinary text.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portcullis_gateway::inspection::{inspect_result, Asks, Inspection, InspectionCfg};
use portcullis_wire::message::raw_u64;
use portcullis_wire::Message;
use serde_json::json;

fn result(text: &str) -> Message {
    Message::response(
        raw_u64(7),
        json!({"content": [{"type": "text", "text": text}], "isError": false}),
    )
}

/// What the gateway does per result: parse, inspect, write back if changed.
fn run(rules: &portcullis_gateway::inspection::Rules, m: &Message) -> usize {
    let mut m = m.clone();
    let mut r = m.result();
    let rep = inspect_result(rules, &mut r);
    if rep.changed() {
        m.set_result(&r);
    }
    rep.dlp.findings.len() + rep.injections.len()
}

fn bench(c: &mut Criterion) {
    let insp = Inspection::new(&InspectionCfg::default(), &[]);
    let rules = insp.rules(&[], Asks::default());
    let echo = result("Echo: hi");
    let runbook = result("Runbook: deploy with `GITHUB_TOKEN=ghp_u8jzPde0IgxLd6GncfBAepfJBd0Kh8oOOL8d make release`. On-call: jane.doe@example.com, +44 20 7946 0958.");
    let mut text = String::new();
    let para = "The scheduler retries a failed job three times with exponential backoff, then marks it as dead and notifies the owning team. Metrics for each queue are exported every fifteen seconds; the dashboard shows the p50 and p99 wait time and the number of jobs in flight. ";
    while text.len() < 64 * 1024 {
        text.push_str(para);
    }
    let large = result(&text);
    assert_eq!(run(&rules, &echo), 0);
    assert_eq!(run(&rules, &runbook), 3);
    assert_eq!(run(&rules, &large), 0);

    let mut g = c.benchmark_group("inspection");
    g.bench_function("small echo result", |b| {
        b.iter(|| run(&rules, black_box(&echo)))
    });
    g.bench_function("runbook result (1 redaction, 2 flags)", |b| {
        b.iter(|| run(&rules, black_box(&runbook)))
    });
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("64 KiB ordinary result", |b| {
        b.iter(|| run(&rules, black_box(&large)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
