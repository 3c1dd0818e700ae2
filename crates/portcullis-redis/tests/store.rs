//! The Redis store against real redis-server processes: the `StateStore`
//! contract (put/list/remove, expiry, batches), propagation between two
//! replicas (measured), and the outage story (outbox, stale cache, health,
//! reconnection, resync), with Redis restarted empty, restarted with its
//! data, and flushed under the replicas' feet.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{cfg, eventually, raw, RedisServer};
use portcullis_contain::store::{Change, Entry};
use portcullis_contain::{now_unix, StateStore};
use portcullis_redis::RedisStore;
use serde_json::{json, Value};
use tokio::sync::broadcast;

fn entry(key: &str, value: Value) -> Entry {
    Entry {
        key: key.into(),
        value,
        expires_at: None,
    }
}

fn kv(entries: &[Entry]) -> Vec<(String, Value)> {
    entries
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect()
}

/// Every change waiting on `rx` now.
fn drain(rx: &mut broadcast::Receiver<Change>) -> Vec<Change> {
    let mut out = Vec::new();
    while let Ok(c) = rx.try_recv() {
        out.push(c);
    }
    out
}

/// `view` with `changes` applied in order.
fn fold(mut view: BTreeMap<String, Value>, changes: &[Change]) -> BTreeMap<String, Value> {
    for c in changes {
        match &c.entry {
            Some(e) => view.insert(c.key.clone(), e.value.clone()),
            None => view.remove(&c.key),
        };
    }
    view
}

