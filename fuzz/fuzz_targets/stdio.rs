//! stdio line framing: the wire crate's `stdio::LineBuffer`. The first input
//! byte picks a chunk split of the rest; feeding the stream in those chunks
//! must give the same lines and errors as feeding it whole. No line is
//! longer than the limit, and `stdio::frame` always yields
//! exactly one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::{chunks, seed_and_stream};
use portcullis_wire::stdio::{frame, LineBuffer};

/// Small enough that the length limit is reached by fuzzed inputs.
const MAX_LINE: usize = 256;

fuzz_target!(|data: &[u8]| {
    let (seed, stream) = seed_and_stream(data);
    let whole = LineBuffer::new(MAX_LINE).feed(stream);
    let mut lb = LineBuffer::new(MAX_LINE);
    let mut split = Vec::new();
    for part in chunks(stream, seed) {
        split.extend(lb.feed(part));
    }
    assert_eq!(whole, split, "a chunk split changed the lines");
    for line in whole.iter().flatten() {
        assert!(line.len() <= MAX_LINE);
        assert!(!line.contains(&b'\n'));
    }

    let framed = frame(stream);
    assert_eq!(framed.len(), stream.len() + 1);
    let lines = LineBuffer::new(framed.len()).feed(&framed);
    let expected: Vec<u8> = stream
        .iter()
        .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
        .collect();
    assert_eq!(
        lines,
        vec![Ok(expected)],
        "a framed message is not one line"
    );
});
