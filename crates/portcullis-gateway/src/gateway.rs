//! The gateway: upstream pool, federation (aggregated lists, namespaced
//! names, routing), request-id remapping and the delivery of server
//! messages to the one client they belong to.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::{Duration, Instant};

use base64::Engine;
use portcullis_wire::message::{raw_u64, to_raw};
use portcullis_wire::{codes, Kind, Message, Revision};
use rand::{RngCore, TryRngCore};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, UpstreamConfig, UpstreamProtocol};
use crate::conn::Conn;
use crate::inspection::{self as inspection, Asks, Rules};
use crate::monitor::{self, Out, RequestCtx, TraceContext};
use crate::naming::Naming;
use crate::protocol::{self, fit_result, has_cap};
use crate::segments::ItemKind;
use crate::session::{lock, Client, InFlight, ServerRequest, Sessions};
use crate::upstream::http::{self as uphttp, HttpSession, HttpTarget, StatelessHttp};
use crate::upstream::stdio::{Launch, StdioUpstream};
use crate::upstream::UpstreamError;

mod admit;

/// Prefix of `requestState` values minted by the gateway itself (when it
/// bridges a 2026-07-28 client to a handshake-era upstream); any other
/// `requestState` belongs to the upstream and passes through unchanged.
pub const STATE_PREFIX: &str = "portcullis.v1.";

/// How long a bridged call may wait for the client's input.
const SUSPEND_TTL: Duration = Duration::from_secs(600);

#[expect(
    clippy::large_enum_variant,
    reason = "one per configured upstream, never moved on a hot path"
)]
pub(crate) enum UpstreamKind {
    Http {
        target: HttpTarget,
        /// `Some(discover result)` if the upstream speaks 2026-07-28.
        modern: tokio::sync::OnceCell<Option<Arc<Value>>>,
    },
    Stdio(Arc<StdioUpstream>),
}

/// One configured upstream.
pub struct Upstream {
    // (fields below are crate-visible for the listen module)
    /// Its configured name.
    pub name: String,
    pub(crate) cfg: UpstreamConfig,
    pub(crate) kind: UpstreamKind,
    /// The connection used for 2026-07-28 clients (gateway-held).
    pub(crate) shared: tokio::sync::Mutex<Option<Conn>>,
    pub(crate) timeout: Duration,
    /// The last `initialize` answer of this upstream, shared by sessions.
    pub(crate) seen_init: StdMutex<Option<(String, Arc<Value>)>>,
    /// Whether the held session's GET stream feeds the hub.
    pub(crate) hub_fed: std::sync::atomic::AtomicBool,
    /// Opens when the upstream keeps failing: calls then fail fast.
    pub(crate) breaker: Arc<portcullis_contain::breaker::Breaker>,
    /// Re-lists after `tools/list_changed`, coalesced: a flood of
    /// notifications costs at most one re-list running and one queued.
    pub(crate) relist: crate::gateway::admit::Relist,
}

/// A step of a call in progress, as produced by its task.
type Step = Result<Message, UpstreamError>;

/// A call in progress, polled by whoever drives it: related server messages
/// first, then the response. Polled inline (no extra task); dropping it
/// abandons the call. A parked call keeps its `Steps` unpolled until the
/// client supplies input.
struct Steps {
    call: Option<std::pin::Pin<Box<dyn std::future::Future<Output = Step> + Send>>>,
    events: mpsc::Receiver<Message>,
    last: Option<Step>,
}

impl Steps {
    async fn next(&mut self) -> Option<Step> {
        loop {
            let Some(call) = self.call.as_mut() else {
                // The call is done: drain what it sent, then its result.
                return match self.events.try_recv() {
                    Ok(m) => Some(Ok(m)),
                    Err(_) => self.last.take(),
                };
            };
            tokio::select! {
                biased;
                Some(m) = self.events.recv() => return Some(Ok(m)),
                r = call => {
                    self.call = None;
                    self.last = Some(r);
                }
            }
        }
    }
}

/// A call parked until a 2026-07-28 client supplies input.
struct Suspended {
    steps: Steps,
    conn: Conn,
    idx: usize,
    uid: u64,
    their_id: Box<RawValue>,
    key: String,
    binding: String,
    progress: Option<Value>,
    rules: Arc<Rules>,
    expires: Instant,
}

#[derive(Default)]
struct Routes {
    uris: HashMap<String, usize>,
    templates: Vec<(String, usize)>,
}

