//! `portcullis scan`: connects to one MCP server (Streamable HTTP URL or a
//! stdio command), lists its tools, prompts and resources, and runs the
//! poisoning detectors of `portcullis_inspect` over every definition, so a
//! server can be vetted before it is put behind the gateway.
//!
//! Exit status: 0 when no finding reaches `--fail-on`, 1 when one does, 2 on
//! usage errors or when the server cannot be reached or handshaken.
//!
//! `portcullis scan --eval FILE…` instead measures the detectors over a
//! labelled JSON Lines corpus (`portcullis_inspect::eval`): recall and
//! false-positive rate per detector family, label, rule and file, the misses
//! and the false positives. Exit 0, 1 when a `--min-recall`/`--max-fpr`
//! bound fails, 2 when a corpus file cannot be read or parsed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use portcullis_gateway::upstream::http::{self, HttpSession, HttpTarget};
use portcullis_gateway::upstream::stdio::{Launch, StdioUpstream};
use portcullis_gateway::upstream::{Events, UpstreamError};
use portcullis_inspect::eval::{self, Metric, Threshold};
use portcullis_inspect::finding::{Finding, Severity};
use portcullis_inspect::{pin, poison};
use portcullis_wire::message::raw_u64;
use portcullis_wire::{Kind, Message, Revision};
use serde_json::{json, Value};

/// How long one request (or the handshake) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest message accepted from the server.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// At most this many pages per list, so a looping cursor cannot hang us.
const MAX_PAGES: usize = 1000;

/// `portcullis scan [--json] [--fail-on SEVERITY] (URL | -- COMMAND ARGS…)`
#[derive(Args)]
pub struct ScanArgs {
    /// Print the findings as a JSON array.
    #[arg(long)]
    json: bool,
    /// Exit 1 when a finding is at or above this severity
    /// (low, medium, high, critical).
    #[arg(long, value_name = "SEVERITY", default_value = "high")]
    fail_on: Severity,
    /// Evaluate the detectors over labelled JSON Lines corpus files (a
    /// directory stands for its *.jsonl files) instead of scanning a server.
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with_all = ["url", "command"])]
    eval: Vec<PathBuf>,
    /// With --eval: lowest severity of a poison/inject finding that counts
    /// as a detection (DLP matches always count).
    #[arg(
        long,
        value_name = "SEVERITY",
        default_value = "high",
        requires = "eval"
    )]
    min_severity: Severity,
    /// With --eval: exit 1 unless recall is at least RATE (0.95 or 95%), for
    /// FAMILY (poison, secret, pii, inject) or every family (repeatable).
    #[arg(long, value_name = "[FAMILY=]RATE", requires = "eval")]
    min_recall: Vec<String>,
    /// With --eval: exit 1 unless the false-positive rate is at most RATE,
    /// for FAMILY or every family (repeatable).
    #[arg(long, value_name = "[FAMILY=]RATE", requires = "eval")]
    max_fpr: Vec<String>,
    /// With --eval: list every miss and false positive (default: the first 20 of each).
    #[arg(long, short, requires = "eval")]
    verbose: bool,
    /// The server's Streamable HTTP endpoint, e.g. http://127.0.0.1:8080/mcp.
    url: Option<String>,
    /// A stdio server's command line, after `--`.
    #[arg(last = true)]
    command: Vec<String>,
}

/// One finding with where it was found.
struct Row {
    kind: &'static str,
    name: String,
    pin: Option<String>,
    finding: Finding,
}

/// Runs the command; prints `portcullis: <cause>` and exits 2 on failure.
pub fn run(args: ScanArgs) -> ExitCode {
    if !args.eval.is_empty() {
        return run_eval(&args);
    }
    let target = match (&args.url, args.command.is_empty()) {
        (Some(u), true) => Target::Url(u.clone()),
        (None, false) => Target::Command(args.command.clone()),
        (Some(_), false) => return usage("give either a URL or `-- COMMAND`, not both"),
        (None, true) => return usage("give a server: URL or `-- COMMAND ARGS…`"),
    };
    init_logging();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return usage(&format!("cannot start the runtime: {e}")),
    };
    let listed = rt.block_on(list_all(&target));
    drop(rt);
    let listed = match listed {
        Ok(l) => l,
        Err(e) => return usage(&e),
    };
    let rows = scan(&listed);
    if args.json {
        let out: Vec<Value> = rows
            .iter()
            .map(|r| {
                let mut v = json!({
                    "server": listed.server,
                    "kind": r.kind,
                    "name": r.name,
                    "rule": r.finding.rule,
                    "severity": r.finding.severity.as_str(),
                    "evidence": r.finding.evidence,
                    "path": r.finding.path,
                    "span": [r.finding.span.0, r.finding.span.1],
                });
                if let (Some(p), Some(o)) = (&r.pin, v.as_object_mut()) {
                    o.insert("pin".into(), Value::from(p.as_str()));
                }
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&Value::Array(out)).unwrap_or_else(|_| "[]".into())
        );
    } else {
        print_human(&listed, &rows);
    }
    let worst = rows.iter().map(|r| r.finding.severity).max();
    if worst.is_some_and(|w| w >= args.fail_on) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("portcullis: {why}");
    ExitCode::from(2)
}

