//! Containment state: restore after a restart, verdict precedence between
//! the kill switch and quarantines, subject matching, expiry, release,
//! events, token revocation, and failing closed on an unreadable kill
//! switch record.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use portcullis_contain::revocation::{Revocation, RevokedKind};
use portcullis_contain::state::{KillSwitch, NS_KILLSWITCH, NS_QUARANTINE};
use portcullis_contain::{
    now_unix, ContainEvent, Containment, FileStore, MemoryStore, Mode, Quarantine, StateStore,
    Subject, Target, TargetKind, Verdict,
};
use serde_json::json;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "portcullis-contain-state-{tag}-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const ID: &str = "w=spiffe://corp/agent-a;u=https://idp#alice";
const AGENT: &str = "spiffe://corp/agent-a";
const USER: &str = "https://idp#alice";
const DEVICE: &str = "dev-42";
const SESSION: &str = "sess-7";

fn subject() -> Subject<'static> {
    Subject {
        identity: ID,
        agent: Some(AGENT),
        user: Some(USER),
        device: Some(DEVICE),
        session: Some(SESSION),
    }
}

fn q(kind: TargetKind, value: &str, mode: Mode) -> Quarantine {
    Quarantine {
        target: Target::new(kind, value),
        mode,
        reason: format!("test {} {value}", kind.as_str()),
        by: "admin:test".into(),
        created_at: now_unix(),
        expires_at: None,
    }
}

fn kill(mode: Mode) -> KillSwitch {
    KillSwitch {
        mode,
        reason: "incident 17".into(),
        by: "admin:ops".into(),
        since: now_unix(),
    }
}

fn token(jti: &str) -> Revocation {
    Revocation {
        kind: RevokedKind::Token,
        value: jti.into(),
        reason: "leaked".into(),
        by: "admin:ops".into(),
        created_at: now_unix(),
        expires_at: Some(now_unix() + 3600),
    }
}

fn cert(fp: &str) -> Revocation {
    Revocation {
        kind: RevokedKind::Certificate,
        value: fp.into(),
        reason: "key compromise".into(),
        by: "admin:ops".into(),
        created_at: now_unix(),
        expires_at: None,
    }
}

async fn open_file(dir: &TempDir) -> Containment {
    let store: Arc<dyn StateStore> = Arc::new(FileStore::open(&dir.0).unwrap());
    Containment::open(store).await.unwrap()
}

#[tokio::test]
async fn open_over_a_file_store_restores_everything_after_reopen() {
    let dir = TempDir::new("restore");
    let now = now_unix();
    {
        let c = open_file(&dir).await;
        c.quarantine(q(TargetKind::Agent, AGENT, Mode::ReadOnly))
            .await
            .unwrap();
        let mut timed = q(TargetKind::User, "bob", Mode::DenyAll);
        timed.expires_at = Some(now + 3600);
        c.quarantine(timed).await.unwrap();
        c.revoke(token("jti-1")).await.unwrap();
        c.revoke(cert("ab:cd")).await.unwrap();
        c.set_kill_switch(Some(kill(Mode::ReadOnly))).await.unwrap();
    }
    let c = open_file(&dir).await;
    let list = c.quarantines.list(now);
    assert_eq!(list.len(), 2);
    let agent = list
        .iter()
        .find(|x| x.target == Target::new(TargetKind::Agent, AGENT))
        .unwrap();
    assert_eq!(agent.mode, Mode::ReadOnly);
    assert_eq!(agent.by, "admin:test");
    let bob = list
        .iter()
        .find(|x| x.target == Target::new(TargetKind::User, "bob"))
        .unwrap();
    assert_eq!(
        (bob.mode, bob.expires_at),
        (Mode::DenyAll, Some(now + 3600))
    );

    assert!(c.revocations.token_revoked("jti-1"));
    assert!(!c.revocations.token_revoked("jti-2"));
    let revs = c.revocations.list();
    assert_eq!(revs.len(), 2);
    assert!(revs.iter().any(|r| r.key() == "certificate:ab:cd"));

    let k = c.kill_switch().unwrap();
    assert_eq!((k.mode, k.reason.as_str()), (Mode::ReadOnly, "incident 17"));
    // The restored state is in force, not just listed.
    assert_eq!(c.verdict(&subject(), now).mode(), Some(Mode::ReadOnly));
    let bob_subject = Subject {
        identity: "w=x;u=bob",
        user: Some("bob"),
        ..Default::default()
    };
    assert_eq!(c.verdict(&bob_subject, now).mode(), Some(Mode::DenyAll));

    // Lifting survives too.
    c.set_kill_switch(None).await.unwrap();
    c.release(&Target::new(TargetKind::Agent, AGENT))
        .await
        .unwrap();
    drop(c);
    let c = open_file(&dir).await;
    assert!(c.kill_switch().is_none());
    assert_eq!(c.quarantines.list(now).len(), 1);
    assert_eq!(c.verdict(&subject(), now), Verdict::Clear);
}

