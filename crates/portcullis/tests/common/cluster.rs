//! Cluster harness for the gateway binary: real `redis-server` processes on
//! free loopback ports (each in its own folder, killed on drop), several
//! `portcullis serve` replicas sharing one of them through `[store] kind =
//! "redis"`, bearer-token identities from one development issuer (a token
//! is valid on every replica), and an in-process admin client (mTLS with
//! each replica's development admin certificate) so admin answers can be
//! timed without a process start in between.
//!
//! Included with `#[path = "common/cluster.rs"] mod cluster;` next to
//! `mod common;` (it uses `common`'s `Gateway`).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code: a panic is a failed assertion

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_identity::dev_issuer::DevIssuer;
use portcullis_identity::tls::UpstreamTls;
use serde_json::{json, Value};

use crate::common::{spawn_gateway, tempdir, Gateway, BIN};

/// The `[auth] resource` every replica shares (tokens are minted for it).
pub const RESOURCE: &str = "http://cluster.test/mcp";
/// The development issuer's `iss`.
pub const ISSUER: &str = "urn:portcullis:dev";

// ------------------------------------------------------------- redis --

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One redis-server, SIGKILLed on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    /// Append-only file fsynced on every write: a SIGKILL loses nothing.
    persistent: bool,
}

impl Redis {
    /// A server without persistence: killed and restarted, it is empty.
    pub fn start() -> Redis {
        Self::start_with(false)
    }

