//! Detection evaluation: runs the detectors over a labelled corpus and
//! measures them, so claims about recall and false positives are numbers
//! from a run, not impressions.
//!
//! A corpus is JSON Lines. Each line is one sample:
//!
//! | field | meaning |
//! |-------|---------|
//! | `label` | `"benign"`, or what should be found: `FAMILY` or `FAMILY:ID` (e.g. `poison`, `poison:hidden-markup`, `secret:aws-access-key-id`, `pii:email`); a list of such labels when a sample holds several |
//! | `family` (or `detector`, `kind`) | `poison`, `secret`, `pii` or `inject`; needed for benign samples, otherwise taken from the label; a benign sample may list several (it is then a negative in each) |
//! | `text` | the text inspected (a description for `poison`, a tool result for the others) |
//! | `tool`, `prompt`, `resource` | for `poison`: a whole definition instead of `text` |
//! | `match` | for `secret`/`pii` positives: the value (or list of values) that must be found; a sample counts as detected only when a finding overlaps each one |
//! | `known_tools` | for `poison`: tool names of other servers, so cross-tool mentions can be seen |
//! | `id`, `source` | a stable name and where the sample comes from (shown in reports) |
//!
//! What counts as detected: for `poison` and `inject`, a finding (the
//! family's rules and the `unicode.*` rules) at or above
//! [`Options::min_severity`]; for `secret` and `pii`, any match of a
//! detector of that DLP class (DLP acts on every match of an enabled
//! class, whatever its severity). A `FAMILY:ID` label whose `ID` is a rule
//! or detector id is also scored exactly: was it that rule or detector.
//!
//! Recall is detected positives / positives; the false-positive rate is
//! negatives with any finding / negatives.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use crate::finding::{excerpt, Severity};
use crate::{dlp, inject, poison, unicode};

/// Why a corpus could not be read or a threshold not parsed, so the CLI can
/// say where and exit non-zero.
#[derive(Debug, Error)]
pub enum EvalError {
    /// A line is not a JSON object.
    #[error("{file}:{line}: not a JSON object: {why}")]
    Json {
        /// The file.
        file: String,
        /// The 1-based line.
        line: usize,
        /// The parser's message.
        why: String,
    },
    /// A line is JSON but not a usable sample.
    #[error("{file}:{line}: {why}")]
    Sample {
        /// The file.
        file: String,
        /// The 1-based line.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// A `--min-recall`/`--max-fpr` value could not be parsed.
    #[error("bad threshold {0:?}: expected RATE or FAMILY=RATE with RATE in 0..=1 (or a percentage like 95%)")]
    Threshold(String),
    /// No sample at all.
    #[error("the corpus is empty")]
    Empty,
}

/// The detector family a sample targets, so each sample is run through the
/// right detector and scored against its own kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Tool, prompt and resource definitions (`poison` and `unicode` rules).
    Poison,
    /// Credentials in results (DLP class `secrets`).
    Secret,
    /// Personal data in results (DLP class `pii`).
    Pii,
    /// Injection markers in results (`inject` and `unicode` rules).
    Inject,
}

impl Family {
    /// Every family in report order, so reports list them the same way.
    pub const ALL: [Family; 4] = [Family::Poison, Family::Secret, Family::Pii, Family::Inject];

    /// The name used in labels and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Poison => "poison",
            Family::Secret => "secret",
            Family::Pii => "pii",
            Family::Inject => "inject",
        }
    }

    /// Parses a family name (`secrets` is accepted for `secret`), so
    /// labels and CLI values read naturally.
    pub fn parse(s: &str) -> Option<Family> {
        match s.trim().to_ascii_lowercase().as_str() {
            "poison" | "poisoning" => Some(Family::Poison),
            "secret" | "secrets" => Some(Family::Secret),
            "pii" => Some(Family::Pii),
            "inject" | "injection" => Some(Family::Inject),
            _ => None,
        }
    }

    /// Whether `id` names a rule or detector of this family (see
    /// [`rule_is`]), so a label naming one can be scored exactly.
    pub fn knows(self, id: &str) -> bool {
        let rules: Vec<&str> = match self {
            Family::Poison => poison::RULES
                .iter()
                .chain(unicode::RULES)
                .copied()
                .collect(),
            Family::Inject => inject::RULES
                .iter()
                .chain(unicode::RULES)
                .copied()
                .collect(),
            Family::Secret | Family::Pii => {
                let class = if self == Family::Secret {
                    dlp::SECRETS
                } else {
                    dlp::PII
                };
                dlp::detectors()
                    .iter()
                    .filter(|d| d.class == class)
                    .map(|d| d.id)
                    .collect()
            }
        };
        rules.into_iter().any(|r| rule_is(r, id))
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether finding rule `rule` is what label id `id` names: the same id,
/// or `id` without the rule's family prefix (`encoded-payload` names
/// `poison.encoded-payload`), so labels need not repeat the family.
pub fn rule_is(rule: &str, id: &str) -> bool {
    rule == id
        || rule
            .strip_suffix(id)
            .is_some_and(|head| head.ends_with('.') && !head.contains(':'))
}

/// What a sample gives the detector, so definitions are scanned as
/// definitions (every schema string) and text as text.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Plain text: a description (`poison`) or a tool result.
    Text(String),
    /// A `tools/list` entry.
    Tool(Value),
    /// A `prompts/list` entry.
    Prompt(Value),
    /// A `resources/list` or `resources/templates/list` entry.
    Resource(Value),
}

