//! Authentication of every request: client certificate (from the
//! connection), bearer token (OAuth 2.1 resource server: JWT with JWKS, or
//! RFC 7662 introspection), device posture — combined into a `Principal`.
//!
//! Failures answer 401 with a `WWW-Authenticate` header pointing at the
//! Protected Resource Metadata (RFC 9728), or 403 (`insufficient_scope`,
//! revoked certificate, posture required); each is logged with its reason.
//! Nothing here knows about MCP.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use portcullis_identity::introspect::{IntrospectionConfig, Introspector};
use portcullis_identity::jwks::JwksSource;
use portcullis_identity::jwt::{
    bearer_from_header, AuthError, TokenClaims, TokenValidator, ValidatorConfig,
};
use portcullis_identity::posture::{PostureConfig, PostureVerifier, POSTURE_HEADER};
use portcullis_identity::principal::{Principal, Strength};
use portcullis_identity::tls::{now_unix, DenyList};
use serde_json::{json, Value};

use crate::config::{AuthRequire, Config};
use crate::listener::ConnInfo;

/// Where well-known metadata lives (RFC 9728).
pub const PRM_PATH: &str = "/.well-known/oauth-protected-resource";

enum TokenCheck {
    Jwt(TokenValidator),
    Introspect(Introspector),
}

impl TokenCheck {
    async fn validate(&self, token: &str) -> Result<TokenClaims, AuthError> {
        match self {
            TokenCheck::Jwt(v) => v.validate(token).await,
            TokenCheck::Introspect(i) => i.validate(token).await,
        }
    }
}

/// Decides who a request comes from, or refuses it.
pub struct Authenticator {
    require: AuthRequire,
    anonymous_ok: bool,
    tokens: Option<TokenCheck>,
    posture: Option<(PostureVerifier, bool)>,
    deny: Arc<DenyList>,
    required_scopes: Vec<String>,
    /// The gateway's canonical resource URI (token audience).
    pub resource: String,
    /// The Protected Resource Metadata document.
    pub metadata: Value,
    metadata_url: String,
    monitor: Option<Arc<crate::monitor::Monitor>>,
    /// Revoked token ids (`jti`), checked on every request with a token.
    revoked: Option<Arc<portcullis_contain::Containment>>,
}

fn jwks_source(s: &str) -> JwksSource {
    if s.starts_with("https://") || s.starts_with("http://") {
        JwksSource::Url(s.to_owned())
    } else {
        JwksSource::File(s.into())
    }
}

/// The RFC 9728 metadata URL for a resource URI: the well-known prefix is
/// inserted between the authority and the path.
pub fn metadata_url(resource: &str) -> String {
    match resource.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let path = if path == "/" { "" } else { path };
            format!("{scheme}://{authority}{PRM_PATH}{path}")
        }
        None => PRM_PATH.to_owned(),
    }
}

impl Authenticator {
    /// Builds the stage from config; `resource` is the canonical URI
    /// (config `auth.resource`, else the listener's URL).
    pub fn new(
        cfg: &Config,
        resource: String,
        deny: Arc<DenyList>,
        loopback: bool,
    ) -> Result<Authenticator, String> {
        let a = &cfg.auth;
        let mut required_scopes = Vec::new();
        let mut servers = Vec::new();
        let mut scopes_supported = Vec::new();
        let tokens = match &a.oauth {
            None => None,
            Some(o) => {
                required_scopes = o.required_scopes.clone();
                servers = if o.authorization_servers.is_empty() {
                    vec![o.issuer.clone()]
                } else {
                    o.authorization_servers.clone()
                };
                scopes_supported = if o.scopes_supported.is_empty() {
                    o.required_scopes.clone()
                } else {
                    o.scopes_supported.clone()
                };
                Some(match &o.introspection {
                    Some(i) => {
                        let mut c = IntrospectionConfig::new(
                            &i.url,
                            &i.client_id,
                            &i.client_secret,
                            &resource,
                        );
                        c.issuer = Some(o.issuer.clone());
                        c.required_scopes = o.required_scopes.clone();
                        c.leeway_secs = o.leeway_secs;
                        c.ca_file = o.ca_bundle.clone();
                        TokenCheck::Introspect(
                            Introspector::new(c)
                                .map_err(|e| format!("auth.oauth.introspection: {e}"))?,
                        )
                    }
                    None => {
                        let mut c =
                            ValidatorConfig::new(&o.issuer, &resource, jwks_source(&o.jwks));
                        c.leeway_secs = o.leeway_secs;
                        c.required_scopes = o.required_scopes.clone();
                        c.min_refetch = Duration::from_secs(o.min_refetch_secs);
                        c.ca_file = o.ca_bundle.clone();
                        TokenCheck::Jwt(
                            TokenValidator::new(c).map_err(|e| format!("auth.oauth: {e}"))?,
                        )
                    }
                })
            }
        };
        let posture = match &a.posture {
            None => None,
            Some(p) => {
                let c = PostureConfig::new(&p.issuer, jwks_source(&p.jwks), p.max_age_secs);
                Some((
                    PostureVerifier::new(c).map_err(|e| format!("auth.posture: {e}"))?,
                    p.required,
                ))
            }
        };
        let metadata = json!({
            "resource": resource,
            "authorization_servers": servers,
            "scopes_supported": scopes_supported,
            "bearer_methods_supported": ["header"],
            "resource_name": "Portcullis MCP gateway",
        });
        Ok(Authenticator {
            require: a.require,
            anonymous_ok: a.allow_anonymous_loopback && loopback,
            tokens,
            posture,
            deny,
            required_scopes,
            metadata_url: metadata_url(&resource),
            resource,
            metadata,
            monitor: None,
            revoked: None,
        })
    }

