//! Inputs found by the cargo-fuzz target `audit_verify` (fuzz/,
//! docs/fuzzing.md), kept as ordinary tests so the bugs they found stay
//! fixed.

use std::path::PathBuf;

use portcullis_monitor::audit::{verify, VerifyOptions};

const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn line(seq: u64, prev: &str) -> String {
    format!(
        r#"{{"v":1,"seq":{seq},"ts":"2026-01-01T00:00:00.000000Z","kind":"decision","i":{seq},"prev":"{prev}"}}"#
    )
}

fn sha256_hex(text: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()))
}

/// Writes `lines` as a log file and verifies it.
fn verify_lines(tag: &str, lines: &[String]) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-audit-fuzz-{tag}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path: PathBuf = dir.join("audit.jsonl");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    let result = verify(&[path], &VerifyOptions::default());
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|_| ()).map_err(|f| f.reason)
}

/// fuzz target `audit_verify` (a byte flip turning the first record's
/// `"seq":1` into `"seq":0`): the "chain starts at seq N" warning computed
/// `seq - 1` and overflowed (a panic with overflow checks on).
#[test]
fn audit_verify_rejects_seq_zero() {
    let why = verify_lines("seq0", &[line(0, ZERO)]).unwrap_err();
    assert!(why.contains("seq 0"), "{why}");
}

/// The same class at the other end: after a first record with the largest
/// `seq`, the next `seq` expected overflowed.
#[test]
fn audit_verify_rejects_seq_past_the_largest() {
    let first = line(u64::MAX, ZERO);
    let second = line(5, &sha256_hex(&first));
    let why = verify_lines("seqmax", &[first, second]).unwrap_err();
    assert!(why.contains("seq"), "{why}");
}
