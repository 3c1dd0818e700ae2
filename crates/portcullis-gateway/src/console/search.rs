//! Reading the audit log for the console: the last matching records of
//! the live file (bounded: its last [`SCAN_BYTES`], at most `limit`
//! records) and the chain's verification status.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use portcullis_monitor::audit::TailFilter;
use serde::Deserialize;
use serde_json::Value;

/// How much of the live file's end a search reads, at most.
pub const SCAN_BYTES: u64 = 8 * 1024 * 1024;

/// The audit page's filters (empty: any).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Query {
    /// Substring of the identity key, agent, user or device.
    pub identity: String,
    /// Substring of the tool (or target).
    pub tool: String,
    /// `allow` or `deny`.
    pub decision: String,
    /// Records at or after this time (`2026-01-31` or `2026-01-31T08:00`, UTC).
    pub since: String,
    /// Records at or before this time (same forms; a prefix covers its whole span).
    pub until: String,
}

impl Query {
    fn filter(&self, kind: Option<&str>) -> TailFilter {
        let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
        TailFilter {
            identity: some(&self.identity),
            decision: some(&self.decision),
            tool: None,
            kind: kind.map(str::to_owned),
        }
    }

    /// Whether `r` passes every filter (`kind`, when given, exactly).
    pub fn matches(&self, r: &Value, kind: Option<&str>) -> bool {
        if !self.filter(kind).matches(r) {
            return false;
        }
        let tool = self.tool.trim();
        if !tool.is_empty() {
            let hit = ["tool", "target"]
                .iter()
                .filter_map(|k| r.get(*k).and_then(Value::as_str))
                .any(|s| s.contains(tool));
            if !hit {
                return false;
            }
        }
        let ts = r.get("ts").and_then(Value::as_str).unwrap_or_default();
        let since = self.since.trim();
        if !since.is_empty() && ts < since {
            return false;
        }
        let until = self.until.trim();
        if !until.is_empty() && ts.get(..until.len()).unwrap_or(ts) > until {
            return false;
        }
        true
    }
}

/// The last `limit` records of the live file at `path` that match, newest
/// first; the flag says the file is longer than what was read.
pub fn last_matching(
    path: &Path,
    q: &Query,
    kind: Option<&str>,
    limit: usize,
) -> std::io::Result<(Vec<Value>, bool)> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(SCAN_BYTES);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(SCAN_BYTES).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.split('\n');
    if start > 0 {
        // The first line read is (probably) cut.
        lines.next();
    }
    let mut out: Vec<Value> = Vec::new();
    let all: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
    for l in all.iter().rev() {
        if out.len() >= limit {
            break;
        }
        let Ok(v) = serde_json::from_str::<Value>(l) else {
            continue;
        };
        if q.matches(&v, kind) {
            out.push(v);
        }
    }
    Ok((out, start > 0))
}

/// The chain's status as one sentence: `verified: …` or `broken: …`.
/// Verifies every file of the log (the live file and its rotated
/// predecessors) against the log's own key.
pub fn chain_status(path: &Path, key_hex: Option<&str>) -> String {
    let files = match portcullis_monitor::audit::rotated_files(path) {
        Ok(f) => f,
        Err(e) => return format!("broken: cannot list the audit files: {e}"),
    };
    let opts = portcullis_monitor::audit::VerifyOptions {
        key: key_hex.and_then(|k| hex::decode(k).ok()),
        ..Default::default()
    };
    // A write in flight can show as a partial last line: look again.
    let mut last = None;
    for _ in 0..3 {
        match portcullis_monitor::audit::verify(&files, &opts) {
            Ok(r) => {
                return format!(
                    "verified: {} records (seq {}..{}) in {} file{}, {} signed checkpoints, {} after the last checkpoint",
                    r.records,
                    r.first_seq,
                    r.last_seq,
                    r.files,
                    if r.files == 1 { "" } else { "s" },
                    r.checkpoints,
                    r.unsigned_tail
                )
            }
            Err(e) if e.reason.contains("partial record") => {
                last = Some(e);
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return format!("broken: {e}"),
        }
    }
    match last {
        Some(e) => format!("broken: {e}"),
        None => "broken: not verified".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters() {
        let r = json!({"ts": "2026-01-31T08:30:00.000000Z", "kind": "decision",
            "identity": {"key": "w=spiffe://x/agent/a;u=-"}, "tool": "demo__echo",
            "target": "demo__echo", "decision": "deny"});
        let q = |f: &dyn Fn(&mut Query)| {
            let mut q = Query::default();
            f(&mut q);
            q.matches(&r, Some("decision"))
        };
        assert!(q(&|_| {}));
        assert!(q(&|q| q.identity = "agent/a".into()));
        assert!(!q(&|q| q.identity = "agent/b".into()));
        assert!(q(&|q| q.tool = "echo".into()));
        assert!(!q(&|q| q.tool = "add".into()));
        assert!(q(&|q| q.decision = "deny".into()));
        assert!(!q(&|q| q.decision = "allow".into()));
        assert!(q(&|q| q.since = "2026-01-31T08:00".into()));
        assert!(!q(&|q| q.since = "2026-01-31T09".into()));
        assert!(q(&|q| q.until = "2026-01-31".into()));
        assert!(!q(&|q| q.until = "2026-01-30".into()));
        assert!(!Query::default().matches(&r, Some("session_start")));
    }

    #[test]
    fn last_matching_is_bounded_and_newest_first() {
        let dir = std::env::temp_dir().join(format!("pc-console-search-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.jsonl");
        let mut s = String::new();
        for i in 0..50 {
            s.push_str(&json!({"seq": i, "ts": "2026-01-01T00:00:00.000000Z", "kind": "decision", "decision": if i % 2 == 0 {"allow"} else {"deny"}}).to_string());
            s.push('\n');
        }
        s.push_str("{\"partial");
        std::fs::write(&p, s).unwrap();
        let q = Query {
            decision: "deny".into(),
            ..Query::default()
        };
        let (v, cut) = last_matching(&p, &q, Some("decision"), 3).unwrap();
        assert!(!cut);
        let seqs: Vec<u64> = v.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [49, 47, 45]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
