//! The behavioural risk engine: a 0–100 score per identity, updated on
//! every request and outcome, fed into the policy context as `risk`.
//!
//! The score is the sum of seven factors, each capped at its weight, and
//! the sum capped at 100. Every factor fades when behaviour returns to
//! normal (exponential decay with the half-lives below), so a score is a
//! statement about *recent* behaviour. Given the same event stream and the
//! same clock readings the scores are identical (no randomness, no wall
//! clock; the [`Clock`] is injected).
//!
//! | factor | what | default |
//! |--------|------|---------|
//! | `rate` | short request-rate EWMA (τ 10 s) against the identity's own baseline, a long EWMA (τ 10 min, bias-corrected); until the identity is 2 min old, and always as a lower bound, the baseline is the floor of 1 req/s | 0 below 2× baseline, linear to 40 at 10× |
//! | `new-tool` | first use of a tool by this identity | 4 points (all plain tools together at most 20), 12 for a destructive tool; half-life 10 min; at most 70 |
//! | `denials` | EWMA share of denied decisions (α 0.1 per decision) | 0 below 5 %, linear to 40 at 50 %; needs 3 decisions' worth of evidence (full at 6); evidence half-life 10 min |
//! | `errors` | EWMA share of forwarded calls that failed (`Outcome::Error` follows the call's `Allowed`) | 0 below 10 %, linear to 20 at 60 %; same evidence rules |
//! | `labelled-burst` | decaying count of requests touching labelled data (half-life 1 min) | 0 below 10, linear to 25 at 60 |
//! | `suspicious-args` | argument findings (rule ids from `portcullis_inspect::args`) | 10 points each; half-life 10 min; at most 40 |
//! | `findings` | inspection findings by severity | 3 / 10 / 25 points (low / medium / high); half-life 15 min; at most 50 |
//!
//! Cost: one hash, one short per-shard `Mutex` and a handful of `exp`
//! calls per update; no allocation except the three-entry factor list and
//! the first sighting of an identity. Memory is bounded: at most
//! `max_identities` identities (split across up to 16 shards; a full shard
//! evicts its least recently seen eighth) and `max_tools_per_identity`
//! tools each.
//!
//! # Restarts
//!
//! [`RiskEngine::export_baselines`] and [`RiskEngine::import_baselines`]
//! carry every identity's state across a restart as [`Baseline`]s (for
//! the state store). A restart is treated as a quiet gap of the same
//! wall-clock length: on import every accumulator is decayed by the time
//! since the export, exactly as if the process had stayed up and the
//! identity had sent nothing. So a restart neither forgets the standing
//! facts (the identity's age, its long-rate baseline, the tools it is
//! known to use) nor launders an alarm (new-tool, denial and error
//! shares, labelled bursts, suspicious arguments and findings carry over
//! at their decayed value). The short-lived accumulators are carried too:
//! after any real restart they have decayed to almost nothing, and
//! dropping them would only open a window to reset them on purpose.

mod clock;
mod config;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{RiskConfig, RiskConfigError};

/// Factor name for request rate against the identity's baseline, so consumers need not spell it.
pub const RATE: &str = "rate";
/// Factor name for first uses of tools, so consumers need not spell it.
pub const NEW_TOOL: &str = "new-tool";
/// Factor name for the share of denied decisions, so consumers need not spell it.
pub const DENIALS: &str = "denials";
/// Factor name for the share of failed calls, so consumers need not spell it.
pub const ERRORS: &str = "errors";
/// Factor name for bursts of access to labelled data, so consumers need not spell it.
pub const LABELLED_BURST: &str = "labelled-burst";
/// Factor name for argument findings, so consumers need not spell it.
pub const SUSPICIOUS_ARGS: &str = "suspicious-args";
/// Factor name for inspection findings, so consumers need not spell it.
pub const FINDINGS: &str = "findings";
/// Every factor name in a fixed order, so dashboards can lay them out stably.
pub const FACTORS: [&str; 7] = [
    RATE,
    NEW_TOOL,
    DENIALS,
    ERRORS,
    LABELLED_BURST,
    SUSPICIOUS_ARGS,
    FINDINGS,
];

