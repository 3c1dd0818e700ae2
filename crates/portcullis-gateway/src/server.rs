//! The client-facing Streamable HTTP transport: thin axum handlers that turn
//! HTTP into calls on the gateway core.
//!
//! Handshake-era clients (`initialize`, `Mcp-Session-Id`) and 2026-07-28
//! clients (one self-contained POST per request) share one endpoint; the
//! `MCP-Protocol-Version` header picks the path and the body must agree
//! with every `Mcp-*` header.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use portcullis_wire::headers as mh;
use portcullis_wire::message::raw_u64;
use portcullis_wire::{codes, depth, sse, Body as WireBody, Kind, Message, Revision, WireError};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::Authenticator;
use crate::gateway::Gateway;
use crate::listener::ConnInfo;
use crate::protocol;
use crate::session::{lock, new_session_id, Client, StreamBuf, STREAM_BUFFER};
use portcullis_identity::principal::Principal;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    gw: Arc<Gateway>,
    auth: Arc<Authenticator>,
    loopback: bool,
}

/// Who sent a request and over which route; sessions are bound to both.
pub struct Caller {
    /// The authenticated identity.
    pub principal: Principal,
    /// Listener address and path.
    pub route: String,
}

/// The router serving the MCP endpoint at the configured path, and the
/// Protected Resource Metadata (RFC 9728) beside it.
pub fn router(gw: Arc<Gateway>, auth: Arc<Authenticator>, bound: SocketAddr) -> Router {
    let path = gw.cfg.listen.path.clone();
    let state = AppState {
        gw,
        auth,
        loopback: bound.ip().is_loopback(),
    };
    let prm_at_path = format!("{}{}", crate::auth::PRM_PATH, path.trim_end_matches('/'));
    Router::new()
        .route(&path, any(handle))
        .route(crate::auth::PRM_PATH, axum::routing::get(metadata))
        .route(&prm_at_path, axum::routing::get(metadata))
        .with_state(state)
}

