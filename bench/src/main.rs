//! `portcullis-load`: opens N concurrent MCP sessions against one or more
//! Streamable HTTP endpoints (http or https, optionally with a client
//! certificate) and measures `tools/call` latency and throughput, e.g. a
//! server directly versus the same server behind Portcullis. Also measures
//! full TLS handshakes per second (`--handshakes`) and idle-session memory.
#![forbid(unsafe_code)]

mod handshake;
mod mcp;
mod stats;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hyper::header::{HeaderName, HeaderValue};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use mcp::{Session, Target};
use stats::{round, SessionStats, Summary};

/// Load driver for MCP endpoints (Streamable HTTP, handshake era).
///
/// Every session is one HTTP/1.1 keep-alive connection (TLS for https://
/// URLs): `initialize` (protocolVersion 2025-11-25),
/// `notifications/initialized`, then `tools/call` back to back. Targets are
/// measured one after the other; the first is the baseline the others are
/// compared with.
#[derive(Parser)]
#[command(name = "portcullis-load", version)]
struct Cli {
    /// Endpoint to measure (repeatable). `URL#TOOL` sets that target's tool.
    #[arg(
        long = "url",
        value_name = "URL[#TOOL]",
        required_unless_present = "mint_token"
    )]
    urls: Vec<String>,
    /// A further endpoint compared against the first --url (e.g. the same
    /// upstream through Portcullis). `URL#TOOL` works here too.
    #[arg(long, value_name = "URL[#TOOL]")]
    compare: Option<String>,
    /// Tool to call (targets without `#TOOL`).
    #[arg(long, default_value = "echo")]
    tool: String,
    /// Tool to call on the --compare target (default: --tool).
    #[arg(long, value_name = "NAME")]
    compare_tool: Option<String>,
    /// Tool arguments, a JSON object.
    #[arg(long, default_value = "{}")]
    args: String,
    /// Report labels, in target order (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Concurrent sessions (each one connection, one call at a time).
    #[arg(long, default_value_t = 32)]
    sessions: usize,
    /// Measured seconds per target.
    #[arg(long, default_value_t = 10.0, conflicts_with = "requests")]
    duration: f64,
    /// Measure this many calls per target instead of a duration.
    #[arg(long)]
    requests: Option<u64>,
    /// Unmeasured seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Extra header on every request, `'Name: value'` (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Extra header for the --compare target only (repeatable), e.g. the
    /// bearer token a gateway with authentication needs.
    #[arg(long = "compare-header", value_name = "NAME: VALUE")]
    compare_headers: Vec<String>,
    /// Trust bundle (PEM) for https:// targets' certificates.
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Client certificate (PEM) presented to https:// targets (mTLS).
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Measure the targets this many times in turn (A B A B …) and merge
    /// the samples; spreads slow drifts of a shared machine over all targets.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Report the CPU time this process spends during each measured window
    /// (repeatable, in target order; e.g. the gateway's PID).
    #[arg(long = "cpu-pid", value_name = "PID")]
    cpu_pids: Vec<u32>,
    /// Handshake mode: fresh connections back to back against the first
    /// --url (a full TLS handshake each, no resumption) for --duration
    /// seconds or --requests connections; reports handshakes per second.
    #[arg(long)]
    handshakes: bool,
    /// Handshake mode: concurrent workers.
    #[arg(long, default_value_t = 4, value_name = "C")]
    concurrency: usize,
    /// Handshake mode: send one authenticated POST (a JSON-RPC ping outside
    /// a session) on each connection instead of closing right away.
    #[arg(long)]
    handshake_request: bool,
    /// Print a bearer token from the Portcullis development issuer kept in
    /// DIR (created on first use, with DIR/jwks.json) and exit.
    #[arg(long, value_name = "DIR")]
    mint_token: Option<PathBuf>,
    /// --mint-token: the token's audience (the gateway's resource URI).
    #[arg(long, value_name = "URI", requires = "mint_token")]
    audience: Option<String>,
    /// --mint-token: the token's subject.
    #[arg(long, default_value = "bench-user")]
    subject: String,
    /// --mint-token: scopes (repeatable).
    #[arg(long = "scope", default_value = "mcp")]
    scopes: Vec<String>,
    /// --mint-token: lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    token_ttl: u64,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Sessions opened concurrently while setting up.
    #[arg(long, default_value_t = 64)]
    open_concurrency: usize,
    /// Runtime worker threads (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Idle mode: open this many sessions on the first target, hold them
    /// without calls, then close them. No load is generated.
    #[arg(long, value_name = "N")]
    idle_sessions: Option<usize>,
    /// Idle mode: seconds to hold the sessions open.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    hold: f64,
    /// Idle mode: close each session's TCP connection right after its
    /// handshake (the sessions stay; only per-session state remains).
    #[arg(long)]
    idle_drop_connections: bool,
    /// Idle mode: report VmRSS/VmHWM of this process (e.g. the gateway)
    /// before opening, once all sessions are open, and after holding.
    #[arg(long, value_name = "PID")]
    rss_pid: Option<u32>,
    /// Print machine-readable JSON on stdout (the human report goes to stderr).
    #[arg(long)]
    json: bool,
}

