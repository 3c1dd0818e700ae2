//! Prometheus metrics, served as text on the admin listener so the gateway
//! can be watched live: request outcomes, per-stage latency, sessions,
//! upstream health, authentication failures, risk and containment.
//!
//! Label values are bounded: methods outside the MCP set are counted as
//! `other`, upstreams are the configured names, reasons and actions are
//! fixed strings chosen by the gateway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, linear_buckets, Histogram};
use prometheus_client::registry::Registry;

/// MCP methods counted under their own name; anything else is `other`, so a
/// client cannot grow the label set without bound.
const METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "logging/setLevel",
    "server/discover",
    "subscriptions/listen",
    "sampling/createMessage",
    "elicitation/create",
    "roots/list",
];

/// The bounded label value for a JSON-RPC method.
pub fn method_label(method: &str) -> &'static str {
    METHODS
        .iter()
        .copied()
        .find(|m| *m == method)
        .unwrap_or("other")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    decision: &'static str,
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabels {
    detector: &'static str,
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// A pipeline stage whose latency is measured separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Authentication of the HTTP request (tokens, certificate checks).
    Identity,
    /// One policy decision, including the risk update before it.
    Policy,
    /// Content inspection of one call: argument DLP, then result DLP and
    /// injection markers (recording included).
    Inspect,
    /// The upstream round trip of a forwarded call.
    Upstream,
    /// Waiting for the call's audit records to be durable.
    Audit,
    /// The whole request, from dispatch to the final answer.
    Total,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Identity => "identity",
            Stage::Policy => "policy",
            Stage::Inspect => "inspect",
            Stage::Upstream => "upstream",
            Stage::Audit => "audit",
            Stage::Total => "total",
        }
    }
}

/// Audit-log counters read at scrape time (the log keeps its own).
#[derive(Clone, Copy, Debug, Default)]
pub struct AuditGauges {
    /// Records written since start.
    pub records: u64,
    /// Checkpoints written since start.
    pub checkpoints: u64,
    /// Write or sync errors since start.
    pub errors: u64,
}

/// Every metric the gateway exports, registered once.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    stages: Family<StageLabels, Histogram, fn() -> Histogram>,
    sessions: Gauge,
    upstream_up: Family<UpstreamLabels, Gauge>,
    auth_failures: Family<ReasonLabels, Counter>,
    risk: Histogram,
    containment: Family<ActionLabels, Counter>,
    findings: Family<FindingLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    audit_records: Gauge,
    audit_checkpoints: Gauge,
    audit_errors: Gauge,
    store_current: Gauge,
    store_pending: Gauge,
    scrapes: AtomicU64,
}

