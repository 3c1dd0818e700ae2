//! [`AuditLog`]: callers serialise and enqueue; one OS thread does all file I/O.
//!
//! Appends go into a mutex-protected `Vec` (the lock is held only for the
//! push). The writer thread swaps the whole queue out, formats and hashes
//! every record of the batch into one buffer, writes it with one
//! `write_all`, syncs per [`SyncMode`], then publishes the highest
//! acknowledged ticket in an atomic and wakes waiters through a
//! [`tokio::sync::Notify`].

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::Notify;

use super::files::{self, Tail};
use super::key::{self, SigningKey};
use super::record::{self, Encoded, TS_LEN, ZERO_HASH};
use super::{AnchorSink, AuditConfig, AuditError, SyncMode};

const RUNNING: u8 = 0;
const FAILED: u8 = 1;
const CLOSED: u8 = 2;

const CHECKPOINT_KIND: &[u8] = b"\"kind\":\"checkpoint\"";
const OPEN_KIND: &[u8] = b"\"kind\":\"open\"";
const RECOVERY_KIND: &[u8] = b"\"kind\":\"recovery\"";

/// Names one append so the caller can wait until it is durable.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub struct Ticket(pub u64);

/// A snapshot of the writer's counters, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Caller appends acknowledged.
    pub appended: u64,
    /// Records written, including checkpoint, open and recovery records.
    pub records: u64,
    /// Bytes written to the log.
    pub bytes: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Rotations done.
    pub rotations: u64,
    /// `fdatasync` calls on the log.
    pub fsyncs: u64,
    /// Log write or sync errors (the first one stops the writer).
    pub write_errors: u64,
    /// Anchor sink write errors (these do not stop the writer).
    pub anchor_errors: u64,
    /// `seq` of the last record written.
    pub last_seq: u64,
    /// Appends not yet acknowledged.
    pub pending: u64,
    /// The error that stopped the writer, or the last anchor error.
    pub last_error: Option<String>,
}

/// The append-only, hash-chained audit log; `Send + Sync`, share it in an `Arc`.
pub struct AuditLog {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    public_hex: String,
}

/// State shared between callers and the writer thread.
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    acked: AtomicU64,
    state: AtomicU8,
    error: Mutex<Option<String>>,
    notify: Notify,
    size_hint: AtomicUsize,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    appended: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    checkpoints: AtomicU64,
    rotations: AtomicU64,
    fsyncs: AtomicU64,
    write_errors: AtomicU64,
    anchor_errors: AtomicU64,
    last_seq: AtomicU64,
}

struct Queue {
    items: Vec<Encoded>,
    /// The last ticket handed out.
    next_ticket: u64,
    /// The last ticket actually queued (tickets refused after a failure or shutdown are skipped).
    last_queued: u64,
    writer_waiting: bool,
    shutdown: bool,
    stopped: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn check(&self, t: Ticket) -> Option<Result<(), AuditError>> {
        if self.acked.load(Ordering::Acquire) >= t.0 {
            return Some(Ok(()));
        }
        match self.state.load(Ordering::Acquire) {
            RUNNING => None,
            state => {
                if self.acked.load(Ordering::Acquire) >= t.0 {
                    return Some(Ok(()));
                }
                let msg = if state == FAILED {
                    lock(&self.error)
                        .clone()
                        .unwrap_or_else(|| "writer stopped".into())
                } else {
                    "audit log is shut down".into()
                };
                Some(Err(AuditError::Failed(msg)))
            }
        }
    }

    fn fail(&self, msg: String) {
        tracing::error!(error = %msg, "audit log writer failed; no further records will be written");
        self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        *lock(&self.error) = Some(msg);
        {
            let mut q = lock(&self.queue);
            q.stopped = true;
            q.items.clear();
        }
        self.state.store(FAILED, Ordering::Release);
        self.notify.notify_waiters();
    }
}

