//! Identity and mutual authentication, end to end through the binary: the
//! negative matrix of the identity issue (each case: the exact status or
//! TLS failure, a log line, and nothing reaching the upstream), the
//! positive paths, session binding and the no-config default.
//!
//! Requests go out with curl (a real TLS client, independent of rustls).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use portcullis_identity::ca::{IssueRequest, LocalCa};
use portcullis_identity::dev_issuer::DevIssuer;
use portcullis_identity::spiffe::SpiffeId;
use serde_json::{json, Value};

struct Pki {
    dir: PathBuf,
    ca: LocalCa,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        portcullis_identity::ca::init(&dir.join("ca"), false).unwrap();
        let ca = LocalCa::load(&dir.join("ca")).unwrap();
        Pki {
            dir: dir.to_owned(),
            ca,
        }
    }

    /// Writes `name/cert.pem` and `name/key.pem` issued by `ca`.
    fn issue_with(
        ca: &LocalCa,
        dir: &Path,
        name: &str,
        id: Option<&str>,
        validity: Option<(i64, i64)>,
        server: bool,
    ) -> PathBuf {
        let mut req = IssueRequest::new(id.map(|i| SpiffeId::parse(i).unwrap()));
        if server {
            req.dns = vec!["localhost".into()];
            req.ips = vec!["127.0.0.1".parse().unwrap()];
        }
        req.validity = validity;
        let pem = ca.issue(&req).unwrap();
        let out = dir.join(name);
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("cert.pem"), pem.cert_pem).unwrap();
        std::fs::write(out.join("key.pem"), pem.key_pem).unwrap();
        out
    }

    fn issue(&self, name: &str, id: &str) -> PathBuf {
        Pki::issue_with(&self.ca, &self.dir, name, Some(id), None, false)
    }

    fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca").join("ca.pem")
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

struct Setup {
    _gw: Gateway,
    url: String,
    pki: Pki,
    issuer: DevIssuer,
    upstream_log: PathBuf,
    dir: PathBuf,
    gw_log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Setup {
    fn log(&self) -> String {
        self.gw_log.lock().unwrap().join("\n")
    }
    fn upstream_saw(&self, marker: &str) -> bool {
        std::fs::read_to_string(&self.upstream_log)
            .unwrap_or_default()
            .contains(marker)
    }
}

fn setup(tag: &str, auth_extra: &str) -> Setup {
    setup_with(tag, auth_extra, "")
}

fn setup_with(tag: &str, auth_extra: &str, tail: &str) -> Setup {
    let dir = tempdir(tag);
    let pki = Pki::new(&dir);
    let server = Pki::issue_with(
        &pki.ca,
        &dir,
        "gateway",
        Some("spiffe://example.org/gateway"),
        None,
        true,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let issuer = rt
        .block_on(DevIssuer::load_or_create(&dir.join("issuer")))
        .unwrap();
    let upstream_log = dir.join("upstream.log");
    std::fs::write(dir.join("deny.txt"), "# revoked certificates\n").unwrap();
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[listen.tls]
mode = "optional"
cert = {cert:?}
key = {key:?}
client_ca = [{ca:?}]
trust_domains = ["example.org"]
deny_list = {deny:?}

[auth]
{auth_extra}

[auth.oauth]
issuer = "urn:portcullis:dev"
jwks = {jwks:?}
min_refetch_secs = 0

[[upstream]]
name = "demo"
command = [{bin:?}, "demo-server"]
env = {{ PORTCULLIS_DEMO_LOG = {log:?} }}
{tail}
"#,
            cert = server.join("cert.pem").display().to_string(),
            key = server.join("key.pem").display().to_string(),
            ca = pki.ca_pem().display().to_string(),
            deny = dir.join("deny.txt").display().to_string(),
            jwks = issuer.jwks_path().display().to_string(),
            bin = BIN,
            log = upstream_log.display().to_string(),
        ),
    )
    .unwrap();
    // No --allow-anonymous-loopback here: `start` adds it, so build the
    // command by hand.
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg);
    let gw = spawn_gateway(cmd);
    let url = format!(
        "https://127.0.0.1{}/mcp",
        gw.addr.trim_start_matches("127.0.0.1")
    );
    let gw_log = gw.log.clone();
    Setup {
        _gw: gw,
        url,
        pki,
        issuer,
        upstream_log,
        dir,
        gw_log,
    }
}