/// The gateway core, shared by every transport.
pub struct Gateway {
    /// The configuration it runs with.
    pub cfg: Config,
    upstreams: Vec<Upstream>,
    naming: Naming,
    next_id: AtomicU64,
    routes: StdMutex<Routes>,
    /// Open handshake-era client sessions.
    pub sessions: Sessions,
    suspended: StdMutex<HashMap<String, Suspended>>,
    /// Unsolicited notifications of shared upstream connections (stdio, and
    /// the sessions held for 2026-07-28 clients), for `subscriptions/listen`.
    pub(crate) hub: tokio::sync::broadcast::Sender<(usize, Message)>,
    /// The policy enforcement point.
    pub pep: Arc<crate::pep::Pep>,
    /// Tool annotations by client-facing name, learned from tool lists.
    tool_meta: StdMutex<HashMap<String, portcullis_policy::Annotations>>,
    /// Client-facing names of the prompts admitted from prompt lists.
    prompt_seen: StdMutex<std::collections::HashSet<String>>,
    /// Policy facts of 2026-07-28 clients, per identity (they have no session).
    stateless_facts: StdMutex<HashMap<String, Arc<crate::session::Facts>>>,
    /// Verdicts on definitions: poisoning and shadowing.
    pub(crate) defs: crate::defs::Defs,
    /// The inspection stage's rules (DLP, injection markers).
    pub(crate) inspection: crate::inspection::Inspection,
    /// Pending human approvals of 2026-07-28 clients, by token.
    approvals: StdMutex<HashMap<String, (String, Instant)>>,
    /// Set on shutdown: `/readyz` answers 503 while calls drain.
    draining: std::sync::atomic::AtomicBool,
    /// Client calls being handled now (for draining).
    active: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts one client call as in flight while it lives.
pub struct ActiveCall(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for ActiveCall {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a request was not let through by policy.
enum Refusal {
    /// The target is hidden from this principal: answer as if it did not exist.
    Hidden,
    /// Denied (or approval refused), with a reason safe for the client.
    Denied(String),
    /// Already answered (an input-required result went out).
    Answered,
    /// Quarantined or under the kill switch.
    Quarantined(portcullis_contain::Mode),
}

/// The server name policy sees for requests the gateway answers itself.
pub const GATEWAY_SERVER: &str = "portcullis";

/// `requestState` prefix of approvals the gateway asks a 2026-07-28 client for.
const APPROVAL_PREFIX: &str = "portcullis.approval.v1.";
/// The input-request key of an approval.
const APPROVAL_KEY: &str = "portcullis-approval";

fn err(id: Option<Box<RawValue>>, code: i64, msg: &str) -> Message {
    Message::error(id, code, msg, None)
}

/// The answer to a contained caller: that it is contained and how, not why
/// (the reason is for operators and the audit log).
pub(crate) fn quarantined(id: Option<Box<RawValue>>, mode: portcullis_contain::Mode) -> Message {
    Message::error(
        id,
        codes::QUARANTINED,
        &format!(
            "Forbidden: this identity is quarantined ({})",
            mode.as_str()
        ),
        Some(json!({"mode": mode.as_str()})),
    )
}

/// The answer to a rate-limited request, with when to retry.
fn rate_limited(id: Option<Box<RawValue>>, limit: &str, wait: Duration) -> Message {
    let secs = wait.as_secs_f64();
    Message::error(
        id,
        codes::RATE_LIMITED,
        &format!("Rate limited ({limit}): retry after {secs:.1} s"),
        Some(json!({"retryAfterSeconds": secs.ceil().max(1.0), "limit": limit})),
    )
}

fn list_key(method: &str) -> Option<(&'static str, &'static str)> {
    Some(match method {
        "tools/list" => ("tools", "tools"),
        "prompts/list" => ("prompts", "prompts"),
        "resources/list" => ("resources", "resources"),
        "resources/templates/list" => ("resourceTemplates", "resources"),
        _ => return None,
    })
}

fn encode_cursor(map: &BTreeMap<usize, String>) -> String {
    let v = Value::Object(
        map.iter()
            .map(|(k, c)| (k.to_string(), Value::from(c.as_str())))
            .collect(),
    );
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn decode_cursor(c: &str) -> Option<BTreeMap<usize, String>> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()?;
    let v: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    v.into_iter()
        .map(|(k, c)| Some((k.parse().ok()?, c.as_str()?.to_owned())))
        .collect()
}

fn binding_of(method: &str, params: &Value) -> String {
    let target = params
        .get("name")
        .or_else(|| params.get("uri"))
        .cloned()
        .unwrap_or(Value::Null);
    let args = params.get("arguments").cloned().unwrap_or(Value::Null);
    format!("{method}\u{0}{target}\u{0}{args}")
}

impl Gateway {
    /// Builds the gateway and starts its stdio upstreams.
    /// `namespaced = false` keeps a single upstream's names unchanged.
    pub fn new(
        cfg: Config,
        self_exe_env: &[(String, String)],
        namespaced: bool,
        pep: Arc<crate::pep::Pep>,
    ) -> Arc<Gateway> {
        let mut naming = Naming::new(cfg.upstreams.iter().map(|u| (u.name.as_str(), &u.rename)));
        if !namespaced {
            naming = naming.transparent();
        }
        let http = uphttp::client(None);
        Arc::new_cyclic(|weak: &Weak<Gateway>| {
            let upstreams = cfg
                .upstreams
                .iter()
                .enumerate()
                .map(|(idx, u)| {
                    let timeout = Duration::from_millis(
                        u.call_timeout_ms.unwrap_or(cfg.limits.call_timeout_ms),
                    );
                    let kind = if let Some(argv) = &u.command {
                        let w = weak.clone();
                        let mut env = u.env.clone();
                        for (k, v) in self_exe_env {
                            env.entry(k.clone()).or_insert_with(|| v.clone());
                        }
                        UpstreamKind::Stdio(StdioUpstream::spawn(
                            &u.name,
                            Launch {
                                argv: argv.clone(),
                                env,
                                inherit_env: u.inherit_env.clone(),
                                cwd: u.cwd.clone(),
                            },
                            protocol::server_info(),
                            cfg.limits.max_upstream_message_bytes,
                            Arc::new(move |m| {
                                if let Some(g) = w.upgrade() {
                                    g.on_shared_unsolicited(idx, m);
                                }
                            }),
                        ))
                    } else {
                        UpstreamKind::Http {
                            target: http_target(
                                u,
                                &http,
                                cfg.limits.max_upstream_message_bytes,
                                cfg.spiffe.as_ref(),
                            ),
                            modern: tokio::sync::OnceCell::new(),
                        }
                    };
                    Upstream {
                        name: u.name.clone(),
                        cfg: u.clone(),
                        kind,
                        shared: tokio::sync::Mutex::new(None),
                        timeout,
                        hub_fed: std::sync::atomic::AtomicBool::new(false),
                        breaker: Arc::new(portcullis_contain::breaker::Breaker::new(
                            cfg.containment.breaker,
                        )),
                        seen_init: StdMutex::new(None),
                        relist: Default::default(),
                    }
                })
                .collect();
            let inspection = crate::inspection::Inspection::new(&cfg.inspection, &cfg.segments);
            let names: Vec<String> = cfg.upstreams.iter().map(|u| u.name.clone()).collect();
            let defs = crate::defs::Defs::new(&cfg.inspection, &names);
            Gateway {
                inspection,
                cfg,
                upstreams,
                naming,
                next_id: AtomicU64::new(1),
                routes: StdMutex::new(Routes::default()),
                sessions: Sessions::default(),
                suspended: StdMutex::new(HashMap::new()),
                hub: tokio::sync::broadcast::channel(1024).0,
                pep,
                tool_meta: StdMutex::new(HashMap::new()),
                prompt_seen: StdMutex::new(Default::default()),
                approvals: StdMutex::new(HashMap::new()),
                defs,
                stateless_facts: StdMutex::new(HashMap::new()),
                draining: std::sync::atomic::AtomicBool::new(false),
                active: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            }
        })
    }

    /// Counts a client call as in flight until the guard drops.
    pub fn begin_call(&self) -> ActiveCall {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveCall(self.active.clone())
    }

    /// Client calls in flight now.
    pub fn active_calls(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Starts draining: readiness fails from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether the gateway is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Waits until no client call is in flight, or `max` has passed;
    /// returns how many were still running.
    pub async fn drained(&self, max: Duration) -> usize {
        let end = Instant::now() + max;
        while self.active_calls() > 0 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.active_calls()
    }

    /// Names of the configured upstreams, in order.
    pub fn upstream_names(&self) -> Vec<String> {
        self.upstreams.iter().map(|u| u.name.clone()).collect()
    }

    /// Seconds until `upstream`'s open breaker lets a probe through; `None`
    /// when it would let a call through now.
    fn circuit_open(&self, upstream: &str) -> Option<u64> {
        let u = self.upstreams.iter().find(|u| u.name == upstream)?;
        let wait = u.breaker.refusing_for(Instant::now())?;
        Some(wait.as_secs_f64().ceil().max(1.0) as u64)
    }

    /// Each upstream's circuit breaker, by name.
    pub fn breakers(&self) -> Vec<(String, Arc<portcullis_contain::breaker::Breaker>)> {
        self.upstreams
            .iter()
            .map(|u| (u.name.clone(), u.breaker.clone()))
            .collect()
    }

    /// Number of upstreams.
    pub fn upstream_count(&self) -> usize {
        self.upstreams.len()
    }

    pub(crate) fn next_uid(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn upstream(&self, idx: usize) -> Result<&Upstream, UpstreamError> {
        self.upstreams
            .get(idx)
            .ok_or_else(|| UpstreamError::Unavailable(idx.to_string(), "no such upstream".into()))
    }

    /// Stops every stdio child.
    pub fn shutdown(&self) {
        for u in &self.upstreams {
            if let UpstreamKind::Stdio(s) = &u.kind {
                s.shutdown();
            }
        }
    }

    /// Whether an HTTP upstream speaks 2026-07-28 (probed once).
    async fn modern(&self, u: &Upstream) -> Result<Option<Arc<Value>>, UpstreamError> {
        let UpstreamKind::Http { target, modern } = &u.kind else {
            return Ok(None);
        };
        let probe = async {
            match u.cfg.protocol {
                UpstreamProtocol::Handshake => Ok(None),
                UpstreamProtocol::Auto | UpstreamProtocol::Stateless => {
                    let d = StatelessHttp::new(target.clone())
                        .discover(self.next_uid())
                        .await?;
                    if d.is_none() && u.cfg.protocol == UpstreamProtocol::Stateless {
                        return Err(UpstreamError::Protocol(
                            u.name.clone(),
                            "does not speak 2026-07-28".into(),
                        ));
                    }
                    Ok(d.map(Arc::new))
                }
            }
        };
        let r = modern.get_or_try_init(|| probe).await.cloned()?;
        tracing::debug!(upstream = %u.name, modern = r.is_some(), "upstream revision probed");
        Ok(r)
    }

    /// Opens a new connection to upstream `idx` on behalf of `caps`/`info`.
    async fn open(
        &self,
        idx: usize,
        revision: Revision,
        caps: &Value,
        info: &Value,
    ) -> Result<Conn, UpstreamError> {
        let u = self.upstream(idx)?;
        match &u.kind {
            UpstreamKind::Stdio(s) => {
                s.ready(u.timeout).await?;
                Ok(Conn::Stdio(s.clone()))
            }
            UpstreamKind::Http { target, .. } => {
                if let Some(d) = self.modern(u).await? {
                    return Ok(Conn::Stateless(StatelessHttp::new(target.clone()), d));
                }
                let v = if revision.is_handshake() {
                    revision
                } else {
                    Revision::LATEST_HANDSHAKE
                };
                let params = json!({"protocolVersion": v.as_str(), "capabilities": caps, "clientInfo": info});
                let s = tokio::time::timeout(
                    u.timeout,
                    HttpSession::open(target.clone(), params, self.next_uid(), &u.seen_init),
                )
                .await
                .map_err(|_| {
                    UpstreamError::Timeout(u.name.clone(), u.timeout.as_millis() as u64)
                })??;
                Ok(Conn::Session(Arc::new(s)))
            }
        }
    }

    /// The connection `client` uses for upstream `idx`, opened on first use.
    pub async fn conn(
        self: &Arc<Self>,
        client: &Arc<Client>,
        idx: usize,
    ) -> Result<Conn, UpstreamError> {
        if client.is_stateless() {
            let u = self.upstream(idx)?;
            let mut slot = u.shared.lock().await;
            if let Some(c) = slot.as_ref() {
                return Ok(c.clone());
            }
            // The gateway holds this session for every 2026-07-28 client; it
            // declares what it can bridge into input-required results.
            let caps = json!({"elicitation": {"form": {}}, "sampling": {}, "roots": {}});
            let c = self
                .open(
                    idx,
                    Revision::LATEST_HANDSHAKE,
                    &caps,
                    &protocol::server_info(),
                )
                .await?;
            *slot = Some(c.clone());
            return Ok(c);
        }
        let slot = client.conns.get(idx).ok_or_else(|| {
            UpstreamError::Unavailable(idx.to_string(), "no such upstream".into())
        })?;
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self
            .open(idx, client.revision, &client.caps, &client.info)
            .await?;
        *slot = Some(c.clone());
        if client.listening.load(Ordering::Relaxed) {
            self.listen_one(client, idx, &c);
        }
        Ok(c)
    }

    async fn drop_conn(&self, client: &Arc<Client>, idx: usize) {
        if client.is_stateless() {
            if let Ok(u) = self.upstream(idx) {
                *u.shared.lock().await = None;
            }
        } else if let Some(slot) = client.conns.get(idx) {
            *slot.lock().await = None;
        }
    }

    /// Opens connections to every upstream for a new handshake session and
    /// returns the `initialize` result the client gets.
    pub async fn initialize(self: &Arc<Self>, client: &Arc<Client>) -> Value {
        let opens = (0..self.upstreams.len()).map(|idx| {
            let me = self.clone();
            let c = client.clone();
            async move { (idx, me.conn(&c, idx).await) }
        });
        let results = futures_util::future::join_all(opens).await;
        let mut caps = Vec::new();
        let mut instructions = Vec::new();
        for (idx, r) in results {
            match r {
                Ok(c) => {
                    caps.push(c.capabilities());
                    if let Some(i) = c.describe().get("instructions").and_then(Value::as_str) {
                        instructions.push(format!(
                            "[{}] {i}",
                            self.upstreams
                                .get(idx)
                                .map(|u| u.name.as_str())
                                .unwrap_or("")
                        ));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "upstream left out of the session"),
            }
        }
        let mut out = json!({
            "protocolVersion": client.revision.as_str(),
            "capabilities": protocol::merge_capabilities(caps.iter()),
            "serverInfo": protocol::server_info(),
        });
        if !instructions.is_empty() {
            protocol::set_path(
                &mut out,
                &["instructions"],
                Value::from(instructions.join("\n")),
            );
        }
        out
    }

    /// Answers `server/discover` for a 2026-07-28 client.
    async fn discover(self: &Arc<Self>, client: &Arc<Client>) -> Value {
        let opens = (0..self.upstreams.len()).map(|idx| {
            let me = self.clone();
            let c = client.clone();
            async move { me.conn(&c, idx).await }
        });
        let caps: Vec<Value> = futures_util::future::join_all(opens)
            .await
            .into_iter()
            .filter_map(|r| {
                r.map_err(|e| tracing::warn!(error = %e, "upstream left out of discover"))
                    .ok()
            })
            .map(|c| c.capabilities())
            .collect();
        json!({
            "supportedVersions": Revision::all_strs(),
            "capabilities": protocol::merge_capabilities(caps.iter()),
            "_meta": {protocol::META_SERVER_INFO: protocol::server_info()},
        })
    }

    /// Handles one client request; sends interim messages and then the
    /// final response (with the client's id) to `out`.
    pub async fn dispatch(
        self: &Arc<Self>,
        client: &Arc<Client>,
        msg: Message,
        forwarded: &[(String, String)],
        out: &mpsc::Sender<Message>,
    ) {
        self.dispatch_traced(client, msg, forwarded, None, out)
            .await
    }

    /// As [`Gateway::dispatch`], continuing the caller's W3C trace
    /// (`traceparent`) when it sent one. Every message to `out` waits until
    /// the request's audit records are durable.
    pub async fn dispatch_traced(
        self: &Arc<Self>,
        client: &Arc<Client>,
        msg: Message,
        forwarded: &[(String, String)],
        traceparent: Option<&str>,
        out: &mpsc::Sender<Message>,
    ) {
        #[cfg_attr(
            not(feature = "otel"),
            expect(unused_mut, reason = "set by the otel span")
        )]
        let mut trace = TraceContext::from_header(traceparent);
        #[cfg(feature = "otel")]
        let span = trace.otel_span(msg.method().unwrap_or_default());
        let ctx = RequestCtx::new(trace);
        let out = Out::new(out, &self.pep.monitor);
        let fut = monitor::in_request(ctx, self.handle(client, msg, forwarded, &out));
        #[cfg(feature = "otel")]
        let fut = tracing::Instrument::instrument(fut, span);
        fut.await
    }

    async fn handle(
        self: &Arc<Self>,
        client: &Arc<Client>,
        msg: Message,
        forwarded: &[(String, String)],
        out: &Out<'_>,
    ) {
        let id = msg.id_owned();
        let method = msg.method().unwrap_or_default().to_owned();
        let params = msg.params();
        let reply = |result: Value| {
            let mut r = result;
            fit_result(&mut r, &method, client.revision);
            Message::response(id.clone().unwrap_or_else(|| raw_u64(0)), r)
        };
        if !params.is_null() && !params.is_object() {
            let _ = out
                .send(err(id, codes::INVALID_PARAMS, "params must be an object"))
                .await;
            return;
        }
        let stateless = client.is_stateless();
        // Containment first: a deny-all caller gets nothing, not even a ping.
        let contain = &self.pep.contain;
        if contain.verdict(client).mode() == Some(portcullis_contain::Mode::DenyAll) {
            let res = portcullis_policy::ResourceFacts::server(GATEWAY_SERVER);
            let action = portcullis_policy::Action::from_method(&method, false);
            if let Some((mode, _)) = self.pep.contained(client, &action, &method, &res) {
                let _ = out.send(quarantined(id, mode)).await;
                return;
            }
        }
        let Some(_slot) = contain.slot(client) else {
            let _ = out
                .send(rate_limited(id, "concurrency", Duration::from_secs(1)))
                .await;
            return;
        };
        if matches!(
            method.as_str(),
            "ping" | "server/discover" | "subscriptions/listen" | "logging/setLevel"
        ) {
            // Answered by the gateway itself: decided on the gateway as the resource.
            let res = portcullis_policy::ResourceFacts::server(GATEWAY_SERVER);
            let d = self.pep.decide(
                client,
                portcullis_policy::Action::from_method(&method, false),
                &method,
                &res,
                None,
            );
            if !d.allow {
                self.refuse(
                    Refusal::Denied(d.reason),
                    id.clone(),
                    err(id, codes::POLICY_DENIED, "denied"),
                    out,
                )
                .await;
                return;
            }
        }
        match method.as_str() {
            "ping" if !stateless => {
                let _ = out.send(reply(json!({}))).await;
            }
            "server/discover" if stateless => {
                let d = self.discover(client).await;
                let _ = out.send(reply(d)).await;
            }
            "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list" => {
                let r = self.list(client, &method, &params).await;
                let _ = out
                    .send(match r {
                        Ok(v) => reply(v),
                        Err((code, m)) => err(id, code, &m),
                    })
                    .await;
            }
            "tools/call" | "prompts/get" => {
                let name = params
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let is_tool = method == "tools/call";
                let what = if is_tool { "tool" } else { "prompt" };
                let unknown = err(
                    id.clone(),
                    codes::INVALID_PARAMS,
                    &format!("Unknown {what}: {name}"),
                );
                match self.naming.inward(name) {
                    Some((idx, orig)) if !self.offered(idx, is_tool, &orig) => {
                        // Changed and not approved, poisoned or shadowing
                        // (and hidden by config): as if it did not exist.
                        let _ = out.send(unknown).await;
                    }
                    Some((idx, orig)) => {
                        let server = self.server_name(idx);
                        let (kind, action, ann) = if is_tool {
                            // A tool no upstream lists does not exist: answered
                            // here, exactly as a hidden one is (no oracle).
                            let ann = match self.tool_annotations(client, idx, name).await {
                                Ok(Some(a)) => a,
                                Ok(None) => {
                                    let _ = out.send(unknown).await;
                                    return;
                                }
                                Err(e) => {
                                    let _ = out.send(e.to_message(id)).await;
                                    return;
                                }
                            };
                            (ItemKind::Tool, portcullis_policy::Action::CallTool, ann)
                        } else {
                            // Likewise a prompt no upstream lists.
                            match self.prompt_known(client, idx, name).await {
                                Ok(true) => {}
                                Ok(false) => {
                                    let _ = out.send(unknown).await;
                                    return;
                                }
                                Err(e) => {
                                    let _ = out.send(e.to_message(id)).await;
                                    return;
                                }
                            }
                            (
                                ItemKind::Prompt,
                                portcullis_policy::Action::GetPrompt,
                                Default::default(),
                            )
                        };
                        if !self.offered(idx, is_tool, &orig) {
                            // Learning the lists may have found it poisoned
                            // or shadowing: as if it did not exist.
                            let _ = out.send(unknown).await;
                            return;
                        }
                        let res = self.pep.resource(kind, &server, name, ann);
                        match self
                            .authorize(client, action, &method, &res, &params, id.clone(), out)
                            .await
                        {
                            Ok(d) => {
                                let rules = self
                                    .inspection
                                    .rules(&res.segments, Asks::of(&d.obligations));
                                let mut p = strip_input_if_approval(&params);
                                protocol::set_path(&mut p, &["name"], Value::from(orig));
                                if is_tool
                                    && !self
                                        .inspect_arguments(
                                            client,
                                            &rules,
                                            name,
                                            &mut p,
                                            id.clone(),
                                            out,
                                        )
                                        .await
                                {
                                    return;
                                }
                                self.note_read(client, &res.labels).await;
                                self.forward(client, idx, msg, &method, p, forwarded, &rules, out)
                                    .await;
                            }
                            Err(r) => self.refuse(r, id, unknown, out).await,
                        }
                    }
                    None => {
                        let _ = out.send(unknown).await;
                    }
                }
            }
            "resources/read" | "resources/subscribe" | "resources/unsubscribe"
                if !(stateless && method != "resources/read") =>
            {
                let uri = params
                    .get("uri")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let not_found = Message::error(
                    id.clone(),
                    codes::RESOURCE_NOT_FOUND,
                    "Resource not found",
                    Some(json!({"uri": uri})),
                );
                let routed = match self.route_uri(client, &uri).await {
                    Some(idx)
                        if self
                            .defs
                            .hidden(&self.server_name(idx), ItemKind::Resource, &uri) =>
                    {
                        // Its definition is poisoned (and hidden by config).
                        let _ = out.send(not_found).await;
                        return;
                    }
                    Some(idx) => {
                        let res = self.pep.resource(
                            ItemKind::Resource,
                            &self.server_name(idx),
                            &uri,
                            Default::default(),
                        );
                        let action = if method == "resources/read" {
                            portcullis_policy::Action::ReadResource
                        } else {
                            portcullis_policy::Action::Subscribe
                        };
                        match self
                            .authorize(client, action, &method, &res, &params, id.clone(), out)
                            .await
                        {
                            Ok(d) => {
                                if method == "resources/read" {
                                    self.note_read(client, &res.labels).await;
                                }
                                Some((
                                    idx,
                                    self.inspection
                                        .rules(&res.segments, Asks::of(&d.obligations)),
                                ))
                            }
                            Err(r) => {
                                self.refuse(r, id, not_found, out).await;
                                return;
                            }
                        }
                    }
                    None => None,
                };
                match routed {
                    Some((idx, rules)) => {
                        if method == "resources/subscribe" {
                            lock(&client.subscriptions).insert(uri.clone());
                        } else if method == "resources/unsubscribe" {
                            lock(&client.subscriptions).remove(&uri);
                        }
                        let modern =
                            matches!(self.conn(client, idx).await, Ok(Conn::Stateless(..)));
                        if modern && method != "resources/read" {
                            // 2026-07-28 has no subscribe: hold a listen stream for it.
                            self.subscribe_via_listen(
                                client,
                                idx,
                                &uri,
                                method == "resources/subscribe",
                            )
                            .await;
                            let _ = out.send(reply(json!({}))).await;
                        } else {
                            self.forward(client, idx, msg, &method, params, forwarded, &rules, out)
                                .await;
                        }
                    }
                    None => {
                        let _ = out
                            .send(Message::error(
                                id,
                                codes::RESOURCE_NOT_FOUND,
                                "Resource not found",
                                Some(json!({"uri": uri})),
                            ))
                            .await;
                    }
                }
            }
            "completion/complete" => {
                let r = params.get("ref").cloned().unwrap_or(Value::Null);
                let target = match r.get("type").and_then(Value::as_str) {
                    Some("ref/prompt") => r
                        .get("name")
                        .and_then(Value::as_str)
                        .and_then(|n| self.naming.inward(n))
                        // A hidden prompt is no completion target either.
                        .filter(|(idx, orig)| self.offered(*idx, false, orig))
                        .map(|(idx, orig)| (idx, Some(orig))),
                    Some("ref/resource") => {
                        let uri = r
                            .get("uri")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned();
                        self.route_uri(client, &uri)
                            .await
                            .filter(|idx| {
                                !self
                                    .defs
                                    .hidden(&self.server_name(*idx), ItemKind::Resource, &uri)
                            })
                            .map(|idx| (idx, None))
                    }
                    _ => None,
                };
                match target {
                    Some((idx, orig)) => {
                        let (kind, rid) = match (&orig, r.get("name"), r.get("uri")) {
                            (Some(_), Some(n), _) => {
                                (ItemKind::Prompt, n.as_str().unwrap_or_default().to_owned())
                            }
                            (_, _, Some(u)) => (
                                ItemKind::Resource,
                                u.as_str().unwrap_or_default().to_owned(),
                            ),
                            _ => (ItemKind::Server, self.server_name(idx)),
                        };
                        let res = self.pep.resource(
                            kind,
                            &self.server_name(idx),
                            &rid,
                            Default::default(),
                        );
                        let unknown = err(
                            id.clone(),
                            codes::INVALID_PARAMS,
                            "Unknown completion reference",
                        );
                        let rules = match self
                            .authorize(
                                client,
                                portcullis_policy::Action::Complete,
                                &method,
                                &res,
                                &params,
                                id.clone(),
                                out,
                            )
                            .await
                        {
                            Ok(d) => self
                                .inspection
                                .rules(&res.segments, Asks::of(&d.obligations)),
                            Err(r) => {
                                self.refuse(r, id, unknown, out).await;
                                return;
                            }
                        };
                        let mut p = params.clone();
                        if let Some(o) = orig {
                            protocol::set_path(&mut p, &["ref", "name"], Value::from(o));
                        }
                        self.forward(client, idx, msg, &method, p, forwarded, &rules, out)
                            .await;
                    }
                    None => {
                        let _ = out
                            .send(err(
                                id,
                                codes::INVALID_PARAMS,
                                "Unknown completion reference",
                            ))
                            .await;
                    }
                }
            }
            "subscriptions/listen" if stateless => {
                self.listen(client, id, &params, out).await;
            }
            "logging/setLevel" if !stateless => {
                *lock(&client.log_level) = params.get("level").cloned();
                for idx in 0..self.upstreams.len() {
                    let Ok(conn) = self.conn(client, idx).await else {
                        continue;
                    };
                    // 2026-07-28 upstreams get the level on every request instead.
                    if !conn.revision().is_handshake() || !has_cap(&conn.capabilities(), "logging")
                    {
                        continue;
                    }
                    let m =
                        Message::request(raw_u64(self.next_uid()), &method, Some(params.clone()));
                    let (tx, _rx) = mpsc::channel(8);
                    let t = self
                        .upstreams
                        .get(idx)
                        .map(|u| u.timeout)
                        .unwrap_or(Duration::from_secs(30));
                    if let Err(e) = conn.call(&m, &[], &tx, t).await {
                        tracing::warn!(error = %e, "logging/setLevel not applied upstream");
                    }
                }
                let _ = out.send(reply(json!({}))).await;
            }
            _ => {
                let _ = out
                    .send(Message::error(
                        id,
                        codes::METHOD_NOT_FOUND,
                        "Method not found",
                        Some(Value::from(method.as_str())),
                    ))
                    .await;
            }
        }
    }

    /// The shared policy facts of a 2026-07-28 identity (its taint outlives
    /// each self-contained request).
    pub fn identity_facts(&self, key: &str) -> Arc<crate::session::Facts> {
        self.identity_facts_entry(key).0
    }

    /// The identity's facts, and whether they were made just now.
    pub(crate) fn identity_facts_entry(&self, key: &str) -> (Arc<crate::session::Facts>, bool) {
        let mut m = lock(&self.stateless_facts);
        if let Some(f) = m.get(key) {
            return (f.clone(), false);
        }
        if m.len() > 100_000 {
            // Bounded: forget the oldest-looking half rather than grow without end.
            let drop: Vec<String> = m.keys().take(50_000).cloned().collect();
            for k in drop {
                m.remove(&k);
            }
        }
        let f = Arc::new(crate::session::Facts::default());
        m.insert(key.to_owned(), f.clone());
        (f, true)
    }

    /// The facts already held here for an identity (none made).
    pub(crate) fn identity_facts_held(&self, key: &str) -> Option<Arc<crate::session::Facts>> {
        lock(&self.stateless_facts).get(key).cloned()
    }

    /// Counts an allowed call and records the labels it reads (taint).
    async fn note_read(&self, client: &Client, labels: &[String]) {
        client.facts().calls.fetch_add(1, Ordering::Relaxed);
        self.note_labels(client, labels).await;
    }

    /// Adds labels to what the session (or 2026-07-28 identity) has read —
    /// its taint — and, with a shared store, to what every replica knows
    /// before the data goes on.
    async fn note_labels(&self, client: &Client, labels: &[String]) {
        let f = client.facts();
        if labels.is_empty() {
            return;
        }
        let new = {
            let read = lock(&f.labels_read);
            labels.iter().any(|l| !read.contains(l))
        };
        f.read(labels);
        if new {
            self.store_taint(client).await;
        }
    }

    /// DLP on a call's arguments before they leave: redacted in place,
    /// flagged, or — for a `block` class — the call refused here (`false`,
    /// answered) so nothing reaches the upstream.
    async fn inspect_arguments(
        &self,
        client: &Arc<Client>,
        rules: &Rules,
        tool: &str,
        params: &mut Value,
        id: Option<Box<RawValue>>,
        out: &Out<'_>,
    ) -> bool {
        if rules.arguments.actions.is_empty() {
            return true;
        }
        let Some(args) = params.get_mut("arguments") else {
            return true;
        };
        let began = Instant::now();
        let found = inspection::inspect_arguments(rules, args);
        inspection::record_dlp(&self.pep, client, Some(tool), "arguments", &found);
        self.pep
            .monitor
            .metrics
            .stage(portcullis_monitor::metrics::Stage::Inspect, began.elapsed());
        if found.blocked {
            let mut classes: Vec<&str> = found
                .findings
                .iter()
                .filter(|f| f.action == portcullis_inspect::dlp::Action::Block)
                .map(|f| f.class)
                .collect();
            classes.sort_unstable();
            classes.dedup();
            let _ = out
                .send(Message::error(
                    id,
                    codes::POLICY_DENIED,
                    "Denied by policy: the arguments carry sensitive data (DLP)",
                    Some(json!({"reason": "dlp", "classes": classes})),
                ))
                .await;
            return false;
        }
        true
    }

    /// Inspects a final result in place; `Err` when it must be withheld.
    async fn inspect_result(
        &self,
        client: &Client,
        rules: &Rules,
        target: Option<&str>,
        m: &mut Message,
    ) -> Result<(), inspection::Withheld> {
        if !rules.inspects_results() {
            return Ok(());
        }
        let began = Instant::now();
        let mut r = m.result();
        let rep = inspection::inspect_result(rules, &mut r);
        inspection::record_dlp(&self.pep, client, target, "result", &rep.dlp);
        if inspection::record_injections(
            &self.pep,
            client,
            target,
            rules.injection,
            &rep.injections,
        ) {
            self.note_labels(client, &[inspection::INJECTED_LABEL.to_owned()])
                .await;
        }
        if rep.changed() {
            m.set_result(&r);
        }
        self.pep
            .monitor
            .metrics
            .stage(portcullis_monitor::metrics::Stage::Inspect, began.elapsed());
        match rep.withheld {
            Some(w) => Err(w),
            None => Ok(()),
        }
    }

    /// DLP on the params of a message from a server that is not a result
    /// (progress, log lines, server→client requests): `false` when it must
    /// not reach the client (a `block` class matched).
    fn inspect_notification(
        &self,
        client: &Client,
        rules: &Rules,
        target: Option<&str>,
        m: &mut Message,
    ) -> bool {
        if rules.results.actions.is_empty() {
            return true;
        }
        let mut p = m.params();
        let (keep, found) = inspection::inspect_notification(rules, &mut p);
        if found.findings.is_empty() {
            return true;
        }
        inspection::record_dlp(&self.pep, client, target, "notification", &found);
        if keep && found.redactions > 0 {
            m.set_params(&p);
        }
        keep
    }

    /// What a forwarded call is about, as the client names it: the tool or
    /// prompt's client-facing name, else the resource URI.
    fn target_name(&self, idx: usize, params: &Value) -> Option<String> {
        match params.get("name").and_then(Value::as_str) {
            Some(n) => Some(self.naming.outward(idx, n)),
            None => params.get("uri").and_then(Value::as_str).map(str::to_owned),
        }
    }

    /// Whether a tool (or prompt) of upstream `idx` may be called now: not
    /// a changed definition waiting for approval, not hidden by the
    /// poisoning or shadowing verdicts.
    fn offered(&self, idx: usize, is_tool: bool, orig: &str) -> bool {
        let server = self.server_name(idx);
        let kind = if is_tool {
            ItemKind::Tool
        } else {
            ItemKind::Prompt
        };
        (!is_tool || self.pep.pins.usable(&server, orig)) && !self.defs.hidden(&server, kind, orig)
    }

    fn server_name(&self, idx: usize) -> String {
        self.upstreams
            .get(idx)
            .map(|u| u.name.clone())
            .unwrap_or_default()
    }

    /// Decides a request on `res`: first whether the principal may see it at
    /// all (without arguments — the same question list filtering asks), then
    /// the call itself; then obligations that must run before it
    /// (approval). `Ok` carries the decision whose obligations still apply.
    #[expect(clippy::too_many_arguments, reason = "one request's whole context")]
    async fn authorize(
        self: &Arc<Self>,
        client: &Arc<Client>,
        action: portcullis_policy::Action,
        method: &str,
        res: &portcullis_policy::ResourceFacts,
        params: &Value,
        id: Option<Box<RawValue>>,
        out: &Out<'_>,
    ) -> Result<portcullis_policy::Decision, Refusal> {
        if let Some((mode, _)) = self.pep.contained(client, &action, method, res) {
            return Err(Refusal::Quarantined(mode));
        }
        if !self.pep.visible(client, action.clone(), method, res) {
            // Record the refusal as a decision (visibility answers are cached
            // quietly; a refused request is not).
            self.pep.decide(client, action, method, res, None);
            return Err(Refusal::Hidden);
        }
        let args = params.get("arguments").filter(|a| !a.is_null());
        let is_call = action == portcullis_policy::Action::CallTool;
        if is_call && self.cfg.store.taint_reads == crate::contain::TaintReads::Strict {
            self.refresh_taint(client).await;
        }
        // The record stays open until the rate limits have had their say, so
        // a call they refuse is audited as refused.
        let pending = self.pep.decide_pending(client, action, method, res, args);
        if !pending.decision().allow {
            return Err(Refusal::Denied(pending.finish().reason));
        }
        let rate_class = pending.decision().obligations.rate_class.clone();
        let class = match &rate_class {
            None => None,
            Some(name) => match self.cfg.policy.rate_classes.get(name) {
                Some(rc) => Some((
                    name.as_str(),
                    portcullis_contain::rate::Rate {
                        per_minute: rc.per_minute,
                        burst: rc.burst,
                    },
                )),
                None => {
                    // An unknown class is a policy mistake: refuse rather than run unlimited.
                    tracing::warn!(class = %name, "rate class named by policy is not configured; denying");
                    let source = format!("rate:class:{name}");
                    pending.refuse(format!("rate class {name} is not configured"), &source);
                    let _ = out
                        .send(rate_limited(
                            id,
                            &format!("class:{name}"),
                            Duration::from_secs(60),
                        ))
                        .await;
                    return Err(Refusal::Answered);
                }
            },
        };
        let tool = is_call.then_some(res.id.as_str());
        if let Err(crate::contain::Stop::Rate { limit, wait }) = self
            .pep
            .contain
            .rate(client, tool, &res.segments, class)
            .await
        {
            tracing::info!(identity = %client.owner, limit = %limit, wait_ms = wait.as_millis() as u64, "rate limited");
            self.pep.monitor.metrics.containment("rate_limited");
            pending.refuse(format!("rate limited ({limit})"), &format!("rate:{limit}"));
            let _ = out.send(rate_limited(id, &limit, wait)).await;
            return Err(Refusal::Answered);
        }
        // An open breaker refuses here, so the record says so; a breaker that
        // opens between this check and the forward still fails fast there.
        if let Some(secs) = self.circuit_open(&res.server) {
            pending.refuse(
                format!("upstream {} is failing and its circuit is open", res.server),
                &format!("breaker:{}", res.server),
            );
            let err = crate::upstream::UpstreamError::CircuitOpen(res.server.clone(), secs);
            let _ = out.send(err.to_message(id)).await;
            return Err(Refusal::Answered);
        }
        let d = pending.finish();
        if let Some(message) = d.obligations.require_approval.clone() {
            self.approve(client, method, res, params, &message, id, out)
                .await?;
        }
        Ok(d)
    }

    /// The `require-approval` obligation: ask the human through an
    /// elicitation request before the call proceeds. Deny if the client
    /// cannot elicit, declines, or does not answer in time.
    #[expect(clippy::too_many_arguments, reason = "one request's whole context")]
    async fn approve(
        self: &Arc<Self>,
        client: &Arc<Client>,
        method: &str,
        res: &portcullis_policy::ResourceFacts,
        params: &Value,
        message: &str,
        id: Option<Box<RawValue>>,
        out: &Out<'_>,
    ) -> Result<(), Refusal> {
        let can_elicit = has_cap(&client.caps, "elicitation");
        let question = json!({
            "message": format!("Approval required: {message}\nTool: {}\nArguments: {}", res.id, params.get("arguments").cloned().unwrap_or(Value::Null)),
            "requestedSchema": {"type": "object", "properties": {"approve": {"type": "boolean", "title": "Approve this call"}}, "required": ["approve"]},
        });
        let accepted = |answer: &Value| {
            answer.get("action").and_then(Value::as_str) == Some("accept")
                && answer
                    .get("content")
                    .and_then(|c| c.get("approve"))
                    .and_then(Value::as_bool)
                    == Some(true)
        };
        if client.is_stateless() {
            // A retry carrying our approval state and the human's answer.
            let binding = binding_of(method, params);
            if let Some(token) = params
                .get("requestState")
                .and_then(Value::as_str)
                .and_then(|s| s.strip_prefix(APPROVAL_PREFIX))
            {
                let pending = lock(&self.approvals).remove(token);
                let valid = pending.is_some_and(|(b, exp)| {
                    b == binding_of(method, &strip_input(params)) && exp > Instant::now()
                });
                let answer = params
                    .get("inputResponses")
                    .and_then(|r| r.get(APPROVAL_KEY))
                    .cloned()
                    .unwrap_or(Value::Null);
                return if valid && accepted(&answer) {
                    Ok(())
                } else {
                    Err(Refusal::Denied("the call was not approved".into()))
                };
            }
            if !can_elicit {
                return Err(Refusal::Denied(
                    "this call needs approval and the client cannot be asked".into(),
                ));
            }
            let token = {
                let mut b = [0u8; 16];
                rand::rngs::OsRng
                    .try_fill_bytes(&mut b)
                    .unwrap_or_else(|_| rand::rng().fill_bytes(&mut b));
                hex::encode(b)
            };
            {
                let mut a = lock(&self.approvals);
                a.retain(|_, (_, exp)| *exp > Instant::now());
                a.insert(token.clone(), (binding, Instant::now() + SUSPEND_TTL));
            }
            let result = json!({
                "resultType": "input_required",
                "inputRequests": {APPROVAL_KEY: {"method": "elicitation/create", "params": question}},
                "requestState": format!("{APPROVAL_PREFIX}{token}"),
            });
            let _ = out
                .send(Message::response(id.unwrap_or_else(|| raw_u64(0)), result))
                .await;
            return Err(Refusal::Answered);
        }
        if !can_elicit {
            return Err(Refusal::Denied(
                "this call needs approval and the client cannot be asked".into(),
            ));
        }
        let (tx, rx) = oneshot::channel();
        let gid = client.register_server_request(ServerRequest::Local(tx));
        if out
            .send(Message::request(
                raw_u64(gid),
                "elicitation/create",
                Some(question),
            ))
            .await
            .is_err()
        {
            return Err(Refusal::Denied("the client went away".into()));
        }
        match tokio::time::timeout(SUSPEND_TTL, rx).await {
            Ok(Ok(answer)) if answer.kind() == Kind::Response && accepted(&answer.result()) => {
                Ok(())
            }
            Ok(Ok(_)) => Err(Refusal::Denied("the call was not approved".into())),
            _ => Err(Refusal::Denied("no approval arrived in time".into())),
        }
    }

    /// Answers a refusal: hidden targets exactly like missing ones.
    async fn refuse(
        &self,
        r: Refusal,
        id: Option<Box<RawValue>>,
        not_found: Message,
        out: &Out<'_>,
    ) {
        let m = match r {
            Refusal::Answered => return,
            Refusal::Hidden => not_found,
            Refusal::Denied(reason) => Message::error(
                id,
                codes::POLICY_DENIED,
                &format!("Denied by policy: {reason}"),
                None,
            ),
            Refusal::Quarantined(mode) => quarantined(id, mode),
        };
        let _ = out.send(m).await;
    }

    /// Handles a notification from a handshake-era client.
    pub async fn client_notification(self: &Arc<Self>, client: &Arc<Client>, msg: Message) {
        match msg.method() {
            Some("notifications/cancelled") => {
                let params = msg.params();
                let Some(rid) = params.get("requestId") else {
                    return;
                };
                let key = rid.to_string();
                let Some(f) = lock(&client.inflight).get(&key).copied() else {
                    return;
                };
                let mut p = params.clone();
                protocol::set_path(&mut p, &["requestId"], Value::from(f.uid));
                if let Ok(conn) = self.conn(client, f.idx).await {
                    let t = self
                        .upstreams
                        .get(f.idx)
                        .map(|u| u.timeout)
                        .unwrap_or_default();
                    let _ = conn
                        .notify(
                            &Message::notification("notifications/cancelled", Some(p)),
                            t,
                        )
                        .await;
                }
            }
            Some("notifications/roots/list_changed") => {
                for idx in 0..self.upstreams.len() {
                    let slot = client.conns.get(idx);
                    let conn = match slot {
                        Some(s) => s.lock().await.clone(),
                        None => None,
                    };
                    if let Some(conn) = conn {
                        let _ = conn.notify(&msg, Duration::from_secs(5)).await;
                    }
                }
            }
            _ => {}
        }
    }

    /// Handles a client's response to a server→client request.
    pub async fn client_response(self: &Arc<Self>, client: &Arc<Client>, mut msg: Message) {
        let gid = msg.id().and_then(|i| i.get().parse::<u64>().ok());
        let Some(r) = gid.and_then(|g| lock(&client.server_requests).remove(&g)) else {
            tracing::debug!("client answered a request nobody is waiting for");
            return;
        };
        match r {
            ServerRequest::Local(tx) => {
                let _ = tx.send(msg);
            }
            ServerRequest::Upstream { idx, their_id } => {
                msg.set_id(their_id);
                if let Ok(conn) = self.conn(client, idx).await {
                    let t = self
                        .upstreams
                        .get(idx)
                        .map(|u| u.timeout)
                        .unwrap_or_default();
                    if let Err(e) = conn.notify(&msg, t).await {
                        tracing::warn!(error = %e, "could not deliver the client's answer upstream");
                    }
                }
            }
        }
    }

    pub(crate) async fn route_uri(
        self: &Arc<Self>,
        client: &Arc<Client>,
        uri: &str,
    ) -> Option<usize> {
        if let Some(i) = self.lookup_uri(uri) {
            return Some(i);
        }
        // Unknown: refresh the tables from every upstream, then try again.
        for m in ["resources/list", "resources/templates/list"] {
            let mut cursor = Value::Null;
            for _ in 0..20 {
                let p = if cursor.is_null() {
                    json!({})
                } else {
                    json!({"cursor": cursor})
                };
                match self.list(client, m, &p).await {
                    Ok(v) => {
                        cursor = v.get("nextCursor").cloned().unwrap_or(Value::Null);
                        if cursor.is_null() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        if let Some(i) = self.lookup_uri(uri) {
            return Some(i);
        }
        // A single upstream that serves resources owns every URI.
        let mut with = Vec::new();
        for idx in 0..self.upstreams.len() {
            if let Ok(c) = self.conn(client, idx).await {
                if has_cap(&c.capabilities(), "resources") {
                    with.push(idx);
                }
            }
        }
        match with.as_slice() {
            [only] => Some(*only),
            _ => None,
        }
    }

    fn lookup_uri(&self, uri: &str) -> Option<usize> {
        let r = lock(&self.routes);
        if let Some(i) = r.uris.get(uri) {
            return Some(*i);
        }
        r.templates
            .iter()
            .filter(|(prefix, _)| !prefix.is_empty() && uri.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, i)| *i)
    }

    /// One page of an aggregated list.
    async fn list(
        self: &Arc<Self>,
        client: &Arc<Client>,
        method: &str,
        params: &Value,
    ) -> Result<Value, (i64, String)> {
        let Some((items_key, cap)) = list_key(method) else {
            return Err((codes::METHOD_NOT_FOUND, "Method not found".into()));
        };
        let page: Option<BTreeMap<usize, String>> = match params.get("cursor") {
            None | Some(Value::Null) => None,
            Some(Value::String(c)) => Some(
                decode_cursor(c).ok_or((codes::INVALID_PARAMS, "Invalid cursor".to_string()))?,
            ),
            Some(_) => return Err((codes::INVALID_PARAMS, "Invalid cursor".into())),
        };
        let targets: Vec<(usize, Option<String>)> = match page {
            None => (0..self.upstreams.len()).map(|i| (i, None)).collect(),
            Some(m) => m.into_iter().map(|(i, c)| (i, Some(c))).collect(),
        };
        let calls = targets.into_iter().map(|(idx, cursor)| {
            let me = self.clone();
            let client = client.clone();
            let mut p = params.clone();
            if !p.is_object() {
                p = json!({});
            }
            match cursor {
                Some(c) => {
                    protocol::set_path(&mut p, &["cursor"], Value::from(c));
                }
                None => {
                    if let Some(o) = p.as_object_mut() {
                        o.remove("cursor");
                    }
                }
            }
            async move {
                let conn = me.conn(&client, idx).await?;
                if !has_cap(&conn.capabilities(), cap) {
                    return Ok((idx, Value::Null));
                }
                let r = me.simple_call(&client, idx, &conn, method, p).await?;
                Ok::<_, UpstreamError>((idx, r))
            }
        });
        let mut items = Vec::new();
        let mut next = BTreeMap::new();
        let results = futures_util::future::join_all(calls).await;
        if items_key == "tools" {
            // Shadowing is judged across every server's tools at once.
            for (idx, r) in results.iter().flatten() {
                if let Some(arr) = r.get("tools").and_then(Value::as_array) {
                    self.offer_tools(*idx, arr);
                }
            }
        }
        for r in results {
            let (idx, result) = match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, method, "upstream left out of list");
                    continue;
                }
            };
            if let Some(c) = result.get("nextCursor").and_then(Value::as_str) {
                next.insert(idx, c.to_owned());
            }
            let Some(arr) = result.get(items_key).and_then(Value::as_array) else {
                continue;
            };
            let server = self.server_name(idx);
            let list_action = portcullis_policy::Action::from_method(method, false);
            if !self
                .pep
                .decide(
                    client,
                    list_action,
                    method,
                    &portcullis_policy::ResourceFacts::server(&server),
                    None,
                )
                .allow
            {
                continue;
            }
            for item in arr {
                let mut item = item.clone();
                // Every item is shown only if the principal may use it: an
                // agent never learns of a tool it may not call.
                let (kind, action, id, ann) = match items_key {
                    "tools" => {
                        let n = item.get("name").and_then(Value::as_str).unwrap_or_default();
                        if !self.admit_tool(idx, &item) {
                            // Changed since pinned: hidden until approved.
                            continue;
                        }
                        let ann = crate::pep::annotations(&item);
                        let outward = self.naming.outward(idx, n);
                        lock(&self.tool_meta).insert(outward.clone(), ann);
                        (
                            ItemKind::Tool,
                            portcullis_policy::Action::CallTool,
                            outward,
                            ann,
                        )
                    }
                    "prompts" => {
                        let n = item.get("name").and_then(Value::as_str).unwrap_or_default();
                        if !self.admit_item(idx, ItemKind::Prompt, n, &item, false) {
                            continue;
                        }
                        lock(&self.prompt_seen).insert(self.naming.outward(idx, n));
                        (
                            ItemKind::Prompt,
                            portcullis_policy::Action::GetPrompt,
                            self.naming.outward(idx, n),
                            Default::default(),
                        )
                    }
                    key => {
                        let field = if key == "resources" {
                            "uri"
                        } else {
                            "uriTemplate"
                        };
                        let u = item
                            .get(field)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned();
                        if !self.admit_item(idx, ItemKind::Resource, &u, &item, false) {
                            continue;
                        }
                        (
                            ItemKind::Resource,
                            portcullis_policy::Action::ReadResource,
                            u,
                            Default::default(),
                        )
                    }
                };
                let res = self.pep.resource(kind, &server, &id, ann);
                let call_method = match kind {
                    ItemKind::Tool => "tools/call",
                    ItemKind::Prompt => "prompts/get",
                    _ => "resources/read",
                };
                if !self.pep.visible(client, action, call_method, &res) {
                    continue;
                }
                match items_key {
                    "tools" | "prompts" => {
                        if item.get("name").and_then(Value::as_str).is_none() {
                            continue;
                        }
                        protocol::set_path(&mut item, &["name"], Value::from(id));
                    }
                    "resources" => {
                        if let Some(u) = item.get("uri").and_then(Value::as_str) {
                            let mut r = lock(&self.routes);
                            r.uris.entry(u.to_owned()).or_insert(idx);
                        }
                    }
                    _ => {
                        if let Some(t) = item.get("uriTemplate").and_then(Value::as_str) {
                            let prefix = t.split('{').next().unwrap_or_default().to_owned();
                            let mut r = lock(&self.routes);
                            if !r.templates.iter().any(|(p, i)| *p == prefix && *i == idx) {
                                r.templates.push((prefix, idx));
                            }
                        }
                    }
                }
                items.push(item);
            }
        }
        let mut out = Map::new();
        out.insert(items_key.into(), Value::Array(items));
        if !next.is_empty() {
            out.insert("nextCursor".into(), Value::from(encode_cursor(&next)));
        }
        Ok(Value::Object(out))
    }

    /// A call made by the gateway itself (lists, fan-outs): no events.
    async fn simple_call(
        &self,
        client: &Arc<Client>,
        idx: usize,
        conn: &Conn,
        method: &str,
        mut params: Value,
    ) -> Result<Value, UpstreamError> {
        let u = self.upstream(idx)?;
        self.shape_params(client, conn, &mut params);
        let m = Message::request(raw_u64(self.next_uid()), method, Some(params));
        let (tx, _rx) = mpsc::channel(16);
        let r = tokio::time::timeout(u.timeout, conn.call(&m, &[], &tx, u.timeout))
            .await
            .map_err(|_| UpstreamError::Timeout(u.name.clone(), u.timeout.as_millis() as u64))??;
        match r.kind() {
            Kind::Response => Ok(r.result()),
            _ => Err(UpstreamError::Protocol(
                u.name.clone(),
                format!(
                    "{method} failed: {}",
                    r.error_value().unwrap_or(Value::Null)
                ),
            )),
        }
    }

    pub(crate) fn shape_params(&self, client: &Client, conn: &Conn, params: &mut Value) {
        if conn.revision().is_handshake() {
            protocol::strip_request_meta(params);
        } else {
            let caps = if client.is_stateless() {
                params
                    .get("_meta")
                    .and_then(|m| m.get(protocol::META_CAPS))
                    .cloned()
                    .unwrap_or_else(|| client.caps.clone())
            } else {
                client.caps.clone()
            };
            protocol::stamp_request_meta(params, &caps, &client.info);
            if let Some(level) = lock(&client.log_level).clone() {
                protocol::set_path(params, &["_meta", protocol::META_LOG_LEVEL], level);
            }
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call's whole context; splitting it obscures the flow"
    )]
    async fn forward(
        self: &Arc<Self>,
        client: &Arc<Client>,
        idx: usize,
        msg: Message,
        method: &str,
        mut params: Value,
        forwarded: &[(String, String)],
        rules: &Arc<Rules>,
        out: &Out<'_>,
    ) {
        let client_id = msg.id_owned();
        // A retry carrying a gateway-minted requestState resumes a parked call.
        if let Some(state) = params.get("requestState").and_then(Value::as_str) {
            if let Some(token) = state.strip_prefix(STATE_PREFIX) {
                let token = token.to_owned();
                self.resume(client, token, method, &params, client_id, out)
                    .await;
                return;
            }
        }
        let mut attempt = 0;
        loop {
            let conn = match self.conn(client, idx).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = out.send(e.to_message(client_id)).await;
                    return;
                }
            };
            let uid = self.next_uid();
            let mut p = params.clone();
            let progress = p.get("_meta").and_then(|m| m.get("progressToken")).cloned();
            if progress.is_some() {
                protocol::set_path(&mut p, &["_meta", "progressToken"], Value::from(uid));
            }
            self.shape_params(client, &conn, &mut p);
            let mut m = msg.clone();
            m.set_id(raw_u64(uid));
            m.set_params(&p);
            if let Some(cid) = &client_id {
                lock(&client.inflight).insert(cid.get().to_owned(), InFlight { idx, uid });
            }
            let steps = self.start_call(idx, conn.clone(), m, forwarded.to_vec());
            let outcome = self
                .drive(
                    client,
                    idx,
                    &conn,
                    uid,
                    steps,
                    progress.clone(),
                    method,
                    &params,
                    client_id.clone(),
                    rules,
                    out,
                )
                .await;
            if let Some(cid) = &client_id {
                lock(&client.inflight).remove(cid.get());
            }
            match outcome {
                Driven::Done => return,
                Driven::Retry(new_params) => {
                    // Handshake-era client, 2026-07-28 upstream: the gateway
                    // answered the input requests and sends the retry.
                    params = new_params;
                    attempt += 1;
                    if attempt > 16 {
                        let _ = out
                            .send(err(
                                client_id,
                                codes::INTERNAL_ERROR,
                                "too many input rounds",
                            ))
                            .await;
                        return;
                    }
                }
                Driven::SessionGone(e) => {
                    self.drop_conn(client, idx).await;
                    attempt += 1;
                    if attempt > 1 {
                        let _ = out.send(e.to_message(client_id)).await;
                        return;
                    }
                }
            }
        }
    }

    fn start_call(
        &self,
        idx: usize,
        conn: Conn,
        m: Message,
        forwarded: Vec<(String, String)>,
    ) -> Steps {
        let (name, timeout, breaker) = match self.upstreams.get(idx) {
            Some(u) => (u.name.clone(), u.timeout, Some(u.breaker.clone())),
            None => (String::new(), Duration::from_secs(60), None),
        };
        let (ev_tx, events) = mpsc::channel::<Message>(64);
        let pep = self.pep.clone();
        let call = async move {
            let began = Instant::now();
            use portcullis_contain::breaker::Ticket;
            let ticket = match breaker.as_ref().map(|b| Ticket::take(b, began)) {
                Some(Err(wait)) => {
                    let secs = wait.as_secs().max(1);
                    return Err(UpstreamError::CircuitOpen(name, secs));
                }
                Some(Ok(t)) => Some(t),
                None => None,
            };
            let r = tokio::time::timeout(timeout, conn.call(&m, &forwarded, &ev_tx, timeout)).await;
            pep.monitor.metrics.stage(
                portcullis_monitor::metrics::Stage::Upstream,
                began.elapsed(),
            );
            if let Some(ticket) = ticket {
                let failure = match &r {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some(format!("no answer within {} ms", timeout.as_millis())),
                };
                let reason = failure.as_deref().unwrap_or("");
                if let Some(t) = ticket.finish(failure.is_none(), reason, Instant::now()) {
                    breaker_moved(&pep.monitor, &name, &t);
                }
            }
            match r {
                Ok(r) => r,
                Err(_) => {
                    // Tell the upstream to stop working on it.
                    let p = json!({"requestId": m.id().map(|i| i.get().parse::<u64>().unwrap_or(0)), "reason": "timeout"});
                    let _ = conn
                        .notify(
                            &Message::notification("notifications/cancelled", Some(p)),
                            Duration::from_secs(5),
                        )
                        .await;
                    Err(UpstreamError::Timeout(name, timeout.as_millis() as u64))
                }
            }
        };
        Steps {
            call: Some(Box::pin(call)),
            events,
            last: None,
        }
    }

    /// Consumes a call's steps: interim messages to the client, server
    /// requests to the client (or parked for a 2026-07-28 client), then the
    /// final response.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call's whole context; splitting it obscures the flow"
    )]
    async fn drive(
        self: &Arc<Self>,
        client: &Arc<Client>,
        idx: usize,
        conn: &Conn,
        uid: u64,
        mut steps: Steps,
        progress: Option<Value>,
        method: &str,
        params: &Value,
        client_id: Option<Box<RawValue>>,
        rules: &Arc<Rules>,
        out: &Out<'_>,
    ) -> Driven {
        loop {
            let step = tokio::select! {
                s = steps.next() => s,
                _ = out.closed() => {
                    // The client went away: cancel upstream (2026-07-28
                    // semantics; handshake-era streams are never dropped).
                    drop(steps);
                    let p = json!({"requestId": uid, "reason": "client disconnected"});
                    let _ = conn.notify(&Message::notification("notifications/cancelled", Some(p)), Duration::from_secs(5)).await;
                    return Driven::Done;
                }
            };
            let Some(step) = step else {
                let _ = out
                    .send(err(
                        client_id,
                        codes::INTERNAL_ERROR,
                        "call ended without a response",
                    ))
                    .await;
                return Driven::Done;
            };
            let mut m = match step {
                Ok(m) => m,
                Err(e @ UpstreamError::SessionGone(_)) => return Driven::SessionGone(e),
                Err(e) => {
                    self.pep.monitor.outcome(
                        client,
                        &self.server_name(idx),
                        params.get("name").and_then(Value::as_str),
                        Err(&e.to_string()),
                    );
                    let _ = out.send(e.to_message(client_id)).await;
                    return Driven::Done;
                }
            };
            match m.kind() {
                Kind::Response | Kind::Error => {
                    if m.kind() == Kind::Response {
                        // Inspection of the result: DLP, then injection markers.
                        let target = self.target_name(idx, params);
                        if let Err(withheld) = self
                            .inspect_result(client, rules, target.as_deref(), &mut m)
                            .await
                        {
                            self.pep.monitor.outcome(
                                client,
                                &self.server_name(idx),
                                params.get("name").and_then(Value::as_str),
                                Ok(&m),
                            );
                            let _ = out.send(withheld.to_error(client_id)).await;
                            return Driven::Done;
                        }
                    }
                    self.pep.monitor.outcome(
                        client,
                        &self.server_name(idx),
                        params.get("name").and_then(Value::as_str),
                        Ok(&m),
                    );
                    let raw = m.result_raw().map(|r| r.get()).unwrap_or("");
                    if m.kind() == Kind::Response
                        && protocol::result_needs_fitting(raw, method, client.revision)
                    {
                        let mut r = m.result();
                        let input_required =
                            r.get("resultType").and_then(Value::as_str) == Some("input_required");
                        if input_required && client.revision.is_handshake() {
                            match self.bridge_input(client, &r, params, out).await {
                                Ok(p) => return Driven::Retry(p),
                                Err(e) => {
                                    let _ =
                                        out.send(err(client_id, codes::INTERNAL_ERROR, &e)).await;
                                    return Driven::Done;
                                }
                            }
                        }
                        fit_result(&mut r, method, client.revision);
                        m.set_result(&r);
                    }
                    m.set_id(client_id.unwrap_or_else(|| raw_u64(0)));
                    let _ = out.send(m).await;
                    return Driven::Done;
                }
                Kind::Request => {
                    // Server→client requests are decided too (Elicit, Sample, ListRoots).
                    let rm = m.method().unwrap_or_default().to_owned();
                    let res = portcullis_policy::ResourceFacts::server(&self.server_name(idx));
                    let d = self.pep.decide(
                        client,
                        portcullis_policy::Action::from_method(&rm, true),
                        &rm,
                        &res,
                        None,
                    );
                    // What the server asks the client (sampling messages, an
                    // elicitation's text) passes DLP like a result.
                    let target = self.target_name(idx, params);
                    let clean = d.allow
                        && self.inspect_notification(client, rules, target.as_deref(), &mut m);
                    if !clean {
                        if let Some(their) = m.id_owned() {
                            let e = if d.allow {
                                Message::error(
                                    Some(their),
                                    codes::RESULT_WITHHELD,
                                    "Withheld: the request carries sensitive data (DLP)",
                                    Some(json!({"reason": "dlp"})),
                                )
                            } else {
                                Message::error(
                                    Some(their),
                                    codes::POLICY_DENIED,
                                    &format!("Denied by policy: {}", d.reason),
                                    None,
                                )
                            };
                            let t = self
                                .upstreams
                                .get(idx)
                                .map(|u| u.timeout)
                                .unwrap_or_default();
                            let _ = conn.notify(&e, t).await;
                        }
                        continue;
                    }
                    if client.is_stateless() {
                        // Park the call; the client retries with our requestState.
                        let their_id = m.id_owned().unwrap_or_else(|| raw_u64(0));
                        let token = {
                            let mut b = [0u8; 16];
                            rand::rngs::OsRng
                                .try_fill_bytes(&mut b)
                                .unwrap_or_else(|_| rand::rng().fill_bytes(&mut b));
                            hex::encode(b)
                        };
                        let key = format!(
                            "{}-{}",
                            m.method().unwrap_or("input"),
                            token.get(..8).unwrap_or("")
                        );
                        let mut req = Map::new();
                        req.insert("method".into(), Value::from(m.method().unwrap_or_default()));
                        req.insert("params".into(), m.params());
                        let result = json!({
                            "resultType": "input_required",
                            "inputRequests": {key.clone(): Value::Object(req)},
                            "requestState": format!("{STATE_PREFIX}{token}"),
                        });
                        self.sweep_suspended();
                        lock(&self.suspended).insert(
                            token,
                            Suspended {
                                steps,
                                conn: conn.clone(),
                                idx,
                                uid,
                                their_id,
                                key,
                                binding: binding_of(method, params),
                                progress,
                                rules: rules.clone(),
                                expires: Instant::now() + SUSPEND_TTL,
                            },
                        );
                        let _ = out
                            .send(Message::response(
                                client_id.unwrap_or_else(|| raw_u64(0)),
                                result,
                            ))
                            .await;
                        return Driven::Done;
                    }
                    let their_id = m.id_owned().unwrap_or_else(|| raw_u64(0));
                    let gid =
                        client.register_server_request(ServerRequest::Upstream { idx, their_id });
                    m.set_id(raw_u64(gid));
                    let _ = out.send(m).await;
                }
                Kind::Notification => {
                    let target = self.target_name(idx, params);
                    if !self.inspect_notification(client, rules, target.as_deref(), &mut m) {
                        continue;
                    }
                    if let Some(fixed) =
                        restore_tokens(&m, uid, progress.as_ref(), client_id.as_deref())
                    {
                        let _ = out.send(fixed).await;
                    }
                }
            }
        }
    }

