//! The operations console through the binary: on the admin listener only,
//! behind an admin certificate or the one-time login link; security
//! headers on every answer; actions refused without a CSRF token or from
//! a foreign origin (and nothing happens); a quarantine from the console
//! is in force at once and audited as `console:<who>`; live decisions
//! arrive over SSE.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

/// An answer over https: status (0 when TLS failed), headers (lower-case
/// names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// curl with the admin listener's CA, optionally a client certificate
/// folder, and extra arguments.
fn curl(addr: &str, ca: &Path, client: Option<&Path>, path: &str, extra: &[&str]) -> Answer {
    let mut c = Command::new("curl");
    c.args(["-s", "-i", "-m", "20", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca);
    if let Some(d) = client {
        c.arg("--cert")
            .arg(d.join("cert.pem"))
            .arg("--key")
            .arg(d.join("key.pem"));
    }
    c.args(extra);
    let out = c.arg(format!("https://{addr}{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (rest, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or(("", rest));
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status: code.trim().parse().unwrap_or(0),
        headers,
        body: body.to_owned(),
    }
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

struct Env {
    gw: Gateway,
    state: PathBuf,
    audit: PathBuf,
    admin: String,
    ca: PathBuf,
    cert: PathBuf,
}

/// A gateway with the development admin default (login link on).
fn start_dev(tag: &str) -> Env {
    let dir = tempdir(tag);
    let state = dir.join("state");
    let audit = dir.join("audit.jsonl");
    let gw = start(
        &[
            "--admin".into(),
            "127.0.0.1:0".into(),
            "--audit-log".into(),
            audit.display().to_string(),
        ],
        &[("PORTCULLIS_STATE_DIR", state.display().to_string())],
    );
    let admin = admin_addr(&gw);
    Env {
        ca: state.join("ca").join("ca.pem"),
        cert: state.join("admin-client"),
        gw,
        state,
        audit,
        admin,
    }
}

/// The login link from the start-up line, checking its exact shape.
fn login_link(env: &Env) -> String {
    let mut line = String::new();
    assert!(eventually(10, || {
        line = env
            .gw
            .log_text()
            .lines()
            .find(|l| l.starts_with("portcullis: console on "))
            .unwrap_or_default()
            .to_owned();
        !line.is_empty()
    }));
    let a = &env.admin;
    let prefix = format!(
        "portcullis: console on https://{a}/console/ (one-time login: https://{a}/console/login?token="
    );
    let token = line
        .strip_prefix(&prefix)
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or_else(|| panic!("console line: {line}"));
    assert_eq!(token.len(), 64, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    format!("/console/login?token={token}")
}

fn assert_secure_headers(a: &Answer, what: &str) {
    assert_eq!(
        a.header("content-security-policy"),
        Some("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
        "{what}"
    );
    assert_eq!(a.header("x-frame-options"), Some("DENY"), "{what}");
    assert_eq!(
        a.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(a.header("referrer-policy"), Some("same-origin"), "{what}");
    assert_eq!(a.header("cache-control"), Some("no-store"), "{what}");
}

/// The CSRF token of the forms on a page.
fn csrf(body: &str) -> String {
    let at = body.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    body[at..].split('"').next().unwrap().to_owned()
}

/// An identity row's quarantine state on the identities page.
fn quarantine_state(body: &str, identity: &str) -> Option<String> {
    let row = body.split("data-testid=\"identity-row\"").find(|r| {
        r.trim_start()
            .starts_with(&format!("data-identity=\"{identity}\""))
    })?;
    let at = row.find("data-testid=\"quarantine-state\"")?;
    let cell = &row[at..];
    let start = cell.find('>')? + 1;
    Some(cell[start..].split('<').next()?.to_owned())
}

#[test]
fn console_auth_login_link_and_headers() {
    let env = start_dev("console-auth");
    let (a, ca) = (&env.admin, &env.ca);
    // Pages and their assets with an admin certificate, with the headers.
    for (path, marker) in [
        ("/console/", "data-testid=\"decisions\""),
        ("/console/identities", "data-testid=\"nav-identities\""),
        ("/console/tools", "data-testid=\"nav-tools\""),
        ("/console/audit", "data-testid=\"chain-status\""),
        ("/console/health", "data-testid=\"killswitch-state\""),
    ] {
        let r = curl(a, ca, Some(&env.cert), path, &[]);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(r.body.contains(marker), "{path}: {}", r.body);
        assert!(
            r.header("content-type").unwrap().starts_with("text/html"),
            "{path}"
        );
        assert!(!r.body.contains("<script>"), "no inline script: {path}");
        assert!(!r.body.contains("style="), "no inline style: {path}");
        assert_secure_headers(&r, path);
    }
    let js = curl(a, ca, None, "/console/assets/console.js", &[]);
    assert_eq!(js.status, 200);
    assert!(js.body.contains("EventSource"));
    assert_secure_headers(&js, "console.js");

    // No certificate, no cookie: refused (and audited), with the headers.
    let r = curl(a, ca, None, "/console/", &[]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("data-testid=\"refused\""), "{}", r.body);
    assert_secure_headers(&r, "refusal");
    let r = curl(a, ca, None, "/console/identities", &[]);
    assert_eq!(r.status, 403);

    // A certificate that is not an admin's: 403, the refusal page, audited.
    let agent = env.state.join("agent");
    let out = Command::new(BIN)
        .args(["cert", "issue", "--ca"])
        .arg(env.state.join("ca"))
        .args([
            "--spiffe-id",
            "spiffe://portcullis.local/agent/nosy",
            "--out",
        ])
        .arg(&agent)
        .output()
        .unwrap();
    assert!(out.status.success());
    for path in ["/console/", "/console/identities", "/console/health"] {
        let r = curl(a, ca, Some(&agent), path, &[]);
        assert_eq!(r.status, 403, "{path}");
        assert!(r.body.contains("data-testid=\"refused\""), "{path}");
    }
    assert!(
        eventually(5, || records(&env.audit).iter().any(|r| r["kind"]
            == "auth_failure"
            && r["reason"]
                .as_str()
                .is_some_and(|s| s.starts_with("console:")
                    && s.contains("spiffe://portcullis.local/agent/nosy")))),
        "{:?}",
        records(&env.audit)
    );

    // The login link: once, a cookie with the right flags, 303 to the console.
    let link = login_link(&env);
    let r = curl(a, ca, None, &link, &[]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/console/"));
    assert_secure_headers(&r, "login");
    let cookie = r.header("set-cookie").unwrap().to_owned();
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    let value = cookie.split(';').next().unwrap().to_owned();
    assert!(value.starts_with("portcullis_console="), "{value}");
    let again = curl(a, ca, None, &link, &[]);
    assert_eq!(again.status, 403, "the link works once");
    assert!(again.header("set-cookie").is_none());
    // The cookie opens the console, not the admin API or /metrics.
    let c = format!("Cookie: {value}");
    let r = curl(a, ca, None, "/console/", &["-H", &c]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("login-link"), "{}", r.body);
    for path in ["/admin/sessions", "/metrics", "/admin/quarantines"] {
        let r = curl(a, ca, None, path, &["-H", &c]);
        assert_eq!(r.status, 403, "{path}: {}", r.body);
    }
    // A forged cookie is refused.
    let r = curl(
        a,
        ca,
        None,
        "/console/",
        &["-H", "Cookie: portcullis_console=00"],
    );
    assert_eq!(r.status, 403);
}

#[test]
fn console_actions_need_csrf_and_origin_and_quarantine_holds() {
    let env = start_dev("console-actions");
    let (a, ca, cert) = (&env.admin, &env.ca, env.cert.as_path());
    let sid = env.gw.session();
    let ok = env.gw.call(
        &sid,
        "1",
        "tools/call",
        r#"{"name":"demo__echo","arguments":{"message":"before"}}"#,
    );
    assert!(ok["result"].is_object(), "{ok}");
    // The identity and its session show on the identities page.
    let page = curl(a, ca, Some(cert), "/console/identities", &[]);
    assert_eq!(page.status, 200);
    let identity = "w=-;u=-";
    assert!(
        page.body.contains(&format!(
            "data-testid=\"identity-row\" data-identity=\"{identity}\""
        )),
        "{}",
        page.body
    );
    assert!(page.body.contains(&sid), "{}", page.body);
    assert!(page.body.contains("data-testid=\"risk-chart\""));
    assert_eq!(
        quarantine_state(&page.body, identity).as_deref(),
        Some("none")
    );
    let token = csrf(&page.body);
    let quarantines = || {
        let r = curl(a, ca, Some(cert), "/admin/quarantines", &[]);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        v["quarantines"].as_array().unwrap().len()
    };
    let post = |fields: &[(&str, &str)], extra: &[&str]| {
        let mut args: Vec<String> = Vec::new();
        for (k, v) in fields {
            args.push("--data-urlencode".into());
            args.push(format!("{k}={v}"));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(a, ca, Some(cert), "/console/actions/quarantine", &args)
    };
    let fields = [
        ("identity", identity),
        ("mode", "deny-all"),
        ("reason", "looks odd"),
    ];
    // No CSRF token: refused, nothing happened.
    let r = post(&fields, &[]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_secure_headers(&r, "csrf refusal");
    // A wrong token: refused.
    let mut bad = fields.to_vec();
    bad.push(("csrf", "00ff"));
    assert_eq!(post(&bad, &[]).status, 403);
    // The right token from a foreign origin: refused.
    let mut good = fields.to_vec();
    good.push(("csrf", token.as_str()));
    let r = post(&good, &["-H", "Origin: https://evil.example"]);
    assert_eq!(r.status, 403, "{}", r.body);
    // No reason: refused.
    let no_reason = [
        ("identity", identity),
        ("mode", "deny-all"),
        ("reason", " "),
        ("csrf", token.as_str()),
    ];
    assert_eq!(post(&no_reason, &[]).status, 400);
    assert_eq!(quarantines(), 0, "nothing happened");
    let still = env.gw.call(
        &sid,
        "2",
        "tools/call",
        r#"{"name":"demo__echo","arguments":{"message":"still"}}"#,
    );
    assert!(still["result"].is_object(), "{still}");

    // Same origin, valid token, a reason: in force at once, 303 back.
    let origin = format!("Origin: https://{a}");
    let r = post(&good, &["-H", &origin]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/console/identities"));
    assert_eq!(quarantines(), 1);
    let refused = env.gw.call(
        &sid,
        "3",
        "tools/call",
        r#"{"name":"demo__echo","arguments":{"message":"after"}}"#,
    );
    assert_eq!(refused["error"]["code"], -32032, "{refused}");
    let page = curl(a, ca, Some(cert), "/console/identities", &[]);
    assert_eq!(
        quarantine_state(&page.body, identity).as_deref(),
        Some("deny-all")
    );
    // Audited as the console's admin.
    assert!(
        eventually(5, || records(&env.audit).iter().any(|r| r["kind"]
            == "containment"
            && r["action"] == "quarantine-deny-all"
            && r["target"] == format!("identity:{identity}")
            && r["reason"] == "looks odd"
            && r["by"] == "console:spiffe://portcullis.local/admin/cli")),
        "{:?}",
        records(&env.audit)
    );
    // Release from the console.
    let args = [
        "--data-urlencode".to_owned(),
        format!("identity={identity}"),
        "--data-urlencode".to_owned(),
        "reason=reviewed".to_owned(),
        "--data-urlencode".to_owned(),
        format!("csrf={token}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = curl(a, ca, Some(cert), "/console/actions/release", &args);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(quarantines(), 0);
    // The audit page finds the console's action, and the chain verifies.
    let r = curl(
        a,
        ca,
        Some(cert),
        "/console/audit?identity=w%3D-&decision=&tool=&since=&until=",
        &[],
    );
    assert_eq!(r.status, 200);
    assert!(r.body.contains("data-testid=\"audit-row\""), "{}", r.body);
    let at = r.body.find("data-testid=\"chain-status\"").unwrap();
    assert!(
        r.body[at..].contains("verified"),
        "{}",
        &r.body[at..at + 300]
    );
}

#[test]
fn live_decisions_stream_over_sse() {
    let env = start_dev("console-sse");
    let (a, ca, cert) = (env.admin.clone(), env.ca.clone(), env.cert.clone());
    let sid = env.gw.session();
    let watcher = std::thread::spawn(move || {
        let mut c = Command::new("curl");
        c.args(["-s", "-N", "-m", "4", "--cacert"])
            .arg(&ca)
            .arg("--cert")
            .arg(cert.join("cert.pem"))
            .arg("--key")
            .arg(cert.join("key.pem"))
            .arg(format!("https://{a}/console/events"));
        String::from_utf8_lossy(&c.output().unwrap().stdout).to_string()
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let ok = env.gw.call(
        &sid,
        "1",
        "tools/call",
        r#"{"name":"demo__echo","arguments":{"message":"live"}}"#,
    );
    assert!(ok["result"].is_object(), "{ok}");
    let out = watcher.join().unwrap();
    let ev = out
        .split("\n\n")
        .find(|e| e.starts_with("event: decision") && e.contains("demo__echo"))
        .unwrap_or_else(|| panic!("no decision event: {out}"));
    let data: Value = serde_json::from_str(ev.split_once("data: ").unwrap().1).unwrap();
    assert_eq!(data["identity"], "w=-;u=-");
    assert_eq!(data["method"], "tools/call");
    assert_eq!(data["decision"], "allow");
    assert!(data["latency_us"].as_u64().is_some());
    assert!(data["time"].as_u64().is_some());
}

#[test]
fn agents_listener_serves_no_console() {
    let env = start_dev("console-agents");
    for path in [
        "/console/",
        "/console",
        "/console/login?token=00",
        "/console/assets/console.js",
        "/console/events",
    ] {
        let r = raw(&env.gw.addr, "GET", path, &[], b"");
        assert_eq!(r.status, 404, "{path}");
    }
    let r = raw(
        &env.gw.addr,
        "POST",
        "/console/actions/quarantine",
        &[("content-type", "application/x-www-form-urlencoded")],
        b"identity=x&reason=y",
    );
    assert_eq!(r.status, 404);
}

/// Posts a console form with the admin certificate.
fn post_form(env: &Env, path: &str, fields: &[(&str, &str)]) -> Answer {
    let mut args: Vec<String> = Vec::new();
    for (k, v) in fields {
        args.push("--data-urlencode".into());
        args.push(format!("{k}={v}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&env.admin, &env.ca, Some(&env.cert), path, &args)
}

#[test]
fn console_kill_switch_is_guarded_and_kill_session_ends_it() {
    let env = start_dev("console-kill");
    let page = curl(&env.admin, &env.ca, Some(&env.cert), "/console/health", &[]);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("data-testid=\"killswitch-confirm\""));
    assert!(page.body.contains("data-testid=\"policy-hash\""));
    assert!(
        page.body
            .contains("data-testid=\"upstream-row\" data-upstream=\"demo\""),
        "{}",
        page.body
    );
    let token = csrf(&page.body);
    let state = |env: &Env| {
        let r = curl(
            &env.admin,
            &env.ca,
            Some(&env.cert),
            "/admin/killswitch",
            &[],
        );
        serde_json::from_str::<Value>(&r.body).unwrap()["mode"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // Not confirmed: nothing happens.
    let r = post_form(
        &env,
        "/console/actions/killswitch",
        &[
            ("state", "on"),
            ("reason", "drill"),
            ("confirm", "kill"),
            ("csrf", &token),
        ],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(state(&env), "off");
    // Confirmed: everyone is stopped, and the page says so.
    let r = post_form(
        &env,
        "/console/actions/killswitch",
        &[
            ("state", "on"),
            ("reason", "drill"),
            ("confirm", "KILL"),
            ("csrf", &token),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/console/health"));
    assert_eq!(state(&env), "deny-all");
    let page = curl(&env.admin, &env.ca, Some(&env.cert), "/console/health", &[]);
    assert!(page.body.contains("class=\"ks-on\">on<"), "{}", page.body);
    let r = post_form(
        &env,
        "/console/actions/killswitch",
        &[("state", "off"), ("reason", "drill over"), ("csrf", &token)],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(state(&env), "off");

    // Kill a session from the console: its client gets 404 next.
    let sid = env.gw.session();
    let r = post_form(
        &env,
        "/console/actions/kill-session",
        &[("session", &sid), ("reason", "stale"), ("csrf", &token)],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let after = env.gw.post(
        &[
            ("mcp-session-id", &sid),
            ("mcp-protocol-version", "2025-06-18"),
        ],
        r#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#,
    );
    assert_eq!(after.status, 404);
    let again = post_form(
        &env,
        "/console/actions/kill-session",
        &[("session", &sid), ("reason", "stale"), ("csrf", &token)],
    );
    assert_eq!(again.status, 404);
    assert!(
        eventually(5, || {
            let recs = records(&env.audit);
            let by = |a: &str| {
                recs.iter().any(|r| {
                    r["kind"] == "containment"
                        && r["action"] == a
                        && r["by"] == "console:spiffe://portcullis.local/admin/cli"
                })
            };
            by("killswitch-deny-all") && by("killswitch-off") && by("kill-sessions")
        }),
        "{:?}",
        records(&env.audit)
    );
}