/// One curl request: (HTTP status or 0 on a TLS failure, headers, body).
fn curl(
    url: &str,
    ca: &Path,
    cert: Option<&Path>,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, String, String) {
    let out_headers = tempdir("hdr").join("h.txt");
    let mut c = Command::new("curl");
    c.args(["-s", "-m", "20", "-o", "-", "-D"])
        .arg(&out_headers)
        .arg("-w")
        .arg("\n%{http_code}");
    c.arg("--cacert").arg(ca);
    if let Some(d) = cert {
        c.arg("--cert")
            .arg(d.join("cert.pem"))
            .arg("--key")
            .arg(d.join("key.pem"));
    }
    c.args([
        "-H",
        "Content-Type: application/json",
        "-H",
        "Accept: application/json, text/event-stream",
    ]);
    for (k, v) in headers {
        c.arg("-H").arg(format!("{k}: {v}"));
    }
    c.arg("--data-binary").arg(body.to_string()).arg(url);
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let h = std::fs::read_to_string(&out_headers).unwrap_or_default();
    (code.trim().parse().unwrap_or(0), h, body.to_owned())
}

/// A self-contained (2026-07-28) call carrying `marker`, so the upstream's
/// log shows whether it arrived.
fn call(marker: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "demo__echo", "arguments": {"message": marker},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}}})
}

const MODERN: [(&str, &str); 3] = [
    ("MCP-Protocol-Version", "2026-07-28"),
    ("Mcp-Method", "tools/call"),
    ("Mcp-Name", "demo__echo"),
];

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn with_auth(auth: &str) -> Vec<(&str, &str)> {
    let mut h = MODERN.to_vec();
    h.push(("Authorization", auth));
    h
}

