//! Invisible and confusable Unicode: characters a human reviewer does not
//! see (or misreads) but a model reads. Tool descriptions and results are
//! checked for them because hidden text is how instructions get smuggled
//! past an approval screen.
//!
//! | rule | what | severity |
//! |------|------|----------|
//! | `unicode.tag-chars` | U+E0000–E007F; the ASCII they spell is decoded into the evidence (emoji subdivision flags such as England's are exempt) | Critical when they spell text, High otherwise |
//! | `unicode.zero-width` | U+200B–200D, U+2060, U+FEFF (not a leading BOM; a ZWJ/ZWNJ between emoji or non-Latin letters is exempt) | High for runs of 4 or more (enough to encode bits), Medium otherwise |
//! | `unicode.bidi-control` | embeddings and overrides U+202A–202E, isolates U+2066–2069; marks U+200E, U+200F, U+061C in text with no right-to-left letters | High for overrides, and for embeddings/isolates in text with no right-to-left letters; Medium otherwise |
//! | `unicode.control-char` | C0/C1 controls (not tab/newline/CR), DEL, invisible format characters (U+2061–2064, U+206A–206F, Hangul fillers, U+180E, U+034F, U+FFF9–FFFB), soft hyphen, line/paragraph separators | High for ESC (terminal escape sequences can hide text), Low for soft hyphen and separators, Medium otherwise |
//! | `unicode.variation-selector` | two or more variation selectors in a row (U+FE00–FE0F, U+E0100–E01EF): a known way to hide bytes after a visible character; the bytes are decoded into the evidence | Critical when they decode to text, High otherwise |
//! | `unicode.homoglyph` | a word mixing Latin letters with Cyrillic/Greek look-alikes (`раypal`), or a Cyrillic/Greek word made only of look-alikes in otherwise Latin text | High for mixed words, Medium for whole look-alike words |
//!
//! Text that is entirely ASCII is checked with one fast byte scan.

use crate::finding::{shorten, Finding, Severity};

/// Rule id for Unicode tag characters, so callers need not spell it.
pub const TAG_CHARS: &str = "unicode.tag-chars";
/// Rule id for zero-width characters, so callers need not spell it.
pub const ZERO_WIDTH: &str = "unicode.zero-width";
/// Rule id for bidirectional controls, so callers need not spell it.
pub const BIDI_CONTROL: &str = "unicode.bidi-control";
/// Rule id for control and invisible format characters, so callers need not spell it.
pub const CONTROL_CHAR: &str = "unicode.control-char";
/// Rule id for runs of variation selectors, so callers need not spell it.
pub const VARIATION_SELECTOR: &str = "unicode.variation-selector";
/// Rule id for mixed-script look-alike words, so callers need not spell it.
pub const HOMOGLYPH: &str = "unicode.homoglyph";
/// Every rule id of this module, so configuration can be validated.
pub const RULES: &[&str] = &[
    TAG_CHARS,
    ZERO_WIDTH,
    BIDI_CONTROL,
    CONTROL_CHAR,
    VARIATION_SELECTOR,
    HOMOGLYPH,
];

/// Findings per rule per text, so a hostile string cannot flood the output.
pub const MAX_PER_RULE: usize = 16;

/// Characters of context shown either side of an invisible run.
const CONTEXT_CHARS: usize = 12;

/// The kinds of invisible character, one rule each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Tag,
    ZeroWidth,
    Bidi,
    Control,
    VarSel,
}

fn classify(c: char) -> Option<Class> {
    let cp = u32::from(c);
    if cp < 0x80 {
        return match cp {
            0x09 | 0x0A | 0x0D => None,
            0x00..=0x1F | 0x7F => Some(Class::Control),
            _ => None,
        };
    }
    match cp {
        0xE0000..=0xE007F => Some(Class::Tag),
        0x200B..=0x200D | 0x2060 | 0xFEFF => Some(Class::ZeroWidth),
        0x202A..=0x202E | 0x2066..=0x2069 | 0x200E | 0x200F | 0x061C => Some(Class::Bidi),
        0xFE00..=0xFE0F | 0xE0100..=0xE01EF => Some(Class::VarSel),
        0x80..=0x9F
        | 0x00AD
        | 0x034F
        | 0x115F
        | 0x1160
        | 0x17B4
        | 0x17B5
        | 0x180E
        | 0x2028
        | 0x2029
        | 0x2061..=0x2064
        | 0x206A..=0x206F
        | 0x3164
        | 0xFFA0
        | 0xFFF9..=0xFFFB
        | 0x1D173..=0x1D17A => Some(Class::Control),
        _ => None,
    }
}