/// Human-readable output: stdout normally, stderr when --json owns stdout.
struct Out {
    to_stderr: bool,
}

impl Out {
    fn line(&self, s: &str) {
        if self.to_stderr {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    }
}

fn parse_header(h: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let (k, v) = h
        .split_once(':')
        .with_context(|| format!("--header expects 'Name: value', got {h:?}"))?;
    let name = HeaderName::from_bytes(k.trim().as_bytes())
        .with_context(|| format!("bad header name {k:?}"))?;
    let value = HeaderValue::from_str(v.trim()).with_context(|| format!("bad value for {k}"))?;
    Ok((name, value))
}

fn secs(x: f64, flag: &str) -> anyhow::Result<Duration> {
    if !x.is_finite() || x < 0.0 {
        bail!("{flag} must be a non-negative number of seconds");
    }
    Ok(Duration::from_secs_f64(x))
}

fn targets(cli: &Cli) -> anyhow::Result<Vec<Target>> {
    let args: Value = serde_json::from_str(&cli.args).context("--args is not JSON")?;
    if !args.is_object() {
        bail!("--args must be a JSON object");
    }
    let parse = |hs: &[String]| {
        hs.iter()
            .map(|h| parse_header(h))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let headers = parse(&cli.headers)?;
    let mut compare_headers = headers.clone();
    compare_headers.extend(parse(&cli.compare_headers)?);
    let tls_files = tls::TlsFiles {
        cacert: cli.cacert.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
    };
    // Handshake mode measures full handshakes; sessions may resume.
    let tls = match &cli.cacert {
        Some(_) => Some(tls::client_config(&tls_files, !cli.handshakes)?),
        None => None,
    };
    let compare_at = cli.compare.as_ref().map(|_| cli.urls.len());
    let timeout = Duration::from_millis(cli.timeout_ms.max(1));
    let mut specs: Vec<(String, String)> = cli
        .urls
        .iter()
        .map(|u| (u.clone(), cli.tool.clone()))
        .collect();
    if let Some(c) = &cli.compare {
        specs.push((
            c.clone(),
            cli.compare_tool.clone().unwrap_or(cli.tool.clone()),
        ));
    }
    specs
        .into_iter()
        .enumerate()
        .map(|(i, (spec, default_tool))| {
            let (url, tool) = match spec.split_once('#') {
                Some((u, t)) if !t.is_empty() => (u.to_owned(), t.to_owned()),
                Some((u, _)) => (u.to_owned(), default_tool),
                None => (spec.clone(), default_tool),
            };
            let label = cli.labels.get(i).cloned().unwrap_or_else(|| match i {
                0 => "baseline".to_owned(),
                n => format!("target{n}"),
            });
            let hs = if Some(i) == compare_at {
                &compare_headers
            } else {
                &headers
            };
            Target::new(label, &url, tool, args.clone(), hs, timeout, tls.as_ref())
        })
        .collect()
}

/// Opens `n` sessions with bounded concurrency; failures are returned apart.
/// With `drop_conn`, each session's connection is closed as soon as it is open.
async fn open_sessions(
    t: &Arc<Target>,
    n: usize,
    concurrency: usize,
    drop_conn: bool,
) -> (Vec<Session>, Vec<mcp::CallError>) {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let t = t.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            let mut s = Session::open(&t).await?;
            if drop_conn {
                s.drop_connection();
            }
            Ok(s)
        }));
    }
    let mut ok = Vec::with_capacity(n);
    let mut failed = Vec::new();
    for task in tasks {
        match task.await {
            Ok(Ok(s)) => ok.push(s),
            Ok(Err(e)) => failed.push(e),
            Err(e) => failed.push(mcp::CallError {
                kind: "transport",
                detail: format!("session task failed: {e}"),
            }),
        }
    }
    (ok, failed)
}