fn claims(s: &Setup, over: Value) -> Value {
    let mut c = json!({"iss": "urn:portcullis:dev", "sub": "alice", "aud": s.url, "iat": now(), "nbf": now(), "exp": now() + 600, "scope": "mcp"});
    for (k, v) in over.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn b64(v: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

#[test]
fn negative_matrix_refuses_and_nothing_reaches_the_upstream() {
    let s = setup("neg", "");
    let ca = s.pki.ca_pem();
    let good = s.pki.issue("good", "spiffe://example.org/agent/good");
    let token = s
        .issuer
        .mint("alice", &s.url, &["mcp"], Duration::from_secs(600));

    // The positive control first: certificate + token reaches the upstream.
    let (code, _, body) = curl(
        &s.url,
        &ca,
        Some(&good),
        &with_auth(&bearer(&token)),
        &call("pos-ok"),
    );
    assert_eq!(code, 200, "{body}\n{}", s.log());
    assert!(body.contains("Echo: pos-ok"));
    assert!(s.upstream_saw("pos-ok"));
    // Either proof alone is enough in the default `any` mode.
    assert_eq!(
        curl(&s.url, &ca, Some(&good), &MODERN, &call("pos-cert")).0,
        200
    );
    assert_eq!(
        curl(
            &s.url,
            &ca,
            None,
            &with_auth(&bearer(&token)),
            &call("pos-token")
        )
        .0,
        200
    );

    // --- certificate cases: the TLS handshake fails (curl sees no status).
    let other_dir = s.dir.join("other");
    portcullis_identity::ca::init(&other_dir.join("ca"), false).unwrap();
    let other_ca = LocalCa::load(&other_dir.join("ca")).unwrap();
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        (
            "other-ca",
            Pki::issue_with(
                &other_ca,
                &s.dir,
                "foreign",
                Some("spiffe://example.org/agent/x"),
                None,
                false,
            ),
            "client certificate rejected",
        ),
        (
            "expired",
            Pki::issue_with(
                &s.pki.ca,
                &s.dir,
                "expired",
                Some("spiffe://example.org/agent/x"),
                Some((now() - 7200, now() - 60)),
                false,
            ),
            "client certificate rejected",
        ),
        (
            "not-yet-valid",
            Pki::issue_with(
                &s.pki.ca,
                &s.dir,
                "future",
                Some("spiffe://example.org/agent/x"),
                Some((now() + 3600, now() + 7200)),
                false,
            ),
            "client certificate rejected",
        ),
        (
            "wrong-trust-domain",
            s.pki.issue("evil", "spiffe://evil.org/agent/x"),
            "trust domain",
        ),
    ];
    for (name, dir, log_line) in &cases {
        let marker = format!("neg-{name}");
        let (code, _, body) = curl(&s.url, &ca, Some(dir), &MODERN, &call(&marker));
        assert_eq!(
            code, 0,
            "{name}: expected a refused handshake, got {code} {body}"
        );
        assert!(
            eventually(5, || s.log().contains(log_line)),
            "{name}: no log line {log_line:?}\n{}",
            s.log()
        );
        assert!(!s.upstream_saw(&marker), "{name} reached the upstream");
    }
    // Revoked by fingerprint in the deny-list file (re-read on change).
    let revoked = s.pki.issue("revoked", "spiffe://example.org/agent/revoked");
    let der = portcullis_identity::tls::load_certs(&revoked.join("cert.pem")).unwrap();
    let fp = portcullis_identity::spiffe::fingerprint_sha256(der[0].as_ref());
    assert_eq!(
        curl(&s.url, &ca, Some(&revoked), &MODERN, &call("pre-revoke")).0,
        200
    );
    std::fs::write(s.dir.join("deny.txt"), format!("{fp} # stolen laptop\n")).unwrap();
    // The file is re-read within seconds; poll with a harmless call.
    assert!(
        eventually(10, || curl(
            &s.url,
            &ca,
            Some(&revoked),
            &MODERN,
            &call("revoke-poll")
        )
        .0 == 0),
        "revoked certificate still accepted"
    );
    assert_eq!(
        curl(&s.url, &ca, Some(&revoked), &MODERN, &call("neg-revoked")).0,
        0
    );
    assert!(eventually(5, || s.log().contains("revoked")));
    assert!(!s.upstream_saw("neg-revoked"));

    // --- token cases: 401 with WWW-Authenticate (403 for scope).
    let other_issuer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(DevIssuer::load_or_create(&s.dir.join("other-issuer")))
        .unwrap();
    let header_b64 = |h: Value| b64(h.to_string().as_bytes());
    let none_token = format!(
        "{}.{}.",
        header_b64(json!({"alg": "none", "typ": "JWT"})),
        b64(claims(&s, json!({})).to_string().as_bytes())
    );
    let hs256 = {
        // HS256 "signed" with the issuer's public key bytes: the classic
        // algorithm-confusion forgery.
        let jwks: Value =
            serde_json::from_str(&std::fs::read_to_string(s.issuer.jwks_path()).unwrap()).unwrap();
        let x = jwks["keys"][0]["x"].as_str().unwrap().to_owned();
        let input = format!(
            "{}.{}",
            header_b64(json!({"alg": "HS256", "typ": "JWT", "kid": s.issuer.kid()})),
            b64(claims(&s, json!({})).to_string().as_bytes())
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, x.as_bytes());
        format!(
            "{input}.{}",
            b64(ring::hmac::sign(&key, input.as_bytes()).as_ref())
        )
    };
    let tampered = {
        let t = s.issuer.sign(&claims(&s, json!({})));
        let (head, sig) = t.rsplit_once('.').unwrap();
        let mut sig: Vec<char> = sig.chars().collect();
        sig[5] = if sig[5] == 'A' { 'B' } else { 'A' };
        format!("{head}.{}", sig.into_iter().collect::<String>())
    };
    let token_cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "expired-token",
            s.issuer.sign(&claims(
                &s,
                json!({"exp": now() - 3600, "iat": now() - 7200, "nbf": now() - 7200}),
            )),
            401,
            "token expired",
        ),
        (
            "wrong-aud",
            s.issuer
                .sign(&claims(&s, json!({"aud": "https://elsewhere.example/mcp"}))),
            401,
            "wrong token audience",
        ),
        (
            "wrong-iss",
            s.issuer
                .sign(&claims(&s, json!({"iss": "https://evil.example"}))),
            401,
            "wrong token issuer",
        ),
        ("alg-none", none_token, 401, "unsupported token algorithm"),
        ("hs256-confusion", hs256, 401, "unsupported token algorithm"),
        ("tampered", tampered, 401, "bad token signature"),
        (
            "unknown-kid",
            other_issuer.sign(&claims(&s, json!({}))),
            401,
            "no signing key",
        ),
    ];
    for (name, tok, status, log_line) in &token_cases {
        let marker = format!("neg-{name}");
        let auth = bearer(tok);
        let (code, headers, body) = curl(&s.url, &ca, None, &with_auth(&auth), &call(&marker));
        assert_eq!(code, *status, "{name}: {body}");
        let www = headers
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
            .unwrap_or_default()
            .to_owned();
        assert!(www.contains("resource_metadata=\""), "{name}: {www}");
        assert!(www.contains("error=\"invalid_token\""), "{name}: {www}");
        assert!(
            eventually(5, || s.log().contains(log_line)),
            "{name}: no log line {log_line:?}\n{}",
            s.log()
        );
        assert!(!s.upstream_saw(&marker), "{name} reached the upstream");
    }
    // No credentials at all: 401 pointing at the metadata, no error code.
    let (code, headers, _) = curl(&s.url, &ca, None, &MODERN, &call("neg-nothing"));
    assert_eq!(code, 401);
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer resource_metadata="),
        "{headers}"
    );
    assert!(!s.upstream_saw("neg-nothing"));
    // A token in the query string is refused even if valid.
    let (code, _, _) = curl(
        &format!("{}?access_token={token}", s.url),
        &ca,
        None,
        &MODERN,
        &call("neg-query"),
    );
    assert_eq!(code, 400);
    assert!(!s.upstream_saw("neg-query"));
}

