//! Streamable HTTP client side: POST a message, read a JSON or SSE reply,
//! hold a handshake-era session, listen on the GET stream.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use portcullis_identity::client_credentials::{error_chain, ClientCredentialsSource};
use portcullis_wire::{headers as mcp_headers, sse, Kind, Message, Revision};
use serde_json::{json, Value};

use super::{Events, UpstreamError};

/// The HTTP(S) client (connection pool) of one or more upstreams.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Builds an HTTP(S) client. With `tls`, https connections use that rustls
/// config (the upstream's trust bundle, expected SPIFFE ID and the gateway's
/// client certificate); without, plain http works and https has no trust
/// anchors. Upstreams without TLS settings share one such client.
pub fn client(tls: Option<Arc<rustls::ClientConfig>>) -> Result<HttpClient, String> {
    let tls = match tls {
        Some(cfg) => {
            // hyper-rustls sets ALPN itself (and refuses a preset one).
            let mut cfg = (*cfg).clone();
            cfg.alpn_protocols.clear();
            cfg
        }
        None => rustls::ClientConfig::builder_with_provider(portcullis_identity::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(conn);
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(https))
}

/// Where an HTTP upstream lives and how to reach it.
#[derive(Clone)]
pub struct HttpTarget {
    name: Arc<str>,
    uri: Uri,
    extra: Arc<HeaderMap>,
    client: Option<HttpClient>,
    max_message: usize,
    /// The gateway's own OAuth token for this upstream, if configured.
    creds: Option<Arc<ClientCredentialsSource>>,
    /// Why this upstream cannot be used (bad TLS or credential settings).
    broken: Option<Arc<str>>,
}

impl HttpTarget {
    /// A target that fails every call with `why` (its settings could not
    /// be built).
    pub fn unusable(name: &str, why: &str) -> HttpTarget {
        HttpTarget {
            name: name.into(),
            uri: Uri::from_static("http://127.0.0.1:9/"),
            extra: Arc::new(HeaderMap::new()),
            client: None,
            max_message: 1024,
            creds: None,
            broken: Some(why.into()),
        }
    }

    /// Every request to this upstream carries `Authorization: Bearer` with
    /// the gateway's own token from `creds`.
    pub fn with_credentials(mut self, creds: Arc<ClientCredentialsSource>) -> HttpTarget {
        self.creds = Some(creds);
        self
    }

    /// A target for `url`, with static headers from config, reached through
    /// `client` (shared, or this upstream's own when it has TLS settings).
    pub fn new(
        name: &str,
        url: &str,
        headers: &BTreeMap<String, String>,
        client: HttpClient,
        max_message: usize,
    ) -> Result<HttpTarget, UpstreamError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| UpstreamError::Unavailable(name.into(), format!("bad url: {e}")))?;
        let mut extra = HeaderMap::new();
        for (k, v) in headers {
            let k = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| UpstreamError::Unavailable(name.into(), format!("header {k}: {e}")))?;
            let v = HeaderValue::from_str(v).map_err(|e| {
                UpstreamError::Unavailable(name.into(), format!("header value: {e}"))
            })?;
            extra.insert(k, v);
        }
        Ok(HttpTarget {
            name: name.into(),
            uri,
            extra: Arc::new(extra),
            client: Some(client),
            max_message,
            creds: None,
            broken: None,
        })
    }

    /// Sends a request built by [`HttpTarget::request`]. With client
    /// credentials configured it carries the gateway's own token (replacing
    /// any `Authorization` header); an upstream that refuses that token (401)
    /// gets one retry with a freshly fetched token.
    async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, UpstreamError> {
        if let Some(why) = &self.broken {
            return Err(self.unavailable(why));
        }
        let Some(client) = &self.client else {
            return Err(self.unavailable("no HTTP client"));
        };
        let Some(creds) = &self.creds else {
            return client
                .request(req)
                .await
                .map_err(|e| self.unavailable(error_chain(&e)));
        };
        let (parts, body) = req.into_parts();
        let mut retried = false;
        loop {
            let token = creds
                .token()
                .await
                .map_err(|e| self.unavailable(format!("cannot obtain the gateway's token: {e}")))?;
            let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|e| self.unavailable(format!("gateway token: {e}")))?;
            let mut req = Request::new(body.clone());
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = parts.uri.clone();
            *req.version_mut() = parts.version;
            *req.headers_mut() = parts.headers.clone();
            req.headers_mut().insert(header::AUTHORIZATION, bearer);
            let resp = client
                .request(req)
                .await
                .map_err(|e| self.unavailable(error_chain(&e)))?;
            if resp.status() != StatusCode::UNAUTHORIZED || retried {
                return Ok(resp);
            }
            tracing::info!(upstream = %self.name, "upstream refused the gateway's token; fetching a new one");
            creds.invalidate(&token);
            retried = true;
        }
    }

    /// The upstream's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn unavailable(&self, why: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Unavailable(self.name.to_string(), why.to_string())
    }

    fn protocol(&self, why: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Protocol(self.name.to_string(), why.to_string())
    }

    fn request(
        &self,
        method: Method,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, UpstreamError> {
        let mut req = Request::builder().method(method).uri(self.uri.clone());
        if let Some(h) = req.headers_mut() {
            h.extend(self.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
            // W3C trace context of the request this call serves.
            if let Some(tp) =
                crate::monitor::current_traceparent().and_then(|t| HeaderValue::from_str(&t).ok())
            {
                h.insert("traceparent", tp);
            }
            h.insert(
                header::ACCEPT,
                HeaderValue::from_static("application/json, text/event-stream"),
            );
            if !body.is_empty() {
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            for (k, v) in headers {
                let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| self.protocol(e))?;
                let value = HeaderValue::from_str(v).map_err(|e| self.protocol(e))?;
                h.insert(name, value);
            }
        }
        req.body(Full::new(body)).map_err(|e| self.protocol(e))
    }

    /// POSTs one message and returns the raw HTTP response.
    async fn post(
        &self,
        msg: &Message,
        headers: &[(&str, String)],
    ) -> Result<http::Response<hyper::body::Incoming>, UpstreamError> {
        let req = self.request(Method::POST, headers, Bytes::from(msg.to_bytes()))?;
        self.send(req).await
    }

    /// Reads the reply to request `msg` from a POST response: JSON, or an
    /// SSE stream whose other messages go to `events`.
    async fn read_reply(
        &self,
        resp: http::Response<hyper::body::Incoming>,
        msg: &Message,
        events: &Events,
    ) -> Result<Message, UpstreamError> {
        let status = resp.status();
        let our_id = msg.id().map(|i| i.get().to_owned());
        if status == StatusCode::NOT_FOUND {
            // 404 with a JSON-RPC error for this request is an answer (2026-07-28
            // maps -32601 to 404); a bare 404 means the session is gone.
            let bytes = read_limited(resp.into_body(), 64 * 1024)
                .await
                .unwrap_or_default();
            return match Message::parse(&bytes) {
                Ok(m)
                    if m.kind() == Kind::Error && m.id().map(|i| i.get()) == our_id.as_deref() =>
                {
                    Ok(m)
                }
                _ => Err(UpstreamError::SessionGone(self.name.to_string())),
            };
        }
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if ctype.starts_with("text/event-stream") && status.is_success() {
            let mut body = resp.into_body();
            let mut dec = sse::Decoder::new(self.max_message);
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| self.unavailable(e))?;
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                for ev in dec.feed(data).map_err(|e| self.protocol(e))? {
                    if ev.data.trim().is_empty() {
                        continue;
                    }
                    let m = Message::parse(ev.data.as_bytes()).map_err(|e| self.protocol(e))?;
                    let is_reply = matches!(m.kind(), Kind::Response | Kind::Error)
                        && m.id().map(|i| i.get()) == our_id.as_deref();
                    if is_reply {
                        return Ok(m);
                    }
                    // A closed events channel means the caller went away;
                    // keep draining so the upstream is not left blocked.
                    let _ = events.send(m).await;
                }
            }
            return Err(self.protocol("SSE stream ended without a response"));
        }
        let bytes = read_limited(resp.into_body(), self.max_message)
            .await
            .map_err(|e| self.protocol(e))?;
        if bytes.is_empty() {
            return Err(self.protocol(format!("HTTP {status} with an empty body")));
        }
        match Message::parse(&bytes) {
            Ok(m) if matches!(m.kind(), Kind::Response | Kind::Error) => Ok(m),
            Ok(_) => Err(self.protocol("a JSON body that is not a response")),
            Err(_) if !status.is_success() => Err(self.protocol(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ))),
            Err(e) => Err(self.protocol(e)),
        }
    }

    /// POSTs a notification or a response; expects 202 (or any 2xx).
    async fn post_no_reply(
        &self,
        msg: &Message,
        headers: &[(&str, String)],
    ) -> Result<(), UpstreamError> {
        let resp = self.post(msg, headers).await?;
        let status = resp.status();
        // Drain so the connection returns to the pool.
        let _ = read_limited(resp.into_body(), 64 * 1024).await;
        if status == StatusCode::NOT_FOUND {
            return Err(UpstreamError::SessionGone(self.name.to_string()));
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(self.protocol(format!("HTTP {status} for a notification")))
        }
    }
}

