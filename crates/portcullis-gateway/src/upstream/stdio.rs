//! Stdio upstreams: a child process the gateway spawns, supervises
//! (restart with backoff, stderr into the log, clean shutdown) and keeps in
//! its own environment.
//!
//! One process serves every client session, so request ids are chosen by
//! the gateway (globally unique) and progress tokens are set to the request
//! id; server messages are routed back by those.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use portcullis_wire::{message::raw_u64, stdio as framing, Kind, Message, Revision};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{oneshot, watch, Mutex};

use super::{Events, UpstreamError};

/// What to do with a server message no in-flight call claims.
pub type Unsolicited = Arc<dyn Fn(Message) + Send + Sync>;

struct Pending {
    reply: oneshot::Sender<Message>,
    events: Events,
}

/// A running, initialized child.
pub struct Running {
    stdin: Mutex<ChildStdin>,
    pending: StdMutex<HashMap<String, Pending>>,
    init: std::sync::OnceLock<(Value, Revision)>,
}

impl Running {
    /// The server's `initialize` result.
    pub fn init(&self) -> Value {
        self.init
            .get()
            .map(|(v, _)| v.clone())
            .unwrap_or(Value::Null)
    }

    /// The negotiated revision.
    pub fn revision(&self) -> Revision {
        self.init
            .get()
            .map(|(_, r)| *r)
            .unwrap_or(Revision::LATEST_HANDSHAKE)
    }
}

/// How to launch the child.
#[derive(Clone, Debug)]
pub struct Launch {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Variables set for the child.
    pub env: BTreeMap<String, String>,
    /// Gateway variables the child may inherit.
    pub inherit_env: Vec<String>,
    /// Working directory.
    pub cwd: Option<String>,
}

