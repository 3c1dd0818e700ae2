//! The behavioural risk score on scripted traces with a manual clock:
//! steady agents stay low, bursts of new destructive tools, rate spikes,
//! denials, errors, labelled bursts and findings raise it with the right
//! factor names, everything decays, replays are deterministic, identities
//! are independent and memory is bounded.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::Duration;

use portcullis_monitor::risk::{
    FindingSeverity, ManualClock, Outcome, RequestEvent, RiskConfig, RiskEngine, RiskScore,
    DENIALS, ERRORS, FACTORS, FINDINGS, LABELLED_BURST, NEW_TOOL, RATE, SUSPICIOUS_ARGS,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn engine() -> (Arc<ManualClock>, RiskEngine) {
    engine_with(RiskConfig::default())
}

fn engine_with(cfg: RiskConfig) -> (Arc<ManualClock>, RiskEngine) {
    let clock = Arc::new(ManualClock::new());
    let e = RiskEngine::new(cfg, clock.clone());
    (clock, e)
}

fn call(e: &RiskEngine, id: &str, tool: &str, destructive: bool) -> RiskScore {
    e.on_request(
        id,
        &RequestEvent {
            tool: Some(tool),
            destructive,
            ..RequestEvent::default()
        },
    )
}

fn names(s: &RiskScore) -> Vec<&'static str> {
    s.factors.iter().map(|f| f.name).collect()
}

