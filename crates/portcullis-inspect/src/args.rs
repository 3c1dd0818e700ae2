//! Suspicious tool-call arguments: a cheap, bounded scan of every string
//! (and object key) in a call's `arguments` for the shapes that attacks on
//! tools take. The findings feed the policy context and the risk engine;
//! they never block by themselves.
//!
//! Rule ids are stable (policies and dashboards refer to them):
//!
//! | rule | what | severity |
//! |------|------|----------|
//! | `path-traversal` | `../` or `..\` segments (also `....//`), percent-encoded and double-encoded forms (`%2e%2e%2f`, `..%2f`, `%252e`), overlong UTF-8 dots (`%c0%ae`), NUL bytes (`\0`, `%00`); sensitive paths (`/etc/passwd`, `/etc/shadow`, `~/.ssh`, `id_rsa`, `/proc/self/`, `.aws/credentials`, `.env`, ...) | High for traversal aimed at a sensitive path, Medium otherwise |
//! | `internal-address` | URL hosts and bare hosts that are loopback (127/8, `localhost`, `::1`), `0.0.0.0`, private (10/8, 172.16/12, 192.168/16, fc00::/7), link-local (fe80::/10), `*.internal` / `*.local` names | High for link-local IPv4 169.254/16 and cloud metadata (169.254.169.254, `metadata.google.internal`, fd00:ec2::254, 100.100.100.200) and for any non-canonical encoding of an internal IPv4 (`2130706433`, `0x7f000001`, `0177.0.0.1`, `::ffff:127.0.0.1`); Medium otherwise |
//! | `encoded-payload` | a run of >= 64 base64 characters that decodes cleanly, or >= 64 hex digits | Medium if the decoded bytes match another rule or look like a script or shell command, Low otherwise |
//! | `shell-metachar` | command substitution (`$(`, `${IFS}`, a backtick before a command) and chaining into a command (`; rm -rf`, `&& curl http://`, `\| sh`) | Medium |
//!
//! Bounds: at most [`MAX_SCAN_BYTES`] bytes of text are looked at per call
//! (the rest is skipped), values nested deeper than [`MAX_DEPTH`] are
//! skipped, and at most [`MAX_FINDINGS`] findings are returned, one per
//! rule and JSON pointer (the highest severity wins).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use regex::Regex;
use serde_json::Value;

/// Rule id for path traversal and sensitive paths, so callers need not spell it.
pub const PATH_TRAVERSAL: &str = "path-traversal";
/// Rule id for loopback, private, link-local and metadata addresses, so callers need not spell it.
pub const INTERNAL_ADDRESS: &str = "internal-address";
/// Rule id for long base64 or hex runs, so callers need not spell it.
pub const ENCODED_PAYLOAD: &str = "encoded-payload";
/// Rule id for shell command injection shapes, so callers need not spell it.
pub const SHELL_METACHAR: &str = "shell-metachar";
/// Every rule id, so configuration can be validated against them.
pub const RULES: &[&str] = &[
    PATH_TRAVERSAL,
    INTERNAL_ADDRESS,
    ENCODED_PAYLOAD,
    SHELL_METACHAR,
];

/// Text budget per call, so a huge argument cannot make inspection slow.
pub const MAX_SCAN_BYTES: usize = 64 * 1024;
/// Nesting limit, so a deep value cannot exhaust the stack.
pub const MAX_DEPTH: usize = 64;
/// Output limit, so a hostile argument cannot flood the logs.
pub const MAX_FINDINGS: usize = 64;
/// Shortest base64 or hex run reported, so ids and short hashes stay quiet.
pub const MIN_ENCODED_LEN: usize = 64;

/// Layers of percent-decoding tried, so double-encoding is seen through.
const DECODE_ROUNDS: usize = 3;
/// Value nodes visited per call, so a huge array of numbers is bounded too.
const MAX_NODES: usize = 100_000;

/// How much a finding should worry the policy, so rules can share a scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Worth recording, not worth acting on alone.
    Low,
    /// Suspicious; policies may require approval.
    Medium,
    /// Almost certainly hostile.
    High,
}

