//! The monitoring stage of the pipeline: turns what the other stages did
//! (authentication failures, decisions, findings, session and policy
//! events, containment actions) into audit records, metrics and risk
//! updates, and holds a request's answer until its records are durable.
//!
//! Knows nothing of how requests are routed: the gateway calls it with
//! facts, and wraps each request's output channel in [`Out`] so no answer
//! leaves before the records that justify it are written.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_identity::principal::Principal;
use portcullis_monitor::audit::{AnchorSink, AuditConfig, AuditLog, Ticket};
use portcullis_monitor::metrics::{AuditGauges, Metrics};
use portcullis_monitor::risk::{Outcome, RiskEngine, RiskScore, SystemClock};
use portcullis_policy::{Decision, ResourceFacts, ResourceKind};
use portcullis_wire::{codes, Kind, Message};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::session::Client;

/// How tool arguments (and results) appear in audit records: they may
/// carry secrets, so operators choose between none, a digest, and a copy
/// with DLP classes redacted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentMode {
    /// Not recorded at all.
    Omit,
    /// SHA-256 of the canonical JSON: proves what was sent without showing it.
    #[default]
    Hash,
    /// The value with every DLP class redacted.
    Redacted,
}

/// `[audit]` in the config: where and how decisions are recorded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditCfg {
    /// The live JSON Lines file; no file, no audit log (a warning at start).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `group` (default: written before the answer, fsync every
    /// `group_commit_ms`), `record` (fsync before the answer) or `none`.
    #[serde(default = "default_sync")]
    pub sync: String,
    /// Group-commit fsync period in milliseconds.
    #[serde(default = "default_group_ms")]
    pub group_commit_ms: u64,
    /// A signed checkpoint after this many records…
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// …or after this many seconds with new records.
    #[serde(default = "default_checkpoint_secs")]
    pub checkpoint_secs: u64,
    /// Rotate the live file past this many MiB (0: never).
    #[serde(default = "default_rotate_mb")]
    pub rotate_mb: u64,
    /// Where checkpoints are also exported: a file path, or `-` for stdout.
    #[serde(default)]
    pub anchors: Option<String>,
    /// The Ed25519 signing key (PKCS#8); default `<state_dir>/audit-ed25519.pk8`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// How tool arguments are recorded (default `hash`).
    #[serde(default)]
    pub arguments: ContentMode,
    /// How tool results are recorded (default `omit`: no result record).
    #[serde(default = "omit")]
    pub results: ContentMode,
}

fn default_sync() -> String {
    "group".into()
}
fn default_group_ms() -> u64 {
    5
}
fn default_checkpoint_every() -> u64 {
    1000
}
fn default_checkpoint_secs() -> u64 {
    10
}
fn default_rotate_mb() -> u64 {
    64
}
fn omit() -> ContentMode {
    ContentMode::Omit
}

impl Default for AuditCfg {
    fn default() -> Self {
        AuditCfg {
            path: None,
            sync: default_sync(),
            group_commit_ms: default_group_ms(),
            checkpoint_every: default_checkpoint_every(),
            checkpoint_secs: default_checkpoint_secs(),
            rotate_mb: default_rotate_mb(),
            anchors: None,
            key: None,
            arguments: ContentMode::Hash,
            results: ContentMode::Omit,
        }
    }
}

