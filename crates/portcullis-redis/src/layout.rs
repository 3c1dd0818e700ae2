//! What the store keeps in Redis and says on its channel; every replica of
//! every version must agree on this, so it lives in one place.
//!
//! Keys (`P` = the configured prefix, default `portcullis:`):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P e:NS:KEY` | string | one entry: `{"key","value","expires_at"?}` (JSON), with `EXPIREAT expires_at` when it expires |
//! | `P ns:NS` | sorted set | the namespace's keys, scored by `expires_at` (`+inf` when none): `list` reads it, and prunes what expired |
//! | `P x:NS:KEY` | string | tombstone of a removal, for `TOMB_SECS`: a replica writing back its last known state after Redis lost its data skips removed keys |
//! | `P seq` | string (integer) | incremented by every write: orders all changes (per epoch) |
//! | `P epoch` | string | random id created by the first operation on an empty Redis: a restart that lost the data (or a flush) changes it, so replicas know their sequence numbers no longer compare |
//! | `P rate:KEY` | string (integer) | GCRA theoretical arrival time of a rate-limit key, µs since the epoch, `PX` until the bucket is full again |
//! | `P changes` | pub/sub channel | one message per write, below |
//!
//! (no space between `P` and the rest: `portcullis:e:quarantine:agent:spiffe://…`).
//! A namespace may not contain `:` (so `e:NS:KEY` is unambiguous); keys may
//! hold anything.
//!
//! A write is one Lua script: it changes the entries, increments `seq`, and
//! publishes in the same atomic step, so the channel's order is the order
//! of the writes. The message (JSON):
//!
//! ```json
//! {"seq":42,"epoch":"9f…","v":1,"origin":"<replica id>","ns":"quarantine",
//!  "ops":[{"key":"k1","entry":{"key":"k1","value":{…},"expires_at":1767225600}},
//!         {"key":"k2"}]}
//! ```
//!
//! An op without `entry` is a removal. `origin` is the writing replica's
//! random id, so a replica tells its own writes from others'.

use portcullis_contain::store::Entry;
use portcullis_contain::StoreError;
use serde::{Deserialize, Serialize};

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub(crate) fn index(&self, ns: &str) -> String {
        format!("{}ns:{ns}", self.prefix)
    }

    pub(crate) fn entry_prefix(&self, ns: &str) -> String {
        format!("{}e:{ns}:", self.prefix)
    }

    pub(crate) fn entry(&self, ns: &str, key: &str) -> String {
        format!("{}e:{ns}:{key}", self.prefix)
    }

    /// Marks a key removed (for a while), so writing back a last known
    /// state after a data loss does not resurrect it.
    pub(crate) fn tomb(&self, ns: &str, key: &str) -> String {
        format!("{}x:{ns}:{key}", self.prefix)
    }

    pub(crate) fn seq(&self) -> String {
        format!("{}seq", self.prefix)
    }

    pub(crate) fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    pub(crate) fn channel(&self) -> String {
        format!("{}changes", self.prefix)
    }

    pub(crate) fn rate(&self, key: &str) -> String {
        format!("{}rate:{key}", self.prefix)
    }
}

/// How long a removal's tombstone lasts: longer than any replica takes to
/// notice that Redis lost its data and write back what it knows.
pub(crate) const TOMB_SECS: u64 = 86_400;

/// Refuses namespaces that would make entry keys ambiguous.
pub(crate) fn check_ns(ns: &str) -> Result<(), StoreError> {
    if ns.is_empty() || ns.contains(':') {
        return Err(StoreError::Encode(format!(
            "namespace {ns:?}: must be non-empty and without ':' (redis key layout)"
        )));
    }
    Ok(())
}

/// Message version written today.
pub(crate) const VERSION: u32 = 1;

/// One key's change in a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct MsgOp {
    pub key: String,
    /// The new entry; absent for a removal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<Entry>,
}

/// What the client hands the write script; the script prepends `seq` and
/// `epoch` (it alone knows them).
#[derive(Serialize)]
pub(crate) struct MsgBody<'a> {
    pub v: u32,
    pub origin: &'a str,
    pub ns: &'a str,
    pub ops: &'a [MsgOp],
}

/// A message as received.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct Msg {
    pub seq: u64,
    pub epoch: String,
    #[serde(default)]
    pub v: u32,
    pub origin: String,
    pub ns: String,
    pub ops: Vec<MsgOp>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn layout() {
        let k = Keys::new("p:");
        assert_eq!(k.index("quarantine"), "p:ns:quarantine");
        assert_eq!(
            k.entry("quarantine", "agent:spiffe://x/y"),
            "p:e:quarantine:agent:spiffe://x/y"
        );
        assert!(k
            .entry("quarantine", "a")
            .starts_with(&k.entry_prefix("quarantine")));
        assert_eq!(k.seq(), "p:seq");
        assert_eq!(k.epoch(), "p:epoch");
        assert_eq!(k.channel(), "p:changes");
        assert_eq!(k.rate("id"), "p:rate:id");
        assert!(check_ns("pin-pending").is_ok());
        assert!(check_ns("a:b").is_err());
        assert!(check_ns("").is_err());
    }

    #[test]
    fn body_plus_script_prefix_parses() {
        let ops = [
            MsgOp {
                key: "k1".into(),
                entry: Some(Entry {
                    key: "k1".into(),
                    value: serde_json::json!({"n": 1}),
                    expires_at: Some(7),
                }),
            },
            MsgOp {
                key: "k2".into(),
                entry: None,
            },
        ];
        let body = serde_json::to_string(&MsgBody {
            v: VERSION,
            origin: "r1",
            ns: "quarantine",
            ops: &ops,
        })
        .unwrap();
        // What the Lua script does.
        let msg = format!(
            "{{\"seq\":{},\"epoch\":\"{}\",{}",
            42,
            "e1",
            body.get(1..).unwrap()
        );
        let m: Msg = serde_json::from_str(&msg).unwrap();
        assert_eq!(m.seq, 42);
        assert_eq!(m.epoch, "e1");
        assert_eq!(m.v, VERSION);
        assert_eq!(m.origin, "r1");
        assert_eq!(m.ops, ops);
    }
}