    /// Handshake-era client, 2026-07-28 upstream: ask the client each input
    /// request as a server→client request and build the retry's params.
    async fn bridge_input(
        self: &Arc<Self>,
        client: &Arc<Client>,
        result: &Value,
        params: &Value,
        out: &Out<'_>,
    ) -> Result<Value, String> {
        let reqs = result
            .get("inputRequests")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut responses = Map::new();
        for (key, req) in reqs {
            let method = req
                .get("method")
                .and_then(Value::as_str)
                .ok_or("input request without a method")?;
            let (tx, rx) = oneshot::channel();
            let gid = client.register_server_request(ServerRequest::Local(tx));
            let m = Message::request(raw_u64(gid), method, req.get("params").cloned());
            out.send(m).await.map_err(|_| "client went away")?;
            let answer = tokio::time::timeout(SUSPEND_TTL, rx)
                .await
                .map_err(|_| "client did not answer in time")?
                .map_err(|_| "client session ended")?;
            match answer.kind() {
                Kind::Response => {
                    responses.insert(key, answer.result());
                }
                _ => {
                    return Err(format!(
                        "client refused the input request: {}",
                        answer.error_value().unwrap_or(Value::Null)
                    ))
                }
            }
        }
        let mut p = params.clone();
        protocol::set_path(&mut p, &["inputResponses"], Value::Object(responses));
        if let Some(s) = result.get("requestState") {
            protocol::set_path(&mut p, &["requestState"], s.clone());
        }
        Ok(p)
    }

