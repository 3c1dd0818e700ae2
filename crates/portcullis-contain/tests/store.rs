//! The embedded journal store: round trips, persistence across reopen,
//! expiry, torn last lines, removal, the one-process lock, compaction and
//! change events (and the same contract from the in-memory store).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use portcullis_contain::store::{Change, Entry};
use portcullis_contain::{now_unix, FileStore, MemoryStore, StateStore, StoreError};
use serde_json::{json, Value};

/// A fresh, unique folder under the system temp dir (removed on drop).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "portcullis-contain-store-{tag}-{}-{}-{}",
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

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn keys(entries: &[Entry]) -> Vec<String> {
    entries.iter().map(|e| e.key.clone()).collect()
}

fn value_of<'a>(entries: &'a [Entry], key: &str) -> Option<&'a Value> {
    entries.iter().find(|e| e.key == key).map(|e| &e.value)
}

#[tokio::test]
async fn put_list_remove_round_trip() {
    let dir = TempDir::new("roundtrip");
    let s = FileStore::open(dir.path()).unwrap();
    assert!(s.list("q").await.unwrap().is_empty());

    s.put("q", "a", json!({"n": 1}), None).await.unwrap();
    s.put("q", "b", json!("two"), Some(now_unix() + 3600))
        .await
        .unwrap();
    s.put("other", "a", json!(3), None).await.unwrap();

    let q = s.list("q").await.unwrap();
    assert_eq!(keys(&q), vec!["a", "b"]);
    assert_eq!(value_of(&q, "a"), Some(&json!({"n": 1})));
    assert_eq!(value_of(&q, "b"), Some(&json!("two")));
    assert_eq!(q[1].expires_at.map(|t| t > now_unix()), Some(true));
    // Namespaces do not leak into each other.
    assert_eq!(keys(&s.list("other").await.unwrap()), vec!["a"]);
    assert!(s.list("qq").await.unwrap().is_empty());
    assert!(s.list("").await.unwrap().is_empty());

    // Overwrite replaces.
    s.put("q", "a", json!({"n": 2}), None).await.unwrap();
    assert_eq!(
        value_of(&s.list("q").await.unwrap(), "a"),
        Some(&json!({"n": 2}))
    );

    assert!(s.remove("q", "a").await.unwrap());
    assert!(
        !s.remove("q", "a").await.unwrap(),
        "second removal is a no-op"
    );
    assert!(!s.remove("q", "never").await.unwrap());
    assert_eq!(keys(&s.list("q").await.unwrap()), vec!["b"]);
    assert_eq!(keys(&s.list("other").await.unwrap()), vec!["a"]);
    assert!(s.describe().starts_with("file "));
    assert!(s.path().ends_with("state.jsonl"));
}

#[tokio::test]
async fn entries_survive_reopen() {
    let dir = TempDir::new("reopen");
    {
        let s = FileStore::open(dir.path()).unwrap();
        s.put("q", "a", json!({"mode": "deny-all"}), None)
            .await
            .unwrap();
        s.put("q", "b", json!([1, 2, 3]), Some(now_unix() + 3600))
            .await
            .unwrap();
        s.put("r", "x", json!(null), None).await.unwrap();
    }
    let s = FileStore::open(dir.path()).unwrap();
    let q = s.list("q").await.unwrap();
    assert_eq!(keys(&q), vec!["a", "b"]);
    assert_eq!(value_of(&q, "a"), Some(&json!({"mode": "deny-all"})));
    assert_eq!(value_of(&q, "b"), Some(&json!([1, 2, 3])));
    assert!(q[1].expires_at.is_some());
    assert_eq!(keys(&s.list("r").await.unwrap()), vec!["x"]);

    // And once more, after writes made by the reopened store.
    s.put("q", "c", json!(3), None).await.unwrap();
    drop(s);
    let s = FileStore::open(dir.path()).unwrap();
    assert_eq!(keys(&s.list("q").await.unwrap()), vec!["a", "b", "c"]);
}

#[tokio::test]
async fn expired_entries_are_never_listed_and_dropped_at_reopen() {
    let dir = TempDir::new("expiry");
    let now = now_unix();
    {
        let s = FileStore::open(dir.path()).unwrap();
        s.put("q", "past", json!(1), Some(now - 10)).await.unwrap();
        s.put("q", "epoch", json!(1), Some(0)).await.unwrap();
        s.put("q", "future", json!(2), Some(now + 3600))
            .await
            .unwrap();
        s.put("q", "forever", json!(3), None).await.unwrap();
        assert_eq!(
            keys(&s.list("q").await.unwrap()),
            vec!["forever", "future"],
            "expired entries are not listed even before reopen"
        );
    }
    let journal_before = std::fs::read_to_string(dir.path().join("state.jsonl")).unwrap();
    assert!(journal_before.contains("\"past\""));

    let s = FileStore::open(dir.path()).unwrap();
    assert_eq!(keys(&s.list("q").await.unwrap()), vec!["forever", "future"]);
    // Reopen compacted the journal without them.
    let journal = std::fs::read_to_string(s.path()).unwrap();
    assert!(!journal.contains("\"past\""), "{journal}");
    assert!(!journal.contains("\"epoch\""), "{journal}");
    assert!(journal.contains("\"future\""), "{journal}");
    assert_eq!(journal.lines().count(), 2, "{journal}");
}