#[tokio::test]
async fn expired_quarantine_is_not_restored() {
    let dir = TempDir::new("expired-restore");
    let now = now_unix();
    {
        let c = open_file(&dir).await;
        let mut gone = q(TargetKind::Identity, ID, Mode::DenyAll);
        gone.expires_at = Some(now - 1);
        c.quarantine(gone).await.unwrap();
    }
    let c = open_file(&dir).await;
    assert!(c.quarantines.list(now).is_empty());
    assert_eq!(c.verdict(&subject(), now), Verdict::Clear);
}

#[tokio::test]
async fn kill_switch_deny_all_beats_everything() {
    let c = Containment::in_memory();
    let now = now_unix();
    c.quarantine(q(TargetKind::Agent, AGENT, Mode::ReadOnly))
        .await
        .unwrap();
    c.set_kill_switch(Some(kill(Mode::DenyAll))).await.unwrap();
    let v = c.verdict(&subject(), now);
    assert_eq!(
        v,
        Verdict::Restricted {
            mode: Mode::DenyAll,
            source: "killswitch".into(),
            reason: "incident 17".into()
        }
    );
    // Also for callers nobody quarantined.
    let other = Subject {
        identity: "someone-else",
        ..Default::default()
    };
    assert_eq!(c.verdict(&other, now).mode(), Some(Mode::DenyAll));
    // Off again: back to the quarantine alone.
    c.set_kill_switch(None).await.unwrap();
    assert_eq!(c.verdict(&subject(), now).mode(), Some(Mode::ReadOnly));
    assert_eq!(c.verdict(&other, now), Verdict::Clear);
}

#[tokio::test]
async fn kill_switch_read_only_plus_quarantine_deny_all_is_deny_all() {
    let c = Containment::in_memory();
    let now = now_unix();
    c.set_kill_switch(Some(kill(Mode::ReadOnly))).await.unwrap();
    c.quarantine(q(TargetKind::User, USER, Mode::DenyAll))
        .await
        .unwrap();
    assert_eq!(
        c.verdict(&subject(), now),
        Verdict::Restricted {
            mode: Mode::DenyAll,
            source: format!("user:{USER}"),
            reason: format!("test user {USER}"),
        }
    );
    // Others get the read-only kill switch.
    let other = Subject {
        identity: "someone-else",
        ..Default::default()
    };
    assert_eq!(
        c.verdict(&other, now),
        Verdict::Restricted {
            mode: Mode::ReadOnly,
            source: "killswitch".into(),
            reason: "incident 17".into()
        }
    );
}

#[tokio::test]
async fn kill_switch_read_only_with_read_only_quarantine_is_read_only() {
    let c = Containment::in_memory();
    let now = now_unix();
    c.set_kill_switch(Some(kill(Mode::ReadOnly))).await.unwrap();
    c.quarantine(q(TargetKind::Agent, AGENT, Mode::ReadOnly))
        .await
        .unwrap();
    assert_eq!(c.verdict(&subject(), now).mode(), Some(Mode::ReadOnly));
}

