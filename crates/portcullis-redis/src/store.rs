//! `RedisStore`: the `StateStore` several replicas share, and their global
//! rate limiter. Three background tasks keep it honest:
//!
//! - the **link** keeps one multiplexed command connection: it reconnects
//!   with capped exponential backoff, and checks the connection every
//!   second while idle (`PING`), at once when a command saw it fail;
//! - the **writer** drains the outbox, oldest first, one write at a time, so
//!   writes reach Redis (and the other replicas) in the order they were
//!   issued, however long Redis was away;
//! - the **feed** holds the pub/sub subscription; each time it
//!   (re)subscribes it first re-lists every cached namespace and announces
//!   what changed meanwhile, then follows the messages.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use portcullis_contain::rate::{Grant, Rate, SharedLimiter};
use portcullis_contain::store::{Change, Entry};
use portcullis_contain::{now_unix, StateStore, StoreError, StoreStatus};
use redis::aio::{MultiplexedConnection, PubSub, PubSubSink, PubSubStream};
use redis::io::tcp::TcpSettings;
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, ConnectionAddr, ConnectionInfo, ErrorKind,
    IntoConnectionInfo, RedisError, RedisResult, TlsCertificates,
};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, oneshot, watch, Notify};

use crate::backoff::Backoff;
use crate::config::{redact_url, RedisCfg};
use crate::error::RedisStoreError;
use crate::layout::{check_ns, Keys, Msg, MsgBody, MsgOp, TOMB_SECS, VERSION};
use crate::lua::Scripts;
use crate::view::{Snapshot, State, Write};

/// How often an idle connection is checked.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// What `/readyz` needs to know about the shared store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// The command connection is up: reads and writes reach Redis.
    pub connected: bool,
    /// The change feed is subscribed and caught up: other replicas'
    /// changes arrive as they happen. When false, `list` may be stale.
    pub in_sync: bool,
    /// Writes issued here and not yet stored (retried until they are).
    pub outbox: usize,
    /// The last failure seen (kept after recovery, with `last_error_at`).
    pub last_error: Option<String>,
    /// When it happened (Unix seconds).
    pub last_error_at: Option<u64>,
    /// Command connections re-established since start.
    pub reconnects: u64,
}

