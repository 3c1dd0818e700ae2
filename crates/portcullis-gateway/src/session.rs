//! Client sessions: what the gateway remembers about one client.
//!
//! A handshake-era client gets a session (`Mcp-Session-Id`, 128-bit random)
//! holding its own upstream sessions, its in-flight calls and the
//! server→client requests waiting for its answer. A 2026-07-28 client gets
//! a throwaway context per request that uses the gateway's shared upstream
//! connections.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use portcullis_wire::{Message, Revision};
use rand::{RngCore, TryRngCore};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use portcullis_identity::principal::Principal;

use crate::conn::Conn;

/// Locks a std mutex, recovering from poisoning (the data stays valid).
pub(crate) fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where the client's answer to a server→client request goes.
pub enum ServerRequest {
    /// Back to the upstream that asked, under its own id.
    Upstream {
        /// Upstream index.
        idx: usize,
        /// The id the upstream used.
        their_id: Box<RawValue>,
    },
    /// To a task of the gateway's own (input-required bridging).
    Local(oneshot::Sender<Message>),
}

/// A request from the client still waiting on an upstream.
#[derive(Clone, Copy, Debug)]
pub struct InFlight {
    /// Upstream index.
    pub idx: usize,
    /// The id the gateway used upstream.
    pub uid: u64,
}

/// Buffered SSE events of one stream, kept for `Last-Event-ID` resumption.
pub struct StreamBuf {
    /// `(sequence, encoded event)` pairs still held.
    pub events: VecDeque<(u64, Bytes)>,
    /// The next sequence number.
    pub next_seq: u64,
    /// Whether the final event has been written.
    pub done: bool,
    /// The live HTTP body, if a client is attached.
    pub live: Option<mpsc::Sender<Bytes>>,
}

/// What policy knows about a session's history: calls so far and the
/// labels of everything it has read (a session that read `confidential`
/// data is tainted). A 2026-07-28 client has no session, so its facts are
/// kept per identity instead.
#[derive(Debug, Default)]
pub struct Facts {
    /// Calls decided so far.
    pub calls: std::sync::atomic::AtomicU64,
    /// Labels of items read so far.
    pub labels_read: StdMutex<std::collections::BTreeSet<String>>,
}

impl Facts {
    /// Records that an item with `labels` was read.
    pub fn read(&self, labels: &[String]) {
        if !labels.is_empty() {
            lock(&self.labels_read).extend(labels.iter().cloned());
        }
    }

    /// The labels read so far.
    pub fn labels(&self) -> Vec<String> {
        lock(&self.labels_read).iter().cloned().collect()
    }

    /// Whether any of `taint` has been read.
    pub fn tainted_by(&self, taint: &[String]) -> bool {
        let read = lock(&self.labels_read);
        taint.iter().any(|t| read.contains(t))
    }
}

/// A principal's parts as strings, for quarantine matching.
#[derive(Debug, Clone, Default)]
pub struct SubjectIds {
    /// SPIFFE ID of the workload.
    pub agent: Option<String>,
    /// `iss#sub` or the local user.
    pub user: Option<String>,
    /// Verified device id.
    pub device: Option<String>,
}

/// Events kept per stream for resumption.
pub const STREAM_BUFFER: usize = 512;

/// One client: a handshake-era session, or a 2026-07-28 request context.
pub struct Client {
    /// The session id (handshake era), empty for a stateless context.
    pub id: String,
    /// The client's revision.
    pub revision: Revision,
    /// Who created the session (or sent the request).
    pub principal: Principal,
    /// `principal.key()`, kept for the binding check on every request.
    pub owner: String,
    /// The creating client certificate's fingerprint, if any.
    pub fingerprint: Option<String>,
    /// The listener and path the session was created on.
    pub route: String,
    /// When the session was created (absolute lifetime).
    pub created: Instant,
    /// The client's declared capabilities.
    pub caps: Value,
    /// The client's `clientInfo`.
    pub info: Value,
    /// Per-upstream connections (handshake sessions only).
    pub conns: Vec<tokio::sync::Mutex<Option<Conn>>>,
    /// Requests waiting on upstreams, by the client's raw id.
    pub inflight: StdMutex<HashMap<String, InFlight>>,
    /// Server→client requests waiting on the client, by gateway id.
    pub server_requests: StdMutex<HashMap<u64, ServerRequest>>,
    next_gid: AtomicU64,
    /// Queue of messages for the GET stream, made when the client first
    /// opens one (an idle session without a GET stream holds no queue).
    outbound: std::sync::OnceLock<mpsc::Sender<Message>>,
    /// Resource URIs this client subscribed to.
    pub subscriptions: StdMutex<HashSet<String>>,
    /// SSE streams kept for resumption, by stream number.
    pub streams: StdMutex<HashMap<u64, StreamBuf>>,
    next_stream: AtomicU64,
    last_used: StdMutex<Instant>,
    /// The level set by `logging/setLevel`, stamped on requests to
    /// 2026-07-28 upstreams (which take it per request in `_meta`).
    pub log_level: StdMutex<Option<Value>>,
    /// Listen streams opened on 2026-07-28 upstreams for this session's
    /// `resources/subscribe`, by URI.
    pub upstream_subscriptions: StdMutex<HashMap<String, tokio::task::AbortHandle>>,
    /// The principal as policy sees it, built once.
    policy_principal: std::sync::OnceLock<portcullis_policy::PrincipalFacts>,
    /// The principal's agent, user and device ids as containment matches
    /// them, built once.
    subject: std::sync::OnceLock<SubjectIds>,
    /// Visibility answers: (policy hash, key) → (allowed, when).
    visibility: StdMutex<HashMap<String, (bool, Instant)>>,
    /// History facts for policy (shared per identity for 2026-07-28 clients).
    pub facts: std::sync::OnceLock<Arc<Facts>>,
    /// Whether upstream GET listeners were started for this session.
    pub listening: std::sync::atomic::AtomicBool,
    /// When this replica last stored the session's binding (Unix seconds;
    /// 0: never), so a shared store is refreshed only now and then.
    pub bound_at: AtomicU64,
}

