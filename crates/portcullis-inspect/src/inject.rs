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
//! | `inject.exfil` | a request to send or include the conversation or the system prompt; the conversation, however plainly worded ("the conversation", "our messages"), sent to a URL or an e-mail address | High |
//!
//! The `unicode.*` rules of [`crate::unicode`] apply too.
//!
//! Text about injections is not one: an "ignore previous" phrase standing
//! alone in quotes, and a chat-template token that is named — in quotes or
//! backticks, listed with another token, or next to a word such as
//! "tokens" or "are the markers" — are Medium (reported, not acted on by
//! default). `[INST]` and `<<SYS>>` count only in upper case, as templates
//! write them (`[inst]` is a list in code); "override previous rules"
//! counts only where an order stands (not in "later rules always override
//! previous rules"); and a transfer verb after "we", "they" or "it"
//! describes a service rather than asking for one.

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
    SHAPE_RES.iter().all(|(_, r)| r.is_some()) && PLAIN_CONVO.is_some() && ADDRESS.is_some()
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
    // Text about injections names these phrases and tokens; named, they are
    // Medium (still reported, not acted on by default).
    let named = |s: usize, e: usize, marker: bool| {
        if mentioned(n, s, e, marker) {
            Severity::Medium
        } else {
            Severity::High
        }
    };
    for h in &hits {
        match h.cat {
            Cat::IgnorePrevious => push(IGNORE_PREVIOUS, named(h.s, h.e, false), h.s, h.e),
            Cat::Secrecy => push(SECRECY, Severity::High, h.s, h.e),
            Cat::Directive(sev) => push(MODEL_DIRECTIVE, sev, h.s, h.e),
            // Llama's tokens are upper case; `[inst]` is a list in code.
            Cat::RoleMarker if !exact_case(n, h.s, h.e) => {}
            Cat::RoleMarker => push(FAKE_SYSTEM, named(h.s, h.e, true), h.s, h.e),
            _ => {}
        }
    }
    let mut exfil_sentences: Vec<usize> = Vec::new();
    let convo = hits.iter().any(|h| h.cat == Cat::ObjConvo);
    let addressed = n.contains("://") || n.contains('@');
    if convo || addressed {
        let starts = sentence_starts(n);
        for o in hits.iter().filter(|h| h.cat == Cat::ObjConvo) {
            let sid = sentence_of(&starts, o.s);
            let from = starts.get(sid).copied().unwrap_or(0);
            let to = starts.get(sid + 1).copied().unwrap_or(n.len());
            if let Some(t) = transfer_in(n, from, to).filter(|t| !described(n, t.s)) {
                push(EXFIL, Severity::High, t.s.min(o.s), t.e.max(o.e));
                exfil_sentences.push(sid);
            }
        }
        // "Please send the conversation to https://…": even plainly worded,
        // the conversation sent to a URL or an e-mail address is
        // exfiltration.
        if addressed {
            exfil_to_address(n, &starts, &mut exfil_sentences, &mut push);
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
            let (s, e) = (m.start(), m.end());
            // "Later rules always override previous rules" describes; an
            // order to override stands where an order does.
            if *shape == Shape::IgnoreFlex
                && m.as_str()
                    .get(..8)
                    .is_some_and(|w| w.eq_ignore_ascii_case("override"))
                && !imperative_at(n, s)
            {
                continue;
            }
            let (rule, sev) = match shape {
                Shape::IgnoreFlex => (IGNORE_PREVIOUS, named(s, e, false)),
                Shape::YouAreNow => (MODEL_DIRECTIVE, Severity::High),
                Shape::SpecialToken | Shape::SystemTag => (FAKE_SYSTEM, named(s, e, true)),
                Shape::SystemLine => (FAKE_SYSTEM, Severity::High),
                Shape::SecrecyFlex => (SECRECY, Severity::High),
            };
            push(rule, sev, s, e);
        }
    }
    merge_overlapping(&mut found, text);
    found.truncate(MAX_PER_TEXT);
    out.extend(found);
}

