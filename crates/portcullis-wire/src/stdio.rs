//! Newline-delimited JSON framing for stdio transports.

/// Frames one serialized message as a single line. JSON whitespace may
/// contain line breaks (string contents cannot), so they become spaces.
pub fn frame(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 1);
    out.extend(
        json.iter()
            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
    );
    out.push(b'\n');
    out
}

/// Why a line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// A line grew past the bound without a newline.
    #[error("line longer than {0} bytes")]
    TooLong(usize),
}

/// Incremental splitter of a byte stream into lines, bounded in size.
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    max: usize,
    skipping: bool,
}

impl LineBuffer {
    /// A splitter refusing lines longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        LineBuffer {
            buf: Vec::new(),
            max,
            skipping: false,
        }
    }

    /// Feeds bytes; returns complete lines (without the newline, and without
    /// a trailing `\r`) and an error for each overlong line, which is
    /// skipped up to its newline so the stream can recover.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Result<Vec<u8>, LineError>> {
        let mut out = Vec::new();
        for &b in chunk {
            if b == b'\n' {
                if self.skipping {
                    self.skipping = false;
                } else {
                    let mut line = std::mem::take(&mut self.buf);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    out.push(Ok(line));
                }
                continue;
            }
            if self.skipping {
                continue;
            }
            self.buf.push(b);
            if self.buf.len() > self.max {
                self.buf.clear();
                self.skipping = true;
                out.push(Err(LineError::TooLong(self.max)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_without_inner_newlines() {
        assert_eq!(frame(b"{\"a\":\n1}"), b"{\"a\": 1}\n".to_vec());
    }

    #[test]
    fn splits_and_bounds() {
        let mut lb = LineBuffer::new(8);
        let r = lb.feed(b"abc\r\nde");
        assert_eq!(r, vec![Ok(b"abc".to_vec())]);
        let r = lb.feed(b"f\n0123456789xyz\nok\n");
        assert_eq!(
            r,
            vec![
                Ok(b"def".to_vec()),
                Err(LineError::TooLong(8)),
                Ok(b"ok".to_vec())
            ]
        );
    }
}