async fn metadata(State(st): State<AppState>) -> Response {
    let mut r = Response::new(Body::from(st.auth.metadata.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Spawns the idle-session and quarantine sweeper, and the task that acts
/// on containment changes.
pub fn spawn_sweeper(gw: Arc<Gateway>) {
    gw.watch_containment();
    gw.follow_bindings();
    tokio::spawn(async move {
        let idle = Duration::from_secs(gw.cfg.limits.session_idle_timeout_secs);
        let mut tick =
            tokio::time::interval(Duration::from_secs(30).min(idle.max(Duration::from_secs(1))));
        loop {
            tick.tick().await;
            for c in gw.sessions.expire(idle) {
                tracing::info!(session = %c.id, "session expired (idle)");
                // Only this replica's copy: with a shared store another
                // replica may be serving it (its binding expires by itself).
                gw.end_session_local(&c, "idle timeout").await;
            }
            let state = &gw.pep.contain.state;
            for q in state.sweep(portcullis_contain::now_unix()).await {
                tracing::info!(target = %q.target, "quarantine expired");
                gw.pep.monitor.containment(
                    "quarantine-expired",
                    &q.target.to_string(),
                    None,
                    "expiry",
                );
            }
        }
    });
}

fn json_response(status: StatusCode, msg: &Message, extra: &[(&'static str, String)]) -> Response {
    let mut r = Response::new(Body::from(msg.to_bytes()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (k, v) in extra {
        if let Ok(v) = HeaderValue::from_str(v) {
            r.headers_mut().insert(*k, v);
        }
    }
    r
}

fn error_response(
    status: StatusCode,
    id: Option<Box<serde_json::value::RawValue>>,
    code: i64,
    text: &str,
) -> Response {
    json_response(status, &Message::error(id, code, text, None), &[])
}

fn status_only(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn is_loopback_host(host: &str) -> bool {
    let h = host.trim();
    let name = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']')
            .next()
            .map(|n| format!("[{n}]"))
            .unwrap_or_default()
    } else {
        h.rsplit_once(':')
            .map(|(n, _)| n.to_owned())
            .unwrap_or_else(|| h.to_owned())
    };
    matches!(
        name.to_ascii_lowercase().as_str(),
        "localhost" | "127.0.0.1" | "[::1]"
    )
}

/// DNS-rebinding defence: `Origin` must be allowed, and on a loopback
/// listener `Host` must be a loopback name.
#[expect(
    clippy::result_large_err,
    reason = "the error is the HTTP answer itself, built once on a cold path"
)]
fn check_origin_host(st: &AppState, h: &HeaderMap) -> Result<(), Response> {
    let listen = &st.gw.cfg.listen;
    if let Some(host) = header_str(h, "host") {
        let ok = if !listen.allowed_hosts.is_empty() {
            listen
                .allowed_hosts
                .iter()
                .any(|a| a.eq_ignore_ascii_case(host))
        } else {
            !st.loopback || is_loopback_host(host)
        };
        if !ok {
            return Err(error_response(
                StatusCode::FORBIDDEN,
                None,
                codes::INVALID_REQUEST,
                "Forbidden: Host not allowed",
            ));
        }
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let ok = if !listen.allowed_origins.is_empty() {
            listen.allowed_origins.iter().any(|a| a == origin)
        } else {
            let host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
            (origin.starts_with("http://") || origin.starts_with("https://"))
                && is_loopback_host(host)
        };
        if !ok {
            return Err(error_response(
                StatusCode::FORBIDDEN,
                None,
                codes::INVALID_REQUEST,
                "Forbidden: Origin not allowed",
            ));
        }
    }
    Ok(())
}

async fn handle(
    State(st): State<AppState>,
    conn: Option<axum::Extension<ConnInfo>>,
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = check_origin_host(&st, &headers) {
        return r;
    }
    let conn = conn.map(|c| c.0);
    let began = std::time::Instant::now();
    let authenticated = st
        .auth
        .authenticate(&headers, uri.query(), conn.as_ref())
        .await;
    st.gw.pep.monitor.metrics.stage(
        portcullis_monitor::metrics::Stage::Identity,
        began.elapsed(),
    );
    let principal = match authenticated {
        Ok(p) => p,
        Err(r) => return r,
    };
    let caller = Caller {
        principal,
        route: format!(
            "{}{}",
            conn.as_ref()
                .map(|c| c.local.to_string())
                .unwrap_or_default(),
            uri.path()
        ),
    };
    let version = headers
        .get(mh::MCP_PROTOCOL_VERSION)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let era = match version {
        None => None,
        Some(v) => match Revision::parse(v) {
            Some(r) => Some(r),
            None => {
                // Name the request in the error when the body lets us.
                let id = if method == Method::POST {
                    match read_body(&st, &headers, body).await {
                        Ok(b) => portcullis_wire::message::id_of(&String::from_utf8_lossy(&b)),
                        Err(r) => return r.response,
                    }
                } else {
                    None
                };
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &Message::error(
                        id,
                        codes::UNSUPPORTED_VERSION,
                        "Unsupported protocol version",
                        Some(json!({"supported": Revision::all_strs(), "requested": v})),
                    ),
                    &[],
                );
            }
        },
    };
    let stateless = era == Some(Revision::V2026_07_28);
    match method {
        Method::POST => post(st, caller, headers, body, stateless).await,
        Method::GET if !stateless => get(st, caller, headers).await,
        Method::DELETE if !stateless => delete(st, caller, headers).await,
        _ => {
            let mut r = status_only(StatusCode::METHOD_NOT_ALLOWED);
            let allow = if stateless {
                "POST"
            } else {
                "GET, POST, DELETE"
            };
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            r
        }
    }
}

/// A body refused before dispatch: what the client gets and what the audit
/// record says (the body itself is never recorded).
struct Refused {
    response: Response,
    reason: String,
}

impl Refused {
    fn new(status: StatusCode, code: i64, message: String) -> Self {
        Self {
            response: error_response(status, None, code, &message),
            reason: message,
        }
    }
}

/// How long an oversized body is read and discarded before the 413 is sent.
const DRAIN_FOR: Duration = Duration::from_secs(1);

/// Why collecting a body stopped.
enum Collect {
    TooLarge,
    Broken,
}

/// Collects at most `limit` bytes. Past the limit it keeps reading, and
/// discards, up to `limit` more bytes for at most [`DRAIN_FOR`], so that a
/// client still sending reads the 413 rather than a connection reset (the
/// socket closed with unread data). A body declared larger than twice the
/// limit is refused at once: draining it could not finish.
async fn collect(body: Body, limit: usize, declared: Option<u64>) -> Result<Bytes, Collect> {
    let cap = u64::try_from(limit).unwrap_or(u64::MAX);
    if declared.is_some_and(|n| n > cap.saturating_mul(2)) {
        return Err(Collect::TooLarge);
    }
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| Collect::Broken)?;
        if buf.len().saturating_add(chunk.len()) > limit {
            let mut seen = buf.len().saturating_add(chunk.len());
            drop(buf);
            let drain = async {
                while let Some(Ok(c)) = stream.next().await {
                    seen = seen.saturating_add(c.len());
                    if seen > limit.saturating_mul(2) {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_FOR, drain).await;
            return Err(Collect::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Reads the body within the size limit and the depth bound.
async fn read_body(st: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, Refused> {
    let ctype = header_str(headers, "content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    if !ctype.starts_with("application/json") {
        return Err(Refused::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            codes::INVALID_REQUEST,
            "Content-Type must be application/json".to_owned(),
        ));
    }
    let limits = &st.gw.cfg.limits;
    let within = Duration::from_millis(limits.body_timeout_ms);
    let declared = header_str(headers, "content-length").and_then(|v| v.parse::<u64>().ok());
    let bytes =
        match tokio::time::timeout(within, collect(body, limits.max_body_bytes, declared)).await {
            Ok(Ok(b)) => b,
            Ok(Err(Collect::TooLarge)) => {
                return Err(Refused::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    codes::INVALID_REQUEST,
                    format!("request body larger than {} bytes", limits.max_body_bytes),
                ))
            }
            Ok(Err(Collect::Broken)) => {
                return Err(Refused::new(
                    StatusCode::BAD_REQUEST,
                    codes::INVALID_REQUEST,
                    "request body ended before it was complete".to_owned(),
                ))
            }
            Err(_) => {
                return Err(Refused::new(
                    StatusCode::REQUEST_TIMEOUT,
                    codes::INVALID_REQUEST,
                    format!(
                        "request body did not arrive within {} ms",
                        limits.body_timeout_ms
                    ),
                ))
            }
        };
    if depth::within_depth(&bytes, limits.max_json_depth).is_none() {
        let e = WireError::TooDeep(limits.max_json_depth);
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            e.code(),
            e.to_string(),
        ));
    }
    Ok(bytes)
}

/// Audits a body refused before dispatch (see [`Monitor::bad_request`]).
fn audit_bad_request(st: &AppState, caller: &Caller, status: StatusCode, reason: &str) {
    st.gw
        .pep
        .monitor
        .bad_request(&caller.principal, &caller.route, status.as_u16(), reason);
}

fn wire_error(e: &WireError, id: Option<Box<serde_json::value::RawValue>>) -> Response {
    error_response(StatusCode::BAD_REQUEST, id, e.code(), &e.to_string())
}

/// The client's W3C `traceparent`, if it sent one.
fn traceparent(h: &HeaderMap) -> Option<String> {
    header_str(h, "traceparent").map(str::to_owned)
}

fn accepts_sse(h: &HeaderMap) -> bool {
    header_str(h, "accept").is_some_and(|a| a.contains("text/event-stream") || a.contains("*/*"))
}

async fn post(
    st: AppState,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
    stateless: bool,
) -> Response {
    let bytes = match read_body(&st, &headers, body).await {
        Ok(b) => b,
        Err(r) => {
            audit_bad_request(&st, &caller, r.response.status(), &r.reason);
            return r.response;
        }
    };
    let parsed = match Message::parse_body(&bytes) {
        Ok(b) => b,
        Err(e) => {
            let r = wire_error(&e, None);
            audit_bad_request(&st, &caller, r.status(), &e.to_string());
            return r;
        }
    };
    if stateless {
        return match parsed {
            WireBody::Single(m) => post_stateless(st, caller, headers, m).await,
            WireBody::Batch(_) => wire_error(&WireError::BatchNotAllowed, None),
        };
    }
    let session_id = header_str(&headers, mh::MCP_SESSION_ID).map(str::to_owned);
    match parsed {
        WireBody::Single(m) if m.method() == Some("initialize") => {
            if m.kind() != Kind::Request {
                return wire_error(
                    &WireError::Invalid("initialize must be a request".into()),
                    None,
                );
            }
            initialize(st, caller, m).await
        }
        WireBody::Single(m) => {
            // A body that carries the 2026-07-28 envelope without the
            // header disagrees with itself.
            if session_id.is_none()
                && protocol::meta_version(&m.params()) == Some(Revision::V2026_07_28.as_str())
            {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    m.id_owned(),
                    codes::HEADER_MISMATCH,
                    "MCP-Protocol-Version header does not match _meta protocolVersion",
                );
            }
            let client = match find_session(&st, session_id.as_deref(), &caller).await {
                Ok(c) => c,
                Err(r) => return r,
            };
            handshake_message(st, client, m, traceparent(&headers)).await
        }
        WireBody::Batch(items) => {
            let client = match find_session(&st, session_id.as_deref(), &caller).await {
                Ok(c) => c,
                Err(r) => return r,
            };
            if !client.revision.allows_batch() {
                return wire_error(&WireError::BatchNotAllowed, None);
            }
            batch(st, client, items).await
        }
    }
}

// `allow`, not `expect`: whether the lint fires depends on the size of
// `Response`, which the `otel` feature changes.
/// The endpoint part of a route (`/mcp` of `10.0.0.7:8787/mcp`): a session
/// is bound to the endpoint it was created on, not to the local address its
/// connection reached — another interface of a wildcard listener, or another
/// replica sharing the store, serves the same endpoint.
fn endpoint_path(route: &str) -> &str {
    route
        .find('/')
        .and_then(|i| route.get(i..))
        .unwrap_or(route)
}

#[allow(
    clippy::result_large_err,
    reason = "the error is the HTTP answer itself, built once on a cold path"
)]
async fn find_session(
    st: &AppState,
    id: Option<&str>,
    caller: &Caller,
) -> Result<Arc<Client>, Response> {
    let not_found = || {
        error_response(
            StatusCode::NOT_FOUND,
            None,
            codes::INVALID_REQUEST,
            "Session not found",
        )
    };
    let Some(id) = id else {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            None,
            codes::INVALID_REQUEST,
            "Bad Request: Missing session ID",
        ));
    };
    let c = match st.gw.sessions.get(id) {
        Some(c) => c,
        // Created on another replica sharing the store?
        None => st
            .gw
            .adopt_session(id, &caller.principal)
            .await
            .ok_or_else(not_found)?,
    };
    let p = &caller.principal;
    if c.owner != p.key()
        || c.fingerprint.as_deref() != p.fingerprint()
        || endpoint_path(&c.route) != endpoint_path(&caller.route)
    {
        // Answered exactly like an unknown session: no oracle for the thief.
        tracing::warn!(
            session = %c.id,
            owner = %c.owner,
            presented = %p.key(),
            route = %caller.route,
            created_on = %c.route,
            "session hijack attempt: session presented by another identity, certificate or route"
        );
        return Err(not_found());
    }
    if c.created.elapsed() > Duration::from_secs(st.gw.cfg.auth.session_lifetime_secs) {
        tracing::info!(session = %c.id, "session reached its absolute lifetime");
        if let Some(c) = st.gw.sessions.remove(id) {
            let gw = st.gw.clone();
            tokio::spawn(async move { gw.end_session(&c, "absolute lifetime reached").await });
        }
        return Err(not_found());
    }
    st.gw.refresh_binding(&c);
    Ok(c)
}

