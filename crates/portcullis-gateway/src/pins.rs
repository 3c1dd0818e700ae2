//! Tool pinning (rug-pull defence): the first definition of each tool seen
//! from an upstream (or the one an admin approved) is pinned in the state
//! store; a later `tools/list` with a different definition hides that tool
//! — or, by config, the whole server — until an admin approves the change.
//! The changed definition is kept so `portcullis pins diff` can show what
//! changed.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use portcullis_contain::Containment;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Store namespace of approved pins.
pub const NS_PIN: &str = "pin";
/// Store namespace of changed definitions waiting for approval.
pub const NS_PENDING: &str = "pin-pending";

/// `[pinning]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinCfg {
    /// Pin tools at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// What a changed definition hides until approved.
    #[serde(default)]
    pub on_change: OnChange,
}

fn yes() -> bool {
    true
}

impl Default for PinCfg {
    fn default() -> Self {
        PinCfg {
            enabled: true,
            on_change: OnChange::default(),
        }
    }
}

/// What a changed tool definition hides.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnChange {
    /// Only that tool.
    #[default]
    HideTool,
    /// Every tool of that server.
    HideServer,
}

/// One pinned (or pending) definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pin {
    /// Upstream name.
    pub server: String,
    /// The tool's name at the upstream.
    pub tool: String,
    /// `sha256:…` of the canonical definition.
    pub hash: String,
    /// The canonical definition (for diffs).
    pub definition: Value,
    /// `first-use`, `admin:<id>`, or `pending` for a change not approved.
    pub by: String,
    /// When (Unix seconds).
    pub at: u64,
}

fn key(server: &str, tool: &str) -> String {
    format!("{server}/{tool}")
}

/// What a definition is, against its pin.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Matches its pin (or pinning is off).
    Trusted,
    /// Matches its pin again after a change that was never approved: the
    /// pending change is dropped (remove it from the store).
    Restored(String),
    /// Not seen before: pinned now (store it).
    FirstSeen(Pin),
    /// Differs from its pin: hidden; `Some` the first time this change is
    /// seen (store and audit it).
    Changed(Option<Pin>),
}