/// Whether `c` is one of the invisible characters these rules report, so
/// other scanners can strip them before matching phrases.
pub fn is_invisible(c: char) -> bool {
    classify(c).is_some()
}

/// The Latin letter a Cyrillic or Greek character is commonly mistaken for,
/// so look-alike words can be read the way a human would read them.
pub fn confusable(c: char) -> Option<char> {
    let latin = match c {
        // Cyrillic lower case
        'а' => 'a',
        'е' => 'e',
        'о' => 'o',
        'р' => 'p',
        'с' => 'c',
        'у' => 'y',
        'х' => 'x',
        'ѕ' => 's',
        'і' => 'i',
        'ј' => 'j',
        'ԁ' => 'd',
        'ԛ' => 'q',
        'ԝ' => 'w',
        'һ' => 'h',
        'ӏ' => 'l',
        'ү' => 'y',
        // Cyrillic upper case
        'А' => 'A',
        'В' => 'B',
        'Е' => 'E',
        'К' => 'K',
        'М' => 'M',
        'Н' => 'H',
        'О' => 'O',
        'Р' => 'P',
        'С' => 'C',
        'Т' => 'T',
        'Х' => 'X',
        'У' => 'Y',
        'Ѕ' => 'S',
        'І' => 'I',
        'Ј' => 'J',
        'Ԛ' => 'Q',
        'Ԝ' => 'W',
        'Ү' => 'Y',
        'Ӏ' => 'I',
        // Greek lower case
        'α' => 'a',
        'ο' => 'o',
        'ν' => 'v',
        'ι' => 'i',
        'κ' => 'k',
        'ρ' => 'p',
        'υ' => 'u',
        'χ' => 'x',
        'γ' => 'y',
        // Greek upper case
        'Α' => 'A',
        'Β' => 'B',
        'Ε' => 'E',
        'Ζ' => 'Z',
        'Η' => 'H',
        'Ι' => 'I',
        'Κ' => 'K',
        'Μ' => 'M',
        'Ν' => 'N',
        'Ο' => 'O',
        'Ρ' => 'P',
        'Τ' => 'T',
        'Υ' => 'Y',
        'Χ' => 'X',
        _ => return None,
    };
    Some(latin)
}

fn is_cyrillic_or_greek(c: char) -> bool {
    matches!(u32::from(c), 0x0370..=0x03FF | 0x0400..=0x052F | 0x1F00..=0x1FFF)
}

fn is_latin_letter(c: char) -> bool {
    c.is_ascii_alphabetic()
        || (matches!(u32::from(c), 0x00C0..=0x024F | 0x1E00..=0x1EFF) && c.is_alphabetic())
}

fn is_rtl_letter(c: char) -> bool {
    matches!(
        u32::from(c),
        0x0590..=0x08FF | 0xFB1D..=0xFDFF | 0xFE70..=0xFEFE | 0x10800..=0x10FFF | 0x1E800..=0x1EFFF
    )
}

/// All Unicode findings for `text`, so one call covers every rule here.
pub fn scan(text: &str, path: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    scan_into(text, path, &mut out);
    out
}

/// Like [`scan`] but appends to `out`, so scanners can reuse one vector.
pub fn scan_into(text: &str, path: &str, out: &mut Vec<Finding>) {
    scan_census_into(text, path, out, |_| {});
}