/// Warnings (a stdio server that fails to start or exits) on stderr;
/// `PORTCULLIS_LOG` overrides.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .compact()
        .try_init();
}

enum Target {
    Url(String),
    Command(Vec<String>),
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Url(u) => u.clone(),
            Target::Command(c) => c.join(" "),
        }
    }
}

/// Everything the server lists.
struct Listed {
    server: String,
    tools: Vec<Value>,
    prompts: Vec<Value>,
    resources: Vec<Value>,
}

fn scan(l: &Listed) -> Vec<Row> {
    // No known tools: a server's tools naming each other is ordinary (the
    // cross-tool rule is about other servers' tools, and a scan sees one
    // server). With its own names, 99 of 516 real definitions were flagged
    // (docs/detection.md).
    let ctx = poison::Context::default();
    let name_of = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .or_else(|| v.get("uri").and_then(Value::as_str))
            .or_else(|| v.get("uriTemplate").and_then(Value::as_str))
            .unwrap_or("?")
            .to_owned()
    };
    let mut rows = Vec::new();
    for t in &l.tools {
        let hash = pin::hash(t);
        for f in poison::scan_tool(t, &ctx) {
            rows.push(Row {
                kind: "tool",
                name: name_of(t, "name"),
                pin: Some(hash.clone()),
                finding: f,
            });
        }
    }
    for p in &l.prompts {
        for f in poison::scan_prompt(p, &ctx) {
            rows.push(Row {
                kind: "prompt",
                name: name_of(p, "name"),
                pin: None,
                finding: f,
            });
        }
    }
    for r in &l.resources {
        for f in poison::scan_resource(r, &ctx) {
            rows.push(Row {
                kind: "resource",
                name: name_of(r, "name"),
                pin: None,
                finding: f,
            });
        }
    }
    rows
}

fn print_human(l: &Listed, rows: &[Row]) {
    let counts = format!(
        "scanned {} tools, {} prompts, {} resources",
        l.tools.len(),
        l.prompts.len(),
        l.resources.len()
    );
    let Some(worst) = rows.iter().map(|r| r.finding.severity).max() else {
        println!("{counts}: no findings");
        return;
    };
    let header = ["KIND", "NAME", "RULE", "SEVERITY", "EVIDENCE"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.kind.to_owned(),
                r.name.clone(),
                r.finding.rule.to_owned(),
                r.finding.severity.as_str().to_owned(),
                r.finding.evidence.replace(['\n', '\r', '\t'], " "),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for r in &cells {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (c, w) in cells.iter().zip(&width) {
            out.push_str(c);
            out.push_str(&" ".repeat(w.saturating_sub(c.chars().count()) + 2));
        }
        println!("{}", out.trim_end());
    };
    line(&header.map(str::to_owned));
    for r in &cells {
        line(r);
    }
    println!(
        "{counts}: {} finding{} (max {worst})",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
}

/// An open, initialized connection.
enum Conn {
    Http(Box<HttpSession>),
    Stdio(Arc<StdioUpstream>),
}

struct Client {
    conn: Conn,
    events: Events,
    next_id: u64,
}

impl Client {
    /// Sends `method` and returns its result, or `None` when the server
    /// answers with a JSON-RPC error (e.g. method not found).
    async fn request(&mut self, method: &str, params: Value) -> Result<Option<Value>, String> {
        self.next_id += 1;
        let msg = Message::request(raw_u64(self.next_id), method, Some(params));
        let fut = async {
            match &self.conn {
                Conn::Http(s) => s.call(&msg, &self.events).await,
                Conn::Stdio(s) => s.call(&msg, &self.events, CALL_TIMEOUT).await,
            }
        };
        let reply = tokio::time::timeout(CALL_TIMEOUT, fut)
            .await
            .map_err(|_| format!("{method}: no answer within {} s", CALL_TIMEOUT.as_secs()))?
            .map_err(|e| format!("{method}: {e}"))?;
        Ok(match reply.kind() {
            Kind::Error => None,
            _ => Some(reply.result()),
        })
    }

    /// Every entry of a paginated list (`key` in each page), following
    /// `nextCursor`.
    async fn list(&mut self, method: &str, key: &str) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let params = match &cursor {
                Some(c) => json!({ "cursor": c }),
                None => json!({}),
            };
            let Some(page) = self.request(method, params).await? else {
                break;
            };
            if let Some(items) = page.get(key).and_then(Value::as_array) {
                out.extend(items.iter().cloned());
            }
            match page.get("nextCursor").and_then(Value::as_str) {
                Some(next) if !next.is_empty() && cursor.as_deref() != Some(next) => {
                    cursor = Some(next.to_owned());
                }
                _ => break,
            }
        }
        Ok(out)
    }
}

