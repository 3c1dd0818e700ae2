//! One replica's knowledge of the shared state, kept without I/O so its
//! rules can be tested alone: the cache of every namespace read or written
//! (what `list` answers while Redis is away), the outbox of writes not yet
//! stored, and which changes to announce on `changes()`.
//!
//! The rules, all in terms of the per-epoch sequence number every write
//! gets in Redis:
//!
//! - A slot remembers the sequence number its content is as of; a key
//!   without a slot is as of the namespace's `base` (its last snapshot).
//!   Anything older than what a slot holds is ignored, so a late reply
//!   cannot undo a newer change.
//! - What the cache holds for a cached namespace is what the consumers of
//!   `changes()` have been told (plus this replica's own writes, which it
//!   does not announce to itself): a message or a resync updates both.
//! - A key with a write of ours still in the outbox is not announced: our
//!   write will land last and the caller already applies it. If something
//!   newer than our write turns out to be stored when it lands, that is
//!   announced then.
//! - A resync (after the change feed reconnects) diffs the namespace
//!   against Redis and announces the differences; messages it already
//!   covers (sequence number not above its snapshot) are dropped.
//! - A new epoch (Redis lost its data) makes every sequence number
//!   incomparable: all drop to 0 and a resync is asked for.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use portcullis_contain::store::{Change, Entry};
use portcullis_contain::StoreError;
use tokio::sync::oneshot;

use crate::layout::{Msg, MsgOp};

/// A write on its way to Redis.
#[derive(Debug)]
pub(crate) struct Write {
    /// The namespace.
    pub ns: String,
    /// What it changes (a removal has no entry).
    pub ops: Vec<MsgOp>,
    /// Which script: the removal one, else the put one.
    pub remove: bool,
    /// The script's KEYS.
    pub keys: Vec<String>,
    /// The script's ARGV.
    pub args: Vec<String>,
}

/// A write in the outbox, and who waits for it (if anyone still does).
pub(crate) struct Pending {
    pub id: u64,
    pub write: Arc<Write>,
    pub done: Option<oneshot::Sender<bool>>,
}

#[derive(Debug, Clone, PartialEq)]
struct Slot {
    seq: u64,
    entry: Option<Entry>,
}

#[derive(Debug, Default)]
struct Space {
    base: u64,
    slots: BTreeMap<String, Slot>,
}

impl Space {
    fn seq_of(&self, key: &str) -> u64 {
        self.slots.get(key).map_or(self.base, |s| s.seq)
    }

    fn live(&self, now: u64) -> BTreeMap<String, Entry> {
        self.slots
            .iter()
            .filter_map(|(k, s)| s.entry.as_ref().map(|e| (k, e)))
            .filter(|(_, e)| e.expires_at.is_none_or(|t| t > now))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }
}

/// Why a namespace snapshot is merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Snapshot {
    /// A caller's `list`.
    Read,
    /// Catching up after the change feed (re)connected.
    Resync,
}

/// The cache, the outbox and the feed's state, under one lock.
#[derive(Default)]
pub(crate) struct State {
    epoch: Option<String>,
    /// The change feed is subscribed and caught up: messages will bring
    /// every change from now on.
    pub in_sync: bool,
    spaces: HashMap<String, Space>,
    outbox: VecDeque<Pending>,
    /// Outbox writes per (namespace, key).
    pending: HashMap<(String, String), usize>,
    next_id: u64,
    /// Redis lost its data (a new epoch) and this replica's last known
    /// state has not been written back yet.
    restore: bool,
}

fn is_pending(pending: &HashMap<(String, String), usize>, ns: &str, key: &str) -> bool {
    // Allocation only while something is pending.
    !pending.is_empty() && pending.contains_key(&(ns.to_owned(), key.to_owned()))
}

fn change(ns: &str, key: &str, entry: Option<Entry>) -> Change {
    Change {
        ns: ns.to_owned(),
        key: key.to_owned(),
        entry,
    }
}

impl State {
    /// Notes the epoch a reply or message came from; `true` when it is a
    /// new one (Redis was reset): sequence numbers restart, resync needed.
    pub fn observe_epoch(&mut self, epoch: &str) -> bool {
        match &self.epoch {
            Some(e) if e == epoch => false,
            None => {
                self.epoch = Some(epoch.to_owned());
                false
            }
            Some(_) => {
                self.epoch = Some(epoch.to_owned());
                self.restore = true;
                for sp in self.spaces.values_mut() {
                    sp.base = 0;
                    for s in sp.slots.values_mut() {
                        s.seq = 0;
                    }
                }
                true
            }
        }
    }

