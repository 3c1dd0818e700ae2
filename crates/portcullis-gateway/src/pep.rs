//! The policy enforcement point: turns a request (principal, MCP method,
//! target, arguments, session facts) into a Cedar decision, logs it, and
//! keeps the policy set current (hot reload that never installs a bad set).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use portcullis_identity::principal::{Principal, Strength};
use portcullis_monitor::risk::{FindingSeverity, RequestEvent, RiskScore};
use portcullis_policy::{
    Action, Annotations, Decision, DeviceFacts, Engine, PrincipalFacts, PrincipalKind, Request,
    ResourceFacts, ResourceKind, SessionFacts, Strength as PStrength, UserClaims,
};
use serde_json::Value;

use portcullis_contain::rules::{Severity, Trigger};
use portcullis_contain::{Containment, Mode, Verdict};

use crate::config::Config;
use crate::contain::Guard;
use crate::monitor::{DecisionEvent, Monitor};
use crate::segments::{ItemKind, Segments};
use crate::session::{Client, Facts};

/// The policy pack shipped with Portcullis, used when config names none.
pub const DEFAULT_PACK: &str = include_str!("../../../policies/default.cedar");

/// How long a session's visibility answers are reused.
const VISIBILITY_TTL: Duration = Duration::from_secs(5);

/// Policy set, segments and taint labels, shared by every request.
pub struct Pep {
    engine: RwLock<Arc<Engine>>,
    /// Segment memberships and labels of every item.
    pub segments: Segments,
    taint: Vec<String>,
    files: Vec<PathBuf>,
    schema: Option<PathBuf>,
    /// Where decisions are recorded and risk is kept.
    pub monitor: Arc<Monitor>,
    /// Quarantines, kill switch, limits and automatic responses.
    pub contain: Arc<Guard>,
    /// Pinned tool definitions (rug-pull defence).
    pub pins: crate::pins::Pins,
}

fn load(files: &[PathBuf], schema: Option<&PathBuf>) -> Result<Engine, String> {
    let r = if files.is_empty() {
        let schema_text = match schema {
            Some(p) => {
                Some(std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?)
            }
            None => None,
        };
        Engine::from_sources(
            schema_text.as_deref(),
            &[("default.cedar".to_owned(), DEFAULT_PACK.to_owned())],
        )
    } else {
        Engine::load(schema.map(|p| p.as_path()), files)
    };
    r.map_err(|e| e.to_string())
}

fn strength(s: Strength) -> PStrength {
    match s {
        Strength::Anonymous => PStrength::Anonymous,
        Strength::Local => PStrength::Local,
        Strength::Token => PStrength::Token,
        Strength::Certificate => PStrength::Certificate,
        Strength::CertificateAndToken => PStrength::CertificateAndToken,
    }
}

/// The policy view of an authenticated principal.
pub fn principal_facts(p: &Principal) -> PrincipalFacts {
    let user = p.user.as_ref().map(|u| UserClaims {
        iss: u.iss.clone(),
        sub: u
            .sub
            .clone()
            .or_else(|| u.client_id.clone())
            .unwrap_or_default(),
        client_id: u.client_id.clone(),
        scopes: u.scopes.clone(),
    });
    let kind = if let Some(w) = &p.workload {
        PrincipalKind::Agent {
            spiffe_id: w.to_string(),
            trust_domain: w.trust_domain().to_owned(),
        }
    } else if let Some(u) = &user {
        PrincipalKind::User {
            iss: u.iss.clone(),
            sub: u.sub.clone(),
            scopes: u.scopes.clone(),
        }
    } else if let Some(l) = &p.local_user {
        PrincipalKind::Local { name: l.clone() }
    } else {
        PrincipalKind::Anonymous
    };
    let device = p.device.verified().map(|d| DeviceFacts {
        id: d.device_id.clone(),
        managed: d.managed,
        os: d.os.clone(),
        patch_age_days: d.patch_age_days,
        disk_encrypted: d.disk_encrypted,
        edr_running: d.edr_running,
    });
    PrincipalFacts {
        kind,
        user,
        device,
        strength: strength(p.strength),
        segments: Vec::new(),
    }
}

