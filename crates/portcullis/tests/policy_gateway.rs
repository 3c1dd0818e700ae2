//! Policy enforcement through the gateway binary: list filtering, the
//! hidden-tool oracle check, denials that never reach the upstream, hot
//! reload that keeps the running set when the new one is invalid, and the
//! never-fail-open rule on evaluation errors.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code

mod common;

use common::*;
use serde_json::Value;

fn config(dir: &std::path::Path, policy_files: &[&str], extra: &str) -> std::path::PathBuf {
    let log = dir.join("upstream.log");
    let files: Vec<String> = policy_files
        .iter()
        .map(|f| format!("{:?}", dir.join(f).display().to_string()))
        .collect();
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[policy]
files = [{files}]
{extra}

[[upstream]]
name = "demo"
command = [{BIN:?}, "demo-server"]
env = {{ PORTCULLIS_DEMO_LOG = {log:?} }}

[[segment]]
name = "secrets"
labels = ["confidential"]
tools = ["demo__read_secret"]

[[segment]]
name = "outbound"
labels = ["egress"]
tools = ["demo__fetch_url"]
"#,
            files = files.join(", "),
            log = log.display().to_string(),
        ),
    )
    .unwrap();
    cfg
}

fn names(v: &Value) -> Vec<String> {
    v["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn anonymous_sees_and_reaches_only_what_policy_grants() {
    let dir = tempdir("pol-anon");
    // No [policy] files: the default pack.
    let cfg = config(&dir, &[], "");
    let gw = start(&["--config".into(), cfg.display().to_string()], &[]);
    let sid = gw.session();
    let list = gw.call(&sid, "1", "tools/list", "{}");
    let seen = names(&list);
    assert!(seen.contains(&"demo__echo".to_string()), "{seen:?}");
    assert!(
        !seen.contains(&"demo__read_secret".to_string()),
        "confidential tool listed to anonymous: {seen:?}"
    );
    assert!(
        !seen.contains(&"demo__fetch_url".to_string()),
        "labelled tool listed to anonymous: {seen:?}"
    );
    // Calling the hidden tool answers exactly like calling a missing one.
    let hidden = gw.call(
        &sid,
        "2",
        "tools/call",
        r#"{"name":"demo__read_secret","arguments":{}}"#,
    );
    let missing = gw.call(
        &sid,
        "2",
        "tools/call",
        r#"{"name":"demo__no_such_tool","arguments":{}}"#,
    );
    assert_eq!(hidden["error"]["code"], missing["error"]["code"]);
    assert_eq!(
        hidden["error"]["message"]
            .as_str()
            .unwrap()
            .replace("demo__read_secret", "X"),
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .replace("demo__no_such_tool", "X"),
        "no oracle: {hidden} vs {missing}"
    );
    assert_eq!(hidden.get("data"), missing.get("data"));
    let up = std::fs::read_to_string(dir.join("upstream.log")).unwrap_or_default();
    assert!(
        !up.contains("read_secret\""),
        "a denied call reached the upstream"
    );
    // Allowed calls work and decisions are logged with the policy hash.
    let r = gw.call(
        &sid,
        "3",
        "tools/call",
        r#"{"name":"demo__echo","arguments":{"message":"ok"}}"#,
    );
    assert_eq!(r["result"]["content"][0]["text"], "Echo: ok");
    assert!(
        eventually(5, || {
            let log = gw.log_text();
            log.contains("policy_hash") && log.contains("allow=false")
        }),
        "decisions are logged with the policy hash: {}",
        gw.log_text()
    );
}

#[test]
fn invalid_policy_reload_keeps_the_running_set() {
    let dir = tempdir("pol-reload");
    let pack = include_str!("../../../policies/default.cedar");
    std::fs::write(dir.join("p.cedar"), pack).unwrap();
    let cfg = config(&dir, &["p.cedar"], "");
    let gw = start(&["--config".into(), cfg.display().to_string()], &[]);
    let sid = gw.session();
    assert!(names(&gw.call(&sid, "1", "tools/list", "{}")).contains(&"demo__echo".to_string()));
    // A syntax error: the file watcher rejects it and names the place.
    std::fs::write(
        dir.join("p.cedar"),
        format!("{pack}\npermit (principal, action, resource) when {{ ;\n"),
    )
    .unwrap();
    assert!(
        eventually(10, || gw.log_text().contains("policy reload rejected")),
        "{}",
        gw.log_text()
    );
    let log = gw.log_text();
    assert!(log.contains("p.cedar:"), "errors name file:line:col: {log}");
    // The old set still decides: echo still allowed.
    let r = gw.call(
        &sid,
        "2",
        "tools/call",
        r#"{"name":"demo__echo","arguments":{"message":"still"}}"#,
    );
    assert_eq!(r["result"]["content"][0]["text"], "Echo: still", "{r}");
    // A valid set that forbids echo takes effect.
    std::fs::write(
        dir.join("p.cedar"),
        format!("{pack}\n@id(\"no-echo\")\n@reason(\"echo is off today\")\nforbid (principal, action == Portcullis::Action::\"CallTool\", resource == Portcullis::Tool::\"demo__echo\");\n"),
    )
    .unwrap();
    assert!(
        eventually(10, || gw.log_text().contains("policy set reloaded")),
        "{}",
        gw.log_text()
    );
    let r = gw.call(
        &sid,
        "3",
        "tools/call",
        r#"{"name":"demo__echo","arguments":{"message":"blocked"}}"#,
    );
    assert!(r.get("error").is_some(), "{r}");
}

/// Fault: the policy file deleted while the gateway runs. The running set
/// keeps deciding (what it forbade stays forbidden, what it allowed stays
/// allowed), the loss is logged, and a set that comes back applies.
#[test]
fn a_policy_file_deleted_while_running_keeps_the_running_set() {
    let dir = tempdir("pol-deleted");
    let pack = include_str!("../../../policies/default.cedar");
    let no_echo = format!("{pack}\n@id(\"no-echo\")\nforbid (principal, action == Portcullis::Action::\"CallTool\", resource == Portcullis::Tool::\"demo__echo\");\n");
    std::fs::write(dir.join("p.cedar"), &no_echo).unwrap();
    let cfg = config(&dir, &["p.cedar"], "");
    let gw = start(&["--config".into(), cfg.display().to_string()], &[]);
    let sid = gw.session();
    let echo = |id: &str| {
        gw.call(
            &sid,
            id,
            "tools/call",
            r#"{"name":"demo__echo","arguments":{"message":"m"}}"#,
        )
    };
    let listed = |id: &str| names(&gw.call(&sid, id, "tools/list", "{}"));
    assert!(echo("1").get("error").is_some());
    let before = listed("2");
    assert!(
        before.contains(&"demo__read_document".to_string()),
        "{before:?}"
    );
    std::fs::remove_file(dir.join("p.cedar")).unwrap();
    assert!(
        eventually(10, || gw.log_text().contains("policy reload rejected")),
        "the loss is logged: {}",
        gw.log_text()
    );
    let r = echo("3");
    assert!(
        r.get("error").is_some(),
        "the running forbid still holds: {r}"
    );
    assert_eq!(listed("4"), before, "what was allowed stays allowed");
    // The file comes back without the forbid: it applies.
    std::fs::write(dir.join("p.cedar"), pack).unwrap();
    assert!(
        eventually(10, || gw.log_text().contains("policy set reloaded")),
        "{}",
        gw.log_text()
    );
    assert_eq!(echo("5")["result"]["content"][0]["text"], "Echo: m");
}

#[test]
fn an_erroring_forbid_denies_instead_of_failing_open() {
    let dir = tempdir("pol-error");
    let pack = include_str!("../../../policies/default.cedar");
    // This forbid validates but errors at evaluation once the session has
    // made a call (integer overflow): Cedar would skip it; the gateway denies.
    std::fs::write(
        dir.join("p.cedar"),
        format!("{pack}\n@id(\"careless-forbid\")\nforbid (principal, action == Portcullis::Action::\"CallTool\", resource) when {{ context.session.calls + 9223372036854775807 < 0 }};\n"),
    )
    .unwrap();
    let cfg = config(&dir, &["p.cedar"], "");
    let gw = start(&["--config".into(), cfg.display().to_string()], &[]);
    let sid = gw.session();
    // On the first call the forbid evaluates (false) and echo is allowed…
    let ok = gw.call(
        &sid,
        "1",
        "tools/call",
        r#"{"name":"demo__echo","arguments":{"message":"fine"}}"#,
    );
    assert_eq!(ok["result"]["content"][0]["text"], "Echo: fine", "{ok}");
    // …on the next it errors, and the call is denied, not allowed.
    let r = gw.call(
        &sid,
        "2",
        "tools/call",
        r#"{"name":"demo__read_document","arguments":{"name":"welcome"}}"#,
    );
    assert!(
        r.get("error").is_some(),
        "an erroring forbid failed open: {r}"
    );
    assert!(
        eventually(5, || gw.log_text().contains("careless-forbid")),
        "the erroring policy is recorded: {}",
        gw.log_text()
    );
}

#[test]
fn a_rate_class_obligation_limits_with_retry_after() {
    let dir = tempdir("pol-rate");
    let pack = include_str!("../../../policies/default.cedar");
    std::fs::write(
        dir.join("p.cedar"),
        format!("{pack}\n@id(\"echo-slowly\")\n@rate_class(\"slow\")\npermit (principal, action == Portcullis::Action::\"CallTool\", resource == Portcullis::Tool::\"demo__echo\");\n"),
    )
    .unwrap();
    let cfg = config(
        &dir,
        &["p.cedar"],
        "[policy.rate_classes]\nslow = { per_minute = 6, burst = 2 }\n",
    );
    let gw = start(&["--config".into(), cfg.display().to_string()], &[]);
    let sid = gw.session();
    let call = |id: &str| {
        gw.call(
            &sid,
            id,
            "tools/call",
            r#"{"name":"demo__echo","arguments":{"message":"x"}}"#,
        )
    };
    assert!(call("1").get("result").is_some());
    assert!(call("2").get("result").is_some());
    let limited = call("3");
    assert_eq!(limited["error"]["code"], -32029, "{limited}");
    assert!(
        limited["error"]["data"]["retryAfterSeconds"]
            .as_f64()
            .unwrap()
            >= 1.0,
        "{limited}"
    );
    // Other tools are not under that class.
    let other = gw.call(
        &sid,
        "4",
        "tools/call",
        r#"{"name":"demo__read_document","arguments":{"name":"welcome"}}"#,
    );
    assert!(other.get("result").is_some(), "{other}");
}

#[test]
fn the_default_pack_refuses_metadata_and_disguised_addresses_in_arguments() {
    let dir = tempdir("pol-ssrf");
    let cfg = config(&dir, &[], "");
    let gw = start(&["--config".into(), cfg.display().to_string()], &[]);
    let sid = gw.session();
    let echo = |id: &str, message: &str| {
        let params = serde_json::json!({"name": "demo__echo", "arguments": {"message": message}});
        gw.call(&sid, id, "tools/call", &params.to_string())
    };
    for (id, url) in [
        ("1", "http://169.254.169.254/latest/meta-data/iam/"),
        ("2", "see http://2130706433:8080/admin"),
        ("3", "http://metadata.google.internal/computeMetadata/v1/"),
        ("4", "http://[::ffff:127.0.0.1]/"),
    ] {
        let r = echo(id, url);
        assert_eq!(r["error"]["code"], -32030, "{url}: {r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains("link-local, metadata or disguised"), "{msg}");
    }
    // Ordinary and plainly-spelled loopback URLs on an unlabelled tool pass.
    for (id, url) in [("5", "http://example.com/"), ("6", "http://127.0.0.1:9/")] {
        let r = echo(id, url);
        assert_eq!(
            r["result"]["content"][0]["text"],
            format!("Echo: {url}"),
            "{r}"
        );
    }
    let up = std::fs::read_to_string(dir.join("upstream.log")).unwrap_or_default();
    for marker in ["169.254", "2130706433", "metadata.google", "ffff:127"] {
        assert!(
            !up.contains(marker),
            "a refused call reached the upstream: {marker}"
        );
    }
    assert!(
        up.contains("example.com"),
        "allowed calls reach the upstream: {up}"
    );
}