    /// Whether a listing made under `epoch` may be compared with the cache:
    /// not when it shows a new epoch, nor while the write-back of the last
    /// known state is still owed. Redis then lacks what it lost, and the
    /// comparison would announce every entry removed (every quarantine
    /// lifted) — the epoch may have been seen first by a write's reply or
    /// a message, between a resync's restore and its listing.
    pub fn comparable(&mut self, epoch: &str) -> bool {
        let reset = self.observe_epoch(epoch);
        !reset && !self.restore
    }

    /// Whether Redis lost its data since the last restore (and clears it):
    /// the caller then writes back [`State::known`] of every namespace.
    pub fn take_restore(&mut self) -> bool {
        std::mem::take(&mut self.restore)
    }

    /// The last known live entries of `ns` (empty if never cached).
    pub fn known(&self, ns: &str, now: u64) -> Vec<Entry> {
        self.spaces
            .get(ns)
            .map(|sp| sp.live(now).into_values().collect())
            .unwrap_or_default()
    }

    /// Whether `ns` is cached.
    #[cfg(test)]
    pub fn cached(&self, ns: &str) -> bool {
        self.spaces.contains_key(ns)
    }

    /// The cached namespaces.
    pub fn namespaces(&self) -> Vec<String> {
        self.spaces.keys().cloned().collect()
    }

    /// A message from the channel; returns what to announce.
    pub fn apply_message(&mut self, m: &Msg, mine: bool) -> Vec<Change> {
        let mut out = Vec::new();
        let pending = &self.pending;
        match self.spaces.get_mut(&m.ns) {
            None => {
                if !mine {
                    for op in &m.ops {
                        if !is_pending(pending, &m.ns, &op.key) {
                            out.push(change(&m.ns, &op.key, op.entry.clone()));
                        }
                    }
                }
            }
            Some(sp) => {
                for op in &m.ops {
                    if m.seq > sp.seq_of(&op.key) {
                        sp.slots.insert(
                            op.key.clone(),
                            Slot {
                                seq: m.seq,
                                entry: op.entry.clone(),
                            },
                        );
                        if !mine && !is_pending(pending, &m.ns, &op.key) {
                            out.push(change(&m.ns, &op.key, op.entry.clone()));
                        }
                    }
                }
            }
        }
        out
    }

    /// Our write, stored as of `seq` and out of the outbox; returns what to
    /// announce (newer changes to its keys that were held back while it
    /// was pending) and whether the namespace is not cached yet (the caller
    /// lists it once, so the cache holds the whole namespace).
    pub fn apply_local(&mut self, ns: &str, seq: u64, ops: &[MsgOp]) -> (Vec<Change>, bool) {
        let pending = &self.pending;
        let Some(sp) = self.spaces.get_mut(ns) else {
            return (Vec::new(), true);
        };
        let mut out = Vec::new();
        for op in ops {
            let cur = sp.seq_of(&op.key);
            if seq > cur {
                sp.slots.insert(
                    op.key.clone(),
                    Slot {
                        seq,
                        entry: op.entry.clone(),
                    },
                );
            } else if cur > seq && !is_pending(pending, ns, &op.key) {
                let now_stored = sp.slots.get(&op.key).and_then(|s| s.entry.clone());
                if now_stored != op.entry {
                    out.push(change(ns, &op.key, now_stored));
                }
            }
        }
        (out, false)
    }

