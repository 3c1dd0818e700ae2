//! OAuth 2.1 bearer tokens as JWTs: the gateway acts as a resource server,
//! checking signature (RS256/ES256/EdDSA via a [`Jwks`]), issuer, audience
//! (its own resource URI, RFC 8707), expiry and not-before with bounded clock
//! skew, and scopes. Successful validations are cached per token until the
//! token expires.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use crate::jwks::{sha256, ConfigError, Jwks, JwksOptions, JwksSource, DEFAULT_MIN_REFETCH};

/// Default clock skew tolerated on `exp`/`nbf`/`iat`, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 60;
/// Largest clock skew a configuration may ask for, in seconds.
pub const MAX_LEEWAY_SECS: u64 = 300;
/// Default bound on cached validations, so distinct tokens cannot grow memory
/// without limit.
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;
/// Longest token accepted, in bytes; longer ones are refused unparsed.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a request's credentials were not accepted; each variant maps to the
/// RFC 6750 error code and HTTP status the gateway answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No bearer token was presented (RFC 6750 §3.1: answer without an
    /// error code).
    #[error("no bearer token")]
    MissingToken,
    /// The `Authorization` header is not a single well-formed Bearer token.
    #[error("malformed Authorization header: {0}")]
    MalformedHeader(&'static str),
    /// The token is not a well-formed JWT (or misses a required claim).
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The token's `alg` is not RS256, ES256 or EdDSA (`none`, HS*, … are
    /// refused before any key lookup).
    #[error("unsupported token algorithm {0:?}")]
    UnsupportedAlg(String),
    /// No key in the issuer's key set matches the token's `kid` and `alg`.
    #[error("no signing key {kid:?} for {alg}")]
    UnknownKey {
        /// The token's `kid`, if any (truncated).
        kid: Option<String>,
        /// The token's algorithm.
        alg: &'static str,
    },
    /// The signature does not verify with the issuer's key.
    #[error("bad token signature")]
    BadSignature,
    /// `exp` has passed (beyond the allowed skew).
    #[error("token expired")]
    Expired,
    /// `nbf` (or `iat`) is in the future (beyond the allowed skew).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("wrong token issuer")]
    WrongIssuer,
    /// `aud` does not name this gateway's resource URI.
    #[error("wrong token audience")]
    WrongAudience,
    /// The token lacks scopes the resource requires.
    #[error("insufficient scope: requires {}", required.join(" "))]
    InsufficientScope {
        /// Every scope required (for `WWW-Authenticate: … scope="…"`).
        required: Vec<String>,
    },
    /// The issuer's key set could not be loaded.
    #[error("token keys unavailable: {0}")]
    JwksUnavailable(String),
    /// The introspection endpoint said the token is not active.
    #[error("token not active")]
    Inactive,
    /// The introspection endpoint could not be asked.
    #[error("token introspection unavailable: {0}")]
    IntrospectionUnavailable(String),
}

impl AuthError {
    /// The RFC 6750 `error` code for `WWW-Authenticate`. For
    /// [`AuthError::MissingToken`] RFC 6750 says to send no code at all; this
    /// returns `invalid_request` for it and callers may omit it.
    pub fn www_authenticate_error(&self) -> &'static str {
        match self {
            Self::MissingToken | Self::MalformedHeader(_) => "invalid_request",
            Self::InsufficientScope { .. } => "insufficient_scope",
            _ => "invalid_token",
        }
    }

    /// The HTTP status to answer with: 403 for insufficient scope, else 401.
    pub fn status(&self) -> u16 {
        match self {
            Self::InsufficientScope { .. } => 403,
            _ => 401,
        }
    }
}

