//! `portcullis-load`: opens N concurrent MCP sessions against one or more
//! Streamable HTTP endpoints and measures `tools/call` latency and
//! throughput, e.g. a server directly versus the same server behind
//! Portcullis.

mod mcp;
mod stats;

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
/// Every session is one HTTP/1.1 keep-alive connection: `initialize`
/// (protocolVersion 2025-11-25), `notifications/initialized`, then
/// `tools/call` back to back. Targets are measured one after the other;
/// the first is the baseline the others are compared with.
#[derive(Parser)]
#[command(name = "portcullis-load", version)]
struct Cli {
    /// Endpoint to measure (repeatable). `URL#TOOL` sets that target's tool.
    #[arg(long = "url", value_name = "URL[#TOOL]", required = true)]
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
    let headers = cli
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<anyhow::Result<Vec<_>>>()?;
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
            Target::new(label, &url, tool, args.clone(), &headers, timeout)
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
struct Plan {
    t0: Instant,
    /// End of the window (duration mode).
    t1: Option<Instant>,
    /// Calls left to claim (request-count mode).
    budget: Option<AtomicU64>,
}

async fn drive(mut s: Session, t: Arc<Target>, plan: Arc<Plan>) -> (SessionStats, Session) {
    let mut st = SessionStats::default();
    loop {
        let now = Instant::now();
        let counted = match (&plan.t1, &plan.budget) {
            (Some(t1), _) => {
                if now >= *t1 {
                    break;
                }
                now >= plan.t0
            }
            (None, Some(budget)) => {
                if now >= plan.t0 {
                    let claimed = budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1));
                    if claimed.is_err() {
                        break;
                    }
                    true
                } else {
                    false
                }
            }
            (None, None) => break,
        };
        let (start, r) = s.call_tool(&t).await;
        let end = Instant::now();
        // Duration mode counts only calls that started and ended inside the window.
        let counted = counted && start >= plan.t0 && plan.t1.is_none_or(|t1| end <= t1);
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

struct TargetResult {
    opened: usize,
    open_failures: Vec<mcp::CallError>,
    open_ms: f64,
    reconnects: u64,
    summary: Summary,
}

async fn measure(cli: &Cli, t: Arc<Target>) -> anyhow::Result<TargetResult> {
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
    let t0 = Instant::now() + secs(cli.warmup, "--warmup")?;
    let plan = Arc::new(match cli.requests {
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
    });
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
    let elapsed = match plan.t1 {
        Some(t1) => t1.duration_since(plan.t0),
        None => all.last_end,
    };
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
    Ok(TargetResult {
        opened,
        open_failures,
        open_ms,
        reconnects,
        summary: Summary::new(all, elapsed),
    })
}

fn report_target(out: &Out, t: &Target, r: &TargetResult) {
    let s = &r.summary;
    out.line(&format!("== {}: {} (tool {})", t.label, t.url, t.tool));
    out.line(&format!(
        "   sessions {} opened in {:.0} ms{}{}",
        r.opened,
        r.open_ms,
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

async fn load_mode(cli: &Cli, out: &Out) -> anyhow::Result<bool> {
    let targets: Vec<Arc<Target>> = targets(cli)?.into_iter().map(Arc::new).collect();
    let mode = match cli.requests {
        Some(n) => format!("{n} calls per target"),
        None => format!("{} s per target", cli.duration),
    };
    out.line(&format!(
        "portcullis-load: {} sessions, {mode}, {} s warmup, {} threads",
        cli.sessions,
        cli.warmup,
        threads(cli)
    ));
    let mut results = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        if i > 0 {
            // Let the previous target's connections wind down.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let r = measure(cli, t.clone()).await?;
        report_target(out, t, &r);
        results.push(r);
    }
    let mut comps = Vec::new();
    if let (Some(bt), Some(base)) = (targets.first(), results.first()) {
        for (t, r) in targets.iter().zip(results.iter()).skip(1) {
            let (dp50, dp99, ratio) = comparison(&base.summary, &r.summary);
            out.line(&format!(
                "== {} vs {}: added p50 {:+.0} µs, added p99 {:+.0} µs, throughput ratio {:.2} ({:.0}% of {})",
                t.label,
                bt.label,
                dp50,
                dp99,
                ratio,
                ratio * 100.0,
                bt.label
            ));
            comps.push(json!({
                "baseline": bt.label,
                "target": t.label,
                "added_p50_us": round(dp50, 1),
                "added_p99_us": round(dp99, 1),
                "throughput_ratio": round(ratio, 3),
            }));
        }
    }
    let mut ok = true;
    for (t, r) in targets.iter().zip(results.iter()) {
        if r.summary.mostly_failed() {
            ok = false;
            let first = r.summary.first_error.values().next().cloned();
            eprintln!(
                "FAIL: {} ({}): {} of {} calls failed{}",
                t.label,
                t.url,
                r.summary.errors,
                r.summary.requests,
                first
                    .map(|f| format!("; first error: {f}"))
                    .unwrap_or_default()
            );
        } else if r.summary.errors > 0 {
            eprintln!(
                "WARNING: {}: {} of {} calls failed",
                t.label, r.summary.errors, r.summary.requests
            );
        }
    }
    if cli.json {
        let tj: Vec<Value> = targets
            .iter()
            .zip(results.iter())
            .map(|(t, r)| {
                let mut v = r.summary.to_json();
                if let Some(o) = v.as_object_mut() {
                    o.insert("label".into(), json!(t.label));
                    o.insert("url".into(), json!(t.url));
                    o.insert("tool".into(), json!(t.tool));
                    o.insert("sessions_opened".into(), json!(r.opened));
                    o.insert("session_open_failures".into(), json!(r.open_failures.len()));
                    o.insert("open_ms".into(), json!(round(r.open_ms, 1)));
                    o.insert("reconnects".into(), json!(r.reconnects));
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
        match cli.idle_sessions {
            Some(n) => idle_mode(&cli, n, &out).await,
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
