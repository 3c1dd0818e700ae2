//! Injection markers in tool results: text that a server (or a web page,
//! file or issue it relays) addresses to the model instead of the user —
//! "ignore previous instructions", fake system prompts and chat-template
//! tokens, orders to hide things from the user — plus invisible Unicode.
//! Findings raise the session's risk; policy decides whether to wrap or
//! block the result.
//!
//! Results carry ordinary documents, so only unambiguous phrases count here
//! (a README saying "you must install Node" is not an injection).
//!
//! | rule | what | severity |
//! |------|------|----------|
//! | `inject.ignore-previous` | "ignore previous instructions" and variants, "new instructions:" | High |
//! | `inject.fake-system` | chat-template tokens (`<\|im_start\|>`, `[INST]`, `<<SYS>>`), `<system>` tags, a line starting `SYSTEM:` that speaks to the model, fake ends of tool output | High |
//! | `inject.model-directive` | "you are now an unrestricted assistant", "the assistant must", "note to the AI", "the user has already approved", "without asking the user" | High |
//! | `inject.secrecy` | "do not tell the user", "without the user knowing" | High |
//! | `inject.exfil` | a request to send or include the conversation or the system prompt | High |
//!
//! The `unicode.*` rules of [`crate::unicode`] apply too.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use crate::finding::{floor_char_boundary, merge_overlapping, push_pointer, Finding, Severity};
use crate::poison::{
    phrase_hits, sentence_of, sentence_starts, transfer_in, Cat, Norm, IGNORE_FLEX, SPECIAL_TOKEN,
    YOU_ARE_NOW,
};
use crate::unicode;

/// Rule id for results telling the model to drop its instructions.
pub const IGNORE_PREVIOUS: &str = "inject.ignore-previous";
/// Rule id for fake system prompts and chat-template tokens in results.
pub const FAKE_SYSTEM: &str = "inject.fake-system";
/// Rule id for results giving the model orders.
pub const MODEL_DIRECTIVE: &str = "inject.model-directive";
/// Rule id for results asking the model to hide something from the user.
pub const SECRECY: &str = "inject.secrecy";
/// Rule id for results asking the model to send the conversation somewhere.
pub const EXFIL: &str = "inject.exfil";
/// Every rule id of this module (the `unicode.*` rules apply as well), so
/// configuration can be validated against them.
pub const RULES: &[&str] = &[
    IGNORE_PREVIOUS,
    FAKE_SYSTEM,
    MODEL_DIRECTIVE,
    SECRECY,
    EXFIL,
];

/// Bytes of one text inspected, so a huge result stays cheap.
pub const MAX_TEXT_BYTES: usize = 1024 * 1024;
/// Bytes inspected per result, across all its texts.
pub const MAX_TOTAL_BYTES: usize = 4 * 1024 * 1024;
/// Findings returned per result, so a hostile result cannot flood logs.
pub const MAX_FINDINGS: usize = 256;
/// Nesting limit of structured content.
pub const MAX_DEPTH: usize = 64;

/// Findings kept per text.
const MAX_PER_TEXT: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    IgnoreFlex,
    YouAreNow,
    SpecialToken,
    SystemLine,
    SystemTag,
    SecrecyFlex,
}

const SHAPES: &[(Shape, &str)] = &[
    (Shape::IgnoreFlex, IGNORE_FLEX),
    (Shape::YouAreNow, YOU_ARE_NOW),
    (Shape::SpecialToken, SPECIAL_TOKEN),
    (
        Shape::SystemLine,
        r"(?i)(?:system|developer|administrator|admin)(?:[ \t]+(?:prompt|message|instructions?|override|note|update|notice))?[ \t\])*]*:[ \t]*(?:you\b|your\b|ignore\b|new\s+instructions|from\s+now\s+on|always\b|never\b|do\s+not\b|don't\b|the\s+assistant\b|assistant\b|important\b)",
    ),
    (
        Shape::SystemTag,
        r"(?i)<\s*/?\s*(?:system|system[_-]?prompt|system[_-]?instructions|instructions|important)\s*>",
    ),
    // "don't mention this note to the user", "a secret instruction".
    (
        Shape::SecrecyFlex,
        r"(?i)\b(?:do\s+not|don't|never)\s+(?:mention|reveal|tell|show|disclose|say)\s+(?:this|these|that|it|anything)(?:\s+\w+){0,2}\s+to\s+the\s+user\b|\bsecret\s+instructions?\b",
    ),
];

static SHAPE_RES: LazyLock<Vec<(Shape, Option<Regex>)>> = LazyLock::new(|| {
    SHAPES
        .iter()
        .map(|(k, p)| (*k, Regex::new(p).ok()))
        .collect()
});

pub(crate) fn detectors_ready() -> bool {
    SHAPE_RES.iter().all(|(_, r)| r.is_some())
}

/// Scans one piece of result text (findings with an empty path), so
/// callers holding plain text — a streamed chunk, a prompt message — get
/// the same rules as [`scan_result`].
pub fn scan_result_text(text: &str) -> Vec<Finding> {
    scan_result_text_at(text, "")
}

/// Like [`scan_result_text`] with the findings at `path` (a JSON pointer).
pub fn scan_result_text_at(text: &str, path: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    scan_into(text, path, &mut out);
    out
}

