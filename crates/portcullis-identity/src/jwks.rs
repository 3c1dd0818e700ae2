//! JSON Web Key Sets: where token-signing keys come from, and a cache that
//! follows key rotation without letting a flood of unknown `kid`s turn into a
//! flood of fetches.
//!
//! Only signature keys for RS256 (RSA, 2048–4096 bits), ES256 (EC P-256) and
//! EdDSA (OKP Ed25519) are kept; every other key in a set (HMAC `oct` keys,
//! encryption keys, other curves) is skipped. A key is only ever used for the
//! algorithm family of its type, so an RSA key can never verify an HS256
//! token.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use serde_json::Value;

use crate::jwt::AuthError;

/// Default minimum spacing between two fetches of a key set, so unknown
/// `kid`s cannot make the gateway hammer the issuer.
pub const DEFAULT_MIN_REFETCH: Duration = Duration::from_secs(30);
/// Default age after which a loaded key set is refreshed (at the next use),
/// so keys the issuer withdrew stop verifying even without a new `kid`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
/// Default bound on keys kept from one set, so a hostile set cannot grow
/// memory or lookup cost.
pub const DEFAULT_MAX_KEYS: usize = 64;
/// Default bound on a key set document, in bytes.
pub const DEFAULT_MAX_BYTES: usize = 256 * 1024;
/// Default time limit for one fetch (connect, TLS, request and body).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Files CA bundles are looked for at when no `ca_file` is configured, so an
/// HTTPS issuer with a public certificate works without extra config.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/usr/local/share/certs/ca-root-nss.crt",
];

/// Where a key set is read from: a local file (read on each refresh) or an
/// issuer URL (HTTPS, or plain HTTP to a loopback host only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS JSON document on disk.
    File(PathBuf),
    /// A JWKS URL: `https://…`, or `http://` to `localhost`/127.0.0.0/8/`::1`.
    Url(String),
}

/// A configuration mistake found before any token is seen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Tuning for a [`Jwks`] cache; `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct JwksOptions {
    /// Minimum time between two fetch attempts (first load excepted).
    pub min_refetch: Duration,
    /// A set older than this is refreshed at its next use.
    pub max_age: Duration,
    /// PEM CA bundle trusted for an HTTPS source (else the system bundle).
    pub ca_file: Option<PathBuf>,
    /// Most keys kept from one set.
    pub max_keys: usize,
    /// Largest accepted document, in bytes.
    pub max_bytes: usize,
    /// Time limit for one fetch.
    pub timeout: Duration,
}

impl Default for JwksOptions {
    fn default() -> Self {
        Self {
            min_refetch: DEFAULT_MIN_REFETCH,
            max_age: DEFAULT_MAX_AGE,
            ca_file: None,
            max_keys: DEFAULT_MAX_KEYS,
            max_bytes: DEFAULT_MAX_BYTES,
            timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }
}

/// The key types Portcullis verifies with; one per accepted algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA, for RS256.
    Rsa,
    /// EC P-256, for ES256.
    P256,
    /// OKP Ed25519, for EdDSA.
    Ed25519,
}

impl KeyKind {
    /// The key type an algorithm needs; anything but RS256/ES256/EdDSA is
    /// refused here, before any key lookup.
    pub fn for_alg(alg: Algorithm) -> Result<Self, AuthError> {
        match alg {
            Algorithm::RS256 => Ok(Self::Rsa),
            Algorithm::ES256 => Ok(Self::P256),
            Algorithm::EdDSA => Ok(Self::Ed25519),
            other => Err(AuthError::UnsupportedAlg(format!("{other:?}"))),
        }
    }

    fn alg_name(self) -> &'static str {
        match self {
            Self::Rsa => "RS256",
            Self::P256 => "ES256",
            Self::Ed25519 => "EdDSA",
        }
    }
}

/// A verification key found for a token, with a fingerprint that names the
/// key material (so caches can tell when the key has left the set).
#[derive(Debug, Clone)]
pub struct ResolvedKey {
    /// The key, usable with `jsonwebtoken::crypto::verify`.
    pub key: DecodingKey,
    /// SHA-256 over the key's type and public parameters.
    pub fingerprint: [u8; 32],
}

#[derive(Debug, Clone)]
struct KeyEntry {
    kid: Option<String>,
    kind: KeyKind,
    key: DecodingKey,
    fingerprint: [u8; 32],
}

