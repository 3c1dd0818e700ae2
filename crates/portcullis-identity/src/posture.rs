//! Device posture: a signed assertion about the device a request comes from,
//! issued by a configured device-trust service and carried in the
//! [`POSTURE_HEADER`] request header.
//!
//! The header value is a compact JWT (RS256, ES256 or EdDSA) whose claims
//! are:
//!
//! | claim | meaning |
//! | --- | --- |
//! | `iss` | the device-trust issuer (must equal the configured one) |
//! | `sub` | the device id |
//! | `iat` | when the posture was assessed (required; older than `max_age_secs` is stale) |
//! | `exp` | optional expiry |
//! | `aud` | optional; checked only when an audience is configured |
//! | `managed` | bool, the device is under management (absent: false) |
//! | `os` | string, e.g. `"macOS 15.2"` |
//! | `patch_age_days` | integer, days since the last OS patch |
//! | `disk_encrypted` | bool |
//! | `edr_running` | bool, endpoint detection and response agent running |
//!
//! Verification never fails a request by itself: missing, malformed, forged,
//! foreign, expired or stale posture is [`Posture::Unknown`] with a reason,
//! and policy decides what unknown means. Unknown is never trusted.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use serde_json::Value;

use crate::jwks::{sha256, ConfigError, Jwks, JwksOptions, JwksSource, DEFAULT_MIN_REFETCH};
use crate::jwt::{
    audiences, check_times, numeric_claim, string_claim, unix_now, verify_compact, AuthError,
    TokenCache, DEFAULT_LEEWAY_SECS, MAX_TOKEN_BYTES,
};

/// The request header carrying the device posture JWT (lower case, as HTTP/2
/// and hyper spell header names).
pub const POSTURE_HEADER: &str = "portcullis-device-posture";

/// Bound on cached posture verifications.
const CACHE_ENTRIES: usize = 10_000;

/// Where device posture comes from and how old it may be.
#[derive(Debug, Clone)]
pub struct PostureConfig {
    /// The device-trust issuer (`iss`), compared exactly.
    pub issuer: String,
    /// The issuer's signing keys.
    pub jwks: JwksSource,
    /// Posture assessed longer ago than this (by `iat`) is stale.
    pub max_age_secs: u64,
    /// If set, `aud` must contain it.
    pub audience: Option<String>,
    /// PEM CA bundle for an HTTPS key set URL (else the system bundle).
    pub ca_file: Option<PathBuf>,
    /// Minimum time between two key set fetches.
    pub min_refetch: Duration,
}

impl PostureConfig {
    /// A config with no audience check and default key set settings.
    pub fn new(issuer: impl Into<String>, jwks: JwksSource, max_age_secs: u64) -> Self {
        Self {
            issuer: issuer.into(),
            jwks,
            max_age_secs,
            audience: None,
            ca_file: None,
            min_refetch: DEFAULT_MIN_REFETCH,
        }
    }
}

/// Verified facts about a device, for policy.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceClaims {
    /// `sub`: the device id.
    pub device_id: String,
    /// The device is managed (absent claim: false).
    pub managed: bool,
    /// Operating system, as the issuer names it.
    pub os: Option<String>,
    /// Days since the last OS patch.
    pub patch_age_days: Option<u32>,
    /// Disk encryption is on.
    pub disk_encrypted: Option<bool>,
    /// An EDR agent is running.
    pub edr_running: Option<bool>,
    /// `iat`: when the posture was assessed (seconds since the epoch).
    pub issued_at: u64,
    /// All claims, verbatim.
    pub claims: Value,
}

/// A request's device posture: verified, or unknown with the reason.
#[derive(Debug, Clone, PartialEq)]
pub enum Posture {
    /// No trustworthy, fresh posture (never to be treated as trusted).
    Unknown {
        /// Why, for logs and policy explanations.
        reason: String,
    },
    /// A fresh assertion from the configured issuer.
    Verified(DeviceClaims),
}

impl Posture {
    fn unknown(reason: impl Into<String>) -> Self {
        Self::Unknown {
            reason: reason.into(),
        }
    }

    /// The device facts, when verified.
    pub fn verified(&self) -> Option<&DeviceClaims> {
        match self {
            Self::Verified(d) => Some(d),
            Self::Unknown { .. } => None,
        }
    }
}