/// Extracts the token from an `Authorization` header value: scheme `Bearer`
/// (any case), one or more spaces, exactly one token68 (RFC 7235), optional
/// trailing whitespace. Another scheme counts as no bearer token.
pub fn bearer_from_header(value: &[u8]) -> Result<&str, AuthError> {
    let value = std::str::from_utf8(value)
        .map_err(|_| AuthError::MalformedHeader("not ASCII"))?
        .trim_matches(|c| c == ' ' || c == '\t');
    if value.is_empty() {
        return Err(AuthError::MissingToken);
    }
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::MissingToken);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() {
        return Err(AuthError::MalformedHeader("empty bearer token"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::MalformedHeader("bearer token too long"));
    }
    let body = token.trim_end_matches('=');
    let token68 = !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        });
    if !token68 {
        return Err(AuthError::MalformedHeader(
            "bearer credential is not a single token68",
        ));
    }
    Ok(token)
}

/// What a validated access token says about the caller, for the principal
/// and for policy.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenClaims {
    /// `sub`: the user (or client) the token was issued for, if present.
    pub sub: Option<String>,
    /// `iss`: the issuer that vouched for it.
    pub iss: String,
    /// `aud`: every audience the token names (this gateway's among them).
    pub aud: Vec<String>,
    /// Granted scopes, from `scope` (space separated) or `scp` (array).
    pub scopes: Vec<String>,
    /// `exp`, seconds since the epoch (for introspected tokens without
    /// `exp`: when the cached answer lapses).
    pub exp: u64,
    /// `jti`, if present (replay tracking, audit).
    pub jti: Option<String>,
    /// `client_id` (or `azp`): the OAuth client that obtained the token.
    pub client_id: Option<String>,
    /// All claims, verbatim, for policy.
    pub claims: Value,
}

impl TokenClaims {
    /// Whether every scope in `required` was granted.
    pub fn has_scopes(&self, required: &[String]) -> bool {
        required.iter().all(|r| self.scopes.iter().any(|s| s == r))
    }

    /// Checks scopes, answering [`AuthError::InsufficientScope`] naming all
    /// of `required` when any is missing.
    pub fn require_scopes(&self, required: &[String]) -> Result<(), AuthError> {
        if self.has_scopes(required) {
            Ok(())
        } else {
            Err(AuthError::InsufficientScope {
                required: required.to_vec(),
            })
        }
    }
}

/// How bearer tokens are validated.
#[derive(Debug, Clone)]
pub struct ValidatorConfig {
    /// Expected `iss`, compared exactly.
    pub issuer: String,
    /// The gateway's own resource URI (RFC 8707); `aud` must contain it.
    pub audience: String,
    /// Where the issuer's signing keys are.
    pub jwks: JwksSource,
    /// Tolerated clock skew in seconds (clamped to [`MAX_LEEWAY_SECS`]).
    pub leeway_secs: u64,
    /// Scopes every token must carry (empty: none).
    pub required_scopes: Vec<String>,
    /// Minimum time between two key set fetches.
    pub min_refetch: Duration,
    /// PEM CA bundle for an HTTPS key set URL (else the system bundle).
    pub ca_file: Option<PathBuf>,
}

impl ValidatorConfig {
    /// A config with the default skew, no required scopes and the default
    /// refetch interval.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>, jwks: JwksSource) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks,
            leeway_secs: DEFAULT_LEEWAY_SECS,
            required_scopes: Vec::new(),
            min_refetch: DEFAULT_MIN_REFETCH,
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Cached {
    claims: TokenClaims,
    key: [u8; 32],
}

/// Validates bearer JWTs against one issuer; cheap to share (`Arc`).
#[derive(Debug)]
pub struct TokenValidator {
    issuer: String,
    audience: String,
    leeway: u64,
    required_scopes: Vec<String>,
    jwks: Jwks,
    cache: TokenCache<Cached>,
    signature_checks: AtomicU64,
}

impl TokenValidator {
    /// Builds a validator; the key set is loaded on the first token.
    pub fn new(cfg: ValidatorConfig) -> Result<Self, ConfigError> {
        if cfg.issuer.is_empty() {
            return Err(ConfigError("token issuer must not be empty".to_owned()));
        }
        if cfg.audience.is_empty() {
            return Err(ConfigError("token audience must not be empty".to_owned()));
        }
        let opts = JwksOptions {
            min_refetch: cfg.min_refetch,
            ca_file: cfg.ca_file,
            ..JwksOptions::default()
        };
        Ok(Self {
            issuer: cfg.issuer,
            audience: cfg.audience,
            leeway: cfg.leeway_secs.min(MAX_LEEWAY_SECS),
            required_scopes: cfg.required_scopes,
            jwks: Jwks::new(cfg.jwks, opts)?,
            cache: TokenCache::new(DEFAULT_CACHE_ENTRIES),
            signature_checks: AtomicU64::new(0),
        })
    }

