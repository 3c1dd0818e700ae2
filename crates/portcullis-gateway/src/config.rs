//! `portcullis.toml`: listeners, upstreams, timeouts and limits, validated at
//! load with errors that name the offending key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use std::path::PathBuf;

pub use portcullis_identity::tls::TlsMode;
use serde::Deserialize;
use thiserror::Error;

/// A configuration that failed to load; the message names the key.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// TOML syntax or type error (the parser's message names the key).
    #[error("{0}")]
    Syntax(String),
    /// A value that parsed but is not acceptable.
    #[error("{key}: {why}")]
    Invalid {
        /// Dotted path of the key.
        key: String,
        /// Why it was refused.
        why: String,
    },
}

fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        why: why.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The client-facing listener.
    #[serde(default)]
    pub listen: Listen,
    /// Size, depth and time bounds.
    #[serde(default)]
    pub limits: Limits,
    /// The MCP servers behind the gateway.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    /// Who may call, and how they prove it.
    #[serde(default)]
    pub auth: Auth,
    /// Where the gateway keeps its state (dev CA, dev issuer key).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// The admin listener (health, session and certificate revocation).
    #[serde(default)]
    pub admin: Option<AdminCfg>,
    /// A plain-HTTP listener answering only `/healthz` and `/readyz`, for
    /// probes that cannot present an admin client certificate (kubelet).
    #[serde(default)]
    pub health: Option<HealthCfg>,
    /// Micro-segments: groups of servers, tools, resources and prompts with labels.
    #[serde(default, rename = "segment")]
    pub segments: Vec<crate::segments::SegmentCfg>,
    /// The Cedar policy set.
    #[serde(default)]
    pub policy: PolicyCfg,
    /// The tamper-evident audit log.
    #[serde(default)]
    pub audit: crate::monitor::AuditCfg,
    /// Weights and half-lives of the behavioural risk score.
    #[serde(default)]
    pub risk: portcullis_monitor::risk::RiskConfig,
    /// Breach containment: rate limits, concurrency, breakers, automatic quarantine.
    #[serde(default)]
    pub containment: crate::contain::ContainCfg,
    /// Where containment state persists.
    #[serde(default)]
    pub store: crate::contain::StoreCfg,
    /// Tool pinning against rug-pulls.
    #[serde(default)]
    pub pinning: crate::pins::PinCfg,
    /// Content inspection: poisoning, shadowing, DLP, injection markers.
    #[serde(default)]
    pub inspection: crate::inspection::InspectionCfg,
    /// The gateway's own identity (X.509-SVID and trust bundles) from the
    /// SPIFFE Workload API, for the listeners and upstream mTLS that name
    /// no certificate files.
    #[serde(default)]
    pub spiffe: Option<SpiffeCfg>,
}

/// `[spiffe]`: where the SPIFFE Workload API (a SPIRE agent's socket) is and
/// how to follow it; see [`portcullis_identity::workload`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpiffeCfg {
    /// The agent's socket, `unix:///run/spire/agent.sock` (a bare absolute
    /// path counts as `unix://PATH`); unset: `$SPIFFE_ENDPOINT_SOCKET`.
    pub workload_api: Option<String>,
    /// The trust domain the gateway's own SVID must belong to.
    pub trust_domain: Option<String>,
    /// Picks the SVID with this agent hint when several are issued.
    pub hint: Option<String>,
    /// How long `serve` waits for the first SVID before refusing to start.
    pub first_svid_timeout_ms: u64,
    /// First reconnect delay after the agent goes away (doubles each try).
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay.
    pub reconnect_max_ms: u64,
    /// The running identity, set by `portcullis serve` once the first SVID
    /// has arrived (never read from the file); upstream mTLS takes it here.
    #[serde(skip)]
    pub started: Option<portcullis_identity::workload::WorkloadIdentity>,
}

impl Default for SpiffeCfg {
    fn default() -> Self {
        let w = portcullis_identity::workload::WorkloadCfg::default();
        SpiffeCfg {
            workload_api: w.socket,
            trust_domain: w.trust_domain,
            hint: w.hint,
            first_svid_timeout_ms: w.first_svid_timeout_ms,
            reconnect_min_ms: w.reconnect_min_ms,
            reconnect_max_ms: w.reconnect_max_ms,
            started: None,
        }
    }
}