    async fn resume(
        self: &Arc<Self>,
        client: &Arc<Client>,
        token: String,
        method: &str,
        params: &Value,
        client_id: Option<Box<RawValue>>,
        out: &Out<'_>,
    ) {
        let s = lock(&self.suspended).remove(&token);
        let Some(s) = s else {
            let _ = out
                .send(err(
                    client_id,
                    codes::INVALID_PARAMS,
                    "Invalid or expired requestState",
                ))
                .await;
            return;
        };
        if s.binding != binding_of(method, params) || s.expires < Instant::now() {
            drop(s.steps);
            let _ = out
                .send(err(
                    client_id,
                    codes::INVALID_PARAMS,
                    "Invalid or expired requestState",
                ))
                .await;
            return;
        }
        let Some(answer) = params
            .get("inputResponses")
            .and_then(|r| r.get(&s.key))
            .cloned()
        else {
            // Keep it parked: the client may still answer.
            let _ = out
                .send(err(
                    client_id,
                    codes::INVALID_PARAMS,
                    &format!("inputResponses lacks {:?}", s.key),
                ))
                .await;
            lock(&self.suspended).insert(token, s);
            return;
        };
        let t = self
            .upstreams
            .get(s.idx)
            .map(|u| u.timeout)
            .unwrap_or_default();
        if let Err(e) = s
            .conn
            .notify(&Message::response(s.their_id, answer), t)
            .await
        {
            drop(s.steps);
            let _ = out.send(e.to_message(client_id)).await;
            return;
        }
        let _ = self
            .drive(
                client, s.idx, &s.conn, s.uid, s.steps, s.progress, method, params, client_id,
                &s.rules, out,
            )
            .await;
    }

