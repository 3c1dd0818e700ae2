//! The admin API's client: `portcullis sessions`, `revoke`, `quarantine`,
//! `killswitch`, `breakers` and `policy reload`. Each command is one HTTPS
//! call to the admin listener, authenticated by the admin client
//! certificate (mTLS). Exit status: 0 done, 1 refused, failed or not found,
//! 2 usage error (clap's own status).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use portcullis_identity::tls::UpstreamTls;
use rustls::pki_types::ServerName;
use serde_json::{json, Value};

/// Where the admin API is and how to reach it (every admin command).
#[derive(Args, Clone, Debug)]
pub struct Conn {
    /// The admin API's address.
    #[arg(
        long = "admin",
        value_name = "URL",
        env = "PORTCULLIS_ADMIN_URL",
        default_value = "https://127.0.0.1:8788"
    )]
    pub url: String,
    /// Trust bundle for the admin listener's certificate (default:
    /// STATE/ca/ca.pem, the development CA).
    #[arg(long, value_name = "FILE", env = "PORTCULLIS_ADMIN_CA")]
    pub ca: Option<PathBuf>,
    /// The state folder holding the development defaults (default:
    /// $PORTCULLIS_STATE_DIR, else $XDG_STATE_HOME/portcullis, else
    /// ~/.local/state/portcullis).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print the server's JSON answer instead of a table or summary.
    #[arg(long)]
    pub json: bool,
}

/// The admin client certificate, as `--cert`/`--key`.
#[derive(Args, Clone, Debug)]
pub struct ClientCert {
    /// The admin client certificate (PEM; default:
    /// STATE/admin-client/cert.pem).
    #[arg(
        long = "cert",
        visible_alias = "admin-cert",
        value_name = "FILE",
        env = "PORTCULLIS_ADMIN_CERT"
    )]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM; default: STATE/admin-client/key.pem).
    #[arg(
        long = "key",
        visible_alias = "admin-key",
        value_name = "FILE",
        env = "PORTCULLIS_ADMIN_KEY"
    )]
    pub key: Option<PathBuf>,
}

/// The admin client certificate for `revoke`, whose `--cert` names the
/// certificate to revoke.
#[derive(Args, Clone, Debug)]
pub struct RevokeClientCert {
    /// The admin client certificate (PEM; default:
    /// STATE/admin-client/cert.pem).
    #[arg(
        long = "admin-cert",
        value_name = "FILE",
        env = "PORTCULLIS_ADMIN_CERT"
    )]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM; default: STATE/admin-client/key.pem).
    #[arg(long = "admin-key", value_name = "FILE", env = "PORTCULLIS_ADMIN_KEY")]
    pub key: Option<PathBuf>,
}

/// Connection options plus the client certificate.
#[derive(Args, Clone, Debug)]
pub struct Opts {
    #[command(flatten)]
    conn: Conn,
    #[command(flatten)]
    cert: ClientCert,
}

/// `portcullis sessions …`
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SessionsArgs {
    #[command(subcommand)]
    cmd: Option<SessionsCmd>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Subcommand, Debug)]
enum SessionsCmd {
    /// List the open client sessions (the default).
    List {
        #[command(flatten)]
        opts: Opts,
    },
    /// End a session, or every session of an identity. Exit 1 if none ended.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["session", "identity"])))]
    Kill {
        /// The session id.
        #[arg(value_name = "SESSION_ID")]
        session: Option<String>,
        /// Every session of this identity key (as `sessions list` shows it).
        #[arg(long, value_name = "KEY")]
        identity: Option<String>,
        /// Why (recorded in the audit log).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        opts: Opts,
    },
}