/// Verifies posture headers against one device-trust issuer.
#[derive(Debug)]
pub struct PostureVerifier {
    issuer: String,
    audience: Option<String>,
    max_age: u64,
    jwks: Jwks,
    cache: TokenCache<(DeviceClaims, [u8; 32])>,
    signature_checks: AtomicU64,
}

impl PostureVerifier {
    /// Builds a verifier; keys are loaded at the first assertion.
    pub fn new(cfg: PostureConfig) -> Result<Self, ConfigError> {
        if cfg.issuer.is_empty() {
            return Err(ConfigError("posture issuer must not be empty".to_owned()));
        }
        let opts = JwksOptions {
            min_refetch: cfg.min_refetch,
            ca_file: cfg.ca_file,
            ..JwksOptions::default()
        };
        Ok(Self {
            issuer: cfg.issuer,
            audience: cfg.audience,
            max_age: cfg.max_age_secs,
            jwks: Jwks::new(cfg.jwks, opts)?,
            cache: TokenCache::new(CACHE_ENTRIES),
            signature_checks: AtomicU64::new(0),
        })
    }

    /// How many signatures were verified (cache hits do none); for tests and
    /// metrics.
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The posture a request header value proves; never an error.
    pub async fn verify(&self, header_value: Option<&[u8]>) -> Posture {
        let Some(raw) = header_value else {
            return Posture::unknown("no posture header");
        };
        let Ok(text) = std::str::from_utf8(raw) else {
            return Posture::unknown("posture header is not ASCII");
        };
        let token = text.trim_matches(|c| c == ' ' || c == '\t');
        if token.is_empty() {
            return Posture::unknown("empty posture header");
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Posture::unknown("posture header too long");
        }
        let now = unix_now();
        let hash = sha256(token.as_bytes());
        if let Some((device, key)) = self.cache.get(&hash, now) {
            if self.jwks.contains(&key) {
                return Posture::Verified(device);
            }
            self.cache.remove(&hash);
        }
        match self.check(token, now).await {
            Ok((device, key, until)) => {
                self.cache.insert(hash, until, now, (device.clone(), key));
                Posture::Verified(device)
            }
            Err(reason) => {
                tracing::debug!(%reason, "device posture unknown");
                Posture::Unknown { reason }
            }
        }
    }

    async fn check(&self, token: &str, now: u64) -> Result<(DeviceClaims, [u8; 32], u64), String> {
        let verified = verify_compact(token, &self.jwks, &self.signature_checks)
            .await
            .map_err(|e| e.to_string())?;
        let claims = verified.payload;
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(AuthError::WrongIssuer.to_string());
        }
        if let Some(aud) = &self.audience {
            if !audiences(&claims).iter().any(|a| a == aud) {
                return Err(AuthError::WrongAudience.to_string());
            }
        }
        let exp =
            check_times(&claims, now, DEFAULT_LEEWAY_SECS, false).map_err(|e| e.to_string())?;
        let issued_at = numeric_claim(&claims, "iat")
            .map_err(|e| e.to_string())?
            .ok_or("posture has no iat")?;
        let age = now.saturating_sub(issued_at);
        if age > self.max_age {
            return Err(format!(
                "stale posture: assessed {age} s ago, at most {} s allowed",
                self.max_age
            ));
        }
        let device_id = string_claim(&claims, "sub").ok_or("posture has no sub (device id)")?;
        let bool_claim = |name: &str| claims.get(name).and_then(Value::as_bool);
        let until = issued_at
            .saturating_add(self.max_age)
            .saturating_add(1)
            .min(exp.unwrap_or(u64::MAX));
        let device = DeviceClaims {
            device_id,
            managed: bool_claim("managed").unwrap_or(false),
            os: string_claim(&claims, "os"),
            patch_age_days: claims
                .get("patch_age_days")
                .and_then(Value::as_u64)
                .and_then(|d| u32::try_from(d).ok()),
            disk_encrypted: bool_claim("disk_encrypted"),
            edr_running: bool_claim("edr_running"),
            issued_at,
            claims,
        };
        Ok((device, verified.key, until))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::jwks::testkit::{jwks_of, now, temp_dir, TestKey};

    const ISS: &str = "https://device-trust.test";

    fn verifier(key: &TestKey, max_age: u64) -> PostureVerifier {
        let path = temp_dir("posture").join("jwks.json");
        std::fs::write(&path, jwks_of(&[key])).unwrap();
        PostureVerifier::new(PostureConfig::new(ISS, JwksSource::File(path), max_age)).unwrap()
    }

