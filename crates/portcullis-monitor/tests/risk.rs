//! The behavioural risk score on scripted traces with a manual clock:
//! steady agents stay low, bursts of new destructive tools, rate spikes,
//! denials, errors, labelled bursts and findings raise it with the right
//! factor names, everything decays, replays are deterministic, identities
//! are independent and memory is bounded; exported states survive a
//! restart without forgetting a baseline or laundering an alarm.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::Duration;

use portcullis_monitor::risk::{
    Baseline, Clock, FindingSeverity, ManualClock, Outcome, RequestEvent, RiskConfig, RiskEngine,
    RiskScore, DENIALS, ERRORS, FACTORS, FINDINGS, LABELLED_BURST, NEW_TOOL, RATE, SUSPICIOUS_ARGS,
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

/// Wall-clock time (Unix seconds) of the exports below.
const T0: u64 = 1_700_000_000;

/// Five allowed calls a second for `dur` seconds, rotating three tools.
fn busy(clock: &ManualClock, e: &RiskEngine, id: &str, dur: u32) -> Vec<RiskScore> {
    let mut out = Vec::new();
    for i in 0..dur as usize * 5 {
        out.push(call(e, id, STEADY_TOOLS[i % 3], false));
        e.on_outcome(id, Outcome::Allowed);
        clock.advance(secs(0.2));
    }
    out
}

/// A new process: its monotonic clock starts again at 0.
fn restarted(saved: &[(String, Baseline)], now_unix: u64) -> (Arc<ManualClock>, RiskEngine) {
    let (clock, e) = engine();
    assert_eq!(e.import_baselines(saved.to_vec(), now_unix), saved.len());
    (clock, e)
}

#[test]
fn a_baseline_survives_a_restart() {
    let (clock, e) = engine();
    clock.set(secs(1000.0));
    busy(&clock, &e, "batch", 3600);
    let saved = e.export_baselines(T0);
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].0, "batch");
    assert_eq!(saved[0].1.at_unix, T0);
    assert_eq!(saved[0].1.tools.len(), 3);

    // Back 30 s later: the age carries over (plus the gap)...
    let (clock2, e2) = restarted(&saved, T0 + 30);
    let b = e2.export_baseline("batch", T0 + 30).unwrap();
    assert!((b.age_secs - 3630.0).abs() < 1.0, "{b:?}");
    assert!((b.idle_secs - 30.2).abs() < 0.01, "{b:?}");
    assert_eq!(e2.export_baseline("nobody", T0 + 30), None);
    // ...and so does the baseline: five calls a second is still normal, and
    // the tools it always used are not new.
    for s in busy(&clock2, &e2, "batch", 120) {
        check_score(&s);
        assert_eq!(points(&s, RATE), 0, "{s:?}");
        assert_eq!(points(&s, NEW_TOOL), 0, "{s:?}");
        assert!(s.score < 5, "{s:?}");
    }
    // A tool it never used still is.
    assert_eq!(points(&call(&e2, "batch", "drop_db", true), NEW_TOOL), 12);

    // Without the import the same two minutes look like a new identity
    // flooding with new tools.
    let (clock3, e3) = engine();
    let fresh = busy(&clock3, &e3, "batch", 120);
    let last = fresh.last().unwrap();
    assert!(points(last, RATE) >= 10, "{last:?}");
    assert!(fresh.iter().any(|s| points(s, NEW_TOOL) >= 12));
}

#[test]
fn a_restart_counts_as_a_quiet_gap() {
    let (clock, e) = engine();
    clock.set(secs(500.0));
    busy(&clock, &e, "batch", 1800);
    let saved = e.export_baselines(T0);

    // Back after a minute: the baseline holds.
    let (c1, e1) = restarted(&saved, T0 + 60);
    let s1 = busy(&c1, &e1, "batch", 60);
    assert!(s1.iter().all(|s| points(s, RATE) == 0), "{:?}", s1.last());
    // Back after two hours: the baseline has faded as it would have in two
    // quiet hours, so the same rate stands out against the floor.
    let (c2, e2) = restarted(&saved, T0 + 7200);
    let s2 = busy(&c2, &e2, "batch", 60);
    let last = s2.last().unwrap();
    assert!(points(last, RATE) >= 10, "{last:?}");

    // The age (bias correction, warm-up) stays: unlike a new identity, the
    // faded one is not on its warm-up floor forever, it rebuilds a baseline.
    let b = e2.export_baseline("batch", T0 + 7260).unwrap();
    assert!(b.age_secs > 1800.0 + 7200.0, "{b:?}");
}