async fn list_all(target: &Target) -> Result<Listed, String> {
    let (conn, init) = connect(target).await?;
    let (events, mut drain) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move { while drain.recv().await.is_some() {} });
    let mut client = Client {
        conn,
        events,
        next_id: 0,
    };
    let caps = init.get("capabilities").cloned().unwrap_or(Value::Null);
    let has = |c: &str| caps.get(c).is_some_and(|v| !v.is_null());
    let result = async {
        let tools = if has("tools") {
            client.list("tools/list", "tools").await?
        } else {
            Vec::new()
        };
        let prompts = if has("prompts") {
            client.list("prompts/list", "prompts").await?
        } else {
            Vec::new()
        };
        let mut resources = Vec::new();
        if has("resources") {
            resources = client.list("resources/list", "resources").await?;
            resources.extend(
                client
                    .list("resources/templates/list", "resourceTemplates")
                    .await?,
            );
        }
        Ok::<_, String>((tools, prompts, resources))
    }
    .await;
    match &client.conn {
        Conn::Http(s) => s.close().await,
        Conn::Stdio(s) => s.shutdown(),
    }
    let (tools, prompts, resources) = result?;
    let server = init
        .pointer("/serverInfo/name")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| target.describe());
    Ok(Listed {
        server,
        tools,
        prompts,
        resources,
    })
}

fn client_info() -> Value {
    json!({"name": "portcullis-scan", "version": env!("CARGO_PKG_VERSION")})
}

/// Opens the connection and performs the handshake; returns the server's
/// `initialize` result.
async fn connect(target: &Target) -> Result<(Conn, Value), String> {
    match target {
        Target::Url(url) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("{url}: not an http(s) URL"));
            }
            let tls = if url.starts_with("https://") {
                Some(system_tls()?)
            } else {
                None
            };
            let client = http::client(tls)?;
            let t = HttpTarget::new("server", url, &BTreeMap::new(), client, MAX_MESSAGE)
                .map_err(|e| unreachable_msg(url, &e))?;
            let params = json!({
                "protocolVersion": Revision::LATEST_HANDSHAKE.as_str(),
                "capabilities": {},
                "clientInfo": client_info(),
            });
            let seen = std::sync::Mutex::new(None);
            let s = tokio::time::timeout(CALL_TIMEOUT, HttpSession::open(t, params, 0, &seen))
                .await
                .map_err(|_| format!("{url}: no answer to initialize within 30 s"))?
                .map_err(|e| unreachable_msg(url, &e))?;
            let init = (*s.init).clone();
            Ok((Conn::Http(Box::new(s)), init))
        }
        Target::Command(argv) => {
            let prog = argv.first().ok_or("empty command")?;
            if !runnable(prog) {
                return Err(format!("{prog}: command not found"));
            }
            let launch = Launch {
                argv: argv.clone(),
                env: BTreeMap::new(),
                // A scan runs as the user: the server gets the user's environment.
                inherit_env: std::env::vars_os()
                    .filter_map(|(k, _)| k.into_string().ok())
                    .collect(),
                cwd: None,
            };
            let up = StdioUpstream::spawn(
                "server",
                launch,
                client_info(),
                MAX_MESSAGE,
                Arc::new(|_| {}),
            );
            match up.ready(CALL_TIMEOUT).await {
                Ok(running) => Ok((Conn::Stdio(up), running.init())),
                Err(_) => {
                    up.shutdown();
                    Err(format!(
                        "{}: the server did not start or did not complete the MCP handshake",
                        argv.join(" ")
                    ))
                }
            }
        }
    }
}

