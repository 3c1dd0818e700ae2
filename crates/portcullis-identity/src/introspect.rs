//! Opaque bearer tokens via OAuth 2.0 Token Introspection (RFC 7662): the
//! gateway asks the authorization server whether a token is active, with its
//! own client credentials (`client_secret_basic`), and applies the same
//! issuer, audience, expiry and scope checks as for JWTs wherever the answer
//! carries those members. Active answers are cached until the token expires,
//! at most [`MAX_CACHE_SECS`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::Value;

use crate::jwks::{check_url, sha256, ConfigError, HttpFetcher, DEFAULT_FETCH_TIMEOUT};
use crate::jwt::{
    audiences, check_times, scopes, string_claim, unix_now, AuthError, TokenCache, TokenClaims,
    DEFAULT_CACHE_ENTRIES, DEFAULT_LEEWAY_SECS, MAX_LEEWAY_SECS, MAX_TOKEN_BYTES,
};

/// Longest time an introspection answer is reused, in seconds; revocation at
/// the authorization server takes effect within this.
pub const MAX_CACHE_SECS: u64 = 300;
/// Largest introspection response read, in bytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How opaque tokens are introspected.
#[derive(Debug, Clone)]
pub struct IntrospectionConfig {
    /// The RFC 7662 endpoint (`https://…`, or `http://` to loopback).
    pub endpoint: String,
    /// The gateway's client id at the authorization server.
    pub client_id: String,
    /// The gateway's client secret.
    pub client_secret: String,
    /// If set, a present `iss` must equal it.
    pub issuer: Option<String>,
    /// The gateway's own resource URI; a present `aud` must contain it.
    pub audience: String,
    /// Scopes every token must carry.
    pub required_scopes: Vec<String>,
    /// Tolerated clock skew in seconds (clamped to 300).
    pub leeway_secs: u64,
    /// How long an active answer is reused at most (clamped to
    /// [`MAX_CACHE_SECS`]).
    pub max_cache_secs: u64,
    /// PEM CA bundle for an HTTPS endpoint (else the system bundle).
    pub ca_file: Option<PathBuf>,
    /// Time limit for one introspection request.
    pub timeout: Duration,
}

impl IntrospectionConfig {
    /// A config with default skew, a five-minute cache and no required scopes.
    pub fn new(
        endpoint: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        audience: impl Into<String>,
    ) -> Self {
        Self {
            endpoint: endpoint.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            issuer: None,
            audience: audience.into(),
            required_scopes: Vec::new(),
            leeway_secs: DEFAULT_LEEWAY_SECS,
            max_cache_secs: MAX_CACHE_SECS,
            ca_file: None,
            timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }
}

/// An RFC 7662 client with a cache of active answers.
pub struct Introspector {
    cfg: IntrospectionConfig,
    authorization: String,
    http: tokio::sync::OnceCell<HttpFetcher>,
    cache: TokenCache<TokenClaims>,
    requests: AtomicU64,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("endpoint", &self.cfg.endpoint)
            .field("client_id", &self.cfg.client_id)
            .finish_non_exhaustive()
    }
}

impl Introspector {
    /// Checks the endpoint URL and prepares the client credentials.
    pub fn new(mut cfg: IntrospectionConfig) -> Result<Self, ConfigError> {
        check_url(&cfg.endpoint)?;
        if cfg.audience.is_empty() {
            return Err(ConfigError("token audience must not be empty".to_owned()));
        }
        cfg.leeway_secs = cfg.leeway_secs.min(MAX_LEEWAY_SECS);
        cfg.max_cache_secs = cfg.max_cache_secs.min(MAX_CACHE_SECS);
        // RFC 6749 §2.3.1: id and secret are form-encoded before Basic.
        let pair = format!(
            "{}:{}",
            form_encode(&cfg.client_id),
            form_encode(&cfg.client_secret)
        );
        let authorization = format!("Basic {}", STANDARD.encode(pair));
        Ok(Self {
            cfg,
            authorization,
            http: tokio::sync::OnceCell::new(),
            cache: TokenCache::new(DEFAULT_CACHE_ENTRIES),
            requests: AtomicU64::new(0),
        })
    }