/// A fresh 128-bit session id from the OS CSPRNG, hex-encoded.
pub fn new_session_id() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng
        .try_fill_bytes(&mut b)
        .unwrap_or_else(|_| rand::rng().fill_bytes(&mut b));
    hex::encode(b)
}

impl Client {
    /// A new client with `n` upstream slots (0 for stateless contexts).
    pub fn new(
        id: String,
        revision: Revision,
        caps: Value,
        info: Value,
        n: usize,
        principal: Principal,
        route: String,
    ) -> Arc<Client> {
        let owner = principal.key();
        let fingerprint = principal.fingerprint().map(str::to_owned);
        Client::restored(
            id,
            revision,
            caps,
            info,
            n,
            principal,
            route,
            Instant::now(),
            owner,
            fingerprint,
        )
    }

    /// A client for a session created earlier (here or on another replica
    /// sharing the store): its creator's identity key, certificate
    /// fingerprint and creation time, so the binding check and the
    /// absolute lifetime hold as if it had never moved.
    #[expect(clippy::too_many_arguments, reason = "every part of a stored session")]
    pub fn restored(
        id: String,
        revision: Revision,
        caps: Value,
        info: Value,
        n: usize,
        principal: Principal,
        route: String,
        created: Instant,
        owner: String,
        fingerprint: Option<String>,
    ) -> Arc<Client> {
        Arc::new(Client {
            owner,
            fingerprint,
            principal,
            route,
            created,
            id,
            revision,
            caps,
            info,
            conns: (0..n).map(|_| tokio::sync::Mutex::new(None)).collect(),
            inflight: StdMutex::new(HashMap::new()),
            server_requests: StdMutex::new(HashMap::new()),
            next_gid: AtomicU64::new(1),
            outbound: std::sync::OnceLock::new(),
            subscriptions: StdMutex::new(HashSet::new()),
            streams: StdMutex::new(HashMap::new()),
            next_stream: AtomicU64::new(1),
            last_used: StdMutex::new(Instant::now()),
            listening: std::sync::atomic::AtomicBool::new(false),
            facts: std::sync::OnceLock::new(),
            policy_principal: std::sync::OnceLock::new(),
            subject: std::sync::OnceLock::new(),
            visibility: StdMutex::new(HashMap::new()),
            log_level: StdMutex::new(None),
            upstream_subscriptions: StdMutex::new(HashMap::new()),
            bound_at: AtomicU64::new(0),
        })
    }

    /// Creates the GET-stream queue and returns its receiving end; `None`
    /// if it exists already (one receiver per session).
    pub fn open_outbound(&self) -> Option<mpsc::Receiver<Message>> {
        let mut rx = None;
        self.outbound.get_or_init(|| {
            let (tx, r) = mpsc::channel(256);
            rx = Some(r);
            tx
        });
        rx
    }

    /// Queues a server message for the GET stream without waiting; dropped
    /// (and `false`) when the client has no stream or is not reading it.
    pub fn deliver(&self, m: Message) -> bool {
        match self.outbound.get() {
            Some(tx) => tx.try_send(m).is_ok(),
            None => false,
        }
    }

    /// Queues a server message, waiting for room; `false` once the session
    /// has no stream to take it.
    pub async fn deliver_wait(&self, m: Message) -> bool {
        match self.outbound.get() {
            Some(tx) => tx.send(m).await.is_ok(),
            None => false,
        }
    }

