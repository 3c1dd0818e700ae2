//! Shadowing across servers: when two upstreams offer tools that collide or
//! refer to each other, a hostile server can steer the model away from the
//! trusted tool ("use this instead of `send_email`") or impersonate it under
//! the same name. Namespacing (`server__tool`) keeps calls apart, but the
//! model still reads every description side by side, so collisions must be
//! flagged and resolved by configuration, never silently.
//!
//! | rule | what | severity |
//! |------|------|----------|
//! | `shadow.cross-reference` | a tool's definition mentions a tool of another server (its original or client-facing name) | High next to redirecting or commanding words (`poison.cross-tool` at High or above), Medium otherwise |
//! | `shadow.name-collision` | two servers offer a tool of the same name, compared after case, `-`/`_`/`.` and confusable letters are folded | Medium |
//! | `shadow.description-clone` | two servers' tools describe themselves in nearly the same words (Jaccard similarity of word pairs ≥ [`CLONE_SIMILARITY`] over at least [`CLONE_MIN_WORDS`] words) | Medium |
//!
//! Each finding names the shadowing tool (`server`, `tool`) and the one it
//! shadows (`other_server`, `other_tool`). For a cross-reference that is the
//! tool whose text names the other; for a collision or a clone it is the
//! tool of the server listed later, so a caller resolving by "first server
//! wins" can hide `server`/`tool` directly.
//!
//! Cost: one Aho-Corasick pass over each definition finds the few that
//! name another server's tool (only those get the poisoning scan that
//! judges the mention); names are grouped by their folded form; and
//! descriptions are only compared when they share an uncommon word pair.

use std::collections::{HashMap, HashSet};

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use serde::Serialize;
use serde_json::Value;

use crate::finding::{shorten, Severity, EVIDENCE_CHARS};
use crate::poison;
use crate::unicode;

/// Rule id for a definition that names another server's tool.
pub const CROSS_REFERENCE: &str = "shadow.cross-reference";
/// Rule id for two servers offering tools of the same (folded) name.
pub const NAME_COLLISION: &str = "shadow.name-collision";
/// Rule id for two servers' tools with nearly the same description.
pub const DESCRIPTION_CLONE: &str = "shadow.description-clone";
/// Every rule id of this module, so configuration can be validated.
pub const RULES: &[&str] = &[CROSS_REFERENCE, NAME_COLLISION, DESCRIPTION_CLONE];

/// Least Jaccard similarity of word pairs for two descriptions to be clones.
pub const CLONE_SIMILARITY: f64 = 0.8;
/// Fewest words a description needs before it can be a clone (short
/// descriptions such as "Echo the message back." legitimately repeat).
pub const CLONE_MIN_WORDS: usize = 8;
/// A word pair shared by more tools than this is too common to index.
const COMMON_PAIR: usize = 16;
/// Most findings returned, so a hostile list cannot flood the audit log.
pub const MAX_FINDINGS: usize = 256;

/// One tool as a server offers it.
#[derive(Clone, Copy, Debug)]
pub struct Offered<'a> {
    /// The upstream's name.
    pub server: &'a str,
    /// The client-facing name (`server__tool` or a rename), so mentions of
    /// it count as references too.
    pub outward: &'a str,
    /// The tool definition as listed (`name`, `description`, schemas …).
    pub tool: &'a Value,
}

impl Offered<'_> {
    fn name(&self) -> &str {
        self.tool.get("name").and_then(Value::as_str).unwrap_or("")
    }

    fn description(&self) -> &str {
        self.tool
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// One shadowing finding: `server`/`tool` shadows `other_server`/`other_tool`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Shadowing {
    /// Stable rule id.
    pub rule: &'static str,
    /// How worrying it is.
    pub severity: Severity,
    /// The shadowing tool's server.
    pub server: String,
    /// The shadowing tool's name at its server.
    pub tool: String,
    /// The shadowed tool's server.
    pub other_server: String,
    /// The shadowed tool's name at its server.
    pub other_tool: String,
    /// JSON pointer of the text that refers to the other tool (cross
    /// references), else empty.
    pub path: String,
    /// A short excerpt, invisible characters escaped.
    pub evidence: String,
}

/// Checks every pair of tools from different servers; `tools` in server
/// order (the order decides which side of a collision is "later").
pub fn check(tools: &[Offered<'_>]) -> Vec<Shadowing> {
    let mut out = Vec::new();
    cross_references(tools, &mut out);
    collisions(tools, &mut out);
    clones(tools, &mut out);
    out.truncate(MAX_FINDINGS);
    out
}

/// Servers in order of first appearance, so "later" is well defined.
fn server_rank<'a>(tools: &[Offered<'a>]) -> HashMap<&'a str, usize> {
    let mut rank = HashMap::new();
    for t in tools {
        let n = rank.len();
        rank.entry(t.server).or_insert(n);
    }
    rank
}