impl SpiffeCfg {
    /// The settings as the identity crate takes them.
    pub fn to_workload(&self) -> portcullis_identity::workload::WorkloadCfg {
        portcullis_identity::workload::WorkloadCfg {
            socket: self.workload_api.clone(),
            trust_domain: self.trust_domain.clone(),
            hint: self.hint.clone(),
            first_svid_timeout_ms: self.first_svid_timeout_ms,
            reconnect_min_ms: self.reconnect_min_ms,
            reconnect_max_ms: self.reconnect_max_ms,
        }
    }

    /// Checks the settings; errors name the key (`spiffe.workload_api`, …).
    /// An absent `workload_api` is not an error here: `$SPIFFE_ENDPOINT_SOCKET`
    /// is read when `serve` starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use portcullis_identity::workload::WorkloadError;
        let w = self.to_workload();
        if let Some(api) = &self.workload_api {
            if let Err(e) = w.endpoint() {
                let why = match e {
                    WorkloadError::BadEndpoint { why, .. } => why,
                    other => other.to_string(),
                };
                return Err(invalid("spiffe.workload_api", format!("{api:?}: {why}")));
            }
        }
        w.validate().map_err(|e| match e {
            WorkloadError::Config { key, why } => invalid(format!("spiffe.{key}"), why),
            other => invalid("spiffe", other.to_string()),
        })
    }
}

/// `[health]`: the probe listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCfg {
    /// Where it listens, e.g. `0.0.0.0:8790` (port 0: any free port).
    pub addr: String,
}

/// Where the Cedar policies come from.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyCfg {
    /// Policy files (`.cedar`); empty: the default pack shipped with Portcullis.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// Schema file; default: the schema shipped with Portcullis.
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// Labels whose reading taints a session (default: `confidential`).
    #[serde(default)]
    pub taint_labels: Vec<String>,
    /// Rates for the `@rate_class("name")` obligation, per principal.
    #[serde(default)]
    pub rate_classes: std::collections::BTreeMap<String, RateClass>,
}

/// A rate a policy can put a principal's calls under.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateClass {
    /// Sustained calls per minute.
    pub per_minute: u32,
    /// Calls allowed in a burst above the sustained rate.
    #[serde(default = "default_burst")]
    pub burst: u32,
}

fn default_burst() -> u32 {
    1
}

/// The admin listener: always TLS, with client certificates required and
/// only the `identities` admitted. Without `cert`, `key` and `client_ca`,
/// `serve` uses its development CA under the state folder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminCfg {
    /// Address, e.g. `127.0.0.1:8788` (any address: the listener is mTLS).
    pub addr: String,
    /// The admin listener's certificate chain (PEM).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Trust bundles for admin client certificates.
    #[serde(default)]
    pub client_ca: Vec<PathBuf>,
    /// SPIFFE IDs allowed to administer; a trailing `/*` admits every ID
    /// under that path (`spiffe://example.org/admin/*`).
    #[serde(default)]
    pub identities: Vec<String>,
    /// Serve the operations console under `/console/` (default: on).
    #[serde(default)]
    pub console: Option<bool>,
    /// Print a one-time console login link at start-up; the listener then
    /// accepts TLS clients without a certificate (only `/healthz`,
    /// `/readyz` and the console's login and assets answer them).
    /// Default: on only with the development CA's certificates.
    #[serde(default)]
    pub console_login_link: Option<bool>,
}

impl AdminCfg {
    /// Whether the console is served.
    pub fn console_on(&self) -> bool {
        self.console.unwrap_or(true)
    }

    /// Whether the login link is on, given whether the listener's
    /// certificates come from the development CA.
    pub fn login_link_on(&self, dev_default: bool) -> bool {
        self.console_on() && self.console_login_link.unwrap_or(dev_default)
    }
}

/// TLS on the client-facing listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenTls {
    /// `off` (plain HTTP, loopback only), `optional` or `required` (mTLS).
    #[serde(default)]
    pub mode: TlsMode,
    /// The gateway's certificate chain (PEM).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The gateway's private key (PEM).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Trust bundles for client certificates.
    #[serde(default)]
    pub client_ca: Vec<PathBuf>,
    /// SPIFFE trust domains accepted in client certificates (empty: any).
    #[serde(default)]
    pub trust_domains: Vec<String>,
    /// Whether a client certificate must carry a SPIFFE ID.
    #[serde(default = "yes")]
    pub require_spiffe: bool,
    /// CRL files (PEM) checked for client certificates.
    #[serde(default)]
    pub crl: Vec<PathBuf>,
    /// Deny list of certificate fingerprints/serials, re-read when it changes.
    #[serde(default)]
    pub deny_list: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