/// Like [`scan_into`], and tells whether `text` has any non-ASCII byte and
/// any ASCII control other than tab, newline and CR, so a caller can take
/// a plain-ASCII fast path without reading the text once more; `each` sees
/// every character of non-ASCII text but printable ASCII, tabs and line
/// ends.
pub(crate) fn scan_census_into(
    text: &str,
    path: &str,
    out: &mut Vec<Finding>,
    each: impl FnMut(char),
) -> (bool, bool) {
    let (non_ascii, control) = byte_census(text.as_bytes());
    if !non_ascii {
        if control {
            invisible_runs(text, path, Some(Class::Control), out);
        }
        return (non_ascii, control);
    }
    invisible_runs_with(text, path, None, out, each);
    homoglyphs_into(text, path, out);
    (non_ascii, control)
}

/// Whether `bytes` has any non-ASCII byte, and any ASCII control other
/// than tab, newline and CR; branch-free per block so it vectorises.
fn byte_census(bytes: &[u8]) -> (bool, bool) {
    let mut high = false;
    let mut ctl = false;
    for block in bytes.chunks(64) {
        let (h, c) = block.iter().fold((false, false), |(h, c), &b| {
            let control = (b < 0x20) & (b != b'\t') & (b != b'\n') & (b != b'\r') | (b == 0x7F);
            (h | (b >= 0x80), c | control)
        });
        high |= h;
        ctl |= c;
        if high && ctl {
            break;
        }
    }
    (high, ctl)
}

/// Tag-character findings only, with the hidden ASCII decoded into the evidence.
pub fn tag_chars(text: &str, path: &str) -> Vec<Finding> {
    only(text, path, Class::Tag)
}

/// Zero-width character findings only.
pub fn zero_width(text: &str, path: &str) -> Vec<Finding> {
    only(text, path, Class::ZeroWidth)
}

/// Bidirectional control findings only.
pub fn bidi_controls(text: &str, path: &str) -> Vec<Finding> {
    only(text, path, Class::Bidi)
}

/// Control and invisible format character findings only.
pub fn control_chars(text: &str, path: &str) -> Vec<Finding> {
    only(text, path, Class::Control)
}

/// Variation-selector run findings only, with the hidden bytes decoded.
pub fn variation_selectors(text: &str, path: &str) -> Vec<Finding> {
    only(text, path, Class::VarSel)
}

/// Mixed-script look-alike word findings only.
pub fn homoglyphs(text: &str, path: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    if !text.is_ascii() {
        homoglyphs_into(text, path, &mut out);
    }
    out
}

fn only(text: &str, path: &str, class: Class) -> Vec<Finding> {
    let mut out = Vec::new();
    invisible_runs(text, path, Some(class), &mut out);
    out
}

/// A maximal run of characters of one invisible class.
#[derive(Clone, Copy)]
struct Run {
    class: Class,
    start: usize,
    end: usize,
}

/// Finds the runs of invisible characters (of `want`, or every class) and
/// turns them into findings.
fn invisible_runs(text: &str, path: &str, want: Option<Class>, out: &mut Vec<Finding>) {
    invisible_runs_with(text, path, want, out, |_| {});
}

/// Like [`invisible_runs`], showing `each` every character but printable
/// ASCII, tabs and line ends.
fn invisible_runs_with(
    text: &str,
    path: &str,
    want: Option<Class>,
    out: &mut Vec<Finding>,
    mut each: impl FnMut(char),
) {
    let mut counts = [0usize; 5];
    let mut has_rtl = false;
    let mut bidi: Vec<Run> = Vec::new();
    let mut cur: Option<Run> = None;
    let bytes = text.as_bytes();
    let mut next = 0;
    while next < bytes.len() {
        // Printable ASCII, tab and line ends are of no class and no
        // right-to-left letter: they only end the current run.
        let plain = plain_ascii_run(bytes, next);
        if plain > 0 {
            if let Some(run) = cur.take() {
                close(text, path, run, &mut bidi, &mut counts, out);
            }
            next += plain;
            continue;
        }
        let i = next;
        let Some(c) = text.get(i..).and_then(|t| t.chars().next()) else {
            break;
        };
        next += c.len_utf8();
        each(c);
        let class = classify(c);
        if !has_rtl && class.is_none() && is_rtl_letter(c) {
            has_rtl = true;
        }
        match (class, cur.as_mut()) {
            (Some(k), Some(run)) if run.class == k && run.end == i => {
                run.end = i + c.len_utf8();
                continue;
            }
            _ => {}
        }
        if let Some(run) = cur.take() {
            close(text, path, run, &mut bidi, &mut counts, out);
        }
        if let Some(k) = class {
            if want.is_none_or(|w| w == k) {
                cur = Some(Run {
                    class: k,
                    start: i,
                    end: i + c.len_utf8(),
                });
            }
        }
    }
    if let Some(run) = cur.take() {
        close(text, path, run, &mut bidi, &mut counts, out);
    }
    for run in bidi {
        if let Some(f) = bidi_finding(text, path, run, has_rtl) {
            out.push(f);
        }
    }
}

