//! Test harness: runs the real `portcullis` binary and talks raw HTTP/1.1
//! to it, so malformed requests can be sent exactly as written.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code: a panic is a failed assertion

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A running gateway, killed on drop.
pub struct Gateway {
    pub child: Child,
    pub addr: String,
    pub path: String,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn demo_cmd() -> String {
    format!("{BIN} demo-server")
}

pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "portcullis-test-{tag}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Starts `portcullis serve --listen 127.0.0.1:0 --allow-anonymous-loopback
/// ARGS…` and waits for the ready line.
pub fn start(args: &[String], env: &[(&str, String)]) -> Gateway {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--allow-anonymous-loopback")
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn_gateway(cmd)
}

/// Runs a prepared `portcullis serve` command and waits for its ready line.
pub fn spawn_gateway(mut cmd: Command) -> Gateway {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn portcullis");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                    sent = true;
                }
            }
            log2.lock().unwrap().push(line);
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("gateway ready line");
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap();
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    Gateway {
        child,
        addr: addr.to_owned(),
        path: path.to_owned(),
        log,
    }
}

/// A raw HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The JSON-RPC messages in the body (JSON, or each SSE data event).
    pub fn messages(&self) -> Vec<Value> {
        let text = String::from_utf8_lossy(&self.body);
        if self
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream"))
        {
            text.split("\n\n")
                .filter_map(|ev| {
                    let data: Vec<&str> = ev
                        .lines()
                        .filter_map(|l| l.strip_prefix("data: "))
                        .collect();
                    let d = data.join("\n");
                    if d.trim().is_empty() {
                        None
                    } else {
                        serde_json::from_str(&d).ok()
                    }
                })
                .collect()
        } else if text.trim().is_empty() {
            vec![]
        } else {
            vec![serde_json::from_str(&text).unwrap_or(Value::Null)]
        }
    }
    pub fn json(&self) -> Value {
        self.messages().pop().unwrap_or(Value::Null)
    }
}

/// Sends one request with `Connection: close` and reads the whole response.
pub fn raw(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    try_raw(addr, method, path, headers, &[body], Duration::ZERO).unwrap()
}

/// Like [`raw`], with the body sent in `pieces` and `pause` between them;
/// an error means the gateway broke the connection instead of answering.
pub fn try_raw(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    pieces: &[&[u8]],
    pause: Duration,
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {len}\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(pause);
        }
        s.write_all(piece)?;
    }
    let mut buf = Vec::new();
    if let Err(e) = s.read_to_end(&mut buf) {
        // A reset after a complete head still leaves an answer to judge.
        if !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Err(e);
        }
    }
    Ok(parse_response(&buf))
}

fn parse_response(buf: &[u8]) -> Resp {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    let raw_body = &buf[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(raw_body)
    } else {
        raw_body.to_vec()
    };
    Resp {
        status,
        headers,
        body,
    }
}

/// The body of a chunked HTTP/1.1 response.
pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&b[start..(start + size).min(b.len())]);
        b = &b[(start + size + 2).min(b.len())..];
    }
    out
}

pub const ACCEPT: (&str, &str) = ("accept", "application/json, text/event-stream");
pub const JSON: (&str, &str) = ("content-type", "application/json");

impl Gateway {
    pub fn post(&self, headers: &[(&str, &str)], body: &str) -> Resp {
        let mut h = vec![ACCEPT, JSON];
        h.extend_from_slice(headers);
        raw(&self.addr, "POST", &self.path, &h, body.as_bytes())
    }

    /// Opens a handshake-era session; returns its id.
    pub fn session(&self) -> String {
        let r = self.post(&[], r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#);
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        let sid = r.header("mcp-session-id").expect("session id").to_owned();
        let n = self.post(
            &[("mcp-session-id", &sid)],
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        );
        assert_eq!(n.status, 202);
        sid
    }

    /// Calls a method in a session and returns the final JSON-RPC message.
    pub fn call(&self, sid: &str, id: &str, method: &str, params: &str) -> Value {
        let body =
            format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#);
        self.post(
            &[
                ("mcp-session-id", sid),
                ("mcp-protocol-version", "2025-06-18"),
            ],
            &body,
        )
        .json()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

/// Waits until `f` is true or the deadline passes.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The admin listener's `host:port`, from the start-up line.
pub fn admin_addr(gw: &Gateway) -> String {
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
    assert!(
        line.contains("(mTLS; admin client certificate in "),
        "{line}"
    );
    let rest = line.split("https://").nth(1).unwrap();
    rest.split_whitespace().next().unwrap().to_owned()
}

/// Runs `portcullis ARGS` with the state folder given by flag: (exit code,
/// stdout, stderr).
pub fn cli(args: &[&str], admin: &str, state: &Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--admin")
        .arg(format!("https://{admin}"))
        .arg("--state-dir")
        .arg(state)
        .env_remove("PORTCULLIS_STATE_DIR")
        .env_remove("PORTCULLIS_ADMIN_URL")
        .env_remove("PORTCULLIS_ADMIN_CERT")
        .env_remove("PORTCULLIS_ADMIN_KEY")
        .env_remove("PORTCULLIS_ADMIN_CA")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The `jti` claim of a compact JWT.
pub fn jti(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["jti"].as_str().unwrap().to_owned()
}

/// The audit log's files in `dir`: the rotated ones
/// (`audit.jsonl.<first seq>`) in order, then the live `audit.jsonl`.
pub fn audit_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit.jsonl"))
        })
        .collect();
    files.sort_by_key(|p| (p.extension().is_some_and(|e| e == "jsonl"), p.clone()));
    files
}

/// `portcullis audit verify FILE` must pass (its output is the failure message).
pub fn assert_audit_verifies(file: &Path) {
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
