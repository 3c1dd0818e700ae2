#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code: a panic is a failed assertion
//! End-to-end tests of the gateway binary against its own demo server:
//! routing, id remapping, session isolation, upstream crash and restart,
//! and every bad-input case of the core issue. Each rejected request is
//! checked against the upstream's own log: it must never arrive.

mod common;

use common::*;
use serde_json::Value;

/// Two demo servers `a` and `b`; `a` logs every line it receives to `log_a`
/// (stdio servers get no environment they are not configured with).
fn two_demos(log_a: &std::path::Path) -> Gateway {
    let cfg = log_a.with_extension("toml");
    std::fs::write(
        &cfg,
        format!(
            "[[upstream]]\nname = \"a\"\ncommand = [{BIN:?}, \"demo-server\"]\nenv = {{ PORTCULLIS_DEMO_LOG = {:?} }}\n\n[[upstream]]\nname = \"b\"\ncommand = [{BIN:?}, \"demo-server\"]\n",
            log_a.display().to_string()
        ),
    )
    .unwrap();
    start(&["--config".into(), cfg.display().to_string()], &[])
}

fn text_of(v: &Value) -> String {
    v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn federates_lists_and_routes_calls_to_the_owner() {
    let dir = tempdir("route");
    let gw = two_demos(&dir.join("up.log"));
    let sid = gw.session();
    let tools = gw.call(&sid, "1", "tools/list", "{}");
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"a__echo") && names.contains(&"b__echo"),
        "{names:?}"
    );
    assert_eq!(names.len(), 12);
    // Notes are per upstream process: two writes to a, one to b.
    for _ in 0..2 {
        let r = gw.call(
            &sid,
            "2",
            "tools/call",
            r#"{"name":"a__write_note","arguments":{"title":"x","body":"y"}}"#,
        );
        assert!(text_of(&r).starts_with("saved"), "{r}");
    }
    let r = gw.call(
        &sid,
        "3",
        "tools/call",
        r#"{"name":"b__write_note","arguments":{"title":"z","body":"y"}}"#,
    );
    let a2 = gw.call(
        &sid,
        "4",
        "tools/call",
        r#"{"name":"a__write_note","arguments":{"title":"w","body":"y"}}"#,
    );
    assert!(text_of(&r).contains("(1 notes)"), "{r}");
    assert!(text_of(&a2).contains("(2 notes)"), "{a2}");
    // Prompts are namespaced too; resources keep their URIs and route back.
    let p = gw.call(
        &sid,
        "5",
        "prompts/get",
        r#"{"name":"b__summarize","arguments":{"topic":"tea"}}"#,
    );
    assert!(p["result"]["messages"][0]["content"]["text"]
        .as_str()
        .unwrap()
        .contains("tea"));
    let res = gw.call(
        &sid,
        "6",
        "resources/read",
        r#"{"uri":"demo://docs/welcome"}"#,
    );
    assert!(
        res["result"]["contents"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Welcome"),
        "{res}"
    );
    // Unknown and un-namespaced names answer like any unknown tool.
    for bad in ["echo", "c__echo", "a__nope"] {
        let r = gw.call(
            &sid,
            "7",
            "tools/call",
            &format!(r#"{{"name":"{bad}","arguments":{{}}}}"#),
        );
        assert!(
            r.get("error").is_some() || r["result"]["isError"] == true,
            "{bad}: {r}"
        );
    }
}

#[test]
fn ids_are_remapped_and_sessions_isolated() {
    let dir = tempdir("iso");
    let gw = two_demos(&dir.join("up.log"));
    let s1 = gw.session();
    let s2 = gw.session();
    assert_ne!(s1, s2);
    // Two clients, the same request id, interleaved on threads.
    let mut handles = Vec::new();
    for (sid, who) in [(s1.clone(), "one"), (s2.clone(), "two")] {
        let addr = gw.addr.clone();
        let path = gw.path.clone();
        handles.push(std::thread::spawn(move || {
            let mut seen = Vec::new();
            for i in 0..20 {
                let body = format!(r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"a__echo","arguments":{{"message":"{who}-{i}"}}}}}}"#);
                let r = raw(&addr, "POST", &path, &[ACCEPT, JSON, ("mcp-session-id", &sid)], body.as_bytes());
                let v = r.json();
                assert_eq!(v["id"], 7, "the client's own id comes back");
                seen.push(text_of(&v));
            }
            seen
        }));
    }
    for (h, who) in handles.into_iter().zip(["one", "two"]) {
        let seen = h.join().unwrap();
        for (i, t) in seen.iter().enumerate() {
            assert_eq!(t, &format!("Echo: {who}-{i}"));
        }
    }
    // Ids upstream are the gateway's, not the client's.
    // Upstream, every call carried its own gateway-chosen id.
    let log = std::fs::read_to_string(dir.join("up.log")).unwrap();
    let ids: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["method"] == "tools/call")
        .map(|v| v["id"].clone())
        .collect();
    assert_eq!(ids.len(), 40);
    let unique: std::collections::BTreeSet<String> = ids.iter().map(|i| i.to_string()).collect();
    assert_eq!(unique.len(), 40, "two clients' id 7 collided upstream");
    // A session id is not a bearer of another session's state: DELETE one,
    // the other keeps working, the deleted one is gone.
    let d = raw(
        &gw.addr,
        "DELETE",
        &gw.path,
        &[("mcp-session-id", &s1)],
        b"",
    );
    assert_eq!(d.status, 200);
    let gone = gw.post(
        &[("mcp-session-id", &s1)],
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    );
    assert_eq!(gone.status, 404);
    assert_eq!(
        text_of(&gw.call(
            &s2,
            "1",
            "tools/call",
            r#"{"name":"b__echo","arguments":{"message":"still"}}"#
        )),
        "Echo: still"
    );
}