    fn sweep_suspended(&self) {
        let now = Instant::now();
        // Dropping a parked call's steps abandons it upstream.
        lock(&self.suspended).retain(|_, s| s.expires > now);
    }

    /// A message from a shared (stdio) upstream that no call claimed.
    fn on_shared_unsolicited(self: &Arc<Self>, idx: usize, m: Message) {
        if m.kind() == Kind::Notification {
            let _ = self.hub.send((idx, m.clone()));
        }
        match (m.kind(), m.method()) {
            (Kind::Notification, Some(method)) if method.ends_with("/list_changed") => {
                if method == "notifications/tools/list_changed" {
                    self.recheck_tools(None, idx);
                }
                for c in self.sessions.all() {
                    let _ = c.deliver(m.clone());
                }
            }
            (Kind::Notification, Some("notifications/resources/updated")) => {
                let uri = m
                    .params()
                    .get("uri")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                for c in self.sessions.all() {
                    if lock(&c.subscriptions).contains(&uri) {
                        let _ = c.deliver(m.clone());
                    }
                }
            }
            (Kind::Request, method) => {
                // With several clients in flight there is no safe owner:
                // refuse rather than guess.
                tracing::warn!(
                    upstream = idx,
                    ?method,
                    "server request with no single owning client refused"
                );
                let me = self.clone();
                if let (Some(id), Some(UpstreamKind::Stdio(s))) =
                    (m.id_owned(), self.upstreams.get(idx).map(|u| &u.kind))
                {
                    let s = s.clone();
                    tokio::spawn(async move {
                        let e = Message::error(
                            Some(id),
                            codes::INTERNAL_ERROR,
                            "no client session to route this request to",
                            None,
                        );
                        let _ = s.notify(&e, Duration::from_secs(5)).await;
                        drop(me);
                    });
                }
            }
            _ => {
                tracing::debug!(upstream = idx, method = ?m.method(), "unrouted server notification dropped")
            }
        }
    }