#[test]
fn a_token_replayed_after_key_rotation_is_refused() {
    let s = setup("rotate", "");
    let ca = s.pki.ca_pem();
    let old = s
        .issuer
        .mint("alice", &s.url, &["mcp"], Duration::from_secs(600));
    assert_eq!(
        curl(
            &s.url,
            &ca,
            None,
            &with_auth(&bearer(&old)),
            &call("rot-before")
        )
        .0,
        200
    );
    // Rotate: the issuer's key set now holds only a new key.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let new_issuer = rt
        .block_on(DevIssuer::load_or_create(&s.dir.join("issuer2")))
        .unwrap();
    std::fs::copy(new_issuer.jwks_path(), s.issuer.jwks_path()).unwrap();
    let fresh = new_issuer.mint("alice", &s.url, &["mcp"], Duration::from_secs(600));
    // A token under the new key makes the gateway refetch the set…
    assert!(
        eventually(10, || curl(
            &s.url,
            &ca,
            None,
            &with_auth(&bearer(&fresh)),
            &call("rot-new")
        )
        .0 == 200),
        "new key not picked up\n{}",
        s.log()
    );
    // …after which the old token, though unexpired, is refused.
    let (code, _, body) = curl(
        &s.url,
        &ca,
        None,
        &with_auth(&bearer(&old)),
        &call("neg-rot-replay"),
    );
    assert_eq!(code, 401, "{body}");
    assert!(!s.upstream_saw("neg-rot-replay"));
}