#[test]
fn crashed_stdio_upstream_is_restarted_and_others_keep_working() {
    let dir = tempdir("crash");
    let pidfile = dir.join("pid");
    let crashy = format!(
        "sh -c 'echo $$ > {}; exec {} demo-server'",
        pidfile.display(),
        BIN
    );
    let gw = start(
        &[
            "--upstream-cmd".into(),
            format!("crashy={crashy}"),
            "--upstream-cmd".into(),
            format!("ok={}", demo_cmd()),
        ],
        &[],
    );
    let sid = gw.session();
    assert_eq!(
        text_of(&gw.call(
            &sid,
            "1",
            "tools/call",
            r#"{"name":"crashy__echo","arguments":{"message":"a"}}"#
        )),
        "Echo: a"
    );
    let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_owned();
    std::fs::remove_file(&pidfile).unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap()
        .success());
    // The other upstream is unaffected while the crashed one restarts.
    assert_eq!(
        text_of(&gw.call(
            &sid,
            "2",
            "tools/call",
            r#"{"name":"ok__echo","arguments":{"message":"b"}}"#
        )),
        "Echo: b"
    );
    assert!(
        eventually(20, || pidfile.exists()),
        "supervisor restarted the server"
    );
    assert!(
        eventually(20, || text_of(&gw.call(
            &sid,
            "3",
            "tools/call",
            r#"{"name":"crashy__echo","arguments":{"message":"c"}}"#
        )) == "Echo: c"),
        "crashed upstream serves again after restart"
    );
    assert!(
        eventually(5, || gw.log_text().contains("stdio server exited")),
        "{}",
        gw.log_text()
    );
}