    /// Starts the upstream GET listeners of a session whose client opened
    /// its own GET stream.
    pub async fn start_listening(self: &Arc<Self>, client: &Arc<Client>) {
        if client.listening.swap(true, Ordering::Relaxed) {
            return;
        }
        for idx in 0..client.conns.len() {
            let conn = match client.conns.get(idx) {
                Some(s) => s.lock().await.clone(),
                None => None,
            };
            if let Some(c) = conn {
                self.listen_one(client, idx, &c);
            }
        }
    }

    fn listen_one(self: &Arc<Self>, client: &Arc<Client>, idx: usize, conn: &Conn) {
        if let Conn::Stateless(..) = conn {
            // A 2026-07-28 upstream delivers list changes only on a listen stream.
            let filter = json!({"toolsListChanged": true, "promptsListChanged": true, "resourcesListChanged": true});
            let h = self.relay_listen(client, idx, conn.clone(), filter);
            // Keyed so no URI can collide with it; aborted when the session ends.
            lock(&client.upstream_subscriptions).insert(format!("\u{0}lists:{idx}"), h);
            return;
        }
        let Conn::Session(s) = conn else { return };
        let s = s.clone();
        let weak_client = Arc::downgrade(client);
        let weak_gw = Arc::downgrade(self);
        tokio::spawn(async move {
            let (tx, mut rx) = mpsc::channel::<Message>(64);
            let listener = s.listen(&tx);
            tokio::pin!(listener);
            loop {
                tokio::select! {
                    r = &mut listener => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "upstream GET stream ended");
                        }
                        break;
                    }
                    Some(mut m) = rx.recv() => {
                        let Some(client) = weak_client.upgrade() else { break };
                        if let Some(g) = weak_gw.upgrade() {
                            if m.method() == Some("notifications/tools/list_changed") {
                                g.recheck_tools(Some(client.clone()), idx);
                            }
                            // Unsolicited messages (logs, server requests) pass DLP too.
                            let rules = g.inspection.rules(&[], Asks::default());
                            if !g.inspect_notification(&client, &rules, None, &mut m) {
                                continue;
                            }
                        }
                        if m.kind() == Kind::Request {
                            let their_id = m.id_owned().unwrap_or_else(|| raw_u64(0));
                            let gid = client.register_server_request(ServerRequest::Upstream { idx, their_id });
                            m.set_id(raw_u64(gid));
                        }
                        if !client.deliver_wait(m).await {
                            break;
                        }
                    }
                }
            }
        });
    }

    /// Acts on containment changes the moment they happen: sessions of a
    /// newly restricted identity lose their open SSE streams (their next
    /// message meets the quarantine), sessions that used a revoked token
    /// end.
    pub fn watch_containment(self: &Arc<Self>) {
        let mut rx = self.pep.contain.state.subscribe();
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let ev = match rx.recv().await {
                    Ok(ev) => Some(ev),
                    // Missed some: re-check every session.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let Some(gw) = me.upgrade() else { return };
                gw.on_containment(ev).await;
            }
        });
    }

    async fn on_containment(&self, ev: Option<portcullis_contain::ContainEvent>) {
        use portcullis_contain::revocation::RevokedKind;
        use portcullis_contain::ContainEvent;
        match ev {
            Some(ContainEvent::Released(_)) | Some(ContainEvent::KillSwitch(None)) => {}
            Some(ContainEvent::Revoked(r)) if r.kind == RevokedKind::Token => {
                for c in self.sessions.all() {
                    let used = c.principal.user.as_ref().and_then(|u| u.jti.as_deref());
                    if used == Some(r.value.as_str()) {
                        if let Some(c) = self.sessions.remove(&c.id) {
                            close_streams(&c);
                            self.end_session(&c, "token revoked").await;
                        }
                    }
                }
            }
            Some(ContainEvent::Revoked(_)) => {}
            Some(ContainEvent::Quarantined(_)) | Some(ContainEvent::KillSwitch(Some(_))) | None => {
                let mut closed = 0usize;
                for c in self.sessions.all() {
                    if self.pep.contain.verdict(&c).mode().is_some() {
                        closed += close_streams(&c);
                    }
                }
                if closed > 0 {
                    tracing::warn!(
                        streams = closed,
                        "containment: closed the open streams of restricted sessions"
                    );
                }
            }
        }
    }

    /// Ends a handshake-era session: its upstream sessions are closed.
    pub async fn end_session(&self, client: &Arc<Client>, reason: &str) {
        self.forget_session(&client.id).await;
        self.end_session_local(client, reason).await;
    }

    /// Ends this replica's copy of a session (idle here, or ended on
    /// another replica) without touching its binding in a shared store.
    pub async fn end_session_local(&self, client: &Arc<Client>, reason: &str) {
        self.pep.monitor.session_end(client, reason);
        for (_, h) in lock(&client.upstream_subscriptions).drain() {
            h.abort();
        }
        for slot in &client.conns {
            let c = slot.lock().await.take();
            if let Some(Conn::Session(s)) = c {
                s.close().await;
            }
        }
        for (_, r) in lock(&client.server_requests).drain() {
            drop(r);
        }
    }
}