    /// How many introspection requests were sent; for tests and metrics.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Validates an opaque token: `active`, then `iss`/`aud`/`exp`/`nbf`
    /// where present, then the required scopes.
    pub async fn validate(&self, token: &str) -> Result<TokenClaims, AuthError> {
        let claims = self.authenticate(token).await?;
        claims.require_scopes(&self.cfg.required_scopes)?;
        Ok(claims)
    }

    /// Everything but the scope check.
    pub async fn authenticate(&self, token: &str) -> Result<TokenClaims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed("token too long"));
        }
        let hash = sha256(token.as_bytes());
        let now = unix_now();
        if let Some(hit) = self.cache.get(&hash, now) {
            return Ok(hit);
        }
        let answer = self.ask(token).await?;
        if answer.get("active").and_then(Value::as_bool) != Some(true) {
            return Err(AuthError::Inactive);
        }
        let exp = check_times(&answer, now, self.cfg.leeway_secs, false)?;
        let iss = string_claim(&answer, "iss");
        if let Some(expected) = &self.cfg.issuer {
            if iss.as_ref().is_some_and(|iss| iss != expected) {
                return Err(AuthError::WrongIssuer);
            }
        }
        let aud = audiences(&answer);
        if answer.get("aud").is_some() && !aud.contains(&self.cfg.audience) {
            return Err(AuthError::WrongAudience);
        }
        let until = now
            .saturating_add(self.cfg.max_cache_secs)
            .min(exp.unwrap_or(u64::MAX));
        let claims = TokenClaims {
            sub: string_claim(&answer, "sub"),
            iss: iss.or_else(|| self.cfg.issuer.clone()).unwrap_or_default(),
            aud,
            scopes: scopes(&answer),
            exp: exp.unwrap_or(until),
            jti: string_claim(&answer, "jti"),
            client_id: string_claim(&answer, "client_id"),
            claims: answer,
        };
        self.cache.insert(hash, until, now, claims.clone());
        Ok(claims)
    }

    async fn ask(&self, token: &str) -> Result<Value, AuthError> {
        let unavailable = AuthError::IntrospectionUnavailable;
        let http = self
            .http
            .get_or_try_init(|| {
                HttpFetcher::new(
                    self.cfg.ca_file.as_deref(),
                    self.cfg.timeout,
                    MAX_RESPONSE_BYTES,
                )
            })
            .await
            .map_err(unavailable)?;
        let form = format!("token={}&token_type_hint=access_token", form_encode(token));
        let req = http::Request::post(&self.cfg.endpoint)
            .header(http::header::AUTHORIZATION, &self.authorization)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| unavailable(format!("bad request: {e}")))?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let (status, body) = http.send(req).await.map_err(unavailable)?;
        if status != http::StatusCode::OK {
            tracing::warn!(endpoint = %self.cfg.endpoint, %status, "token introspection refused");
            return Err(unavailable(format!("endpoint answered {status}")));
        }
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|e| unavailable(format!("answer is not JSON: {e}")))?;
        if !answer.is_object() {
            return Err(unavailable("answer is not a JSON object".to_owned()));
        }
        Ok(answer)
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::json;

    use super::*;
    use crate::jwks::testkit::{now, serve};

    const AUD: &str = "https://gateway.test/mcp";

    /// An introspection endpoint answering per token; checks client auth.
    async fn endpoint(answers: Arc<Mutex<Value>>) -> (String, Arc<AtomicU64>) {
        let (base, hits) = serve(Arc::new(move |req| {
            assert!(req.head.starts_with("POST /introspect "), "{}", req.head);
            let basic = format!("Basic {}", STANDARD.encode("gw%3Aid:s%26cret+x"));
            let authorized = req
                .head
                .lines()
                .any(|l| l.eq_ignore_ascii_case(&format!("authorization: {basic}")));
            if !authorized {
                return (401, r#"{"error":"invalid_client"}"#.into());
            }
            let token = req
                .body
                .split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .unwrap_or_default()
                .to_owned();
            let answer = answers.lock().unwrap().get(&token).cloned();
            (200, answer.unwrap_or(json!({"active": false})).to_string())
        }))
        .await;
        (format!("{base}/introspect"), hits)
    }

    fn config(url: String) -> IntrospectionConfig {
        let mut cfg = IntrospectionConfig::new(url, "gw:id", "s&cret x", AUD);
        cfg.issuer = Some("https://auth.test".into());
        cfg
    }

    #[tokio::test]
    async fn active_inactive_and_checks() {
        let t = now();
        let answers = Arc::new(Mutex::new(json!({
            "good": {"active": true, "sub": "alice", "scope": "read write", "aud": [AUD],
                     "iss": "https://auth.test", "exp": t + 600, "client_id": "agent", "jti": "j"},
            "noaud": {"active": true, "sub": "bob"},
            "foreign": {"active": true, "aud": "https://other.test"},
            "wrongiss": {"active": true, "iss": "https://evil.test"},
            "expired": {"active": true, "exp": t - 3600},
            "notyet": {"active": true, "nbf": t + 3600},
            "weird": {"active": "true"},
        })));
        let (url, hits) = endpoint(answers).await;
        let intro = Introspector::new(config(url.clone())).unwrap();

        let c = intro.validate("good").await.unwrap();
        assert_eq!(c.sub.as_deref(), Some("alice"));
        assert_eq!(c.scopes, ["read", "write"]);
        assert_eq!(c.exp, t + 600);
        assert_eq!(c.client_id.as_deref(), Some("agent"));
        assert_eq!(c.iss, "https://auth.test");
        // cached
        assert_eq!(intro.validate("good").await.unwrap(), c);
        assert_eq!(intro.requests(), 1);
        assert_eq!(hits.load(Ordering::SeqCst), 1);

        let c = intro.validate("noaud").await.unwrap();
        assert!(c.exp > t && c.exp <= t + MAX_CACHE_SECS + 1);
        assert_eq!(intro.validate("unknown").await, Err(AuthError::Inactive));
        assert_eq!(intro.validate("unknown").await, Err(AuthError::Inactive)); // not cached
        assert_eq!(intro.validate("weird").await, Err(AuthError::Inactive));
        assert_eq!(
            intro.validate("foreign").await,
            Err(AuthError::WrongAudience)
        );
        assert_eq!(
            intro.validate("wrongiss").await,
            Err(AuthError::WrongIssuer)
        );
        assert_eq!(intro.validate("expired").await, Err(AuthError::Expired));
        assert_eq!(intro.validate("notyet").await, Err(AuthError::NotYetValid));
        assert_eq!(intro.validate("").await, Err(AuthError::MissingToken));

        let mut cfg = config(url.clone());
        cfg.required_scopes = vec!["admin".into()];
        let strict = Introspector::new(cfg).unwrap();
        let e = strict.validate("good").await.unwrap_err();
        assert_eq!(e.status(), 403);

        let mut cfg = config(url);
        cfg.client_secret = "wrong".into();
        let bad_client = Introspector::new(cfg).unwrap();
        assert!(matches!(
            bad_client.validate("good").await,
            Err(AuthError::IntrospectionUnavailable(_))
        ));
    }

    #[test]
    fn config_rules() {
        assert!(Introspector::new(IntrospectionConfig::new(
            "http://as.example/i",
            "a",
            "b",
            AUD
        ))
        .is_err());
        let mut cfg = IntrospectionConfig::new("https://as.example/i", "a", "b", AUD);
        cfg.max_cache_secs = 86_400;
        assert_eq!(
            Introspector::new(cfg).unwrap().cfg.max_cache_secs,
            MAX_CACHE_SECS
        );
        assert_eq!(form_encode("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
    }
}
