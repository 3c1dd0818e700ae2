//! SSE framing: the wire crate's `sse::Decoder`. The first input byte picks
//! a chunk split of the rest; feeding the stream in those chunks must give
//! the same events (or the same size error) as feeding it whole. Also
//! `sse::encode` → `Decoder` round-trips any UTF-8 payload as one event
//! whose data is the payload with its line breaks normalized to `\n`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::{chunks, seed_and_stream};
use portcullis_wire::sse::{self, Decoder, Event};

/// Small enough that the size limit is reached by fuzzed inputs.
const MAX_EVENT: usize = 4096;

fn split_feed(parts: &[&[u8]]) -> Result<Vec<Event>, Vec<Event>> {
    let mut dec = Decoder::new(MAX_EVENT);
    let mut events = Vec::new();
    for part in parts {
        match dec.feed(part) {
            Ok(evs) => events.extend(evs),
            Err(_) => return Err(events),
        }
    }
    Ok(events)
}

fuzz_target!(|data: &[u8]| {
    let (seed, stream) = seed_and_stream(data);
    let whole = Decoder::new(MAX_EVENT).feed(stream);
    let split = split_feed(&chunks(stream, seed));
    match (&whole, &split) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "a chunk split changed the events"),
        (Err(_), Err(_)) => {}
        _ => panic!("a chunk split changed the outcome: whole {whole:?}, split {split:?}"),
    }

    if let Ok(payload) = std::str::from_utf8(stream) {
        let id = format!("s{seed}-1");
        let wire = sse::encode(Some(&id), payload.as_bytes());
        let mut dec = Decoder::new(wire.len() + 1);
        let events = match dec.feed(&wire) {
            Ok(evs) => evs,
            Err(e) => panic!("encoded event rejected: {e}"),
        };
        let expected = payload.replace("\r\n", "\n").replace('\r', "\n");
        assert_eq!(events.len(), 1, "one encoded message became {events:?}");
        if let Some(ev) = events.first() {
            assert_eq!(ev.id.as_deref(), Some(id.as_str()));
            assert_eq!(ev.event.as_deref(), Some("message"));
            assert_eq!(ev.data, expected);
        }
    }
});