/// `portcullis revoke …`
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["fingerprint", "serial", "jti", "session", "list"])))]
pub struct RevokeArgs {
    /// A client certificate, by SHA-256 fingerprint (hex).
    #[arg(long = "cert", value_name = "FINGERPRINT")]
    fingerprint: Option<String>,
    /// A client certificate, by serial number (hex).
    #[arg(long, value_name = "SERIAL")]
    serial: Option<String>,
    /// A bearer token, by its `jti`.
    #[arg(long, value_name = "JTI")]
    jti: Option<String>,
    /// A session (the same as `sessions kill ID`).
    #[arg(long, value_name = "ID")]
    session: Option<String>,
    /// List the revocations instead.
    #[arg(long)]
    list: bool,
    /// Why (recorded in the audit log).
    #[arg(long, value_name = "TEXT", conflicts_with = "list")]
    reason: Option<String>,
    /// Forget the revocation after this long (90, 90s, 15m, 2h, 1d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "list")]
    ttl: Option<u64>,
    #[command(flatten)]
    conn: Conn,
    #[command(flatten)]
    cert: RevokeClientCert,
}

/// Whom a quarantine applies to: exactly one.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// An identity key (`w=…;u=…`, as `sessions list` shows it).
    #[arg(long, value_name = "KEY")]
    identity: Option<String>,
    /// A workload, by SPIFFE ID.
    #[arg(long, value_name = "SPIFFE_ID")]
    agent: Option<String>,
    /// A user, by user id (the token's subject).
    #[arg(long, value_name = "USER_ID")]
    user: Option<String>,
    /// A device, by id.
    #[arg(long, value_name = "ID")]
    device: Option<String>,
    /// A session, by id.
    #[arg(long, value_name = "ID")]
    session: Option<String>,
}

impl Target {
    fn kind_value(&self) -> (&'static str, String) {
        let pairs = [
            ("identity", &self.identity),
            ("agent", &self.agent),
            ("user", &self.user),
            ("device", &self.device),
            ("session", &self.session),
        ];
        pairs
            .into_iter()
            .find_map(|(k, v)| v.clone().map(|v| (k, v)))
            .unwrap_or(("identity", String::new()))
    }
}

/// `portcullis quarantine …`
#[derive(Subcommand, Debug)]
pub enum QuarantineCmd {
    /// Quarantine an identity, agent, user, device or session.
    Add {
        #[command(flatten)]
        target: Target,
        /// deny-all (nothing passes) or read-only (read-only tools only).
        #[arg(long, value_name = "MODE", default_value = "deny-all", value_parser = ["deny-all", "read-only"])]
        mode: String,
        /// Why (recorded in the audit log).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Release automatically after this long (90, 90s, 15m, 2h, 1d).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        ttl: Option<u64>,
        #[command(flatten)]
        opts: Opts,
    },
    /// Release a quarantine. Exit 1 if there was none.
    Remove {
        #[command(flatten)]
        target: Target,
        /// Why (recorded in the audit log).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        opts: Opts,
    },
    /// List the quarantines in force.
    List {
        #[command(flatten)]
        opts: Opts,
    },
}

/// `portcullis killswitch …`
#[derive(Subcommand, Debug)]
pub enum KillswitchCmd {
    /// Stop every call (or, with --read-only, every call but read-only tools).
    On {
        /// Let read-only tools through.
        #[arg(long)]
        read_only: bool,
        /// Why (recorded in the audit log).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        opts: Opts,
    },
    /// Let calls through again.
    Off {
        /// Why (recorded in the audit log).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        opts: Opts,
    },
    /// Show whether the kill switch is on.
    Status {
        #[command(flatten)]
        opts: Opts,
    },
}

/// `portcullis breakers …`
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BreakersArgs {
    #[command(subcommand)]
    cmd: Option<BreakersCmd>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Subcommand, Debug)]
enum BreakersCmd {
    /// List the upstream circuit breakers (the default).
    List {
        #[command(flatten)]
        opts: Opts,
    },
    /// Close an upstream's breaker now.
    Reset {
        /// The upstream's name.
        name: String,
        #[command(flatten)]
        opts: Opts,
    },
}

