//! Cost of the shadowing check across servers, on real tool lists: every
//! tool definition of the benign corpus (`tests/corpus/benign-definitions.jsonl`,
//! 31 real MCP servers from npm and PyPI, about 490 tools) offered side by
//! side, as a gateway fronting all of them would. The gateway runs the
//! check only when a list brings a new or changed definition.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portcullis_inspect::shadow::{check, Offered};
use serde_json::Value;

/// `(server, client-facing name, definition)` of every corpus tool.
fn corpus() -> Vec<(String, String, Value)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/corpus/benign-definitions.jsonl"
    );
    let text = std::fs::read_to_string(path).expect("the benign corpus (tests/corpus)");
    let mut by_server: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let (Some(tool), Some(src)) = (v.get("tool"), v["source"].as_str()) else {
            continue;
        };
        // "npm:@scope/name@1.2.3 (MIT)" → a server name the gateway accepts.
        let pkg = src.split(' ').next().unwrap();
        let name: String = pkg
            .rsplit('/')
            .next()
            .unwrap()
            .split('@')
            .next()
            .unwrap()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        by_server.entry(name).or_default().push(tool.clone());
    }
    by_server
        .into_iter()
        .flat_map(|(s, tools)| {
            tools.into_iter().map(move |t| {
                let outward = format!("{s}__{}", t["name"].as_str().unwrap_or(""));
                (s.clone(), outward, t)
            })
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let tools = corpus();
    let offered: Vec<Offered<'_>> = tools
        .iter()
        .map(|(s, o, t)| Offered {
            server: s,
            outward: o,
            tool: t,
        })
        .collect();
    let found = check(&offered);
    let mut rules: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &found {
        *rules.entry(f.rule).or_default() += 1;
    }
    eprintln!("{} tools: {rules:?}", offered.len());
    if std::env::var_os("SHADOW_DUMP").is_some() {
        for f in &found {
            eprintln!(
                "{} {}/{} -> {}/{}: {}",
                f.rule, f.server, f.tool, f.other_server, f.other_tool, f.evidence
            );
        }
    }

    let mut g = c.benchmark_group("shadow");
    g.throughput(Throughput::Elements(offered.len() as u64));
    g.bench_function("check every corpus tool (31 servers)", |b| {
        b.iter(|| check(black_box(&offered)).len())
    });
    g.finish();

    // A gateway of ordinary size: every fifth tool, about 100 in all.
    let fifth: Vec<Offered<'_>> = offered.iter().step_by(5).copied().collect();
    let mut g = c.benchmark_group("shadow");
    g.throughput(Throughput::Elements(fifth.len() as u64));
    g.bench_function("check 100 corpus tools", |b| {
        b.iter(|| check(black_box(&fifth)).len())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
