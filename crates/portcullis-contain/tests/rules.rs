//! Automatic quarantine rules: thresholds, severity ordering, denial
//! windows (fire at the Nth, not when spread wider, once per burst),
//! validation of every required field, and parsing from TOML.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::{Duration, Instant};

use portcullis_contain::rules::{AutoRule, AutoRules, Severity, Signal};
use portcullis_contain::{Mode, TargetKind};

fn rule(when: Signal) -> AutoRule {
    AutoRule {
        name: None,
        when,
        above: None,
        severity: None,
        count: None,
        window_secs: None,
        mode: Mode::DenyAll,
        target: TargetKind::Identity,
        ttl_secs: None,
    }
}

fn risk(above: u8) -> AutoRule {
    AutoRule {
        above: Some(above),
        ..rule(Signal::Risk)
    }
}

fn finding(s: Severity) -> AutoRule {
    AutoRule {
        severity: Some(s),
        ..rule(Signal::Finding)
    }
}

fn denials(count: u32, window_secs: u64) -> AutoRule {
    AutoRule {
        count: Some(count),
        window_secs: Some(window_secs),
        ..rule(Signal::Denials)
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn risk_rule_fires_at_or_above_the_threshold_only() {
    let r = AutoRules::new(vec![AutoRule {
        mode: Mode::ReadOnly,
        target: TargetKind::Agent,
        ttl_secs: Some(600),
        ..risk(80)
    }]);
    assert!(!r.is_empty());
    assert!(r.on_risk(0).is_empty());
    assert!(r.on_risk(79).is_empty());
    let t = r.on_risk(80);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].rule, "risk>=80");
    assert_eq!(t[0].mode, Mode::ReadOnly);
    assert_eq!(t[0].target, TargetKind::Agent);
    assert_eq!(t[0].ttl_secs, Some(600));
    assert!(t[0].reason.contains("80"), "{}", t[0].reason);
    assert_eq!(r.on_risk(100).len(), 1);
    assert_eq!(r.on_risk(255).len(), 1);
    // Other signals do not fire a risk rule.
    assert!(r.on_finding(Severity::High, "x").is_empty());
    assert!(r.on_denial("k", Instant::now()).is_empty());
}

#[test]
fn several_risk_rules_fire_independently() {
    let r = AutoRules::new(vec![
        AutoRule {
            name: Some("watch".into()),
            mode: Mode::ReadOnly,
            ..risk(60)
        },
        risk(90),
    ]);
    let labels = |score| {
        r.on_risk(score)
            .into_iter()
            .map(|t| t.rule)
            .collect::<Vec<_>>()
    };
    assert!(labels(59).is_empty());
    assert_eq!(labels(60), vec!["watch"]);
    assert_eq!(labels(95), vec!["watch", "risk>=90"]);
}

#[test]
fn finding_rule_follows_severity_order() {
    assert!(Severity::Low < Severity::Medium && Severity::Medium < Severity::High);
    let medium = AutoRules::new(vec![finding(Severity::Medium)]);
    assert!(medium.on_finding(Severity::Low, "f").is_empty());
    let t = medium.on_finding(Severity::Medium, "exfil.dns");
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].rule, "finding>=medium");
    assert!(t[0].reason.contains("exfil.dns"), "{}", t[0].reason);
    assert_eq!(medium.on_finding(Severity::High, "f").len(), 1);

    let high = AutoRules::new(vec![finding(Severity::High)]);
    assert!(high.on_finding(Severity::Low, "f").is_empty());
    assert!(high.on_finding(Severity::Medium, "f").is_empty());
    assert_eq!(high.on_finding(Severity::High, "f").len(), 1);

    let low = AutoRules::new(vec![finding(Severity::Low)]);
    for s in [Severity::Low, Severity::Medium, Severity::High] {
        assert_eq!(low.on_finding(s, "f").len(), 1, "{s:?}");
    }
    assert!(low.on_risk(100).is_empty());
}

#[test]
fn denials_rule_fires_at_the_nth_within_the_window() {
    let r = AutoRules::new(vec![denials(3, 10)]);
    let t0 = Instant::now();
    assert!(r.on_denial("alice", t0).is_empty());
    assert!(r.on_denial("alice", t0 + secs(4)).is_empty());
    let t = r.on_denial("alice", t0 + secs(9));
    assert_eq!(t.len(), 1, "third denial within 10 s");
    assert_eq!(t[0].rule, "denials>=3/10s");
    assert!(t[0].reason.contains("3 denials"), "{}", t[0].reason);
}