#[tokio::test]
async fn torn_last_line_is_skipped_and_earlier_entries_survive() {
    let dir = TempDir::new("torn");
    {
        let s = FileStore::open(dir.path()).unwrap();
        s.put("q", "a", json!({"v": 1}), None).await.unwrap();
        s.put("q", "b", json!({"v": 2}), None).await.unwrap();
        s.remove("q", "b").await.unwrap();
        s.put("q", "c", json!({"v": 3}), None).await.unwrap();
    }
    let journal = dir.path().join("state.jsonl");
    // A crash mid-append: half of a put for "d", no newline.
    let full = r#"{"ns":"q","key":"d","put":{"key":"d","value":{"v":4}}}"#;
    let half = &full[..full.len() / 2];
    std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap()
        .write_all(half.as_bytes())
        .unwrap();

    let s = FileStore::open(dir.path()).unwrap();
    let q = s.list("q").await.unwrap();
    assert_eq!(keys(&q), vec!["a", "c"]);
    assert_eq!(value_of(&q, "a"), Some(&json!({"v": 1})));
    assert_eq!(value_of(&q, "c"), Some(&json!({"v": 3})));

    // The store keeps working after the torn line, and the next reopen
    // sees both the old entries and the new write.
    s.put("q", "e", json!({"v": 5}), None).await.unwrap();
    drop(s);
    let s = FileStore::open(dir.path()).unwrap();
    assert_eq!(keys(&s.list("q").await.unwrap()), vec!["a", "c", "e"]);
    let text = std::fs::read_to_string(&journal).unwrap();
    for line in text.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
}

#[tokio::test]
async fn foreign_lines_in_the_middle_are_skipped() {
    let dir = TempDir::new("foreign");
    std::fs::create_dir_all(dir.path()).unwrap();
    std::fs::write(
        dir.path().join("state.jsonl"),
        concat!(
            r#"{"ns":"q","key":"a","put":{"key":"a","value":1}}"#,
            "\n",
            "not json at all\n",
            r#"{"unexpected":"shape"}"#,
            "\n",
            r#"{"ns":"q","key":"b","put":{"key":"b","value":2}}"#,
            "\n",
        ),
    )
    .unwrap();
    let s = FileStore::open(dir.path()).unwrap();
    assert_eq!(keys(&s.list("q").await.unwrap()), vec!["a", "b"]);
}

#[tokio::test]
async fn removal_survives_reopen() {
    let dir = TempDir::new("removal");
    {
        let s = FileStore::open(dir.path()).unwrap();
        s.put("q", "a", json!(1), None).await.unwrap();
        s.put("q", "b", json!(2), None).await.unwrap();
    }
    {
        let s = FileStore::open(dir.path()).unwrap();
        assert!(s.remove("q", "a").await.unwrap());
    }
    let s = FileStore::open(dir.path()).unwrap();
    assert_eq!(keys(&s.list("q").await.unwrap()), vec!["b"]);
    assert!(!s.remove("q", "a").await.unwrap());
}

#[tokio::test]
async fn second_open_of_a_live_store_is_refused_until_the_first_is_dropped() {
    let dir = TempDir::new("lock");
    let first = FileStore::open(dir.path()).unwrap();
    first.put("q", "a", json!(1), None).await.unwrap();

    match FileStore::open(dir.path()) {
        Err(StoreError::Unavailable(msg)) => {
            assert!(msg.contains("in use"), "{msg}");
        }
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("a second open of a locked store must fail"),
    }
    // The refused open did not disturb the first one's journal.
    first.put("q", "b", json!(2), None).await.unwrap();
    assert_eq!(keys(&first.list("q").await.unwrap()), vec!["a", "b"]);

    drop(first);
    let second = FileStore::open(dir.path()).unwrap();
    assert_eq!(keys(&second.list("q").await.unwrap()), vec!["a", "b"]);
}