impl AuditCfg {
    /// The library's settings for this section, or why they are refused.
    pub fn to_audit_config(
        &self,
        state_dir: Option<&std::path::Path>,
    ) -> Result<AuditConfig, String> {
        let Some(path) = &self.path else {
            return Err("audit.path: not set".into());
        };
        let key = match &self.key {
            Some(k) => k.clone(),
            None => match state_dir {
                Some(s) => s.join("audit-ed25519.pk8"),
                None => portcullis_identity::paths::state_dir()
                    .map_err(|e| format!("audit.key: no state directory: {e}"))?
                    .join("audit-ed25519.pk8"),
            },
        };
        let mut c = AuditConfig::new(path.clone(), key);
        c.sync = self
            .sync
            .parse()
            .map_err(|_| format!("audit.sync: {:?} is not record, group or none", self.sync))?;
        if self.group_commit_ms == 0 || self.group_commit_ms > 1000 {
            return Err("audit.group_commit_ms: must be 1..=1000".into());
        }
        c.group_commit = Duration::from_millis(self.group_commit_ms);
        c.checkpoint_every = self.checkpoint_every.max(1);
        c.checkpoint_interval = Duration::from_secs(self.checkpoint_secs.max(1));
        c.rotate_bytes = (self.rotate_mb > 0).then(|| self.rotate_mb.saturating_mul(1 << 20));
        c.anchors = self.anchors.as_ref().map(|a| {
            if a == "-" {
                AnchorSink::Stdout
            } else {
                AnchorSink::File(PathBuf::from(a))
            }
        });
        Ok(c)
    }
}

/// W3C trace context of one request: taken from the client's
/// `traceparent` when valid, otherwise a new trace, so audit records,
/// logs and upstream calls of one request share a trace id.
#[derive(Debug, Clone)]
pub struct TraceContext {
    trace_id: [u8; 16],
    /// The caller's span, when it sent a valid `traceparent`.
    parent: Option<[u8; 8]>,
    span_id: [u8; 8],
    sampled: bool,
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}

impl TraceContext {
    /// Continues the caller's trace (a new span of ours) or starts one.
    pub fn from_header(traceparent: Option<&str>) -> TraceContext {
        match traceparent.and_then(parse_traceparent) {
            Some((trace_id, parent, sampled)) => TraceContext {
                trace_id,
                parent: Some(parent),
                span_id: random(),
                sampled,
            },
            None => TraceContext {
                trace_id: random(),
                parent: None,
                span_id: random(),
                sampled: true,
            },
        }
    }

    /// Opens the request's OpenTelemetry span — a child of the caller's
    /// span when it sent one — and adopts the span's ids, so audit records,
    /// the exported span and upstream `traceparent`s agree.
    #[cfg(feature = "otel")]
    pub fn otel_span(&mut self, method: &str) -> tracing::Span {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let span = tracing::info_span!(
            "mcp.request",
            otel.name = %format!("mcp {method}"),
            otel.kind = "server",
            rpc.system = "jsonrpc",
            rpc.method = %method,
        );
        if let Some(parent) = self.parent {
            let flags = if self.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            };
            let remote = SpanContext::new(
                TraceId::from_bytes(self.trace_id),
                SpanId::from_bytes(parent),
                flags,
                true,
                TraceState::default(),
            );
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            self.trace_id = sc.trace_id().to_bytes();
            self.span_id = sc.span_id().to_bytes();
            self.sampled = sc.is_sampled();
        }
        span
    }

    /// The caller's span id (16 hex digits), when it sent a `traceparent`.
    pub fn parent_span_id(&self) -> Option<String> {
        self.parent.map(hex::encode)
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The header value for an upstream call made within this request.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            u8::from(self.sampled)
        )
    }
}

