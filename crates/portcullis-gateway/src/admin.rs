//! The admin listener: health and readiness, `/metrics`, session listing
//! and kill, policy reload, and (from `admin_contain`) containment. Separate
//! from the agents' listener and always TLS with client certificates
//! required; every route but `/healthz` and `/readyz` needs a client
//! certificate whose SPIFFE ID is one of the configured admin identities.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use http::{header, HeaderValue, StatusCode};
use portcullis_identity::spiffe::SpiffeId;
use portcullis_identity::tls::DenyList;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::AdminCfg;
use crate::gateway::Gateway;
use crate::listener::ConnInfo;

/// What every admin handler shares.
#[derive(Clone)]
pub(crate) struct Admin {
    pub(crate) gw: Arc<Gateway>,
    pub(crate) deny: Arc<DenyList>,
    admins: Arc<AdminIdentities>,
}

/// Who made an admin request: the SPIFFE ID of the admin client
/// certificate (set by the admin guard for every route it guards);
/// recorded as the actor of every admin action.
#[derive(Clone, Debug)]
pub(crate) struct AdminIdentity(pub(crate) String);

/// The SPIFFE IDs allowed to administer: exact IDs, and prefixes written
/// with a trailing `/*` (`spiffe://example.org/admin/*` admits every ID
/// under `spiffe://example.org/admin/`).
#[derive(Debug, Clone, Default)]
pub struct AdminIdentities {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl AdminIdentities {
    /// Parses the `[admin] identities` patterns; `Err` names the bad one.
    pub fn parse(patterns: &[String]) -> Result<AdminIdentities, String> {
        let mut out = AdminIdentities::default();
        for p in patterns {
            let p = p.trim();
            let (base, wildcard) = match p.strip_suffix("/*") {
                Some(b) => (b, true),
                None => (p, false),
            };
            let id = SpiffeId::parse(base).map_err(|e| format!("{p:?}: {e}"))?;
            if wildcard {
                out.prefixes.push(format!("{id}/"));
            } else if id.is_trust_domain_id() {
                return Err(format!(
                    "{p:?}: a trust domain is not an identity (write {p}/* for every ID in it)"
                ));
            } else {
                out.exact.push(id.to_string());
            }
        }
        Ok(out)
    }

    /// Whether `id` may administer.
    pub fn allows(&self, id: &str) -> bool {
        self.exact.iter().any(|e| e == id)
            || self
                .prefixes
                .iter()
                .any(|p| id.len() > p.len() && id.starts_with(p.as_str()))
    }

    /// Whether no identity at all is allowed.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }
}

/// Checks an `[admin]` section: the certificate files come together (or
/// not at all, for the development CA), and every identity parses.
/// `Err` is (key, why).
pub fn check_cfg(a: &AdminCfg) -> Result<(), (&'static str, String)> {
    let given = [a.cert.is_some(), a.key.is_some(), !a.client_ca.is_empty()];
    if given.iter().any(|g| *g) && !given.iter().all(|g| *g) {
        let missing = if a.cert.is_none() {
            "admin.cert"
        } else if a.key.is_none() {
            "admin.key"
        } else {
            "admin.client_ca"
        };
        return Err((
            missing,
            "set admin.cert, admin.key and admin.client_ca together (or none of them: serve then uses its development CA)".into(),
        ));
    }
    if a.console == Some(false) && a.console_login_link == Some(true) {
        return Err((
            "admin.console_login_link",
            "the login link opens the console: it needs admin.console = true".into(),
        ));
    }
    let ids = AdminIdentities::parse(&a.identities).map_err(|e| ("admin.identities", e))?;
    if !a.client_ca.is_empty() && ids.is_empty() {
        return Err((
            "admin.identities",
            "name at least one admin SPIFFE ID (e.g. \"spiffe://example.org/admin/alice\")".into(),
        ));
    }
    Ok(())
}

/// A JSON answer with a status.
pub(crate) fn reply(status: StatusCode, v: Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[expect(
    clippy::result_large_err,
    reason = "the error is the HTTP answer itself, on a cold path"
)]
pub(crate) fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        reply(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("bad request body: {e}")}),
        )
    })
}

/// The admin router. `admins` are the identities allowed through the guard;
/// `deny` is the certificate deny list shared with the agents' listener.
pub fn router(gw: Arc<Gateway>, deny: Arc<DenyList>, admins: AdminIdentities) -> Router {
    router_with_console(gw, deny, admins, None).router
}

/// The admin listener's app, and what `serve` must print for it.
pub struct AdminApp {
    /// Every route of the admin listener.
    pub router: Router,
    /// The console's one-time login token, when the login link is on.
    pub login_token: Option<String>,
}