impl AuditLog {
    /// Opens (or creates) the log: loads or creates the key, recovers a
    /// partial last line, continues the chain from the last record and spawns
    /// the writer thread. Does blocking I/O: call it at startup or from
    /// `spawn_blocking`.
    pub fn open(cfg: AuditConfig) -> Result<AuditLog, AuditError> {
        let key = key::load_or_create(&cfg.key_path)?;
        let live = cfg.path.clone();
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| AuditError::Io { path, source }
        };
        let dir = files::parent_dir(&live);
        let dir_meta = std::fs::metadata(&dir).map_err(io_err(&dir))?;
        if !dir_meta.is_dir() {
            return Err(AuditError::Io {
                path: dir,
                source: io::Error::other("not a directory"),
            });
        }
        if live.is_dir() {
            return Err(AuditError::Io {
                path: live,
                source: io::Error::other("is a directory, expected the live log file"),
            });
        }

        let mut chain = ChainStart::default();
        let mut recoveries: Vec<Vec<u8>> = Vec::new();
        let mut live_first_seq = None;
        let live_len = match std::fs::metadata(&live) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&live)(e)),
        };
        if live_len > 0 {
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&live)
                .map_err(io_err(&live))?;
            let tail = files::read_tail(&mut f, live_len).map_err(io_err(&live))?;
            if let Some(last) = recover(&live, &f, tail, cfg.sync, &mut recoveries)? {
                chain.resume(&live, &last)?;
                let first = files::read_first_line(&mut f).map_err(io_err(&live))?;
                let first_seq = first
                    .as_deref()
                    .and_then(|l| record::parse_line(l).ok())
                    .map(|p| p.seq)
                    .ok_or_else(|| AuditError::Corrupt {
                        path: live.clone(),
                        reason: "first line is not a valid audit record; move the file aside"
                            .into(),
                    })?;
                live_first_seq = Some(first_seq);
            }
        }
        if !chain.resumed {
            let rotated = files::rotated_predecessors(&live).map_err(io_err(&dir))?;
            if let Some(newest) = rotated.last() {
                let mut f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(newest)
                    .map_err(io_err(newest))?;
                let len = f.metadata().map_err(io_err(newest))?.len();
                let tail = files::read_tail(&mut f, len).map_err(io_err(newest))?;
                if let Some(last) = recover(newest, &f, tail, cfg.sync, &mut recoveries)? {
                    chain.resume(newest, &last)?;
                }
            }
        }
        let reason = if chain.resumed { "restart" } else { "new" };

        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&live)
            .map_err(io_err(&live))?;
        let file_len = file.metadata().map_err(io_err(&live))?.len();
        let anchor = match &cfg.anchors {
            None => None,
            Some(AnchorSink::Stdout) => Some(Anchor::Stdout),
            Some(AnchorSink::File(p)) => Some(Anchor::File(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(io_err(p))?,
            )),
        };

        let mut initial = vec![open_body(&live, reason)];
        initial.extend(recoveries);

        let public_hex = key.public_hex.clone();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                items: Vec::with_capacity(1024),
                next_ticket: 0,
                last_queued: 0,
                writer_waiting: false,
                shutdown: false,
                stopped: false,
            }),
            wake: Condvar::new(),
            acked: AtomicU64::new(0),
            state: AtomicU8::new(RUNNING),
            error: Mutex::new(None),
            notify: Notify::new(),
            size_hint: AtomicUsize::new(512),
            counters: Counters::default(),
        });
        shared
            .counters
            .last_seq
            .store(chain.next_seq - 1, Ordering::Relaxed);
        let now = Instant::now();
        let writer = Writer {
            shared: Arc::clone(&shared),
            file_first_seq: live_first_seq.unwrap_or(chain.next_seq),
            cfg,
            key,
            file,
            file_len,
            dir,
            next_seq: chain.next_seq,
            prev: chain.prev,
            last_micros: chain.last_micros,
            since_checkpoint: 0,
            last_checkpoint_at: now,
            dirty: false,
            last_sync: now,
            anchor,
            anchor_dirty: false,
            out: Vec::with_capacity(1 << 16),
            anchor_out: Vec::new(),
            batch_records: 0,
            batch_checkpoints: 0,
        };
        let handle = std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn(move || writer.run(initial))
            .map_err(|source| AuditError::Io {
                path: PathBuf::from("<audit writer thread>"),
                source,
            })?;
        Ok(AuditLog {
            shared,
            thread: Mutex::new(Some(handle)),
            public_hex,
        })
    }

    /// Queues one record; `body` should serialise to a JSON object whose
    /// members are merged into the record. Never blocks on I/O. After a
    /// writer failure or shutdown the ticket is still returned, and
    /// [`AuditLog::durable`] fails for it.
    pub fn append<T: Serialize + ?Sized>(&self, kind: &str, body: &T) -> Ticket {
        let hint = self.shared.size_hint.load(Ordering::Relaxed);
        let enc = record::encode(kind, body, hint);
        let len = enc.buf.len();
        if len > hint || len + 256 < hint {
            self.shared.size_hint.store(len + 64, Ordering::Relaxed);
        }
        let mut q = lock(&self.shared.queue);
        q.next_ticket += 1;
        let ticket = Ticket(q.next_ticket);
        if q.stopped || q.shutdown {
            return ticket;
        }
        q.items.push(enc);
        q.last_queued = ticket.0;
        let wake = std::mem::take(&mut q.writer_waiting);
        drop(q);
        if wake {
            self.shared.wake.notify_one();
        }
        ticket
    }

    /// Whether the ticket's record is acknowledged (a cheap atomic load).
    pub fn is_durable(&self, t: Ticket) -> bool {
        self.shared.acked.load(Ordering::Acquire) >= t.0
    }

    /// Resolves once the record is acknowledged per the [`SyncMode`]; fails
    /// if the writer stopped (I/O error or shutdown) first, so the gateway
    /// can fail closed. Works from any runtime thread.
    pub async fn durable(&self, t: Ticket) -> Result<(), AuditError> {
        loop {
            let mut notified = std::pin::pin!(self.shared.notify.notified());
            notified.as_mut().enable();
            if let Some(result) = self.shared.check(t) {
                return result;
            }
            notified.await;
        }
    }

    /// Blocking form of [`AuditLog::durable`] for non-async callers.
    pub fn wait_durable(&self, t: Ticket) -> Result<(), AuditError> {
        loop {
            if let Some(result) = self.shared.check(t) {
                return result;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Whether the writer stopped on an I/O error (one atomic load: the
    /// gateway asks before every decision, to fail closed).
    pub fn is_failed(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == FAILED
    }

    /// A snapshot of the counters, for metrics.
    pub fn stats(&self) -> AuditStats {
        let c = &self.shared.counters;
        let last_queued = lock(&self.shared.queue).last_queued;
        let acked = self.shared.acked.load(Ordering::Acquire);
        AuditStats {
            appended: c.appended.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            rotations: c.rotations.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
            anchor_errors: c.anchor_errors.load(Ordering::Relaxed),
            last_seq: c.last_seq.load(Ordering::Relaxed),
            pending: last_queued.saturating_sub(acked),
            last_error: lock(&self.shared.error).clone(),
        }
    }

    /// The checkpoint-signing public key in hex, to pin when verifying.
    pub fn public_key_hex(&self) -> String {
        self.public_hex.clone()
    }

    /// Drains the queue, writes a final checkpoint, syncs and joins the
    /// writer thread. Idempotent; also run on drop. Blocks.
    pub fn shutdown(&self) {
        lock(&self.shared.queue).shutdown = true;
        self.shared.wake.notify_one();
        let handle = lock(&self.thread).take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                self.shared.fail("audit writer thread panicked".into());
            }
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("public_key", &self.public_hex)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Where the chain continues from.
struct ChainStart {
    resumed: bool,
    next_seq: u64,
    prev: [u8; 32],
    last_micros: i64,
}

impl Default for ChainStart {
    fn default() -> Self {
        ChainStart {
            resumed: false,
            next_seq: 1,
            prev: ZERO_HASH,
            last_micros: 0,
        }
    }
}

impl ChainStart {
    fn resume(&mut self, path: &Path, line: &[u8]) -> Result<(), AuditError> {
        let parsed = record::parse_line(line).map_err(|why| AuditError::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "last line is not a valid audit record ({why}); run `portcullis audit verify` and move the file aside"
            ),
        })?;
        self.resumed = true;
        self.next_seq = parsed.seq + 1;
        self.prev = record::sha256(line);
        self.last_micros = record::parse_ts(parsed.ts).unwrap_or(0);
        Ok(())
    }
}

/// Truncates a partial last line away (queuing a recovery record body) and
/// returns the last complete line.
fn recover(
    path: &Path,
    file: &File,
    tail: Tail,
    sync: SyncMode,
    recoveries: &mut Vec<Vec<u8>>,
) -> Result<Option<Vec<u8>>, AuditError> {
    if let Some((offset, bytes)) = tail.partial {
        let io_err = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        file.set_len(offset).map_err(io_err)?;
        if sync != SyncMode::None {
            file.sync_all().map_err(io_err)?;
        }
        tracing::warn!(
            path = %path.display(),
            offset,
            len = bytes.len(),
            "audit log ended with a partial record (crash mid-write); truncated it and recorded a recovery record"
        );
        let body = serde_json::json!({
            "file": file_name(path),
            "offset": offset,
            "len": bytes.len(),
            "sha256": hex::encode(record::sha256(&bytes)),
        });
        recoveries.push(members(&body));
    }
    Ok(tail.last_line)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The members of a JSON object without braces.
fn members(value: &serde_json::Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    bytes.pop();
    if !bytes.is_empty() {
        bytes.remove(0);
    }
    bytes
}

fn open_body(live: &Path, reason: &str) -> Vec<u8> {
    members(&serde_json::json!({ "file": file_name(live), "reason": reason }))
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

enum Anchor {
    Stdout,
    File(File),
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    cfg: AuditConfig,
    key: SigningKey,
    file: File,
    file_len: u64,
    file_first_seq: u64,
    dir: PathBuf,
    next_seq: u64,
    prev: [u8; 32],
    last_micros: i64,
    since_checkpoint: u64,
    last_checkpoint_at: Instant,
    dirty: bool,
    last_sync: Instant,
    anchor: Option<Anchor>,
    anchor_dirty: bool,
    out: Vec<u8>,
    anchor_out: Vec<u8>,
    batch_records: u64,
    batch_checkpoints: u64,
}

type Step = Result<(), String>;

impl Writer {
    fn run(mut self, initial: Vec<Vec<u8>>) {
        let result = self.start(initial).and_then(|()| self.main_loop());
        match result {
            Ok(()) => {
                self.shared.state.store(CLOSED, Ordering::Release);
                self.shared.notify.notify_waiters();
            }
            Err(msg) => self.shared.fail(msg),
        }
    }

    fn start(&mut self, initial: Vec<Vec<u8>>) -> Step {
        let ts = self.stamp();
        for (i, inner) in initial.iter().enumerate() {
            let kind = if i == 0 { OPEN_KIND } else { RECOVERY_KIND };
            self.push(&ts, kind, inner);
        }
        self.flush()?;
        if self.cfg.sync != SyncMode::None {
            self.sync()?;
            files::sync_dir(&self.dir).map_err(|e| format!("sync {}: {e}", self.dir.display()))?;
        }
        Ok(())
    }

    fn main_loop(&mut self) -> Step {
        let mut batch: Vec<Encoded> = Vec::with_capacity(1024);
        loop {
            let (last_ticket, shutting_down) = self.next_batch(&mut batch);
            if shutting_down {
                return self.finish();
            }
            if !batch.is_empty() {
                let ts = self.stamp();
                let n = batch.len() as u64;
                for enc in batch.drain(..) {
                    self.push(&ts, enc.kind_field(), enc.inner());
                }
                self.flush()?;
                self.shared
                    .counters
                    .appended
                    .fetch_add(n, Ordering::Relaxed);
                self.shared.acked.store(last_ticket, Ordering::Release);
                self.shared.notify.notify_waiters();
            }
            self.timed_work()?;
            if let Some(limit) = self.cfg.rotate_bytes {
                if self.file_len > limit {
                    self.rotate()?;
                }
            }
        }
    }

    /// Waits for work; swaps the queue into `batch`. Returns the last queued
    /// ticket and whether to shut down.
    fn next_batch(&mut self, batch: &mut Vec<Encoded>) -> (u64, bool) {
        let mut q = lock(&self.shared.queue);
        loop {
            if !q.items.is_empty() {
                std::mem::swap(&mut q.items, batch);
                return (q.last_queued, false);
            }
            if q.shutdown {
                return (0, true);
            }
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            if timeout == Some(Duration::ZERO) {
                return (0, false);
            }
            q.writer_waiting = true;
            q = match timeout {
                Some(t) => {
                    self.shared
                        .wake
                        .wait_timeout(q, t)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .shared
                    .wake
                    .wait(q)
                    .unwrap_or_else(PoisonError::into_inner),
            };
            q.writer_waiting = false;
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let sync = (self.dirty && self.cfg.sync == SyncMode::Group)
            .then(|| self.last_sync + self.cfg.group_commit);
        let checkpoint = (self.since_checkpoint > 0)
            .then(|| self.last_checkpoint_at + self.cfg.checkpoint_interval);
        match (sync, checkpoint) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn timed_work(&mut self) -> Step {
        let now = Instant::now();
        if self.since_checkpoint > 0
            && now >= self.last_checkpoint_at + self.cfg.checkpoint_interval
        {
            let ts = self.stamp();
            self.push_checkpoint(&ts);
            self.flush()?;
        }
        if self.cfg.sync == SyncMode::Group
            && self.dirty
            && now >= self.last_sync + self.cfg.group_commit
        {
            self.sync()?;
        }
        Ok(())
    }

    /// Signs what is unsigned and syncs: at shutdown and before rotation.
    fn finish(&mut self) -> Step {
        if self.since_checkpoint > 0 {
            let ts = self.stamp();
            self.push_checkpoint(&ts);
            self.flush()?;
        }
        if self.cfg.sync != SyncMode::None {
            self.sync()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> Step {
        // The old file ends as a clean shutdown would: checkpointed and synced.
        self.finish()?;
        let live = self.cfg.path.clone();
        let rotated = files::rotated_name(&live, self.file_first_seq);
        if rotated.exists() {
            return Err(format!(
                "cannot rotate {}: {} already exists",
                live.display(),
                rotated.display()
            ));
        }
        std::fs::rename(&live, &rotated)
            .map_err(|e| format!("rotate {} -> {}: {e}", live.display(), rotated.display()))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&live)
            .map_err(|e| format!("open {}: {e}", live.display()))?;
        self.file_len = 0;
        self.file_first_seq = self.next_seq;
        self.dirty = false;
        let ts = self.stamp();
        let body = open_body(&live, "rotate");
        self.push(&ts, OPEN_KIND, &body);
        self.flush()?;
        if self.cfg.sync != SyncMode::None {
            self.sync()?;
            files::sync_dir(&self.dir).map_err(|e| format!("sync {}: {e}", self.dir.display()))?;
        }
        self.shared
            .counters
            .rotations
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The `ts` for the next records: now, but never before the last one.
    fn stamp(&mut self) -> [u8; TS_LEN] {
        self.last_micros = now_micros().max(self.last_micros);
        record::format_ts(self.last_micros)
    }

    fn push(&mut self, ts: &[u8; TS_LEN], kind_field: &[u8], inner: &[u8]) {
        self.prev = record::push_line(
            &mut self.out,
            self.next_seq,
            ts,
            kind_field,
            inner,
            &self.prev,
        );
        self.next_seq += 1;
        self.since_checkpoint += 1;
        self.batch_records += 1;
        if self.since_checkpoint >= self.cfg.checkpoint_every.max(1) {
            self.push_checkpoint(ts);
        }
    }

    fn push_checkpoint(&mut self, ts: &[u8; TS_LEN]) {
        let seq = self.next_seq;
        let head = hex::encode(self.prev);
        let sig = self
            .key
            .pair
            .sign(&record::checkpoint_message(seq, ts, &head));
        let inner = format!(
            "\"head\":\"{head}\",\"count\":{},\"key\":\"{}\",\"sig\":\"{}\"",
            seq - 1,
            self.key.public_hex,
            hex::encode(sig.as_ref())
        );
        let start = self.out.len();
        self.prev = record::push_line(
            &mut self.out,
            seq,
            ts,
            CHECKPOINT_KIND,
            inner.as_bytes(),
            &self.prev,
        );
        if self.anchor.is_some() {
            self.anchor_out
                .extend_from_slice(self.out.get(start..).unwrap_or_default());
        }
        self.next_seq += 1;
        self.since_checkpoint = 0;
        self.last_checkpoint_at = Instant::now();
        self.batch_records += 1;
        self.batch_checkpoints += 1;
    }

    /// Writes the pending buffer with one `write_all`, then syncs in `Record` mode.
    fn flush(&mut self) -> Step {
        if self.out.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(&self.out)
            .map_err(|e| format!("write {}: {e}", self.cfg.path.display()))?;
        let len = self.out.len() as u64;
        self.file_len += len;
        self.out.clear();
        match self.cfg.sync {
            SyncMode::Record => self.sync()?,
            SyncMode::Group => self.dirty = true,
            SyncMode::None => {}
        }
        let c = &self.shared.counters;
        c.bytes.fetch_add(len, Ordering::Relaxed);
        c.records
            .fetch_add(std::mem::take(&mut self.batch_records), Ordering::Relaxed);
        c.checkpoints.fetch_add(
            std::mem::take(&mut self.batch_checkpoints),
            Ordering::Relaxed,
        );
        c.last_seq.store(self.next_seq - 1, Ordering::Relaxed);
        if !self.anchor_out.is_empty() {
            self.write_anchors();
        }
        Ok(())
    }

    fn write_anchors(&mut self) {
        let result = match &mut self.anchor {
            None => Ok(()),
            Some(Anchor::Stdout) => {
                let mut out = io::stdout().lock();
                out.write_all(&self.anchor_out).and_then(|()| out.flush())
            }
            Some(Anchor::File(f)) => {
                let r = f.write_all(&self.anchor_out);
                if r.is_ok() && self.cfg.sync == SyncMode::Record {
                    f.sync_data()
                } else {
                    self.anchor_dirty = r.is_ok();
                    r
                }
            }
        };
        self.anchor_out.clear();
        if let Err(e) = result {
            let msg = format!("anchor write: {e}");
            tracing::warn!(error = %msg, "audit anchor export failed");
            self.shared
                .counters
                .anchor_errors
                .fetch_add(1, Ordering::Relaxed);
            *lock(&self.shared.error) = Some(msg);
        }
    }

    fn sync(&mut self) -> Step {
        self.file
            .sync_data()
            .map_err(|e| format!("fdatasync {}: {e}", self.cfg.path.display()))?;
        self.dirty = false;
        self.last_sync = Instant::now();
        self.shared.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        if std::mem::take(&mut self.anchor_dirty) {
            if let Some(Anchor::File(f)) = &self.anchor {
                if let Err(e) = f.sync_data() {
                    tracing::warn!(error = %e, "audit anchor fsync failed");
                    self.shared
                        .counters
                        .anchor_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }
}