    /// A server that keeps every write (AOF, `appendfsync always`).
    pub fn start_persistent() -> Redis {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> Redis {
        assert!(
            Command::new("redis-server")
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "redis-server is not on PATH: run scripts/install-test-deps.sh (Debian package redis-server)"
        );
        let mut r = Redis {
            child: None,
            port: 0,
            dir: tempdir("redis"),
            persistent,
        };
        // Another process may take the port between probe and bind: retry.
        for _ in 0..5 {
            r.port = free_port();
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server did not start; see {}", r.log().display());
    }

    fn log(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.log())
            .args(["--daemonize", "no", "--protected-mode", "no", "--save", ""]);
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if self.ping() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Whether it answers `PING` now.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no goodbye to the clients, nothing saved beyond the AOF.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and folder (empty unless
    /// persistent).
    pub fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// Runs `redis-cli ARGS` against it; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ----------------------------------------------------------- replicas --

/// Folder, issuer and tokens shared by the replicas of one test.
pub struct Cluster {
    pub dir: PathBuf,
    /// The Redis URL every replica uses.
    pub url: String,
    /// The key prefix every replica uses.
    pub prefix: String,
    issuer: DevIssuer,
    /// Extra TOML appended to every replica's config.
    pub extra: String,
    /// Extra `[store]` keys (TOML lines: `on_unreachable`, `rate_fallback`),
    /// for the replicas started from now on.
    pub store_extra: String,
    /// `PORTCULLIS_DEMO_RUGPULL` for the demo upstream, if set.
    pub rug: Option<PathBuf>,
    n: usize,
}

/// One running replica: the gateway, its admin `host:port` and folder.
pub struct Replica {
    pub gw: Gateway,
    pub admin: String,
    pub dir: PathBuf,
    pub name: String,
}

impl Cluster {
    pub fn new(tag: &str, redis: &Redis, extra: &str) -> Cluster {
        let dir = tempdir(tag);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let issuer = rt
            .block_on(DevIssuer::load_or_create(&dir.join("issuer")))
            .unwrap();
        Cluster {
            url: redis.url(),
            prefix: format!("{tag}:"),
            issuer,
            extra: extra.to_owned(),
            store_extra: String::new(),
            rug: None,
            dir,
            n: 0,
        }
    }

    /// A bearer token for user `sub` (identity `urn:portcullis:dev#SUB`).
    pub fn token(&self, sub: &str) -> String {
        self.issuer
            .mint(sub, RESOURCE, &["mcp"], Duration::from_secs(3600))
    }

    /// The upstream log every replica's demo server appends to.
    pub fn upstream_log(&self) -> PathBuf {
        self.dir.join("upstream.log")
    }

    /// Lines the upstreams received that contain `marker`.
    pub fn upstream_saw(&self, marker: &str) -> usize {
        std::fs::read_to_string(self.upstream_log())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(marker))
            .count()
    }

    /// The config of replica `name` (its own state folder and audit log).
    pub fn config(&self, name: &str) -> String {
        let rdir = self.dir.join(name);
        let mut env = format!(
            "PORTCULLIS_DEMO_LOG = {:?}",
            self.upstream_log().display().to_string()
        );
        if let Some(rug) = &self.rug {
            env.push_str(&format!(
                ", PORTCULLIS_DEMO_RUGPULL = {:?}",
                rug.display().to_string()
            ));
        }
        format!(
            r#"
state_dir = {state:?}

[audit]
path = {audit:?}

[auth]
resource = {RESOURCE:?}

[auth.oauth]
issuer = {ISSUER:?}
jwks = {jwks:?}

[store]
kind = "redis"
{store_extra}

[store.redis]
url = {url:?}
prefix = {prefix:?}
connect_timeout_ms = 500
op_timeout_ms = 300
backoff_min_ms = 20
backoff_max_ms = 200

[[upstream]]
name = "demo"
command = [{BIN:?}, "demo-server"]
env = {{ {env} }}

{extra}
"#,
            state = rdir.join("state").display().to_string(),
            audit = rdir.join("audit.jsonl").display().to_string(),
            jwks = self.issuer.jwks_path().display().to_string(),
            url = self.url,
            prefix = self.prefix,
            store_extra = self.store_extra,
            extra = self.extra,
        )
    }

    /// Starts the next replica (`r0`, `r1`, …) with an admin listener.
    pub fn replica(&mut self) -> Replica {
        let name = format!("r{}", self.n);
        self.n += 1;
        let rdir = self.dir.join(&name);
        std::fs::create_dir_all(&rdir).unwrap();
        let cfg = rdir.join("gw.toml");
        std::fs::write(&cfg, self.config(&name)).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&cfg)
        .env_remove("PORTCULLIS_STATE_DIR");
        let gw = spawn_gateway(cmd);
        let admin = crate::common::admin_addr(&gw);
        Replica {
            gw,
            admin,
            dir: rdir,
            name,
        }
    }
}

impl Replica {
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The replica's audit records.
    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// An admin client for this replica.
    pub fn admin(&self) -> Admin {
        Admin::new(&self.admin, &self.state())
    }

    /// `portcullis ARGS` against this replica's admin listener.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        crate::common::cli(args, &self.admin, &self.state())
    }
}

// -------------------------------------------------------------- admin --

/// A blocking HTTPS client for one admin listener (its development admin
/// client certificate), one connection per request.
pub struct Admin {
    addr: String,
    tls: Arc<rustls::ClientConfig>,
}

impl Admin {
    pub fn new(addr: &str, state: &Path) -> Admin {
        let tls = portcullis_identity::tls::client_config(&UpstreamTls {
            ca: vec![state.join("ca").join("ca.pem")],
            cert: Some(state.join("admin-client").join("cert.pem")),
            key: Some(state.join("admin-client").join("key.pem")),
            spiffe_id: None,
        })
        .unwrap();
        Admin {
            addr: addr.to_owned(),
            tls,
        }
    }

    /// One request: (status, JSON answer or `Null`, raw body).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value, String) {
        let host = self.addr.rsplit_once(':').unwrap().0.to_owned();
        let name = rustls::pki_types::ServerName::try_from(host).unwrap();
        let conn = rustls::ClientConnection::new(self.tls.clone(), name).unwrap();
        let tcp = TcpStream::connect(&self.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let data = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\nContent-Length: {}\r\n",
            self.addr,
            data.len()
        );
        if body.is_some() {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str("\r\n");
        req.push_str(&data);
        s.write_all(req.as_bytes()).unwrap();
        s.flush().unwrap();
        let mut buf = Vec::new();
        // A peer that closes without close_notify ends in an error after
        // the whole answer was read; what was read counts.
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => break,
            }
            if complete(&buf) {
                break;
            }
        }
        let (status, body) = split_response(&buf);
        let v = serde_json::from_str(&body).unwrap_or(Value::Null);
        (status, v, body)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let (s, v, _) = self.request("GET", path, None);
        (s, v)
    }

    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (s, v, _) = self.request("POST", path, Some(&body));
        (s, v)
    }

    /// Quarantines user `urn:portcullis:dev#SUB` (deny-all).
    pub fn quarantine_user(&self, sub: &str) -> (u16, Value) {
        self.post(
            "/admin/quarantines",
            json!({"kind": "user", "value": format!("{ISSUER}#{sub}"), "reason": "cluster test"}),
        )
    }

    /// Releases user `urn:portcullis:dev#SUB`.
    pub fn release_user(&self, sub: &str) -> (u16, Value) {
        self.post(
            "/admin/quarantines/remove",
            json!({"kind": "user", "value": format!("{ISSUER}#{sub}"), "reason": "cluster test"}),
        )
    }
}

