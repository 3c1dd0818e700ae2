//! `portcullis serve`: configuration from file and flags, the safe default
//! (authentication required, TLS with a development CA and issuer), the
//! startup banner, and the listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use portcullis_contain::revocation::RevokedKind;
use portcullis_gateway::auth::Authenticator;
use portcullis_gateway::config::{ListenTls, OAuth, SpiffeCfg, TlsMode, UpstreamConfig};
use portcullis_gateway::{server, Config, Gateway};
use portcullis_identity::ca::{self, IssueRequest};
use portcullis_identity::dev_issuer::DevIssuer;
use portcullis_identity::spiffe::{self, SpiffeId};
use portcullis_identity::tls::{self, ClientPolicy, DenyList, ServerTls};
use portcullis_identity::workload::{self, WorkloadError, WorkloadIdentity};

/// The trust domain of the development CA.
const DEV_TRUST_DOMAIN: &str = "portcullis.local";

/// What `serve` was asked on the command line.
pub struct ServeArgs {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--upstream NAME=URL`.
    pub upstreams: Vec<String>,
    /// `--upstream-cmd NAME='CMD ARGS'`.
    pub upstream_cmds: Vec<String>,
    /// `--allow-anonymous-loopback`.
    pub allow_anonymous_loopback: bool,
    /// `--audit-log FILE`.
    pub audit_log: Option<PathBuf>,
    /// `--admin ADDR`.
    pub admin: Option<String>,
}

fn parse_pair(s: &str, flag: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('=') {
        Some((n, v)) if !n.is_empty() && !v.is_empty() => Ok((n.to_owned(), v.to_owned())),
        _ => bail!("{flag} expects NAME=VALUE, got {s:?}"),
    }
}

/// The embedded default upstream: this binary's own demo server over stdio.
fn demo_upstream() -> anyhow::Result<UpstreamConfig> {
    let exe = std::env::current_exe().context("cannot locate the portcullis binary")?;
    Ok(UpstreamConfig::command(
        "demo",
        vec![exe.display().to_string(), "demo-server".into()],
    ))
}

/// The embedded default's segments: the demo's secret reader is
/// confidential, its fetcher can send data out, its note writer writes.
fn demo_segments() -> Vec<portcullis_gateway::segments::SegmentCfg> {
    let seg = |name: &str, label: &str, tool: &str| portcullis_gateway::segments::SegmentCfg {
        name: name.into(),
        labels: vec![label.into()],
        servers: vec![],
        tools: vec![tool.into()],
        ..Default::default()
    };
    vec![
        seg("secrets", "confidential", "demo__read_secret"),
        seg("outbound", "egress", "demo__fetch_url"),
        seg("notes", "write", "demo__write_note"),
    ]
}

/// Files of the development setup, for the banner.
struct Dev {
    state: PathBuf,
    client_dir: PathBuf,
    client_id: String,
    issuer: DevIssuer,
}

/// Issues `out/cert.pem` unless a certificate there is valid for another hour.
fn ensure_cert(
    ca_dir: &Path,
    out: &Path,
    id: &str,
    dns: &[&str],
    ips: &[&str],
) -> anyhow::Result<()> {
    let cert = out.join("cert.pem");
    if let Ok(certs) = tls::load_certs(&cert) {
        let fresh = certs
            .first()
            .and_then(|c| spiffe::validity(c.as_ref()).ok())
            .is_some_and(|(_, not_after)| not_after - tls::now_unix() > 3600);
        if fresh {
            return Ok(());
        }
    }
    let mut req = IssueRequest::new(Some(SpiffeId::parse(id)?));
    req.dns = dns.iter().map(|d| d.to_string()).collect();
    req.ips = ips.iter().filter_map(|i| i.parse().ok()).collect();
    req.ttl = Duration::from_secs(24 * 3600);
    ca::issue(ca_dir, &req, out).with_context(|| format!("issuing {}", cert.display()))?;
    Ok(())
}

/// The development CA under the state folder (`STATE/ca`), created if absent.
fn ensure_dev_ca(state: &Path) -> anyhow::Result<PathBuf> {
    let ca_dir = state.join("ca");
    if !ca_dir.join("ca.pem").exists() {
        ca::init(&ca_dir, false)
            .with_context(|| format!("creating the dev CA in {}", ca_dir.display()))?;
        eprintln!(
            "portcullis: created a development CA in {}",
            ca_dir.display()
        );
    }
    Ok(ca_dir)
}

/// The safe default with no config: TLS with a development CA under the
/// state folder, client certificates optional, bearer tokens from the
/// gateway's own development issuer, authentication required.
async fn dev_setup(cfg: &mut Config) -> anyhow::Result<Dev> {
    let state = match &cfg.state_dir {
        Some(s) => s.clone(),
        None => portcullis_identity::paths::state_dir()?,
    };
    let ca_dir = ensure_dev_ca(&state)?;
    let gw_dir = state.join("gateway");
    ensure_cert(
        &ca_dir,
        &gw_dir,
        &format!("spiffe://{DEV_TRUST_DOMAIN}/gateway"),
        &["localhost"],
        &["127.0.0.1", "::1"],
    )?;
    let client_dir = state.join("dev-client");
    let client_id = format!("spiffe://{DEV_TRUST_DOMAIN}/agent/dev");
    ensure_cert(&ca_dir, &client_dir, &client_id, &[], &[])?;
    let issuer = DevIssuer::load_or_create(&state.join("dev-issuer")).await?;
    if cfg.audit.path.is_none() {
        // The embedded default records every decision too.
        cfg.audit.path = Some(state.join("audit").join("audit.jsonl"));
    }
    cfg.listen.tls = ListenTls {
        mode: TlsMode::Optional,
        cert: Some(gw_dir.join("cert.pem")),
        key: Some(gw_dir.join("key.pem")),
        client_ca: vec![ca_dir.join("ca.pem")],
        trust_domains: vec![DEV_TRUST_DOMAIN.into()],
        require_spiffe: true,
        crl: Vec::new(),
        deny_list: None,
    };
    cfg.auth.oauth = Some(OAuth {
        issuer: issuer.issuer().to_owned(),
        jwks: issuer.jwks_path().display().to_string(),
        authorization_servers: vec![issuer.issuer().to_owned()],
        required_scopes: Vec::new(),
        scopes_supported: vec!["mcp".into()],
        leeway_secs: 60,
        ca_bundle: None,
        min_refetch_secs: 30,
        introspection: None,
    });
    Ok(Dev {
        state,
        client_dir,
        client_id,
        issuer,
    })
}

/// Keeps the deny list in step with its file (re-read when it changes);
/// certificates revoked through the admin API (`stored`) stay refused.
fn watch_deny_list(
    path: PathBuf,
    deny: Arc<DenyList>,
    stored: impl Fn() -> Vec<String> + Send + 'static,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("listen.tls.deny_list: {}", path.display()))?;
    deny.replace(DenyList::parse(&text));
    for v in stored() {
        deny.add(&v);
    }
    tokio::spawn(async move {
        let mut last = tokio::fs::metadata(&path)
            .await
            .and_then(|m| m.modified())
            .ok();
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = tokio::fs::metadata(&path)
                .await
                .and_then(|m| m.modified())
                .ok();
            if now != last {
                last = now;
                match tokio::fs::read_to_string(&path).await {
                    Ok(t) => {
                        deny.replace(DenyList::parse(&t));
                        for v in stored() {
                            deny.add(&v);
                        }
                        tracing::info!(entries = deny.len(), "deny list reloaded");
                    }
                    // Keep the last list: a missing file must not un-revoke.
                    Err(e) => {
                        tracing::warn!(error = %e, "deny list unreadable; keeping the previous one")
                    }
                }
            }
        }
    });
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Runs the gateway until SIGINT/SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p).with_context(|| format!("config {}", p.display()))?,
        None => Config::empty(),
    };
    if let Some(l) = args.listen {
        cfg.listen.addr = l;
    }
    for u in args.upstreams {
        let (name, url) = parse_pair(&u, "--upstream")?;
        cfg.upstreams.retain(|x| x.name != name);
        cfg.upstreams.push(UpstreamConfig::http(&name, &url));
    }
    for u in args.upstream_cmds {
        let (name, cmd) = parse_pair(&u, "--upstream-cmd")?;
        let argv = shlex::split(&cmd)
            .filter(|a| !a.is_empty())
            .with_context(|| format!("--upstream-cmd {name}: cannot split {cmd:?}"))?;
        cfg.upstreams.retain(|x| x.name != name);
        cfg.upstreams.push(UpstreamConfig::command(&name, argv));
    }
    if cfg.upstreams.is_empty() {
        cfg.upstreams.push(demo_upstream()?);
        if cfg.segments.is_empty() {
            cfg.segments = demo_segments();
        }
    }
    if args.allow_anonymous_loopback {
        cfg.auth.allow_anonymous_loopback = true;
    }
    if let Some(p) = args.audit_log {
        cfg.audit.path = Some(p);
    }
    if let Some(addr) = args.admin {
        match &mut cfg.admin {
            Some(a) => a.addr = addr,
            None => {
                cfg.admin = Some(portcullis_gateway::config::AdminCfg {
                    addr,
                    cert: None,
                    key: None,
                    client_ca: Vec::new(),
                    identities: Vec::new(),
                    console: None,
                    console_login_link: None,
                })
            }
        }
    }
    let dev = if args.config.is_none() && !cfg.auth.allow_anonymous_loopback {
        Some(dev_setup(&mut cfg).await?)
    } else {
        None
    };
    cfg.validate()?;
    // The gateway's identity from the SPIFFE Workload API, started once and
    // shared by the listeners and upstream mTLS (through `cfg.spiffe`).
    // Without a first SVID in time, serve stops here: nothing is served.
    let workload = match &mut cfg.spiffe {
        Some(s) => {
            let w = start_workload(s).await?;
            s.started = Some(w.clone());
            Some(w)
        }
        None => None,
    };
    let addr: SocketAddr = cfg.listen.addr.parse().context("listen.addr")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let path = cfg.listen.path.clone();
    let tls_on = cfg.listen.tls.mode != TlsMode::Off;
    let scheme = if tls_on { "https" } else { "http" };
    let url = format!("{scheme}://{bound}{path}");
    let resource = cfg.auth.resource.clone().unwrap_or_else(|| url.clone());

    // Containment state (quarantines, revocations, kill switch) from the
    // store, before anything is served.
    let contain =
        portcullis_gateway::contain::open_state(&cfg, dev.as_ref().map(|d| d.state.as_path()))
            .await
            .map_err(anyhow::Error::msg)?;
    let deny = Arc::new(DenyList::default());
    let revoked_certs = {
        let c = contain.clone();
        move || {
            c.revocations
                .list()
                .into_iter()
                .filter(|r| r.kind == RevokedKind::Certificate)
                .map(|r| r.value)
                .collect::<Vec<_>>()
        }
    };
    for v in revoked_certs() {
        deny.add(&v);
    }
    if let Some(p) = &cfg.listen.tls.deny_list {
        watch_deny_list(p.clone(), deny.clone(), revoked_certs)?;
    }
    let tls_config = if tls_on {
        let t = &cfg.listen.tls;
        let policy = Arc::new(ClientPolicy {
            trust_domains: t.trust_domains.clone(),
            require_spiffe: t.require_spiffe,
            deny: deny.clone(),
        });
        Some(listener_tls(t, policy, workload.as_ref())?)
    } else {
        None
    };
    let deny_for_admin = deny.clone();
    let monitor = Arc::new(
        portcullis_gateway::monitor::Monitor::from_config(&cfg).map_err(anyhow::Error::msg)?,
    );
    let restored = portcullis_gateway::contain::restore_baselines(&contain, &monitor.risk).await;
    if restored > 0 {
        tracing::info!(identities = restored, "risk baselines restored");
    }
    portcullis_gateway::contain::spawn_baseline_saver(
        contain.clone(),
        monitor.clone(),
        Duration::from_secs(60),
    );
    let pep = Arc::new(
        portcullis_gateway::pep::Pep::with_monitor(&cfg, monitor.clone())
            .map_err(|e| anyhow::anyhow!("policy: {e}"))?
            .with_containment(contain.clone()),
    );
    pep.watch();
    let pins = pep.pins.load(&contain).await;
    pep.pins.persist(contain.store().clone());
    portcullis_gateway::pins::follow(&pep);
    if pins > 0 {
        tracing::info!(pins, "tool pins loaded");
    }
    if !monitor.auditing() {
        tracing::warn!(
            "no audit log configured ([audit] path or --audit-log): decisions go to the log only"
        );
    }
    let auth = Arc::new(
        Authenticator::new(&cfg, resource.clone(), deny, bound.ip().is_loopback())
            .map_err(anyhow::Error::msg)?
            .with_monitor(monitor.clone())
            .with_containment(contain.clone()),
    );
    if cfg.auth.oauth.is_none()
        && cfg.listen.tls.client_ca.is_empty()
        && workload.is_none()
        && !auth.anonymous_ok()
    {
        tracing::warn!("no way to authenticate is configured (no [auth.oauth], no listen.tls.client_ca): every request will be refused");
    }
    let admin = match cfg.admin.clone() {
        Some(a) => Some(
            admin_listener(
                a,
                cfg.state_dir.as_deref(),
                deny_for_admin.clone(),
                workload.as_ref(),
            )
            .await?,
        ),
        None => None,
    };
    let gw = Gateway::new(cfg, &[], true, pep);
    if let Some(a) = admin {
        let addr = a.listener.local_addr()?;
        let app = portcullis_gateway::admin::router_with_console(
            gw.clone(),
            deny_for_admin.clone(),
            a.identities,
            a.console,
        );
        tokio::spawn(portcullis_gateway::admin::serve(
            a.listener,
            a.tls,
            app.router,
            portcullis_gateway::listener::ConnLimits::from(&gw.cfg.limits),
            Some(audit_refused_certificates(&gw)),
        ));
        eprintln!("portcullis: admin API on https://{addr} (mTLS; {})", a.note);
        if a.console.is_some() {
            // The link must name an address a browser can reach.
            let shown = match addr.ip() {
                std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
                    SocketAddr::from(([127, 0, 0, 1], addr.port()))
                }
                std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
                }
                _ => addr,
            };
            match &app.login_token {
                Some(t) => eprintln!(
                    "portcullis: console on https://{shown}/console/ (one-time login: https://{shown}/console/login?token={t})"
                ),
                None => eprintln!(
                    "portcullis: console on https://{shown}/console/ (admin client certificate required)"
                ),
            }
        }
    }
    if let Some(h) = &gw.cfg.health {
        let l = tokio::net::TcpListener::bind(&h.addr)
            .await
            .map_err(|e| anyhow::anyhow!("health.addr {}: {e}", h.addr))?;
        let addr = l.local_addr()?;
        tokio::spawn(portcullis_gateway::listener::serve(
            l,
            None,
            portcullis_gateway::admin::health_router(gw.clone()),
            portcullis_gateway::listener::ConnLimits::from(&gw.cfg.limits),
            None,
            std::future::pending::<()>(),
        ));
        eprintln!("portcullis: health probes on http://{addr} (/healthz, /readyz)");
    }
    server::spawn_sweeper(gw.clone());
    let app = server::router(gw.clone(), auth.clone(), bound);
    tracing::info!(upstreams = ?gw.upstream_names(), "gateway ready");
    eprintln!("listening on {url}");
    if let Some(d) = &dev {
        banner(d, &url, &resource);
    } else if auth.anonymous_ok() {
        eprintln!("portcullis: unauthenticated access allowed on loopback (--allow-anonymous-loopback); for development only");
    }
    let limits = portcullis_gateway::listener::ConnLimits::from(&gw.cfg.limits);
    let draining = {
        let gw = gw.clone();
        async move {
            shutdown_signal().await;
            // Readiness fails first; new requests are still served while
            // load balancers take the replica out.
            gw.start_draining();
            let delay = Duration::from_millis(gw.cfg.limits.drain_delay_ms);
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "shutting down: draining"
            );
            tokio::time::sleep(delay).await;
        }
    };
    let refused = Some(audit_refused_certificates(&gw));
    portcullis_gateway::listener::serve(listener, tls_config, app, limits, refused, draining).await;
    // No new connections; calls in flight may finish.
    let left = gw
        .drained(Duration::from_millis(gw.cfg.limits.shutdown_timeout_ms))
        .await;
    if left > 0 {
        tracing::warn!(
            calls = left,
            "shutdown timeout: calls still in flight are cut"
        );
    }
    for c in gw.sessions.all() {
        portcullis_gateway::gateway::close_streams(&c);
    }
    gw.shutdown();
    match portcullis_gateway::contain::save_baselines(&contain, &monitor.risk).await {
        Ok(n) if n > 0 => tracing::info!(identities = n, "risk baselines saved"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "risk baselines not saved at shutdown"),
    }
    // A shared store away: give queued writes (containment actions taken
    // here) a last chance to be stored before they go with the process.
    if !contain.store().flush(Duration::from_secs(5)).await {
        let left = contain.store().status().pending_writes;
        tracing::error!(
            writes = left,
            "state store unreachable at exit: queued writes not stored"
        );
    }
    monitor.shutdown();
    // Give stdio children their grace period.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

/// The admin listener, ready to serve.
struct AdminListener {
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    identities: portcullis_gateway::admin::AdminIdentities,
    /// For the start-up line: where the admin credential is, or who may in.
    note: String,
    /// The console, if served, and whether its login link is on.
    console: Option<portcullis_gateway::console::Options>,
}

/// The admin client identity of the development default.
const DEV_ADMIN_ID: &str = "spiffe://portcullis.local/admin/cli";

/// Binds the admin listener and builds its TLS (client certificates
/// required). Without `cert`, `key` and `client_ca` in `[admin]`, the SVID
/// and bundles of `[spiffe]` when it is set; otherwise the development CA
/// under the state folder issues the listener's certificate (`STATE/admin`)
/// and an admin client certificate (`STATE/admin-client`, SPIFFE ID
/// `spiffe://portcullis.local/admin/cli`), admitted by default.
async fn admin_listener(
    mut a: portcullis_gateway::config::AdminCfg,
    state_dir: Option<&Path>,
    deny: Arc<DenyList>,
    workload: Option<&WorkloadIdentity>,
) -> anyhow::Result<AdminListener> {
    let addr: SocketAddr = a.addr.parse().context("admin.addr")?;
    let files = matches!(
        (&a.cert, &a.key, a.client_ca.is_empty()),
        (Some(_), Some(_), false)
    );
    if let (false, Some(w)) = (files, workload) {
        let identities = portcullis_gateway::admin::AdminIdentities::parse(&a.identities)
            .map_err(|e| anyhow::anyhow!("admin.identities: {e}"))?;
        if identities.is_empty() {
            bail!("admin.identities: with [spiffe], name at least one admin SPIFFE ID");
        }
        let policy = Arc::new(ClientPolicy {
            trust_domains: Vec::new(),
            require_spiffe: true,
            deny,
        });
        let console = console_options(&a, false);
        let tls = w
            .server_config(client_cert_mode(console), policy, Vec::new())
            .context("admin listener TLS from the SPIFFE Workload API")?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (admin)"))?;
        return Ok(AdminListener {
            listener,
            tls,
            identities,
            note: format!(
                "SVID of {} from the SPIFFE Workload API; admin identities: {}",
                w.current().spiffe_id(),
                a.identities.join(", ")
            ),
            console,
        });
    }
    let console = console_options(&a, !files);
    let note = match (&a.cert, &a.key, a.client_ca.is_empty()) {
        (Some(_), Some(_), false) => format!("admin identities: {}", a.identities.join(", ")),
        _ => {
            let state = match state_dir {
                Some(s) => s.to_owned(),
                None => portcullis_identity::paths::state_dir()?,
            };
            let ca_dir = ensure_dev_ca(&state)?;
            let server_dir = state.join("admin");
            ensure_cert(
                &ca_dir,
                &server_dir,
                &format!("spiffe://{DEV_TRUST_DOMAIN}/gateway/admin"),
                &["localhost"],
                &["127.0.0.1", "::1"],
            )?;
            let client_dir = state.join("admin-client");
            ensure_cert(&ca_dir, &client_dir, DEV_ADMIN_ID, &[], &[])?;
            a.cert = Some(server_dir.join("cert.pem"));
            a.key = Some(server_dir.join("key.pem"));
            a.client_ca = vec![ca_dir.join("ca.pem")];
            if a.identities.is_empty() {
                a.identities = vec![DEV_ADMIN_ID.to_owned()];
            }
            format!("admin client certificate in {}", client_dir.display())
        }
    };
    let identities = portcullis_gateway::admin::AdminIdentities::parse(&a.identities)
        .map_err(|e| anyhow::anyhow!("admin.identities: {e}"))?;
    let (Some(cert), Some(key)) = (a.cert, a.key) else {
        bail!("admin.cert: the admin listener needs both cert and key");
    };
    let policy = Arc::new(ClientPolicy {
        trust_domains: Vec::new(),
        require_spiffe: true,
        deny,
    });
    let tls = tls::server_config(
        &ServerTls {
            mode: client_cert_mode(console),
            cert,
            key,
            client_ca: a.client_ca,
            crl: Vec::new(),
        },
        policy,
    )
    .context("admin listener TLS")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (admin)"))?;
    Ok(AdminListener {
        listener,
        tls,
        identities,
        note,
        console,
    })
}

/// The console's options from `[admin]`: `dev_default` says the listener's
/// certificates come from the development CA (the login link's default).
fn console_options(
    a: &portcullis_gateway::config::AdminCfg,
    dev_default: bool,
) -> Option<portcullis_gateway::console::Options> {
    a.console_on()
        .then(|| portcullis_gateway::console::Options {
            login_link: a.login_link_on(dev_default),
        })
}

/// Client certificates are required on the admin listener, except with the
/// console's login link: a browser without one must reach the login page
/// (every other route still asks for an admin certificate or, under
/// `/console/`, the session the link opened).
fn client_cert_mode(console: Option<portcullis_gateway::console::Options>) -> TlsMode {
    if console.is_some_and(|c| c.login_link) {
        TlsMode::Optional
    } else {
        TlsMode::Required
    }
}

/// Starts the Workload API identity of `[spiffe]`: waits for the first
/// SVID (at most `first_svid_timeout_ms`) or fails naming the socket.
async fn start_workload(s: &SpiffeCfg) -> anyhow::Result<WorkloadIdentity> {
    let w = WorkloadIdentity::start(&s.to_workload())
        .await
        .map_err(|e| match e {
            WorkloadError::NoEndpoint => anyhow::anyhow!(
                "spiffe.workload_api: not set, and ${} is not set either",
                workload::ENDPOINT_ENV
            ),
            WorkloadError::Config { key, why } => anyhow::anyhow!("spiffe.{key}: {why}"),
            other => anyhow::anyhow!("spiffe.workload_api: {other}; not starting without it"),
        })?;
    let cur = w.current();
    eprintln!(
        "portcullis: identity {} from the SPIFFE Workload API at {} (certificate sha256 {}, rotated without restart)",
        cur.spiffe_id(),
        w.endpoint(),
        cur.fingerprint()
    );
    Ok(w)
}

/// The client-facing listener's TLS. Files given explicitly win: `cert`
/// and `key` for the served certificate, `client_ca` (and `crl`) for
/// client certificates. What no file gives comes from the Workload API
/// when `[spiffe]` is set — the current SVID served on every handshake,
/// client certificates checked against the current bundle of their trust
/// domain — with TLS session resumption off, so every connection sees the
/// current SVID and bundles.
fn listener_tls(
    t: &ListenTls,
    policy: Arc<ClientPolicy>,
    workload: Option<&WorkloadIdentity>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let files = match (&t.cert, &t.key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => bail!("listen.tls.cert: set both cert and key, or neither"),
    };
    let w = match workload {
        Some(w) if files.is_none() || t.client_ca.is_empty() => w,
        _ => {
            let Some((cert, key)) = files else {
                bail!("listen.tls.cert: TLS needs both cert and key (or a [spiffe] section)");
            };
            return Ok(tls::server_config(
                &ServerTls {
                    mode: t.mode,
                    cert,
                    key,
                    client_ca: t.client_ca.clone(),
                    crl: t.crl.clone(),
                },
                policy,
            )?);
        }
    };
    let crls = tls::load_crls(&t.crl)?;
    let verifier = if t.client_ca.is_empty() {
        w.client_cert_verifier(t.mode, policy, crls)?
    } else {
        let roots = Arc::new(tls::load_roots(&t.client_ca)?);
        tls::client_verifier_from_roots(roots, crls, t.mode, policy)?
    };
    let builder = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("listener TLS: {e}"))?
        .with_client_cert_verifier(verifier);
    let mut sc = match files {
        Some((cert, key)) => builder
            .with_single_cert(tls::load_certs(&cert)?, tls::load_key(&key)?)
            .map_err(|e| anyhow::anyhow!("listen.tls.cert: {e}"))?,
        None => builder.with_cert_resolver(w.server_cert_resolver()),
    };
    // No resumption: a resumed session would skip the current bundle and
    // keep the SVID of its first handshake.
    sc.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    sc.send_tls13_tickets = 0;
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(sc))
}