/// When to count and when to stop.
pub(crate) struct Plan {
    pub(crate) t0: Instant,
    /// End of the window (duration mode).
    t1: Option<Instant>,
    /// Calls left to claim (request-count mode).
    budget: Option<AtomicU64>,
}

impl Plan {
    fn new(cli: &Cli) -> anyhow::Result<Plan> {
        let t0 = Instant::now() + secs(cli.warmup, "--warmup")?;
        Ok(match cli.requests {
            Some(n) => Plan {
                t0,
                t1: None,
                budget: Some(AtomicU64::new(n)),
            },
            None => Plan {
                t0,
                t1: Some(t0 + secs(cli.duration, "--duration")?),
                budget: None,
            },
        })
    }

    /// Before an operation: `None` to stop, else whether it may count.
    pub(crate) fn next(&self) -> Option<bool> {
        let now = Instant::now();
        match (&self.t1, &self.budget) {
            (Some(t1), _) => (now < *t1).then_some(now >= self.t0),
            (None, Some(budget)) => {
                if now < self.t0 {
                    return Some(false);
                }
                budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                    .ok()
                    .map(|_| true)
            }
            (None, None) => None,
        }
    }

    /// After it: duration mode counts only operations that started and
    /// ended inside the window.
    pub(crate) fn counts(&self, counted: bool, start: Instant, end: Instant) -> bool {
        counted && start >= self.t0 && self.t1.is_none_or(|t1| end <= t1)
    }

    /// The measured window's length (request mode: until the last count).
    fn elapsed(&self, last_end: Duration) -> Duration {
        match self.t1 {
            Some(t1) => t1.duration_since(self.t0),
            None => last_end,
        }
    }

    /// CPU time `pid` spends inside the window (duration mode only).
    fn cpu_of(&self, pid: Option<u32>) -> Option<tokio::task::JoinHandle<Option<Duration>>> {
        let (pid, t1) = (pid?, self.t1?);
        let t0 = self.t0;
        Some(tokio::spawn(async move {
            tokio::time::sleep_until(t0.into()).await;
            let a = tls::cpu_time(pid)?;
            tokio::time::sleep_until(t1.into()).await;
            Some(tls::cpu_time(pid)?.saturating_sub(a))
        }))
    }
}