    /// Merges a whole namespace as Redis had it at `seq`; returns what to
    /// announce (a resync always, a read only while the feed is down, as
    /// then no message will bring those changes).
    pub fn merge_snapshot(
        &mut self,
        ns: &str,
        seq: u64,
        entries: &[Entry],
        kind: Snapshot,
        now: u64,
    ) -> Vec<Change> {
        let in_sync = self.in_sync;
        let pending = &self.pending;
        let Some(sp) = self.spaces.get_mut(ns) else {
            // First time: nothing was announced from it yet, nothing to
            // diff. Read while the feed runs, messages already in flight
            // must still apply (and reach whoever follows `changes()`), so
            // the snapshot counts as old.
            let base = if kind == Snapshot::Read && in_sync {
                0
            } else {
                seq
            };
            let slots = entries
                .iter()
                .map(|e| {
                    (
                        e.key.clone(),
                        Slot {
                            seq: base,
                            entry: Some(e.clone()),
                        },
                    )
                })
                .collect();
            self.spaces.insert(ns.to_owned(), Space { base, slots });
            return Vec::new();
        };
        let announce = kind == Snapshot::Resync || !in_sync;
        if !announce && kind == Snapshot::Read {
            // Messages bring these changes, in order; merging here would
            // swallow the ones still in flight.
            return Vec::new();
        }
        let before = sp.live(now);
        let listed: BTreeMap<&str, &Entry> = entries.iter().map(|e| (e.key.as_str(), e)).collect();
        for e in entries {
            if seq >= sp.seq_of(&e.key) {
                sp.slots.insert(
                    e.key.clone(),
                    Slot {
                        seq,
                        entry: Some(e.clone()),
                    },
                );
            }
        }
        sp.slots
            .retain(|k, s| listed.contains_key(k.as_str()) || s.seq > seq);
        sp.base = sp.base.max(seq);
        let after = sp.live(now);
        let mut out = Vec::new();
        for k in before
            .keys()
            .chain(after.keys().filter(|k| !before.contains_key(*k)))
        {
            let (b, a) = (before.get(k), after.get(k));
            if b != a && !is_pending(pending, ns, k) {
                out.push(change(ns, k, a.cloned()));
            }
        }
        out
    }

    /// What this replica knows of `ns` when Redis cannot be asked: the
    /// cache plus its own writes still in the outbox; `None` if never read
    /// or written.
    pub fn offline_view(&self, ns: &str, now: u64) -> Option<Vec<Entry>> {
        let sp = self.spaces.get(ns)?;
        Some(self.overlay(ns, sp.live(now), now))
    }

    /// This replica's last queued write to one key: `Some(None)` for a
    /// queued removal, `None` when nothing is queued for it.
    pub fn queued_entry(&self, ns: &str, key: &str) -> Option<Option<Entry>> {
        if self.pending.is_empty() {
            return None;
        }
        self.outbox
            .iter()
            .rev()
            .filter(|p| p.write.ns == ns)
            .flat_map(|p| p.write.ops.iter().rev())
            .find(|op| op.key == key)
            .map(|op| op.entry.clone())
    }

    /// `entries` with this replica's outbox writes to `ns` applied in order.
    pub fn overlay(&self, ns: &str, mut map: BTreeMap<String, Entry>, now: u64) -> Vec<Entry> {
        if !self.pending.is_empty() {
            for p in self.outbox.iter().filter(|p| p.write.ns == ns) {
                for op in &p.write.ops {
                    match &op.entry {
                        Some(e) => {
                            map.insert(op.key.clone(), e.clone());
                        }
                        None => {
                            map.remove(&op.key);
                        }
                    }
                }
            }
        }
        map.into_values()
            .filter(|e| e.expires_at.is_none_or(|t| t > now))
            .collect()
    }

    /// Queues a write; `Err` when the outbox is full (nothing queued).
    pub fn enqueue(
        &mut self,
        write: Write,
        done: oneshot::Sender<bool>,
        max: usize,
    ) -> Result<(), StoreError> {
        if self.outbox.len() >= max {
            return Err(StoreError::Unavailable(format!(
                "redis unreachable and the outbox is full ({max} writes waiting): this write is NOT queued"
            )));
        }
        for op in &write.ops {
            *self
                .pending
                .entry((write.ns.clone(), op.key.clone()))
                .or_insert(0) += 1;
        }
        self.next_id += 1;
        self.outbox.push_back(Pending {
            id: self.next_id,
            write: Arc::new(write),
            done: Some(done),
        });
        Ok(())
    }

    /// The oldest write not yet stored.
    pub fn front(&self) -> Option<(u64, Arc<Write>)> {
        self.outbox.front().map(|p| (p.id, p.write.clone()))
    }