#[test]
fn strict_mode_needs_both_and_posture_when_required() {
    let s = setup("strict", "require = \"strict\"");
    let ca = s.pki.ca_pem();
    let good = s.pki.issue("good", "spiffe://example.org/agent/good");
    let token = s
        .issuer
        .mint("alice", &s.url, &["mcp"], Duration::from_secs(600));
    let (code, _, _) = curl(
        &s.url,
        &ca,
        None,
        &with_auth(&bearer(&token)),
        &call("neg-strict-token-only"),
    );
    assert_eq!(code, 403, "token without certificate in strict mode");
    let (code, _, _) = curl(
        &s.url,
        &ca,
        Some(&good),
        &MODERN,
        &call("neg-strict-cert-only"),
    );
    assert_eq!(code, 401, "certificate without token in strict mode");
    assert!(eventually(5, || s.log().contains("strict mode")));
    let (code, _, body) = curl(
        &s.url,
        &ca,
        Some(&good),
        &with_auth(&bearer(&token)),
        &call("strict-ok"),
    );
    assert_eq!(code, 200, "{body}");
    for m in ["neg-strict-token-only", "neg-strict-cert-only"] {
        assert!(!s.upstream_saw(m), "{m}");
    }
}

#[test]
fn missing_posture_is_refused_when_posture_is_required() {
    let dir = tempdir("posture-issuer");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let device = rt.block_on(DevIssuer::load_or_create(&dir)).unwrap();
    let extra = format!(
        "require = \"strict\"\n[auth.posture]\nissuer = \"urn:portcullis:dev\"\njwks = {:?}\nmax_age_secs = 600\nrequired = true",
        device.jwks_path().display().to_string()
    );
    let s = setup("posture", &extra);
    let ca = s.pki.ca_pem();
    let good = s.pki.issue("good", "spiffe://example.org/agent/good");
    let token = s
        .issuer
        .mint("alice", &s.url, &["mcp"], Duration::from_secs(600));
    let (code, _, body) = curl(
        &s.url,
        &ca,
        Some(&good),
        &with_auth(&bearer(&token)),
        &call("neg-no-posture"),
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("posture"));
    assert!(eventually(5, || s
        .log()
        .contains("device posture required")));
    assert!(!s.upstream_saw("neg-no-posture"));
    // A fresh signed assertion from the device-trust issuer lets it through.
    let posture = device.sign(&json!({"iss": "urn:portcullis:dev", "sub": "laptop-7", "iat": now(), "exp": now() + 600, "managed": true, "disk_encrypted": true}));
    let mut h = with_auth(&bearer(&token))
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect::<Vec<_>>();
    h.push(("Portcullis-Device-Posture".into(), posture));
    let hr: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, _, body) = curl(&s.url, &ca, Some(&good), &hr, &call("posture-ok"));
    assert_eq!(code, 200, "{body}\n{}", s.log());
}