/// Parses a version-00 `traceparent` (W3C Trace Context §3.2); an invalid
/// one (bad length, non-hex, all-zero ids) is ignored, as the spec says.
fn parse_traceparent(v: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version == "ff" || trace.len() != 32 || parent.len() != 16 {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let lower = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower(version) || !lower(trace) || !lower(parent) || flags.len() != 2 || !lower(flags) {
        return None;
    }
    let mut id = [0u8; 16];
    hex::decode_to_slice(trace, &mut id).ok()?;
    let mut p = [0u8; 8];
    hex::decode_to_slice(parent, &mut p).ok()?;
    if id == [0; 16] || p == [0; 8] {
        return None;
    }
    let f = u8::from_str_radix(flags, 16).ok()?;
    Some((id, p, f & 1 == 1))
}

/// What the monitoring stage knows about the request being handled.
#[derive(Debug)]
pub struct RequestCtx {
    /// When the gateway started handling it.
    pub start: Instant,
    /// Its trace context.
    pub trace: TraceContext,
    /// The highest audit ticket issued for it (0: none yet).
    ticket: AtomicU64,
}

impl RequestCtx {
    /// A request that starts now.
    pub fn new(trace: TraceContext) -> Arc<RequestCtx> {
        Arc::new(RequestCtx {
            start: Instant::now(),
            trace,
            ticket: AtomicU64::new(0),
        })
    }

    fn note(&self, t: Ticket) {
        self.ticket.fetch_max(t.0, Ordering::AcqRel);
    }
}

tokio::task_local! {
    static REQUEST: Arc<RequestCtx>;
}

/// Runs `fut` as the handling of one request: records and upstream calls
/// made inside it carry its trace, and its answers wait for its records.
pub async fn in_request<F: std::future::Future>(ctx: Arc<RequestCtx>, fut: F) -> F::Output {
    REQUEST.scope(ctx, fut).await
}

/// The `traceparent` for an upstream call made by the current request.
pub fn current_traceparent() -> Option<String> {
    REQUEST.try_with(|c| c.trace.traceparent()).ok()
}

fn current_trace_id() -> Option<String> {
    REQUEST.try_with(|c| c.trace.trace_id()).ok()
}

fn current_elapsed() -> Option<Duration> {
    REQUEST.try_with(|c| c.start.elapsed()).ok()
}

/// The identity tuple as recorded: never a token, never a key.
#[derive(Serialize)]
struct IdentityView<'a> {
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert: Option<&'a str>,
    strength: &'static str,
}

fn identity<'a>(key: &'a str, p: &'a Principal) -> IdentityView<'a> {
    IdentityView {
        key,
        agent: p.workload.as_ref().map(|w| w.to_string()),
        user: p.user_id(),
        device: p.device.verified().map(|d| d.device_id.as_str()),
        cert: p.fingerprint(),
        strength: p.strength.as_str(),
    }
}

#[derive(Serialize)]
struct DecisionBody<'a> {
    identity: IdentityView<'a>,
    #[serde(skip_serializing_if = "str::is_empty")]
    session: &'a str,
    method: &'a str,
    action: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool: Option<&'a str>,
    target: &'a str,
    upstream: &'a str,
    decision: &'static str,
    reason: &'a str,
    policies: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    errors: &'a [String],
    policy_hash: &'a str,
    risk: &'a RiskScore,
    latency_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<Value>,
}

/// One decision as the policy stage made it, for the record.
pub struct DecisionEvent<'a> {
    /// Who asked.
    pub client: &'a Client,
    /// The policy action.
    pub action: &'a str,
    /// The JSON-RPC method.
    pub method: &'a str,
    /// What it was about.
    pub resource: &'a ResourceFacts,
    /// The answer and why.
    pub decision: &'a Decision,
    /// The policy set that answered.
    pub policy_hash: &'a str,
    /// The risk score it was decided with.
    pub risk: &'a RiskScore,
    /// The tool arguments, if any.
    pub args: Option<&'a Value>,
    /// How long the policy stage took.
    pub took: Duration,
}

/// One decision as the operations console shows it live: what was asked,
/// by whom, and what the policy stage answered.
#[derive(Debug, Clone, Serialize)]
pub struct LiveDecision {
    /// When, in Unix milliseconds.
    pub time: u64,
    /// The identity key.
    pub identity: String,
    /// The JSON-RPC method.
    pub method: String,
    /// The tool (or other target) asked for; empty when none.
    pub tool: String,
    /// `allow`, `deny`, or `redact` (allowed with redaction obligations).
    pub decision: &'static str,
    /// The determining policies, comma-separated.
    pub policy: String,
    /// How long the request had taken when decided (µs).
    pub latency_us: u64,
}

/// How many live decisions a watcher may fall behind before it skips.
const LIVE_CAPACITY: usize = 1024;

/// A subscription to live decisions; counts as a watcher while it lives,
/// so the decision path builds events only when someone listens.
pub struct DecisionFeed {
    rx: tokio::sync::broadcast::Receiver<Arc<LiveDecision>>,
    watchers: Arc<std::sync::atomic::AtomicUsize>,
}

