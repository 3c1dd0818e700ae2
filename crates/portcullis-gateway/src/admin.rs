//! The admin listener: health, session listing and revocation, certificate
//! revocation. Separate from the agents' listener and bound to loopback
//! unless TLS is configured for it in a later stage; every `/admin` call
//! needs the admin bearer token (compared in constant time).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use portcullis_identity::tls::DenyList;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::gateway::Gateway;

/// What every admin handler shares.
#[derive(Clone)]
pub(crate) struct Admin {
    pub(crate) gw: Arc<Gateway>,
    pub(crate) deny: Arc<DenyList>,
    token: Arc<str>,
}

/// Who made an admin request (set by the admin authentication layer for
/// every route it guards); recorded as the actor of every admin action.
#[derive(Clone, Debug)]
pub(crate) struct AdminIdentity(pub(crate) String);

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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Admin {
    #[expect(
        clippy::result_large_err,
        reason = "the error is the HTTP answer itself, on a cold path"
    )]
    fn authorized(&self, h: &HeaderMap) -> Result<(), Response> {
        let presented = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if constant_time_eq(presented.as_bytes(), self.token.as_bytes()) {
            Ok(())
        } else {
            tracing::warn!("admin API: refused a request without the admin token");
            Err(reply(
                StatusCode::UNAUTHORIZED,
                json!({"error": "admin token required"}),
            ))
        }
    }
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

/// The admin router.
pub fn router(gw: Arc<Gateway>, deny: Arc<DenyList>, token: String) -> Router {
    let st = Admin {
        gw,
        deny,
        token: token.into(),
    };
    let guarded = Router::new()
        .merge(crate::admin_contain::routes())
        .layer(axum::middleware::from_fn_with_state(st.clone(), guard));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/admin/sessions", get(list_sessions))
        .route("/admin/sessions/revoke", post(revoke_sessions))
        .route("/admin/policy/reload", post(reload_policy))
        .merge(guarded)
        .with_state(st)
}

/// Authenticates an admin request and names its actor for the handlers.
async fn guard(
    State(st): State<Admin>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err(r) = st.authorized(req.headers()) {
        return r;
    }
    req.extensions_mut()
        .insert(AdminIdentity("admin-token".into()));
    next.run(req).await
}

async fn list_sessions(State(st): State<Admin>, h: HeaderMap) -> Response {
    if let Err(r) = st.authorized(&h) {
        return r;
    }
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
struct RevokeSessions {
    identity: Option<String>,
    session: Option<String>,
    reason: Option<String>,
}

async fn revoke_sessions(
    State(st): State<Admin>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = st.authorized(&h) {
        return r;
    }
    let req: RevokeSessions = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let ended = match (&req.identity, &req.session) {
        (Some(who), None) => st.gw.sessions.revoke_owner(who),
        (None, Some(id)) => st.gw.sessions.remove(id).into_iter().collect(),
        _ => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "give exactly one of identity, session"}),
            )
        }
    };
    let target = match (&req.identity, &req.session) {
        (Some(who), _) => format!("identity:{who}"),
        (_, Some(id)) => format!("session:{id}"),
        _ => String::new(),
    };
    st.gw
        .pep
        .monitor
        .containment("revoke-sessions", &target, req.reason.as_deref(), "admin");
    for c in &ended {
        tracing::warn!(session = %c.id, identity = %c.owner, reason = ?req.reason, "session revoked by admin");
        st.gw.end_session(c, "revoked by admin").await;
    }
    reply(StatusCode::OK, json!({"ended": ended.len()}))
}

/// Prometheus text exposition; needs the admin token like every admin call.
async fn metrics(State(st): State<Admin>, h: HeaderMap) -> Response {
    if let Err(r) = st.authorized(&h) {
        return r;
    }
    st.gw.pep.monitor.metrics.set_sessions(st.gw.sessions.len());
    let mut r = Response::new(Body::from(st.gw.pep.monitor.render_metrics()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

async fn reload_policy(State(st): State<Admin>, h: HeaderMap) -> Response {
    if let Err(r) = st.authorized(&h) {
        return r;
    }
    match st.gw.pep.reload() {
        Ok(hash) => reply(
            StatusCode::OK,
            json!({"reloaded": true, "policy_hash": hash}),
        ),
        Err(e) => reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"reloaded": false, "errors": e, "policy_hash": st.gw.pep.engine().hash()}),
        ),
    }
}

/// Serves the admin router on `addr` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, app: Router) {
    let never = std::future::pending::<()>();
    crate::listener::serve(listener, None, app, Default::default(), never).await;
}

/// Whether an admin address is acceptable without TLS (loopback only).
pub fn check_addr(addr: &SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "admin.addr {addr}: the admin listener is plain HTTP and must be on loopback"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(check_addr(&"127.0.0.1:1".parse().unwrap()).is_ok());
        assert!(check_addr(&"0.0.0.0:1".parse().unwrap()).is_err());
    }
}