#[test]
fn a_restart_does_not_launder_an_alarm() {
    let (clock, e) = engine();
    clock.set(secs(500.0));
    steady(&clock, &e, "mallory", 600);
    steady(&clock, &e, "alice", 600);
    let labels = vec!["pii".to_owned()];
    for i in 0..6 {
        e.on_request(
            "mallory",
            &RequestEvent {
                tool: Some(&format!("delete_{i}")),
                destructive: true,
                labels: &labels,
                suspicious: &["path-traversal"],
            },
        );
        e.on_outcome("mallory", Outcome::Denied);
        e.on_finding("mallory", FindingSeverity::Medium);
        e.on_request("mallory", &RequestEvent::default());
        e.on_outcome("mallory", Outcome::Allowed);
        e.on_outcome("mallory", Outcome::Error);
        clock.advance(secs(1.0));
    }
    // Then a fast burst on labelled data.
    for _ in 0..100 {
        e.on_request(
            "mallory",
            &RequestEvent {
                tool: Some("read_file"),
                labels: &labels,
                ..RequestEvent::default()
            },
        );
        clock.advance(secs(0.05));
    }
    let before = e.score("mallory");
    assert!(before.score >= 90, "{before:?}");
    let full = e.explain("mallory").unwrap();
    assert!(
        full.iter().all(|f| f.points > 0),
        "every factor in play: {full:?}"
    );
    let saved = e.export_baselines(T0);
    assert_eq!(
        saved.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        ["alice", "mallory"]
    );

    // After a restart of any length the score is what it would have been
    // had the process stayed up and the identities been quiet that long.
    let up = clock.now().as_secs_f64();
    let mut prev = 100;
    for gap in [0, 1, 10, 60, 600, 1800, 7200, 86_400] {
        let (_, e2) = restarted(&saved, T0 + gap);
        clock.set(secs(up + gap as f64));
        for id in ["mallory", "alice"] {
            assert_eq!(e2.explain(id), e.explain(id), "{id} after {gap} s");
            assert_eq!(e2.score(id), e.score(id), "{id} after {gap} s");
        }
        let s = e2.score("mallory").score;
        assert!(s <= prev, "{prev} -> {s} after {gap} s");
        prev = s;
    }
    assert!(prev < before.score);

    // An attacker who keeps going after the restart starts from the carried
    // score, not from zero.
    let (_, e2) = restarted(&saved, T0 + 5);
    let s = e2.on_finding("mallory", FindingSeverity::High);
    assert_eq!(s.score, 100, "{s:?}");
}

/// Floats through JSON may differ in the last place; all else exactly.
fn assert_close(a: &Baseline, b: &Baseline) {
    let fa = [
        a.age_secs,
        a.idle_secs,
        a.rate_long,
        a.rate_short,
        a.new_tool_plain,
        a.new_tool_destructive,
        a.denied,
        a.decisions,
        a.errors,
        a.calls,
        a.labelled,
        a.suspicious,
        a.findings,
    ];
    let fb = [
        b.age_secs,
        b.idle_secs,
        b.rate_long,
        b.rate_short,
        b.new_tool_plain,
        b.new_tool_destructive,
        b.denied,
        b.decisions,
        b.errors,
        b.calls,
        b.labelled,
        b.suspicious,
        b.findings,
    ];
    for (x, y) in fa.iter().zip(fb) {
        assert!((x - y).abs() <= 1e-12 * x.abs().max(1.0), "{a:?} vs {b:?}");
    }
    assert_eq!(a.at_unix, b.at_unix);
    assert_eq!(a.tools, b.tools);
}