async fn drive(mut s: Session, t: Arc<Target>, plan: Arc<Plan>) -> (SessionStats, Session) {
    let mut st = SessionStats::default();
    while let Some(counted) = plan.next() {
        let (start, r) = s.call_tool(&t).await;
        let end = Instant::now();
        let counted = plan.counts(counted, start, end);
        let broken = match &r {
            Err(e) => e.breaks_connection(),
            Ok(_) => false,
        };
        if counted {
            match r {
                Ok(lat) => st.samples.push(lat.as_nanos().min(u64::MAX as u128) as u64),
                Err(e) => st.error(e.kind, &e.detail),
            }
            st.last_end = st.last_end.max(end.saturating_duration_since(plan.t0));
        }
        if broken {
            // Do not spin on a dead endpoint.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    (st, s)
}

/// One round of one target.
struct Measured {
    opened: usize,
    open_failures: Vec<mcp::CallError>,
    open_ms: f64,
    reconnects: u64,
    stats: SessionStats,
    elapsed: Duration,
    cpu: Option<Duration>,
}

async fn measure(cli: &Cli, t: Arc<Target>, cpu_pid: Option<u32>) -> anyhow::Result<Measured> {
    let begin = Instant::now();
    let (sessions, open_failures) =
        open_sessions(&t, cli.sessions, cli.open_concurrency, false).await;
    let open_ms = begin.elapsed().as_secs_f64() * 1000.0;
    if sessions.is_empty() {
        let first = open_failures
            .first()
            .map(ToString::to_string)
            .unwrap_or_default();
        bail!(
            "{} ({}): no session could be opened; first error: {first}",
            t.label,
            t.url
        );
    }
    let opened = sessions.len();
    let plan = Arc::new(Plan::new(cli)?);
    let cpu = plan.cpu_of(cpu_pid);
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|s| tokio::spawn(drive(s, t.clone(), plan.clone())))
        .collect();
    let mut all = SessionStats::default();
    let mut done = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (st, s) = task.await.context("session task panicked")?;
        all.merge(st);
        done.push(s);
    }
    let cpu = match cpu {
        Some(h) => h.await.ok().flatten(),
        None => None,
    };
    let elapsed = plan.elapsed(all.last_end);
    let reconnects = done.iter().map(|s| s.connects.saturating_sub(1)).sum();
    let closes: Vec<_> = done
        .into_iter()
        .map(|s| {
            let t = t.clone();
            tokio::spawn(async move { s.close(&t).await })
        })
        .collect();
    for c in closes {
        let _ = c.await;
    }
    Ok(Measured {
        opened,
        open_failures,
        open_ms,
        reconnects,
        stats: all,
        elapsed,
        cpu,
    })
}

/// A target's numbers over all rounds.
#[derive(Default)]
struct TargetResult {
    /// Fewest sessions opened in a round.
    opened: usize,
    open_failures: Vec<mcp::CallError>,
    /// Slowest session setup of a round.
    open_ms: f64,
    reconnects: u64,
    merged: SessionStats,
    elapsed: Duration,
    /// CPU time of the target's --cpu-pid in the windows (all rounds had one).
    cpu: Option<Duration>,
    /// Each round on its own.
    rounds: Vec<Summary>,
}

