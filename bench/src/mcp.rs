//! A minimal handshake-era MCP client over Streamable HTTP: one HTTP/1.1
//! keep-alive connection per session (plain TCP or TLS), JSON or SSE replies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The revision the driver asks for in `initialize`.
pub const PROTOCOL_VERSION: &str = "2025-11-25";

const MCP_SESSION_ID: &str = "mcp-session-id";
const MCP_PROTOCOL_VERSION: &str = "mcp-protocol-version";

/// How long to keep draining an SSE stream after the response arrived.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// One endpoint to measure.
pub struct Target {
    /// Name used in the report.
    pub label: String,
    /// The URL as given (without `#tool`).
    pub url: String,
    uri: Uri,
    authority: HeaderValue,
    /// `host:port` to connect to.
    pub addr: String,
    /// TLS for `https://` URLs: the connector and the name to verify.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The tool to call.
    pub tool: String,
    /// Pre-encoded `params` of the `tools/call` (without the id).
    call_params: Value,
    /// Extra headers sent on every request.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Target {
    /// Builds a target for an `http://` or `https://` URL; `https://`
    /// needs a TLS client config (its trust bundle, optional client cert).
    pub fn new(
        label: String,
        url: &str,
        tool: String,
        args: Value,
        headers: &[(HeaderName, HeaderValue)],
        timeout: Duration,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> anyhow::Result<Target> {
        let uri: Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
        let secure = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => bail!("{url}: only http:// and https:// URLs are supported"),
        };
        let auth = uri
            .authority()
            .with_context(|| format!("{url}: no host"))?
            .clone();
        let port = auth.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let tls = if secure {
            let cfg = tls.with_context(|| format!("{url}: https needs --cacert"))?;
            let name = ServerName::try_from(host.to_owned())
                .with_context(|| format!("{url}: {host:?} is not a valid TLS server name"))?;
            Some((TlsConnector::from(cfg.clone()), name))
        } else {
            None
        };
        Ok(Target {
            label,
            url: url.to_owned(),
            authority: HeaderValue::from_str(auth.as_str())?,
            uri,
            addr,
            tls,
            call_params: json!({"name": tool, "arguments": args}),
            tool,
            headers: headers.to_vec(),
            timeout,
        })
    }
}

impl Target {
    /// One POST of a JSON-RPC `ping` outside any session, with the
    /// target's headers: the handshake mode's optional request. A gateway
    /// authenticates it before it notices the missing session.
    pub fn probe(&self) -> Result<Request<Full<Bytes>>, CallError> {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(HOST, self.authority.clone())
            .header(ACCEPT, "application/json, text/event-stream")
            .header(CONTENT_TYPE, "application/json")
            .header(MCP_PROTOCOL_VERSION, PROTOCOL_VERSION);
        for (k, v) in &self.headers {
            b = b.header(k, v);
        }
        b.body(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
        )))
        .map_err(|e| CallError::new("protocol", e))
    }
}

/// Why a call failed, as counted in the report.
#[derive(Debug)]
pub struct CallError {
    /// `http` (non-2xx), `rpc` (JSON-RPC error), `tool` (`isError: true`),
    /// `transport` (connect/IO), `tls` (handshake), `protocol` (unparseable
    /// reply), `timeout`.
    pub kind: &'static str,
    /// Human-readable detail.
    pub detail: String,
}

impl CallError {
    /// An error of `kind`.
    pub fn new(kind: &'static str, detail: impl std::fmt::Display) -> CallError {
        CallError {
            kind,
            detail: detail.to_string(),
        }
    }