/// The admin router with the operations console under `/console/` when
/// `console` is given. `/admin/*` and `/metrics` stay certificate-only.
pub fn router_with_console(
    gw: Arc<Gateway>,
    deny: Arc<DenyList>,
    admins: AdminIdentities,
    console: Option<crate::console::Options>,
) -> AdminApp {
    let st = Admin {
        gw,
        deny,
        admins: Arc::new(admins),
    };
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/admin/sessions", get(list_sessions))
        .route("/admin/sessions/kill", post(kill_sessions))
        // The earlier name of the same call.
        .route("/admin/sessions/revoke", post(kill_sessions))
        .route("/admin/policy/reload", post(reload_policy))
        .merge(crate::admin_contain::routes())
        .layer(axum::middleware::from_fn_with_state(st.clone(), guard));
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        // The router exists only once the gateway is built; draining on
        // shutdown makes it fail so load balancers stop sending.
        .route("/readyz", get(readyz))
        .merge(guarded)
        .with_state(st.clone());
    let mut login_token = None;
    if let Some(opts) = console {
        let (c, token) = crate::console::router(st, opts);
        router = router.merge(c);
        login_token = token;
    }
    AdminApp {
        router,
        login_token,
    }
}

/// The probe listener's routes: `/healthz` and `/readyz` only, nothing
/// else (no data, no admin action), so it can be plain HTTP.
pub fn health_router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(gw): State<Arc<Gateway>>| async move {
                if gw.is_draining() {
                    (StatusCode::SERVICE_UNAVAILABLE, "draining")
                } else {
                    (StatusCode::OK, "ready")
                }
            }),
        )
        .with_state(gw)
}

/// Ready unless shutting down.
async fn readyz(State(st): State<Admin>) -> Response {
    if st.gw.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    (StatusCode::OK, "ready").into_response()
}

impl Admin {
    /// The admin identity a client certificate proves, or why it proves
    /// none (absent, revoked, expired, no SPIFFE ID, not an admin).
    pub(crate) fn admin_of(
        &self,
        peer: Option<&portcullis_identity::tls::PeerCert>,
    ) -> Result<String, String> {
        let Some(p) = peer else {
            return Err("no client certificate".to_owned());
        };
        if self.deny.denies(&p.fingerprint, &p.serial) {
            return Err(format!("certificate {} is revoked", p.fingerprint));
        }
        if p.expired_at(portcullis_identity::tls::now_unix()) {
            return Err(format!("certificate {} has expired", p.fingerprint));
        }
        match &p.spiffe_id {
            None => Err("certificate carries no SPIFFE ID".to_owned()),
            Some(id) if !self.admins.allows(&id.to_string()) => {
                Err(format!("{id} is not an admin identity"))
            }
            Some(id) => Ok(id.to_string()),
        }
    }
}

/// Admits a request whose client certificate names an admin identity, and
/// names that identity for the handlers; refuses (403, audited) any other.
async fn guard(
    State(st): State<Admin>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let conn = req.extensions().get::<ConnInfo>();
    let remote = conn.map(|c| c.remote.to_string()).unwrap_or_default();
    let peer = conn.and_then(|c| c.peer.clone());
    let id = match st.admin_of(peer.as_deref()) {
        Ok(id) => id,
        Err(why) => {
            tracing::warn!(%remote, path = %req.uri().path(), reason = %why, "admin API: refused");
            st.gw
                .pep
                .monitor
                .auth_failure(&format!("admin API: {why}"), "not_admin", &remote, 403);
            return reply(
                StatusCode::FORBIDDEN,
                json!({"error": "not an admin identity"}),
            );
        }
    };
    req.extensions_mut().insert(AdminIdentity(id));
    next.run(req).await
}

/// `admin:<spiffe id>`: the actor named in audit records and stored state.
fn actor(who: &AdminIdentity) -> String {
    format!("admin:{}", who.0)
}

async fn list_sessions(State(st): State<Admin>) -> Response {
    let sessions: Vec<Value> = st
        .gw
        .sessions
        .all()
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "identity": c.owner,
                "certificate": c.fingerprint,
                "route": c.route,
                "revision": c.revision.as_str(),
                "age_secs": c.created.elapsed().as_secs(),
                "idle_secs": c.idle().as_secs(),
            })
        })
        .collect();
    reply(StatusCode::OK, json!({"sessions": sessions}))
}

/// Which sessions to end.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillSessions {
    identity: Option<String>,
    session: Option<String>,
    reason: Option<String>,
}

async fn kill_sessions(
    State(st): State<Admin>,
    Extension(who): Extension<AdminIdentity>,
    body: axum::body::Bytes,
) -> Response {
    let req: KillSessions = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let (ended, target) = match (&req.identity, &req.session) {
        (Some(key), None) => (st.gw.sessions.revoke_owner(key), format!("identity:{key}")),
        (None, Some(id)) => (
            st.gw.sessions.remove(id).into_iter().collect(),
            format!("session:{id}"),
        ),
        _ => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "give exactly one of identity, session"}),
            )
        }
    };
    let ended = end_sessions(
        &st.gw,
        req.identity.as_deref(),
        req.session.as_deref(),
        &target,
        ended,
        req.reason.as_deref(),
        &actor(&who),
    )
    .await;
    reply(StatusCode::OK, json!({"ended": ended}))
}