/// Ends every open SSE stream of a session (the HTTP bodies finish);
/// returns how many were live.
pub fn close_streams(c: &Client) -> usize {
    let mut n = 0;
    for buf in lock(&c.streams).values_mut() {
        if buf.live.take().is_some() {
            n += 1;
        }
    }
    n
}

/// Logs, audits and exposes a breaker's change of state.
fn breaker_moved(
    monitor: &crate::monitor::Monitor,
    upstream: &str,
    t: &portcullis_contain::breaker::Transition,
) {
    use portcullis_contain::breaker::State;
    let action = match t.to {
        State::Open => "breaker-open",
        State::HalfOpen => "breaker-half-open",
        State::Closed => "breaker-closed",
    };
    if t.to == State::Open {
        tracing::warn!(upstream, reason = %t.reason, "circuit breaker opened: calls fail fast");
    } else {
        tracing::info!(upstream, reason = %t.reason, state = t.to.as_str(), "circuit breaker");
    }
    monitor.metrics.upstream(upstream, t.to == State::Closed);
    monitor.containment(
        action,
        &format!("upstream:{upstream}"),
        Some(&t.reason),
        "breaker",
    );
}

/// The params without the input-round fields a client adds on retry.
fn strip_input(params: &Value) -> Value {
    let mut p = params.clone();
    if let Some(o) = p.as_object_mut() {
        o.remove("inputResponses");
        o.remove("requestState");
    }
    p
}

