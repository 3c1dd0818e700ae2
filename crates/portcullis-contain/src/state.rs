//! The containment state of one gateway: quarantines, the kill switch and
//! revocations held in memory for the hot path, written through to the
//! state store so they survive a restart, and announced to whoever must
//! act at once (open sessions and streams).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::quarantine::{Mode, Quarantine, Quarantines, Subject, Target};
use crate::revocation::{Revocation, Revocations};
use crate::store::{Change, Entry, StateStore, StoreError};

/// Store namespace of quarantines.
pub const NS_QUARANTINE: &str = "quarantine";
/// Store namespace of revocations.
pub const NS_REVOCATION: &str = "revocation";
/// Store namespace of the kill switch.
pub const NS_KILLSWITCH: &str = "killswitch";
const KILL_KEY: &str = "global";

/// The kill switch when on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillSwitch {
    /// Deny-all or read-only, for everyone.
    pub mode: Mode,
    /// Why.
    pub reason: String,
    /// Who threw it.
    pub by: String,
    /// When (Unix seconds).
    pub since: u64,
}

/// What containment says about one caller right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing in force.
    Clear,
    /// Restricted: `mode` applies, because of `source` (the kill switch or
    /// a quarantine's target), for `reason`.
    Restricted {
        /// Deny-all or read-only.
        mode: Mode,
        /// `killswitch` or the quarantine target (`agent:spiffe://…`).
        source: String,
        /// Why (for operators and the audit log).
        reason: String,
    },
}

impl Verdict {
    /// The mode in force, if any.
    pub fn mode(&self) -> Option<Mode> {
        match self {
            Verdict::Clear => None,
            Verdict::Restricted { mode, .. } => Some(*mode),
        }
    }
}

/// A containment change, for sessions and streams that must react.
#[derive(Debug, Clone, PartialEq)]
pub enum ContainEvent {
    /// A quarantine was put in force (or changed).
    Quarantined(Quarantine),
    /// A quarantine was lifted or expired.
    Released(Quarantine),
    /// The kill switch changed (`None`: off).
    KillSwitch(Option<KillSwitch>),
    /// A certificate or token was revoked.
    Revoked(Revocation),
}

const OFF: u8 = 0;
const READ_ONLY: u8 = 1;
const DENY_ALL: u8 = 2;

/// Containment state with its store.
pub struct Containment {
    store: Arc<dyn StateStore>,
    /// Quarantines in force.
    pub quarantines: Quarantines,
    /// Revoked certificates and tokens.
    pub revocations: Revocations,
    kill: AtomicU8,
    kill_info: RwLock<Option<KillSwitch>>,
    events: broadcast::Sender<ContainEvent>,
}

/// The kill switch a stored entry says; an unreadable one counts as
/// deny-all, so a damaged record never silently turns it off.
fn kill_of(e: &Entry) -> KillSwitch {
    serde_json::from_value::<KillSwitch>(e.value.clone()).unwrap_or_else(|err| {
        tracing::error!(error = %err, "state store: unreadable kill switch; assuming deny-all");
        KillSwitch {
            mode: Mode::DenyAll,
            reason: "kill switch record unreadable".into(),
            by: "store".into(),
            since: crate::now_unix(),
        }
    })
}

fn encode<T: Serialize>(v: &T) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(v).map_err(|e| StoreError::Encode(e.to_string()))
}

impl Containment {
    /// Loads what the store remembers (quarantines, revocations, the kill
    /// switch). Entries that do not parse are skipped with a warning.
    pub async fn open(store: Arc<dyn StateStore>) -> Result<Containment, StoreError> {
        let c = Containment {
            store,
            quarantines: Quarantines::default(),
            revocations: Revocations::default(),
            kill: AtomicU8::new(OFF),
            kill_info: RwLock::new(None),
            events: broadcast::channel(1024).0,
        };
        for e in c.store.list(NS_QUARANTINE).await? {
            match serde_json::from_value::<Quarantine>(e.value) {
                Ok(q) => {
                    c.quarantines.insert(q);
                }
                Err(err) => {
                    tracing::warn!(key = %e.key, error = %err, "state store: unreadable quarantine skipped")
                }
            }
        }
        for e in c.store.list(NS_REVOCATION).await? {
            match serde_json::from_value::<Revocation>(e.value) {
                Ok(r) => c.revocations.insert(r),
                Err(err) => {
                    tracing::warn!(key = %e.key, error = %err, "state store: unreadable revocation skipped")
                }
            }
        }
        for e in c.store.list(NS_KILLSWITCH).await? {
            c.apply_kill(Some(kill_of(&e)));
        }
        Ok(c)
    }