async fn initialize(st: AppState, caller: Caller, m: Message) -> Response {
    let params = m.params();
    let requested = params
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let revision = Revision::negotiate_handshake(requested);
    let caps = params
        .get("capabilities")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let info = params
        .get("clientInfo")
        .cloned()
        .unwrap_or_else(|| json!({}));
    tracing::info!(identity = %caller.principal.key(), strength = caller.principal.strength.as_str(), "session requested");
    let client = Client::new(
        new_session_id(),
        revision,
        caps,
        info,
        st.gw.upstream_count(),
        caller.principal,
        caller.route,
    );
    let res = portcullis_policy::ResourceFacts::server(crate::gateway::GATEWAY_SERVER);
    let discover = portcullis_policy::Action::Discover;
    if let Some((mode, _)) = st.gw.pep.contained(&client, &discover, "initialize", &res) {
        return json_response(
            StatusCode::FORBIDDEN,
            &crate::gateway::quarantined(m.id_owned(), mode),
            &[],
        );
    }
    if !st
        .gw
        .sessions
        .insert(client.clone(), st.gw.cfg.limits.max_sessions)
    {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            m.id_owned(),
            codes::INTERNAL_ERROR,
            "too many sessions",
        );
    }
    let result = st.gw.initialize(&client).await;
    if let Err(e) = st.gw.bind_session(&client).await {
        // It works on this replica; others will not find it until stored.
        tracing::warn!(session = %client.id, error = %e, "session not bound in the shared store");
    }
    tracing::info!(session = %client.id, revision = %revision, "session started");
    st.gw.pep.monitor.session_start(&client);
    json_response(
        StatusCode::OK,
        &Message::response(m.id_owned().unwrap_or_else(|| raw_u64(0)), result),
        &[(mh::MCP_SESSION_ID, client.id.clone())],
    )
}

