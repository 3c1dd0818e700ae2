//! DLP detectors (`portcullis_inspect::dlp`) over arbitrary text and JSON.
//! Scanning is deterministic; matches are in order, in bounds, on character
//! boundaries and do not overlap; `inspect` finds what `scan_text` finds and
//! redacts each match (a match that occurs once is gone from the output);
//! a `Block` policy blocks exactly when something matched; and the stream
//! scanner, fed the text in chunks, releases the same text as `inspect`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::{seed_and_stream, str_chunks};
use portcullis_inspect::dlp::{self, Action, DlpPolicy, StreamScanner, PII, SECRETS};
use serde_json::Value;

fn policy(action: Action) -> DlpPolicy {
    DlpPolicy::with(&[SECRETS, PII], action)
}

fuzz_target!(|data: &[u8]| {
    let (seed, stream) = seed_and_stream(data);
    let text = String::from_utf8_lossy(stream);
    let text = text.as_ref();

    let matches = dlp::scan_text(text, &policy(Action::Flag));
    assert_eq!(
        matches,
        dlp::scan_text(text, &policy(Action::Flag)),
        "not deterministic"
    );
    let mut last_end = 0;
    for m in &matches {
        assert!(
            m.span.start >= last_end,
            "overlapping or unordered: {matches:?}"
        );
        assert!(m.span.start < m.span.end && m.span.end <= text.len());
        assert!(text.is_char_boundary(m.span.start) && text.is_char_boundary(m.span.end));
        last_end = m.span.end;
    }

    let mut v = Value::String(text.to_owned());
    let out = dlp::inspect(&mut v, &policy(Action::Redact));
    let spans: Vec<_> = out.findings.iter().map(|f| f.span.clone()).collect();
    let expected: Vec<_> = matches.iter().map(|m| m.span.clone()).collect();
    assert_eq!(spans, expected, "inspect and scan_text disagree");
    assert_eq!(out.redactions, matches.len());
    assert!(!out.blocked);
    let Value::String(redacted) = &v else {
        panic!("inspect changed the type of a string");
    };
    if !text.contains("[REDACTED") {
        for m in &matches {
            let secret = text.get(m.span.clone()).unwrap_or_default();
            if secret.len() >= 8 && text.matches(secret).count() == 1 {
                assert!(!redacted.contains(secret), "{secret:?} survived redaction");
            }
        }
    }

    let mut b = Value::String(text.to_owned());
    let blocked = dlp::inspect(&mut b, &policy(Action::Block));
    assert_eq!(blocked.blocked, !matches.is_empty());

    let mut scanner = StreamScanner::new(&policy(Action::Redact));
    let mut released = String::new();
    for part in str_chunks(text, seed) {
        released.push_str(&scanner.push(part).text);
    }
    released.push_str(&scanner.finish().text);
    if text.len() < StreamScanner::HOLD {
        assert_eq!(
            &released, redacted,
            "the stream scanner released other text"
        );
    }

    if let Ok(mut doc) = serde_json::from_slice::<Value>(stream) {
        let mut again = doc.clone();
        let a = dlp::inspect(&mut doc, &policy(Action::Redact));
        let b = dlp::inspect(&mut again, &policy(Action::Redact));
        assert_eq!(a, b, "not deterministic on JSON");
        assert_eq!(doc, again);
    }
});