#[test]
fn a_stolen_session_id_is_useless_under_another_identity() {
    let s = setup("hijack", "");
    let ca = s.pki.ca_pem();
    let alice = s.pki.issue("alice", "spiffe://example.org/agent/alice");
    let mallory = s.pki.issue("mallory", "spiffe://example.org/agent/mallory");
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let (code, headers, _) = curl(&s.url, &ca, Some(&alice), &[], &init);
    assert_eq!(code, 200);
    let sid = headers
        .lines()
        .find_map(|l| {
            l.strip_prefix("mcp-session-id: ")
                .or_else(|| l.strip_prefix("Mcp-Session-Id: "))
        })
        .unwrap()
        .trim()
        .to_owned();
    let list = |marker: &str| json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "demo__echo", "arguments": {"message": marker}}});
    let (code, _, body) = curl(
        &s.url,
        &ca,
        Some(&alice),
        &[("Mcp-Session-Id", &sid)],
        &list("owner-ok"),
    );
    assert_eq!(code, 200, "{body}");
    // Mallory presents Alice's session id with her own (valid) certificate.
    let (code, _, body) = curl(
        &s.url,
        &ca,
        Some(&mallory),
        &[("Mcp-Session-Id", &sid)],
        &list("neg-hijack"),
    );
    assert_eq!(code, 404, "{body}");
    assert!(
        eventually(5, || s.log().contains("session hijack attempt")),
        "{}",
        s.log()
    );
    assert!(!s.upstream_saw("neg-hijack"));
    // …and cannot end it either.
    let (code, _, _) = curl(
        &s.url,
        &ca,
        Some(&mallory),
        &[("Mcp-Session-Id", &sid)],
        &json!({}),
    );
    assert!(code == 404 || code == 400);
    let (code, _, _) = curl(
        &s.url,
        &ca,
        Some(&alice),
        &[("Mcp-Session-Id", &sid)],
        &list("owner-still-ok"),
    );
    assert_eq!(code, 200);
}

#[test]
fn protected_resource_metadata_is_served() {
    let s = setup("prm", "");
    let ca = s.pki.ca_pem();
    let out = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(&ca)
        .arg(
            s.url
                .replace("/mcp", "/.well-known/oauth-protected-resource/mcp"),
        )
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["resource"], s.url);
    assert_eq!(v["authorization_servers"][0], "urn:portcullis:dev");
    assert_eq!(v["bearer_methods_supported"][0], "header");
}