async fn handshake_message(
    st: AppState,
    client: Arc<Client>,
    m: Message,
    trace: Option<String>,
) -> Response {
    if m.kind() != Kind::Request
        && st.gw.pep.contain.verdict(&client).mode() == Some(portcullis_contain::Mode::DenyAll)
    {
        // Deny-all: nothing from this client moves on, answers to server
        // requests included (they can carry data upstream).
        tracing::info!(session = %client.id, identity = %client.owner, "message from a quarantined client dropped");
        return json_response(
            StatusCode::FORBIDDEN,
            &crate::gateway::quarantined(None, portcullis_contain::Mode::DenyAll),
            &[],
        );
    }
    match m.kind() {
        Kind::Notification => {
            st.gw.client_notification(&client, m).await;
            status_only(StatusCode::ACCEPTED)
        }
        Kind::Response | Kind::Error => {
            st.gw.client_response(&client, m).await;
            status_only(StatusCode::ACCEPTED)
        }
        Kind::Request => {
            let (first, rx) = run_call(st.gw.clone(), client.clone(), m, Vec::new(), trace).await;
            let Some(first) = first else {
                return error_response(StatusCode::OK, None, codes::INTERNAL_ERROR, "no response");
            };
            if matches!(first.kind(), Kind::Response | Kind::Error) {
                return json_response(StatusCode::OK, &first, &[]);
            }
            resumable_stream(client, first, rx)
        }
    }
}

