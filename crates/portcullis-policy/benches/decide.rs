//! Decision latency as the policy set grows: 10, 1,000 and 10,000 policies
//! in total, of which at most 50 can apply to the request (the rest are
//! scoped to other tools, servers and actions, as a real deployment's
//! would be). Criterion measures the mean; a timed loop after it reports
//! p50/p99 per size (indexed and, for comparison, the unindexed full set),
//! and the cost of argument size.
//!
//! `cargo bench -p portcullis-policy --bench decide` (add `-- --quick` for a short run).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::hint::black_box;
use std::time::Instant;

use criterion::Criterion;
use portcullis_policy::*;
use serde_json::{json, Value};

const DEFAULT_PACK: &str = include_str!("../../../policies/default.cedar");

/// One generated policy, `n`, scoped to a tool/server that is not the
/// target (`s0__t0` on server `s0`, segment `team-0`).
fn unrelated(n: usize) -> String {
    let server = 1 + n % 199; // s1..s199: never the target's server
    let tool = n % 50;
    match n % 8 {
        0 => format!(
            "@id(\"u{n}\") permit (principal, action == Portcullis::Action::\"CallTool\", resource == Portcullis::Tool::\"s{server}__t{tool}\") when {{ context.strength_level >= 2 }};"
        ),
        1 => format!(
            "@id(\"u{n}\") forbid (principal, action == Portcullis::Action::\"CallTool\", resource == Portcullis::Tool::\"s{server}__t{tool}\") when {{ context.session.tainted && resource.labels.contains(\"egress\") }};"
        ),
        2 => format!(
            "@id(\"u{n}\") permit (principal in Portcullis::Segment::\"team-{server}\", action, resource in Portcullis::Server::\"s{server}\");"
        ),
        3 => format!(
            "@id(\"u{n}\") @redact(\"pii\") permit (principal, action == Portcullis::Action::\"ReadResource\", resource == Portcullis::Resource::\"file:///s{server}/{tool}\");"
        ),
        4 => format!(
            "@id(\"u{n}\") permit (principal == Portcullis::Agent::\"spiffe://example.org/agent/{n}\", action in [Portcullis::Action::\"CallTool\", Portcullis::Action::\"ListTools\"], resource in Portcullis::Server::\"s{server}\");"
        ),
        5 => format!(
            "@id(\"u{n}\") forbid (principal, action == Portcullis::Action::\"GetPrompt\", resource == Portcullis::Prompt::\"s{server}__p{tool}\") unless {{ context.strength_level >= 3 }};"
        ),
        6 => format!(
            "@id(\"u{n}\") permit (principal is Portcullis::User, action == Portcullis::Action::\"CallTool\", resource in Portcullis::Segment::\"seg-{server}\") when {{ context has user && context.user.scopes.contains(\"s{server}\") }};"
        ),
        _ => format!(
            "@id(\"u{n}\") forbid (principal, action == Portcullis::Action::\"CallTool\", resource == Portcullis::Tool::\"s{server}__t{tool}\") when {{ context.risk > 50 || context.time.hour < 6 }};"
        ),
    }
}

/// One policy, `n`, that applies to the target call (scoped to its tool,
/// server or segment, or unscoped); forbids never fire for the request.
fn relevant(n: usize) -> String {
    match n % 5 {
        0 => format!(
            "@id(\"r{n}\") permit (principal, action == Portcullis::Action::\"CallTool\", resource == Portcullis::Tool::\"s0__t0\") when {{ context.strength_level >= {} }};",
            n % 3
        ),
        1 => format!(
            "@id(\"r{n}\") forbid (principal, action == Portcullis::Action::\"CallTool\", resource in Portcullis::Server::\"s0\") when {{ context.session.calls > {} }};",
            1000 + n
        ),
        2 => format!(
            "@id(\"r{n}\") permit (principal is Portcullis::Agent, action, resource in Portcullis::Segment::\"team-0\") when {{ principal.trust_domain == \"example.org\" && context.risk < {} }};",
            50 + n
        ),
        3 => format!(
            "@id(\"r{n}\") forbid (principal, action, resource is Portcullis::Tool) when {{ resource.labels.contains(\"l{n}\") }};"
        ),
        _ => format!(
            "@id(\"r{n}\") @rate_class(\"normal\") permit (principal, action == Portcullis::Action::\"CallTool\", resource) when {{ context.session.labels_read.contains(\"l{n}\") || resource has read_only }};"
        ),
    }
}

/// A set of `total` policies of which `applicable` (≤ 50) can apply.
fn policy_set(total: usize, applicable: usize) -> Vec<(String, String)> {
    let pack_len = 5;
    let relevant_n = applicable
        .saturating_sub(pack_len)
        .min(total.saturating_sub(pack_len));
    let mut text = String::new();
    for i in 0..relevant_n {
        text.push_str(&relevant(i));
        text.push('\n');
    }
    for i in 0..total.saturating_sub(pack_len + relevant_n) {
        text.push_str(&unrelated(i));
        text.push('\n');
    }
    vec![
        ("default.cedar".into(), DEFAULT_PACK.into()),
        ("generated.cedar".into(), text),
    ]
}

