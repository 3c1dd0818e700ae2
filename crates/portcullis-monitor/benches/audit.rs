//! Audit log throughput and caller-side latency in the default `Group` sync mode.
//!
//! `cargo bench -p portcullis-monitor --bench audit`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portcullis_monitor::audit::{rotated_files, AuditConfig, AuditLog, SyncMode, Ticket};
use serde::Serialize;

/// Records per throughput iteration.
const BATCH: u64 = 20_000;

#[derive(Serialize)]
struct Identity<'a> {
    key: &'a str,
    agent: &'a str,
    user: &'a str,
    device: &'a str,
}

/// Roughly what the gateway records per decision (~400 bytes as a line).
#[derive(Serialize)]
struct Decision<'a> {
    request_id: u64,
    identity: Identity<'a>,
    server: &'a str,
    tool: &'a str,
    decision: &'a str,
    reason: &'a str,
    policy: &'a str,
    args_sha256: &'a str,
    risk: f64,
    latency_us: u64,
}

fn decision(i: u64) -> Decision<'static> {
    Decision {
        request_id: i,
        identity: Identity {
            key: "spiffe://corp.example/agent/build-bot",
            agent: "build-bot",
            user: "alice@corp.example",
            device: "laptop-4f2a",
        },
        server: "filesystem",
        tool: "read_file",
        decision: "allow",
        reason: "policy permit: read-only tools for build agents",
        policy: "policies/default.cedar#permit-read",
        args_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        risk: 0.12,
        latency_us: 87,
    }
}

struct Bench {
    dir: PathBuf,
    log: AuditLog,
    rt: tokio::runtime::Runtime,
}

impl Bench {
    fn new(tag: &str) -> Bench {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-audit-bench-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = AuditConfig::new(dir.join("audit.jsonl"), dir.join("audit.key"));
        cfg.sync = SyncMode::Group;
        let log = AuditLog::open(cfg).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Bench { dir, log, rt }
    }

    fn wait(&self, t: Ticket) {
        self.rt.block_on(self.log.durable(t)).unwrap();
    }

    /// Removes rotated files so long runs do not fill the disk.
    fn prune(&self) {
        let live = self.dir.join("audit.jsonl");
        for f in rotated_files(&live).unwrap_or_default() {
            if f != live {
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.log.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn throughput(c: &mut Criterion) {
    let line = {
        let b = Bench::new("size");
        let t = b.log.append("decision", &decision(1));
        b.wait(t);
        let text = std::fs::read_to_string(b.dir.join("audit.jsonl")).unwrap();
        text.lines().nth(1).unwrap_or_default().len()
    };
    eprintln!("decision record line: {line} bytes");

    let mut group = c.benchmark_group("audit_group_throughput");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(6));

    let bench = Bench::new("t1");
    group.bench_function("1_thread", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let mut last = Ticket(0);
                for i in 0..BATCH {
                    last = bench.log.append("decision", &decision(i));
                }
                bench.wait(last);
                total += start.elapsed();
                bench.prune();
            }
            total
        });
    });
    drop(bench);

    let bench = Bench::new("t4");
    group.bench_function("4_threads", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let last = std::thread::scope(|s| {
                    let handles: Vec<_> = (0..4u64)
                        .map(|t| {
                            let log = &bench.log;
                            s.spawn(move || {
                                let mut last = Ticket(0);
                                for i in 0..BATCH / 4 {
                                    last = log.append("decision", &decision(t * BATCH + i));
                                }
                                last
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap())
                        .max()
                        .unwrap_or(Ticket(0))
                });
                bench.wait(last);
                total += start.elapsed();
                bench.prune();
            }
            total
        });
    });
    drop(bench);
    group.finish();
}

fn latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("audit_group_latency");
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));

    let bench = Bench::new("lat");
    let mut i = 0;
    group.bench_function("append_then_durable", |b| {
        b.iter(|| {
            i += 1;
            let t = bench.log.append("decision", &decision(i));
            bench.wait(t);
        });
    });
    group.bench_function("append_only", |b| {
        b.iter(|| {
            i += 1;
            std::hint::black_box(bench.log.append("decision", &decision(i)));
        });
    });
    bench.prune();
    drop(bench);
    group.finish();
}

criterion_group!(benches, throughput, latency);
criterion_main!(benches);