#[test]
fn baselines_round_trip_through_json() {
    let (clock, e) = engine();
    steady(&clock, &e, "a", 300);
    e.on_finding("a", FindingSeverity::High);
    e.on_outcome("a", Outcome::Denied);
    call(&e, "b", "x", true);
    let saved = e.export_baselines(T0);
    let json = serde_json::to_string(&saved).unwrap();
    let back: Vec<(String, Baseline)> = serde_json::from_str(&json).unwrap();
    assert_eq!(back.len(), saved.len());
    for ((ia, a), (ib, b)) in saved.iter().zip(&back) {
        assert_eq!(ia, ib);
        assert_close(a, b);
    }
    // The store keeps one entry per identity with this shape.
    let v = serde_json::to_value(&saved[0].1).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "age_secs",
            "at_unix",
            "calls",
            "decisions",
            "denied",
            "errors",
            "findings",
            "idle_secs",
            "labelled",
            "new_tool_destructive",
            "new_tool_plain",
            "rate_long",
            "rate_short",
            "suspicious",
            "tools",
        ]
    );
    // Tool hashes are u64 and survive JSON exactly.
    let wide = Baseline {
        tools: vec![0, 1 << 60, u64::MAX],
        ..Baseline::default()
    };
    let s = serde_json::to_string(&wide).unwrap();
    assert_eq!(serde_json::from_str::<Baseline>(&s).unwrap(), wide);
    // Missing fields read as zero and unknown ones are ignored, so the
    // format can grow.
    let b: Baseline = serde_json::from_str(r#"{"at_unix": 5, "from_the_future": 1}"#).unwrap();
    assert_eq!(
        b,
        Baseline {
            at_unix: 5,
            ..Baseline::default()
        }
    );
    // Importing the JSON copy scores the same as the original.
    let (_, e1) = restarted(&saved, T0 + 60);
    let (_, e2) = restarted(&back, T0 + 60);
    assert_eq!(e1.snapshot(), e2.snapshot());
    assert_eq!(e1.explain("a"), e2.explain("a"));
    // The tool hashes are fixed (FNV-1a 64), not whatever this build's std uses.
    let x = e.export_baseline("b", T0).unwrap();
    assert_eq!(x.tools, [0xaf63_f54c_8602_1707]);
}

fn assert_sane(b: &Baseline, max_tools: usize) {
    for v in [
        b.age_secs,
        b.idle_secs,
        b.rate_long,
        b.rate_short,
        b.new_tool_plain,
        b.new_tool_destructive,
        b.denied,
        b.decisions,
        b.errors,
        b.calls,
        b.labelled,
        b.suspicious,
        b.findings,
    ] {
        assert!((0.0..=1e11).contains(&v), "{b:?}");
    }
    assert!(b.idle_secs <= b.age_secs, "{b:?}");
    assert!(b.denied <= b.decisions && b.errors <= b.calls, "{b:?}");
    assert!(b.tools.len() <= max_tools);
    assert!(b.tools.windows(2).all(|w| w[0] < w[1]), "sorted, unique");
}

#[test]
fn extreme_baselines_are_clamped_on_import() {
    let wild = Baseline {
        at_unix: u64::MAX,
        age_secs: f64::NAN,
        idle_secs: -5.0,
        rate_long: f64::INFINITY,
        rate_short: f64::NAN,
        tools: (0..10_000).rev().chain([7, 7, 7]).collect(),
        new_tool_plain: -1.0,
        new_tool_destructive: f64::NEG_INFINITY,
        denied: 1e300,
        decisions: 2.0,
        errors: f64::NAN,
        calls: 1e308,
        labelled: f64::INFINITY,
        suspicious: f64::MAX,
        findings: f64::MIN_POSITIVE,
    };
    let ancient = Baseline {
        at_unix: 0,
        age_secs: 1e300,
        idle_secs: 1e300,
        rate_long: 1e300,
        rate_short: 1e300,
        findings: f64::INFINITY,
        denied: 5.0,
        decisions: 5.0,
        ..Baseline::default()
    };
    let inverted = Baseline {
        at_unix: T0,
        age_secs: 0.5,
        idle_secs: 1.0,
        denied: 50.0,
        decisions: 10.0,
        errors: 50.0,
        calls: 10.0,
        ..Baseline::default()
    };
    let items = vec![
        ("wild".to_owned(), wild),
        ("ancient".to_owned(), ancient),
        ("inverted".to_owned(), inverted),
        ("empty".to_owned(), Baseline::default()),
        (String::new(), Baseline::default()),
    ];
    for now_unix in [T0, 0, u64::MAX] {
        let (clock, e) = engine();
        assert_eq!(e.import_baselines(items.clone(), now_unix), items.len());
        assert_eq!(e.len(), items.len());
        for (id, _) in &items {
            let s = e.score(id);
            check_score(&s);
            assert_eq!(e.explain(id).unwrap().len(), FACTORS.len());
        }
        for (_, b) in e.export_baselines(now_unix) {
            assert_sane(&b, 256);
        }
        // The engine goes on working, and everything fades.
        check_score(&call(&e, "wild", "x", true));
        check_score(&e.on_outcome("ancient", Outcome::Error));
        clock.advance(secs(86_400.0));
        for (id, _) in &items {
            assert_eq!(e.score(id).score, 0, "{id}");
        }
    }

    let (_, e) = engine();
    e.import_baselines(items.clone(), T0);
    // An infinite alarm reads as the largest one, never as none; a broken
    // baseline or age as no history (the floor and warm-up apply).
    let s = e.explain("wild").unwrap();
    let p = |name: &str| s.iter().find(|f| f.name == name).unwrap().points;
    assert_eq!(p(LABELLED_BURST), 25, "{s:?}");
    assert_eq!(p(SUSPICIOUS_ARGS), 40, "{s:?}");
    assert_eq!(p(NEW_TOOL), 0, "{s:?}");
    // Too little evidence for a share, however large the numerator.
    assert_eq!(p(DENIALS), 0, "{s:?}");
    assert_eq!(p(ERRORS), 0, "{s:?}");
    let b = e.export_baseline("wild", T0).unwrap();
    assert_eq!(b.rate_long, 0.0);
    assert_eq!(b.age_secs, 0.0);
    assert_eq!(b.tools.len(), 256);
    // Shares never exceed 1; an idle time beyond the age is an age.
    let b = e.export_baseline("inverted", T0).unwrap();
    assert_eq!((b.denied, b.errors), (10.0, 10.0));
    assert_eq!(b.age_secs, 1.0);
    assert_eq!(points(&e.score("inverted"), DENIALS), 40);
    // Decades-old state has decayed to nothing.
    assert_eq!(e.score("ancient").score, 0);
}

