//! The gateway's own OAuth token towards one upstream: an OAuth 2.1
//! client-credentials grant (`client_secret_basic`, optional `scope`, and
//! the upstream as `resource` per RFC 8707). Tokens are cached until 30 s
//! before they expire; one refresh runs at a time (callers arriving during a
//! refresh wait for its result); transient failures are retried a bounded
//! number of times. The token endpoint is `https://` (trusting the
//! upstream's CA bundle, or the system bundle when none is configured), or
//! plain `http://` to a loopback host only.
//!
//! A client's own token never goes upstream: this token is the gateway's.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::jwks::check_url;
use crate::tls;

/// Tokens are refreshed this long before they expire.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(30);
/// Lifetime assumed when the token endpoint sends no `expires_in`.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// Longest lifetime believed (longer `expires_in` values are clamped).
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Requests per refresh at most (first try plus retries).
pub const MAX_ATTEMPTS: u32 = 3;
/// Pause before the first retry; doubled for each further one.
const RETRY_BASE: Duration = Duration::from_millis(200);
/// Largest token endpoint answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Longest access token accepted.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Files CA bundles are looked for at when no CA bundle is configured.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Where and how the gateway gets its token.
#[derive(Clone)]
pub struct ClientCredentialsConfig {
    /// The token endpoint (`https://…`, or `http://` to loopback).
    pub token_url: String,
    /// The gateway's client id.
    pub client_id: String,
    /// The gateway's client secret.
    pub client_secret: String,
    /// Scope to ask for (space-separated).
    pub scope: Option<String>,
    /// Resource indicator (RFC 8707): the upstream the token is for.
    pub audience: Option<String>,
    /// PEM CA bundle(s) for an `https` token endpoint (the upstream's);
    /// empty: the system bundle.
    pub ca: Vec<PathBuf>,
    /// Time limit for one token request.
    pub timeout: Duration,
}