impl Default for ListenTls {
    fn default() -> Self {
        ListenTls {
            mode: TlsMode::Off,
            cert: None,
            key: None,
            client_ca: Vec::new(),
            trust_domains: Vec::new(),
            require_spiffe: yes(),
            crl: Vec::new(),
            deny_list: None,
        }
    }
}

/// Which proofs of identity a request must carry.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthRequire {
    /// A verified client certificate or a valid bearer token.
    #[default]
    Any,
    /// A valid bearer token.
    Token,
    /// A verified client certificate.
    Certificate,
    /// Both: workload (certificate) and user (token) identity.
    Strict,
}

/// Authentication settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// Proofs required on every request.
    #[serde(default)]
    pub require: AuthRequire,
    /// Let unauthenticated clients in — only on a loopback listener.
    #[serde(default)]
    pub allow_anonymous_loopback: bool,
    /// The gateway's canonical resource URI (token audience, RFC 8707);
    /// default: the listener's URL.
    #[serde(default)]
    pub resource: Option<String>,
    /// Absolute lifetime of a handshake-era session.
    #[serde(default = "default_session_lifetime")]
    pub session_lifetime_secs: u64,
    /// OAuth 2.1 bearer tokens.
    #[serde(default)]
    pub oauth: Option<OAuth>,
    /// Signed device-posture assertions.
    #[serde(default)]
    pub posture: Option<PostureCfg>,
}

fn default_session_lifetime() -> u64 {
    24 * 3600
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            require: AuthRequire::Any,
            allow_anonymous_loopback: false,
            resource: None,
            session_lifetime_secs: default_session_lifetime(),
            oauth: None,
            posture: None,
        }
    }
}

/// An OAuth 2.1 authorization server whose tokens the gateway accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth {
    /// Expected `iss`.
    pub issuer: String,
    /// JWKS: a file path or an https URL (http only on loopback).
    pub jwks: String,
    /// Authorization servers listed in the protected resource metadata
    /// (default: the issuer).
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    /// Scopes every token must carry.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Scopes advertised in the metadata.
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    /// Clock skew allowed on `exp`/`nbf` (at most 300).
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// CA bundle for an https JWKS URL.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Fewest seconds between two JWKS fetches for unknown key ids.
    #[serde(default = "default_refetch")]
    pub min_refetch_secs: u64,
    /// RFC 7662 introspection for opaque tokens.
    #[serde(default)]
    pub introspection: Option<Introspection>,
}

fn default_leeway() -> u64 {
    60
}
fn default_refetch() -> u64 {
    30
}

/// An RFC 7662 introspection endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Introspection {
    /// Endpoint URL.
    pub url: String,
    /// The gateway's client id there.
    pub client_id: String,
    /// The gateway's client secret there.
    pub client_secret: String,
}

/// Where device-posture assertions come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostureCfg {
    /// Expected `iss` of posture tokens.
    pub issuer: String,
    /// JWKS of the device-trust issuer (file or URL).
    pub jwks: String,
    /// Older assertions count as unknown.
    #[serde(default = "default_posture_age")]
    pub max_age_secs: u64,
    /// Refuse requests whose posture is unknown.
    #[serde(default)]
    pub required: bool,
}

fn default_posture_age() -> u64 {
    3600
}

/// TLS towards one upstream.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsCfg {
    /// Trust bundle for the upstream's certificate.
    #[serde(default)]
    pub ca: Vec<PathBuf>,
    /// The gateway's client certificate for this upstream (mTLS).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The gateway's client key for this upstream.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The SPIFFE ID the upstream must present.
    #[serde(default)]
    pub spiffe_id: Option<String>,
}

/// An OAuth client-credentials grant the gateway uses for its own token
/// towards an upstream (never the client's token).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCredentials {
    /// Token endpoint.
    pub token_url: String,
    /// The gateway's client id.
    pub client_id: String,
    /// The gateway's client secret.
    pub client_secret: String,
    /// Scope to ask for.
    #[serde(default)]
    pub scope: Option<String>,
    /// Resource indicator (RFC 8707) for the upstream.
    #[serde(default)]
    pub audience: Option<String>,
}