impl Severity {
    /// Lower-case name, so the severity serialises the same everywhere.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One suspicious spot in the arguments, so policy and audit can say where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgFinding {
    /// The stable rule id (see the module doc).
    pub rule: &'static str,
    /// JSON pointer (RFC 6901) to the string or key, e.g. `/path` or `/items/2`.
    pub path: String,
    /// How worrying it is.
    pub severity: Severity,
}

/// Scans every string and object key in `args`, so suspicious arguments are
/// flagged before the call reaches a server. Never panics; work is bounded.
pub fn scan(args: &Value) -> Vec<ArgFinding> {
    let mut s = Scanner {
        budget: MAX_SCAN_BYTES,
        nodes: 0,
        segs: Vec::new(),
        findings: Vec::new(),
    };
    s.walk(args, 0);
    s.findings
}

/// Scans one piece of text, so callers with plain strings (a URI, a
/// command line) get the same rules; findings carry an empty path.
pub fn scan_text(text: &str) -> Vec<(&'static str, Severity)> {
    let mut out = Vec::new();
    let end = floor_boundary(text, MAX_SCAN_BYTES);
    let text = text.get(..end).unwrap_or_default();
    check_text(text, true, &mut |rule, sev| add(&mut out, rule, sev));
    out
}

fn add(out: &mut Vec<(&'static str, Severity)>, rule: &'static str, sev: Severity) {
    match out.iter_mut().find(|(r, _)| *r == rule) {
        Some((_, s)) => *s = (*s).max(sev),
        None => out.push((rule, sev)),
    }
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

struct Scanner<'a> {
    budget: usize,
    nodes: usize,
    segs: Vec<Seg<'a>>,
    findings: Vec<ArgFinding>,
}

impl<'a> Scanner<'a> {
    fn walk(&mut self, v: &'a Value, depth: usize) {
        self.nodes += 1;
        if depth > MAX_DEPTH || self.nodes > MAX_NODES || self.budget == 0 {
            return;
        }
        match v {
            Value::String(s) => self.text(s),
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    self.segs.push(Seg::Index(i));
                    self.walk(x, depth + 1);
                    self.segs.pop();
                    if self.budget == 0 || self.nodes > MAX_NODES {
                        break;
                    }
                }
            }
            Value::Object(o) => {
                for (k, x) in o {
                    self.segs.push(Seg::Key(k));
                    self.text(k);
                    self.walk(x, depth + 1);
                    self.segs.pop();
                    if self.budget == 0 || self.nodes > MAX_NODES {
                        break;
                    }
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    fn text(&mut self, s: &str) {
        if s.is_empty() || self.budget == 0 {
            return;
        }
        let end = floor_boundary(s, self.budget);
        self.budget = self.budget.saturating_sub(end.max(1));
        let Some(s) = s.get(..end) else { return };
        let mut hits: Vec<(&'static str, Severity)> = Vec::new();
        check_text(s, true, &mut |rule, sev| add(&mut hits, rule, sev));
        if hits.is_empty() {
            return;
        }
        let path = self.pointer();
        for (rule, severity) in hits {
            if let Some(f) = self
                .findings
                .iter_mut()
                .find(|f| f.rule == rule && f.path == path)
            {
                f.severity = f.severity.max(severity);
            } else if self.findings.len() < MAX_FINDINGS {
                self.findings.push(ArgFinding {
                    rule,
                    path: path.clone(),
                    severity,
                });
            }
        }
    }

    fn pointer(&self) -> String {
        let mut p = String::new();
        for s in &self.segs {
            p.push('/');
            match s {
                Seg::Index(i) => p.push_str(&i.to_string()),
                Seg::Key(k) => {
                    for c in k.chars() {
                        match c {
                            '~' => p.push_str("~0"),
                            '/' => p.push_str("~1"),
                            c => p.push(c),
                        }
                    }
                }
            }
        }
        p
    }
}

/// The largest char boundary of `s` at or below `n`.
fn floor_boundary(s: &str, n: usize) -> usize {
    let mut n = n.min(s.len());
    while n > 0 && !s.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// Runs every rule on `s`; `outer` is false for decoded payloads (which are
/// not searched for further payloads, so decoding cannot recurse).
fn check_text(s: &str, outer: bool, hit: &mut dyn FnMut(&'static str, Severity)) {
    let mut h = LayerHits::default();
    h.add(s);
    // Up to DECODE_ROUNDS percent-decoded layers (only if there is a `%`).
    if s.contains('%') {
        let mut cur = std::borrow::Cow::Borrowed(s);
        for _ in 0..DECODE_ROUNDS {
            match pct_decode(&cur) {
                Some(d) if d != *cur => {
                    h.add(&d);
                    cur = std::borrow::Cow::Owned(d);
                }
                _ => break,
            }
        }
    }
    if h.traversal || h.sensitive {
        let sev = if h.traversal && h.sensitive {
            Severity::High
        } else {
            Severity::Medium
        };
        hit(PATH_TRAVERSAL, sev);
    }
    if let Some(sev) = h.addr {
        hit(INTERNAL_ADDRESS, sev);
    }
    if h.shell {
        hit(SHELL_METACHAR, Severity::Medium);
    }
    if outer {
        if let Some(sev) = encoded_payload(s) {
            hit(ENCODED_PAYLOAD, sev);
        }
    }
}

/// What the layers of one string (raw and percent-decoded) showed.
#[derive(Default)]
struct LayerHits {
    traversal: bool,
    sensitive: bool,
    addr: Option<Severity>,
    shell: bool,
}

impl LayerHits {
    fn add(&mut self, l: &str) {
        self.traversal |= has_traversal(l);
        self.sensitive |= has_sensitive_path(l);
        self.addr = self.addr.max(internal_address(l));
        self.shell |= has_shell(l);
    }
}

// ---------------------------------------------------------------------------
// path-traversal

fn hexval(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One round of percent-decoding (`%XX`, IIS-style `%uXXXX` for ASCII, and
/// overlong UTF-8 forms of `.`, `/` and `\`); `None` if nothing changed.
fn pct_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return None;
    }
    let mut out: Vec<u8> = Vec::with_capacity(s.len());
    let mut changed = false;
    let mut rest = s.as_bytes();
    while let Some((&c, tail)) = rest.split_first() {
        if c == b'%' {
            if let [h, l, more @ ..] = tail {
                if let (Some(h), Some(l)) = (hexval(*h), hexval(*l)) {
                    out.push((h << 4) | l);
                    rest = more;
                    changed = true;
                    continue;
                }
            }
            if let [b'u' | b'U', a, b, c, d, more @ ..] = tail {
                if let (Some(a), Some(b), Some(c), Some(d)) =
                    (hexval(*a), hexval(*b), hexval(*c), hexval(*d))
                {
                    let v = (u32::from(a) << 12)
                        | (u32::from(b) << 8)
                        | (u32::from(c) << 4)
                        | u32::from(d);
                    if let Some(ch) = char::from_u32(v) {
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        rest = more;
                        changed = true;
                        continue;
                    }
                }
            }
        }
        out.push(c);
        rest = tail;
    }
    if !changed {
        return None;
    }
    // Overlong UTF-8 encodings that old decoders turned into `.`, `/`, `\`.
    let mut fixed: Vec<u8> = Vec::with_capacity(out.len());
    let mut rest = out.as_slice();
    while let Some((&c, tail)) = rest.split_first() {
        match (c, tail) {
            (0xC0, [0xAE, more @ ..]) | (0xE0, [0x80, 0xAE, more @ ..]) => {
                fixed.push(b'.');
                rest = more;
            }
            (0xC0, [0xAF, more @ ..]) | (0xE0, [0x80, 0xAF, more @ ..]) => {
                fixed.push(b'/');
                rest = more;
            }
            (0xC1, [0x9C, more @ ..]) => {
                fixed.push(b'\\');
                rest = more;
            }
            _ => {
                fixed.push(c);
                rest = tail;
            }
        }
    }
    Some(String::from_utf8_lossy(&fixed).into_owned())
}

fn is_sep(b: u8) -> bool {
    b == b'/' || b == b'\\'
}

/// A `..` path segment or a NUL byte. `2024..summary.txt` is not one.
fn has_traversal(s: &str) -> bool {
    if s.contains('\0') {
        return true;
    }
    if s == ".." {
        return true;
    }
    let b = s.as_bytes();
    for (i, w) in b.windows(2).enumerate() {
        if w != b".." {
            continue;
        }
        let before = i.checked_sub(1).and_then(|j| b.get(j)).copied();
        let after = b.get(i + 2).copied();
        let before_ok = match before {
            None => true,
            Some(c) => !(c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c >= 0x80),
        };
        let after_ok = match after {
            Some(c) => is_sep(c),
            None => before.is_some_and(is_sep),
        };
        if before_ok && after_ok {
            return true;
        }
    }
    false
}

/// Files and directories whose mention in a tool argument is itself a
/// signal (matched case-insensitively, `/` also matching `\`).
const SENSITIVE_SUBSTRINGS: &[&str] = &[
    "/etc/passwd",
    "/etc/shadow",
    "/etc/sudoers",
    "/etc/gshadow",
    "~/.ssh",
    "/.ssh/",
    "id_rsa",
    "id_ecdsa",
    "id_ed25519",
    "/proc/self/",
    ".aws/credentials",
    ".git-credentials",
    ".kube/config",
    ".docker/config.json",
    "/var/run/secrets/",
    "windows/system32/config/sam",
];

/// `.env` files that are committed templates, not secrets.
const ENV_TEMPLATES: &[&str] = &["example", "sample", "template", "dist"];

fn sensitive_re() -> Option<&'static Regex> {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    RE.get_or_init(|| {
        let mut alts: Vec<String> = SENSITIVE_SUBSTRINGS
            .iter()
            .map(|n| regex::escape(n).replace('/', r"[/\\]"))
            .collect();
        // Path components `.ssh`, `.env` and `.env.<stage>`; the stage is
        // captured so committed templates can be let through.
        alts.push(
            r#"(?:^|[/\\\s"'=])\.(?:ssh|env(?:\.([a-z0-9_.-]*))?)(?:$|[/\\\s"'])"#.to_owned(),
        );
        Regex::new(&format!("(?i){}", alts.join("|"))).ok()
    })
    .as_ref()
}

/// Whether `s` names a credential or system file.
fn has_sensitive_path(s: &str) -> bool {
    if !s.contains(['/', '\\', '~', '.', '_']) {
        return false;
    }
    let Some(re) = sensitive_re() else {
        return false;
    };
    re.captures_iter(s).any(|c| match c.get(1) {
        Some(stage) => {
            let st = stage.as_str();
            !st.is_empty() && !ENV_TEMPLATES.iter().any(|t| st.eq_ignore_ascii_case(t))
        }
        None => true,
    })
}

// ---------------------------------------------------------------------------
// internal-address

#[derive(Clone, Copy, PartialEq, Eq)]
enum HostCtx {
    /// The authority of a `scheme://` URL: every IPv4 notation counts.
    Url,
    /// The whole string is one token.
    Whole,
    /// One word among others in free text.
    Word,
}

/// The worst internal address mentioned in `s`.
fn internal_address(s: &str) -> Option<Severity> {
    let mut worst = None;
    for (i, _) in s.match_indices(':') {
        if let Some(rest) = s.get(i..).and_then(|t| t.strip_prefix("://")) {
            worst = worst.max(authority_host(rest, HostCtx::Url));
        }
    }
    let trimmed = s.trim();
    if let Some(rest) = trimmed.strip_prefix("//") {
        worst = worst.max(authority_host(rest, HostCtx::Url));
    }
    let split = |c: char| {
        c.is_whitespace()
            || matches!(
                c,
                ',' | ';' | '"' | '\'' | '(' | ')' | '<' | '>' | '{' | '}' | '|' | '=' | '`'
            )
    };
    let ctx = if trimmed.contains(split) {
        HostCtx::Word
    } else {
        HostCtx::Whole
    };
    for w in trimmed.split(split) {
        // URLs among the words were handled above; as words they yield
        // only their scheme (`https:`), which is no host.
        if w.is_empty() {
            continue;
        }
        let w = w.trim_end_matches(['.', ':', '!', '?']);
        worst = worst.max(authority_host(w, ctx));
    }
    worst
}

/// Classifies the host at the start of `rest` (an authority possibly
/// followed by a path).
fn authority_host(rest: &str, ctx: HostCtx) -> Option<Severity> {
    // Most words of prose are none of: dotted, IPv6, numeric, `localhost`.
    if ctx != HostCtx::Url
        && !rest.contains(['.', ':'])
        && !rest.bytes().next().is_some_and(|b| b.is_ascii_digit())
        && !rest.eq_ignore_ascii_case("localhost")
    {
        return None;
    }
    let end = rest
        .find(|c: char| {
            matches!(
                c,
                '/' | '?' | '#' | '\\' | '"' | '\'' | '<' | '>' | '`' | ')' | ',' | ';'
            ) || c.is_whitespace()
        })
        .unwrap_or(rest.len());
    let auth = rest.get(..end)?;
    let auth = match auth.rsplit_once('@') {
        Some((_, h)) => h,
        None => auth,
    };
    let (host, has_port) = if let Some(v6) = auth.strip_prefix('[') {
        let (h, tail) = v6.split_once(']')?;
        (h, tail.starts_with(':'))
    } else if auth.matches(':').count() >= 2 {
        // A bare IPv6 address (no port possible without brackets).
        (auth, false)
    } else {
        match auth.split_once(':') {
            Some((h, port)) => {
                if ctx != HostCtx::Url && !port.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                (h, true)
            }
            None => (auth, false),
        }
    };
    let decoded;
    let host = if ctx == HostCtx::Url && host.contains('%') && !host.contains(':') {
        decoded = pct_decode(host).unwrap_or_else(|| host.to_owned());
        decoded.as_str()
    } else {
        host
    };
    classify_host(host, ctx, has_port)
}

fn classify_host(host: &str, ctx: HostCtx, has_port: bool) -> Option<Severity> {
    let host = host.trim_end_matches('.');
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    // Most words of prose are none of: dotted, IPv6, numeric, `localhost`.
    if !host.contains(['.', ':'])
        && !host.bytes().next().is_some_and(|b| b.is_ascii_digit())
        && !host.eq_ignore_ascii_case("localhost")
    {
        return None;
    }
    let h = host.to_ascii_lowercase();
    if h.contains(':') {
        let no_zone = h.split('%').next().unwrap_or_default();
        return classify_v6(no_zone.parse::<Ipv6Addr>().ok()?);
    }
    if let Some((ip, canonical)) = parse_ipv4(&h, ctx) {
        return classify_v4(ip).map(|s| if canonical { s } else { Severity::High });
    }
    if !h
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return None;
    }
    if h == "metadata.google.internal" {
        return Some(Severity::High);
    }
    let named = ctx != HostCtx::Word || has_port;
    if named && (h == "localhost" || h.ends_with(".localhost")) {
        return Some(Severity::Medium);
    }
    let suffix = h.ends_with(".internal") || h.ends_with(".local");
    if suffix && (ctx == HostCtx::Url || has_port || (ctx == HostCtx::Whole && !h.contains('_'))) {
        return Some(Severity::Medium);
    }
    None
}

/// Parses one IPv4 part the way `inet_aton` does: `0x` hex, leading-zero
/// octal, else decimal. Returns the value and whether it was plain decimal.
fn parse_v4_part(p: &str) -> Option<(u64, bool)> {
    if p.is_empty() || p.len() > 12 {
        return None;
    }
    if let Some(hex) = p.strip_prefix("0x") {
        if hex.is_empty() {
            return Some((0, false));
        }
        return u64::from_str_radix(hex, 16).ok().map(|v| (v, false));
    }
    if p.len() > 1 && p.starts_with('0') {
        return u64::from_str_radix(p.get(1..)?, 8).ok().map(|v| (v, false));
    }
    if !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u64>().ok().map(|v| (v, true))
}

/// Parses dotted IPv4 in every notation `inet_aton` accepts (1 to 4 parts,
/// the last filling the remaining bytes). Outside URLs only 4-part forms
/// and single `0x` values count, so version numbers and plain integers in
/// text are not read as addresses. The flag says "canonical dotted quad".
fn parse_ipv4(h: &str, ctx: HostCtx) -> Option<(Ipv4Addr, bool)> {
    if !h
        .bytes()
        .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b'x')
    {
        return None;
    }
    let parts: Vec<&str> = h.split('.').collect();
    let n = parts.len();
    if !(1..=4).contains(&n) {
        return None;
    }
    if ctx != HostCtx::Url && !(n == 4 || (n == 1 && h.starts_with("0x"))) {
        return None;
    }
    let mut vals = Vec::with_capacity(n);
    let mut canonical = n == 4;
    for p in &parts {
        let (v, dec) = parse_v4_part(p)?;
        canonical &= dec;
        vals.push(v);
    }
    let (last, init) = vals.split_last()?;
    let mut addr: u64 = 0;
    for (i, v) in init.iter().enumerate() {
        if *v > 255 {
            return None;
        }
        addr |= v << (24 - 8 * i);
    }
    let rest_bits = 8 * (4 - init.len());
    if rest_bits < 64 && *last >= (1u64 << rest_bits) {
        return None;
    }
    addr |= last;
    let addr = u32::try_from(addr).ok()?;
    Some((Ipv4Addr::from(addr), canonical))
}

fn classify_v4(ip: Ipv4Addr) -> Option<Severity> {
    let o = ip.octets();
    if ip.is_link_local() || o == [100, 100, 100, 200] {
        Some(Severity::High)
    } else if ip.is_loopback() || ip.is_unspecified() || ip.is_private() {
        Some(Severity::Medium)
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<Severity> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        // An internal IPv4 dressed up as IPv6 is an evasion attempt.
        return classify_v4(v4).map(|_| Severity::High);
    }
    let [a, ..] = ip.segments();
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        Some(Severity::High)
    } else if ip.is_loopback()
        || ip.is_unspecified()
        || a & 0xfe00 == 0xfc00
        || a & 0xffc0 == 0xfe80
    {
        Some(Severity::Medium)
    } else {
        None
    }
}