    /// Whether the connection is suspect after this error.
    pub fn breaks_connection(&self) -> bool {
        matches!(self.kind, "transport" | "tls" | "timeout")
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// Incremental `text/event-stream` parser yielding each event's data.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Feeds bytes; complete events' data are pushed to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<String>) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(rest) = buf.get(start..) {
            let Some(pos) = rest.iter().position(|&b| b == b'\n') else {
                break;
            };
            let line = rest.get(..pos).unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = String::from_utf8_lossy(line);
            self.line(&line, out);
            start += pos + 1;
        }
        buf.drain(..start.min(buf.len()));
        self.buf = buf;
    }

    /// Ends the stream: a pending event without its blank line still counts.
    pub fn finish(&mut self, out: &mut Vec<String>) {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            let line = String::from_utf8_lossy(&rest).into_owned();
            self.line(line.trim_end_matches('\r'), out);
        }
        self.line("", out);
    }

    fn line(&mut self, line: &str, out: &mut Vec<String>) {
        if line.is_empty() {
            if self.has_data {
                out.push(std::mem::take(&mut self.data));
                self.has_data = false;
            }
            return;
        }
        if let Some(v) = line.strip_prefix("data:") {
            let v = v.strip_prefix(' ').unwrap_or(v);
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(v);
            self.has_data = true;
        }
        // id:, event:, retry: and comments do not matter here.
    }
}

fn is_response_to(v: &Value, id: u64) -> bool {
    v.get("id").and_then(Value::as_u64) == Some(id)
        && (v.get("result").is_some() || v.get("error").is_some())
}

/// One MCP session: its connection, its id, its negotiated revision.
pub struct Session {
    sender: Option<SendRequest<Full<Bytes>>>,
    session_id: Option<HeaderValue>,
    version: HeaderValue,
    next_id: u64,
    /// Connections opened over the session's life (1 = never reconnected).
    pub connects: u64,
}