fn points(s: &RiskScore, name: &str) -> u8 {
    s.factors
        .iter()
        .find(|f| f.name == name)
        .map_or(0, |f| f.points)
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

const STEADY_TOOLS: [&str; 3] = ["read_file", "search", "list_dir"];

/// One allowed call every 2 s, rotating three tools, for `dur` seconds.
fn steady(clock: &ManualClock, e: &RiskEngine, id: &str, dur: u32) -> Vec<RiskScore> {
    let mut out = Vec::new();
    for i in 0..dur / 2 {
        let s = call(e, id, STEADY_TOOLS[i as usize % 3], false);
        let o = e.on_outcome(id, Outcome::Allowed);
        out.push(s);
        out.push(o);
        clock.advance(secs(2.0));
    }
    out
}

fn check_score(s: &RiskScore) {
    assert!(s.score <= 100);
    assert!(s.factors.len() <= 3);
    assert!(s
        .factors
        .iter()
        .all(|f| f.points > 0 && FACTORS.contains(&f.name)));
    assert!(
        s.factors.windows(2).all(|w| w[0].points >= w[1].points),
        "{s:?}"
    );
}

#[test]
fn factor_names_are_stable() {
    assert_eq!(
        FACTORS,
        [
            "rate",
            "new-tool",
            "denials",
            "errors",
            "labelled-burst",
            "suspicious-args",
            "findings"
        ]
    );
}

#[test]
fn steady_agent_stays_low() {
    let (clock, e) = engine();
    let scores = steady(&clock, &e, "agent", 3600);
    assert_eq!(scores.len(), 3600);
    for (i, s) in scores.iter().enumerate() {
        check_score(s);
        assert!(s.score < 15, "step {i}: {s:?}");
        // Past warm-up only the fading first uses remain, and no rate.
        if i > 240 {
            assert_eq!(points(s, RATE), 0, "step {i}: {s:?}");
            assert!(s.score < 12, "step {i}: {s:?}");
        }
    }
    let last = scores.last().unwrap();
    assert!(last.score <= 2, "{last:?}");
}

#[test]
fn fast_but_steady_agent_is_judged_against_its_own_baseline() {
    let (clock, e) = engine();
    let mut late = Vec::new();
    for i in 0..(5 * 1800) {
        let s = call(&e, "batch", STEADY_TOOLS[i % 3], false);
        e.on_outcome("batch", Outcome::Allowed);
        if i > 5 * 180 {
            late.push(s);
        }
        clock.advance(secs(0.2));
    }
    // Five calls a second is above the floor, but it is this identity's
    // normal: once its baseline has warmed up, rate adds nothing.
    assert!(
        late.iter().all(|s| points(s, RATE) == 0 && s.score < 15),
        "{:?}",
        late.iter().max_by_key(|s| s.score)
    );
}

#[test]
fn burst_of_new_destructive_tools_scores_high() {
    // An established agent...
    let (clock, e) = engine();
    steady(&clock, &e, "agent", 600);
    assert!(e.score("agent").score < 10);
    // ...suddenly uses ten destructive tools it never used, within 5 s.
    let mut s = RiskScore::default();
    for i in 0..10 {
        s = call(&e, "agent", &format!("delete_{i}"), true);
        e.on_outcome("agent", Outcome::Allowed);
        clock.advance(secs(0.5));
    }
    check_score(&s);
    assert!(s.score >= 60, "{s:?}");
    assert_eq!(names(&s)[0], NEW_TOOL, "{s:?}");

    // The same from a brand-new identity.
    let (clock, e) = engine();
    for i in 0..10 {
        s = call(&e, "fresh", &format!("drop_table_{i}"), true);
        clock.advance(secs(0.5));
    }
    assert!(s.score >= 60, "{s:?}");
    assert_eq!(names(&s), [NEW_TOOL]);

    // Ten new read-only tools are far less alarming.
    let (clock, e) = engine();
    for i in 0..10 {
        s = call(&e, "reader", &format!("read_{i}"), false);
        clock.advance(secs(0.5));
    }
    assert!(s.score <= 20, "{s:?}");
}

#[test]
fn a_known_tool_is_not_new_again() {
    let (clock, e) = engine();
    let first = call(&e, "a", "delete_file", true);
    assert_eq!(points(&first, NEW_TOOL), 12);
    clock.advance(secs(1.0));
    let again = call(&e, "a", "delete_file", true);
    assert_eq!(points(&again, NEW_TOOL), 12);
    // A cap on remembered tools: past it, unseen tools stay "new".
    let (_, e) = engine_with(RiskConfig {
        max_tools_per_identity: 1,
        ..RiskConfig::default()
    });
    call(&e, "b", "t1", false);
    call(&e, "b", "t2", false);
    let s = call(&e, "b", "t2", false);
    assert_eq!(points(&s, NEW_TOOL), 12);
}

#[test]
fn request_rate_spikes_score() {
    // A brand-new identity doing 50 calls/s: no baseline yet, the floor rules.
    let (clock, e) = engine();
    let mut s = RiskScore::default();
    for _ in 0..250 {
        s = call(&e, "flood", "search", false);
        clock.advance(secs(0.02));
    }
    check_score(&s);
    assert_eq!(names(&s)[0], RATE, "{s:?}");
    assert!(points(&s, RATE) >= 35, "{s:?}");

    // An established agent (one call per 2 s) jumping to 10 calls/s.
    let (clock, e) = engine();
    steady(&clock, &e, "agent", 1800);
    for _ in 0..200 {
        s = call(&e, "agent", "search", false);
        e.on_outcome("agent", Outcome::Allowed);
        clock.advance(secs(0.1));
    }
    assert_eq!(names(&s)[0], RATE, "{s:?}");
    assert!(points(&s, RATE) >= 20, "{s:?}");
    // And back to normal: the rate factor fades within a minute or two.
    for _ in 0..60 {
        s = call(&e, "agent", "search", false);
        e.on_outcome("agent", Outcome::Allowed);
        clock.advance(secs(2.0));
    }
    assert_eq!(points(&s, RATE), 0, "{s:?}");
}

#[test]
fn denials_raise_the_score() {
    let (clock, e) = engine();
    steady(&clock, &e, "agent", 600);
    let before = e.score("agent").score;
    let mut s = RiskScore::default();
    for _ in 0..10 {
        call(&e, "agent", "read_file", false);
        s = e.on_outcome("agent", Outcome::Denied);
        clock.advance(secs(2.0));
    }
    check_score(&s);
    assert!(s.score >= before + 30, "{before} -> {s:?}");
    assert_eq!(names(&s)[0], DENIALS, "{s:?}");

    // One or two denials of a brand-new identity are not yet evidence.
    let (_, e) = engine();
    call(&e, "new", "x", false);
    assert_eq!(points(&e.on_outcome("new", Outcome::Denied), DENIALS), 0);
    call(&e, "new", "x", false);
    assert_eq!(points(&e.on_outcome("new", Outcome::Denied), DENIALS), 0);
    // A steady trickle of them is.
    for _ in 0..6 {
        call(&e, "new", "x", false);
        e.on_outcome("new", Outcome::Denied);
    }
    assert!(
        points(&e.score("new"), DENIALS) >= 30,
        "{:?}",
        e.score("new")
    );
}

#[test]
fn errors_raise_the_score() {
    let (clock, e) = engine();
    steady(&clock, &e, "agent", 600);
    let mut s = RiskScore::default();
    for _ in 0..20 {
        call(&e, "agent", "read_file", false);
        e.on_outcome("agent", Outcome::Allowed);
        s = e.on_outcome("agent", Outcome::Error);
        clock.advance(secs(2.0));
    }
    assert_eq!(names(&s)[0], ERRORS, "{s:?}");
    assert!(points(&s, ERRORS) >= 15, "{s:?}");
    // Errors are not denials.
    assert_eq!(points(&s, DENIALS), 0);
}

#[test]
fn labelled_bursts_raise_the_score() {
    let (clock, e) = engine();
    let labels = vec!["pii".to_owned()];
    let mut s = RiskScore::default();
    for _ in 0..40 {
        s = e.on_request(
            "exfil",
            &RequestEvent {
                tool: Some("get_customer"),
                labels: &labels,
                ..RequestEvent::default()
            },
        );
        clock.advance(secs(0.5));
    }
    assert_eq!(names(&s)[0], LABELLED_BURST, "{s:?}");
    assert!(points(&s, LABELLED_BURST) >= 10, "{s:?}");
    // Unlabelled, the same trace has no labelled-burst.
    let (clock, e) = engine();
    for _ in 0..40 {
        s = call(&e, "plain", "get_customer", false);
        clock.advance(secs(0.5));
    }
    assert_eq!(points(&s, LABELLED_BURST), 0);
}

#[test]
fn suspicious_args_and_findings_raise_the_score() {
    let (clock, e) = engine();
    let rules = ["path-traversal", "internal-address"];
    let s = e.on_request(
        "m",
        &RequestEvent {
            tool: Some("fetch"),
            suspicious: &rules,
            ..RequestEvent::default()
        },
    );
    check_score(&s);
    assert_eq!(names(&s), [SUSPICIOUS_ARGS, NEW_TOOL]);
    assert_eq!(points(&s, SUSPICIOUS_ARGS), 20);
    clock.advance(secs(1.0));
    e.on_finding("m", FindingSeverity::High);
    let s = e.on_finding("m", FindingSeverity::High);
    assert_eq!(names(&s), [FINDINGS, SUSPICIOUS_ARGS, NEW_TOOL]);
    assert_eq!(points(&s, FINDINGS), 50);
    assert!(s.score >= 70, "{s:?}");
    // Severities weigh differently.
    let (_, e) = engine();
    assert_eq!(
        points(&e.on_finding("l", FindingSeverity::Low), FINDINGS),
        3
    );
    assert_eq!(
        points(&e.on_finding("md", FindingSeverity::Medium), FINDINGS),
        10
    );
    // Suspicious-args are capped at their weight.
    let many = ["path-traversal"; 20];
    let s = e.on_request(
        "cap",
        &RequestEvent {
            suspicious: &many,
            ..RequestEvent::default()
        },
    );
    assert_eq!(points(&s, SUSPICIOUS_ARGS), 40);
}

#[test]
fn scores_decay_back_after_quiet_time() {
    let (clock, e) = engine();
    steady(&clock, &e, "agent", 600);
    let base = e.score("agent").score;
    for i in 0..10 {
        call(&e, "agent", &format!("delete_{i}"), true);
        e.on_outcome("agent", Outcome::Denied);
        e.on_finding("agent", FindingSeverity::Medium);
        clock.advance(secs(0.5));
    }
    let peak = e.score("agent").score;
    assert!(peak >= 90, "{peak}");
    // Quiet: the score only goes down, and reaches the baseline within hours.
    let mut prev = peak;
    for _ in 0..180 {
        clock.advance(secs(60.0));
        let s = e.score("agent");
        check_score(&s);
        assert!(s.score <= prev, "{prev} -> {s:?}");
        prev = s.score;
    }
    assert!(prev <= base.max(2), "{base} vs {prev}");
    // Back to normal behaviour: stays low.
    for s in steady(&clock, &e, "agent", 600) {
        assert!(s.score < 15, "{s:?}");
    }
}

#[test]
fn score_reads_do_not_change_anything() {
    let (clock, e) = engine();
    call(&e, "a", "x", true);
    let s0 = e.score("a");
    clock.advance(secs(30.0));
    let s1 = e.score("a");
    let s2 = e.score("a");
    assert_eq!(s1, s2);
    assert!(s1.score <= s0.score);
    assert_eq!(e.score("nobody"), RiskScore::default());
    assert!(!e.contains("nobody"));
    assert_eq!(e.explain("nobody"), None);
    let all = e.explain("a").unwrap();
    assert_eq!(all.len(), FACTORS.len());
    assert_eq!(all[1].name, NEW_TOOL);
    assert_eq!(all[1].points, s1.factors[0].points);
    // A clock that goes backwards changes nothing either.
    clock.set(secs(1.0));
    assert_eq!(e.score("a"), s1);
}

#[derive(Clone, Debug)]
enum Ev {
    Req {
        id: usize,
        tool: usize,
        destructive: bool,
        labelled: bool,
        suspicious: usize,
    },
    Out(usize, Outcome),
    Finding(usize, FindingSeverity),
    Score(usize),
}

fn random_trace(seed: u64, n: usize) -> Vec<(f64, Ev)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = 0.0;
    (0..n)
        .map(|_| {
            t += if rng.random_bool(0.01) {
                rng.random_range(60.0..1800.0)
            } else {
                rng.random_range(0.0..3.0)
            };
            let id = rng.random_range(0..6);
            let ev = match rng.random_range(0..10) {
                0..=5 => Ev::Req {
                    id,
                    tool: rng.random_range(0..15),
                    destructive: rng.random_bool(0.2),
                    labelled: rng.random_bool(0.2),
                    suspicious: if rng.random_bool(0.05) {
                        rng.random_range(1..4)
                    } else {
                        0
                    },
                },
                6 | 7 => Ev::Out(
                    id,
                    [
                        Outcome::Allowed,
                        Outcome::Allowed,
                        Outcome::Denied,
                        Outcome::Error,
                    ][rng.random_range(0..4)],
                ),
                8 => Ev::Finding(
                    id,
                    [
                        FindingSeverity::Low,
                        FindingSeverity::Medium,
                        FindingSeverity::High,
                    ][rng.random_range(0..3)],
                ),
                _ => Ev::Score(id),
            };
            (t, ev)
        })
        .collect()
}

