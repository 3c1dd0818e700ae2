//! JSON-RPC/MCP message parsing as the gateway does it: the depth limit
//! first, then `Message::parse_body`. Never panics; every message that
//! parses re-serializes to bytes that parse to the same message, and
//! serializing is a fixpoint (parse → serialize → parse → serialize gives
//! the same bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_wire::message::id_of;
use portcullis_wire::{depth, Body, Message, RawObject};

/// The gateway's default `limits.max_json_depth`.
const MAX_DEPTH: usize = 64;

fn check(m: &Message) {
    let bytes = m.to_bytes();
    let again = match Message::parse(&bytes) {
        Ok(a) => a,
        Err(e) => panic!(
            "re-parse of {:?} failed: {e}",
            String::from_utf8_lossy(&bytes)
        ),
    };
    assert_eq!(again.kind(), m.kind());
    assert_eq!(again.method(), m.method());
    assert_eq!(again.id().map(|i| i.get()), m.id().map(|i| i.get()));
    assert_eq!(again.to_bytes(), bytes, "serializing is not a fixpoint");
    // The accessors the pipeline uses never panic.
    let _ = m.params();
    let _ = m.result();
    let _ = m.error_value();
    if let Some(obj) = m.params_object() {
        let raw = obj.to_raw();
        let back = RawObject::parse(raw.get()).map(|o| o.to_raw().get().to_owned());
        assert_eq!(back.as_deref(), Some(raw.get()), "params object round trip");
        let _ = obj.get_str("name");
        let _ = obj.get_value("arguments");
    }
}

fuzz_target!(|data: &[u8]| {
    match depth::within_depth(data, MAX_DEPTH) {
        Some(d) => assert!(d <= MAX_DEPTH),
        None => return,
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = id_of(text);
    }
    match Message::parse_body(data) {
        Ok(Body::Single(m)) => check(&m),
        Ok(Body::Batch(items)) => {
            assert!(!items.is_empty());
            for m in items.iter().flatten() {
                check(m);
            }
        }
        Err(e) => {
            let _ = e.code();
            assert!(!e.to_string().is_empty());
        }
    }
});
