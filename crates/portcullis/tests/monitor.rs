//! Monitoring through the gateway binary: every decision in the audit log
//! before its answer leaves, `audit verify` on the real file (and on edited
//! copies), a kill -9 under load that leaves a verifiable log, trace
//! context end to end, the risk score in policy, and /metrics scraped and
//! parsed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

fn config(dir: &Path, extra: &str) -> PathBuf {
    let log = dir.join("upstream.log");
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
state_dir = {state:?}
{extra}

[[upstream]]
name = "demo"
command = [{BIN:?}, "demo-server"]
env = {{ PORTCULLIS_DEMO_LOG = {log:?} }}

[[segment]]
name = "secrets"
labels = ["confidential"]
tools = ["demo__read_secret"]
"#,
            state = dir.join("state").display().to_string(),
            log = log.display().to_string(),
        ),
    )
    .unwrap();
    cfg
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn verify(files: &[&Path], extra: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .args(extra)
        .args(files)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The admin listener's address and the folder of the admin client
/// certificate (development default), from the start-up line.
fn admin(gw: &Gateway) -> (String, PathBuf) {
    let mut line = String::new();
    assert!(
        eventually(10, || {
            line = gw
                .log_text()
                .lines()
                .find(|l| l.contains("admin API on https://"))
                .unwrap_or_default()
                .to_owned();
            !line.is_empty()
        }),
        "admin line: {}",
        gw.log_text()
    );
    let rest = line.split("https://").nth(1).unwrap();
    let addr = rest.split_whitespace().next().unwrap().to_owned();
    let dir = rest
        .split("admin client certificate in ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')');
    (addr, PathBuf::from(dir.trim()))
}

/// GET over https with curl: (status, body); status 0 when TLS failed.
/// `client`: the folder with cert.pem and key.pem to present.
fn admin_get(addr: &str, ca: &Path, client: Option<&Path>, path: &str) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-m", "20", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca);
    if let Some(d) = client {
        c.arg("--cert")
            .arg(d.join("cert.pem"))
            .arg("--key")
            .arg(d.join("key.pem"));
    }
    let out = c.arg(format!("https://{addr}{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Parses Prometheus text into (series with labels, value); scraped with
/// the admin client certificate in `client` (its CA is STATE/ca).
fn scrape(addr: &str, client: &Path) -> Vec<(String, f64)> {
    let ca = client.parent().unwrap().join("ca").join("ca.pem");
    let (status, text) = admin_get(addr, &ca, Some(client), "/metrics");
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with EOF");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse::<f64>().unwrap())
        })
        .collect()
}

fn metric(m: &[(String, f64)], series: &str) -> f64 {
    m.iter()
        .find(|(s, _)| s == series)
        .map(|(_, v)| *v)
        .unwrap_or(0.0)
}

#[test]
fn decisions_are_audited_before_the_answer_and_the_chain_verifies() {
    let dir = tempdir("mon-audit");
    let audit = dir.join("audit.jsonl");
    let cfg = config(&dir, "");
    let gw = start(
        &[
            "--config".into(),
            cfg.display().to_string(),
            "--audit-log".into(),
            audit.display().to_string(),
            "--admin".into(),
            "127.0.0.1:0".into(),
        ],
        &[],
    );
    let sid = gw.session();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let r = gw
        .post(
            &[
                ("mcp-session-id", &sid),
                ("mcp-protocol-version", "2025-06-18"),
                ("traceparent", &traceparent),
            ],
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"demo__echo","arguments":{"message":"sk_live_4eC39HqLyjWDarjtT1zdp7dc"}}}"#,
        )
        .json();
    assert_eq!(
        r["result"]["content"][0]["text"]
            .as_str()
            .map(|s| s.starts_with("Echo:")),
        Some(true),
        "{r}"
    );
    // Read at once: the record was written before the answer was released.
    let recs = records(&audit);
    let allow = recs
        .iter()
        .find(|r| r["kind"] == "decision" && r["tool"] == "demo__echo")
        .unwrap_or_else(|| panic!("no decision record for the call: {recs:?}"));
    assert_eq!(allow["v"], 1);
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["method"], "tools/call");
    assert_eq!(allow["upstream"], "demo");
    assert_eq!(allow["identity"]["key"], "w=-;u=-");
    assert_eq!(allow["trace_id"], trace);
    assert_eq!(allow["policy_hash"].as_str().map(str::len), Some(64));
    assert!(
        allow["policies"].as_array().is_some_and(|p| !p.is_empty()),
        "{allow}"
    );
    assert!(allow["risk"]["score"].is_u64(), "{allow}");
    assert!(allow["latency_us"].is_u64(), "{allow}");
    assert_eq!(
        allow["args"]["sha256"].as_str().map(str::len),
        Some(64),
        "{allow}"
    );
    assert_eq!(allow["prev"].as_str().map(str::len), Some(64));
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(
        !text.contains("sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
        "arguments are hashed by default, never copied"
    );
    assert!(text.contains("\"kind\":\"session_start\""), "{text}");

    // A denied (hidden) tool: recorded as a deny, and it never reached the upstream.
    let d = gw.call(
        &sid,
        "8",
        "tools/call",
        r#"{"name":"demo__read_secret","arguments":{}}"#,
    );
    assert!(d["error"].is_object(), "{d}");
    let recs = records(&audit);
    assert!(
        recs.iter().any(|r| r["kind"] == "decision"
            && r["tool"] == "demo__read_secret"
            && r["decision"] == "deny"),
        "deny recorded: {recs:?}"
    );
    let up = std::fs::read_to_string(dir.join("upstream.log")).unwrap_or_default();
    assert!(
        !up.contains("read_secret\""),
        "a denied call reached the upstream"
    );

    // An authentication failure is recorded without the credential.
    let bad = gw.post(
        &[("authorization", "Bearer forged.token.value")],
        r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
    );
    assert_eq!(bad.status, 401);
    assert!(eventually(5, || records(&audit)
        .iter()
        .any(|r| r["kind"] == "auth_failure")));
    assert!(!std::fs::read_to_string(&audit)
        .unwrap()
        .contains("forged.token.value"));

    // Metrics: scraped with the admin client certificate, parsed, and
    // consistent with the calls.
    let (addr, client) = admin(&gw);
    let m = scrape(&addr, &client);
    assert!(
        metric(
            &m,
            r#"portcullis_requests_total{method="tools/call",decision="allow",upstream="demo"}"#
        ) >= 1.0,
        "{m:?}"
    );
    assert!(
        metric(
            &m,
            r#"portcullis_requests_total{method="tools/call",decision="deny",upstream="demo"}"#
        ) >= 1.0,
        "{m:?}"
    );
    assert_eq!(metric(&m, "portcullis_sessions_active"), 1.0);
    assert!(
        metric(&m, "portcullis_audit_records_written") >= 3.0,
        "{m:?}"
    );
    assert!(
        metric(
            &m,
            r#"portcullis_auth_failures_total{reason="token_not_accepted"}"#
        ) >= 1.0,
        "{m:?}"
    );
    assert!(
        metric(
            &m,
            r#"portcullis_stage_duration_seconds_count{stage="policy"}"#
        ) >= 2.0,
        "{m:?}"
    );
    assert!(metric(&m, "portcullis_risk_score_count") >= 2.0, "{m:?}");
    let ca = client.parent().unwrap().join("ca").join("ca.pem");
    // The development default has the console's login link on, so the
    // handshake succeeds without a certificate; /metrics still needs one.
    assert_eq!(
        admin_get(&addr, &ca, None, "/metrics").0,
        403,
        "metrics need the admin client certificate"
    );

    // The live file verifies; an edited copy does not, and names the line.
    let (ok, out) = verify(&[&audit], &[]);
    assert!(ok, "{out}");
    let text = std::fs::read_to_string(&audit).unwrap();
    let copy = dir.join("edited.jsonl");
    let edited = text.replacen("\"decision\":\"allow\"", "\"decision\":\"deny\"", 1);
    assert_ne!(edited, text);
    std::fs::write(&copy, &edited).unwrap();
    let line = edited
        .lines()
        .position(|l| l.contains("demo__echo") && l.contains("\"decision\":\"deny\""))
        .unwrap()
        + 1;
    let (ok, out) = verify(&[&copy], &[]);
    assert!(!ok, "an edited record must fail: {out}");
    assert!(
        out.contains(&format!("edited.jsonl:{line}:")),
        "names the edited line {line}: {out}"
    );
}