/// Most shards; the identity cap is split evenly between them.
const MAX_SHARDS: usize = 16;
/// Identities per shard below which sharding is not worth it.
const MIN_PER_SHARD: usize = 256;
/// Longest span (s, about 317 years) an imported age, idle time or gap can have.
const MAX_SECS: f64 = 1e10;
/// Largest imported rate (requests/s) or accumulator (points, outcomes).
const MAX_LEVEL: f64 = 1e6;

/// One request as the risk engine sees it, so the gateway can describe it
/// without the engine knowing the gateway's types.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestEvent<'a> {
    /// The tool called, if the request is a tool call.
    pub tool: Option<&'a str>,
    /// Whether the tool is annotated destructive.
    pub destructive: bool,
    /// Data labels of the resource touched (non-empty: labelled data).
    pub labels: &'a [String],
    /// Rule ids of the argument findings for this request.
    pub suspicious: &'a [&'a str],
}

/// What became of a request, so denials and failures feed the score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The policy allowed it.
    Allowed,
    /// The policy denied it.
    Denied,
    /// It was allowed but the upstream call failed (reported after `Allowed`).
    Error,
}

/// Severity of an inspection finding, so the engine need not depend on the inspector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FindingSeverity {
    /// Worth noting.
    Low,
    /// Suspicious.
    Medium,
    /// Almost certainly hostile.
    High,
}

/// An identity's current risk with its reasons, so decisions can be explained.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RiskScore {
    /// 0 (nothing unusual) to 100.
    pub score: u8,
    /// The top three non-zero contributions, largest first.
    pub factors: Vec<Factor>,
}

/// One factor's contribution, so a score can be explained in a sentence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Factor {
    /// A stable factor name (see [`FACTORS`]).
    pub name: &'static str,
    /// Points it adds (rounded).
    pub points: u8,
}

/// One identity's risk state as the state store keeps it, so a restart
/// neither forgets its baseline nor launders an alarm (see the module doc).
///
/// Accumulators are as of the identity's last event, `idle_secs` before
/// `at_unix`; [`RiskEngine::import_baselines`] decays them from there.
/// Missing fields read as zero, unknown ones are ignored, and out-of-range
/// values are clamped on import (never trusted to be well formed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Baseline {
    /// Wall-clock time of the export (Unix seconds).
    pub at_unix: u64,
    /// Seconds from the identity's first sighting to the export.
    pub age_secs: f64,
    /// Seconds from the identity's last event to the export.
    pub idle_secs: f64,
    /// Long request-rate EWMA (requests/s, not bias-corrected): the baseline.
    pub rate_long: f64,
    /// Short request-rate EWMA (requests/s).
    pub rate_short: f64,
    /// Sorted FNV-1a 64 hashes of the tools seen (stable across builds).
    pub tools: Vec<u64>,
    /// Decaying `new-tool` points from plain tools.
    pub new_tool_plain: f64,
    /// Decaying `new-tool` points from destructive tools.
    pub new_tool_destructive: f64,
    /// Denial share: EWMA numerator.
    pub denied: f64,
    /// Denial share: EWMA denominator (decisions).
    pub decisions: f64,
    /// Error share: EWMA numerator.
    pub errors: f64,
    /// Error share: EWMA denominator (forwarded calls).
    pub calls: f64,
    /// Decaying count of requests touching labelled data.
    pub labelled: f64,
    /// Decaying `suspicious-args` points.
    pub suspicious: f64,
    /// Decaying `findings` points.
    pub findings: f64,
}

/// Per-identity behavioural risk, so policy can tighten as behaviour drifts.
pub struct RiskEngine {
    cfg: RiskConfig,
    k: Rates,
    clock: Arc<dyn Clock>,
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

impl std::fmt::Debug for RiskEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RiskEngine")
            .field("cfg", &self.cfg)
            .field("shards", &self.shards.len())
            .field("per_shard", &self.per_shard)
            .finish_non_exhaustive()
    }
}

/// Decay rates (1/s) derived from the configured time constants.
#[derive(Debug, Clone, Copy)]
struct Rates {
    short: f64,
    long: f64,
    new_tool: f64,
    outcome: f64,
    labelled: f64,
    suspicious: f64,
    findings: f64,
}

