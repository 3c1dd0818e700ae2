//! The finding type shared by the description scanners (`poison`,
//! `unicode`) and the result scanner (`inject`): a rule id, a severity, the
//! byte span in the inspected text and the JSON pointer of the field, so
//! policy, audit and `portcullis scan` all speak about findings the same way.

use std::fmt;

use serde::Serialize;

/// Longest evidence excerpt in characters, so findings stay short in logs.
pub const EVIDENCE_CHARS: usize = 80;

/// How much a finding should worry the policy, ordered so `>=` compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth recording (an unusually long description), not worth acting on.
    Low,
    /// Suspicious on its own; a policy may warn or ask for approval.
    Medium,
    /// Very likely hostile: hidden or manipulative text aimed at the model.
    High,
    /// Hostile beyond reasonable doubt: hidden instructions or exfiltration.
    Critical,
}

impl Severity {
    /// Every severity from lowest to highest, so callers can list them.
    pub const ALL: [Severity; 4] = [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// Lower-case name, so the severity reads the same in JSON, logs and CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Parses a name case-insensitively, so `--fail-on HIGH` and config work.
    pub fn parse(s: &str) -> Option<Severity> {
        let s = s.trim();
        Severity::ALL
            .into_iter()
            .find(|sev| sev.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Severity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Severity::parse(s).ok_or_else(|| {
            format!("unknown severity {s:?} (expected low, medium, high or critical)")
        })
    }
}

/// One suspicious spot in a definition or result, so a policy can act on it
/// and a human can find it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Finding {
    /// Stable rule id, e.g. `poison.secrecy` or `unicode.tag-chars`.
    pub rule: &'static str,
    /// How worrying it is.
    pub severity: Severity,
    /// Byte range `[start, end)` in the inspected string (the field at `path`).
    pub span: (usize, usize),
    /// JSON pointer (RFC 6901) of the string inspected, e.g. `/description`.
    pub path: String,
    /// Short excerpt or decoded hidden text, invisible characters escaped.
    pub evidence: String,
}

impl Finding {
    /// Builds a finding whose evidence is the excerpt of `text` at `span`.
    pub fn at(
        rule: &'static str,
        severity: Severity,
        text: &str,
        span: (usize, usize),
        path: &str,
    ) -> Finding {
        Finding {
            rule,
            severity,
            span,
            path: path.to_owned(),
            evidence: excerpt(text, span),
        }
    }
}

/// Whether a character should be shown escaped in evidence, so hidden and
/// control characters are visible to whoever reads the finding.
pub fn needs_escape(c: char) -> bool {
    let cp = u32::from(c);
    c.is_control()
        || matches!(
            cp,
            0x00AD
                | 0x034F
                | 0x061C
                | 0x115F
                | 0x1160
                | 0x17B4
                | 0x17B5
                | 0x180B..=0x180F
                | 0x200B..=0x200F
                | 0x2028..=0x202E
                | 0x2060..=0x206F
                | 0x3164
                | 0xFE00..=0xFE0F
                | 0xFEFF
                | 0xFFA0
                | 0xFFF9..=0xFFFB
                | 0x1D173..=0x1D17A
                | 0xE0000..=0xE0FFF
        )
}

/// Escapes invisible and control characters as `\u{…}` (newlines and tabs
/// as `\n`, `\t`), so evidence never hides what it reports.
pub fn escape_invisible(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        c if needs_escape(c) => {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        }
        c => out.push(c),
    }
}

/// The text at `span` (clamped to char boundaries), escaped and cut to
/// about [`EVIDENCE_CHARS`] characters, so evidence is short and safe.
pub fn excerpt(text: &str, span: (usize, usize)) -> String {
    let start = floor_char_boundary(text, span.0);
    let end = floor_char_boundary(text, span.1.max(span.0));
    let piece = text.get(start..end).unwrap_or_default();
    shorten(piece, EVIDENCE_CHARS)
}

/// Escapes `s` and cuts it to `max` characters with a trailing `…`, so
/// decoded payloads can be quoted in evidence without flooding it.
pub fn shorten(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut shown = 0usize;
    for c in s.chars() {
        if shown >= max {
            out.push('…');
            break;
        }
        let before = out.len();
        push_escaped(&mut out, c);
        shown += out.get(before..).map_or(1, |p| p.chars().count());
    }
    out
}

/// Largest char boundary `<= i` in `s`, so slicing never panics.
pub(crate) fn floor_char_boundary(s: &str, i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    let mut i = i;
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Smallest char boundary `>= i` in `s`, so spans cover whole characters.
pub(crate) fn ceil_char_boundary(s: &str, i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    let mut i = i;
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Appends a JSON pointer segment (RFC 6901 escaping), so paths are exact.
pub(crate) fn push_pointer(path: &mut String, seg: &str) {
    path.push('/');
    for c in seg.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

/// Merges findings of the same rule and path whose spans overlap or touch
/// (keeping the highest severity), so one phrase matched twice is reported
/// once. `text` is the inspected string: an evidence that was a plain
/// excerpt is re-cut to the merged span.
pub(crate) fn merge_overlapping(findings: &mut Vec<Finding>, text: &str) {
    if findings.len() < 2 {
        return;
    }
    findings.sort_by(|a, b| {
        (
            a.path.as_str(),
            a.rule,
            a.span.0,
            std::cmp::Reverse(a.span.1),
        )
            .cmp(&(
                b.path.as_str(),
                b.rule,
                b.span.0,
                std::cmp::Reverse(b.span.1),
            ))
    });
    let mut out: Vec<Finding> = Vec::with_capacity(findings.len());
    for f in findings.drain(..) {
        if let Some(last) = out.last_mut() {
            if last.rule == f.rule && last.path == f.path && f.span.0 <= last.span.1 {
                let plain = last.evidence == excerpt(text, last.span);
                last.severity = last.severity.max(f.severity);
                if f.span.1 > last.span.1 {
                    last.span.1 = f.span.1;
                    if plain {
                        last.evidence = excerpt(text, last.span);
                    }
                }
                continue;
            }
        }
        out.push(f);
    }
    out.sort_by(|a, b| {
        (a.path.as_str(), a.span.0, a.rule).cmp(&(b.path.as_str(), b.span.0, b.rule))
    });
    *findings = out;
}
