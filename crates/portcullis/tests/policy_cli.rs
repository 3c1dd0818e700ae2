//! The `portcullis policy validate|test|explain` command-line contract.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tempdir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!(
        "portcullis-policy-cli-{tag}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn out(o: &Output) -> (String, String) {
    (
        String::from_utf8(o.stdout.clone()).unwrap(),
        String::from_utf8(o.stderr.clone()).unwrap(),
    )
}

#[test]
fn validate_accepts_the_default_pack() {
    let o = bin()
        .args(["policy", "validate"])
        .arg(repo().join("policies/default.cedar"))
        .output()
        .unwrap();
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("ok: 9 policies in 1 file, sha256 "),
        "{stdout}"
    );
}

#[test]
fn validate_reports_every_error_as_file_line_col() {
    let d = tempdir("validate");
    let a = write(
        &d,
        "a.cedar",
        "permit (principal, action, resource);\n\npermit (principal, action, resource) when { context.nope };\n",
    );
    let b = write(&d, "b.cedar", "// two errors\nforbid (principal,\n  action == Portcullis::Action::\"Fly\", resource);\npermit (principal action);\n");
    let o = bin()
        .args(["policy", "validate"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    let (stdout, stderr) = out(&o);
    assert!(!o.status.success());
    assert!(stdout.is_empty(), "{stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let mut parts = l.splitn(4, ':');
        let file = parts.next().unwrap();
        let line: usize = parts
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{l}"));
        let col: usize = parts
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{l}"));
        assert!(file.ends_with(".cedar") && line > 0 && col > 0, "{l}");
        assert!(parts.next().unwrap().starts_with(' '), "{l}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{}:3:", a.display()))),
        "{stderr}"
    );
    // b.cedar does not parse (line 4); a.cedar is still validated.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{}:4:", b.display()))),
        "{stderr}"
    );

    // With --schema: a schema that knows argument names validates rules on them.
    let schema =
        std::fs::read_to_string(repo().join("crates/portcullis-policy/src/schema.cedarschema"))
            .unwrap()
            .replace(
                "type Arguments = {};",
                "type Arguments = { path?: String };",
            );
    let s = write(&d, "my.cedarschema", &schema);
    let p = write(
        &d,
        "args.cedar",
        "forbid (principal, action, resource) when { context.arguments has path && context.arguments.path like \"/etc/*\" };\n",
    );
    let o = bin().args(["policy", "validate"]).arg(&p).output().unwrap();
    assert!(!o.status.success(), "shipped schema has no argument names");
    let o = bin()
        .args(["policy", "validate", "--schema"])
        .arg(&s)
        .arg(&p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o).1);

    // A missing file is reported the same way.
    let o = bin()
        .args(["policy", "validate"])
        .arg(d.join("missing.cedar"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(out(&o).1.contains("missing.cedar:1:1: cannot read"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn test_runs_the_shipped_fixture() {
    let o = bin()
        .args(["policy", "test"])
        .arg(repo().join("policies/default.test.toml"))
        .output()
        .unwrap();
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().last(),
        Some("15 passed, 0 failed"),
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("pass: ")).count(),
        15
    );
}

#[test]
fn test_reports_failures_and_exits_non_zero() {
    let d = tempdir("fixture");
    write(
        &d,
        "p.cedar",
        "@id(\"calls\") @redact(\"pii\") @dlp_block(\"secrets\") @injection(\"wrap\") permit (principal, action == Portcullis::Action::\"CallTool\", resource);\n",
    );
    let toml = r#"
policies = ["p.cedar"]
[[case]]
name = "call allowed"
expect = "allow"
determining = ["calls"]
redact = ["pii"]
dlp_block = ["secrets"]
injection = "wrap"
[case.request]
action = "CallTool"
principal = { type = "anonymous" }
resource = { type = "tool", id = "a__b", server = "a" }
[[case]]
name = "list denied"
expect = "deny"
[case.request]
action = "tools/list"
principal = { type = "anonymous" }
resource = { type = "server", id = "a" }
[[case]]
name = "wrong inspection obligations"
expect = "allow"
dlp_block = []
injection = "block"
[case.request]
action = "CallTool"
principal = { type = "anonymous" }
resource = { type = "tool", id = "a__c", server = "a" }
[[case]]
name = "wrong expectation"
expect = "allow"
[case.request]
action = "prompts/get"
principal = { type = "anonymous" }
resource = { type = "prompt", id = "a__p", server = "a" }
"#;
    let f = write(&d, "fixture.toml", toml);
    let o = bin().args(["policy", "test"]).arg(&f).output().unwrap();
    let (stdout, _) = out(&o);
    assert!(!o.status.success());
    assert!(stdout.contains("pass: call allowed"), "{stdout}");
    assert!(
        stdout.contains("FAIL: wrong expectation: expected allow, got deny"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "FAIL: wrong inspection obligations: expected dlp_block [], got [\"secrets\"]; expected injection \"block\", got \"wrap\""
        ),
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().last(),
        Some("2 passed, 2 failed"),
        "{stdout}"
    );

    // The same as JSON.
    let json = serde_json::json!({
        "policies": ["p.cedar"],
        "cases": [{
            "name": "call allowed",
            "expect": "allow",
            "request": {
                "action": "tools/call",
                "principal": {"type": "user", "iss": "i", "sub": "s", "strength": "token"},
                "resource": {"type": "tool", "id": "a__b", "server": "a"}
            }
        }]
    });
    let f = write(&d, "fixture.json", &json.to_string());
    let o = bin().args(["policy", "test"]).arg(&f).output().unwrap();
    assert!(o.status.success(), "{:?}", out(&o));
    assert_eq!(out(&o).0.lines().last(), Some("1 passed, 0 failed"));

    // A fixture whose policies do not load: file:line:col on stderr.
    write(
        &d,
        "bad.cedar",
        "permit (principal, action, resource) when { nope };",
    );
    let f = write(&d, "bad.toml", "policies = [\"bad.cedar\"]\n");
    let o = bin().args(["policy", "test"]).arg(&f).output().unwrap();
    assert!(!o.status.success());
    assert!(out(&o).1.contains("bad.cedar:1:"), "{:?}", out(&o));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn explain_prints_decision_policies_errors_and_reason() {
    let pack = repo().join("policies/default.cedar");
    let request = r#"{"action": "tools/call",
        "principal": {"type": "agent", "spiffe_id": "spiffe://example.org/agent/a", "strength": "certificate"},
        "resource": {"type": "tool", "id": "web__post", "server": "web", "labels": ["egress"]},
        "session": {"tainted": true}}"#;
    let o = bin()
        .args(["policy", "explain", "--policies"])
        .arg(&pack)
        .args(["--request", request])
        .output()
        .unwrap();
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("decision: deny\n"), "{stdout}");
    assert!(
        stdout.contains(
            "reason: this session has read confidential data and may not use egress tools\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("determining: no-egress-after-confidential\n"),
        "{stdout}"
    );
    assert!(stdout.contains("errors: (none)\n"), "{stdout}");
    assert!(stdout.contains("policy set: "), "{stdout}");

    // An erroring forbid: denied, with the error and the policy named.
    let d = tempdir("explain");
    let p = write(
        &d,
        "p.cedar",
        "@id(\"all\") permit (principal, action, resource);\n@id(\"overflow\") forbid (principal, action, resource) when { context.risk * 4611686018427387904 > 0 };\n",
    );
    let req = write(
        &d,
        "req.json",
        r#"{"action": "ping", "principal": {"type": "anonymous"}, "resource": {"type": "server", "id": "a"}, "risk": 3}"#,
    );
    let o = bin()
        .args(["policy", "explain", "--policies"])
        .arg(&p)
        .arg("--request")
        .arg(format!("@{}", req.display()))
        .output()
        .unwrap();
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("decision: deny\n"), "{stdout}");
    assert!(stdout.contains("determining: overflow\n"), "{stdout}");
    assert!(stdout.contains("errors:\n  overflow: "), "{stdout}");
    assert!(
        stdout.contains("reason: denied: a policy could not be evaluated"),
        "{stdout}"
    );

    // Allowed: obligations are shown.
    let o = bin()
        .args(["policy", "explain", "--policies"])
        .arg(&p)
        .args(["--request", r#"{"action": "Ping", "principal": {"type": "anonymous"}, "resource": {"type": "server", "id": "a"}}"#])
        .output()
        .unwrap();
    let (stdout, _) = out(&o);
    assert!(stdout.contains("decision: allow\n"), "{stdout}");
    assert!(
        stdout.contains("obligations: redact=[] rate_class=- require_approval=-"),
        "{stdout}"
    );

    // A malformed request: one line, non-zero.
    let o = bin()
        .args(["policy", "explain", "--policies"])
        .arg(&p)
        .args(["--request", "{"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let (_, stderr) = out(&o);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("portcullis: --request: "), "{stderr}");
    std::fs::remove_dir_all(&d).unwrap();
}