#[test]
fn denials_at_the_window_edge_count() {
    let r = AutoRules::new(vec![denials(2, 10)]);
    let t0 = Instant::now();
    assert!(r.on_denial("k", t0).is_empty());
    assert_eq!(
        r.on_denial("k", t0 + secs(10)).len(),
        1,
        "exactly 10 s apart"
    );
    let r = AutoRules::new(vec![denials(2, 10)]);
    assert!(r.on_denial("k", t0).is_empty());
    assert!(
        r.on_denial("k", t0 + secs(10) + Duration::from_millis(1))
            .is_empty(),
        "just outside the window"
    );
}

#[test]
fn denials_spread_wider_than_the_window_never_fire() {
    let r = AutoRules::new(vec![denials(3, 10)]);
    let t0 = Instant::now();
    // One every 6 s: never three within 10 s.
    for i in 0..50u64 {
        assert!(
            r.on_denial("alice", t0 + secs(6 * i)).is_empty(),
            "denial {i}"
        );
    }
    // One every 5 s: three within 10 s at the third.
    let r = AutoRules::new(vec![denials(3, 10)]);
    assert!(r.on_denial("bob", t0).is_empty());
    assert!(r.on_denial("bob", t0 + secs(5)).is_empty());
    assert_eq!(r.on_denial("bob", t0 + secs(10)).len(), 1);
}

#[test]
fn denials_fire_once_per_burst_and_keys_are_independent() {
    let r = AutoRules::new(vec![denials(3, 60)]);
    let t0 = Instant::now();
    let mut fired = Vec::new();
    for i in 0..9u64 {
        if !r.on_denial("alice", t0 + secs(i)).is_empty() {
            fired.push(i);
        }
    }
    // Counting starts afresh after each firing: the 3rd, 6th and 9th.
    assert_eq!(fired, vec![2, 5, 8]);

    // Another key's denials do not add up with alice's.
    let r = AutoRules::new(vec![denials(3, 60)]);
    assert!(r.on_denial("alice", t0).is_empty());
    assert!(r.on_denial("alice", t0).is_empty());
    assert!(r.on_denial("bob", t0).is_empty());
    assert!(r.on_denial("bob", t0).is_empty());
    assert_eq!(r.on_denial("alice", t0).len(), 1);
    assert_eq!(r.on_denial("bob", t0).len(), 1);
}

#[test]
fn denial_rules_with_different_windows() {
    let r = AutoRules::new(vec![
        AutoRule {
            name: Some("fast".into()),
            ..denials(3, 5)
        },
        AutoRule {
            name: Some("slow".into()),
            ..denials(4, 100)
        },
    ]);
    let t0 = Instant::now();
    // Spread 10 s apart: the fast rule never sees three in 5 s, the slow
    // one fires at the fourth.
    assert!(r.on_denial("k", t0).is_empty());
    assert!(r.on_denial("k", t0 + secs(10)).is_empty());
    assert!(r.on_denial("k", t0 + secs(20)).is_empty());
    let t: Vec<String> = r
        .on_denial("k", t0 + secs(30))
        .into_iter()
        .map(|t| t.rule)
        .collect();
    assert_eq!(t, vec!["slow"]);
}

#[test]
fn no_rules_no_triggers() {
    let r = AutoRules::default();
    assert!(r.is_empty());
    assert!(r.on_risk(100).is_empty());
    assert!(r.on_finding(Severity::High, "x").is_empty());
    assert!(r.on_denial("k", Instant::now()).is_empty());
}

#[test]
fn validate_rejects_each_missing_or_bad_field() {
    let field = |r: &AutoRule| {
        r.validate()
            .unwrap_err()
            .split(':')
            .next()
            .unwrap()
            .to_owned()
    };

    assert_eq!(field(&rule(Signal::Risk)), "above");
    assert_eq!(field(&risk(0)), "above");
    assert_eq!(field(&risk(101)), "above");
    assert!(risk(1).validate().is_ok());
    assert!(risk(100).validate().is_ok());

    assert_eq!(field(&rule(Signal::Finding)), "severity");
    assert!(finding(Severity::Low).validate().is_ok());

    assert_eq!(field(&rule(Signal::Denials)), "count");
    assert_eq!(
        field(&AutoRule {
            window_secs: Some(10),
            ..rule(Signal::Denials)
        }),
        "count"
    );
    assert_eq!(field(&denials(0, 10)), "count");
    assert_eq!(
        field(&AutoRule {
            count: Some(3),
            ..rule(Signal::Denials)
        }),
        "window_secs"
    );
    assert_eq!(field(&denials(3, 0)), "window_secs");
    assert!(denials(1, 1).validate().is_ok());
}