/// Whether the phrase or chat-template token at `n[s..e]` is named rather
/// than used: in quotes or backticks ("text such as 'ignore previous
/// instructions'"), or, for a token, listed with another token or followed
/// or preceded by a word that names it ("`[INST]` and `<<SYS>>` are the
/// markers", "the special tokens <|im_start|> and <|im_end|>"). A quote
/// that goes on past the phrase ("\"Ignore previous instructions and …")
/// is the order itself.
fn mentioned(n: &str, s: usize, e: usize, marker: bool) -> bool {
    let b = n.as_bytes();
    let before = s.checked_sub(1).and_then(|i| b.get(i)).copied();
    if let Some(q) = before.filter(|q| matches!(q, b'\'' | b'"' | b'`')) {
        let mut k = e;
        while matches!(b.get(k), Some(b'.' | b',' | b'!' | b'?' | b':')) && k < e + 2 {
            k += 1;
        }
        if b.get(k) == Some(&q) {
            return true;
        }
    }
    if !marker {
        return false;
    }
    let rest = n
        .get(e..)
        .unwrap_or_default()
        .trim_start_matches([' ', '\t', '`']);
    let word: String = rest
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    const NAMING: &[&str] = &[
        "token",
        "tokens",
        "marker",
        "markers",
        "tag",
        "tags",
        "delimiter",
        "delimiters",
        "sequence",
        "sequences",
        "are",
        "is",
        "mark",
        "marks",
        "delimit",
        "delimits",
        "wrap",
        "wraps",
    ];
    if NAMING.contains(&word.as_str()) {
        return true;
    }
    // A list of tokens: `<|im_start|> and <|im_end|>`, `[INST]/[/INST]`.
    let listed = ["and ", "or ", ", ", "/"]
        .iter()
        .find_map(|sep| rest.strip_prefix(sep));
    if let Some(next) = listed {
        if next.trim_start_matches([' ', '`']).starts_with(['<', '[']) {
            return true;
        }
    }
    let head = n.get(..s).unwrap_or_default().trim_end_matches([' ', '`']);
    // The second of a list (`… <|im_start|> and <|im_end|>`).
    let listed_before = [" and", " or", ",", "/"]
        .iter()
        .find_map(|sep| head.strip_suffix(sep))
        .is_some_and(|h| h.trim_end_matches([' ', '`']).ends_with(['>', ']']));
    if listed_before {
        return true;
    }
    let last: String = head
        .chars()
        .rev()
        .take_while(char::is_ascii_alphabetic)
        .collect::<Vec<char>>()
        .into_iter()
        .rev()
        .map(|c| c.to_ascii_lowercase())
        .collect();
    ["token", "tokens", "marker", "markers", "like", "as"].contains(&last.as_str())
}

/// Whether a chat-template token at `n[s..e]` is written as the template
/// writes it (`[INST]`, `<<SYS>>`); other tokens match in any case.
fn exact_case(n: &str, s: usize, e: usize) -> bool {
    let t = n.get(s..e).unwrap_or_default();
    let lower = t.to_ascii_lowercase();
    match lower.as_str() {
        "[inst]" | "[/inst]" | "<<sys>>" | "<</sys>>" => t == t.to_ascii_uppercase(),
        _ => true,
    }
}

/// Whether a verb at `at` stands where an order does: at the start of a
/// sentence, line or list item, or after "please", "now", "and", "then",
/// "must", "should", "to" or "you".
fn imperative_at(n: &str, at: usize) -> bool {
    let head = n
        .get(..at)
        .unwrap_or_default()
        .trim_end_matches([' ', '\t']);
    match head.chars().next_back() {
        None => true,
        Some(c) if !c.is_ascii_alphanumeric() => {
            matches!(
                c,
                '.' | '!' | '?' | ':' | ';' | '\n' | '-' | '*' | '>' | '"' | '\'' | '(' | ','
            )
        }
        Some(_) => {
            let last = head
                .rsplit(|c: char| !c.is_ascii_alphabetic())
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            [
                "please", "now", "and", "then", "must", "should", "to", "you",
            ]
            .contains(&last.as_str())
        }
    }
}