const IDS: [&str; 6] = ["alice", "bob", "carol", "dave", "eve", "mallory"];
const SUS: [&str; 3] = ["path-traversal", "internal-address", "encoded-payload"];

/// Replays a trace; `only` restricts it to one identity; `peek` adds reads.
fn replay(trace: &[(f64, Ev)], only: Option<usize>, peek: bool) -> Vec<RiskScore> {
    let (clock, e) = engine();
    let labels = vec!["secret".to_owned()];
    let mut out = Vec::new();
    for (t, ev) in trace {
        clock.set(secs(*t));
        let id = match ev {
            Ev::Req { id, .. } | Ev::Out(id, _) | Ev::Finding(id, _) | Ev::Score(id) => *id,
        };
        if only.is_some_and(|o| o != id) {
            continue;
        }
        if peek {
            let _ = e.snapshot();
            let _ = e.explain(IDS[id]);
            let _ = e.score(IDS[(id + 1) % IDS.len()]);
        }
        let s = match ev {
            Ev::Req {
                tool,
                destructive,
                labelled,
                suspicious,
                ..
            } => {
                let name = format!("tool_{tool}");
                e.on_request(
                    IDS[id],
                    &RequestEvent {
                        tool: Some(&name),
                        destructive: *destructive,
                        labels: if *labelled { &labels } else { &[] },
                        suspicious: &SUS[..*suspicious],
                    },
                )
            }
            Ev::Out(_, o) => e.on_outcome(IDS[id], *o),
            Ev::Finding(_, f) => e.on_finding(IDS[id], *f),
            Ev::Score(_) => e.score(IDS[id]),
        };
        check_score(&s);
        out.push(s);
    }
    let snap = e.snapshot();
    assert!(
        snap.windows(2).all(|w| w[0].0 < w[1].0),
        "snapshot sorted by identity"
    );
    out.push(RiskScore {
        score: u8::try_from(snap.len()).unwrap(),
        factors: Vec::new(),
    });
    out
}