impl TargetResult {
    fn add(&mut self, m: Measured) {
        let first = self.rounds.is_empty();
        self.opened = if first {
            m.opened
        } else {
            self.opened.min(m.opened)
        };
        self.open_failures.extend(m.open_failures);
        self.open_ms = self.open_ms.max(m.open_ms);
        self.reconnects += m.reconnects;
        self.cpu = match (first, self.cpu, m.cpu) {
            (true, _, c) => c,
            (false, Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        self.elapsed += m.elapsed;
        self.rounds.push(Summary::new(
            SessionStats {
                samples: m.stats.samples.clone(),
                errors: m.stats.errors.clone(),
                first_error: m.stats.first_error.clone(),
                last_end: m.stats.last_end,
            },
            m.elapsed,
        ));
        self.merged.merge(m.stats);
    }

    fn summary(&self) -> Summary {
        Summary::new(
            SessionStats {
                samples: self.merged.samples.clone(),
                errors: self.merged.errors.clone(),
                first_error: self.merged.first_error.clone(),
                last_end: self.merged.last_end,
            },
            self.elapsed,
        )
    }
}

/// Server CPU µs per successful call, when measured.
fn cpu_per_call(cpu: Option<Duration>, s: &Summary) -> Option<f64> {
    let cpu = cpu?;
    (s.ok > 0).then(|| cpu.as_secs_f64() * 1e6 / s.ok as f64)
}

fn report_target(out: &Out, t: &Target, r: &TargetResult, s: &Summary) {
    out.line(&format!("== {}: {} (tool {})", t.label, t.url, t.tool));
    out.line(&format!(
        "   sessions {} opened in {:.0} ms{}{}{}",
        r.opened,
        r.open_ms,
        if r.rounds.len() > 1 {
            format!(" (each of {} rounds)", r.rounds.len())
        } else {
            String::new()
        },
        if r.open_failures.is_empty() {
            String::new()
        } else {
            format!(", {} failed to open", r.open_failures.len())
        },
        if r.reconnects > 0 {
            format!(", {} reconnects", r.reconnects)
        } else {
            String::new()
        }
    ));
    out.line(&format!(
        "   requests {}  errors {}  throughput {:.0} req/s  ({:.2} s measured)",
        s.requests, s.errors, s.throughput, s.elapsed_s
    ));
    out.line(&format!(
        "   latency µs: p50 {:.0}  p90 {:.0}  p99 {:.0}  max {:.0}  mean {:.0}",
        s.p50, s.p90, s.p99, s.max, s.mean
    ));
    if let (Some(cpu), Some(per)) = (r.cpu, cpu_per_call(r.cpu, s)) {
        out.line(&format!(
            "   server CPU {:.2} s in the window(s): {per:.1} µs per call",
            cpu.as_secs_f64()
        ));
    }
    if r.rounds.len() > 1 {
        for (i, rs) in r.rounds.iter().enumerate() {
            out.line(&format!(
                "   round {}: p50 {:.0}  p99 {:.0} µs  {:.0} req/s",
                i + 1,
                rs.p50,
                rs.p99,
                rs.throughput
            ));
        }
    }
    for (kind, n) in &s.errors_by_kind {
        let first = s.first_error.get(kind).map(String::as_str).unwrap_or("");
        out.line(&format!("   errors[{kind}] {n}, first: {first}"));
    }
}

fn comparison(base: &Summary, other: &Summary) -> (f64, f64, f64) {
    let ratio = if base.throughput > 0.0 {
        other.throughput / base.throughput
    } else {
        0.0
    };
    (other.p50 - base.p50, other.p99 - base.p99, ratio)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => v.get(n / 2).copied().unwrap_or(0.0),
        _ => {
            (v.get(n / 2 - 1).copied().unwrap_or(0.0) + v.get(n / 2).copied().unwrap_or(0.0)) / 2.0
        }
    }
}

async fn load_mode(cli: &Cli, out: &Out) -> anyhow::Result<bool> {
    let targets: Vec<Arc<Target>> = targets(cli)?.into_iter().map(Arc::new).collect();
    let rounds = cli.rounds.max(1);
    let mode = match cli.requests {
        Some(n) => format!("{n} calls per target"),
        None => format!("{} s per target", cli.duration),
    };
    out.line(&format!(
        "portcullis-load: {} sessions, {mode}, {} s warmup, {} threads{}",
        cli.sessions,
        cli.warmup,
        threads(cli),
        if rounds > 1 {
            format!(", {rounds} rounds in turn")
        } else {
            String::new()
        }
    ));
    let mut results: Vec<TargetResult> = targets.iter().map(|_| TargetResult::default()).collect();
    for round in 0..rounds {
        for (i, (t, acc)) in targets.iter().zip(results.iter_mut()).enumerate() {
            if round > 0 || i > 0 {
                // Let the previous target's connections wind down.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let m = measure(cli, t.clone(), cli.cpu_pids.get(i).copied()).await?;
            acc.add(m);
        }
    }
    let summaries: Vec<Summary> = results.iter().map(TargetResult::summary).collect();
    for ((t, r), s) in targets.iter().zip(results.iter()).zip(summaries.iter()) {
        report_target(out, t, r, s);
    }
    let mut comps = Vec::new();
    if let (Some(bt), Some(base), Some(br)) = (targets.first(), summaries.first(), results.first())
    {
        for ((t, s), r) in targets
            .iter()
            .zip(summaries.iter())
            .zip(results.iter())
            .skip(1)
        {
            let (dp50, dp99, ratio) = comparison(base, s);
            let per_round: Vec<f64> = br
                .rounds
                .iter()
                .zip(r.rounds.iter())
                .map(|(b, o)| o.p50 - b.p50)
                .collect();
            let added_cpu = match (cpu_per_call(br.cpu, base), cpu_per_call(r.cpu, s)) {
                (Some(b), Some(o)) => Some(o - b),
                _ => None,
            };
            out.line(&format!(
                "== {} vs {}: added p50 {:+.0} µs, added p99 {:+.0} µs, throughput ratio {:.2} ({:.0}% of {}){}{}",
                t.label,
                bt.label,
                dp50,
                dp99,
                ratio,
                ratio * 100.0,
                bt.label,
                if per_round.len() > 1 {
                    format!(
                        "; added p50 per round {} (median {:+.0})",
                        per_round
                            .iter()
                            .map(|d| format!("{d:+.0}"))
                            .collect::<Vec<_>>()
                            .join(" "),
                        median(per_round.clone())
                    )
                } else {
                    String::new()
                },
                added_cpu
                    .map(|c| format!("; added server CPU {c:+.1} µs per call"))
                    .unwrap_or_default()
            ));
            comps.push(json!({
                "baseline": bt.label,
                "target": t.label,
                "added_p50_us": round(dp50, 1),
                "added_p99_us": round(dp99, 1),
                "throughput_ratio": round(ratio, 3),
                "added_p50_us_per_round": per_round.iter().map(|d| round(*d, 1)).collect::<Vec<_>>(),
                "added_p50_us_median_of_rounds": round(median(per_round), 1),
                "added_cpu_us_per_call": added_cpu.map(|c| round(c, 2)),
            }));
        }
    }
    let mut ok = true;
    for (t, s) in targets.iter().zip(summaries.iter()) {
        if s.mostly_failed() {
            ok = false;
            let first = s.first_error.values().next().cloned();
            eprintln!(
                "FAIL: {} ({}): {} of {} calls failed{}",
                t.label,
                t.url,
                s.errors,
                s.requests,
                first
                    .map(|f| format!("; first error: {f}"))
                    .unwrap_or_default()
            );
        } else if s.errors > 0 {
            eprintln!(
                "WARNING: {}: {} of {} calls failed",
                t.label, s.errors, s.requests
            );
        }
    }
    if cli.json {
        let tj: Vec<Value> = targets
            .iter()
            .zip(results.iter())
            .zip(summaries.iter())
            .map(|((t, r), s)| {
                let mut v = s.to_json();
                if let Some(o) = v.as_object_mut() {
                    o.insert("label".into(), json!(t.label));
                    o.insert("url".into(), json!(t.url));
                    o.insert("tool".into(), json!(t.tool));
                    o.insert("tls".into(), json!(t.tls.is_some()));
                    o.insert("sessions_opened".into(), json!(r.opened));
                    o.insert("session_open_failures".into(), json!(r.open_failures.len()));
                    o.insert("open_ms".into(), json!(round(r.open_ms, 1)));
                    o.insert("reconnects".into(), json!(r.reconnects));
                    o.insert(
                        "server_cpu_s".into(),
                        json!(r.cpu.map(|c| round(c.as_secs_f64(), 2))),
                    );
                    o.insert(
                        "server_cpu_us_per_call".into(),
                        json!(cpu_per_call(r.cpu, s).map(|c| round(c, 2))),
                    );
                    o.insert(
                        "rounds".into(),
                        json!(r
                            .rounds
                            .iter()
                            .map(|x| json!({
                                "p50_us": round(x.p50, 1),
                                "p99_us": round(x.p99, 1),
                                "throughput_rps": round(x.throughput, 1),
                                "errors": x.errors,
                            }))
                            .collect::<Vec<_>>()),
                    );
                }
                v
            })
            .collect();
        let doc = json!({
            "config": {
                "sessions": cli.sessions,
                "duration_s": if cli.requests.is_some() { Value::Null } else { json!(cli.duration) },
                "requests": cli.requests,
                "warmup_s": cli.warmup,
                "rounds": rounds,
                "threads": threads(cli),
                "protocol_version": mcp::PROTOCOL_VERSION,
            },
            "targets": tj,
            "comparison": comps,
            "ok": ok,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(ok)
}

async fn handshake_mode(cli: &Cli, out: &Out) -> anyhow::Result<bool> {
    let t = Arc::new(targets(cli)?.into_iter().next().context("no target")?);
    let workers = cli.concurrency.max(1);
    let what = match (&t.tls, cli.cert.is_some(), cli.handshake_request) {
        (None, _, r) => format!("TCP connect{}", if r { " + 1 request" } else { "" }),
        (Some(_), c, r) => format!(
            "full TLS handshake{}{}",
            if c { " with client certificate" } else { "" },
            if r { " + 1 request" } else { "" }
        ),
    };
    out.line(&format!(
        "portcullis-load --handshakes: {what}, {workers} workers, {} s warmup, {}",
        cli.warmup,
        match cli.requests {
            Some(n) => format!("{n} connections"),
            None => format!("{} s", cli.duration),
        }
    ));
    let plan = Arc::new(Plan::new(cli)?);
    let cpu = plan.cpu_of(cli.cpu_pids.first().copied());
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            tokio::spawn(handshake::worker(
                t.clone(),
                plan.clone(),
                cli.handshake_request,
            ))
        })
        .collect();
    let mut all = SessionStats::default();
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    for task in tasks {
        let w = task.await.context("worker panicked")?;
        all.merge(w.stats);
        for (k, n) in w.statuses {
            *statuses.entry(k).or_insert(0) += n;
        }
    }
    let cpu = match cpu {
        Some(h) => h.await.ok().flatten(),
        None => None,
    };
    let elapsed = plan.elapsed(all.last_end);
    let s = Summary::new(all, elapsed);
    let cpu_per = cpu_per_call(cpu, &s);
    out.line(&format!("== {} ({})", t.url, what));
    out.line(&format!(
        "   connections {}  errors {}  {:.0} per second  ({:.2} s measured)",
        s.ok, s.errors, s.throughput, s.elapsed_s
    ));
    out.line(&format!(
        "   time per connection µs: p50 {:.0}  p90 {:.0}  p99 {:.0}  max {:.0}",
        s.p50, s.p90, s.p99, s.max
    ));
    if let (Some(c), Some(per)) = (cpu, cpu_per) {
        out.line(&format!(
            "   server CPU {:.2} s: {per:.0} µs per connection, i.e. at most {:.0} per second per core of server CPU",
            c.as_secs_f64(),
            1e6 / per.max(1e-9)
        ));
    }
    if !statuses.is_empty() {
        out.line(&format!("   HTTP statuses: {statuses:?}"));
    }
    for (kind, n) in &s.errors_by_kind {
        let first = s.first_error.get(kind).map(String::as_str).unwrap_or("");
        out.line(&format!("   errors[{kind}] {n}, first: {first}"));
    }
    let ok = !s.mostly_failed();
    if !ok {
        eprintln!(
            "FAIL: {}: {} of {} connections failed{}",
            t.url,
            s.errors,
            s.requests,
            s.first_error
                .values()
                .next()
                .map(|f| format!("; first error: {f}"))
                .unwrap_or_default()
        );
    }
    if cli.json {
        let mut v = s.to_json();
        if let Some(o) = v.as_object_mut() {
            o.insert("url".into(), json!(t.url));
            o.insert("what".into(), json!(what));
            o.insert("tls".into(), json!(t.tls.is_some()));
            o.insert("client_certificate".into(), json!(cli.cert.is_some()));
            o.insert("with_request".into(), json!(cli.handshake_request));
            o.insert("workers".into(), json!(workers));
            o.insert("warmup_s".into(), json!(cli.warmup));
            o.insert(
                "statuses".into(),
                json!(statuses
                    .iter()
                    .map(|(k, n)| (k.to_string(), *n))
                    .collect::<std::collections::BTreeMap<_, _>>()),
            );
            o.insert(
                "server_cpu_s".into(),
                json!(cpu.map(|c| round(c.as_secs_f64(), 2))),
            );
            o.insert(
                "server_cpu_us_per_connection".into(),
                json!(cpu_per.map(|c| round(c, 1))),
            );
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"handshakes": v, "ok": ok}))?
        );
    }
    Ok(ok)
}