#[test]
fn bad_input_gets_clear_errors_and_never_reaches_the_upstream() {
    let dir = tempdir("bad");
    let up = dir.join("up.log");
    let gw = two_demos(&up);
    let sid = gw.session();
    let s = [("mcp-session-id", sid.as_str())];
    let marker = "MARKER-must-not-arrive";

    let r = gw.post(&s, &format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"a__echo","arguments":{{"message":"{marker}"}}"#));
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_i64()),
        (400, Some(-32700)),
        "truncated JSON"
    );

    let r = gw.post(&s, &format!(r#"{{"jsonrpc":"1.0","id":1,"method":"tools/call","params":{{"name":"a__echo","arguments":{{"message":"{marker}"}}}}}}"#));
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_i64()),
        (400, Some(-32600)),
        "wrong jsonrpc version"
    );

    let r = gw.post(&s, r#"{"jsonrpc":"2.0","id":{"x":1},"method":"ping"}"#);
    assert_eq!(r.json()["error"]["code"], -32600, "object id");

    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"a__echo","arguments":{{"message":"{marker}","x":{}{}}}}}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let r = gw.post(&s, &deep);
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_i64()),
        (400, Some(-32600)),
        "deep nesting"
    );

    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"a__echo","arguments":{{"message":"{marker}{}"}}}}}}"#,
        "x".repeat(5 * 1024 * 1024)
    );
    let r = gw.post(&s, &big);
    assert_eq!(r.status, 413, "oversized body");

    let r = gw.post(&[("mcp-session-id", "00000000000000000000000000000000")], &format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"a__echo","arguments":{{"message":"{marker}"}}}}}}"#));
    assert_eq!(r.status, 404, "unknown session");
    let r = gw.post(&[], &format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"a__echo","arguments":{{"message":"{marker}"}}}}}}"#));
    assert_eq!(r.status, 400, "missing session");

    let r = raw(
        &gw.addr,
        "POST",
        &gw.path,
        &[
            ACCEPT,
            ("content-type", "text/plain"),
            ("mcp-session-id", &sid),
        ],
        b"{}",
    );
    assert_eq!(r.status, 415, "wrong content type");

    let r = gw.post(
        &[
            ("mcp-session-id", &sid),
            ("mcp-protocol-version", "1999-01-01"),
        ],
        r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_i64()),
        (400, Some(-32022)),
        "unknown protocol version"
    );

    // DNS rebinding: a foreign Origin or Host on a loopback listener.
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let r = raw(
        &gw.addr,
        "POST",
        &gw.path,
        &[ACCEPT, JSON, ("origin", "http://evil.example.com")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 403);
    let mut s2 = std::net::TcpStream::connect(&gw.addr).unwrap();
    use std::io::{Read, Write};
    write!(s2, "POST {} HTTP/1.1\r\nHost: evil.example.com\r\nConnection: close\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{}", gw.path, body.len(), body).unwrap();
    let mut out = String::new();
    let _ = s2.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");

    // The session still works after all of that, and the upstream never
    // saw any of the rejected bodies.
    assert_eq!(
        text_of(&gw.call(
            &sid,
            "9",
            "tools/call",
            r#"{"name":"a__echo","arguments":{"message":"fine"}}"#
        )),
        "Echo: fine"
    );
    let log = std::fs::read_to_string(&up).unwrap_or_default();
    assert!(log.contains("fine"));
    assert!(
        !log.contains(marker),
        "a rejected request reached the upstream"
    );
}

/// A client still sending an oversized body must read the 413, not a reset:
/// the gateway drains a bounded excess before answering. Before, it closed
/// with the excess unread, and the client's next write or its read failed
/// (CI saw `Broken pipe` on exactly this).
#[test]
fn an_oversized_body_is_answered_413_while_the_client_is_still_sending() {
    let dir = tempdir("oversized");
    let up = dir.join("up.log");
    let gw = two_demos(&up);
    let sid = gw.session();
    let marker = "MARKER-oversized";
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"a__echo","arguments":{{"message":"{marker}{}"}}}}}}"#,
        "x".repeat(5 * 1024 * 1024)
    );
    // The first piece is well past the 4 MiB limit, so the excess is still
    // unread when the gateway decides; the last 64 KiB follow after a pause.
    let (first, rest) = body.as_bytes().split_at(body.len() - 64 * 1024);
    let r = try_raw(
        &gw.addr,
        "POST",
        &gw.path,
        &[ACCEPT, JSON, ("mcp-session-id", &sid)],
        &[first, rest],
        std::time::Duration::from_millis(300),
    )
    .expect("the client must get an answer, not a broken connection");
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"].as_i64(), Some(-32600));
    assert_eq!(
        r.json()["error"]["message"].as_str(),
        Some("request body larger than 4194304 bytes")
    );
    let log = std::fs::read_to_string(&up).unwrap_or_default();
    assert!(
        !log.contains(marker),
        "an oversized body reached the upstream"
    );
}