fn cross_references(tools: &[Offered<'_>], out: &mut Vec<Shadowing>) {
    // Every identifier-like name (original and client-facing) and the
    // servers offering it. A plain word ("query", "search") names a tool
    // only by coincidence, so it is left out.
    let mut owners: HashMap<&str, Vec<(&str, &str)>> = HashMap::new();
    for t in tools {
        for n in [t.name(), t.outward] {
            if n.len() >= 3 && identifier_like(n) {
                let v = owners.entry(n).or_default();
                if !v.iter().any(|(s, _)| *s == t.server) {
                    v.push((t.server, t.name()));
                }
            }
        }
    }
    let names: Vec<&str> = owners.keys().copied().collect();
    // A contiguous NFA: built in well under a millisecond for a thousand
    // names (a DFA takes several), and lists are short texts.
    let Ok(ac) = AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .kind(Some(AhoCorasickKind::ContiguousNFA))
        .build(&names)
    else {
        return;
    };
    for t in tools {
        // One pass over the definition finds the names of other servers'
        // tools it mentions — not names this server offers too (then the
        // mention is of its own tool).
        let mut named: Vec<&str> = Vec::new();
        each_string(t.tool, 0, &mut |text| {
            for m in ac.find_iter(text) {
                let bounded = !text
                    .as_bytes()
                    .get(m.start().wrapping_sub(1))
                    .is_some_and(|b| is_ident(*b))
                    && !text.as_bytes().get(m.end()).is_some_and(|b| is_ident(*b));
                let Some(n) = names.get(m.pattern().as_usize()) else {
                    continue;
                };
                let foreign = owners.get(n).is_some_and(|o| {
                    o.iter().any(|(s, _)| *s != t.server) && !o.iter().any(|(s, _)| *s == t.server)
                });
                if bounded && foreign && !named.contains(n) {
                    named.push(n);
                }
            }
        });
        if named.is_empty() {
            continue;
        }
        // The poisoning scan, told of exactly those names, judges how each
        // mention is meant (a bare mention, or an order to prefer this).
        let ctx = poison::Context::new(named.iter().map(|n| (*n).to_owned()).collect());
        let mut seen = HashSet::new();
        for f in poison::scan_tool(t.tool, &ctx) {
            if f.rule != poison::CROSS_TOOL {
                continue;
            }
            let Some(other) = mentioned(&f.evidence, &named, &owners, t.server) else {
                continue;
            };
            if !seen.insert(other) {
                continue;
            }
            out.push(Shadowing {
                rule: CROSS_REFERENCE,
                severity: if f.severity >= Severity::High {
                    Severity::High
                } else {
                    Severity::Medium
                },
                server: t.server.to_owned(),
                tool: t.name().to_owned(),
                other_server: other.0.to_owned(),
                other_tool: other.1.to_owned(),
                path: f.path.clone(),
                evidence: f.evidence.clone(),
            });
        }
    }
}

/// Calls `f` on every string and object key of a definition (bounded depth).
fn each_string(v: &Value, depth: usize, f: &mut impl FnMut(&str)) {
    if depth > poison::MAX_DEPTH {
        return;
    }
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().for_each(|x| each_string(x, depth + 1, f)),
        Value::Object(o) => {
            for (k, x) in o {
                f(k);
                each_string(x, depth + 1, f);
            }
        }
        _ => {}
    }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// A name that reads as an identifier rather than a word: it has a
/// separator, a digit or inner upper case (`send_email`, `getUser`).
fn identifier_like(name: &str) -> bool {
    name.bytes()
        .any(|b| matches!(b, b'_' | b'-' | b'.' | b'/') || b.is_ascii_digit())
        || name.chars().skip(1).any(char::is_uppercase)
}

/// The longest of `named` inside `evidence`, and the other server's tool
/// it names.
fn mentioned<'a>(
    evidence: &str,
    named: &[&str],
    owners: &HashMap<&'a str, Vec<(&'a str, &'a str)>>,
    server: &str,
) -> Option<(&'a str, &'a str)> {
    named
        .iter()
        .filter(|n| evidence.contains(**n))
        .max_by(|a, b| a.len().cmp(&b.len()).then_with(|| b.cmp(a)))
        .and_then(|n| owners.get(n))
        .and_then(|o| o.iter().find(|(s, _)| *s != server).copied())
}

/// A name folded so look-alikes compare equal: lower case, separators
/// dropped, confusable letters mapped to their ASCII twins.
fn fold(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '-' | '_' | '.' | ' ') && !unicode::is_invisible(*c))
        .map(|c| unicode::confusable(c).unwrap_or(c))
        .flat_map(char::to_lowercase)
        .collect()
}