fn banner(d: &Dev, url: &str, resource: &str) {
    let token = d.issuer.mint(
        "dev-user",
        resource,
        &["mcp"],
        Duration::from_secs(24 * 3600),
    );
    let ca = d.state.join("ca");
    let cert = d.client_dir.join("cert.pem");
    let key = d.client_dir.join("key.pem");
    eprintln!(
        "portcullis: authentication required (no config: development CA and token issuer in {state})
  CA bundle (trust it):  {ca_pem}
  client certificate:    {cert} (key {key}; {id}; valid 24 h)
  dev bearer token:      {token}
                         (valid 24 h, audience {resource})
  try:  curl --cacert {ca_pem} --cert {cert} --key {key} -H 'Authorization: Bearer <token>' \\
          -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \\
          -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{{\"protocolVersion\":\"2025-11-25\",\"capabilities\":{{}},\"clientInfo\":{{\"name\":\"curl\",\"version\":\"1\"}}}}}}' {url}
  another client:  portcullis cert issue --ca {ca_dir} --spiffe-id spiffe://{DEV_TRUST_DOMAIN}/agent/NAME --out DIR
  local development without any of this:  portcullis serve --allow-anonymous-loopback",
        state = d.state.display(),
        ca_pem = ca.join("ca.pem").display(),
        cert = cert.display(),
        key = key.display(),
        id = d.client_id,
        ca_dir = ca.display(),
    );
}

/// A certificate refused in a TLS handshake becomes an `auth_failure`
/// audit record (class `certificate_refused`), like every other failed
/// authentication.
fn audit_refused_certificates(
    gw: &Arc<portcullis_gateway::Gateway>,
) -> portcullis_gateway::listener::CertRefused {
    let gw = gw.clone();
    Arc::new(move |remote, why| {
        gw.pep
            .monitor
            .auth_failure(&why, "certificate_refused", &remote.to_string(), 0);
    })
}
