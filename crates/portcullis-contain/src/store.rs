//! The state store: one trait for everything containment must remember
//! across restarts (quarantines, revocations, the kill switch, and later
//! tool pins and risk baselines), with an embedded file-backed store by
//! default and an in-memory one for tests and throwaway fronts.
//!
//! The trait is asynchronous and speaks in namespaced JSON entries with an
//! optional wall-clock expiry, so a shared store (Redis, for several
//! replicas) can implement it without changing a caller. Reads on the hot
//! path never come here: callers keep their own in-memory view and write
//! through.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use tokio::sync::broadcast;

/// A store operation that failed; containment callers treat it as "not
/// recorded" and say so rather than pretend.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Reading or writing the backing file failed.
    #[error("state store {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The store failed earlier and refuses further writes.
    #[error("state store is unavailable: {0}")]
    Unavailable(String),
    /// The write is in force here and queued: a shared store that cannot
    /// reach its server retries it until stored (nothing is lost).
    #[error("state store: not yet stored, queued and retried until stored: {0}")]
    Queued(String),
    /// A value could not be encoded.
    #[error("state store: cannot encode value: {0}")]
    Encode(String),
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Key within its namespace.
    pub key: String,
    /// The value (JSON).
    pub value: Value,
    /// Wall-clock expiry (Unix seconds); expired entries are never listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// A change made through a store, for whoever keeps a view of it (the
/// embedded store reports its own writes; a shared one, other replicas').
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The namespace.
    pub ns: String,
    /// The key.
    pub key: String,
    /// The new entry, or `None` when removed.
    pub entry: Option<Entry>,
}

/// What `/readyz`, `/admin/store` and fail-closed checks need to know of a
/// store's link to its backing server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreStatus {
    /// Reads are current: the server is reachable and (for a shared store)
    /// other replicas' changes arrive as they happen. When false, reads
    /// answer from the last known state.
    pub current: bool,
    /// Writes accepted here and not yet stored (retried until they are).
    pub pending_writes: usize,
    /// The last failure, if any (kept after recovery).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Default for StoreStatus {
    fn default() -> StoreStatus {
        StoreStatus {
            current: true,
            pending_writes: 0,
            last_error: None,
        }
    }
}

/// Where containment state lives.
pub trait StateStore: Send + Sync + 'static {
    /// Writes an entry (durably, before the future resolves).
    fn put<'a>(
        &'a self,
        ns: &'a str,
        key: &'a str,
        value: Value,
        expires_at: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Writes several entries of one namespace at once (one sync for the
    /// lot where the store can; the default writes them one by one).
    fn put_many<'a>(
        &'a self,
        ns: &'a str,
        entries: Vec<Entry>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            for e in entries {
                self.put(ns, &e.key.clone(), e.value, e.expires_at).await?;
            }
            Ok(())
        })
    }

    /// Removes an entry; `true` if it existed.
    fn remove<'a>(&'a self, ns: &'a str, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Every live (unexpired) entry of a namespace.
    fn list<'a>(&'a self, ns: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, StoreError>>;

    /// One live entry (the default reads the namespace; a shared store
    /// answers with one lookup).
    fn get<'a>(
        &'a self,
        ns: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
        Box::pin(async move { Ok(self.list(ns).await?.into_iter().find(|e| e.key == key)) })
    }

    /// Several live entries of one namespace, in the order of `keys` (the
    /// default looks each up; a shared store answers in one round trip).
    fn get_many<'a>(
        &'a self,
        ns: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<Entry>>, StoreError>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                out.push(self.get(ns, k).await?);
            }
            Ok(out)
        })
    }

    /// Whether other gateway replicas share this store, so state that is
    /// otherwise per process (session bindings, their taint) must be kept
    /// here too. The embedded stores are not shared.
    fn shared(&self) -> bool {
        false
    }

    /// Whether reads are current and writes reach the backing store; a
    /// shared store that lost its server says what it still holds. The
    /// embedded stores are always current.
    fn status(&self) -> StoreStatus {
        StoreStatus::default()
    }

    /// The store's global rate limiter, when it has one (a shared store
    /// keeps limits across replicas; the embedded stores have none).
    fn limiter(&self) -> Option<&dyn crate::rate::SharedLimiter> {
        None
    }

    /// Waits up to `within` for queued writes to be stored (at shutdown);
    /// `true` when none is left. The embedded stores write at once.
    fn flush(&self, within: std::time::Duration) -> BoxFuture<'_, bool> {
        let _ = within;
        Box::pin(async { true })
    }

    /// Changes as they happen.
    fn changes(&self) -> broadcast::Receiver<Change>;

    /// A short description for logs and `/admin/store` (kind and place).
    fn describe(&self) -> String;
}

type Map = BTreeMap<(String, String), Entry>;

