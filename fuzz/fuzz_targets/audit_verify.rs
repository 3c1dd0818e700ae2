//! Audit-log verification (`portcullis_monitor::audit::verify`). A small
//! valid log (records, checkpoints, anchors) is written once through the
//! real `AuditLog` writer. Input byte 0 picks the mode:
//! - even: the rest of the input is the log file, verified with and without
//!   the pinned key, the anchors and strict mode: a report or a failure,
//!   never a panic;
//! - odd: bytes 1..5 pick a byte of the valid log and byte 5 the bits to
//!   flip in it; with the key pinned, the anchors and strict mode the
//!   flipped log must never verify.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis_monitor::audit::{
    load_public_key, verify, AnchorSink, AuditConfig, AuditLog, SyncMode, VerifyOptions,
};

struct Fixture {
    /// The file each iteration writes and verifies.
    scratch: PathBuf,
    /// The valid log's bytes.
    log: Vec<u8>,
    /// Pinned key, anchors, strict.
    strict: VerifyOptions,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        // libFuzzer exits without running destructors: remove what earlier
        // runs (processes gone) left behind instead.
        let procfs = std::path::Path::new("/proc/self").exists();
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("portcullis-fuzz-audit-") {
                if procfs && !std::path::Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = base.join(format!("portcullis-fuzz-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        let live = dir.join("audit.jsonl");
        let anchors = dir.join("anchors.jsonl");
        let mut cfg = AuditConfig::new(live.clone(), dir.join("audit.key"));
        cfg.sync = SyncMode::None;
        cfg.checkpoint_every = 4;
        cfg.anchors = Some(AnchorSink::File(anchors.clone()));
        let log = match AuditLog::open(cfg) {
            Ok(l) => l,
            Err(e) => panic!("cannot open the audit log: {e}"),
        };
        for i in 0..9 {
            let body = serde_json::json!({
                "request": i,
                "decision": if i % 3 == 0 { "deny" } else { "allow" },
                "tool": "docs__search",
                "note": "ünïcode ✓",
            });
            log.append("decision", &body);
        }
        log.shutdown();
        drop(log);
        let bytes = std::fs::read(&live).unwrap_or_default();
        let key = match load_public_key(&dir.join("audit.key.pub")) {
            Ok(k) => k,
            Err(e) => panic!("cannot load the public key: {e}"),
        };
        let strict = VerifyOptions {
            key: Some(key),
            anchors: Some(anchors),
            strict: true,
        };
        if let Err(e) = verify(std::slice::from_ref(&live), &strict) {
            panic!("the fixture log does not verify: {e}");
        }
        Fixture {
            scratch: dir.join("fuzzed.jsonl"),
            log: bytes,
            strict,
        }
    })
}

fn check(fx: &Fixture, bytes: &[u8], opts: &VerifyOptions) -> bool {
    if let Err(e) = std::fs::write(&fx.scratch, bytes) {
        panic!("cannot write {}: {e}", fx.scratch.display());
    }
    match verify(std::slice::from_ref(&fx.scratch), opts) {
        Ok(report) => {
            assert!(report.records > 0 && report.first_seq <= report.last_seq);
            true
        }
        Err(failure) => {
            assert!(!failure.reason.is_empty());
            false
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        check(fx, rest, &VerifyOptions::default());
        check(fx, rest, &fx.strict);
        return;
    }
    let mut pos = [0u8; 4];
    for (dst, src) in pos.iter_mut().zip(rest) {
        *dst = *src;
    }
    let flip = rest.get(4).copied().filter(|&b| b != 0).unwrap_or(1);
    let at = usize::try_from(u32::from_le_bytes(pos)).unwrap_or(0) % fx.log.len().max(1);
    let mut log = fx.log.clone();
    if let Some(b) = log.get_mut(at) {
        *b ^= flip;
    }
    assert!(
        !check(fx, &log, &fx.strict),
        "byte {at} flipped by {flip:#04x} still verifies"
    );
});