#[test]
fn replays_are_deterministic() {
    let trace = random_trace(0xdec1de, 5000);
    let a = replay(&trace, None, false);
    let b = replay(&trace, None, false);
    assert_eq!(a, b);
    // Reading scores, snapshots and explanations in between changes nothing.
    let c = replay(&trace, None, true);
    assert_eq!(a, c);
    // The trace is not trivial.
    assert!(
        a.iter().any(|s| s.score >= 50),
        "max {:?}",
        a.iter().map(|s| s.score).max()
    );
    assert!(a.iter().any(|s| s.score == 0));
}

#[test]
fn identities_are_independent() {
    let trace = random_trace(0x1d, 4000);
    let all = replay(&trace, None, false);
    for (id, name) in IDS.iter().enumerate() {
        let alone = replay(&trace, Some(id), false);
        let mixed: Vec<RiskScore> = trace
            .iter()
            .zip(&all)
            .filter(|((_, ev), _)| {
                matches!(ev, Ev::Req { id: i, .. } | Ev::Out(i, _) | Ev::Finding(i, _) | Ev::Score(i) if *i == id)
            })
            .map(|(_, s)| s.clone())
            .collect();
        assert_eq!(mixed, alone[..alone.len() - 1], "identity {name}");
    }
    // A loud neighbour in a scripted trace leaves a quiet one alone.
    let (clock, e) = engine();
    let (clock2, e2) = engine();
    for i in 0..300 {
        let q = call(&e, "quiet", "read_file", false);
        let q2 = call(&e2, "quiet", "read_file", false);
        assert_eq!(q, q2);
        call(&e, "loud", &format!("rm_{i}"), true);
        e.on_outcome("loud", Outcome::Denied);
        e.on_finding("loud", FindingSeverity::High);
        clock.advance(secs(1.0));
        clock2.advance(secs(1.0));
    }
    assert_eq!(e.score("loud").score, 100);
    assert!(e.score("quiet").score < 10);
}