    /// Applies a change the store reports — another replica's quarantine,
    /// release, revocation or kill switch — so this replica enforces it at
    /// once and its sessions react (the same events as a local change). A
    /// change already in force here does nothing, so a store that also
    /// reports this replica's own writes is harmless. Returns whether
    /// anything changed.
    pub fn apply_change(&self, c: &Change) -> bool {
        match (c.ns.as_str(), &c.entry) {
            (NS_QUARANTINE, Some(e)) => match serde_json::from_value::<Quarantine>(e.value.clone())
            {
                Ok(q) => {
                    if self.quarantines.insert(q.clone()).as_ref() == Some(&q) {
                        return false;
                    }
                    let _ = self.events.send(ContainEvent::Quarantined(q));
                    true
                }
                Err(err) => {
                    tracing::warn!(key = %c.key, error = %err, "state store: unreadable quarantine change skipped");
                    false
                }
            },
            (NS_QUARANTINE, None) => {
                match Target::from_key(&c.key).and_then(|t| self.quarantines.remove(&t)) {
                    Some(q) => {
                        let _ = self.events.send(ContainEvent::Released(q));
                        true
                    }
                    None => false,
                }
            }
            (NS_REVOCATION, Some(e)) => match serde_json::from_value::<Revocation>(e.value.clone())
            {
                Ok(r) => {
                    let before = self.revocations.remove(&r.key());
                    self.revocations.insert(r.clone());
                    if before.as_ref() == Some(&r) {
                        return false;
                    }
                    let _ = self.events.send(ContainEvent::Revoked(r));
                    true
                }
                Err(err) => {
                    tracing::warn!(key = %c.key, error = %err, "state store: unreadable revocation change skipped");
                    false
                }
            },
            (NS_REVOCATION, None) => self.revocations.remove(&c.key).is_some(),
            (NS_KILLSWITCH, e) => {
                let k = e.as_ref().map(kill_of);
                if self.kill_switch() == k {
                    return false;
                }
                self.apply_kill(k.clone());
                let _ = self.events.send(ContainEvent::KillSwitch(k));
                true
            }
            _ => false,
        }
    }

    /// Re-reads the store and puts in force what it holds that this replica
    /// does not (after missing changes). It never lifts anything: a
    /// release arrives as its own change, and a quarantine this replica
    /// enforced but could not store yet must not be dropped — missing a
    /// release errs on the side of containment.
    pub async fn resync(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for ns in [NS_QUARANTINE, NS_REVOCATION, NS_KILLSWITCH] {
            for e in self.store.list(ns).await? {
                let c = Change {
                    ns: ns.to_owned(),
                    key: e.key.clone(),
                    entry: Some(e),
                };
                n += usize::from(self.apply_change(&c));
            }
        }
        Ok(n)
    }