#[tokio::test]
async fn quarantine_read_only_alone_is_read_only_and_nothing_is_clear() {
    let c = Containment::in_memory();
    let now = now_unix();
    assert_eq!(c.verdict(&subject(), now), Verdict::Clear);
    assert_eq!(Verdict::Clear.mode(), None);
    c.quarantine(q(TargetKind::Identity, ID, Mode::ReadOnly))
        .await
        .unwrap();
    assert_eq!(
        c.verdict(&subject(), now),
        Verdict::Restricted {
            mode: Mode::ReadOnly,
            source: format!("identity:{ID}"),
            reason: format!("test identity {ID}"),
        }
    );
}

#[tokio::test]
async fn every_target_kind_matches_its_part_and_nothing_else() {
    let now = now_unix();
    let cases = [
        (TargetKind::Identity, ID),
        (TargetKind::Agent, AGENT),
        (TargetKind::User, USER),
        (TargetKind::Device, DEVICE),
        (TargetKind::Session, SESSION),
    ];
    for (kind, value) in cases {
        let c = Containment::in_memory();
        c.quarantine(q(kind, value, Mode::DenyAll)).await.unwrap();
        let v = c.verdict(&subject(), now);
        assert_eq!(v.mode(), Some(Mode::DenyAll), "{kind:?}");
        match &v {
            Verdict::Restricted { source, .. } => {
                assert_eq!(source, &format!("{}:{value}", kind.as_str()))
            }
            Verdict::Clear => unreachable!(),
        }
        // A subject that differs only in that part is clear...
        let mut other = subject();
        match kind {
            TargetKind::Identity => other.identity = "w=other",
            TargetKind::Agent => other.agent = Some("spiffe://corp/agent-b"),
            TargetKind::User => other.user = Some("https://idp#bob"),
            TargetKind::Device => other.device = Some("dev-43"),
            TargetKind::Session => other.session = Some("sess-8"),
        }
        assert_eq!(c.verdict(&other, now), Verdict::Clear, "{kind:?}");
        // ...and so is one without that part at all.
        let mut missing = subject();
        match kind {
            TargetKind::Identity => missing.identity = "",
            TargetKind::Agent => missing.agent = None,
            TargetKind::User => missing.user = None,
            TargetKind::Device => missing.device = None,
            TargetKind::Session => missing.session = None,
        }
        assert_eq!(c.verdict(&missing, now), Verdict::Clear, "{kind:?}");
        // The value of one kind never matches another kind's part.
        for (k2, _) in cases.iter().filter(|(k2, _)| *k2 != kind) {
            let cross = Target::new(*k2, value);
            assert!(!subject().matches(&cross), "{kind:?} value as {k2:?}");
        }
        assert!(subject().matches(&Target::new(kind, value)));
    }
}

#[tokio::test]
async fn empty_values_never_match() {
    let now = now_unix();
    let c = Containment::in_memory();
    // Quarantines on empty values (a misconfiguration) must not catch
    // every caller that lacks that part.
    for kind in [
        TargetKind::Identity,
        TargetKind::Agent,
        TargetKind::User,
        TargetKind::Device,
        TargetKind::Session,
    ] {
        c.quarantine(q(kind, "", Mode::DenyAll)).await.unwrap();
    }
    let bare = Subject {
        identity: "anon",
        agent: Some(""),
        user: Some(""),
        device: Some(""),
        session: Some(""),
    };
    assert_eq!(c.verdict(&bare, now), Verdict::Clear);
    assert_eq!(c.verdict(&Subject::default(), now), Verdict::Clear);
    assert!(!bare.matches(&Target::new(TargetKind::Session, "")));
}

#[tokio::test]
async fn expired_quarantine_gives_clear() {
    let c = Containment::in_memory();
    let now = now_unix();
    let mut x = q(TargetKind::Agent, AGENT, Mode::DenyAll);
    x.expires_at = Some(now);
    c.enforce(x.clone());
    assert_eq!(
        c.verdict(&subject(), now),
        Verdict::Clear,
        "expires_at == now"
    );
    assert_eq!(
        c.verdict(&subject(), now - 1).mode(),
        Some(Mode::DenyAll),
        "in force one second earlier"
    );
    x.expires_at = Some(now - 100);
    c.enforce(x);
    assert_eq!(c.verdict(&subject(), now), Verdict::Clear);
}