/// Reads MCP tool annotations from a tool definition.
pub fn annotations(tool: &Value) -> Annotations {
    let a = tool.get("annotations");
    let b = |k: &str| a.and_then(|a| a.get(k)).and_then(Value::as_bool);
    Annotations {
        read_only: b("readOnlyHint"),
        destructive: b("destructiveHint"),
        idempotent: b("idempotentHint"),
        open_world: b("openWorldHint"),
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Pep {
    /// Loads the configured policy set (or the default pack); a set that
    /// does not parse or validate is an error naming file:line:col.
    pub fn from_config(cfg: &Config) -> Result<Pep, String> {
        Self::with_monitor(cfg, Arc::new(Monitor::from_config(cfg)?))
    }

    /// As [`Pep::from_config`], recording into a given monitor.
    pub fn with_monitor(cfg: &Config, monitor: Arc<Monitor>) -> Result<Pep, String> {
        let engine = load(&cfg.policy.files, cfg.policy.schema.as_ref())?;
        tracing::info!(hash = %engine.hash(), policies = engine.policy_count(), "policy set loaded");
        let taint = if cfg.policy.taint_labels.is_empty() {
            vec!["confidential".to_owned()]
        } else {
            cfg.policy.taint_labels.clone()
        };
        Ok(Pep {
            engine: RwLock::new(Arc::new(engine)),
            segments: Segments::new(cfg.segments.clone()),
            taint,
            files: cfg.policy.files.clone(),
            schema: cfg.policy.schema.clone(),
            monitor,
            contain: Arc::new(
                Guard::new(Arc::new(Containment::in_memory()), cfg.containment.clone())
                    .with_store_rules(&cfg.store),
            ),
            pins: crate::pins::Pins::new(cfg.pinning.clone()),
        })
    }

    /// The labels whose reading taints a session (egress then refused).
    pub fn taint_labels(&self) -> &[String] {
        &self.taint
    }

    /// Enforces (and persists into) `state` instead of a throwaway one.
    pub fn with_containment(mut self, state: Arc<Containment>) -> Pep {
        self.contain = Arc::new(self.contain.over(state));
        self
    }

    /// The containment check before policy: `Some` (and a recorded deny)
    /// when the kill switch or a quarantine forbids this request.
    pub fn contained(
        &self,
        client: &Client,
        action: &Action,
        method: &str,
        resource: &ResourceFacts,
    ) -> Option<(Mode, String)> {
        let Verdict::Restricted {
            mode,
            source,
            reason,
        } = self.contain.verdict(client)
        else {
            return None;
        };
        if self.contain.permits(mode, action, resource) {
            return None;
        }
        let d = Decision {
            allow: false,
            reason: format!("{} ({source}): {reason}", mode.as_str()),
            determining: vec![format!("containment:{source}")],
            errors: Vec::new(),
            obligations: Default::default(),
        };
        let risk = RiskScore {
            score: self.monitor.risk.score(&client.owner).score,
            factors: Vec::new(),
        };
        let began = std::time::Instant::now();
        self.record(
            client,
            action,
            method,
            resource,
            &d,
            &self.engine(),
            &risk,
            None,
            began,
        );
        Some((mode, source))
    }

    /// Applies the quarantines fired rules ask for: in force at once,
    /// audited, stored in the background.
    pub fn auto_contain(&self, client: &Client, triggers: Vec<Trigger>) -> bool {
        let mut applied = false;
        for t in triggers {
            let Some(q) = self.contain.quarantine_for(client, &t) else {
                continue;
            };
            let now = portcullis_contain::now_unix();
            let existing = self
                .contain
                .state
                .quarantines
                .list(now)
                .into_iter()
                .find(|e| e.target == q.target);
            if existing.is_some_and(|e| e.mode >= q.mode) {
                continue;
            }
            tracing::warn!(target = %q.target, mode = q.mode.as_str(), rule = %t.rule, reason = %q.reason, "automatic quarantine");
            self.monitor
                .containment("quarantine", &q.target.to_string(), Some(&q.reason), &q.by);
            self.contain.state.enforce(q.clone());
            applied = true;
            let state = self.contain.state.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = state.persist(&q).await {
                        tracing::error!(error = %e, target = %q.target, "automatic quarantine in force but not stored");
                    }
                });
            }
        }
        applied
    }

    /// Feeds a detector finding to the automatic quarantine rules.
    pub fn contain_finding(&self, client: &Client, severity: FindingSeverity, rule: &str) {
        let s = match severity {
            FindingSeverity::Low => Severity::Low,
            FindingSeverity::Medium => Severity::Medium,
            FindingSeverity::High => Severity::High,
        };
        let t = self.contain.on_finding(s, rule);
        if !t.is_empty() {
            self.auto_contain(client, t);
        }
    }

    /// The policy set in force.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reloads the policy files: a set that fails to parse or validate is
    /// rejected and the running one stays. Returns the new hash.
    pub fn reload(&self) -> Result<String, String> {
        match load(&self.files, self.schema.as_ref()) {
            Ok(e) => {
                let hash = e.hash().to_owned();
                *self.engine.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(e);
                tracing::info!(hash = %hash, "policy set reloaded");
                self.monitor.policy_reload(Ok(&hash), &hash);
                Ok(hash)
            }
            Err(e) => {
                let kept = self.engine().hash().to_owned();
                tracing::error!(errors = %e, kept = %kept, "policy reload rejected; keeping the running set");
                self.monitor.policy_reload(Err(&e), &kept);
                Err(e)
            }
        }
    }

    /// Re-reads the policy files when they change (polled every 2 s).
    pub fn watch(self: &Arc<Self>) {
        if self.files.is_empty() {
            return;
        }
        let me = Arc::downgrade(self);
        let files = self.files.clone();
        tokio::spawn(async move {
            let stamp = |files: &[PathBuf]| -> Vec<Option<SystemTime>> {
                files
                    .iter()
                    .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
                    .collect()
            };
            let mut last = stamp(&files);
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let now = stamp(&files);
                if now != last {
                    last = now;
                    let Some(p) = me.upgrade() else { return };
                    let _ = p.reload();
                }
            }
        });
    }

    /// The facts policy sees for an item of `server`.
    pub fn resource(
        &self,
        kind: ItemKind,
        server: &str,
        id: &str,
        ann: Annotations,
    ) -> ResourceFacts {
        let class = self.segments.classify(server, kind, id);
        ResourceFacts {
            kind: match kind {
                ItemKind::Tool => ResourceKind::Tool,
                ItemKind::Resource => ResourceKind::Resource,
                ItemKind::Prompt => ResourceKind::Prompt,
                ItemKind::Server => ResourceKind::Server,
            },
            id: id.to_owned(),
            server: server.to_owned(),
            segments: class.segments,
            labels: class.labels,
            annotations: ann,
        }
    }

    /// Session facts for policy, from the client's history.
    pub fn session_facts(&self, f: &Facts) -> SessionFacts {
        SessionFacts {
            calls: f.calls.load(std::sync::atomic::Ordering::Relaxed),
            labels_read: f.labels(),
            tainted: f.tainted_by(&self.taint),
        }
    }

    /// Decides one request and logs the decision.
    pub fn decide(
        &self,
        client: &Client,
        action: Action,
        method: &str,
        resource: &ResourceFacts,
        args: Option<&Value>,
    ) -> Decision {
        self.decide_pending(client, action, method, resource, args)
            .finish()
    }

    /// Decides one request but leaves its record open: a later stage may
    /// still refuse it (a rate limit, an open breaker), and the audit record
    /// must say what happened to the request, not only what policy said.
    /// The record is written by [`Pending::finish`] or [`Pending::refuse`],
    /// or when the `Pending` is dropped.
    pub fn decide_pending<'a>(
        &'a self,
        client: &'a Client,
        action: Action,
        method: &'a str,
        resource: &'a ResourceFacts,
        args: Option<&'a Value>,
    ) -> Pending<'a> {
        let began = std::time::Instant::now();
        let engine = self.engine();
        let session = self.session_facts(&client.facts());
        let (risk, argument_findings) = self.observe(client, resource, args);
        let mut d = None;
        let fired = self.contain.on_risk(risk.score);
        if !fired.is_empty() && self.auto_contain(client, fired) {
            if let Verdict::Restricted { mode, source, .. } = self.contain.verdict(client) {
                if !self.contain.permits(mode, &action, resource) {
                    d = Some(Decision {
                        allow: false,
                        reason: format!("quarantined ({source}) by an automatic rule"),
                        determining: vec![format!("containment:{source}")],
                        errors: Vec::new(),
                        obligations: Default::default(),
                    });
                }
            }
        }
        let d = match d {
            Some(contained) => contained,
            None => {
                let mut d = engine.decide(&Request {
                    principal: client.policy_principal(),
                    action: action.clone(),
                    resource,
                    arguments: args,
                    method: Some(method),
                    session: &session,
                    risk: i64::from(risk.score),
                    argument_findings: &argument_findings,
                    now_unix: now_unix(),
                });
                if d.allow && self.monitor.audit_failed() {
                    // Fail closed: nothing is served that cannot be recorded.
                    d = Decision {
                        allow: false,
                        reason: "denied: the audit log cannot record this request".into(),
                        determining: Vec::new(),
                        errors: Vec::new(),
                        obligations: Default::default(),
                    };
                }
                if !d.allow {
                    let fired = self.contain.on_denial(client);
                    if !fired.is_empty() {
                        self.auto_contain(client, fired);
                    }
                }
                d
            }
        };
        Pending {
            pep: self,
            client,
            action,
            method,
            resource,
            args,
            engine,
            risk,
            began,
            decision: d,
        }
    }

    /// Whether the principal may use `resource` at all, whatever its
    /// session has done: decided with a fresh session's facts and no
    /// arguments. Visibility (lists, "unknown" answers) follows this, so a
    /// tainted session still sees the tool and is told why a call is denied.
    ///
    /// Visibility depends only on standing facts, so it is cached per
    /// session for a few seconds (and per policy set): lists and repeated
    /// calls do not pay for it again. A policy that makes visibility depend
    /// on the time of day takes effect within that window.
    pub fn visible(
        &self,
        client: &Client,
        action: Action,
        method: &str,
        resource: &ResourceFacts,
    ) -> bool {
        let engine = self.engine();
        let key = format!(
            "{}\u{0}{}\u{0}{}",
            action.as_str(),
            resource.server,
            resource.id
        );
        if let Some(v) = client.visibility_cached(engine.hash(), &key, VISIBILITY_TTL) {
            return v;
        }
        let allow = self.decide_visibility(client, &action, method, resource);
        client.cache_visibility(engine.hash(), key, allow);
        allow && self.contain_permits(client, &action, resource)
    }

    /// Whether containment leaves `action` on `resource` to this client
    /// (never cached: a quarantine applies to the very next message).
    fn contain_permits(&self, client: &Client, action: &Action, resource: &ResourceFacts) -> bool {
        match self.contain.verdict(client) {
            Verdict::Clear => true,
            Verdict::Restricted { mode, .. } => self.contain.permits(mode, action, resource),
        }
    }

    /// The visibility decision: standing facts only (a fresh session, no
    /// arguments, no behaviour, no risk), never recorded.
    fn decide_visibility(
        &self,
        client: &Client,
        action: &Action,
        method: &str,
        resource: &ResourceFacts,
    ) -> bool {
        let d = self.engine().decide(&Request {
            principal: client.policy_principal(),
            action: action.clone(),
            resource,
            arguments: None,
            method: Some(method),
            session: &SessionFacts::default(),
            risk: 0,
            argument_findings: &[],
            now_unix: now_unix(),
        });
        tracing::debug!(target: "portcullis::decision", allow = d.allow, identity = %client.owner, action = action.as_str(), resource = %resource.id, "visibility");
        d.allow
    }

    /// Logs and audits one decision.
    #[expect(clippy::too_many_arguments, reason = "one decision's whole context")]
    fn record(
        &self,
        client: &Client,
        action: &Action,
        method: &str,
        resource: &ResourceFacts,
        d: &Decision,
        engine: &Engine,
        risk: &RiskScore,
        args: Option<&Value>,
        began: std::time::Instant,
    ) {
        tracing::info!(
            target: "portcullis::decision",
            allow = d.allow,
            identity = %client.owner,
            action = action.as_str(),
            resource = %resource.id,
            server = %resource.server,
            policies = ?d.determining,
            errors = ?d.errors,
            policy_hash = %engine.hash(),
            risk = risk.score,
            reason = %d.reason,
            "decision"
        );
        self.monitor.decision(DecisionEvent {
            client,
            action: action.as_str(),
            method,
            resource,
            decision: d,
            policy_hash: engine.hash(),
            risk,
            args,
            took: began.elapsed(),
        });
    }

    /// Feeds one request to the identity's risk (argument findings are
    /// recorded too) and returns the score to decide with and the findings
    /// as policy sees them (`rule`, and `rule:high` when high).
    fn observe(
        &self,
        client: &Client,
        resource: &ResourceFacts,
        args: Option<&Value>,
    ) -> (RiskScore, Vec<String>) {
        let is_tool = resource.kind == ResourceKind::Tool;
        let findings = args.map(portcullis_inspect::args::scan).unwrap_or_default();
        let rules: Vec<&str> = findings.iter().map(|f| f.rule).collect();
        let score = self.monitor.risk.on_request(
            &client.owner,
            &RequestEvent {
                tool: is_tool.then_some(resource.id.as_str()),
                destructive: resource.annotations.destructive == Some(true),
                labels: &resource.labels,
                suspicious: &rules,
            },
        );
        for f in &findings {
            let sev = match f.severity {
                portcullis_inspect::args::Severity::Low => FindingSeverity::Low,
                portcullis_inspect::args::Severity::Medium => FindingSeverity::Medium,
                portcullis_inspect::args::Severity::High => FindingSeverity::High,
            };
            self.contain_finding(client, sev, f.rule);
            self.monitor.record_finding(
                &client.owner,
                "arguments",
                f.rule,
                sev,
                Some(&resource.id),
                serde_json::json!({"path": f.path}),
            );
        }
        if findings.is_empty() {
            return (score, Vec::new());
        }
        (
            self.monitor.risk.score(&client.owner),
            policy_findings(&findings),
        )
    }
}

