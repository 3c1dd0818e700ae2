//! Fault injection on the wire, through the real gateway binary: an upstream
//! that dies half-way through an answer (stdio: the process exits; HTTP: the
//! SSE stream is cut mid-event), one that writes its answers in pieces, one
//! that interleaves garbage, and a client that stops half-way through its
//! request body. Each fault fails only the call it hits, with a clear error,
//! never reaches the upstream when the request was incomplete, and leaves
//! the rest of the gateway serving. (Other faults: the audit disk full in
//! monitor.rs, wall-clock steps in contain.rs, the policy file deleted in
//! policy_gateway.rs, Redis killed in cluster.rs.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const PEER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/peers/faulty_upstream.py"
);

/// A gateway with the faulty peer (`faulty`, stdio or HTTP) and the demo
/// server (`ok`), and an audit log.
struct Rig {
    dir: PathBuf,
    gw: Gateway,
    /// The HTTP peer, when there is one (killed on drop).
    _peer: Option<Killed>,
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Rig {
    fn new(tag: &str, http: bool) -> Rig {
        let dir = tempdir(tag);
        let log = dir.join("peer.log");
        let (upstream, peer) = if http {
            let port_file = dir.join("port");
            let child = std::process::Command::new("python3")
                .arg(PEER)
                .arg("http")
                .arg(&log)
                .arg(&port_file)
                .spawn()
                .expect("python3");
            let peer = Killed(child);
            assert!(eventually(20, || port_file.exists()), "peer port");
            let port = std::fs::read_to_string(&port_file).unwrap();
            (
                format!("url = \"http://127.0.0.1:{}/mcp\"", port.trim()),
                Some(peer),
            )
        } else {
            (
                format!(
                    "command = [\"python3\", {PEER:?}, \"stdio\", {:?}]",
                    log.display().to_string()
                ),
                None,
            )
        };
        let cfg = dir.join("gw.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"
[audit]
path = {audit:?}

[limits]
call_timeout_ms = 30000

[[upstream]]
name = "faulty"
{upstream}

[[upstream]]
name = "ok"
command = [{BIN:?}, "demo-server"]
"#,
                audit = dir.join("audit.jsonl").display().to_string(),
            ),
        )
        .unwrap();
        let gw = start(&["--config".into(), cfg.display().to_string()], &[]);
        Rig {
            dir,
            gw,
            _peer: peer,
        }
    }

    fn call(&self, sid: &str, id: &str, tool: &str, message: &str) -> Value {
        let params = json!({"name": tool, "arguments": {"message": message}, "_meta": {"progressToken": id}});
        self.gw.call(sid, id, "tools/call", &params.to_string())
    }

