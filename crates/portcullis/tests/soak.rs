//! Soak and load: the real gateway on loopback, many concurrent sessions
//! (opened, used and closed again and again) driving a fixed number of
//! mixed tool calls — allowed, denied by policy, redacted by DLP, and calls
//! to a stdio upstream that is made to crash now and then. Afterwards:
//! every call's answer is in the audit log exactly as the client saw it and
//! the log verifies; the gateway's memory stays under a stated bound; its
//! file descriptors and open sessions are back where they started; every
//! request was answered.
//!
//! Size by environment (defaults: the bounded run inside `cargo test`):
//! `SOAK_REQUESTS` (60000), `SOAK_SESSIONS` (32 concurrent clients),
//! `SOAK_CRASHES` (5 upstream crashes), `SOAK_CHURN` (calls per session
//! before its client closes it and opens a new one, 150). The long run:
//! `bench/run-soak.sh`. Numbers: `docs/reliability.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use common::*;
use serde_json::Value;

// Memory bounds, from measurements (docs/reliability.md): the gateway
// holds 32 MiB (release) to 44 MiB (debug) before the run and peaks at
// 41 to 47 MiB, flat from the first tenth of the run to the end, whether
// 40,000 or 1,000,000 calls. The bounds leave about twice that.
/// Peak resident memory the gateway may reach during the run (VmHWM).
const PEAK_RSS_BOUND_MB: u64 = 96;
/// Resident memory the gateway may hold after the run, sessions closed.
const AFTER_RSS_BOUND_MB: u64 = 80;
/// How much more it may hold after the run than before it (measured: 2
/// to 9 MiB); a leak of 400 bytes per call fails the default run.
const GROWTH_BOUND_MB: u64 = 24;
/// Open file descriptors allowed above the pre-run baseline once every
/// session is closed (an admin connection or a restarting child in
/// flight).
const FD_TOLERANCE: usize = 4;

const TOKEN: &str = "ghp_u8jzPde0IgxLd6GncfBAepfJBd0Kh8oOOL8d";
/// Trace ids of soak calls: this prefix, then the request number in hex.
const TRACE_PREFIX: &str = "50a4";
/// The message that makes the `crashy` upstream exit.
const CRASH: &str = "CRASH-NOW";

/// Permit everything except writing a note with a title. Visibility is
/// decided without arguments, so `demo__write_note` stays listed and a
/// call with a title is denied with `-32030` (not the `-32602` of a hidden
/// tool).
const POLICY: &str = r#"
@id("soak-all") permit (principal, action, resource);
@id("soak-no-titled-notes") @reason("notes are off during the soak")
forbid (principal, action == Portcullis::Action::"CallTool", resource == Portcullis::Tool::"demo__write_note")
  when { context.arguments has title };
"#;

/// The shipped schema with the one argument the policy names.
fn schema() -> String {
    let shipped = include_str!("../../portcullis-policy/src/schema.cedarschema");
    let ours = shipped.replacen(
        "type Arguments = {};",
        "type Arguments = { title?: String };",
        1,
    );
    assert_ne!(ours, shipped, "the shipped schema's Arguments type moved");
    ours
}

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// What one call is meant to exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Allowed,
    Denied,
    Redacted,
    Crashy,
    Crash,
}

impl Kind {
    /// The client-facing tool it calls.
    fn tool(self) -> &'static str {
        match self {
            Kind::Allowed => "demo__echo",
            Kind::Denied => "demo__write_note",
            Kind::Redacted => "demo__read_document",
            Kind::Crashy | Kind::Crash => "crashy__echo",
        }
    }
}

/// How a call ended, as the client saw it or as the audit log tells it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    Allowed,
    Denied,
    Redacted,
    UpstreamError,
    Other(String),
}

struct Plan {
    crash_at: Vec<u64>,
}

impl Plan {
    fn kind(&self, i: u64) -> Kind {
        if self.crash_at.binary_search(&i).is_ok() {
            return Kind::Crash;
        }
        match i % 20 {
            0..=10 => Kind::Allowed,
            11..=13 => Kind::Denied,
            14..=16 => Kind::Redacted,
            _ => Kind::Crashy,
        }
    }