fn unreachable_msg(url: &str, e: &UpstreamError) -> String {
    match e {
        UpstreamError::Unavailable(_, why) => format!("{url}: cannot reach the server: {why}"),
        UpstreamError::Protocol(_, why) => format!("{url}: not an MCP server: {why}"),
        other => format!("{url}: {other}"),
    }
}

/// Whether `prog` names an executable, directly or on `PATH`, so a typo
/// fails at once instead of after the start-up timeout.
fn runnable(prog: &str) -> bool {
    let is_file = |p: &Path| p.is_file();
    if prog.contains('/') {
        return is_file(Path::new(prog));
    }
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|d| is_file(&d.join(prog))))
        .unwrap_or(false)
}

/// A TLS client trusting the system's CA bundle (`$SSL_CERT_FILE`, else the
/// usual locations), for https servers.
fn system_tls() -> Result<Arc<rustls::ClientConfig>, String> {
    let candidates: Vec<PathBuf> = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
                "/etc/ssl/cert.pem",
            ]
            .map(PathBuf::from),
        )
        .filter(|p| p.is_file())
        .take(1)
        .collect();
    if candidates.is_empty() {
        return Err("https: no CA bundle found (set SSL_CERT_FILE)".into());
    }
    let roots = portcullis_identity::tls::load_roots(&candidates)
        .map_err(|e| format!("https: CA bundle: {e}"))?;
    let cfg = rustls::ClientConfig::builder_with_provider(portcullis_identity::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

// ---------------------------------------------------------------------------
// --eval

/// Misses and false positives listed without `--verbose`.
const LIST_LIMIT: usize = 20;

/// `portcullis scan --eval FILE…`: reads the corpus, evaluates, prints,
/// checks the thresholds.
fn run_eval(args: &ScanArgs) -> ExitCode {
    let mut thresholds = Vec::new();
    for (metric, values) in [
        (Metric::MinRecall, &args.min_recall),
        (Metric::MaxFpr, &args.max_fpr),
    ] {
        for v in values {
            match Threshold::parse(metric, v) {
                Ok(t) => thresholds.push(t),
                Err(e) => return usage(&format!("--{}: {e}", metric.as_str())),
            }
        }
    }
    let files = match corpus_files(&args.eval) {
        Ok(f) => f,
        Err(e) => return usage(&e),
    };
    let mut samples = Vec::new();
    for f in &files {
        let name = f.display().to_string();
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => return usage(&format!("{name}: {e}")),
        };
        match eval::parse_jsonl(&name, &text) {
            Ok(s) => samples.extend(s),
            Err(e) => return usage(&e.to_string()),
        }
    }
    if samples.is_empty() {
        return usage(&eval::EvalError::Empty.to_string());
    }
    let opts = eval::Options {
        min_severity: args.min_severity,
    };
    let report = eval::evaluate(&samples, &opts);
    let checks = eval::check(&report, &thresholds);
    let ok = checks.iter().all(|c| c.ok);
    if args.json {
        let mut v = serde_json::to_value(&report).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "files".into(),
                files.iter().map(|f| f.display().to_string()).collect(),
            );
            o.insert(
                "checks".into(),
                serde_json::to_value(&checks).unwrap_or(Value::Null),
            );
            o.insert("ok".into(), Value::Bool(ok));
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into())
        );
    } else {
        print_eval(&report, files.len(), &checks, args.verbose);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The files named, a directory standing for its `*.jsonl` files (sorted).
fn corpus_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let mut inner: Vec<PathBuf> = rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "jsonl"))
                .collect();
            if inner.is_empty() {
                return Err(format!("{}: no *.jsonl files", p.display()));
            }
            inner.sort();
            out.extend(inner);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{:.2}%", x * 100.0))
}

/// Prints rows as left-aligned columns, two spaces apart, after `indent`.
fn table(indent: &str, rows: &[Vec<String>]) {
    let mut width: Vec<usize> = Vec::new();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            let n = c.chars().count();
            match width.get_mut(i) {
                Some(w) => *w = (*w).max(n),
                None => width.push(n),
            }
        }
    }
    for r in rows {
        let mut out = String::from(indent);
        for (c, w) in r.iter().zip(&width) {
            out.push_str(c);
            out.push_str(&" ".repeat(w.saturating_sub(c.chars().count()) + 2));
        }
        println!("{}", out.trim_end());
    }
}

