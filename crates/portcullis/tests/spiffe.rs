//! `[spiffe]`: the gateway's own identity from the SPIFFE Workload API, end
//! to end through the real binary. A stand-in SPIRE agent (the gRPC
//! `SpiffeWorkloadAPI` on a unix socket, shared with portcullis-identity's
//! tests; no SPIRE agent can be installed here) hands out SVIDs from test
//! CAs; agents connect with rustls and look at what the gateway serves.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code: a panic is a failed assertion

mod common;
#[path = "../../portcullis-identity/tests/spire_stand_in/mod.rs"]
mod spire_stand_in;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, spawn_gateway, start, tempdir, Gateway, BIN};
use portcullis_identity::ca::{IssuedPem, LocalCa};
use portcullis_identity::spiffe::fingerprint_sha256;
use portcullis_identity::tls::PeerCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use spire_stand_in::{issue, response, Agent};

const GATEWAY_ID: &str = "spiffe://example.org/portcullis/gateway";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A fresh socket path (short: unix socket paths are limited to ~100 bytes).
fn socket(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "pc-spiffe-{}-{}-{tag}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn spiffe_section(sock: &Path) -> String {
    format!(
        "[spiffe]\nworkload_api = {}\ntrust_domain = \"example.org\"\nfirst_svid_timeout_ms = 15000\nreconnect_min_ms = 50\nreconnect_max_ms = 500\n",
        toml_str(&format!("unix://{}", sock.display()))
    )
}

/// `portcullis serve --config FILE` with this config (authentication as
/// the config says; no `--allow-anonymous-loopback`).
fn serve(config: &str, dir: &Path) -> Gateway {
    let p = dir.join("portcullis.toml");
    std::fs::write(&p, config).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--config")
        .arg(&p)
        .env_remove("SPIFFE_ENDPOINT_SOCKET");
    spawn_gateway(cmd)
}

/// A TLS client trusting `roots`, presenting `cert` if given. Resumption is
/// left on (the rustls default), so a gateway that resumed sessions would
/// show the SVID of an earlier handshake.
fn client(roots: &[&LocalCa], cert: Option<&IssuedPem>) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for ca in roots {
        store
            .add(CertificateDer::from(ca.cert_der().to_vec()))
            .unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(portcullis_identity::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store);
    let mut cfg = match cert {
        Some(c) => b
            .with_client_auth_cert(
                vec![CertificateDer::from(c.cert_der.clone())],
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// What one HTTPS exchange showed: the server's leaf and the answer.
#[derive(Debug)]
struct Exchange {
    leaf: Vec<u8>,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Exchange {
    fn fingerprint(&self) -> String {
        fingerprint_sha256(&self.leaf)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The last JSON-RPC message of the body (JSON or SSE).
    fn json(&self) -> Value {
        let text = String::from_utf8_lossy(&self.body);
        let sse = self
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream"));
        if sse {
            text.lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str(d).ok())
                .next_back()
                .unwrap_or(Value::Null)
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        }
    }
}

/// One request on a new TLS connection (server name `localhost`, so the
/// served certificate is checked as an ordinary client would). `Err` with
/// the TLS or I/O failure when the handshake or the answer fails.
fn https(
    addr: &str,
    cfg: &Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Exchange, String> {
    let mut sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or("no server certificate")?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match tls.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // Closed without close_notify after a full answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {:?}", String::from_utf8_lossy(&buf)))?;
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    let mut body = buf[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = common::dechunk(&body);
    }
    Ok(Exchange {
        leaf,
        status,
        headers,
        body,
    })
}

const MCP: [(&str, &str); 2] = [common::ACCEPT, common::JSON];

/// initialize, initialized, then `tools/call demo__echo` — each request on
/// a new connection. The echoed text, or the first failure.
fn echo_over_mtls(
    gw: &Gateway,
    cfg: &Arc<rustls::ClientConfig>,
    msg: &str,
) -> Result<String, String> {
    let init = https(
        &gw.addr,
        cfg,
        "POST",
        &gw.path,
        &MCP,
        r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
    )?;
    if init.status != 200 {
        return Err(format!(
            "initialize: {} {}",
            init.status,
            String::from_utf8_lossy(&init.body)
        ));
    }
    let sid = init
        .header("mcp-session-id")
        .ok_or("no session id")?
        .to_owned();
    let mut h = MCP.to_vec();
    h.push(("mcp-session-id", &sid));
    h.push(("mcp-protocol-version", "2025-06-18"));
    let n = https(
        &gw.addr,
        cfg,
        "POST",
        &gw.path,
        &h,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    )?;
    if n.status != 202 {
        return Err(format!("initialized: {}", n.status));
    }
    let call = https(
        &gw.addr,
        cfg,
        "POST",
        &gw.path,
        &h,
        &format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"demo__echo","arguments":{{"message":{}}}}}}}"#,
            toml_str(msg)
        ),
    )?;
    let v = call.json();
    v["result"]["content"][0]["text"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("tools/call: {} {v}", call.status))
}