    /// The key set cache (for diagnostics and tests).
    pub fn jwks(&self) -> &Jwks {
        &self.jwks
    }

    /// The scopes every token must carry (for `WWW-Authenticate`).
    pub fn required_scopes(&self) -> &[String] {
        &self.required_scopes
    }

    /// How many signatures were verified (cache hits do none); for tests and
    /// metrics.
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }

    /// Validates a bearer token: signature, `iss`, `aud`, `exp`/`nbf` with
    /// skew, then the required scopes.
    pub async fn validate(&self, token: &str) -> Result<TokenClaims, AuthError> {
        let claims = self.authenticate(token).await?;
        claims.require_scopes(&self.required_scopes)?;
        Ok(claims)
    }

    /// Everything but the scope check: proves the token is genuine, current
    /// and meant for this gateway.
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
            if self.jwks.contains(&hit.key) {
                return Ok(hit.claims);
            }
            self.cache.remove(&hash);
        }
        let verified = verify_compact(token, &self.jwks, &self.signature_checks).await?;
        let claims = check_claims(
            verified.payload,
            &self.issuer,
            &self.audience,
            self.leeway,
            now,
        )?;
        self.cache.insert(
            hash,
            claims.exp,
            now,
            Cached {
                claims: claims.clone(),
                key: verified.key,
            },
        );
        Ok(claims)
    }
}

/// A JWS whose signature verified; the claims are not checked yet.
pub(crate) struct Verified {
    pub(crate) payload: Value,
    pub(crate) key: [u8; 32],
}

/// Parses a compact JWS, refuses every `alg` but RS256/ES256/EdDSA before
/// any key lookup, finds the key and verifies the signature.
pub(crate) async fn verify_compact(
    token: &str,
    jwks: &Jwks,
    counter: &AtomicU64,
) -> Result<Verified, AuthError> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("not three dot-separated parts"));
    };
    let header = decode_json(header_b64).ok_or(AuthError::Malformed("header"))?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(AuthError::Malformed("header has no alg"))?;
    let alg = match alg {
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        "EdDSA" => Algorithm::EdDSA,
        other => return Err(AuthError::UnsupportedAlg(other.chars().take(32).collect())),
    };
    if header.get("crit").is_some() {
        return Err(AuthError::Malformed(
            "critical header extensions are not supported",
        ));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(AuthError::Malformed("kid is not a string")),
    };
    let payload = decode_json(payload_b64).ok_or(AuthError::Malformed("payload"))?;
    if !payload.is_object() {
        return Err(AuthError::Malformed("payload is not a JSON object"));
    }
    if sig_b64.is_empty() || URL_SAFE_NO_PAD.decode(sig_b64).is_err() {
        return Err(AuthError::Malformed("signature"));
    }
    let key = jwks.resolve(kid, alg).await?;
    let signed_len = header_b64.len() + 1 + payload_b64.len();
    let message = token
        .get(..signed_len)
        .ok_or(AuthError::Malformed("token"))?;
    counter.fetch_add(1, Ordering::Relaxed);
    match jsonwebtoken::crypto::verify(sig_b64, message.as_bytes(), &key.key, alg) {
        Ok(true) => Ok(Verified {
            payload,
            key: key.fingerprint,
        }),
        Ok(false) | Err(_) => Err(AuthError::BadSignature),
    }
}

fn decode_json(b64: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(b64).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    value.is_object().then_some(value)
}