    fn call(&self, i: u64) -> (Kind, String) {
        let k = self.kind(i);
        let tool = k.tool();
        let args = match k {
            Kind::Allowed => format!(r#"{{"message":"m{i}"}}"#),
            Kind::Denied => format!(r#"{{"title":"t{i}","body":"b"}}"#),
            Kind::Redacted => r#"{"name":"runbook"}"#.to_owned(),
            Kind::Crashy => format!(r#"{{"message":"c{i}"}}"#),
            Kind::Crash => format!(r#"{{"message":"{CRASH}"}}"#),
        };
        let params = format!(r#"{{"name":"{tool}","arguments":{args}}}"#);
        (
            k,
            format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{params}}}"#),
        )
    }
}

fn trace_of(i: u64) -> String {
    format!("{TRACE_PREFIX}{i:028x}")
}

fn request_of(trace: &str) -> Option<u64> {
    u64::from_str_radix(trace.strip_prefix(TRACE_PREFIX)?, 16).ok()
}

/// The client's view of one answer.
fn client_saw(i: u64, kind: Kind, v: &Value) -> Seen {
    if v["id"] != i {
        return Seen::Other(format!("answer with another id: {v}"));
    }
    if let Some(code) = v["error"]["code"].as_i64() {
        return match code {
            -32030 => Seen::Denied,
            -32010 => Seen::UpstreamError,
            _ => Seen::Other(format!("error {v}")),
        };
    }
    let text = v["result"]["content"][0]["text"].as_str().unwrap_or("");
    if text.contains(TOKEN) {
        return Seen::Other(format!("credential leaked: {v}"));
    }
    if text.contains("[REDACTED:github-token]") {
        return Seen::Redacted;
    }
    let expect = match kind {
        Kind::Allowed => format!("Echo: m{i}"),
        Kind::Crashy => format!("Echo: c{i}"),
        _ => return Seen::Other(format!("unexpected result {v}")),
    };
    if text == expect {
        Seen::Allowed
    } else {
        Seen::Other(format!("wrong result {v}"))
    }
}

/// What the audit log holds for one soak call.
#[derive(Default)]
struct Audited {
    decisions: Vec<(String, String)>,
    results: Vec<String>,
    redacted: bool,
}

impl Audited {
    fn seen(&self, tool: &str) -> Seen {
        let [(decision, recorded)] = self.decisions.as_slice() else {
            return Seen::Other(format!("{} decision records", self.decisions.len()));
        };
        if recorded != tool {
            return Seen::Other(format!("decision on {recorded}"));
        }
        match (decision.as_str(), self.results.as_slice()) {
            ("deny", []) => Seen::Denied,
            ("allow", [r]) if r == "error" => Seen::UpstreamError,
            ("allow", [r]) if r == "ok" && self.redacted => Seen::Redacted,
            ("allow", [r]) if r == "ok" => Seen::Allowed,
            (d, r) => Seen::Other(format!("decision {d}, results {r:?}")),
        }
    }
}

struct AuditSummary {
    calls: HashMap<u64, Audited>,
    kinds: BTreeMap<String, u64>,
    session_starts: u64,
    session_ends: BTreeMap<String, u64>,
    lines: u64,
}

fn read_audit(files: &[PathBuf]) -> AuditSummary {
    let mut s = AuditSummary {
        calls: HashMap::new(),
        kinds: BTreeMap::new(),
        session_starts: 0,
        session_ends: BTreeMap::new(),
        lines: 0,
    };
    for f in files {
        for line in BufReader::new(std::fs::File::open(f).unwrap()).lines() {
            let line = line.unwrap();
            s.lines += 1;
            let r: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", f.display()));
            let kind = r["kind"].as_str().unwrap_or("?").to_owned();
            *s.kinds.entry(kind.clone()).or_default() += 1;
            match kind.as_str() {
                "session_start" => s.session_starts += 1,
                "session_end" => {
                    let why = r["reason"].as_str().unwrap_or("?").to_owned();
                    *s.session_ends.entry(why).or_default() += 1;
                }
                _ => {}
            }
            let Some(i) = r["trace_id"].as_str().and_then(request_of) else {
                continue;
            };
            let a = s.calls.entry(i).or_default();
            match kind.as_str() {
                "decision" => a.decisions.push((
                    r["decision"].as_str().unwrap_or("?").to_owned(),
                    r["tool"].as_str().unwrap_or("?").to_owned(),
                )),
                "result" => a
                    .results
                    .push(r["outcome"].as_str().unwrap_or("?").to_owned()),
                "finding" if r["detector"] == "dlp" && r["detail"]["action"] == "redact" => {
                    a.redacted = true;
                }
                _ => {}
            }
        }
    }
    s
}

/// (VmRSS, VmHWM) of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The gateway's open sessions, from the admin API.
fn open_sessions(admin: &str, state: &Path) -> usize {
    let (code, out, err) = cli(&["sessions", "--json"], admin, state);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["sessions"].as_array().unwrap().len()
}

/// One gauge or counter from `GET /metrics`, fetched with the
/// development admin client certificate.
fn metric(admin: &str, state: &Path, series: &str) -> f64 {
    let client = state.join("admin-client");
    let out = Command::new("curl")
        .args(["-sf", "-m", "20", "--cacert"])
        .arg(state.join("ca").join("ca.pem"))
        .arg("--cert")
        .arg(client.join("cert.pem"))
        .arg("--key")
        .arg(client.join("key.pem"))
        .arg(format!("https://{admin}/metrics"))
        .output()
        .unwrap();
    assert!(out.status.success(), "curl /metrics: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

fn close(gw: &Gateway, sid: &str) {
    let r = raw(
        &gw.addr,
        "DELETE",
        &gw.path,
        &[("mcp-session-id", sid)],
        b"",
    );
    assert_eq!(r.status, 200, "DELETE session: {r:?}");
}

fn config(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("soak.cedar"), POLICY).unwrap();
    std::fs::write(dir.join("soak.cedarschema"), schema()).unwrap();
    // `crashy`: the demo server behind a shell loop that passes each line
    // on and exits when one carries the crash marker (the demo server then
    // sees its input end, answers what it has, and exits too).
    let crashy = format!(
        "while IFS= read -r l; do case \"$l\" in *{CRASH}*) exit 0;; esac; \
         printf '%s\\n' \"$l\"; done | exec \"$0\" demo-server"
    );
    let cfg = dir.join("soak.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
state_dir = {state:?}

[limits]
call_timeout_ms = 20000

[audit]
path = {audit:?}
results = "hash"

[policy]
files = [{policy:?}]
schema = {schema:?}

# The soak measures the pipeline, not containment: 64 anonymous clients
# share one identity, and the injected crashes must not open the breaker.
[containment]
max_concurrent_per_identity = 4096

[containment.breaker]
failures = 1000000

[[upstream]]
name = "demo"
command = [{BIN:?}, "demo-server"]

[[upstream]]
name = "crashy"
command = ["/bin/sh", "-c", {crashy:?}, {BIN:?}]
"#,
            state = dir.join("state").display().to_string(),
            audit = dir.join("audit.jsonl").display().to_string(),
            policy = dir.join("soak.cedar").display().to_string(),
            schema = dir.join("soak.cedarschema").display().to_string(),
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn soak_mixed_traffic_with_upstream_crashes_loses_nothing_and_leaks_nothing() {
    let requests = knob("SOAK_REQUESTS", 60_000);
    let sessions = knob("SOAK_SESSIONS", 32).max(1);
    let crashes = knob("SOAK_CRASHES", 5);
    let churn = knob("SOAK_CHURN", 150).max(1);
    let plan = Plan {
        crash_at: (1..=crashes)
            .map(|k| k * requests / (crashes + 1))
            .collect(),
    };

    let dir = tempdir("soak");
    let state = dir.join("state");
    let cfg = config(&dir);
    let mut gw = start(
        &[
            "--config".into(),
            cfg.display().to_string(),
            "--admin".into(),
            "127.0.0.1:0".into(),
        ],
        &[],
    );
    let pid = gw.child.id();
    let admin = admin_addr(&gw);

    // Warm-up outside the count: one call of each kind, so lazily built
    // state (upstream catalogues, pins, the first result inspection)
    // exists before the baseline is taken.
    let sid = gw.session();
    for params in [
        r#"{"name":"demo__echo","arguments":{"message":"warm"}}"#,
        r#"{"name":"demo__write_note","arguments":{"title":"w","body":"w"}}"#,
        r#"{"name":"demo__read_document","arguments":{"name":"runbook"}}"#,
        r#"{"name":"crashy__echo","arguments":{"message":"warm"}}"#,
    ] {
        let r = gw.call(&sid, "1", "tools/call", params);
        assert!(r["result"].is_object() || r["error"].is_object(), "{r}");
    }
    close(&gw, &sid);
    assert!(
        eventually(30, || open_sessions(&admin, &state) == 0),
        "warm-up session still open"
    );
    let fds_before = open_fds(pid);
    let (rss_before, _) = memory_kib(pid);

    // The run: `sessions` clients take request numbers from one counter
    // until `requests` have been sent; each reopens its session every
    // `churn` calls.
    let next = AtomicU64::new(0);
    let seen: Mutex<Vec<Option<Seen>>> = Mutex::new(vec![None; requests as usize]);
    let opened = AtomicU64::new(0);
    let slowest_ms = AtomicU64::new(0);
    // (calls sent, VmRSS KiB) at every tenth of the run.
    let rss_trend = Mutex::new(vec![(0, rss_before)]);
    let tenth = (requests / 10).max(1);
    let began = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..sessions {
            s.spawn(|| {
                let mut sid = gw.session();
                opened.fetch_add(1, Ordering::Relaxed);
                let mut used = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        break;
                    }
                    if used == churn {
                        close(&gw, &sid);
                        sid = gw.session();
                        opened.fetch_add(1, Ordering::Relaxed);
                        used = 0;
                    }
                    used += 1;
                    if i > 0 && i.is_multiple_of(tenth) {
                        rss_trend.lock().unwrap().push((i, memory_kib(pid).0));
                    }
                    let (kind, body) = plan.call(i);
                    let traceparent = format!("00-{}-00f067aa0ba902b7-01", trace_of(i));
                    let t = Instant::now();
                    // A request that gets no answer in time (raw's read
                    // timeout) panics in the helper: recorded, not fatal.
                    let answer = std::panic::catch_unwind(|| {
                        gw.post(
                            &[
                                ("mcp-session-id", &sid),
                                ("mcp-protocol-version", "2025-06-18"),
                                ("traceparent", &traceparent),
                            ],
                            &body,
                        )
                        .json()
                    });
                    let ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
                    slowest_ms.fetch_max(ms, Ordering::Relaxed);
                    let view = match answer {
                        Ok(v) => client_saw(i, kind, &v),
                        Err(_) => Seen::Other("no answer".into()),
                    };
                    seen.lock().unwrap()[i as usize] = Some(view);
                }
                close(&gw, &sid);
            });
        }
    });
    let elapsed = began.elapsed();
    let seen: Vec<Seen> = seen
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|v| v.unwrap_or_else(|| Seen::Other("never sent".into())))
        .collect();
    let opened = opened.into_inner();
    let mut rss_trend = rss_trend.into_inner().unwrap();
    rss_trend.sort_unstable();

    // Sessions: every client closed its own; none may linger.
    let mut open_after = usize::MAX;
    assert!(
        eventually(30, || {
            open_after = open_sessions(&admin, &state);
            open_after == 0
        }),
        "{open_after} sessions still open after every client closed its own"
    );
    let gauge = metric(&admin, &state, "portcullis_sessions_active");
    assert_eq!(gauge, 0.0, "portcullis_sessions_active after the run");

    // File descriptors: back to the baseline (connections are closed by
    // the gateway after each answer; give the last ones a moment).
    let mut fds_after = usize::MAX;
    let fds_settled = eventually(30, || {
        fds_after = open_fds(pid);
        fds_after <= fds_before + FD_TOLERANCE
    });
    let (rss_after, rss_peak) = memory_kib(pid);
    let records_metric = metric(&admin, &state, "portcullis_audit_records_written");

    // Stop the gateway the way an operator would (SIGTERM: the audit log
    // gets its final checkpoint), then read and verify the whole log.
    let term = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = gw.child.wait().unwrap();
    let files = audit_files(&dir);
    let verify = Command::new(BIN)
        .args(["audit", "verify", "--strict", "--key"])
        .arg(state.join("audit-ed25519.pk8.pub"))
        .args(&files)
        .output()
        .unwrap();
    let verify_out = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let log = read_audit(&files);

    // The client's view of each call against the audit log's.
    let mut by_kind: BTreeMap<(Kind, Seen), u64> = BTreeMap::new();
    let mut mismatches = Vec::new();
    let mut unanswered = Vec::new();
    let mut found = 0u64;
    for (i, client) in (0..requests).zip(&seen) {
        let kind = plan.kind(i);
        *by_kind.entry((kind, client.clone())).or_default() += 1;
        if let Seen::Other(why) = client {
            unanswered.push(format!("{i} ({kind:?}): {why}"));
        }
        let audited = log.calls.get(&i).map(|a| a.seen(kind.tool()));
        if audited.is_some() {
            found += 1;
        }
        if audited.as_ref() != Some(client) {
            mismatches.push(format!(
                "{i} ({kind:?}): client {client:?}, audit {audited:?}"
            ));
        }
    }
    let stray: Vec<&u64> = log.calls.keys().filter(|i| **i >= requests).collect();
    let affected = by_kind
        .get(&(Kind::Crashy, Seen::UpstreamError))
        .copied()
        .unwrap_or(0);
    let exits = gw.log_text().matches("stdio server exited").count();
    let mb = |k: u64| k as f64 / 1024.0;

    println!(
        "soak: {requests} calls, {sessions} concurrent sessions, {opened} sessions opened (reopened every {churn} calls), {crashes} crashes injected"
    );
    println!(
        "soak: {:.1} s, {:.0} calls/s; slowest answer {} ms",
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64(),
        slowest_ms.load(Ordering::Relaxed)
    );
    for ((kind, client), n) in &by_kind {
        println!("soak: mix {kind:?} -> {client:?}: {n}");
    }
    println!(
        "soak: crashy upstream exits {exits}, other crashy calls failed by the crashes (-32010) {affected}"
    );
    println!(
        "soak: audit: calls expected {requests}, found {found}, lost {}, mismatched {}; {} records in {} files {:?}; records written (metric) {records_metric}",
        requests - found,
        mismatches.len(),
        log.lines,
        files.len(),
        log.kinds
    );
    println!(
        "soak: sessions started {}, ended {:?}",
        log.session_starts, log.session_ends
    );
    println!("soak: audit verify: {}", verify_out.trim());
    println!(
        "soak: RSS before {:.1} MiB, peak {:.1} MiB (bound {PEAK_RSS_BOUND_MB}), after {:.1} MiB (bound {AFTER_RSS_BOUND_MB}, growth bound {GROWTH_BOUND_MB})",
        mb(rss_before),
        mb(rss_peak),
        mb(rss_after)
    );
    let trend: Vec<String> = rss_trend
        .iter()
        .map(|(i, k)| format!("{i}: {:.1}", mb(*k)))
        .collect();
    println!("soak: RSS (MiB) by calls sent: {}", trend.join(", "));
    println!(
        "soak: fds before {fds_before}, after {fds_after} (tolerance {FD_TOLERANCE}); sessions after {open_after}; gateway exit {status}"
    );

    assert!(
        unanswered.is_empty(),
        "{} calls got no proper answer, e.g. {:?}",
        unanswered.len(),
        &unanswered[..unanswered.len().min(10)]
    );
    assert!(
        mismatches.is_empty(),
        "{} calls differ between client and audit log, e.g. {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(10)]
    );
    assert!(stray.is_empty(), "audit records for calls never sent");
    assert!(verify.status.success(), "audit verify: {verify_out}");
    assert!(status.success(), "gateway exit after SIGTERM: {status}");
    // Every kind actually happened.
    for (kind, outcome) in [
        (Kind::Allowed, Seen::Allowed),
        (Kind::Denied, Seen::Denied),
        (Kind::Redacted, Seen::Redacted),
        (Kind::Crashy, Seen::Allowed),
    ] {
        assert!(
            by_kind.contains_key(&(kind, outcome.clone())),
            "no {kind:?} call ended {outcome:?}: {by_kind:?}"
        );
    }
    // Only the crashing upstream's calls may fail, and each trigger does.
    for ((kind, client), n) in &by_kind {
        let fine = match kind {
            Kind::Allowed => *client == Seen::Allowed,
            Kind::Denied => *client == Seen::Denied,
            Kind::Redacted => *client == Seen::Redacted,
            Kind::Crashy => matches!(client, Seen::Allowed | Seen::UpstreamError),
            Kind::Crash => *client == Seen::UpstreamError,
        };
        assert!(fine, "{n} {kind:?} calls ended {client:?}");
    }
    assert_eq!(
        exits as u64, crashes,
        "each injected crash ends the process once, and it is restarted"
    );
    assert_eq!(log.session_starts, opened + 1, "warm-up session included");
    assert_eq!(
        log.session_ends
            .get("closed by client (DELETE)")
            .copied()
            .unwrap_or(0),
        opened + 1,
        "every session ended by its client's DELETE: {:?}",
        log.session_ends
    );
    assert!(
        fds_settled,
        "file descriptors: {fds_before} before, {fds_after} after"
    );
    assert!(
        rss_peak <= PEAK_RSS_BOUND_MB * 1024,
        "peak RSS {:.1} MiB over {PEAK_RSS_BOUND_MB} MiB",
        mb(rss_peak)
    );
    assert!(
        rss_after <= AFTER_RSS_BOUND_MB * 1024,
        "RSS after {:.1} MiB over {AFTER_RSS_BOUND_MB} MiB",
        mb(rss_after)
    );
    assert!(
        rss_after <= rss_before + GROWTH_BOUND_MB * 1024,
        "RSS grew {:.1} MiB (bound {GROWTH_BOUND_MB} MiB)",
        mb(rss_after.saturating_sub(rss_before))
    );
    // Passed: the audit log can be large; a failed run keeps it.
    let _ = std::fs::remove_dir_all(&dir);
}