/// Whether `b` is printable ASCII, a tab or a line end: a byte no rule
/// here reports.
fn plain_ascii(b: u8) -> bool {
    (0x20..0x7F).contains(&b) || b == b'\t' || b == b'\n' || b == b'\r'
}

/// How many bytes from `i` on are [`plain_ascii`], a block at a time so the
/// common case vectorises.
fn plain_ascii_run(bytes: &[u8], i: usize) -> usize {
    let rest = bytes.get(i..).unwrap_or_default();
    let mut n = 0;
    for block in rest.chunks(32) {
        if block.iter().fold(true, |all, &b| all & plain_ascii(b)) {
            n += block.len();
        } else {
            return n + block
                .iter()
                .position(|&b| !plain_ascii(b))
                .unwrap_or(block.len());
        }
    }
    n
}

/// Whether the UTF-8 `bytes` may hold a Cyrillic or Greek character (a
/// lead byte of U+0340–U+053F, or of U+1F00–U+1FFF), so look-alike words
/// need looking for.
fn maybe_cyrillic_or_greek(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .zip(bytes.iter().skip(1))
        .any(|(&a, &b)| (0xCD..=0xD4).contains(&a) || (a == 0xE1 && (0xBC..=0xBF).contains(&b)))
}

fn class_index(c: Class) -> usize {
    match c {
        Class::Tag => 0,
        Class::ZeroWidth => 1,
        Class::Bidi => 2,
        Class::Control => 3,
        Class::VarSel => 4,
    }
}

fn close(
    text: &str,
    path: &str,
    run: Run,
    bidi: &mut Vec<Run>,
    counts: &mut [usize; 5],
    out: &mut Vec<Finding>,
) {
    let Some(n) = counts.get_mut(class_index(run.class)) else {
        return;
    };
    if *n >= MAX_PER_RULE {
        return;
    }
    let finding = match run.class {
        // Bidi severity depends on whether the text has right-to-left
        // letters anywhere, which is known only at the end.
        Class::Bidi => {
            bidi.push(run);
            *n += 1;
            return;
        }
        Class::Tag => tag_finding(text, path, run),
        Class::ZeroWidth => zero_width_finding(text, path, run),
        Class::Control => control_finding(text, path, run),
        Class::VarSel => var_sel_finding(text, path, run),
    };
    if let Some(f) = finding {
        *n += 1;
        out.push(f);
    }
}

fn run_chars(text: &str, run: Run) -> impl Iterator<Item = char> + '_ {
    text.get(run.start..run.end).unwrap_or_default().chars()
}

fn char_before(text: &str, i: usize) -> Option<char> {
    text.get(..i).and_then(|s| s.chars().next_back())
}

fn char_after(text: &str, i: usize) -> Option<char> {
    text.get(i..).and_then(|s| s.chars().next())
}