#[test]
fn traceparent_reaches_http_upstreams() {
    let dir = tempdir("mon-trace");
    let up_log = dir.join("http-upstream.log");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut up = Command::new(BIN)
        .args(["demo-server", "--http", &format!("127.0.0.1:{port}")])
        .env("PORTCULLIS_DEMO_LOG", &up_log)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(10, || std::net::TcpStream::connect((
        "127.0.0.1",
        port
    ))
    .is_ok()));
    let gw = start(
        &[
            "--upstream".into(),
            format!("web=http://127.0.0.1:{port}/mcp"),
            "--audit-log".into(),
            dir.join("audit.jsonl").display().to_string(),
        ],
        &[(
            "PORTCULLIS_STATE_DIR",
            dir.join("state").display().to_string(),
        )],
    );
    let sid = gw.session();
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let r = gw
        .post(
            &[
                ("mcp-session-id", &sid),
                ("mcp-protocol-version", "2025-06-18"),
                ("traceparent", &format!("00-{trace}-b7ad6b7169203331-01")),
            ],
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"web__echo","arguments":{"message":"t"}}}"#,
        )
        .json();
    assert!(r["result"].is_object(), "{r}");
    let _ = up.kill();
    let _ = up.wait();
    let lines = std::fs::read_to_string(&up_log).unwrap();
    let call = lines
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["message"]["method"] == "tools/call")
        .expect("the call reached the upstream");
    let tp = call["traceparent"].as_str().expect("traceparent forwarded");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[1], trace, "same trace");
    assert_ne!(parts[2], "b7ad6b7169203331", "the gateway's own span");
    assert_eq!(parts[3], "01");
}