/// The admin listener's `host:port` from its start-up line.
fn admin_addr(gw: &Gateway) -> String {
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
        "no admin line: {}",
        gw.log_text()
    );
    assert!(line.contains("from the SPIFFE Workload API"), "{line}");
    let rest = line.split("https://").nth(1).unwrap();
    rest.split_whitespace().next().unwrap().to_owned()
}

fn demo_upstream() -> String {
    format!(
        "[[upstream]]\nname = \"demo\"\ncommand = [{}, \"demo-server\"]\n",
        toml_str(BIN)
    )
}

#[test]
fn listeners_serve_the_svid_follow_rotation_and_verify_clients_by_bundle() {
    let rt = runtime();
    let _rt = rt.enter();
    let ca = LocalCa::generate("example.org test CA").unwrap();
    let other_ca = LocalCa::generate("another CA").unwrap();
    let svid1 = issue(&ca, GATEWAY_ID, "localhost");
    let sock = socket("listen");
    let agent = Agent::start(&sock, Some(response(&svid1, &[&ca])));

    let dir = tempdir("spiffe-listen");
    let mut gw = serve(
        &format!(
            "state_dir = {}\n{}\n[listen]\naddr = \"127.0.0.1:0\"\n[listen.tls]\nmode = \"required\"\ntrust_domains = [\"example.org\"]\n[auth]\nrequire = \"certificate\"\n[admin]\naddr = \"127.0.0.1:0\"\nidentities = [\"spiffe://example.org/ops/*\"]\n{}",
            toml_str(&dir.join("state").display().to_string()),
            spiffe_section(&sock),
            demo_upstream(),
        ),
        &dir,
    );
    assert!(
        gw.log_text().contains(GATEWAY_ID) && gw.log_text().contains(&svid1.info.fingerprint),
        "start-up names the SVID: {}",
        gw.log_text()
    );

    // The served certificate is the SVID: fingerprint and SPIFFE ID.
    let agent_cert = issue(&ca, "spiffe://example.org/agent/a", "");
    let good = client(&[&ca], Some(&agent_cert));
    let first = https(&gw.addr, &good, "GET", "/healthz", &[], "").unwrap();
    assert_eq!(first.fingerprint(), svid1.info.fingerprint);
    assert_eq!(
        PeerCert::from_der(&first.leaf)
            .unwrap()
            .spiffe_id
            .map(|i| i.to_string())
            .as_deref(),
        Some(GATEWAY_ID)
    );

    // An agent whose certificate chains to the bundle calls a tool.
    assert_eq!(
        echo_over_mtls(&gw, &good, "via the SVID").unwrap(),
        "Echo: via the SVID"
    );

    // A certificate from another CA (same trust domain claimed) is refused,
    // and so is no certificate at all.
    let stranger = issue(&other_ca, "spiffe://example.org/agent/b", "");
    let e = echo_over_mtls(&gw, &client(&[&ca], Some(&stranger)), "nope").unwrap_err();
    assert!(
        e.contains("alert") || e.contains("reset") || e.contains("closed"),
        "refused at the TLS level: {e}"
    );
    assert!(echo_over_mtls(&gw, &client(&[&ca], None), "nope").is_err());

    // Admin listener: the same SVID; bundle identities in `identities` get
    // in, other identities of the bundle get 403.
    let admin = admin_addr(&gw);
    let ops = issue(&ca, "spiffe://example.org/ops/alice", "");
    let r = https(
        &admin,
        &client(&[&ca], Some(&ops)),
        "GET",
        "/admin/sessions",
        &[],
        "",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.fingerprint(), svid1.info.fingerprint);
    let r = https(&admin, &good, "GET", "/admin/sessions", &[], "").unwrap();
    assert_eq!(r.status, 403);
    let outsider = issue(&other_ca, "spiffe://example.org/ops/mallory", "");
    assert!(https(
        &admin,
        &client(&[&ca], Some(&outsider)),
        "GET",
        "/admin/sessions",
        &[],
        ""
    )
    .is_err());

    // Rotation: the agent pushes a new SVID (and adds a second CA to the
    // bundle); new connections see both without a restart.
    let svid2 = issue(&ca, GATEWAY_ID, "localhost");
    assert_ne!(svid1.info.fingerprint, svid2.info.fingerprint);
    agent.push(response(&svid2, &[&ca, &other_ca]));
    let mut seen = String::new();
    assert!(
        eventually(15, || {
            seen = https(&gw.addr, &good, "GET", "/healthz", &[], "")
                .map(|x| x.fingerprint())
                .unwrap_or_else(|e| e);
            seen == svid2.info.fingerprint
        }),
        "the listener still serves {seen}, not the rotated SVID"
    );
    let r = https(
        &admin,
        &client(&[&ca], Some(&ops)),
        "GET",
        "/healthz",
        &[],
        "",
    )
    .unwrap();
    assert_eq!(
        r.fingerprint(),
        svid2.info.fingerprint,
        "admin listener rotated too"
    );
    assert_eq!(
        echo_over_mtls(&gw, &good, "after rotation").unwrap(),
        "Echo: after rotation"
    );
    // The widened bundle admits the second CA's agents now.
    assert_eq!(
        echo_over_mtls(&gw, &client(&[&ca], Some(&stranger)), "new bundle").unwrap(),
        "Echo: new bundle"
    );
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "the gateway kept running (no restart)"
    );
    drop(gw);
    drop(agent);
}