fn scan_into(text: &str, path: &str, out: &mut Vec<Finding>) {
    let end = floor_char_boundary(text, MAX_TEXT_BYTES);
    let text = text.get(..end).unwrap_or_default();
    if text.is_empty() {
        return;
    }
    let mut found = Vec::new();
    unicode::scan_into(text, path, &mut found);
    let norm = Norm::new(text);
    let n: &str = &norm.text;
    let hits = phrase_hits(n, true);
    let mut push = |rule: &'static str, sev: Severity, s: usize, e: usize| {
        let span = norm.span(text, s, e);
        found.push(Finding::at(rule, sev, text, span, path));
    };
    for h in &hits {
        match h.cat {
            Cat::IgnorePrevious => push(IGNORE_PREVIOUS, Severity::High, h.s, h.e),
            Cat::Secrecy => push(SECRECY, Severity::High, h.s, h.e),
            Cat::Directive(sev) => push(MODEL_DIRECTIVE, sev, h.s, h.e),
            Cat::RoleMarker => push(FAKE_SYSTEM, Severity::High, h.s, h.e),
            _ => {}
        }
    }
    if hits.iter().any(|h| h.cat == Cat::ObjConvo) {
        let starts = sentence_starts(n);
        for o in hits.iter().filter(|h| h.cat == Cat::ObjConvo) {
            let sid = sentence_of(&starts, o.s);
            let from = starts.get(sid).copied().unwrap_or(0);
            let to = starts.get(sid + 1).copied().unwrap_or(n.len());
            if let Some(t) = transfer_in(n, from, to) {
                push(EXFIL, Severity::High, t.s.min(o.s), t.e.max(o.e));
            }
        }
    }
    // Each pattern starts with a literal, so each runs with its own fast
    // prefilter; a combined set would have none and read every byte.
    for (shape, re) in SHAPE_RES.iter() {
        let Some(re) = re else { continue };
        for m in re.find_iter(n).take(MAX_PER_TEXT) {
            if *shape == Shape::SystemLine && !starts_line(n, m.start()) {
                continue;
            }
            let rule = match shape {
                Shape::IgnoreFlex => IGNORE_PREVIOUS,
                Shape::YouAreNow => MODEL_DIRECTIVE,
                Shape::SpecialToken | Shape::SystemLine | Shape::SystemTag => FAKE_SYSTEM,
                Shape::SecrecyFlex => SECRECY,
            };
            push(rule, Severity::High, m.start(), m.end());
        }
    }
    merge_overlapping(&mut found, text);
    found.truncate(MAX_PER_TEXT);
    out.extend(found);
}

/// Whether only list, quote, heading or comment marks (`2.`, `//`) precede
/// `at` on its line, so `SYSTEM:` counts only where a prompt would put it.
fn starts_line(n: &str, at: usize) -> bool {
    let head = n.get(..at).unwrap_or_default();
    let line = head.rsplit('\n').next().unwrap_or_default();
    line.bytes().all(|b| {
        b.is_ascii_digit()
            || matches!(
                b,
                b' ' | b'\t' | b'>' | b'#' | b'*' | b'[' | b'(' | b')' | b'-' | b'.' | b'/'
            )
    })
}

/// Scans every text of an MCP `CallToolResult`: `content[].text`, the
/// text of embedded resources, other descriptive strings of content items,
/// and every string of `structuredContent`, each at its JSON pointer
/// (e.g. `/content/0/text`). Binary data (`data`, `blob`) is skipped.
pub fn scan_result(result: &Value) -> Vec<Finding> {
    let mut w = Walk {
        path: String::new(),
        out: Vec::new(),
        budget: MAX_TOTAL_BYTES,
    };
    if let Some(obj) = result.as_object() {
        for (k, v) in obj {
            let mark = w.path.len();
            push_pointer(&mut w.path, k);
            match k.as_str() {
                "content" => w.content(v, 0),
                "structuredContent" => w.all(v, 0),
                _ => {}
            }
            w.path.truncate(mark);
        }
    }
    w.out.truncate(MAX_FINDINGS);
    w.out
}

/// Content-item keys that hold no text for the model.
const SKIPPED_KEYS: &[&str] = &[
    "type",
    "mimeType",
    "data",
    "blob",
    "uri",
    "_meta",
    "annotations",
];

struct Walk {
    path: String,
    out: Vec<Finding>,
    budget: usize,
}

impl Walk {
    fn text(&mut self, s: &str) {
        if self.budget == 0 || self.out.len() >= MAX_FINDINGS || s.is_empty() {
            return;
        }
        let end = floor_char_boundary(s, self.budget.min(MAX_TEXT_BYTES));
        self.budget = self.budget.saturating_sub(end.max(1));
        scan_into(s.get(..end).unwrap_or_default(), &self.path, &mut self.out);
    }

    /// Content items: every string except the binary and structural keys.
    fn content(&mut self, v: &Value, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        match v {
            Value::String(s) => self.text(s),
            Value::Array(items) => {
                for (i, x) in items.iter().enumerate() {
                    let mark = self.path.len();
                    push_pointer(&mut self.path, &i.to_string());
                    self.content(x, depth + 1);
                    self.path.truncate(mark);
                }
            }
            Value::Object(map) => {
                for (k, x) in map {
                    if SKIPPED_KEYS.contains(&k.as_str()) {
                        continue;
                    }
                    let mark = self.path.len();
                    push_pointer(&mut self.path, k);
                    self.content(x, depth + 1);
                    self.path.truncate(mark);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// Structured content: every string.
    fn all(&mut self, v: &Value, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        match v {
            Value::String(s) => self.text(s),
            Value::Array(items) => {
                for (i, x) in items.iter().enumerate() {
                    let mark = self.path.len();
                    push_pointer(&mut self.path, &i.to_string());
                    self.all(x, depth + 1);
                    self.path.truncate(mark);
                }
            }
            Value::Object(map) => {
                for (k, x) in map {
                    let mark = self.path.len();
                    push_pointer(&mut self.path, k);
                    self.all(x, depth + 1);
                    self.path.truncate(mark);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}