/// One labelled sample, so a report can point back at the line it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The sample's `id`, else `FILE:LINE`.
    pub id: String,
    /// The family it is scored in.
    pub family: Family,
    /// The labels as written (`benign` for negatives).
    pub labels: Vec<String>,
    /// What the detector reads.
    pub input: Input,
    /// Values a DLP finding must overlap (`match`); empty: any finding.
    pub matches: Vec<String>,
    /// Tool names of other servers (`known_tools`).
    pub known_tools: Vec<String>,
    /// Where the sample comes from (`source`).
    pub source: String,
    /// The corpus file's name.
    pub file: String,
    /// 1-based line in that file.
    pub line: usize,
}

impl Sample {
    /// Whether the sample should be found (any label other than `benign`).
    pub fn is_positive(&self) -> bool {
        self.labels.iter().any(|l| l != "benign")
    }

    /// The `ID` parts of `FAMILY:ID` labels, so exact scoring knows what to
    /// look for.
    pub fn expected_ids(&self) -> Vec<&str> {
        self.labels
            .iter()
            .filter_map(|l| l.split_once(':').map(|(_, id)| id))
            .filter(|id| !id.is_empty())
            .collect()
    }
}

/// Parses a JSON Lines corpus; `file` names it in errors and reports. Blank
/// lines and lines starting with `//` are skipped.
pub fn parse_jsonl(file: &str, text: &str) -> Result<Vec<Sample>, EvalError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with("//") {
            continue;
        }
        let v: Value = serde_json::from_str(trimmed).map_err(|e| EvalError::Json {
            file: file.to_owned(),
            line,
            why: e.to_string(),
        })?;
        out.extend(samples(file, line, &v)?);
    }
    Ok(out)
}

/// One line's samples: a benign line may name several families
/// (`"family": ["secret", "inject"]`) and then counts as a negative in each.
fn samples(file: &str, line: usize, v: &Value) -> Result<Vec<Sample>, EvalError> {
    let Some(Value::Array(families)) = v.get("family") else {
        return Ok(vec![sample(file, line, v)?]);
    };
    let benign = v.get("label").and_then(Value::as_str) == Some("benign");
    if !benign || families.is_empty() {
        return Err(EvalError::Sample {
            file: file.to_owned(),
            line,
            why: "a list of families is only allowed on a benign sample".into(),
        });
    }
    let mut out = Vec::new();
    for f in families {
        let mut one = v.clone();
        if let Some(o) = one.as_object_mut() {
            o.insert("family".into(), f.clone());
        }
        out.push(sample(file, line, &one)?);
    }
    Ok(out)
}