#[test]
fn no_config_requires_authentication_and_prints_how_to_connect() {
    let state = tempdir("default-state");
    let mut cmd = Command::new(BIN);
    cmd.env("PORTCULLIS_STATE_DIR", &state)
        .args(["serve", "--listen", "127.0.0.1:0"]);
    let gw = spawn_gateway(cmd);
    assert!(
        eventually(10, || gw.log_text().contains("dev bearer token")),
        "{}",
        gw.log_text()
    );
    let log = gw.log_text();
    let url = log
        .lines()
        .find_map(|l| l.strip_prefix("listening on "))
        .unwrap()
        .trim()
        .to_owned();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let token = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("dev bearer token:"))
        .unwrap()
        .trim()
        .to_owned();
    let ca = state.join("ca").join("ca.pem");
    // Key files are private.
    use std::os::unix::fs::PermissionsExt;
    for k in [state.join("ca/ca.key"), state.join("dev-client/key.pem")] {
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            k.display()
        );
    }
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    assert_eq!(
        curl(&url, &ca, None, &[], &init).0,
        401,
        "anonymous refused even on loopback"
    );
    let auth = bearer(&token);
    assert_eq!(
        curl(&url, &ca, None, &[("Authorization", &auth)], &init).0,
        200,
        "the printed token works"
    );
    assert_eq!(
        curl(&url, &ca, Some(&state.join("dev-client")), &[], &init).0,
        200,
        "the printed certificate works"
    );
    // --allow-anonymous-loopback is refused on a non-loopback address.
    let out = Command::new(BIN)
        .env("PORTCULLIS_STATE_DIR", &state)
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--allow-anonymous-loopback",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("allow_anonymous_loopback"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the admin CLI: (exit code, stdout, stderr).
fn admin_cli(args: &[&str], conn: &[String]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).args(conn).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn admin_api_revokes_certificates_and_sessions() {
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The admin listener has its own CA: agents' certificates are not even
    // trusted there.
    let admin_dir = tempdir("admin-pki");
    let admin_pki = Pki::new(&admin_dir);
    let admin_server = Pki::issue_with(
        &admin_pki.ca,
        &admin_dir,
        "admin-server",
        Some("spiffe://example.org/gateway/admin"),
        None,
        true,
    );
    let ops = admin_pki.issue("ops", "spiffe://example.org/admin/ops");
    let intruder = admin_pki.issue("intruder", "spiffe://example.org/agent/intruder");
    let tail = format!(
        "[admin]\naddr = \"127.0.0.1:{admin_port}\"\ncert = {:?}\nkey = {:?}\nclient_ca = [{:?}]\nidentities = [\"spiffe://example.org/admin/*\"]\n",
        admin_server.join("cert.pem").display().to_string(),
        admin_server.join("key.pem").display().to_string(),
        admin_pki.ca_pem().display().to_string(),
    );
    let s = setup_with("admin", "", &tail);
    let ca = s.pki.ca_pem();
    let url = format!("https://127.0.0.1:{admin_port}");
    let conn = |client: &Path| -> Vec<String> {
        vec![
            "--admin".into(),
            url.clone(),
            "--ca".into(),
            admin_pki.ca_pem().display().to_string(),
            "--admin-cert".into(),
            client.join("cert.pem").display().to_string(),
            "--admin-key".into(),
            client.join("key.pem").display().to_string(),
        ]
    };
    let admin = conn(&ops);
    assert!(eventually(10, || admin_cli(&["sessions", "list"], &admin)
        .0
        == 0));
    // A certificate from the admin CA without an admin identity: refused.
    let (code, _, err) = admin_cli(&["sessions", "list"], &conn(&intruder));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not an admin identity"), "{err}");
    // A session for Alice.
    let alice = s.pki.issue("alice", "spiffe://example.org/agent/alice");
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let (code, headers, _) = curl(&s.url, &ca, Some(&alice), &[], &init);
    assert_eq!(code, 200);
    let sid = headers
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("mcp-session-id: ")
                .map(|v| v.trim().to_owned())
        })
        .unwrap();
    let (code, body, err) = admin_cli(&["sessions", "list", "--json"], &admin);
    assert_eq!(code, 0, "{err}");
    assert!(
        body.contains(&sid) && body.contains("spiffe://example.org/agent/alice"),
        "{body}"
    );
    // Kill the identity's sessions: the session is gone.
    let identity = "w=spiffe://example.org/agent/alice;u=-";
    let (code, body, err) = admin_cli(
        &[
            "sessions",
            "kill",
            "--identity",
            identity,
            "--reason",
            "test",
        ],
        &admin,
    );
    assert_eq!(code, 0, "{err}");
    assert!(body.contains("ended 1 session"), "{body}");
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    assert_eq!(
        curl(
            &s.url,
            &ca,
            Some(&alice),
            &[("Mcp-Session-Id", &sid)],
            &list
        )
        .0,
        404
    );
    // Revoke the certificate by fingerprint: the next handshake fails.
    let der = portcullis_identity::tls::load_certs(&alice.join("cert.pem")).unwrap();
    let fp = portcullis_identity::spiffe::fingerprint_sha256(der[0].as_ref());
    assert_eq!(
        curl(
            &s.url,
            &ca,
            Some(&alice),
            &MODERN,
            &call("pre-admin-revoke")
        )
        .0,
        200
    );
    let (code, body, err) = admin_cli(&["revoke", "--cert", &fp, "--reason", "stolen"], &admin);
    assert_eq!(code, 0, "{err}");
    assert!(
        body.contains(&format!("revoked certificate:{fp}")),
        "{body}"
    );
    assert_eq!(
        curl(
            &s.url,
            &ca,
            Some(&alice),
            &MODERN,
            &call("neg-admin-revoked")
        )
        .0,
        0
    );
    assert!(!s.upstream_saw("neg-admin-revoked"));
    assert!(eventually(5, || s.log().contains("revoked by admin")));
    let (code, body, _) = admin_cli(&["revoke", "--list"], &admin);
    assert_eq!(code, 0);
    assert!(
        body.contains(&fp) && body.contains("admin:spiffe://example.org/admin/ops"),
        "{body}"
    );
}
