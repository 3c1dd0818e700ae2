//! Encoding and decoding of schema-version-1 record lines.

use std::borrow::Cow;
use std::io::Write;

use serde::Serialize;

/// `prev` of record 1.
pub(crate) const ZERO_HASH: [u8; 32] = [0; 32];
/// Domain separation for checkpoint signatures (v2 covers the timestamp).
pub(crate) const SIG_DOMAIN: &str = "portcullis-audit-checkpoint-v2";
/// The first signature form, without the timestamp: still verified, so logs
/// written before v2 keep verifying.
pub(crate) const SIG_DOMAIN_V1: &str = "portcullis-audit-checkpoint-v1";
/// Length of a `ts` value.
pub(crate) const TS_LEN: usize = 27;
/// Kinds only the writer may produce.
pub(crate) const WRITER_KINDS: [&str; 3] = ["checkpoint", "open", "recovery"];
/// Header members a body may not repeat.
const RESERVED_KEYS: [&[u8]; 5] = [b"v", b"seq", b"ts", b"kind", b"prev"];

const PREFIX: &[u8] = b"{\"v\":1,\"seq\":";
const PREV_KEY: &[u8] = b",\"prev\":\"";
/// `,"prev":"` + 64 hex + `"}`.
const SUFFIX_LEN: usize = 9 + 64 + 2;

/// SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The bytes a checkpoint signature covers: its seq, its own timestamp
/// (nothing chains after the last checkpoint, so only the signature keeps
/// its time honest) and the head it seals.
pub(crate) fn checkpoint_message(seq: u64, ts: &[u8], head_hex: &str) -> Vec<u8> {
    let mut m = format!("{SIG_DOMAIN}\n{seq}\n").into_bytes();
    m.extend_from_slice(ts);
    m.push(b'\n');
    m.extend_from_slice(head_hex.as_bytes());
    m
}

/// The v1 message (no timestamp), for logs written before v2.
pub(crate) fn checkpoint_message_v1(seq: u64, head_hex: &str) -> Vec<u8> {
    format!("{SIG_DOMAIN_V1}\n{seq}\n{head_hex}").into_bytes()
}

/// Appends one complete line (with newline) to `out` and returns its hash.
/// `kind_field` is `"kind":"<kind>"`; `inner` the body members without braces.
pub(crate) fn push_line(
    out: &mut Vec<u8>,
    seq: u64,
    ts: &[u8; TS_LEN],
    kind_field: &[u8],
    inner: &[u8],
    prev: &[u8; 32],
) -> [u8; 32] {
    let start = out.len();
    out.extend_from_slice(PREFIX);
    let digits = itoa_buf(seq);
    out.extend_from_slice(digits.as_slice());
    out.extend_from_slice(b",\"ts\":\"");
    out.extend_from_slice(ts);
    out.extend_from_slice(b"\",");
    out.extend_from_slice(kind_field);
    if !inner.is_empty() {
        out.push(b',');
        out.extend_from_slice(inner);
    }
    out.extend_from_slice(PREV_KEY);
    let mut hexbuf = [0u8; 64];
    if hex::encode_to_slice(prev, &mut hexbuf).is_err() {
        hexbuf = [b'0'; 64];
    }
    out.extend_from_slice(&hexbuf);
    out.extend_from_slice(b"\"}");
    let hash = sha256(out.get(start..).unwrap_or_default());
    out.push(b'\n');
    hash
}

/// Decimal digits of `n` without allocating on the heap.
fn itoa_buf(mut n: u64) -> SmallDigits {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(slot) = buf.get_mut(i) {
            *slot = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    SmallDigits { buf, start: i }
}

/// Digits produced by [`itoa_buf`].
struct SmallDigits {
    buf: [u8; 20],
    start: usize,
}

impl SmallDigits {
    fn as_slice(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }
}

/// Formats microseconds since the Unix epoch as the `ts` value.
pub(crate) fn format_ts(micros: i64) -> [u8; TS_LEN] {
    let nanos = i128::from(micros) * 1000;
    let dt = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let mut out = [b'0'; TS_LEN];
    let mut cursor = out.as_mut_slice();
    let written = write!(
        cursor,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.microsecond()
    );
    if written.is_err() || !cursor.is_empty() {
        return *b"1970-01-01T00:00:00.000000Z";
    }
    out
}

/// Parses a `ts` value back to microseconds since the Unix epoch.
pub(crate) fn parse_ts(ts: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(ts).ok()?;
    let dt = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(dt.unix_timestamp_nanos() / 1000).ok()
}

/// Whether `ts` has the exact shape `YYYY-MM-DDTHH:MM:SS.ffffffZ` (so byte order is time order).
fn ts_shape_ok(ts: &[u8]) -> bool {
    ts.len() == TS_LEN
        && ts.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b'T',
            13 | 16 => *b == b':',
            19 => *b == b'.',
            26 => *b == b'Z',
            _ => b.is_ascii_digit(),
        })
}