/// Runs a request on the handler's own task until its first message. The
/// common case — a single JSON answer — costs no task spawn; if an interim
/// message comes first, the rest of the call moves to its own task and the
/// receiver streams it.
async fn run_call(
    gw: Arc<Gateway>,
    client: Arc<Client>,
    m: Message,
    forwarded: Vec<(String, String)>,
    trace: Option<String>,
) -> (Option<Message>, mpsc::Receiver<Message>) {
    let (tx, mut rx) = mpsc::channel::<Message>(64);
    let mut call = Box::pin(async move {
        let _active = gw.begin_call();
        gw.dispatch_traced(&client, m, &forwarded, trace.as_deref(), &tx)
            .await
    });
    let mut done = false;
    let first = loop {
        tokio::select! {
            biased;
            m = rx.recv() => break m,
            _ = &mut call, if !done => done = true,
        }
    };
    let last = first
        .as_ref()
        .is_some_and(|f| matches!(f.kind(), Kind::Response | Kind::Error));
    if !done {
        if last {
            // Only bookkeeping is left after the final answer.
            call.await;
        } else {
            tokio::spawn(call);
        }
    }
    (first, rx)
}

/// A 2025-03-26 batch: each entry handled in turn, answers collected.
async fn batch(
    st: AppState,
    client: Arc<Client>,
    items: Vec<portcullis_wire::message::BatchItem>,
) -> Response {
    let mut answers = Vec::new();
    for item in items {
        match item {
            Err((id, e)) => answers.push(Message::error(id, e.code(), &e.to_string(), None)),
            Ok(m) => match m.kind() {
                Kind::Notification => st.gw.client_notification(&client, m).await,
                Kind::Response | Kind::Error => st.gw.client_response(&client, m).await,
                Kind::Request if m.method() == Some("initialize") => answers.push(Message::error(
                    m.id_owned(),
                    codes::INVALID_REQUEST,
                    "initialize cannot be batched",
                    None,
                )),
                Kind::Request => {
                    let (tx, mut rx) = mpsc::channel::<Message>(64);
                    let gw = st.gw.clone();
                    let c = client.clone();
                    tokio::spawn(async move { gw.dispatch(&c, m, &[], &tx).await });
                    while let Some(x) = rx.recv().await {
                        if matches!(x.kind(), Kind::Response | Kind::Error) {
                            answers.push(x);
                        } else {
                            // Interim messages of a batched call go to the GET stream.
                            let _ = client.deliver(x);
                        }
                    }
                }
            },
        }
    }
    if answers.is_empty() {
        return status_only(StatusCode::ACCEPTED);
    }
    let mut body = Vec::from(&b"["[..]);
    for (i, a) in answers.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&a.to_bytes());
    }
    body.push(b']');
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn sse_response(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>);
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// An SSE response whose events are buffered per stream so a client that
/// loses the connection can resume with `Last-Event-ID`.
fn resumable_stream(
    client: Arc<Client>,
    first: Message,
    mut rest: mpsc::Receiver<Message>,
) -> Response {
    let sid = client.new_stream();
    let (live_tx, live_rx) = mpsc::channel::<Bytes>(64);
    if client.revision >= Revision::V2025_11_25 {
        let _ = live_tx.try_send(sse::encode_priming(&format!("{sid}-0"), None));
    }
    lock(&client.streams).insert(
        sid,
        StreamBuf {
            events: Default::default(),
            next_seq: 1,
            done: false,
            live: Some(live_tx),
        },
    );
    tokio::spawn(async move {
        let mut next = Some(first);
        while let Some(m) = next {
            let last = matches!(m.kind(), Kind::Response | Kind::Error);
            push_event(&client, sid, &m, last).await;
            if last {
                break;
            }
            next = rest.recv().await;
        }
        // Keep the tail for a while for late resumption, then forget it.
        tokio::time::sleep(Duration::from_secs(60)).await;
        lock(&client.streams).remove(&sid);
    });
    sse_response(live_rx)
}