impl DecisionFeed {
    /// The next decision; `Ok(None)` when the monitor is gone, `Err(n)` when
    /// `n` decisions were skipped because this watcher fell behind.
    pub async fn next(&mut self) -> Result<Option<Arc<LiveDecision>>, u64> {
        match self.rx.recv().await {
            Ok(d) => Ok(Some(d)),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => Ok(None),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => Err(n),
        }
    }
}

impl Drop for DecisionFeed {
    fn drop(&mut self) {
        self.watchers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The outcome of the last policy reload, so operators can see a rejected one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadStatus {
    /// When (Unix seconds).
    pub at: u64,
    /// `Ok(hash)` of the new set, or `Err(errors)` (the running set was kept).
    pub result: Result<String, String>,
}

/// The monitoring stage: audit log, metrics and risk engine.
pub struct Monitor {
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Per-identity behavioural risk.
    pub risk: RiskEngine,
    audit: Option<AuditLog>,
    audit_path: Option<PathBuf>,
    arguments: ContentMode,
    results: ContentMode,
    live: tokio::sync::broadcast::Sender<Arc<LiveDecision>>,
    watchers: Arc<std::sync::atomic::AtomicUsize>,
    last_reload: std::sync::Mutex<Option<ReloadStatus>>,
    /// Recent call latency per upstream (µs, moving average).
    upstream_latency: std::sync::RwLock<std::collections::HashMap<String, Arc<AtomicU64>>>,
}

/// Upstreams whose latency is tracked, at most (names come from config).
const MAX_LATENCY_UPSTREAMS: usize = 256;

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// A value as the configured mode records it.
fn content(mode: ContentMode, v: &Value) -> Option<Value> {
    match mode {
        ContentMode::Omit => None,
        ContentMode::Hash => {
            Some(serde_json::json!({"sha256": sha256_hex(v.to_string().as_bytes())}))
        }
        ContentMode::Redacted => {
            let mut c = v.clone();
            let (_, _) = portcullis_inspect::dlp::redact(&mut c, &["secrets".into(), "pii".into()]);
            Some(serde_json::json!({"redacted": c}))
        }
    }
}

impl Monitor {
    /// A monitor without an audit file (tests, `wrap` without config).
    pub fn without_audit(cfg: &Config) -> Monitor {
        Monitor {
            metrics: Metrics::new(),
            risk: RiskEngine::new(cfg.risk.clone(), Arc::new(SystemClock::default())),
            audit: None,
            audit_path: None,
            arguments: cfg.audit.arguments,
            results: cfg.audit.results,
            live: tokio::sync::broadcast::channel(LIVE_CAPACITY).0,
            watchers: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            last_reload: std::sync::Mutex::new(None),
            upstream_latency: std::sync::RwLock::new(std::collections::HashMap::new()),
        }
    }

    /// Subscribes to live decisions (bounded: a watcher that falls behind
    /// skips, the request path never waits for it).
    pub fn watch_decisions(&self) -> DecisionFeed {
        self.watchers.fetch_add(1, Ordering::AcqRel);
        DecisionFeed {
            rx: self.live.subscribe(),
            watchers: self.watchers.clone(),
        }
    }

    /// How many live-decision watchers there are now.
    pub fn decision_watchers(&self) -> usize {
        self.watchers.load(Ordering::Relaxed)
    }

    /// The live audit file, when auditing, so the console can search it.
    pub fn audit_path(&self) -> Option<&std::path::Path> {
        self.audit_path.as_deref()
    }

    /// The audit log's Ed25519 public key (hex), to verify its chain with.
    pub fn audit_key_hex(&self) -> Option<String> {
        self.audit.as_ref().map(AuditLog::public_key_hex)
    }

    /// The last policy reload's outcome, if there was one.
    pub fn last_reload(&self) -> Option<ReloadStatus> {
        self.last_reload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The recent call latency of `upstream` (µs, a moving average of the
    /// calls' whole time through the gateway), once it has had a call.
    pub fn upstream_latency_us(&self, upstream: &str) -> Option<u64> {
        self.upstream_latency
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(upstream)
            .map(|a| a.load(Ordering::Relaxed))
    }

    fn note_latency(&self, upstream: &str, t: Duration) {
        let us = u64::try_from(t.as_micros()).unwrap_or(u64::MAX).max(1);
        let step = |old: u64| Some(if old == 0 { us } else { (old / 8) * 7 + us / 8 });
        if let Some(a) = self
            .upstream_latency
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(upstream)
        {
            let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, step);
            return;
        }
        let mut w = self
            .upstream_latency
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if w.len() < MAX_LATENCY_UPSTREAMS || w.contains_key(upstream) {
            let a = w.entry(upstream.to_owned()).or_default();
            let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, step);
        }
    }

    /// Sends a decision to live watchers; nothing is built without one.
    fn publish(&self, e: &DecisionEvent<'_>) {
        if self.watchers.load(Ordering::Relaxed) == 0 {
            return;
        }
        let d = e.decision;
        let decision = match (d.allow, d.obligations.redact.is_empty()) {
            (false, _) => "deny",
            (true, true) => "allow",
            (true, false) => "redact",
        };
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let ev = LiveDecision {
            time,
            identity: e.client.owner.clone(),
            method: e.method.to_owned(),
            tool: if e.resource.kind == ResourceKind::Server {
                String::new()
            } else {
                e.resource.id.clone()
            },
            decision,
            policy: d.determining.join(", "),
            latency_us: current_elapsed()
                .unwrap_or(e.took)
                .as_micros()
                .try_into()
                .unwrap_or(u64::MAX),
        };
        // No receiver left (a watcher just went): nothing to do.
        let _ = self.live.send(Arc::new(ev));
    }

    /// Builds the stage from config, opening (and recovering) the audit
    /// file when one is configured.
    pub fn from_config(cfg: &Config) -> Result<Monitor, String> {
        let mut m = Monitor::without_audit(cfg);
        if cfg.audit.path.is_some() {
            let ac = cfg.audit.to_audit_config(cfg.state_dir.as_deref())?;
            let path = ac.path.clone();
            for file in [&path, &ac.key_path] {
                if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("audit directory {}: {e}", dir.display()))?;
                }
            }
            let log =
                AuditLog::open(ac).map_err(|e| format!("audit log {}: {e}", path.display()))?;
            tracing::info!(path = %path.display(), key = %log.public_key_hex(), "audit log open");
            m.audit = Some(log);
            m.audit_path = Some(path);
        }
        Ok(m)
    }