#[tokio::test]
async fn release_removes_and_announces() {
    let c = Containment::in_memory();
    let now = now_unix();
    let x = q(TargetKind::Device, DEVICE, Mode::DenyAll);
    c.quarantine(x.clone()).await.unwrap();
    assert_eq!(
        c.store().list(NS_QUARANTINE).await.unwrap().len(),
        1,
        "written through"
    );
    let mut rx = c.subscribe();
    let released = c.release(&x.target).await.unwrap();
    assert_eq!(released, Some(x.clone()));
    assert_eq!(rx.try_recv().unwrap(), ContainEvent::Released(x.clone()));
    assert_eq!(c.verdict(&subject(), now), Verdict::Clear);
    assert!(c.quarantines.list(now).is_empty());
    assert!(c.store().list(NS_QUARANTINE).await.unwrap().is_empty());
    // Releasing again: nothing, and no event.
    assert_eq!(c.release(&x.target).await.unwrap(), None);
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn enforce_is_visible_synchronously_and_persist_writes_it() {
    let c = Containment::in_memory();
    let now = now_unix();
    let x = q(TargetKind::Session, SESSION, Mode::DenyAll);
    c.enforce(x.clone());
    // No await between enforce and verdict.
    assert_eq!(c.verdict(&subject(), now).mode(), Some(Mode::DenyAll));
    assert!(
        c.store().list(NS_QUARANTINE).await.unwrap().is_empty(),
        "enforce alone does not write"
    );
    c.persist(&x).await.unwrap();
    let stored = c.store().list(NS_QUARANTINE).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].key, x.target.key());
    assert_eq!(
        serde_json::from_value::<Quarantine>(stored[0].value.clone()).unwrap(),
        x
    );
}

