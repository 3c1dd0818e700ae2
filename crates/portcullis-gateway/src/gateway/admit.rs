//! What the gateway lets a server offer: each listed tool is checked against
//! its pin (rug-pull), every tool, prompt and resource definition against
//! the poisoning detectors, and the tools of all servers against each other
//! (shadowing). Verdicts are kept in `Pins` and `Defs`; this module records
//! what they find and answers "may this item be shown and used".

use std::sync::Arc;

use portcullis_inspect::finding::{Finding, Severity};
use portcullis_monitor::risk::FindingSeverity;
use serde_json::{json, Value};

use super::Gateway;
use crate::inspection::PoisonAction;
use crate::segments::ItemKind;
use crate::session::{lock, Client};
use crate::upstream::UpstreamError;

/// Most pages read from one list, so a looping cursor cannot hang a call.
const MAX_PAGES: usize = 50;

fn risk(s: Severity) -> FindingSeverity {
    match s {
        Severity::Low => FindingSeverity::Low,
        Severity::Medium => FindingSeverity::Medium,
        Severity::High | Severity::Critical => FindingSeverity::High,
    }
}

fn kind_str(k: ItemKind) -> &'static str {
    match k {
        ItemKind::Tool | ItemKind::Server => "tool",
        ItemKind::Prompt => "prompt",
        ItemKind::Resource => "resource",
    }
}

impl Gateway {
    /// Pins a tool on first sight, or checks it against its pin; then its
    /// definition against the poisoning detectors and the shadowing
    /// verdict. `false` hides it. A new pin or a newly seen change is
    /// stored, and changes and findings are audited.
    pub(super) fn admit_tool(&self, idx: usize, tool: &Value) -> bool {
        use crate::pins::Admission;
        let server = self.server_name(idx);
        let name = tool.get("name").and_then(Value::as_str).unwrap_or("");
        // Pins writes each decision to the store itself, in decision order.
        match self.pep.pins.admit(&server, tool) {
            Admission::Trusted => {}
            Admission::Restored(_) => {
                tracing::info!(server = %server, tool = name, "tool back to its pinned definition");
            }
            Admission::FirstSeen(p) => {
                tracing::info!(server = %server, tool = name, hash = %p.hash, "tool pinned on first use");
            }
            Admission::Changed(first) => {
                if let Some(p) = first {
                    tracing::warn!(server = %server, tool = name, hash = %p.hash, "tool definition changed since pinned: hidden until approved (portcullis pins diff/approve)");
                    self.pep.monitor.metrics.findings("pin", "hide", 1);
                    self.pep.monitor.record_finding(
                        "-",
                        "pin",
                        "pin.changed",
                        FindingSeverity::High,
                        Some(&self.naming.outward(idx, name)),
                        json!({"server": server, "tool": name, "hash": p.hash}),
                    );
                }
                return false;
            }
        }
        if !self.pep.pins.usable(&server, name) {
            return false;
        }
        let approved = self.pep.pins.approved_by_admin(&server, name, tool);
        self.admit_item(idx, ItemKind::Tool, name, tool, approved)
            && !self.defs.hidden(&server, ItemKind::Tool, name)
    }

    /// Runs the poisoning detectors over one definition (once per
    /// definition): findings at or above the configured severity are
    /// audited; `false` when `poison_action` hides it (or its server).
    pub(super) fn admit_item(
        &self,
        idx: usize,
        kind: ItemKind,
        name: &str,
        def: &Value,
        approved: bool,
    ) -> bool {
        let server = self.server_name(idx);
        let j = self.defs.judge(&server, kind, name, def, approved);
        if !j.new_findings.is_empty() {
            let shown = match kind {
                ItemKind::Tool | ItemKind::Prompt => self.naming.outward(idx, name),
                _ => name.to_owned(),
            };
            self.record_poison(&server, kind, &shown, &j.new_findings, approved);
        }
        j.visible
    }

    fn record_poison(
        &self,
        server: &str,
        kind: ItemKind,
        shown: &str,
        findings: &[Finding],
        approved: bool,
    ) {
        let action = match (self.cfg.inspection.poison_action, approved) {
            (_, true) | (PoisonAction::Warn, _) => "warn",
            (PoisonAction::Hide, _) => "hide",
            (PoisonAction::HideServer, _) => "hide-server",
        };
        for f in findings {
            tracing::warn!(server = %server, kind = kind_str(kind), name = %shown, rule = f.rule, severity = f.severity.as_str(), action, "definition looks poisoned");
            self.pep.monitor.record_finding(
                "-",
                "poison",
                f.rule,
                risk(f.severity),
                Some(shown),
                json!({"server": server, "kind": kind_str(kind), "action": action, "path": f.path, "span": [f.span.0, f.span.1], "evidence": f.evidence, "severity": f.severity.as_str()}),
            );
        }
        self.pep.monitor.metrics.findings(
            "poison",
            action,
            u64::try_from(findings.len()).unwrap_or(u64::MAX),
        );
    }