/// Where and how the gateway accepts clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Socket address, e.g. `127.0.0.1:8787` (port 0 picks a free port).
    #[serde(default = "default_addr")]
    pub addr: String,
    /// The MCP endpoint path.
    #[serde(default = "default_path")]
    pub path: String,
    /// Origins allowed to call the endpoint from a browser; an `Origin`
    /// header outside this list is refused (DNS-rebinding defence). Empty
    /// means: only loopback origins.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Host header values accepted; empty means: loopback names when the
    /// listener is on loopback, anything otherwise.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// TLS and client certificates.
    #[serde(default)]
    pub tls: ListenTls,
}

fn default_addr() -> String {
    "127.0.0.1:8787".into()
}
fn default_path() -> String {
    "/mcp".into()
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            addr: default_addr(),
            path: default_path(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            tls: ListenTls::default(),
        }
    }
}

/// Bounds that keep one caller from exhausting the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted (bytes); larger gets 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Deepest JSON nesting accepted, checked before parsing.
    #[serde(default = "default_max_depth")]
    pub max_json_depth: usize,
    /// Largest single message read from an upstream (bytes).
    #[serde(default = "default_max_upstream_message")]
    pub max_upstream_message_bytes: usize,
    /// Time an upstream has to answer one call.
    #[serde(default = "default_call_timeout")]
    pub call_timeout_ms: u64,
    /// Time a client session may stay idle before it is dropped.
    #[serde(default = "default_idle")]
    pub session_idle_timeout_secs: u64,
    /// Most client sessions open at once.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Time a client has to send a request's headers. The same clock runs
    /// while a kept-alive connection waits for its next request, so it is
    /// also the idle timeout of a kept-alive connection.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_ms: u64,
    /// Time a client has to finish the TLS handshake.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_ms: u64,
    /// Time the whole request body has to arrive in; slower gets 408.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_ms: u64,
    /// Most connections open at once on a listener; more are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most connections open at once from one client address.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// On SIGTERM, how long `/readyz` answers 503 while new requests are
    /// still served, so a load balancer stops sending first.
    #[serde(default)]
    pub drain_delay_ms: u64,
    /// Then, how long calls in flight may take to finish before the
    /// gateway exits anyway.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_ms: u64,
}

fn default_max_body() -> usize {
    4 * 1024 * 1024
}
fn default_max_depth() -> usize {
    64
}
fn default_max_upstream_message() -> usize {
    16 * 1024 * 1024
}
fn default_call_timeout() -> u64 {
    60_000
}
fn default_idle() -> u64 {
    3600
}
fn default_max_sessions() -> usize {
    10_000
}
fn default_header_timeout() -> u64 {
    10_000
}
fn default_handshake_timeout() -> u64 {
    10_000
}
fn default_body_timeout() -> u64 {
    30_000
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_connections_per_ip() -> usize {
    256
}
fn default_shutdown_timeout() -> u64 {
    30_000
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_max_body(),
            max_json_depth: default_max_depth(),
            max_upstream_message_bytes: default_max_upstream_message(),
            call_timeout_ms: default_call_timeout(),
            session_idle_timeout_secs: default_idle(),
            max_sessions: default_max_sessions(),
            header_timeout_ms: default_header_timeout(),
            handshake_timeout_ms: default_handshake_timeout(),
            body_timeout_ms: default_body_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            drain_delay_ms: 0,
            shutdown_timeout_ms: default_shutdown_timeout(),
        }
    }
}

/// Which protocol revision to speak to an upstream.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamProtocol {
    /// Probe `server/discover`, fall back to `initialize`.
    #[default]
    Auto,
    /// Handshake era only (`initialize`, sessions).
    Handshake,
    /// 2026-07-28 only (stateless).
    #[serde(rename = "2026-07-28")]
    Stateless,
}