fn rates_row(first: Vec<String>, r: &eval::Rates) -> Vec<String> {
    let mut row = first;
    row.extend([
        r.positives.to_string(),
        r.detected.to_string(),
        pct(r.recall),
        r.negatives.to_string(),
        r.false_positives.to_string(),
        pct(r.fpr),
    ]);
    row
}

fn rates_header(first: &[&str]) -> Vec<String> {
    first
        .iter()
        .chain(&[
            "POSITIVES",
            "DETECTED",
            "RECALL",
            "NEGATIVES",
            "FALSE POS",
            "FPR",
        ])
        .map(|s| (*s).to_owned())
        .collect()
}

fn print_eval(report: &eval::Report, nfiles: usize, checks: &[eval::Check], verbose: bool) {
    println!(
        "evaluated {} samples from {nfiles} file{} (poison/inject: findings at {} or above; secret/pii: any DLP match)",
        report.samples,
        if nfiles == 1 { "" } else { "s" },
        report.min_severity
    );
    println!();
    let mut rows = vec![rates_header(&["FAMILY"])];
    for f in &report.families {
        rows.push(rates_row(vec![f.family.to_string()], &f.rates));
    }
    table("", &rows);
    for f in &report.families {
        println!();
        println!("{}:", f.family);
        if !f.by_severity.is_empty() {
            let parts: Vec<String> = f
                .by_severity
                .iter()
                .map(|s| {
                    format!(
                        "{}: recall {} fpr {}",
                        s.severity,
                        pct(s.rates.recall),
                        pct(s.rates.fpr)
                    )
                })
                .collect();
            println!("  by severity threshold: {}", parts.join(" | "));
        }
        let mut rows = vec![rates_header(&["FILE"])];
        for file in &f.files {
            rows.push(rates_row(vec![file.file.clone()], &file.rates));
        }
        table("  ", &rows);
        if !f.labels.is_empty() {
            let mut rows = vec![["LABEL", "POSITIVES", "DETECTED", "RECALL", "EXACT"]
                .map(str::to_owned)
                .to_vec()];
            for l in &f.labels {
                #[allow(clippy::cast_precision_loss)]
                let recall = (l.positives > 0).then(|| l.detected as f64 / l.positives as f64);
                rows.push(vec![
                    l.label.clone(),
                    l.positives.to_string(),
                    l.detected.to_string(),
                    pct(recall),
                    l.exact.map_or_else(|| "-".to_owned(), |x| x.to_string()),
                ]);
            }
            println!();
            table("  ", &rows);
        }
        if !f.rules.is_empty() {
            let mut rows = vec![["RULE", "ON POSITIVES", "ON NEGATIVES"]
                .map(str::to_owned)
                .to_vec()];
            for r in &f.rules {
                rows.push(vec![
                    r.rule.clone(),
                    r.on_positives.to_string(),
                    r.on_negatives.to_string(),
                ]);
            }
            println!();
            table("  ", &rows);
        }
    }
    let lists: [(&str, &[eval::Case]); 3] = [
        ("misses", &report.misses),
        ("false positives", &report.false_positives),
        (
            "found by another detector than labelled",
            &report.other_detector,
        ),
    ];
    for (title, cases) in lists {
        if cases.is_empty() {
            continue;
        }
        println!();
        println!("{title} ({}):", cases.len());
        let shown = if verbose { cases.len() } else { LIST_LIMIT };
        for c in cases.iter().take(shown) {
            println!(
                "  {} {}:{} {} [{}]{}",
                c.family,
                c.file,
                c.line,
                c.id,
                c.labels.join(","),
                if c.source.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", c.source)
                }
            );
            for h in c.hits.iter().take(if verbose { usize::MAX } else { 3 }) {
                println!(
                    "      {} {} {}{}",
                    h.rule,
                    h.severity,
                    if h.path.is_empty() {
                        String::new()
                    } else {
                        format!("{} ", h.path)
                    },
                    h.evidence.replace(['\n', '\r', '\t'], " ")
                );
            }
        }
        if cases.len() > shown {
            println!("  … {} more (--verbose lists all)", cases.len() - shown);
        }
    }
    if !checks.is_empty() {
        println!();
        for c in checks {
            println!(
                "{} {} {}={}: {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.metric.as_str(),
                c.family,
                c.limit,
                pct(c.value)
            );
        }
    }
}