impl Rates {
    fn new(c: &RiskConfig) -> Self {
        let hl = |s: f64| std::f64::consts::LN_2 / s;
        Self {
            short: 1.0 / c.rate_short_secs,
            long: 1.0 / c.rate_long_secs,
            new_tool: hl(c.new_tool_half_life_secs),
            outcome: hl(c.outcome_half_life_secs),
            labelled: hl(c.labelled_half_life_secs),
            suspicious: hl(c.suspicious_half_life_secs),
            findings: hl(c.findings_half_life_secs),
        }
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<Box<str>, State>,
}

/// One identity's accumulators, all as of `last` (seconds on the clock).
#[derive(Debug, Clone, Default)]
struct State {
    first: f64,
    last: f64,
    /// Short and long request-rate EWMAs (requests/s).
    short: f64,
    long: f64,
    /// Decaying `new-tool` points, plain and destructive.
    new_plain: f64,
    new_destructive: f64,
    /// Denial share: EWMA numerator and denominator (decisions).
    denied: f64,
    decisions: f64,
    /// Error share: EWMA numerator and denominator (forwarded calls).
    errors: f64,
    calls: f64,
    labelled: f64,
    suspicious: f64,
    findings: f64,
    /// Sorted hashes of the tools seen.
    tools: Vec<u64>,
}

fn decay(k: f64, dt: f64) -> f64 {
    if dt > 0.0 {
        (-k * dt).exp()
    } else {
        1.0
    }
}

fn ramp(x: f64, lo: f64, hi: f64) -> f64 {
    if hi > lo {
        ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
    } else if x >= lo {
        1.0
    } else {
        0.0
    }
}

fn stable_hash(s: &str) -> u64 {
    // DefaultHasher::new() uses fixed keys: the same name hashes the same in
    // every engine, which keeps sharding (and so eviction) deterministic.
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// FNV-1a 64 of a tool name: unlike `DefaultHasher`, whose algorithm may
/// change between Rust releases, it is fixed, so stored tool sets stay
/// valid across builds.
fn tool_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An imported rate or accumulator: NaN and negatives read as 0, +inf and
/// huge values as `MAX_LEVEL` (an alarm is never read as smaller than stored).
fn level(v: f64) -> f64 {
    if v.is_nan() {
        0.0
    } else {
        v.clamp(0.0, MAX_LEVEL)
    }
}

/// An imported standing fact (age, baseline rate): anything not finite
/// reads as "no history", the stricter reading.
fn standing(v: f64, max: f64) -> f64 {
    if v.is_finite() {
        v.clamp(0.0, max)
    } else {
        0.0
    }
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic while holding the lock cannot leave a shard inconsistent in a
    // way that matters for a heuristic score; keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    fn new(now: f64) -> Self {
        Self {
            first: now,
            last: now,
            ..Self::default()
        }
    }

    /// Decays every accumulator to `now` (never backwards).
    fn advance(&mut self, k: &Rates, now: f64) {
        let dt = now - self.last;
        if dt.is_nan() || dt <= 0.0 {
            return;
        }
        self.short *= decay(k.short, dt);
        self.long *= decay(k.long, dt);
        let nt = decay(k.new_tool, dt);
        self.new_plain *= nt;
        self.new_destructive *= nt;
        let o = decay(k.outcome, dt);
        self.denied *= o;
        self.decisions *= o;
        self.errors *= o;
        self.calls *= o;
        self.labelled *= decay(k.labelled, dt);
        self.suspicious *= decay(k.suspicious, dt);
        self.findings *= decay(k.findings, dt);
        self.last = now;
    }

    /// The stored form, as of `last`, with times relative to `now`.
    fn to_baseline(&self, now: f64, now_unix: u64) -> Baseline {
        let idle = (now - self.last).max(0.0);
        Baseline {
            at_unix: now_unix,
            age_secs: (now - self.first).max(idle),
            idle_secs: idle,
            rate_long: self.long,
            rate_short: self.short,
            tools: self.tools.clone(),
            new_tool_plain: self.new_plain,
            new_tool_destructive: self.new_destructive,
            denied: self.denied,
            decisions: self.decisions,
            errors: self.errors,
            calls: self.calls,
            labelled: self.labelled,
            suspicious: self.suspicious,
            findings: self.findings,
        }
    }

    /// A stored baseline back on this process's clock: its export happened
    /// `now_unix - at_unix` wall-clock seconds before `now`; every value is
    /// clamped to a sane range.
    fn from_baseline(b: &Baseline, now: f64, now_unix: u64, max_tools: usize) -> Self {
        // Precision loss above 2^53 s is irrelevant: the gap is capped far below.
        let gap = (now_unix.saturating_sub(b.at_unix) as f64).min(MAX_SECS);
        let exported = now - gap;
        let idle = standing(b.idle_secs, MAX_SECS);
        let age = standing(b.age_secs, MAX_SECS).max(idle);
        let mut tools = b.tools.clone();
        tools.sort_unstable();
        tools.dedup();
        tools.truncate(max_tools);
        let decisions = level(b.decisions);
        let calls = level(b.calls);
        Self {
            first: exported - age,
            last: exported - idle,
            short: level(b.rate_short),
            long: standing(b.rate_long, MAX_LEVEL),
            new_plain: level(b.new_tool_plain),
            new_destructive: level(b.new_tool_destructive),
            denied: level(b.denied).min(decisions),
            decisions,
            errors: level(b.errors).min(calls),
            calls,
            labelled: level(b.labelled),
            suspicious: level(b.suspicious),
            findings: level(b.findings),
            tools,
        }
    }
}

impl RiskEngine {
    /// Builds an engine, so the gateway can own one per process; invalid
    /// config fields fall back to their defaults (see [`RiskConfig::validate`]).
    pub fn new(cfg: RiskConfig, clock: Arc<dyn Clock>) -> Self {
        let cfg = cfg.sanitized();
        let shards = (cfg.max_identities / MIN_PER_SHARD).clamp(1, MAX_SHARDS);
        let per_shard = (cfg.max_identities / shards).max(1);
        Self {
            k: Rates::new(&cfg),
            cfg,
            clock,
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard,
        }
    }