fn sample(file: &str, line: usize, v: &Value) -> Result<Sample, EvalError> {
    let bad = |why: String| EvalError::Sample {
        file: file.to_owned(),
        line,
        why,
    };
    let obj = v
        .as_object()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    let labels: Vec<String> = match obj.get("label") {
        Some(Value::String(s)) if !s.trim().is_empty() => vec![s.trim().to_owned()],
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| bad("`label` list holds a non-string".into()))
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad("missing `label` (a string or a list of strings)".into())),
    };
    let explicit = ["family", "detector", "kind"]
        .iter()
        .find_map(|k| obj.get(*k).and_then(Value::as_str));
    let from_label = labels
        .iter()
        .find(|l| l.as_str() != "benign")
        .map(|l| l.split_once(':').map_or(l.as_str(), |(f, _)| f));
    let family = match (explicit, from_label) {
        (Some(f), _) => Family::parse(f).ok_or_else(|| bad(format!("unknown family {f:?}")))?,
        (None, Some(f)) => {
            Family::parse(f).ok_or_else(|| bad(format!("label names unknown family {f:?}")))?
        }
        (None, None) => return Err(bad("a benign sample needs `family`".into())),
    };
    for l in &labels {
        if l == "benign" {
            continue;
        }
        let head = l.split_once(':').map_or(l.as_str(), |(f, _)| f);
        if Family::parse(head) != Some(family) {
            return Err(bad(format!(
                "label {l:?} does not belong to family {family}"
            )));
        }
    }
    let positive = labels.iter().any(|l| l != "benign");
    if positive && labels.iter().any(|l| l == "benign") {
        return Err(bad("a sample cannot be both benign and positive".into()));
    }
    let text = obj.get("text").and_then(Value::as_str);
    let def = ["tool", "prompt", "resource"]
        .iter()
        .find_map(|k| obj.get(*k).map(|d| (*k, d)));
    let input = match (text, def) {
        (Some(t), None) => Input::Text(t.to_owned()),
        (None, Some((k, d))) => {
            if family != Family::Poison {
                return Err(bad(format!("`{k}` samples belong to family poison")));
            }
            if !d.is_object() {
                return Err(bad(format!("`{k}` is not an object")));
            }
            match k {
                "tool" => Input::Tool(d.clone()),
                "prompt" => Input::Prompt(d.clone()),
                _ => Input::Resource(d.clone()),
            }
        }
        (Some(_), Some(_)) => {
            return Err(bad(
                "give either `text` or a definition (`tool`, `prompt`, `resource`)".into(),
            ))
        }
        (None, None) => return Err(bad("missing `text` (or `tool`/`prompt`/`resource`)".into())),
    };
    let strings = |key: &str| -> Result<Vec<String>, EvalError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| bad(format!("`{key}` holds a non-string")))
                })
                .collect(),
            Some(_) => Err(bad(format!("`{key}` is not a string or a list"))),
        }
    };
    let matches = strings("match")?;
    if let Input::Text(t) = &input {
        if let Some(m) = matches
            .iter()
            .find(|m| m.is_empty() || !t.contains(m.as_str()))
        {
            return Err(bad(format!("`match` value {m:?} is not in the text")));
        }
    }
    let id = obj
        .get("id")
        .and_then(Value::as_str)
        .map_or_else(|| format!("{file}:{line}"), str::to_owned);
    Ok(Sample {
        id,
        family,
        labels,
        input,
        matches,
        known_tools: strings("known_tools")?,
        source: obj
            .get("source")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        file: Path::new(file)
            .file_name()
            .map_or_else(|| file.to_owned(), |n| n.to_string_lossy().into_owned()),
        line,
    })
}

/// One finding of any detector, in one shape, so reports treat DLP matches
/// and rule findings alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hit {
    /// Rule or detector id.
    pub rule: String,
    /// Its severity (DLP severities map by name).
    pub severity: Severity,
    /// JSON pointer of the string (empty for text samples).
    pub path: String,
    /// Byte span in that string.
    pub span: (usize, usize),
    /// A short excerpt (the corpus is synthetic or public, so matches may
    /// be shown).
    pub evidence: String,
}

/// Runs the sample's family detector over it, so callers (and tests) see
/// exactly what the evaluation counts.
pub fn detect(s: &Sample) -> Vec<Hit> {
    match s.family {
        Family::Poison => {
            let ctx = poison::Context::new(s.known_tools.clone());
            let found = match &s.input {
                Input::Text(t) => poison::scan_text(t, "", &ctx),
                Input::Tool(v) => poison::scan_tool(v, &ctx),
                Input::Prompt(v) => poison::scan_prompt(v, &ctx),
                Input::Resource(v) => poison::scan_resource(v, &ctx),
            };
            found.into_iter().map(from_finding).collect()
        }
        Family::Inject => match &s.input {
            Input::Text(t) => inject::scan_result_text(t)
                .into_iter()
                .map(from_finding)
                .collect(),
            _ => Vec::new(),
        },
        Family::Secret | Family::Pii => {
            let Input::Text(t) = &s.input else {
                return Vec::new();
            };
            let class = if s.family == Family::Secret {
                dlp::SECRETS
            } else {
                dlp::PII
            };
            let policy = dlp::DlpPolicy::with(&[class], dlp::Action::Flag);
            dlp::scan_text(t, &policy)
                .into_iter()
                .map(|m| Hit {
                    rule: m.detector.to_owned(),
                    severity: dlp_severity(m.severity),
                    path: String::new(),
                    span: (m.span.start, m.span.end),
                    evidence: excerpt(t, (m.span.start, m.span.end)),
                })
                .collect()
        }
    }
}