    /// Whether an audit file is configured.
    pub fn auditing(&self) -> bool {
        self.audit.is_some()
    }

    /// Whether the audit log can no longer write: the gateway then denies
    /// every request rather than serve it unaudited.
    pub fn audit_failed(&self) -> bool {
        self.audit.as_ref().is_some_and(AuditLog::is_failed)
    }

    /// The Prometheus exposition, with audit counters as of now.
    pub fn render_metrics(&self) -> String {
        let g = self.audit.as_ref().map(|a| {
            let s = a.stats();
            AuditGauges {
                records: s.records,
                checkpoints: s.checkpoints,
                errors: s.write_errors,
            }
        });
        self.metrics.render(g)
    }

    fn append<T: Serialize>(&self, kind: &str, body: &T) {
        if let Some(a) = &self.audit {
            let t = a.append(kind, body);
            let _ = REQUEST.try_with(|c| c.note(t));
        }
    }

    /// Records one decision: audit record, metrics, and the outcome in the
    /// identity's risk.
    pub fn decision(&self, e: DecisionEvent<'_>) {
        let d = e.decision;
        self.metrics.request(e.method, d.allow, &e.resource.server);
        self.metrics
            .stage(portcullis_monitor::metrics::Stage::Policy, e.took);
        self.metrics.risk(e.risk.score);
        self.risk.on_outcome(
            &e.client.owner,
            if d.allow {
                Outcome::Allowed
            } else {
                Outcome::Denied
            },
        );
        self.publish(&e);
        if self.audit.is_none() {
            return;
        }
        let is_tool = e.resource.kind == ResourceKind::Tool;
        let body = DecisionBody {
            identity: identity(&e.client.owner, &e.client.principal),
            session: &e.client.id,
            method: e.method,
            action: e.action,
            tool: is_tool.then_some(e.resource.id.as_str()),
            target: &e.resource.id,
            upstream: &e.resource.server,
            decision: if d.allow { "allow" } else { "deny" },
            reason: &d.reason,
            policies: &d.determining,
            errors: &d.errors,
            policy_hash: e.policy_hash,
            risk: e.risk,
            latency_us: current_elapsed()
                .unwrap_or(e.took)
                .as_micros()
                .try_into()
                .unwrap_or(u64::MAX),
            trace_id: current_trace_id(),
            args: e.args.and_then(|a| content(self.arguments, a)),
        };
        self.append("decision", &body);
    }

