//! Weights, time constants and thresholds of the risk score. Embedded in
//! the gateway's TOML under `[risk]`; every field is optional.

use serde::{Deserialize, Serialize};

/// Tuning of the risk score, so operators can trade sensitivity for noise
/// without a rebuild. `Default` is the documented table in the module doc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RiskConfig {
    /// Identities tracked at most; the least recently seen are evicted.
    pub max_identities: usize,
    /// Distinct tools remembered per identity; past this every unseen tool stays "new".
    pub max_tools_per_identity: usize,

    /// Most points from `rate`.
    pub rate_weight: f64,
    /// Time constant (s) of the short request-rate EWMA.
    pub rate_short_secs: f64,
    /// Time constant (s) of the long (baseline) request-rate EWMA.
    pub rate_long_secs: f64,
    /// Age (s) before an identity's own baseline is trusted; until then only the floor is.
    pub rate_warmup_secs: f64,
    /// The baseline is never below this rate (requests/s).
    pub rate_floor_per_sec: f64,
    /// Short/baseline ratio where `rate` starts scoring.
    pub rate_ratio_low: f64,
    /// Short/baseline ratio that gives the full `rate_weight`.
    pub rate_ratio_high: f64,

    /// Most points from `new-tool`.
    pub new_tool_weight: f64,
    /// Points for the first use of a tool.
    pub new_tool_points: f64,
    /// Most points non-destructive first uses can add together.
    pub new_tool_plain_cap: f64,
    /// Points for the first use of a destructive tool.
    pub new_destructive_tool_points: f64,
    /// Half-life (s) of `new-tool` points.
    pub new_tool_half_life_secs: f64,

    /// Most points from `denials`.
    pub denial_weight: f64,
    /// Denied share of decisions where `denials` starts scoring.
    pub denial_ratio_low: f64,
    /// Denied share of decisions that gives the full `denial_weight`.
    pub denial_ratio_high: f64,
    /// Most points from `errors`.
    pub error_weight: f64,
    /// Failed share of forwarded calls where `errors` starts scoring.
    pub error_ratio_low: f64,
    /// Failed share of forwarded calls that gives the full `error_weight`.
    pub error_ratio_high: f64,
    /// Per-outcome EWMA smoothing of the denial and error shares (about 1/window).
    pub outcome_alpha: f64,
    /// Outcomes' worth of recent evidence before a share scores (full at twice this).
    pub outcome_min: f64,
    /// Half-life (s) of outcome evidence, so old denials are forgiven when quiet.
    pub outcome_half_life_secs: f64,

    /// Most points from `labelled-burst`.
    pub labelled_weight: f64,
    /// Half-life (s) of the count of requests touching labelled data.
    pub labelled_half_life_secs: f64,
    /// Decayed labelled count where `labelled-burst` starts scoring.
    pub labelled_low: f64,
    /// Decayed labelled count that gives the full `labelled_weight`.
    pub labelled_high: f64,

    /// Most points from `suspicious-args`.
    pub suspicious_weight: f64,
    /// Points per argument finding.
    pub suspicious_points: f64,
    /// Half-life (s) of `suspicious-args` points.
    pub suspicious_half_life_secs: f64,

    /// Most points from `findings`.
    pub findings_weight: f64,
    /// Points per low-severity inspection finding.
    pub finding_low_points: f64,
    /// Points per medium-severity inspection finding.
    pub finding_medium_points: f64,
    /// Points per high-severity inspection finding.
    pub finding_high_points: f64,
    /// Half-life (s) of `findings` points.
    pub findings_half_life_secs: f64,
}