// ---------------------------------------------------------------------------
// shell-metachar

const CMD: &str = r"(?:rm|curl|wget|nc|ncat|netcat|bash|sh|zsh|dash|ksh|python[0-9.]*|perl|ruby|php|node|chmod|chown|mkfifo|cat|id|whoami|uname|dd|base64|eval|exec|nohup|powershell|pwsh|cmd(?:\.exe)?|env|printenv|sudo|su|kill)";

fn shell_re() -> Option<&'static Regex> {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    RE.get_or_init(|| {
        let src = format!(
            r"\$\(|\$\{{IFS\}}|`\s*{CMD}\b|(?:&&|\|\||[;&|\n])\s*{CMD}(?:\s+(?:-|/|~|\.|\$|https?:)|\s*$|\s*[;&|>`])|\|\s*(?:sh|bash|zsh|dash|ksh)\b"
        );
        Regex::new(&src).ok()
    })
    .as_ref()
}

fn has_shell(s: &str) -> bool {
    if !s.contains(['$', '`', ';', '&', '|', '\n']) {
        return false;
    }
    shell_re().is_some_and(|re| re.is_match(s))
}

// ---------------------------------------------------------------------------
// encoded-payload

const SCRIPT_MARKERS: &[&str] = &[
    "#!/",
    "/bin/sh",
    "/bin/bash",
    "/dev/tcp/",
    "<script",
    "javascript:",
    "eval(",
    "exec(",
    "system(",
    "powershell",
    "import os",
    "subprocess",
    "rm -rf",
    "curl ",
    "wget ",
    "nc -e",
    "chmod +x",
    "base64 -d",
    "python -c",
    "ignore previous instructions",
    "ignore all previous",
];