/// `portcullis pins …`
#[derive(Subcommand, Debug)]
pub enum PinsCmd {
    /// List pinned tools and whether a changed definition waits for approval.
    List {
        #[command(flatten)]
        opts: Opts,
    },
    /// Show what changed in a tool's definition since it was pinned.
    Diff {
        /// The upstream's name.
        server: String,
        /// The tool's name at that upstream.
        tool: String,
        #[command(flatten)]
        opts: Opts,
    },
    /// Approve a changed definition: it becomes the pin and the tool is shown again.
    Approve {
        /// The upstream's name.
        server: String,
        /// The tool's name at that upstream.
        tool: String,
        #[command(flatten)]
        opts: Opts,
    },
}

/// `90`, `90s`, `15m`, `2h`, `1d` → seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (s.get(..i).unwrap_or(""), Some(c)),
        _ => (s, None),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with s, m, h or d (e.g. 15m)"))?;
    let mult = match unit {
        None | Some('s') => 1,
        Some('m') => 60,
        Some('h') => 3600,
        Some('d') => 86_400,
        Some(u) => return Err(format!("{s:?}: unknown unit {u:?} (use s, m, h or d)")),
    };
    match n.checked_mul(mult) {
        Some(0) => Err(format!("{s:?}: must be positive")),
        Some(v) => Ok(v),
        None => Err(format!("{s:?}: too long")),
    }
}

/// Why a command failed; printed as `portcullis: …`, exit 1.
#[derive(Debug)]
struct Failed(String);

impl<T: std::fmt::Display> From<T> for Failed {
    fn from(e: T) -> Failed {
        Failed(e.to_string())
    }
}

type Res<T> = Result<T, Failed>;

/// One HTTPS connection's worth of settings for the admin API.
struct Client {
    url: String,
    host: String,
    port: u16,
    base: String,
    name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    json: bool,
}

impl Client {
    fn new(conn: &Conn, cert: Option<PathBuf>, key: Option<PathBuf>) -> Res<Client> {
        let url = conn.url.trim_end_matches('/').to_owned();
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("--admin {url}: not a URL ({e})"))?;
        if uri.scheme_str() != Some("https") {
            return Err(Failed(format!(
                "--admin {url}: the admin API is https:// only (mTLS)"
            )));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("--admin {url}: no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let base = uri.path().trim_end_matches('/').to_owned();
        let name = ServerName::try_from(host.clone()).map_err(|e| format!("--admin {url}: {e}"))?;
        let state = || -> Res<PathBuf> {
            match &conn.state_dir {
                Some(d) => Ok(d.clone()),
                None => Ok(portcullis_identity::paths::state_dir()?),
            }
        };
        let cert = match cert {
            Some(c) => c,
            None => state()?.join("admin-client").join("cert.pem"),
        };
        let key = match key {
            Some(k) => k,
            None => state()?.join("admin-client").join("key.pem"),
        };
        let ca = match &conn.ca {
            Some(c) => c.clone(),
            None => state()?.join("ca").join("ca.pem"),
        };
        for (what, p) in [
            ("admin client certificate", &cert),
            ("admin client key", &key),
            ("CA bundle", &ca),
        ] {
            if !p.exists() {
                return Err(Failed(format!(
                    "{what} {} not found (give --cert/--key/--ca, or --state-dir of the gateway)",
                    p.display()
                )));
            }
        }
        let tls = portcullis_identity::tls::client_config(&UpstreamTls {
            ca: vec![ca],
            cert: Some(cert),
            key: Some(key),
            spiffe_id: None,
        })?;
        Ok(Client {
            url,
            host,
            port,
            base,
            name,
            tls,
            json: conn.json,
        })
    }

    /// One request; `Ok` is the status and the JSON answer (`Null` if the
    /// body is not JSON).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Res<(StatusCode, Value)> {
        let fail = |e: &dyn std::fmt::Display| Failed(format!("cannot reach {}: {e}", self.url));
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| fail(&"connection timed out"))?
        .map_err(|e| fail(&e))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| fail(&chain(&e)))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail(&chain(&e)))?;
        tokio::spawn(conn);
        let data = body.map(|b| b.to_string()).unwrap_or_default();
        let host = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(http::header::HOST, host)
            .header(
                http::header::USER_AGENT,
                concat!("portcullis/", env!("CARGO_PKG_VERSION")),
            )
            .header(http::header::ACCEPT, "application/json");
        if !data.is_empty() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(Bytes::from(data)))?;
        let answer = tokio::time::timeout(Duration::from_secs(60), async {
            let resp = send.send_request(req).await.map_err(|e| fail(&chain(&e)))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| fail(&chain(&e)))?
                .to_bytes();
            Ok::<_, Failed>((status, bytes))
        })
        .await
        .map_err(|_| fail(&"no answer within 60 s"))??;
        let (status, bytes) = answer;
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, v))
    }

    /// A call whose non-2xx answer is a failure naming the server's error.
    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Res<Value> {
        let (status, v) = self.call(method, path, body).await?;
        if status.is_success() {
            return Ok(v);
        }
        if self.json && !v.is_null() {
            print_json(&v);
        }
        Err(Failed(match v.get("error").and_then(Value::as_str) {
            Some(e) => e.to_owned(),
            None => format!("{} answered {status}", self.url),
        }))
    }
}