    /// Follows the store's change feed for as long as this state lives:
    /// what other replicas decide is enforced here within the store's
    /// propagation delay. Missed changes (a lagging feed) trigger a
    /// [`Containment::resync`].
    pub fn follow(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        let mut rx = self.store.changes();
        tokio::spawn(async move {
            loop {
                let r = rx.recv().await;
                let Some(state) = me.upgrade() else { return };
                match r {
                    Ok(c) => {
                        state.apply_change(&c);
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(
                            missed,
                            "state store change feed lagged; re-reading containment state"
                        );
                        if let Err(e) = state.resync().await {
                            tracing::error!(error = %e, "containment state not re-read");
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    }

    /// An empty state over an in-memory store.
    pub fn in_memory() -> Containment {
        Containment {
            store: Arc::new(crate::store::MemoryStore::default()),
            quarantines: Quarantines::default(),
            revocations: Revocations::default(),
            kill: AtomicU8::new(OFF),
            kill_info: RwLock::new(None),
            events: broadcast::channel(1024).0,
        }
    }

    /// The store behind it.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// Containment changes as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<ContainEvent> {
        self.events.subscribe()
    }

    /// Whether nothing is in force at all (kill switch off, no quarantine):
    /// lets callers skip building a subject. Two atomic loads.
    pub fn is_clear(&self) -> bool {
        self.kill.load(Ordering::Acquire) == OFF && self.quarantines.is_empty()
    }

    /// What applies to `s` at `now` (Unix seconds): the strictest of the
    /// kill switch and its quarantines.
    pub fn verdict(&self, s: &Subject<'_>, now: u64) -> Verdict {
        let kill = self.kill.load(Ordering::Acquire);
        if kill == DENY_ALL {
            return self.kill_verdict();
        }
        match self.quarantines.check(s, now) {
            Some(q) if kill == OFF || q.mode == Mode::DenyAll => Verdict::Restricted {
                mode: q.mode,
                source: q.target.to_string(),
                reason: q.reason,
            },
            _ if kill == READ_ONLY => self.kill_verdict(),
            _ => Verdict::Clear,
        }
    }

    fn kill_verdict(&self) -> Verdict {
        let info = self.kill_info.read().unwrap_or_else(|e| e.into_inner());
        match &*info {
            Some(k) => Verdict::Restricted {
                mode: k.mode,
                source: "killswitch".into(),
                reason: k.reason.clone(),
            },
            None => Verdict::Clear,
        }
    }

    /// Puts a quarantine in force at once, then stores it. An `Err` means
    /// it is in force but will not survive a restart.
    pub async fn quarantine(&self, q: Quarantine) -> Result<(), StoreError> {
        self.enforce(q.clone());
        self.persist(&q).await
    }

    /// Puts a quarantine in force in memory only (synchronously, so the
    /// request that triggered it is already under it); pair with
    /// [`Containment::persist`].
    pub fn enforce(&self, q: Quarantine) {
        self.quarantines.insert(q.clone());
        let _ = self.events.send(ContainEvent::Quarantined(q));
    }

    /// Stores a quarantine already in force.
    pub async fn persist(&self, q: &Quarantine) -> Result<(), StoreError> {
        self.store
            .put(NS_QUARANTINE, &q.target.key(), encode(q)?, q.expires_at)
            .await
    }

    /// Lifts a quarantine; `Ok(None)` if there was none.
    pub async fn release(&self, t: &Target) -> Result<Option<Quarantine>, StoreError> {
        let q = self.quarantines.remove(t);
        if let Some(q) = &q {
            let _ = self.events.send(ContainEvent::Released(q.clone()));
        }
        self.store.remove(NS_QUARANTINE, &t.key()).await?;
        Ok(q)
    }

    /// Lifts quarantines past their expiry (memory and store).
    pub async fn sweep(&self, now: u64) -> Vec<Quarantine> {
        let gone = self.quarantines.sweep(now);
        for q in &gone {
            let _ = self.events.send(ContainEvent::Released(q.clone()));
            if let Err(e) = self.store.remove(NS_QUARANTINE, &q.target.key()).await {
                tracing::warn!(error = %e, target = %q.target, "state store: expired quarantine not removed");
            }
        }
        gone
    }

    fn apply_kill(&self, k: Option<KillSwitch>) {
        let code = match k.as_ref().map(|k| k.mode) {
            None => OFF,
            Some(Mode::ReadOnly) => READ_ONLY,
            Some(Mode::DenyAll) => DENY_ALL,
        };
        *self.kill_info.write().unwrap_or_else(|e| e.into_inner()) = k;
        self.kill.store(code, Ordering::Release);
    }

    /// Turns the kill switch on (`Some`) or off (`None`), at once, then stores it.
    pub async fn set_kill_switch(&self, k: Option<KillSwitch>) -> Result<(), StoreError> {
        self.apply_kill(k.clone());
        let _ = self.events.send(ContainEvent::KillSwitch(k.clone()));
        match &k {
            Some(k) => {
                self.store
                    .put(NS_KILLSWITCH, KILL_KEY, encode(k)?, None)
                    .await
            }
            None => self.store.remove(NS_KILLSWITCH, KILL_KEY).await.map(|_| ()),
        }
    }

    /// The kill switch, if on.
    pub fn kill_switch(&self) -> Option<KillSwitch> {
        self.kill_info
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Revokes a certificate or token at once, then stores it.
    pub async fn revoke(&self, r: Revocation) -> Result<(), StoreError> {
        self.revocations.insert(r.clone());
        let _ = self.events.send(ContainEvent::Revoked(r.clone()));
        let exp = r.expires_at;
        self.store
            .put(NS_REVOCATION, &r.key(), encode(&r)?, exp)
            .await
    }
}