/// The argument findings as `context.argument_findings` names them: each
/// rule once, and `rule:high` beside it when any finding of it is high, so a
/// policy can refuse only the unmistakable shapes (metadata addresses).
fn policy_findings(findings: &[portcullis_inspect::args::ArgFinding]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(findings.len() * 2);
    for f in findings {
        let rule = f.rule.to_owned();
        if !out.contains(&rule) {
            out.push(rule);
        }
        if f.severity == portcullis_inspect::args::Severity::High {
            let high = format!("{}:high", f.rule);
            if !out.contains(&high) {
                out.push(high);
            }
        }
    }
    out
}

/// A decision whose record is still open (see [`Pep::decide_pending`]).
pub struct Pending<'a> {
    pep: &'a Pep,
    client: &'a Client,
    action: Action,
    method: &'a str,
    resource: &'a ResourceFacts,
    args: Option<&'a Value>,
    engine: Arc<Engine>,
    risk: RiskScore,
    began: std::time::Instant,
    decision: Decision,
}

impl Pending<'_> {
    /// What policy (or an automatic quarantine) decided.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// Records the decision as made and returns it.
    pub fn finish(self) -> Decision {
        let d = self.decision.clone();
        drop(self);
        d
    }

    /// Records the request as refused by a later stage instead: `reason`
    /// for the record, `source` as its determining entry
    /// (`containment:<source>`, e.g. `containment:rate:tool:x`).
    pub fn refuse(mut self, reason: String, source: &str) {
        self.decision = Decision {
            allow: false,
            reason,
            determining: vec![format!("containment:{source}")],
            errors: Vec::new(),
            obligations: Default::default(),
        };
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.pep.record(
            self.client,
            &self.action,
            self.method,
            self.resource,
            &self.decision,
            &self.engine,
            &self.risk,
            self.args,
            self.began,
        );
    }
}