/// The header fields of a record line.
#[derive(Debug)]
pub(crate) struct Parsed<'a> {
    /// `seq`.
    pub seq: u64,
    /// `ts`, shape-checked.
    pub ts: &'a [u8],
    /// `kind`, unescaped.
    pub kind: Cow<'a, str>,
    /// The body members without braces (may be empty).
    pub inner: &'a [u8],
    /// `prev`.
    pub prev: [u8; 32],
}

/// Parses the fixed header and trailer of a line (without newline). Does not
/// check that the body is valid JSON; [`line_is_json`] does.
pub(crate) fn parse_line(line: &[u8]) -> Result<Parsed<'_>, &'static str> {
    let Some(rest) = line.strip_prefix(PREFIX) else {
        if line.starts_with(b"{\"v\":") {
            return Err("unsupported schema version (expected \"v\":1)");
        }
        return Err("does not start with {\"v\":1,\"seq\":");
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let (num, rest) = rest.split_at_checked(digits).ok_or("bad seq")?;
    let seq: u64 = std::str::from_utf8(num)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or("bad seq")?;
    let rest = rest.strip_prefix(b",\"ts\":\"").ok_or("missing ts")?;
    let (ts, rest) = rest.split_at_checked(TS_LEN).ok_or("bad ts")?;
    if !ts_shape_ok(ts) {
        return Err("bad ts");
    }
    let rest = rest.strip_prefix(b"\",\"kind\":\"").ok_or("missing kind")?;
    let mut i = 0;
    let mut escaped = false;
    loop {
        match rest.get(i) {
            None => return Err("unterminated kind"),
            Some(b'\\') => {
                escaped = true;
                i += 2;
            }
            Some(b'"') => break,
            Some(_) => i += 1,
        }
    }
    let raw_kind = rest.get(..i).ok_or("bad kind")?;
    let after_kind = rest.get(i + 1..).ok_or("bad kind")?;
    let kind = if escaped {
        let mut quoted = Vec::with_capacity(raw_kind.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(raw_kind);
        quoted.push(b'"');
        Cow::Owned(serde_json::from_slice::<String>(&quoted).map_err(|_| "bad kind")?)
    } else {
        Cow::Borrowed(std::str::from_utf8(raw_kind).map_err(|_| "bad kind")?)
    };
    let split = after_kind
        .len()
        .checked_sub(SUFFIX_LEN)
        .ok_or("missing prev")?;
    let (mid, suffix) = after_kind.split_at_checked(split).ok_or("missing prev")?;
    let suffix = suffix.strip_prefix(PREV_KEY).ok_or("missing prev")?;
    let (hex_part, end) = suffix.split_at_checked(64).ok_or("missing prev")?;
    if end != b"\"}" {
        return Err("missing prev");
    }
    let mut prev = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut prev).map_err(|_| "bad prev")?;
    let inner = if mid.is_empty() {
        mid
    } else {
        match mid.strip_prefix(b",") {
            Some(inner) if !inner.is_empty() => inner,
            _ => return Err("bad body"),
        }
    };
    Ok(Parsed {
        seq,
        ts,
        kind,
        inner,
        prev,
    })
}

/// Whether the whole line is one valid JSON value.
pub(crate) fn line_is_json(line: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok()
}

/// What a scan of an object's top-level members found.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Scan {
    /// A member named like a header field (or a name with escapes, conservatively).
    pub reserved: bool,
    /// Whitespace between tokens (a raw value; re-serialise before storing).
    pub whitespace: bool,
    /// The bytes ended inside a string.
    pub unterminated: bool,
}

/// Scans the members of an object given without its braces.
pub(crate) fn scan_members(inner: &[u8]) -> Scan {
    let mut scan = Scan::default();
    let mut depth = 1usize;
    let mut expect_key = true;
    let mut i = 0;
    while let Some(&b) = inner.get(i) {
        match b {
            b'"' => {
                let start = i + 1;
                let mut j = start;
                let mut escaped = false;
                loop {
                    match inner.get(j) {
                        None => {
                            scan.unterminated = true;
                            return scan;
                        }
                        Some(b'\\') => {
                            escaped = true;
                            j += 2;
                        }
                        Some(b'"') => break,
                        Some(_) => j += 1,
                    }
                }
                if depth == 1 && expect_key {
                    let key = inner.get(start..j).unwrap_or_default();
                    if escaped || RESERVED_KEYS.contains(&key) {
                        scan.reserved = true;
                    }
                }
                expect_key = false;
                i = j;
            }
            b'{' | b'[' => {
                depth += 1;
                expect_key = false;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                expect_key = false;
            }
            b',' => expect_key = depth == 1,
            b' ' | b'\t' | b'\n' | b'\r' => scan.whitespace = true,
            _ => {}
        }
        i += 1;
    }
    scan
}