#[test]
fn stateless_requests_are_checked_against_their_headers() {
    let dir = tempdir("stateless");
    let up = dir.join("up.log");
    let gw = two_demos(&up);
    let meta = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#;
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"a__echo","arguments":{{"message":"MISMATCH"}},{meta}}}}}"#
    );
    let v = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
    ];
    let r = gw.post(&[v[0], v[1], ("mcp-name", "a__read_secret")], &body);
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_i64()),
        (400, Some(-32020)),
        "Mcp-Name disagrees with body"
    );
    let r = gw.post(
        &[v[0], ("mcp-method", "tools/list"), ("mcp-name", "a__echo")],
        &body,
    );
    assert_eq!(
        r.json()["error"]["code"],
        -32020,
        "Mcp-Method disagrees with body"
    );
    let r = gw.post(&[v[0], v[1]], &body);
    assert_eq!(r.json()["error"]["code"], -32020, "Mcp-Name missing");
    let ok = body.replace("MISMATCH", "agree");
    let r = gw.post(&[v[0], v[1], ("mcp-name", "=?base64?YV9fZWNobw==?=")], &ok);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"]["resultType"], "complete");
    assert_eq!(text_of(&r.json()), "Echo: agree");
    // server/discover answers locally; GET and DELETE are 405 at 2026-07-28.
    let d = gw.post(
        &[v[0], ("mcp-method", "server/discover")],
        &format!(r#"{{"jsonrpc":"2.0","id":2,"method":"server/discover","params":{{{meta}}}}}"#),
    );
    assert!(d.json()["result"]["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x == "2026-07-28"));
    let g = raw(
        &gw.addr,
        "GET",
        &gw.path,
        &[ACCEPT, ("mcp-protocol-version", "2026-07-28")],
        b"",
    );
    assert_eq!(g.status, 405);
    let log = std::fs::read_to_string(&up).unwrap_or_default();
    assert!(
        log.contains("agree") && !log.contains("MISMATCH"),
        "a mismatched request reached the upstream"
    );
}

#[test]
fn broken_upstreams_fail_only_their_own_calls() {
    let dir = tempdir("broken");
    let garbage = "sh -c 'while read l; do echo this-is-not-json; done'".to_string();
    let gw = start(
        &[
            "--config".into(),
            {
                let p = dir.join("p.toml");
                std::fs::write(&p, "[limits]\ncall_timeout_ms = 1500\n").unwrap();
                p.display().to_string()
            },
            "--upstream-cmd".into(),
            format!("ok={}", demo_cmd()),
            "--upstream-cmd".into(),
            format!("garbage={garbage}"),
            "--upstream".into(),
            "down=http://127.0.0.1:9/mcp".into(),
        ],
        &[],
    );
    let sid = gw.session();
    let tools = gw.call(&sid, "1", "tools/list", "{}");
    let n = tools["result"]["tools"].as_array().unwrap().len();
    assert_eq!(n, 6, "only the healthy upstream's tools: {tools}");
    let r = gw.call(
        &sid,
        "2",
        "tools/call",
        r#"{"name":"down__echo","arguments":{}}"#,
    );
    assert_eq!(r["error"]["code"], -32010, "{r}");
    let r = gw.call(
        &sid,
        "3",
        "tools/call",
        r#"{"name":"garbage__echo","arguments":{}}"#,
    );
    assert_eq!(r["error"]["code"], -32010, "{r}");
    assert_eq!(
        text_of(&gw.call(
            &sid,
            "4",
            "tools/call",
            r#"{"name":"ok__echo","arguments":{"message":"alive"}}"#
        )),
        "Echo: alive"
    );
    assert!(
        eventually(5, || gw.log_text().contains("not JSON-RPC")),
        "garbage is logged"
    );
}

#[test]
fn port_in_use_and_bad_config_exit_with_one_line() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let state = tempdir("state");
    let out = std::process::Command::new(BIN)
        .env("PORTCULLIS_STATE_DIR", &state)
        .args(["serve", "--listen", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l.starts_with("portcullis: cannot listen on")),
        "{err}"
    );
    let dir = tempdir("cfg");
    let p = dir.join("bad.toml");
    std::fs::write(&p, "[[upstream]]\nname = \"a__b\"\nurl = \"http://x/\"\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("upstream[0].name"), "{err}");
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "[[upstream]]\nname = \"docs\"\nurl = \"http://127.0.0.1:1/mcp\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["config", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sse_streams_resume_with_last_event_id() {
    use std::io::{Read, Write};
    let dir = tempdir("resume");
    let gw = two_demos(&dir.join("up.log"));
    let sid = gw.session();
    // Start a streaming call, read the first progress event, then drop the
    // connection mid-stream.
    let body = r#"{"jsonrpc":"2.0","id":"c1","method":"tools/call","params":{"name":"a__count","arguments":{"steps":5,"delay_ms":300},"_meta":{"progressToken":"tok"}}}"#;
    let mut s = std::net::TcpStream::connect(&gw.addr).unwrap();
    write!(
        s,
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: {sid}\r\nContent-Length: {}\r\n\r\n{body}",
        gw.path,
        gw.addr,
        body.len()
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"progress\":1") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(text.contains("text/event-stream"), "{text}");
    assert!(
        text.contains("\"progressToken\":\"tok\""),
        "client's own token restored: {text}"
    );
    let last_id = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .next_back()
        .expect("events carry ids")
        .trim()
        .to_owned();
    drop(s);
    // Resume: the rest of the stream, ending with the response.
    let r = raw(
        &gw.addr,
        "GET",
        &gw.path,
        &[
            ("accept", "text/event-stream"),
            ("mcp-session-id", &sid),
            ("last-event-id", &last_id),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    let msgs = r.messages();
    let progress: Vec<u64> = msgs
        .iter()
        .filter_map(|m| m["params"]["progress"].as_u64())
        .collect();
    assert_eq!(
        progress,
        vec![2, 3, 4, 5],
        "no event lost or repeated: {msgs:?}"
    );
    let last = msgs.last().unwrap();
    assert_eq!(last["id"], "c1");
    assert_eq!(text_of(last), "counted to 5");
    // An unknown event id is refused, not silently accepted.
    let r = raw(
        &gw.addr,
        "GET",
        &gw.path,
        &[
            ("accept", "text/event-stream"),
            ("mcp-session-id", &sid),
            ("last-event-id", "999-1"),
        ],
        b"",
    );
    assert_eq!(r.status, 404);
}

#[test]
fn a_hanging_call_times_out_and_is_cancelled_upstream() {
    let dir = tempdir("hang");
    let log = dir.join("up.log");
    let cfg = dir.join("g.toml");
    std::fs::write(
        &cfg,
        format!(
            "[limits]\ncall_timeout_ms = 800\n\n[[upstream]]\nname = \"slow\"\ncommand = [{BIN:?}, \"demo-server\"]\nenv = {{ PORTCULLIS_DEMO_LOG = {:?} }}\n",
            log.display().to_string()
        ),
    )
    .unwrap();
    let gw = start(&["--config".into(), cfg.display().to_string()], &[]);
    let sid = gw.session();
    let t = std::time::Instant::now();
    let r = gw.call(
        &sid,
        "1",
        "tools/call",
        r#"{"name":"slow__count","arguments":{"steps":1,"delay_ms":5000}}"#,
    );
    assert_eq!(r["error"]["code"], -32011, "{r}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(4),
        "answered at the timeout, not when the upstream finished"
    );
    assert!(
        eventually(5, || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("notifications/cancelled")),
        "the upstream was told to stop"
    );
    // The session and the upstream still serve other calls.
    assert_eq!(
        text_of(&gw.call(
            &sid,
            "2",
            "tools/call",
            r#"{"name":"slow__echo","arguments":{"message":"ok"}}"#
        )),
        "Echo: ok"
    );
}