async fn push_event(client: &Client, sid: u64, m: &Message, last: bool) {
    let (bytes, live) = {
        let mut streams = lock(&client.streams);
        let Some(buf) = streams.get_mut(&sid) else {
            return;
        };
        let seq = buf.next_seq;
        buf.next_seq += 1;
        let bytes = sse::encode(Some(&format!("{sid}-{seq}")), &m.to_bytes());
        buf.events.push_back((seq, bytes.clone()));
        while buf.events.len() > STREAM_BUFFER {
            buf.events.pop_front();
        }
        if last {
            buf.done = true;
        }
        let live = if last {
            buf.live.take()
        } else {
            buf.live.clone()
        };
        (bytes, live)
    };
    if let Some(l) = live {
        if l.send(bytes).await.is_err() {
            if let Some(buf) = lock(&client.streams).get_mut(&sid) {
                buf.live = None;
            }
        }
    }
}

async fn get(st: AppState, caller: Caller, headers: HeaderMap) -> Response {
    if !accepts_sse(&headers) {
        return error_response(
            StatusCode::NOT_ACCEPTABLE,
            None,
            codes::INVALID_REQUEST,
            "Not Acceptable: client must accept text/event-stream",
        );
    }
    let client = match find_session(&st, header_str(&headers, mh::MCP_SESSION_ID), &caller).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let listen = portcullis_policy::Action::Subscribe;
    let res = portcullis_policy::ResourceFacts::server(crate::gateway::GATEWAY_SERVER);
    if let Some((mode, _)) = st.gw.pep.contained(&client, &listen, "GET", &res) {
        return json_response(
            StatusCode::FORBIDDEN,
            &crate::gateway::quarantined(None, mode),
            &[],
        );
    }
    let resume = header_str(&headers, "last-event-id").and_then(|v| {
        let (s, q) = v.split_once('-')?;
        Some((s.parse::<u64>().ok()?, q.parse::<u64>().ok()?))
    });
    let (live_tx, live_rx) = mpsc::channel::<Bytes>(64);
    let sid = match resume {
        Some((sid, after)) => {
            let mut streams = lock(&client.streams);
            let Some(buf) = streams.get_mut(&sid) else {
                return error_response(
                    StatusCode::NOT_FOUND,
                    None,
                    codes::INVALID_REQUEST,
                    "unknown Last-Event-ID",
                );
            };
            // A client that resumes has lost the old connection, even if
            // the gateway has not noticed yet: the resumption takes over
            // (the old response ends when its sender is dropped below).
            for (seq, ev) in &buf.events {
                if *seq > after {
                    let _ = live_tx.try_send(ev.clone());
                }
            }
            buf.live = (!buf.done).then_some(live_tx);
            sid
        }
        None => {
            // Stream 0 is the session's standalone GET stream.
            let mut streams = lock(&client.streams);
            let buf = streams.entry(0).or_insert_with(|| StreamBuf {
                events: Default::default(),
                next_seq: 1,
                done: false,
                live: None,
            });
            if buf.live.as_ref().is_some_and(|l| !l.is_closed()) {
                return error_response(
                    StatusCode::CONFLICT,
                    None,
                    codes::INVALID_REQUEST,
                    "Conflict: Only one SSE stream is allowed per session",
                );
            }
            if client.revision >= Revision::V2025_11_25 {
                let _ = live_tx.try_send(sse::encode_priming(
                    &format!("0-{}", buf.next_seq - 1),
                    None,
                ));
            }
            buf.live = Some(live_tx);
            0
        }
    };
    if sid == 0 {
        let rx = client.open_outbound();
        if let Some(mut rx) = rx {
            let c = client.clone();
            tokio::spawn(async move {
                while let Some(m) = rx.recv().await {
                    push_event(&c, 0, &m, false).await;
                }
            });
        }
        let gw = st.gw.clone();
        let c = client.clone();
        tokio::spawn(async move { gw.start_listening(&c).await });
    }
    let _ = client.listening.load(Ordering::Relaxed);
    sse_response(live_rx)
}

