//! The gateway's identity towards upstreams: upstream mTLS with an expected
//! SPIFFE ID, and the gateway's own OAuth client-credentials token. Every
//! case runs the real binaries (gateway and demo server) with certificates
//! from the `portcullis ca` / `cert issue` CLI.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code: a panic is a failed assertion

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, start, tempdir, Gateway, BIN};
use serde_json::Value;

const TD: &str = "spiffe://upstream-test.local";

/// Runs a `portcullis` CLI command and insists it succeeds.
fn cli(args: &[&str]) {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "portcullis {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and certificates: `upstream` (the right ID), `evil` (same CA, wrong
/// ID) and `gateway` (the gateway's client certificate).
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = tempdir(tag);
        let ca = dir.join("ca");
        cli(&["ca", "init", "--dir", ca.to_str().unwrap()]);
        for (name, path) in [
            ("upstream", "/upstream/files"),
            ("evil", "/upstream/impostor"),
            ("gateway", "/gateway"),
        ] {
            cli(&[
                "cert",
                "issue",
                "--ca",
                ca.to_str().unwrap(),
                "--spiffe-id",
                &format!("{TD}{path}"),
                "--ip",
                "127.0.0.1",
                "--dns",
                "localhost",
                "--out",
                dir.join(name).to_str().unwrap(),
            ]);
        }
        Pki { dir }
    }

    fn file(&self, who: &str, f: &str) -> String {
        self.dir.join(who).join(f).display().to_string()
    }

    fn ca(&self) -> String {
        self.dir.join("ca").join("ca.pem").display().to_string()
    }
}