fn tag_finding(text: &str, path: &str, run: Run) -> Option<Finding> {
    let mut hidden = String::new();
    let mut n = 0usize;
    let mut flag_like = true;
    let mut last = None;
    for c in run_chars(text, run) {
        n += 1;
        let cp = u32::from(c);
        if let Some(a) = cp.checked_sub(0xE0000).and_then(char::from_u32) {
            if (0x20..0x7F).contains(&u32::from(a)) {
                hidden.push(a);
            }
            if !(a.is_ascii_lowercase() || a.is_ascii_digit() || cp == 0xE007F) {
                flag_like = false;
            }
        }
        last = Some(cp);
    }
    // An emoji subdivision flag: U+1F3F4, 2–6 tag letters/digits, CANCEL TAG.
    if flag_like
        && last == Some(0xE007F)
        && (3..=7).contains(&n)
        && char_before(text, run.start) == Some('\u{1F3F4}')
    {
        return None;
    }
    let spells_text = hidden.chars().any(|c| c.is_ascii_alphanumeric());
    let severity = if spells_text {
        Severity::Critical
    } else {
        Severity::High
    };
    let evidence = if hidden.is_empty() {
        format!("{n} tag characters: {}", around(text, run))
    } else {
        format!("hidden text: \"{}\"", shorten(&hidden, 64))
    };
    Some(Finding {
        rule: TAG_CHARS,
        severity,
        span: (run.start, run.end),
        path: path.to_owned(),
        evidence,
    })
}

/// A neighbour across which a ZWJ/ZWNJ is ordinary: an emoji, a variation
/// selector or a letter of a script that uses joiners (Arabic, Indic, …).
fn joins(c: Option<char>) -> bool {
    c.is_some_and(|c| !c.is_ascii() && !is_latin_letter(c) && !c.is_whitespace())
}

fn zero_width_finding(text: &str, path: &str, run: Run) -> Option<Finding> {
    let mut chars = run_chars(text, run);
    let first = chars.next()?;
    let n = 1 + chars.count();
    if n == 1 {
        if first == '\u{FEFF}' && run.start == 0 {
            return None;
        }
        if matches!(first, '\u{200C}' | '\u{200D}')
            && joins(char_before(text, run.start))
            && joins(char_after(text, run.end))
        {
            return None;
        }
    }
    let severity = if n >= 4 {
        Severity::High
    } else {
        Severity::Medium
    };
    Some(Finding {
        rule: ZERO_WIDTH,
        severity,
        span: (run.start, run.end),
        path: path.to_owned(),
        evidence: around(text, run),
    })
}

fn bidi_finding(text: &str, path: &str, run: Run, has_rtl: bool) -> Option<Finding> {
    let mut severity: Option<Severity> = None;
    for c in run_chars(text, run) {
        let s = match c {
            '\u{202D}' | '\u{202E}' => Some(Severity::High),
            '\u{202A}'..='\u{202C}' | '\u{2066}'..='\u{2069}' => Some(if has_rtl {
                Severity::Medium
            } else {
                Severity::High
            }),
            _ if has_rtl => None,
            _ => Some(Severity::Medium),
        };
        severity = severity.max(s);
    }
    Some(Finding {
        rule: BIDI_CONTROL,
        severity: severity?,
        span: (run.start, run.end),
        path: path.to_owned(),
        evidence: around(text, run),
    })
}

fn control_finding(text: &str, path: &str, run: Run) -> Option<Finding> {
    let mut severity = Severity::Low;
    for c in run_chars(text, run) {
        let s = match c {
            '\u{1B}' | '\u{9B}' => Severity::High,
            '\u{AD}' | '\u{2028}' | '\u{2029}' => Severity::Low,
            _ => Severity::Medium,
        };
        severity = severity.max(s);
    }
    Some(Finding {
        rule: CONTROL_CHAR,
        severity,
        span: (run.start, run.end),
        path: path.to_owned(),
        evidence: around(text, run),
    })
}