    fn assertion(iat: u64) -> serde_json::Value {
        json!({"iss": ISS, "sub": "laptop-42", "iat": iat, "exp": iat + 3600,
               "managed": true, "os": "macOS 15.2", "patch_age_days": 3,
               "disk_encrypted": true, "edr_running": false})
    }

    fn reason(p: &Posture) -> &str {
        match p {
            Posture::Unknown { reason } => reason,
            Posture::Verified(d) => panic!("unexpectedly verified: {d:?}"),
        }
    }

    #[tokio::test]
    async fn verified() {
        let key = TestKey::p256("dev1");
        let v = verifier(&key, 600);
        let t = now() - 30;
        let token = key.sign(&assertion(t));
        let p = v.verify(Some(format!(" {token} ").as_bytes())).await;
        let d = p.verified().unwrap();
        assert_eq!(d.device_id, "laptop-42");
        assert!(d.managed);
        assert_eq!(d.os.as_deref(), Some("macOS 15.2"));
        assert_eq!(d.patch_age_days, Some(3));
        assert_eq!(d.disk_encrypted, Some(true));
        assert_eq!(d.edr_running, Some(false));
        assert_eq!(d.issued_at, t);
        // cached: no second signature check
        assert_eq!(v.verify(Some(token.as_bytes())).await, p);
        assert_eq!(v.signature_checks(), 1);
        // `managed` absent means unmanaged
        let mut c = assertion(t);
        c.as_object_mut().unwrap().remove("managed");
        assert!(
            !v.verify(Some(key.sign(&c).as_bytes()))
                .await
                .verified()
                .unwrap()
                .managed
        );
        assert_eq!(POSTURE_HEADER, "portcullis-device-posture");
    }

    #[tokio::test]
    async fn stale_missing_forged_foreign_expired() {
        let key = TestKey::ed25519("dev1");
        let v = verifier(&key, 600);
        let t = now();
        // stale: assessed 20 minutes ago, max 10
        let p = v
            .verify(Some(key.sign(&assertion(t - 1200)).as_bytes()))
            .await;
        assert!(reason(&p).starts_with("stale posture"), "{p:?}");
        // missing / empty / not ASCII / malformed
        assert_eq!(reason(&v.verify(None).await), "no posture header");
        assert_eq!(reason(&v.verify(Some(b"  ")).await), "empty posture header");
        reason(&v.verify(Some(b"\xff\xfe")).await);
        reason(&v.verify(Some(b"not-a-jwt")).await);
        // bad signature: signed by another key under the same kid
        let impostor = TestKey::ed25519("dev1");
        let p = v
            .verify(Some(impostor.sign(&assertion(t)).as_bytes()))
            .await;
        assert_eq!(reason(&p), "bad token signature");
        // wrong issuer
        let mut c = assertion(t);
        c["iss"] = json!("https://evil.test");
        assert_eq!(
            reason(&v.verify(Some(key.sign(&c).as_bytes())).await),
            "wrong token issuer"
        );
        // expired
        let mut c = assertion(t - 100);
        c["exp"] = json!(t - 90);
        assert_eq!(
            reason(&v.verify(Some(key.sign(&c).as_bytes())).await),
            "token expired"
        );
        // no iat, no sub
        let mut c = assertion(t);
        c.as_object_mut().unwrap().remove("iat");
        assert_eq!(
            reason(&v.verify(Some(key.sign(&c).as_bytes())).await),
            "posture has no iat"
        );
        let mut c = assertion(t);
        c.as_object_mut().unwrap().remove("sub");
        reason(&v.verify(Some(key.sign(&c).as_bytes())).await);
    }

    #[tokio::test]
    async fn audience_when_configured() {
        let key = TestKey::ed25519("dev1");
        let path = temp_dir("posture-aud").join("jwks.json");
        std::fs::write(&path, jwks_of(&[&key])).unwrap();
        let mut cfg = PostureConfig::new(ISS, JwksSource::File(path), 600);
        cfg.audience = Some("portcullis".into());
        let v = PostureVerifier::new(cfg).unwrap();
        let mut c = assertion(now());
        assert_eq!(
            reason(&v.verify(Some(key.sign(&c).as_bytes())).await),
            "wrong token audience"
        );
        c["aud"] = json!("portcullis");
        assert!(v
            .verify(Some(key.sign(&c).as_bytes()))
            .await
            .verified()
            .is_some());
    }
}