    /// Records a refused authentication (never the credential itself).
    pub fn auth_failure(&self, reason: &str, metric: &'static str, remote: &str, status: u16) {
        self.metrics.auth_failure(metric);
        self.append(
            "auth_failure",
            &serde_json::json!({"reason": reason, "class": metric, "remote": remote, "status": status}),
        );
    }

    /// Records a request refused before it was read as JSON-RPC (too
    /// large, too deep, too slow, not JSON): who sent it and why, so probing
    /// with malformed bodies leaves a trace. Never the body.
    pub fn bad_request(&self, p: &Principal, route: &str, status: u16, reason: &str) {
        let key = p.key();
        self.append(
            "bad_request",
            &serde_json::json!({
                "identity": identity(&key, p),
                "route": route,
                "status": status,
                "reason": reason,
                "trace_id": current_trace_id(),
            }),
        );
    }

    /// Records a new session.
    pub fn session_start(&self, c: &Client) {
        self.append(
            "session_start",
            &serde_json::json!({
                "identity": identity(&c.owner, &c.principal),
                "session": c.id,
                "revision": c.revision.as_str(),
                "route": c.route,
                "trace_id": current_trace_id(),
            }),
        );
    }

    /// Records the end of a session and why.
    pub fn session_end(&self, c: &Client, reason: &str) {
        self.append(
            "session_end",
            &serde_json::json!({
                "identity": identity(&c.owner, &c.principal),
                "session": c.id,
                "reason": reason,
                "duration_ms": u64::try_from(c.created.elapsed().as_millis()).unwrap_or(u64::MAX),
            }),
        );
    }

    /// Records a policy reload, kept or rejected.
    pub fn policy_reload(&self, result: Result<&str, &str>, running: &str) {
        self.metrics.reload(result.is_ok());
        *self.last_reload.lock().unwrap_or_else(|e| e.into_inner()) = Some(ReloadStatus {
            at: portcullis_contain::now_unix(),
            result: result.map(str::to_owned).map_err(str::to_owned),
        });
        let body = match result {
            Ok(hash) => serde_json::json!({"result": "ok", "policy_hash": hash}),
            Err(e) => {
                serde_json::json!({"result": "rejected", "errors": e, "policy_hash": running})
            }
        };
        self.append("policy_reload", &body);
    }

    /// Records a containment action (revocation, session kill, …).
    pub fn containment(&self, action: &'static str, target: &str, reason: Option<&str>, by: &str) {
        self.metrics.containment(action);
        self.append(
            "containment",
            &serde_json::json!({"action": action, "target": target, "reason": reason, "by": by}),
        );
    }

    /// Records a detector finding and feeds it to the identity's risk.
    pub fn finding(
        &self,
        owner: &str,
        detector: &str,
        rule: &str,
        severity: portcullis_monitor::risk::FindingSeverity,
        tool: Option<&str>,
        detail: Value,
    ) {
        self.risk.on_finding(owner, severity);
        self.record_finding(owner, detector, rule, severity, tool, detail);
    }

