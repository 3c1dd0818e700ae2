//! The admin API through the binary: its own listener, mTLS with admin
//! identities (an agent certificate from the same CA gets 403 and an audit
//! record; no certificate fails the handshake), the CLI as its client
//! (sessions, policy reload), and nothing of it on the agents' listener.
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

/// GET or POST over https with curl: (status, body); status 0 when the TLS
/// handshake failed. `client`: a folder with cert.pem and key.pem.
fn curl(
    addr: &str,
    ca: &Path,
    client: Option<&Path>,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-m", "20", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca);
    if let Some(d) = client {
        c.arg("--cert")
            .arg(d.join("cert.pem"))
            .arg("--key")
            .arg(d.join("key.pem"));
    }
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = c.arg(format!("https://{addr}{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A gateway with the development admin default: state in a fresh folder,
/// the audit log in it too.
fn start_dev(tag: &str) -> (Gateway, PathBuf, PathBuf, String) {
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
    (gw, state, audit, admin)
}

#[test]
fn admin_api_refuses_agents_and_clients_without_certificates() {
    let (gw, state, audit, admin) = start_dev("admin-refuse");
    let ca = state.join("ca").join("ca.pem");
    // The development default wrote the admin client certificate.
    assert!(state.join("admin-client").join("cert.pem").exists());
    assert!(state.join("admin").join("cert.pem").exists());
    // An agent certificate from the same CA.
    let agent = state.join("agent");
    let out = Command::new(BIN)
        .args(["cert", "issue", "--ca"])
        .arg(state.join("ca"))
        .args([
            "--spiffe-id",
            "spiffe://portcullis.local/agent/intruder",
            "--out",
        ])
        .arg(&agent)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Health and readiness need no admin identity (but TLS still wants a
    // certificate from the CA).
    assert_eq!(
        curl(&admin, &ca, Some(&agent), "/healthz", None),
        (200, "ok".into())
    );
    assert_eq!(
        curl(&admin, &ca, Some(&agent), "/readyz", None),
        (200, "ready".into())
    );

    // The agent is refused with 403, on the old routes and the new.
    for (path, body) in [
        ("/admin/sessions", None),
        ("/metrics", None),
        ("/admin/quarantines", None),
        ("/admin/policy/reload", Some("{}")),
        ("/admin/sessions/kill", Some(r#"{"identity":"w=-;u=-"}"#)),
    ] {
        let (code, text) = curl(&admin, &ca, Some(&agent), path, body);
        assert_eq!(code, 403, "{path}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"], "not an admin identity", "{path}");
    }
    // …and recorded, naming the identity it presented.
    assert!(
        eventually(5, || records(&audit).iter().any(|r| r["kind"]
            == "auth_failure"
            && r["class"] == "not_admin"
            && r["status"] == 403
            && r["reason"].as_str().is_some_and(
                |s| s.contains("spiffe://portcullis.local/agent/intruder")
            ))),
        "{:?}",
        records(&audit)
    );
    // The CLI with the agent's certificate: exit 1 and the server's error.
    let (code, _, err) = cli(
        &[
            "sessions",
            "list",
            "--cert",
            &agent.join("cert.pem").display().to_string(),
            "--key",
            &agent.join("key.pem").display().to_string(),
        ],
        &admin,
        &state,
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("portcullis: not an admin identity"), "{err}");

    // No client certificate: the development default's console login link
    // lets the TLS handshake through, but only the probes answer; the
    // admin API and /metrics stay certificate-only.
    assert_eq!(curl(&admin, &ca, None, "/healthz", None).0, 200);
    for path in ["/admin/sessions", "/metrics", "/admin/quarantines"] {
        let (code, text) = curl(&admin, &ca, None, path, None);
        assert_eq!(code, 403, "{path}: {text}");
    }

    // The admin client certificate gets in.
    let admin_client = state.join("admin-client");
    assert_eq!(
        curl(&admin, &ca, Some(&admin_client), "/admin/sessions", None).0,
        200
    );
    drop(gw);
}

#[test]
fn agents_listener_serves_no_admin_routes() {
    let (gw, _state, _audit, _admin) = start_dev("admin-agents");
    for (method, path) in [
        ("GET", "/admin/sessions"),
        ("POST", "/admin/sessions/kill"),
        ("POST", "/admin/revocations"),
        ("POST", "/admin/policy/reload"),
        ("POST", "/admin/killswitch"),
        ("GET", "/metrics"),
    ] {
        let r = raw(
            &gw.addr,
            method,
            path,
            &[JSON],
            b"{\"identity\":\"w=-;u=-\"}",
        );
        assert_eq!(r.status, 404, "{method} {path}");
    }
}

#[test]
fn cli_lists_and_kills_sessions() {
    let (gw, state, audit, admin) = start_dev("admin-sessions");
    let sid = gw.session();
    let (code, out, err) = cli(&["sessions", "list"], &admin, &state);
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["ID", "IDENTITY", "AGE", "IDLE"]);
    assert!(
        lines.any(|l| l.starts_with(&sid) && l.contains("w=-;u=-")),
        "{out}"
    );
    // `sessions` alone lists too; --json prints the server's answer.
    let (code, out, _) = cli(&["sessions", "--json"], &admin, &state);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    let s = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == sid.as_str())
        .unwrap();
    assert_eq!(s["identity"], "w=-;u=-");
    assert!(s["age_secs"].is_u64() && s["idle_secs"].is_u64(), "{s}");

    let (code, out, err) = cli(
        &["sessions", "kill", &sid, "--reason", "test kill"],
        &admin,
        &state,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ended 1 session"), "{out}");
    // The session is gone for its client.
    let r = gw.post(
        &[
            ("mcp-session-id", &sid),
            ("mcp-protocol-version", "2025-06-18"),
        ],
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    );
    assert_eq!(r.status, 404);
    // Killing it again: nothing to end, exit 1.
    let (code, _, err) = cli(&["sessions", "kill", &sid], &admin, &state);
    assert_eq!(code, 1);
    assert!(err.contains("no such session"), "{err}");
    // Usage errors are exit 2.
    let (code, _, _) = cli(&["sessions", "kill"], &admin, &state);
    assert_eq!(code, 2);
    let (code, _, _) = cli(
        &["quarantine", "add", "--identity", "x", "--ttl", "5 weeks"],
        &admin,
        &state,
    );
    assert_eq!(code, 2);
    // The kill is audited with the admin's identity.
    assert!(
        eventually(5, || records(&audit).iter().any(|r| r["kind"]
            == "containment"
            && r["action"] == "kill-sessions"
            && r["target"] == format!("session:{sid}")
            && r["reason"] == "test kill"
            && r["by"] == "admin:spiffe://portcullis.local/admin/cli")),
        "{:?}",
        records(&audit)
    );
    // The earlier route name still answers.
    let ca = state.join("ca").join("ca.pem");
    let (code, text) = curl(
        &admin,
        &ca,
        Some(&state.join("admin-client")),
        "/admin/sessions/revoke",
        Some(r#"{"identity":"w=nobody;u=-"}"#),
    );
    assert_eq!((code, text.as_str()), (200, r#"{"ended":0}"#));
}

#[test]
fn cli_reloads_policy_and_reports_rejection() {
    let dir = tempdir("admin-reload");
    let state = dir.join("state");
    let policy = dir.join("p.cedar");
    std::fs::write(&policy, "permit(principal, action, resource);\n").unwrap();
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {:?}\n\n[policy]\nfiles = [{:?}]\n\n[[upstream]]\nname = \"demo\"\ncommand = [{BIN:?}, \"demo-server\"]\n",
            state.display().to_string(),
            policy.display().to_string()
        ),
    )
    .unwrap();
    // `--config` and `--admin` together: the development admin default
    // lives in the config's state folder.
    let gw = start(
        &[
            "--config".into(),
            cfg.display().to_string(),
            "--admin".into(),
            "127.0.0.1:0".into(),
        ],
        &[],
    );
    let admin = admin_addr(&gw);
    assert!(state.join("admin-client").join("key.pem").exists());
    let (code, out, err) = cli(&["policy", "reload"], &admin, &state);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("policy reloaded: sha256 "), "{out}");
    // A broken set is rejected, the running one kept: exit 1 with the errors.
    std::fs::write(&policy, "permit(principal, action, resource) when {\n").unwrap();
    let (code, out, err) = cli(&["policy", "reload", "--json"], &admin, &state);
    assert_eq!(code, 1, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["reloaded"], false, "{v}");
    assert!(err.contains("policy reload rejected"), "{err}");
}

#[test]
fn admin_section_accepts_any_address_and_checks_identities() {
    let dir = tempdir("admin-config");
    let check = |text: &str| {
        let f = dir.join("c.toml");
        std::fs::write(&f, text).unwrap();
        let out = Command::new(BIN)
            .args(["config", "check"])
            .arg(&f)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // Not loopback: fine, the admin listener is always mTLS.
    assert!(check("[admin]\naddr = \"0.0.0.0:8788\"\n").0);
    let (ok, err) = check(
        "[admin]\naddr = \"0.0.0.0:8788\"\ncert = \"a.pem\"\nkey = \"k.pem\"\nclient_ca = [\"ca.pem\"]\n",
    );
    assert!(!ok && err.contains("admin.identities"), "{err}");
    let (ok, err) = check("[admin]\naddr = \"127.0.0.1:8788\"\ncert = \"a.pem\"\n");
    assert!(!ok && err.contains("admin.key"), "{err}");
    let (ok, err) = check("[admin]\naddr = \"127.0.0.1:8788\"\ntoken_file = \"t\"\n");
    assert!(!ok && err.contains("token_file"), "{err}");
}

#[test]
fn cli_drives_containment_routes() {
    let (gw, state, audit, admin) = start_dev("admin-contain");
    let sid = gw.session();
    // Quarantine: add, list, remove (twice: the second has nothing to remove).
    let (code, out, err) = cli(
        &[
            "quarantine",
            "add",
            "--identity",
            "w=-;u=-",
            "--mode",
            "read-only",
            "--ttl",
            "15m",
            "--reason",
            "drill",
        ],
        &admin,
        &state,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("quarantined identity:w=-;u=- (read-only, expires in 1"),
        "{out}"
    );
    assert!(out.contains("1 open session affected"), "{out}");
    let (code, out, _) = cli(&["quarantine", "list"], &admin, &state);
    assert_eq!(code, 0);
    let row = out.lines().nth(1).unwrap_or_default().to_owned();
    assert!(
        out.starts_with("TARGET")
            && row.starts_with("identity:w=-;u=-")
            && row.contains("read-only")
            && row.contains("admin:spiffe://portcullis.local/admin/cli")
            && row.ends_with("drill"),
        "{out}"
    );
    let (code, _, err) = cli(
        &["quarantine", "remove", "--identity", "w=-;u=-"],
        &admin,
        &state,
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(
        &["quarantine", "remove", "--identity", "w=-;u=-"],
        &admin,
        &state,
    );
    assert_eq!(code, 1);
    assert!(err.contains("no quarantine on identity:w=-;u=-"), "{err}");
    // Usage: exactly one target.
    let (code, _, _) = cli(
        &[
            "quarantine",
            "add",
            "--identity",
            "a",
            "--agent",
            "spiffe://x/y",
        ],
        &admin,
        &state,
    );
    assert_eq!(code, 2);

    // Kill switch: on, status, off.
    let (code, out, err) = cli(
        &["killswitch", "on", "--reason", "incident"],
        &admin,
        &state,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("kill switch: deny-all"), "{out}");
    let r = gw.call(&sid, "5", "tools/list", "{}");
    assert!(r["error"].is_object(), "the kill switch holds: {r}");
    let (code, out, _) = cli(&["killswitch", "status", "--json"], &admin, &state);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["mode"], "deny-all");
    assert_eq!(v["by"], "admin:spiffe://portcullis.local/admin/cli");
    let (code, out, _) = cli(&["killswitch", "off"], &admin, &state);
    assert_eq!((code, out.trim()), (0, "kill switch: off"));

    // Revocations: a token by jti with a lifetime, listed; a missing session.
    let (code, out, err) = cli(
        &[
            "revoke", "--jti", "jti-123", "--ttl", "1h", "--reason", "leaked",
        ],
        &admin,
        &state,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("revoked token:jti-123; 0 sessions ended"),
        "{out}"
    );
    let (code, out, _) = cli(&["revoke", "--list"], &admin, &state);
    assert_eq!(code, 0);
    assert!(
        out.lines().any(|l| l.starts_with("token")
            && l.contains("jti-123")
            && (l.contains("in 59m") || l.contains("in 1h0m"))),
        "{out}"
    );
    let (code, _, err) = cli(&["revoke", "--session", "no-such"], &admin, &state);
    assert_eq!(code, 1);
    assert!(err.contains("no such session"), "{err}");

    // Breakers: listed; an unknown one is not found.
    let (code, out, _) = cli(&["breakers"], &admin, &state);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("demo") && l.contains("closed")),
        "{out}"
    );
    let (code, out, _) = cli(&["breakers", "reset", "demo"], &admin, &state);
    assert_eq!(
        (code, out.trim()),
        (0, "breaker of demo was already closed")
    );
    let (code, _, err) = cli(&["breakers", "reset", "nope"], &admin, &state);
    assert_eq!(code, 1);
    assert!(err.contains("no upstream named \"nope\""), "{err}");

    // Every action above is in the audit log with the admin's identity.
    let recs = records(&audit);
    for action in [
        "quarantine-read-only",
        "quarantine-release",
        "killswitch-deny-all",
        "killswitch-off",
        "revoke-token",
        "breaker-reset",
    ] {
        assert!(
            recs.iter().any(|r| r["kind"] == "containment"
                && r["action"] == action
                && r["by"] == "admin:spiffe://portcullis.local/admin/cli"),
            "{action}: {recs:?}"
        );
    }
}

#[test]
fn sigterm_drains_readiness_fails_first_and_calls_in_flight_finish() {
    let dir = tempdir("drain");
    let state = dir.join("state");
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
state_dir = {state:?}

[limits]
drain_delay_ms = 1500
shutdown_timeout_ms = 20000

[health]
addr = "127.0.0.1:0"

[[upstream]]
name = "demo"
command = [{BIN:?}, "demo-server"]
"#,
            state = state.display().to_string(),
        ),
    )
    .unwrap();
    let mut gw = start(
        &[
            "--config".into(),
            cfg.display().to_string(),
            "--admin".into(),
            "127.0.0.1:0".into(),
        ],
        &[],
    );
    let admin = admin_addr(&gw);
    let ca = state.join("ca").join("ca.pem");
    let client = state.join("admin-client");
    assert_eq!(
        curl(&admin, &ca, Some(&client), "/readyz", None),
        (200, "ready".into())
    );
    // The plain-HTTP probe listener answers the same, with no certificate.
    let mut health = String::new();
    assert!(eventually(10, || {
        health = gw
            .log_text()
            .lines()
            .find_map(|l| l.split("health probes on http://").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_default()
            .to_owned();
        !health.is_empty()
    }));
    let probe = |path: &str| {
        let r = raw(&health, "GET", path, &[], b"");
        (r.status, String::from_utf8_lossy(&r.body).to_string())
    };
    assert_eq!(probe("/readyz"), (200, "ready".into()));
    assert_eq!(probe("/healthz"), (200, "ok".into()));
    assert_eq!(probe("/admin/sessions").0, 404, "nothing else on it");
    let sid = gw.session();
    // A call that takes about 2 s, in flight when SIGTERM arrives.
    let (addr, path) = (gw.addr.clone(), gw.path.clone());
    let sid2 = sid.clone();
    let slow = std::thread::spawn(move || {
        raw(
            &addr,
            "POST",
            &path,
            &[
                ACCEPT,
                JSON,
                ("mcp-session-id", &sid2),
                ("mcp-protocol-version", "2025-06-18"),
            ],
            br#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"demo__count","arguments":{"steps":4,"delay_ms":500}}}"#,
        )
        .json()
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = gw.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // Readiness fails at once; new requests are still served meanwhile.
    assert!(
        eventually(2, || curl(&admin, &ca, Some(&client), "/readyz", None)
            == (503, "draining".into())),
        "readyz did not turn 503"
    );
    assert_eq!(probe("/readyz"), (503, "draining".into()));
    let r = gw.call(&sid, "10", "ping", "{}");
    assert!(r["result"].is_object(), "served while draining: {r}");
    // The call in flight finishes with its result.
    let done = slow.join().unwrap();
    let text = done["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(text, "counted to 4", "{done}");
    // Then the gateway exits.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let status = loop {
        if let Some(s) = gw.child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < end, "gateway did not exit");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success() || status.code().is_none(), "{status:?}");
}