async fn delete(st: AppState, caller: Caller, headers: HeaderMap) -> Response {
    // Only the owner may end a session; anyone else learns nothing.
    let c = match find_session(&st, header_str(&headers, mh::MCP_SESSION_ID), &caller).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Some(c) = st.gw.sessions.remove(&c.id) {
        tracing::info!(session = %c.id, "session ended by client");
        st.gw.end_session(&c, "closed by client (DELETE)").await;
    }
    status_only(StatusCode::OK)
}

fn status_for(code: i64) -> StatusCode {
    match code {
        codes::PARSE_ERROR
        | codes::INVALID_REQUEST
        | codes::INVALID_PARAMS
        | codes::HEADER_MISMATCH
        | codes::MISSING_CAPABILITY
        | codes::UNSUPPORTED_VERSION => StatusCode::BAD_REQUEST,
        codes::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    }
}

async fn post_stateless(st: AppState, caller: Caller, headers: HeaderMap, m: Message) -> Response {
    let id = m.id_owned();
    match m.kind() {
        Kind::Notification => return status_only(StatusCode::ACCEPTED),
        Kind::Response | Kind::Error => {
            return wire_error(
                &WireError::Invalid(
                    "Body must be a single JSON-RPC request or notification object".into(),
                ),
                None,
            )
        }
        Kind::Request => {}
    }
    for name in [mh::MCP_PROTOCOL_VERSION, mh::MCP_METHOD, mh::MCP_NAME] {
        if headers.get_all(name).iter().count() > 1 {
            return error_response(
                StatusCode::BAD_REQUEST,
                id,
                codes::HEADER_MISMATCH,
                &format!("{name} header sent more than once"),
            );
        }
    }
    let params = m.params();
    let meta = params.get("_meta");
    let version = meta.and_then(|x| x.get(protocol::META_VERSION));
    let caps = meta.and_then(|x| x.get(protocol::META_CAPS));
    let (Some(version), Some(caps)) = (version, caps) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            id,
            codes::INVALID_PARAMS,
            "params._meta must carry io.modelcontextprotocol/protocolVersion and clientCapabilities",
        );
    };
    if version.as_str() != Some(Revision::V2026_07_28.as_str()) {
        return error_response(
            StatusCode::BAD_REQUEST,
            id,
            codes::HEADER_MISMATCH,
            "MCP-Protocol-Version header does not match _meta protocolVersion",
        );
    }
    let method = m.method().unwrap_or_default();
    if let Err(e) = mh::check(
        method,
        &params,
        headers.get(mh::MCP_METHOD).map(|v| v.as_bytes()),
        headers.get(mh::MCP_NAME).map(|v| v.as_bytes()),
    ) {
        return error_response(
            StatusCode::BAD_REQUEST,
            id,
            codes::HEADER_MISMATCH,
            &e.to_string(),
        );
    }
    let forwarded: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with(mh::MCP_PARAM_PREFIX))
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let info = meta
        .and_then(|x| x.get(protocol::META_CLIENT_INFO))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let client = Client::new(
        String::new(),
        Revision::V2026_07_28,
        caps.clone(),
        info,
        0,
        caller.principal,
        caller.route,
    );
    let _ = client
        .facts
        .set(st.gw.shared_identity_facts(&client.owner).await);
    let (first, mut rx) =
        run_call(st.gw.clone(), client, m, forwarded, traceparent(&headers)).await;
    let Some(first) = first else {
        return error_response(StatusCode::OK, id, codes::INTERNAL_ERROR, "no response");
    };
    if matches!(first.kind(), Kind::Response | Kind::Error) {
        let status = first
            .error_value()
            .and_then(|e| e.get("code").and_then(Value::as_i64))
            .map(status_for)
            .unwrap_or(StatusCode::OK);
        return json_response(status, &first, &[]);
    }
    // Streamed: no event ids (2026-07-28 streams are not resumable); a
    // closed connection cancels the call.
    let (live_tx, live_rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut next = Some(first);
        while let Some(m) = next {
            if live_tx
                .send(sse::encode(None, &m.to_bytes()))
                .await
                .is_err()
            {
                return;
            }
            if matches!(m.kind(), Kind::Response | Kind::Error) {
                return;
            }
            next = rx.recv().await;
        }
    });
    sse_response(live_rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for ok in ["localhost", "127.0.0.1:8080", "[::1]:3000", "LOCALHOST:1"] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example.com",
            "evil.example.com:80",
            "127.0.0.1.evil.com",
            "[::2]:1",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn sessions_bind_to_the_endpoint_not_the_local_address() {
        assert_eq!(endpoint_path("10.0.0.7:8787/mcp"), "/mcp");
        assert_eq!(endpoint_path("[::1]:8787/mcp/x"), "/mcp/x");
        assert_eq!(endpoint_path("/mcp"), "/mcp");
        assert_eq!(endpoint_path(""), "");
        assert_ne!(
            endpoint_path("127.0.0.1:1/mcp"),
            endpoint_path("127.0.0.1:1/other")
        );
    }
}
