//! Cost of recording one decision (`Monitor::decision`, no audit file) with
//! nobody watching the console's live feed, and with one watcher that
//! drains it: the feed must cost nothing on the request path when no one
//! watches (one atomic load, no event built, no allocation).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_gateway::config::Config;
use portcullis_gateway::monitor::{DecisionEvent, Monitor};
use portcullis_gateway::session::Client;
use portcullis_identity::principal::Principal;
use portcullis_monitor::risk::RiskScore;
use portcullis_policy::{Decision, ResourceFacts, ResourceKind};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let m = Monitor::without_audit(&Config::empty());
    let client = Client::new(
        "s".into(),
        portcullis_wire::Revision::V2025_06_18,
        serde_json::Value::Null,
        serde_json::Value::Null,
        0,
        Principal::anonymous(),
        "/mcp".into(),
    );
    let resource = ResourceFacts {
        kind: ResourceKind::Tool,
        ..ResourceFacts::server("demo")
    };
    let d = Decision {
        allow: true,
        determining: vec!["default.cedar:policy0".into()],
        ..Decision::default()
    };
    let risk = RiskScore::default();
    let one = || {
        m.decision(DecisionEvent {
            client: &client,
            action: "call_tool",
            method: "tools/call",
            resource: &resource,
            decision: &d,
            policy_hash: "h",
            risk: &risk,
            args: None,
            took: Duration::from_micros(30),
        })
    };
    let mut g = c.benchmark_group("decision");
    g.bench_function("nobody watching", |b| b.iter(one));
    let mut feed = m.watch_decisions();
    g.bench_function("one watcher", |b| {
        b.iter(|| {
            one();
            // Drain what was sent so the watcher never lags.
            rt.block_on(async {
                let _ = feed.next().await;
            });
        })
    });
    drop(feed);
    g.bench_function("nobody watching again", |b| b.iter(one));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