#[tokio::test]
async fn compaction_keeps_the_map_equal() {
    let dir = TempDir::new("compact");
    let journal = dir.path().join("state.jsonl");
    let mut expected: std::collections::BTreeMap<String, Value> = Default::default();
    {
        let s = FileStore::open(dir.path()).unwrap();
        // 1,500 ops over 7 keys: puts, overwrites and removals.
        for i in 0..1500u32 {
            let key = format!("k{}", i % 7);
            if i % 11 == 3 {
                let had = s.remove("ns", &key).await.unwrap();
                assert_eq!(had, expected.remove(&key).is_some(), "op {i}");
            } else {
                let v = json!({"i": i});
                s.put("ns", &key, v.clone(), None).await.unwrap();
                expected.insert(key, v);
            }
            // A second namespace that is only written once must survive
            // every compaction.
            if i == 500 {
                s.put("keep", "me", json!("kept"), None).await.unwrap();
            }
        }
        let listed: std::collections::BTreeMap<String, Value> = s
            .list("ns")
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect();
        assert_eq!(listed, expected, "before reopen");
        // Compaction ran while live: the journal holds far fewer than
        // 1,500 lines.
        let lines = std::fs::read_to_string(&journal).unwrap().lines().count();
        assert!(
            lines <= 1025,
            "journal not compacted while open: {lines} lines"
        );
    }
    let s = FileStore::open(dir.path()).unwrap();
    let listed: std::collections::BTreeMap<String, Value> = s
        .list("ns")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    assert_eq!(listed, expected, "after reopen");
    assert_eq!(
        value_of(&s.list("keep").await.unwrap(), "me"),
        Some(&json!("kept"))
    );
    let lines = std::fs::read_to_string(&journal).unwrap().lines().count();
    assert_eq!(lines, expected.len() + 1, "reopen compacts to live entries");
    assert!(!dir.path().join("state.jsonl.tmp").exists());
}

#[tokio::test]
async fn changes_receive_put_and_remove_events() {
    let dir = TempDir::new("changes");
    let s = FileStore::open(dir.path()).unwrap();
    let mut rx = s.changes();
    s.put("q", "a", json!(1), Some(now_unix() + 60))
        .await
        .unwrap();
    s.remove("q", "a").await.unwrap();
    // A removal of nothing announces nothing.
    s.remove("q", "ghost").await.unwrap();
    s.put("q", "b", json!(2), None).await.unwrap();

    let c = rx.try_recv().unwrap();
    assert_eq!(c.ns, "q");
    assert_eq!(c.key, "a");
    let e = c.entry.unwrap();
    assert_eq!(e.value, json!(1));
    assert!(e.expires_at.is_some());
    assert_eq!(
        rx.try_recv().unwrap(),
        Change {
            ns: "q".into(),
            key: "a".into(),
            entry: None
        }
    );
    let c = rx.try_recv().unwrap();
    assert_eq!(
        (c.key.as_str(), c.entry.map(|e| e.value)),
        ("b", Some(json!(2)))
    );
    assert!(
        rx.try_recv().is_err(),
        "no event for removing a missing key"
    );
}

#[tokio::test]
async fn memory_store_keeps_the_same_contract() {
    let s = MemoryStore::default();
    let mut rx = s.changes();
    let now = now_unix();
    s.put("q", "b", json!(2), Some(now + 60)).await.unwrap();
    s.put("q", "a", json!(1), None).await.unwrap();
    s.put("q", "old", json!(0), Some(now - 1)).await.unwrap();
    s.put("r", "a", json!(9), None).await.unwrap();
    assert_eq!(keys(&s.list("q").await.unwrap()), vec!["a", "b"]);
    assert!(s.remove("q", "a").await.unwrap());
    assert!(!s.remove("q", "a").await.unwrap());
    assert_eq!(keys(&s.list("q").await.unwrap()), vec!["b"]);
    assert_eq!(keys(&s.list("r").await.unwrap()), vec!["a"]);
    let mut events = Vec::new();
    while let Ok(c) = rx.try_recv() {
        events.push((c.ns, c.key, c.entry.is_some()));
    }
    assert_eq!(
        events,
        vec![
            ("q".into(), "b".into(), true),
            ("q".into(), "a".into(), true),
            ("q".into(), "old".into(), true),
            ("r".into(), "a".into(), true),
            ("q".into(), "a".into(), false),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_many_writes_a_batch_that_survives_reopen_and_announces_each() {
    let dir = TempDir::new("put-many");
    let store = FileStore::open(dir.path()).unwrap();
    let mut rx = store.changes();
    let entries: Vec<Entry> = (0..50)
        .map(|i| Entry {
            key: format!("k{i}"),
            value: json!({"n": i}),
            expires_at: None,
        })
        .collect();
    store.put_many("risk", entries.clone()).await.unwrap();
    store.put_many("risk", Vec::new()).await.unwrap();
    for e in &entries {
        let c = rx.recv().await.unwrap();
        assert_eq!(c.ns, "risk");
        assert_eq!(c.entry.as_ref(), Some(e));
    }
    drop(store);
    let again = FileStore::open(dir.path()).unwrap();
    let mut got = again.list("risk").await.unwrap();
    got.sort_by_key(|e| e.key[1..].parse::<u32>().unwrap());
    assert_eq!(got, entries);
    // The default implementation (one put each) keeps the same contract.
    let mem = MemoryStore::default();
    mem.put_many("risk", entries.clone()).await.unwrap();
    assert_eq!(mem.list("risk").await.unwrap().len(), entries.len());
}