    /// Request lines the faulty peer received that contain `marker`.
    fn peer_saw(&self, marker: &str) -> usize {
        std::fs::read_to_string(self.dir.join("peer.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(marker))
            .count()
    }

    fn verify_audit(&self) {
        assert_audit_verifies(&self.dir.join("audit.jsonl"));
    }
}

fn text_of(v: &Value) -> String {
    v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// What garbage inside an answer does on each transport.
enum Garbage {
    /// stdio: the bad line (and the answer to an id nobody asked for) is
    /// logged and dropped; the real answer still arrives.
    Dropped,
    /// HTTP: the call's own SSE stream broke the protocol, so that call
    /// fails with -32012; the next one is served.
    FailsTheCall,
}

/// The shared script of both transports: pieces reassemble, a death
/// mid-answer fails that call alone with -32010 (not the 30 s timeout's
/// -32011), garbage never reaches the client, and the peer serves again.
fn upstream_faults_fail_only_their_call(rig: &Rig, garbage: Garbage) {
    let sid = rig.gw.session();
    let r = rig.call(&sid, "1", "faulty__split", "in pieces");
    assert_eq!(text_of(&r), "Split: in pieces", "{r}");

    let r = rig.call(&sid, "2", "faulty__die", "half an answer");
    assert_eq!(r["error"]["code"], -32010, "{r}");
    assert!(
        !r.to_string().contains("Die: half"),
        "a half answer leaked: {r}"
    );
    // The other upstream never noticed.
    let r = rig.call(&sid, "3", "ok__echo", "alive");
    assert_eq!(text_of(&r), "Echo: alive", "{r}");
    // The faulty one serves again (stdio: restarted by the supervisor).
    assert!(
        eventually(20, || text_of(&rig.call(
            &sid,
            "4",
            "faulty__echo",
            "again"
        )) == "Echo: again"),
        "{}",
        rig.gw.log_text()
    );
    let r = rig.call(&sid, "5", "faulty__garbage", "after noise");
    assert!(!r.to_string().contains("nobody-asked"), "{r}");
    match garbage {
        Garbage::Dropped => {
            assert_eq!(text_of(&r), "garbage: after noise", "{r}");
            assert!(
                eventually(5, || rig.gw.log_text().contains("not JSON-RPC")),
                "garbage is logged: {}",
                rig.gw.log_text()
            );
        }
        Garbage::FailsTheCall => {
            assert_eq!(r["error"]["code"], -32012, "{r}");
            let r = rig.call(&sid, "6", "faulty__echo", "after the break");
            assert_eq!(text_of(&r), "Echo: after the break", "{r}");
        }
    }
    rig.verify_audit();
}

#[test]
fn a_stdio_upstream_dying_mid_answer_fails_only_that_call() {
    let rig = Rig::new("fault-stdio", false);
    upstream_faults_fail_only_their_call(&rig, Garbage::Dropped);
    assert!(
        eventually(5, || rig.gw.log_text().contains("stdio server exited")),
        "{}",
        rig.gw.log_text()
    );
}

#[test]
fn an_http_upstream_cut_mid_stream_fails_only_that_call() {
    let rig = Rig::new("fault-http", true);
    upstream_faults_fail_only_their_call(&rig, Garbage::FailsTheCall);
}

/// Sends `head` and then `body` in `piece`-byte writes `pause` apart, then
/// (when `cut` is set) closes the connection before the declared length.
fn send_in_pieces(
    addr: &str,
    head: &str,
    body: &[u8],
    piece: usize,
    pause: Duration,
    cut: Option<usize>,
) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let end = cut.unwrap_or(body.len());
    for chunk in body[..end].chunks(piece) {
        s.write_all(chunk).unwrap();
        std::thread::sleep(pause);
    }
    if cut.is_some() {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf
}

fn head_for(gw: &Gateway, sid: &str, len: usize) -> String {
    format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nMcp-Session-Id: {sid}\r\n\
         Mcp-Protocol-Version: 2025-06-18\r\nContent-Length: {len}\r\n\r\n",
        gw.path, gw.addr
    )
}

#[test]
fn a_client_stopping_mid_body_sends_nothing_upstream_and_slow_pieces_are_served() {
    let rig = Rig::new("fault-client", false);
    let sid = rig.gw.session();
    let body = |marker: &str| {
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
               "params": {"name": "faulty__echo", "arguments": {"message": marker}}})
        .to_string()
    };
    // Complete, but written 16 bytes at a time: served.
    let whole = body("pieces-complete");
    let out = send_in_pieces(
        &rig.gw.addr,
        &head_for(&rig.gw, &sid, whole.len()),
        whole.as_bytes(),
        16,
        Duration::from_millis(5),
        None,
    );
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("Echo: pieces-complete"), "{out}");
    // Cut after most of the body (the marker included): nothing upstream.
    for (i, cut_at) in [10usize, 60, 100].into_iter().enumerate() {
        let marker = format!("cut-short-{i}");
        let b = body(&marker);
        let cut = cut_at.min(b.len() - 1);
        let _ = send_in_pieces(
            &rig.gw.addr,
            &head_for(&rig.gw, &sid, b.len()),
            b.as_bytes(),
            8,
            Duration::from_millis(2),
            Some(cut),
        );
    }
    // The gateway is still serving, and the peer saw none of the cut calls.
    let r = rig.call(&sid, "9", "faulty__echo", "after-cuts");
    assert_eq!(text_of(&r), "Echo: after-cuts", "{r}");
    assert_eq!(
        rig.peer_saw("cut-short"),
        0,
        "a partial request was forwarded"
    );
    assert_eq!(rig.peer_saw("pieces-complete"), 1);
    rig.verify_audit();
}

#[test]
fn a_session_opened_while_a_stdio_upstream_starts_gets_it_once_it_is_up() {
    let dir = tempdir("fault-slow-start");
    let log = dir.join("peer.log");
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[limits]
call_timeout_ms = 500

[[upstream]]
name = "slow"
command = ["sh", "-c", "sleep 2; exec python3 \"$0\" stdio \"$1\"", {PEER:?}, {log:?}]

[[upstream]]
name = "ok"
command = [{BIN:?}, "demo-server"]
"#,
            log = log.display().to_string(),
        ),
    )
    .unwrap();
    let gw = start(&["--config".into(), cfg.display().to_string()], &[]);
    // At once: the slow server is still starting.
    let sid = gw.session();
    let early = gw.call(&sid, "1", "tools/list", "{}");
    let names = |v: &Value| -> Vec<String> {
        v["result"]["tools"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| t["name"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(names(&early).iter().any(|n| n == "ok__echo"), "{early}");
    // Once it is up, the same session lists and reaches it.
    assert!(
        eventually(20, || names(&gw.call(&sid, "2", "tools/list", "{}"))
            .iter()
            .any(|n| n == "slow__echo")),
        "{}",
        gw.log_text()
    );
    let params = json!({"name": "slow__echo", "arguments": {"message": "late"}});
    let r = gw.call(&sid, "3", "tools/call", &params.to_string());
    assert_eq!(text_of(&r), "Echo: late", "{r}");
}