impl Health {
    /// Connected, caught up and nothing waiting: this replica sees and has
    /// stored everything.
    pub fn ready(&self) -> bool {
        self.connected && self.in_sync && self.outbox == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailKind {
    /// The connection is gone, refused or timing out.
    Link,
    /// The server refused the credentials.
    Auth,
    /// The server answered with an error (out of memory, no permission…).
    Server,
}

#[derive(Debug, Clone)]
struct Fail {
    kind: FailKind,
    msg: String,
}

impl Fail {
    fn link(msg: impl Into<String>) -> Fail {
        Fail {
            kind: FailKind::Link,
            msg: msg.into(),
        }
    }

    fn breaks_link(&self) -> bool {
        self.kind != FailKind::Server
    }
}

fn classify(e: &RedisError) -> Fail {
    let auth = e.kind() == ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"));
    let kind = if auth {
        FailKind::Auth
    } else if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || !matches!(e.kind(), ErrorKind::Server(_))
    {
        FailKind::Link
    } else {
        FailKind::Server
    };
    Fail {
        kind,
        msg: e.to_string(),
    }
}

async fn timed<T>(d: Duration, f: impl Future<Output = RedisResult<T>>) -> Result<T, Fail> {
    match tokio::time::timeout(d, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(&e)),
        Err(_) => Err(Fail::link(format!("no answer within {} ms", d.as_millis()))),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[derive(Default)]
struct Status {
    last_error: Option<String>,
    last_error_at: Option<u64>,
    reconnects: u64,
}

struct Inner {
    client: Client,
    /// Where Redis is, without credentials.
    target: String,
    prefix: String,
    keys: Keys,
    replica: String,
    channel: String,
    scripts: Scripts,
    connect_timeout: Duration,
    op_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    outbox_max: usize,
    state: Mutex<State>,
    conn: Mutex<Option<MultiplexedConnection>>,
    /// Whether `conn` holds a connection (for waiting on it).
    up: watch::Sender<bool>,
    /// A command saw the connection fail: the link checks it now.
    broken: Notify,
    wake_writer: Notify,
    /// The feed should re-list (a new epoch was seen elsewhere).
    resync: Notify,
    /// The outbox became empty.
    drained: Notify,
    status: Mutex<Status>,
    tx: broadcast::Sender<Change>,
}

/// A `StateStore` on Redis, shared by every gateway replica, and their
/// global rate limiter ([`SharedLimiter`]). Dropping it stops its
/// background tasks (writes still in the outbox are lost then).
pub struct RedisStore {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, RedisStoreError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| RedisStoreError::Read {
            what,
            path: path.display().to_string(),
            source,
        })
}

fn describe_addr(info: &ConnectionInfo) -> String {
    let db = info.redis_settings().db();
    match info.addr() {
        ConnectionAddr::Tcp(h, p) => format!("redis://{h}:{p}/{db}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{host}:{port}/{db}"),
        ConnectionAddr::Unix(p) => format!("redis+unix://{}?db={db}", p.display()),
        other => format!("redis {other:?}"),
    }
}

/// The client for `cfg`: credentials from the file or variable, TLS
/// material read (without blocking the runtime), no secret in `target`.
async fn build_client(cfg: &RedisCfg) -> Result<(Client, String), RedisStoreError> {
    let url = cfg.url.trim();
    let info = url
        .into_connection_info()
        .map_err(|e| RedisStoreError::Config(format!("url: {}: {}", redact_url(url), e)))?;
    let password = match (&cfg.password_file, &cfg.password_env) {
        (Some(p), _) => {
            let raw = read_file("password_file", p).await?;
            let text = String::from_utf8(raw).map_err(|_| {
                RedisStoreError::Config(format!("password_file: {} is not UTF-8", p.display()))
            })?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            Some(text.strip_suffix('\r').unwrap_or(text).to_owned())
        }
        (None, Some(var)) => Some(std::env::var(var).map_err(|_| {
            RedisStoreError::Config(format!(
                "password_env: environment variable {var} is not set (or not UTF-8)"
            ))
        })?),
        (None, None) => None,
    };
    let mut settings = info.redis_settings().clone();
    if let Some(u) = &cfg.username {
        settings = settings.set_username(u);
    }
    if let Some(p) = password {
        settings = settings.set_password(p);
    }
    let info = info
        .set_redis_settings(settings)
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    let target = describe_addr(&info);
    let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    if tls {
        // The workspace's one crypto provider; a no-op when the process
        // already chose one.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let client = if tls && (cfg.ca.is_some() || cfg.cert.is_some()) {
        let root_cert = match &cfg.ca {
            Some(p) => Some(read_file("ca", p).await?),
            None => None,
        };
        let client_tls = match (&cfg.cert, &cfg.key) {
            (Some(c), Some(k)) => Some(ClientTlsConfig {
                client_cert: read_file("cert", c).await?,
                client_key: read_file("key", k).await?,
            }),
            _ => None,
        };
        Client::build_with_tls(
            info,
            TlsCertificates {
                client_tls,
                root_cert,
            },
        )
    } else {
        Client::open(info)
    }
    .map_err(|e| RedisStoreError::Config(format!("url / ca / cert / key: {e}")))?;
    Ok((client, target))
}

impl RedisStore {
    /// Connects (command connection and change feed) and starts the
    /// background tasks. Fails at once, with the reason, when Redis cannot
    /// be reached or refuses the credentials: a replica that has never seen
    /// the shared state has no last known state to enforce.
    pub async fn connect(cfg: &RedisCfg) -> Result<RedisStore, RedisStoreError> {
        cfg.validate()?;
        let (client, target) = build_client(cfg).await?;
        let keys = Keys::new(&cfg.prefix);
        let inner = Arc::new(Inner {
            client,
            target,
            prefix: cfg.prefix.clone(),
            channel: keys.channel(),
            keys,
            replica: random_hex(),
            scripts: Scripts::default(),
            connect_timeout: cfg.connect_timeout(),
            op_timeout: cfg.op_timeout(),
            backoff_min: Duration::from_millis(cfg.backoff_min_ms),
            backoff_max: Duration::from_millis(cfg.backoff_max_ms),
            outbox_max: cfg.outbox_max,
            state: Mutex::new(State::default()),
            conn: Mutex::new(None),
            up: watch::channel(false).0,
            broken: Notify::new(),
            wake_writer: Notify::new(),
            resync: Notify::new(),
            drained: Notify::new(),
            status: Mutex::new(Status::default()),
            tx: broadcast::channel(1024).0,
        });
        let open_err = |f: Fail| {
            let target = inner.target.clone();
            match f.kind {
                FailKind::Auth => RedisStoreError::Auth {
                    target,
                    detail: f.msg,
                },
                _ => RedisStoreError::Connect {
                    target,
                    detail: f.msg,
                },
            }
        };
        let con = inner.open_conn().await.map_err(open_err)?;
        *lock(&inner.conn) = Some(con);
        inner.up.send_replace(true);
        let feed = inner.open_feed().await.map_err(open_err)?;
        lock(&inner.state).in_sync = true;
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(inner.clone().run_link(stop_rx.clone()));
        tokio::spawn(inner.clone().run_writer(stop_rx.clone()));
        tokio::spawn(inner.clone().run_feed(Some(feed), stop_rx));
        tracing::info!(redis = %inner.target, replica = %inner.replica, "state store: connected to redis");
        Ok(RedisStore { inner, stop })
    }

    /// Connection, feed and outbox state, for `/readyz` and operators.
    pub fn health(&self) -> Health {
        let (in_sync, outbox) = {
            let st = lock(&self.inner.state);
            (st.in_sync, st.outbox_len())
        };
        let s = lock(&self.inner.status);
        Health {
            connected: *self.inner.up.borrow(),
            in_sync,
            outbox,
            last_error: s.last_error.clone(),
            last_error_at: s.last_error_at,
            reconnects: s.reconnects,
        }
    }

    /// Whether reads are fresh: connected and the change feed caught up.
    /// When false, `list` answers from the last known state.
    pub fn is_connected(&self) -> bool {
        *self.inner.up.borrow() && lock(&self.inner.state).in_sync
    }

    /// This replica's random id, as it appears in change messages.
    pub fn replica_id(&self) -> &str {
        &self.inner.replica
    }

    /// Waits up to `within` for the outbox to drain (e.g. at shutdown);
    /// `true` when nothing is left to store.
    pub async fn flush(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let wait = self.inner.drained.notified();
            if lock(&self.inner.state).outbox_len() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, wait).await.is_err() {
                return lock(&self.inner.state).outbox_len() == 0;
            }
        }
    }
}

