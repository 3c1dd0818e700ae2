//! Revocations that outlive the process: client certificates (by SHA-256
//! fingerprint or serial) and bearer tokens (by `jti`). Sessions are
//! killed rather than revoked: they do not survive a restart anyway.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

/// What is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevokedKind {
    /// A client certificate (fingerprint or serial, as given).
    Certificate,
    /// A bearer token, by its `jti`.
    Token,
}

impl RevokedKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RevokedKind::Certificate => "certificate",
            RevokedKind::Token => "token",
        }
    }
}

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Certificate or token.
    pub kind: RevokedKind,
    /// The fingerprint, serial or `jti`.
    pub value: String,
    /// Why.
    pub reason: String,
    /// Who revoked it.
    pub by: String,
    /// When (Unix seconds).
    pub created_at: u64,
    /// When the entry may be forgotten (a token past its own expiry needs
    /// no entry), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl Revocation {
    /// The store key: `kind:value`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.value)
    }
}

/// Revoked tokens (checked on every request that carries one) and the
/// record of every revocation.
#[derive(Default)]
pub struct Revocations {
    tokens: AtomicUsize,
    all: RwLock<HashMap<String, Revocation>>,
}

impl Revocations {
    /// Adds a revocation.
    pub fn insert(&self, r: Revocation) {
        let mut m = self.all.write().unwrap_or_else(|e| e.into_inner());
        m.insert(r.key(), r);
        self.recount(&m);
    }

    /// Forgets a revocation (expired, or lifted by an operator).
    pub fn remove(&self, key: &str) -> Option<Revocation> {
        let mut m = self.all.write().unwrap_or_else(|e| e.into_inner());
        let r = m.remove(key);
        self.recount(&m);
        r
    }

    fn recount(&self, m: &HashMap<String, Revocation>) {
        let n = m.values().filter(|r| r.kind == RevokedKind::Token).count();
        self.tokens.store(n, Ordering::Release);
    }

    /// Whether a token with this `jti` is revoked.
    pub fn token_revoked(&self, jti: &str) -> bool {
        if self.tokens.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.all
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&format!("token:{jti}"))
    }

    /// Every revocation, oldest first.
    pub fn list(&self) -> Vec<Revocation> {
        let m = self.all.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<Revocation> = m.values().cloned().collect();
        v.sort_by_key(|r| (r.created_at, r.key()));
        v
    }
}
