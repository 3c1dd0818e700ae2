//! The console's pages: live decisions, identities, tools, audit, health.

use std::collections::{BTreeMap, BTreeSet};

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use portcullis_contain::{now_unix, Subject};
use serde_json::Value;

use super::auth::Who;
use super::search::{self, Query};
use super::{render, svg, Console};
use crate::segments::ItemKind;

/// What the layout needs: the page, who is looking, their CSRF token.
pub(crate) struct Frame {
    pub(crate) page: &'static str,
    pub(crate) who: String,
    pub(crate) csrf: String,
}

impl Frame {
    pub(crate) fn new(c: &Console, who: &Who, page: &'static str) -> Frame {
        Frame {
            page,
            who: who.label().to_owned(),
            csrf: c.auth.csrf(who),
        }
    }
}

/// `YYYY-MM-DD HH:MM:SSZ` of Unix seconds (UTC).
pub(crate) fn fmt_unix(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(o) => o.to_string(),
    }
}

/// One decision row.
pub(crate) struct DecisionRow {
    time: String,
    identity: String,
    method: String,
    tool: String,
    decision: String,
    policy: String,
    latency_us: String,
}

#[derive(Template)]
#[template(path = "console/decisions.html")]
struct DecisionsPage {
    frame: Frame,
    rows: Vec<DecisionRow>,
}