impl Default for RiskConfig {
    fn default() -> Self {
        Self {
            max_identities: 10_000,
            max_tools_per_identity: 256,

            rate_weight: 40.0,
            rate_short_secs: 10.0,
            rate_long_secs: 600.0,
            rate_warmup_secs: 120.0,
            rate_floor_per_sec: 1.0,
            rate_ratio_low: 2.0,
            rate_ratio_high: 10.0,

            new_tool_weight: 70.0,
            new_tool_points: 4.0,
            new_tool_plain_cap: 20.0,
            new_destructive_tool_points: 12.0,
            new_tool_half_life_secs: 600.0,

            denial_weight: 40.0,
            denial_ratio_low: 0.05,
            denial_ratio_high: 0.5,
            error_weight: 20.0,
            error_ratio_low: 0.1,
            error_ratio_high: 0.6,
            outcome_alpha: 0.1,
            outcome_min: 3.0,
            outcome_half_life_secs: 600.0,

            labelled_weight: 25.0,
            labelled_half_life_secs: 60.0,
            labelled_low: 10.0,
            labelled_high: 60.0,

            suspicious_weight: 40.0,
            suspicious_points: 10.0,
            suspicious_half_life_secs: 600.0,

            findings_weight: 50.0,
            finding_low_points: 3.0,
            finding_medium_points: 10.0,
            finding_high_points: 25.0,
            findings_half_life_secs: 900.0,
        }
    }
}