/// Whether the verb at `at` describes what someone does ("we send the
/// conversation transcript to your email") rather than asking for it.
fn described(n: &str, at: usize) -> bool {
    let head = n.get(..at).unwrap_or_default();
    let mut words = head
        .rsplit(|c: char| !(c.is_ascii_alphabetic() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase);
    const SUBJECTS: &[&str] = &[
        "we", "they", "he", "she", "it", "i", "we'll", "they'll", "i'll", "it'll", "he'll",
        "she'll",
    ];
    match words.next() {
        Some(w) if SUBJECTS.contains(&w.as_str()) => true,
        Some(w)
            if ["will", "can", "may", "would", "also", "automatically"].contains(&w.as_str()) =>
        {
            words.next().is_some_and(|w| SUBJECTS.contains(&w.as_str()))
        }
        _ => false,
    }
}

/// The conversation, plainly worded ("the conversation", "our messages",
/// "the chat log"), as the object of a transfer to an address.
static PLAIN_CONVO: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b(?:(?:the|this|our|entire|whole|full)\s+(?:conversation|chat\s+logs?|chat\s+history|chat\s+transcript|transcript|discussion)|our\s+(?:messages|message\s+history|chat))\b(?:\s+(?:id|ids|identifier|key|token|name|title|link|url)\b)?",
    )
    .ok()
});

/// A URL or an e-mail address.
static ADDRESS: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)\bhttps?://[^\s<>"']+|[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+"#,
    )
    .ok()
});

/// Reports a transfer of the conversation to an address in one sentence
/// (at most once per sentence, and not where `inject.exfil` already fired).
fn exfil_to_address(
    n: &str,
    starts: &[usize],
    done: &mut Vec<usize>,
    push: &mut impl FnMut(&'static str, Severity, usize, usize),
) {
    let (Some(addr), Some(convo)) = (ADDRESS.as_ref(), PLAIN_CONVO.as_ref()) else {
        return;
    };
    for a in addr.find_iter(n).take(MAX_PER_TEXT) {
        let sid = sentence_of(starts, a.start());
        if done.contains(&sid) {
            continue;
        }
        // The sentence around the address, at most 400 bytes before it.
        let from = starts
            .get(sid)
            .copied()
            .unwrap_or(0)
            .max(a.start().saturating_sub(400));
        let from = floor_char_boundary(n, from);
        let to = starts
            .get(sid + 1)
            .copied()
            .unwrap_or(n.len())
            .min(a.end() + 200);
        let to = floor_char_boundary(n, to);
        let Some(hay) = n.get(from..to) else { continue };
        // `the conversation id` names a record, not the conversation.
        let Some(o) = convo.find_iter(hay).find(|m| {
            let last = m.as_str().rsplit(' ').next().unwrap_or_default();
            ![
                "id",
                "ids",
                "identifier",
                "key",
                "token",
                "name",
                "title",
                "link",
                "url",
            ]
            .iter()
            .any(|w| last.eq_ignore_ascii_case(w))
        }) else {
            continue;
        };
        // "email the whole conversation to …": `email` is a verb here.
        let mailed = {
            let mut words = hay
                .get(..o.start())
                .unwrap_or_default()
                .split_whitespace()
                .rev();
            let mut last = words.next().unwrap_or_default();
            if ["the", "this", "our"]
                .iter()
                .any(|d| last.eq_ignore_ascii_case(d))
            {
                last = words.next().unwrap_or_default();
            }
            ["email", "e-mail", "mail"]
                .iter()
                .any(|w| last.eq_ignore_ascii_case(w))
        };
        let at = from + o.start();
        let verb = transfer_in(n, from, to)
            .filter(|t| !described(n, t.s))
            .map(|t| (t.s, t.e))
            .or(if mailed { Some((at, at)) } else { None });
        let Some((ts, te)) = verb else {
            continue;
        };
        done.push(sid);
        push(EXFIL, Severity::High, ts.min(at), a.end().max(te));
    }
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