    /// Records a detector finding whose risk was already counted.
    pub fn record_finding(
        &self,
        owner: &str,
        detector: &str,
        rule: &str,
        severity: portcullis_monitor::risk::FindingSeverity,
        tool: Option<&str>,
        detail: Value,
    ) {
        let sev = match severity {
            portcullis_monitor::risk::FindingSeverity::Low => "low",
            portcullis_monitor::risk::FindingSeverity::Medium => "medium",
            portcullis_monitor::risk::FindingSeverity::High => "high",
        };
        self.append(
            "finding",
            &serde_json::json!({
                "identity": {"key": owner},
                "detector": detector,
                "rule": rule,
                "severity": sev,
                "tool": tool,
                "detail": detail,
                "trace_id": current_trace_id(),
            }),
        );
    }

    /// Records a call's outcome: an upstream error counts against the
    /// identity's risk; the result itself is recorded if configured.
    pub fn outcome(
        &self,
        c: &Client,
        upstream: &str,
        tool: Option<&str>,
        m: Result<&Message, &str>,
    ) {
        let ok = matches!(m, Ok(m) if m.kind() == Kind::Response);
        if !ok {
            self.risk.on_outcome(&c.owner, Outcome::Error);
        }
        self.metrics.upstream(upstream, m.is_ok());
        if let Some(t) = current_elapsed() {
            self.metrics
                .stage(portcullis_monitor::metrics::Stage::Total, t);
            if ok {
                self.note_latency(upstream, t);
            }
        }
        if self.results == ContentMode::Omit || self.audit.is_none() {
            return;
        }
        let result = match m {
            Ok(m) if m.kind() == Kind::Response => content(self.results, &m.result()),
            _ => None,
        };
        self.append(
            "result",
            &serde_json::json!({
                "identity": {"key": c.owner},
                "session": c.id,
                "upstream": upstream,
                "tool": tool,
                "outcome": if ok { "ok" } else { "error" },
                "error": m.err(),
                "latency_us": current_elapsed().map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
                "trace_id": current_trace_id(),
                "result": result,
            }),
        );
    }

    /// Waits until every record of the current request is durable; `Err`
    /// when the audit log has failed (the answer must then be withheld).
    async fn barrier(&self) -> Result<(), String> {
        let Some(a) = &self.audit else { return Ok(()) };
        let Ok(t) = REQUEST.try_with(|c| c.ticket.load(Ordering::Acquire)) else {
            return Ok(());
        };
        if t == 0 {
            return Ok(());
        }
        let t = Ticket(t);
        if a.is_durable(t) {
            return Ok(());
        }
        let began = Instant::now();
        let r = a.durable(t).await.map_err(|e| e.to_string());
        self.metrics
            .stage(portcullis_monitor::metrics::Stage::Audit, began.elapsed());
        r
    }

    /// Flushes and closes the audit log (final checkpoint).
    pub fn shutdown(&self) {
        if let Some(a) = &self.audit {
            a.shutdown();
        }
    }
}

/// A request's output channel: every message waits for the request's
/// audit records to be durable before it leaves, and an answer whose
/// records cannot be written is replaced by an error (fail closed).
pub struct Out<'a> {
    tx: &'a mpsc::Sender<Message>,
    monitor: &'a Monitor,
}