/// Reads a NumericDate claim (integer or finite non-negative number).
pub(crate) fn numeric_claim(claims: &Value, name: &str) -> Result<Option<u64>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            if let Some(n) = v.as_u64() {
                return Ok(Some(n));
            }
            match v.as_f64() {
                Some(f) if (0.0..1.0e15).contains(&f) => Ok(Some(f as u64)),
                _ => Err(AuthError::Malformed("a time claim is not a number")),
            }
        }
    }
}

/// Checks `exp`, `nbf` and `iat` against `now` with `leeway`; `exp` must be
/// present when `require_exp`. Returns `exp`.
pub(crate) fn check_times(
    claims: &Value,
    now: u64,
    leeway: u64,
    require_exp: bool,
) -> Result<Option<u64>, AuthError> {
    let exp = numeric_claim(claims, "exp")?;
    match exp {
        Some(exp) if now >= exp.saturating_add(leeway) => return Err(AuthError::Expired),
        None if require_exp => return Err(AuthError::Malformed("no exp claim")),
        _ => {}
    }
    for name in ["nbf", "iat"] {
        if let Some(t) = numeric_claim(claims, name)? {
            if t > now.saturating_add(leeway) {
                return Err(AuthError::NotYetValid);
            }
        }
    }
    Ok(exp)
}

