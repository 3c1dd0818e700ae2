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
//! Cost: names and descriptions are indexed once per call; pairs are only
//! compared when they share a name or a rare word pair, so a list of a few
//! hundred tools costs well under a millisecond.

use std::collections::{BTreeSet, HashMap, HashSet};

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
    // Names of each server's tools, and who owns each name.
    let mut owners: HashMap<&str, Vec<(&str, &str)>> = HashMap::new();
    for t in tools {
        for n in [t.name(), t.outward] {
            if !n.is_empty() {
                let v = owners.entry(n).or_default();
                if !v.iter().any(|(s, _)| *s == t.server) {
                    v.push((t.server, t.name()));
                }
            }
        }
    }
    let servers: BTreeSet<&str> = tools.iter().map(|t| t.server).collect();
    for server in servers {
        // Everything the other servers offer, by name.
        let known: Vec<String> = owners
            .iter()
            .filter(|(_, o)| o.iter().any(|(s, _)| *s != server))
            .map(|(n, _)| (*n).to_owned())
            .collect();
        if known.is_empty() {
            continue;
        }
        let ctx = poison::Context::new(known);
        for t in tools.iter().filter(|t| t.server == server) {
            let mut seen = HashSet::new();
            for f in poison::scan_tool(t.tool, &ctx) {
                if f.rule != poison::CROSS_TOOL {
                    continue;
                }
                // Which of the other servers' tools does the text name?
                let Some(named) = mentioned(&f.evidence, &owners, server) else {
                    continue;
                };
                if !seen.insert((named.0, named.1)) {
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
                    other_server: named.0.to_owned(),
                    other_tool: named.1.to_owned(),
                    path: f.path.clone(),
                    evidence: f.evidence.clone(),
                });
            }
        }
    }
}

/// The longest other-server tool name inside `evidence`.
fn mentioned<'a>(
    evidence: &str,
    owners: &HashMap<&'a str, Vec<(&'a str, &'a str)>>,
    server: &str,
) -> Option<(&'a str, &'a str)> {
    owners
        .iter()
        .filter(|(n, _)| evidence.contains(*n))
        .max_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| b.0.cmp(a.0)))
        .and_then(|(_, o)| o.iter().find(|(s, _)| *s != server).copied())
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

/// The description's words, lower-cased, punctuation dropped.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Adjacent word pairs, so word order counts but a reordered sentence
/// still mostly matches.
fn pairs(words: &[String]) -> HashSet<(String, String)> {
    words
        .windows(2)
        .filter_map(|w| match w {
            [a, b] => Some((a.clone(), b.clone())),
            _ => None,
        })
        .collect()
}

fn jaccard<T: Eq + std::hash::Hash>(a: &HashSet<T>, b: &HashSet<T>) -> f64 {
    let inter = a.intersection(b).count();
    let union = a.len() + b.len() - inter;
    if union == 0 {
        0.0
    } else {
        inter as f64 / union as f64
    }
}

fn clones(tools: &[Offered<'_>], out: &mut Vec<Shadowing>) {
    let rank = server_rank(tools);
    let shingles: Vec<Option<HashSet<(String, String)>>> = tools
        .iter()
        .map(|t| {
            let w = words(t.description());
            (w.len() >= CLONE_MIN_WORDS).then(|| pairs(&w))
        })
        .collect();
    // Candidate pairs: tools sharing an uncommon word pair.
    let mut index: HashMap<&(String, String), Vec<usize>> = HashMap::new();
    for (i, s) in shingles.iter().enumerate() {
        for p in s.iter().flatten() {
            index.entry(p).or_default().push(i);
        }
    }
    let mut candidates: BTreeSet<(usize, usize)> = BTreeSet::new();
    for ids in index.values().filter(|v| v.len() <= COMMON_PAIR) {
        for (k, &a) in ids.iter().enumerate() {
            for &b in ids.iter().skip(k + 1) {
                candidates.insert((a.min(b), a.max(b)));
            }
        }
    }
    for (a, b) in candidates {
        let (Some(ta), Some(tb)) = (tools.get(a), tools.get(b)) else {
            continue;
        };
        if ta.server == tb.server {
            continue;
        }
        let (Some(Some(sa)), Some(Some(sb))) = (shingles.get(a), shingles.get(b)) else {
            continue;
        };
        let sim = jaccard(sa, sb);
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