/// A supervised stdio MCP server.
pub struct StdioUpstream {
    name: Arc<str>,
    current: watch::Receiver<Option<Arc<Running>>>,
    shutdown: watch::Sender<bool>,
    max_message: usize,
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned map still holds valid entries; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl StdioUpstream {
    /// Spawns the supervisor; the child starts at once and is restarted with
    /// backoff whenever it exits.
    pub fn spawn(
        name: &str,
        launch: Launch,
        client_info: Value,
        max_message: usize,
        unsolicited: Unsolicited,
    ) -> Arc<StdioUpstream> {
        let (tx, rx) = watch::channel(None);
        let (stop_tx, stop_rx) = watch::channel(false);
        let up = Arc::new(StdioUpstream {
            name: name.into(),
            current: rx,
            shutdown: stop_tx,
            max_message,
        });
        let name: Arc<str> = name.into();
        tokio::spawn(supervise(
            name,
            launch,
            client_info,
            max_message,
            tx,
            stop_rx,
            unsolicited,
        ));
        up
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until the child is running and initialized, up to `wait`.
    pub async fn ready(&self, wait: Duration) -> Result<Arc<Running>, UpstreamError> {
        let mut rx = self.current.clone();
        let fut = async {
            loop {
                if let Some(r) = rx.borrow_and_update().clone() {
                    return Some(r);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        match tokio::time::timeout(wait, fut).await {
            Ok(Some(r)) => Ok(r),
            _ => Err(UpstreamError::Unavailable(
                self.name.to_string(),
                "server process is not running".into(),
            )),
        }
    }

    /// Sends a request (its id must be gateway-unique) and waits for the
    /// response; related server messages go to `events`.
    pub async fn call(
        &self,
        msg: &Message,
        events: &Events,
        wait: Duration,
    ) -> Result<Message, UpstreamError> {
        let running = self.ready(wait).await?;
        let key = msg.id().map(|i| i.get().to_owned()).unwrap_or_default();
        let (tx, rx) = oneshot::channel();
        lock(&running.pending).insert(
            key.clone(),
            Pending {
                reply: tx,
                events: events.clone(),
            },
        );
        let guard = PendingGuard {
            running: &running,
            key,
        };
        write(&running, msg, &self.name).await?;
        let out = rx.await.map_err(|_| {
            UpstreamError::Unavailable(self.name.to_string(), "server process exited".into())
        });
        drop(guard);
        out
    }

    /// Sends a notification or a response to a server request.
    pub async fn notify(&self, msg: &Message, wait: Duration) -> Result<(), UpstreamError> {
        let running = self.ready(wait).await?;
        write(&running, msg, &self.name).await
    }

    /// The current `initialize` result, if running.
    pub fn init(&self) -> Option<Value> {
        self.current.borrow().as_ref().map(|r| r.init())
    }

    /// The largest message accepted from the child.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Stops the child (stdin closed, then SIGKILL after a grace period)
    /// and the supervisor.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

struct PendingGuard<'a> {
    running: &'a Running,
    key: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.running.pending).remove(&self.key);
    }
}

async fn write(running: &Running, msg: &Message, name: &str) -> Result<(), UpstreamError> {
    let line = framing::frame(&msg.to_bytes());
    let mut stdin = running.stdin.lock().await;
    stdin
        .write_all(&line)
        .await
        .map_err(|e| UpstreamError::Unavailable(name.into(), format!("write to server: {e}")))?;
    stdin
        .flush()
        .await
        .map_err(|e| UpstreamError::Unavailable(name.into(), format!("write to server: {e}")))
}

fn command(launch: &Launch) -> Result<Command, String> {
    let (prog, args) = launch.argv.split_first().ok_or("empty command")?;
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for k in &launch.inherit_env {
        if let Ok(v) = std::env::var(k) {
            cmd.env(k, v);
        }
    }
    cmd.envs(&launch.env);
    if let Some(d) = &launch.cwd {
        cmd.current_dir(d);
    }
    Ok(cmd)
}

async fn supervise(
    name: Arc<str>,
    launch: Launch,
    client_info: Value,
    max_message: usize,
    publish: watch::Sender<Option<Arc<Running>>>,
    mut stop: watch::Receiver<bool>,
    unsolicited: Unsolicited,
) {
    let mut backoff = Duration::from_millis(100);
    // Below 2^53 so JavaScript servers keep ids exact; far above the
    // gateway's own counter.
    let mut next_id: u64 = 1 << 50;
    loop {
        if *stop.borrow() {
            return;
        }
        let started = tokio::time::Instant::now();
        match start(
            &name,
            &launch,
            &client_info,
            max_message,
            &unsolicited,
            &mut next_id,
        )
        .await
        {
            Ok((running, mut child, reader)) => {
                tracing::info!(upstream = %name, pid = child.id().unwrap_or(0), "stdio server started");
                let _ = publish.send(Some(running.clone()));
                let status = tokio::select! {
                    s = child.wait() => Some(s),
                    _ = stop.changed() => None,
                };
                let _ = publish.send(None);
                reader.abort();
                fail_all(&running);
                match status {
                    Some(s) => {
                        tracing::warn!(upstream = %name, status = ?s.ok(), "stdio server exited")
                    }
                    None => {
                        graceful_stop(&name, &running, &mut child).await;
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!(upstream = %name, error = %e, "stdio server failed to start"),
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn graceful_stop(name: &str, running: &Running, child: &mut Child) {
    {
        let mut stdin = running.stdin.lock().await;
        let _ = stdin.shutdown().await;
    }
    if tokio::time::timeout(Duration::from_secs(2), child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    tracing::info!(upstream = %name, "stdio server stopped");
}

fn fail_all(running: &Running) {
    // Dropping the senders wakes every waiter with "process exited".
    lock(&running.pending).clear();
}

type Started = (Arc<Running>, Child, tokio::task::JoinHandle<()>);

async fn start(
    name: &Arc<str>,
    launch: &Launch,
    client_info: &Value,
    max_message: usize,
    unsolicited: &Unsolicited,
    next_id: &mut u64,
) -> Result<Started, String> {
    let mut child = command(launch)?
        .spawn()
        .map_err(|e| format!("spawn {:?}: {e}", launch.argv.first()))?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    if let Some(stderr) = child.stderr.take() {
        let n = name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let line: String = line.chars().take(2000).collect();
                tracing::info!(upstream = %n, "stderr: {line}");
            }
        });
    }
    let (init_tx, init_rx) = oneshot::channel::<Message>();
    let init_key = next_id.to_string();
    let init_req = Message::request(
        raw_u64(*next_id),
        "initialize",
        Some(json!({
            "protocolVersion": Revision::LATEST_HANDSHAKE.as_str(),
            "capabilities": {"elicitation": {}, "sampling": {}, "roots": {"listChanged": true}},
            "clientInfo": client_info,
        })),
    );
    *next_id += 1;
    let (ev_tx, _ev_rx) = tokio::sync::mpsc::channel(8);
    let running = Arc::new(Running {
        stdin: Mutex::new(stdin),
        pending: StdMutex::new(HashMap::from([(
            init_key,
            Pending {
                reply: init_tx,
                events: ev_tx,
            },
        )])),
        init: std::sync::OnceLock::new(),
    });
    let reader = tokio::spawn(read_loop(
        name.clone(),
        stdout,
        running.clone(),
        max_message,
        unsolicited.clone(),
    ));
    write(&running, &init_req, name)
        .await
        .map_err(|e| e.to_string())?;
    let reply = tokio::time::timeout(Duration::from_secs(30), init_rx)
        .await
        .map_err(|_| "no answer to initialize within 30 s".to_string())?
        .map_err(|_| "exited before answering initialize".to_string())?;
    if reply.kind() != Kind::Response {
        return Err(format!(
            "initialize refused: {}",
            reply.to_string_lossless()
        ));
    }
    let init = reply.result();
    let revision = init
        .get("protocolVersion")
        .and_then(Value::as_str)
        .and_then(Revision::parse)
        .filter(|r| r.is_handshake())
        .ok_or_else(|| format!("unsupported protocolVersion in {init}"))?;
    write(
        &running,
        &Message::notification("notifications/initialized", None),
        name,
    )
    .await
    .map_err(|e| e.to_string())?;
    let _ = running.init.set((init, revision));
    Ok((running, child, reader))
}

async fn read_loop(
    name: Arc<str>,
    stdout: tokio::process::ChildStdout,
    running: Arc<Running>,
    max_message: usize,
    unsolicited: Unsolicited,
) {
    let mut out = stdout;
    let mut lines = framing::LineBuffer::new(max_message);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match out.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let Some(chunk) = buf.get(..n) else { return };
        for line in lines.feed(chunk) {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(upstream = %name, error = %e, "dropped an oversized line from server");
                    continue;
                }
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match Message::parse(&line) {
                Ok(m) => route(&name, &running, m, &unsolicited).await,
                Err(e) => tracing::warn!(
                    upstream = %name,
                    error = %e,
                    line = %String::from_utf8_lossy(&line).chars().take(200).collect::<String>(),
                    "server printed something that is not JSON-RPC"
                ),
            }
        }
    }
}

async fn route(name: &str, running: &Running, m: Message, unsolicited: &Unsolicited) {
    match m.kind() {
        Kind::Response | Kind::Error => {
            let key = m.id().map(|i| i.get().to_owned()).unwrap_or_default();
            let p = lock(&running.pending).remove(&key);
            match p {
                Some(p) => {
                    let _ = p.reply.send(m);
                }
                None => tracing::debug!(upstream = %name, id = %key, "response to no pending call"),
            }
        }
        Kind::Request if m.method() == Some("ping") => {
            if let Some(id) = m.id_owned() {
                let _ = write(running, &Message::response(id, json!({})), name).await;
            }
        }
        Kind::Request | Kind::Notification => {
            let params = m.params();
            let target = params
                .get("_meta")
                .and_then(|mm| mm.get("progressToken"))
                .or_else(|| params.get("progressToken"))
                .or_else(|| {
                    (m.method() == Some("notifications/cancelled"))
                        .then(|| params.get("requestId"))
                        .flatten()
                })
                .map(|v| v.to_string());
            let events = {
                let pending = lock(&running.pending);
                match target {
                    Some(t) => pending.get(&t).map(|p| p.events.clone()),
                    // Without a token, a message belongs to the one call in
                    // flight, if there is exactly one.
                    None if m.kind() == Kind::Request
                        || m.method() == Some("notifications/message") =>
                    {
                        let mut it = pending.values();
                        match (it.next(), it.next()) {
                            (Some(p), None) => Some(p.events.clone()),
                            _ => None,
                        }
                    }
                    None => None,
                }
            };
            match events {
                Some(ev) => {
                    let _ = ev.send(m).await;
                }
                None => unsolicited(m),
            }
        }
    }
}