fn stage_histogram() -> Histogram {
    // 5 µs .. ~42 s in powers of two: covers a policy decision and a slow upstream.
    Histogram::new(exponential_buckets(0.000_005, 2.0, 24))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `portcullis_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("portcullis");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests decided, by MCP method, decision and upstream",
            requests.clone(),
        );
        let stages: Family<StageLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(stage_histogram);
        registry.register(
            "stage_duration_seconds",
            "Latency of each pipeline stage",
            stages.clone(),
        );
        let sessions = Gauge::default();
        registry.register("sessions_active", "Open client sessions", sessions.clone());
        let upstream_up = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "upstream_up",
            "Whether the last exchange with an upstream succeeded (1) or failed (0)",
            upstream_up.clone(),
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "Refused authentications, by reason",
            auth_failures.clone(),
        );
        let risk = Histogram::new(linear_buckets(10.0, 10.0, 10));
        registry.register(
            "risk_score",
            "Risk score of the calling identity, observed on every decided request",
            risk.clone(),
        );
        let containment = Family::<ActionLabels, Counter>::default();
        registry.register(
            "containment_actions",
            "Containment actions taken (revocations, session kills, quarantines)",
            containment.clone(),
        );
        let findings = Family::<FindingLabels, Counter>::default();
        registry.register(
            "inspection_findings",
            "Content-inspection findings (DLP, injection, poisoning, shadowing, pins), by detector family and what was done",
            findings.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy reloads, by result",
            reloads.clone(),
        );
        let audit_records = Gauge::default();
        registry.register(
            "audit_records_written",
            "Audit records written since start",
            audit_records.clone(),
        );
        let audit_checkpoints = Gauge::default();
        registry.register(
            "audit_checkpoints_written",
            "Signed audit checkpoints written since start",
            audit_checkpoints.clone(),
        );
        let audit_errors = Gauge::default();
        registry.register(
            "audit_write_errors",
            "Audit write or sync errors since start (the gateway fails closed on them)",
            audit_errors.clone(),
        );
        let store_current = Gauge::default();
        registry.register(
            "store_current",
            "Whether the state store's reads are current (0: a shared store is unreachable and the last known state is enforced)",
            store_current.clone(),
        );
        let store_pending = Gauge::default();
        registry.register(
            "store_pending_writes",
            "Writes taken here and not yet stored (retried until they are)",
            store_pending.clone(),
        );
        Metrics {
            registry,
            requests,
            stages,
            sessions,
            upstream_up,
            auth_failures,
            risk,
            containment,
            findings,
            reloads,
            audit_records,
            audit_checkpoints,
            audit_errors,
            store_current,
            store_pending,
            scrapes: AtomicU64::new(0),
        }
    }

    /// Counts one decided request.
    pub fn request(&self, method: &str, allowed: bool, upstream: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method_label(method),
                decision: if allowed { "allow" } else { "deny" },
                upstream: upstream.to_owned(),
            })
            .inc();
    }

    /// Records how long one stage took.
    pub fn stage(&self, stage: Stage, took: Duration) {
        self.stages
            .get_or_create(&StageLabels {
                stage: stage.as_str(),
            })
            .observe(took.as_secs_f64());
    }

    /// Sets the number of open sessions.
    pub fn set_sessions(&self, n: usize) {
        self.sessions.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Sets the state store's link (at scrape time).
    pub fn set_store(&self, current: bool, pending_writes: usize) {
        self.store_current.set(i64::from(current));
        self.store_pending
            .set(i64::try_from(pending_writes).unwrap_or(i64::MAX));
    }

    /// Marks an upstream healthy or not after an exchange.
    pub fn upstream(&self, name: &str, up: bool) {
        self.upstream_up
            .get_or_create(&UpstreamLabels {
                upstream: name.to_owned(),
            })
            .set(i64::from(up));
    }

    /// Counts a refused authentication.
    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Observes an identity's risk score at a decision.
    pub fn risk(&self, score: u8) {
        self.risk.observe(f64::from(score));
    }

    /// Counts a containment action.
    pub fn containment(&self, action: &'static str) {
        self.containment
            .get_or_create(&ActionLabels { action })
            .inc();
    }

    /// Counts inspection findings of one detector family and the action
    /// taken (`flag`, `redact`, `block`, `wrap`, `hide`, `warn`).
    pub fn findings(&self, detector: &'static str, action: &'static str, n: u64) {
        self.findings
            .get_or_create(&FindingLabels { detector, action })
            .inc_by(n);
    }

    /// Counts a policy reload.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "rejected" },
            })
            .inc();
    }

    /// Renders the Prometheus text exposition, with the audit counters as
    /// of now.
    pub fn render(&self, audit: Option<AuditGauges>) -> String {
        if let Some(a) = audit {
            let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.audit_records.set(g(a.records));
            self.audit_checkpoints.set(g(a.checkpoints));
            self.audit_errors.set(g(a.errors));
        }
        self.scrapes.fetch_add(1, Ordering::Relaxed);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            // Encoding into a String cannot fail; keep what was written.
            tracing::error!("metrics encoding failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_bounded_labels() {
        let m = Metrics::new();
        m.request("tools/call", true, "files");
        m.request("tools/call", true, "files");
        m.request("x/evil-method-1", false, "-");
        m.stage(Stage::Policy, Duration::from_micros(12));
        m.auth_failure("expired");
        m.risk(42);
        m.set_sessions(3);
        m.set_store(false, 2);
        m.upstream("files", true);
        let text = m.render(Some(AuditGauges {
            records: 7,
            checkpoints: 1,
            errors: 0,
        }));
        assert!(text.contains(
            "portcullis_requests_total{method=\"tools/call\",decision=\"allow\",upstream=\"files\"} 2"
        ));
        assert!(text.contains("method=\"other\",decision=\"deny\""));
        assert!(!text.contains("evil-method"));
        assert!(text.contains("portcullis_sessions_active 3"));
        assert!(text.contains("portcullis_store_current 0"));
        assert!(text.contains("portcullis_store_pending_writes 2"));
        assert!(text.contains("portcullis_audit_records_written 7"));
        assert!(text.contains("portcullis_auth_failures_total{reason=\"expired\"} 1"));
        assert!(text.contains("portcullis_stage_duration_seconds_count{stage=\"policy\"} 1"));
        assert!(text.contains("portcullis_risk_score_bucket{le=\"50.0\"} 1"));
        assert!(text.ends_with("# EOF\n"));
    }
}