fn from_finding(f: crate::finding::Finding) -> Hit {
    Hit {
        rule: f.rule.to_owned(),
        severity: f.severity,
        path: f.path,
        span: f.span,
        evidence: f.evidence,
    }
}

fn dlp_severity(s: dlp::Severity) -> Severity {
    match s {
        dlp::Severity::Low => Severity::Low,
        dlp::Severity::Medium => Severity::Medium,
        dlp::Severity::High => Severity::High,
        dlp::Severity::Critical => Severity::Critical,
    }
}

/// How the evaluation counts, so the CLI can choose the operating point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Lowest severity of a `poison`/`inject` finding that counts as a
    /// detection (DLP matches always count).
    pub min_severity: Severity,
}

impl Default for Options {
    /// `high`: what the gateway acts on by default
    /// (`inspection.poison_min_severity`) and `portcullis scan --fail-on`.
    fn default() -> Options {
        Options {
            min_severity: Severity::High,
        }
    }
}

/// What happened to one sample, so misses and false positives can be
/// listed with their evidence.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Case {
    /// The sample's id.
    pub id: String,
    /// Its corpus file.
    pub file: String,
    /// Its line.
    pub line: usize,
    /// Its family.
    pub family: Family,
    /// Its labels.
    pub labels: Vec<String>,
    /// Its source.
    pub source: String,
    /// For a miss, every finding (those below the operating point show how
    /// close it came); otherwise the findings that count.
    pub hits: Vec<Hit>,
}

/// Recall and false-positive counts, so every breakdown reads the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Rates {
    /// Positive samples.
    pub positives: usize,
    /// Positives detected.
    pub detected: usize,
    /// `detected / positives` (absent without positives).
    pub recall: Option<f64>,
    /// Negative samples.
    pub negatives: usize,
    /// Negatives with a finding.
    pub false_positives: usize,
    /// `false_positives / negatives` (absent without negatives).
    pub fpr: Option<f64>,
}

impl Rates {
    fn add(&mut self, positive: bool, flagged: bool) {
        if positive {
            self.positives += 1;
            self.detected += usize::from(flagged);
        } else {
            self.negatives += 1;
            self.false_positives += usize::from(flagged);
        }
        self.recall = ratio(self.detected, self.positives);
        self.fpr = ratio(self.false_positives, self.negatives);
    }
}

fn ratio(a: usize, b: usize) -> Option<f64> {
    // Counts of a corpus are far below 2^52: the conversion is exact.
    #[allow(clippy::cast_precision_loss)]
    (b > 0).then(|| a as f64 / b as f64)
}

/// The rates at one severity threshold, so the operating point can be
/// compared with its neighbours.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AtSeverity {
    /// The lowest severity counted.
    pub severity: Severity,
    /// The rates when findings below it are ignored.
    #[serde(flatten)]
    pub rates: Rates,
}

/// Recall for one label, so weak attack classes or detectors stand out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LabelStats {
    /// The label (`secret:aws-access-key-id`, `poison:hidden-markup`, …).
    pub label: String,
    /// Samples carrying it.
    pub positives: usize,
    /// Of those, detected (by any detector of the family).
    pub detected: usize,
    /// Of those, found by the rule or detector the label names (absent when
    /// the label names an attack class rather than a rule).
    pub exact: Option<usize>,
}

/// How often one rule or detector fired, so noisy rules stand out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RuleStats {
    /// Rule or detector id.
    pub rule: String,
    /// Positive samples it fired on.
    pub on_positives: usize,
    /// Negative samples it fired on (each a false positive).
    pub on_negatives: usize,
}

/// The rates of one corpus file within a family, so a source of false
/// positives (real definitions vs hard negatives) can be told apart.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FileStats {
    /// The file's name.
    pub file: String,
    /// Its rates.
    #[serde(flatten)]
    pub rates: Rates,
}