/// A running `portcullis demo-server --http` over TLS, killed on drop.
struct Demo {
    child: std::process::Child,
    url: String,
    log: PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn https_demo(dir: &Path, cert: &IssuedPem, client_ca: &LocalCa) -> Demo {
    std::fs::write(dir.join("up-cert.pem"), &cert.cert_pem).unwrap();
    std::fs::write(dir.join("up-key.pem"), &cert.key_pem).unwrap();
    std::fs::write(dir.join("up-client-ca.pem"), client_ca.cert_pem()).unwrap();
    let log = dir.join("demo.log");
    let mut child = Command::new(BIN)
        .args(["demo-server", "--http", "127.0.0.1:0", "--tls-cert"])
        .arg(dir.join("up-cert.pem"))
        .arg("--tls-key")
        .arg(dir.join("up-key.pem"))
        .arg("--client-ca")
        .arg(dir.join("up-client-ca.pem"))
        .env("PORTCULLIS_DEMO_LOG", &log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix("listening on ") {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("demo ready line");
    assert!(url.starts_with("https://"), "{url}");
    Demo { child, url, log }
}

#[test]
fn upstream_mtls_takes_the_svid_and_the_bundle() {
    let rt = runtime();
    let _rt = rt.enter();
    let ca = LocalCa::generate("example.org test CA").unwrap();
    let svid = issue(&ca, GATEWAY_ID, "");
    let sock = socket("upstream");
    let _agent = Agent::start(&sock, Some(response(&svid, &[&ca])));
    let dir = tempdir("spiffe-upstream");
    // The upstream requires a client certificate from the trust domain's CA
    // and shows the SPIFFE ID the gateway expects of it.
    let up = https_demo(
        &dir,
        &issue(&ca, "spiffe://example.org/mcp/tickets", "localhost"),
        &ca,
    );
    let config = format!(
        "{}\n[[upstream]]\nname = \"tickets\"\nurl = {url}\ntls = {{ spiffe_id = \"spiffe://example.org/mcp/tickets\" }}\n\n[[upstream]]\nname = \"impostor\"\nurl = {url}\ntls = {{ spiffe_id = \"spiffe://example.org/mcp/other\" }}\n",
        spiffe_section(&sock),
        url = toml_str(&up.url),
    );
    let p = dir.join("portcullis.toml");
    std::fs::write(&p, config).unwrap();
    let gw = start(&["--config".into(), p.display().to_string()], &[]);
    let sid = gw.session();
    let r = gw.call(
        &sid,
        "1",
        "tools/call",
        r#"{"name":"tickets__echo","arguments":{"message":"svid upstream"}}"#,
    );
    assert_eq!(
        r["result"]["content"][0]["text"],
        "Echo: svid upstream",
        "{r}\n{}",
        gw.log_text()
    );
    let seen = std::fs::read_to_string(&up.log).unwrap_or_default();
    assert!(
        seen.contains("svid upstream"),
        "the upstream got the call: {seen}"
    );
    // The same server under an ID it does not have: refused, never called.
    let r = gw.call(
        &sid,
        "2",
        "tools/call",
        r#"{"name":"impostor__echo","arguments":{"message":"must not arrive"}}"#,
    );
    assert_eq!(r["error"]["code"], -32010, "{r}");
    let seen = std::fs::read_to_string(&up.log).unwrap_or_default();
    assert!(!seen.contains("must not arrive"), "{seen}");
}

/// Runs `serve` until it exits (at most 60 s): (exit code, stderr).
fn serve_to_exit(config: &str, dir: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let p = dir.join("portcullis.toml");
    std::fs::write(&p, config).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--config")
        .arg(&p)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let text = Arc::new(Mutex::new(String::new()));
    let t2 = text.clone();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        *t2.lock().unwrap() = s;
    });
    let end = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("serve did not exit without its SVID");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    reader.join().unwrap();
    let s = text.lock().unwrap().clone();
    (status.code(), s)
}

#[test]
fn serve_refuses_to_start_without_an_svid_and_names_the_socket() {
    let dir = tempdir("spiffe-missing");
    let sock = dir.join("no-agent-here.sock");
    let tls = "[listen]\naddr = \"127.0.0.1:0\"\n[listen.tls]\nmode = \"required\"\n";
    let (code, err) = serve_to_exit(
        &format!(
            "[spiffe]\nworkload_api = {}\nfirst_svid_timeout_ms = 500\n{tls}",
            toml_str(&format!("unix://{}", sock.display()))
        ),
        &dir,
        &[],
    );
    assert_ne!(code, Some(0), "{err}");
    assert!(code.is_some(), "exited by itself, not by a signal: {err}");
    assert!(err.contains(&sock.display().to_string()), "{err}");
    assert!(err.contains("spiffe.workload_api"), "{err}");
    assert!(!err.contains("listening on"), "{err}");

    // The key left out: $SPIFFE_ENDPOINT_SOCKET names the socket …
    let env_sock = dir.join("from-env.sock");
    let env_val = format!("unix://{}", env_sock.display());
    let (code, err) = serve_to_exit(
        &format!("[spiffe]\nfirst_svid_timeout_ms = 500\n{tls}"),
        &dir,
        &[("SPIFFE_ENDPOINT_SOCKET", &env_val)],
    );
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains(&env_sock.display().to_string()), "{err}");
    // … and with neither, the error says what to set.
    let (code, err) = serve_to_exit(&format!("[spiffe]\n{tls}"), &dir, &[]);
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("spiffe.workload_api") && err.contains("SPIFFE_ENDPOINT_SOCKET"),
        "{err}"
    );
}