#[derive(serde::Deserialize)]
struct Config {
    containment: Containment,
}

#[derive(serde::Deserialize)]
struct Containment {
    auto: Vec<AutoRule>,
}

#[test]
fn rules_parse_from_toml() {
    let text = r#"
        [[containment.auto]]
        when = "risk"
        above = 85

        [[containment.auto]]
        name = "hostile-finding"
        when = "finding"
        severity = "high"
        mode = "read-only"
        target = "agent"
        ttl_secs = 3600

        [[containment.auto]]
        when = "denials"
        count = 5
        window_secs = 60
        target = "session"
    "#;
    let cfg: Config = toml::from_str(text).unwrap();
    let rules = cfg.containment.auto;
    assert_eq!(rules.len(), 3);
    for r in &rules {
        r.validate().unwrap();
    }
    assert_eq!(
        rules[0],
        AutoRule {
            above: Some(85),
            ..rule(Signal::Risk)
        },
        "defaults: deny-all on the identity, no ttl"
    );
    assert_eq!(
        rules[1],
        AutoRule {
            name: Some("hostile-finding".into()),
            severity: Some(Severity::High),
            mode: Mode::ReadOnly,
            target: TargetKind::Agent,
            ttl_secs: Some(3600),
            ..rule(Signal::Finding)
        }
    );
    assert_eq!(
        rules[2],
        AutoRule {
            target: TargetKind::Session,
            ..denials(5, 60)
        }
    );
    let r = AutoRules::new(rules);
    assert_eq!(r.on_risk(85).len(), 1);
    let t = r.on_finding(Severity::High, "x");
    assert_eq!(t[0].rule, "hostile-finding");
    assert_eq!(t[0].mode, Mode::ReadOnly);
}

#[test]
fn toml_rejects_unknown_fields_and_values() {
    let bad = [
        // A typo must not silently disable a field.
        "[[containment.auto]]\nwhen = \"risk\"\nabove = 80\nabvoe = 3\n",
        "[[containment.auto]]\nwhen = \"anger\"\n",
        "[[containment.auto]]\nwhen = \"finding\"\nseverity = \"critical\"\n",
        "[[containment.auto]]\nwhen = \"risk\"\nabove = 80\nmode = \"allow\"\n",
        "[[containment.auto]]\nwhen = \"risk\"\nabove = 80\ntarget = \"tenant\"\n",
        "[[containment.auto]]\nwhen = \"risk\"\nabove = 300\n",
        "[[containment.auto]]\nabove = 80\n",
    ];
    for text in bad {
        assert!(toml::from_str::<Config>(text).is_err(), "accepted: {text}");
    }
    // Parses but fails validation: the field is missing.
    let cfg: Config =
        toml::from_str("[[containment.auto]]\nwhen = \"denials\"\ncount = 3\n").unwrap();
    assert!(cfg.containment.auto[0]
        .validate()
        .unwrap_err()
        .starts_with("window_secs"));
}

#[test]
fn a_fast_rule_firing_does_not_starve_a_slower_escalation_rule() {
    // An escalation ladder: 3 denials in 5 s → read-only, 10 in 60 s →
    // deny-all. A caller denied once a second must reach the second rung.
    let r = AutoRules::new(vec![
        AutoRule {
            name: Some("fast".into()),
            mode: Mode::ReadOnly,
            ..denials(3, 5)
        },
        AutoRule {
            name: Some("slow".into()),
            ..denials(10, 60)
        },
    ]);
    let t0 = Instant::now();
    let mut fired: Vec<(u64, String)> = Vec::new();
    for i in 0..20u64 {
        for t in r.on_denial("k", t0 + secs(i)) {
            fired.push((i, t.rule));
        }
    }
    let slow: Vec<u64> = fired
        .iter()
        .filter(|(_, r)| r == "slow")
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(slow, vec![9, 19], "{fired:?}");
    let fast: Vec<u64> = fired
        .iter()
        .filter(|(_, r)| r == "fast")
        .map(|(i, _)| *i)
        .collect();
    // The fast rule still fires once per burst of three.
    assert_eq!(fast, vec![2, 5, 8, 11, 14, 17], "{fired:?}");
}
