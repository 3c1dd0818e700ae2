//! Automatic quarantine: rules in config that turn a clear signal — a risk
//! score above a threshold, a detector finding of a given severity, N
//! denials in a window — into a quarantine without waiting for a human.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::quarantine::{Mode, TargetKind};

/// How bad a finding is (ordered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth noting.
    Low,
    /// Suspicious.
    Medium,
    /// Almost certainly hostile.
    High,
}

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    /// The identity's risk score reaches `above`.
    Risk,
    /// A detector finding of at least `severity`.
    Finding,
    /// `count` denials within `window_secs`.
    Denials,
}

/// One rule (`[[containment.auto]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoRule {
    /// Name shown in the quarantine's `by` (`auto:<name>`) and the audit log.
    #[serde(default)]
    pub name: Option<String>,
    /// The signal.
    pub when: Signal,
    /// Risk: the score at or above which the rule fires.
    #[serde(default)]
    pub above: Option<u8>,
    /// Finding: the least severity that fires.
    #[serde(default)]
    pub severity: Option<Severity>,
    /// Denials: how many.
    #[serde(default)]
    pub count: Option<u32>,
    /// Denials: within how many seconds.
    #[serde(default)]
    pub window_secs: Option<u64>,
    /// The quarantine mode to apply.
    #[serde(default = "deny_all")]
    pub mode: Mode,
    /// Which part of the caller to quarantine (default: the identity).
    #[serde(default = "identity")]
    pub target: TargetKind,
    /// How long the quarantine lasts (absent: until released).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

fn deny_all() -> Mode {
    Mode::DenyAll
}
fn identity() -> TargetKind {
    TargetKind::Identity
}

impl AutoRule {
    /// The rule's name (given, or derived from its signal).
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| match self.when {
            Signal::Risk => format!("risk>={}", self.above.unwrap_or(0)),
            Signal::Finding => format!(
                "finding>={}",
                match self.severity.unwrap_or(Severity::High) {
                    Severity::Low => "low",
                    Severity::Medium => "medium",
                    Severity::High => "high",
                }
            ),
            Signal::Denials => format!(
                "denials>={}/{}s",
                self.count.unwrap_or(0),
                self.window_secs.unwrap_or(0)
            ),
        })
    }

    /// Checks the fields its signal needs; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        match self.when {
            Signal::Risk if self.above.is_none_or(|a| a == 0 || a > 100) => {
                Err("above: a risk rule needs 1..=100".into())
            }
            Signal::Finding if self.severity.is_none() => {
                Err("severity: a finding rule needs low, medium or high".into())
            }
            Signal::Denials if self.count.is_none_or(|c| c == 0) => {
                Err("count: a denials rule needs a positive count".into())
            }
            Signal::Denials if self.window_secs.is_none_or(|w| w == 0) => {
                Err("window_secs: a denials rule needs a positive window".into())
            }
            _ => Ok(()),
        }
    }
}

/// A rule that fired: what to quarantine and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// The rule's label.
    pub rule: String,
    /// Mode to apply.
    pub mode: Mode,
    /// Which part of the caller.
    pub target: TargetKind,
    /// Quarantine lifetime.
    pub ttl_secs: Option<u64>,
    /// A reason for operators.
    pub reason: String,
}

/// Keys whose denial history is kept before the oldest are forgotten.
const DENIAL_KEYS: usize = 100_000;

/// The rules and the denial windows they need.
#[derive(Default)]
pub struct AutoRules {
    rules: Vec<AutoRule>,
    denials: Mutex<HashMap<String, Denials>>,
}

/// One key's recent denials. Each denials rule consumes the denials that
/// fired it, so one burst fires a rule once, without taking them from the
/// other rules (a fast rule firing must not starve a slower one).
#[derive(Default)]
struct Denials {
    /// Sequence number and time of each denial, oldest first.
    times: VecDeque<(u64, Instant)>,
    /// The last sequence number handed out.
    seq: u64,
    /// Per rule (by index): the last denial a firing of it consumed.
    used: HashMap<usize, u64>,
}

impl AutoRules {
    /// Rules from config (validate them first).
    pub fn new(rules: Vec<AutoRule>) -> AutoRules {
        AutoRules {
            rules,
            denials: Mutex::new(HashMap::new()),
        }
    }

    /// Whether any rule exists (the hot path skips everything otherwise).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn fire(r: &AutoRule, reason: String) -> Trigger {
        Trigger {
            rule: r.label(),
            mode: r.mode,
            target: r.target,
            ttl_secs: r.ttl_secs,
            reason,
        }
    }

    /// The rules a risk score fires.
    pub fn on_risk(&self, score: u8) -> Vec<Trigger> {
        self.rules
            .iter()
            .filter(|r| r.when == Signal::Risk && r.above.is_some_and(|a| score >= a))
            .map(|r| {
                Self::fire(
                    r,
                    format!("risk score {score} reached {}", r.above.unwrap_or(0)),
                )
            })
            .collect()
    }

    /// The rules a finding fires.
    pub fn on_finding(&self, severity: Severity, finding: &str) -> Vec<Trigger> {
        self.rules
            .iter()
            .filter(|r| r.when == Signal::Finding && r.severity.is_some_and(|s| severity >= s))
            .map(|r| Self::fire(r, format!("detector finding {finding} ({severity:?})")))
            .collect()
    }

    /// Counts a denial of `key` at `now`; the rules it fires.
    pub fn on_denial(&self, key: &str, now: Instant) -> Vec<Trigger> {
        let longest = self
            .rules
            .iter()
            .filter(|r| r.when == Signal::Denials)
            .filter_map(|r| r.window_secs)
            .max();
        let Some(longest) = longest else {
            return Vec::new();
        };
        let mut m = self.denials.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= DENIAL_KEYS && !m.contains_key(key) {
            let horizon = Duration::from_secs(longest);
            m.retain(|_, d| {
                d.times
                    .back()
                    .is_some_and(|(_, t)| now.duration_since(*t) < horizon)
            });
            if m.len() >= DENIAL_KEYS {
                m.clear();
            }
        }
        let d = m.entry(key.to_owned()).or_default();
        d.seq += 1;
        let seq = d.seq;
        d.times.push_back((seq, now));
        while d
            .times
            .front()
            .is_some_and(|(_, t)| now.duration_since(*t) > Duration::from_secs(longest))
        {
            d.times.pop_front();
        }
        let mut out = Vec::new();
        let mut least_used = u64::MAX;
        for (i, r) in self.rules.iter().enumerate() {
            if r.when != Signal::Denials {
                continue;
            }
            let (Some(count), Some(w)) = (r.count, r.window_secs) else {
                continue;
            };
            let window = Duration::from_secs(w);
            let used = d.used.get(&i).copied().unwrap_or(0);
            let n = d
                .times
                .iter()
                .filter(|(s, t)| *s > used && now.duration_since(*t) <= window)
                .count();
            if n >= count as usize {
                out.push(Self::fire(r, format!("{n} denials within {w} s")));
                // Fired: this rule counts afresh so one burst fires it once.
                d.used.insert(i, seq);
                least_used = least_used.min(seq);
            } else {
                least_used = least_used.min(used);
            }
        }
        // Denials every rule has consumed count for nothing any more.
        while d.times.front().is_some_and(|(s, _)| *s <= least_used) {
            d.times.pop_front();
        }
        out
    }
}