#[test]
fn identity_count_is_bounded_and_least_recently_seen_go_first() {
    for cap in [1000, 10_000] {
        let (clock, e) = engine_with(RiskConfig {
            max_identities: cap,
            ..RiskConfig::default()
        });
        for i in 0..cap + 100 {
            call(&e, &format!("id-{i}"), "t", false);
            if i % 10 == 0 {
                call(&e, "hot", "t", false);
            }
            clock.advance(secs(0.01));
            if i % 997 == 0 {
                assert!(e.len() <= cap);
            }
        }
        let snap = e.snapshot();
        assert!(snap.len() <= cap, "{} > {cap}", snap.len());
        assert!(
            snap.len() >= cap * 3 / 4,
            "evicts in batches, not everything"
        );
        assert_eq!(e.len(), snap.len());
        assert!(e.contains("hot"));
        assert!(e.contains(&format!("id-{}", cap + 99)));
        assert!(!e.contains("id-0"));
    }
    // The tiniest cap still holds.
    let (_, e) = engine_with(RiskConfig {
        max_identities: 1,
        ..RiskConfig::default()
    });
    call(&e, "a", "t", false);
    call(&e, "b", "t", false);
    assert_eq!(e.snapshot().len(), 1);
    assert!(e.contains("b"));
    assert!(e.forget("b"));
    assert!(e.is_empty());
}

#[test]
fn config_defaults_parsing_and_validation() {
    let d = RiskConfig::default();
    assert!(d.validate().is_ok());
    assert_eq!(d.max_identities, 10_000);
    assert_eq!(d.rate_short_secs, 10.0);
    assert_eq!(d.rate_long_secs, 600.0);

    let c: RiskConfig =
        serde_json::from_str(r#"{"rate_weight": 10, "max_identities": 5}"#).unwrap();
    assert_eq!(c.rate_weight, 10.0);
    assert_eq!(c.max_identities, 5);
    assert_eq!(c.findings_weight, d.findings_weight);
    let empty: RiskConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, d);
    assert!(serde_json::from_str::<RiskConfig>(r#"{"rate_wieght": 10}"#).is_err());

    for bad in [
        r#"{"rate_short_secs": 0}"#,
        r#"{"rate_weight": -1}"#,
        r#"{"denial_ratio_low": 0.9, "denial_ratio_high": 0.5}"#,
        r#"{"outcome_alpha": 0}"#,
        r#"{"max_identities": 0}"#,
    ] {
        let c: RiskConfig = serde_json::from_str(bad).unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.to_string().starts_with("risk."), "{err}");
        // The engine still works, falling back to defaults.
        let (_, e) = engine_with(c);
        check_score(&call(&e, "a", "x", true));
    }
    let nan = RiskConfig {
        new_tool_half_life_secs: f64::NAN,
        rate_weight: f64::INFINITY,
        ..RiskConfig::default()
    };
    let (clock, e) = engine_with(nan);
    let s = call(&e, "a", "x", true);
    clock.advance(secs(5.0));
    assert_eq!(s.score, 12);
    assert!(e.score("a").score <= 12);
    // The effective config is the sanitized one.
    assert_eq!(e.config().new_tool_half_life_secs, 600.0);
}

#[test]
fn scores_serialize_for_the_console() {
    let (_, e) = engine();
    let s = call(&e, "a", "x", true);
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"score": 12, "factors": [{"name": "new-tool", "points": 12}]})
    );
    assert_eq!(serde_json::to_value(Outcome::Denied).unwrap(), "denied");
    assert_eq!(serde_json::to_value(FindingSeverity::High).unwrap(), "high");
}
