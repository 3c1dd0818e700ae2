//! The identity tuple every later stage reads: workload (SPIFFE ID from
//! the client certificate), user (token claims), device (posture) and how
//! strongly it was authenticated.

use std::sync::Arc;

use crate::jwt::TokenClaims;
use crate::posture::Posture;
use crate::spiffe::SpiffeId;
use crate::tls::PeerCert;

/// How the caller proved who it is, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Strength {
    /// Nothing (allowed only on loopback when configured).
    Anonymous,
    /// The local user of a stdio front (`wrap`).
    Local,
    /// A valid bearer token.
    Token,
    /// A verified client certificate.
    Certificate,
    /// Both a certificate and a token.
    CertificateAndToken,
}

impl Strength {
    /// A short name for logs and policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Strength::Anonymous => "anonymous",
            Strength::Local => "local",
            Strength::Token => "token",
            Strength::Certificate => "certificate",
            Strength::CertificateAndToken => "certificate+token",
        }
    }
}

/// Who is calling, for whom, from what device.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The workload identity from the client certificate.
    pub workload: Option<SpiffeId>,
    /// The client certificate itself.
    pub cert: Option<Arc<PeerCert>>,
    /// The user (or OAuth client) from the bearer token.
    pub user: Option<TokenClaims>,
    /// The local user name (stdio front), when there is no token.
    pub local_user: Option<String>,
    /// The device's posture (unknown unless a fresh signed assertion came).
    pub device: Posture,
    /// How it was established.
    pub strength: Strength,
}

impl Principal {
    /// An unauthenticated caller.
    pub fn anonymous() -> Principal {
        Principal {
            workload: None,
            cert: None,
            user: None,
            local_user: None,
            device: Posture::Unknown {
                reason: "no posture assertion".into(),
            },
            strength: Strength::Anonymous,
        }
    }

    /// The local user behind `wrap`, speaking as agent `agent`.
    pub fn local(user: &str, agent: &str) -> Principal {
        Principal {
            local_user: Some(format!("{user}@{agent}")),
            strength: Strength::Local,
            ..Principal::anonymous()
        }
    }

    /// The user part of the identity: `iss#sub` (or the OAuth client id
    /// when the token names no subject).
    pub fn user_id(&self) -> Option<String> {
        if let Some(u) = &self.user {
            let who = u.sub.as_deref().or(u.client_id.as_deref()).unwrap_or("?");
            return Some(format!("{}#{who}", u.iss));
        }
        self.local_user.clone()
    }

    /// A stable key for the identity, used to bind sessions to it.
    pub fn key(&self) -> String {
        let w = self
            .workload
            .as_ref()
            .map(|w| w.to_string())
            .unwrap_or_else(|| "-".into());
        let u = self.user_id().unwrap_or_else(|| "-".into());
        format!("w={w};u={u}")
    }

    /// The client certificate's fingerprint, if any.
    pub fn fingerprint(&self) -> Option<&str> {
        self.cert.as_ref().map(|c| c.fingerprint.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_distinguish_identities() {
        let a = Principal::anonymous();
        assert_eq!(a.key(), "w=-;u=-");
        let l = Principal::local("ann", "desktop");
        assert_eq!(l.key(), "w=-;u=ann@desktop");
        let mut w = Principal::anonymous();
        w.workload = SpiffeId::parse("spiffe://example.org/agent/a").ok();
        assert_eq!(w.key(), "w=spiffe://example.org/agent/a;u=-");
        assert!(Strength::CertificateAndToken > Strength::Token);
    }
}