fn live(map: &Map, ns: &str, now: u64) -> Vec<Entry> {
    map.range((ns.to_owned(), String::new())..)
        .take_while(|((n, _), _)| n == ns)
        .filter(|(_, e)| e.expires_at.is_none_or(|t| t > now))
        .map(|(_, e)| e.clone())
        .collect()
}

/// A store that lives and dies with the process (tests, `wrap` without a
/// state folder).
pub struct MemoryStore {
    map: Mutex<Map>,
    tx: broadcast::Sender<Change>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            map: Mutex::new(Map::new()),
            tx: broadcast::channel(256).0,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl StateStore for MemoryStore {
    fn put<'a>(
        &'a self,
        ns: &'a str,
        key: &'a str,
        value: Value,
        expires_at: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let e = Entry {
                key: key.to_owned(),
                value,
                expires_at,
            };
            lock(&self.map).insert((ns.to_owned(), key.to_owned()), e.clone());
            let _ = self.tx.send(Change {
                ns: ns.to_owned(),
                key: key.to_owned(),
                entry: Some(e),
            });
            Ok(())
        })
    }

    fn remove<'a>(&'a self, ns: &'a str, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let had = lock(&self.map)
                .remove(&(ns.to_owned(), key.to_owned()))
                .is_some();
            if had {
                let _ = self.tx.send(Change {
                    ns: ns.to_owned(),
                    key: key.to_owned(),
                    entry: None,
                });
            }
            Ok(had)
        })
    }

    fn list<'a>(&'a self, ns: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, StoreError>> {
        Box::pin(async move { Ok(live(&lock(&self.map), ns, crate::now_unix())) })
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }

    fn describe(&self) -> String {
        "memory (not persistent)".into()
    }
}

/// One journal line.
#[derive(Serialize, Deserialize)]
struct Op {
    ns: String,
    key: String,
    /// The entry; absent for a removal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    put: Option<Entry>,
}

struct Journal {
    file: File,
    map: Map,
    /// Lines in the file, live or superseded (compaction trigger).
    lines: usize,
    failed: Option<String>,
}

/// The embedded persistent store: an append-only JSON Lines journal,
/// `fdatasync`ed before every write is acknowledged, replayed and
/// compacted at open. A torn last line (a crash mid-write) is ignored.
/// Containment writes are rare (admin actions, automatic quarantines), so
/// a write costs one small append and one sync.
pub struct FileStore {
    path: PathBuf,
    inner: Arc<Mutex<Journal>>,
    tx: broadcast::Sender<Change>,
    /// Held (locked) while the store is open: one process per store.
    _lock: Option<Arc<File>>,
}

