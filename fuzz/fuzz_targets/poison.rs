//! Poisoning detectors (`portcullis_inspect::poison`) over arbitrary text
//! and JSON definitions: never panics, deterministic, and every finding's
//! span lies within the string its path points at, on character boundaries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_inspect::finding::Finding;
use portcullis_inspect::poison::{self, Context};
use serde_json::Value;

fn spans_ok(findings: &[Finding], doc: &Value) {
    for f in findings {
        let (start, end) = f.span;
        assert!(start <= end, "{f:?}");
        if let Some(Value::String(s)) = doc.pointer(&f.path) {
            assert!(end <= s.len(), "{f:?} past the end of {s:?}");
            assert!(
                s.is_char_boundary(start) && s.is_char_boundary(end),
                "{f:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let ctx = Context::new(vec!["send_email".into(), "read_file".into()]);
    let text = String::from_utf8_lossy(data);
    let found = poison::scan_text(&text, "/description", &ctx);
    assert_eq!(
        found,
        poison::scan_text(&text, "/description", &ctx),
        "not deterministic"
    );
    spans_ok(&found, &serde_json::json!({ "description": text }));

    if let Ok(def) = serde_json::from_slice::<Value>(data) {
        let tool = poison::scan_tool(&def, &ctx);
        assert_eq!(tool, poison::scan_tool(&def, &ctx), "not deterministic");
        spans_ok(&tool, &def);
        spans_ok(&poison::scan_prompt(&def, &ctx), &def);
        spans_ok(&poison::scan_resource(&def, &ctx), &def);
    }
});
