//! The quarantine table: strictest match wins, expiry, sweep, listing
//! order, and the wire names and store keys.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use portcullis_contain::quarantine::Quarantines;
use portcullis_contain::{Mode, Quarantine, Subject, Target, TargetKind};

const NOW: u64 = 1_700_000_000;

fn q(kind: TargetKind, value: &str, mode: Mode, created_at: u64) -> Quarantine {
    Quarantine {
        target: Target::new(kind, value),
        mode,
        reason: format!("{}:{value}", kind.as_str()),
        by: "admin:test".into(),
        created_at,
        expires_at: None,
    }
}

fn subject() -> Subject<'static> {
    Subject {
        identity: "w=a;u=alice",
        agent: Some("spiffe://corp/a"),
        user: Some("alice"),
        device: Some("d1"),
        session: Some("s1"),
    }
}

#[test]
fn strictest_wins_when_several_match() {
    let t = Quarantines::default();
    t.insert(q(TargetKind::Agent, "spiffe://corp/a", Mode::ReadOnly, NOW));
    t.insert(q(TargetKind::User, "alice", Mode::DenyAll, NOW));
    let hit = t.check(&subject(), NOW).unwrap();
    assert_eq!(hit.mode, Mode::DenyAll);
    assert_eq!(hit.target, Target::new(TargetKind::User, "alice"));

    // The other way round (deny-all found first) gives the same answer.
    let t = Quarantines::default();
    t.insert(q(TargetKind::Identity, "w=a;u=alice", Mode::DenyAll, NOW));
    t.insert(q(TargetKind::Session, "s1", Mode::ReadOnly, NOW));
    assert_eq!(t.check(&subject(), NOW).unwrap().mode, Mode::DenyAll);

    // Several read-only: read-only.
    let t = Quarantines::default();
    t.insert(q(TargetKind::Device, "d1", Mode::ReadOnly, NOW));
    t.insert(q(TargetKind::Session, "s1", Mode::ReadOnly, NOW));
    assert_eq!(t.check(&subject(), NOW).unwrap().mode, Mode::ReadOnly);
}

#[test]
fn an_expired_strict_entry_does_not_shadow_a_live_one() {
    let t = Quarantines::default();
    let mut old = q(TargetKind::User, "alice", Mode::DenyAll, NOW - 100);
    old.expires_at = Some(NOW - 1);
    t.insert(old);
    t.insert(q(TargetKind::Agent, "spiffe://corp/a", Mode::ReadOnly, NOW));
    assert_eq!(t.check(&subject(), NOW).unwrap().mode, Mode::ReadOnly);
    assert_eq!(
        t.check(&subject(), NOW - 2).unwrap().mode,
        Mode::DenyAll,
        "still in force before its expiry"
    );
}

#[test]
fn no_match_and_empty_table_give_none() {
    let t = Quarantines::default();
    assert!(t.check(&subject(), NOW).is_none());
    t.insert(q(TargetKind::User, "bob", Mode::DenyAll, NOW));
    assert!(t.check(&subject(), NOW).is_none());
    assert!(t
        .check(
            &Subject {
                identity: "x",
                user: Some("bob"),
                ..Default::default()
            },
            NOW
        )
        .is_some());
}

#[test]
fn insert_replaces_and_remove_lifts() {
    let t = Quarantines::default();
    let a = q(TargetKind::User, "alice", Mode::ReadOnly, NOW);
    assert!(t.insert(a.clone()).is_none());
    let b = q(TargetKind::User, "alice", Mode::DenyAll, NOW + 1);
    assert_eq!(t.insert(b.clone()), Some(a));
    assert_eq!(t.check(&subject(), NOW).unwrap().mode, Mode::DenyAll);
    assert_eq!(t.list(NOW).len(), 1);
    assert_eq!(t.remove(&b.target), Some(b.clone()));
    assert_eq!(t.remove(&b.target), None);
    assert!(t.check(&subject(), NOW).is_none());
}