fn b64_engine(url_safe: bool) -> GeneralPurpose {
    let cfg = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    if url_safe {
        GeneralPurpose::new(&alphabet::URL_SAFE, cfg)
    } else {
        GeneralPurpose::new(&alphabet::STANDARD, cfg)
    }
}

fn is_b64_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_')
}

/// The worst encoded payload in `s`.
fn encoded_payload(s: &str) -> Option<Severity> {
    if s.len() < MIN_ENCODED_LEN {
        return None;
    }
    let b = s.as_bytes();
    let mut worst = None;
    let mut i = 0;
    while i < b.len() {
        if !b.get(i).copied().is_some_and(is_b64_byte) {
            i += 1;
            continue;
        }
        let start = i;
        while b.get(i).copied().is_some_and(is_b64_byte) {
            i += 1;
        }
        let run = s.get(start..i).unwrap_or_default();
        if run.len() >= MIN_ENCODED_LEN {
            worst = worst.max(classify_run(run));
            if worst == Some(Severity::Medium) {
                return worst;
            }
        }
    }
    worst
}

fn classify_run(run: &str) -> Option<Severity> {
    // Padding, rulers and repeated characters are not payloads.
    let mut seen = [false; 128];
    for b in run.bytes() {
        if let Some(x) = seen.get_mut(usize::from(b)) {
            *x = true;
        }
    }
    if seen.iter().filter(|&&x| x).count() < 8 {
        return None;
    }
    let decoded = if run.bytes().all(|b| b.is_ascii_hexdigit()) {
        let bytes: Vec<u8> = run
            .as_bytes()
            .chunks_exact(2)
            .filter_map(|p| match p {
                [h, l] => Some((hexval(*h)? << 4) | hexval(*l)?),
                _ => None,
            })
            .collect();
        bytes
    } else {
        let std_chars = run.contains(['+', '/']);
        let url_chars = run.contains(['-', '_']);
        if std_chars && url_chars {
            return None;
        }
        // Paths and prose-like identifiers are base64 alphabet too; real
        // base64 has few slashes and mixes case or digits.
        let slashes = run.bytes().filter(|&b| b == b'/').count();
        if slashes > run.len() / 20 + 2 {
            return None;
        }
        let has_upper = run.bytes().any(|b| b.is_ascii_uppercase());
        let has_lower = run.bytes().any(|b| b.is_ascii_lowercase());
        let has_digit = run.bytes().any(|b| b.is_ascii_digit());
        if u8::from(has_upper) + u8::from(has_lower) + u8::from(has_digit) < 2 {
            return None;
        }
        b64_engine(url_chars).decode(run).ok()?
    };
    Some(if decoded_is_suspicious(&decoded) {
        Severity::Medium
    } else {
        Severity::Low
    })
}