#[test]
fn kill_9_under_load_leaves_a_verifiable_log_and_every_answer_is_recorded() {
    let dir = tempdir("mon-crash");
    let audit = dir.join("audit.jsonl");
    let cfg = config(&dir, "[audit]\ncheckpoint_every = 50\n");
    let args = vec![
        "--config".to_string(),
        cfg.display().to_string(),
        "--audit-log".into(),
        audit.display().to_string(),
    ];
    let mut gw = start(&args, &[]);
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for w in 0..6 {
        let addr = gw.addr.clone();
        let path = gw.path.clone();
        let answered = answered.clone();
        workers.push(std::thread::spawn(move || {
            let post = |h: &[(&str, &str)], body: &str| {
                let mut hs = vec![ACCEPT, JSON];
                hs.extend_from_slice(h);
                raw(&addr, "POST", &path, &hs, body.as_bytes())
            };
            let sid = std::panic::catch_unwind(|| {
                let r = post(&[], r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#);
                let sid = r.header("mcp-session-id").unwrap().to_owned();
                post(&[("mcp-session-id", &sid)], r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
                sid
            });
            let Ok(sid) = sid else { return };
            for i in 0..10_000u32 {
                let trace = format!("{:08x}{:024x}", w + 1, i + 1);
                let body = format!(
                    r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"demo__echo","arguments":{{"message":"m{i}"}}}}}}"#
                );
                let r = std::panic::catch_unwind(|| {
                    post(
                        &[
                            ("mcp-session-id", &sid),
                            ("mcp-protocol-version", "2025-06-18"),
                            ("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01")),
                        ],
                        &body,
                    )
                    .json()
                });
                match r {
                    Ok(v) if v["result"].is_object() => answered.lock().unwrap().push(trace),
                    _ => return,
                }
            }
        }));
    }
    // Let the load run, then kill the gateway without warning.
    assert!(eventually(30, || answered.lock().unwrap().len() >= 300));
    gw.child.kill().unwrap(); // SIGKILL
    gw.child.wait().unwrap();
    for w in workers {
        let _ = w.join();
    }
    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() >= 300);
    // Every answer a client received has its decision in the file.
    let recorded: HashSet<String> = records(&audit)
        .iter()
        .filter(|r| r["kind"] == "decision")
        .filter_map(|r| r["trace_id"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<&String> = answered.iter().filter(|t| !recorded.contains(*t)).collect();
    assert!(
        missing.is_empty(),
        "{} answered calls have no audit record, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    // The chain holds up to the kill; a torn last line is named, never accepted.
    let (ok, out) = verify(&[&audit], &[]);
    let torn = !std::fs::read(&audit).unwrap().ends_with(b"\n");
    if torn {
        assert!(!ok && out.contains("partial"), "{out}");
    } else {
        assert!(ok, "{out}");
    }
    // A restart recovers (a torn line is cut off and recorded) and continues the chain.
    let gw2 = start(&args, &[]);
    let sid = gw2.session();
    let r = gw2.call(
        &sid,
        "1",
        "tools/call",
        r#"{"name":"demo__echo","arguments":{"message":"after"}}"#,
    );
    assert!(r["result"].is_object(), "{r}");
    drop(gw2);
    let files = audit_files(&dir);
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (ok, out) = verify(&refs, &[]);
    assert!(ok, "after restart: {out}");
    if torn {
        assert!(out.contains("recover"), "the recovery is reported: {out}");
    }
}

#[test]
fn risk_from_behaviour_reaches_policy_and_the_audit_record() {
    let dir = tempdir("mon-risk");
    let audit = dir.join("audit.jsonl");
    let pack = include_str!("../../../policies/default.cedar");
    std::fs::write(
        dir.join("p.cedar"),
        format!(
            "{pack}\n@id(\"risky-callers-stop\")\n@reason(\"risk too high\")\nforbid (principal, action == Portcullis::Action::\"CallTool\", resource)\nwhen {{ context.risk >= 30 }};\n"
        ),
    )
    .unwrap();
    let cfg = config(
        &dir,
        &format!(
            "[policy]\nfiles = [{:?}]\n",
            dir.join("p.cedar").display().to_string()
        ),
    );
    let gw = start(
        &[
            "--config".into(),
            cfg.display().to_string(),
            "--audit-log".into(),
            audit.display().to_string(),
        ],
        &[],
    );
    let sid = gw.session();
    let ok = gw.call(
        &sid,
        "1",
        "tools/call",
        r#"{"name":"demo__echo","arguments":{"message":"hello"}}"#,
    );
    assert!(
        ok["result"].is_object(),
        "a fresh identity is allowed: {ok}"
    );
    // Suspicious arguments, again and again: traversal, a private address.
    let mut denied = None;
    let mut allowed_suspicious = 0;
    for i in 0..20 {
        let r = gw.call(
            &sid,
            &format!("{}", 10 + i),
            "tools/call",
            r#"{"name":"demo__echo","arguments":{"message":"../../../../etc/passwd http://10.0.0.1/admin"}}"#,
        );
        if r["error"].is_object() {
            denied = Some(r);
            break;
        }
        allowed_suspicious += 1;
    }
    let denied = denied.expect("the risk score crossed the policy's threshold");
    assert!(
        denied["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("risk too high"),
        "{denied}"
    );
    let recs = records(&audit);
    let d = recs
        .iter()
        .rev()
        .find(|r| r["kind"] == "decision" && r["decision"] == "deny")
        .unwrap();
    assert!(d["risk"]["score"].as_u64().unwrap() >= 30, "{d}");
    let factors: Vec<&str> = d["risk"]["factors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert!(factors.contains(&"suspicious-args"), "{d}");
    assert!(
        d["policies"].to_string().contains("risky-callers-stop"),
        "{d}"
    );
    assert!(
        recs.iter()
            .any(|r| r["kind"] == "finding" && r["rule"] == "path-traversal"),
        "argument findings are recorded"
    );
    let up = std::fs::read_to_string(dir.join("upstream.log")).unwrap_or_default();
    assert_eq!(
        up.lines().filter(|l| l.contains("passwd")).count(),
        allowed_suspicious,
        "the denied call never reached the upstream"
    );
}

#[test]
fn audit_cli_tails_with_filters_and_verifies_against_key_and_anchors() {
    let dir = tempdir("mon-cli");
    let audit = dir.join("audit.jsonl");
    let anchors = dir.join("anchors.jsonl");
    let cfg = config(
        &dir,
        &format!(
            "[audit]\npath = {:?}\ncheckpoint_every = 4\nanchors = {:?}\n",
            audit.display().to_string(),
            anchors.display().to_string()
        ),
    );
    let gw = start(&["--config".into(), cfg.display().to_string()], &[]);
    let sid = gw.session();
    for i in 0..6 {
        let r = gw.call(
            &sid,
            &format!("{i}"),
            "tools/call",
            r#"{"name":"demo__echo","arguments":{"message":"x"}}"#,
        );
        assert!(r["result"].is_object(), "{r}");
    }
    let d = gw.call(
        &sid,
        "9",
        "tools/call",
        r#"{"name":"demo__read_secret","arguments":{}}"#,
    );
    assert!(d["error"].is_object());
    drop(gw); // SIGKILL: no final checkpoint, anchors hold the earlier ones

    let tail = |args: &[&str]| -> Vec<Value> {
        let out = Command::new(BIN)
            .args(["audit", "tail"])
            .arg(&audit)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let denies = tail(&["-n", "100", "--decision", "deny"]);
    assert!(!denies.is_empty());
    assert!(denies.iter().all(|r| r["decision"] == "deny"), "{denies:?}");
    assert!(denies.iter().any(|r| r["tool"] == "demo__read_secret"));
    let echo = tail(&["-n", "100", "--tool", "demo__echo", "--kind", "decision"]);
    assert_eq!(echo.len(), 6, "{echo:?}");
    let last2 = tail(&["-n", "2", "--tool", "demo__echo"]);
    assert_eq!(last2.len(), 2);
    assert_eq!(last2[1]["seq"], echo[5]["seq"], "the last ones, in order");
    assert_eq!(tail(&["--identity", "nobody-like-this"]).len(), 0);

    // Pinned key and anchors: the log verifies.
    let key = dir.join("state").join("audit-ed25519.pk8.pub");
    let a = anchors.display().to_string();
    let k = key.display().to_string();
    let (ok, out) = verify(&[&audit], &["--key", &k, "--anchors", &a]);
    assert!(ok, "{out}");
    assert!(std::fs::read_to_string(&anchors).unwrap().lines().count() >= 2);
    // Another key: refused.
    let (ok, out) = verify(&[&audit], &["--key", &"ab".repeat(32)]);
    assert!(!ok, "a checkpoint signed by another key must fail: {out}");
    // Trailing records cut back to before the last anchored checkpoint: the
    // chain alone still holds, the anchors do not.
    let text = std::fs::read_to_string(&audit).unwrap();
    let first_cp = text
        .lines()
        .position(|l| l.contains("\"kind\":\"checkpoint\""))
        .unwrap();
    let cut: String = text
        .lines()
        .take(first_cp + 1)
        .map(|l| format!("{l}\n"))
        .collect();
    let short = dir.join("short.jsonl");
    std::fs::write(&short, cut).unwrap();
    let (ok, out) = verify(&[&short], &[]);
    assert!(ok, "a clean cut verifies on its own: {out}");
    let (ok, out) = verify(&[&short], &["--anchors", &a]);
    assert!(!ok, "anchors expose the truncation: {out}");
    assert!(out.contains("short.jsonl:"), "{out}");
    let ends_signed = text
        .lines()
        .last()
        .is_some_and(|l| l.contains("\"kind\":\"checkpoint\""));
    let (ok, out) = verify(&[&audit], &["--strict"]);
    assert_eq!(
        ok, ends_signed,
        "--strict refuses records after the last checkpoint: {out}"
    );
}

/// Fault: the audit log's disk fills up (a file-size limit on the gateway:
/// its writes fail with EFBIG, as with ENOSPC). The gateway fails closed:
/// the answer that could not be recorded is withheld (`-32031`, said in
/// the log), and from then on no call reaches the upstream.
#[test]
fn a_full_audit_disk_fails_closed() {
    let dir = tempdir("mon-disk-full");
    let audit = dir.join("audit.jsonl");
    let cfg = config(&dir, "");
    // bash: SIGXFSZ ignored (so the write fails instead of killing the
    // process; ignored signals survive exec), 24 KiB per file.
    let mut cmd = Command::new("bash");
    cmd.args(["-c", "trap '' XFSZ; ulimit -f 24; exec \"$0\" \"$@\""])
        .arg(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allow-anonymous-loopback",
        ])
        .arg("--config")
        .arg(&cfg)
        .arg("--audit-log")
        .arg(&audit);
    let gw = spawn_gateway(cmd);
    let sid = gw.session();
    let upstream_saw = |marker: &str| {
        std::fs::read_to_string(dir.join("upstream.log"))
            .unwrap_or_default()
            .contains(marker)
    };
    let call = |i: usize| {
        gw.call(
            &sid,
            &i.to_string(),
            "tools/call",
            &format!(r#"{{"name":"demo__echo","arguments":{{"message":"fill-{i:04}"}}}}"#),
        )
    };
    let mut failed_at = None;
    for i in 1..400 {
        let r = call(i);
        if r.get("error").is_some() {
            assert_eq!(r["error"]["code"], -32031, "{r}");
            failed_at = Some(i);
            break;
        }
        assert_eq!(
            r["result"]["content"][0]["text"],
            format!("Echo: fill-{i:04}")
        );
    }
    let first = failed_at.expect("the audit log never filled up");
    println!("audit full after {first} calls");
    assert!(first > 1, "some calls were recorded before the disk filled");
    assert!(
        eventually(5, || gw.log_text().contains("audit log failed")),
        "the gateway says why: {}",
        gw.log_text()
    );
    // From now on everything is refused, and nothing reaches the upstream.
    for i in first + 1..first + 6 {
        let r = call(i);
        assert!(r.get("error").is_some(), "served unaudited: {r}");
        assert!(
            !upstream_saw(&format!("fill-{i:04}")),
            "call {i} reached the upstream"
        );
    }
    // What was recorded still verifies.
    assert!(records(&audit).len() >= first - 1);
}
