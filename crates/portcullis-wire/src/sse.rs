//! Server-Sent Events framing: an encoder for what the gateway sends and an
//! incremental, size-bounded decoder for what upstreams send.

use bytes::{BufMut, Bytes, BytesMut};

/// The UTF-8 byte-order mark a stream may start with.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// One SSE event as dispatched by the decoder.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The `id:` field, if the event carried one.
    pub id: Option<String>,
    /// The `event:` field (`message` when absent).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The `retry:` field in milliseconds.
    pub retry: Option<u64>,
}

/// Encodes one `message` event; payload line breaks (`\n`, `\r\n` and a
/// lone `\r`, as the decoder reads them) are split into several `data:`
/// lines, so any payload survives framing as one event whose data has its
/// line breaks as `\n`.
pub fn encode(id: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 48);
    if let Some(id) = id {
        out.put_slice(b"id: ");
        // An id must not contain line breaks; drop them rather than break framing.
        for &b in id.as_bytes() {
            if b != b'\n' && b != b'\r' && b != 0 {
                out.put_u8(b);
            }
        }
        out.put_u8(b'\n');
    }
    out.put_slice(b"event: message\n");
    let mut rest = data;
    loop {
        let brk = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        let (line, tail) = rest.split_at(brk.unwrap_or(rest.len()));
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_u8(b'\n');
        if brk.is_none() {
            break;
        }
        // A lone `\r` ends a line too, or the decoder would see a line
        // (or an empty one, ending the event) the payload did not have.
        let skip = if tail.starts_with(b"\r\n") { 2 } else { 1 };
        rest = tail.get(skip..).unwrap_or_default();
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// A priming event with an id and empty data, sent first on a resumable
/// stream so a client has a `Last-Event-ID` before any message arrives.
pub fn encode_priming(id: &str, retry_ms: Option<u64>) -> Bytes {
    let mut s = format!("id: {id}\n");
    if let Some(r) = retry_ms {
        s.push_str(&format!("retry: {r}\n"));
    }
    s.push_str("data: \n\n");
    Bytes::from(s)
}

/// Why the decoder gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// One event grew past the configured bound.
    #[error("SSE event larger than {0} bytes")]
    TooLarge(usize),
}

/// Incremental SSE decoder (WHATWG rules: `\n`, `\r\n` or `\r` line ends,
/// comment lines, BOM ignored).
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    pending: Event,
    pending_len: usize,
    has_data: bool,
    max_event: usize,
    last_was_cr: bool,
    started: bool,
    /// Bytes of a leading byte-order mark seen so far (before `started`).
    bom: usize,
}

impl Decoder {
    /// A decoder that refuses events larger than `max_event` bytes.
    pub fn new(max_event: usize) -> Self {
        Decoder {
            buf: Vec::new(),
            pending: Event::default(),
            pending_len: 0,
            has_data: false,
            max_event,
            last_was_cr: false,
            started: false,
            bom: 0,
        }
    }

    /// Feeds bytes; returns every event completed by them.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, SseError> {
        let mut out = Vec::new();
        let mut rest = chunk;
        if !self.started {
            // A byte-order mark may arrive split over chunks: its bytes are
            // held until it is whole (dropped) or ruled out (data).
            while let Some((&b, tail)) = rest.split_first() {
                if BOM.get(self.bom) != Some(&b) {
                    break;
                }
                self.bom += 1;
                rest = tail;
                if self.bom == BOM.len() {
                    break;
                }
            }
            if self.bom == BOM.len() || !rest.is_empty() {
                self.started = true;
                if self.bom < BOM.len() {
                    for &b in BOM.get(..self.bom).unwrap_or_default() {
                        self.byte(b, &mut out)?;
                    }
                }
            }
        }
        for &b in rest {
            self.byte(b, &mut out)?;
        }
        Ok(out)
    }

    fn byte(&mut self, b: u8, out: &mut Vec<Event>) -> Result<(), SseError> {
        if self.last_was_cr {
            self.last_was_cr = false;
            if b == b'\n' {
                return Ok(());
            }
        }
        match b {
            b'\n' | b'\r' => {
                self.last_was_cr = b == b'\r';
                let line = std::mem::take(&mut self.buf);
                if let Some(ev) = self.line(&line) {
                    out.push(ev);
                }
            }
            _ => {
                self.buf.push(b);
                if self.buf.len() + self.pending_len > self.max_event {
                    return Err(SseError::TooLarge(self.max_event));
                }
            }
        }
        Ok(())
    }

    fn line(&mut self, line: &[u8]) -> Option<Event> {
        if line.is_empty() {
            let ev = std::mem::take(&mut self.pending);
            let had = self.has_data;
            self.has_data = false;
            self.pending_len = 0;
            // Events without data are not dispatched, but their id still
            // counts (priming events); report them with empty data.
            if had || ev.id.is_some() {
                return Some(ev);
            }
            return None;
        }
        if line.first() == Some(&b':') {
            return None;
        }
        let text = String::from_utf8_lossy(line);
        let (name, value) = match text.split_once(':') {
            Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        self.pending_len += line.len();
        match name {
            "data" => {
                if self.has_data {
                    self.pending.data.push('\n');
                }
                self.pending.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.pending.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.pending.id = Some(value.to_owned()),
            "retry" => self.pending.retry = value.parse().ok(),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes_multiline() {
        let wire = encode(Some("s1-3"), b"{\"a\":\n1}");
        let mut d = Decoder::new(1024);
        let evs = d.feed(&wire).unwrap();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].id.as_deref(), Some("s1-3"));
        assert_eq!(evs[0].data, "{\"a\":\n1}");
    }

    #[test]
    fn handles_split_chunks_and_crlf() {
        let wire = b"event: message\r\ndata: {\"x\":1}\r\n\r\n: comment\n\ndata: a\ndata: b\n\n";
        let mut d = Decoder::new(1024);
        let mut evs = Vec::new();
        for chunk in wire.chunks(3) {
            evs.extend(d.feed(chunk).unwrap());
        }
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].data, "{\"x\":1}");
        assert_eq!(evs[1].data, "a\nb");
    }

    #[test]
    fn priming_event_reports_id() {
        let mut d = Decoder::new(1024);
        let evs = d.feed(&encode_priming("p-0", Some(500))).unwrap();
        assert_eq!(evs[0].id.as_deref(), Some("p-0"));
        assert_eq!(evs[0].retry, Some(500));
    }

    #[test]
    fn bounds_event_size() {
        let mut d = Decoder::new(16);
        assert!(d.feed(&[b'a'; 64]).is_err());
    }
}