/// Why a [`RiskConfig`] was rejected, so the gateway can refuse to start with a clear message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RiskConfigError {
    /// A weight, point value or threshold is negative or not finite.
    #[error("risk.{0} must be a finite number >= 0")]
    Negative(&'static str),
    /// A time constant or half-life is zero, negative or not finite.
    #[error("risk.{0} must be a finite number of seconds > 0")]
    NotPositive(&'static str),
    /// A `_low` threshold is not below its `_high`.
    #[error("risk.{0}_low must be below risk.{0}_high")]
    Range(&'static str),
    /// `outcome_alpha` is outside (0, 1].
    #[error("risk.outcome_alpha must be in (0, 1]")]
    Alpha,
    /// `max_identities` is zero.
    #[error("risk.max_identities must be at least 1")]
    NoIdentities,
}

impl RiskConfig {
    /// Checks every field, so a bad `[risk]` section fails at load time
    /// rather than producing odd scores (the engine would fall back to
    /// defaults field by field).
    pub fn validate(&self) -> Result<(), RiskConfigError> {
        if self.max_identities == 0 {
            return Err(RiskConfigError::NoIdentities);
        }
        for (name, v) in self.non_negative() {
            if !(v.is_finite() && v >= 0.0) {
                return Err(RiskConfigError::Negative(name));
            }
        }
        for (name, v) in self.positive() {
            if !(v.is_finite() && v > 0.0) {
                return Err(RiskConfigError::NotPositive(name));
            }
        }
        for (name, lo, hi) in self.ranges() {
            if lo >= hi {
                return Err(RiskConfigError::Range(name));
            }
        }
        if !(self.outcome_alpha > 0.0 && self.outcome_alpha <= 1.0) {
            return Err(RiskConfigError::Alpha);
        }
        Ok(())
    }

    fn non_negative(&self) -> [(&'static str, f64); 20] {
        [
            ("rate_weight", self.rate_weight),
            ("rate_floor_per_sec", self.rate_floor_per_sec),
            ("rate_ratio_low", self.rate_ratio_low),
            ("new_tool_weight", self.new_tool_weight),
            ("new_tool_points", self.new_tool_points),
            ("new_tool_plain_cap", self.new_tool_plain_cap),
            (
                "new_destructive_tool_points",
                self.new_destructive_tool_points,
            ),
            ("denial_weight", self.denial_weight),
            ("denial_ratio_low", self.denial_ratio_low),
            ("error_weight", self.error_weight),
            ("error_ratio_low", self.error_ratio_low),
            ("outcome_min", self.outcome_min),
            ("labelled_weight", self.labelled_weight),
            ("labelled_low", self.labelled_low),
            ("suspicious_weight", self.suspicious_weight),
            ("suspicious_points", self.suspicious_points),
            ("findings_weight", self.findings_weight),
            ("finding_low_points", self.finding_low_points),
            ("finding_medium_points", self.finding_medium_points),
            ("finding_high_points", self.finding_high_points),
        ]
    }

    fn positive(&self) -> [(&'static str, f64); 8] {
        [
            ("rate_short_secs", self.rate_short_secs),
            ("rate_long_secs", self.rate_long_secs),
            ("rate_warmup_secs", self.rate_warmup_secs),
            ("new_tool_half_life_secs", self.new_tool_half_life_secs),
            ("outcome_half_life_secs", self.outcome_half_life_secs),
            ("labelled_half_life_secs", self.labelled_half_life_secs),
            ("suspicious_half_life_secs", self.suspicious_half_life_secs),
            ("findings_half_life_secs", self.findings_half_life_secs),
        ]
    }

    fn ranges(&self) -> [(&'static str, f64, f64); 4] {
        [
            ("rate_ratio", self.rate_ratio_low, self.rate_ratio_high),
            (
                "denial_ratio",
                self.denial_ratio_low,
                self.denial_ratio_high,
            ),
            ("error_ratio", self.error_ratio_low, self.error_ratio_high),
            ("labelled", self.labelled_low, self.labelled_high),
        ]
    }

    /// A copy with every invalid field replaced by its default, so the
    /// engine never computes with NaN or divides by zero.
    pub(crate) fn sanitized(&self) -> Self {
        let d = Self::default();
        let mut c = self.clone();
        let nn = |v: f64, dv: f64| if v.is_finite() && v >= 0.0 { v } else { dv };
        let pos = |v: f64, dv: f64| if v.is_finite() && v > 0.0 { v } else { dv };
        c.max_identities = c.max_identities.max(1);
        c.rate_weight = nn(c.rate_weight, d.rate_weight);
        c.rate_floor_per_sec = nn(c.rate_floor_per_sec, d.rate_floor_per_sec);
        c.new_tool_weight = nn(c.new_tool_weight, d.new_tool_weight);
        c.new_tool_points = nn(c.new_tool_points, d.new_tool_points);
        c.new_tool_plain_cap = nn(c.new_tool_plain_cap, d.new_tool_plain_cap);
        c.new_destructive_tool_points =
            nn(c.new_destructive_tool_points, d.new_destructive_tool_points);
        c.denial_weight = nn(c.denial_weight, d.denial_weight);
        c.error_weight = nn(c.error_weight, d.error_weight);
        c.outcome_min = nn(c.outcome_min, d.outcome_min);
        c.labelled_weight = nn(c.labelled_weight, d.labelled_weight);
        c.suspicious_weight = nn(c.suspicious_weight, d.suspicious_weight);
        c.suspicious_points = nn(c.suspicious_points, d.suspicious_points);
        c.findings_weight = nn(c.findings_weight, d.findings_weight);
        c.finding_low_points = nn(c.finding_low_points, d.finding_low_points);
        c.finding_medium_points = nn(c.finding_medium_points, d.finding_medium_points);
        c.finding_high_points = nn(c.finding_high_points, d.finding_high_points);
        c.rate_short_secs = pos(c.rate_short_secs, d.rate_short_secs);
        c.rate_long_secs = pos(c.rate_long_secs, d.rate_long_secs);
        c.rate_warmup_secs = pos(c.rate_warmup_secs, d.rate_warmup_secs);
        c.new_tool_half_life_secs = pos(c.new_tool_half_life_secs, d.new_tool_half_life_secs);
        c.outcome_half_life_secs = pos(c.outcome_half_life_secs, d.outcome_half_life_secs);
        c.labelled_half_life_secs = pos(c.labelled_half_life_secs, d.labelled_half_life_secs);
        c.suspicious_half_life_secs = pos(c.suspicious_half_life_secs, d.suspicious_half_life_secs);
        c.findings_half_life_secs = pos(c.findings_half_life_secs, d.findings_half_life_secs);
        if !(c.outcome_alpha > 0.0 && c.outcome_alpha <= 1.0) {
            c.outcome_alpha = d.outcome_alpha;
        }
        let fix = |lo: &mut f64, hi: &mut f64, dlo: f64, dhi: f64| {
            if !(lo.is_finite() && hi.is_finite() && *lo >= 0.0 && *lo < *hi) {
                *lo = dlo;
                *hi = dhi;
            }
        };
        fix(
            &mut c.rate_ratio_low,
            &mut c.rate_ratio_high,
            d.rate_ratio_low,
            d.rate_ratio_high,
        );
        fix(
            &mut c.denial_ratio_low,
            &mut c.denial_ratio_high,
            d.denial_ratio_low,
            d.denial_ratio_high,
        );
        fix(
            &mut c.error_ratio_low,
            &mut c.error_ratio_high,
            d.error_ratio_low,
            d.error_ratio_high,
        );
        fix(
            &mut c.labelled_low,
            &mut c.labelled_high,
            d.labelled_low,
            d.labelled_high,
        );
        c
    }
}