#[derive(Debug, Default)]
struct KeySet {
    keys: Vec<KeyEntry>,
}

enum Lookup {
    Found(ResolvedKey),
    /// The `kid` exists but for another key type, or the token has no `kid`
    /// and the set does not hold exactly one key of the right type: a refetch
    /// would not help.
    Unusable,
    Missing,
}

impl KeySet {
    fn find(&self, kid: Option<&str>, kind: KeyKind) -> Lookup {
        match kid {
            Some(kid) => {
                let mut same_kid = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .peekable();
                if same_kid.peek().is_none() {
                    return Lookup::Missing;
                }
                match same_kid.find(|k| k.kind == kind) {
                    Some(k) => Lookup::Found(k.resolved()),
                    None => Lookup::Unusable,
                }
            }
            None => {
                let mut of_kind = self.keys.iter().filter(|k| k.kind == kind);
                match (of_kind.next(), of_kind.next()) {
                    (Some(k), None) => Lookup::Found(k.resolved()),
                    (None, _) => Lookup::Missing,
                    (Some(_), Some(_)) => Lookup::Unusable,
                }
            }
        }
    }
}

impl KeyEntry {
    fn resolved(&self) -> ResolvedKey {
        ResolvedKey {
            key: self.key.clone(),
            fingerprint: self.fingerprint,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    set: Option<Arc<KeySet>>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

/// A cached key set: loaded on first use, refetched on an unknown `kid` or
/// when older than `max_age` (at most once per `min_refetch`), keeping the
/// last good set when a refetch fails.
pub struct Jwks {
    source: JwksSource,
    opts: JwksOptions,
    state: RwLock<State>,
    fetch_lock: tokio::sync::Mutex<()>,
    attempts: AtomicU64,
    http: tokio::sync::OnceCell<HttpFetcher>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("source", &self.source)
            .field("fetches", &self.fetch_count())
            .finish()
    }
}

impl Jwks {
    /// Checks the source (URL scheme and loopback rule) and builds an empty
    /// cache; nothing is fetched until the first key is asked for.
    pub fn new(source: JwksSource, opts: JwksOptions) -> Result<Self, ConfigError> {
        if let JwksSource::Url(url) = &source {
            check_url(url)?;
        }
        Ok(Self {
            source,
            opts,
            state: RwLock::new(State::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
            attempts: AtomicU64::new(0),
            http: tokio::sync::OnceCell::new(),
        })
    }

    /// The source this cache reads, for logs and diagnostics.
    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    /// How many fetch attempts were made (successful or not); for tests and
    /// metrics.
    pub fn fetch_count(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// The verification key for a token's `kid` and `alg`.
    pub async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, AuthError> {
        self.resolve(kid, alg).await.map(|r| r.key)
    }

    /// Like [`Jwks::key`], plus the key's fingerprint (for caches that must
    /// notice when the key is rotated out).
    pub async fn resolve(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<ResolvedKey, AuthError> {
        let kind = KeyKind::for_alg(alg)?;
        let (set, stale) = self.snapshot();
        if let Some(set) = &set {
            match set.find(kid, kind) {
                Lookup::Found(k) if !stale => return Ok(k),
                Lookup::Unusable => return Err(unknown(kid, kind)),
                Lookup::Found(_) | Lookup::Missing => {}
            }
        }
        self.refresh_if_allowed().await;
        let (set, _) = self.snapshot();
        let Some(set) = set else {
            let reason = self
                .read_state(|s| s.last_error.clone())
                .unwrap_or_else(|| "key set not loaded yet".to_owned());
            return Err(AuthError::JwksUnavailable(reason));
        };
        match set.find(kid, kind) {
            Lookup::Found(k) => Ok(k),
            Lookup::Unusable | Lookup::Missing => Err(unknown(kid, kind)),
        }
    }

    /// Whether the key with this fingerprint is still in the current set; a
    /// synchronous check that never fetches.
    pub fn contains(&self, fingerprint: &[u8; 32]) -> bool {
        self.read_state(|s| {
            s.set
                .as_ref()
                .is_some_and(|set| set.keys.iter().any(|k| &k.fingerprint == fingerprint))
        })
    }

    fn read_state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let guard = self.state.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    fn snapshot(&self) -> (Option<Arc<KeySet>>, bool) {
        self.read_state(|s| {
            let stale = s
                .fetched_at
                .is_some_and(|t| t.elapsed() >= self.opts.max_age);
            (s.set.clone(), stale)
        })
    }

    fn may_attempt(&self) -> bool {
        self.read_state(|s| {
            s.last_attempt
                .is_none_or(|t| t.elapsed() >= self.opts.min_refetch)
        })
    }

    /// Fetches the set unless another fetch happened within `min_refetch`;
    /// concurrent callers wait for one fetch instead of starting their own.
    async fn refresh_if_allowed(&self) {
        let seen = self.attempts.load(Ordering::Acquire);
        if !self.may_attempt() {
            return;
        }
        let _one_at_a_time = self.fetch_lock.lock().await;
        if self.attempts.load(Ordering::Acquire) != seen || !self.may_attempt() {
            return;
        }
        {
            let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
            s.last_attempt = Some(Instant::now());
        }
        self.attempts.fetch_add(1, Ordering::AcqRel);
        let result = self.fetch().await;
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(set) => {
                tracing::debug!(source = ?self.source, keys = set.keys.len(), "key set loaded");
                s.set = Some(Arc::new(set));
                s.fetched_at = Some(Instant::now());
                s.last_error = None;
            }
            Err(e) => {
                tracing::warn!(source = ?self.source, error = %e, kept_previous = s.set.is_some(), "key set fetch failed");
                s.last_error = Some(e);
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let body = match &self.source {
            JwksSource::File(path) => read_bounded(path, self.opts.max_bytes).await?,
            JwksSource::Url(url) => {
                let http = self
                    .http
                    .get_or_try_init(|| {
                        HttpFetcher::new(
                            self.opts.ca_file.as_deref(),
                            self.opts.timeout,
                            self.opts.max_bytes,
                        )
                    })
                    .await?;
                let req = http::Request::get(url)
                    .header(http::header::ACCEPT, "application/json")
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| format!("bad request: {e}"))?;
                let (status, body) = http.send(req).await?;
                if status != http::StatusCode::OK {
                    return Err(format!("{url} answered {status}"));
                }
                body.to_vec()
            }
        };
        parse_jwks(&body, self.opts.max_keys)
    }
}

fn unknown(kid: Option<&str>, kind: KeyKind) -> AuthError {
    AuthError::UnknownKey {
        kid: kid.map(|k| k.chars().take(128).collect()),
        alg: kind.alg_name(),
    }
}

/// Reads a file with tokio, refusing files larger than `max` bytes.
pub(crate) async fn read_bounded(path: &Path, max: usize) -> Result<Vec<u8>, String> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > max as u64 {
        return Err(format!("{}: larger than {max} bytes", path.display()));
    }
    tokio::fs::read(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Base64url that accepts padding or none (JWK members are unpadded, but
/// some issuers pad).
const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn b64_member(key: &Value, name: &str) -> Result<Vec<u8>, String> {
    let text = key
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing \"{name}\""))?;
    B64_LENIENT
        .decode(text)
        .map_err(|e| format!("\"{name}\": {e}"))
}

/// Parses a JWKS document, keeping only usable signature keys (at most
/// `max_keys`).
fn parse_jwks(body: &[u8], max_keys: usize) -> Result<KeySet, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no \"keys\" array")?;
    let mut set = KeySet::default();
    for (i, key) in keys.iter().enumerate() {
        match parse_key(key) {
            Ok(Some(entry)) => {
                if set.keys.len() >= max_keys {
                    tracing::warn!(
                        max_keys,
                        "key set holds more keys than allowed; the rest are ignored"
                    );
                    break;
                }
                set.keys.push(entry);
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(index = i, error = %e, "key skipped"),
        }
    }
    Ok(set)
}

/// One JWK: `Ok(None)` for keys that are simply not for us (encryption keys,
/// unsupported types), `Err` for broken ones.
fn parse_key(key: &Value) -> Result<Option<KeyEntry>, String> {
    let kty = key.get("kty").and_then(Value::as_str).ok_or("no kty")?;
    if let Some(usage) = key.get("use") {
        if usage.as_str() != Some("sig") {
            return Ok(None);
        }
    }
    if let Some(ops) = key.get("key_ops") {
        let verify = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o.as_str() == Some("verify")));
        if !verify {
            return Ok(None);
        }
    }
    let crv = key.get("crv").and_then(Value::as_str);
    let kind = match (kty, crv) {
        ("RSA", _) => KeyKind::Rsa,
        ("EC", Some("P-256")) => KeyKind::P256,
        ("OKP", Some("Ed25519")) => KeyKind::Ed25519,
        _ => return Ok(None),
    };
    if let Some(alg) = key.get("alg") {
        if alg.as_str() != Some(kind.alg_name()) {
            return Ok(None);
        }
    }
    let kid = match key.get("kid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("kid is not a string".to_owned()),
    };
    let mut material = Vec::new();
    let decoding = match kind {
        KeyKind::Rsa => {
            let n = strip_leading_zeros(b64_member(key, "n")?);
            let e = strip_leading_zeros(b64_member(key, "e")?);
            let bits = n.len() * 8;
            if !(2048..=4096).contains(&bits) {
                return Err(format!("RSA modulus of {bits} bits (2048–4096 accepted)"));
            }
            if e.is_empty() || e.len() > 4 || e.last().is_some_and(|b| b % 2 == 0) || e == [1] {
                return Err("bad RSA exponent".to_owned());
            }
            material.extend_from_slice(b"RSA\0");
            material.extend_from_slice(&n);
            material.push(0);
            material.extend_from_slice(&e);
            DecodingKey::from_rsa_raw_components(&n, &e)
        }
        KeyKind::P256 => {
            let x = b64_member(key, "x")?;
            let y = b64_member(key, "y")?;
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes".to_owned());
            }
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            material.extend_from_slice(b"P-256\0");
            material.extend_from_slice(&point);
            DecodingKey::from_ec_der(&point)
        }
        KeyKind::Ed25519 => {
            let x = b64_member(key, "x")?;
            if x.len() != 32 {
                return Err("Ed25519 key must be 32 bytes".to_owned());
            }
            material.extend_from_slice(b"Ed25519\0");
            material.extend_from_slice(&x);
            DecodingKey::from_ed_der(&x)
        }
    };
    Ok(Some(KeyEntry {
        kid,
        kind,
        key: decoding,
        fingerprint: sha256(&material),
    }))
}

fn strip_leading_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

/// SHA-256 as a fixed array.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    <[u8; 32]>::try_from(digest.as_ref()).unwrap_or_default()
}