/// Strips the input-round fields when they belong to a gateway approval
/// (the upstream never asked for them); anything else passes unchanged.
fn strip_input_if_approval(params: &Value) -> Value {
    let ours = params
        .get("requestState")
        .and_then(Value::as_str)
        .is_some_and(|s| s.starts_with(APPROVAL_PREFIX));
    if ours {
        strip_input(params)
    } else {
        params.clone()
    }
}

enum Driven {
    Done,
    Retry(Value),
    SessionGone(UpstreamError),
}

/// Rewrites gateway-chosen tokens in a server notification back to the
/// client's: progress tokens and cancelled request ids.
fn restore_tokens(
    m: &Message,
    uid: u64,
    progress: Option<&Value>,
    client_id: Option<&RawValue>,
) -> Option<Message> {
    match m.method() {
        Some("notifications/progress") => {
            let mut p = m.params();
            let token = progress?;
            if p.get("progressToken").and_then(Value::as_u64) != Some(uid) {
                return None;
            }
            protocol::set_path(&mut p, &["progressToken"], token.clone());
            let mut out = m.clone();
            out.set_params(&p);
            Some(out)
        }
        Some("notifications/cancelled") => {
            let mut p = m.params();
            let cid: Value = serde_json::from_str(client_id?.get()).ok()?;
            protocol::set_path(&mut p, &["requestId"], cid);
            let mut out = m.clone();
            out.set_params(&p);
            Some(out)
        }
        _ => Some(m.clone()),
    }
}

/// Builds the target of an HTTP upstream: its own client when it has TLS
/// settings (trust bundle, expected SPIFFE ID, the gateway's client
/// certificate), else the shared one; and the gateway's own OAuth token
/// when client credentials are configured. An upstream whose `tls` names
/// a `spiffe_id` and no file at all (no `ca`, `cert` or `key`) takes both
/// sides from `[spiffe]`: the current SVID as client certificate and the
/// current bundle of that ID's trust domain as roots, read per handshake
/// (rotation without restart). Settings that cannot be built
/// are logged in detail and leave a target whose every call fails with
/// `-32010` naming the setting (not file paths or secrets); never a panic.
fn http_target(
    u: &UpstreamConfig,
    shared: &Result<uphttp::HttpClient, String>,
    max_message: usize,
    spiffe: Option<&crate::config::SpiffeCfg>,
) -> HttpTarget {
    use portcullis_identity::client_credentials::{
        ClientCredentialsConfig, ClientCredentialsSource,
    };
    use portcullis_identity::spiffe::SpiffeId;
    use portcullis_identity::tls::{client_config, UpstreamTls};

    let fail = |what: &str, why: String| {
        tracing::error!(upstream = %u.name, error = %why, "upstream unusable: {what}");
        HttpTarget::unusable(&u.name, &format!("{what} (details in the gateway log)"))
    };
    let url = u.url.clone().unwrap_or_default();
    let client = match &u.tls {
        Some(t) => {
            let spiffe_id = match t.spiffe_id.as_deref().map(SpiffeId::parse).transpose() {
                Ok(id) => id,
                Err(e) => return fail("bad tls.spiffe_id", e.to_string()),
            };
            let no_files = t.ca.is_empty() && t.cert.is_none() && t.key.is_none();
            let built = match (spiffe, &spiffe_id) {
                (Some(s), Some(id)) if no_files => match &s.started {
                    Some(w) => w.client_config(id),
                    None => {
                        return fail(
                            "tls from [spiffe] needs the Workload API identity, which `portcullis serve` starts",
                            "no Workload API identity in this process".into(),
                        )
                    }
                },
                _ => client_config(&UpstreamTls {
                    ca: t.ca.clone(),
                    cert: t.cert.clone(),
                    key: t.key.clone(),
                    spiffe_id,
                }),
            };
            match built.and_then(|c| {
                uphttp::client(Some(c)).map_err(portcullis_identity::tls::TlsError::Config)
            }) {
                Ok(c) => c,
                Err(e) => return fail("its tls settings could not be loaded", e.to_string()),
            }
        }
        None => match shared {
            Ok(c) => {
                if url.starts_with("https://") {
                    tracing::warn!(upstream = %u.name, "https upstream without tls settings: no trust anchors, calls will fail; set tls.ca");
                }
                c.clone()
            }
            Err(e) => return fail("no HTTP client", e.clone()),
        },
    };
    let target = match HttpTarget::new(&u.name, &url, &u.headers, client, max_message) {
        Ok(t) => t,
        Err(e) => return fail("bad url or headers", e.to_string()),
    };
    match &u.client_credentials {
        None => target,
        Some(cc) => {
            if u.headers
                .keys()
                .any(|k| k.eq_ignore_ascii_case("authorization"))
            {
                tracing::warn!(upstream = %u.name, "client_credentials replace the static Authorization header");
            }
            let mut cfg = ClientCredentialsConfig::new(
                cc.token_url.clone(),
                cc.client_id.clone(),
                cc.client_secret.clone(),
            );
            cfg.scope = cc.scope.clone();
            cfg.audience = cc.audience.clone();
            cfg.ca = u.tls.as_ref().map(|t| t.ca.clone()).unwrap_or_default();
            match ClientCredentialsSource::new(cfg) {
                Ok(src) => target.with_credentials(Arc::new(src)),
                Err(e) => fail("its client_credentials cannot be used", e.to_string()),
            }
        }
    }
}

#[allow(dead_code)]
fn _assert_raw(v: &Value) -> Box<RawValue> {
    to_raw(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let m = BTreeMap::from([(0usize, "abc".to_string()), (3, "x".to_string())]);
        assert_eq!(decode_cursor(&encode_cursor(&m)), Some(m));
        assert_eq!(decode_cursor("!!!"), None);
        assert_eq!(decode_cursor(""), None);
    }

    #[test]
    fn restores_progress_tokens() {
        let n = Message::notification(
            "notifications/progress",
            Some(json!({"progressToken": 9, "progress": 1})),
        );
        let fixed = restore_tokens(&n, 9, Some(&json!("client-tok")), None).unwrap();
        assert_eq!(fixed.params()["progressToken"], "client-tok");
        assert!(restore_tokens(&n, 8, Some(&json!("t")), None).is_none());
    }
}