fn var_sel_finding(text: &str, path: &str, run: Run) -> Option<Finding> {
    let mut bytes = Vec::new();
    for c in run_chars(text, run) {
        let cp = u32::from(c);
        let b = match cp {
            0xFE00..=0xFE0F => cp - 0xFE00,
            _ => cp.saturating_sub(0xE0100) + 16,
        };
        bytes.push(u8::try_from(b).unwrap_or(u8::MAX));
    }
    if bytes.len() < 2 {
        return None;
    }
    let decoded = std::str::from_utf8(&bytes)
        .ok()
        .filter(|s| s.chars().any(|c| c.is_alphanumeric()) && !s.chars().any(char::is_control));
    let (severity, evidence) = match decoded {
        Some(s) => (
            Severity::Critical,
            format!("hidden bytes: \"{}\"", shorten(s, 64)),
        ),
        None => (
            Severity::High,
            format!("{} variation selectors in a row", bytes.len()),
        ),
    };
    Some(Finding {
        rule: VARIATION_SELECTOR,
        severity,
        span: (run.start, run.end),
        path: path.to_owned(),
        evidence,
    })
}

/// Evidence for an invisible run: a little context either side and the run
/// itself escaped (cut short when long).
fn around(text: &str, run: Run) -> String {
    let before: String = {
        let head = text.get(..run.start).unwrap_or_default();
        let mut v: Vec<char> = head.chars().rev().take(CONTEXT_CHARS).collect();
        v.reverse();
        v.into_iter().collect()
    };
    let after: String = text
        .get(run.end..)
        .unwrap_or_default()
        .chars()
        .take(CONTEXT_CHARS)
        .collect();
    let inner = text.get(run.start..run.end).unwrap_or_default();
    let n = inner.chars().count();
    let mut mid = shorten(&inner.chars().take(4).collect::<String>(), 4);
    if n > 4 {
        mid.push_str(&format!("…({n} chars)"));
    }
    format!(
        "{}{}{}",
        shorten(&before, CONTEXT_CHARS),
        mid,
        shorten(&after, CONTEXT_CHARS)
    )
}

/// One word's script make-up.
struct Word {
    start: usize,
    end: usize,
    latin: usize,
    lookalike: usize,
    other_cg: usize,
}

fn homoglyphs_into(text: &str, path: &str, out: &mut Vec<Finding>) {
    // Without a Cyrillic or Greek letter, no word can be a look-alike.
    if !maybe_cyrillic_or_greek(text.as_bytes()) {
        return;
    }
    let mut words: Vec<Word> = Vec::new();
    let mut cur: Option<Word> = None;
    let mut any_cg = false;
    for (i, c) in text.char_indices() {
        let in_word = c.is_alphanumeric() || is_invisible(c) || is_combining(c);
        if !in_word {
            if let Some(w) = cur.take() {
                words.push(w);
            }
            continue;
        }
        let w = cur.get_or_insert(Word {
            start: i,
            end: i,
            latin: 0,
            lookalike: 0,
            other_cg: 0,
        });
        w.end = i + c.len_utf8();
        if is_latin_letter(c) {
            w.latin += 1;
        } else if is_cyrillic_or_greek(c) {
            any_cg = true;
            if confusable(c).is_some() {
                w.lookalike += 1;
            } else if c.is_alphabetic() {
                w.other_cg += 1;
            }
        }
    }
    if let Some(w) = cur.take() {
        words.push(w);
    }
    if !any_cg {
        return;
    }
    // A Cyrillic or Greek word with a letter that looks like no Latin letter
    // means the text is really written (partly) in that script.
    let genuine_script = words
        .iter()
        .any(|w| w.latin == 0 && w.other_cg > 0 && w.lookalike + w.other_cg >= 2);
    let latin_words = words.iter().any(|w| w.latin > 0);
    let mut n = 0usize;
    for w in &words {
        if n >= MAX_PER_RULE {
            break;
        }
        let severity = if w.latin > 0 && w.lookalike > 0 && w.other_cg == 0 {
            Severity::High
        } else if w.latin == 0
            && w.other_cg == 0
            && w.lookalike >= 3
            && latin_words
            && !genuine_script
        {
            Severity::Medium
        } else {
            continue;
        };
        let word = text.get(w.start..w.end).unwrap_or_default();
        let mut skeleton = String::with_capacity(word.len());
        let mut codes = Vec::new();
        for c in word.chars() {
            match confusable(c) {
                Some(l) => {
                    skeleton.push(l);
                    if codes.len() < 6 {
                        codes.push(format!("U+{:04X}", u32::from(c)));
                    }
                }
                None if is_invisible(c) => {}
                None => skeleton.push(c),
            }
        }
        n += 1;
        out.push(Finding {
            rule: HOMOGLYPH,
            severity,
            span: (w.start, w.end),
            path: path.to_owned(),
            evidence: format!(
                "\"{}\" reads as \"{}\" ({})",
                shorten(word, 32),
                shorten(&skeleton, 32),
                codes.join(" ")
            ),
        });
    }
}