    /// Records every refused authentication in `monitor` (audit + metrics).
    pub fn with_monitor(mut self, monitor: Arc<crate::monitor::Monitor>) -> Authenticator {
        self.monitor = Some(monitor);
        self
    }

    /// Refuses tokens whose `jti` is revoked in `state`.
    pub fn with_containment(
        mut self,
        state: Arc<portcullis_contain::Containment>,
    ) -> Authenticator {
        self.revoked = Some(state);
        self
    }

    /// Whether unauthenticated loopback access is on (for the banner).
    pub fn anonymous_ok(&self) -> bool {
        self.anonymous_ok
    }

    fn challenge(
        &self,
        status: StatusCode,
        error: Option<(&str, &str)>,
        scope: Option<&[String]>,
    ) -> Response {
        let mut v = format!("Bearer resource_metadata=\"{}\"", self.metadata_url);
        let scopes = scope.unwrap_or(&self.required_scopes);
        if !scopes.is_empty() {
            v.push_str(&format!(", scope=\"{}\"", scopes.join(" ")));
        }
        if let Some((code, desc)) = error {
            let desc: String = desc
                .chars()
                .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
                .collect();
            v.push_str(&format!(", error=\"{code}\", error_description=\"{desc}\""));
        }
        let body = json!({"error": error.map(|e| e.0).unwrap_or("unauthorized"), "error_description": error.map(|e| e.1).unwrap_or("authentication required")});
        let mut r = Response::new(Body::from(body.to_string()));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(h) = HeaderValue::from_str(&v) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, h);
        }
        r
    }

    fn forbidden(&self, code: &str, desc: &str) -> Response {
        let mut r = Response::new(Body::from(
            json!({"error": code, "error_description": desc}).to_string(),
        ));
        *r.status_mut() = StatusCode::FORBIDDEN;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }

    /// Authenticates one request; `Err` is the answer to send (and the
    /// failure has been logged and audited).
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        conn: Option<&ConnInfo>,
    ) -> Result<Principal, Response> {
        let why = std::sync::Mutex::new(String::new());
        let r = self.check(headers, query, conn, &why).await;
        if let (Err(resp), Some(m)) = (&r, &self.monitor) {
            let why = why.into_inner().unwrap_or_else(|e| e.into_inner());
            let remote = conn.map(|c| c.remote.to_string()).unwrap_or_default();
            m.auth_failure(&why, failure_class(&why), &remote, resp.status().as_u16());
        }
        r
    }

    async fn check(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        conn: Option<&ConnInfo>,
        why: &std::sync::Mutex<String>,
    ) -> Result<Principal, Response> {
        let remote = conn.map(|c| c.remote.to_string()).unwrap_or_default();
        let fail = |reason: &str| {
            tracing::warn!(%remote, reason, "authentication failed");
            *why.lock().unwrap_or_else(|e| e.into_inner()) = reason.to_owned();
        };
        if query.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("access_token="))) {
            fail("bearer token in the query string");
            return Err(self.challenge(
                StatusCode::BAD_REQUEST,
                Some((
                    "invalid_request",
                    "bearer tokens are accepted in the Authorization header only",
                )),
                None,
            ));
        }
        let mut p = Principal::anonymous();
        if let Some(cert) = conn.and_then(|c| c.peer.clone()) {
            // The handshake checked both; a kept-alive connection can outlive them.
            if cert.expired_at(now_unix()) {
                fail("client certificate expired");
                return Err(self.challenge(
                    StatusCode::UNAUTHORIZED,
                    Some(("invalid_token", "client certificate expired")),
                    None,
                ));
            }
            if self.deny.denies(&cert.fingerprint, &cert.serial) {
                fail("client certificate revoked");
                return Err(self.forbidden("access_denied", "client certificate revoked"));
            }
            p.workload = cert.spiffe_id.clone();
            p.cert = Some(cert);
        }
        let token = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => match bearer_from_header(v.as_bytes()) {
                Ok(t) => Some(t.to_owned()),
                Err(AuthError::MissingToken) => None,
                Err(e) => {
                    fail(&e.to_string());
                    return Err(self.challenge(
                        StatusCode::UNAUTHORIZED,
                        Some((e.www_authenticate_error(), &e.to_string())),
                        None,
                    ));
                }
            },
        };
        if let Some(t) = token {
            let Some(check) = &self.tokens else {
                fail("bearer token presented but no issuer is configured");
                return Err(self.challenge(
                    StatusCode::UNAUTHORIZED,
                    Some(("invalid_token", "bearer tokens are not accepted here")),
                    None,
                ));
            };
            match check.validate(&t).await {
                Ok(claims) => {
                    let revoked = match (&self.revoked, claims.jti.as_deref()) {
                        (Some(r), Some(jti)) => r.revocations.token_revoked(jti),
                        _ => false,
                    };
                    if revoked {
                        fail("token revoked");
                        return Err(self.challenge(
                            StatusCode::UNAUTHORIZED,
                            Some(("invalid_token", "token revoked")),
                            None,
                        ));
                    }
                    p.user = Some(claims)
                }
                Err(e) => {
                    fail(&e.to_string());
                    let status =
                        StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
                    let scope = match &e {
                        AuthError::InsufficientScope { required } => Some(required.as_slice()),
                        _ => None,
                    };
                    return Err(self.challenge(
                        status,
                        Some((e.www_authenticate_error(), &e.to_string())),
                        scope,
                    ));
                }
            }
        }
        if let Some((verifier, required)) = &self.posture {
            p.device = verifier
                .verify(headers.get(POSTURE_HEADER).map(|v| v.as_bytes()))
                .await;
            if *required && p.device.verified().is_none() {
                fail("device posture required but unknown");
                return Err(self.forbidden(
                    "access_denied",
                    "a fresh device posture assertion is required",
                ));
            }
        }
        p.strength = match (p.cert.is_some(), p.user.is_some()) {
            (true, true) => Strength::CertificateAndToken,
            (true, false) => Strength::Certificate,
            (false, true) => Strength::Token,
            (false, false) => Strength::Anonymous,
        };
        let ok = match self.require {
            AuthRequire::Any => p.strength != Strength::Anonymous,
            AuthRequire::Token => p.user.is_some(),
            AuthRequire::Certificate => p.cert.is_some(),
            AuthRequire::Strict => p.cert.is_some() && p.user.is_some(),
        };
        if ok || (self.anonymous_ok && p.strength == Strength::Anonymous) {
            return Ok(p);
        }
        let why = match self.require {
            AuthRequire::Strict if p.cert.is_none() => {
                "a client certificate is required (strict mode)"
            }
            AuthRequire::Strict => "a bearer token is required (strict mode)",
            AuthRequire::Certificate => "a client certificate is required",
            AuthRequire::Token => "a bearer token is required",
            AuthRequire::Any => "authentication required",
        };
        fail(why);
        if p.user.is_none() {
            // RFC 6750 §3.1: a request without credentials gets no error code.
            return Err(self.challenge(StatusCode::UNAUTHORIZED, None, None));
        }
        Err(self.forbidden("access_denied", why))
    }
}

/// A bounded metric label for a failure reason.
fn failure_class(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("query string") {
        "token_in_query"
    } else if r.contains("certificate expired") {
        "certificate_expired"
    } else if r.contains("certificate revoked") {
        "certificate_revoked"
    } else if r.contains("token revoked") {
        "token_revoked"
    } else if r.contains("posture") {
        "posture"
    } else if r.contains("scope") {
        "insufficient_scope"
    } else if r.contains("no issuer") {
        "token_not_accepted"
    } else if r.contains("required") {
        "missing_credentials"
    } else if r.contains("expired") {
        "token_expired"
    } else {
        "invalid_token"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_url_inserts_well_known() {
        assert_eq!(
            metadata_url("https://gw.example.com/mcp"),
            "https://gw.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_url("http://127.0.0.1:8787"),
            "http://127.0.0.1:8787/.well-known/oauth-protected-resource"
        );
    }
}
