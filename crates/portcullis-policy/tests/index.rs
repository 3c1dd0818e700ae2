//! Seeded random checks: the sliced (indexed) decision equals the full-set
//! decision, and a set without `permit` denies everything.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use portcullis_policy::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SEGMENTS: [&str; 3] = ["seg0", "seg1", "seg2"];
const SERVERS: [&str; 3] = ["s0", "s1", "s2"];
const TOOLS: [&str; 6] = ["t0", "t1", "t2", "t3", "t4", "t5"];
const LABELS: [&str; 4] = ["confidential", "egress", "write", "public"];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn subset(rng: &mut StdRng, items: &[&str]) -> Vec<String> {
    items
        .iter()
        .filter(|_| rng.random_bool(0.3))
        .map(|s| s.to_string())
        .collect()
}

fn principal_scope(rng: &mut StdRng) -> String {
    let seg = pick(rng, &SEGMENTS);
    match rng.random_range(0..8) {
        0 => "principal == Portcullis::Agent::\"spiffe://example.org/a1\"".into(),
        1 => "principal is Portcullis::User".into(),
        2 => format!("principal in Portcullis::Segment::\"{seg}\""),
        3 => format!("principal is Portcullis::Agent in Portcullis::Segment::\"{seg}\""),
        4 => "principal == Portcullis::Anonymous::\"anonymous\"".into(),
        5 => "principal is Portcullis::LocalUser".into(),
        _ => "principal".into(),
    }
}

fn action_scope(rng: &mut StdRng) -> String {
    let a = |rng: &mut StdRng| format!("Portcullis::Action::\"{}\"", pick(rng, &ACTION_IDS));
    match rng.random_range(0..4) {
        0 => "action".into(),
        1 => format!("action in [{}, {}]", a(rng), a(rng)),
        _ => format!("action == {}", a(rng)),
    }
}

fn resource_scope(rng: &mut StdRng) -> String {
    let tool = pick(rng, &TOOLS);
    let server = pick(rng, &SERVERS);
    let seg = pick(rng, &SEGMENTS);
    match rng.random_range(0..9) {
        0 => format!("resource == Portcullis::Tool::\"{tool}\""),
        1 => format!("resource in Portcullis::Server::\"{server}\""),
        2 => format!("resource in Portcullis::Segment::\"{seg}\""),
        3 => "resource is Portcullis::Tool".into(),
        4 => "resource is Portcullis::Server".into(),
        5 => format!("resource is Portcullis::Resource in Portcullis::Server::\"{server}\""),
        6 => format!("resource == Portcullis::Server::\"{server}\""),
        7 => format!("resource == Portcullis::Resource::\"{tool}\""),
        _ => "resource".into(),
    }
}

fn condition(rng: &mut StdRng) -> String {
    let label = pick(rng, &LABELS);
    match rng.random_range(0..9) {
        0 => " when { context.session.tainted }".into(),
        1 => format!(" when {{ resource.labels.contains(\"{label}\") }}"),
        2 => " when { context.risk > 50 }".into(),
        // Overflows (an evaluation error) when risk >= 2.
        3 => " when { context.risk * 4611686018427387904 > 0 }".into(),
        4 => " unless { context.strength_level >= 2 }".into(),
        5 => format!(" when {{ context.session.labels_read.contains(\"{label}\") }}"),
        _ => String::new(),
    }
}

fn random_policy(rng: &mut StdRng, n: usize, permits: bool) -> String {
    let permit = permits && rng.random_bool(0.6);
    let mut annotations = String::new();
    if rng.random_bool(0.5) {
        annotations.push_str(&format!("@id(\"p{n}\") "));
    }
    if permit && rng.random_bool(0.3) {
        annotations.push_str(&format!(
            "@redact(\"{}\") ",
            pick(rng, &["pii", "secrets", "cards"])
        ));
    }
    if permit && rng.random_bool(0.2) {
        annotations.push_str(&format!(
            "@rate_class(\"{}\") ",
            pick(rng, &["slow", "fast"])
        ));
    }
    if permit && rng.random_bool(0.1) {
        annotations.push_str("@require_approval(\"ok?\") ");
    }
    format!(
        "{annotations}{} ({}, {}, {}){};",
        if permit { "permit" } else { "forbid" },
        principal_scope(rng),
        action_scope(rng),
        resource_scope(rng),
        condition(rng)
    )
}