    /// Notes the tools upstream `idx` lists now and re-checks shadowing
    /// across every server's tools; new findings are audited.
    pub(super) fn offer_tools(&self, idx: usize, tools: &[Value]) {
        let server = self.server_name(idx);
        self.defs.offer(
            &server,
            tools.iter().filter_map(|t| {
                let n = t.get("name")?.as_str()?;
                Some((self.naming.outward(idx, n), t))
            }),
        );
        for (f, hides) in self.defs.shadowing() {
            let action = if hides { "hide" } else { "warn" };
            let shown = self
                .upstreams
                .iter()
                .position(|u| u.name == f.server)
                .map(|i| self.naming.outward(i, &f.tool))
                .unwrap_or_else(|| f.tool.clone());
            tracing::warn!(server = %f.server, tool = %f.tool, other_server = %f.other_server, other_tool = %f.other_tool, rule = f.rule, action, "tool shadows another server's tool");
            self.pep.monitor.metrics.findings("shadow", action, 1);
            self.pep.monitor.record_finding(
                "-",
                "shadow",
                f.rule,
                risk(f.severity),
                Some(&shown),
                json!({"server": f.server, "tool": f.tool, "other_server": f.other_server, "other_tool": f.other_tool, "action": action, "path": f.path, "evidence": f.evidence, "severity": f.severity.as_str()}),
            );
        }
    }

    /// A server said its tool list changed: list it again now, so a
    /// changed definition is pinned-checked, scanned and hidden before any
    /// client calls it (clients may never re-list).
    pub(super) fn recheck_tools(self: &Arc<Self>, client: Option<Arc<Client>>, idx: usize) {
        let Some(up) = self.upstreams.get(idx) else {
            return;
        };
        if !up.relist.claim() {
            // One is running: it will run once more when it is done.
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let started = tokio::time::Instant::now();
                me.relist_tools(client.clone(), idx).await;
                match me.upstreams.get(idx) {
                    Some(up) if up.relist.again() => {
                        // The first change is re-listed at once; a stream of
                        // them, at most once per RELIST_EVERY.
                        tokio::time::sleep_until(started + RELIST_EVERY).await;
                    }
                    _ => break,
                }
            }
        });
    }

    /// One re-list of upstream `idx`'s tools (see [`Gateway::recheck_tools`]).
    async fn relist_tools(self: &Arc<Self>, client: Option<Arc<Client>>, idx: usize) {
        let Some(client) = client.or_else(|| self.sessions.all().into_iter().next()) else {
            // No session to read it through: forget what calls know of
            // tools, so the next call reads the lists again (and a changed
            // definition is held before it is reached).
            lock(&self.tool_meta).clear();
            return;
        };
        match self.read_list(&client, idx, "tools/list", "tools").await {
            Ok(tools) => {
                self.offer_tools(idx, &tools);
                for t in &tools {
                    self.admit_tool(idx, t);
                }
                tracing::debug!(upstream = idx, "tool list re-checked after list_changed");
            }
            Err(e) => {
                // The change could not be read: trust nothing known before
                // it, so the next call reads the lists again (fail closed).
                tracing::debug!(error = %e, "tool list not re-checked");
                lock(&self.tool_meta).clear();
            }
        }
    }

    /// Every item of one list of upstream `idx` (all pages), read for the
    /// gateway's own bookkeeping: no policy filtering, nothing sent to a
    /// client.
    async fn read_list(
        self: &Arc<Self>,
        client: &Arc<Client>,
        idx: usize,
        method: &str,
        key: &str,
    ) -> Result<Vec<Value>, UpstreamError> {
        let conn = self.conn(client, idx).await?;
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let p = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let r = self.simple_call(client, idx, &conn, method, p).await?;
            if let Some(a) = r.get(key).and_then(Value::as_array) {
                items.extend(a.iter().cloned());
            }
            cursor = r
                .get("nextCursor")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if cursor.is_none() {
                break;
            }
        }
        Ok(items)
    }

    /// Tool annotations for a client-facing tool name, learning them from
    /// the lists when not seen yet, so a call before any list is judged on
    /// the same facts: its upstream's list is read (pins, poisoning), and
    /// so are the lists of every upstream not offered yet (shadowing is
    /// judged across servers). `None`: no upstream offers it, or it is
    /// hidden.
    pub(super) async fn tool_annotations(
        self: &Arc<Self>,
        client: &Arc<Client>,
        idx: usize,
        name: &str,
    ) -> Result<Option<portcullis_policy::Annotations>, UpstreamError> {
        if let Some(a) = lock(&self.tool_meta).get(name).copied() {
            return Ok(Some(a));
        }
        let targets: Vec<usize> = (0..self.upstreams.len())
            .filter(|i| *i == idx || !self.defs.has_offered(&self.server_name(*i)))
            .collect();
        let lists = futures_util::future::join_all(targets.iter().map(|i| {
            let me = self.clone();
            let client = client.clone();
            let i = *i;
            async move { (i, me.read_list(&client, i, "tools/list", "tools").await) }
        }))
        .await;
        let mut own = Ok(());
        for (i, r) in &lists {
            match r {
                Ok(tools) => self.offer_tools(*i, tools),
                Err(e) if *i == idx => own = Err(e.clone()),
                Err(e) => tracing::debug!(error = %e, upstream = i, "tool list not read"),
            }
        }
        own?;
        for (i, r) in lists {
            let Ok(tools) = r else { continue };
            for t in &tools {
                if let Some(n) = t.get("name").and_then(Value::as_str) {
                    if self.admit_tool(i, t) {
                        lock(&self.tool_meta)
                            .insert(self.naming.outward(i, n), crate::pep::annotations(t));
                    }
                }
            }
        }
        Ok(lock(&self.tool_meta).get(name).copied())
    }

    /// Whether upstream `idx` offers the prompt (client-facing `name`) and
    /// it passed the poisoning check, reading its prompt list when the
    /// name was not seen yet: a prompt no upstream lists is answered by
    /// the gateway exactly as a hidden one.
    pub(super) async fn prompt_known(
        self: &Arc<Self>,
        client: &Arc<Client>,
        idx: usize,
        name: &str,
    ) -> Result<bool, UpstreamError> {
        if lock(&self.prompt_seen).contains(name) {
            return Ok(true);
        }
        for p in self
            .read_list(client, idx, "prompts/list", "prompts")
            .await?
        {
            let Some(n) = p.get("name").and_then(Value::as_str) else {
                continue;
            };
            if self.admit_item(idx, ItemKind::Prompt, n, &p, false) {
                lock(&self.prompt_seen).insert(self.naming.outward(idx, n));
            }
        }
        Ok(lock(&self.prompt_seen).contains(name))
    }
}