impl<'a> Out<'a> {
    /// Wraps a request's channel.
    pub fn new(tx: &'a mpsc::Sender<Message>, monitor: &'a Monitor) -> Out<'a> {
        Out { tx, monitor }
    }

    /// Sends `m` once the request's records are durable.
    pub async fn send(&self, m: Message) -> Result<(), mpsc::error::SendError<Message>> {
        match self.monitor.barrier().await {
            Ok(()) => self.tx.send(m).await,
            Err(e) => {
                tracing::error!(error = %e, "audit log failed: answer withheld");
                match m.kind() {
                    Kind::Response | Kind::Error => {
                        self.tx
                            .send(Message::error(
                                m.id_owned(),
                                codes::AUDIT_UNAVAILABLE,
                                "audit log unavailable: the gateway refuses to answer unaudited",
                                None,
                            ))
                            .await
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    /// Resolves when the client side has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_continued_or_replaced() {
        let t = TraceContext::from_header(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let tp = t.traceparent();
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(tp.ends_with("-01"));
        assert!(!tp.contains("00f067aa0ba902b7"), "a new span of ours");
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
            "",
        ] {
            let t = TraceContext::from_header(Some(bad));
            assert_ne!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert_eq!(t.trace_id().len(), 32);
        }
        let unsampled = TraceContext::from_header(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ));
        assert!(unsampled.traceparent().ends_with("-00"));
    }

    fn decide(m: &Monitor, c: &Client, allow: bool, redact: bool) {
        let resource = ResourceFacts {
            kind: ResourceKind::Tool,
            ..ResourceFacts::server("demo")
        };
        let mut d = Decision {
            allow,
            determining: vec!["p1".into(), "p2".into()],
            ..Decision::default()
        };
        if redact {
            d.obligations.redact = vec!["pii".into()];
        }
        m.decision(DecisionEvent {
            client: c,
            action: "call_tool",
            method: "tools/call",
            resource: &resource,
            decision: &d,
            policy_hash: "h",
            risk: &RiskScore::default(),
            args: None,
            took: Duration::from_micros(42),
        });
    }

    #[tokio::test]
    async fn live_decisions_reach_watchers_and_lagging_ones_skip() {
        let m = Monitor::without_audit(&Config::empty());
        let c = Client::new(
            "s1".into(),
            portcullis_wire::Revision::V2025_06_18,
            Value::Null,
            Value::Null,
            0,
            Principal::anonymous(),
            "/mcp".into(),
        );
        // Nobody watches: nothing is sent (and nothing built).
        decide(&m, &c, true, false);
        assert_eq!(m.live.len(), 0);
        let mut feed = m.watch_decisions();
        assert_eq!(m.decision_watchers(), 1);
        decide(&m, &c, true, false);
        decide(&m, &c, false, false);
        decide(&m, &c, true, true);
        let got: Vec<_> = [
            feed.next().await.unwrap().unwrap(),
            feed.next().await.unwrap().unwrap(),
            feed.next().await.unwrap().unwrap(),
        ]
        .into_iter()
        .map(|d| d.decision)
        .collect();
        assert_eq!(got, ["allow", "deny", "redact"]);
        // A watcher that falls behind skips; the sender never waits.
        for _ in 0..LIVE_CAPACITY + 10 {
            decide(&m, &c, true, false);
        }
        assert_eq!(feed.next().await.err(), Some(10));
        let d = feed.next().await.unwrap().unwrap();
        assert_eq!(d.policy, "p1, p2");
        assert_eq!(d.tool, "demo");
        assert_eq!(d.method, "tools/call");
        drop(feed);
        assert_eq!(m.decision_watchers(), 0);
    }

    #[test]
    fn reload_outcome_is_kept() {
        let m = Monitor::without_audit(&Config::empty());
        assert!(m.last_reload().is_none());
        m.policy_reload(Err("bad.cedar:1:1: oops"), "abc");
        assert_eq!(
            m.last_reload().unwrap().result,
            Err("bad.cedar:1:1: oops".to_owned())
        );
        m.policy_reload(Ok("def"), "def");
        assert_eq!(m.last_reload().unwrap().result, Ok("def".to_owned()));
    }

    #[test]
    fn content_modes() {
        let v = serde_json::json!({"path": "a", "key": "AKIAIOSFODNN7EXAMPLE"});
        assert!(content(ContentMode::Omit, &v).is_none());
        let h = content(ContentMode::Hash, &v).unwrap_or_default();
        assert_eq!(h["sha256"].as_str().map(str::len), Some(64));
        let r = content(ContentMode::Redacted, &v).unwrap_or_default();
        assert!(!r.to_string().contains("AKIAIOSFODNN7EXAMPLE"), "{r}");
    }
}