/// Ends the sessions of one identity or one session id (here, and those
/// bound on other replicas of a shared store): audited as `by` against
/// `target`. `ended` are the local sessions already taken out of the
/// table; returns how many ended in all.
pub(crate) async fn end_sessions(
    gw: &Gateway,
    identity: Option<&str>,
    session: Option<&str>,
    target: &str,
    ended: Vec<Arc<crate::session::Client>>,
    reason: Option<&str>,
    by: &str,
) -> usize {
    gw.pep
        .monitor
        .containment("kill-sessions", target, reason, by);
    for c in &ended {
        tracing::warn!(session = %c.id, identity = %c.owner, by = %by, reason = ?reason, "session killed");
        crate::gateway::close_streams(c);
        gw.end_session(c, "killed by admin").await;
    }
    // Sessions bound on other replicas of a shared store end there too.
    let elsewhere = gw.forget_bound(identity, session).await;
    for id in &elsewhere {
        tracing::warn!(session = %id, by = %by, reason = ?reason, "session on another replica killed");
    }
    ended.len() + elsewhere.len()
}

/// Prometheus / OpenMetrics text exposition.
async fn metrics(State(st): State<Admin>) -> Response {
    st.gw.pep.monitor.metrics.set_sessions(st.gw.sessions.len());
    let store = st.gw.pep.contain.state.store().status();
    st.gw
        .pep
        .monitor
        .metrics
        .set_store(store.current, store.pending_writes);
    let mut r = Response::new(Body::from(st.gw.pep.monitor.render_metrics()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

async fn reload_policy(
    State(st): State<Admin>,
    Extension(who): Extension<AdminIdentity>,
) -> Response {
    let result = st.gw.pep.reload();
    let hash = match &result {
        Ok(h) => h.clone(),
        Err(_) => st.gw.pep.engine().hash().to_owned(),
    };
    st.gw.pep.monitor.containment(
        "policy-reload",
        &format!("policy:{hash}"),
        Some(if result.is_ok() {
            "reloaded"
        } else {
            "rejected"
        }),
        &actor(&who),
    );
    match result {
        Ok(hash) => reply(
            StatusCode::OK,
            json!({"reloaded": true, "policy_hash": hash}),
        ),
        Err(e) => reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"reloaded": false, "errors": e, "policy_hash": hash}),
        ),
    }
}

/// Serves the admin router over TLS (client certificates required) until
/// the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: crate::listener::ConnLimits,
    refused: Option<crate::listener::CertRefused>,
) {
    let never = std::future::pending::<()>();
    crate::listener::serve(listener, Some(tls), app, limits, refused, never).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_tail: &str) -> AdminCfg {
        toml::from_str(&format!("addr = \"0.0.0.0:8788\"\n{toml_tail}")).unwrap()
    }

    #[test]
    fn identities_match_exactly_or_by_prefix() {
        let ids = AdminIdentities::parse(&[
            "spiffe://example.org/admin/alice".into(),
            "spiffe://ops.example/team/*".into(),
        ])
        .unwrap();
        assert!(ids.allows("spiffe://example.org/admin/alice"));
        assert!(!ids.allows("spiffe://example.org/admin/alice2"));
        assert!(!ids.allows("spiffe://example.org/admin"));
        assert!(ids.allows("spiffe://ops.example/team/bob"));
        assert!(ids.allows("spiffe://ops.example/team/a/b"));
        assert!(!ids.allows("spiffe://ops.example/team/"));
        assert!(!ids.allows("spiffe://ops.example/team"));
        assert!(!ids.allows("spiffe://ops.example/teamster"));
        assert!(!ids.allows("spiffe://example.org/agent/dev"));
        assert!(AdminIdentities::parse(&["not a spiffe id".into()]).is_err());
        assert!(AdminIdentities::parse(&["spiffe://example.org".into()]).is_err());
        assert!(AdminIdentities::parse(&["spiffe://example.org/*".into()]).is_ok());
    }

    #[test]
    fn admin_section_checks() {
        // Any address: the listener is always mTLS.
        assert!(check_cfg(&cfg("")).is_ok());
        assert_eq!(
            check_cfg(&cfg("cert = \"c.pem\"")).unwrap_err().0,
            "admin.key"
        );
        assert_eq!(
            check_cfg(&cfg("cert = \"c.pem\"\nkey = \"k.pem\""))
                .unwrap_err()
                .0,
            "admin.client_ca"
        );
        assert_eq!(
            check_cfg(&cfg(
                "cert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = [\"ca.pem\"]"
            ))
            .unwrap_err()
            .0,
            "admin.identities"
        );
        assert!(check_cfg(&cfg(
            "cert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = [\"ca.pem\"]\nidentities = [\"spiffe://example.org/admin/*\"]"
        ))
        .is_ok());
        assert_eq!(
            check_cfg(&cfg("identities = [\"nope\"]")).unwrap_err().0,
            "admin.identities"
        );
        assert_eq!(
            check_cfg(&cfg("console = false\nconsole_login_link = true"))
                .unwrap_err()
                .0,
            "admin.console_login_link"
        );
        let a = cfg("");
        assert!(a.console_on() && a.login_link_on(true) && !a.login_link_on(false));
        let a = cfg("console = false");
        assert!(!a.console_on() && !a.login_link_on(true));
        let a = cfg("console_login_link = true");
        assert!(a.login_link_on(false));
    }
}