/// Pins and pending changes, in memory, written through by the caller.
#[derive(Default)]
pub struct Pins {
    cfg: PinCfg,
    pinned: RwLock<HashMap<String, Pin>>,
    pending: RwLock<HashMap<String, Pin>>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Pins {
    /// Empty pins under `cfg`.
    pub fn new(cfg: PinCfg) -> Pins {
        Pins {
            cfg,
            ..Pins::default()
        }
    }

    /// Loads pins and pending changes from the store.
    pub async fn load(&self, state: &Containment) -> usize {
        let mut n = 0;
        for (ns, map) in [(NS_PIN, &self.pinned), (NS_PENDING, &self.pending)] {
            match state.store().list(ns).await {
                Ok(entries) => {
                    let mut m = write(map);
                    for e in entries {
                        if let Ok(p) = serde_json::from_value::<Pin>(e.value) {
                            m.insert(e.key, p);
                            n += 1;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, ns, "pins not loaded"),
            }
        }
        n
    }

    /// Judges one tool definition from `server`.
    pub fn admit(&self, server: &str, tool: &Value) -> Admission {
        if !self.cfg.enabled {
            return Admission::Trusted;
        }
        let name = tool.get("name").and_then(Value::as_str).unwrap_or("");
        let k = key(server, name);
        let hash = portcullis_inspect::pin::hash(tool);
        let now = portcullis_contain::now_unix();
        let pin = |by: &str| Pin {
            server: server.to_owned(),
            tool: name.to_owned(),
            hash: hash.clone(),
            definition: portcullis_inspect::pin::definition(tool),
            by: by.to_owned(),
            at: now,
        };
        let known = read(&self.pinned).get(&k).map(|p| p.hash.clone());
        match known {
            Some(h) if h == hash => match write(&self.pending).remove(&k) {
                Some(_) => Admission::Restored(k),
                None => Admission::Trusted,
            },
            Some(_) => {
                let mut pending = write(&self.pending);
                if pending.get(&k).is_some_and(|p| p.hash == hash) {
                    return Admission::Changed(None);
                }
                let p = pin("pending");
                pending.insert(k, p.clone());
                Admission::Changed(Some(p))
            }
            None => {
                let p = pin("first-use");
                write(&self.pinned).insert(k, p.clone());
                Admission::FirstSeen(p)
            }
        }
    }

    /// Whether a tool may be used now: not changed-unapproved, and not on a
    /// server hidden because one of its tools changed (`hide-server`).
    pub fn usable(&self, server: &str, tool: &str) -> bool {
        let pending = read(&self.pending);
        if pending.is_empty() {
            return true;
        }
        match self.cfg.on_change {
            OnChange::HideTool => !pending.contains_key(&key(server, tool)),
            OnChange::HideServer => !pending.values().any(|p| p.server == server),
        }
    }

    /// Approves the pending change of a tool: it becomes the pin. Returns
    /// the new pin, or `None` when nothing is pending.
    pub fn approve(&self, server: &str, tool: &str, by: &str) -> Option<Pin> {
        let k = key(server, tool);
        let mut p = write(&self.pending).remove(&k)?;
        p.by = by.to_owned();
        p.at = portcullis_contain::now_unix();
        write(&self.pinned).insert(k, p.clone());
        Some(p)
    }

    /// Whether an admin approved exactly this definition of the tool (so
    /// its poisoning findings are recorded but do not hide it).
    pub fn approved_by_admin(&self, server: &str, tool: &str, def: &Value) -> bool {
        read(&self.pinned).get(&key(server, tool)).is_some_and(|p| {
            p.by.starts_with("admin:") && p.hash == portcullis_inspect::pin::hash(def)
        })
    }

    /// Marks the current pin of a tool as approved by `by` (for a tool held
    /// for poisoning, which has no pending change to approve). `None` when
    /// the tool has no pin.
    pub fn acknowledge(&self, server: &str, tool: &str, by: &str) -> Option<Pin> {
        let mut pinned = write(&self.pinned);
        let p = pinned.get_mut(&key(server, tool))?;
        p.by = by.to_owned();
        p.at = portcullis_contain::now_unix();
        Some(p.clone())
    }

    /// The pin and the pending change of a tool.
    pub fn get(&self, server: &str, tool: &str) -> (Option<Pin>, Option<Pin>) {
        let k = key(server, tool);
        (
            read(&self.pinned).get(&k).cloned(),
            read(&self.pending).get(&k).cloned(),
        )
    }

    /// Every pin with its pending change, sorted by server and tool.
    pub fn list(&self) -> Vec<(Pin, Option<Pin>)> {
        let pinned = read(&self.pinned);
        let pending = read(&self.pending);
        let mut v: Vec<(Pin, Option<Pin>)> = pinned
            .iter()
            .map(|(k, p)| (p.clone(), pending.get(k).cloned()))
            .collect();
        v.sort_by(|a, b| (&a.0.server, &a.0.tool).cmp(&(&b.0.server, &b.0.tool)));
        v
    }

    /// Servers with a change waiting (for `hide-server`).
    pub fn changed_servers(&self) -> HashSet<String> {
        read(&self.pending)
            .values()
            .map(|p| p.server.clone())
            .collect()
    }

    /// The store key of a pin.
    pub fn store_key(p: &Pin) -> String {
        key(&p.server, &p.tool)
    }

    /// Applies a pin change the store reports (another replica pinned a
    /// tool, saw a change, or an admin approved one there), so pins and
    /// approvals hold on every replica. Returns whether anything changed.
    pub fn apply_change(&self, c: &portcullis_contain::store::Change) -> bool {
        let map = match c.ns.as_str() {
            NS_PIN => &self.pinned,
            NS_PENDING => &self.pending,
            _ => return false,
        };
        match &c.entry {
            Some(e) => match serde_json::from_value::<Pin>(e.value.clone()) {
                Ok(p) => write(map).insert(c.key.clone(), p.clone()).as_ref() != Some(&p),
                Err(err) => {
                    tracing::warn!(key = %c.key, error = %err, "state store: unreadable pin change skipped");
                    false
                }
            },
            None => write(map).remove(&c.key).is_some(),
        }
    }
}

/// Follows the store's change feed for the pins of `pep` while it lives.
pub fn follow(pep: &std::sync::Arc<crate::pep::Pep>) {
    let me = std::sync::Arc::downgrade(pep);
    let mut rx = pep.contain.state.store().changes();
    tokio::spawn(async move {
        loop {
            let r = rx.recv().await;
            let Some(pep) = me.upgrade() else { return };
            match r {
                Ok(c) => {
                    pep.pins.apply_change(&c);
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let n = pep.pins.load(&pep.contain.state).await;
                    tracing::warn!(pins = n, "state store change feed lagged; pins re-read");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}
