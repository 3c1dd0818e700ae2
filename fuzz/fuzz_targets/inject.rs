//! Injection markers in results (`portcullis_inspect::inject`) over
//! arbitrary text and JSON results: never panics, deterministic, spans in
//! bounds and on character boundaries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_inspect::inject;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let found = inject::scan_result_text(&text);
    assert_eq!(found, inject::scan_result_text(&text), "not deterministic");
    for f in &found {
        let (start, end) = f.span;
        assert!(start <= end && end <= text.len(), "{f:?}");
        assert!(
            text.is_char_boundary(start) && text.is_char_boundary(end),
            "{f:?}"
        );
    }
    if let Ok(result) = serde_json::from_slice::<Value>(data) {
        assert_eq!(inject::scan_result(&result), inject::scan_result(&result));
    }
});