/// An error with its causes, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// Prints rows under a header, columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let mut out = String::new();
        for (i, (c, w)) in cells.into_iter().zip(&width).enumerate() {
            if i + 1 == n {
                out.push_str(&c);
            } else {
                let pad = w.saturating_sub(c.chars().count());
                out.push_str(&c);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// `3725` → `1h2m`.
fn human(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An expiry (Unix seconds) relative to now: `never`, `in 14m0s`, `expired`.
fn expires(v: &Value) -> String {
    match v.as_u64() {
        None => "never".into(),
        Some(t) if t <= now_unix() => "expired".into(),
        Some(t) => format!("in {}", human(t - now_unix())),
    }
}

/// A field of a JSON object (`Null` when absent).
fn at<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}

/// An object without its null fields (options not given).
fn compact(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, x| !x.is_null());
    }
    v
}

/// A JSON value as a table cell.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], |a| a.as_slice())
}

/// Runs `f` on a fresh single-threaded runtime and maps the outcome to an
/// exit status.
fn run_with(f: impl std::future::Future<Output = Res<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed(e)) => {
            eprintln!("portcullis: {e}");
            ExitCode::FAILURE
        }
    }
}

fn client(o: &Opts) -> Res<Client> {
    Client::new(&o.conn, o.cert.cert.clone(), o.cert.key.clone())
}

/// `portcullis sessions …`
pub fn sessions(a: SessionsArgs) -> ExitCode {
    run_with(async move {
        match a.cmd {
            None => list_sessions(&a.opts).await,
            Some(SessionsCmd::List { opts }) => list_sessions(&opts).await,
            Some(SessionsCmd::Kill {
                session,
                identity,
                reason,
                opts,
            }) => {
                let c = client(&opts)?;
                let body = match (session, identity) {
                    (Some(s), _) => json!({"session": s, "reason": reason}),
                    (None, Some(i)) => json!({"identity": i, "reason": reason}),
                    (None, None) => return Err(Failed("give SESSION_ID or --identity".into())),
                };
                let v = c
                    .ok(Method::POST, "/admin/sessions/kill", Some(body))
                    .await?;
                let ended = v.get("ended").and_then(Value::as_u64).unwrap_or(0);
                if c.json {
                    print_json(&v);
                } else if ended > 0 {
                    println!("ended {ended} session{}", if ended == 1 { "" } else { "s" });
                }
                if ended == 0 {
                    return Err(Failed("no such session".into()));
                }
                Ok(())
            }
        }
    })
}