/// A running `portcullis demo-server --http`, killed on drop.
struct Demo {
    child: Child,
    url: String,
    log: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn start(args: &[String], log: &Path) -> Demo {
        let mut child = Command::new(BIN)
            .args(["demo-server", "--http", "127.0.0.1:0"])
            .args(args)
            .env("PORTCULLIS_DEMO_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let lines2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
                lines2.lock().unwrap().push(line);
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("demo server ready line");
        Demo {
            child,
            url,
            log: log.to_owned(),
            stderr: lines,
        }
    }

    /// Every request the demo server received: `{method, authorization, message}`.
    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

fn https_demo(pki: &Pki, who: &str, client_ca: bool, log: &Path) -> Demo {
    let mut args = vec![
        "--tls-cert".to_string(),
        pki.file(who, "cert.pem"),
        "--tls-key".to_string(),
        pki.file(who, "key.pem"),
    ];
    if client_ca {
        args.push("--client-ca".into());
        args.push(pki.ca());
    }
    Demo::start(&args, log)
}

/// A gateway with this config (anonymous loopback clients allowed).
fn gateway_with(config: &str, dir: &Path) -> Gateway {
    let p = dir.join("portcullis.toml");
    std::fs::write(&p, config).unwrap();
    start(&["--config".to_string(), p.display().to_string()], &[])
}

/// A gateway with this config and authentication required (no
/// `--allow-anonymous-loopback`).
fn gateway_authenticating(config: &str, dir: &Path) -> Gateway {
    let p = dir.join("portcullis.toml");
    std::fs::write(&p, config).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&p)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix("listening on ") {
                let _ = tx.send(url.trim().to_owned());
            }
            log2.lock().unwrap().push(line);
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("gateway ready line");
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    Gateway {
        child,
        addr: addr.to_owned(),
        path: path.to_owned(),
        log,
    }
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// An upstream section with TLS settings (`client_cert`: present the
/// gateway's certificate).
fn tls_upstream(pki: &Pki, url: &str, expect: &str, client_cert: bool) -> String {
    let mut t = format!(
        "[[upstream]]\nname = \"files\"\nurl = {}\n[upstream.tls]\nca = [{}]\nspiffe_id = {}\n",
        toml_str(url),
        toml_str(&pki.ca()),
        toml_str(&format!("{TD}{expect}")),
    );
    if client_cert {
        t.push_str(&format!(
            "cert = {}\nkey = {}\n",
            toml_str(&pki.file("gateway", "cert.pem")),
            toml_str(&pki.file("gateway", "key.pem"))
        ));
    }
    t
}

const ECHO: &str = r#"{"name":"files__echo","arguments":{"message":"over mtls"}}"#;

fn text_of(v: &Value) -> String {
    v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn https_upstream_with_the_right_spiffe_id_and_client_cert_works() {
    let pki = Pki::new("up-ok");
    let up = https_demo(&pki, "upstream", true, &pki.dir.join("demo.log"));
    assert!(up.url.starts_with("https://"), "{}", up.url);
    let gw = gateway_with(
        &tls_upstream(&pki, &up.url, "/upstream/files", true),
        &pki.dir,
    );
    let sid = gw.session();
    let tools = gw.call(&sid, "1", "tools/list", "{}");
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{tools}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"files__echo"), "{tools}");
    let r = gw.call(&sid, "2", "tools/call", ECHO);
    assert_eq!(text_of(&r), "Echo: over mtls", "{r}");
    assert!(up
        .received()
        .iter()
        .any(|m| m["message"]["method"] == "tools/call"));
}

#[test]
fn upstream_with_the_wrong_spiffe_id_is_refused() {
    let pki = Pki::new("up-wrong-id");
    // Same CA, valid chain, but not the workload the gateway expects.
    let up = https_demo(&pki, "evil", true, &pki.dir.join("demo.log"));
    let gw = gateway_with(
        &tls_upstream(&pki, &up.url, "/upstream/files", true),
        &pki.dir,
    );
    let sid = gw.session();
    let r = gw.call(&sid, "1", "tools/call", ECHO);
    assert_eq!(r["error"]["code"], -32010, "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("upstream files"), "names the upstream: {msg}");
    assert!(
        eventually(5, || gw.log_text().contains("wrong SPIFFE ID")),
        "log names the reason: {}",
        gw.log_text()
    );
    assert!(
        eventually(5, || gw
            .log_text()
            .contains(&format!("{TD}/upstream/impostor"))),
        "log names the presented ID: {}",
        gw.log_text()
    );
    assert!(
        up.received().is_empty(),
        "the impostor received nothing: {:?}",
        up.received()
    );
}

#[test]
fn upstream_requiring_a_client_cert_refuses_a_gateway_without_one() {
    let pki = Pki::new("up-no-cert");
    let up = https_demo(&pki, "upstream", true, &pki.dir.join("demo.log"));
    let gw = gateway_with(
        &tls_upstream(&pki, &up.url, "/upstream/files", false),
        &pki.dir,
    );
    let sid = gw.session();
    let r = gw.call(&sid, "1", "tools/call", ECHO);
    assert_eq!(r["error"]["code"], -32010, "{r}");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("upstream files"));
    assert!(up.received().is_empty(), "{:?}", up.received());
    assert!(
        eventually(5, || up.stderr_text().contains("TLS handshake failed")),
        "the upstream logs the refused handshake: {}",
        up.stderr_text()
    );
}

#[test]
fn unusable_tls_settings_fail_calls_clearly() {
    let pki = Pki::new("up-bad-files");
    let up = https_demo(&pki, "upstream", false, &pki.dir.join("demo.log"));
    let cfg = format!(
        "[[upstream]]\nname = \"files\"\nurl = {}\n[upstream.tls]\nca = [{}]\n",
        toml_str(&up.url),
        toml_str(&pki.dir.join("missing.pem").display().to_string()),
    );
    let gw = gateway_with(&cfg, &pki.dir);
    let sid = gw.session();
    let r = gw.call(&sid, "1", "tools/call", ECHO);
    assert_eq!(r["error"]["code"], -32010, "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("upstream files") && msg.contains("tls settings"),
        "{msg}"
    );
    assert!(
        !msg.contains("missing.pem"),
        "no file paths to clients: {msg}"
    );
    assert!(
        eventually(5, || gw.log_text().contains("missing.pem")),
        "the log has the details: {}",
        gw.log_text()
    );
    assert!(up.received().is_empty());
}

/// A token endpoint on a std listener: answers every POST with the next
/// token from `tokens` and records each request (head and body).
struct TokenEndpoint {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
}

fn token_endpoint(tokens: Vec<&'static str>) -> TokenEndpoint {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/oauth/token", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        let mut n = 0usize;
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                let k = s.read(&mut chunk).unwrap_or(0);
                if k == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..k]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < head_end + len {
                let k = s.read(&mut chunk).unwrap_or(0);
                if k == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..k]);
            }
            seen2
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf).to_string());
            let token = tokens[n.min(tokens.len() - 1)];
            n += 1;
            let body = serde_json::json!({
                "access_token": token, "token_type": "Bearer", "expires_in": 3600
            })
            .to_string();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    TokenEndpoint { url, seen }
}

/// Writes a development issuer (JWKS) for client tokens and mints one.
fn client_token(dir: &Path, audience: &str) -> (String, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let issuer = rt
        .block_on(portcullis_identity::dev_issuer::DevIssuer::load_or_create(
            &dir.join("client-issuer"),
        ))
        .unwrap();
    let token = issuer.mint("alice", audience, &["mcp"], Duration::from_secs(3600));
    let auth = format!(
        "[auth]\nresource = {}\n[auth.oauth]\nissuer = {}\njwks = {}\n",
        toml_str(audience),
        toml_str(issuer.issuer()),
        toml_str(&issuer.jwks_path().display().to_string()),
    );
    (token, auth)
}