/// Everything measured for one family.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FamilyReport {
    /// The family.
    pub family: Family,
    /// Its rates at the operating point.
    #[serde(flatten)]
    pub rates: Rates,
    /// Its rates at each severity threshold (`poison` and `inject` only).
    pub by_severity: Vec<AtSeverity>,
    /// Recall per positive label.
    pub labels: Vec<LabelStats>,
    /// Firing counts per rule or detector.
    pub rules: Vec<RuleStats>,
    /// Rates per corpus file.
    pub files: Vec<FileStats>,
}

/// The result of an evaluation, printable as text or JSON.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The operating point for `poison` and `inject`.
    pub min_severity: Severity,
    /// Samples evaluated.
    pub samples: usize,
    /// One entry per family present in the corpus.
    pub families: Vec<FamilyReport>,
    /// Positives not detected.
    pub misses: Vec<Case>,
    /// Negatives with a finding.
    pub false_positives: Vec<Case>,
    /// Positives detected, but not by the rule or detector their label
    /// names (they count as detected).
    pub other_detector: Vec<Case>,
}

impl Report {
    /// The report of one family, if the corpus had any of its samples.
    pub fn family(&self, f: Family) -> Option<&FamilyReport> {
        self.families.iter().find(|r| r.family == f)
    }
}

/// Whether the hits cover every `match` value of the sample (a DLP finding
/// must overlap each occurrence-free value at least once).
fn covers(s: &Sample, hits: &[&Hit]) -> bool {
    let Input::Text(t) = &s.input else {
        return !hits.is_empty();
    };
    if s.matches.is_empty() {
        return !hits.is_empty();
    }
    s.matches.iter().all(|m| {
        t.match_indices(m.as_str()).any(|(at, _)| {
            let end = at + m.len();
            hits.iter().any(|h| h.span.0 < end && at < h.span.1)
        })
    })
}

fn uses_severity(f: Family) -> bool {
    matches!(f, Family::Poison | Family::Inject)
}

/// Runs every sample and computes the rates, so one call gives the whole
/// report. Samples are independent; the order of the report is stable.
pub fn evaluate(samples: &[Sample], opts: &Options) -> Report {
    #[derive(Default)]
    struct Acc {
        rates: Rates,
        by_sev: [Rates; 4],
        labels: BTreeMap<String, (usize, usize, Option<usize>)>,
        rules: BTreeMap<String, (usize, usize)>,
        files: BTreeMap<String, Rates>,
    }
    let mut acc: BTreeMap<Family, Acc> = BTreeMap::new();
    let mut misses = Vec::new();
    let mut fps = Vec::new();
    let mut other = Vec::new();
    for s in samples {
        let hits = detect(s);
        let positive = s.is_positive();
        let a = acc.entry(s.family).or_default();
        let counted = |min: Severity| -> Vec<&Hit> {
            hits.iter()
                .filter(|h| !uses_severity(s.family) || h.severity >= min)
                .collect()
        };
        let flagged_at = |min: Severity| {
            let c = counted(min);
            if positive {
                covers(s, &c)
            } else {
                !c.is_empty()
            }
        };
        for (slot, sev) in a.by_sev.iter_mut().zip(Severity::ALL) {
            slot.add(positive, flagged_at(sev));
        }
        let live = counted(opts.min_severity);
        let flagged = flagged_at(opts.min_severity);
        a.rates.add(positive, flagged);
        a.files
            .entry(s.file.clone())
            .or_default()
            .add(positive, flagged);
        let mut fired: Vec<&str> = live.iter().map(|h| h.rule.as_str()).collect();
        fired.sort_unstable();
        fired.dedup();
        for r in &fired {
            let e = a.rules.entry((*r).to_owned()).or_default();
            if positive {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
        let mut wrong = false;
        if positive {
            for l in &s.labels {
                let id = l.split_once(':').map(|(_, id)| id);
                let exact = id
                    .filter(|id| s.family.knows(id))
                    .map(|id| flagged && fired.iter().any(|r| rule_is(r, id)));
                let e = a.labels.entry(l.clone()).or_insert((0, 0, None));
                e.0 += 1;
                e.1 += usize::from(flagged);
                if let Some(x) = exact {
                    *e.2.get_or_insert(0) += usize::from(x);
                    wrong |= flagged && !x;
                }
            }
        }
        let case = || Case {
            id: s.id.clone(),
            file: s.file.clone(),
            line: s.line,
            family: s.family,
            labels: s.labels.clone(),
            source: s.source.clone(),
            hits: if positive && !flagged {
                hits.clone()
            } else {
                live.iter().map(|h| (*h).clone()).collect()
            },
        };
        match (positive, flagged) {
            (true, false) => misses.push(case()),
            (false, true) => fps.push(case()),
            (true, true) if wrong => other.push(case()),
            _ => {}
        }
    }
    let families = acc
        .into_iter()
        .map(|(family, a)| FamilyReport {
            family,
            rates: a.rates,
            by_severity: if uses_severity(family) {
                Severity::ALL
                    .into_iter()
                    .zip(a.by_sev)
                    .map(|(severity, rates)| AtSeverity { severity, rates })
                    .collect()
            } else {
                Vec::new()
            },
            labels: a
                .labels
                .into_iter()
                .map(|(label, (positives, detected, exact))| LabelStats {
                    label,
                    positives,
                    detected,
                    exact,
                })
                .collect(),
            rules: a
                .rules
                .into_iter()
                .map(|(rule, (p, n))| RuleStats {
                    rule,
                    on_positives: p,
                    on_negatives: n,
                })
                .collect(),
            files: a
                .files
                .into_iter()
                .map(|(file, rates)| FileStats { file, rates })
                .collect(),
        })
        .collect();
    Report {
        min_severity: opts.min_severity,
        samples: samples.len(),
        families,
        misses,
        false_positives: fps,
        other_detector: other,
    }
}

/// Which rate a threshold bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// Recall must be at least the limit.
    MinRecall,
    /// The false-positive rate must be at most the limit.
    MaxFpr,
}

impl Metric {
    /// The CLI flag's name, so a failed check reads like the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::MinRecall => "min-recall",
            Metric::MaxFpr => "max-fpr",
        }
    }
}