/// The shortest time between two re-lists of one upstream after the first:
/// a server flooding `list_changed` costs at most ten re-lists a second.
const RELIST_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The re-list state of one upstream: idle, running, or running with
/// another `list_changed` seen meanwhile (so one more run follows).
#[derive(Default)]
pub(crate) struct Relist(std::sync::atomic::AtomicU8);

const RELIST_IDLE: u8 = 0;
const RELIST_RUNNING: u8 = 1;
const RELIST_AGAIN: u8 = 2;

impl Relist {
    /// A `list_changed` arrived: true when the caller must start a re-list
    /// (none was running); otherwise the running one is told to go again.
    pub(crate) fn claim(&self) -> bool {
        use std::sync::atomic::Ordering;
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let next = if cur == RELIST_IDLE {
                RELIST_RUNNING
            } else {
                RELIST_AGAIN
            };
            match self
                .0
                .compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return cur == RELIST_IDLE,
                Err(seen) => cur = seen,
            }
        }
    }

    /// A re-list finished: true when another was asked for meanwhile (and
    /// the caller must run it), false when the state is idle again.
    pub(crate) fn again(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self
            .0
            .compare_exchange(
                RELIST_RUNNING,
                RELIST_IDLE,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            return false;
        }
        self.0.store(RELIST_RUNNING, Ordering::Release);
        true
    }
}

#[cfg(test)]
mod relist_tests {
    use super::Relist;

    #[test]
    fn a_flood_coalesces_into_one_running_and_one_queued() {
        let r = Relist::default();
        assert!(r.claim(), "the first notification starts a re-list");
        for _ in 0..1000 {
            assert!(!r.claim(), "the rest only queue one more");
        }
        assert!(r.again(), "one more run for everything seen meanwhile");
        assert!(!r.again(), "then idle");
        assert!(r.claim(), "and the next notification starts again");
        assert!(!r.again());
    }
}