fn decoded_is_suspicious(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let lower = text.to_ascii_lowercase();
    if SCRIPT_MARKERS.iter().any(|m| lower.contains(m)) {
        return true;
    }
    let mut any = false;
    check_text(&text, false, &mut |_, _| any = true);
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regexes_compile() {
        assert!(shell_re().is_some());
        assert!(sensitive_re().is_some());
    }

    #[test]
    fn ipv4_notations() {
        let p = |s| parse_ipv4(s, HostCtx::Url).map(|(ip, c)| (ip.to_string(), c));
        assert_eq!(p("2130706433"), Some(("127.0.0.1".into(), false)));
        assert_eq!(p("0x7f000001"), Some(("127.0.0.1".into(), false)));
        assert_eq!(p("0177.0.0.1"), Some(("127.0.0.1".into(), false)));
        assert_eq!(p("127.1"), Some(("127.0.0.1".into(), false)));
        assert_eq!(p("10.0.0.1"), Some(("10.0.0.1".into(), true)));
        assert_eq!(p("256.0.0.1"), None);
        assert_eq!(p("1.2.3.4.5"), None);
        assert_eq!(p("08.0.0.1"), None);
        assert_eq!(p("example"), None);
        assert_eq!(parse_ipv4("10.1", HostCtx::Word), None);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(pct_decode("%2e%2e%2f").as_deref(), Some("../"));
        assert_eq!(pct_decode("%252e").as_deref(), Some("%2e"));
        assert_eq!(pct_decode("%c0%ae%c0%ae/").as_deref(), Some("../"));
        assert_eq!(pct_decode("%u002e").as_deref(), Some("."));
        assert_eq!(pct_decode("100%"), None);
        assert_eq!(pct_decode("plain"), None);
    }
}
