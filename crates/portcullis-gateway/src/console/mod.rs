//! The operations console: a live web view of decisions, identities and
//! risk, tools, the audit log and health, with containment actions — on
//! the admin listener only (`/console/…`), behind an admin client
//! certificate or a session opened by the one-time login link.
//!
//! Server-rendered HTML (askama templates under `templates/console`),
//! plain JavaScript and CSS embedded in the binary, strict security
//! headers on every answer, CSRF tokens and an Origin check on every
//! action. Any doubt refuses: a console error never lets a request in.
//! The contract with the browser tests is `docs/console.md`.

mod actions;
pub mod auth;
mod events;
pub mod headers;
pub mod history;
mod pages;
mod search;
pub mod svg;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use askama::Template;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{any, get, post};
use axum::Router;
use http::{header, HeaderValue, StatusCode};

use crate::admin::Admin;
use crate::listener::ConnInfo;
use auth::{Auth, Who};

/// How the console is served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Issue a one-time login link (the admin listener must then accept
    /// TLS clients without a certificate).
    pub login_link: bool,
}

/// What every console handler shares.
#[derive(Clone)]
pub(crate) struct Console(Arc<Inner>);

pub(crate) struct Inner {
    admin: Admin,
    auth: Auth,
    history: Arc<history::History>,
    streams: Arc<AtomicUsize>,
}

impl std::ops::Deref for Console {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Inner {
    fn gw(&self) -> &crate::gateway::Gateway {
        &self.admin.gw
    }
}

const CSS: &str = include_str!("../../assets/console/console.css");
const JS: &str = include_str!("../../assets/console/console.js");

#[derive(Template)]
#[template(path = "console/refused.html")]
struct Refused<'a> {
    title: &'a str,
    message: &'a str,
}

/// An HTML page answer.
fn html(status: StatusCode, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// Renders a template; a template that cannot render is a 500, never a
/// half page.
fn render<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(s) => html(StatusCode::OK, s),
        Err(e) => {
            tracing::error!(error = %e, "console: a page could not be rendered");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The refusal page (`data-testid="refused"`) with `status`.
pub(crate) fn refused(status: StatusCode, title: &str, message: &str) -> Response {
    match (Refused { title, message }).render() {
        Ok(s) => html(status, s),
        Err(_) => plain(status, "refused"),
    }
}

/// The console's routes, to merge into the admin router, and the login
/// token when `opts.login_link` (print it; it works once).
pub(crate) fn router(admin: Admin, opts: Options) -> (Router, Option<String>) {
    let c = Console(Arc::new(Inner {
        admin,
        auth: Auth::new(),
        history: Arc::new(history::History::default()),
        streams: Arc::new(AtomicUsize::new(0)),
    }));
    let token = opts.login_link.then(|| c.auth.issue_link());
    c.history.spawn(Arc::downgrade(&c.gw().pep.monitor));
    let authed = Router::new()
        .route("/console/", get(pages::decisions))
        .route("/console/identities", get(pages::identities))
        .route("/console/tools", get(pages::tools))
        .route("/console/audit", get(pages::audit))
        .route("/console/health", get(pages::health))
        .route("/console/events", get(live))
        .route("/console/actions/quarantine", post(actions::quarantine))
        .route("/console/actions/release", post(actions::release))
        .route("/console/actions/kill-session", post(actions::kill_session))
        .route("/console/actions/approve-pin", post(actions::approve_pin))
        .route("/console/actions/killswitch", post(actions::killswitch))
        .route("/console/{*rest}", any(not_found))
        .layer(axum::middleware::from_fn_with_state(
            c.clone(),
            authenticate,
        ));
    let open = Router::new()
        .route("/console", get(to_console))
        .route("/console/login", get(login))
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js));
    let r = open
        .merge(authed)
        .layer(axum::middleware::from_fn(headers::layer))
        .with_state(c);
    (r, token)
}

/// Admits an admin certificate, or (without a certificate) an open
/// console session; refuses everything else with the refusal page,
/// audited. A certificate that is not an admin's is refused even with a
/// session cookie.
async fn authenticate(
    State(c): State<Console>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let conn = req.extensions().get::<ConnInfo>();
    let remote = conn.map(|c| c.remote.to_string()).unwrap_or_default();
    let peer = conn.and_then(|c| c.peer.clone());
    let who = match peer {
        Some(p) => c.admin.admin_of(Some(&p)).map(Who::Cert),
        None => req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(auth::cookie_value)
            .and_then(|v| c.auth.session(v))
            .ok_or_else(|| "no client certificate and no console session".to_owned()),
    };
    match who {
        Ok(w) => {
            req.extensions_mut().insert(w);
            next.run(req).await
        }
        Err(why) => {
            tracing::warn!(%remote, path = %req.uri().path(), reason = %why, "console: refused");
            c.gw()
                .pep
                .monitor
                .auth_failure(&format!("console: {why}"), "not_admin", &remote, 403);
            refused(
                StatusCode::FORBIDDEN,
                "Not an admin identity",
                "The console needs an admin client certificate or the one-time login link printed at start-up.",
            )
        }
    }
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    #[serde(default)]
    token: String,
}

/// `GET /console/login?token=…`: spends the one-time token, sets the
/// session cookie and goes to the console; 403 for any other token.
async fn login(State(c): State<Console>, uri: http::Uri) -> Response {
    let q: LoginQuery =
        serde_urlencoded::from_str(uri.query().unwrap_or_default()).unwrap_or(LoginQuery {
            token: String::new(),
        });
    let Some(cookie) = c.auth.redeem(&q.token) else {
        c.gw().pep.monitor.auth_failure(
            "console: login link invalid, expired or already used",
            "not_admin",
            "",
            403,
        );
        return refused(
            StatusCode::FORBIDDEN,
            "Login link not valid",
            "This login link is invalid, has expired or was already used. Restart the gateway for a new one, or use an admin client certificate.",
        );
    };
    tracing::info!("console: login link used");
    let mut r = see_other("/console/");
    if let Ok(v) = HeaderValue::from_str(&auth::set_cookie(&cookie)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// 303 to `to`.
pub(crate) fn see_other(to: &'static str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    r
}

async fn to_console() -> Response {
    see_other("/console/")
}

async fn not_found() -> Response {
    refused(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such console page.",
    )
}

fn asset(body: &'static str, ct: &'static str) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

/// `GET /console/events`: live decisions (SSE).
async fn live(State(c): State<Console>) -> Response {
    let monitor = c.gw().pep.monitor.clone();
    events::stream(&c.streams, move || monitor.watch_decisions())
}