impl Inner {
    fn conn(&self) -> Option<MultiplexedConnection> {
        lock(&self.conn).clone()
    }

    fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Records a failure; a broken link is checked by the link task now.
    fn note(&self, f: &Fail) {
        self.record(f);
        if f.breaks_link() {
            self.broken.notify_one();
        }
    }

    fn record(&self, f: &Fail) {
        let mut s = lock(&self.status);
        s.last_error = Some(f.msg.clone());
        s.last_error_at = Some(now_unix());
    }

    fn last_error(&self) -> String {
        lock(&self.status)
            .last_error
            .clone()
            .unwrap_or_else(|| "no answer in time".into())
    }

    async fn open_conn(&self) -> Result<MultiplexedConnection, Fail> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.op_timeout));
        let mut con = timed(
            self.connect_timeout + self.op_timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&cfg),
        )
        .await?;
        // A server that wants a password only says so on the first command.
        timed(
            self.op_timeout,
            redis::cmd("PING").query_async::<String>(&mut con),
        )
        .await?;
        Ok(con)
    }

    async fn open_feed(&self) -> Result<PubSub, Fail> {
        let mut ps = timed(
            self.connect_timeout + self.op_timeout,
            self.client.get_async_pubsub(),
        )
        .await?;
        timed(self.op_timeout, ps.subscribe(&self.channel)).await?;
        Ok(ps)
    }

    fn not_stored(&self, depth: usize) -> StoreError {
        StoreError::Queued(format!(
            "redis {}: {}; in the outbox ({depth} waiting)",
            self.target,
            self.last_error()
        ))
    }

    fn unreachable(&self, what: &str) -> StoreError {
        StoreError::Unavailable(format!(
            "redis {} unreachable ({}): {what}",
            self.target,
            self.last_error()
        ))
    }

    /// Notes a failed read; the error to return when the server refused
    /// it (`None`: the link failed, answer from the last known state).
    fn read_failed(&self, f: &Fail) -> Option<StoreError> {
        self.note(f);
        (f.kind == FailKind::Server)
            .then(|| StoreError::Unavailable(format!("redis {}: {}", self.target, f.msg)))
    }

    /// Redis is away and `ns` has no last known state here.
    fn never_read(&self, ns: &str) -> StoreError {
        self.unreachable(&format!(
            "namespace {ns} was never read here, so there is no last known state"
        ))
    }

    fn announce(&self, changes: Vec<Change>) {
        for c in changes {
            let _ = self.tx.send(c);
        }
    }

    // ----------------------------------------------------------- writes --

    fn put_write(&self, ns: &str, entries: Vec<Entry>) -> Result<Write, StoreError> {
        let enc = |e: serde_json::Error| StoreError::Encode(e.to_string());
        // The last write of a key wins, as if written one by one.
        let mut seen = std::collections::HashSet::new();
        let mut ops: Vec<MsgOp> = entries
            .into_iter()
            .rev()
            .filter(|e| seen.insert(e.key.clone()))
            .map(|e| MsgOp {
                key: e.key.clone(),
                entry: Some(e),
            })
            .collect();
        ops.reverse();
        let body = serde_json::to_string(&MsgBody {
            v: VERSION,
            origin: &self.replica,
            ns,
            ops: &ops,
        })
        .map_err(enc)?;
        let mut keys = vec![self.keys.index(ns), self.keys.seq(), self.keys.epoch()];
        let mut args = vec![self.channel.clone(), random_hex(), body];
        for op in &ops {
            keys.push(self.keys.entry(ns, &op.key));
            args.push(op.key.clone());
            let (json, exp) = match &op.entry {
                Some(e) => (
                    serde_json::to_string(e).map_err(enc)?,
                    e.expires_at.map(|t| t.to_string()).unwrap_or_default(),
                ),
                None => (String::new(), String::new()),
            };
            args.push(json);
            args.push(exp);
        }
        Ok(Write {
            ns: ns.to_owned(),
            ops,
            remove: false,
            keys,
            args,
        })
    }

    fn remove_write(&self, ns: &str, key: &str) -> Result<Write, StoreError> {
        let ops = vec![MsgOp {
            key: key.to_owned(),
            entry: None,
        }];
        let body = serde_json::to_string(&MsgBody {
            v: VERSION,
            origin: &self.replica,
            ns,
            ops: &ops,
        })
        .map_err(|e| StoreError::Encode(e.to_string()))?;
        Ok(Write {
            ns: ns.to_owned(),
            keys: vec![
                self.keys.index(ns),
                self.keys.seq(),
                self.keys.epoch(),
                self.keys.entry(ns, key),
                self.keys.tomb(ns, key),
            ],
            args: vec![
                self.channel.clone(),
                random_hex(),
                body,
                key.to_owned(),
                TOMB_SECS.to_string(),
            ],
            ops,
            remove: true,
        })
    }

    /// Queues a write and waits (up to the op timeout) for it to be stored.
    async fn write(&self, write: Write) -> Result<bool, StoreError> {
        let (tx, rx) = oneshot::channel();
        let depth = {
            let mut st = lock(&self.state);
            st.enqueue(write, tx, self.outbox_max)?;
            st.outbox_len()
        };
        self.wake_writer.notify_one();
        if !self.is_up() {
            return Err(self.not_stored(depth));
        }
        match tokio::time::timeout(self.op_timeout, rx).await {
            Ok(Ok(existed)) => Ok(existed),
            _ => Err(self.not_stored(depth)),
        }
    }

    /// Runs one write's script: `(seq, epoch, existed)`.
    async fn store_write(
        &self,
        con: &mut MultiplexedConnection,
        w: &Write,
    ) -> Result<(u64, String, bool), Fail> {
        if w.remove {
            let (existed, seq, epoch): (i64, u64, String) = timed(
                self.op_timeout,
                self.scripts.remove.run(con, &w.keys, &w.args),
            )
            .await?;
            Ok((seq, epoch, existed == 1))
        } else {
            let (seq, epoch): (u64, String) =
                timed(self.op_timeout, self.scripts.put.run(con, &w.keys, &w.args)).await?;
            Ok((seq, epoch, true))
        }
    }

    /// The writer task: stores the outbox, oldest first.
    async fn run_writer(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(self.backoff_min, self.backoff_max);
        loop {
            if *stop.borrow() {
                return;
            }
            let wake = self.wake_writer.notified();
            let Some((id, w)) = lock(&self.state).front() else {
                tokio::select! {
                    _ = wake => {}
                    _ = stop.changed() => {}
                }
                continue;
            };
            let Some(mut con) = self.conn() else {
                let mut up = self.up.subscribe();
                tokio::select! {
                    _ = up.wait_for(|u| *u) => {}
                    _ = stop.changed() => {}
                }
                continue;
            };
            match self.store_write(&mut con, &w).await {
                Ok((seq, epoch, existed)) => {
                    backoff.reset();
                    self.stored(id, &w, seq, &epoch, existed, &mut con).await;
                }
                Err(f) => {
                    tracing::debug!(error = %f.msg, "state store: write not stored yet; retrying");
                    self.note(&f);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_wait()) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
    }

    /// A write reached Redis: out of the outbox, into the cache, caller told.
    async fn stored(
        &self,
        id: u64,
        w: &Write,
        seq: u64,
        epoch: &str,
        existed: bool,
        con: &mut MultiplexedConnection,
    ) {
        let (done, fill, empty) = {
            let mut st = lock(&self.state);
            if st.observe_epoch(epoch) {
                self.resync.notify_one();
            }
            let p = st.finish(id);
            let (changes, fill) = st.apply_local(&w.ns, seq, &w.ops);
            self.announce(changes);
            (p.and_then(|p| p.done), fill, st.outbox_len() == 0)
        };
        if fill {
            // First write to this namespace here: cache all of it, before
            // the caller hears back (a failure here leaves it uncached; the
            // write itself is stored all the same).
            if let Err(f) = self.list_remote(con, &w.ns, Snapshot::Read).await {
                self.note(&f);
            }
        }
        if let Some(d) = done {
            let _ = d.send(existed);
        }
        if empty {
            self.drained.notify_waiters();
        }
    }

    // ------------------------------------------------------------ reads --

    /// Lists `ns` in Redis and merges it into the cache: the entries and
    /// whether they were not merged (a new epoch, or a restore still owed).
    async fn list_remote(
        &self,
        con: &mut MultiplexedConnection,
        ns: &str,
        kind: Snapshot,
    ) -> Result<(Vec<Entry>, bool), Fail> {
        let keys = [self.keys.index(ns), self.keys.seq(), self.keys.epoch()];
        let args = [self.keys.entry_prefix(ns), random_hex()];
        let (seq, epoch, vals): (u64, String, Vec<String>) =
            timed(self.op_timeout, self.scripts.list.run(con, &keys, &args)).await?;
        let mut entries = Vec::with_capacity(vals.len());
        for v in vals {
            match serde_json::from_str::<Entry>(&v) {
                Ok(e) => entries.push(e),
                Err(err) => {
                    tracing::warn!(ns, error = %err, "state store: skipping an unreadable redis entry")
                }
            }
        }
        let mut st = lock(&self.state);
        if !st.comparable(&epoch) {
            // Redis lost its data: nothing is compared with it (that would
            // lift every quarantine) until the resync has written back what
            // this replica knows.
            self.resync.notify_one();
            return Ok((entries, true));
        }
        let changes = st.merge_snapshot(ns, seq, &entries, kind, now_unix());
        self.announce(changes);
        Ok((entries, false))
    }

    async fn list(&self, ns: &str) -> Result<Vec<Entry>, StoreError> {
        check_ns(ns)?;
        if let Some(mut con) = self.conn() {
            match self.list_remote(&mut con, ns, Snapshot::Read).await {
                Ok((_, true)) => {
                    // Redis came back empty: the last known state stands
                    // until it is written back.
                    if let Some(known) = lock(&self.state).offline_view(ns, now_unix()) {
                        return Ok(known);
                    }
                }
                Ok((entries, false)) => {
                    let map: BTreeMap<String, Entry> =
                        entries.into_iter().map(|e| (e.key.clone(), e)).collect();
                    return Ok(lock(&self.state).overlay(ns, map, now_unix()));
                }
                Err(f) => {
                    if let Some(e) = self.read_failed(&f) {
                        return Err(e);
                    }
                }
            }
        }
        lock(&self.state)
            .offline_view(ns, now_unix())
            .ok_or_else(|| self.never_read(ns))
    }

    /// One entry: this replica's queued write to it if any, else Redis,
    /// else (Redis away) the last known state of a cached namespace.
    async fn get(&self, ns: &str, key: &str) -> Result<Option<Entry>, StoreError> {
        check_ns(ns)?;
        let now = now_unix();
        if let Some(queued) = lock(&self.state).queued_entry(ns, key) {
            return Ok(queued.filter(|e| e.expires_at.is_none_or(|t| t > now)));
        }
        if let Some(mut con) = self.conn() {
            let cmd = redis::cmd("GET").arg(self.keys.entry(ns, key)).clone();
            match timed(self.op_timeout, cmd.query_async::<Option<String>>(&mut con)).await {
                Ok(v) => {
                    return Ok(v
                        .and_then(|v| serde_json::from_str::<Entry>(&v).ok())
                        .filter(|e| e.expires_at.is_none_or(|t| t > now)));
                }
                Err(f) => {
                    if let Some(e) = self.read_failed(&f) {
                        return Err(e);
                    }
                }
            }
        }
        lock(&self.state)
            .offline_view(ns, now)
            .map(|entries| entries.into_iter().find(|e| e.key == key))
            .ok_or_else(|| self.never_read(ns))
    }

    /// Several entries of one namespace with one `MGET`, each as
    /// [`Inner::get`] answers it.
    async fn get_many(&self, ns: &str, keys: &[String]) -> Result<Vec<Option<Entry>>, StoreError> {
        check_ns(ns)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_unix();
        let live = |e: Option<Entry>| e.filter(|e| e.expires_at.is_none_or(|t| t > now));
        let queued: Vec<Option<Option<Entry>>> = {
            let st = lock(&self.state);
            keys.iter().map(|k| st.queued_entry(ns, k)).collect()
        };
        if let Some(mut con) = self.conn() {
            let mut cmd = redis::cmd("MGET");
            for k in keys {
                cmd.arg(self.keys.entry(ns, k));
            }
            match timed(
                self.op_timeout,
                cmd.query_async::<Vec<Option<String>>>(&mut con),
            )
            .await
            {
                Ok(vals) => {
                    return Ok(vals
                        .into_iter()
                        .zip(queued)
                        .map(|(v, q)| match q {
                            Some(q) => live(q),
                            None => live(v.and_then(|v| serde_json::from_str::<Entry>(&v).ok())),
                        })
                        .collect());
                }
                Err(f) => {
                    if let Some(e) = self.read_failed(&f) {
                        return Err(e);
                    }
                }
            }
        }
        let view = lock(&self.state)
            .offline_view(ns, now)
            .ok_or_else(|| self.never_read(ns))?;
        Ok(keys
            .iter()
            .zip(queued)
            .map(|(k, q)| match q {
                Some(q) => live(q),
                None => view.iter().find(|e| &e.key == k).cloned(),
            })
            .collect())
    }

    // ------------------------------------------------------------- link --

    /// The link task: keeps the command connection, reconnecting with backoff.
    async fn run_link(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(self.backoff_min, self.backoff_max);
        let mut failing = false;
        loop {
            if *stop.borrow() {
                return;
            }
            let Some(mut con) = self.conn() else {
                match self.open_conn().await {
                    Ok(c) => {
                        *lock(&self.conn) = Some(c);
                        lock(&self.status).reconnects += 1;
                        self.up.send_replace(true);
                        self.wake_writer.notify_one();
                        backoff.reset();
                        failing = false;
                        tracing::info!(redis = %self.target, "state store: redis connection restored");
                    }
                    Err(f) => {
                        if !failing {
                            tracing::warn!(redis = %self.target, error = %f.msg, "state store: cannot reach redis; retrying with backoff (writes are queued, reads served from the last known state)");
                            failing = true;
                        }
                        self.record(&f);
                        tokio::select! {
                            _ = tokio::time::sleep(backoff.next_wait()) => {}
                            _ = stop.changed() => {}
                        }
                    }
                }
                continue;
            };
            tokio::select! {
                _ = self.broken.notified() => {}
                _ = tokio::time::sleep(HEALTH_EVERY) => {}
                _ = stop.changed() => continue,
            }
            if let Err(f) = timed(
                self.op_timeout,
                redis::cmd("PING").query_async::<String>(&mut con),
            )
            .await
            {
                tracing::warn!(redis = %self.target, error = %f.msg, "state store: redis connection lost");
                *lock(&self.conn) = None;
                self.up.send_replace(false);
                self.record(&f);
                failing = true;
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_wait()) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }

    // ------------------------------------------------------------- feed --

    /// Re-lists every cached namespace, announcing what changed; then the
    /// feed is in sync.
    async fn resync_all(&self) -> Result<(), Fail> {
        let Some(mut con) = self.conn() else {
            return Err(Fail::link("no connection for the resync"));
        };
        for _ in 0..3 {
            if lock(&self.state).take_restore() {
                self.restore(&mut con).await?;
            }
            let namespaces = lock(&self.state).namespaces();
            let mut reset = false;
            for ns in namespaces {
                if self.list_remote(&mut con, &ns, Snapshot::Resync).await?.1 {
                    reset = true;
                    break;
                }
            }
            if !reset {
                break;
            }
            // Redis lost its data mid-way: write back and list everything
            // again under the new epoch.
        }
        lock(&self.state).in_sync = true;
        Ok(())
    }

    /// Redis lost its data (restarted without persistence, flushed,
    /// failed over to an empty replica): every replica writes back its last
    /// known state, so the union of what the replicas knew is stored again
    /// and nothing is lifted by the loss. Only an explicit release or expiry
    /// lifts a quarantine.
    async fn restore(&self, con: &mut MultiplexedConnection) -> Result<(), Fail> {
        let now = now_unix();
        let namespaces = lock(&self.state).namespaces();
        let mut restored = 0usize;
        for ns in namespaces {
            let known = lock(&self.state).known(&ns, now);
            if known.is_empty() {
                continue;
            }
            let (keys, args) = match self.restore_args(&ns, known) {
                Ok(ka) => ka,
                Err(e) => {
                    tracing::warn!(ns, error = %e, "state store: cannot write back the last known state");
                    continue;
                }
            };
            let (n, _, _): (u64, u64, String) =
                timed(self.op_timeout, self.scripts.restore.run(con, &keys, &args)).await?;
            restored += usize::try_from(n).unwrap_or(usize::MAX);
        }
        tracing::warn!(
            redis = %self.target,
            entries = restored,
            "state store: redis lost its data; this replica's last known state was written back"
        );
        Ok(())
    }

    /// The restore script's keys and arguments for `entries` of `ns`.
    fn restore_args(
        &self,
        ns: &str,
        entries: Vec<Entry>,
    ) -> Result<(Vec<String>, Vec<String>), serde_json::Error> {
        let head = serde_json::to_string(&MsgBody {
            v: VERSION,
            origin: &self.replica,
            ns,
            ops: &[],
        })?;
        // `{…,"ops":[]}` → `{…,"ops":[`: the script appends what it wrote.
        let head = head.strip_suffix("]}").unwrap_or(&head).to_owned();
        let mut keys = vec![self.keys.index(ns), self.keys.seq(), self.keys.epoch()];
        let mut args = vec![self.channel.clone(), random_hex(), head];
        for e in entries {
            keys.push(self.keys.entry(ns, &e.key));
            keys.push(self.keys.tomb(ns, &e.key));
            args.push(e.key.clone());
            args.push(serde_json::to_string(&e)?);
            args.push(e.expires_at.map(|t| t.to_string()).unwrap_or_default());
            let op = MsgOp {
                key: e.key.clone(),
                entry: Some(e),
            };
            args.push(serde_json::to_string(&op)?);
        }
        Ok((keys, args))
    }

    fn on_message(&self, payload: &[u8]) -> bool {
        let m: Msg = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "state store: unreadable change message ignored");
                return false;
            }
        };
        let mine = m.origin == self.replica;
        let mut st = lock(&self.state);
        let reset = st.observe_epoch(&m.epoch);
        let changes = st.apply_message(&m, mine);
        self.announce(changes);
        reset
    }

    /// Follows the messages until the feed fails (`Some`) or the store
    /// stops (`None`).
    async fn follow(
        &self,
        sink: &mut PubSubSink,
        stream: &mut PubSubStream,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Fail> {
        loop {
            if *stop.borrow() {
                return None;
            }
            tokio::select! {
                m = stream.next() => match m {
                    None => return Some(Fail::link("change feed connection closed")),
                    Some(m) => {
                        if self.on_message(m.get_payload_bytes()) {
                            if let Err(f) = self.resync_all().await {
                                return Some(f);
                            }
                        }
                    }
                },
                _ = self.resync.notified() => {
                    if let Err(f) = self.resync_all().await {
                        return Some(f);
                    }
                }
                _ = tokio::time::sleep(HEALTH_EVERY) => {
                    // A subscribed RESP2 connection answers PING with
                    // ["pong", ""], not "PONG": any answer is health.
                    if let Err(f) = timed(self.op_timeout, sink.ping::<redis::Value>()).await {
                        return Some(f);
                    }
                }
                _ = stop.changed() => {}
            }
        }
    }

    /// The feed task: subscribe, resync, follow; again after any failure.
    async fn run_feed(self: Arc<Self>, first: Option<PubSub>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(self.backoff_min, self.backoff_max);
        let mut next = first;
        loop {
            if *stop.borrow() {
                return;
            }
            let ps = match next.take() {
                Some(ps) => ps,
                None => {
                    if !self.is_up() {
                        let mut up = self.up.subscribe();
                        tokio::select! {
                            _ = up.wait_for(|u| *u) => {}
                            _ = stop.changed() => {}
                        }
                        continue;
                    }
                    match self.open_feed().await {
                        Ok(ps) => ps,
                        Err(f) => {
                            self.note(&f);
                            tokio::select! {
                                _ = tokio::time::sleep(backoff.next_wait()) => {}
                                _ = stop.changed() => {}
                            }
                            continue;
                        }
                    }
                }
            };
            let (mut sink, mut stream) = ps.split();
            let lost = match self.resync_all().await {
                Ok(()) => {
                    backoff.reset();
                    self.follow(&mut sink, &mut stream, &mut stop).await
                }
                Err(f) => Some(f),
            };
            lock(&self.state).in_sync = false;
            let Some(f) = lost else {
                return;
            };
            tracing::warn!(redis = %self.target, error = %f.msg, "state store: change feed lost; resubscribing");
            self.note(&f);
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_wait()) => {}
                _ = stop.changed() => {}
            }
        }
    }

    // ------------------------------------------------------------- rate --

    async fn gcra(
        &self,
        key: &str,
        rate: Rate,
        cells: u32,
        now: Option<SystemTime>,
    ) -> Result<Grant, StoreError> {
        let Some(mut con) = self.conn() else {
            return Err(self.unreachable("rate limit not checked"));
        };
        let now = match now {
            Some(t) => micros(t.duration_since(UNIX_EPOCH).unwrap_or_default()).to_string(),
            None => String::new(),
        };
        let keys = [self.keys.rate(key)];
        // Whole microseconds: an interval under 1 µs (over 60 million a
        // minute) counts as 1 µs rather than 0, which the script cannot
        // divide by.
        let interval = micros(rate.interval()).max(1);
        let args = [
            interval.to_string(),
            interval
                .saturating_mul(u64::from(rate.burst.max(1)))
                .to_string(),
            now,
            cells.max(1).to_string(),
        ];
        match timed(
            self.op_timeout,
            self.scripts.gcra.run::<(i64, i64)>(&mut con, &keys, &args),
        )
        .await
        {
            Ok((k, w)) => Ok(Grant {
                cells: u32::try_from(k).unwrap_or(0),
                wait: Duration::from_micros(u64::try_from(w).unwrap_or(0)),
            }),
            Err(f) => {
                self.note(&f);
                Err(StoreError::Unavailable(format!(
                    "redis {}: rate limit not checked: {}",
                    self.target, f.msg
                )))
            }
        }
    }
}