/// Opens a TCP connection to the target, with `TCP_NODELAY`.
pub async fn tcp(t: &Target) -> Result<TcpStream, CallError> {
    let stream = TcpStream::connect(&t.addr)
        .await
        .map_err(|e| CallError::new("transport", format!("connect {}: {e}", t.addr)))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Runs the TLS client handshake on `stream` (a full one when the config
/// disables resumption).
pub async fn tls_handshake(
    connector: &TlsConnector,
    name: &ServerName<'static>,
    stream: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, CallError> {
    connector
        .connect(name.clone(), stream)
        .await
        .map_err(|e| CallError::new("tls", format!("TLS handshake: {e}")))
}

/// An HTTP/1.1 client connection over any byte stream; its driver runs as
/// a task.
pub async fn http1<S>(io: S) -> Result<SendRequest<Full<Bytes>>, CallError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| CallError::new("transport", format!("handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn connect(t: &Target) -> Result<SendRequest<Full<Bytes>>, CallError> {
    let stream = tcp(t).await?;
    match &t.tls {
        None => http1(stream).await,
        Some((connector, name)) => http1(tls_handshake(connector, name, stream).await?).await,
    }
}

/// What a POST carrying a request produced, before classification.
struct Reply {
    msg: Value,
    /// When the matching response was complete (SSE: before draining).
    at: Instant,
    headers: hyper::HeaderMap,
}

impl Session {
    /// `initialize` + `notifications/initialized` on a fresh connection.
    pub async fn open(t: &Target) -> Result<Session, CallError> {
        let mut s = Session {
            sender: None,
            session_id: None,
            version: HeaderValue::from_static(PROTOCOL_VERSION),
            next_id: 1,
            connects: 0,
        };
        let body = json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "portcullis-load", "version": env!("CARGO_PKG_VERSION")},
            },
        });
        let reply = s.request(t, &body, 0).await?;
        if let Some(e) = reply.msg.get("error") {
            return Err(CallError::new("rpc", format!("initialize refused: {e}")));
        }
        let version = reply
            .msg
            .get("result")
            .and_then(|r| r.get("protocolVersion"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                CallError::new("protocol", "initialize result has no protocolVersion")
            })?;
        s.version = HeaderValue::from_str(version)
            .map_err(|e| CallError::new("protocol", format!("protocolVersion: {e}")))?;
        s.session_id = reply.headers.get(MCP_SESSION_ID).cloned();
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        s.notify(t, &note).await?;
        Ok(s)
    }

    /// Closes the session's connection (the next request reconnects).
    pub fn drop_connection(&mut self) {
        self.sender = None;
    }

    /// Whether the server issued a session id.
    pub fn has_session_id(&self) -> bool {
        self.session_id.is_some()
    }

    /// One `tools/call`; returns its start and latency. The latency stops
    /// when the matching response is parsed (SSE tails are drained after).
    pub async fn call_tool(&mut self, t: &Target) -> (Instant, Result<Duration, CallError>) {
        let id = self.next_id;
        self.next_id += 1;
        let body =
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": t.call_params});
        let start = Instant::now();
        let r = match self.request(t, &body, id).await {
            Ok(reply) => classify(&reply.msg).map(|()| reply.at.duration_since(start)),
            Err(e) => Err(e),
        };
        (start, r)
    }

    /// Ends the session (DELETE), best effort.
    pub async fn close(mut self, t: &Target) {
        if self.session_id.is_none() {
            return;
        }
        let fut = async {
            let req = self.build(t, Method::DELETE, None)?;
            let resp = self.send(t, req).await?;
            let _ = resp.into_body().collect().await;
            Ok::<_, CallError>(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), fut).await;
    }

    fn build(
        &self,
        t: &Target,
        method: Method,
        body: Option<&Value>,
    ) -> Result<Request<Full<Bytes>>, CallError> {
        let mut b = Request::builder()
            .method(method)
            .uri(t.uri.clone())
            .header(HOST, t.authority.clone())
            .header(ACCEPT, "application/json, text/event-stream")
            .header(MCP_PROTOCOL_VERSION, self.version.clone());
        if let Some(sid) = &self.session_id {
            b = b.header(MCP_SESSION_ID, sid.clone());
        }
        for (k, v) in &t.headers {
            b = b.header(k, v);
        }
        let bytes = match body {
            Some(v) => {
                b = b.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).map_err(|e| CallError::new("protocol", e))?)
            }
            None => Bytes::new(),
        };
        b.body(Full::new(bytes))
            .map_err(|e| CallError::new("protocol", e))
    }

    async fn send(
        &mut self,
        t: &Target,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, CallError> {
        let alive = match self.sender.as_mut() {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !alive {
            self.sender = Some(connect(t).await?);
            self.connects += 1;
        }
        let Some(sender) = self.sender.as_mut() else {
            return Err(CallError::new("transport", "no connection"));
        };
        match sender.send_request(req).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.sender = None;
                Err(CallError::new("transport", e))
            }
        }
    }

    /// POSTs a request and reads the response with `id`, within the timeout.
    async fn request(&mut self, t: &Target, body: &Value, id: u64) -> Result<Reply, CallError> {
        let req = self.build(t, Method::POST, Some(body))?;
        let fut = async {
            let resp = self.send(t, req).await?;
            read_reply(resp, id).await
        };
        match tokio::time::timeout(t.timeout, fut).await {
            Ok(Ok((reply, reusable))) => {
                if !reusable {
                    self.sender = None;
                }
                Ok(reply)
            }
            Ok(Err(e)) => {
                if e.breaks_connection() {
                    self.sender = None;
                }
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err(CallError::new(
                    "timeout",
                    format!("no response within {} ms", t.timeout.as_millis()),
                ))
            }
        }
    }

    /// POSTs a notification; any 2xx is fine.
    async fn notify(&mut self, t: &Target, body: &Value) -> Result<(), CallError> {
        let req = self.build(t, Method::POST, Some(body))?;
        let fut = async {
            let resp = self.send(t, req).await?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| CallError::new("transport", e))?
                .to_bytes();
            if !status.is_success() {
                return Err(CallError::new(
                    "http",
                    format!("HTTP {status} for a notification: {}", snippet(&bytes)),
                ));
            }
            Ok(())
        };
        match tokio::time::timeout(t.timeout, fut).await {
            Ok(r) => r,
            Err(_) => {
                self.sender = None;
                Err(CallError::new("timeout", "notification not acknowledged"))
            }
        }
    }
}

fn snippet(b: &[u8]) -> String {
    String::from_utf8_lossy(b).chars().take(200).collect()
}