#[test]
fn an_import_merges_with_what_is_already_there() {
    let (clock, e) = engine();
    clock.set(secs(100.0));
    steady(&clock, &e, "a", 1200);
    e.on_finding("a", FindingSeverity::High);
    let saved = e.export_baselines(T0);

    // The identity is back before the store has been read.
    let (_, e2) = engine();
    call(&e2, "a", "fresh_tool", false);
    e2.on_finding("a", FindingSeverity::Low);
    assert_eq!(e2.import_baselines(saved.clone(), T0 + 10), 1);
    let b = e2.export_baseline("a", T0 + 10).unwrap();
    // The older history's age, the union of tools, the larger alarm.
    assert!((b.age_secs - 1210.0).abs() < 1.0, "{b:?}");
    assert_eq!(b.tools.len(), 4);
    let merged = e2.explain("a").unwrap();
    assert_eq!(merged[6].name, FINDINGS);
    assert_eq!(merged[6].points, 25, "{merged:?}");
    // Importing the same again changes nothing: a merge never double counts.
    e2.import_baselines(saved.clone(), T0 + 10);
    assert_eq!(e2.explain("a").unwrap(), merged);
    // Nor does it lower a score: an import older than what is there keeps
    // the live alarm.
    let (_, e3) = engine();
    for _ in 0..3 {
        e3.on_finding("a", FindingSeverity::High);
    }
    let live = e3.score("a");
    e3.import_baselines(saved, T0 + 10);
    assert!(e3.score("a").score >= live.score, "{live:?}");
    assert_eq!(points(&e3.score("a"), FINDINGS), 50);
}

#[test]
fn an_import_respects_the_identity_cap() {
    let items: Vec<(String, Baseline)> = (0..50)
        .map(|i| {
            (
                format!("id-{i}"),
                Baseline {
                    at_unix: T0,
                    age_secs: 1000.0,
                    idle_secs: f64::from(i),
                    rate_long: 1.0,
                    ..Baseline::default()
                },
            )
        })
        .collect();
    let (_, e) = engine_with(RiskConfig {
        max_identities: 10,
        ..RiskConfig::default()
    });
    e.on_request("live", &RequestEvent::default());
    assert_eq!(e.import_baselines(items, T0 + 5), 50);
    assert!(e.len() <= 10, "{}", e.len());
    // The least recently seen went first; the live identity was seen last.
    assert!(e.contains("live"));
    assert!(e.contains("id-0"));
    assert!(!e.contains("id-49"));
    let kept: Vec<String> = e.snapshot().into_iter().map(|(id, _)| id).collect();
    assert!(
        kept.iter()
            .all(|id| id == "live" || id["id-".len()..].parse::<u32>().unwrap() < 10),
        "{kept:?}"
    );
}