struct Fixture {
    principal: PrincipalFacts,
    resource: ResourceFacts,
    session: SessionFacts,
    args: Value,
}

fn fixture(arg_fields: usize) -> Fixture {
    let principal = PrincipalFacts {
        kind: PrincipalKind::Agent {
            spiffe_id: "spiffe://example.org/agent/dev".into(),
            trust_domain: "example.org".into(),
        },
        user: Some(UserClaims {
            iss: "https://login.example.org".into(),
            sub: "ann".into(),
            client_id: Some("cli".into()),
            scopes: vec!["mcp".into(), "s0".into()],
        }),
        device: Some(DeviceFacts {
            id: "laptop-7".into(),
            managed: true,
            os: Some("linux".into()),
            patch_age_days: Some(4),
            disk_encrypted: Some(true),
            edr_running: Some(true),
        }),
        strength: Strength::CertificateAndToken,
        segments: vec!["engineering".into()],
    };
    let resource = ResourceFacts {
        kind: ResourceKind::Tool,
        id: "s0__t0".into(),
        server: "s0".into(),
        segments: vec!["team-0".into()],
        labels: vec!["internal".into()],
        annotations: Annotations {
            read_only: Some(false),
            destructive: Some(false),
            idempotent: None,
            open_world: Some(true),
        },
    };
    let session = SessionFacts {
        calls: 12,
        labels_read: vec!["internal".into()],
        tainted: false,
    };
    let mut args = serde_json::Map::new();
    for i in 0..arg_fields {
        let v = match i % 4 {
            0 => json!(format!("/srv/data/file-{i}.txt")),
            1 => json!(i),
            2 => json!(i as f64 + 0.5),
            _ => json!({"nested": [i, "x"]}),
        };
        args.insert(format!("arg{i}"), v);
    }
    Fixture {
        principal,
        resource,
        session,
        args: Value::Object(args),
    }
}

impl Fixture {
    fn request(&self) -> Request<'_> {
        Request {
            principal: &self.principal,
            action: Action::CallTool,
            resource: &self.resource,
            arguments: Some(&self.args),
            method: Some("tools/call"),
            session: &self.session,
            risk: 0,
            argument_findings: &[],
            now_unix: 1_700_000_000,
        }
    }
}

fn percentiles(mut f: impl FnMut(), iters: usize) -> (f64, f64, f64) {
    for _ in 0..iters / 10 {
        f();
    }
    let mut ns: Vec<u64> = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f();
        ns.push(t.elapsed().as_nanos() as u64);
    }
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() as f64 - 1.0) * q) as usize] as f64 / 1000.0;
    (at(0.5), at(0.99), at(0.999))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let mut c = Criterion::default().configure_from_args();
    let fx = fixture(4);
    let sizes = [10usize, 1_000, 10_000];
    let mut report = Vec::new();
    for &total in &sizes {
        let t = Instant::now();
        let engine = Engine::from_sources(None, &policy_set(total, 50)).expect("load");
        let load_ms = t.elapsed().as_secs_f64() * 1000.0;
        let req = fx.request();
        let d = engine.decide(&req);
        assert!(d.allow, "{d:?}");
        assert_eq!(d, engine.decide_unindexed(&req));
        let candidates = engine.candidate_count(&req);
        assert!(candidates <= 50, "{candidates} policies apply");
        c.bench_function(&format!("decide/indexed/{total}"), |b| {
            b.iter(|| black_box(engine.decide(black_box(&req))))
        });
        let iters = if quick { 5_000 } else { 50_000 };
        let (p50, p99, p999) = percentiles(|| drop(black_box(engine.decide(&req))), iters);
        let full_iters = (2_000_000 / total).clamp(200, iters);
        let (f50, f99, _) = percentiles(
            || drop(black_box(engine.decide_unindexed(&req))),
            full_iters,
        );
        report.push(format!(
            "| {total} | {candidates} | {p50:.1} | {p99:.1} | {p999:.1} | {f50:.1} | {f99:.1} | {load_ms:.0} |"
        ));
    }
    let mut arg_report = Vec::new();
    let engine = Engine::from_sources(None, &policy_set(1_000, 50)).expect("load");
    for fields in [0usize, 10, 100, 1_000] {
        let fx = fixture(fields);
        let req = fx.request();
        c.bench_function(&format!("decide/args/{fields}"), |b| {
            b.iter(|| black_box(engine.decide(black_box(&req))))
        });
        let (p50, p99, _) = percentiles(
            || drop(black_box(engine.decide(&req))),
            if quick { 2_000 } else { 20_000 },
        );
        arg_report.push(format!("| {fields} | {p50:.1} | {p99:.1} |"));
    }
    c.final_summary();
    println!();
    println!("policies in set | evaluated | p50 µs | p99 µs | p99.9 µs | unindexed p50 µs | unindexed p99 µs | load ms");
    println!("--- | --- | --- | --- | --- | --- | --- | ---");
    for line in report {
        println!("{line}");
    }
    println!();
    println!("argument fields (1,000 policies) | p50 µs | p99 µs");
    println!("--- | --- | ---");
    for line in arg_report {
        println!("{line}");
    }
}