/// Sorts a reply into success or an error kind.
fn classify(msg: &Value) -> Result<(), CallError> {
    if let Some(e) = msg.get("error") {
        return Err(CallError::new("rpc", e));
    }
    let result = msg.get("result").unwrap_or(&Value::Null);
    if result.get("isError").and_then(Value::as_bool) == Some(true) {
        return Err(CallError::new("tool", result));
    }
    Ok(())
}

/// Reads the response to `id` from a JSON or SSE body. Returns the reply
/// and whether the connection can carry another request.
async fn read_reply(resp: Response<Incoming>, id: u64) -> Result<(Reply, bool), CallError> {
    let status = resp.status();
    let (parts, mut body) = resp.into_parts();
    let ctype = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !status.is_success() {
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        return Err(CallError::new(
            "http",
            format!("HTTP {status}: {}", snippet(&bytes)),
        ));
    }
    if ctype.starts_with("text/event-stream") {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        let mut found: Option<(Value, Instant)> = None;
        let mut ended = false;
        while found.is_none() {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        parser.feed(&data, &mut events);
                    }
                }
                Some(Err(e)) => return Err(CallError::new("transport", e)),
                None => {
                    parser.finish(&mut events);
                    ended = true;
                }
            }
            for ev in events.drain(..) {
                if found.is_some() || ev.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(&ev)
                    .map_err(|e| CallError::new("protocol", format!("SSE data: {e}")))?;
                if is_response_to(&v, id) {
                    found = Some((v, Instant::now()));
                }
            }
            if ended {
                break;
            }
        }
        let Some((msg, at)) = found else {
            return Err(CallError::new(
                "protocol",
                "SSE stream ended without the response",
            ));
        };
        // Drain the rest so the connection can be reused.
        let mut reusable = true;
        if !ended {
            let drain = async {
                while let Some(f) = body.frame().await {
                    if f.is_err() {
                        return false;
                    }
                }
                true
            };
            reusable = tokio::time::timeout(DRAIN_TIMEOUT, drain)
                .await
                .unwrap_or(false);
        }
        return Ok((
            Reply {
                msg,
                at,
                headers: parts.headers,
            },
            reusable,
        ));
    }
    let bytes = body
        .collect()
        .await
        .map_err(|e| CallError::new("transport", e))?
        .to_bytes();
    let at = Instant::now();
    let msg: Value = serde_json::from_slice(&bytes).map_err(|e| {
        CallError::new(
            "protocol",
            format!("HTTP {status} body is not JSON ({e}): {}", snippet(&bytes)),
        )
    })?;
    if !is_response_to(&msg, id) {
        return Err(CallError::new(
            "protocol",
            format!("not the response to id {id}: {}", snippet(&bytes)),
        ));
    }
    Ok((
        Reply {
            msg,
            at,
            headers: parts.headers,
        },
        true,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_chunks() {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        // A priming event (empty data), a comment, then an event split mid-field.
        p.feed(
            b"id: 1-0\ndata:\n\n: comment\r\nevent: message\r\nda",
            &mut out,
        );
        assert_eq!(out, vec![String::new()]);
        out.clear();
        p.feed(b"ta: {\"a\":\r\ndata: 1}\r\n\r\ndata: tail", &mut out);
        assert_eq!(out, vec!["{\"a\":\n1}".to_owned()]);
        p.finish(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out.get(1).map(String::as_str), Some("tail"));
    }

    #[test]
    fn response_matching_and_classes() {
        let ok = json!({"jsonrpc":"2.0","id":7,"result":{"content":[]}});
        assert!(is_response_to(&ok, 7));
        assert!(!is_response_to(&ok, 8));
        let note = json!({"jsonrpc":"2.0","method":"notifications/progress","params":{}});
        assert!(!is_response_to(&note, 7));
        assert!(classify(&ok).is_ok());
        let rpc = json!({"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"x"}});
        assert_eq!(classify(&rpc).map_err(|e| e.kind), Err("rpc"));
        let tool = json!({"jsonrpc":"2.0","id":7,"result":{"isError":true}});
        assert_eq!(classify(&tool).map_err(|e| e.kind), Err("tool"));
    }
}