    /// A cached visibility answer, if fresh and from the same policy set.
    pub fn visibility_cached(&self, hash: &str, key: &str, ttl: Duration) -> Option<bool> {
        let m = lock(&self.visibility);
        m.get(&format!("{hash}\u{0}{key}"))
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(v, _)| *v)
    }

    /// Remembers a visibility answer (bounded: cleared when it grows large).
    pub fn cache_visibility(&self, hash: &str, key: String, allowed: bool) {
        let mut m = lock(&self.visibility);
        if m.len() > 4096 {
            m.clear();
        }
        m.insert(format!("{hash}\u{0}{key}"), (allowed, Instant::now()));
    }

    /// The principal as policy sees it.
    pub fn policy_principal(&self) -> &portcullis_policy::PrincipalFacts {
        self.policy_principal
            .get_or_init(|| crate::pep::principal_facts(&self.principal))
    }

    /// The agent, user and device ids containment matches.
    pub fn subject_ids(&self) -> &SubjectIds {
        self.subject.get_or_init(|| SubjectIds {
            agent: self.principal.workload.as_ref().map(|w| w.to_string()),
            user: self.principal.user_id(),
            device: self
                .principal
                .device
                .verified()
                .map(|d| d.device_id.clone()),
        })
    }

    /// The session's policy facts (created on first use unless set).
    pub fn facts(&self) -> Arc<Facts> {
        self.facts
            .get_or_init(|| Arc::new(Facts::default()))
            .clone()
    }

    /// Whether this is a per-request 2026-07-28 context.
    pub fn is_stateless(&self) -> bool {
        !self.revision.is_handshake()
    }

    /// Registers a server→client request and returns the id the client sees.
    pub fn register_server_request(&self, r: ServerRequest) -> u64 {
        let gid = self.next_gid.fetch_add(1, Ordering::Relaxed);
        lock(&self.server_requests).insert(gid, r);
        gid
    }

    /// A new stream number for SSE event ids.
    pub fn new_stream(&self) -> u64 {
        self.next_stream.fetch_add(1, Ordering::Relaxed)
    }

    /// Marks the session as used now.
    pub fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }

    /// How long the session has been idle.
    pub fn idle(&self) -> Duration {
        lock(&self.last_used).elapsed()
    }
}

/// The table of handshake-era sessions.
#[derive(Default)]
pub struct Sessions {
    map: StdMutex<HashMap<String, Arc<Client>>>,
}

impl Sessions {
    /// Looks a session up without marking it used.
    pub fn peek(&self, id: &str) -> Option<Arc<Client>> {
        lock(&self.map).get(id).cloned()
    }

    /// Looks a session up and marks it used.
    pub fn get(&self, id: &str) -> Option<Arc<Client>> {
        let c = lock(&self.map).get(id).cloned();
        if let Some(c) = &c {
            c.touch();
        }
        c
    }

    /// Adds a session; `false` if the table is full.
    pub fn insert(&self, c: Arc<Client>, max: usize) -> bool {
        let mut m = lock(&self.map);
        if m.len() >= max {
            return false;
        }
        m.insert(c.id.clone(), c);
        true
    }

    /// Removes a session.
    pub fn remove(&self, id: &str) -> Option<Arc<Client>> {
        lock(&self.map).remove(id)
    }

    /// Every open session.
    pub fn all(&self) -> Vec<Arc<Client>> {
        lock(&self.map).values().cloned().collect()
    }

    /// The number of open sessions.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes and returns every session owned by `owner` (revocation of an
    /// identity).
    pub fn revoke_owner(&self, owner: &str) -> Vec<Arc<Client>> {
        let mut m = lock(&self.map);
        let dead: Vec<String> = m
            .iter()
            .filter(|(_, c)| c.owner == owner)
            .map(|(k, _)| k.clone())
            .collect();
        dead.iter().filter_map(|k| m.remove(k)).collect()
    }

    /// Removes and returns sessions idle longer than `max_idle`.
    pub fn expire(&self, max_idle: Duration) -> Vec<Arc<Client>> {
        let mut m = lock(&self.map);
        let dead: Vec<String> = m
            .iter()
            .filter(|(_, c)| c.idle() > max_idle)
            .map(|(k, _)| k.clone())
            .collect();
        dead.iter().filter_map(|k| m.remove(k)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_128_bit_hex_and_distinct() {
        let a = new_session_id();
        let b = new_session_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn table_bounds_and_expiry() {
        let s = Sessions::default();
        let c = Client::new(
            "a".into(),
            Revision::V2025_06_18,
            Value::Null,
            Value::Null,
            0,
            Principal::anonymous(),
            String::new(),
        );
        assert!(s.insert(c, 1));
        let d = Client::new(
            "b".into(),
            Revision::V2025_06_18,
            Value::Null,
            Value::Null,
            0,
            Principal::anonymous(),
            String::new(),
        );
        assert!(!s.insert(d, 1));
        assert!(s.get("a").is_some());
        assert!(s.expire(Duration::from_secs(60)).is_empty());
        assert_eq!(s.expire(Duration::ZERO).len(), 1);
        assert!(s.get("a").is_none());
    }
}
