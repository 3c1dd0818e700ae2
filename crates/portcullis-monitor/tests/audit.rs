//! Tamper, crash, rotation, durability and concurrency tests for the audit log.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use portcullis_monitor::audit::{
    follow, load_public_key, rotated_files, verify, AnchorSink, AuditConfig, AuditError, AuditLog,
    SyncMode, TailFilter, VerifyFailure, VerifyOptions, VerifyReport,
};
use serde_json::{json, Value};

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-audit-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn live(&self) -> PathBuf {
        self.0.join("audit.jsonl")
    }

    fn key(&self) -> PathBuf {
        self.0.join("audit.key")
    }

    fn anchors(&self) -> PathBuf {
        self.0.join("anchors.jsonl")
    }

    fn cfg(&self, every: u64) -> AuditConfig {
        let mut cfg = AuditConfig::new(self.live(), self.key());
        cfg.checkpoint_every = every;
        cfg.rotate_bytes = None;
        cfg
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn decision(i: u64) -> Value {
    json!({
        "i": i,
        "identity": {"key": format!("spiffe://corp/agent-{}", i % 3), "agent": "builder", "user": "alice"},
        "tool": if matches!(i % 2, 0) { "read_file" } else { "write_file" },
        "decision": if matches!(i % 5, 0) { "deny" } else { "allow" },
    })
}

/// Writes `n` decision records through a fresh log and shuts it down.
fn write_log(cfg: AuditConfig, n: u64) {
    let log = AuditLog::open(cfg).unwrap();
    for i in 0..n {
        log.append("decision", &decision(i));
    }
    log.shutdown();
    assert_eq!(log.stats().write_errors, 0);
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(path, text).unwrap();
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap()
}

/// Index of the decision record with `"i": i`.
fn index_of(lines: &[String], i: u64) -> usize {
    lines
        .iter()
        .position(|l| parse(l)["i"] == json!(i))
        .unwrap()
}

fn kind(line: &str) -> String {
    parse(line)["kind"].as_str().unwrap().to_string()
}

fn sha256_hex(line: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, line.as_bytes()))
}

fn verify_live(s: &Scratch, opts: &VerifyOptions) -> Result<VerifyReport, VerifyFailure> {
    verify(&rotated_files(&s.live()).unwrap(), opts)
}

fn expect_failure(result: Result<VerifyReport, VerifyFailure>) -> VerifyFailure {
    match result {
        Ok(report) => panic!("verify passed but should have failed: {report:?}"),
        Err(f) => f,
    }
}

/// Writes the standard 50-record log with a checkpoint every 7 records.
fn standard_log(tag: &str) -> Scratch {
    let s = Scratch::new(tag);
    write_log(s.cfg(7), 50);
    s
}