/// Accepts `https://` URLs, and `http://` only to a loopback host.
pub(crate) fn check_url(url: &str) -> Result<http::Uri, ConfigError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| ConfigError(format!("{url:?} is not a URL: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| ConfigError(format!("{url:?} has no host")))?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback_host(host) => Ok(uri),
        Some("http") => Err(ConfigError(format!(
            "{url:?}: plain http is only allowed to a loopback host; use https"
        ))),
        _ => Err(ConfigError(format!("{url:?} is not an http(s) URL"))),
    }
}

/// `localhost` or a loopback IP literal (IPv6 with or without brackets).
pub(crate) fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// A small HTTP(S) client for issuer endpoints: TLS trusting a configured
/// (or the system) CA bundle, a time limit and a body size limit.
pub(crate) struct HttpFetcher {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    max_bytes: usize,
}

impl HttpFetcher {
    /// Builds the client, reading the CA bundle with tokio.
    pub(crate) async fn new(
        ca_file: Option<&Path>,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Self, String> {
        let pem = match ca_file {
            Some(path) => read_bounded(path, 16 * 1024 * 1024).await?,
            None => system_ca_bundle().await?,
        };
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("CA bundle: {e}"))?;
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err("CA bundle holds no usable certificate".to_owned());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(timeout));
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            client,
            timeout,
            max_bytes,
        })
    }

    /// Sends one request and reads the whole (bounded) body within the time
    /// limit.
    pub(crate) async fn send(
        &self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let uri = req.uri().clone();
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{uri}: {e}"))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), self.max_bytes)
                .collect()
                .await
                .map_err(|e| format!("{uri}: body: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| format!("{uri}: timed out after {:?}", self.timeout))?
    }
}

async fn system_ca_bundle() -> Result<Vec<u8>, String> {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let candidates = from_env
        .into_iter()
        .chain(SYSTEM_CA_BUNDLES.iter().map(PathBuf::from));
    for path in candidates {
        if let Ok(pem) = read_bounded(&path, 16 * 1024 * 1024).await {
            return Ok(pem);
        }
    }
    Err("no CA bundle configured and none found on the system".to_owned())
}

/// Helpers shared by the crate's unit tests: keys, JWKS documents, signed
/// tokens and a tiny loopback HTTP server.
#[cfg(test)]
pub(crate) mod testkit {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use ring::rand::SystemRandom;
    use ring::signature::{
        EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING,
    };
    use serde_json::{json, Value};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// The checked-in RSA test key (PKCS#1) and its public half (SPKI).
    pub const RSA_KEY_PEM: &[u8] = include_bytes!("../tests/data/rsa_test_key.pem");
    pub const RSA_PUB_PEM: &[u8] = include_bytes!("../tests/data/rsa_test_pub.pem");

    /// A signing key with its JWK.
    pub struct TestKey {
        pub alg: Algorithm,
        pub kid: String,
        pub encoding: EncodingKey,
        pub jwk: Value,
    }

    impl TestKey {
        pub fn rsa(kid: &str) -> Self {
            let encoding = EncodingKey::from_rsa_pem(RSA_KEY_PEM).unwrap();
            let jwk =
                jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, Algorithm::RS256).unwrap();
            let jsonwebtoken::jwk::AlgorithmParameters::RSA(p) = jwk.algorithm else {
                unreachable!()
            };
            let jwk = json!({"kty":"RSA","kid":kid,"alg":"RS256","use":"sig","n":p.n,"e":p.e});
            Self {
                alg: Algorithm::RS256,
                kid: kid.into(),
                encoding,
                jwk,
            }
        }

        pub fn p256(kid: &str) -> Self {
            let rng = SystemRandom::new();
            let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_ref(), &rng)
                    .unwrap();
            let public = pair.public_key().as_ref();
            let jwk = json!({"kty":"EC","crv":"P-256","kid":kid,
                "x":URL_SAFE_NO_PAD.encode(&public[1..33]),"y":URL_SAFE_NO_PAD.encode(&public[33..65])});
            Self {
                alg: Algorithm::ES256,
                kid: kid.into(),
                encoding: EncodingKey::from_ec_der(der.as_ref()),
                jwk,
            }
        }

        pub fn ed25519(kid: &str) -> Self {
            let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
            let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap();
            let jwk = json!({"kty":"OKP","crv":"Ed25519","kid":kid,
                "x":URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())});
            Self {
                alg: Algorithm::EdDSA,
                kid: kid.into(),
                encoding: EncodingKey::from_ed_der(der.as_ref()),
                jwk,
            }
        }

        /// A token over `claims`, signed with this key, header naming its kid.
        pub fn sign(&self, claims: &Value) -> String {
            let mut header = Header::new(self.alg);
            header.kid = Some(self.kid.clone());
            jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
        }
    }

    /// A JWKS document holding these keys.
    pub fn jwks_of(keys: &[&TestKey]) -> String {
        json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
    }

    /// Seconds since the epoch.
    pub fn now() -> u64 {
        crate::jwt::unix_now()
    }

    /// A fresh folder under the system temp dir.
    pub fn temp_dir(tag: &str) -> std::path::PathBuf {
        let mut r = [0u8; 8];
        rand::Rng::fill(&mut rand::rng(), &mut r);
        let dir =
            std::env::temp_dir().join(format!("portcullis-identity-{tag}-{}", hex::encode(r)));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// One HTTP request as the test server saw it.
    pub struct SeenRequest {
        pub head: String,
        pub body: String,
    }

    /// What the handler answers: status and JSON body.
    pub type Handler = Arc<dyn Fn(&SeenRequest) -> (u16, String) + Send + Sync>;

    /// Serves HTTP/1.1 on 127.0.0.1 with `handler`; returns the base URL
    /// (`http://127.0.0.1:PORT`) and a request counter.
    pub async fn serve(handler: Handler) -> (String, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
                    counter.fetch_add(1, Ordering::SeqCst);
                    let (status, out) = handler(&SeenRequest { head, body });
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{out}",
                        out.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        (format!("http://{addr}"), hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A P-256 JWK with random-looking but fixed coordinates (never used to
    /// verify).
    fn ec_jwk(kid: &str) -> Value {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        json!({"kty":"EC","crv":"P-256","kid":kid,"x":b.encode([1u8;32]),"y":b.encode([2u8;32])})
    }

    #[test]
    fn parse_keeps_only_signature_keys() {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let doc = json!({"keys":[
            ec_jwk("a"),
            {"kty":"oct","k":"c2VjcmV0","kid":"hmac"},
            {"kty":"EC","crv":"P-384","kid":"p384","x":"AA","y":"AA"},
            {"kty":"OKP","crv":"Ed25519","kid":"enc","use":"enc","x":b.encode([3u8;32])},
            {"kty":"OKP","crv":"Ed25519","kid":"short","x":b.encode([3u8;31])},
            {"kty":"OKP","crv":"Ed25519","kid":"wrongalg","alg":"RS256","x":b.encode([3u8;32])},
            {"kty":"RSA","kid":"small","n":b.encode([0xffu8;128]),"e":"AQAB"},
            {"kty":"OKP","crv":"Ed25519","kid":"ed","x":b.encode([3u8;32])},
        ]});
        let set = parse_jwks(doc.to_string().as_bytes(), 64).unwrap();
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["a", "ed"]);
        assert!(matches!(
            set.find(Some("a"), KeyKind::P256),
            Lookup::Found(_)
        ));
        assert!(matches!(
            set.find(Some("a"), KeyKind::Rsa),
            Lookup::Unusable
        ));
        assert!(matches!(
            set.find(Some("zz"), KeyKind::Rsa),
            Lookup::Missing
        ));
        assert!(matches!(set.find(None, KeyKind::Ed25519), Lookup::Found(_)));
    }

    #[test]
    fn parse_bounds_key_count() {
        let keys: Vec<_> = (0..10).map(|i| ec_jwk(&format!("k{i}"))).collect();
        let set = parse_jwks(json!({ "keys": keys }).to_string().as_bytes(), 3).unwrap();
        assert_eq!(set.keys.len(), 3);
    }

    #[test]
    fn url_rules() {
        assert!(check_url("https://issuer.example/jwks").is_ok());
        assert!(check_url("http://127.0.0.1:9/jwks").is_ok());
        assert!(check_url("http://localhost:9/jwks").is_ok());
        assert!(check_url("http://[::1]:9/jwks").is_ok());
        assert!(check_url("http://issuer.example/jwks").is_err());
        assert!(check_url("http://10.0.0.1/jwks").is_err());
        assert!(check_url("ftp://localhost/jwks").is_err());
    }

    /// JWKS over HTTPS on loopback, trusted through a configured CA file;
    /// the same server is refused when its CA is not configured.
    #[tokio::test]
    async fn https_with_configured_ca() {
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let key = testkit::TestKey::ed25519("tls1");
        let doc = testkit::jwks_of(&[&key]);
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let dir = testkit::temp_dir("https");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, certified.cert.pem()).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![certified.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(
                    certified.signing_key.serialize_der().into(),
                ),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let doc = doc.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    let _ = tls.read(&mut buf).await;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{doc}",
                        doc.len()
                    );
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        let url = format!("https://localhost:{port}/jwks");

        let opts = JwksOptions {
            ca_file: Some(ca_file),
            ..JwksOptions::default()
        };
        let jwks = Jwks::new(JwksSource::Url(url.clone()), opts).unwrap();
        assert!(jwks.key(Some("tls1"), Algorithm::EdDSA).await.is_ok());

        // Not trusted without the CA (system bundle or none at all).
        let jwks = Jwks::new(JwksSource::Url(url), JwksOptions::default()).unwrap();
        assert!(matches!(
            jwks.key(Some("tls1"), Algorithm::EdDSA).await,
            Err(AuthError::JwksUnavailable(_))
        ));
    }

    #[tokio::test]
    async fn hmac_and_other_algs_refused_before_lookup() {
        let jwks = Jwks::new(
            JwksSource::File("/nonexistent/jwks.json".into()),
            JwksOptions::default(),
        )
        .unwrap();
        for alg in [
            Algorithm::HS256,
            Algorithm::RS384,
            Algorithm::PS256,
            Algorithm::ES384,
        ] {
            assert!(matches!(
                jwks.key(Some("k"), alg).await,
                Err(AuthError::UnsupportedAlg(_))
            ));
        }
        assert_eq!(jwks.fetch_count(), 0);
    }
}