#[test]
fn sweep_removes_expired_only() {
    let t = Quarantines::default();
    let mut gone1 = q(TargetKind::User, "u1", Mode::DenyAll, NOW - 50);
    gone1.expires_at = Some(NOW - 1);
    let mut gone2 = q(TargetKind::User, "u2", Mode::ReadOnly, NOW - 50);
    gone2.expires_at = Some(NOW); // expires_at == now: no longer in force
    let mut later = q(TargetKind::User, "u3", Mode::DenyAll, NOW - 50);
    later.expires_at = Some(NOW + 1);
    let forever = q(TargetKind::User, "u4", Mode::DenyAll, NOW - 50);
    for x in [&gone1, &gone2, &later, &forever] {
        t.insert(x.clone());
    }
    let mut swept = t.sweep(NOW);
    swept.sort_by_key(|x| x.target.key());
    assert_eq!(swept, vec![gone1.clone(), gone2.clone()]);
    let left: Vec<String> = t.list(NOW).iter().map(|x| x.target.value.clone()).collect();
    assert_eq!(left, vec!["u3", "u4"]);
    // Swept entries are gone even for an earlier clock.
    assert_eq!(t.list(0).len(), 2);
    // A second sweep finds nothing; a later one takes `later`.
    assert!(t.sweep(NOW).is_empty());
    assert_eq!(t.sweep(NOW + 1), vec![later]);
    assert_eq!(t.list(NOW + 1_000_000), vec![forever]);
    // Sweeping everything leaves the fast path empty.
    t.remove(&Target::new(TargetKind::User, "u4"));
    assert!(t.check(&subject(), NOW).is_none());
}

#[test]
fn list_is_sorted_oldest_first_then_by_key_and_skips_expired() {
    let t = Quarantines::default();
    let mut expired = q(TargetKind::User, "zz", Mode::DenyAll, NOW - 1000);
    expired.expires_at = Some(NOW - 1);
    t.insert(expired);
    t.insert(q(TargetKind::User, "c", Mode::DenyAll, NOW - 5));
    t.insert(q(TargetKind::Agent, "b", Mode::DenyAll, NOW - 10));
    t.insert(q(TargetKind::User, "a", Mode::DenyAll, NOW - 5));
    t.insert(q(TargetKind::Device, "d", Mode::ReadOnly, NOW - 20));
    let keys: Vec<String> = t.list(NOW).iter().map(|x| x.target.key()).collect();
    assert_eq!(keys, vec!["device:d", "agent:b", "user:a", "user:c"]);
}

#[test]
fn wire_names_and_keys_round_trip() {
    for kind in [
        TargetKind::Identity,
        TargetKind::Agent,
        TargetKind::User,
        TargetKind::Device,
        TargetKind::Session,
    ] {
        assert_eq!(TargetKind::parse(kind.as_str()), Some(kind));
        // Values may themselves hold colons (SPIFFE IDs, fingerprints).
        let t = Target::new(kind, "spiffe://corp/a:b");
        assert_eq!(Target::from_key(&t.key()), Some(t.clone()));
        assert_eq!(t.to_string(), t.key());
    }
    assert_eq!(TargetKind::parse("Identity"), None);
    assert_eq!(Target::from_key("nokind"), None);
    assert_eq!(Target::from_key("robot:x"), None);
    for m in [Mode::ReadOnly, Mode::DenyAll] {
        assert_eq!(Mode::parse(m.as_str()), Some(m));
    }
    assert_eq!(Mode::parse("deny"), Some(Mode::DenyAll));
    assert_eq!(Mode::parse("readonly"), Some(Mode::ReadOnly));
    assert_eq!(Mode::parse("allow"), None);
    assert!(Mode::DenyAll > Mode::ReadOnly, "strictness order");
    // Serde uses the same names.
    let x = q(TargetKind::Agent, "a", Mode::ReadOnly, NOW);
    let v = serde_json::to_value(&x).unwrap();
    assert_eq!(v["mode"], "read-only");
    assert_eq!(v["target"]["kind"], "agent");
    assert!(v.get("expires_at").is_none());
    assert_eq!(serde_json::from_value::<Quarantine>(v).unwrap(), x);
}