/// Reads a body up to `limit` bytes.
pub async fn read_limited(body: hyper::body::Incoming, limit: usize) -> Result<Bytes, String> {
    let limited = http_body_util::Limited::new(body, limit);
    limited
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string())
}

/// A handshake-era session the gateway holds with one HTTP upstream.
pub struct HttpSession {
    target: HttpTarget,
    session_id: Option<String>,
    revision: Revision,
    /// The upstream's `initialize` result (capabilities, serverInfo),
    /// shared between sessions that got the same answer.
    pub init: Arc<Value>,
}

impl HttpSession {
    /// Opens a session: `initialize`, then `notifications/initialized`.
    /// `seen` keeps the last `initialize` result so identical answers
    /// (the usual case) share one parsed copy across sessions.
    pub async fn open(
        target: HttpTarget,
        init_params: Value,
        init_id: u64,
        seen: &std::sync::Mutex<Option<(String, Arc<Value>)>>,
    ) -> Result<HttpSession, UpstreamError> {
        let req = Message::request(
            portcullis_wire::message::raw_u64(init_id),
            "initialize",
            Some(init_params.clone()),
        );
        let requested = init_params
            .get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or(Revision::LATEST_HANDSHAKE.as_str())
            .to_owned();
        let resp = target
            .post(&req, &[(mcp_headers::MCP_PROTOCOL_VERSION, requested)])
            .await?;
        let sid = resp
            .headers()
            .get(mcp_headers::MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (sink, _drop) = tokio::sync::mpsc::channel(16);
        let reply = target.read_reply(resp, &req, &sink).await?;
        if reply.kind() == Kind::Error {
            return Err(target.protocol(format!(
                "initialize refused: {}",
                reply.error_value().unwrap_or(Value::Null)
            )));
        }
        let raw = reply
            .result_raw()
            .map(|r| r.get().to_owned())
            .unwrap_or_default();
        let init = {
            let mut last = seen.lock().unwrap_or_else(|e| e.into_inner());
            match last.as_ref() {
                Some((r, v)) if *r == raw => v.clone(),
                _ => {
                    let v = Arc::new(reply.result());
                    *last = Some((raw, v.clone()));
                    v
                }
            }
        };
        let revision = init
            .get("protocolVersion")
            .and_then(Value::as_str)
            .and_then(Revision::parse)
            .filter(|r| r.is_handshake())
            .ok_or_else(|| target.protocol(format!("unsupported protocolVersion in {init}")))?;
        let session = HttpSession {
            target,
            session_id: sid,
            revision,
            init,
        };
        session
            .notify(&Message::notification("notifications/initialized", None))
            .await?;
        Ok(session)
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![(
            mcp_headers::MCP_PROTOCOL_VERSION,
            self.revision.as_str().to_owned(),
        )];
        if let Some(s) = &self.session_id {
            h.push((mcp_headers::MCP_SESSION_ID, s.clone()));
        }
        h
    }

    /// The negotiated revision.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Sends a request and waits for its response; related messages go to `events`.
    pub async fn call(&self, msg: &Message, events: &Events) -> Result<Message, UpstreamError> {
        let resp = self.target.post(msg, &self.headers()).await?;
        self.target.read_reply(resp, msg, events).await
    }

    /// Sends a notification or a response to a server→client request.
    pub async fn notify(&self, msg: &Message) -> Result<(), UpstreamError> {
        self.target.post_no_reply(msg, &self.headers()).await
    }

    /// Opens the GET stream and forwards every message to `sink` until the
    /// stream ends or `sink` closes. Returns `Ok(false)` if the upstream
    /// offers no GET stream (405).
    pub async fn listen(&self, sink: &Events) -> Result<bool, UpstreamError> {
        let req = self
            .target
            .request(Method::GET, &self.headers(), Bytes::new())?;
        let resp = self.target.send(req).await?;
        match resp.status() {
            StatusCode::METHOD_NOT_ALLOWED => return Ok(false),
            StatusCode::NOT_FOUND => {
                return Err(UpstreamError::SessionGone(self.target.name.to_string()))
            }
            s if !s.is_success() => {
                return Err(self.target.protocol(format!("GET stream: HTTP {s}")))
            }
            _ => {}
        }
        let mut body = resp.into_body();
        let mut dec = sse::Decoder::new(self.target.max_message);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.target.unavailable(e))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            for ev in dec.feed(data).map_err(|e| self.target.protocol(e))? {
                if ev.data.trim().is_empty() {
                    continue;
                }
                match Message::parse(ev.data.as_bytes()) {
                    Ok(m) => {
                        if sink.send(m).await.is_err() {
                            return Ok(true);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(upstream = %self.target.name, error = %e, "garbage on GET stream")
                    }
                }
            }
        }
        Ok(true)
    }