fn is_combining(c: char) -> bool {
    matches!(u32::from(c), 0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x20D0..=0x20FF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// The Unicode scan as it was before ASCII was skipped a block at a
    /// time and look-alikes were looked for only with Cyrillic or Greek
    /// bytes present, kept verbatim.
    mod reference {
        use super::super::*;

        pub(super) fn scan(text: &str) -> Vec<Finding> {
            let mut out = Vec::new();
            invisible_runs(text, "/p", None, &mut out);
            homoglyphs_into(text, "/p", &mut out);
            out
        }

        fn invisible_runs(text: &str, path: &str, want: Option<Class>, out: &mut Vec<Finding>) {
            let mut counts = [0usize; 5];
            let mut has_rtl = false;
            let mut bidi: Vec<Run> = Vec::new();
            let mut cur: Option<Run> = None;
            for (i, c) in text.char_indices() {
                let class = classify(c);
                if !has_rtl && class.is_none() && is_rtl_letter(c) {
                    has_rtl = true;
                }
                match (class, cur.as_mut()) {
                    (Some(k), Some(run)) if run.class == k && run.end == i => {
                        run.end = i + c.len_utf8();
                        continue;
                    }
                    _ => {}
                }
                if let Some(run) = cur.take() {
                    close(text, path, run, &mut bidi, &mut counts, out);
                }
                if let Some(k) = class {
                    if want.is_none_or(|w| w == k) {
                        cur = Some(Run {
                            class: k,
                            start: i,
                            end: i + c.len_utf8(),
                        });
                    }
                }
            }
            if let Some(run) = cur.take() {
                close(text, path, run, &mut bidi, &mut counts, out);
            }
            for run in bidi {
                if let Some(f) = bidi_finding(text, path, run, has_rtl) {
                    out.push(f);
                }
            }
        }

        fn homoglyphs_into(text: &str, path: &str, out: &mut Vec<Finding>) {
            let mut words: Vec<Word> = Vec::new();
            let mut cur: Option<Word> = None;
            let mut any_cg = false;
            for (i, c) in text.char_indices() {
                let in_word = c.is_alphanumeric() || is_invisible(c) || is_combining(c);
                if !in_word {
                    if let Some(w) = cur.take() {
                        words.push(w);
                    }
                    continue;
                }
                let w = cur.get_or_insert(Word {
                    start: i,
                    end: i,
                    latin: 0,
                    lookalike: 0,
                    other_cg: 0,
                });
                w.end = i + c.len_utf8();
                if is_latin_letter(c) {
                    w.latin += 1;
                } else if is_cyrillic_or_greek(c) {
                    any_cg = true;
                    if confusable(c).is_some() {
                        w.lookalike += 1;
                    } else if c.is_alphabetic() {
                        w.other_cg += 1;
                    }
                }
            }
            if let Some(w) = cur.take() {
                words.push(w);
            }
            if !any_cg {
                return;
            }
            // A Cyrillic or Greek word with a letter that looks like no Latin letter
            // means the text is really written (partly) in that script.
            let genuine_script = words
                .iter()
                .any(|w| w.latin == 0 && w.other_cg > 0 && w.lookalike + w.other_cg >= 2);
            let latin_words = words.iter().any(|w| w.latin > 0);
            let mut n = 0usize;
            for w in &words {
                if n >= MAX_PER_RULE {
                    break;
                }
                let severity = if w.latin > 0 && w.lookalike > 0 && w.other_cg == 0 {
                    Severity::High
                } else if w.latin == 0
                    && w.other_cg == 0
                    && w.lookalike >= 3
                    && latin_words
                    && !genuine_script
                {
                    Severity::Medium
                } else {
                    continue;
                };
                let word = text.get(w.start..w.end).unwrap_or_default();
                let mut skeleton = String::with_capacity(word.len());
                let mut codes = Vec::new();
                for c in word.chars() {
                    match confusable(c) {
                        Some(l) => {
                            skeleton.push(l);
                            if codes.len() < 6 {
                                codes.push(format!("U+{:04X}", u32::from(c)));
                            }
                        }
                        None if is_invisible(c) => {}
                        None => skeleton.push(c),
                    }
                }
                n += 1;
                out.push(Finding {
                    rule: HOMOGLYPH,
                    severity,
                    span: (w.start, w.end),
                    path: path.to_owned(),
                    evidence: format!(
                        "\"{}\" reads as \"{}\" ({})",
                        shorten(word, 32),
                        shorten(&skeleton, 32),
                        codes.join(" ")
                    ),
                });
            }
        }
    }

    fn check(text: &str) {
        let mut fast = Vec::new();
        invisible_runs(text, "/p", None, &mut fast);
        homoglyphs_into(text, "/p", &mut fast);
        assert_eq!(fast, reference::scan(text), "{text:?}");
        let mut scanned = Vec::new();
        scan_into(text, "/p", &mut scanned);
        assert_eq!(scanned, fast, "{text:?}");
    }

    const PIECES: &[&str] = &[
        "a",
        "word",
        " ",
        "\n",
        "\t",
        "\r",
        ".",
        "\x01",
        "\x1b",
        "\x7f",
        "\u{85}",
        "\u{9b}",
        "\u{ad}",
        "\u{34f}",
        "\u{61c}",
        "\u{115f}",
        "\u{180e}",
        "\u{200b}",
        "\u{200c}",
        "\u{200d}",
        "\u{200e}",
        "\u{200f}",
        "\u{2028}",
        "\u{202a}",
        "\u{202e}",
        "\u{2060}",
        "\u{2062}",
        "\u{2066}",
        "\u{2069}",
        "\u{206a}",
        "\u{3164}",
        "\u{fe0f}",
        "\u{fe00}",
        "\u{feff}",
        "\u{fff9}",
        "\u{1d173}",
        "\u{e0001}",
        "\u{e0041}",
        "\u{e0068}",
        "\u{e007f}",
        "\u{e0100}",
        "\u{e01ef}",
        "\u{1f3f4}",
        "\u{1f468}",
        "\u{1f1e9}",
        "а",
        "е",
        "о",
        "р",
        "с",
        "раypal",
        "ѕ",
        "Ι",
        "ο",
        "ν",
        "λ",
        "ж",
        "Привет",
        "ελληνικά",
        "ἀ",
        "\u{1fff}",
        "\u{0301}",
        "é",
        "ß",
        "\u{2019}",
        "\u{2014}",
        "\u{00a0}",
        "سلام",
        "שלום",
        "中文",
        "ﬁ",
    ];

    #[test]
    fn random_texts_match_the_reference() {
        let mut rng = StdRng::seed_from_u64(0x0C0D_E901);
        for _ in 0..30_000 {
            let mut t = String::new();
            for _ in 0..rng.random_range(1..40) {
                t.push_str(PIECES[rng.random_range(0..PIECES.len())]);
            }
            if rng.random_bool(0.1) {
                t = t.repeat(rng.random_range(2..20));
            }
            check(&t);
        }
    }

    #[test]
    fn corpus_matches_the_reference() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/corpus");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let mut stack = vec![&v];
                while let Some(v) = stack.pop() {
                    match v {
                        serde_json::Value::String(s) => {
                            check(s);
                            n += 1;
                        }
                        serde_json::Value::Array(a) => stack.extend(a),
                        serde_json::Value::Object(m) => stack.extend(m.values()),
                        _ => {}
                    }
                }
            }
        }
        assert!(n > 10_000, "{n}");
    }
}