/// A random valid policy set of about `n` policies (invalid ones — e.g. a
/// scope no action applies to — are dropped).
fn random_engine(rng: &mut StdRng, n: usize, permits: bool) -> Engine {
    let mut kept = Vec::new();
    for i in 0..n {
        let p = random_policy(rng, i, permits);
        if Engine::from_sources(None, &[("one.cedar".into(), p.clone())]).is_ok() {
            kept.push(p);
        }
    }
    assert!(kept.len() > n / 3, "too few valid policies: {}", kept.len());
    Engine::from_sources(None, &[("r.cedar".into(), kept.join("\n"))]).unwrap()
}

struct Owned {
    principal: PrincipalFacts,
    action: Action,
    resource: ResourceFacts,
    session: SessionFacts,
    risk: i64,
}

impl Owned {
    fn request(&self) -> Request<'_> {
        Request {
            principal: &self.principal,
            action: self.action.clone(),
            resource: &self.resource,
            arguments: None,
            method: None,
            session: &self.session,
            risk: self.risk,
            argument_findings: &[],
            now_unix: 1_700_000_000,
        }
    }
}

fn random_request(rng: &mut StdRng) -> Owned {
    let kind = match rng.random_range(0..4) {
        0 => PrincipalKind::Agent {
            spiffe_id: format!("spiffe://example.org/a{}", rng.random_range(0..3)),
            trust_domain: String::new(),
        },
        1 => PrincipalKind::User {
            iss: "https://login".into(),
            sub: format!("u{}", rng.random_range(0..2)),
            scopes: vec![],
        },
        2 => PrincipalKind::Local {
            name: "ann@desktop".into(),
        },
        _ => PrincipalKind::Anonymous,
    };
    let strength = *pick(
        rng,
        &[
            Strength::Anonymous,
            Strength::Local,
            Strength::Token,
            Strength::Certificate,
            Strength::CertificateAndToken,
        ],
    );
    let principal = PrincipalFacts {
        kind,
        user: None,
        device: None,
        strength,
        segments: subset(rng, &SEGMENTS),
    };
    let a = *pick(rng, &ACTION_IDS);
    let action = Action::from_id(a).unwrap_or_else(|| Action::Other("x/y".into()));
    let kind = *pick(
        rng,
        &[
            ResourceKind::Tool,
            ResourceKind::Resource,
            ResourceKind::Prompt,
            ResourceKind::Server,
        ],
    );
    let server = pick(rng, &SERVERS).to_string();
    let id = if kind == ResourceKind::Server {
        server.clone()
    } else {
        pick(rng, &TOOLS).to_string()
    };
    let resource = ResourceFacts {
        kind,
        id,
        server,
        segments: subset(rng, &SEGMENTS),
        labels: subset(rng, &LABELS),
        annotations: Annotations {
            destructive: [None, Some(true), Some(false)][rng.random_range(0..3)],
            ..Annotations::default()
        },
    };
    let session = SessionFacts {
        calls: rng.random_range(0..20),
        labels_read: subset(rng, &LABELS),
        tainted: rng.random_bool(0.3),
    };
    Owned {
        principal,
        action,
        resource,
        session,
        risk: *pick(rng, &[0, 1, 2, 100]),
    }
}

#[test]
fn sliced_decision_equals_full_set_decision() {
    let mut rng = StdRng::seed_from_u64(0x5eed_cafe);
    let (mut allows, mut errors, mut compared, mut evaluated, mut total) = (0, 0, 0, 0, 0);
    for _ in 0..12 {
        let engine = random_engine(&mut rng, 160, true);
        for _ in 0..250 {
            let r = random_request(&mut rng);
            let req = r.request();
            let sliced = engine.decide(&req);
            let full = engine.decide_unindexed(&req);
            assert_eq!(
                sliced,
                full,
                "request {:?}",
                (&r.principal, &r.action, &r.resource)
            );
            allows += usize::from(full.allow);
            errors += usize::from(!full.errors.is_empty());
            compared += 1;
            evaluated += engine.candidate_count(&req);
            total += engine.policy_count();
        }
    }
    // The random mix must exercise every outcome, and the index must prune.
    assert!(allows > compared / 10, "allows {allows}/{compared}");
    assert!(errors > compared / 50, "errors {errors}/{compared}");
    assert!(allows < compared * 9 / 10, "allows {allows}/{compared}");
    assert!(
        evaluated * 2 < total,
        "index evaluated {evaluated} of {total}"
    );
}

#[test]
fn a_set_without_permit_denies_every_request() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..10 {
        let engine = random_engine(&mut rng, 60, false);
        for _ in 0..300 {
            let r = random_request(&mut rng);
            let req = r.request();
            let d = engine.decide(&req);
            assert!(!d.allow, "allowed without a permit: {d:?}");
            assert_eq!(d.obligations, Obligations::default());
            assert!(!engine.decide_unindexed(&req).allow);
        }
    }
}
