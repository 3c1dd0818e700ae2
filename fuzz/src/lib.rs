//! Helpers shared by the fuzz targets (nothing here is fuzzed itself).
#![forbid(unsafe_code)]

/// Splits `data` into chunks whose lengths (0 to 16 bytes, empty chunks
/// included) come from a small generator seeded by `seed`, so one input
/// byte picks a different split of the same stream.
pub fn chunks(data: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let len = usize::try_from((state >> 16) % 17)
            .unwrap_or(1)
            .min(rest.len());
        let (head, tail) = rest.split_at(len);
        out.push(head);
        rest = tail;
    }
    out
}

/// The first byte (the split seed) and the rest (the stream).
pub fn seed_and_stream(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&seed, rest)) => (seed, rest),
        None => (0, data),
    }
}

/// [`chunks`] for text: each cut is moved forward to a character boundary.
pub fn str_chunks(text: &str, seed: u8) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    for part in chunks(text.as_bytes(), seed) {
        pos += part.len();
        let mut cut = pos.max(start);
        while cut < text.len() && !text.is_char_boundary(cut) {
            cut += 1;
        }
        if let Some(piece) = text.get(start..cut) {
            out.push(piece);
        }
        start = cut;
    }
    out
}