impl StateStore for RedisStore {
    fn put<'a>(
        &'a self,
        ns: &'a str,
        key: &'a str,
        value: Value,
        expires_at: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            check_ns(ns)?;
            let w = self.inner.put_write(
                ns,
                vec![Entry {
                    key: key.to_owned(),
                    value,
                    expires_at,
                }],
            )?;
            self.inner.write(w).await.map(|_| ())
        })
    }

    fn put_many<'a>(
        &'a self,
        ns: &'a str,
        entries: Vec<Entry>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            check_ns(ns)?;
            if entries.is_empty() {
                return Ok(());
            }
            let w = self.inner.put_write(ns, entries)?;
            self.inner.write(w).await.map(|_| ())
        })
    }

    fn remove<'a>(&'a self, ns: &'a str, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            check_ns(ns)?;
            let w = self.inner.remove_write(ns, key)?;
            self.inner.write(w).await
        })
    }

    fn list<'a>(&'a self, ns: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, StoreError>> {
        Box::pin(self.inner.list(ns))
    }

    fn get<'a>(
        &'a self,
        ns: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
        Box::pin(self.inner.get(ns, key))
    }

    fn get_many<'a>(
        &'a self,
        ns: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<Entry>>, StoreError>> {
        Box::pin(self.inner.get_many(ns, keys))
    }

    /// Every replica of the deployment reads and writes the same Redis.
    fn shared(&self) -> bool {
        true
    }

    fn limiter(&self) -> Option<&dyn SharedLimiter> {
        Some(self)
    }

    fn flush(&self, within: Duration) -> BoxFuture<'_, bool> {
        Box::pin(RedisStore::flush(self, within))
    }

    fn status(&self) -> StoreStatus {
        let h = self.health();
        StoreStatus {
            current: h.connected && h.in_sync,
            pending_writes: h.outbox,
            last_error: h.last_error,
        }
    }

    /// Changes made by other replicas (never this one's own writes), and
    /// on reconnection the differences found by re-listing every cached
    /// namespace.
    fn changes(&self) -> broadcast::Receiver<Change> {
        self.inner.tx.subscribe()
    }

    fn describe(&self) -> String {
        format!(
            "redis {} (prefix {:?}, replica {})",
            self.inner.target, self.inner.prefix, self.inner.replica
        )
    }
}

impl SharedLimiter for RedisStore {
    fn check<'a>(
        &'a self,
        key: &'a str,
        rate: Rate,
        now: Option<SystemTime>,
    ) -> BoxFuture<'a, Result<Option<Duration>, StoreError>> {
        Box::pin(async move {
            let g = self.inner.gcra(key, rate, 1, now).await?;
            Ok((g.cells == 0).then_some(g.wait))
        })
    }

    fn take<'a>(
        &'a self,
        key: &'a str,
        rate: Rate,
        cells: u32,
        now: Option<SystemTime>,
    ) -> BoxFuture<'a, Result<Grant, StoreError>> {
        Box::pin(self.inner.gcra(key, rate, cells, now))
    }
}