impl ClientCredentialsConfig {
    /// A config with the default time limit and no CA bundle.
    pub fn new(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Self {
        Self {
            token_url: token_url.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            scope: None,
            audience: None,
            ca: Vec::new(),
            timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for ClientCredentialsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentialsConfig")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scope", &self.scope)
            .field("audience", &self.audience)
            .field("ca", &self.ca)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// The configuration cannot work (URL, CA bundle).
    #[error("client credentials: {0}")]
    Config(String),
    /// The token endpoint could not be reached or timed out (after retries).
    #[error("token endpoint unreachable: {0}")]
    Unreachable(String),
    /// The token endpoint refused the grant.
    #[error("token endpoint refused the grant: {0}")]
    Refused(String),
    /// The token endpoint answered something that is not a usable token.
    #[error("token endpoint answered badly: {0}")]
    BadAnswer(String),
}

impl CredentialsError {
    fn retryable(&self) -> bool {
        matches!(self, CredentialsError::Unreachable(_))
    }
}

#[derive(Clone)]
struct Cached {
    token: Arc<str>,
    refresh_at: Instant,
}

#[derive(Default)]
struct State {
    cached: Option<Cached>,
    /// The last failed refresh: when it ended, and why.
    failed: Option<(Instant, CredentialsError)>,
}

/// Obtains, caches and refreshes the gateway's token for one upstream.
pub struct ClientCredentialsSource {
    cfg: ClientCredentialsConfig,
    uri: http::Uri,
    authorization: String,
    form: String,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    state: Mutex<State>,
    refresh: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
}

impl fmt::Debug for ClientCredentialsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentialsSource")
            .field("cfg", &self.cfg)
            .field("fetches", &self.fetches.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn roots(cfg: &ClientCredentialsConfig, https: bool) -> Result<rustls::RootCertStore, String> {
    if !cfg.ca.is_empty() {
        return tls::load_roots(&cfg.ca).map_err(|e| e.to_string());
    }
    if !https {
        return Ok(rustls::RootCertStore::empty());
    }
    let candidates = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(SYSTEM_CA_BUNDLES.iter().map(PathBuf::from));
    for path in candidates {
        if let Ok(certs) = tls::load_certs(&path) {
            let mut store = rustls::RootCertStore::empty();
            let (added, _) = store.add_parsable_certificates(certs);
            if added > 0 {
                return Ok(store);
            }
        }
    }
    Err("https token endpoint: no CA bundle configured (upstream tls.ca) and none found on the system".into())
}

impl ClientCredentialsSource {
    /// Checks the configuration and builds the HTTP client; fetches nothing
    /// yet.
    pub fn new(cfg: ClientCredentialsConfig) -> Result<Self, CredentialsError> {
        let uri = check_url(&cfg.token_url).map_err(|e| CredentialsError::Config(e.0))?;
        if cfg.client_id.is_empty() {
            return Err(CredentialsError::Config("client_id is empty".into()));
        }
        let https = uri.scheme_str() == Some("https");
        let roots = roots(&cfg, https).map_err(CredentialsError::Config)?;
        let tls_cfg = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| CredentialsError::Config(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(cfg.timeout));
        conn.set_nodelay(true);
        conn.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_cfg)
            .https_or_http()
            .enable_http1()
            .wrap_connector(conn);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(2)
            .build(connector);
        // RFC 6749 §2.3.1: id and secret are form-encoded before Basic.
        let pair = format!(
            "{}:{}",
            form_encode(&cfg.client_id),
            form_encode(&cfg.client_secret)
        );
        let authorization = format!("Basic {}", STANDARD.encode(pair));
        let mut form = String::from("grant_type=client_credentials");
        if let Some(scope) = cfg.scope.as_deref().filter(|s| !s.is_empty()) {
            form.push_str("&scope=");
            form.push_str(&form_encode(scope));
        }
        if let Some(aud) = cfg.audience.as_deref().filter(|s| !s.is_empty()) {
            form.push_str("&resource=");
            form.push_str(&form_encode(aud));
        }
        Ok(Self {
            cfg,
            uri,
            authorization,
            form,
            client,
            state: Mutex::new(State::default()),
            refresh: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
        })
    }

    /// How many token requests were sent so far (retries included).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fresh(&self) -> Option<Arc<str>> {
        let st = self.state();
        st.cached
            .as_ref()
            .filter(|c| Instant::now() < c.refresh_at)
            .map(|c| c.token.clone())
    }

    /// The current token: cached, or fetched now (one fetch at a time).
    pub async fn token(&self) -> Result<String, CredentialsError> {
        if let Some(t) = self.fresh() {
            return Ok(t.to_string());
        }
        let asked = Instant::now();
        let _guard = self.refresh.lock().await;
        // Someone else may have refreshed (or failed) while we waited.
        if let Some(t) = self.fresh() {
            return Ok(t.to_string());
        }
        if let Some((at, e)) = &self.state().failed {
            if *at >= asked {
                return Err(e.clone());
            }
        }
        match self.fetch_with_retry().await {
            Ok((token, lifetime)) => {
                let now = Instant::now();
                let refresh_at = now
                    .checked_add(lifetime.saturating_sub(REFRESH_MARGIN))
                    .unwrap_or(now);
                let mut st = self.state();
                st.failed = None;
                st.cached = Some(Cached {
                    token: token.clone(),
                    refresh_at,
                });
                tracing::debug!(token_url = %self.cfg.token_url, lifetime_secs = lifetime.as_secs(), "gateway token obtained");
                Ok(token.to_string())
            }
            Err(e) => {
                tracing::warn!(token_url = %self.cfg.token_url, error = %e, "cannot obtain the gateway's token");
                let mut st = self.state();
                st.cached = None;
                st.failed = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// Forgets `token` if it is the cached one (the upstream refused it), so
    /// the next call fetches a new one.
    pub fn invalidate(&self, token: &str) {
        let mut st = self.state();
        if st.cached.as_ref().is_some_and(|c| &*c.token == token) {
            st.cached = None;
        }
    }

    async fn fetch_with_retry(&self) -> Result<(Arc<str>, Duration), CredentialsError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.fetch_once().await {
                Ok(t) => return Ok(t),
                Err(e) if e.retryable() && attempt < MAX_ATTEMPTS => {
                    let pause = RETRY_BASE.saturating_mul(1 << (attempt - 1).min(8));
                    tracing::debug!(token_url = %self.cfg.token_url, error = %e, attempt, "token request failed; retrying");
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn fetch_once(&self) -> Result<(Arc<str>, Duration), CredentialsError> {
        let req = http::Request::post(self.uri.clone())
            .header(http::header::AUTHORIZATION, &self.authorization)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(self.form.clone())))
            .map_err(|e| CredentialsError::Config(format!("bad request: {e}")))?;
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| CredentialsError::Unreachable(error_chain(&e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| CredentialsError::Unreachable(format!("body: {e}")))?
                .to_bytes();
            Ok::<_, CredentialsError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.cfg.timeout, work)
            .await
            .map_err(|_| {
                CredentialsError::Unreachable(format!("timed out after {:?}", self.cfg.timeout))
            })??;
        parse_answer(status, &body)
    }
}

/// Reads a token endpoint answer (RFC 6749 §5.1 / §5.2).
fn parse_answer(
    status: http::StatusCode,
    body: &[u8],
) -> Result<(Arc<str>, Duration), CredentialsError> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    if !status.is_success() {
        let why = json
            .as_ref()
            .and_then(|v| v.get("error"))
            .and_then(Value::as_str)
            .map(|e| format!("HTTP {status}: {}", e.chars().take(100).collect::<String>()))
            .unwrap_or_else(|| format!("HTTP {status}"));
        return Err(
            if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
                CredentialsError::Unreachable(why)
            } else {
                CredentialsError::Refused(why)
            },
        );
    }
    let v = json.ok_or_else(|| CredentialsError::BadAnswer("not JSON".into()))?;
    let token = v
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or_else(|| CredentialsError::BadAnswer("no access_token".into()))?;
    if token.is_empty()
        || token.len() > MAX_TOKEN_BYTES
        || !token.bytes().all(|b| (0x21..=0x7e).contains(&b))
    {
        return Err(CredentialsError::BadAnswer(
            "access_token is not a usable bearer token".into(),
        ));
    }
    if let Some(tt) = v.get("token_type").and_then(Value::as_str) {
        if !tt.eq_ignore_ascii_case("bearer") {
            return Err(CredentialsError::BadAnswer(format!(
                "token_type {:?} is not Bearer",
                tt.chars().take(40).collect::<String>()
            )));
        }
    }
    let lifetime = match v.get("expires_in") {
        None | Some(Value::Null) => DEFAULT_LIFETIME,
        Some(x) => {
            let secs = x
                .as_u64()
                .or_else(|| x.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .or_else(|| x.as_str().and_then(|s| s.trim().parse().ok()))
                .ok_or_else(|| CredentialsError::BadAnswer("expires_in is not a number".into()))?;
            Duration::from_secs(secs).min(MAX_LIFETIME)
        }
    };
    Ok((Arc::from(token), lifetime))
}

/// An error with its sources, `outer: inner: …`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use serde_json::json;

    use super::*;
    use crate::jwks::testkit::{serve, Handler, SeenRequest};

    fn source(url: &str) -> ClientCredentialsSource {
        let mut cfg = ClientCredentialsConfig::new(format!("{url}/token"), "gw id", "s3cr:t");
        cfg.scope = Some("tools.read tools.call".into());
        cfg.audience = Some("https://files.example/mcp".into());
        cfg.timeout = Duration::from_secs(2);
        ClientCredentialsSource::new(cfg).unwrap()
    }

    fn answer(token: &str, expires_in: u64) -> (u16, String) {
        (
            200,
            json!({"access_token": token, "token_type": "Bearer", "expires_in": expires_in})
                .to_string(),
        )
    }

    #[tokio::test]
    async fn posts_the_grant_and_caches_the_token() {
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let s2 = seen.clone();
        let handler: Handler = Arc::new(move |r: &SeenRequest| {
            s2.lock().unwrap().push((r.head.clone(), r.body.clone()));
            answer("tok-1", 3600)
        });
        let (url, hits) = serve(handler).await;
        let src = source(&url);
        assert_eq!(src.token().await.unwrap(), "tok-1");
        assert_eq!(src.token().await.unwrap(), "tok-1");
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "second call served from cache"
        );
        let (head, body) = seen.lock().unwrap()[0].clone();
        assert!(head.starts_with("POST /token "), "{head}");
        let basic = format!("Basic {}", STANDARD.encode("gw+id:s3cr%3At"));
        assert!(
            head.lines()
                .any(|l| l.eq_ignore_ascii_case(&format!("authorization: {basic}"))),
            "{head}"
        );
        assert_eq!(
            body,
            "grant_type=client_credentials&scope=tools.read+tools.call&resource=https%3A%2F%2Ffiles.example%2Fmcp"
        );
        // Rejected by the upstream: forgotten, fetched again.
        src.invalidate("tok-1");
        src.token().await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn refreshes_within_thirty_seconds_of_expiry() {
        let n = Arc::new(AtomicU64::new(0));
        let n2 = n.clone();
        let handler: Handler = Arc::new(move |_: &SeenRequest| {
            let i = n2.fetch_add(1, Ordering::SeqCst);
            answer(&format!("tok-{i}"), 30)
        });
        let (url, hits) = serve(handler).await;
        let src = source(&url);
        assert_eq!(src.token().await.unwrap(), "tok-0");
        assert_eq!(src.token().await.unwrap(), "tok-1");
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn one_refresh_for_many_callers() {
        let handler: Handler = Arc::new(|_: &SeenRequest| {
            std::thread::sleep(Duration::from_millis(150));
            answer("shared", 600)
        });
        let (url, hits) = serve(handler).await;
        let src = Arc::new(source(&url));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let s = src.clone();
            tasks.push(tokio::spawn(async move { s.token().await }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), "shared");
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn retries_transient_failures_a_bounded_number_of_times() {
        let n = Arc::new(AtomicU64::new(0));
        let n2 = n.clone();
        let handler: Handler = Arc::new(move |_: &SeenRequest| {
            if n2.fetch_add(1, Ordering::SeqCst) == 0 {
                (503, "{}".into())
            } else {
                answer("after-retry", 600)
            }
        });
        let (url, hits) = serve(handler).await;
        assert_eq!(source(&url).token().await.unwrap(), "after-retry");
        assert_eq!(hits.load(Ordering::SeqCst), 2);

        let handler: Handler = Arc::new(|_: &SeenRequest| (500, "{}".into()));
        let (url, hits) = serve(handler).await;
        let e = source(&url).token().await.unwrap_err();
        assert!(matches!(e, CredentialsError::Unreachable(_)), "{e}");
        assert_eq!(hits.load(Ordering::SeqCst), u64::from(MAX_ATTEMPTS));
    }

    #[tokio::test]
    async fn refusals_and_bad_answers_are_not_retried() {
        let handler: Handler =
            Arc::new(|_: &SeenRequest| (401, json!({"error": "invalid_client"}).to_string()));
        let (url, hits) = serve(handler).await;
        let e = source(&url).token().await.unwrap_err();
        assert_eq!(
            e,
            CredentialsError::Refused("HTTP 401 Unauthorized: invalid_client".into())
        );
        assert_eq!(hits.load(Ordering::SeqCst), 1);

        for bad in [
            json!({"token_type": "Bearer"}),
            json!({"access_token": "a b", "token_type": "Bearer"}),
            json!({"access_token": "x", "token_type": "mac"}),
            json!({"access_token": "x", "expires_in": "soon"}),
        ] {
            let body = bad.to_string();
            let handler: Handler = Arc::new(move |_: &SeenRequest| (200, body.clone()));
            let (url, hits) = serve(handler).await;
            let e = source(&url).token().await.unwrap_err();
            assert!(matches!(e, CredentialsError::BadAnswer(_)), "{bad}: {e}");
            assert_eq!(hits.load(Ordering::SeqCst), 1);
        }
    }

    #[test]
    fn plain_http_only_to_loopback() {
        for url in ["http://auth.example/token", "ftp://127.0.0.1/token", "nope"] {
            let e = ClientCredentialsSource::new(ClientCredentialsConfig::new(url, "a", "b"))
                .unwrap_err();
            assert!(matches!(e, CredentialsError::Config(_)), "{url}: {e}");
        }
        for url in [
            "http://127.0.0.1:9/token",
            "http://localhost/t",
            "http://[::1]/t",
        ] {
            ClientCredentialsSource::new(ClientCredentialsConfig::new(url, "a", "b")).unwrap();
        }
        let mut cfg = ClientCredentialsConfig::new("https://auth.example/token", "a", "b");
        cfg.ca = vec![PathBuf::from("/nonexistent/ca.pem")];
        assert!(ClientCredentialsSource::new(cfg).is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        let cfg = ClientCredentialsConfig::new("http://127.0.0.1/t", "id", "hunter2");
        assert!(!format!("{cfg:?}").contains("hunter2"));
        let src = ClientCredentialsSource::new(cfg).unwrap();
        assert!(!format!("{src:?}").contains("hunter2"));
    }
}