#[tokio::test]
async fn subscribers_see_quarantines_kill_switch_and_revocations() {
    let c = Containment::in_memory();
    let mut rx = c.subscribe();
    let x = q(TargetKind::Agent, AGENT, Mode::ReadOnly);
    c.quarantine(x.clone()).await.unwrap();
    let k = kill(Mode::DenyAll);
    c.set_kill_switch(Some(k.clone())).await.unwrap();
    let r = token("jti-9");
    c.revoke(r.clone()).await.unwrap();
    c.set_kill_switch(None).await.unwrap();

    assert_eq!(rx.try_recv().unwrap(), ContainEvent::Quarantined(x));
    assert_eq!(rx.try_recv().unwrap(), ContainEvent::KillSwitch(Some(k)));
    assert_eq!(rx.try_recv().unwrap(), ContainEvent::Revoked(r));
    assert_eq!(rx.try_recv().unwrap(), ContainEvent::KillSwitch(None));
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn token_revocation_is_by_jti() {
    let c = Containment::in_memory();
    assert!(!c.revocations.token_revoked("jti-1"));
    c.revoke(token("jti-1")).await.unwrap();
    assert!(c.revocations.token_revoked("jti-1"));
    assert!(!c.revocations.token_revoked("jti-2"));
    assert!(!c.revocations.token_revoked(""));
    assert!(!c.revocations.token_revoked("jti-"));
    // A certificate with the same value is not a token.
    c.revoke(cert("jti-3")).await.unwrap();
    assert!(!c.revocations.token_revoked("jti-3"));
    // Forgetting the token clears it.
    assert!(c.revocations.remove("token:jti-1").is_some());
    assert!(!c.revocations.token_revoked("jti-1"));
}

#[tokio::test]
async fn sweep_lifts_expired_from_memory_and_store() {
    let c = Containment::in_memory();
    let now = now_unix();
    let mut soon = q(TargetKind::User, "bob", Mode::DenyAll);
    soon.expires_at = Some(now + 1);
    let keep = q(TargetKind::User, "carol", Mode::DenyAll);
    c.quarantine(soon.clone()).await.unwrap();
    c.quarantine(keep.clone()).await.unwrap();
    let mut rx = c.subscribe();

    assert!(c.sweep(now).await.is_empty(), "nothing expired yet");
    // A wall clock stepped forward alone does not lift it: its second must
    // also pass on the monotonic clock.
    assert!(c.sweep(now + 10).await.is_empty(), "lifted by a clock step");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let gone = c.sweep(now + 10).await;
    assert_eq!(gone, vec![soon.clone()]);
    assert_eq!(rx.try_recv().unwrap(), ContainEvent::Released(soon));
    let listed = c.quarantines.list(now);
    assert_eq!(listed, vec![keep.clone()]);
    // The memory store itself filters by wall clock, so check the key is gone.
    let stored = c.store().list(NS_QUARANTINE).await.unwrap();
    assert_eq!(
        stored.iter().map(|e| e.key.clone()).collect::<Vec<_>>(),
        vec![keep.target.key()]
    );
}

#[tokio::test]
async fn unreadable_kill_switch_record_fails_closed() {
    // A memory store with a garbage record.
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
    store
        .put(NS_KILLSWITCH, "global", json!({"garbage": true}), None)
        .await
        .unwrap();
    let c = Containment::open(store).await.unwrap();
    assert_eq!(c.kill_switch().map(|k| k.mode), Some(Mode::DenyAll));
    assert_eq!(
        c.verdict(&subject(), now_unix()).mode(),
        Some(Mode::DenyAll)
    );

    // And through a file store across a restart.
    let dir = TempDir::new("garbage-kill");
    {
        let s = FileStore::open(&dir.0).unwrap();
        s.put(NS_KILLSWITCH, "global", json!("not a kill switch"), None)
            .await
            .unwrap();
    }
    let c = open_file(&dir).await;
    let v = c.verdict(
        &Subject {
            identity: "anyone",
            ..Default::default()
        },
        now_unix(),
    );
    assert_eq!(v.mode(), Some(Mode::DenyAll));
}

#[tokio::test]
async fn unreadable_quarantine_is_skipped_but_others_load() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
    store
        .put(NS_QUARANTINE, "agent:x", json!([1, 2]), None)
        .await
        .unwrap();
    let good = q(TargetKind::Agent, AGENT, Mode::ReadOnly);
    store
        .put(
            NS_QUARANTINE,
            &good.target.key(),
            serde_json::to_value(&good).unwrap(),
            None,
        )
        .await
        .unwrap();
    let c = Containment::open(store).await.unwrap();
    assert_eq!(c.quarantines.list(now_unix()), vec![good]);
    assert!(c.kill_switch().is_none());
}

/// Two replicas over one shared store (the memory store reports every
/// write on its change feed, as a shared store reports other replicas').
async fn replicas() -> (Arc<Containment>, Arc<Containment>) {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
    let a = Arc::new(Containment::open(store.clone()).await.unwrap());
    let b = Arc::new(Containment::open(store).await.unwrap());
    a.follow();
    b.follow();
    (a, b)
}

async fn until(mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !f() {
        assert!(std::time::Instant::now() < end, "not within 5 s");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_followed_store_carries_quarantines_releases_revocations_and_the_kill_switch() {
    let (a, b) = replicas().await;
    let mut events = b.subscribe();
    let s = subject();
    a.quarantine(q(TargetKind::Agent, AGENT, Mode::DenyAll))
        .await
        .unwrap();
    until(|| b.verdict(&s, now_unix()).mode() == Some(Mode::DenyAll)).await;
    assert!(
        matches!(events.recv().await.unwrap(), ContainEvent::Quarantined(q) if q.target.value == AGENT)
    );
    a.release(&Target::new(TargetKind::Agent, AGENT))
        .await
        .unwrap();
    until(|| b.verdict(&s, now_unix()) == Verdict::Clear).await;
    assert!(matches!(
        events.recv().await.unwrap(),
        ContainEvent::Released(_)
    ));
    a.revoke(token("jti-9")).await.unwrap();
    until(|| b.revocations.token_revoked("jti-9")).await;
    assert!(matches!(
        events.recv().await.unwrap(),
        ContainEvent::Revoked(_)
    ));
    b.set_kill_switch(Some(kill(Mode::ReadOnly))).await.unwrap();
    until(|| a.kill_switch().map(|k| k.mode) == Some(Mode::ReadOnly)).await;
    b.set_kill_switch(None).await.unwrap();
    until(|| a.kill_switch().is_none()).await;
}

#[tokio::test]
async fn own_writes_coming_back_from_the_feed_announce_nothing_twice() {
    let (a, _b) = replicas().await;
    let mut events = a.subscribe();
    a.quarantine(q(TargetKind::User, USER, Mode::ReadOnly))
        .await
        .unwrap();
    assert!(matches!(
        events.recv().await.unwrap(),
        ContainEvent::Quarantined(_)
    ));
    // Give the feed time to deliver the write back to `a`.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        matches!(
            events.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Empty)
        ),
        "a second event for the same quarantine"
    );
}

