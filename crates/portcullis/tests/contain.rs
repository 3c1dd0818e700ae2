//! Breach containment through the gateway binary, with two real token
//! identities (alice and bob, bearer tokens from a development issuer):
//! automatic quarantine when risk crosses a threshold mid-session (bob
//! unaffected, and the quarantine survives a restart), rate limits with
//! retry-after, the per-identity concurrency cap, and a circuit breaker
//! that opens on a hanging upstream and closes again. Every refused call is
//! checked against the upstream's own log: it never arrived.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use portcullis_identity::dev_issuer::DevIssuer;
use serde_json::{json, Value};

const RESOURCE: &str = "http://gateway.test/mcp";

struct Env {
    dir: PathBuf,
    cfg: PathBuf,
    alice: String,
    bob: String,
}

impl Env {
    fn new(tag: &str, extra: &str) -> Env {
        let dir = tempdir(tag);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let issuer = rt
            .block_on(DevIssuer::load_or_create(&dir.join("issuer")))
            .unwrap();
        let cfg = dir.join("gw.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"
state_dir = {state:?}

[audit]
path = {audit:?}

[auth]
resource = {RESOURCE:?}

[auth.oauth]
issuer = "urn:portcullis:dev"
jwks = {jwks:?}

[[upstream]]
name = "demo"
command = [{BIN:?}, "demo-server"]
env = {{ PORTCULLIS_DEMO_LOG = {log:?} }}

{extra}
"#,
                state = dir.join("state").display().to_string(),
                audit = dir.join("audit.jsonl").display().to_string(),
                jwks = issuer.jwks_path().display().to_string(),
                log = dir.join("upstream.log").display().to_string(),
            ),
        )
        .unwrap();
        let ttl = Duration::from_secs(3600);
        Env {
            alice: issuer.mint("alice", RESOURCE, &["mcp"], ttl),
            bob: issuer.mint("bob", RESOURCE, &["mcp"], ttl),
            dir,
            cfg,
        }
    }

    fn start(&self) -> Gateway {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&self.cfg);
        spawn_gateway(cmd)
    }

    /// Starts with an admin listener; returns it with its `host:port`.
    fn start_admin(&self) -> (Gateway, String) {
        self.start_admin_env(&[])
    }

    /// [`Env::start_admin`] with extra environment for the gateway.
    fn start_admin_env(&self, vars: &[(&str, &str)]) -> (Gateway, String) {
        let mut cmd = Command::new(BIN);
        cmd.envs(vars.iter().copied());
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&self.cfg);
        let gw = spawn_gateway(cmd);
        let admin = admin_addr(&gw);
        (gw, admin)
    }

    /// `portcullis ARGS` against the admin listener: (exit code, stdout, stderr).
    fn cli(&self, admin: &str, args: &[&str]) -> (i32, String, String) {
        cli(args, admin, &self.dir.join("state"))
    }

    /// Lines the upstream received that contain `marker`.
    fn upstream_saw(&self, marker: &str) -> usize {
        std::fs::read_to_string(self.dir.join("upstream.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(marker))
            .count()
    }

    fn audit(&self) -> Vec<Value> {
        records(&self.dir.join("audit.jsonl"))
    }
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Opens a session as the token's identity.
fn session(gw: &Gateway, token: &str) -> Result<String, Resp> {
    let auth = bearer(token);
    let r = gw.post(
        &[("authorization", &auth)],
        r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
    );
    if r.status != 200 {
        return Err(r);
    }
    let sid = r.header("mcp-session-id").unwrap().to_owned();
    let n = gw.post(
        &[("authorization", &auth), ("mcp-session-id", &sid)],
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!(n.status, 202);
    Ok(sid)
}

/// Calls a tool in a session as the token's identity.
fn call(gw: &Gateway, token: &str, sid: &str, id: u64, tool: &str, args: Value) -> Value {
    let auth = bearer(token);
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": args}});
    gw.post(
        &[
            ("authorization", &auth),
            ("mcp-session-id", sid),
            ("mcp-protocol-version", "2025-06-18"),
        ],
        &body.to_string(),
    )
    .json()
}

/// Reads the demo's `welcome` document (a read-only tool) in a session.
fn read_welcome(gw: &Gateway, token: &str, sid: &str, id: u64) -> Value {
    call(
        gw,
        token,
        sid,
        id,
        "demo__read_document",
        json!({"name": "welcome"}),
    )
}

fn code(v: &Value) -> i64 {
    v["error"]["code"].as_i64().unwrap_or(0)
}

fn echo(msg: &str) -> Value {
    json!({"message": msg})
}

#[test]
fn risk_crossing_the_threshold_quarantines_mid_session_spares_others_and_survives_restart() {
    let env = Env::new(
        "contain-risk",
        r#"
[[containment.auto]]
name = "risky-agent"
when = "risk"
above = 30
mode = "deny-all"
"#,
    );
    let gw = env.start();
    let a = session(&gw, &env.alice).unwrap();
    let b = session(&gw, &env.bob).unwrap();
    assert!(call(&gw, &env.alice, &a, 1, "demo__echo", echo("alice-ok"))["result"].is_object());
    // Suspicious arguments, again and again, until the rule fires.
    let mut stopped = None;
    for i in 0..25 {
        let r = call(
            &gw,
            &env.alice,
            &a,
            10 + i,
            "demo__echo",
            echo("alice-bad ../../../../etc/passwd http://10.0.0.1/admin"),
        );
        if r["error"].is_object() {
            stopped = Some(r);
            break;
        }
    }
    let stopped = stopped.expect("the risk rule fired within 25 calls");
    assert!(
        stopped["error"]["message"]
            .as_str()
            .unwrap()
            .contains("quarantine"),
        "{stopped}"
    );
    let before = env.upstream_saw("alice-after");
    // The very next message of that session is refused as quarantined…
    let r = call(&gw, &env.alice, &a, 100, "demo__echo", echo("alice-after"));
    assert_eq!(code(&r), -32032, "{r}");
    assert_eq!(r["error"]["data"]["mode"], "deny-all", "{r}");
    // …a new session of the same identity is refused at initialize…
    let refused = session(&gw, &env.alice).unwrap_err();
    assert_eq!(refused.status, 403);
    assert_eq!(code(&refused.json()), -32032);
    // …and bob, in his own session, is unaffected.
    let ok = call(&gw, &env.bob, &b, 101, "demo__echo", echo("bob-ok"));
    assert!(ok["result"].is_object(), "{ok}");
    assert_eq!(
        env.upstream_saw("alice-after"),
        before,
        "never reached the upstream"
    );
    assert_eq!(env.upstream_saw("bob-ok"), 1);
    // Audited: the automatic quarantine names its rule.
    assert!(
        eventually(5, || env.audit().iter().any(|r| r["kind"] == "containment"
            && r["by"] == "auto:risky-agent"
            && r["target"]
                .as_str()
                .unwrap_or("")
                .contains("urn:portcullis:dev#alice"))),
        "containment record"
    );
    // Restart on the same state folder: the quarantine holds.
    drop(gw);
    let gw = env.start();
    let refused = session(&gw, &env.alice).unwrap_err();
    assert_eq!(code(&refused.json()), -32032, "after restart");
    let b = session(&gw, &env.bob).unwrap();
    assert!(call(&gw, &env.bob, &b, 1, "demo__echo", echo("bob-again"))["result"].is_object());
}

#[test]
fn rate_limits_answer_retry_after_per_identity_and_nothing_reaches_the_upstream() {
    let env = Env::new(
        "contain-rate",
        r#"
[containment.rate.tools.demo__echo]
per_minute = 60
burst = 2
"#,
    );
    let gw = env.start();
    let a = session(&gw, &env.alice).unwrap();
    let b = session(&gw, &env.bob).unwrap();
    for i in 0..2 {
        let r = call(&gw, &env.alice, &a, i, "demo__echo", echo("alice-burst"));
        assert!(r["result"].is_object(), "within the burst: {r}");
    }
    let limited = call(&gw, &env.alice, &a, 9, "demo__echo", echo("alice-over"));
    assert_eq!(code(&limited), -32029, "{limited}");
    let retry = limited["error"]["data"]["retryAfterSeconds"]
        .as_f64()
        .unwrap();
    assert!((1.0..=2.0).contains(&retry), "{limited}");
    assert_eq!(limited["error"]["data"]["limit"], "tool:demo__echo");
    assert_eq!(
        env.upstream_saw("alice-over"),
        0,
        "never reached the upstream"
    );
    // Audited as refused, by the limit, not as policy's allow.
    let refused: Vec<Value> = env
        .audit()
        .into_iter()
        .filter(|r| r["kind"] == "decision" && r["decision"] == "deny")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(
        refused[0]["policies"],
        json!(["containment:rate:tool:demo__echo"])
    );
    // The limit is alice's: bob has his own burst.
    assert!(call(&gw, &env.bob, &b, 1, "demo__echo", echo("bob"))["result"].is_object());
    // Another tool is not under the echo limit.
    let doc = read_welcome(&gw, &env.alice, &a, 10);
    assert!(doc["result"].is_object(), "{doc}");
    // After the advertised wait, alice may call again.
    std::thread::sleep(Duration::from_secs_f64(retry));
    let again = call(&gw, &env.alice, &a, 11, "demo__echo", echo("alice-later"));
    assert!(again["result"].is_object(), "{again}");
}

#[test]
fn concurrent_requests_per_identity_are_capped() {
    let env = Env::new(
        "contain-conc",
        "[containment]\nmax_concurrent_per_identity = 1\n",
    );
    let gw = std::sync::Arc::new(env.start());
    let a = session(&gw, &env.alice).unwrap();
    let b = session(&gw, &env.bob).unwrap();
    let slow = {
        let gw = gw.clone();
        let (tok, sid) = (env.alice.clone(), a.clone());
        std::thread::spawn(move || {
            call(
                &gw,
                &tok,
                &sid,
                1,
                "demo__count",
                json!({"steps": 10, "delay_ms": 100}),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let second = call(&gw, &env.alice, &a, 2, "demo__echo", echo("alice-second"));
    assert_eq!(code(&second), -32029, "{second}");
    assert_eq!(second["error"]["data"]["limit"], "concurrency");
    assert_eq!(env.upstream_saw("alice-second"), 0);
    // Bob is not held by alice's slot.
    assert!(call(&gw, &env.bob, &b, 3, "demo__echo", echo("bob"))["result"].is_object());
    let first = slow.join().unwrap();
    assert!(first["result"].is_object(), "{first}");
    // The slot came back.
    assert!(call(&gw, &env.alice, &a, 4, "demo__echo", echo("alice-third"))["result"].is_object());
}

#[test]
fn a_hanging_upstream_trips_the_breaker_which_fails_fast_then_recovers() {
    let env = Env::new(
        "contain-breaker",
        r#"
[limits]
call_timeout_ms = 300

[containment.breaker]
failures = 2
open_secs = 1
"#,
    );
    let gw = env.start();
    let a = session(&gw, &env.alice).unwrap();
    for i in 0..2 {
        let r = call(
            &gw,
            &env.alice,
            &a,
            i,
            "demo__count",
            json!({"steps": 1, "delay_ms": 3000}),
        );
        assert_eq!(code(&r), -32011, "timeout {i}: {r}");
    }
    let began = Instant::now();
    let fast = call(&gw, &env.alice, &a, 5, "demo__echo", echo("while-open"));
    let took = began.elapsed();
    assert_eq!(code(&fast), -32013, "{fast}");
    assert!(fast["error"]["data"]["retryAfterSeconds"].as_u64().unwrap() >= 1);
    assert!(took < Duration::from_millis(250), "failed fast: {took:?}");
    assert_eq!(
        env.upstream_saw("while-open"),
        0,
        "an open breaker sends nothing"
    );
    // After the cool-down a probe goes through and closes it.
    std::thread::sleep(Duration::from_millis(1100));
    let probe = call(&gw, &env.alice, &a, 6, "demo__echo", echo("probe"));
    assert!(probe["result"].is_object(), "{probe}");
    let after = call(&gw, &env.alice, &a, 7, "demo__echo", echo("closed"));
    assert!(after["result"].is_object(), "{after}");
    let recs = env.audit();
    for action in ["breaker-open", "breaker-closed"] {
        assert!(
            recs.iter()
                .any(|r| r["kind"] == "containment" && r["action"] == action),
            "{action} audited"
        );
    }
}

/// The decision records of tools/call for `marker` in the audit log.
fn decision_risk(env: &Env, marker_tool: &str) -> Vec<Value> {
    env.audit()
        .into_iter()
        .filter(|r| r["kind"] == "decision" && r["tool"] == marker_tool)
        .map(|r| r["risk"].clone())
        .collect()
}

#[test]
fn risk_baselines_survive_a_graceful_restart() {
    let env = Env::new("contain-baseline", "");
    let gw = env.start();
    let a = session(&gw, &env.alice).unwrap();
    for i in 0..6 {
        let r = call(
            &gw,
            &env.alice,
            &a,
            i,
            "demo__echo",
            echo("../../../../etc/passwd http://10.0.0.1/admin"),
        );
        assert!(r["result"].is_object(), "{r}");
    }
    let before = decision_risk(&env, "demo__echo");
    let last = before.last().unwrap().clone();
    assert!(last["score"].as_u64().unwrap() > 0, "{last}");
    // SIGTERM: the gateway saves baselines on its way out.
    let pid = gw.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut gw = gw;
    let end = Instant::now() + Duration::from_secs(10);
    while gw.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "gateway did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let journal =
        std::fs::read_to_string(env.dir.join("state").join("store").join("state.jsonl")).unwrap();
    assert!(journal.contains("\"ns\":\"risk\""), "baselines stored");
    drop(gw);
    let gw = env.start();
    let a = session(&gw, &env.alice).unwrap();
    let r = call(&gw, &env.alice, &a, 100, "demo__echo", echo("calm again"));
    assert!(r["result"].is_object(), "{r}");
    let after = decision_risk(&env, "demo__echo").last().unwrap().clone();
    let factors: Vec<&str> = after["factors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert!(
        factors.contains(&"suspicious-args"),
        "the alarm is not laundered by a restart: {after}"
    );
    // A known tool is not new after a restart: its first-use points only
    // decayed since (a fresh identity would score it again).
    let points = |r: &Value, name: &str| {
        r["factors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .and_then(|f| f["points"].as_u64())
            .unwrap_or(0)
    };
    assert!(
        points(&after, "new-tool") <= points(&last, "new-tool"),
        "before {last}, after {after}"
    );
}

#[test]
fn a_revoked_token_is_refused_at_once_and_its_session_ends() {
    let env = Env::new("contain-jti", "");
    let (gw, admin) = env.start_admin();
    let a = session(&gw, &env.alice).unwrap();
    let b = session(&gw, &env.bob).unwrap();
    assert!(call(&gw, &env.alice, &a, 1, "demo__echo", echo("alice-before"))["result"].is_object());
    let (code_, out, err) = env.cli(
        &admin,
        &[
            "revoke",
            // `--jti=…`: a base64url jti may start with '-'.
            &format!("--jti={}", common::jti(&env.alice)),
            "--reason",
            "token leaked",
        ],
    );
    assert_eq!(code_, 0, "{out}{err}");
    assert!(
        out.contains("1 sessions ended") || out.contains("1 session"),
        "{out}"
    );
    // The very next request with that token: 401 token revoked.
    let auth = bearer(&env.alice);
    let r = gw.post(
        &[
            ("authorization", &auth),
            ("mcp-session-id", &a),
            ("mcp-protocol-version", "2025-06-18"),
        ],
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "demo__echo", "arguments": {"message": "alice-after"}}}).to_string(),
    );
    assert_eq!(r.status, 401, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(
        r.header("www-authenticate")
            .unwrap_or("")
            .contains("token revoked"),
        "{:?}",
        r.headers
    );
    assert_eq!(session(&gw, &env.alice).unwrap_err().status, 401);
    assert_eq!(env.upstream_saw("alice-after"), 0);
    // Bob's token and session are untouched.
    assert!(call(&gw, &env.bob, &b, 3, "demo__echo", echo("bob"))["result"].is_object());
    // Stored: still refused after a restart.
    drop(gw);
    let gw = env.start();
    assert_eq!(
        session(&gw, &env.alice).unwrap_err().status,
        401,
        "after restart"
    );
    assert!(session(&gw, &env.bob).is_ok());
    assert!(
        env.audit()
            .iter()
            .any(|r| r["kind"] == "containment" && r["action"] == "revoke-token"),
        "audited"
    );
}

#[test]
fn read_only_quarantine_leaves_only_read_only_safe_tools() {
    let env = Env::new(
        "contain-ro",
        r#"
[[segment]]
name = "library"
labels = ["safe"]
tools = ["demo__read_document"]
"#,
    );
    let (gw, admin) = env.start_admin();
    let a = session(&gw, &env.alice).unwrap();
    let b = session(&gw, &env.bob).unwrap();
    let (c, out, err) = env.cli(
        &admin,
        &[
            "quarantine",
            "add",
            "--user",
            "urn:portcullis:dev#alice",
            "--mode",
            "read-only",
            "--reason",
            "odd behaviour",
        ],
    );
    assert_eq!(c, 0, "{out}{err}");
    // Listed tools shrink to what read-only allows.
    let auth = bearer(&env.alice);
    let list = gw
        .post(
            &[
                ("authorization", &auth),
                ("mcp-session-id", &a),
                ("mcp-protocol-version", "2025-06-18"),
            ],
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#,
        )
        .json();
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["demo__read_document"], "{list}");
    // A read-only, safe-labelled tool still works…
    let doc = read_welcome(&gw, &env.alice, &a, 2);
    assert!(doc["result"].is_object(), "{doc}");
    // …a read-only tool without the label and a writing tool do not.
    for (i, tool, args) in [
        (3, "demo__echo", echo("alice-ro")),
        (
            4,
            "demo__write_note",
            json!({"title": "alice-ro", "body": "x"}),
        ),
    ] {
        let r = call(&gw, &env.alice, &a, i, tool, args);
        assert_eq!(code(&r), -32032, "{tool}: {r}");
        assert_eq!(r["error"]["data"]["mode"], "read-only");
    }
    assert_eq!(env.upstream_saw("alice-ro"), 0);
    // Bob is another user: everything as before.
    assert!(call(
        &gw,
        &env.bob,
        &b,
        5,
        "demo__write_note",
        json!({"title": "bob", "body": "x"})
    )["result"]
        .is_object());
    // Released: alice is back to normal in the same session.
    let (c, out, err) = env.cli(
        &admin,
        &["quarantine", "remove", "--user", "urn:portcullis:dev#alice"],
    );
    assert_eq!(c, 0, "{out}{err}");
    assert!(call(&gw, &env.alice, &a, 6, "demo__echo", echo("alice-free"))["result"].is_object());
}

/// libfaketime, which steps a process's wall clock at run time; `None`
/// (skip) locally when it is not installed, a failure under CI, where the
/// test command installs it.
fn faketime_lib() -> Option<&'static str> {
    const LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    if Path::new(LIB).exists() {
        return Some(LIB);
    }
    let ci = std::env::var("CI").unwrap_or_default();
    assert!(
        !matches!(ci.as_str(), "1" | "true" | "yes"),
        "libfaketime is missing ({LIB}): scripts/install-test-deps.sh installs the faketime package"
    );
    eprintln!("skipped: libfaketime is not installed ({LIB})");
    None
}

/// Steps the gateway's wall clock (libfaketime's offset syntax: `+1d`, `-1h`).
fn set_clock(file: &Path, offset: &str) {
    std::fs::write(file, offset).unwrap();
}

/// The wall clock is stepped forward and back under a running gateway (only
/// `CLOCK_REALTIME`, as an NTP step or an operator's `date -s` would; the
/// monotonic clock runs on). Nothing is lifted early, no limit refills, tokens
/// follow the wall clock as JWT requires, sessions survive, and the audit
/// chain still verifies — also across a restart on the stepped-back clock.
#[test]
fn wall_clock_steps_lift_nothing_refill_nothing_and_keep_the_audit_chain() {
    let Some(lib) = faketime_lib() else {
        return;
    };
    let env = Env::new(
        "contain-clock",
        r#"
[containment.rate.tools.demo__echo]
per_minute = 1
burst = 2
"#,
    );
    let clock = env.dir.join("clock");
    set_clock(&clock, "+0");
    let clock_s = clock.display().to_string();
    let vars = [
        ("LD_PRELOAD", lib),
        ("FAKETIME_TIMESTAMP_FILE", clock_s.as_str()),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let (gw, admin) = env.start_admin_env(&vars);
    let a = session(&gw, &env.alice).unwrap();
    let b = session(&gw, &env.bob).unwrap();
    for i in 0..2 {
        let r = call(&gw, &env.alice, &a, i, "demo__echo", echo("alice-burst"));
        assert!(r["result"].is_object(), "{r}");
    }
    assert_eq!(
        code(&call(
            &gw,
            &env.alice,
            &a,
            2,
            "demo__echo",
            echo("alice-over")
        )),
        -32029
    );
    let (rc, out, err) = env.cli(
        &admin,
        &[
            "quarantine",
            "add",
            "--user",
            "urn:portcullis:dev#bob",
            "--ttl",
            "2m",
            "--reason",
            "clock test",
        ],
    );
    assert_eq!(rc, 0, "{out}{err}");
    assert_eq!(
        code(&call(&gw, &env.bob, &b, 1, "demo__echo", echo("bob-q"))),
        -32032
    );

    // Forward 30 minutes: well past the quarantine's 2 minutes and the
    // limiter's refill, within the tokens' hour.
    set_clock(&clock, "+30m");
    let bob = call(&gw, &env.bob, &b, 2, "demo__echo", echo("bob-after-step"));
    assert_eq!(
        code(&bob),
        -32032,
        "a clock step lifted the quarantine: {bob}"
    );
    let alice = call(
        &gw,
        &env.alice,
        &a,
        3,
        "demo__echo",
        echo("alice-after-step"),
    );
    assert_eq!(
        code(&alice),
        -32029,
        "a clock step refilled the limit: {alice}"
    );
    let (rc, out, _) = env.cli(&admin, &["quarantine", "list"]);
    assert_eq!(rc, 0);
    assert!(out.contains("bob"), "listed after the step: {out}");
    // The session lives on: another tool works.
    let doc = read_welcome(&gw, &env.alice, &a, 4);
    assert!(doc["result"].is_object(), "{doc}");

    // Forward a day: the hour-long tokens have expired by the wall clock,
    // which is what JWT validity means — refused, never served.
    set_clock(&clock, "+1d");
    let auth = bearer(&env.alice);
    let r = gw.post(
        &[("authorization", &auth), ("mcp-session-id", &a), ("mcp-protocol-version", "2025-06-18")],
        &json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "demo__echo", "arguments": {"message": "alice-expired"}}}).to_string(),
    );
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));

    // Back to an hour before the start. Alice's token left the validation
    // cache when it expired at +1d; checked again, its `iat` is an hour in
    // the future: refused. Bob's is still cached as valid (until `exp`), and
    // his quarantine holds: a new session is refused with 403.
    set_clock(&clock, "-1h");
    let r = gw.post(
        &[("authorization", &auth), ("mcp-session-id", &a), ("mcp-protocol-version", "2025-06-18")],
        &json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "demo__echo", "arguments": {"message": "alice-back"}}}).to_string(),
    );
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("not yet valid"));
    assert_eq!(session(&gw, &env.bob).unwrap_err().status, 403);
    // Back to now: sessions opened before the steps still work, the limit
    // and the quarantine still hold.
    set_clock(&clock, "+0");
    let doc = read_welcome(&gw, &env.alice, &a, 6);
    assert!(doc["result"].is_object(), "{doc}");
    assert_eq!(
        code(&call(&gw, &env.bob, &b, 3, "demo__echo", echo("bob-back"))),
        -32032
    );

    // A restart on a clock stepped back an hour: the audit chain's
    // timestamps never go backwards, so it verifies.
    drop(gw);
    set_clock(&clock, "-1h");
    let (gw, _admin) = env.start_admin_env(&vars);
    let r = gw.post(&[], r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
    assert!(r.status == 401 || r.status == 200, "{}", r.status);
    drop(gw);
    for marker in [
        "alice-over",
        "bob-q",
        "bob-after-step",
        "alice-after-step",
        "alice-expired",
        "alice-back",
        "bob-back",
    ] {
        assert_eq!(env.upstream_saw(marker), 0, "{marker} reached the upstream");
    }
    assert_audit_verifies(&env.dir.join("audit.jsonl"));
    let recs = env.audit();
    let denied = recs
        .iter()
        .filter(|r| r["decision"] == "deny" || r["allow"] == false)
        .count();
    assert!(denied >= 4, "the refusals are audited: {denied}");
}