const JOURNAL: &str = "state.jsonl";

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl FileStore {
    /// Opens (creating) the store in folder `dir`: replays the journal,
    /// drops expired entries and rewrites it compacted.
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(&lock_path, e))?;
        if let Err(e) = lock.try_lock() {
            return Err(StoreError::Unavailable(format!(
                "{} is in use by another process ({e}); give each gateway its own state folder, or a shared store",
                dir.display()
            )));
        }
        let path = dir.join(JOURNAL);
        let mut map = Map::new();
        match File::open(&path) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    let line = line.map_err(|e| io_err(&path, e))?;
                    // A torn or foreign line is skipped, not fatal: losing
                    // one half-written change beats refusing to start.
                    let Ok(op) = serde_json::from_str::<Op>(&line) else {
                        tracing::warn!(file = %path.display(), "state store: skipping an unreadable journal line");
                        continue;
                    };
                    match op.put {
                        Some(e) => {
                            map.insert((op.ns, op.key), e);
                        }
                        None => {
                            map.remove(&(op.ns, op.key));
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, e)),
        }
        let now = crate::now_unix();
        map.retain(|_, e| e.expires_at.is_none_or(|t| t > now));
        let file = Self::compact(&path, &map)?;
        Ok(FileStore {
            inner: Arc::new(Mutex::new(Journal {
                file,
                lines: map.len(),
                map,
                failed: None,
            })),
            path,
            tx: broadcast::channel(256).0,
            _lock: Some(Arc::new(lock)),
        })
    }

    /// Writes the live entries to a fresh journal and swaps it in.
    fn compact(path: &Path, map: &Map) -> Result<File, StoreError> {
        let tmp = path.with_extension("jsonl.tmp");
        {
            let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
            for ((ns, key), e) in map {
                let line = serde_json::to_string(&Op {
                    ns: ns.clone(),
                    key: key.clone(),
                    put: Some(e.clone()),
                })
                .map_err(|e| StoreError::Encode(e.to_string()))?;
                writeln!(f, "{line}").map_err(|e| io_err(&tmp, e))?;
            }
            f.sync_all().map_err(|e| io_err(&tmp, e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
        if let Some(dir) = path.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| io_err(path, e))
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one op and syncs it, then applies it to the map.
    fn apply(&self, op: Op) -> Result<bool, StoreError> {
        let line = serde_json::to_string(&op).map_err(|e| StoreError::Encode(e.to_string()))?;
        let mut j = lock(&self.inner);
        if let Some(f) = &j.failed {
            return Err(StoreError::Unavailable(f.clone()));
        }
        let written = j
            .file
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| j.file.sync_data());
        if let Err(e) = written {
            // After a failed append the file's tail is unknown: refuse
            // further writes rather than interleave with a torn line.
            j.failed = Some(e.to_string());
            return Err(io_err(&self.path, e));
        }
        j.lines += 1;
        let k = (op.ns, op.key);
        let had = match op.put {
            Some(e) => j.map.insert(k, e).is_some(),
            None => j.map.remove(&k).is_some(),
        };
        if j.lines > 1024 && j.lines > 4 * j.map.len() {
            let map = j.map.clone();
            match Self::compact(&self.path, &map) {
                Ok(f) => {
                    j.file = f;
                    j.lines = map.len();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "state store: compaction failed; journal kept")
                }
            }
        }
        Ok(had)
    }

    /// Appends several ops with one sync.
    fn apply_many(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut text = String::new();
        for op in &ops {
            text.push_str(
                &serde_json::to_string(op).map_err(|e| StoreError::Encode(e.to_string()))?,
            );
            text.push('\n');
        }
        let mut j = lock(&self.inner);
        if let Some(f) = &j.failed {
            return Err(StoreError::Unavailable(f.clone()));
        }
        let written = j
            .file
            .write_all(text.as_bytes())
            .and_then(|_| j.file.sync_data());
        if let Err(e) = written {
            j.failed = Some(e.to_string());
            return Err(io_err(&self.path, e));
        }
        j.lines += ops.len();
        for op in ops {
            let k = (op.ns, op.key);
            match op.put {
                Some(e) => j.map.insert(k, e),
                None => j.map.remove(&k),
            };
        }
        if j.lines > 1024 && j.lines > 4 * j.map.len() {
            let map = j.map.clone();
            match Self::compact(&self.path, &map) {
                Ok(f) => {
                    j.file = f;
                    j.lines = map.len();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "state store: compaction failed; journal kept")
                }
            }
        }
        Ok(())
    }

    fn handle(&self) -> FileStore {
        FileStore {
            path: self.path.clone(),
            inner: self.inner.clone(),
            tx: self.tx.clone(),
            _lock: None,
        }
    }

    async fn run(&self, op: Op) -> Result<bool, StoreError> {
        let me = self.handle();
        tokio::task::spawn_blocking(move || me.apply(op))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }
}

impl StateStore for FileStore {
    fn put<'a>(
        &'a self,
        ns: &'a str,
        key: &'a str,
        value: Value,
        expires_at: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let e = Entry {
                key: key.to_owned(),
                value,
                expires_at,
            };
            self.run(Op {
                ns: ns.to_owned(),
                key: key.to_owned(),
                put: Some(e.clone()),
            })
            .await?;
            let _ = self.tx.send(Change {
                ns: ns.to_owned(),
                key: key.to_owned(),
                entry: Some(e),
            });
            Ok(())
        })
    }

    fn put_many<'a>(
        &'a self,
        ns: &'a str,
        entries: Vec<Entry>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if entries.is_empty() {
                return Ok(());
            }
            let ops: Vec<Op> = entries
                .iter()
                .map(|e| Op {
                    ns: ns.to_owned(),
                    key: e.key.clone(),
                    put: Some(e.clone()),
                })
                .collect();
            let me = self.handle();
            tokio::task::spawn_blocking(move || me.apply_many(ops))
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))??;
            for e in entries {
                let _ = self.tx.send(Change {
                    ns: ns.to_owned(),
                    key: e.key.clone(),
                    entry: Some(e),
                });
            }
            Ok(())
        })
    }

    fn remove<'a>(&'a self, ns: &'a str, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            if !lock(&self.inner)
                .map
                .contains_key(&(ns.to_owned(), key.to_owned()))
            {
                return Ok(false);
            }
            let had = self
                .run(Op {
                    ns: ns.to_owned(),
                    key: key.to_owned(),
                    put: None,
                })
                .await?;
            if had {
                let _ = self.tx.send(Change {
                    ns: ns.to_owned(),
                    key: key.to_owned(),
                    entry: None,
                });
            }
            Ok(had)
        })
    }

    fn list<'a>(&'a self, ns: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, StoreError>> {
        Box::pin(async move { Ok(live(&lock(&self.inner).map, ns, crate::now_unix())) })
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}