    /// Ends the session upstream (DELETE), best effort.
    pub async fn close(&self) {
        if self.session_id.is_none() {
            return;
        }
        if let Ok(req) = self
            .target
            .request(Method::DELETE, &self.headers(), Bytes::new())
        {
            if let Ok(resp) = self.target.send(req).await {
                let _ = read_limited(resp.into_body(), 4096).await;
            }
        }
    }
}

/// A stateless (2026-07-28) HTTP upstream: every request stands alone.
#[derive(Clone)]
pub struct StatelessHttp {
    target: HttpTarget,
}

impl StatelessHttp {
    /// Wraps a target known to speak 2026-07-28.
    pub fn new(target: HttpTarget) -> Self {
        StatelessHttp { target }
    }

    fn headers_for(msg: &Message, forwarded: &[(String, String)]) -> Vec<(&'static str, String)> {
        let mut h = vec![(
            mcp_headers::MCP_PROTOCOL_VERSION,
            Revision::V2026_07_28.as_str().to_owned(),
        )];
        if let Some(m) = msg.method() {
            h.push((mcp_headers::MCP_METHOD, mcp_headers::encode_value(m)));
            if let Some(name) = mcp_headers::expected_name(m, &msg.params()) {
                h.push((mcp_headers::MCP_NAME, mcp_headers::encode_value(&name)));
            }
        }
        let _ = forwarded;
        h
    }