async fn rss(pid: u32) -> Option<(u64, u64)> {
    let s = tokio::fs::read_to_string(format!("/proc/{pid}/status"))
        .await
        .ok()?;
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

async fn idle_mode(cli: &Cli, n: usize, out: &Out) -> anyhow::Result<bool> {
    let t = Arc::new(targets(cli)?.into_iter().next().context("no target")?);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let before = match cli.rss_pid {
        Some(pid) => rss(pid).await,
        None => None,
    };
    if let (Some(pid), None) = (cli.rss_pid, before) {
        bail!("cannot read /proc/{pid}/status");
    }
    let begin = Instant::now();
    let (sessions, failed) =
        open_sessions(&t, n, cli.open_concurrency, cli.idle_drop_connections).await;
    let open_ms = begin.elapsed().as_secs_f64() * 1000.0;
    let with_id = sessions.iter().filter(|s| s.has_session_id()).count();
    out.line(&format!(
        "== idle: {} sessions on {} opened in {:.0} ms ({} failed, {} with Mcp-Session-Id), connections {}",
        sessions.len(),
        t.url,
        open_ms,
        failed.len(),
        with_id,
        if cli.idle_drop_connections {
            "closed after initialize"
        } else {
            "held open"
        }
    ));
    if let Some(e) = failed.first() {
        out.line(&format!("   first open error: {e}"));
    }
    // Give the server a moment to settle (allocator, lazily spawned tasks).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (at_open, after) = match cli.rss_pid {
        Some(pid) => {
            let a = rss(pid).await;
            tokio::time::sleep(secs(cli.hold, "--hold")?).await;
            (a, rss(pid).await)
        }
        None => {
            tokio::time::sleep(secs(cli.hold, "--hold")?).await;
            (None, None)
        }
    };
    if let (Some(pid), Some((b, _)), Some((o, _)), Some((a, hwm))) =
        (cli.rss_pid, before, at_open, after)
    {
        let per = if sessions.is_empty() {
            0.0
        } else {
            (o.saturating_sub(b)) as f64 / sessions.len() as f64
        };
        out.line(&format!(
            "   pid {pid} VmRSS: {:.1} MiB before, {:.1} MiB with {} idle sessions, {:.1} MiB after {} s hold (VmHWM {:.1} MiB); ~{:.1} KiB per session",
            mib(b),
            mib(o),
            sessions.len(),
            mib(a),
            cli.hold,
            mib(hwm),
            per
        ));
    }
    let opened = sessions.len();
    let closes: Vec<_> = sessions
        .into_iter()
        .map(|s| {
            let t = t.clone();
            tokio::spawn(async move { s.close(&t).await })
        })
        .collect();
    for c in closes {
        let _ = c.await;
    }
    let ok = failed.len() * 2 <= n && opened > 0;
    if !ok {
        eprintln!(
            "FAIL: only {opened} of {n} idle sessions opened; first error: {}",
            failed.first().map(ToString::to_string).unwrap_or_default()
        );
    }
    if cli.json {
        let kib = |x: Option<(u64, u64)>| x.map(|(r, _)| r);
        let doc = json!({
            "idle": {
                "url": t.url,
                "requested": n,
                "opened": opened,
                "failed": failed.len(),
                "with_session_id": with_id,
                "open_ms": round(open_ms, 1),
                "hold_s": cli.hold,
                "connections_held": !cli.idle_drop_connections,
                "rss_pid": cli.rss_pid,
                "vmrss_kib_before": kib(before),
                "vmrss_kib_open": kib(at_open),
                "vmrss_kib_after_hold": kib(after),
                "vmhwm_kib": after.map(|(_, h)| h),
            },
            "ok": ok,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(ok)
}

async fn mint_mode(cli: &Cli, dir: &std::path::Path) -> anyhow::Result<bool> {
    let audience = cli
        .audience
        .as_deref()
        .context("--mint-token needs --audience (the gateway's resource URI)")?;
    let token = tls::mint(
        dir,
        &cli.subject,
        audience,
        &cli.scopes,
        Duration::from_secs(cli.token_ttl),
    )
    .await?;
    println!("{token}");
    Ok(true)
}

fn threads(cli: &Cli) -> usize {
    cli.threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        })
        .max(1)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Out {
        to_stderr: cli.json,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads(&cli))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        if let Some(dir) = &cli.mint_token {
            return mint_mode(&cli, dir).await;
        }
        match cli.idle_sessions {
            Some(n) => idle_mode(&cli, n, &out).await,
            None if cli.handshakes => handshake_mode(&cli, &out).await,
            None => load_mode(&cli, &out).await,
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("portcullis-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