/// Whether `buf` holds a whole HTTP response (headers and, by
/// Content-Length or the chunked terminator, the body).
fn complete(buf: &[u8]) -> bool {
    let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
    let body = &buf[split + 4..];
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

/// (status, body text) of a raw HTTP/1.1 response.
fn split_response(buf: &[u8]) -> (u16, String) {
    let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, String::new());
    };
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let raw = &buf[split + 4..];
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut b = raw;
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
    } else {
        raw.to_vec()
    };
    (status, String::from_utf8_lossy(&body).to_string())
}

// ---------------------------------------------------------- MCP calls --

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Opens a 2025-era session with a bearer token: the session id, or the
/// refusal (of `initialize` or of `notifications/initialized`).
pub fn session(gw: &Gateway, token: &str) -> Result<String, crate::common::Resp> {
    let auth = bearer(token);
    let r = gw.post(
        &[("authorization", &auth)],
        r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"cluster","version":"1"}}}"#,
    );
    if r.status != 200 {
        return Err(r);
    }
    let sid = r.header("mcp-session-id").unwrap().to_owned();
    let n = gw.post(
        &[("authorization", &auth), ("mcp-session-id", &sid)],
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    // Refused here too once a revocation lands between the two requests.
    if n.status != 202 {
        return Err(n);
    }
    Ok(sid)
}

/// A request in a 2025-era session: the raw response.
pub fn request(
    gw: &Gateway,
    token: &str,
    sid: &str,
    id: u64,
    method: &str,
    params: Value,
) -> crate::common::Resp {
    let auth = bearer(token);
    let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    gw.post(
        &[
            ("authorization", &auth),
            ("mcp-session-id", sid),
            ("mcp-protocol-version", "2025-06-18"),
        ],
        &body.to_string(),
    )
}

/// `tools/call` in a 2025-era session: the final message.
pub fn call(gw: &Gateway, token: &str, sid: &str, id: u64, tool: &str, args: Value) -> Value {
    request(
        gw,
        token,
        sid,
        id,
        "tools/call",
        json!({"name": tool, "arguments": args}),
    )
    .json()
}

/// `tools/list` in a 2025-era session: the tool names, or the answer when
/// it is not a list.
pub fn tool_names(gw: &Gateway, token: &str, sid: &str) -> Result<Vec<String>, Value> {
    let v = request(gw, token, sid, 1, "tools/list", json!({})).json();
    match v["result"]["tools"].as_array() {
        Some(a) => Ok(a
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect()),
        None => Err(v),
    }
}

/// The 2026-07-28 `_meta` every stateless request carries.
fn meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}
    })
}

/// A 2026-07-28 (stateless) request: the raw response.
pub fn stateless(
    gw: &Gateway,
    token: &str,
    id: u64,
    method: &str,
    mut params: Value,
) -> crate::common::Resp {
    let auth = bearer(token);
    params["_meta"] = meta();
    let name = params["name"].as_str().map(str::to_owned);
    let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let mut h: Vec<(&str, &str)> = vec![
        ("authorization", &auth),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", method),
    ];
    if let Some(n) = &name {
        h.push(("mcp-name", n));
    }
    gw.post(&h, &body.to_string())
}

/// A 2026-07-28 `tools/call`: the final message.
pub fn stateless_call(gw: &Gateway, token: &str, id: u64, tool: &str, args: Value) -> Value {
    stateless(
        gw,
        token,
        id,
        "tools/call",
        json!({"name": tool, "arguments": args}),
    )
    .json()
}

/// The JSON-RPC error code of an answer (0 when none).
pub fn code(v: &Value) -> i64 {
    v["error"]["code"].as_i64().unwrap_or(0)
}

/// Median and maximum of samples (sorted in place).
pub fn median_max(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    };
    (med, v[n - 1])
}
