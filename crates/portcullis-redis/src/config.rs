//! `RedisCfg`: where Redis is, how to reach it safely (TLS, credentials
//! kept out of the config file), and how patient to be with it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::RedisStoreError;

/// How a gateway replica reaches the shared Redis (a TOML table the gateway
/// embeds). Every field but `url` has a safe default.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisCfg {
    /// `redis://[user[:password]@]host[:port][/db]`, `rediss://…` for TLS
    /// (certificates always verified: `#insecure` is refused), or
    /// `redis+unix:///path`. Prefer `password_file`/`password_env` to a
    /// password in the URL, so the secret stays out of the config.
    pub url: String,
    /// Prepended to every key and to the change channel, so several
    /// deployments (or tests) can share one Redis without meeting.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// PEM bundle of the CAs that sign the server's certificate (`rediss://`
    /// only); without it the system roots are trusted.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for a server that requires mutual
    /// TLS; set with `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// ACL user name; replaces the URL's.
    #[serde(default)]
    pub username: Option<String>,
    /// File whose content (one trailing newline ignored) is the password;
    /// replaces the URL's. For secrets mounted as files.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password; replaces the URL's.
    #[serde(default)]
    pub password_env: Option<String>,
    /// How long one connection attempt (TCP, TLS, AUTH) may take.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long one command may take before the link counts as failing and
    /// a write is reported as not yet stored.
    #[serde(default = "default_op_timeout_ms")]
    pub op_timeout_ms: u64,
    /// First wait between reconnection attempts (doubled after each failure).
    #[serde(default = "default_backoff_min_ms")]
    pub backoff_min_ms: u64,
    /// Longest wait between reconnection attempts.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Writes kept for retry while Redis is unreachable; beyond that a write
    /// is refused outright rather than let memory grow without bound.
    #[serde(default = "default_outbox_max")]
    pub outbox_max: usize,
}

fn default_prefix() -> String {
    "portcullis:".into()
}
fn default_connect_timeout_ms() -> u64 {
    2000
}
fn default_op_timeout_ms() -> u64 {
    1000
}
fn default_backoff_min_ms() -> u64 {
    100
}
fn default_backoff_max_ms() -> u64 {
    5000
}
fn default_outbox_max() -> usize {
    100_000
}

impl RedisCfg {
    /// A configuration for `url` with every other field at its default.
    pub fn new(url: impl Into<String>) -> RedisCfg {
        RedisCfg {
            url: url.into(),
            prefix: default_prefix(),
            ca: None,
            cert: None,
            key: None,
            username: None,
            password_file: None,
            password_env: None,
            connect_timeout_ms: default_connect_timeout_ms(),
            op_timeout_ms: default_op_timeout_ms(),
            backoff_min_ms: default_backoff_min_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            outbox_max: default_outbox_max(),
        }
    }

    /// Checks the fields against each other; errors name the field.
    pub fn validate(&self) -> Result<(), RedisStoreError> {
        let bad = |m: String| Err(RedisStoreError::Config(m));
        let url = self.url.trim();
        let tls = url.starts_with("rediss://");
        if !(url.starts_with("redis://") || tls || url.starts_with("redis+unix://")) {
            return bad(format!(
                "url: {:?} is not a redis://, rediss:// or redis+unix:// URL",
                redact_url(url)
            ));
        }
        if tls && url.contains("#insecure") {
            return bad("url: #insecure (no certificate verification) is refused".into());
        }
        if !tls {
            for (name, set) in [
                ("ca", self.ca.is_some()),
                ("cert", self.cert.is_some()),
                ("key", self.key.is_some()),
            ] {
                if set {
                    return bad(format!("{name}: needs a rediss:// url (TLS)"));
                }
            }
        }
        if self.cert.is_some() != self.key.is_some() {
            return bad("cert, key: set both or neither".into());
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            return bad("password_file, password_env: set one, not both".into());
        }
        if self.connect_timeout_ms == 0 {
            return bad("connect_timeout_ms: must be at least 1".into());
        }
        if self.op_timeout_ms == 0 {
            return bad("op_timeout_ms: must be at least 1".into());
        }
        if self.backoff_min_ms == 0 {
            return bad("backoff_min_ms: must be at least 1".into());
        }
        if self.backoff_max_ms < self.backoff_min_ms {
            return bad(format!(
                "backoff_max_ms: {} is below backoff_min_ms ({})",
                self.backoff_max_ms, self.backoff_min_ms
            ));
        }
        if self.outbox_max == 0 {
            return bad("outbox_max: must be at least 1".into());
        }
        Ok(())
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn op_timeout(&self) -> Duration {
        Duration::from_millis(self.op_timeout_ms)
    }
}

/// Never prints a password that the URL may carry.
impl fmt::Debug for RedisCfg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCfg")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("op_timeout_ms", &self.op_timeout_ms)
            .field("backoff_min_ms", &self.backoff_min_ms)
            .field("backoff_max_ms", &self.backoff_max_ms)
            .field("outbox_max", &self.outbox_max)
            .finish()
    }
}

/// The URL with any `user:password@` replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => {
            let host = authority.get(at + 1..).unwrap_or_default();
            format!("{scheme}://***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn defaults_and_unknown_fields() {
        let c: RedisCfg = toml_like(r#"{"url": "redis://127.0.0.1:6379"}"#);
        assert_eq!(c, RedisCfg::new("redis://127.0.0.1:6379"));
        assert_eq!(c.prefix, "portcullis:");
        c.validate().unwrap();
        let e = serde_json::from_str::<RedisCfg>(r#"{"url": "redis://h", "passwrd": "x"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
    }

    fn toml_like(s: &str) -> RedisCfg {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn validation_names_the_field() {
        let check = |f: &dyn Fn(&mut RedisCfg), want: &str| {
            let mut c = RedisCfg::new("rediss://h:6380");
            f(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        };
        check(&|c| c.url = "http://h".into(), "url:");
        check(&|c| c.url = "rediss://h/#insecure".into(), "#insecure");
        check(
            &|c| {
                c.url = "redis://h".into();
                c.ca = Some("/ca.pem".into());
            },
            "ca: needs a rediss://",
        );
        check(&|c| c.cert = Some("/c.pem".into()), "cert, key");
        check(
            &|c| {
                c.password_file = Some("/p".into());
                c.password_env = Some("P".into());
            },
            "password_file, password_env",
        );
        check(&|c| c.op_timeout_ms = 0, "op_timeout_ms");
        check(
            &|c| {
                c.backoff_min_ms = 10;
                c.backoff_max_ms = 5;
            },
            "backoff_max_ms",
        );
        check(&|c| c.outbox_max = 0, "outbox_max");
    }

    #[test]
    fn passwords_never_printed() {
        assert_eq!(
            redact_url("redis://alice:s3cret@h:6379/2"),
            "redis://***@h:6379/2"
        );
        assert_eq!(redact_url("rediss://:s3cret@h"), "rediss://***@h");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        let c = RedisCfg::new("redis://u:s3cret@h");
        assert!(!format!("{c:?}").contains("s3cret"));
        let e = RedisCfg::new("rediz://u:s3cret@h")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