/// One MCP server behind the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Short name; client-side tool names are `<name>__<tool>`.
    pub name: String,
    /// Streamable HTTP endpoint.
    #[serde(default)]
    pub url: Option<String>,
    /// Command line of a stdio server the gateway spawns.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Environment given to a stdio server (nothing else is inherited
    /// except the variables in `inherit_env`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of gateway environment variables a stdio server may inherit.
    #[serde(default = "default_inherit")]
    pub inherit_env: Vec<String>,
    /// Working directory of a stdio server.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Client-facing names for this server's tools and prompts, replacing
    /// the `<name>__<tool>` default: `{ original = "new_name" }`.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Revision to speak to this server.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Per-call timeout for this server (overrides `limits.call_timeout_ms`).
    #[serde(default)]
    pub call_timeout_ms: Option<u64>,
    /// Extra HTTP headers sent to this server (the gateway's own credential;
    /// a client's token is never forwarded).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// TLS (and the gateway's client certificate) towards this server.
    #[serde(default)]
    pub tls: Option<UpstreamTlsCfg>,
    /// The gateway's own OAuth token for this server.
    #[serde(default)]
    pub client_credentials: Option<ClientCredentials>,
}

fn default_inherit() -> Vec<String> {
    ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ"]
        .into_iter()
        .map(String::from)
        .collect()
}

impl UpstreamConfig {
    /// An HTTP upstream with defaults (used by `--upstream NAME=URL`).
    pub fn http(name: &str, url: &str) -> Self {
        UpstreamConfig {
            url: Some(url.to_owned()),
            ..UpstreamConfig::blank(name)
        }
    }

    /// A stdio upstream with defaults (used by `--upstream-cmd`).
    pub fn command(name: &str, argv: Vec<String>) -> Self {
        UpstreamConfig {
            command: Some(argv),
            ..UpstreamConfig::blank(name)
        }
    }

    fn blank(name: &str) -> Self {
        UpstreamConfig {
            name: name.to_owned(),
            url: None,
            command: None,
            env: BTreeMap::new(),
            inherit_env: default_inherit(),
            cwd: None,
            rename: BTreeMap::new(),
            protocol: UpstreamProtocol::Auto,
            call_timeout_ms: None,
            headers: BTreeMap::new(),
            tls: None,
            client_credentials: None,
        }
    }
}

impl Config {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// An empty configuration with every default.
    pub fn empty() -> Config {
        Config {
            listen: Listen::default(),
            limits: Limits::default(),
            upstreams: Vec::new(),
            auth: Auth::default(),
            state_dir: None,
            admin: None,
            health: None,
            segments: Vec::new(),
            policy: PolicyCfg::default(),
            audit: crate::monitor::AuditCfg::default(),
            risk: Default::default(),
            containment: Default::default(),
            store: Default::default(),
            pinning: Default::default(),
            inspection: Default::default(),
            spiffe: None,
        }
    }