/// The caller-side encoding of one append: `"kind":"<kind>"` then the body
/// object, whose members are `buf[kind_end + 1 .. len - 1]`.
#[derive(Debug)]
pub(crate) struct Encoded {
    /// The bytes.
    pub buf: Vec<u8>,
    /// Where the kind member ends and the body object begins.
    pub kind_end: usize,
}

impl Encoded {
    /// `"kind":"<kind>"`.
    pub(crate) fn kind_field(&self) -> &[u8] {
        self.buf.get(..self.kind_end).unwrap_or_default()
    }

    /// The body members without braces.
    pub(crate) fn inner(&self) -> &[u8] {
        self.buf
            .get(self.kind_end + 1..self.buf.len().saturating_sub(1))
            .unwrap_or_default()
    }
}

/// Serialises `kind` and `body` on the caller's thread (one allocation of `capacity`).
pub(crate) fn encode<T: Serialize + ?Sized>(kind: &str, body: &T, capacity: usize) -> Encoded {
    let mut buf = Vec::with_capacity(capacity);
    buf.extend_from_slice(b"\"kind\":");
    let pushed = if WRITER_KINDS.contains(&kind) {
        serde_json::to_writer(&mut buf, &format!("x-{kind}"))
    } else {
        serde_json::to_writer(&mut buf, kind)
    };
    if pushed.is_err() {
        buf.truncate(7);
        buf.extend_from_slice(b"\"?\"");
    }
    let kind_end = buf.len();
    if let Err(e) = serde_json::to_writer(&mut buf, body) {
        buf.truncate(kind_end);
        let body = serde_json::json!({ "body_error": e.to_string() });
        if serde_json::to_writer(&mut buf, &body).is_err() {
            buf.truncate(kind_end);
            buf.extend_from_slice(b"{}");
        }
        return Encoded { buf, kind_end };
    }
    let mut enc = Encoded { buf, kind_end };
    normalise(&mut enc, true);
    enc
}

/// Makes the body a compact object without reserved members.
fn normalise(enc: &mut Encoded, may_reparse: bool) {
    let body = enc.buf.get(enc.kind_end..).unwrap_or_default();
    let is_object = body.len() >= 2 && body.first() == Some(&b'{') && body.last() == Some(&b'}');
    if !is_object {
        wrap(enc);
        return;
    }
    let scan = scan_members(enc.inner());
    if scan.whitespace || scan.unterminated {
        let reparsed = serde_json::from_slice::<serde_json::Value>(body);
        enc.buf.truncate(enc.kind_end);
        match reparsed {
            Ok(value) if may_reparse && serde_json::to_writer(&mut enc.buf, &value).is_ok() => {
                normalise(enc, false);
            }
            _ => enc
                .buf
                .extend_from_slice(b"{\"body_error\":\"unencodable body\"}"),
        }
        return;
    }
    if scan.reserved {
        wrap(enc);
    }
}

/// Moves the body under a `body` member.
fn wrap(enc: &mut Encoded) {
    let body = enc.buf.split_off(enc.kind_end);
    enc.buf.extend_from_slice(b"{\"body\":");
    enc.buf.extend_from_slice(&body);
    enc.buf.push(b'}');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn line_round_trips() {
        let ts = format_ts(1_700_000_000_123_456);
        assert_eq!(&ts, b"2023-11-14T22:13:20.123456Z");
        assert_eq!(parse_ts(&ts), Some(1_700_000_000_123_456));
        let enc = encode("decision", &serde_json::json!({"n": 1, "tool": "x"}), 64);
        let mut out = Vec::new();
        let h = push_line(&mut out, 42, &ts, enc.kind_field(), enc.inner(), &ZERO_HASH);
        let line = &out[..out.len() - 1];
        assert_eq!(h, sha256(line));
        assert!(line_is_json(line));
        let p = parse_line(line).unwrap();
        assert_eq!(p.seq, 42);
        assert_eq!(p.kind, "decision");
        assert_eq!(p.inner, br#""n":1,"tool":"x""#);
        assert_eq!(p.prev, ZERO_HASH);
    }

    #[test]
    fn reserved_and_odd_bodies_are_wrapped() {
        let enc = encode("k", &serde_json::json!({"seq": 9}), 8);
        assert_eq!(enc.inner(), br#""body":{"seq":9}"#);
        let enc = encode("k", &5, 8);
        assert_eq!(enc.inner(), br#""body":5"#);
        let enc = encode("k", &serde_json::json!({}), 8);
        assert_eq!(enc.inner(), b"");
        let enc = encode("checkpoint", &serde_json::json!({"a": {"seq": 1}}), 8);
        assert_eq!(enc.kind_field(), br#""kind":"x-checkpoint""#);
        assert_eq!(enc.inner(), br#""a":{"seq":1}"#);
        let raw = serde_json::value::RawValue::from_string("{ \"a\" :\n 1 }".into()).unwrap();
        let enc = encode("k", &raw, 8);
        assert_eq!(enc.inner(), br#""a":1"#);
    }
}