#[tokio::test]
async fn an_unreadable_kill_switch_change_counts_as_deny_all() {
    let c = Containment::in_memory();
    let changed = c.apply_change(&portcullis_contain::store::Change {
        ns: NS_KILLSWITCH.into(),
        key: "global".into(),
        entry: Some(portcullis_contain::store::Entry {
            key: "global".into(),
            value: json!({"mode": "sideways"}),
            expires_at: None,
        }),
    });
    assert!(changed);
    assert_eq!(c.kill_switch().unwrap().mode, Mode::DenyAll);
    assert_eq!(
        c.verdict(&subject(), now_unix()).mode(),
        Some(Mode::DenyAll)
    );
}

#[tokio::test]
async fn resync_adds_what_the_store_holds_and_never_lifts() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
    let c = Containment::open(store.clone()).await.unwrap();
    // In force here but not (yet) in the store: must survive a resync.
    c.enforce(q(TargetKind::Device, DEVICE, Mode::DenyAll));
    // Written by another replica while this one missed the feed.
    store
        .put(
            NS_QUARANTINE,
            &Target::new(TargetKind::Session, SESSION).key(),
            serde_json::to_value(q(TargetKind::Session, SESSION, Mode::ReadOnly)).unwrap(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(c.resync().await.unwrap(), 1);
    let targets: Vec<String> = c
        .quarantines
        .list(now_unix())
        .iter()
        .map(|q| q.target.to_string())
        .collect();
    assert_eq!(targets.len(), 2, "{targets:?}");
    assert_eq!(c.resync().await.unwrap(), 0, "nothing new the second time");
}

#[test]
fn a_wall_clock_step_neither_way_lifts_a_quarantine_early() {
    let set = portcullis_contain::quarantine::Quarantines::default();
    let now = now_unix();
    let mut timed = q(TargetKind::User, "mallory", Mode::DenyAll);
    timed.expires_at = Some(now + 60);
    set.insert_at(timed.clone(), now);
    let who = Subject {
        identity: "spiffe://example.org/agent/x",
        user: Some("mallory"),
        ..Subject::default()
    };
    for step in [0, 61, 3_600, 86_400 * 365] {
        assert_eq!(set.check(&who, now + step), Some(timed.clone()), "+{step}s");
        assert_eq!(set.list(now + step), vec![timed.clone()], "+{step}s");
    }
    assert!(
        set.sweep(now + 86_400).is_empty(),
        "swept after a forward step"
    );
    // Back in time: still in force (the wall clock says so too).
    assert_eq!(set.check(&who, now - 3_600), Some(timed.clone()));
    // Learned with no time left (e.g. from a replica whose clock is ahead):
    // the floor is now, so the wall clock alone decides.
    let mut stale = q(TargetKind::User, "trent", Mode::DenyAll);
    stale.expires_at = Some(now + 5);
    set.insert_at(stale.clone(), now + 5);
    let trent = Subject {
        identity: "spiffe://example.org/agent/y",
        user: Some("trent"),
        ..Subject::default()
    };
    assert_eq!(set.check(&trent, now), Some(stale.clone()));
    assert_eq!(set.check(&trent, now + 5), None);
}