/// The identity key of an audit record.
fn identity_of(r: &Value) -> String {
    match r.get("identity") {
        Some(Value::Object(m)) => m
            .get("key")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

/// The tool of an audit decision, as the live feed names it: the target,
/// unless the target is the server itself.
fn tool_of(r: &Value) -> String {
    let tool = s(r, "tool");
    if !tool.is_empty() {
        return tool;
    }
    let target = s(r, "target");
    if target == s(r, "upstream") {
        String::new()
    } else {
        target
    }
}

/// Reads the audit log off the async threads.
async fn read_audit(
    c: &Console,
    q: Query,
    kind: Option<&'static str>,
    limit: usize,
) -> Result<(Vec<Value>, bool), String> {
    let Some(path) = c.gw().pep.monitor.audit_path().map(|p| p.to_path_buf()) else {
        return Err("no audit log is configured ([audit] path or --audit-log)".into());
    };
    tokio::task::spawn_blocking(move || search::last_matching(&path, &q, kind, limit))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// `GET /console/`: recent decisions (from the audit log), then live ones.
pub(crate) async fn decisions(
    State(c): State<Console>,
    Extension(who): Extension<Who>,
) -> Response {
    let recent = read_audit(&c, Query::default(), Some("decision"), 100)
        .await
        .map(|r| r.0)
        .unwrap_or_default();
    let rows = recent
        .iter()
        .map(|r| DecisionRow {
            time: s(r, "ts"),
            identity: identity_of(r),
            method: s(r, "method"),
            tool: tool_of(r),
            decision: s(r, "decision"),
            policy: r
                .get("policies")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default(),
            latency_us: s(r, "latency_us"),
        })
        .collect();
    render(&DecisionsPage {
        frame: Frame::new(&c, &who, "decisions"),
        rows,
    })
}

/// One identity row.
pub(crate) struct IdentityRow {
    identity: String,
    score: u8,
    points: String,
    factors: Vec<String>,
    sessions: Vec<String>,
    quarantine: &'static str,
}

#[derive(Template)]
#[template(path = "console/identities.html")]
struct IdentitiesPage {
    frame: Frame,
    rows: Vec<IdentityRow>,
    width: u32,
    height: u32,
    killswitch: String,
}

/// Identities shown at most.
const MAX_IDENTITY_ROWS: usize = 500;

/// `GET /console/identities`: risk, its history, sessions, quarantine.
pub(crate) async fn identities(
    State(c): State<Console>,
    Extension(who): Extension<Who>,
) -> Response {
    let gw = c.gw();
    let monitor = &gw.pep.monitor;
    c.history.sample(&monitor.risk);
    let mut sessions: BTreeMap<String, Vec<std::sync::Arc<crate::session::Client>>> =
        BTreeMap::new();
    for s in gw.sessions.all() {
        sessions.entry(s.owner.clone()).or_default().push(s);
    }
    let now = now_unix();
    let quarantines = gw.pep.contain.state.quarantines.list(now);
    let mut ids: BTreeSet<String> = monitor
        .risk
        .snapshot()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    ids.extend(sessions.keys().cloned());
    ids.extend(
        quarantines
            .iter()
            .filter(|q| q.target.kind == portcullis_contain::TargetKind::Identity)
            .map(|q| q.target.value.clone()),
    );
    let mut rows: Vec<IdentityRow> = ids
        .into_iter()
        .map(|id| {
            let score = monitor.risk.score(&id);
            let mut hist = c.history.of(&id);
            if hist.last() != Some(&score.score) || hist.is_empty() {
                hist.push(score.score);
            }
            let own = sessions.get(&id);
            let first = own.and_then(|v| v.first());
            let ids = first.map(|c| c.subject_ids());
            let subject = Subject {
                identity: &id,
                agent: ids.and_then(|i| i.agent.as_deref()),
                user: ids.and_then(|i| i.user.as_deref()),
                device: ids.and_then(|i| i.device.as_deref()),
                session: None,
            };
            let quarantine = match gw.pep.contain.state.quarantines.check(&subject, now) {
                Some(q) => q.mode.as_str(),
                None => "none",
            };
            IdentityRow {
                points: svg::points(&hist),
                factors: score
                    .factors
                    .iter()
                    .map(|f| format!("{} +{}", f.name, f.points))
                    .collect(),
                sessions: own
                    .map(|v| {
                        v.iter()
                            .map(|c| c.id.clone())
                            .filter(|i| !i.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
                score: score.score,
                identity: id,
                quarantine,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        b.score
            .cmp(&a.score)
            .then_with(|| a.identity.cmp(&b.identity))
    });
    rows.truncate(MAX_IDENTITY_ROWS);
    let killswitch = gw
        .pep
        .contain
        .state
        .kill_switch()
        .map(|k| k.mode.as_str().to_owned())
        .unwrap_or_default();
    render(&IdentitiesPage {
        frame: Frame::new(&c, &who, "identities"),
        rows,
        width: svg::WIDTH,
        height: svg::HEIGHT,
        killswitch,
    })
}

/// One tool row.
pub(crate) struct ToolRow {
    server: String,
    tool: String,
    outward: String,
    segments: String,
    labels: String,
    status: &'static str,
    findings: Vec<String>,
    diff: String,
    approvable: bool,
}

#[derive(Template)]
#[template(path = "console/tools.html")]
struct ToolsPage {
    frame: Frame,
    rows: Vec<ToolRow>,
}

/// `GET /console/tools`: every offered (or pinned) tool with its segment,
/// labels, pin status, findings, and the diff of a changed definition.
pub(crate) async fn tools(State(c): State<Console>, Extension(who): Extension<Who>) -> Response {
    let gw = c.gw();
    let mut seen: BTreeMap<(String, String), (String, Value)> = BTreeMap::new();
    for (server, outward, def) in gw.defs.offered() {
        let name = def
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        seen.insert((server, name), (outward, def));
    }
    for (p, _) in gw.pep.pins.list() {
        seen.entry((p.server.clone(), p.tool.clone()))
            .or_insert_with(|| (p.tool.clone(), p.definition.clone()));
    }
    let ctx = portcullis_inspect::poison::Context::default();
    let rows = seen
        .into_iter()
        .map(|((server, tool), (outward, def))| {
            let (pin, pending) = gw.pep.pins.get(&server, &tool);
            let status = match (&pin, &pending) {
                (Some(_), Some(_)) => "changed",
                (Some(_), None) => "pinned",
                (None, _) => "new",
            };
            let diff = match (&pin, &pending) {
                (Some(p), Some(n)) => portcullis_inspect::pin::diff(&p.definition, &n.definition),
                _ => String::new(),
            };
            let shown = pending.as_ref().map_or(&def, |n| &n.definition);
            let findings = portcullis_inspect::poison::scan_tool(shown, &ctx)
                .into_iter()
                .map(|f| {
                    format!(
                        "{} {} at {}: {}",
                        f.severity.as_str(),
                        f.rule,
                        f.path,
                        f.evidence
                    )
                })
                .collect();
            let class = gw.pep.segments.classify(&server, ItemKind::Tool, &outward);
            ToolRow {
                approvable: pending.is_some() || gw.defs.held(&server, &tool),
                segments: class.segments.join(", "),
                labels: class.labels.join(", "),
                server,
                tool,
                outward,
                status,
                findings,
                diff,
            }
        })
        .collect();
    render(&ToolsPage {
        frame: Frame::new(&c, &who, "tools"),
        rows,
    })
}

/// One audit row.
pub(crate) struct AuditRow {
    seq: String,
    ts: String,
    kind: String,
    identity: String,
    tool: String,
    decision: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "console/audit.html")]
struct AuditPage {
    frame: Frame,
    q: Query,
    rows: Vec<AuditRow>,
    chain: String,
    chain_class: &'static str,
    note: String,
}

/// Records an audit search shows at most.
const MAX_AUDIT_ROWS: usize = 200;

/// `GET /console/audit?identity=&tool=&decision=&since=&until=`.
pub(crate) async fn audit(
    State(c): State<Console>,
    Extension(who): Extension<Who>,
    uri: http::Uri,
) -> Response {
    let q: Query = serde_urlencoded::from_str(uri.query().unwrap_or_default()).unwrap_or_default();
    let found = read_audit(&c, q.clone(), None, MAX_AUDIT_ROWS).await;
    let monitor = c.gw().pep.monitor.clone();
    let chain = match monitor.audit_path().map(|p| p.to_path_buf()) {
        None => "not verified: no audit log is configured".to_owned(),
        Some(path) => {
            let key = monitor.audit_key_hex();
            tokio::task::spawn_blocking(move || search::chain_status(&path, key.as_deref()))
                .await
                .unwrap_or_else(|e| format!("broken: verification failed to run: {e}"))
        }
    };
    let chain_class = if chain.starts_with("verified") {
        "verified"
    } else if chain.starts_with("broken") {
        "broken"
    } else {
        "unknown"
    };
    let (records, note) = match found {
        Ok((r, cut)) => {
            let n = r.len();
            let mut note = format!(
                "{n} matching record{} (newest first, at most {MAX_AUDIT_ROWS})",
                if n == 1 { "" } else { "s" }
            );
            if cut {
                note.push_str(&format!(
                    "; searched the last {} MiB of the live file",
                    search::SCAN_BYTES / 1024 / 1024
                ));
            }
            (r, note)
        }
        Err(e) => (Vec::new(), e),
    };
    let rows = records
        .iter()
        .map(|r| {
            let kind = s(r, "kind");
            let detail = match kind.as_str() {
                "decision" => format!("{} — {}", s(r, "method"), s(r, "reason")),
                "containment" => format!(
                    "{} {} by {} ({})",
                    s(r, "action"),
                    s(r, "target"),
                    s(r, "by"),
                    s(r, "reason")
                ),
                "auth_failure" => s(r, "reason"),
                "session_start" | "session_end" => s(r, "session"),
                "finding" => format!("{} {}", s(r, "rule"), s(r, "severity")),
                _ => String::new(),
            };
            AuditRow {
                seq: s(r, "seq"),
                ts: s(r, "ts"),
                identity: identity_of(r),
                tool: tool_of(r),
                decision: s(r, "decision"),
                kind,
                detail,
            }
        })
        .collect();
    render(&AuditPage {
        frame: Frame::new(&c, &who, "audit"),
        q,
        rows,
        chain,
        chain_class,
        note,
    })
}

/// One upstream row.
pub(crate) struct UpstreamRow {
    name: String,
    state: &'static str,
    failures: u32,
    retry: String,
    latency: String,
    last_failure: String,
}

#[derive(Template)]
#[template(path = "console/health.html")]
struct HealthPage {
    frame: Frame,
    upstreams: Vec<UpstreamRow>,
    policy_hash: String,
    reload: String,
    kill_state: &'static str,
    kill_detail: String,
    store: String,
}

/// `GET /console/health`: upstreams and breakers, policy, kill switch.
pub(crate) async fn health(State(c): State<Console>, Extension(who): Extension<Who>) -> Response {
    let gw = c.gw();
    let now = std::time::Instant::now();
    let breakers: BTreeMap<String, _> = gw.breakers().into_iter().collect();
    let upstreams = gw
        .upstream_names()
        .into_iter()
        .map(|name| {
            let snap = breakers.get(&name).map(|b| b.snapshot(now));
            UpstreamRow {
                state: snap.as_ref().map_or("closed", |s| s.state.as_str()),
                failures: snap.as_ref().map_or(0, |s| s.consecutive_failures),
                retry: snap
                    .as_ref()
                    .and_then(|s| s.retry_in_secs)
                    .map(|s| format!("{s:.1} s"))
                    .unwrap_or_default(),
                last_failure: snap.map(|s| s.last_failure).unwrap_or_default(),
                latency: gw
                    .pep
                    .monitor
                    .upstream_latency_us(&name)
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "—".into()),
                name,
            }
        })
        .collect();
    let reload = match gw.pep.monitor.last_reload() {
        None => "No reload since start.".to_owned(),
        Some(r) => match r.result {
            Ok(h) => format!("Last reload {}: ok, sha256 {h}", fmt_unix(r.at)),
            Err(e) => format!(
                "Last reload {}: rejected (the running set was kept): {e}",
                fmt_unix(r.at)
            ),
        },
    };
    let (kill_state, kill_detail) = match gw.pep.contain.state.kill_switch() {
        None => ("off", String::new()),
        Some(k) => (
            "on",
            format!(
                "({}, since {}, by {}, reason: {})",
                k.mode.as_str(),
                fmt_unix(k.since),
                k.by,
                k.reason
            ),
        ),
    };
    let store = gw.pep.contain.state.store();
    let st = store.status();
    let store = format!(
        "{}: {}{}",
        store.describe(),
        if st.current { "current" } else { "NOT current" },
        st.last_error
            .map(|e| format!(" (last error: {e})"))
            .unwrap_or_default()
    );
    render(&HealthPage {
        frame: Frame::new(&c, &who, "health"),
        upstreams,
        policy_hash: gw.pep.engine().hash().to_owned(),
        reload,
        kill_state,
        kill_detail,
        store,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_times_read_as_utc() {
        assert_eq!(fmt_unix(0), "1970-01-01 00:00:00Z");
        assert_eq!(fmt_unix(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(fmt_unix(1_798_761_599), "2026-12-31 23:59:59Z");
    }
}