    /// Sends one self-contained request; `forwarded` are `Mcp-Param-*`
    /// headers passed through from the client.
    pub async fn call(
        &self,
        msg: &Message,
        forwarded: &[(String, String)],
        events: &Events,
    ) -> Result<Message, UpstreamError> {
        let headers = StatelessHttp::headers_for(msg, forwarded);
        let mut req = self
            .target
            .request(Method::POST, &headers, Bytes::from(msg.to_bytes()))?;
        // Only `Mcp-Param-*` headers pass from the client; never, say, its
        // Authorization.
        for (k, v) in forwarded.iter().filter(|(k, _)| {
            k.to_ascii_lowercase()
                .starts_with(mcp_headers::MCP_PARAM_PREFIX)
        }) {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                req.headers_mut().insert(k, v);
            }
        }
        let resp = self.target.send(req).await?;
        self.target.read_reply(resp, msg, events).await
    }

    /// Asks `server/discover`; `Ok(None)` if the upstream does not speak
    /// 2026-07-28.
    pub async fn discover(&self, id: u64) -> Result<Option<Value>, UpstreamError> {
        let req = Message::request(
            portcullis_wire::message::raw_u64(id),
            "server/discover",
            Some(
                json!({"_meta": crate::protocol::stateless_meta(&json!({}), &json!({"name": "portcullis", "version": env!("CARGO_PKG_VERSION")}))}),
            ),
        );
        let (sink, _rx) = tokio::sync::mpsc::channel(4);
        match self.call(&req, &[], &sink).await {
            Ok(m) if m.kind() == Kind::Response => {
                let r = m.result();
                let speaks = r
                    .get("supportedVersions")
                    .and_then(Value::as_array)
                    .is_some_and(|v| {
                        v.iter()
                            .any(|x| x.as_str() == Some(Revision::V2026_07_28.as_str()))
                    });
                Ok(speaks.then_some(r))
            }
            Ok(_) | Err(UpstreamError::Protocol(..)) | Err(UpstreamError::SessionGone(_)) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}
