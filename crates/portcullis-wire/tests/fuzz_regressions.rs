//! Inputs found by the cargo-fuzz targets (fuzz/, docs/fuzzing.md), kept as
//! ordinary tests so the bugs they found stay fixed.

use portcullis_wire::sse::{encode, Decoder, Event, SseError};
use portcullis_wire::Message;

fn decode_all(wire: &[u8]) -> Result<Vec<Event>, SseError> {
    Decoder::new(wire.len() + 1).feed(wire)
}

/// fuzz target `sse` (crash-1a381ac3…): a payload with a lone `\r` became
/// two events, because `encode` split `data:` lines only at `\n` while the
/// decoder (as SSE requires) also ends a line at a lone `\r`.
#[test]
fn sse_encode_lone_cr_stays_one_event() {
    let payload = b"\xef\xbb\xbfdata: x\r\rdata: {\"a\":\n1}\n\n";
    let events = decode_all(&encode(Some("s1-1"), payload)).unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].id.as_deref(), Some("s1-1"));
    assert_eq!(events[0].data, "\u{feff}data: x\n\ndata: {\"a\":\n1}\n\n");
}

/// The same bug as an attack: a raw `\r` is JSON whitespace, and the
/// gateway forwards the raw text of fields it does not police. An upstream
/// answer with `\r\r\r\n` between the tokens of an unknown field ended the
/// client's SSE event early and turned the JSON nested after it into a
/// second, uninspected message of the upstream's choosing.
#[test]
fn sse_encode_does_not_let_raw_cr_smuggle_a_message() {
    let smuggled =
        r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"unredacted"}]}}"#;
    let answer = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{{\"content\":[]}},\"x\":[0,\r\r\r\n{smuggled}\r]}}"
    );
    let m = Message::parse(answer.as_bytes()).unwrap();
    let events = decode_all(&encode(Some("s1-2"), &m.to_bytes())).unwrap();
    assert!(events.iter().all(|e| e.data != smuggled), "{events:?}");
    assert_eq!(events.len(), 1, "{events:?}");
    let forwarded = Message::parse(events[0].data.as_bytes()).unwrap();
    assert_eq!(forwarded.result(), m.result());
    let value = |m: &Message| serde_json::from_slice::<serde_json::Value>(&m.to_bytes()).unwrap();
    assert_eq!(value(&forwarded), value(&m), "changed beyond whitespace");
}

/// Line breaks of every kind become `\n`, and `\r\n` counts once.
#[test]
fn sse_encode_normalizes_line_breaks() {
    for (payload, data) in [
        (&b"a\rb"[..], "a\nb"),
        (b"a\r\nb", "a\nb"),
        (b"a\n\rb", "a\n\nb"),
        (b"a\r", "a\n"),
        (b"\r\r\n", "\n\n"),
        (b"", ""),
    ] {
        let events = decode_all(&encode(None, payload)).unwrap();
        assert_eq!(events.len(), 1, "{payload:?}: {events:?}");
        assert_eq!(events[0].data, data, "{payload:?}");
    }
}

/// Feeds `wire` to one decoder in the given chunks.
fn decode_chunks(chunks: &[&[u8]]) -> Result<Vec<Event>, SseError> {
    let mut d = Decoder::new(1024);
    let mut events = Vec::new();
    for c in chunks {
        events.extend(d.feed(c)?);
    }
    Ok(events)
}

/// fuzz target `sse` (crash-14206099…): a byte-order mark split over two
/// chunks was not recognised, so the first line read `\u{feff}data` and
/// the first event was lost — the events depended on where the upstream's
/// chunks happened to end.
#[test]
fn sse_decoder_bom_split_over_chunks() {
    let wire: &[u8] = b"\xef\xbb\xbfdata: {\"a\":\n1ata: x\r\rdata: {\"a\":\n1}\n\n";
    let whole = decode_chunks(&[wire]).unwrap();
    assert_eq!(whole.len(), 2, "{whole:?}");
    assert_eq!(whole[0].data, "{\"a\":");
    for cut in 0..=wire.len() {
        let (a, b) = wire.split_at(cut);
        assert_eq!(decode_chunks(&[a, b]).unwrap(), whole, "cut at {cut}");
    }
    let bytes: Vec<&[u8]> = wire.chunks(1).collect();
    assert_eq!(decode_chunks(&bytes).unwrap(), whole, "byte by byte");
    // A prefix of a BOM followed by something else is data, as when whole.
    let odd: &[u8] = b"\xef\xbbdata: x\n\ndata: y\n\n";
    let whole = decode_chunks(&[odd]).unwrap();
    assert_eq!(decode_chunks(&[&odd[..1], &odd[1..]]).unwrap(), whole);
    assert_eq!(decode_chunks(&[&odd[..2], &[], &odd[2..]]).unwrap(), whole);
}