fn as_map(entries: &[Entry]) -> BTreeMap<String, Value> {
    entries
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_list_remove_expiry_and_batches() {
    let server = RedisServer::start(&[]).await;
    let s = RedisStore::connect(&cfg(&server.url())).await.unwrap();
    let now = now_unix();
    s.put("q", "a", json!({"n": 1}), None).await.unwrap();
    s.put("q", "b", json!(2), Some(now + 100)).await.unwrap();
    s.put("q", "gone", json!(3), Some(now - 1)).await.unwrap();
    s.put("other", "a", json!("x"), None).await.unwrap();
    let l = s.list("q").await.unwrap();
    assert_eq!(
        kv(&l),
        vec![("a".into(), json!({"n": 1})), ("b".into(), json!(2))]
    );
    assert_eq!(l[1].expires_at, Some(now + 100));
    assert_eq!(
        kv(&s.list("other").await.unwrap()),
        vec![("a".into(), json!("x"))]
    );
    assert!(s.list("empty").await.unwrap().is_empty());
    // One entry by key, with the same expiry rule; shared with other replicas.
    assert!(s.shared());
    assert_eq!(
        s.get("q", "b").await.unwrap().map(|e| e.value),
        Some(json!(2))
    );
    assert_eq!(s.get("q", "gone").await.unwrap(), None, "expired");
    // Several by key in one round trip, in the order asked, same rules.
    let keys: Vec<String> = ["b", "missing", "gone", "a"].map(String::from).to_vec();
    let many: Vec<Option<Value>> = s
        .get_many("q", &keys)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.map(|e| e.value))
        .collect();
    assert_eq!(
        many,
        vec![Some(json!(2)), None, None, Some(json!({"n": 1}))]
    );
    assert!(s.get_many("q", &[]).await.unwrap().is_empty());
    assert_eq!(s.get("q", "nope").await.unwrap(), None);
    assert!(s.status().current && s.status().pending_writes == 0);

    // Redis keeps the expiry itself.
    let mut r = raw(&server.url()).await;
    let ttl: i64 = redis::cmd("TTL")
        .arg("t:e:q:b")
        .query_async(&mut r)
        .await
        .unwrap();
    assert!((90..=100).contains(&ttl), "ttl {ttl}");
    let ttl: i64 = redis::cmd("TTL")
        .arg("t:e:q:a")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(ttl, -1);
    let gone: bool = redis::cmd("EXISTS")
        .arg("t:e:q:gone")
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(!gone);

    assert!(s.remove("q", "a").await.unwrap());
    assert!(!s.remove("q", "a").await.unwrap());
    assert!(!s.remove("q", "never").await.unwrap());
    assert_eq!(
        kv(&s.list("q").await.unwrap()),
        vec![("b".into(), json!(2))]
    );

    // One batch: the last write of a key wins, as one by one.
    s.put_many(
        "q",
        vec![
            entry("x", json!(1)),
            entry("y", json!(1)),
            entry("x", json!(2)),
        ],
    )
    .await
    .unwrap();
    s.put_many("q", vec![]).await.unwrap();
    assert_eq!(
        kv(&s.list("q").await.unwrap()),
        vec![
            ("b".into(), json!(2)),
            ("x".into(), json!(2)),
            ("y".into(), json!(1))
        ]
    );

    // An entry that expires for real drops out of the list (and the index).
    s.put("exp", "soon", json!(1), Some(now_unix() + 1))
        .await
        .unwrap();
    assert_eq!(s.list("exp").await.unwrap().len(), 1);
    // The store hides it by this process's clock; the list script prunes
    // the index by Redis's, which can be a second boundary behind: a later
    // list prunes it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let listed = s.list("exp").await.unwrap().len();
        let members: i64 = redis::cmd("ZCARD")
            .arg("t:ns:exp")
            .query_async(&mut r)
            .await
            .unwrap();
        if (listed, members) == (0, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "entry did not expire: listed {listed}, index members {members}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Namespaces that would make keys ambiguous are refused.
    assert!(s.put("a:b", "k", json!(1), None).await.is_err());
    assert!(s.list("a:b").await.is_err());

    let d = s.describe();
    assert!(
        d.starts_with(&format!("redis redis://127.0.0.1:{}/0", server.port)),
        "{d}"
    );
    let h = s.health();
    assert!(h.ready(), "{h:?}");
    assert!(s.is_connected());
    assert_eq!(s.replica_id().len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_see_each_others_changes_within_100ms() {
    let server = RedisServer::start(&[]).await;
    let a = RedisStore::connect(&cfg(&server.url())).await.unwrap();
    let b = RedisStore::connect(&cfg(&server.url())).await.unwrap();
    assert_ne!(a.replica_id(), b.replica_id());
    let mut ra = a.changes();
    let mut rb = b.changes();
    // B has read the namespace (the gateway lists at start): cached there.
    assert!(b.list("q").await.unwrap().is_empty());

    // From the write being issued to the change arriving at the other one.
    let mut lat = Vec::new();
    for i in 0..20 {
        let (from, to, rx) = if i % 2 == 0 {
            (&a, "b", &mut rb)
        } else {
            (&b, "a", &mut ra)
        };
        let key = format!("k{i}");
        let t0 = Instant::now();
        from.put("q", &key, json!(i), None).await.unwrap();
        let c = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{to} never saw {key}"))
            .unwrap();
        lat.push(t0.elapsed());
        assert_eq!(c.ns, "q");
        assert_eq!(c.key, key);
        assert_eq!(c.entry.unwrap().value, json!(i));
    }
    lat.sort();
    let (median, max) = (lat[lat.len() / 2], lat[lat.len() - 1]);
    println!("propagation (issue -> other replica's changes()): median {median:?}, max {max:?}");
    // The requirement is 100 ms; loopback takes well under a millisecond
    // (median asserted at 20 ms to leave room for a loaded machine).
    assert!(max < Duration::from_millis(100), "max {max:?}");
    assert!(median < Duration::from_millis(20), "median {median:?}");
    // Own writes are not announced to oneself.
    assert!(drain(&mut ra).is_empty());
    assert!(drain(&mut rb).is_empty());

    // Removals and batches travel too.
    assert!(a.remove("q", "k0").await.unwrap());
    let c = tokio::time::timeout(Duration::from_secs(2), rb.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((c.key.as_str(), c.entry), ("k0", None));
    a.put_many(
        "q",
        (0..5).map(|i| entry(&format!("m{i}"), json!(i))).collect(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    while got.len() < 5 {
        let c = tokio::time::timeout(Duration::from_secs(2), rb.recv())
            .await
            .unwrap()
            .unwrap();
        got.push(c.key);
    }
    assert_eq!(got, vec!["m0", "m1", "m2", "m3", "m4"]);
    // A namespace B never read still reaches its changes().
    a.put("fresh", "z", json!(1), None).await.unwrap();
    let c = tokio::time::timeout(Duration::from_secs(2), rb.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((c.ns.as_str(), c.key.as_str()), ("fresh", "z"));
    assert_eq!(
        as_map(&a.list("q").await.unwrap()),
        as_map(&b.list("q").await.unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_outbox_stale_cache_then_drain_in_order_and_catch_up() {
    let mut server = RedisServer::start(&[]).await;
    let a = RedisStore::connect(&cfg(&server.url())).await.unwrap();
    let b = RedisStore::connect(&cfg(&server.url())).await.unwrap();
    a.put("q", "k1", json!(1), None).await.unwrap();
    let b_before = as_map(&b.list("q").await.unwrap());
    assert_eq!(b_before.len(), 1);
    let mut ra = a.changes();
    let mut rb = b.changes();

    server.kill().await;
    eventually(5, "both replicas notice", || {
        !a.health().connected && !b.health().connected && !a.is_connected()
    })
    .await;

    // Writes during the outage: refused as "not yet stored", kept in order.
    for (k, v) in [("k2", 2), ("k3", 1), ("k3", 2), ("k3", 3)] {
        let e = a.put("q", k, json!(v), None).await.unwrap_err();
        assert!(
            matches!(e, portcullis_contain::StoreError::Queued(_)),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(e.contains("not yet stored") && e.contains("outbox"), "{e}");
    }
    let e = a.remove("q", "k1").await.unwrap_err().to_string();
    assert!(e.contains("not yet stored"), "{e}");
    let e = b
        .put("q", "b1", json!(1), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not yet stored"), "{e}");
    let h = a.health();
    assert_eq!(h.outbox, 5, "{h:?}");
    assert!(!h.ready());
    assert!(h.last_error.is_some());

    // Reads serve the last known state (plus one's own queued writes).
    assert_eq!(
        kv(&a.list("q").await.unwrap()),
        vec![("k2".into(), json!(2)), ("k3".into(), json!(3))]
    );
    assert_eq!(
        kv(&b.list("q").await.unwrap()),
        vec![("b1".into(), json!(1)), ("k1".into(), json!(1))]
    );
    // One entry: the queued write wins, then the last known state.
    assert_eq!(
        a.get("q", "k3").await.unwrap().map(|e| e.value),
        Some(json!(3))
    );
    assert_eq!(a.get("q", "k1").await.unwrap(), None, "queued removal");
    assert_eq!(
        b.get("q", "k1").await.unwrap().map(|e| e.value),
        Some(json!(1))
    );
    assert_eq!(b.get("q", "k2").await.unwrap(), None);
    assert!(!a.status().current && a.status().pending_writes == 5);
    // Never read here: no last known state, said so.
    assert!(b
        .get("never", "x")
        .await
        .unwrap_err()
        .to_string()
        .contains("never read"));
    let e = b.list("never").await.unwrap_err().to_string();
    assert!(e.contains("never read"), "{e}");
    // The global rate limit cannot be checked: said so, caller decides.
    let e = portcullis_contain::rate::SharedLimiter::check(
        &a,
        "id",
        portcullis_contain::rate::Rate {
            per_minute: 60,
            burst: 1,
        },
        None,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("rate limit not checked"), "{e}");

    // Redis back, empty (it lost k1 with the restart).
    server.restart().await;
    eventually(10, "outboxes drained and feeds in sync", || {
        a.health().ready() && b.health().ready()
    })
    .await;
    assert!(a.health().reconnects >= 1);
    assert!(a.flush(Duration::from_millis(10)).await);

    let want: BTreeMap<String, Value> = [
        ("b1".to_string(), json!(1)),
        ("k2".to_string(), json!(2)),
        ("k3".to_string(), json!(3)),
    ]
    .into();
    assert_eq!(as_map(&a.list("q").await.unwrap()), want);
    assert_eq!(as_map(&b.list("q").await.unwrap()), want);
    let mut r = raw(&server.url()).await;
    let k3: String = redis::cmd("GET")
        .arg("t:e:q:k3")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(serde_json::from_str::<Entry>(&k3).unwrap().value, json!(3));

    // What each replica announced brings its consumers to the same state:
    // each from what it had listed plus its own writes.
    let mut b_own = b_before.clone();
    b_own.insert("b1".into(), json!(1));
    let seen_b = converge(&mut rb, b_own, &want).await;
    let k3: Vec<Value> = seen_b
        .iter()
        .filter(|c| c.key == "k3")
        .map(|c| c.entry.as_ref().unwrap().value.clone())
        .collect();
    assert!(
        k3.windows(2).all(|w| w[0].as_i64() < w[1].as_i64()) && k3.last() == Some(&json!(3)),
        "k3 arrived out of order: {k3:?}"
    );
    let a_own: BTreeMap<String, Value> =
        [("k2".to_string(), json!(2)), ("k3".to_string(), json!(3))].into();
    let seen_a = converge(&mut ra, a_own, &want).await;
    assert!(
        seen_a.iter().all(|c| c.key == "b1" || c.key == "k1"),
        "{seen_a:?}"
    );
}

/// Collects changes until they bring `start` to `want` (5 s at most), and
/// checks nothing moves it away afterwards.
async fn converge(
    rx: &mut broadcast::Receiver<Change>,
    start: BTreeMap<String, Value>,
    want: &BTreeMap<String, Value>,
) -> Vec<Change> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut all = Vec::new();
    loop {
        all.extend(drain(rx));
        if fold(start.clone(), &all) == *want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "changes {all:?} do not bring {start:?} to {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    all.extend(drain(rx));
    assert_eq!(fold(start, &all), *want, "{all:?}");
    all
}

/// The feed's health ping while idle must not count as a failure: the
/// subscribed connection answers PING differently from a normal one.
#[tokio::test]
async fn an_idle_feed_stays_subscribed() {
    let server = RedisServer::start(&[]).await;
    let a = RedisStore::connect(&cfg(&server.url())).await.unwrap();
    let b = RedisStore::connect(&cfg(&server.url())).await.unwrap();
    let mut rb = b.changes();
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let h = b.health();
    assert!(h.ready(), "{h:?}");
    assert_eq!(h.last_error, None, "no failure while idle");
    // Still hearing A, after the pings.
    a.put("q", "k", json!(1), None).await.unwrap();
    eventually(2, "B hears A after idling", || {
        drain(&mut rb).iter().any(|c| c.key == "k")
    })
    .await;
}

/// Redis restarted without its data: nothing known is lifted — every
/// replica writes its last known state back, a replica that joins later
/// reads it, and only explicit changes (here a removal queued during the
/// outage) take effect.
#[tokio::test]
async fn redis_restarted_empty_gets_the_last_known_state_back() {
    let mut server = RedisServer::start(&[]).await;
    let a = RedisStore::connect(&cfg(&server.url())).await.unwrap();
    let b = RedisStore::connect(&cfg(&server.url())).await.unwrap();
    a.put("q", "keep", json!("a"), None).await.unwrap();
    a.put("q", "drop", json!("a"), None).await.unwrap();
    b.put("r", "b-only", json!("b"), None).await.unwrap();
    assert_eq!(a.list("q").await.unwrap().len(), 2);
    assert_eq!(b.list("q").await.unwrap().len(), 2);
    assert_eq!(b.list("r").await.unwrap().len(), 1);
    let mut ra = a.changes();
    let mut rb = b.changes();

    server.kill().await;
    eventually(5, "both notice", || !a.is_connected() && !b.is_connected()).await;
    // A removal issued during the outage: queued.
    assert!(matches!(
        a.remove("q", "drop").await,
        Err(portcullis_contain::StoreError::Queued(_))
    ));
    server.restart().await; // no persistence: an empty Redis

    eventually(10, "both back and drained", || {
        a.health().ready() && b.health().ready()
    })
    .await;
    let fresh = RedisStore::connect(&cfg(&server.url())).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let l = kv(&fresh.list("q").await.unwrap());
        if l == vec![("keep".to_owned(), json!("a"))] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the union minus the explicit removal is not stored again: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        kv(&fresh.list("r").await.unwrap()),
        vec![("b-only".into(), json!("b"))]
    );
    // Nobody heard "keep" (or B's entry) go away; B heard the removal.
    let ca = drain(&mut ra);
    let cb = drain(&mut rb);
    for c in ca.iter().chain(cb.iter()) {
        assert!(
            !(c.entry.is_none() && (c.key == "keep" || c.key == "b-only")),
            "a known entry was announced as removed: {c:?}"
        );
    }
    assert!(
        cb.iter().any(|c| c.key == "drop" && c.entry.is_none()),
        "{cb:?}"
    );
    assert_eq!(
        kv(&b.list("q").await.unwrap()),
        vec![("keep".into(), json!("a"))]
    );
}

/// The global limiter takes several cells at once (a replica's lease) and
/// never more than the burst allows; refusals say how long to wait.
#[tokio::test]
async fn the_shared_limiter_leases_cells_within_the_burst() {
    use portcullis_contain::rate::{Rate, SharedLimiter};
    let server = RedisServer::start(&[]).await;
    let a = RedisStore::connect(&cfg(&server.url())).await.unwrap();
    let b = RedisStore::connect(&cfg(&server.url())).await.unwrap();
    let rate = Rate {
        per_minute: 60,
        burst: 8,
    };
    let t0 = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let g = a.take("id", rate, 5, Some(t0)).await.unwrap();
    assert_eq!(g.cells, 5);
    // The other replica gets what is left of the burst, not more.
    let g = b.take("id", rate, 5, Some(t0)).await.unwrap();
    assert_eq!(g.cells, 3);
    let g = b.take("id", rate, 5, Some(t0)).await.unwrap();
    assert_eq!((g.cells, g.wait), (0, Duration::from_secs(1)));
    assert_eq!(
        a.check("id", rate, Some(t0)).await.unwrap(),
        Some(Duration::from_secs(1))
    );
    // One interval later, one cell.
    let t1 = t0 + Duration::from_secs(1);
    let g = a.take("id", rate, 5, Some(t1)).await.unwrap();
    assert_eq!(g.cells, 1);
    assert_eq!(
        a.check("id", rate, Some(t1)).await.unwrap(),
        Some(Duration::from_secs(1))
    );
    // A rate above a million a second (interval under 1 µs) is not
    // divided by zero: it allows, up to its burst at one instant.
    let fast = Rate {
        per_minute: 600_000_000,
        burst: 4,
    };
    let g = a.take("fast", fast, 16, Some(t0)).await.unwrap();
    assert_eq!(g.cells, 4);
    let later = t0 + Duration::from_millis(1);
    for _ in 0..3 {
        assert_eq!(a.check("fast", fast, Some(later)).await.unwrap(), None);
    }
}