#[test]
fn spiffe_endpoint_socket_is_used_when_workload_api_is_absent() {
    let rt = runtime();
    let _rt = rt.enter();
    let ca = LocalCa::generate("example.org test CA").unwrap();
    let svid = issue(&ca, GATEWAY_ID, "localhost");
    let sock = socket("env");
    let _agent = Agent::start(&sock, Some(response(&svid, &[&ca])));
    let dir = tempdir("spiffe-env");
    let p = dir.join("portcullis.toml");
    std::fs::write(
        &p,
        format!(
            "[spiffe]\ntrust_domain = \"example.org\"\n[listen]\naddr = \"127.0.0.1:0\"\n[listen.tls]\nmode = \"required\"\n[auth]\nrequire = \"certificate\"\n{}",
            demo_upstream()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").arg("--config").arg(&p).env(
        "SPIFFE_ENDPOINT_SOCKET",
        format!("unix://{}", sock.display()),
    );
    let gw = spawn_gateway(cmd);
    let agent_cert = issue(&ca, "spiffe://example.org/agent/env", "");
    let r = https(
        &gw.addr,
        &client(&[&ca], Some(&agent_cert)),
        "GET",
        "/healthz",
        &[],
        "",
    )
    .unwrap();
    assert_eq!(r.fingerprint(), svid.info.fingerprint);
}