/// A bound CI can gate on, for one family or for every family present.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Threshold {
    /// The family, or `None` for every family with samples.
    pub family: Option<Family>,
    /// What is bounded.
    pub metric: Metric,
    /// The bound, a fraction in `0..=1`.
    pub limit: f64,
}

impl Threshold {
    /// Parses `RATE` or `FAMILY=RATE`; `RATE` is a fraction (`0.95`) or a
    /// percentage (`95%`).
    pub fn parse(metric: Metric, s: &str) -> Result<Threshold, EvalError> {
        let err = || EvalError::Threshold(s.to_owned());
        let (family, rate) = match s.split_once('=') {
            Some((f, r)) => (Some(Family::parse(f).ok_or_else(err)?), r.trim()),
            None => (None, s.trim()),
        };
        let limit = match rate.strip_suffix('%') {
            Some(p) => p.trim().parse::<f64>().map_err(|_| err())? / 100.0,
            None => rate.parse::<f64>().map_err(|_| err())?,
        };
        if !(0.0..=1.0).contains(&limit) {
            return Err(err());
        }
        Ok(Threshold {
            family,
            metric,
            limit,
        })
    }
}

/// The outcome of one threshold on one family.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    /// The family checked.
    pub family: Family,
    /// The bound checked.
    pub metric: Metric,
    /// The bound.
    pub limit: f64,
    /// The measured rate (absent when the family has no samples of the kind
    /// the metric needs).
    pub value: Option<f64>,
    /// Whether the bound holds (a bound on a family with no such samples
    /// fails when it names the family, and is skipped otherwise).
    pub ok: bool,
}

/// Checks the thresholds against a report, so CI can fail on a regression.
pub fn check(report: &Report, thresholds: &[Threshold]) -> Vec<Check> {
    let mut out = Vec::new();
    for t in thresholds {
        let families: Vec<Family> = match t.family {
            Some(f) => vec![f],
            None => report.families.iter().map(|r| r.family).collect(),
        };
        for family in families {
            let rates = report.family(family).map(|r| r.rates);
            let value = rates.and_then(|r| match t.metric {
                Metric::MinRecall => r.recall,
                Metric::MaxFpr => r.fpr,
            });
            let ok = match value {
                // A tiny tolerance so "0.95" is met by 19/20.
                Some(v) => match t.metric {
                    Metric::MinRecall => v + 1e-9 >= t.limit,
                    Metric::MaxFpr => v <= t.limit + 1e-9,
                },
                None => t.family.is_none(),
            };
            if value.is_none() && t.family.is_none() {
                continue;
            }
            out.push(Check {
                family,
                metric: t.metric,
                limit: t.limit,
                value,
                ok,
            });
        }
    }
    out
}