/// `aud` as a list (a single string or an array of strings).
pub(crate) fn audiences(claims: &Value) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// Scopes from `scope` (space separated string, or array) or `scp` (array,
/// or space separated string).
pub(crate) fn scopes(claims: &Value) -> Vec<String> {
    let from = |v: &Value| -> Option<Vec<String>> {
        match v {
            Value::String(s) => Some(
                s.split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            Value::Array(items) => Some(
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        }
    };
    claims
        .get("scope")
        .and_then(from)
        .or_else(|| claims.get("scp").and_then(from))
        .unwrap_or_default()
}

/// A string claim, if present and a string.
pub(crate) fn string_claim(claims: &Value, name: &str) -> Option<String> {
    claims.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// Builds [`TokenClaims`] from verified claims after the time, issuer and
/// audience checks.
fn check_claims(
    claims: Value,
    issuer: &str,
    audience: &str,
    leeway: u64,
    now: u64,
) -> Result<TokenClaims, AuthError> {
    let exp = check_times(&claims, now, leeway, true)?.unwrap_or_default();
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err(AuthError::WrongIssuer);
    }
    let aud = audiences(&claims);
    if !aud.iter().any(|a| a == audience) {
        return Err(AuthError::WrongAudience);
    }
    Ok(TokenClaims {
        sub: string_claim(&claims, "sub"),
        iss: issuer.to_owned(),
        aud,
        scopes: scopes(&claims),
        exp,
        jti: string_claim(&claims, "jti"),
        client_id: string_claim(&claims, "client_id").or_else(|| string_claim(&claims, "azp")),
        claims,
    })
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A bounded map from token hash to a value that lapses at a given time.
/// When full, lapsed entries go first, then the one lapsing soonest.
#[derive(Debug)]
pub(crate) struct TokenCache<V> {
    map: Mutex<HashMap<[u8; 32], (u64, V)>>,
    cap: usize,
}

impl<V: Clone> TokenCache<V> {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (u64, V)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value, if present and `now` is before its lapse time.
    pub(crate) fn get(&self, key: &[u8; 32], now: u64) -> Option<V> {
        let mut map = self.lock();
        match map.get(key) {
            Some((until, v)) if now < *until => Some(v.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    pub(crate) fn remove(&self, key: &[u8; 32]) {
        self.lock().remove(key);
    }

    /// Stores a value until `until` (nothing is stored if that has passed).
    pub(crate) fn insert(&self, key: [u8; 32], until: u64, now: u64, value: V) {
        if until <= now || self.cap == 0 {
            return;
        }
        let mut map = self.lock();
        if map.len() >= self.cap && !map.contains_key(&key) {
            map.retain(|_, (t, _)| now < *t);
            if map.len() >= self.cap {
                let soonest = map.iter().min_by_key(|(_, (t, _))| *t).map(|(k, _)| *k);
                if let Some(k) = soonest {
                    map.remove(&k);
                }
            }
        }
        map.insert(key, (until, value));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_json::{json, Value};

    use super::*;
    use crate::jwks::testkit::{jwks_of, now, serve, temp_dir, TestKey, RSA_PUB_PEM};

    const ISS: &str = "https://auth.test";
    const AUD: &str = "https://gateway.test/mcp";

    fn claims() -> Value {
        let now = now();
        json!({"iss": ISS, "aud": AUD, "sub": "alice", "scope": "tools:call read",
               "iat": now, "nbf": now, "exp": now + 600, "jti": "j1", "client_id": "agent"})
    }

    fn with(mut c: Value, key: &str, v: Value) -> Value {
        c[key] = v;
        c
    }

    /// A validator over a JWKS file holding `keys`; returns it and the file.
    fn validator(keys: &[&TestKey], tag: &str) -> (TokenValidator, std::path::PathBuf) {
        let path = temp_dir(tag).join("jwks.json");
        std::fs::write(&path, jwks_of(keys)).unwrap();
        let mut cfg = ValidatorConfig::new(ISS, AUD, JwksSource::File(path.clone()));
        cfg.min_refetch = Duration::ZERO;
        (TokenValidator::new(cfg).unwrap(), path)
    }

    #[tokio::test]
    async fn accepts_rs256_es256_eddsa() {
        let (rsa, ec, ed) = (
            TestKey::rsa("r1"),
            TestKey::p256("e1"),
            TestKey::ed25519("d1"),
        );
        let (v, _) = validator(&[&rsa, &ec, &ed], "pos");
        for key in [&rsa, &ec, &ed] {
            let got = v.validate(&key.sign(&claims())).await.unwrap();
            assert_eq!(got.sub.as_deref(), Some("alice"));
            assert_eq!(got.iss, ISS);
            assert_eq!(got.aud, [AUD]);
            assert_eq!(got.scopes, ["tools:call", "read"]);
            assert_eq!(got.jti.as_deref(), Some("j1"));
            assert_eq!(got.client_id.as_deref(), Some("agent"));
            assert_eq!(got.claims["sub"], "alice");
        }
        // aud as an array, scopes from `scp`, client from `azp`.
        let mut c = with(claims(), "aud", json!(["other", AUD]));
        c.as_object_mut().unwrap().remove("scope");
        c.as_object_mut().unwrap().remove("client_id");
        c["scp"] = json!(["a", "b"]);
        c["azp"] = json!("agent2");
        let got = v.validate(&ed.sign(&c)).await.unwrap();
        assert_eq!(got.aud, ["other", AUD]);
        assert_eq!(got.scopes, ["a", "b"]);
        assert_eq!(got.client_id.as_deref(), Some("agent2"));
        assert_eq!(v.jwks().fetch_count(), 1);
    }

    #[tokio::test]
    async fn negative_matrix() {
        let rsa = TestKey::rsa("r1");
        let ed = TestKey::ed25519("d1");
        let (v, _) = validator(&[&rsa, &ed], "neg");
        let t = now();

        // expired (beyond the 60 s skew), but accepted within the skew
        let e = v
            .validate(&ed.sign(&with(claims(), "exp", json!(t - 120))))
            .await;
        assert_eq!(e, Err(AuthError::Expired));
        assert!(v
            .validate(&ed.sign(&with(claims(), "exp", json!(t - 10))))
            .await
            .is_ok());
        // not yet valid
        let e = v
            .validate(&ed.sign(&with(claims(), "nbf", json!(t + 600))))
            .await;
        assert_eq!(e, Err(AuthError::NotYetValid));
        // wrong audience, missing audience
        let e = v
            .validate(&ed.sign(&with(claims(), "aud", json!("https://other.test/mcp"))))
            .await;
        assert_eq!(e, Err(AuthError::WrongAudience));
        let e = v
            .validate(&ed.sign(&with(claims(), "aud", json!(["a", "b"]))))
            .await;
        assert_eq!(e, Err(AuthError::WrongAudience));
        let e = v
            .validate(&ed.sign(&with(claims(), "aud", Value::Null)))
            .await;
        assert_eq!(e, Err(AuthError::WrongAudience));
        // wrong issuer
        let e = v
            .validate(&ed.sign(&with(claims(), "iss", json!("https://evil.test"))))
            .await;
        assert_eq!(e, Err(AuthError::WrongIssuer));
        // no exp at all
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert!(matches!(
            v.validate(&ed.sign(&c)).await,
            Err(AuthError::Malformed(_))
        ));

        let checks_before = v.signature_checks();
        let fetches_before = v.jwks().fetch_count();
        // alg none
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let p = URL_SAFE_NO_PAD.encode(claims().to_string());
        let e = v.validate(&format!("{h}.{p}.")).await;
        assert_eq!(e, Err(AuthError::UnsupportedAlg("none".into())));
        // HS256 signed with the RSA public key (PEM bytes) as HMAC secret,
        // naming the RSA key's kid
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("r1".into());
        let forged = jsonwebtoken::encode(
            &header,
            &claims(),
            &jsonwebtoken::EncodingKey::from_secret(RSA_PUB_PEM),
        )
        .unwrap();
        let e = v.validate(&forged).await;
        assert_eq!(e, Err(AuthError::UnsupportedAlg("HS256".into())));
        assert_eq!(
            e.as_ref().unwrap_err().www_authenticate_error(),
            "invalid_token"
        );
        // refused before any key lookup or signature work
        assert_eq!(v.signature_checks(), checks_before);
        assert_eq!(v.jwks().fetch_count(), fetches_before);

        // tampered signature
        let good = rsa.sign(&claims());
        let (signing_input, sig) = good.rsplit_once('.').unwrap();
        let mut sig = sig.as_bytes().to_vec();
        sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
        let tampered = format!("{signing_input}.{}", String::from_utf8(sig).unwrap());
        assert_eq!(v.validate(&tampered).await, Err(AuthError::BadSignature));
        // tampered payload (signature of the original)
        let (_, rest) = good.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let h = good.split('.').next().unwrap();
        let p = URL_SAFE_NO_PAD.encode(with(claims(), "sub", json!("mallory")).to_string());
        assert_eq!(
            v.validate(&format!("{h}.{p}.{sig}")).await,
            Err(AuthError::BadSignature)
        );
        // a key of another type under the same kid: ES256 header naming r1
        let ec = TestKey::p256("r1");
        assert!(matches!(
            v.validate(&ec.sign(&claims())).await,
            Err(AuthError::UnknownKey { .. })
        ));
        // unknown kid
        let stranger = TestKey::ed25519("nobody");
        let e = v.validate(&stranger.sign(&claims())).await;
        assert_eq!(
            e,
            Err(AuthError::UnknownKey {
                kid: Some("nobody".into()),
                alg: "EdDSA"
            })
        );
        // garbage
        for bad in ["", "abc", "a.b", "a.b.c.d", "!!.??.##"] {
            assert!(v.validate(bad).await.is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn insufficient_scope() {
        let ed = TestKey::ed25519("d1");
        let path = temp_dir("scope").join("jwks.json");
        std::fs::write(&path, jwks_of(&[&ed])).unwrap();
        let mut cfg = ValidatorConfig::new(ISS, AUD, JwksSource::File(path));
        cfg.required_scopes = vec!["tools:call".into(), "admin".into()];
        let v = TokenValidator::new(cfg).unwrap();
        let e = v.validate(&ed.sign(&claims())).await.unwrap_err();
        assert_eq!(
            e,
            AuthError::InsufficientScope {
                required: vec!["tools:call".into(), "admin".into()]
            }
        );
        assert_eq!(e.status(), 403);
        assert_eq!(e.www_authenticate_error(), "insufficient_scope");
        // still insufficient the second time (from the cache)
        assert!(v.validate(&ed.sign(&claims())).await.is_err());
        let ok = ed.sign(&with(claims(), "scope", json!("admin tools:call")));
        assert!(v.validate(&ok).await.is_ok());
    }

    #[tokio::test]
    async fn rotation_removes_keys_even_for_cached_tokens() {
        let old = TestKey::p256("2024");
        let new = TestKey::p256("2025");
        let (v, path) = validator(&[&old], "rot");
        let old_token = old.sign(&claims());
        assert!(v.validate(&old_token).await.is_ok());
        assert!(v.validate(&old_token).await.is_ok()); // cached
        assert_eq!(v.signature_checks(), 1);

        // The issuer rotates: only the new key is published.
        std::fs::write(&path, jwks_of(&[&new])).unwrap();
        assert!(v.validate(&new.sign(&claims())).await.is_ok()); // unknown kid → refetch
        assert_eq!(v.jwks().fetch_count(), 2);
        let e = v.validate(&old_token).await;
        assert_eq!(
            e,
            Err(AuthError::UnknownKey {
                kid: Some("2024".into()),
                alg: "ES256"
            })
        );
        // and never from a fresh validator either
        let (fresh, _) = validator(&[&new], "rot2");
        assert!(matches!(
            fresh.validate(&old_token).await,
            Err(AuthError::UnknownKey { .. })
        ));
    }

    #[tokio::test]
    async fn caches_success_only() {
        let rsa = TestKey::rsa("r1");
        let (v, _) = validator(&[&rsa], "cache");
        let token = rsa.sign(&claims());
        let first = v.validate(&token).await.unwrap();
        assert_eq!(v.signature_checks(), 1);
        let second = v.validate(&token).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(
            v.signature_checks(),
            1,
            "second validate did signature work"
        );
        // failures are not cached as success (nor at all)
        let bad = format!("{}x", &token[..token.len() - 4]);
        assert!(v.validate(&bad).await.is_err());
        assert!(v.validate(&bad).await.is_err());
        assert_eq!(v.cache.len(), 1);
    }

    #[test]
    fn cache_is_bounded_and_evicts_lapsed_first() {
        let cache = TokenCache::new(3);
        cache.insert([1; 32], 100, 10, 1);
        cache.insert([2; 32], 20, 10, 2);
        cache.insert([3; 32], 300, 10, 3);
        cache.insert([4; 32], 400, 30, 4); // [2] lapsed at 20 → evicted
        assert_eq!(cache.get(&[2; 32], 30), None);
        assert_eq!(cache.get(&[1; 32], 30), Some(1));
        cache.insert([5; 32], 500, 30, 5); // full, none lapsed → soonest (1) goes
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&[1; 32], 30), None);
        assert_eq!(cache.get(&[3; 32], 299), Some(3));
        assert_eq!(cache.get(&[3; 32], 300), None);
        cache.insert([6; 32], 30, 30, 6); // already lapsed: not stored
        assert_eq!(cache.get(&[6; 32], 29), None);
    }

    /// A loopback JWKS endpoint whose document can be swapped, or made to
    /// fail.
    async fn jwks_server(
        doc: Arc<Mutex<Option<String>>>,
    ) -> (String, Arc<std::sync::atomic::AtomicU64>) {
        let (base, hits) = serve(Arc::new(move |req| {
            assert!(req.head.starts_with("GET /jwks "));
            match doc.lock().unwrap().clone() {
                Some(d) => (200, d),
                None => (500, "{}".into()),
            }
        }))
        .await;
        (format!("{base}/jwks"), hits)
    }

    #[tokio::test]
    async fn refetch_is_rate_limited() {
        let ed = TestKey::ed25519("d1");
        let doc = Arc::new(Mutex::new(Some(jwks_of(&[&ed]))));
        let (url, hits) = jwks_server(doc.clone()).await;
        let mut cfg = ValidatorConfig::new(ISS, AUD, JwksSource::Url(url));
        cfg.min_refetch = Duration::from_millis(400);
        let v = Arc::new(TokenValidator::new(cfg).unwrap());
        assert!(v.validate(&ed.sign(&claims())).await.is_ok());
        assert_eq!(hits.load(Ordering::SeqCst), 1);

        let flood = |n: usize| {
            let v = v.clone();
            async move {
                let tasks: Vec<_> = (0..n)
                    .map(|i| {
                        let v = v.clone();
                        tokio::spawn(async move {
                            let k = TestKey::ed25519(&format!("flood-{i}"));
                            v.validate(&k.sign(&claims())).await
                        })
                    })
                    .collect();
                for t in tasks {
                    assert!(matches!(
                        t.await.unwrap(),
                        Err(AuthError::UnknownKey { .. })
                    ));
                }
            }
        };
        flood(50).await; // within min_refetch of the first load: no fetch
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(450)).await;
        flood(50).await; // one fetch for the whole flood
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        assert_eq!(v.jwks().fetch_count(), 2);
    }

    #[tokio::test]
    async fn keeps_last_good_set_when_refetch_fails() {
        let ed = TestKey::ed25519("d1");
        let doc = Arc::new(Mutex::new(Some(jwks_of(&[&ed]))));
        let (url, hits) = jwks_server(doc.clone()).await;
        let mut cfg = ValidatorConfig::new(ISS, AUD, JwksSource::Url(url));
        cfg.min_refetch = Duration::ZERO;
        let v = TokenValidator::new(cfg).unwrap();
        assert!(v.validate(&ed.sign(&claims())).await.is_ok());
        *doc.lock().unwrap() = None; // the issuer breaks
        let stranger = TestKey::ed25519("d2");
        assert!(matches!(
            v.validate(&stranger.sign(&claims())).await,
            Err(AuthError::UnknownKey { .. })
        ));
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        // a new token under the old key still verifies (not a cache hit)
        let fresh = ed.sign(&with(claims(), "jti", json!("j2")));
        assert!(v.validate(&fresh).await.is_ok());
    }

    #[tokio::test]
    async fn jwks_unavailable() {
        let ed = TestKey::ed25519("d1");
        let cfg = ValidatorConfig::new(ISS, AUD, JwksSource::File("/nonexistent/jwks.json".into()));
        let v = TokenValidator::new(cfg).unwrap();
        let e = v.validate(&ed.sign(&claims())).await.unwrap_err();
        assert!(matches!(e, AuthError::JwksUnavailable(_)), "{e:?}");
        assert_eq!(e.status(), 401);
        // plain http to a non-loopback issuer is refused up front
        let cfg =
            ValidatorConfig::new(ISS, AUD, JwksSource::Url("http://auth.example/jwks".into()));
        assert!(TokenValidator::new(cfg).is_err());
    }

    #[test]
    fn leeway_is_clamped() {
        let mut cfg = ValidatorConfig::new(ISS, AUD, JwksSource::File("x".into()));
        cfg.leeway_secs = 86_400;
        assert_eq!(TokenValidator::new(cfg).unwrap().leeway, MAX_LEEWAY_SECS);
    }

    #[test]
    fn bearer_header() {
        assert_eq!(
            bearer_from_header(b"Bearer abc.def-_~+/=="),
            Ok("abc.def-_~+/==")
        );
        assert_eq!(bearer_from_header(b"bearer   tok"), Ok("tok"));
        assert_eq!(bearer_from_header(b"BEARER tok  "), Ok("tok"));
        assert_eq!(bearer_from_header(b""), Err(AuthError::MissingToken));
        assert_eq!(
            bearer_from_header(b"Basic dXNlcjpwdw=="),
            Err(AuthError::MissingToken)
        );
        assert_eq!(
            bearer_from_header(b"Bearertok"),
            Err(AuthError::MissingToken)
        );
        for bad in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Bearer a b",
            b"Bearer a,b",
            b"Bearer a=b",
            b"Bearer \"a\"",
            b"Bearer ==",
            b"Bearer \xff",
        ] {
            let e = bearer_from_header(bad).unwrap_err();
            assert!(matches!(e, AuthError::MalformedHeader(_)), "{bad:?}: {e:?}");
            assert_eq!(e.www_authenticate_error(), "invalid_request");
            assert_eq!(e.status(), 401);
        }
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert!(bearer_from_header(long.as_bytes()).is_err());
    }
}