#[test]
fn clean_log_verifies_with_and_without_a_pinned_key() {
    let s = standard_log("clean");
    let all = lines(&s.live());
    assert_eq!(kind(&all[0]), "open");
    assert_eq!(parse(&all[0])["reason"], "new");
    assert_eq!(parse(&all[0])["seq"], 1);
    assert_eq!(parse(&all[0])["prev"], "0".repeat(64));
    assert_eq!(
        kind(all.last().unwrap()),
        "checkpoint",
        "shutdown signs the tail"
    );
    for (n, line) in all.iter().enumerate() {
        assert_eq!(parse(line)["seq"], json!(n + 1));
        assert_eq!(parse(line)["v"], 1);
        if n > 0 {
            assert_eq!(parse(line)["prev"], json!(sha256_hex(&all[n - 1])));
        }
    }
    let report = verify_live(&s, &VerifyOptions::default()).unwrap();
    assert_eq!(report.records, all.len() as u64);
    assert_eq!(report.first_seq, 1);
    assert_eq!(report.last_seq, all.len() as u64);
    assert!(report.checkpoints >= 7, "{report:?}");
    assert_eq!(report.unsigned_tail, 0);
    assert!(report.warnings.iter().any(|w| w.contains("no key pinned")));

    let key = load_public_key(&PathBuf::from(format!("{}.pub", s.key().display()))).unwrap();
    let pinned = VerifyOptions {
        key: Some(key.clone()),
        strict: true,
        ..Default::default()
    };
    let report = verify_live(&s, &pinned).unwrap();
    assert_eq!(report.key_hex, Some(hex::encode(&key)));
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

#[test]
fn edited_field_names_the_edited_line() {
    let s = standard_log("edit");
    let mut all = lines(&s.live());
    let k = index_of(&all, 20);
    all[k] = all[k].replace("\"decision\":\"deny\"", "\"decision\":\"allow\"");
    write_lines(&s.live(), &all);
    let f = expect_failure(verify_live(&s, &VerifyOptions::default()));
    assert_eq!(f.file, s.live());
    assert_eq!(f.line, k as u64 + 1, "{f}");
    assert!(f.reason.contains("edited"), "{f}");
}

#[test]
fn deleted_line_is_reported_as_missing() {
    let s = standard_log("delete");
    let mut all = lines(&s.live());
    let k = index_of(&all, 20);
    let seq = parse(&all[k])["seq"].as_u64().unwrap();
    all.remove(k);
    write_lines(&s.live(), &all);
    let f = expect_failure(verify_live(&s, &VerifyOptions::default()));
    assert_eq!(f.line, k as u64 + 1, "{f}");
    assert!(
        f.reason
            .contains(&format!("records {seq}..{seq} missing (deleted)")),
        "{f}"
    );
}

#[test]
fn inserted_line_with_recomputed_prev_is_named() {
    let s = standard_log("insert");
    let mut all = lines(&s.live());
    let k = index_of(&all, 20);
    let before = parse(&all[k]);
    let forged = format!(
        r#"{{"v":1,"seq":{},"ts":{},"kind":"decision","i":999,"tool":"read_file","decision":"allow","prev":"{}"}}"#,
        before["seq"].as_u64().unwrap() + 1,
        before["ts"],
        sha256_hex(&all[k])
    );
    all.insert(k + 1, forged);
    write_lines(&s.live(), &all);
    let f = expect_failure(verify_live(&s, &VerifyOptions::default()));
    assert_eq!(f.line, k as u64 + 2, "{f}");
    assert!(f.reason.contains("inserted"), "{f}");
}

#[test]
fn swapped_lines_are_reported_as_reordered() {
    let s = standard_log("swap");
    let mut all = lines(&s.live());
    let k = index_of(&all, 20);
    assert_eq!(kind(&all[k + 1]), "decision");
    all.swap(k, k + 1);
    write_lines(&s.live(), &all);
    let f = expect_failure(verify_live(&s, &VerifyOptions::default()));
    assert_eq!(f.line, k as u64 + 1, "{f}");
    assert!(f.reason.contains("reordered"), "{f}");
}

#[test]
fn truncation_mid_line_is_a_partial_record() {
    let s = standard_log("partial");
    let bytes = fs::read(s.live()).unwrap();
    let n_lines = bytes.iter().filter(|&&b| b == b'\n').count();
    fs::write(s.live(), &bytes[..bytes.len() - 30]).unwrap();
    let f = expect_failure(verify_live(&s, &VerifyOptions::default()));
    assert_eq!(f.line, n_lines as u64, "{f}");
    assert!(f.reason.contains("partial record (truncated write)"), "{f}");
}

#[test]
fn truncated_trailing_lines_are_caught_by_anchors() {
    let s = Scratch::new("anchors");
    let mut cfg = s.cfg(7);
    cfg.anchors = Some(AnchorSink::File(s.anchors()));
    write_log(cfg, 50);
    let all = lines(&s.live());
    let anchors = lines(&s.anchors());
    let checkpoints: Vec<&String> = all.iter().filter(|l| kind(l) == "checkpoint").collect();
    assert_eq!(anchors.len(), checkpoints.len());
    assert!(anchors.iter().zip(&checkpoints).all(|(a, c)| a == *c));

    let with_anchors = VerifyOptions {
        anchors: Some(s.anchors()),
        ..Default::default()
    };
    verify_live(&s, &with_anchors).unwrap();

    let kept = all.len() - 12;
    write_lines(&s.live(), &all[..kept]);
    // The chain alone cannot see a clean cut at the end…
    verify_live(&s, &VerifyOptions::default()).unwrap();
    // …but the exported anchors can.
    let f = expect_failure(verify_live(&s, &with_anchors));
    assert_eq!(f.file, s.live());
    assert_eq!(f.line, kept as u64 + 1, "{f}");
    assert!(f.reason.contains("log truncated"), "{f}");
    assert!(f.reason.contains(&format!("records {}..", kept + 1)), "{f}");
}

#[test]
fn anchor_mismatch_names_the_rewritten_record() {
    let s = Scratch::new("anchor-rewrite");
    let mut cfg = s.cfg(7);
    cfg.anchors = Some(AnchorSink::File(s.anchors()));
    write_log(cfg, 20);
    // An attacker with the key rewrites history: a fresh log with the same key but other content.
    fs::remove_file(s.live()).unwrap();
    let mut cfg = s.cfg(7);
    cfg.anchors = None;
    let log = AuditLog::open(cfg).unwrap();
    for i in 0..20 {
        log.append("decision", &json!({"i": i, "decision": "allow"}));
    }
    log.shutdown();
    verify_live(&s, &VerifyOptions::default()).unwrap();
    let f = expect_failure(verify_live(
        &s,
        &VerifyOptions {
            anchors: Some(s.anchors()),
            ..Default::default()
        },
    ));
    assert!(f.reason.contains("differs from anchor"), "{f}");
    assert_eq!(kind(&lines(&s.live())[f.line as usize - 1]), "checkpoint");
}

#[test]
fn rotation_across_files_verifies_and_a_missing_middle_file_is_caught() {
    let s = Scratch::new("rotate");
    let mut cfg = s.cfg(5);
    cfg.rotate_bytes = Some(3000);
    let log = AuditLog::open(cfg).unwrap();
    for i in 0..60 {
        let t = log.append("decision", &decision(i));
        // Small batches so rotation happens often.
        log.wait_durable(t).unwrap();
    }
    log.shutdown();
    assert!(log.stats().rotations >= 3, "{:?}", log.stats());
    let files = rotated_files(&s.live()).unwrap();
    assert!(files.len() >= 4, "{files:?}");
    assert_eq!(files.last(), Some(&s.live()));
    let report = verify(&files, &VerifyOptions::default()).unwrap();
    assert_eq!(report.files, files.len());
    // Each rotated file ends signed; each new file opens chained to it.
    for f in &files[..files.len() - 1] {
        let l = lines(f);
        assert_eq!(kind(l.last().unwrap()), "checkpoint");
        let first_seq = parse(&l[0])["seq"].as_u64().unwrap();
        assert!(f.to_string_lossy().ends_with(&format!(".{first_seq:012}")));
    }
    for f in &files[1..] {
        let first = parse(&lines(f)[0]);
        assert_eq!(first["kind"], "open");
        assert_eq!(first["reason"], "rotate");
    }
    // Verifying only the live file works but says the chain start is unchecked.
    let report = verify(&files[files.len() - 1..], &VerifyOptions::default()).unwrap();
    assert!(report
        .warnings
        .iter()
        .any(|w| w.contains("chain starts at seq")));

    fs::remove_file(&files[1]).unwrap();
    let files_now = rotated_files(&s.live()).unwrap();
    let f = expect_failure(verify(&files_now, &VerifyOptions::default()));
    assert_eq!(f.file, files[2]);
    assert_eq!(f.line, 1);
    assert!(f.reason.contains("missing (deleted)"), "{f}");
    assert!(f.reason.contains("rotated file may be missing"), "{f}");
}

#[test]
fn forged_checkpoint_signature_is_named() {
    let s = standard_log("forge");
    let mut all = lines(&s.live());
    let c = all.iter().position(|l| kind(l) == "checkpoint").unwrap();
    let mut cp = parse(&all[c]);
    let sig = cp["sig"].as_str().unwrap().to_string();
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    cp["sig"] = json!(format!("{flipped}{}", &sig[1..]));
    all[c] = all[c].replace(&sig, cp["sig"].as_str().unwrap());
    write_lines(&s.live(), &all);
    let f = expect_failure(verify_live(&s, &VerifyOptions::default()));
    assert_eq!(f.line, c as u64 + 1, "{f}");
    assert!(f.reason.contains("signature is invalid"), "{f}");
}

#[test]
fn an_edited_timestamp_on_the_last_checkpoint_fails_its_signature() {
    // Nothing chains after the last checkpoint: only its signature, which
    // covers its timestamp, shows the edit.
    let s = standard_log("cp-ts");
    let mut all = lines(&s.live());
    let last = all.len() - 1;
    assert_eq!(kind(&all[last]), "checkpoint");
    let ts = parse(&all[last])["ts"].as_str().unwrap().to_string();
    let year: u32 = ts[..4].parse().unwrap();
    let moved = format!("{}{}", year - 1, &ts[4..]);
    all[last] = all[last].replace(&ts, &moved);
    write_lines(&s.live(), &all);
    let key = load_public_key(&PathBuf::from(format!("{}.pub", s.key().display()))).unwrap();
    let pinned = VerifyOptions {
        key: Some(key),
        strict: true,
        ..Default::default()
    };
    let f = expect_failure(verify_live(&s, &pinned));
    assert_eq!(f.line, last as u64 + 1, "{f}");
    assert!(
        f.reason.contains("signature is invalid") || f.reason.contains("backwards"),
        "{f}"
    );
    // Moving it forward is not "backwards": the signature alone catches it.
    let mut all = lines(&s.live());
    let later = format!("{}{}", year + 1, &ts[4..]);
    all[last] = all[last].replace(&moved, &later);
    write_lines(&s.live(), &all);
    let f = expect_failure(verify_live(&s, &pinned));
    assert_eq!(f.line, last as u64 + 1, "{f}");
    assert!(f.reason.contains("signature is invalid"), "{f}");
}

#[test]
fn checkpoint_head_must_match_the_chain() {
    let s = standard_log("head");
    let mut all = lines(&s.live());
    let c = all.iter().position(|l| kind(l) == "checkpoint").unwrap();
    let head = parse(&all[c])["head"].as_str().unwrap().to_string();
    all[c] = all[c].replace(
        &format!("\"head\":\"{head}\""),
        &format!("\"head\":\"{}\"", "ab".repeat(32)),
    );
    write_lines(&s.live(), &all);
    let f = expect_failure(verify_live(&s, &VerifyOptions::default()));
    assert_eq!(f.line, c as u64 + 1, "{f}");
    assert!(f.reason.contains("head does not match"), "{f}");
}

#[test]
fn log_signed_by_another_key_fails_when_a_key_is_pinned() {
    let genuine = Scratch::new("genuine");
    write_log(genuine.cfg(7), 1);
    let pinned =
        load_public_key(&PathBuf::from(format!("{}.pub", genuine.key().display()))).unwrap();

    // The attacker rewrites the whole log and re-signs it with their own key.
    let forged = standard_log("resigned");
    let report = verify_live(&forged, &VerifyOptions::default()).unwrap();
    assert!(report.warnings.iter().any(|w| w.contains("no key pinned")));
    let f = expect_failure(verify_live(
        &forged,
        &VerifyOptions {
            key: Some(pinned),
            ..Default::default()
        },
    ));
    let first_checkpoint = lines(&forged.live())
        .iter()
        .position(|l| kind(l) == "checkpoint")
        .unwrap();
    assert_eq!(f.line, first_checkpoint as u64 + 1, "{f}");
    assert!(f.reason.contains("pinned key"), "{f}");
}

#[test]
fn restart_continues_the_chain() {
    let s = Scratch::new("restart");
    write_log(s.cfg(7), 10);
    let first_run = lines(&s.live()).len();
    let log = AuditLog::open(s.cfg(7)).unwrap();
    let pk = log.public_key_hex();
    for i in 10..20 {
        log.append("decision", &decision(i));
    }
    log.shutdown();
    let all = lines(&s.live());
    let reopened = parse(&all[first_run]);
    assert_eq!(reopened["kind"], "open");
    assert_eq!(reopened["reason"], "restart");
    assert_eq!(reopened["seq"], json!(first_run + 1));
    assert_eq!(reopened["prev"], json!(sha256_hex(&all[first_run - 1])));
    let report = verify_live(
        &s,
        &VerifyOptions {
            key: Some(hex::decode(pk).unwrap()),
            strict: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(report.last_seq, all.len() as u64);
}

#[test]
fn crash_partial_line_is_reported_then_recovered_loudly() {
    let s = standard_log("crash");
    let partial = br#"{"v":1,"seq":999,"ts":"2025-01-01T00:00:00.000000Z","kind":"decis"#;
    let len_before = fs::metadata(s.live()).unwrap().len();
    let mut f = fs::OpenOptions::new().append(true).open(s.live()).unwrap();
    f.write_all(partial).unwrap();
    drop(f);
    let n_complete = lines(&s.live()).len() - 1;
    let f = expect_failure(verify_live(&s, &VerifyOptions::default()));
    assert_eq!(f.line, n_complete as u64 + 1);
    assert!(f.reason.contains("partial record"), "{f}");

    let log = AuditLog::open(s.cfg(7)).unwrap();
    log.append("decision", &decision(100));
    log.shutdown();
    let all = lines(&s.live());
    let recovery = all
        .iter()
        .map(|l| parse(l))
        .find(|v| v["kind"] == "recovery")
        .unwrap();
    assert_eq!(recovery["file"], "audit.jsonl");
    assert_eq!(recovery["offset"], json!(len_before));
    assert_eq!(recovery["len"], json!(partial.len()));
    assert_eq!(
        recovery["sha256"],
        json!(hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            partial
        )))
    );
    let report = verify_live(&s, &VerifyOptions::default()).unwrap();
    assert_eq!(report.recoveries.len(), 1, "{report:?}");
    assert!(
        report.recoveries[0].contains(&format!("{} bytes at offset {len_before}", partial.len()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_resolves_in_every_sync_mode() {
    for mode in [SyncMode::Record, SyncMode::Group, SyncMode::None] {
        let s = Scratch::new(&format!("mode-{mode}"));
        let mut cfg = s.cfg(50);
        cfg.sync = mode;
        let log = AuditLog::open(cfg).unwrap();
        let mut tickets = Vec::new();
        for i in 0..200 {
            tickets.push(log.append("decision", &decision(i)));
        }
        for t in &tickets {
            tokio::time::timeout(Duration::from_secs(10), log.durable(*t))
                .await
                .expect("durable() hung")
                .unwrap();
            assert!(log.is_durable(*t));
        }
        // Acknowledged means in the file, before shutdown.
        assert!(lines(&s.live()).len() >= 201);
        let stats = log.stats();
        assert_eq!(stats.appended, 200);
        assert_eq!(stats.pending, 0);
        match mode {
            SyncMode::Record => assert!(stats.fsyncs >= 1),
            SyncMode::None => assert_eq!(stats.fsyncs, 0),
            SyncMode::Group => {}
        }
        log.shutdown();
        let after = log.append("decision", &decision(999));
        assert!(matches!(
            log.durable(after).await,
            Err(AuditError::Failed(_))
        ));
        verify_live(
            &s,
            &VerifyOptions {
                strict: true,
                ..Default::default()
            },
        )
        .unwrap();
    }
}

#[test]
fn group_mode_syncs_within_the_interval() {
    let s = Scratch::new("group-sync");
    let log = AuditLog::open(s.cfg(1000)).unwrap();
    let t = log.append("decision", &decision(1));
    log.wait_durable(t).unwrap();
    let before = log.stats().fsyncs;
    std::thread::sleep(Duration::from_millis(100));
    assert!(log.stats().fsyncs > before, "{:?}", log.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_fails_when_the_writer_fails() {
    // The live path is a symlink to /dev/full: every write returns ENOSPC, as on a full disk.
    let s = Scratch::new("full");
    std::os::unix::fs::symlink("/dev/full", s.live()).unwrap();
    let log = Arc::new(AuditLog::open(s.cfg(7)).unwrap());
    let t = log.append("decision", &decision(1));
    let err = tokio::time::timeout(Duration::from_secs(10), log.durable(t))
        .await
        .expect("durable() hung")
        .unwrap_err();
    assert!(
        matches!(err, AuditError::Failed(ref m) if m.contains("No space left")),
        "{err}"
    );
    assert!(!log.is_durable(t));
    // Later appends still get a ticket, and it fails too (fail closed).
    let t2 = log.append("decision", &decision(2));
    assert!(log.durable(t2).await.is_err());
    assert!(log.is_failed());
    let stats = log.stats();
    assert!(stats.write_errors >= 1);
    assert!(stats.last_error.unwrap().contains("No space left"));
    log.shutdown();
}

#[test]
fn unopenable_path_is_a_clear_error() {
    let s = Scratch::new("badpath");
    let missing = s.0.join("no-such-dir").join("audit.jsonl");
    let err = AuditLog::open(AuditConfig::new(missing, s.key())).unwrap_err();
    assert!(matches!(err, AuditError::Io { .. }));
    assert!(err.to_string().contains("no-such-dir"), "{err}");

    fs::create_dir(s.live()).unwrap();
    let err = AuditLog::open(AuditConfig::new(s.live(), s.key())).unwrap_err();
    assert!(err.to_string().contains("audit.jsonl"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_all_durable_and_contiguous() {
    let s = Scratch::new("concurrent");
    let log = Arc::new(AuditLog::open(s.cfg(1000)).unwrap());
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            for i in 0..1000u64 {
                let t = log.append("decision", &decision(task * 1000 + i));
                if i % 10 == 0 {
                    tokio::task::yield_now().await;
                }
                if i % 100 == 99 {
                    log.durable(t).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(log.stats().appended, 8000);
    log.shutdown();
    let report = verify_live(
        &s,
        &VerifyOptions {
            strict: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(report.records, log.stats().records);
    let mut seen: Vec<u64> = lines(&s.live())
        .iter()
        .map(|l| parse(l))
        .filter(|v| v["kind"] == "decision")
        .map(|v| v["i"].as_u64().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..8000).collect::<Vec<_>>());
}

#[test]
fn reserved_members_and_kinds_cannot_shadow_the_header() {
    let s = Scratch::new("reserved");
    let log = AuditLog::open(s.cfg(7)).unwrap();
    log.append("decision", &json!({"seq": 1, "prev": "x", "tool": "t"}));
    log.append("checkpoint", &json!({"sig": "00"}));
    log.append("note", &"just a string");
    log.shutdown();
    let all = lines(&s.live());
    assert_eq!(parse(&all[1])["body"]["seq"], 1);
    assert_eq!(parse(&all[2])["kind"], "x-checkpoint");
    assert_eq!(parse(&all[3])["body"], "just a string");
    verify_live(&s, &VerifyOptions::default()).unwrap();
}

#[test]
fn sync_mode_parses_and_displays() {
    for (s, m) in [
        ("record", SyncMode::Record),
        ("group", SyncMode::Group),
        ("none", SyncMode::None),
    ] {
        assert_eq!(s.parse::<SyncMode>().unwrap(), m);
        assert_eq!(m.to_string(), s);
    }
    assert!("fast".parse::<SyncMode>().is_err());
    assert_eq!(SyncMode::default(), SyncMode::Group);
    let cfg = AuditConfig::new("a".into(), "k".into());
    assert_eq!(cfg.group_commit, Duration::from_millis(5));
    assert_eq!(cfg.checkpoint_every, 1000);
    assert_eq!(cfg.rotate_bytes, Some(64 << 20));
}

#[test]
fn tail_filter_matches_fields() {
    let rec = json!({"kind": "decision", "tool": "read_file", "decision": "deny",
        "identity": {"key": "spiffe://corp/agent-1", "agent": "builder", "user": "alice"}});
    let f = |identity: Option<&str>,
             decision: Option<&str>,
             tool: Option<&str>,
             kind: Option<&str>| TailFilter {
        identity: identity.map(String::from),
        decision: decision.map(String::from),
        tool: tool.map(String::from),
        kind: kind.map(String::from),
    };
    assert!(f(None, None, None, None).matches(&rec));
    assert!(f(Some("agent-1"), None, None, None).matches(&rec));
    assert!(f(
        Some("alice"),
        Some("DENY"),
        Some("read_file"),
        Some("decision")
    )
    .matches(&rec));
    assert!(!f(Some("bob"), None, None, None).matches(&rec));
    assert!(!f(None, Some("allow"), None, None).matches(&rec));
    assert!(!f(None, None, Some("read"), None).matches(&rec));
    assert!(!f(None, None, None, Some("checkpoint")).matches(&rec));
}

#[test]
fn follow_streams_matching_records_across_rotation() {
    let s = Scratch::new("follow");
    let mut cfg = s.cfg(5);
    cfg.rotate_bytes = Some(2500);
    let log = AuditLog::open(cfg).unwrap();
    let live = s.live();
    let (tx, rx) = std::sync::mpsc::channel();
    // Detached: if it ever hangs, the test fails on the timeout below instead.
    std::thread::spawn(move || {
        let filter = TailFilter {
            tool: Some("read_file".into()),
            ..Default::default()
        };
        follow(&live, false, &filter, |line| {
            let v: Value = serde_json::from_str(line).unwrap();
            tx.send(v["i"].as_u64().unwrap()).is_ok() && v["i"] != 38
        })
        .unwrap();
    });
    // The follower reads the live file from its start: let it open the
    // first file (and see record 0) before anything rotates, so a slow
    // thread start on a loaded machine cannot skip the first file.
    let t = log.append("decision", &decision(0));
    log.wait_durable(t).unwrap();
    let mut got = vec![rx
        .recv_timeout(Duration::from_secs(5))
        .expect("follow started")];
    // Several rotations per poll interval: the follower must still see every file.
    for round in 0..2u64 {
        for i in (round * 20).max(1)..round * 20 + 20 {
            let t = log.append("decision", &decision(i));
            log.wait_durable(t).unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    while got.last() != Some(&38) {
        got.push(
            rx.recv_timeout(Duration::from_secs(5))
                .expect("follow stalled"),
        );
    }
    log.shutdown();
    assert!(log.stats().rotations >= 3, "{:?}", log.stats());
    assert_eq!(got, (0..40).step_by(2).collect::<Vec<_>>());
}

/// Child half of the kill -9 test: appends until killed, printing acknowledged `i`s.
#[test]
#[ignore = "run by kill_9_under_load_loses_nothing_acknowledged"]
fn kill_9_child_writer() {
    let Ok(dir) = std::env::var("PORTCULLIS_AUDIT_CHILD_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mut cfg = AuditConfig::new(dir.join("audit.jsonl"), dir.join("audit.key"));
    cfg.checkpoint_every = 100;
    cfg.rotate_bytes = Some(200_000);
    let log = AuditLog::open(cfg).unwrap();
    let stdout = std::io::stdout();
    for i in 0.. {
        let t = log.append("decision", &decision(i));
        if i % 50 == 49 {
            log.wait_durable(t).unwrap();
            let mut out = stdout.lock();
            writeln!(out, "acked {i}").unwrap();
            out.flush().unwrap();
        }
    }
}

#[test]
fn kill_9_under_load_loses_nothing_acknowledged() {
    let s = Scratch::new("kill9");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill_9_child_writer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PORTCULLIS_AUDIT_CHILD_DIR", &s.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = 0;
    let reader = BufReader::new(child.stdout.take().unwrap());
    for line in reader.lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("acked ") {
            acked = n.parse::<u64>().unwrap();
            if acked >= 20_000 {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
    }
    child.wait().unwrap();
    assert!(acked >= 20_000, "child stopped early at {acked}");

    let files = rotated_files(&s.live()).unwrap();
    assert!(files.len() >= 2, "{files:?}");
    match verify(&files, &VerifyOptions::default()) {
        Ok(_) => {}
        // A write cut by the kill may leave a partial last line: reported, never accepted.
        Err(f) => {
            assert!(f.reason.contains("partial record"), "{f}");
            assert_eq!(&f.file, files.last().unwrap());
        }
    }
    let mut present = std::collections::HashSet::new();
    for f in &files {
        let text = fs::read_to_string(f).unwrap();
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                if let Some(i) = v["i"].as_u64() {
                    present.insert(i);
                }
            }
        }
    }
    assert!(
        (0..=acked).all(|i| present.contains(&i)),
        "an acknowledged record is missing"
    );

    // Reopening recovers (if needed) and continues; everything verifies.
    let log = AuditLog::open(AuditConfig::new(s.live(), s.key())).unwrap();
    log.append("decision", &decision(u64::MAX));
    log.shutdown();
    let report = verify(
        &rotated_files(&s.live()).unwrap(),
        &VerifyOptions::default(),
    )
    .unwrap();
    assert!(report.records > acked);
}