fn collisions(tools: &[Offered<'_>], out: &mut Vec<Shadowing>) {
    let rank = server_rank(tools);
    let mut by_name: HashMap<String, Vec<&Offered<'_>>> = HashMap::new();
    for t in tools {
        let f = fold(t.name());
        if !f.is_empty() {
            by_name.entry(f).or_default().push(t);
        }
    }
    let mut groups: Vec<_> = by_name.into_values().filter(|g| g.len() > 1).collect();
    groups.sort_by(|a, b| {
        a.first()
            .map(|t| t.name())
            .cmp(&b.first().map(|t| t.name()))
    });
    for mut g in groups {
        g.sort_by_key(|t| rank.get(t.server).copied().unwrap_or(usize::MAX));
        let Some(first) = g.first().copied() else {
            continue;
        };
        for t in g.iter().skip(1).filter(|t| t.server != first.server) {
            let same = t.name() == first.name();
            out.push(Shadowing {
                rule: NAME_COLLISION,
                severity: Severity::Medium,
                server: t.server.to_owned(),
                tool: t.name().to_owned(),
                other_server: first.server.to_owned(),
                other_tool: first.name().to_owned(),
                path: "/name".into(),
                evidence: if same {
                    format!("both servers offer {:?}", t.name())
                } else {
                    crate::finding::escape_invisible(&format!(
                        "{:?} looks like {:?}",
                        t.name(),
                        first.name()
                    ))
                },
            });
        }
    }
}

/// The description's adjacent word pairs (lower-cased, punctuation
/// dropped), hashed, sorted and unique — so word order counts but a
/// reordered sentence still mostly matches, and two sets compare by merge.
fn pairs(text: &str) -> Vec<u64> {
    // FNV-1a of each lower-cased word; a pair is its two hashes mixed.
    let words: Vec<u64> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            w.chars()
                .flat_map(char::to_lowercase)
                .fold(0xcbf2_9ce4_8422_2325_u64, |h, c| {
                    (h ^ u64::from(u32::from(c))).wrapping_mul(0x0100_0000_01b3)
                })
        })
        .collect();
    if words.len() < CLONE_MIN_WORDS {
        return Vec::new();
    }
    let mut v: Vec<u64> = words
        .windows(2)
        .filter_map(|w| match w {
            [a, b] => Some(a.rotate_left(17) ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            _ => None,
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Size of the intersection of two sorted, unique lists.
fn shared(a: &[u64], b: &[u64]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
        match x.cmp(y) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

fn clones(tools: &[Offered<'_>], out: &mut Vec<Shadowing>) {
    let rank = server_rank(tools);
    let sets: Vec<Vec<u64>> = tools.iter().map(|t| pairs(t.description())).collect();
    // Posting lists of each pair; candidates are tools of different servers
    // sharing an uncommon pair, counted per candidate.
    let mut index: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, set) in sets.iter().enumerate() {
        for p in set {
            index.entry(*p).or_default().push(i);
        }
    }
    let common = |p: &u64| index.get(p).is_some_and(|v| v.len() > COMMON_PAIR);
    let commons: Vec<usize> = sets
        .iter()
        .map(|s| s.iter().filter(|p| common(p)).count())
        .collect();
    let mut counts: HashMap<(usize, usize), usize> = HashMap::new();
    for ids in index.values().filter(|v| v.len() <= COMMON_PAIR) {
        for (k, &a) in ids.iter().enumerate() {
            for &b in ids.iter().skip(k + 1) {
                let same = tools.get(a).map(|t| t.server) == tools.get(b).map(|t| t.server);
                if !same {
                    *counts.entry((a.min(b), a.max(b))).or_default() += 1;
                }
            }
        }
    }
    let mut candidates: Vec<((usize, usize), usize)> = counts.into_iter().collect();
    candidates.sort_unstable();
    for ((a, b), uncommon) in candidates {
        let (Some(ta), Some(tb), Some(sa), Some(sb)) =
            (tools.get(a), tools.get(b), sets.get(a), sets.get(b))
        else {
            continue;
        };
        // Clones share at least CLONE_SIMILARITY of the larger set; the
        // common pairs can add at most the smaller count of them.
        let bound = uncommon
            + commons
                .get(a)
                .copied()
                .unwrap_or(0)
                .min(commons.get(b).copied().unwrap_or(0));
        let larger = sa.len().max(sb.len());
        if (bound as f64) < CLONE_SIMILARITY * larger as f64 {
            continue;
        }
        let inter = shared(sa, sb);
        let union = sa.len() + sb.len() - inter;
        let sim = if union == 0 {
            0.0
        } else {
            inter as f64 / union as f64
        };
        if sim < CLONE_SIMILARITY {
            continue;
        }
        let later_b = rank.get(tb.server) >= rank.get(ta.server);
        let (t, o) = if later_b { (tb, ta) } else { (ta, tb) };
        out.push(Shadowing {
            rule: DESCRIPTION_CLONE,
            severity: Severity::Medium,
            server: t.server.to_owned(),
            tool: t.name().to_owned(),
            other_server: o.server.to_owned(),
            other_tool: o.name().to_owned(),
            path: "/description".into(),
            evidence: format!(
                "{:.0}% alike: {}",
                sim * 100.0,
                shorten(t.description(), EVIDENCE_CHARS)
            ),
        });
    }
}