    /// Takes the oldest write out once stored (if it is still `id`).
    pub fn finish(&mut self, id: u64) -> Option<Pending> {
        if self.outbox.front().is_none_or(|p| p.id != id) {
            return None;
        }
        let p = self.outbox.pop_front()?;
        for op in &p.write.ops {
            let k = (p.write.ns.clone(), op.key.clone());
            if let Some(n) = self.pending.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.pending.remove(&k);
                }
            }
        }
        Some(p)
    }

    /// Writes waiting in the outbox.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;
    use serde_json::json;

    fn e(key: &str, v: i64) -> Entry {
        Entry {
            key: key.into(),
            value: json!(v),
            expires_at: None,
        }
    }

    fn put(key: &str, v: i64) -> MsgOp {
        MsgOp {
            key: key.into(),
            entry: Some(e(key, v)),
        }
    }

    fn del(key: &str) -> MsgOp {
        MsgOp {
            key: key.into(),
            entry: None,
        }
    }

    fn msg(seq: u64, origin: &str, ops: Vec<MsgOp>) -> Msg {
        Msg {
            seq,
            epoch: "e1".into(),
            v: 1,
            origin: origin.into(),
            ns: "q".into(),
            ops,
        }
    }

    fn keys(v: &[Change]) -> Vec<(String, Option<i64>)> {
        v.iter()
            .map(|c| {
                (
                    c.key.clone(),
                    c.entry.as_ref().map(|e| e.value.as_i64().unwrap()),
                )
            })
            .collect()
    }

    fn view(s: &State) -> Vec<(String, i64)> {
        s.offline_view("q", 0)
            .unwrap()
            .into_iter()
            .map(|e| (e.key, e.value.as_i64().unwrap()))
            .collect()
    }

    fn write(ops: Vec<MsgOp>) -> Write {
        Write {
            ns: "q".into(),
            remove: ops.iter().all(|o| o.entry.is_none()),
            ops,
            keys: vec![],
            args: vec![],
        }
    }

    #[test]
    fn uncached_namespaces_announce_every_remote_change() {
        let mut s = State::default();
        let out = s.apply_message(&msg(5, "other", vec![put("a", 1), del("b")]), false);
        assert_eq!(keys(&out), vec![("a".into(), Some(1)), ("b".into(), None)]);
        assert!(s
            .apply_message(&msg(6, "me", vec![put("a", 2)]), true)
            .is_empty());
        assert!(!s.cached("q"));
    }

    #[test]
    fn reads_while_in_sync_let_in_flight_messages_through() {
        let mut s = State {
            in_sync: true,
            ..State::default()
        };
        // Listed at seq 10; messages 9 and 10 were still in flight.
        s.merge_snapshot("q", 10, &[e("a", 2)], Snapshot::Read, 0);
        let out = s.apply_message(&msg(9, "o", vec![put("a", 1)]), false);
        assert_eq!(keys(&out), vec![("a".into(), Some(1))]);
        let out = s.apply_message(&msg(10, "o", vec![put("a", 2)]), false);
        assert_eq!(keys(&out), vec![("a".into(), Some(2))]);
        assert_eq!(view(&s), vec![("a".into(), 2)]);
        // A later read does not touch the cache while messages flow.
        assert!(s
            .merge_snapshot("q", 12, &[e("a", 3)], Snapshot::Read, 0)
            .is_empty());
        assert_eq!(view(&s), vec![("a".into(), 2)]);
    }

    #[test]
    fn resync_announces_the_difference_and_drops_covered_messages() {
        let mut s = State::default();
        s.merge_snapshot("q", 3, &[e("a", 1), e("b", 1)], Snapshot::Read, 0);
        // Outage: a changed, b removed, c added elsewhere.
        let out = s.merge_snapshot("q", 8, &[e("a", 2), e("c", 1)], Snapshot::Resync, 0);
        let mut k = keys(&out);
        k.sort();
        assert_eq!(
            k,
            vec![
                ("a".into(), Some(2)),
                ("b".into(), None),
                ("c".into(), Some(1))
            ]
        );
        s.in_sync = true;
        // Buffered messages the snapshot covers: dropped.
        assert!(s
            .apply_message(&msg(7, "o", vec![put("b", 9)]), false)
            .is_empty());
        assert!(s
            .apply_message(&msg(8, "o", vec![del("b")]), false)
            .is_empty());
        // Newer: applied and announced.
        let out = s.apply_message(&msg(9, "o", vec![put("b", 5)]), false);
        assert_eq!(keys(&out), vec![("b".into(), Some(5))]);
        assert_eq!(
            view(&s),
            vec![("a".into(), 2), ("b".into(), 5), ("c".into(), 1)]
        );
    }

    #[test]
    fn reads_while_the_feed_is_down_announce() {
        let mut s = State::default();
        s.merge_snapshot("q", 3, &[e("a", 1)], Snapshot::Read, 0);
        let out = s.merge_snapshot("q", 5, &[e("a", 2)], Snapshot::Read, 0);
        assert_eq!(keys(&out), vec![("a".into(), Some(2))]);
        // An older snapshot arriving late changes nothing.
        assert!(s.merge_snapshot("q", 4, &[], Snapshot::Read, 0).is_empty());
        assert_eq!(view(&s), vec![("a".into(), 2)]);
    }

    #[test]
    fn own_writes_are_not_announced_and_late_replies_do_not_undo() {
        let mut s = State {
            in_sync: true,
            ..State::default()
        };
        s.merge_snapshot("q", 0, &[], Snapshot::Resync, 0);
        // Our write got seq 4, but a remote write at 5 was seen first.
        let (tx, _rx) = oneshot::channel();
        s.enqueue(write(vec![put("a", 1)]), tx, 10).unwrap();
        let out = s.apply_message(&msg(5, "o", vec![put("a", 2)]), false);
        assert!(out.is_empty(), "held back while ours is pending");
        let (id, w) = s.front().unwrap();
        s.finish(id).unwrap();
        let (out, fill) = s.apply_local("q", 4, &w.ops);
        assert!(!fill);
        assert_eq!(keys(&out), vec![("a".into(), Some(2))], "newer one now");
        assert_eq!(view(&s), vec![("a".into(), 2)]);
        // Our own message arriving late: nothing.
        assert!(s
            .apply_message(&msg(4, "me", vec![put("a", 1)]), true)
            .is_empty());
        // An uncached namespace asks for a first list.
        assert!(s.apply_local("other", 6, &[put("x", 1)]).1);
    }

    #[test]
    fn resync_skips_keys_with_outbox_writes_and_offline_view_overlays_them() {
        let mut s = State::default();
        s.merge_snapshot("q", 3, &[e("a", 1), e("b", 1)], Snapshot::Read, 0);
        let (tx1, _r1) = oneshot::channel();
        let (tx2, _r2) = oneshot::channel();
        s.enqueue(write(vec![put("a", 7)]), tx1, 10).unwrap();
        s.enqueue(write(vec![del("b")]), tx2, 10).unwrap();
        assert_eq!(view(&s), vec![("a".into(), 7)]);
        let out = s.merge_snapshot("q", 9, &[e("a", 3), e("b", 3)], Snapshot::Resync, 0);
        assert!(out.is_empty(), "{out:?}");
        let (tx3, _r3) = oneshot::channel();
        assert!(s.enqueue(write(vec![put("c", 1)]), tx3, 2).is_err());
        assert_eq!(s.outbox_len(), 2);
        assert!(s.finish(999).is_none());
    }

    #[test]
    fn a_new_epoch_resets_sequence_numbers() {
        let mut s = State::default();
        assert!(!s.observe_epoch("e1"));
        s.merge_snapshot("q", 50, &[e("a", 1)], Snapshot::Resync, 0);
        s.in_sync = true;
        assert!(s
            .apply_message(&msg(3, "o", vec![put("a", 2)]), false)
            .is_empty());
        assert!(s.observe_epoch("e2"));
        assert!(!s.observe_epoch("e2"));
        let out = s.apply_message(&msg(3, "o", vec![put("a", 2)]), false);
        assert_eq!(keys(&out), vec![("a".into(), Some(2))]);
    }

    #[test]
    fn a_listing_is_not_compared_while_the_restore_is_owed() {
        let mut s = State::default();
        assert!(s.comparable("e1"));
        s.merge_snapshot("q", 5, &[e("keep", 1)], Snapshot::Resync, 0);
        s.in_sync = true;
        // A write's reply shows the new epoch first (Redis restarted empty).
        assert!(s.observe_epoch("e2"));
        // The feed's listing under that same epoch, before the write-back:
        // not compared, so "keep" is not announced as gone.
        assert!(!s.comparable("e2"));
        assert!(s.take_restore());
        assert!(s.comparable("e2"));
        let out = s.merge_snapshot("q", 1, &[e("keep", 1)], Snapshot::Resync, 0);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn expired_entries_are_not_listed_nor_announced_as_gone() {
        let mut s = State::default();
        let mut x = e("x", 1);
        x.expires_at = Some(100);
        s.merge_snapshot("q", 1, &[x.clone(), e("y", 1)], Snapshot::Read, 50);
        assert_eq!(s.offline_view("q", 50).unwrap().len(), 2);
        assert_eq!(s.offline_view("q", 100).unwrap().len(), 1);
        // Redis dropped it too: no change to announce.
        assert!(s
            .merge_snapshot("q", 2, &[e("y", 1)], Snapshot::Resync, 100)
            .is_empty());
    }
}