async fn list_sessions(o: &Opts) -> Res<()> {
    let c = client(o)?;
    let v = c.ok(Method::GET, "/admin/sessions", None).await?;
    if c.json {
        print_json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items(&v, "sessions")
        .iter()
        .map(|s| {
            vec![
                cell(at(s, "id")),
                cell(at(s, "identity")),
                human(at(s, "age_secs").as_u64().unwrap_or(0)),
                human(at(s, "idle_secs").as_u64().unwrap_or(0)),
            ]
        })
        .collect();
    table(&["ID", "IDENTITY", "AGE", "IDLE"], &rows);
    Ok(())
}

/// `portcullis revoke …`
pub fn revoke(a: RevokeArgs) -> ExitCode {
    run_with(async move {
        let c = Client::new(&a.conn, a.cert.cert.clone(), a.cert.key.clone())?;
        if a.list {
            let v = c.ok(Method::GET, "/admin/revocations", None).await?;
            if c.json {
                print_json(&v);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = items(&v, "revocations")
                .iter()
                .map(|r| {
                    vec![
                        cell(at(r, "kind")),
                        cell(at(r, "value")),
                        cell(at(r, "by")),
                        expires(at(r, "expires_at")),
                        cell(at(r, "reason")),
                    ]
                })
                .collect();
            table(&["KIND", "VALUE", "BY", "EXPIRES", "REASON"], &rows);
            return Ok(());
        }
        let (key, value) = match (&a.fingerprint, &a.serial, &a.jti, &a.session) {
            (Some(v), ..) => ("fingerprint", v),
            (_, Some(v), ..) => ("serial", v),
            (_, _, Some(v), _) => ("jti", v),
            (.., Some(v)) => ("session", v),
            _ => {
                return Err(Failed(
                    "give --cert, --serial, --jti, --session or --list".into(),
                ))
            }
        };
        let body = compact(json!({ key: value, "reason": a.reason, "ttl_secs": a.ttl }));
        let v = c.ok(Method::POST, "/admin/revocations", Some(body)).await?;
        let ended = v.get("sessions_ended").and_then(Value::as_u64).unwrap_or(0);
        if c.json {
            print_json(&v);
        } else if key != "session" || ended > 0 {
            println!(
                "revoked {}; {ended} session{} ended",
                cell(at(&v, "revoked")),
                if ended == 1 { "" } else { "s" }
            );
        }
        if key == "session" && ended == 0 {
            return Err(Failed("no such session".into()));
        }
        Ok(())
    })
}

/// `portcullis quarantine …`
pub fn quarantine(cmd: QuarantineCmd) -> ExitCode {
    run_with(async move {
        match cmd {
            QuarantineCmd::Add {
                target,
                mode,
                reason,
                ttl,
                opts,
            } => {
                let c = client(&opts)?;
                let (kind, value) = target.kind_value();
                let body = compact(json!({
                    "kind": kind, "value": value, "mode": mode, "reason": reason, "ttl_secs": ttl
                }));
                let v = c.ok(Method::POST, "/admin/quarantines", Some(body)).await?;
                if c.json {
                    print_json(&v);
                } else {
                    let n = v
                        .get("sessions_affected")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    println!(
                        "quarantined {kind}:{value} ({mode}, expires {}); {n} open session{} affected",
                        expires(at(at(&v, "quarantine"), "expires_at")),
                        if n == 1 { "" } else { "s" }
                    );
                }
                Ok(())
            }
            QuarantineCmd::Remove {
                target,
                reason,
                opts,
            } => {
                let c = client(&opts)?;
                let (kind, value) = target.kind_value();
                let body = compact(json!({"kind": kind, "value": value, "reason": reason}));
                let v = c
                    .ok(Method::POST, "/admin/quarantines/remove", Some(body))
                    .await?;
                let removed = v.get("removed").and_then(Value::as_bool) == Some(true);
                if c.json {
                    print_json(&v);
                } else if removed {
                    println!("released {kind}:{value}");
                }
                if !removed {
                    return Err(Failed(format!("no quarantine on {kind}:{value}")));
                }
                Ok(())
            }
            QuarantineCmd::List { opts } => {
                let c = client(&opts)?;
                let v = c.ok(Method::GET, "/admin/quarantines", None).await?;
                if c.json {
                    print_json(&v);
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = items(&v, "quarantines")
                    .iter()
                    .map(|q| {
                        vec![
                            format!(
                                "{}:{}",
                                cell(at(at(q, "target"), "kind")),
                                cell(at(at(q, "target"), "value"))
                            ),
                            cell(at(q, "mode")),
                            cell(at(q, "by")),
                            expires(at(q, "expires_at")),
                            cell(at(q, "reason")),
                        ]
                    })
                    .collect();
                table(&["TARGET", "MODE", "BY", "EXPIRES", "REASON"], &rows);
                Ok(())
            }
        }
    })
}

fn print_killswitch(v: &Value) {
    match v.get("mode").and_then(Value::as_str) {
        Some("off") | None => println!("kill switch: off"),
        Some(mode) => {
            let since = at(v, "since")
                .as_u64()
                .map(|t| format!("{} ago", human(now_unix().saturating_sub(t))))
                .unwrap_or_else(|| "-".into());
            println!(
                "kill switch: {mode} (since {since}, by {}, reason: {})",
                cell(at(v, "by")),
                cell(at(v, "reason"))
            );
        }
    }
}

/// `portcullis killswitch …`
pub fn killswitch(cmd: KillswitchCmd) -> ExitCode {
    run_with(async move {
        let (opts, body) = match cmd {
            KillswitchCmd::Status { opts } => {
                let c = client(&opts)?;
                let v = c.ok(Method::GET, "/admin/killswitch", None).await?;
                if c.json {
                    print_json(&v);
                } else {
                    print_killswitch(&v);
                }
                return Ok(());
            }
            KillswitchCmd::On {
                read_only,
                reason,
                opts,
            } => (
                opts,
                json!({"mode": if read_only { "read-only" } else { "deny-all" }, "reason": reason}),
            ),
            KillswitchCmd::Off { reason, opts } => (opts, json!({"mode": "off", "reason": reason})),
        };
        let c = client(&opts)?;
        let v = c.ok(Method::POST, "/admin/killswitch", Some(body)).await?;
        if c.json {
            print_json(&v);
        } else {
            print_killswitch(&v);
        }
        Ok(())
    })
}

/// `portcullis breakers …`
pub fn breakers(a: BreakersArgs) -> ExitCode {
    run_with(async move {
        let (opts, reset) = match a.cmd {
            None => (a.opts, None),
            Some(BreakersCmd::List { opts }) => (opts, None),
            Some(BreakersCmd::Reset { name, opts }) => (opts, Some(name)),
        };
        let c = client(&opts)?;
        if let Some(name) = reset {
            let v = c
                .ok(
                    Method::POST,
                    "/admin/breakers/reset",
                    Some(json!({"upstream": name})),
                )
                .await?;
            if c.json {
                print_json(&v);
            } else if v.get("reset").and_then(Value::as_bool) == Some(true) {
                println!("breaker of {name} reset (closed)");
            } else {
                println!("breaker of {name} was already closed");
            }
            return Ok(());
        }
        let v = c.ok(Method::GET, "/admin/breakers", None).await?;
        if c.json {
            print_json(&v);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = items(&v, "breakers")
            .iter()
            .map(|b| {
                vec![
                    cell(at(b, "upstream")),
                    cell(at(b, "state")),
                    cell(at(b, "consecutive_failures")),
                    // Fractional seconds: rounded up, never "0s" while open.
                    at(b, "retry_in_secs")
                        .as_f64()
                        .map(|s| human(s.max(0.0).ceil() as u64))
                        .unwrap_or_else(|| "-".into()),
                    cell(at(b, "last_failure")),
                ]
            })
            .collect();
        table(
            &["UPSTREAM", "STATE", "FAILURES", "RETRY IN", "LAST FAILURE"],
            &rows,
        );
        Ok(())
    })
}

/// `portcullis pins …`
pub fn pins(cmd: PinsCmd) -> ExitCode {
    run_with(async move {
        match cmd {
            PinsCmd::List { opts } => {
                let c = client(&opts)?;
                let v = c.ok(Method::GET, "/admin/pins", None).await?;
                if c.json {
                    print_json(&v);
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = items(&v, "pins")
                    .iter()
                    .map(|p| {
                        vec![
                            cell(at(p, "server")),
                            cell(at(p, "tool")),
                            cell(at(p, "status")),
                            cell(at(p, "hash")).chars().take(19).collect(),
                            cell(at(p, "by")),
                        ]
                    })
                    .collect();
                table(&["SERVER", "TOOL", "STATUS", "HASH", "BY"], &rows);
            }
            PinsCmd::Diff { server, tool, opts } => {
                let c = client(&opts)?;
                let q = format!(
                    "/admin/pins/diff?server={}&tool={}",
                    query_escape(&server),
                    query_escape(&tool)
                );
                let v = c.ok(Method::GET, &q, None).await?;
                if c.json {
                    print_json(&v);
                    return Ok(());
                }
                match at(&v, "diff").as_str() {
                    Some(d) if !d.is_empty() => {
                        println!(
                            "{server}/{tool}: pinned {} -> changed {}",
                            cell(at(&v, "pinned_hash")),
                            cell(at(&v, "pending_hash"))
                        );
                        print!("{d}");
                    }
                    _ => println!("{server}/{tool}: unchanged since pinned"),
                }
            }
            PinsCmd::Approve { server, tool, opts } => {
                let c = client(&opts)?;
                let v = c
                    .ok(
                        Method::POST,
                        "/admin/pins/approve",
                        Some(json!({"server": server, "tool": tool})),
                    )
                    .await?;
                if c.json {
                    print_json(&v);
                } else {
                    println!(
                        "approved {server}/{tool}: pinned {}",
                        cell(at(at(&v, "approved"), "hash"))
                    );
                }
            }
        }
        Ok(())
    })
}

/// Percent-encodes a query value (RFC 3986 unreserved kept).
fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `portcullis policy reload`: exit 1 (printing the errors) when the
/// gateway rejected the new set and kept the running one.
pub fn policy_reload(o: Opts) -> ExitCode {
    run_with(async move {
        let c = client(&o)?;
        let (status, v) = c.call(Method::POST, "/admin/policy/reload", None).await?;
        if c.json && !v.is_null() {
            print_json(&v);
        }
        match v.get("reloaded").and_then(Value::as_bool) {
            Some(true) if status.is_success() => {
                if !c.json {
                    println!("policy reloaded: sha256 {}", cell(at(&v, "policy_hash")));
                }
                Ok(())
            }
            Some(_) => {
                if !c.json {
                    let errors = match at(&v, "errors") {
                        Value::String(s) => s.clone(),
                        other => cell(other),
                    };
                    for line in errors.lines() {
                        eprintln!("{line}");
                    }
                }
                Err(Failed(format!(
                    "policy reload rejected; the running set (sha256 {}) is kept",
                    cell(at(&v, "policy_hash"))
                )))
            }
            None => Err(Failed(match v.get("error").and_then(Value::as_str) {
                Some(e) => e.to_owned(),
                None => format!("{} answered {status}", c.url),
            })),
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("1d"), Ok(86_400));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(5), "5s");
        assert_eq!(human(125), "2m5s");
        assert_eq!(human(3725), "1h2m");
        assert_eq!(human(90_000), "1d1h");
    }
}