    /// The effective configuration, so operators can see what is in force.
    pub fn config(&self) -> &RiskConfig {
        &self.cfg
    }

    fn now(&self) -> f64 {
        self.clock.now().as_secs_f64()
    }

    #[expect(
        clippy::indexing_slicing,
        reason = "the index is reduced modulo the shard count, which `new` makes >= 1"
    )]
    fn shard(&self, identity: &str) -> &Mutex<Shard> {
        let n = self.shards.len() as u64;
        &self.shards[(stable_hash(identity) % n) as usize]
    }

    /// Runs `f` on the identity's state decayed to now (created if new) and
    /// returns the resulting score.
    fn update(&self, identity: &str, f: impl FnOnce(&mut State, &RiskConfig)) -> RiskScore {
        let now = self.now();
        let mut shard = lock(self.shard(identity));
        if !shard.map.contains_key(identity) {
            self.make_room(&mut shard);
            shard.map.insert(identity.into(), State::new(now));
        }
        match shard.map.get_mut(identity) {
            Some(st) => {
                st.advance(&self.k, now);
                f(st, &self.cfg);
                self.render(st, now)
            }
            None => RiskScore::default(),
        }
    }

    /// Evicts the least recently seen eighth of a full shard.
    fn make_room(&self, shard: &mut Shard) {
        if shard.map.len() < self.per_shard {
            return;
        }
        let batch = (self.per_shard / 8).max(1);
        let mut ages: Vec<(f64, &str)> = shard.map.iter().map(|(k, s)| (s.last, &**k)).collect();
        let by_age =
            |a: &(f64, &str), b: &(f64, &str)| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1));
        if batch < ages.len() {
            ages.select_nth_unstable_by(batch, by_age);
            ages.truncate(batch);
        }
        let victims: Vec<Box<str>> = ages.into_iter().map(|(_, k)| Box::from(k)).collect();
        for v in victims {
            shard.map.remove(&v);
        }
    }

    /// Records a request, so rate, novelty, labelled access and argument
    /// findings count; call it before the policy decision and decide with
    /// the returned score.
    pub fn on_request(&self, identity: &str, ev: &RequestEvent<'_>) -> RiskScore {
        let k = self.k;
        self.update(identity, |st, c| {
            st.short += k.short;
            st.long += k.long;
            if let Some(tool) = ev.tool {
                let h = tool_hash(tool);
                if let Err(pos) = st.tools.binary_search(&h) {
                    if ev.destructive {
                        st.new_destructive += c.new_destructive_tool_points;
                    } else {
                        st.new_plain += c.new_tool_points;
                    }
                    if st.tools.len() < c.max_tools_per_identity {
                        st.tools.insert(pos, h);
                    }
                }
            }
            if !ev.labels.is_empty() {
                st.labelled += 1.0;
            }
            // Convert the count exactly; more than 2^53 findings cannot occur.
            let n = u32::try_from(ev.suspicious.len()).unwrap_or(u32::MAX);
            st.suspicious += f64::from(n) * c.suspicious_points;
        })
    }

    /// Records what became of a request, so denials and failures count.
    pub fn on_outcome(&self, identity: &str, o: Outcome) -> RiskScore {
        self.update(identity, |st, c| {
            let keep = 1.0 - c.outcome_alpha;
            match o {
                Outcome::Allowed => {
                    st.denied *= keep;
                    st.decisions = st.decisions * keep + 1.0;
                    st.errors *= keep;
                    st.calls = st.calls * keep + 1.0;
                }
                Outcome::Denied => {
                    st.denied = st.denied * keep + 1.0;
                    st.decisions = st.decisions * keep + 1.0;
                }
                Outcome::Error => {
                    // The call was counted when it was allowed; a caller
                    // that reports only the error still gets a share <= 1.
                    st.errors += 1.0;
                    st.calls = st.calls.max(st.errors);
                }
            }
        })
    }

    /// Records an inspection finding attributed to the identity, so what its
    /// calls carry or return counts.
    pub fn on_finding(&self, identity: &str, s: FindingSeverity) -> RiskScore {
        self.update(identity, |st, c| {
            st.findings += match s {
                FindingSeverity::Low => c.finding_low_points,
                FindingSeverity::Medium => c.finding_medium_points,
                FindingSeverity::High => c.finding_high_points,
            };
        })
    }

    /// The identity's score decayed to now, without recording anything, so
    /// readers do not disturb it; an unknown identity scores 0.
    pub fn score(&self, identity: &str) -> RiskScore {
        let now = self.now();
        let shard = lock(self.shard(identity));
        match shard.map.get(identity) {
            Some(st) => {
                let mut st = st.clone();
                st.advance(&self.k, now);
                self.render(&st, now)
            }
            None => RiskScore::default(),
        }
    }

    /// Every factor's points for the identity (zeros included, in
    /// [`FACTORS`] order), so a console can show the full breakdown.
    pub fn explain(&self, identity: &str) -> Option<Vec<Factor>> {
        let now = self.now();
        let shard = lock(self.shard(identity));
        let mut st = shard.map.get(identity)?.clone();
        drop(shard);
        st.advance(&self.k, now);
        let raw = self.points(&st, now);
        Some(
            FACTORS
                .iter()
                .zip(raw)
                .map(|(name, p)| Factor {
                    name,
                    points: to_u8(p),
                })
                .collect(),
        )
    }

    /// Every tracked identity with its current score, sorted by identity,
    /// so metrics and the console see a stable list.
    pub fn snapshot(&self) -> Vec<(String, RiskScore)> {
        let now = self.now();
        let mut out = Vec::new();
        for s in self.shards.iter() {
            let shard = lock(s);
            out.reserve(shard.map.len());
            for (id, st) in &shard.map {
                let mut st = st.clone();
                st.advance(&self.k, now);
                out.push((id.to_string(), self.render(&st, now)));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Whether the identity is tracked, so callers can tell "0" from "unknown".
    pub fn contains(&self, identity: &str) -> bool {
        lock(self.shard(identity)).map.contains_key(identity)
    }

    /// How many identities are tracked, so the bound can be watched.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// Whether no identity is tracked, so callers need not compare `len()` to 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops an identity's history, so an operator can reset it after review.
    pub fn forget(&self, identity: &str) -> bool {
        lock(self.shard(identity)).map.remove(identity).is_some()
    }

    /// Every identity's state for the state store, sorted by identity, so
    /// a restart can pick up where this process left off; `now_unix` is the
    /// wall-clock time of the export (Unix seconds).
    pub fn export_baselines(&self, now_unix: u64) -> Vec<(String, Baseline)> {
        let now = self.now();
        let mut out = Vec::new();
        for s in self.shards.iter() {
            let shard = lock(s);
            out.reserve(shard.map.len());
            for (id, st) in &shard.map {
                out.push((id.to_string(), st.to_baseline(now, now_unix)));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// One identity's state for the state store (see
    /// [`export_baselines`](Self::export_baselines)), so a single entry can
    /// be written through; `None` if the identity is not tracked.
    pub fn export_baseline(&self, identity: &str, now_unix: u64) -> Option<Baseline> {
        let now = self.now();
        let shard = lock(self.shard(identity));
        shard
            .map
            .get(identity)
            .map(|st| st.to_baseline(now, now_unix))
    }

    /// Restores exported states after a restart, so baselines and alarms
    /// survive it; `now_unix` is the wall-clock time now (Unix seconds).
    ///
    /// Each baseline is decayed by the wall-clock time since its export
    /// (a wall clock behind `at_unix` counts as no time), keeps the
    /// identity's age, and has every value clamped to a sane range. An
    /// identity already tracked (events since the restart, or a second
    /// import) is merged: the age and long-rate baseline of whichever has
    /// more history, the union of known tools (up to the per-identity cap),
    /// and for every alarm the larger of the two (the denial and error
    /// shares as whole pairs), so a merge never lowers a score. New
    /// identities are inserted least recently seen first and the identity
    /// cap evicts as usual. Returns how many baselines were taken in
    /// (inserted or merged).
    pub fn import_baselines(
        &self,
        items: impl IntoIterator<Item = (String, Baseline)>,
        now_unix: u64,
    ) -> usize {
        let now = self.now();
        let max_tools = self.cfg.max_tools_per_identity;
        let mut states: Vec<(String, State)> = items
            .into_iter()
            .map(|(id, b)| {
                let st = State::from_baseline(&b, now, now_unix, max_tools);
                (id, st)
            })
            .collect();
        states.sort_by(|a, b| a.1.last.total_cmp(&b.1.last).then_with(|| a.0.cmp(&b.0)));
        let n = states.len();
        for (id, mut st) in states {
            let mut shard = lock(self.shard(&id));
            match shard.map.remove(id.as_str()) {
                Some(mut cur) => {
                    cur.advance(&self.k, now);
                    st.advance(&self.k, now);
                    let merged = self.merge(cur, st);
                    shard.map.insert(id.into_boxed_str(), merged);
                }
                None => {
                    self.make_room(&mut shard);
                    shard.map.insert(id.into_boxed_str(), st);
                }
            }
        }
        n
    }

    /// Two states of one identity, both as of the same time, as one that
    /// scores no lower than either.
    fn merge(&self, a: State, b: State) -> State {
        let (mut old, young) = if a.first <= b.first { (a, b) } else { (b, a) };
        for h in young.tools {
            if old.tools.len() >= self.cfg.max_tools_per_identity {
                break;
            }
            if let Err(pos) = old.tools.binary_search(&h) {
                old.tools.insert(pos, h);
            }
        }
        old.last = old.last.max(young.last);
        old.short = old.short.max(young.short);
        old.new_plain = old.new_plain.max(young.new_plain);
        old.new_destructive = old.new_destructive.max(young.new_destructive);
        old.labelled = old.labelled.max(young.labelled);
        old.suspicious = old.suspicious.max(young.suspicious);
        old.findings = old.findings.max(young.findings);
        // A share's numerator and denominator only make sense together:
        // keep the pair that scores more (on a tie, the one with more evidence).
        let (po, py) = (
            self.denial_points(old.denied, old.decisions),
            self.denial_points(young.denied, young.decisions),
        );
        if py > po || (py == po && young.decisions > old.decisions) {
            old.denied = young.denied;
            old.decisions = young.decisions;
        }
        let (po, py) = (
            self.error_points(old.errors, old.calls),
            self.error_points(young.errors, young.calls),
        );
        if py > po || (py == po && young.calls > old.calls) {
            old.errors = young.errors;
            old.calls = young.calls;
        }
        old
    }

    /// Raw factor points in [`FACTORS`] order, each within its weight.
    fn points(&self, st: &State, now: f64) -> [f64; 7] {
        let c = &self.cfg;
        let age = now - st.first;
        let baseline = if age >= c.rate_warmup_secs {
            // Bias-corrected: the long EWMA of an identity `age` seconds old
            // holds only (1 - e^(-age/τ)) of its steady value.
            let seen = 1.0 - (-age * self.k.long).exp();
            (st.long / seen.max(1e-9)).max(c.rate_floor_per_sec)
        } else {
            c.rate_floor_per_sec
        };
        let rate = if baseline > 0.0 {
            c.rate_weight * ramp(st.short / baseline, c.rate_ratio_low, c.rate_ratio_high)
        } else {
            0.0
        };

        let new_tool =
            (st.new_plain.min(c.new_tool_plain_cap) + st.new_destructive).min(c.new_tool_weight);

        let denials = self.denial_points(st.denied, st.decisions);
        let errors = self.error_points(st.errors, st.calls);
        let labelled = c.labelled_weight * ramp(st.labelled, c.labelled_low, c.labelled_high);
        let suspicious = st.suspicious.min(c.suspicious_weight);
        let findings = st.findings.min(c.findings_weight);
        [
            rate, new_tool, denials, errors, labelled, suspicious, findings,
        ]
    }

    fn denial_points(&self, denied: f64, decisions: f64) -> f64 {
        let c = &self.cfg;
        self.share(
            denied,
            decisions,
            c.denial_weight,
            c.denial_ratio_low,
            c.denial_ratio_high,
        )
    }

    fn error_points(&self, errors: f64, calls: f64) -> f64 {
        let c = &self.cfg;
        self.share(
            errors,
            calls,
            c.error_weight,
            c.error_ratio_low,
            c.error_ratio_high,
        )
    }

    /// Points for a share `num / den` of outcomes, scaled by how much
    /// evidence `den` there is.
    fn share(&self, num: f64, den: f64, w: f64, lo: f64, hi: f64) -> f64 {
        let c = &self.cfg;
        if den < c.outcome_min || den <= 0.0 {
            return 0.0;
        }
        let confidence = if c.outcome_min > 0.0 {
            ((den - c.outcome_min) / c.outcome_min).clamp(0.0, 1.0)
        } else {
            1.0
        };
        w * ramp(num / den, lo, hi) * confidence
    }

    fn render(&self, st: &State, now: f64) -> RiskScore {
        let raw = self.points(st, now);
        let total: f64 = raw.iter().sum();
        let mut top: Vec<Factor> = FACTORS
            .iter()
            .zip(raw)
            .map(|(name, p)| Factor {
                name,
                points: to_u8(p),
            })
            .filter(|f| f.points > 0)
            .collect();
        // Stable: ties keep the FACTORS order.
        top.sort_by_key(|f| std::cmp::Reverse(f.points));
        top.truncate(3);
        RiskScore {
            score: to_u8(total.min(100.0)),
            factors: top,
        }
    }
}

/// Rounds to the nearest point, clamped to 0..=100 (NaN reads as 0).
fn to_u8(p: f64) -> u8 {
    let p = p.clamp(0.0, 100.0).round();
    // In 0..=100 after the clamp, so the cast is exact; NaN casts to 0.
    p as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_and_rounding() {
        assert_eq!(ramp(1.0, 2.0, 10.0), 0.0);
        assert_eq!(ramp(6.0, 2.0, 10.0), 0.5);
        assert_eq!(ramp(20.0, 2.0, 10.0), 1.0);
        assert_eq!(ramp(3.0, 3.0, 3.0), 1.0);
        assert_eq!(to_u8(f64::NAN), 0);
        assert_eq!(to_u8(-3.0), 0);
        assert_eq!(to_u8(250.0), 100);
        assert_eq!(to_u8(12.5), 13);
    }

    #[test]
    fn shards_never_exceed_the_cap() {
        for cap in [1, 7, 255, 256, 1000, 4096, 10_000, 100_000] {
            let e = RiskEngine::new(
                RiskConfig {
                    max_identities: cap,
                    ..RiskConfig::default()
                },
                Arc::new(ManualClock::new()),
            );
            assert!(e.shards.len() * e.per_shard <= cap, "{cap}");
            assert!(!e.shards.is_empty());
        }
    }
}