/// Opens a session and calls `files__echo` with the client's bearer token.
fn call_with_token(gw: &Gateway, bearer: &str, tool: &str) -> Value {
    let auth = format!("Bearer {bearer}");
    let r = gw.post(&[("authorization", &auth)], r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let sid = r.header("mcp-session-id").unwrap().to_owned();
    let h = [
        ("authorization", auth.as_str()),
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    let n = gw.post(
        &h,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!(n.status, 202);
    gw.post(
        &h,
        &format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}","arguments":{{"message":"hi"}}}}}}"#
        ),
    )
    .json()
}

#[test]
fn upstream_sees_the_gateway_token_never_the_clients() {
    let dir = tempdir("up-cc");
    let tokens = token_endpoint(vec!["gw-token-A1"]);
    let with_cc = Demo::start(
        &["--require-bearer".into(), "gw-token-".into()],
        &dir.join("cc.log"),
    );
    let without = Demo::start(&[], &dir.join("plain.log"));
    let (client_token, auth) = client_token(&dir, "urn:test:portcullis");
    let cfg = format!(
        "{auth}
[[upstream]]
name = \"files\"
url = {}
[upstream.client_credentials]
token_url = {}
client_id = \"portcullis-gw\"
client_secret = \"s3cret\"
scope = \"tools\"
audience = \"urn:test:files\"

[[upstream]]
name = \"plain\"
url = {}
",
        toml_str(&with_cc.url),
        toml_str(&tokens.url),
        toml_str(&without.url),
    );
    let gw = gateway_authenticating(&cfg, &dir);

    // Without a token the gateway refuses the client (authentication on).
    let r = gw.post(&[], r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#);
    assert_eq!(r.status, 401);

    let r = call_with_token(&gw, &client_token, "files__echo");
    assert_eq!(text_of(&r), "Echo: hi", "{r}");
    let r = call_with_token(&gw, &client_token, "plain__echo");
    assert_eq!(text_of(&r), "Echo: hi", "{r}");
    // A stateless (2026-07-28) request with the client's token and an
    // Mcp-Param header: the parameter may pass, the token may not.
    for tool in ["files__echo", "plain__echo"] {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"{tool}","arguments":{{"message":"stateless"}},"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
        );
        let auth = format!("Bearer {client_token}");
        let r = gw.post(
            &[
                ("authorization", &auth),
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", tool),
                ("mcp-param-region", "eu"),
            ],
            &body,
        );
        assert_eq!(
            text_of(&r.json()),
            "Echo: stateless",
            "{tool}: {:?}",
            r.json()
        );
    }

    // The token endpoint got a client-credentials grant with Basic auth,
    // scope and resource; once (the token is cached).
    let seen = tokens.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let req = &seen[0];
    assert!(req.starts_with("POST /oauth/token "), "{req}");
    assert!(
        req.to_ascii_lowercase().contains(&format!(
            "authorization: basic {}",
            base64_std("portcullis-gw:s3cret").to_ascii_lowercase()
        )),
        "{req}"
    );
    assert!(
        req.ends_with("grant_type=client_credentials&scope=tools&resource=urn%3Atest%3Afiles"),
        "{req}"
    );

    // The upstream with credentials saw the gateway's token on every
    // request, and the client's token nowhere.
    let got = with_cc.received();
    assert!(
        got.iter().any(|m| m["message"]["method"] == "tools/call"),
        "{got:?}"
    );
    for m in &got {
        assert_eq!(m["authorization"], "Bearer gw-token-A1", "{m}");
    }
    // The other upstream saw no Authorization at all.
    let got = without.received();
    assert!(
        got.iter().any(|m| m["message"]["method"] == "tools/call"),
        "{got:?}"
    );
    for m in &got {
        assert!(m["authorization"].is_null(), "{m}");
    }
    for log in [&with_cc.log, &without.log] {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(text.contains("\"stateless\""), "the stateless call arrived");
        assert!(
            !text.contains(&client_token),
            "the client's token reached an upstream"
        );
    }
}

#[test]
fn a_refused_gateway_token_is_replaced_once() {
    let dir = tempdir("up-cc-401");
    // The first token is refused by the upstream; the gateway fetches a new
    // one and retries.
    let tokens = token_endpoint(vec!["stale-token", "gw-token-fresh"]);
    let up = Demo::start(
        &["--require-bearer".into(), "gw-token-".into()],
        &dir.join("cc.log"),
    );
    let cfg = format!(
        "[[upstream]]
name = \"files\"
url = {}
[upstream.client_credentials]
token_url = {}
client_id = \"gw\"
client_secret = \"x\"
",
        toml_str(&up.url),
        toml_str(&tokens.url),
    );
    let gw = gateway_with(&cfg, &dir);
    let sid = gw.session();
    let r = gw.call(
        &sid,
        "1",
        "tools/call",
        ECHO.replace("over mtls", "x").as_str(),
    );
    assert_eq!(text_of(&r), "Echo: x", "{r}");
    assert_eq!(tokens.seen.lock().unwrap().len(), 2);
    let auths: Vec<Value> = up
        .received()
        .iter()
        .map(|m| m["authorization"].clone())
        .collect();
    assert_eq!(auths.first().unwrap(), "Bearer stale-token");
    assert!(
        auths.iter().skip(1).all(|a| a == "Bearer gw-token-fresh"),
        "{auths:?}"
    );
}

fn base64_std(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