    /// Checks cross-field rules; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let addr: SocketAddr = self.listen.addr.parse().map_err(|e| {
            invalid(
                "listen.addr",
                format!("{:?} is not a socket address: {e}", self.listen.addr),
            )
        })?;
        let loopback = addr.ip().is_loopback();
        if let Some(h) = &self.health {
            h.addr.parse::<SocketAddr>().map_err(|e| {
                invalid(
                    "health.addr",
                    format!("{:?} is not a socket address: {e}", h.addr),
                )
            })?;
        }
        if let Some(a) = &self.admin {
            a.addr.parse::<SocketAddr>().map_err(|e| {
                invalid(
                    "admin.addr",
                    format!("{:?} is not a socket address: {e}", a.addr),
                )
            })?;
            crate::admin::check_cfg(a).map_err(|(k, e)| invalid(k, e))?;
        }
        if self.audit.path.is_some() {
            self.audit
                .to_audit_config(self.state_dir.as_deref())
                .map_err(|e| match e.split_once(": ") {
                    Some((k, why)) => invalid(k, why),
                    None => invalid("audit", e),
                })?;
        }
        self.inspection
            .validate(&self.segments)
            .map_err(|(k, why)| invalid(k, why))?;
        self.containment
            .validate()
            .map_err(|(k, why)| invalid(k, why))?;
        self.store.validate().map_err(|(k, why)| invalid(k, why))?;
        for name in self.containment.rate.segments.keys() {
            if !self.segments.iter().any(|s| &s.name == name) {
                return Err(invalid(
                    format!("containment.rate.segments.{name}"),
                    "no segment of that name",
                ));
            }
        }
        if self.auth.allow_anonymous_loopback && !loopback {
            return Err(invalid(
                "auth.allow_anonymous_loopback",
                "refused on a non-loopback address",
            ));
        }
        let tls = &self.listen.tls;
        if tls.mode == TlsMode::Off && !loopback {
            return Err(invalid(
                "listen.tls.mode",
                "plain HTTP is allowed on loopback addresses only; set optional or required",
            ));
        }
        // With [spiffe], a listener without cert/key serves the SVID and one
        // without client_ca verifies clients against the Workload API's
        // bundles; files given explicitly win.
        if let Some(s) = &self.spiffe {
            s.validate()?;
        }
        let spiffe = self.spiffe.is_some();
        if tls.mode != TlsMode::Off {
            match (&tls.cert, &tls.key) {
                (Some(_), Some(_)) => {}
                (None, None) if spiffe => {}
                (Some(_), None) | (None, Some(_)) if spiffe => {
                    return Err(invalid(
                        "listen.tls.cert",
                        "set both cert and key, or neither (the SVID from [spiffe])",
                    ))
                }
                _ => return Err(invalid("listen.tls.cert", "TLS needs both cert and key")),
            }
        }
        if tls.mode == TlsMode::Required && tls.client_ca.is_empty() && !spiffe {
            return Err(invalid(
                "listen.tls.client_ca",
                "mode = \"required\" needs a client trust bundle",
            ));
        }
        let needs_cert = matches!(
            self.auth.require,
            AuthRequire::Certificate | AuthRequire::Strict
        );
        if needs_cert && (tls.mode == TlsMode::Off || (tls.client_ca.is_empty() && !spiffe)) {
            return Err(invalid(
                "auth.require",
                "client certificates need listen.tls with client_ca (or [spiffe])",
            ));
        }
        if let Some(a) = &self.admin {
            if spiffe && a.client_ca.is_empty() && a.identities.is_empty() {
                return Err(invalid(
                    "admin.identities",
                    "with [spiffe] the admin listener takes the SVID and bundles from the Workload API; name at least one admin SPIFFE ID (e.g. \"spiffe://example.org/admin/*\")",
                ));
            }
        }
        let needs_token = matches!(self.auth.require, AuthRequire::Token | AuthRequire::Strict);
        if needs_token && self.auth.oauth.is_none() {
            return Err(invalid(
                "auth.require",
                "bearer tokens need an [auth.oauth] section",
            ));
        }
        if let Some(o) = &self.auth.oauth {
            if o.leeway_secs > 300 {
                return Err(invalid("auth.oauth.leeway_secs", "at most 300"));
            }
        }
        let mut seg_names = std::collections::BTreeSet::new();
        for (i, sg) in self.segments.iter().enumerate() {
            if sg.name.is_empty() || !seg_names.insert(sg.name.clone()) {
                return Err(invalid(
                    format!("segment[{i}].name"),
                    format!("{:?} is empty or used twice", sg.name),
                ));
            }
            for srv in &sg.servers {
                if !self.upstreams.iter().any(|u| &u.name == srv) {
                    return Err(invalid(
                        format!("segment[{i}].servers"),
                        format!("no upstream named {srv:?}"),
                    ));
                }
            }
        }
        if !self.listen.path.starts_with('/') {
            return Err(invalid("listen.path", "must start with '/'"));
        }
        let l = &self.limits;
        if l.max_body_bytes < 1024 {
            return Err(invalid("limits.max_body_bytes", "must be at least 1024"));
        }
        if !(2..=10_000).contains(&l.max_json_depth) {
            return Err(invalid(
                "limits.max_json_depth",
                "must be between 2 and 10000",
            ));
        }
        if l.call_timeout_ms == 0 {
            return Err(invalid("limits.call_timeout_ms", "must be positive"));
        }
        for (key, ms) in [
            ("limits.header_timeout_ms", l.header_timeout_ms),
            ("limits.handshake_timeout_ms", l.handshake_timeout_ms),
            ("limits.body_timeout_ms", l.body_timeout_ms),
        ] {
            if ms == 0 {
                return Err(invalid(key, "must be positive"));
            }
        }
        if l.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if l.max_connections_per_ip == 0 {
            return Err(invalid(
                "limits.max_connections_per_ip",
                "must be at least 1",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut client_names = std::collections::BTreeSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let key = |f: &str| format!("upstream[{i}].{f}");
            if u.name.is_empty()
                || !u
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                || u.name.contains("__")
                || u.name.starts_with('_')
                || u.name.ends_with('_')
            {
                return Err(invalid(
                    key("name"),
                    format!("{:?}: use letters, digits, '-' and single '_' (no '__', no leading or trailing '_')", u.name),
                ));
            }
            if !seen.insert(u.name.clone()) {
                return Err(invalid(key("name"), format!("{:?} is used twice", u.name)));
            }
            match (&u.url, &u.command) {
                (Some(_), Some(_)) => {
                    return Err(invalid(key("url"), "set either url or command, not both"))
                }
                (None, None) => return Err(invalid(key("url"), "set url or command")),
                (Some(url), None) => {
                    let ok = url.starts_with("http://") || url.starts_with("https://");
                    if !ok || url.parse::<http::Uri>().is_err() {
                        return Err(invalid(
                            key("url"),
                            format!("{url:?} is not an http(s) URL"),
                        ));
                    }
                }
                (None, Some(cmd)) => {
                    if cmd.first().is_none_or(|c| c.is_empty()) {
                        return Err(invalid(key("command"), "must name a program"));
                    }
                }
            }
            for (orig, new) in &u.rename {
                if new.is_empty() || orig.is_empty() {
                    return Err(invalid(key("rename"), "names must not be empty"));
                }
                if !client_names.insert(new.clone()) {
                    return Err(invalid(
                        format!("upstream[{i}].rename.{orig}"),
                        format!("client name {new:?} is used twice"),
                    ));
                }
            }
            if let Some(t) = &u.tls {
                if u.url.as_deref().is_some_and(|x| x.starts_with("http://")) {
                    return Err(invalid(key("tls"), "TLS settings need an https:// url"));
                }
                if let Some(id) = &t.spiffe_id {
                    portcullis_identity::spiffe::SpiffeId::parse(id)
                        .map_err(|e| invalid(key("tls.spiffe_id"), e.to_string()))?;
                }
            }
            if u.call_timeout_ms == Some(0) {
                return Err(invalid(key("call_timeout_ms"), "must be positive"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programmatic_defaults_match_file_defaults() {
        let a = Config::empty();
        let b = Config::from_toml("").unwrap();
        assert_eq!(a.auth.session_lifetime_secs, b.auth.session_lifetime_secs);
        assert_eq!(a.auth.session_lifetime_secs, 24 * 3600);
        assert_eq!(a.listen.tls.require_spiffe, b.listen.tls.require_spiffe);
        assert_eq!(a.limits.max_body_bytes, b.limits.max_body_bytes);
    }

    #[test]
    fn defaults_with_empty_file() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.listen.addr, "127.0.0.1:8787");
        assert_eq!(c.limits.max_body_bytes, 4 * 1024 * 1024);
        assert!(c.upstreams.is_empty());
    }

    #[test]
    fn parses_upstreams() {
        let c = Config::from_toml(
            r#"
            [listen]
            addr = "127.0.0.1:0"
            [[upstream]]
            name = "docs"
            url = "http://127.0.0.1:3001/mcp"
            [[upstream]]
            name = "local"
            command = ["node", "server.js", "stdio"]
            env = { API_KEY = "x" }
            rename = { echo = "say" }
            "#,
        )
        .unwrap();
        assert_eq!(c.upstreams.len(), 2);
        assert_eq!(
            c.upstreams[1].rename.get("echo").map(String::as_str),
            Some("say")
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[listen]\naddr = \"nope\"", "listen.addr"),
            ("[limits]\nmax_json_depth = 1", "limits.max_json_depth"),
            ("[limits]\nbody_timeout_ms = 0", "limits.body_timeout_ms"),
            (
                "[limits]\nmax_connections_per_ip = 0",
                "limits.max_connections_per_ip",
            ),
            ("[[upstream]]\nname = \"a__b\"\nurl = \"http://x/\"", "upstream[0].name"),
            ("[[upstream]]\nname = \"a\"", "upstream[0].url"),
            ("[[upstream]]\nname = \"a\"\nurl = \"ftp://x\"", "upstream[0].url"),
            ("[[upstream]]\nname = \"a\"\ncommand = []", "upstream[0].command"),
            (
                "[[upstream]]\nname = \"a\"\nurl = \"http://x/\"\n[[upstream]]\nname = \"a\"\nurl = \"http://y/\"",
                "upstream[1].name",
            ),
            ("[listen]\nbogus = 1", "bogus"),
            (
                "[spiffe]\nworkload_api = \"tcp://127.0.0.1:8081\"",
                "spiffe.workload_api",
            ),
            ("[spiffe]\nworkload_api = \"\"", "spiffe.workload_api"),
            ("[spiffe]\ntrust_domain = \"Not A Domain\"", "spiffe.trust_domain"),
            ("[spiffe]\nfirst_svid_timeout_ms = 0", "spiffe.first_svid_timeout_ms"),
            (
                "[spiffe]\nreconnect_min_ms = 500\nreconnect_max_ms = 100",
                "spiffe.reconnect_max_ms",
            ),
            ("[spiffe]\nsocket = \"/x\"", "socket"),
            (
                "[spiffe]\n[listen]\naddr = \"0.0.0.0:8443\"\n[listen.tls]\nmode = \"required\"\ncert = \"c.pem\"",
                "listen.tls.cert",
            ),
            (
                "[spiffe]\n[admin]\naddr = \"127.0.0.1:0\"",
                "admin.identities",
            ),
        ];
        for (text, key) in cases {
            let e = Config::from_toml(text).unwrap_err().to_string();
            assert!(
                e.contains(key),
                "{text:?} gave {e:?}, expected it to name {key}"
            );
        }
    }

    #[test]
    fn spiffe_section_maps_onto_the_workload_settings() {
        let c = Config::from_toml(
            r#"
            [spiffe]
            workload_api = "unix:///run/spire/agent.sock"
            trust_domain = "example.org"
            hint = "internal"
            first_svid_timeout_ms = 2500
            reconnect_min_ms = 100
            reconnect_max_ms = 5000

            [listen]
            addr = "0.0.0.0:8443"
            [listen.tls]
            mode = "required"
            trust_domains = ["example.org"]
            [auth]
            require = "certificate"
            [admin]
            addr = "0.0.0.0:8788"
            identities = ["spiffe://example.org/ops/*"]
            "#,
        )
        .unwrap();
        let w = c.spiffe.as_ref().unwrap().to_workload();
        assert_eq!(w.socket.as_deref(), Some("unix:///run/spire/agent.sock"));
        assert_eq!(w.trust_domain.as_deref(), Some("example.org"));
        assert_eq!(w.hint.as_deref(), Some("internal"));
        assert_eq!(
            (
                w.first_svid_timeout_ms,
                w.reconnect_min_ms,
                w.reconnect_max_ms
            ),
            (2500, 100, 5000)
        );
        // An empty table takes the Workload API defaults.
        let d = Config::from_toml("[spiffe]\n").unwrap();
        let dw = d.spiffe.unwrap().to_workload();
        assert_eq!(dw, portcullis_identity::workload::WorkloadCfg::default());
    }

    #[test]
    fn without_spiffe_tls_still_needs_files() {
        for (text, key) in [
            (
                "[listen]\naddr = \"0.0.0.0:8443\"\n[listen.tls]\nmode = \"optional\"",
                "listen.tls.cert",
            ),
            (
                "[listen]\naddr = \"0.0.0.0:8443\"\n[listen.tls]\nmode = \"required\"\ncert = \"c.pem\"\nkey = \"k.pem\"",
                "listen.tls.client_ca",
            ),
        ] {
            let e = Config::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text:?} gave {e:?}");
        }
    }

    #[test]
    fn store_kind_and_its_table_agree() {
        let ok = Config::from_toml(
            "[store]\nkind = \"redis\"\nrate_fallback = \"deny\"\non_unreachable = \"deny\"\n[store.redis]\nurl = \"rediss://redis:6379\"\npassword_file = \"/run/pw\"",
        )
        .unwrap();
        assert_eq!(ok.store.kind, crate::contain::StoreKind::Redis);
        assert_eq!(ok.store.rate_fallback, crate::contain::RateFallback::Deny);
        assert_eq!(ok.store.on_unreachable, crate::contain::OnUnreachable::Deny);
        for (text, want) in [
            ("[store]\nkind = \"redis\"", "store.redis"),
            ("[store.redis]\nurl = \"redis://r:6379\"", "store.redis"),
            (
                "[store]\nkind = \"redis\"\n[store.redis]\nurl = \"http://r\"",
                "store.redis",
            ),
            (
                "[store]\nkind = \"redis\"\n[store.redis]\nurl = \"redis://r\"\nfoo = 1",
                "foo",
            ),
            ("[store]\nrate_fallback = \"open\"", "rate_fallback"),
        ] {
            let e = Config::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?} gave {e:?}");
        }
    }
}
